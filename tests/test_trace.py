"""`srv6ctl trace` parts: name resolution, the rendering, and RTM_GETROUTE on a real kernel.

The whole command, against a running lab and checked against real connections, is in
tests/test_lab.py.
"""

from __future__ import annotations

import ipaddress
import socket

import pytest

from ipam6.plan import AddressPlan
from srv6ctl.trace import Hop, Trace, render, resolve_destination, resolve_source, route_get
from srv6ctl.verify.topology import Injector, PodInfo, ServiceInfo, Topology
from tests.support.netns import Netns

PLAN = AddressPlan.from_mapping({"podCIDRv6": "fd00:10::/48", "serviceCIDRv6": "fd00:96::/108"})


def topology() -> Topology:
    pods = [
        PodInfo(
            name="default/client-1",
            node="n1",
            netns="/var/run/netns/x",
            host_ifname="s6aaa",
            ipv6=ipaddress.IPv6Address("fd00:10:0:1::2"),
            ipv4=None,
            role="client",
        ),
        PodInfo(
            name="default/web-1",
            node="n2",
            netns="/var/run/netns/y",
            host_ifname="s6bbb",
            ipv6=ipaddress.IPv6Address("fd00:10:0:2::2"),
            ipv4=None,
            role="backend",
            service="web",
        ),
    ]
    services = [
        ServiceInfo("default/web", ipaddress.IPv6Address("fd00:96::10"), None, ["default/web-1"])
    ]
    injector = Injector(None, "eth0", "02:00:00:00:00:01", ipaddress.IPv6Address("fd00::1"), {})
    return Topology(PLAN, [], pods, services, injector, "lab")


def test_sources_and_destinations_resolve_by_name_or_address() -> None:
    topo = topology()
    assert resolve_source(topo, "client-1").name == "default/client-1"
    assert resolve_source(topo, "fd00:10:0:1::2").name == "default/client-1"
    with pytest.raises(ValueError, match="no pod 'nobody'"):
        resolve_source(topo, "nobody")
    for text in ("web", "default/web", "fd00:96::10"):
        address, label, service = resolve_destination(topo, text, 6)
        assert str(address) == "fd00:96::10" and label == "service default/web"
        assert service is topo.services[0]
    address, label, service = resolve_destination(topo, "web-1", 6)
    assert str(address) == "fd00:10:0:2::2" and label == "pod web-1" and service is None
    with pytest.raises(ValueError, match="no IPv4 ClusterIP"):
        resolve_destination(topo, "web", 4)


def test_render_says_policy_candidates_choice_sids_and_pod() -> None:
    result = Trace(
        flow={
            "src": "fd00:10:0:1::2",
            "dst": "fd00:96::10",
            "proto": "tcp",
            "sport": 40000,
            "dport": 80,
            "to": "service default/web",
        },
        source={
            "pod": "default/client-1",
            "node": "n1",
            "node_id": 1,
            "locator": "fcbb:bb00:1::/48",
            "interface": "s6aaa",
        },
        match={
            "kind": "steering",
            "prefix": "fd00:96::10/128",
            "bsid": "fcbb:bb00::6000:1",
            "policy": "svc/default/web/v6",
            "mode": "encap.red",
        },
        candidates=[
            {
                "segments": ["fcbb:bb00:2::1:2"],
                "weight": 1,
                "share": 0.5,
                "ends_at": "default/web-1",
                "buckets": "64/128",
            },
            {"segments": ["fcbb:bb00:3::1:2"], "weight": 1, "share": 0.5, "ends_at": None},
        ],
        kernel={"route": "unicast", "segments": ["fcbb:bb00:3::1:2"], "hash_policy": "3"},
        probe={"seen": "leaving n1 on eth0", "outer_dst": "fcbb:bb00:2::1:2", "ms": 0.5},
        chosen=["fcbb:bb00:2::1:2"],
        hops=[Hop("fcbb:bb00:2::1:2", "n2", "End.DX6", "default/web-1", "nh fd00:10:0:2::2")],
        final={
            "pod": "default/web-1",
            "node": "n2",
            "address_seen": "fd00:96::10",
            "port_seen": 8080,
            "rewritten": True,
        },
        notes=["the route lookup and the data path disagree"],
    )
    text = render(result)
    assert "policy fcbb:bb00::6000:1 (svc/default/web/v6)" in text
    assert "* [fcbb:bb00:2::1:2] weight 1 (50%, 64/128 buckets) → default/web-1" in text
    assert "outer destination fcbb:bb00:2::1:2" in text
    assert "fcbb:bb00:2::1:2: End.DX6 on n2 (nh fd00:10:0:2::2) → pod default/web-1" in text
    assert "port 80→8080 rewritten in the pod" in text
    assert "disagree" in text


@pytest.mark.kernel_srv6
def test_route_get_asks_the_kernel_with_the_five_tuple(netns: Netns) -> None:
    netns.ip("link", "add", "in0", "type", "bridge")
    netns.ip("link", "set", "in0", "up")
    netns.ip("addr", "add", "fd00:ff::1/64", "dev", "in0", "nodad")
    netns.exec("sysctl", "-q", "-w", "net.ipv6.conf.all.forwarding=1")
    netns.ip("-6", "route", "add", "fcbb::/16", "via", "fd00:ff::2", "dev", "in0")
    segs = "fcbb:bb00:2::1,fcbb:bb00:3::1:5"
    encap = ("encap", "seg6", "mode", "encap", "segs", segs)
    netns.ip("-6", "nexthop", "add", "id", "7", *encap, "dev", "lo")
    netns.ip("-6", "route", "add", "fd00:96::10/128", "nhid", "7")
    netns.ip("-6", "route", "add", "prohibit", "fd00:96::11/128")
    path = f"/var/run/netns/{netns.name}"
    from srv6ctl.dataplane.nsenter import run_in_netns

    iif = run_in_netns(path, lambda: socket.if_nametoindex("in0"))
    src = ipaddress.IPv6Address("fd00:10:0:1::2")
    route = route_get(path, ipaddress.IPv6Address("fd00:96::10"), src, iif, 6, 40000, 80)
    assert route.kind == "unicast"
    assert [str(s) for s in route.segments] == ["fcbb:bb00:2::1", "fcbb:bb00:3::1:5"]
    assert route.mode == 1  # SEG6_IPTUN_MODE_ENCAP
    rejected = route_get(path, ipaddress.IPv6Address("fd00:96::11"), src, iif, 6, 40000, 80)
    assert rejected.kind.startswith("error: ")
