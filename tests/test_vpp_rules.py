"""`Rule`s in a real VPP 25.10: ACLs and ABF policies on the uplinks, read back, and packets.

Programmed as reconcile would (a plan against a dump): rules of both families, with a
port and with a source, read back equal; a rule moving to another table; deleted; a group
whose attachment went missing, or a new uplink, repaired by the next pass; a restarted
agent that writes nothing. On the wire (`SRV6CTL_VPP_DATAPATH=1`): TCP to the node's own
address and a rule's port is looked up in the rule's table and leaves H.Encaps'd, while
the same address on another port stays the node's; UDP to a port whose table holds a
blackhole is dropped, one whose table holds a prohibit route is rejected (VPP makes the
ICMP error, which that table has no route back for), while another port gets the node's
own "port unreachable".

The ABF plugin's API definitions are the VPP binary's own (`own_api_dir`): the shared
definitions have no abf.api.json. Skipped with the reason when VPP, root or ABF is missing.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from srv6ctl.dataplane import vpp_rule_codec as rule_codec
from srv6ctl.dataplane.model import NodeConfig, Route, RouteKind, Rule, Steering
from srv6ctl.dataplane.reconcile import plan
from srv6ctl.dataplane.vpp import VppBackend
from srv6ctl.dataplane.vpp_api import find_api_dir
from srv6ctl.observe.agentview import no_rules_reason
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


def _rule_backend(vpp: Target) -> VppBackend:
    backend = vpp.backend(api_dir=own_api_dir())
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


# --- programming and reading back ---------------------------------------------------------


def test_rules_are_read_back_as_programmed(backend: VppBackend, uplink: int, vpp: Target) -> None:
    desired = with_rules(RULES)
    assert reconcile(backend, desired) > 0
    assert backend.dump().rules == RULES
    assert backend.dump() == backend.as_held(desired)

    # One ACL and one ABF policy per table and family, looking up in that table, attached
    # to the uplink for its family (and to nothing of ours).
    groups = _groups(backend)
    assert set(groups) == {
        "srv6ctl:rule:50:ip6",
        "srv6ctl:rule:51:ip4",
        "srv6ctl:rule:52:ip6",
        "srv6ctl:rule:53:ip4",
    }
    policies = _policies(backend)
    for tag, acl in groups.items():
        group = rule_codec.group_of_tag(tag)
        assert group is not None
        policy_id = rule_codec.policy_id_of(acl)
        assert policies[policy_id] == (acl, [group.table])
        assert (policy_id, uplink, rule_codec.RULE_PRIORITY, group.ipv6) in _attachments(backend)
    assert {a[1] for a in _attachments(backend)} == {uplink}

    # A restarted agent reads the same and writes nothing.
    with _rule_backend(vpp) as restarted:
        assert restarted.dump().rules == RULES
        assert reconcile(restarted, desired) == 0


def test_a_rule_moves_to_another_table_and_groups_go_with_their_last_rule(
    backend: VppBackend, uplink: int
) -> None:
    reconcile(backend, with_rules(RULES))
    old_acl = _groups(backend)["srv6ctl:rule:50:ip6"]

    # The TCP node port moves to table 54: its old group keeps the UDP one, in place.
    moved = Rule(NODEPORT6.destination, 54, "TCP", 30080)
    rules = (RULES - {NODEPORT6}) | {moved}
    changes = plan(with_rules(rules), backend.dump())
    assert [str(c.op) for c in changes if isinstance(c.obj, Rule)] == ["replace"]
    backend.apply(changes)
    assert backend.dump().rules == rules
    groups = _groups(backend)
    assert groups["srv6ctl:rule:50:ip6"] == old_acl  # replaced in place, same ACL
    assert "srv6ctl:rule:54:ip6" in groups

    # The UDP one follows: group 50 goes (detached, policy and ACL deleted).
    moved_udp = Rule(NODEPORT6_UDP.destination, 54, "UDP", 30053)
    rules = (rules - {NODEPORT6_UDP}) | {moved_udp}
    reconcile(backend, with_rules(rules))
    assert backend.dump().rules == rules
    assert "srv6ctl:rule:50:ip6" not in _groups(backend)
    assert rule_codec.policy_id_of(old_acl) not in _policies(backend)
    assert not any(a[0] == rule_codec.policy_id_of(old_acl) for a in _attachments(backend))

    # All gone: no ACL, policy or attachment of ours is left.
    reconcile(backend, base_config())
    assert backend.dump().rules == frozenset()
    assert _groups(backend) == {}
    assert not any(p >= rule_codec.POLICY_ID_BASE for p in _policies(backend))
    assert _attachments(backend) == set()


def test_a_missing_attachment_or_a_new_uplink_is_repaired_by_the_next_pass(
    backend: VppBackend, uplink: int
) -> None:
    desired = with_rules(RULES)
    reconcile(backend, desired)
    acl = _groups(backend)["srv6ctl:rule:52:ip6"]
    policy_id = rule_codec.policy_id_of(acl)
    backend.cli(f"abf attach ip6 del policy {policy_id} {_name(backend, uplink)}")
    assert RANGE6 not in backend.dump().rules  # not forwarding: reported missing
    assert reconcile(backend, desired) > 0
    assert (policy_id, uplink, rule_codec.RULE_PRIORITY, True) in _attachments(backend)
    assert reconcile(backend, desired) == 0

    second = backend.cli("create loopback interface").strip()
    try:
        assert backend.dump().rules == frozenset()  # no group is on the new uplink yet
        assert reconcile(backend, desired) > 0
        assert backend.dump().rules == RULES
        assert {a[1] for a in _attachments(backend)} == {uplink, _index(backend, second)}
    finally:
        clean(backend)
        backend.cli(f"delete loopback interface intfc {second}")


def _name(backend: VppBackend, sw_if_index: int) -> str:
    (details,) = backend.channel.dump("sw_interface_dump", sw_if_index=sw_if_index)
    return str(details.interface_name)


def test_capabilities_say_whether_vpp_has_abf(
    backend: VppBackend, vpp: Target, tmp_path: Path
) -> None:
    assert backend.capabilities.rules
    # The same VPP through definitions without abf.api.json: rules off, and why.
    found = find_api_dir(backend.channel.api_dir)
    assert found is not None
    for path in found.glob("**/*.api.json"):
        if path.name != "abf.api.json":
            shutil.copy(path, tmp_path / path.name)
    with vpp.backend(api_dir=tmp_path) as without:
        assert not without.capabilities.rules
        assert any("lack abf.api.json" in note for note in without.capabilities.notes)
        # What verify reads from such an agent's status to skip its NodePort checks.
        status = {"rules": without.capabilities.rules, "notes": without.capabilities.notes}
        reason = no_rules_reason(status)
        assert reason is not None and reason.startswith("no rules (NodePorts")
    assert no_rules_reason({"rules": True, "notes": backend.capabilities.notes}) is None


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


def test_a_drop_route_in_the_rules_table_takes_only_the_rules_port(lab: Lab) -> None:
    """A blackhole in the rule's table: the rule's port is dropped, another port reaches
    the node's own stack, which answers "port unreachable"."""
    from scapy.layers.inet6 import ICMPv6DestUnreach

    rule = Rule(f"{SOURCE}/128", 61, "UDP", 30053)
    drop = Route(f"{SOURCE}/128", kind=RouteKind.BLACKHOLE, table=61)
    base = base_config()
    reconcile(lab.backend, base_config(routes=base.routes | {drop}, rules=frozenset({rule})))
    warm_up(lab)

    try:
        assert _unreachable(lab, 30053) == []  # table 61: dropped
        answers = _unreachable(lab, 30054)  # main: the node itself, no listener on that port
        assert answers and {int(f[ICMPv6DestUnreach].code) for f in answers} == {4}
    finally:
        reconcile(lab.backend, base_config())


def test_a_prohibit_route_in_the_rules_table_rejects_the_rules_port(lab: Lab) -> None:
    """What render gives a NodePort without endpoints (externalTrafficPolicy Cluster): a
    prohibit route in the rule's table, which crashed VPP 25.10 before vpp_fib_codec gave
    it a DROP backstop. VPP now takes the rule's port to it and makes its "administratively
    prohibited" error; that error is looked up in the same table (the packet's FIB after
    ABF), which has no route back to the client, so the client sees a drop. Another port
    is still the node's own ("port unreachable")."""
    from scapy.layers.inet6 import ICMPv6DestUnreach

    rule = Rule(f"{SOURCE}/128", 62, "UDP", 30053)
    prohibit = Route(f"{SOURCE}/128", kind=RouteKind.PROHIBIT, table=62)
    base = base_config()
    desired = base_config(routes=base.routes | {prohibit}, rules=frozenset({rule}))
    reconcile(lab.backend, desired)
    warm_up(lab)
    try:
        assert lab.backend.dump().routes == desired.routes
        lab.backend.cli("clear errors")
        assert _unreachable(lab, 30053) == []
        made = _icmp_errors_made(lab.backend)
        assert made >= 1, "VPP made no ICMP error for the prohibit route"
        answers = _unreachable(lab, 30054)
        assert answers and {int(f[ICMPv6DestUnreach].code) for f in answers} == {4}
        assert lab.backend.cli("show version").startswith("vpp")
    finally:
        reconcile(lab.backend, base_config())


def _icmp_errors_made(backend: VppBackend) -> int:
    """ip6-icmp-error's "destination unreachable response sent" count (`show errors`)."""
    for line in backend.cli("show errors").splitlines():
        fields = line.split()
        if len(fields) > 2 and fields[1] == "ip6-icmp-error" and "unreachable" in line:
            return int(fields[0])
    return 0


def _unreachable(lab: Lab, dport: int) -> list[Any]:
    """The ICMPv6 destination-unreachable errors five UDP datagrams from the peer to the
    node's address at `dport` bring back."""
    from scapy.layers.inet import UDP
    from scapy.layers.inet6 import ICMPv6DestUnreach, IPv6
    from scapy.layers.l2 import Ether
    from scapy.packet import Raw

    from tests.support.netns import PacketPort

    frames = [
        Ether(src=lab.peer_mac, dst=lab.vpp_uplink_mac)
        / IPv6(src=str(PEER), dst=str(SOURCE))
        / UDP(sport=41000 + n, dport=dport)
        / Raw(MARK)
        for n in range(5)
    ]
    with PacketPort(lab.peer, "p0") as peer:
        peer.drain()
        peer.send(frames)
        return peer.receive(lambda f: ICMPv6DestUnreach in f and marked(f), timeout=2)
