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

import hashlib
import hmac
import struct
from collections.abc import Sequence
from typing import Any

from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import (
    ICMPv6EchoReply,
    ICMPv6EchoRequest,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrSegmentRouting,
    IPv6ExtHdrSegmentRoutingTLV,
    IPv6ExtHdrSegmentRoutingTLVPad1,
    IPv6ExtHdrSegmentRoutingTLVPadN,
)
from scapy.layers.l2 import Ether
from scapy.packet import Packet, Raw

from srv6ctl.conformance.model import (
    HMAC_KEY,
    Case,
    Check,
    Expect,
    HmacKey,
    IPv6Address,
    Level,
    Plan,
    SidSpec,
)

DISCARD = 9  # RFC 863: the probes' UDP port
NH_IPV4, NH_IPV6, NH_UDP, NH_FRAGMENT, NH_ICMPV6, NH_ETHERNET = 4, 41, 17, 44, 58, 143
SL_POINTER = 40 + 3  # a Parameter Problem's pointer at an SRH's Segments Left (RFC 8754)
DEST_UNREACH, TIME_EXCEEDED, PARAM_PROBLEM = 1, 3, 4
PORT_UNREACHABLE = 4  # Destination Unreachable's code
# Parameter Problem codes (RFC 4443 §3.4, RFC 8986 §10.2)
ERRONEOUS_FIELD, UNRECOGNIZED_NEXT_HEADER, SR_UPPER_LAYER = 0, 1, 4
UNASSIGNED_NH = 150  # an Internet protocol number IANA has not assigned


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
    tlvs: Sequence[Packet] = (),
    tag: int = 0,
    flags: bool = False,
    dst: Any = None,
) -> Packet:
    """An IPv6 packet to `sid` (or `dst`) with an SRH whose active segment is `sid` and
    whose next segments are `after` (in the order they are visited); `upper` follows the
    SRH. `tlvs` (a multiple of 8 bytes, else scapy pads them), `tag` and `flags` (the
    unassigned bits 0, 5 and 7 set: not the O-flag, RFC 9259) fill the SRH's other
    fields."""
    visited = [str(sid), *map(str, after)]
    srh = IPv6ExtHdrSegmentRouting(
        addresses=list(reversed(visited)),
        segleft=len(after) if segments_left is None else segments_left,
        lastentry=len(visited) - 1 if last_entry is None else last_entry,
        nh=_nh(upper),
        tag=tag,
        unused1=1 if flags else 0,
        unused2=0b101 if flags else 0,
        tlv_objects=list(tlvs),
    )
    return IPv6(src=str(plan.tester_near), dst=str(dst or sid), hlim=hlim) / srh / upper


# The Next Header value of what follows an SRH, by its first layer (anything else: UDP).
NEXT_HEADERS: tuple[tuple[type[Packet], int], ...] = (
    (IPv6, NH_IPV6),
    (IP, NH_IPV4),
    (IPv6ExtHdrFragment, NH_FRAGMENT),
    (ICMPv6EchoRequest, NH_ICMPV6),
    (Ether, NH_ETHERNET),
)


def _nh(upper: Packet) -> int:
    return next((nh for layer, nh in NEXT_HEADERS if isinstance(upper, layer)), NH_UDP)


def echo(marker: bytes) -> Packet:
    """An ICMPv6 Echo Request carrying the marker (its reply carries it back)."""
    return ICMPv6EchoRequest(id=0x5EC6, seq=1, data=marker)


def echo_answered() -> Check:
    """The Echo Reply to the request sent, from the address it was sent to (RFC 4443
    §4.2: the request's data returned unchanged)."""

    def check(sent: Any, seen: Any) -> list[str]:
        reply = seen.getlayer(ICMPv6EchoReply)
        if reply is None:
            return [f"no Echo Reply: {seen.summary()}"]
        request = sent[ICMPv6EchoRequest]
        wrong = []
        if (reply.id, reply.seq, bytes(reply.data)) != (request.id, request.seq, request.data):
            wrong.append("the reply's identifier, sequence number or data differ")
        if seen.dst != sent.src:
            wrong.append(f"reply to {seen.dst}, not to the sender {sent.src}")
        return wrong

    return check


def first_fragment(marker: bytes) -> Packet:
    """A Fragment header (offset 0, more to come) and the start of a UDP datagram."""
    return IPv6ExtHdrFragment(nh=NH_UDP, offset=0, m=1, id=0x5EC6) / payload(marker)


def unknown_tlv(length: int) -> Packet:
    """A TLV of a type no RFC assigns (0x7e: its data does not change en route)."""
    return IPv6ExtHdrSegmentRoutingTLV(type=0x7E, len=length, value=b"\xab" * length)


def overrunning_tlv() -> Packet:
    """A TLV whose length (20) runs past the 8 bytes the SRH's Hdr Ext Len leaves it."""
    return IPv6ExtHdrSegmentRoutingTLV(type=0x7E, len=20, value=b"\xab" * 6)


def hmac_tlv(key_id: int, digest: bytes = bytes(32)) -> Packet:
    """RFC 8754 §2.1.2's HMAC TLV (D clear, a 32-octet HMAC), built as a generic TLV:
    scapy 2.8's own class writes Length as two octets counted from 48, a TLV no node can
    walk."""
    return IPv6ExtHdrSegmentRoutingTLV(type=5, len=38, value=struct.pack("!HI", 0, key_id) + digest)


def hmac_digest(probe: Packet, key: HmacKey) -> bytes:
    """The HMAC of `probe`'s SRH as RFC 8754 §2.1.2.1 computes it: over the source
    address, Last Entry, Flags, the 16 bits after the HMAC TLV's Length, its Key ID and the
    Segment List, with the key's secret and algorithm; the digest truncated (or zero-padded)
    to 32 octets."""
    srh = bytes(probe[IPv6ExtHdrSegmentRouting])
    header = srh[: (srh[1] + 1) * 8]
    last_entry, flags = header[4], header[5]
    segments_end = 8 + 16 * (last_entry + 1)
    tlv = _find_tlv(header[segments_end:], 5)
    text = (
        IPv6Address(probe[IPv6].src).packed
        + bytes([last_entry, flags])
        + tlv[2:4]  # D and RESERVED
        + tlv[4:8]  # HMAC Key ID
        + header[8:segments_end]
    )
    digest = hmac.new(key.secret, text, getattr(hashlib, key.algorithm)).digest()
    return digest[:32].ljust(32, b"\0")


def _find_tlv(tlvs: bytes, kind: int) -> bytes:
    """The first TLV of type `kind` in an SRH's TLV area (Pad1 is one octet, RFC 8754
    §2.1.1.1)."""
    at = 0
    while at < len(tlvs):
        if tlvs[at] == kind:
            return tlvs[at : at + 2 + tlvs[at + 1]]
        at += 1 if tlvs[at] == 0 else 2 + tlvs[at + 1]
    raise ValueError(f"no TLV of type {kind}")


def hmac_probe(plan: Plan, sid: IPv6Address, marker: bytes, *, valid: bool = True) -> Packet:
    """The usual probe with an HMAC TLV under the suite's key (HMAC_KEY): its HMAC right,
    or (not `valid`) with the first octet's bits flipped."""

    def probe(digest: bytes) -> Packet:
        tlv = hmac_tlv(HMAC_KEY.key_id, digest)
        return srh_probe(plan, sid, [_next(plan)], payload(marker), tlvs=[tlv])

    digest = hmac_digest(probe(bytes(32)), HMAC_KEY)
    if not valid:
        digest = bytes([digest[0] ^ 0xFF]) + digest[1:]
    return probe(digest)


def unrecognized_next(probe: Packet) -> Packet:
    """`probe` with its SRH's Next Header an unassigned protocol number: the chain of
    headers broken where the SRH ends."""
    broken = probe.copy()
    broken[IPv6ExtHdrSegmentRouting].nh = UNASSIGNED_NH
    return broken


def after_destination_options(probe: Packet) -> Packet:
    """`probe` with an (empty) Destination Options header between its IPv6 header and
    its SRH: the order RFC 8200 §4.1 recommends for options the SIDs' nodes read."""
    header = probe.copy()
    srh = header[IPv6ExtHdrSegmentRouting]
    header.remove_payload()
    return IPv6(bytes(header / IPv6ExtHdrDestOpt(nh=43) / srh))


def truncated_srh(plan: Plan, sid: IPv6Address, marker: bytes) -> Packet:
    """An SRH whose Hdr Ext Len (6: 56 bytes) claims more than the packet carries (the
    header's first 24 bytes, then the marker)."""
    whole = bytes(
        IPv6ExtHdrSegmentRouting(
            addresses=[str(plan.segment(2)), str(plan.segment(1)), str(sid)],
            segleft=2,
            lastentry=2,
            nh=NH_UDP,
        )
    )
    return IPv6(src=str(plan.tester_near), dst=str(sid), nh=43) / Raw(whole[:24] + marker)


def shifted(plan: Plan, address: Any) -> IPv6Address:
    """`address` after a NEXT-CSID shift: the locator block kept, the argument moved up
    by one C-SID, zeros shifted in (RFC 9800)."""
    value, rest_bits = int(IPv6Address(address)), 128 - plan.CSID_BLOCK_BITS
    block = value >> rest_bits << rest_bits
    rest = (value << plan.CSID_BITS) & ((1 << rest_bits) - 1)
    return IPv6Address(block | rest)


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
        elif _but_segments_left(srh) != _but_segments_left(before):
            wrong.append("the SRH's flags, tag or TLVs changed")
        if bytes(srh.payload) != bytes(before.payload):
            wrong.append("what follows the SRH changed")
        return wrong

    return check


def _but_segments_left(srh: Packet) -> bytes:
    """The SRH's own bytes (not what follows it), Segments Left zeroed."""
    alone = srh.copy()
    alone.remove_payload()
    raw = bytearray(bytes(alone))
    raw[3] = 0
    return bytes(raw)


def csid_shifted() -> Check:
    """NEXT-CSID with a next C-SID in the argument (RFC 9800): the destination shifted
    by one C-SID, the hop limit one less, the rest of the packet (an SRH included,
    its Segments Left unchanged) as sent."""

    def check(sent: Any, seen: Any) -> list[str]:
        expected = shifted(PLAN, sent.dst)
        wrong = []
        if seen.dst != str(expected):
            wrong.append(f"destination {seen.dst}, not the shifted {expected}")
        if seen.hlim != sent.hlim - 1:
            wrong.append(f"hop limit {seen.hlim}, sent {sent.hlim}")
        if bytes(seen.payload) != bytes(sent.payload):
            wrong.append("what follows the IPv6 header changed (an SRH must stay as sent)")
        return wrong

    return check


def inserted_by(policy: Sequence[Any], *, reduced: bool) -> Check:
    """H.Insert (.Red): the packet's own header kept (its source), its destination the
    policy's first SID, an SRH inserted after it listing the policy and then the
    original destination (Segment List[0]); the reduced form leaves the first SID out
    of the list; Segments Left n; what followed the IPv6 header unchanged."""
    segments = [str(s) for s in policy]

    def check(sent: Any, seen: Any) -> list[str]:
        wrong = []
        if (seen.src, seen.dst) != (sent.src, segments[0]):
            wrong.append(f"{seen.src} → {seen.dst}, not {sent.src} → {segments[0]}")
        if seen.hlim != sent.hlim - 1:
            wrong.append(f"hop limit {seen.hlim}, sent {sent.hlim} (one less expected)")
        srh = seen.getlayer(IPv6ExtHdrSegmentRouting)
        if srh is None:
            return [*wrong, "no SRH"]
        listed = [sent.dst, *reversed(segments[1:] if reduced else segments)]
        if list(srh.addresses) != listed:
            wrong.append(f"SRH lists {list(srh.addresses)}, not {listed}")
        if srh.segleft != len(segments):
            wrong.append(f"segments left {srh.segleft}, not {len(segments)}")
        if bytes(srh.payload) != bytes(sent.payload):
            wrong.append("what followed the IPv6 header changed")
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
            sent_len, seen_len = len(bytes(inner)), len(bytes(seen))
            wrong.append(f"the inner packet changed ({seen_len} bytes out, {sent_len} sent)")
        return wrong

    return check


def b6_encapsulated(policy: Sequence[Any], *, reduced: bool = False) -> Check:
    """End.B6.Encaps (RFC 8986 §4.13; .Red §4.14): the received packet, its SRH already
    advanced (SL one less, destination the next segment, hop limit one less), inside a new
    IPv6 header with an SRH of the policy's segments (the reduced form without the first)
    whose destination is the policy's first."""

    def check(sent: Any, seen: Any) -> list[str]:
        wrong = []
        if seen.dst != str(policy[0]):
            wrong.append(f"outer destination {seen.dst}, not the policy's first SID {policy[0]}")
        inner = seen.getlayer(IPv6, 2)
        if inner is None:
            return [*wrong, "no inner IPv6 packet"]
        outer_srh = seen.getlayer(IPv6ExtHdrSegmentRouting)
        listed = [str(s) for s in (policy[1:] if reduced else policy)]
        if outer_srh is None or list(outer_srh.addresses) != list(reversed(listed)):
            wrong.append("the outer SRH does not list the policy's segments")
        return wrong + forwarded_to_next()(sent, inner)

    return check


def psp_forwarded() -> Check:
    """PSP at the penultimate SID (RFC 8986 §4.16.1.2 S14.1-S14.5): End's processing, then
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


def frame_out() -> Check:
    """End.DX2 (RFC 8986 §4.9 upper layer S01-S03): the inner Ethernet frame out of its
    interface exactly as it was sent (an L2 cross-connect changes nothing in it)."""

    def check(sent: Any, seen: Any) -> list[str]:
        inner = sent.getlayer(Ether)
        frame = seen.underlayer
        if inner is None:
            return ["(the case sent no inner frame)"]
        if not isinstance(frame, Ether):
            return [f"no Ethernet frame around {seen.summary()}"]
        if bytes(frame)[: len(bytes(inner))] != bytes(inner):
            return [f"the frame changed: {frame.summary()}"]
        return []

    return check


def l2_encapsulated(plan: Plan, sid: IPv6Address, marker: bytes) -> Packet:
    """An Ethernet frame (broadcast, so that the tester takes it in, carrying an IPv6
    probe) in an outer IPv6 header with an SRH whose Segments Left is 0."""
    frame = Ether(dst="ff:ff:ff:ff:ff:ff", src="02:5e:c6:00:00:01") / inner6(plan, marker)
    return encapsulated(plan, sid, frame, srh=True)


def inner_hop_limit_decremented() -> Check:
    """H.Encaps S05 (RFC 8986 §5.1): the encapsulated packet's own hop limit one less (the
    one change RFC 2473 allows it)."""

    def check(sent: Any, seen: Any) -> list[str]:
        inner = seen.getlayer(IPv6, 2)
        if inner is None:
            return ["no inner IPv6 packet"]
        if inner.hlim != sent.hlim - 1:
            return [f"inner hop limit {inner.hlim}, sent {sent.hlim} (one less expected)"]
        return []

    return check


def outer_flow_label_set() -> Check:
    """H.Encaps S03 with RFC 6437/6438: the outer header carries a flow label (a tunnel
    entry point sets one, from the inner flow, for the network's ECMP)."""

    def check(sent: Any, seen: Any) -> list[str]:
        return [] if seen.fl else ["the outer flow label is 0"]

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
END_DX2 = SidSpec("End.DX2")
PLAN = Plan()
UNROUTED = IPv6Address("2001:db8:dead::1")  # no route anywhere: only a cross-connect gets it out
B6_POLICY = (PLAN.segment(10), PLAN.segment(11))
END_B6 = SidSpec("End.B6.Encaps", segments=B6_POLICY)
END_PSP = SidSpec("End", frozenset({"PSP"}))
HEADEND_POLICY = (PLAN.segment(20), PLAN.segment(21))
H_ENCAPS = SidSpec("H.Encaps", segments=HEADEND_POLICY)
H_ENCAPS_RED = SidSpec("H.Encaps.Red", segments=HEADEND_POLICY)
H_INSERT = SidSpec("H.Insert", segments=HEADEND_POLICY)
H_INSERT_RED = SidSpec("H.Insert.Red", segments=HEADEND_POLICY)
END_B6_RED = SidSpec("End.B6.Encaps.Red", segments=B6_POLICY)
END_X_PSP = SidSpec("End.X", frozenset({"PSP"}))
END_USP = SidSpec("End", frozenset({"USP"}))
END_USD = SidSpec("End", frozenset({"USD"}))
END_PSP_USD = SidSpec("End", frozenset({"PSP", "USD"}))
END_PSP_USP = SidSpec("End", frozenset({"PSP", "USP"}))
END_USP_USD = SidSpec("End", frozenset({"USP", "USD"}))
END_CSID = SidSpec("End", frozenset({"NEXT-CSID"}))
END_COUNTED = SidSpec("End", counted=True)
NEXT_CSID = 0xE001  # a C-SID of the next node, routed out (Plan.csid_next)
# An HMAC TLV (RFC 8754 §2.1.2) with a key ID the DUT has not been given: what a node
# that is not configured to verify HMACs receives.
HMAC_TLV = hmac_tlv(0x5EC6, b"\x5a" * 32)
END_HMAC = SidSpec("End", hmac=True)
HMAC_POINTER = 40 + 8 + 2 * 16  # the HMAC TLV after an SRH of two segments


def _next(plan: Plan) -> IPv6Address:
    return plan.segment(1)


def steered_probe(plan: Plan, sid: IPv6Address, marker: bytes) -> Packet:
    """A plain IPv6 packet to the destination a headend case steers into the policy at
    `sid` (its binding SID)."""
    return inner6(plan, marker, plan.steered_to(sid))


def at_last_sid(plan: Plan, sid: IPv6Address, marker: bytes) -> Packet:
    """`sid` the last segment (Segments Left 0), UDP behind the SRH."""
    return srh_probe(plan, sid, [], payload(marker), segments_left=0)


# USP's upper layer processed at the last SID: UDP to a port nobody listens on.
UPPER_LAYER_PROCESSED = Expect.error(
    DEST_UNREACH, PORT_UNREACHABLE, None, "Port Unreachable (UDP processed)"
)


def to_next_segment(plan: Plan, sid: IPv6Address, marker: bytes) -> Packet:
    """The usual probe: `sid` active, one segment (`_next`) after it, UDP behind the SRH."""
    return srh_probe(plan, sid, [_next(plan)], payload(marker))


# The expectations several clauses share.
AT_SEGMENTS_LEFT = Expect.error(
    PARAM_PROBLEM, ERRONEOUS_FIELD, SL_POINTER, "Parameter Problem 0, pointer 43 (Segments Left)"
)
AT_UPPER_LAYER = Expect.error(  # after the one-segment SRH: 40 + 8 + 16
    PARAM_PROBLEM, SR_UPPER_LAYER, 40 + 8 + 16, "Parameter Problem 4 at the UDP header"
)
INNER6_OUT = Expect.forwarded(delivered(6), "inner packet out, HL-1, otherwise unchanged")
INNER4_OUT = Expect.forwarded(delivered(4), "inner packet out, TTL-1, otherwise unchanged")


def decapsulation_errors(behaviour: str, section: str, sid: SidSpec) -> tuple[Case, ...]:
    """A decapsulating SID's two error clauses (RFC 8986 §4.4-§4.8): Segments Left not 0
    (S02-S04 of its SRH processing), and an upper layer it does not decapsulate (UDP:
    processed as per §4.1.1, Parameter Problem code 4)."""
    name = behaviour.lower()
    return (
        Case(
            f"{name}.sl-not-zero",
            f"{behaviour} with Segments Left 1: Parameter Problem at Segments Left",
            f"RFC 8986 §{section} S02-S04",
            Level.MUST,
            sid,
            lambda p, sid, m: srh_probe(p, sid, [_next(p)], inner6(p, m)),
            AT_SEGMENTS_LEFT,
        ),
        Case(
            f"{name}.udp-upper-layer",
            f"{behaviour} given a UDP upper layer: Parameter Problem code 4",
            f"RFC 8986 §{section} upper layer (else), §4.1.1",
            Level.MUST,
            sid,
            lambda p, sid, m: srh_probe(p, sid, [], payload(m), segments_left=0),
            AT_UPPER_LAYER,
        ),
    )


CASES: tuple[Case, ...] = (
    Case(
        "end.forward",
        "End with Segments Left 1 forwards to the next segment",
        "RFC 8986 §4.1 S12-S15",
        Level.MUST,
        END,
        to_next_segment,
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
        "end.sl0-icmp",
        "End with Segments Left 0 and an ICMPv6 upper layer (allowed): Echo answered",
        "RFC 8986 §4.1 S02-S03, §4.1.1 S01-S02",
        Level.SHOULD,
        END,
        lambda p, sid, m: srh_probe(p, sid, [], echo(m), segments_left=0),
        Expect.answered(echo_answered(), "Echo Reply from the SID"),
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
        "RFC 8986 §4.4 upper layer S01-S03",
        Level.MUST,
        END_DX6,
        lambda p, sid, m: encapsulated(p, sid, inner6(p, m, UNROUTED), srh=True),
        INNER6_OUT,
    ),
    Case(
        "end.dx6.reduced",
        "End.DX6 without an SRH (H.Encaps.Red) delivers the inner IPv6 packet",
        "RFC 8986 §4.4 upper layer S01-S03 (no SRH)",
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
        "end.dx6.udp-upper-layer",
        "End.DX6 given a UDP upper layer: Parameter Problem code 4",
        "RFC 8986 §4.4 upper layer S04-S05, §4.1.1",
        Level.MUST,
        END_DX6,
        lambda p, sid, m: srh_probe(p, sid, [], payload(m), segments_left=0),
        AT_UPPER_LAYER,
    ),
    Case(
        "end.dt6.lookup",
        "End.DT6 delivers the inner IPv6 packet by a lookup in its table",
        "RFC 8986 §4.6 upper layer S01-S04",
        Level.MUST,
        END_DT6,
        lambda p, sid, m: encapsulated(p, sid, inner6(p, m), srh=True),
        INNER6_OUT,
    ),
    Case(
        "end.dx4.srh",
        "End.DX4 delivers the inner IPv4 packet to its next hop",
        "RFC 8986 §4.5 upper layer S01-S03",
        Level.MUST,
        END_DX4,
        lambda p, sid, m: encapsulated(p, sid, inner4(p, m, "203.0.113.99"), srh=True),
        INNER4_OUT,
    ),
    Case(
        "end.dt4.lookup",
        "End.DT4 delivers the inner IPv4 packet by a lookup in its table",
        "RFC 8986 §4.7 upper layer S01-S04",
        Level.MUST,
        END_DT4,
        lambda p, sid, m: encapsulated(p, sid, inner4(p, m), srh=True),
        INNER4_OUT,
    ),
    Case(
        "end.dt46.v6",
        "End.DT46 delivers an inner IPv6 packet by a lookup in its table",
        "RFC 8986 §4.8 upper layer S01-S08",
        Level.MUST,
        END_DT46,
        lambda p, sid, m: encapsulated(p, sid, inner6(p, m), srh=True),
        INNER6_OUT,
    ),
    Case(
        "end.dt46.v4",
        "End.DT46 delivers an inner IPv4 packet by a lookup in its table",
        "RFC 8986 §4.8 upper layer S01-S08",
        Level.MUST,
        END_DT46,
        lambda p, sid, m: encapsulated(p, sid, inner4(p, m), srh=True),
        INNER4_OUT,
    ),
    Case(
        "end.psp",
        "End with PSP at the penultimate SID removes the SRH",
        "RFC 8986 §4.16.1.2 S14.1-S14.5",
        Level.MUST,
        END_PSP,
        to_next_segment,
        Expect.forwarded(psp_forwarded(), "next segment, no SRH, HL-1"),
    ),
    Case(
        "h.encaps",
        "H.Encaps: the packet inside an outer header with the policy's SRH",
        "RFC 8986 §5.1",
        Level.MUST,
        H_ENCAPS,
        steered_probe,
        Expect.forwarded(
            encapsulated_by(HEADEND_POLICY, reduced=False, source=PLAN.dut_far),
            "outer header to the first SID, SRH of both SIDs, SL 1",
        ),
    ),
    Case(
        "h.encaps.inner-hop-limit",
        "H.Encaps decrements the inner packet's hop limit",
        "RFC 8986 §5.1 S05",
        Level.MUST,
        H_ENCAPS,
        steered_probe,
        Expect.forwarded(inner_hop_limit_decremented(), "inner hop limit one less"),
    ),
    Case(
        "h.encaps.flow-label",
        "H.Encaps sets the outer flow label",
        "RFC 8986 §5.1 S03 (RFC 6437, RFC 6438)",
        Level.SHOULD,
        H_ENCAPS,
        steered_probe,
        Expect.forwarded(outer_flow_label_set(), "a non-zero outer flow label"),
    ),
    Case(
        "h.encaps.red",
        "H.Encaps.Red: the first SID only in the destination, not in the SRH",
        "RFC 8986 §5.2",
        Level.MUST,
        H_ENCAPS_RED,
        steered_probe,
        Expect.forwarded(
            encapsulated_by(HEADEND_POLICY, reduced=True, source=PLAN.dut_far),
            "outer header to the first SID, SRH of the second only, SL 1",
        ),
    ),
    Case(
        "end.dx2.frame",
        "End.DX2 delivers the inner Ethernet frame, unchanged, out of its interface",
        "RFC 8986 §4.9 upper layer S01-S03",
        Level.MUST,
        END_DX2,
        l2_encapsulated,
        Expect.forwarded(frame_out(), "the inner frame out of the far link, unchanged"),
    ),
    *decapsulation_errors("End.DX2", "4.9", END_DX2),
    *decapsulation_errors("End.DX4", "4.5", END_DX4),
    *decapsulation_errors("End.DT6", "4.6", END_DT6),
    *decapsulation_errors("End.DT4", "4.7", END_DT4),
    *decapsulation_errors("End.DT46", "4.8", END_DT46),
    # --- RFC 8754: the SRH's other fields, TLVs, the header chain, fragments ---------------
    Case(
        "srh.flags",
        "Unassigned flags set: ignored, forwarded as sent",
        "RFC 8754 §2 (Flags)",
        Level.MUST,
        END,
        lambda p, sid, m: srh_probe(p, sid, [_next(p)], payload(m), flags=True),
        Expect.forwarded(forwarded_to_next(), "next segment, the flags as sent"),
    ),
    Case(
        "srh.tag",
        "A tag the node does not use: ignored, forwarded as sent",
        "RFC 8754 §2 (Tag)",
        Level.SHOULD,
        END,
        lambda p, sid, m: srh_probe(p, sid, [_next(p)], payload(m), tag=0xBEEF),
        Expect.forwarded(forwarded_to_next(), "next segment, the tag as sent"),
    ),
    Case(
        "srh.tlv.unknown",
        "A TLV of an unrecognised type: ignored, forwarded as sent",
        "RFC 8754 §2.1",
        Level.MUST,
        END,
        lambda p, sid, m: srh_probe(p, sid, [_next(p)], payload(m), tlvs=[unknown_tlv(6)]),
        Expect.forwarded(forwarded_to_next(), "next segment, the TLV as sent"),
    ),
    Case(
        "srh.tlv.pad1",
        "A Pad1 TLV (after another TLV): ignored, forwarded as sent",
        "RFC 8754 §2.1.1, §2.1.1.1",
        Level.MUST,
        END,
        lambda p, sid, m: srh_probe(
            p, sid, [_next(p)], payload(m), tlvs=[unknown_tlv(5), IPv6ExtHdrSegmentRoutingTLVPad1()]
        ),
        Expect.forwarded(forwarded_to_next(), "next segment, the TLVs as sent"),
    ),
    Case(
        "srh.tlv.padn",
        "A PadN TLV (after another TLV): ignored, forwarded as sent",
        "RFC 8754 §2.1.1, §2.1.1.2",
        Level.MUST,
        END,
        lambda p, sid, m: srh_probe(
            p,
            sid,
            [_next(p)],
            payload(m),
            tlvs=[unknown_tlv(2), IPv6ExtHdrSegmentRoutingTLVPadN(padding=b"\0\0")],
        ),
        Expect.forwarded(forwarded_to_next(), "next segment, the TLVs as sent"),
    ),
    Case(
        "srh.tlv.overrun",
        "A TLV running past Hdr Ext Len: Parameter Problem at Hdr Ext Len",
        "RFC 8754 §2.1",
        Level.MUST,
        END,
        lambda p, sid, m: srh_probe(p, sid, [_next(p)], payload(m), tlvs=[overrunning_tlv()]),
        Expect.error(PARAM_PROBLEM, ERRONEOUS_FIELD, 40 + 1, "Parameter Problem 0, pointer 41"),
    ),
    Case(
        "srh.tlv.hmac-unverified",
        "An HMAC TLV at a node not configured to verify HMACs: forwarded as sent",
        "RFC 8754 §2.1.2.1 (local configuration decides)",
        Level.SHOULD,
        END,
        lambda p, sid, m: srh_probe(p, sid, [_next(p)], payload(m), tlvs=[HMAC_TLV]),
        Expect.forwarded(forwarded_to_next(), "next segment, the HMAC TLV as sent"),
    ),
    Case(
        "srh.hmac.valid",
        "An HMAC TLV the node verifies, its HMAC right: processing proceeds as normal",
        "RFC 8754 §2.1.2.1",
        Level.SHOULD,
        END_HMAC,
        hmac_probe,
        Expect.forwarded(forwarded_to_next(), "next segment, the HMAC TLV as sent"),
    ),
    Case(
        "srh.hmac.invalid",
        "An HMAC TLV the node verifies, its HMAC wrong: Parameter Problem at the TLV, dropped",
        "RFC 8754 §2.1.2.1",
        Level.SHOULD,
        END_HMAC,
        lambda p, sid, m: hmac_probe(p, sid, m, valid=False),
        Expect.error(
            PARAM_PROBLEM,
            ERRONEOUS_FIELD,
            HMAC_POINTER,
            f"Parameter Problem 0, pointer {HMAC_POINTER}",
        ),
    ),
    Case(
        "srh.truncated",
        "An SRH longer (Hdr Ext Len) than the packet: not forwarded",
        "RFC 8200 §4.4; RFC 8754 §4.3.1.1 (Hdr Ext Len)",
        Level.SHOULD,
        END,
        truncated_srh,
        Expect.dropped("dropped: not forwarded"),
    ),
    Case(
        "srh.after-destination-options",
        "A Destination Options header before the SRH: the SRH processed, forwarded",
        "RFC 8200 §4.1; RFC 8754 §4.3.1",
        Level.MUST,
        END,
        lambda p, sid, m: after_destination_options(srh_probe(p, sid, [_next(p)], payload(m))),
        Expect.forwarded(forwarded_to_next(), "next segment, both headers kept"),
    ),
    Case(
        "local.sl-not-zero",
        "An SRH to a local address that is no SID, Segments Left 1: Parameter Problem",
        "RFC 8754 §4.3.2",
        Level.MUST,
        END,  # any SID: the case checks the node's own address is no End
        lambda p, sid, m: srh_probe(p, p.dut_near, [_next(p)], payload(m)),
        Expect.error(PARAM_PROBLEM, ERRONEOUS_FIELD, 40 + 2, "Parameter Problem 0, pointer 42"),
    ),
    Case(
        "local.sl0",
        "An SRH to a local address that is no SID, Segments Left 0: the upper layer processed",
        "RFC 8754 §4.3.2",
        Level.MUST,
        END,
        lambda p, sid, m: srh_probe(p, p.dut_near, [], echo(m), segments_left=0),
        Expect.answered(echo_answered(), "Echo Reply (the ICMPv6 Echo Request processed)"),
    ),
    Case(
        "local.sl0.unrecognized-next-header",
        "An SRH to a local address, Segments Left 0, its Next Header one no node knows: "
        "Parameter Problem 1 at that Next Header",
        "RFC 8200 §4; RFC 8754 §4.3.2",
        Level.SHOULD,  # RFC 8200's own "should" (lower case)
        END,
        lambda p, sid, m: unrecognized_next(
            srh_probe(p, p.dut_near, [], payload(m), segments_left=0)
        ),
        Expect.error(
            PARAM_PROBLEM, UNRECOGNIZED_NEXT_HEADER, 40, "Parameter Problem 1, pointer 40"
        ),
    ),
    Case(
        "end.fragment",
        "A first fragment (Fragment header after the SRH): forwarded as it is",
        "RFC 8200 §4.5; RFC 8754 §4.3.1",
        Level.MUST,
        END,
        lambda p, sid, m: srh_probe(p, sid, [_next(p)], first_fragment(m)),
        Expect.forwarded(forwarded_to_next(), "next segment, the fragment as sent"),
    ),
    Case(
        "end.dt6.reassembly",
        "End.DT6 given the outer packet in fragments: reassembled, inner delivered",
        "RFC 8200 §4.5; RFC 8986 §4.6",
        Level.MUST,
        END_DT6,
        lambda p, sid, m: encapsulated(
            p,
            sid,
            IPv6ExtHdrFragment(nh=NH_IPV6, id=0x5EC7) / inner6(p, m + b"\0" * 1000),
            srh=True,
        ),
        INNER6_OUT,
        fragment=600,
    ),
    # --- RFC 8986 §4.16: flavours -----------------------------------------------------------
    Case(
        "end.x.psp",
        "End.X with PSP at the penultimate SID removes the SRH",
        "RFC 8986 §4.16.1.2",
        Level.MUST,
        END_X_PSP,
        lambda p, sid, m: srh_probe(p, sid, [UNROUTED], payload(m)),
        Expect.forwarded(psp_forwarded(), "out of its adjacency, no SRH, HL-1"),
    ),
    Case(
        "end.usp",
        "End with USP at the last SID: SRH removed, the upper layer processed",
        "RFC 8986 §4.16.2 S02-S04",
        Level.MUST,
        END_USP,
        at_last_sid,
        UPPER_LAYER_PROCESSED,
    ),
    Case(
        "end.usd.v6",
        "End with USD at the last SID: the inner IPv6 packet decapsulated and forwarded",
        "RFC 8986 §4.16.3",
        Level.MUST,
        END_USD,
        lambda p, sid, m: encapsulated(p, sid, inner6(p, m), srh=True),
        INNER6_OUT,
    ),
    Case(
        "end.usd.v4",
        "End with USD at the last SID: the inner IPv4 packet decapsulated and forwarded",
        "RFC 8986 §4.16.3",
        Level.MUST,
        END_USD,
        lambda p, sid, m: encapsulated(p, sid, inner4(p, m), srh=True),
        INNER4_OUT,
    ),
    Case(
        "end.psp+usd.penultimate",
        "End with PSP and USD at the penultimate SID: PSP's part, the SRH removed",
        "RFC 8986 §4.16.1.2, §4.16.3",
        Level.MUST,
        END_PSP_USD,
        to_next_segment,
        Expect.forwarded(psp_forwarded(), "next segment, no SRH, HL-1"),
    ),
    Case(
        "end.psp+usd.last",
        "End with PSP and USD at the last SID: USD's part, decapsulated",
        "RFC 8986 §4.16.1.2, §4.16.3",
        Level.MUST,
        END_PSP_USD,
        lambda p, sid, m: encapsulated(p, sid, inner6(p, m), srh=True),
        INNER6_OUT,
    ),
    Case(
        "end.psp+usp.penultimate",
        "End with PSP and USP at the penultimate SID: PSP's part, the SRH removed",
        "RFC 8986 §4.16.1.2, §4.16.2",
        Level.MUST,
        END_PSP_USP,
        to_next_segment,
        Expect.forwarded(psp_forwarded(), "next segment, no SRH, HL-1"),
    ),
    Case(
        "end.psp+usp.last",
        "End with PSP and USP at the last SID: USP's part, the upper layer processed",
        "RFC 8986 §4.16.1.2, §4.16.2 S02-S04",
        Level.MUST,
        END_PSP_USP,
        at_last_sid,
        UPPER_LAYER_PROCESSED,
    ),
    Case(
        "end.usp+usd.v6",
        "End with USP and USD at the last SID: the SRH popped, the inner IPv6 packet "
        "decapsulated and forwarded",
        "RFC 8986 §4.16.2, §4.16.3",
        Level.MUST,
        END_USP_USD,
        lambda p, sid, m: encapsulated(p, sid, inner6(p, m), srh=True),
        INNER6_OUT,
    ),
    # --- RFC 9800: NEXT-CSID ---------------------------------------------------------------
    Case(
        "csid.shift",
        "NEXT-CSID End: the next C-SID shifted into place (no SRH)",
        "RFC 9800 (End with NEXT-CSID)",
        Level.MUST,
        END_CSID,
        lambda p, sid, m: (
            IPv6(src=str(p.tester_near), dst=str(p.with_next_csids(sid, NEXT_CSID)), hlim=64)
            / payload(m)
        ),
        Expect.forwarded(csid_shifted(), "destination shifted by one C-SID, HL-1"),
    ),
    Case(
        "csid.shift-keeps-srh",
        "NEXT-CSID End with an SRH: shifted, the SRH (Segments Left) untouched",
        "RFC 9800 (End with NEXT-CSID)",
        Level.MUST,
        END_CSID,
        lambda p, sid, m: srh_probe(
            p, sid, [_next(p)], payload(m), dst=p.with_next_csids(sid, NEXT_CSID)
        ),
        Expect.forwarded(csid_shifted(), "destination shifted, the SRH as sent"),
    ),
    Case(
        "csid.end-of-container",
        "NEXT-CSID End, argument zero: End's processing, the next SID from the SRH",
        "RFC 9800 (End with NEXT-CSID); RFC 8986 §4.1",
        Level.MUST,
        END_CSID,
        to_next_segment,
        Expect.forwarded(forwarded_to_next(), "next segment, SL-1, HL-1"),
    ),
    Case(
        "csid.hop-limit",
        "NEXT-CSID End with hop limit 1: Time Exceeded",
        "RFC 9800 (End with NEXT-CSID)",
        Level.MUST,
        END_CSID,
        lambda p, sid, m: (
            IPv6(src=str(p.tester_near), dst=str(p.with_next_csids(sid, NEXT_CSID)), hlim=1)
            / payload(m)
        ),
        Expect.error(TIME_EXCEEDED, 0, None, "Time Exceeded, code 0"),
    ),
    # --- RFC 8986 §6: counters ------------------------------------------------------------
    Case(
        "end.counters",
        "End counts the packet it processed (per-SID counters)",
        "RFC 8986 §6",
        Level.SHOULD,
        END_COUNTED,
        to_next_segment,
        Expect.forwarded(forwarded_to_next(), "next segment; the SID's counter: 1 packet"),
    ),
    # --- headends and binding SIDs ----------------------------------------------------------
    Case(
        "h.insert",
        "H.Insert: an SRH of the policy and the original destination inserted",
        "draft-filsfils-spring-srv6-net-pgm-insertion-09 (H.Insert)",
        Level.MAY,
        H_INSERT,
        steered_probe,
        Expect.forwarded(
            inserted_by(HEADEND_POLICY, reduced=False), "DA the first SID, SRH inserted, SL 2"
        ),
    ),
    Case(
        "h.insert.red",
        "H.Insert.Red: the first SID only in the destination, not in the inserted SRH",
        "draft-filsfils-spring-srv6-net-pgm-insertion-09 (H.Insert.Red)",
        Level.MAY,
        H_INSERT_RED,
        steered_probe,
        Expect.forwarded(
            inserted_by(HEADEND_POLICY, reduced=True), "DA the first SID, reduced SRH, SL 2"
        ),
    ),
    Case(
        "end.b6.encaps.red",
        "End.B6.Encaps.Red: the policy's first SID only in the outer destination",
        "RFC 8986 §4.14",
        Level.MUST,
        END_B6_RED,
        to_next_segment,
        Expect.forwarded(b6_encapsulated(B6_POLICY, reduced=True), "reduced policy SRH outside"),
    ),
    Case(
        "end.b6.encaps",
        "End.B6.Encaps: SRH advanced, then encapsulated with the policy's SRH",
        "RFC 8986 §4.13 S12-S17",
        Level.MUST,
        END_B6,
        to_next_segment,
        Expect.forwarded(b6_encapsulated(B6_POLICY), "policy's SRH outside"),
    ),
)


__all__ = ["CASES", "PLAN"]
