"""KubernetesSource: the cluster's objects from the API server, by list + watch.

Written against the official API semantics (https://kubernetes.io/docs/reference/using-api/
api-concepts/: "Efficient detection of changes", "Resource versions", "Watch bookmarks"),
the way client-go's reflector uses them, with the official Python client:

1. *List* the whole collection (paged, `limit`/`continue`: one consistent snapshot) and
   hand it over as one `Replace` — the consumer makes the kind's content exactly that,
   deleting whatever vanished while we were not watching.
2. *Watch* from the list's `resourceVersion` with `allowWatchBookmarks=true`; each event
   becomes an `Upsert` or `Delete`. Bookmarks carry no object, only a newer
   resourceVersion to resume from, so a quiet collection does not fall behind the server's
   event history. A watch ends after `timeoutSeconds` (randomised, as the reflector does, so
   that agents do not all reconnect at once) and resumes from the last version seen.
3. *410 Gone* — the version we resume from is older than the server's history (an
   `ApiException` with status 410, or an `ERROR` event with code 410 in the stream) —
   means events were lost: relist at once. That is safe because events are level-triggered:
   they only update the cache and mark keys dirty; render recomputes from the whole state.
4. Any other error (connection refused, 5xx, a broken stream): how long to wait, and
   whether to relist, depend on why it failed, which one cheap request tells:
   - the API server is down (its `/readyz` does not answer 200): one `ApiServerProbe` per
     source asks `/readyz` every `probe_interval` (0.3 s nominal, jittered to 0.15-0.3 s)
     and every kind relists as soon as it answers, so an outage of any length ends within
     that interval of the server's return. A relist, not a resumed watch: a restarted
     server's history begins at its start (kube-apiserver 1.36 took 0.2-0.45 s to answer
     such a watch with 410). Sane for a recovering server: a process that is down refuses
     the connection in the kernel, at no cost to it; one that listens but is not ready
     gets one `/readyz` per agent every ~0.22 s, not one per kind — its own health check,
     which reads no storage and which kube-apiserver's `probes` FlowSchema puts in the
     exempt priority level — and the lists come only once it says ready, each kind's
     once, as at an agent's start;
   - the server is up and refused this request (a 5xx for this kind, 429, 403) or a stream
     broke while it stayed up: exponential backoff with a cap and jitter, reset as soon
     as a watch opens again — so a server that answers, but badly, is not hammered, and
     one bad spell does not leave a healthy kind retrying at the cap afterwards — then the
     watch resumes from the last resourceVersion seen, as client-go's reflector does (a
     relist only if the server answers 410).
   Each kind runs in its own thread, so one kind's failures never stall the others.
5. Stopping is quiet: the errors of streams cut by `stop()` are not failures.

Responses are read as raw JSON — the list with `_preload_content=False`, watch events
through `kubernetes.watch.Watch` from their `raw_object`, with the client's own model
deserialisation turned off (`_RawWatch`): its models are stricter than the API server, and
one object they reject stopped the kind's whole watch (a Service whose status condition
has no `lastTransitionTime`, which the API server accepts and upstream e2e writes: every
Service change after it was lost, on every node). The resourceVersion to resume from is
read from the events themselves. Objects are converted by the same
`srv6ctl.sources.convert` the lab source uses, so a field reads the same from a file, a
list and a watch; one it refuses is skipped alone.

`REQUIRED_RBAC` is the complete set of (verb, resource, apiGroup) this source uses; the
deploy/ RBAC manifest is tested against it.
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException
from urllib3.util.retry import Retry

from ipam6.store.kubernetes import warn_once_if_insecure
from srv6ctl.sources import EventSink
from srv6ctl.sources.convert import ConversionError, from_json, object_key
from srv6ctl.state import ClusterObject, Delete, Kind, Replace, Upsert

log = logging.getLogger(__name__)

GONE = 410
PAGE_SIZE = 500  # client-go's default list page
CONNECT_TIMEOUT = 10.0
LIST_TIMEOUT = (CONNECT_TIMEOUT, 120.0)
PROBE_PATH = "/readyz"
PROBE_TIMEOUT = (1.0, 2.0)


@dataclass(frozen=True)
class Resource:
    """One watched collection: its kind, REST resource, API group and list call."""

    kind: Kind
    resource: str
    api_group: str  # "" is the core group
    list_call: Callable[[client.ApiClient], Callable[..., Any]]


RESOURCES: tuple[Resource, ...] = (
    Resource(Kind.NODE, "nodes", "", lambda c: client.CoreV1Api(c).list_node),
    Resource(Kind.POD, "pods", "", lambda c: client.CoreV1Api(c).list_pod_for_all_namespaces),
    Resource(
        Kind.SERVICE, "services", "", lambda c: client.CoreV1Api(c).list_service_for_all_namespaces
    ),
    Resource(
        Kind.ENDPOINT_SLICE,
        "endpointslices",
        "discovery.k8s.io",
        lambda c: client.DiscoveryV1Api(c).list_endpoint_slice_for_all_namespaces,
    ),
    Resource(Kind.NAMESPACE, "namespaces", "", lambda c: client.CoreV1Api(c).list_namespace),
    Resource(
        Kind.NETWORK_POLICY,
        "networkpolicies",
        "networking.k8s.io",
        lambda c: client.NetworkingV1Api(c).list_network_policy_for_all_namespaces,
    ),
)

# Every (verb, resource, apiGroup) the source needs, and nothing more: list and watch only.
REQUIRED_RBAC: frozenset[tuple[str, str, str]] = frozenset(
    (verb, r.resource, r.api_group) for r in RESOURCES for verb in ("list", "watch")
)


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with a cap and "equal jitter": attempt n waits a random time
    in [d/2, d] with d = min(cap, initial * factor**n), so retries from many agents spread
    out while each still waits at least half the nominal delay."""

    initial: float = 0.5
    cap: float = 30.0
    factor: float = 2.0

    def delay(self, attempt: int, rng: random.Random) -> float:
        nominal = min(self.cap, self.initial * self.factor ** min(attempt, 64))
        return rng.uniform(nominal / 2, nominal)


class _RawWatch(watch.Watch):
    """`kubernetes.watch.Watch` that leaves events as JSON (`raw_object`): without a
    return type it deserialises nothing, and so tracks no resourceVersion either
    (`_resource_version` reads it from the event)."""

    def get_return_type(self, func: Any) -> None:
        return None


def _resource_version(event: dict[str, Any]) -> str | None:
    """The resourceVersion a watch event carries (a bookmark's too), if any."""
    raw = event.get("raw_object")
    metadata = raw.get("metadata") if isinstance(raw, dict) else None
    version = metadata.get("resourceVersion") if isinstance(metadata, dict) else None
    return str(version) if version else None


class _Stopped(Exception):
    pass


class ApiServerProbe:
    """Whether the API server is ready, asked with `GET /readyz`; shared by the threads of
    one source, so that while it is down one thread probes every `interval` seconds
    (jittered) and the others wait for its answer."""

    def __init__(
        self, api: client.ApiClient, interval: float, rng: random.Random, stop: threading.Event
    ) -> None:
        self._api = api
        self._interval = interval
        self._rng = rng
        self._stop = stop
        self._changed = threading.Condition()
        self._probing = False
        self._returns = 0  # how many probing rounds ended
        self._outage = False  # whether the last one found the server down at first

    def ready(self) -> bool:
        try:
            request = self._api.param_serialize("GET", PROBE_PATH, auth_settings=["BearerToken"])
            response = self._api.call_api(*request, _request_timeout=PROBE_TIMEOUT)
            response.read()  # type: ignore[no-untyped-call]
        except Exception:  # refused, reset, timed out: not ready
            return False
        return bool(response.status == 200)

    def wait_until_ready(self) -> bool:
        """Block until the server is ready (or the source stops); True when it was not
        ready at first (an outage: retry at once), False when it was (back off)."""
        with self._changed:
            if self._probing:
                returns = self._returns
                while self._returns == returns and not self._stop.is_set():
                    self._changed.wait()
                return self._outage
            self._probing = True
        down_since: float | None = None
        try:
            while not self._stop.is_set() and not self.ready():
                if down_since is None:
                    down_since = time.monotonic()
                    log.warning(
                        "the API server is not ready: asking its %s every %.1fs",
                        PROBE_PATH,
                        self._interval,
                    )
                self._stop.wait(self._rng.uniform(self._interval / 2, self._interval))
            if down_since is not None and not self._stop.is_set():
                log.info("the API server is ready again after %.1fs", time.monotonic() - down_since)
        finally:
            with self._changed:
                self._probing = False
                self._outage = down_since is not None
                self._returns += 1
                self._changed.notify_all()
        return down_since is not None

    def wake(self) -> None:
        with self._changed:
            self._changed.notify_all()


class KubernetesSource:
    """List+watch of every kind in `resources`, one thread each, events to `sink`."""

    def __init__(
        self,
        sink: EventSink,
        *,
        kubeconfig: str | None = None,
        configuration: client.Configuration | None = None,
        resources: Iterable[Resource] = RESOURCES,
        backoff: Backoff = Backoff(),
        probe_interval: float = 0.3,
        watch_timeout: tuple[int, int] = (300, 600),
        page_size: int = PAGE_SIZE,
        rng: random.Random | None = None,
    ) -> None:
        """`configuration` wins; else `kubeconfig` (a path); else the in-cluster config
        (the service account's token and the KUBERNETES_SERVICE_* environment)."""
        self._sink = sink
        # A copy with urllib3's own retries cut to the one that is not a failure: a kept-alive
        # connection the server had closed (read once more). A refused connection is not
        # retried there (three times, each logging a warning): the probe says when.
        self._configuration = copy.deepcopy(configuration or _load_configuration(kubeconfig))
        self._configuration.retries = Retry(total=1, connect=0, read=1, redirect=0, status=0)
        warn_once_if_insecure(self._configuration)
        self._resources = tuple(resources)
        self._backoff = backoff
        self._watch_timeout = watch_timeout
        self._page_size = page_size
        self._rng = rng or random.Random()
        self._stop = threading.Event()
        self._probe_api = client.ApiClient(self._configuration)
        self.probe = ApiServerProbe(self._probe_api, probe_interval, self._rng, self._stop)
        self._threads: list[threading.Thread] = []
        self._synced = {r.kind: threading.Event() for r in self._resources}
        self._watches: dict[Kind, watch.Watch] = {}
        self._lock = threading.Lock()
        # Counters for telemetry and tests: how the reflector loop went, per kind.
        self.relists: dict[Kind, int] = {r.kind: 0 for r in self._resources}
        self.errors: dict[Kind, int] = {r.kind: 0 for r in self._resources}
        self.expirations: dict[Kind, int] = {r.kind: 0 for r in self._resources}  # 410s
        self.resource_versions: dict[Kind, str] = {}

    # --- lifecycle --------------------------------------------------------------------

    def start(self) -> None:
        if self._threads:
            raise RuntimeError("KubernetesSource already started")
        self._stop.clear()
        for resource in self._resources:
            thread = threading.Thread(
                target=self._run,
                args=(resource,),
                name=f"srv6ctl-watch-{resource.resource}",
                daemon=True,
            )
            self._threads.append(thread)
            thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self.probe.wake()
        deadline = time.monotonic() + timeout
        # Keep interrupting: a thread may open its watch just after a first stop() (the
        # client's Watch resets its stop flag when a stream starts); stop() also shuts the
        # open response's socket, which is what unblocks a thread waiting for events.
        while any(t.is_alive() for t in self._threads) and time.monotonic() < deadline:
            with self._lock:
                for active in self._watches.values():
                    active.stop()  # type: ignore[no-untyped-call]
            for thread in self._threads:
                thread.join(0.05)
        self._threads = []
        self._probe_api.close()  # type: ignore[no-untyped-call]

    def wait_synced(self, timeout: float | None = None) -> bool:
        """True once every kind has been listed (and replaced) at least once."""
        return all(event.wait(timeout) for event in self._synced.values())

    # --- the reflector loop, one per kind ---------------------------------------------

    def _run(self, resource: Resource) -> None:
        api = client.ApiClient(self._configuration)
        list_call = resource.list_call(api)
        stream = _RawWatch()  # type: ignore[no-untyped-call]
        with self._lock:
            self._watches[resource.kind] = stream
        # Consecutive failures since a watch last opened: an answer that opens a watch
        # proves the kind healthy again (a list that works while every watch fails must
        # not reset the backoff, or the loop would relist as fast as it can).
        failures = 0
        # 410s in a row since a watch last delivered anything.
        expired = 0
        resume: str | None = None  # where the watch resumes; None: list first
        listed: str | None = None  # the resourceVersion of the last list

        def opened(**kwargs: Any) -> Any:
            nonlocal failures
            response = list_call(**kwargs)
            failures = 0
            return response

        watch_call = functools.update_wrapper(opened, list_call)
        try:
            while not self._stop.is_set():
                try:
                    if resume is None:
                        resume = listed = self._list(resource, list_call)
                    while not self._stop.is_set():
                        resume = self._watch(resource, watch_call, stream, resume)
                        expired = 0
                except _Stopped:
                    return
                except ApiException as err:
                    if self._stop.is_set():
                        return
                    if err.status != GONE:
                        failures, resume = self._failed(resource, failures, err, resume)
                        continue
                    self.expirations[resource.kind] += 1
                    log.info("%s: resourceVersion expired (410 Gone): relisting", resource.resource)
                    resume = None
                    if self.resource_versions.get(resource.kind) != listed:
                        expired = 0  # the watch got somewhere since the list
                    if expired:  # 410 again right after a relist: back off, do not spin
                        self._stop.wait(self._backoff.delay(expired - 1, self._rng))
                    expired += 1
                except Exception as err:  # a broken connection must not end the loop
                    if self._stop.is_set():
                        return  # a stream cut by stop(): not a failure
                    failures, resume = self._failed(resource, failures, err, resume)
        finally:
            with self._lock:
                self._watches.pop(resource.kind, None)
            api.close()  # type: ignore[no-untyped-call]

    def _failed(
        self, resource: Resource, failures: int, err: Exception, resume: str | None
    ) -> tuple[int, str | None]:
        """Wait as the failure deserves; the failure count and where to resume after it."""
        self.errors[resource.kind] += 1
        if self.probe.wait_until_ready():
            # The API server was down and is back: at once, and with a relist — a server
            # that went away has most likely restarted, and a restarted server's watch
            # history begins at its start, so a resumed watch would only earn a 410 first.
            if not self._stop.is_set():
                log.info("%s: %s; relisting", resource.resource, _describe(err))
            return 0, None
        delay = self._backoff.delay(failures, self._rng)
        log.warning("%s: %s; retrying in %.1fs", resource.resource, _describe(err), delay)
        self._stop.wait(delay)
        # The server answers: resume from the last resourceVersion seen, if a list gave one.
        if resume is not None:
            resume = self.resource_versions.get(resource.kind, resume)
        return failures + 1, resume

    def _list(self, resource: Resource, list_call: Callable[..., Any]) -> str:
        objects: list[ClusterObject] = []
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {
                "limit": self._page_size,
                "_preload_content": False,
                "_request_timeout": LIST_TIMEOUT,
            }
            if token:
                kwargs["_continue"] = token
            response = list_call(**kwargs)
            try:
                body = json.loads(response.data)
            finally:
                response.release_conn()
            for item in body.get("items") or ():
                converted = self._convert(resource.kind, item)
                if converted is not None:
                    objects.append(converted)
            metadata = body.get("metadata") or {}
            token = metadata.get("continue")
            if not token:
                version = str(metadata.get("resourceVersion") or "")
                break
        # Counted before it is handed on: whoever sees the relist's effect sees it counted.
        self.relists[resource.kind] += 1
        self._sink(Replace(resource.kind, tuple(objects)))
        self.resource_versions[resource.kind] = version
        self._synced[resource.kind].set()
        return version

    def _watch(
        self,
        resource: Resource,
        list_call: Callable[..., Any],
        stream: watch.Watch,
        version: str,
    ) -> str:
        timeout = self._rng.randint(*self._watch_timeout)
        for event in stream.stream(  # type: ignore[no-untyped-call]
            list_call,
            resource_version=version,
            allow_watch_bookmarks=True,
            timeout_seconds=timeout,
            # A silent, half-dead connection must not hang us past the server's own end.
            _request_timeout=(CONNECT_TIMEOUT, timeout + 30),
        ):
            if self._stop.is_set():
                break
            if not isinstance(event, dict):
                continue  # the client yields None for a line that is not JSON
            self._handle(resource, event)
            seen = _resource_version(event)
            if seen:
                version = seen
                self.resource_versions[resource.kind] = version
        if self._stop.is_set():
            raise _Stopped
        return version

    def _handle(self, resource: Resource, event: dict[str, Any]) -> None:
        kind, raw = event.get("type"), event.get("raw_object")
        if kind == "BOOKMARK" or not isinstance(raw, dict):
            return
        if kind == "DELETED":
            try:
                namespace, name = object_key(resource.kind, raw)
            except ConversionError as err:
                log.warning("%s: skipping a deletion: %s", resource.resource, err)
                return
            self._sink(Delete(resource.kind, namespace, name))
            return
        converted = self._convert(resource.kind, raw)
        if converted is not None:
            self._sink(Upsert(converted))

    def _convert(self, kind: Kind, raw: dict[str, Any]) -> ClusterObject | None:
        try:
            return from_json(kind, raw)
        except ConversionError as err:
            # One bad object must not take its whole collection down; it is logged and
            # left out (a relist then also drops an older good copy of it).
            log.warning("skipping an object: %s", err)
            return None


def _load_configuration(kubeconfig: str | None) -> client.Configuration:
    configuration = client.Configuration()
    if kubeconfig:
        config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)  # type: ignore[no-untyped-call]
    else:
        config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    return configuration


def _describe(err: Exception) -> str:
    if isinstance(err, ApiException):
        return f"API error {err.status} {err.reason}"
    return f"{type(err).__name__}: {err}"
