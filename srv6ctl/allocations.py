"""The allocations render needs, as the agent last read them from the store.

Render is pure: it takes node IDs, service BSIDs and this node's wired pods as inputs
(`RenderInputs`). They live in the store (ipam6) and in the CNI server's hooks, and reading
the store at every event would load it (the API server itself, with the Kubernetes store),
so this cache re-reads only what the dirty keys name, everything on a full resync, and goes
on with what it read last while the store is unreachable (a new service then waits).

Service BSIDs are allocated here too, the first time a service with a ClusterIP is seen,
and freed when it is deleted (every agent tries; the first one frees it).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from ipaddress import IPv4Interface, IPv6Interface
from typing import Any

from cni.wiring import host_ifname
from ipam6.allocator import Allocator, PodAllocation
from ipam6.plan import AddressPlan
from ipam6.store.base import StoreError
from srv6ctl.dataplane.model import Capabilities, IPNetwork
from srv6ctl.render import PodInterface, RenderInputs
from srv6ctl.state import ClusterState, DirtyKey, NodeKey, ServiceKey

log = logging.getLogger("srv6ctl.agent")


class AllocationCache:
    """Node IDs, service BSIDs and wired pods for render; pods are told from CNI threads,
    everything else is touched from the agent's loop only."""

    def __init__(
        self,
        allocator: Allocator,
        plan: AddressPlan,
        node_name: str,
        node_port_addresses: tuple[IPNetwork, ...] | None = None,
    ) -> None:
        self.allocator, self.plan, self.node_name = allocator, plan, node_name
        self.node_port_addresses = node_port_addresses  # RenderInputs'; None: primary
        self.node_ids: dict[str, int] = {}
        self.service_bsids: dict[str, tuple[Any, Any]] = {}
        self._pod_interfaces: dict[str, PodInterface] = {}  # pod UID → where it is wired
        self._known: set[str] = set()  # node-side interfaces of this node's pods
        self._lock = threading.Lock()  # pods come from CNI threads
        self._node_ids_stale = False  # the store's node pool changed since it was read
        self._store_down = False

    # --- pods (CNI threads) -------------------------------------------------------------

    def pod_known(self, allocation: PodAllocation) -> None:
        """A pod the store says this node has (read at start)."""
        name = host_ifname(allocation.container_id, allocation.interface)
        with self._lock:
            self._known.add(name)  # a port of its is not a leftover, uid or not
        self.pod_wired(allocation, name, allocation.netns)

    def pod_wired(self, allocation: PodAllocation, interface: str, netns: str) -> None:
        addresses: list[IPv4Interface | IPv6Interface] = [IPv6Interface(allocation.addresses.ipv6)]
        if allocation.addresses.ipv4 is not None:
            addresses.append(IPv4Interface(allocation.addresses.ipv4))
        wiring = PodInterface(
            interface, netns, allocation.interface, allocation.pod, frozenset(addresses)
        )
        with self._lock:
            self._known.add(interface)
            if allocation.uid:
                self._pod_interfaces[allocation.uid] = wiring

    def pod_gone(self, uid: str, interface: str | None) -> None:
        with self._lock:
            self._pod_interfaces.pop(uid, None)
            self._known.discard(interface or "")

    def interface_removed(self, interface: str) -> None:
        with self._lock:
            self._known.discard(interface)
            for uid in [u for u, i in self._pod_interfaces.items() if i.interface == interface]:
                del self._pod_interfaces[uid]

    def known_interfaces(self) -> set[str]:
        """The node ends of every pod this node has (the store's at start, and wired
        since): what the dataplane must keep even while render does not show the pod."""
        with self._lock:
            return set(self._known)

    # --- the store ----------------------------------------------------------------------

    def nodes_changed(self) -> None:
        """The store's node pool changed (a node claimed or freed its ID)."""
        self._node_ids_stale = True

    def inputs(
        self,
        state: ClusterState,
        dirty: Iterable[DirtyKey],
        everything: bool,
        node_id: int,
        capabilities: Capabilities,
    ) -> RenderInputs:
        """Re-read what render needs from the store (all of it when `everything`, else only
        what the dirty keys name) and return the inputs; with the store unreachable, the
        allocations read last."""
        dirty = set(dirty)
        try:
            self._read(state, dirty, everything)
            if self._store_down:
                log.info("the store answers again")
            self._store_down = False
        except StoreError as err:
            if not self._store_down:
                log.warning("store unreachable (%s): using the allocations read last", err)
            self._store_down = True
        with self._lock:
            interfaces = dict(self._pod_interfaces)
        node_ids = dict(self.node_ids)
        node_ids.setdefault(self.node_name, node_id)
        return RenderInputs(
            plan=self.plan,
            node_ids=node_ids,
            service_bsids=dict(self.service_bsids),
            capabilities=capabilities,
            pod_interfaces=interfaces,
            node_port_addresses=self.node_port_addresses,
        )

    def _read(self, state: ClusterState, dirty: set[DirtyKey], everything: bool) -> None:
        if (
            everything
            or self._node_ids_stale
            or not self.node_ids
            or any(isinstance(k, NodeKey) for k in dirty)
        ):
            self.node_ids = self.allocator.nodes()
            self._node_ids_stale = False
        if everything:
            services = list(state.services.values())
            live = {s.uid for s in services}
            for uid in sorted(set(self.service_bsids) - live):
                self._release_service(uid)
        else:
            found = (state.service(k.namespace, k.name) for k in dirty if isinstance(k, ServiceKey))
            services = [s for s in found if s is not None]
        wanted = {
            s.uid: f"{s.namespace}/{s.name}"
            for s in services
            if (s.cluster_ip_v6 is not None or s.cluster_ip_v4 is not None)
            and s.uid not in self.service_bsids
        }
        if len(wanted) == 1:
            ((uid, name),) = wanted.items()
            allocations = {uid: self.allocator.allocate_service(uid, name)}
        else:  # a start or a resync: one listing, not a lookup per service
            allocations = self.allocator.allocate_services(wanted) if wanted else {}
        for uid, got in allocations.items():
            self.service_bsids[uid] = (got.bsid_v6, got.bsid_v4)

    def _release_service(self, uid: str) -> None:
        """A service this agent saw is gone: free its BSID index in the store. Kept in the
        cache, and tried again at the next full resync, if the store fails."""
        try:
            self.allocator.release_service(uid)
        except StoreError as err:
            log.warning("freeing the BSIDs of deleted service %s: %s; retrying later", uid, err)
            return
        del self.service_bsids[uid]
