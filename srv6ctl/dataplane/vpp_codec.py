"""Translate between the dataplane model and VPP binary API messages, both ways (no I/O).

Every function here returns a `Request` (message name and fields, exactly as vpp-papi packs
them against VPP's `*.api.json`) or reads a details message back into the model. The
message-layer tests pack every one of them with vpp-papi against the real definitions.

The VPP shape of each model object (VPP 25.10, `src/vnet/srv6/sr_api.c`):

- `LocalSid` → `sr_localsid_add_del`, installed in FIB table 0. End.X and End.DX6/DX4 name
  their interface in `sw_if_index` and their neighbour in `nh_addr`; End.T, End.DT6 and
  End.DT4 carry their *lookup table id in `sw_if_index`* (sr_cli_localsid reads it there;
  `fib_table` is where the SID itself is installed) and the dump gives it back in
  `xconnect_iface_or_vrf_table`. PSP is `end_psp`, for End and End.X only. No End.DT46.
- `SrPolicy` → `sr_policy_add` with the first segment list, then one `sr_policy_mod`
  (operation ADD) per further list. VPP takes each list's weight from `sids.weight` (the
  top-level `weight` is ignored). `srv6_sid_list.sids` is a fixed array of 16: padded
  with `::`. H.Encaps is `is_encap`: VPP puts no SRH on a one-SID list (which is exactly
  H.Encaps.Red) and the whole list in the SRH otherwise; `is_encap=0` is H.Insert.
- `Steering` → `sr_steering_add_del` (traffic type IPV6/IPV4, `table_id`); adding a
  steering that exists re-points it at the new BSID in place.
- `Route` → `ip_route_add_del` with one path: NORMAL via a next hop (or attached to an
  interface), DROP (blackhole), ICMP_UNREACH, ICMP_PROHIBIT. An add with `is_multipath=0`
  replaces whatever paths the API had given the prefix, so it is also the replace.
- tables: the model's MAIN_TABLE (254, the kernel's main) is VPP's table 0; any other id
  is used as is and created (`ip_table_add_del`, both families) before first use.
"""

from __future__ import annotations

import hashlib
import ipaddress
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from srv6ctl.dataplane.model import (
    MAIN_TABLE,
    Change,
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
    IPAddress,
    IPNetwork,
    IPv4Address,
    IPv6Address,
    LocalSid,
    PodAttachment,
    Route,
    RouteKind,
    SegmentList,
    SrPolicy,
    Steering,
)
from srv6ctl.dataplane.reconcile import ListOp, segment_list_edits
from srv6ctl.dataplane.vpp_api import Request

INVALID_INDEX = 0xFFFF_FFFF
SID_LIST_SLOTS = 16  # srv6_sid_list.sids[16]
LABEL_STACK_SLOTS = 16  # fib_path.label_stack[16]
ZERO6 = IPv6Address("::")
ZERO4 = IPv4Address("0.0.0.0")
_ZERO16 = bytes(16)

# vl_api_sr_behavior_t
SR_BEHAVIOR_END = 1
SR_BEHAVIOR_X = 2
SR_BEHAVIOR_T = 3
SR_BEHAVIOR_DX6 = 6
SR_BEHAVIOR_DX4 = 7
SR_BEHAVIOR_DT6 = 8
SR_BEHAVIOR_DT4 = 9
# vl_api_sr_steer_t
SR_STEER_IPV4 = 4
SR_STEER_IPV6 = 6
# vl_api_sr_policy_op_t
SR_POLICY_OP_ADD = 1
SR_POLICY_OP_DEL = 2
SR_POLICY_OP_MOD = 3
# vl_api_fib_path_type_t
FIB_PATH_TYPE_NORMAL = 0
FIB_PATH_TYPE_LOCAL = 1
FIB_PATH_TYPE_DROP = 2
FIB_PATH_TYPE_ICMP_UNREACH = 5
FIB_PATH_TYPE_ICMP_PROHIBIT = 6
# vl_api_fib_path_nh_proto_t
FIB_PATH_NH_PROTO_IP4 = 0
FIB_PATH_NH_PROTO_IP6 = 1
# vl_api_if_status_flags_t
IF_STATUS_ADMIN_UP = 1
# vl_api_address_family_t
ADDRESS_IP4 = 0
ADDRESS_IP6 = 1
# vl_api_ip_neighbor_flags_t
IP_NEIGHBOR_FLAG_STATIC = 1
# vl_api_af_packet_mode_t / vl_api_af_packet_flags_t. CKSUM_GSO stays off: VPP 25.10 on a
# veth with offloads off corrupts every frame it sends with it (the CLI's cksum-gso-disable).
AF_PACKET_MODE_ETHERNET = 1
AF_PACKET_FLAG_QDISC_BYPASS = 1
# vl_api_memif_role_t / vl_api_memif_mode_t
MEMIF_ROLE_MASTER = 0
MEMIF_MODE_IP = 1
# fib_source_t of VPP 25.10 (src/vnet/fib/fib_source.h): not part of the API definitions,
# but what ip_route_v2_dump filters on and reports in `src`. Checked against a running VPP.
FIB_SOURCE_SR = 5
FIB_SOURCE_API = 8

TAG_PREFIX = "srv6ctl:"
POD_TAG_PREFIX = TAG_PREFIX + "pod:"
TABLE_NAME_PREFIX = "srv6ctl-"

BEHAVIOR_OF: Mapping[type[LocalSid], int] = {
    End: SR_BEHAVIOR_END,
    EndX: SR_BEHAVIOR_X,
    EndT: SR_BEHAVIOR_T,
    EndDX6: SR_BEHAVIOR_DX6,
    EndDX4: SR_BEHAVIOR_DX4,
    EndDT6: SR_BEHAVIOR_DT6,
    EndDT4: SR_BEHAVIOR_DT4,
}
BEHAVIOURS = frozenset(cls.behaviour for cls in BEHAVIOR_OF)
PSP_BEHAVIOURS = (End, EndX)  # end_psp is honoured for End and End.X only
ROUTE_PATH_TYPES: Mapping[RouteKind, int] = {
    RouteKind.BLACKHOLE: FIB_PATH_TYPE_DROP,
    RouteKind.UNREACHABLE: FIB_PATH_TYPE_ICMP_UNREACH,
    RouteKind.PROHIBIT: FIB_PATH_TYPE_ICMP_PROHIBIT,
    RouteKind.LOCAL: FIB_PATH_TYPE_LOCAL,
}
ROUTE_KIND_OF_PATH: Mapping[int, RouteKind] = {v: k for k, v in ROUTE_PATH_TYPES.items()}

InterfaceIndex = Callable[[str], int]  # model interface name → sw_if_index (raises)
InterfaceName = Callable[[int], str | None]  # sw_if_index → model interface name


class InvalidObject(ValueError):
    """A model object VPP cannot hold (the message names it and why)."""


# --- tables ---------------------------------------------------------------------------


def vpp_table(table: int) -> int:
    """The VPP table id of a model table (MAIN_TABLE → 0)."""
    if table == MAIN_TABLE:
        return 0
    if not 0 < table < INVALID_INDEX:
        raise InvalidObject(f"table {table}: not a table VPP can hold (0 is the kernel's unspec)")
    return table


def model_table(table_id: int) -> int:
    return MAIN_TABLE if table_id == 0 else table_id


def table_add(table_id: int, ipv6: bool) -> Request:
    family = "ip6" if ipv6 else "ip4"
    name = f"{TABLE_NAME_PREFIX}{table_id}-{family}"
    return Request(
        "ip_table_add_del",
        {"is_add": True, "table": {"table_id": table_id, "is_ip6": ipv6, "name": name}},
        f"{family} table {table_id}",
    )


# vl_api_ip_flow_hash_config_t: src, dst, sport, dport, proto — VPP's default (0x9F) adds
# the IPv6 flow label (0x80), which Linux draws anew per connection and on every RTO.
FLOW_HASH_5_TUPLE = 0x1F


def flow_hash_5_tuple(table_id: int) -> Request:
    """IPv6 table `table_id` hashes the 5-tuple only: an SR policy's load-balance takes
    the hash config of its BSID's table when VPP makes the policy (sr_policy_rewrite.c,
    update_lb)."""
    return Request(
        "set_ip_flow_hash_v2",
        {"table_id": table_id, "af": ADDRESS_IP6, "flow_hash_config": FLOW_HASH_5_TUPLE},
        f"ip6 table {table_id}: flow hash on the 5-tuple",
    )


# --- local SIDs -----------------------------------------------------------------------


def localsid_add(sid: LocalSid, ifindex: InterfaceIndex) -> Request:
    behavior = BEHAVIOR_OF.get(type(sid))
    if behavior is None:
        why = "VPP has no End.DT46" if isinstance(sid, EndDT46) else "not a VPP behaviour"
        raise InvalidObject(f"local SID {sid.sid} {sid.behaviour}: {why}")
    extra = sid.flavours - {Flavour.PSP}
    if extra:
        names = ", ".join(sorted(extra))
        raise InvalidObject(f"local SID {sid.sid}: VPP's API has no {names} flavour")
    if sid.flavours and not isinstance(sid, PSP_BEHAVIOURS):
        raise InvalidObject(f"local SID {sid.sid}: VPP has PSP only for End and End.X")
    nexthop: IPAddress = ZERO6
    sw_if_index = INVALID_INDEX
    if isinstance(sid, EndX | EndDX6 | EndDX4):
        sw_if_index = ifindex(sid.interface)
        nexthop = sid.nexthop
    elif isinstance(sid, EndT | EndDT6 | EndDT4):
        sw_if_index = vpp_table(sid.table)  # VPP reads the lookup table from here
    return Request(
        "sr_localsid_add_del",
        {
            "is_del": False,
            "localsid": sid.sid,
            "end_psp": Flavour.PSP in sid.flavours,
            "behavior": behavior,
            "sw_if_index": sw_if_index,
            "vlan_index": INVALID_INDEX,
            "fib_table": 0,
            "nh_addr": nexthop,
        },
        lambda: f"add {sid.behaviour} {sid.sid}",
    )


def localsid_del(sid: LocalSid) -> Request:
    """Delete by address. The behaviour sent is End whatever the SID's: VPP validates
    `sw_if_index` for the cross-connect behaviours even on delete (-2 for ~0), and the
    delete itself only looks the address up."""
    return Request(
        "sr_localsid_add_del",
        {
            "is_del": True,
            "localsid": sid.sid,
            "end_psp": False,
            "behavior": SR_BEHAVIOR_END,
            "sw_if_index": INVALID_INDEX,
            "vlan_index": INVALID_INDEX,
            "fib_table": 0,
            "nh_addr": ZERO6,
        },
        lambda: f"delete {sid.behaviour} {sid.sid}",
    )


def decode_localsid(details: Any, ifname: InterfaceName) -> LocalSid | None:
    """A `sr_localsids_details` as a model SID; None for what we never program."""
    if details.fib_table != 0:
        return None
    sid = IPv6Address(details.addr)
    behavior = int(details.behavior)
    flavours = frozenset({Flavour.PSP}) if details.end_psp else frozenset()
    target = int(details.xconnect_iface_or_vrf_table)
    if behavior == SR_BEHAVIOR_END:
        return End(sid, flavours)
    if behavior == SR_BEHAVIOR_T:
        return EndT(sid, flavours, table=model_table(target))
    if behavior == SR_BEHAVIOR_DT6:
        return EndDT6(sid, flavours, table=model_table(target))
    if behavior == SR_BEHAVIOR_DT4:
        return EndDT4(sid, flavours, table=model_table(target))
    if behavior in (SR_BEHAVIOR_X, SR_BEHAVIOR_DX6, SR_BEHAVIOR_DX4):
        interface = ifname(target) or f"sw_if_index {target}"
        nexthop = details.xconnect_nh_addr
        if behavior == SR_BEHAVIOR_DX4:
            return EndDX4(sid, flavours, nexthop=IPv4Address(_v4(nexthop)), interface=interface)
        cls = EndX if behavior == SR_BEHAVIOR_X else EndDX6
        return cls(sid, flavours, nexthop=IPv6Address(_v6(nexthop)), interface=interface)
    return None


def _v6(value: Any) -> IPv6Address:
    if isinstance(value, IPv6Address):
        return value
    if isinstance(value, IPv4Address):
        return ZERO6
    return IPv6Address(value)


def _v4(value: Any) -> IPv4Address:
    if isinstance(value, IPv4Address):
        return value
    if isinstance(value, IPv6Address):
        return ZERO4
    return IPv4Address(value)


# --- policies -------------------------------------------------------------------------


@dataclass(frozen=True)
class VppList:
    """A segment list as VPP holds it: its pool index (`sl_index`) names it in mods."""

    segments: tuple[IPv6Address, ...]
    weight: int
    sl_index: int

    def as_model(self) -> SegmentList | None:
        if not self.segments or self.weight < 1:
            return None  # not a list we could have made (VPP accepts weight 0)
        return SegmentList(self.segments, self.weight)


@dataclass(frozen=True)
class VppPolicy:
    """A policy as VPP holds it (from sr_policies_with_sl_index_dump + sr_policies_v2_dump)."""

    bsid: IPv6Address
    is_encap: bool
    fib_table: int
    lists: tuple[VppList, ...]
    encap_src: IPv6Address | None = None  # the source its latest encap list was built with
    spray: bool = False


def is_encap(mode: EncapMode, bsid: IPv6Address) -> bool:
    if mode is EncapMode.INSERT:
        return False
    if mode is EncapMode.ENCAP:
        raise InvalidObject(
            f"policy {bsid}: VPP has no plain H.Encaps for one-SID lists (it never puts an SRH "
            "on them): use encap.red, which this backend's capabilities offer"
        )
    return True


def sid_list(
    segments: Sequence[IPv6Address], weight: int, what: str | Callable[[], str]
) -> dict[str, Any]:
    """A `srv6_sid_list`: all 16 slots, padded with `::` (vpp-papi wants every one)."""
    if len(segments) > SID_LIST_SLOTS:
        where = what() if callable(what) else what
        raise InvalidObject(f"{where}: {len(segments)} segments, VPP takes at most 16")
    # As the 16 bytes vpp-papi packs: an IPv6Address would be converted once per slot.
    padded = [s.packed for s in segments] + [_ZERO16] * (SID_LIST_SLOTS - len(segments))
    return {"num_sids": len(segments), "weight": weight, "sids": padded}


def policy_add(policy: SrPolicy, first: SegmentList) -> Request:
    encap = is_encap(policy.mode, policy.bsid)
    what = _lazy("add policy {}", policy.bsid)
    fields: dict[str, Any] = {
        "bsid_addr": policy.bsid,
        "weight": first.weight,  # ignored by VPP (it reads sids.weight); kept equal
        "is_encap": encap,
        "fib_table": 0,
        "sids": sid_list(first.segments, first.weight, what),
    }
    if policy.encap_source is None:
        return Request("sr_policy_add", {**fields, "is_spray": False}, what)
    if not encap:
        raise InvalidObject(f"policy {policy.bsid}: an encap source needs an encap mode")
    return Request(
        "sr_policy_add_v2", {**fields, "type": 0, "encap_src": policy.encap_source}, what
    )


def policy_mod(
    bsid: IPv6Address,
    operation: int,
    *,
    segments: Sequence[IPv6Address] = (),
    weight: int = 1,
    sl_index: int = 0,
    encap_source: IPv6Address | None = None,
    what: str | Callable[[], str] = "",
) -> Request:
    what = what or f"modify policy {bsid}"
    fields: dict[str, Any] = {
        "bsid_addr": bsid,
        "sr_policy_index": 0,  # unused: VPP finds the policy by its BSID
        "fib_table": 0,
        "operation": operation,
        "sl_index": sl_index,
        "weight": weight,  # ignored by VPP (it reads sids.weight); kept equal
        "sids": sid_list(segments, weight, what),
    }
    if encap_source is None:
        return Request("sr_policy_mod", fields, what)
    return Request("sr_policy_mod_v2", {**fields, "encap_src": encap_source}, what)


def list_add(policy: SrPolicy, sl: SegmentList) -> Request:
    return policy_mod(
        policy.bsid,
        SR_POLICY_OP_ADD,
        segments=sl.segments,
        weight=sl.weight,
        encap_source=policy.encap_source,
        what=lambda: f"policy {policy.bsid}: add list {_show(sl.segments)} weight {sl.weight}",
    )


def list_del(bsid: IPv6Address, sl: VppList) -> Request:
    return policy_mod(
        bsid,
        SR_POLICY_OP_DEL,
        sl_index=sl.sl_index,
        what=lambda: f"policy {bsid}: delete list {sl.sl_index} {_show(sl.segments)}",
    )


def list_weight(bsid: IPv6Address, sl: VppList, weight: int) -> Request:
    return policy_mod(
        bsid,
        SR_POLICY_OP_MOD,
        sl_index=sl.sl_index,
        weight=weight,
        what=lambda: f"policy {bsid}: list {sl.sl_index} {_show(sl.segments)} weight {weight}",
    )


def policy_del(bsid: IPv6Address) -> Request:
    return Request(
        "sr_policy_del", {"bsid_addr": bsid, "sr_policy_index": 0}, _lazy("delete policy {}", bsid)
    )


def policy_create(policy: SrPolicy) -> list[Request]:
    """A new policy: `sr_policy_add` with the first list, `sr_policy_mod` ADD for the rest."""
    first, *rest = policy.segment_lists
    return [policy_add(policy, first), *(list_add(policy, sl) for sl in rest)]


def decode_policy(details: Any, v2: Any | None = None) -> VppPolicy:
    """`sr_policies_with_sl_index_details` (+ the policy's `sr_policies_v2_details`)."""
    lists = []
    for entry in details.sid_lists[: details.num_sid_lists]:
        segments = tuple(IPv6Address(s) for s in entry.sids[: entry.num_sids])
        lists.append(VppList(segments, int(entry.weight), int(entry.sl_index)))
    source = None
    if v2 is not None and details.is_encap:
        source = IPv6Address(v2.encap_src)
    return VppPolicy(
        bsid=IPv6Address(details.bsid),
        is_encap=bool(details.is_encap),
        fib_table=int(details.fib_table),
        lists=tuple(lists),
        encap_src=source,
        spray=bool(details.is_spray),
    )


def policy_as_model(policy: VppPolicy, node_source: IPv6Address | None) -> SrPolicy | None:
    """The model's view of a VPP policy; its encap source is None when it is the node's."""
    lists = [sl.as_model() for sl in policy.lists]
    kept = tuple(sl for sl in lists if sl is not None)
    if not kept:
        return None
    if len(kept) != len(lists) or policy.spray or policy.fib_table != 0:
        # Something we never program: say so with a value no desired policy has (an extra
        # list with the BSID as its only segment), so reconcile rebuilds it.
        kept = (*kept, SegmentList((policy.bsid,), 1))
    source = policy.encap_src
    if source is not None and source in (ZERO6, node_source):
        source = None
    mode = EncapMode.ENCAP_RED if policy.is_encap else EncapMode.INSERT
    return SrPolicy(policy.bsid, kept, encap_source=source, mode=mode)


def policy_requests(
    new: SrPolicy, state: VppPolicy | None, node_source: IPv6Address | None
) -> list[Request]:
    """What makes VPP's policy at `new.bsid` be `new`, given what VPP holds (`state`).

    Hitless where VPP allows it: lists are added before any is deleted (so a policy's last
    list is never removed: [A] → [B] is "add B, delete A"), weights change in place, and
    old lists are named by their `sl_index`. A different mode (encap/insert) cannot be
    edited in place: delete and re-create. A list built with another encap source than
    the one wanted (VPP bakes it in) is rebuilt, new lists first.
    """
    for sl in new.segment_lists:
        sid_list(sl.segments, sl.weight, _lazy("policy {}", new.bsid))
    encap = is_encap(new.mode, new.bsid)
    if state is None:
        return policy_create(new)
    if state.is_encap != encap or state.spray or state.fib_table != 0:
        return [policy_del(new.bsid), *policy_create(new)]
    source = new.encap_source or node_source or ZERO6
    if encap and state.encap_src is not None and state.encap_src != source:
        return [
            *(list_add(new, sl) for sl in new.segment_lists),
            *(list_del(new.bsid, held) for held in state.lists),
        ]
    valid = [(held.as_model(), held) for held in state.lists]
    by_value: dict[SegmentList, list[VppList]] = {}
    for model, held in valid:
        if model is not None:
            by_value.setdefault(model, []).append(held)
    lists = tuple(model for model, _ in valid if model is not None)
    requests: list[Request] = []
    if lists:
        old = SrPolicy(new.bsid, lists, encap_source=new.encap_source, mode=new.mode)
        for edit in segment_list_edits(old, new):
            if edit.op is ListOp.ADD:
                assert edit.new is not None
                requests.append(list_add(new, edit.new))
                continue
            assert edit.old is not None
            held = by_value[edit.old].pop(0)
            if edit.op is ListOp.MODIFY:
                assert edit.new is not None
                requests.append(list_weight(new.bsid, held, edit.new.weight))
            else:
                requests.append(list_del(new.bsid, held))
    else:
        requests += [list_add(new, sl) for sl in new.segment_lists]
    requests += [list_del(new.bsid, held) for model, held in valid if model is None]
    return requests


def change_requests(
    change: Change,
    ifindex: InterfaceIndex,
    policies: Mapping[IPv6Address, VppPolicy],
    node_source: IPv6Address | None,
) -> list[Request]:
    """The requests of one plan step (not pods or the encap source: those are steps of
    their own, see `VppBackend`). A local SID cannot be changed in place in VPP (an add
    of an existing SID fails): replace is delete then add, back to back."""
    obj, old, new = change.obj, change.old, change.new
    if isinstance(obj, LocalSid):
        requests = []
        if isinstance(old, LocalSid):
            requests.append(localsid_del(old))
        if isinstance(new, LocalSid):
            requests.append(localsid_add(new, ifindex))
        return requests
    if isinstance(obj, SrPolicy):
        if new is None:
            return [policy_del(obj.bsid)]
        assert isinstance(new, SrPolicy)
        return policy_requests(new, policies.get(new.bsid), node_source)
    if isinstance(obj, Steering):
        return [steering(obj, delete=new is None)]
    if isinstance(obj, Route):
        if new is None:
            return [route_del(obj)]
        return [route_add(obj, ifindex)]
    raise InvalidObject(f"{change.kind} is not programmed with plain requests")


def _lazy(template: str, *values: object) -> Callable[[], str]:
    """A description formatted only when an error needs it (str() of an address is slow
    enough to matter at 10,000 services)."""
    return lambda: template.format(*values)


def _show(segments: Sequence[IPv6Address]) -> str:
    return "[" + ",".join(str(s) for s in segments) + "]"


def encap_source(address: IPv6Address | None) -> Request:
    value = address if address is not None else ZERO6
    return Request("sr_set_encap_source", {"encaps_source": value}, f"encap source {value}")


def parse_encap_source(cli_reply: str) -> IPv6Address | None:
    """The address in `show sr encaps source addr` ("SR encaps source addr = X")."""
    _, _, value = cli_reply.partition("=")
    try:
        address = IPv6Address(value.strip())
    except ValueError:
        return None
    return None if address == ZERO6 else address


# --- steering -------------------------------------------------------------------------


def steering(st: Steering, *, delete: bool = False) -> Request:
    ipv6 = isinstance(st.prefix, ipaddress.IPv6Network)
    verb = "delete" if delete else "steer"
    return Request(
        "sr_steering_add_del",
        {
            "is_del": delete,
            "bsid_addr": st.bsid,
            "sr_policy_index": 0,  # unused: VPP finds the policy by its BSID
            "table_id": vpp_table(st.table),
            "prefix": st.prefix,
            "sw_if_index": INVALID_INDEX,  # L2 steering only
            "traffic_type": SR_STEER_IPV6 if ipv6 else SR_STEER_IPV4,
        },
        lambda: f"{verb} {st.prefix} (table {st.table}) → {st.bsid}",
    )


def decode_steering(details: Any) -> Steering | None:
    if int(details.traffic_type) not in (SR_STEER_IPV4, SR_STEER_IPV6):
        return None  # L2 steering: never ours
    prefix = ipaddress.ip_network(details.prefix, strict=False)
    return Steering(prefix, IPv6Address(details.bsid), model_table(int(details.fib_table)))


# --- routes ---------------------------------------------------------------------------


def _nh(address: IPAddress | None, ipv6: bool) -> dict[str, Any]:
    if address is None:
        address = ZERO6 if ipv6 else ZERO4
    key = "ip6" if isinstance(address, IPv6Address) else "ip4"
    return {"address": {key: address}, "via_label": 0, "obj_id": 0, "classify_table_index": 0}


def fib_path(
    path_type: int,
    *,
    ipv6: bool,
    nexthop: IPAddress | None = None,
    sw_if_index: int = INVALID_INDEX,
    table_id: int = 0,
) -> dict[str, Any]:
    """A `fib_path` with every field set (its label stack too: 16 empty labels)."""
    if nexthop is not None:
        ipv6 = isinstance(nexthop, IPv6Address)
    return {
        "sw_if_index": sw_if_index,
        "table_id": table_id,
        "rpf_id": 0,
        "weight": 1,
        "preference": 0,
        "type": path_type,
        "flags": 0,
        "proto": FIB_PATH_NH_PROTO_IP6 if ipv6 else FIB_PATH_NH_PROTO_IP4,
        "nh": _nh(nexthop, ipv6),
        "n_labels": 0,
        "label_stack": [{"is_uniform": 0, "label": 0, "ttl": 0, "exp": 0}] * LABEL_STACK_SLOTS,
    }


def route_add(route: Route, ifindex: InterfaceIndex) -> Request:
    table_id = vpp_table(route.table)
    ipv6 = isinstance(route.prefix, ipaddress.IPv6Network)
    if route.kind is RouteKind.UNICAST:
        if route.via is None and not route.interface:
            raise InvalidObject(f"route {route.prefix}: unicast needs a next hop or interface")
        sw_if_index = ifindex(route.interface) if route.interface else INVALID_INDEX
        path = fib_path(
            FIB_PATH_TYPE_NORMAL,
            ipv6=ipv6,
            nexthop=route.via,
            sw_if_index=sw_if_index,
            table_id=table_id,
        )
    else:
        path = fib_path(ROUTE_PATH_TYPES[route.kind], ipv6=ipv6, table_id=table_id)
    return Request(
        "ip_route_add_del",
        {
            "is_add": True,
            "is_multipath": False,
            "route": _route(table_id, route.prefix, [path]),
        },
        lambda: f"route {route.prefix} {_describe(route)} (table {route.table})",
    )


def route_del(route: Route) -> Request:
    table_id = vpp_table(route.table)
    return Request(
        "ip_route_add_del",
        {"is_add": False, "is_multipath": False, "route": _route(table_id, route.prefix, [])},
        lambda: f"delete route {route.prefix} (table {route.table})",
    )


def _route(table_id: int, prefix: IPNetwork, paths: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "table_id": table_id,
        "stats_index": 0,
        "prefix": prefix,
        "n_paths": len(paths),
        "paths": paths,
    }


def _describe(route: Route) -> str:
    if route.kind is not RouteKind.UNICAST:
        return str(route.kind)
    parts = []
    if route.via is not None:
        parts.append(f"via {route.via}")
    if route.interface:
        parts.append(f"dev {route.interface}")
    return " ".join(parts)


def path_nexthop(path: Any) -> IPAddress | None:
    """The next hop of a dumped `fib_path`, None when unset (attached, or not an IP path)."""
    union = path.nh.address
    proto = int(path.proto)
    if proto == FIB_PATH_NH_PROTO_IP6:
        address: IPAddress = IPv6Address(union.ip6)
    elif proto == FIB_PATH_NH_PROTO_IP4:
        address = IPv4Address(union.ip4)
    else:
        return None
    return None if int(address) == 0 else address


def decode_route(details: Any, ifname: InterfaceName) -> Route | None:
    """A `ip_route_v2_details`' route as a model Route; None for shapes we never make."""
    route = details.route
    prefix = ipaddress.ip_network(route.prefix, strict=False)
    table = model_table(int(route.table_id))
    paths = list(route.paths[: route.n_paths])
    if not paths:
        return None
    if len(paths) > 1:
        # We only ever install one path. Report a value no desired route has, so that
        # reconcile replaces it (an add with is_multipath=0 replaces all paths).
        return Route(prefix, interface=f"({len(paths)} paths)", table=table)
    path = paths[0]
    path_type = int(path.type)
    if path_type in ROUTE_KIND_OF_PATH:
        return Route(prefix, kind=ROUTE_KIND_OF_PATH[path_type], table=table)
    if path_type != FIB_PATH_TYPE_NORMAL:
        return None
    sw_if_index = int(path.sw_if_index)
    interface = ifname(sw_if_index) if sw_if_index != INVALID_INDEX else None
    via = path_nexthop(path)
    if via is None and interface is None:
        return None  # a deaggregation into another table: not ours
    return Route(prefix, via=via, interface=interface, table=table)


# --- interfaces and pods --------------------------------------------------------------


def pod_tag(interface: str) -> str:
    tag = POD_TAG_PREFIX + interface
    if len(tag.encode()) >= 64:
        raise InvalidObject(f"pod interface {interface!r}: name too long for a VPP tag")
    return tag


def pod_of_tag(tag: str) -> str | None:
    return tag[len(POD_TAG_PREFIX) :] if tag.startswith(POD_TAG_PREFIX) else None


def af_packet_create(host_interface: str) -> Request:
    return Request(
        "af_packet_create_v3",
        {
            "mode": AF_PACKET_MODE_ETHERNET,
            # Not the veth's MAC (the kernel must not route too), and not a random one: a
            # VPP restarted under running pods re-creates the port with the MAC their
            # neighbour caches still hold for fe80::1, so traffic resumes at once.
            "hw_addr": port_mac(host_interface),
            "use_random_hw_addr": False,
            "host_if_name": host_interface,
            "rx_frame_size": 0,  # 0: VPP's defaults
            "tx_frame_size": 0,
            "rx_frames_per_block": 0,
            "tx_frames_per_block": 0,
            "flags": AF_PACKET_FLAG_QDISC_BYPASS,
            "num_rx_queues": 1,
            "num_tx_queues": 1,
        },
        f"af_packet on {host_interface}",
    )


def af_packet_delete(host_interface: str) -> Request:
    return Request(
        "af_packet_delete", {"host_if_name": host_interface}, f"delete af_packet {host_interface}"
    )


def tap_create(
    pod: PodAttachment, gateway_v6: IPv6Address, gateway_v4: IPv4Address | None
) -> Request:
    """A tap whose host end VPP moves into the pod's namespace, addressed, with routes."""
    v6 = sorted((a for a in pod.addresses if a.version == 6), key=lambda a: int(a.ip))
    v4 = sorted((a for a in pod.addresses if a.version == 4), key=lambda a: int(a.ip))
    fields: dict[str, Any] = {
        "id": INVALID_INDEX,
        "use_random_mac": True,
        "mac_address": "00:00:00:00:00:00",
        "num_rx_queues": 1,
        "num_tx_queues": 1,
        "tx_ring_sz": 256,
        "rx_ring_sz": 256,
        "host_mtu_set": False,
        "host_mtu_size": 0,
        "host_mac_addr_set": True,
        "host_mac_addr": tap_host_mac(pod.interface),
        "host_ip4_prefix_set": bool(v4),
        "host_ip4_prefix": v4[0] if v4 else ipaddress.IPv4Interface("0.0.0.0/0"),
        "host_ip6_prefix_set": bool(v6),
        "host_ip6_prefix": v6[0] if v6 else ipaddress.IPv6Interface("::/0"),
        "host_ip4_gw_set": bool(v4) and gateway_v4 is not None,
        "host_ip4_gw": gateway_v4 if gateway_v4 is not None else ZERO4,
        "host_ip6_gw_set": bool(v6),
        "host_ip6_gw": gateway_v6,
        "tap_flags": 0,
        "host_namespace_set": True,
        "host_namespace": pod.netns,
        "host_if_name_set": True,
        "host_if_name": pod.container_interface,
        "host_bridge_set": False,
        "host_bridge": "",
        "tag": pod_tag(pod.interface),
    }
    return Request("tap_create_v3", fields, f"tap for pod {pod.pod} ({pod.interface})")


def memif_socket_add(path: str) -> Request:
    """A memif socket file; VPP picks a free socket id (`socket_id` ~0) and returns it."""
    return Request(
        "memif_socket_filename_add_del_v2",
        {"is_add": True, "socket_id": INVALID_INDEX, "socket_filename": path},
        f"memif socket {path}",
    )


def memif_socket_del(socket_id: int, path: str) -> Request:
    """By id (VPP ignores the name on delete; sent all the same: vpp-papi cannot read an
    empty variable-length string back, and the log names the file)."""
    return Request(
        "memif_socket_filename_add_del_v2",
        {"is_add": False, "socket_id": socket_id, "socket_filename": path},
        f"delete memif socket {socket_id} ({path})",
    )


def memif_create(socket_id: int, pod: PodAttachment) -> Request:
    """VPP's end of a memif pod: the master, in IP mode. IP mode has no L2 at all, so an
    End.DX6/DX4 towards the pod needs no neighbour (whose MAC VPP could not know before
    the CNF connects), and the CNF needs no ARP/ND for its gateway either."""
    return Request(
        "memif_create_v2",
        {
            "role": MEMIF_ROLE_MASTER,
            "mode": MEMIF_MODE_IP,
            "rx_queues": 1,
            "tx_queues": 1,
            "id": 0,  # one interface per socket: the pod's
            "socket_id": socket_id,
            "ring_size": 0,  # 0: VPP's defaults (1024 slots of 2048 bytes)
            "buffer_size": 0,
            "no_zero_copy": False,
            "use_dma": False,
            "hw_addr": "00:00:00:00:00:00",
            "secret": "",
        },
        f"memif for pod {pod.pod} ({pod.interface}) on {pod.memif_socket}",
    )


def memif_delete(sw_if_index: int, interface: str) -> Request:
    return Request("memif_delete", {"sw_if_index": sw_if_index}, f"delete memif {interface}")


def tap_delete(sw_if_index: int, interface: str) -> Request:
    return Request("tap_delete_v2", {"sw_if_index": sw_if_index}, f"delete tap {interface}")


def interface_tag(sw_if_index: int, tag: str) -> Request:
    return Request(
        "sw_interface_tag_add_del",
        {"is_add": True, "sw_if_index": sw_if_index, "tag": tag},
        f"tag {sw_if_index} {tag}",
    )


def interface_table(sw_if_index: int, table_id: int, ipv6: bool) -> Request:
    return Request(
        "sw_interface_set_table",
        {"sw_if_index": sw_if_index, "is_ipv6": ipv6, "vrf_id": table_id},
        f"interface {sw_if_index} into ip{6 if ipv6 else 4} table {table_id}",
    )


def interface_ip6_enable(sw_if_index: int) -> Request:
    return Request(
        "sw_interface_ip6_enable_disable",
        {"sw_if_index": sw_if_index, "enable": True},
        f"IPv6 on interface {sw_if_index}",
    )


def interface_link_local(sw_if_index: int, address: IPv6Address) -> Request:
    return Request(
        "sw_interface_ip6_set_link_local_address",
        {"sw_if_index": sw_if_index, "ip": address},
        f"link-local {address} on interface {sw_if_index}",
    )


def interface_up(sw_if_index: int, up: bool = True) -> Request:
    return Request(
        "sw_interface_set_flags",
        {"sw_if_index": sw_if_index, "flags": IF_STATUS_ADMIN_UP if up else 0},
        f"interface {sw_if_index} {'up' if up else 'down'}",
    )


def interface_unnumbered(sw_if_index: int, via: int) -> Request:
    return Request(
        "sw_interface_set_unnumbered",
        {"sw_if_index": via, "unnumbered_sw_if_index": sw_if_index, "is_add": True},
        f"interface {sw_if_index} unnumbered to {via}",
    )


def interface_address(
    sw_if_index: int, prefix: ipaddress.IPv4Interface | ipaddress.IPv6Interface
) -> Request:
    return Request(
        "sw_interface_add_del_address",
        {"sw_if_index": sw_if_index, "is_add": True, "del_all": False, "prefix": prefix},
        f"address {prefix} on interface {sw_if_index}",
    )


def loopback_create(tag: str) -> Request:
    return Request(
        "create_loopback_instance",
        {"mac_address": "00:00:00:00:00:00", "is_specified": False, "user_instance": 0},
        f"loopback {tag}",
    )


def port_mac(interface: str) -> str:
    """The MAC of VPP's own end of a pod port: fixed per interface, locally administered
    (a different derivation from `tap_host_mac`, the pod's end of a tap)."""
    digest = hashlib.sha256(b"vpp-port:" + interface.encode()).digest()
    return ":".join(f"{b:02x}" for b in (0x02, *digest[:5]))


def tap_host_mac(interface: str) -> str:
    """The MAC VPP gives a pod's end of its tap: fixed per interface, locally administered,
    so that VPP can hold the pod as a static neighbour without asking."""
    digest = hashlib.sha256(interface.encode()).digest()
    return ":".join(f"{b:02x}" for b in (0x02, *digest[:5]))


def pod_neighbour(
    sw_if_index: int, address: IPAddress, mac: str, *, delete: bool = False
) -> Request:
    """A static neighbour: the pod's address at its MAC, on its port."""
    return Request(
        "ip_neighbor_add_del",
        {
            "is_add": not delete,
            "neighbor": {
                "sw_if_index": sw_if_index,
                "flags": IP_NEIGHBOR_FLAG_STATIC,
                "mac_address": mac,
                "ip_address": address,
            },
        },
        f"{'delete ' if delete else ''}neighbour {address} at {mac} on {sw_if_index}",
    )


def pod_route(
    address: IPAddress, sw_if_index: int, table_id: int, interface: str, *, delete: bool = False
) -> Request:
    """The host route to a pod address through its interface, next hop the pod itself."""
    ipv6 = isinstance(address, IPv6Address)
    prefix = ipaddress.ip_network((address, 128 if ipv6 else 32))
    paths = (
        []
        if delete
        else [fib_path(FIB_PATH_TYPE_NORMAL, ipv6=ipv6, nexthop=address, sw_if_index=sw_if_index)]
    )
    return Request(
        "ip_route_add_del",
        {"is_add": not delete, "is_multipath": False, "route": _route(table_id, prefix, paths)},
        f"{'delete ' if delete else ''}pod route {prefix} dev {interface}",
    )


# --- fast packing of the bulk messages -------------------------------------------------
#
# A 10,000-service apply is 30,000 sr_policy_add/sr_policy_mod/sr_steering_add_del, and
# vpp-papi's generic packer (a conversion check per field, per SID slot) is most of its
# client time. These three are packed with `struct` instead — only for the definitions
# they were written for (the CRCs of VPP 25.10: a VPP speaking another layout fails the
# CRC check at connect, and other definitions fall back to vpp-papi), and CI checks them
# byte for byte against vpp-papi's own packing of the same fields.

_SID_LIST_HEAD = struct.Struct(">BI")
_POLICY_ADD = struct.Struct(">16sI??I")
_POLICY_MOD = struct.Struct(">16sIIBII")
_STEERING_HEAD = struct.Struct(">?16sII")
_STEERING_TAIL = struct.Struct(">BIB")  # prefix length, sw_if_index, traffic type


def _packed6(value: bytes | IPv6Address) -> bytes:
    if isinstance(value, bytes):
        return value
    return IPv6Address(value).packed


def _pack_sid_list(sids: Mapping[str, Any]) -> bytes:
    slots = sids["sids"]
    if len(slots) != SID_LIST_SLOTS:
        raise ValueError("a srv6_sid_list has 16 slots")
    return _SID_LIST_HEAD.pack(sids["num_sids"], sids["weight"]) + b"".join(
        _packed6(slot) for slot in slots
    )


def _pack_policy_add(f: Mapping[str, Any]) -> bytes:
    head = _POLICY_ADD.pack(
        _packed6(f["bsid_addr"]), f["weight"], f["is_encap"], f["is_spray"], f["fib_table"]
    )
    return head + _pack_sid_list(f["sids"])


def _pack_policy_mod(f: Mapping[str, Any]) -> bytes:
    head = _POLICY_MOD.pack(
        _packed6(f["bsid_addr"]),
        f["sr_policy_index"],
        f["fib_table"],
        f["operation"],
        f["sl_index"],
        f["weight"],
    )
    return head + _pack_sid_list(f["sids"])


def _pack_steering(f: Mapping[str, Any]) -> bytes:
    prefix: IPNetwork = f["prefix"]
    family = ADDRESS_IP6 if prefix.version == 6 else ADDRESS_IP4
    address = prefix.network_address.packed.ljust(16, b"\0")  # the address union: 16 bytes
    return (
        _STEERING_HEAD.pack(
            f["is_del"], _packed6(f["bsid_addr"]), f["sr_policy_index"], f["table_id"]
        )
        + bytes((family,))
        + address
        + _STEERING_TAIL.pack(prefix.prefixlen, f["sw_if_index"], f["traffic_type"])
    )


# message → (the definitions' CRC it was written for, packer of the fields after the header)
FAST_PACKERS: Mapping[str, tuple[str, Callable[[Mapping[str, Any]], bytes]]] = {
    "sr_policy_add": ("0x44ac92e8", _pack_policy_add),
    "sr_policy_mod": ("0xb97bb56e", _pack_policy_mod),
    "sr_steering_add_del": ("0xe46b0a0f", _pack_steering),
}


__all__ = [
    "BEHAVIOURS",
    "FAST_PACKERS",
    "FIB_SOURCE_API",
    "FIB_SOURCE_SR",
    "INVALID_INDEX",
    "POD_TAG_PREFIX",
    "TAG_PREFIX",
    "InvalidObject",
    "VppList",
    "VppPolicy",
    "change_requests",
    "decode_localsid",
    "decode_policy",
    "decode_route",
    "decode_steering",
    "localsid_add",
    "localsid_del",
    "model_table",
    "policy_add",
    "policy_as_model",
    "policy_create",
    "policy_del",
    "policy_requests",
    "route_add",
    "route_del",
    "steering",
    "vpp_table",
]
