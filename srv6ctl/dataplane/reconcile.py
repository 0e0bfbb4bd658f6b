"""Reconcile: the smallest ordered plan that turns the actual dataplane into the desired one.

Pure: data in, data out. Objects are compared by `key` (which object) and by value (what it
says); unchanged objects never appear in a plan. A backend applies the plan in list order.

Order (`plan`), from what refers to what, as the model's kind table declares it
(`model.KINDS`: a local SID or route names a pod interface, a steering a policy's BSID):

1. the node's encap source, when set or changed (policies encapsulate with it);
2. adds and replaces, dependencies first: pods → local SIDs → policies → steerings → routes,
   each kind sorted by key. A replace is "make the new value true" and may point at things
   added earlier (a steering moving to a new policy, a SID moving to a new pod interface);
3. deletes, dependants first: routes → steerings → policies → local SIDs → pods, each kind
   sorted by key, so nothing is deleted while a survivor still names it;
4. the encap source, when cleared.

Adds go before deletes so that, at every prefix of the plan, no steering points at a missing
policy and no SID or route names a missing pod interface, and a replaced value is live
before the old one goes (make before break).

One exception, the *address rule*: routes, steerings and local SIDs all occupy a FIB slot
`(table, prefix)` (`ObjectKind.slot`; a local SID is a route for `sid/128` in the main
table, a seg6local route in the kernel). When an add takes a slot that a deleted object of
another kind holds — typically a service losing its last endpoint (steering `S/128` →
reject route `S/128`) or regaining one — the delete is pulled forward to just before that
add, otherwise the dataplane answers EEXIST and, worse, deleting the old object afterwards
by prefix could remove the new one. Pulling these deletes forward is always safe: nothing in
the model refers to a route, a steering or a local SID. A backend that can replace
atomically (netlink NLM_F_REPLACE) may fuse a DELETE immediately followed by an ADD of the
same slot into one replace, closing the short gap.

Policies and BSIDs are not slots: a policy's BSID comes from the reserved locator 0 (in the
kernel it is an anchor route in a table of its own), so it cannot collide with a node's SIDs.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections import Counter, defaultdict
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeAlias

from srv6ctl.dataplane.model import (
    KINDS,
    RANK,
    Change,
    DataplaneObject,
    EncapSource,
    IPv6Address,
    NodeConfig,
    Op,
    SegmentList,
    Slot,
    SrPolicy,
    kind_of,
)

__all__ = [
    "Drift",
    "ListEdit",
    "ListOp",
    "PlanError",
    "apply_list_edits",
    "apply_plan",
    "config_of",
    "drift",
    "dumpable",
    "plan",
    "route_slot",
    "segment_list_edits",
    "summarize",
]

Key: TypeAlias = Hashable


class PlanError(ValueError):
    """A config that cannot be keyed, or a plan that does not fit the config it is applied to."""


# --- keys and slots -------------------------------------------------------------------


def _sortable(part: Any) -> Any:
    """A total order over key parts: IPv4 and IPv6 values do not compare with each other,
    and an absent part (a rule without a source) sorts first."""
    if part is None:
        return ()
    if isinstance(part, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return (part.version, int(part), 128)
    if isinstance(part, ipaddress.IPv4Network | ipaddress.IPv6Network):
        return (part.version, int(part.network_address), part.prefixlen)
    if isinstance(part, tuple):
        return tuple(_sortable(p) for p in part)
    return part


def _order(change: Change) -> Any:
    obj = change.obj
    return (RANK[kind_of(obj)], _sortable(obj.key))


def route_slot(obj: DataplaneObject) -> Slot | None:
    """The FIB entry `(table, prefix)` an object occupies, if any (see the address rule)."""
    return kind_of(obj).slot(obj)


def _keyed(config: NodeConfig, name: str) -> dict[Key, DataplaneObject]:
    objects: list[DataplaneObject] = list(config.objects())
    if config.encap_source is not None:
        objects.append(EncapSource(config.encap_source))
    keyed: dict[Key, DataplaneObject] = {}
    for obj in objects:
        other = keyed.setdefault(obj.key, obj)
        if other is not obj:
            raise PlanError(
                f"{name} config holds two objects with key {obj.key}: {other} and {obj}"
            )
    return keyed


# --- plan -----------------------------------------------------------------------------


def plan(desired: NodeConfig, actual: NodeConfig) -> list[Change]:
    """The ordered changes that turn `actual` into `desired` (see the module docstring)."""
    want = _keyed(desired, "desired")
    have = _keyed(actual, "actual")

    upserts: list[Change] = []
    for key, new in want.items():
        old = have.get(key)
        if old is None:
            upserts.append(Change(Op.ADD, new=new))
        elif old != new:
            upserts.append(Change(Op.REPLACE, old=old, new=new))
    deletes = [Change(Op.DELETE, old=old) for key, old in have.items() if key not in want]

    upserts.sort(key=_order)
    deletes.sort(key=_order)

    # The address rule: a delete that frees a slot an add needs goes just before that add.
    freeing: dict[Slot, list[Change]] = defaultdict(list)
    for change in deletes:
        slot = route_slot(change.obj)
        if slot is not None:
            freeing[slot].append(change)

    ordered: list[Change] = []
    for change in upserts:
        slot = route_slot(change.obj)
        if change.op is Op.ADD and slot is not None:
            ordered.extend(freeing.pop(slot, ()))
        ordered.append(change)
    pulled = set(ordered)
    ordered.extend(c for c in reversed(deletes) if c not in pulled)
    return ordered


def apply_plan(actual: NodeConfig, changes: Iterable[Change]) -> NodeConfig:
    """The config a backend holds after applying `changes` to `actual` (for tests, dry runs).

    Strict: an ADD of a key already present, or a DELETE/REPLACE whose `old` is not what the
    config holds, raises `PlanError` — the plan was made for another state.
    """
    state = _keyed(actual, "actual")
    for change in changes:
        if change.old is not None:
            if state.get(change.old.key) != change.old:
                raise PlanError(f"cannot {change.op} {change.old}: not what the config holds")
            del state[change.old.key]
        if change.new is not None:
            if change.new.key in state:
                raise PlanError(f"cannot {change.op} {change.new}: its key is taken")
            state[change.new.key] = change.new
    return config_of(state.values())


def dumpable(config: NodeConfig) -> NodeConfig:
    """The part of `config` a backend's dump can show: without the kinds no backend reads
    back (`ObjectKind.dumped`: pods), so that a dump and a desired config compare."""
    hidden: dict[str, Any] = {k.field: frozenset() for k in KINDS if k.field and not k.dumped}
    return dataclasses.replace(config, **hidden) if hidden else config


def config_of(
    objects: Iterable[DataplaneObject], encap_source: IPv6Address | None = None
) -> NodeConfig:
    """A NodeConfig holding `objects` (`NodeConfig.of`)."""
    return NodeConfig.of(objects, encap_source)


# --- drift ----------------------------------------------------------------------------

Drift: TypeAlias = dict[str, dict[str, int]]


def drift(desired: NodeConfig, actual: NodeConfig) -> Drift:
    """How far the dataplane is from the desired state: {kind: {op: count}}, only non-zero.

    E.g. `{"SrPolicy": {"replace": 2}, "Route": {"delete": 1}}`; `{}` means in sync.
    """
    return summarize(plan(desired, actual))


def summarize(changes: Iterable[Change]) -> Drift:
    """A plan counted as `drift` counts it, for a caller that has the plan already."""
    counts = Counter((change.kind, str(change.op)) for change in changes)
    summary: Drift = {}
    for (kind, op), count in sorted(counts.items()):
        summary.setdefault(kind, {})[op] = count
    return summary


# --- segment-list edits (hitless policy updates) --------------------------------------


class ListOp(StrEnum):
    ADD = "add"
    MODIFY = "modify"  # same segments, new weight
    DELETE = "delete"


@dataclass(frozen=True)
class ListEdit:
    """One edit of a policy's segment lists: `old` is None for ADD, `new` is None for DELETE."""

    op: ListOp
    old: SegmentList | None = None
    new: SegmentList | None = None


def segment_list_edits(old: SrPolicy, new: SrPolicy) -> list[ListEdit]:
    """Edits that turn `old`'s segment lists into `new`'s one list at a time, hitless.

    For backends that edit a policy in place (VPP `sr_policy_mod`): adds first, then weight
    modifications, then deletes, so the policy never has zero lists (VPP refuses to remove a
    policy's last list) and new paths are live before old ones go. Lists are a multiset
    matched by segments; a list whose segments stay but whose weight changes is one MODIFY.
    Only the lists are considered: a change of BSID, mode or encap source is not an edit.
    """
    gone = Counter(old.segment_lists) - Counter(new.segment_lists)
    came = Counter(new.segment_lists) - Counter(old.segment_lists)
    gone_by_path: dict[tuple[IPv6Address, ...], list[SegmentList]] = defaultdict(list)
    for sl in sorted(gone.elements()):
        gone_by_path[sl.segments].append(sl)

    adds: list[ListEdit] = []
    modifies: list[ListEdit] = []
    for sl in sorted(came.elements()):
        same_path = gone_by_path.get(sl.segments)
        if same_path:
            modifies.append(ListEdit(ListOp.MODIFY, old=same_path.pop(0), new=sl))
        else:
            adds.append(ListEdit(ListOp.ADD, new=sl))
    deletes = [ListEdit(ListOp.DELETE, old=sl) for lists in gone_by_path.values() for sl in lists]
    return adds + modifies + deletes


def apply_list_edits(
    lists: Sequence[SegmentList], edits: Iterable[ListEdit]
) -> tuple[SegmentList, ...]:
    """The lists after `edits` (order not significant); raises `PlanError` on a stale edit."""
    current = list(lists)
    for edit in edits:
        if edit.op is not ListOp.ADD:
            if edit.old not in current:
                raise PlanError(f"cannot {edit.op} segment list {edit.old}: not in the policy")
            current.remove(edit.old)
        if edit.op is not ListOp.DELETE:
            assert edit.new is not None
            current.append(edit.new)
    return tuple(current)
