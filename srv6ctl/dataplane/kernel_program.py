"""Turn a reconcile plan into staged netlink writes for the kernel backend (pure, no I/O).

A plan speaks of model objects; the kernel holds routes, seg6 nexthops and groups, some
of them shared. `prepare` folds the plan into what each kernel slot must finally hold and
checks everything the kernel could refuse up front; `Compilation.run` then emits the
writes in three stages, each sent in batched datagrams (`netlink_channel.Writes`):

  1. creates, in one log where every write comes after what it names: a policy's new
     seg6 nexthops (a segment path no policy used before), then its group — new, or
     replaced in place (NLM_F_REPLACE: atomic, same id, so the steering routes that use
     it are never touched) — and its anchor; then the routes: local SIDs, plain routes,
     steerings — adds, replaces, deletes; then ip rules (kernel_rules), last because
     they send packets to the tables the routes before them fill;
  2. groups of deleted policies, and orphans of ours no route uses;
  3. seg6 nexthops no group uses any more.

Stage 1 is one ordered log rather than a stage per kind so that the kernel can take it
while it is still being written: `run` reports progress, and the backend sends what is
ready from another thread (see KernelBackend.apply). Every check that can refuse a plan
runs in `prepare`, before any write, except one: a policy naming the same segment list
twice is found while its members are built (checking 100,000 lists up front costs as
much as a sixth of a large apply). Its own writes are never emitted, but writes of
policies compiled before it may have been sent: each one complete and valid.

Route adds use NLM_F_EXCL, so a foreign route holding the same slot makes the add fail
instead of being overwritten; a slot we already own is replaced (NLM_F_REPLACE), which
also fuses reconcile's "delete X, add Y at the same slot" into one atomic write.

A plan of 10,000 services compiles to some 55,000 writes from 100,000 segment lists, so
the loops here avoid what costs a microsecond apiece in Python: hashing an IPv6Address or
IPv6Network (both do it in Python; segment paths are keyed by packed bytes and anchors by
BSID), building an IPv6Network, and an object per write (see Writes).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pyroute2.netlink import NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE

from srv6ctl.dataplane import host_ports
from srv6ctl.dataplane import kernel_affinity as affinity
from srv6ctl.dataplane import netlink_seg6 as nl
from srv6ctl.dataplane.kernel_affinity import MarkKey, Sticky
from srv6ctl.dataplane.kernel_caps import KernelFeatures
from srv6ctl.dataplane.kernel_codec import (
    Codec,
    InvalidObject,
    Links,
    PathKey,
    SegmentPath,
    Slot,
    pack_segments,
)
from srv6ctl.dataplane.kernel_rules import (
    LOCAL_RULE_PRIORITY,
    LOCAL_TABLE,
    PORT_RULE_PRIORITY,
    RTM_DELRULE,
    RTM_NEWRULE,
    RTPROT_KERNEL,
    anchor_message,
    gate_message,
    is_mark_table,
    local_rule_message,
    mark_gate_message,
    mark_rule_message,
    priority_of,
    rule_message,
)
from srv6ctl.dataplane.model import (
    ENCAP_SOURCE,
    KINDS,
    LOCAL_SID,
    MAIN_TABLE,
    POD,
    POLICY,
    PORT_MAP,
    ROUTE,
    RULE,
    STEERING,
    TRANSLATION,
    Change,
    DataplaneObject,
    EncapSource,
    IPNetwork,
    IPv6Address,
    LocalSid,
    ObjectKind,
    PodAttachment,
    PortMap,
    Route,
    Rule,
    SrPolicy,
    Steering,
    Translation,
    kind_of,
)
from srv6ctl.dataplane.netlink_channel import Writes

_ADD = NLM_F_CREATE | NLM_F_EXCL
_REPLACE = NLM_F_CREATE | NLM_F_REPLACE
_UNCHANGED = object()
_MISSING = object()


@dataclass
class Inventory:
    """What of ours the namespace holds, as the backend last read or wrote it."""

    paths: dict[PathKey, int] = field(default_factory=dict)  # seg6 nexthops (SegmentPath keys)
    groups: dict[int, tuple[tuple[int, int], ...]] = field(default_factory=dict)
    anchors: dict[IPv6Address, int] = field(default_factory=dict)  # bsid → group id
    policies: dict[IPv6Address, SrPolicy] = field(default_factory=dict)
    # Our routes → the nexthop id they use: anchor routes (bsid/128 in the policy table),
    # keyed by bsid — an IPv6Network key costs ~2 µs to build and ~0.4 µs to hash — and
    # all the others by slot.
    anchor_refs: dict[IPv6Address, int | None] = field(default_factory=dict)
    slot_refs: dict[Slot, int | None] = field(default_factory=dict)
    other: set[int] = field(default_factory=set)  # our nexthops of no known shape
    occupied: set[int] = field(default_factory=set)  # every nexthop id, ours or not
    rules: dict[Any, Rule] = field(default_factory=dict)  # ours, by Rule.key
    local_moved: set[int] = field(default_factory=set)  # IP versions with our local rule
    kernel_local: set[int] = field(default_factory=set)  # … with the kernel's, at 0
    gates: dict[int, IPNetwork] = field(default_factory=dict)  # IP version → gated address
    # sessionAffinity (kernel_affinity): policies with affinity; marks by (policy, list);
    # what the nft table holds (None: not known since the last read, so it is rewritten);
    # the names in it; each mark's table routes; the mark rules; families with the gate.
    affine: set[IPv6Address] = field(default_factory=set)
    marks: dict[MarkKey, int] = field(default_factory=dict)
    sticky: dict[IPv6Address, Sticky] | None = None
    nft_names: frozenset[str] = frozenset()
    mark_routes: dict[Slot, int] = field(default_factory=dict)
    mark_rules: set[tuple[int, int]] = field(default_factory=set)  # (IP version, mark)
    mark_gates: set[int] = field(default_factory=set)  # IP versions with gate and anchor
    port_maps: dict[Any, PortMap] = field(default_factory=dict)  # host_ports, by key
    translations: dict[Any, Translation] = field(default_factory=dict)  # host_ports, by key

    def copy(self) -> Inventory:
        return Inventory(
            dict(self.paths),
            dict(self.groups),
            dict(self.anchors),
            dict(self.policies),
            dict(self.anchor_refs),
            dict(self.slot_refs),
            set(self.other),
            set(self.occupied),
            dict(self.rules),
            set(self.local_moved),
            set(self.kernel_local),
            dict(self.gates),
            set(self.affine),
            dict(self.marks),
            None if self.sticky is None else dict(self.sticky),
            self.nft_names,
            dict(self.mark_routes),
            set(self.mark_rules),
            set(self.mark_gates),
            dict(self.port_maps),
            dict(self.translations),
        )


@dataclass
class Program:
    stages: list[Writes]  # the non-empty ones of: creates, unused groups, unused nexthops
    inventory: Inventory  # what the namespace holds once every stage succeeded
    tunnel_source: object = _UNCHANGED  # IPv6Address | None when the plan changes it
    nft_script: str | None = None  # the affinity and host_ports tables, after the stages

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
    """The staged writes for `changes`, all at once (`prepare(...).run()`)."""
    return prepare(changes, inventory, codec, links, features, ids).run()


def prepare(
    changes: Iterable[Change],
    inventory: Inventory,
    codec: Codec,
    links: Links,
    features: KernelFeatures,
    ids: IdAllocator,
) -> Compilation:
    """Check `changes` against the kernel and the inventory (raises InvalidObject), and
    return the compilation that emits their writes."""
    targets = _Targets.of(changes, codec, features)
    targets.check_references(inventory, codec, links)
    return Compilation(_Compiler(inventory, codec, links, features, ids), targets)


class Compilation:
    """A checked plan; `run` emits its writes, appending stage 1 to `creates` as it goes."""

    PROGRESS_EVERY = 128  # rows between two progress reports (a datagram's worth)

    def __init__(self, compiler: _Compiler, targets: _Targets) -> None:
        self._compiler, self._targets = compiler, targets
        self.creates = compiler.creates
        self.tunnel_source = targets.tunnel_source

    @property
    def sets_tunnel_source(self) -> bool:
        return self.tunnel_source is not _UNCHANGED

    def __len__(self) -> int:
        """How many objects the plan touches (a measure of the work ahead)."""
        targets = self._targets
        return (
            len(targets.policies)
            + len(targets.slots)
            + len(targets.rules)
            + len(targets.port_maps)
            + len(targets.translations)
        )

    def run(self, progress: Callable[[int], None] | None = None) -> Program:
        """Emit every write; `progress(n)` is told each time `creates` has grown by about
        a datagram, and once more, with its final length, at the end of stage 1."""
        return self._compiler.compile(self._targets, progress)


@dataclass
class _Targets:
    """What a plan wants each thing it touches to end up as (None: gone)."""

    slots: dict[Slot, LocalSid | Route | Steering | None] = field(default_factory=dict)
    policies: dict[IPv6Address, SrPolicy | None] = field(default_factory=dict)
    rules: dict[Any, Rule | None] = field(default_factory=dict)
    port_maps: dict[Any, PortMap | None] = field(default_factory=dict)
    translations: dict[Any, Translation | None] = field(default_factory=dict)
    tunnel_source: object = _UNCHANGED

    @classmethod
    def of(cls, changes: Iterable[Change], codec: Codec, features: KernelFeatures) -> _Targets:
        out = cls()
        for change in changes:
            new = change.new
            obj = new if new is not None else change.old
            kind = kind_of(obj)
            handler = HANDLERS.get(kind)
            if handler is None:
                raise InvalidObject(f"{obj!r}: not a dataplane object the kernel backend knows")
            handler.fold(out, kind, obj, new is not None, codec, features)
        return out

    def check_references(self, inventory: Inventory, codec: Codec, links: Links) -> None:
        """What the kernel would refuse for want of something: a steering into a policy
        that will not be there, a local SID or route through a missing interface."""
        if any(p is not None for p in self.policies.values()):
            links.index(codec.nexthop_device, "seg6 nexthops")
        for target in self.slots.values():
            if target is not None:
                SLOT_HANDLERS[kind_of(target)].check_references(
                    target, self, inventory, codec, links
                )


class _Compiler:
    """One compile: the inventory as it will be (`after`) and the writes of each stage."""

    def __init__(
        self,
        inventory: Inventory,
        codec: Codec,
        links: Links,
        features: KernelFeatures,
        ids: IdAllocator,
    ) -> None:
        self.after = inventory.copy()
        self.codec, self.links, self.features, self.ids = codec, links, features, ids
        ids.occupied = self.after.occupied
        self.creates = Writes()  # stage 1, in dependency order
        self.unused_groups = Writes()  # 2
        self.unused_nexthops = Writes()  # 3

    def compile(self, targets: _Targets, progress: Callable[[int], None] | None = None) -> Program:
        creates, every = self.creates, Compilation.PROGRESS_EVERY
        reported = 0

        def report(final: bool = False) -> None:
            nonlocal reported
            if progress is not None and (final or len(creates) - reported >= every):
                reported = len(creates)
                progress(reported)

        # Before the slots change: a steering into an affine policy that goes counts too.
        sticky_changes = self._touches_affinity(targets)
        for bsid, policy in targets.policies.items():
            if policy is None:
                self._drop_policy(bsid)
            else:
                self._program_policy(policy)
            report()
        for slot, target in targets.slots.items():
            self._program_slot(slot, target)
            report()
        nft_script = None
        if sticky_changes or self._steers_affine(targets.slots):
            nft_script = self._program_affinity(self._rules_after(targets.rules))
        nft_script = _joined(
            nft_script, self._program_host_table(targets.port_maps, targets.translations)
        )
        self._program_rules(targets.rules)  # also puts a stray moved local rule back
        report(final=True)
        self._drop_unused()
        stages = [s for s in (creates, self.unused_groups, self.unused_nexthops) if s]
        return Program(stages, self.after, targets.tunnel_source, nft_script)

    # --- policies: new nexthops, the group and its anchor ------------------------------

    def _program_policy(self, policy: SrPolicy) -> None:
        after, codec, bsid = self.after, self.codec, policy.bsid
        members = self._members(policy)
        group_id = after.anchors.get(bsid)
        if group_id is None or group_id not in after.groups:
            group_id = self.ids.take()
            msg = codec.group(group_id, members)
            self.creates.add(nl.RTM_NEWNEXTHOP, _ADD, msg, "group of policy", bsid)
        elif sorted(after.groups[group_id]) != sorted(members):
            msg = codec.group(group_id, members)
            self.creates.add(nl.RTM_NEWNEXTHOP, _REPLACE, msg, "group of policy", bsid)
        after.groups[group_id] = members
        after.policies[bsid] = policy
        if policy.affinity:
            after.affine.add(bsid)
        else:
            after.affine.discard(bsid)
        after.anchors[bsid] = group_id
        anchored = after.anchor_refs.get(bsid, _MISSING)
        if anchored != group_id:
            flags = _ADD if anchored is _MISSING else _REPLACE
            msg = codec.anchor(bsid, group_id)
            self.creates.add(nl.RTM_NEWROUTE, flags, msg, "anchor of policy", bsid)
            after.anchor_refs[bsid] = group_id

    def _members(self, policy: SrPolicy) -> tuple[tuple[int, int], ...]:
        """(nexthop id, weight) per segment list; a new seg6 nexthop for each new path.

        The new nexthops are written only once the policy is known to be valid."""
        paths, mode, source = self.after.paths, policy.mode, policy.encap_source
        members = []
        new: list[tuple[int, SegmentPath]] = []
        for segment_list in policy.segment_lists:
            key = (mode, source, pack_segments(segment_list.segments))
            nh_id = paths.get(key)
            if nh_id is None:
                path = SegmentPath(*key)
                paths[path] = nh_id = self.ids.take()
                new.append((nh_id, path))
            members.append((nh_id, segment_list.weight))
        if len({nh_id for nh_id, _ in members}) != len(members):
            for nh_id, path in new:  # leave the inventory as it was
                del paths[path]
                self.after.occupied.discard(nh_id)
            raise InvalidObject(
                f"policy {policy.bsid}: a segment list appears twice; "
                "a kernel nexthop group holds each nexthop once (merge them with a weight)"
            )
        for nh_id, path in new:
            msg = self.codec.segment_nexthop(nh_id, path, self.links)
            self.creates.add(nl.RTM_NEWNEXTHOP, _ADD, msg, "nexthop", path)
        return tuple(members)

    def _drop_policy(self, bsid: IPv6Address) -> None:
        # Its group goes in stage 2, once nothing names it; its nexthops in 3, once unused.
        after = self.after
        if bsid in after.anchor_refs:
            anchor = ipaddress.IPv6Network((int(bsid), 128))
            msg = self.codec.route_delete((self.codec.policy_table, anchor))
            self.creates.add(nl.RTM_DELROUTE, 0, msg, "delete anchor of policy", bsid)
            del after.anchor_refs[bsid]
        after.anchors.pop(bsid, None)
        after.policies.pop(bsid, None)
        after.affine.discard(bsid)

    # --- local SIDs, routes and steerings ----------------------------------------------

    def _program_slot(self, slot: Slot, target: LocalSid | Route | Steering | None) -> None:
        """Make the route `slot` hold `target`'s final value (None: no route of ours)."""
        after, codec = self.after, self.codec
        owned = slot in after.slot_refs
        if target is None:
            if owned:
                table, prefix = slot
                what = f"{prefix} table {table}"
                self.creates.add(nl.RTM_DELROUTE, 0, codec.route_delete(slot), "delete route", what)
                del after.slot_refs[slot]
            return
        msg, ref = SLOT_HANDLERS[kind_of(target)].write(target, self)
        self.creates.add(nl.RTM_NEWROUTE, _REPLACE if owned else _ADD, msg, "", target)
        after.slot_refs[slot] = ref

    # --- sessionAffinity: the marks' tables and the nft table (kernel_affinity) ---------

    def _touches_affinity(self, targets: _Targets) -> bool:
        """Whether the plan may change what sessionAffinity holds: it changes a policy with
        affinity (or gives one affinity), a rule (a selector of a NodePort), or a steering
        into an affine policy; or the table's content is not known. Other plans leave it
        alone, at the cost of their own changes only (the whole computation walks every
        route slot and rule of the node)."""
        after = self.after
        if after.sticky is None and (after.affine or after.mark_routes or after.nft_names):
            return True
        if targets.rules and after.affine:
            return True
        for bsid, policy in targets.policies.items():
            if bsid in after.affine or (policy is not None and policy.affinity):
                return True
        return self._steers_affine(targets.slots)

    def _steers_affine(self, slots: Iterable[Slot]) -> bool:
        """Whether one of `slots` now steers into a policy with affinity."""
        after = self.after
        if not after.affine:
            return False
        groups = {after.anchors[b] for b in after.affine if b in after.anchors}
        return any(after.slot_refs.get(slot) in groups for slot in slots)

    def _rules_after(self, rules: Mapping[Any, Rule | None]) -> list[Rule]:
        """The rules the node holds once the plan's are in."""
        final = dict(self.after.rules)
        for key, target in rules.items():
            if target is None:
                final.pop(key, None)
            else:
                final[key] = target
        return list(final.values())

    def _program_affinity(self, rules: list[Rule]) -> str | None:
        """Routes of the marks' tables (their rules follow in `_program_rules`); the nft
        script when the table must change. Nothing to do for a node without affinity."""
        after = self.after
        if not (after.affine or after.sticky or after.mark_routes or after.nft_names):
            return None
        held = affinity.stickies(
            after.policies,
            after.affine,
            after.anchors,
            after.groups,
            after.slot_refs,
            rules,
            MAIN_TABLE,
            after.marks,
        )
        want = affinity.routes(held)
        for slot in sorted(after.mark_routes.keys() - want.keys(), key=_slot_order):
            what = f"{slot[1]} table {slot[0]:#x}"
            msg = self.codec.route_delete(slot)
            self.creates.add(nl.RTM_DELROUTE, 0, msg, "delete affinity route", what)
            del after.mark_routes[slot]
        for slot, nexthop in sorted(want.items(), key=lambda item: _slot_order(item[0])):
            held_nexthop = after.mark_routes.get(slot)
            if held_nexthop == nexthop:
                continue
            table, prefix = slot
            msg = self.codec.nexthop_route(table, prefix, nexthop)
            flags = _ADD if held_nexthop is None else _REPLACE
            self.creates.add(nl.RTM_NEWROUTE, flags, msg, "affinity route", f"{prefix} {table:#x}")
            after.mark_routes[slot] = nexthop
        if held == after.sticky:
            return None
        script = affinity.script(held, after.nft_names)
        after.sticky = held
        after.nft_names = affinity.names(held)
        return script

    # --- the node's own port rewrites (host_ports) --------------------------------------

    def _program_host_table(
        self,
        port_maps: Mapping[Any, PortMap | None],
        translations: Mapping[Any, Translation | None],
    ) -> str | None:
        """The host_ports table again, whole, when the plan changes any of its rewrites or
        translations (the rewrites are stateless; the translations' state is conntrack's,
        which outlives the table, and their affinity sets are few clients: the node's own)."""
        after = self.after
        changed = _apply(after.port_maps, port_maps)
        changed = _apply(after.translations, translations) or changed
        if not changed:
            return None
        return host_ports.script(after.port_maps.values(), after.translations.values())

    # --- rules, and the local rule they need moved (kernel_rules) -----------------------

    def _program_rules(self, rules: Mapping[Any, Rule | None]) -> None:
        """Rules last in stage 1 (their tables' routes are in by then); the kernel has no
        rule replace, so a changed rule is deleted and added again. Mark rules that go
        leave first, and new ones come last, so that the mark gate is never before the
        kernel's own local rule (it would jump over it)."""
        marks = affinity.mark_rules(self.after.sticky or {})
        self._drop_mark_rules(marks)
        self._sync_rules(rules)
        wanted: set[int] = {version for version, _ in marks}
        wanted.update(rule.destination.version for rule in self.after.rules.values())
        for version in (6, 4):
            self._sync_local(version, version in wanted)
            self._sync_gate(version)
        self._add_mark_rules(marks)

    def _sync_rules(self, rules: Mapping[Any, Rule | None]) -> None:
        after, creates, protocol = self.after, self.creates, self.codec.protocol
        changed = [(key, target) for key, target in rules.items() if after.rules.get(key) != target]
        # Deletes first, and adds without NLM_F_EXCL: the kernel's "exists" test for rules
        # treats a field the new rule leaves unset as matching anything, so a rule without
        # a source "exists" while one with a source and otherwise the same fields does.
        for key, _ in changed:
            held = after.rules.pop(key, None)
            if held is not None:
                creates.add(RTM_DELRULE, 0, rule_message(held, protocol), "delete rule", held)
        for key, target in changed:
            if target is not None:
                creates.add(
                    RTM_NEWRULE, NLM_F_CREATE, rule_message(target, protocol), "rule", target
                )
                after.rules[key] = target

    def _sync_local(self, version: int, wanted: bool) -> None:
        """The family's local lookup: ours at LOCAL_RULE_PRIORITY while it has rules of
        ours, the kernel's at 0 otherwise (make-before-break both ways)."""
        after, creates, protocol = self.after, self.creates, self.codec.protocol
        ours = local_rule_message(version, LOCAL_RULE_PRIORITY, protocol)
        kernels = local_rule_message(version, 0, RTPROT_KERNEL)
        if wanted and version not in after.local_moved:
            creates.add(RTM_NEWRULE, _ADD, ours, "move the local rule", version)
            after.local_moved.add(version)
            if version in after.kernel_local:
                creates.add(RTM_DELRULE, 0, kernels, "move the local rule", version)
                after.kernel_local.discard(version)
        elif not wanted and version in after.local_moved:
            if version not in after.kernel_local:
                creates.add(RTM_NEWRULE, _ADD, kernels, "restore the local rule", version)
                after.kernel_local.add(version)
            creates.add(RTM_DELRULE, 0, ours, "restore the local rule", version)
            after.local_moved.discard(version)

    def _sync_gate(self, version: int) -> None:
        """The node ports' gate: when the family's port rules share one destination."""
        after, creates, protocol = self.after, self.creates, self.codec.protocol
        gated = {
            rule.destination
            for rule in after.rules.values()
            if rule.destination.version == version and priority_of(rule) == PORT_RULE_PRIORITY
        }
        want = next(iter(gated)) if len(gated) == 1 else None
        gate = after.gates.get(version)
        if gate is not None and gate != want:
            creates.add(RTM_DELRULE, 0, gate_message(gate, protocol), "delete gate", gate)
            del after.gates[version]
        if want is not None and after.gates.get(version) != want:
            # After the local rule it jumps to (a goto to a missing rule is skipped).
            creates.add(RTM_NEWRULE, _ADD, gate_message(want, protocol), "gate", want)
            after.gates[version] = want

    def _drop_mark_rules(self, marks: set[tuple[int, int]]) -> None:
        after, creates, protocol = self.after, self.creates, self.codec.protocol
        for version, mark in sorted(after.mark_rules - marks):
            msg = mark_rule_message(version, mark, protocol)
            creates.add(RTM_DELRULE, 0, msg, "delete mark rule", f"{mark:#x}")
            after.mark_rules.discard((version, mark))
        for version in sorted(after.mark_gates - {v for v, _ in marks}):
            creates.add(RTM_DELRULE, 0, mark_gate_message(version, protocol), "delete", "gate")
            creates.add(RTM_DELRULE, 0, anchor_message(version, protocol), "delete", "anchor")
            after.mark_gates.discard(version)

    def _add_mark_rules(self, marks: set[tuple[int, int]]) -> None:
        after, creates, protocol = self.after, self.creates, self.codec.protocol
        for version in sorted({v for v, _ in marks} - after.mark_gates):
            # The anchor first (the gate goes to it), and the gate before any mark rule:
            # rules of one priority keep their order of insertion.
            creates.add(RTM_NEWRULE, _ADD, anchor_message(version, protocol), "anchor", version)
            creates.add(RTM_NEWRULE, _ADD, mark_gate_message(version, protocol), "gate", version)
            after.mark_gates.add(version)
        for version, mark in sorted(marks - after.mark_rules):
            msg = mark_rule_message(version, mark, protocol)
            creates.add(RTM_NEWRULE, _ADD, msg, "mark rule", f"{mark:#x}")
            after.mark_rules.add((version, mark))

    # --- stages 2 and 3: what nothing uses any more ------------------------------------

    def _drop_unused(self) -> None:
        """Stage 2: groups no route of ours uses (deleted policies, orphans), and our
        nexthops of no known shape that nothing uses; 3: seg6 nexthops no group uses."""
        after = self.after
        routed = {*after.slot_refs.values(), *after.anchor_refs.values()}
        for group_id in sorted(after.groups.keys() - routed):
            msg = Codec.nexthop_delete(group_id)
            self.unused_groups.add(nl.RTM_DELNEXTHOP, 0, msg, "delete group", group_id)
            del after.groups[group_id]
            after.occupied.discard(group_id)
        members = {member for members in after.groups.values() for member, _ in members}
        for nh_id in sorted(after.other - routed - members):
            msg = Codec.nexthop_delete(nh_id)
            self.unused_groups.add(nl.RTM_DELNEXTHOP, 0, msg, "delete nexthop", nh_id)
            after.other.discard(nh_id)
            after.occupied.discard(nh_id)
        unused = [(nh_id, path) for path, nh_id in after.paths.items() if nh_id not in members]
        for nh_id, path in sorted(unused, key=lambda item: item[0]):
            msg = Codec.nexthop_delete(nh_id)
            self.unused_nexthops.add(
                nl.RTM_DELNEXTHOP, 0, msg, "delete nexthop", SegmentPath(*path)
            )
            del after.paths[path]
            after.occupied.discard(nh_id)


# --- the kinds: how the kernel holds each one -------------------------------------------


class KindHandler:
    """How the kernel backend programs one kind of model object (see model.KINDS).

    `fold` checks an object against the kernel's features and records what the plan wants
    of it in `targets` (`present`: it stays; otherwise it goes); `dump` reads the kind's
    objects back from what the backend found in the namespace."""

    def fold(
        self,
        targets: _Targets,
        kind: ObjectKind,
        obj: Any,
        present: bool,
        codec: Codec,
        features: KernelFeatures,
    ) -> None:
        raise NotImplementedError

    def dump(self, found: Found) -> Iterable[DataplaneObject]:
        raise NotImplementedError


class SlotHandler(KindHandler):
    """A kind each object of which is one route in a FIB slot (local SID, route, steering):
    the compiler adds it, replaces it in place, or deletes the slot's route."""

    def fold(
        self,
        targets: _Targets,
        kind: ObjectKind,
        obj: Any,
        present: bool,
        codec: Codec,
        features: KernelFeatures,
    ) -> None:
        slot = kind.slot(obj)
        assert slot is not None, kind  # model.KINDS gives each of these kinds a slot
        if present:
            self.check(obj, codec, features)
        targets.slots[slot] = obj if present else None

    def check(self, obj: Any, codec: Codec, features: KernelFeatures) -> None:
        """What the kernel would refuse of `obj` itself, before any write."""
        table = obj.table
        if table == codec.policy_table:
            raise InvalidObject(f"{obj}: table {table} is reserved for policy anchors")
        if is_mark_table(table):
            raise InvalidObject(f"{obj}: table {table:#x} is reserved for sessionAffinity")

    def check_references(
        self, obj: Any, targets: _Targets, inventory: Inventory, codec: Codec, links: Links
    ) -> None:
        """What the kernel would refuse for want of something `obj` names."""

    def write(self, obj: Any, compiler: _Compiler) -> tuple[bytes, int | None]:
        """The route message, and the nexthop id the route uses (None: none of ours)."""
        raise NotImplementedError


class _Encoded(SlotHandler):
    """A kind the codec encodes as one route per object through an interface it looks up
    (local SIDs, plain routes): encoding is also the check that the interface exists."""

    kind: ObjectKind

    def encode(self, obj: Any, codec: Codec, links: Links) -> bytes:
        raise NotImplementedError

    def check_references(
        self, obj: Any, targets: _Targets, inventory: Inventory, codec: Codec, links: Links
    ) -> None:
        self.encode(obj, codec, links)  # encoded twice, but a plan holds few of these

    def write(self, obj: Any, compiler: _Compiler) -> tuple[bytes, int | None]:
        return self.encode(obj, compiler.codec, compiler.links), None

    def dump(self, found: Found) -> Iterable[DataplaneObject]:
        return found.decoded.get(self.kind, ())


class _LocalSids(_Encoded):
    kind = LOCAL_SID

    def check(self, obj: LocalSid, codec: Codec, features: KernelFeatures) -> None:
        caps = features.capabilities
        if obj.behaviour not in caps.behaviours:
            why = [n for n in caps.notes if n.startswith(f"{obj.behaviour}:")]
            raise InvalidObject(f"{obj}: {why[0] if why else obj.behaviour + ' is unsupported'}")
        unsupported = obj.flavours - features.flavours.get(obj.behaviour, frozenset())
        if unsupported:
            names = ", ".join(sorted(unsupported))
            raise InvalidObject(f"{obj}: flavour {names} is not supported on {obj.behaviour} here")

    def encode(self, obj: LocalSid, codec: Codec, links: Links) -> bytes:
        return codec.local_sid(obj, links)


class _Routes(_Encoded):
    kind = ROUTE

    def encode(self, obj: Route, codec: Codec, links: Links) -> bytes:
        return codec.route(obj, links)


class _Steerings(SlotHandler):
    def check_references(
        self, obj: Steering, targets: _Targets, inventory: Inventory, codec: Codec, links: Links
    ) -> None:
        bsid, gone = obj.bsid, targets.policies
        if gone.get(bsid) is None and (bsid in gone or bsid not in inventory.policies):
            raise InvalidObject(f"{obj}: policy {bsid} is not programmed")

    def write(self, obj: Steering, compiler: _Compiler) -> tuple[bytes, int | None]:
        after = compiler.after
        group_id = after.anchors.get(obj.bsid)
        if group_id is None or obj.bsid not in after.policies:
            raise InvalidObject(f"{obj}: policy {obj.bsid} is not programmed")
        return compiler.codec.steering(obj, group_id), group_id

    def dump(self, found: Found) -> Iterable[DataplaneObject]:
        # A route to a group of ours outside the policy table: the anchor names the BSID.
        group_bsid = {group: bsid for bsid, group in found.inventory.anchors.items()}
        for (table, prefix), nh_id in found.group_routes:
            if nh_id in group_bsid:
                yield Steering(prefix, group_bsid[nh_id], table)


class _Policies(KindHandler):
    """Seg6 nexthops (one per segment path, shared between policies), a group and an
    anchor route (bsid/128 in the policy table) that steerings route to; the compiler
    writes them (_Compiler._program_policy)."""

    def fold(
        self,
        targets: _Targets,
        kind: ObjectKind,
        obj: SrPolicy,
        present: bool,
        codec: Codec,
        features: KernelFeatures,
    ) -> None:
        if present:
            if obj.mode not in features.capabilities.encap_modes:
                raise InvalidObject(f"policy {obj.bsid}: encap mode {obj.mode} is unsupported")
            if obj.encap_source is not None and not features.route_tunnel_source:
                raise InvalidObject(
                    f"policy {obj.bsid}: encap_source {obj.encap_source} needs a per-route "
                    "tunnel source (SEG6_IPTUNNEL_SRC), which this kernel lacks; "
                    "set the node's encap source instead"
                )
            # A segment list given twice is found by _Compiler._members, by nexthop id.
        targets.policies[obj.bsid] = obj if present else None

    def dump(self, found: Found) -> Iterable[DataplaneObject]:
        return found.inventory.policies.values()


class _EncapSource(KindHandler):
    """The namespace's `ip sr tunsrc` (one value, set through the seg6 genetlink family)."""

    def fold(
        self,
        targets: _Targets,
        kind: ObjectKind,
        obj: EncapSource,
        present: bool,
        codec: Codec,
        features: KernelFeatures,
    ) -> None:
        targets.tunnel_source = obj.address if present else None

    def dump(self, found: Found) -> Iterable[DataplaneObject]:
        return () if found.tunnel_source is None else (EncapSource(found.tunnel_source),)


class _Rules(KindHandler):
    """An ip rule each (kernel_rules), written by the compiler (_Compiler._program_rules)."""

    def fold(
        self,
        targets: _Targets,
        kind: ObjectKind,
        obj: Rule,
        present: bool,
        codec: Codec,
        features: KernelFeatures,
    ) -> None:
        if present:
            if not features.capabilities.rules:
                raise InvalidObject(f"{obj}: this kernel has no ip rules by protocol and port")
            if obj.table in (codec.policy_table, LOCAL_TABLE) or is_mark_table(obj.table):
                raise InvalidObject(f"{obj}: table {obj.table} is not a table rules may name")
        targets.rules[obj.key] = obj if present else None

    def dump(self, found: Found) -> Iterable[DataplaneObject]:
        return found.inventory.rules.values()


_T = TypeVar("_T")


def _apply(held: dict[Any, _T], wanted: Mapping[Any, _T | None]) -> bool:
    """Make `held` what `wanted` says (None: gone); whether anything changed."""
    changed = False
    for key, target in wanted.items():
        if held.get(key) == target:
            continue
        changed = True
        if target is None:
            del held[key]
        else:
            held[key] = target
    return changed


class _HostTable(KindHandler):
    """A kind held in the nftables table host_ports.TABLE, which the compiler writes whole
    (`Program.nft_script`): `field` names the kind's dict in `_Targets` and `Inventory`
    and the capability it needs; `missing` says what a node without it lacks."""

    def __init__(self, field: str, missing: str) -> None:
        self.field, self.missing = field, missing

    def fold(
        self,
        targets: _Targets,
        kind: ObjectKind,
        obj: PortMap | Translation,
        present: bool,
        codec: Codec,
        features: KernelFeatures,
    ) -> None:
        if present and not getattr(features.capabilities, self.field):
            raise InvalidObject(f"{obj}: this node has no {self.missing}")
        getattr(targets, self.field)[obj.key] = obj if present else None

    def dump(self, found: Found) -> Iterable[DataplaneObject]:
        held: dict[Any, DataplaneObject] = getattr(found.inventory, self.field)
        return held.values()


class _Pods(KindHandler):
    """Nothing: the CNI side of the agent wires pods (veth, addresses, the pod's loopback
    service addresses and port rewrites live in the pod's own namespace), and the kernel
    holds nothing of a pod's the node side would have to create or could read back."""

    def fold(
        self,
        targets: _Targets,
        kind: ObjectKind,
        obj: PodAttachment,
        present: bool,
        codec: Codec,
        features: KernelFeatures,
    ) -> None:
        pass

    def dump(self, found: Found) -> Iterable[DataplaneObject]:
        return ()


@dataclass(frozen=True)
class Found:
    """What the backend read of ours from the namespace, for the kinds' `dump`."""

    inventory: Inventory
    decoded: Mapping[ObjectKind, list[Any]]  # local SIDs and plain routes, by kind
    group_routes: list[tuple[Slot, int]]  # other routes to a nexthop of ours: (slot, id)
    tunnel_source: IPv6Address | None


SLOT_HANDLERS: Mapping[ObjectKind, SlotHandler] = {
    LOCAL_SID: _LocalSids(),
    ROUTE: _Routes(),
    STEERING: _Steerings(),
}
HANDLERS: Mapping[ObjectKind, KindHandler] = {
    ENCAP_SOURCE: _EncapSource(),
    POD: _Pods(),
    POLICY: _Policies(),
    RULE: _Rules(),
    PORT_MAP: _HostTable("port_maps", "nftables for port rewrites"),
    TRANSLATION: _HostTable("translations", "nftables NAT for its own connections"),
    **SLOT_HANDLERS,
}


def _joined(first: str | None, second: str | None) -> str | None:
    """Two nft scripts as one transaction (None: neither)."""
    if first is None or second is None:
        return first if second is None else second
    return first + second


def _slot_order(slot: Slot) -> tuple[int, int, int]:
    table, prefix = slot
    return (table, prefix.version, int(prefix.network_address))


def check_handlers(handlers: Mapping[ObjectKind, KindHandler]) -> None:
    """Raise unless `handlers` has one for every kind of the model."""
    missing = [kind.name for kind in KINDS if kind not in handlers]
    if missing:
        raise TypeError(f"the kernel backend has no handler for {', '.join(missing)}")


check_handlers(HANDLERS)
