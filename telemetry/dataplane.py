"""The dataplane collector: the backend's packet counters, read at scrape time, labelled.

No polling thread: each scrape of `/metrics` calls the counters callable once (normally
`backend.counters`) and labels what it returns with the node's current desired
`NodeConfig` — which SID has which behaviour, which policy belongs to which service, which
pod owns which interface. Keys follow `Backend.counters()` in `srv6ctl.dataplane.model`:

    ("localsid", sid)                     -> Counters   srv6ctl_sid_*
    ("policy", bsid)                      -> Counters   srv6ctl_service_* (owner svc/...)
                                                        srv6ctl_policy_* (any other owner)
    ("segment_list", bsid, segments)      -> Counters   srv6ctl_service_segment_list_*
    ("pod", interface)                    -> InterfaceCounters (or via `interfaces=`)

`segments` is the list's tuple of SIDs. A backend that does not count bytes for an object
reports packets with zero bytes; such a bytes series is left out rather than exported as
a flat 0 (a counted packet has at least one byte).

Pod interface counters are from the pod's point of view: "receive" is what the node
delivered to the pod. Backends that report them as a plain `Counters` (no direction) are
ignored here; pass `interfaces=` (for the kernel, `telemetry.linkstats.LinkStats`).

Counters restart at 0 when the backend replaces an object (the kernel builds a new route
or group); Prometheus' rate() treats that as a counter reset, which is what it is.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Collection, Hashable, Iterable, Iterator, Mapping
from typing import Any, TypeAlias

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from srv6ctl.dataplane.model import Counters, InterfaceCounters, NodeConfig
from telemetry import metrics as m

log = logging.getLogger(__name__)

CountersSource: TypeAlias = Callable[[], Mapping[Hashable, Any]]
ConfigSource: TypeAlias = Callable[[], NodeConfig | None]
InterfaceSource: TypeAlias = Callable[[Collection[str]], Mapping[str, InterfaceCounters]]

_FAMILIES = {"v6": "ipv6", "v4": "ipv4"}


def service_of(owner: str) -> tuple[str, str] | None:
    """("namespace/name", "ipv6"|"ipv4") for a service policy's owner "svc/<ns>/<name>/v6"."""
    parts = owner.split("/")
    if len(parts) == 4 and parts[0] == "svc" and parts[3] in _FAMILIES:
        return f"{parts[1]}/{parts[2]}", _FAMILIES[parts[3]]
    return None


class _Families:
    """The metric families of one scrape, with duplicate label sets refused."""

    def __init__(self) -> None:
        self.counters: dict[str, CounterMetricFamily] = {}
        self._seen: set[tuple[str, tuple[str, ...]]] = set()

    def add(self, spec: m.MetricSpec, labels: tuple[str, ...], value: float) -> bool:
        if (spec.name, labels) in self._seen:
            return False
        self._seen.add((spec.name, labels))
        family = self.counters.get(spec.name)
        if family is None:
            family = self.counters[spec.name] = CounterMetricFamily(
                spec.name, spec.help, labels=spec.labels
            )
        family.add_metric(labels, value)
        return True


def _bytes_counted(counters: Counters) -> bool:
    return counters.bytes > 0 or counters.packets == 0


class DataplaneCollector(Collector):
    """See the module docstring.

    `counters` is called from the HTTP server's thread: when the backend is not safe to
    use from two threads at once (the kernel backend shares one netlink socket), pass the
    lock the agent holds around `apply`/`dump` as `lock`.
    """

    def __init__(
        self,
        counters: CountersSource,
        config: ConfigSource,
        *,
        interfaces: InterfaceSource | None = None,
        lock: contextlib.AbstractContextManager[Any] | None = None,
    ) -> None:
        self._counters = counters
        self._config = config
        self._interfaces = interfaces
        self._lock = lock if lock is not None else contextlib.nullcontext()

    def describe(self) -> Iterable[Metric]:
        for spec in m.ALL:
            if spec.source is m.Source.DATAPLANE:
                if spec.kind is m.Kind.COUNTER:
                    yield CounterMetricFamily(spec.name, spec.help, labels=spec.labels)
                else:
                    yield GaugeMetricFamily(spec.name, spec.help, labels=spec.labels)

    def collect(self) -> Iterator[Metric]:
        config = self._config() or NodeConfig()
        families = _Families()
        success = GaugeMetricFamily(
            m.DATAPLANE_SCRAPE_SUCCESS.name,
            m.DATAPLANE_SCRAPE_SUCCESS.help,
            labels=m.DATAPLANE_SCRAPE_SUCCESS.labels,
        )
        duration = GaugeMetricFamily(
            m.DATAPLANE_SCRAPE_DURATION.name,
            m.DATAPLANE_SCRAPE_DURATION.help,
            labels=m.DATAPLANE_SCRAPE_DURATION.labels,
        )

        def read(source: str, fn: Callable[[], Mapping[Any, Any]]) -> Mapping[Any, Any]:
            start = time.perf_counter()
            try:
                with self._lock:
                    values = fn()
                ok = True
            except Exception:
                log.exception("reading %s counters for /metrics failed", source)
                values, ok = {}, False
            duration.add_metric([source], time.perf_counter() - start)
            success.add_metric([source], 1 if ok else 0)
            return values

        counters = read("backend", self._counters)
        pods = {pod.interface: pod.pod for pod in config.pods}
        interface_counters: dict[str, InterfaceCounters] = {}
        for key, value in counters.items():
            pod_key = isinstance(key, tuple) and len(key) == 2 and key[0] == "pod"
            if pod_key and isinstance(value, InterfaceCounters):
                interface_counters[str(key[1])] = value
        if self._interfaces is not None:
            source = self._interfaces
            interface_counters.update(read("interfaces", lambda: source(sorted(pods))))

        self._add_counters(families, config, counters)
        self._add_pods(families, pods, interface_counters)
        yield from families.counters.values()
        yield success
        yield duration

    @staticmethod
    def _add_counters(
        families: _Families, config: NodeConfig, counters: Mapping[Hashable, Any]
    ) -> None:
        behaviours = {sid.sid: sid.behaviour for sid in config.local_sids}
        owners = {policy.bsid: policy.owner for policy in config.policies}
        for key, value in sorted(counters.items(), key=lambda item: repr(item[0])):
            if not isinstance(key, tuple) or not key or not isinstance(value, Counters):
                continue
            kind = key[0]
            if kind == "localsid" and len(key) == 2:
                labels = (str(key[1]), behaviours.get(key[1], "unknown"))
                families.add(m.SID_PACKETS, labels, value.packets)
                if _bytes_counted(value):
                    families.add(m.SID_BYTES, labels, value.bytes)
                families.add(m.SID_ERRORS, labels, value.errors)
            elif kind == "policy" and len(key) == 2:
                owner = owners.get(key[1], "")
                service = service_of(owner)
                if service is not None and families.add(m.SERVICE_PACKETS, service, value.packets):
                    if _bytes_counted(value):
                        families.add(m.SERVICE_BYTES, service, value.bytes)
                    continue
                policy = (str(key[1]), owner)
                families.add(m.POLICY_PACKETS, policy, value.packets)
                if _bytes_counted(value):
                    families.add(m.POLICY_BYTES, policy, value.bytes)
            elif kind == "segment_list" and len(key) == 3:
                service = service_of(owners.get(key[1], ""))
                if service is None:
                    continue
                segments = ",".join(str(s) for s in key[2])
                path = (*service, segments)
                families.add(m.SEGMENT_LIST_PACKETS, path, value.packets)
                if _bytes_counted(value):
                    families.add(m.SEGMENT_LIST_BYTES, path, value.bytes)

    @staticmethod
    def _add_pods(
        families: _Families, pods: Mapping[str, str], counters: Mapping[str, InterfaceCounters]
    ) -> None:
        for interface in sorted(counters):
            pod = pods.get(interface)
            if pod is None:
                continue  # not (or no longer) a pod of this node: no unbounded leftovers
            c = counters[interface]
            labels = (pod, interface)
            families.add(m.POD_RECEIVE_PACKETS, labels, c.receive_packets)
            families.add(m.POD_RECEIVE_BYTES, labels, c.receive_bytes)
            families.add(m.POD_RECEIVE_DROPS, labels, c.receive_drops)
            families.add(m.POD_TRANSMIT_PACKETS, labels, c.transmit_packets)
            families.add(m.POD_TRANSMIT_BYTES, labels, c.transmit_bytes)
            families.add(m.POD_TRANSMIT_DROPS, labels, c.transmit_drops)
