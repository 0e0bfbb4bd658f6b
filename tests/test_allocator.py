"""Allocation on every store (SQLite, a real etcd, the Kubernetes store on the fake API
server): keyed, idempotent, crash-safe, never a duplicate."""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import time
import uuid
import zlib
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from ipam6.allocator import SERVICE_PARTITIONS, Allocator
from ipam6.plan import AddressPlan, PoolExhausted
from ipam6.store.base import Store
from tests.support import ipam_workers
from tests.support.fake_apiserver import FakeApiServer
from tests.support.ipam_workers import StoreSpec

PLAN: dict[str, Any] = {
    "podCIDRv6": "fd00:10::/48",
    "podCIDRv4": "10.128.0.0/14",
    "serviceCIDRv6": "fd00:96::/108",
    "serviceCIDRv4": "10.96.0.0/16",
}
# Pools too large to fill while workers allocate without pause (v4 allows 253 pods a node).
V6_PLAN: dict[str, Any] = {k: v for k, v in PLAN.items() if not k.endswith("v4")}
# A pool small enough to exhaust: a /28 per node leaves indexes 2..14 (13 pods).
SMALL_PLAN: dict[str, Any] = {**PLAN, "nodePrefixLengthV4": 28, "maxNodes": 100}


@pytest.fixture
def apiserver() -> Iterator[FakeApiServer]:
    server = FakeApiServer().start()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "etcd", "kubernetes"])
def spec(request: pytest.FixtureRequest, tmp_path: Path) -> StoreSpec:
    if request.param == "sqlite":
        return ("sqlite", str(tmp_path / "ipam.db"))
    if request.param == "kubernetes":
        return ("kubernetes", request.getfixturevalue("apiserver").url)
    server = request.getfixturevalue("etcd_server")
    return ("etcd", server.endpoint)


@pytest.fixture
def prefix() -> str:
    # Each test gets its own key space, so tests sharing one etcd never see each other.
    return f"/test-{uuid.uuid4().hex[:12]}/ipam/"


@pytest.fixture
def store(spec: StoreSpec) -> Iterator[Store]:
    opened = ipam_workers.open_spec(spec)
    yield opened
    opened.close()


def make(store: Store, prefix: str, plan: dict[str, Any] = PLAN) -> Allocator:
    return Allocator(store, AddressPlan.from_mapping(plan), prefix=prefix)


def test_same_key_same_answer_and_restart_keeps_everything(
    store: Store, spec: StoreSpec, prefix: str
) -> None:
    ipam = make(store, prefix)
    assert ipam.claim_node("node-a") == 1
    assert ipam.claim_node("node-b") == 2
    assert ipam.claim_node("node-a") == 1
    first = ipam.allocate_pod(
        "node-a", "ctr1", "eth0", pod="default/web", uid="u1", netns="/var/run/netns/web"
    )
    assert ipam.allocate_pod("node-a", "ctr1", "eth0") == first
    second_if = ipam.allocate_pod("node-a", "ctr1", "net1")
    assert second_if.addresses.index != first.addresses.index
    service = ipam.allocate_service("svc-uid", "default/web")
    assert ipam.allocate_service("svc-uid") == service

    # A restarted agent: a new connection and a new allocator see exactly the same.
    again = make(ipam_workers.open_spec(spec), prefix)
    assert again.claim_node("node-a") == 1
    assert again.nodes() == {"node-a": 1, "node-b": 2}
    assert again.allocate_pod("node-a", "ctr1", "eth0").addresses == first.addresses
    assert again.pod("node-a", "ctr1", "eth0") == first
    assert first.netns == "/var/run/netns/web" and first.pod == "default/web"
    assert again.allocate_service("svc-uid").bsid_v6 == service.bsid_v6
    assert first.addresses == again.plan.pod(1, first.addresses.index)
    again.store.close()


def test_many_services_at_a_start_cost_a_listing_per_partition_not_a_lookup_each(
    store: Store, prefix: str
) -> None:
    ipam = make(store, prefix)
    first = {f"uid-{i}": ipam.allocate_service(f"uid-{i}", f"default/s{i}") for i in range(40)}
    ops: list[str] = []
    restarted = Allocator(
        store, AddressPlan.from_mapping(PLAN), prefix=prefix, on_store_op=ops.append
    )
    wanted = {uid: f"default/s{i}" for i, uid in enumerate(first)}
    assert restarted.allocate_services(wanted) == first
    assert ops == ["list"] * SERVICE_PARTITIONS  # however many services there are
    # One new service among them: the listing, then its claim alone.
    ops.clear()
    got = restarted.allocate_services({**wanted, "uid-new": "default/new"})
    assert {uid: got[uid] for uid in first} == first
    assert got["uid-new"] == restarted.allocate_service("uid-new")
    assert got["uid-new"].index not in {a.index for a in first.values()}
    assert ops.count("list") == SERVICE_PARTITIONS and ops.count("txn") == 1


def test_services_are_spread_over_partitions_each_with_its_own_indexes(
    store: Store, prefix: str
) -> None:
    ipam = make(store, prefix)
    got = [ipam.allocate_service(f"uid-{i}", f"default/s{i}") for i in range(64)]
    assert len({a.index for a in got}) == 64
    for a in got:  # partition p holds the indexes j with j - 1 = p (mod partitions)
        part = zlib.crc32(a.uid.encode()) % SERVICE_PARTITIONS
        assert (a.index - 1) % SERVICE_PARTITIONS == part
    assert len({(a.index - 1) % SERVICE_PARTITIONS for a in got}) > SERVICE_PARTITIONS // 2
    assert ipam.services() == sorted(got, key=lambda a: a.uid)
    assert ipam.release_service("uid-3") and not ipam.release_service("uid-3")
    assert "uid-3" not in {a.uid for a in ipam.services()}


def test_release_frees_for_reuse_and_unknown_release_is_not_an_error(
    store: Store, prefix: str
) -> None:
    ipam = make(store, prefix, SMALL_PLAN)
    ipam.claim_node("node-a")
    taken = [ipam.allocate_pod("node-a", f"c{i}") for i in range(13)]
    assert len({t.addresses.index for t in taken}) == 13
    assert ipam.release_pod("node-a", "c4") is True
    assert ipam.release_pod("node-a", "c4") is False
    assert ipam.release_pod("node-a", "never-existed") is False
    reused = ipam.allocate_pod("node-a", "c-new")
    assert reused.addresses.index == taken[4].addresses.index
    assert ipam.pod("node-a", "c4") is None


def test_exhaustion_names_the_pool_and_loses_nothing(store: Store, prefix: str) -> None:
    ipam = make(store, prefix, SMALL_PLAN)
    ipam.claim_node("node-a")
    held = {ipam.allocate_pod("node-a", f"c{i}").addresses.index for i in range(13)}
    with pytest.raises(PoolExhausted, match=r"pod addresses of node node-a.*13"):
        ipam.allocate_pod("node-a", "one-too-many")
    assert {p.addresses.index for p in ipam.pods("node-a")} == held
    # Idempotent re-ADD of an existing pod still answers on a full pool.
    assert ipam.allocate_pod("node-a", "c0").addresses.index in held


def test_node_pool_exhaustion(store: Store, prefix: str) -> None:
    ipam = make(store, prefix, {**PLAN, "maxNodes": 3})
    for name in ("a", "b", "c"):
        ipam.claim_node(name)
    with pytest.raises(PoolExhausted, match="node IDs"):
        ipam.claim_node("d")


def test_pod_needs_a_claimed_node_and_sane_names(store: Store, prefix: str) -> None:
    ipam = make(store, prefix)
    with pytest.raises(LookupError, match="claim_node"):
        ipam.allocate_pod("ghost", "c1")
    ipam.claim_node("node-a")
    with pytest.raises(ValueError, match="without '/'"):
        ipam.allocate_pod("node-a", "c/1")


def test_gc_frees_only_what_is_not_live(store: Store, prefix: str) -> None:
    ipam = make(store, prefix)
    for node in ("node-a", "node-b", "node-gone"):
        ipam.claim_node(node)
    for cid in ("live1", "live2", "leaked"):
        ipam.allocate_pod("node-a", cid)
    ipam.allocate_pod("node-gone", "whatever")
    ipam.allocate_service("svc-live")
    ipam.allocate_service("svc-deleted")

    before = store.revision() + 1
    ipam.allocate_pod("node-a", "being-added-now")  # after the live set was taken

    report = ipam.gc(
        live_nodes={"node-a", "node-b"},
        live_pods={"node-a": {("live1", "eth0"), ("live2", "eth0")}},
        live_services={"svc-live"},
        created_before=before,
    )
    assert report.nodes == ["node-gone"]
    assert report.pods == [("node-a", "leaked/eth0")]
    assert report.services == ["svc-deleted"]
    assert {p.container_id for p in ipam.pods("node-a")} == {"live1", "live2", "being-added-now"}
    assert ipam.pods("node-gone") == []
    assert set(ipam.nodes()) == {"node-a", "node-b"}
    assert [s.uid for s in ipam.services()] == ["svc-live"]


def test_gc_removes_an_orphan_index_left_by_a_hand_edit(store: Store, prefix: str) -> None:
    ipam = make(store, prefix, SMALL_PLAN)
    ipam.claim_node("node-a")
    store.put(f"{prefix}pods/node-a/by-index/5", b'{"owner":"nobody/eth0"}')
    ipam.gc(live_pods={"node-a": set()})
    indexes = {ipam.allocate_pod("node-a", f"c{i}").addresses.index for i in range(13)}
    assert 5 in indexes


def _race(
    fn: Any, spec: StoreSpec, plan: dict[str, Any], prefix: str, workers: int, count: int
) -> list[tuple[str, int]]:
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        futures = [pool.submit(fn, spec, plan, prefix, w, count) for w in range(workers)]
        return [pair for f in futures for pair in f.result(timeout=240)]


@pytest.mark.slow
def test_eight_processes_racing_on_one_pod_pool_never_share(
    store: Store, spec: StoreSpec, prefix: str
) -> None:
    make(store, prefix).claim_node("node-a")
    got = _race(ipam_workers.race_pods, spec, PLAN, prefix, workers=8, count=25)
    indexes = [index for _, index in got]
    assert len(got) == 200
    assert len(set(indexes)) == 200, Counter(indexes).most_common(3)
    stored = {p.owner: p.addresses.index for p in make(store, prefix).pods("node-a")}
    assert stored == dict(got)


@pytest.mark.slow
def test_eight_processes_racing_on_nodes_and_services(
    store: Store, spec: StoreSpec, prefix: str
) -> None:
    nodes = _race(ipam_workers.race_nodes, spec, PLAN, prefix, workers=8, count=4)
    shared = {index for name, index in nodes if name == "shared"}
    assert len(shared) == 1  # every worker got the same ID for the same name
    distinct = {(name, index) for name, index in nodes}
    assert len({index for _, index in distinct}) == len(distinct) == 33
    services = _race(ipam_workers.race_services, spec, PLAN, prefix, workers=8, count=10)
    assert len({index for _, index in services}) == 80


def _replay(journal: Path) -> set[str]:
    live: set[str] = set()
    for line in journal.read_text().split():
        if line.startswith("-"):
            live.discard(line[1:])
        else:
            live.add(line)
    return live


@pytest.mark.slow
def test_sigkill_at_random_points_then_gc_loses_and_duplicates_nothing(
    store: Store, spec: StoreSpec, prefix: str, tmp_path: Path
) -> None:
    make(store, prefix, V6_PLAN).claim_node("node-a")
    ctx = multiprocessing.get_context("spawn")
    rng = random.Random(int.from_bytes(os.urandom(4)))
    journals = [tmp_path / f"journal-{w}" for w in range(4)]
    for _round in range(6):
        procs = [
            ctx.Process(
                target=ipam_workers.allocate_forever,
                args=(spec, V6_PLAN, prefix, w, str(journals[w])),
            )
            for w in range(4)
        ]
        sizes = [j.stat().st_size if j.exists() else 0 for j in journals]
        for proc in procs:
            proc.start()
        # Kill only once every worker is allocating (a spawned child takes a while to
        # import its store client), then at a random moment inside its loop.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not all(
            (j.exists() and j.stat().st_size > size) or proc.exitcode is not None
            for j, size, proc in zip(journals, sizes, procs, strict=True)
        ):
            time.sleep(0.01)
        time.sleep(rng.uniform(0, 0.3))
        for proc in procs:
            time.sleep(rng.uniform(0, 0.05))
            os.kill(proc.pid, signal.SIGKILL)  # type: ignore[arg-type]
        for proc in procs:
            proc.join(10)
        # Each died of our SIGKILL, not of an error of its own (a full pool, a store error).
        assert [proc.exitcode for proc in procs] == [-signal.SIGKILL] * len(procs)

    live = set().union(*(_replay(j) for j in journals if j.exists()))
    assert live, "the workers never allocated anything: the test proved nothing"
    ipam = make(store, prefix, V6_PLAN)
    before_gc = {p.container_id: p.addresses.index for p in ipam.pods("node-a")}
    # Every journaled pod is in the store (nothing live lost, even before GC)...
    assert live <= set(before_gc)
    ipam.gc(
        live_pods={"node-a": {(cid, "eth0") for cid in live}}, created_before=store.revision() + 1
    )
    after = {p.container_id: p.addresses.index for p in ipam.pods("node-a")}
    # ...GC kept exactly the live ones, with their original addresses...
    assert set(after) == live
    assert all(after[cid] == before_gc[cid] for cid in live)
    # ...and no index is held twice or held by nobody.
    assert len(set(after.values())) == len(after)
    index_keys = store.list(f"{prefix}pods/node-a/by-index/", keys_only=True).items
    assert sorted(int(kv.key.rsplit("/", 1)[1]) for kv in index_keys) == sorted(after.values())
