"""Inside a backend pod: ClusterIPs on loopback and stateless port rewrites, on real packets."""

from __future__ import annotations

import ipaddress
import subprocess
import sys

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
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)
print(s.recv(100).decode(), s.getpeername()[1])
"""

PROGRAMMER = PodNetworkProgrammer([ipaddress.ip_network("fd00:96::/108")])


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

    # Make conntrack track this namespace (it is lazy: only a ct rule turns it on), so that
    # the absence of the service flows below proves `notrack`, not an idle conntrack.
    pod.exec(
        "nft",
        "add table inet probe; add chain inet probe c { type filter hook input "
        "priority 0; }; add rule inet probe c ct state new counter",
    )
    server = subprocess.Popen(
        ["ip", "netns", "exec", pod.name, sys.executable, "-c", SERVER],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "up"

        def ask(host: str, port: int) -> list[str]:
            return client.exec(sys.executable, "-c", CLIENT, host, str(port)).stdout.split()

        # (listener port that answered, its local address, the port the client talked to)
        assert ask(S1, 80) == ["8080", S1, "80"]
        assert ask(S2, 80) == ["9090", S2, "80"]
        assert ask("fd00:1::2", 80) == ["80", "fd00:1::2", "80"]  # the pod's own IP: untouched
        # Stateless: no conntrack entry was made for the service flows.
        conntrack = pod.exec("cat", "/proc/net/nf_conntrack").stdout
        assert "fd00:0001:0000:0000:0000:0000:0000:0002" in conntrack  # the pod-IP flow
        assert "fd00:0096" not in conntrack  # no service flow
    finally:
        server.kill()
        server.wait()

    cleared = PROGRAMMER.clear(f"/var/run/netns/{pod.name}")
    assert set(map(str, cleared.removed)) == {S1, S2} and cleared.rewrites_replaced
    assert "srv6ctl_svc" not in pod.exec("nft", "list", "tables").stdout
    assert S1 not in pod.ip("addr", "show", "lo")


def test_ruleset_is_empty_without_port_maps() -> None:
    assert ruleset(PodAttachment(interface="x", pod="p", netns="n", service_addresses={S1})) == ""
