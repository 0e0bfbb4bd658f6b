"""Worker processes for the allocation race and crash tests (importable by spawn children).

A store is passed to a child as a small spec, since a connection cannot cross processes:
`("sqlite", path)`, `("etcd", endpoint)` or `("kubernetes", API server URL)`; the allocator
prefix isolates each test.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ipam6.allocator import Allocator
from ipam6.plan import AddressPlan
from ipam6.store.base import Store

StoreSpec = tuple[str, str]


def open_spec(spec: StoreSpec) -> Store:
    kind, where = spec
    if kind == "sqlite":
        from ipam6.store.sqlite import SqliteStore

        return SqliteStore(where)
    if kind == "kubernetes":
        from kubernetes import client

        from ipam6.store.kubernetes import KubernetesStore

        configuration = client.Configuration()
        configuration.host = where
        return KubernetesStore("srv6ctl", configuration=configuration)
    from ipam6.store.etcd import EtcdStore

    return EtcdStore([where])


def allocator(spec: StoreSpec, plan: dict[str, Any], prefix: str) -> Allocator:
    return Allocator(open_spec(spec), AddressPlan.from_mapping(plan), prefix=prefix)


def race_pods(
    spec: StoreSpec, plan: dict[str, Any], prefix: str, worker: int, count: int
) -> list[tuple[str, int]]:
    """Allocate `count` pods on node-a; return (owner, index) pairs."""
    ipam = allocator(spec, plan, prefix)
    got = []
    for i in range(count):
        allocation = ipam.allocate_pod("node-a", f"w{worker}-c{i}")
        got.append((allocation.owner, allocation.addresses.index))
    ipam.store.close()
    return got


def race_nodes(
    spec: StoreSpec, plan: dict[str, Any], prefix: str, worker: int, count: int
) -> list[tuple[str, int]]:
    """Claim `count` distinct node names and one name every worker shares."""
    ipam = allocator(spec, plan, prefix)
    got = [("shared", ipam.claim_node("shared"))]
    for i in range(count):
        got.append((f"n{worker}-{i}", ipam.claim_node(f"n{worker}-{i}")))
    ipam.store.close()
    return got


def race_services(
    spec: StoreSpec, plan: dict[str, Any], prefix: str, worker: int, count: int
) -> list[tuple[str, int]]:
    ipam = allocator(spec, plan, prefix)
    got = [
        (f"uid-{worker}-{i}", ipam.allocate_service(f"uid-{worker}-{i}").index)
        for i in range(count)
    ]
    ipam.store.close()
    return got


def allocate_forever(
    spec: StoreSpec, plan: dict[str, Any], prefix: str, worker: int, journal: str
) -> None:
    """Allocate pods one after another, journaling each *after* it succeeded.

    Killed with SIGKILL at a random moment: the last allocation may be in the store but
    not in the journal (the leak the GC must free), never the other way round.
    """
    ipam = allocator(spec, plan, prefix)
    path = Path(journal)
    start = len(path.read_text().split()) if path.exists() else 0
    with path.open("a") as out:
        for i in range(start, 10**9):
            cid = f"k{worker}-{i}"
            ipam.allocate_pod("node-a", cid)
            out.write(cid + "\n")
            out.flush()
            os.fsync(out.fileno())
            # Also release some, so kills land inside releases too.
            if i % 3 == 2:
                victim = f"k{worker}-{i - 1}"
                out.write(f"-{victim}\n")
                out.flush()
                os.fsync(out.fileno())
                ipam.release_pod("node-a", victim)
