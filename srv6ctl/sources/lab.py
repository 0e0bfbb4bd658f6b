"""LabSource: cluster objects from Kubernetes-shaped YAML/JSON files in a directory.

Files (`*.yaml`, `*.yml`, `*.json`, searched recursively, hidden and `~` backup files
skipped) hold objects as `kubectl get -o yaml/json` prints them: multi-document YAML,
`kind: List` and typed lists (`PodList`, whose items carry no kind) included. Kinds the
controller does not use (Deployments, ConfigMaps, ...) are ignored.

Watching is polling: cheap `stat`s, and a file is re-read only when its (mtime, size,
inode) changed — or while its mtime is too recent to trust, since a second write within the
filesystem's timestamp granularity would otherwise go unseen. Level-triggered: on any
change the source re-reads, rebuilds the whole set of objects and diffs it against what it
had, emitting `Upsert`s and `Delete`s. A file that does not parse (an editor half way
through a save) changes nothing: its previous objects are kept and the problem is reported
in `errors` until the file is valid again.

Objects without `metadata.uid` get a stable one derived from kind/namespace/name, so a lab
service keeps its ipam6 BSID allocation across restarts.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from srv6ctl.sources import EventSink
from srv6ctl.sources.convert import API_VERSIONS, ConversionError, from_json, object_key
from srv6ctl.state import ClusterObject, Delete, Kind, SourceEvent, Upsert

log = logging.getLogger(__name__)

SUFFIXES = (".yaml", ".yml", ".json")
RACY_SECONDS = 2.0  # re-check content of files modified this recently (timestamp granularity)
# Upserts go out dependencies first (a slice before the pods it names is fine either way,
# but a human reading the event log expects namespaces and nodes first).
KIND_ORDER = (
    Kind.NAMESPACE,
    Kind.NODE,
    Kind.SERVICE,
    Kind.ENDPOINT_SLICE,
    Kind.POD,
    Kind.NETWORK_POLICY,
)

ObjectId = tuple[Kind, str, str]  # kind, namespace, name


@dataclass
class _File:
    signature: tuple[int, int, int]  # mtime_ns, size, inode
    digest: str
    objects: dict[ObjectId, ClusterObject] = field(default_factory=dict)


def lab_uid(kind: Kind, namespace: str, name: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"srv6ctl-lab:{kind}/{namespace}/{name}"))


def parse_documents(text: str, suffix: str) -> list[Any]:
    if suffix == ".json":
        return [json.loads(text)]
    return [doc for doc in yaml.safe_load_all(text) if doc is not None]


def objects_of(documents: list[Any]) -> Iterator[tuple[Kind, dict[str, Any]]]:
    """(kind, object) for every object we use, lists unpacked."""
    for doc in documents:
        if not isinstance(doc, Mapping):
            raise ConversionError(f"a document is a {type(doc).__name__}, not an object")
        kind = str(doc.get("kind") or "")
        if kind == "List" or kind.endswith("List"):
            item_kind = kind.removesuffix("List")
            for item in doc.get("items") or ():
                if isinstance(item, Mapping) and "kind" not in item and item_kind:
                    item = {**item, "kind": item_kind}
                yield from objects_of([item])
            continue
        try:
            known = Kind(kind)
        except ValueError:
            log.debug("lab: ignoring a %s", kind or "document without kind")
            continue
        api_version = doc.get("apiVersion")
        if api_version is not None and api_version != API_VERSIONS[known]:
            raise ConversionError(
                f"{kind} {(doc.get('metadata') or {}).get('name')}: apiVersion {api_version} "
                f"is not supported (use {API_VERSIONS[known]})"
            )
        yield known, dict(doc)


class LabSource:
    """A directory of Kubernetes objects, polled for changes."""

    def __init__(self, directory: str | Path, *, interval: float = 0.5) -> None:
        self.directory = Path(directory)
        self.interval = interval
        self._files: dict[Path, _File] = {}
        self._snapshot: dict[ObjectId, ClusterObject] = {}
        self._errors: dict[Path, str] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def errors(self) -> Mapping[Path, str]:
        """Files whose current content could not be used, with the reason."""
        return dict(self._errors)

    @property
    def objects(self) -> Mapping[ObjectId, ClusterObject]:
        return dict(self._snapshot)

    # --- polling ----------------------------------------------------------------------

    def poll(self) -> list[SourceEvent]:
        """Re-read what changed; return the events that bring a consumer up to date."""
        changed = False
        now = time.time()
        present = set()
        for path in self._candidates():
            present.add(path)
            try:
                stat = path.stat()
            except FileNotFoundError:
                present.discard(path)
                continue
            signature = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
            known = self._files.get(path)
            racy = now - stat.st_mtime_ns / 1e9 < RACY_SECONDS
            if known is not None and known.signature == signature and not racy:
                continue
            changed |= self._read(path, signature, known)
        for gone in set(self._files) - present:
            del self._files[gone]
            self._errors.pop(gone, None)
            changed = True
        for gone in set(self._errors) - present:
            del self._errors[gone]
        if not changed:
            return []
        return self._diff()

    def _candidates(self) -> list[Path]:
        if not self.directory.is_dir():
            return []
        return sorted(
            p
            for p in self.directory.rglob("*")
            if p.suffix in SUFFIXES
            and p.is_file()
            and not any(part.startswith(".") for part in p.relative_to(self.directory).parts)
            and not p.name.endswith("~")
        )

    def _read(self, path: Path, signature: tuple[int, int, int], known: _File | None) -> bool:
        """Parse one file; True when its objects changed."""
        try:
            data = path.read_bytes()
        except OSError as err:
            self._errors[path] = f"cannot read: {err}"
            return False
        digest = hashlib.sha256(data).hexdigest()
        if known is not None and known.digest == digest:
            known.signature = signature
            return False
        try:
            objects = self._convert(data.decode(), path.suffix)
        except (ConversionError, ValueError, yaml.YAMLError, UnicodeDecodeError) as err:
            # Keep the previous objects: a half-saved file must not delete anything.
            self._errors[path] = str(err)
            log.warning("lab: %s: %s (keeping its previous objects)", path, err)
            if known is not None:
                known.signature, known.digest = signature, digest
            else:
                self._files[path] = _File(signature, digest)
            return False
        self._errors.pop(path, None)
        self._files[path] = _File(signature, digest, objects)
        return known is None or known.objects != objects

    def _convert(self, text: str, suffix: str) -> dict[ObjectId, ClusterObject]:
        objects: dict[ObjectId, ClusterObject] = {}
        for kind, obj in objects_of(parse_documents(text, suffix)):
            namespace, name = object_key(kind, obj)
            metadata = dict(obj.get("metadata") or {})
            if not metadata.get("uid"):
                metadata["uid"] = lab_uid(kind, namespace, name)
                obj = {**obj, "metadata": metadata}
            objects[(kind, namespace, name)] = from_json(kind, obj)
        return objects

    def _diff(self) -> list[SourceEvent]:
        snapshot: dict[ObjectId, ClusterObject] = {}
        for path in sorted(self._files):
            for object_id, obj in self._files[path].objects.items():
                if object_id in snapshot:
                    log.warning("lab: %s %s/%s is defined twice; %s wins", *object_id, path)
                snapshot[object_id] = obj
        order = {kind: i for i, kind in enumerate(KIND_ORDER)}
        events: list[SourceEvent] = []
        for object_id in sorted(snapshot, key=lambda i: (order[i[0]], i[1], i[2])):
            if self._snapshot.get(object_id) != snapshot[object_id]:
                events.append(Upsert(snapshot[object_id]))
        for kind, namespace, name in sorted(set(self._snapshot) - set(snapshot)):
            events.append(Delete(kind, namespace, name))
        self._snapshot = snapshot
        return events

    # --- watching ---------------------------------------------------------------------

    def start(self, sink: EventSink) -> None:
        """Poll in a thread every `interval` seconds, handing events to `sink`."""
        if self._thread is not None:
            raise RuntimeError("LabSource already started")
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._run, args=(sink,), name="srv6ctl-lab-source", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self, sink: EventSink) -> None:
        while True:
            try:
                for event in self.poll():
                    sink(event)
            except Exception:  # the watcher must outlive any one bad poll
                log.exception("lab: polling %s failed", self.directory)
            if self._stop.wait(self.interval):
                return
