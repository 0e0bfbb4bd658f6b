"""The lab's life cycle: build it (or repair it) with `up`, change it, tear it down.

Topology (prefix `s6lab` by default, every name below carries it):

    s6lab-ul     the underlay: bridge br0, one port per node (n1, n2, ...) and `probe`
    s6lab-n<i>   node i: eth0 on the bridge with fd00:ff::<i>/64 (and 192.0.2.<i>/24),
                 programmed by its own `srv6ctl agent --netns s6lab-n<i>`
    s6lab-probe  a host on the underlay (fd00:ff::ffff) that `srv6ctl verify` injects
                 crafted SRv6 packets from
    s6lab-<pod>  one namespace per pod, wired by the real `srv6-cni` executable

The agents run on the host, one per node, each programming its node's namespace, sharing
one embedded store (SQLite in the state directory) and watching one directory of
Kubernetes-shaped YAML that the lab writes (Nodes, Pods, Services, EndpointSlices) — the
agents cannot tell it from an API server. Every pod runs `srv6ctl.lab.podserver`.

Idempotence: `up` on a healthy lab of the same shape changes nothing; with dead agents or
pod servers (namespaces intact) it restarts just those; anything else (a crashed build,
another shape, missing namespaces) is torn down and built again. `down` removes what the
state file names, what carries the prefix, and what was started with the lab's marker, so
it also cleans up after a build that crashed before writing its state.

`Lab` owns the state and its file; the work is in the modules it delegates to: `shape`
(the fixed addresses and services), `requirements`, `node_processes` (agents, VPPs),
`workload` (pods and service objects), `scaling`, `convergence` and `repair`.
"""

from __future__ import annotations

import shutil
import threading
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import yaml

from cni.wiring import set_tx_checksum
from ipam6.allocator import Allocator
from ipam6.plan import AddressPlan
from ipam6.store.config import open_store
from srv6ctl.config import Config, load_config
from srv6ctl.dataplane.nsenter import run_in_netns
from srv6ctl.lab import (
    convergence,
    external,
    kubernetes_lab,
    kubernetes_workload,
    netns,
    objects,
    processes,
    scaling,
    vpp,
)
from srv6ctl.lab.context import LabContext
from srv6ctl.lab.convergence import CONVERGE_TIMEOUT
from srv6ctl.lab.kubernetes import ControlPlane
from srv6ctl.lab.kubernetes_lab import AGENT_NAMESPACE
from srv6ctl.lab.netns import LabError
from srv6ctl.lab.node_processes import (
    agent_ready,
    quiet_uplink,
    start_agent,
    start_vpp,
    vpp_node,
    vpp_ready,
)
from srv6ctl.lab.parallel import in_parallel
from srv6ctl.lab.progress import Steps
from srv6ctl.lab.repair import inspect, repair
from srv6ctl.lab.requirements import check_requirements
from srv6ctl.lab.shape import (
    PLAN_V4,
    PLAN_V6,
    PROBE_INDEX_V4,
    PROBE_INDEX_V6,
    SERVICES,
    STRANGER_INDEX_V4,
    STRANGER_INDEX_V6,
    node_addresses,
    underlay_v4,
    underlay_v6,
)
from srv6ctl.lab.state import (
    LabOptions,
    LabPaths,
    LabState,
    NodeRecord,
    PodRecord,
    ProcessRecord,
    ServiceRecord,
    load_state,
    save_state,
    write_atomically,
)
from srv6ctl.lab.workload import (
    create_pod,
    plan_pods,
    start_host_server,
    start_probe_server,
    wait_host_server,
    wait_probe_server,
    wait_server,
    write_service,
)


@dataclass
class DownReport:
    processes: int = 0
    namespaces: list[str] = field(default_factory=list)
    removed_dir: bool = False

    @property
    def nothing(self) -> bool:
        return not (self.processes or self.namespaces or self.removed_dir)


class Lab:
    """One lab, identified by its state directory."""

    def __init__(self, state_dir: str | Path, steps: Steps) -> None:
        self.paths = LabPaths(state_dir)
        self.steps = steps
        self.state: LabState | None = load_state(self.paths)
        self._lock = threading.Lock()  # build steps run in threads; one writer at a time

    def _save(self) -> None:
        if self.state is not None:
            with self._lock:
                save_state(self.paths, self.state)

    def _context(self, state: LabState) -> LabContext:
        return LabContext(self.paths, state, self.steps, self._save)

    # --- up ----------------------------------------------------------------------------

    def up(self, options: LabOptions) -> str:
        """Bring the lab up; returns what was done ("built", "already up", "repaired")."""
        check_requirements(options)
        if self.state is not None and self.state.complete and self.state.options == options:
            health = inspect(self.state)
            if not health.problems:
                return "already up"
            if health.repairable:
                self.steps.note("[yellow]repairing[/]: " + "; ".join(health.problems))
                repair(self._context(self.state), health)
                return "repaired"
            self.steps.note("[yellow]rebuilding[/]: " + "; ".join(health.problems))
        elif self.state is not None:
            why = (
                "a previous build did not finish"
                if not self.state.complete
                else "it has another shape"
            )
            self.steps.note(f"[yellow]rebuilding[/] the lab in {self.paths.root}: {why}")
        had_state = self.state is not None
        report = self.down(prefix=options.prefix)
        if not report.nothing:
            what = "the previous lab" if had_state else "leftovers"
            self.steps.note(
                f"removed {what}: {len(report.namespaces)} namespace(s), "
                f"{report.processes} process(es)"
            )
        self._build(options)
        return "built"

    def _build(self, options: LabOptions) -> None:
        paths = self.paths
        paths.root.mkdir(parents=True, exist_ok=True)
        paths.marker.write_text("made by srv6ctl lab up; `srv6ctl lab down` removes it\n")
        state = self._plan_state(options)
        self.state = state
        self._save()  # before anything exists: `down` knows what to look for
        ctx = self._context(state)

        with self.steps.step("config and store"):
            config, address_plan = self._write_config(state, options)
        with self.steps.step(f"underlay {state.underlay_netns} (bridge br0) and probe"):
            netns.add_netns(state.underlay_netns)
            netns.add_bridge(state.underlay_netns, state.bridge)
            netns.add_netns(state.probe_netns)
            addresses = [f"{underlay_v6(PROBE_INDEX_V6)}/64"]
            strangers = [f"{underlay_v6(STRANGER_INDEX_V6)}/64"]
            if options.dual_stack:
                addresses.append(f"{underlay_v4(PROBE_INDEX_V4)}/24")
                strangers.append(f"{underlay_v4(STRANGER_INDEX_V4)}/24")
            netns.attach(
                state.underlay_netns, state.bridge, "probe", state.probe_netns, "eth0", addresses
            )
            # The client's second address, for loadBalancerSourceRanges to refuse:
            # deprecated (preferred_lft 0), so that no connection picks it as its source
            # unless it binds it.
            netns.ip_batch(
                state.probe_netns,
                [
                    f"addr add {a} dev eth0 preferred_lft 0" + (" nodad" if ":" in a else "")
                    for a in strangers
                ],
            )
            if options.dataplane == "vpp":
                # The probe is also the external client: its frames must carry their
                # checksums, as a real NIC's do. A veth's offload leaves them to the
                # receiver, and VPP's af_packet uplink forwards them unchecked.
                run_in_netns(
                    netns.netns_path(state.probe_netns), partial(set_tx_checksum, "eth0", False)
                )
        with self.steps.step(f"{options.nodes} node namespaces on the underlay"):
            for node in state.nodes:
                netns.add_netns(node.netns)
                addresses = node_addresses(node)
                if options.dataplane == "vpp":
                    # The uplink is VPP's (lab/vpp.py): the kernel end stays silent.
                    quiet_uplink(node)
                    addresses = []
                node.mac = netns.attach(
                    state.underlay_netns, state.bridge, node.uplink, node.netns, "eth0", addresses
                )
            self._save()
        if options.dataplane == "vpp":
            with self.steps.step(f"{options.nodes} VPPs started, each owning its node's uplink"):
                for node in state.nodes:
                    start_vpp(ctx, node)
                self._save()
                in_parallel(lambda node: vpp_ready(paths, node), state.nodes)
        if options.kubernetes is not None:
            plane = kubernetes_lab.build_nodes(
                ctx, lambda kubeconfig: claim_node_ids(state, config, address_plan, kubeconfig)
            )
            self._build_kubernetes_workload(ctx, plane)
        else:
            self._build_agents(ctx)
            self._build_workload(ctx)
        with self.steps.step("the probe routes the external VIPs and the pod CIDRs to the nodes"):
            external.route_external(state)
        state.complete = True
        self._save()

    def _start_probe_server(self, ctx: LabContext) -> None:
        if any(s.outside_endpoints for s in ctx.state.services):
            with self.steps.step("the probe's server: an endpoint outside the cluster"):
                ctx.state.probe_server = start_probe_server(ctx.paths, ctx.state)
                self._save()
                wait_probe_server(ctx.paths, ctx.state)

    def _build_workload(self, ctx: LabContext) -> None:
        """The plain lab's pods (through srv6-cni, as kubelet's runtime would) and the
        slices it writes for them."""
        state, paths = ctx.state, ctx.paths
        self._start_probe_server(ctx)
        total = state.options.nodes * state.options.pods_per_node
        with self.steps.step(f"{total} pods through srv6-cni, each with its server"):
            planned = plan_pods(state)
            in_parallel(lambda pod: create_pod(paths, state, pod), planned)
            state.pods.extend(planned)
            self._save()
            in_parallel(lambda pod: wait_server(paths, pod), planned)
        with self.steps.step("EndpointSlices, and every agent converged"):
            for service in state.services:
                write_service(paths, state, service)
            convergence.wait_converged(paths, state)

    def _build_kubernetes_workload(self, ctx: LabContext, plane: ControlPlane) -> None:
        """The same Services and pods as API objects: kubelet makes the pods, the
        controller manager their slices (kubernetes_workload)."""
        state = ctx.state
        with self.steps.step("the lab's Services as API objects"):
            kubernetes_workload.create_services(plane, state.services)
            self._save()
        self._start_probe_server(ctx)
        total = state.options.nodes * state.options.pods_per_node
        with self.steps.step(f"{total} pods made by kubelet, each with its server"):
            state.pods.extend(plan_pods(state))
            self._save()
            in_parallel(lambda pod: kubernetes_workload.create_pod(ctx, plane, pod), state.pods)
        with self.steps.step("EndpointSlices by the controller manager, agents converged"):
            kubernetes_workload.wait_endpoints(plane, ctx)
            convergence.wait_converged(ctx.paths, state)

    def _build_agents(self, ctx: LabContext) -> None:
        """The plain lab's objects (files the agents read), its agents, and the servers
        of its host-network endpoints."""
        state, paths, options = ctx.state, ctx.paths, ctx.state.options
        with self.steps.step("cluster objects: Namespaces, Nodes, Services"):
            write_atomically(paths.objects / objects.NAMESPACES_FILE, objects.namespace_file(state))
            write_atomically(paths.objects / "nodes.yaml", objects.node_file(state))
            for service in state.services:
                write_service(paths, state, service, with_endpoints=False)
        with self.steps.step(f"{options.nodes} agents started and ready"):
            for node in state.nodes:
                node.agent = start_agent(ctx, node)
            self._save()
            in_parallel(lambda node: agent_ready(ctx, node), state.nodes)
        hosts = [n for n in state.nodes if any(n.name in s.host_endpoints for s in state.services)]
        if hosts and options.dataplane != "vpp":
            with self.steps.step("host-network endpoints: a server on each one's node"):
                for node in hosts:
                    node.host_server = start_host_server(paths, node)
                self._save()
                for node in hosts:
                    wait_host_server(paths, node)

    def _plan_state(self, options: LabOptions) -> LabState:
        """What the lab of these options will be made of: named before any of it exists."""
        paths = self.paths
        prefix = options.prefix
        state = LabState(
            state_dir=str(paths.root),
            options=options,
            underlay_netns=f"{prefix}-ul",
            probe_netns=f"{prefix}-probe",
            vpp_binary=vpp.find_binary() if options.dataplane == "vpp" else None,
        )
        for i in range(1, options.nodes + 1):
            name = f"n{i}"
            state.nodes.append(
                NodeRecord(
                    name=name,
                    netns=f"{prefix}-{name}",
                    uplink=name,
                    internal_ipv6=underlay_v6(i),
                    internal_ipv4=underlay_v4(i) if options.dual_stack else None,
                    cni_socket=str(paths.node_dir(name) / "cni.sock"),
                    api_socket=str(paths.node_dir(name) / "agent.sock"),
                )
            )
            if options.dataplane == "vpp":
                node = state.nodes[-1]
                where = vpp_node(paths, node)
                node.vpp_dir = str(where.dir)
                node.vpp_api_socket = where.api_socket
                node.vpp_stats_socket = where.stats_socket
        if options.kubernetes is not None:
            state.control_plane_netns = kubernetes_lab.control_plane_netns(prefix)
        for shape in SERVICES:
            if shape.host_endpoints and options.dataplane == "vpp":
                # A host-network endpoint is the node's kernel stack, which the VPP lab's
                # nodes keep off the underlay (VPP owns the uplink): not built there.
                continue
            if shape.host_endpoints and options.kubernetes is not None:
                # The shape's `kubernetes`: the cluster has its own (kubernetes_workload).
                continue
            families = (6, 4) if options.dual_stack else (6,)
            state.services.append(
                ServiceRecord(
                    name=shape.name,
                    uid=str(uuid.uuid4()),
                    cluster_ipv6=shape.cluster_ipv6,
                    cluster_ipv4=shape.cluster_ipv4
                    if options.dual_stack and shape.cluster_ipv4
                    else None,
                    with_backends=shape.with_backends,
                    selects=shape.selects,
                    type=shape.type,
                    load_balancer_ips=[a for a in shape.load_balancer if _family(a) in families],
                    external_ips=[a for a in shape.external if _family(a) in families],
                    external_traffic_policy=shape.external_traffic_policy,
                    health_check_node_port=shape.health_check_node_port,
                    node_ports=list(shape.node_ports),
                    source_ranges=[r for r in shape.source_ranges if _family(r) in families],
                    affinity=shape.affinity,
                    host_endpoints=[state.nodes[i].name for i in shape.host_endpoints],
                    outside_endpoints=[
                        a
                        for a in (underlay_v6(PROBE_INDEX_V6), underlay_v4(PROBE_INDEX_V4))
                        if shape.outside and _family(a) in families
                    ],
                )
            )
        return state

    def _write_config(self, state: LabState, options: LabOptions) -> tuple[Config, AddressPlan]:
        plan = dict(PLAN_V6)
        if options.dual_stack:
            plan.update(PLAN_V4)
        store: dict[str, object] = {"type": "embedded", "path": str(self.paths.store)}
        if options.kubernetes is not None:  # the cluster's own (kubernetes_lab)
            store = {"type": "kubernetes", "kubernetes": {"namespace": AGENT_NAMESPACE}}
        config = {"addressPlan": plan, "store": store}
        write_atomically(self.paths.config, yaml.safe_dump(config, sort_keys=False))
        # The agents would refuse a bad config anyway: fail here, before starting them.
        loaded, address_plan = load_config(self.paths.config)
        if options.kubernetes is None:  # kubernetes_lab claims them once the API serves
            claim_node_ids(state, loaded, address_plan)
        return loaded, address_plan

    # --- changes to a running lab (`lab scale`, and verify's convergence checks) -----------

    def add_backends(self, service: str, count: int, *, publish: bool = True) -> list[PodRecord]:
        """`count` new backend pods on the least loaded nodes, then (unless `publish` is
        False: `publish` does it later) the slices that name them."""
        return scaling.add_backends(self._context(self._require()), service, count, publish=publish)

    def publish(self, service: str) -> None:
        """Write the service's slices as the lab's pods say they are."""
        scaling.publish_slices(self._context(self._require()), service)

    def withdraw_backends(self, service: str, pods: Iterable[PodRecord]) -> None:
        """Drop pods from the service's slices; the pods themselves keep running."""
        scaling.withdraw_backends(self._context(self._require()), service, pods)

    def delete_pods(self, pods: Sequence[PodRecord]) -> None:
        scaling.delete_pods(self._context(self._require()), pods)

    def scale(self, service: str, replicas: int) -> tuple[list[str], list[str]]:
        """Make `service` have `replicas` backends; returns (added, removed) pod names."""
        return scaling.scale(self._context(self._require()), service, replicas)

    def wait_converged(self, state: LabState, timeout: float = CONVERGE_TIMEOUT) -> float:
        """Wait until every agent renders the lab's objects and holds them; seconds taken."""
        return convergence.wait_converged(self.paths, state, timeout)

    # --- down --------------------------------------------------------------------------------

    def down(self, prefix: str | None = None) -> DownReport:
        """Remove every process, namespace and file of the lab; safe to run again."""
        report = DownReport()
        state = self.state
        if prefix is None:
            prefix = state.options.prefix if state is not None else None
        records: list[ProcessRecord] = []
        if state is not None:
            records += [n.agent for n in state.nodes if n.agent is not None]
            records += [n.vpp for n in state.nodes if n.vpp is not None]
            records += [p.server for p in state.pods if p.server is not None]
        records += processes.lab_processes(self.paths.root)
        unique = {(r.pid, r.start_time): r for r in records}
        # All at once: nothing the lab runs needs another of its processes to stop.
        report.processes = len(processes.stop(list(unique.values())))
        if prefix:
            # --kubernetes: the nodes' pods, their cgroups, the host's settings
            kubernetes_lab.remove_nodes(self.paths, prefix)
            vpp.remove_leftovers(prefix)  # a VPP killed, not stopped, leaves its /dev/shm
        names = list(state.namespaces()) if state is not None else []
        if prefix:
            mine = [n for n in netns.list_netns() if n.startswith(f"{prefix}-")]
            names += [n for n in mine if n not in names]
        for name in names:
            if netns.delete_netns(name):
                report.namespaces.append(name)
        root = self.paths.root
        if root.exists() and (self.paths.marker.exists() or self.paths.state.exists()):
            shutil.rmtree(root)
            report.removed_dir = True
        self.state = None
        return report

    def _require(self) -> LabState:
        if self.state is None:
            raise LabError(f"no lab in {self.paths.root} (run `srv6ctl lab up`)")
        return self.state


def _family(address: str) -> int:
    return 6 if ":" in address else 4


def claim_node_ids(
    state: LabState, config: Config, plan: AddressPlan, kubeconfig: str | None = None
) -> None:
    """Claim node IDs 1..N for n1..nN in order, as an operator may pre-provision: the
    agents, started together, would otherwise race and n1 could get ID 3. Each agent's
    own claim then returns the ID held for its name."""
    store = open_store(config.store, kubeconfig=kubeconfig)
    try:
        allocator = Allocator(store, plan, prefix=config.store.prefix + "ipam/")
        for node in state.nodes:
            allocator.claim_node(node.name)
    finally:
        store.close()
