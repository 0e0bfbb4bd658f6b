"""Netlink vocabulary that pyroute2 0.9.7 lacks: nexthop objects and the newer seg6 attributes.

pyroute2 0.9.7 has no RTM_*NEXTHOP message class, no RTA_NH_ID, and its seg6/seg6local
encap classes stop at SEG6_LOCAL_VRFTABLE (no counters, no flavours, no encap.red, no
per-route tunnel source). Here those are declared the pyroute2 way (`nla_map` tables of the
kernel's own names), with the numbers of the kernel UAPI headers cited next to each table.
These tables are the single source of attribute numbers: the hot paths pack and parse
with `netlink_wire` (numbered from them), and pyroute2 itself decodes with them in tests
as an independent check. Segment lists and nexthop-group member arrays are packed here
too, because their wire layout (reversed segment order, `weight - 1`) is easy to get
wrong and must be in one place.

Nothing here does I/O.
"""

from __future__ import annotations

import functools
import ipaddress
import struct
from collections.abc import Sequence

from pyroute2.netlink import NLA_F_NESTED, genlmsg, nla, nlmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg as _pyroute2_rtmsg

# include/uapi/linux/rtnetlink.h
RTM_NEWROUTE = 24
RTM_DELROUTE = 25
RTM_GETROUTE = 26
RTM_NEWNEXTHOP = 104
RTM_DELNEXTHOP = 105
RTM_GETNEXTHOP = 106
RTM_NEWNEXTHOPBUCKET = 116  # kernel 5.13: a resilient group's buckets, one per message
RTM_GETNEXTHOPBUCKET = 118
RTN_UNICAST = 1
RTN_LOCAL = 2
RTN_BLACKHOLE = 6
RTN_UNREACHABLE = 7
RTN_PROHIBIT = 8
RT_SCOPE_UNIVERSE = 0
RT_SCOPE_LINK = 253
RT_SCOPE_HOST = 254
RT_SCOPE_NOWHERE = 255
RT_TABLE_COMPAT = 252  # rtm_table holds 8 bits; larger ids travel in RTA_TABLE

# include/uapi/linux/lwtunnel.h
LWTUNNEL_ENCAP_SEG6 = 5
LWTUNNEL_ENCAP_SEG6_LOCAL = 7

# include/uapi/linux/seg6_iptunnel.h
SEG6_IPTUN_MODE_INLINE = 0
SEG6_IPTUN_MODE_ENCAP = 1
SEG6_IPTUN_MODE_ENCAP_RED = 3  # kernel 6.0: H.Encaps.Red

# include/uapi/linux/seg6_local.h
SEG6_LOCAL_ACTION_END = 1
SEG6_LOCAL_ACTION_END_X = 2
SEG6_LOCAL_ACTION_END_T = 3
SEG6_LOCAL_ACTION_END_DX6 = 5
SEG6_LOCAL_ACTION_END_DX4 = 6
SEG6_LOCAL_ACTION_END_DT6 = 7
SEG6_LOCAL_ACTION_END_DT4 = 8
SEG6_LOCAL_ACTION_END_DT46 = 16
# enum seg6_local_flv_op: the SEG6_LOCAL_FLV_OPERATION attribute is a bitmask of 1 << op.
SEG6_LOCAL_FLV_OP_PSP = 1
SEG6_LOCAL_FLV_OP_USP = 2
SEG6_LOCAL_FLV_OP_USD = 3
SEG6_LOCAL_FLV_OP_NEXT_CSID = 4

# include/uapi/linux/nexthop.h
NEXTHOP_GRP_TYPE_MPATH = 0
NEXTHOP_GRP_TYPE_RES = 1
NHA_OP_FLAG_DUMP_STATS = 1 << 0  # kernel 6.7: per-member packet counters of a group

# include/uapi/linux/seg6_genl.h: the per-netns tunnel source (`ip sr tunsrc`).
SEG6_GENL_NAME = "SEG6"
SEG6_CMD_SET_TUNSRC = 3
SEG6_CMD_GET_TUNSRC = 4
SEG6_ATTR_DST = 1

# struct ipv6_sr_hdr (include/uapi/linux/seg6.h): type 4 is the SRH routing type.
IPV6_SRCRT_TYPE_4 = 4
_SRH_HEADER = struct.Struct("!BBBBBBH")  # nexthdr hdrlen type segleft lastentry flags tag
_ENCAP_MODE = struct.Struct("=i")  # struct seg6_iptunnel_encap { int mode; ... } host order
_GROUP_MEMBER = struct.Struct("=IBBH")  # struct nexthop_grp { id; weight; weight_high; resvd }
MAX_GROUP_WEIGHT = 1 << 16  # weight_high (kernel 6.12) widens `weight - 1` to 16 bits


def own_nla_table(cls: type[nlmsg]) -> type[nlmsg]:
    """Compile `cls`'s nla table now, for `cls` itself.

    pyroute2 0.9.7 caches the compiled table on the class but reads the "compiled" flag
    through inheritance: a subclass of a message class pyroute2 has already used (its
    IPRoute compiles `rtmsg` on first use) silently reuses the parent's table, and an
    RTA_NH_ID would be dropped from an encoded message without an error. Found when our
    routes lost their `nhid` only after another test module had used IPRoute.
    """
    cls().compile_nla_table()
    return cls


class seg6_encap(nla):  # type: ignore[misc]
    """RTA_ENCAP / NHA_ENCAP payload for LWTUNNEL_ENCAP_SEG6 (seg6_iptunnel.h)."""

    __slots__ = ()
    nla_flags = NLA_F_NESTED  # the nexthop API validates strictly and insists on it
    prefix = "SEG6_IPTUNNEL_"
    nla_map = (
        (0, "SEG6_IPTUNNEL_UNSPEC", "none"),
        (1, "SEG6_IPTUNNEL_SRH", "cdata"),  # struct seg6_iptunnel_encap, see pack_seg6_srh
        (2, "SEG6_IPTUNNEL_SRC", "ip6addr"),  # per-route tunnel source, kernel 6.14
    )


class seg6local_encap(nla):  # type: ignore[misc]
    """RTA_ENCAP payload for LWTUNNEL_ENCAP_SEG6_LOCAL (seg6_local.h)."""

    __slots__ = ()
    nla_flags = NLA_F_NESTED
    prefix = "SEG6_LOCAL_"
    nla_map = (
        (0, "SEG6_LOCAL_UNSPEC", "none"),
        (1, "SEG6_LOCAL_ACTION", "uint32"),
        (2, "SEG6_LOCAL_SRH", "cdata"),
        (3, "SEG6_LOCAL_TABLE", "uint32"),
        (4, "SEG6_LOCAL_NH4", "ip4addr"),
        (5, "SEG6_LOCAL_NH6", "ip6addr"),
        (6, "SEG6_LOCAL_IIF", "uint32"),
        (7, "SEG6_LOCAL_OIF", "uint32"),
        (8, "SEG6_LOCAL_BPF", "cdata"),
        (9, "SEG6_LOCAL_VRFTABLE", "uint32"),
        (10, "SEG6_LOCAL_COUNTERS", "counters"),  # kernel 5.14
        (11, "SEG6_LOCAL_FLAVORS", "flavors"),  # kernel 6.1 (NEXT-C-SID), PSP 6.x
    )

    class counters(nla):  # type: ignore[misc]
        """Nested; sent with three zeros to switch counting on (the kernel insists on all
        three, see parse_nla_counters), dumped with the totals."""

        __slots__ = ()
        nla_flags = NLA_F_NESTED
        nla_map = (
            (0, "SEG6_LOCAL_CNT_UNSPEC", "none"),
            (1, "SEG6_LOCAL_CNT_PAD", "none"),
            (2, "SEG6_LOCAL_CNT_PACKETS", "uint64"),
            (3, "SEG6_LOCAL_CNT_BYTES", "uint64"),
            (4, "SEG6_LOCAL_CNT_ERRORS", "uint64"),
        )

    class flavors(nla):  # type: ignore[misc]
        __slots__ = ()
        nla_flags = NLA_F_NESTED
        nla_map = (
            (0, "SEG6_LOCAL_FLV_UNSPEC", "none"),
            (1, "SEG6_LOCAL_FLV_OPERATION", "uint32"),
            (2, "SEG6_LOCAL_FLV_LCBLOCK_BITS", "uint8"),
            (3, "SEG6_LOCAL_FLV_LCNODE_FCT_BITS", "uint8"),
        )


@own_nla_table
class rtmsg(_pyroute2_rtmsg):  # type: ignore[misc]
    """pyroute2's rtmsg, with the attributes after RTA_EXPIRES and our seg6 encaps."""

    __slots__ = ()
    nla_map = (
        *_pyroute2_rtmsg.nla_map,  # RTA_UNSPEC .. RTA_EXPIRES (23)
        ("RTA_PAD", "none"),
        ("RTA_UID", "uint32"),
        ("RTA_TTL_PROPAGATE", "uint8"),
        ("RTA_IP_PROTO", "uint8"),
        ("RTA_SPORT", "uint16"),
        ("RTA_DPORT", "uint16"),
        ("RTA_NH_ID", "uint32"),  # kernel 5.3: a route that uses a nexthop object
    )
    encaps = {
        **_pyroute2_rtmsg.encaps,
        LWTUNNEL_ENCAP_SEG6: seg6_encap,
        LWTUNNEL_ENCAP_SEG6_LOCAL: seg6local_encap,
    }


@own_nla_table
class nhmsg(nlmsg):  # type: ignore[misc]
    """struct nhmsg and the NHA_* attributes of include/uapi/linux/nexthop.h (kernel 5.3+)."""

    __slots__ = ()
    prefix = "NHA_"
    fields = (
        ("family", "B"),
        ("scope", "B"),
        ("protocol", "B"),
        ("resvd", "B"),
        ("flags", "I"),
    )
    nla_map = (
        (0, "NHA_UNSPEC", "none"),
        (1, "NHA_ID", "uint32"),
        (2, "NHA_GROUP", "cdata"),  # array of struct nexthop_grp, see pack_group
        (3, "NHA_GROUP_TYPE", "uint16"),
        (4, "NHA_BLACKHOLE", "flag"),
        (5, "NHA_OIF", "uint32"),
        (6, "NHA_GATEWAY", "cdata"),
        (7, "NHA_ENCAP_TYPE", "uint16"),
        (8, "NHA_ENCAP", "encap"),
        (9, "NHA_GROUPS", "flag"),
        (10, "NHA_MASTER", "uint32"),
        (11, "NHA_FDB", "flag"),
        (12, "NHA_RES_GROUP", "res_group"),  # kernel 5.13: resilient groups
        (13, "NHA_RES_BUCKET", "res_bucket"),
        (14, "NHA_OP_FLAGS", "uint32"),  # kernel 6.7
        (15, "NHA_GROUP_STATS", "group_stats"),  # kernel 6.7
        (16, "NHA_HW_STATS_ENABLE", "uint32"),
        (17, "NHA_HW_STATS_USED", "uint32"),
    )

    @staticmethod
    def encap(self: nhmsg, *argv: object, **kwarg: object) -> type[nla]:
        # NHA_ENCAP's layout depends on NHA_ENCAP_TYPE, which the kernel puts before it.
        for name, value in self["attrs"]:
            if name == "NHA_ENCAP_TYPE":
                return seg6_encap if value == LWTUNNEL_ENCAP_SEG6 else nla
        return seg6_encap

    class res_group(nla):  # type: ignore[misc]
        __slots__ = ()
        nla_flags = NLA_F_NESTED
        # NHA_RES_GROUP_PAD is NHA_RES_GROUP_UNSPEC (0), so BUCKETS is 1 — unlike
        # SEG6_LOCAL_CNT_PAD, which has a number of its own.
        nla_map = (
            (0, "NHA_RES_GROUP_PAD", "none"),
            (1, "NHA_RES_GROUP_BUCKETS", "uint16"),
            (2, "NHA_RES_GROUP_IDLE_TIMER", "uint32"),  # clock_t (USER_HZ) units
            (3, "NHA_RES_GROUP_UNBALANCED_TIMER", "uint32"),
            (4, "NHA_RES_GROUP_UNBALANCED_TIME", "uint64"),
        )

    class res_bucket(nla):  # type: ignore[misc]
        __slots__ = ()
        nla_flags = NLA_F_NESTED
        nla_map = (
            (0, "NHA_RES_BUCKET_PAD", "none"),
            (1, "NHA_RES_BUCKET_INDEX", "uint16"),
            (2, "NHA_RES_BUCKET_IDLE_TIME", "uint64"),  # clock_t
            (3, "NHA_RES_BUCKET_NH_ID", "uint32"),
        )

    class group_stats(nla):  # type: ignore[misc]
        __slots__ = ()
        nla_flags = NLA_F_NESTED
        nla_map = (
            (0, "NHA_GROUP_STATS_UNSPEC", "none"),
            (1, "NHA_GROUP_STATS_ENTRY", "entry"),
        )

        class entry(nla):  # type: ignore[misc]
            __slots__ = ()
            nla_flags = NLA_F_NESTED
            # The packet counts are NLA_UINT (kernel 6.6): 4 or 8 bytes, whichever fits,
            # so they are read as bytes and converted by length (netlink_wire.Attrs.uint).
            nla_map = (
                (0, "NHA_GROUP_STATS_ENTRY_UNSPEC", "none"),
                (1, "NHA_GROUP_STATS_ENTRY_ID", "uint32"),
                (2, "NHA_GROUP_STATS_ENTRY_PACKETS", "cdata"),
                (3, "NHA_GROUP_STATS_ENTRY_PACKETS_HW", "cdata"),
            )


# --- packed payloads ------------------------------------------------------------------


def pack_seg6_srh(mode: int, segments: Sequence[ipaddress.IPv6Address]) -> bytes:
    """struct seg6_iptunnel_encap for SEG6_IPTUNNEL_SRH, `segments` in travel order."""
    return pack_seg6_srh_packed(mode, b"".join(s.packed for s in segments))


def pack_seg6_srh_packed(mode: int, segments: bytes) -> bytes:
    """As `pack_seg6_srh`, from the segments already packed (16 bytes each, travel order).

    The SRH stores its list last-segment-first (RFC 8754 §2: Segment List[0] is the last
    segment), so the first segment to visit is written last, exactly as iproute2 does.
    For inline mode (H.Insert) iproute2 adds a `::` entry in slot 0 that the kernel fills
    with the packet's original destination; we do the same.
    """
    count = len(segments) // 16
    if count == 1:
        wire = segments
    else:
        wire = b"".join([segments[i : i + 16] for i in range(len(segments) - 16, -1, -16)])
    if mode == SEG6_IPTUN_MODE_INLINE:
        wire = bytes(16) + wire
        count += 1
    return _srh_header(mode, count) + wire


@functools.lru_cache(maxsize=64)
def _srh_header(mode: int, count: int) -> bytes:
    """The encap mode and SRH header for `count` SRH entries: the same for every nexthop
    of one shape, so packed once."""
    last = count - 1
    header = _SRH_HEADER.pack(0, 2 * count, IPV6_SRCRT_TYPE_4, last, last, 0, 0)
    return _ENCAP_MODE.pack(mode) + header


def unpack_seg6_srh(data: bytes) -> tuple[int, tuple[ipaddress.IPv6Address, ...]]:
    """Inverse of `pack_seg6_srh`: (mode, segments in travel order)."""
    (mode,) = _ENCAP_MODE.unpack_from(data, 0)
    _, _, _, _, last, _, _ = _SRH_HEADER.unpack_from(data, _ENCAP_MODE.size)
    start = _ENCAP_MODE.size + _SRH_HEADER.size
    wire = [
        ipaddress.IPv6Address(data[start + 16 * i : start + 16 * (i + 1)]) for i in range(last + 1)
    ]
    if mode == SEG6_IPTUN_MODE_INLINE:
        wire = wire[1:]
    return mode, tuple(reversed(wire))


def pack_group(members: Sequence[tuple[int, int]]) -> bytes:
    """NHA_GROUP from (nexthop id, weight >= 1) pairs; the wire carries `weight - 1`."""
    wire = []
    for nh_id, weight in members:
        if not 1 <= weight <= MAX_GROUP_WEIGHT:
            raise ValueError(f"nexthop group weight {weight} is outside 1..{MAX_GROUP_WEIGHT}")
        wire.append(_GROUP_MEMBER.pack(nh_id, (weight - 1) & 0xFF, (weight - 1) >> 8, 0))
    return b"".join(wire)


def unpack_group(data: bytes) -> tuple[tuple[int, int], ...]:
    members = []
    for offset in range(0, len(data) - _GROUP_MEMBER.size + 1, _GROUP_MEMBER.size):
        nh_id, low, high, _ = _GROUP_MEMBER.unpack_from(data, offset)
        members.append((nh_id, (high << 8 | low) + 1))
    return tuple(members)


def flavour_mask(operations: Sequence[int]) -> int:
    mask = 0
    for op in operations:
        mask |= 1 << op
    return mask


def flavour_operations(mask: int) -> frozenset[int]:
    return frozenset(op for op in range(32) if mask & (1 << op))


@own_nla_table
class seg6_genlmsg(genlmsg):  # type: ignore[misc]
    """The `SEG6` generic-netlink family (include/uapi/linux/seg6_genl.h): `ip sr tunsrc`."""

    __slots__ = ()
    prefix = "SEG6_ATTR_"
    nla_map = (
        (0, "SEG6_ATTR_UNSPEC", "none"),
        (1, "SEG6_ATTR_DST", "ip6addr"),
        (2, "SEG6_ATTR_DSTLEN", "int32"),
        (3, "SEG6_ATTR_HMACKEYID", "uint32"),
        (4, "SEG6_ATTR_SECRET", "cdata"),
        (5, "SEG6_ATTR_SECRETLEN", "uint8"),
        (6, "SEG6_ATTR_ALGID", "uint8"),
        (7, "SEG6_ATTR_HMACINFO", "cdata"),
    )
