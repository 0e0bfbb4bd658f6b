"""Benchmark: CNI ADD and DEL latency of srv6-cni against Debian's reference ptp + host-local.

Every plugin is run exactly as a container runtime runs it — a fresh process per call,
CNI_* env, config on stdin — from inside a throw-away "node" namespace, one pod after the
other, each pod in its own fresh namespace:

- `ours`: the self-contained executable the DaemonSet installs (cni/freeze.py, built here
  by scripts/build-cni.sh unless `--executable` names one), talking to a `CniServer`
  (started here, in this process) with a temp SQLite store, IPv6-only plan;
- `ours_launcher`: the same shim as `srv6-cni install --python` writes it (a launcher
  running the shim's modules with `python -I -S`), against the same server. The venv's
  console script (what the tests run; `site` and the editable install's finder load on
  every call) is timed too, and reported on stderr;
- `reference`: /usr/lib/cni/ptp with host-local IPAM on an IPv4 /16: no DAD, so its ADD is
  ptp's wiring and process costs, the figure ours is compared with (`ratio`);
- `reference_ipv6`: the same on an IPv6 /64. ptp waits for DAD on the pod's address
  (we add ours with IFA_F_NODAD), so expect ~1.5 s per ADD (`ratio_ipv6`).

`--compare-transport` instead measures the shim's transport choice (see cni/README.md):
a fresh Python process doing one request over a length-prefixed JSON frame vs over gRPC
(grpcio, unary call with the JSON as bytes), against in-process servers that answer at
once, plus bare interpreter start-up for scale.

Needs root, iproute2, containernetworking-plugins. Creates and deletes only its own
namespaces. Progress goes to stderr; the last stdout line is one JSON object. No timing is
asserted: comparing is for the reader.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import math
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

REFERENCE_DIR = "/usr/lib/cni"
REFERENCE_SUBNETS = {"ipv4": ("10.99.0.0/16", "0.0.0.0/0"), "ipv6": ("fd00:99::/64", "::/0")}
BUILD_CNI = Path(__file__).resolve().parent.parent / "scripts" / "build-cni.sh"
_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def log(message: str) -> None:
    print(f"[cni_latency] {message}", file=sys.stderr, flush=True)


def srv6_cni() -> str:
    beside = Path(sys.executable).with_name("srv6-cni")
    found = str(beside) if beside.exists() else shutil.which("srv6-cni")
    if not found:
        sys.exit("srv6-cni is not installed (pip install -e . in the venv)")
    return found


# --- namespaces ---------------------------------------------------------------------------


class Namespaces:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.names: list[str] = []

    def add(self, tag: str) -> str:
        name = f"{self.prefix}-{tag}"
        subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
        self.names.append(name)
        return f"/run/netns/{name}"

    def cleanup(self) -> None:
        for name in reversed(self.names):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
        self.names.clear()


@contextlib.contextmanager
def entered(netns: str) -> Iterator[None]:
    """This thread (and the processes it starts) inside `netns`; other threads stay put."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(netns, os.O_RDONLY)
    try:
        if _libc.setns(target, _CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {netns}")
        try:
            yield
        finally:
            if _libc.setns(own, _CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back")
    finally:
        os.close(own)
        os.close(target)


# --- timing -------------------------------------------------------------------------------


def percentile(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def summary(adds: list[float], dels: list[float]) -> dict[str, float]:
    return {
        "add_p50_ms": round(percentile(adds, 50) * 1e3, 2),
        "add_p99_ms": round(percentile(adds, 99) * 1e3, 2),
        "del_p50_ms": round(percentile(dels, 50) * 1e3, 2),
        "del_p99_ms": round(percentile(dels, 99) * 1e3, 2),
    }


def run_plugin(
    binary: str, command: str, config: dict[str, Any], container_id: str, netns: str, path: str
) -> float:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": container_id,
        "CNI_NETNS": netns,
        "CNI_IFNAME": "eth0",
        "CNI_PATH": path,
    }
    start = time.perf_counter()
    done = subprocess.run([binary], env=env, input=json.dumps(config).encode(), capture_output=True)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(
            f"{os.path.basename(binary)} {command} {container_id} failed: "
            f"{done.stdout.decode().strip()} {done.stderr.decode().strip()}"
        )
    return elapsed


def time_plugin(
    label: str,
    binary: str,
    config: dict[str, Any],
    pods: int,
    namespaces: Namespaces,
    node: str,
    path: str,
) -> tuple[list[float], list[float]]:
    pod_paths = [namespaces.add(f"{label}-p{n}") for n in range(pods + 1)]
    adds: list[float] = []
    dels: list[float] = []
    with entered(node):  # the runtime runs plugins in the node's namespace
        # Pod 0 warms caches (binary, page cache, first store write) and is not counted.
        run_plugin(binary, "ADD", config, f"{label}-warm", pod_paths[0], path)
        run_plugin(binary, "DEL", config, f"{label}-warm", pod_paths[0], path)
        for n in range(pods):
            adds.append(run_plugin(binary, "ADD", config, f"{label}-{n}", pod_paths[n + 1], path))
            if (n + 1) % 10 == 0:
                log(f"{label}: {n + 1}/{pods} ADDs, last {adds[-1] * 1e3:.1f} ms")
        for n in range(pods):
            dels.append(run_plugin(binary, "DEL", config, f"{label}-{n}", pod_paths[n + 1], path))
    return adds, dels


def self_contained(work: str) -> str:
    """The executable the image ships, built from this tree (scripts/build-cni.sh)."""
    output = os.path.join(work, "static", "srv6-cni")
    done = subprocess.run([str(BUILD_CNI), output], capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"building the self-contained srv6-cni failed:\n{done.stderr}")
    log(done.stdout.strip())
    return output


def bench_ours(
    pods: int, work: str, namespaces: Namespaces, executable: str
) -> dict[str, dict[str, float]]:
    from cni.install import install
    from cni.server import CniServer
    from cni.wiring import PodWiring
    from ipam6.allocator import Allocator
    from ipam6.plan import AddressPlan
    from ipam6.store.sqlite import SqliteStore

    node = namespaces.add("ours-node")
    plan = AddressPlan.from_mapping({"podCIDRv6": "fd00:10::/48"})
    allocator = Allocator(SqliteStore(os.path.join(work, "ipam.db")), plan)
    socket_path = os.path.join(work, "cni.sock")
    server = CniServer("bench-node", allocator, PodWiring(node), socket_path=socket_path)
    handled: dict[str, list[float]] = {"ADD": [], "DEL": []}
    handle = server.handle

    def timed_handle(payload: object) -> dict[str, Any]:
        start = time.perf_counter()
        reply = handle(payload)
        if isinstance(payload, dict) and payload.get("command") in handled:
            handled[payload["command"]].append(time.perf_counter() - start)
        return reply

    server.handle = timed_handle  # type: ignore[method-assign]
    server.start()
    try:
        config = {
            "cniVersion": "1.1.0",
            "name": "bench",
            "type": "srv6-cni",
            "agentSocket": socket_path,
        }
        bin_dir = os.path.join(work, "bin")
        plugin = str(install(bin_dir, os.path.join(work, "lib"), executable=executable))
        adds, dels = time_plugin("ours", plugin, config, pods, namespaces, node, bin_dir)
        ours = summary(adds, dels)
        handled_executable = {k: list(v) for k, v in handled.items()}
        launcher_dir = os.path.join(work, "launcher")
        launcher = str(install(launcher_dir, os.path.join(work, "lib"), python=sys.executable))
        adds, dels = time_plugin("ours-py", launcher, config, pods, namespaces, node, bin_dir)
        ours_launcher = summary(adds, dels)
        venv_adds, venv_dels = time_plugin(
            "ours-venv", srv6_cni(), config, pods, namespaces, node, bin_dir
        )
        log(f"ours via the venv console script {srv6_cni()}: {summary(venv_adds, venv_dels)}")
    finally:
        server.stop()
    log(
        "ours, agent side only: ADD p50 "
        f"{percentile(handled_executable['ADD'], 50) * 1e3:.1f} ms, DEL p50 "
        f"{percentile(handled_executable['DEL'], 50) * 1e3:.1f} ms (the rest is the shim process)"
    )
    return {"ours": ours, "ours_launcher": ours_launcher}


def bench_reference(pods: int, work: str, namespaces: Namespaces, family: str) -> dict[str, float]:
    ptp = os.path.join(REFERENCE_DIR, "ptp")
    if not os.path.exists(ptp) or not os.path.exists(os.path.join(REFERENCE_DIR, "host-local")):
        sys.exit(
            f"reference plugins missing in {REFERENCE_DIR}: apt-get install "
            "containernetworking-plugins"
        )
    node = namespaces.add(f"ref-{family}-node")
    subnet, default_route = REFERENCE_SUBNETS[family]
    config = {
        "cniVersion": "1.0.0",
        "name": f"bench-reference-{family}",
        "type": "ptp",
        "ipMasq": False,
        "ipam": {
            "type": "host-local",
            "ranges": [[{"subnet": subnet}]],
            "routes": [{"dst": default_route}],
            "dataDir": os.path.join(work, f"host-local-{family}"),
        },
    }
    label = f"ref-{family[-1]}"
    adds, dels = time_plugin(label, ptp, config, pods, namespaces, node, REFERENCE_DIR)
    return summary(adds, dels)


# --- transport comparison -----------------------------------------------------------------

# Both clients do what the shim does around its transport: decode the request JSON, send
# it, wait for and decode the reply. The JSON one uses the shim's own modules.
_JSON_CLIENT = """
import _socket, sys
from cni import protocol
sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
sock.connect(sys.argv[1])
protocol.send_frame(sock, protocol.loads(sys.argv[2]))
print(protocol.recv_frame(sock))
"""
_GRPC_CLIENT = """
import json, sys
import grpc
channel = grpc.insecure_channel("unix:" + sys.argv[1])
call = channel.unary_unary("/srv6.Cni/Call")
print(call(sys.argv[2].encode(), timeout=10))
"""


def _json_stub(path: str, stop: threading.Event) -> threading.Thread:
    from cni import protocol

    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(16)
    listener.settimeout(0.2)

    def serve() -> None:
        with listener:
            while not stop.is_set():
                try:
                    conn, _ = listener.accept()
                except TimeoutError:
                    continue
                with conn:
                    protocol.recv_frame(conn)
                    protocol.send_frame(conn, {"result": None})

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


def compare_transport(rounds: int) -> dict[str, Any]:
    try:
        import grpc  # type: ignore[import-untyped]
    except ImportError:
        sys.exit("grpcio is not installed: the comparison needs it")
    from concurrent.futures import ThreadPoolExecutor

    work = tempfile.mkdtemp(prefix="s6cni-transport-")
    stop = threading.Event()
    json_path, grpc_path = os.path.join(work, "json.sock"), os.path.join(work, "grpc.sock")
    _json_stub(json_path, stop)
    server = grpc.server(ThreadPoolExecutor(max_workers=4))
    handler = grpc.method_handlers_generic_handler(
        "srv6.Cni", {"Call": grpc.unary_unary_rpc_method_handler(lambda request, _ctx: b"{}")}
    )
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port("unix:" + grpc_path)
    server.start()
    payload = json.dumps({"command": "STATUS", "config": {"cniVersion": "1.1.0"}})
    python = sys.executable
    root = str(Path(__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": root}
    isolated = f"import sys; sys.path.insert(0, {root!r})\n" + _JSON_CLIENT

    def timed(argv: list[str]) -> float:
        start = time.perf_counter()
        subprocess.run(argv, check=True, capture_output=True, env=env)
        return time.perf_counter() - start

    cases: dict[str, Callable[[], float]] = {
        "python_startup": lambda: timed([python, "-c", "pass"]),
        "import_grpc_only": lambda: timed([python, "-c", "import grpc"]),
        "json_frame_request": lambda: timed([python, "-c", _JSON_CLIENT, json_path, payload]),
        "grpc_request": lambda: timed([python, "-c", _GRPC_CLIENT, grpc_path, payload]),
        # The installed shim's form: python -I -S (gRPC cannot run without site-packages).
        "python_isolated_startup": lambda: timed([python, "-I", "-S", "-c", "pass"]),
        "json_frame_request_isolated": lambda: timed(
            [python, "-I", "-S", "-c", isolated, json_path, payload]
        ),
    }
    samples: dict[str, list[float]] = {name: [] for name in cases}
    try:
        for _ in range(rounds):
            for name, case in cases.items():  # interleaved: machine noise hits all alike
                samples[name].append(case())
    finally:
        stop.set()
        server.stop(0)
        shutil.rmtree(work, ignore_errors=True)
    result: dict[str, Any] = {"bench": "cni_transport", "rounds": rounds}
    for name, values in samples.items():
        result[f"{name}_p50_ms"] = round(statistics.median(values) * 1e3, 2)
    result["grpc_extra_p50_ms"] = round(
        result["grpc_request_p50_ms"] - result["json_frame_request_p50_ms"], 2
    )
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, default=50, help="pods per plugin (default 50)")
    parser.add_argument(
        "--compare-transport",
        action="store_true",
        help="measure JSON-frame vs gRPC shim requests instead",
    )
    parser.add_argument("--rounds", type=int, default=30, help="rounds for --compare-transport")
    parser.add_argument(
        "--executable", help="a self-contained srv6-cni to time (default: build one from here)"
    )
    options = parser.parse_args()
    if options.compare_transport:
        print(json.dumps(compare_transport(options.rounds)))
        return 0
    if os.geteuid() != 0:
        sys.exit("needs root (network namespaces)")
    namespaces = Namespaces(f"s6bench-{os.getpid()}")
    work = tempfile.mkdtemp(prefix="s6cni-bench-")
    try:
        executable = options.executable or self_contained(work)
        log(f"ours: {options.pods} pods, self-contained executable then launcher")
        ours = bench_ours(options.pods, work, namespaces, executable)
        log(f"reference ptp + host-local, IPv4: {options.pods} pods")
        reference = bench_reference(options.pods, work, namespaces, "ipv4")
        log(f"reference ptp + host-local, IPv6: {options.pods} pods (DAD makes each ADD slow)")
        reference_ipv6 = bench_reference(options.pods, work, namespaces, "ipv6")
    finally:
        namespaces.cleanup()
        shutil.rmtree(work, ignore_errors=True)

    def ratio(mine: dict[str, float], theirs: dict[str, float]) -> float:
        return round(mine["add_p50_ms"] / theirs["add_p50_ms"], 4)

    print(
        json.dumps(
            {
                "bench": "cni_latency",
                "pods": options.pods,
                **ours,
                "reference": reference,
                "reference_ipv6": reference_ipv6,
                "ratio": ratio(ours["ours"], reference),
                "ratio_launcher": ratio(ours["ours_launcher"], reference),
                "ratio_ipv6": ratio(ours["ours"], reference_ipv6),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
