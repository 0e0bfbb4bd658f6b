"""The cases: one clause each, declared as data (the SID, the packet, what must come out).

A new case is one `Case(...)` entry: its id, the clause (RFC and section, the pseudocode
lines where RFC 8986 numbers them), the requirement level, the SID it needs, a builder
taking the testbed's `Plan`, the SID's address and the probe's marker, and an `Expect`.
The helpers below build the usual packets (an SRH'd probe whose active segment is the SID;
an encapsulated inner packet) and the usual checks (forwarded to the next segment, the
inner packet delivered); the marker travels in the innermost payload, so a probe is found
in whatever comes out, an ICMP error's quoted packet included.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrSegmentRouting
from scapy.packet import Packet, Raw

from srv6ctl.conformance.model import (
    Case,
    Check,
    Expect,
    IPv6Address,
    Level,
    Plan,
    SidSpec,
)

DISCARD = 9  # RFC 863: the probes' UDP port
NH_IPV4, NH_IPV6, NH_UDP = 4, 41, 17
SL_POINTER = 40 + 3  # a Parameter Problem's pointer at an SRH's Segments Left (RFC 8754)
TIME_EXCEEDED, PARAM_PROBLEM = 3, 4
ERRONEOUS_FIELD, SR_UPPER_LAYER = 0, 4  # Parameter Problem codes (RFC 4443, RFC 8986 §10.2)


# --- packets ------------------------------------------------------------------------------


def payload(marker: bytes) -> Packet:
    return UDP(sport=4242, dport=DISCARD) / Raw(marker)


def inner6(plan: Plan, marker: bytes, dst: Any = None, hlim: int = 64) -> Packet:
    return IPv6(src=str(plan.tester_near), dst=str(dst or plan.inner6), hlim=hlim) / payload(marker)


def inner4(plan: Plan, marker: bytes, dst: Any = None, ttl: int = 64) -> Packet:
    return IP(src=str(plan.source4), dst=str(dst or plan.inner4), ttl=ttl) / payload(marker)


def srh_probe(
    plan: Plan,
    sid: IPv6Address,
    after: Sequence[Any],
    upper: Packet,
    *,
    segments_left: int | None = None,
    last_entry: int | None = None,
    hlim: int = 64,
) -> Packet:
    """An IPv6 packet to `sid` with an SRH whose active segment is `sid` and whose next
    segments are `after` (in the order they are visited); `upper` follows the SRH."""
    visited = [str(sid), *map(str, after)]
    srh = IPv6ExtHdrSegmentRouting(
        addresses=list(reversed(visited)),
        segleft=len(after) if segments_left is None else segments_left,
        lastentry=len(visited) - 1 if last_entry is None else last_entry,
        nh=_nh(upper),
    )
    return IPv6(src=str(plan.tester_near), dst=str(sid), hlim=hlim) / srh / upper


def _nh(upper: Packet) -> int:
    if isinstance(upper, IPv6):
        return NH_IPV6
    if isinstance(upper, IP):
        return NH_IPV4
    return NH_UDP


def encapsulated(plan: Plan, sid: IPv6Address, inner: Packet, *, srh: bool) -> Packet:
    """`inner` in an outer IPv6 header to `sid`: with an SRH whose Segments Left is 0 (the
    last segment), or without one (H.Encaps.Red with one SID)."""
    outer = IPv6(src=str(plan.tester_near), dst=str(sid), hlim=64)
    if not srh:
        return outer / inner
    return (
        outer
        / IPv6ExtHdrSegmentRouting(addresses=[str(sid)], segleft=0, lastentry=0, nh=_nh(inner))
        / inner
    )


# --- checks -------------------------------------------------------------------------------


def _advanced(sent: Any, seen: Any) -> list[str]:
    """What is wrong with `seen` as `sent` after an End's step: its destination the next
    segment (the sent SRH's Segment List[Segments Left - 1]), its hop limit one less."""
    sent_srh = sent[IPv6ExtHdrSegmentRouting]
    nxt = sent_srh.addresses[sent_srh.segleft - 1]
    wrong = []
    if seen.dst != str(nxt):
        wrong.append(f"destination {seen.dst}, not the next segment {nxt}")
    if seen.hlim != sent.hlim - 1:
        wrong.append(f"hop limit {seen.hlim}, sent {sent.hlim} (one less expected)")
    return wrong


def forwarded_to_next() -> Check:
    """End's processing (RFC 8986 §4.1 S12-S15): the destination is the next segment (the
    sent SRH's Segment List[Segments Left - 1]), Segments Left one less, the hop limit one
    less, the rest of the packet as sent."""

    def check(sent: Any, seen: Any) -> list[str]:
        wrong = _advanced(sent, seen)
        srh, before = seen.getlayer(IPv6ExtHdrSegmentRouting), sent[IPv6ExtHdrSegmentRouting]
        if srh is None:
            return [*wrong, "no SRH"]
        if srh.segleft != before.segleft - 1:
            wrong.append(f"segments left {srh.segleft}, sent {before.segleft}")
        if list(srh.addresses) != list(before.addresses):
            wrong.append("segment list changed")
        if bytes(srh.payload) != bytes(before.payload):
            wrong.append("what follows the SRH changed")
        return wrong

    return check


def transit() -> Check:
    """A packet whose destination is no local SID: forwarded as any IPv6 packet, its SRH
    untouched (RFC 8754 §4.2: a transit node does not inspect it)."""

    def check(sent: Any, seen: Any) -> list[str]:
        wrong = []
        if seen.dst != sent.dst:
            wrong.append(f"destination {seen.dst}, sent {sent.dst}")
        if seen.hlim != sent.hlim - 1:
            wrong.append(f"hop limit {seen.hlim}, sent {sent.hlim}")
        if bytes(seen.payload) != bytes(sent.payload):
            wrong.append("the SRH or what follows it changed")
        return wrong

    return check


def delivered(version: int) -> Check:
    """Decapsulation: the inner packet leaves unchanged but for one hop of its hop limit
    (TTL for IPv4; RFC 8986 §4.4-§4.8: "forward ... to the next hop")."""
    layer = IPv6 if version == 6 else IP

    def check(sent: Any, seen: Any) -> list[str]:
        inner = sent.getlayer(layer, 2 if version == 6 else 1)
        if inner is None:
            return ["(the case sent no inner packet)"]
        if not isinstance(seen, layer):
            return [f"IPv{seen.version} out, IPv{version} inner expected"]
        if seen.haslayer(IPv6ExtHdrSegmentRouting):
            return ["the outer header or the SRH is still there"]
        wrong = []
        if version == 6:
            if seen.hlim != inner.hlim - 1:
                wrong.append(f"inner hop limit {seen.hlim}, sent {inner.hlim}")
            same = (seen.src, seen.dst, bytes(seen.payload)) == (
                inner.src,
                inner.dst,
                bytes(inner.payload),
            )
        else:
            if seen.ttl != inner.ttl - 1:
                wrong.append(f"inner TTL {seen.ttl}, sent {inner.ttl}")
            same = (seen.src, seen.dst, bytes(seen[UDP])) == (
                inner.src,
                inner.dst,
                bytes(inner[UDP]),
            )
        if not same:
            wrong.append("the inner packet changed")
        return wrong

    return check


def b6_encapsulated(policy: Sequence[Any]) -> Check:
    """End.B6.Encaps (RFC 8986 §4.13): the received packet, its SRH already advanced (SL
    one less, destination the next segment, hop limit one less), inside a new IPv6 header
    with an SRH of the policy's segments whose destination is the policy's first."""

    def check(sent: Any, seen: Any) -> list[str]:
        wrong = []
        if seen.dst != str(policy[0]):
            wrong.append(f"outer destination {seen.dst}, not the policy's first SID {policy[0]}")
        inner = seen.getlayer(IPv6, 2)
        if inner is None:
            return [*wrong, "no inner IPv6 packet"]
        outer_srh = seen.getlayer(IPv6ExtHdrSegmentRouting)
        expected = list(reversed([str(s) for s in policy]))
        if outer_srh is None or list(outer_srh.addresses) != expected:
            wrong.append("the outer SRH does not list the policy's segments")
        return wrong + forwarded_to_next()(sent, inner)

    return check


def psp_forwarded() -> Check:
    """PSP at the penultimate SID (RFC 8986 §4.16.1 S14.1-S14.4): End's processing, then
    the SRH removed (Segments Left became 0), what followed it unchanged."""

    def check(sent: Any, seen: Any) -> list[str]:
        sent_srh = sent[IPv6ExtHdrSegmentRouting]
        wrong = _advanced(sent, seen)
        if seen.haslayer(IPv6ExtHdrSegmentRouting):
            wrong.append("the SRH is still there")
        elif bytes(seen.payload) != bytes(sent_srh.payload):
            wrong.append("what followed the SRH changed")
        return wrong

    return check


def encapsulated_by(policy: Sequence[Any], *, reduced: bool, source: Any) -> Check:
    """H.Encaps (RFC 8986 §5.1) / H.Encaps.Red (§5.2): the packet as sent inside an outer
    IPv6 header from the headend's source to the policy's first SID, with an SRH listing
    the policy in reverse order (the reduced form leaves the first SID out of it, and puts
    no SRH at all for a one-SID policy), Segments Left n - 1."""
    segments = [str(s) for s in policy]

    def check(sent: Any, seen: Any) -> list[str]:
        wrong = []
        if (seen.src, seen.dst) != (str(source), segments[0]):
            wrong.append(f"outer {seen.src} → {seen.dst}, not {source} → {segments[0]}")
        listed = segments[1:] if reduced else segments
        srh = seen.getlayer(IPv6ExtHdrSegmentRouting)
        if not listed:
            if srh is not None:
                wrong.append("an SRH for a one-SID policy in the reduced mode")
        elif srh is None:
            wrong.append("no SRH")
        else:
            if list(srh.addresses) != list(reversed(listed)):
                wrong.append(f"SRH lists {list(srh.addresses)}, not {list(reversed(listed))}")
            if srh.segleft != len(segments) - 1:
                wrong.append(f"segments left {srh.segleft}, not {len(segments) - 1}")
            if srh.lastentry != len(listed) - 1:
                wrong.append(f"last entry {srh.lastentry}, not {len(listed) - 1}")
        inner = seen.getlayer(IPv6, 2)
        if inner is None:
            return [*wrong, "no inner IPv6 packet"]
        if (inner.src, inner.dst, bytes(inner.payload)) != (
            sent.src,
            sent.dst,
            bytes(sent.payload),
        ):
            wrong.append("the inner packet changed")
        return wrong

    return check


# --- the cases ----------------------------------------------------------------------------

END = SidSpec("End")
END_X = SidSpec("End.X")
END_DX6 = SidSpec("End.DX6")
END_DX4 = SidSpec("End.DX4")
END_DT6 = SidSpec("End.DT6")
END_DT4 = SidSpec("End.DT4")
END_T = SidSpec("End.T")
END_DT46 = SidSpec("End.DT46")
PLAN = Plan()
UNROUTED = IPv6Address("2001:db8:dead::1")  # no route anywhere: only a cross-connect gets it out
B6_POLICY = (PLAN.segment(10), PLAN.segment(11))
END_B6 = SidSpec("End.B6.Encaps", segments=B6_POLICY)
END_PSP = SidSpec("End", frozenset({"PSP"}))
HEADEND_POLICY = (PLAN.segment(20), PLAN.segment(21))
H_ENCAPS = SidSpec("H.Encaps", segments=HEADEND_POLICY)
H_ENCAPS_RED = SidSpec("H.Encaps.Red", segments=HEADEND_POLICY)


def _next(plan: Plan) -> IPv6Address:
    return plan.segment(1)


# The expectations several clauses share.
AT_SEGMENTS_LEFT = Expect.error(
    PARAM_PROBLEM, ERRONEOUS_FIELD, SL_POINTER, "Parameter Problem 0, pointer 43 (Segments Left)"
)
AT_UPPER_LAYER = Expect.error(  # after the one-segment SRH: 40 + 8 + 16
    PARAM_PROBLEM, SR_UPPER_LAYER, 40 + 8 + 16, "Parameter Problem 4 at the UDP header"
)
INNER6_OUT = Expect.forwarded(delivered(6), "inner packet out, HL-1, otherwise unchanged")
INNER4_OUT = Expect.forwarded(delivered(4), "inner packet out, TTL-1, otherwise unchanged")


CASES: tuple[Case, ...] = (
    Case(
        "end.forward",
        "End with Segments Left 1 forwards to the next segment",
        "RFC 8986 §4.1 S12-S15",
        Level.MUST,
        END,
        lambda p, sid, m: srh_probe(p, sid, [_next(p)], payload(m)),
        Expect.forwarded(forwarded_to_next(), "next segment, SL-1, HL-1"),
    ),
    Case(
        "end.hop-limit",
        "End with hop limit 1 sends ICMPv6 Time Exceeded",
        "RFC 8986 §4.1 S05-S06",
        Level.MUST,
        END,
        lambda p, sid, m: srh_probe(p, sid, [_next(p)], payload(m), hlim=1),
        Expect.error(TIME_EXCEEDED, 0, None, "Time Exceeded, code 0"),
    ),
    Case(
        "end.sl-past-last-entry",
        "Segments Left > Last Entry + 1: Parameter Problem at Segments Left",
        "RFC 8986 §4.1 S09-S10; RFC 8754 §4.3.1.1",
        Level.MUST,
        END,
        lambda p, sid, m: srh_probe(p, sid, [_next(p)], payload(m), segments_left=3),
        AT_SEGMENTS_LEFT,
    ),
    Case(
        "end.last-entry-past-header",
        "Last Entry > max_LE (past the header's length): Parameter Problem at Segments Left",
        "RFC 8986 §4.1 S08-S10",
        Level.MUST,
        END,
        lambda p, sid, m: srh_probe(p, sid, [_next(p)], payload(m), last_entry=4),
        AT_SEGMENTS_LEFT,
    ),
    Case(
        "end.sl0-upper-layer",
        "End with Segments Left 0 and a UDP upper layer: Parameter Problem code 4",
        "RFC 8986 §4.1 S02-S03, §4.1.1 S04",
        Level.MUST,
        END,
        lambda p, sid, m: srh_probe(p, sid, [], payload(m), segments_left=0),
        AT_UPPER_LAYER,
    ),
    Case(
        "transit.not-a-sid",
        "A destination that is no local SID: forwarded, the SRH untouched",
        "RFC 8754 §4.2",
        Level.MUST,
        END,  # any SID: the case checks the node forwards around it
        lambda p, sid, m: srh_probe(p, p.segment(2), [p.segment(3)], payload(m)),
        Expect.forwarded(transit(), "forwarded unchanged but the hop limit"),
    ),
    Case(
        "end.x.cross-connect",
        "End.X forwards to its adjacency whatever the next segment's route",
        "RFC 8986 §4.2 S14-S15",
        Level.MUST,
        END_X,
        lambda p, sid, m: srh_probe(p, sid, [UNROUTED], payload(m)),
        Expect.forwarded(forwarded_to_next(), "out of its adjacency, SL-1, HL-1"),
    ),
    Case(
        "end.t.table",
        "End.T looks the next segment up in its table",
        "RFC 8986 §4.3 S14-S15",
        Level.MUST,
        END_T,
        lambda p, sid, m: srh_probe(p, sid, [p.table_segment], payload(m)),
        Expect.forwarded(forwarded_to_next(), "next segment, routed by its table only"),
    ),
    Case(
        "end.dx6.srh",
        "End.DX6 (SRH, Segments Left 0) delivers the inner IPv6 packet to its next hop",
        "RFC 8986 §4.4 S05-S07",
        Level.MUST,
        END_DX6,
        lambda p, sid, m: encapsulated(p, sid, inner6(p, m, UNROUTED), srh=True),
        INNER6_OUT,
    ),
    Case(
        "end.dx6.reduced",
        "End.DX6 without an SRH (H.Encaps.Red) delivers the inner IPv6 packet",
        "RFC 8986 §4.4 (upper-layer header processing)",
        Level.MUST,
        END_DX6,
        lambda p, sid, m: encapsulated(p, sid, inner6(p, m, UNROUTED), srh=False),
        INNER6_OUT,
    ),
    Case(
        "end.dx6.sl-not-zero",
        "End.DX6 with Segments Left 1: Parameter Problem at Segments Left",
        "RFC 8986 §4.4 S02-S04",
        Level.MUST,
        END_DX6,
        lambda p, sid, m: srh_probe(p, sid, [_next(p)], inner6(p, m)),
        AT_SEGMENTS_LEFT,
    ),
    Case(
        "end.dx6.not-ipv6",
        "End.DX6 given a UDP upper layer: Parameter Problem code 4",
        "RFC 8986 §4.4 S08 (§4.1.1)",
        Level.MUST,
        END_DX6,
        lambda p, sid, m: srh_probe(p, sid, [], payload(m), segments_left=0),
        AT_UPPER_LAYER,
    ),
    Case(
        "end.dt6.lookup",
        "End.DT6 delivers the inner IPv6 packet by a lookup in its table",
        "RFC 8986 §4.6 S05-S08",
        Level.MUST,
        END_DT6,
        lambda p, sid, m: encapsulated(p, sid, inner6(p, m), srh=True),
        INNER6_OUT,
    ),
    Case(
        "end.dx4.srh",
        "End.DX4 delivers the inner IPv4 packet to its next hop",
        "RFC 8986 §4.5 S05-S07",
        Level.MUST,
        END_DX4,
        lambda p, sid, m: encapsulated(p, sid, inner4(p, m, "203.0.113.99"), srh=True),
        INNER4_OUT,
    ),
    Case(
        "end.dt4.lookup",
        "End.DT4 delivers the inner IPv4 packet by a lookup in its table",
        "RFC 8986 §4.7 S05-S08",
        Level.MUST,
        END_DT4,
        lambda p, sid, m: encapsulated(p, sid, inner4(p, m), srh=True),
        INNER4_OUT,
    ),
    Case(
        "end.dt46.v6",
        "End.DT46 delivers an inner IPv6 packet by a lookup in its table",
        "RFC 8986 §4.8 S05-S11",
        Level.MUST,
        END_DT46,
        lambda p, sid, m: encapsulated(p, sid, inner6(p, m), srh=True),
        INNER6_OUT,
    ),
    Case(
        "end.dt46.v4",
        "End.DT46 delivers an inner IPv4 packet by a lookup in its table",
        "RFC 8986 §4.8 S05-S11",
        Level.MUST,
        END_DT46,
        lambda p, sid, m: encapsulated(p, sid, inner4(p, m), srh=True),
        INNER4_OUT,
    ),
    Case(
        "end.psp",
        "End with PSP at the penultimate SID removes the SRH",
        "RFC 8986 §4.16.1 S14.1-S14.4",
        Level.MUST,
        END_PSP,
        lambda p, sid, m: srh_probe(p, sid, [_next(p)], payload(m)),
        Expect.forwarded(psp_forwarded(), "next segment, no SRH, HL-1"),
    ),
    Case(
        "h.encaps",
        "H.Encaps: the packet inside an outer header with the policy's SRH",
        "RFC 8986 §5.1",
        Level.MUST,
        H_ENCAPS,
        lambda p, sid, m: inner6(p, m, p.steered_to(sid)),
        Expect.forwarded(
            encapsulated_by(HEADEND_POLICY, reduced=False, source=PLAN.dut_far),
            "outer header to the first SID, SRH of both SIDs, SL 1",
        ),
    ),
    Case(
        "h.encaps.red",
        "H.Encaps.Red: the first SID only in the destination, not in the SRH",
        "RFC 8986 §5.2",
        Level.MUST,
        H_ENCAPS_RED,
        lambda p, sid, m: inner6(p, m, p.steered_to(sid)),
        Expect.forwarded(
            encapsulated_by(HEADEND_POLICY, reduced=True, source=PLAN.dut_far),
            "outer header to the first SID, SRH of the second only, SL 1",
        ),
    ),
    Case(
        "end.b6.encaps",
        "End.B6.Encaps: SRH advanced, then encapsulated with the policy's SRH",
        "RFC 8986 §4.13 S12-S17",
        Level.MUST,
        END_B6,
        lambda p, sid, m: srh_probe(p, sid, [_next(p)], payload(m)),
        Expect.forwarded(b6_encapsulated(B6_POLICY), "policy's SRH outside"),
    ),
)


__all__ = ["CASES", "PLAN"]
