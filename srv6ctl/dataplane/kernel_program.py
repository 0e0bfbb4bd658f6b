"""Turn a reconcile plan into staged netlink writes for the kernel backend (pure, no I/O).

A plan speaks of model objects; the kernel holds routes, seg6 nexthops and groups, some
of them shared. `compile_changes` folds the plan into what each kernel slot must finally
hold, then emits the writes in stages whose members do not depend on each other — so a
stage goes to the kernel as one pipelined batch — and whose order respects every
reference:

  A. new seg6 nexthops (a segment path no policy used before);
  B. new groups, and groups replaced in place (NLM_F_REPLACE: atomic, same id, so the
     steering routes that use it are never touched);
  C. routes: local SIDs, plain routes, steerings, policy anchors — adds, replaces, deletes;
  D. groups of deleted policies, and orphans of ours no route uses;
  E. seg6 nexthops no group uses any more.

Route adds use NLM_F_EXCL, so a foreign route holding the same slot makes the add fail
instead of being overwritten; a slot we already own is replaced (NLM_F_REPLACE), which
also fuses reconcile's "delete X, add Y at the same slot" into one atomic write.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field

from pyroute2.netlink import NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE

from srv6ctl.dataplane import netlink_seg6 as nl
from srv6ctl.dataplane.kernel_caps import KernelFeatures
from srv6ctl.dataplane.kernel_codec import Codec, InvalidObject, Links, SegmentPath, Slot
from srv6ctl.dataplane.model import (
    Change,
    EncapSource,
    IPv6Address,
    LocalSid,
    PodAttachment,
    Route,
    SrPolicy,
    Steering,
)
from srv6ctl.dataplane.netlink_channel import Request
from srv6ctl.dataplane.reconcile import route_slot

_ADD = NLM_F_CREATE | NLM_F_EXCL
_REPLACE = NLM_F_CREATE | NLM_F_REPLACE
_UNCHANGED = object()


@dataclass
class Inventory:
    """What of ours the namespace holds, as the backend last read or wrote it."""

    paths: dict[SegmentPath, int] = field(default_factory=dict)  # seg6 nexthops
    groups: dict[int, tuple[tuple[int, int], ...]] = field(default_factory=dict)
    anchors: dict[IPv6Address, int] = field(default_factory=dict)  # bsid → group id
    policies: dict[IPv6Address, SrPolicy] = field(default_factory=dict)
    slot_refs: dict[Slot, int | None] = field(default_factory=dict)  # our routes → nhid
    other: set[int] = field(default_factory=set)  # our nexthops of no known shape
    occupied: set[int] = field(default_factory=set)  # every nexthop id, ours or not

    def copy(self) -> Inventory:
        return Inventory(
            dict(self.paths),
            dict(self.groups),
            dict(self.anchors),
            dict(self.policies),
            dict(self.slot_refs),
            set(self.other),
            set(self.occupied),
        )


@dataclass
class Program:
    stages: list[list[Request]]
    inventory: Inventory  # what the namespace holds once every stage succeeded
    tunnel_source: object = _UNCHANGED  # IPv6Address | None when the plan changes it

    @property
    def sets_tunnel_source(self) -> bool:
        return self.tunnel_source is not _UNCHANGED

    @property
    def writes(self) -> int:
        return sum(len(stage) for stage in self.stages) + self.sets_tunnel_source


class IdAllocator:
    """Free nexthop ids in [base, base + span), skipping every id anyone holds."""

    def __init__(self, base: int, span: int, occupied: set[int]) -> None:
        self.base, self.span, self.occupied = base, span, occupied
        self._cursor = 0

    def take(self) -> int:
        for _ in range(self.span):
            candidate = self.base + self._cursor
            self._cursor = (self._cursor + 1) % self.span
            if candidate not in self.occupied:
                self.occupied.add(candidate)
                return candidate
        raise InvalidObject(f"no free nexthop id left in {self.base}+{self.span}")


def compile_changes(
    changes: Iterable[Change],
    inventory: Inventory,
    codec: Codec,
    links: Links,
    features: KernelFeatures,
    ids: IdAllocator,
) -> Program:
    """The staged writes for `changes`; raises InvalidObject before any write is made."""
    after = inventory.copy()
    ids.occupied = after.occupied
    slots: dict[Slot, LocalSid | Route | Steering | None] = {}
    policies: dict[IPv6Address, SrPolicy | None] = {}
    tunnel_source: object = _UNCHANGED
    for change in changes:
        obj = change.obj
        if isinstance(obj, PodAttachment):
            # Pods are wired by the CNI side of the agent (veth, addresses, the pod's
            # loopback service addresses and port rewrites live in the pod's namespace);
            # this backend neither creates nor dumps them. See KernelBackend.
            continue
        if isinstance(obj, EncapSource):
            new = change.new
            tunnel_source = new.address if isinstance(new, EncapSource) else None
        elif isinstance(obj, SrPolicy):
            policies[obj.bsid] = change.new if isinstance(change.new, SrPolicy) else None
        elif isinstance(obj, LocalSid | Route | Steering):
            slot = route_slot(obj)
            assert slot is not None
            new_obj = change.new
            if isinstance(new_obj, LocalSid | Route | Steering):
                _check(new_obj, codec, features)
                slots[slot] = new_obj
            else:
                slots[slot] = None
        else:
            raise InvalidObject(f"{obj!r}: not a dataplane object the kernel backend knows")

    final_policies = dict(after.policies)
    for bsid, policy in policies.items():
        if policy is None:
            final_policies.pop(bsid, None)
        else:
            _check_policy(policy, features)
            final_policies[bsid] = policy

    # A. seg6 nexthops for segment paths nobody used before.
    stage_a: list[Request] = []
    for policy in (p for p in policies.values() if p is not None):
        for segment_list in policy.segment_lists:
            path = SegmentPath.of(policy, segment_list)
            if path not in after.paths:
                after.paths[path] = nh_id = ids.take()
                msg = codec.segment_nexthop(nh_id, path, links)
                stage_a.append(Request(nl.RTM_NEWNEXTHOP, _ADD, msg, _What("nexthop", path)))

    # B. one resilient group per changed policy; C (part). its anchor route.
    stage_b: list[Request] = []
    stage_c: list[Request] = []
    stage_d: list[Request] = []
    for bsid, maybe_policy in policies.items():
        group_id = after.anchors.get(bsid)
        anchor_slot: Slot = (codec.policy_table, ipaddress.IPv6Network(bsid))
        if maybe_policy is None:
            if group_id is not None:
                stage_c.append(_route_delete(codec, anchor_slot, _What("anchor of policy", bsid)))
                after.slot_refs.pop(anchor_slot, None)
                del after.anchors[bsid]
            after.policies.pop(bsid, None)
            continue
        policy = maybe_policy
        members = tuple(
            (after.paths[SegmentPath.of(policy, sl)], sl.weight) for sl in policy.segment_lists
        )
        what = _What("group of policy", bsid)
        if group_id is None or group_id not in after.groups:
            group_id = ids.take()
            msg = codec.group(group_id, members)
            stage_b.append(Request(nl.RTM_NEWNEXTHOP, _ADD, msg, what))
        elif sorted(after.groups[group_id]) != sorted(members):
            msg = codec.group(group_id, members)
            stage_b.append(Request(nl.RTM_NEWNEXTHOP, _REPLACE, msg, what))
        after.groups[group_id] = members
        after.policies[bsid] = policy
        if after.anchors.get(bsid) != group_id or anchor_slot not in after.slot_refs:
            flags = _REPLACE if anchor_slot in after.slot_refs else _ADD
            msg = codec.anchor(bsid, group_id)
            stage_c.append(Request(nl.RTM_NEWROUTE, flags, msg, _What("anchor of policy", bsid)))
            after.anchors[bsid] = group_id
            after.slot_refs[anchor_slot] = group_id

    # C. local SIDs, routes and steerings: the final value of each slot the plan touches.
    for slot, target in slots.items():
        owned = slot in after.slot_refs
        if target is None:
            if owned:
                stage_c.append(_route_delete(codec, slot, _What("route", slot)))
                del after.slot_refs[slot]
            continue
        flags = _REPLACE if owned else _ADD
        ref: int | None = None
        if isinstance(target, LocalSid):
            msg = codec.local_sid(target, links)
        elif isinstance(target, Route):
            msg = codec.route(target, links)
        else:
            ref = after.anchors.get(target.bsid)
            if ref is None or target.bsid not in final_policies:
                raise InvalidObject(f"{target}: policy {target.bsid} is not programmed")
            msg = codec.steering(target, ref)
        stage_c.append(Request(nl.RTM_NEWROUTE, flags, msg, target))
        after.slot_refs[slot] = ref

    # D. groups no anchor names and no route of ours uses (deleted policies, orphans).
    referenced = {ref for ref in after.slot_refs.values() if ref is not None}
    for group_id in sorted(after.groups):
        if group_id not in referenced:
            stage_d.append(_nexthop_delete(group_id, _What("group", group_id)))
            del after.groups[group_id]
            after.occupied.discard(group_id)
    referenced |= {member for members in after.groups.values() for member, _ in members}
    for nh_id in sorted(after.other - referenced):
        stage_d.append(_nexthop_delete(nh_id, _What("nexthop", nh_id)))
        after.other.discard(nh_id)
        after.occupied.discard(nh_id)

    # E. seg6 nexthops no group uses.
    used = {member for members in after.groups.values() for member, _ in members}
    stage_e: list[Request] = []
    for path, nh_id in sorted(after.paths.items(), key=lambda item: item[1]):
        if nh_id not in used:
            stage_e.append(_nexthop_delete(nh_id, _What("nexthop", path)))
            del after.paths[path]
            after.occupied.discard(nh_id)

    stages = [s for s in (stage_a, stage_b, stage_c, stage_d, stage_e) if s]
    return Program(stages, after, tunnel_source)


@dataclass(frozen=True)
class _What:
    """What a write is about, formatted only when it fails (55,000 f-strings cost 0.5 s)."""

    kind: str
    subject: object
    deleting: bool = False

    def __str__(self) -> str:
        subject = self.subject
        if isinstance(subject, tuple):  # a slot
            subject = f"{subject[1]} table {subject[0]}"
        return f"{'delete ' if self.deleting else ''}{self.kind} {subject}"


def _route_delete(codec: Codec, slot: Slot, what: _What) -> Request:
    what = dataclasses.replace(what, deleting=True)
    return Request(nl.RTM_DELROUTE, 0, codec.route_delete(slot), what)


def _nexthop_delete(nh_id: int, what: _What) -> Request:
    what = dataclasses.replace(what, deleting=True)
    return Request(nl.RTM_DELNEXTHOP, 0, Codec.nexthop_delete(nh_id), what)


def _check(obj: LocalSid | Route | Steering, codec: Codec, features: KernelFeatures) -> None:
    caps = features.capabilities
    if isinstance(obj, Route | Steering) and obj.table == codec.policy_table:
        raise InvalidObject(f"{obj}: table {obj.table} is reserved for policy anchors")
    if not isinstance(obj, LocalSid):
        return
    if obj.behaviour not in caps.behaviours:
        why = [n for n in caps.notes if n.startswith(f"{obj.behaviour}:")]
        raise InvalidObject(f"{obj}: {why[0] if why else obj.behaviour + ' is unsupported'}")
    unsupported = obj.flavours - features.flavours.get(obj.behaviour, frozenset())
    if unsupported:
        names = ", ".join(sorted(unsupported))
        raise InvalidObject(f"{obj}: flavour {names} is not supported on {obj.behaviour} here")


def _check_policy(policy: SrPolicy, features: KernelFeatures) -> None:
    if policy.mode not in features.capabilities.encap_modes:
        raise InvalidObject(f"policy {policy.bsid}: encap mode {policy.mode} is unsupported")
    if policy.encap_source is not None and not features.route_tunnel_source:
        raise InvalidObject(
            f"policy {policy.bsid}: encap_source {policy.encap_source} needs a per-route "
            "tunnel source (SEG6_IPTUNNEL_SRC), which this kernel lacks; "
            "set the node's encap source instead"
        )
    paths = [sl.segments for sl in policy.segment_lists]
    if len(set(paths)) != len(paths):
        raise InvalidObject(
            f"policy {policy.bsid}: a segment list appears twice; "
            "a kernel nexthop group holds each nexthop once (merge them with a weight)"
        )
