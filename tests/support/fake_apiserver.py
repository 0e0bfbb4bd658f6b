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
- a resourceVersion older than the retained history (`compact()`): either an `ERROR` event
  whose object is a `Status` with code 410 / reason Expired (what the etcd watch path
  sends), or an HTTP 410 response with that Status (what the watch cache answers) —
  `gone_as_status` selects which;
- errors: `fail_next(resource, n, status)` answers the next n requests for a resource with
  that HTTP status and a `Status` body, as the server does for a 5xx or 429.

It serves the six collections srv6ctl watches, cluster-wide paths only.
"""

from __future__ import annotations

import base64
import copy
import json
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
    )
}
BY_PATH = {c.path: c for c in COLLECTIONS.values()}


def status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


@dataclass
class _Event:
    revision: int
    resource: str
    type: str
    obj: dict[str, Any]


class FakeApiServer:
    def __init__(self, *, gone_as_status: bool = False, bookmark_interval: float = 0.2) -> None:
        self.gone_as_status = gone_as_status
        self.bookmark_interval = bookmark_interval
        self._lock = threading.Condition()
        self._revision = 1000
        self._compacted = 0  # watches from a revision below this get 410
        self._objects: dict[str, dict[tuple[str, str], dict[str, Any]]] = {
            r: {} for r in COLLECTIONS
        }
        self._history: list[_Event] = []
        self._snapshots: dict[str, tuple[int, list[dict[str, Any]]]] = {}
        self._failures: dict[str, list[int]] = {}
        self.requests: list[tuple[str, dict[str, str]]] = []  # (path, query) in order
        self._stopping = False
        self._watch_generation = 0
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    # --- lifecycle --------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}"

    def start(self) -> FakeApiServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
            self._lock.notify_all()
        self._server.shutdown()
        self._server.server_close()

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

    def compact(self) -> None:
        """Forget the event history: a watch from any earlier revision now gets 410."""
        with self._lock:
            self._compacted = self._revision
            self._history.clear()

    def fail_next(self, resource: str, count: int, code: int = 500) -> None:
        with self._lock:
            self._failures.setdefault(resource, []).extend([code] * count)

    def clear_failures(self) -> None:
        with self._lock:
            self._failures.clear()

    def watch_requests(self, resource: str) -> list[dict[str, str]]:
        path = COLLECTIONS[resource].path
        return [q for p, q in list(self.requests) if p == path and q.get("watch") == "true"]

    def list_requests(self, resource: str) -> list[dict[str, str]]:
        path = COLLECTIONS[resource].path
        return [q for p, q in list(self.requests) if p == path and q.get("watch") != "true"]

    # --- serving ----------------------------------------------------------------------

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                url = urlsplit(self.path)
                query = {k: v[-1] for k, v in parse_qs(url.query).items()}
                server.requests.append((url.path, query))
                collection = BY_PATH.get(url.path)
                if collection is None:
                    self._json(
                        404, status(404, "NotFound", f"the server could not find {url.path}")
                    )
                    return
                with server._lock:
                    failures = server._failures.get(collection.resource)
                    code = failures.pop(0) if failures else None
                if code is not None:
                    self._json(code, status(code, "InternalError", "injected failure"))
                    return
                if query.get("watch") in ("true", "1"):
                    self._watch(collection, query)
                else:
                    self._list(collection, query)

            def _json(self, code: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _list(self, collection: Collection, query: dict[str, str]) -> None:
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
                    with server._lock:
                        revision = server._revision
                        stored = server._objects[collection.resource]
                        items = [_as_list_item(stored[k]) for k in sorted(stored)]
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

            def _watch(self, collection: Collection, query: dict[str, str]) -> None:
                since = int(query.get("resourceVersion") or 0)
                bookmarks = query.get("allowWatchBookmarks") == "true"
                deadline = time.monotonic() + float(query.get("timeoutSeconds") or 1800)
                with server._lock:
                    expired = since < server._compacted
                    oldest = server._compacted
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
                        for event in server._events(collection, since, deadline, bookmarks):
                            self._chunk(event)
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
        self, collection: Collection, since: int, deadline: float, bookmarks: bool
    ) -> Iterator[dict[str, Any]]:
        position = since
        last_bookmark = time.monotonic()
        with self._lock:
            generation = self._watch_generation
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


def _as_list_item(obj: dict[str, Any]) -> dict[str, Any]:
    item = copy.deepcopy(obj)
    item.pop("kind", None)
    item.pop("apiVersion", None)
    return item
