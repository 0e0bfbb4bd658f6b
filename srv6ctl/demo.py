"""`srv6ctl lab demo`: a small cluster's address plan, allocated for real in a throw-away store.

Until the emulated lab exists this is what `make lab` runs: it shows the plan a 3-node
cluster gets (locators, SIDs, pod addresses, service BSIDs), proves allocations survive an
agent restart, and shows the garbage collector freeing a leaked pod.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

from ipam6.allocator import Allocator
from ipam6.plan import AddressPlan
from ipam6.store.sqlite import SqliteStore

DEMO_PLAN = {
    "podCIDRv6": "fd00:10::/48",
    "podCIDRv4": "10.128.0.0/14",
    "serviceCIDRv6": "fd00:96::/108",
    "serviceCIDRv4": "10.96.0.0/16",
}


def run_ipam_demo(nodes: int = 3, pods_per_node: int = 2) -> int:
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)  # piped (make lab | tee): keep addresses unabridged
    plan = AddressPlan.from_mapping(DEMO_PLAN)
    console.print("[bold]srv6ctl lab demo[/]: the address plan of a small dual-stack cluster")
    with tempfile.TemporaryDirectory(prefix="srv6ctl-demo-") as tmp:
        db = Path(tmp) / "ipam.db"
        store = SqliteStore(db)
        ipam = Allocator(store, plan)
        names = [f"node-{i}" for i in range(1, nodes + 1)]

        table = Table(title="nodes")
        for column in ("node", "ID", "locator", "End", "End.DT6", "pod prefix v6", "pod v4"):
            table.add_column(column)
        for name in names:
            node_id = ipam.claim_node(name)
            table.add_row(
                name,
                str(node_id),
                str(plan.locator(node_id)),
                str(plan.end_sid(node_id)),
                str(plan.dt6_sid(node_id)),
                str(plan.pod_prefix_v6(node_id)),
                str(plan.pod_prefix_v4(node_id)),
            )
        console.print(table)

        pods = Table(title="pods")
        for column in ("pod", "node", "IPv6", "IPv4", "End.DX6 SID", "End.DX4 SID"):
            pods.add_column(column)
        for name in names:
            for k in range(pods_per_node):
                pod = f"default/web-{name}-{k}"
                got = ipam.allocate_pod(name, f"ctr-{name}-{k}", pod=pod, uid=f"uid-{name}-{k}")
                a = got.addresses
                pods.add_row(pod, name, str(a.ipv6), str(a.ipv4), str(a.sid_dx6), str(a.sid_dx4))
        console.print(pods)

        service = ipam.allocate_service("svc-uid-web", "default/web")
        console.print(
            f"service default/web: BSID {service.bsid_v6} (IPv6 policy), "
            f"{service.bsid_v4} (IPv4-in-SRv6 policy)"
        )

        # An agent restart: a new store handle and allocator get exactly the same answers.
        before = {n: (ipam.node_id(n), ipam.pod(n, f"ctr-{n}-0")) for n in names}
        store.close()
        store = SqliteStore(db)
        again = Allocator(store, plan)
        same = all(
            (again.claim_node(n), again.allocate_pod(n, f"ctr-{n}-0")) == before[n] for n in names
        )
        console.print(f"restart: every node ID and pod address unchanged: [bold]{same}[/]")

        # A leak: ADD allocated, then the runtime forgot the container. GC frees it.
        leaked = again.allocate_pod(names[0], "ctr-leaked", pod="default/leaked")
        revision = store.revision() + 1
        live = {n: {(f"ctr-{n}-{k}", "eth0") for k in range(pods_per_node)} for n in names}
        report = again.gc(live_pods=live, created_before=revision)
        console.print(
            f"gc: freed {report.pods} (the leaked pod had {leaked.addresses.ipv6}); "
            f"{sum(len(again.pods(n)) for n in names)} live pod allocations kept"
        )
        store.close()
    console.print(
        "\nNext (lab issue): `srv6ctl lab up` will run these nodes as network namespaces "
        "with one agent each, wire pods through srv6-cni, and `srv6ctl verify` will prove "
        "the SRv6 service on the wire."
    )
    return 0 if same else 1
