"""verify's judging and plumbing on crafted data, and the lab's pod server in one namespace."""

from __future__ import annotations

import ipaddress
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from scapy.layers.inet import UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrSegmentRouting
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from srv6ctl.dataplane.model import (
    End,
    EndDT6,
    EndDX4,
    EndDX6,
    NodeConfig,
    PodAttachment,
    Route,
    RouteKind,
    SegmentList,
    SrPolicy,
    Steering,
    Translation,
)
from srv6ctl.observe.agentview import config_from_json
from srv6ctl.serialize import to_jsonable
from srv6ctl.verify import connectivity
from srv6ctl.verify.conformance import _judge_encap, hop_delta, split
from srv6ctl.verify.flows import tcp_flows, udp_flows
from srv6ctl.verify.packets import _is_icmp
from srv6ctl.verify.report import Report
from tests.support.netns import Netns

SOURCE = ipaddress.IPv6Address("fd00:ff::1")
MAC = "02:00:00:00:00:01"  # explicit: scapy would otherwise resolve one on the host
INNER = bytes(
    IPv6(src="fd00:10:0:1::2", dst="fd00:96::10", hlim=63) / UDP(sport=1, dport=2) / Raw(b"m")
)


def frame(outer: IPv6, *layers: object) -> bytes:
    packet = Ether(src=MAC, dst=MAC) / outer
    for layer in layers:
        packet = packet / layer  # type: ignore[operator]
    return bytes(packet / IPv6(INNER))


def policy(mode: str, *segments: str) -> SrPolicy:
    return SrPolicy("fcbb:bb00::6000:1", (SegmentList(segments),), mode=mode)


def test_reduced_encapsulation_of_one_sid_has_no_srh() -> None:
    data = frame(IPv6(src=str(SOURCE), dst="fcbb:bb00:2::1:5", nh=41))
    ok, detail = _judge_encap(data, policy("encap.red", "fcbb:bb00:2::1:5"), SOURCE, INNER)
    assert ok, detail
    assert "no SRH" in detail


def test_encapsulation_lists_segments_in_reverse_with_segments_left_at_the_first() -> None:
    segments = ["fcbb:bb00:2::1", "fcbb:bb00:3::1:5"]
    srh = IPv6ExtHdrSegmentRouting(addresses=list(reversed(segments)), segleft=1, nh=41)
    data = frame(IPv6(src=str(SOURCE), dst=segments[0]), srh)
    ok, detail = _judge_encap(data, policy("encap", *segments), SOURCE, INNER)
    assert ok, detail
    wrong_order = IPv6ExtHdrSegmentRouting(addresses=segments, segleft=1, nh=41)
    data = frame(IPv6(src=str(SOURCE), dst=segments[0]), wrong_order)
    ok, detail = _judge_encap(data, policy("encap", *segments), SOURCE, INNER)
    assert not ok and "SRH lists" in detail


def test_encapsulation_from_the_wrong_source_or_towards_no_list_fails() -> None:
    data = frame(IPv6(src="fd00:ff::9", dst="fcbb:bb00:2::1:5", nh=41))
    ok, detail = _judge_encap(data, policy("encap.red", "fcbb:bb00:2::1:5"), SOURCE, INNER)
    assert not ok and "outer source" in detail
    data = frame(IPv6(src=str(SOURCE), dst="fcbb:bb00:9::1:5", nh=41))
    ok, detail = _judge_encap(data, policy("encap.red", "fcbb:bb00:2::1:5"), SOURCE, INNER)
    assert not ok and "no list's first SID" in detail


def test_a_changed_inner_packet_fails_and_hops_are_counted() -> None:
    sent = bytes(IPv6(src="fd00::1", dst="fd00::2", hlim=64) / UDP() / Raw(b"abc"))
    forwarded = bytearray(sent)
    forwarded[7] = 63
    assert hop_delta(bytes(forwarded) + b"\0\0pad", sent) == (True, 1)
    forwarded[-1] ^= 1
    assert hop_delta(bytes(forwarded), sent)[0] is False


def test_split_finds_the_srh_and_the_inner_packet() -> None:
    srh = IPv6ExtHdrSegmentRouting(addresses=["fcbb::6", "fcbb::1"], segleft=1, nh=41)
    data = frame(IPv6(src="fd00::1", dst="fcbb::1"), srh)
    outer, found, rest = split(data)
    assert outer[6] == 43 and found is not None and found[3] == 1
    assert rest[: len(INNER)] == INNER


def test_icmp_errors_are_not_mistaken_for_the_packets_they_quote() -> None:
    from scapy.layers.inet6 import ICMPv6DestUnreach

    error = bytes(
        Ether(src=MAC, dst=MAC)
        / IPv6(src="fd00::1", dst="fd00::2")
        / ICMPv6DestUnreach()
        / IPv6(INNER)
    )
    assert _is_icmp(error)
    assert not _is_icmp(frame(IPv6(src="fd00::1", dst="fcbb::1", nh=41)))


def test_agent_config_json_round_trips_into_the_model() -> None:
    config = NodeConfig(
        encap_source="fd00:ff::1",
        pods=[
            PodAttachment(
                interface="s6abc",
                pod="default/web-1",
                netns="/var/run/netns/x",
                addresses=frozenset({ipaddress.ip_interface("fd00:10:0:1::2/128")}),
                service_addresses=frozenset({ipaddress.ip_address("fd00:96::10")}),
                port_maps=frozenset({("TCP", ipaddress.ip_address("fd00:96::10"), 80, 8080)}),
                node_ports=frozenset({("TCP", 6, 30080, 8080)}),
                translations=frozenset(
                    {Translation("TCP", "fd00:96::20", 5432, (("2001:db8::5", 5432),), 60)}
                ),
            )
        ],
        local_sids=[
            End("fcbb:bb00:1::1"),
            EndDT6("fcbb:bb00:1::6"),
            EndDX6("fcbb:bb00:1::1:2", nexthop="fd00:10:0:1::2", interface="s6abc"),
            EndDX4("fcbb:bb00:1::4:2", nexthop="10.128.1.2", interface="s6abc"),
        ],
        policies=[
            SrPolicy(
                "fcbb:bb00::6000:1",
                (SegmentList(("fcbb:bb00:1::1:2",), 2), SegmentList(("fcbb:bb00:2::1:2",))),
                mode="encap.red",
                owner="svc/default/web/v6",
            )
        ],
        steerings=[Steering("fd00:96::10/128", "fcbb:bb00::6000:1")],
        routes=[
            Route("fd00:96::11/128", kind=RouteKind.PROHIBIT),
            Route("fcbb:bb00:2::/48", via="fd00:ff::2"),
        ],
    )
    wire = json.loads(json.dumps(to_jsonable(config)))
    again = config_from_json(wire)
    assert again == config
    (policy_again,) = again.policies
    assert policy_again.owner == "svc/default/web/v6"  # not compared, but kept


def test_report_json_is_one_line_and_fails_on_any_failed_check() -> None:
    report = Report()
    report.add("g", "fine", True, "ok")
    report.skip("g", "elsewhere", "needs the lab")
    report.figures["withdraw_convergence_ms"] = 412
    line = report.as_json()
    assert "\n" not in line
    data = json.loads(line)
    assert data["figures"] == {"withdraw_convergence_ms": 412}
    assert [c["name"] for c in data["checks"]] == ["fine", "elsewhere"]
    assert {"name", "pass", "detail"} <= set(data["checks"][0])
    assert report.passed
    report.crashed("convergence", RuntimeError("boom"))
    assert not report.passed
    assert json.loads(report.as_json())["checks"][-1]["detail"] == "RuntimeError: boom"


@pytest.mark.parametrize("flows, share", [(240, 1 / 3), (300, 0.5), (200, 0.25)])
def test_spread_tolerance_is_about_four_sigmas(flows: int, share: float) -> None:
    tolerance = connectivity._spread_tolerance(flows, share)
    sigma = (flows * share * (1 - share)) ** 0.5
    assert 4 * sigma < tolerance < 4 * sigma + flows / 100
    # A backend that got nothing is always out of tolerance at these sizes.
    assert flows * share > tolerance


# --- the lab's pod server, in a namespace of its own ------------------------------------------


@pytest.fixture
def podserver(netns: Netns) -> Iterator[Netns]:
    netns.ip("addr", "add", "fd00:ff::1/64", "dev", "lo", "nodad")
    netns.ip("addr", "add", "fd00:96::10/128", "dev", "lo", "nodad")  # a ClusterIP
    netns.ip("addr", "add", "10.96.0.10/32", "dev", "lo")
    command = ["ip", "netns", "exec", netns.name, sys.executable, "-m", "srv6ctl.lab.podserver"]
    server = subprocess.Popen(
        [*command, "--pod", "web-9", "--http", "18080", "--echo", "18081"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        assert "listening" in server.stdout.readline()
        yield netns
    finally:
        server.kill()
        server.wait()


def test_podserver_answers_who_it_is_and_whom_it_saw(podserver: Netns) -> None:
    path = f"/var/run/netns/{podserver.name}"
    (answer,) = tcp_flows(path, "fd00:96::10", 18080)
    assert answer.pod == "web-9"  # type: ignore[union-attr]
    assert answer.local == "fd00:96::10" and answer.local_port == 18080  # type: ignore[union-attr]
    assert answer.peer == "fd00:96::10"  # type: ignore[union-attr]
    # UDP answers come from the address asked, even though the socket is a wildcard one
    # and the namespace has a "better" source address (fd00:ff::1).
    for address in ("fd00:96::10", "fd00:ff::1", "10.96.0.10"):
        (answer,) = udp_flows(path, address, 18081)
        assert answer.reply_from == (address, 18081), address  # type: ignore[union-attr]
        assert answer.local == address  # type: ignore[union-attr]


def test_podserver_echo_port_keeps_the_connection(podserver: Netns) -> None:
    from srv6ctl.observe.netinfo import sockets_in

    (sock,) = sockets_in(
        f"/var/run/netns/{podserver.name}",
        lambda: socket.socket(socket.AF_INET6, socket.SOCK_STREAM),
    )
    with sock:
        sock.settimeout(3)
        sock.connect(("fd00:96::10", 18081))
        reader = sock.makefile("rb")
        first = json.loads(reader.readline())
        for _ in range(3):
            sock.sendall(b"again\n")
            assert json.loads(reader.readline())["peer_port"] == first["peer_port"]
        time.sleep(0.05)
