"""`Rule`s as sessions of VPP classifier tables on the input ACL arc, both ways (no I/O).

Why the classifier and not ABF: an ABF policy attached to an interface costs VPP a rebuild
of the interface's whole ACL lookup context, so attaching N policies costs about N^3
(4,000 one-rule policies: 90 s, README). A classifier table is a hash of masked packet
bytes: adding or removing a session is O(1) and touches nothing else, and a packet costs
one hash lookup per table of the chain, whatever the number of sessions.

- Where. VPP's input ACL (`input_acl_set_interface`: the ip4-inacl / ip6-inacl nodes on
  the unicast input arcs, vnet/ip/ip_in_out_acl.c) runs one chain of tables per family
  and interface. A session whose action is SET_IP6_FIB_INDEX / SET_IP4_FIB_INDEX (with
  its hit next left at ~0, "go on") sets the packet's sw_if_index[VLIB_TX] to that FIB,
  and ip6/ip4-lookup then looks the packet up there: the rule's "lookup T". A packet no
  table matches goes on with its own FIB, as ip-rule(8) passes it on.
- Shapes. A table matches one mask, so rules of one *shape* — family, source and
  destination prefix lengths, whether a protocol and a destination port are matched —
  share a table; a chain links the shapes (next_table_index). Rules of one plan never
  overlap (model.Rule), so the order of the chain only costs time, never a decision.
  NodePorts are one shape per family, and a VIP's source ranges one per prefix length.
- Bytes. Matched from the IP header (current_data_flag 1: the buffer's current data on
  the unicast arc), in 16-byte vectors: IPv6 bytes 0-47 (next header at 6, source 8-23,
  destination 24-39, the TCP/UDP/SCTP destination port at 42-43), IPv4 bytes 0-31
  (protocol at 9, source 12-15, destination 16-19, the port at 22-23). A port is read
  where it is without options or extension headers, so a port's shape also matches IPv4's
  version and header length (0x45) and a zero fragment offset (a later fragment has no
  ports), and IPv6's next header is the protocol's: an IPv6 packet with extension headers
  before its TCP/UDP header, or an IPv4 one with options, misses the rule and follows the
  main table. SCTP ports are where TCP's are, so SCTP rules with a port work (not so with
  ABF, whose ACL plugin reads TCP and UDP ports only).
- Naming. Classifier tables have no tag. Ours are told by their miss_next_index,
  `CHAIN_MARK`: VPP reads it only at the end of a chain, and any value past the node's
  next nodes means "go on" (`miss_next_index < n_next_nodes ? ... : feature next`), so
  the mark changes nothing for packets. A session's FIB is not in VPP's session dump
  (`classify_session_details` has no action or metadata), so each session also carries
  the rule's VPP table in its opaque_index, written in the same message as the action.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from srv6ctl.dataplane.model import IPNetwork, Rule
from srv6ctl.dataplane.vpp_api import Request
from srv6ctl.dataplane.vpp_codec_base import INVALID_INDEX
from srv6ctl.dataplane.vpp_fib_codec import model_table, vpp_table
from srv6ctl.dataplane.vpp_rule_codec import IP_PROTOCOLS, PROTOCOL_NAMES

CLASSIFY_MESSAGES = (
    "classify_add_del_table",
    "classify_add_del_session",
    "classify_table_ids",
    "classify_table_info",
    "classify_session_dump",
    "classify_table_by_interface",
    "input_acl_set_interface",
)
CHAIN_MARK = 0x5336_C1A5  # "S6": our tables' miss_next_index (module docstring)
# vl_api_classify_action_t
ACTION_NONE = 0
ACTION_SET_IP4_FIB_INDEX = 1
ACTION_SET_IP6_FIB_INDEX = 2
USE_CURRENT_DATA = 1  # CLASSIFY_FLAG_USE_CURR_DATA: match from the IP header, not b->data
VECTOR = 16  # bytes of one u32x4
# Sized once, when the table is made (VPP cannot grow a table's heap): 64 MiB of heap,
# mapped on use, holds hundreds of thousands of our 80-byte entries; 32,768 buckets keep
# a 10,000-rule shape at about one entry per bucket (two fit in one bucket's page).
TABLE_BUCKETS = 32_768
TABLE_MEMORY = 64 << 20

# Where the fields are, from the IP header: (source, destination, protocol, port) offsets.
_IP6 = (8, 24, 6, 42)
_IP4 = (12, 16, 9, 22)
_VECTORS = {6: 3, 4: 2}


@dataclass(frozen=True, order=True)
class Shape:
    """What a table's mask matches: rules of one shape share a table."""

    version: int  # 4 or 6
    source_len: int  # 0: any source (a rule without one)
    destination_len: int
    protocol: bool
    port: bool

    @property
    def ipv6(self) -> bool:
        return self.version == 6

    @property
    def width(self) -> int:
        """Bytes matched (skip_n_vectors is 0)."""
        return _VECTORS[self.version] * VECTOR

    def mask(self) -> bytes:
        source, destination, protocol, port = _IP6 if self.ipv6 else _IP4
        size = 16 if self.ipv6 else 4
        mask = bytearray(self.width)
        mask[source : source + size] = _prefix_mask(self.source_len, size)
        mask[destination : destination + size] = _prefix_mask(self.destination_len, size)
        if self.protocol:
            mask[protocol] = 0xFF
        if self.port:
            mask[port : port + 2] = b"\xff\xff"
            if not self.ipv6:
                mask[0] = 0xFF  # version 4, header length 5: no options before the port
                mask[6:8] = b"\x1f\xff"  # fragment offset 0: the port is in this packet
        return bytes(mask)

    def __str__(self) -> str:
        what = f"ip{self.version} from /{self.source_len} to /{self.destination_len}"
        return what + (" proto" if self.protocol else "") + (" port" if self.port else "")


def _prefix_mask(length: int, size: int) -> bytes:
    return (((1 << length) - 1) << (size * 8 - length)).to_bytes(size, "big")


def shape_of(rule: Rule) -> Shape:
    source = rule.source.prefixlen if rule.source is not None else 0
    return Shape(
        rule.destination.version,
        source,
        rule.destination.prefixlen,
        bool(rule.protocol),
        bool(rule.port),
    )


def shape_of_mask(mask: bytes, skip: int) -> Shape | None:
    """The shape a table's mask matches, if it is one we make; else None."""
    for version in (6, 4):
        if skip != 0 or len(mask) != _VECTORS[version] * VECTOR:
            continue
        source, destination, protocol, port = _IP6 if version == 6 else _IP4
        size = 16 if version == 6 else 4
        lengths = [_prefix_len(mask[at : at + size]) for at in (source, destination)]
        if None in lengths:
            return None
        shape = Shape(version, lengths[0] or 0, lengths[1] or 0, mask[protocol] == 0xFF,
                      mask[port : port + 2] == b"\xff\xff")  # fmt: skip
        return shape if shape.mask() == mask else None
    return None


def _prefix_len(field: bytes) -> int | None:
    value, bits = int.from_bytes(field, "big"), len(field) * 8
    length = bits - (~value & ((1 << bits) - 1)).bit_length()
    return length if _prefix_mask(length, len(field)) == field else None


def match_of(rule: Rule) -> bytes:
    """The packet bytes (under its shape's mask) that a rule's session matches."""
    shape = shape_of(rule)
    source, destination, protocol, port = _IP6 if shape.ipv6 else _IP4
    size = 16 if shape.ipv6 else 4
    match = bytearray(shape.width)
    if rule.source is not None:
        match[source : source + size] = rule.source.network_address.packed
    match[destination : destination + size] = rule.destination.network_address.packed
    if rule.protocol:
        match[protocol] = IP_PROTOCOLS[rule.protocol]
    if rule.port:
        match[port : port + 2] = rule.port.to_bytes(2, "big")
        if not shape.ipv6:
            match[0] = 0x45
    return bytes(match)


def decode_session(match: bytes, table_id: int, shape: Shape) -> Rule | None:
    """A session of one of our tables as the Rule it encodes (None: not a shape we make).

    The rule's table is the session's opaque_index (VPP's table id: the dump has no
    metadata, module docstring)."""
    source, destination, protocol, port = _IP6 if shape.ipv6 else _IP4
    size = 16 if shape.ipv6 else 4
    if len(match) != shape.width:
        return None
    name = PROTOCOL_NAMES.get(match[protocol]) if shape.protocol else ""
    if name is None or (shape.protocol and not name):
        return None

    def network(at: int, length: int) -> IPNetwork:
        address = ipaddress.ip_address(bytes(match[at : at + size]))
        return ipaddress.ip_network((address, length), strict=False)

    try:
        vpp_table(model_table(table_id))  # not one a rule can name (the affinity table)
        return Rule(
            network(destination, shape.destination_len),
            model_table(table_id),  # table 0 is main, which no rule names: None
            name,
            int.from_bytes(match[port : port + 2], "big") if shape.port else 0,
            network(source, shape.source_len) if shape.source_len else None,
        )
    except ValueError:  # InvalidObject is one
        return None


# --- requests -----------------------------------------------------------------------------


def _table(index: int, shape: Shape, is_add: bool, what: str, **fields: Any) -> Request:
    """A classify_add_del_table of one shape: what every such message gives (the table,
    its mask) and `fields`, the rest."""
    return Request(
        "classify_add_del_table",
        {
            "is_add": is_add,
            "del_chain": False,
            "table_index": index,
            "match_n_vectors": _VECTORS[shape.version],
            "mask_len": shape.width,
            "mask": shape.mask(),
            **fields,
        },
        what,
    )


def table_add(shape: Shape, next_table: int = INVALID_INDEX) -> Request:
    """A new table for one shape (its index comes back in the reply), chained to
    `next_table` and marked ours."""
    return _table(
        INVALID_INDEX,
        shape,
        True,
        f"classifier table for rules of shape {shape}",
        nbuckets=TABLE_BUCKETS,
        memory_size=TABLE_MEMORY,
        skip_n_vectors=0,
        next_table_index=next_table,
        miss_next_index=CHAIN_MARK,
        current_data_flag=USE_CURRENT_DATA,
        current_data_offset=0,
    )


def table_relink(index: int, shape: Shape, next_table: int) -> Request:
    """Point a table of ours at another next table (VPP's "update": only the link
    changes; the mask must still be given, and fit)."""
    return _table(
        index,
        shape,
        True,
        f"classifier table {index} ({shape}) chained to {_index(next_table)}",
        next_table_index=next_table,
        miss_next_index=CHAIN_MARK,
    )


def table_del(index: int, shape: Shape) -> Request:
    return _table(index, shape, False, f"delete classifier table {index} ({shape})")


def session(index: int, rule: Rule, is_add: bool) -> Request:
    """Add (or replace) a rule's session in table `index`, or delete it. A delete names
    no FIB: VPP would create a FIB the action names (fib_table_find_or_create_and_lock)."""
    table_id = vpp_table(rule.table)
    action = ACTION_SET_IP6_FIB_INDEX if rule.destination.version == 6 else ACTION_SET_IP4_FIB_INDEX
    match = match_of(rule)
    return Request(
        "classify_add_del_session",
        {
            "is_add": is_add,
            "table_index": index,
            "hit_next_index": INVALID_INDEX,
            "opaque_index": table_id if is_add else INVALID_INDEX,
            "advance": 0,
            "action": action if is_add else ACTION_NONE,
            "metadata": table_id if is_add else 0,
            "match_len": len(match),
            "match": match,
        },
        lambda: f"{'add' if is_add else 'delete'} classifier session of {rule} (table {index})",
    )


def attach(sw_if_index: int, head: int, ipv6: bool, is_add: bool) -> Request:
    """Make table `head` (a chain's first) the interface's input ACL of one family."""
    return Request(
        "input_acl_set_interface",
        {
            "sw_if_index": sw_if_index,
            "ip4_table_index": INVALID_INDEX if ipv6 else head,
            "ip6_table_index": head if ipv6 else INVALID_INDEX,
            "l2_table_index": INVALID_INDEX,
            "is_add": is_add,
        },
        f"{'attach' if is_add else 'detach'} ip{6 if ipv6 else 4} input ACL chain {head} "
        f"{'to' if is_add else 'from'} interface {sw_if_index}",
    )


def _index(index: int) -> str:
    return "nothing" if index == INVALID_INDEX else str(index)


__all__ = [
    "CHAIN_MARK",
    "CLASSIFY_MESSAGES",
    "Shape",
    "attach",
    "decode_session",
    "match_of",
    "session",
    "shape_of",
    "shape_of_mask",
    "table_add",
    "table_del",
    "table_relink",
]
