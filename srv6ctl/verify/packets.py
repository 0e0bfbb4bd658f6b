"""Raw frames in and out of interfaces inside network namespaces, for on-the-wire checks.

An AF_PACKET socket belongs to the namespace of the thread that created it, so each
`Tap` is opened by a short-lived thread that entered the namespace (`run_in_netns`), and
is then read and written from anywhere in this process: no helper process per
namespace, nothing exec'ed, the host's own interfaces never touched.

A tap sees both directions of its interface and says which: on a node's uplink an
*outgoing* frame is one the node sent to the underlay (a forwarded or encapsulated
packet); on a pod's node-side veth an outgoing frame is one the node delivered to the pod.
A tap on a link's *far* end (`far=True`: the underlay's bridge port of a node, a pod's own
eth0) reverses the directions, so that "outgoing" still means "sent by the node". That is
where a VPP node is watched: VPP's af_packet ports send with PACKET_QDISC_BYPASS, past
the kernel's transmit taps, so a packet socket on the node's end never sees what VPP sends.
Every probe carries a random marker in its payload, so our packets are told apart from
the kernel's own chatter (ND, MLD) and from each other.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from scapy.layers.l2 import Ether

from srv6ctl.dataplane.nsenter import run_in_netns

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
SO_RCVBUFFORCE = 33


def marker() -> bytes:
    return b"s6verify:" + os.urandom(6).hex().encode()


@dataclass(frozen=True)
class Seen:
    """One frame a tap saw."""

    tap: str  # the tap's label, e.g. "n1/eth0" or "n2/pod web-2"
    outgoing: bool  # sent by the node (whichever end of the link the tap is on)
    frame: Any  # scapy Ether
    data: bytes
    at: float  # time.monotonic()


class Tap:
    """Raw frames on `interface` inside namespace `netns` (a path, a name, or None: here);
    `far`: the interface is the far end of the node's link (directions reversed)."""

    def __init__(self, netns: str | None, interface: str, label: str, far: bool = False) -> None:
        self.interface = interface
        self.label = label
        self.far = far

        def make() -> socket.socket:
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
            # Forced past net.core.rmem_max: a burst of probes must not be dropped here.
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 4 << 20)
            sock.bind((interface, ETH_P_ALL))
            return sock

        self.sock = run_in_netns(_netns_path(netns), make)
        self.sock.setblocking(False)

    def send(self, frames: Iterable[bytes | Any]) -> None:
        for frame in frames:
            self.sock.send(bytes(frame))

    def drain(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while True:
                self.sock.recv(65535)

    def close(self) -> None:
        self.sock.close()


def _is_icmp(frame: bytes) -> bool:
    ethertype = frame[12:14]
    if ethertype == b"\x86\xdd":
        return len(frame) > 20 and frame[20] == 58
    if ethertype == b"\x08\x00":
        return len(frame) > 23 and frame[23] == 1
    return False


def _netns_path(netns: str | None) -> str | None:
    if netns is None or netns.startswith("/"):
        return netns
    return f"/var/run/netns/{netns}"


class Capture:
    """Several taps read together; `collect` gathers the frames that carry a marker."""

    def __init__(self) -> None:
        self.taps: list[Tap] = []

    def add(self, netns: str | None, interface: str, label: str, far: bool = False) -> Tap:
        tap = Tap(netns, interface, label, far)
        self.taps.append(tap)
        return tap

    def drain(self) -> None:
        for tap in self.taps:
            tap.drain()

    def collect(
        self,
        markers: Iterable[bytes],
        *,
        timeout: float = 1.0,
        settle: float = 0.15,
        expect: int | None = None,
        icmp: bool = False,
    ) -> dict[bytes, list[Seen]]:
        """Frames holding any of `markers`, read until `timeout` — or, once `expect`
        frames have arrived, for `settle` more seconds (to catch duplicates and strays).
        ICMP errors quoting a probe count only with `icmp`."""
        wanted = list(markers)
        found: dict[bytes, list[Seen]] = {m: [] for m in wanted}
        by_fd = {tap.sock.fileno(): tap for tap in self.taps}
        deadline = time.monotonic() + timeout
        count = 0
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            ready, _, _ = select.select(list(by_fd), [], [], left)
            for fd in ready:
                tap = by_fd[fd]
                while True:
                    try:
                        data, address = tap.sock.recvfrom(65535)
                    except BlockingIOError:
                        break
                    if not icmp and _is_icmp(data):
                        # An ICMP error quotes the packet it is about (marker and all);
                        # it says where a probe died, not where it went.
                        continue
                    for mark in wanted:
                        if mark in data:
                            seen = Seen(
                                tap.label,
                                (address[2] == PACKET_OUTGOING) != tap.far,
                                Ether(data),
                                data,
                                time.monotonic(),
                            )
                            found[mark].append(seen)
                            count += 1
            if expect is not None and count >= expect:
                deadline = min(deadline, time.monotonic() + settle)
        return found

    def close(self) -> None:
        for tap in self.taps:
            tap.close()
        self.taps.clear()

    def __enter__(self) -> Capture:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def opened(sockets: list[socket.socket]) -> Iterator[list[socket.socket]]:
    try:
        yield sockets
    finally:
        for sock in sockets:
            sock.close()
