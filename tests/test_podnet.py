"""Inside a backend pod: ClusterIPs on loopback and stateless port rewrites, on real packets,
alone and under the NetworkPolicy table that relies on the rewrite's placement."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import ipaddress
import json
import subprocess
import sys
from collections.abc import Iterator

from policies import model
from policies.compiler import compile_node
from policies.nftables import NftablesBackend
from srv6ctl.dataplane.model import PodAttachment, Translation
from srv6ctl.podnet import PodNetworkProgrammer, hairpin_rules, ruleset
from srv6ctl.stale_udp import UdpNat
from tests.support.netns import Netns, NetnsFactory

S1, S2 = "fd00:96::11", "fd00:96::22"
SERVER = """
import socket, sys, threading
def serve(port):
    s = socket.socket(socket.AF_INET6); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("::", port)); s.listen()
    while True:
        c, peer = s.accept(); c.sendall(f"{port} {c.getsockname()[0]}".encode()); c.close()
for port in (80, 8080, 9090):
    threading.Thread(target=serve, args=(port,), daemon=True).start()
print("up", flush=True); threading.Event().wait()
"""
CLIENT = """
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1)
print(s.recv(100).decode(), s.getpeername()[1])
"""

S1_CT = "fd00:0096:0000:0000:0000:0000:0000:0011"  # S1 as /proc/net/nf_conntrack writes it

PROGRAMMER = PodNetworkProgrammer([ipaddress.ip_network("fd00:96::/108")])


@contextlib.contextmanager
def _serving(pod: Netns, script: str, *args: str) -> Iterator[None]:
    """`script` running in `pod` until the block ends (it prints "up" once listening)."""
    server = subprocess.Popen(
        ["ip", "netns", "exec", pod.name, sys.executable, "-c", script, *args],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "up"
        yield
    finally:
        server.kill()
        server.wait()


def _ask(client: Netns, host: str, port: int) -> list[str]:
    """The server's answer to one connection from `client`, split; ["refused"] if none."""
    done = client.exec(sys.executable, "-c", CLIENT, host, str(port), check=False)
    return done.stdout.split() if done.returncode == 0 else ["refused"]


def _web_rules(allow: int) -> model.PodRules:
    """The pod's rules under a policy allowing ingress from anyone on TCP `allow` only."""
    return _ingress_rules(
        "web",
        model.Protocol.TCP,
        allow,
        ((S1, 80, 8080), (S2, 80, 9090)),
    )


def _ingress_rules(
    name: str, protocol: model.Protocol, allow: int, frontends: tuple[tuple[str, int, int], ...]
) -> model.PodRules:
    """Pod `name`'s rules (at fd00:1::2, serving `frontends`: (ClusterIP, port, target))
    under a policy allowing ingress from anyone on `protocol` port `allow` only."""
    pod = model.Pod(
        "default",
        name,
        labels={"app": name},
        ips=(ipaddress.ip_address("fd00:1::2"),),
        frontends=tuple(
            model.Frontend(ipaddress.ip_address(ip), protocol, port, target)
            for ip, port, target in frontends
        ),
        node_name="n",
    )
    policy = model.NetworkPolicy(
        "default",
        f"{name}-in",
        model.LabelSelector({"app": name}),
        ingress=(model.PolicyRule(ports=(model.PolicyPort(protocol, allow),)),),
    )
    cluster = model.Cluster.of([model.Namespace("default")], [pod], [policy], [model.Node("n")])
    return compile_node(cluster, "n")[pod.key]


def test_each_clusterip_gets_its_own_rewrite_and_the_pod_ip_none(
    netns_factory: NetnsFactory,
) -> None:
    client, pod = _client_and_pod(netns_factory, "fd00:96::/108")
    attachment = PodAttachment(
        interface="x",
        pod="default/web",
        netns=f"/var/run/netns/{pod.name}",
        service_addresses={S1, S2},
        port_maps={("TCP", S1, 80, 8080), ("TCP", S2, 80, 9090)},
    )
    first = PROGRAMMER.sync(attachment)
    assert set(map(str, first.added)) == {S1, S2} and first.rewrites_replaced
    assert PROGRAMMER.sync(attachment).writes == 0  # unchanged: a read, no write

    with _serving(pod, SERVER):
        ask = functools.partial(_ask, client)

        # (listener port that answered, its local address, the port the client talked to):
        # the client sees port P, the server T.
        assert ask(S1, 80) == ["8080", S1, "80"]
        assert ask(S2, 80) == ["9090", S2, "80"]
        assert ask("fd00:1::2", 80) == ["80", "fd00:1::2", "80"]  # the pod's own IP: untouched

        # The policy table is on: conntrack sees one tuple per service flow, S:T both ways
        # (P -> T before conntrack on the way in, T -> P after it on the way out).
        backend = NftablesBackend()
        netns = f"/var/run/netns/{pod.name}"
        backend.apply(netns, _web_rules(allow=8080))
        assert ask(S1, 80) == ["8080", S1, "80"]  # allowing T allows the service flow
        conntrack = pod.exec("cat", "/proc/net/nf_conntrack").stdout
        flows = [line for line in conntrack.splitlines() if S1_CT in line]
        assert flows and all("dport=8080" in f and "sport=8080" in f for f in flows), flows
        assert all("dport=80 " not in f and "sport=80 " not in f for f in flows), flows
        assert ask(S2, 80) == ["refused"]  # S2:80 is 9090 there, not allowed
        assert ask("fd00:1::2", 80) == ["refused"]
        # A policy allowing only P (80) does not open the service (that is T = 8080).
        backend.apply(netns, _web_rules(allow=80))
        assert ask(S1, 80) == ["refused"]
        assert ask("fd00:1::2", 80) == ["80", "fd00:1::2", "80"]
        backend.apply(netns, None)
        assert ask(S2, 80) == ["9090", S2, "80"]

    cleared = PROGRAMMER.clear(f"/var/run/netns/{pod.name}")
    assert set(map(str, cleared.removed)) == {S1, S2} and cleared.rewrites_replaced
    assert "srv6ctl_svc" not in pod.exec("nft", "list", "tables").stdout
    assert S1 not in pod.ip("addr", "show", "lo")


def test_a_vips_other_ports_are_refused_as_kube_proxy_refuses_them(
    netns_factory: NetnsFactory,
) -> None:
    """The VIP is on the pod's loopback, where any port would reach whatever listens:
    what arrives for a port none of the pod's Services has is rejected (upstream
    conformance: a Service updated to UDP only must stop answering TCP), the pod's own
    address is untouched."""
    client, pod = _client_and_pod(netns_factory, "fd00:96::/108")
    attachment = PodAttachment(
        interface="x",
        pod="default/web",
        netns=f"/var/run/netns/{pod.name}",
        service_addresses={S1},
        port_maps={("TCP", S1, 80, 8080)},
        service_ports={("TCP", S1, 80)},
    )
    assert PROGRAMMER.sync(attachment).rewrites_replaced
    with _serving(pod, SERVER):
        assert _ask(client, S1, 80) == ["8080", S1, "80"]
        assert _ask(client, S1, 9090) == ["refused"]  # listening, but not a service port
        assert _ask(client, "fd00:1::2", 9090) == ["9090", "fd00:1::2", "9090"]
        # Without the served ports (as before): the VIP answered on every port.
        PROGRAMMER.sync(dataclasses.replace(attachment, service_ports=frozenset()))
        assert _ask(client, S1, 9090) == ["9090", S1, "9090"]
    PROGRAMMER.clear(f"/var/run/netns/{pod.name}")


NODE = "fd00:ff::1"  # a node's address: the node port's destination, never the pod's
SEEN = """
import socket
s = socket.socket(socket.AF_INET6); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("::", 8080)); s.listen()
print("up", flush=True)
while True:
    c, peer = s.accept(); c.sendall(f"{peer[0]} {c.getsockname()[0]}".encode()); c.close()
"""


def _client_and_pod(
    netns_factory: NetnsFactory, steered: str = f"{NODE}/128"
) -> tuple[Netns, Netns]:
    """A client (fd00:1::1) and a pod (fd00:1::2) on one link; the client routes `steered`
    to the pod, as the node steers a Service's packet to its backend (a ClusterIP as it is,
    a NodePort's for the node address NODE)."""
    client, pod = netns_factory(), netns_factory()
    netns_factory.veth(client, "c0", pod, "eth0")
    client.ip("addr", "add", "fd00:1::1/64", "dev", "c0", "nodad")
    pod.ip("addr", "add", "fd00:1::2/64", "dev", "eth0", "nodad")
    client.ip("-6", "route", "add", steered, "via", "fd00:1::2")
    pod.ip("-6", "route", "add", "default", "via", "fd00:1::1")
    return client, pod


def test_a_node_port_is_dnated_in_the_pod_and_answered_from_the_nodes_address(
    netns_factory: NetnsFactory,
) -> None:
    """What the entry node steers to a backend (the client's packet to N:nodePort, as
    End.DX6 hands it over) is DNATed by the pod to itself; the client sees N:nodePort
    answer, the pod sees the client's own address, and NetworkPolicy judges the target
    port. Traffic to the pod's own address on the node port is not touched."""
    client, pod = _client_and_pod(netns_factory)
    attachment = PodAttachment(
        interface="x",
        pod="default/web",
        netns=f"/var/run/netns/{pod.name}",
        addresses={ipaddress.ip_interface("fd00:1::2/128")},
        node_ports={("TCP", 6, 30080, 8080)},
    )
    assert PROGRAMMER.sync(attachment).rewrites_replaced
    with _serving(pod, SEEN):
        ask = functools.partial(_ask, client)

        # (the peer the pod saw, the pod's own address it answered on, the client's port)
        assert ask(NODE, 30080) == ["fd00:1::1", "fd00:1::2", "30080"]
        assert ask("fd00:1::2", 30080) == ["refused"]  # the pod's own address: no DNAT
        # NetworkPolicy judges the target port (8080), as after kube-proxy's DNAT.
        backend = NftablesBackend()
        netns = f"/var/run/netns/{pod.name}"
        backend.apply(netns, _web_rules(allow=8080))
        assert ask(NODE, 30080) == ["fd00:1::1", "fd00:1::2", "30080"]
        backend.apply(netns, _web_rules(allow=30080))
        assert ask(NODE, 30080) == ["refused"]
        backend.apply(netns, None)
    cleared = PROGRAMMER.clear(f"/var/run/netns/{pod.name}")
    assert cleared.rewrites_replaced
    assert "srv6ctl_svc" not in pod.exec("nft", "list", "tables").stdout


DB1, DB2 = "fd00:2::5", "fd00:2::6"  # a Service's endpoints outside the cluster
CLIENT_RUNS = """
import socket, sys
answers = []
for _ in range(int(sys.argv[3])):
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1)
    answers.append(f"{s.recv(100).decode()} {s.getpeername()[0]}")
print("|".join(answers))
"""
PG = SEEN.replace("8080", "5432")


def _client_policy(allowed: str) -> model.PodRules:
    """A client pod's rules under a policy allowing egress to `allowed` on TCP 5432 only."""
    client = model.Pod(
        "default",
        "client",
        labels={"app": "client"},
        ips=(ipaddress.ip_address("fd00:1::2"),),
        node_name="n",
    )
    policy = model.NetworkPolicy(
        "default",
        "client-out",
        model.LabelSelector({"app": "client"}),
        policy_types={model.PolicyType.EGRESS},
        egress=(
            model.PolicyRule(
                peers=(model.Peer(ip_block=model.IPBlock(ipaddress.ip_network(f"{allowed}/128"))),),
                ports=(model.PolicyPort(model.Protocol.TCP, 5432),),
            ),
        ),
    )
    cluster = model.Cluster.of([model.Namespace("default")], [client], [policy], [model.Node("n")])
    return compile_node(cluster, "n")[client.key]


def test_a_client_pod_translates_a_service_outside_the_cluster(
    netns_factory: NetnsFactory,
) -> None:
    """A Service whose endpoints are outside the cluster (no pod or node can hold its
    ClusterIP): the client pod DNATs its own connections, in its own namespace. The
    endpoint sees the pod's own address, the client sees the ClusterIP answer, egress
    NetworkPolicy judges the endpoint, and affinity keeps a client on one endpoint."""
    pod, outside = netns_factory(), netns_factory()
    netns_factory.veth(pod, "eth0", outside, "o0")
    pod.ip("addr", "add", "fd00:1::2/64", "dev", "eth0", "nodad")
    outside.ip("addr", "add", "fd00:1::1/64", "dev", "o0", "nodad")
    for db in (DB1, DB2):
        outside.ip("addr", "add", f"{db}/128", "dev", "lo")
    pod.ip("-6", "route", "add", "default", "via", "fd00:1::1")
    netns = f"/var/run/netns/{pod.name}"

    def attach(*targets: str, affinity: int = 0) -> None:
        translation = Translation("TCP", S1, 5432, tuple((t, 5432) for t in targets), affinity)
        attachment = PodAttachment(
            interface="x",
            pod="default/client",
            netns=netns,
            addresses={ipaddress.ip_interface("fd00:1::2/128")},
            translations={translation},
        )
        assert PROGRAMMER.sync(attachment).rewrites_replaced

    def ask(count: int) -> list[tuple[str, str, str]]:
        done = pod.exec(sys.executable, "-c", CLIENT_RUNS, S1, "5432", str(count), check=False)
        if done.returncode:
            return []
        return [tuple(a.split()) for a in done.stdout.strip().split("|")]  # type: ignore[misc]

    with _serving(outside, PG):
        attach(DB1, DB2)
        answers = ask(40)
        # (the peer the endpoint saw, the endpoint's address, whom the client talked to)
        assert {a[0] for a in answers} == {"fd00:1::2"}, answers  # no SNAT: the pod itself
        assert {a[2] for a in answers} == {S1}, answers  # answered from the ClusterIP
        assert {a[1] for a in answers} == {DB1, DB2}, answers  # both endpoints in 40

        attach(DB1, DB2, affinity=60)
        assert len({a[1] for a in ask(40)}) == 1  # one endpoint for this client

        backend = NftablesBackend()
        backend.apply(netns, _client_policy(allowed=DB1))
        attach(DB1)
        assert [a[1] for a in ask(1)] == [DB1]  # egress policy judges the endpoint
        attach(DB2)
        assert ask(1) == []
        backend.apply(netns, None)
        assert [a[1] for a in ask(1)] == [DB2]
    cleared = PROGRAMMER.clear(netns)
    assert cleared.rewrites_replaced
    assert "srv6ctl_svc" not in pod.exec("nft", "list", "tables").stdout


REFUSAL_PROBE = """
import errno, socket, sys
kind = socket.SOCK_STREAM if sys.argv[1] == "tcp" else socket.SOCK_DGRAM
s = socket.socket(socket.AF_INET6, kind); s.settimeout(5)
said = []
for step in ("connect", "send", "recv"):
    try:
        if step == "connect":
            s.connect((sys.argv[2], int(sys.argv[3])))
        elif step == "send":
            s.send(b"?")
        else:
            s.recv(100)
        said.append("ok")
    except TimeoutError:
        said.append("timeout")
    except OSError as err:
        said.append(errno.errorcode[err.errno])
        if step == "connect":
            break
print(" ".join(said))
"""


def test_a_client_refuses_a_service_without_endpoints_itself(
    netns_factory: NetnsFactory,
) -> None:
    """A Service without endpoints: the node's route answers ICMPv6 administratively
    prohibited (EACCES); the client's own table refuses first, as kube-proxy's REJECT
    does (a TCP reset, ICMPv6 port unreachable for UDP): connection refused, what
    upstream e2e's "should be rejected when no endpoints exist" waits for."""
    client, node = _client_and_pod(netns_factory, f"{S1}/128")
    node.ip("-6", "route", "add", "prohibit", f"{S1}/128")  # render's route for it
    node.exec("sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
    netns = f"/var/run/netns/{client.name}"

    def probe(protocol: str, port: int) -> str:
        argv = (sys.executable, "-c", REFUSAL_PROBE, protocol, S1, str(port))
        return client.exec(*argv).stdout.strip()

    # What each step says: connect, send, recv (TCP stops at a failed connect).
    assert probe("tcp", 80) == "EACCES"
    assert probe("udp", 53) == "ok ok EACCES"
    attachment = PodAttachment(
        interface="x",
        pod="default/client",
        netns=netns,
        addresses={ipaddress.ip_interface("fd00:1::1/128")},
        translations={Translation("TCP", S1, 80, ()), Translation("UDP", S1, 53, ())},
    )
    assert PROGRAMMER.sync(attachment).rewrites_replaced
    assert probe("tcp", 80) == "ECONNREFUSED"
    # UDP: the datagram is refused at the client's own output, so send() itself fails
    # (EPERM, netfilter's verdict), and the port unreachable then ends the recv.
    assert probe("udp", 53) == "ok EPERM ECONNREFUSED"
    assert probe("tcp", 81) == "EACCES"  # not a port of it: the route's answer
    assert PROGRAMMER.sync(attachment).writes == 0  # read back as it was
    PROGRAMMER.clear(netns)


UDP_SERVER = """
import socket, sys, threading
def serve(port):
    # Bound to the wildcard and answering with sendto(): the reply's source is whatever
    # the kernel picks, as Go's net.ListenUDP servers (agnhost, CoreDNS) answer.
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); s.bind(("::", port))
    while True:
        data, peer = s.recvfrom(100); s.sendto(f"{port} {peer[0]}".encode(), peer)
for port in map(int, sys.argv[1:]):
    threading.Thread(target=serve, args=(port,), daemon=True).start()
print("up", flush=True); threading.Event().wait()
"""
UDP_CLIENT = """
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); s.settimeout(1)
if len(sys.argv) > 3:
    s.bind(("::", int(sys.argv[3])))  # one source port: one conntrack entry, kept alive
s.connect((sys.argv[1], int(sys.argv[2])))  # a connected socket takes replies from there only
s.send(b"?")
try:
    print(s.recv(100).decode(), s.getpeername()[1])
except TimeoutError:
    print("lost")
"""


def test_a_udp_server_on_the_wildcard_answers_from_the_vip(
    netns_factory: NetnsFactory,
) -> None:
    """A UDP server bound to [::] replies from the kernel's default source, the pod's own
    address: the pod DNATs UDP to its VIPs to its own address, so the flow's conntrack
    entry gives the reply the VIP back (after which the stateless rewrite gives it the
    service port back). The server sees the client's own address; the pod's own address
    is untouched; NetworkPolicy judges the target port."""
    client, pod = _client_and_pod(netns_factory, "fd00:96::/108")
    netns = f"/var/run/netns/{pod.name}"
    attachment = PodAttachment(
        interface="x",
        pod="default/dns",
        netns=netns,
        addresses={ipaddress.ip_interface("fd00:1::2/128")},
        service_addresses={S1, S2},
        port_maps={("UDP", S1, 53, 5353)},
        service_ports={("UDP", S1, 53), ("UDP", S2, 53)},
    )
    assert PROGRAMMER.sync(attachment).rewrites_replaced

    def ask(host: str, port: int) -> list[str]:
        return client.exec(sys.executable, "-c", UDP_CLIENT, host, str(port)).stdout.split()

    with _serving(pod, UDP_SERVER, "53", "5353"):
        # (the server's port, the peer it saw, the port the reply came from)
        assert ask(S1, 53) == ["5353", "fd00:1::1", "53"]  # DNAT, then the port rewrite
        assert ask(S2, 53) == ["53", "fd00:1::1", "53"]
        assert ask("fd00:1::2", 53) == ["53", "fd00:1::1", "53"]  # the pod's own: as it is
        backend = NftablesBackend()
        backend.apply(
            netns, _ingress_rules("dns", model.Protocol.UDP, 5353, ((S1, 53, 5353), (S2, 53, 53)))
        )
        assert ask(S1, 53) == ["5353", "fd00:1::1", "53"]
        assert ask(S2, 53) == ["lost"]  # S2:53 is 53 there, not allowed
        backend.apply(netns, None)

        # Without the DNAT (what a pod serving no UDP Service gets) the reply leaves from
        # the pod's own address and the client never sees it: what the DNAT is for.
        PROGRAMMER.sync(dataclasses.replace(attachment, service_ports=frozenset()))
        assert ask(S1, 53) == ["lost"]
    cleared = PROGRAMMER.clear(netns)
    assert cleared.rewrites_replaced
    assert "srv6ctl_svc" not in pod.exec("nft", "list", "tables").stdout


def test_a_udp_node_ports_new_target_is_reached_by_a_client_that_keeps_its_port(
    netns_factory: NetnsFactory,
) -> None:
    """A UDP client that keeps sending from one source port keeps its conntrack entry in
    the pod alive; when the NodePort's target port changes, the pod forgets the entries
    its new table would not make (as kube-proxy does), so the next datagram reaches the
    new target (upstream e2e: "cleanup conntrack entries when UDP service target port
    changes for a NodePort service")."""
    client, pod = _client_and_pod(netns_factory)
    attachment = PodAttachment(
        interface="x",
        pod="default/dns",
        netns=f"/var/run/netns/{pod.name}",
        addresses={ipaddress.ip_interface("fd00:1::2/128")},
        node_ports={("UDP", 6, 30053, 5353), ("TCP", 6, 30053, 5353)},
    )

    def ask() -> list[str]:
        argv = (sys.executable, "-c", UDP_CLIENT, NODE, "30053", "40053")
        return client.exec(*argv).stdout.split()

    assert PROGRAMMER.sync(attachment).rewrites_replaced
    with _serving(pod, UDP_SERVER, "5353", "6363"):
        assert ask() == ["5353", "fd00:1::1", "30053"]
        moved = dataclasses.replace(
            attachment, node_ports=frozenset({("UDP", 6, 30053, 6363), ("TCP", 6, 30053, 6363)})
        )
        done = PROGRAMMER.sync(moved)
        assert done.rewrites_replaced and done.udp_forgotten == 1
        assert ask() == ["6363", "fd00:1::1", "30053"]
        assert PROGRAMMER.sync(moved).writes == 0  # unchanged: nothing forgotten either
    PROGRAMMER.clear(f"/var/run/netns/{pod.name}")


def test_udp_nat_says_which_dnats_a_pods_table_makes() -> None:
    own, db1, db2 = (ipaddress.ip_address(a) for a in ("fd00:1::2", DB1, DB2))
    s1, s2 = ipaddress.ip_address(S1), ipaddress.ip_address(S2)
    nat = UdpNat.of(
        PodAttachment(
            interface="x",
            pod="default/p",
            netns="n",
            addresses={ipaddress.ip_interface("fd00:1::2/128")},
            service_ports={("UDP", s2, 53)},
            node_ports={("UDP", 6, 30053, 5353), ("TCP", 6, 30080, 8080)},
            translations={
                Translation("UDP", S1, 53, ((DB1, 53),)),
                Translation("TCP", S1, 80, ((DB2, 80),)),
            },
        )
    )
    assert nat.makes((s1, 53), (db1, 53)) and not nat.makes((s1, 53), (db2, 53))
    assert nat.makes((s2, 53), (own, 53)) and not nat.makes((s2, 53), (own, 5353))
    node = ipaddress.ip_address(NODE)
    assert nat.makes((node, 30053), (own, 5353)) and not nat.makes((node, 30053), (own, 6363))
    assert not nat.makes((node, 30080), (own, 8080))  # TCP: not the table's UDP
    assert not nat.makes((s1, 80), (db2, 80))


def test_hairpin_rules_per_family() -> None:
    rules = hairpin_rules([ipaddress.ip_address(S1), ipaddress.ip_address(S2)])
    assert sorted(map(str, rules)) == [
        "-6 pref 100 iif lo to fd00:96::11 lookup main",
        "-6 pref 100 iif lo to fd00:96::22 lookup main",
        "-6 pref 200 lookup local",
    ]
    assert hairpin_rules([]) == frozenset()


def test_ruleset_is_empty_without_port_maps() -> None:
    assert ruleset(PodAttachment(interface="x", pod="p", netns="n", service_addresses={S1})) == ""


def test_ruleset_is_the_form_policies_rely_on() -> None:
    text = ruleset(
        PodAttachment(
            interface="x",
            pod="p",
            netns="n",
            service_addresses={S1},
            port_maps={("TCP", S1, 80, 8080)},
        )
    )
    assert "notrack" not in text
    assert "hook prerouting priority -300" in text and "hook postrouting priority 110" in text
    assert 'comment "srv6ctl:' in text


# --- hairpin: a backend is also a client (issue 17) ------------------------------------
#
# The node here is a stand-in: plain ECMP routes (L4 hash) for each VIP over the backends,
# in place of the steering into an SR policy whose End.DX6/DX4 hand the pod the original
# packet — the same packet (destination the VIP) reaches the pod either way, and the pod
# side is what this file tests, on any kernel. tests/test_agent.py does it through SRv6.

V6, V4 = "fd00:96::10", "10.96.0.10"
HAIRPIN_SERVER = """
import socket, sys, threading
def serve(family, address, port):
    s = socket.socket(family); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind((address, port)); s.listen(256)
    while True:
        c, peer = s.accept()
        c.sendall(f"{sys.argv[1]} {peer[0]} {c.getsockname()[0]}".encode()); c.close()
for family, address in ((socket.AF_INET6, "::"), (socket.AF_INET, "0.0.0.0")):
    for port in (8080, 8081):
        threading.Thread(target=serve, args=(family, address, port), daemon=True).start()
print("up", flush=True); threading.Event().wait()
"""
# N new connections to host:port; per answer: (backend, client it saw, its local address,
# the peer port the client saw), counted.
HAIRPIN_CLIENT = """
import collections, json, socket, sys
seen = collections.Counter()
for _ in range(int(sys.argv[3])):
    try:
        s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[4]))
        seen[s.recv(200).decode() + f" {s.getpeername()[1]}"] += 1; s.close()
    except OSError as err:
        seen[type(err).__name__] += 1
print(json.dumps(seen))
"""


@dataclasses.dataclass(frozen=True)
class MiniPod:
    netns: Netns
    v6: str
    v4: str

    @property
    def path(self) -> str:
        return f"/var/run/netns/{self.netns.name}"


def _mini_cluster(netns_factory: NetnsFactory, count: int) -> tuple[Netns, list[MiniPod]]:
    """A stand-in node routing pods 1..count (host routes, as srv6-cni wires them) and
    spreading each VIP over pods 1 and 2 by an L4 hash."""
    node = netns_factory()
    node.exec(
        "sysctl",
        "-qw",
        "net.ipv6.conf.all.forwarding=1",
        "net.ipv4.ip_forward=1",
        "net.ipv6.fib_multipath_hash_policy=1",
        "net.ipv4.fib_multipath_hash_policy=1",
    )
    pods = []
    for k in range(1, count + 1):
        pod = MiniPod(netns_factory(), f"fd00:10::{k}", f"10.1.0.{k}")
        netns_factory.veth(node, f"v{k}", pod.netns, "eth0")
        node.ip("addr", "add", "fe80::1/64", "dev", f"v{k}", "nodad")
        node.ip("addr", "add", "10.0.0.1/32", "dev", f"v{k}")
        node.ip("route", "add", f"{pod.v6}/128", "dev", f"v{k}")
        node.ip("route", "add", f"{pod.v4}/32", "dev", f"v{k}")
        pod.netns.ip("addr", "add", f"{pod.v6}/128", "dev", "eth0", "nodad")
        pod.netns.ip("addr", "add", f"{pod.v4}/32", "dev", "eth0")
        pod.netns.ip("-6", "route", "add", "default", "via", "fe80::1", "dev", "eth0")
        pod.netns.ip("-4", "route", "add", "default", "via", "10.0.0.1", "dev", "eth0", "onlink")
        pods.append(pod)
    for vip, family in ((V6, "v6"), (V4, "v4")):
        hops = []
        for k, pod in enumerate(pods[:2], start=1):
            hops += ["nexthop", "via", getattr(pod, family), "dev", f"v{k}"]
        node.ip("route", "add", vip, *hops)
    return node, pods


def _backend(pod: MiniPod, rewrite: bool = True) -> PodAttachment:
    """Pods 1 and 2 back the service: port 80 -> 8080 on both families (`rewrite`); 8081
    is the port and the target alike."""
    return PodAttachment(
        interface="x",
        pod="default/web",
        netns=pod.path,
        service_addresses={V6, V4},
        port_maps={("TCP", V6, 80, 8080), ("TCP", V4, 80, 8080)} if rewrite else frozenset(),
    )


def _spread(
    pod: MiniPod, host: str, port: int, count: int = 60, timeout: float = 2.0
) -> dict[str, int]:
    done = pod.netns.exec(
        sys.executable, "-c", HAIRPIN_CLIENT, host, str(port), str(count), str(timeout)
    )
    return dict(json.loads(done.stdout))


def _rules(pod: MiniPod, family: str) -> str:
    return pod.netns.ip(family, "rule", "show")


DUAL = PodNetworkProgrammer(
    [ipaddress.ip_network("fd00:96::/108"), ipaddress.ip_network("10.96.0.0/16")]
)


def _serve(pods: list[MiniPod], names: tuple[str, ...]) -> list[subprocess.Popen[str]]:
    servers = []
    for pod, name in zip(pods, names, strict=True):
        server = subprocess.Popen(
            ["ip", "netns", "exec", pod.netns.name, sys.executable, "-c", HAIRPIN_SERVER, name],
            stdout=subprocess.PIPE,
            text=True,
        )
        servers.append(server)
        assert server.stdout is not None and server.stdout.readline().strip() == "up"
    return servers


def test_a_backend_reaching_its_own_vip_is_spread_over_all_backends(
    netns_factory: NetnsFactory,
) -> None:
    _, (web1, web2, client) = _mini_cluster(netns_factory, 3)
    # As an agent from before hairpins left it: the VIP on lo with its prefix route in main.
    web2.netns.ip("addr", "add", f"{V6}/128", "dev", "lo")
    for pod in (web1, web2):
        synced = DUAL.sync(_backend(pod))
        assert {str(r) for r in synced.rules_added} == {
            f"-6 pref 100 iif lo to {V6} lookup main",
            "-6 pref 200 lookup local",
            f"-4 pref 100 iif lo to {V4} lookup main",
            "-4 pref 200 lookup local",
        }
        assert {str(r) for r in synced.rules_removed} == {
            "-6 pref 0 lookup local",
            "-4 pref 0 lookup local",
        }
        assert DUAL.sync(_backend(pod)).writes == 0  # unchanged: reads only
    assert not _rules(web1, "-6").startswith("0:\t")
    # IPv6: the VIP is not in `main` (noprefixroute), and a connection to it leaves from
    # the pod's own address, not the VIP (RFC 6724 rule 1 would pick the VIP).
    for pod in (web1, web2):
        route = pod.netns.ip("-6", "route", "get", V6)
        assert "dev eth0" in route and f"src {pod.v6}" in route, route
    # The node is its only router: no redirect may teach it that the VIP is on-link.
    sysctl = web1.netns.exec("sysctl", "-n", "net.ipv6.conf.eth0.accept_redirects")
    assert sysctl.stdout.strip() == "0"
    assert (
        client.netns.exec("sysctl", "-n", "net.ipv6.conf.eth0.accept_redirects").stdout.strip()
        == "1"
    )

    servers = _serve([web1, web2], ("web-1", "web-2"))
    try:
        for vip, family in ((V6, "v6"), (V4, "v4")):
            for port in (80, 8081):  # with the port rewrite (80 -> 8080) and without
                mine = getattr(web1, family)
                own = _spread(web1, vip, port)
                # Every backend, itself included; each saw web-1's own address and answered
                # from the VIP (no NAT), on the port the client asked for.
                assert set(own) == {f"web-1 {mine} {vip} {port}", f"web-2 {mine} {vip} {port}"}, own
                print(f"web-1 -> {vip}:{port}: {own}")
                theirs = _spread(client, vip, port)
                seen = getattr(client, family)
                assert set(theirs) == {
                    f"web-1 {seen} {vip} {port}",
                    f"web-2 {seen} {vip} {port}",
                }, theirs
    finally:
        for server in servers:
            server.kill()
            server.wait()

    cleared = DUAL.clear(web1.path)
    assert {str(r) for r in cleared.rules_added} == {
        "-6 pref 0 lookup local",
        "-4 pref 0 lookup local",
    }
    assert len(cleared.rules_removed) == 4 and len(cleared.sysctls) == 3
    for family in ("-4", "-6"):
        assert _rules(web1, family).splitlines()[0] == "0:\tfrom all lookup local"
        assert "proto 92" not in _rules(web1, family)
    assert web1.netns.exec("sysctl", "-n", "net.ipv4.conf.eth0.accept_local").stdout.strip() == "0"
    assert (
        web1.netns.exec("sysctl", "-n", "net.ipv6.conf.eth0.accept_redirects").stdout.strip() == "1"
    )
    assert DUAL.clear(web1.path).writes == 0


UDP_NAMED_SERVER = """
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); s.bind(("::", 8080))
print("up", flush=True)
while True:  # on the wildcard, answering from the default source (the pod's DNAT's case)
    data, peer = s.recvfrom(100); s.sendto(f"{sys.argv[1]} {peer[0]}".encode(), peer)
"""
UDP_SPREAD_CLIENT = """
import collections, json, socket, sys
seen = collections.Counter()
for _ in range(int(sys.argv[3])):  # a new source port each: the hash spreads them
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); s.settimeout(2)
    s.connect((sys.argv[1], int(sys.argv[2]))); s.send(b"?")
    try:
        seen[s.recv(200).decode() + f" {s.getpeername()[1]}"] += 1
    except OSError as err:
        seen[type(err).__name__] += 1
    s.close()
print(json.dumps(seen))
"""


def test_a_backend_reaching_its_own_vip_over_udp_with_a_port_rewrite(
    netns_factory: NetnsFactory,
) -> None:
    """UDP to its own Service from a backend, port 80 -> 8080 rewritten: a datagram that
    lands on the backend itself is DNATed to its own address, and the answer goes back to
    it over `lo`, where the NAT core translates it once more at input — to the VIP and
    the *target* port; the rewrite back to the service port is made there too, or the
    client's connected socket drops the answer (upstream e2e "should function for
    endpoint-Service: udp")."""
    _, (web1, web2, _client) = _mini_cluster(netns_factory, 3)
    for pod in (web1, web2):
        DUAL.sync(
            PodAttachment(
                interface="x",
                pod="default/web",
                netns=pod.path,
                addresses={ipaddress.ip_interface(f"{pod.v6}/128")},
                service_addresses={V6},
                port_maps={("UDP", V6, 80, 8080)},
                service_ports={("UDP", V6, 80)},
            )
        )
    servers = []
    try:
        for pod, name in ((web1, "web-1"), (web2, "web-2")):
            server = subprocess.Popen(
                ["ip", "netns", "exec", pod.netns.name, sys.executable, "-c", UDP_NAMED_SERVER,
                 name],
                stdout=subprocess.PIPE, text=True,
            )  # fmt: skip
            servers.append(server)
            assert server.stdout is not None and server.stdout.readline().strip() == "up"
        done = web1.netns.exec(sys.executable, "-c", UDP_SPREAD_CLIENT, V6, "80", "40")
        seen = dict(json.loads(done.stdout))
        # Both backends, itself included, each saw web-1's own address; every answer came
        # from the VIP's service port (a connected socket takes no other).
        assert set(seen) == {f"web-1 {web1.v6} 80", f"web-2 {web1.v6} 80"}, seen
    finally:
        for server in servers:
            server.kill()
            server.wait()
        for pod in (web1, web2):
            DUAL.clear(pod.path)


def _hairpin_policy(
    pods: list[MiniPod], ingress_from: tuple[str, ...]
) -> dict[str, model.PodRules]:
    """web-1 and web-2 (app=web) isolated both ways: ingress on 8080 and 8081 from pods
    labelled `ingress_from`, egress to app=web only; the third pod is app=client."""
    frontends = tuple(
        model.Frontend(ipaddress.ip_address(vip), model.Protocol.TCP, port, target)
        for vip in (V6, V4)
        for port, target in ((80, 8080), (8081, 8081))
    )
    web = model.LabelSelector({"app": "web"})
    cluster = model.Cluster.of(
        [model.Namespace("default")],
        [
            model.Pod(
                "default",
                name,
                labels={"app": app},
                ips=(pod.v6, pod.v4),
                frontends=frontends if app == "web" else (),
                node_name="n",
            )
            for pod, name, app in zip(
                pods, ("web-1", "web-2", "client"), ("web", "web", "client"), strict=True
            )
        ],
        [
            model.NetworkPolicy(
                "default",
                "web",
                web,
                policy_types=("Ingress", "Egress"),
                ingress=(
                    model.PolicyRule(
                        peers=tuple(
                            model.Peer(model.LabelSelector({"app": a})) for a in ingress_from
                        ),
                        ports=(
                            model.PolicyPort(model.Protocol.TCP, 8080),
                            model.PolicyPort(model.Protocol.TCP, 8081),
                        ),
                    ),
                ),
                egress=(model.PolicyRule(peers=(model.Peer(web),)),),
            )
        ],
        [model.Node("n")],
    )
    rules = compile_node(cluster, "n")
    return {name: rules[model.PodKey("default", name)] for name in ("web-1", "web-2")}


def test_a_hairpinned_flow_under_network_policy(netns_factory: NetnsFactory) -> None:
    """The policy table judges a hairpinned flow as Kubernetes would after DNAT: landing on
    another backend, by that backend's ingress; landing on the pod itself, it passes (a
    pod cannot block itself) — port rewrite or not, although the client half of a
    rewritten flow to itself is `invalid` to the pod's conntrack."""
    _, pods = _mini_cluster(netns_factory, 3)
    web1, web2, _ = pods
    for pod in (web1, web2):
        DUAL.sync(_backend(pod))
    servers = _serve([web1, web2], ("web-1", "web-2"))
    policies = NftablesBackend()
    try:
        for ingress_from, reached in (
            (("web", "client"), {"web-1", "web-2"}),
            (("client",), {"web-1"}),
        ):
            for name, rules in _hairpin_policy(pods, ingress_from).items():
                policies.apply(f"/var/run/netns/{pods[int(name[-1]) - 1].netns.name}", rules)
            for vip, family in ((V6, "v6"), (V4, "v4")):
                for port in (80, 8081):
                    seen = _spread(web1, vip, port, count=16, timeout=0.5)
                    print(f"web ingress from {ingress_from}: web-1 -> {vip}:{port}: {seen}")
                    mine = getattr(web1, family)
                    answered = {k for k in seen if not k.endswith("Error")}
                    assert answered == {f"{b} {mine} {vip} {port}" for b in reached}, seen
                    if reached == {"web-1"}:  # those that landed on web-2: refused there
                        assert seen.get("TimeoutError", 0) > 0, seen
    finally:
        for server in servers:
            server.kill()
            server.wait()


def test_vips_outside_the_service_cidrs_are_ours_by_their_protocol(netns: Netns) -> None:
    """LoadBalancer IPs and externalIPs lie outside the service CIDRs: each is added with
    our IFA_PROTO (kernel 6.1+), found again by it, and removed when it goes; an address
    of someone else's on the pod's lo is left alone."""
    netns.ip("addr", "add", "2001:db8:aa::1/128", "dev", "lo")  # not ours
    path = f"/var/run/netns/{netns.name}"
    vips = frozenset(ipaddress.ip_address(a) for a in (V6, "fd00:ee::10", "198.51.100.10"))
    pod = PodAttachment(interface="x", pod="default/web", netns=path, service_addresses=vips)
    first = DUAL.sync(pod)
    assert set(first.added) == vips
    again = DUAL.sync(pod)
    assert (again.added, again.removed) == ((), ())  # found again, not added twice
    fewer = dataclasses.replace(pod, service_addresses=frozenset({ipaddress.ip_address(V6)}))
    gone = DUAL.sync(fewer)
    assert set(gone.removed) == {
        ipaddress.ip_address("fd00:ee::10"),
        ipaddress.ip_address("198.51.100.10"),
    }
    cleared = DUAL.clear(path)
    assert cleared.removed == (ipaddress.ip_address(V6),)
    left = {
        a["local"] for a in json.loads(netns.ip("-j", "addr", "show", "dev", "lo"))[0]["addr_info"]
    }
    assert "2001:db8:aa::1" in left and "fd00:ee::10" not in left
