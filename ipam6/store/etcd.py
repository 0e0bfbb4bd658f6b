"""etcd v3 `Store` backend, spoken over etcd's HTTP/JSON grpc-gateway (`/v3/...`) via etcd3gw.

Why etcd3gw: the gRPC clients (python-etcd3) pin grpcio and protobuf versions that fight
with the ones the agent's own gRPC API needs; the gateway takes plain JSON over HTTP, so
`requests` is the only transport. etcd3gw's high-level helpers drop the response header
(revisions) and the compare result, and encode keys as latin-1, so this module uses its
client only for the HTTP session (TLS) and the per-endpoint URL and API-path discovery,
and writes the v3 messages itself (keys are UTF-8, keys and values base64).
"""

from __future__ import annotations

import base64
import json
import socket
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import requests
import urllib3
from etcd3gw.client import Etcd3Client
from etcd3gw.exceptions import Etcd3Exception

from ipam6.store.base import (
    Compacted,
    Compare,
    CompareTarget,
    EventType,
    KeyValue,
    Listing,
    Op,
    Put,
    StoreError,
    TxnResult,
    WatchEvent,
    check_distinct_keys,
)

Json = dict[str, Any]

# etcd's way of saying "every key": key "\0" with range_end "\0".
_ALL = base64.b64encode(b"\0").decode()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _key(key: str) -> str:
    return _b64(key.encode())


def _prefix_end(prefix: bytes) -> bytes | None:
    """The first key after every key starting with `prefix` (etcd's range_end); None: no end."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return None
    return stripped[:-1] + bytes([stripped[-1] + 1])


def _prefix_range(prefix: str) -> Json:
    end = _prefix_end(prefix.encode())
    if end is None:
        return {"key": _ALL, "range_end": _ALL}
    return {"key": _key(prefix), "range_end": _b64(end)}


def _compare(compare: Compare) -> Json:
    body: Json = {"key": _key(compare.key), "result": "EQUAL"}
    expected = compare.expected
    if compare.target is CompareTarget.VALUE:
        if not isinstance(expected, bytes):
            raise TypeError(f"value compare on {compare.key} needs bytes, not {expected!r}")
        body.update(target="VALUE", value=_b64(expected))
    else:
        if not isinstance(expected, int):
            raise TypeError(f"revision compare on {compare.key} needs int, not {expected!r}")
        if compare.target is CompareTarget.MOD_REVISION:
            body.update(target="MOD", mod_revision=expected)
        else:
            body.update(target="CREATE", create_revision=expected)
    return body


def _request_op(op: Op) -> Json:
    if isinstance(op, Put):
        return {"request_put": {"key": _key(op.key), "value": _b64(op.value)}}
    return {"request_delete_range": {"key": _key(op.key)}}


def _revision(answer: Json) -> int:
    # The gateway renders int64 as JSON strings and leaves out zero values.
    return int(answer["header"]["revision"])


def _key_value(kv: Json) -> KeyValue:
    return KeyValue(
        key=base64.b64decode(kv["key"]).decode(),
        value=base64.b64decode(kv.get("value", "")),
        create_revision=int(kv.get("create_revision", 0)),
        mod_revision=int(kv.get("mod_revision", 0)),
        version=int(kv.get("version", 0)),
    )


def _describe(exc: Exception) -> str:
    # etcd3gw's exceptions keep their message in detail_text, not in args.
    detail = getattr(exc, "detail_text", None)
    return f"{type(exc).__name__}: {detail or exc}"


def _json(response: requests.Response, path: str) -> Json:
    try:
        answer: Json = response.json()
    except ValueError as exc:
        raise StoreError(f"etcd {response.url} {path}: answer is not JSON: {exc}") from exc
    return answer


class _Unreachable(Exception):
    """The request never reached the endpoint: safe to send to the next one."""


def _never_sent(exc: requests.ConnectionError) -> bool:
    # Refused, unresolvable, timed out or TLS-rejected while connecting: etcd never saw
    # the request.
    # A connection lost after sending is not retried elsewhere (the write may have landed).
    if isinstance(exc, requests.ConnectTimeout):
        return True
    reason = getattr(exc.args[0], "reason", None) if exc.args else None
    return isinstance(reason, urllib3.exceptions.NewConnectionError | urllib3.exceptions.SSLError)


class EtcdStore:
    """The `Store` protocol on an etcd v3 cluster (3.4+).

    `endpoints` are client URLs of the members; a request that cannot connect to one goes
    to the next, and any failure moves later requests to the next member, so the caller's
    retry after a `StoreError` lands elsewhere. `timeout` bounds connecting and each answer.
    A watch with `start_revision <= 0` starts after the current revision.
    """

    def __init__(
        self,
        endpoints: Sequence[str] = ("http://127.0.0.1:2379",),
        *,
        ca_file: str | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
        username: str | None = None,
        password: str | None = None,
        timeout: float = 5.0,
    ) -> None:
        if isinstance(endpoints, str):
            endpoints = (endpoints,)
        if not endpoints:
            raise ValueError("EtcdStore needs at least one endpoint")
        if (username is None) != (password is None):
            raise ValueError("etcd username and password go together")
        if key_file is not None and cert_file is None:
            raise ValueError("etcd key_file needs cert_file")
        self.endpoints = tuple(endpoints)
        self._ca_file = ca_file
        self._cert_file = cert_file
        self._key_file = key_file
        self._username = username
        self._password = password
        self._timeout = timeout
        self._session = self._new_session()
        self._clients = [self._client(endpoint) for endpoint in self.endpoints]
        self._current = 0
        self._token: str | None = None
        self._auth_lock = threading.Lock()

    def _new_session(self) -> requests.Session:
        session = requests.Session()
        if self._ca_file is not None:
            session.verify = self._ca_file
        if self._cert_file is not None:
            session.cert = (
                self._cert_file if self._key_file is None else (self._cert_file, self._key_file)
            )
        return session

    def _client(self, endpoint: str) -> Etcd3Client:
        url = urlsplit(endpoint)
        if url.scheme not in ("http", "https") or url.hostname is None:
            raise ValueError(f"etcd endpoint {endpoint!r} is not an http(s)://host:port URL")
        return Etcd3Client(
            host=url.hostname,
            port=url.port or 2379,
            protocol=url.scheme,
            timeout=self._timeout,
            session=self._session,
        )

    # --- transport -------------------------------------------------------------------

    def _request(
        self,
        path: str,
        body: Json,
        *,
        session: requests.Session | None = None,
        stream: bool = False,
    ) -> requests.Response:
        """POST one v3 request, to the current endpoint or, if it cannot connect, the next."""
        failures = []
        start = self._current
        for step in range(len(self._clients)):
            index = (start + step) % len(self._clients)
            try:
                response = self._post(index, path, body, session=session, stream=stream)
            except _Unreachable as exc:
                failures.append(str(exc))
                continue
            except StoreError:
                self._current = (index + 1) % len(self._clients)
                raise
            self._current = index
            return response
        self._current = (start + 1) % len(self._clients)
        raise StoreError("no etcd endpoint reachable: " + "; ".join(failures))

    def _send(
        self,
        index: int,
        path: str,
        body: Json,
        *,
        headers: Mapping[str, str] | None = None,
        session: requests.Session | None = None,
        stream: bool = False,
    ) -> requests.Response:
        """One POST to one endpoint; `_Unreachable` when it never got there."""
        endpoint = self.endpoints[index]
        # A stream waits for events indefinitely; only connecting is bounded.
        timeout = (self._timeout, None) if stream else self._timeout
        try:
            url = self._clients[index].get_url(path)  # the first call asks /version for the API
            return (session or self._session).post(
                url, json=body, headers=headers, timeout=timeout, stream=stream
            )
        except requests.ConnectionError as exc:
            if _never_sent(exc):
                raise _Unreachable(f"{endpoint}: {exc}") from exc
            raise StoreError(f"etcd {endpoint} {path}: connection lost: {exc}") from exc
        except requests.Timeout as exc:
            raise StoreError(f"etcd {endpoint} {path}: no answer in {self._timeout}s") from exc
        except requests.RequestException as exc:
            raise StoreError(f"etcd {endpoint} {path}: {exc}") from exc
        except Etcd3Exception as exc:
            # etcd3gw's API-path discovery (idempotent) reports failures its own way.
            raise _Unreachable(f"{endpoint}: {_describe(exc)}") from exc

    def _post(
        self,
        index: int,
        path: str,
        body: Json,
        *,
        session: requests.Session | None,
        stream: bool,
        reauthenticate: bool = True,
    ) -> requests.Response:
        headers = self._auth_headers(index)
        response = self._send(index, path, body, headers=headers, session=session, stream=stream)
        if response.status_code == requests.codes.unauthorized and reauthenticate:
            # Auth tokens expire (simple tokens after 5 minutes idle): get a new one once.
            response.close()
            with self._auth_lock:
                self._token = None
            return self._post(
                index, path, body, session=session, stream=stream, reauthenticate=False
            )
        if response.status_code != requests.codes.ok:
            detail = response.text.strip()
            response.close()
            raise StoreError(
                f"etcd {self.endpoints[index]} {path}: HTTP {response.status_code}: {detail}"
            )
        return response

    def _call(self, path: str, body: Json) -> Json:
        return _json(self._request(path, body), path)

    def _auth_headers(self, index: int) -> Mapping[str, str]:
        if self._username is None:
            return {}
        with self._auth_lock:
            if self._token is None:
                self._token = self._authenticate(index)
            # etcd 3.4's gateway takes the bare token in the Authorization header.
            return {"Authorization": self._token}

    def _authenticate(self, index: int) -> str:
        path = "/auth/authenticate"
        response = self._send(index, path, {"name": self._username, "password": self._password})
        if response.status_code != requests.codes.ok:
            raise StoreError(
                f"etcd {self.endpoints[index]} authenticate as {self._username}: "
                f"HTTP {response.status_code}: {response.text.strip()}"
            )
        token: str = _json(response, path)["token"]
        return token

    # --- the Store protocol ----------------------------------------------------------

    def get(self, key: str) -> KeyValue | None:
        answer = self._call("/kv/range", {"key": _key(key)})
        kvs = answer.get("kvs", [])
        return _key_value(kvs[0]) if kvs else None

    def put(self, key: str, value: bytes) -> int:
        return _revision(self._call("/kv/put", {"key": _key(key), "value": _b64(value)}))

    def delete(self, key: str) -> bool:
        answer = self._call("/kv/deleterange", {"key": _key(key)})
        return int(answer.get("deleted", 0)) > 0

    def txn(
        self,
        compares: Sequence[Compare],
        success: Sequence[Op],
        failure: Sequence[Op] = (),
    ) -> TxnResult:
        check_distinct_keys(success)
        check_distinct_keys(failure)
        answer = self._call(
            "/kv/txn",
            {
                "compare": [_compare(compare) for compare in compares],
                "success": [_request_op(op) for op in success],
                "failure": [_request_op(op) for op in failure],
            },
        )
        return TxnResult(succeeded=bool(answer.get("succeeded", False)), revision=_revision(answer))

    def list(self, prefix: str, keys_only: bool = False) -> Listing:
        body = _prefix_range(prefix)
        body.update(sort_order="ASCEND", sort_target="KEY", keys_only=keys_only)
        answer = self._call("/kv/range", body)
        return Listing(
            items=[_key_value(kv) for kv in answer.get("kvs", [])], revision=_revision(answer)
        )

    def watch(self, prefix: str, start_revision: int) -> EtcdWatch:
        request = _prefix_range(prefix)
        if start_revision > 0:
            request["start_revision"] = start_revision
        # Its own session: cancelling shuts the stream's socket without touching the pool.
        session = self._new_session()
        try:
            response = self._request(
                "/watch", {"create_request": request}, session=session, stream=True
            )
        except BaseException:
            session.close()
            raise
        return EtcdWatch(response, session, start_revision)

    def revision(self) -> int:
        # A count of the single key "\0" (never a real key) is the cheapest read with a header.
        return _revision(self._call("/kv/range", {"key": _ALL, "count_only": True}))

    def close(self) -> None:
        self._session.close()


# What reading a broken or shut-down stream raises (json: a line cut short).
_STREAM_ERRORS = (requests.RequestException, urllib3.exceptions.HTTPError, OSError, ValueError)


class EtcdWatch:
    """One etcd watch stream; `cancel()` shuts its socket so a blocked iteration ends."""

    def __init__(
        self, response: requests.Response, session: requests.Session, start_revision: int
    ) -> None:
        self._response = response
        self._session = session
        self._start_revision = start_revision
        self._cancelled = threading.Event()
        self._messages = self._read_messages()
        # etcd confirms the watch first; a compacted start revision is reported right after.
        try:
            first = next(self._messages, None)
        except _STREAM_ERRORS as exc:
            self.cancel()
            raise StoreError(f"etcd watch stream broke: {exc}") from exc
        self._expect_created(first)

    def cancel(self) -> None:
        self._cancelled.set()
        connection = getattr(self._response.raw, "connection", None)
        sock = getattr(connection, "sock", None)
        if sock is not None:
            # shutdown() on a duplicate descriptor wakes a recv() blocked in another
            # thread; close() alone would not, and would race with that reader.
            try:
                with socket.fromfd(sock.fileno(), sock.family, sock.type) as duplicate:
                    duplicate.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._response.close()
        self._session.close()

    def _expect_created(self, message: Json | None) -> None:
        result = _result(message)
        if not result.get("created"):
            self.cancel()
            raise StoreError(f"etcd did not create the watch: {message}")

    def _read_messages(self) -> Iterator[Json]:
        # One JSON message per line; HTTP chunks need not match lines, so reassemble.
        pending = b""
        for chunk in self._response.iter_content(chunk_size=None):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                if line.strip():
                    message: Json = json.loads(line)
                    yield message

    def __iter__(self) -> Iterator[WatchEvent]:
        try:
            for message in self._messages:
                if self._cancelled.is_set():
                    return
                result = _result(message)
                compact_revision = int(result.get("compact_revision", 0))
                if compact_revision:
                    raise Compacted(self._start_revision, compact_revision)
                if result.get("canceled"):
                    raise StoreError(f"etcd cancelled the watch: {result.get('cancel_reason')}")
                for event in result.get("events", []):
                    kv = event["kv"]
                    yield WatchEvent(
                        type=EventType.DELETE if event.get("type") == "DELETE" else EventType.PUT,
                        key=base64.b64decode(kv["key"]).decode(),
                        value=base64.b64decode(kv.get("value", "")),
                        revision=int(kv["mod_revision"]),
                    )
                    if self._cancelled.is_set():
                        return
            if not self._cancelled.is_set():
                raise StoreError("etcd closed the watch stream")
        except _STREAM_ERRORS as exc:
            if self._cancelled.is_set():
                return
            raise StoreError(f"etcd watch stream broke: {exc}") from exc
        finally:
            self.cancel()


def _result(message: Json | None) -> Json:
    if message is None:
        raise StoreError("etcd closed the watch stream before answering")
    if "error" in message:
        raise StoreError(f"etcd watch error: {message['error']}")
    result: Json = message.get("result", {})
    return result
