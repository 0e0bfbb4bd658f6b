"""The lab's fixed shape: underlay addresses, address plan and services.

Every lab has these; `LabOptions` chooses only how many nodes and pods, the families and
the dataplane.
"""

from __future__ import annotations

import ipaddress

from srv6ctl.lab.state import NodeRecord

UNDERLAY_V6 = ipaddress.IPv6Network("fd00:ff::/64")  # ULA: never routed off the lab
UNDERLAY_V4 = ipaddress.IPv4Network("192.0.2.0/24")  # TEST-NET-1 (RFC 5737)
PROBE_INDEX_V6, PROBE_INDEX_V4 = 0xFFFF, 254
PLAN_V6 = {"podCIDRv6": "fd00:10::/48", "serviceCIDRv6": "fd00:96::/108"}
PLAN_V4 = {"podCIDRv4": "10.128.0.0/14", "serviceCIDRv4": "10.96.0.0/16"}
SERVICES = (  # name, ClusterIPv6, ClusterIPv4, has backends
    ("web", "fd00:96::10", "10.96.0.10", True),
    ("empty", "fd00:96::11", "10.96.0.11", False),
)
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
