"""The node agent with `--dataplane vpp`: a real VPP 25.10 in the node namespace.

Like tests/test_agent.py (its Node, fixtures and helpers), but the node's dataplane is a
VPP this test starts in the node namespace (`SRV6CTL_VPP_BIN`, as in
tests/test_vpp_integration.py): pods wired by the real srv6-cni in VPP mode (the node end
of each veth left bare, VPP attaching it by af_packet), a Service and its EndpointSlice
from the lab source, and a client pod reaching the ClusterIP on a backend pod through VPP
— no NAT — and an agent restart that writes nothing to VPP.

Skipped with the reason unless `SRV6CTL_VPP_BIN` is set (root, vpp-papi and the API
definitions too). A VPP given by `SRV6CTL_VPP_API_SOCKET` alone is not used: the agent
owns every SR object of the VPP it is given, and the pods need VPP in the node namespace.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from ipaddress import IPv6Address
from pathlib import Path
from typing import Any

import pytest

from cni.wiring import PodSpec, PodWiring, tx_checksum
from srv6ctl.agent import query_agent
from srv6ctl.dataplane.model import EndDX6, NodeConfig
from srv6ctl.dataplane.vpp import VppBackend
from srv6ctl.dataplane.vpp_pods import PodPort
from tests.support.netns import NetnsFactory, open_in
from tests.support.vpp import BIN_ENV, VppProcess, why_no_vpp
from tests.support.wait import wait_for
from tests.test_agent import BIN, SERVICE_IP, Node, assert_hairpin_spreads, bring_up


class VppNode(Node):
    """A lab node whose dataplane is `vpp` (VPP in the node namespace)."""

    vpp: VppProcess

    def backend(self) -> VppBackend:
        return VppBackend(
            self.vpp.api_socket,
            pod_interface="af_packet",
            connect_timeout=10,
            client_name="srv6ctl-test",
        )

    def dump(self) -> NodeConfig:
        with self.backend() as backend:
            return backend.dump()

    def pod_ports(self) -> dict[str, PodPort]:
        with self.backend() as backend:
            return backend.pod_ports()

    def cli(self, command: str) -> str:
        with self.backend() as backend:
            return backend.cli(command)


@pytest.fixture
def vpp_node(netns_factory: NetnsFactory, tmp_path: Path) -> Iterator[VppNode]:
    if not os.environ.get(BIN_ENV):
        pytest.skip(
            f"no VPP: set {BIN_ENV} to a vpp 25.10 binary; this test starts it in the node "
            "namespace itself (a running VPP's socket is not used: the agent would own it)"
        )
    reason = why_no_vpp()
    if reason is not None:
        pytest.skip(reason)
    node_ns = netns_factory()
    node_ns.ip("link", "add", "eth0", "type", "veth", "peer", "name", "eth1")
    node_ns.ip("addr", "add", "fd00:ff::1/64", "dev", "eth0", "nodad")
    node_ns.ip("link", "set", "eth0", "up")
    node_ns.ip("link", "set", "eth1", "up")
    vpp = VppProcess(os.environ[BIN_ENV], node_ns.name)
    node = VppNode(
        node_ns, tmp_path, netns_factory, {"type": "embedded", "path": str(tmp_path / "ipam.db")}
    )
    node.vpp = vpp
    node.agent_args = [
        "--dataplane",
        "vpp",
        "--vpp-api-socket",
        vpp.api_socket,
        "--vpp-stats-socket",
        vpp.stats_socket,
    ]
    node.write_objects({})
    try:
        vpp.start()
        yield node
    finally:
        for server in node.servers:
            server.kill()
            server.wait()
        for pod, (netns, _) in list(node.pods.items()):
            if node.agent is not None and node.agent.poll() is None:
                node.cni("DEL", pod, netns)
        node.stop_agent()
        vpp.cleanup()


def _status(node: Node) -> dict[str, Any]:
    return dict(query_agent(node.api, "status"))


def test_service_through_vpp_without_nat_and_a_restart_writes_nothing(vpp_node: VppNode) -> None:
    bring_up(vpp_node)
    assert _status(vpp_node)["dataplane"] == "vpp"
    client_ip = vpp_node.pods["client"][1]

    # The node ends are VPP's af_packet ports, bare in the kernel (no fe80::1, no routes).
    ports = vpp_node.pod_ports()
    assert len(ports) == 3 and all(p.up and p.dev_type == "af-packet" for p in ports.values())
    for interface in ports:
        assert "inet6" not in vpp_node.node.ip("addr", "show", "dev", interface)
    assert "s6" not in vpp_node.node.ip("-6", "route", "show", "proto", "106")
    # The pod end sends frames with full checksums (VPP's af_packet reads no virtio header).
    for netns, _ in vpp_node.pods.values():
        assert open_in(netns.name, lambda: tx_checksum("eth0")) is False

    seen = set()
    for _ in range(12):
        backend, seen_client, local, peer = vpp_node.connect("client", SERVICE_IP, 80)
        # No NAT: the backend saw the client's own address and answered from the ClusterIP.
        assert (seen_client, local, peer) == (client_ip, SERVICE_IP, SERVICE_IP)
        seen.add(backend)
    assert seen == {"web-a", "web-b"}
    # The service's packets went through VPP's SRv6 policy and the pods' End.DX6 SIDs.
    with vpp_node.backend() as vpp:
        counted = vpp.counters()
        dx6 = {sid for sid in vpp.dump().local_sids if isinstance(sid, EndDX6)}
    assert len(dx6) == 3
    assert sum(counted[("localsid", sid.sid)].packets for sid in dx6) >= 12 * 2  # SYN, ACK...
    # The agent's `buckets` query (what `srv6ctl trace` shows): VPP's own load balance of
    # the service's policy, two equal lists of one bucket each (VPP's two-path fast path).
    desired = query_agent(vpp_node.api, "desired")
    (policy,) = [p for p in desired["policies"] if str(p["owner"]).startswith("svc/")]
    held = query_agent(vpp_node.api, f"buckets {policy['bsid']}")
    assert held["total"] == 2 and [sl["buckets"] for sl in held["lists"]] == [1, 1]
    assert sorted(sl["segments"] for sl in held["lists"]) == sorted(
        sl["segments"] for sl in policy["segment_lists"]
    )
    with pytest.raises(RuntimeError, match="not a BSID"):
        query_agent(vpp_node.api, "buckets web")

    # The wiring's CHECK holds in VPP mode (no node-side address or route is expected).
    wiring = PodWiring(f"/var/run/netns/{vpp_node.node.name}", mode="vpp")
    for name, (netns, ip) in vpp_node.pods.items():
        spec = PodSpec(f"ctr-{name}", "eth0", f"/var/run/netns/{netns.name}", IPv6Address(ip))
        assert wiring.check(spec) == []
        assert PodWiring(wiring.node_netns).check(spec)  # kernel mode would miss fe80::1

    # SIGTERM leaves VPP as it is; a restart with nothing changed writes nothing to it.
    before = vpp_node.dump()
    vpp_node.stop_agent()
    assert vpp_node.dump() == before
    assert vpp_node.connect("client", SERVICE_IP, 80)[1] == client_ip
    vpp_node.start_agent()
    status = _status(vpp_node)
    assert (status["changes"], status["dataplane_writes"]) == (0, 0), status
    wait_for(lambda: _status(vpp_node)["reconciles"] >= 2, 20, "a full resync after the restart")
    status = _status(vpp_node)
    assert (status["changes"], status["dataplane_writes"]) == (0, 0), status
    shown = subprocess.run(
        [str(BIN / "srv6ctl"), "show", "status", "--api-socket", vpp_node.api, "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(shown.stdout)["dataplane_writes"] == 0
    assert vpp_node.dump() == before
    assert set(vpp_node.pod_ports()) == set(ports)
    assert vpp_node.connect("client", SERVICE_IP, 80)[1] == client_ip

    # CNI DEL: the agent detaches the pod's port from VPP before the veth goes (the reverse
    # of ADD), so VPP never finds its af_packet's host interface gone ("Network is down").
    web_b, _ = vpp_node.pods.pop("web-b")
    web_b_port = _port_of(vpp_node, "web-b", ports)
    assert vpp_node.cni("DEL", "web-b", web_b) == {}
    assert set(vpp_node.pod_ports()) == set(ports) - {web_b_port}
    assert "Network is down" not in (vpp_node.vpp.dir / "stdout.log").read_text()


def test_a_backend_reaching_its_own_service_through_vpp_is_load_balanced(
    vpp_node: VppNode,
) -> None:
    """Issue 17 in VPP mode: the pod side is the same Linux namespace (podnet's hairpin
    rules), the node side VPP: web-a's own connections to the ClusterIP go out of its
    veth into VPP's SR policy and come back to every backend, web-a included."""
    bring_up(vpp_node)
    assert_hairpin_spreads(vpp_node, " through VPP")


def test_vpp_killed_and_restarted_gets_everything_back_and_cni_del_never_waits(
    vpp_node: VppNode,
) -> None:
    bring_up(vpp_node)
    client_ip = vpp_node.pods["client"][1]
    vpp_node.add_pod("spare")  # deleted while VPP is down
    vpp_node.write_objects({"web-a": True, "web-b": True})
    wait_for(lambda: len(vpp_node.pod_ports()) == 4, 20, "the spare pod's port")
    wait_for(lambda: _dx6_count(vpp_node) == 4, 20, "the spare pod's End.DX6")
    assert vpp_node.connect("client", SERVICE_IP, 80)[1] == client_ip
    before = vpp_node.dump()
    ports = vpp_node.pod_ports()
    spare_port = _port_of(vpp_node, "spare", ports)

    vpp_node.vpp.kill()  # SIGKILL: no goodbye on the API socket
    spare, _ = vpp_node.pods.pop("spare")
    # CNI DEL is served while VPP is down: the pod's port went with VPP.
    assert vpp_node.cni("DEL", "spare", spare) == {}
    vpp_node.write_objects({"web-a": True, "web-b": True})  # and the API forgets it
    # The agent answers, and its loop notices at the next resync (and backs off).
    assert _status(vpp_node)["dataplane"] == "vpp"
    log = vpp_node.tmp / "agent.log"
    wait_for(lambda: "VppUnavailable" in log.read_text(), 20, "the agent to notice")

    vpp_node.vpp.start()  # the same startup config: an empty VPP
    wanted = set(ports) - {spare_port}
    wait_for(lambda: set(vpp_node.pod_ports()) == wanted, 30, "the pods' ports back")
    expected = NodeConfig(
        encap_source=before.encap_source,
        local_sids=frozenset(
            s
            for s in before.local_sids
            if not (isinstance(s, EndDX6) and s.interface == spare_port)
        ),
        policies=before.policies,
        steerings=before.steerings,
        routes=before.routes,
    )
    wait_for(lambda: vpp_node.dump() == expected, 30, "the whole NodeConfig back")
    status = _status(vpp_node)
    assert status["dataplane_reconnects"] >= 1, status
    assert all(p.up for p in vpp_node.pod_ports().values())
    # On the wire again: ClusterIP through the policy to both backends, still no NAT.
    seen = set()
    for _ in range(12):
        backend, seen_client, local, peer = vpp_node.connect("client", SERVICE_IP, 80)
        assert (seen_client, local, peer) == (client_ip, SERVICE_IP, SERVICE_IP)
        seen.add(backend)
    assert seen == {"web-a", "web-b"}


def _dx6_count(node: VppNode) -> int:
    return sum(isinstance(s, EndDX6) for s in node.dump().local_sids)


def _port_of(node: VppNode, pod: str, ports: dict[str, PodPort]) -> str:
    from cni.wiring import host_ifname

    name = host_ifname(f"ctr-{pod}", "eth0")
    assert name in ports, (name, sorted(ports))
    return name
