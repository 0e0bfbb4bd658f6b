"""A small kube-apiserver stand-in for list+watch, faithful where a reflector looks.

What it reproduces, from the API conventions and what kube-apiserver sends on the wire:

- one cluster-wide, monotonically increasing resourceVersion (etcd's revision), stamped on
  every object at each write and on every list;
- list: `{"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": ...},
  "items": [...]}`, items *without* kind/apiVersion, in key order; `limit`/`continue`
  paging over one consistent snapshot;
- watch (`?watch=true&resourceVersion=N`): HTTP 200, `Transfer-Encoding: chunked`, one
  JSON event per line — `{"type": "ADDED"|"MODIFIED"|"DELETED", "object": {...}}` with
  kind/apiVersion set — for every change after N, then live changes; `BOOKMARK` events
  (`allowWatchBookmarks=true`) whose object carries only kind, apiVersion and
  metadata.resourceVersion; the stream ends after `timeoutSeconds`;
- list at a revision (`resourceVersion=N&resourceVersionMatch=Exact`): the objects as they
  were then, or 410 Expired when that is older than the retained history;
- a resourceVersion older than the retained history (`compact()`): either an `ERROR` event
  whose object is a `Status` with code 410 / reason Expired (what the etcd watch path
  sends), or an HTTP 410 response with that Status (what the watch cache answers) —
  `gone_as_status` selects which;
- errors: `fail_next(resource, n, status)` answers the next n requests for a resource with
  that HTTP status and a `Status` body, as the server does for a 5xx or 429;
- namespaced paths (`/api/v1/namespaces/NS/configmaps[/NAME]`): list, get, create (POST,
  201; 409 AlreadyExists), replace (PUT; 404 NotFound; a `metadata.resourceVersion` that
  is not the stored one gives 409 Conflict; none means an unconditional update; an update
  that changes nothing keeps the resourceVersion), with the `Status` bodies kube-apiserver
  sends for them; a ConfigMap over 1 MiB or with a data key outside `[-._a-zA-Z0-9]+` is
  422 Invalid, as the API server validates it;
- `labelSelector` (equality and existence: `k=v`, `k==v`, `k!=v`, `k`, `!k`) and
  `fieldSelector` (`metadata.name`, `metadata.namespace`) on lists and watches;
- `/readyz` (and `/livez`, `/healthz`): 200 `ok`, or 500 while `ready` is False, as a
  starting API server answers;
- an outage: `stop()` closes the port and every connection; `start()` again serves on the
  same port, with the state kept (etcd) and the event history gone (a restarted server's
  watch cache begins at the current revision: older watches get 410);
- TLS (`tls=(certfile, keyfile)`, `self_signed_certificate()` makes a pair with openssl).

It serves the six collections srv6ctl watches and ConfigMaps (the Kubernetes store), on
the cluster-wide paths and, for namespaced kinds, under `/namespaces/NS/`.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import json
import re
import socket
import ssl
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass(frozen=True)
class Collection:
    resource: str
    kind: str
    api_version: str
    path: str
    namespaced: bool


COLLECTIONS = {
    c.resource: c
    for c in (
        Collection("nodes", "Node", "v1", "/api/v1/nodes", False),
        Collection("pods", "Pod", "v1", "/api/v1/pods", True),
        Collection("services", "Service", "v1", "/api/v1/services", True),
        Collection("namespaces", "Namespace", "v1", "/api/v1/namespaces", False),
        Collection(
            "endpointslices",
            "EndpointSlice",
            "discovery.k8s.io/v1",
            "/apis/discovery.k8s.io/v1/endpointslices",
            True,
        ),
        Collection(
            "networkpolicies",
            "NetworkPolicy",
            "networking.k8s.io/v1",
            "/apis/networking.k8s.io/v1/networkpolicies",
            True,
        ),
        Collection("configmaps", "ConfigMap", "v1", "/api/v1/configmaps", True),
    )
}
BY_PATH = {c.path: c for c in COLLECTIONS.values()}


# /api/v1/namespaces/NS/configmaps[/NAME], and the same under /apis/GROUP/VERSION.
NAMESPACED_PATH = re.compile(
    r"^(?P<base>/api/v1|/apis/[^/]+/[^/]+)/namespaces/(?P<namespace>[^/]+)"
    r"/(?P<resource>[^/]+)(?:/(?P<name>[^/]+))?$"
)
CONFIG_MAP_MAX_BYTES = 1024 * 1024  # corev1 validation: data + binaryData together
CONFIG_MAP_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
HEALTH_PATHS = ("/readyz", "/livez", "/healthz")


def self_signed_certificate(directory: str) -> tuple[str, str]:
    """(certfile, keyfile) for 127.0.0.1, made with openssl, valid for a day."""
    cert, key = f"{directory}/apiserver.crt", f"{directory}/apiserver.key"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"),
            *("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"),
            *("-keyout", key, "-out", cert, "-addext", "subjectAltName=IP:127.0.0.1"),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def status(
    code: int, reason: str, message: str, details: dict[str, Any] | None = None
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
    }
    if details is not None:
        body["details"] = details
    body["code"] = code
    return body


# The bodies of apimachinery's errors.NewNotFound / NewAlreadyExists / NewConflict:
# details.kind is the resource (plural), as kube-apiserver fills it in.
def not_found(resource: str, name: str) -> dict[str, Any]:
    details = {"name": name, "kind": resource}
    return status(404, "NotFound", f'{resource} "{name}" not found', details)


def already_exists(resource: str, name: str) -> dict[str, Any]:
    details = {"name": name, "kind": resource}
    return status(409, "AlreadyExists", f'{resource} "{name}" already exists', details)


def conflict(resource: str, name: str) -> dict[str, Any]:
    message = (
        f'Operation cannot be fulfilled on {resource} "{name}": the object has been modified; '
        "please apply your changes to the latest version and try again"
    )
    return status(409, "Conflict", message, {"name": name, "kind": resource})


def invalid(kind: str, name: str, field: str, detail: str, cause: str) -> dict[str, Any]:
    details = {
        "name": name,
        "kind": kind,
        "causes": [{"reason": cause, "message": detail, "field": field}],
    }
    return status(422, "Invalid", f'{kind} "{name}" is invalid: {field}: {detail}', details)


def bad_request(message: str) -> dict[str, Any]:
    return status(400, "BadRequest", message)


def _terms(selector: str) -> list[tuple[str, str, str]]:
    """`a=b,c!=d,e,!f` as (key, operator, value): "=", "!=", "exists" or "!exists"."""
    terms = []
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            key, value = term.split("!=", 1)
            terms.append((key.strip(), "!=", value.strip()))
        elif "=" in term:
            key, value = term.replace("==", "=").split("=", 1)
            terms.append((key.strip(), "=", value.strip()))
        elif term.startswith("!"):
            terms.append((term[1:].strip(), "!exists", ""))
        else:
            terms.append((term, "exists", ""))
    return terms


def _holds(values: dict[str, str], key: str, operator: str, value: str) -> bool:
    if operator == "exists":
        return key in values
    if operator == "!exists":
        return key not in values
    return (values.get(key) == value) == (operator == "=")


def label_matcher(selector: str) -> Callable[[dict[str, str]], bool]:
    """An equality-based label selector as a predicate on an object's labels."""
    terms = _terms(selector)
    return lambda labels: all(_holds(labels, *term) for term in terms)


def field_matcher(selector: str) -> Callable[[dict[str, Any]], bool]:
    """`metadata.name=x,metadata.namespace!=y`: the field selectors every kind supports."""
    terms = _terms(selector)
    for field, operator, _ in terms:
        if field not in ("metadata.name", "metadata.namespace") or "exists" in operator:
            raise ValueError(f'field label not supported: "{field}"')

    def matches(obj: dict[str, Any]) -> bool:
        meta = obj["metadata"]
        fields = {
            "metadata.name": meta.get("name", ""),
            "metadata.namespace": meta.get("namespace", ""),
        }
        return all(_holds(fields, *term) for term in terms)

    return matches


def _selected(query: dict[str, str]) -> Callable[[dict[str, Any]], bool]:
    labels = label_matcher(query.get("labelSelector", ""))
    fields = field_matcher(query.get("fieldSelector", ""))
    return lambda obj: labels(obj["metadata"].get("labels") or {}) and fields(obj)


class _HttpServer(ThreadingHTTPServer):
    # As Go's net.Listen (the kernel's somaxconn), not socketserver's 5: at a restart every
    # client connects at once, and a SYN dropped from a full backlog is retried after 1 s.
    request_queue_size = 4096
    daemon_threads = True


@dataclass
class _Event:
    revision: int
    resource: str
    type: str
    obj: dict[str, Any]


class FakeApiServer:
    def __init__(
        self,
        *,
        gone_as_status: bool = False,
        bookmark_interval: float = 0.2,
        tls: tuple[str, str] | None = None,
    ) -> None:
        self.gone_as_status = gone_as_status
        self.bookmark_interval = bookmark_interval
        self.ready = True  # what /readyz answers
        self._tls = tls
        self._lock = threading.Condition()
        self._revision = 1000
        self._compacted = 0  # watches from a revision below this get 410
        self._objects: dict[str, dict[tuple[str, str], dict[str, Any]]] = {
            r: {} for r in COLLECTIONS
        }
        # The objects as they were at `_compacted`: with `_history`, any later revision.
        self._base: dict[str, dict[tuple[str, str], dict[str, Any]]] = {r: {} for r in COLLECTIONS}
        self._history: list[_Event] = []
        self._snapshots: dict[str, tuple[int, list[dict[str, Any]]]] = {}
        self._failures: dict[str, list[int]] = {}
        self.requests: list[tuple[str, dict[str, str]]] = []  # (path, query) in order
        self._stopping = False
        self._connections: set[socket.socket] = set()
        self._watch_generation = 0
        self._cut: set[int] = set()  # watch generations ended without their last chunk
        # Watches that have taken their generation, per resource: from then on
        # end_watches() ends them (a request merely received may miss it).
        self._streams: dict[str, int] = {}
        self._restarts = -1
        self._server = self._listen(0)
        self._port = self._server.server_port

    # --- lifecycle --------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"{'https' if self._tls else 'http'}://127.0.0.1:{self._port}"

    def _listen(self, port: int) -> ThreadingHTTPServer:
        server = _HttpServer(("127.0.0.1", port), self._handler())
        if self._tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*self._tls)
            # The handshake in the connection's own thread, not in the accepting one.
            server.socket = context.wrap_socket(
                server.socket, server_side=True, do_handshake_on_connect=False
            )
        return server

    def start(self) -> FakeApiServer:
        """Serve; after a `stop()`, again on the same port (an API server's restart)."""
        self._restarts += 1
        if self._restarts:
            self._server = self._listen(self._port)
            with self._lock:
                self._stopping = False
                self.compact()  # the new process's watch cache starts now
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
            self._lock.notify_all()
        self._server.shutdown()
        self._server.server_close()
        # A stopped API server also drops the kept-alive connections, as a dead process does.
        with self._lock:
            connections, self._connections = self._connections, set()
        for connection in connections:
            with contextlib.suppress(OSError):  # already closed by its client
                connection.shutdown(socket.SHUT_RDWR)

    # --- what a test does to the cluster ----------------------------------------------

    @property
    def revision(self) -> int:
        with self._lock:
            return self._revision

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Create or update an object (kind from the object); returns the stored copy."""
        collection = next(c for c in COLLECTIONS.values() if c.kind == obj["kind"])
        stored = copy.deepcopy(obj)
        meta = stored.setdefault("metadata", {})
        if collection.namespaced:
            meta.setdefault("namespace", "default")
        key = (meta.get("namespace", ""), meta["name"])
        with self._lock:
            self._revision += 1
            old = self._objects[collection.resource].get(key)
            meta["uid"] = (
                (old or {}).get("metadata", {}).get("uid") or meta.get("uid") or str(uuid.uuid4())
            )
            meta["resourceVersion"] = str(self._revision)
            stored["apiVersion"], stored["kind"] = collection.api_version, collection.kind
            self._objects[collection.resource][key] = stored
            self._history.append(
                _Event(self._revision, collection.resource, "MODIFIED" if old else "ADDED", stored)
            )
            self._lock.notify_all()
        return copy.deepcopy(stored)

    def delete(self, resource: str, namespace: str, name: str) -> None:
        with self._lock:
            old = self._objects[resource].pop((namespace, name))
            self._revision += 1
            gone = copy.deepcopy(old)
            gone["metadata"]["resourceVersion"] = str(self._revision)
            self._history.append(_Event(self._revision, resource, "DELETED", gone))
            self._lock.notify_all()

    def lose_events(self, change: Callable[[], None]) -> None:
        """Drop every open watch, make `change` and compact, all at once: no watcher ever
        receives the change's events — as when an apiserver restarts while etcd compacts.
        A reflector resuming from its last resourceVersion then gets 410 and must relist."""
        with self._lock:
            self._watch_generation += 1
            change()
            self.compact()
            self._lock.notify_all()

    def end_watches(self, *, abruptly: bool = False) -> None:
        """End every open watch stream now (history kept), as a server or a load balancer
        closing long requests does: each watcher resumes from its last resourceVersion.
        `abruptly`: the connections are cut mid-stream, a broken watch for the client."""
        with self._lock:
            if abruptly:
                self._cut.add(self._watch_generation)
            self._watch_generation += 1
            self._lock.notify_all()

    def compact(self, revision: int | None = None) -> None:
        """Forget the event history up to `revision` (default: now): a watch from an
        earlier revision, or a list at one, now gets 410."""
        with self._lock:
            revision = self._revision if revision is None else revision
            for resource in COLLECTIONS:
                self._base[resource] = self._state_at(resource, revision)
            self._compacted = revision
            self._history = [e for e in self._history if e.revision > revision]

    def _state_at(self, resource: str, revision: int) -> dict[tuple[str, str], dict[str, Any]]:
        """The objects of `resource` as they were at `revision` (not before `_compacted`)."""
        objects = dict(self._base[resource])
        for event in self._history:
            if event.revision > revision:
                break
            if event.resource != resource:
                continue
            meta = event.obj["metadata"]
            key = (meta.get("namespace", ""), meta["name"])
            if event.type == "DELETED":
                objects.pop(key, None)
            else:
                objects[key] = event.obj
        return objects

    def fail_next(self, resource: str, count: int, code: int = 500) -> None:
        with self._lock:
            self._failures.setdefault(resource, []).extend([code] * count)

    def clear_failures(self) -> None:
        with self._lock:
            self._failures.clear()

    def watch_requests(self, resource: str) -> list[dict[str, str]]:
        path = COLLECTIONS[resource].path
        return [q for p, q in list(self.requests) if p == path and q.get("watch") == "true"]

    def streams(self, resource: str) -> int:
        """How many watches of `resource` the server has accepted (to answer with a stream):
        each one is ended by the next end_watches() (a request in `requests` may not be yet)."""
        with self._lock:
            return self._streams.get(resource, 0)

    def list_requests(self, resource: str) -> list[dict[str, str]]:
        path = COLLECTIONS[resource].path
        return [q for p, q in list(self.requests) if p == path and q.get("watch") != "true"]

    def _store(
        self,
        collection: Collection,
        namespace: str,
        name: str,
        body: dict[str, Any],
        create: bool,
    ) -> tuple[int, dict[str, Any]]:
        """Create or replace under the lock, as the registry's storage does: (code, body)."""
        objects = self._objects[collection.resource]
        old = objects.get((namespace, name))
        meta = body["metadata"]
        if create:
            if old is not None:
                return 409, already_exists(collection.resource, name)
            meta["uid"] = str(uuid.uuid4())
            meta["creationTimestamp"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        else:
            if old is None:
                return 404, not_found(collection.resource, name)
            expected = meta.get("resourceVersion")
            # Optimistic concurrency: the precondition is the resourceVersion the writer read.
            if expected and expected != old["metadata"]["resourceVersion"]:
                return 409, conflict(collection.resource, name)
            for kept in ("uid", "creationTimestamp"):
                meta[kept] = old["metadata"][kept]
            if _same_content(old, body):
                return 200, copy.deepcopy(old)  # a no-op update writes nothing
        self._revision += 1
        meta["resourceVersion"] = str(self._revision)
        stored = copy.deepcopy(body)
        stored["apiVersion"], stored["kind"] = collection.api_version, collection.kind
        objects[(namespace, name)] = stored
        self._history.append(
            _Event(self._revision, collection.resource, "ADDED" if create else "MODIFIED", stored)
        )
        self._lock.notify_all()
        return (201 if create else 200), copy.deepcopy(stored)

    # --- serving ----------------------------------------------------------------------

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def setup(self) -> None:
                if isinstance(self.request, ssl.SSLSocket):
                    self.request.settimeout(5)
                    self.request.do_handshake()
                    self.request.settimeout(None)
                super().setup()
                # As Go's net/http: no Nagle, or a body written after its headers waits for
                # the client's delayed ACK (40 ms a request on a kept-alive connection).
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                with server._lock:
                    server._connections.add(self.connection)

            def finish(self) -> None:
                with server._lock:
                    server._connections.discard(self.connection)
                super().finish()

            def do_GET(self) -> None:
                url = urlsplit(self.path)
                query = {k: v[-1] for k, v in parse_qs(url.query).items()}
                server.requests.append((url.path, query))
                if url.path in HEALTH_PATHS:
                    self._health()
                    return
                route = self._route(url.path)
                if route is None:
                    return
                collection, namespace, name = route
                if query.get("watch") in ("true", "1") and name is None:
                    self._watch(collection, query, namespace)
                elif name is None:
                    self._list(collection, query, namespace)
                else:
                    self._get(collection, namespace or "", name)

            def _health(self) -> None:
                ready = server.ready
                data = b"ok" if ready else b"[-]etcd failed: reason withheld\nreadyz check failed"
                self.send_response(200 if ready else 500)
                self.send_header("Content-Type", "text/plain; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                url = urlsplit(self.path)
                body = self._body()
                server.requests.append((url.path, {"method": "POST"}))
                route = self._route(url.path)
                if route is None or body is None:
                    return
                collection, namespace, name = route
                if namespace is None or name is not None:
                    self._json(405, status(405, "MethodNotAllowed", "create is namespaced here"))
                    return
                self._write(collection, namespace, body, create=True)

            def do_PUT(self) -> None:
                url = urlsplit(self.path)
                body = self._body()
                server.requests.append((url.path, {"method": "PUT"}))
                route = self._route(url.path)
                if route is None or body is None:
                    return
                collection, namespace, name = route
                if namespace is None or name is None:
                    self._json(405, status(405, "MethodNotAllowed", "replace needs a name"))
                    return
                if (body.get("metadata") or {}).get("name") != name:
                    self._json(
                        400,
                        bad_request(
                            "the name of the object "
                            f"({(body.get('metadata') or {}).get('name')}) does not match the "
                            f"name on the URL ({name})"
                        ),
                    )
                    return
                self._write(collection, namespace, body, create=False)

            def _route(self, path: str) -> tuple[Collection, str | None, str | None] | None:
                """(collection, namespace or None, name or None); answers 404/5xx itself."""
                collection = BY_PATH.get(path)
                namespace = name = None
                if collection is None:
                    match = NAMESPACED_PATH.match(path)
                    if match is not None:
                        collection = BY_PATH.get(f"{match['base']}/{match['resource']}")
                        namespace, name = match["namespace"], match["name"]
                    if collection is None or not collection.namespaced:
                        self._json(
                            404, status(404, "NotFound", f"the server could not find {path}")
                        )
                        return None
                with server._lock:
                    failures = server._failures.get(collection.resource)
                    code = failures.pop(0) if failures else None
                if code is not None:
                    self._json(code, status(code, "InternalError", "injected failure"))
                    return None
                return collection, namespace, name

            def _body(self) -> dict[str, Any] | None:
                length = int(self.headers.get("Content-Length") or 0)
                try:
                    body = json.loads(self.rfile.read(length) or b"null")
                except ValueError as err:
                    self._json(400, bad_request(f"the request body is not JSON: {err}"))
                    return None
                if not isinstance(body, dict):
                    self._json(400, bad_request("the request body is not an object"))
                    return None
                return body

            def _get(self, collection: Collection, namespace: str, name: str) -> None:
                with server._lock:
                    stored = server._objects[collection.resource].get((namespace, name))
                    found = copy.deepcopy(stored) if stored is not None else None
                if found is None:
                    self._json(404, not_found(collection.resource, name))
                else:
                    self._json(200, found)

            def _write(
                self, collection: Collection, namespace: str, body: dict[str, Any], create: bool
            ) -> None:
                meta = body.setdefault("metadata", {})
                name = meta.get("name") or ""
                if meta.setdefault("namespace", namespace) != namespace:
                    self._json(
                        400,
                        bad_request(
                            "the namespace of the provided object does not match the "
                            "namespace sent on the request"
                        ),
                    )
                    return
                if body.get("kind", collection.kind) != collection.kind:
                    self._json(400, bad_request(f"the body is a {body['kind']}"))
                    return
                problem = _validate(collection, body)
                if problem is not None:
                    self._json(422, problem)
                    return
                with server._lock:
                    code, answer = server._store(collection, namespace, name, body, create)
                self._json(code, answer)

            def _json(self, code: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _list(
                self, collection: Collection, query: dict[str, str], namespace: str | None = None
            ) -> None:
                try:
                    selected = _selected(query)
                except ValueError as err:
                    self._json(400, bad_request(str(err)))
                    return
                token = query.get("continue")
                if token:
                    snapshot_id, offset = json.loads(base64.b64decode(token))
                    with server._lock:
                        snapshot = server._snapshots.get(snapshot_id)
                    if snapshot is None:
                        self._json(410, status(410, "Expired", "the continue token has expired"))
                        return
                    revision, items = snapshot
                else:
                    exact = query.get("resourceVersionMatch") == "Exact"
                    with server._lock:
                        revision = server._revision
                        stored = server._objects[collection.resource]
                        if exact:
                            revision = int(query.get("resourceVersion") or 0)
                            if revision < server._compacted:
                                expired = status(
                                    410,
                                    "Expired",
                                    "The resourceVersion for the provided list is too old.",
                                )
                                self._json(410, expired)
                                return
                            stored = server._state_at(collection.resource, revision)
                        items = [
                            _as_list_item(stored[k])
                            for k in sorted(stored)
                            if (namespace is None or k[0] == namespace) and selected(stored[k])
                        ]
                    snapshot_id, offset = uuid.uuid4().hex, 0
                limit = int(query.get("limit") or 0) or len(items) or 1
                page = items[offset : offset + limit]
                metadata: dict[str, Any] = {"resourceVersion": str(revision)}
                if offset + limit < len(items):
                    with server._lock:
                        server._snapshots[snapshot_id] = (revision, items)
                    metadata["continue"] = base64.b64encode(
                        json.dumps([snapshot_id, offset + limit]).encode()
                    ).decode()
                self._json(
                    200,
                    {
                        "kind": f"{collection.kind}List",
                        "apiVersion": collection.api_version,
                        "metadata": metadata,
                        "items": page,
                    },
                )

            def _watch(
                self, collection: Collection, query: dict[str, str], namespace: str | None
            ) -> None:
                try:
                    selected = _selected(query)
                except ValueError as err:
                    self._json(400, bad_request(str(err)))
                    return
                since = int(query.get("resourceVersion") or 0)
                bookmarks = query.get("allowWatchBookmarks") == "true"
                deadline = time.monotonic() + float(query.get("timeoutSeconds") or 1800)
                # Whether the version is still in the history and which watches this one
                # joins, in one step: kube-apiserver registers a watcher at the version it
                # validated, and from then on delivers every later event or ends the watch.
                # Taken apart, a lose_events() between them (while the headers go out) made
                # a watch that passed the check join the watches after the loss: it skipped
                # the lost events and bookmarked past them, and its client never saw a 410.
                with server._lock:
                    expired = since < server._compacted
                    oldest = server._compacted
                    generation = server._watch_generation
                    if not (expired and server.gone_as_status):
                        streams = server._streams
                        streams[collection.resource] = streams.get(collection.resource, 0) + 1
                gone = status(410, "Expired", f"too old resource version: {since} ({oldest})")
                if expired and server.gone_as_status:
                    self._json(410, gone)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                try:
                    if expired:
                        self._chunk({"type": "ERROR", "object": gone})
                    else:
                        events = server._events(collection, since, deadline, bookmarks, generation)
                        for event in events:
                            obj = event["object"]
                            if event["type"] != "BOOKMARK" and (
                                not selected(obj)
                                or namespace not in (None, obj["metadata"].get("namespace"))
                            ):
                                continue
                            self._chunk(event)
                    if generation in server._cut:
                        self.connection.shutdown(socket.SHUT_RDWR)  # no last chunk: broken
                    else:
                        self.wfile.write(b"0\r\n\r\n")
                        self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    pass
                self.close_connection = True

            def _chunk(self, event: dict[str, Any]) -> None:
                data = json.dumps(event).encode() + b"\n"
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()

        return Handler

    def _events(
        self,
        collection: Collection,
        since: int,
        deadline: float,
        bookmarks: bool,
        generation: int,
    ) -> Iterator[dict[str, Any]]:
        position = since
        last_bookmark = time.monotonic()
        while True:
            with self._lock:
                if self._watch_generation != generation or self._stopping:
                    return
                pending = [
                    e
                    for e in self._history
                    if e.revision > position and e.resource == collection.resource
                ]
                if not pending:
                    timeout = min(deadline, last_bookmark + self.bookmark_interval)
                    self._lock.wait(max(0.0, timeout - time.monotonic()))
                    pending = [
                        e
                        for e in self._history
                        if e.revision > position and e.resource == collection.resource
                    ]
                current = self._revision
                if self._watch_generation != generation or self._stopping:
                    return
            for event in pending:
                position = event.revision
                yield {"type": event.type, "object": event.obj}
            now = time.monotonic()
            if now >= deadline:
                return
            if bookmarks and now - last_bookmark >= self.bookmark_interval:
                position = max(position, current)
                last_bookmark = now
                yield {
                    "type": "BOOKMARK",
                    "object": {
                        "kind": collection.kind,
                        "apiVersion": collection.api_version,
                        "metadata": {"resourceVersion": str(position), "creationTimestamp": None},
                    },
                }


def _validate(collection: Collection, body: dict[str, Any]) -> dict[str, Any] | None:
    """The API server's validation this fake reproduces: a 422 Status, or None."""
    name = body["metadata"].get("name") or ""
    if not name:
        return invalid(
            collection.kind, name, "metadata.name", "Required value", "FieldValueRequired"
        )
    if collection.resource != "configmaps":
        return None
    data = body.get("data") or {}
    binary = body.get("binaryData") or {}
    for key in [*data, *binary]:
        if not CONFIG_MAP_KEY.match(key):
            return invalid(
                "ConfigMap",
                name,
                f"data[{key}]",
                "a valid config key must consist of alphanumeric characters, '-', '_' or '.'",
                "FieldValueInvalid",
            )
    size = sum(len(k) + len(str(v).encode()) for k, v in data.items())
    size += sum(len(k) + len(base64.b64decode(v)) for k, v in binary.items())
    if size > CONFIG_MAP_MAX_BYTES:
        detail = f"Too long: must have at most {CONFIG_MAP_MAX_BYTES} bytes"
        return invalid("ConfigMap", name, "[]", detail, "FieldValueTooLong")
    return None


def _same_content(old: dict[str, Any], new: dict[str, Any]) -> bool:
    def content(obj: dict[str, Any]) -> tuple[Any, ...]:
        meta = obj.get("metadata") or {}
        rest = {k: v for k, v in obj.items() if k not in ("metadata", "kind", "apiVersion")}
        return (meta.get("labels") or {}, meta.get("annotations") or {}, rest)

    return content(old) == content(new)


def _as_list_item(obj: dict[str, Any]) -> dict[str, Any]:
    item = copy.deepcopy(obj)
    item.pop("kind", None)
    item.pop("apiVersion", None)
    return item
