"""The names of every metric srv6ctl exports, and the control-plane metrics the agent feeds.

One `MetricSpec` per metric family: its full exposition name (counters end in `_total`,
durations in `_seconds`, sizes in `_bytes`), its type, its labels and what it means. The
collectors, the README table and the dashboard test all read this table, so a name exists
in exactly one place.

Labels are bounded: object kinds, operations, commands and result codes are small fixed
sets; SIDs, policies and pod interfaces are bounded by what one node holds. Nothing is
labelled per flow or per pod UID.

`AgentMetrics` holds the instruments the agent updates as it works (reconcile, render,
watches, store, CNI, drift, readiness). The dataplane and IPAM gauges are read at scrape
time by the collectors in `telemetry.dataplane` and `telemetry.pools` instead.
"""

from __future__ import annotations

import contextlib
import platform
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from srv6ctl.dataplane.model import Change

PREFIX = "srv6ctl_"


class Kind(StrEnum):
    COUNTER = "counter"
    GAUGE = "gauge"
    HISTOGRAM = "histogram"


class Source(StrEnum):
    """Where a metric's value comes from: a scrape-time read or an agent-side instrument."""

    DATAPLANE = "dataplane"  # the backend's counters, read at scrape time
    CONTROL = "control plane"  # updated by the agent as it works
    IPAM = "ipam"  # the allocator's pools, read at scrape time


@dataclass(frozen=True)
class MetricSpec:
    name: str
    kind: Kind
    help: str
    labels: tuple[str, ...] = ()
    source: Source = Source.CONTROL
    buckets: tuple[float, ...] = ()

    @property
    def base(self) -> str:
        """The family name without the counter suffix (what prometheus-client calls it)."""
        return self.name.removesuffix("_total") if self.kind is Kind.COUNTER else self.name

    @property
    def series_names(self) -> tuple[str, ...]:
        """Every sample name this family can expose (what PromQL may refer to)."""
        if self.kind is Kind.HISTOGRAM:
            return tuple(f"{self.name}{s}" for s in ("_bucket", "_sum", "_count"))
        return (self.name,)


# Buckets. Programming latency follows the kube-proxy SLI: the SLO is "99th percentile
# <= 30 s" (sig-scalability, network_programming_latency), so the buckets are dense
# around a second and reach minutes; the others are local work measured in milliseconds.
PROGRAMMING_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300)
RECONCILE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
RENDER_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1)
STORE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
CNI_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

_SID = ("sid", "behaviour")
_SERVICE = ("service", "family")
_POD = ("pod", "interface")


def _dp(name: str, help: str, labels: tuple[str, ...], kind: Kind = Kind.COUNTER) -> MetricSpec:
    return MetricSpec(PREFIX + name, kind, help, labels, Source.DATAPLANE)


# --- dataplane (read from the backend at scrape time) ----------------------------------

SID_PACKETS = _dp("sid_packets_total", "Packets processed by a local SID.", _SID)
SID_BYTES = _dp("sid_bytes_total", "Bytes processed by a local SID.", _SID)
SID_ERRORS = _dp(
    "sid_errors_total", "Packets a local SID dropped (e.g. End with segments left 0).", _SID
)
SERVICE_PACKETS = _dp(
    "service_packets_total", "Packets steered into a service's SR policy on this node.", _SERVICE
)
SERVICE_BYTES = _dp(
    "service_bytes_total",
    "Bytes steered into a service's SR policy (absent where the backend counts no bytes).",
    _SERVICE,
)
SEGMENT_LIST_PACKETS = _dp(
    "service_segment_list_packets_total",
    "Packets sent along one segment list (one backend endpoint) of a service's policy.",
    (*_SERVICE, "segments"),
)
SEGMENT_LIST_BYTES = _dp(
    "service_segment_list_bytes_total",
    "Bytes sent along one segment list of a service's policy.",
    (*_SERVICE, "segments"),
)
POLICY_PACKETS = _dp(
    "policy_packets_total",
    "Packets steered into an SR policy that belongs to no service (e.g. IPv4 to a remote pod).",
    ("bsid", "owner"),
)
POLICY_BYTES = _dp(
    "policy_bytes_total",
    "Bytes steered into an SR policy that belongs to no service.",
    ("bsid", "owner"),
)
POD_RECEIVE_PACKETS = _dp(
    "pod_receive_packets_total", "Packets delivered to a pod by the node.", _POD
)
POD_RECEIVE_BYTES = _dp("pod_receive_bytes_total", "Bytes delivered to a pod by the node.", _POD)
POD_RECEIVE_DROPS = _dp(
    "pod_receive_drops_total", "Packets for a pod dropped on its node-side interface.", _POD
)
POD_TRANSMIT_PACKETS = _dp("pod_transmit_packets_total", "Packets a pod sent into the node.", _POD)
POD_TRANSMIT_BYTES = _dp("pod_transmit_bytes_total", "Bytes a pod sent into the node.", _POD)
POD_TRANSMIT_DROPS = _dp(
    "pod_transmit_drops_total", "Packets from a pod dropped on its node-side interface.", _POD
)
DATAPLANE_SCRAPE_SUCCESS = _dp(
    "dataplane_scrape_success",
    "1 when the last read of the dataplane counters succeeded, else 0.",
    ("source",),
    Kind.GAUGE,
)
DATAPLANE_SCRAPE_DURATION = _dp(
    "dataplane_scrape_duration_seconds",
    "How long the last read of the dataplane counters took.",
    ("source",),
    Kind.GAUGE,
)

# --- control plane (instruments the agent updates) -------------------------------------

RECONCILE_DURATION = MetricSpec(
    PREFIX + "reconcile_duration_seconds",
    Kind.HISTOGRAM,
    "Time of one reconcile pass: dump, plan and apply.",
    ("result",),
    buckets=RECONCILE_BUCKETS,
)
RECONCILE_CHANGES = MetricSpec(
    PREFIX + "reconcile_changes_total",
    Kind.COUNTER,
    "Dataplane changes applied, by object kind and operation.",
    ("kind", "operation"),
)
LAST_RECONCILE = MetricSpec(
    PREFIX + "reconcile_last_success_timestamp_seconds",
    Kind.GAUGE,
    "Unix time of the last reconcile pass that succeeded.",
)
RENDER_DURATION = MetricSpec(
    PREFIX + "render_duration_seconds",
    Kind.HISTOGRAM,
    "Time to render the node's desired dataplane from cluster state.",
    buckets=RENDER_BUCKETS,
)
PROGRAMMING_LATENCY = MetricSpec(
    PREFIX + "network_programming_duration_seconds",
    Kind.HISTOGRAM,
    "From a Kubernetes object's change (e.g. an EndpointSlice's last-change-trigger-time) "
    "to the dataplane change it caused being applied on this node (the kube-proxy SLI).",
    buckets=PROGRAMMING_BUCKETS,
)
WATCH_RESTARTS = MetricSpec(
    PREFIX + "watch_restarts_total",
    Kind.COUNTER,
    "Watches restarted (closed by the server or failed), by resource.",
    ("resource",),
)
WATCH_RELISTS = MetricSpec(
    PREFIX + "watch_relists_total",
    Kind.COUNTER,
    "Full relists (first list, 410 Gone, compacted store history), by resource.",
    ("resource",),
)
STORE_DURATION = MetricSpec(
    PREFIX + "store_operation_duration_seconds",
    Kind.HISTOGRAM,
    "Latency of IPAM store operations, by operation (get, put, delete, txn, list, ...).",
    ("operation",),
    buckets=STORE_BUCKETS,
)
STORE_ERRORS = MetricSpec(
    PREFIX + "store_operation_errors_total",
    Kind.COUNTER,
    "IPAM store operations that raised, by operation.",
    ("operation",),
)
CNI_DURATION = MetricSpec(
    PREFIX + "cni_request_duration_seconds",
    Kind.HISTOGRAM,
    "Latency of CNI requests served by the agent, by command and CNI result code (0 = ok).",
    ("command", "code"),
    buckets=CNI_BUCKETS,
)
DRIFT_FOUND = MetricSpec(
    PREFIX + "dataplane_drift_found_total",
    Kind.COUNTER,
    "Objects found differing from the desired dataplane at a resync, by kind and operation "
    "needed to repair them.",
    ("kind", "operation"),
)
DRIFT_REPAIRED = MetricSpec(
    PREFIX + "dataplane_drift_repaired_total",
    Kind.COUNTER,
    "Drifted objects repaired, by kind and operation.",
    ("kind", "operation"),
)
BUILD_INFO = MetricSpec(
    PREFIX + "build_info",
    Kind.GAUGE,
    "Always 1; the labels say which srv6ctl and Python this agent runs.",
    ("version", "python_version"),
)
AGENT_READY = MetricSpec(
    PREFIX + "agent_ready",
    Kind.GAUGE,
    "1 when the agent is ready (dataplane reconciled at least once), else 0.",
)

# --- IPAM (read from the allocator at scrape time) -------------------------------------

POOL_SIZE = MetricSpec(
    PREFIX + "ipam_pool_size",
    Kind.GAUGE,
    "Entries a pool can hold: node IDs, this node's pod addresses, service BSIDs.",
    ("pool",),
    Source.IPAM,
)
POOL_USED = MetricSpec(
    PREFIX + "ipam_pool_used",
    Kind.GAUGE,
    "Entries of a pool in use.",
    ("pool",),
    Source.IPAM,
)
POOL_SCRAPE_SUCCESS = MetricSpec(
    PREFIX + "ipam_scrape_success",
    Kind.GAUGE,
    "1 when the last read of the IPAM pools succeeded, else 0.",
    (),
    Source.IPAM,
)

# Every spec above, in the order they are declared (the README table's order).
ALL: tuple[MetricSpec, ...] = tuple(
    value for value in list(globals().values()) if isinstance(value, MetricSpec)
)
BY_NAME: Mapping[str, MetricSpec] = {spec.name: spec for spec in ALL}


def exported_series_names() -> frozenset[str]:
    """Every sample name srv6ctl itself can expose (histograms: _bucket, _sum, _count)."""
    return frozenset(name for spec in ALL for name in spec.series_names)


# --- instruments -----------------------------------------------------------------------

# CNI commands are a closed set; anything else a broken client sends is "unknown", so a
# garbage request cannot mint a new series.
CNI_COMMANDS = frozenset({"ADD", "DEL", "CHECK", "STATUS", "GC", "VERSION"})


class ProgrammingLatency:
    """The network programming latency histogram, fed with the trigger's wall-clock time."""

    def __init__(self, histogram: Histogram) -> None:
        self._histogram = histogram

    def observe(self, seconds: float) -> None:
        self._histogram.observe(max(0.0, seconds))

    def observe_since(self, change_timestamp: datetime | float, now: float | None = None) -> None:
        """Record `now - change_timestamp`: a Unix time, or an aware `datetime` (naive ones
        are taken as UTC, as Kubernetes timestamps are). Clock skew between the API server
        and this node can make the difference negative: it counts as 0 rather than lowering
        the histogram's sum."""
        if isinstance(change_timestamp, datetime):
            if change_timestamp.tzinfo is None:
                change_timestamp = change_timestamp.replace(tzinfo=UTC)
            change_timestamp = change_timestamp.timestamp()
        current = time.time() if now is None else now
        self.observe(current - change_timestamp)


class AgentMetrics:
    """The control-plane instruments, registered on `registry`; see the module docstring.

    Thread-safe: prometheus-client instruments are, and readiness takes a lock.
    """

    def __init__(self, registry: CollectorRegistry, *, version: str) -> None:
        def counter(spec: MetricSpec) -> Counter:
            return Counter(spec.base, spec.help, spec.labels, registry=registry)

        def histogram(spec: MetricSpec) -> Histogram:
            return Histogram(
                spec.name, spec.help, spec.labels, registry=registry, buckets=spec.buckets
            )

        def gauge(spec: MetricSpec) -> Gauge:
            return Gauge(spec.name, spec.help, spec.labels, registry=registry)

        self.reconcile_duration = histogram(RECONCILE_DURATION)
        self.reconcile_changes = counter(RECONCILE_CHANGES)
        self.last_reconcile = gauge(LAST_RECONCILE)
        self.render_duration = histogram(RENDER_DURATION)
        self.programming_latency = ProgrammingLatency(histogram(PROGRAMMING_LATENCY))
        self.watch_restarts = counter(WATCH_RESTARTS)
        self.watch_relists = counter(WATCH_RELISTS)
        self.store_duration = histogram(STORE_DURATION)
        self.store_errors = counter(STORE_ERRORS)
        self.cni_duration = histogram(CNI_DURATION)
        self.drift_found = counter(DRIFT_FOUND)
        self.drift_repaired = counter(DRIFT_REPAIRED)
        self.build_info = gauge(BUILD_INFO)
        self.agent_ready = gauge(AGENT_READY)

        self.build_info.labels(version, platform.python_version()).set(1)
        self._lock = threading.Lock()
        self._reconciled = False
        self._not_ready: str | None = None

    # --- reconcile and render ----------------------------------------------------------

    @contextlib.contextmanager
    def reconcile(self) -> Iterator[None]:
        """Time a reconcile pass; a pass that raises is recorded with result="error".

        The first pass that succeeds makes the agent ready (unless `set_not_ready` says
        otherwise).
        """
        start = time.perf_counter()
        try:
            yield
        except BaseException:
            self.reconcile_duration.labels("error").observe(time.perf_counter() - start)
            raise
        self.reconcile_duration.labels("success").observe(time.perf_counter() - start)
        self.last_reconcile.set(time.time())
        with self._lock:
            self._reconciled = True
            self._publish_readiness()

    def changes_applied(self, changes: Iterable[Change]) -> None:
        """Count applied changes by `Change.kind` (the model class name) and operation."""
        for change in changes:
            self.reconcile_changes.labels(change.kind, str(change.op)).inc()

    @contextlib.contextmanager
    def render(self) -> Iterator[None]:
        with self.render_duration.time():
            yield

    # --- sources, store, CNI -----------------------------------------------------------

    def watch_restarted(self, resource: str) -> None:
        self.watch_restarts.labels(resource).inc()

    def relisted(self, resource: str) -> None:
        self.watch_relists.labels(resource).inc()

    @contextlib.contextmanager
    def store_operation(self, operation: str) -> Iterator[None]:
        """Time one store call; an exception counts as an error of that operation."""
        start = time.perf_counter()
        try:
            yield
        except BaseException:
            self.store_errors.labels(operation).inc()
            raise
        finally:
            self.store_duration.labels(operation).observe(time.perf_counter() - start)

    def cni_request(self, command: str, code: int, seconds: float) -> None:
        """One CNI request served: `code` is the CNI error code, 0 for success."""
        label = command if command in CNI_COMMANDS else "unknown"
        self.cni_duration.labels(label, str(int(code))).observe(max(0.0, seconds))

    # --- drift -------------------------------------------------------------------------

    def record_drift(self, drift: Mapping[str, Mapping[str, int]]) -> None:
        """Drift found at a resync: `reconcile.drift(desired, actual)`, {kind: {op: n}}."""
        for kind, ops in drift.items():
            for op, count in ops.items():
                self.drift_found.labels(kind, op).inc(count)

    def record_repair(self, drift: Mapping[str, Mapping[str, int]]) -> None:
        """The same mapping, once the plan that repairs it has been applied."""
        for kind, ops in drift.items():
            for op, count in ops.items():
                self.drift_repaired.labels(kind, op).inc(count)

    # --- readiness ---------------------------------------------------------------------

    def set_not_ready(self, reason: str | None) -> None:
        """An agent-side reason not to be ready (None clears it); the dataplane condition
        ("reconciled at least once") is tracked by `reconcile()` on its own."""
        with self._lock:
            self._not_ready = reason
            self._publish_readiness()

    def readiness(self) -> str | None:
        """None when ready, else why not: the callable `/readyz` asks."""
        with self._lock:
            return self._reason()

    def _reason(self) -> str | None:
        if self._not_ready is not None:
            return self._not_ready
        if not self._reconciled:
            return "the dataplane has not been reconciled yet"
        return None

    def _publish_readiness(self) -> None:
        self.agent_ready.set(1 if self._reason() is None else 0)


# --- documentation ---------------------------------------------------------------------


def markdown_table() -> str:
    """The README's metric table, generated from the specs (`python -m telemetry.metrics`)."""
    rows = [
        "| metric | type | labels | source | meaning |",
        "| --- | --- | --- | --- | --- |",
    ]
    for spec in ALL:
        labels = ", ".join(f"`{label}`" for label in spec.labels) or "—"
        rows.append(f"| `{spec.name}` | {spec.kind} | {labels} | {spec.source} | {spec.help} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(markdown_table(), end="")
