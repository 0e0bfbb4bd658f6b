"""Allocation of node IDs, pod indexes and service indexes, by compare-and-swap in the store.

Each claim is one transaction that writes two keys together — `by-index/<i>` (who holds
index i) and `by-owner/<owner>` (which index an owner holds) — guarded by "both absent".
So two allocators can never take the same index (the loser's guard fails and it picks
again), an owner can never hold two indexes, and a process killed at any point leaves
either both keys or neither. Everything else (addresses, SIDs) is derived from the index
by `ipam6.plan`, so it never needs to be stored.

Keys (under a configurable prefix, `/srv6ctl/ipam/` by default):

    nodes/by-owner/<node>                -> {"index": N, "node": <node>}
    nodes/by-index/<N>                   -> {"owner": <node>}
    pods/<node>/by-owner/<cid>/<ifname>  -> {"index": k, "pod": "ns/name", "uid": ...}
    pods/<node>/by-index/<k>             -> {"owner": "<cid>/<ifname>"}
    services/<p>/by-owner/<uid>          -> {"index": j, "service": "ns/name"}
    services/<p>/by-index/<j>            -> {"owner": <uid>}

Services are split into SERVICE_PARTITIONS partitions `p` by a hash of their UID, each
with its own slice of the indexes (j ≡ p + 1 mod SERVICE_PARTITIONS): a claim stays in
one partition, so a store that keeps a pool in one object — the Kubernetes store, one
ConfigMap of at most 1 MiB per pool — holds that many times more services.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import zlib
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from ipam6.plan import AddressPlan, PodAddresses, PoolExhausted
from ipam6.store.base import Compacted, Compare, Delete, Put, Store, Watch

log = logging.getLogger(__name__)

DEFAULT_PREFIX = "/srv6ctl/ipam/"
RANDOM_PROBES = 3  # random picks before falling back to listing the pool
CLAIM_ATTEMPTS = 1000  # a pool with free room converges long before this
# Fixed for good: another count would move every service to another partition and index.
SERVICE_PARTITIONS = 16


class AllocationError(RuntimeError):
    """The store kept refusing a claim (only under pathological contention)."""


@dataclass(frozen=True)
class PodAllocation:
    node: str
    container_id: str
    interface: str
    pod: str  # "namespace/name", informational
    uid: str
    addresses: PodAddresses
    netns: str = ""  # the pod's network namespace path, so a restarted agent finds it

    @property
    def owner(self) -> str:
        return f"{self.container_id}/{self.interface}"


@dataclass(frozen=True)
class ServiceAllocation:
    uid: str
    service: str
    index: int
    bsid_v6: Any  # IPv6Address
    bsid_v4: Any  # IPv6Address | None (dual-stack only)


@dataclass(frozen=True)
class GcReport:
    nodes: list[str] = field(default_factory=list)
    pods: list[tuple[str, str]] = field(default_factory=list)  # (node, owner)
    services: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Pool:
    """One index pool in the store: a name for errors, its key prefix and its range."""

    name: str
    prefix: str
    indexes: range
    lowest_first: bool  # node IDs read better small and dense; pods/services race less at random

    def index_key(self, index: int) -> str:
        return f"{self.prefix}by-index/{index}"

    def owner_key(self, owner: str) -> str:
        return f"{self.prefix}by-owner/{owner}"


def _encode(data: Mapping[str, Any]) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


def _check_name(what: str, value: str) -> None:
    # Names become key path segments: a '/' would let one owner shadow another's subtree.
    if not value or "/" in value or len(value) > 253:
        raise ValueError(f"{what} {value!r} must be non-empty, at most 253 chars, without '/'")


class Allocator:
    """Keyed, idempotent allocation on top of any `Store`."""

    def __init__(
        self,
        store: Store,
        plan: AddressPlan,
        *,
        prefix: str = DEFAULT_PREFIX,
        rng: random.Random | None = None,
        on_store_op: Callable[[str], None] | None = None,
    ) -> None:
        self.store = store
        self.plan = plan
        self.prefix = prefix if prefix.endswith("/") else prefix + "/"
        self._rng = rng or random.Random()
        self._on_store_op = on_store_op or (lambda op: None)

    # --- pools -----------------------------------------------------------------------

    def _node_pool(self) -> _Pool:
        return _Pool("node IDs", f"{self.prefix}nodes/", self.plan.node_ids, lowest_first=True)

    def _pod_pool(self, node: str) -> _Pool:
        return _Pool(
            f"pod addresses of node {node}",
            f"{self.prefix}pods/{node}/",
            self.plan.pod_indexes,
            lowest_first=False,
        )

    def _service_pool(self, uid: str) -> _Pool:
        return self._service_partition(zlib.crc32(uid.encode()) % SERVICE_PARTITIONS)

    def _service_partition(self, part: int) -> _Pool:
        return _Pool(
            f"service BSIDs (partition {part})",
            f"{self.prefix}services/{part}/",
            self.plan.service_indexes[part::SERVICE_PARTITIONS],
            lowest_first=False,
        )

    def _service_partitions(self) -> list[_Pool]:
        return [self._service_partition(part) for part in range(SERVICE_PARTITIONS)]

    def _lookup(self, pool: _Pool, owner: str) -> dict[str, Any] | None:
        self._on_store_op("get")
        kv = self.store.get(pool.owner_key(owner))
        return None if kv is None else dict(json.loads(kv.value))

    def _used(self, pool: _Pool) -> set[int]:
        self._on_store_op("list")
        listing = self.store.list(f"{pool.prefix}by-index/", keys_only=True)
        return {int(kv.key.rsplit("/", 1)[1]) for kv in listing.items}

    def _claim(
        self, pool: _Pool, owner: str, details: Mapping[str, Any]
    ) -> tuple[int, dict[str, Any]]:
        """Take a free index for `owner`, or return the one it already holds (and the
        details recorded when it was taken: an idempotent re-claim changes nothing)."""
        used: set[int] | None = None
        for attempt in range(CLAIM_ATTEMPTS):
            held = self._lookup(pool, owner)
            if held is not None:
                return int(held["index"]), held
            if pool.lowest_first or attempt >= RANDOM_PROBES:
                if used is None or attempt > RANDOM_PROBES:
                    used = self._used(pool)
                index = self._pick_free(pool, used)
            else:
                # A sparse pool almost never collides: no need to list it at all.
                index = self._rng.choice(pool.indexes)
            self._on_store_op("txn")
            result = self.store.txn(
                [Compare.absent(pool.index_key(index)), Compare.absent(pool.owner_key(owner))],
                [
                    Put(pool.index_key(index), _encode({"owner": owner})),
                    Put(pool.owner_key(owner), _encode({**details, "index": index})),
                ],
            )
            if result.succeeded:
                return index, {**details, "index": index}
            if used is not None:
                used.add(index)
        raise AllocationError(f"{pool.name}: no claim succeeded after {CLAIM_ATTEMPTS} attempts")

    def _pick_free(self, pool: _Pool, used: set[int]) -> int:
        if len(used) >= len(pool.indexes):
            raise PoolExhausted(
                f"pool {pool.name} is exhausted: all {len(pool.indexes)} entries are in use"
            )
        if pool.lowest_first:
            return next(i for i in pool.indexes if i not in used)
        # Random among the lowest free ones: dense enough to read, spread enough that
        # concurrent allocators rarely pick the same index.
        window: list[int] = []
        for i in pool.indexes:
            if i not in used:
                window.append(i)
                if len(window) == 32:
                    break
        return self._rng.choice(window)

    def _release(self, pool: _Pool, owner: str) -> bool:
        held = self._lookup(pool, owner)
        if held is None:
            return False
        index = int(held["index"])
        self._on_store_op("txn")
        # Guard on the index key still naming this owner: never free someone else's index.
        result = self.store.txn(
            [Compare.value(pool.index_key(index), _encode({"owner": owner}))],
            [Delete(pool.index_key(index)), Delete(pool.owner_key(owner))],
            [Delete(pool.owner_key(owner))],
        )
        return result.succeeded

    def _owners(self, pool: _Pool) -> dict[str, tuple[dict[str, Any], int]]:
        """owner -> (its record, create revision)."""
        self._on_store_op("list")
        prefix = f"{pool.prefix}by-owner/"
        listing = self.store.list(prefix)
        return {
            kv.key[len(prefix) :]: (dict(json.loads(kv.value)), kv.create_revision)
            for kv in listing.items
        }

    # --- nodes -------------------------------------------------------------------------

    def claim_node(self, node: str) -> int:
        """The node's ID: the one it had (restarts), or the lowest free one."""
        _check_name("node name", node)
        return self._claim(self._node_pool(), node, {"node": node})[0]

    def node_id(self, node: str) -> int | None:
        held = self._lookup(self._node_pool(), node)
        return None if held is None else int(held["index"])

    def nodes(self) -> dict[str, int]:
        return {
            name: int(rec["index"]) for name, (rec, _) in self._owners(self._node_pool()).items()
        }

    def release_node(self, node: str) -> bool:
        """Free the node's ID and every pod allocation it held."""
        for allocation in self.pods(node):
            self.release_pod(node, allocation.container_id, allocation.interface)
        return self._release(self._node_pool(), node)

    # --- pods --------------------------------------------------------------------------

    def allocate_pod(
        self,
        node: str,
        container_id: str,
        interface: str = "eth0",
        *,
        pod: str = "",
        uid: str = "",
        netns: str = "",
    ) -> PodAllocation:
        """Addresses and SIDs for one pod interface; the same key gets the same answer."""
        _check_name("container ID", container_id)
        _check_name("interface", interface)
        node_id = self.node_id(node)
        if node_id is None:
            raise LookupError(f"node {node} has no node ID: claim_node({node!r}) first")
        owner = f"{container_id}/{interface}"
        details = {"pod": pod, "uid": uid, "netns": netns}
        index, held = self._claim(self._pod_pool(node), owner, details)
        return self._pod_allocation(node, node_id, owner, index, held)

    def _pod_allocation(
        self, node: str, node_id: int, owner: str, index: int, record: Mapping[str, Any]
    ) -> PodAllocation:
        container_id, interface = owner.rsplit("/", 1)
        return PodAllocation(
            node=node,
            container_id=container_id,
            interface=interface,
            pod=str(record.get("pod", "")),
            uid=str(record.get("uid", "")),
            addresses=self.plan.pod(node_id, index),
            netns=str(record.get("netns", "")),
        )

    def pod(self, node: str, container_id: str, interface: str = "eth0") -> PodAllocation | None:
        node_id = self.node_id(node)
        held = self._lookup(self._pod_pool(node), f"{container_id}/{interface}")
        if node_id is None or held is None:
            return None
        return self._pod_allocation(
            node, node_id, f"{container_id}/{interface}", int(held["index"]), held
        )

    def pods(self, node: str) -> list[PodAllocation]:
        node_id = self.node_id(node)
        if node_id is None:
            return []
        return [
            self._pod_allocation(node, node_id, owner, int(rec["index"]), rec)
            for owner, (rec, _) in sorted(self._owners(self._pod_pool(node)).items())
        ]

    def release_pod(self, node: str, container_id: str, interface: str = "eth0") -> bool:
        """Free a pod interface's addresses; False when it held none (not an error)."""
        return self._release(self._pod_pool(node), f"{container_id}/{interface}")

    # --- services ----------------------------------------------------------------------

    def allocate_service(self, uid: str, service: str = "") -> ServiceAllocation:
        """The service's binding SIDs, stable for its UID across restarts."""
        _check_name("service UID", uid)
        index, held = self._claim(self._service_pool(uid), uid, {"service": service})
        return self._service_allocation(uid, str(held.get("service", "")), index)

    def allocate_services(self, services: Mapping[str, str]) -> dict[str, ServiceAllocation]:
        """`allocate_service` for many (UID -> namespace/name): one listing of each
        partition of the pool, then a claim only for each service not in it. An agent
        starting on a cluster of thousands of services would otherwise make a lookup
        apiece — and on the Kubernetes store each lookup reads a whole ConfigMap."""
        for uid in services:
            _check_name("service UID", uid)
        held = {allocation.uid: allocation for allocation in self.services()}
        return {
            uid: held[uid] if uid in held else self.allocate_service(uid, name)
            for uid, name in services.items()
        }

    def _service_allocation(self, uid: str, service: str, index: int) -> ServiceAllocation:
        return ServiceAllocation(
            uid=uid,
            service=service,
            index=index,
            bsid_v6=self.plan.service_bsid_v6(index),
            bsid_v4=self.plan.service_bsid_v4(index) if self.plan.dual_stack else None,
        )

    def services(self) -> list[ServiceAllocation]:
        """Every service's allocation, by UID: one listing per partition."""
        owners = {
            uid: rec
            for pool in self._service_partitions()
            for uid, (rec, _) in self._owners(pool).items()
        }
        return [
            self._service_allocation(uid, str(rec.get("service", "")), int(rec["index"]))
            for uid, rec in sorted(owners.items())
        ]

    def release_service(self, uid: str) -> bool:
        return self._release(self._service_pool(uid), uid)

    # --- garbage collection ----------------------------------------------------------

    def gc(
        self,
        *,
        live_nodes: Collection[str] | None = None,
        live_pods: Mapping[str, Collection[tuple[str, str]]] | None = None,
        live_services: Collection[str] | None = None,
        created_before: int | None = None,
    ) -> GcReport:
        """Free every allocation whose owner is not live (the crash-leak case).

        `None` for a kind means "don't collect that kind". `live_pods` maps a node to its
        live (container ID, interface) pairs; nodes missing from it are left alone unless
        `live_nodes` says they are gone. `created_before` is a store revision taken *before*
        the live sets were gathered: anything allocated after it may belong to a pod being
        set up right now and is never collected.
        """
        report = GcReport()

        def old_enough(create_revision: int) -> bool:
            return created_before is None or create_revision < created_before

        if live_nodes is not None:
            live = set(live_nodes)
            for node, (_, rev) in self._owners(self._node_pool()).items():
                if node not in live and old_enough(rev):
                    self.release_node(node)
                    report.nodes.append(node)
        if live_pods is not None:
            for node, live_owners in live_pods.items():
                wanted = {f"{cid}/{ifname}" for cid, ifname in live_owners}
                pool = self._pod_pool(node)
                for owner, (_, rev) in self._owners(pool).items():
                    if owner not in wanted and old_enough(rev) and self._release(pool, owner):
                        report.pods.append((node, owner))
                self._collect_orphan_indexes(pool)
        if live_services is not None:
            live = set(live_services)
            for pool in self._service_partitions():
                for uid, (_, rev) in self._owners(pool).items():
                    if uid not in live and old_enough(rev) and self._release(pool, uid):
                        report.services.append(uid)
        return report

    def _collect_orphan_indexes(self, pool: _Pool) -> None:
        # Claims write both keys in one transaction, so an orphan index can only come from
        # a hand edit or an older writer; free it so the pool does not shrink for ever.
        owners = self._owners(pool)
        self._on_store_op("list")
        listing = self.store.list(f"{pool.prefix}by-index/")
        for kv in listing.items:
            owner = str(json.loads(kv.value).get("owner", ""))
            index = int(kv.key.rsplit("/", 1)[1])
            if owner not in owners or int(owners[owner][0]["index"]) != index:
                self.store.txn([Compare.mod_revision(kv.key, kv.mod_revision)], [Delete(kv.key)])


class NodeWatch:
    """Says when the node pool changed — a node claimed or released its ID — so an agent
    re-reads the node IDs at once, not at its next resync: a claim is a store write, which
    no cluster object shows (a joining node's Node object came before its agent's claim).

    One thread: list the pool's owners (the revision to watch from), call `changed()`, and
    watch from there, calling `changed()` again at each event. History gone
    (`Compacted`): list again at once (twice in a row: after `retry_delay`, not in a spin).
    Any other store error: list again after
    `retry_delay` seconds (0.5, jittered to 0.25-0.5) — short and flat rather than growing,
    so an outage of any length ends within that delay of the store's return: a down store
    refuses the connection for free, and one that answers with errors gets one read of one
    key range (one ConfigMap, by name) per agent per retry.
    """

    def __init__(
        self,
        allocator: Allocator,
        changed: Callable[[], None],
        *,
        retry_delay: float = 0.5,
        rng: random.Random | None = None,
    ) -> None:
        self._store = allocator.store
        self._prefix = f"{allocator._node_pool().prefix}by-owner/"
        self._changed = changed
        self._retry_delay = retry_delay
        self._rng = rng or random.Random()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._watch: Watch | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="ipam6-node-watch", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        with self._lock:
            if self._watch is not None:
                self._watch.cancel()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        failing = False
        expired = False  # the last watch was Compacted before it gave anything
        while not self._stop.is_set():
            try:
                watch = self._store.watch(self._prefix, self._store.list(self._prefix).revision + 1)
                with self._lock:
                    self._watch = watch
                if self._stop.is_set():
                    watch.cancel()
                if failing:
                    log.info("node pool: watching again")
                failing = False
                self._changed()  # what the list found may be news
                for _ in watch:
                    expired = False
                    self._changed()
            except Compacted:
                if expired:  # again, straight after a list: do not spin
                    self._stop.wait(self._rng.uniform(self._retry_delay / 2, self._retry_delay))
                expired = True
            except Exception as err:  # StoreError, or anything: the watch must not die
                if self._stop.is_set():
                    return
                if not failing:
                    log.warning("node pool: %s; retrying every %.1fs", err, self._retry_delay)
                failing = True
                self._stop.wait(self._rng.uniform(self._retry_delay / 2, self._retry_delay))
            finally:
                with self._lock:
                    self._watch = None
