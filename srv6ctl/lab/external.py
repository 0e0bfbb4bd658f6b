"""What a real cluster has in front of it: a router to the services' external VIPs.

The lab's probe (`s6lab-probe`, a host on the underlay that is not a node) is the external
client, and its routing table plays the router a load balancer (MetalLB in BGP mode, a
cloud's) programs: each LoadBalancer ingress IP and externalIP of a service is routed to
the nodes, ECMP over every node for externalTrafficPolicy Cluster, and for Local over the
nodes whose `healthCheckNodePort` answers 200 — asked over HTTP from the probe, as a load
balancer's health checker asks. New connections spread over the entry nodes as they would
behind a router (`SPREAD_CONNECTIONS`).

VPP mode: VPP owns the node's uplink, and hands the node's kernel namespace (where the agent
serves the health check port) what it has no use for through the host interconnect
(srv6ctl/dataplane/vpp_host.py): the probe asks the same port the same way.

The same router routes the pod CIDRs to the nodes (ECMP over all of them: each node sends
a packet for another node's pod on through SRv6), as BGP would announce them (issue 20): a
Service endpoint outside the cluster, which the probe's server plays, answers the client
pod's own address.

`route_external` is called whenever the backends may have moved (build, `lab scale`).
"""

from __future__ import annotations

import ipaddress
import json
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field

from srv6ctl.dataplane.nsenter import ensure_sysctls, run_in_netns
from srv6ctl.lab import netns
from srv6ctl.lab.shape import PLAN_V4, PLAN_V6
from srv6ctl.lab.state import LabState, NodeRecord, ServiceRecord

# Flows spread over the entry nodes by their 5-tuple (hash policy 1), as a router's ECMP
# hashes what it forwards. The probe is a host, though: an IPv6 connect() looks its route
# up before the kernel picks a source port, so a client that wants its connections spread
# binds the port first (verify's external checks do).
SPREAD_CONNECTIONS = {
    "net.ipv6.fib_multipath_hash_policy": "1",
    "net.ipv4.fib_multipath_hash_policy": "1",
}


@dataclass(frozen=True)
class HealthAnswer:
    status: int
    body: dict[str, object]
    headers: dict[str, str] = field(default_factory=dict)  # names in lower case


def health_check(probe: str, address: str, port: int, timeout: float = 2.0) -> HealthAnswer:
    """GET http://address:port/healthz from the probe's namespace (status 0: no answer)."""

    def exchange() -> bytes:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect((address, port))
            sock.sendall(f"GET /healthz HTTP/1.0\r\nHost: {address}\r\n\r\n".encode())
            chunks = []
            while chunk := sock.recv(4096):
                chunks.append(chunk)
            return b"".join(chunks)

    try:
        raw = run_in_netns(netns.netns_path(probe), exchange)
    except OSError:
        return HealthAnswer(0, {})
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode(errors="replace").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines)}
    try:
        return HealthAnswer(int(status_line.split(" ", 2)[1]), json.loads(body), headers)
    except (IndexError, ValueError):
        return HealthAnswer(0, {})


def node_address(node: NodeRecord, family: int) -> str | None:
    return node.internal_ipv6 if family == 6 else node.internal_ipv4


def healthy(probe: str, node: NodeRecord, port: int) -> bool:
    """Whether `node`'s health check port answers 200 to the probe (a Local service has
    an endpoint there)."""
    return health_check(probe, node.internal_ipv6, port).status == 200


def entry_nodes(state: LabState, service: ServiceRecord) -> list[NodeRecord]:
    """The nodes the router sends the service's external traffic to."""
    if service.external_traffic_policy != "Local":
        return list(state.nodes)
    port = service.health_check_node_port
    return [n for n in state.nodes if healthy(state.probe_netns, n, port)]


def vip_route(vip: str, nodes: Sequence[NodeRecord]) -> str:
    """The `ip -batch` line routing `vip` to `nodes` (ECMP over their addresses of its
    family), or making it unreachable where there is none."""
    family = ipaddress.ip_address(vip).version
    host = f"{vip}/{128 if family == 6 else 32}"
    vias = [a for a in (node_address(n, family) for n in nodes) if a]
    if not vias:
        return f"route replace unreachable {host}"
    return f"route replace {host} " + " ".join(f"nexthop via {via}" for via in vias)


def route_external(state: LabState) -> dict[str, list[str]]:
    """Route every external VIP from the probe to its entry nodes, and the pod CIDRs to
    every node; returns VIP → nodes."""
    ensure_sysctls(netns.netns_path(state.probe_netns), SPREAD_CONNECTIONS)
    routed: dict[str, list[str]] = {}
    commands = []
    for family, cidr in ((6, PLAN_V6["podCIDRv6"]), (4, PLAN_V4["podCIDRv4"])):
        vias = [a for a in (node_address(n, family) for n in state.nodes) if a]
        if vias:
            hops = " ".join(f"nexthop via {via}" for via in vias)
            commands.append(f"route replace {cidr} {hops}")
    for service in state.services:
        nodes = entry_nodes(state, service)
        for family in (6, 4):
            for vip in service.external_vips(family):
                routed[vip] = [n.name for n in nodes]
                commands.append(vip_route(vip, nodes))
    if commands:
        netns.ip_batch(state.probe_netns, commands)
    return routed


__all__ = [
    "HealthAnswer",
    "entry_nodes",
    "health_check",
    "healthy",
    "route_external",
    "vip_route",
]
