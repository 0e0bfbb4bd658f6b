"""Benchmark: pod allocations per second on the embedded (SQLite) and etcd stores.

1, 4 and 8 concurrent allocator processes share one node's pod pool (the worst case: every
claim races on the same keys). Each process times each `allocate_pod` call; the figures
are the aggregate rate (allocations / wall time from a common start barrier) and the
per-allocation p50/p99. The headline `allocs_per_s` of a store is the one at 8 allocators.

Last line of stdout: one JSON object, e.g.
{"bench": "ipam_alloc", "embedded": {"allocs_per_s": ..., "p50_ms": ..., "p99_ms": ...,
 "by_concurrency": {"1": {...}, "4": {...}, "8": {...}}}, "etcd": {...}}
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

# Runs as `python bench/ipam_alloc.py` from the checkout: make the project importable.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ipam6.allocator import Allocator
from ipam6.plan import AddressPlan
from tests.support.ipam_workers import StoreSpec, open_spec

PLAN = {"podCIDRv6": "fd00:10::/48"}  # 65,534 pods per node: the pool never fills


def _worker(spec: StoreSpec, prefix: str, worker: int, count: int, barrier: Any, out: Any) -> None:
    ipam = Allocator(open_spec(spec), AddressPlan.from_mapping(PLAN), prefix=prefix)
    barrier.wait()
    latencies = []
    for i in range(count):
        start = time.perf_counter()
        ipam.allocate_pod("node-a", f"w{worker}-{i}")
        latencies.append(time.perf_counter() - start)
    out.put(latencies)
    ipam.store.close()


def run(spec: StoreSpec, concurrency: int, per_worker: int) -> dict[str, float]:
    prefix = f"/bench-{uuid.uuid4().hex[:8]}/"
    setup = Allocator(open_spec(spec), AddressPlan.from_mapping(PLAN), prefix=prefix)
    setup.claim_node("node-a")
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(concurrency + 1)
    out = ctx.Queue()
    procs = [
        ctx.Process(target=_worker, args=(spec, prefix, w, per_worker, barrier, out))
        for w in range(concurrency)
    ]
    for proc in procs:
        proc.start()
    barrier.wait()
    start = time.perf_counter()
    latencies: list[float] = []
    for _ in procs:
        latencies.extend(out.get(timeout=600))
    wall = time.perf_counter() - start
    for proc in procs:
        proc.join()
    total = len(setup.pods("node-a"))
    assert total == concurrency * per_worker, f"{total} allocations, expected more"
    setup.store.close()
    latencies.sort()
    return {
        "allocs_per_s": round(len(latencies) / wall, 1),
        "p50_ms": round(statistics.median(latencies) * 1000, 3),
        "p99_ms": round(latencies[int(len(latencies) * 0.99) - 1] * 1000, 3),
        "allocations": len(latencies),
    }


def bench_store(spec: StoreSpec, per_worker: int) -> dict[str, Any]:
    by_concurrency = {str(c): run(spec, c, per_worker) for c in (1, 4, 8)}
    headline = by_concurrency["8"]
    return {
        **{k: headline[k] for k in ("allocs_per_s", "p50_ms", "p99_ms")},
        "by_concurrency": by_concurrency,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--allocations", type=int, default=100, help="allocations per allocator process"
    )
    parser.add_argument("--no-etcd", action="store_true", help="embedded store only")
    args = parser.parse_args()

    result: dict[str, Any] = {"bench": "ipam_alloc", "allocations_per_worker": args.allocations}
    with tempfile.TemporaryDirectory(prefix="srv6ctl-bench-") as tmp:
        result["embedded"] = bench_store(("sqlite", str(Path(tmp) / "ipam.db")), args.allocations)
        print("embedded:", json.dumps(result["embedded"]), file=sys.stderr)
    if args.no_etcd:
        result["etcd"] = None
    else:
        from tests.support.etcd import EtcdServer

        with EtcdServer() as server:
            result["etcd"] = bench_store(("etcd", server.endpoint), args.allocations)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
