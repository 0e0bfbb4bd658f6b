"""Render: one node's desired dataplane (`NodeConfig`) from the cluster state. Pure.

`render(state, node, inputs)` reads a `ClusterState` and the allocations in `RenderInputs`
and returns data; it does no I/O and its result depends on nothing else (not on the order
events arrived in). `Renderer` computes the same result incrementally: the config is the
union of *fragments* — one per remote node, per service, per pod, and the local node's
own — and a dirty key from `ClusterState` re-renders only the fragments it names.

What a node gets (README.md, "The address plan" and "Services without NAT"):

- Its own SIDs on its locator `L`: End `L::1`, End.DT6 `L::6` (pod table, main by
  default), and End.DT4 `L::4` only in a dual-stack plan *and* when the backend can do it
  (the kernel needs a VRF); without it, IPv4 reaches pods through their End.DX4 SIDs.
- Per local pod: End.DX6 `L::1:k` (nexthop the pod's IPv6, on its node-side interface),
  End.DX4 `L::4:k` in dual-stack, and a `PodAttachment` whose `service_addresses` are the
  ClusterIPs of every service the pod is an endpoint of, and `port_maps` the (protocol, ClusterIP,
  port, targetPort) rewrites where they differ, named targetPorts resolved against the
  pod's own container ports. A pod is given a ClusterIP as soon as it appears in the
  service's slices, ready or not: the address is then on its loopback before any node's
  policy can point at it and stays until every node has dropped it (make before break,
  across nodes whose reconciles are not ordered). Host-network pods get nothing.
- Per other node `R`: a route to `R`'s locator via its InternalIPv6 — this assumes the
  nodes share an L2 segment; on a routed underlay the locators must be advertised (BGP)
  and these routes become redundant — and a node policy `[R::6]` steering `R`'s IPv6 pod
  prefix; in dual-stack, a policy `[R::4]` for `R`'s IPv4 pod prefix when `R` publishes
  End.DT4 (`BEHAVIOURS_ANNOTATION` on its Node), else one policy per remote pod
  `[R::4:k]` steering that pod's /32.
- Per service and address family with a ClusterIP: a policy at the service's BSID with
  one segment list per usable endpoint, ending at the endpoint's End.DX6/End.DX4 SID
  (derived from its address by the plan), and a steering of the ClusterIP /128 (/32) into
  it; with no usable endpoint (or no BSID allocated yet) a PROHIBIT route instead, never
  a stale or empty policy. Endpoint choice follows kube-proxy (see `_usable_endpoints`).

Node and pod policies have node-local BSIDs in the node's own locator (`AddressPlan.
node_policy_bsid`, `pod_policy_bsid_v4`: ipam6/plan.py has their layout and inverse).

Encap source: the node's InternalIPv6, falling back to its End SID while the Node has no
InternalIPv6. The outer source is where ICMPv6 errors for encapsulated packets go (Packet
Too Big for PMTU discovery above all): the InternalIPv6 is an address the node's stack
owns and that every underlay already routes and accepts in source-address validation,
whereas a packet to the End SID is consumed by the End behaviour (an ICMP error without
an SRH is dropped there) and the locator is only routed where we add routes for it. It is
set once per node (`NodeConfig.encap_source`, kernel `ip sr tunsrc`, VPP
`sr_set_encap_source`) and policies leave theirs unset: neither backend has a per-policy
source. Policies use H.Encaps.Red when the backend offers it (every list has one SID, so
no SRH is needed at all), H.Encaps otherwise.

External traffic (LoadBalancer ingress IPs with ipMode VIP, and externalIPs) works like
the ClusterIP: each VIP /128 (/32) is steered into an SR policy, and every backend pod holds
the VIPs on its loopback too (with the same port rewrites), so it answers the external
client from the address the client used, straight back (direct server return): no node
keeps NAT or conntrack state, and the backend sees the client's own address. The policy is
the ClusterIP's when both kinds of traffic go to the same endpoints; otherwise
(externalTrafficPolicy Local: this node's endpoints only; internalTrafficPolicy Local with
a cluster-wide external policy) the service's *external* policy, at a node-local BSID
(`AddressPlan.service_external_bsid`). With no endpoint for it, a VIP gets a BLACKHOLE
route under externalTrafficPolicy Local (kube-proxy drops such traffic silently, so that
the load balancer's health check steers it to other nodes) and a PROHIBIT route otherwise.
Services kube-proxy skips are skipped: ExternalName, and those labelled with
`service.kubernetes.io/service-proxy-name` or `service.kubernetes.io/headless`.

NodePorts (README.md, "NodePort"): the destination is a node's own address `N`, which no
pod can hold, so the entry node steers by port: a `Rule` `to N/128 (/32) proto P dport
nodePort lookup T`, with `T` the service's own table (`service_table`) holding `N` steered
into the service's external policy (or the empty-service BLACKHOLE/PROHIBIT route). By
default this node's InternalIPs, one per family (kube-proxy's nftables mode default,
`--nodeport-addresses primary`); with `RenderInputs.node_port_addresses`, every address
its Node lists (InternalIPs, ExternalIPs) inside those prefixes. Each backend pod gets the
(protocol, nodePort, target port) triples (`PodAttachment.node_ports`) and DNATs, in its
own namespace, what arrives for an address that is not its own: the one conntrack entry of
such a flow lives in the pod that serves it, and the reply leaves from `N:nodePort`
straight to the client. Rules need the backend's `Capabilities.rules`; without it
NodePorts are not rendered.

loadBalancerSourceRanges (of the load balancer IPs' family; kube-proxy applies them to
load balancer IPs only) move those IPs' steering into the service's table too, reached
through a `Rule` `from range to VIP` per range, and leave a BLACKHOLE for the VIP in the
main table: other sources are dropped, in the cluster too, as kube-proxy drops them.

sessionAffinity ClientIP is a property of the service's policies (`SrPolicy.affinity`,
its timeout): the backend picks a segment list by the client's address (README,
"sessionAffinity"); a backend without `Capabilities.affinity` balances per flow.

NetworkPolicy is compiled elsewhere (srv6ctl/policy_programs.py).
"""

from __future__ import annotations

import functools
import gc
import ipaddress
from collections.abc import Collection, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import NamedTuple, TypeAlias, cast

from ipam6.plan import AddressPlan, PodSids
from srv6ctl.dataplane.model import (
    HOST_LOOP_DEVICE,
    HOST_LOOP_GATEWAY,
    MAIN_TABLE,
    Capabilities,
    DataplaneObject,
    EncapMode,
    End,
    EndDT4,
    EndDT6,
    EndDX4,
    EndDX6,
    IPNetwork,
    IPv6Address,
    LocalSid,
    NodeConfig,
    PodAttachment,
    PortMap,
    Route,
    RouteKind,
    Rule,
    SegmentList,
    SrPolicy,
    Steering,
    Translation,
    pod_interface_fields,
)
from srv6ctl.state import (
    ClusterState,
    DirtyKey,
    Endpoint,
    EndpointSlice,
    IPAddress,
    NamespacedName,
    Node,
    NodeKey,
    Pod,
    PodKey,
    Service,
    ServiceKey,
    ServicePort,
)

# Host-network endpoints: their node's `L::7` (End.DT6) looks the inner packet up in this
# table, which holds `local <ClusterIP>` for each service with a host-network endpoint on
# the node — the main table cannot, it steers the ClusterIP into the service's policy.
HOST_SERVICES_TABLE = 93
# The host loop's table (model.HOST_LOOP_DEVICE): the local locator, for locally made packets.
HOST_LOOP_TABLE = 94
# Service i's own table (NodePort steerings), after every table a node is likely to use:
# 0x5C (92, our protocol) in the top byte, the service index below.
SERVICE_TABLE_BASE = 0x5C00_0000
END_DT4 = EndDT4.behaviour

BULK = 1000  # fragments re-rendered at once above which the cycle collector is paused

# trafficDistribution values that ask for same-zone endpoints (PreferSameZone is the
# 1.33 name of PreferClose; PreferSameNode prefers the node, then the zone).
PREFER_ZONE = frozenset({"PreferClose", "PreferSameZone", "PreferSameNode"})


# --- inputs ---------------------------------------------------------------------------


class ServiceBsids(NamedTuple):
    """A service's BSIDs from ipam6 (`ServiceAllocation.bsid_v6/bsid_v4`)."""

    v6: IPv6Address
    v4: IPv6Address | None = None


@dataclass(frozen=True)
class PodInterface:
    """Where a local pod is plugged in, as the CNI wiring made it, and what it was given:
    its name and addresses (from the allocation), so that it is attached even before the
    API shows the pod (in VPP mode, CNI ADD waits for its port)."""

    interface: str  # node-side name (veth peer / VPP interface tag)
    netns: str  # the pod's network namespace path
    container_interface: str = "eth0"
    pod: str = ""  # "namespace/name"
    addresses: frozenset[ipaddress.IPv4Interface | ipaddress.IPv6Interface] = frozenset()


@dataclass(frozen=True)
class RenderInputs:
    """Everything render needs besides the cluster state: allocations and the backend.

    `node_ids` must hold this node's ID (ipam6 `claim_node`); nodes without one are not
    routed to. `service_bsids` is keyed by Service UID (ipam6 `allocate_service`), and a
    service without BSIDs gets a PROHIBIT route. `pod_interfaces` is keyed by Pod UID
    and holds this node's pods as the CNI wired them; only those get SIDs and attachments.
    """

    plan: AddressPlan
    node_ids: Mapping[str, int]  # node name → ipam6 node ID
    service_bsids: Mapping[str, tuple[IPv6Address, IPv6Address | None]]  # service UID →
    capabilities: Capabilities
    pod_interfaces: Mapping[str, PodInterface] = field(default_factory=dict)  # pod UID →
    pod_table: int = MAIN_TABLE  # End.DT6 lookup table
    pod_table_v4: int = MAIN_TABLE  # End.DT4 lookup table (a VRF's table on the kernel)
    host_table: int = HOST_SERVICES_TABLE  # End.DT6 `L::7` lookup: ClusterIPs served here
    # Which of this node's addresses serve node ports (kube-proxy's --nodeport-addresses):
    # None, "primary", its InternalIP of each family; else those of its InternalIPs and
    # ExternalIPs inside one of these prefixes.
    node_port_addresses: tuple[IPNetwork, ...] | None = None


# --- fragments and deltas -------------------------------------------------------------


@dataclass(frozen=True)
class Fragment:
    """What one cluster object contributes to the node's config."""

    pods: tuple[PodAttachment, ...] = ()
    local_sids: tuple[LocalSid, ...] = ()
    policies: tuple[SrPolicy, ...] = ()
    steerings: tuple[Steering, ...] = ()
    routes: tuple[Route, ...] = ()
    rules: tuple[Rule, ...] = ()
    port_maps: tuple[PortMap, ...] = ()
    translations: tuple[Translation, ...] = ()

    def parts(self) -> Iterator[tuple[str, tuple[DataplaneObject, ...]]]:
        yield "pods", self.pods
        yield "local_sids", self.local_sids
        yield "policies", self.policies
        yield "steerings", self.steerings
        yield "routes", self.routes
        yield "rules", self.rules
        yield "port_maps", self.port_maps
        yield "translations", self.translations


EMPTY = Fragment()
FragmentKey: TypeAlias = NodeKey | ServiceKey | PodKey
PARTS = (
    "pods",
    "local_sids",
    "policies",
    "steerings",
    "routes",
    "rules",
    "port_maps",
    "translations",
)


@dataclass(frozen=True)
class RenderDelta:
    """What an update changed in the node's config (objects compare by value)."""

    added: frozenset[DataplaneObject] = frozenset()
    removed: frozenset[DataplaneObject] = frozenset()
    encap_source_changed: bool = False

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.encap_source_changed)

    def then(self, later: RenderDelta) -> RenderDelta:
        """This delta followed by `later`, as one: an object added by one and removed by
        the other cancels out (either way round)."""
        return RenderDelta(
            added=(self.added - later.removed) | later.added,
            removed=(self.removed - later.added) | later.removed,
            encap_source_changed=self.encap_source_changed or later.encap_source_changed,
        )


def _pod_name(name: str) -> NamespacedName:
    namespace, _, pod = name.partition("/")
    return (namespace, pod)


def _slice_port(eps: EndpointSlice, port: ServicePort) -> int | None:
    """Where `eps` sends the Service's `port` (matched by name and protocol)."""
    for candidate in eps.ports:
        if candidate.name == port.name and candidate.protocol == port.protocol:
            return port.port if candidate.port is None else candidate.port
    return None


def _by_pod_name(interfaces: Mapping[str, PodInterface]) -> dict[NamespacedName, PodInterface]:
    return {_pod_name(i.pod): i for i in interfaces.values() if i.pod}


class _Candidate(NamedTuple):
    endpoint: Endpoint
    sid: int | None  # None: outside the cluster (neither pod nor node), `Translation`s only
    address: IPAddress
    slice: EndpointSlice  # its ports are the endpoint's target ports, by name


@dataclass
class _ServiceParts:
    """What one service renders to, gathered over its families and addresses."""

    policies: dict[IPv6Address, SrPolicy] = field(default_factory=dict)
    steerings: list[Steering] = field(default_factory=list)
    routes: list[Route] = field(default_factory=list)
    rules: list[Rule] = field(default_factory=list)
    port_maps: list[PortMap] = field(default_factory=list)
    slices: list[EndpointSlice] = field(default_factory=list)  # the service's


def _host(address: IPAddress) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """`address` as a /128 (/32): from the int, since given an address object ipaddress
    formats and re-parses it."""
    if isinstance(address, ipaddress.IPv6Address):
        return ipaddress.IPv6Network((int(address), 128))
    return ipaddress.IPv4Network((int(address), 32))


# --- the renderer ---------------------------------------------------------------------


def render(state: ClusterState, node: str, inputs: RenderInputs) -> NodeConfig:
    """The complete desired config of `node`: a pure function of its arguments."""
    return Renderer(state, node, inputs).config()


class Renderer:
    """Holds the fragments of one node's config and re-renders those a dirty key names.

    It reads `state` (never writes it) and is told what changed through `update`, with
    the keys `ClusterState`'s mutations return, and `set_inputs`. Its `config()` always
    equals `render(state, node, inputs)` for the current state and inputs — that is its
    whole contract, checked by a state-machine test over random event sequences.
    """

    def __init__(self, state: ClusterState, node: str, inputs: RenderInputs) -> None:
        self._state = state
        self._node = node
        self._inputs = inputs
        self._fragments: dict[FragmentKey, Fragment] = {}
        self._counts: dict[str, dict[DataplaneObject, int]] = {part: {} for part in PARTS}
        self._encap_source: IPv6Address | None = None
        self._config: NodeConfig | None = None
        # Services whose endpoints include addresses that are not pod addresses: they may
        # be node addresses (host-network pods), so node changes re-render them.
        self._node_address_services: set[NamespacedName] = set()
        # Services with external VIPs: a node taking one of them as its address changes
        # whether they may be steered.
        self._external_vip_services: set[NamespacedName] = set()
        # Services with node ports: they follow this node's own addresses.
        self._node_port_services: set[NamespacedName] = set()
        # Services with endpoints outside the cluster: what every local pod translates
        # (`Translation`), per service and as one set, which pod fragments hold.
        self._translations: dict[NamespacedName, tuple[Translation, ...]] = {}
        self._translated: frozenset[Translation] = frozenset()
        self._translations_changed = False
        # A VPP node's backend pods translate every node's NodePorts of the services they
        # serve straight to the endpoints (`_backends_node_ports`): per service,
        # the local backends and those translations; per pod, the services; and the pods
        # whose set may have changed since they were last rendered.
        self._backend_ports: dict[
            NamespacedName, tuple[frozenset[PodKey], tuple[Translation, ...]]
        ] = {}
        self._backend_of: dict[PodKey, set[NamespacedName]] = {}
        self._backend_dirty: set[PodKey] = set()
        self._local_zone: str | None = None
        self._wired: dict[NamespacedName, PodInterface] = _by_pod_name(inputs.pod_interfaces)
        self._configure(inputs)
        self._rerender(self._all_keys(), track=False)

    # --- public -----------------------------------------------------------------------

    @property
    def node(self) -> str:
        return self._node

    @property
    def inputs(self) -> RenderInputs:
        return self._inputs

    def config(self) -> NodeConfig:
        if self._config is None:
            # frozenset(dict) reuses the hashes the dict stored: nothing is hashed again.
            parts = {part: frozenset(self._counts[part]) for part in PARTS}
            self._config = NodeConfig(
                encap_source=self._encap_source,
                pods=cast(frozenset[PodAttachment], parts["pods"]),
                local_sids=cast(frozenset[LocalSid], parts["local_sids"]),
                policies=cast(frozenset[SrPolicy], parts["policies"]),
                steerings=cast(frozenset[Steering], parts["steerings"]),
                routes=cast(frozenset[Route], parts["routes"]),
                rules=cast(frozenset[Rule], parts["rules"]),
                port_maps=cast(frozenset[PortMap], parts["port_maps"]),
                translations=cast(frozenset[Translation], parts["translations"]),
            )
        return self._config

    def update(self, dirty: Iterable[DirtyKey]) -> RenderDelta:
        """Re-render what `dirty` names (and what depends on it); return what changed."""
        keys: set[FragmentKey] = set()
        nodes_changed = False
        for key in dirty:
            if isinstance(key, ServiceKey | PodKey):
                keys.add(key)
            elif isinstance(key, NodeKey):
                nodes_changed = True
                keys.add(key)
                if self._plan.dual_stack and key.name != self._node:
                    keys.update(PodKey(*p.key) for p in self._state.pods_on_node(key.name))
            # Namespaces and NetworkPolicies are not rendered yet.
        if nodes_changed:
            keys.update(ServiceKey(*k) for k in self._node_address_services)
            keys.update(ServiceKey(*k) for k in self._node_port_services)
            for service_key in self._external_vip_services:
                # Their pods hold the VIPs that no node has taken as its address.
                keys.add(ServiceKey(*service_key))
                keys.update(
                    k for k in self._state.endpoint_pods(*service_key) if isinstance(k, PodKey)
                )
            local = self._state.node(self._node)
            zone = None if local is None else local.zone
            if zone != self._local_zone:
                self._local_zone = zone
                keys.update(ServiceKey(*k) for k in self._state.services)
        return self._rerender(keys)

    def set_inputs(self, inputs: RenderInputs) -> RenderDelta:
        """Switch to new inputs, re-rendering only what the difference touches."""
        old = self._inputs
        if (
            old.plan != inputs.plan
            or old.capabilities != inputs.capabilities
            or (old.pod_table, old.pod_table_v4, old.host_table, old.node_port_addresses)
            != (
                inputs.pod_table,
                inputs.pod_table_v4,
                inputs.host_table,
                inputs.node_port_addresses,
            )
            or old.node_ids.get(self._node) != inputs.node_ids.get(self._node)
        ):
            self._configure(inputs)  # raises, changing nothing, when the node has no ID
            self._inputs = inputs
            return self._rerender(self._all_keys())
        self._inputs = inputs
        dirty: set[DirtyKey] = set()
        if old.node_ids is not inputs.node_ids:
            names = old.node_ids.keys() | inputs.node_ids.keys()
            dirty.update(NodeKey(n) for n in names if old.node_ids.get(n) != inputs.node_ids.get(n))
        if old.service_bsids is not inputs.service_bsids:
            uids = _changed(old.service_bsids, inputs.service_bsids)
            dirty.update(ServiceKey(*s.key) for s in self._state.services.values() if s.uid in uids)
        if old.pod_interfaces is not inputs.pod_interfaces:
            self._wired = _by_pod_name(inputs.pod_interfaces)
            for uid in _changed(old.pod_interfaces, inputs.pod_interfaces):
                pod = self._state.pod_by_uid(uid)
                if pod is not None:
                    dirty.add(PodKey(*pod.key))
                for wiring in (old.pod_interfaces.get(uid), inputs.pod_interfaces.get(uid)):
                    if wiring is not None and wiring.pod:  # wired before the API shows it
                        dirty.add(PodKey(*_pod_name(wiring.pod)))
        return self.update(dirty)

    # --- bookkeeping ------------------------------------------------------------------

    def _configure(self, inputs: RenderInputs) -> None:
        local_id = inputs.node_ids.get(self._node)
        if local_id is None:
            raise ValueError(f"node {self._node} has no node ID in the render inputs")
        self._plan = inputs.plan
        self._local_id = local_id
        self._host_sid = int(self._plan.host_sid(local_id))
        caps = inputs.capabilities
        self._local_dt4 = self._plan.dual_stack and END_DT4 in caps.behaviours
        reduced = EncapMode.ENCAP_RED in caps.encap_modes
        self._mode = EncapMode.ENCAP_RED if reduced else EncapMode.ENCAP
        self._pod_sids = PodSids(self._plan)
        local = self._state.node(self._node)
        self._local_zone = None if local is None else local.zone

    def _all_keys(self) -> set[FragmentKey]:
        state = self._state
        keys: set[FragmentKey] = set(self._fragments)
        keys.add(NodeKey(self._node))
        keys.update(NodeKey(name) for name in state.nodes)
        keys.update(ServiceKey(*k) for k in state.services)
        # Remote pods only matter in dual-stack (their IPv4 may need a policy each).
        if self._plan.dual_stack:
            keys.update(PodKey(*k) for k in state.pods)
        else:
            keys.update(PodKey(*p.key) for p in state.pods_on_node(self._node))
        keys.update(PodKey(*name) for name in self._wired)
        return keys

    def _rerender(self, keys: Collection[FragmentKey], *, track: bool = True) -> RenderDelta:
        if len(keys) < BULK:
            return self._rerender_keys(keys, track)
        with _collector_paused():
            return self._rerender_keys(keys, track)

    def _ordered(self, keys: Iterable[FragmentKey]) -> Iterator[FragmentKey]:
        """`keys` with the pods last, and every local pod among them when the services
        before changed what pods translate (every local pod holds that one set)."""
        pods = []
        for key in keys:
            if isinstance(key, PodKey):
                pods.append(key)
            else:
                yield key
        if self._translations_changed:
            self._translations_changed = False
            translated = frozenset(t for ts in self._translations.values() for t in ts)
            if translated != self._translated:
                self._translated = translated
                pods.extend(PodKey(*p.key) for p in self._state.pods_on_node(self._node))
                pods.extend(PodKey(*name) for name in self._wired)
        if self._backend_dirty:
            pods.extend(self._backend_dirty)
            self._backend_dirty.clear()
        yield from dict.fromkeys(pods)

    def _rerender_keys(self, keys: Iterable[FragmentKey], track: bool) -> RenderDelta:
        """Swap each key's fragment for a fresh one, keeping a count of every object (two
        fragments may hold an equal object) and, when `track`, what appeared and vanished.
        Hashing a policy walks all its SIDs, so each object is hashed as few times as the
        bookkeeping allows."""
        added: set[DataplaneObject] = set()
        removed: set[DataplaneObject] = set()
        encap_before = self._encap_source
        changed = False
        for key in self._ordered(keys):
            new = self._fragment(key)
            old = self._fragments.get(key, EMPTY)
            if new == old:
                continue
            changed = True
            if new == EMPTY:
                del self._fragments[key]
            else:
                self._fragments[key] = new
            for (part, old_objects), (_, new_objects) in zip(old.parts(), new.parts(), strict=True):
                if old_objects == new_objects:
                    continue
                counts = self._counts[part]
                for obj in old_objects:
                    left = counts[obj] - 1
                    if left:
                        counts[obj] = left
                        continue
                    del counts[obj]
                    if track:
                        if added and obj in added:
                            added.discard(obj)
                        else:
                            removed.add(obj)
                for obj in new_objects:
                    before = counts.get(obj, 0)
                    counts[obj] = before + 1
                    if track and not before:
                        if removed and obj in removed:
                            removed.discard(obj)
                        else:
                            added.add(obj)
        changed_source = self._encap_source != encap_before
        if changed or changed_source:
            self._config = None
        return RenderDelta(frozenset(added), frozenset(removed), changed_source)

    def _fragment(self, key: FragmentKey) -> Fragment:
        if isinstance(key, ServiceKey):
            return self._service_fragment((key.namespace, key.name))
        if isinstance(key, PodKey):
            return self._pod_fragment((key.namespace, key.name))
        if key.name == self._node:
            return self._local_node_fragment()
        return self._remote_node_fragment(key.name)

    # --- nodes ------------------------------------------------------------------------

    def _local_node_fragment(self) -> Fragment:
        plan, node_id = self._plan, self._local_id
        sids: list[LocalSid] = [
            End(plan.end_sid(node_id)),
            EndDT6(plan.dt6_sid(node_id), table=self._inputs.pod_table),
            EndDT6(plan.host_sid(node_id), table=self._inputs.host_table),
        ]
        if self._local_dt4:
            sids.append(EndDT4(plan.dt4_sid(node_id), table=self._inputs.pod_table_v4))
        routes: tuple[Route, ...] = ()
        rules: tuple[Rule, ...] = ()
        caps = self._inputs.capabilities
        if caps.host_loop and caps.rules:
            # Only the node's own packets (`iif lo`: locally made) go round the host loop
            # and come back in: those to its own SIDs (its stack's connections to a Service
            # backend here, to a NodePort of its own address), where the SIDs act; and
            # those to the service CIDRs, plain, to be steered as they come back in, as a
            # pod's are. So a connection to a ClusterIP is hashed with its ports known (on
            # output the route is looked up before the source port is picked: every
            # connection of an unbound client took one backend, lab FINDINGS 6); one the
            # node DNATs to a ClusterIP (its own NodePorts, `_own_node_ports`) keeps its
            # conntrack entry (seg6 encapsulation on output drops an entry not yet
            # confirmed, which postrouting would confirm); and a translated Service's
            # ClusterIP, which the main table refuses, has a route to connect by.
            found = (plan.locator(node_id), plan.service_cidr_v6, plan.service_cidr_v4)
            prefixes: list[IPNetwork] = [p for p in found if p is not None]
            routes = tuple(
                Route(p, via=HOST_LOOP_GATEWAY, interface=HOST_LOOP_DEVICE, table=HOST_LOOP_TABLE)
                for p in prefixes
            )
            rules = tuple(Rule(p, HOST_LOOP_TABLE, iif="lo") for p in prefixes)
            if caps.translations:
                # The node's own connections to its own node-port addresses skip the port
                # rules and are delivered locally (the loop's table holds them as local
                # routes): translated to the ClusterIP at output (`_own_node_ports`), they
                # need a route first, and a port rule's table may hold a blackhole
                # (externalTrafficPolicy: Local without an endpoint here), which would
                # refuse them before the DNAT; kube-proxy treats the node's own traffic
                # as Cluster.
                own = [_host(a) for a in self._own_node_port_addresses()]
                rules += tuple(Rule(h, HOST_LOOP_TABLE, iif="lo") for h in own)
                routes += tuple(Route(h, kind=RouteKind.LOCAL, table=HOST_LOOP_TABLE) for h in own)
        local = self._state.node(self._node)
        if local is not None and local.internal_ipv6 is not None:
            self._encap_source = local.internal_ipv6
        else:
            self._encap_source = plan.end_sid(node_id)
        return Fragment(local_sids=tuple(sids), routes=routes, rules=rules)

    def _remote_node(self, name: str) -> tuple[Node, int] | None:
        """A remote node we can reach: known, with an ID and an InternalIPv6 to route via."""
        node = self._state.node(name)
        node_id = self._inputs.node_ids.get(name)
        if node is None or node_id is None or node.internal_ipv6 is None or name == self._node:
            return None
        return node, node_id

    def _remote_node_fragment(self, name: str) -> Fragment:
        reachable = self._remote_node(name)
        if reachable is None:
            return EMPTY
        node, remote_id = reachable
        plan = self._plan
        bsid = plan.node_policy_bsid(self._local_id, remote_id, 6)
        policies = [self._policy(bsid, plan.dt6_sid(remote_id), f"node/{name}/v6")]
        steerings = [Steering(plan.pod_prefix_v6(remote_id), bsid)]
        prefix_v4 = plan.pod_prefix_v4(remote_id)
        if prefix_v4 is not None and self._can_dt4(node):
            bsid_v4 = plan.node_policy_bsid(self._local_id, remote_id, 4)
            policies.append(self._policy(bsid_v4, plan.dt4_sid(remote_id), f"node/{name}/v4"))
            steerings.append(Steering(prefix_v4, bsid_v4))
        return Fragment(
            policies=tuple(policies),
            steerings=tuple(steerings),
            routes=(Route(plan.locator(remote_id), via=node.internal_ipv6),),
        )

    def _can_dt4(self, node: Node) -> bool:
        if not self._plan.dual_stack:
            return False
        if node.name == self._node:
            return self._local_dt4
        return END_DT4 in node.sr_behaviours

    def _policy(self, bsid: IPv6Address, sid: IPv6Address, owner: str) -> SrPolicy:
        return SrPolicy(bsid, (SegmentList((sid,)),), mode=self._mode, owner=owner)

    # --- pods -------------------------------------------------------------------------

    def _pod_fragment(self, key: NamespacedName) -> Fragment:
        pod = self._state.pod(*key)
        if pod is None:
            return self._wired_pod_fragment(key)
        if pod.finished or pod.host_network or pod.node_name is None:
            return EMPTY
        if pod.node_name == self._node:
            if not pod.ips:
                # Scheduled here, not yet started: kubelet reports a pod's IPs only once
                # CNI ADD has returned, and on a VPP node ADD waits for the pod's port.
                return self._wired_pod_fragment(key)
            return self._local_pod_fragment(pod)
        return self._remote_pod_fragment(pod)

    def _local_pod_fragment(self, pod: Pod) -> Fragment:
        wiring = self._inputs.pod_interfaces.get(pod.uid)
        if wiring is None:
            return EMPTY  # not plugged in (yet, or any more): nothing to hand packets to
        plan = self._plan
        sids: list[LocalSid] = []
        addresses: list[ipaddress.IPv4Interface | ipaddress.IPv6Interface] = []
        ipv6 = pod.ipv6
        located = None if ipv6 is None else plan.pod_of_address(ipv6)
        if ipv6 is not None and located is not None and located[0] == self._local_id:
            sid = plan.pod_sid_dx6(*located)
            sids.append(EndDX6(sid, nexthop=ipv6, interface=wiring.interface))
            addresses.append(ipaddress.IPv6Interface((ipv6, 128)))
        ipv4 = pod.ipv4
        located = None if ipv4 is None else plan.pod_of_address(ipv4)
        if ipv4 is not None and located is not None and located[0] == self._local_id:
            sid = plan.pod_sid_dx4(*located)
            sids.append(EndDX4(sid, nexthop=ipv4, interface=wiring.interface))
            addresses.append(ipaddress.IPv4Interface((ipv4, 32)))
        if not addresses:
            return EMPTY  # its addresses are not this node's: not ours to wire
        membership = self._service_membership(pod)
        attachment = PodAttachment(
            interface=wiring.interface,
            pod=f"{pod.namespace}/{pod.name}",
            netns=wiring.netns,
            container_interface=wiring.container_interface,
            addresses=frozenset(addresses),
            service_addresses=membership.addresses,
            port_maps=membership.port_maps,
            node_ports=membership.node_ports,
            translations=self._pod_translations(PodKey(*pod.key)),
            service_ports=membership.ports,
            **pod_interface_fields(pod.interface_type, pod.uid),
        )
        return Fragment(pods=(attachment,), local_sids=tuple(sids))

    def _wired_pod_fragment(self, key: NamespacedName) -> Fragment:
        """A pod wired here that the API does not show (yet): its attachment, from what the
        CNI wiring gave it, and nothing that needs the pod's status (its SIDs, services)."""
        wiring = self._wired.get(key)
        if wiring is None or not wiring.addresses:
            return EMPTY
        attachment = PodAttachment(
            interface=wiring.interface,
            pod=wiring.pod,
            netns=wiring.netns,
            container_interface=wiring.container_interface,
            addresses=wiring.addresses,
            translations=self._translated,  # it may connect before the API shows it
        )
        return Fragment(pods=(attachment,))

    def _service_membership(self, pod: Pod) -> _Membership:
        """What `pod` serves as an endpoint (`_Membership`)."""
        addresses: set[IPAddress] = set()
        port_maps: set[tuple[str, IPAddress, int, int]] = set()
        node_ports: set[tuple[str, int, int, int]] = set()
        ports: set[tuple[str, IPAddress, int]] = set()
        for eps, _ in self._state.endpoint_entries(pod):
            if eps.service_name is None:
                continue
            service = self._state.service(eps.namespace, eps.service_name)
            if service is None or service.headless or not service.proxied:
                continue
            if eps.address_type == "IPv6":
                cluster_ip: IPAddress | None = service.cluster_ip_v6
            elif eps.address_type == "IPv4":
                cluster_ip = service.cluster_ip_v4
            else:
                cluster_ip = None
            if cluster_ip is None:
                continue
            # The pod answers external clients from the VIP they used, as it answers
            # cluster clients from the ClusterIP (direct server return).
            vips = (cluster_ip, *self._external_vips(service, cluster_ip.version))
            addresses.update(vips)
            for port in service.ports:
                # The slice's port of the same name, not the Service's targetPort: the
                # controller resolved that into it, and a hand-written slice may say
                # anything (kube-proxy reads the slice). None: no backend for it here.
                target = _slice_port(eps, port)
                if target is None:
                    continue
                ports.update((port.protocol, vip, port.port) for vip in vips)
                if target != port.port:
                    port_maps.update((port.protocol, vip, port.port, target) for vip in vips)
                if port.node_port:
                    node_ports.add((port.protocol, cluster_ip.version, port.node_port, target))
        return _Membership(
            frozenset(addresses),
            frozenset(port_maps),
            frozenset(node_ports),
            frozenset(ports),
        )

    def _remote_pod_fragment(self, pod: Pod) -> Fragment:
        """A remote pod's IPv4 policy, needed only when its node lacks End.DT4."""
        ipv4 = pod.ipv4
        if ipv4 is None or not self._plan.dual_stack or pod.node_name is None:
            return EMPTY
        reachable = self._remote_node(pod.node_name)
        if reachable is None or self._can_dt4(reachable[0]):
            return EMPTY
        remote_id = reachable[1]
        located = self._plan.pod_of_address(ipv4)
        if located is None or located[0] != remote_id:
            return EMPTY
        bsid = self._plan.pod_policy_bsid_v4(self._local_id, *located)
        owner = f"pod/{pod.namespace}/{pod.name}/v4"
        return Fragment(
            policies=(self._policy(bsid, self._plan.pod_sid_dx4(*located), owner),),
            steerings=(Steering(ipaddress.IPv4Network((ipv4, 32)), bsid),),
        )

    # --- services ---------------------------------------------------------------------

    def _pod_translations(self, key: PodKey) -> frozenset[Translation]:
        """What `key` translates: every local pod's set, with the NodePorts of the
        services it serves translated straight to their endpoints."""
        services = self._backend_of.get(key)
        if not services:
            return self._translated
        own = {t.key: t for s in services for t in self._backend_ports[s][1]}
        return frozenset([*(t for t in self._translated if t.key not in own), *own.values()])

    def _set_backend_ports(
        self, key: NamespacedName, pods: frozenset[PodKey], translations: tuple[Translation, ...]
    ) -> None:
        """Record what `key`'s local backends translate (nothing: forget it), marking the
        pods whose translations may change."""
        old_pods, old = self._backend_ports.get(key, (frozenset[PodKey](), ()))
        if (old_pods, old) == (pods, translations):
            return
        for pod in old_pods:
            self._backend_of[pod].discard(key)
            if not self._backend_of[pod]:
                del self._backend_of[pod]
        if translations:
            self._backend_ports[key] = (pods, translations)
            for pod in pods:
                self._backend_of.setdefault(pod, set()).add(key)
        else:
            self._backend_ports.pop(key, None)
        self._backend_dirty |= old_pods | pods

    def _service_fragment(self, key: NamespacedName) -> Fragment:
        fragment, pods, backend_ports = self._service_parts(key)
        self._set_backend_ports(key, pods, backend_ports)
        return fragment

    def _service_parts(
        self, key: NamespacedName
    ) -> tuple[Fragment, frozenset[PodKey], tuple[Translation, ...]]:
        """A service's fragment, and its local backends with what they translate of its
        NodePorts (`_backends_node_ports`)."""
        none = (EMPTY, frozenset[PodKey](), ())
        self._node_address_services.discard(key)
        self._external_vip_services.discard(key)
        self._node_port_services.discard(key)
        if key in self._translations:
            del self._translations[key]
            self._translations_changed = True
        service = self._state.service(*key)
        if service is None or service.headless or not service.cluster_ips:
            return none
        if not service.proxied:
            return none  # another proxy's, or not a proxied kind: kube-proxy skips it too
        translations: list[Translation] = []
        own_ports: list[Translation] = []  # this node's NodePorts, for its own stack
        backend_ports: list[Translation] = []  # every node's NodePorts, for its backends
        node_refusals: list[Translation] = []  # its external VIPs, when it has no endpoint
        bsids = self._inputs.service_bsids.get(service.uid)
        slices = self._state.slices_of_service(*key)
        out = _ServiceParts(slices=slices)
        families = (
            (6, service.cluster_ip_v6, None if bsids is None else bsids[0]),
            (4, service.cluster_ip_v4, None if bsids is None else bsids[1]),
        )
        for family, cluster_ip, bsid in families:
            if cluster_ip is None:
                continue
            candidates = self._candidates(service, slices, family)
            internal = self._pick(service, candidates, service.internal_traffic_policy)
            sids = {c.sid for c in internal if c.sid is not None}
            if len(sids) < len(internal):
                translations.extend(_translations(service, cluster_ip, internal))
            elif not internal and not (
                service.internal_traffic_policy == "Local"
                and self._pick(service, candidates, "Cluster")
            ):
                # No endpoint anywhere: clients refuse their own connections, as kube-proxy
                # rejects them (with internalTrafficPolicy Local and endpoints on other
                # nodes it drops them; here the route's PROHIBIT answers).
                translations.extend(
                    Translation(port.protocol, cluster_ip, port.port, ()) for port in service.ports
                )
            self._serve(service, family, (cluster_ip,), bsid, sids, RouteKind.PROHIBIT, out)
            vips = self._external_vips(service, family)
            node_addresses = self._node_port_addresses(service, family)
            if not vips and not node_addresses:
                continue
            external = self._pick(service, candidates, service.external_traffic_policy)
            # Outside endpoints serve the pods' own connections only (`Translation`).
            ext_sids = {c.sid for c in external if c.sid is not None}
            if ext_sids != sids and bsid is not None:
                # Other endpoints than the ClusterIP's: a policy of their own, local to
                # this node (its endpoint set is this node's view).
                index = self._plan.service_of_bsid(bsid)
                bsid = (
                    None
                    if index is None
                    else self._plan.service_external_bsid(self._local_id, index[0], family)
                )
            # No endpoint for external traffic: kube-proxy drops it silently under
            # externalTrafficPolicy Local (the load balancer's health check moves traffic
            # away from this node), and rejects it otherwise, as for a ClusterIP.
            local = service.external_traffic_policy == "Local"
            empty = RouteKind.BLACKHOLE if local else RouteKind.PROHIBIT
            service_index = self._service_index(bsids)
            # Its own table (node ports, source ranges); without BSIDs yet, none.
            table = None if service_index is None else SERVICE_TABLE_BASE + service_index
            serve_external = functools.partial(
                self._serve,
                service,
                family,
                bsid=bsid,
                sids=ext_sids,
                empty=empty,
                out=out,
                external=True,
            )
            ranges = self._source_ranges(service, family)
            open_vips = [v for v in vips if not ranges or v not in service.load_balancer_ips]
            refused = self._refused_vips(service, open_vips, external, local)
            node_refusals += refused
            if refused and self._inputs.capabilities.local_refusals:
                serve_external(open_vips, empty=RouteKind.LOCAL)
            else:
                serve_external(open_vips)
            if ranges:
                # loadBalancerSourceRanges: the load balancer IPs are served from the
                # service's table, to the allowed sources only; anyone else's packets
                # find the main table's blackhole (kube-proxy drops them too).
                fenced_vips = [v for v in vips if v in service.load_balancer_ips]
                fenced = [_host(v) for v in fenced_vips]
                out.routes.extend(Route(host, kind=RouteKind.BLACKHOLE) for host in fenced)
            if ranges and table is not None and self._inputs.capabilities.rules:
                serve_external(fenced_vips, table=table)
                out.rules.extend(
                    Rule(host, table, source=source) for host in fenced for source in ranges
                )
            own_ports += self._own_node_ports(service, cluster_ip, node_addresses)
            if node_addresses:  # (it has node ports, and nodes serve them)
                cluster = self._pick(service, candidates, "Cluster")
                backend_ports += self._backends_node_ports(service, family, cluster)
            if node_addresses and table is not None:
                # Without BSIDs yet, no rule: the node's own stack refuses the port.
                serve_external(node_addresses, table=table)
                out.rules.extend(
                    Rule(_host(address), table, port.protocol, port.node_port)
                    for address in node_addresses
                    for port in service.ports
                    if port.node_port
                )
        node_translations: tuple[Translation, ...] = (*own_ports, *node_refusals)
        # The node's pods translate its own NodePorts too where its rules cannot see them
        # (VPP's sit on the uplinks, so a pod's packet to this node's address would reach
        # the node's kernel instead); a kernel node's rules see its pods' packets.
        pod_own_ports = [] if self._inputs.capabilities.host_loop else own_ports
        if translations or pod_own_ports:
            self._translations[key] = (*translations, *pod_own_ports)
            self._translations_changed = True
        if translations:
            node_translations += self._translate_here(translations)
        backends = frozenset[PodKey]()
        if backend_ports:
            backends = frozenset(
                k
                for k in self._state.endpoint_pods(*key)
                if isinstance(k, PodKey) and self._is_local_pod(k)
            )
        fragment = Fragment(
            policies=tuple(out.policies.values()),
            steerings=tuple(out.steerings),
            routes=tuple(out.routes),
            rules=tuple(out.rules),
            port_maps=tuple(dict.fromkeys(out.port_maps)),
            translations=node_translations,
        )
        return fragment, backends, tuple(backend_ports) if backends else ()

    def _is_local_pod(self, key: PodKey) -> bool:
        pod = self._state.pod(key.namespace, key.name)
        return pod is not None and pod.node_name == self._node

    def _backends_node_ports(
        self, service: Service, family: int, endpoints: list[_Candidate]
    ) -> list[Translation]:
        """A VPP node's backends of `service` translate their own connections to its
        NodePorts of `family`, on every node's addresses, straight to its endpoints. Such a
        connection that comes back to the backend itself is otherwise lost:
        - to this node's NodePort, which its pods translate to the ClusterIP (VPP's rules
          sit on the uplinks), it arrives on `eth0` as a new flow (client port →
          ClusterIP) whose reply tuple is that of the client's own DNAT, and the kernel
          drops a flow whose reply clashes with another's (found by the upstream e2e
          "endpoint-Service" specs, which never reached the backend that asked);
        - to another node's, it arrives as the client's own flow (the same tuple), whose
          NAT was settled at output, so the backend's DNAT of the NodePort never applies
          (a lab backend lost every such connection that landed on itself).
        DNATed to its own address the flow stays in the pod; to another endpoint's it is a
        pod-to-pod packet, which that endpoint sees from the client's own address. All of
        the endpoints, as kube-proxy treats pods' traffic to an external port as Cluster;
        none: refused.

        The price: an entry per node and node port in each backend's table, and every
        local backend's table rewritten when the endpoints change — O(local backends) pod
        writes per endpoint change, where kube-proxy makes one per node. So not on kernel
        nodes, whose backends lose the same flows to any NodePort (their rules steer the
        node's own too): there the lab's 40-backend convergence check, in the CI's
        emulated VM, no longer converged within its 300 s. A per-pod conntrack zone for
        what comes back to the pod from its own address would fix both at O(1); not built.
        """
        caps = self._inputs.capabilities
        if caps.host_loop or not caps.translations:
            return []  # a kernel node: not yet (below)
        addresses = [
            a for n in self._state.nodes.values() for a in self._node_port_addresses_of(n, family)
        ]
        out: list[Translation] = []
        for port in service.ports:
            if not port.node_port:
                continue
            targets = _endpoint_targets(port, endpoints)
            affinity = service.affinity if targets else 0
            out.extend(
                Translation(port.protocol, address, port.node_port, targets, affinity)
                for address in addresses
            )
        return out

    def _refused_vips(
        self, service: Service, vips: list[IPAddress], endpoints: list[_Candidate], local: bool
    ) -> list[Translation]:
        """An endpoint-less Service's external VIPs, refused by the node at each port (a
        TCP reset, else ICMP port unreachable: *connection refused*), as kube-proxy rejects
        them, where the route alone answers "administratively prohibited" (EACCES; upstream
        e2e "should be able to change the type and ports of a UDP service" waits for
        ECONNREFUSED). Not under externalTrafficPolicy Local, where kube-proxy drops them
        (the load balancer's health check moves traffic away). A VPP node routes them to
        its kernel (LOCAL: VPP punts them through the host interconnect), which refuses
        them at prerouting. Not on kernel nodes yet: the same refusal in their table at
        prerouting made the kernel lab's `verify` take 230 s longer in CI's emulated VM
        (389 and 395 s without it, 619 s with it), not understood yet; they keep the
        PROHIBIT."""
        caps = self._inputs.capabilities
        if endpoints or local or not vips or not caps.local_refusals:
            return []
        return [
            Translation(port.protocol, vip, port.port, ()) for vip in vips for port in service.ports
        ]

    def _own_node_ports(
        self, service: Service, cluster_ip: IPAddress, addresses: Iterable[IPAddress]
    ) -> list[Translation]:
        """The node's own connections to its own NodePorts, translated by the client to
        the ClusterIP's port, whose steering takes them on (the endpoint sees the node's
        address, as anywhere else; kube-proxy too treats the node's own traffic to an
        `externalTrafficPolicy: Local` port as Cluster). On a VPP node its kernel
        delivers its own address locally, before any route could take it to VPP (whose
        rules sit on the uplinks, so its pods' connections translate too, the caller).
        On a kernel node its rules would serve them, but a remote backend's direct reply
        would come back as plain IPv4 from the node's own address, which the uplinks
        refuse (`dataplane/local_sources.py`); answered from the ClusterIP, it is not."""
        caps = self._inputs.capabilities
        if not caps.translations:
            return []
        return [
            Translation(port.protocol, address, port.node_port, ((cluster_ip, port.port),))
            for address in addresses
            for port in service.ports
            if port.node_port
        ]

    def _translate_here(self, translations: list[Translation]) -> tuple[Translation, ...]:
        """The node's own connections (host-network clients) translate as pods do, where
        the backend can. A connection's route is looked up before any netfilter hook, so
        the ClusterIP must have one that is not the PROHIBIT of the main table: for
        locally made packets the host loop's table routes the service CIDRs round the loop
        (`_local_node_fragment`), and the output hook's DNAT then sends the packet to its
        endpoint (the kernel routes it again). A port with no translation goes round the
        loop and comes back in to meet the main table's route like anyone's packet:
        refused at once. A VPP node's kernel routes every ClusterIP through the host
        interconnect (dataplane/vpp_host.py)."""
        caps = self._inputs.capabilities
        if not caps.translations or (caps.host_loop and not caps.rules):
            return ()
        return tuple(translations)

    def _node_port_addresses(self, service: Service, family: int) -> tuple[IPAddress, ...]:
        """This node's addresses of `family` that serve `service`'s node ports (none when
        it has none, or the backend cannot steer by port): its InternalIP, or with
        `node_port_addresses` those of its Node's addresses inside the prefixes."""
        if not any(port.node_port for port in service.ports):
            return ()
        self._node_port_services.add(service.key)
        return self._own_node_port_addresses(family)

    def _own_node_port_addresses(self, family: int | None = None) -> tuple[IPAddress, ...]:
        """This node's addresses that serve node ports, of `family` (None: both)."""
        if family is None:
            return self._own_node_port_addresses(6) + self._own_node_port_addresses(4)
        local = self._state.node(self._node)
        if local is None or not self._inputs.capabilities.rules:
            return ()
        return self._node_port_addresses_of(local, family)

    def _node_port_addresses_of(self, node: Node, family: int) -> tuple[IPAddress, ...]:
        """`node`'s addresses of `family` that serve node ports: its InternalIP, or with
        `node_port_addresses` those of its addresses inside the prefixes (every agent runs
        with the cluster's one configuration)."""
        prefixes = self._inputs.node_port_addresses
        if prefixes is None:
            primary = node.internal_ipv6 if family == 6 else node.internal_ipv4
            return () if primary is None else (primary,)
        return tuple(
            a
            for a in node.addresses
            if a.version == family and any(a in p for p in prefixes if p.version == family)
        )

    def _source_ranges(self, service: Service, family: int) -> tuple[IPNetwork, ...]:
        """The service's loadBalancerSourceRanges of `family` (none of a family leaves that
        family's load balancer IPs open: kube-proxy filters the ranges by family). Where
        they cannot be enforced (no rules in the backend, no BSIDs yet) the load balancer
        IPs get only their blackhole: closed, never open to everyone."""
        return tuple(r for r in service.load_balancer_source_ranges if r.version == family)

    def _service_index(self, bsids: tuple[IPv6Address, IPv6Address | None] | None) -> int | None:
        """The service's index in the plan (its BSID says it); None without BSIDs yet."""
        located = None if bsids is None else self._plan.service_of_bsid(bsids[0])
        return None if located is None else located[0]

    def _external_vips(self, service: Service, version: int) -> tuple[IPAddress, ...]:
        """The external VIPs of one IP version that `service` carries here: those it owns
        (`ClusterState.vip_owner`: a VIP two services claim is steered once) and that are
        nobody else's address. A node's own address (externalIPs set to a node IP, as
        kube-proxy users do to expose a port on a node) or an address in the pod CIDRs or
        the SID block is left alone: a steering takes every packet to the address, not only
        the service's ports, so it would cut the node or the pod off."""
        vips = service.external_vips(version)
        if vips:
            self._external_vip_services.add(service.key)
        plan, state = self._plan, self._state
        reserved = (plan.pod_cidr_v6, plan.pod_cidr_v4, plan.sid_block)
        out = []
        for vip in vips:
            owner = state.vip_owner(vip)
            if owner is None or owner.key != service.key or state.nodes_with_address(vip):
                continue
            if any(cidr is not None and vip in cidr for cidr in reserved):
                continue
            out.append(vip)
        return tuple(out)

    def _serve(
        self,
        service: Service,
        family: int,
        addresses: Iterable[IPAddress],
        bsid: IPv6Address | None,
        sids: set[int],
        empty: RouteKind,
        out: _ServiceParts,
        *,
        external: bool = False,
        table: int = MAIN_TABLE,
    ) -> None:
        """Steer `addresses` (ClusterIP, or external VIPs) into the policy at `bsid` with
        one segment list per SID in `sids`; with no SID (or no BSID allocated yet) an
        explicit `empty` route instead, rather than let the address follow the default
        route out of the cluster."""
        hosts = [_host(address) for address in addresses]
        if bsid is None or not sids:
            out.routes.extend(Route(host, kind=empty, table=table) for host in hosts)
            return
        if family == 6 and self._host_sid in sids and table == MAIN_TABLE:
            # A host-network endpoint here: End.DT6 `L::7` must find the address local (in
            # the host-services table; the main table keeps steering it, for the others).
            host_table = self._inputs.host_table
            out.routes.extend(Route(h, kind=RouteKind.LOCAL, table=host_table) for h in hosts)
            if self._inputs.capabilities.port_maps:
                # The node's own stack is the endpoint: it rewrites the port itself.
                out.port_maps.extend(
                    PortMap(protocol, address, port, target)
                    for (protocol, port), target in _host_targets(service, out.slices).items()
                    for address in addresses
                )
        if bsid not in out.policies:
            # Sorted already, so the policy's own sort has nothing to do.
            segment_lists = tuple(SegmentList((IPv6Address(sid),)) for sid in sorted(sids))
            # The external policy's owner is not "svc/...": that names the ClusterIP's.
            kind = "svc-external" if external else "svc"
            owner = f"{kind}/{service.namespace}/{service.name}/v{family}"
            out.policies[bsid] = SrPolicy(
                bsid, segment_lists, mode=self._mode, owner=owner, affinity=self._affinity(service)
            )
        out.steerings.extend(Steering(host, bsid, table) for host in hosts)

    def _affinity(self, service: Service) -> int:
        """sessionAffinity ClientIP's timeout where the backend can keep it, else 0."""
        return service.affinity if self._inputs.capabilities.affinity else 0

    def _candidates(
        self, service: Service, slices: list[EndpointSlice], family: int
    ) -> list[_Candidate]:
        """The endpoints of `service` this node could send traffic to, chosen as kube-proxy
        does: one entry per address (an address can sit in two slices while the controller
        moves it; the most usable entry wins), the first address of each endpoint only,
        and only endpoints we can address with a SID (pods; host-network pods on nodes
        with End.DT6/End.DT4) or that are outside the cluster (sid None)."""
        address_type = "IPv6" if family == 6 else "IPv4"
        address_class = ipaddress.IPv6Address if family == 6 else ipaddress.IPv4Address
        best: dict[int, tuple[IPAddress, Endpoint, EndpointSlice]] = {}  # by int: cheaper hash
        for eps in slices:
            if eps.address_type != address_type:
                continue
            for endpoint in eps.endpoints:
                if not endpoint.addresses:
                    continue
                address = endpoint.addresses[0]
                if type(address) is not address_class:
                    continue  # a malformed slice: its addressType says otherwise
                value = int(address)
                seen = best.get(value)
                if seen is None or _usability(endpoint) > _usability(seen[1]):
                    best[value] = (address, endpoint, eps)
        candidates = []
        for address, endpoint, eps in best.values():
            sid = self._endpoint_sid(service, address, family)
            if sid is not None or self._outside(address):
                candidates.append(_Candidate(endpoint, sid, address, eps))
        return candidates

    def _pick(
        self, service: Service, candidates: list[_Candidate], traffic_policy: str
    ) -> list[_Candidate]:
        """The endpoints for one kind of traffic (kube-proxy's CategorizeEndpoints):
        `traffic_policy` Local (internalTrafficPolicy for the ClusterIP,
        externalTrafficPolicy for external VIPs) keeps only this node's endpoints; then the
        ready ones, or when none is ready the serving-and-terminating ones (so a rolling
        update's last pods keep serving while they drain); then, for cluster-wide traffic,
        topology: with trafficDistribution PreferClose (PreferSameZone) or zone hints on
        the slices, only the endpoints for this node's zone (hints, else the endpoint's
        zone) — unless there are none, then all (kube-proxy falls back the same way);
        PreferSameNode first prefers this node's endpoints."""
        local = traffic_policy == "Local"
        if local:
            candidates = [c for c in candidates if c.endpoint.node_name == self._node]
        ready = [c for c in candidates if c.endpoint.ready]
        if ready:
            candidates = ready
        else:
            candidates = [c for c in candidates if c.endpoint.serving and c.endpoint.terminating]
        return candidates if local else self._prefer_close(service, candidates)

    def _prefer_close(self, service: Service, candidates: list[_Candidate]) -> list[_Candidate]:
        mode = service.traffic_distribution
        if mode == "PreferSameNode":
            same_node = [c for c in candidates if _on_node(c.endpoint, self._node)]
            if same_node:
                return same_node
        hinted = any(c.endpoint.hints_for_zones for c in candidates)
        zone = self._local_zone
        if zone is None or not (mode in PREFER_ZONE or hinted):
            return candidates
        close = [c for c in candidates if _for_zone(c.endpoint, zone)]
        return close or candidates

    def _outside(self, address: IPAddress) -> bool:
        """Whether `address` is outside the cluster: no pod's (by the plan: the pod CIDRs)
        and no node's. Called after `_endpoint_sid`, which made node changes re-render the
        service."""
        return self._pod_sids.locate(address) is None and not self._state.nodes_with_address(
            address
        )

    def _endpoint_sid(self, service: Service, address: IPAddress, family: int) -> int | None:
        """The SID (as an int) that delivers to `address`: its pod's End.DX6/DX4, or for a
        host-network endpoint its node's End.DT6/DT4; None when there is none."""
        plan = self._plan
        located = self._pod_sids.locate(address)
        if located is not None:
            return self._pod_sids.sid_value(located, family)
        self._node_address_services.add(service.key)
        for node in self._state.nodes_with_address(address):
            node_id = self._inputs.node_ids.get(node.name)
            if node_id is None:
                continue
            if family == 6:
                return int(plan.host_sid(node_id))
            # IPv4: the node's End.DT4 (`L::4`) looks the inner packet up in the pod table,
            # where the ClusterIP is not local but steered — into this same policy. VPP
            # went round that loop in one graph dispatch (no TTL is spent on the way)
            # until its heap ran out and it aborted; a kernel loops until the TTL expires.
            # Until IPv4 has a host-services SID as IPv6 has `L::7`, such an endpoint
            # gets no IPv4 traffic (its Service is refused over IPv4 when it is the only
            # one; End.DX4 needs a pod interface to hand the packet to).
            return None
        return None


def _translations(
    service: Service, cluster_ip: IPAddress, endpoints: list[_Candidate]
) -> Iterator[Translation]:
    """What a client pod translates `service`'s ClusterIP to, per port, when some of its
    endpoints are outside the cluster: every endpoint (those in the cluster too: DNATed to
    a pod's own address, the packet needs no SID), at the port its slice gives the service
    port's name — as kube-proxy reads the ports, from the slice."""
    for port in service.ports:
        targets = _endpoint_targets(port, endpoints)
        if targets:
            yield Translation(port.protocol, cluster_ip, port.port, targets, service.affinity)


def _endpoint_targets(
    port: ServicePort, endpoints: list[_Candidate]
) -> tuple[tuple[IPAddress, int], ...]:
    """Where `endpoints` serve `port`: each one's address at its slice's port of the
    same name."""
    return tuple(
        {
            (c.address, p.port)
            for c in endpoints
            for p in c.slice.ports
            if p.port is not None and (p.protocol, p.name) == (port.protocol, port.name)
        }
    )


def _host_targets(service: Service, slices: list[EndpointSlice]) -> dict[tuple[str, int], int]:
    """(protocol, service port) → the port a host-network endpoint listens on, where the
    two differ: the slices' port of the same name (what the EndpointSlice controller, or
    the API server for `kubernetes`, wrote: 443 → 6443)."""
    by_name = {
        (p.protocol, p.name): p.port
        for s in slices
        if s.address_type == "IPv6"
        for p in s.ports
        if p.port is not None
    }
    out = {}
    for port in service.ports:
        target = by_name.get((port.protocol, port.name))
        if target is not None and target != port.port:
            out[(port.protocol, port.port)] = target
    return out


class _Membership(NamedTuple):
    """What a pod serves as an endpoint: the VIPs it must accept, the port rewrites it
    must make, the node ports it must DNAT to itself, and every (protocol, VIP, service
    port) it serves."""

    addresses: frozenset[IPAddress]
    port_maps: frozenset[tuple[str, IPAddress, int, int]]
    node_ports: frozenset[tuple[str, int, int, int]]
    ports: frozenset[tuple[str, IPAddress, int]]


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector around a bulk render.

    A full render builds hundreds of thousands of objects that all survive, and none in a
    reference cycle (frozen dataclasses and tuples), so the collector cannot free anything
    it builds — but their number triggers full collections, each walking the whole cluster
    state: about as long again as the render itself at 10,000 services. Reference
    counting still frees everything as usual; only the cycle detector waits. GC settings
    are process-wide, so this never re-enables a collector someone else disabled.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _usability(endpoint: Endpoint) -> int:
    if endpoint.ready:
        return 2
    return 1 if endpoint.serving and endpoint.terminating else 0


def _on_node(endpoint: Endpoint, node: str) -> bool:
    if endpoint.hints_for_nodes:
        return node in endpoint.hints_for_nodes
    return endpoint.node_name == node


def _for_zone(endpoint: Endpoint, zone: str) -> bool:
    if endpoint.hints_for_zones:
        return zone in endpoint.hints_for_zones
    return endpoint.zone == zone


def _changed(old: Mapping[str, object], new: Mapping[str, object]) -> set[str]:
    return {k for k in old.keys() | new.keys() if old.get(k) != new.get(k)}
