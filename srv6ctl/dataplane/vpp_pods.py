"""Pod ports in VPP: made, kept as the pod says, and removed (for `VppBackend`).

A `PodAttachment` is the *VPP side* of a pod (the backend's apply hands ADD/REPLACE here
as "make it so", writing only what is missing, and DELETE as "remove it"): a port tagged
`srv6ctl:pod:<interface>` — an af_packet interface on the node end of the pod's veth pair
(created by the CNI wiring, which in VPP mode leaves that end unaddressed; we switch its
kernel IPv6 off, in `vpp_netns`, so that only VPP answers there), or, where the kernel has
/dev/vhost-net, a tap that VPP creates straight into the pod's namespace, named, addressed
and with its default routes; or, for a pod whose `interface_type` is "memif" (a CNF), a
memif master in IP mode on the pod's own socket (`memif_socket`, made on demand and
removed with the port), which needs no neighbour. An af_packet port's MAC is derived from
its interface name, so a restarted VPP gives the pods' neighbour caches the MAC they
hold. Then: the port in the pod table, IPv6 on with `fe80::1` (the pods' default gateway)
as its link-local address, unnumbered to a loopback tagged `srv6ctl:gateway` that holds
the node's pod gateways (`pod_gateway_v6/v4`, the plan's `::1`/`.1`: VPP needs a global
source address on the egress interface for neighbour solicitations and ICMPv6 errors
towards a pod), up, a static neighbour per pod address (End.DX6 never resolves its next
hop itself, see `PodPorts._neighbours`; none on a memif), and a host route to each pod
address through the port. A port of the wrong kind (the pod's annotation seen after its
CNI ADD) is re-made. The host routes belong to their port, not to the model's `routes`
(`is_pod_host_route`).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import stat
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from srv6ctl.dataplane import vpp_interface_codec as codec
from srv6ctl.dataplane.model import (
    MEMIF,
    Change,
    IPAddress,
    IPv4Address,
    IPv6Address,
    PodAttachment,
)
from srv6ctl.dataplane.nsenter import ensure_sysctls, run_in_netns
from srv6ctl.dataplane.vpp_api import MEMIF_MESSAGES, Request, VppApiError, VppChannel, VppError
from srv6ctl.dataplane.vpp_codec_base import ADDRESS_IP4, ADDRESS_IP6, InvalidObject
from srv6ctl.dataplane.vpp_fib_codec import FIB_SOURCE_API, path_nexthop
from srv6ctl.dataplane.vpp_interfaces import Interfaces
from srv6ctl.dataplane.vpp_tables import Tables

log = logging.getLogger(__name__)

PodInterfaceKind = Literal["auto", "af_packet", "tap"]
PortKind = Literal["af_packet", "tap"]  # what a veth pod's port is ("auto" resolved)
POD_LINK_LOCAL = IPv6Address("fe80::1")
GATEWAY_TAG = codec.TAG_PREFIX + "gateway"
VHOST_NET = "/dev/vhost-net"
MEMIF_DEV_TYPE = "memif"  # sw_interface_details.interface_dev_type of a memif


@dataclass(frozen=True)
class PodPort:
    """A pod's port in VPP, as `pod_ports()` reports it."""

    interface: str  # the model's name (the tag's suffix)
    sw_if_index: int
    vpp_name: str  # e.g. host-s6abc..., tap3
    dev_type: str  # VPP's interface_dev_type: "af-packet", or "virtio" for a tap
    up: bool


def port_kind(wanted: PodInterfaceKind) -> PortKind:
    """`auto`: a tap where the kernel has /dev/vhost-net (VPP's taps need it), else
    af_packet."""
    if wanted == "auto":
        wanted = "tap" if os.path.exists(VHOST_NET) else "af_packet"
    if wanted not in ("af_packet", "tap"):
        raise ValueError(f"pod_interface {wanted!r}: af_packet, tap or auto")
    return wanted


class PodPorts:
    """The pods' ports in one VPP, over the backend's channel and interface list.

    `run` pipelines a batch of requests and raises on refusals (the backend's, so that
    its window and error handling hold here too)."""

    def __init__(
        self,
        channel: VppChannel,
        interfaces: Interfaces,
        tables: Tables,
        run: Callable[[Sequence[Request]], None],
        *,
        kind: PortKind,
        table_id: int,
        link_local: IPv6Address,
        gateway_v6: IPv6Address | None,
        gateway_v4: IPv4Address | None,
        vpp_netns: str | None,
    ) -> None:
        self.channel = channel
        self.interfaces = interfaces
        self.tables = tables
        self._run = run
        self.kind = kind
        self.table_id = table_id  # VPP's id of the pod table
        self.link_local = link_local
        self.gateway_v6 = gateway_v6
        self.gateway_v4 = gateway_v4
        self.vpp_netns = vpp_netns  # VPP's network namespace (None: ours)
        self._memif_sockets: set[str] = set()  # deleted in VPP, to remove from the disk

    def ports(self) -> dict[str, PodPort]:
        """Our pod ports in VPP, by the pod's interface name."""
        ports = {}
        for iface in self.interfaces.load().values():
            name = codec.pod_of_tag(iface.tag)
            if name is not None:
                ports[name] = PodPort(name, iface.sw_if_index, iface.name, iface.dev_type, iface.up)
        return ports

    def apply(self, change: Change) -> None:
        """A pod's plan step: ADD/REPLACE make its port so (writing only what is missing;
        addresses it no longer has lose their neighbour and route), DELETE removes it."""
        if change.new is None:
            assert isinstance(change.old, PodAttachment)
            self.remove(change.old.interface)
            return
        assert isinstance(change.new, PodAttachment)
        stale: frozenset[Any] = frozenset()
        if isinstance(change.old, PodAttachment):
            stale = frozenset(a.ip for a in change.old.addresses) - {
                a.ip for a in change.new.addresses
            }
        self.ensure(change.new, stale)

    def ensure(self, pod: PodAttachment, stale: Iterable[Any] = ()) -> None:
        """Make the pod's port as this module's docstring says, reading first what VPP
        has, so that a port already right costs no write; `stale`: addresses to unroute."""
        self.interfaces.load(refresh=True)
        port = self.interfaces.pod_port(pod.interface)
        memif = pod.interface_type == MEMIF
        if port is not None and (port.dev_type == MEMIF_DEV_TYPE) != memif:
            # The pod's annotation and its port disagree (e.g. the CNI ADD came before the
            # API showed us the pod): the port is re-made as the annotation says.
            log.info("pod %s: its VPP port becomes a %s", pod.pod, pod.interface_type or "veth")
            self.remove(pod.interface)
            port = None
        if port is None:
            index = self._create(pod)
            port = self.interfaces.load(refresh=True).get(index)
            if port is None:
                raise VppApiError(f"pod {pod.pod}: VPP created port {index} but does not list it")
        index = port.sw_if_index
        steps: list[Request] = []
        if self.table_id != 0:
            for ipv6 in (False, True):
                reply = self.channel.call("sw_interface_get_table", sw_if_index=index, is_ipv6=ipv6)
                if int(reply.vrf_id) != self.table_id:
                    steps.append(codec.interface_table(index, self.table_id, ipv6))
        steps += self.gateway_steps(index, port.up)
        if not memif:  # IP mode: no L2, no neighbours
            steps += self._neighbours(pod, index, stale)
        for address in sorted(stale, key=lambda a: (a.version, int(a))):
            steps.append(codec.pod_route(address, index, self.table_id, pod.interface, delete=True))
        for address in sorted((a.ip for a in pod.addresses), key=lambda a: (a.version, int(a))):
            if not self._has_pod_route(address, index):
                steps.append(codec.pod_route(address, index, self.table_id, pod.interface))
        self._run(steps)
        self.interfaces.forget()

    def gateway_steps(self, index: int, up: bool) -> list[Request]:
        """What a port of ours (a pod's, the host interconnect's) lacks of being the
        pods' gateway: IPv6 on with `link_local`, unnumbered to the gateway loopback (made
        when missing), up."""
        steps: list[Request] = []
        try:
            reply = self.channel.call("sw_interface_ip6_get_link_local_address", sw_if_index=index)
            link_local: IPv6Address | None = IPv6Address(reply.ip)
        except VppError:
            link_local = None  # IPv6 not enabled on it yet (-62)
        if link_local != self.link_local:
            steps.append(codec.interface_ip6_enable(index))
            steps.append(codec.interface_link_local(index, self.link_local))
        gateway = self.gateway_loopback()
        if gateway is not None:
            borrowed = self.channel.dump("ip_unnumbered_dump", sw_if_index=index)
            if not any(int(d.ip_sw_if_index) == gateway for d in borrowed):
                steps.append(codec.interface_unnumbered(index, gateway))
        if not up:
            steps.append(codec.interface_up(index))
        return steps

    def _neighbours(self, pod: PodAttachment, index: int, stale: Iterable[Any]) -> list[Request]:
        """Static neighbours for the pod's addresses. End.DX6/DX4 hand a packet straight to
        the neighbour's adjacency, which never starts neighbour discovery: while it is
        incomplete VPP 25.10 sends the packet to ip6-rewrite with no MAC and drops it
        ("ip6-frag: malformed packet"). So VPP is told the pod's MAC instead of asking."""
        mac = self._mac(pod)
        if mac is None:
            return []
        held = neighbours(self.channel, index)
        steps = [
            codec.pod_neighbour(index, address, held_mac, delete=True)
            for address, held_mac in sorted(held, key=lambda h: (h[0].version, int(h[0])))
            if address in set(stale) or held_mac != mac
        ]
        for address in sorted((a.ip for a in pod.addresses), key=lambda a: (a.version, int(a))):
            if (address, mac) not in held:
                steps.append(codec.pod_neighbour(index, address, mac))
        return steps

    def _mac(self, pod: PodAttachment) -> str | None:
        if self.kind == "tap":
            return codec.tap_host_mac(pod.interface)

        def read() -> str | None:
            from pyroute2 import IPRoute

            with IPRoute() as ipr:
                links = ipr.get_links(ifname=pod.container_interface)
                return str(links[0].get_attr("IFLA_ADDRESS")) if links else None

        try:
            return run_in_netns(pod.netns, read)
        except Exception as err:
            log.warning(
                "pod %s: cannot read the MAC of %s in %s (%s): VPP will not reach it by "
                "End.DX6 until it is resolved otherwise",
                pod.pod,
                pod.container_interface,
                pod.netns,
                err,
            )
            return None

    def _create(self, pod: PodAttachment) -> int:
        if pod.interface_type == MEMIF:
            return self._memif_create(pod)
        if self.kind == "tap":
            request = codec.tap_create(pod, self.link_local, self.gateway_v4)
            reply = self.channel.call(request.name, write=True, what=request.what, **request.fields)
            return int(reply.sw_if_index)
        _kernel_side_quiet(self.vpp_netns, pod.interface)
        request = codec.af_packet_create(pod.interface)
        reply = self.channel.call(request.name, write=True, what=request.what, **request.fields)
        index = int(reply.sw_if_index)
        self._run([codec.interface_tag(index, codec.pod_tag(pod.interface))])
        return index

    def _memif_create(self, pod: PodAttachment) -> int:
        """A memif master on the pod's own socket (made when missing), tagged as its port."""
        if not set(MEMIF_MESSAGES) <= self.channel.available:
            raise InvalidObject(
                f"pod {pod.pod}: a memif port needs VPP's memif plugin, which this VPP lacks"
            )
        if not pod.memif_socket.startswith("/"):
            raise InvalidObject(f"pod {pod.pod}: memif socket {pod.memif_socket!r} not absolute")
        try:
            os.makedirs(os.path.dirname(pod.memif_socket), mode=0o755, exist_ok=True)
        except OSError as err:  # VPP may see another /run: it makes the directory itself
            log.debug("memif directory for %s: %s", pod.pod, err)
        socket_id = self._memif_socket_id(pod.memif_socket)
        if socket_id is None:
            request = codec.memif_socket_add(pod.memif_socket)
            reply = self.channel.call(request.name, write=True, what=request.what, **request.fields)
            socket_id = int(reply.socket_id)
        request = codec.memif_create(socket_id, pod)
        reply = self.channel.call(request.name, write=True, what=request.what, **request.fields)
        index = int(reply.sw_if_index)
        self._run([codec.interface_tag(index, codec.pod_tag(pod.interface))])
        return index

    def _memif_socket_id(self, path: str) -> int | None:
        for details in self.channel.dump("memif_socket_filename_dump"):
            if str(details.socket_filename) == path:
                return int(details.socket_id)
        return None

    def _memif_remove(self, index: int, interface: str) -> list[Request]:
        """Delete a memif port, then its socket file when no other memif uses it."""
        memifs = {int(d.sw_if_index): int(d.socket_id) for d in self.channel.dump("memif_dump")}
        socket_id = memifs.pop(index, None)
        steps = [codec.memif_delete(index, interface)]
        # Socket 0 is VPP's default socket, never ours.
        if socket_id is not None and socket_id != 0 and socket_id not in memifs.values():
            paths = {
                int(d.socket_id): str(d.socket_filename)
                for d in self.channel.dump("memif_socket_filename_dump")
            }
            path = paths.get(socket_id, "")
            steps.append(codec.memif_socket_del(socket_id, path))
            if path:
                self._memif_sockets.add(path)
        return steps

    def _has_pod_route(self, address: Any, sw_if_index: int) -> bool:
        prefix = ipaddress.ip_network((address, 128 if address.version == 6 else 32))
        try:
            reply = self.channel.call(
                "ip_route_lookup", table_id=self.table_id, exact=1, prefix=prefix
            )
        except VppError:
            return False
        paths = reply.route.paths[: reply.route.n_paths]
        return (
            len(paths) == 1
            and int(paths[0].sw_if_index) == sw_if_index
            and (path_nexthop(paths[0]) == address)
        )

    def gateway_loopback(self) -> int | None:
        """The loopback holding the pods' gateway addresses (made when missing), or None
        without gateways. Pod ports are unnumbered to it: VPP sources its neighbour
        solicitations and ICMPv6 errors towards a pod from an address of the egress
        interface (ip6_sas_by_sw_if_index), and a link-local one serves only link-local
        destinations — without a global gateway address no pod is ever resolved."""
        wanted: list[ipaddress.IPv4Interface | ipaddress.IPv6Interface] = []
        if self.gateway_v6 is not None:
            wanted.append(ipaddress.IPv6Interface((self.gateway_v6, 128)))
        if self.gateway_v4 is not None:
            wanted.append(ipaddress.IPv4Interface((self.gateway_v4, 32)))
        if not wanted:
            return None
        index = next(
            (i.sw_if_index for i in self.interfaces.load().values() if i.tag == GATEWAY_TAG),
            None,
        )
        steps: list[Request] = []
        if index is None:
            request = codec.loopback_create(GATEWAY_TAG)
            reply = self.channel.call(request.name, write=True, what=request.what, **request.fields)
            index = int(reply.sw_if_index)
            steps.append(codec.interface_tag(index, GATEWAY_TAG))
            if self.table_id != 0:
                steps.append(codec.interface_table(index, self.table_id, False))
                steps.append(codec.interface_table(index, self.table_id, True))
            steps.append(codec.interface_up(index))
            held: set[Any] = set()
        else:
            held = {
                ipaddress.ip_interface(d.prefix)
                for ipv6 in (False, True)
                for d in self.channel.dump("ip_address_dump", sw_if_index=index, is_ipv6=ipv6)
            }
        steps += [codec.interface_address(index, prefix) for prefix in wanted if prefix not in held]
        if steps:
            self._run(steps)
            self.interfaces.forget()
        return index

    def remove(self, interface: str) -> None:
        """Remove the port of pod interface `interface`, with its host routes (and its
        memif socket when no other memif uses it); nothing if it has none."""
        self.interfaces.load(refresh=True)
        port = self.interfaces.pod_port(interface)
        if port is None:
            return
        index = port.sw_if_index
        # Its static neighbours first: VPP 25.10 keeps them (and their adjacency routes,
        # through the deleted interface) after the interface goes, and the next neighbour
        # of the same address on another port resolves that stale path and crashes VPP
        # (fib_table_get_table_id_for_sw_if_index on a deleted interface).
        steps: list[Request] = [
            codec.pod_neighbour(index, address, mac, delete=True)
            for address, mac in sorted(neighbours(self.channel, index), key=_neighbour_order)
        ]
        for table_id, ipv6 in sorted(self.tables.ours()):
            table = {"table_id": table_id, "is_ip6": ipv6, "name": ""}
            for details in self.channel.dump("ip_route_v2_dump", src=FIB_SOURCE_API, table=table):
                paths = details.route.paths[: details.route.n_paths]
                if paths and all(int(p.sw_if_index) == index for p in paths):
                    prefix = ipaddress.ip_network(details.route.prefix, strict=False)
                    steps.append(
                        codec.pod_route(
                            prefix.network_address, index, table_id, interface, delete=True
                        )
                    )
        if port.dev_type == "virtio":
            steps.append(codec.tap_delete(index, interface))
        elif port.dev_type == MEMIF_DEV_TYPE:
            steps += self._memif_remove(index, interface)
        else:
            steps.append(codec.af_packet_delete(port.name.removeprefix("host-")))
        self._run(steps)
        self.interfaces.forget()
        while self._memif_sockets:
            _remove_memif_socket(self._memif_sockets.pop())


def neighbours(channel: VppChannel, sw_if_index: int) -> set[tuple[IPAddress, str]]:
    """The static neighbours VPP holds on an interface: (address, MAC)."""
    held = set()
    for af in (ADDRESS_IP6, ADDRESS_IP4):
        for details in channel.dump("ip_neighbor_dump", sw_if_index=sw_if_index, af=af):
            neighbour = details.neighbor
            if int(neighbour.flags) & codec.IP_NEIGHBOR_FLAG_STATIC:
                address = ipaddress.ip_address(str(neighbour.ip_address))
                held.add((address, str(neighbour.mac_address).lower()))
    return held


def _neighbour_order(item: tuple[IPAddress, str]) -> tuple[int, int]:
    return (item[0].version, int(item[0]))


def is_pod_host_route(route: Any, pod_ports: set[int]) -> bool:
    """A pod port's host route (`vpp_interface_codec.pod_route`): one path, through the
    port, to the prefix's own address. Any other route through a pod port (an operator's,
    say, via the pod's link-local address) is a `Route` like any other and must be dumped
    as one, or reconcile would add it again on every pass."""
    paths = route.paths[: route.n_paths]
    if len(paths) != 1 or int(paths[0].sw_if_index) not in pod_ports:
        return False
    prefix = ipaddress.ip_network(route.prefix, strict=False)
    host = prefix.prefixlen == prefix.max_prefixlen
    return host and path_nexthop(paths[0]) == prefix.network_address


def _remove_memif_socket(path: str) -> None:
    """The socket file and the pod's directory of a memif socket VPP has deleted (VPP
    25.10 leaves the file behind). Only a socket is removed, and only an empty directory;
    where VPP's /run is not ours to see, nothing is."""
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
        os.rmdir(os.path.dirname(path))
    except OSError as err:
        log.debug("memif socket %s: %s", path, err)


def _kernel_side_quiet(netns: str | None, interface: str) -> None:
    """Switch the kernel's IPv6 off on the veth end VPP takes over, so that only VPP
    answers neighbour discovery there (in VPP's namespace: `vpp_netns`)."""
    result = ensure_sysctls(netns, {f"net/ipv6/conf/{interface}/disable_ipv6": "1"})
    for refusal in result.refused:
        log.warning("%s (is vpp_netns VPP's namespace?)", refusal)


__all__ = [
    "GATEWAY_TAG",
    "MEMIF_DEV_TYPE",
    "POD_LINK_LOCAL",
    "VHOST_NET",
    "PodInterfaceKind",
    "PodPort",
    "PodPorts",
    "PortKind",
    "is_pod_host_route",
    "neighbours",
    "port_kind",
]
