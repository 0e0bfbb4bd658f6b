"""render on plain data: hand-checked configs for small clusters, and incremental == full."""

from __future__ import annotations

import dataclasses
import ipaddress

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    precondition,
    rule,
)

from ipam6.plan import AddressPlan, PodSids
from srv6ctl.dataplane.model import (
    HOST_LOOP_DEVICE,
    HOST_LOOP_GATEWAY,
    MAIN_TABLE,
    Capabilities,
    DataplaneObject,
    EncapMode,
    End,
    EndDT4,
    EndDT6,
    EndDX4,
    EndDX6,
    NodeConfig,
    PodAttachment,
    PortMap,
    Route,
    RouteKind,
    Rule,
    SegmentList,
    SrPolicy,
    Steering,
    Translation,
)
from srv6ctl.dataplane.reconcile import plan
from srv6ctl.render import (
    HOST_LOOP_TABLE,
    HOST_SERVICES_TABLE,
    SERVICE_TABLE_BASE,
    PodInterface,
    Renderer,
    RenderInputs,
    ServiceBsids,
    render,
)
from srv6ctl.sources.convert import from_json
from srv6ctl.state import (
    ClusterState,
    ContainerPort,
    Endpoint,
    EndpointPort,
    EndpointSlice,
    Kind,
    Labels,
    Node,
    NodeKey,
    Pod,
    PodKey,
    PodRef,
    Service,
    ServiceKey,
    ServicePort,
)
from tests.support.cluster import (
    DUAL_STACK,
    IPV6_ONLY,
    KERNEL,
    KERNEL_WITH_VRF,
    VPP,
    endpoint,
    endpoint_slice,
    inputs,
    node,
    pod,
    service,
    state_of,
)

V6 = ipaddress.IPv6Address
V4 = ipaddress.IPv4Address
# The kernel backend as the agent has it: with the host loop, which the backend makes.
KERNEL_HOST = dataclasses.replace(KERNEL_WITH_VRF, host_loop=True, translations=True)
# VPP with the host interconnect (dataplane/vpp_host.py): the node's kernel translates.
VPP_HOST = dataclasses.replace(VPP, translations=True)


def policy(bsid: str, *sids: str, mode: EncapMode = EncapMode.ENCAP) -> SrPolicy:
    return SrPolicy(V6(bsid), tuple(SegmentList((V6(s),)) for s in sids), mode=mode)


def steer(prefix: str, bsid: str) -> Steering:
    return Steering(ipaddress.ip_network(prefix), V6(bsid))


def service_objects(config: NodeConfig, bsid: str) -> tuple[SrPolicy | None, set[Steering]]:
    """The policy at `bsid` and the steerings into it."""
    found = [p for p in config.policies if p.bsid == V6(bsid)]
    assert len(found) <= 1
    return (found[0] if found else None), {s for s in config.steerings if s.bsid == V6(bsid)}


def segment_ends(config: NodeConfig, bsid: str) -> set[str]:
    found, _ = service_objects(config, bsid)
    assert found is not None, (
        f"no policy {bsid} in {sorted(map(str, (p.bsid for p in config.policies)))}"
    )
    return {str(sl.segments[-1]) for sl in found.segment_lists}


WEB_BSID = "fcbb:bb00::6000:1"
WEB_BSID_V4 = "fcbb:bb00::4000:1"


# --- nodes ----------------------------------------------------------------------------


def test_three_node_ipv6_cluster_node_sids_routes_and_node_policies() -> None:
    state = state_of(node(1), node(2), node(3))
    config = render(state, "node-1", inputs(IPV6_ONLY, [1, 2, 3]))
    assert config == NodeConfig(
        encap_source=V6("2001:db8::1"),
        local_sids=frozenset(
            {
                End(V6("fcbb:bb00:1::1")),
                EndDT6(V6("fcbb:bb00:1::6")),
                EndDT6(V6("fcbb:bb00:1::7"), table=HOST_SERVICES_TABLE),
                EndDT6(V6("fcbb:bb00:1::7"), table=HOST_SERVICES_TABLE),
            }
        ),
        routes=frozenset(
            {
                Route(ipaddress.ip_network("fcbb:bb00:2::/48"), via=V6("2001:db8::2")),
                Route(ipaddress.ip_network("fcbb:bb00:3::/48"), via=V6("2001:db8::3")),
            }
        ),
        policies=frozenset(
            {
                policy("fcbb:bb00:1::2000:2", "fcbb:bb00:2::6"),
                policy("fcbb:bb00:1::2000:3", "fcbb:bb00:3::6"),
            }
        ),
        steerings=frozenset(
            {
                steer("fd00:10:0:2::/64", "fcbb:bb00:1::2000:2"),
                steer("fd00:10:0:3::/64", "fcbb:bb00:1::2000:3"),
            }
        ),
    )
    assert {p.owner for p in config.policies} == {"node/node-2/v6", "node/node-3/v6"}
    # Node 2 sees the mirror image: its own SIDs, BSIDs on its own locator.
    other = render(state, "node-2", inputs(IPV6_ONLY, [1, 2, 3]))
    assert other.local_sids == {
        End(V6("fcbb:bb00:2::1")),
        EndDT6(V6("fcbb:bb00:2::6")),
        EndDT6(V6("fcbb:bb00:2::7"), table=HOST_SERVICES_TABLE),
    }
    assert policy("fcbb:bb00:2::2000:1", "fcbb:bb00:1::6") in other.policies


def test_with_a_host_loop_the_local_locator_goes_round_it_for_locally_made_packets() -> None:
    state = state_of(node(1), node(2))
    looped = dataclasses.replace(KERNEL, host_loop=True)
    config = render(state, "node-1", inputs(IPV6_ONLY, [1, 2], capabilities=looped))
    locator = IPV6_ONLY.locator(1)
    assert Rule(locator, HOST_LOOP_TABLE, iif="lo") in config.rules
    assert (
        Route(locator, via=HOST_LOOP_GATEWAY, interface=HOST_LOOP_DEVICE, table=HOST_LOOP_TABLE)
        in config.routes
    )
    # Only this node's locator; without the loop, nothing of it.
    assert not [r for r in config.rules if r.destination == IPV6_ONLY.locator(2)]
    plain = render(state, "node-1", inputs(IPV6_ONLY, [1, 2]))
    assert not plain.rules and not [r for r in plain.routes if r.table == HOST_LOOP_TABLE]


def test_a_node_without_internal_ipv6_is_not_routed_and_sources_from_its_end_sid() -> None:
    state = state_of(node(1, ipv6=False), node(2), node(3, ipv6=False))
    config = render(state, "node-1", inputs(IPV6_ONLY, [1, 2, 3]))
    assert config.encap_source == V6("fcbb:bb00:1::1")
    assert {str(r.prefix) for r in config.routes} == {"fcbb:bb00:2::/48"}
    assert {str(p.bsid) for p in config.policies} == {"fcbb:bb00:1::2000:2"}


def test_a_node_without_node_id_gets_no_route_and_render_needs_the_local_id() -> None:
    state = state_of(node(1), node(2), node(3))
    config = render(state, "node-1", inputs(IPV6_ONLY, [1, 2]))
    assert {str(r.prefix) for r in config.routes} == {"fcbb:bb00:2::/48"}
    with pytest.raises(ValueError, match="node-3 has no node ID"):
        render(state, "node-3", inputs(IPV6_ONLY, [1, 2]))


def test_vpp_capabilities_use_reduced_encapsulation_everywhere() -> None:
    web_pod = pod(IPV6_ONLY, "web-0", 2, 2)
    web = service("web", 1)
    state = state_of(node(1), node(2), web_pod, web, endpoint_slice(web, [endpoint(web_pod)]))
    config = render(state, "node-1", inputs(IPV6_ONLY, [1, 2], {web: 1}, capabilities=VPP))
    assert {p.mode for p in config.policies} == {EncapMode.ENCAP_RED}
    assert len(config.policies) == 2


# --- pods on this node ----------------------------------------------------------------


def test_local_pod_gets_dx6_dx4_sids_and_an_attachment_host_network_pod_nothing() -> None:
    web_pod = pod(DUAL_STACK, "web-0", 1, 2)
    host_pod = pod(DUAL_STACK, "kube-proxy", 1, 0, host_network=True)
    done_pod = pod(DUAL_STACK, "job", 1, 3, phase="Succeeded")
    state = state_of(node(1), web_pod, host_pod, done_pod)
    config = render(
        state, "node-1", inputs(DUAL_STACK, [1], interfaces=[web_pod, host_pod, done_pod])
    )
    assert config.local_sids == {
        End(V6("fcbb:bb00:1::1")),
        EndDT6(V6("fcbb:bb00:1::6")),
        EndDT6(V6("fcbb:bb00:1::7"), table=HOST_SERVICES_TABLE),
        EndDX6(V6("fcbb:bb00:1::1:2"), nexthop=V6("fd00:10:0:1::2"), interface="veth-web-0"),
        EndDX4(V6("fcbb:bb00:1::4:2"), nexthop=V4("10.128.1.2"), interface="veth-web-0"),
    }
    assert config.pods == {
        PodAttachment(
            interface="veth-web-0",
            pod="default/web-0",
            netns="/var/run/netns/web-0",
            addresses=frozenset(
                {
                    ipaddress.ip_interface("fd00:10:0:1::2/128"),
                    ipaddress.ip_interface("10.128.1.2/32"),
                }
            ),
        )
    }


def test_a_local_pod_that_is_not_plugged_in_gets_nothing() -> None:
    web_pod = pod(IPV6_ONLY, "web-0", 1, 2)
    config = render(state_of(node(1), web_pod), "node-1", inputs(IPV6_ONLY, [1]))
    assert not config.pods
    assert {type(s) for s in config.local_sids} == {End, EndDT6}


def test_a_pod_wired_before_the_api_shows_it_is_attached_from_its_wiring() -> None:
    """CNI ADD comes before the API reports the pod's IPs (kubelet sends them after it):
    the pod is attached from what the wiring gave it, with no SID until its status is
    known; then the pod's own attachment (one, same key); unplugged, it goes."""
    addresses = frozenset(
        {ipaddress.ip_interface("fd00:10:0:1::2/128"), ipaddress.ip_interface("10.128.1.2/32")}
    )
    wiring = PodInterface(
        "veth-web-0", "/var/run/netns/web-0", pod="default/web-0", addresses=addresses
    )
    state = state_of(node(1))
    renderer = Renderer(
        state, "node-1", dataclasses.replace(inputs(DUAL_STACK, [1]), pod_interfaces={})
    )
    delta = renderer.set_inputs(
        dataclasses.replace(renderer.inputs, pod_interfaces={"uid-web-0": wiring})
    )
    bare = PodAttachment("veth-web-0", "default/web-0", "/var/run/netns/web-0", addresses=addresses)
    assert (delta.added, delta.removed) == ({bare}, set())
    assert not any(isinstance(s, EndDX6) for s in renderer.config().local_sids)

    web_pod = pod(DUAL_STACK, "web-0", 1, 2, uid="uid-web-0")
    delta = renderer.update(state.upsert_pod(web_pod))
    # The same attachment (no services yet): nothing to replace, and now its SIDs.
    assert delta.removed == set()
    assert {type(o) for o in delta.added} == {EndDX6, EndDX4}
    assert renderer.config().pods == {bare}
    assert renderer.config() == render(state, "node-1", renderer.inputs)

    renderer.update(state.delete_pod("default", "web-0"))
    assert renderer.config().pods == {bare}  # still wired: CNI DEL has not come
    delta = renderer.set_inputs(dataclasses.replace(renderer.inputs, pod_interfaces={}))
    assert delta.removed == {bare} and not renderer.config().pods


def test_a_pod_the_api_shows_without_ips_is_attached_from_its_wiring() -> None:
    """Real kubelet's order: the Pod is in the API (scheduled here, Pending, no IPs) before
    CNI ADD, and gets its IPs only after ADD returned. ADD waits for the pod's port on a
    VPP node: the port must come from the wiring then, or ADD never returns (found on a
    real kubelet: every pod failed "not wired within 30 s")."""
    addresses = frozenset({ipaddress.ip_interface("fd00:10:0:1::2/128")})
    wiring = PodInterface(
        "veth-web-0", "/var/run/netns/web-0", pod="default/web-0", addresses=addresses
    )
    started = pod(IPV6_ONLY, "web-0", 1, 2, uid="uid-web-0")
    pending = dataclasses.replace(started, ips=(), phase="Pending")
    state = state_of(node(1), pending)
    renderer = Renderer(state, "node-1", inputs(IPV6_ONLY, [1]))
    delta = renderer.set_inputs(
        dataclasses.replace(renderer.inputs, pod_interfaces={"uid-web-0": wiring})
    )
    bare = PodAttachment("veth-web-0", "default/web-0", "/var/run/netns/web-0", addresses=addresses)
    assert delta.added == {bare}
    assert renderer.config() == render(state, "node-1", renderer.inputs)

    delta = renderer.update(state.upsert_pod(started))  # kubelet reports its IP
    assert delta.removed == set()
    assert {type(o) for o in delta.added} == {EndDX6}
    assert renderer.config().pods == {bare}
    assert renderer.config() == render(state, "node-1", renderer.inputs)


# --- services -------------------------------------------------------------------------


def web_cluster(
    plan: AddressPlan = IPV6_ONLY, **service_args: object
) -> tuple[ClusterState, Service, list[Pod]]:
    """3 nodes; service web (index 1) with one ready pod on node-2 and one on node-3."""
    pods = [pod(plan, "web-a", 2, 2), pod(plan, "web-b", 3, 2)]
    web = service("web", 1, **service_args)  # type: ignore[arg-type]
    state = state_of(node(1), node(2), node(3), *pods, web)
    state.upsert_endpoint_slice(endpoint_slice(web, [endpoint(p) for p in pods]))
    return state, web, pods


def test_service_with_endpoints_on_two_nodes() -> None:
    state, web, pods = web_cluster()
    config = render(state, "node-1", inputs(IPV6_ONLY, [1, 2, 3], {web: 1}))
    found, steerings = service_objects(config, WEB_BSID)
    assert found == policy(WEB_BSID, "fcbb:bb00:2::1:2", "fcbb:bb00:3::1:2")
    assert found is not None and found.owner == "svc/default/web/v6"
    assert steerings == {steer("fd00:96::1/128", WEB_BSID)}
    assert not [r for r in config.routes if r.kind is RouteKind.PROHIBIT]

    # The backend's node decapsulates to the pod, which holds the ClusterIP.
    on_backend = render(state, "node-2", inputs(IPV6_ONLY, [1, 2, 3], {web: 1}, interfaces=pods))
    assert EndDX6(V6("fcbb:bb00:2::1:2"), nexthop=V6("fd00:10:0:2::2"), interface="veth-web-a") in (
        on_backend.local_sids
    )
    (attachment,) = on_backend.pods
    assert attachment.service_addresses == {V6("fd00:96::1")}
    assert attachment.port_maps == frozenset()  # port 80 → targetPort 80: nothing to rewrite
    assert service_objects(on_backend, WEB_BSID)[0] == found  # same policy on every node


def test_port_maps_for_numeric_and_named_target_ports_resolved_per_pod() -> None:
    plan = IPV6_ONLY
    a = pod(plan, "web-a", 1, 2, ports=[ContainerPort(9376, name="http")])
    b = pod(plan, "web-b", 1, 3, ports=[ContainerPort(8000, name="http")])
    c = pod(plan, "web-c", 1, 4, ports=[ContainerPort(53, protocol="UDP", name="dns")])
    web = service(
        "web",
        1,
        ports=[
            ServicePort(80, name="http", target_port="http"),
            ServicePort(443, name="https", target_port=8443),
            ServicePort(53, protocol="UDP", name="dns", target_port="dns"),
            ServicePort(54, protocol="TCP", name="dns-tcp", target_port="dns"),  # UDP-only name
        ],
    )
    state = state_of(node(1), a, b, c, web)
    # As the controller writes them: one slice per resolved port set, an unresolvable
    # name (dns-tcp: "dns" is a UDP port) left out.
    https = EndpointPort(8443, "TCP", "https")
    for suffix, target, ports in (
        ("a", a, [EndpointPort(9376, "TCP", "http"), https]),
        ("b", b, [EndpointPort(8000, "TCP", "http"), https]),
        ("c", c, [https, EndpointPort(53, "UDP", "dns")]),
    ):
        state.upsert_endpoint_slice(endpoint_slice(web, [endpoint(target)], 6, suffix, ports))
    config = render(state, "node-1", inputs(plan, [1], {web: 1}, interfaces=[a, b, c]))
    maps = {att.pod: att.port_maps for att in config.pods}
    ip = web.cluster_ip_v6
    assert maps == {
        "default/web-a": {("TCP", ip, 80, 9376), ("TCP", ip, 443, 8443)},
        "default/web-b": {("TCP", ip, 80, 8000), ("TCP", ip, 443, 8443)},
        # port 53 → its own port 53: no rewrite; "dns" is not a TCP port, so 54 has none.
        "default/web-c": {("TCP", ip, 443, 8443)},
    }
    # Only the pod serving the UDP port DNATs UDP to the ClusterIP (podnet: its replies
    # leave from it); the others' slices have no UDP port, so they keep no conntrack.
    udp = {att.pod: att.udp_addresses for att in config.pods}
    assert udp == {"default/web-a": set(), "default/web-b": set(), "default/web-c": {ip}}
    # Every service port a pod has an endpoint for, at each VIP; others are refused.
    served = {att.pod: att.service_ports for att in config.pods}
    assert served == {
        "default/web-a": {("TCP", ip, 80), ("TCP", ip, 443)},
        "default/web-b": {("TCP", ip, 80), ("TCP", ip, 443)},
        "default/web-c": {("TCP", ip, 443), ("UDP", ip, 53)},
    }


def test_port_maps_follow_the_slice_not_the_services_target_port() -> None:
    """kube-proxy sends a Service port where the slice's port of that name says: a
    selector-less Service (no targetPort: it defaults to the port) with hand-written
    slices, one port each, for the same pod (the upstream conformance test "multiple
    ports specified in multiple EndpointSlices" failed with every connection refused)."""
    plan = IPV6_ONLY
    backend = pod(plan, "server", 1, 2)
    custom = service(
        "custom", 1, ports=[ServicePort(80, name="port80"), ServicePort(81, name="port81")]
    )
    state = state_of(node(1), backend, custom)
    for suffix, port in (("a", EndpointPort(8090, "TCP", "port80")),
                         ("b", EndpointPort(9090, "TCP", "port81"))):  # fmt: skip
        entry = endpoint(backend, with_ref=False)
        state.upsert_endpoint_slice(endpoint_slice(custom, [entry], 6, suffix, [port]))
    config = render(state, "node-1", inputs(plan, [1], {custom: 1}, interfaces=[backend]))
    (attachment,) = config.pods
    ip = custom.cluster_ip_v6
    assert attachment.service_addresses == {ip}
    assert attachment.port_maps == {("TCP", ip, 80, 8090), ("TCP", ip, 81, 9090)}


def test_no_ready_endpoint_is_an_explicit_prohibit_route_never_a_policy() -> None:
    state, web, pods = web_cluster()
    state.upsert_endpoint_slice(endpoint_slice(web, [endpoint(p, ready=False) for p in pods]))
    config = render(state, "node-1", inputs(IPV6_ONLY, [1, 2, 3], {web: 1}))
    assert service_objects(config, WEB_BSID) == (None, set())
    assert Route(ipaddress.ip_network("fd00:96::1/128"), kind=RouteKind.PROHIBIT) in config.routes

    # No slice at all, and a service whose BSID is not allocated yet: the same.
    bare = state_of(node(1), service("lonely", 2))
    assert (
        Route(ipaddress.ip_network("fd00:96::2/128"), kind=RouteKind.PROHIBIT)
        in render(bare, "node-1", inputs(IPV6_ONLY, [1], {service("lonely", 2): 2})).routes
    )
    state, web, pods = web_cluster()
    unallocated = render(state, "node-1", inputs(IPV6_ONLY, [1, 2, 3], {}))
    assert Route(ipaddress.ip_network("fd00:96::1/128"), kind=RouteKind.PROHIBIT) in (
        unallocated.routes
    )
    assert not [p for p in unallocated.policies if p.owner.startswith("svc/")]


def test_terminating_endpoints_serve_only_while_no_endpoint_is_ready() -> None:
    plan = IPV6_ONLY
    draining = pod(plan, "old-a", 2, 2)
    stopped = pod(plan, "old-b", 3, 2)
    fresh = pod(plan, "new-a", 3, 3)
    web = service("web", 1)
    state = state_of(node(1), node(2), node(3), draining, stopped, fresh, web)
    terminating = [
        endpoint(draining, ready=False, serving=True, terminating=True),
        endpoint(stopped, ready=False, serving=False, terminating=True),
    ]
    state.upsert_endpoint_slice(endpoint_slice(web, terminating))
    renderer = Renderer(state, "node-1", inputs(plan, [1, 2, 3], {web: 1}))
    assert segment_ends(renderer.config(), WEB_BSID) == {"fcbb:bb00:2::1:2"}

    renderer.update(
        state.upsert_endpoint_slice(endpoint_slice(web, [*terminating, endpoint(fresh)]))
    )
    assert segment_ends(renderer.config(), WEB_BSID) == {"fcbb:bb00:3::1:3"}


def test_internal_traffic_policy_local_uses_only_this_nodes_endpoints() -> None:
    plan = IPV6_ONLY
    pods = [pod(plan, "web-a", 1, 2), pod(plan, "web-b", 2, 2)]
    web = service("web", 1, internal_traffic_policy="Local")
    state = state_of(node(1), node(2), node(3), *pods, web)
    state.upsert_endpoint_slice(endpoint_slice(web, [endpoint(p) for p in pods]))
    the_inputs = inputs(plan, [1, 2, 3], {web: 1})
    assert segment_ends(render(state, "node-1", the_inputs), WEB_BSID) == {"fcbb:bb00:1::1:2"}
    assert segment_ends(render(state, "node-2", the_inputs), WEB_BSID) == {"fcbb:bb00:2::1:2"}
    # No local endpoint: traffic is dropped (kube-proxy does the same), explicitly.
    on_three = render(state, "node-3", the_inputs)
    assert Route(ipaddress.ip_network("fd00:96::1/128"), kind=RouteKind.PROHIBIT) in on_three.routes


# --- external traffic: load balancer IPs and externalIPs --------------------------------

LB_IP = "2001:db8:ee::10"
EXTERNAL_IP = "2001:db8:ee::20"


def test_load_balancer_and_external_ips_are_steered_into_the_services_policy() -> None:
    state, web, pods = web_cluster(
        type="LoadBalancer",
        external_ips=(V6(EXTERNAL_IP), V4("192.0.2.20")),  # the IPv4 one: no v4 ClusterIP
        load_balancer_ips=(V6(LB_IP), V6(EXTERNAL_IP)),  # listed twice: steered once
    )
    config = render(state, "node-1", inputs(IPV6_ONLY, [1, 2, 3], {web: 1}))
    found, steerings = service_objects(config, WEB_BSID)
    assert found == policy(WEB_BSID, "fcbb:bb00:2::1:2", "fcbb:bb00:3::1:2")
    assert steerings == {
        steer("fd00:96::1/128", WEB_BSID),
        steer(f"{EXTERNAL_IP}/128", WEB_BSID),
        steer(f"{LB_IP}/128", WEB_BSID),
    }
    assert len(config.policies) == len({p.bsid for p in config.policies})
    assert not [s for s in config.steerings if s.prefix.version == 4]

    # Each backend holds the VIPs too and answers from them; port rewrites cover them.
    web = dataclasses.replace(web, ports=(ServicePort(80, target_port=8080),))
    state.upsert_service(web)
    state.upsert_endpoint_slice(endpoint_slice(web, [endpoint(p) for p in pods]))  # as ever
    on_backend = render(state, "node-2", inputs(IPV6_ONLY, [1, 2, 3], {web: 1}, interfaces=pods))
    (attachment,) = on_backend.pods
    assert attachment.service_addresses == {V6("fd00:96::1"), V6(LB_IP), V6(EXTERNAL_IP)}
    assert attachment.port_maps == {
        ("TCP", address, 80, 8080) for address in attachment.service_addresses
    }


def test_session_affinity_is_a_property_of_the_services_policies() -> None:
    state, web, _ = web_cluster(
        type="LoadBalancer",
        load_balancer_ips=(V6(LB_IP),),
        external_traffic_policy="Local",
        session_affinity="ClientIP",
        session_affinity_timeout=600,
    )
    config = render(state, "node-2", inputs(IPV6_ONLY, [1, 2, 3], {web: 1}))
    services = [p for p in config.policies if p.owner.startswith("svc")]
    assert len(services) == 2  # the ClusterIP's, and the external one (Local)
    assert {p.affinity for p in services} == {600}
    assert {p.affinity for p in config.policies} == {0, 600}  # the nodes' own: none
    # A backend that cannot keep it balances per flow; so does a service without it.
    without = Capabilities(behaviours=KERNEL.behaviours, rules=True)
    config = render(state, "node-2", inputs(IPV6_ONLY, [1, 2, 3], {web: 1}, capabilities=without))
    assert {p.affinity for p in config.policies} == {0}
    state.upsert_service(dataclasses.replace(web, session_affinity="None"))
    config = render(state, "node-2", inputs(IPV6_ONLY, [1, 2, 3], {web: 1}))
    assert {p.affinity for p in config.policies} == {0}


def test_external_traffic_policy_local_keeps_external_traffic_on_the_entry_node() -> None:
    state, web, _ = web_cluster(
        type="LoadBalancer", load_balancer_ips=(V6(LB_IP),), external_traffic_policy="Local"
    )
    the_inputs = inputs(IPV6_ONLY, [1, 2, 3], {web: 1})
    on_two = render(state, "node-2", the_inputs)
    # The ClusterIP still reaches every endpoint; the VIP only node-2's, through a policy
    # of its own at a node-local BSID.
    assert segment_ends(on_two, WEB_BSID) == {"fcbb:bb00:2::1:2", "fcbb:bb00:3::1:2"}
    local_bsid = IPV6_ONLY.service_external_bsid(2, 1, 6)
    assert str(local_bsid) == "fcbb:bb00:2::8000:1"
    assert IPV6_ONLY.service_of_external_bsid(local_bsid) == (2, 1, 6)
    assert IPV6_ONLY.local_policy_of_bsid(local_bsid) is None
    assert segment_ends(on_two, str(local_bsid)) == {"fcbb:bb00:2::1:2"}
    assert service_objects(on_two, str(local_bsid))[1] == {steer(f"{LB_IP}/128", str(local_bsid))}
    (external,) = [p for p in on_two.policies if p.bsid == local_bsid]
    assert external.owner == "svc-external/default/web/v6"

    # A node without a local endpoint drops external traffic silently (the load
    # balancer's health check sends it elsewhere); its ClusterIP still works.
    on_one = render(state, "node-1", the_inputs)
    assert Route(ipaddress.ip_network(f"{LB_IP}/128"), kind=RouteKind.BLACKHOLE) in on_one.routes
    assert segment_ends(on_one, WEB_BSID) == {"fcbb:bb00:2::1:2", "fcbb:bb00:3::1:2"}
    assert not [s for s in on_one.steerings if s.prefix == ipaddress.ip_network(f"{LB_IP}/128")]


def test_an_endpoint_less_services_load_balancer_ips_are_refused_by_the_node() -> None:
    """kube-proxy rejects an endpoint-less Service's external traffic (connection
    refused); a VPP node routes its load balancer IPs to its kernel (LOCAL: punted
    through the host interconnect), which refuses them at each port; a kernel node keeps
    the PROHIBIT route (not yet). Under externalTrafficPolicy Local they stay dropped; an
    endpoint ends it."""
    web = service(
        "web", 1, type="LoadBalancer", load_balancer_ips=(V6(LB_IP),), ports=(ServicePort(80),)
    )
    state = state_of(node(1), node(2), web)
    lb = ipaddress.ip_network(f"{LB_IP}/128")
    refused = Translation("TCP", V6(LB_IP), 80, ())
    on_kernel = render(state, "node-1", inputs(IPV6_ONLY, [1, 2], {web: 1}, KERNEL_HOST))
    assert refused not in on_kernel.translations  # not yet (`_refused_vips`)
    assert Route(lb, kind=RouteKind.PROHIBIT) in on_kernel.routes
    vpp = dataclasses.replace(VPP_HOST, local_refusals=True)
    on_vpp = render(state, "node-1", inputs(IPV6_ONLY, [1, 2], {web: 1}, vpp))
    assert refused in on_vpp.translations
    assert Route(lb, kind=RouteKind.LOCAL) in on_vpp.routes
    assert not [r for r in on_vpp.routes if r.prefix == lb and r.kind is not RouteKind.LOCAL]
    local = dataclasses.replace(web, external_traffic_policy="Local")
    state.upsert_service(local)
    on_vpp = render(state, "node-1", inputs(IPV6_ONLY, [1, 2], {local: 1}, vpp))
    assert refused not in on_vpp.translations
    assert Route(lb, kind=RouteKind.BLACKHOLE) in on_vpp.routes
    state.upsert_service(web)
    pod_2 = pod(IPV6_ONLY, "web-a", 2, 2)
    state.upsert_pod(pod_2)
    state.upsert_endpoint_slice(endpoint_slice(web, [endpoint(pod_2)]))
    served = render(state, "node-1", inputs(IPV6_ONLY, [1, 2], {web: 1}, vpp))
    assert refused not in served.translations
    assert not [r for r in served.routes if r.prefix == lb]


def test_internal_traffic_policy_local_does_not_narrow_external_traffic() -> None:
    state, web, _ = web_cluster(external_ips=(V6(EXTERNAL_IP),), internal_traffic_policy="Local")
    on_two = render(state, "node-2", inputs(IPV6_ONLY, [1, 2, 3], {web: 1}))
    assert segment_ends(on_two, WEB_BSID) == {"fcbb:bb00:2::1:2"}
    external = str(IPV6_ONLY.service_external_bsid(2, 1, 6))
    assert segment_ends(on_two, external) == {"fcbb:bb00:2::1:2", "fcbb:bb00:3::1:2"}
    on_one = render(state, "node-1", inputs(IPV6_ONLY, [1, 2, 3], {web: 1}))
    assert Route(ipaddress.ip_network("fd00:96::1/128"), kind=RouteKind.PROHIBIT) in on_one.routes
    assert segment_ends(on_one, str(IPV6_ONLY.service_external_bsid(1, 1, 6))) == {
        "fcbb:bb00:2::1:2",
        "fcbb:bb00:3::1:2",
    }


def test_external_vips_without_endpoints_are_refused_explicitly() -> None:
    state, web, pods = web_cluster(external_ips=(V6(EXTERNAL_IP),))
    state.upsert_endpoint_slice(endpoint_slice(web, [endpoint(p, ready=False) for p in pods]))
    config = render(state, "node-1", inputs(IPV6_ONLY, [1, 2, 3], {web: 1}))
    assert Route(ipaddress.ip_network(f"{EXTERNAL_IP}/128"), kind=RouteKind.PROHIBIT) in (
        config.routes
    )


NODE_PORT = 30080


def node_port_cluster(**service_args: object) -> tuple[ClusterState, Service, list[Pod]]:
    """web_cluster, dual-stack, with a node port and both families' endpoint slices."""
    ports = (ServicePort(80, target_port=8080, node_port=NODE_PORT),)
    state, web, pods = web_cluster(
        DUAL_STACK, type="NodePort", ports=ports, families=(6, 4), **service_args
    )
    state.upsert_endpoint_slice(endpoint_slice(web, [endpoint(p, 4) for p in pods], family=4))
    return state, web, pods


def test_node_ports_are_steered_by_port_from_this_nodes_own_addresses_only() -> None:
    state, web, pods = node_port_cluster()
    the_inputs = inputs(DUAL_STACK, [1, 2, 3], {web: 1}, capabilities=KERNEL_WITH_VRF)
    config = render(state, "node-1", the_inputs)
    table = SERVICE_TABLE_BASE + 1
    # Only node-1's InternalIPs, one per family, and only the node port: every other
    # packet to them stays the node's.
    assert config.rules == {
        Rule("2001:db8::1/128", table, "TCP", NODE_PORT),
        Rule("192.0.2.1/32", table, "TCP", NODE_PORT),
    }
    # In the service's table, the node's addresses go into the service's policies (the
    # ClusterIP's, as external traffic goes to the same endpoints here).
    in_table = {s for s in config.steerings if s.table == table}
    assert in_table == {
        Steering(ipaddress.ip_network("2001:db8::1/128"), V6(WEB_BSID), table),
        Steering(ipaddress.ip_network("192.0.2.1/32"), V6(WEB_BSID_V4), table),
    }
    assert not [
        s
        for s in config.steerings
        if s.prefix.network_address in (V6("2001:db8::1"),) and s.table != table
    ]
    # Each backend DNATs the node port to itself, per family, in its own namespace.
    with_pods = inputs(DUAL_STACK, [1, 2, 3], {web: 1}, KERNEL_WITH_VRF, interfaces=pods)
    on_backend = render(state, "node-2", with_pods)
    (attachment,) = on_backend.pods
    assert attachment.node_ports == {("TCP", 6, NODE_PORT, 8080), ("TCP", 4, NODE_PORT, 8080)}
    assert {r.destination for r in on_backend.rules} == {
        ipaddress.ip_network("2001:db8::2/128"),
        ipaddress.ip_network("192.0.2.2/32"),
    }


def test_a_nodes_own_stack_translates_its_own_node_ports_to_the_cluster_ip() -> None:
    """The node's own connections to its own node ports are DNATed to the ClusterIP
    (which the dataplane steers). Behind VPP the node's kernel delivers a packet to its
    own address locally, out of reach of VPP's rules; on a kernel node a remote backend's
    direct reply would come back from the node's own IPv4 address, which the uplinks
    refuse. Only this node's addresses; the pods only where the rules cannot see them."""
    state, web, pods = node_port_cluster()
    own = {
        Translation("TCP", V6("2001:db8::1"), NODE_PORT, ((V6("fd00:96::1"), 80),)),
        Translation("TCP", V4("192.0.2.1"), NODE_PORT, ((V4("10.96.0.1"), 80),)),
    }
    config = render(state, "node-1", inputs(DUAL_STACK, [1, 2, 3], {web: 1}, VPP_HOST))
    assert config.translations == own
    on_kernel = render(state, "node-1", inputs(DUAL_STACK, [1, 2, 3], {web: 1}, KERNEL_HOST))
    assert on_kernel.translations == own
    # There they skip the port rules (whose table may hold a blackhole: Local without an
    # endpoint here) and are delivered locally, so that the DNAT at output gets them.
    hosts = {ipaddress.ip_network("2001:db8::1/128"), ipaddress.ip_network("192.0.2.1/32")}
    assert {r for r in on_kernel.rules if r.destination in hosts and r.iif} == {
        Rule(h, HOST_LOOP_TABLE, iif="lo") for h in hosts
    }
    assert {r for r in on_kernel.routes if r.prefix in hosts} >= {
        Route(h, kind=RouteKind.LOCAL, table=HOST_LOOP_TABLE) for h in hosts
    }
    assert not [r for r in config.rules if r.table == HOST_LOOP_TABLE]
    on_vpp = render(state, "node-1", inputs(DUAL_STACK, [1, 2, 3], {web: 1}, VPP))
    assert not on_vpp.translations
    # Its pods too (VPP's rules sit on the uplinks): node-2's client pod translates
    # node-2's to the ClusterIP; node-2's backend (web-a) straight to the endpoints, so
    # that a connection landing on itself stays inside it (`_backends_node_ports`).
    client = pod(DUAL_STACK, "client", 2, 5)
    state.upsert_pod(client)
    with_pods = inputs(DUAL_STACK, [1, 2, 3], {web: 1}, VPP_HOST, interfaces=[*pods, client])
    renderer = Renderer(state, "node-2", with_pods)
    by_pod = {p.pod: p.translations for p in renderer.config().pods}
    assert by_pod["default/client"] == {
        Translation("TCP", V6("2001:db8::2"), NODE_PORT, ((V6("fd00:96::1"), 80),)),
        Translation("TCP", V4("192.0.2.2"), NODE_PORT, ((V4("10.96.0.1"), 80),)),
    }
    endpoints6 = tuple((p.ipv6, 8080) for p in pods)
    endpoints4 = tuple((p.ipv4, 8080) for p in pods)
    # (every node's NodePort: one landing on the backend itself after another node
    # steered it would meet the backend's own flow, its NAT settled at output)
    assert by_pod["default/web-a"] == {
        *(Translation("TCP", V6(f"2001:db8::{n}"), NODE_PORT, endpoints6) for n in (1, 2, 3)),
        *(Translation("TCP", V4(f"192.0.2.{n}"), NODE_PORT, endpoints4) for n in (1, 2, 3)),
    }
    # A node joins: its NodePort too.
    renderer.update(state.upsert_node(node(4)))
    (web_a,) = [p for p in renderer.config().pods if p.pod == "default/web-a"]
    assert Translation("TCP", V6("2001:db8::4"), NODE_PORT, endpoints6) in web_a.translations
    # On a kernel node its rules see its pods' packets, and its backends do not
    # translate (not yet: O(backends) writes per endpoint change, `_backends_node_ports`).
    on_kernel_node = inputs(
        DUAL_STACK, [1, 2, 3], {web: 1}, KERNEL_HOST, interfaces=[*pods, client]
    )
    assert not [p for p in render(state, "node-2", on_kernel_node).pods if p.translations]
    # An endpoint going re-renders the backends, not the other pods.
    (slice6,) = [s for s in state.slices_of_service("default", "web") if s.address_type == "IPv6"]
    delta = renderer.update(
        state.upsert_endpoint_slice(dataclasses.replace(slice6, endpoints=slice6.endpoints[:1]))
    )
    assert {p.pod for p in delta.added if isinstance(p, PodAttachment)} == {"default/web-a"}
    assert renderer.config() == render(state, "node-2", with_pods)
    (web_a,) = [p for p in renderer.config().pods if p.pod == "default/web-a"]
    assert Translation("TCP", V6("2001:db8::3"), NODE_PORT, endpoints6[:1]) in web_a.translations
    # No longer an endpoint (web-b is): the ClusterIP, as any client.
    for each in state.slices_of_service("default", "web"):
        others = tuple(e for e in each.endpoints if e.target and e.target.name != "web-a")
        renderer.update(state.upsert_endpoint_slice(dataclasses.replace(each, endpoints=others)))
    now = {p.pod: p.translations for p in renderer.config().pods}
    assert now["default/web-a"] == now["default/client"]
    assert (
        Translation("TCP", V4("192.0.2.2"), NODE_PORT, ((V4("10.96.0.1"), 80),))
        in now["default/client"]
    )
    assert renderer.config() == render(state, "node-2", with_pods)


def test_node_ports_on_the_addresses_nodeport_addresses_selects() -> None:
    """kube-proxy's --nodeport-addresses: 'primary' (the default) is the InternalIP of each
    family; prefixes select among every address the Node lists, its ExternalIPs too."""
    state, web, _ = node_port_cluster()
    external = (V6("2001:db8:e::1"), V4("203.0.113.1"))
    state.upsert_node(dataclasses.replace(node(1), all_addresses=external))
    table = SERVICE_TABLE_BASE + 1

    def rule_destinations(prefixes: tuple[str, ...] | None) -> set[str]:
        the_inputs = dataclasses.replace(
            inputs(DUAL_STACK, [1, 2, 3], {web: 1}, capabilities=KERNEL_WITH_VRF),
            node_port_addresses=None
            if prefixes is None
            else tuple(ipaddress.ip_network(p) for p in prefixes),
        )
        config = render(state, "node-1", the_inputs)
        steered = {str(s.prefix) for s in config.steerings if s.table == table}
        destinations = {str(r.destination) for r in config.rules if r.port == NODE_PORT}
        assert steered == destinations  # each is steered in the service's table
        return destinations

    assert rule_destinations(None) == {"2001:db8::1/128", "192.0.2.1/32"}
    assert rule_destinations(("::/0", "0.0.0.0/0")) == {
        "2001:db8::1/128",
        "192.0.2.1/32",
        "2001:db8:e::1/128",
        "203.0.113.1/32",
    }
    assert rule_destinations(("2001:db8:e::/48",)) == {"2001:db8:e::1/128"}
    assert rule_destinations(("198.51.100.0/24",)) == set()
    # Incrementally: a Renderer switched to other prefixes equals a fresh render.
    renderer = Renderer(state, "node-1", inputs(DUAL_STACK, [1, 2, 3], {web: 1}, KERNEL_WITH_VRF))
    wider = dataclasses.replace(
        renderer.inputs, node_port_addresses=(ipaddress.ip_network("::/0"),)
    )
    renderer.set_inputs(wider)
    assert renderer.config() == render(state, "node-1", wider)
    assert Rule("2001:db8:e::1/128", table, "TCP", NODE_PORT) in renderer.config().rules


def test_node_ports_under_external_traffic_policy_local_and_without_endpoints() -> None:
    state, web, pods = node_port_cluster(external_traffic_policy="Local")
    the_inputs = inputs(DUAL_STACK, [1, 2, 3], {web: 1}, capabilities=KERNEL_WITH_VRF)
    table = SERVICE_TABLE_BASE + 1
    # node-1 has no endpoint: its node port drops silently (the load balancer's health
    # check moves traffic away), as kube-proxy does.
    on_one = render(state, "node-1", the_inputs)
    assert Route("2001:db8::1/128", kind=RouteKind.BLACKHOLE, table=table) in on_one.routes
    assert Rule("2001:db8::1/128", table, "TCP", NODE_PORT) in on_one.rules
    # node-2 sends its node port's traffic only to its own endpoint.
    on_two = render(state, "node-2", the_inputs)
    local_bsid = IPV6_ONLY.service_external_bsid(2, 1, 6)
    (steering,) = [s for s in on_two.steerings if s.table == table and s.prefix.version == 6]
    assert steering.bsid == local_bsid
    assert segment_ends(on_two, str(local_bsid)) == {"fcbb:bb00:2::1:2"}
    # No ready endpoint anywhere, externalTrafficPolicy Cluster: refused explicitly.
    state, web, pods = node_port_cluster()
    for family in (6, 4):
        unready = [endpoint(p, family, ready=False) for p in pods]
        state.upsert_endpoint_slice(endpoint_slice(web, unready, family=family))
    on_one = render(state, "node-1", the_inputs)
    assert Route("2001:db8::1/128", kind=RouteKind.PROHIBIT, table=table) in on_one.routes


def test_node_ports_need_rules_and_follow_the_nodes_own_address() -> None:
    state, web, _ = node_port_cluster()
    without = inputs(
        DUAL_STACK,
        [1, 2, 3],
        {web: 1},
        capabilities=Capabilities(behaviours=KERNEL_WITH_VRF.behaviours),
    )
    config = render(state, "node-1", without)
    assert not config.rules and all(s.table == 254 for s in config.steerings)
    renderer = Renderer(
        state, "node-1", inputs(DUAL_STACK, [1, 2, 3], {web: 1}, capabilities=KERNEL_WITH_VRF)
    )
    moved = dataclasses.replace(node(1), internal_ipv6=V6("2001:db8::101"))
    delta = renderer.update(state.upsert_node(moved))
    assert Rule("2001:db8::101/128", SERVICE_TABLE_BASE + 1, "TCP", NODE_PORT) in delta.added
    assert Rule("2001:db8::1/128", SERVICE_TABLE_BASE + 1, "TCP", NODE_PORT) in delta.removed
    assert renderer.config() == render(state, "node-1", renderer.inputs)


def test_load_balancer_source_ranges_admit_only_their_sources_to_the_lb_ips() -> None:
    allowed = ipaddress.ip_network("2001:db8:c::/48")
    state, web, _ = web_cluster(
        type="LoadBalancer",
        load_balancer_ips=(V6(LB_IP),),
        external_ips=(V6(EXTERNAL_IP),),
        load_balancer_source_ranges=(allowed, ipaddress.ip_network("198.51.100.0/24")),
    )
    config = render(state, "node-1", inputs(IPV6_ONLY, [1, 2, 3], {web: 1}))
    table = SERVICE_TABLE_BASE + 1
    lb = ipaddress.ip_network(f"{LB_IP}/128")
    # The LB IP: served from the service's table to the range only (the IPv4 range has
    # no IPv6 VIP to guard); everyone else finds the blackhole.
    assert config.rules == {Rule(lb, table, source=allowed)}
    assert Steering(lb, V6(WEB_BSID), table) in config.steerings
    assert Route(lb, kind=RouteKind.BLACKHOLE) in config.routes
    # externalIPs and the ClusterIP are not the load balancer's: left open, as kube-proxy.
    assert steer(f"{EXTERNAL_IP}/128", WEB_BSID) in config.steerings
    assert steer("fd00:96::1/128", WEB_BSID) in config.steerings
    # Without rules the ranges cannot be enforced: the LB IP is closed, never open to all.
    without = inputs(
        IPV6_ONLY, [1, 2, 3], {web: 1}, capabilities=Capabilities(behaviours=KERNEL.behaviours)
    )
    config = render(state, "node-1", without)
    assert not config.rules and not [s for s in config.steerings if s.prefix == lb]
    assert Route(lb, kind=RouteKind.BLACKHOLE) in config.routes


def test_a_vip_is_steered_once_and_never_when_it_is_a_nodes_or_a_pods_address() -> None:
    plan = IPV6_ONLY
    pods = [pod(plan, "web-a", 2, 2)]
    vip, node_ip, pod_ip = V6(LB_IP), V6("2001:db8::3"), pods[0].ipv6
    assert pod_ip is not None
    web = service("web", 1, external_ips=(vip, node_ip, pod_ip))
    other = service("other", 2, load_balancer_ips=(vip,))
    state = state_of(node(1), node(2), node(3), *pods, web, other)
    state.upsert_endpoint_slice(endpoint_slice(web, [endpoint(p) for p in pods]))
    state.upsert_endpoint_slice(endpoint_slice(other, [endpoint(p) for p in pods]))
    the_inputs = inputs(plan, [1, 2, 3], {web: 1, other: 2}, interfaces=pods)
    renderer = Renderer(state, "node-2", the_inputs)
    config = renderer.config()
    steered = {s.prefix: s.bsid for s in config.steerings if s.prefix.prefixlen == 128}
    # default/other sorts before default/web: the shared VIP is other's.
    assert steered == {
        ipaddress.ip_network("fd00:96::1/128"): V6(WEB_BSID),
        ipaddress.ip_network("fd00:96::2/128"): V6("fcbb:bb00::6000:2"),
        ipaddress.ip_network(f"{LB_IP}/128"): V6("fcbb:bb00::6000:2"),
    }
    (attachment,) = config.pods
    assert attachment.service_addresses == {V6("fd00:96::1"), V6("fd00:96::2"), vip}

    # The owner goes: the VIP changes hands at once (incrementally as in full).
    renderer.update(state.delete_service("default", "other"))
    assert renderer.config() == render(state, "node-2", the_inputs)
    steered = {s.prefix: s.bsid for s in renderer.config().steerings}
    assert steered[ipaddress.ip_network(f"{LB_IP}/128")] == V6(WEB_BSID)
    # node-3 leaves: its address is nobody's, and web may steer it now.
    renderer.update(state.delete_node("node-3"))
    assert renderer.config() == render(state, "node-2", the_inputs)
    steered = {s.prefix: s.bsid for s in renderer.config().steerings}
    assert steered[ipaddress.ip_network(f"{node_ip}/128")] == V6(WEB_BSID)
    (attachment,) = renderer.config().pods
    assert node_ip in attachment.service_addresses
    assert pod_ip not in attachment.service_addresses


@pytest.mark.parametrize(
    "fields",
    [
        {"labels": Labels({"service.kubernetes.io/service-proxy-name": "other"})},
        {"labels": Labels({"service.kubernetes.io/headless": ""})},
        {"type": "ExternalName"},
    ],
)
def test_services_kube_proxy_skips_are_skipped(fields: dict[str, object]) -> None:
    state, web, pods = web_cluster(external_ips=(V6(EXTERNAL_IP),), **fields)
    config = render(state, "node-2", inputs(IPV6_ONLY, [1, 2, 3], {web: 1}, interfaces=pods))
    assert service_objects(config, WEB_BSID) == (None, set())
    assert not [r for r in config.routes if r.prefix.prefixlen == 128]
    (attachment,) = config.pods
    assert attachment.service_addresses == frozenset()


def test_a_slice_labelled_headless_is_as_good_as_gone() -> None:
    """kube-proxy's informer selects `!service.kubernetes.io/headless` slices only: a
    slice that takes the label leaves its Service, so the Service goes down and the
    backend drops the ClusterIP (upstream e2e "should implement
    service.kubernetes.io/headless" labels the slice, not the Service)."""
    state, web, pods = web_cluster()
    renderer = Renderer(state, "node-2", inputs(IPV6_ONLY, [1, 2, 3], {web: 1}, interfaces=pods))
    assert service_objects(renderer.config(), WEB_BSID)[0] is not None
    (slice_,) = state.slices_of_service("default", "web")
    as_served = {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": slice_.name,
            "namespace": "default",
            "labels": {"kubernetes.io/service-name": "web", "service.kubernetes.io/headless": ""},
        },
        "addressType": "IPv6",
        "endpoints": [
            {"addresses": [str(a) for a in e.addresses], "nodeName": e.node_name}
            for e in slice_.endpoints
        ],
        "ports": [{"name": p.name, "port": p.port, "protocol": p.protocol} for p in slice_.ports],
    }
    labelled = from_json(Kind.ENDPOINT_SLICE, as_served)
    assert isinstance(labelled, EndpointSlice)
    renderer.update(state.upsert_endpoint_slice(labelled))
    config = renderer.config()
    assert config == render(state, "node-2", renderer.inputs)
    assert service_objects(config, WEB_BSID)[0] is None
    assert [r.kind for r in config.routes if str(r.prefix) == "fd00:96::1/128"] == [
        RouteKind.PROHIBIT
    ]
    (attachment,) = config.pods
    assert attachment.service_addresses == frozenset()


def test_prefer_close_keeps_traffic_in_the_zone_and_falls_back_to_all() -> None:
    plan = IPV6_ONLY
    pods = [pod(plan, "web-a", 2, 2), pod(plan, "web-b", 3, 2)]
    web = service("web", 1, traffic_distribution="PreferClose")
    state = state_of(node(1, zone="a"), node(2, zone="a"), node(3, zone="b"), node(4, zone="c"))
    for obj in (*pods, web):
        state.upsert(obj)  # type: ignore[arg-type]
    state.upsert_endpoint_slice(
        endpoint_slice(web, [endpoint(pods[0], zone="a"), endpoint(pods[1], zone="b")])
    )
    the_inputs = inputs(plan, [1, 2, 3, 4], {web: 1})
    assert segment_ends(render(state, "node-1", the_inputs), WEB_BSID) == {"fcbb:bb00:2::1:2"}
    assert segment_ends(render(state, "node-3", the_inputs), WEB_BSID) == {"fcbb:bb00:3::1:2"}
    assert segment_ends(render(state, "node-4", the_inputs), WEB_BSID) == {
        "fcbb:bb00:2::1:2",
        "fcbb:bb00:3::1:2",
    }
    # Without PreferClose every node uses every endpoint.
    state.upsert_service(dataclasses.replace(web, traffic_distribution=None))
    assert len(segment_ends(render(state, "node-1", the_inputs), WEB_BSID)) == 2


def test_a_zone_change_of_this_node_rerenders_its_topology_aware_services() -> None:
    plan = IPV6_ONLY
    pods = [pod(plan, "web-a", 2, 2), pod(plan, "web-b", 3, 2)]
    web = service("web", 1, traffic_distribution="PreferClose")
    state = state_of(node(1, zone="a"), node(2, zone="a"), node(3, zone="b"), *pods, web)
    state.upsert_endpoint_slice(
        endpoint_slice(web, [endpoint(pods[0], zone="a"), endpoint(pods[1], zone="b")])
    )
    renderer = Renderer(state, "node-1", inputs(plan, [1, 2, 3], {web: 1}))
    assert segment_ends(renderer.config(), WEB_BSID) == {"fcbb:bb00:2::1:2"}
    renderer.update(state.upsert_node(node(1, zone="b")))
    assert segment_ends(renderer.config(), WEB_BSID) == {"fcbb:bb00:3::1:2"}
    renderer.update(state.delete_node("node-1"))  # no zone known: every endpoint
    assert len(segment_ends(renderer.config(), WEB_BSID)) == 2


def test_zone_hints_on_slices_are_honoured_without_traffic_distribution() -> None:
    plan = IPV6_ONLY
    pods = [pod(plan, "web-a", 2, 2), pod(plan, "web-b", 3, 2)]
    web = service("web", 1)
    state = state_of(node(1, zone="a"), node(2, zone="a"), node(3, zone="b"), *pods, web)
    # The controller hinted node-3's endpoint for zone a as well (zones of unequal size).
    state.upsert_endpoint_slice(
        endpoint_slice(
            web,
            [
                endpoint(pods[0], zone="a", hints=["a"]),
                endpoint(pods[1], zone="b", hints=["a", "b"]),
            ],
        )
    )
    the_inputs = inputs(plan, [1, 2, 3], {web: 1})
    assert len(segment_ends(render(state, "node-1", the_inputs), WEB_BSID)) == 2
    assert segment_ends(render(state, "node-3", the_inputs), WEB_BSID) == {"fcbb:bb00:3::1:2"}


def test_dual_stack_without_end_dt4_uses_per_pod_dx4_policies() -> None:
    state, web, pods = web_cluster(DUAL_STACK, families=(6, 4))
    for p in pods:
        state.upsert_endpoint_slice(endpoint_slice(web, [endpoint(p, 4) for p in pods], 4))
    config = render(state, "node-1", inputs(DUAL_STACK, [1, 2, 3], {web: 1}, capabilities=KERNEL))
    assert not [s for s in config.local_sids if isinstance(s, EndDT4)]
    assert segment_ends(config, WEB_BSID_V4) == {"fcbb:bb00:2::4:2", "fcbb:bb00:3::4:2"}
    assert service_objects(config, WEB_BSID_V4)[1] == {steer("10.96.0.1/32", WEB_BSID_V4)}
    # No node publishes End.DT4: each remote pod's /32 has its own policy to its End.DX4.
    pod_policies = {p for p in config.policies if p.owner.startswith("pod/")}
    assert pod_policies == {
        policy("fcbb:bb00:1::5002:2", "fcbb:bb00:2::4:2"),
        policy("fcbb:bb00:1::5003:2", "fcbb:bb00:3::4:2"),
    }
    assert {s for s in config.steerings if s.prefix.version == 4 and s.prefix.prefixlen == 32} >= {
        steer("10.128.2.2/32", "fcbb:bb00:1::5002:2"),
        steer("10.128.3.2/32", "fcbb:bb00:1::5003:2"),
    }
    assert not [s for s in config.steerings if s.prefix.version == 4 and s.prefix.prefixlen == 24]


def test_a_host_network_endpoints_own_node_rewrites_the_service_port() -> None:
    """The `kubernetes` Service: port 443, the API server on its node's stack at 6443 (the
    slice's port of the same name); that node rewrites, nobody else does."""
    api_2 = pod(IPV6_ONLY, "apiserver-2", 2, 0, host_network=True)
    api = service("kubernetes", 2, ports=(ServicePort(443, name="https"),))
    state = state_of(node(1), node(2), api_2, api)
    eps = endpoint_slice(api, [endpoint(api_2)])
    state.upsert_endpoint_slice(
        dataclasses.replace(eps, ports=(EndpointPort(6443, "TCP", "https"),))
    )
    on_2 = render(state, "node-2", inputs(IPV6_ONLY, [1, 2], {api: 2}))
    assert on_2.port_maps == {PortMap("TCP", V6("fd00:96::2"), 443, 6443)}
    assert not render(state, "node-1", inputs(IPV6_ONLY, [1, 2], {api: 2})).port_maps
    # A backend without port rewrites for its own stack gets none (VPP).
    vpp = render(state, "node-2", inputs(IPV6_ONLY, [1, 2], {api: 2}, capabilities=VPP))
    assert not vpp.port_maps


# --- endpoints outside the cluster: client pods translate -------------------------------

DATABASE = "2001:db8:dd::5"  # neither a pod nor a node


def outside_slice(svc: Service, *addresses: str, suffix: str = "out") -> EndpointSlice:
    """A hand-made slice (no selector) naming addresses outside the cluster on 5432."""
    endpoints = [Endpoint(addresses=(ipaddress.ip_address(a),)) for a in addresses]
    eps = endpoint_slice(svc, endpoints, suffix=suffix)
    return dataclasses.replace(eps, ports=(EndpointPort(5432, "TCP", "pg"),))


def test_a_service_outside_the_cluster_is_translated_by_every_local_client_pod() -> None:
    db = service(
        "db",
        2,
        ports=(ServicePort(5432, name="pg"),),
        session_affinity="ClientIP",
        session_affinity_timeout=300,
    )
    client = pod(IPV6_ONLY, "client", 1, 2)
    other = pod(IPV6_ONLY, "other", 1, 3)
    host = pod(IPV6_ONLY, "host", 1, 0, host_network=True)
    state = state_of(node(1), node(2), client, other, host, db)
    state.upsert_endpoint_slice(outside_slice(db, DATABASE, "2001:db8:dd::6"))
    the_inputs = inputs(IPV6_ONLY, [1, 2], {db: 2}, interfaces=[client, other])
    renderer = Renderer(state, "node-1", the_inputs)
    config = renderer.config()
    expected = Translation(
        "TCP", V6("fd00:96::2"), 5432, ((V6(DATABASE), 5432), (V6("2001:db8:dd::6"), 5432)), 300
    )
    assert {p.pod: p.translations for p in config.pods} == {
        "default/client": {expected},
        "default/other": {expected},
    }
    # The node has no SID to send it to: anyone else's packet (a host client's, an
    # external one's) is refused, never routed out with the ClusterIP on it.
    assert Route(ipaddress.ip_network("fd00:96::2/128"), kind=RouteKind.PROHIBIT) in config.routes
    assert not [p for p in config.policies if p.owner.startswith("svc/")]
    assert config == render(state, "node-1", the_inputs)

    # One endpoint goes: every local pod's attachment changes, in the same update.
    delta = renderer.update(state.upsert_endpoint_slice(outside_slice(db, DATABASE)))
    moved = {p.pod for p in delta.added if isinstance(p, PodAttachment)}
    assert moved == {"default/client", "default/other"}
    assert {t.targets for p in renderer.config().pods for t in p.translations} == {
        ((V6(DATABASE), 5432),)
    }
    # The last one goes: no endpoint at all, so every client refuses the port itself.
    renderer.update(state.delete_endpoint_slice("default", "db-v6out"))
    refused = Translation("TCP", V6("fd00:96::2"), 5432, ())
    assert {p.pod: p.translations for p in renderer.config().pods} == {
        "default/client": {refused},
        "default/other": {refused},
    }
    assert renderer.config() == render(state, "node-1", the_inputs)


def test_clients_refuse_a_service_without_endpoints_themselves() -> None:
    """kube-proxy rejects connections to a Service without endpoints (connection refused);
    here every local client refuses them itself (a `Translation` without targets), per
    port and family, and so does the node's own stack where it translates; the route stays
    PROHIBIT for everyone else. With internalTrafficPolicy Local and endpoints elsewhere
    there is no refusal (kube-proxy drops that traffic), and an endpoint ends it."""
    web = service("web", 2, families=(6, 4), ports=(ServicePort(80), ServicePort(53, "UDP")))
    local = service("local", 3, internal_traffic_policy="Local")
    client = pod(DUAL_STACK, "client", 1, 2)
    server = pod(DUAL_STACK, "server", 2, 2)
    state = state_of(node(1), node(2), client, server, web, local)
    state.upsert_endpoint_slice(endpoint_slice(local, [endpoint(server)]))
    the_inputs = inputs(
        DUAL_STACK, [1, 2], {web: 2, local: 3}, capabilities=KERNEL_HOST, interfaces=[client]
    )
    renderer = Renderer(state, "node-1", the_inputs)
    refused = {
        Translation(protocol, address, port, ())
        for address in (V6("fd00:96::2"), V4("10.96.0.2"))
        for protocol, port in (("TCP", 80), ("UDP", 53))
    }
    config = renderer.config()
    assert {p.pod: p.translations for p in config.pods} == {"default/client": refused}
    assert config.translations == refused  # the node's own connections
    assert Route(ipaddress.ip_network("fd00:96::2/128"), kind=RouteKind.PROHIBIT) in config.routes

    renderer.update(state.upsert_endpoint_slice(endpoint_slice(web, [endpoint(server)])))
    left = {t for t in refused if t.address.version == 4}  # no IPv4 endpoint yet
    assert {t for p in renderer.config().pods for t in p.translations} == left
    assert renderer.config() == render(state, "node-1", the_inputs)


def test_the_nodes_own_connections_translate_where_the_backend_can() -> None:
    """Host-network clients: the same translations at the node level, and for locally
    made packets a route to the service CIDR onto the host loop, so that their route
    lookup (before any netfilter hook) succeeds; the main table keeps refusing everyone
    else."""
    db = service("db", 2, ports=(ServicePort(5432, name="pg"),))
    state = state_of(node(1), db)
    state.upsert_endpoint_slice(outside_slice(db, DATABASE))
    config = render(state, "node-1", inputs(IPV6_ONLY, [1], {db: 2}, capabilities=KERNEL_HOST))
    host = ipaddress.ip_network("fd00:96::2/128")
    assert config.translations == {
        Translation("TCP", V6("fd00:96::2"), 5432, ((V6(DATABASE), 5432),))
    }
    cidr = ipaddress.ip_network("fd00:96::/108")
    assert Rule(cidr, HOST_LOOP_TABLE, iif="lo") in config.rules
    loop = Route(cidr, via=HOST_LOOP_GATEWAY, interface=HOST_LOOP_DEVICE, table=HOST_LOOP_TABLE)
    assert loop in config.routes
    assert Route(host, kind=RouteKind.PROHIBIT) in config.routes
    # VPP without a host interconnect cannot: nothing of it, and host clients are refused.
    on_vpp = render(state, "node-1", inputs(IPV6_ONLY, [1], {db: 2}, capabilities=VPP))
    assert not on_vpp.translations
    assert not [r for r in on_vpp.rules if r.destination == host]
    # With one, the node's kernel translates: its route to the ClusterIP is the
    # interconnect's already, so no host loop rule or route.
    on_vpp = render(state, "node-1", inputs(IPV6_ONLY, [1], {db: 2}, capabilities=VPP_HOST))
    assert on_vpp.translations == config.translations
    assert not [r for r in on_vpp.rules if r.destination == host]
    assert not [r for r in on_vpp.routes if r.table == HOST_LOOP_TABLE]


def test_a_service_with_pods_and_outside_endpoints_translates_over_all_of_them() -> None:
    """Pods' own connections go to any endpoint (a pod's is DNATed to its own address,
    which needs no SID); everything that cannot translate (host clients, VIPs) is steered
    to the pods only."""
    db = service("db", 2, ports=(ServicePort(5432, name="pg"),))
    member = pod(IPV6_ONLY, "db-a", 2, 2)
    client = pod(IPV6_ONLY, "client", 1, 2)
    state = state_of(node(1), node(2), member, client, db)
    inside = dataclasses.replace(
        endpoint_slice(db, [endpoint(member)]), ports=(EndpointPort(5433, "TCP", "pg"),)
    )
    state.upsert_endpoint_slice(inside)
    state.upsert_endpoint_slice(outside_slice(db, DATABASE))
    config = render(state, "node-1", inputs(IPV6_ONLY, [1, 2], {db: 2}, interfaces=[client]))
    (attachment,) = config.pods
    assert member.ipv6 is not None
    assert attachment.translations == {
        Translation("TCP", V6("fd00:96::2"), 5432, ((V6(DATABASE), 5432), (member.ipv6, 5433)))
    }
    assert segment_ends(config, "fcbb:bb00::6000:2") == {"fcbb:bb00:2::1:2"}
    # The member still holds the ClusterIP, for the node's steering.
    on_2 = render(state, "node-2", inputs(IPV6_ONLY, [1, 2], {db: 2}, interfaces=[member]))
    (held,) = on_2.pods
    assert V6("fd00:96::2") in held.service_addresses


def test_dual_stack_with_end_dt4_steers_whole_ipv4_pod_prefixes() -> None:
    state, web, _ = web_cluster(DUAL_STACK, families=(6, 4))
    state.upsert_node(node(3, behaviours={"End", "End.DT6", "End.DT4"}))
    config = render(
        state, "node-1", inputs(DUAL_STACK, [1, 2, 3], {web: 1}, capabilities=KERNEL_WITH_VRF)
    )
    assert EndDT4(V6("fcbb:bb00:1::4")) in config.local_sids
    assert policy("fcbb:bb00:1::3000:3", "fcbb:bb00:3::4") in config.policies
    assert steer("10.128.3.0/24", "fcbb:bb00:1::3000:3") in config.steerings
    # node-2 publishes no End.DT4: its pods still get one policy each.
    assert {p.bsid for p in config.policies if p.owner.startswith("pod/")} == {
        V6("fcbb:bb00:1::5002:2")
    }


def test_host_network_endpoints_end_at_their_nodes_dt_sids() -> None:
    plan = DUAL_STACK
    host_2 = pod(plan, "ingress-2", 2, 0, host_network=True)
    host_3 = pod(plan, "ingress-3", 3, 0, host_network=True)
    ingress = service("ingress", 2, families=(6, 4))
    state = state_of(node(1), node(2), node(3, behaviours={"End.DT4"}), host_2, host_3, ingress)
    state.upsert_endpoint_slice(endpoint_slice(ingress, [endpoint(host_2), endpoint(host_3)]))
    state.upsert_endpoint_slice(
        endpoint_slice(ingress, [endpoint(host_2, 4), endpoint(host_3, 4)], 4)
    )
    config = render(
        state, "node-1", inputs(plan, [1, 2, 3], {ingress: 2}, interfaces=[host_2, host_3])
    )
    # IPv6 ends at each endpoint node's `L::7`, End.DT6 into its host-services table...
    assert segment_ends(config, "fcbb:bb00::6000:2") == {"fcbb:bb00:2::7", "fcbb:bb00:3::7"}
    # ...where that node has the ClusterIP as a local route (and node-1, no endpoint, none).
    on_2 = render(state, "node-2", inputs(plan, [1, 2, 3], {ingress: 2}))
    local = Route(
        ipaddress.ip_network("fd00:96::2/128"), kind=RouteKind.LOCAL, table=HOST_SERVICES_TABLE
    )
    assert local in on_2.routes and local not in config.routes
    assert EndDT6(V6("fcbb:bb00:2::7"), table=HOST_SERVICES_TABLE) in on_2.local_sids
    # The endpoint's own node still steers the ClusterIP for its pods, in the main table
    # (a steering in the host-services table would take the local route's slot).
    assert steer("fd00:96::2/128", "fcbb:bb00::6000:2") in on_2.steerings
    assert all(s.table == MAIN_TABLE for s in on_2.steerings)
    # IPv4 has no host-services SID: the nodes' End.DT4 would look the ClusterIP up where
    # it is steered into this very policy (VPP looped on it until its heap ran out), so no
    # IPv4 segment list ends at a host-network endpoint, even where End.DT4 is offered.
    assert "fcbb:bb00::4000:2" not in {str(p.bsid) for p in config.policies}
    assert Route(ipaddress.ip_network("10.96.0.2/32"), kind=RouteKind.PROHIBIT) in config.routes

    # An InternalIP change re-renders the service (a node event, not a slice event).
    renderer = Renderer(state, "node-1", inputs(plan, [1, 2, 3], {ingress: 2}))
    moved = dataclasses.replace(node(3, behaviours={"End.DT4"}), internal_ipv4=V4("192.0.2.99"))
    renderer.update(state.upsert_node(moved))
    assert WEB_BSID_V4 not in {str(p.bsid) for p in renderer.config().policies}
    assert Route(ipaddress.ip_network("10.96.0.2/32"), kind=RouteKind.PROHIBIT) in (
        renderer.config().routes
    )
    assert renderer.config() == render(state, "node-1", renderer.inputs)


def test_headless_and_unknown_endpoints_render_nothing() -> None:
    plan = IPV6_ONLY
    db = pod(plan, "db-0", 2, 2)
    headless = service("db", 3, headless=True)
    external = service("external", 4)
    state = state_of(node(1), node(2), db, headless, external)
    state.upsert_endpoint_slice(endpoint_slice(headless, [endpoint(db)]))
    stranger = Endpoint((V6("2001:db8:ffff::1"),))
    state.upsert_endpoint_slice(endpoint_slice(external, [stranger]))
    config = render(state, "node-1", inputs(plan, [1, 2], {headless: 3, external: 4}))
    assert not [s for s in config.steerings if s.prefix.prefixlen == 128]
    assert not [p for p in config.policies if p.owner.startswith("svc/")]
    assert Route(ipaddress.ip_network("fd00:96::4/128"), kind=RouteKind.PROHIBIT) in config.routes


def test_a_pod_holds_the_cluster_ip_while_it_is_an_endpoint_ready_or_not() -> None:
    state, web, pods = web_cluster()
    the_inputs = inputs(IPV6_ONLY, [1, 2, 3], {web: 1}, interfaces=pods)
    renderer = Renderer(state, "node-2", the_inputs)
    (attachment,) = renderer.config().pods
    assert attachment.service_addresses == {V6("fd00:96::1")}

    # Not ready: out of every policy, but the address stays, so that a pod becoming
    # ready never receives traffic for an address it does not have yet.
    renderer.update(
        state.upsert_endpoint_slice(
            endpoint_slice(web, [endpoint(pods[0], ready=False), endpoint(pods[1])])
        )
    )
    (attachment,) = renderer.config().pods
    assert attachment.service_addresses == {V6("fd00:96::1")}
    assert segment_ends(renderer.config(), WEB_BSID) == {"fcbb:bb00:3::1:2"}

    # Gone from the slice: the address goes too.
    renderer.update(state.upsert_endpoint_slice(endpoint_slice(web, [endpoint(pods[1])])))
    (attachment,) = renderer.config().pods
    assert attachment.service_addresses == frozenset()


def test_an_address_in_two_slices_counts_once_and_the_ready_entry_wins() -> None:
    state, web, pods = web_cluster()
    state.upsert_endpoint_slice(endpoint_slice(web, [endpoint(pods[0], ready=False)], suffix="b"))
    config = render(state, "node-1", inputs(IPV6_ONLY, [1, 2, 3], {web: 1}))
    found, _ = service_objects(config, WEB_BSID)
    assert found is not None and len(found.segment_lists) == 2


def test_render_does_not_depend_on_event_order() -> None:
    plan = DUAL_STACK
    pods = [pod(plan, f"web-{i}", 1 + i % 3, 2 + i) for i in range(6)]
    web = service("web", 1, families=(6, 4))
    objects: list[Node | Pod | Service | EndpointSlice] = [
        node(1, zone="a"),
        node(2, zone="a"),
        node(3, zone="b", behaviours={"End.DT4"}),
        *pods,
        web,
        endpoint_slice(web, [endpoint(p) for p in pods[:4]]),
        endpoint_slice(web, [endpoint(p) for p in pods[3:]], suffix="b"),
        endpoint_slice(web, [endpoint(p, 4) for p in pods], 4),
    ]
    the_inputs = inputs(plan, [1, 2, 3], {web: 1}, interfaces=pods)
    forward = render(state_of(*objects), "node-1", the_inputs)
    backward = render(state_of(*reversed(objects)), "node-1", the_inputs)
    assert forward == backward
    assert len(segment_ends(forward, WEB_BSID)) == 6


# --- incremental ----------------------------------------------------------------------


def test_update_returns_what_changed_and_nothing_for_a_repeated_event() -> None:
    state, web, pods = web_cluster()
    renderer = Renderer(state, "node-1", inputs(IPV6_ONLY, [1, 2, 3], {web: 1}))
    before, _ = service_objects(renderer.config(), WEB_BSID)
    flipped = endpoint_slice(web, [endpoint(pods[0]), endpoint(pods[1], ready=False)])
    dirty = state.upsert_endpoint_slice(flipped)
    assert dirty == {ServiceKey("default", "web"), PodKey("default", "web-b")}
    delta = renderer.update(dirty)
    after, _ = service_objects(renderer.config(), WEB_BSID)
    assert delta.removed == {before} and delta.added == {after}
    assert not renderer.update(state.upsert_endpoint_slice(flipped))  # unchanged: no-op
    assert not renderer.update({ServiceKey("default", "web")})  # level-triggered: same result


def test_set_inputs_rerenders_what_the_difference_touches() -> None:
    state, web, _ = web_cluster()
    local = pod(IPV6_ONLY, "web-c", 1, 5)
    state.upsert_pod(local)
    renderer = Renderer(state, "node-1", inputs(IPV6_ONLY, [1, 2, 3], {}))
    assert not renderer.config().pods
    plugged = inputs(IPV6_ONLY, [1, 2, 3], {web: 1}, interfaces=[local])
    delta = renderer.set_inputs(plugged)
    assert {type(o) for o in delta.added} == {PodAttachment, EndDX6, SrPolicy, Steering}
    assert renderer.config() == render(state, "node-1", plugged)
    delta = renderer.set_inputs(dataclasses.replace(plugged, capabilities=VPP))
    assert renderer.config() == render(state, "node-1", renderer.inputs)
    assert {p.mode for p in renderer.config().policies} == {EncapMode.ENCAP_RED}


# --- the node-local BSID scheme -------------------------------------------------------


@given(
    local=st.integers(1, 1000),
    remote=st.integers(1, 1000),
    index=st.sampled_from([2, 3, 0x80, DUAL_STACK.pod_indexes[-1]]),
)
def test_node_bsids_are_on_the_local_locator_and_never_a_plan_sid(
    local: int, remote: int, index: int
) -> None:
    plan = DUAL_STACK
    bsids = {
        plan.node_policy_bsid(local, remote, 6),
        plan.node_policy_bsid(local, remote, 4),
        plan.pod_policy_bsid_v4(local, remote, index),
    }
    assert len(bsids) == 3
    # Each one traced back by the plan's inverse.
    assert plan.local_policy_of_bsid(plan.node_policy_bsid(local, remote, 6)) == (
        local,
        remote,
        6,
        None,
    )
    assert plan.local_policy_of_bsid(plan.node_policy_bsid(local, remote, 4)) == (
        local,
        remote,
        4,
        None,
    )
    bsid_v4 = plan.pod_policy_bsid_v4(local, remote, index)
    assert plan.local_policy_of_bsid(bsid_v4) == (local, remote, 4, index)
    assert plan.local_policy_of_bsid(plan.dt6_sid(local)) is None
    assert plan.local_policy_of_bsid(plan.service_bsid_v6(index)) is None
    plan_sids = {
        plan.end_sid(local),
        plan.dt6_sid(local),
        plan.dt4_sid(local),
        plan.pod_sid_dx6(local, index),
        plan.pod_sid_dx4(local, index),
        plan.service_bsid_v6(index),
        plan.service_bsid_v4(index),
    }
    for bsid in bsids:
        assert bsid not in plan_sids
        assert plan.node_of_sid(bsid) == local
        assert plan.pod_of_address(bsid) is None
        assert plan.service_of_bsid(bsid) is None
    # Injective in (remote, index): two pods never share a BSID.
    if remote > 1:
        assert plan.pod_policy_bsid_v4(local, remote - 1, index) not in bsids


def test_per_pod_bsids_refuse_node_ids_that_do_not_fit() -> None:
    plan = AddressPlan.from_mapping(
        {
            "podCIDRv6": "fd00::/32",
            "podCIDRv4": "10.0.0.0/8",
            "maxNodes": 5000,
            "nodePrefixLengthV4": 24,
            "sidBlock": "fcbb::/24",
        }
    )
    assert plan.pod_policy_bsid_v4(1, 4095, 2)
    with pytest.raises(ValueError, match="node ID 4096 does not fit"):
        plan.pod_policy_bsid_v4(1, 4096, 2)


@settings(max_examples=300)
@given(
    plan=st.sampled_from([DUAL_STACK, IPV6_ONLY]),
    node_id=st.integers(1, 1000),
    index=st.integers(0, 2**16),
    family=st.sampled_from([6, 4]),
    warm=st.booleans(),
)
def test_pod_sids_agree_with_the_plan(
    plan: AddressPlan, node_id: int, index: int, family: int, warm: bool
) -> None:
    sids = PodSids(plan)
    prefix = plan.pod_prefix_v6(node_id) if family == 6 else plan.pod_prefix_v4(node_id)
    if prefix is None:
        return
    if warm:  # the fast path: the prefix is already known
        sids.locate(prefix[plan.pod_indexes.start])
    address = prefix[index % prefix.num_addresses]
    assert sids.locate(address) == plan.pod_of_address(address)
    located = plan.pod_of_address(address)
    if located is not None:
        expected = plan.pod_sid_dx6(*located) if family == 6 else plan.pod_sid_dx4(*located)
        assert sids.sid(located, family) == expected


# --- incremental == full, after any sequence of events --------------------------------

LOCAL = "node-1"
NODE_IDS = {f"node-{n}": n for n in (1, 2, 3, 4)}
POD_NAMES = [f"p{i}" for i in range(8)]
SERVICE_NAMES = ["s0", "s1", "s2"]


class IncrementalRender(RuleBasedStateMachine):
    """Random cluster events; after each, the incremental renderer must equal a full render
    and the deltas it returned must add up to its config."""

    slices = Bundle("slices")

    def __init__(self) -> None:
        super().__init__()
        self.plan = DUAL_STACK
        self.state = ClusterState()
        self.interfaces = {  # every pod plugged in, until change_inputs unplugs one
            f"uid-{name}-{generation}": PodInterface(f"veth-{name}", f"/var/run/netns/{name}")
            for name in POD_NAMES
            for generation in (0, 1)
        }
        self.bsids: dict[str, ServiceBsids] = {
            f"svc-uid-default-{name}": ServiceBsids(
                self.plan.service_bsid_v6(j), self.plan.service_bsid_v4(j)
            )
            for j, name in enumerate(SERVICE_NAMES, 1)
        }
        self.node_ids = dict(NODE_IDS)
        self.capability_changes = 0
        self.node_port_addresses: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] | None
        self.node_port_addresses = None
        self.inputs = self._inputs(KERNEL)
        self.renderer = Renderer(self.state, LOCAL, self.inputs)
        self.applied: set[DataplaneObject] = set(self.renderer.config().objects())

    def _inputs(self, capabilities: Capabilities) -> RenderInputs:
        return RenderInputs(
            plan=self.plan,
            node_ids=dict(self.node_ids),
            service_bsids=dict(self.bsids),
            capabilities=capabilities,
            pod_interfaces=dict(self.interfaces),
            node_port_addresses=self.node_port_addresses,
        )

    @precondition(lambda self: self.capability_changes < 2)  # each one re-renders it all
    @rule(wide=st.booleans())
    def nodeport_addresses(self, wide: bool) -> None:
        self.capability_changes += 1
        self.node_port_addresses = (
            (ipaddress.ip_network("::/0"), ipaddress.ip_network("0.0.0.0/0")) if wide else None
        )
        self._set_inputs()

    def _apply(self, dirty: frozenset[object]) -> None:
        delta = self.renderer.update(dirty)  # type: ignore[arg-type]
        self._track(delta.added, delta.removed)

    def _track(
        self, added: frozenset[DataplaneObject], removed: frozenset[DataplaneObject]
    ) -> None:
        assert not (added & removed)
        assert removed <= self.applied
        self.applied = (self.applied - removed) | added

    @initialize()
    def nodes(self) -> None:
        for n in (1, 2, 3):
            self._apply(self.state.upsert_node(node(n, zone="a" if n < 3 else "b")))

    @rule(
        n=st.integers(1, 4),
        zone=st.sampled_from([None, "a", "b"]),
        dt4=st.booleans(),
        ipv6=st.booleans(),
        moved=st.booleans(),
        # An ExternalIP: its own, or one of the machine's shared VIPs (never steered then).
        external=st.sampled_from([(), ("2001:db8:e::{n}",), ("10.0.0.1",)]),
    )
    def upsert_node(
        self,
        n: int,
        zone: str | None,
        dt4: bool,
        ipv6: bool,
        moved: bool,
        external: tuple[str, ...],
    ) -> None:
        updated = node(n, zone=zone, behaviours={"End.DT4"} if dt4 else (), ipv6=ipv6)
        if moved:
            updated = dataclasses.replace(updated, internal_ipv4=V4(f"192.0.2.{n + 10}"))
        extra = tuple(ipaddress.ip_address(a.format(n=n)) for a in external)
        updated = dataclasses.replace(updated, all_addresses=extra)
        self._apply(self.state.upsert_node(updated))

    @rule(n=st.integers(1, 4))
    def delete_node(self, n: int) -> None:
        self._apply(self.state.delete_node(f"node-{n}"))

    @rule(
        name=st.sampled_from(POD_NAMES),
        n=st.sampled_from([1, 1, 1, 2, 3, 4]),  # mostly local: attachments are the subtle part
        k=st.integers(2, 4),
        host_network=st.booleans(),
        finished=st.booleans(),
        http=st.sampled_from([8080, 9090]),
        generation=st.sampled_from([0, 0, 0, 1]),
    )
    def upsert_pod(
        self,
        name: str,
        n: int,
        k: int,
        host_network: bool,
        finished: bool,
        http: int,
        generation: int,
    ) -> None:
        updated = pod(
            self.plan,
            name,
            n,
            k,
            host_network=host_network,
            phase="Succeeded" if finished else "Running",
            ports=[ContainerPort(http, name="http")],
            uid=f"uid-{name}-{generation}",
        )
        self._apply(self.state.upsert_pod(updated))

    @rule(name=st.sampled_from(POD_NAMES))
    def delete_pod(self, name: str) -> None:
        self._apply(self.state.delete_pod("default", name))

    @rule(
        name=st.sampled_from(SERVICE_NAMES),
        families=st.sampled_from([(6,), (4,), (6, 4)]),
        target_port=st.sampled_from([80, 8080, "http", "nope"]),
        itp=st.sampled_from(["Cluster", "Local"]),
        td=st.sampled_from([None, "PreferClose", "PreferSameNode"]),
        headless=st.booleans(),
        # Shared by every service (steered once), IPv4 too, and node addresses: node-4's
        # comes and goes, node-1's is this node's (neither may be steered).
        vips=st.sampled_from(
            [(), ("2001:db8:ee::1",), ("2001:db8:ee::1", "10.0.0.1"), ("2001:db8::4", "192.0.2.1")]
        ),
        etp=st.sampled_from(["Cluster", "Local"]),
        other_proxy=st.booleans(),
        node_port=st.booleans(),  # the API server gives each service its own
        ranges=st.sampled_from([(), ("2001:db8:c::/48",), ("2001:db8:c::/48", "10.1.0.0/16")]),
    )
    def upsert_service(
        self,
        name: str,
        families: tuple[int, ...],
        target_port: int | str,
        itp: str,
        td: str | None,
        headless: bool,
        vips: tuple[str, ...],
        etp: str,
        other_proxy: bool,
        node_port: bool,
        ranges: tuple[str, ...],
    ) -> None:
        j = SERVICE_NAMES.index(name) + 1
        proxy = {"service.kubernetes.io/service-proxy-name": "x"} if other_proxy else {}
        updated = service(
            name,
            j,
            families=families,
            ports=[
                ServicePort(
                    80, name="web", target_port=target_port, node_port=30000 + j if node_port else 0
                )
            ],
            internal_traffic_policy=itp,
            traffic_distribution=td,
            headless=headless,
            # Every service shares these VIPs: steered once per service, the first wins.
            load_balancer_ips=tuple(ipaddress.ip_address(v) for v in vips),
            external_traffic_policy=etp,
            load_balancer_source_ranges=tuple(ipaddress.ip_network(r) for r in ranges),
            labels=Labels(proxy),
        )
        self._apply(self.state.upsert_service(updated))

    @rule(name=st.sampled_from(SERVICE_NAMES))
    def delete_service(self, name: str) -> None:
        self._apply(self.state.delete_service("default", name))

    @rule(
        target=slices,
        name=st.sampled_from(SERVICE_NAMES),
        family=st.sampled_from([6, 4]),
        suffix=st.sampled_from(["a", "b"]),
        data=st.data(),
    )
    def upsert_slice(
        self, name: str, family: int, suffix: str, data: st.DataObject
    ) -> tuple[str, str]:
        entries = [self._endpoint(family, data) for _ in range(data.draw(st.integers(0, 5)))]
        # The service's port name (an outside endpoint is then translated), or another.
        ports = data.draw(
            st.sampled_from([(EndpointPort(8080, "TCP", "web"),)] * 3 + [(), (EndpointPort(81),)])
        )
        eps = EndpointSlice(
            namespace="default",
            name=f"{name}-v{family}{suffix}",
            service_name=name,
            address_type="IPv6" if family == 6 else "IPv4",
            endpoints=tuple(entries),
            ports=ports,
        )
        self._apply(self.state.upsert_endpoint_slice(eps))
        return ("default", eps.name)

    @rule(
        target=slices,
        name=st.sampled_from(SERVICE_NAMES),
        family=st.sampled_from([6, 4]),
        ready=st.booleans(),
    )
    def upsert_outside_slice(self, name: str, family: int, ready: bool) -> tuple[str, str]:
        """A hand-made slice naming an address outside the cluster, with the service's
        port: what client pods translate."""
        address = V6("2001:db8:ffff::2") if family == 6 else V4("198.51.100.2")
        eps = EndpointSlice(
            namespace="default",
            name=f"{name}-out{family}",
            service_name=name,
            address_type="IPv6" if family == 6 else "IPv4",
            endpoints=(Endpoint(addresses=(address,), ready=ready),),
            ports=(EndpointPort(5432, "TCP", "web"),),
        )
        self._apply(self.state.upsert_endpoint_slice(eps))
        return ("default", eps.name)

    def _endpoint(self, family: int, data: st.DataObject) -> Endpoint:
        """Mostly an existing pod (by its current address), sometimes a pod that is not
        there (yet), a node address (host-network) or an address nobody has."""
        kind = data.draw(st.sampled_from(["pod"] * 5 + ["absent", "node", "stranger", "stranger"]))
        name = data.draw(st.sampled_from(POD_NAMES))
        n = data.draw(st.integers(1, 4))
        existing = self.state.pod("default", name)
        address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None
        if kind == "pod" and existing is not None:
            address = existing.ipv6 if family == 6 else existing.ipv4
            n = int((existing.node_name or "node-1").removeprefix("node-"))
        elif kind == "node":
            address = V6(f"2001:db8::{n}") if family == 6 else V4(f"192.0.2.{n}")
        elif kind == "stranger":
            address = V6("2001:db8:ffff::1") if family == 6 else V4("198.51.100.1")
        if address is None:
            addresses = self.plan.pod(n, data.draw(st.integers(2, 4)))
            address = addresses.ipv6 if family == 6 else addresses.ipv4
        assert address is not None
        ready = data.draw(st.booleans())
        zone = data.draw(st.sampled_from([None, "a", "b"]))
        ref = data.draw(st.booleans())
        return Endpoint(
            addresses=(address,),
            ready=ready,
            serving=ready or data.draw(st.booleans()),
            terminating=data.draw(st.booleans()),
            node_name=f"node-{n}",
            zone=zone,
            target=PodRef("default", name, f"uid-{name}-0") if ref else None,
            hints_for_zones=frozenset({zone}) if zone and data.draw(st.booleans()) else frozenset(),
        )

    @rule(key=slices, data=st.data())
    def flip_readiness(self, key: tuple[str, str], data: st.DataObject) -> None:
        eps = self.state.endpoint_slices.get(key)
        if eps is None or not eps.endpoints:
            return
        i = data.draw(st.integers(0, len(eps.endpoints) - 1))
        flipped = dataclasses.replace(eps.endpoints[i], ready=not eps.endpoints[i].ready)
        changed = dataclasses.replace(
            eps, endpoints=(*eps.endpoints[:i], flipped, *eps.endpoints[i + 1 :])
        )
        self._apply(self.state.upsert_endpoint_slice(changed))

    @rule(key=consumes(slices))
    def delete_slice(self, key: tuple[str, str]) -> None:
        self._apply(self.state.delete_endpoint_slice(*key))

    def _set_inputs(self) -> None:
        self.inputs = self._inputs(self.inputs.capabilities)
        delta = self.renderer.set_inputs(self.inputs)
        self._track(delta.added, delta.removed)

    @rule(
        name=st.sampled_from(POD_NAMES),
        generation=st.integers(0, 1),
        plugged=st.booleans(),
        k=st.sampled_from([None, 2, 3]),  # with what CNI gave it: attached before it is seen
    )
    def plug_pod(self, name: str, generation: int, plugged: bool, k: int | None) -> None:
        uid = f"uid-{name}-{generation}"
        if plugged:
            given = self.plan.pod(1, k) if k is not None else None
            self.interfaces[uid] = PodInterface(
                f"veth-{name}",
                f"/var/run/netns/{name}",
                pod=f"default/{name}" if given else "",
                addresses=frozenset(
                    ipaddress.ip_interface(a) for a in (given.ipv6, given.ipv4) if a
                )
                if given
                else frozenset(),
            )
        else:
            self.interfaces.pop(uid, None)
        self._set_inputs()

    @rule(service_name=st.sampled_from(SERVICE_NAMES), allocated=st.booleans())
    def allocate_service(self, service_name: str, allocated: bool) -> None:
        j = SERVICE_NAMES.index(service_name) + 1
        service_uid = f"svc-uid-default-{service_name}"
        if allocated:
            self.bsids[service_uid] = ServiceBsids(
                self.plan.service_bsid_v6(j), self.plan.service_bsid_v4(j)
            )
        else:
            self.bsids.pop(service_uid, None)
        self._set_inputs()

    @rule(drop_node_4=st.booleans())
    def node_ids_change(self, drop_node_4: bool) -> None:
        self.node_ids = {k: v for k, v in NODE_IDS.items() if not (drop_node_4 and v == 4)}
        self._set_inputs()

    @precondition(lambda self: self.capability_changes < 2)  # each one re-renders it all
    @rule(capabilities=st.sampled_from([KERNEL, KERNEL_WITH_VRF, KERNEL_HOST, VPP, VPP_HOST]))
    def capabilities_change(self, capabilities: Capabilities) -> None:
        self.capability_changes += 1
        self.inputs = self._inputs(capabilities)
        delta = self.renderer.set_inputs(self.inputs)
        self._track(delta.added, delta.removed)

    @invariant()
    def incremental_equals_full(self) -> None:
        incremental = self.renderer.config()
        assert incremental == render(self.state, LOCAL, self.inputs)
        # And services render to what a backend can hold: no two routes, steerings or
        # rules claim one key. (Pods are left out: the machine may give two pods one
        # address, which ipam6 never does.)
        services = dataclasses.replace(incremental, pods=frozenset(), local_sids=frozenset())
        plan(services, NodeConfig())
        assert set(incremental.objects()) == self.applied
        # One attachment per pod interface (wired before or after the API showed it), or
        # plan would refuse the config. (Other kinds can collide here: the machine may give
        # two pods one address, which no cluster does.)
        assert len({p.key for p in incremental.pods}) == len(incremental.pods)
        # Services never contend for an address: each VIP is steered once, at most.
        steered = [s.key for s in incremental.steerings]
        assert len(set(steered)) == len(steered)


IncrementalRender.TestCase.settings = settings(
    max_examples=400,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_incremental_render_equals_full_render = IncrementalRender.TestCase


def test_node_key_rerenders_the_node_its_pods_and_host_network_services() -> None:
    state, web, _ = web_cluster(DUAL_STACK, families=(6, 4))
    renderer = Renderer(state, "node-1", inputs(DUAL_STACK, [1, 2, 3], {web: 1}))
    assert policy("fcbb:bb00:1::5002:2", "fcbb:bb00:2::4:2") in renderer.config().policies
    # node-2 starts publishing End.DT4: its pods' per-pod policies give way to one prefix.
    delta = renderer.update(state.upsert_node(node(2, behaviours={"End.DT4"})))
    assert policy("fcbb:bb00:1::5002:2", "fcbb:bb00:2::4:2") in delta.removed
    assert policy("fcbb:bb00:1::3000:2", "fcbb:bb00:2::4") in delta.added
    assert renderer.config() == render(state, "node-1", renderer.inputs)
    assert not renderer.update({NodeKey("node-2")})
