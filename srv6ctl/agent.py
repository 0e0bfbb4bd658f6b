"""The node agent: cluster events in, the node's dataplane out, pods served over CNI.

One process per node. Threads only produce events — the source (Kubernetes watches or the
lab's files), the store's node pool (`NodeWatch`), the CNI server (a pod wired or removed:
`AgentCniHooks`), a resync timer — and one loop consumes them, so the cluster state, the
renderer and the collaborators below are only ever driven from that loop:

    events → ClusterState → Renderer (dirty keys only; inputs from `AllocationCache`)
           → `Reconciler`: plan and apply (the keys a render delta touched, or everything
             against a dump of the backend: a full resync, every `resync` seconds and
             after any failure, which repairs drift and writes nothing when in sync),
             pods too (their VPP ports, loopback ClusterIPs and port rewrites)
           → `PolicyPrograms`: NetworkPolicy per local pod (nftables, or VPP ACLs)
           → `HealthChecks`: the healthCheckNodePorts of this node's services

The API thread reads through `AgentQueries`. Which dataplane, and refusing one that cannot
work here, is `srv6ctl.dataplane_choice`. Failures never tear the dataplane down: the
store or the API unreachable leaves the last programmed state in place while the loop
retries with back-off; SIGTERM stops the watches and sockets and leaves the dataplane as
it is, so pods keep working while the agent restarts.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from cni.server import CniServer
from cni.wiring import PodWiring
from ipam6.allocator import Allocator, NodeWatch
from ipam6.plan import AddressPlan
from ipam6.store.base import Store, StoreError
from ipam6.store.config import open_store
from srv6ctl.agent_api import AgentApiServer
from srv6ctl.agent_api import query_agent as query_agent  # the client, for callers
from srv6ctl.agent_cni import AgentCniHooks
from srv6ctl.agent_options import AgentOptions as AgentOptions
from srv6ctl.agent_queries import AgentQueries
from srv6ctl.allocations import AllocationCache
from srv6ctl.config import Config
from srv6ctl.dataplane.model import Backend, NodeConfig
from srv6ctl.dataplane_choice import DataplaneUnavailable as DataplaneUnavailable
from srv6ctl.dataplane_choice import check_dataplane, make_backend
from srv6ctl.podnet import PodNetworkProgrammer
from srv6ctl.policy_programs import PolicyPrograms
from srv6ctl.reconciler import Reconciler
from srv6ctl.render import Renderer
from srv6ctl.service_health import HealthChecks
from srv6ctl.sources.start import start_source
from srv6ctl.state import ClusterState, DirtyKey, NodeKey, Replace, ServiceKey, SourceEvent
from telemetry.agent import Telemetry
from telemetry.linkstats import LinkStats
from telemetry.pools import counted_pools

log = logging.getLogger("srv6ctl.agent")

MAX_BACKOFF_S = 30.0


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
        self._renderer: Renderer | None = None
        self._full_resync_due = 0.0
        self._rendered: NodeConfig | None = None  # as last rendered (programmed or not)
        # Why the last pass could not program the dataplane (None after a pass that could).
        self.programming_error: str | None = None
        self._failures = 0
        self._lock = threading.Lock()  # guards what the API thread reads
        self.telemetry = Telemetry()
        self._first_event_at: float | None = None  # the oldest change not yet programmed

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
        podnet = PodNetworkProgrammer(
            c for c in (self.plan.service_cidr_v6, self.plan.service_cidr_v4) if c is not None
        )
        self.reconciler = Reconciler(self.backend, self.telemetry.metrics, podnet)
        self.allocations = AllocationCache(
            self.allocator, self.plan, opts.node_name, opts.node_port_addresses
        )
        acl_backend = None
        if self.vpp and self._backend_factory is None:
            # Only VPP nodes load the VPP modules: an agent's start-up is its import time.
            from srv6ctl.dataplane.vpp_acl import VppAclBackend

            acl_backend = VppAclBackend(
                self.options.vpp_api_socket, api_dir=self.options.vpp_api_dir
            )
        self.policies = PolicyPrograms(opts.node_name, acl_backend)
        self.cni = CniServer(
            opts.node_name,
            self.allocator,
            PodWiring(self._netns_path(), mode=opts.dataplane),
            socket_path=opts.cni_socket,
            hooks=AgentCniHooks(
                self.state,
                self.allocations,
                self.reconciler,
                self.telemetry.metrics,
                self.ready,
                lambda: self.programming_error,
                lambda: self._events.put(("inputs", None)),
                # VPP owns the node ends of the pods' veths: ADD returns once the pod's
                # port is there (the pod has a network when its containers start).
                wait_for_port=self.vpp,
            ),
        )
        self.telemetry.add_dataplane(
            self.backend.counters,
            lambda: self.reconciler.desired or NodeConfig(),
            interfaces=LinkStats(self._netns_path()).read,
            lock=self.reconciler.lock,
        )
        # The cluster-wide pools as this agent last read them (node events, service
        # allocations): a store read of each at every scrape of every node would load the
        # store, the API server itself with the Kubernetes store. Its own pods: one read.
        self.telemetry.add_pools(
            counted_pools(
                self.plan,
                nodes=lambda: len(self.allocations.node_ids),
                pods=lambda: len(self.allocator.pods(opts.node_name)),
                services=lambda: len(self.allocations.service_bsids),
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
            self.allocations.pod_known(allocation)
        self.cni.start()
        self.health_checks: HealthChecks | None = None
        if opts.health_check_address is not None:
            address, netns = opts.health_check_address, self._netns_path()
            self.health_checks = HealthChecks(opts.node_name, netns, address, self._proxy_healthy)
        self.query = AgentQueries(
            opts.node_name,
            self.plan,
            self.allocator,
            self.reconciler,
            self._status,
            self._rendered_config,
        )
        self._api = AgentApiServer(self.options.api_socket, self.query)
        self._api.start()
        # A node's claim is a store write no cluster object shows: watched, so that a node
        # joining reaches this agent at once rather than at its next resync.
        node_watch = NodeWatch(self.allocator, lambda: self._events.put(("nodes", None)))
        node_watch.start()
        source = start_source(self._source_event, opts.lab_dir, opts.kubeconfig, self._stop)
        try:
            self._loop()
        finally:
            log.info("stopping: the dataplane is left as it is")
            node_watch.stop()
            source.stop()
            self.cni.stop()
            if self.health_checks is not None:
                self.health_checks.close()
            self._api.stop()
            self.telemetry.close()
            self.backend.close()
            if acl_backend is not None:
                acl_backend.close()
            raw_store.close()
        return 0

    def _check_dataplane(self) -> None:
        if self._backend_factory is None:  # a backend given is the caller's choice
            check_dataplane(self.options.dataplane)

    def _netns_path(self) -> str | None:
        return self.options.netns_path

    @property
    def vpp(self) -> bool:
        """VPP mode: VPP owns the node ends of the pods' veths (their ports, neighbours and
        host routes), so pods are attached to and detached from the backend here."""
        return self.options.dataplane == "vpp"

    def _make_backend(self) -> Backend:
        if self._backend_factory is not None:
            return self._backend_factory()
        opts = self.options
        return make_backend(
            opts.dataplane,
            self._netns_path(),
            self.plan,
            self.node_id,
            vpp_api_socket=opts.vpp_api_socket,
            vpp_stats_socket=opts.vpp_stats_socket,
            vpp_api_dir=opts.vpp_api_dir,
            vpp_host_interface=opts.vpp_host_interface,
        )

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
                    self.allocations.nodes_changed()
                    inputs_changed = True
            full = force_full or time.monotonic() >= self._full_resync_due
            try:
                self._step(pending, inputs_changed or full, full)
            except Exception as err:  # the loop must survive anything
                self._failures += 1
                self.reconciler.pass_failed()
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

    def _step(self, dirty: set[DirtyKey], inputs_changed: bool, full: bool) -> None:
        """One pass: render what changed, program it (all of it, compared with a dump of
        the backend, on a full pass), then the pods and the network policies."""
        refresh = inputs_changed or any(isinstance(k, NodeKey | ServiceKey) for k in dirty)
        inputs = None
        if refresh or self._renderer is None:
            inputs = self.allocations.inputs(
                self.state, dirty, full, self.node_id, self.backend.capabilities
            )
        with self.telemetry.metrics.render():
            if self._renderer is None:
                assert inputs is not None
                self._renderer = Renderer(self.state, self.options.node_name, inputs)
                delta = None
            else:
                delta = self._renderer.set_inputs(inputs) if inputs is not None else None
                more = self._renderer.update(dirty)
                delta = more if delta is None else delta.then(more)
            desired = self._renderer.config()
        with self._lock:
            self._rendered = desired
        with self.telemetry.metrics.reconcile():
            if full or delta is None:
                self._release_pending_addresses()
                changes = self.reconciler.full(desired, self.allocations.known_interfaces())
            elif delta:
                changes = self.reconciler.incremental(desired, delta)
            else:
                changes = []
            everything = full or delta is None
            if not self.policies.program(self.state, desired, dirty, everything, delta):
                self._full_resync_due = min(self._full_resync_due, time.monotonic() + 1.0)
        if self.health_checks is not None:
            self.health_checks.refresh(self.state, dirty, everything)
        self.telemetry.metrics.changes_applied(changes)
        if self._first_event_at is not None and changes:
            # The SLI kube-proxy's network programming latency defines: from the change
            # reaching us to the dataplane holding it (the API server's own delay excluded).
            self.telemetry.metrics.programming_latency.observe_since(self._first_event_at)
        self._first_event_at = None
        if not self.ready.is_set():
            self.ready.set()
            log.info("dataplane programmed: ready")

    def _proxy_healthy(self) -> bool:
        """kube-proxy's serviceProxyHealthy: the dataplane holds what was last rendered."""
        return self.ready.is_set() and self.programming_error is None

    def _release_pending_addresses(self) -> None:
        try:
            if self.cni.retry_pending_releases():
                log.warning("pod addresses still waiting for the store to be released")
        except StoreError:
            pass  # already said when reading the allocations; retried at the next resync

    # --- the read-only API (srv6ctl show) --------------------------------------------------

    def _rendered_config(self) -> NodeConfig | None:
        with self._lock:
            return self._rendered

    def _status(self) -> dict[str, Any]:
        return {
            "node": self.options.node_name,
            "node_id": self.node_id,
            "locator": str(self.plan.locator(self.node_id)),
            "ready": self.ready.is_set(),
            "programming_error": self.programming_error,
            "metrics": self.metrics_url,
            "dataplane": self.options.dataplane,
            # What the dataplane cannot program, and why (verify skips its NodePort checks
            # on a node without rules).
            "capabilities": {
                "rules": self.backend.capabilities.rules,
                "notes": list(self.backend.capabilities.notes),
            },
            # State-changing messages this agent sent to its dataplane (a restart with
            # nothing to change sends none).
            "dataplane_writes": _writes(self.backend, self.policies.acl_backend),
            # VPP only: reconnections after VPP went away (each replays what it lost).
            "dataplane_reconnects": getattr(self.backend, "reconnects", None),
        }


def _writes(*backends: Any) -> int | None:
    counts = [b.writes for b in backends if getattr(b, "writes", None) is not None]
    return sum(counts) if counts else None
