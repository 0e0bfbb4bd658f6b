"""`Rule`s in a real VPP 25.10: classifier sessions on the uplinks' input ACL, read back,
and packets.

Programmed as reconcile would (a plan against a dump): rules of both families, with a
port and with a source, read back equal (one table per shape, chained per family, the
head the uplink's input ACL), each rule's table falling back to table 0 (a route that is
never read as a `Route`); a rule moving to another table; tables unlinked and deleted
with their last rule, the attachments with the last table, fallbacks too; a chain whose
attachment or fallback went missing, or a new uplink, repaired by the next pass; an
operator's input ACL on an uplink refused, not taken over; the fallback made before the
session and deleted after it; a model route at the table's default prefix left alone; a
restarted agent that writes nothing; the ABF engine (the benchmark's reference) still
round-trips. On the wire (`SRV6CTL_VPP_DATAPATH=1`): TCP to the node's own address and a
rule's port is looked up in the rule's table and leaves H.Encaps'd, while the same address
on another port stays the node's; TCP and UDP to ports whose table holds a prohibit route
get the ICMP "administratively prohibited" error back (IPv6 and IPv4: VPP makes it in that
table, and the fallback takes it back to the client), a blackhole's port gets nothing, and
a port no rule takes, or a rule's port its table has no route for, gets the node's own
"port unreachable"; an SCTP rule with a port takes its port; an IPv4 packet with options
never gets a rule's table; a fenced load balancer IP is steered for its allowed source
only.

The API definitions are the VPP binary's own (`own_api_dir`): the ABF engine's test needs
abf.api.json, which the shared definitions lack. Skipped with the reason when VPP or root
is missing.
"""

from __future__ import annotations

import ipaddress
import shutil
from collections.abc import Iterator, Sequence
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from typing import Any

import pytest

from srv6ctl.dataplane import vpp_classify_codec as codec
from srv6ctl.dataplane import vpp_rule_codec as rule_codec
from srv6ctl.dataplane.model import NodeConfig, Route, RouteKind, Rule, Steering
from srv6ctl.dataplane.reconcile import plan
from srv6ctl.dataplane.vpp import ApplyError, VppBackend
from srv6ctl.dataplane.vpp_api import Request, find_api_dir
from srv6ctl.dataplane.vpp_fib_codec import (
    FIB_PATH_TYPE_NORMAL,
    FIB_SOURCE_API,
    TABLE_NAME_PREFIX,
)
from srv6ctl.observe.agentview import no_rules_reason
from tests.support.netns import run
from tests.support.vpp import (
    BSID,
    MARK,
    PEER,
    SOURCE,
    A,
    B,
    Lab,
    Target,
    base_config,
    clean,
    marked,
    own_api_dir,
    reconcile,
    warm_up,
)

NODEPORT6 = Rule(f"{SOURCE}/128", 50, "TCP", 30080)
NODEPORT6_UDP = Rule(f"{SOURCE}/128", 50, "UDP", 30053)
NODEPORT4 = Rule("192.0.2.1/32", 51, "TCP", 30080)
RANGE6 = Rule("fd00:96::20/128", 52, source="2001:db8:99::/48")
RANGE4 = Rule("10.96.0.20/32", 53, source="198.51.100.0/24")
RULES = frozenset({NODEPORT6, NODEPORT6_UDP, NODEPORT4, RANGE6, RANGE4})


def with_rules(rules: frozenset[Rule], **extra: Any) -> NodeConfig:
    """The base node plus `rules`, each table holding a steering for the rule's
    destination into the base service's policy (what render puts there)."""
    base = base_config()
    steerings = {Steering(rule.destination, BSID, table=rule.table) for rule in rules}
    return base_config(steerings=base.steerings | steerings, rules=rules, **extra)


def _rule_backend(vpp: Target, **options: Any) -> VppBackend:
    backend = vpp.backend(api_dir=own_api_dir(), **options)
    if not backend.capabilities.rules:
        backend.close()
        pytest.skip(f"no ABF in this VPP: {backend.capabilities.notes[-1]}")
    return backend


@pytest.fixture
def backend(vpp: Target) -> Iterator[VppBackend]:
    """This module's backend speaks the ABF plugin's API (the lab fixture takes it too)."""
    with _rule_backend(vpp) as b:
        clean(b)
        yield b
    with _rule_backend(vpp) as b:
        clean(b)


@pytest.fixture
def uplink(backend: VppBackend) -> Iterator[int]:
    """An operator's interface (made by CLI, untagged): where rules are attached."""
    name = backend.cli("create loopback interface").strip()
    index = _index(backend, name)
    yield index
    clean(backend)  # rules detached before their interface goes
    backend.cli(f"delete loopback interface intfc {name}")


def _index(backend: VppBackend, name: str) -> int:
    (details,) = [
        d
        for d in backend.channel.dump("sw_interface_dump", sw_if_index=0xFFFF_FFFF)
        if d.interface_name == name
    ]
    return int(details.sw_if_index)


def _groups(backend: VppBackend) -> dict[str, int]:
    """Our rule ACLs in VPP: tag → ACL index."""
    return {
        str(d.tag): int(d.acl_index)
        for d in backend.channel.dump("acl_dump", acl_index=0xFFFF_FFFF)
        if str(d.tag).startswith(rule_codec.TAG_PREFIX)
    }


def _attachments(backend: VppBackend) -> set[tuple[int, int, int, bool]]:
    """(policy id, sw_if_index, priority, ipv6) of every ABF attachment."""
    return {
        (
            int(d.attach.policy_id),
            int(d.attach.sw_if_index),
            int(d.attach.priority),
            bool(d.attach.is_ipv6),
        )
        for d in backend.channel.dump("abf_itf_attach_dump")
    }


def _policies(backend: VppBackend) -> dict[int, tuple[int, list[int]]]:
    """ABF policy id → (ACL index, tables its paths look up in)."""
    return {
        int(d.policy.policy_id): (
            int(d.policy.acl_index),
            [int(p.table_id) for p in d.policy.paths[: int(d.policy.n_paths)]],
        )
        for d in backend.channel.dump("abf_policy_dump")
    }


def _fallbacks(backend: VppBackend) -> set[tuple[int, bool]]:
    """(VPP table, ipv6) of every table whose default route the API made a lookup in table
    0 (a NORMAL path with table 0, no next hop, no interface)."""
    found = set()
    for table in backend.channel.dump("ip_table_dump"):
        table_id, ipv6 = int(table.table.table_id), bool(table.table.is_ip6)
        selector = {"table_id": table_id, "is_ip6": ipv6, "name": ""}
        for details in backend.channel.dump("ip_route_v2_dump", src=FIB_SOURCE_API, table=selector):
            route = details.route
            paths = route.paths[: int(route.n_paths)]
            if ipaddress.ip_network(route.prefix).prefixlen == 0 and [
                (int(p.type), int(p.table_id), int(p.sw_if_index)) for p in paths
            ] == [(FIB_PATH_TYPE_NORMAL, 0, 0xFFFF_FFFF)]:
                found.add((table_id, ipv6))
    return found


# --- programming and reading back ---------------------------------------------------------


def _our_tables(backend: VppBackend) -> dict[int, tuple[codec.Shape, int, int]]:
    """Our classifier tables: index → (shape, next table, sessions)."""
    found = {}
    reply = backend.channel.call("classify_table_ids")
    for index in list(reply.ids)[: int(reply.count)]:
        info = backend.channel.call("classify_table_info", table_id=int(index))
        if int(info.miss_next_index) != codec.CHAIN_MARK:
            continue
        shape = codec.shape_of_mask(bytes(info.mask), int(info.skip_n_vectors))
        assert shape is not None
        found[int(index)] = (shape, int(info.next_table_index), int(info.active_sessions))
    return found


def _chain(backend: VppBackend, head: int) -> list[codec.Shape]:
    """The shapes of the chain from `head`, in order."""
    tables, shapes = _our_tables(backend), []
    while head != 0xFFFF_FFFF:
        shape, head, _ = tables[head]
        shapes.append(shape)
    return shapes


def _input_acl(backend: VppBackend, sw_if_index: int) -> tuple[int, int]:
    """(ip4, ip6) input ACL tables of an interface (~0: none)."""
    reply = backend.channel.call("classify_table_by_interface", sw_if_index=sw_if_index)
    return int(reply.ip4_table_id), int(reply.ip6_table_id)


def test_rules_are_read_back_as_programmed(backend: VppBackend, uplink: int, vpp: Target) -> None:
    desired = with_rules(RULES)
    assert reconcile(backend, desired) > 0
    assert backend.dump().rules == RULES
    assert backend.dump() == backend.as_held(desired)

    # One table per shape (the NodePorts of a family share one, the source ranges another),
    # chained per family, the chain's head the uplink's input ACL; one session per rule.
    ip4, ip6 = _input_acl(backend, uplink)
    assert sorted(map(str, _chain(backend, ip6))) == sorted(
        map(str, {codec.shape_of(NODEPORT6), codec.shape_of(RANGE6)})
    )
    assert sorted(map(str, _chain(backend, ip4))) == sorted(
        map(str, {codec.shape_of(NODEPORT4), codec.shape_of(RANGE4)})
    )
    assert sum(sessions for _, _, sessions in _our_tables(backend).values()) == len(RULES)
    # Each rule's table falls back to table 0 (read as no Route: the dump equals desired).
    assert _fallbacks(backend) == {(50, True), (51, False), (52, True), (53, False)}

    # A restarted agent reads the same and writes nothing.
    with _rule_backend(vpp) as restarted:
        assert restarted.dump().rules == RULES
        assert reconcile(restarted, desired) == 0


def test_a_rule_moves_to_another_table_and_tables_go_with_their_last_rule(
    backend: VppBackend, uplink: int
) -> None:
    reconcile(backend, with_rules(RULES))
    before = _our_tables(backend)

    # The TCP node port moves to table 54: its session is replaced, the tables stay.
    moved = Rule(NODEPORT6.destination, 54, "TCP", 30080)
    rules = (RULES - {NODEPORT6}) | {moved}
    changes = plan(with_rules(rules), backend.dump())
    assert [str(c.op) for c in changes if isinstance(c.obj, Rule)] == ["replace"]
    backend.apply(changes)
    assert backend.dump().rules == rules
    assert _our_tables(backend).keys() == before.keys()
    assert {(50, True), (54, True)} <= _fallbacks(backend)

    # The UDP one follows: table 50 has no rule left, and loses its fallback.
    moved_udp = Rule(NODEPORT6_UDP.destination, 54, "UDP", 30053)
    rules = (rules - {NODEPORT6_UDP}) | {moved_udp}
    reconcile(backend, with_rules(rules))
    assert backend.dump().rules == rules
    assert (50, True) not in _fallbacks(backend) and (54, True) in _fallbacks(backend)

    # The source ranges go: their shape's tables are unlinked and deleted, unless one is
    # its chain's head (kept, empty, while a table follows: the uplinks stay as they are).
    rules = rules - {RANGE6, RANGE4}
    reconcile(backend, with_rules(rules))
    assert backend.dump().rules == rules
    tables = _our_tables(backend)
    ip4, ip6 = _input_acl(backend, uplink)
    for head, kept in ((ip6, codec.shape_of(moved)), (ip4, codec.shape_of(NODEPORT4))):
        chain = _chain(backend, head)
        assert chain[-1] == kept and len(chain) in (1, 2)
        assert len(chain) == 1 or tables[head][2] == 0  # an empty head, then the rules'
    assert len(tables) == len(_chain(backend, ip4)) + len(_chain(backend, ip6))
    assert sum(sessions for _, _, sessions in tables.values()) == len(rules)

    # All gone: no table of ours, no input ACL, no fallback is left.
    reconcile(backend, base_config())
    assert backend.dump().rules == frozenset()
    assert _our_tables(backend) == {}
    assert _input_acl(backend, uplink) == (0xFFFF_FFFF, 0xFFFF_FFFF)
    assert _fallbacks(backend) == set()


def _fib_tables(backend: VppBackend) -> set[tuple[int, bool]]:
    """(table id, ipv6) of the FIB tables the backend made (named as its own)."""
    return {
        (int(d.table.table_id), bool(d.table.is_ip6))
        for d in backend.channel.dump("ip_table_dump")
        if str(d.table.name).startswith(TABLE_NAME_PREFIX)
    }


def test_a_table_goes_with_the_last_object_in_it_and_comes_back_whole(
    backend: VppBackend, uplink: int
) -> None:
    """A Service's own table (its NodePorts', its source ranges') is deleted once the last
    route, steering and rule in it are: VPP kept every table a deleted Service had (in the
    lab's LoadBalancer e2e run, 25 of them per node after 18 specs), and an IPv4 table is
    a 256 KiB mtrie root. Made again by a later Service, it gets its fallback again."""
    reconcile(backend, with_rules(RULES))
    made = _fib_tables(backend)
    assert {(50, True), (51, False), (52, True), (53, False)} <= made
    rules = RULES - {RANGE6, RANGE4}
    reconcile(backend, with_rules(rules))
    left = _fib_tables(backend)
    assert {(50, True), (51, False)} <= left and not {(52, True), (53, False)} & left
    reconcile(backend, with_rules(RULES))
    assert backend.dump().rules == RULES
    assert {(52, True), (53, False)} <= _fallbacks(backend) & _fib_tables(backend)
    reconcile(backend, base_config())
    assert not {50, 51, 52, 53} & {table for table, _ in _fib_tables(backend)}


def test_a_missing_attachment_or_a_new_uplink_is_repaired_by_the_next_pass(
    backend: VppBackend, uplink: int
) -> None:
    desired = with_rules(RULES)
    reconcile(backend, desired)
    ip4, ip6 = _input_acl(backend, uplink)
    backend.cli(f"set interface input acl intfc {_name(backend, uplink)} ip6-table {ip6} del")
    held = backend.dump().rules
    assert RANGE6 not in held and NODEPORT6 not in held  # not forwarding: reported missing
    assert RANGE4 in held  # the other family's chain is whole
    assert reconcile(backend, desired) > 0
    assert _input_acl(backend, uplink) == (ip4, ip6)
    assert reconcile(backend, desired) == 0

    # The table's fallback deleted behind our back: its rules read as missing, and the
    # fallback is repaired.
    group = rule_codec.group_of(RANGE6)
    request = rule_codec.fallback_route_del(group)
    backend.channel.call(request.name, write=True, **request.fields)
    assert RANGE6 not in backend.dump().rules
    assert reconcile(backend, desired) > 0
    assert (52, True) in _fallbacks(backend)
    assert reconcile(backend, desired) == 0

    second = backend.cli("create loopback interface").strip()
    try:
        assert backend.dump().rules == frozenset()  # no chain is on the new uplink yet
        assert reconcile(backend, desired) > 0
        assert backend.dump().rules == RULES
        assert _input_acl(backend, _index(backend, second)) == (ip4, ip6)
    finally:
        clean(backend)
        backend.cli(f"delete loopback interface intfc {second}")


def test_an_operators_input_acl_on_an_uplink_is_not_taken_over(
    backend: VppBackend, uplink: int
) -> None:
    """VPP gives an interface one input ACL per family, and says "done" to a second
    attach: a rule of a family whose uplink has the operator's is refused, by name."""
    shape = codec.shape_of(NODEPORT6)
    reply = backend.channel.call("classify_add_del_table", **{
        **codec.table_add(shape).fields, "miss_next_index": 0xFFFF_FFFF
    })  # fmt: skip
    theirs = int(reply.new_table_index)
    name = _name(backend, uplink)
    backend.cli(f"set interface input acl intfc {name} ip6-table {theirs}")
    try:
        with pytest.raises(ApplyError, match="not ours"):
            reconcile(backend, with_rules(frozenset({NODEPORT6, NODEPORT4})))
        assert _input_acl(backend, uplink)[1] == theirs
        assert theirs not in _our_tables(backend)
    finally:
        backend.cli(f"set interface input acl intfc {name} ip6-table {theirs} del")
        backend.cli(f"classify table del table {theirs}")


def test_the_fallback_is_made_before_the_session_and_goes_after_it(
    backend: VppBackend, uplink: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No packet is sent to a table that cannot send it on: the table's fallback route is
    added before the rule's session, and deleted after it."""
    sent: list[str] = []
    pipeline = backend.channel.pipeline

    def recording(requests: Sequence[Request], **options: Any) -> Any:
        sent.extend(_step(r) for r in requests)
        return pipeline(requests, **options)

    monkeypatch.setattr(backend.channel, "pipeline", recording)
    reconcile(backend, with_rules(frozenset({NODEPORT6})))
    assert sent.index("add fallback") < sent.index("add session") < sent.index("attach")
    sent.clear()
    reconcile(backend, base_config())
    assert sent.index("delete session") < sent.index("delete fallback")
    assert sent.index("detach") < sent.index("delete table")


def _step(request: Request) -> str:
    fields = request.fields
    if request.name == "classify_add_del_session":
        return f"{'add' if fields['is_add'] else 'delete'} session"
    if request.name == "classify_add_del_table" and not fields["is_add"]:
        return "delete table"
    if request.name == "input_acl_set_interface":
        return "attach" if fields["is_add"] else "detach"
    if request.name == "ip_route_add_del" and fields["route"]["prefix"].prefixlen == 0:
        return f"{'add' if fields['is_add'] else 'delete'} fallback"
    return request.name


def test_the_abf_engine_still_reads_back_and_cleans_up(
    vpp: Target, uplink: int, backend: VppBackend
) -> None:
    """The ACL+ABF engine (the benchmark's reference): one ACL and one ABF policy per
    table and family, attached to the uplink; a restart writes nothing; all removed."""
    desired = with_rules(RULES)
    with _rule_backend(vpp, rule_engine="abf") as abf:
        clean(abf)
        try:
            assert reconcile(abf, desired) > 0
            assert abf.dump() == abf.as_held(desired)
            groups = _groups(abf)
            assert len(groups) == 4
            policies = _policies(abf)
            for tag, acl in groups.items():
                group = rule_codec.group_of_tag(tag)
                assert group is not None
                policy_id = rule_codec.policy_id_of(acl)
                assert policies[policy_id] == (acl, [group.table])
                attached = (policy_id, uplink, rule_codec.RULE_PRIORITY, group.ipv6)
                assert attached in _attachments(abf)
            assert _our_tables(abf) == {}  # nothing of the classifier's
            assert reconcile(abf, desired) == 0
        finally:
            clean(abf)
        assert _groups(abf) == {} and _attachments(abf) == set()


def test_rules_an_abf_agent_left_move_to_the_classifier_on_connecting(
    vpp: Target, uplink: int, backend: VppBackend
) -> None:
    """An upgrade: the ABF groups an older agent made become classifier sessions when
    the new backend connects (sessions first, then the groups go, their tables' fallback
    routes kept), and the first pass writes nothing."""
    desired = with_rules(RULES)
    with _rule_backend(vpp, rule_engine="abf") as abf:
        reconcile(abf, desired)
        assert len(_groups(abf)) == 4
    with _rule_backend(vpp) as upgraded:
        assert _groups(upgraded) == {} and _attachments(upgraded) == set()
        assert not any(p >= rule_codec.POLICY_ID_BASE for p in _policies(upgraded))
        assert upgraded.dump() == upgraded.as_held(desired)
        assert reconcile(upgraded, desired) == 0
        assert _fallbacks(upgraded) == {(50, True), (51, False), (52, True), (53, False)}
        assert sum(sessions for _, _, sessions in _our_tables(upgraded).values()) == len(RULES)


def test_a_default_route_of_the_model_in_the_rules_table_is_left_to_decide(
    backend: VppBackend, uplink: int
) -> None:
    """A model route at the table's default prefix is what the kernel's table would use
    too: the group takes it as its fallback, neither replaces nor deletes it."""
    default = Route("::/0", kind=RouteKind.BLACKHOLE, table=NODEPORT6.table)
    base = base_config()
    desired = with_rules(RULES, routes=base.routes | {default})
    reconcile(backend, desired)
    assert backend.dump() == backend.as_held(desired)
    assert (50, True) not in _fallbacks(backend)
    assert reconcile(backend, desired) == 0
    # The rules go, the route stays.
    without_rules = base_config(routes=base.routes | {default})
    reconcile(backend, without_rules)
    assert backend.dump() == backend.as_held(without_rules)
    assert reconcile(backend, without_rules) == 0

    # A table made by the same plan as its default route and its rule (the backend knows
    # it holds nothing else, and reads nothing): the model's route stays the fallback.
    fresh = Rule(f"{SOURCE}/128", 70, "TCP", 30090)
    fresh_default = Route("::/0", kind=RouteKind.BLACKHOLE, table=70)
    together = with_rules(frozenset({fresh}), routes=base.routes | {fresh_default})
    backend.dump()
    reconcile(backend, together)
    assert backend.dump() == backend.as_held(together)
    assert (70, True) not in _fallbacks(backend)
    assert reconcile(backend, together) == 0


def _name(backend: VppBackend, sw_if_index: int) -> str:
    (details,) = backend.channel.dump("sw_interface_dump", sw_if_index=sw_if_index)
    return str(details.interface_name)


def test_capabilities_say_whether_the_api_has_the_classifier(
    backend: VppBackend, vpp: Target, tmp_path: Path
) -> None:
    assert backend.capabilities.rules
    assert any("classifier sessions" in note for note in backend.capabilities.notes)
    # The same VPP through definitions without classify.api.json: rules off, and why.
    found = find_api_dir(backend.channel.api_dir)
    assert found is not None
    for path in found.glob("**/*.api.json"):
        if path.name != "classify.api.json":
            shutil.copy(path, tmp_path / path.name)
    with vpp.backend(api_dir=tmp_path) as without:
        assert not without.capabilities.rules
        assert any("classify.api.json" in note for note in without.capabilities.notes)
        # What verify reads from such an agent's status to skip its NodePort checks.
        status = {"rules": without.capabilities.rules, "notes": without.capabilities.notes}
        reason = no_rules_reason(status)
        assert reason is not None and reason.startswith("no rules (NodePorts")
    assert no_rules_reason({"rules": True, "notes": backend.capabilities.notes}) is None
    # The ABF engine says what it lacks the same way.
    for path in tmp_path.glob("abf.api.json"):
        path.unlink()
    with vpp.backend(api_dir=tmp_path, rule_engine="abf") as without_abf:
        assert not without_abf.capabilities.rules
        assert any("lack abf.api.json" in note for note in without_abf.capabilities.notes)


# --- packets ------------------------------------------------------------------------------


NODEPORT = 30080


def _tcp(lab: Lab, dport: int, count: int) -> list[Any]:
    from scapy.layers.inet import TCP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import Ether
    from scapy.packet import Raw

    return [
        Ether(src=lab.peer_mac, dst=lab.vpp_uplink_mac)
        / IPv6(src=str(PEER), dst=str(SOURCE))
        / TCP(sport=40000 + n, dport=dport, flags="S")
        / Raw(MARK)
        for n in range(count)
    ]


def test_a_node_port_follows_its_table_and_other_ports_stay_the_nodes(lab: Lab) -> None:
    from scapy.layers.inet import TCP
    from scapy.layers.inet6 import IPv6, IPv6ExtHdrSegmentRouting

    from tests.support.netns import PacketPort

    rule = Rule(f"{SOURCE}/128", 60, "TCP", NODEPORT)
    reconcile(lab.backend, with_rules(frozenset({rule})))
    warm_up(lab)
    try:
        with PacketPort(lab.peer, "p0") as peer:
            peer.drain()
            peer.send(_tcp(lab, NODEPORT, 20))
            encapsulated = peer.receive(marked, count=20, timeout=5)
            peer.drain()
            peer.send(_tcp(lab, NODEPORT + 1, 20))
            other = peer.receive(marked, timeout=2)
        assert len(encapsulated) >= 19, f"{len(encapsulated)} of 20 came back encapsulated"
        segments = set()
        for frame in encapsulated:
            outer = frame[IPv6]
            assert outer.src == str(SOURCE)
            assert IPv6ExtHdrSegmentRouting not in frame  # H.Encaps.Red, one SID
            inner = outer.payload
            assert isinstance(inner, IPv6)
            assert (inner.dst, inner[TCP].dport) == (str(SOURCE), NODEPORT)
            segments.add(outer.dst)
        assert segments <= {str(A), str(B)} and segments
        # Port 30081 is the node's own: looked up in main (VPP's local address), never
        # steered; nothing carrying the probe comes back encapsulated.
        assert not [f for f in other if f[IPv6].dst in (str(A), str(B))]
    finally:
        reconcile(lab.backend, base_config())


# The node's IPv4 address on the uplink (NODEPORT4's destination) and the peer's, which
# the `dual` fixture adds to the lab's IPv6-only link.
NODE4 = IPv4Address("192.0.2.1")
PEER4 = IPv4Address("192.0.2.2")
# What VPP answers a prohibit route with: ICMPv6 "administratively prohibited", as the
# kernel; for IPv4 "host administratively prohibited" (VPP 25.10 dpo/ip_null_dpo.c) where
# the kernel says "communication administratively prohibited" (13): both are fatal to a
# connect() (Linux icmp_err_convert: EHOSTUNREACH).
PROHIBITED = {6: (1, 1), 4: (3, 10)}
PORT_UNREACHABLE = {6: (1, 4), 4: (3, 3)}
FAMILIES = pytest.mark.parametrize("version", [6, 4], ids=["ipv6", "ipv4"])


@pytest.fixture
def dual(lab: Lab) -> Iterator[Lab]:
    """The lab with IPv4 on the uplink too (VPP's side is the node's address)."""
    lab.backend.cli(f"set interface ip address {lab.uplink} {NODE4}/24")
    run("ip", "-n", lab.peer, "-4", "addr", "add", f"{PEER4}/24", "dev", "p0")
    warm_up(lab)
    lab.backend.cli(f"ping {PEER4} repeat 2 interval 0.1")
    try:
        yield lab
    finally:
        lab.backend.cli(f"set interface ip address del {lab.uplink} {NODE4}/24")


def _node(version: int) -> IPv4Address | IPv6Address:
    return SOURCE if version == 6 else NODE4


def _host(version: int) -> str:
    """The node's own address as a host prefix (a rule's or route's destination)."""
    return f"{_node(version)}/{128 if version == 6 else 32}"


def _probes(
    lab: Lab,
    version: int,
    protocol: str,
    dport: int,
    *,
    source: str | None = None,
    destination: str | None = None,
) -> list[Any]:
    """Five marked TCP SYNs or UDP datagrams from the peer (or `source` on its link) to the
    node's address (or `destination`)."""
    from scapy.layers.inet import IP, TCP, UDP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import Ether
    from scapy.layers.sctp import SCTP
    from scapy.packet import Raw

    src = source or str(PEER if version == 6 else PEER4)
    dst = destination or str(_node(version))
    ip = IPv6(src=src, dst=dst) if version == 6 else IP(src=src, dst=dst)
    layers = {"TCP": lambda n: TCP(sport=42000 + n, dport=dport, flags="S"),
              "UDP": lambda n: UDP(sport=42000 + n, dport=dport),
              "SCTP": lambda n: SCTP(sport=42000 + n, dport=dport)}  # fmt: skip
    layer4 = [layers[protocol](n) for n in range(5)]
    return [Ether(src=lab.peer_mac, dst=lab.vpp_uplink_mac) / ip / l4 / Raw(MARK) for l4 in layer4]


def _errors(lab: Lab, frames: list[Any]) -> set[tuple[int, int]]:
    """(type, code) of the ICMP destination-unreachable errors quoting `frames` that come
    back to the peer."""
    from scapy.layers.inet import ICMP
    from scapy.layers.inet6 import ICMPv6DestUnreach

    from tests.support.netns import PacketPort

    def error(frame: Any) -> bool:
        return (ICMPv6DestUnreach in frame or ICMP in frame) and marked(frame)

    with PacketPort(lab.peer, "p0") as peer:
        peer.drain()
        peer.send(frames)
        answers = peer.receive(error, timeout=2)
    return {
        (int(f[layer].type), int(f[layer].code))
        for f in answers
        for layer in (ICMPv6DestUnreach, ICMP)
        if layer in f
    }


@FAMILIES
def test_a_prohibit_route_in_the_rules_table_answers_administratively_prohibited(
    dual: Lab, version: int
) -> None:
    """What render gives a NodePort without endpoints (externalTrafficPolicy Cluster): a
    prohibit route in the rule's table (which crashed VPP 25.10 before vpp_fib_codec gave
    it a DROP backstop). VPP takes the rule's ports to it and makes its error in that
    table, whose fallback route looks it up again in table 0: the client is told, TCP and
    UDP alike. Another port is still the node's own ("port unreachable")."""
    table = 62 if version == 6 else 63
    rules = frozenset(
        {Rule(_host(version), table, "UDP", 30053), Rule(_host(version), table, "TCP", NODEPORT)}
    )
    prohibit = Route(_host(version), kind=RouteKind.PROHIBIT, table=table)
    base = base_config()
    desired = base_config(routes=base.routes | {prohibit}, rules=rules)
    reconcile(dual.backend, desired)
    try:
        assert dual.backend.dump() == dual.backend.as_held(desired)  # the fallback is no Route
        assert _errors(dual, _probes(dual, version, "UDP", 30053)) == {PROHIBITED[version]}
        assert _errors(dual, _probes(dual, version, "TCP", NODEPORT)) == {PROHIBITED[version]}
        other = _errors(dual, _probes(dual, version, "UDP", 30054))
        assert other == {PORT_UNREACHABLE[version]}
        assert dual.backend.cli("show version").startswith("vpp")
    finally:
        reconcile(dual.backend, base_config())


@FAMILIES
def test_an_sctp_rule_with_a_port_takes_its_port(dual: Lab, version: int) -> None:
    """SCTP's destination port is where TCP's is, and the classifier matches bytes: an
    SCTP rule with a port works (with ABF, whose ACL plugin reads TCP and UDP ports only,
    it matched nothing). Its table's prohibit route answers; another SCTP port does not
    reach that table."""
    table = 68 if version == 6 else 69
    rule = Rule(_host(version), table, "SCTP", 30200)
    prohibit = Route(_host(version), kind=RouteKind.PROHIBIT, table=table)
    base = base_config()
    desired = base_config(routes=base.routes | {prohibit}, rules=frozenset({rule}))
    reconcile(dual.backend, desired)
    try:
        assert dual.backend.dump() == dual.backend.as_held(desired)
        assert _errors(dual, _probes(dual, version, "SCTP", 30200)) == {PROHIBITED[version]}
        assert PROHIBITED[version] not in _errors(dual, _probes(dual, version, "SCTP", 30201))
    finally:
        reconcile(dual.backend, base_config())


def test_an_ipv4_packet_with_options_misses_a_rule_with_a_port(dual: Lab) -> None:
    """The classifier reads a port where it is without options (README): an IPv4
    packet with options never gets the rule's table (here its prohibit route), where one
    without options does. VPP 25.10 answers it nothing at all: ip4-input sends packets
    with options to ip4-options, which punts them, before the unicast arc's input ACL."""
    from scapy.layers.inet import IP, IPOption_Router_Alert

    rule = Rule(_host(4), 71, "UDP", 30055)
    prohibit = Route(_host(4), kind=RouteKind.PROHIBIT, table=71)
    base = base_config()
    reconcile(dual.backend, base_config(routes=base.routes | {prohibit}, rules=frozenset({rule})))
    try:
        assert _errors(dual, _probes(dual, 4, "UDP", 30055)) == {PROHIBITED[4]}
        with_options = _probes(dual, 4, "UDP", 30055)
        for frame in with_options:
            frame[IP].options = [IPOption_Router_Alert()]
        assert _errors(dual, with_options) == set()
    finally:
        reconcile(dual.backend, base_config())


@FAMILIES
def test_a_drop_route_in_the_rules_table_takes_only_the_rules_port(dual: Lab, version: int) -> None:
    """A blackhole in the rule's table: the rule's port is dropped, fallback or not (the
    more specific route decides); another port reaches the node's own stack, which answers
    "port unreachable"."""
    table = 61 if version == 6 else 66
    rule = Rule(_host(version), table, "UDP", 30053)
    drop = Route(_host(version), kind=RouteKind.BLACKHOLE, table=table)
    base = base_config()
    reconcile(dual.backend, base_config(routes=base.routes | {drop}, rules=frozenset({rule})))
    try:
        assert _errors(dual, _probes(dual, version, "UDP", 30053)) == set()
        other = _errors(dual, _probes(dual, version, "UDP", 30054))
        assert other == {PORT_UNREACHABLE[version]}
    finally:
        reconcile(dual.backend, base_config())


@FAMILIES
def test_what_the_rules_table_has_no_route_for_goes_on_as_in_main(dual: Lab, version: int) -> None:
    """A rule whose table holds nothing for the packet: VPP's default route would drop it;
    the fallback looks it up in table 0, where the node's own stack answers, as for a port
    no rule takes (the kernel passes it on to the next rule, in the end main)."""
    table = 64 if version == 6 else 67
    rule = Rule(_host(version), table, "UDP", 30053)
    reconcile(dual.backend, base_config(rules=frozenset({rule})))
    try:
        assert rule in dual.backend.dump().rules
        answers = _errors(dual, _probes(dual, version, "UDP", 30053))
        assert answers == {PORT_UNREACHABLE[version]}
    finally:
        reconcile(dual.backend, base_config())


def test_a_fenced_load_balancer_ip_is_steered_for_allowed_sources_only(lab: Lab) -> None:
    """loadBalancerSourceRanges as render makes them: a blackhole for the VIP in main, a
    steering in the service's table, a rule per allowed source. The allowed source's
    packets are steered (the table's route is more specific than its fallback); another
    source's never enter the table, and main's blackhole drops them."""
    from scapy.layers.inet6 import IPv6

    from tests.support.netns import PacketPort

    vip, table = "fd00:96::20/128", 65
    base = base_config()
    desired = base_config(
        routes=base.routes | {Route(vip, kind=RouteKind.BLACKHOLE)},
        steerings=base.steerings | {Steering(vip, BSID, table=table)},
        rules=frozenset({Rule(vip, table, source=f"{PEER}/128")}),
    )
    reconcile(lab.backend, desired)
    warm_up(lab)
    address = vip.split("/")[0]
    try:
        assert lab.backend.dump() == lab.backend.as_held(desired)
        with PacketPort(lab.peer, "p0") as peer:
            peer.drain()
            peer.send(_probes(lab, 6, "TCP", 443, destination=address))
            allowed = peer.receive(marked, count=5, timeout=5)
            peer.drain()
            stranger = "2001:db8:1::3"  # on the peer's link, in no range
            peer.send(_probes(lab, 6, "TCP", 443, source=stranger, destination=address))
            refused = peer.receive(marked, timeout=2)
        assert len(allowed) >= 4, f"{len(allowed)} of 5 came back encapsulated"
        assert all(f[IPv6].dst in (str(A), str(B)) for f in allowed)
        assert refused == []
    finally:
        reconcile(lab.backend, base_config())
