"""The SRv6 behaviours of the VPP backend on the wire, through a real VPP 25.10.

Each test programs one behaviour with `VppBackend` (as reconcile would: a plan against a
dump), sends crafted frames with scapy from the peer (behind VPP's uplink) or from the pod
(behind its af_packet pod port), and sniffs the far side: End.X forwards to its neighbour
with Segments Left decremented and the destination updated; End.T looks the next segment
up in its own table; End.DX4 and End.DT4 deliver the inner IPv4 packet to the pod; an IPv4
ClusterIP steered into a policy is H.Encaps'd (IPv4-in-SRv6); with sessionAffinity every
flow of one client leaves along one segment list. VPP's per-SID counters
(`sr_localsids_with_packet_stats_dump`) and per-policy counters (the stats segment) must
count what went through. H.Encaps of IPv6, End.DX6 and End.DT6 are in
tests/test_vpp_integration.py.

The lab (tests/support/vpp.py) needs `SRV6CTL_VPP_BIN` (or a running VPP's socket and
namespace), root and `SRV6CTL_VPP_DATAPATH=1`; otherwise everything here is skipped with
the reason.
"""

from __future__ import annotations

import os
import re
import secrets
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from srv6ctl.dataplane import vpp_interface_codec as if_codec
from srv6ctl.dataplane.model import (
    MAIN_TABLE,
    MEMIF,
    Change,
    EncapMode,
    EndDT4,
    EndDX4,
    EndDX6,
    EndT,
    EndX,
    IPv6Address,
    LocalSid,
    NodeConfig,
    Op,
    PodAttachment,
    Route,
    SegmentList,
    SrPolicy,
    memif_socket_path,
)
from srv6ctl.dataplane.reconcile import plan
from srv6ctl.dataplane.vpp import VppBackend
from tests.support.netns import run
from tests.support.vpp import (
    BIN_ENV,
    BSID,
    CLUSTER_IP,
    CLUSTER_IP4,
    DATAPATH_ENV,
    MARK,
    NODE,
    PEER,
    POD4,
    POD6,
    SOURCE,
    A,
    B,
    C,
    D,
    Lab,
    Target,
    VppProcess,
    base_config,
    marked,
    reconcile,
    require_netns,
    warm_up,
)

CLIENT6 = "2001:db8:99::7"
CLIENT4 = "192.0.2.7"
FINAL = IPv6Address("2001:db8:77::5")  # the next segment after End.X / End.T: no route in main


def _program(lab: Lab, *sids: LocalSid, routes: frozenset[Route] = frozenset()) -> None:
    base = base_config()
    reconcile(
        lab.backend,
        base_config(local_sids=base.local_sids | set(sids), routes=base.routes | routes),
    )
    warm_up(lab)


def _sid_packets(lab: Lab, sid: IPv6Address) -> int:
    return lab.backend.counters()[("localsid", sid)].packets


def _from_peer(lab: Lab, outer: Any, inner: Any, count: int, sport: int) -> list[Any]:
    """`count` frames outer/inner/UDP/MARK from the peer; what the pod receives."""
    from scapy.layers.inet import UDP
    from scapy.layers.l2 import Ether
    from scapy.packet import Raw

    from tests.support.netns import PacketPort

    frames = [
        Ether(src=lab.peer_mac, dst=lab.vpp_uplink_mac)
        / outer
        / inner
        / UDP(sport=sport + n, dport=80)
        / Raw(MARK)
        for n in range(count)
    ]
    with PacketPort(lab.peer, "p0") as peer, PacketPort(lab.pod.name, "eth0") as pod:
        pod.drain()
        peer.send(frames)
        got = pod.receive(marked, count=count, timeout=5)
    if len(got) != count:
        print(lab.backend.cli("show errors"))
        print(lab.backend.cli("show sr localsids"))
    return got


def _srh(sid: IPv6Address) -> Any:
    """An IPv6 header to `sid` with an SRH whose next (and last) segment is FINAL."""
    from scapy.layers.inet6 import IPv6, IPv6ExtHdrSegmentRouting

    return IPv6(src=str(PEER), dst=str(sid), hlim=64) / IPv6ExtHdrSegmentRouting(
        addresses=[str(FINAL), str(sid)], segleft=1, lastentry=1
    )


def _assert_advanced(frame: Any, lab: Lab, sid: IPv6Address) -> None:
    """The SRH endpoint processing of RFC 8754 §4.3.1.1, and the payload untouched."""
    from scapy.layers.inet import UDP
    from scapy.layers.inet6 import IPv6, IPv6ExtHdrSegmentRouting

    outer = frame[IPv6]
    srh = frame[IPv6ExtHdrSegmentRouting]
    assert frame.dst == lab.pod_mac  # to the neighbour it names, not anywhere else
    assert outer.src == str(PEER) and outer.dst == str(FINAL)
    assert outer.hlim == 63
    assert srh.segleft == 0 and [str(IPv6Address(a)) for a in srh.addresses] == [
        str(FINAL),
        str(sid),
    ]
    inner = srh.payload
    assert isinstance(inner, IPv6)
    assert (inner.src, inner.dst, inner.hlim) == (CLIENT6, str(POD6), 64)
    assert bytes(inner[UDP].payload) == MARK


def test_end_x_forwards_to_its_neighbour_with_the_next_segment(lab: Lab) -> None:
    from scapy.layers.inet6 import IPv6

    sid = IPv6Address(f"{NODE}5")
    _program(lab, EndX(sid, nexthop=POD6, interface=lab.pod.host_interface))
    before = _sid_packets(lab, sid)
    inner = IPv6(src=CLIENT6, dst=str(POD6), hlim=64)
    got = _from_peer(lab, _srh(sid), inner, count=10, sport=8000)
    assert len(got) == 10
    for frame in got:
        _assert_advanced(frame, lab, sid)
    assert _sid_packets(lab, sid) - before >= 10


def test_end_t_looks_the_next_segment_up_in_its_table(lab: Lab) -> None:
    from scapy.layers.inet6 import IPv6

    sid = IPv6Address(f"{NODE}8")
    # FINAL is routed only in table 10 (to the pod, by its link-local address); the main
    # table has no route for it, so only a lookup in table 10 reaches the pod.
    pod_link_local = _link_local(lab.pod_mac)
    route = Route(f"{FINAL}/128", via=pod_link_local, interface=lab.pod.host_interface, table=10)
    _program(lab, EndT(sid, table=10), routes=frozenset({route}))
    assert route in lab.backend.dump().routes
    inner = IPv6(src=CLIENT6, dst=str(POD6), hlim=64)
    # The first packet makes VPP resolve the pod's link-local address (neighbour discovery).
    _from_peer(lab, _srh(sid), inner, count=1, sport=8900)
    before = _sid_packets(lab, sid)
    got = _from_peer(lab, _srh(sid), inner, count=10, sport=9000)
    assert len(got) == 10
    for frame in got:
        _assert_advanced(frame, lab, sid)
    assert _sid_packets(lab, sid) - before >= 10
    # The same SID looking up the main table: FINAL has no route there, nothing arrives.
    _program(lab, EndT(sid, table=MAIN_TABLE), routes=frozenset({route}))
    assert _from_peer(lab, _srh(sid), inner, count=3, sport=9100) == []


def _link_local(mac: str) -> IPv6Address:
    """The EUI-64 link-local address the kernel gives an interface with `mac`."""
    octets = [int(b, 16) for b in mac.split(":")]
    octets[0] ^= 0x02
    eui = [*octets[:3], 0xFF, 0xFE, *octets[3:]]
    return IPv6Address(b"\xfe\x80" + bytes(6) + bytes(eui))


def _assert_inner4(frame: Any, lab: Lab) -> None:
    from scapy.layers.inet import IP, UDP
    from scapy.layers.inet6 import IPv6

    assert IPv6 not in frame  # decapsulated
    assert frame.dst == lab.pod_mac and frame.type == 0x0800
    packet = frame[IP]
    assert (packet.src, packet.dst) == (CLIENT4, str(POD4))
    assert bytes(packet[UDP].payload) == MARK


def test_end_dx4_delivers_the_inner_ipv4_packet_to_the_pod(lab: Lab) -> None:
    from scapy.layers.inet import IP
    from scapy.layers.inet6 import IPv6

    sid = IPv6Address(f"{NODE}1:4")
    _program(lab, EndDX4(sid, nexthop=POD4, interface=lab.pod.host_interface))
    assert EndDX4(sid, nexthop=POD4, interface=lab.pod.host_interface) in (
        lab.backend.dump().local_sids
    )
    before = _sid_packets(lab, sid)
    outer = IPv6(src=str(PEER), dst=str(sid), nh=4)
    got = _from_peer(lab, outer, IP(src=CLIENT4, dst=str(POD4), ttl=64), count=10, sport=5000)
    assert len(got) == 10
    for frame in got:
        _assert_inner4(frame, lab)
    assert _sid_packets(lab, sid) - before >= 10


def test_end_dt4_looks_the_inner_ipv4_packet_up_and_reaches_the_pod(lab: Lab) -> None:
    from scapy.layers.inet import IP
    from scapy.layers.inet6 import IPv6

    sid = IPv6Address(f"{NODE}44")
    _program(lab, EndDT4(sid, table=MAIN_TABLE))  # the pod table: the pods' host routes
    before = _sid_packets(lab, sid)
    outer = IPv6(src=str(PEER), dst=str(sid), nh=4)
    got = _from_peer(lab, outer, IP(src=CLIENT4, dst=str(POD4), ttl=64), count=10, sport=5100)
    assert len(got) == 10
    for frame in got:
        _assert_inner4(frame, lab)
        assert frame["IP"].ttl == 63  # a routed hop: looked up, not cross-connected
    assert _sid_packets(lab, sid) - before >= 10


def test_an_ipv4_cluster_ip_steered_into_a_policy_is_encapsulated(lab: Lab) -> None:
    from scapy.layers.inet import IP, UDP
    from scapy.layers.inet6 import IPv6, IPv6ExtHdrSegmentRouting
    from scapy.layers.l2 import Ether
    from scapy.packet import Raw

    from tests.support.netns import PacketPort

    reconcile(lab.backend, base_config())
    warm_up(lab)
    service = CLUSTER_IP4.split("/")[0]
    flows = 100
    sent = [
        IP(src=str(POD4), dst=service, ttl=64) / UDP(sport=20000 + n, dport=80) / Raw(MARK)
        for n in range(flows)
    ]
    frames = [Ether(src=lab.pod_mac, dst=lab.vpp_pod_mac) / packet for packet in sent]
    before = lab.backend.counters().get(("policy", BSID))
    with PacketPort(lab.peer, "p0") as peer, PacketPort(lab.pod.name, "eth0") as pod:
        peer.drain()
        pod.send(frames)
        got = peer.receive(marked, count=flows, timeout=5)
    assert len(got) >= flows * 0.95, f"{len(got)} of {flows} came out"
    segments = set()
    for frame in got:
        outer = frame[IPv6]
        assert outer.src == str(SOURCE)
        assert outer.nh == 4, "IPv4-in-IPv6, one SID: H.Encaps.Red, no SRH"
        assert IPv6ExtHdrSegmentRouting not in frame
        inner = outer.payload
        assert isinstance(inner, IP)
        assert (inner.src, inner.dst) == (str(POD4), service)
        assert bytes(inner[UDP].payload) == MARK
        segments.add(outer.dst)
    assert segments <= {str(A), str(B)} and segments
    counted = lab.backend.counters()[("policy", BSID)].packets
    assert counted - (before.packets if before else 0) >= len(got)


def _lists_by_client(lab: Lab, packets: list[Any]) -> dict[str, set[str]]:
    """Send `packets` (IPv6 or IPv4, each a flow of its own) from the pod to the service;
    the segment lists (outer destinations) each client's flows left with, by client."""
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import Ether

    from tests.support.netns import PacketPort

    frames = [Ether(src=lab.pod_mac, dst=lab.vpp_pod_mac) / packet for packet in packets]
    with PacketPort(lab.peer, "p0") as peer, PacketPort(lab.pod.name, "eth0") as pod:
        peer.drain()
        pod.send(frames)
        got = peer.receive(marked, count=len(frames), timeout=5)
    assert len(got) >= len(frames) * 0.95, f"{len(got)} of {len(frames)} came out"
    out: dict[str, set[str]] = {}
    for frame in got:
        outer = frame[IPv6]
        out.setdefault(outer.payload.src, set()).add(outer.dst)
    return out


def test_affinity_keeps_every_flow_of_a_client_on_one_segment_list(lab: Lab) -> None:
    """sessionAffinity ClientIP on the wire: many flows (source ports) of one client to a
    ClusterIP leave along one list of four, several clients along several; without
    affinity one client's flows spread. IPv6 and IPv4 (one hash config for both)."""
    from scapy.layers.inet import IP, UDP
    from scapy.layers.inet6 import IPv6
    from scapy.packet import Raw

    service6, service4 = CLUSTER_IP.split("/")[0], CLUSTER_IP4.split("/")[0]

    def flows6(clients: list[str], per_client: int) -> list[Any]:
        return [
            IPv6(src=client, dst=service6) / UDP(sport=30000 + n, dport=80) / Raw(MARK)
            for client in clients
            for n in range(per_client)
        ]

    def flows4(clients: list[str], per_client: int) -> list[Any]:
        return [
            IP(src=client, dst=service4, ttl=64) / UDP(sport=30000 + n, dport=80) / Raw(MARK)
            for client in clients
            for n in range(per_client)
        ]

    lists = tuple(SegmentList((segment,)) for segment in (A, B, C, D))
    plain = SrPolicy(BSID, lists, mode=EncapMode.ENCAP_RED)
    clients6 = [str(POD6), *(f"fd00:10:0:1::{n:x}" for n in range(0x100, 0x11F))]
    clients4 = [str(POD4), *(f"10.128.1.{n}" for n in range(100, 131))]

    reconcile(lab.backend, base_config(policies=frozenset({plain})))
    warm_up(lab)
    spread = _lists_by_client(lab, flows6([str(POD6)], 64))
    assert len(spread[str(POD6)]) >= 3, f"per-flow hashing spreads one client: {spread}"
    spread = _lists_by_client(lab, flows4([str(POD4)], 64))
    assert len(spread[str(POD4)]) >= 3, f"per-flow hashing spreads one client: {spread}"

    # Affinity on: the policy is re-created in the affinity table, still steered into.
    affine = replace(plain, affinity=10800)
    reconcile(lab.backend, lab.backend.as_held(base_config(policies=frozenset({affine}))))
    for one, many in [(flows6, clients6), (flows4, clients4)]:
        single = _lists_by_client(lab, one([many[0]], 64))
        assert len(single[many[0]]) == 1, f"one client, one list: {single}"
        several = _lists_by_client(lab, one(many, 4))
        assert set(several) == set(many)
        assert all(len(held) == 1 for held in several.values()), several
        used = set().union(*several.values())
        assert len(used) >= 3, f"32 clients over 4 lists used {used}"
    assert used <= {str(segment) for segment in (A, B, C, D)}


# --- memif pods (CNFs) ------------------------------------------------------------------


@pytest.fixture
def memif_pod(vpp: Target, tmp_path: Path) -> PodAttachment:
    """A CNF pod whose port is a memif on a socket of its own (under a temp dir)."""
    require_netns(vpp)
    return PodAttachment(
        interface=f"s6m{secrets.token_hex(4)}",
        pod="default/cnf-0",
        netns="",
        addresses=frozenset({f"{POD6}/128", f"{POD4}/32"}),
        interface_type=MEMIF,
        memif_socket=memif_socket_path(f"uid-{secrets.token_hex(4)}", str(tmp_path)),
    )


def _memif_details(backend: VppBackend, sw_if_index: int) -> Any:
    (details,) = [d for d in backend.channel.dump("memif_dump") if d.sw_if_index == sw_if_index]
    return details


def test_a_memif_pod_port_is_created_ensured_without_writes_and_deleted(
    vpp: Target, backend: VppBackend, memif_pod: PodAttachment
) -> None:
    backend.apply([Change(Op.ADD, new=memif_pod)])
    port = backend.pod_ports()[memif_pod.interface]
    assert port.dev_type == "memif" and port.up
    details = _memif_details(backend, port.sw_if_index)
    assert (int(details.role), int(details.mode)) == (
        if_codec.MEMIF_ROLE_MASTER,
        if_codec.MEMIF_MODE_IP,
    )
    sockets = {
        int(d.socket_id): d.socket_filename
        for d in backend.channel.dump("memif_socket_filename_dump")
    }
    assert sockets[int(details.socket_id)] == memif_pod.memif_socket
    assert Path(memif_pod.memif_socket).is_socket()  # VPP listens: the CNF connects here
    # The pod's End.DX6 names its port like any pod's; host routes go through the memif.
    sid = EndDX6(f"{NODE}1:3", nexthop=POD6, interface=memif_pod.interface)
    desired = NodeConfig(local_sids=frozenset({sid}))
    reconcile(backend, desired)
    assert backend.dump().local_sids == {sid} and not backend.dump().routes
    # An agent restart (a new backend ensuring the same pod): nothing to write.
    with vpp.backend() as restarted:
        restarted.apply([Change(Op.ADD, new=memif_pod)])
        assert restarted.writes == 0
        assert plan(desired, restarted.dump()) == []
    # The same pod without its annotation: the memif becomes the usual port, and back.
    reconcile(backend, NodeConfig())
    backend.apply([Change(Op.DELETE, old=memif_pod)])
    assert memif_pod.interface not in backend.pod_ports()
    assert not backend.channel.dump("memif_dump")
    left = [d.socket_filename for d in backend.channel.dump("memif_socket_filename_dump")]
    assert memif_pod.memif_socket not in left
    assert not Path(memif_pod.memif_socket).parent.exists()  # the pod's directory went too


@pytest.fixture
def cnf(vpp: Target) -> Iterator[VppBackend]:
    """A second VPP, the CNF inside the pod (its own namespace: memif needs none shared)."""
    if vpp.process is None:
        pytest.skip(f"a CNF VPP needs the VPP binary ({BIN_ENV})")
    if os.environ.get(DATAPATH_ENV) != "1":
        pytest.skip(f"packets through VPP need {DATAPATH_ENV}=1")
    netns = f"s6t-{secrets.token_hex(5)}"
    run("ip", "netns", "add", netns)
    process = VppProcess(vpp.process.binary, netns)
    try:
        process.start()
        with VppBackend(process.api_socket, client_name="srv6ctl-test-cnf") as backend:
            yield backend
    finally:
        process.cleanup()
        run("ip", "netns", "del", netns, check=False)


def test_a_cnf_connected_by_memif_is_reached_through_vpp(
    vpp: Target, backend: VppBackend, memif_pod: PodAttachment, cnf: VppBackend
) -> None:
    backend.apply([Change(Op.ADD, new=memif_pod)])
    sid = EndDX6(f"{NODE}1:3", nexthop=POD6, interface=memif_pod.interface)
    reconcile(backend, NodeConfig(local_sids=frozenset({sid})))
    # The CNF: a memif slave on the pod's socket, in IP mode, holding the pod's address.
    cnf.cli(f"create memif socket id 1 filename {memif_pod.memif_socket}")
    cnf.cli("create interface memif id 0 socket-id 1 slave mode ip")
    cnf.cli("set interface state memif1/0 up")
    cnf.cli(f"set interface ip address memif1/0 {POD6}/128")
    cnf.cli("ip route add ::/0 via memif1/0")
    port = backend.pod_ports()[memif_pod.interface]

    def connected() -> bool:
        (details,) = backend.channel.dump("sw_interface_dump", sw_if_index=port.sw_if_index)
        return bool(int(details.flags) & 2)  # IF_STATUS_API_FLAG_LINK_UP

    deadline = time.monotonic() + 20
    while not connected():
        assert time.monotonic() < deadline, backend.cli("show memif")
        time.sleep(0.2)
    # VPP reaches the CNF at the pod's address (the host route through the memif), and
    # the CNF answers from it back through the memif to the pods' gateway.
    answer = backend.cli(f"ping {POD6} repeat 5 interval 0.05")
    received = re.search(r"(\d+) received", answer)
    assert received is not None and int(received.group(1)) == 5, answer
