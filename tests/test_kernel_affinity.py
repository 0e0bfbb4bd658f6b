"""sessionAffinity's node state (kernel_affinity): what it holds for which steering, and
its nftables table loaded into a real kernel (no SRv6 needed: sets, chains and marks are
in every kernel; the packets through SR policies are in test_kernel_packets)."""

from __future__ import annotations

import ipaddress
import json

import pytest

from srv6ctl.dataplane import kernel_affinity as affinity
from srv6ctl.dataplane.kernel_rules import MARK_BASE
from srv6ctl.dataplane.model import MAIN_TABLE, IPv6Address, Rule, SegmentList, SrPolicy
from tests.support.netns import Netns, NetnsFactory, run

A, B = IPv6Address("fcbb:bb00::a"), IPv6Address("fcbb:bb00::b")
SERVICE_TABLE = 0x5C000007
NODE = ipaddress.ip_network("2001:db8:5::1/128")


def _policy(bsid: IPv6Address, lists: int, affinity_s: int) -> SrPolicy:
    segments = tuple(
        SegmentList((IPv6Address(f"fcbb:bb00:{n + 1}::5"),), weight=n + 1) for n in range(lists)
    )
    return SrPolicy(bsid, segments, affinity=affinity_s)


def _held(
    marks: dict[affinity.MarkKey, int],
    *,
    steer_b: bool = True,
    lists_a: int = 2,
) -> dict[IPv6Address, affinity.Sticky]:
    """A (3 h) steered from the main table (a ClusterIP) and from a service's table by a
    NodePort rule; B (60 s) from the main table (an IPv4 VIP) when `steer_b`; a third
    policy without affinity steered too, which holds nothing."""
    policies = {A: _policy(A, lists_a, 10800), B: _policy(B, 1, 60)}
    anchors = {A: 100, B: 200, IPv6Address("fcbb:bb00::c"): 300}
    groups = {
        100: tuple((10 + n, n + 1) for n in range(lists_a)),
        200: ((20, 1),),
        300: ((10, 1),),
    }
    slots: dict[tuple[int, ipaddress.IPv4Network | ipaddress.IPv6Network], int | None] = {
        (MAIN_TABLE, ipaddress.ip_network("fd00:96::1/128")): 100,
        (SERVICE_TABLE, NODE): 100,
        (MAIN_TABLE, ipaddress.ip_network("fd00:96::3/128")): 300,
        (MAIN_TABLE, ipaddress.ip_network("fd00:10::/64")): None,
    }
    if steer_b:
        slots[(MAIN_TABLE, ipaddress.ip_network("10.96.0.2/32"))] = 200
    rules = [
        Rule(NODE, SERVICE_TABLE, "TCP", 30080),
        Rule(NODE, SERVICE_TABLE, "UDP", 30081),
        Rule(NODE, 0x5C000008, "TCP", 30090),  # another service's port: not A's
    ]
    return affinity.stickies(policies, {A, B}, anchors, groups, slots, rules, MAIN_TABLE, marks)


def test_a_policy_holds_a_mark_per_list_and_a_selector_per_way_in() -> None:
    marks: dict[affinity.MarkKey, int] = {}
    held = _held(marks)
    assert set(held) == {A, B}
    a = held[A]
    assert a.timeout == 10800 and a.version == 6
    assert [(c.nexthop, c.weight) for c in a.choices] == [(10, 1), (11, 2)]
    assert sorted(a.selectors) == sorted(
        [
            affinity.Selector(ipaddress.ip_network("fd00:96::1/128")),
            affinity.Selector(NODE, None, "TCP", 30080),
            affinity.Selector(NODE, None, "UDP", 30081),
        ]
    )
    assert held[B].version == 4
    assert set(marks.values()) == {c.mark for s in held.values() for c in s.choices}
    assert all(mark & 0xFF000000 == MARK_BASE for mark in marks.values())
    # Each mark's table routes every destination of its policy to that list's nexthop.
    routes = affinity.routes(held)
    assert routes[(marks[(A, 11)], NODE)] == 11
    assert routes[(marks[(B, 20)], ipaddress.ip_network("10.96.0.2/32"))] == 20
    assert len(routes) == 2 * 2 + 1


def test_marks_stay_while_their_list_does_and_go_with_it() -> None:
    marks: dict[affinity.MarkKey, int] = {}
    _held(marks, lists_a=3)
    before = dict(marks)
    _held(marks, lists_a=3)
    assert marks == before  # stable: a client's set goes with its mark
    _held(marks, lists_a=2, steer_b=False)
    assert marks == {key: before[key] for key in ((A, 10), (A, 11))}
    _held(marks, lists_a=3)
    assert len(set(marks.values())) == len(marks) == 4  # a new list: a mark of its own


@pytest.mark.netns
def test_the_table_loads_keeps_its_clients_and_reads_back(netns_factory: NetnsFactory) -> None:
    node = netns_factory()
    marks: dict[affinity.MarkKey, int] = {}
    held = _held(marks)
    _nft(node, affinity.script(held, ()))
    listing = _list(node)
    read = affinity.parse_listing(listing)
    assert read.marks == marks
    assert read.timeouts == {A: 10800, B: 60}
    assert read.names == affinity.names(held)
    hooks = {
        item["chain"].get("hook") for item in json.loads(listing)["nftables"] if "chain" in item
    }
    assert {"prerouting", "output"} <= hooks

    # A client remembered for A's first list survives a rewrite that drops B.
    first = held[A].set_name(held[A].choices[0])
    _nft(node, f"add element inet {affinity.TABLE} {first} {{ 2001:db8::42 }}\n")
    fewer = _held(marks, steer_b=False)
    _nft(node, affinity.script(fewer, read.names))
    again = affinity.parse_listing(_list(node))
    assert again.names == affinity.names(fewer)
    assert B not in again.timeouts
    elements = node.exec("nft", "list", "set", "inet", affinity.TABLE, first).stdout
    assert "2001:db8::42" in elements

    # Nothing held: the table goes.
    _nft(node, affinity.script({}, again.names))
    assert affinity.TABLE not in node.exec("nft", "list", "tables").stdout


@pytest.mark.netns
def test_a_packet_of_a_new_client_is_marked_and_remembered(netns_factory: NetnsFactory) -> None:
    """The chains themselves: the node's own packets (the output chain) to A's ClusterIP
    get one of A's marks, by weight, and the client's address lands in that list's set."""
    node = netns_factory()
    node.ip("link", "add", "d0", "type", "veth", "peer", "name", "d1")
    for device in ("d0", "d1"):
        node.ip("link", "set", device, "up")
    node.ip("addr", "add", "2001:db8:9::1/64", "dev", "d0", "nodad")
    node.ip("route", "add", "fd00:96::1/128", "dev", "d0")
    marks: dict[affinity.MarkKey, int] = {}
    held = _held(marks)
    _nft(node, affinity.script(held, ()))
    # Count marked packets per mark where they leave.
    counting = "\n".join(
        [
            "add table inet count",
            "add chain inet count post { type filter hook postrouting priority 0; }",
            *(
                f"add rule inet count post ip6 daddr fd00:96::1 meta mark {c.mark:#x} counter"
                for c in held[A].choices
            ),
            "",
        ]
    )
    _nft(node, counting)
    node.ip("neigh", "add", "fd00:96::1", "lladdr", "02:00:00:00:00:01", "dev", "d0")
    for port in range(20):
        node.exec(
            "python3",
            "-c",
            "import socket; s=socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); "
            f"s.sendto(b'x', ('fd00:96::1', {40000 + port}))",
        )
    counters = node.exec("nft", "-j", "list", "chain", "inet", "count", "post").stdout
    packets = [
        item["rule"]["expr"][-1]["counter"]["packets"]
        for item in json.loads(counters)["nftables"]
        if "rule" in item
    ]
    assert sorted(packets) == [0, 20]  # every packet of the one client: one mark
    chosen = held[A].choices[packets.index(20)]
    remembered = node.exec(
        "nft", "list", "set", "inet", affinity.TABLE, held[A].set_name(chosen)
    ).stdout
    assert "2001:db8:9::1" in remembered


def _nft(node: Netns, script: str) -> None:
    run("ip", "netns", "exec", node.name, "nft", "-f", "-", stdin=script)


def _list(node: Netns) -> str:
    return node.exec("nft", "-j", "list", "table", "inet", affinity.TABLE).stdout
