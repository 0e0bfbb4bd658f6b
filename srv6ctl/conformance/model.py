"""What a conformance case is: the clause it checks, the SID it needs, the packet it
sends and what must come out (pure: no sockets, no namespaces).

A case names one clause of one RFC (RFC 8986 §4/§5, RFC 8754 §4.3) and its requirement
level; it needs one SID of the target's (`SidSpec`: a behaviour and its parameters, which a
self-configured target programs and an external target is told about); it builds the
packet from the testbed's addresses (`Plan`) and says what must be seen (`Expect`): the
packet forwarded or delivered out of the DUT's far link (checked field by field), an
ICMPv6 error back on the near link (type, code, pointer), or nothing at all.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

IPv6Address = ipaddress.IPv6Address
IPv4Address = ipaddress.IPv4Address


class Level(StrEnum):
    MUST = "MUST"
    SHOULD = "SHOULD"
    MAY = "MAY"


class Verdict(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    NOT_APPLICABLE = "n/a"  # the target does not offer the behaviour the case needs


class Link(StrEnum):
    """The DUT's two links to the tester: packets enter on NEAR; what the DUT forwards or
    delivers leaves on FAR; ICMP errors go back to the sender, on NEAR."""

    NEAR = "near"
    FAR = "far"


@dataclass(frozen=True)
class SidSpec:
    """A SID the case needs: `behaviour` (RFC 8986's name: End, End.X, End.DT6, ...) with
    its parameters (End.X/End.DX*: the next hop on the far link; End.T/End.DT*: the table;
    End.B6.*: the segments) and flavours (PSP, USP, USD)."""

    behaviour: str
    flavours: frozenset[str] = frozenset()
    segments: tuple[IPv6Address, ...] = ()  # End.B6.Encaps(.Red): the policy's list
    counted: bool = False  # its RFC 8986 §6 counters read after the probe
    # The node verifies HMAC TLVs with the suite's key (HMAC_KEY) where the SID is active
    # (RFC 8754 §2.1.2.1: "local configuration determines when to check").
    hmac: bool = False

    @property
    def name(self) -> str:
        marks = "+".join([*sorted(self.flavours), *(["HMAC"] if self.hmac else [])])
        return f"{self.behaviour}{'(' + marks + ')' if marks else ''}"

    @property
    def compressed(self) -> bool:
        """A NEXT-CSID SID (RFC 9800): a prefix of locator block and node (`Plan.csid`),
        the next compressed SIDs in the destination's argument bits."""
        return "NEXT-CSID" in self.flavours


@dataclass(frozen=True)
class HmacKey:
    """A pre-shared HMAC key (RFC 8754 §2.1.2.2): its Key ID names the secret and the
    algorithm at the node that signs and the node that verifies."""

    key_id: int
    secret: bytes
    algorithm: str = "sha256"  # hashlib's name; the kernel's `ip sr hmac set ID sha256`


# The suite's key: a node tested with an `...(HMAC)` SID holds it (an external device is
# given it by its owner, README "RFC conformance").
HMAC_KEY = HmacKey(0x5EC7, b"srv6ctl-conformance")


@dataclass(frozen=True)
class Plan:
    """The testbed's addresses: the tester on the near and far links, the DUT's, the
    locator the SIDs come from, and the prefixes the DUT routes out of its far link."""

    tester_near: IPv6Address = IPv6Address("fd00:c0::1")
    dut_near: IPv6Address = IPv6Address("fd00:c0::2")
    tester_far: IPv6Address = IPv6Address("fd00:c1::1")
    dut_far: IPv6Address = IPv6Address("fd00:c1::2")
    tester_far4: IPv4Address = IPv4Address("192.0.2.1")
    dut_far4: IPv4Address = IPv4Address("192.0.2.2")
    # Next segments and inner destinations: routed out of the far link to the tester,
    # which is no router (what reaches it goes no further).
    beyond: ipaddress.IPv6Network = ipaddress.IPv6Network("fc00:6::/32")
    # Routed only in End.T's table: a next segment that only End.T's lookup finds.
    table_segment: IPv6Address = IPv6Address("fc00:7::1")
    inner6: IPv6Address = IPv6Address("fd00:d6::2")  # an inner destination beyond the DUT
    inner_net6: ipaddress.IPv6Network = ipaddress.IPv6Network("fd00:d6::/64")
    inner4: IPv4Address = IPv4Address("198.51.100.2")
    inner_net4: ipaddress.IPv4Network = ipaddress.IPv4Network("198.51.100.0/24")
    source4: IPv4Address = IPv4Address("203.0.113.1")  # an inner IPv4 packet's source

    locator: ipaddress.IPv6Network = ipaddress.IPv6Network("fc00:5::/48")  # the DUT's SIDs

    def tester_addresses(self) -> tuple[list[str], list[str]]:
        """The tester's interface addresses on the near and on the far link."""
        return [f"{self.tester_near}/64"], [f"{self.tester_far}/64", f"{self.tester_far4}/24"]

    def dut_addresses(self) -> tuple[list[str], list[str]]:
        """The DUT's interface addresses on the near and on the far link."""
        return [f"{self.dut_near}/64"], [f"{self.dut_far}/64", f"{self.dut_far4}/24"]

    def sid(self, n: int) -> IPv6Address:
        return IPv6Address(int(self.locator.network_address) + n)

    steered: ipaddress.IPv6Network = ipaddress.IPv6Network("fd00:5e::/64")  # headend traffic

    def steered_to(self, bsid: IPv6Address) -> IPv6Address:
        """The destination a headend case steers into the policy at `bsid` (one each)."""
        return IPv6Address(int(self.steered.network_address) + (int(bsid) & 0xFFFF))

    def segment(self, n: int) -> IPv6Address:
        """The n-th segment beyond the DUT (a SID of some next node, routed out)."""
        return IPv6Address(int(self.beyond.network_address) + 0x100 + n)

    # NEXT-CSID (RFC 9800): 32-bit locator block (the locator's first 32 bits), 16-bit
    # C-SIDs. The DUT's are fc00:5:cNNN::/48; the next node's C-SIDs (0xe000-0xefff) are
    # routed out of the far link.
    CSID_BLOCK_BITS, CSID_BITS = 32, 16
    csid_next: ipaddress.IPv6Network = ipaddress.IPv6Network("fc00:5:e000::/36")

    def csid(self, n: int) -> IPv6Address:
        """The DUT's n-th C-SID as the /48 prefix it owns (its argument bits zero)."""
        return IPv6Address(int(self.locator.network_address) + ((0xC000 + n) << 80))

    def csid_prefix_len(self) -> int:
        return self.CSID_BLOCK_BITS + self.CSID_BITS

    def with_next_csids(self, sid: IPv6Address, *csids: int) -> IPv6Address:
        """`sid` with `csids` in the argument bits after it (the C-SID container)."""
        shift = 128 - self.csid_prefix_len()
        value = int(sid)
        for csid in csids:
            shift -= self.CSID_BITS
            value |= csid << shift
        return IPv6Address(value)


@dataclass(frozen=True)
class Seen:
    """A packet the tester captured coming from the DUT: on which link, as scapy parsed
    it (from the IPv6 or IPv4 header on), and its raw bytes."""

    link: Link
    packet: Any
    raw: bytes


# (the packet sent, the packet seen) → what is wrong with what was seen ([]: nothing)
Check = Callable[[Any, Any], list[str]]


@dataclass(frozen=True)
class Expect:
    """What must become of the packet sent: a packet on `link` checked by `check` (on the
    far link: forwarded or delivered; on the near link: an answer that is no ICMP error),
    or with `icmp` = (type, code[, pointer]) an ICMPv6 error back on the near link; with
    neither, nothing anywhere (dropped)."""

    link: Link | None = None
    check: Check | None = None
    icmp: tuple[int, ...] | None = None
    what: str = ""  # in words, for the report

    @classmethod
    def forwarded(cls, check: Check, what: str) -> Expect:
        return cls(Link.FAR, check, None, what)

    @classmethod
    def error(cls, icmp_type: int, code: int, pointer: int | None, what: str) -> Expect:
        icmp = (icmp_type, code) if pointer is None else (icmp_type, code, pointer)
        return cls(Link.NEAR, None, icmp, what)

    @classmethod
    def answered(cls, check: Check, what: str) -> Expect:
        """An answer (no ICMP error) back to the tester on the near link."""
        return cls(Link.NEAR, check, None, what)

    @classmethod
    def dropped(cls, what: str = "dropped: nothing comes out") -> Expect:
        return cls(None, None, None, what)


@dataclass(frozen=True)
class Case:
    """One clause, checked with one packet: `build(plan, sid, marker)` makes it."""

    id: str
    title: str
    rfc: str  # "RFC 8986 §4.1 S09-S10"
    level: Level
    sid: SidSpec
    build: Callable[[Plan, IPv6Address, bytes], Any]
    expect: Expect
    # Sent in fragments of this many bytes of fragmentable part (the packet built has a
    # Fragment header where it is to be cut): 0, whole.
    fragment: int = 0


@dataclass(frozen=True)
class Result:
    case: Case
    verdict: Verdict
    detail: str
    sent: str = ""  # the packet sent, summarised
    seen: tuple[str, ...] = field(default_factory=tuple)  # what came out, summarised


__all__ = [
    "HMAC_KEY",
    "Case",
    "Check",
    "Expect",
    "HmacKey",
    "Level",
    "Link",
    "Plan",
    "Result",
    "Seen",
    "SidSpec",
    "Verdict",
]
