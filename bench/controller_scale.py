"""Benchmark: render one node's config for a large cluster, in full and incrementally.

A synthetic cluster of N nodes, S services and E ready endpoints per service (one pod per
endpoint, spread round-robin over the nodes, so S*E pods) is built in a `ClusterState`.
Measured for node `node-1`:

- `full_render_s`: `render(state, node, inputs)` from scratch (a cold `Renderer`), best
  of three;
- `incremental_p50_ms` / `incremental_p99_ms`: one endpoint readiness flip, as a watch
  event delivers it — `ClusterState.upsert_endpoint_slice` plus `Renderer.update` of the
  dirty keys it returns — over 1,000 random flips;
- `materialise_ms`: building the full `NodeConfig` value after a change (what a resync
  hands reconcile; the per-event path returns a `RenderDelta` and does not need it);
- `peak_rss_mb`: the process's peak resident set (state, renderer and config included).

The incremental result is checked against a full render at the end (`consistent`).

Last line of stdout: one JSON object, e.g.
{"bench": "controller_scale", "nodes": 1000, "services": 10000, "endpoints": 10,
 "full_render_s": ..., "incremental_p50_ms": ..., "incremental_p99_ms": ..., "peak_rss_mb": ...}
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import ipaddress
import json
import os
import random
import resource
import statistics
import sys
import time
from pathlib import Path

# Runs as `python bench/controller_scale.py` from the checkout: make the project importable.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ipam6.plan import AddressPlan
from srv6ctl.dataplane.model import Capabilities
from srv6ctl.render import PodInterface, Renderer, RenderInputs, ServiceBsids, render
from srv6ctl.state import (
    ClusterState,
    ContainerPort,
    Endpoint,
    EndpointSlice,
    Labels,
    Node,
    Pod,
    PodRef,
    Service,
    ServicePort,
)

LOCAL = "node-1"
BEHAVIOURS = frozenset({"End", "End.DT6", "End.DX6", "End.DX4"})


def build(
    nodes: int, services: int, endpoints: int, dual_stack: bool, dt4: bool = False
) -> tuple[ClusterState, RenderInputs]:
    plan_config = {"podCIDRv6": "fd00:10::/48", "serviceCIDRv6": "fd00:96::/108"}
    if dual_stack:
        plan_config |= {"podCIDRv4": "10.128.0.0/14", "serviceCIDRv4": "10.96.0.0/16"}
    plan_config["maxNodes"] = max(1000, nodes)  # type: ignore[assignment]
    plan = AddressPlan.from_mapping(plan_config)
    state = ClusterState()
    node_ids = {}
    for n in range(1, nodes + 1):
        name = f"node-{n}"
        node_ids[name] = n
        state.upsert_node(
            Node(
                name=name,
                uid=f"node-uid-{n}",
                internal_ipv6=ipaddress.IPv6Address(f"2001:db8::{n:x}"),
                zone=f"zone-{n % 3}",
                sr_behaviours=BEHAVIOURS | ({"End.DT4"} if dt4 else set()),
            )
        )
    next_index = dict.fromkeys(range(1, nodes + 1), plan.pod_indexes.start)
    interfaces = {}
    bsids = {}
    ports = (ContainerPort(8080, name="http"),)
    cluster_v6 = plan.service_cidr_v6
    cluster_v4 = plan.service_cidr_v4
    assert cluster_v6 is not None
    slot = 0
    for s in range(services):
        name, uid = f"svc-{s}", f"svc-uid-{s}"
        ips: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...] = (cluster_v6[s + 1],)
        if dual_stack and cluster_v4 is not None:
            ips += (cluster_v4[s + 1],)
        state.upsert_service(
            Service(
                uid=uid,
                namespace="default",
                name=name,
                cluster_ips=ips,
                ports=(ServicePort(80, name="http", target_port="http"),),
            )
        )
        bsids[uid] = ServiceBsids(
            plan.service_bsid_v6(s + 1), plan.service_bsid_v4(s + 1) if dual_stack else None
        )
        entries_v6, entries_v4 = [], []
        for e in range(endpoints):
            node_id = slot % nodes + 1
            slot += 1
            index = next_index[node_id]
            next_index[node_id] += 1
            addresses = plan.pod(node_id, index)
            pod = Pod(
                uid=f"pod-uid-{s}-{e}",
                namespace="default",
                name=f"{name}-{e}",
                node_name=f"node-{node_id}",
                ips=tuple(a for a in (addresses.ipv6, addresses.ipv4) if a is not None),
                labels=Labels({"app": name}),
                ready=True,
                container_ports=ports,
                phase="Running",
            )
            state.upsert_pod(pod)
            if pod.node_name == LOCAL:
                interfaces[pod.uid] = PodInterface(f"veth{index:x}", f"/var/run/netns/{pod.uid}")
            ref = PodRef("default", pod.name, pod.uid)
            zone = f"zone-{node_id % 3}"
            entries_v6.append(
                Endpoint((addresses.ipv6,), node_name=pod.node_name, zone=zone, target=ref)
            )
            if addresses.ipv4 is not None:
                entries_v4.append(
                    Endpoint((addresses.ipv4,), node_name=pod.node_name, zone=zone, target=ref)
                )
        for family, entries in (("IPv6", entries_v6), ("IPv4", entries_v4)):
            if entries:
                state.upsert_endpoint_slice(
                    EndpointSlice(
                        namespace="default",
                        name=f"{name}-{family.lower()}",
                        service_name=name,
                        address_type=family,
                        endpoints=tuple(entries),
                    )
                )
    inputs = RenderInputs(
        plan=plan,
        node_ids=node_ids,
        service_bsids=bsids,
        capabilities=Capabilities(behaviours=BEHAVIOURS | ({"End.DT4"} if dt4 else set())),
        pod_interfaces=interfaces,
    )
    return state, inputs


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--services", type=int, default=10000)
    parser.add_argument("--endpoints", type=int, default=10)
    parser.add_argument("--changes", type=int, default=1000)
    parser.add_argument("--dual-stack", action="store_true")
    parser.add_argument(
        "--dt4",
        action="store_true",
        help="every node can do End.DT4 (else dual-stack needs one IPv4 policy per remote pod)",
    )
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    started = time.perf_counter()
    state, inputs = build(args.nodes, args.services, args.endpoints, args.dual_stack, args.dt4)
    build_s = time.perf_counter() - started
    pods = len(state.pods)
    print(f"built {args.nodes} nodes, {pods} pods, {args.services} services in {build_s:.1f}s")
    # Collect the build's garbage now, so that no render is charged for a full collection
    # the build made due (an agent's state grows over minutes, not in one burst).
    gc.collect()

    # Best of three cold renders: each builds a new Renderer (no cache survives), and
    # the minimum is the figure least disturbed by whatever else the machine runs.
    timings = []
    for _ in range(3):
        started = time.perf_counter()
        config = render(state, LOCAL, inputs)
        timings.append(time.perf_counter() - started)
    full_render_s = min(timings)
    print(
        f"full render of {LOCAL}: {full_render_s:.3f}s, {len(config.policies)} policies, "
        f"{len(config.steerings)} steerings, {len(config.routes)} routes, {len(config.pods)} pods"
    )

    renderer = Renderer(state, LOCAL, inputs)
    rng = random.Random(args.seed)
    slices = sorted(state.endpoint_slices)
    latencies = []
    for _ in range(args.changes):
        key = rng.choice(slices)
        eps = state.endpoint_slices[key]
        i = rng.randrange(len(eps.endpoints))
        flipped = dataclasses.replace(eps.endpoints[i], ready=not eps.endpoints[i].ready)
        changed = dataclasses.replace(
            eps, endpoints=(*eps.endpoints[:i], flipped, *eps.endpoints[i + 1 :])
        )
        start = time.perf_counter_ns()
        renderer.update(state.upsert_endpoint_slice(changed))
        latencies.append((time.perf_counter_ns() - start) / 1e6)

    started = time.perf_counter()
    incremental = renderer.config()
    materialise_ms = (time.perf_counter() - started) * 1e3
    consistent = incremental == render(state, LOCAL, inputs)

    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = {
        "bench": "controller_scale",
        "nodes": args.nodes,
        "services": args.services,
        "endpoints": args.endpoints,
        "dual_stack": args.dual_stack,
        "end_dt4": args.dt4,
        "full_render_s": round(full_render_s, 3),
        "incremental_p50_ms": round(statistics.median(latencies), 4),
        "incremental_p99_ms": round(percentile(latencies, 0.99), 4),
        "materialise_ms": round(materialise_ms, 1),
        "consistent": consistent,
        "peak_rss_mb": round(peak_rss_mb, 1),
        # Timings are wall clock: the load says how busy the machine was meanwhile.
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "cpus": os.cpu_count(),
    }
    print(json.dumps(result))
    return 0 if consistent else 1


if __name__ == "__main__":
    sys.exit(main())
