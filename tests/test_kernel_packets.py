"""Real packets through a namespace programmed by KernelBackend.

Topology (two namespaces, two veth pairs):

    peer: src0 ──── in0 :node: out0 ──── dst0 :peer
          (we send)      (backend)           (we sniff)

Frames are written raw on `src0` addressed to `in0`'s MAC, and read raw on `dst0`; the
node forwards between them with nothing but what the backend programmed (plus the two
connected subnets and static neighbours the fixture adds). A marker in every payload
tells our packets from the kernel's own chatter (MLD, ND).
"""

from __future__ import annotations

import collections
import dataclasses
import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import ICMPv6DestUnreach, IPv6, IPv6ExtHdrSegmentRouting
from scapy.layers.l2 import Ether
from scapy.packet import Packet, Raw

from srv6ctl.dataplane import kernel_affinity, local_sources
from srv6ctl.dataplane.kernel import KernelBackend
from srv6ctl.dataplane.kernel_codec import InvalidObject
from srv6ctl.dataplane.model import (
    End,
    EndDT4,
    EndDT6,
    EndDT46,
    EndDX4,
    EndDX6,
    EndX,
    Flavour,
    LocalSid,
    NodeConfig,
    Route,
    RouteKind,
    Rule,
    SegmentList,
    SrPolicy,
    Steering,
)
from tests.support.netns import Netns, NetnsFactory, PacketPort

pytestmark = pytest.mark.netns

NODE_SOURCE = "fcbb:bb00:1::"
CLIENT6, CLIENT4 = "2001:db8:1::2", "198.51.100.2"
PEER6, PEER4 = "2001:db8:2::2", "192.0.2.2"
MARK = b"s6t-probe"
BASE_ROUTES = (
    Route("fcbb:bb00::/32", via=PEER6, interface="out0"),  # the other nodes' locators
    Route("fd00:10::/48", via=PEER6, interface="out0"),  # pods on other nodes
)


def sl(*segments: str, weight: int = 1) -> SegmentList:
    return SegmentList(tuple(ipaddress.IPv6Address(s) for s in segments), weight)


@dataclass
class Lab:
    node: Netns
    peer: Netns
    backend: KernelBackend
    ingress: PacketPort  # on the peer's src0: frames into the node
    egress: PacketPort  # on the peer's dst0: what the node forwards
    node_mac: str
    client_mac: str

    def program(self, *, routes: tuple[Route, ...] = (), **objects: Any) -> NodeConfig:
        from srv6ctl.dataplane.reconcile import plan

        config = NodeConfig(
            encap_source=NODE_SOURCE, routes=frozenset(BASE_ROUTES + routes), **objects
        )
        self.backend.apply(plan(config, self.backend.dump()))
        assert self.backend.dump() == config
        return config

    def frame(self, packet: Packet) -> Packet:
        return Ether(dst=self.node_mac, src=self.client_mac) / packet

    def send(self, *packets: Packet) -> None:
        self.egress.drain()
        self.ingress.send(self.frame(p) for p in packets)

    def received(self, count: int | None = 1, timeout: float = 1.0) -> list[Packet]:
        return self.egress.receive(lambda f: MARK in bytes(f), count=count, timeout=timeout)


@pytest.fixture
def lab(netns_factory: NetnsFactory) -> Iterator[Lab]:
    node, peer = netns_factory(), netns_factory()
    netns_factory.veth(peer, "src0", node, "in0")
    netns_factory.veth(node, "out0", peer, "dst0")
    for ns, dev, v6, v4 in (
        (node, "in0", "2001:db8:1::1/64", "198.51.100.1/24"),
        (node, "out0", "2001:db8:2::1/64", "192.0.2.1/24"),
        (peer, "src0", f"{CLIENT6}/64", f"{CLIENT4}/24"),
        (peer, "dst0", f"{PEER6}/64", f"{PEER4}/24"),
    ):
        ns.ip("addr", "add", v6, "dev", dev, "nodad")
        ns.ip("addr", "add", v4, "dev", dev)
    client_mac, peer_mac = peer.mac("src0"), peer.mac("dst0")
    for address, mac, dev in (
        (PEER6, peer_mac, "out0"),
        (PEER4, peer_mac, "out0"),
        (CLIENT6, client_mac, "in0"),
        (CLIENT4, client_mac, "in0"),
    ):
        node.ip("neigh", "replace", address, "lladdr", mac, "dev", dev, "nud", "permanent")
    with (
        KernelBackend(node.name) as backend,
        PacketPort(peer, "src0") as ingress,
        PacketPort(peer, "dst0") as egress,
    ):
        yield Lab(node, peer, backend, ingress, egress, node.mac("in0"), client_mac)


def udp6(dst: str, sport: int = 4242, src: str = CLIENT6) -> Packet:
    return IPv6(src=src, dst=dst, hlim=64) / UDP(sport=sport, dport=80) / Raw(MARK)


def udp4(dst: str, sport: int = 4242) -> Packet:
    return IP(src=CLIENT4, dst=dst, ttl=64) / UDP(sport=sport, dport=80) / Raw(MARK)


def srv6(segments: list[str], segleft: int, inner: Packet) -> Packet:
    """An SRv6 packet travelling `segments` (in order), currently at segments[-1-segleft]."""
    active = list(reversed(segments))[segleft]
    srh = IPv6ExtHdrSegmentRouting(addresses=list(reversed(segments)), segleft=segleft)
    return IPv6(src="fcbb:bb00:9::", dst=active, hlim=64) / srh / inner


def same_inner(got: Packet, sent: Packet) -> None:
    """The inner packet arrived as sent, except the hop limit/TTL of one forwarding."""
    got, sent = got.copy(), sent.copy()
    for packet in (got, sent):
        if IPv6 in packet:
            packet[IPv6].hlim = 0
        if IP in packet:
            packet[IP].ttl, packet[IP].chksum = 0, 0
    assert bytes(got) == bytes(sent)


# --- headend: H.Encaps, H.Encaps.Red, IPv4-in-SRv6 --------------------------------------


@pytest.mark.kernel_srv6(vm=True)
def test_h_encaps_of_steered_traffic(lab: Lab) -> None:
    segments = ["fcbb:bb00:2::1", "fcbb:bb00:3:0:1::5"]
    lab.program(
        policies=[SrPolicy("fcbb:bb00::1", (sl(*segments),))],
        steerings=[
            Steering("fd00:96::1/128", "fcbb:bb00::1"),
            Steering("10.96.0.1/32", "fcbb:bb00::1"),
        ],
    )
    inner = udp6("fd00:96::1")
    lab.send(inner)
    (frame,) = lab.received()
    outer = frame[IPv6]
    assert (outer.src, outer.dst, outer.nh) == (NODE_SOURCE, segments[0], 43)
    srh = outer[IPv6ExtHdrSegmentRouting]
    assert (srh.segleft, srh.lastentry, srh.nh) == (1, 1, 41)
    assert srh.addresses == list(reversed(segments))  # Segment List[0] is the last segment
    same_inner(srh.payload, inner)

    inner4 = udp4("10.96.0.1")
    lab.send(inner4)
    (frame,) = lab.received()
    srh = frame[IPv6ExtHdrSegmentRouting]
    assert (frame[IPv6].src, frame[IPv6].dst, srh.nh) == (NODE_SOURCE, segments[0], 4)
    same_inner(srh.payload, inner4)
    # The outer flow label comes from the inner flow (seg6_flowlabel 1), not from an inner
    # header that has none: an underlay router spreads flows by it (RFC 6438); two flows
    # differ in it, and one flow keeps its label.
    labels = []
    for sport in (4242, 4243, 4242):
        lab.send(udp4("10.96.0.1", sport=sport))
        (frame,) = lab.received()
        labels.append(frame[IPv6].fl)
    assert labels[0] != 0 and labels[0] != labels[1] and labels[0] == labels[2], labels


@pytest.mark.kernel_srv6(vm=True)
def test_h_encaps_red(lab: Lab) -> None:
    one, two = ["fcbb:bb00:3:0:1::5"], ["fcbb:bb00:2::1", "fcbb:bb00:3:0:1::6"]
    lab.program(
        policies=[
            SrPolicy("fcbb:bb00::1", (sl(*one),), mode="encap.red"),
            SrPolicy("fcbb:bb00::2", (sl(*two),), mode="encap.red"),
        ],
        steerings=[
            Steering("fd00:96::1/128", "fcbb:bb00::1"),
            Steering("fd00:96::2/128", "fcbb:bb00::2"),
        ],
    )
    inner = udp6("fd00:96::1")
    lab.send(inner)
    (frame,) = lab.received()
    assert (frame[IPv6].src, frame[IPv6].dst, frame[IPv6].nh) == (NODE_SOURCE, one[0], 41)
    assert IPv6ExtHdrSegmentRouting not in frame  # one SID: no SRH at all
    same_inner(frame[IPv6].payload, inner)

    lab.send(udp6("fd00:96::2"))
    (frame,) = lab.received()
    srh = frame[IPv6ExtHdrSegmentRouting]
    # Reduced: the first SID is only in the destination, the SRH holds the rest.
    assert (frame[IPv6].dst, srh.segleft, srh.lastentry) == (two[0], 1, 0)
    assert srh.addresses == [two[1]]


def test_service_without_endpoints_is_administratively_prohibited(lab: Lab) -> None:
    lab.program(routes=(Route("fd00:96::9/128", kind=RouteKind.PROHIBIT),))
    lab.ingress.drain()
    lab.send(udp6("fd00:96::9"))
    replies = lab.ingress.receive(lambda f: ICMPv6DestUnreach in f, count=1)
    assert replies and replies[0][ICMPv6DestUnreach].code == 1  # administratively prohibited
    assert lab.received(timeout=0.3) == []


# --- endpoint behaviours ---------------------------------------------------------------


@pytest.mark.kernel_srv6(vm=True)
def test_end_with_and_without_psp_and_its_counters(lab: Lab) -> None:
    plain, psp = End("fcbb:bb00:1::1"), End("fcbb:bb00:1::2", {Flavour.PSP})
    # PSP on End is newer than Debian 12's 6.1, which has none: where the kernel lacks
    # it, the backend refuses such a SID before writing anything, and plain End works.
    has_psp = Flavour.PSP in lab.backend.features.flavours.get(End.behaviour, frozenset())
    if not has_psp:
        with pytest.raises(InvalidObject, match="flavour psp is not supported on End here"):
            lab.program(local_sids=[plain, psp])
        assert lab.backend.dump() == NodeConfig()
    lab.program(local_sids=[plain, psp] if has_psp else [plain])
    inner = udp6("fd00:10:0:2::5", src="fd00:10:0:3::7")
    last = "fcbb:bb00:2::6"

    lab.send(srv6([str(plain.sid), last], 1, inner))
    (frame,) = lab.received()
    srh = frame[IPv6ExtHdrSegmentRouting]
    assert (frame[IPv6].dst, srh.segleft) == (last, 0)
    same_inner(srh.payload, inner)

    if has_psp:
        lab.send(srv6([str(psp.sid), last], 1, inner))
        (frame,) = lab.received()
        assert IPv6ExtHdrSegmentRouting not in frame  # popped at the penultimate SID
        assert (frame[IPv6].dst, frame[IPv6].nh) == (last, 41)
        same_inner(frame[IPv6].payload, inner)

    lab.send(srv6([str(plain.sid)], 0, inner))  # segments left 0: End must drop it
    assert lab.received(timeout=0.3) == []

    counters = lab.backend.counters()
    assert counters[plain.key].packets == 1 and counters[plain.key].errors == 1
    assert counters[plain.key].bytes > 0
    if has_psp:
        assert counters[psp.key].packets == 1 and counters[psp.key].errors == 0


@pytest.mark.kernel_srv6(vm=True)
def test_end_x_cross_connects_to_its_neighbour(lab: Lab) -> None:
    sid = EndX("fcbb:bb00:1::3", nexthop=PEER6, interface="out0")
    lab.program(local_sids=[sid])
    inner = udp6("fd00:10:0:2::5")
    unrouted = "2001:db8:ff::1"  # the node has no route for it: only End.X gets it out
    lab.send(srv6([str(sid.sid), unrouted], 1, inner))
    (frame,) = lab.received()
    assert frame[Ether].dst == lab.peer.mac("dst0")
    assert (frame[IPv6].dst, frame[IPv6ExtHdrSegmentRouting].segleft) == (unrouted, 0)


@pytest.mark.parametrize(
    "sid, inner",
    [
        (EndDT6("fcbb:bb00:1::6", table=254), udp6("fd00:10:0:2::5")),
        (EndDX6("fcbb:bb00:1:0:1::1", nexthop=PEER6, interface="out0"), udp6("fd00:96::1")),
        (EndDX4("fcbb:bb00:1:0:1::2", nexthop=PEER4, interface="out0"), udp4("10.96.0.1")),
    ],
    ids=["End.DT6", "End.DX6", "End.DX4"],
)
@pytest.mark.kernel_srv6(vm=True)
def test_decapsulation_delivers_the_inner_packet(lab: Lab, sid: LocalSid, inner: Packet) -> None:
    # As the backend pods do (README, "Services without NAT"), the receiver holds the
    # service address on its loopback. End.DX4 needs it: the kernel routes towards nh4,
    # but on nh4's connected subnet it resolves the *inner* destination's link-layer
    # address (ip_route_input with a gateway-less route), so the pod must answer ARP for
    # the ClusterIP.
    lab.peer.ip("addr", "add", "10.96.0.1/32", "dev", "lo")
    lab.program(local_sids=[sid])
    lab.send(
        IPv6(src="fcbb:bb00:9::", dst=str(sid.sid)) / inner,  # encap.red style, no SRH
        srv6([str(sid.sid)], 0, inner),  # with an SRH, segments left 0
    )
    frames = lab.received(count=2)
    assert len(frames) == 2
    for frame in frames:
        assert frame[Ether].dst == lab.peer.mac("dst0")
        same_inner(frame[Ether].payload, inner)
    assert lab.backend.counters()[sid.key].packets == 2


@pytest.mark.kernel_srv6(vm=True)
def test_end_dx4_takes_the_nodes_own_address_back_only_from_srv6(lab: Lab) -> None:
    """IPv4 coming back over SRv6 with the node's own address as its source (a host's
    connection to another node's NodePort landing here; a remote backend's direct reply to
    a pod that asked its own node's NodePort) is a martian on the uplink unless the uplink
    accepts local sources; `local_sources` turns that on and guards everything else."""
    own = "198.51.100.1"  # the node's address on in0, the uplink
    sid = EndDX4("fcbb:bb00:1:0:1::2", nexthop=PEER4, interface="out0")
    lab.peer.ip("addr", "add", "10.96.0.1/32", "dev", "lo")
    lab.node.ip("route", "add", "10.96.0.1/32", "via", PEER4)  # for the plain packets
    lab.program(local_sids=[sid])
    inner = IP(src=own, dst="10.96.0.1", ttl=64) / UDP(sport=4242, dport=80) / Raw(MARK)
    srv6_packet = IPv6(src="fcbb:bb00:9::", dst=str(sid.sid)) / inner
    lab.send(srv6_packet)
    assert lab.received(count=1, timeout=0.5) == []  # the martian, as the kernel has it

    turned = local_sources.ensure(lab.node.name, [])
    assert turned == ["in0", "out0"]
    lab.send(srv6_packet)
    (frame,) = lab.received()
    same_inner(frame[Ether].payload, inner)
    # The same packet without SRv6 around it claims the node's address from the underlay:
    # the guard drops it (its counter says so), while another source's goes through.
    lab.send(inner)
    assert lab.received(count=1, timeout=0.5) == []
    assert "packets 1 " in lab.node.exec("nft", "list", "table", "ip", local_sources.TABLE).stdout
    lab.send(udp4("10.96.0.1"))
    assert len(lab.received()) == 1
    local_sources.remove(lab.node.name)


@pytest.mark.parametrize("cls", [EndDT4, EndDT46], ids=["End.DT4", "End.DT46"])
@pytest.mark.kernel_srv6(vm=True)
def test_vrf_decapsulation(lab: Lab, cls: type[LocalSid]) -> None:
    """End.DT4/DT46 decapsulate into the main table through a VRF device the backend makes
    (with VRF strict mode, which 6.1 demands); without VRF they are refused unwritten."""
    sid = cls(f"fcbb:bb00:1::{4 if cls is EndDT4 else 46}")
    if cls.behaviour not in lab.backend.capabilities.behaviours:
        with pytest.raises(InvalidObject, match=f"{cls.behaviour}.*unsupported"):
            lab.program(local_sids=[sid])
        assert lab.backend.dump() == NodeConfig()
        return
    lab.peer.ip("addr", "add", "10.96.0.1/32", "dev", "lo")  # as for End.DX4, above
    lab.program(local_sids=[sid])
    assert "srv6vrf254" in lab.node.ip("link", "show", "type", "vrf")
    inners = [udp4(PEER4)] + ([udp6(PEER6)] if cls is EndDT46 else [])
    for inner in inners:
        lab.send(
            IPv6(src="fcbb:bb00:9::", dst=str(sid.sid)) / inner,  # encap.red style, no SRH
            srv6([str(sid.sid)], 0, inner),  # with an SRH, segments left 0
        )
        frames = lab.received(count=2)
        assert len(frames) == 2, inner.summary()
        for frame in frames:
            assert frame[Ether].dst == lab.peer.mac("dst0")
            same_inner(frame[Ether].payload, inner)
    assert lab.backend.counters()[sid.key].packets == 2 * len(inners)
    # A second apply of the same config writes nothing: the VRF device is found, not made.
    writes = lab.backend.writes
    lab.program(local_sids=[sid])
    assert lab.backend.writes == writes


# --- load balancing --------------------------------------------------------------------


@pytest.mark.kernel_srv6(vm=True)
def test_resilient_group_spreads_flows_by_weight_and_keeps_them(lab: Lab) -> None:
    a, b, c = "fcbb:bb00:2:0:1::a", "fcbb:bb00:3:0:1::b", "fcbb:bb00:4:0:1::c"
    weights = {a: 1, b: 2, c: 1}
    lab.program(
        policies=[SrPolicy("fcbb:bb00::1", tuple(sl(s, weight=w) for s, w in weights.items()))],
        steerings=[Steering("fd00:96::1/128", "fcbb:bb00::1")],
    )
    flows = range(20000, 21000)

    def placement() -> dict[int, str]:
        # In bursts of 100, each read before the next: a slow receiver (a VM without KVM)
        # drops frames from a longer burst at its backlog, which says nothing of the group.
        placed: dict[int, str] = {}
        for start in range(flows.start, flows.stop, 100):
            burst = range(start, min(start + 100, flows.stop))
            lab.send(*(udp6("fd00:96::1", sport=port) for port in burst))
            frames = lab.received(count=len(burst), timeout=5.0)
            placed.update((f[UDP].sport, f[IPv6].dst) for f in frames)
        return placed

    first = placement()
    assert len(first) >= 0.98 * len(flows)
    spread = collections.Counter(first.values())
    total = sum(weights.values())
    for sid, weight in weights.items():
        share = spread[sid] / len(first)
        # Each backend's share is within 10 points of its weight's share (25/50/25 %).
        assert abs(share - weight / total) <= 0.10, (sid, spread)

    lab.program(
        policies=[SrPolicy("fcbb:bb00::1", (sl(a), sl(c)))],
        steerings=[Steering("fd00:96::1/128", "fcbb:bb00::1")],
    )
    second = placement()
    moved = [p for p, sid in first.items() if sid != b and p in second and second[p] != sid]
    assert moved == []  # removing b moved only b's flows
    assert set(second.values()) == {a, c}
    # Group statistics (NHA_OP_FLAG_DUMP_STATS, newer than 6.1) start again when the group is
    # replaced (a new group inside); a kernel without them has no policy counter at all.
    policy = ("policy", ipaddress.IPv6Address("fcbb:bb00::1"))
    if lab.backend.features.group_stats:
        assert lab.backend.counters()[policy].packets >= len(second)
    else:
        assert policy not in lab.backend.counters()


# --- sessionAffinity ClientIP (kernel_affinity) ------------------------------------------


@pytest.mark.kernel_srv6(vm=True)
def test_affinity_keeps_a_client_on_one_list_and_survives_a_restart(
    lab: Lab, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b, c = "fcbb:bb00:2:0:1::a", "fcbb:bb00:3:0:1::b", "fcbb:bb00:4:0:1::c"
    node_port = "2001:db8:1::1"  # the node's own address on in0: a NodePort, UDP 80
    lists = (sl(a), sl(b, weight=2), sl(c))

    def config(affinity: int) -> dict[str, Any]:
        return {
            "policies": [SrPolicy("fcbb:bb00::1", lists, affinity=affinity)],
            "steerings": [
                Steering("fd00:96::1/128", "fcbb:bb00::1"),
                Steering(f"{node_port}/128", "fcbb:bb00::1", table=0x5C000001),
            ],
            "rules": [Rule(f"{node_port}/128", 0x5C000001, "UDP", 80)],
        }

    def placement(destination: str, source: str = CLIENT6) -> set[str]:
        lab.send(*(udp6(destination, sport=port, src=source) for port in range(30000, 30060)))
        frames = lab.received(count=60, timeout=5.0)
        assert len(frames) >= 55
        return {f[IPv6].dst for f in frames}

    lab.program(**config(30))
    assert lab.backend.capabilities.affinity
    # 60 flows of one client: one list, the same for the ClusterIP and the NodePort (one
    # choice per client per policy); other clients are spread over the lists.
    (chosen,) = placement("fd00:96::1")
    got = placement(node_port)
    assert got == {chosen}, (
        lab.node.exec("nft", "list", "ruleset").stdout
        + lab.node.ip("-6", "rule", "show")
        + lab.node.ip("-6", "route", "show", "table", "all")
    )
    others = set().union(*(placement("fd00:96::1", f"2001:db8:1::{n:x}") for n in range(3, 23)))
    assert len(others) >= 2
    assert "fwmark" in lab.node.ip("-6", "rule", "show")

    # A restarted agent reads the affinity back (its timeout from the nft set) and keeps
    # the clients it remembered.
    with KernelBackend(lab.node.name) as again:
        from srv6ctl.dataplane.reconcile import plan

        wanted = NodeConfig(encap_source=NODE_SOURCE, routes=frozenset(BASE_ROUTES), **config(30))
        assert again.dump() == wanted
        assert plan(wanted, again.dump()) == []
    assert placement("fd00:96::1") == {chosen}

    # Incremental: a plan that steers into the policy recomputes what the table holds (and
    # the new address keeps the client's list); one that touches nothing of the affinity
    # leaves it be (the computation walks every route slot and rule of the node). Planned
    # from the last config, as the agent's deltas are: a dump (a resync) forgets the
    # table's content, and the plan after it recomputes once.
    calls: list[int] = []
    real = kernel_affinity.stickies
    monkeypatch.setattr(kernel_affinity, "stickies", lambda *args: calls.append(1) or real(*args))
    held = lab.program(**config(30))
    steered = dataclasses.replace(
        held, steerings=held.steerings | {Steering("fd00:96::3/128", "fcbb:bb00::1")}
    )
    lab.backend.apply(plan(steered, held))
    assert calls
    assert placement("fd00:96::3") == {chosen}
    other = SrPolicy("fcbb:bb00::2", (sl(a),))
    unrelated = dataclasses.replace(
        steered,
        policies=steered.policies | {other},
        steerings=steered.steerings | {Steering("fd00:96::2/128", other.bsid)},
    )
    calls.clear()
    lab.backend.apply(plan(unrelated, steered))
    assert calls == []
    assert placement("fd00:96::3") == {chosen}

    # Without affinity one client's flows spread again, and nothing of it is left.
    lab.program(**config(0))
    assert len(placement("fd00:96::1")) >= 2
    assert "fwmark" not in lab.node.ip("-6", "rule", "show")
    assert "srv6ctl_affinity" not in lab.node.exec("nft", "list", "tables").stdout
