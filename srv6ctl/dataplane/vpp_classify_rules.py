"""The node's `Rule`s in VPP as classifier sessions: one chain per family on the uplinks.

What a rule becomes is vpp_classify_codec's (a session of its shape's table, setting the
packet's FIB); this module keeps VPP's tables, chains and attachments as the plan says:

- Where. As with ABF before (README), a rule steers traffic that *enters* VPP, so the
  family's chain is the input ACL of every interface that is not ours (the operator's
  uplinks; local0, pod ports and the pods' gateway aside). VPP gives an interface one
  input ACL per family; one an operator attached is theirs, and a rule of that family is
  refused (InvalidObject naming the uplink) rather than taken over.
- The chain. Its first table (the head) is what the uplinks name; a new shape's table is
  linked in right after the head (made pointing at the head's next, then the head
  relinked to it), and an emptied table other than the head is unlinked (its predecessor
  relinked past it) before it is deleted: VPP follows the links packet by packet, so no
  packet ever meets a deleted table, and the uplinks are never re-pointed. The head stays
  while any table follows it, empty or not (re-pointing every uplink would leave a moment
  without rules); the last table goes with the attachments.
- The table's fallback. As with ABF (`vpp_rule_codec`, "Falling through"), each rule's
  table gets its family's default route looked up again in table 0: made before the
  first session that sends packets there, deleted after the last one.
- Changes. A session is added or deleted in O(1), without touching any other rule (the
  reason for the classifier: README). A rule whose table changes is deleted and added
  again, back to back: VPP's add over an existing key overwrites the entry without
  releasing its lock on the old FIB (vnet_classify.c, vnet_classify_add_del), which would
  keep that table alive after we delete it; in between, the port's packets follow main.
- Reading. Everything is read once per connection and kept up to date by our writes, as
  requests are queued (the backend pipelines them with the rest of a plan; it forgets
  this cache when a plan fails). `held()` reports the rules of tables whose chain is
  whole (every table of ours reachable from the head, the head on every uplink) and whose
  rule table has its fallback; the rest are left out, so reconcile adds them again and
  the add repairs what lacks. A rule table first met in a plan has its routes read
  after what the plan queued before (a model default route there is the table's
  fallback, not ours to add), except a table that plan made: it holds only what the plan
  adds, which the backend tells (`made_tables`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from srv6ctl.dataplane.model import Change, Route, Rule
from srv6ctl.dataplane.vpp_api import Request, VppChannel
from srv6ctl.dataplane.vpp_classify_codec import (
    CHAIN_MARK,
    CLASSIFY_MESSAGES,
    Shape,
    attach,
    decode_session,
    session,
    shape_of,
    shape_of_mask,
    table_add,
    table_del,
    table_relink,
)
from srv6ctl.dataplane.vpp_codec_base import INVALID_INDEX, InvalidObject
from srv6ctl.dataplane.vpp_fib_codec import FIB_SOURCE_API, model_table, vpp_table
from srv6ctl.dataplane.vpp_interfaces import Interfaces
from srv6ctl.dataplane.vpp_rule_codec import (
    Fallback,
    RuleGroup,
    fallback_of,
    fallback_route,
    fallback_route_del,
    group_of,
)
from srv6ctl.dataplane.vpp_tables import Table, Tables

ApiRoutes = Mapping[tuple[int, bool], Sequence[Any]]  # (VPP table, ipv6) → ip_route_v2_details


@dataclass(frozen=True)
class HeldTable:
    """One classifier table of ours: its shape and link."""

    index: int
    shape: Shape
    next_table: int


@dataclass
class _State:
    """What VPP holds of ours (kept up to date by queued writes). The sessions are
    dicts changed in place: copying one per change would make a plan of N rules N^2."""

    tables: dict[Shape, HeldTable]
    rules: dict[Shape, dict[Any, Rule]]  # the sessions of each table, by rule key
    attached: dict[tuple[int, bool], int]  # (uplink, ipv6) → its input ACL table, if any
    fallbacks: dict[RuleGroup, Fallback]
    users: dict[RuleGroup, int]  # sessions sending packets to the group's table


class ClassifyRules:
    """The rules in VPP's classifier, read through `channel` and kept until forgotten."""

    def __init__(self, channel: VppChannel, interfaces: Interfaces, tables: Tables,
                 call: Callable[[Request], Any]) -> None:  # fmt: skip
        self.channel = channel
        self.interfaces = interfaces
        self.tables = tables
        self.call = call  # one request, its reply: a new table's index
        self._state: _State | None = None

    @property
    def available(self) -> bool:
        return set(CLASSIFY_MESSAGES) <= self.channel.available

    def missing(self) -> str | None:
        """Why rules cannot be programmed (None: they can): what a human has to add."""
        if self.available:
            return None
        return (
            f"the API definitions in {self.channel.api_dir} lack the classifier's "
            "(core/classify.api.json)"
        )

    def forget(self) -> None:
        self._state = None

    # --- reading ----------------------------------------------------------------------

    def held(self, routes: ApiRoutes | None = None) -> list[Rule]:
        """The rules that forward as they should (a fresh read; `routes`: the API routes
        of our tables, if the caller has just read them: a table's fallback is there)."""
        if not self.available:
            return []
        self._state = None
        state = self._load(refresh=True, routes=routes)
        whole = {ipv6: self._whole(state, ipv6) for ipv6 in (False, True)}
        return [
            rule
            for shape in state.tables
            if whole[shape.ipv6]
            for rule in state.rules[shape].values()
            if state.fallbacks.get(group_of(rule)) is not Fallback.DROP
        ]

    def uplinks(self, refresh: bool = False) -> list[int]:
        return self.interfaces.uplinks(refresh)

    def _whole(self, state: _State, ipv6: bool) -> bool:
        chain = _chain(state.tables, ipv6)
        ours = [t for t in state.tables.values() if t.shape.ipv6 == ipv6]
        if len(chain) != len(ours):
            return False  # a table of ours no packet reaches
        head = chain[0].index if chain else None
        return head is None or all(
            state.attached.get((index, ipv6)) == head for index in self.uplinks()
        )

    def _load(self, refresh: bool = False, routes: ApiRoutes | None = None) -> _State:
        if self._state is not None:
            return self._state
        tables: dict[Shape, HeldTable] = {}
        sessions: dict[Shape, dict[Any, Rule]] = {}
        reply = self.channel.call("classify_table_ids")
        for index in list(reply.ids)[: int(reply.count)]:
            info = self.channel.call("classify_table_info", table_id=int(index))
            if int(info.miss_next_index) != CHAIN_MARK:
                continue  # an operator's
            mask = bytes(info.mask)[: int(info.mask_length)]
            shape = shape_of_mask(mask, int(info.skip_n_vectors))
            if shape is None:
                continue
            decoded = [
                decode_session(bytes(d.match)[: int(d.match_length)], int(d.opaque_index), shape)
                for d in self.channel.dump("classify_session_dump", table_id=int(index))
            ]
            # A second table of one shape (two writers) replaces the first here: the first
            # is then off the chain as we know it, the family reads as broken.
            sessions[shape] = {rule.key: rule for rule in decoded if rule is not None}
            tables[shape] = HeldTable(int(index), shape, int(info.next_table_index))
        attached: dict[tuple[int, bool], int] = {}
        for uplink in self.uplinks(refresh):
            found = self.channel.call("classify_table_by_interface", sw_if_index=uplink)
            for ipv6, head in ((False, int(found.ip4_table_id)), (True, int(found.ip6_table_id))):
                if head != INVALID_INDEX:
                    attached[(uplink, ipv6)] = head
        users: dict[RuleGroup, int] = {}
        for rules in sessions.values():
            for rule in rules.values():
                users[group_of(rule)] = users.get(group_of(rule), 0) + 1
        fallbacks = {group: self._fallback(group, routes) for group in users}
        self._state = _State(tables, sessions, attached, fallbacks, users)
        return self._state

    def _fallback(self, group: RuleGroup, routes: ApiRoutes | None = None) -> Fallback:
        """What the group's table does with a packet it has no route for (read afresh
        unless `routes` has the table's)."""
        key = (vpp_table(group.table), group.ipv6)
        if key[0] == 0 or key not in self.tables.ours():
            return Fallback.OTHER
        found = None if routes is None else routes.get(key)
        if found is None:
            table = {"table_id": key[0], "is_ip6": group.ipv6, "name": ""}
            found = self.channel.dump("ip_route_v2_dump", src=FIB_SOURCE_API, table=table)
        return fallback_of(found, group)

    # --- writing ----------------------------------------------------------------------

    def requests(self, change: Change) -> list[Request]:
        """One plan step's requests, in order (module docstring); the cache is updated as
        if they succeed. A new shape's table is made here, synchronously (its index)."""
        missing = self.missing()
        if missing is not None:
            raise InvalidObject(f"{change.obj}: {missing}")
        old, new = change.old, change.new
        assert old is None or isinstance(old, Rule)
        assert new is None or isinstance(new, Rule)
        state = self._load()
        requests: list[Request] = []
        if old is not None:
            held = state.rules.get(shape_of(old), {}).get(old.key)
            if held is not None and held != new:
                # A table change keeps the shape's table (even emptied: the add follows).
                moved = new is not None and shape_of(new) == shape_of(old)
                requests += self._remove(state, held, drop_empty=not moved)
        if new is not None:
            requests += self._add(state, new)
        return requests

    def reads(self, change: Change) -> bool:
        """Whether `requests(change)` reads VPP (a rule table it has not seen yet: what its
        default route is), so that what comes before it must be written first: a model
        route at that prefix earlier in the plan is the table's fallback, not ours to add."""
        new = change.new
        if not isinstance(new, Rule) or not self.available:
            return False
        return group_of(new) not in self._load().fallbacks

    def made_tables(self, created: Iterable[Table], changes: Sequence[Change]) -> None:
        """Tables just made hold no route but what this plan adds: those to which it
        adds no default route need our fallback, known without reading them (which would
        cost a round trip per NodePort service in a first sync: `reads`)."""
        state = self._state
        if state is None:
            return  # read when needed
        defaults = {
            (vpp_table(obj.table), obj.prefix.version == 6)
            for obj in (change.new for change in changes)
            if isinstance(obj, Route) and obj.prefix.prefixlen == 0
        }
        for table_id, ipv6 in created:
            if (table_id, ipv6) not in defaults:
                group = RuleGroup(model_table(table_id), 6 if ipv6 else 4)
                state.fallbacks[group] = Fallback.DROP

    def _add(self, state: _State, rule: Rule) -> list[Request]:
        if rule.iif:
            # The input ACL is per interface, and this backend has no host loop to need it.
            raise InvalidObject(f"{rule}: a rule by input interface is not offered by VPP")
        vpp_table(rule.table)  # a table VPP cannot hold fails before anything is written
        shape = shape_of(rule)
        uplinks = self.uplinks()
        chain = _chain(state.tables, shape.ipv6)
        head = chain[0].index if chain else None
        for uplink in uplinks:
            other = state.attached.get((uplink, shape.ipv6))
            if other is not None and other != head:
                raise InvalidObject(
                    f"{rule}: interface {uplink} has input ACL table {other} for "
                    f"ip{shape.version}, not ours: rules need every uplink's input ACL"
                )
        requests: list[Request] = []
        group = group_of(rule)
        if state.fallbacks.get(group, Fallback.DROP) is Fallback.DROP:
            if group not in state.fallbacks:
                state.fallbacks[group] = self._fallback(group)
            if state.fallbacks[group] is Fallback.DROP:
                requests.append(fallback_route(group))  # before any packet is sent there
                state.fallbacks[group] = Fallback.MAIN
        table = state.tables.get(shape)
        if table is None:
            table = self._new_table(state, shape, chain, requests)
        held = state.rules[shape].get(rule.key)
        if held is not None and held != rule:
            requests += self._remove(state, held, drop_empty=False)
            held = None
        if held is None:
            requests.append(session(table.index, rule, True))
            state.rules[shape][rule.key] = rule
            state.users[group] = state.users.get(group, 0) + 1
        head = _chain(state.tables, shape.ipv6)[0].index
        for uplink in uplinks:
            if state.attached.get((uplink, shape.ipv6)) != head:
                requests.append(attach(uplink, head, shape.ipv6, True))
                state.attached[(uplink, shape.ipv6)] = head
        return requests

    def _new_table(self, state: _State, shape: Shape, chain: Sequence[HeldTable],
                   requests: list[Request]) -> HeldTable:  # fmt: skip
        """Make the shape's table (now: its index) and queue its link after the head."""
        head = chain[0] if chain else None
        after = INVALID_INDEX if head is None else head.next_table
        reply = self.call(table_add(shape, after))
        table = HeldTable(int(reply.new_table_index), shape, after)
        state.tables[shape] = table
        state.rules[shape] = {}
        if head is not None:
            requests.append(table_relink(head.index, head.shape, table.index))
            state.tables[head.shape] = replace(head, next_table=table.index)
        return table

    def _remove(self, state: _State, rule: Rule, drop_empty: bool = True) -> list[Request]:
        """Delete a rule's session; its group's fallback after its last session, its
        table once empty (unlinked first), the chain's attachments with its last table."""
        shape = shape_of(rule)
        requests = [session(state.tables[shape].index, rule, False)]
        rules = state.rules[shape]
        del rules[rule.key]
        group = group_of(rule)
        state.users[group] = state.users.get(group, 1) - 1
        if state.users[group] <= 0:
            del state.users[group]
            if state.fallbacks.pop(group, None) is Fallback.MAIN:
                requests.append(fallback_route_del(group))
        if not rules and drop_empty:
            requests += self._drop_empty(state, shape.ipv6)
        return requests

    def _drop_empty(self, state: _State, ipv6: bool) -> list[Request]:
        """Unlink and delete the family's empty tables, the head last of all."""
        requests: list[Request] = []
        chain = _chain(state.tables, ipv6)
        kept = chain[:1]
        for table in chain[1:]:
            if state.rules[table.shape]:
                kept.append(table)
                continue
            before = state.tables[kept[-1].shape]
            requests.append(table_relink(before.index, before.shape, table.next_table))
            state.tables[before.shape] = replace(before, next_table=table.next_table)
            requests.append(table_del(table.index, table.shape))
            del state.tables[table.shape], state.rules[table.shape]
        chain = _chain(state.tables, ipv6)
        if len(chain) == 1 and not state.rules[chain[0].shape]:
            head = chain[0]
            for (uplink, family), index in sorted(state.attached.items()):
                if family == ipv6 and index == head.index:
                    requests.append(attach(uplink, head.index, ipv6, False))
                    del state.attached[(uplink, family)]
            requests.append(table_del(head.index, head.shape))
            del state.tables[head.shape], state.rules[head.shape]
        return requests


def _chain(tables: Mapping[Shape, HeldTable], ipv6: bool) -> list[HeldTable]:
    """The family's tables of ours in chain order from the head (the one no other of ours
    links to); tables off the chain are left out."""
    family = {t.index: t for t in tables.values() if t.shape.ipv6 == ipv6}
    linked = {t.next_table for t in family.values()}
    heads = sorted(index for index in family if index not in linked)
    chain: list[HeldTable] = []
    index = heads[0] if heads else INVALID_INDEX
    while index in family and family[index] not in chain:
        chain.append(family[index])
        index = family[index].next_table
    return chain


__all__ = ["ClassifyRules", "HeldTable"]
