"""The node's `Rule`s in VPP: one ACL and one ABF policy per group, attached to the uplinks.

What a rule becomes is vpp_rule_codec's; this module keeps VPP's groups as the plan says:

- Where. A rule steers traffic that *enters* VPP, so its group's policy is attached (for
  its family) to every interface that is not ours: the operator's uplinks, as the backend
  knows them (the model names them by VPP's own name; our pod ports and the pods'
  gateway loopback are tagged `srv6ctl:`), local0 aside. Not covered: traffic from this
  node's pods to its own address (pod ports would need every policy attached to each new
  port, and VPP's attach cost grows with the policies an interface has: README), and
  packets VPP itself originates (ABF is an input feature).
- The table's fallback. The group's table gets its family's default route, looked up
  again in table 0 (`vpp_rule_codec`, "Falling through"): the group's, like its ACL and
  policy. It is made before the policy's path (no packet is sent to the table before it
  can find its way back) and deleted after the policy (no packet enters the table any
  more); it is never read as a model `Route` (`decode_route` skips a deaggregation).
- Changes. A rule change rewrites its group's ACL in place (`acl_add_replace` on the
  same index: the policy and its attachments stay, and VPP swaps the entries between two
  packets); a new group gets its ACL, its fallback, its policy and its attachments; the
  last rule of a group takes them away (detach, policy, fallback, ACL). A rule moving to
  another table joins the new group before it leaves the old one (make before break).
  Each change also repairs what its group lacks (a missing fallback, policy, path or
  attachment, a new uplink), so applying a change is "make the group so".
- Reading. The groups are read once per connection (`acl_dump`, `abf_policy_dump`,
  `abf_itf_attach_dump`, the API routes of each group's table) and kept up to date by
  our writes. `held()` reports the rules of the groups that forward as they should
  (policy with the one lookup path, attached to every uplink, the table's fallback in
  place); a broken group's rules are left out, so that reconcile adds them again and the
  add repairs the group.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from srv6ctl.dataplane.model import Change, Rule
from srv6ctl.dataplane.vpp_api import Request, VppChannel
from srv6ctl.dataplane.vpp_codec_base import INVALID_INDEX, InvalidObject
from srv6ctl.dataplane.vpp_fib_codec import FIB_SOURCE_API, vpp_table
from srv6ctl.dataplane.vpp_interfaces import Interfaces
from srv6ctl.dataplane.vpp_rule_codec import (
    RULE_MESSAGES,
    RULE_PRIORITY,
    Fallback,
    RuleGroup,
    acl_add_replace,
    acl_del,
    attach,
    decode_rule,
    fallback_of,
    fallback_route,
    fallback_route_del,
    group_of,
    group_of_tag,
    lookup_path,
    lookup_table,
    policy_id_of,
    policy_paths,
)
from srv6ctl.dataplane.vpp_tables import Tables


@dataclass(frozen=True)
class HeldGroup:
    """What VPP holds of one group: its ACL's rules, its policy's paths, its attachments,
    its table's fallback."""

    acl_index: int
    rules: Mapping[Any, Rule]  # by key
    exact: bool = True  # False: the ACL has entries that are no rule of ours (rewrite it)
    policy: bool = False  # an ABF policy with our id and this ACL exists
    # The VPP table each of its paths looks up in; None for a path of another shape (only
    # an operator's CLI makes one, and we cannot name it to remove it: the group stays
    # broken, and reconcile keeps saying so).
    tables: tuple[int | None, ...] = ()
    attached: Mapping[int, int] = field(default_factory=dict)  # sw_if_index → priority
    fallback: Fallback = Fallback.DROP  # what its table does with a packet without a route

    @property
    def policy_id(self) -> int:
        return policy_id_of(self.acl_index)


class Rules:
    """The groups of rules in VPP, read through `channel` and kept until forgotten."""

    def __init__(
        self,
        channel: VppChannel,
        interfaces: Interfaces,
        tables: Tables,
        run: Callable[[Sequence[Request]], None],
    ) -> None:
        self.channel = channel
        self.interfaces = interfaces
        self.tables = tables
        self.run = run
        self._groups: dict[RuleGroup, HeldGroup] | None = None

    @property
    def available(self) -> bool:
        """Whether this VPP (and our API definitions) have the ACL and ABF plugins."""
        return set(RULE_MESSAGES) <= self.channel.available

    def missing(self) -> str | None:
        """Why rules cannot be programmed (None: they can): what a human has to add."""
        if self.available:
            return None
        if not any(self.channel.api_dir.glob("**/abf.api.json")):
            return (
                f"the API definitions in {self.channel.api_dir} lack abf.api.json "
                "(the VPP's own share/vpp/api has it)"
            )
        return "VPP has no ABF plugin (abf_plugin.so, with acl_plugin.so)"

    def forget(self) -> None:
        self._groups = None

    # --- reading ----------------------------------------------------------------------

    def held(self) -> list[Rule]:
        """The rules of every group that forwards as it should (a fresh read)."""
        if not self.available:
            return []
        self._groups = None
        uplinks = self.uplinks(refresh=True)
        return [
            rule
            for group, held in self._load().items()
            if _forwards(group, held, uplinks)
            for rule in held.rules.values()
        ]

    def every_rule(self) -> list[Rule]:
        """The rules of every group of ours, forwarding or not (a fresh read)."""
        if not self.available:
            return []
        self._groups = None
        return [rule for held in self._load().values() for rule in held.rules.values()]

    def remove_all(self) -> None:
        """Remove every group of ours (attachments, policy, ACL), leaving their tables'
        fallback routes: the classifier's sessions that took over send packets there."""
        groups = self._load()
        for group, held in sorted(groups.items()):
            self._remove(group, replace(held, fallback=Fallback.OTHER))
            del groups[group]

    def uplinks(self, refresh: bool = False) -> list[int]:
        return self.interfaces.uplinks(refresh)

    def _load(self) -> dict[RuleGroup, HeldGroup]:
        if self._groups is not None:
            return self._groups
        groups: dict[RuleGroup, HeldGroup] = {}
        for details in self.channel.dump("acl_dump", acl_index=INVALID_INDEX):
            group = group_of_tag(str(details.tag))
            if group is None:
                continue
            decoded = [decode_rule(entry, group) for entry in details.r]
            rules = {rule.key: rule for rule in decoded if rule is not None}
            held = HeldGroup(int(details.acl_index), rules, exact=len(rules) == len(decoded))
            if group in groups:  # a second ACL of one group (two writers): the last read wins
                held = replace(held, exact=False)
            groups[group] = held
        by_policy = {held.policy_id: group for group, held in groups.items()}
        for details in self.channel.dump("abf_policy_dump"):
            policy = details.policy
            group = by_policy.get(int(policy.policy_id))
            if group is None or int(policy.acl_index) != groups[group].acl_index:
                continue  # an operator's policy
            tables = tuple(lookup_table(p, group) for p in policy.paths[: int(policy.n_paths)])
            groups[group] = replace(groups[group], policy=True, tables=tables)
        for details in self.channel.dump("abf_itf_attach_dump"):
            attachment = details.attach
            group = by_policy.get(int(attachment.policy_id))
            if group is None or bool(attachment.is_ipv6) != group.ipv6:
                continue
            held = groups[group]
            attached = {**held.attached, int(attachment.sw_if_index): int(attachment.priority)}
            groups[group] = replace(held, attached=attached)
        for group, held in groups.items():
            groups[group] = replace(held, fallback=self._fallback(group))
        self._groups = groups
        return groups

    def _fallback(self, group: RuleGroup) -> Fallback:
        """What the group's table does with a packet it has no route for (a fresh read)."""
        table_id = vpp_table(group.table)
        if table_id == 0 or (table_id, group.ipv6) not in self.tables.ours():
            return Fallback.OTHER
        table = {"table_id": table_id, "is_ip6": group.ipv6, "name": ""}
        routes = self.channel.dump("ip_route_v2_dump", src=FIB_SOURCE_API, table=table)
        return fallback_of(routes, group)

    # --- writing ----------------------------------------------------------------------

    def apply(self, change: Change) -> None:
        """One plan step (see the module docstring: make the group so)."""
        missing = self.missing()
        if missing is not None:
            raise InvalidObject(f"{change.obj}: {missing}")
        old, new = change.old, change.new
        if new is not None:
            assert isinstance(new, Rule)
            if new.iif:
                # ABF attaches to interfaces, and this backend has no host loop to need it.
                raise InvalidObject(f"{new}: a rule by input interface is not offered by VPP")
            vpp_table(new.table)  # a table VPP cannot hold fails before anything is written
            group = group_of(new)
            rules = dict(self._rules_of(group))
            rules[new.key] = new
            self._make(group, rules)
        if old is not None:
            assert isinstance(old, Rule)
            group = group_of(old)
            if new is None or group_of(new) != group:
                rules = dict(self._rules_of(group))
                rules.pop(old.key, None)
                self._make(group, rules)

    def _rules_of(self, group: RuleGroup) -> Mapping[Any, Rule]:
        held = self._load().get(group)
        return {} if held is None else held.rules

    def _make(self, group: RuleGroup, rules: Mapping[Any, Rule]) -> None:
        groups = self._load()
        held = groups.get(group)
        if not rules:
            if held is not None:
                self._remove(group, held)
                del groups[group]
            return
        if held is None:
            request = acl_add_replace(INVALID_INDEX, group, rules.values())
            reply = self.channel.call(request.name, write=True, what=request.what, **request.fields)
            held = HeldGroup(int(reply.acl_index), dict(rules), fallback=self._fallback(group))
        elif not held.exact or held.rules != rules:
            self.run([acl_add_replace(held.acl_index, group, rules.values())])
            held = replace(held, rules=dict(rules), exact=True)
        groups[group] = held
        requests = self._repairs(group, held)
        if requests:
            self.run(requests)
            groups[group] = replace(
                held,
                fallback=Fallback.MAIN if held.fallback is Fallback.DROP else held.fallback,
                policy=True,
                tables=(vpp_table(group.table),),
                attached={**held.attached, **dict.fromkeys(self.uplinks(), RULE_PRIORITY)},
            )

    def _repairs(self, group: RuleGroup, held: HeldGroup) -> list[Request]:
        """What the group lacks: its table's fallback (first: the policy may already send
        packets there), the policy with its lookup path (a new path first, then the wrong
        ones: ABF adds paths to a policy, and removes the policy with its last path), then
        the attachments to every uplink."""
        requests = []
        if held.fallback is Fallback.DROP:
            requests.append(fallback_route(group))
        wanted = vpp_table(group.table)
        if not held.policy or wanted not in held.tables:
            path = lookup_path(group, wanted)
            requests.append(policy_paths(held.policy_id, held.acl_index, group, True, [path]))
        wrong = [lookup_path(group, t) for t in held.tables if t is not None and t != wanted]
        if wrong:
            requests.append(policy_paths(held.policy_id, held.acl_index, group, False, wrong))
        for index in self.uplinks():
            priority = held.attached.get(index)
            if priority == RULE_PRIORITY:
                continue
            if priority is not None:
                requests.append(attach(held.policy_id, index, group, False, priority))
            requests.append(attach(held.policy_id, index, group, True))
        return requests

    def _remove(self, group: RuleGroup, held: HeldGroup) -> None:
        """Detach, remove the policy (with its paths), the table's fallback (no packet
        enters the table any more), delete the ACL: VPP refuses to delete an ACL a policy
        still uses."""
        requests = [
            attach(held.policy_id, index, group, False, priority)
            for index, priority in sorted(held.attached.items())
        ]
        paths = [lookup_path(group, t) for t in held.tables if t is not None]
        if held.policy and paths:
            requests.append(policy_paths(held.policy_id, held.acl_index, group, False, paths))
        if held.fallback is Fallback.MAIN:
            requests.append(fallback_route_del(group))
        requests.append(acl_del(held.acl_index, group))
        self.run(requests)


def _forwards(group: RuleGroup, held: HeldGroup, uplinks: Sequence[int]) -> bool:
    """The group's policy looks up in its table alone and is on every uplink, and the
    table has its fallback."""
    return (
        held.exact
        and held.fallback is not Fallback.DROP
        and held.policy
        and held.tables == (vpp_table(group.table),)
        and all(held.attached.get(index) == RULE_PRIORITY for index in uplinks)
    )


__all__ = ["HeldGroup", "Rules"]
