"""The VPP backend's message layer against VPP's real API definitions (no VPP needed).

Every request the backend builds is checked field by field against the `*.api.json` of
VPP 25.10 (`SRV6CTL_VPP_API_DIR`, or `../shared/vpp-api/` beside the checkout) and packed
with vpp-papi exactly as it goes on the socket; details messages are packed from the same
definitions and decoded back into the model. Nothing here imitates what VPP *does*: the
sequences asserted (add before delete, `sl_index`, the last list) are the backend's own
decisions, and what VPP does with them is checked by tests/test_vpp_integration.py.

Skipped only without vpp-papi or the definitions; under CI (`CI=true`) neither may be
missing, since the definitions sit beside the checkout there.
"""

from __future__ import annotations

import ipaddress
import os
import struct
from collections.abc import Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from srv6ctl.dataplane import vpp_affinity, vpp_changes, vpp_packers
from srv6ctl.dataplane import vpp_codec_base as codec_base
from srv6ctl.dataplane import vpp_fib_codec as fib_codec
from srv6ctl.dataplane import vpp_interface_codec as if_codec
from srv6ctl.dataplane import vpp_sr_codec as sr_codec
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
    IPv4Address,
    IPv6Address,
    LocalSid,
    Op,
    PodAttachment,
    Route,
    RouteKind,
    SegmentList,
    SrPolicy,
    Steering,
)
from srv6ctl.dataplane.reconcile import plan
from srv6ctl.dataplane.vpp_api import (
    AF_PACKET_MESSAGES,
    CORE_MESSAGES,
    GATEWAY_MESSAGES,
    MEMIF_MESSAGES,
    POLICY_SOURCE_MESSAGES,
    TAP_MESSAGES,
    Request,
    crc_mismatches,
    find_api_dir,
    load_client,
    message_names,
)
from srv6ctl.dataplane.vpp_codec_base import InvalidObject
from srv6ctl.dataplane.vpp_sr_codec import VppList, VppPolicy

BSID = IPv6Address("fcbb:bb00::1:5")
A, B, C = (IPv6Address(f"fcbb:bb00:{n}::1:3") for n in (2, 3, 4))
POD6 = IPv6Address("fd00:10:0:1::3")
HEADER = {"_vl_msg_id", "client_index", "context"}
INTERFACES = {"s6pod0": 7, "host-eth1": 1}


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def _unavailable(reason: str) -> None:
    if _in_ci():
        pytest.fail(f"CI must run the VPP message layer: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def api_dir() -> Path:
    found = find_api_dir()
    if found is None:
        _unavailable("no VPP API definitions ($SRV6CTL_VPP_API_DIR or ../shared/vpp-api)")
    assert found is not None
    return found


@pytest.fixture(scope="module")
def client(api_dir: Path) -> Iterator[Any]:
    try:
        import vpp_papi  # noqa: F401
    except ImportError:
        _unavailable("vpp-papi is not installed")
    yield load_client(api_dir, api_socket="/nonexistent/api.sock")


def ifindex(name: str) -> int:
    return INTERFACES[name]


def ifname(index: int) -> str | None:
    return {v: k for k, v in INTERFACES.items()}.get(index)


def check_fields(kind: Any, value: Mapping[str, Any], where: str) -> None:
    """Every key of `value` is a field of `kind` (recursively into typedefs and lists)."""
    from vpp_papi.vpp_serializer import FixedList, VLAList, VPPType

    unknown = set(value) - set(kind.fields)
    assert not unknown, f"{where}: no such field(s) {sorted(unknown)}"
    for name, item in value.items():
        packer = kind.packers[kind.fields.index(name)]
        if isinstance(packer, VPPType) and isinstance(item, Mapping):
            check_fields(packer, item, f"{where}.{name}")
        elif isinstance(packer, FixedList | VLAList) and isinstance(packer.packer, VPPType):
            for i, element in enumerate(item):
                if isinstance(element, Mapping):
                    check_fields(packer.packer, element, f"{where}.{name}[{i}]")


def encode(client: Any, request: Request) -> tuple[bytes, Any]:
    """Check and pack `request` as VppChannel does, and unpack it again."""
    message = client.messages[request.name]
    check_fields(message, request.fields, request.name)
    missing = set(message.fields) - HEADER - set(request.fields)
    assert not missing, f"{request.name}: fields left to vpp-papi's defaults: {missing}"
    data = message.pack({**request.fields, "_vl_msg_id": 1, "client_index": 0, "context": 9})
    decoded, size = message.unpack(data)
    assert size == len(data)
    return data, decoded


def details(client: Any, name: str, **fields: Any) -> Any:
    """A details message as VPP would send it: packed from the definitions, unpacked."""
    message = client.messages[name]
    check_fields(message, fields, name)
    decoded, _ = message.unpack(message.pack({"_vl_msg_id": 1, "context": 9, **fields}))
    return decoded


def enum(client: Any, type_name: str, member: str) -> int:
    from vpp_papi import VppEnum

    return int(getattr(getattr(VppEnum, type_name), member))


# --- the definitions and the CRC check -------------------------------------------------


def test_every_message_the_backend_sends_is_in_the_definitions(client: Any) -> None:
    names = [
        *CORE_MESSAGES,
        "ip_route_lookup",
        *AF_PACKET_MESSAGES,
        *TAP_MESSAGES,
        *GATEWAY_MESSAGES,
        *POLICY_SOURCE_MESSAGES,
        *MEMIF_MESSAGES,
    ]
    for name in message_names(client, names):
        assert name in client.messages, name
    assert "sr_localsids_details" in message_names(client, ["sr_localsids_dump"])


def test_crc_check_passes_on_the_same_release_and_names_both_crcs_on_a_mismatch(
    client: Any,
) -> None:
    names = message_names(client, CORE_MESSAGES)
    table = {f"{n}_{client.messages[n].crc[2:]}": i for i, n in enumerate(names, 1)}
    assert crc_mismatches(client, names, table) == []

    ours = client.messages["sr_policy_add"].crc
    del table[f"sr_policy_add_{ours[2:]}"]
    table["sr_policy_add_deadbeef"] = 99
    del table[f"sr_steering_pol_dump_{client.messages['sr_steering_pol_dump'].crc[2:]}"]
    problems = crc_mismatches(client, names, table)
    assert problems == [
        f"sr_policy_add: VPP has CRC 0xdeadbeef, the API definitions have {ours}",
        "sr_steering_pol_dump: the running VPP has no such message (plugin not loaded?)",
    ]


def test_codec_constants_are_the_enum_values_of_the_definitions(client: Any) -> None:
    behaviours = {
        "SR_BEHAVIOR_API_END": sr_codec.SR_BEHAVIOR_END,
        "SR_BEHAVIOR_API_X": sr_codec.SR_BEHAVIOR_X,
        "SR_BEHAVIOR_API_T": sr_codec.SR_BEHAVIOR_T,
        "SR_BEHAVIOR_API_DX6": sr_codec.SR_BEHAVIOR_DX6,
        "SR_BEHAVIOR_API_DX4": sr_codec.SR_BEHAVIOR_DX4,
        "SR_BEHAVIOR_API_DT6": sr_codec.SR_BEHAVIOR_DT6,
        "SR_BEHAVIOR_API_DT4": sr_codec.SR_BEHAVIOR_DT4,
    }
    for member, value in behaviours.items():
        assert enum(client, "vl_api_sr_behavior_t", member) == value, member
    assert enum(client, "vl_api_sr_steer_t", "SR_STEER_API_IPV6") == sr_codec.SR_STEER_IPV6
    assert enum(client, "vl_api_sr_steer_t", "SR_STEER_API_IPV4") == sr_codec.SR_STEER_IPV4
    ops = {"ADD": sr_codec.SR_POLICY_OP_ADD, "DEL": sr_codec.SR_POLICY_OP_DEL}
    ops["MOD"] = sr_codec.SR_POLICY_OP_MOD
    for member, value in ops.items():
        assert enum(client, "vl_api_sr_policy_op_t", f"SR_POLICY_OP_API_{member}") == value
    paths = {
        "NORMAL": fib_codec.FIB_PATH_TYPE_NORMAL,
        "DROP": fib_codec.FIB_PATH_TYPE_DROP,
        "ICMP_UNREACH": fib_codec.FIB_PATH_TYPE_ICMP_UNREACH,
        "ICMP_PROHIBIT": fib_codec.FIB_PATH_TYPE_ICMP_PROHIBIT,
    }
    for member, value in paths.items():
        assert enum(client, "vl_api_fib_path_type_t", f"FIB_API_PATH_TYPE_{member}") == value
    proto = "vl_api_fib_path_nh_proto_t"
    assert enum(client, proto, "FIB_API_PATH_NH_PROTO_IP6") == fib_codec.FIB_PATH_NH_PROTO_IP6
    assert enum(client, proto, "FIB_API_PATH_NH_PROTO_IP4") == fib_codec.FIB_PATH_NH_PROTO_IP4
    flags = "vl_api_if_status_flags_t"
    assert enum(client, flags, "IF_STATUS_API_FLAG_ADMIN_UP") == if_codec.IF_STATUS_ADMIN_UP
    mode = "vl_api_af_packet_mode_t"
    assert enum(client, mode, "AF_PACKET_API_MODE_ETHERNET") == if_codec.AF_PACKET_MODE_ETHERNET
    af = "vl_api_af_packet_flags_t"
    assert (
        enum(client, af, "AF_PACKET_API_FLAG_QDISC_BYPASS") == if_codec.AF_PACKET_FLAG_QDISC_BYPASS
    )
    assert (
        enum(client, "vl_api_memif_role_t", "MEMIF_ROLE_API_MASTER") == if_codec.MEMIF_ROLE_MASTER
    )
    assert enum(client, "vl_api_memif_mode_t", "MEMIF_MODE_API_IP") == if_codec.MEMIF_MODE_IP
    # cksum-gso must stay off (see the vpp-api README): only qdisc bypass is set.
    assert (
        if_codec.AF_PACKET_FLAG_QDISC_BYPASS & enum(client, af, "AF_PACKET_API_FLAG_CKSUM_GSO") == 0
    )


# --- local SIDs -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sid",
    [
        End("fcbb:bb00:1::1"),
        End("fcbb:bb00:1::1", frozenset({Flavour.PSP})),
        EndX("fcbb:bb00:1::2", nexthop="fe80::2", interface="host-eth1"),
        EndT("fcbb:bb00:1::3", table=10),
        EndDX6("fcbb:bb00:1::1:3", nexthop=POD6, interface="s6pod0"),
        EndDX4("fcbb:bb00:1::4:3", nexthop="10.128.1.3", interface="s6pod0"),
        EndDT6("fcbb:bb00:1::6"),
        EndDT6("fcbb:bb00:1::6", table=20),
        EndDT4("fcbb:bb00:1::4", table=20),
    ],
    ids=lambda sid: f"{sid.behaviour}-{sid.sid}",
)
def test_local_sid_encodes_and_reads_back_from_its_details(client: Any, sid: LocalSid) -> None:
    data, sent = encode(client, sr_codec.localsid_add(sid, ifindex))
    assert sent.is_del is False
    assert sent.localsid == sid.sid
    assert sent.fib_table == 0  # installed in table 0
    assert int(sent.behavior) == sr_codec.BEHAVIOR_OF[type(sid)]
    assert sent.end_psp == (Flavour.PSP in sid.flavours)
    # The SID travels as 16 network-order bytes right after the header and is_del.
    offset = 2 + 4 + 4 + 1
    assert data[offset : offset + 16] == sid.sid.packed
    target = int(sent.sw_if_index)
    if isinstance(sid, EndX | EndDX6 | EndDX4):
        assert target == INTERFACES[sid.interface]
        assert sent.nh_addr == sid.nexthop
    elif isinstance(sid, EndT | EndDT6 | EndDT4):
        # VPP reads the lookup table from sw_if_index (sr_cli_localsid); main is 0.
        assert target == (0 if sid.table == MAIN_TABLE else sid.table)
    else:
        assert target == codec_base.INVALID_INDEX

    # What VPP reports for it in sr_localsids_dump, decoded back into the model.
    reply = details(
        client,
        "sr_localsids_details",
        addr=sid.sid,
        end_psp=sent.end_psp,
        behavior=int(sent.behavior),
        fib_table=0,
        vlan_index=codec_base.INVALID_INDEX,
        xconnect_nh_addr=sent.nh_addr,
        xconnect_iface_or_vrf_table=target,
    )
    assert sr_codec.decode_localsid(reply, ifname) == sid


def test_dx4_next_hop_is_encoded_as_an_ipv4_address(client: Any) -> None:
    sid = EndDX4("fcbb:bb00:1::4:3", nexthop="10.128.1.3", interface="s6pod0")
    data, sent = encode(client, sr_codec.localsid_add(sid, ifindex))
    assert sent.nh_addr == IPv4Address("10.128.1.3")
    # vl_api_address_t at the end: af (ADDRESS_IP4 = 0) then the union (16 bytes).
    assert data[-17] == 0
    assert data[-16:-12] == IPv4Address("10.128.1.3").packed


def test_vpp_refuses_what_it_cannot_hold() -> None:
    with pytest.raises(InvalidObject, match=r"End\.DT46"):
        sr_codec.localsid_add(EndDT46("fcbb:bb00:1::46"), ifindex)
    with pytest.raises(InvalidObject, match="no usd flavour"):
        sr_codec.localsid_add(End("fcbb:bb00:1::1", frozenset({Flavour.USD})), ifindex)
    with pytest.raises(InvalidObject, match="PSP only"):
        sr_codec.localsid_add(EndDT6("fcbb:bb00:1::6", frozenset({Flavour.PSP})), ifindex)
    with pytest.raises(InvalidObject, match=r"plain H\.Encaps"):
        sr_codec.policy_create(SrPolicy(BSID, (SegmentList((A,)),), mode=EncapMode.ENCAP))
    with pytest.raises(InvalidObject, match="at most 16"):
        sr_codec.policy_create(
            SrPolicy(BSID, (SegmentList(tuple([A] * 17)),), mode=EncapMode.ENCAP_RED)
        )
    assert "End.DT46" not in sr_codec.BEHAVIOURS


def test_local_sid_delete_names_the_sid(client: Any) -> None:
    _, sent = encode(client, sr_codec.localsid_del(EndDX6(f"{POD6}", nexthop=POD6, interface="x")))
    assert sent.is_del is True
    assert sent.localsid == POD6
    # Not the SID's own behaviour: VPP would validate the (unset) sw_if_index of a DX6.
    assert int(sent.behavior) == sr_codec.SR_BEHAVIOR_END


# --- policies ---------------------------------------------------------------------------


def red(*lists: SegmentList, source: str | None = None) -> SrPolicy:
    return SrPolicy(BSID, lists, encap_source=source, mode=EncapMode.ENCAP_RED)


def held(*lists: tuple[SegmentList, int], encap_src: str = "::") -> VppPolicy:
    """A policy as VPP holds it: lists with their sl_index."""
    return VppPolicy(
        BSID,
        is_encap=True,
        fib_table=0,
        lists=tuple(VppList(sl.segments, sl.weight, index) for sl, index in lists),
        encap_src=IPv6Address(encap_src),
    )


def sent_lists(client: Any, requests: list[Request]) -> list[tuple[str, int, Any, int, int]]:
    """(message, operation, segments, weight, sl_index) of each request, as packed."""
    out = []
    for request in requests:
        _, sent = encode(client, request)
        sids = sent.sids if hasattr(sent, "sids") else None
        segments = tuple(sids.sids[: sids.num_sids]) if sids is not None else ()
        weight = int(sids.weight) if sids is not None else 0
        operation = int(getattr(sent, "operation", 0))
        out.append((request.name, operation, segments, weight, int(getattr(sent, "sl_index", 0))))
    return out


def test_sid_list_is_padded_to_sixteen_and_carries_the_weight(client: Any) -> None:
    (request,) = sr_codec.policy_create(red(SegmentList((A, B), 3)))
    data, sent = encode(client, request)
    assert request.name == "sr_policy_add"
    assert sent.bsid_addr == BSID and sent.is_encap is True and sent.is_spray is False
    assert sent.sids.num_sids == 2
    assert sent.sids.sids[:2] == [A, B]
    assert sent.sids.sids[2:] == [IPv6Address("::")] * 14
    # VPP takes the weight from sids.weight (the top-level weight is ignored).
    assert sent.sids.weight == 3
    # srv6_sid_list on the wire: num_sids (u8), weight (u32 big-endian), 16 addresses.
    sid_list = data[-(1 + 4 + 16 * 16) :]
    assert sid_list[0] == 2
    assert struct.unpack(">I", sid_list[1:5]) == (3,)
    assert sid_list[5:21] == A.packed and sid_list[21:37] == B.packed


def test_policy_with_two_lists_is_one_add_and_one_mod(client: Any) -> None:
    policy = red(SegmentList((A,), 2), SegmentList((B,), 1))
    steps = sent_lists(client, sr_codec.policy_create(policy))
    first, second = sorted(policy.segment_lists)
    assert steps == [
        ("sr_policy_add", 0, first.segments, first.weight, 0),
        ("sr_policy_mod", sr_codec.SR_POLICY_OP_ADD, second.segments, second.weight, 0),
    ]


def test_insert_mode_policy_is_sent_without_encap(client: Any) -> None:
    policy = SrPolicy(BSID, (SegmentList((A, B)),), mode=EncapMode.INSERT)
    _, sent = encode(client, sr_codec.policy_create(policy)[0])
    assert sent.is_encap is False


def test_replaced_list_is_added_before_the_old_one_is_deleted_by_sl_index(client: Any) -> None:
    state = held((SegmentList((A,)), 11), (SegmentList((B,)), 12))
    new = red(SegmentList((A,)), SegmentList((C,)))
    steps = sent_lists(client, sr_codec.policy_requests(new, state, None))
    assert steps == [
        ("sr_policy_mod", sr_codec.SR_POLICY_OP_ADD, (C,), 1, 0),
        ("sr_policy_mod", sr_codec.SR_POLICY_OP_DEL, (), 1, 12),
    ]


def test_last_list_is_never_removed_first(client: Any) -> None:
    # [A] → [B]: VPP refuses to delete a policy's only list, so B goes in first.
    state = held((SegmentList((A,)), 4))
    steps = sent_lists(client, sr_codec.policy_requests(red(SegmentList((B,))), state, None))
    assert steps == [
        ("sr_policy_mod", sr_codec.SR_POLICY_OP_ADD, (B,), 1, 0),
        ("sr_policy_mod", sr_codec.SR_POLICY_OP_DEL, (), 1, 4),
    ]


def test_weight_change_is_a_mod_of_that_list_in_place(client: Any) -> None:
    state = held((SegmentList((A,), 1), 3), (SegmentList((B,), 1), 8))
    new = red(SegmentList((A,), 1), SegmentList((B,), 5))
    steps = sent_lists(client, sr_codec.policy_requests(new, state, None))
    assert steps == [("sr_policy_mod", sr_codec.SR_POLICY_OP_MOD, (), 5, 8)]


def test_many_lists_changed_adds_all_then_modifies_then_deletes(client: Any) -> None:
    state = held((SegmentList((A,)), 1), (SegmentList((B,)), 2), (SegmentList((C,)), 3))
    d, e = IPv6Address("fcbb:bb00:5::1:1"), IPv6Address("fcbb:bb00:6::1:1")
    new = red(SegmentList((A,), 4), SegmentList((d,)), SegmentList((e,)))
    steps = sent_lists(client, sr_codec.policy_requests(new, state, None))
    operations = [step[1] for step in steps]
    assert operations == [1, 1, 3, 2, 2]
    assert {step[4] for step in steps if step[1] == 2} == {2, 3}


def test_duplicate_lists_are_deleted_by_their_own_sl_index(client: Any) -> None:
    state = held((SegmentList((A,)), 1), (SegmentList((A,)), 2))
    steps = sent_lists(client, sr_codec.policy_requests(red(SegmentList((A,))), state, None))
    assert steps == [("sr_policy_mod", sr_codec.SR_POLICY_OP_DEL, (), 1, 1)]


def test_unchanged_policy_sends_nothing() -> None:
    state = held((SegmentList((A,)), 1), (SegmentList((B,), 2), 2))
    new = red(SegmentList((A,)), SegmentList((B,), 2))
    assert sr_codec.policy_requests(new, state, None) == []


def test_mode_change_deletes_and_recreates(client: Any) -> None:
    state = VppPolicy(BSID, False, 0, (VppList((A,), 1, 1),))
    requests = sr_codec.policy_requests(red(SegmentList((A,))), state, None)
    assert [r.name for r in requests] == ["sr_policy_del", "sr_policy_add"]
    for request in requests:
        encode(client, request)


def test_lists_built_with_another_encap_source_are_rebuilt_new_first(client: Any) -> None:
    state = held((SegmentList((A,)), 1), (SegmentList((B,)), 2), encap_src="2001:db8::1")
    new = red(SegmentList((A,)), SegmentList((B,)))
    steps = sent_lists(client, sr_codec.policy_requests(new, state, IPv6Address("2001:db8::2")))
    assert [s[1] for s in steps] == [1, 1, 2, 2]
    assert [s[4] for s in steps[2:]] == [1, 2]
    assert sr_codec.policy_requests(new, state, IPv6Address("2001:db8::1")) == []


def test_policy_with_its_own_source_uses_the_v2_messages(client: Any) -> None:
    policy = red(SegmentList((A,)), SegmentList((B,)), source="2001:db8::9")
    add, mod = sr_codec.policy_create(policy)
    assert (add.name, mod.name) == ("sr_policy_add_v2", "sr_policy_mod_v2")
    _, sent = encode(client, add)
    assert sent.encap_src == IPv6Address("2001:db8::9")
    _, sent = encode(client, mod)
    assert sent.encap_src == IPv6Address("2001:db8::9")


def test_a_policy_with_affinity_is_made_in_the_affinity_table(client: Any) -> None:
    affine = replace(red(SegmentList((A,)), SegmentList((B,))), affinity=600)
    add, mod = sr_codec.policy_create(affine)
    _, sent = encode(client, add)
    assert sent.fib_table == vpp_affinity.AFFINITY_TABLE
    _, sent = encode(client, mod)  # a list added to it names no table (VPP ignores it)
    assert sent.fib_table == 0
    _, sent = encode(client, sr_codec.policy_create(red(SegmentList((A,))))[0])
    assert sent.fib_table == 0


def test_any_affinity_is_held_as_one_and_on_off_recreates(client: Any) -> None:
    plain = red(SegmentList((A,)), SegmentList((B,)))
    short, long = replace(plain, affinity=1), replace(plain, affinity=10800)
    assert sr_codec.held_policy(short) == sr_codec.held_policy(long) != plain
    assert sr_codec.held_policy(plain) is plain
    in_main = held((SegmentList((A,)), 1), (SegmentList((B,)), 2))
    in_affinity = replace(in_main, fib_table=vpp_affinity.AFFINITY_TABLE)
    # VPP reads back what as_held says, whatever the timeout asked.
    assert sr_codec.policy_as_model(in_affinity, None) == sr_codec.held_policy(long)
    assert sr_codec.policy_as_model(in_main, None) == plain
    # A new timeout is no change; on ↔ off deletes and re-creates in the other table.
    assert sr_codec.policy_requests(short, in_affinity, None) == []
    for new, state, table in [
        (long, in_main, vpp_affinity.AFFINITY_TABLE),
        (plain, in_affinity, 0),
    ]:
        requests = sr_codec.policy_requests(new, state, None)
        assert [r.name for r in requests] == ["sr_policy_del", "sr_policy_add", "sr_policy_mod"]
        _, sent = encode(client, requests[1])
        assert sent.fib_table == table
    # A table that is neither: something we never made, rebuilt.
    elsewhere = replace(in_main, fib_table=7)
    assert sr_codec.policy_as_model(elsewhere, None) not in (plain, sr_codec.held_policy(long))


def test_the_affinity_table_is_made_hashing_the_source_and_looking_up_table_0(
    client: Any,
) -> None:
    add, flow_hash, route = (encode(client, r)[1] for r in vpp_affinity.setup())
    assert add.is_add is True and add.table.table_id == vpp_affinity.AFFINITY_TABLE
    assert add.table.is_ip6 is True and add.table.name == vpp_affinity.AFFINITY_TABLE_NAME
    assert flow_hash.table_id == vpp_affinity.AFFINITY_TABLE
    assert flow_hash.af == enum(client, "vl_api_address_family_t", "ADDRESS_IP6")
    assert flow_hash.flow_hash_config == enum(
        client, "vl_api_ip_flow_hash_config_t", "IP_API_FLOW_HASH_SRC_IP"
    )
    assert route.route.table_id == vpp_affinity.AFFINITY_TABLE
    assert route.route.prefix == ipaddress.ip_network("::/0")
    (path,) = route.route.paths[: route.route.n_paths]
    # A deaggregation: neither next hop nor interface, the table to look up in.
    assert path.sw_if_index == codec_base.INVALID_INDEX and path.table_id == 0
    assert int(path.type) == fib_codec.FIB_PATH_TYPE_NORMAL
    assert fib_codec.path_nexthop(path) is None
    _, gone = encode(client, vpp_affinity.teardown())
    assert gone.is_add is False and gone.table.table_id == vpp_affinity.AFFINITY_TABLE
    # No model object may name the table.
    with pytest.raises(InvalidObject, match="own"):
        fib_codec.vpp_table(vpp_affinity.AFFINITY_TABLE)


def test_which_changes_need_the_affinity_table_and_which_may_empty_it() -> None:
    plain = red(SegmentList((A,)))
    affine = replace(plain, affinity=60)
    assert vpp_affinity.needs_table([Change(Op.ADD, new=affine)])
    assert vpp_affinity.needs_table([Change(Op.REPLACE, old=plain, new=affine)])
    assert not vpp_affinity.needs_table([Change(Op.REPLACE, old=affine, new=affine)])
    assert not vpp_affinity.needs_table([Change(Op.ADD, new=plain)])
    assert vpp_affinity.may_empty_table([Change(Op.DELETE, old=affine)])
    assert vpp_affinity.may_empty_table([Change(Op.REPLACE, old=affine, new=plain)])
    assert not vpp_affinity.may_empty_table([Change(Op.REPLACE, old=affine, new=affine)])
    assert not vpp_affinity.may_empty_table([Change(Op.DELETE, old=plain)])


def test_policy_delete_names_the_bsid(client: Any) -> None:
    _, sent = encode(client, sr_codec.policy_del(BSID))
    assert sent.bsid_addr == BSID


def test_policy_details_with_sl_index_decode_into_the_model(client: Any) -> None:
    def sid_list(sl: SegmentList, index: int) -> dict[str, Any]:
        padded = sr_codec.sid_list(sl.segments, sl.weight, "test")
        return {**padded, "sl_index": index}

    lists = [SegmentList((A,), 2), SegmentList((B, C), 1)]
    reply = details(
        client,
        "sr_policies_with_sl_index_details",
        bsid=BSID,
        is_spray=False,
        is_encap=True,
        fib_table=0,
        num_sid_lists=2,
        sid_lists=[sid_list(lists[0], 7), sid_list(lists[1], 9)],
    )
    v2 = details(
        client,
        "sr_policies_v2_details",
        bsid=BSID,
        encap_src=IPv6Address("2001:db8::1"),
        type=0,
        is_encap=True,
        fib_table=0,
        num_sid_lists=0,
        sid_lists=[],
    )
    state = sr_codec.decode_policy(reply, v2)
    assert [(sl.segments, sl.weight, sl.sl_index) for sl in state.lists] == [
        ((A,), 2, 7),
        ((B, C), 1, 9),
    ]
    node = IPv6Address("2001:db8::1")
    assert sr_codec.policy_as_model(state, node) == red(*lists)
    # Built with another source than the node's: the model says so (reconcile rebuilds).
    other = sr_codec.policy_as_model(state, IPv6Address("2001:db8::2"))
    assert other is not None and other.encap_source == node


# --- steering, routes, encap source, tables --------------------------------------------


@pytest.mark.parametrize(
    ("prefix", "traffic_type", "family"),
    [("fd00:96::1/128", sr_codec.SR_STEER_IPV6, 1), ("10.96.0.1/32", sr_codec.SR_STEER_IPV4, 0)],
)
def test_steering_encodes_prefix_family_and_reads_back(
    client: Any, prefix: str, traffic_type: int, family: int
) -> None:
    st = Steering(prefix, BSID)
    data, sent = encode(client, sr_codec.steering(st))
    assert int(sent.traffic_type) == traffic_type
    assert sent.prefix == ipaddress.ip_network(prefix)
    assert sent.table_id == 0 and sent.is_del is False and sent.bsid_addr == BSID
    network = ipaddress.ip_network(prefix)
    # prefix: af (u8), the 16-byte address union, then len (u8).
    start = 2 + 4 + 4 + 1 + 16 + 4 + 4
    assert data[start] == family
    packed = network.network_address.packed
    assert data[start + 1 : start + 1 + len(packed)] == packed
    assert data[start + 17] == network.prefixlen
    _, removed = encode(client, sr_codec.steering(st, delete=True))
    assert removed.is_del is True
    reply = details(
        client,
        "sr_steering_pol_details",
        traffic_type=traffic_type,
        fib_table=0,
        prefix=network,
        sw_if_index=0,
        bsid=BSID,
    )
    assert sr_codec.decode_steering(reply) == st


def test_steering_in_a_pod_table_names_the_vpp_table(client: Any) -> None:
    _, sent = encode(client, sr_codec.steering(Steering("fd00:96::1/128", BSID, table=30)))
    assert sent.table_id == 30


@pytest.mark.parametrize(
    "route",
    [
        Route("fcbb:bb00:2::/48", via="2001:db8:0:1::2"),
        Route("fd00:10:0:2::/64", via="fe80::2", interface="host-eth1"),
        Route("fd00:96::7/128", kind=RouteKind.PROHIBIT),
        Route("10.96.0.7/32", kind=RouteKind.PROHIBIT),
        Route("fd00:96::8/128", kind=RouteKind.UNREACHABLE),
        Route("fd00:96::9/128", kind=RouteKind.BLACKHOLE, table=40),
        Route("fd00:96::a/128", kind=RouteKind.PROHIBIT, table=40),
        Route("10.96.0.10/32", kind=RouteKind.UNREACHABLE, table=41),
        Route("10.128.2.0/24", via="192.0.2.1"),
    ],
    ids=str,
)
def test_route_encodes_its_paths_and_reads_back(client: Any, route: Route) -> None:
    _, sent = encode(client, fib_codec.route_add(route, ifindex))
    assert sent.is_add is True and sent.is_multipath is False
    assert sent.route.prefix == route.prefix
    assert sent.route.table_id == (0 if route.table == MAIN_TABLE else route.table)
    paths = list(sent.route.paths)
    assert sent.route.n_paths == len(paths)
    assert all(len(path.label_stack) == 16 for path in paths)
    ipv6 = route.prefix.version == 6 if route.via is None else route.via.version == 6
    assert {int(path.proto) for path in paths} == {
        fib_codec.FIB_PATH_NH_PROTO_IP6 if ipv6 else fib_codec.FIB_PATH_NH_PROTO_IP4
    }
    types = [(int(path.type), int(path.preference)) for path in paths]
    if route.kind in fib_codec.REJECT_KINDS:
        # The ICMP path forwards; a DROP of a worse preference keeps VPP 25.10 from taking
        # the route for an import from local0's table (vpp_fib_codec's docstring).
        kind = fib_codec.ROUTE_PATH_TYPES[route.kind]
        assert types == [(kind, 0), (fib_codec.FIB_PATH_TYPE_DROP, 1)]
    else:
        assert len(types) == 1 and types[0][1] == 0
    # ip_route_v2_details, as VPP reports the route (its path list is sorted: either order).
    reply = details(
        client,
        "ip_route_v2_details",
        route={
            "table_id": sent.route.table_id,
            "stats_index": 5,
            "prefix": route.prefix,
            "n_paths": len(paths),
            "src": fib_codec.FIB_SOURCE_API,
            "paths": [
                fib_codec.fib_path(
                    int(path.type),
                    ipv6=ipv6,
                    nexthop=route.via,
                    sw_if_index=int(path.sw_if_index),
                    preference=int(path.preference),
                )
                for path in reversed(paths)
            ],
        },
    )
    assert fib_codec.decode_route(reply, ifname) == route


def test_route_delete_sends_no_path(client: Any) -> None:
    _, sent = encode(client, fib_codec.route_del(Route("fd00:96::7/128", kind=RouteKind.PROHIBIT)))
    assert sent.is_add is False and sent.route.n_paths == 0


def test_multipath_route_reads_back_as_something_to_replace(client: Any) -> None:
    path = fib_codec.fib_path(
        fib_codec.FIB_PATH_TYPE_NORMAL, ipv6=True, nexthop=IPv6Address("2001:db8::2")
    )
    reply = details(
        client,
        "ip_route_v2_details",
        route={
            "table_id": 0,
            "stats_index": 0,
            "prefix": ipaddress.ip_network("fcbb:bb00:2::/48"),
            "n_paths": 2,
            "src": fib_codec.FIB_SOURCE_API,
            "paths": [path, path],
        },
    )
    route = fib_codec.decode_route(reply, ifname)
    assert route is not None and route != Route("fcbb:bb00:2::/48", via="2001:db8::2")


def test_encap_source_and_tables(client: Any) -> None:
    _, sent = encode(client, sr_codec.encap_source(IPv6Address("2001:db8::1")))
    assert sent.encaps_source == IPv6Address("2001:db8::1")
    _, sent = encode(client, sr_codec.encap_source(None))
    assert sent.encaps_source == IPv6Address("::")
    _, sent = encode(client, fib_codec.table_add(20, True))
    assert sent.is_add is True and sent.table.table_id == 20 and sent.table.is_ip6 is True
    assert sent.table.name.startswith(fib_codec.TABLE_NAME_PREFIX)
    assert fib_codec.vpp_table(MAIN_TABLE) == 0 and fib_codec.model_table(0) == MAIN_TABLE
    answer = "SR encaps source addr = 2001:db8::1"
    assert sr_codec.parse_encap_source(answer) == IPv6Address("2001:db8::1")
    assert sr_codec.parse_encap_source("SR encaps source addr = ::") is None


# --- pods -------------------------------------------------------------------------------


POD = PodAttachment(
    interface="s6pod0",
    pod="default/web-0",
    netns="/var/run/netns/cni-1234",
    addresses=frozenset({"fd00:10:0:1::3/128", "10.128.1.3/32"}),
)


def test_af_packet_port_keeps_checksum_offload_off_and_a_mac_of_its_own(client: Any) -> None:
    _, sent = encode(client, if_codec.af_packet_create("s6pod0"))
    assert sent.host_if_name == "s6pod0"
    assert int(sent.mode) == if_codec.AF_PACKET_MODE_ETHERNET
    assert int(sent.flags) == if_codec.AF_PACKET_FLAG_QDISC_BYPASS
    # A MAC of its own, the same after VPP restarts (the pods' neighbour caches hold it).
    assert sent.use_random_hw_addr is False
    assert str(sent.hw_addr) == if_codec.port_mac("s6pod0") != if_codec.port_mac("s6pod1")
    assert if_codec.port_mac("s6pod0") != if_codec.tap_host_mac("s6pod0")
    _, sent = encode(client, if_codec.af_packet_delete("s6pod0"))
    assert sent.host_if_name == "s6pod0"


def test_tap_is_created_into_the_pod_namespace_addressed(client: Any) -> None:
    request = if_codec.tap_create(POD, IPv6Address("fe80::1"), IPv4Address("10.128.1.1"))
    _, sent = encode(client, request)
    assert sent.host_namespace_set and sent.host_namespace == POD.netns
    assert sent.host_if_name_set and sent.host_if_name == "eth0"
    assert sent.host_ip6_prefix_set
    assert sent.host_ip6_prefix == ipaddress.IPv6Interface("fd00:10:0:1::3/128")
    assert sent.host_ip6_gw_set and sent.host_ip6_gw == IPv6Address("fe80::1")
    assert sent.host_ip4_prefix == ipaddress.IPv4Interface("10.128.1.3/32")
    assert sent.host_ip4_gw_set and sent.host_ip4_gw == IPv4Address("10.128.1.1")
    assert sent.tag == "srv6ctl:pod:s6pod0"


def test_pod_port_configuration_messages(client: Any) -> None:
    requests = [
        if_codec.interface_tag(7, if_codec.pod_tag("s6pod0")),
        if_codec.interface_table(7, 30, True),
        if_codec.interface_ip6_enable(7),
        if_codec.interface_link_local(7, IPv6Address("fe80::1")),
        if_codec.interface_up(7),
        if_codec.interface_unnumbered(7, 2),
        if_codec.interface_address(2, ipaddress.IPv4Interface("10.128.1.1/32")),
        if_codec.loopback_create("gw"),
        if_codec.tap_delete(7, "s6pod0"),
    ]
    decoded = [encode(client, r)[1] for r in requests]
    assert decoded[0].tag == "srv6ctl:pod:s6pod0" and decoded[0].is_add
    assert decoded[1].vrf_id == 30 and decoded[1].is_ipv6
    assert decoded[3].ip == IPv6Address("fe80::1")
    assert int(decoded[4].flags) == if_codec.IF_STATUS_ADMIN_UP
    # Unnumbered: the pod port borrows the gateway loopback's address.
    assert decoded[5].sw_if_index == 2 and decoded[5].unnumbered_sw_if_index == 7
    assert if_codec.pod_of_tag(decoded[0].tag) == "s6pod0"
    assert if_codec.pod_of_tag("someone-else") is None


def test_pod_host_route_goes_through_the_port_to_the_pod(client: Any) -> None:
    _, sent = encode(client, if_codec.pod_route(POD6, 7, 0, "s6pod0"))
    (path,) = sent.route.paths
    assert sent.route.prefix == ipaddress.ip_network(f"{POD6}/128")
    assert path.sw_if_index == 7 and path.nh.address.ip6 == POD6
    _, sent = encode(client, if_codec.pod_route(IPv4Address("10.128.1.3"), 7, 0, "s6pod0"))
    assert int(sent.route.paths[0].proto) == fib_codec.FIB_PATH_NH_PROTO_IP4
    _, sent = encode(client, if_codec.pod_route(POD6, 7, 0, "s6pod0", delete=True))
    assert sent.is_add is False and sent.route.n_paths == 0


# --- a whole plan -----------------------------------------------------------------------


def test_a_service_losing_its_last_endpoint_becomes_a_prohibit_route(client: Any) -> None:
    from srv6ctl.dataplane.model import NodeConfig

    cluster_ip = ipaddress.ip_network("fd00:96::10/128")
    before = NodeConfig(
        policies=frozenset({red(SegmentList((A,)))}),
        steerings=frozenset({Steering(cluster_ip, BSID)}),
    )
    after = NodeConfig(routes=frozenset({Route(cluster_ip, kind=RouteKind.PROHIBIT)}))
    requests = [
        r
        for change in plan(after, before)
        for r in vpp_changes.change_requests(change, ifindex, {}, None)
    ]
    names = [r.name for r in requests]
    # The steering goes before the reject route takes its prefix, the policy after both.
    assert names == ["sr_steering_add_del", "ip_route_add_del", "sr_policy_del"]
    decoded = [encode(client, r)[1] for r in requests]
    assert decoded[0].is_del is True
    assert int(decoded[1].route.paths[0].type) == fib_codec.FIB_PATH_TYPE_ICMP_PROHIBIT


def test_a_local_sid_replace_is_delete_then_add(client: Any) -> None:
    old = EndDX6("fcbb:bb00:1::1:3", nexthop=POD6, interface="s6pod0")
    new = EndDX6("fcbb:bb00:1::1:3", nexthop=POD6, interface="host-eth1")
    requests = vpp_changes.change_requests(Change(Op.REPLACE, old, new), ifindex, {}, None)
    decoded = [encode(client, r)[1] for r in requests]
    assert [d.is_del for d in decoded] == [True, False]
    assert decoded[1].sw_if_index == 1


# --- the fast packers of the bulk messages ---------------------------------------------


def test_fast_packers_are_written_for_these_definitions(client: Any) -> None:
    for name, (crc, _) in vpp_packers.FAST_PACKERS.items():
        assert client.messages[name].crc == crc, name


def _bulk_requests() -> Iterator[Request]:
    lists = [SegmentList((A,), 3), SegmentList((B, C), 1), SegmentList(tuple([C] * 16), 7)]
    for bsid in (BSID, IPv6Address("fcbb:bb00::ffff:ffff")):
        for first in lists:
            yield sr_codec.policy_add(red(first), first)
            yield sr_codec.list_add(SrPolicy(bsid, (first,), mode=EncapMode.ENCAP_RED), first)
        held = VppList((A,), 3, 0xFFFF_FFFE)
        yield sr_codec.list_del(bsid, held)
        yield sr_codec.list_weight(bsid, held, 9)
        for prefix in ("fd00:96::10/128", "10.96.0.10/32", "fd00:96::/64", "0.0.0.0/0"):
            for table in (MAIN_TABLE, 77):
                yield sr_codec.steering(Steering(prefix, bsid, table))
                yield sr_codec.steering(Steering(prefix, bsid, table), delete=True)


def test_fast_packers_produce_vpp_papis_bytes(client: Any) -> None:
    count = 0
    for request in _bulk_requests():
        expected, _ = encode(client, request)
        _, packer = vpp_packers.FAST_PACKERS[request.name]
        header = struct.pack(">HII", 1, 0, 9)  # as encode() packs it
        assert header + packer(request.fields) == expected, request.describe()
        count += 1
    assert count > 40


def test_pod_neighbour_is_static_and_a_tap_gets_a_fixed_mac(client: Any) -> None:
    mac = if_codec.tap_host_mac("s6pod0")
    assert mac == if_codec.tap_host_mac("s6pod0") != if_codec.tap_host_mac("s6pod1")
    assert int(mac.split(":")[0], 16) & 0x03 == 0x02  # locally administered, unicast
    _, sent = encode(client, if_codec.pod_neighbour(7, POD6, mac))
    assert sent.is_add is True
    assert int(sent.neighbor.flags) == if_codec.IP_NEIGHBOR_FLAG_STATIC
    assert enum(client, "vl_api_ip_neighbor_flags_t", "IP_API_NEIGHBOR_FLAG_STATIC") == 1
    assert str(sent.neighbor.mac_address) == mac
    assert sent.neighbor.ip_address == POD6 and sent.neighbor.sw_if_index == 7
    _, sent = encode(client, if_codec.tap_create(POD, IPv6Address("fe80::1"), None))
    assert sent.host_mac_addr_set and str(sent.host_mac_addr) == if_codec.tap_host_mac("s6pod0")


# --- memif pods -------------------------------------------------------------------------


def test_a_memif_annotation_becomes_a_memif_port_on_the_pods_own_socket(client: Any) -> None:
    from srv6ctl.dataplane.model import MEMIF, memif_socket_path, pod_interface_fields
    from srv6ctl.sources.convert import pod_from_json
    from srv6ctl.state import POD_INTERFACE_ANNOTATION

    manifest = {
        "metadata": {
            "name": "cnf-0",
            "namespace": "default",
            "uid": "0b5e-11",
            "annotations": {POD_INTERFACE_ANNOTATION: "memif"},
        },
        "spec": {"nodeName": "n1"},
    }
    pod = pod_from_json(manifest)
    assert pod.interface_type == MEMIF
    fields = pod_interface_fields(pod.interface_type, pod.uid)
    assert fields == {
        "interface_type": MEMIF,
        "memif_socket": "/run/srv6ctl/memif/0b5e-11/memif.sock",
    }
    assert pod_interface_fields("", pod.uid) == {} == pod_interface_fields("sriov", pod.uid)
    with pytest.raises(ValueError):
        memif_socket_path("../x")
    plain = pod_from_json({**manifest, "metadata": {**manifest["metadata"], "annotations": {}}})
    assert plain.interface_type == ""

    cnf = PodAttachment("s6cnf0", "default/cnf-0", "", addresses=POD.addresses, **fields)
    _, sent = encode(client, if_codec.memif_socket_add(cnf.memif_socket))
    assert sent.is_add is True and sent.socket_id == codec_base.INVALID_INDEX  # VPP picks the id
    assert sent.socket_filename == cnf.memif_socket
    _, sent = encode(client, if_codec.memif_create(7, cnf))
    assert (int(sent.role), int(sent.mode)) == (if_codec.MEMIF_ROLE_MASTER, if_codec.MEMIF_MODE_IP)
    assert sent.socket_id == 7 and sent.id == 0 and sent.rx_queues == sent.tx_queues == 1
    _, sent = encode(client, if_codec.memif_delete(12, "s6cnf0"))
    assert sent.sw_if_index == 12
    _, sent = encode(client, if_codec.memif_socket_del(7, cnf.memif_socket))
    assert sent.is_add is False and sent.socket_id == 7
    reply = details(client, "memif_socket_filename_details", socket_id=7, socket_filename="/x")
    assert (reply.socket_id, reply.socket_filename) == (7, "/x")


def test_only_a_pod_ports_own_host_routes_are_left_out_of_the_routes(client: Any) -> None:
    from srv6ctl.dataplane.vpp_pods import is_pod_host_route as _is_pod_host_route

    port = INTERFACES["s6pod0"]

    def route(prefix: str, nexthop: str) -> Any:
        path = fib_codec.fib_path(
            fib_codec.FIB_PATH_TYPE_NORMAL,
            ipv6=True,
            nexthop=IPv6Address(nexthop),
            sw_if_index=port,
        )
        reply = details(
            client,
            "ip_route_v2_details",
            route={
                "table_id": 10,
                "stats_index": 0,
                "prefix": ipaddress.ip_network(prefix),
                "n_paths": 1,
                "src": fib_codec.FIB_SOURCE_API,
                "paths": [path],
            },
        )
        return reply.route

    assert _is_pod_host_route(route(f"{POD6}/128", str(POD6)), {port})
    # An operator's route through the pod's port (to its link-local address) is a Route.
    assert not _is_pod_host_route(route("2001:db8:77::5/128", "fe80::1:2"), {port})
    assert not _is_pod_host_route(route(f"{POD6}/128", str(POD6)), {port + 1})
