"""Translate between the dataplane model and kernel netlink messages, both ways (no I/O).

The kernel shape of each model object (README.md, "Services without NAT: what a node gets"):

- `LocalSid` → a seg6local route `sid/128` in the main table, on its `interface` or, for
  behaviours without one, on the SID device; per-SID counters switched on when the kernel
  has them. Not on `lo`: an IPv6 route via the loopback device that is not a local route
  is made a reject route by the kernel (fib6_is_reject), so a SID "on lo" is installed,
  dumps fine, and answers every packet with ICMPv6 "no route" — checked on 6.18.
- `SrPolicy` → one seg6 nexthop per distinct (mode, encap source, segments) — shared by
  every policy using the same list, on `lo` (a nexthop's device is a placeholder here:
  seg6 encapsulation looks the outer destination up again; nexthop objects are exempt
  from the loopback rule above) — and one resilient nexthop group per policy, even for
  a single list: a group keeps its id when lists change (the steering routes are never
  rewritten), has per-member packet counters, and replaces atomically.
- the policy's BSID → an *anchor* route `bsid/128 nhid G` in the policy table. It is how
  `dump` knows which group is which policy (a nexthop carries no name); in its own table
  it changes no forwarding unless an operator adds `ip -6 rule ... lookup <policy table>`,
  which makes the BSID a real binding SID.
- `Steering` → a route `prefix nhid G` (IPv6, or IPv4 for IPv4-in-SRv6, same group).
- `Route` → a unicast (via/dev), blackhole, unreachable or prohibit route.

Every route and nexthop carries the backend's protocol number; that is the ownership mark.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

from srv6ctl.dataplane import netlink_seg6 as nl
from srv6ctl.dataplane import netlink_wire as w
from srv6ctl.dataplane.model import (
    MAIN_TABLE,
    CrossConnect,
    EncapMode,
    End,
    EndDT4,
    EndDT6,
    EndDT46,
    EndDX4,
    EndDX6,
    EndT,
    EndX,
    Flavour,
    IPNetwork,
    IPv6Address,
    LocalSid,
    Route,
    RouteKind,
    SegmentList,
    SrPolicy,
    Steering,
    TableLookup,
)

ACTIONS: Mapping[type[LocalSid], int] = {
    End: nl.SEG6_LOCAL_ACTION_END,
    EndX: nl.SEG6_LOCAL_ACTION_END_X,
    EndT: nl.SEG6_LOCAL_ACTION_END_T,
    EndDX6: nl.SEG6_LOCAL_ACTION_END_DX6,
    EndDX4: nl.SEG6_LOCAL_ACTION_END_DX4,
    EndDT6: nl.SEG6_LOCAL_ACTION_END_DT6,
    EndDT4: nl.SEG6_LOCAL_ACTION_END_DT4,
    EndDT46: nl.SEG6_LOCAL_ACTION_END_DT46,
}
BEHAVIOUR_OF_ACTION: Mapping[int, type[LocalSid]] = {v: k for k, v in ACTIONS.items()}
# The attribute a table-lookup behaviour's table travels in: End.T and End.DT6 take the
# legacy `table` (End.DT6 in VRF mode, `vrftable`, would need a VRF device); End.DT4 and
# End.DT46 exist only in VRF mode.
VRF_TABLE = "SEG6_LOCAL_VRFTABLE"  # needs a VRF device for the table (KernelBackend)
TABLE_ATTRS: Mapping[type[LocalSid], str] = {
    EndT: "SEG6_LOCAL_TABLE",
    EndDT6: "SEG6_LOCAL_TABLE",
    EndDT4: VRF_TABLE,
    EndDT46: VRF_TABLE,
}
NEXTHOP_ATTRS: Mapping[int, str] = {6: "SEG6_LOCAL_NH6", 4: "SEG6_LOCAL_NH4"}
FLAVOUR_OPS: Mapping[Flavour, int] = {
    Flavour.PSP: nl.SEG6_LOCAL_FLV_OP_PSP,
    Flavour.USP: nl.SEG6_LOCAL_FLV_OP_USP,
    Flavour.USD: nl.SEG6_LOCAL_FLV_OP_USD,
}
ENCAP_MODES: Mapping[EncapMode, int] = {
    EncapMode.ENCAP: nl.SEG6_IPTUN_MODE_ENCAP,
    EncapMode.ENCAP_RED: nl.SEG6_IPTUN_MODE_ENCAP_RED,
    EncapMode.INSERT: nl.SEG6_IPTUN_MODE_INLINE,
}
MODE_OF_ENCAP: Mapping[int, EncapMode] = {v: k for k, v in ENCAP_MODES.items()}
ROUTE_TYPES: Mapping[RouteKind, int] = {
    RouteKind.UNICAST: nl.RTN_UNICAST,
    RouteKind.BLACKHOLE: nl.RTN_BLACKHOLE,
    RouteKind.UNREACHABLE: nl.RTN_UNREACHABLE,
    RouteKind.PROHIBIT: nl.RTN_PROHIBIT,
    RouteKind.LOCAL: nl.RTN_LOCAL,
}
KIND_OF_TYPE: Mapping[int, RouteKind] = {v: k for k, v in ROUTE_TYPES.items()}

Slot = tuple[int, IPNetwork]  # (table, prefix): one kernel route, as reconcile.route_slot


class InvalidObject(ValueError):
    """A model object the kernel backend cannot express (the message names it and why)."""


# End.DT4/DT46 look their table up through the VRF device bound to it (seg6_local.c finds
# it with l3mdev_ifindex_lookup_by_table_id), which the kernel accepts only in VRF strict
# mode (one VRF per table): "Strict mode for VRF is disabled" otherwise, as on 6.1.
VRF_STRICT_MODE: Mapping[str, str] = {"net.vrf.strict_mode": "1"}
VRF_DEVICE_PREFIX = "srv6vrf"  # + the table: the VRF device this backend makes for it
MAX_VRF_TABLE = 99_999_999  # the device name stays within IFNAMSIZ (15 characters)


def vrf_device(table: int) -> str:
    """The name of the VRF device the kernel backend binds to `table`."""
    if not 0 < table <= MAX_VRF_TABLE:
        raise InvalidObject(f"table {table}: a VRF table must be in 1..{MAX_VRF_TABLE}")
    return f"{VRF_DEVICE_PREFIX}{table}"


# Every device the agent makes carries an alias starting so: ours by that mark (`srv6ctl
# cleanup` deletes by it; `local_sources` never takes one for an uplink).
OWN_ALIAS = "srv6ctl:"


def new_link(name: str, kind: str, alias: str, *, data: Sequence[Any] = (), up: bool = True) -> Any:
    """The RTM_NEWLINK message that creates device `name` of `kind` (with IFLA_INFO_DATA
    attributes `data`), marked as ours by its alias (OWN_ALIAS first)."""
    if not alias.startswith(OWN_ALIAS):
        raise ValueError(f"device {name}: alias {alias!r} lacks {OWN_ALIAS!r}")
    msg = ifinfmsg()
    if up:
        msg["flags"] = msg["change"] = 1  # IFF_UP
    info: list[Any] = [("IFLA_INFO_KIND", kind)]
    if data:
        info.append(("IFLA_INFO_DATA", {"attrs": list(data)}))
    msg["attrs"] = [
        ("IFLA_IFNAME", name),
        ("IFLA_IFALIAS", alias),
        ("IFLA_LINKINFO", {"attrs": info}),
    ]
    return msg


def vrf_link(name: str, table: int, *, up: bool = False) -> Any:
    """The RTM_NEWLINK message that creates VRF device `name` bound to `table`."""
    alias = "srv6ctl: the table End.DT4/DT46 decapsulate into"
    return new_link(name, "vrf", alias, data=[("IFLA_VRF_TABLE", table)], up=up)


class SegmentPath(NamedTuple):
    """What one seg6 nexthop encapsulates with; policies sharing it share the nexthop.

    The segments are held packed, as they go on the wire (16 bytes each, travel order): a
    tuple of an enum, an address or None, and bytes hashes and compares in C, whereas
    IPv6Address hashes and compares in Python (~1 µs a dict lookup), and a large plan looks
    a path up per segment list. A plain `(mode, source, packed)` tuple finds it as a key.
    """

    mode: EncapMode
    source: IPv6Address | None
    packed: bytes

    @classmethod
    def of(cls, policy: SrPolicy, segment_list: SegmentList) -> SegmentPath:
        return cls(policy.mode, policy.encap_source, pack_segments(segment_list.segments))

    @classmethod
    def make(
        cls, mode: EncapMode, source: IPv6Address | None, segments: Sequence[IPv6Address]
    ) -> SegmentPath:
        return cls(mode, source, pack_segments(segments))

    @property
    def segments(self) -> tuple[IPv6Address, ...]:
        packed = self.packed
        return tuple(IPv6Address(packed[i : i + 16]) for i in range(0, len(packed), 16))

    def __str__(self) -> str:
        source = f" from {self.source}" if self.source else ""
        return f"{self.mode} [{','.join(map(str, self.segments))}]{source}"


PathKey = tuple[EncapMode, IPv6Address | None, bytes]  # a SegmentPath, or a tuple equal to one


def pack_segments(segments: Sequence[IPv6Address]) -> bytes:
    if len(segments) == 1:  # most lists (a service backend is one SID): no join needed
        return segments[0].packed
    return b"".join([s.packed for s in segments])


@dataclass(frozen=True)
class Links:
    """Interface names and indexes of the namespace (read by the backend, used here)."""

    by_name: Mapping[str, int]

    @property
    def by_index(self) -> Mapping[int, str]:
        return {index: name for name, index in self.by_name.items()}

    def index(self, name: str, what: object) -> int:
        try:
            return self.by_name[name]
        except KeyError:
            raise InvalidObject(f"{what}: interface {name!r} does not exist") from None


@dataclass(frozen=True)
class DecodedRoute:
    """One of our routes, read back: what it is and what it points at."""

    slot: Slot
    obj: LocalSid | Route | None = None  # None: an anchor or steering (see nh_id), or unknown
    nh_id: int | None = None
    counters: tuple[int, int, int] | None = None  # seg6local packets, bytes, errors


@dataclass(frozen=True)
class DecodedNexthop:
    nh_id: int
    protocol: int
    path: SegmentPath | None = None  # a seg6 nexthop
    members: tuple[tuple[int, int], ...] | None = None  # a group: (id, weight)
    resilient: bool = False
    member_packets: Mapping[int, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Codec:
    protocol: int
    policy_table: int
    sid_device: str
    nexthop_device: str
    sid_counters: bool
    group_buckets: int
    group_idle_timer: int | None  # seconds; None keeps the kernel default (120 s)
    group_unbalanced_timer: int | None = None  # seconds; None keeps the default (never)
    # NHA_GROUP_TYPE and NHA_RES_GROUP: the same for every group, so packed once.
    _group_tail: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        resilient = [w.u16(NHA_RES["NHA_RES_GROUP_BUCKETS"], self.group_buckets)]
        if self.group_idle_timer is not None:
            ticks = self.group_idle_timer * 100  # clock_t, USER_HZ
            resilient.append(w.u32(NHA_RES["NHA_RES_GROUP_IDLE_TIMER"], ticks))
        if self.group_unbalanced_timer is not None:
            ticks = self.group_unbalanced_timer * 100  # clock_t, USER_HZ
            resilient.append(w.u32(NHA_RES["NHA_RES_GROUP_UNBALANCED_TIMER"], ticks))
        tail = w.u16(NHA["NHA_GROUP_TYPE"], nl.NEXTHOP_GRP_TYPE_RES) + w.nest(
            NHA["NHA_RES_GROUP"], *resilient
        )
        object.__setattr__(self, "_group_tail", tail)

    # --- routes -----------------------------------------------------------------------

    def _route(self, table: int, prefix: IPNetwork, rtype: int, scope: int, *attrs: bytes) -> bytes:
        family = socket.AF_INET6 if prefix.version == 6 else socket.AF_INET
        header = _RTMSG.pack(
            family,
            prefix.prefixlen,
            0,
            0,
            table if table < 256 else nl.RT_TABLE_COMPAT,
            self.protocol,
            scope,
            rtype,
            0,
        )
        return b"".join(
            (
                header,
                w.address(RTA["RTA_DST"], prefix.network_address),
                w.u32(RTA["RTA_TABLE"], table),
                *attrs,
            )
        )

    def local_sid(self, sid: LocalSid, links: Links) -> bytes:
        action = ACTIONS.get(type(sid))
        if action is None:
            raise InvalidObject(f"{sid}: behaviour {sid.behaviour!r} has no kernel action")
        interface = sid.interface if isinstance(sid, CrossConnect) else ""
        if interface == self.sid_device:
            raise InvalidObject(
                f"{sid}: interface {interface!r} is the SID device; leave interface empty"
            )
        encap = [w.u32(S6L["SEG6_LOCAL_ACTION"], action)]
        if isinstance(sid, CrossConnect):
            encap.append(w.address(S6L[NEXTHOP_ATTRS[sid.nexthop_version]], sid.nexthop))
        elif isinstance(sid, TableLookup):
            encap.append(w.u32(S6L[TABLE_ATTRS[type(sid)]], sid.table))
        if sid.flavours:
            unknown = sid.flavours - FLAVOUR_OPS.keys()
            if unknown:
                raise InvalidObject(f"{sid}: flavours {sorted(unknown)} have no kernel operation")
            mask = nl.flavour_mask([FLAVOUR_OPS[f] for f in sid.flavours])
            flavours = w.u32(S6L_FLV["SEG6_LOCAL_FLV_OPERATION"], mask)
            encap.append(w.nest(S6L["SEG6_LOCAL_FLAVORS"], flavours))
        if self.sid_counters:
            # All three, zero: parse_nla_counters refuses the attribute otherwise.
            zeros = (w.u64(S6L_CNT[f"SEG6_LOCAL_CNT_{n}"], 0) for n in _COUNTERS)
            encap.append(w.nest(S6L["SEG6_LOCAL_COUNTERS"], *zeros))
        return self._route(
            MAIN_TABLE,
            ipaddress.IPv6Network(sid.sid),
            nl.RTN_UNICAST,
            nl.RT_SCOPE_UNIVERSE,
            w.u32(RTA["RTA_OIF"], links.index(interface or self.sid_device, sid)),
            w.u16(RTA["RTA_ENCAP_TYPE"], nl.LWTUNNEL_ENCAP_SEG6_LOCAL),
            w.nest(RTA["RTA_ENCAP"], *encap),
        )

    def route(self, route: Route, links: Links) -> bytes:
        prefix = route.prefix
        if route.kind is RouteKind.LOCAL:
            # `local S dev lo`: whatever looks S up in this table delivers to our own stack.
            oif = w.u32(RTA["RTA_OIF"], links.index("lo", route))
            return self._route(route.table, prefix, nl.RTN_LOCAL, nl.RT_SCOPE_HOST, oif)
        if route.kind is not RouteKind.UNICAST:
            rtype = ROUTE_TYPES[route.kind]
            return self._route(route.table, prefix, rtype, nl.RT_SCOPE_UNIVERSE)
        if route.via is None and not route.interface:
            raise InvalidObject(f"{route}: a unicast route needs `via` or `interface`")
        attrs: list[bytes] = []
        if route.via is not None:
            if route.via.version == prefix.version:
                attrs.append(w.address(RTA["RTA_GATEWAY"], route.via))
            else:  # an IPv4 route via an IPv6 neighbour (RFC 5549), kernel 5.2+
                via = struct.pack("=H", socket.AF_INET6) + route.via.packed
                attrs.append(w.attr(RTA["RTA_VIA"], via))
        if route.interface:
            attrs.append(w.u32(RTA["RTA_OIF"], links.index(route.interface, route)))
        scope = nl.RT_SCOPE_LINK if route.via is None and prefix.version == 4 else 0
        return self._route(route.table, prefix, nl.RTN_UNICAST, scope, *attrs)

    def steering(self, steering: Steering, group_id: int) -> bytes:
        prefix = steering.prefix
        return self._nexthop_route(
            steering.table, prefix.network_address.packed, prefix.prefixlen, group_id
        )

    def anchor(self, bsid: IPv6Address, group_id: int) -> bytes:
        return self._nexthop_route(self.policy_table, bsid.packed, 128, group_id)

    def nexthop_route(self, table: int, prefix: IPNetwork, nh_id: int) -> bytes:
        """A route in `table` to one nexthop of ours (sessionAffinity's mark tables)."""
        return self._nexthop_route(table, prefix.network_address.packed, prefix.prefixlen, nh_id)

    def _nexthop_route(self, table: int, address: bytes, prefix_len: int, nh_id: int) -> bytes:
        """A route to a nexthop object; one `pack` (these are most of a large plan)."""
        v6 = len(address) == 16
        return (_NH_ROUTE6 if v6 else _NH_ROUTE4).pack(
            socket.AF_INET6 if v6 else socket.AF_INET,
            prefix_len,
            0,
            0,
            table if table < 256 else nl.RT_TABLE_COMPAT,
            self.protocol,
            nl.RT_SCOPE_UNIVERSE,
            nl.RTN_UNICAST,
            0,
            4 + len(address),
            _RTA_DST,
            address,
            8,
            _RTA_TABLE,
            table,
            8,
            _RTA_NH_ID,
            nh_id,
        )

    def route_delete(self, slot: Slot) -> bytes:
        # As `ip route del`: type and scope wildcards, matched by table, prefix and protocol.
        table, prefix = slot
        return self._route(table, prefix, 0, nl.RT_SCOPE_NOWHERE)

    def route_dump(self, family: int) -> bytes:
        # With NETLINK_GET_STRICT_CHK the kernel returns only routes of our protocol.
        return _RTMSG.pack(family, 0, 0, 0, 0, self.protocol, 0, 0, 0)

    # --- nexthops ---------------------------------------------------------------------

    def segment_nexthop(self, nh_id: int, path: SegmentPath, links: Links) -> bytes:
        srh = nl.pack_seg6_srh_packed(ENCAP_MODES[path.mode], path.packed)  # 4-byte multiple
        source = b"" if path.source is None else w.address(_SEG6_SRC, path.source)
        head = _SEG6_NEXTHOP.pack(
            socket.AF_INET6,
            0,
            self.protocol,
            0,
            0,
            8,
            _NHA_ID,
            nh_id,
            8,
            _NHA_OIF,
            links.index(self.nexthop_device, path),
            6,
            _NHA_ENCAP_TYPE,
            nl.LWTUNNEL_ENCAP_SEG6,
            8 + len(srh) + len(source),
            _NHA_ENCAP | w.NLA_F_NESTED,
            4 + len(srh),
            _SEG6_SRH,
        )
        return head + srh + source

    def group(self, group_id: int, members: Sequence[tuple[int, int]]) -> bytes:
        wire = nl.pack_group(members)
        head = _GROUP.pack(
            socket.AF_UNSPEC,
            0,
            self.protocol,
            0,
            0,
            8,
            _NHA_ID,
            group_id,
            4 + len(wire),
            _NHA_GROUP,
        )
        return head + wire + self._group_tail

    @staticmethod
    def nexthop_delete(nh_id: int) -> bytes:
        return _NHMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + w.u32(NHA["NHA_ID"], nh_id)

    @staticmethod
    def nexthop_dump(stats: bool) -> bytes:
        header = _NHMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
        if not stats:
            return header
        return header + w.u32(NHA["NHA_OP_FLAGS"], nl.NHA_OP_FLAG_DUMP_STATS)

    @staticmethod
    def bucket_dump(group_id: int) -> bytes:
        """RTM_GETNEXTHOPBUCKET of one group's buckets (the kernel filters by NHA_ID)."""
        return _NHMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + w.u32(NHA["NHA_ID"], group_id)

    # --- decoding ---------------------------------------------------------------------

    def decode_route(self, msg: RouteMessage, links: Links) -> DecodedRoute:
        attrs = msg.attrs
        table = attrs.uint(RTA["RTA_TABLE"]) or msg.table
        dst = attrs.raw(RTA["RTA_DST"])
        prefix: IPNetwork
        if msg.family == socket.AF_INET6:
            prefix = ipaddress.IPv6Network((dst or bytes(16), msg.dst_len))
        else:
            prefix = ipaddress.IPv4Network((dst or bytes(4), msg.dst_len))
        slot: Slot = (table, prefix)
        nh_id = attrs.uint(RTA["RTA_NH_ID"])
        if nh_id is not None:
            return DecodedRoute(slot, nh_id=nh_id)
        encap_type = attrs.uint(RTA["RTA_ENCAP_TYPE"])
        if encap_type == nl.LWTUNNEL_ENCAP_SEG6_LOCAL:
            return self._decode_local_sid(slot, msg, links)
        if encap_type is not None or RTA["RTA_MULTIPATH"] in attrs:
            return DecodedRoute(slot)  # ours by protocol, but not a shape we create
        kind = KIND_OF_TYPE.get(msg.rtype)
        if kind is None:
            return DecodedRoute(slot)
        if kind is not RouteKind.UNICAST:
            return DecodedRoute(slot, Route(prefix, kind=kind, table=table))
        via = attrs.ip(RTA["RTA_GATEWAY"])
        rta_via = attrs.raw(RTA["RTA_VIA"])
        if via is None and rta_via is not None and len(rta_via) in (6, 18):
            via = ipaddress.ip_address(rta_via[2:])
        oif = attrs.uint(RTA["RTA_OIF"])
        interface = links.by_index.get(oif) if oif is not None else None
        # Route() drops the interface of a global next hop (the kernel picked it).
        return DecodedRoute(slot, Route(prefix, via=via, interface=interface, table=table))

    def _decode_local_sid(self, slot: Slot, msg: RouteMessage, links: Links) -> DecodedRoute:
        encap = msg.attrs.nested(RTA["RTA_ENCAP"])
        behaviour = (
            BEHAVIOUR_OF_ACTION.get(encap.uint(S6L["SEG6_LOCAL_ACTION"]) or 0) if encap else None
        )
        table, prefix = slot
        if encap is None or behaviour is None or table != MAIN_TABLE or prefix.prefixlen != 128:
            return DecodedRoute(slot)
        flavours: frozenset[Flavour] = frozenset()
        flavour_attr = encap.nested(S6L["SEG6_LOCAL_FLAVORS"])
        if flavour_attr is not None:
            ops = nl.flavour_operations(flavour_attr.uint(S6L_FLV["SEG6_LOCAL_FLV_OPERATION"]) or 0)
            flavours = frozenset(f for f, op in FLAVOUR_OPS.items() if op in ops)
        oif = msg.attrs.uint(RTA["RTA_OIF"])
        interface = links.by_index.get(oif, "") if oif is not None else ""
        if interface == self.sid_device:
            interface = ""
        fields: dict[str, Any] = {}
        if issubclass(behaviour, CrossConnect):
            nexthop = encap.ip(S6L[NEXTHOP_ATTRS[behaviour.nexthop_version]])
            if nexthop is not None:
                fields["nexthop"] = nexthop
            fields["interface"] = interface
        elif issubclass(behaviour, TableLookup):
            # Either attribute: a route made by hand may hold End.DT6 in VRF mode.
            attrs = dict.fromkeys((TABLE_ATTRS[behaviour], VRF_TABLE))
            tables = (encap.uint(S6L[name]) for name in attrs)
            fields["table"] = next((t for t in tables if t is not None), None)
        obj = behaviour(IPv6Address(prefix.network_address), flavours, **fields)
        counters = None
        counter_attr = encap.nested(S6L["SEG6_LOCAL_COUNTERS"])
        if counter_attr is not None:
            counters = tuple(
                counter_attr.uint(S6L_CNT[f"SEG6_LOCAL_CNT_{n}"]) or 0 for n in _COUNTERS
            )
        return DecodedRoute(slot, obj, counters=counters)  # type: ignore[arg-type]

    @staticmethod
    def decode_nexthop(msg: NexthopMessage) -> DecodedNexthop:
        attrs = msg.attrs
        nh_id = attrs.uint(NHA["NHA_ID"]) or 0
        group = attrs.raw(NHA["NHA_GROUP"])
        if group is not None:
            packets: dict[int, int] = {}
            stats = attrs.nested(NHA["NHA_GROUP_STATS"])
            if stats is not None:
                for entry_data in stats.every(NHA_STATS["NHA_GROUP_STATS_ENTRY"]):
                    entry = w.Attrs(entry_data)
                    member = entry.uint(NHA_ENTRY["NHA_GROUP_STATS_ENTRY_ID"])
                    count = entry.uint(NHA_ENTRY["NHA_GROUP_STATS_ENTRY_PACKETS"])
                    if member is not None:
                        packets[member] = count or 0
            return DecodedNexthop(
                nh_id,
                msg.protocol,
                members=nl.unpack_group(group),
                resilient=attrs.uint(NHA["NHA_GROUP_TYPE"]) == nl.NEXTHOP_GRP_TYPE_RES,
                member_packets=packets,
            )
        path = None
        encap = attrs.nested(NHA["NHA_ENCAP"])
        if attrs.uint(NHA["NHA_ENCAP_TYPE"]) == nl.LWTUNNEL_ENCAP_SEG6 and encap is not None:
            srh = encap.raw(S6T["SEG6_IPTUNNEL_SRH"])
            source = encap.ip(S6T["SEG6_IPTUNNEL_SRC"])
            if srh is not None:
                mode, segments = nl.unpack_seg6_srh(srh)
                if mode in MODE_OF_ENCAP:
                    path = SegmentPath.make(
                        MODE_OF_ENCAP[mode],
                        IPv6Address(source) if source is not None else None,
                        segments,
                    )
        return DecodedNexthop(nh_id, msg.protocol, path=path)


# --- messages as read from the kernel ------------------------------------------------------

RTA = w.numbers(nl.rtmsg)
S6L = w.numbers(nl.seg6local_encap)
S6L_CNT = w.numbers(nl.seg6local_encap.counters)
S6L_FLV = w.numbers(nl.seg6local_encap.flavors)
S6T = w.numbers(nl.seg6_encap)
NHA = w.numbers(nl.nhmsg)
NHA_RES = w.numbers(nl.nhmsg.res_group)
NHA_BUCKET = w.numbers(nl.nhmsg.res_bucket)
NHA_STATS = w.numbers(nl.nhmsg.group_stats)
NHA_ENTRY = w.numbers(nl.nhmsg.group_stats.entry)
_COUNTERS = ("PACKETS", "BYTES", "ERRORS")
_NLMSGHDR = 16
_RTMSG = struct.Struct("=BBBBBBBBI")  # struct rtmsg
_NHMSG = struct.Struct("=BBBBI")  # struct nhmsg
# Whole messages (after the nlmsghdr) packed by one Struct each: a struct, then attributes
# as (nla_len, nla_type, payload); "=" means no implicit padding, so each layout spells
# out its own (every attribute here is already a multiple of 4 bytes, but NHA_ENCAP_TYPE).
_RTA_DST, _RTA_TABLE, _RTA_NH_ID = RTA["RTA_DST"], RTA["RTA_TABLE"], RTA["RTA_NH_ID"]
_NHA_ID, _NHA_OIF, _NHA_GROUP = NHA["NHA_ID"], NHA["NHA_OIF"], NHA["NHA_GROUP"]
_NHA_ENCAP_TYPE, _NHA_ENCAP = NHA["NHA_ENCAP_TYPE"], NHA["NHA_ENCAP"]
_SEG6_SRH, _SEG6_SRC = S6T["SEG6_IPTUNNEL_SRH"], S6T["SEG6_IPTUNNEL_SRC"]
_NH_ROUTE6 = struct.Struct("=BBBBBBBBI HH16s HHI HHI")  # rtmsg, RTA_DST, RTA_TABLE, RTA_NH_ID
_NH_ROUTE4 = struct.Struct("=BBBBBBBBI HH4s HHI HHI")
# nhmsg, NHA_ID, NHA_OIF, NHA_ENCAP_TYPE (u16 + 2 pad), NHA_ENCAP { SEG6_IPTUNNEL_SRH header
_SEG6_NEXTHOP = struct.Struct("=BBBBI HHI HHI HHH2x HH HH")  # ... then its payload }
_GROUP = struct.Struct("=BBBBI HHI HH")  # nhmsg, NHA_ID, NHA_GROUP header (members follow)


@dataclass(frozen=True)
class RouteMessage:
    family: int
    dst_len: int
    table: int
    protocol: int
    rtype: int
    attrs: w.Attrs


@dataclass(frozen=True)
class NexthopMessage:
    family: int
    protocol: int
    attrs: w.Attrs


def parse_route(msg_type: int, data: bytes) -> RouteMessage | None:
    """An RTM_NEWROUTE of a dump (anything else: None)."""
    if msg_type != nl.RTM_NEWROUTE:
        return None
    family, dst_len, _, _, table, protocol, _, rtype, _ = _RTMSG.unpack_from(data, _NLMSGHDR)
    attrs = w.Attrs(data, _NLMSGHDR + _RTMSG.size)
    return RouteMessage(family, dst_len, table, protocol, rtype, attrs)


def parse_bucket(msg_type: int, data: bytes) -> int | None:
    """The member nexthop an RTM_NEWNEXTHOPBUCKET's bucket points at (else None)."""
    if msg_type != nl.RTM_NEWNEXTHOPBUCKET:
        return None
    bucket = w.Attrs(data, _NLMSGHDR + _NHMSG.size).nested(NHA["NHA_RES_BUCKET"])
    return None if bucket is None else bucket.uint(NHA_BUCKET["NHA_RES_BUCKET_NH_ID"])


def parse_nexthop(msg_type: int, data: bytes) -> NexthopMessage | None:
    if msg_type != nl.RTM_NEWNEXTHOP:
        return None
    family, _, protocol, _, _ = _NHMSG.unpack_from(data, _NLMSGHDR)
    return NexthopMessage(family, protocol, w.Attrs(data, _NLMSGHDR + _NHMSG.size))
