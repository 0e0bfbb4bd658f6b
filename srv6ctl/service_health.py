"""healthCheckNodePort: what each one answers on this node (pure), and the servers answering.

A LoadBalancer Service with externalTrafficPolicy Local sends external traffic only to the
endpoints on the node where it enters (render.py), so a node without one drops it. The load
balancer in front learns which nodes to use from `spec.healthCheckNodePort`, which every
node serves over HTTP exactly as kube-proxy does (pkg/proxy/healthcheck/service_health.go):
any path, status 200 when the node has a ready local endpoint and the proxy is healthy, 503
otherwise, and a JSON body

    {"service": {"namespace": "default", "name": "web"}, "localEndpoints": 2,
     "serviceProxyHealthy": true}

with `X-Load-Balancing-Endpoint-Weight: <localEndpoints>` (the weight MetalLB-style and
cloud load balancers may use) and `X-Content-Type-Options: nosniff`.

Ports open and close with the Services: `HealthCheckServers.sync` makes the listening set
exactly what `node_health` says, one socket per port, bound to the configured address in
the node's network namespace (all of the node's addresses by default, as kube-proxy).
Each server is the standard library's `ThreadingHTTPServer` — HTTP parsing is not ours to
write, and these answer a prober every few seconds, not traffic.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from srv6ctl.dataplane.nsenter import run_in_netns
from srv6ctl.state import ClusterState, DirtyKey, NamespacedName, Service, ServiceKey

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServiceHealth:
    """What one healthCheckNodePort answers on this node."""

    namespace: str
    name: str
    local_endpoints: int

    def answer(self, proxy_healthy: bool) -> tuple[int, bytes]:
        """The status code and the body, as kube-proxy's."""
        body = {
            "service": {"namespace": self.namespace, "name": self.name},
            "localEndpoints": self.local_endpoints,
            "serviceProxyHealthy": proxy_healthy,
        }
        status = 200 if self.local_endpoints and proxy_healthy else 503
        return status, json.dumps(body, indent=1).encode() + b"\n"


def checks_service(service: Service) -> bool:
    """Whether `service` has a health check port this proxy serves."""
    return (
        service.health_check_node_port > 0
        and service.external_traffic_policy == "Local"
        and service.proxied
        and not service.headless
    )


def service_health(state: ClusterState, service: Service, node: str) -> ServiceHealth:
    """Its ready endpoints on `node`. A dual-stack endpoint sits in one slice per family:
    counted once per family, and the larger family count is the pod count."""
    per_family: dict[str, set[object]] = {}
    for eps in state.slices_of_service(service.namespace, service.name):
        for endpoint in eps.endpoints:
            if endpoint.node_name == node and endpoint.ready and endpoint.addresses:
                per_family.setdefault(eps.address_type, set()).add(endpoint.addresses[0])
    count = max((len(found) for found in per_family.values()), default=0)
    return ServiceHealth(service.namespace, service.name, count)


class NodeHealth:
    """Every health check port this node serves and what it answers, kept up to date from
    the services a change dirties (a slice dirties its service), not by a scan of all."""

    def __init__(self, node: str) -> None:
        self.node = node
        self._by_service: dict[NamespacedName, tuple[int, ServiceHealth]] = {}

    def update(self, state: ClusterState, services: Iterable[NamespacedName] | None) -> None:
        """Look again at `services` (None: at every service)."""
        if services is None:
            self._by_service.clear()
            services = list(state.services)
        for key in services:
            service = state.services.get(key)
            if service is None or not checks_service(service):
                self._by_service.pop(key, None)
            else:
                health = service_health(state, service, self.node)
                self._by_service[key] = (service.health_check_node_port, health)

    def ports(self) -> dict[int, ServiceHealth]:
        """Port → answer. Two services naming one port (the API server refuses it; a lab
        file may not): the first by namespace/name wins."""
        out: dict[int, ServiceHealth] = {}
        for key in sorted(self._by_service):
            port, health = self._by_service[key]
            out.setdefault(port, health)
        return out


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    health: ServiceHealth
    proxy_healthy: Callable[[], bool]

    def __init__(self, sock: socket.socket, health: ServiceHealth, healthy: Callable[[], bool]):
        # The socket is made (and bound) in the node's namespace by the caller.
        super().__init__(sock.getsockname()[:2], _Handler, bind_and_activate=False)
        self.socket.close()
        self.socket = sock
        self.health, self.proxy_healthy = health, healthy


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "srv6ctl"
    sys_version = ""

    def do_GET(self) -> None:
        status, body = self.server.health.answer(self.server.proxy_healthy())
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header(
            "X-Load-Balancing-Endpoint-Weight", str(self.server.health.local_endpoints)
        )
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_HEAD = do_GET

    def log_message(self, format: str, *args: Any) -> None:
        pass  # a prober every few seconds: nothing worth a log line


class HealthCheckServers:
    """The listening health check ports of one node."""

    def __init__(self, netns: str | None, address: str, proxy_healthy: Callable[[], bool]) -> None:
        self.netns, self.address, self._healthy = netns, address, proxy_healthy
        self._servers: dict[int, _Server] = {}
        self._lock = threading.Lock()

    @property
    def ports(self) -> list[int]:
        with self._lock:
            return sorted(self._servers)

    def sync(self, wanted: Mapping[int, ServiceHealth]) -> None:
        """Listen on exactly the ports of `wanted`, each answering its service's health.
        A port that cannot be bound (taken by another process) is logged and retried at
        the next sync; the others are served."""
        with self._lock:
            for port in sorted(self._servers.keys() - wanted.keys()):
                self._close(port)
            for port, health in wanted.items():
                server = self._servers.get(port)
                if server is not None:
                    server.health = health  # read by the next request: no restart
                    continue
                try:
                    sock = run_in_netns(self.netns, partial(self._listen, port))
                except OSError as err:
                    log.warning(
                        "health check port %d of %s/%s: cannot listen (%s)",
                        port,
                        health.namespace,
                        health.name,
                        err,
                    )
                    continue
                server = _Server(sock, health, self._healthy)
                self._servers[port] = server
                name = f"health-check:{port}"
                threading.Thread(target=server.serve_forever, name=name, daemon=True).start()

    def close(self) -> None:
        with self._lock:
            for port in list(self._servers):
                self._close(port)

    def _close(self, port: int) -> None:
        server = self._servers.pop(port)
        server.shutdown()
        server.server_close()

    def _listen(self, port: int) -> socket.socket:
        family = socket.AF_INET6 if ":" in self.address else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6 and self.address == "::":
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # both families
            sock.bind((self.address, port))
            sock.listen(16)
        except OSError:
            sock.close()
            raise
        return sock


class HealthChecks:
    """A node's health check ports, following the cluster: `refresh` after each pass."""

    def __init__(
        self, node: str, netns: str | None, address: str, proxy_healthy: Callable[[], bool]
    ) -> None:
        self._health = NodeHealth(node)
        self.servers = HealthCheckServers(netns, address, proxy_healthy)

    def refresh(self, state: ClusterState, dirty: Iterable[DirtyKey], everything: bool) -> None:
        """Look again at the services `dirty` names (a slice change names its service),
        or at all of them; open, close and update ports to match."""
        services = [(k.namespace, k.name) for k in dirty if isinstance(k, ServiceKey)]
        if everything or services:
            self._health.update(state, None if everything else services)
            self.servers.sync(self._health.ports())

    def close(self) -> None:
        self.servers.close()


__all__ = ["HealthCheckServers", "HealthChecks", "NodeHealth", "ServiceHealth", "checks_service"]
