"""Probe, once per process, what this kernel's SRv6 can do, in a scratch network namespace.

Each feature is tried for real — create the object, then dump it back — because the
kernel sometimes *accepts and drops* an attribute it does not apply: on 6.18 End.T and
End.DT6 take a PSP flavour without error and forget it, and an unknown seg6 tunnel
attribute (per-route source) is ignored rather than refused. Reading back is the only
faithful test, and the result is exactly what `dump` would later report.

The scratch namespace is created and deleted here; nothing else is touched.

`KernelFeatures.unsupported()` is the one line an agent stops with when the kernel cannot
run the kernel dataplane at all (most often: built without `CONFIG_IPV6_SEG6_LWTUNNEL`,
as some cloud microVM and vendor kernels are); `left_out()` lists what it runs without.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field

from pyroute2.netlink import NETLINK_ROUTE, NLM_F_CREATE, NLM_F_EXCL
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

from policies.nftables import NftError, run_nft
from srv6ctl.dataplane import host_ports
from srv6ctl.dataplane import kernel_affinity as affinity
from srv6ctl.dataplane import netlink_seg6 as nl
from srv6ctl.dataplane.kernel_codec import (
    VRF_STRICT_MODE,
    Codec,
    DecodedNexthop,
    Links,
    RouteMessage,
    SegmentPath,
    parse_nexthop,
    parse_route,
    vrf_link,
)
from srv6ctl.dataplane.kernel_rules import (
    MARK_BASE,
    RTM_GETRULE,
    RTM_NEWRULE,
    parse_rule,
    rule_dump,
    rule_message,
)
from srv6ctl.dataplane.model import (
    BEHAVIOURS,
    Capabilities,
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
    IPv6Address,
    LocalSid,
    PortMap,
    Rule,
)
from srv6ctl.dataplane.netlink_channel import NetlinkChannel, Request
from srv6ctl.dataplane.nsenter import ensure_sysctls
from srv6ctl.dataplane.scratch_netns import scratch_netns

RTM_NEWLINK = 16
IFF_UP = 1
LWTUNNEL_OPTION = "CONFIG_IPV6_SEG6_LWTUNNEL"
# What render emits on every node: the node SID (End), pod-to-pod decapsulation (End.DT6),
# the service backends (End.DX6), and SR policies as seg6 nexthops. Without any of them the
# node cannot carry pods or services; everything else has a fallback (render asks).
REQUIRED_BEHAVIOURS = (End.behaviour, EndDT6.behaviour, EndDX6.behaviour)
# The kernel's extack when seg6/seg6local lightweight tunnels are not built in.
_NO_LWTUNNEL = "lwt encapsulation type not supported"
_PROBE_PROTOCOL = 0x5C
_VRF_TABLE = 0x5C5C


@dataclass(frozen=True)
class KernelFeatures:
    """The probe's full answer; `capabilities` is the backend-neutral summary."""

    capabilities: Capabilities
    flavours: Mapping[str, frozenset[Flavour]] = field(default_factory=dict)  # per behaviour
    route_tunnel_source: bool = False  # SEG6_IPTUNNEL_SRC: an encap source per nexthop
    group_stats: bool = False  # NHA_OP_FLAG_DUMP_STATS: per-member packet counters
    vrf: bool = False
    kernel: str = ""
    # Why a required piece was refused (behaviour name, or "seg6 nexthops"): the kernel's
    # own words, for `unsupported()`.
    refused: Mapping[str, str] = field(default_factory=dict)

    def unsupported(self) -> str | None:
        """One line saying why the kernel dataplane cannot run here, or None."""
        missing = [b for b in REQUIRED_BEHAVIOURS if b not in self.capabilities.behaviours]
        if not self.capabilities.encap_modes:
            missing.append("seg6 encap nexthops")
        if not missing:
            return None
        reasons = sorted(set(self.refused.values()))
        lacks = (
            f"this kernel was built without {LWTUNNEL_OPTION}"
            if any(_NO_LWTUNNEL in r for r in reasons) or not reasons
            else "the kernel said: " + "; ".join(reasons)
        )
        return (
            f"the kernel dataplane cannot run on kernel {self.kernel}: "
            f"{', '.join(missing)} refused ({lacks}); use a kernel with {LWTUNNEL_OPTION}=y "
            "(Debian, Ubuntu, Fedora and RHEL kernels have it) or --dataplane vpp"
        )

    def left_out(self) -> tuple[str, ...]:
        """What the kernel dataplane runs without here (optional features), for a log."""
        return self.capabilities.notes


@functools.cache
def probe_kernel() -> KernelFeatures:
    """Probe in a throw-away namespace (needs CAP_SYS_ADMIN and CAP_NET_ADMIN).

    The namespace has no name and no mount (`scratch_netns`): nothing to leak if the
    process dies, and nothing AppArmor's container profile refuses."""
    with scratch_netns() as netns:
        channel = NetlinkChannel(netns, NETLINK_ROUTE, strict_dumps=True)
        try:
            return _Probe(channel, netns).run()
        finally:
            channel.close()


class _Probe:
    def __init__(self, channel: NetlinkChannel, netns: str) -> None:
        self.channel = channel
        self.netns = netns
        self.links = Links({"lo": 1})
        # Creating (not forwarding through) SIDs on lo is enough to learn what is accepted.
        self.plain = Codec(_PROBE_PROTOCOL, 0, "lo", "lo", False, 16, None)
        self.counting = Codec(_PROBE_PROTOCOL, 0, "lo", "lo", True, 16, None)
        self.notes: list[str] = []
        self.refused: dict[str, str] = {}
        self._next_sid = 0
        self._next_nh = 0

    def run(self) -> KernelFeatures:
        self._link_up()
        vrf = self._vrf()
        behaviours: set[str] = set()
        flavours: dict[str, frozenset[Flavour]] = {}
        for behaviour, cls in BEHAVIOURS.items():
            error = self._local_sid(cls)
            if error:
                reason = error
                if cls in (EndDT4, EndDT46) and not vrf:
                    reason = "no VRF device (its table is looked up through a VRF)"
                self.notes.append(f"{behaviour}: unsupported: {reason}")
                self.refused[behaviour] = error
                continue
            behaviours.add(behaviour)
            supported = frozenset(f for f in Flavour if self._local_sid(cls, {f}) is None)
            flavours[behaviour] = supported
        all_flavours = frozenset().union(*flavours.values()) if flavours else frozenset()
        for flavour in sorted(all_flavours):
            only = sorted(b for b, fs in flavours.items() if flavour in fs)
            self.notes.append(f"flavour {flavour}: only on {', '.join(only)}")
        for flavour in sorted(set(Flavour) - all_flavours):
            self.notes.append(f"flavour {flavour}: not offered by this kernel")
        counters = self._local_sid(End, counters=True) is None
        if not counters:
            self.notes.append("per-SID counters (SEG6_LOCAL_COUNTERS): unsupported")
        modes = frozenset(m for m in EncapMode if self._nexthop(SegmentPath.make(m, None, _SEGS)))
        for mode in sorted(set(EncapMode) - modes):
            self.notes.append(f"encap mode {mode}: unsupported")
        source = self._nexthop(SegmentPath.make(EncapMode.ENCAP, _SOURCE, _SEGS)) is not None
        if not source:
            self.notes.append(
                "per-policy encap source (SEG6_IPTUNNEL_SRC): unsupported, "
                "policies use the node's tunnel source"
            )
        resilient, stats = self._group()
        if not resilient:
            self.notes.append("resilient nexthop groups: unsupported")
        if not stats:
            self.notes.append("nexthop group statistics: unsupported, no per-policy counters")
        rules = self._rule()
        capabilities = Capabilities(
            rules=rules,
            affinity=rules and self._affinity(),
            port_maps=self._port_maps(),
            translations=self._translations(),
            behaviours=frozenset(behaviours),
            flavours=all_flavours,
            encap_modes=modes,
            resilient_groups=resilient,
            sid_counters=counters,
            notes=tuple(self.notes),
        )
        return KernelFeatures(
            capabilities=capabilities,
            flavours=flavours,
            route_tunnel_source=source,
            group_stats=stats,
            vrf=vrf,
            kernel=os.uname().release,
            refused=self.refused,
        )

    # --- single probes ----------------------------------------------------------------

    def _link_up(self) -> None:
        msg = ifinfmsg()
        msg["index"] = 1
        msg["flags"] = IFF_UP
        msg["change"] = IFF_UP
        self._write(Request(RTM_NEWLINK, 0, msg, "lo up"))

    def _vrf(self) -> bool:
        msg = vrf_link("probe-vrf", _VRF_TABLE)
        error = self._write(Request(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, msg, "vrf"))
        if error:
            self.notes.append(f"VRF devices: unsupported ({error})")
            return False
        # Set as the backend sets it in a node's namespace before its first End.DT4.
        refused = ensure_sysctls(self.netns, VRF_STRICT_MODE).refused
        if refused:
            self.notes.append(f"VRF strict mode: {'; '.join(refused)}")
        return True

    def _local_sid(
        self,
        cls: type[LocalSid],
        flavours: set[Flavour] | None = None,
        counters: bool = False,
    ) -> str | None:
        """None if the SID was created and reads back as sent, else why not."""
        self._next_sid += 1
        sid = IPv6Address(f"fcbb:bb00:ffff::{self._next_sid:x}")
        extra: dict[str, object] = {}
        if cls in (EndX, EndDX6):
            extra["nexthop"] = IPv6Address("fe80::1")
        elif cls is EndDX4:
            extra["nexthop"] = ipaddress.IPv4Address("192.0.2.1")
        elif cls in (EndT, EndDT6):
            extra["table"] = 254
        elif cls in (EndDT4, EndDT46):
            extra["table"] = _VRF_TABLE
        obj = cls(sid, frozenset(flavours or ()), **extra)
        codec = self.counting if counters else self.plain
        try:
            msg = codec.local_sid(obj, self.links)
        except ValueError as exc:
            return str(exc)
        error = self._write(Request(nl.RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL, msg, str(obj)))
        if error:
            return error
        for route in self._routes():
            decoded = codec.decode_route(route, self.links)
            if decoded.obj == obj and (decoded.counters is not None) == counters:
                return None
        return "accepted but not kept (dumped back differently)"

    def _nexthop(self, path: SegmentPath) -> int | None:
        self._next_nh += 1
        nh_id = self._next_nh
        msg = self.plain.segment_nexthop(nh_id, path, self.links)
        error = self._write(Request(nl.RTM_NEWNEXTHOP, NLM_F_CREATE | NLM_F_EXCL, msg, str(path)))
        if error:
            self.refused.setdefault("seg6 nexthops", error)
            return None
        return nh_id if any(n.path == path for n in self._nexthops(stats=False)) else None

    def _group(self) -> tuple[bool, bool]:
        member = self._nexthop(SegmentPath.make(EncapMode.ENCAP, None, _SEGS))
        if member is None:
            return False, False
        self._next_nh += 1
        group_id = self._next_nh
        msg = self.plain.group(group_id, [(member, 1)])
        if self._write(Request(nl.RTM_NEWNEXTHOP, NLM_F_CREATE | NLM_F_EXCL, msg, "group")):
            return False, False
        group = next((n for n in self._nexthops(stats=False) if n.nh_id == group_id), None)
        resilient = group is not None and group.resilient
        # Asked apart: a kernel without NHA_OP_FLAGS (6.1) answers a dump that asks for
        # statistics with no nexthop at all, which once made resilient groups look absent.
        try:
            counted = next((n for n in self._nexthops(stats=True) if n.nh_id == group_id), None)
        except OSError:
            return resilient, False
        return resilient, bool(counted and counted.member_packets)

    # --- plumbing ---------------------------------------------------------------------

    def _rule(self) -> bool:
        """An ip rule by protocol and destination port (FRA_IP_PROTO, FRA_DPORT_RANGE:
        4.17+), read back whole: an older kernel ignores attributes it does not know."""
        rule = Rule(ipaddress.ip_network("fcbb:bb00:fffe::5/128"), 0x5C5D, "TCP", 30000)
        error = self._write(
            Request(RTM_NEWRULE, NLM_F_CREATE | NLM_F_EXCL, rule_message(rule, 0x5C), "rule")
        )
        found = [] if error else self.channel.dump(RTM_GETRULE, rule_dump(6), parse_rule)
        if any(msg.rule == rule for msg in found):
            return True
        self.notes.append(f"ip rules by protocol and port: unsupported ({error or 'ignored'})")
        return False

    def _affinity(self) -> bool:
        """sessionAffinity's nftables table (kernel_affinity): the nft tool, and a kernel
        with dynamic sets with timeouts, numgen and route chains — loaded here whole."""
        sticky = affinity.Sticky(
            IPv6Address("fcbb:bb00:fffe::6"),
            10,
            (affinity.Choice(MARK_BASE + 1, 1, 1), affinity.Choice(MARK_BASE + 2, 2, 2)),
            (affinity.Selector(ipaddress.ip_network("fd00:5c::1/128"), None, "TCP", 80),),
        )
        script = affinity.script({sticky.bsid: sticky}, ())
        return self._nft_loads(script, "sessionAffinity: unsupported, connections balanced")

    def _port_maps(self) -> bool:
        """The host_ports table (`PortMap`s), loaded here whole."""
        sample = PortMap("TCP", IPv6Address("fd00:5c::1"), 443, 6443)
        return self._nft_loads(
            host_ports.script([sample]),
            "port rewrites for host-network endpoints: unsupported; a Service whose port "
            "differs from its host-network endpoint's is not served",
        )

    def _translations(self) -> bool:
        """The node's own connections translated (`Translation`s in the host_ports table):
        a NAT chain at output, with an affinity set — loaded here whole."""
        return self._nft_loads(
            host_ports.probe_script(),
            "NAT of the node's own connections: unsupported; host-network clients cannot "
            "reach Services whose endpoints are outside the cluster",
        )

    def _nft_loads(self, script: str, missing: str) -> bool:
        """Whether `nft -f` takes `script` here; `missing` (and nft's reason) noted if not."""
        try:
            run_nft(self.netns, ["-f", "-"], script)
        except (NftError, OSError) as error:
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            self.notes.append(f"{missing} ({reason})")
            return False
        return True

    def _write(self, request: Request) -> str | None:
        failures = self.channel.execute([request])
        return str(failures[0]).split(": ", 1)[-1] if failures else None

    def _routes(self) -> list[RouteMessage]:
        return self.channel.dump(
            nl.RTM_GETROUTE, self.plain.route_dump(socket.AF_INET6), parse_route
        )

    def _nexthops(self, stats: bool) -> list[DecodedNexthop]:
        msgs = self.channel.dump(nl.RTM_GETNEXTHOP, Codec.nexthop_dump(stats), parse_nexthop)
        return [Codec.decode_nexthop(m) for m in msgs]


_SEGS = (IPv6Address("fcbb:bb00:fffe::1"), IPv6Address("fcbb:bb00:fffe::6"))
_SOURCE = IPv6Address("fcbb:bb00:fffe::5")
