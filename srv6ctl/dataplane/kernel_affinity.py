"""sessionAffinity ClientIP on the kernel backend: what the node holds for it (pure).

The kernel picks a policy's segment list per flow (the multipath hash includes the
ports), and no route can pick by the source address alone. So for a policy with
`SrPolicy.affinity` the node keeps, as kube-proxy's nftables mode does, one set of
client addresses per segment list (each entry lives `affinity` seconds after the client's
last packet) in an nftables table of its own, `inet srv6ctl_affinity`:

    prerouting / output:  to a selector of the policy  → jump p<bsid>
    p<bsid>:   client in @m<M1> → goto c<M1> ... ; else numgen random by weight → c<Mi>
    c<Mi>:     meta mark set Mi; update @m<Mi> { client }

and the mark is a table: `ip rule pref 0 fwmark Mi lookup Mi` (kernel_rules), table Mi
holding each selector's destination routed to that segment list's own seg6 nexthop (the
one the policy's group uses). A packet to the policy's destinations that is not marked
(none: the chain marks them all) or whose table lacks the route falls through to the
usual lookups. The outer SRv6 packet carries the mark on (the kernel copies it into the
lookup after encapsulation); table Mi has no route for a SID, so it falls through too.

A selector is what the node steers into the policy: a destination in the main table
(ClusterIP, external VIP), or, for a steering in a service's own table, the rules that
send packets there (a NodePort: destination, protocol, port; a fenced load balancer IP:
destination and source range). State: one set entry per client per node, as kube-proxy
keeps; no conntrack. Marks are `MARK_BASE` + n, one per (policy, segment list), kept while
both are (a client's set goes with its mark).
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass

from policies.nftables import removal_script
from srv6ctl.dataplane.kernel_codec import Slot
from srv6ctl.dataplane.kernel_rules import MARK_BASE, MARK_MASK
from srv6ctl.dataplane.model import IPNetwork, IPv6Address, Rule, SrPolicy

TABLE = "srv6ctl_affinity"  # `inet`, in the node's namespace
MARK_SPAN = 0xFFFF_FFFF - MARK_MASK  # marks MARK_BASE + 1 .. MARK_BASE + MARK_SPAN
SET_SIZE = 1 << 18  # clients remembered per segment list (nft's default is 65,535)
_NFT_PROTOCOL = {"TCP": "tcp", "UDP": "udp", "SCTP": "sctp"}

MarkKey = tuple[IPv6Address, int]  # (policy BSID, seg6 nexthop id of one of its lists)


@dataclass(frozen=True, order=True)
class Selector:
    """Packets the node steers into a policy: to `destination` [from `source`] [of
    `protocol` to `port`]."""

    destination: IPNetwork
    source: IPNetwork | None = None
    protocol: str = ""
    port: int = 0

    def match(self) -> str:
        family = "ip6" if self.destination.version == 6 else "ip"
        words = [f"{family} daddr {_prefix(self.destination)}"]
        if self.source is not None:
            words.append(f"{family} saddr {_prefix(self.source)}")
        if self.protocol:
            words.append(f"meta l4proto {_NFT_PROTOCOL[self.protocol]}")
        if self.port:
            words.append(f"th dport {self.port}")
        return " ".join(words)


@dataclass(frozen=True)
class Choice:
    """One segment list of a sticky policy: its mark (and table), nexthop and weight."""

    mark: int
    nexthop: int
    weight: int


@dataclass(frozen=True)
class Sticky:
    """A policy with affinity as the node holds it."""

    bsid: IPv6Address
    timeout: int
    choices: tuple[Choice, ...]
    selectors: tuple[Selector, ...]

    @property
    def version(self) -> int:
        return self.selectors[0].destination.version

    @property
    def chain(self) -> str:
        return f"p{int(self.bsid):032x}"

    def set_name(self, choice: Choice) -> str:
        # The timeout is part of the name: nft cannot change a set's timeout in place.
        return f"m{choice.mark:08x}t{self.timeout}"


def stickies(
    policies: Mapping[IPv6Address, SrPolicy],
    affine: Collection[IPv6Address],
    anchors: Mapping[IPv6Address, int],
    groups: Mapping[int, tuple[tuple[int, int], ...]],
    slot_refs: Mapping[Slot, int | None],
    rules: Iterable[Rule],
    main_table: int,
    marks: dict[MarkKey, int],
) -> dict[IPv6Address, Sticky]:
    """What the node must hold for the policies in `affine` (those with affinity) and the
    steerings into them; `marks` is updated: new lists get a free mark, gone ones lose
    theirs. A policy steered from nowhere holds nothing."""
    by_group = {anchors[b]: b for b in affine if b in anchors}
    steered: dict[IPv6Address, list[Slot]] = {}
    if by_group:
        for slot, ref in slot_refs.items():
            bsid = by_group.get(ref) if ref is not None else None
            if bsid is not None:
                steered.setdefault(bsid, []).append(slot)
    into: dict[int, list[Rule]] = {}
    for rule in rules if steered else ():
        into.setdefault(rule.table, []).append(rule)
    out: dict[IPv6Address, Sticky] = {}
    kept: set[MarkKey] = set()
    taken = set(marks.values())
    free = _free_marks(taken)
    for bsid in sorted(steered):
        selectors: list[Selector] = []
        for table, prefix in steered[bsid]:
            if table == main_table:
                selectors.append(Selector(prefix))
                continue
            selectors.extend(
                Selector(prefix, rule.source, rule.protocol, rule.port)
                for rule in into.get(table, ())
                if rule.destination == prefix
            )
        if not selectors:
            continue
        choices = []
        for nexthop, weight in groups[anchors[bsid]]:
            key = (bsid, nexthop)
            mark = marks.get(key)
            if mark is None:
                mark = marks[key] = next(free)
            kept.add(key)
            choices.append(Choice(mark, nexthop, weight))
        out[bsid] = Sticky(bsid, policies[bsid].affinity, tuple(choices), tuple(sorted(selectors)))
    for key in marks.keys() - kept:
        del marks[key]
    return out


def _free_marks(taken: set[int]) -> Iterator[int]:
    for n in range(1, MARK_SPAN + 1):
        if MARK_BASE + n not in taken:
            yield MARK_BASE + n
    raise ValueError("no sessionAffinity mark left")


def routes(held: Mapping[IPv6Address, Sticky]) -> dict[Slot, int]:
    """Each mark's table: every selector's destination → the list's seg6 nexthop."""
    return {
        (choice.mark, selector.destination): choice.nexthop
        for sticky in held.values()
        for choice in sticky.choices
        for selector in sticky.selectors
    }


def mark_rules(held: Mapping[IPv6Address, Sticky]) -> set[tuple[int, int]]:
    """(IP version, mark) of each `fwmark M lookup M` rule."""
    return {(sticky.version, choice.mark) for sticky in held.values() for choice in sticky.choices}


def script(held: Mapping[IPv6Address, Sticky], existing: Collection[str]) -> str:
    """An `nft -f` script that makes the table hold `held`, in one transaction: sets that
    stay keep their clients (they are added, which leaves an existing one alone), every
    chain is rewritten, and the chains and sets in `existing` (names, from
    `held_names`) that are no longer wanted go last, once nothing refers to them."""
    if not held:
        return removal_script(TABLE)
    t = f"inet {TABLE}"
    lines = [f"add table {t}"]
    chains: list[tuple[str, list[str]]] = []
    sets: set[str] = set()
    for sticky in held.values():
        family = "ip6" if sticky.version == 6 else "ip"
        kind = "ipv6_addr" if sticky.version == 6 else "ipv4_addr"
        total = sum(c.weight for c in sticky.choices)
        picks, start = [], 0
        checks = []
        for choice in sticky.choices:
            name, entry = sticky.set_name(choice), f"c{choice.mark:08x}"
            sets.add(name)
            lines.append(
                f"add set {t} {name} {{ type {kind}; flags dynamic,timeout; "
                f"timeout {sticky.timeout}s; size {SET_SIZE}; "
                f'comment "{sticky.bsid} {choice.nexthop}"; }}'
            )
            chains.append(
                (
                    entry,
                    [f"meta mark set {choice.mark:#x} update @{name} {{ {family} saddr }}"],
                )
            )
            checks.append(f"{family} saddr @{name} goto {entry}")
            picks.append(f"{start}-{start + choice.weight - 1} : goto {entry}")
            start += choice.weight
        chains.append(
            (sticky.chain, [*checks, f"numgen random mod {total} vmap {{ {', '.join(picks)} }}"])
        )
    # Few selectors (the affine services' addresses and ports): a rule each.
    steer = [
        f"{selector.match()} jump {sticky.chain}"
        for sticky in held.values()
        for selector in sticky.selectors
    ]
    hooks = {
        "prerouting": "type filter hook prerouting priority mangle; policy accept;",
        # A route chain: the node's own packets are routed again once marked.
        "output": "type route hook output priority mangle; policy accept;",
    }
    for name, hook in hooks.items():
        lines.append(f"add chain {t} {name} {{ {hook} }}")
    for name, _ in chains:
        lines.append(f"add chain {t} {name}")
    wanted_chains = {name for name, _ in chains} | set(hooks)
    for name in sorted(wanted_chains | _chain_names(existing)):
        lines.append(f"flush chain {t} {name}")
    # The node's own connections to its own addresses (its NodePorts) are not chosen for
    # at output: its kernel DNATs them to the ClusterIP, whose packets come back in through
    # the host loop, where prerouting chooses (a mark here would route them into seg6 on
    # output, which drops the DNAT's conntrack entry before it is confirmed).
    lines.append(f"add rule {t} output fib daddr type local return")
    for name in hooks:
        lines.extend(f"add rule {t} {name} {rule}" for rule in steer)
    for name, body in chains:
        lines.extend(f"add rule {t} {name} {rule}" for rule in body)
    for name in sorted(_chain_names(existing) - wanted_chains):
        lines.append(f"delete chain {t} {name}")
    for name in sorted(set(existing) - _chain_names(existing) - sets):
        lines.append(f"delete set {t} {name}")
    return "\n".join([*lines, ""])


def names(held: Mapping[IPv6Address, Sticky]) -> frozenset[str]:
    """The chains and sets of the table once `script(held, ...)` ran."""
    if not held:
        return frozenset()
    out = {"prerouting", "output"}
    for sticky in held.values():
        out.add(sticky.chain)
        for choice in sticky.choices:
            out |= {sticky.set_name(choice), f"c{choice.mark:08x}"}
    return frozenset(out)


def _chain_names(names: Collection[str]) -> set[str]:
    """Chains among our names (sets start with "m")."""
    return {name for name in names if not name.startswith("m")}


@dataclass(frozen=True)
class Held:
    """What a listing of the table says: its chains and sets, and of each set the policy,
    list and timeout it stands for."""

    names: frozenset[str]
    marks: Mapping[MarkKey, int]
    timeouts: Mapping[IPv6Address, int]


def parse_listing(text: str) -> Held:
    """`nft -j list table inet srv6ctl_affinity` → Held (empty for no output)."""
    names: set[str] = set()
    marks: dict[MarkKey, int] = {}
    timeouts: dict[IPv6Address, int] = {}
    items = json.loads(text).get("nftables", []) if text.strip() else []
    for item in items:
        if "chain" in item:
            names.add(str(item["chain"]["name"]))
        elif "set" in item:
            entry = item["set"]
            name = str(entry["name"])
            names.add(name)
            try:
                bsid_text, nexthop = str(entry.get("comment", "")).split()
                mark = int(name[1:9], 16)
                key = (ipaddress.IPv6Address(bsid_text), int(nexthop))
            except ValueError:
                continue  # not a set of our shape: deleted with the next rewrite
            marks[key] = mark
            timeouts[key[0]] = int(entry.get("timeout", 0))
    return Held(frozenset(names), marks, timeouts)


def _prefix(network: IPNetwork) -> str:
    host = network.prefixlen == network.max_prefixlen
    return str(network.network_address) if host else str(network)
