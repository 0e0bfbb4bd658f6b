"""KernelBackend against a real kernel: apply, dump back, restart, repair, ownership.

Packets are in test_kernel_packets.py; here the state is read back through the backend
and, independently, through iproute2.
"""

from __future__ import annotations

import dataclasses
import errno
import ipaddress
import json
import time
from collections.abc import Iterator

import pytest
from pyroute2.netlink import NETLINK_ROUTE, NLM_F_CREATE, NLM_F_EXCL

from srv6ctl.dataplane import netlink_seg6 as nl
from srv6ctl.dataplane.kernel import (
    NEXTHOP_ID_BASE,
    POLICY_TABLE,
    RTPROT_SRV6CTL,
    ApplyError,
    InvalidObject,
    KernelBackend,
)
from srv6ctl.dataplane.kernel_codec import Codec, Links
from srv6ctl.dataplane.model import (
    Change,
    End,
    EndDT4,
    EndDT6,
    EndDT46,
    EndDX4,
    EndDX6,
    EndT,
    EndX,
    Flavour,
    NodeConfig,
    Op,
    PodAttachment,
    Route,
    RouteKind,
    SegmentList,
    SrPolicy,
    Steering,
)
from srv6ctl.dataplane.netlink_channel import NetlinkChannel, Writes
from srv6ctl.dataplane.reconcile import plan
from tests.support.netns import Netns, NetnsFactory

pytestmark = [pytest.mark.netns, pytest.mark.kernel_srv6(vm=True)]

B1, B2, B3 = "fcbb:bb00::1", "fcbb:bb00::2", "fcbb:bb00::3"
LINKS = Links({"lo": 1})
POD_A, POD_B, POD_C = "fcbb:bb00:2:0:1::1", "fcbb:bb00:3:0:1::1", "fcbb:bb00:4:0:1::1"


def sl(*segments: str, weight: int = 1) -> SegmentList:
    return SegmentList(tuple(ipaddress.IPv6Address(s) for s in segments), weight)


@pytest.fixture
def node(netns_factory: NetnsFactory) -> Netns:
    ns = netns_factory()
    # Without DAD the kernel's own link-local addresses, and the routes it adds for them,
    # are there once a link is up, not a second later in the middle of a test (slower
    # still in a VM without KVM), where they would look like someone else's changes.
    ns.exec("sysctl", "-qw", "net.ipv6.conf.default.accept_dad=0")
    peer = netns_factory()
    netns_factory.veth(ns, "up0", peer, "up1")
    ns.ip("link", "add", "pod0", "type", "veth", "peer", "name", "pod0p")
    ns.ip("link", "set", "pod0", "up")
    ns.ip("link", "set", "pod0p", "up")
    ns.ip("addr", "add", "2001:db8:ffff::1/64", "dev", "up0", "nodad")
    # Carrier reaches addrconf through linkwatch, up to a second later.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        shown = json.loads(ns.ip("-j", "-6", "addr", "show", "scope", "link"))
        linked = {a["ifname"] for a in shown if a.get("addr_info")}
        if {"up0", "pod0", "pod0p"} <= linked:
            break
        time.sleep(0.05)
    return ns


@pytest.fixture
def backend(node: Netns) -> Iterator[KernelBackend]:
    with KernelBackend(node.name) as b:
        yield b


def sync(backend: KernelBackend, desired: NodeConfig) -> list[Change]:
    changes = plan(desired, backend.dump())
    backend.apply(changes)
    return changes


def full_config(backend: KernelBackend) -> NodeConfig:
    """One of everything the kernel here can hold: End with PSP where End has it (not on
    6.1), End.DT4/DT46 where VRF devices exist (through the backend's own VRF)."""
    behaviours = backend.capabilities.behaviours
    optional = [
        sid
        for sid in (
            End("fcbb:bb00:1::2", flavours={Flavour.PSP}),
            EndDT4("fcbb:bb00:1::7"),
            EndDT46("fcbb:bb00:1::8"),
        )
        if sid.behaviour in behaviours
        and sid.flavours <= backend.features.flavours.get(sid.behaviour, frozenset())
    ]
    return NodeConfig(
        encap_source="fcbb:bb00:1::",
        local_sids=[
            *optional,
            End("fcbb:bb00:1::1"),
            EndX("fcbb:bb00:1::3", nexthop="fe80::2", interface="up0"),
            EndT("fcbb:bb00:1::4", table=100),
            EndDT6("fcbb:bb00:1::6", table=254),
            EndDX6("fcbb:bb00:1:0:1::1", nexthop="fd00:10:1::5", interface="pod0"),
            EndDX4("fcbb:bb00:1:0:1::2", nexthop="10.128.1.5", interface="pod0"),
            EndDX6("fcbb:bb00:1:0:1::3"),  # no nexthop, no interface: lookup inner dst
        ],
        policies=[
            SrPolicy(B1, (sl(POD_A), sl(POD_B, weight=3))),
            SrPolicy(B2, (sl(POD_A),)),  # shares POD_A's nexthop with B1
            SrPolicy(B3, (sl("fcbb:bb00:9::1", POD_C),), mode="encap.red"),
        ],
        steerings=[
            Steering("fd00:96::1/128", B1),
            Steering("10.96.0.1/32", B1),  # IPv4-in-SRv6, same group
            Steering("fd00:96::2/128", B2),
            Steering("fd00:96::3/128", B3, table=100),
        ],
        routes=[
            Route("fcbb:bb00::/32", via="2001:db8:ffff::2", interface="up0"),
            Route("fd00:10:1::/64", interface="pod0"),
            Route("10.128.1.0/24", interface="pod0"),
            Route("10.0.0.0/8", via="fe80::2", interface="up0"),  # IPv4 via IPv6 (RTA_VIA)
            Route("fd00:96::9/128", kind=RouteKind.PROHIBIT),
            Route("10.96.0.9/32", kind=RouteKind.UNREACHABLE),
            Route("fd00:96::a/128", kind=RouteKind.BLACKHOLE, table=100),
        ],
    )


def nexthops(ns: Netns) -> list[dict[str, object]]:
    return list(json.loads(ns.ip("-j", "nexthop", "show") or "[]"))


def test_probe_reports_what_this_kernel_does(backend: KernelBackend) -> None:
    caps = backend.capabilities
    assert {"End", "End.X", "End.T", "End.DX6", "End.DX4", "End.DT6"} <= caps.behaviours
    assert caps.resilient_groups and caps.sid_counters
    assert {"encap", "encap.red"} <= caps.encap_modes
    for missing in {"End.DT4", "End.DT46"} - caps.behaviours:
        assert any(n.startswith(missing) and "no VRF device" in n for n in caps.notes)
    assert backend.sysctls.refused == ()


def test_apply_then_dump_gives_back_the_config(backend: KernelBackend, node: Netns) -> None:
    desired = full_config(backend)
    sync(backend, desired)
    assert backend.dump() == desired

    # Independently, through iproute2: one nexthop per distinct segment list (POD_A is
    # shared), one resilient group per policy, everything marked with our protocol.
    ours = [n for n in nexthops(node) if n.get("protocol") == str(RTPROT_SRV6CTL)]
    assert len([n for n in ours if "group" in n]) == 3
    assert len([n for n in ours if "encap" in n]) == 3
    assert all(n.get("type") == "resilient" for n in ours if "group" in n)
    assert all(int(str(n["id"])) >= NEXTHOP_ID_BASE for n in ours)
    v4 = node.ip("route", "show", "10.96.0.1")
    v6 = node.ip("-6", "route", "show", "fd00:96::1")
    assert "nhid" in v4 and v4.split("nhid ")[1].split()[0] == v6.split("nhid ")[1].split()[0]
    assert "prohibit" in node.ip("-6", "route", "show", "fd00:96::9")
    assert "fcbb:bb00:1::" in node.ip("sr", "tunsrc", "show")
    anchors = node.ip("-6", "route", "show", "table", str(POLICY_TABLE))
    assert {line.split()[0] for line in anchors.splitlines() if line[:1].strip()} == {B1, B2, B3}


def test_restart_makes_zero_writes_and_a_deleted_route_comes_back(
    backend: KernelBackend, node: Netns
) -> None:
    desired = full_config(backend)
    sync(backend, desired)

    with KernelBackend(node.name) as restarted:
        assert plan(desired, restarted.dump()) == []
        restarted.apply(plan(desired, restarted.dump()))
        assert restarted.writes == 0

        node.ip("-6", "route", "del", "fd00:96::1/128")
        node.ip("route", "del", "10.128.1.0/24")
        changes = sync(restarted, desired)
        assert sorted((c.op, c.kind) for c in changes) == [
            (Op.ADD, "Route"),
            (Op.ADD, "Steering"),
        ]
        assert restarted.writes == 2
        assert restarted.dump() == desired


@pytest.mark.parametrize(
    "damage",
    ["anchor route", "segment nexthop", "group"],
)
def test_hand_damage_to_a_policy_is_repaired_without_leftovers(
    backend: KernelBackend, node: Netns, damage: str
) -> None:
    desired = NodeConfig(
        policies=[SrPolicy(B1, (sl(POD_A), sl(POD_B, weight=2)))],
        steerings=[Steering("fd00:96::1/128", B1), Steering("10.96.0.1/32", B1)],
    )
    sync(backend, desired)
    group = node.ip("-6", "route", "show", "fd00:96::1").split("nhid ")[1].split()[0]
    if damage == "anchor route":
        node.ip("-6", "route", "del", B1, "table", str(POLICY_TABLE))
    elif damage == "segment nexthop":
        member = next(n for n in nexthops(node) if "encap" in n)
        node.ip("nexthop", "del", "id", str(member["id"]))
    else:
        node.ip("nexthop", "del", "id", group)  # the kernel drops the routes using it too
    assert backend.dump() != desired
    sync(backend, desired)
    assert backend.dump() == desired
    assert len(nexthops(node)) == 3  # two segment lists and one group: no orphans


def test_policy_change_replaces_its_group_in_place(backend: KernelBackend, node: Netns) -> None:
    before = NodeConfig(
        policies=[SrPolicy(B1, (sl(POD_A), sl(POD_B)))],
        steerings=[Steering("fd00:96::1/128", B1), Steering("10.96.0.1/32", B1)],
    )
    sync(backend, before)
    group = node.ip("-6", "route", "show", "fd00:96::1").split("nhid ")[1].split()[0]
    writes = backend.writes_by_type

    after = dataclasses.replace(before, policies=[SrPolicy(B1, (sl(POD_A), sl(POD_C)))])
    changes = sync(backend, after)
    assert [(c.op, c.kind) for c in changes] == [(Op.REPLACE, "SrPolicy")]
    delta = backend.writes_by_type - writes
    # New nexthop for POD_C, the group replaced, POD_B's nexthop deleted; no route write.
    assert delta == {nl.RTM_NEWNEXTHOP: 2, nl.RTM_DELNEXTHOP: 1}
    assert node.ip("-6", "route", "show", "fd00:96::1").split("nhid ")[1].split()[0] == group
    assert backend.dump() == after


def test_shared_nexthop_lives_while_a_policy_uses_it(backend: KernelBackend, node: Netns) -> None:
    both = NodeConfig(policies=[SrPolicy(B1, (sl(POD_A),)), SrPolicy(B2, (sl(POD_A),))])
    sync(backend, both)
    assert len([n for n in nexthops(node) if "encap" in n]) == 1
    sync(backend, NodeConfig(policies=[SrPolicy(B2, (sl(POD_A),))]))
    assert len([n for n in nexthops(node) if "encap" in n]) == 1
    sync(backend, NodeConfig())
    assert nexthops(node) == []


def test_service_losing_its_endpoints_becomes_prohibit(backend: KernelBackend, node: Netns) -> None:
    served = NodeConfig(
        policies=[SrPolicy(B1, (sl(POD_A),))], steerings=[Steering("fd00:96::1/128", B1)]
    )
    sync(backend, served)
    empty = NodeConfig(routes=[Route("fd00:96::1/128", kind=RouteKind.PROHIBIT)])
    changes = sync(backend, empty)
    # reconcile pulls the steering delete before the route add; the backend fuses the pair
    # into one atomic replace, so the slot is never empty.
    assert [(c.op, c.kind) for c in changes][:2] == [(Op.DELETE, "Steering"), (Op.ADD, "Route")]
    assert "prohibit" in node.ip("-6", "route", "show", "fd00:96::1")
    assert backend.dump() == empty
    assert nexthops(node) == []
    sync(backend, served)
    assert backend.dump() == served


def test_foreign_routes_and_nexthops_are_never_touched(backend: KernelBackend, node: Netns) -> None:
    node.ip("-6", "route", "add", "2001:db8:99::/64", "dev", "lo")
    node.ip("route", "add", "198.51.100.0/24", "dev", "up0")
    node.ip("-6", "route", "add", "fd00:96::55/128", "dev", "lo", "table", str(POLICY_TABLE))
    node.ip("nexthop", "add", "id", "7", "blackhole")
    node.ip("nexthop", "add", "id", str(NEXTHOP_ID_BASE), "blackhole")  # inside our range
    # The same segment list as one of ours: still not ours to share or delete.
    node.ip(
        "-6",
        "nexthop",
        "add",
        "id",
        "8",
        "encap",
        "seg6",
        "mode",
        "encap",
        "segs",
        POD_A,
        "dev",
        "lo",
    )
    node.ip("nexthop", "add", "id", "9", "group", "8", "type", "resilient", "buckets", "8")
    node.ip("-6", "route", "add", "fd00:96::56/128", "nhid", "9")

    def foreign() -> tuple[str, ...]:
        # Less what the kernel itself adds for our own VRF device (End.DT4/DT46's, which
        # stays until `srv6ctl cleanup`): its link-local and multicast routes.
        return tuple(
            "".join(line for line in shown.splitlines(True) if "srv6vrf" not in line)
            for shown in (
                node.ip("-6", "route", "show", "table", "all"),
                node.ip("route", "show", "table", "all"),
                node.ip("nexthop", "show"),
            )
        )

    seen = foreign()
    desired = full_config(backend)
    sync(backend, desired)
    assert backend.dump() == desired
    sync(backend, NodeConfig())
    assert backend.dump() == NodeConfig()
    after = foreign()
    assert after == seen
    assert "fd00:96::55 dev lo" in after[0] and "fd00:96::56 nhid 9" in after[0]


def test_add_never_overwrites_a_foreign_route(backend: KernelBackend, node: Netns) -> None:
    node.ip("-6", "route", "add", "fd00:96::7/128", "dev", "lo")
    desired = NodeConfig(
        policies=[SrPolicy(B1, (sl(POD_A),))], steerings=[Steering("fd00:96::7/128", B1)]
    )
    with pytest.raises(ApplyError, match="File exists"):
        sync(backend, desired)
    assert "fd00:96::7 dev lo" in node.ip("-6", "route", "show", "fd00:96::7")


@pytest.mark.parametrize(
    "obj, why",
    [
        (EndX("fcbb:bb00:1::3", {Flavour.PSP}, nexthop="fe80::2", interface="up0"), "psp"),
        (EndDT6("fcbb:bb00:1::6", {Flavour.PSP}), "psp"),  # 6.18 accepts and forgets it
        (End("fcbb:bb00:1::1", {Flavour.USD}), "usd"),
        (EndDX6("fcbb:bb00:1::7", interface="nosuch0"), "does not exist"),
        (SrPolicy(B1, (sl(POD_A),), encap_source="fcbb:bb00:1::"), "SEG6_IPTUNNEL_SRC"),
        (SrPolicy(B1, (sl(POD_A), sl(POD_A, weight=2))), "twice"),
        (Steering("fd00:96::1/128", B3), "not programmed"),
    ],
)
def test_what_the_kernel_cannot_hold_is_refused_before_any_write(
    backend: KernelBackend, obj: object, why: str
) -> None:
    if isinstance(obj, SrPolicy) and obj.encap_source and backend.features.route_tunnel_source:
        pytest.skip("this kernel has a per-route tunnel source")
    writes = backend.writes
    with pytest.raises(InvalidObject, match=why):
        backend.apply([Change(Op.ADD, new=obj)])  # type: ignore[arg-type]
    assert backend.writes == writes


def test_end_dt4_needs_a_vrf_device(backend: KernelBackend, node: Netns) -> None:
    """Refused unwritten without VRF devices; with them, the backend binds one to the table
    (and sets strict mode, which 6.1 demands) before the SID, and finds it again."""
    sid = EndDT4("fcbb:bb00:1::4")
    writes = backend.writes
    if "End.DT4" not in backend.capabilities.behaviours:
        with pytest.raises(InvalidObject, match="no VRF device"):
            backend.apply([Change(Op.ADD, new=sid)])
        assert backend.writes == writes
        return
    sync(backend, NodeConfig(local_sids=[sid]))
    (vrf,) = json.loads(node.ip("-j", "-d", "link", "show", "type", "vrf"))
    assert (vrf["ifname"], vrf["linkinfo"]["info_data"]["table"]) == ("srv6vrf254", 254)
    assert node.exec("sysctl", "-n", "net.vrf.strict_mode").stdout.strip() == "1"
    assert backend.dump() == NodeConfig(local_sids=[sid])
    writes = backend.writes
    assert sync(backend, NodeConfig(local_sids=[sid])) == [] and backend.writes == writes


def test_pods_are_left_to_the_cni(backend: KernelBackend) -> None:
    pod = PodAttachment("pod0", "default/web", "/var/run/netns/cni-1")
    writes = backend.writes
    backend.apply([Change(Op.ADD, new=pod)])
    assert backend.writes == writes
    assert backend.dump().pods == frozenset()


def test_encap_source_is_set_changed_and_cleared(backend: KernelBackend, node: Netns) -> None:
    sync(backend, NodeConfig(encap_source="fcbb:bb00:1::"))
    sync(backend, NodeConfig(encap_source="fcbb:bb00:1::9"))
    assert "fcbb:bb00:1::9" in node.ip("sr", "tunsrc", "show")
    assert backend.dump().encap_source == ipaddress.IPv6Address("fcbb:bb00:1::9")
    sync(backend, NodeConfig())
    assert backend.dump().encap_source is None
    assert "tunsrc addr ::" in node.ip("sr", "tunsrc", "show")


@pytest.mark.slow
def test_tens_of_thousands_of_objects_in_one_plan(backend: KernelBackend, node: Netns) -> None:
    """6,000 services over 24,000 pods: 24k seg6 nexthops, 6k groups, 12k routes.

    Fast bursts of seg6 objects can meet ENOMEM on this kernel (per-CPU dst caches are
    allocated atomically); the backend retries those, so the plan must simply land.
    """
    pods = [f"fcbb:bb00:{1 + i % 100:x}:0:1::{1 + i // 100:x}" for i in range(24_000)]
    policies, steerings = [], []
    for s in range(6_000):
        bsid = ipaddress.IPv6Address(int(ipaddress.IPv6Address("fcbb:bb00::")) + 0x10000 + s)
        policies.append(SrPolicy(bsid, tuple(sl(pods[4 * s + k]) for k in range(4))))
        cluster_ip = ipaddress.IPv6Address(int(ipaddress.IPv6Address("fd00:96::")) + s)
        steerings.append(Steering(ipaddress.IPv6Network(cluster_ip), bsid))
    desired = NodeConfig(policies=policies, steerings=steerings)
    sync(backend, desired)
    assert backend.dump() == desired
    with KernelBackend(node.name) as restarted:
        restarted.apply(plan(desired, restarted.dump()))
        assert restarted.writes == 0


def test_a_failed_write_is_named_and_the_others_land(node: Netns) -> None:
    """Writes carry no NLM_F_ACK: the kernel answers only failures, by sequence number,
    and a barrier's ack closes each datagram. Across datagrams, only the write that
    failed is reported, and every other one lands."""
    node.ip("-6", "route", "add", "fd00:97::3/128", "dev", "lo")  # the one to collide with
    codec = Codec(RTPROT_SRV6CTL, POLICY_TABLE, "lo", "lo", False, 16, None)
    writes = Writes()
    for n in range(1, 8):
        route = Route(f"fd00:97::{n}/128", kind=RouteKind.BLACKHOLE)
        writes.add(nl.RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL, codec.route(route, LINKS), "", n)
    channel = NetlinkChannel(node.name, NETLINK_ROUTE, chunk=3)
    try:
        failures = channel.execute(writes)
    finally:
        channel.close()
    assert [(f.request.what, f.errno) for f in failures] == [(3, errno.EEXIST)]
    routes = node.ip("-6", "route", "show", "table", "all", "proto", str(RTPROT_SRV6CTL))
    assert sorted(line.split()[1] for line in routes.splitlines()) == [
        f"fd00:97::{n}" for n in (1, 2, 4, 5, 6, 7)
    ]


# --- large plans: compiled on a second thread while being sent -------------------------


def services_config(count: int, backends: int = 4) -> NodeConfig:
    """`count` services, each a policy over `backends` of 64 pod SIDs, and a steering."""
    pods = [f"fcbb:bb00:{2 + i % 4:x}:0:1::{i + 1:x}" for i in range(64)]
    policies, steerings = [], []
    for j in range(count):
        bsid = f"fcbb:bb00:1:0:6000::{j + 1:x}"
        chosen = [pods[(j * 7 + k * 13) % len(pods)] for k in range(backends)]
        policies.append(
            SrPolicy(bsid, tuple(sl(p, weight=1 + k % 2) for k, p in enumerate(chosen)))
        )
        steerings.append(Steering(f"fd00:96::{j + 1:x}/128", bsid))
    return NodeConfig(policies=policies, steerings=steerings)


def test_a_large_plan_is_streamed_and_reads_back_exactly(
    backend: KernelBackend, node: Netns, monkeypatch: pytest.MonkeyPatch
) -> None:
    from srv6ctl.dataplane.kernel import STREAM_FROM

    streamed: list[int] = []
    stream = backend._stream_creates
    monkeypatch.setattr(backend, "_stream_creates", lambda c: streamed.append(len(c)) or stream(c))
    desired = services_config(STREAM_FROM)  # 2 x STREAM_FROM objects: the streamed path
    sync(backend, desired)
    assert streamed == [2 * STREAM_FROM]
    assert backend.dump() == desired
    routes = node.ip("-6", "route", "show", "proto", str(RTPROT_SRV6CTL), "table", "all")
    assert routes.count("nhid") == 2 * STREAM_FROM  # steerings and their anchors
    with KernelBackend(node.name) as restarted:
        assert plan(desired, restarted.dump()) == []
    # Every service loses a backend, and a quarter of them go.
    kept = services_config(3 * STREAM_FROM // 4, backends=3)
    sync(backend, kept)
    assert len(streamed) == 2  # this plan too: 1,000 policies and 250 steerings
    with KernelBackend(node.name) as restarted:
        assert restarted.dump() == kept


def test_a_large_plan_with_an_unprogrammed_policy_writes_nothing(backend: KernelBackend) -> None:
    from srv6ctl.dataplane.kernel import STREAM_FROM

    desired = services_config(STREAM_FROM)
    broken = dataclasses.replace(
        desired, steerings=[*desired.steerings, Steering("fd00:97::1/128", "fcbb:bb00::dead")]
    )
    writes = backend.writes
    with pytest.raises(InvalidObject, match="not programmed"):
        sync(backend, broken)
    assert backend.writes == writes
    assert backend.dump() == NodeConfig()
