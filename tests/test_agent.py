"""The node agent for real: a node namespace, pods wired by the real srv6-cni, the lab source.

One node with a client pod and two backend pods of a service (port 80 → targetPort 8080):
the service works without NAT, a restart writes nothing, SIGTERM leaves the dataplane, a
route deleted by hand comes back, and an etcd outage keeps the dataplane and turns CNI
ADD into "try again later" until the store is back.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from srv6ctl.agent import Agent, AgentOptions, query_agent
from srv6ctl.cli import EXIT_DATAPLANE_UNAVAILABLE
from srv6ctl.config import parse_config
from srv6ctl.dataplane.kernel import KernelBackend
from srv6ctl.dataplane.kernel_caps import LWTUNNEL_OPTION
from tests.support.etcd import EtcdServer, require_etcd
from tests.support.kernel import host_kernel_problem
from tests.support.netns import Netns, NetnsFactory
from tests.support.wait import wait_for

BIN = Path(sys.executable).parent
SERVICE_IP = "fd00:96::10"

SERVER = """
import socket, sys
s = socket.socket(socket.AF_INET6)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("::", 8080)); s.listen()
while True:
    c, peer = c_peer = s.accept()
    c.sendall(f"{sys.argv[1]} {peer[0]} {c.getsockname()[0]}".encode()); c.close()
"""

CLIENT = """
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)
print(s.recv(200).decode(), s.getpeername()[0])
"""


@dataclass
class Node:
    """One emulated node: its namespace, its agent, its lab directory and its pods."""

    node: Netns
    tmp: Path
    factory: NetnsFactory
    store: dict[str, Any]
    agent: subprocess.Popen[bytes] | None = None
    pods: dict[str, tuple[Netns, str]] = field(default_factory=dict)  # name → (netns, ip)
    servers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    agent_args: list[str] = field(default_factory=list)  # e.g. --dataplane vpp ...

    @property
    def api(self) -> str:
        return str(self.tmp / "agent.sock")

    @property
    def cni_socket(self) -> str:
        return str(self.tmp / "cni.sock")

    @property
    def config(self) -> dict[str, Any]:
        return {
            "addressPlan": {"podCIDRv6": "fd00:10::/48", "serviceCIDRv6": "fd00:96::/108"},
            "store": self.store,
        }

    def start_agent(self, resync: float = 1.0) -> None:
        self.spawn_agent(resync)
        try:
            # 60 s, as `lab up` waits: in a TCG VM (make test-kernels) the agent's imports
            # alone take ~20 s; natively it is ready in about a second.
            wait_for(lambda: self._ready(), 60, "the agent to be ready")
        except AssertionError as err:  # say why: the agent's own words
            log = (self.tmp / "agent.log").read_text()[-3000:]
            raise AssertionError(f"{err}; its log ends:\n{log}") from None

    def spawn_agent(self, resync: float = 1.0) -> None:
        (self.tmp / "config.yaml").write_text(yaml.safe_dump(self.config))
        log = open(self.tmp / "agent.log", "ab")  # noqa: SIM115 - the child keeps it
        self.agent = subprocess.Popen(
            [
                str(BIN / "srv6ctl"),
                "agent",
                "--node-name",
                "n1",
                "--config",
                str(self.tmp / "config.yaml"),
                "--netns",
                self.node.name,
                "--lab-dir",
                str(self.tmp / "objects"),
                "--cni-socket",
                self.cni_socket,
                "--api-socket",
                self.api,
                "--resync",
                str(resync),
                "--metrics-address",
                "127.0.0.1:0",
                *self.agent_args,
            ],
            stdout=log,
            stderr=log,
        )

    def _ready(self) -> bool:
        assert self.agent is not None
        if self.agent.poll() is not None:
            raise AssertionError((self.tmp / "agent.log").read_text())
        try:
            return bool(query_agent(self.api, "status")["ready"])
        except OSError:
            return False

    def stop_agent(self) -> None:
        if self.agent is not None and self.agent.poll() is None:
            self.agent.send_signal(signal.SIGTERM)
            self.agent.wait(10)
        self.agent = None

    def cni(self, command: str, pod: str, netns: Netns) -> dict[str, Any]:
        config = {
            "cniVersion": "1.1.0",
            "name": "srv6",
            "type": "srv6-cni",
            "agentSocket": self.cni_socket,
        }
        env = {
            **os.environ,
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": f"ctr-{pod}",
            "CNI_NETNS": f"/var/run/netns/{netns.name}",
            "CNI_IFNAME": "eth0",
            "CNI_PATH": "/opt/cni/bin",
            "CNI_ARGS": f"K8S_POD_NAMESPACE=default;K8S_POD_NAME={pod};K8S_POD_UID=uid-{pod}",
        }
        done = subprocess.run(
            [str(BIN / "srv6-cni")],
            input=json.dumps(config).encode(),
            env=env,
            capture_output=True,
            timeout=60,
        )
        return json.loads(done.stdout) if done.stdout.strip() else {}

    def add_pod(self, pod: str) -> str:
        netns = self.factory()
        result = self.cni("ADD", pod, netns)
        assert "ips" in result, result
        ip = result["ips"][0]["address"].split("/")[0]
        self.pods[pod] = (netns, ip)
        return ip

    def write_objects(self, ready: dict[str, bool], extra: tuple[dict[str, Any], ...] = ()) -> None:
        pods = [
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": name, "namespace": "default", "uid": f"uid-{name}"},
                "spec": {
                    "nodeName": "n1",
                    "containers": [
                        {
                            "name": "c",
                            "image": "x",
                            "ports": [{"name": "http", "containerPort": 8080}],
                        }
                    ],
                },
                "status": {
                    "phase": "Running",
                    "podIP": ip,
                    "podIPs": [{"ip": ip}],
                    "conditions": [{"type": "Ready", "status": "True"}],
                },
            }
            for name, (_, ip) in self.pods.items()
        ]
        objects = [
            {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {"name": "n1"},
                "status": {"addresses": [{"type": "InternalIP", "address": "fd00:ff::1"}]},
            },
            *pods,
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "web", "namespace": "default", "uid": "uid-svc-web"},
                "spec": {
                    "clusterIP": SERVICE_IP,
                    "clusterIPs": [SERVICE_IP],
                    "ipFamilies": ["IPv6"],
                    "ports": [
                        {"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}
                    ],
                },
            },
            {
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {
                    "name": "web-1",
                    "namespace": "default",
                    "labels": {"kubernetes.io/service-name": "web"},
                },
                "addressType": "IPv6",
                "endpoints": [
                    {
                        "addresses": [self.pods[name][1]],
                        "conditions": {"ready": up, "serving": up, "terminating": False},
                        "nodeName": "n1",
                        "targetRef": {"kind": "Pod", "name": name, "namespace": "default"},
                    }
                    for name, up in ready.items()
                ],
                "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            },
            *extra,
        ]
        (self.tmp / "objects").mkdir(exist_ok=True)
        path = self.tmp / "objects" / "cluster.yaml"
        path.with_suffix(".tmp").write_text(yaml.safe_dump_all(objects))
        path.with_suffix(".tmp").rename(path)

    def serve(self, pod: str) -> None:
        netns, _ = self.pods[pod]
        self.servers.append(
            subprocess.Popen(["ip", "netns", "exec", netns.name, sys.executable, "-c", SERVER, pod])
        )

    def connect(self, pod: str, host: str, port: int) -> tuple[str, str, str, str]:
        netns, _ = self.pods[pod]
        done = netns.exec(sys.executable, "-c", CLIENT, host, str(port), check=False)
        assert done.returncode == 0, done.stderr
        backend, seen_client, local, peer = done.stdout.split()
        return backend, seen_client, local, peer

    def dump(self) -> Any:
        with KernelBackend(self.node.name) as backend:
            return backend.dump()


@pytest.fixture
def lab_node(netns_factory: NetnsFactory, tmp_path: Path) -> Iterator[Node]:
    node_ns = netns_factory()
    node_ns.ip("link", "add", "eth0", "type", "veth", "peer", "name", "eth1")
    node_ns.ip("addr", "add", "fd00:ff::1/64", "dev", "eth0", "nodad")
    node_ns.ip("link", "set", "eth0", "up")
    node_ns.ip("link", "set", "eth1", "up")
    node = Node(
        node_ns, tmp_path, netns_factory, {"type": "embedded", "path": str(tmp_path / "ipam.db")}
    )
    node.write_objects({})
    try:
        yield node
    finally:
        for server in node.servers:
            server.kill()
            server.wait()
        for pod, (netns, _) in list(node.pods.items()):
            if node.agent is not None and node.agent.poll() is None:
                node.cni("DEL", pod, netns)
        node.stop_agent()


def bring_up(node: Node) -> None:
    node.start_agent()
    client_ip = node.add_pod("client")
    for backend in ("web-a", "web-b"):
        node.add_pod(backend)
        node.serve(backend)
    node.write_objects({"web-a": True, "web-b": True})
    wait_for(
        lambda: any(str(s.prefix) == f"{SERVICE_IP}/128" for s in node.dump().steerings),
        20,
        "the service steering",
    )
    assert client_ip


@pytest.mark.kernel_srv6
def test_service_without_nat_restart_and_sigterm(lab_node: Node) -> None:
    bring_up(lab_node)
    client_ip = lab_node.pods["client"][1]
    seen = set()
    for _ in range(12):
        backend, seen_client, local, peer = lab_node.connect("client", SERVICE_IP, 80)
        # No NAT: the backend saw the client's own address and answered from the ClusterIP.
        assert (seen_client, local, peer) == (client_ip, SERVICE_IP, SERVICE_IP)
        seen.add(backend)
    assert seen == {"web-a", "web-b"}

    # The agent is observable: ready, CNI latencies and the service's SID counters.
    url = query_agent(lab_node.api, "status")["metrics"]
    assert urllib.request.urlopen(f"{url}/readyz", timeout=5).status == 200
    metrics = urllib.request.urlopen(f"{url}/metrics", timeout=5).read().decode()
    assert 'srv6ctl_cni_request_duration_seconds_count{code="0",command="ADD"} 3.0' in metrics
    dx6 = [
        line
        for line in metrics.splitlines()
        if line.startswith("srv6ctl_sid_packets_total") and 'behaviour="End.DX6"' in line
    ]
    assert sum(float(line.split()[-1]) for line in dx6) >= 12  # every connection's SYN at least
    assert "srv6ctl_agent_ready 1.0" in metrics

    before = lab_node.dump()
    lab_node.stop_agent()  # SIGTERM: the dataplane stays
    assert lab_node.dump() == before
    assert lab_node.connect("client", SERVICE_IP, 80)[1] == client_ip

    lab_node.start_agent()  # a restart with nothing changed writes nothing
    status = query_agent(lab_node.api, "status")
    assert status["changes"] == 0, status
    assert lab_node.dump() == before


@pytest.mark.kernel_srv6
def test_unready_endpoint_leaves_and_hand_deleted_route_comes_back(lab_node: Node) -> None:
    bring_up(lab_node)
    lab_node.write_objects({"web-a": True, "web-b": False})
    wait_for(
        lambda: all(
            len(p.segment_lists) == 1
            for p in lab_node.dump().policies
            if p.bsid
            == next(
                s.bsid for s in lab_node.dump().steerings if str(s.prefix) == f"{SERVICE_IP}/128"
            )
        ),
        20,
        "web-b to leave the policy",
    )
    assert {lab_node.connect("client", SERVICE_IP, 80)[0] for _ in range(8)} == {"web-a"}

    lab_node.node.ip("-6", "route", "del", f"{SERVICE_IP}/128")
    wait_for(
        lambda: "nhid" in lab_node.node.ip("-6", "route", "show", f"{SERVICE_IP}/128"),
        20,
        "the resync to restore the route",
    )
    assert query_agent(lab_node.api, "status")["repairs"] >= 1

    lab_node.write_objects({"web-a": False, "web-b": False})
    wait_for(
        lambda: "prohibit" in lab_node.node.ip("-6", "route", "show", f"{SERVICE_IP}/128"),
        20,
        "the reject route",
    )
    netns, _ = lab_node.pods["client"]
    refused = netns.exec(sys.executable, "-c", CLIENT, SERVICE_IP, "80", check=False)
    assert refused.returncode != 0 and "Permission denied" in refused.stderr


# N new connections; per answer "backend client-it-saw its-local-address peer", counted.
SPREAD = """
import collections, json, socket, sys
seen = collections.Counter()
for _ in range(int(sys.argv[3])):
    try:
        s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
        seen[s.recv(200).decode() + " " + s.getpeername()[0]] += 1
        s.close()
    except OSError as err:
        seen[type(err).__name__] += 1
print(json.dumps(seen))
"""


def assert_hairpin_spreads(node: Node, path: str = "") -> None:
    """web-a's own 60 new connections to the ClusterIP reach both backends, web-a itself
    included, each seeing web-a's address and answering from the ClusterIP; the client's
    reach both too. `path` names the node side in the printed spread (" through VPP")."""
    web_a, ip_a = node.pods["web-a"]
    wait_for(
        lambda: f"to {SERVICE_IP} iif lo lookup main proto 92" in web_a.ip("-6", "rule", "show"),
        20,
        "web-a's hairpin rule",
    )
    own = spread(node, "web-a", 60)
    print(f"web-a -> {SERVICE_IP}:80{path}, 60 new connections: {own}")
    assert set(own) == {f"{b} {ip_a} {SERVICE_IP} {SERVICE_IP}" for b in ("web-a", "web-b")}, own
    client_ip = node.pods["client"][1]
    theirs = spread(node, "client", 20)
    print(f"client -> {SERVICE_IP}:80{path}, 20 new connections: {theirs}")
    assert set(theirs) == {f"{b} {client_ip} {SERVICE_IP} {SERVICE_IP}" for b in ("web-a", "web-b")}


def spread(node: Node, pod: str, count: int) -> dict[str, int]:
    netns, _ = node.pods[pod]
    done = netns.exec(sys.executable, "-c", SPREAD, SERVICE_IP, "80", str(count))
    return dict(json.loads(done.stdout))


@pytest.mark.kernel_srv6(vm=True)
def test_a_backend_reaching_its_own_service_is_load_balanced(lab_node: Node) -> None:
    """Issue 17: a backend's own connections to its Service's ClusterIP leave through the
    node's SR policy like anyone's and reach every backend, itself included (port 80 is
    rewritten to 8080 in whichever pod answers); no NAT: each backend sees web-a's own
    address and answers from the ClusterIP. Traffic from elsewhere still reaches web-a."""
    bring_up(lab_node)
    assert_hairpin_spreads(lab_node)
    web_a, ip_a = lab_node.pods["web-a"]

    # web-a not ready: still listed, so it keeps the VIP (and its rules), but the policy
    # has web-b alone, so that is where web-a's own connections go, as kube-proxy would.
    lab_node.write_objects({"web-a": False, "web-b": True})
    wait_for(lambda: _segment_lists(lab_node) == 1, 20, "web-a to leave the policy")
    assert set(spread(lab_node, "web-a", 6)) == {f"web-b {ip_a} {SERVICE_IP} {SERVICE_IP}"}
    # Out of the slice: its VIP and rules go and the kernel's local rule is back at 0.
    lab_node.write_objects({"web-b": True})
    wait_for(lambda: "proto 92" not in web_a.ip("-6", "rule", "show"), 20, "the rules to go")
    assert web_a.ip("-6", "rule", "show").startswith("0:\tfrom all lookup local")
    assert SERVICE_IP not in web_a.ip("-6", "addr", "show", "dev", "lo")


def _segment_lists(node: Node) -> int:
    dump = node.dump()
    (bsid,) = {s.bsid for s in dump.steerings if str(s.prefix) == f"{SERVICE_IP}/128"}
    return sum(len(p.segment_lists) for p in dump.policies if p.bsid == bsid)


@pytest.mark.etcd
@pytest.mark.kernel_srv6
def test_store_outage_keeps_the_dataplane_and_defers_cni_add(lab_node: Node) -> None:
    require_etcd()
    with EtcdServer() as etcd:
        lab_node.store = {
            "type": "etcd",
            "etcd": {"endpoints": [etcd.endpoint], "timeoutSeconds": 1},
        }
        bring_up(lab_node)
        before = lab_node.dump()
        etcd.pause()
        try:
            time.sleep(2.5)  # at least one resync against an unreachable store
            assert lab_node.dump() == before
            late = lab_node.factory()
            error = lab_node.cni("ADD", "late", late)
            assert error.get("code") == 11, error  # try again later
            assert lab_node.connect("client", SERVICE_IP, 80)[1] == lab_node.pods["client"][1]
            # DEL does not wait for the store: the interface goes now, the address later.
            web_b, _ = lab_node.pods.pop("web-b")
            assert lab_node.cni("DEL", "web-b", web_b) == {}
            assert "eth0" not in web_b.ip("link", "show")
            # The cluster follows (web-b leaves the slice); render needs no store for that.
            lab_node.write_objects({"web-a": True})
            wait_for(
                lambda: all(
                    len(p.segment_lists) == 1
                    for p in lab_node.dump().policies
                    if "fd00:96::10/128"
                    in {str(s.prefix) for s in lab_node.dump().steerings if s.bsid == p.bsid}
                ),
                20,
                "web-b to leave the service",
            )
            for _ in range(4):
                backend, client, _, _ = lab_node.connect("client", SERVICE_IP, 80)
                assert (backend, client) == ("web-a", lab_node.pods["client"][1])
        finally:
            etcd.resume()
        # The agent recovers by itself: ADD works again and the pod gets an address.
        wait_for(lambda: "ips" in lab_node.cni("ADD", "late", late), 30, "CNI ADD to succeed again")
        lab_node.cni("DEL", "late", late)

        def released() -> bool:
            pods = query_agent(lab_node.api, "allocations")["pods"]
            return {p["container_id"] for p in pods} == {"ctr-client", "ctr-web-a"}

        wait_for(released, 30, "the deferred release of web-b's address")


HOST_SERVICE = (
    {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "api", "namespace": "default", "uid": "uid-svc-api"},
        "spec": {
            "clusterIP": "fd00:96::20",
            "clusterIPs": ["fd00:96::20"],
            "ipFamilies": ["IPv6"],
            "ports": [{"name": "https", "port": 8080, "targetPort": 8080, "protocol": "TCP"}],
        },
    },
    {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": "api-1",
            "namespace": "default",
            "labels": {"kubernetes.io/service-name": "api"},
        },
        "addressType": "IPv6",
        # A host-network endpoint: the node's own InternalIP (like kube-apiserver's).
        "endpoints": [
            {"addresses": ["fd00:ff::1"], "conditions": {"ready": True}, "nodeName": "n1"}
        ],
        "ports": [{"name": "https", "port": 8080, "protocol": "TCP"}],
    },
)


@pytest.mark.kernel_srv6
def test_host_network_endpoint_is_reached_through_its_nodes_host_sid(lab_node: Node) -> None:
    bring_up(lab_node)
    lab_node.write_objects({"web-a": True, "web-b": True}, extra=HOST_SERVICE)
    wait_for(
        lambda: (
            "local fd00:96::20"
            in lab_node.node.ip("-6", "route", "show", "table", "93", check=False)
        ),
        20,
        "the host-services route",
    )
    # The "host-network pod": a server in the node's own namespace, on the node's address.
    server = subprocess.Popen(
        ["ip", "netns", "exec", lab_node.node.name, sys.executable, "-c", SERVER, "host"]
    )
    lab_node.servers.append(server)
    time.sleep(0.5)
    backend, seen_client, local, peer = lab_node.connect("client", "fd00:96::20", 8080)
    # Delivered to the node's stack by End.DT6 L::7, answered from the ClusterIP, no NAT.
    assert (backend, seen_client, local, peer) == (
        "host",
        lab_node.pods["client"][1],
        "fd00:96::20",
        "fd00:96::20",
    )
    assert query_agent(lab_node.api, "status")["changes"] > 0
    assert not query_agent(lab_node.api, "drift")


@pytest.mark.kernel_srv6
def test_a_deleted_service_gives_its_bsid_index_back(lab_node: Node) -> None:
    bring_up(lab_node)
    db = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "db", "namespace": "default", "uid": "uid-svc-db"},
        "spec": {
            "clusterIP": "fd00:96::20",
            "clusterIPs": ["fd00:96::20"],
            "ipFamilies": ["IPv6"],
            "ports": [{"name": "sql", "port": 5432, "protocol": "TCP"}],
        },
    }

    def services() -> set[str]:
        return {s["uid"] for s in query_agent(lab_node.api, "allocations")["services"]}

    lab_node.write_objects({"web-a": True, "web-b": True}, (db,))
    wait_for(lambda: services() == {"uid-svc-web", "uid-svc-db"}, 20, "db's allocation")
    lab_node.write_objects({"web-a": True, "web-b": True})
    # Freed at the next full resync (every second here); web keeps its own.
    wait_for(lambda: services() == {"uid-svc-web"}, 20, "db's allocation to be freed")
    assert any(str(s.prefix) == f"{SERVICE_IP}/128" for s in lab_node.dump().steerings)


def test_an_agent_on_a_kernel_without_srv6_stops_at_once_and_claims_nothing(
    lab_node: Node,
) -> None:
    if (problem := host_kernel_problem()) is not None:
        assert LWTUNNEL_OPTION in problem  # the one host kind this refusal is for
    else:
        pytest.skip("the host kernel has SRv6: the refusal is for a kernel without it")
    lab_node.spawn_agent()
    assert lab_node.agent is not None
    assert lab_node.agent.wait(30) == EXIT_DATAPLANE_UNAVAILABLE
    lines = (lab_node.tmp / "agent.log").read_text().splitlines()
    assert len(lines) == 1, lines
    assert LWTUNNEL_OPTION in lines[0] and "--dataplane vpp" in lines[0]
    assert "End.DX6" in lines[0]
    # Nothing claimed: the store was never opened, so it does not even exist.
    assert not Path(lab_node.store["path"]).exists()


def test_a_dataplane_that_cannot_be_programmed_says_why_everywhere(lab_node: Node) -> None:
    """/readyz, `status`, `srv6ctl show` and CNI ADD all carry the backend's own error.

    The kernel refuses for a real reason on any host: IPv6 disabled in the node's namespace
    (on a kernel without SRv6, the seg6 routes would be refused first)."""
    lab_node.node.exec("sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")
    lab_node.node.exec("sysctl", "-qw", "net.ipv6.conf.lo.disable_ipv6=1")
    config, plan = parse_config(lab_node.config)
    options = AgentOptions(
        node_name="n1",
        netns=lab_node.node.name,
        lab_dir=str(lab_node.tmp / "objects"),
        cni_socket=lab_node.cni_socket,
        api_socket=lab_node.api,
        resync_seconds=1.0,
        metrics_address="127.0.0.1:0",
    )
    # The backend is made directly: the start-up refusal of a kernel without SRv6 (above)
    # would otherwise stop this agent before it ever tried.
    agent = Agent(options, config, plan, backend_factory=lambda: KernelBackend(lab_node.node.name))
    runner = threading.Thread(target=agent.run, daemon=True)
    runner.start()
    try:

        def status() -> dict[str, Any]:
            try:
                return dict(query_agent(lab_node.api, "status"))
            except OSError:
                return {}

        wait_for(lambda: bool(status().get("programming_error")), 20, "a programming error")
        state = status()
        error = state["programming_error"]
        assert state["rendered"] and not state["ready"]
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(agent.metrics_url + "/readyz", timeout=5)
        assert refused.value.code == 503
        body = refused.value.read().decode()
        assert body.startswith("not ready: the dataplane could not be programmed: ")
        shown = subprocess.run(
            [str(BIN / "srv6ctl"), "show", "sids", "--api-socket", lab_node.api],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert shown.returncode == 1  # its rows are all "missing"
        assert shown.stdout.startswith("rendered, not programmed: ")
        assert "missing" in shown.stdout
        answer = lab_node.cni("ADD", "client", lab_node.factory())
        assert answer["code"] == 11, answer
        assert answer["details"].startswith("the dataplane has not been programmed yet: ")
        # Each pass fails the same way: the same error in all three places.
        assert error.split(":")[0] in body and error.split(":")[0] in answer["details"]
    finally:
        agent.stop()
        runner.join(15)
