"""The agent's HTTP endpoint: `/metrics`, `/healthz` and `/readyz` on one configured address.

    server = MetricsServer(registry, address="127.0.0.1:9876", readiness=metrics.readiness)
    server.start()      # serves on a background thread; server.url says where
    ...
    server.stop()       # stops serving, closes the socket, joins the thread

- `/metrics`: the registry in the format the scraper asks for (Prometheus text 0.0.4, or
  OpenMetrics when the Accept header prefers it), gzip when accepted. `_created` series are
  left out: Prometheus 2.x stores each as one more series per counter child, for nothing.
- `/healthz`: 200 while the process serves HTTP at all (liveness).
- `/readyz`: 200 once `readiness()` returns None, else 503 with its reason (readiness:
  "dataplane reconciled at least once", see `AgentMetrics.readiness`).

It binds only the address it is given: the default is loopback, and anything else (a node
address, or a wildcard) has to be configured. Hosts are IP literals (or `localhost`), so
what is bound is never a surprise of name resolution.
"""

from __future__ import annotations

import gzip
import ipaddress
import logging
import socket
import threading
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

DEFAULT_ADDRESS = "127.0.0.1:9876"
Readiness = Callable[[], str | None]

_CREATED_TYPES = frozenset({"counter", "histogram", "summary", "gaugehistogram"})
_IO_TIMEOUT_S = 10.0  # a client that sends nothing must not pin a handler thread


def parse_address(address: str) -> tuple[str, int]:
    """An IP literal and a port from "127.0.0.1:9876", "[::1]:9876" or "localhost:9876"."""
    host, sep, port_text = address.rpartition(":")
    if not sep or not host:
        raise ValueError(f"metrics address {address!r} must be HOST:PORT, e.g. {DEFAULT_ADDRESS}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host == "localhost":
        host = "127.0.0.1"
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(
            f"metrics address {address!r}: the host must be an IP address (or localhost)"
        ) from None
    try:
        port = int(port_text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise ValueError(f"metrics address {address!r}: port {port_text!r} is not 0-65535")
    return str(ip), port


class _WithoutCreated(Collector):
    """The registry's families minus their `_created` samples."""

    def __init__(self, registry: Collector) -> None:
        self._registry = registry

    def collect(self) -> Iterable[Metric]:
        for metric in self._registry.collect():
            if metric.type in _CREATED_TYPES:
                created = (metric.name + "_created", metric.name + "_gcreated")
                metric.samples = [s for s in metric.samples if s.name not in created]
            yield metric


class _HttpServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True  # a restarted agent rebinds at once (TIME_WAIT)

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        if ipaddress.ip_address(address[0]).version == 6:
            self.address_family = socket.AF_INET6
        super().__init__(address, handler)


class MetricsServer:
    """See the module docstring."""

    def __init__(
        self,
        registry: Collector,
        *,
        address: str = DEFAULT_ADDRESS,
        readiness: Readiness = lambda: None,
    ) -> None:
        self.bind = parse_address(address)
        self._exposed = _WithoutCreated(registry)
        self._readiness = readiness
        self._server: _HttpServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) actually bound; the port is the kernel's pick when 0 was asked."""
        if self._server is None:
            raise RuntimeError("MetricsServer is not started")
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("MetricsServer is already started")
        self._server = _HttpServer(self.bind, self._handler())
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.2},
            name="metrics-http",
            daemon=True,
        )
        self._thread.start()
        log.info("serving /metrics, /healthz and /readyz on %s", self.url)

    def stop(self, timeout: float = 5.0) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()  # returns once serve_forever has stopped
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def __enter__(self) -> MetricsServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- requests ----------------------------------------------------------------------

    def metrics_payload(
        self, accept: str = "", accept_encoding: str = ""
    ) -> tuple[bytes, str, bool]:
        """(body, content type, gzipped) of a `/metrics` response."""
        encoder, content_type = choose_encoder(accept)
        body = encoder(self._exposed)
        if "gzip" in accept_encoding:
            return gzip.compress(body, compresslevel=1), content_type, True
        return body, content_type, False

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            timeout = _IO_TIMEOUT_S
            server_version = "srv6ctl-telemetry"

            def do_GET(self) -> None:
                self._respond(send_body=True)

            def do_HEAD(self) -> None:
                self._respond(send_body=False)

            def _respond(self, *, send_body: bool) -> None:
                path = self.path.split("?", 1)[0]
                headers: dict[str, str] = {}
                if path == "/metrics":
                    try:
                        body, content_type, zipped = owner.metrics_payload(
                            self.headers.get("Accept", ""),
                            self.headers.get("Accept-Encoding", ""),
                        )
                    except Exception as err:
                        log.exception("collecting /metrics failed")
                        status, content_type = 500, "text/plain; charset=utf-8"
                        body = f"collecting metrics failed: {type(err).__name__}\n".encode()
                    else:
                        status = 200
                        if zipped:
                            headers["Content-Encoding"] = "gzip"
                elif path == "/healthz":
                    status, content_type, body = 200, "text/plain; charset=utf-8", b"ok\n"
                elif path == "/readyz":
                    try:
                        reason = owner._readiness()
                    except Exception as err:
                        log.exception("the readiness check failed")
                        reason = f"the readiness check failed: {type(err).__name__}: {err}"
                    content_type = "text/plain; charset=utf-8"
                    if reason is None:
                        status, body = 200, b"ready\n"
                    else:
                        status, body = 503, f"not ready: {reason}\n".encode()
                else:
                    status, content_type = 404, "text/plain; charset=utf-8"
                    body = b"not found: try /metrics, /healthz or /readyz\n"
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                if send_body:
                    self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("metrics http: " + format, *args)

        return Handler
