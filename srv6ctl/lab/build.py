"""The lab's life cycle: build it, inspect it, repair it, scale it, tear it down.

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
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import yaml

from ipam6.allocator import Allocator
from ipam6.plan import AddressPlan
from ipam6.store.config import open_store
from srv6ctl.config import Config, load_config
from srv6ctl.dataplane.kernel_caps import probe_kernel
from srv6ctl.dataplane.nsenter import ensure_sysctls
from srv6ctl.lab import netns, objects, processes, vpp
from srv6ctl.lab.cni import cni_add, cni_del
from srv6ctl.lab.netns import LabError
from srv6ctl.lab.progress import Steps
from srv6ctl.lab.state import (
    LabOptions,
    LabPaths,
    LabState,
    NodeRecord,
    PodRecord,
    ProcessRecord,
    ServiceRecord,
    load_state,
    remove_file,
    save_state,
    write_atomically,
)
from srv6ctl.observe.agentview import AgentUnavailable, query, view
from srv6ctl.observe.netinfo import sysctl

T = TypeVar("T")

UNDERLAY_V6 = ipaddress.IPv6Network("fd00:ff::/64")  # ULA: never routed off the lab
UNDERLAY_V4 = ipaddress.IPv4Network("192.0.2.0/24")  # TEST-NET-1 (RFC 5737)
PROBE_INDEX_V6, PROBE_INDEX_V4 = 0xFFFF, 254
MAX_NODES = 64
PLAN_V6 = {"podCIDRv6": "fd00:10::/48", "serviceCIDRv6": "fd00:96::/108"}
PLAN_V4 = {"podCIDRv4": "10.128.0.0/14", "serviceCIDRv4": "10.96.0.0/16"}
SERVICES = (  # name, ClusterIPv6, ClusterIPv4, has backends
    ("web", "fd00:96::10", "10.96.0.10", True),
    ("empty", "fd00:96::11", "10.96.0.11", False),
)
BACKEND_SERVICE = "web"
RESYNC_SECONDS = 5
# FINDINGS.md, finding 1: the agent sets fib_multipath_hash_policy=1, under which a pod's
# own TCP flows are balanced on their socket's random hash, re-drawn on every RTO. Policy 3
# with fields 0x37 (source and destination address, protocol, source and destination
# port) hashes the 5-tuple of every packet, whoever sent it. Set after the agent is ready
# (its start-up writes policy 1); `lab up --no-workarounds` leaves the agent's values.
MULTIPATH_HASH_WORKAROUND = {
    "net.ipv6.fib_multipath_hash_policy": "3",
    "net.ipv6.fib_multipath_hash_fields": "55",  # 0x37
    "net.ipv4.fib_multipath_hash_policy": "3",
    "net.ipv4.fib_multipath_hash_fields": "55",
}
AGENT_READY_TIMEOUT = 60.0
AGENT_FAILING_S = 10.0  # an agent refused by its dataplane for this long is not starting
CONVERGE_TIMEOUT = 30.0


def underlay_v6(index: int) -> str:
    return str(UNDERLAY_V6[index])


def underlay_v4(index: int) -> str:
    return str(UNDERLAY_V4[index])


class AgentExited(LabError):
    """An agent process ended before it was ready."""


@dataclass
class Health:
    """What `inspect` found; `problems` empty means the lab is whole."""

    missing_namespaces: list[str] = field(default_factory=list)
    dead_agents: list[str] = field(default_factory=list)
    dead_vpps: list[str] = field(default_factory=list)
    unready_agents: list[str] = field(default_factory=list)
    dead_servers: list[str] = field(default_factory=list)
    unfixed: list[str] = field(default_factory=list)  # nodes missing the lab's workarounds

    @property
    def problems(self) -> list[str]:
        out = [f"namespace {n} is missing" for n in self.missing_namespaces]
        out += [f"VPP of {n} is not running" for n in self.dead_vpps]
        out += [f"agent of {n} is not running" for n in self.dead_agents]
        out += [f"agent of {n} is not ready" for n in self.unready_agents]
        out += [f"server of pod {p} is not running" for p in self.dead_servers]
        out += [f"{n} lacks the multipath hash workaround" for n in self.unfixed]
        return out

    @property
    def repairable(self) -> bool:
        """Only processes died: restarting them restores the lab in place."""
        return not self.missing_namespaces


@dataclass
class DownReport:
    processes: int = 0
    namespaces: list[str] = field(default_factory=list)
    removed_dir: bool = False

    @property
    def nothing(self) -> bool:
        return not (self.processes or self.namespaces or self.removed_dir)


def _parallel(fn: Callable[[T], object], items: Sequence[T], workers: int = 4) -> None:
    """Run `fn` over `items` in threads; the first failure is raised after all finish."""
    if not items:
        return
    with ThreadPoolExecutor(max_workers=min(workers, len(items))) as pool:
        futures = [pool.submit(fn, item) for item in items]
    for future in futures:
        future.result()


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

    # --- up ----------------------------------------------------------------------------

    def up(self, options: LabOptions) -> str:
        """Bring the lab up; returns what was done ("built", "already up", "repaired")."""
        check_requirements(options)
        if self.state is not None and self.state.complete and self.state.options == options:
            health = self.inspect(self.state)
            if not health.problems:
                return "already up"
            if health.repairable:
                self.steps.note("[yellow]repairing[/]: " + "; ".join(health.problems))
                self._repair(self.state, health)
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
                where = self._vpp_node(node)
                node.vpp_dir = str(where.dir)
                node.vpp_api_socket = where.api_socket
                node.vpp_stats_socket = where.stats_socket
        for name, v6, v4, with_backends in SERVICES:
            state.services.append(
                ServiceRecord(
                    name=name,
                    uid=str(uuid.uuid4()),
                    cluster_ipv6=v6,
                    cluster_ipv4=v4 if options.dual_stack else None,
                    with_backends=with_backends,
                )
            )
        self.state = state
        self._save()  # before anything exists: `down` knows what to look for

        with self.steps.step("config and store"):
            self._write_config(options)
        with self.steps.step(f"underlay {state.underlay_netns} (bridge br0) and probe"):
            netns.add_netns(state.underlay_netns)
            netns.add_bridge(state.underlay_netns, state.bridge)
            netns.add_netns(state.probe_netns)
            addresses = [f"{underlay_v6(PROBE_INDEX_V6)}/64"]
            if options.dual_stack:
                addresses.append(f"{underlay_v4(PROBE_INDEX_V4)}/24")
            netns.attach(
                state.underlay_netns, state.bridge, "probe", state.probe_netns, "eth0", addresses
            )
        with self.steps.step(f"{options.nodes} node namespaces on the underlay"):
            for node in state.nodes:
                netns.add_netns(node.netns)
                addresses = _node_addresses(node)
                if options.dataplane == "vpp":
                    # The uplink is VPP's (lab/vpp.py): the kernel end stays silent.
                    self._quiet_uplink(node)
                    addresses = []
                node.mac = netns.attach(
                    state.underlay_netns, state.bridge, node.uplink, node.netns, "eth0", addresses
                )
            self._save()
        if options.dataplane == "vpp":
            with self.steps.step(f"{options.nodes} VPPs started, each owning its node's uplink"):
                for node in state.nodes:
                    self._start_vpp(node)
                self._save()
                _parallel(self._vpp_ready, state.nodes)
        with self.steps.step("cluster objects: Namespaces, Nodes, Services"):
            write_atomically(paths.objects / objects.NAMESPACES_FILE, objects.namespace_file(state))
            write_atomically(paths.objects / "nodes.yaml", objects.node_file(state))
            for service in state.services:
                self._write_service(state, service, with_endpoints=False)
        with self.steps.step(f"{options.nodes} agents started and ready"):
            for node in state.nodes:
                node.agent = self._start_agent(node)
            self._save()
            _parallel(self._agent_ready, state.nodes)
        total = options.nodes * options.pods_per_node
        with self.steps.step(f"{total} pods through srv6-cni, each with its server"):
            planned = self._plan_pods(state)
            _parallel(self._create_pod, planned)
            state.pods.extend(planned)
            self._save()
            _parallel(self._wait_server, planned)
        with self.steps.step("EndpointSlices, and every agent converged"):
            for service in state.services:
                self._write_service(state, service)
            self.wait_converged(state)
        state.complete = True
        self._save()

    def _write_config(self, options: LabOptions) -> None:
        plan = dict(PLAN_V6)
        if options.dual_stack:
            plan.update(PLAN_V4)
        config = {"addressPlan": plan, "store": {"type": "embedded", "path": str(self.paths.store)}}
        write_atomically(self.paths.config, yaml.safe_dump(config, sort_keys=False))
        # The agents would refuse a bad config anyway: fail here, before starting them.
        loaded, address_plan = load_config(self.paths.config)
        self._claim_node_ids(loaded, address_plan)

    def _claim_node_ids(self, config: Config, plan: AddressPlan) -> None:
        """Claim node IDs 1..N for n1..nN in order, as an operator may pre-provision: the
        agents, started together, would otherwise race and n1 could get ID 3. Each agent's
        own claim then returns the ID held for its name."""
        assert self.state is not None
        store = open_store(config.store)
        try:
            allocator = Allocator(store, plan, prefix=config.store.prefix + "ipam/")
            for node in self.state.nodes:
                allocator.claim_node(node.name)
        finally:
            store.close()

    def _plan_pods(self, state: LabState) -> list[PodRecord]:
        """Clients and backends, alternating per node so every node has both when it has
        two pods or more (pod→pod on one node, and service traffic to a local backend)."""
        pods: list[PodRecord] = []
        counts = {"client": 0, "backend": 0}
        for i, node in enumerate(state.nodes):
            for j in range(state.options.pods_per_node):
                role: str = "backend" if (i + j) % 2 else "client"
                counts[role] += 1
                name = f"web-{counts[role]}" if role == "backend" else f"client-{counts[role]}"
                pods.append(self._pod_record(state, name, node, role))
        return pods

    def _pod_record(self, state: LabState, name: str, node: NodeRecord, role: str) -> PodRecord:
        uid = str(uuid.uuid4())
        return PodRecord(
            name=name,
            node=node.name,
            netns=f"{state.options.prefix}-{name}",
            uid=uid,
            container_id=f"lab{uid.replace('-', '')}",
            role="backend" if role == "backend" else "client",
            service=BACKEND_SERVICE if role == "backend" else None,
        )

    # --- agents --------------------------------------------------------------------------

    def _agent_argv(self, node: NodeRecord) -> list[str]:
        assert self.state is not None
        return [
            sys.executable,
            "-m",
            "srv6ctl.cli",
            "agent",
            "--node-name",
            node.name,
            "--config",
            str(self.paths.config),
            "--netns",
            node.netns,
            "--lab-dir",
            str(self.paths.objects),
            "--cni-socket",
            node.cni_socket,
            "--api-socket",
            node.api_socket,
            "--resync",
            str(RESYNC_SECONDS),
            "--dataplane",
            self.state.options.dataplane,
            *self._vpp_agent_args(node),
            # Several agents on one host: each takes a free port (`lab status` shows it).
            "--metrics-address",
            "127.0.0.1:0",
        ]

    def _vpp_agent_args(self, node: NodeRecord) -> list[str]:
        if node.vpp_api_socket is None:
            return []
        args = ["--vpp-api-socket", node.vpp_api_socket]
        if node.vpp_stats_socket is not None:
            args += ["--vpp-stats-socket", node.vpp_stats_socket]
        return args

    def _start_agent(self, node: NodeRecord) -> ProcessRecord:
        log = self.paths.node_dir(node.name) / "agent.log"
        return processes.spawn(self._agent_argv(node), log, lab=self.paths.root)

    def _agent_ready(self, node: NodeRecord) -> None:
        try:
            self._wait_agent_ready(node)
        except AgentExited as exited:
            # Once: an agent that dies during start-up (FINDINGS.md, finding 4: the kernel
            # probe has timed out under load) gets a second chance; its log keeps both.
            self.steps.note(f"[yellow]agent of {node.name} exited during start-up[/]: {exited}")
            node.agent = self._start_agent(node)
            self._save()
            self._wait_agent_ready(node)
        assert self.state is not None
        if self._kernel_workarounds(self.state):
            result = ensure_sysctls(netns.netns_path(node.netns), MULTIPATH_HASH_WORKAROUND)
            if result.refused:
                raise LabError(f"{node.name}: {'; '.join(result.refused)}")

    def _wait_agent_ready(self, node: NodeRecord) -> None:
        deadline = time.monotonic() + AGENT_READY_TIMEOUT
        why = "its API never answered"
        failing_since: float | None = None
        while time.monotonic() < deadline:
            if not processes.alive(node.agent):
                log = node.agent.log if node.agent else ""
                raise AgentExited(
                    f"the agent of {node.name} exited; its log ({log}) ends with:\n"
                    + processes.log_tail(log)
                )
            try:
                status = query(node.api_socket, "status", timeout=2.0)
            except AgentUnavailable:
                status = {}
            if status.get("ready"):
                return
            error = status.get("programming_error")
            if status:
                why = f"the dataplane could not be programmed: {error}" if error else "not ready"
            # Its passes are retried with back-off; the same refusal for this long is not
            # going away by itself.
            failing_since = (failing_since or time.monotonic()) if error else None
            if failing_since is not None and time.monotonic() - failing_since > AGENT_FAILING_S:
                raise LabError(f"the agent of {node.name} is not ready: {why}")
            time.sleep(0.1)
        raise LabError(
            f"the agent of {node.name} was not ready within {AGENT_READY_TIMEOUT:.0f} s: {why}"
        )

    @staticmethod
    def _kernel_workarounds(state: LabState) -> bool:
        """FINDINGS.md's settings are the kernel's forwarding: VPP hashes each packet's
        5-tuple already, and the kernel of a VPP node forwards nothing."""
        return state.options.workarounds and state.options.dataplane == "kernel"

    # --- VPP (--dataplane vpp) ---------------------------------------------------------------

    def _vpp_node(self, node: NodeRecord) -> vpp.VppNode:
        where = node.vpp_dir or self.paths.node_dir(node.name) / "vpp"
        return vpp.VppNode(Path(where), shm_prefix=node.netns)  # <prefix>-<node>

    def _quiet_uplink(self, node: NodeRecord) -> None:
        """No IPv6 on the kernel's end of the uplink (set before the veth exists: as a
        default it also covers the eth0 about to be made), so it sends no RS/MLD/NA and
        does not answer for the node's addresses beside VPP."""
        result = ensure_sysctls(
            netns.netns_path(node.netns), {"net.ipv6.conf.default.disable_ipv6": "1"}
        )
        if result.refused:
            raise LabError(f"{node.name}: {'; '.join(result.refused)}")

    def _start_vpp(self, node: NodeRecord) -> None:
        state = self._require()
        assert state.vpp_binary is not None
        where = self._vpp_node(node)
        vpp.write_config(where, state.vpp_binary, node.mac, _node_addresses(node))
        node.vpp = vpp.start(where, state.vpp_binary, node.netns, lab=self.paths.root)

    def _vpp_ready(self, node: NodeRecord) -> None:
        assert node.vpp is not None
        vpp.wait_ready(self._vpp_node(node), node.vpp, node.name)

    # --- pods -----------------------------------------------------------------------------

    def _create_pod(self, pod: PodRecord) -> None:
        """Namespace, CNI ADD (as kubelet's runtime runs it), server, Pod object."""
        assert self.state is not None
        node = self.state.node(pod.node)
        netns.add_netns(pod.netns)
        result = cni_add(
            node.cni_socket, pod.container_id, pod.netns, pod.name, pod.namespace, pod.uid
        )
        pod.ipv6, pod.ipv4 = result.ipv6, result.ipv4
        pod.server = self._start_server(pod)
        write_atomically(self._pod_file(pod), objects.dump([objects.pod_object(pod)]))

    def _start_server(self, pod: PodRecord) -> ProcessRecord:
        argv = [
            "ip",
            "netns",
            "exec",
            pod.netns,
            sys.executable,
            "-m",
            "srv6ctl.lab.podserver",
            "--pod",
            pod.name,
            "--http",
            str(objects.HTTP_PORT),
            "--echo",
            str(objects.ECHO_PORT),
            "--state-dir",
            str(self.paths.root),
        ]
        log = self.paths.pod_log(pod.name)
        remove_file(log)  # "listening" below must be this server's, not a previous one's
        return processes.spawn(argv, log, lab=self.paths.root)

    def _wait_server(self, pod: PodRecord, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        log = self.paths.pod_log(pod.name)
        while time.monotonic() < deadline:
            if log.exists() and "listening" in log.read_text(errors="replace"):
                return
            if not processes.alive(pod.server):
                raise LabError(f"the server of pod {pod.name} exited:\n" + processes.log_tail(log))
            time.sleep(0.05)
        raise LabError(f"the server of pod {pod.name} did not start within {timeout:.0f} s")

    def _pod_file(self, pod: PodRecord) -> Path:
        return self.paths.objects / "pods" / f"{pod.namespace}-{pod.name}.yaml"

    def _write_service(
        self, state: LabState, service: ServiceRecord, *, with_endpoints: bool = True
    ) -> None:
        text = (
            objects.service_file(state, service)
            if with_endpoints
            else objects.dump([objects.service_object(service)])
        )
        path = self.paths.objects / "services" / f"{service.namespace}-{service.name}.yaml"
        write_atomically(path, text)

    def _delete_pod(self, pod: PodRecord) -> None:
        """Server stopped, CNI DEL, namespace and Pod object removed."""
        assert self.state is not None
        if pod.server is not None:
            processes.stop([pod.server])
        node = self.state.node(pod.node)
        if netns.exists(pod.netns):
            cni_del(node.cni_socket, pod.container_id, pod.netns, pod.name, pod.namespace, pod.uid)
            netns.delete_netns(pod.netns)
        remove_file(self._pod_file(pod))

    # --- scaling (also used by verify's convergence checks) --------------------------------

    def add_backends(self, service: str, count: int, *, publish: bool = True) -> list[PodRecord]:
        """`count` new backend pods on the least loaded nodes, then (unless `publish` is
        False: `publish` does it later) the slices that name them."""
        state = self._require()
        record = state.service(service)
        added: list[PodRecord] = []
        for _ in range(count):
            load = {n.name: 0 for n in state.nodes}
            for pod in state.pods + added:
                if pod.service == record.name:
                    load[pod.node] += 1
            node = state.node(min(load, key=lambda n: (load[n], state.node_names.index(n))))
            taken = {p.name for p in state.pods + added}
            k = next(k for k in range(1, 10_000) if f"{record.name}-{k}" not in taken)
            pod = self._pod_record(state, f"{record.name}-{k}", node, "backend")
            pod.service = record.name
            added.append(pod)
        try:
            _parallel(self._create_pod, added)
        finally:
            state.pods.extend(p for p in added if p.server is not None or p.ipv6)
            self._save()
        _parallel(self._wait_server, added)
        if publish:
            self.publish(record.name)
        return added

    def publish(self, service: str) -> None:
        """Write the service's slices as the lab's pods say they are."""
        state = self._require()
        self._write_service(state, state.service(service))

    def withdraw_backends(self, service: str, pods: Iterable[PodRecord]) -> None:
        """Drop pods from the service's slices, as the EndpointSlice controller does when a
        pod starts terminating; the pods themselves keep running (and serving)."""
        state = self._require()
        record = state.service(service)
        for pod in pods:
            pod.service = None
        self._save()
        self._write_service(state, record)

    def delete_pods(self, pods: Sequence[PodRecord]) -> None:
        state = self._require()
        _parallel(self._delete_pod, pods)
        names = {p.name for p in pods}
        state.pods = [p for p in state.pods if p.name not in names]
        self._save()

    def scale(self, service: str, replicas: int) -> tuple[list[str], list[str]]:
        """Make `service` have `replicas` backends; returns (added, removed) pod names.
        Removal is make-before-break: endpoints leave every node's policy first, and only
        then are their pods deleted."""
        state = self._require()
        record = state.service(service)
        if not record.with_backends:
            raise LabError(f"service {service} is the lab's endpoint-less service")
        if replicas < 0:
            raise LabError("replicas must be >= 0")
        current = state.backends(record.name)
        if replicas > len(current):
            added = self.add_backends(record.name, replicas - len(current))
            self.wait_converged(state)
            return [p.name for p in added], []
        victims = sorted(current, key=_pod_order)[replicas:]
        if victims:
            self.withdraw_backends(record.name, victims)
            self.wait_converged(state)
            self.delete_pods(victims)
            self.wait_converged(state)
        return [], [p.name for p in victims]

    # --- convergence -----------------------------------------------------------------------

    def expected_sids(self, state: LabState, service: ServiceRecord, family: int) -> set[str]:
        plan = self._plan()
        sids = set()
        for pod in state.backends(service.name):
            address = pod.ipv6 if family == 6 else pod.ipv4
            located = (
                None if address is None else plan.pod_of_address(ipaddress.ip_address(address))
            )
            if located is None:
                continue
            sid = plan.pod_sid_dx6(*located) if family == 6 else plan.pod_sid_dx4(*located)
            sids.add(str(sid))
        return sids

    def convergence_problems(self, state: LabState) -> list[str]:
        """What still differs between the lab's objects and the agents' dataplanes."""
        problems = []
        for node in state.nodes:
            try:
                seen = view(node.api_socket)
            except AgentUnavailable as err:
                problems.append(str(err))
                continue
            if seen.drift:
                problems.append(f"{node.name}: drift {dict(seen.drift)}")
            for service in state.services:
                for family, ip in ((6, service.cluster_ipv6), (4, service.cluster_ipv4)):
                    if ip is None:
                        continue
                    want = (
                        self.expected_sids(state, service, family)
                        if service.with_backends
                        else set()
                    )
                    policy = seen.policy(f"svc/{service.namespace}/{service.name}/v{family}")
                    have = (
                        set()
                        if policy is None
                        else {str(s) for sl in policy.segment_lists for s in sl.segments}
                    )
                    if have != want:
                        problems.append(
                            f"{node.name}: {service.name} v{family} has {sorted(have)}, "
                            f"wants {sorted(want)}"
                        )
            local = {p.name for p in state.pods if p.node == node.name}
            attached = {a.pod.split("/", 1)[1] for a in seen.desired.pods}
            if local - attached:
                problems.append(f"{node.name}: pods not attached yet: {sorted(local - attached)}")
        return problems

    def wait_converged(self, state: LabState, timeout: float = CONVERGE_TIMEOUT) -> float:
        """Wait until every agent renders the lab's objects and holds them; seconds taken."""
        started = time.monotonic()
        problems: list[str] = []
        while time.monotonic() - started < timeout:
            problems = self.convergence_problems(state)
            if not problems:
                return time.monotonic() - started
            time.sleep(0.1)
        raise LabError(f"agents did not converge within {timeout:.0f} s: " + "; ".join(problems))

    # --- health and repair -------------------------------------------------------------------

    def inspect(self, state: LabState) -> Health:
        health = Health()
        health.missing_namespaces = [n for n in state.namespaces() if not netns.exists(n)]
        for node in state.nodes:
            if state.options.dataplane == "vpp" and not processes.alive(node.vpp):
                health.dead_vpps.append(node.name)
            if not processes.alive(node.agent):
                health.dead_agents.append(node.name)
                continue
            try:
                if not query(node.api_socket, "status", timeout=2.0).get("ready"):
                    health.unready_agents.append(node.name)
            except AgentUnavailable:
                health.unready_agents.append(node.name)
        health.dead_servers = [p.name for p in state.pods if not processes.alive(p.server)]
        if self._kernel_workarounds(state):
            for node in state.nodes:
                if node.name in health.dead_agents or not netns.exists(node.netns):
                    continue
                for name, value in MULTIPATH_HASH_WORKAROUND.items():
                    if sysctl(node.netns, name) != value:
                        health.unfixed.append(node.name)
                        break
        return health

    def _repair(self, state: LabState, health: Health) -> None:
        vpps = [state.node(n) for n in health.dead_vpps]
        if vpps:
            # Each agent reconnects by itself and replays what its VPP should hold (the
            # pods' ports at its next full resync, within RESYNC_SECONDS).
            with self.steps.step(f"VPPs restarted: {', '.join(n.name for n in vpps)}"):
                vpp.remove_leftovers(state.options.prefix)  # of the dead ones only: named
                for node in vpps:
                    self._start_vpp(node)
                self._save()
                _parallel(self._vpp_ready, vpps)
        dead = [state.node(n) for n in health.dead_agents]
        if dead:
            with self.steps.step(f"agents restarted: {', '.join(n.name for n in dead)}"):
                for node in dead:
                    node.agent = self._start_agent(node)
                self._save()
                _parallel(self._agent_ready, dead)
        if health.unready_agents:
            with self.steps.step(f"agents ready: {', '.join(health.unready_agents)}"):
                _parallel(self._agent_ready, [state.node(n) for n in health.unready_agents])
        if health.unfixed:
            with self.steps.step(f"workarounds re-applied: {', '.join(health.unfixed)}"):
                _parallel(self._agent_ready, [state.node(n) for n in health.unfixed])
        pods = [state.pod(p) for p in health.dead_servers]
        if pods:
            with self.steps.step(f"pod servers restarted: {', '.join(p.name for p in pods)}"):
                for pod in pods:
                    pod.server = self._start_server(pod)
                self._save()
                _parallel(self._wait_server, pods)
        with self.steps.step("every agent converged"):
            self.wait_converged(state)

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

    # --- helpers -----------------------------------------------------------------------------

    def _require(self) -> LabState:
        if self.state is None:
            raise LabError(f"no lab in {self.paths.root} (run `srv6ctl lab up`)")
        return self.state

    def _plan(self) -> AddressPlan:
        return load_config(self.paths.config)[1]


def _node_addresses(node: NodeRecord) -> list[str]:
    addresses = [f"{node.internal_ipv6}/64"]
    if node.internal_ipv4:
        addresses.append(f"{node.internal_ipv4}/24")
    return addresses


def _pod_order(pod: PodRecord) -> tuple[str, int]:
    stem, _, number = pod.name.rpartition("-")
    return (stem, int(number)) if number.isdigit() else (pod.name, 0)


def kernel_problem() -> str | None:
    """Why this host's kernel cannot carry the lab's kernel dataplane, or None (probed in a
    scratch namespace: the agents would stop with the same line)."""
    return probe_kernel().unsupported()


def check_requirements(options: LabOptions) -> None:
    """Refuse early, with the reason, what the build would fail on half way."""
    if options.dataplane == "vpp":
        vpp.find_binary()
        vpp.check_client()
    if os.geteuid() != 0:
        raise LabError("the lab needs root (network namespaces, veth pairs, SRv6 routes)")
    for tool, why in (("ip", "iproute2"), ("nft", "nftables: the pods' port rewrites")):
        if shutil.which(tool) is None:
            raise LabError(f"`{tool}` is not installed ({why})")
    if not 1 <= options.nodes <= MAX_NODES:
        raise LabError(f"--nodes {options.nodes} must be between 1 and {MAX_NODES}")
    if not 1 <= options.pods_per_node <= 50:
        raise LabError(f"--pods-per-node {options.pods_per_node} must be between 1 and 50")
    if options.nodes * options.pods_per_node < 2:
        raise LabError("the lab needs at least two pods: a client and a backend")
    if not options.prefix.replace("-", "").isalnum() or len(options.prefix) > 20:
        raise LabError(f"--prefix {options.prefix!r}: letters, digits and '-', at most 20")
    if options.dataplane == "kernel":  # last: the probe is the one check that takes time
        problem = kernel_problem()
        if problem is not None:
            raise LabError(
                f"{problem}. `srv6ctl lab vm` runs this lab in a VM with Debian's own kernel "
                "instead (`make lab` does that on such a host)"
            )
