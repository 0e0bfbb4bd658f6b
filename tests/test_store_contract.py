"""The `Store` contract, run against every backend: SQLite in tmp_path, a real etcd, and the
Kubernetes store on the fake API server (tests/support/fake_apiserver.py)."""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import queue
import random
import re
import signal
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from ipam6.allocator import Allocator, NodeWatch
from ipam6.plan import AddressPlan
from ipam6.store import (
    Compacted,
    Compare,
    CompareTarget,
    Delete,
    EtcdStore,
    EventType,
    Put,
    SqliteStore,
    Store,
    StoreError,
    Watch,
    WatchEvent,
)
from ipam6.store.kubernetes import KubernetesStore
from tests.support.etcd import EtcdServer, require_etcd
from tests.support.fake_apiserver import FakeApiServer
from tests.support.wait import wait_for

NAMESPACE = "srv6ctl"


@dataclass(frozen=True)
class Backend:
    """Where a store lives; picklable, so a spawned process can open its own."""

    kind: str  # "sqlite", "etcd" or "kubernetes"
    location: str  # database file, client URL, or API server URL

    def open(self, **options: Any) -> Store:
        if self.kind == "sqlite":
            return SqliteStore(self.location, **options)
        if self.kind == "kubernetes":
            return open_kubernetes(self.location, **options)
        return EtcdStore([self.location], **options)


def open_kubernetes(url: str, **options: Any) -> KubernetesStore:
    configuration = client.Configuration()
    configuration.host = url
    return KubernetesStore(NAMESPACE, configuration=configuration, **options)


@pytest.fixture
def apiserver() -> Iterator[FakeApiServer]:
    server = FakeApiServer().start()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", pytest.param("etcd", marks=pytest.mark.etcd), "kubernetes"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "sqlite":
        return Backend("sqlite", str(tmp_path / "store.db"))
    if request.param == "kubernetes":
        return Backend("kubernetes", request.getfixturevalue("apiserver").url)
    server: EtcdServer = request.getfixturevalue("etcd_server")
    return Backend("etcd", server.endpoint)


@pytest.fixture
def store(request: pytest.FixtureRequest, backend: Backend) -> Iterator[Store]:
    if backend.kind == "etcd":
        yield request.getfixturevalue("etcd_store")  # wiped key space
        return
    opened = backend.open(poll_interval=0.01) if backend.kind == "sqlite" else backend.open()
    yield opened
    opened.close()


@pytest.fixture
def watchable(backend: Backend) -> None:
    """Every store can be watched (the agents watch the node pool); kept as a marker."""


class Collector:
    """Iterates a watch in a thread, so a test can wait for events with a deadline."""

    def __init__(self, watch: Watch) -> None:
        self.watch = watch
        self._events: queue.Queue[WatchEvent | BaseException | None] = queue.Queue()
        self._backlog: list[WatchEvent | BaseException | None] = []
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for event in self.watch:
                self._events.put(event)
        except BaseException as exc:
            self._events.put(exc)
        else:
            self._events.put(None)  # iteration ended

    def _next(self, timeout: float) -> WatchEvent | BaseException | None:
        if self._backlog:
            return self._backlog.pop(0)
        return self._events.get(timeout=max(0.0, timeout))

    def take(self, count: int, timeout: float = 5.0) -> list[WatchEvent]:
        events: list[WatchEvent] = []
        deadline = time.monotonic() + timeout
        while len(events) < count:
            try:
                item = self._next(deadline - time.monotonic())
            except queue.Empty:
                pytest.fail(f"watch gave {len(events)} of {count} events in {timeout}s: {events}")
            if isinstance(item, BaseException):
                raise item
            if item is None:
                pytest.fail(f"watch ended after {len(events)} of {count} events: {events}")
            events.append(item)
        return events

    def quiet(self, wait: float = 0.3) -> bool:
        """True when nothing more arrives within `wait` seconds."""
        try:
            self._backlog.append(self._next(wait))
        except queue.Empty:
            return True
        return False

    def stop(self, timeout: float = 2.0) -> float:
        """Cancel the watch; return how long iteration took to end (cleanly, or it raises)."""
        started = time.monotonic()
        self.watch.cancel()
        self._thread.join(timeout)
        elapsed = time.monotonic() - started
        assert not self._thread.is_alive(), f"watch iteration still running {timeout}s after cancel"
        while True:
            try:
                item = self._next(0)
            except queue.Empty:
                return elapsed
            if isinstance(item, BaseException):
                raise item


def summary(events: list[WatchEvent]) -> list[tuple[EventType, str, bytes, int]]:
    return [(event.type, event.key, event.value, event.revision) for event in events]


# --- get / put / delete and revisions ---------------------------------------------------


def test_get_put_delete_follow_etcd_revisions(store: Store) -> None:
    start = store.revision()
    assert store.get("/nodes/a") is None

    created = store.put("/nodes/a", b"one")
    assert created > start
    kv = store.get("/nodes/a")
    assert kv is not None
    assert (kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version) == (
        "/nodes/a",
        b"one",
        created,
        created,
        1,
    )

    modified = store.put("/nodes/a", b"two")
    assert modified == created + 1
    kv = store.get("/nodes/a")
    assert kv is not None
    assert (kv.value, kv.create_revision, kv.mod_revision, kv.version) == (
        b"two",
        created,
        modified,
        2,
    )

    assert store.delete("/nodes/a") is True
    deleted_at = store.revision()
    assert deleted_at == modified + 1
    assert store.get("/nodes/a") is None
    # Deleting what is not there changes nothing, not even the revision.
    assert store.delete("/nodes/a") is False
    assert store.revision() == deleted_at

    recreated = store.put("/nodes/a", b"three")
    kv = store.get("/nodes/a")
    assert kv is not None
    assert (kv.create_revision, kv.mod_revision, kv.version) == (recreated, recreated, 1)


def test_values_are_bytes_and_keys_utf8(store: Store) -> None:
    store.put("/empty", b"")
    store.put("/pods/ünïcode→pod", b"\x00\xff\xfe")
    empty = store.get("/empty")
    assert empty is not None
    assert empty.value == b""
    assert empty.version == 1
    odd = store.get("/pods/ünïcode→pod")
    assert odd is not None
    assert odd.value == b"\x00\xff\xfe"
    assert [kv.key for kv in store.list("/pods/").items] == ["/pods/ünïcode→pod"]


def test_revision_is_store_wide_and_reads_do_not_bump_it(store: Store) -> None:
    first = store.put("/a", b"1")
    second = store.put("/b", b"1")
    assert second == first + 1
    store.get("/a")
    store.list("/")
    assert store.revision() == second
    # All changes of one transaction share one revision.
    result = store.txn([], [Put("/a", b"2"), Put("/b", b"2"), Delete("/missing")])
    assert result.succeeded
    assert result.revision == second + 1 == store.revision()
    a, b = store.get("/a"), store.get("/b")
    assert a is not None and b is not None
    assert a.mod_revision == b.mod_revision == result.revision


# --- transactions -----------------------------------------------------------------------


def test_txn_applies_success_branch_when_compares_hold(store: Store) -> None:
    result = store.txn([Compare.absent("/ids/1")], [Put("/ids/1", b"node-a")], [Put("/x", b"f")])
    assert result.succeeded
    assert result.revision == store.revision()
    kv = store.get("/ids/1")
    assert kv is not None and kv.value == b"node-a"
    assert store.get("/x") is None


def test_txn_applies_failure_branch_when_a_compare_fails(store: Store) -> None:
    store.put("/ids/1", b"node-a")
    before = store.revision()
    result = store.txn(
        [Compare.absent("/ids/1")], [Put("/ids/1", b"node-b")], [Put("/lost/node-b", b"1")]
    )
    assert not result.succeeded
    assert result.revision == before + 1  # the failure branch wrote
    kv = store.get("/ids/1")
    assert kv is not None and kv.value == b"node-a"
    assert store.get("/lost/node-b") is not None

    # A failed txn without failure ops changes nothing.
    result = store.txn([Compare.absent("/ids/1")], [Put("/ids/1", b"node-b")])
    assert not result.succeeded
    assert result.revision == before + 1 == store.revision()


def test_multi_key_cas_with_absent_guards(store: Store) -> None:
    claim = [Put("/ids/7", b"node-a"), Put("/nodes/node-a", b"7")]
    guards = [Compare.absent("/ids/7"), Compare.absent("/nodes/node-a")]
    assert store.txn(guards, claim).succeeded
    # One guard failing is enough to apply nothing.
    assert not store.txn(
        [Compare.absent("/ids/8"), Compare.absent("/nodes/node-a")],
        [Put("/ids/8", b"node-a"), Put("/nodes/node-a", b"8")],
    ).succeeded
    assert store.get("/ids/8") is None
    node = store.get("/nodes/node-a")
    assert node is not None and node.value == b"7"


def test_multi_key_cas_with_mod_revision_guards(store: Store) -> None:
    store.put("/pool/free", b"10")
    store.put("/pool/used", b"0")
    free, used = store.get("/pool/free"), store.get("/pool/used")
    assert free is not None and used is not None
    guards = [
        Compare.mod_revision("/pool/free", free.mod_revision),
        Compare.mod_revision("/pool/used", used.mod_revision),
    ]
    assert store.txn(guards, [Put("/pool/free", b"9"), Put("/pool/used", b"1")]).succeeded
    # The same guards are stale now: a second writer with the old view must lose.
    assert not store.txn(guards, [Put("/pool/free", b"8"), Put("/pool/used", b"2")]).succeeded
    free = store.get("/pool/free")
    assert free is not None and free.value == b"9"
    # mod_revision 0 means "absent" and create_revision of an existing key is exact.
    assert store.txn([Compare.mod_revision("/pool/none", 0)], []).succeeded
    exact_create = Compare("/pool/free", CompareTarget.CREATE_REVISION, free.create_revision)
    assert store.txn([exact_create], []).succeeded
    assert not store.txn([Compare.absent("/pool/free")], []).succeeded


def test_value_guards(store: Store) -> None:
    store.put("/owner", b"agent-1")
    assert store.txn([Compare.value("/owner", b"agent-1")], [Put("/owner", b"agent-2")]).succeeded
    assert not store.txn([Compare.value("/owner", b"agent-1")], [Put("/owner", b"x")]).succeeded
    owner = store.get("/owner")
    assert owner is not None and owner.value == b"agent-2"
    # As in etcd: comparing the value of a missing key is false, even against b"".
    assert not store.txn([Compare.value("/nobody", b"")], []).succeeded
    assert not store.txn([Compare.value("/nobody", b"x")], []).succeeded


def test_txn_refuses_a_key_twice_in_one_branch(store: Store) -> None:
    with pytest.raises(ValueError, match="more than once"):
        store.txn([], [Put("/k", b"1"), Delete("/k")])
    assert store.get("/k") is None


# --- listing ----------------------------------------------------------------------------


def test_list_by_prefix_is_sorted_and_consistent(store: Store) -> None:
    for key in ["/x/2", "/x/10", "/x/1", "/x0", "/x", "/y/1", "/x/1/a", "/x/10/a"]:
        store.put(key, key.encode())
    listing = store.list("/x/")
    assert [kv.key for kv in listing.items] == ["/x/1", "/x/1/a", "/x/10", "/x/10/a", "/x/2"]
    assert [kv.value for kv in listing.items] == [kv.key.encode() for kv in listing.items]
    assert listing.revision == store.revision()
    assert all(kv.mod_revision <= listing.revision for kv in listing.items)
    # A prefix is bytes, not path segments: "/x/1/" excludes "/x/10/a", "/x/1" does not.
    assert [kv.key for kv in store.list("/x/1/").items] == ["/x/1/a"]
    assert [kv.key for kv in store.list("/x/1").items] == ["/x/1", "/x/1/a", "/x/10", "/x/10/a"]
    assert store.list("/z/").items == []
    assert len(store.list("").items) == 8


def test_list_keys_only_keeps_revisions(store: Store) -> None:
    put_at = store.put("/svc/a", b"payload")
    (kv,) = store.list("/svc/", keys_only=True).items
    assert (kv.key, kv.value, kv.mod_revision, kv.version) == ("/svc/a", b"", put_at, 1)


# --- watch ------------------------------------------------------------------------------


@pytest.mark.usefixtures("watchable")
def test_watch_replays_history_from_start_revision_then_follows(store: Store) -> None:
    first = store.put("/w/a", b"1")
    store.put("/other/a", b"not watched")
    store.put("/w/b", b"2")
    store.delete("/w/a")
    collector = Collector(store.watch("/w/", first))
    try:
        replayed = collector.take(3)
        assert summary(replayed) == [
            (EventType.PUT, "/w/a", b"1", first),
            (EventType.PUT, "/w/b", b"2", first + 2),
            (EventType.DELETE, "/w/a", b"", first + 3),
        ]
        later = store.txn([], [Put("/w/c", b"3"), Delete("/w/b")]).revision
        store.put("/w0", b"outside the prefix")
        store.put("/w/a", b"4")
        # Events of one transaction share its revision and keep the order of its ops.
        assert summary(collector.take(3)) == [
            (EventType.PUT, "/w/c", b"3", later),
            (EventType.DELETE, "/w/b", b"", later),
            (EventType.PUT, "/w/a", b"4", later + 2),
        ]
        assert collector.quiet()
    finally:
        collector.stop()


@pytest.mark.usefixtures("watchable")
def test_watch_from_listing_revision_sees_only_newer_changes(store: Store) -> None:
    store.put("/nodes/1", b"old")
    listing = store.list("/nodes/")
    collector = Collector(store.watch("/nodes/", listing.revision + 1))
    try:
        assert collector.quiet()
        changed = store.put("/nodes/1", b"new")
        assert summary(collector.take(1)) == [(EventType.PUT, "/nodes/1", b"new", changed)]
    finally:
        collector.stop()


@pytest.mark.usefixtures("watchable")
def test_watch_prefix_boundary(store: Store) -> None:
    start = store.revision() + 1
    store.put("/x/10/a", b"sibling")
    inside = store.put("/x/1/a", b"mine")
    collector = Collector(store.watch("/x/1/", start))
    try:
        assert summary(collector.take(1)) == [(EventType.PUT, "/x/1/a", b"mine", inside)]
        assert collector.quiet()
    finally:
        collector.stop()


@pytest.mark.usefixtures("watchable")
def test_watch_cancel_stops_a_blocked_iteration_promptly(store: Store) -> None:
    collector = Collector(store.watch("/idle/", store.revision() + 1))
    assert collector.quiet(0.2)
    assert collector.stop() < 1.0


@pytest.mark.usefixtures("watchable")
def test_watch_cancel_after_events(store: Store) -> None:
    start = store.put("/busy/a", b"1")
    collector = Collector(store.watch("/busy/", start))
    collector.take(1)
    assert collector.stop() < 1.0


@pytest.mark.usefixtures("watchable")
def test_watch_of_compacted_history_raises_compacted(
    request: pytest.FixtureRequest, backend: Backend
) -> None:
    if backend.kind == "sqlite":
        store = backend.open(history=4, poll_interval=0.01)
    elif backend.kind == "kubernetes":
        store = backend.open()
    else:
        store = request.getfixturevalue("etcd_store")
    try:
        revisions = [store.put(f"/c/{n}", str(n).encode()) for n in range(10)]
        if backend.kind == "etcd":
            request.getfixturevalue("etcd_server").compact(revisions[6])
        if backend.kind == "kubernetes":
            # A watch from S reads the shard at S - 1 first: that revision must still be kept.
            request.getfixturevalue("apiserver").compact(revisions[5])
        # SQLite keeps the last 4 events, so history starts at the 7th put on both.
        collector = Collector(store.watch("/c/", revisions[6]))
        try:
            assert [event.key for event in collector.take(4)] == [f"/c/{n}" for n in range(6, 10)]
        finally:
            collector.stop()

        with pytest.raises(Compacted) as compacted:
            collector = Collector(store.watch("/c/", revisions[0]))
            try:
                collector.take(1)
            finally:
                collector.stop()
        assert compacted.value.requested == revisions[0]
        # kube-apiserver does not say how old its oldest list can be (0: unknown).
        oldest = 0 if backend.kind == "kubernetes" else revisions[6]
        assert compacted.value.compact_revision == oldest
        assert isinstance(compacted.value, StoreError)  # a relist is a retry
    finally:
        store.close()


# --- the agents' watch of the node pool ---------------------------------------------------


def test_a_node_claim_reaches_every_node_watch_within_a_second(backend: Backend) -> None:
    """A node's claim is a store write no cluster object shows: each agent watches the
    node pool so that a joining node's ID reaches it at once, not at its next resync."""
    plan = AddressPlan.from_mapping({"podCIDRv6": "fd00:10::/48"})
    opened = [backend.open(poll_interval=0.01) if backend.kind == "sqlite" else backend.open()]
    opened += [backend.open() for _ in range(2)]
    allocators = [Allocator(store, plan, prefix="/nw/") for store in opened]
    seen: list[queue.Queue[float]] = [queue.Queue(), queue.Queue()]
    watches = [
        NodeWatch(a, lambda q=q: q.put(time.monotonic()))
        for a, q in zip(allocators[:2], seen, strict=True)
    ]
    try:
        for watch in watches:
            watch.start()
        for calls in seen:
            calls.get(timeout=5)  # the first list
        time.sleep(0.3)  # both watching
        for node in ("node-a", "node-b"):
            claimed = time.monotonic()
            allocators[2].claim_node(node)
            for calls in seen:
                assert calls.get(timeout=5) - claimed < 1.0
                while not calls.empty():
                    calls.get()
            assert allocators[0].nodes() == allocators[1].nodes()
        assert set(allocators[0].nodes()) == {"node-a", "node-b"}
        allocators[2].release_node("node-a")
        for calls in seen:
            calls.get(timeout=1.0)
    finally:
        for watch in watches:
            watch.stop()
        for store in opened:
            store.close()


# --- several processes ------------------------------------------------------------------

INCREMENTS = 50
PROCESSES = 8


def increment(backend: Backend, key: str, times: int) -> None:
    """Add 1 to a counter `times` times through a compare-and-swap retry loop."""
    store = backend.open()
    try:
        done = 0
        while done < times:
            current = store.get(key)
            if current is None:
                result = store.txn([Compare.absent(key)], [Put(key, b"1")])
            else:
                value = str(int(current.value) + 1).encode()
                result = store.txn(
                    [Compare.mod_revision(key, current.mod_revision)], [Put(key, value)]
                )
            done += result.succeeded
    finally:
        store.close()


@pytest.mark.slow
def test_cas_counter_across_processes(backend: Backend, store: Store) -> None:
    context = multiprocessing.get_context("spawn")
    workers = [
        context.Process(target=increment, args=(backend, "/counter", INCREMENTS))
        for _ in range(PROCESSES)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert [worker.exitcode for worker in workers] == [0] * PROCESSES
    counter = store.get("/counter")
    assert counter is not None
    assert counter.value == str(PROCESSES * INCREMENTS).encode()
    assert counter.version == PROCESSES * INCREMENTS  # every increment was one write


# --- SQLite only ------------------------------------------------------------------------


def test_sqlite_data_and_history_survive_reopening(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    store = SqliteStore(path)
    first = store.put("/nodes/a", b"1")
    store.txn([Compare.absent("/nodes/b")], [Put("/nodes/b", b"2")])
    revision = store.revision()
    store.close()

    store = SqliteStore(path, poll_interval=0.01)
    try:
        assert store.revision() == revision
        listing = store.list("/nodes/")
        assert [(kv.key, kv.value) for kv in listing.items] == [
            ("/nodes/a", b"1"),
            ("/nodes/b", b"2"),
        ]
        assert store.put("/nodes/c", b"3") == revision + 1
        collector = Collector(store.watch("/nodes/", first))
        try:
            assert [event.key for event in collector.take(3)] == [
                "/nodes/a",
                "/nodes/b",
                "/nodes/c",
            ]
        finally:
            collector.stop()
    finally:
        store.close()


def test_sqlite_store_is_shared_by_threads(tmp_path: Path) -> None:
    backend = Backend("sqlite", str(tmp_path / "store.db"))
    store = backend.open()
    threads = [threading.Thread(target=increment, args=(backend, "/counter", 25)) for _ in range(4)]
    # Also one store object shared by threads: its connection is guarded by a lock.
    shared = [
        threading.Thread(target=_increment_shared, args=(store, "/shared", 25)) for _ in range(4)
    ]
    for thread in threads + shared:
        thread.start()
    for thread in threads + shared:
        thread.join(30)
    counter, shared_counter = store.get("/counter"), store.get("/shared")
    assert counter is not None and counter.value == b"100"
    assert shared_counter is not None and shared_counter.value == b"100"
    store.close()


def _increment_shared(store: Store, key: str, times: int) -> None:
    done = 0
    while done < times:
        current = store.get(key)
        expected = 0 if current is None else current.mod_revision
        value = b"1" if current is None else str(int(current.value) + 1).encode()
        done += store.txn([Compare.mod_revision(key, expected)], [Put(key, value)]).succeeded


def transfer_forever(path: str, committed: ctypes.c_longlong) -> None:
    """Move 1 from /bank/a to /bank/b per txn until killed; publish each committed revision."""
    store = SqliteStore(path)
    while True:
        a, b = store.get("/bank/a"), store.get("/bank/b")
        assert a is not None and b is not None
        result = store.txn(
            [
                Compare.mod_revision("/bank/a", a.mod_revision),
                Compare.mod_revision("/bank/b", b.mod_revision),
            ],
            [
                Put("/bank/a", str(int(a.value) - 1).encode()),
                Put("/bank/b", str(int(b.value) + 1).encode()),
            ],
        )
        if result.succeeded:
            committed.value = result.revision


@pytest.mark.slow
def test_sqlite_survives_sigkill_during_transactions(tmp_path: Path) -> None:
    path = str(tmp_path / "store.db")
    store = SqliteStore(path)
    store.txn([], [Put("/bank/a", b"1000000"), Put("/bank/b", b"0")])
    store.close()
    context = multiprocessing.get_context("spawn")
    for _ in range(3):
        committed = context.Value("q", 0, lock=False)
        worker = context.Process(target=transfer_forever, args=(path, committed))
        worker.start()
        wait_for(
            lambda: committed.value > 0 or not worker.is_alive(),  # noqa: B023 - polled at once
            20,
            "the worker's first commit",
        )
        assert committed.value > 0, "the worker never committed"
        time.sleep(random.uniform(0.05, 0.25))
        assert worker.pid is not None
        os.kill(worker.pid, signal.SIGKILL)
        worker.join(5)
        assert worker.exitcode == -signal.SIGKILL

        with sqlite3.connect(path) as raw:
            assert raw.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        store = SqliteStore(path)
        try:
            a, b = store.get("/bank/a"), store.get("/bank/b")
            assert a is not None and b is not None
            assert int(a.value) + int(b.value) == 1000000  # no half transaction
            assert a.mod_revision == b.mod_revision
            # Nothing the worker saw committed was lost.
            assert store.revision() >= committed.value
            assert store.put("/after-kill", b"writable") == store.revision()
        finally:
            store.close()


# --- etcd only --------------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_etcd_closed_port_raises_store_error_quickly() -> None:
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    store = EtcdStore([endpoint], timeout=1.0)
    started = time.monotonic()
    with pytest.raises(StoreError, match=endpoint):
        store.get("/anything")
    with pytest.raises(StoreError, match=endpoint):
        store.watch("/anything", 0)
    assert time.monotonic() - started < 3.0


def test_etcd_silent_server_times_out_instead_of_hanging() -> None:
    # The kernel accepts the connection, nobody ever answers: only `timeout` can end it.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        endpoint = f"http://127.0.0.1:{silent.getsockname()[1]}"
        store = EtcdStore([endpoint], timeout=0.5)
        started = time.monotonic()
        with pytest.raises(StoreError, match=endpoint):
            store.put("/anything", b"x")
        assert time.monotonic() - started < 3.0


@pytest.mark.etcd
def test_etcd_fails_over_to_the_next_endpoint(etcd_server: EtcdServer) -> None:
    etcd_server.wipe()
    dead = f"http://127.0.0.1:{_closed_port()}"
    store = EtcdStore([dead, etcd_server.endpoint], timeout=1.0)
    try:
        revision = store.put("/failover", b"ok")
        kv = store.get("/failover")
        assert kv is not None and kv.mod_revision == revision
    finally:
        store.close()


def test_etcd_tls_options_reach_the_http_session() -> None:
    store = EtcdStore(
        ["https://etcd-1.example:2379", "https://[fd00::1]:2379"],
        ca_file="/etc/etcd/ca.crt",
        cert_file="/etc/etcd/client.crt",
        key_file="/etc/etcd/client.key",
    )
    for session in (store._session, store._new_session()):
        assert session.verify == "/etc/etcd/ca.crt"
        assert session.cert == ("/etc/etcd/client.crt", "/etc/etcd/client.key")
    assert [client.base_url for client in store._clients] == [
        "https://etcd-1.example:2379",
        "https://[fd00::1]:2379",
    ]
    with pytest.raises(ValueError, match="username and password"):
        EtcdStore(username="root")


@pytest.mark.etcd
@pytest.mark.slow
def test_etcd_username_password_authentication() -> None:
    require_etcd()
    # Auth cannot be turned off again cheaply: use a server of its own.
    with EtcdServer() as server:
        server.enable_auth("secret")
        store = EtcdStore([server.endpoint], username="root", password="secret")
        try:
            revision = store.put("/authed", b"yes")
            collector = Collector(store.watch("/authed", revision))
            try:
                assert summary(collector.take(1)) == [(EventType.PUT, "/authed", b"yes", revision)]
            finally:
                collector.stop()
            # An expired or revoked token is replaced transparently.
            store._token = "stale.1"
            assert store.get("/authed") is not None
        finally:
            store.close()
        with pytest.raises(StoreError, match="authenticate"):
            EtcdStore([server.endpoint], username="root", password="wrong").get("/authed")
        with pytest.raises(StoreError, match="HTTP"):
            EtcdStore([server.endpoint]).get("/authed")


# --- Kubernetes only --------------------------------------------------------------------


def _shards(server: FakeApiServer) -> dict[str, dict[str, Any]]:
    """The store's ConfigMaps on the fake server, by the shard path they hold."""
    objects = server._objects["configmaps"]
    return {
        obj["metadata"]["annotations"]["srv6ctl.io/ipam-shard"]: obj
        for (namespace, _), obj in objects.items()
        if namespace == NAMESPACE
    }


def _replace(server: FakeApiServer, obj: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """PUT a ConfigMap as any client would; (HTTP status, body)."""
    import json
    import urllib.error
    import urllib.request

    meta = obj["metadata"]
    request = urllib.request.Request(
        f"{server.url}/api/v1/namespaces/{meta['namespace']}/configmaps/{meta['name']}",
        data=json.dumps(obj).encode(),
        method="PUT",
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_kubernetes_pools_are_shards_each_one_labelled_config_map(apiserver: FakeApiServer) -> None:
    store = open_kubernetes(apiserver.url)
    try:
        claim = [
            Put("/srv6ctl/ipam/pods/node-a/by-index/7", b'{"owner":"c1/eth0"}'),
            Put("/srv6ctl/ipam/pods/node-a/by-owner/c1/eth0", b'{"index":7}'),
        ]
        assert store.txn([Compare.absent(op.key) for op in claim], claim).succeeded
        store.put("/srv6ctl/ipam/nodes/by-owner/node-a", b'{"index":1}')
        store.put("/srv6ctl/ipam/pods/node-b/by-index/3", b'{"owner":"c2/eth0"}')
        shards = _shards(apiserver)
        assert set(shards) == {
            "/srv6ctl/ipam/pods/node-a/",
            "/srv6ctl/ipam/pods/node-b/",
            "/srv6ctl/ipam/nodes/",
        }
        for shard, obj in shards.items():
            assert obj["metadata"]["labels"]["srv6ctl.io/ipam"] == "true"
            assert obj["metadata"]["name"] == store.shard_name(shard)
            assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", obj["metadata"]["name"])
        # A list by pool prefix reads one ConfigMap; a wider prefix lists them all.
        assert [kv.key for kv in store.list("/srv6ctl/ipam/pods/node-a/by-owner/").items] == [
            "/srv6ctl/ipam/pods/node-a/by-owner/c1/eth0"
        ]
        assert [kv.key for kv in store.list("/srv6ctl/ipam/pods/").items] == [
            "/srv6ctl/ipam/pods/node-a/by-index/7",
            "/srv6ctl/ipam/pods/node-a/by-owner/c1/eth0",
            "/srv6ctl/ipam/pods/node-b/by-index/3",
        ]
        # Other ConfigMaps of the namespace are none of the store's business.
        apiserver.apply(
            {"kind": "ConfigMap", "metadata": {"name": "srv6ctl-config", "namespace": NAMESPACE}}
        )
        assert len(store.list("").items) == 4
    finally:
        store.close()


def test_kubernetes_txn_across_two_pools_is_refused(apiserver: FakeApiServer) -> None:
    store = open_kubernetes(apiserver.url)
    try:
        with pytest.raises(ValueError, match="one shard"):
            store.txn(
                [Compare.absent("/p/nodes/by-index/1")],
                [Put("/p/nodes/by-index/1", b"a"), Put("/p/services/by-index/1", b"a")],
            )
        assert store.list("").items == []
    finally:
        store.close()


def test_kubernetes_revisions_are_cluster_wide_across_shards(apiserver: FakeApiServer) -> None:
    # What Allocator.gc(created_before=...) relies on: a key created after revision()
    # returned has a larger create revision, whichever ConfigMap holds it.
    store = open_kubernetes(apiserver.url)
    try:
        first = store.put("/p/a/by-index/1", b"1")
        before = store.revision()
        later = store.put("/p/b/by-index/1", b"1")
        kv = store.get("/p/b/by-index/1")
        assert kv is not None and kv.create_revision == later > before >= first
        # The first key's revision survives later writes of its shard (it was stored as
        # "this ConfigMap's resourceVersion" until the next write pinned it).
        store.put("/p/a/by-index/2", b"2")
        old = store.get("/p/a/by-index/1")
        assert old is not None and (old.create_revision, old.mod_revision) == (first, first)
        # Someone else writing the ConfigMap (kubectl annotate) only makes keys look younger.
        obj = _shards(apiserver)["/p/a/"]
        obj["metadata"]["annotations"]["note"] = "hand edit"
        assert _replace(apiserver, obj)[0] == 200
        assert store.get("/p/a/by-index/1") == old
    finally:
        store.close()


def test_the_fake_api_server_answers_like_kube_apiserver(apiserver: FakeApiServer) -> None:
    store = open_kubernetes(apiserver.url)
    try:
        store.put("/p/x/by-index/1", b"1")
        obj = _shards(apiserver)["/p/x/"]
        stale = {**obj, "metadata": {**obj["metadata"], "resourceVersion": "1"}}
        code, body = _replace(apiserver, stale)
        assert code == 409
        name = obj["metadata"]["name"]
        assert body == {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": f'Operation cannot be fulfilled on configmaps "{name}": the object has '
            "been modified; please apply your changes to the latest version and try again",
            "reason": "Conflict",
            "details": {"name": name, "kind": "configmaps"},
            "code": 409,
        }
        # An update that changes nothing keeps the resourceVersion, as the registry does.
        code, same = _replace(apiserver, obj)
        assert code == 200
        assert same["metadata"]["resourceVersion"] == obj["metadata"]["resourceVersion"]
        gone = {**obj, "metadata": {**obj["metadata"], "name": "srv6ctl-ipam-nothere"}}
        code, body = _replace(apiserver, gone)
        assert (code, body["reason"], body["details"]) == (
            404,
            "NotFound",
            {"name": "srv6ctl-ipam-nothere", "kind": "configmaps"},
        )
        too_big = {**obj, "data": {"keys": "x" * (1024 * 1024)}}
        code, body = _replace(apiserver, too_big)
        assert (code, body["reason"]) == (422, "Invalid")
        assert "must have at most 1048576 bytes" in body["message"]
    finally:
        store.close()


def test_kubernetes_conflicts_are_read_again_and_decided_again(
    apiserver: FakeApiServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A rival writes the shard between our read and our replace: ours gets a real 409
    # Conflict, reads again and evaluates its compares against what the rival wrote.
    first, second = open_kubernetes(apiserver.url), open_kubernetes(apiserver.url)
    try:
        first.put("/p/n/by-index/0", b"seed")
        writes: list[str] = []
        original = first._write

        def write_after_a_rival(*args: Any) -> int | None:
            rival = {0: "/p/n/by-index/1", 2: "/p/n/by-index/2"}.get(len(writes))
            if rival is not None:
                second.put(rival, b"rival")
            written = original(*args)
            writes.append("conflict" if written is None else "written")
            return written

        monkeypatch.setattr(first, "_write", write_after_a_rival)
        # The rival took another key: after the Conflict our guard still holds, both land.
        result = first.txn([Compare.absent("/p/n/by-index/3")], [Put("/p/n/by-index/3", b"me")])
        assert result.succeeded
        assert writes == ["conflict", "written"]
        assert [kv.key for kv in first.list("/p/n/by-index/").items] == [
            "/p/n/by-index/0",
            "/p/n/by-index/1",
            "/p/n/by-index/3",
        ]
        # The rival took our key: after the Conflict our guard fails, nothing of ours lands.
        result = first.txn([Compare.absent("/p/n/by-index/2")], [Put("/p/n/by-index/2", b"me")])
        assert not result.succeeded
        assert writes == ["conflict", "written", "conflict"]
        kv = first.get("/p/n/by-index/2")
        assert kv is not None and kv.value == b"rival"
    finally:
        first.close()
        second.close()


def test_kubernetes_store_errors_are_store_errors_never_hangs(apiserver: FakeApiServer) -> None:
    store = open_kubernetes(apiserver.url, timeout=1.0)
    try:
        apiserver.fail_next("configmaps", 1, 503)
        with pytest.raises(StoreError, match="HTTP 503"):
            store.put("/p/n/by-index/1", b"x")
        apiserver.fail_next("configmaps", 1, 403)
        with pytest.raises(StoreError, match="RBAC"):
            store.get("/p/n/by-index/1")
        assert store.put("/p/n/by-index/1", b"x") > 0  # the server is fine again

        apiserver.stop()
        started = time.monotonic()
        for call in (
            lambda: store.get("/p/n/by-index/1"),
            lambda: store.put("/p/n/by-index/1", b"y"),
            lambda: store.list("/p/"),
            store.revision,
            lambda: next(iter(store.watch("/p/", 0))),
        ):
            with pytest.raises(StoreError, match=apiserver.url):
                call()
        assert time.monotonic() - started < 5.0
    finally:
        store.close()


def test_kubernetes_silent_api_server_times_out_instead_of_hanging() -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        store = open_kubernetes(f"http://127.0.0.1:{silent.getsockname()[1]}", timeout=0.5)
        started = time.monotonic()
        with pytest.raises(StoreError, match="Timeout"):
            store.put("/anything", b"x")
        assert time.monotonic() - started < 3.0
        store.close()


def test_store_config_opens_the_kubernetes_store_from_a_kubeconfig(
    apiserver: FakeApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pydantic import ValidationError

    from ipam6.store import kubernetes as kubernetes_store
    from ipam6.store.config import StoreConfig, open_store

    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        f"""apiVersion: v1
kind: Config
clusters: [{{name: fake, cluster: {{server: "{apiserver.url}"}}}}]
users: [{{name: agent, user: {{token: not-checked}}}}]
contexts: [{{name: fake, context: {{cluster: fake, user: agent}}}}]
current-context: fake
"""
    )
    config = StoreConfig.model_validate(
        {
            "type": "kubernetes",
            "kubernetes": {"namespace": "kube-network", "kubeconfig": str(kubeconfig)},
        }
    )
    store = open_store(config)
    try:
        assert isinstance(store, KubernetesStore) and store.namespace == "kube-network"
        store.put("/srv6ctl/ipam/nodes/by-owner/node-a", b"{}")
        assert {ns for ns, _ in apiserver._objects["configmaps"]} == {"kube-network"}
    finally:
        store.close()
    # The agent's --kubeconfig serves the store too when the store names none (issue #15:
    # `srv6ctl agent --kubeconfig FILE` alone died looking for an in-cluster config).
    store = open_store(
        StoreConfig.model_validate({"type": "kubernetes", "kubernetes": {"namespace": "by-flag"}}),
        kubeconfig=str(kubeconfig),
    )
    try:
        store.put("/srv6ctl/ipam/nodes/by-owner/node-b", b"{}")
        assert "by-flag" in {ns for ns, _ in apiserver._objects["configmaps"]}
    finally:
        store.close()
    # No namespace given: the pod's own (from its service account), else "srv6ctl".
    account = tmp_path / "serviceaccount-namespace"
    monkeypatch.setattr(kubernetes_store, "SERVICE_ACCOUNT_NAMESPACE", account)
    unnamed = StoreConfig.model_validate(
        {"type": "kubernetes", "kubernetes": {"kubeconfig": str(kubeconfig)}}
    )
    for content, expected in ((None, "srv6ctl"), ("networking\n", "networking")):
        if content is not None:
            account.write_text(content)
        default = open_store(unnamed)
        assert isinstance(default, KubernetesStore) and default.namespace == expected
        default.close()
    assert StoreConfig().type == "embedded"
    with pytest.raises(ValidationError, match=r"kubernetes\.namespace\n.*DNS label"):
        StoreConfig.model_validate({"type": "kubernetes", "kubernetes": {"namespace": "Bad_NS"}})
    with pytest.raises(ValidationError, match=r"kubernetes\.timeoutSeconds"):
        StoreConfig.model_validate({"kubernetes": {"timeoutSeconds": 0}})
    with pytest.raises(StoreError, match="client configuration"):
        open_store(
            StoreConfig.model_validate(
                {"type": "kubernetes", "kubernetes": {"kubeconfig": str(tmp_path / "missing")}}
            )
        )
