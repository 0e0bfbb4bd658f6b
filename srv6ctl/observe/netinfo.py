"""Small look-ups inside a network namespace (MACs, sysctls, nexthop buckets), over
netlink, procfs and iproute2, and sockets made there for probes."""

from __future__ import annotations

import ipaddress
import json
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute

from srv6ctl.dataplane.nsenter import run_in_netns


def _path(netns: str | None) -> str | None:
    if netns is None or netns.startswith("/"):
        return netns
    return f"/var/run/netns/{netns}"


def link_mac(netns: str | None, ifname: str) -> str:
    def body() -> str:
        with IPRoute() as ipr:
            (link,) = ipr.get_links(ifname=ifname)
            return str(link.get_attr("IFLA_ADDRESS"))

    return run_in_netns(_path(netns), body)


NUD_INCOMPLETE, NUD_FAILED = 0x01, 0x20  # with NUD_NONE (0): no usable MAC


def gateway_mac(netns: str | None, ifname: str, timeout: float = 2.0) -> str | None:
    """The MAC that the namespace's IPv6 default route on `ifname` resolves to — where
    the namespace's own stack sends (a kernel veth's MAC, or a VPP port's): resolved
    first, by one datagram to the discard port, if the neighbour cache has nothing."""

    def body() -> str | None:
        with IPRoute() as ipr:
            index = ipr.link_lookup(ifname=ifname)[0]
            gateway = next(
                (
                    r.get_attr("RTA_GATEWAY")
                    for r in ipr.get_routes(family=socket.AF_INET6)
                    if r["dst_len"] == 0
                    and r.get_attr("RTA_OIF") == index
                    and r.get_attr("RTA_GATEWAY")
                ),
                None,
            )
            if gateway is None:
                return None
            deadline = time.monotonic() + timeout
            asked = False
            while True:
                for neighbour in ipr.get_neighbours(family=socket.AF_INET6, ifindex=index):
                    if (
                        neighbour.get_attr("NDA_DST") == gateway
                        and neighbour.get_attr("NDA_LLADDR")
                        and neighbour["state"]
                        and not neighbour["state"] & (NUD_INCOMPLETE | NUD_FAILED)
                    ):
                        return str(neighbour.get_attr("NDA_LLADDR"))
                if time.monotonic() > deadline:
                    return None
                if not asked:
                    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
                        sock.sendto(b"", (gateway, 9, 0, index))
                    asked = True
                time.sleep(0.05)

    return run_in_netns(_path(netns), body)


def sysctl(netns: str | None, name: str) -> str:
    """A sysctl of that namespace (`/proc/sys/net` resolves to the reading thread's)."""
    path = Path("/proc/sys") / name.replace(".", "/")
    return run_in_netns(_path(netns), lambda: path.read_text().strip())


def _ip_json(netns: str | None, *args: str) -> Any:
    """iproute2's JSON: what `ip` shows a person is what the check reads (pyroute2 0.9 has
    no nexthop-bucket support)."""
    command = ["ip", *(["-n", netns] if netns and not netns.startswith("/") else []), "-j"]
    done = subprocess.run([*command, *args], capture_output=True, text=True, check=False)
    return json.loads(done.stdout) if done.returncode == 0 and done.stdout.strip() else []


Segments = tuple[ipaddress.IPv6Address, ...]


def group_buckets(netns: str | None, prefix: str) -> dict[Segments, int]:
    """The resilient group behind the route to `prefix`: each member's segment list and
    how many buckets it holds (0 for a member that has none yet); {} without a group."""
    family = "-6" if ":" in prefix else "-4"
    routes = _ip_json(netns, family, "route", "show", prefix)
    if not routes or "nhid" not in routes[0]:
        return {}
    group = str(routes[0]["nhid"])
    (info,) = _ip_json(netns, "nexthop", "show", "id", group) or [{}]
    members = [int(m["id"]) for m in info.get("group", [])]
    counts = Counter(
        int(b["bucket"]["nhid"]) for b in _ip_json(netns, "nexthop", "bucket", "show", "id", group)
    )
    out: dict[Segments, int] = {}
    for nh_id in members:
        (nexthop,) = _ip_json(netns, "nexthop", "show", "id", str(nh_id)) or [{}]
        segments = tuple(ipaddress.IPv6Address(s) for s in nexthop.get("segs", []))
        if segments:
            out[segments] = out.get(segments, 0) + counts.get(nh_id, 0)
    return out


def sockets_in(
    netns: str, make: Callable[[], socket.socket], count: int = 1
) -> list[socket.socket]:
    """`count` sockets created inside `netns` (they stay there, whoever uses them)."""
    return run_in_netns(_path(netns), lambda: [make() for _ in range(count)])
