"""What the backend holds of ours, and the plans that bring it to the desired config.

Two ways to a plan (srv6ctl.dataplane.reconcile): a *full* pass dumps the backend and plans
against what is really there (repairing drift: a route deleted by hand comes back; with
nothing changed it writes nothing, which is also what a restart does); an *incremental*
pass plans only the keys a render delta touched, against what this reconciler last
applied, and reads nothing. Both keep `applied` (key → object) for the next incremental
pass, for CNI (is this pod's port, or its SID, programmed?) and for telemetry.

Pods go through the same plans, with what their kind says (`model.POD`): no backend reads
them back, so a full pass takes them as last applied and re-applies every one (an ensure:
it writes only what lacks), which is not drift. A pod is applied on its own — its node side
by the backend (a VPP port; nothing in the kernel), then its pod side here (`podnet`: its
loopback ClusterIPs, the hairpin rules for them and port rewrites) — so that one pod that
cannot be wired never stops the others or the rest of the plan: it is logged, left out of
`applied`, and tried again at the next full pass. Then the backend sweeps pod state no pod
of this node uses any more.

The backend is shared with the API thread and /metrics scrapes (one netlink socket or VPP
connection), so every use of it goes through `lock`.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Collection, Hashable, Iterable

from srv6ctl.dataplane.model import (
    Backend,
    Change,
    DataplaneObject,
    IPv6Address,
    NodeConfig,
    Op,
    is_pod,
)
from srv6ctl.dataplane.reconcile import Drift, config_of, drift, dumpable, plan, summarize
from srv6ctl.podnet import PodNetworkProgrammer
from srv6ctl.render import RenderDelta
from telemetry.metrics import AgentMetrics

log = logging.getLogger("srv6ctl.agent")


class Reconciler:
    def __init__(
        self, backend: Backend, metrics: AgentMetrics, podnet: PodNetworkProgrammer
    ) -> None:
        self.backend = backend
        self.metrics = metrics
        self.podnet = podnet
        self.lock = threading.Lock()  # every use of the backend
        self._state = threading.Condition()  # what other threads read of `applied`
        self._applied: dict[Hashable, DataplaneObject] = {}
        self._applied_encap: IPv6Address | None = None
        self._pod_errors: dict[str, str] = {}  # pod interface → why it is not wired
        self._failed_passes = 0  # passes the agent's loop gave up on (`pass_failed`)
        self.desired: NodeConfig | None = None  # as last programmed (for telemetry)
        self.stats: dict[str, int] = {"reconciles": 0, "changes": 0, "repairs": 0}

    # --- reads for other threads ------------------------------------------------------------

    def programmed(self, key: Hashable) -> bool:
        with self._state:
            return key in self._applied

    def expect_pod(self, interface: str) -> None:
        """A pod is being wired on `interface`: an error of an earlier one there is stale."""
        with self._state:
            self._pod_errors.pop(interface, None)

    def wait_pod(self, interface: str, timeout: float) -> str | None:
        """Wait until the pod on `interface` is wired in the dataplane: None when it is,
        else why not (its error, or the time out)."""
        key = ("pod", interface)
        with self._state:
            done = self._state.wait_for(
                lambda: key in self._applied or interface in self._pod_errors, timeout
            )
            if key in self._applied:
                return None
            if done:
                return self._pod_errors[interface]
        return f"not wired within {timeout:g} s"

    def wait_pod_gone(self, interface: str, timeout: float) -> bool:
        """Wait until the dataplane holds no pod on `interface` (its port and SIDs
        deleted); whether it came to that. Not past `timeout`, nor past a pass that
        failed (the dataplane unreachable: nothing will change until it is back)."""
        key = ("pod", interface)
        with self._state:
            failed = self._failed_passes
            self._state.wait_for(
                lambda: key not in self._applied or self._failed_passes != failed, timeout
            )
            return key not in self._applied

    def pass_failed(self) -> None:
        """The agent's loop gave up on a pass (it retries later): waiters stop waiting."""
        with self._state:
            self._failed_passes += 1
            self._state.notify_all()

    # --- the agent's loop ---------------------------------------------------------------------

    def full(self, desired: NodeConfig, keep: Collection[str]) -> list[Change]:
        """Dump, plan against what is there, apply; ensure every pod; sweep pod state of
        interfaces not in `keep` (nor desired). Returns the plan's changes (the ensures of
        unchanged pods are not changes); records what drifted."""
        target = dumpable(desired)
        with self._state:
            applied_pods = [o for o in self._applied.values() if is_pod(o)]
        wired = {p.key for p in desired.pods if p.netns and os.path.exists(p.netns)}
        with self.lock:
            actual = dumpable(self.backend.dump())
            # Against what the backend would hold of `desired` (VPP holds weights of its
            # own); the changes still carry the model's, which the backend maps the same.
            changes = plan(self.backend.as_held(target), actual)
            if changes:
                found = summarize(changes)  # what drift(target, actual) says, unplanned again
                self.metrics.record_drift(found)
                log.info("resync: %d change(s) to reach the desired state", len(changes))
                self.stats["repairs"] += len(changes)
            wanted = {p.key for p in desired.pods}
            gone = [Change(Op.DELETE, old=p) for p in applied_pods if p.key not in wanted]
            ensure = [Change(Op.ADD, new=p) for p in desired.pods if p.key in wired]
            failed = self._apply_pods(ensure)
            self.backend.apply(changes)
            self._apply_pods(gone)
            keep = set(keep) | {p.interface for p in desired.pods}
            for interface in self.backend.sweep_pods(keep):
                log.info("removed the pod port %s: no pod of this node uses it", interface)
            if changes:
                self.metrics.record_repair(found)
        with self._state:
            self._applied = {k: o for k, o in desired.by_key().items() if k not in failed}
            self._applied_encap = target.encap_source
            self.desired = desired
            self._state.notify_all()
        self._count(changes + gone)
        return changes + gone

    def incremental(self, desired: NodeConfig, delta: RenderDelta) -> list[Change]:
        """Plan the keys `delta` touched against what was applied; apply; no reads."""
        keys = {o.key for o in delta.added | delta.removed}
        with self._state:
            before = [self._applied[k] for k in keys if k in self._applied]
        after = list(delta.added)
        changes = plan(
            config_of(after, desired.encap_source), config_of(before, self._applied_encap)
        )
        pods = [c for c in changes if is_pod(c.obj)]
        rest = [c for c in changes if not is_pod(c.obj)]
        with self.lock:
            # Pods first and last, as plan orders them: SIDs and routes name their ports.
            failed = self._apply_pods(c for c in pods if c.op is not Op.DELETE)
            self.backend.apply(rest)
            self._apply_pods(c for c in pods if c.op is Op.DELETE)
        with self._state:
            for key in keys:
                self._applied.pop(key, None)
            for obj in after:
                if obj.key not in failed:
                    self._applied[obj.key] = obj
            self._applied_encap = desired.encap_source
            self.desired = desired
            self._state.notify_all()
        self._count(changes)
        return changes

    def _apply_pods(self, changes: Iterable[Change]) -> set[Hashable]:
        """Each pod on its own: its node side (the backend), then its pod side. Returns the
        keys of the pods that could not be wired (logged; retried at the next full pass)."""
        failed: set[Hashable] = set()
        for change in changes:
            pod = change.obj
            assert is_pod(pod)
            try:
                self.backend.apply([change])
            except Exception as err:  # one pod must not stop the others
                log.warning("pod %s: %s: %s", pod.pod, pod.interface, err, extra={"pod": pod.pod})
                failed.add(pod.key)
                with self._state:
                    self._pod_errors[pod.interface] = f"{type(err).__name__}: {err}"
                    self._state.notify_all()
                continue
            with self._state:
                self._pod_errors.pop(pod.interface, None)
            self._pod_side(change)
        return failed

    def _pod_side(self, change: Change) -> None:
        """Inside the pod: its service addresses and port rewrites (a read when whole)."""
        pod = change.obj
        assert is_pod(pod)
        if not pod.netns or not os.path.exists(pod.netns):
            return
        try:
            if change.new is None:
                self.podnet.clear(pod.netns, pod.container_interface)
                return
            done = self.podnet.sync(pod)
        except Exception as err:  # one pod must not stop the others
            log.warning("pod %s: %s", pod.pod, err, extra={"pod": pod.pod})
            return
        if done.writes:
            log.info(
                "pod %s: service addresses +%s -%s, hairpin rules +%s -%s, port rewrites %s",
                pod.pod,
                [str(a) for a in done.added],
                [str(a) for a in done.removed],
                [str(r) for r in done.rules_added],
                [str(r) for r in done.rules_removed],
                "replaced" if done.rewrites_replaced else "unchanged",
                extra={
                    "pod": pod.pod,
                    "service": ",".join(sorted(map(str, pod.service_addresses))),
                },
            )

    def _count(self, changes: list[Change]) -> None:
        self.stats["reconciles"] += 1
        self.stats["changes"] += len(changes)

    # --- reads for the API ---------------------------------------------------------------

    def actual(self) -> NodeConfig:
        with self.lock:
            return self.backend.dump()

    def held(self, desired: NodeConfig) -> NodeConfig:
        """`desired` as the backend holds it once applied (what its dump is compared with)."""
        return self.backend.as_held(desired)

    def drift(self, desired: NodeConfig) -> Drift:
        with self.lock:
            held = self.backend.as_held(dumpable(desired))
            return drift(held, dumpable(self.backend.dump()))

    def buckets(self, bsid: IPv6Address) -> dict[tuple[IPv6Address, ...], int]:
        """The buckets the dataplane has for policy `bsid`, per segment list."""
        with self.lock:
            return dict(self.backend.buckets(bsid))


__all__ = ["Reconciler"]
