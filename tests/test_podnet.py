"""Inside a backend pod: ClusterIPs on loopback and stateless port rewrites, on real packets,
alone and under the NetworkPolicy table that relies on the rewrite's placement."""

from __future__ import annotations

import ipaddress
import subprocess
import sys

from policies import model
from policies.compiler import compile_node
from policies.nftables import NftablesBackend
from srv6ctl.dataplane.model import PodAttachment
from srv6ctl.podnet import PodNetworkProgrammer, ruleset
from tests.support.netns import NetnsFactory

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


def _web_rules(allow: int) -> model.PodRules:
    """The pod's rules under a policy allowing ingress from anyone on TCP `allow` only."""
    web = model.Pod(
        "default",
        "web",
        labels={"app": "web"},
        ips=(ipaddress.ip_address("fd00:1::2"),),
        frontends=(
            model.Frontend(ipaddress.ip_address(S1), model.Protocol.TCP, 80, 8080),
            model.Frontend(ipaddress.ip_address(S2), model.Protocol.TCP, 80, 9090),
        ),
        node_name="n",
    )
    policy = model.NetworkPolicy(
        "default",
        "web-in",
        model.LabelSelector({"app": "web"}),
        ingress=(model.PolicyRule(ports=(model.PolicyPort(model.Protocol.TCP, allow),)),),
    )
    cluster = model.Cluster.of([model.Namespace("default")], [web], [policy], [model.Node("n")])
    return compile_node(cluster, "n")[web.key]


def test_each_clusterip_gets_its_own_rewrite_and_the_pod_ip_none(
    netns_factory: NetnsFactory,
) -> None:
    client, pod = netns_factory(), netns_factory()
    netns_factory.veth(client, "c0", pod, "eth0")
    client.ip("addr", "add", "fd00:1::1/64", "dev", "c0", "nodad")
    pod.ip("addr", "add", "fd00:1::2/64", "dev", "eth0", "nodad")
    client.ip("-6", "route", "add", "fd00:96::/108", "via", "fd00:1::2")
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

    server = subprocess.Popen(
        ["ip", "netns", "exec", pod.name, sys.executable, "-c", SERVER],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "up"

        def ask(host: str, port: int) -> list[str]:
            done = client.exec(sys.executable, "-c", CLIENT, host, str(port), check=False)
            return done.stdout.split() if done.returncode == 0 else ["refused"]

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
    finally:
        server.kill()
        server.wait()

    cleared = PROGRAMMER.clear(f"/var/run/netns/{pod.name}")
    assert set(map(str, cleared.removed)) == {S1, S2} and cleared.rewrites_replaced
    assert "srv6ctl_svc" not in pod.exec("nft", "list", "tables").stdout
    assert S1 not in pod.ip("addr", "show", "lo")


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
    assert "hook prerouting priority -300" in text and "hook postrouting priority 100" in text
    assert 'comment "srv6ctl:' in text
