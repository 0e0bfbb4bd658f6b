"""What the agent does for the CNI server (srv6-cni's requests arrive on its threads).

A pod wired or removed changes render's inputs (its node-side interface), and in VPP mode
its port is attached before ADD returns and detached on DEL (`PodPrograms`); the loop is
then told to render. ADD is refused with "try again later" until the dataplane has been
programmed once, and CHECK asks whether the pod's End.DX6 SID is.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from cni import protocol as cni_protocol
from cni.server import CniHooks
from cni.wiring import Attachment
from ipam6.allocator import PodAllocation
from srv6ctl.allocations import AllocationCache
from srv6ctl.pods import PodPrograms
from srv6ctl.reconciler import Reconciler
from srv6ctl.state import ClusterState
from telemetry.metrics import AgentMetrics


class AgentCniHooks(CniHooks):
    def __init__(
        self,
        state: ClusterState,
        allocations: AllocationCache,
        pods: PodPrograms,
        reconciler: Reconciler,
        metrics: AgentMetrics,
        ready: threading.Event,
        programming_error: Callable[[], str | None],
        inputs_changed: Callable[[], None],
    ) -> None:
        self.state, self.allocations, self.pods = state, allocations, pods
        self.reconciler, self.metrics = reconciler, metrics
        self.ready, self.programming_error = ready, programming_error
        self.inputs_changed = inputs_changed

    def readiness(self) -> tuple[int, str] | None:
        if not self.ready.is_set():
            why = self.programming_error()
            return (
                cni_protocol.NOT_AVAILABLE,
                "the dataplane has not been programmed yet" + (f": {why}" if why else ""),
            )
        return None

    def on_pod_added(self, allocation: PodAllocation, attachment: Attachment) -> None:
        interface, netns = attachment.host_ifname, attachment.netns
        pod = self.state.pod_by_uid(allocation.uid) if allocation.uid else None
        self.pods.wired(allocation, interface, netns, pod.interface_type if pod else "")
        self.allocations.pod_wired(allocation, interface, netns)
        self.inputs_changed()

    def on_pod_deleted(self, allocation: PodAllocation, host_ifname: str) -> None:
        self.pods.unwired(host_ifname)
        self.allocations.pod_gone(allocation.uid)
        self.inputs_changed()

    def on_interface_removed(self, host_ifname: str) -> None:
        self.pods.unwired(host_ifname)
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
