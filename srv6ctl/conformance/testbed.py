"""The testbed: a tester namespace wired to the device under test by two links.

    tester                         DUT
    t-near  fd00:c0::1 ------ fd00:c0::2  d-near   packets in; ICMP errors back
    t-far   fd00:c1::1 ------ fd00:c1::2  d-far    what the DUT forwards or delivers
            192.0.2.1            192.0.2.2

The tester is a plain Linux namespace that is no router (forwarding off): it answers the
DUT's neighbour discovery and ARP, and whatever reaches it goes no further. Probes are
written as raw frames on `t-near` (AF_PACKET: the tester's own stack never routes them)
and frames coming in on both links are captured the same way (srv6ctl.verify.packets), so
the DUT's behaviour is seen on the wire, not through any API. Self-configured targets get a
DUT namespace of their own (`dut`); an external device is reached through the two tester
links only.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field

from scapy.layers.inet import IP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from srv6ctl.conformance.model import Link, Plan, Seen
from srv6ctl.observe.netinfo import link_mac
from srv6ctl.verify.packets import Capture

TESTER_NEAR, TESTER_FAR = "t-near", "t-far"
DUT_NEAR, DUT_FAR = "d-near", "d-far"


def ip(netns: str | None, *args: str) -> None:
    argv = ["ip", *(["-n", netns] if netns else []), *args]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip()}")


def sysctl(netns: str, *settings: str) -> None:
    argv = ["ip", "netns", "exec", netns, "sysctl", "-qw", *settings]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip()}")


@dataclass
class Testbed:
    """The tester's namespace and the DUT's (self-configured targets), created by `up`
    and deleted by `down` whatever happened in between; or (`attached`) two interfaces
    of an existing namespace that face a device someone else configured, which `up`
    addresses and `down` leaves as it found them."""

    __test__ = False  # not a pytest class, whatever its name says

    name: str  # unique prefix of the namespaces
    plan: Plan
    tester: str = ""
    dut: str = ""
    dut_mac: str = ""  # where probes are sent (the DUT's near end)
    near: str = TESTER_NEAR
    far: str = TESTER_FAR
    attached_to: str = ""  # the existing namespace of `near` and `far` (external targets)
    added: list[tuple[str, str]] = field(default_factory=list)  # (address, ifname) we added
    # More places what the DUT sends is seen, as the far link: (netns, interface, whether
    # the capture's directions are reversed there: srv6ctl.verify.packets' `far`).
    far_taps: tuple[tuple[str | None, str, bool], ...] = ()

    @classmethod
    def new(cls, plan: Plan | None = None) -> Testbed:
        return cls(f"s6conf-{os.urandom(3).hex()}", plan or Plan())

    @classmethod
    def attached(
        cls, netns: str, near: str, far: str, dut_mac: str = "", plan: Plan | None = None
    ) -> Testbed:
        return cls(
            f"s6conf-{os.urandom(3).hex()}", plan or Plan(), dut_mac=dut_mac, near=near,
            far=far, attached_to=netns,
        )  # fmt: skip

    @classmethod
    def lab(
        cls,
        netns: str,
        near: str,
        dut_mac: str,
        plan: Plan,
        far_taps: tuple[tuple[str | None, str, bool], ...],
    ) -> Testbed:
        """A lab node's wiring: probes from `near` in `netns` (the lab's probe host, which
        already has the plan's tester address), what the node sends seen at `far_taps`."""
        return cls(
            f"s6conf-{os.urandom(3).hex()}", plan, dut_mac=dut_mac, near=near, far="",
            attached_to=netns, far_taps=far_taps,
        )  # fmt: skip

    def up(self) -> None:
        if self.attached_to:
            self._attach()
            return
        self.tester, self.dut = f"{self.name}-t", f"{self.name}-d"
        for netns in (self.tester, self.dut):
            ip(None, "netns", "add", netns)
        for mine, theirs in ((TESTER_NEAR, DUT_NEAR), (TESTER_FAR, DUT_FAR)):
            ip(self.tester, "link", "add", mine, "type", "veth", "peer", "name", theirs,
               "netns", self.dut)  # fmt: skip
        p = self.plan
        sysctl(
            self.tester,
            "net.ipv6.conf.all.forwarding=0",
            "net.ipv6.conf.all.accept_dad=0",
            "net.ipv6.conf.default.accept_dad=0",
            "net.ipv6.conf.all.accept_ra=0",
            "net.ipv6.conf.default.accept_ra=0",
        )
        for ifname, addresses in zip((TESTER_NEAR, TESTER_FAR), p.tester_addresses(), strict=True):
            for address in addresses:
                ip(self.tester, "addr", "add", address, "dev", ifname, "nodad")
            ip(self.tester, "link", "set", ifname, "up")
        ip(self.tester, "link", "set", "lo", "up")
        self.dut_mac = link_mac(self.dut, DUT_NEAR)

    def _attach(self) -> None:
        """The tester's addresses on the given interfaces (those missing: added, and
        removed again by `down`); the DUT's MAC found by neighbour discovery if not given."""
        self.tester, p = self.attached_to, self.plan
        for ifname, addresses in zip((self.near, self.far), p.tester_addresses(), strict=True):
            if not ifname:
                continue  # a lab node: its far side is watched where the lab's links are
            held = subprocess.run(
                ["ip", "-n", self.tester, "addr", "show", "dev", ifname],
                capture_output=True, text=True, check=True,
            ).stdout  # fmt: skip
            for address in addresses:
                if f" {address} " not in held:
                    ip(self.tester, "addr", "add", address, "dev", ifname, "nodad")
                    self.added.append((address, ifname))
        if not self.dut_mac:
            self.dut_mac = self._resolve(str(p.dut_near))

    def ping(self, address: str) -> None:
        """Two pings from the tester, answered or not: the DUT learns the tester's MAC (an
        implementation may drop the packet that starts neighbour discovery: VPP drops a
        ping's first reply for it, hence two), the tester the DUT's."""
        argv = ["ping", "-c", "2", "-i", "0.3", "-W", "1", address]
        subprocess.run(["ip", "netns", "exec", self.tester, *argv], capture_output=True)

    def _resolve(self, address: str) -> str:
        self.ping(address)
        shown = subprocess.run(
            ["ip", "-n", self.tester, "-j", "neigh", "show", address, "dev", self.near],
            capture_output=True, text=True, check=False,
        ).stdout  # fmt: skip
        for entry in json.loads(shown or "[]"):
            if entry.get("lladdr"):
                return str(entry["lladdr"])
        raise RuntimeError(
            f"the DUT's near address {address} does not answer on {self.near} in "
            f"{self.tester}: give its MAC (--dut-mac) or address it so"
        )

    def down(self) -> None:
        if self.attached_to:
            for address, ifname in self.added:
                subprocess.run(["ip", "-n", self.tester, "addr", "del", address, "dev", ifname],
                               capture_output=True, check=False)  # fmt: skip
            return
        for netns in (self.tester, self.dut):
            if netns:
                subprocess.run(["ip", "netns", "del", netns], capture_output=True, check=False)

    def capture(self) -> Capture:
        capture = Capture()
        capture.add(self.tester, self.near, Link.NEAR.value)
        if self.far:
            capture.add(self.tester, self.far, Link.FAR.value)
        for netns, interface, reversed_ in self.far_taps:
            capture.add(netns, interface, Link.FAR.value, reversed_)
        capture.drain()
        return capture

    def frame(self, packet: object) -> bytes:
        """`packet` (IPv6 or IPv4 on) as the frame the tester sends the DUT."""
        tester_mac = link_mac(self.tester, self.near)
        return bytes(Ether(dst=self.dut_mac, src=tester_mac) / packet)


def received(frames: Iterable[object]) -> list[Seen]:
    """The frames a capture saw coming in from the DUT (not the tester's own), parsed."""
    out = []
    for seen in frames:
        if getattr(seen, "outgoing", True):
            continue
        frame = seen.frame  # type: ignore[attr-defined]
        layer = frame.getlayer(IPv6) or frame.getlayer(IP)
        if layer is None:
            continue
        out.append(Seen(Link(seen.tap), layer, bytes(layer)))  # type: ignore[attr-defined]
    return out


__all__ = ["DUT_FAR", "DUT_NEAR", "TESTER_FAR", "TESTER_NEAR", "Testbed", "ip", "received"]
