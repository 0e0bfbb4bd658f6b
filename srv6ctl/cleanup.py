"""`srv6ctl cleanup`: remove everything srv6ctl put on a node (the uninstall's last step).

The agent itself never tears its dataplane down — on SIGTERM it cannot tell an upgrade
from an uninstall, and pods must keep working across restarts. Uninstalling therefore
ends with this command on each node (deploy/README.md runs it as a one-shot DaemonSet):
it removes, by ownership mark only, the SRv6 routes and nexthops (protocol 92), the encap
source, the ip rules (protocol 92; the kernel's local rule goes back to priority 0), the
pods' node-side routes (protocol 106), every device marked ours by its alias
(`srv6ctl: …`: the SID device, the host loop, End.DT4/DT46's VRF devices, a VPP node's host
interconnect), the nftables tables by their names (`inet srv6ctl_host_ports`, a VPP node's
`netdev srv6ctl_uplinks`, whose ingress drop would otherwise keep the kernel off its own
uplinks), the uplinks' `accept_local` where the agent turned it on (with its guard,
`local_sources`), the CNI config and executable, and the agent's local state. Foreign
routes, rules, devices and tables are never touched.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from pyroute2 import IPRoute

from srv6ctl.dataplane import host_link, local_sources
from srv6ctl.dataplane.kernel import KernelBackend
from srv6ctl.dataplane.kernel_codec import OWN_ALIAS, VRF_DEVICE_PREFIX
from srv6ctl.dataplane.model import HOST_LOOP_DEVICE, NodeConfig
from srv6ctl.dataplane.nsenter import run_in_netns
from srv6ctl.dataplane.reconcile import plan

POD_ROUTE_PROTOCOL = 106  # cni.wiring marks the node-side routes to pods with it
SID_DEVICE = "srv6ctl0"


@dataclass
class CleanupReport:
    dataplane_changes: int = 0
    pod_routes: int = 0
    devices: list[str] = field(default_factory=list)
    tables: list[str] = field(default_factory=list)
    uplinks: list[str] = field(default_factory=list)  # accept_local turned off again
    files: list[str] = field(default_factory=list)


def _pod_routes_and_device(report: CleanupReport) -> None:
    with IPRoute() as ipr:
        for family in (2, 10):  # AF_INET, AF_INET6
            for route in ipr.get_routes(family=family, proto=POD_ROUTE_PROTOCOL):
                if route.get("proto") != POD_ROUTE_PROTOCOL:
                    continue
                ipr.route("del", **_route_key(route))
                report.pod_routes += 1
        for link in ipr.get_links():
            name = link.get_attr("IFLA_IFNAME")
            alias = link.get_attr("IFLA_IFALIAS") or ""
            # By name too: what releases before the alias mark made (a veth's peer goes
            # with it, and may be gone by the time the list reaches it).
            named = name in (SID_DEVICE, HOST_LOOP_DEVICE) or (
                name.startswith(VRF_DEVICE_PREFIX) and name[len(VRF_DEVICE_PREFIX) :].isdigit()
            )
            if (named or alias.startswith(OWN_ALIAS)) and ipr.link_lookup(ifname=name):
                ipr.link("del", index=link["index"])
                report.devices.append(name)


def _tables(netns: str | None, report: CleanupReport) -> None:
    report.uplinks = local_sources.remove(netns)
    if host_link.quiet_uplinks([], netns):  # no uplink left quiet: the table goes
        report.tables.append(f"netdev {host_link.UPLINKS_TABLE}")


def _route_key(route: object) -> dict[str, object]:
    msg = route  # a pyroute2 rtmsg
    key: dict[str, object] = {
        "family": msg["family"],  # type: ignore[index]
        "dst_len": msg["dst_len"],  # type: ignore[index]
        "table": msg.get_attr("RTA_TABLE") or msg["table"],  # type: ignore[attr-defined,index]
        "proto": POD_ROUTE_PROTOCOL,
    }
    dst = msg.get_attr("RTA_DST")  # type: ignore[attr-defined]
    if dst is not None:
        key["dst"] = dst
    oif = msg.get_attr("RTA_OIF")  # type: ignore[attr-defined]
    if oif is not None:
        key["oif"] = oif
    return key


def cleanup(
    netns: str | None,
    *,
    files: list[Path] | None = None,
    directories: list[Path] | None = None,
) -> CleanupReport:
    """Remove srv6ctl's objects from `netns` (None: this namespace) and the given paths."""
    report = CleanupReport()
    with KernelBackend(netns or "/proc/self/ns/net", configure_sysctls=False) as backend:
        changes = plan(NodeConfig(), backend.dump())
        backend.apply(changes)
        report.dataplane_changes = len(changes)
    run_in_netns(netns, lambda: _pod_routes_and_device(report))
    if shutil.which("nft") is not None:  # without it, no table of ours can exist
        _tables(netns, report)
    for path in files or []:
        if path.exists() or path.is_symlink():
            path.unlink()
            report.files.append(str(path))
    for directory in directories or []:
        if directory.exists():
            shutil.rmtree(directory)
            report.files.append(str(directory))
    return report
