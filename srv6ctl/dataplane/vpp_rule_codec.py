"""`Rule`s as ACL plugin ACLs and ABF (ACL-based forwarding) policies, both ways (no I/O).

VPP has no ip-rule: its policy routing is the ABF plugin. An ABF policy is one ACL (the
match) and paths (where a matching packet goes); attached to an interface for one family
with a priority, it runs on that interface's ip4/ip6-unicast input arc, before the FIB
lookup, and a packet no attached ACL permits goes on to the lookup as usual.

- Grouping. ABF sends everything one policy matches along that policy's paths, so the
  rules of one *group* — one table, one family (`RuleGroup`) — share one ACL and one
  policy, and each rule is a permit entry of that ACL. A group's path is a lookup in the
  rule's table (a "deag" path: `table_id` T, no interface, no next hop), so the table
  decides what the packets get, as in the kernel: a path straight to the service's BSID
  would bypass the table, and with it the reject route render puts there for a service
  without endpoints. Rules of one plan never overlap (model.Rule), so entries and groups
  need no order among themselves. Why per table and not per rule: a policy attached to an
  interface costs VPP a rebuild of the interface's whole ACL lookup context, so the
  fewer policies the better (README, "VPP backend").
- Naming. The ACL is tagged `srv6ctl:rule:<table>:<ip6|ip4>`: how a restarted agent finds
  its groups again; the policy is ours when its ACL is, and its id is
  `POLICY_ID_BASE + acl_index` (unique among ours, since ACL indices are; no counter to
  keep). The pods' NetworkPolicy ACLs (`srv6ctl:acl:`, vpp_acl.py) are another namespace.
- Falling through. A VPP table is born with a default route that drops, and after ABF
  the packet's table is the rule's: a packet that table has no route for would be
  dropped, where ip-rule(8) passes it on to the next rule (in the end, main), and the
  ICMP error of a reject route would find no route back to the client (ip6/ip4-icmp-error
  hands it to the lookup with the buffer's table unchanged, the one ABF's lookup set:
  VPP 25.10 dpo/lookup_dpo.c, sw_if_index[VLIB_TX]). So the group's table gets a route of
  the group's own, its family's default (`::/0`, `0.0.0.0/0`) looked up again in table 0
  (`fallback_route`, the deaggregation `vpp_affinity` uses too): the error reaches the
  client, and a packet without a route goes on as in the main table. A more specific
  route of the table (a steering, a blackhole) still decides first, so a fenced load
  balancer IP (loadBalancerSourceRanges: a blackhole in main, a steering in the table)
  stays steered for the allowed sources, and everyone else's packets never enter the
  table. Not in table 0 itself (it would loop), nor in an operator's table, nor where a
  model route already is the table's default (`Fallback`).
- Difference from ip-rule(8): the ACL plugin reads TCP and UDP ports only, so an SCTP
  rule with a port matches nothing (its packets follow the main table).
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from srv6ctl.dataplane.model import IPNetwork, Rule
from srv6ctl.dataplane.vpp_api import Request
from srv6ctl.dataplane.vpp_codec_base import INVALID_INDEX
from srv6ctl.dataplane.vpp_fib_codec import (
    FIB_PATH_NH_PROTO_IP4,
    FIB_PATH_NH_PROTO_IP6,
    FIB_PATH_TYPE_NORMAL,
    fib_path,
    lookup_route,
    lookup_route_del,
    path_nexthop,
    vpp_table,
)

# Optional messages of the backend's channel: rules need the ABF plugin (and the ACL
# plugin it matches with); a VPP without them runs everything else.
RULE_MESSAGES = (
    "acl_add_replace",
    "acl_del",
    "acl_dump",
    "abf_policy_add_del",
    "abf_policy_dump",
    "abf_itf_attach_add_del",
    "abf_itf_attach_dump",
)
TAG_PREFIX = "srv6ctl:rule:"
POLICY_ID_BASE = 0x5336_0000  # "S6": away from the small ids an operator types
# An interface's attachments are matched in ascending priority (abf_itf_attach.c sorts
# them). Ours come after an operator's policies at VPP's default 0: their explicit intent
# on their interface goes first, as an operator's ip rules of lower preference do in the
# kernel. Kept far below 2^31: VPP compares priorities by subtracting them as u32 into int.
RULE_PRIORITY = 1000

IP_PROTOCOLS: Mapping[str, int] = {"": 0, "TCP": 6, "UDP": 17, "SCTP": 132}
PROTOCOL_NAMES: Mapping[int, str] = {number: name for name, number in IP_PROTOCOLS.items()}
ANY_PORT = (0, 65535)
ANY6 = ipaddress.IPv6Network("::/0")
ANY4 = ipaddress.IPv4Network("0.0.0.0/0")


@dataclass(frozen=True, order=True)
class RuleGroup:
    """The rules VPP holds in one ACL and one ABF policy: those to `table` of one family."""

    table: int
    version: int  # 4 or 6

    @property
    def ipv6(self) -> bool:
        return self.version == 6

    @property
    def tag(self) -> str:
        return f"{TAG_PREFIX}{self.table}:ip{self.version}"

    def __str__(self) -> str:
        return f"rules to table {self.table} (ip{self.version})"


class Fallback(enum.Enum):
    """What a group's table does with a packet it has no route for (module docstring)."""

    DROP = "drop"  # VPP's default route: the table still needs ours
    MAIN = "main"  # ours: looked up again in table 0
    OTHER = "other"  # not ours to give: table 0 itself, an operator's table, a model route


def group_of(rule: Rule) -> RuleGroup:
    return RuleGroup(rule.table, rule.destination.version)


def group_of_tag(tag: str) -> RuleGroup | None:
    """The group of one of our ACL tags, else None (not ours)."""
    if not tag.startswith(TAG_PREFIX):
        return None
    table, _, family = tag[len(TAG_PREFIX) :].partition(":")
    if not table.isdigit() or family not in ("ip4", "ip6"):
        return None
    return RuleGroup(int(table), 6 if family == "ip6" else 4)


def policy_id_of(acl_index: int) -> int:
    return POLICY_ID_BASE + acl_index


# --- the ACL ------------------------------------------------------------------------------


def _anywhere(version: int) -> IPNetwork:
    return ANY6 if version == 6 else ANY4


def encode_rule(rule: Rule) -> dict[str, Any]:
    """A permit vl_api_acl_rule_t (permit, not permit+reflect: ABF makes no sessions)."""
    anywhere = _anywhere(rule.destination.version)
    port = (rule.port, rule.port) if rule.port else ANY_PORT
    return {
        "is_permit": 1,
        "src_prefix": rule.source if rule.source is not None else anywhere,
        "dst_prefix": rule.destination,
        "proto": IP_PROTOCOLS[rule.protocol],
        "srcport_or_icmptype_first": ANY_PORT[0],
        "srcport_or_icmptype_last": ANY_PORT[1],
        "dstport_or_icmpcode_first": port[0],
        "dstport_or_icmpcode_last": port[1],
        "tcp_flags_mask": 0,
        "tcp_flags_value": 0,
    }


def decode_rule(entry: Any, group: RuleGroup) -> Rule | None:
    """One entry of a group's ACL as the Rule it encodes; None for a shape we never write.

    A source of "anywhere" reads back as no source: the two are one match in VPP."""
    if int(entry.is_permit) != 1:
        return None
    source: IPNetwork = ipaddress.ip_network(entry.src_prefix, strict=False)
    destination: IPNetwork = ipaddress.ip_network(entry.dst_prefix, strict=False)
    protocol = PROTOCOL_NAMES.get(int(entry.proto))
    sport = (int(entry.srcport_or_icmptype_first), int(entry.srcport_or_icmptype_last))
    dport = (int(entry.dstport_or_icmpcode_first), int(entry.dstport_or_icmpcode_last))
    if protocol is None or sport != ANY_PORT or destination.version != group.version:
        return None
    if dport == ANY_PORT:
        port = 0
    elif dport[0] == dport[1] and protocol and dport[0]:
        port = dport[0]
    else:
        return None
    try:
        return Rule(
            destination,
            group.table,
            protocol,
            port,
            None if source.prefixlen == 0 else source,
        )
    except ValueError:
        return None


def _sort_key(rule: Rule) -> str:
    return str(rule.key)


def acl_add_replace(acl_index: int, group: RuleGroup, rules: Iterable[Rule]) -> Request:
    """Create (`acl_index` INVALID_INDEX) or replace in place the ACL of a group."""
    entries = [encode_rule(r) for r in sorted(rules, key=_sort_key)]
    return Request(
        "acl_add_replace",
        {"acl_index": acl_index, "tag": group.tag, "count": len(entries), "r": entries},
        f"ACL of {group} ({len(entries)} rules)",
    )


def acl_del(acl_index: int, group: RuleGroup) -> Request:
    return Request("acl_del", {"acl_index": acl_index}, f"delete ACL {acl_index} of {group}")


# --- the ABF policy and its attachments -----------------------------------------------------


def lookup_path(group: RuleGroup, table_id: int | None = None) -> dict[str, Any]:
    """A lookup in the group's table (or VPP table `table_id`, to name an old path): FIB
    path NORMAL with a table, no interface and no next hop is VPP's deaggregation
    (fib_api_path_decode)."""
    if table_id is None:
        table_id = vpp_table(group.table)
    return fib_path(FIB_PATH_TYPE_NORMAL, ipv6=group.ipv6, table_id=table_id)


def policy_paths(policy_id: int, acl_index: int, group: RuleGroup, is_add: bool,
                 paths: list[dict[str, Any]]) -> Request:  # fmt: skip
    """Add paths to a policy (creating it), or remove them (the last one deletes it)."""
    return Request(
        "abf_policy_add_del",
        {
            "is_add": is_add,
            "policy": {
                "policy_id": policy_id,
                "acl_index": acl_index,
                "n_paths": len(paths),
                "paths": paths,
            },
        },
        f"{'add' if is_add else 'remove'} ABF policy {policy_id} paths ({group})",
    )


def attach(policy_id: int, sw_if_index: int, group: RuleGroup, is_add: bool,
           priority: int = RULE_PRIORITY) -> Request:  # fmt: skip
    return Request(
        "abf_itf_attach_add_del",
        {
            "is_add": is_add,
            "attach": {
                "policy_id": policy_id,
                "sw_if_index": sw_if_index,
                "priority": priority,
                "is_ipv6": group.ipv6,
            },
        },
        f"{'attach' if is_add else 'detach'} ABF policy {policy_id} "
        f"{'to' if is_add else 'from'} interface {sw_if_index} ({group})",
    )


# --- the table's fallback route ---------------------------------------------------------


def fallback_route(group: RuleGroup) -> Request:
    """The group's table's default route, looked up again in table 0."""
    return lookup_route(vpp_table(group.table), _anywhere(group.version), into=0)


def fallback_route_del(group: RuleGroup) -> Request:
    return lookup_route_del(vpp_table(group.table), _anywhere(group.version))


def fallback_of(routes: Iterable[Any], group: RuleGroup) -> Fallback:
    """What the group's table does without a route, from the `ip_route_v2_details` of
    the routes the API added to it: our fallback route, another default route (a model
    route: it decides, as a default route in a kernel table does), or neither."""
    anywhere = _anywhere(group.version)
    for details in routes:
        route = details.route
        if ipaddress.ip_network(route.prefix, strict=False) != anywhere:
            continue
        paths = list(route.paths[: int(route.n_paths)])
        if len(paths) == 1 and lookup_table(paths[0], group) == 0:
            return Fallback.MAIN
        return Fallback.OTHER
    return Fallback.DROP


def lookup_table(path: Any, group: RuleGroup) -> int | None:
    """The VPP table a dumped path looks up in, if it is a lookup of the group's family
    (a "deag" path); None for any other path."""
    proto = FIB_PATH_NH_PROTO_IP6 if group.ipv6 else FIB_PATH_NH_PROTO_IP4
    if int(path.type) != FIB_PATH_TYPE_NORMAL or int(path.proto) != proto:
        return None
    if int(path.sw_if_index) != INVALID_INDEX or path_nexthop(path) is not None:
        return None
    return int(path.table_id)


__all__ = [
    "POLICY_ID_BASE",
    "RULE_MESSAGES",
    "RULE_PRIORITY",
    "TAG_PREFIX",
    "Fallback",
    "RuleGroup",
    "acl_add_replace",
    "acl_del",
    "attach",
    "decode_rule",
    "encode_rule",
    "fallback_of",
    "fallback_route",
    "fallback_route_del",
    "group_of",
    "group_of_tag",
    "lookup_path",
    "lookup_table",
    "policy_id_of",
    "policy_paths",
]
