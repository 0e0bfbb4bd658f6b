"""healthCheckNodePort: kube-proxy's answers, from the cluster state, over real sockets in a
throw-away namespace."""

from __future__ import annotations

import random
import socket
from typing import Any

import pytest

from srv6ctl.lab.external import health_check
from srv6ctl.service_health import HealthCheckServers, NodeHealth, ServiceHealth
from srv6ctl.state import ClusterState, ServiceKey
from tests.support.cluster import IPV6_ONLY, endpoint, endpoint_slice, node, pod, service
from tests.support.netns import Netns, open_in


def get(netns: Netns, address: str, port: int) -> tuple[int, dict[str, str], Any]:
    """One GET from inside `netns`, as the lab's load balancer asks: status, headers, the
    JSON body."""
    answer = health_check(netns.name, address, port, timeout=5)
    assert answer.status, f"no answer from [{address}]:{port}"
    return answer.status, answer.headers, answer.body


def refused(netns: Netns, port: int) -> bool:
    def attempt() -> bool:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            try:
                sock.connect(("::1", port))
            except ConnectionRefusedError:
                return True
            return False

    return open_in(netns.name, attempt)


def test_ports_answer_as_kube_proxy_and_follow_the_services(netns: Netns) -> None:
    healthy = [True]
    servers = HealthCheckServers(netns.name, "::", lambda: healthy[0])
    port, other = random.sample(range(30000, 32768), 2)
    try:
        servers.sync({port: ServiceHealth("default", "web", 2), other: ServiceHealth("a", "b", 0)})
        status, headers, body = get(netns, "::1", port)
        assert status == 200
        assert body == {
            "service": {"namespace": "default", "name": "web"},
            "localEndpoints": 2,
            "serviceProxyHealthy": True,
        }
        assert headers["content-type"] == "application/json"
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["x-load-balancing-endpoint-weight"] == "2"
        # Both families on one socket: the node's IPv4 addresses answer too.
        assert get(netns, "127.0.0.1", port)[0] == 200
        # No local endpoint, or an unhealthy proxy: 503, with the same body shape.
        status, headers, body = get(netns, "::1", other)
        assert (status, body["localEndpoints"], headers["x-load-balancing-endpoint-weight"]) == (
            503,
            0,
            "0",
        )
        healthy[0] = False
        status, _, body = get(netns, "::1", port)
        assert (status, body["serviceProxyHealthy"]) == (503, False)
        healthy[0] = True

        # A change of count is answered at once; a service gone closes its port.
        servers.sync({port: ServiceHealth("default", "web", 1)})
        assert get(netns, "::1", port)[2]["localEndpoints"] == 1
        assert refused(netns, other)
        assert servers.ports == [port]
    finally:
        servers.close()
    assert refused(netns, port)


def test_a_port_taken_by_someone_else_is_skipped_not_fatal(netns: Netns) -> None:
    port = random.randrange(30000, 32768)

    def squat() -> socket.socket:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        sock.bind(("::", port))
        sock.listen(1)
        return sock

    squatter = open_in(netns.name, squat)
    servers = HealthCheckServers(netns.name, "::", lambda: True)
    try:
        spare = port + 1 if port < 32767 else port - 1
        servers.sync({port: ServiceHealth("a", "x", 1), spare: ServiceHealth("a", "y", 1)})
        assert servers.ports == [spare]
        assert get(netns, "::1", spare)[0] == 200
    finally:
        servers.close()
        squatter.close()


def test_node_health_counts_ready_local_endpoints_of_local_policy_services() -> None:
    plan = IPV6_ONLY
    here = [pod(plan, "web-a", 1, 2), pod(plan, "web-b", 1, 3)]
    there = pod(plan, "web-c", 2, 2)
    web = service(
        "web",
        1,
        type="LoadBalancer",
        external_traffic_policy="Local",
        health_check_node_port=31001,
    )
    cluster_policy = service("cluster", 2, type="LoadBalancer", external_traffic_policy="Cluster")
    state = ClusterState()
    for obj in (node(1), node(2), *here, there, web, cluster_policy):
        state.upsert(obj)  # type: ignore[arg-type]
    slices = [endpoint(here[0]), endpoint(here[1], ready=False), endpoint(there)]
    state.upsert_endpoint_slice(endpoint_slice(web, slices))
    health = NodeHealth("node-1")
    health.update(state, None)
    assert health.ports() == {31001: ServiceHealth("default", "web", 1)}
    # The other node has its own count; a readiness flip is seen through the service key.
    elsewhere = NodeHealth("node-2")
    elsewhere.update(state, None)
    assert elsewhere.ports()[31001].local_endpoints == 1
    dirty = state.upsert_endpoint_slice(
        endpoint_slice(web, [endpoint(here[0]), endpoint(here[1]), endpoint(there)])
    )
    assert ServiceKey("default", "web") in dirty
    health.update(state, [("default", "web")])
    assert health.ports()[31001].local_endpoints == 2
    state.delete_service("default", "web")
    health.update(state, [("default", "web")])
    assert health.ports() == {}


@pytest.mark.parametrize("address", ["::", "127.0.0.1"])
def test_the_listen_address_is_the_one_given(netns: Netns, address: str) -> None:
    servers = HealthCheckServers(netns.name, address, lambda: True)
    port = random.randrange(30000, 32768)
    try:
        servers.sync({port: ServiceHealth("a", "b", 1)})
        assert get(netns, "127.0.0.1", port)[0] == 200
        if address == "127.0.0.1":
            assert refused(netns, port)  # not on ::1
    finally:
        servers.close()
