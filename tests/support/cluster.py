"""Small builders for cluster objects and render inputs, with the lab's address plan.

Addresses are the plan's, so expectations in tests can be written out by hand:
node N's locator is fcbb:bb00:N::/48, its pods fd00:10:0:N::k and 10.128.N.k, their SIDs
fcbb:bb00:N::1:k (End.DX6) and fcbb:bb00:N::4:k (End.DX4); node N's InternalIPs are
2001:db8::N and 192.0.2.N; service j's BSIDs fcbb:bb00::6000:j and fcbb:bb00::4000:j.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from typing import Any

from ipam6.plan import AddressPlan
from srv6ctl.dataplane.model import Capabilities, EncapMode
from srv6ctl.render import PodInterface, RenderInputs, ServiceBsids
from srv6ctl.state import (
    ClusterState,
    ContainerPort,
    Endpoint,
    EndpointPort,
    EndpointSlice,
    Node,
    Pod,
    PodRef,
    Service,
    ServicePort,
)

DUAL_STACK = AddressPlan.from_mapping(
    {
        "podCIDRv6": "fd00:10::/48",
        "podCIDRv4": "10.128.0.0/14",
        "serviceCIDRv6": "fd00:96::/108",
        "serviceCIDRv4": "10.96.0.0/16",
    }
)
IPV6_ONLY = AddressPlan.from_mapping(
    {"podCIDRv6": "fd00:10::/48", "serviceCIDRv6": "fd00:96::/108"}
)

KERNEL = Capabilities(
    behaviours=frozenset({"End", "End.DT6", "End.DX6", "End.DX4"}),
    rules=True,
    affinity=True,
    port_maps=True,
    translations=True,
)
KERNEL_WITH_VRF = Capabilities(
    behaviours=frozenset({"End", "End.DT6", "End.DT4", "End.DX6", "End.DX4"}),
    rules=True,
    affinity=True,
    port_maps=True,
    translations=True,
)
VPP = Capabilities(
    behaviours=frozenset({"End", "End.DT6", "End.DT4", "End.DX6", "End.DX4"}),
    encap_modes=frozenset({EncapMode.ENCAP, EncapMode.ENCAP_RED}),
    rules=True,
    affinity=True,
)


def node(
    n: int,
    zone: str | None = None,
    behaviours: Iterable[str] = (),
    ipv6: bool = True,
) -> Node:
    return Node(
        name=f"node-{n}",
        uid=f"node-uid-{n}",
        internal_ipv6=ipaddress.IPv6Address(f"2001:db8::{n}") if ipv6 else None,
        internal_ipv4=ipaddress.IPv4Address(f"192.0.2.{n}"),
        zone=zone,
        sr_behaviours=frozenset(behaviours),
    )


def pod(
    plan: AddressPlan,
    name: str,
    n: int,
    k: int,
    *,
    namespace: str = "default",
    ports: Iterable[ContainerPort] = (),
    host_network: bool = False,
    phase: str = "Running",
    uid: str | None = None,
) -> Pod:
    if host_network:
        ips: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...] = (
            ipaddress.IPv6Address(f"2001:db8::{n}"),
            ipaddress.IPv4Address(f"192.0.2.{n}"),
        )
    else:
        addresses = plan.pod(n, k)
        ips = tuple(a for a in (addresses.ipv6, addresses.ipv4) if a is not None)
    return Pod(
        uid=uid or f"uid-{namespace}-{name}",
        namespace=namespace,
        name=name,
        node_name=f"node-{n}",
        ips=ips,
        ready=True,
        host_network=host_network,
        container_ports=tuple(ports),
        phase=phase,
    )


def service(
    name: str,
    j: int,
    *,
    families: Iterable[int] = (6,),
    ports: Iterable[ServicePort] = (ServicePort(80),),
    namespace: str = "default",
    internal_traffic_policy: str = "Cluster",
    traffic_distribution: str | None = None,
    headless: bool = False,
    **fields: Any,
) -> Service:
    ips: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    for family in families:
        ips.append(
            ipaddress.IPv6Address(f"fd00:96::{j:x}")
            if family == 6
            else ipaddress.IPv4Address(f"10.96.0.{j}")
        )
    return Service(
        uid=f"svc-uid-{namespace}-{name}",
        namespace=namespace,
        name=name,
        cluster_ips=() if headless else tuple(ips),
        ports=tuple(ports),
        internal_traffic_policy=internal_traffic_policy,
        traffic_distribution=traffic_distribution,
        headless=headless,
        **fields,
    )


def endpoint(
    target: Pod,
    family: int = 6,
    *,
    ready: bool = True,
    serving: bool | None = None,
    terminating: bool = False,
    zone: str | None = None,
    hints: Iterable[str] = (),
    with_ref: bool = True,
) -> Endpoint:
    address = target.ipv6 if family == 6 else target.ipv4
    assert address is not None
    return Endpoint(
        addresses=(address,),
        ready=ready,
        serving=ready if serving is None else serving,
        terminating=terminating,
        node_name=target.node_name,
        zone=zone,
        target=PodRef(target.namespace, target.name, target.uid) if with_ref else None,
        hints_for_zones=frozenset(hints),
    )


def endpoint_slice(
    svc: Service,
    endpoints: Iterable[Endpoint],
    family: int = 6,
    suffix: str = "a",
    ports: Iterable[EndpointPort] | None = None,
) -> EndpointSlice:
    """A slice of `svc`'s; its ports, unless given, as the controller resolves the
    Service's numeric targetPorts (a named one needs the pods: give `ports`)."""
    if ports is None:
        ports = (
            EndpointPort(p.target_port, p.protocol, p.name)
            for p in svc.ports
            if isinstance(p.target_port, int)
        )
    return EndpointSlice(
        namespace=svc.namespace,
        name=f"{svc.name}-v{family}{suffix}",
        service_name=svc.name,
        address_type="IPv6" if family == 6 else "IPv4",
        endpoints=tuple(endpoints),
        ports=tuple(ports),
    )


def inputs(
    plan: AddressPlan,
    nodes: Iterable[int],
    services: Mapping[Service, int] | None = None,
    capabilities: Capabilities = KERNEL,
    interfaces: Iterable[Pod] = (),
) -> RenderInputs:
    """Render inputs: node-N has ID N, each service its BSIDs for index j, and every pod
    in `interfaces` is plugged in as veth-<name>."""
    return RenderInputs(
        plan=plan,
        node_ids={f"node-{n}": n for n in nodes},
        service_bsids={
            s.uid: ServiceBsids(
                plan.service_bsid_v6(j), plan.service_bsid_v4(j) if plan.dual_stack else None
            )
            for s, j in (services or {}).items()
        },
        capabilities=capabilities,
        pod_interfaces={
            p.uid: PodInterface(f"veth-{p.name}", f"/var/run/netns/{p.name}") for p in interfaces
        },
    )


def state_of(*objects: Node | Pod | Service | EndpointSlice) -> ClusterState:
    state = ClusterState()
    for obj in objects:
        state.upsert(obj)
    return state
