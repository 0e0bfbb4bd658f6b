"""NetworkPolicy as VPP ACLs (srv6ctl/dataplane/vpp_acl.py) against a real VPP 25.10.

The backend on its own (tests/support/vpp.py's `vpp`, `backend`, `pod` and `lab`
fixtures): ACLs programmed, bound and dumped back, a second backend (an agent restart)
that writes nothing, in-place replacement keeping the indices, removal and sweep; then
real TCP and UDP flows between a peer namespace and the pod namespace through VPP, allowed
and blocked as the compiled rules say, replies of allowed flows passing the other
direction's ACL (VPP's reflect sessions), and a policy change that keeps an allowed
established flow and cuts one that is no longer allowed.

The agent with `--dataplane vpp` (tests/test_agent_vpp.py's `vpp_node`): the policies of
tests/test_agent_policies.py — a client pod through a ClusterIP with port 80 !=
targetPort 8080 — enforced in VPP, no nftables table in any pod, and an agent restart
that writes nothing.

Skipped with the reason without a VPP (`SRV6CTL_VPP_BIN`, root; packets need
`SRV6CTL_VPP_DATAPATH=1`).
"""

from __future__ import annotations

import ipaddress
import socket
import threading
from collections.abc import Iterator
from contextlib import ExitStack

import pytest

from cni.wiring import set_tx_checksum
from policies.compiler import compile_node
from policies.model import (
    Cluster,
    IPBlock,
    LabelSelector,
    NetworkPolicy,
    Node,
    Peer,
    Pod,
    PodKey,
    PolicyPort,
    PolicyRule,
    Protocol,
)
from policies.vpp_acl import PodAcls, translate
from srv6ctl.dataplane.model import Change, Op
from srv6ctl.dataplane.vpp import VppBackend
from srv6ctl.dataplane.vpp_acl import EGRESS, INGRESS, Outcome, VppAclBackend
from tests.support.netns import open_in, run
from tests.support.vpp import PEER, POD4, POD6, SOURCE, Lab, PodNs, Target, warm_up
from tests.support.wait import wait_for
from tests.test_agent import SERVICE_IP
from tests.test_agent_policies import (
    ALLOW_CLIENT,
    DENY_ALL,
    has_table,
    reach,
    reaches_every_backend,
    write,
)
from tests.test_agent_vpp import VppNode, vpp_node

__all__ = ["vpp_node"]  # the fixture, re-exported for pytest

TCP, UDP = Protocol.TCP, Protocol.UDP
POD_KEY = PodKey("default", "web-0")


def pod_acls(*policies: NetworkPolicy) -> PodAcls | None:
    web = Pod("default", "web-0", {"app": "web"}, (POD6, POD4), node_name="n1")
    cluster = Cluster.of((), [web], policies, [Node("n1", {ipaddress.ip_address("fd00:ff::1")})])
    return translate(compile_node(cluster, "n1")[POD_KEY])


Port = tuple[Protocol, int]


def from_peer(*ports: Port, egress: tuple[Port, ...] = ()) -> NetworkPolicy:
    """Ingress from the peer on `ports`; with `egress`, egress to the peer on those."""
    peer = (Peer(ip_block=IPBlock(ipaddress.ip_network(f"{PEER}/128"))),)
    return NetworkPolicy(
        "default",
        "web",
        LabelSelector({"app": "web"}),
        {"Ingress", "Egress"} if egress else {"Ingress"},
        (PolicyRule(peer, tuple(PolicyPort(p, n) for p, n in ports)),),
        (PolicyRule(peer, tuple(PolicyPort(p, n) for p, n in egress)),) if egress else (),
    )


@pytest.fixture
def acl_backend(vpp: Target) -> Iterator[VppAclBackend]:
    backend = VppAclBackend(vpp.api_socket, client_name="srv6ctl-acl-test")
    try:
        yield backend
    finally:
        backend.sweep(())
        backend.close()


def test_acls_bound_dumped_replaced_in_place_and_a_restart_writes_nothing(
    vpp: Target, backend: VppBackend, pod: PodNs, acl_backend: VppAclBackend
) -> None:
    backend.apply([Change(Op.ADD, new=pod.attachment)])
    interface = pod.host_interface
    acls = pod_acls(from_peer((TCP, 8080), (UDP, 53)))
    assert acls is not None
    assert acl_backend.apply("default/web-0", interface, acls) is Outcome.CREATED
    installed = acl_backend.installed()[interface]
    assert installed[INGRESS].rules == acls.ingress and installed[EGRESS].rules == acls.egress
    assert installed[INGRESS].tag == f"srv6ctl:acl:{interface}:ingress default/web-0"
    # The egress ACL is the port's input ACL, the ingress ACL its output ACL.
    bound = acl_backend.bindings()[interface]
    assert bound == ((installed[EGRESS].index,), (installed[INGRESS].index,))
    shown = backend.cli("show acl-plugin sessions")
    assert "Reclassify sessions: 1" in shown

    # A new backend (an agent restart) reads them back and writes nothing.
    again = VppAclBackend(vpp.api_socket, client_name="srv6ctl-acl-test2")
    try:
        assert again.apply("default/web-0", interface, acls) is Outcome.UNCHANGED
        assert again.sweep([interface]) == []
        assert again.writes == 0
        # A change replaces the rules in place: same indices, binding untouched.
        changed = pod_acls(from_peer((TCP, 8080), (TCP, 9090)))
        assert changed is not None
        assert again.apply("default/web-0", interface, changed) is Outcome.UPDATED
        assert again.writes == 1  # only the ingress ACL changed
        after = again.installed()[interface]
        assert {w: a.index for w, a in after.items()} == {w: a.index for w, a in installed.items()}
        assert after[INGRESS].rules == changed.ingress
        assert again.bindings()[interface] == bound
    finally:
        again.close()

    # No longer isolated: unbound and deleted. A pod that is gone: swept.
    assert acl_backend.apply("default/web-0", interface, None) is Outcome.REMOVED
    assert interface not in acl_backend.installed()
    assert acl_backend.bindings()[interface] == ((), ())
    assert acl_backend.apply("default/web-0", interface, acls) is Outcome.CREATED
    assert acl_backend.sweep(()) == [interface]
    assert acl_backend.installed() == {}


# --- real flows through VPP -------------------------------------------------------------


class Servers:
    """TCP echo and UDP echo servers in a namespace, served by threads of this process."""

    def __init__(self, netns: str) -> None:
        self.netns = netns
        self.sockets: list[socket.socket] = []

    def tcp(self, port: int) -> None:
        def make() -> socket.socket:
            s = socket.socket(socket.AF_INET6)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("::", port))
            s.listen()
            return s

        listener = open_in(self.netns, make)
        self.sockets.append(listener)

        def serve() -> None:
            while True:
                try:
                    conn, _ = listener.accept()
                except OSError:
                    return
                threading.Thread(target=echo, args=(conn,), daemon=True).start()

        def echo(conn: socket.socket) -> None:
            with conn:
                try:
                    while data := conn.recv(100):
                        conn.sendall(data)
                except OSError:
                    pass

        threading.Thread(target=serve, daemon=True).start()

    def udp(self, port: int) -> None:
        def make() -> socket.socket:
            s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
            s.bind(("::", port))
            return s

        sock = open_in(self.netns, make)
        self.sockets.append(sock)

        def serve() -> None:
            while True:
                try:
                    data, peer = sock.recvfrom(100)
                    sock.sendto(data, peer)
                except OSError:
                    return

        threading.Thread(target=serve, daemon=True).start()

    def close(self) -> None:
        for s in self.sockets:
            s.close()


def tcp_connect(netns: str, address: object, port: int) -> socket.socket | None:
    def make() -> socket.socket | None:
        try:
            return socket.create_connection((str(address), port), timeout=1)
        except OSError:
            return None

    return open_in(netns, make)


def echoes(sock: socket.socket) -> bool:
    try:
        sock.sendall(b"ping")
        return sock.recv(100) == b"ping"
    except OSError:
        return False


def tcp_ok(netns: str, address: object, port: int) -> bool:
    sock = tcp_connect(netns, address, port)
    if sock is None:
        return False
    with sock:
        return echoes(sock)


def udp_ok(netns: str, address: object, port: int) -> bool:
    def make() -> socket.socket:
        s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        s.settimeout(1)
        return s

    with open_in(netns, make) as s:
        for _ in range(2):  # a datagram may go while VPP still resolves a neighbour
            try:
                s.sendto(b"ping", (str(address), port))
                if s.recvfrom(100)[0] == b"ping":
                    return True
            except OSError:
                pass
    return False


@pytest.fixture
def flows(lab: Lab) -> Iterator[tuple[Lab, Servers, Servers]]:
    """Echo servers in the pod (TCP 8080, 9090; UDP 5353) and the peer (TCP 7070, 7071);
    the peer routes the pods' range to VPP."""
    run("ip", "-n", lab.peer, "-6", "route", "add", "fd00:10::/32", "via", str(SOURCE))
    # The kernel's own TCP/UDP: full checksums, as the CNI wiring sets it in VPP mode
    # (VPP's af_packet reads no virtio header).
    open_in(lab.pod.name, lambda: set_tx_checksum("eth0", False))
    open_in(lab.peer, lambda: set_tx_checksum("p0", False))
    warm_up(lab)
    with ExitStack() as stack:
        in_pod, in_peer = Servers(lab.pod.name), Servers(lab.peer)
        stack.callback(in_pod.close)
        stack.callback(in_peer.close)
        in_pod.tcp(8080)
        in_pod.tcp(9090)
        in_pod.udp(5353)
        in_peer.tcp(7070)
        in_peer.tcp(7071)
        yield lab, in_pod, in_peer


def test_flows_through_vpp_follow_the_acls(
    flows: tuple[Lab, Servers, Servers], acl_backend: VppAclBackend
) -> None:
    lab, _, _ = flows
    pod_ns, peer = lab.pod.name, lab.peer
    interface = lab.pod.host_interface
    wait_for(lambda: tcp_ok(peer, POD6, 9090), 10, "the pod to answer through VPP")
    assert tcp_ok(pod_ns, PEER, 7071)

    # Ingress isolated: TCP 8080 and UDP 5353 from the peer, nothing else; the replies
    # pass (the egress ACL permits+reflects), and the pod's own connections still work.
    acls = pod_acls(from_peer((TCP, 8080), (UDP, 5353)))
    assert acl_backend.apply("default/web-0", interface, acls) is Outcome.CREATED
    assert tcp_ok(peer, POD6, 8080)
    assert udp_ok(peer, POD6, 5353)
    assert not tcp_ok(peer, POD6, 9090)
    assert tcp_ok(pod_ns, PEER, 7071)  # its replies enter through the ingress ACL

    # Both ways isolated: egress to the peer on 7070 only. Replies to the peer's
    # connections leave through the egress ACL (sessions), new ones from the pod do not.
    both = pod_acls(from_peer((TCP, 8080), (UDP, 5353), egress=((TCP, 7070),)))
    assert acl_backend.apply("default/web-0", interface, both) is Outcome.UPDATED
    assert tcp_ok(pod_ns, PEER, 7070)
    assert not tcp_ok(pod_ns, PEER, 7071)
    assert tcp_ok(peer, POD6, 8080)
    assert udp_ok(peer, POD6, 5353)

    # A change in place under an established flow: still allowed, it goes on; no longer
    # allowed, its next packet is judged again (reclassify) and dropped.
    established = tcp_connect(peer, POD6, 8080)
    assert established is not None
    with established:
        established.settimeout(1)
        assert echoes(established)
        wider = pod_acls(from_peer((TCP, 8080), (TCP, 9090), (UDP, 5353), egress=((TCP, 7070),)))
        assert acl_backend.apply("default/web-0", interface, wider) is Outcome.UPDATED
        assert echoes(established)
        assert tcp_ok(peer, POD6, 9090)
        narrower = pod_acls(from_peer((TCP, 9090), egress=((TCP, 7070),)))
        assert acl_backend.apply("default/web-0", interface, narrower) is Outcome.UPDATED
        assert not echoes(established)
    assert not tcp_ok(peer, POD6, 8080)
    assert tcp_ok(peer, POD6, 9090)

    # No policy: no ACL, everything opens again.
    assert acl_backend.apply("default/web-0", interface, None) is Outcome.REMOVED
    assert tcp_ok(peer, POD6, 8080) and tcp_ok(pod_ns, PEER, 7071)


# --- the agent ----------------------------------------------------------------------------


def acls_of(node: VppNode) -> dict[str, set[str]]:
    """The ways each pod has ACLs for, by pod name (from the ACLs' tags)."""
    backend = VppAclBackend(node.vpp.api_socket, client_name="srv6ctl-acl-look")
    try:
        found: dict[str, set[str]] = {}
        for ways in backend.installed().values():
            for way, acl in ways.items():
                pod = acl.tag.partition(" ")[2].partition("/")[2]
                found.setdefault(pod, set()).add(way)
        return found
    finally:
        backend.close()


def test_agent_enforces_policies_in_vpp_through_a_cluster_ip(vpp_node: VppNode) -> None:
    node = vpp_node
    node.start_agent()
    for pod in ("client", "other", "web-a", "web-b"):
        node.add_pod(pod)
    for backend in ("web-a", "web-b"):
        node.serve(backend)
    write(node)
    wait_for(
        lambda: any(str(s.prefix) == f"{SERVICE_IP}/128" for s in node.dump().steerings),
        20,
        "the service steering",
    )
    web_a = node.pods["web-a"][1]
    wait_for(lambda: reach(node, "client", web_a, 8080) != "blocked", 20, "web-a to answer")
    assert reach(node, "other", SERVICE_IP, 80) in {"web-a", "web-b"}
    assert acls_of(node) == {}

    write(node, DENY_ALL)
    wait_for(lambda: set(acls_of(node)) == {"web-a", "web-b"}, 20, "the ACLs")
    assert acls_of(node)["web-a"] == {INGRESS, EGRESS}
    assert reach(node, "client", SERVICE_IP, 80) == "blocked"
    assert reach(node, "client", web_a, 8080) == "blocked"

    # Allowing app=client on targetPort 8080 opens ClusterIP:80 for it alone.
    write(node, DENY_ALL, ALLOW_CLIENT)
    wait_for(lambda: reach(node, "client", SERVICE_IP, 80) != "blocked", 20, "the client to pass")
    assert reaches_every_backend(node, "client", SERVICE_IP, 80, {"web-a", "web-b"})
    assert reach(node, "client", web_a, 8080) == "web-a"
    assert reach(node, "other", SERVICE_IP, 80) == "blocked"
    assert reach(node, "other", web_a, 8080) == "blocked"
    assert reach(node, "client", web_a, 80) == "blocked"  # port 80 on the pod is not 8080
    assert not any(has_table(node, p) for p in node.pods)  # VPP enforces, not nftables

    # A restart with nothing changed writes nothing, to the SR dataplane or the ACLs.
    node.stop_agent()
    node.start_agent()
    wait_for(lambda: _status(node)["reconciles"] >= 2, 20, "a full resync after the restart")
    status = _status(node)
    assert (status["changes"], status["dataplane_writes"]) == (0, 0), status
    assert reach(node, "client", SERVICE_IP, 80) in {"web-a", "web-b"}

    # No policy: the ACLs go, everything reopens.
    write(node)
    wait_for(lambda: acls_of(node) == {}, 20, "the ACLs to go")
    assert reach(node, "other", SERVICE_IP, 80) in {"web-a", "web-b"}
    assert reach(node, "other", web_a, 8080) == "web-a"


def _status(node: VppNode) -> dict[str, int]:
    from srv6ctl.agent import query_agent

    return dict(query_agent(node.api, "status"))
