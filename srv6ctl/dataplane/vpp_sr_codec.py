"""SRv6 objects as VPP binary API messages, both ways (no I/O).

The VPP shape of each model object (VPP 25.10, `src/vnet/srv6/sr_api.c`):

- `LocalSid` → `sr_localsid_add_del`, installed in FIB table 0. End.X and End.DX6/DX4 name
  their interface in `sw_if_index` and their neighbour in `nh_addr`; End.T, End.DT6 and
  End.DT4 carry their *lookup table id in `sw_if_index`* (sr_cli_localsid reads it there;
  `fib_table` is where the SID itself is installed) and the dump gives it back in
  `xconnect_iface_or_vrf_table`. PSP is `end_psp`, for End and End.X only. No End.DT46.
- `SrPolicy` → `sr_policy_add` with the first segment list, then one `sr_policy_mod`
  (operation ADD) per further list. VPP takes each list's weight from `sids.weight` (the
  top-level `weight` is ignored). The weights sent are `held_policy`'s, not the model's:
  those VPP spreads over its buckets within one bucket of each list's share
  (`vpp_buckets`), and what a dump reads back. `srv6_sid_list.sids` is a fixed array of 16: padded
  with `::`. H.Encaps is `is_encap`: VPP puts no SRH on a one-SID list (which is exactly
  H.Encaps.Red) and the whole list in the SRH otherwise; `is_encap=0` is H.Insert. The
  policy is made in table 0, or with `affinity` in the affinity table (`vpp_affinity`),
  which is where its BSID's FIB entry goes and what a dump's `fib_table` gives back.
- `Steering` → `sr_steering_add_del` (traffic type IPV6/IPV4, `table_id`); adding a
  steering that exists re-points it at the new BSID in place.
- `EncapSource` → `sr_set_encap_source`; read back from the CLI (the API has no getter).

Each kind's plan step is one function (`localsid_change`, `policy_change`,
`steering_change`); `vpp_changes` picks the one for a change.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from srv6ctl.dataplane.model import BEHAVIOURS as MODEL_BEHAVIOURS
from srv6ctl.dataplane.model import (
    Change,
    CrossConnect,
    EncapMode,
    End,
    EndDT4,
    EndDT6,
    EndDX4,
    EndDX6,
    EndT,
    EndX,
    Flavour,
    IPAddress,
    IPv4Address,
    IPv6Address,
    LocalSid,
    SegmentList,
    SrPolicy,
    Steering,
    TableLookup,
)
from srv6ctl.dataplane.reconcile import ListOp, segment_list_edits
from srv6ctl.dataplane.vpp_affinity import (
    AFFINITY_TABLE,
    HELD_AFFINITY,
    held_affinity,
    policy_table,
)
from srv6ctl.dataplane.vpp_api import Request
from srv6ctl.dataplane.vpp_buckets import vpp_weights
from srv6ctl.dataplane.vpp_codec_base import (
    INVALID_INDEX,
    ZERO4,
    ZERO6,
    InterfaceIndex,
    InterfaceName,
    InvalidObject,
)
from srv6ctl.dataplane.vpp_fib_codec import model_table, vpp_table

SID_LIST_SLOTS = 16  # srv6_sid_list.sids[16]
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


# --- local SIDs -----------------------------------------------------------------------


def localsid_add(sid: LocalSid, ifindex: InterfaceIndex) -> Request:
    behavior = BEHAVIOR_OF.get(type(sid))
    if behavior is None:
        known = type(sid) in MODEL_BEHAVIOURS.values()
        why = f"VPP has no {sid.behaviour}" if known else "not a VPP behaviour"
        raise InvalidObject(f"local SID {sid.sid} {sid.behaviour}: {why}")
    extra = sid.flavours - {Flavour.PSP}
    if extra:
        names = ", ".join(sorted(extra))
        raise InvalidObject(f"local SID {sid.sid}: VPP's API has no {names} flavour")
    if sid.flavours and not isinstance(sid, PSP_BEHAVIOURS):
        raise InvalidObject(f"local SID {sid.sid}: VPP has PSP only for End and End.X")
    nexthop: IPAddress = ZERO6
    sw_if_index = INVALID_INDEX
    if isinstance(sid, CrossConnect):
        sw_if_index = ifindex(sid.interface)
        nexthop = sid.nexthop
    elif isinstance(sid, TableLookup):
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


def held_policy(policy: SrPolicy) -> SrPolicy:
    """`policy` as VPP holds it, and a dump reads it back, once it is programmed: with the
    weights VPP is given for its lists (`vpp_weights`) and its affinity as VPP keeps it,
    by the client's address with no timeout (`vpp_affinity.held_affinity`: any timeout
    is one value, so a new timeout is no change while affinity on ↔ off is). The same
    policy when VPP already spreads the model's weights fairly (3:1; 1-5, 7-9, 16 or 32
    equal lists; ...) and has no affinity or the held one."""
    affinity = held_affinity(policy.affinity)
    if affinity != policy.affinity:
        policy = replace(policy, affinity=affinity)
    weights = tuple(sl.weight for sl in policy.segment_lists)
    held = vpp_weights(weights)
    if held == weights:
        return policy
    lists = tuple(
        SegmentList(sl.segments, weight)
        for sl, weight in zip(policy.segment_lists, held, strict=True)
    )
    return replace(policy, segment_lists=lists)


def policy_add(policy: SrPolicy, first: SegmentList) -> Request:
    encap = is_encap(policy.mode, policy.bsid)
    what = _lazy("add policy {}", policy.bsid)
    fields: dict[str, Any] = {
        "bsid_addr": policy.bsid,
        "weight": first.weight,  # ignored by VPP (it reads sids.weight); kept equal
        "is_encap": encap,
        "fib_table": policy_table(policy),
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
        "fib_table": 0,  # unused too: the policy stays in the table it was made in
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
    if len(kept) != len(lists) or policy.spray or policy.fib_table not in (0, AFFINITY_TABLE):
        # Something we never program: say so with a value no desired policy has (an extra
        # list with the BSID as its only segment), so reconcile rebuilds it.
        kept = (*kept, SegmentList((policy.bsid,), 1))
    source = policy.encap_src
    if source is not None and source in (ZERO6, node_source):
        source = None
    mode = EncapMode.ENCAP_RED if policy.is_encap else EncapMode.INSERT
    affinity = HELD_AFFINITY if policy.fib_table == AFFINITY_TABLE else 0
    return SrPolicy(policy.bsid, kept, encap_source=source, mode=mode, affinity=affinity)


def policy_requests(
    new: SrPolicy, state: VppPolicy | None, node_source: IPv6Address | None
) -> list[Request]:
    """What makes VPP's policy at `new.bsid` be `new` with its held weights
    (`held_policy`), given what VPP holds (`state`, in VPP's weights too): so a change that
    comes with the model's weights and one that comes with VPP's program the same lists.

    Hitless where VPP allows it: lists are added before any is deleted (so a policy's last
    list is never removed: [A] → [B] is "add B, delete A"), weights change in place, and
    old lists are named by their `sl_index`. A different mode (encap/insert) or table
    (affinity on/off) cannot be edited in place: delete and re-create. A list built with
    another encap source than the one wanted (VPP bakes it in) is rebuilt, new lists first.
    """
    new = held_policy(new)
    for sl in new.segment_lists:
        sid_list(sl.segments, sl.weight, _lazy("policy {}", new.bsid))
    encap = is_encap(new.mode, new.bsid)
    if state is None:
        return policy_create(new)
    if state.is_encap != encap or state.spray or state.fib_table != policy_table(new):
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


# --- the buckets of a policy's load balance ---------------------------------------------

# `show ip6 fib` prints a load balance's buckets one by one, an SR list's as
# "[3] [@19]: SR: Segment List index:[1]" then "\tSegments:< a, b, \b\b > - Weight: 2"
# (src/vnet/srv6/sr_policy_rewrite.c, format_sr_segment_list_dpo).
_SEGMENTS = re.compile(r"Segments:<([^>]*)>")


def buckets_command(bsid: IPv6Address, fib_table: int = 0) -> str:
    """The CLI that shows the policy's load balance. The API has no bucket dump (its
    route dumps give paths and weights, not buckets), so it is read as the CLI prints it.
    The BSID's entry in the policy's table (0, or the affinity table) holds the policy's
    `bsid_dpo`; the load balances that steered IPv6 and IPv4 traffic use are built from
    the same paths and weights (`update_lb`), so they have the same buckets."""
    return f"show ip6 fib table {fib_table} {bsid}/128"


def parse_buckets(shown: str) -> dict[tuple[IPv6Address, ...], int]:
    """Segments → buckets from `buckets_command`'s reply: the forwarding section only (the
    path above it shows the same load balance again); {} when it holds no SR list."""
    out: dict[tuple[IPv6Address, ...], int] = {}
    forwarding = False
    for line in shown.splitlines():
        if line.strip().startswith("forwarding:"):
            forwarding = True
            continue
        if forwarding and line and not line[0].isspace():
            break  # the next entry
        found = _SEGMENTS.search(line) if forwarding else None
        if found is None:
            continue
        # format_sr_segment_list_dpo ends the list with "\b\b" over its last ", ".
        fields = (field.strip(" \t\b") for field in found.group(1).split(","))
        segments = tuple(IPv6Address(field) for field in fields if field)
        out[segments] = out.get(segments, 0) + 1
    return out


def _lazy(template: str, *values: object) -> Callable[[], str]:
    """A description formatted only when an error needs it (str() of an address is slow
    enough to matter at 10,000 services)."""
    return lambda: template.format(*values)


def _show(segments: Sequence[IPv6Address]) -> str:
    return "[" + ",".join(str(s) for s in segments) + "]"


# --- the encap source -----------------------------------------------------------------


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


# --- plan steps, kind by kind ---------------------------------------------------------


def localsid_change(change: Change, ifindex: InterfaceIndex) -> list[Request]:
    """A local SID cannot be changed in place in VPP (an add of an existing SID fails):
    replace is delete then add, back to back."""
    requests = []
    if isinstance(change.old, LocalSid):
        requests.append(localsid_del(change.old))
    if isinstance(change.new, LocalSid):
        requests.append(localsid_add(change.new, ifindex))
    return requests


def policy_change(
    change: Change,
    policies: Mapping[IPv6Address, VppPolicy],
    node_source: IPv6Address | None,
) -> list[Request]:
    """A policy's plan step, edited in place from what VPP holds (`policies`)."""
    new = change.new
    if new is None:
        assert isinstance(change.obj, SrPolicy)
        return [policy_del(change.obj.bsid)]
    assert isinstance(new, SrPolicy)
    return policy_requests(new, policies.get(new.bsid), node_source)


def steering_change(change: Change) -> list[Request]:
    """Adding a steering re-points it in place, so a replace is one add."""
    st = change.obj
    assert isinstance(st, Steering)
    return [steering(st, delete=change.new is None)]


__all__ = [
    "BEHAVIOR_OF",
    "BEHAVIOURS",
    "PSP_BEHAVIOURS",
    "SID_LIST_SLOTS",
    "SR_BEHAVIOR_DT4",
    "SR_BEHAVIOR_DT6",
    "SR_BEHAVIOR_DX4",
    "SR_BEHAVIOR_DX6",
    "SR_BEHAVIOR_END",
    "SR_BEHAVIOR_T",
    "SR_BEHAVIOR_X",
    "SR_POLICY_OP_ADD",
    "SR_POLICY_OP_DEL",
    "SR_POLICY_OP_MOD",
    "SR_STEER_IPV4",
    "SR_STEER_IPV6",
    "VppList",
    "VppPolicy",
    "buckets_command",
    "decode_localsid",
    "decode_policy",
    "decode_steering",
    "encap_source",
    "held_policy",
    "is_encap",
    "list_add",
    "list_del",
    "list_weight",
    "localsid_add",
    "localsid_change",
    "localsid_del",
    "parse_buckets",
    "parse_encap_source",
    "policy_add",
    "policy_as_model",
    "policy_change",
    "policy_create",
    "policy_del",
    "policy_mod",
    "policy_requests",
    "sid_list",
    "steering",
    "steering_change",
]
