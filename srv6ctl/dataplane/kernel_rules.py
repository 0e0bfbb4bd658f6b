"""The kernel shape of a `Rule`: an ip rule (RTM_NEWRULE), both ways, without I/O.

`Rule(destination, table, protocol, port, source, iif)` becomes

    pref P [from source] to destination [ipproto P dport N] [iif I] lookup table

with our protocol (FRA_PROTOCOL, kernel 4.17+, as are FRA_IP_PROTO and FRA_DPORT_RANGE),
which is how a dump tells ours from anyone's. P is PORT_RULE_PRIORITY for a rule by port
alone (a NodePort), RULE_PRIORITY for the others (source ranges, the host loop).

Why a gate: the kernel walks rules as a list, for every route lookup, so a node with
10,000 NodePort rules would walk them for every packet it forwards — measured on 6.18,
forwarding fell from ~150,000 to ~7,000 packets/s (a Python sender between namespaces).
Node port rules all name one destination per family (the node's InternalIP), so one rule
before them, `pref GATE_PRIORITY not to N goto LOCAL_RULE_PRIORITY`, sends every other
packet past them (back to ~150,000/s). Without one shared destination there is no gate
(correct, slower).

Why the kernel's `local` rule moves: a NodePort's destination is the node's own address,
and the kernel's first rule, `pref 0 lookup local`, delivers every packet to a local
address to the node's own stack before any later rule is consulted (rules of equal
priority keep their order of insertion, so ours cannot go before it at 0 either). So
while a family has a rule of ours, its local lookup sits at LOCAL_RULE_PRIORITY, just
after ours, carrying our protocol: everything our rules do not match finds the local
table first, as before. The move is make-before-break both ways (ours is added before the
kernel's is deleted, and the kernel's is put back before ours goes), so a family always
has a local rule. 1 to 4 are the smallest priorities after 0: a rule an operator keeps at
5 or more still comes after the local lookup, as it did.

sessionAffinity (kernel_affinity) adds rules by firewall mark at priority 0, before all
of these (a sticky client's packets to a NodePort must not be taken by the port rule):
`pref 0 not fwmark MARK_BASE/MARK_MASK goto 1` (the gate: unmarked packets skip them),
`pref 0 fwmark M lookup M` per chosen segment list, and `pref 1 nop`, an anchor that
makes sure the gate has a rule to go to (a goto names a priority, and priority 1 holds no
other rule in a family without source rules). They exist only while the family's local
lookup is ours at LOCAL_RULE_PRIORITY: the gate would jump over the kernel's at 0.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from dataclasses import dataclass

from pyroute2.netlink.rtnl.fibmsg import fibmsg

from srv6ctl.dataplane import netlink_wire as w
from srv6ctl.dataplane.model import Rule

RTM_NEWRULE, RTM_DELRULE, RTM_GETRULE = 32, 33, 34
MARK_PRIORITY = 0
RULE_PRIORITY = 1
GATE_PRIORITY = 2
PORT_RULE_PRIORITY = 3
LOCAL_RULE_PRIORITY = 4
LOCAL_TABLE = 255
RTPROT_KERNEL = 2  # what the kernel's own `pref 0 lookup local` carries
FR_ACT_TO_TBL, FR_ACT_GOTO, FR_ACT_NOP = 1, 2, 3
# sessionAffinity's marks, which are also their tables' ids: below the services' own tables
# (render.SERVICE_TABLE_BASE 0x5C000000 + a service index, which can pass 0x5D000000).
MARK_BASE, MARK_MASK = 0x5B00_0000, 0xFF00_0000


def is_mark_table(table: int) -> bool:
    """Whether `table` is one of sessionAffinity's (a mark's own table)."""
    return table & MARK_MASK == MARK_BASE


FIB_RULE_INVERT = 0x2
FRA = w.numbers(fibmsg)
IP_PROTOCOLS = {"TCP": socket.IPPROTO_TCP, "UDP": socket.IPPROTO_UDP, "SCTP": 132}
_PROTOCOL_NAMES = {number: name for name, number in IP_PROTOCOLS.items()}
_FAMILY = {4: socket.AF_INET, 6: socket.AF_INET6}
_VERSION = {socket.AF_INET: 4, socket.AF_INET6: 6}
_NLMSGHDR = 16
# struct fib_rule_hdr { family, dst_len, src_len, tos, table, res1, res2, action; u32 flags }
_HEADER = struct.Struct("=BBBBBBBBI")
_PORT_RANGE = struct.Struct("=HH")  # struct fib_rule_port_range { start; end }, host order


def _header(
    version: int,
    dst_len: int = 0,
    src_len: int = 0,
    table: int = 0,
    action: int = FR_ACT_TO_TBL,
    flags: int = 0,
) -> bytes:
    short_table = table if table < 256 else 252  # RT_TABLE_COMPAT: the id is in FRA_TABLE
    return _HEADER.pack(_FAMILY[version], dst_len, src_len, 0, short_table, 0, 0, action, flags)


def priority_of(rule: Rule) -> int:
    """Where a rule goes: behind the gate when it matches by port alone."""
    by_port_alone = rule.port and rule.source is None and not rule.iif
    return PORT_RULE_PRIORITY if by_port_alone else RULE_PRIORITY


def gate_message(
    destination: ipaddress.IPv4Network | ipaddress.IPv6Network, protocol: int
) -> bytes:
    """`pref GATE_PRIORITY not to destination goto LOCAL_RULE_PRIORITY`."""
    head = _header(
        destination.version, destination.prefixlen, action=FR_ACT_GOTO, flags=FIB_RULE_INVERT
    )
    return head + b"".join(
        (
            w.u32(FRA["FRA_PRIORITY"], GATE_PRIORITY),
            w.u32(FRA["FRA_GOTO"], LOCAL_RULE_PRIORITY),
            w.u8(FRA["FRA_PROTOCOL"], protocol),
            w.address(FRA["FRA_DST"], destination.network_address),
        )
    )


def mark_rule_message(version: int, mark: int, protocol: int) -> bytes:
    """`pref MARK_PRIORITY fwmark mark lookup mark`: a chosen segment list's table."""
    return _header(version, table=mark) + b"".join(
        (
            w.u32(FRA["FRA_PRIORITY"], MARK_PRIORITY),
            w.u32(FRA["FRA_TABLE"], mark),
            w.u8(FRA["FRA_PROTOCOL"], protocol),
            w.u32(FRA["FRA_FWMARK"], mark),
            w.u32(FRA["FRA_FWMASK"], 0xFFFF_FFFF),
        )
    )


def mark_gate_message(version: int, protocol: int) -> bytes:
    """`pref MARK_PRIORITY not fwmark MARK_BASE/MARK_MASK goto RULE_PRIORITY`."""
    head = _header(version, action=FR_ACT_GOTO, flags=FIB_RULE_INVERT)
    return head + b"".join(
        (
            w.u32(FRA["FRA_PRIORITY"], MARK_PRIORITY),
            w.u32(FRA["FRA_GOTO"], RULE_PRIORITY),
            w.u8(FRA["FRA_PROTOCOL"], protocol),
            w.u32(FRA["FRA_FWMARK"], MARK_BASE),
            w.u32(FRA["FRA_FWMASK"], MARK_MASK),
        )
    )


def anchor_message(version: int, protocol: int) -> bytes:
    """`pref RULE_PRIORITY nop`: what the mark gate goes to."""
    return _header(version, action=FR_ACT_NOP) + b"".join(
        (w.u32(FRA["FRA_PRIORITY"], RULE_PRIORITY), w.u8(FRA["FRA_PROTOCOL"], protocol))
    )


def rule_message(rule: Rule, protocol: int) -> bytes:
    """The body of an RTM_NEWRULE (or RTM_DELRULE: the kernel deletes the rule that
    matches every attribute given) for `rule`."""
    destination, source = rule.destination, rule.source
    attrs = [
        w.u32(FRA["FRA_PRIORITY"], priority_of(rule)),
        w.u32(FRA["FRA_TABLE"], rule.table),
        w.u8(FRA["FRA_PROTOCOL"], protocol),
        w.address(FRA["FRA_DST"], destination.network_address),
    ]
    if source is not None:
        attrs.append(w.address(FRA["FRA_SRC"], source.network_address))
    if rule.protocol:
        attrs.append(w.u8(FRA["FRA_IP_PROTO"], IP_PROTOCOLS[rule.protocol]))
    if rule.port:
        attrs.append(w.attr(FRA["FRA_DPORT_RANGE"], _PORT_RANGE.pack(rule.port, rule.port)))
    if rule.iif:
        attrs.append(w.attr(FRA["FRA_IIFNAME"], rule.iif.encode() + b"\0"))
    source_len = 0 if source is None else source.prefixlen
    head = _header(destination.version, destination.prefixlen, source_len, rule.table)
    return head + b"".join(attrs)


def local_rule_message(version: int, priority: int, protocol: int) -> bytes:
    """`pref priority lookup local`: the kernel's own at 0 (its protocol), or ours."""
    return _header(version, table=LOCAL_TABLE) + b"".join(
        (
            w.u32(FRA["FRA_PRIORITY"], priority),
            w.u32(FRA["FRA_TABLE"], LOCAL_TABLE),
            w.u8(FRA["FRA_PROTOCOL"], protocol),
        )
    )


def rule_dump(version: int) -> bytes:
    # Strict dump checking refuses a request header with anything but the family set.
    return _header(version, action=0)


@dataclass(frozen=True)
class RuleMessage:
    version: int
    priority: int
    table: int
    protocol: int
    plain: bool  # only priority and table (no match, no goto, no other action)
    rule: Rule | None  # the model rule, for one of our shape
    gate: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None  # `not to D goto`
    mark: int | None = None  # `pref 0 fwmark M lookup M` (kernel_affinity)
    mark_gate: bool = False  # `pref 0 not fwmark MARK_BASE/MARK_MASK goto 1`
    anchor: bool = False  # `pref 1 nop`


def parse_rule(msg_type: int, data: bytes) -> RuleMessage | None:
    """An RTM_NEWRULE of a dump, as far as we need it (anything else: None)."""
    if msg_type != RTM_NEWRULE:
        return None
    family, dst_len, src_len, _, table, _, _, action, flags = _HEADER.unpack_from(data, _NLMSGHDR)
    version = _VERSION.get(family)
    if version is None:
        return None
    attrs = w.Attrs(data, _NLMSGHDR + _HEADER.size)
    table = attrs.uint(FRA["FRA_TABLE"]) or table
    priority = attrs.uint(FRA["FRA_PRIORITY"]) or 0
    protocol = attrs.uint(FRA["FRA_PROTOCOL"]) or 0
    fwmark, fwmask = attrs.uint(FRA["FRA_FWMARK"]), attrs.uint(FRA["FRA_FWMASK"])
    if priority == MARK_PRIORITY and fwmark is not None:
        if action == FR_ACT_GOTO and flags & FIB_RULE_INVERT:
            shaped = (fwmark, fwmask, attrs.uint(FRA["FRA_GOTO"])) == (
                MARK_BASE,
                MARK_MASK,
                RULE_PRIORITY,
            )
            return RuleMessage(version, priority, table, protocol, False, None, mark_gate=shaped)
        if action == FR_ACT_TO_TBL and fwmark == table and fwmask == 0xFFFF_FFFF:
            return RuleMessage(version, priority, table, protocol, False, None, mark=fwmark)
    if action == FR_ACT_NOP:
        anchor = priority == RULE_PRIORITY
        return RuleMessage(version, priority, table, protocol, False, None, anchor=anchor)
    extra = ("FRA_OIFNAME", "FRA_FWMARK", "FRA_GOTO", "FRA_SPORT_RANGE")
    matches = any(FRA[name] in attrs for name in extra) or action != FR_ACT_TO_TBL
    destination = attrs.ip(FRA["FRA_DST"])
    if action == FR_ACT_GOTO and flags & FIB_RULE_INVERT and destination is not None:
        target = attrs.uint(FRA["FRA_GOTO"])
        gate = ipaddress.ip_network((destination, dst_len), strict=False)
        shaped = target == LOCAL_RULE_PRIORITY and priority == GATE_PRIORITY
        return RuleMessage(
            version, priority, table, protocol, False, None, gate if shaped else None
        )
    iif_raw = attrs.raw(FRA["FRA_IIFNAME"])
    iif = "" if iif_raw is None else iif_raw.split(b"\0", 1)[0].decode()
    plain = not matches and not iif and destination is None and FRA["FRA_SRC"] not in attrs
    rule = None
    if destination is not None and not matches and table:
        source_address = attrs.ip(FRA["FRA_SRC"])
        ip_proto = attrs.uint(FRA["FRA_IP_PROTO"]) or 0
        ports = attrs.raw(FRA["FRA_DPORT_RANGE"])
        port = 0
        if ports is not None:
            start, end = _PORT_RANGE.unpack_from(ports)
            port = start if start == end else -1
        name = _PROTOCOL_NAMES.get(ip_proto, "") if ip_proto else ""
        if port >= 0 and (name or not ip_proto):
            try:
                rule = Rule(
                    ipaddress.ip_network((destination, dst_len)),
                    table,
                    protocol=name,
                    port=port,
                    source=None
                    if source_address is None
                    else ipaddress.ip_network((source_address, src_len)),
                    iif=iif,
                )
            except ValueError:
                rule = None  # a shape the model cannot say (e.g. a port without a protocol)
    return RuleMessage(version, priority, table, protocol, plain, rule)
