"""The lab's fixed shape: underlay addresses, address plan and services.

Every lab has these; `LabOptions` chooses only how many nodes and pods, the families and
the dataplane.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from srv6ctl.lab.state import NodeRecord

UNDERLAY_V6 = ipaddress.IPv6Network("fd00:ff::/64")  # ULA: never routed off the lab
UNDERLAY_V4 = ipaddress.IPv4Network("192.0.2.0/24")  # TEST-NET-1 (RFC 5737)
PROBE_INDEX_V6, PROBE_INDEX_V4 = 0xFFFF, 254
# A second address of the external client, outside every loadBalancerSourceRanges: the
# source the ranges must refuse.
STRANGER_INDEX_V6, STRANGER_INDEX_V4 = 0xFFFE, 253
PLAN_V6 = {"podCIDRv6": "fd00:10::/48", "serviceCIDRv6": "fd00:96::/108"}
PLAN_V4 = {"podCIDRv4": "10.128.0.0/14", "serviceCIDRv4": "10.96.0.0/16"}
# External VIPs (LoadBalancer ingress IPs, externalIPs): outside every lab prefix, routed
# from the probe — the lab's external client — to the nodes, as the router in front of a
# cluster routes what its load balancer announces.
EXTERNAL_V6 = ipaddress.IPv6Network("fd00:ee::/64")
EXTERNAL_V4 = ipaddress.IPv4Network("198.51.100.0/24")  # TEST-NET-2 (RFC 5737)


@dataclass(frozen=True)
class LabService:
    name: str
    cluster_ipv6: str
    cluster_ipv4: str
    with_backends: bool = True
    selects: str | None = None  # the backends' app label, when not the service's name
    type: str = "ClusterIP"
    load_balancer: tuple[str, ...] = ()  # its VIPs, IPv6 first
    external: tuple[str, ...] = ()  # externalIPs
    external_traffic_policy: str = "Cluster"
    health_check_node_port: int = 0
    # One per lab service port (lab/objects.SERVICE_PORTS), in its order: a LoadBalancer
    # gets node ports too (allocateLoadBalancerNodePorts defaults to true).
    node_ports: tuple[int, ...] = ()
    source_ranges: tuple[str, ...] = ()  # loadBalancerSourceRanges
    affinity: int = 0  # sessionAffinity ClientIP with this timeoutSeconds; 0: None
    # Endpoints on these nodes' own stacks (kube-apiserver's, behind `kubernetes`), by
    # index into the lab's nodes: the node's InternalIP, a server in its namespace.
    host_endpoints: tuple[int, ...] = ()
    # Its endpoint is outside the cluster, neither pod nor node (a database named by a
    # hand-made EndpointSlice, a managed control plane): the probe's own addresses, a
    # server there. No selector. Client pods translate it (model.Translation).
    outside: bool = False


SERVICES = (
    # The backends: a LoadBalancer (externalTrafficPolicy Cluster) with an externalIP too.
    LabService(
        "web",
        "fd00:96::10",
        "10.96.0.10",
        type="LoadBalancer",
        load_balancer=("fd00:ee::10", "198.51.100.10"),
        external=("fd00:ee::20", "198.51.100.20"),
        node_ports=(30080, 30081, 30007, 30008),
    ),
    LabService("empty", "fd00:96::11", "10.96.0.11", with_backends=False),
    # The same backends, externalTrafficPolicy Local: external traffic stays on the node
    # it enters, which the probe picks by the service's health check port.
    LabService(
        "web-local",
        "fd00:96::12",
        "10.96.0.12",
        selects="web",
        type="LoadBalancer",
        load_balancer=("fd00:ee::11", "198.51.100.11"),
        external_traffic_policy="Local",
        health_check_node_port=32100,
        node_ports=(31080, 31081, 31007, 31008),
        # The external client's own addresses only: its second one is refused.
        source_ranges=(f"{UNDERLAY_V6[PROBE_INDEX_V6]}/128", f"{UNDERLAY_V4[PROBE_INDEX_V4]}/32"),
    ),
    # The same backends again, sessionAffinity ClientIP: each client keeps its backend.
    LabService("web-sticky", "fd00:96::13", "10.96.0.13", selects="web", affinity=600),
    # As kubeadm makes it: the service CIDR's first address, single-stack (the primary
    # family), the API server on the first node's host network; the node rewrites the
    # service port to its (80 → 8080, as 443 → 6443).
    LabService("kubernetes", "fd00:96::1", "", with_backends=False, host_endpoints=(0,)),
    LabService("outside", "fd00:96::14", "10.96.0.14", with_backends=False, outside=True),
)
OUTSIDE_SERVER = "outside"  # the probe's server's name in its answers
BACKEND_SERVICE = "web"


def underlay_v6(index: int) -> str:
    return str(UNDERLAY_V6[index])


def underlay_v4(index: int) -> str:
    return str(UNDERLAY_V4[index])


def node_addresses(node: NodeRecord) -> list[str]:
    """The node's underlay addresses, with their prefix lengths."""
    addresses = [f"{node.internal_ipv6}/64"]
    if node.internal_ipv4:
        addresses.append(f"{node.internal_ipv4}/24")
    return addresses
