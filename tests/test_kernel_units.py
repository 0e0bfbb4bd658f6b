"""The kernel backend's pure parts, no namespace needed: wire packing, staging, retries;
and one netlink read that needs a namespace but no SRv6 (a resilient group's buckets)."""

from __future__ import annotations

import errno
import socket
import struct
import sys
import threading
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import replace

import pytest
from pyroute2.netlink import NETLINK_ROUTE, NLM_F_REQUEST

from srv6ctl.dataplane import netlink_seg6 as nl
from srv6ctl.dataplane.kernel_caps import KernelFeatures
from srv6ctl.dataplane.kernel_codec import (
    Codec,
    InvalidObject,
    Links,
    SegmentPath,
    parse_bucket,
    parse_route,
)
from srv6ctl.dataplane.kernel_program import (
    HANDLERS,
    IdAllocator,
    Inventory,
    check_handlers,
    compile_changes,
)
from srv6ctl.dataplane.model import (
    KINDS,
    STEERING,
    Capabilities,
    Change,
    EncapMode,
    End,
    EndDX6,
    Flavour,
    IPv6Address,
    Op,
    PodAttachment,
    Route,
    RouteKind,
    SegmentList,
    SrPolicy,
    Steering,
)
from srv6ctl.dataplane.netlink_channel import Feed, NetlinkChannel, Request, Writes, _frame
from tests.support.netns import Netns

A, B, C = (IPv6Address(f"fcbb:bb00:{n}::1") for n in (2, 3, 4))
BSID = IPv6Address("fcbb:bb00::1")
CODEC = Codec(0x5C, 0x5C, "srv6ctl0", "lo", True, 128, None)
LINKS = Links({"lo": 1, "srv6ctl0": 2, "up0": 3})
FEATURES = KernelFeatures(
    Capabilities(
        behaviours=frozenset({"End", "End.X", "End.DT6", "End.DX6", "End.DX4"}),
        flavours=frozenset({Flavour.PSP}),
        encap_modes=frozenset(EncapMode),
        resilient_groups=True,
        sid_counters=True,
    ),
    flavours={"End": frozenset({Flavour.PSP})},
)


# --- what the probe's answer means for the agent ----------------------------------------


def test_a_kernel_with_the_required_behaviours_is_usable_and_says_what_it_lacks() -> None:
    lacking = replace(
        FEATURES,
        capabilities=replace(FEATURES.capabilities, notes=("End.DT4: unsupported: no VRF",)),
    )
    assert lacking.unsupported() is None
    assert lacking.left_out() == ("End.DT4: unsupported: no VRF",)


def test_a_kernel_without_seg6_lwtunnels_is_refused_naming_the_option() -> None:
    lwt = "Operation not supported (lwt encapsulation type not supported)"
    bare = KernelFeatures(
        Capabilities(), kernel="6.18.1", refused={"End": lwt, "seg6 nexthops": lwt}
    )
    problem = bare.unsupported()
    assert problem is not None and "\n" not in problem
    assert "6.18.1" in problem and "End, End.DT6, End.DX6, seg6 encap nexthops" in problem
    assert "built without CONFIG_IPV6_SEG6_LWTUNNEL" in problem and "--dataplane vpp" in problem


def test_another_refusal_is_quoted_as_the_kernel_said_it() -> None:
    no_dx6 = replace(
        FEATURES,
        capabilities=replace(
            FEATURES.capabilities, behaviours=FEATURES.capabilities.behaviours - {"End.DX6"}
        ),
        refused={"End.DX6": "Invalid argument"},
    )
    problem = no_dx6.unsupported()
    assert problem is not None
    assert "End.DX6 refused (the kernel said: Invalid argument)" in problem


# --- wire packing ----------------------------------------------------------------------


def test_srh_stores_the_segment_list_last_segment_first() -> None:
    packed = nl.pack_seg6_srh(nl.SEG6_IPTUN_MODE_ENCAP, [A, B, C])
    mode, srh = packed[:4], packed[4:]
    assert int.from_bytes(mode, sys.byteorder) == nl.SEG6_IPTUN_MODE_ENCAP
    # nexthdr, hdrlen (8-octet units beyond the first), type 4, segments left, last entry
    assert tuple(srh[:5]) == (0, 6, 4, 2, 2)
    assert [IPv6Address(srh[8 + 16 * i : 24 + 16 * i]) for i in range(3)] == [C, B, A]
    assert nl.unpack_seg6_srh(packed) == (nl.SEG6_IPTUN_MODE_ENCAP, (A, B, C))


def test_inline_srh_reserves_slot_zero_for_the_original_destination() -> None:
    packed = nl.pack_seg6_srh(nl.SEG6_IPTUN_MODE_INLINE, [A])
    assert packed[4 + 8 : 4 + 24] == bytes(16)
    assert nl.unpack_seg6_srh(packed) == (nl.SEG6_IPTUN_MODE_INLINE, (A,))


def test_group_weights_travel_as_weight_minus_one_over_sixteen_bits() -> None:
    packed = nl.pack_group([(7, 1), (8, 300)])
    assert packed[4:6] == bytes([0, 0]) and packed[12:14] == bytes([299 & 0xFF, 299 >> 8])
    assert nl.unpack_group(packed) == ((7, 1), (8, 300))
    with pytest.raises(ValueError):
        nl.pack_group([(7, 0)])


def _pyroute2(cls: type, msg_type: int, body: bytes) -> object:
    msg = cls(bytes(_frame(msg_type, 0, body)))
    msg.decode()
    return msg


def test_fast_packing_reads_back_through_pyroute2s_own_decoder() -> None:
    # The hot paths pack bytes themselves (netlink_wire); pyroute2 decoding them with the
    # declarations in netlink_seg6 is an independent check of every number and layout.
    steering = _pyroute2(
        nl.rtmsg, nl.RTM_NEWROUTE, CODEC.steering(Steering("10.96.0.1/32", BSID), 4242)
    )
    assert steering["family"] == socket.AF_INET and steering["dst_len"] == 32
    assert steering.get_attr("RTA_NH_ID") == 4242 and steering["proto"] == 0x5C
    assert steering.get_attr("RTA_DST") == "10.96.0.1"

    sid = _pyroute2(
        nl.rtmsg,
        nl.RTM_NEWROUTE,
        CODEC.local_sid(EndDX6("fcbb:bb00:1::9", nexthop="fd00:10::5", interface="up0"), LINKS),
    )
    encap = sid.get_attr("RTA_ENCAP")
    assert sid.get_attr("RTA_OIF") == 3 and sid.get_attr("RTA_ENCAP_TYPE") == 7
    assert encap.get_attr("SEG6_LOCAL_ACTION") == nl.SEG6_LOCAL_ACTION_END_DX6
    assert encap.get_attr("SEG6_LOCAL_NH6") == "fd00:10::5"
    assert encap.get_attr("SEG6_LOCAL_COUNTERS").get_attr("SEG6_LOCAL_CNT_ERRORS") == 0

    path = SegmentPath.make(EncapMode.ENCAP_RED, None, (A, B))
    nexthop = _pyroute2(nl.nhmsg, nl.RTM_NEWNEXTHOP, CODEC.segment_nexthop(7, path, LINKS))
    assert nexthop.get_attr("NHA_ID") == 7 and nexthop.get_attr("NHA_OIF") == 1
    srh = nexthop.get_attr("NHA_ENCAP").get_attr("SEG6_IPTUNNEL_SRH")
    assert nl.unpack_seg6_srh(srh) == (nl.SEG6_IPTUN_MODE_ENCAP_RED, (A, B))
    sourced = SegmentPath.make(EncapMode.ENCAP, C, (A,))
    nexthop = _pyroute2(nl.nhmsg, nl.RTM_NEWNEXTHOP, CODEC.segment_nexthop(8, sourced, LINKS))
    encap = nexthop.get_attr("NHA_ENCAP")
    assert encap.get_attr("SEG6_IPTUNNEL_SRC") == str(C)
    assert nl.unpack_seg6_srh(encap.get_attr("SEG6_IPTUNNEL_SRH"))[1] == (A,)

    group = _pyroute2(nl.nhmsg, nl.RTM_NEWNEXTHOP, CODEC.group(9, [(7, 3)]))
    assert nl.unpack_group(group.get_attr("NHA_GROUP")) == ((7, 3),)
    assert group.get_attr("NHA_RES_GROUP").get_attr("NHA_RES_GROUP_BUCKETS") == 128


def test_encoded_local_sid_decodes_back_to_itself() -> None:
    sid = End("fcbb:bb00:1::1", {Flavour.PSP})
    wire = _frame(nl.RTM_NEWROUTE, 0, CODEC.local_sid(sid, LINKS))
    parsed = parse_route(nl.RTM_NEWROUTE, bytes(wire))
    assert parsed is not None
    decoded = CODEC.decode_route(parsed, LINKS)
    assert decoded.obj == sid and decoded.counters == (0, 0, 0)


# --- staging ---------------------------------------------------------------------------


def compile_(changes: Iterable[Change], inventory: Inventory | None = None) -> list[list[str]]:
    program = compile_changes(
        changes, inventory or Inventory(), CODEC, LINKS, FEATURES, IdAllocator(100, 1000, set())
    )
    return [[f"{r.msg_type}:{r.flags:#x}:{r.what}" for r in stage] for stage in program.stages]


def test_a_policy_is_nexthops_then_a_group_then_its_anchor_and_steering() -> None:
    policy = SrPolicy(BSID, (SegmentList((A,)), SegmentList((B,), 2)))
    stages = compile_(
        [Change(Op.ADD, new=policy), Change(Op.ADD, new=Steering("fd00:96::1/128", BSID))]
    )
    # One ordered stage, each write after what it names: it can be sent while compiling.
    assert len(stages) == 1
    whats = [entry.split(":", 2)[2] for entry in stages[0]]
    kinds = [entry.split(":")[0] for entry in stages[0]]
    assert kinds == [str(nl.RTM_NEWNEXTHOP)] * 3 + [str(nl.RTM_NEWROUTE)] * 2
    assert [w.split(" ")[0] for w in whats[:2]] == ["nexthop", "nexthop"]
    assert whats[2].startswith("group of policy") and whats[3].startswith("anchor of policy")
    assert "fd00:96::1/128" in whats[4]


def test_every_kind_has_a_kernel_handler_and_a_missing_one_is_named() -> None:
    assert set(HANDLERS) == set(KINDS)
    with pytest.raises(TypeError, match="no handler for Steering"):
        check_handlers({k: h for k, h in HANDLERS.items() if k is not STEERING})


def test_a_pod_writes_nothing_and_an_unknown_object_is_refused() -> None:
    pod = PodAttachment("veth-a", "default/a", "/run/netns/a")
    assert compile_([Change(Op.ADD, new=pod)]) == []
    with pytest.raises(TypeError, match="not a dataplane object"):
        compile_([Change(Op.ADD, new="a string")])  # type: ignore[arg-type]


def test_delete_then_add_of_one_slot_becomes_one_atomic_replace() -> None:
    policy = SrPolicy(BSID, (SegmentList((A,)),))
    steering = Steering("fd00:96::1/128", BSID)
    program = compile_changes(
        [Change(Op.ADD, new=policy), Change(Op.ADD, new=steering)],
        Inventory(),
        CODEC,
        LINKS,
        FEATURES,
        IdAllocator(100, 1000, set()),
    )
    prohibit = Route("fd00:96::1/128", kind=RouteKind.PROHIBIT)
    stages = compile_(
        [
            Change(Op.DELETE, old=steering),
            Change(Op.ADD, new=prohibit),
            Change(Op.DELETE, old=policy),
        ],
        program.inventory,
    )
    route_writes = [e for stage in stages for e in stage if "fd00:96::1" in e]
    assert len(route_writes) == 1
    assert route_writes[0].startswith(f"{nl.RTM_NEWROUTE}:{0x500:#x}")  # CREATE|REPLACE


def test_shared_nexthop_is_created_once_and_deleted_with_its_last_user() -> None:
    p1, p2 = SrPolicy(BSID, (SegmentList((A,)),)), SrPolicy(C, (SegmentList((A,)),))
    first = compile_changes(
        [Change(Op.ADD, new=p1), Change(Op.ADD, new=p2)],
        Inventory(),
        CODEC,
        LINKS,
        FEATURES,
        IdAllocator(100, 1000, set()),
    )
    nexthops = [r for r in first.stages[0] if str(r.what).startswith("nexthop")]
    assert len(nexthops) == 1 and len(first.inventory.paths) == 1
    one_left = compile_([Change(Op.DELETE, old=p1)], first.inventory)
    assert not any("delete nexthop" in e for stage in one_left for e in stage)
    ids = IdAllocator(100, 1000, set())
    after = compile_changes(
        [Change(Op.DELETE, old=p1), Change(Op.DELETE, old=p2)],
        first.inventory,
        CODEC,
        LINKS,
        FEATURES,
        ids,
    )
    assert after.inventory.paths == {} and after.inventory.groups == {}


def test_allocator_skips_ids_held_by_anyone() -> None:
    ids = IdAllocator(10, 4, {10, 12})
    assert [ids.take(), ids.take()] == [11, 13]
    with pytest.raises(InvalidObject):
        ids.take()


def test_segment_path_key_includes_mode_and_source() -> None:
    red = SrPolicy(BSID, (SegmentList((A,)),), mode=EncapMode.ENCAP_RED)
    assert SegmentPath.of(red, red.segment_lists[0]) != SegmentPath.make(
        EncapMode.ENCAP, None, (A,)
    )


# --- the channel's retry ----------------------------------------------------------------


class _FlakyChannel(NetlinkChannel):
    """A channel whose kernel answers ENOMEM to the first `failures` attempts per message."""

    def __init__(self, failures: int) -> None:
        self.chunk, self.retry_deadline, self.writes, self.retries = 2, 5.0, 0, 0
        self.window = 8
        self.attempts: dict[int, int] = {}
        self.failures = failures

    def _drain(self) -> None:
        pass

    def _round_trip(
        self, writes: Writes, batches: Sequence[Sequence[int]]
    ) -> list[tuple[int, int, str]]:
        refused = []
        for row in [row for rows in batches for row in rows]:
            seen = self.attempts.get(row, 0)
            self.attempts[row] = seen + 1
            self.writes += 1
            if seen < self.failures:
                refused.append((row, errno.ENOMEM, ""))
        return refused


def _requests(n: int) -> Writes:
    return Writes(Request(nl.RTM_NEWROUTE, 0, bytes(12), f"route {i}") for i in range(n))


def test_enomem_is_retried_with_back_off_not_reported() -> None:
    channel = _FlakyChannel(failures=2)
    assert channel.execute(_requests(5)) == []
    assert channel.retries == 10 and all(n == 3 for n in channel.attempts.values())


def test_retries_stop_at_the_deadline() -> None:
    channel = _FlakyChannel(failures=10**6)
    channel.retry_deadline = 0.05
    failures = channel.execute(_requests(1))
    assert [f.errno for f in failures] == [errno.ENOMEM]


class _DependentChannel(_FlakyChannel):
    """Row 0 meets ENOMEM once; row 1 names it, so it fails (EINVAL) until row 0 landed."""

    def __init__(self, own_failure: int | None = None) -> None:
        super().__init__(failures=0)
        self.landed: list[int] = []
        self.own_failure = own_failure  # row 2 fails with this, always

    def _round_trip(
        self, writes: Writes, batches: Sequence[Sequence[int]]
    ) -> list[tuple[int, int, str]]:
        refused = []
        for row in [row for rows in batches for row in rows]:
            seen = self.attempts.get(row, 0)
            self.attempts[row] = seen + 1
            if row == 0 and seen == 0:
                refused.append((row, errno.ENOMEM, ""))
            elif row == 1 and 0 not in self.landed:
                refused.append((row, errno.EINVAL, "Invalid nexthop id"))
            elif row == 2 and self.own_failure is not None:
                refused.append((row, self.own_failure, ""))
            else:
                self.landed.append(row)
        return refused


def test_a_write_after_a_retried_one_in_its_datagram_is_retried_after_it() -> None:
    channel = _DependentChannel()
    channel.chunk, channel.window = 3, 1
    assert channel.execute(_requests(4)) == []
    assert channel.landed == [2, 0, 1, 3]  # 2 did not need 0; 1 went again after 0


def test_a_write_in_a_later_datagram_of_the_window_is_retried_after_it_too() -> None:
    channel = _DependentChannel()
    channel.chunk, channel.window = 1, 8  # rows 0..3 in four datagrams, sent before reading
    assert channel.execute(_requests(4)) == []
    assert channel.landed == [2, 3, 0, 1]


def test_a_deferred_write_that_fails_again_is_reported() -> None:
    channel = _DependentChannel(own_failure=errno.EEXIST)
    channel.chunk, channel.window = 3, 1
    failures = channel.execute(_requests(3))
    assert [(str(f.request.what), f.errno) for f in failures] == [("route 2", errno.EEXIST)]
    assert channel.attempts[2] == 2  # deferred once behind row 0, then refused for good


def test_writes_still_being_added_are_sent_as_the_feed_says_they_are_ready() -> None:
    channel = _FlakyChannel(failures=0)
    channel.chunk = 4
    writes, feed = _requests(3), Feed()
    sent: list[list[int]] = []
    round_trip = channel._round_trip

    def record(w: Writes, batches: Sequence[Sequence[int]]) -> list[tuple[int, int, str]]:
        sent.extend(list(rows) for rows in batches)
        return round_trip(w, batches)

    channel._round_trip = record  # type: ignore[method-assign]

    def produce() -> None:
        for i in range(3, 10):
            writes.add(nl.RTM_NEWROUTE, 0, bytes(12), "route", i)
            feed.publish(len(writes))
        feed.close()

    feed.publish(3)
    worker = threading.Thread(target=produce)
    worker.start()
    assert channel.execute(writes, feed) == []
    worker.join()
    assert [row for rows in sent for row in rows] == list(range(10))  # all, once, in order


def test_writes_are_framed_once_numbered_by_row_and_ask_for_no_ack() -> None:
    writes = Writes()
    writes.add(nl.RTM_NEWROUTE, 0x400, bytes(12), "route", "a")
    writes.add(nl.RTM_DELNEXTHOP, 0, bytes(8), "delete nexthop", 7)
    headers = [struct.unpack_from("=IHHII", wire) for wire in writes.wire]
    # A success stays silent (no NLM_F_ACK); a failure still answers, by sequence number.
    assert headers == [
        (28, nl.RTM_NEWROUTE, 0x400 | NLM_F_REQUEST, 1, 0),
        (24, nl.RTM_DELNEXTHOP, NLM_F_REQUEST, 2, 0),
    ]
    assert [str(r.what) for r in writes] == ["route a", "delete nexthop 7"]


def test_a_resilient_groups_buckets_are_read_member_by_member(netns: Netns) -> None:
    """RTM_GETNEXTHOPBUCKET as KernelBackend.buckets sends it, on plain nexthops (the
    group is what a policy's is, less the seg6 encap this host's kernel may lack)."""
    netns.ip("link", "add", "d0", "type", "veth", "peer", "name", "d1")
    netns.ip("link", "set", "d1", "up")
    netns.ip("link", "set", "d0", "up")
    netns.ip("addr", "add", "fd00:1::1/64", "dev", "d0", "nodad")
    netns.ip("-6", "nexthop", "add", "id", "11", "via", "fd00:1::2", "dev", "d0")
    netns.ip("-6", "nexthop", "add", "id", "12", "via", "fd00:1::3", "dev", "d0")
    netns.ip(
        "nexthop", "add", "id", "20", "group", "11,1/12,3", "type", "resilient", "buckets", "64"
    )
    netns.ip("nexthop", "add", "id", "21", "group", "11/12", "type", "resilient", "buckets", "32")
    channel = NetlinkChannel(f"/var/run/netns/{netns.name}", NETLINK_ROUTE, strict_dumps=True)
    try:
        members = channel.dump(nl.RTM_GETNEXTHOPBUCKET, Codec.bucket_dump(20), parse_bucket)
    finally:
        channel.close()
    assert Counter(members) == {11: 16, 12: 48}  # one group's only: 64, weights 1:3
