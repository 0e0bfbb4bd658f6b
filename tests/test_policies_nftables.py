"""nftables enforcement on a real kernel: pods as namespaces behind a routed node namespace.

Each pod is a network namespace with `eth0` (a veth to the node namespace), an IPv6 and
often an IPv4 address; the node routes every pod's /128 and /32 to its veth and holds
the node addresses (the source of "kubelet" probes). A service backend carries its
ClusterIPs on `lo`, the node routes them to it (standing in for End.DX6, which delivers
the original packet, destination still the ClusterIP), and the stateless port rewrite is
installed in the pod with `port_rewrite_ruleset`. Policies are compiled and programmed
through `NftablesBackend`; real TCP, UDP and SCTP traffic must pass or not exactly as the
reference evaluator of test_policies_compiler says. Sockets are opened in threads that
entered the namespace, so no interpreter starts per probe. Namespaces have unique names
and are deleted whatever happens; nothing outside them is touched.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import secrets
import shutil
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import TypeVar

import pytest

from policies.compiler import compile_node
from policies.model import (
    Cluster,
    ContainerPort,
    Frontend,
    IPAddress,
    IPBlock,
    LabelSelector,
    Namespace,
    NetworkPolicy,
    Node,
    Peer,
    Pod,
    PodKey,
    PodRules,
    PolicyPort,
    PolicyRule,
    Protocol,
)
from policies.nftables import (
    _SET_REFERENCE,
    COUNTERS,
    REGULAR_CHAINS,
    TABLE,
    ClientTranslation,
    NftablesBackend,
    NftSet,
    Outcome,
    parse_translations,
    port_rewrite_ruleset,
    render,
    run_nft,
    tables_of,
    update_script,
)
from srv6ctl.dataplane.nsenter import run_in_netns
from tests.support.netns import NetnsFactory, run
from tests.test_policies_compiler import reference_egress, reference_ingress

T = TypeVar("T")
A = ipaddress.ip_address
TCP, UDP, SCTP = Protocol.TCP, Protocol.UDP, Protocol.SCTP
NODE6, NODE4 = A("fd00::100"), A("10.0.0.1")
TIMEOUT = 0.4  # a veth round trip is microseconds: anything slower was dropped
SO_RCVBUFFORCE = 33  # not in the socket module; root may exceed net.core.rmem_max


def _unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces, veth pairs, nftables)"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return f"needs `{tool}`"
    return None


def require_root() -> None:
    reason = _unavailable()
    if reason is not None:
        if os.environ.get("CI", "").lower() == "true" and os.geteuid() == 0:
            pytest.fail(f"CI runs as root, so namespace tests must run: {reason}")
        pytest.skip(reason)


# --- a routed node with pods --------------------------------------------------------------


def in_netns(name: str, fn: Callable[[], T]) -> T:
    return run_in_netns(name, fn)


def socket_in(name: str, family: int, kind: int, proto: int = 0) -> socket.socket:
    return in_netns(name, lambda: socket.socket(family, kind, proto))


@dataclass
class Lab:
    """One node namespace and a pod namespace per pod, built from policy-input `Pod`s."""

    tag: str = field(default_factory=lambda: secrets.token_hex(4))
    netns: dict[PodKey, str] = field(default_factory=dict)
    created: list[str] = field(default_factory=list)
    sockets: list[socket.socket] = field(default_factory=list)

    @property
    def node(self) -> str:
        return f"s6pol-{self.tag}-node"

    def _add(self, name: str) -> None:
        run("ip", "netns", "add", name)
        self.created.append(name)

    def build(self, pods: list[Pod]) -> None:
        """Links first (node side), then each pod's addresses and routes, then the node's."""
        self._add(self.node)
        links = [
            "link set lo up",
            f"address add {NODE6}/128 dev lo",
            f"address add {NODE4}/32 dev lo",
        ]
        node: list[str] = []
        pod_batches: list[tuple[str, list[str]]] = []
        for index, pod in enumerate(pods):
            name = f"s6pol-{self.tag}-p{index}"
            self._add(name)
            self.netns[pod.key] = name
            veth = f"v{index}"
            links.append(f"link add {veth} type veth peer name eth0 netns {name}")
            node.append(f"link set {veth} up")
            node.append(f"address add fe80::1/64 dev {veth} nodad")
            node.append(f"address add 169.254.1.1/32 dev {veth}")
            inside = ["link set lo up", "link set eth0 up"]
            for address in pod.ips:
                if address.version == 6:
                    inside.append(f"address add {address}/128 dev eth0 nodad")
                    node.append(f"route add {address}/128 dev {veth} src {NODE6}")
                else:
                    inside.append(f"address add {address}/32 dev eth0")
                    node.append(f"route add {address}/32 dev {veth} src {NODE4}")
            inside += [
                "route add fe80::1 dev eth0",
                "route add default via fe80::1 dev eth0",
                "route add 169.254.1.1 dev eth0 scope link",
                "route add default via 169.254.1.1 dev eth0 onlink",
            ]
            for cluster_ip in sorted({f.cluster_ip for f in pod.frontends}, key=str):
                backend = next(a for a in pod.ips if a.version == cluster_ip.version)
                bits = 128 if cluster_ip.version == 6 else 32
                inside.append(f"address add {cluster_ip}/{bits} dev lo")
                node.append(f"route add {cluster_ip}/{bits} via {backend} dev {veth}")
            pod_batches.append((name, inside))
        run("ip", "-n", self.node, "-batch", "-", stdin="\n".join(links) + "\n")
        for (name, inside), pod in zip(pod_batches, pods, strict=True):
            run("ip", "-n", name, "-batch", "-", stdin="\n".join(inside) + "\n")
            script = port_rewrite_ruleset(pod.resolved_frontends)
            if script is not None:
                run("ip", "netns", "exec", name, "nft", "-f", "-", stdin=script)
        run("ip", "-n", self.node, "-batch", "-", stdin="\n".join(node) + "\n")
        run(
            "ip", "netns", "exec", self.node, "sysctl", "-qw",
            "net.ipv6.conf.all.forwarding=1", "net.ipv4.ip_forward=1",
        )  # fmt: skip

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()
        problems = []
        for name in reversed(self.created):
            done = subprocess.run(["ip", "netns", "del", name], capture_output=True, text=True)
            if done.returncode != 0:
                problems.append(f"{name}: {done.stderr.strip()}")
        if problems:
            raise RuntimeError(f"could not delete namespaces: {problems}")

    # --- servers -------------------------------------------------------------------------

    def serve(self, key: PodKey, protocol: Protocol, port: int) -> None:
        """A dual-stack TCP server answering "<port>", or a UDP echo server."""
        name = self.netns[key]
        kind = socket.SOCK_STREAM if protocol is TCP else socket.SOCK_DGRAM
        sock = socket_in(name, socket.AF_INET6, kind)
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 4 << 20)  # survive a stalled thread
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(("::", port))
        self.sockets.append(sock)
        if protocol is TCP:
            sock.listen(64)
            threading.Thread(target=self._accept, args=(sock, port), daemon=True).start()
        else:
            threading.Thread(target=self._echo, args=(sock,), daemon=True).start()

    @staticmethod
    def _accept(sock: socket.socket, port: int) -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            with conn:
                conn.sendall(str(port).encode())

    @staticmethod
    def _echo(sock: socket.socket) -> None:
        while True:
            try:
                data, peer = sock.recvfrom(2048)
            except OSError:
                return  # closed
            with contextlib.suppress(PermissionError):  # a reply our egress chain drops
                sock.sendto(data, peer)

    # --- probes --------------------------------------------------------------------------

    def tcp(self, src: str, dst: IPAddress, port: int) -> bool:
        family = socket.AF_INET6 if dst.version == 6 else socket.AF_INET
        with socket_in(src, family, socket.SOCK_STREAM) as sock:
            sock.settimeout(TIMEOUT)
            try:
                sock.connect((str(dst), port))
                return sock.recv(16) != b""
            except OSError:
                return False

    def udp(self, src: str, dst: IPAddress, port: int) -> bool:
        family = socket.AF_INET6 if dst.version == 6 else socket.AF_INET
        with socket_in(src, family, socket.SOCK_DGRAM) as sock:
            sock.settimeout(TIMEOUT)
            try:
                sock.sendto(b"probe", (str(dst), port))
                return sock.recv(16) == b"probe"
            except OSError:
                return False

    def sctp(self, src: str, dst_key: PodKey, dst: IPAddress, port: int) -> bool:
        """An SCTP INIT through raw sockets (this kernel has no SCTP stack: the receiver's
        raw socket sees what passed its input hook, and conntrack tracks SCTP anyway)."""
        from scapy.layers.sctp import SCTP as SCTPHeader
        from scapy.layers.sctp import SCTPChunkInit

        tag = secrets.randbits(32) or 1
        receiver = socket_in(self.netns[dst_key], socket.AF_INET6, socket.SOCK_RAW, 132)
        sender = socket_in(src, socket.AF_INET6, socket.SOCK_RAW, 132)
        with receiver, sender:
            receiver.settimeout(TIMEOUT)
            packet = SCTPHeader(sport=40000, dport=port) / SCTPChunkInit(init_tag=tag)
            try:
                sender.sendto(bytes(packet), (str(dst), 0))
            except PermissionError:
                return False  # dropped by the sender's own egress chain
            deadline = time.monotonic() + TIMEOUT
            while time.monotonic() < deadline:
                try:
                    data = receiver.recv(2048)
                except OSError:
                    return False
                if (
                    struct.unpack("!HH", data[:4]) == (40000, port)
                    and tag.to_bytes(4, "big") in data
                ):
                    return True
            return False


@pytest.fixture
def lab() -> Iterator[Lab]:
    require_root()
    made = Lab()
    try:
        yield made
    finally:
        made.close()


# --- the cluster under test --------------------------------------------------------------

S6, S4 = A("fd00:96::80"), A("10.96.0.80")
NAMESPACES = [Namespace("prod", {"env": "prod"}), Namespace("dev", {"env": "dev"})]
WEB = Pod(
    "prod",
    "web",
    {"app": "web"},
    (A("fd00:10::1"), A("10.128.0.1")),
    (
        ContainerPort(8080, TCP, "http"),
        ContainerPort(5353, UDP, "dgram"),
        ContainerPort(3868, SCTP, "sig"),
    ),
    (
        Frontend(S6, TCP, 80, "http"),
        Frontend(S4, TCP, 80, 8080),
        Frontend(S6, UDP, 53, "dgram"),
    ),
    "n1",
)
CLIENT = Pod("prod", "client", {"app": "client"}, (A("fd00:10::2"), A("10.128.0.2")), (), (), "n1")
DB = Pod(
    "prod", "db", {"app": "db"}, (A("fd00:10::3"),), (ContainerPort(5432, TCP, "pg"),), (), "n1"
)
INTRUDER = Pod(
    "dev", "intruder", {"app": "client"}, (A("fd00:10::4"), A("10.128.0.4")), (), (), "n1"
)
PODS = [WEB, CLIENT, DB, INTRUDER]
NODE = Node("n1", {NODE6, NODE4})


def sel(**labels: str) -> LabelSelector:
    return LabelSelector(labels)


POLICIES = [
    NetworkPolicy(
        "prod",
        "web-in",
        sel(app="web"),
        frozenset({"Ingress"}),
        ingress=(
            PolicyRule(
                (Peer(pod_selector=sel(app="client")),),
                (PolicyPort(TCP, "http"), PolicyPort(UDP, "dgram"), PolicyPort(SCTP, 3868)),
            ),
        ),
    ),
    NetworkPolicy(
        "prod",
        "db-in",
        sel(app="db"),
        frozenset({"Ingress"}),
        ingress=(PolicyRule((Peer(namespace_selector=sel(env="dev")),)),),
    ),
    NetworkPolicy(
        "prod",
        "client-out",
        sel(app="client"),
        frozenset({"Egress"}),
        egress=(
            PolicyRule(
                (Peer(pod_selector=sel(app="web")),),
                (PolicyPort(TCP, 8080), PolicyPort(UDP, 5353), PolicyPort(SCTP, "sig")),
            ),
            PolicyRule((Peer(pod_selector=sel(app="db")),), (PolicyPort(TCP, "pg"),)),
        ),
    ),
]


def expected(cluster: Cluster, src: Pod, dst: IPAddress, protocol: Protocol, port: int) -> bool:
    """Kubernetes' verdict for a connection from `src` to `dst`:`port` (reference)."""
    source = next(a for a in src.ips if a.version == dst.version)
    for pod in cluster.pods.values():
        if dst in pod.ips:
            return reference_egress(cluster, src, dst, protocol, port) and reference_ingress(
                cluster, pod, source, protocol, port
            )
        for f in pod.resolved_frontends:
            if (f.cluster_ip, f.protocol, f.port) == (dst, protocol, port):
                assert isinstance(f.target_port, int)
                backend = next(a for a in pod.ips if a.version == dst.version)
                return reference_egress(
                    cluster, src, backend, protocol, f.target_port
                ) and reference_ingress(cluster, pod, source, protocol, f.target_port)
    raise AssertionError(f"{dst} is no pod's and no frontend's")


def program(
    lab: Lab, backend: NftablesBackend, compiled: dict[PodKey, PodRules]
) -> dict[str, Outcome]:
    return backend.apply_many({lab.netns[k]: rules for k, rules in compiled.items()})


PROBES: list[tuple[Pod, IPAddress, Protocol, int]] = [
    (CLIENT, A("fd00:10::1"), TCP, 8080),
    (CLIENT, A("10.128.0.1"), TCP, 8080),
    (CLIENT, A("fd00:10::1"), TCP, 9000),  # a port web listens on, no policy opens
    (CLIENT, S6, TCP, 80),  # ClusterIP, rewritten to 8080 in web
    (CLIENT, S4, TCP, 80),
    (INTRUDER, S6, TCP, 80),  # the same service port, from a peer web does not allow
    (INTRUDER, A("10.128.0.1"), TCP, 8080),
    (INTRUDER, A("fd00:10::1"), TCP, 9000),
    (CLIENT, A("fd00:10::3"), TCP, 5432),  # client may send, db does not accept prod
    (INTRUDER, A("fd00:10::3"), TCP, 5432),
    (CLIENT, A("fd00:10::4"), TCP, 7000),  # client's egress is limited
    (WEB, A("fd00:10::2"), TCP, 7000),  # client's ingress is not
    (WEB, A("10.128.0.4"), TCP, 7000),
    (CLIENT, A("fd00:10::1"), UDP, 5353),
    (CLIENT, A("10.128.0.1"), UDP, 5353),
    (CLIENT, S6, UDP, 53),  # UDP ClusterIP, 53 -> 5353
    (INTRUDER, S6, UDP, 53),
    (CLIENT, A("fd00:10::1"), UDP, 5354),
    (INTRUDER, A("fd00:10::1"), UDP, 5353),
]


@pytest.mark.netns
def test_real_connections_pass_exactly_as_kubernetes_semantics_say(lab: Lab) -> None:
    cluster = Cluster.of(NAMESPACES, PODS, POLICIES, [NODE])
    lab.build(PODS)
    for key, protocol, port in [
        (WEB.key, TCP, 8080), (WEB.key, TCP, 9000), (WEB.key, UDP, 5353), (WEB.key, UDP, 5354),
        (DB.key, TCP, 5432), (CLIENT.key, TCP, 7000), (INTRUDER.key, TCP, 7000),
    ]:  # fmt: skip
        lab.serve(key, protocol, port)
    before = _run_probes(lab, cluster)
    assert all(before.values()), f"without policies everything passes: {before}"

    backend = NftablesBackend()
    outcomes = program(lab, backend, compile_node(cluster, "n1"))
    assert outcomes[lab.netns[INTRUDER.key]] is Outcome.REMOVED  # not isolated: no table
    assert TABLE not in set(tables_of(lab.netns[INTRUDER.key]))
    assert TABLE in set(tables_of(lab.netns[WEB.key]))

    got = _run_probes(lab, cluster)
    want = {probe: expected(cluster, *probe) for probe in PROBES}
    wrong = {f"{p[0].name} -> {p[1]} {p[2]}/{p[3]}": want[p] for p in PROBES if got[p] != want[p]}
    assert not wrong, f"verdicts differing from the reference (want): {wrong}"
    assert sum(want.values()) not in (0, len(want))  # the table has both verdicts

    # The node always reaches its pods (kubelet probes), isolated or not.
    assert lab.tcp(lab.node, A("fd00:10::1"), 9000) and lab.tcp(lab.node, A("10.128.0.1"), 9000)
    # Replies: web's answers to client pass web's and client's tables both ways.
    assert backend.counters(lab.netns[WEB.key])["ingress_dropped"] > 0
    assert backend.counters(lab.netns[CLIENT.key])["invalid_dropped"] == 0

    # SCTP: allowed to web's 3868 from client, not to 3869 nor from intruder.
    assert lab.sctp(lab.netns[CLIENT.key], WEB.key, A("fd00:10::1"), 3868)
    assert not lab.sctp(lab.netns[CLIENT.key], WEB.key, A("fd00:10::1"), 3869)
    assert not lab.sctp(lab.netns[INTRUDER.key], WEB.key, A("fd00:10::1"), 3868)

    # Dropping every policy removes every table and everything passes again.
    outcomes = program(lab, backend, compile_node(Cluster.of(NAMESPACES, PODS, [], [NODE]), "n1"))
    assert set(outcomes.values()) <= {Outcome.REMOVED, Outcome.UNCHANGED}
    assert not any(TABLE in set(tables_of(ns)) for ns in lab.netns.values())
    assert all(_run_probes(lab, cluster).values())


def _run_probes(lab: Lab, cluster: Cluster) -> dict[tuple[Pod, IPAddress, Protocol, int], bool]:
    def probe(item: tuple[Pod, IPAddress, Protocol, int]) -> bool:
        src, dst, protocol, port = item
        check = lab.tcp if protocol is TCP else lab.udp
        return check(lab.netns[src.key], dst, port)

    with ThreadPoolExecutor(len(PROBES)) as pool:
        return dict(zip(PROBES, pool.map(probe, PROBES), strict=True))


@pytest.mark.netns
def test_a_service_port_is_judged_as_its_target_port_in_the_pod(lab: Lab) -> None:
    """Allowing the service port (80) is not allowing the service: the pod rewrites it to
    8080 before its input hook, and 8080 is what the policy must name."""
    only_80 = replace(
        POLICIES[0],
        ingress=(PolicyRule((Peer(pod_selector=sel(app="client")),), (PolicyPort(TCP, 80),)),),
    )
    cluster = Cluster.of(NAMESPACES, PODS, [only_80], [NODE])
    lab.build(PODS)
    lab.serve(WEB.key, TCP, 8080)
    lab.serve(WEB.key, TCP, 80)
    NftablesBackend().apply(lab.netns[WEB.key], compile_node(cluster)[WEB.key])
    client = lab.netns[CLIENT.key]
    assert lab.tcp(client, A("fd00:10::1"), 80)  # the pod's own port 80
    assert not lab.tcp(client, S6, 80)  # the service's 80 is the pod's 8080
    assert not lab.tcp(client, S4, 80)
    assert not expected(cluster, CLIENT, S6, TCP, 80)


# --- atomic updates under traffic -------------------------------------------------------


@dataclass
class Flow:
    """Numbered UDP datagrams from `src` to `dst`, echoed back; what came back is
    recorded, and `sent` is the number of the next datagram."""

    sock: socket.socket
    dst: tuple[str, int]
    sent: int = 0
    echoed: set[int] = field(default_factory=set)
    running: bool = True

    def send_forever(self, interval: float) -> None:
        next_at = time.monotonic()
        while self.running:
            self.sock.sendto(self.sent.to_bytes(4, "big"), self.dst)
            self.sent += 1
            next_at += interval
            time.sleep(max(0.0, next_at - time.monotonic()))

    def receive_forever(self) -> None:
        self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 4 << 20)
        self.sock.settimeout(0.2)
        while self.running:
            try:
                self.echoed.add(int.from_bytes(self.sock.recv(16)[:4], "big"))
            except TimeoutError:
                continue
            except OSError:
                return


@pytest.mark.netns
def test_rules_replaced_under_traffic_lose_nothing_allowed_and_pass_nothing_denied(
    lab: Lab,
) -> None:
    lab.build(PODS)
    lab.serve(WEB.key, UDP, 5353)

    def web_in(*peers: Peer) -> NetworkPolicy:
        return replace(POLICIES[0], ingress=(PolicyRule(peers, (PolicyPort(UDP, 5353),)),))

    clients = Peer(pod_selector=sel(app="client"), namespace_selector=LabelSelector())  # both
    extra = Peer(ip_block=IPBlock(ipaddress.ip_network("2001:db8::/64")))
    variants = [
        Cluster.of(NAMESPACES, PODS, [web_in(clients)], [NODE]),
        Cluster.of(NAMESPACES, PODS, [web_in(clients, extra)], [NODE]),  # set contents only
    ]
    only_prod = Peer(pod_selector=sel(app="client"), namespace_selector=sel(env="prod"))
    final = Cluster.of(NAMESPACES, PODS, [web_in(only_prod)], [NODE])
    web = lab.netns[WEB.key]
    backend = NftablesBackend()
    assert backend.apply(web, compile_node(variants[0])[WEB.key]) is Outcome.REPLACED

    flows = {
        name: Flow(
            socket_in(lab.netns[pod.key], socket.AF_INET6, socket.SOCK_DGRAM), ("fd00:10::1", 5353)
        )
        for name, pod in (("allowed", CLIENT), ("revoked", INTRUDER))
    }
    threads = [
        threading.Thread(target=target, daemon=True)
        for flow in flows.values()
        for target in (lambda f=flow: f.send_forever(0.001), flow.receive_forever)
    ]
    for thread in threads:
        thread.start()
    try:
        outcomes = []
        for i in range(24):
            rules = compile_node(variants[i % 2])[WEB.key]
            outcomes.append(backend.apply(web, rules, force=i % 4 == 3))
            time.sleep(0.02)
        assert {Outcome.UPDATED, Outcome.REPLACED} <= set(outcomes)
        # Our rules dropped nothing while both flows were allowed (counters survive
        # every change: the skeleton is never recreated).
        assert backend.counters(web) == dict.fromkeys(COUNTERS, 0)
        # Only the peer set's contents change: element deletes in one transaction.
        assert backend.apply(web, compile_node(final)[WEB.key]) is Outcome.UPDATED
        cutoff = flows["revoked"].sent  # every datagram from here on left after the commit
        time.sleep(0.3)
    finally:
        for flow in flows.values():
            flow.running = False
        for thread in threads:
            thread.join()
        for flow in flows.values():
            flow.sock.close()

    allowed, revoked = flows["allowed"], flows["revoked"]
    lost = set(range(allowed.sent - 5)) - allowed.echoed  # the last few may be in flight
    assert allowed.sent > 300 and not lost, (
        f"allowed flow lost {sorted(lost)[:20]} of {allowed.sent}"
    )
    passed_late = sorted(n for n in revoked.echoed if n >= cutoff)
    assert not passed_late, f"revoked flow passed after the transaction: {passed_late[:20]}"
    assert revoked.echoed and max(revoked.echoed) < cutoff  # it did flow until the change
    # The revoked flow was established in conntrack (echoed both ways): it is its packets,
    # judged again at every one, that the new rules drop, not a conntrack flush.
    assert backend.counters(web)["ingress_dropped"] > 0


def test_rendered_tables_use_sets_not_a_rule_per_peer() -> None:
    peers = [
        Pod("prod", f"c{i}", {"app": "client"}, (A(f"fd00:10::{2 * i + 10:x}"), A(f"10.128.{i}.1")))
        for i in range(200)
    ]
    cluster = Cluster.of(NAMESPACES, [WEB, *peers], POLICIES[:1], [NODE])
    table = render(compile_node(cluster)[WEB.key])
    assert table is not None
    rules = [rule for _, chain in table.rules for rule in chain]
    assert len(rules) < 30
    assert max(len(s.elements) for s in table.sets) == 200  # one element per peer address


def _set(name: str, *elements: str) -> NftSet:
    return NftSet(name, "ipv6_addr", True, elements)


def test_set_updates_in_place_only_when_every_packet_changes_verdict_once() -> None:
    old = {"a0_6": _set("a0_6", "fd00::1", "fd00::3"), "p0": _set("p0", "tcp . 80")}
    physical = {"a0_6": "a0_6_g1", "p0": "p0_g2"}

    def update(*new: NftSet) -> str | None:
        return update_script(old, new, physical, TABLE)

    grown = update(_set("a0_6", "fd00::1", "fd00::3", "fd00::5"), old["p0"])
    assert grown == f"add element inet {TABLE} a0_6_g1 {{ fd00::5 }}\n"
    shrunk = update(_set("a0_6", "fd00::1"), old["p0"])
    assert shrunk == f"delete element inet {TABLE} a0_6_g1 {{ fd00::3 }}\n"
    assert update(old["a0_6"], old["p0"]) == ""
    # A range widened (or a peer moving between sets): adds and deletes at once.
    assert update(_set("a0_6", "fd00::1-fd00::3"), old["p0"]) is None
    assert update(_set("a0_6", "fd00::1"), _set("p0", "tcp . 80", "tcp . 443")) is None
    # The ClusterIP dispatch set moves packets between two rule sets: never in place.
    svc = {"svc_6": _set("svc_6", "fd00:96::1")}
    assert (
        update_script(svc, [_set("svc_6", "fd00:96::1", "fd00:96::2")], {"svc_6": "s"}, TABLE)
        is None
    )


def test_a_pod_isolated_in_neither_way_gets_no_table_and_rules_name_only_declared_sets() -> None:
    cluster = Cluster.of(NAMESPACES, PODS, POLICIES, [NODE])
    compiled = compile_node(cluster)
    assert render(compiled[INTRUDER.key]) is None
    for key in (WEB.key, CLIENT.key, DB.key):
        table = render(compiled[key])
        assert table is not None
        declared = {s.name for s in table.sets}
        used = {
            name
            for _, chain in table.rules
            for rule in chain
            for name in _SET_REFERENCE.findall(rule)
        }
        assert used == declared
        assert {chain for chain, _ in table.rules} == {"ingress", "egress", *REGULAR_CHAINS}


@pytest.mark.netns
def test_translations_load_into_nft_and_read_back_as_they_were(netns_factory: NetnsFactory) -> None:
    """The client-side translation chains (Services outside the cluster) are what the
    kernel takes, and a restarted agent reads them back: one target (a plain DNAT), several
    (numgen), with affinity (a set per target), none (refused), each protocol, both
    families."""
    translations = [
        ClientTranslation(Protocol.TCP, "fd00:96::20", 80, (("fd00:ff::fffe", 8080),)),
        ClientTranslation(
            Protocol.TCP,
            "fd00:96::21",
            443,
            (("fd00:ff::fffd", 6443), ("fd00:ff::fffe", 6443), ("fd00:ff::ffff", 6443)),
            600,
        ),
        ClientTranslation(Protocol.UDP, "10.96.0.20", 53, (("192.0.2.253", 5353),), 30),
        ClientTranslation(
            Protocol.SCTP, "10.96.0.21", 9, (("192.0.2.253", 9), ("192.0.2.254", 10))
        ),
        # Services without endpoints: refused.
        ClientTranslation(Protocol.TCP, "fd00:96::22", 80, ()),
        ClientTranslation(Protocol.UDP, "fd00:96::22", 53, ()),
        ClientTranslation(Protocol.SCTP, "10.96.0.22", 9, ()),
    ]
    script = port_rewrite_ruleset((), "srv6ctl_t", translations=translations)
    assert script is not None
    pod = netns_factory()
    run_nft(f"/var/run/netns/{pod.name}", ["-f", "-"], script)
    listing = pod.exec("nft", "-j", "list", "table", "inet", "srv6ctl_t").stdout
    assert sorted(parse_translations(listing)) == sorted(translations)
    assert parse_translations("") == []
