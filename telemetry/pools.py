"""IPAM pool gauges, read at scrape time: how big each pool is and how much of it is used.

`PoolCollector(source)` calls `source()` on each scrape; `allocator_pools(allocator, node)`
builds that source from an `ipam6` allocator (duck-typed, so telemetry does not import
ipam6). Its pools: `node_ids` (cluster-wide), `pod_addresses` (this node's), and
`service_bsids` (cluster-wide). Each read is one store `list` per pool. `counted_pools`
takes the counts from the caller instead: an agent knows the cluster-wide ones already,
and reading them from the store at every scrape of every node would load the store (on
the Kubernetes store, a whole ConfigMap per pool per scrape).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sized
from dataclasses import dataclass
from typing import Protocol

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from telemetry import metrics as m

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PoolUsage:
    pool: str
    size: int
    used: int


PoolSource = Callable[[], Iterable[PoolUsage]]


class _Plan(Protocol):
    @property
    def node_ids(self) -> Sized: ...

    @property
    def pod_indexes(self) -> Sized: ...

    @property
    def service_indexes(self) -> Sized: ...


class _Allocator(Protocol):
    @property
    def plan(self) -> _Plan: ...

    def nodes(self) -> Sized: ...

    def pods(self, node: str) -> Sized: ...

    def services(self) -> Sized: ...


def allocator_pools(allocator: _Allocator, node: str) -> PoolSource:
    """The pools of `allocator` as seen from `node`, each read from the store."""
    return counted_pools(
        allocator.plan,
        nodes=lambda: len(allocator.nodes()),
        pods=lambda: len(allocator.pods(node)),
        services=lambda: len(allocator.services()),
    )


def counted_pools(
    plan: _Plan,
    *,
    nodes: Callable[[], int],
    pods: Callable[[], int],
    services: Callable[[], int],
) -> PoolSource:
    """The pools of `plan`, with how many entries of each are used counted by the caller."""

    def read() -> list[PoolUsage]:
        return [
            PoolUsage("node_ids", len(plan.node_ids), nodes()),
            PoolUsage("pod_addresses", len(plan.pod_indexes), pods()),
            PoolUsage("service_bsids", len(plan.service_indexes), services()),
        ]

    return read


class PoolCollector(Collector):
    """srv6ctl_ipam_pool_size / _used per pool; a failed read exports no pool series and
    srv6ctl_ipam_scrape_success 0, so one slow store never breaks `/metrics`."""

    def __init__(self, source: PoolSource) -> None:
        self._source = source

    def describe(self) -> Iterable[Metric]:
        for spec in (m.POOL_SIZE, m.POOL_USED, m.POOL_SCRAPE_SUCCESS):
            yield GaugeMetricFamily(spec.name, spec.help, labels=spec.labels)

    def collect(self) -> Iterator[Metric]:
        size = GaugeMetricFamily(m.POOL_SIZE.name, m.POOL_SIZE.help, labels=m.POOL_SIZE.labels)
        used = GaugeMetricFamily(m.POOL_USED.name, m.POOL_USED.help, labels=m.POOL_USED.labels)
        try:
            pools = list(self._source())
            ok = True
        except Exception:
            log.exception("reading the IPAM pools for /metrics failed")
            pools, ok = [], False
        for pool in pools:
            size.add_metric([pool.pool], pool.size)
            used.add_metric([pool.pool], pool.used)
        yield size
        yield used
        yield GaugeMetricFamily(
            m.POOL_SCRAPE_SUCCESS.name, m.POOL_SCRAPE_SUCCESS.help, value=1 if ok else 0
        )
