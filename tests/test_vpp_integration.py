"""VppBackend against a real VPP 25.10: program, dump, restart, drift, and real packets.

The VPP, the pods and the packet lab are tests/support/vpp.py's fixtures (which VPP is
used, and what `SRV6CTL_VPP_DATAPATH=1` adds, is described there); the other SRv6
behaviours' packet tests are in tests/test_vpp_packets.py. Skipped with the reason when
any of it is missing.
"""

from __future__ import annotations

import collections
import ipaddress
import json
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from srv6ctl.dataplane import vpp_affinity
from srv6ctl.dataplane import vpp_fib_codec as fib_codec
from srv6ctl.dataplane import vpp_sr_codec as sr_codec
from srv6ctl.dataplane.model import (
    MAIN_TABLE,
    Change,
    EndDX6,
    IPv6Address,
    NodeConfig,
    Op,
    Route,
    RouteKind,
    SegmentList,
    SrPolicy,
    Steering,
)
from srv6ctl.dataplane.reconcile import plan
from srv6ctl.dataplane.vpp import ApplyError, VppBackend
from srv6ctl.dataplane.vpp_api import VppApiError, VppChannel, VppUnavailable, find_api_dir
from srv6ctl.dataplane.vpp_buckets import fair, vpp_buckets
from srv6ctl.podnet import PodNetworkProgrammer
from srv6ctl.reconciler import Reconciler
from srv6ctl.render import RenderDelta
from telemetry.metrics import AgentMetrics
from tests.support.vpp import (
    BIN_ENV,
    BSID,
    CLUSTER_IP,
    CLUSTER_IP4,
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
    PodNs,
    Target,
    VppProcess,
    base_config,
    clean,
    in_netns,
    marked,
    reconcile,
    red,
    warm_up,
    why_no_vpp,
)

# The names tests/test_agent_vpp.py (and other helpers' tests) imported from here.
_why_no_vpp = why_no_vpp
__all__ = ["BIN_ENV", "MARK", "PEER", "SOURCE", "VppProcess", "_why_no_vpp"]


def policy_lists(backend: VppBackend, bsid: IPv6Address) -> dict[tuple[Any, ...], int]:
    """segments → sl_index of VPP's lists of `bsid` (straight from VPP)."""
    out = {}
    for details in backend.channel.dump("sr_policies_with_sl_index_dump"):
        if IPv6Address(details.bsid) == bsid:
            for sl in details.sid_lists[: details.num_sid_lists]:
                out[tuple(sl.sids[: sl.num_sids])] = int(sl.sl_index)
    return out


# --- control plane ----------------------------------------------------------------------


def test_connects_to_vpp_25_10_and_checks_the_crcs(backend: VppBackend) -> None:
    assert backend.version.startswith("25.10")
    assert "End.DT46" not in backend.capabilities.behaviours
    assert backend.channel.available >= {"sr_policy_add", "sr_policy_mod", "sr_steering_add_del"}


def test_a_crc_mismatch_names_the_message_and_both_crcs(vpp: Target, tmp_path: Path) -> None:
    source = find_api_dir()
    assert source is not None
    altered = tmp_path / "api"
    shutil.copytree(source, altered)
    sr = altered / "core" / "sr.api.json"
    definitions = json.loads(sr.read_text())
    for message in definitions["messages"]:
        if message[0] == "sr_policy_add":
            real = message[-1]["crc"]
            message[-1]["crc"] = "0x12345678"
    sr.write_text(json.dumps(definitions))
    channel = VppChannel(vpp.api_socket, api_dir=altered)
    with pytest.raises(VppApiError) as caught:
        channel.connect()
    assert f"sr_policy_add: VPP has CRC {real}, the API definitions have 0x12345678" in str(
        caught.value
    )
    assert "25.10" in str(caught.value)


def test_program_dump_and_an_agent_restart_writes_nothing(vpp: Target, backend: VppBackend) -> None:
    desired = base_config()
    assert reconcile(backend, desired) > 0
    assert plan(desired, backend.dump()) == []
    # A restarted agent: a new backend, a dump, an empty plan, no write.
    with vpp.backend() as restarted:
        assert plan(desired, restarted.dump()) == []
        assert reconcile(restarted, desired) == 0
        assert restarted.writes == 0


def test_drift_is_repaired(vpp: Target, backend: VppBackend) -> None:
    desired = base_config()
    reconcile(backend, desired)
    lists = policy_lists(backend, BSID)
    backend.cli(f"sr steer del l3 {CLUSTER_IP} via bsid {BSID}")
    backend.cli(f"sr policy mod bsid {BSID} del sl index {lists[(B,)]}")
    backend.cli(f"sr localsid address {NODE}99 behavior end")
    channel = backend.channel
    channel.call(
        "ip_route_add_del", write=True, **fib_codec.route_del(Route("fd00:96::11/128")).fields
    )
    with vpp.backend() as fresh:
        drifted = plan(desired, fresh.dump())
        kinds = collections.Counter((c.kind, str(c.op)) for c in drifted)
        assert kinds == {
            ("Steering", "add"): 1,
            ("SrPolicy", "replace"): 1,
            ("Route", "add"): 1,
            ("End", "delete"): 1,
        }
        fresh.apply(drifted)
        assert plan(desired, fresh.dump()) == []


def test_policy_edits_are_made_in_place_and_never_empty_the_policy(backend: VppBackend) -> None:
    config = base_config()
    reconcile(backend, config)
    first = policy_lists(backend, BSID)
    steps = [
        (SegmentList((A,), 3), SegmentList((C,), 1)),  # B replaced by C
        (SegmentList((A,), 1), SegmentList((C,), 1)),  # A's weight
        (SegmentList((C,), 1),),  # A removed
        (SegmentList((D,), 1),),  # the last list replaced
    ]
    for lists in steps:
        desired = base_config(policies=frozenset({red(*lists)}))
        reconcile(backend, desired)
        assert plan(desired, backend.dump()) == []
        now = policy_lists(backend, BSID)
        # Lists that stay keep their VPP index: edited in place, never re-created.
        for segments, index in first.items():
            if segments in now:
                assert now[segments] == index
        first = now


# --- weights and buckets (issue 17) ------------------------------------------------------


def many_lists(weights: tuple[int, ...], bsid: IPv6Address = BSID) -> SrPolicy:
    """A policy of len(weights) one-SID lists (their order sorted by SID, as in the model)."""
    sids = [IPv6Address(f"fcbb:bb00:{n + 0x100:x}::1:3") for n in range(len(weights))]
    return red(*(SegmentList((sid,), w) for sid, w in zip(sids, weights, strict=True)), bsid=bsid)


def per_weight(policy: SrPolicy, buckets: dict[Any, int]) -> dict[int, list[int]]:
    """weight → the sorted bucket counts of its lists (VPP's qsort orders equal weights its
    own way: the counts per weight are what the port can be held to)."""
    out: dict[int, list[int]] = {}
    for sl in policy.segment_lists:
        out.setdefault(sl.weight, []).append(buckets.get(sl.segments, 0))
    return {weight: sorted(counts) for weight, counts in out.items()}


def test_vpp_holds_the_buckets_the_port_predicts(backend: VppBackend) -> None:
    """The model weights sent as they are (not through the backend, which would change
    them): VPP's load balance is what vpp_buckets says, list by list."""
    cases = [
        (1, 2),
        (3, 1),
        (1, 2, 3),
        (1,) * 40,
        (1, 1, 1, 100),
        tuple(range(1, 41)),
        tuple((n * 37) % 100 + 1 for n in range(25)),
    ]
    for weights in cases:
        policy = many_lists(weights)
        for request in sr_codec.policy_create(policy):
            backend.channel.call(request.name, write=True, what=request.what, **request.fields)
        model = tuple(sl.weight for sl in policy.segment_lists)
        predicted = dict(
            zip((sl.segments for sl in policy.segment_lists), vpp_buckets(model), strict=True)
        )
        held = backend.buckets(BSID)
        assert per_weight(policy, held) == per_weight(policy, predicted), weights
        backend.channel.call("sr_policy_del", write=True, bsid_addr=BSID, sr_policy_index=0)
    assert backend.buckets(BSID) == {}


def test_forty_backends_hold_their_share_of_the_buckets_within_one(
    vpp: Target, backend: VppBackend
) -> None:
    """Issue 17: 40 equal lists held 11 buckets for the first and 3 for every other; and
    skewed weights. Each list now holds its share of VPP's buckets rounded down or up, and
    a restarted agent reads the weights back and plans nothing."""
    for weights in [(1,) * 40, tuple(range(1, 41)), (1, 1, 1, 100)]:
        policy = many_lists(weights)
        desired = base_config(policies=frozenset({policy}))
        reconcile(backend, desired)
        held = backend.buckets(BSID)
        lists = policy.segment_lists
        assert set(held) == {sl.segments for sl in lists}
        counts = tuple(held[sl.segments] for sl in lists)
        assert fair(counts, tuple(sl.weight for sl in lists)), (weights, counts)
        if weights == (1,) * 40:
            assert sum(counts) == 128 and collections.Counter(counts) == {3: 32, 4: 8}
        # VPP holds weights of its own; the backend says which (as_held), and a dump
        # compared with them plans nothing, here and after a restart.
        assert backend.dump() != desired
        assert backend.dump() == backend.as_held(desired)
        with vpp.backend() as restarted:
            assert plan(restarted.as_held(desired), restarted.dump()) == []
            assert reconcile(restarted, restarted.as_held(desired)) == 0
            assert restarted.writes == 0


def vpp_tables(backend: VppBackend) -> dict[tuple[int, bool], str]:
    """(table id, ipv6) → name of every table VPP has (straight from VPP)."""
    return {
        (int(d.table.table_id), bool(d.table.is_ip6)): str(d.table.name)
        for d in backend.channel.dump("ip_table_dump")
    }


def policy_table(backend: VppBackend, bsid: IPv6Address) -> int | None:
    """The table VPP made policy `bsid` in (straight from VPP)."""
    for details in backend.channel.dump("sr_policies_with_sl_index_dump"):
        if IPv6Address(details.bsid) == bsid:
            return int(details.fib_table)
    return None


def test_a_policy_with_affinity_is_made_in_its_table_and_back(
    vpp: Target, backend: VppBackend
) -> None:
    """sessionAffinity ClientIP: the policy is made in the affinity table (its flow hash
    the source address), dumps back as `as_held` says whatever the timeout, and on ↔ off
    re-creates it in the other table; the table goes with its last policy."""
    assert backend.capabilities.affinity
    table = (vpp_affinity.AFFINITY_TABLE, True)
    lists = (SegmentList((A,)), SegmentList((B,)), SegmentList((C,)))
    plain = red(*lists)
    affine = replace(plain, affinity=10800)
    desired = base_config(policies=frozenset({affine}))
    assert table not in vpp_tables(backend)
    reconcile(backend, backend.as_held(desired))
    assert policy_table(backend, BSID) == vpp_affinity.AFFINITY_TABLE
    assert vpp_tables(backend)[table] == vpp_affinity.AFFINITY_TABLE_NAME
    summary = backend.cli(f"show ip6 fib table {vpp_affinity.AFFINITY_TABLE} summary")
    assert "flow hash:[src ]" in summary, summary
    # VPP keeps no timeout: held as one value, so a dump is as_held, not desired, and a
    # new timeout plans nothing.
    dumped = backend.dump()
    assert dumped == backend.as_held(desired) and dumped != desired
    (held,) = dumped.policies
    assert held.affinity == vpp_affinity.HELD_AFFINITY
    other_timeout = base_config(policies=frozenset({replace(plain, affinity=60)}))
    assert plan(backend.as_held(other_timeout), dumped) == []
    # Its BSID's entry is in the affinity table: the buckets are read there.
    assert set(backend.buckets(BSID)) == {sl.segments for sl in lists}
    # The routes of the table are not model routes: nothing else to plan.
    assert {r.table for r in dumped.routes} == {r.table for r in desired.routes}
    # A restarted agent (a new connection) reads it back and writes nothing.
    with vpp.backend() as restarted:
        assert reconcile(restarted, restarted.as_held(desired)) == 0
        assert restarted.writes == 0

    # Off: re-created in table 0 (steered as before), the empty table deleted.
    reconcile(backend, base_config(policies=frozenset({plain})))
    assert policy_table(backend, BSID) == 0
    assert table not in vpp_tables(backend)
    assert plan(base_config(policies=frozenset({plain})), backend.dump()) == []
    assert set(backend.buckets(BSID)) == {sl.segments for sl in lists}
    # On again, from a restarted agent (the table is made again, with its hash).
    with vpp.backend() as restarted:
        reconcile(restarted, restarted.as_held(desired))
        assert policy_table(restarted, BSID) == vpp_affinity.AFFINITY_TABLE
        assert plan(restarted.as_held(desired), restarted.dump()) == []
        assert {s.bsid for s in restarted.dump().steerings} == {BSID}
    # Two policies with affinity: the table stays until the last one goes.
    second = replace(red(SegmentList((D,)), bsid=IPv6Address("fcbb:bb00::1:11")), affinity=5)
    both = base_config(policies=frozenset({affine, second}))
    reconcile(backend, backend.as_held(both))
    reconcile(backend, backend.as_held(desired))
    assert table in vpp_tables(backend)
    # Cleaning up (the fixture's way: a plan to nothing) removes the table.
    clean(backend)
    assert policy_table(backend, BSID) is None
    assert table not in vpp_tables(backend)


def test_the_agents_paths_change_the_timeout_without_a_write(backend: VppBackend) -> None:
    """The model's timeouts reach the backend as they are (incremental) or as held (full):
    a new timeout writes nothing either way, and drift sees none."""
    podnet = PodNetworkProgrammer([ipaddress.ip_network("fd00:96::/108")])
    reconciler = Reconciler(backend, AgentMetrics(CollectorRegistry(), version="t"), podnet)
    lists = (SegmentList((A,)), SegmentList((B,)), SegmentList((C,)))
    hour, minute = (replace(red(*lists), affinity=t) for t in (3600, 60))
    assert reconciler.full(base_config(policies=frozenset({hour})), keep=())
    writes = backend.writes
    changes = reconciler.incremental(
        base_config(policies=frozenset({minute})),
        RenderDelta(frozenset({minute}), frozenset({hour})),
    )
    assert [(c.kind, str(c.op)) for c in changes] == [("SrPolicy", "replace")]
    assert reconciler.full(base_config(policies=frozenset({minute})), keep=()) == []
    assert backend.writes == writes
    assert reconciler.drift(base_config(policies=frozenset({minute}))) == {}
    assert policy_table(backend, BSID) == vpp_affinity.AFFINITY_TABLE


def test_an_operators_table_of_the_affinity_id_is_refused_not_reconfigured(
    backend: VppBackend,
) -> None:
    table_id = vpp_affinity.AFFINITY_TABLE
    backend.cli(f"ip6 table add {table_id}")
    try:
        affine = replace(red(SegmentList((A,))), affinity=30)
        with pytest.raises(ApplyError, match=f"table {table_id} .* not ours"):
            reconcile(backend, base_config(policies=frozenset({affine})))
        assert policy_table(backend, BSID) is None
        summary = backend.cli(f"show ip6 fib table {table_id} summary")
        assert "flow hash:[src ]" not in summary
    finally:
        backend.cli(f"ip6 table del {table_id}")


def test_the_incremental_path_and_the_full_pass_program_the_same(backend: VppBackend) -> None:
    """The agent's two ways: an incremental pass sends the model's weights, a full pass
    compares VPP's with a dump. Neither undoes the other."""
    podnet = PodNetworkProgrammer([ipaddress.ip_network("fd00:96::/108")])
    metrics = AgentMetrics(CollectorRegistry(), version="test")
    reconciler = Reconciler(backend, metrics, podnet)
    forty = base_config(policies=frozenset({many_lists((1,) * 40)}))
    assert reconciler.full(forty, keep=())
    assert reconciler.full(forty, keep=()) == []
    (old,) = forty.policies
    new = many_lists((1,) * 41)
    scaled = base_config(policies=frozenset({new}))
    changes = reconciler.incremental(scaled, RenderDelta(frozenset({new}), frozenset({old})))
    assert [(c.kind, str(c.op)) for c in changes] == [("SrPolicy", "replace")]
    writes = backend.writes
    assert reconciler.full(scaled, keep=()) == []
    assert backend.writes == writes
    assert reconciler.drift(scaled) == {}
    counts = backend.buckets(BSID)
    assert fair(tuple(counts[sl.segments] for sl in new.segment_lists), (1,) * 41)
    # And back, incrementally: the lists VPP holds are edited in place from its weights.
    reconciler.incremental(forty, RenderDelta(frozenset({old}), frozenset({new})))
    assert reconciler.full(forty, keep=()) == []
    assert collections.Counter(backend.buckets(BSID).values()) == {3: 32, 4: 8}


def test_a_steering_moves_to_another_policy_in_place(backend: VppBackend) -> None:
    other = IPv6Address("fcbb:bb00::1:11")
    before = base_config(policies=base_config().policies | {red(SegmentList((C,)), bsid=other)})
    reconcile(backend, before)
    after = NodeConfig(
        encap_source=before.encap_source,
        local_sids=before.local_sids,
        policies=before.policies,
        steerings=frozenset({Steering(CLUSTER_IP, other), Steering(CLUSTER_IP4, BSID)}),
        routes=before.routes,
    )
    changes = plan(after, backend.dump())
    assert [(c.kind, str(c.op)) for c in changes] == [("Steering", "replace")]
    assert reconcile(backend, after) == 1  # one sr_steering_add_del re-points it
    assert plan(after, backend.dump()) == []


def test_a_service_without_endpoints_becomes_a_prohibit_route_and_back(backend: VppBackend) -> None:
    serving = base_config()
    reconcile(backend, serving)
    steerings = {s for s in serving.steerings if s.bsid != BSID}
    empty = base_config(
        policies=frozenset(),
        steerings=frozenset(steerings),
        routes=serving.routes
        | {Route(CLUSTER_IP, kind=RouteKind.PROHIBIT), Route(CLUSTER_IP4, kind=RouteKind.PROHIBIT)},
    )
    reconcile(backend, empty)
    assert plan(empty, backend.dump()) == []
    assert not backend.dump().policies
    reconcile(backend, serving)
    assert plan(serving, backend.dump()) == []


REJECT_KINDS = (RouteKind.PROHIBIT, RouteKind.UNREACHABLE, RouteKind.BLACKHOLE)


def _alive(vpp: Target) -> bool:
    """The VPP these tests started still runs (one given by socket: not ours to watch)."""
    if vpp.process is None:
        return True
    return vpp.process.process is not None and vpp.process.process.poll() is None


def test_reject_routes_in_any_table_are_read_back_and_vpp_lives(
    vpp: Target, backend: VppBackend
) -> None:
    """Prohibit, unreachable and blackhole routes of both families in main and in a table
    of ours (where VPP 25.10 crashed on an ICMP path as its API decodes it: see
    vpp_fib_codec), then each turned into the next kind in place, then gone."""
    base = base_config()

    def rejects(shift: int) -> frozenset[Route]:
        routes = set()
        for n, (table, prefix) in enumerate(
            (t, p)
            for t in (MAIN_TABLE, 77)
            for p in ("fd00:96::70/128", "fd00:97::/64", "10.96.0.70/32", "10.97.0.0/24")
        ):
            routes.add(Route(prefix, kind=REJECT_KINDS[(n + shift) % 3], table=table))
        return frozenset(routes)

    for shift in range(3):
        desired = base_config(routes=base.routes | rejects(shift))
        assert reconcile(backend, desired) > 0
        assert _alive(vpp), "VPP died"
        assert backend.dump().routes == desired.routes
        assert plan(desired, backend.dump()) == []
    # The prohibit path forwards, its DROP backstop does not: VPP's own word.
    shown = backend.cli("show ip6 fib table 77 fd00:96::70/128")
    assert "ip6-null action:send-" in shown.split("forwarding:")[1]
    reconcile(backend, base)
    assert backend.dump().routes == base.routes
    assert backend.cli("show version").startswith("vpp")


def test_changing_the_encap_source_rebuilds_the_lists(backend: VppBackend) -> None:
    reconcile(backend, base_config())
    other = IPv6Address("2001:db8:1::99")
    desired = base_config(encap_source=other)
    reconcile(backend, desired)
    assert plan(desired, backend.dump()) == []
    (details,) = backend.channel.dump("sr_policies_v2_dump")
    assert IPv6Address(details.encap_src) == other
    assert f"EncapSrcIP: {other}" in backend.cli("show sr policies")


def test_thousands_of_services_are_programmed_pipelined(backend: VppBackend) -> None:
    services = 2000
    policies, steerings = set(), set()
    for n in range(services):
        bsid = IPv6Address(int(IPv6Address("fcbb:bb00::2:0")) + n)
        sids = (SegmentList((A,)), SegmentList((B,)))
        policies.add(red(*sids, bsid=bsid))
        steerings.add(Steering(f"fd00:96::1:{n:x}/128", bsid))
    desired = NodeConfig(policies=frozenset(policies), steerings=frozenset(steerings))
    trips = backend.channel.round_trips
    started = time.monotonic()
    writes = reconcile(backend, desired)
    elapsed = time.monotonic() - started
    assert writes == services * 3
    # A handful of dumps and one pipeline: nowhere near one round trip per message.
    assert backend.channel.round_trips - trips < 20
    assert plan(desired, backend.dump()) == []
    print(f"{services} services ({writes} messages) in {elapsed:.2f}s")


def test_a_vpp_restart_is_detected_and_everything_replayed(vpp: Target) -> None:
    if vpp.process is None:
        pytest.skip(f"restarting VPP needs a VPP these tests started ({BIN_ENV})")
    desired = base_config()
    with vpp.backend(connect_timeout=30) as backend:
        clean(backend)
        reconcile(backend, desired)
        vpp.process.stop()
        with pytest.raises(VppUnavailable):
            backend.dump()
        vpp.process.start()
        deadline = time.monotonic() + 30
        while True:
            try:
                actual = backend.dump()  # reconnects, then replays what VPP lost
                break
            except VppUnavailable:
                assert time.monotonic() < deadline, "no reconnect within 30s"
                time.sleep(0.2)
        assert backend.reconnects == 1 and backend.replays == 1
        assert plan(desired, actual) == [] or plan(desired, backend.dump()) == []
        assert plan(desired, backend.dump()) == []
        clean(backend)


# --- pods -------------------------------------------------------------------------------


def test_a_pod_port_is_attached_by_af_packet_and_ensured_without_writes(
    vpp: Target, backend: VppBackend, pod: PodNs
) -> None:
    assert vpp.netns is not None
    backend.apply([Change(Op.ADD, new=pod.attachment)])
    ports = backend.pod_ports()
    port = ports[pod.host_interface]
    assert (
        port.up and port.dev_type == "af-packet" and port.vpp_name == f"host-{pod.host_interface}"
    )
    link_local = backend.channel.call(
        "sw_interface_ip6_get_link_local_address", sw_if_index=port.sw_if_index
    )
    assert IPv6Address(link_local.ip) == IPv6Address("fe80::1")
    # Only VPP answers neighbour discovery on the veth end it took over.
    disabled = f"/proc/sys/net/ipv6/conf/{pod.host_interface}/disable_ipv6"
    assert in_netns(vpp.netns, disabled) == "1"
    sid = EndDX6(f"{NODE}1:3", nexthop=POD6, interface=pod.host_interface)
    desired = NodeConfig(local_sids=frozenset({sid}))
    reconcile(backend, desired)
    assert backend.dump().local_sids == {sid}
    # The pod's host route belongs to its port, not to the routes we dump.
    assert not backend.dump().routes
    # Again (an agent restart, a replay): nothing to write.
    with vpp.backend() as restarted:
        restarted.apply([Change(Op.ADD, new=pod.attachment)])
        assert restarted.writes == 0
        assert plan(desired, restarted.dump()) == []
    reconcile(backend, NodeConfig())
    backend.apply([Change(Op.DELETE, old=pod.attachment)])
    assert pod.host_interface not in backend.pod_ports()
    leftover = [
        d
        for d in backend.channel.dump(
            "ip_route_v2_dump", src=fib_codec.FIB_SOURCE_API, table={"table_id": 0, "is_ip6": True}
        )
        if d.route.prefix.network_address == POD6
    ]
    assert leftover == []
    # Nor its static neighbours: VPP keeps them past the interface ("DELETED"), and the
    # next neighbour of the same address on another port then crashed VPP.
    shown = backend.cli("show ip neighbors")
    assert str(POD6) not in shown and str(POD4) not in shown
    backend.apply([Change(Op.ADD, new=pod.attachment)])  # the same pod, a new port
    backend.apply([Change(Op.DELETE, old=pod.attachment)])
    assert "DELETED" not in backend.cli("show ip neighbors")


# --- real packets -----------------------------------------------------------------------


def test_packets_steered_into_a_weighted_policy_are_encapsulated(lab: Lab) -> None:
    from scapy.layers.inet import UDP
    from scapy.layers.inet6 import IPv6, IPv6ExtHdrSegmentRouting
    from scapy.layers.l2 import Ether
    from scapy.packet import Raw

    from tests.support.netns import PacketPort

    desired = base_config()
    reconcile(lab.backend, desired)
    warm_up(lab)
    flows = 400
    frames = [
        Ether(src=lab.pod_mac, dst=lab.vpp_pod_mac)
        / IPv6(src=str(POD6), dst=CLUSTER_IP.split("/")[0])
        / UDP(sport=10000 + n, dport=80)
        / Raw(MARK)
        for n in range(flows)
    ]
    with PacketPort(lab.peer, "p0") as peer, PacketPort(lab.pod.name, "eth0") as pod:
        peer.drain()
        pod.send(frames)
        got = peer.receive(marked, count=flows, timeout=5)
    assert len(got) >= flows * 0.95, f"{len(got)} of {flows} came out"
    by_segment: collections.Counter[str] = collections.Counter()
    for frame in got:
        outer = frame[IPv6]
        assert outer.src == str(SOURCE)
        assert outer.nh == 41, "one SID: H.Encaps.Red, no SRH"
        assert IPv6ExtHdrSegmentRouting not in frame
        inner = outer.payload
        assert inner.dst == CLUSTER_IP.split("/")[0] and inner.src == str(POD6)
        by_segment[outer.dst] += 1
    share = by_segment[str(A)] / sum(by_segment.values())
    assert set(by_segment) == {str(A), str(B)}
    assert 0.6 < share < 0.9, f"weights 3:1, got {dict(by_segment)}"
    counters = lab.backend.counters()
    assert counters[("policy", BSID)].packets >= len(got)
    assert counters[("pod", lab.pod.host_interface)].transmit_packets >= flows


def test_end_dx6_delivers_the_inner_packet_to_the_pod(lab: Lab) -> None:
    from scapy.layers.inet import UDP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import Ether
    from scapy.packet import Raw

    from tests.support.netns import PacketPort

    sid = IPv6Address(f"{NODE}1:3")
    desired = base_config(
        local_sids=base_config().local_sids
        | {EndDX6(sid, nexthop=POD6, interface=lab.pod.host_interface)}
    )
    reconcile(lab.backend, desired)
    warm_up(lab)
    client, service = "2001:db8:99::7", CLUSTER_IP.split("/")[0]
    frames = [
        Ether(src=lab.peer_mac, dst=lab.vpp_uplink_mac)
        / IPv6(src=str(PEER), dst=str(sid))
        / IPv6(src=client, dst=service)
        / UDP(sport=5000 + n, dport=80)
        / Raw(MARK)
        for n in range(20)
    ]
    with PacketPort(lab.peer, "p0") as peer, PacketPort(lab.pod.name, "eth0") as pod:
        pod.drain()
        lab.backend.cli("clear trace")
        lab.backend.cli("trace add af-packet-input 50")
        peer.send(frames)
        got = pod.receive(marked, count=20, timeout=5)
    if len(got) != 20:
        print(lab.backend.cli("show trace max 3"))
        print(lab.backend.cli("show errors"))
        print(lab.backend.cli("show ip6 neighbors"))
    assert len(got) == 20
    for frame in got:
        assert frame[IPv6].src == client and frame[IPv6].dst == service  # decapsulated
        assert frame[IPv6].nh == 17 and frame.dst == lab.pod_mac
    assert lab.backend.counters()[("localsid", sid)].packets >= 20


def test_end_dt6_looks_the_inner_packet_up_and_reaches_the_pod(lab: Lab) -> None:
    from scapy.layers.inet import UDP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import Ether
    from scapy.packet import Raw

    from tests.support.netns import PacketPort

    reconcile(lab.backend, base_config())
    warm_up(lab)
    frames = [
        Ether(src=lab.peer_mac, dst=lab.vpp_uplink_mac)
        / IPv6(src=str(PEER), dst=f"{NODE}6")
        / IPv6(src="2001:db8:99::7", dst=str(POD6), hlim=64)
        / UDP(sport=6000 + n, dport=80)
        / Raw(MARK)
        for n in range(10)
    ]
    with PacketPort(lab.peer, "p0") as peer, PacketPort(lab.pod.name, "eth0") as pod:
        pod.drain()
        peer.send(frames)
        got = pod.receive(marked, count=10, timeout=5)
    assert len(got) == 10
    assert all(f[IPv6].dst == str(POD6) and f[IPv6].nh == 17 for f in got)


def test_a_service_without_endpoints_is_rejected_administratively(lab: Lab) -> None:
    from scapy.layers.inet import UDP
    from scapy.layers.inet6 import ICMPv6DestUnreach, IPv6
    from scapy.layers.l2 import Ether
    from scapy.packet import Raw

    from tests.support.netns import PacketPort

    reconcile(lab.backend, base_config())
    warm_up(lab)
    frame = (
        Ether(src=lab.pod_mac, dst=lab.vpp_pod_mac)
        / IPv6(src=str(POD6), dst="fd00:96::11")
        / UDP(sport=7000, dport=80)
        / Raw(MARK)
    )
    with PacketPort(lab.pod.name, "eth0") as pod:
        pod.drain()
        pod.send([frame])
        got = pod.receive(lambda f: ICMPv6DestUnreach in f, count=1, timeout=3)
    assert got, "no ICMPv6 error came back"
    assert got[0][ICMPv6DestUnreach].code == 1  # administratively prohibited
