"""What the agent does for the CNI server (srv6-cni's requests arrive on its threads).

A pod wired or removed changes render's inputs (its node-side interface and what it was
given), and the loop is told to render: its attachment then goes through the plan like any
other object. In VPP mode, ADD waits for the loop to have attached the pod's port (or fails
with why it could not: "try again later"). ADD is refused until the dataplane has been
programmed once, and CHECK asks whether the pod's End.DX6 SID is. In VPP mode, DEL waits
for the loop to have let go of the pod's port before the veth goes, the reverse of ADD:
VPP 25.10's af_packet whose host interface vanishes under it logs "Network is down" and
keeps sending into it (ENXIO) until its port is deleted, and the pod's SIDs would name a
port whose device is gone. (The VPP aborts seen in the same e2e runs had another cause:
render's IPv4 host-network loop.)
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from cni import protocol as cni_protocol
from cni.server import CniHooks
from cni.wiring import Attachment
from ipam6.allocator import PodAllocation
from srv6ctl.allocations import AllocationCache
from srv6ctl.reconciler import Reconciler
from srv6ctl.state import ClusterState
from telemetry.metrics import AgentMetrics

# How long ADD waits for the loop to attach a pod's VPP port: well inside the CNI request's
# own time out (cni.protocol.DEFAULT_TIMEOUT_S), long enough for a full resync in progress.
PORT_TIMEOUT_S = 30.0
# How long DEL waits for the loop to detach it (not at all while the dataplane is
# unreachable: its ports went with it, or go at its next full pass).
DETACH_TIMEOUT_S = 10.0

log = logging.getLogger(__name__)


class AgentCniHooks(CniHooks):
    def __init__(
        self,
        state: ClusterState,
        allocations: AllocationCache,
        reconciler: Reconciler,
        metrics: AgentMetrics,
        ready: threading.Event,
        programming_error: Callable[[], str | None],
        inputs_changed: Callable[[], None],
        *,
        wait_for_port: bool = False,
    ) -> None:
        self.state, self.allocations = state, allocations
        self.reconciler, self.metrics = reconciler, metrics
        self.ready, self.programming_error = ready, programming_error
        self.inputs_changed = inputs_changed
        self.wait_for_port = wait_for_port

    def readiness(self) -> tuple[int, str] | None:
        if not self.ready.is_set():
            why = self.programming_error()
            return (
                cni_protocol.NOT_AVAILABLE,
                "the dataplane has not been programmed yet" + (f": {why}" if why else ""),
            )
        return None

    def on_pod_added(self, allocation: PodAllocation, attachment: Attachment) -> None:
        interface = attachment.host_ifname
        self.reconciler.expect_pod(interface)
        self.allocations.pod_wired(allocation, interface, attachment.netns)
        self.inputs_changed()
        if not self.wait_for_port:
            return
        why = self.reconciler.wait_pod(interface, PORT_TIMEOUT_S)
        if why is not None:  # the server undoes the wiring: so does render
            self.on_pod_deleted(allocation, interface)
            raise RuntimeError(f"the pod's port {interface}: {why}")

    def before_teardown(self, allocation: PodAllocation, host_ifname: str) -> None:
        if not self.wait_for_port:
            return  # the kernel's routes and SIDs go with the veth
        self.allocations.pod_gone(allocation.uid, host_ifname)
        self.inputs_changed()
        if self.programming_error() is not None:
            return
        if not self.reconciler.wait_pod_gone(host_ifname, DETACH_TIMEOUT_S):
            log.warning(
                "DEL of %s: the dataplane still holds its port %s; the veth goes anyway",
                allocation.owner,
                host_ifname,
            )

    def on_pod_deleted(self, allocation: PodAllocation, host_ifname: str) -> None:
        self.allocations.pod_gone(allocation.uid, host_ifname)
        self.inputs_changed()

    def on_interface_removed(self, host_ifname: str) -> None:
        self.allocations.interface_removed(host_ifname)
        self.inputs_changed()

    def check_pod(self, allocation: PodAllocation, host_ifname: str) -> list[str]:
        sid = allocation.addresses.sid_dx6
        pod = self.state.pod_by_uid(allocation.uid) if allocation.uid else None
        if pod is None or self.reconciler.programmed(("localsid", sid)):
            return []  # the API has not reported the pod's addresses yet: nothing to hold
        return [f"the pod's End.DX6 SID {sid} is not programmed"]

    def on_request(self, command: str, code: int, seconds: float) -> None:
        self.metrics.cni_request(command, code, seconds)
