"""reconcile on plain data: minimal plans, dependency order, and the hitless list edits."""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Iterable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from srv6ctl.dataplane import model
from srv6ctl.dataplane.model import (
    MAIN_TABLE,
    Change,
    EncapSource,
    End,
    EndDT6,
    EndDX4,
    EndDX6,
    EndX,
    LocalSid,
    NodeConfig,
    Op,
    PodAttachment,
    Route,
    RouteKind,
    SegmentList,
    SrPolicy,
    Steering,
)
from srv6ctl.dataplane.reconcile import (
    ListEdit,
    ListOp,
    PlanError,
    apply_list_edits,
    apply_plan,
    drift,
    dumpable,
    plan,
    route_slot,
    segment_list_edits,
)

# --- a small realistic node -----------------------------------------------------------

NODE_SOURCE = "fcbb:bb00:1::1"
WEB = "fd00:96::10"
WEB_BSID = "fcbb:bb00:0::10"
DNS = "fd00:96::53"
DNS_BSID = "fcbb:bb00:0::53"


def pod(k: int) -> PodAttachment:
    return PodAttachment(
        interface=f"veth{k}",
        pod=f"default/web-{k}",
        netns=f"/var/run/netns/cni-{k}",
        addresses=frozenset({ipaddress.ip_interface(f"fd00:10:0:1::{k}/128")}),
    )


def dx6(k: int) -> EndDX6:
    return EndDX6(sid=f"fcbb:bb00:1::1:{k}", nexthop=f"fd00:10:0:1::{k}", interface=f"veth{k}")


def pod_route(k: int) -> Route:
    return Route(prefix=f"fd00:10:0:1::{k}/128", interface=f"veth{k}")


def service(bsid: str, *backends: str, owner: str = "") -> SrPolicy:
    return SrPolicy(
        bsid=bsid, segment_lists=tuple(SegmentList((b,)) for b in backends), owner=owner
    )


def steer(prefix: str, bsid: str) -> Steering:
    return Steering(prefix=f"{prefix}/128", bsid=bsid)


def node(**changes: Iterable[object]) -> NodeConfig:
    """A node with two local pods, its SIDs, two services and a route to another node."""
    base: dict[str, object] = {
        "encap_source": NODE_SOURCE,
        "pods": {pod(1), pod(2)},
        "local_sids": {End(sid="fcbb:bb00:1::1"), EndDT6(sid="fcbb:bb00:1::6"), dx6(1), dx6(2)},
        "policies": {
            service(WEB_BSID, "fcbb:bb00:1::1:1", "fcbb:bb00:2::1:7", owner="svc/default/web"),
            service(DNS_BSID, "fcbb:bb00:3::1:2", owner="svc/kube-system/dns"),
        },
        "steerings": {steer(WEB, WEB_BSID), steer(DNS, DNS_BSID)},
        "routes": {
            pod_route(1),
            pod_route(2),
            Route(prefix="fcbb:bb00:2::/48", via="fe80::2", interface="eth0"),
        },
    }
    base.update(changes)
    return NodeConfig(**base)  # type: ignore[arg-type]


def kinds_and_ops(changes: Iterable[Change]) -> list[tuple[str, Op]]:
    return [(c.kind, c.op) for c in changes]


# --- minimal plans --------------------------------------------------------------------


def test_restart_with_nothing_changed_applies_nothing() -> None:
    assert plan(node(), node()) == []
    assert drift(node(), node()) == {}


def test_a_dump_without_owner_labels_is_in_sync() -> None:
    dumped = node(
        policies={
            service(WEB_BSID, "fcbb:bb00:1::1:1", "fcbb:bb00:2::1:7"),
            service(DNS_BSID, "fcbb:bb00:3::1:2"),
        }
    )
    assert plan(node(), dumped) == []


def test_everything_from_scratch_is_added_in_dependency_order() -> None:
    changes = plan(node(), NodeConfig())
    assert {c.op for c in changes} == {Op.ADD}
    assert [c.kind for c in changes] == [
        "EncapSource",
        *["PodAttachment"] * 2,
        *["End", "EndDT6", "EndDX6", "EndDX6"],  # by SID: ::1, ::6, ::1:1, ::1:2
        *["SrPolicy"] * 2,
        *["Steering"] * 2,
        *["Route"] * 3,
    ]
    assert apply_plan(NodeConfig(), changes) == node()


def test_a_deleted_route_is_repaired_and_nothing_else() -> None:
    tampered = node(routes=node().routes - {pod_route(2)})
    assert plan(node(), tampered) == [Change(Op.ADD, new=pod_route(2))]


def test_a_route_altered_behind_our_back_is_replaced() -> None:
    altered = Route(prefix="fcbb:bb00:2::/48", via="fe80::99", interface="eth0")
    original = Route(prefix="fcbb:bb00:2::/48", via="fe80::2", interface="eth0")
    tampered = node(routes=(node().routes - {original}) | {altered})
    assert plan(node(), tampered) == [Change(Op.REPLACE, old=altered, new=original)]


def test_a_deleted_steering_and_a_stray_sid_are_repaired() -> None:
    stray = End(sid="fcbb:bb00:1::99")
    tampered = node(steerings={steer(DNS, DNS_BSID)}, local_sids=node().local_sids | {stray})
    assert plan(node(), tampered) == [
        Change(Op.ADD, new=steer(WEB, WEB_BSID)),
        Change(Op.DELETE, old=stray),
    ]


def test_a_service_endpoint_change_is_one_policy_replace() -> None:
    old_web = service(WEB_BSID, "fcbb:bb00:1::1:1", "fcbb:bb00:2::1:7")
    new_web = service(WEB_BSID, "fcbb:bb00:1::1:1", "fcbb:bb00:3::1:9")
    actual = node(policies={old_web, service(DNS_BSID, "fcbb:bb00:3::1:2")})
    desired = node(policies={new_web, service(DNS_BSID, "fcbb:bb00:3::1:2")})
    assert plan(desired, actual) == [Change(Op.REPLACE, old=old_web, new=new_web)]
    assert drift(desired, actual) == {"SrPolicy": {"replace": 1}}


def test_a_sid_that_changes_behaviour_is_replaced() -> None:
    old, new = End(sid="fcbb:bb00:1::6"), EndDT6(sid="fcbb:bb00:1::6")
    desired = NodeConfig(local_sids={new})
    assert plan(desired, NodeConfig(local_sids={old})) == [Change(Op.REPLACE, old=old, new=new)]


# --- order ----------------------------------------------------------------------------


def test_a_removed_pod_goes_after_its_sid_and_route_and_policies_lose_it_first() -> None:
    web = service(WEB_BSID, "fcbb:bb00:1::1:1", "fcbb:bb00:1::1:2")
    web_without_2 = service(WEB_BSID, "fcbb:bb00:1::1:1")
    actual = NodeConfig(
        pods={pod(1), pod(2)},
        local_sids={dx6(1), dx6(2)},
        policies={web},
        steerings={steer(WEB, WEB_BSID)},
        routes={pod_route(1), pod_route(2)},
    )
    desired = NodeConfig(
        pods={pod(1)},
        local_sids={dx6(1)},
        policies={web_without_2},
        steerings={steer(WEB, WEB_BSID)},
        routes={pod_route(1)},
    )
    assert plan(desired, actual) == [
        Change(Op.REPLACE, old=web, new=web_without_2),
        Change(Op.DELETE, old=pod_route(2)),
        Change(Op.DELETE, old=dx6(2)),
        Change(Op.DELETE, old=pod(2)),
    ]


def test_a_sid_moving_to_a_new_pod_interface_waits_for_it_and_outlives_nothing() -> None:
    moved = EndDX6(sid="fcbb:bb00:1::1:1", nexthop="fd00:10:0:1::1", interface="veth9")
    new_pod = PodAttachment(interface="veth9", pod="default/web-1", netns="/run/netns/b")
    actual = NodeConfig(pods={pod(1)}, local_sids={dx6(1)})
    desired = NodeConfig(pods={new_pod}, local_sids={moved})
    assert plan(desired, actual) == [
        Change(Op.ADD, new=new_pod),
        Change(Op.REPLACE, old=dx6(1), new=moved),
        Change(Op.DELETE, old=pod(1)),
    ]


def test_a_steering_moves_to_a_new_policy_before_the_old_policy_goes() -> None:
    old_policy = service(WEB_BSID, "fcbb:bb00:2::1:7")
    new_policy = service("fcbb:bb00:0::11", "fcbb:bb00:2::1:7")
    actual = NodeConfig(policies={old_policy}, steerings={steer(WEB, WEB_BSID)})
    desired = NodeConfig(policies={new_policy}, steerings={steer(WEB, "fcbb:bb00:0::11")})
    assert plan(desired, actual) == [
        Change(Op.ADD, new=new_policy),
        Change(Op.REPLACE, old=steer(WEB, WEB_BSID), new=steer(WEB, "fcbb:bb00:0::11")),
        Change(Op.DELETE, old=old_policy),
    ]


def test_a_service_losing_its_last_endpoint_swaps_steering_for_reject_then_drops_policy() -> None:
    policy = service(WEB_BSID, "fcbb:bb00:2::1:7")
    reject = Route(prefix=f"{WEB}/128", kind=RouteKind.PROHIBIT)
    actual = NodeConfig(policies={policy}, steerings={steer(WEB, WEB_BSID)})
    desired = NodeConfig(routes={reject})
    assert plan(desired, actual) == [
        Change(Op.DELETE, old=steer(WEB, WEB_BSID)),  # frees the kernel route slot S/128
        Change(Op.ADD, new=reject),
        Change(Op.DELETE, old=policy),
    ]
    # ... and back: the policy first, then the reject route makes way for the steering.
    assert plan(actual, desired) == [
        Change(Op.ADD, new=policy),
        Change(Op.DELETE, old=reject),
        Change(Op.ADD, new=steer(WEB, WEB_BSID)),
    ]


def test_a_route_over_a_sid_address_waits_for_the_sid_to_go() -> None:
    sid = End(sid="fcbb:bb00:1::1")
    route = Route(prefix="fcbb:bb00:1::1/128", kind=RouteKind.BLACKHOLE)
    assert route_slot(sid) == route_slot(route)
    assert plan(NodeConfig(routes={route}), NodeConfig(local_sids={sid})) == [
        Change(Op.DELETE, old=sid),
        Change(Op.ADD, new=route),
    ]


def test_the_encap_source_is_set_first_and_cleared_last() -> None:
    policy = service(WEB_BSID, "fcbb:bb00:2::1:7")
    with_source = NodeConfig(encap_source=NODE_SOURCE, policies={policy})
    assert plan(with_source, NodeConfig()) == [
        Change(Op.ADD, new=EncapSource(NODE_SOURCE)),
        Change(Op.ADD, new=policy),
    ]
    assert plan(NodeConfig(), with_source) == [
        Change(Op.DELETE, old=policy),
        Change(Op.DELETE, old=EncapSource(NODE_SOURCE)),
    ]
    moved = NodeConfig(encap_source="fcbb:bb00:1::2", policies={policy})
    assert plan(moved, with_source) == [
        Change(Op.REPLACE, old=EncapSource(NODE_SOURCE), new=EncapSource("fcbb:bb00:1::2"))
    ]


def test_order_within_a_kind_is_by_key_and_mixes_ipv4_and_ipv6() -> None:
    routes = {
        Route(prefix="10.96.0.10/32", kind=RouteKind.PROHIBIT),
        Route(prefix="fd00:96::2/128", kind=RouteKind.PROHIBIT),
        Route(prefix="10.96.0.2/32", kind=RouteKind.PROHIBIT),
        Route(prefix="fd00:96::10/128", kind=RouteKind.PROHIBIT, table=100),
        Route(prefix="fd00:96::1/128", kind=RouteKind.PROHIBIT),
    }
    prefixes = [str(c.obj.key[2]) for c in plan(NodeConfig(routes=routes), NodeConfig())]
    assert prefixes == [
        "fd00:96::10/128",  # table 100 comes before the main table, 254
        "10.96.0.2/32",
        "10.96.0.10/32",
        "fd00:96::1/128",
        "fd00:96::2/128",
    ]


# --- errors, drift --------------------------------------------------------------------


def test_two_objects_with_one_key_are_refused_by_name() -> None:
    twins = NodeConfig(steerings={steer(WEB, WEB_BSID), steer(WEB, DNS_BSID)})
    with pytest.raises(PlanError, match="two objects with key"):
        plan(twins, NodeConfig())


def test_apply_plan_refuses_a_plan_made_for_another_state() -> None:
    changes = plan(node(), NodeConfig())
    with pytest.raises(PlanError, match="key is taken"):
        apply_plan(node(), changes)
    with pytest.raises(PlanError, match="not what the config holds"):
        apply_plan(NodeConfig(), [Change(Op.DELETE, old=pod(1))])


def test_drift_counts_per_kind_and_op() -> None:
    actual = node(routes=set(), steerings={steer(DNS, DNS_BSID)}, pods={pod(1), pod(2), pod(3)})
    assert drift(node(), actual) == {
        "PodAttachment": {"delete": 1},
        "Route": {"add": 3},
        "Steering": {"add": 1},
    }


# --- segment-list edits ---------------------------------------------------------------


def sl(sid: str, weight: int = 1) -> SegmentList:
    return SegmentList((sid,), weight)


def test_all_lists_changing_adds_before_deleting() -> None:
    old = SrPolicy(bsid=WEB_BSID, segment_lists=(sl("fcbb:bb00:2::1:1"), sl("fcbb:bb00:2::1:2")))
    new = SrPolicy(bsid=WEB_BSID, segment_lists=(sl("fcbb:bb00:3::1:1"),))
    assert segment_list_edits(old, new) == [
        ListEdit(ListOp.ADD, new=sl("fcbb:bb00:3::1:1")),
        ListEdit(ListOp.DELETE, old=sl("fcbb:bb00:2::1:1")),
        ListEdit(ListOp.DELETE, old=sl("fcbb:bb00:2::1:2")),
    ]


def test_a_weight_change_is_a_modification_and_unchanged_lists_are_left_alone() -> None:
    keep = sl("fcbb:bb00:2::1:1")
    old = SrPolicy(bsid=WEB_BSID, segment_lists=(keep, sl("fcbb:bb00:2::1:2", 1)))
    new = SrPolicy(bsid=WEB_BSID, segment_lists=(keep, sl("fcbb:bb00:2::1:2", 3)))
    assert segment_list_edits(old, new) == [
        ListEdit(ListOp.MODIFY, old=sl("fcbb:bb00:2::1:2", 1), new=sl("fcbb:bb00:2::1:2", 3))
    ]
    assert segment_list_edits(new, new) == []


# --- properties -----------------------------------------------------------------------

POD_IFACES = [f"veth{k}" for k in range(4)]
SIDS = [f"fcbb:bb00:1::{f}" for f in ("1", "4", "6", "1:1", "1:2", "1:3")]
BSIDS = [f"fcbb:bb00:0::{k}" for k in range(1, 5)]
SEGMENTS = [f"fcbb:bb00:{n}::1:{k}" for n in (1, 2, 3) for k in (1, 2)]
# Shared between steerings, routes and SIDs so that plans must free kernel route slots.
PREFIXES = [
    "fd00:96::1/128",
    "fd00:96::2/128",
    "10.96.0.1/32",
    "fd00:10:0:1::1/128",
    "fcbb:bb00:1::1/128",
    "fcbb:bb00:1::1:1/128",
    "fcbb:bb00:2::/48",
]
TABLES = [MAIN_TABLE, 100]

segment_lists = st.builds(
    SegmentList,
    segments=st.lists(st.sampled_from(SEGMENTS), min_size=1, max_size=2).map(tuple),
    weight=st.integers(1, 3),
)
segment_list_tuples = st.lists(segment_lists, min_size=1, max_size=4).map(tuple)


@st.composite
def node_configs(draw: st.DrawFn) -> NodeConfig:
    """An internally consistent node: references resolve and no two objects share a slot."""
    ifaces = draw(st.sets(st.sampled_from(POD_IFACES)))
    pods = {
        PodAttachment(
            interface=iface,
            pod=f"default/{iface}",
            netns=draw(st.sampled_from(["/run/netns/a", "/run/netns/b"])),
            addresses=draw(st.sets(st.sampled_from(["fd00:10:0:1::1/128", "10.128.0.1/32"]))),
            service_addresses=draw(st.sets(st.sampled_from(["fd00:96::1", "fd00:96::2"]))),
        )
        for iface in sorted(ifaces)
    }
    # EndX's interface is an uplink, not a pod: not a reference the model tracks.
    sid_kinds: list[type[LocalSid]] = [End, EndDT6, EndX] + ([EndDX6, EndDX4] if ifaces else [])
    local_sids: set[LocalSid] = set()
    for sid in draw(st.sets(st.sampled_from(SIDS))):
        kind = draw(st.sampled_from(sid_kinds))
        if kind is EndDX6:
            local_sids.add(
                EndDX6(sid=sid, nexthop="fe80::1", interface=draw(st.sampled_from(sorted(ifaces))))
            )
        elif kind is EndDX4:
            local_sids.add(
                EndDX4(
                    sid=sid, nexthop="10.128.0.1", interface=draw(st.sampled_from(sorted(ifaces)))
                )
            )
        elif kind is EndX:
            local_sids.add(EndX(sid=sid, nexthop="fe80::2", interface="eth0"))
        else:
            local_sids.add(kind(sid=sid))
    policies = {
        SrPolicy(
            bsid=bsid,
            segment_lists=draw(segment_list_tuples),
            owner=draw(st.sampled_from(["", "svc/a", "svc/b"])),
        )
        for bsid in draw(st.sets(st.sampled_from(BSIDS)))
    }
    taken = {route_slot(s) for s in local_sids}
    steerings: set[Steering] = set()
    routes: set[Route] = set()
    slots = st.tuples(st.sampled_from(TABLES), st.sampled_from(PREFIXES))
    for table, prefix in draw(st.lists(slots, unique=True, max_size=6)):
        slot = (table, ipaddress.ip_network(prefix))
        if slot in taken:
            continue
        taken.add(slot)
        if policies and draw(st.booleans()):
            bsid = draw(st.sampled_from(sorted(p.bsid for p in policies)))
            steerings.add(Steering(prefix=prefix, bsid=bsid, table=table))
        else:
            routes.add(
                Route(
                    prefix=prefix,
                    table=table,
                    kind=draw(st.sampled_from(list(RouteKind))),
                    interface=draw(st.sampled_from([None, "eth0", *sorted(ifaces)])),
                )
            )
    return NodeConfig(
        encap_source=draw(st.sampled_from([None, "fcbb:bb00:1::1", "fcbb:bb00:1::2"])),
        pods=pods,
        local_sids=local_sids,
        policies=policies,
        steerings=steerings,
        routes=routes,
    )


def dangling(config: NodeConfig) -> list[str]:
    """What in `config` names something missing, or shares a kernel route slot."""
    problems = []
    pods = {p.interface for p in config.pods}
    bsids = {p.bsid for p in config.policies}
    problems += [f"{s} -> missing policy" for s in config.steerings if s.bsid not in bsids]
    problems += [
        f"{s} -> missing pod"
        for s in config.local_sids
        if isinstance(s, EndDX6 | EndDX4) and s.interface not in pods
    ]
    problems += [
        f"{r} -> missing pod"
        for r in config.routes
        if r.interface is not None and r.interface.startswith("veth") and r.interface not in pods
    ]
    slots = Counter(route_slot(o) for o in config.objects())
    problems += [f"slot {slot} held twice" for slot, n in slots.items() if slot and n > 1]
    return problems


@settings(max_examples=400)
@given(desired=node_configs(), actual=node_configs())
def test_a_plan_reaches_desired_through_consistent_states(
    desired: NodeConfig, actual: NodeConfig
) -> None:
    assert dangling(desired) == [] and dangling(actual) == []
    changes = plan(desired, actual)
    state = actual
    for change in changes:
        state = apply_plan(state, [change])
        assert dangling(state) == [], f"after {change}"
    assert state == desired
    assert apply_plan(actual, changes) == desired
    assert sum(sum(ops.values()) for ops in drift(desired, actual).values()) == len(changes)


@given(config=node_configs())
def test_a_config_against_itself_plans_nothing(config: NodeConfig) -> None:
    assert plan(config, config) == []


@given(config=node_configs(), data=st.data())
def test_the_plan_does_not_depend_on_construction_order(
    config: NodeConfig, data: st.DataObject
) -> None:
    shuffled = NodeConfig(
        encap_source=config.encap_source,
        pods=data.draw(st.permutations(sorted(config.pods, key=repr))),
        local_sids=data.draw(st.permutations(sorted(config.local_sids, key=repr))),
        policies=data.draw(st.permutations(sorted(config.policies, key=repr))),
        steerings=data.draw(st.permutations(sorted(config.steerings, key=repr))),
        routes=data.draw(st.permutations(sorted(config.routes, key=repr))),
    )
    assert plan(shuffled, NodeConfig()) == plan(config, NodeConfig())


@given(old=segment_list_tuples, new=segment_list_tuples)
def test_list_edits_never_empty_a_policy_and_end_at_the_new_lists(
    old: tuple[SegmentList, ...], new: tuple[SegmentList, ...]
) -> None:
    edits = segment_list_edits(
        SrPolicy(bsid=WEB_BSID, segment_lists=old), SrPolicy(bsid=WEB_BSID, segment_lists=new)
    )
    ops = [e.op for e in edits]
    assert ops == sorted(ops, key=[ListOp.ADD, ListOp.MODIFY, ListOp.DELETE].index)
    lists: tuple[SegmentList, ...] = old
    for edit in edits:
        lists = apply_list_edits(lists, [edit])
        assert len(lists) >= 1
    assert sorted(lists) == sorted(new)
    unchanged = sum((Counter(old) & Counter(new)).values())
    came, gone = len(new) - unchanged, len(old) - unchanged
    assert max(came, gone) <= len(edits) <= came + gone


def test_a_dump_compares_with_the_dumpable_part_of_a_config() -> None:
    """Pods are not read back by any backend (model.POD): `dumpable` leaves them out, and
    keeps every other kind as it is."""
    config = node()
    assert config.pods
    visible = dumpable(config)
    assert not visible.pods
    assert set(visible.objects()) == {o for o in config.objects() if o not in config.pods}
    assert visible.encap_source == config.encap_source
    assert drift(visible, visible) == {}


def test_the_kind_table_orders_every_kind_after_what_it_refers_to() -> None:
    for rank, kind in enumerate(model.KINDS):
        assert set(kind.refers_to) <= {k.name for k in model.KINDS[:rank]}
    with pytest.raises(TypeError, match="refers to a kind after it"):
        model._check_order((model.STEERING, model.POLICY))
