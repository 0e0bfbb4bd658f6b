"""NetworkPolicy in the dataplane: each local pod's rules compiled and applied.

`PolicyView` compiles (all pods, or what the dirty keys may affect); the rules go into
each pod's `inet srv6ctl_policy` nftables table (kernel dataplane) or become VPP ACLs on
the pod's port (`--dataplane vpp`, srv6ctl.dataplane.vpp_acl). A failure is logged per
pod and retried at the next full resync; both backends remember what they wrote, so an
unchanged pod costs nothing.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from policies.model import PodKey, PodRules
from policies.nftables import TABLE as POLICY_TABLE
from policies.nftables import NftablesBackend, Outcome, tables_of
from policies.vpp_acl import translate
from srv6ctl.dataplane.model import NodeConfig, PodAttachment, is_pod
from srv6ctl.netpol import PolicyView
from srv6ctl.render import RenderDelta
from srv6ctl.state import ClusterState, DirtyKey

log = logging.getLogger("srv6ctl.agent")


class PolicyPrograms:
    def __init__(self, node_name: str, acl_backend: Any = None) -> None:
        self.view = PolicyView(node_name)
        self.nftables = NftablesBackend()
        self.acl_backend = acl_backend  # VPP mode: ACLs on the pods' ports instead
        self._stale = True  # compile everything at the next step

    def program(
        self,
        state: ClusterState,
        desired: NodeConfig,
        dirty: set[DirtyKey],
        full: bool,
        delta: RenderDelta | None,
    ) -> bool:
        """Compile and apply; False when compiling failed (retry soon, everything)."""
        netns_of = {p.pod: p.netns for p in desired.pods if p.netns}
        updates: dict[PodKey, PodRules | None]
        try:
            if full or self._stale:
                compiled = self.view.full(state)
                updates = {}
                for name in netns_of:
                    key = _pod_key(name)
                    updates[key] = compiled.get(key)
            else:
                updates = dict(self.view.update(state, dirty))
                for obj in delta.added if delta is not None else ():
                    # A pod (re)attached, maybe in a new netns: give it its rules there.
                    if is_pod(obj):
                        key = _pod_key(obj.pod)
                        updates[key] = self.view.rules.get(key)
            self._stale = False
        except Exception as err:  # compile errors must not stop the loop
            log.warning("network policies: %s: %s; retrying", type(err).__name__, err)
            self._stale = True
            return False
        removed = _removed_pods(delta)
        if self.acl_backend is not None:
            self._program_acls(desired, updates, full, removed)
            return True
        for pod in removed:
            if pod.netns:
                self.nftables.forget(pod.netns)
        for key, rules in sorted(updates.items()):
            self._apply_table(str(key), netns_of.get(str(key)), rules, verify=full)
        return True

    def _program_acls(
        self,
        desired: NodeConfig,
        updates: dict[PodKey, PodRules | None],
        full: bool,
        removed: list[PodAttachment],
    ) -> None:
        """VPP mode: each pod's policy as ACLs on its VPP port; at a full resync, ACLs of
        ports this node no longer has go."""
        interface_of = {p.pod: p.interface for p in desired.pods}
        backend = self.acl_backend
        try:
            if full:
                for interface in backend.sweep(interface_of.values()):
                    log.info("removed the VPP ACLs of %s: no pod of this node uses it", interface)
            else:
                for gone in removed:
                    backend.remove(gone.interface)
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

    def _apply_table(
        self, pod: str, netns: str | None, rules: PodRules | None, verify: bool = False
    ) -> None:
        if netns is None:
            return  # not wired here (yet): applied when its attachment appears
        if not os.path.exists(netns):
            self.nftables.forget(netns)
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
            outcome = self.nftables.apply(netns, rules, force=force, probe=True)
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


def _pod_key(name: str) -> PodKey:
    namespace, _, pod = name.partition("/")
    return PodKey(namespace, pod)


def _removed_pods(delta: RenderDelta | None) -> list[PodAttachment]:
    """Pods whose attachment a delta removed and did not add again (deleted pods)."""
    if delta is None:
        return []
    added = {p.pod for p in delta.added if is_pod(p)}
    return [p for p in delta.removed if is_pod(p) and p.pod not in added]
