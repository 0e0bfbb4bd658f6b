"""Interfaces and pod ports as VPP binary API messages (no I/O).

A pod's port is an af_packet interface on the node end of its veth pair, a tap VPP
creates straight into the pod's namespace, or a memif master on the pod's own socket;
each is tagged `srv6ctl:pod:<interface>` (the backend owns only tagged interfaces), set
into the pod table, given IPv6 and its link-local gateway address, unnumbered to the
gateway loopback, and reached through a static neighbour and a host route per pod
address. What the backend does with them, and in which order, is `vpp_pods`.
"""

from __future__ import annotations

import hashlib
import ipaddress
from typing import Any

from srv6ctl.dataplane.model import IPAddress, IPv4Address, IPv6Address, PodAttachment
from srv6ctl.dataplane.vpp_api import Request
from srv6ctl.dataplane.vpp_codec_base import INVALID_INDEX, ZERO4, InvalidObject
from srv6ctl.dataplane.vpp_fib_codec import FIB_PATH_TYPE_NORMAL, fib_path, route_fields

TAG_PREFIX = "srv6ctl:"
POD_TAG_PREFIX = TAG_PREFIX + "pod:"

# vl_api_if_status_flags_t
IF_STATUS_ADMIN_UP = 1
# vl_api_ip_neighbor_flags_t
IP_NEIGHBOR_FLAG_STATIC = 1
# vl_api_af_packet_mode_t / vl_api_af_packet_flags_t. CKSUM_GSO stays off: VPP 25.10 on a
# veth with offloads off corrupts every frame it sends with it (the CLI's cksum-gso-disable).
AF_PACKET_MODE_ETHERNET = 1
AF_PACKET_FLAG_QDISC_BYPASS = 1
# vl_api_memif_role_t / vl_api_memif_mode_t
MEMIF_ROLE_MASTER = 0
MEMIF_MODE_IP = 1


# --- tags -----------------------------------------------------------------------------


def pod_tag(interface: str) -> str:
    tag = POD_TAG_PREFIX + interface
    if len(tag.encode()) >= 64:
        raise InvalidObject(f"pod interface {interface!r}: name too long for a VPP tag")
    return tag


def pod_of_tag(tag: str) -> str | None:
    return tag[len(POD_TAG_PREFIX) :] if tag.startswith(POD_TAG_PREFIX) else None


# --- pod ports ------------------------------------------------------------------------


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


# --- interface settings ---------------------------------------------------------------


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


# --- the pod behind a port: MACs, neighbours, host routes -----------------------------


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
        {
            "is_add": not delete,
            "is_multipath": False,
            "route": route_fields(table_id, prefix, paths),
        },
        f"{'delete ' if delete else ''}pod route {prefix} dev {interface}",
    )


__all__ = [
    "AF_PACKET_FLAG_QDISC_BYPASS",
    "AF_PACKET_MODE_ETHERNET",
    "IF_STATUS_ADMIN_UP",
    "IP_NEIGHBOR_FLAG_STATIC",
    "MEMIF_MODE_IP",
    "MEMIF_ROLE_MASTER",
    "POD_TAG_PREFIX",
    "TAG_PREFIX",
    "af_packet_create",
    "af_packet_delete",
    "interface_address",
    "interface_ip6_enable",
    "interface_link_local",
    "interface_table",
    "interface_tag",
    "interface_unnumbered",
    "interface_up",
    "loopback_create",
    "memif_create",
    "memif_delete",
    "memif_socket_add",
    "memif_socket_del",
    "pod_neighbour",
    "pod_of_tag",
    "pod_route",
    "pod_tag",
    "port_mac",
    "tap_create",
    "tap_delete",
    "tap_host_mac",
]
