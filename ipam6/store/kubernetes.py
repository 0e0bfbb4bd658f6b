"""Kubernetes-API `Store` backend: keys kept in labelled ConfigMaps, one per pool (shard).

The cluster's own datastore, as Calico's KDD mode does it: no etcd of our own, any number
of nodes. Kubernetes offers compare-and-swap on one object (a replace carrying the
`metadata.resourceVersion` it read fails with 409 Conflict if anyone wrote in between),
never across objects, so:

- Keys are grouped into *shards*; a shard is one ConfigMap and a transaction is one
  read-evaluate-replace of it, retried from the read on Conflict. A shard is a key's path up
  to its first `by-index` or `by-owner` segment — an allocator pool (`.../nodes/`,
  `.../services/<p>/` for each of the 16 service partitions, `.../pods/<node>/`), whose
  two keys every claim writes together. Keys without such a segment share one common
  shard. A transaction touching two shards is
  refused (ValueError): it cannot be atomic.
- Revisions are the API server's resourceVersions: etcd's store-wide revision, an integer
  that only grows (an etcd-backed API server has always sent it; KEP-5504 made comparing
  them official in Kubernetes 1.35). A key records the revision of
  the write that created and last modified it; that revision is only known once the
  replace returns, so a key changed by the shard's latest write stores `null` and reads as
  the ConfigMap's own resourceVersion — the next write of the shard pins it to that number.
  So revisions are exact and cluster-wide, as `Allocator.gc(created_before=...)` needs: a
  key written after `revision()` returned always has a larger create revision. Lists and
  `revision()` read the list resourceVersion (a consistent read, one snapshot). A hand
  edit of a shard (say, `kubectl annotate`) moves the revision of its latest keys forward:
  they look younger, and a compare on their old mod revision fails once; nothing is lost.
- `watch` is a watch of the shards' ConfigMaps (by name when the prefix fixes the shard, else
  by label), each change diffed against the shard as it was: one event per key changed.
  A watch from revision S reads the shards as they were at S - 1 first
  (`resourceVersionMatch=Exact`), so deletions are seen too; a history the API server no
  longer has (etcd compacts every 5 minutes by default) is `Compacted`, and the watcher
  relists. A ConfigMap keeps no order of the operations of one write: the events of one
  transaction come puts first, then deletes, each in key order.

Every API failure (refused connection, timeout, 5xx, 403) becomes `StoreError`, which the
agent and the CNI server already retry, so an API server outage leaves the dataplane as it
is. Requests carry a timeout and the HTTP client does not retry by itself: a replace
repeated after a lost answer would report a Conflict for our own write.

`REQUIRED_RBAC` is every (verb, resource, apiGroup) this store uses, in its namespace only;
the deploy/ Role is tested against it.
"""

from __future__ import annotations

import base64
import builtins
import copy
import functools
import hashlib
import json
import logging
import random
import re
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from ipam6.store.base import (
    Compacted,
    Compare,
    CompareTarget,
    Delete,
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

log = logging.getLogger(__name__)

REQUIRED_RBAC: frozenset[tuple[str, str, str]] = frozenset(
    (verb, "configmaps", "") for verb in ("get", "list", "watch", "create", "update")
)

LABEL = "srv6ctl.io/ipam"  # = "true" on every shard: what `list` selects
SHARD_ANNOTATION = "srv6ctl.io/ipam-shard"  # the shard's key path, for people and a check
DATA_KEY = "keys"  # the one data entry: a JSON object key -> entry
_PENDING = -1  # in memory: "the revision this write will get", stored as null
POOL_SEGMENTS = ("by-index", "by-owner")
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
DEFAULT_NAMESPACE = "srv6ctl"
PAGE_SIZE = 500
CONFLICT_ATTEMPTS = 200  # each Conflict means another writer succeeded: progress is global
_BACKOFF_CAP_S = 0.1
# A watch's own length on the server, randomised as client-go's reflector does (5-10 min),
# so that the watches of many agents do not all end, and come back, at once.
WATCH_SECONDS = (300, 600)
_TOO_OLD = re.compile(r"too old resource version: \d+ \((\d+)\)")


def shard_of(key: str) -> str:
    """The path up to the key's first `by-index`/`by-owner` segment; "" for other keys."""
    segments = key.split("/")
    for position, segment in enumerate(segments):
        if segment in POOL_SEGMENTS:
            return "/".join(segments[:position]) + "/"
    return ""


def _shard_of_prefix(prefix: str) -> str | None:
    """The one shard holding every key under `prefix`, or None when it may be several.

    Only complete segments count: "/p/by-index/" fixes the shard, "/p/by-ind" does not.
    """
    complete = prefix.split("/")[:-1]
    for position, segment in enumerate(complete):
        if segment in POOL_SEGMENTS:
            return "/".join(complete[:position]) + "/"
    return None


def default_namespace() -> str:
    """The pod's own namespace (from its service account), else "srv6ctl"."""
    try:
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or DEFAULT_NAMESPACE
    except OSError:
        return DEFAULT_NAMESPACE


def load_configuration(kubeconfig: str | None) -> client.Configuration:
    """From `kubeconfig` (a path), else in-cluster (service account token, auto-refreshed)."""
    configuration = client.Configuration()
    try:
        if kubeconfig:
            config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)  # type: ignore[no-untyped-call]
        else:
            config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    except (config.ConfigException, OSError) as err:
        raise StoreError(f"kubernetes store: cannot load the client configuration: {err}") from err
    return configuration


_insecure_hosts: set[str] = set()
_insecure_lock = threading.Lock()


def warn_once_if_insecure(configuration: client.Configuration) -> None:
    """Say once per API server that its certificate is not verified, instead of urllib3's
    two-line `InsecureRequestWarning` at every request (its filter for it is "always")."""
    if configuration.verify_ssl or not configuration.host.startswith("https:"):
        return
    # Process-wide, but the only clients of such a process are the ones we configure.
    warnings.filterwarnings("ignore", category=urllib3.exceptions.InsecureRequestWarning)
    with _insecure_lock:
        if configuration.host in _insecure_hosts:
            return
        _insecure_hosts.add(configuration.host)
    log.warning(
        "the certificate of the API server %s is not verified (insecure-skip-tls-verify)",
        configuration.host,
    )


@dataclass(frozen=True)
class _Shard:
    """One ConfigMap as read: its entries (revisions resolved), and its resourceVersion."""

    name: str
    entries: dict[str, KeyValue]
    resource_version: str | None  # None: the ConfigMap does not exist yet


class KubernetesStore:
    """The `Store` protocol on ConfigMaps in `namespace`; safe across threads and nodes.

    `configuration` wins over `kubeconfig`; with neither, the in-cluster configuration.
    `timeout` bounds each API request (connect and read), so an unreachable or silent API
    server is a prompt StoreError, never a hang.
    """

    def __init__(
        self,
        namespace: str = DEFAULT_NAMESPACE,
        *,
        kubeconfig: str | None = None,
        configuration: client.Configuration | None = None,
        name_prefix: str = "srv6ctl-ipam",
        timeout: float = 5.0,
        rng: random.Random | None = None,
    ) -> None:
        self.namespace = namespace
        self._name_prefix = name_prefix
        self._timeout = (timeout, timeout)
        self._rng = rng or random.Random()
        # A copy: the caller's configuration keeps its own retry setting.
        configuration = copy.deepcopy(configuration) or load_configuration(kubeconfig)
        # No retries inside urllib3: a replayed replace would turn our own success into a
        # Conflict; Conflicts and outages are handled here and by the callers instead.
        configuration.retries = False
        warn_once_if_insecure(configuration)
        self._api_client = client.ApiClient(configuration)
        self._api = client.CoreV1Api(self._api_client)
        self._where = f"kubernetes store {configuration.host} namespace {namespace}"

    # --- reads -------------------------------------------------------------------------

    def get(self, key: str) -> KeyValue | None:
        name = self.shard_name(shard_of(key))
        body = self._call(
            "get",
            name,
            lambda: self._api.read_namespaced_config_map(
                name, self.namespace, _preload_content=False, _request_timeout=self._timeout
            ),
            missing_ok=True,
        )
        if body is None:
            return None
        return self._parse(shard_of(key), body).entries.get(key)

    def list(self, prefix: str, keys_only: bool = False) -> Listing:
        shard = _shard_of_prefix(prefix)
        if shard is not None:
            # One pool: read just its ConfigMap (the allocator's lists are all like this).
            found, revision = self._read_shard(shard)
            items = [kv for key, kv in found.entries.items() if key.startswith(prefix)]
        else:
            bodies, revision = self._list_all()
            items = []
            for body in bodies:
                meta = body.get("metadata") or {}
                shard_path = (meta.get("annotations") or {}).get(SHARD_ANNOTATION)
                if shard_path is None:
                    continue  # labelled by hand, not ours
                entries = self._parse(shard_path, body).entries
                items.extend(kv for key, kv in entries.items() if key.startswith(prefix))
        items.sort(key=lambda kv: kv.key.encode())  # etcd's byte order
        if keys_only:
            items = [replace(kv, value=b"") for kv in items]
        return Listing(items=items, revision=revision)

    def revision(self) -> int:
        body = self._call(
            "list",
            None,
            lambda: self._api.list_namespaced_config_map(
                self.namespace,
                label_selector=f"{LABEL}=true",
                limit=1,
                _preload_content=False,
                _request_timeout=self._timeout,
            ),
        )
        assert body is not None
        return self._revision_of(body)

    def watch(self, prefix: str, start_revision: int) -> ConfigMapWatch:
        return ConfigMapWatch(self, prefix, start_revision)

    # --- writes ------------------------------------------------------------------------

    def put(self, key: str, value: bytes) -> int:
        return self.txn((), (Put(key, value),)).revision

    def delete(self, key: str) -> bool:
        _, _, changed = self._commit((), (Delete(key),), ())
        return changed

    def txn(
        self,
        compares: Sequence[Compare],
        success: Sequence[Op],
        failure: Sequence[Op] = (),
    ) -> TxnResult:
        succeeded, revision, _ = self._commit(compares, success, failure)
        return TxnResult(succeeded=succeeded, revision=revision)

    def _commit(
        self, compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op]
    ) -> tuple[bool, int, bool]:
        """Run one transaction; return (compares held, revision after, anything changed)."""
        check_distinct_keys(success)
        check_distinct_keys(failure)
        shards = {shard_of(item.key) for item in (*compares, *success, *failure)}
        if len(shards) > 1:
            raise ValueError(
                "a transaction must stay within one shard (one pool), but it touches "
                + ", ".join(repr(s or "(common)") for s in sorted(shards))
            )
        if not shards:
            return True, self.revision(), False
        (shard,) = shards
        for attempt in range(CONFLICT_ATTEMPTS):
            found, revision = self._read_shard(shard)
            succeeded = all(_holds(found.entries, compare) for compare in compares)
            entries = dict(found.entries)
            if not _apply(entries, success if succeeded else failure):
                return succeeded, revision, False
            written = self._write(found, shard, entries)
            if written is not None:
                return succeeded, written, True
            # Someone wrote the shard since we read it: read again and decide again.
            self._sleep_after_conflict(attempt)
        raise StoreError(
            f"{self._where}: shard {shard!r} kept changing under {CONFLICT_ATTEMPTS} attempts"
        )

    def _sleep_after_conflict(self, attempt: int) -> None:
        # Jittered, so writers that collided do not collide again in lockstep.
        time.sleep(self._rng.uniform(0, min(_BACKOFF_CAP_S, 0.002 * 2 ** min(attempt, 16))))

    def _write(self, found: _Shard, shard: str, entries: dict[str, KeyValue]) -> int | None:
        """Create or replace the shard's ConfigMap; its new revision, or None on a Conflict."""
        body = client.V1ConfigMap(
            api_version="v1",
            kind="ConfigMap",
            metadata=client.V1ObjectMeta(
                name=found.name,
                namespace=self.namespace,
                labels={LABEL: "true", "app.kubernetes.io/part-of": "srv6ctl"},
                annotations={SHARD_ANNOTATION: shard},
                resource_version=found.resource_version,
            ),
            data={DATA_KEY: _encode_entries(entries)},
        )
        if found.resource_version is None:
            answer = self._call(
                "create",
                found.name,
                lambda: self._api.create_namespaced_config_map(
                    self.namespace, body, _preload_content=False, _request_timeout=self._timeout
                ),
                conflict_ok=True,
            )
        else:
            answer = self._call(
                "update",
                found.name,
                lambda: self._api.replace_namespaced_config_map(
                    found.name,
                    self.namespace,
                    body,
                    _preload_content=False,
                    _request_timeout=self._timeout,
                ),
                conflict_ok=True,
                missing_ok=True,  # deleted under us: read again, then create
            )
        if answer is None:
            return None
        return _parse_revision(self._where, (answer.get("metadata") or {}).get("resourceVersion"))

    def close(self) -> None:
        self._api_client.close()  # type: ignore[no-untyped-call]

    # --- the ConfigMaps ------------------------------------------------------------------

    def shard_name(self, shard: str) -> str:
        """A DNS-1123 name for the shard: the prefix and a hash of its path."""
        digest = hashlib.sha256(shard.encode()).hexdigest()[:20]
        return f"{self._name_prefix}-{digest}"

    def _read_shard(self, shard: str) -> tuple[_Shard, int]:
        """The shard as it is now, and the store revision of that read (one snapshot).

        A list by name, not a get: its resourceVersion is the store-wide revision, which a
        transaction that changes nothing must still return.
        """
        name = self.shard_name(shard)
        body = self._call(
            "list",
            name,
            lambda: self._api.list_namespaced_config_map(
                self.namespace,
                field_selector=f"metadata.name={name}",
                _preload_content=False,
                _request_timeout=self._timeout,
            ),
        )
        assert body is not None
        items = body.get("items") or []
        if not items:
            return _Shard(name, {}, None), self._revision_of(body)
        return self._parse(shard, items[0]), self._revision_of(body)

    def _list_all(self) -> tuple[Sequence[dict[str, Any]], int]:
        """Every shard, paged over one consistent snapshot, and that snapshot's revision."""
        return self._list_pages({"label_selector": f"{LABEL}=true"}, None)

    def _list_pages(
        self, selector: dict[str, Any], revision: int | None
    ) -> tuple[builtins.list[dict[str, Any]], int]:
        """The ConfigMaps `selector` picks, paged over one snapshot (at `revision`, None:
        now), and that snapshot's revision."""
        bodies: builtins.list[dict[str, Any]] = []
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"limit": PAGE_SIZE, **selector}
            if token:
                kwargs["_continue"] = token  # the token carries the page's revision
            elif revision is not None:
                kwargs["resource_version"] = str(revision)
                kwargs["resource_version_match"] = "Exact"
            page = self._call(
                "list",
                None,
                functools.partial(
                    self._api.list_namespaced_config_map,
                    self.namespace,
                    _preload_content=False,
                    _request_timeout=self._timeout,
                    **kwargs,
                ),
                revision=revision,
            )
            assert page is not None
            bodies.extend(page.get("items") or [])
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                return bodies, self._revision_of(page)

    def _parse(self, shard: str, body: dict[str, Any]) -> _Shard:
        meta = body.get("metadata") or {}
        name = str(meta.get("name", ""))
        found = (meta.get("annotations") or {}).get(SHARD_ANNOTATION)
        if found != shard:
            raise StoreError(
                f"{self._where}: ConfigMap {name} holds shard {found!r}, not {shard!r}"
            )
        version = str(meta.get("resourceVersion") or "")
        latest = _parse_revision(self._where, version)
        try:
            raw = json.loads((body.get("data") or {}).get(DATA_KEY) or "{}")
            entries = {key: _decode_entry(key, entry, latest) for key, entry in raw.items()}
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise StoreError(
                f"{self._where}: ConfigMap {name} is not a store shard: {err}"
            ) from err
        return _Shard(name, entries, version)

    def _revision_of(self, body: dict[str, Any]) -> int:
        return _parse_revision(self._where, (body.get("metadata") or {}).get("resourceVersion"))

    def _call(
        self,
        verb: str,
        name: str | None,
        request: Callable[[], Any],
        *,
        missing_ok: bool = False,
        conflict_ok: bool = False,
        revision: int | None = None,
    ) -> dict[str, Any] | None:
        """Run one API request and return its JSON body; None for an accepted 404/409.

        `revision`: the request reads at that revision, so a 410 Gone is `Compacted`."""
        what = f"{verb} configmaps" + (f" {name}" if name else "")
        try:
            response = request()
            try:
                data = response.data
            finally:
                response.release_conn()
        except ApiException as err:
            if err.status == 404 and missing_ok:
                return None
            if err.status == 409 and conflict_ok:
                return None  # Conflict (replace) or AlreadyExists (create): read again
            raise self._failure(what, err, revision) from err
        except (urllib3.exceptions.HTTPError, OSError) as err:
            raise StoreError(f"{self._where}: {what}: {type(err).__name__}: {err}") from err
        try:
            body = json.loads(data)
        except ValueError as err:
            raise StoreError(f"{self._where}: {what}: the answer is not JSON: {err}") from err
        if not isinstance(body, dict):
            raise StoreError(f"{self._where}: {what}: the answer is not a JSON object")
        return body

    def _failure(self, what: str, err: ApiException, revision: int | None) -> StoreError:
        if err.status == 410 and revision is not None:
            return Compacted(revision + 1, _oldest_kept(_message(err)))
        hint = ""
        if err.status in (401, 403):
            hint = f" (RBAC: the store needs {sorted(v for v, _, _ in REQUIRED_RBAC)})"
        elif err.status == 422 and "Too long" in _message(err):
            hint = (
                " (this pool outgrew one ConfigMap, 1 MiB: about 3,000 nodes, or 3,000"
                " Services in one of the 16 service partitions; a store that large"
                " belongs in etcd)"
            )
        return StoreError(f"{self._where}: {what}: HTTP {err.status} {_message(err)}{hint}")

    # --- watch -------------------------------------------------------------------------

    def _selector(self, prefix: str) -> dict[str, Any]:
        """The ConfigMaps that may hold keys under `prefix`: one by name, or every shard."""
        shard = _shard_of_prefix(prefix)
        if shard is not None:
            return {"field_selector": f"metadata.name={self.shard_name(shard)}"}
        return {"label_selector": f"{LABEL}=true"}

    def _shards_at(
        self, prefix: str, revision: int | None
    ) -> tuple[dict[str, dict[str, KeyValue]], int]:
        """The shards that may hold `prefix` as they were at `revision` (None: now), by
        shard path, and the revision read."""
        bodies, read = self._list_pages(self._selector(prefix), revision)
        shards: dict[str, dict[str, KeyValue]] = {}
        for body in bodies:
            shard = ((body.get("metadata") or {}).get("annotations") or {}).get(SHARD_ANNOTATION)
            if shard is not None:  # else labelled by hand, not ours
                shards[shard] = self._parse(shard, body).entries
        return shards, read

    def _open_watch(self, prefix: str, revision: int) -> Any:
        """The streaming response of a watch of `prefix`'s shards after `revision`."""
        seconds = self._rng.randint(*WATCH_SECONDS)
        try:
            return self._api.list_namespaced_config_map(
                self.namespace,
                watch=True,
                resource_version=str(revision),
                allow_watch_bookmarks=True,
                timeout_seconds=seconds,
                _preload_content=False,
                # Bookmarks and the server's own end keep a live watch talking well within.
                _request_timeout=(self._timeout[0], seconds + 30),
                **self._selector(prefix),
            )
        except ApiException as err:
            raise self._failure("watch configmaps", err, revision) from err
        except (urllib3.exceptions.HTTPError, OSError) as err:
            raise StoreError(
                f"{self._where}: watch configmaps: {type(err).__name__}: {err}"
            ) from err


class ConfigMapWatch:
    """An open watch of the Kubernetes store (see the module's docstring).

    Iterating reads the shards at the revision before `start_revision` (a start of 0 or
    less: now), then follows the API server's watch of their ConfigMaps, resuming it from
    the last resourceVersion seen whenever the server ends it. `cancel()` from any thread
    shuts the open response's socket, which ends a blocked iteration.
    """

    def __init__(self, store: KubernetesStore, prefix: str, start_revision: int) -> None:
        self._store = store
        self._prefix = prefix
        self._start = start_revision
        self._cancelled = threading.Event()
        self._lock = threading.Lock()
        self._response: Any = None

    def cancel(self) -> None:
        self._cancelled.set()
        with self._lock:
            response = self._response
        if response is not None:
            response.shutdown()

    def __iter__(self) -> Iterator[WatchEvent]:
        store = self._store
        if self._start <= 1:
            if self._start == 1:  # revision 0 cannot be read: that history is always gone
                raise Compacted(1, 0)
            shards, revision = store._shards_at(self._prefix, None)
        else:
            shards, revision = store._shards_at(self._prefix, self._start - 1)
        while not self._cancelled.is_set():
            response = store._open_watch(self._prefix, revision)
            with self._lock:
                self._response = response
            try:
                if self._cancelled.is_set():
                    return  # cancelled while the watch was being opened
                for line in _lines(response):
                    event = json.loads(line)
                    obj = event.get("object") or {}
                    if event.get("type") == "ERROR":
                        raise self._error(obj, revision)
                    revision = _parse_revision(
                        store._where, (obj.get("metadata") or {}).get("resourceVersion")
                    )
                    if event.get("type") != "BOOKMARK":
                        yield from self._changes(shards, event.get("type"), obj, revision)
            except (urllib3.exceptions.HTTPError, OSError, ValueError) as err:
                if self._cancelled.is_set():
                    return
                raise StoreError(
                    f"{store._where}: watch configmaps: {type(err).__name__}: {err}"
                ) from err
            finally:
                with self._lock:
                    self._response = None
                response.release_conn()

    def _changes(
        self, shards: dict[str, dict[str, KeyValue]], kind: Any, obj: Any, revision: int
    ) -> list[WatchEvent]:
        """The shard's keys under the prefix that this write changed, against `shards`."""
        shard = ((obj.get("metadata") or {}).get("annotations") or {}).get(SHARD_ANNOTATION)
        if shard is None:
            return []  # labelled by hand, not ours
        before = shards.get(shard, {})
        after = {} if kind == "DELETED" else self._store._parse(shard, obj).entries
        shards[shard] = after
        puts, deletes = [], []
        for key in sorted(before.keys() | after.keys(), key=str.encode):
            if not key.startswith(self._prefix):
                continue
            old, new = before.get(key), after.get(key)
            if new is None:
                deletes.append(WatchEvent(EventType.DELETE, key, b"", revision))
            elif old is None or (old.value, old.mod_revision) != (new.value, new.mod_revision):
                # Only this write's keys moved: the others kept their pinned revisions.
                puts.append(WatchEvent(EventType.PUT, key, new.value, new.mod_revision))
        return puts + deletes

    def _error(self, status: Any, revision: int) -> StoreError:
        message = f"{status.get('reason')}: {status.get('message')}"
        if status.get("code") == 410:
            return Compacted(revision + 1, _oldest_kept(message))
        return StoreError(f"{self._store._where}: watch configmaps: {status.get('code')} {message}")


def _lines(response: Any) -> Iterator[bytes]:
    """The watch's events, one JSON object per line, as they arrive."""
    pending = b""
    for chunk in response.stream(amt=None, decode_content=True):
        pending += chunk
        *lines, pending = pending.split(b"\n")
        yield from (line for line in lines if line.strip())


def _oldest_kept(message: str) -> int:
    """The oldest revision the API server still has, when its message says (0: unknown)."""
    found = _TOO_OLD.search(message)
    return int(found.group(1)) if found else 0


# --- entries: the JSON kept under data["keys"] ---------------------------------------------


def _encode_entries(entries: dict[str, KeyValue]) -> str:
    """One key per line (readable with kubectl), sorted; revisions of this write are null."""
    lines = []
    for key in sorted(entries, key=str.encode):
        kv = entries[key]
        entry: dict[str, Any] = {}
        try:
            entry["value"] = kv.value.decode()  # the allocator's JSON stays readable
        except UnicodeDecodeError:
            entry["base64"] = base64.b64encode(kv.value).decode()
        entry["create"] = None if kv.create_revision == _PENDING else kv.create_revision
        entry["mod"] = None if kv.mod_revision == _PENDING else kv.mod_revision
        entry["version"] = kv.version
        lines.append(f"{json.dumps(key)}: {json.dumps(entry, separators=(',', ':'))}")
    return "{\n" + ",\n".join(lines) + "\n}\n" if lines else "{}\n"


def _decode_entry(key: str, entry: dict[str, Any], latest: int) -> KeyValue:
    if "base64" in entry:
        value = base64.b64decode(entry["base64"], validate=True)
    else:
        value = str(entry["value"]).encode()
    # null: written by the shard's latest write, whose revision is the ConfigMap's own.
    create, mod = entry.get("create"), entry.get("mod")
    return KeyValue(
        key=key,
        value=value,
        create_revision=latest if create is None else int(create),
        mod_revision=latest if mod is None else int(mod),
        version=int(entry["version"]),
    )


def _parse_revision(where: str, version: object) -> int:
    try:
        revision = int(str(version))
    except ValueError:
        revision = 0
    if revision <= 0:
        raise StoreError(
            f"{where}: resourceVersion {version!r} is not a positive integer; the Kubernetes "
            "store needs an etcd-backed API server (KEP-5504 comparable resource versions)"
        )
    return revision


def _holds(entries: dict[str, KeyValue], compare: Compare) -> bool:
    kv = entries.get(compare.key)
    if compare.target is CompareTarget.VALUE:
        return kv is not None and kv.value == compare.expected
    if kv is None:
        return compare.expected == 0
    actual = (
        kv.create_revision if compare.target is CompareTarget.CREATE_REVISION else kv.mod_revision
    )
    return actual == compare.expected


def _apply(entries: dict[str, KeyValue], ops: Sequence[Op]) -> bool:
    """Apply `ops` in place (revisions of this write pending); True when anything changed."""
    changed = False
    for op in ops:
        old = entries.get(op.key)
        if isinstance(op, Put):
            if old is None:
                entries[op.key] = KeyValue(op.key, op.value, _PENDING, _PENDING, 1)
            else:
                entries[op.key] = replace(
                    old, value=op.value, mod_revision=_PENDING, version=old.version + 1
                )
            changed = True
        elif old is not None:
            # Deleting a missing key changes nothing, as in etcd.
            del entries[op.key]
            changed = True
    return changed


def _message(err: ApiException) -> str:
    try:
        status = json.loads(err.body or "")
        return f"{status.get('reason', err.reason)}: {status.get('message', '')}"
    except (ValueError, AttributeError):
        return str(err.reason)
