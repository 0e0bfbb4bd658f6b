"""The host interconnect against a real VPP (srv6ctl/dataplane/vpp_host.py): the node's own
stack behind the VPP that owns its uplink reaches the underlay, the pods and the Services
VPP steers, and what arrives for the node's addresses that VPP does not serve itself (TCP,
UDP) reaches the node's kernel — with real sockets, and the peer's own address seen.

Needs `SRV6CTL_VPP_BIN` and `SRV6CTL_VPP_DATAPATH=1` (tests/support/vpp.py)."""

from __future__ import annotations

import errno
import ipaddress
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial

import pytest

from cni.wiring import set_tx_checksum
from srv6ctl.dataplane import host_link
from srv6ctl.dataplane.host_link import UPLINKS_TABLE, default_routes
from srv6ctl.dataplane.model import (
    Change,
    EncapMode,
    EndDX6,
    NodeConfig,
    Op,
    Route,
    RouteKind,
    SegmentList,
    SrPolicy,
    Steering,
    Translation,
)
from srv6ctl.dataplane.vpp import VppBackend
from srv6ctl.dataplane.vpp_host import HOST_TAG, HostInterconnect
from tests.support.netns import open_in, run
from tests.support.vpp import (
    BSID,
    NODE,
    PEER,
    POD4,
    POD6,
    SOURCE,
    Lab,
    Target,
    reconcile,
)

NODE4 = ipaddress.IPv4Address("192.0.2.1")
PEER4 = ipaddress.IPv4Address("192.0.2.2")
CLUSTER_IP = ipaddress.IPv6Address("fd00:96::10")
SETTINGS = HostInterconnect(
    name="s6thost0",
    routes=default_routes([ipaddress.ip_network("fd00:96::/112")], metric=4096),
)


@dataclass
class Host:
    lab: Lab
    backend: VppBackend
    netns: str  # VPP's: the node's own stack


@pytest.fixture
def host(vpp: Target, lab: Lab) -> Iterator[Host]:
    assert vpp.netns is not None
    lab.backend.cli(f"set interface ip address {lab.uplink} {NODE4}/24")
    run("ip", "-n", lab.peer, "addr", "add", f"{PEER4}/24", "dev", "p0")
    # Checksums filled in by the sender, as a NIC's are (a veth leaves them to "the
    # hardware", and VPP's af_packet passes them on unfilled: cni/wiring.py).
    open_in(lab.peer, partial(set_tx_checksum, "p0", False))
    open_in(lab.pod.name, partial(set_tx_checksum, "eth0", False))  # as srv6-cni does
    with vpp.backend(host=SETTINGS) as backend:
        try:
            yield Host(lab, backend, vpp.netns)
        finally:
            backend._host.remove()  # type: ignore[union-attr]


def _listen(netns: str, family: int, kind: int, address: str, port: int = 0) -> socket.socket:
    def make() -> socket.socket:
        sock = socket.socket(family, kind)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address, port))
        if kind == socket.SOCK_STREAM:
            sock.listen(8)
        sock.settimeout(5)
        return sock

    return open_in(netns, make)


def _tcp(client_netns: str, server_netns: str, server: str, source: str) -> str:
    """A TCP connection from `client_netns` to a listener in `server_netns` at `server`;
    the peer address the server saw."""
    return _tcp_via(client_netns, server_netns, server, None, server, 0, source)


def _tcp_via(
    client_netns: str,
    server_netns: str,
    destination: str,
    destination_port: int | None,
    server: str,
    server_port: int,
    source: str = "::",
) -> str:
    """A TCP connection to `destination` (port: the listener's when None), which a
    listener in `server_netns` at `server` answers; the peer address it saw."""
    family = socket.AF_INET6 if ":" in server else socket.AF_INET
    listener = _listen(server_netns, family, socket.SOCK_STREAM, server, server_port)
    port = listener.getsockname()[1]
    seen: list[str] = []

    def accept() -> None:
        conn, peer = listener.accept()
        with conn:
            seen.append(peer[0])
            conn.sendall(conn.recv(64))

    thread = threading.Thread(target=accept)
    thread.start()
    try:
        client = open_in(client_netns, lambda: socket.socket(family, socket.SOCK_STREAM))
        with client:
            client.settimeout(5)
            client.bind((source, 0))
            client.connect((destination, port if destination_port is None else destination_port))
            client.sendall(b"hello")
            assert client.recv(64) == b"hello"
    finally:
        thread.join(6)
        listener.close()
    return seen[0]


def _udp(client_netns: str, server_netns: str, server: str) -> str:
    family = socket.AF_INET6 if ":" in server else socket.AF_INET
    listener = _listen(server_netns, family, socket.SOCK_DGRAM, server)
    with listener:
        port = listener.getsockname()[1]
        client = open_in(client_netns, lambda: socket.socket(family, socket.SOCK_DGRAM))
        with client:
            client.settimeout(5)
            client.sendto(b"ping", (server, port))
            data, peer = listener.recvfrom(64)
            listener.sendto(data, peer)
            assert client.recv(64) == b"ping"
            return str(peer[0])


def test_the_kernel_side_holds_the_node_addresses_and_routes_to_vpp(host: Host) -> None:
    shown = run("ip", "-n", host.netns, "addr", "show", "dev", SETTINGS.name).stdout
    assert f"{SOURCE}/128" in shown and f"{NODE4}/32" in shown
    routes = run("ip", "-n", host.netns, "-6", "route", "show", "dev", SETTINGS.name).stdout
    assert f"default via fe80::1 proto 92 src {SOURCE} metric 4096" in routes
    assert f"fd00:96::/112 via fe80::1 proto 92 src {SOURCE} metric 1024" in routes
    routes4 = run("ip", "-n", host.netns, "-4", "route", "show", "dev", SETTINGS.name).stdout
    assert f"default via inet6 fe80::1 proto 92 src {NODE4} metric 4096" in routes4
    tags = {
        str(d.tag) for d in host.backend.channel.dump("sw_interface_dump", sw_if_index=0xFFFFFFFF)
    }
    # VPP's end names the kernel device it was made on (a pair made again is followed).
    assert f"{HOST_TAG}:{host_link.index_of(SETTINGS.peer, host.netns)}" in tags
    # The kernel's stack is kept off the uplink VPP reads by af_packet (it holds the
    # node's addresses now, and would answer for them there too).
    table = run("ip", "netns", "exec", host.netns, "nft", "list", "table", "netdev", UPLINKS_TABLE)
    device = host.lab.uplink.removeprefix("host-")
    assert f'hook ingress device "{device}" priority filter; policy drop;' in table.stdout


def test_the_underlay_reaches_the_node_stack_through_vpp_and_back(host: Host) -> None:
    # In: VPP punts TCP and UDP for its own addresses to the kernel; the peer is seen.
    assert _tcp(host.lab.peer, host.netns, str(SOURCE), str(PEER)) == str(PEER)
    assert _tcp(host.lab.peer, host.netns, str(NODE4), str(PEER4)) == str(PEER4)
    assert _udp(host.lab.peer, host.netns, str(SOURCE)) == str(PEER)
    assert _udp(host.lab.peer, host.netns, str(NODE4)) == str(PEER4)
    # Out: the node's own connections leave through VPP, from the node's address.
    assert _tcp(host.netns, host.lab.peer, str(PEER), "::") == str(SOURCE)
    assert _tcp(host.netns, host.lab.peer, str(PEER4), "0.0.0.0") == str(NODE4)
    assert _udp(host.netns, host.lab.peer, str(PEER)) == str(SOURCE)


def test_pods_and_the_node_stack_reach_each_other(host: Host) -> None:
    pod = host.lab.pod.name
    run(
        "ip",
        "-n",
        pod,
        "-4",
        "route",
        "replace",
        "default",
        "via",
        "inet6",
        "fe80::1",
        "dev",
        "eth0",
    )
    # kubelet's probes: the node to its pods, and a pod to a host-network endpoint.
    assert _tcp(host.netns, pod, str(POD6), "::") == str(SOURCE)
    assert _tcp(host.netns, pod, str(POD4), "0.0.0.0") == str(NODE4)
    assert _tcp(pod, host.netns, str(SOURCE), "::") == str(POD6)


def test_a_cluster_ip_is_served_to_the_node_stack_without_nat(host: Host) -> None:
    """The node's connection to a ClusterIP is steered into the Service's policy as a
    pod's is: the endpoint (here the local pod, by End.DX6) sees the node's address and
    answers from the ClusterIP, which it holds."""
    pod = host.lab.pod
    run("ip", "-n", pod.name, "addr", "add", f"{CLUSTER_IP}/128", "dev", "lo")
    sid = f"{NODE}1:3"
    desired = NodeConfig(
        local_sids=(EndDX6(sid, nexthop=POD6, interface=pod.host_interface),),
        policies=(SrPolicy(BSID, (SegmentList((sid,)),), mode=EncapMode.ENCAP_RED),),
        steerings=(Steering(f"{CLUSTER_IP}/128", BSID),),
        pods=(pod.attachment,),
    )
    reconcile(host.backend, desired)
    assert _tcp(host.netns, pod.name, str(CLUSTER_IP), "::") == str(SOURCE)


def test_a_restarted_agent_writes_nothing_and_cleanup_removes_it(vpp: Target, host: Host) -> None:
    with vpp.backend(host=SETTINGS) as again:
        assert again.writes == 0
        again._host.remove()  # type: ignore[union-attr]
        assert SETTINGS.name not in run("ip", "-n", host.netns, "link").stdout
        tags = {str(d.tag) for d in again.channel.dump("sw_interface_dump", sw_if_index=0xFFFFFFFF)}
        assert not [t for t in tags if t.startswith(HOST_TAG)]
        assert "punt: enabled" not in again.cli("show udp punt")
        listing = run("ip", "netns", "exec", host.netns, "nft", "list", "tables").stdout
        assert UPLINKS_TABLE not in listing


def test_the_node_stack_translates_services_outside_the_cluster(host: Host) -> None:
    """A Service whose endpoint is outside the cluster (the peer's server): the node's
    kernel DNATs its own connections to the ClusterIP at output (the interconnect is
    its route there), the endpoint sees the node's address; the backend reads the
    translation back, and removes it."""
    assert host.backend.capabilities.translations
    listener = _listen(host.lab.peer, socket.AF_INET6, socket.SOCK_STREAM, str(PEER))
    port = listener.getsockname()[1]
    listener.close()
    cluster_ip = ipaddress.IPv6Address("fd00:96::20")
    translation = Translation("TCP", cluster_ip, 80, ((PEER, port),))
    host.backend.apply([Change(Op.ADD, new=translation)])
    assert host.backend.dump().translations == {translation}
    seen = _tcp_via(host.netns, host.lab.peer, str(cluster_ip), 80, str(PEER), port)
    assert seen == str(SOURCE)
    host.backend.apply([Change(Op.DELETE, old=translation)])
    assert not host.backend.dump().translations


def test_an_endpoint_less_load_balancer_ip_is_refused_to_the_underlay(host: Host) -> None:
    """An endpoint-less Service's load balancer IP, as render gives a VPP node: a LOCAL
    route (VPP punts its TCP and UDP through the interconnect) and the refusal in the
    node's kernel, whose table refuses it at prerouting: the underlay's client gets
    *connection refused* (a TCP reset; ICMP port unreachable for UDP), as from
    kube-proxy, not VPP's "administratively prohibited"."""
    assert host.backend.capabilities.local_refusals
    for lb, via in (
        (ipaddress.ip_address("fd00:ee::5"), SOURCE),
        (ipaddress.ip_address("198.51.100.200"), NODE4),
    ):
        run("ip", "-n", host.lab.peer, "route", "add", str(lb), "via", str(via))
        desired = NodeConfig(
            routes=(Route(ipaddress.ip_network(lb), kind=RouteKind.LOCAL),),
            translations=tuple(Translation(p, lb, 80, ()) for p in ("TCP", "UDP")),
        )
        reconcile(host.backend, desired)

        def refused(kind: int, address: str = str(lb)) -> int:
            family = socket.AF_INET6 if ":" in address else socket.AF_INET
            with socket.socket(family, kind) as sock:
                sock.settimeout(5)
                if kind == socket.SOCK_STREAM:
                    return sock.connect_ex((address, 80))
                sock.connect((address, 80))
                sock.send(b"ping")
                try:
                    sock.recv(64)
                except ConnectionRefusedError:
                    return errno.ECONNREFUSED
                except TimeoutError:
                    return errno.ETIMEDOUT
                return 0

        for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
            assert open_in(host.lab.peer, partial(refused, kind)) == errno.ECONNREFUSED, (lb, kind)
        reconcile(host.backend, NodeConfig())


def test_the_kernel_side_follows_the_node_addresses_at_each_dump(host: Host) -> None:
    """An address VPP's uplink gains after the agent connected (an operator's, a
    renumbered node) reaches the kernel side at the next full read, and goes with it."""
    extra = "2001:db8:1::99"
    host.backend.cli(f"set interface ip address {host.lab.uplink} {extra}/64")
    host.backend.dump()
    shown = run("ip", "-n", host.netns, "addr", "show", "dev", SETTINGS.name).stdout
    assert f"{extra}/128" in shown
    host.backend.cli(f"set interface ip address del {host.lab.uplink} {extra}/64")
    before = host.backend.writes
    host.backend.dump()
    shown = run("ip", "-n", host.netns, "addr", "show", "dev", SETTINGS.name).stdout
    assert f"{extra}/128" not in shown and f"{SOURCE}/128" in shown
    host.backend.dump()
    assert host.backend.writes == before  # nothing of VPP's changed: nothing written


def test_a_pair_deleted_by_hand_is_made_again_with_vpps_end(host: Host) -> None:
    """VPP's packet socket is bound to the device it was made on: when the pair is deleted
    (by hand) and made again at the next full read, VPP's end is made again on it too,
    and the node's stack is reachable again."""
    old = host_link.index_of(SETTINGS.peer, host.netns)
    run("ip", "-n", host.netns, "link", "del", SETTINGS.name)
    host.backend.dump()
    new = host_link.index_of(SETTINGS.peer, host.netns)
    assert new != old
    assert host.backend._host._port() is not None  # type: ignore[union-attr]
    assert host.backend._host._port()[1] == new  # type: ignore[union-attr]
    assert _tcp(host.lab.peer, host.netns, str(SOURCE), str(PEER)) == str(PEER)
    writes = host.backend.writes
    host.backend.dump()
    assert host.backend.writes == writes
