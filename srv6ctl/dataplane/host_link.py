"""The kernel's end of the host interconnect on a VPP node (`vpp_host`).

A veth pair in VPP's namespace: `name` is the kernel's (the node's own stack sends through
it), `peer` is VPP's af_packet port. The kernel's end holds the node's addresses as host
addresses (/128, /32: the underlay is not on this link, VPP is the only neighbour) and
routes what the node sends to VPP's link-local address; IPv4 goes via the same IPv6
gateway (RFC 5549), so VPP needs no IPv4 address on its port to be routed to. Both MACs
are fixed, and each side holds the other as a permanent neighbour: nothing to resolve
after either restarts, and no neighbour discovery at all — the kernel would solicit from
the node's address, which VPP holds on its uplink and so refuses as "not on link".
`ensure` reads first and writes only what differs, and says whether it wrote.

The routes carry the agent's protocol number (`RTPROT_SRV6CTL`): those on the link with
it are ours, and one no longer wanted goes. Transmit checksum offload is off on the
kernel's end, as on a VPP pod's (cni/wiring.py: VPP's af_packet reads frames without the
virtio header, so a checksum left to "the hardware" would never be filled in).
"""

from __future__ import annotations

import ipaddress
import json
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pyroute2 import IPRoute

from cni.wiring import set_tx_checksum, tx_checksum
from policies.nftables import list_table, run_nft
from srv6ctl.dataplane.kernel import RTPROT_SRV6CTL
from srv6ctl.dataplane.kernel_codec import OWN_ALIAS
from srv6ctl.dataplane.model import IPAddress, IPNetwork
from srv6ctl.dataplane.nsenter import ensure_sysctls, run_in_netns

_IFA_F_NODAD = 0x02
_IFF_UP = 0x1
_NUD_PERMANENT = 0x80
# Ours by this mark, as every device the agent makes (`srv6ctl cleanup` goes by it).
ALIAS = f"{OWN_ALIAS} the node's own stack to VPP and back"


IP6_RT_PRIO_USER = 1024  # include/net/ip6_route.h


@dataclass(frozen=True)
class HostRoute:
    """A prefix the node's stack sends to VPP; `metric` as the kernel's priority."""

    prefix: IPNetwork
    metric: int = 0


@dataclass(frozen=True)
class HostLink:
    """What the kernel's end should be."""

    name: str
    peer: str
    mac: str
    gateway: ipaddress.IPv6Address  # VPP's link-local address on `peer`
    gateway_mac: str  # VPP's MAC on `peer`
    addresses: tuple[IPAddress, ...]  # the node's, as host addresses
    routes: tuple[HostRoute, ...]

    def source(self, version: int) -> IPAddress | None:
        """The address the node's connections through VPP leave from, per family."""
        return next((a for a in self.addresses if a.version == version), None)


def ensure(link: HostLink, netns: str | None) -> bool:
    """Make the kernel's end as `link` says, in `netns` (None: here); True if it wrote."""
    sysctls = {
        f"net/ipv6/conf/{link.name}/disable_ipv6": "0",
        f"net/ipv6/conf/{link.name}/accept_ra": "0",
        f"net/ipv6/conf/{link.name}/accept_dad": "0",
        # Loose: a node with a management default route of its own still takes what VPP
        # hands it from the underlay (punted replies, health checks) on this link.
        f"net/ipv4/conf/{link.name}/rp_filter": "2",
        # Only VPP answers on its own end (as on a pod port, vpp_pods).
        f"net/ipv6/conf/{link.peer}/disable_ipv6": "1",
    }
    created = run_in_netns(netns, lambda: _ensure_pair(link))
    changed = ensure_sysctls(netns, sysctls)
    if changed.refused:
        raise OSError(f"host interconnect {link.name}: {'; '.join(changed.refused)}")
    wrote = run_in_netns(netns, lambda: _ensure_addressed(link))
    return created or bool(changed.changed) or wrote


def remove(name: str, netns: str | None) -> bool:
    """Delete the pair (its peer, addresses and routes go with it); True if it was there."""

    def body() -> bool:
        with IPRoute() as ipr:
            found = ipr.link_lookup(ifname=name)
            if found:
                ipr.link("del", index=found[0])
            return bool(found)

    return run_in_netns(netns, body)


def index_of(name: str, netns: str | None) -> int:
    """The kernel's index of device `name` in `netns` (OSError without one)."""

    def body() -> int:
        with IPRoute() as ipr:
            found = ipr.link_lookup(ifname=name)
            if not found:
                raise OSError(f"no device {name}")
            return int(found[0])

    return run_in_netns(netns, body)


def _ensure_pair(link: HostLink) -> bool:
    wrote = False
    with IPRoute() as ipr:
        if not ipr.link_lookup(ifname=link.name):
            ipr.link("add", ifname=link.name, kind="veth", peer={"ifname": link.peer})
            wrote = True
        index = ipr.link_lookup(ifname=link.name)[0]
        (msg,) = ipr.get_links(index)
        if str(msg.get_attr("IFLA_ADDRESS")).lower() != link.mac:
            ipr.link("set", index=index, address=link.mac)
            wrote = True
        if msg.get_attr("IFLA_IFALIAS") != ALIAS:
            ipr.link("set", index=index, ifalias=ALIAS)
            wrote = True
        for name in (link.name, link.peer):
            found = ipr.link_lookup(ifname=name)
            if not found:
                raise OSError(f"host interconnect {link.name}: its peer {link.peer} is missing")
            (msg,) = ipr.get_links(found[0])
            if not msg["flags"] & _IFF_UP:
                ipr.link("set", index=found[0], state="up")
                wrote = True
    if tx_checksum(link.name):
        set_tx_checksum(link.name, False)
        wrote = True
    return wrote


def _ensure_addressed(link: HostLink) -> bool:
    wrote = False
    with IPRoute() as ipr:
        index = ipr.link_lookup(ifname=link.name)[0]
        held = _addresses(ipr, index)
        wanted = {(a, a.max_prefixlen) for a in link.addresses}
        for address, prefixlen in sorted(held - wanted, key=_order):
            ipr.addr("del", index=index, address=str(address), prefixlen=prefixlen)
            wrote = True
        for address, prefixlen in sorted(wanted - held, key=_order):
            ipr.addr(
                "add",
                index=index,
                address=str(address),
                prefixlen=prefixlen,
                flags=_IFA_F_NODAD,
            )
            wrote = True
        if _neighbour_mac(ipr, index, link.gateway) != link.gateway_mac:
            ipr.neigh(
                "replace",
                dst=str(link.gateway),
                lladdr=link.gateway_mac,
                ifindex=index,
                state=_NUD_PERMANENT,
            )
            wrote = True
        routes = {_route_key(r): r for r in link.routes if link.source(r.prefix.version)}
        held_routes = _routes(ipr, index)
        for key in sorted(set(held_routes) - set(routes), key=str):
            ipr.route("del", **held_routes[key])
            wrote = True
        for key, route in routes.items():
            if held_routes.get(key) is None:
                ipr.route("replace", **_route_fields(link, index, route))
                wrote = True
    return wrote


def _order(item: tuple[IPAddress, int]) -> tuple[int, int]:
    return (item[0].version, int(item[0]))


def _addresses(ipr: Any, index: int) -> set[tuple[IPAddress, int]]:
    """The link's global addresses (the kernel's own link-local stays)."""
    held = set()
    for msg in ipr.get_addr(index=index):
        address = ipaddress.ip_address(msg.get_attr("IFA_ADDRESS"))
        if not address.is_link_local:
            held.add((address, int(msg["prefixlen"])))
    return held


def _neighbour_mac(ipr: Any, index: int, address: ipaddress.IPv6Address) -> str | None:
    for msg in ipr.get_neighbours(family=socket.AF_INET6, ifindex=index, dst=str(address)):
        if msg["state"] & _NUD_PERMANENT:
            return str(msg.get_attr("NDA_LLADDR")).lower()
    return None


def _route_key(route: HostRoute) -> tuple[str, int]:
    # As the kernel keeps it: an IPv6 route given priority 0 is stored with 1024
    # (IP6_RT_PRIO_USER), which every pass would otherwise take for another route, and
    # delete and add again.
    metric = route.metric or (IP6_RT_PRIO_USER if route.prefix.version == 6 else 0)
    return (str(route.prefix), metric)


def _routes(ipr: Any, index: int) -> dict[tuple[str, int], dict[str, Any]]:
    """Our routes through the link, by (prefix, metric), as `route del` takes them."""
    held: dict[tuple[str, int], dict[str, Any]] = {}
    for family in (socket.AF_INET6, socket.AF_INET):
        for msg in ipr.get_routes(family=family, oif=index, proto=RTPROT_SRV6CTL):
            if msg.get_attr("RTA_OIF") != index or msg["proto"] != RTPROT_SRV6CTL:
                continue
            dst = msg.get_attr("RTA_DST") or ("::" if family == socket.AF_INET6 else "0.0.0.0")
            prefix = ipaddress.ip_network(f"{dst}/{msg['dst_len']}")
            metric = int(msg.get_attr("RTA_PRIORITY") or 0)
            held[(str(prefix), metric)] = {
                "dst": str(prefix),
                "oif": index,
                "priority": metric,
                "proto": RTPROT_SRV6CTL,
                "family": family,
            }
    return held


def _route_fields(link: HostLink, index: int, route: HostRoute) -> dict[str, Any]:
    version = route.prefix.version
    fields: dict[str, Any] = {
        "dst": str(route.prefix),
        "oif": index,
        "priority": route.metric,
        "proto": RTPROT_SRV6CTL,
        "prefsrc": str(link.source(version)),
    }
    if version == 6:
        fields["gateway"] = str(link.gateway)
    else:
        fields["family"] = socket.AF_INET
        fields["via"] = {"family": socket.AF_INET6, "addr": str(link.gateway)}
    return fields


UPLINKS_TABLE = "srv6ctl_uplinks"  # `netdev`, in VPP's namespace


def uplinks_script(devices: Sequence[str]) -> str:
    """The table that keeps the kernel's stack off the devices VPP reads by af_packet:
    an ingress chain per device that drops everything. A packet socket (VPP's port) gets
    its copy before the ingress hook, so VPP still sees every frame; the kernel, which
    now holds the node's addresses on the interconnect, would otherwise take frames for
    them too (Linux accepts a packet for any of its addresses on any interface), answer
    ARP for them, and reset connections VPP serves (a NodePort's)."""
    lines = [f"table netdev {UPLINKS_TABLE}", f"delete table netdev {UPLINKS_TABLE}"]
    if not devices:
        return "\n".join(lines) + "\n"
    lines.append(f"table netdev {UPLINKS_TABLE} {{")
    for device in sorted(devices):
        lines += [
            # Named after the device (hex: any name is safe): nft's JSON listing does not
            # say which device a netdev chain hooks.
            f"  chain in_{device.encode().hex()} {{",
            f'    type filter hook ingress device "{device}" priority 0; policy drop;',
            "  }",
        ]
    lines.append("}")
    return "\n".join(lines) + "\n"


def quiet_uplinks(devices: Sequence[str], netns: str | None) -> bool:
    """Make the kernel drop what arrives on `devices` (VPP's af_packet uplinks): the
    table holds exactly their chains. True if it wrote."""
    listing = list_table(netns, UPLINKS_TABLE, family="netdev")
    held = sorted(
        bytes.fromhex(str(item["chain"]["name"]).removeprefix("in_")).decode()
        for item in json.loads(listing or "{}").get("nftables", [])
        if "chain" in item
    )
    if held == sorted(devices):
        return False
    run_nft(netns, ["-f", "-"], uplinks_script(devices))
    return True


def default_routes(cluster: Sequence[IPNetwork], metric: int) -> tuple[HostRoute, ...]:
    """The cluster's prefixes at the kernel's default preference, and a default route of
    each family at `metric` (a management default route with a lower metric wins)."""
    defaults = (ipaddress.ip_network("::/0"), ipaddress.ip_network("0.0.0.0/0"))
    return tuple(HostRoute(p) for p in cluster) + tuple(HostRoute(p, metric) for p in defaults)


__all__ = [
    "ALIAS",
    "UPLINKS_TABLE",
    "HostLink",
    "HostRoute",
    "default_routes",
    "ensure",
    "index_of",
    "quiet_uplinks",
    "remove",
    "uplinks_script",
]
