"""Pod interface counters for the kernel dataplane: the node-side veth's netlink stats.

`LinkStats(netns).read(names)` dumps the links of the node's namespace once (RTM_GETLINK,
IFLA_STATS64) and returns the named ones as `InterfaceCounters`, turned round to the pod's
point of view: what the node-side end *transmits* is what the pod *receives*.
Pass `LinkStats(netns).read` as `interfaces=` to `DataplaneCollector`.

Not /sys/class/net: sysfs shows the namespace that mounted it, not the reader's.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from pyroute2 import IPRoute

from srv6ctl.dataplane.model import InterfaceCounters


def from_node_side(stats: dict[str, Any]) -> InterfaceCounters:
    """The pod's view of a node-side interface's IFLA_STATS64 (rx and tx swapped)."""
    return InterfaceCounters(
        receive_packets=int(stats.get("tx_packets", 0)),
        receive_bytes=int(stats.get("tx_bytes", 0)),
        receive_drops=int(stats.get("tx_dropped", 0)),
        transmit_packets=int(stats.get("rx_packets", 0)),
        transmit_bytes=int(stats.get("rx_bytes", 0)),
        transmit_drops=int(stats.get("rx_dropped", 0)),
    )


class LinkStats:
    """Reads interface counters in `netns` (a name under /run/netns or a path; None: ours)."""

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns

    def read(self, names: Collection[str]) -> dict[str, InterfaceCounters]:
        wanted = set(names)
        if not wanted:
            return {}
        out: dict[str, InterfaceCounters] = {}
        kwargs = {} if self.netns is None else {"netns": self.netns}
        with IPRoute(**kwargs) as ipr:
            for link in ipr.get_links():
                name = link.get("IFLA_IFNAME")
                if name in wanted:
                    stats = link.get("IFLA_STATS64") or link.get("IFLA_STATS") or {}
                    out[name] = from_node_side(dict(stats))
        return out
