"""sessionAffinity ClientIP in VPP: the table whose policies balance by the client's address.

VPP gives an SR policy's load balances the flow-hash config of the IPv6 table the policy
is made in (`sr_policy_add`'s fib_table; VPP 25.10 src/vnet/srv6/sr_policy_rewrite.c,
update_lb, for the IPv4 load balance too), once, when it makes the policy. So a policy
with `affinity` is made in AFFINITY_TABLE, whose IPv6 flow hash is the source address
alone: every flow of one client lands in the same bucket, hence the same segment list.

What VPP cannot keep is the timeout. The choice is a hash, not a memory: it holds as
long as the policy's lists stay as they are, however long the client is silent, and a
list added or removed (an endpoint coming or going) moves some clients, as it moves
flows without affinity. So VPP holds every affinity as HELD_AFFINITY (`held_affinity`):
a new timeoutSeconds is no change here, while affinity on ↔ off is one, and re-creates
the policy in the other table (VPP cannot move a policy between tables; not hitless).

The table is more than the hash:
- The BSID's own FIB entry is in it, not in table 0 (the policy's buckets are read there;
  a packet sent to the BSID itself in table 0 does not reach the policy, which nothing of
  ours does: the kernel's BSIDs are not in its main table either). Steering is not
  affected: sr_steering_add_del resolves BSIDs in SR's own hidden tables.
- Each list's encapsulated packets are looked up in it (the list's `egress_fib_table`),
  so it holds one route of ours, `::/0` looked up again in table 0: they leave as every
  other policy's do, for the price of a second lookup.

It is created, with its hash and route, before the first policy that needs it (`setup`),
and deleted once VPP holds no policy in it: VPP frees a table when its last lock goes,
SR's BSID entries or not, and a policy left in a freed table crashes VPP when deleted.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from srv6ctl.dataplane.model import Change, SrPolicy
from srv6ctl.dataplane.vpp_api import Request
from srv6ctl.dataplane.vpp_fib_codec import (
    AFFINITY_TABLE,
    flow_hash_source,
    lookup_route,
    table_add,
    table_del,
)

AFFINITY_TABLE_NAME = "srv6ctl-affinity-ip6"
# The one affinity VPP holds, whatever the timeout asked: the model's longest (VPP's has
# no end but the lists').
HELD_AFFINITY = 86400
_EVERYTHING6 = ipaddress.IPv6Network("::/0")


def held_affinity(affinity: int) -> int:
    """The affinity VPP holds for a policy that asks `affinity` seconds."""
    return HELD_AFFINITY if affinity else 0


def policy_table(policy: SrPolicy) -> int:
    """The VPP table `policy` is made in: its flow hash is the policy's."""
    return AFFINITY_TABLE if policy.affinity else 0


def setup() -> list[Request]:
    """Make the table, hashing the source address, its encapsulated packets looked up in
    table 0. Each request is idempotent, so a half-made table is finished by sending all
    of them again."""
    return [
        table_add(AFFINITY_TABLE, True, AFFINITY_TABLE_NAME),
        flow_hash_source(AFFINITY_TABLE),
        lookup_route(AFFINITY_TABLE, _EVERYTHING6, into=0),
    ]


def teardown() -> Request:
    return table_del(AFFINITY_TABLE, True)


def needs_table(changes: Iterable[Change]) -> bool:
    """Whether `changes` make a policy with affinity (the table must be there first)."""
    return any(_affine(c.new) and not _affine(c.old) for c in changes)


def may_empty_table(changes: Iterable[Change]) -> bool:
    """Whether `changes` take a policy out of the table (it may be left empty)."""
    return any(_affine(c.old) and not _affine(c.new) for c in changes)


def _affine(obj: object) -> bool:
    """A policy with affinity (one that lives in the table)."""
    return isinstance(obj, SrPolicy) and obj.affinity > 0


__all__ = [
    "AFFINITY_TABLE",
    "AFFINITY_TABLE_NAME",
    "HELD_AFFINITY",
    "held_affinity",
    "may_empty_table",
    "needs_table",
    "policy_table",
    "setup",
    "teardown",
]
