"""What the backend holds of ours, and the plans that bring it to the desired config.

Two ways to a plan (srv6ctl.dataplane.reconcile): a *full* pass dumps the backend and plans
against what is really there (repairing drift: a route deleted by hand comes back; with
nothing changed it writes nothing, which is also what a restart does); an *incremental*
pass plans only the keys a render delta touched, against what this reconciler last
applied, and reads nothing. Both keep `applied` (key → object) for the next incremental
pass and for CNI CHECK ("is this pod's SID programmed?").

The backend is shared with the API thread and /metrics scrapes (one netlink socket or VPP
connection), so every use of it goes through `lock`.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Hashable, Mapping
from typing import Any

from srv6ctl.dataplane.model import (
    POD,
    Backend,
    Change,
    DataplaneObject,
    IPv6Address,
    NodeConfig,
    kind_of,
)
from srv6ctl.dataplane.reconcile import Drift, config_of, drift, plan
from srv6ctl.render import RenderDelta
from telemetry.metrics import AgentMetrics

log = logging.getLogger("srv6ctl.agent")


def without_pods(config: NodeConfig) -> NodeConfig:
    """The config less its pods: pods are programmed by `srv6ctl.pods.PodPrograms` (the
    kernel backend does not own pod interfaces; the CNI wiring does)."""
    return dataclasses.replace(config, pods=frozenset())


class Reconciler:
    def __init__(self, backend: Backend, metrics: AgentMetrics) -> None:
        self.backend = backend
        self.metrics = metrics
        self.lock = threading.Lock()  # every use of the backend
        self._state_lock = threading.Lock()  # what other threads read of `applied`
        self._applied: dict[Hashable, DataplaneObject] = {}
        self._applied_encap: IPv6Address | None = None
        self.desired: NodeConfig | None = None  # as last programmed (for telemetry)
        self.stats: dict[str, int] = {"reconciles": 0, "changes": 0, "repairs": 0}

    def programmed(self, key: Hashable) -> bool:
        with self._state_lock:
            return key in self._applied

    def full(self, desired: NodeConfig) -> list[Change]:
        """Dump, plan against what is there, apply; record what drifted."""
        target = without_pods(desired)
        with self.lock:
            actual = self.backend.dump()
            changes = plan(target, actual)
            if changes:
                found = drift(target, actual)
                self.metrics.record_drift(found)
                log.info("resync: %d change(s) to reach the desired state", len(changes))
                self.stats["repairs"] += len(changes)
            self.backend.apply(changes)
            if changes:
                self.metrics.record_repair(found)
        with self._state_lock:
            self._applied = dict(target.by_key())
            self._applied_encap = target.encap_source
            self.desired = desired
        self._count(changes)
        return changes

    def incremental(self, desired: NodeConfig, delta: RenderDelta) -> list[Change]:
        """Plan the keys `delta` touched against what was applied; apply; no reads."""
        touched = [o for o in delta.added | delta.removed if kind_of(o) is not POD]
        keys = {o.key for o in touched}
        with self._state_lock:
            before = [self._applied[k] for k in keys if k in self._applied]
        after = [o for o in delta.added if kind_of(o) is not POD]
        encap_new = desired.encap_source
        changes = plan(config_of(after, encap_new), config_of(before, self._applied_encap))
        with self.lock:
            self.backend.apply(changes)
        with self._state_lock:
            for key in keys:
                self._applied.pop(key, None)
            for obj in after:
                self._applied[obj.key] = obj
            self._applied_encap = encap_new
            self.desired = desired
        self._count(changes)
        return changes

    def _count(self, changes: list[Change]) -> None:
        self.stats["reconciles"] += 1
        self.stats["changes"] += len(changes)

    # --- reads for the API ---------------------------------------------------------------

    def actual(self) -> NodeConfig:
        with self.lock:
            return self.backend.dump()

    def drift(self, desired: NodeConfig) -> Drift:
        with self.lock:
            return drift(without_pods(desired), self.backend.dump())

    def counters(self) -> Mapping[Any, Any]:
        with self.lock:
            return self.backend.counters()
