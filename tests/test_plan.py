"""The address plan: every validation rule, and the pure derivations as properties."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ipam6.plan import AddressPlan, InvalidConfig
from srv6ctl.config import parse_config

BASE: dict[str, Any] = {"podCIDRv6": "fd00:10::/48"}
DUAL: dict[str, Any] = {
    "podCIDRv6": "fd00:10::/48",
    "podCIDRv4": "10.128.0.0/14",
    "serviceCIDRv6": "fd00:96::/108",
    "serviceCIDRv4": "10.96.0.0/16",
}


def plan_of(**overrides: Any) -> AddressPlan:
    return AddressPlan.from_mapping({**DUAL, **overrides})


# --- validation: each rule names its field ---------------------------------------------

BAD_PLANS = [
    # (overrides on DUAL, a field the message must name, a fragment of the reason)
    ({"podCIDRv6": "10.0.0.0/8"}, "podCIDRv6", "not an IPv6 network"),
    ({"podCIDRv4": "fd00::/64"}, "podCIDRv4", "not an IPv4 network"),
    ({"sidBlock": "10.0.0.0/8"}, "sidBlock", "not an IPv6 network"),
    ({"serviceCIDRv6": "10.96.0.0/16"}, "serviceCIDRv6", "not an IPv6 network"),
    ({"podCIDRv6": "fd00:10::1/48"}, "podCIDRv6", "host bits set"),
    ({"podCIDRv4": "10.128.0.1/14"}, "podCIDRv4", "host bits set"),
    ({"sidBlock": "fcbb:bb00::1/32"}, "sidBlock", "host bits set"),
    ({"podCIDRv6": "not-a-cidr"}, "podCIDRv6", "not an IP network"),
    ({"serviceCIDRv6": "fd00:10:0:7::/108"}, "serviceCIDRv6", "overlaps"),
    ({"serviceCIDRv4": "10.129.0.0/16"}, "serviceCIDRv4", "overlaps"),
    ({"sidBlock": "fd00::/16", "podCIDRv6": "fd00:10::/48"}, "sidBlock", "overlaps"),
    ({"nodePrefixLengthV6": 40}, "nodePrefixLengthV6", "shorter than podCIDRv6"),
    ({"nodePrefixLengthV4": 12}, "nodePrefixLengthV4", "shorter than podCIDRv4"),
    ({"nodePrefixLengthV6": 124}, "nodePrefixLengthV6", "no room for pods"),
    ({"nodePrefixLengthV4": 31}, "nodePrefixLengthV4", "no room for pods"),
    ({"locatorLength": 32}, "locatorLength", "does not fit sidBlock"),
    ({"locatorLength": 100}, "locatorLength", "does not fit sidBlock"),
    ({"functionBits": 8}, "functionBits", "pod SIDs"),
    ({"maxNodes": 70000}, "locatorLength", "maxNodes"),
    ({"maxNodes": 2000}, "nodePrefixLengthV4", "maxNodes"),
    ({"nodePrefixLengthV6": 56, "maxNodes": 300}, "nodePrefixLengthV6", "maxNodes"),
    ({"maxNodes": 0}, "maxNodes", "at least 1"),
    ({"serviceBsidLocator": "fcbb:bb00:5::/48"}, "serviceBsidLocator", "node ID 5"),
    ({"serviceBsidLocator": "fcbb:bb00::/40"}, "serviceBsidLocator", "must be a /48"),
    ({"serviceBsidLocator": "fd00:10:0:9::/48"}, "serviceBsidLocator", "host bits"),
    ({"serviceBsidLocator": "fd00:10::/48"}, "serviceBsidLocator", "overlaps"),
    ({"podCIDRv4": None}, "serviceCIDRv4", "IPv4 pods"),
    ({"bogusField": 1}, "bogusField", "unknown field"),
]


@pytest.mark.parametrize(("overrides", "field", "reason"), BAD_PLANS)
def test_bad_plan_is_refused_naming_the_field(
    overrides: dict[str, Any], field: str, reason: str
) -> None:
    data = {**DUAL, **overrides}
    data = {k: v for k, v in data.items() if v is not None}
    with pytest.raises(InvalidConfig) as caught:
        AddressPlan.from_mapping(data)
    message = str(caught.value)
    assert field in message, message
    assert reason in message, message


def test_pod_cidr_v6_is_required() -> None:
    with pytest.raises(InvalidConfig, match=r"addressPlan\.podCIDRv6: is required"):
        AddressPlan.from_mapping({})


def test_full_config_errors_carry_the_section_path() -> None:
    with pytest.raises(InvalidConfig, match=r"addressPlan\.locatorLength /32"):
        parse_config({"addressPlan": {**BASE, "locatorLength": 32}})
    with pytest.raises(InvalidConfig, match=r"store\.type"):
        parse_config({"addressPlan": BASE, "store": {"type": "redis"}})
    with pytest.raises(InvalidConfig, match=r"store: .*etcd\.endpoints"):
        parse_config({"addressPlan": BASE, "store": {"type": "etcd"}})
    with pytest.raises(InvalidConfig, match=r"store\.etcd\.endpoints: .*http\(s\)://host:port"):
        parse_config({"addressPlan": BASE, "store": {"etcd": {"endpoints": ["127.0.0.1"]}}})
    with pytest.raises(InvalidConfig, match="certFile and keyFile"):
        parse_config({"addressPlan": BASE, "store": {"etcd": {"certFile": "/c.pem"}}})
    with pytest.raises(InvalidConfig, match="must be a mapping"):
        parse_config(["podCIDRv6"])


def test_defaults_follow_the_design_plan() -> None:
    plan = AddressPlan.from_mapping(BASE)
    assert not plan.dual_stack
    assert plan.locator(3) == ipaddress.IPv6Network("fcbb:bb00:3::/48")
    assert plan.end_sid(3) == ipaddress.IPv6Address("fcbb:bb00:3::1")
    assert plan.dt6_sid(3) == ipaddress.IPv6Address("fcbb:bb00:3::6")
    assert plan.dt4_sid(3) == ipaddress.IPv6Address("fcbb:bb00:3::4")
    assert plan.pod_prefix_v6(3) == ipaddress.IPv6Network("fd00:10:0:3::/64")
    assert plan.pod(3, 7).sid_dx6 == ipaddress.IPv6Address("fcbb:bb00:3::1:7")
    assert plan.pod(3, 7).ipv4 is None and plan.pod(3, 7).sid_dx4 is None
    assert plan.service_bsid_locator == ipaddress.IPv6Network("fcbb:bb00::/48")
    assert plan.service_bsid_v6(1) == ipaddress.IPv6Address("fcbb:bb00::6000:1")
    # The v6 pod prefix and the SID's 16-bit pod index bound the pods per node.
    assert plan.pod_indexes == range(2, 65536)


def test_dual_stack_derivations() -> None:
    plan = plan_of()
    assert plan.pod_prefix_v4(3) == ipaddress.IPv4Network("10.128.3.0/24")
    assert plan.gateway_v4(3) == ipaddress.IPv4Address("10.128.3.1")
    assert plan.pod(3, 7).ipv4 == ipaddress.IPv4Address("10.128.3.7")
    assert plan.pod(3, 7).sid_dx4 == ipaddress.IPv6Address("fcbb:bb00:3::4:7")
    assert plan.service_bsid_v4(1) == ipaddress.IPv6Address("fcbb:bb00::4000:1")
    # .0 is the prefix, .1 the gateway, .255 the broadcast.
    assert plan.pod_indexes == range(2, 255)


def test_out_of_range_ids_are_refused() -> None:
    plan = plan_of()
    for bad in (
        lambda: plan.locator(0),
        lambda: plan.locator(1001),
        lambda: plan.pod(1, 1),
        lambda: plan.pod(1, 255),
        lambda: plan.service_bsid_v6(0),
    ):
        with pytest.raises(ValueError):
            bad()


# --- properties ------------------------------------------------------------------------

PLANS = [
    plan_of(),
    AddressPlan.from_mapping(BASE),
    plan_of(
        podCIDRv6="2001:db8:40::/44",
        nodePrefixLengthV6=60,
        sidBlock="fc00:0:100::/40",
        locatorLength=52,
        functionBits=24,
        maxNodes=800,
        podCIDRv4="100.64.0.0/12",
        nodePrefixLengthV4=22,
        serviceCIDRv4="10.96.0.0/12",
    ),
]

plans = st.sampled_from(PLANS)


@st.composite
def node_ids(draw: st.DrawFn, plan: AddressPlan) -> int:
    return draw(st.integers(plan.node_ids.start, plan.node_ids.stop - 1))


@given(st.data())
def test_distinct_nodes_never_collide_and_stay_in_range(data: st.DataObject) -> None:
    plan = data.draw(plans)
    a = data.draw(node_ids(plan))
    b = data.draw(node_ids(plan).filter(lambda n: n != a))
    assert not plan.locator(a).overlaps(plan.locator(b))
    assert not plan.pod_prefix_v6(a).overlaps(plan.pod_prefix_v6(b))
    for n in (a, b):
        assert plan.locator(n).subnet_of(plan.sid_block)
        assert not plan.locator(n).overlaps(plan.service_bsid_locator)
        assert plan.pod_prefix_v6(n).subnet_of(plan.pod_cidr_v6)
        for sid in (plan.end_sid(n), plan.dt6_sid(n), plan.dt4_sid(n)):
            assert sid in plan.locator(n)
            assert plan.node_of_sid(sid) == n
        if plan.dual_stack:
            v4a, v4 = plan.pod_prefix_v4(n), plan.pod_cidr_v4
            assert v4a is not None and v4 is not None and v4a.subnet_of(v4)
    if plan.dual_stack:
        pa, pb = plan.pod_prefix_v4(a), plan.pod_prefix_v4(b)
        assert pa is not None and pb is not None and not pa.overlaps(pb)


@given(st.data())
def test_pod_derivations_are_unique_in_range_and_round_trip(data: st.DataObject) -> None:
    plan = data.draw(plans)
    node = data.draw(node_ids(plan))
    idx = plan.pod_indexes
    k = data.draw(st.integers(idx.start, idx.stop - 1))
    j = data.draw(st.integers(idx.start, idx.stop - 1).filter(lambda x: x != k))
    pod, other = plan.pod(node, k), plan.pod(node, j)
    assert len({pod.ipv6, other.ipv6, plan.gateway_v6(node)}) == 3
    assert (
        len(
            {pod.sid_dx6, other.sid_dx6, plan.end_sid(node), plan.dt6_sid(node), plan.dt4_sid(node)}
        )
        == 5
    )
    assert pod.ipv6 in plan.pod_prefix_v6(node)
    assert pod.sid_dx6 in plan.locator(node)
    assert plan.pod_of_address(pod.ipv6) == (node, k)
    assert plan.pod_of_address(pod.sid_dx6) == (node, k)
    if plan.dual_stack:
        prefix = plan.pod_prefix_v4(node)
        assert pod.ipv4 is not None and pod.sid_dx4 is not None and prefix is not None
        assert pod.ipv4 in prefix
        assert pod.ipv4 not in (
            prefix.network_address,
            prefix.broadcast_address,
            plan.gateway_v4(node),
        )
        assert pod.sid_dx4 != pod.sid_dx6 and pod.sid_dx4 != other.sid_dx4
        assert plan.pod_of_address(pod.ipv4) == (node, k)
        assert plan.pod_of_address(pod.sid_dx4) == (node, k)


@given(st.data())
def test_service_bsids_are_unique_and_round_trip(data: st.DataObject) -> None:
    plan = data.draw(plans)
    idx = plan.service_indexes
    i = data.draw(st.integers(idx.start, idx.stop - 1))
    j = data.draw(st.integers(idx.start, idx.stop - 1).filter(lambda x: x != i))
    assert plan.service_bsid_v6(i) != plan.service_bsid_v6(j)
    assert plan.service_bsid_v6(i) != plan.service_bsid_v4(i)
    for bsid in (plan.service_bsid_v6(i), plan.service_bsid_v4(i)):
        assert bsid in plan.service_bsid_locator
        assert plan.node_of_sid(bsid) is None
        assert plan.pod_of_address(bsid) is None
    assert plan.service_of_bsid(plan.service_bsid_v6(i)) == (i, 6)
    assert plan.service_of_bsid(plan.service_bsid_v4(i)) == (i, 4)


@given(st.data())
def test_foreign_addresses_are_not_claimed(data: st.DataObject) -> None:
    plan = data.draw(plans)
    value = data.draw(st.integers(0, 2**128 - 1))
    address = ipaddress.IPv6Address(value)
    owner = plan.pod_of_address(address)
    if owner is not None:
        node, k = owner
        assert address in (
            plan.pod(node, k).ipv6,
            plan.pod(node, k).sid_dx6,
            plan.pod(node, k).sid_dx4,
        )
    node = plan.node_of_sid(address)
    if node is not None:
        assert address in plan.locator(node)
