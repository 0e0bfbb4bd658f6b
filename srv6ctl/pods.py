"""This node's pods in the dataplane: what is theirs beyond routes and SIDs.

Inside each pod (both dataplanes), its service ClusterIPs on loopback and its stateless
port rewrites (`srv6ctl.podnet`); in VPP mode, the node end of each pod's veth as a VPP
port, attached before CNI ADD returns (the pod has a network when its containers start)
and detached on DEL, and at each full resync every wired pod's port made whole and the
ports of pods this node no longer has detached.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from ipam6.allocator import PodAllocation
from srv6ctl.dataplane.model import (
    POD,
    Change,
    NodeConfig,
    Op,
    PodAttachment,
    kind_of,
    pod_interface_fields,
)
from srv6ctl.podnet import PodNetworkProgrammer
from srv6ctl.reconciler import Reconciler
from srv6ctl.render import RenderDelta

log = logging.getLogger("srv6ctl.agent")


class PodPrograms:
    def __init__(self, podnet: PodNetworkProgrammer, reconciler: Reconciler, vpp: bool) -> None:
        self.podnet = podnet
        self.reconciler = reconciler
        self.vpp = vpp  # VPP owns the node ends of the pods' veths
        self._ports: set[str] = set()  # VPP mode: the node ends of this node's pods
        self._lock = threading.Lock()

    # --- CNI threads ----------------------------------------------------------------------

    def known(self, interface: str) -> None:
        """A pod the store says this node has (read at start): its port is not a leftover."""
        with self._lock:
            self._ports.add(interface)

    def wired(
        self, allocation: PodAllocation, interface: str, netns: str, interface_type: str
    ) -> None:
        """VPP mode: attach the pod's port now. A failure fails the ADD ("try again
        later"), which the runtime retries."""
        if not self.vpp:
            return
        attachment = _vpp_attachment(allocation, interface, netns, interface_type)
        with self.reconciler.lock:
            self.reconciler.backend.apply([Change(Op.ADD, new=attachment)])
            with self._lock:  # before the backend lock goes: a resync must not detach it
                self._ports.add(interface)

    def unwired(self, interface: str) -> None:
        if self.vpp:
            self._detach(interface)
        with self._lock:
            self._ports.discard(interface)

    def _detach(self, interface: str) -> None:
        try:
            with self.reconciler.lock:
                self.reconciler.backend.detach_pod(interface)  # type: ignore[attr-defined]
        except Exception as err:  # DEL must not fail for it; the next resync retries
            log.warning("detaching %s from VPP: %s", interface, err)

    # --- the agent's loop -------------------------------------------------------------------

    def full(self, desired: NodeConfig) -> None:
        """Every pod made whole (a read each when nothing is missing)."""
        if self.vpp:
            self._vpp_ports(desired)
        for pod in desired.pods:
            self._sync(pod)

    def update(self, delta: RenderDelta) -> None:
        added = {p.key: p for p in delta.added if kind_of(p) is POD}
        for pod in added.values():
            self._sync(pod)  # type: ignore[arg-type]
        for pod in delta.removed:
            if kind_of(pod) is POD and pod.key not in added:
                self._clear(pod)  # type: ignore[arg-type]

    def _vpp_ports(self, desired: NodeConfig) -> None:
        wired = {p.interface: p for p in desired.pods if p.netns and os.path.exists(p.netns)}
        with self.reconciler.lock:
            with self._lock:
                known = set(self._ports)
            backend: Any = self.reconciler.backend
            for interface in set(backend.pod_ports()) - known - set(wired):
                log.info("detaching %s from VPP: no pod of this node uses it", interface)
                backend.detach_pod(interface)
            for pod in wired.values():
                try:
                    backend.apply([Change(Op.ADD, new=pod)])
                except Exception as err:  # one pod must not stop the others
                    log.warning("pod %s: VPP port: %s", pod.pod, err, extra={"pod": pod.pod})

    def _sync(self, pod: PodAttachment) -> None:
        if not pod.netns or not os.path.exists(pod.netns):
            return
        try:
            done = self.podnet.sync(pod)
        except Exception as err:  # one pod must not stop the others
            log.warning("pod %s: %s", pod.pod, err, extra={"pod": pod.pod})
            return
        if done.writes:
            log.info(
                "pod %s: service addresses +%s -%s, port rewrites %s",
                pod.pod,
                [str(a) for a in done.added],
                [str(a) for a in done.removed],
                "replaced" if done.rewrites_replaced else "unchanged",
                extra={
                    "pod": pod.pod,
                    "service": ",".join(sorted(map(str, pod.service_addresses))),
                },
            )

    def _clear(self, pod: PodAttachment) -> None:
        if pod.netns and os.path.exists(pod.netns):
            try:
                self.podnet.clear(pod.netns)
            except Exception as err:
                log.warning("pod %s: %s", pod.pod, err, extra={"pod": pod.pod})


def _vpp_attachment(
    allocation: PodAllocation, interface: str, netns: str, interface_type: str = ""
) -> PodAttachment:
    """The VPP side of a freshly wired pod (what the renderer makes of it, less the
    service memberships, which VPP does not hold). A pod the API has not shown us yet gets
    the usual port; a memif annotation seen later turns it into a memif at the resync."""
    addresses = allocation.addresses
    prefixes = [f"{addresses.ipv6}/128"]
    if addresses.ipv4 is not None:
        prefixes.append(f"{addresses.ipv4}/32")
    return PodAttachment(
        interface=interface,
        pod=allocation.pod,
        netns=netns,
        container_interface=allocation.interface,
        addresses=frozenset(prefixes),  # type: ignore[arg-type]
        **pod_interface_fields(interface_type, allocation.uid),
    )
