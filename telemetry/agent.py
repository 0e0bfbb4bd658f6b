"""`Telemetry`: the one object a node agent builds to be observable.

    telemetry = Telemetry()                                   # registry + AgentMetrics
    telemetry.add_dataplane(backend.counters, lambda: desired, lock=backend_lock,
                            interfaces=LinkStats(netns).read)
    telemetry.add_pools(allocator_pools(allocator, node))
    store = telemetry.instrument_store(store)                 # before building the Allocator
    server = telemetry.serve("127.0.0.1:9876")                # /metrics /healthz /readyz
    ...
    with telemetry.metrics.reconcile():
        changes = plan(desired, backend.dump()); backend.apply(changes)
    telemetry.metrics.changes_applied(changes)
    ...
    telemetry.close()                                         # stops the server

Each `Telemetry` has its own registry (not prometheus-client's global one), so several
agents can live in one process (the lab) and tests stay independent.
"""

from __future__ import annotations

import contextlib
from importlib import metadata
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
)

from telemetry.dataplane import ConfigSource, CountersSource, DataplaneCollector, InterfaceSource
from telemetry.metrics import AgentMetrics
from telemetry.pools import PoolCollector, PoolSource
from telemetry.server import DEFAULT_ADDRESS, MetricsServer, Readiness
from telemetry.store import InstrumentedStore

if TYPE_CHECKING:
    from ipam6.store.base import Store


def package_version() -> str:
    try:
        return metadata.version("srv6ctl")
    except metadata.PackageNotFoundError:
        return "unknown"


class Telemetry:
    """See the module docstring."""

    def __init__(self, *, version: str | None = None, process_metrics: bool = True) -> None:
        self.registry = CollectorRegistry()
        if process_metrics:
            # process_* (CPU, memory, fds) and python_* (GC, version) like any exporter.
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
            GCCollector(registry=self.registry)
        self.metrics = AgentMetrics(self.registry, version=version or package_version())
        self.server: MetricsServer | None = None

    def add_dataplane(
        self,
        counters: CountersSource,
        config: ConfigSource,
        *,
        interfaces: InterfaceSource | None = None,
        lock: contextlib.AbstractContextManager[Any] | None = None,
    ) -> DataplaneCollector:
        """Export the backend's counters at scrape time (see `telemetry.dataplane`)."""
        collector = DataplaneCollector(counters, config, interfaces=interfaces, lock=lock)
        self.registry.register(collector)
        return collector

    def add_pools(self, source: PoolSource) -> PoolCollector:
        """Export IPAM pool size and usage at scrape time (see `telemetry.pools`)."""
        collector = PoolCollector(source)
        self.registry.register(collector)
        return collector

    def instrument_store(self, store: Store) -> InstrumentedStore:
        return InstrumentedStore(store, self.metrics)

    def serve(
        self, address: str = DEFAULT_ADDRESS, readiness: Readiness | None = None
    ) -> MetricsServer:
        """Start the HTTP endpoint; `readiness` defaults to `metrics.readiness`."""
        if self.server is not None:
            raise RuntimeError(f"already serving on {self.server.url}")
        server = MetricsServer(
            self.registry, address=address, readiness=readiness or self.metrics.readiness
        )
        server.start()
        self.server = server
        return server

    def close(self) -> None:
        server, self.server = self.server, None
        if server is not None:
            server.stop()
