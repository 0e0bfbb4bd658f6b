"""Benchmark: program N services x B backends into VPP, blocking vs pipelined vs vppctl.

Each service is what render makes of it: an SR policy at its BSID with one segment list
per backend (one SID each, H.Encaps.Red) and a steering of its ClusterIP /128 into it —
on VPP `sr_policy_add`, B-1 `sr_policy_mod` and one `sr_steering_add_del`: B+1 messages.
Three runs of the same services into the same VPP, emptied before each:

- `blocking`: `VppBackend(window=1)`: one request, wait for its reply, the next;
- `pipelined`: `VppBackend(window=256)` (the default): up to 256 requests in flight,
  replies matched by context (VPP handles them in order);
- `reference`: the same objects as a VPP CLI script (`sr policy add ...`, `sr policy mod
  ... add sl ...`, `sr steer l3 ...`) run inside VPP by `vppctl exec` — no API, no
  client: the floor of what VPP itself costs.

Timed for ours: `backend.apply(plan(desired, backend.dump()))` on an empty VPP — dump,
plan and apply, what an agent's first sync costs — and `apply` alone. Every run is
checked by a dump (all policies, lists and steerings there); then a restarted backend
must plan nothing and write nothing. Rates are services x backends (segment lists)
programmed per second; `ratio` = ours (pipelined, apply alone) seconds / the reference's,
lower is better (1.0: as fast as VPP's own CLI), and `speedup` = pipelined / blocking rate.

Which VPP: `--api-socket` and `--cli-socket` of a running VPP 25.10 (that is then
emptied of SR objects: use one that is yours), or `--vpp-bin` to start one in a temp dir
(no DPDK, 4k pages). Progress goes to stderr; the last stdout line is one JSON object.
No timing is asserted: the host is shared, compare ratios rather than seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from ipaddress import IPv6Network
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as bench/<file>.py

from srv6ctl.dataplane.model import (
    EncapMode,
    IPv6Address,
    NodeConfig,
    SegmentList,
    SrPolicy,
    Steering,
)
from srv6ctl.dataplane.reconcile import plan
from srv6ctl.dataplane.vpp import VppBackend
from srv6ctl.dataplane.vpp_sr_codec import held_policy
from srv6ctl.lab.vpp import plugin_path

BSID_BASE = int(IPv6Address("fcbb:bb00::1:0"))
CLUSTER_BASE = int(IPv6Address("fd00:96::1:0"))
STARTUP = """
unix {{ nodaemon cli-listen {dir}/cli.sock log {dir}/vpp.log poll-sleep-usec 100 }}
api-segment {{ prefix srv6bench{pid} }}
socksvr {{ socket-name {dir}/api.sock }}
statseg {{ socket-name {dir}/stats.sock size 64m page-size 4k }}
memory {{ main-heap-size 1G main-heap-page-size 4k }}
buffers {{ buffers-per-numa 8192 page-size 4k }}
plugins {{
{plugins}  plugin dpdk_plugin.so {{ disable }}
}}
"""


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def make_config(services: int, backends: int, nodes: int) -> NodeConfig:
    """Service n: BSID fcbb:bb00::1:0 + n, ClusterIP fd00:96::1:0 + n, backends on nodes
    spread round-robin: pod SIDs fcbb:bb00:<node>::1:<k>."""
    policies, steerings = [], []
    for n in range(services):
        bsid = IPv6Address(BSID_BASE + n)
        lists = []
        for b in range(backends):
            node = 1 + (n + b) % nodes
            pod = 2 + (n * backends + b) % 4000
            sid = IPv6Address(f"fcbb:bb00:{node:x}::1:{pod:x}")
            lists.append(SegmentList((sid,)))
        policies.append(SrPolicy(bsid, tuple(lists), mode=EncapMode.ENCAP_RED))
        steerings.append(Steering(IPv6Network((CLUSTER_BASE + n, 128)), bsid))
    return NodeConfig(
        encap_source=IPv6Address("2001:db8::1"),
        policies=frozenset(policies),
        steerings=frozenset(steerings),
    )


def cli_script(config: NodeConfig) -> str:
    """The same objects as CLI, with the weights the backend gives VPP (`held_policy`)."""
    lines = [f"set sr encaps source addr {config.encap_source}"]
    for policy in sorted(config.policies, key=lambda p: int(p.bsid)):
        first, *rest = held_policy(policy).segment_lists
        lines.append(
            f"sr policy add bsid {policy.bsid} next {first.segments[0]} weight {first.weight} encap"
        )
        for sl in rest:
            lines.append(
                f"sr policy mod bsid {policy.bsid} add sl next {sl.segments[0]} weight {sl.weight}"
            )
    for st in sorted(config.steerings, key=lambda s: int(s.prefix.network_address)):
        lines.append(f"sr steer l3 {st.prefix} via bsid {st.bsid}")
    return "\n".join(lines) + "\n"


class OwnVpp:
    def __init__(self, binary: str, plugins: str | None) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="srv6bench-vpp-"))
        found = plugins or plugin_path(binary)
        lines = f"  path {found}\n" if found else ""  # None: a packaged VPP's own path
        conf = STARTUP.format(dir=self.dir, pid=os.getpid(), plugins=lines)
        (self.dir / "startup.conf").write_text(conf)
        self.api_socket = str(self.dir / "api.sock")
        self.cli_socket = str(self.dir / "cli.sock")
        out = open(self.dir / "stdout.log", "wb")  # noqa: SIM115 - kept by the process
        self.process = subprocess.Popen(
            [binary, "-c", str(self.dir / "startup.conf")], stdout=out, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 30
        while True:
            if self.process.poll() is not None:
                raise RuntimeError((self.dir / "stdout.log").read_text()[-2000:])
            try:
                with socket.socket(socket.AF_UNIX) as probe:
                    probe.connect(self.api_socket)
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def close(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


@contextmanager
def vpp_target(args: argparse.Namespace) -> Iterator[tuple[str, str]]:
    if args.vpp_bin:
        own = OwnVpp(args.vpp_bin, args.plugin_path)
        try:
            yield own.api_socket, own.cli_socket
        finally:
            own.close()
    else:
        yield args.api_socket, args.cli_socket


def cpu() -> float:
    usage = os.times()
    return usage.user + usage.system


def empty(api_socket: str) -> None:
    with VppBackend(api_socket, window=256) as backend:
        backend.apply(plan(NodeConfig(), backend.dump()))


def count(api_socket: str, config: NodeConfig) -> bool:
    """VPP holds exactly `config` (as far as SR policies and steerings go), with the
    weights the backend gives VPP (`as_held`)."""
    with VppBackend(api_socket) as backend:
        return not plan(backend.as_held(config), backend.dump())


def bench_ours(api_socket: str, config: NodeConfig, window: int) -> dict[str, Any]:
    empty(api_socket)
    with VppBackend(api_socket, window=window) as backend:
        trips = backend.channel.round_trips
        started, cpu_started = time.perf_counter(), cpu()
        changes = plan(config, backend.dump())
        applied_at = time.perf_counter()
        backend.apply(changes)
        done = time.perf_counter()
        result = {
            "end_to_end_s": done - started,
            "apply_s": done - applied_at,
            "client_cpu_s": round(cpu() - cpu_started, 3),
            "messages": backend.writes,
            "round_trips": backend.channel.round_trips - trips,
        }
    result["loaded"] = count(api_socket, config)
    return result


def bench_reference(
    api_socket: str, cli_socket: str, vppctl: str, config: NodeConfig
) -> dict[str, Any]:
    empty(api_socket)
    with tempfile.NamedTemporaryFile("w", suffix=".vpp", delete=False) as script:
        script.write(cli_script(config))
    try:
        started = time.perf_counter()
        done = subprocess.run(
            [vppctl, "-s", cli_socket, "exec", script.name],
            capture_output=True,
            text=True,
            check=False,
        )
        seconds = time.perf_counter() - started
    finally:
        os.unlink(script.name)
    error = (done.stdout + done.stderr).strip()[:300] or None
    return {"seconds": seconds, "error": error, "loaded": count(api_socket, config)}


def restart_check(api_socket: str, config: NodeConfig) -> dict[str, Any]:
    with VppBackend(api_socket) as backend:
        changes = plan(backend.as_held(config), backend.dump())
        backend.apply(changes)
        return {"changes": len(changes), "writes": backend.writes}


def rate(work: int, seconds: float | None) -> float | None:
    return None if not seconds else round(work / seconds)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=10_000)
    parser.add_argument("--backends", type=int, default=2)
    parser.add_argument("--nodes", type=int, default=50)
    parser.add_argument("--window", type=int, default=256)
    parser.add_argument("--quick", action="store_true", help="1000 services x 2 backends")
    parser.add_argument("--api-socket", default="/run/vpp/api.sock")
    parser.add_argument("--cli-socket", default="/run/vpp/cli.sock")
    parser.add_argument("--vppctl", default=None, help="vppctl (default: beside --vpp-bin)")
    parser.add_argument("--vpp-bin", help="start this vpp for the run instead")
    parser.add_argument("--plugin-path", help="its plugins (default: ../lib/*/vpp_plugins)")
    args = parser.parse_args(argv)
    if args.quick:
        args.services, args.backends = 1000, 2
    vppctl = args.vppctl or (
        str(Path(args.vpp_bin).with_name("vppctl")) if args.vpp_bin else shutil.which("vppctl")
    )
    if not vppctl:
        parser.error("no vppctl: give --vppctl")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    config = make_config(args.services, args.backends, args.nodes)
    work = args.services * args.backends
    log(f"{args.services} services x {args.backends} backends")
    with vpp_target(args) as (api_socket, cli_socket):
        with VppBackend(api_socket) as probe:
            version = probe.version
        blocking = bench_ours(api_socket, config, window=1)
        log(f"blocking: {blocking}")
        pipelined = bench_ours(api_socket, config, window=args.window)
        log(f"pipelined: {pipelined}")
        restart = restart_check(api_socket, config)
        log(f"restart: {restart}")
        reference = bench_reference(api_socket, cli_socket, vppctl, config)
        log(f"vppctl exec: {reference}")
        empty(api_socket)

    pipelined_rate = rate(work, pipelined["apply_s"]) or 0.0
    reference_rate = rate(work, reference["seconds"])
    blocking_rate = rate(work, blocking["apply_s"])
    result = {
        "bench": "vpp_programming",
        "vpp": version,
        "services": args.services,
        "backends": args.backends,
        "messages": pipelined["messages"],
        "blocking_apply_s": round(blocking["apply_s"], 3),
        "blocking_end_to_end_s": round(blocking["end_to_end_s"], 3),
        "pipelined_apply_s": round(pipelined["apply_s"], 3),
        "pipelined_end_to_end_s": round(pipelined["end_to_end_s"], 3),
        "reference_vppctl_exec_s": round(reference["seconds"], 3),
        "blocking_per_s": blocking_rate,
        "pipelined_per_s": pipelined_rate,
        "pipelined_end_to_end_per_s": rate(work, pipelined["end_to_end_s"]),
        "reference_per_s": reference_rate,
        "ratio": (
            round(pipelined["apply_s"] / reference["seconds"], 3) if reference["seconds"] else None
        ),
        "speedup": None if not blocking_rate else round(pipelined_rate / blocking_rate, 2),
        "blocking_round_trips": blocking["round_trips"],
        "pipelined_round_trips": pipelined["round_trips"],
        "pipelined_client_cpu_s": pipelined["client_cpu_s"],
        "blocking_loaded": blocking["loaded"],
        "pipelined_loaded": pipelined["loaded"],
        "reference_loaded": reference["loaded"],
        "reference_error": reference["error"],
        "restart_changes": restart["changes"],
        "restart_writes": restart["writes"],
        "window": args.window,
    }
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
