"""Benchmark: 1,000 NetworkPolicies over 5,000 pods, compiled and programmed on one node.

The cluster: 50 namespaces (labels team, env) of 100 dual-stack pods each (labels app,
tier; named container ports), 500 services whose endpoint pods serve their ClusterIPs
(80 -> "http"), and 20 policies per namespace — a default deny, same-app and cross-tier
ingress with named ports, ingress from other teams' namespaces, egress to DNS (and so to
the DNS ClusterIP), to a backend tier, and to "the internet except the pod network". The
node runs 100 of the pods, two per namespace, each in its own network namespace.

Timed:
- `compile_s`: `compile_node(cluster, node)` — every local pod's rules, from scratch;
- `program_s`: `NftablesBackend.apply_many` into the 100 fresh pod namespaces (make the
  sets, then switch the rules: two `nft` transactions per pod, 4 pods at a time);
- `label_change_s`: one peer pod's `app` label changes: `recompile` of the affected
  local pods plus their `nft` transactions, until the last one returns.

Counted from what was installed (the rendered tables; one pod is checked against the
kernel's own listing): `nft_rules`, `nft_sets`, `nft_set_elements`, and for reference
`rules_one_per_peer`, the rules a renderer without sets would need (one per peer
address and port entry, as Contiv-VPP's iptables renderer wrote them).

Needs root and nft. Only creates and deletes its own namespaces (`s6bench-*`). Progress
goes to stderr; the last stdout line is one JSON object. No timing is asserted.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import random
import secrets
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as bench/<file>.py

from policies.compiler import compile_node, recompile
from policies.model import (
    Cluster,
    ContainerPort,
    Frontend,
    IPBlock,
    LabelSelector,
    Namespace,
    NetworkPolicy,
    Node,
    Peer,
    Pod,
    PodKey,
    PodRules,
    PolicyPort,
    PolicyRule,
    Protocol,
)
from policies.nftables import NftablesBackend, render, run_nft

TCP, UDP = Protocol.TCP, Protocol.UDP
APPS = [f"app{i}" for i in range(10)]
TIERS = ["frontend", "backend", "db"]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def sel(**labels: str) -> LabelSelector:
    return LabelSelector(labels)


def build_cluster(namespaces: int, per_namespace: int, local_per_namespace: int) -> Cluster:
    rng = random.Random(7)
    spaces = [
        Namespace(f"ns{n}", {"team": f"t{n % 10}", "env": "prod" if n % 2 else "dev"})
        for n in range(namespaces)
    ]
    spaces.append(Namespace("kube-system"))
    pods: list[Pod] = []
    for n in range(namespaces):
        for i in range(per_namespace):
            index = n * per_namespace + i
            app = APPS[i % len(APPS)]
            pods.append(
                Pod(
                    f"ns{n}",
                    f"pod{i}",
                    {"app": app, "tier": TIERS[i % len(TIERS)]},
                    (
                        ipaddress.IPv6Address(
                            int(ipaddress.IPv6Address("fd00:10::")) + (index << 8) + 2
                        ),
                        ipaddress.IPv4Address(
                            int(ipaddress.IPv4Address("10.128.0.0")) + 2 * index + 2
                        ),
                    ),
                    (
                        ContainerPort(8080 + rng.randrange(2), TCP, "http"),
                        ContainerPort(9090, TCP, "metrics"),
                    ),
                    (),
                    "n1" if i < local_per_namespace else f"n{2 + index % 49}",
                )
            )
    dns = Pod(
        "kube-system",
        "coredns",
        {"k8s-app": "kube-dns"},
        (ipaddress.ip_address("fd00:10:ffff::53"), ipaddress.ip_address("10.131.255.53")),
        (ContainerPort(53, UDP, "dns"), ContainerPort(53, TCP, "dns-tcp")),
        (
            Frontend(ipaddress.ip_address("fd00:96::a"), UDP, 53, "dns"),
            Frontend(ipaddress.ip_address("10.96.0.10"), UDP, 53, "dns"),
        ),
        "n2",
    )
    # 500 services: one per (namespace, app), endpoints = that app's pods.
    by_key = {p.key: p for p in pods}
    service = 0
    for n in range(namespaces):
        for a in range(len(APPS)):
            service += 1
            v6 = ipaddress.IPv6Address(int(ipaddress.IPv6Address("fd00:96::")) + 0x1000 + service)
            v4 = ipaddress.IPv4Address(int(ipaddress.IPv4Address("10.96.0.0")) + 0x100 + service)
            for i in range(a, per_namespace, len(APPS)):
                key = PodKey(f"ns{n}", f"pod{i}")
                by_key[key] = replace(
                    by_key[key],
                    frontends=(Frontend(v6, TCP, 80, "http"), Frontend(v4, TCP, 80, "http")),
                )
    policies: list[NetworkPolicy] = []
    internet = (
        Peer(
            ip_block=IPBlock(ipaddress.ip_network("::/0"), (ipaddress.ip_network("fd00:10::/48"),))
        ),
        Peer(
            ip_block=IPBlock(
                ipaddress.ip_network("0.0.0.0/0"), (ipaddress.ip_network("10.128.0.0/14"),)
            )
        ),
    )
    dns_peer = Peer(pod_selector=sel(**{"k8s-app": "kube-dns"}), namespace_selector=LabelSelector())
    for n in range(namespaces):
        ns = f"ns{n}"

        def policy(
            name: str,
            selector: LabelSelector,
            ingress: Sequence[PolicyRule] = (),
            egress: Sequence[PolicyRule] = (),
            types: Sequence[str] = ("Ingress",),
            ns: str = ns,
        ) -> NetworkPolicy:
            return NetworkPolicy(
                ns, name, selector, frozenset(types), tuple(ingress), tuple(egress)
            )

        policies.append(policy("default-deny", LabelSelector()))
        for a, app in enumerate(APPS[:8]):
            policies.append(
                policy(
                    f"{app}-from-same-app",
                    sel(app=app),
                    [PolicyRule((Peer(pod_selector=sel(app=app)),), (PolicyPort(TCP, "http"),))],
                )
            )
            if a < 4:
                other_team = f"t{(n + a + 1) % 10}"
                policies.append(
                    policy(
                        f"{app}-from-team-{other_team}",
                        sel(app=app, tier="frontend"),
                        [
                            PolicyRule(
                                (
                                    Peer(
                                        pod_selector=sel(tier="frontend"),
                                        namespace_selector=sel(team=other_team),
                                    ),
                                ),
                                (PolicyPort(TCP, "http"), PolicyPort(TCP, 9090)),
                            )
                        ],
                    )
                )
        policies.append(
            policy(
                "egress-dns",
                LabelSelector(),
                egress=[PolicyRule((dns_peer,), (PolicyPort(UDP, 53), PolicyPort(TCP, 53)))],
                types=("Egress",),
            )
        )
        policies.append(
            policy(
                "frontend-to-backend",
                sel(tier="frontend"),
                egress=[
                    PolicyRule(
                        (Peer(pod_selector=sel(tier="backend")),), (PolicyPort(TCP, "http"),)
                    )
                ],
                types=("Egress",),
            )
        )
        policies.append(
            policy(
                "frontend-to-internet",
                sel(tier="frontend"),
                egress=[PolicyRule(internet, (PolicyPort(TCP, 443),))],
                types=("Egress",),
            )
        )
        policies.append(
            policy(
                "backend-from-frontend",
                sel(tier="backend"),
                [
                    PolicyRule(
                        (Peer(pod_selector=sel(tier="frontend")),), (PolicyPort(TCP, "http"),)
                    )
                ],
            )
        )
        policies.append(
            policy(
                "db-from-backend",
                sel(tier="db"),
                [
                    PolicyRule(
                        (Peer(pod_selector=sel(tier="backend")),), (PolicyPort(TCP, 5432, 5439),)
                    )
                ],
            )
        )
        policies.append(policy("app9-open", sel(app="app9"), [PolicyRule()]))
        policies.append(
            policy(
                "metrics-from-monitoring",
                LabelSelector(),
                [
                    PolicyRule(
                        (Peer(namespace_selector=sel(env="prod")),), (PolicyPort(TCP, "metrics"),)
                    )
                ],
            )
        )
    nodes = [Node("n1", {ipaddress.ip_address("fd00::1"), ipaddress.ip_address("10.0.0.1")})]
    return Cluster.of(spaces, [*by_key.values(), dns], policies, nodes)


def rules_one_per_peer(rules: PodRules) -> int:
    """Rules a set-less renderer writes: one per peer address (range) and port entry."""
    total = 0
    for direction in (rules.ingress, rules.egress):
        for rule in direction.rules:
            peers = 1 if rule.peers is None else len(rule.peers)
            ports = 1 if rule.ports is None else len(rule.ports.ranges)
            total += peers * ports
        total += sum(len(s.services) for s in direction.services)
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--namespaces", type=int, default=50)
    parser.add_argument("--pods-per-namespace", type=int, default=100)
    parser.add_argument("--local-per-namespace", type=int, default=2)
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("policy_scale needs root (network namespaces, nft)")

    cluster = build_cluster(args.namespaces, args.pods_per_namespace, args.local_per_namespace)
    pods = len(cluster.pods) - 1  # coredns is a peer, not one of the counted pods
    log(f"cluster: {pods} pods, {len(cluster.policies)} policies")

    started = time.perf_counter()
    compiled = compile_node(cluster, "n1")
    compile_s = time.perf_counter() - started
    log(f"compiled {len(compiled)} local pods in {compile_s:.3f}s")

    tag = secrets.token_hex(3)
    netns = {key: f"s6bench-{tag}-{i}" for i, key in enumerate(sorted(compiled))}
    try:
        for name in netns.values():
            subprocess.run(["ip", "netns", "add", name], check=True)
        backend = NftablesBackend(workers=args.workers)
        started = time.perf_counter()
        backend.apply_many({netns[k]: rules for k, rules in compiled.items()})
        program_s = time.perf_counter() - started
        log(f"programmed {len(netns)} pods in {program_s:.3f}s")

        # One peer pod (not on this node) goes from tier frontend to backend: the local pods
        # of its namespace whose policies name either tier, and those of the namespaces
        # whose policies admit frontends of its team, are recompiled and reprogrammed.
        moved = cluster.pods[PodKey("ns0", "pod9")]
        after, changed = cluster.with_([replace(moved, labels={**moved.labels, "tier": "backend"})])
        started = time.perf_counter()
        updates = recompile(cluster, after, changed, "n1")
        outcomes = backend.apply_many({netns[k]: r for k, r in updates.items()})
        label_change_s = time.perf_counter() - started
        kinds = sorted(set(outcomes.values()))
        log(f"label change: {len(updates)} pods recompiled, {kinds}, {label_change_s:.3f}s")
        compiled.update({k: r for k, r in updates.items() if r is not None})

        tables = {k: render(r) for k, r in compiled.items()}
        nft_rules = sum(len(chain) for t in tables.values() if t for _, chain in t.rules)
        nft_sets = sum(len(t.sets) for t in tables.values() if t)
        nft_elements = sum(len(s.elements) for t in tables.values() if t for s in t.sets)
        # The kernel's own count for one pod, to keep the rendered counts honest.
        key = next(k for k, t in tables.items() if t is not None)
        listing = json.loads(run_nft(netns[key], ["-j", "list", "table", "inet", backend.table]))
        kernel_rules = sum(1 for item in listing["nftables"] if "rule" in item)
        table = tables[key]
        assert table is not None and kernel_rules == sum(len(c) for _, c in table.rules)
        naive = sum(rules_one_per_peer(r) for r in compiled.values())
    finally:
        for name in netns.values():
            subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)

    print(
        json.dumps(
            {
                "bench": "policy_scale",
                "policies": len(cluster.policies),
                "pods": pods,
                "local_pods": len(compiled),
                "compile_s": round(compile_s, 4),
                "program_s": round(program_s, 4),
                "label_change_s": round(label_change_s, 4),
                "label_change_pods": len(updates),
                "nft_rules": nft_rules,
                "nft_sets": nft_sets,
                "nft_set_elements": nft_elements,
                "rules_one_per_peer": naive,
            }
        )
    )


if __name__ == "__main__":
    main()
