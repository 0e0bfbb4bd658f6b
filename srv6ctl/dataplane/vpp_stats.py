"""What VPP counts, for `VppBackend.counters()`, and its boot time.

Per local SID, the binary API gives the counters (`sr_localsids_with_packet_stats_dump`).
Everything else is only in VPP's stats segment, read through its stats socket: per policy
the counters of the FIB entries steering into it (VPP has no policy counter of its own),
per pod port its interface counters, and `/sys/boottime`, which tells a restarted VPP from
a dropped API socket.
"""

from __future__ import annotations

import ipaddress
import logging
from collections import defaultdict
from collections.abc import Callable, Mapping
from typing import Any

from srv6ctl.dataplane.model import Counters, InterfaceCounters, IPNetwork, IPv6Address
from srv6ctl.dataplane.vpp_api import VppChannel
from srv6ctl.dataplane.vpp_fib_codec import FIB_SOURCE_SR, vpp_table
from srv6ctl.dataplane.vpp_interface_codec import pod_of_tag
from srv6ctl.dataplane.vpp_interfaces import VppInterface
from srv6ctl.dataplane.vpp_sr_codec import decode_steering

log = logging.getLogger(__name__)

Owns = Callable[[IPv6Address], bool]  # whether a SID or BSID is the backend's


class StatsSegment:
    """VPP's stats segment over `socket` (None: no stats), connected on first use.

    A segment goes stale when VPP restarts; whoever notices `forget`s it, and the next
    use connects again."""

    def __init__(self, socket: str | None) -> None:
        self.socket = socket
        self._stats: Any = None

    def connected(self) -> Any:
        """The connected `VPPStats`, or None (no socket, or it cannot be reached now)."""
        if self.socket is None:
            return None
        if self._stats is None:
            try:
                from vpp_papi.vpp_stats import VPPStats

                stats = VPPStats(socketname=self.socket, timeout=2)
                stats.connect()
            except Exception as err:
                log.warning("VPP stats socket %s: %s", self.socket, err)
                return None
            self._stats = stats
        return self._stats

    def boot_time(self) -> float | None:
        stats = self.connected()
        if stats is None:
            return None
        try:
            return float(stats["/sys/boottime"])
        except Exception as err:
            log.debug("boot time: %s", err)
            self._stats = None
            return None

    def forget(self) -> None:
        """Drop a segment found stale (connect again on next use)."""
        self._stats = None

    def disconnect(self) -> None:
        if self._stats is not None:
            try:
                self._stats.disconnect()
            except Exception as err:
                log.debug("stats disconnect: %s", err)
            self._stats = None


def localsid_counters(channel: VppChannel, owns: Owns) -> dict[Any, Counters]:
    """("localsid", sid) → good packets/bytes; errors = bad packets."""
    out: dict[Any, Counters] = {}
    for details in channel.dump("sr_localsids_with_packet_stats_dump"):
        sid = IPv6Address(details.addr)
        if owns(sid):
            out[("localsid", sid)] = Counters(
                packets=int(details.good_traffic_pkt_count),
                bytes=int(details.good_traffic_bytes),
                errors=int(details.bad_traffic_pkt_count),
            )
    return out


def policy_counters(channel: VppChannel, stats: Any, owns: Owns) -> dict[Any, Counters]:
    """("policy", bsid) → the counters summed over the FIB entries steering into it."""
    steered: dict[tuple[int, IPNetwork], IPv6Address] = {}
    for details in channel.dump("sr_steering_pol_dump"):
        st = decode_steering(details)
        if st is not None and owns(st.bsid):
            steered[(vpp_table(st.table), st.prefix)] = st.bsid
    if not steered:
        return {}
    route_to = stats["/net/route/to"]
    totals: dict[IPv6Address, list[int]] = defaultdict(lambda: [0, 0])
    for table_id, ipv6 in {(t, p.version == 6) for t, p in steered}:
        table = {"table_id": table_id, "is_ip6": ipv6, "name": ""}
        for details in channel.dump("ip_route_v2_dump", src=FIB_SOURCE_SR, table=table):
            prefix = ipaddress.ip_network(details.route.prefix, strict=False)
            bsid = steered.get((table_id, prefix))
            if bsid is None:
                continue
            index = int(details.route.stats_index)
            packets, octets = _combined(route_to, index)
            totals[bsid][0] += packets
            totals[bsid][1] += octets
    return {("policy", b): Counters(packets=p, bytes=o) for b, (p, o) in totals.items()}


def pod_counters(
    stats: Any, interfaces: Mapping[int, VppInterface]
) -> dict[Any, InterfaceCounters]:
    """("pod", interface) → InterfaceCounters of each pod port among
    `interfaces`, from the pod's point of view (receive = what VPP sent to the pod)."""
    ports = {
        iface.sw_if_index: name
        for iface in interfaces.values()
        if (name := pod_of_tag(iface.tag)) is not None
    }
    if not ports:
        return {}
    rx, tx = stats["/if/rx"], stats["/if/tx"]
    drops, tx_errors = stats["/if/drops"], stats["/if/tx-error"]
    out: dict[Any, InterfaceCounters] = {}
    for index, name in ports.items():
        rx_packets, rx_bytes = _combined(rx, index)
        tx_packets, tx_bytes = _combined(tx, index)
        # The pod's point of view: what VPP transmits on the port, the pod receives.
        out[("pod", name)] = InterfaceCounters(
            receive_packets=tx_packets,
            receive_bytes=tx_bytes,
            receive_drops=_simple(tx_errors, index),
            transmit_packets=rx_packets,
            transmit_bytes=rx_bytes,
            transmit_drops=_simple(drops, index),
        )
    return out


def _combined(counter: Any, index: int) -> tuple[int, int]:
    """Packets and bytes of `index` summed over VPP's threads (a combined counter)."""
    packets = octets = 0
    for per_thread in counter:
        if index < len(per_thread):
            value = per_thread[index]  # vpp_stats gives {"packets": n, "bytes": n}
            packets += int(value["packets"])
            octets += int(value["bytes"])
    return packets, octets


def _simple(counter: Any, index: int) -> int:
    total = 0
    for per_thread in counter:
        if index < len(per_thread):
            total += int(per_thread[index])
    return total


__all__ = ["StatsSegment", "localsid_counters", "pod_counters", "policy_counters"]
