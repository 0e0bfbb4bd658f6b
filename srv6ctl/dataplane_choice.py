"""The dataplane an agent runs: refused at start where it cannot work, made once chosen.

`--dataplane kernel` needs seg6/seg6local lightweight tunnels: a kernel without them stops
the agent before it claims anything, with one line naming what is missing
(`DataplaneUnavailable`); optional features the kernel lacks are logged once and left out.
`--dataplane vpp` programs FD.io VPP over its API socket; the CNI wiring makes each pod's
veth pair and VPP takes the node end as an af_packet port.
"""

from __future__ import annotations

import logging

from ipam6.plan import AddressPlan
from srv6ctl.dataplane import local_sources
from srv6ctl.dataplane.kernel import KernelBackend
from srv6ctl.dataplane.kernel_caps import probe_kernel
from srv6ctl.dataplane.model import Backend, IPNetwork

log = logging.getLogger("srv6ctl.agent")

DATAPLANES = ("kernel", "vpp")


class DataplaneUnavailable(RuntimeError):
    """The chosen dataplane cannot work on this host: the one line to stop with."""


def _require_known(dataplane: str) -> None:
    if dataplane not in DATAPLANES:
        raise DataplaneUnavailable(f"--dataplane {dataplane}: {' or '.join(DATAPLANES)}")


def check_dataplane(dataplane: str) -> None:
    """Refuse a kernel that cannot run the kernel dataplane, before anything is claimed
    or written; say once what an able kernel runs without."""
    _require_known(dataplane)
    if dataplane != "kernel":
        return
    features = probe_kernel()
    problem = features.unsupported()
    if problem is not None:
        raise DataplaneUnavailable(problem)
    if features.left_out():
        log.info("kernel %s: running without %s", features.kernel, "; ".join(features.left_out()))


def make_backend(
    dataplane: str,
    netns: str | None,
    plan: AddressPlan,
    node_id: int,
    *,
    vpp_api_socket: str,
    vpp_stats_socket: str | None,
    vpp_api_dir: str | None = None,
    vpp_host_interface: str | None = None,
) -> Backend:
    """The backend for `dataplane` in the node namespace `netns` (a path; None: this one)."""
    if dataplane == "vpp":
        # Only VPP nodes load the VPP modules: an agent's start-up is its import time.
        from srv6ctl.dataplane.host_link import default_routes
        from srv6ctl.dataplane.vpp import VppBackend
        from srv6ctl.dataplane.vpp_host import DEFAULT_ROUTE_METRIC, HostInterconnect

        log.info("VPP dataplane on %s", vpp_api_socket)
        return VppBackend(
            vpp_api_socket,
            api_dir=vpp_api_dir,
            stats_socket=vpp_stats_socket,
            # The CNI wiring makes the veth pair; VPP takes its node end by af_packet.
            pod_interface="af_packet",
            pod_gateway_v6=plan.gateway_v6(node_id),
            pod_gateway_v4=plan.gateway_v4(node_id),
            vpp_netns=netns,
            host=None
            if vpp_host_interface is None
            else HostInterconnect(
                vpp_host_interface, default_routes(_cluster_prefixes(plan), DEFAULT_ROUTE_METRIC)
            ),
        )
    _require_known(dataplane)
    backend = KernelBackend(netns or "/proc/self/ns/net")
    if plan.pod_cidr_v4 is not None:  # IPv6 has no martian check to relax
        turned = local_sources.ensure(netns, _cluster_prefixes(plan))
        if turned:
            log.info("uplinks %s accept the node's own IPv4 addresses from SRv6", turned)
    return backend


def _cluster_prefixes(plan: AddressPlan) -> list[IPNetwork]:
    """What the node's own stack always sends through VPP: the pods and the Services."""
    found = (plan.pod_cidr_v6, plan.pod_cidr_v4, plan.service_cidr_v6, plan.service_cidr_v4)
    return [prefix for prefix in found if prefix is not None]
