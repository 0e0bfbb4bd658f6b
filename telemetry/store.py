"""A timing wrapper around an ipam6 `Store`: latency and errors of every store operation.

    store = InstrumentedStore(open_store(config), telemetry.metrics)
    allocator = Allocator(store, plan)

The allocator's own `on_store_op` callback fires before each call and cannot see how long
it took or whether it failed; wrapping the store can. Operations are the protocol's method
names (get, put, delete, txn, list, watch, revision); iterating a watch is not timed (it
blocks for as long as nothing happens), but an error it raises counts against "watch".
ipam6 types are imported for type checking only: telemetry has no run-time dependency on it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from telemetry.metrics import AgentMetrics

if TYPE_CHECKING:
    from ipam6.store.base import (
        Compare,
        KeyValue,
        Listing,
        Op,
        Store,
        TxnResult,
        Watch,
        WatchEvent,
    )


class InstrumentedWatch:
    def __init__(self, watch: Watch, metrics: AgentMetrics) -> None:
        self._watch = watch
        self._metrics = metrics

    def __iter__(self) -> Iterator[WatchEvent]:
        try:
            yield from self._watch
        except Exception:
            self._metrics.store_errors.labels("watch").inc()
            raise

    def cancel(self) -> None:
        self._watch.cancel()


class InstrumentedStore:
    """Implements `ipam6.store.base.Store` by delegating to `store`, timing each call."""

    def __init__(self, store: Store, metrics: AgentMetrics) -> None:
        self.inner = store
        self._metrics = metrics

    def get(self, key: str) -> KeyValue | None:
        with self._metrics.store_operation("get"):
            return self.inner.get(key)

    def put(self, key: str, value: bytes) -> int:
        with self._metrics.store_operation("put"):
            return self.inner.put(key, value)

    def delete(self, key: str) -> bool:
        with self._metrics.store_operation("delete"):
            return self.inner.delete(key)

    def txn(
        self,
        compares: Sequence[Compare],
        success: Sequence[Op],
        failure: Sequence[Op] = (),
    ) -> TxnResult:
        with self._metrics.store_operation("txn"):
            return self.inner.txn(compares, success, failure)

    def list(self, prefix: str, keys_only: bool = False) -> Listing:
        with self._metrics.store_operation("list"):
            return self.inner.list(prefix, keys_only)

    def watch(self, prefix: str, start_revision: int) -> Watch:
        with self._metrics.store_operation("watch"):
            watch = self.inner.watch(prefix, start_revision)
        return InstrumentedWatch(watch, self._metrics)

    def revision(self) -> int:
        with self._metrics.store_operation("revision"):
            return self.inner.revision()

    def close(self) -> None:
        self.inner.close()
