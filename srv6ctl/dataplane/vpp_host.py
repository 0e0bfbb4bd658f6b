"""The node's own stack behind VPP: the host interconnect (`VppBackend(host=...)`).

Where VPP owns the uplink, as a NIC on a real VPP node (and `eth0` in the VPP lab), the
node's kernel has no path anywhere: not to the Services VPP steers (host-network clients,
kubelet's probes of a ClusterIP), not to its pods, not to the underlay; and what arrives
for the node's own addresses (a healthCheckNodePort, a host-network endpoint, SSH) ends
in VPP, which has no TCP stack to take it. Contiv-VPP gave the host a tap ("host
interconnect") and Calico-VPP a tap that replaces the uplink in the kernel; here:

- a veth pair in VPP's namespace (`host_link`): the kernel's end (`HostInterconnect.name`,
  `vpphost0` by default) holds the node's addresses — those VPP holds on its own
  interfaces, read from VPP — as host addresses, and routes the cluster's prefixes (pod
  and service CIDRs) and, at a low preference, everything else to VPP's link-local
  `fe80::1` on the other end;
- VPP's end, an af_packet port tagged `srv6ctl:host` (not an uplink: no rule applies to
  what the node sends), in the main table, IPv6 on with the pods' gateway link-local
  (`fe80::1`), unnumbered to the pods' gateway loopback so that IPv4 is enabled on it, up
  (`PodPorts.gateway_steps`, as a pod port);
- what VPP receives for its own addresses and has no use for is handed to the kernel
  (`ip punt redirect`, each family, from any interface): TCP and SCTP (VPP runs no session
  layer: unknown protocols are punted), and UDP to ports VPP does not serve (`set punt udp
  all`: VPP would answer port-unreachable otherwise). ICMP echo VPP answers itself. The
  redirect's next hop is the kernel's end, held as a static neighbour (its MAC is fixed)
  at `fe80::2` and `169.254.0.2`: neither address is configured anywhere, only resolved.

The node's connections to a Service whose endpoints are outside the cluster
(`Translation`) are translated in the node's kernel, as on a kernel node and in the same
nftables table (`host_ports`, `HostTranslations`): the kernel routes the ClusterIP through
the interconnect, so the output hook's DNAT sees it with no host loop needed.

So a connection of the node's goes out through VPP like a pod's (to a ClusterIP: steered
into the Service's SR policy, no NAT; the endpoint sees the node's address), and its
replies come back to the node's address, which VPP punts to the kernel. `ensure` is "make
it so", read first and written only where it differs (a restarted agent writes nothing);
it runs on every connection to VPP, before the replay, so a restarted VPP gets it again,
and at every full read (`VppBackend.dump`), so the kernel side follows VPP's addresses.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from policies.nftables import NftError, list_table, run_nft
from srv6ctl.dataplane import host_link, host_ports
from srv6ctl.dataplane import vpp_interface_codec as codec
from srv6ctl.dataplane.host_link import HostLink, HostRoute
from srv6ctl.dataplane.model import Change, IPAddress, IPv4Address, IPv6Address, Translation
from srv6ctl.dataplane.vpp_api import Request, VppChannel
from srv6ctl.dataplane.vpp_codec_base import ADDRESS_IP4, ADDRESS_IP6, INVALID_INDEX
from srv6ctl.dataplane.vpp_fib_codec import FIB_PATH_TYPE_NORMAL, fib_path, path_nexthop
from srv6ctl.dataplane.vpp_interfaces import Interfaces
from srv6ctl.dataplane.vpp_pods import neighbours

log = logging.getLogger(__name__)

HOST_TAG = codec.TAG_PREFIX + "host"
AF_PACKET_DEV_TYPE = "af-packet"  # sw_interface_details.interface_dev_type
HOST_MESSAGES = ("add_del_ip_punt_redirect_v2", "ip_punt_redirect_v2_dump", "set_punt")
DEFAULT_NAME = "vpphost0"
# Below any default route an operator sets up (the kernel's own default metric is 1024).
DEFAULT_ROUTE_METRIC = 4096
KERNEL_NEXT_HOP_V6 = IPv6Address("fe80::2")
KERNEL_NEXT_HOP_V4 = IPv4Address("169.254.0.2")
_PUNT_API_TYPE_L4 = 0
_IP_PROTO_TCP = 6
_IP_PROTO_UDP = 17
_MAX_NAME = 14  # IFNAMSIZ - 1, less the peer's "v"


@dataclass(frozen=True)
class HostInterconnect:
    """The interconnect's settings: the kernel end's name and what it routes to VPP."""

    name: str = DEFAULT_NAME
    routes: tuple[HostRoute, ...] = ()

    def __post_init__(self) -> None:
        if not 0 < len(self.name) <= _MAX_NAME or "/" in self.name or " " in self.name:
            raise ValueError(
                f"host interface {self.name!r}: 1 to {_MAX_NAME} characters, no '/' or space"
            )

    @property
    def peer(self) -> str:
        """VPP's end of the pair."""
        return f"{self.name}v"


class HostPort:
    """The interconnect of one VPP, over the backend's channel and interface list.

    `gateway_steps(index, up)` says what a port of ours lacks of being the pods' gateway
    (`PodPorts.gateway_steps`: link-local, unnumbered, up); `run` pipelines requests and
    raises on refusals."""

    def __init__(
        self,
        channel: VppChannel,
        interfaces: Interfaces,
        run: Callable[[Sequence[Request]], None],
        gateway_steps: Callable[[int, bool], list[Request]],
        link_local: IPv6Address,
        settings: HostInterconnect,
        netns: str | None,
    ) -> None:
        self.channel = channel
        self.interfaces = interfaces
        self._run = run
        self._gateway_steps = gateway_steps
        self.link_local = link_local  # VPP's on its end (the pods' gateway's)
        self.settings = settings
        self.netns = netns
        self.mac = codec.tap_host_mac(settings.name)

    def ensure(self) -> int:
        """Make the interconnect so on both sides; the number of VPP messages that wrote."""
        self.interfaces.load(refresh=True)  # once: the reads below use this list
        addresses = self.node_addresses()
        link = HostLink(
            name=self.settings.name,
            peer=self.settings.peer,
            mac=self.mac,
            gateway=self.link_local,
            gateway_mac=codec.port_mac(self.settings.peer),
            addresses=addresses,
            routes=self.settings.routes,
        )
        if host_link.ensure(link, self.netns):
            log.info("host interconnect %s: kernel side set up", link.name)
        if host_link.quiet_uplinks(self.af_packet_uplinks(), self.netns):
            log.info("the kernel's stack is kept off VPP's af_packet uplinks")
        steps = self._vpp_side({a.version for a in addresses})
        if steps:
            self._run(steps)
            self.interfaces.forget()
        return len(steps)

    def node_addresses(self) -> tuple[IPAddress, ...]:
        """The global addresses VPP holds on the interfaces that are not ours (the node's
        uplinks; the pods' gateway loopback is ours): the node's addresses."""
        found: list[IPAddress] = []
        for index in self.interfaces.uplinks():
            for ipv6 in (True, False):
                for details in self.channel.dump(
                    "ip_address_dump", sw_if_index=index, is_ipv6=ipv6
                ):
                    address = ipaddress.ip_interface(details.prefix).ip
                    if not address.is_link_local and address not in found:
                        found.append(address)
        return tuple(found)

    def af_packet_uplinks(self) -> list[str]:
        """The kernel devices under VPP's af_packet uplinks (`host-<device>`)."""
        return sorted(
            iface.name.removeprefix("host-")
            for index, iface in self.interfaces.load().items()
            if index in self.interfaces.uplinks() and iface.dev_type == AF_PACKET_DEV_TYPE
        )

    def port(self) -> int | None:
        found = self._port()
        return None if found is None else found[0]

    def _port(self) -> tuple[int, int | None] | None:
        """VPP's end and the kernel device its tag says it was made on (ifindex; None
        under a tag from before the index was kept)."""
        for iface in self.interfaces.load().values():
            if iface.tag == HOST_TAG or iface.tag.startswith(HOST_TAG + ":"):
                bound = iface.tag.removeprefix(HOST_TAG).removeprefix(":")
                return iface.sw_if_index, int(bound) if bound.isdigit() else None
        return None

    def remove(self) -> bool:
        """Take the interconnect away (cleanup): punts, VPP's port, the veth pair."""
        self.interfaces.load(refresh=True)
        index = self.port()
        steps = self._redirect_removal()
        punted = self._udp_punted()
        for version in (6, 4):
            if version in punted:
                steps += punt_unknown(version, add=False)
        if index is not None:
            steps += self._port_removal(index)
        if steps:
            self._run(steps)
            self.interfaces.forget()
        quieted = host_link.quiet_uplinks([], self.netns)
        return host_link.remove(self.settings.name, self.netns) or bool(steps) or quieted

    # --- VPP's end ------------------------------------------------------------------

    def _redirect_removal(self) -> list[Request]:
        return [punt_redirect(v, None) for v in (6, 4) if self._redirect(v) is not None]

    def _port_removal(self, index: int) -> list[Request]:
        # Its neighbours first: VPP keeps static ones past the interface (vpp_pods).
        steps = [
            codec.pod_neighbour(index, address, mac, delete=True)
            for address, mac in sorted(neighbours(self.channel, index), key=str)
        ]
        return [*steps, codec.af_packet_delete(self.settings.peer)]

    def _vpp_side(self, families: set[int]) -> list[Request]:
        device = host_link.index_of(self.settings.peer, self.netns)
        tag = f"{HOST_TAG}:{device}"
        found = self._port()
        steps: list[Request] = []
        if found is not None and found[1] not in (None, device):
            # The pair was made again (someone deleted it): VPP's packet socket stays
            # bound to the device that went, and would never pass a frame again.
            log.warning("host interconnect %s was re-made: VPP's end follows", self.settings.name)
            # The punt redirects too: VPP may give the new port the old one's index, and a
            # redirect to it would keep the old port's unresolved path.
            self._run(self._redirect_removal() + self._port_removal(found[0]))
            self.interfaces.load(refresh=True)
            found = None
        if found is None:
            request = codec.af_packet_create(self.settings.peer)
            reply = self.channel.call(request.name, write=True, what=request.what, **request.fields)
            found = (int(reply.sw_if_index), None)
            self.interfaces.load(refresh=True)
        index = found[0]
        iface = self.interfaces.load()[index]
        if iface.tag != tag:  # new, or tagged before the device was kept: this one
            steps.append(codec.interface_tag(index, tag))
        steps += self._gateway_steps(index, iface.up)
        held = neighbours(self.channel, index)
        punted = self._udp_punted()
        for version in sorted(families, reverse=True):
            hop = next_hop(version)
            if (hop, self.mac) not in held:
                steps.append(codec.pod_neighbour(index, hop, self.mac))
            if self._redirect(version) != (index, hop):
                steps.append(punt_redirect(version, (index, hop)))
            if version not in punted:
                steps += punt_unknown(version, add=True)
        return steps

    def _redirect(self, version: int) -> tuple[int, IPAddress | None] | None:
        """The default punt redirect of `version` (from any interface): its one path's
        (interface, next hop), or None without one."""
        for details in self.channel.dump(
            "ip_punt_redirect_v2_dump", sw_if_index=INVALID_INDEX, af=_af(version)
        ):
            punt = details.punt
            if int(punt.rx_sw_if_index) not in (0, INVALID_INDEX):
                continue
            paths = punt.paths[: punt.n_paths]
            if len(paths) != 1:
                return (INVALID_INDEX, None)
            return (int(paths[0].sw_if_index), path_nexthop(paths[0]))
        return None

    def _udp_punted(self) -> set[int]:
        """The families whose UDP to ports VPP does not serve it punts (no API reads it
        back: its CLI says)."""
        shown = str(self.channel.call("cli_inband", cmd="show udp punt").reply)
        return {v for v in (6, 4) if f"IPv{v} UDP punt: enabled" in shown}


class HostTranslations:
    """The node's own connections' `Translation`s, in its kernel (VPP's namespace
    `netns`): the `host_ports` table, rewritten whole on each change (a node has few:
    Services with endpoints outside the cluster) and read back from its chains."""

    def __init__(self, netns: str | None) -> None:
        self.netns = netns
        self._held: dict[Any, Translation] | None = None

    def able(self) -> str | None:
        """None if the kernel here takes the table (`nft -c`: checked, not loaded), else
        why not."""
        try:
            run_nft(self.netns, ["-c", "-f", "-"], host_ports.probe_script())
        except (NftError, OSError) as error:
            return str(error).splitlines()[0] if str(error) else type(error).__name__
        return None

    def held(self) -> list[Translation]:
        listing = list_table(self.netns, host_ports.TABLE)
        translations = host_ports.parse_translations_listing(listing)
        self._held = {t.key: t for t in translations}
        return translations

    def apply(self, change: Change) -> None:
        held: dict[Any, Translation] = (
            self._held if self._held is not None else {t.key: t for t in self.held()}
        )
        if isinstance(change.old, Translation):
            held.pop(change.old.key, None)
        if isinstance(change.new, Translation):
            held[change.new.key] = change.new
        self._held = None  # read again if the load below fails
        run_nft(self.netns, ["-f", "-"], host_ports.script([], held.values(), refuse_inbound=True))
        self._held = held


def next_hop(version: int) -> IPAddress:
    return KERNEL_NEXT_HOP_V6 if version == 6 else KERNEL_NEXT_HOP_V4


def _af(version: int) -> int:
    return ADDRESS_IP6 if version == 6 else ADDRESS_IP4


def punt_redirect(version: int, to: tuple[int, IPAddress] | None) -> Request:
    """What VPP punts (from any interface) goes to `to` (interface, next hop); None:
    removed. An add over an existing one replaces it."""
    paths: list[dict[str, Any]] = []
    if to is not None:
        index, hop = to
        paths.append(
            fib_path(FIB_PATH_TYPE_NORMAL, ipv6=version == 6, nexthop=hop, sw_if_index=index)
        )
    return Request(
        "add_del_ip_punt_redirect_v2",
        {
            "is_add": to is not None,
            "punt": {
                "rx_sw_if_index": INVALID_INDEX,
                "af": _af(version),
                "n_paths": len(paths),
                "paths": paths,
            },
        },
        f"IPv{version} punt redirect " + ("removed" if to is None else f"to {to[1]} on {to[0]}"),
    )


def punt_unknown(version: int, *, add: bool) -> list[Request]:
    """UDP and TCP to ports VPP does not serve: punted (add) or answered by VPP (VPP reads
    the TCP one only with a session layer; without, TCP is an unknown protocol, punted)."""
    return [
        Request(
            "set_punt",
            {
                "is_add": add,
                "punt": {
                    "type": _PUNT_API_TYPE_L4,
                    "punt": {"l4": {"af": _af(version), "protocol": protocol, "port": 0xFFFF}},
                },
            },
            f"{'punt' if add else 'stop punting'} unknown IPv{version} "
            f"{'UDP' if protocol == _IP_PROTO_UDP else 'TCP'} ports",
        )
        for protocol in (_IP_PROTO_UDP, _IP_PROTO_TCP)
    ]


__all__ = [
    "DEFAULT_NAME",
    "DEFAULT_ROUTE_METRIC",
    "HOST_MESSAGES",
    "HOST_TAG",
    "HostInterconnect",
    "HostPort",
    "HostTranslations",
    "punt_redirect",
    "punt_unknown",
]
