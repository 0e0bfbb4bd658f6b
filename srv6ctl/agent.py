"""The node agent: cluster events in, the node's dataplane out, pods served over CNI.

One process per node. Threads only produce events — the source (Kubernetes watches or
the lab's files), the store's node pool (a node claimed or freed its ID: `NodeWatch`), the
CNI server (a pod was wired or removed), a resync timer — and one loop consumes them, so
the cluster state, the renderer and the backend are only ever touched from that loop:

    events → ClusterState → Renderer.update (dirty keys only) → plan (changed keys only)
           → backend.apply → pods' loopback ClusterIPs and port rewrites
           → NetworkPolicy: PolicyView.update (recompile what the dirty keys may affect)
             → each local pod's `inet srv6ctl_policy` table (srv6ctl.netpol, policies/)

Every `resync` seconds (and after any failure) the loop instead dumps the backend and
plans against what is really there, which repairs drift (a route deleted by hand comes
back); with nothing changed it writes nothing, which is also what a restart does. The
policy tables are then compiled afresh and re-applied (unchanged ones cost nothing, a
table deleted by hand comes back); a pod whose table could not be written is retried.

With `--dataplane vpp` the backend is FD.io VPP (`srv6ctl.dataplane.vpp`): the CNI wiring
leaves the node end of each pod's veth bare (`PodWiring(mode="vpp")`) and the CNI hooks
attach it to VPP as an af_packet port (with its neighbours and host routes) before CNI ADD
returns, and detach it on DEL; each full resync makes the ports of the node's pods whole
and detaches ports no pod of this node uses.

A kernel that cannot run the kernel dataplane at all (no seg6/seg6local lightweight tunnels)
stops the agent before it claims anything, with one line naming what is missing
(`DataplaneUnavailable`); optional features the kernel lacks are logged once and left out.

Failures never tear the dataplane down: the store or the API unreachable leaves the last
programmed state in place while the loop retries with back-off; SIGTERM stops the
watches and sockets and leaves the dataplane as it is, so pods keep working while the
agent restarts.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cni import protocol as cni_protocol
from cni.server import CniHooks, CniServer
from cni.wiring import Attachment, PodWiring
from ipam6.allocator import Allocator, NodeWatch, PodAllocation
from ipam6.plan import AddressPlan
from ipam6.store.base import Store, StoreError
from ipam6.store.config import open_store
from policies.model import PodKey as PolicyPodKey
from policies.model import PodRules
from policies.nftables import TABLE as POLICY_TABLE
from policies.nftables import NftablesBackend, Outcome, tables_of
from srv6ctl.agent_api import AgentApiServer
from srv6ctl.agent_api import query_agent as query_agent  # the client, for callers
from srv6ctl.config import Config
from srv6ctl.dataplane.model import (
    Backend,
    Change,
    DataplaneObject,
    NodeConfig,
    Op,
    PodAttachment,
    pod_interface_fields,
)
from srv6ctl.dataplane.reconcile import config_of, drift, plan
from srv6ctl.netpol import PolicyView
from srv6ctl.podnet import PodNetworkProgrammer
from srv6ctl.render import PodInterface, Renderer, RenderInputs
from srv6ctl.serialize import to_jsonable
from srv6ctl.state import ClusterState, DirtyKey, NodeKey, Replace, ServiceKey, SourceEvent
from telemetry.agent import Telemetry
from telemetry.linkstats import LinkStats
from telemetry.pools import counted_pools

log = logging.getLogger("srv6ctl.agent")

MAX_BACKOFF_S = 30.0


class DataplaneUnavailable(RuntimeError):
    """The chosen dataplane cannot work on this host: the one line to stop with."""


@dataclass(frozen=True)
class AgentOptions:
    node_name: str
    netns: str | None = None  # the node's network namespace (the lab); None: this one
    lab_dir: str | None = None  # the lab source's directory; None: Kubernetes
    kubeconfig: str | None = None  # None with no lab_dir: in-cluster config
    cni_socket: str = cni_protocol.DEFAULT_AGENT_SOCKET
    api_socket: str = "/run/srv6ctl/agent.sock"
    resync_seconds: float = 30.0
    dataplane: str = "kernel"  # or "vpp"
    vpp_api_socket: str = "/run/vpp/api.sock"  # --dataplane vpp: VPP's binary API socket
    vpp_stats_socket: str | None = None  # --dataplane vpp: its stats socket (counters)
    metrics_address: str | None = "127.0.0.1:9876"  # /metrics /healthz /readyz; None: off


@dataclass
class _Inputs:
    """The allocations render needs, cached between store reads."""

    node_ids: dict[str, int] = field(default_factory=dict)
    service_bsids: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    pod_interfaces: dict[str, PodInterface] = field(default_factory=dict)


def without_pods(config: NodeConfig) -> NodeConfig:
    # The kernel backend does not own pod interfaces (the CNI wiring does); pods are
    # reconciled by PodNetworkProgrammer instead.
    return NodeConfig(
        config.encap_source,
        frozenset(),
        config.local_sids,
        config.policies,
        config.steerings,
        config.routes,
    )


class _AgentHooks(CniHooks):
    def __init__(self, agent: Agent) -> None:
        self.agent = agent

    def readiness(self) -> tuple[int, str] | None:
        if not self.agent.ready.is_set():
            why = self.agent.programming_error
            return (
                cni_protocol.NOT_AVAILABLE,
                "the dataplane has not been programmed yet" + (f": {why}" if why else ""),
            )
        return None

    def on_pod_added(self, allocation: PodAllocation, attachment: Attachment) -> None:
        self.agent.pod_wired(allocation, attachment.host_ifname, attachment.netns)

    def on_pod_deleted(self, allocation: PodAllocation, host_ifname: str) -> None:
        self.agent.pod_unwired(allocation, host_ifname)

    def on_interface_removed(self, host_ifname: str) -> None:
        self.agent.interface_removed(host_ifname)

    def check_pod(self, allocation: PodAllocation, host_ifname: str) -> list[str]:
        return self.agent.check_pod(allocation)

    def on_request(self, command: str, code: int, seconds: float) -> None:
        self.agent.telemetry.metrics.cni_request(command, code, seconds)


class Agent:
    def __init__(
        self,
        options: AgentOptions,
        config: Config,
        address_plan: AddressPlan,
        *,
        backend_factory: Callable[[], Backend] | None = None,
        store: Store | None = None,
    ) -> None:
        self.options = options
        self.config = config
        self.plan = address_plan
        self._backend_factory = backend_factory
        self._store = store
        self.ready = threading.Event()
        self._stop = threading.Event()
        self._events: queue.Queue[tuple[str, Any]] = queue.Queue()
        self.state = ClusterState()
        self._inputs = _Inputs()
        self._renderer: Renderer | None = None
        self._applied: dict[Any, DataplaneObject] = {}
        self._applied_encap: Any = None
        self._full_resync_due = 0.0
        self._desired: NodeConfig | None = None  # as last programmed
        self._rendered: NodeConfig | None = None  # as last rendered (programmed or not)
        # Why the last pass could not program the dataplane (None after a pass that could).
        self.programming_error: str | None = None
        self._store_down = False
        self._node_ids_stale = False  # the store's node pool changed since it was read
        self._failures = 0
        self.stats: dict[str, int] = {"reconciles": 0, "changes": 0, "repairs": 0}
        self._lock = threading.Lock()  # guards what the API thread reads
        # The backend's netlink socket is shared by the loop, the API and /metrics scrapes.
        self._backend_lock = threading.Lock()
        self.telemetry = Telemetry()
        self._first_event_at: float | None = None  # the oldest change not yet programmed
        self.policy_view = PolicyView(options.node_name)
        self.policy_backend = NftablesBackend()
        # --dataplane vpp: policies as VPP ACLs on the pods' ports instead (made in run()).
        self.acl_backend: Any = None
        self._policies_stale = True  # compile everything at the next step
        # VPP mode: the node ends of this node's pods (VPP ports that are not leftovers).
        self._vpp_ports: set[str] = set()

    # --- life cycle --------------------------------------------------------------------

    def stop(self) -> None:
        self._stop.set()
        self._events.put(("stop", None))

    def run(self) -> int:
        opts = self.options
        self._check_dataplane()
        raw_store = self._store or open_store(self.config.store, kubeconfig=opts.kubeconfig)
        store = self.telemetry.instrument_store(raw_store)
        self.allocator = Allocator(store, self.plan, prefix=self.config.store.prefix + "ipam/")
        self.node_id = self._retry(
            "claiming the node ID", lambda: self.allocator.claim_node(opts.node_name)
        )
        if self.node_id is None:
            return 1
        log.info(
            "node %s has ID %d, locator %s",
            opts.node_name,
            self.node_id,
            self.plan.locator(self.node_id),
        )
        self.backend = self._make_backend()
        if self.vpp and self._backend_factory is None:
            from srv6ctl.dataplane.vpp_acl import VppAclBackend

            self.acl_backend = VppAclBackend(self.options.vpp_api_socket)
        self.podnet = PodNetworkProgrammer(
            c for c in (self.plan.service_cidr_v6, self.plan.service_cidr_v4) if c is not None
        )
        self.cni = CniServer(
            opts.node_name,
            self.allocator,
            PodWiring(self._netns_path(), mode=opts.dataplane),
            socket_path=opts.cni_socket,
            hooks=_AgentHooks(self),
        )
        self.telemetry.add_dataplane(
            self.backend.counters,
            lambda: self._desired or NodeConfig(),
            interfaces=LinkStats(self._netns_path()).read,
            lock=self._backend_lock,
        )
        # The cluster-wide pools as this agent last read them (node events, service
        # allocations): a store read of each at every scrape of every node would load the
        # store, the API server itself with the Kubernetes store. Its own pods: one read.
        self.telemetry.add_pools(
            counted_pools(
                self.plan,
                nodes=lambda: len(self._inputs.node_ids),
                pods=lambda: len(self.allocator.pods(opts.node_name)),
                services=lambda: len(self._inputs.service_bsids),
            )
        )
        self.telemetry.metrics.set_not_ready("the dataplane has not been programmed yet")
        if opts.metrics_address is not None:
            server = self.telemetry.serve(opts.metrics_address)
            self.metrics_url = server.url
            log.info("metrics and health on %s", server.url)
        for allocation in (
            self._retry("reading this node's pods", lambda: self.allocator.pods(opts.node_name))
            or []
        ):
            self._remember_pod(allocation)
        self.cni.start()
        self._api = AgentApiServer(self.options.api_socket, self.query)
        self._api.start()
        # A node's claim is a store write no cluster object shows: watched, so that a node
        # joining reaches this agent at once rather than at its next resync.
        node_watch = NodeWatch(self.allocator, lambda: self._events.put(("nodes", None)))
        node_watch.start()
        source = self._start_source()
        try:
            self._loop()
        finally:
            log.info("stopping: the dataplane is left as it is")
            node_watch.stop()
            source.stop()
            self.cni.stop()
            self._api.stop()
            self.telemetry.close()
            self.backend.close()
            if self.acl_backend is not None:
                self.acl_backend.close()
            raw_store.close()
        return 0

    def _check_dataplane(self) -> None:
        """Refuse a kernel that cannot run the kernel dataplane, before anything is claimed
        or written; say once what an able kernel runs without."""
        if self._backend_factory is not None or self.options.dataplane != "kernel":
            return
        from srv6ctl.dataplane.kernel_caps import probe_kernel

        features = probe_kernel()
        problem = features.unsupported()
        if problem is not None:
            raise DataplaneUnavailable(problem)
        if features.left_out():
            log.info(
                "kernel %s: running without %s", features.kernel, "; ".join(features.left_out())
            )

    def _netns_path(self) -> str | None:
        netns = self.options.netns
        if netns is None or netns.startswith("/"):
            return netns
        return f"/var/run/netns/{netns}"

    @property
    def vpp(self) -> bool:
        """VPP mode: VPP owns the node ends of the pods' veths (their ports, neighbours and
        host routes), so pods are attached to and detached from the backend here."""
        return self.options.dataplane == "vpp"

    def _make_backend(self) -> Backend:
        if self._backend_factory is not None:
            return self._backend_factory()
        if self.options.dataplane == "vpp":
            from srv6ctl.dataplane.vpp import VppBackend

            log.info("VPP dataplane on %s", self.options.vpp_api_socket)
            return VppBackend(
                self.options.vpp_api_socket,
                stats_socket=self.options.vpp_stats_socket,
                # The CNI wiring makes the veth pair; VPP takes its node end by af_packet.
                pod_interface="af_packet",
                pod_gateway_v6=self.plan.gateway_v6(self.node_id),
                pod_gateway_v4=self.plan.gateway_v4(self.node_id),
                vpp_netns=self._netns_path(),
            )
        if self.options.dataplane != "kernel":
            raise SystemExit(f"--dataplane {self.options.dataplane}: kernel or vpp")
        from srv6ctl.dataplane.kernel import KernelBackend

        return KernelBackend(self._netns_path() or "/proc/self/ns/net")

    def _start_source(self) -> Any:
        sink = self._source_event
        if self.options.lab_dir is not None:
            from srv6ctl.sources.lab import LabSource

            lab = LabSource(self.options.lab_dir)
            # The first reconcile must see the whole cluster: against a half-read state it
            # would delete what a restarted agent's dataplane rightly holds.
            for event in lab.poll():
                sink(event)
            lab.start(sink)
            return lab
        from srv6ctl.sources.kubernetes import KubernetesSource

        source = KubernetesSource(sink, kubeconfig=self.options.kubeconfig)
        source.start()
        while not self._stop.is_set() and not source.wait_synced(timeout=5.0):
            log.info("waiting for the first list of every kind from the API server")
        return source

    def _source_event(self, event: SourceEvent) -> None:
        self._events.put(("source", event))

    def _count_source_event(self, event: SourceEvent) -> None:
        if isinstance(event, Replace):  # a (re)list: the first one, or after 410 Gone
            self.telemetry.metrics.relisted(str(event.kind).lower() + "s")

    def _retry(self, what: str, call: Callable[[], Any]) -> Any:
        """Call until it works or the agent stops; log once per back-off step."""
        delay = 0.5
        while not self._stop.is_set():
            try:
                return call()
            except StoreError as err:
                log.warning("%s failed (%s); retrying in %.1fs", what, err, delay)
                self._stop.wait(delay)
                delay = min(delay * 2, MAX_BACKOFF_S)
        return None

    # --- pods (called from CNI threads) -------------------------------------------------

    def _remember_pod(self, allocation: PodAllocation) -> None:
        from cni.wiring import host_ifname

        name = host_ifname(allocation.container_id, allocation.interface)
        with self._lock:
            self._vpp_ports.add(name)
            if allocation.uid:
                interface = PodInterface(name, allocation.netns, allocation.interface)
                self._inputs.pod_interfaces[allocation.uid] = interface

    def pod_wired(self, allocation: PodAllocation, host_ifname: str, netns: str) -> None:
        if self.vpp:
            # Before CNI ADD returns: the pod has a network when its containers start. A
            # failure fails the ADD ("try again later"), which the runtime retries.
            pod = self.state.pod_by_uid(allocation.uid) if allocation.uid else None
            kind = pod.interface_type if pod is not None else ""
            attachment = _vpp_attachment(allocation, host_ifname, netns, kind)
            with self._backend_lock:
                self.backend.apply([Change(Op.ADD, new=attachment)])
                with self._lock:  # before the lock goes: a resync must not detach it
                    self._vpp_ports.add(host_ifname)
        if allocation.uid:
            with self._lock:
                self._inputs.pod_interfaces[allocation.uid] = PodInterface(
                    host_ifname, netns, allocation.interface
                )
        self._events.put(("inputs", None))

    def pod_unwired(self, allocation: PodAllocation, host_ifname: str | None = None) -> None:
        if self.vpp and host_ifname is not None:
            self._vpp_detach(host_ifname)
        with self._lock:
            self._inputs.pod_interfaces.pop(allocation.uid, None)
            if host_ifname is not None:
                self._vpp_ports.discard(host_ifname)
        self._events.put(("inputs", None))

    def interface_removed(self, host_ifname: str) -> None:
        if self.vpp:
            self._vpp_detach(host_ifname)
        with self._lock:
            self._vpp_ports.discard(host_ifname)
            gone = [
                uid for uid, i in self._inputs.pod_interfaces.items() if i.interface == host_ifname
            ]
            for uid in gone:
                del self._inputs.pod_interfaces[uid]
        self._events.put(("inputs", None))

    def _vpp_detach(self, host_ifname: str) -> None:
        try:
            with self._backend_lock:
                self.backend.detach_pod(host_ifname)  # type: ignore[attr-defined]
        except Exception as err:  # DEL must not fail for it; the next resync retries
            log.warning("detaching %s from VPP: %s", host_ifname, err)

    def check_pod(self, allocation: PodAllocation) -> list[str]:
        sid = allocation.addresses.sid_dx6
        with self._lock:
            programmed = ("localsid", sid) in self._applied
        pod = self.state.pod_by_uid(allocation.uid) if allocation.uid else None
        if pod is None or programmed:
            return []  # the API has not reported the pod's addresses yet: nothing to hold
        return [f"the pod's End.DX6 SID {sid} is not programmed"]

    # --- the loop ------------------------------------------------------------------------

    def _loop(self) -> None:
        pending: set[DirtyKey] = set()  # kept until a step succeeds: level-triggered
        inputs_changed = True
        force_full = True  # the first pass, and the pass after any failure, dump and compare
        while not self._stop.is_set():
            timeout = max(0.0, self._full_resync_due - time.monotonic())
            batch: list[tuple[str, Any]] = []
            try:
                batch.append(self._events.get(timeout=timeout))
                # Drain what else is queued: one render and one reconcile for a burst.
                while True:
                    batch.append(self._events.get_nowait())
            except queue.Empty:
                pass
            if batch and self._first_event_at is None:
                self._first_event_at = time.time()
            for kind, payload in batch:
                if kind == "stop":
                    return
                if kind == "source":
                    pending |= self.state.apply(payload)
                    self._count_source_event(payload)
                elif kind == "inputs":
                    inputs_changed = True
                elif kind == "nodes":
                    self._node_ids_stale = inputs_changed = True
            full = force_full or time.monotonic() >= self._full_resync_due
            try:
                self._step(pending, inputs_changed or full, full)
            except Exception as err:  # the loop must survive anything
                self._failures += 1
                self.programming_error = f"{type(err).__name__}: {err}"
                self.telemetry.metrics.set_not_ready(
                    f"the dataplane could not be programmed: {self.programming_error}"
                )
                delay = min(0.5 * 2 ** (self._failures - 1), MAX_BACKOFF_S)
                log.warning(
                    "reconcile failed (%s: %s); the dataplane is left as it is, "
                    "full resync in %.1fs",
                    type(err).__name__,
                    err,
                    delay,
                )
                self._full_resync_due = time.monotonic() + delay
                force_full = True
                continue
            pending.clear()
            inputs_changed = False
            self._failures = 0
            self.programming_error = None
            self.telemetry.metrics.set_not_ready(None)
            if full:
                force_full = False
                self._full_resync_due = time.monotonic() + self.options.resync_seconds

    def _refresh_inputs(self, dirty: set[DirtyKey], everything: bool) -> RenderInputs:
        """Re-read the allocations render needs (node IDs, service BSIDs) from the store:
        all of them on a full pass, else only for what the dirty keys name. With the store
        unreachable, render goes on with what was read last (a new service waits)."""
        try:
            self._read_allocations(dirty, everything)
            if self._store_down:
                log.info("the store answers again")
            self._store_down = False
        except StoreError as err:
            if not self._store_down:
                log.warning("store unreachable (%s): using the allocations read last", err)
            self._store_down = True
        with self._lock:
            interfaces = dict(self._inputs.pod_interfaces)
        node_ids = dict(self._inputs.node_ids)
        node_ids.setdefault(self.options.node_name, self.node_id)
        return RenderInputs(
            plan=self.plan,
            node_ids=node_ids,
            service_bsids=dict(self._inputs.service_bsids),
            capabilities=self.backend.capabilities,
            pod_interfaces=interfaces,
        )

    def _read_allocations(self, dirty: set[DirtyKey], everything: bool) -> None:
        if (
            everything
            or self._node_ids_stale
            or not self._inputs.node_ids
            or any(isinstance(k, NodeKey) for k in dirty)
        ):
            self._inputs.node_ids = self.allocator.nodes()
            self._node_ids_stale = False
        if everything:
            services = list(self.state.services.values())
            live = {s.uid for s in services}
            for uid in sorted(set(self._inputs.service_bsids) - live):
                self._release_service(uid)
        else:
            found = (
                self.state.service(k.namespace, k.name) for k in dirty if isinstance(k, ServiceKey)
            )
            services = [s for s in found if s is not None]
        wanted = {
            s.uid: f"{s.namespace}/{s.name}"
            for s in services
            if (s.cluster_ip_v6 is not None or s.cluster_ip_v4 is not None)
            and s.uid not in self._inputs.service_bsids
        }
        if len(wanted) == 1:
            ((uid, name),) = wanted.items()
            allocations = {uid: self.allocator.allocate_service(uid, name)}
        else:  # a start or a resync: one listing, not a lookup per service
            allocations = self.allocator.allocate_services(wanted) if wanted else {}
        for uid, got in allocations.items():
            self._inputs.service_bsids[uid] = (got.bsid_v6, got.bsid_v4)

    def _release_service(self, uid: str) -> None:
        """A service this agent saw is gone: free its BSID index in the store (every agent
        tries; the first one frees it, the others find nothing to free). Kept in the cache,
        and tried again at the next full resync, if the store fails."""
        try:
            self.allocator.release_service(uid)
        except StoreError as err:
            log.warning("freeing the BSIDs of deleted service %s: %s; retrying later", uid, err)
            return
        del self._inputs.service_bsids[uid]

    def _step(self, dirty: set[DirtyKey], inputs_changed: bool, full: bool) -> None:
        refresh = inputs_changed or any(isinstance(k, NodeKey | ServiceKey) for k in dirty)
        inputs = self._refresh_inputs(dirty, full) if refresh or self._renderer is None else None
        with self.telemetry.metrics.render():
            if self._renderer is None:
                assert inputs is not None
                self._renderer = Renderer(self.state, self.options.node_name, inputs)
                delta = None
            else:
                delta = self._renderer.set_inputs(inputs) if inputs is not None else None
                more = self._renderer.update(dirty)
                delta = more if delta is None else _merge(delta, more)
            desired = self._renderer.config()
        with self._lock:
            self._rendered = desired
        with self.telemetry.metrics.reconcile():
            if full or delta is None:
                changes = self._full_reconcile(desired)
            elif delta:
                changes = self._incremental_reconcile(desired, delta)
            else:
                changes = []
            self._program_policies(desired, dirty, full or delta is None, delta)
        self.telemetry.metrics.changes_applied(changes)
        if self._first_event_at is not None and changes:
            # The SLI kube-proxy's network programming latency defines: from the change
            # reaching us to the dataplane holding it (the API server's own delay excluded).
            self.telemetry.metrics.programming_latency.observe_since(self._first_event_at)
        self._first_event_at = None
        if not self.ready.is_set():
            self.ready.set()
            log.info("dataplane programmed: ready")

    def _full_reconcile(self, desired: NodeConfig) -> list[Change]:
        try:
            if self.cni.retry_pending_releases():
                log.warning("pod addresses still waiting for the store to be released")
        except StoreError:
            pass  # already said by _refresh_inputs; retried at the next full resync
        target = without_pods(desired)
        with self._backend_lock:
            actual = self.backend.dump()
            changes = plan(target, actual)
            if changes:
                found = drift(target, actual)
                self.telemetry.metrics.record_drift(found)
                log.info("resync: %d change(s) to reach the desired state", len(changes))
                self.stats["repairs"] += len(changes)
            self.backend.apply(changes)
            if changes:
                self.telemetry.metrics.record_repair(found)
        with self._lock:
            self._applied = dict(target.by_key())
            self._applied_encap = target.encap_source
            self._desired = desired
        self.stats["reconciles"] += 1
        self.stats["changes"] += len(changes)
        if self.vpp:
            self._vpp_pods(desired)
        for pod in desired.pods:
            self._sync_pod(pod)
        return changes

    def _vpp_pods(self, desired: NodeConfig) -> None:
        """At a full resync in VPP mode: each wired pod's port made whole (a read each when
        nothing is missing), and ports of pods this node no longer has detached."""
        wired = {p.interface: p for p in desired.pods if p.netns and os.path.exists(p.netns)}
        with self._backend_lock:
            with self._lock:
                known = set(self._vpp_ports)
            backend: Any = self.backend
            for interface in set(backend.pod_ports()) - known - set(wired):
                log.info("detaching %s from VPP: no pod of this node uses it", interface)
                backend.detach_pod(interface)
            for pod in wired.values():
                try:
                    backend.apply([Change(Op.ADD, new=pod)])
                except Exception as err:  # one pod must not stop the others
                    log.warning("pod %s: VPP port: %s", pod.pod, err, extra={"pod": pod.pod})

    def _incremental_reconcile(self, desired: NodeConfig, delta: Any) -> list[Change]:
        touched = [o for o in delta.added | delta.removed if not isinstance(o, PodAttachment)]
        keys = {o.key for o in touched}
        with self._lock:
            before = [self._applied[k] for k in keys if k in self._applied]
        after = [o for o in delta.added if not isinstance(o, PodAttachment)]
        encap_old = self._applied_encap
        encap_new = desired.encap_source
        changes = plan(config_of(after, encap_new), config_of(before, encap_old))
        with self._backend_lock:
            self.backend.apply(changes)
        with self._lock:
            for key in keys:
                self._applied.pop(key, None)
            for obj in after:
                self._applied[obj.key] = obj
            self._applied_encap = encap_new
            self._desired = desired
        self.stats["reconciles"] += 1
        self.stats["changes"] += len(changes)
        added_pods = {p.key: p for p in delta.added if isinstance(p, PodAttachment)}
        for pod in added_pods.values():
            self._sync_pod(pod)
        for pod in delta.removed:
            if isinstance(pod, PodAttachment) and pod.key not in added_pods:
                self._clear_pod(pod)
        return changes

    def _sync_pod(self, pod: PodAttachment) -> None:
        if not pod.netns or not os.path.exists(pod.netns):
            return
        try:
            done = self.podnet.sync(pod)
        except Exception as err:  # one pod must not stop the others
            log.warning("pod %s: %s", pod.pod, err, extra={"pod": pod.pod})
            return
        if done.writes:
            log.info(
                "pod %s: service addresses +%s -%s, port rewrites %s",
                pod.pod,
                [str(a) for a in done.added],
                [str(a) for a in done.removed],
                "replaced" if done.rewrites_replaced else "unchanged",
                extra={
                    "pod": pod.pod,
                    "service": ",".join(sorted(map(str, pod.service_addresses))),
                },
            )

    # --- NetworkPolicy ---------------------------------------------------------------------

    def _program_policies(
        self, desired: NodeConfig, dirty: set[DirtyKey], full: bool, delta: Any
    ) -> None:
        """Compile (all, or what `dirty` may affect) and apply each local pod's policy
        table. A failure is logged per pod and retried at the next full resync; the
        backend remembers what it wrote, so an unchanged pod costs nothing."""
        netns_of = {p.pod: p.netns for p in desired.pods if p.netns}
        updates: dict[PolicyPodKey, PodRules | None]
        try:
            if full or self._policies_stale:
                compiled = self.policy_view.full(self.state)
                updates = {}
                for name in netns_of:
                    namespace, _, pod = name.partition("/")
                    key = PolicyPodKey(namespace, pod)
                    updates[key] = compiled.get(key)
            else:
                updates = dict(self.policy_view.update(self.state, dirty))
                for obj in delta.added if delta is not None else ():
                    # A pod (re)attached, maybe in a new netns: give it its rules there.
                    if isinstance(obj, PodAttachment):
                        namespace, _, pod = obj.pod.partition("/")
                        key = PolicyPodKey(namespace, pod)
                        updates[key] = self.policy_view.rules.get(key)
            self._policies_stale = False
        except Exception as err:  # compile errors must not stop the loop
            log.warning("network policies: %s: %s; retrying", type(err).__name__, err)
            self._policies_stale = True
            self._full_resync_due = min(self._full_resync_due, time.monotonic() + 1.0)
            return
        if self.acl_backend is not None:
            self._program_acls(desired, updates, full, delta)
            return
        if delta is not None:
            added = {p.pod for p in delta.added if isinstance(p, PodAttachment)}
            for obj in delta.removed:
                if isinstance(obj, PodAttachment) and obj.pod not in added and obj.netns:
                    self.policy_backend.forget(obj.netns)
        for key, rules in sorted(updates.items()):
            self._apply_policy(str(key), netns_of.get(str(key)), rules, verify=full)

    def _program_acls(
        self,
        desired: NodeConfig,
        updates: dict[PolicyPodKey, PodRules | None],
        full: bool,
        delta: Any,
    ) -> None:
        """VPP mode: each pod's policy as ACLs on its VPP port (srv6ctl.dataplane.vpp_acl);
        at a full resync, ACLs of ports this node no longer has go."""
        from policies.vpp_acl import translate

        interface_of = {p.pod: p.interface for p in desired.pods}
        backend = self.acl_backend
        try:
            if full:
                for interface in backend.sweep(interface_of.values()):
                    log.info("removed the VPP ACLs of %s: no pod of this node uses it", interface)
            elif delta is not None:
                added = {p.pod for p in delta.added if isinstance(p, PodAttachment)}
                for obj in delta.removed:
                    if isinstance(obj, PodAttachment) and obj.pod not in added:
                        backend.remove(obj.interface)
        except Exception as err:  # retried at the next full resync
            log.warning("VPP ACLs: %s: %s", type(err).__name__, err)
        for key, rules in sorted(updates.items()):
            pod = str(key)
            interface = interface_of.get(pod)
            if interface is None:
                continue  # not wired here (yet): applied when its attachment appears
            try:
                outcome = backend.apply(pod, interface, None if rules is None else translate(rules))
            except Exception as err:  # one pod must not stop the others
                log.warning(
                    "pod %s: network policy not applied in VPP (%s); retrying at the next resync",
                    pod,
                    err,
                    extra={"pod": pod},
                )
                continue
            if outcome.value != "unchanged":
                log.info("pod %s: VPP ACLs %s", pod, outcome.value, extra={"pod": pod})

    def _apply_policy(
        self, pod: str, netns: str | None, rules: PodRules | None, verify: bool = False
    ) -> None:
        if netns is None:
            return  # not wired here (yet): applied when its attachment appears
        if not os.path.exists(netns):
            self.policy_backend.forget(netns)
            return
        try:
            # At a full resync, a table deleted behind our back is made again (a read per
            # isolated pod); its contents are trusted to be what the backend wrote.
            force = (
                verify
                and rules is not None
                and rules.isolated
                and POLICY_TABLE not in set(tables_of(netns))
            )
            outcome = self.policy_backend.apply(netns, rules, force=force, probe=True)
        except Exception as err:  # one pod must not stop the others
            log.warning(
                "pod %s: network policy not applied (%s); retrying at the next resync",
                pod,
                err,
                extra={"pod": pod},
            )
            return
        if outcome is not Outcome.UNCHANGED:
            log.info("pod %s: network policy %s", pod, outcome.value, extra={"pod": pod})

    def _clear_pod(self, pod: PodAttachment) -> None:
        if pod.netns and os.path.exists(pod.netns):
            try:
                self.podnet.clear(pod.netns)
            except Exception as err:
                log.warning("pod %s: %s", pod.pod, err, extra={"pod": pod.pod})

    # --- the read-only API (srv6ctl show) --------------------------------------------------

    def query(self, what: str) -> Any:
        with self._lock:
            desired = self._rendered
        if what == "status":
            return {
                "node": self.options.node_name,
                "node_id": self.node_id,
                "locator": str(self.plan.locator(self.node_id)),
                "ready": self.ready.is_set(),
                "rendered": desired is not None,
                "programming_error": self.programming_error,
                "metrics": self.metrics_url,
                "dataplane": self.options.dataplane,
                # State-changing messages this agent sent to its dataplane (a restart with
                # nothing to change sends none).
                "dataplane_writes": _writes(self.backend, self.acl_backend),
                # VPP only: reconnections after VPP went away (each replays what it lost).
                "dataplane_reconnects": getattr(self.backend, "reconnects", None),
                **self.stats,
            }
        if what == "desired":
            return to_jsonable(desired)
        if what == "actual":
            with self._backend_lock:
                return to_jsonable(self.backend.dump())
        if what == "drift":
            if desired is None:
                return {}
            with self._backend_lock:
                return drift(without_pods(desired), self.backend.dump())
        if what == "allocations":
            nodes = self.allocator.nodes()
            return {
                "nodes": nodes,
                "locators": {n: str(self.plan.locator(i)) for n, i in nodes.items()},
                "pods": to_jsonable(self.allocator.pods(self.options.node_name)),
                "services": to_jsonable(self.allocator.services()),
            }
        raise ValueError(f"unknown query {what!r} (status, desired, actual, drift, allocations)")


def _writes(*backends: Any) -> int | None:
    counts = [b.writes for b in backends if getattr(b, "writes", None) is not None]
    return sum(counts) if counts else None


def _vpp_attachment(
    allocation: PodAllocation, host_ifname: str, netns: str, interface_type: str = ""
) -> PodAttachment:
    """The VPP side of a freshly wired pod (what the renderer makes of it, less the
    service memberships, which VPP does not hold). A pod the API has not shown us yet gets
    the usual port; a memif annotation seen later turns it into a memif at the resync."""
    addresses = allocation.addresses
    prefixes = [f"{addresses.ipv6}/128"]
    if addresses.ipv4 is not None:
        prefixes.append(f"{addresses.ipv4}/32")
    return PodAttachment(
        interface=host_ifname,
        pod=allocation.pod,
        netns=netns,
        container_interface=allocation.interface,
        addresses=frozenset(prefixes),  # type: ignore[arg-type]
        **pod_interface_fields(interface_type, allocation.uid),
    )


def _merge(a: Any, b: Any) -> Any:
    from srv6ctl.render import RenderDelta

    # a then b: an object added by a and removed by b cancels out, and the reverse.
    added = (a.added - b.removed) | b.added
    removed = (a.removed - b.added) | b.removed
    return RenderDelta(
        added=frozenset(added),
        removed=frozenset(removed),
        encap_source_changed=a.encap_source_changed or b.encap_source_changed,
    )
