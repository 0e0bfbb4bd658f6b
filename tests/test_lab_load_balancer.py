"""The Kubernetes lab's load-balancer controller: which addresses it hands out and takes
back, its finalizer, and the routes it asks of the probe (srv6ctl/lab/load_balancer.py).

Its run against a real API server, kubelet and the upstream LoadBalancer specs is in
tests/test_lab_kubernetes.py (gated on the Kubernetes binaries)."""

from __future__ import annotations

import ipaddress
from typing import Any

from srv6ctl.lab.load_balancer import (
    FINALIZER,
    Decision,
    Pools,
    after,
    decide,
    manifests,
    route_commands,
    wanted_routes,
)
from srv6ctl.lab.state import NodeRecord

SMALL = Pools(ipaddress.IPv6Network("fd00:ee::1:0/126"), ipaddress.IPv4Network("198.51.100.128/30"))


def service(
    name: str,
    *,
    type_: str = "LoadBalancer",
    families: tuple[str, ...] = ("IPv6",),
    ingress: tuple[str, ...] = (),
    finalizers: tuple[str, ...] = (),
    deleting: bool = False,
    lb_class: str | None = None,
    local: bool = False,
    health_port: int = 0,
) -> dict[str, Any]:
    meta: dict[str, Any] = {"namespace": "ns", "name": name}
    if finalizers:
        meta["finalizers"] = list(finalizers)
    if deleting:
        meta["deletionTimestamp"] = "2026-12-07T00:00:00Z"
    spec: dict[str, Any] = {"type": type_, "ipFamilies": list(families)}
    if lb_class:
        spec["loadBalancerClass"] = lb_class
    if local:
        spec["externalTrafficPolicy"] = "Local"
        spec["healthCheckNodePort"] = health_port
    out: dict[str, Any] = {"metadata": meta, "spec": spec}
    if ingress:
        out["status"] = {"loadBalancer": {"ingress": [{"ip": i, "ipMode": "VIP"} for i in ingress]}}
    return out


def test_a_new_service_gets_an_address_per_family_in_its_order_and_the_finalizer() -> None:
    decisions = decide([service("a", families=("IPv4", "IPv6"))], SMALL)
    assert decisions == [Decision("ns", "a", (FINALIZER,), ("198.51.100.129", "fd00:ee::1:1"))]


def test_an_address_in_use_is_not_handed_out_again_and_the_pool_can_run_dry() -> None:
    held = service("a", ingress=("fd00:ee::1:1",), finalizers=(FINALIZER,))
    decisions = decide([held, service("b"), service("c"), service("d")], SMALL)
    given = {d.name: d.ingress for d in decisions}
    # /126: ::1:1 (held), ::1:2, ::1:3 (hosts() leaves out the network address only for v6)
    assert given["b"] == ("fd00:ee::1:2",)
    assert given["c"] == ("fd00:ee::1:3",)
    # None left: EXTERNAL-IP stays <pending>, as on a real cluster (the finalizer is on).
    assert Decision("ns", "d", (FINALIZER,), None) in decisions
    assert "a" not in given  # already as it should be: nothing written


def test_a_settled_service_needs_nothing() -> None:
    assert decide([service("a", ingress=("fd00:ee::1:1",), finalizers=(FINALIZER,))], SMALL) == []


def test_type_changed_away_gives_the_address_back_and_drops_the_finalizer() -> None:
    was = service("a", type_="ClusterIP", ingress=("fd00:ee::1:1",), finalizers=("x", FINALIZER))
    assert decide([was], SMALL) == [Decision("ns", "a", ("x",), ())]


def test_a_deleted_service_is_let_go_and_its_address_is_free_again() -> None:
    gone = service("a", ingress=("fd00:ee::1:1",), finalizers=(FINALIZER,), deleting=True)
    decisions = decide([gone, service("b")], SMALL)
    assert Decision("ns", "a", (), ()) in decisions
    # Free only once the status says so: b takes the next one in this pass ...
    assert [d.ingress for d in decisions if d.name == "b"] == [("fd00:ee::1:2",)]
    # ... and the next Service the freed one.
    settled = after([gone, service("b")], decisions)
    later = decide([*settled, service("c")], SMALL)
    assert [d.ingress for d in later if d.name == "c"] == [("fd00:ee::1:1",)]


def test_other_controllers_and_the_labs_own_addresses_are_left_alone() -> None:
    classed = service("a", lb_class="example.com/lb")
    lab_own = service("b", ingress=("fd00:ee::10",))
    assert decide([classed, lab_own], SMALL) == []


def test_a_family_dropped_from_the_service_loses_its_address() -> None:
    was = service(
        "a", families=("IPv6",), ingress=("fd00:ee::1:1", "198.51.100.129"), finalizers=(FINALIZER,)
    )
    assert decide([was], SMALL) == [Decision("ns", "a", None, ("fd00:ee::1:1",))]


def nodes() -> list[NodeRecord]:
    return [
        NodeRecord.model_construct(
            name=f"n{i}", internal_ipv6=f"fd00:ff::{i}", internal_ipv4=f"10.0.0.{i}"
        )
        for i in (1, 2)
    ]


def test_routes_go_to_every_node_or_for_local_to_the_healthy_ones() -> None:
    cluster = service("a", ingress=("fd00:ee::1:1", "198.51.100.129"), families=("IPv6", "IPv4"))
    local = service("b", ingress=("fd00:ee::1:2",), local=True, health_port=30999)
    asked: list[tuple[str, int]] = []

    def healthy(node: NodeRecord, port: int) -> bool:
        asked.append((node.name, port))
        return node.name == "n2"

    routes = wanted_routes([cluster, local, service("c")], nodes(), healthy, SMALL)
    assert routes == {
        "fd00:ee::1:1": ("n1", "n2"),
        "198.51.100.129": ("n1", "n2"),
        "fd00:ee::1:2": ("n2",),
    }
    assert asked == [("n1", 30999), ("n2", 30999)]


def test_route_commands_change_only_what_changed() -> None:
    old = {"fd00:ee::1:1": ("n1", "n2"), "fd00:ee::1:2": ("n2",), "fd00:ee::1:3": ("n1",)}
    new = {"fd00:ee::1:1": ("n1", "n2"), "fd00:ee::1:2": (), "198.51.100.129": ("n1",)}
    assert route_commands(old, new, nodes()) == [
        "route del fd00:ee::1:3/128",
        "route replace 198.51.100.129/32 nexthop via 10.0.0.1",
        "route replace unreachable fd00:ee::1:2/128",
    ]
    assert route_commands(new, new, nodes()) == []


def test_the_controller_may_read_services_and_write_their_status_and_finalizers_only() -> None:
    role = manifests()[0]
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["services"], "verbs": ["list", "patch"]},
        {"apiGroups": [""], "resources": ["services/status"], "verbs": ["patch"]},
    ]
