"""`PortMap`s in the kernel backend: the node's own stack rewrites a Service's port to its
host-network endpoint's (the `kubernetes` Service: 443 → 6443), without state.

No SRv6 needed: the ClusterIP is a local address of the node here (End.DT6 `L::7` makes
it one in the lab), and a client namespace connects to it over a veth with real sockets.
"""

from __future__ import annotations

import errno
import socket
import subprocess
from collections.abc import Iterator

import pytest

from srv6ctl.dataplane import host_ports
from srv6ctl.dataplane.kernel import KernelBackend
from srv6ctl.dataplane.model import (
    HOST_LOOP_DEVICE,
    HOST_LOOP_GATEWAY,
    NodeConfig,
    PortMap,
    Route,
    RouteKind,
    Rule,
    Translation,
)
from srv6ctl.dataplane.reconcile import plan
from tests.support.netns import Netns, NetnsFactory, open_in

pytestmark = [pytest.mark.netns]

CLUSTER6, CLUSTER4 = "fd00:96::1", "10.96.0.1"
NODE6, CLIENT6 = "2001:db8:7::1", "2001:db8:7::2"
NODE4, CLIENT4 = "192.0.2.1", "192.0.2.2"
API_PORT, SERVICE_PORT = 6443, 443


@pytest.fixture
def wired(netns_factory: NetnsFactory) -> Iterator[tuple[Netns, Netns]]:
    """A node holding the ClusterIPs as local addresses, a server on API_PORT (all
    addresses, as kube-apiserver listens), and a client routed to the ClusterIPs."""
    node, client = netns_factory(), netns_factory()
    netns_factory.veth(node, "up0", client, "up1")
    node.ip("addr", "add", f"{NODE6}/64", "dev", "up0", "nodad")
    node.ip("addr", "add", f"{NODE4}/24", "dev", "up0")
    node.ip("addr", "add", f"{CLUSTER6}/128", "dev", "lo")
    node.ip("addr", "add", f"{CLUSTER4}/32", "dev", "lo")
    client.ip("addr", "add", f"{CLIENT6}/64", "dev", "up1", "nodad")
    client.ip("addr", "add", f"{CLIENT4}/24", "dev", "up1")
    client.ip("route", "add", f"{CLUSTER6}/128", "via", NODE6)
    client.ip("route", "add", f"{CLUSTER4}/32", "via", NODE4)

    server = open_in(node.name, lambda: _listen_everywhere(API_PORT))
    try:
        yield node, client
    finally:
        server.close()


def _listen_everywhere(port: int) -> socket.socket:
    """A TCP listener on every address, both families (as kube-apiserver listens)."""
    sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.bind(("::", port))
    sock.listen(16)
    return sock


def _restart_reads_back_then_clears(node: Netns, desired: NodeConfig) -> None:
    """A restarted agent reads the table back and plans nothing; clearing removes it."""
    with KernelBackend(node.name, configure_sysctls=False) as again:
        assert again.dump() == desired
        assert plan(desired, again.dump()) == []
        again.apply(plan(NodeConfig(), again.dump()))
        assert host_ports.TABLE not in node.exec("nft", "list", "tables").stdout


def _connect(client: Netns, address: str, port: int) -> int:
    def attempt() -> int:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            return sock.connect_ex((address, port))

    return open_in(client.name, attempt)


def test_the_nodes_stack_answers_the_service_port_for_its_endpoint(
    wired: tuple[Netns, Netns],
) -> None:
    node, client = wired
    with KernelBackend(node.name, configure_sysctls=False) as backend:
        assert backend.capabilities.port_maps
        for address in (CLUSTER6, CLUSTER4):
            assert _connect(client, address, SERVICE_PORT) == errno.ECONNREFUSED
        desired = NodeConfig(
            port_maps=frozenset(
                PortMap("TCP", address, SERVICE_PORT, API_PORT) for address in (CLUSTER6, CLUSTER4)
            )
        )
        backend.apply(plan(desired, backend.dump()))
        # The handshake completes: the SYN reached API_PORT, the SYN-ACK left from 443.
        for address in (CLUSTER6, CLUSTER4):
            assert _connect(client, address, SERVICE_PORT) == 0
        assert backend.dump() == desired
    _restart_reads_back_then_clears(node, desired)
    assert _connect(client, CLUSTER6, SERVICE_PORT) == errno.ECONNREFUSED


DB6, DB4 = "2001:db8:9::5", "198.51.100.5"  # outside the cluster, beyond the node's uplink
DB_PORT = 5432


def test_the_nodes_own_connections_translate_to_endpoints_outside_the_cluster(
    netns_factory: NetnsFactory,
) -> None:
    """A host-network client of a Service whose endpoint is outside the cluster: the
    ClusterIP's route for locally made packets goes onto the host loop (render), the
    output hook DNATs to the endpoint, and the endpoint sees the node's own address; the
    main table's PROHIBIT still refuses everyone else."""
    node, outside = netns_factory(), netns_factory()
    netns_factory.veth(node, "up0", outside, "up1")
    node.ip("addr", "add", "2001:db8:9::1/64", "dev", "up0", "nodad")
    node.ip("addr", "add", "198.51.100.1/24", "dev", "up0")
    outside.ip("addr", "add", f"{DB6}/64", "dev", "up1", "nodad")
    outside.ip("addr", "add", f"{DB4}/24", "dev", "up1")
    cluster_ips = (CLUSTER6, CLUSTER4)

    def peer_seen(server: socket.socket, address: str) -> str:
        """Connect from the node to address:DB_PORT; the peer the server accepted."""

        def attempt() -> int:
            family = socket.AF_INET6 if ":" in address else socket.AF_INET
            with socket.socket(family, socket.SOCK_STREAM) as sock:
                sock.settimeout(5)
                return sock.connect_ex((address, DB_PORT))

        assert open_in(node.name, attempt) == 0
        server.settimeout(5)
        accepted, peer = server.accept()
        accepted.close()
        return str(peer[0]).removeprefix("::ffff:")

    server = open_in(outside.name, lambda: _listen_everywhere(DB_PORT))
    try:
        with KernelBackend(node.name, configure_sysctls=False) as backend:
            assert backend.capabilities.translations and backend.capabilities.host_loop
            desired = NodeConfig(
                translations=frozenset(
                    Translation("TCP", address, DB_PORT, ((target, DB_PORT),), affinity)
                    for address, target, affinity in ((CLUSTER6, DB6, 60), (CLUSTER4, DB4, 0))
                ),
                rules=frozenset(Rule(f"{a}/{_len(a)}", 94, iif="lo") for a in cluster_ips),
                routes=frozenset(
                    route
                    for a in cluster_ips
                    for route in (
                        Route(f"{a}/{_len(a)}", kind=RouteKind.PROHIBIT),
                        Route(
                            f"{a}/{_len(a)}",
                            via=HOST_LOOP_GATEWAY,
                            interface=HOST_LOOP_DEVICE,
                            table=94,
                        ),
                    )
                ),
            )
            backend.apply(plan(desired, backend.dump()))
            assert peer_seen(server, CLUSTER6) == "2001:db8:9::1"  # the node's own address
            assert peer_seen(server, CLUSTER4) == "198.51.100.1"
            # A port it does not translate goes round the loop to the main table's
            # prohibit route: refused by ICMP "administratively prohibited" (IPv6: EACCES;
            # IPv4's error table maps the code to EHOSTUNREACH) on a node that forwards,
            # as every node does (the agent's sysctls). Without IPv4 forwarding the kernel
            # drops it at the loop's far end with no ICMP error (ip_error on a device that
            # does not forward: seen on 6.18), and the client waits.
            node.exec("sysctl", "-qw", "net.ipv4.conf.all.forwarding=1")
            assert _connect(node, CLUSTER6, DB_PORT + 1) == errno.EACCES
            assert _connect(node, CLUSTER4, DB_PORT + 1) == errno.EHOSTUNREACH
            assert backend.dump() == desired
        _restart_reads_back_then_clears(node, desired)  # the translations' affinity too
    finally:
        server.close()


def _len(address: str) -> int:
    return 128 if ":" in address else 32


LB6, LB4 = "fd00:ee::5", "198.51.100.200"  # an endpoint-less Service's load balancer IPs


def test_the_kernel_behind_vpp_refuses_an_endpoint_less_load_balancer_ip(
    wired: tuple[Netns, Netns],
) -> None:
    """kube-proxy REJECTs external traffic to a Service without endpoints: *connection
    refused*. Behind VPP, which punts such a load balancer IP to the node's kernel, the
    node's table (`host_ports.script(..., refuse_inbound=True)`, as `vpp_host` writes it)
    refuses it at prerouting, before any route: a TCP reset, ICMP port unreachable for
    UDP, where the route alone answers "administratively prohibited" (EACCES)."""
    node, client = wired
    node.exec("sysctl", "-qw", "net.ipv6.conf.all.forwarding=1", "net.ipv4.ip_forward=1")
    for address in (LB6, LB4):
        via = NODE6 if ":" in address else NODE4
        client.ip("route", "add", f"{address}/{_len(address)}", "via", via)
        node.ip("route", "add", "prohibit", f"{address}/{_len(address)}")
    assert _connect(client, LB6, 80) == errno.EACCES
    refusals = [
        Translation(protocol, address, 80, ())
        for address in (LB6, LB4)
        for protocol in ("TCP", "UDP")
    ]
    subprocess.run(
        ["ip", "netns", "exec", node.name, "nft", "-f", "-"],
        input=host_ports.script([], refusals, refuse_inbound=True),
        text=True,
        check=True,
    )
    for address in (LB6, LB4):
        assert _connect(client, address, 80) == errno.ECONNREFUSED, address
        assert _udp_refused(client, address, 80), address
    assert _connect(client, LB6, 81) == errno.EACCES  # not a port of the Service
    listing = node.exec("nft", "-j", "list", "table", "inet", host_ports.TABLE).stdout
    assert set(host_ports.parse_translations_listing(listing)) == set(refusals)


def _udp_refused(client: Netns, address: str, port: int) -> bool:
    """A connected UDP socket's datagram to address:port, answered by ICMP port
    unreachable: its next receive fails with ECONNREFUSED."""

    def attempt() -> bool:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.settimeout(3)
            sock.connect((address, port))
            sock.send(b"ping")
            try:
                sock.recv(64)
            except ConnectionRefusedError:
                return True
            except TimeoutError:
                return False
            return False

    return open_in(client.name, attempt)
