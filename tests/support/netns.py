"""Fixtures: throw-away network namespaces with unique names, always cleaned up.

- `netns_factory()` makes namespaces named `s6t-<random hex>` (parallel-safe: names never
  collide, and only namespaces made here are ever deleted), with `lo` up; `veth()` joins
  two of them. Every namespace is deleted at teardown, whether the test passed or not.
- `PacketPort` is an AF_PACKET socket on one interface *inside* a namespace: the socket is
  created by a thread that has entered the namespace (setns), so it sends and receives
  there, while scapy builds and parses the frames in the test process. That keeps packet
  tests quick (no interpreter start-up per packet) and the host's interfaces untouched.

Tests that need this skip with a reason when not root; under CI (`CI=true`) as root they
never skip. Those that also need the kernel's SRv6 are marked `kernel_srv6`
(tests/support/kernel.py decides where they run).
"""

from __future__ import annotations

import json
import os
import secrets
import select
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest

from srv6ctl.dataplane.nsenter import run_in_netns

PREFIX = "s6t-"
ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
SO_RCVBUFFORCE = 33
T = TypeVar("T")


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def netns_unavailable() -> str | None:
    """Why namespace tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, veth pairs, seg6 routes)"
    if shutil.which("ip") is None:
        return "needs iproute2's `ip`"
    return None


def require_netns() -> None:
    reason = netns_unavailable()
    if reason is None:
        return
    if _in_ci() and os.geteuid() == 0:
        pytest.fail(f"CI runs as root, so namespace tests must run: {reason}")
    pytest.skip(reason)


def run(
    *command: str, check: bool = True, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `command` (its output captured, as text, `stdin` fed to it); with `check`, a
    non-zero exit raises RuntimeError carrying the command and its stderr."""
    done = subprocess.run(command, input=stdin, capture_output=True, text=True, check=False)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)}: {done.stderr.strip() or done.returncode}")
    return done


@dataclass(frozen=True)
class Netns:
    name: str

    def ip(self, *args: str, check: bool = True) -> str:
        """`ip -n NAME ...`; returns stdout."""
        return run("ip", "-n", self.name, *args, check=check).stdout

    def exec(self, *command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Any command inside the namespace (`ip netns exec`)."""
        return run("ip", "netns", "exec", self.name, *command, check=check)

    def mac(self, interface: str) -> str:
        # Not /sys/class/net: sysfs shows the namespace that mounted it, not the caller's.
        (link,) = json.loads(self.ip("-j", "link", "show", "dev", interface))
        return str(link["address"])

    def __str__(self) -> str:
        return self.name


@dataclass
class NetnsFactory:
    created: list[Netns] = field(default_factory=list)

    def __call__(self) -> Netns:
        ns = Netns(PREFIX + secrets.token_hex(5))
        run("ip", "netns", "add", ns.name)
        self.created.append(ns)
        ns.ip("link", "set", "lo", "up")
        return ns

    @staticmethod
    def veth(a: Netns, a_name: str, b: Netns, b_name: str) -> None:
        """A veth pair `a_name` in `a` <-> `b_name` in `b`, both up."""
        a.ip("link", "add", a_name, "type", "veth", "peer", "name", b_name, "netns", b.name)
        a.ip("link", "set", a_name, "up")
        b.ip("link", "set", b_name, "up")

    def cleanup(self) -> list[str]:
        problems = []
        for ns in reversed(self.created):
            done = run("ip", "netns", "del", ns.name, check=False)
            if done.returncode != 0:
                problems.append(f"{ns.name}: {done.stderr.strip()}")
        self.created.clear()
        return problems


@pytest.fixture
def netns_factory() -> Iterator[NetnsFactory]:
    require_netns()
    factory = NetnsFactory()
    try:
        yield factory
    finally:
        problems = factory.cleanup()
        if problems:
            raise RuntimeError(f"could not delete namespaces: {problems}")


@pytest.fixture
def netns(netns_factory: NetnsFactory) -> Netns:
    return netns_factory()


# --- running code and packets inside a namespace ---------------------------------------


def open_in(netns: str, fn: Callable[[], T]) -> T:
    """Call `fn` in a thread that entered `netns`: what it opens (sockets, /sys, /proc/sys
    files) belongs to that namespace, and the calling thread stays where it is."""
    return run_in_netns(netns, fn)


class PacketPort:
    """Raw frames in and out of `interface` in namespace `netns` (AF_PACKET, ETH_P_ALL)."""

    def __init__(self, netns: Netns | str, interface: str) -> None:
        self.interface = interface

        def make() -> socket.socket:
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
            # Forced: a 1,000-packet burst outgrows net.core.rmem_max (we are root here).
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 8 << 20)
            sock.bind((interface, ETH_P_ALL))
            return sock

        self._sock = open_in(str(netns), make)

    def send(self, frames: Iterable[Any], pace: int = 64) -> int:
        """Send scapy packets or bytes; pauses briefly every `pace` frames so that a burst
        does not overflow the receiving CPU's backlog (netdev_max_backlog)."""
        sent = 0
        for frame in frames:
            self._sock.send(bytes(frame))
            sent += 1
            if sent % pace == 0:
                time.sleep(0.002)
        return sent

    def receive(
        self,
        match: Callable[[Any], bool] = lambda p: True,
        count: int | None = None,
        timeout: float = 1.0,
    ) -> list[Any]:
        """Incoming frames (scapy `Ether`) that `match`, until `count` or `timeout`."""
        from scapy.layers.l2 import Ether

        got: list[Any] = []
        deadline = time.monotonic() + timeout
        while count is None or len(got) < count:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            ready, _, _ = select.select([self._sock], [], [], left)
            if not ready:
                break
            data, address = self._sock.recvfrom(65535)
            if address[2] == PACKET_OUTGOING:
                continue
            frame = Ether(data)
            if match(frame):
                got.append(frame)
        return got

    def drain(self) -> None:
        self._sock.setblocking(False)
        try:
            while True:
                self._sock.recv(65535)
        except BlockingIOError:
            pass
        finally:
            self._sock.setblocking(True)

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> PacketPort:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
