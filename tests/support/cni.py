"""Shared harness of the srv6-cni tests: throw-away namespaces, a real agent-side server,
and the real `srv6-cni` executable run the way a container runtime runs it.

tests/conftest.py registers its fixtures for every test, as the other tests/support
plugins': `cni_namespaces`, `make_cni_harness` (a started node per call) and `harness` (one
dual-stack node), `cni_driver` and `cni_static_executable` (built once per session, when a
test asks). Fixture names carry `cni` except `harness`, which only the srv6-cni tests use.
Every namespace, socket and store it makes has a unique name and is removed at teardown,
pass or fail. The srv6-cni executable is looked up at the first run, not at import: tests
that never run it do not need it installed.
"""

from __future__ import annotations

import functools
import json
import os
import secrets
import select
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import pytest

from cni.server import CniHooks, CniServer
from cni.wiring import HOST_IFNAME_RE, PodWiring
from ipam6.allocator import Allocator
from ipam6.plan import AddressPlan
from ipam6.store.base import StoreError
from ipam6.store.sqlite import SqliteStore
from tests.support.netns import open_in, run

DUAL_STACK = {"podCIDRv6": "fd00:10::/48", "podCIDRv4": "10.128.0.0/14"}
IPV6_ONLY = {"podCIDRv6": "fd00:10::/48"}
# Five pods per node: a /29 leaves indexes 2..6 (0 is the prefix, 1 the gateway, 7 broadcast).
TINY = {"podCIDRv6": "fd00:10::/48", "podCIDRv4": "10.200.0.0/16", "nodePrefixLengthV4": 29}


ROOT = Path(__file__).resolve().parents[2]
BUILD_CNI = ROOT / "scripts" / "build-cni.sh"
DRIVER_SOURCE = ROOT / "tests" / "cni_driver"
GOPATH_SYSTEM = "/usr/share/gocode"
LIBCNI = Path(GOPATH_SYSTEM, "src/github.com/containernetworking/cni/libcni")


@functools.cache
def srv6_cni() -> str:
    """The srv6-cni executable the tests run."""
    # The whole suite can run against another build, e.g. the self-contained one:
    # SRV6_CNI_EXECUTABLE=build/cni/srv6-cni pytest tests/test_cni.py
    chosen = os.environ.get("SRV6_CNI_EXECUTABLE")
    if chosen:
        return str(Path(chosen).resolve())
    beside_python = Path(sys.executable).with_name("srv6-cni")
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which("srv6-cni")
    if found is None:
        pytest.fail("srv6-cni is not installed: pip install -e . in the venv")
    return found


def unavailable(reason: str) -> NoReturn:
    """Skip for want of a tool; under CI, which installs the toolchain, fail instead."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: these tests must run)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def cni_driver(tmp_path_factory: pytest.TempPathFactory) -> str:
    """tests/cni_driver built offline against Debian's libcni 1.1.2 (GOPATH mode), statically
    (CGO_ENABLED=0): it runs where the node has no C library either."""
    go = shutil.which("go")
    if go is None:
        unavailable("`go` is missing: apt-get install golang-go golang-github-appc-cni-dev")
    if not LIBCNI.is_dir():
        unavailable(
            f"libcni source missing at {LIBCNI}: apt-get install golang-github-appc-cni-dev"
        )
    work = tmp_path_factory.mktemp("cni-driver")
    binary = work / "cni_driver"
    env = {
        **os.environ,
        "GO111MODULE": "off",  # Debian ships libcni as GOPATH source, with no module proxy
        "GOPATH": f"{work / 'gopath'}:{GOPATH_SYSTEM}",
        "GOCACHE": str(work / "gocache"),
        "GOFLAGS": "",
        "CGO_ENABLED": "0",
    }
    done = subprocess.run(
        [go, "build", "-o", str(binary), "."],
        cwd=DRIVER_SOURCE,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if done.returncode != 0:
        pytest.fail(f"building the libcni driver failed:\n{done.stderr}")
    return str(binary)


@pytest.fixture(scope="session")
def cni_static_executable(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The self-contained srv6-cni, built from this tree as the image builds it."""
    output = tmp_path_factory.mktemp("cni-static") / "srv6-cni"
    done = subprocess.run(
        [str(BUILD_CNI), str(output)], capture_output=True, text=True, timeout=600, check=False
    )
    if done.returncode == 3:  # build-cni.sh: the toolchain cannot be installed here
        unavailable(done.stderr.strip())
    assert done.returncode == 0, done.stdout + done.stderr
    return output


# --- namespaces -----------------------------------------------------------------------


def unique(prefix: str = "s6t") -> str:
    return f"{prefix}{secrets.token_hex(4)}"


class Namespaces:
    """Named network namespaces made with `ip netns add`, all deleted by `cleanup`."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def add(self, prefix: str = "s6t") -> str:
        name = unique(prefix)
        run("ip", "netns", "add", name)
        self.names.append(name)
        return f"/run/netns/{name}"

    def delete(self, path: str) -> None:
        name = os.path.basename(path)
        run("ip", "netns", "del", name, check=False)
        if name in self.names:
            self.names.remove(name)

    def cleanup(self) -> None:
        for name in reversed(self.names):
            run("ip", "netns", "del", name, check=False)
        self.names.clear()


def require_netns() -> None:
    """Skip without root/iproute2 — except under CI (CI=true), where that is a failure."""
    if os.geteuid() == 0 and shutil.which("ip") is not None:
        return
    reason = "needs root and iproute2 to create network namespaces"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: these tests must run)")
    pytest.skip(reason)


@pytest.fixture
def cni_namespaces() -> Iterator[Namespaces]:
    require_netns()
    created = Namespaces()
    try:
        yield created
    finally:
        created.cleanup()


def ip(netns: str, *args: str) -> str:
    """`ip -n <netns> ...` output (tests inspect and break things by hand with it)."""
    return run("ip", "-n", os.path.basename(netns), *args).stdout


def node_veths(node_netns: str) -> list[str]:
    links = json.loads(ip(node_netns, "-j", "link", "show"))
    return sorted(link["ifname"] for link in links if HOST_IFNAME_RE.match(link["ifname"]))


# --- real packets -----------------------------------------------------------------------


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return int(~total & 0xFFFF)


def ping(netns: str, destination: str, timeout: float = 2.0, attempts: int = 3) -> bool:
    """An ICMP(v6) echo from inside `netns`; True when the matching reply comes back.

    Raw sockets rather than `ping`: iputils is not installed everywhere the tests run.
    """
    v6 = ":" in destination
    family = socket.AF_INET6 if v6 else socket.AF_INET
    proto = socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP
    sock = open_in(netns, lambda: socket.socket(family, socket.SOCK_RAW, proto))
    ident = secrets.randbits(16)
    with sock:
        for seq in range(1, attempts + 1):
            payload = b"srv6-cni-test"
            kind = 128 if v6 else 8  # echo request; the kernel fills the ICMPv6 checksum
            header = struct.pack("!BBHHH", kind, 0, 0, ident, seq)
            if not v6:
                header = struct.pack("!BBHHH", kind, 0, _checksum(header + payload), ident, seq)
            sock.sendto(header + payload, (destination, 0))
            deadline = time.monotonic() + timeout / attempts
            while (left := deadline - time.monotonic()) > 0:
                ready, _, _ = select.select([sock], [], [], left)
                if not ready:
                    break
                data = sock.recv(4096)
                if not v6:
                    data = data[(data[0] & 0x0F) * 4 :]  # raw IPv4 sockets include the header
                reply_kind, _, _, reply_ident, _ = struct.unpack("!BBHHH", data[:8])
                if reply_kind == (129 if v6 else 0) and reply_ident == ident:
                    return True
    return False


# --- the server and the executable -----------------------------------------------------


class FlakyStore:
    """A store that can be switched to failing: every call raises StoreError while broken."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.broken = False

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            if self.broken:
                raise StoreError(f"store unreachable (test): {name}")
            return attr(*args, **kwargs)

        return call


class RecordingHooks(CniHooks):
    def __init__(self) -> None:
        self.added: list[tuple[Any, Any]] = []
        self.deleted: list[tuple[Any, str]] = []
        self.fail_add = False
        self.check_problems: list[str] = []

    def on_pod_added(self, allocation: Any, attachment: Any) -> None:
        if self.fail_add:
            raise RuntimeError("SID programming failed (test)")
        self.added.append((allocation, attachment))

    def on_pod_deleted(self, allocation: Any, host_ifname: str) -> None:
        self.deleted.append((allocation, host_ifname))

    def check_pod(self, allocation: Any, host_ifname: str) -> list[str]:
        return list(self.check_problems)


@dataclass
class CniRun:
    returncode: int
    output: Any  # parsed stdout JSON, or None when stdout was empty
    stderr: str

    @property
    def code(self) -> int | None:
        return self.output.get("code") if isinstance(self.output, dict) else None


@dataclass
class Harness:
    """One node: its namespace, a running server with a temp SQLite store, and the shim."""

    node: str
    node_netns: str
    socket_path: str
    server: CniServer
    allocator: Allocator
    store: FlakyStore
    hooks: RecordingHooks
    namespaces: Namespaces
    network: str = "srv6"
    pods: list[str] = field(default_factory=list)

    def config(self, version: str = "1.1.0", **extra: Any) -> dict[str, Any]:
        return {
            "cniVersion": version,
            "name": self.network,
            "type": "srv6-cni",
            "agentSocket": self.socket_path,
            **extra,
        }

    def new_pod(self) -> str:
        return self.namespaces.add("s6p")

    def run(
        self,
        command: str,
        config: dict[str, Any] | bytes | None = None,
        *,
        container_id: str | None = None,
        netns: str | None = None,
        ifname: str = "eth0",
        args: str = "",
        drop: tuple[str, ...] = (),
    ) -> CniRun:
        return run_cni(
            command,
            self.config() if config is None else config,
            container_id=container_id,
            netns=netns,
            ifname=ifname,
            args=args,
            drop=drop,
        )

    def add(
        self, container_id: str, netns: str, version: str = "1.1.0", **extra: Any
    ) -> dict[str, Any]:
        done = self.run(
            "ADD", self.config(version, **extra), container_id=container_id, netns=netns
        )
        assert done.returncode == 0, (done.output, done.stderr)
        assert isinstance(done.output, dict)
        return done.output


def run_cni(
    command: str,
    config: dict[str, Any] | bytes | None,
    *,
    container_id: str | None = None,
    netns: str | None = None,
    ifname: str | None = "eth0",
    args: str = "",
    drop: tuple[str, ...] = (),
    path: str = "/opt/cni/bin",
) -> CniRun:
    """Run the real executable as a runtime does: env parameters, config on stdin."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "CNI_COMMAND": command,
        "CNI_PATH": path,
    }
    if container_id is not None:
        env["CNI_CONTAINERID"] = container_id
    if netns is not None:
        env["CNI_NETNS"] = netns
    if ifname is not None:
        env["CNI_IFNAME"] = ifname
    if args:
        env["CNI_ARGS"] = args
    for name in drop:
        env.pop(name, None)
    stdin = config if isinstance(config, bytes) else json.dumps(config or {}).encode()
    done = subprocess.run([srv6_cni()], env=env, input=stdin, capture_output=True, timeout=60)
    out = done.stdout.decode().strip()
    assert "Traceback" not in out + done.stderr.decode(), done.stderr.decode()
    return CniRun(done.returncode, json.loads(out) if out else None, done.stderr.decode())


@pytest.fixture
def make_cni_harness(cni_namespaces: Namespaces) -> Iterator[Callable[..., Harness]]:
    """Factory: `make_cni_harness(plan=DUAL_STACK)` -> a started node harness."""
    started: list[Harness] = []
    temp_dirs: list[str] = []

    def make(plan: dict[str, Any] | None = None, hooks: RecordingHooks | None = None) -> Harness:
        # A short /tmp path: unix socket paths are limited to 107 bytes.
        temp = tempfile.mkdtemp(prefix="s6cni-")
        temp_dirs.append(temp)
        store = FlakyStore(SqliteStore(os.path.join(temp, "ipam.db")))
        allocator = Allocator(store, AddressPlan.from_mapping(plan or DUAL_STACK))
        node_netns = cni_namespaces.add("s6n")
        node = unique("node-")
        recording = hooks or RecordingHooks()
        socket_path = os.path.join(temp, "cni.sock")
        server = CniServer(
            node, allocator, PodWiring(node_netns), socket_path=socket_path, hooks=recording
        )
        server.start()
        harness = Harness(
            node, node_netns, socket_path, server, allocator, store, recording, cni_namespaces
        )
        started.append(harness)
        return harness

    try:
        yield make
    finally:
        for harness in started:
            harness.server.stop()
        for temp in temp_dirs:
            shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture
def harness(make_cni_harness: Callable[..., Harness]) -> Harness:
    return make_cni_harness()
