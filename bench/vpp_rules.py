"""Benchmark: program N NodePort-like `Rule`s into VPP, classifier (ours) vs ACL+ABF.

Rule i belongs to service i // 2 (TCP for even i, UDP for odd: a NodePort of both
protocols), to the node's address 2001:db8::<k>/128 and port 30000 + service % 2768 (the
NodePort range; k grows every 2,768 services), looked up in the service's table
(1000 + service); every tenth service is instead a load balancer IP fd00:96::<service>/128
with a source range 2001:db8:<service>::/48 (loadBalancerSourceRanges: a second shape).
That is what render makes of a cluster whose NodePort services each have a table; 10,000
rules are about 5,000 tables.

For each engine (`VppBackend(rule_engine=...)`) into the same VPP, emptied before each:

- `apply_s`: `backend.apply(plan(config, backend.dump()))` on an empty VPP (dump and plan
  untimed): tables, their fallback routes, and the rules;
- `restart_changes`, `restart_dump_s`: a new backend's dump must plan nothing;
- `add_one_s`, `remove_one_s`: one more service's two rules added, then removed again
  (incremental changes on top of N rules);
- `cleanup_s`: everything removed (`plan(NodeConfig(), dump())`), and nothing left.

The reference (ABF, what the backend used before) runs at `--reference-rules` (default
2,000: its attach cost grows with the cube of the policies — 4,000 one-rule policies took
90 s — so 10,000 is out of reach); ours at that size too and at `--rules`. `ratio` = ours
/ reference apply seconds at the reference's size (lower is better). Which VPP: as
bench/vpp_programming.py (`--vpp-bin` starts one in a temp dir). Progress to stderr; the
last stdout line is one JSON object. No timing is asserted: the host is shared.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from ipaddress import IPv6Network
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as bench/<file>.py
sys.path.insert(0, str(Path(__file__).resolve().parent))

from vpp_programming import log, vpp_target

from srv6ctl.dataplane.model import NodeConfig, Rule
from srv6ctl.dataplane.reconcile import plan
from srv6ctl.dataplane.vpp import RuleEngine, VppBackend

NODEPORTS = 2768  # 30000-32767
TABLE_BASE = 1000


def service_rules(service: int, table_base: int = TABLE_BASE) -> list[Rule]:
    table = table_base + service
    if service % 10 == 9:
        vip = IPv6Network((0xFD00_0096 << 96 | service, 128))
        source = IPv6Network((0x2001_0DB8 << 96 | service << 80, 48))
        return [Rule(vip, table, source=source)]
    node = IPv6Network((0x2001_0DB8 << 96 | (1 + service // NODEPORTS), 128))
    port = 30000 + service % NODEPORTS
    return [Rule(node, table, "TCP", port), Rule(node, table, "UDP", port)]


def make_config(rules: int, table_base: int = TABLE_BASE) -> NodeConfig:
    found: list[Rule] = []
    service = 0
    while len(found) < rules:
        found += service_rules(service, table_base)
        service += 1
    return NodeConfig(rules=frozenset(found[:rules]))


def timed(backend: VppBackend, config: NodeConfig) -> tuple[float, int]:
    changes = plan(backend.as_held(config), backend.dump())
    started = time.perf_counter()
    backend.apply(changes)
    return time.perf_counter() - started, len(changes)


def bench(
    api_socket: str, engine: RuleEngine, rules: int, api_dir: str | None, table_base: int
) -> dict[str, Any]:
    """One engine's run; its own tables (from `table_base`: each run creates as many)."""
    config = make_config(rules, table_base)
    options: dict[str, Any] = {"rule_engine": engine, "api_dir": api_dir, "timeout": 600.0}
    with VppBackend(api_socket, **options) as backend:
        if not backend.capabilities.rules:
            return {"error": backend.capabilities.notes[-1]}
        backend.apply(plan(NodeConfig(), backend.dump()))
        writes = backend.writes
        apply_s, changes = timed(backend, config)
        writes = backend.writes - writes
    log(f"{engine} {rules}: applied {changes} changes in {apply_s:.2f}s")
    with VppBackend(api_socket, **options) as restarted:
        started = time.perf_counter()
        held = restarted.dump()
        restart_dump_s = time.perf_counter() - started
        restart_changes = len(plan(restarted.as_held(config), held))
        loaded = held.rules == config.rules
        extra = NodeConfig(rules=config.rules | frozenset(service_rules(rules, table_base)))
        add_one_s, _ = timed(restarted, extra)
        remove_one_s, _ = timed(restarted, config)
        cleanup_s, _ = timed(restarted, NodeConfig())
        left = len(restarted.dump().rules)
    result = {
        "apply_s": round(apply_s, 3),
        "changes": changes,
        "writes": writes,
        "rules_per_s": round(rules / apply_s) if apply_s else None,
        "loaded": loaded,
        "restart_changes": restart_changes,
        "restart_dump_s": round(restart_dump_s, 3),
        "add_one_s": round(add_one_s, 4),
        "remove_one_s": round(remove_one_s, 4),
        "cleanup_s": round(cleanup_s, 3),
        "left_after_cleanup": left,
    }
    log(f"{engine} {rules}: {result}")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rules", type=int, default=10_000)
    parser.add_argument("--reference-rules", type=int, default=2_000)
    parser.add_argument("--api-socket", default="/run/vpp/api.sock")
    parser.add_argument("--cli-socket", default="/run/vpp/cli.sock")
    parser.add_argument("--api-dir", help="VPP's own share/vpp/api (ABF needs abf.api.json)")
    parser.add_argument("--vpp-bin", help="start this vpp for the run instead")
    parser.add_argument("--plugin-path", help="its plugins (default: ../lib/*/vpp_plugins)")
    args = parser.parse_args(argv)
    if args.api_dir is None and args.vpp_bin:
        args.api_dir = str(Path(args.vpp_bin).resolve().parent.parent / "share" / "vpp" / "api")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with vpp_target(args) as (api_socket, _cli):
        with VppBackend(api_socket) as probe:
            version = probe.version
            # One uplink (an operator's interface: untagged), where both engines attach.
            probe.cli("create loopback interface")
        reference = bench(api_socket, "abf", args.reference_rules, args.api_dir, 100_000)
        ours_small = bench(api_socket, "classify", args.reference_rules, args.api_dir, 200_000)
        ours = bench(api_socket, "classify", args.rules, args.api_dir, 300_000)
    ratio = None
    if reference.get("apply_s") and ours_small.get("apply_s"):
        ratio = round(ours_small["apply_s"] / reference["apply_s"], 4)
    result = {
        "bench": "vpp_rules",
        "vpp": version,
        "rules": args.rules,
        "reference_rules": args.reference_rules,
        "ours": ours,
        "ours_at_reference_size": ours_small,
        "reference_abf": reference,
        "ratio": ratio,
    }
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
