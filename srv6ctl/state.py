"""The cluster as the controller sees it: typed, immutable objects in one in-memory view.

`ClusterState` holds the Kubernetes objects render needs (nodes, pods, services, endpoint
slices) and those NetworkPolicy needs (namespaces, network policies), each as a frozen
dataclass with normalised addresses. NetworkPolicies are the policy compiler's own
`policies.model.NetworkPolicy`: the agent hands them to it as they are, so there is one
model of them (and one reader, `policies.kube`). Sources (`srv6ctl.sources`) turn the
API's JSON into these objects; nothing here does I/O or knows about the API.

Every mutation returns the *dirty keys* it affects: which parts of a node's config must
be rendered again. This is the level-triggered contract — an event only says what to look
at again; render recomputes that part from the whole current state, so a missed or
repeated event cannot leave anything stale. An upsert of an unchanged object dirties
nothing, which makes a relist after `410 Gone` cheap.

What dirties what (render's dependencies, kept next to the indexes that answer them):

- an EndpointSlice dirties its service, and the pods whose endpoint entry changed (their
  loopback ClusterIPs and port rewrites depend on being an endpoint);
- a Service dirties itself and every pod that is one of its endpoints, and so does every
  other Service claiming one of the same addresses (its VIPs may change hands);
- a Pod dirties only itself: a service's policy never reads Pod objects, because an
  endpoint's SID follows from its address alone (`ipam6.plan.pod_of_address`);
- a Node dirties itself; render widens that to the node's pods and to services whose
  endpoints are node addresses (host-network pods), which only render can tell apart;
- a Namespace or NetworkPolicy dirties itself (the policy compiler's `recompile` works out
  which pods that affects).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import TypeAlias, TypeVar

# One immutable, hashable label map for the controller and the policy compiler alike.
from policies.model import NO_LABELS as NO_LABELS
from policies.model import Labels as Labels

# The compiler's NetworkPolicy is the state's: it carries nothing the controller does not
# need (no uid: a policy recreated with the same spec enforces the same thing).
from policies.model import NetworkPolicy as NetworkPolicy

IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network
NamespacedName: TypeAlias = tuple[str, str]

ZONE_LABEL = "topology.kubernetes.io/zone"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
# The agent publishes the SRv6 behaviours its backend can program on its own Node, so that
# other nodes know whether it can decapsulate IPv4 with End.DT4 (the kernel needs a VRF for
# it, which some kernels lack). A node without the annotation is assumed not to.
BEHAVIOURS_ANNOTATION = "srv6ctl.io/behaviours"
# A pod's VPP port type: "memif" for a CNF (README "memif pods"); absent: the usual port.
POD_INTERFACE_ANNOTATION = "srv6ctl.io/pod-interface"
# Services kube-proxy leaves alone, and so do we: one that names another proxy (any value:
# we answer to no name, as kube-proxy does not), and one labelled headless.
SERVICE_PROXY_NAME_LABEL = "service.kubernetes.io/service-proxy-name"
HEADLESS_LABEL = "service.kubernetes.io/headless"


class Kind(StrEnum):
    NODE = "Node"
    POD = "Pod"
    SERVICE = "Service"
    ENDPOINT_SLICE = "EndpointSlice"
    NAMESPACE = "Namespace"
    NETWORK_POLICY = "NetworkPolicy"


CLUSTER_SCOPED = frozenset({Kind.NODE, Kind.NAMESPACE})


# --- nodes -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Node:
    name: str
    uid: str = ""
    internal_ipv6: ipaddress.IPv6Address | None = None
    internal_ipv4: ipaddress.IPv4Address | None = None
    zone: str | None = None  # label topology.kubernetes.io/zone
    labels: Labels = NO_LABELS
    sr_behaviours: frozenset[str] = frozenset()  # from BEHAVIOURS_ANNOTATION
    # status.addresses: every InternalIP and ExternalIP, in the API's order (the primary
    # InternalIPs above are among them). Empty: just the primary ones.
    all_addresses: tuple[IPAddress, ...] = ()

    @property
    def key(self) -> NamespacedName:
        return ("", self.name)

    @property
    def addresses(self) -> tuple[IPAddress, ...]:
        """Every address the Node lists (InternalIPs first, ExternalIPs)."""
        primary = tuple(a for a in (self.internal_ipv6, self.internal_ipv4) if a is not None)
        return primary + tuple(a for a in self.all_addresses if a not in primary)


# --- pods ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ContainerPort:
    """A declared container port; its name is what a Service's named targetPort refers to."""

    port: int
    protocol: str = "TCP"
    name: str = ""


@dataclass(frozen=True, slots=True)
class Pod:
    uid: str
    namespace: str
    name: str
    node_name: str | None = None  # None until scheduled
    ips: tuple[IPAddress, ...] = ()  # status.podIPs, in the API's order
    labels: Labels = NO_LABELS
    ready: bool = False  # condition Ready
    host_network: bool = False
    container_ports: tuple[ContainerPort, ...] = ()
    phase: str = "Pending"
    terminating: bool = False  # metadata.deletionTimestamp is set
    interface_type: str = ""  # annotation srv6ctl.io/pod-interface ("memif" for a CNF)

    @property
    def key(self) -> NamespacedName:
        return (self.namespace, self.name)

    @property
    def ipv6(self) -> ipaddress.IPv6Address | None:
        return next((a for a in self.ips if isinstance(a, ipaddress.IPv6Address)), None)

    @property
    def ipv4(self) -> ipaddress.IPv4Address | None:
        return next((a for a in self.ips if isinstance(a, ipaddress.IPv4Address)), None)

    @property
    def finished(self) -> bool:
        """Succeeded/Failed pods keep their status.podIPs, but their sandbox is gone and the
        addresses may already belong to another pod: nothing may route to them."""
        return self.phase in ("Succeeded", "Failed")


# --- services --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ServicePort:
    port: int
    protocol: str = "TCP"
    name: str = ""
    target_port: int | str = 0  # a number, or the name of a container port
    node_port: int = 0  # NodePort and LoadBalancer services: the port on every node address

    def __post_init__(self) -> None:
        # The API server defaults an unset targetPort to port.
        if self.target_port == 0:
            object.__setattr__(self, "target_port", self.port)


@dataclass(frozen=True, slots=True)
class Service:
    uid: str
    namespace: str
    name: str
    cluster_ips: tuple[IPAddress, ...] = ()  # spec.clusterIPs; empty when headless
    ports: tuple[ServicePort, ...] = ()
    type: str = "ClusterIP"
    session_affinity: str = "None"
    # spec.sessionAffinityConfig.clientIP.timeoutSeconds (the API server's default; it is
    # kept under ClientIP only, and 1..86400)
    session_affinity_timeout: int = 10800
    internal_traffic_policy: str = "Cluster"
    traffic_distribution: str | None = None
    headless: bool = False  # clusterIP: None
    labels: Labels = NO_LABELS
    external_ips: tuple[IPAddress, ...] = ()  # spec.externalIPs
    # status.loadBalancer.ingress[].ip, those with ipMode VIP (the default): the ones the
    # cluster must accept itself. ipMode Proxy means the load balancer rewrites the
    # destination to a node, so the IP never reaches us as a destination (kube-proxy
    # leaves those alone too).
    load_balancer_ips: tuple[IPAddress, ...] = ()
    load_balancer_source_ranges: tuple[IPNetwork, ...] = ()
    external_traffic_policy: str = "Cluster"  # "Local": external traffic to local endpoints
    health_check_node_port: int = 0  # LoadBalancer with externalTrafficPolicy Local

    @property
    def key(self) -> NamespacedName:
        return (self.namespace, self.name)

    @property
    def affinity(self) -> int:
        """Seconds a client stays with the backend it was given (sessionAffinity
        ClientIP); 0: every new connection is balanced on its own."""
        return self.session_affinity_timeout if self.session_affinity == "ClientIP" else 0

    @property
    def proxied(self) -> bool:
        """Whether a service proxy programs it at all: not ExternalName (a DNS name), not
        labelled for another proxy or as headless (kube-proxy's own label selector)."""
        return (
            self.type != "ExternalName"
            and SERVICE_PROXY_NAME_LABEL not in self.labels
            and HEADLESS_LABEL not in self.labels
        )

    def external_vips(self, version: int) -> tuple[IPAddress, ...]:
        """The service's external addresses of one IP version (externalIPs, then the load
        balancer's), each once: packets to these come from outside the cluster and follow
        `external_traffic_policy`."""
        seen: dict[IPAddress, None] = {}
        for address in (*self.external_ips, *self.load_balancer_ips):
            if address.version == version:
                seen.setdefault(address, None)
        return tuple(seen)

    @property
    def cluster_ip_v6(self) -> ipaddress.IPv6Address | None:
        return next((a for a in self.cluster_ips if isinstance(a, ipaddress.IPv6Address)), None)

    @property
    def cluster_ip_v4(self) -> ipaddress.IPv4Address | None:
        return next((a for a in self.cluster_ips if isinstance(a, ipaddress.IPv4Address)), None)


# --- endpoint slices -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PodRef:
    """An endpoint's targetRef when it names a Pod."""

    namespace: str
    name: str
    uid: str = ""

    @property
    def key(self) -> NamespacedName:
        return (self.namespace, self.name)


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One endpoint of a slice, with its conditions resolved as kube-proxy reads them:
    ready and serving default to true when unset, terminating to false."""

    addresses: tuple[IPAddress, ...]
    ready: bool = True
    serving: bool = True
    terminating: bool = False
    node_name: str | None = None
    zone: str | None = None
    target: PodRef | None = None
    hints_for_zones: frozenset[str] = frozenset()
    hints_for_nodes: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class EndpointPort:
    port: int | None = None  # None: "all ports" (only for slices not made by the controller)
    protocol: str = "TCP"
    name: str = ""


@dataclass(frozen=True, slots=True)
class EndpointSlice:
    namespace: str
    name: str
    service_name: str | None  # label kubernetes.io/service-name
    address_type: str  # "IPv6", "IPv4" or "FQDN"
    endpoints: tuple[Endpoint, ...] = ()
    ports: tuple[EndpointPort, ...] = ()
    uid: str = ""

    @property
    def key(self) -> NamespacedName:
        return (self.namespace, self.name)

    @property
    def service_key(self) -> NamespacedName | None:
        return None if self.service_name is None else (self.namespace, self.service_name)


# --- namespaces (NetworkPolicies are policies.model's, imported above) -----------------


@dataclass(frozen=True, slots=True)
class Namespace:
    name: str
    uid: str = ""
    labels: Labels = NO_LABELS

    @property
    def key(self) -> NamespacedName:
        return ("", self.name)


ClusterObject: TypeAlias = Node | Pod | Service | EndpointSlice | Namespace | NetworkPolicy

KIND_OF: Mapping[type, Kind] = MappingProxyType(
    {
        Node: Kind.NODE,
        Pod: Kind.POD,
        Service: Kind.SERVICE,
        EndpointSlice: Kind.ENDPOINT_SLICE,
        Namespace: Kind.NAMESPACE,
        NetworkPolicy: Kind.NETWORK_POLICY,
    }
)


def kind_of(obj: ClusterObject) -> Kind:
    return KIND_OF[type(obj)]


def key_of(obj: ClusterObject) -> NamespacedName:
    """(namespace, name); namespace "" for Nodes and Namespaces. A NetworkPolicy's own `key`
    is the compiler's `PolicyKey`, so the state spells its key out here."""
    if isinstance(obj, NetworkPolicy):
        return (obj.namespace, obj.name)
    return obj.key


# --- dirty keys ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ServiceKey:
    namespace: str
    name: str


@dataclass(frozen=True, slots=True)
class PodKey:
    namespace: str
    name: str


@dataclass(frozen=True, slots=True)
class NodeKey:
    name: str


@dataclass(frozen=True, slots=True)
class NamespaceKey:
    name: str


@dataclass(frozen=True, slots=True)
class NetworkPolicyKey:
    namespace: str
    name: str


DirtyKey: TypeAlias = ServiceKey | PodKey | NodeKey | NamespaceKey | NetworkPolicyKey
Dirty: TypeAlias = frozenset[DirtyKey]
NOTHING: Dirty = frozenset()


# --- events (what sources emit, what the state applies) --------------------------------


@dataclass(frozen=True, slots=True)
class Upsert:
    obj: ClusterObject


@dataclass(frozen=True, slots=True)
class Delete:
    kind: Kind
    namespace: str  # "" for Nodes and Namespaces
    name: str


@dataclass(frozen=True, slots=True)
class Replace:
    """A relist: the complete content of one kind; whatever is not in it has vanished."""

    kind: Kind
    objects: tuple[ClusterObject, ...]


SourceEvent: TypeAlias = Upsert | Delete | Replace


# --- the state -------------------------------------------------------------------------

_K = TypeVar("_K")
_V = TypeVar("_V")


def _index_add(index: dict[_K, set[_V]], key: _K, value: _V) -> None:
    index.setdefault(key, set()).add(value)


def _index_remove(index: dict[_K, set[_V]], key: _K, value: _V) -> None:
    values = index.get(key)
    if values is not None:
        values.discard(value)
        if not values:
            del index[key]


def _claimed(service: Service) -> tuple[IPAddress, ...]:
    return (*service.cluster_ips, *service.external_ips, *service.load_balancer_ips)


class ClusterState:
    """The in-memory view, with the indexes render's queries need. Not thread-safe: one
    consumer applies the events that sources put on a queue."""

    def __init__(self) -> None:
        self._nodes: dict[str, Node] = {}
        self._pods: dict[NamespacedName, Pod] = {}
        self._services: dict[NamespacedName, Service] = {}
        self._slices: dict[NamespacedName, EndpointSlice] = {}
        self._namespaces: dict[str, Namespace] = {}
        self._network_policies: dict[NamespacedName, NetworkPolicy] = {}
        # Indexes, each answering one of render's questions without a scan.
        self._pods_on_node: dict[str, set[NamespacedName]] = {}
        self._pods_by_address: dict[IPAddress, set[NamespacedName]] = {}
        self._pods_by_uid: dict[str, NamespacedName] = {}
        self._nodes_by_address: dict[IPAddress, set[str]] = {}
        self._slices_of_service: dict[NamespacedName, set[NamespacedName]] = {}
        self._slices_by_target: dict[NamespacedName, set[NamespacedName]] = {}
        self._slices_by_address: dict[IPAddress, set[NamespacedName]] = {}
        # Every address a service claims: its ClusterIPs (unique, the API allocates them)
        # and its external VIPs (anyone may write any externalIP or LB status).
        self._services_by_address: dict[IPAddress, set[NamespacedName]] = {}

    # --- reading ------------------------------------------------------------------------

    @property
    def nodes(self) -> Mapping[str, Node]:
        return MappingProxyType(self._nodes)

    @property
    def pods(self) -> Mapping[NamespacedName, Pod]:
        return MappingProxyType(self._pods)

    @property
    def services(self) -> Mapping[NamespacedName, Service]:
        return MappingProxyType(self._services)

    @property
    def endpoint_slices(self) -> Mapping[NamespacedName, EndpointSlice]:
        return MappingProxyType(self._slices)

    @property
    def namespaces(self) -> Mapping[str, Namespace]:
        return MappingProxyType(self._namespaces)

    @property
    def network_policies(self) -> Mapping[NamespacedName, NetworkPolicy]:
        return MappingProxyType(self._network_policies)

    def node(self, name: str) -> Node | None:
        return self._nodes.get(name)

    def pod(self, namespace: str, name: str) -> Pod | None:
        return self._pods.get((namespace, name))

    def pod_by_uid(self, uid: str) -> Pod | None:
        key = self._pods_by_uid.get(uid)
        return None if key is None else self._pods.get(key)

    def service(self, namespace: str, name: str) -> Service | None:
        return self._services.get((namespace, name))

    def pods_on_node(self, node_name: str) -> list[Pod]:
        return [self._pods[k] for k in sorted(self._pods_on_node.get(node_name, ()))]

    def nodes_with_address(self, address: IPAddress) -> list[Node]:
        """Nodes with `address` among theirs (InternalIP or ExternalIP; one, unless the
        cluster is misconfigured)."""
        return [self._nodes[n] for n in sorted(self._nodes_by_address.get(address, ()))]

    def slices_of_service(self, namespace: str, name: str) -> list[EndpointSlice]:
        keys = self._slices_of_service.get((namespace, name), ())
        return [self._slices[k] for k in sorted(keys)]

    def endpoint_entries(self, pod: Pod) -> list[tuple[EndpointSlice, Endpoint]]:
        """Every slice endpoint that is this pod: named by its targetRef (with a matching
        UID when the ref has one), or, for an endpoint without a targetRef (a hand-written
        slice), by one of its addresses."""
        slice_keys = set(self._slices_by_target.get(pod.key, ()))
        for address in pod.ips:
            slice_keys.update(self._slices_by_address.get(address, ()))
        found = []
        for slice_key in sorted(slice_keys):
            eps = self._slices[slice_key]
            for endpoint in eps.endpoints:
                if _is_endpoint_of(endpoint, pod):
                    found.append((eps, endpoint))
        return found

    # --- events -------------------------------------------------------------------------

    def apply(self, event: SourceEvent) -> Dirty:
        if isinstance(event, Upsert):
            return self.upsert(event.obj)
        if isinstance(event, Delete):
            return self.delete(event.kind, event.namespace, event.name)
        return self.replace(event.kind, event.objects)

    def upsert(self, obj: ClusterObject) -> Dirty:
        if isinstance(obj, Node):
            return self.upsert_node(obj)
        if isinstance(obj, Pod):
            return self.upsert_pod(obj)
        if isinstance(obj, Service):
            return self.upsert_service(obj)
        if isinstance(obj, EndpointSlice):
            return self.upsert_endpoint_slice(obj)
        if isinstance(obj, Namespace):
            return self.upsert_namespace(obj)
        return self.upsert_network_policy(obj)

    def delete(self, kind: Kind, namespace: str, name: str) -> Dirty:
        if kind is Kind.NODE:
            return self.delete_node(name)
        if kind is Kind.POD:
            return self.delete_pod(namespace, name)
        if kind is Kind.SERVICE:
            return self.delete_service(namespace, name)
        if kind is Kind.ENDPOINT_SLICE:
            return self.delete_endpoint_slice(namespace, name)
        if kind is Kind.NAMESPACE:
            return self.delete_namespace(name)
        return self.delete_network_policy(namespace, name)

    def replace(self, kind: Kind, objects: Iterable[ClusterObject]) -> Dirty:
        """Make `kind`'s content exactly `objects` (a relist), deleting what vanished."""
        dirty: set[DirtyKey] = set()
        seen: set[NamespacedName] = set()
        for obj in objects:
            if kind_of(obj) is not kind:
                raise ValueError(f"replace({kind}) was given a {kind_of(obj)} {key_of(obj)}")
            seen.add(key_of(obj))
            dirty |= self.upsert(obj)
        for namespace, name in sorted(set(self._keys(kind)) - seen):
            dirty |= self.delete(kind, namespace, name)
        return frozenset(dirty)

    def _keys(self, kind: Kind) -> Iterable[NamespacedName]:
        if kind is Kind.NODE:
            return (("", n) for n in self._nodes)
        if kind is Kind.NAMESPACE:
            return (("", n) for n in self._namespaces)
        if kind is Kind.POD:
            return self._pods.keys()
        if kind is Kind.SERVICE:
            return self._services.keys()
        if kind is Kind.ENDPOINT_SLICE:
            return self._slices.keys()
        return self._network_policies.keys()

    # --- nodes --------------------------------------------------------------------------

    def upsert_node(self, node: Node) -> Dirty:
        old = self._nodes.get(node.name)
        if old == node:
            return NOTHING
        if old is not None:
            self._unindex_node(old)
        self._nodes[node.name] = node
        for address in node.addresses:
            _index_add(self._nodes_by_address, address, node.name)
        return frozenset({NodeKey(node.name)})

    def delete_node(self, name: str) -> Dirty:
        old = self._nodes.pop(name, None)
        if old is None:
            return NOTHING
        self._unindex_node(old)
        return frozenset({NodeKey(name)})

    def _unindex_node(self, node: Node) -> None:
        for address in node.addresses:
            _index_remove(self._nodes_by_address, address, node.name)

    # --- pods ---------------------------------------------------------------------------

    def upsert_pod(self, pod: Pod) -> Dirty:
        old = self._pods.get(pod.key)
        if old == pod:
            return NOTHING
        if old is not None:
            self._unindex_pod(old)
        self._pods[pod.key] = pod
        if pod.node_name is not None:
            _index_add(self._pods_on_node, pod.node_name, pod.key)
        for address in pod.ips:
            _index_add(self._pods_by_address, address, pod.key)
        if pod.uid:
            self._pods_by_uid[pod.uid] = pod.key
        return frozenset({PodKey(*pod.key)})

    def delete_pod(self, namespace: str, name: str) -> Dirty:
        old = self._pods.pop((namespace, name), None)
        if old is None:
            return NOTHING
        self._unindex_pod(old)
        return frozenset({PodKey(namespace, name)})

    def _unindex_pod(self, pod: Pod) -> None:
        if pod.node_name is not None:
            _index_remove(self._pods_on_node, pod.node_name, pod.key)
        for address in pod.ips:
            _index_remove(self._pods_by_address, address, pod.key)
        if self._pods_by_uid.get(pod.uid) == pod.key:
            del self._pods_by_uid[pod.uid]

    # --- services -----------------------------------------------------------------------

    def endpoint_pods(self, namespace: str, name: str) -> Dirty:
        """The keys of the pods that are endpoints of a service (in any of its slices)."""
        dirty: set[DirtyKey] = set()
        for slice_key in self._slices_of_service.get((namespace, name), ()):
            dirty |= self._pods_of(self._slices[slice_key].endpoints)
        return frozenset(dirty)

    def vip_owner(self, address: IPAddress) -> Service | None:
        """The service whose external traffic `address` carries, when two claim it: the
        one with it as ClusterIP, else the first by namespace/name (as kube-proxy, that
        makes every node pick the same one, whatever order the services came in). Only
        services a proxy programs count (`Service.proxied`)."""
        keys = self._services_by_address.get(address)
        if not keys:
            return None
        claimants = [self._services[k] for k in sorted(keys) if self._services[k].proxied]
        if not claimants:
            return None
        for service in claimants:
            if address in service.cluster_ips:
                return service
        return claimants[0]

    def upsert_service(self, service: Service) -> Dirty:
        old = self._services.get(service.key)
        if old == service:
            return NOTHING
        self._services[service.key] = service
        return self._service_dirty(service.key, old, service)

    def delete_service(self, namespace: str, name: str) -> Dirty:
        old = self._services.pop((namespace, name), None)
        if old is None:
            return NOTHING
        return self._service_dirty((namespace, name), old, None)

    def _service_dirty(
        self, key: NamespacedName, old: Service | None, new: Service | None
    ) -> Dirty:
        addresses = {a for s in (old, new) if s is not None for a in _claimed(s)}
        shared: set[NamespacedName] = set()  # services claiming one of them too
        for address in addresses:
            shared |= self._services_by_address.get(address, set())
        if old is not None:
            for address in _claimed(old):
                _index_remove(self._services_by_address, address, key)
        if new is not None:
            for address in _claimed(new):
                _index_add(self._services_by_address, address, key)
        dirty: set[DirtyKey] = set()
        for affected in {key, *shared}:
            dirty.add(ServiceKey(*affected))
            dirty |= self.endpoint_pods(*affected)
        return frozenset(dirty)

    # --- endpoint slices ----------------------------------------------------------------

    def upsert_endpoint_slice(self, eps: EndpointSlice) -> Dirty:
        old = self._slices.get(eps.key)
        if old == eps:
            return NOTHING
        if old is not None:
            self._unindex_slice(old)
        self._slices[eps.key] = eps
        self._index_slice(eps)
        return self._slice_dirty(old, eps)

    def delete_endpoint_slice(self, namespace: str, name: str) -> Dirty:
        old = self._slices.pop((namespace, name), None)
        if old is None:
            return NOTHING
        self._unindex_slice(old)
        return self._slice_dirty(old, None)

    def _slice_dirty(self, old: EndpointSlice | None, new: EndpointSlice | None) -> Dirty:
        dirty: set[DirtyKey] = set()
        for eps in (old, new):
            if eps is not None and eps.service_key is not None:
                dirty.add(ServiceKey(*eps.service_key))
        if (
            old is not None
            and new is not None
            and (old.service_name, old.address_type, old.ports)
            == (new.service_name, new.address_type, new.ports)
        ):
            # Only the pods whose entry changed: a readiness flip re-renders one pod. New
            # ports (a Service's targetPort changed) are every pod's port rewrites.
            changed = set(old.endpoints).symmetric_difference(new.endpoints)
        else:
            changed = set(old.endpoints if old else ()) | set(new.endpoints if new else ())
        dirty |= self._pods_of(changed)
        return frozenset(dirty)

    def _pods_of(self, endpoints: Iterable[Endpoint]) -> set[DirtyKey]:
        pods: set[DirtyKey] = set()
        for endpoint in endpoints:
            if endpoint.target is not None:
                pods.add(PodKey(*endpoint.target.key))
                continue
            for address in endpoint.addresses:
                pods.update(PodKey(*k) for k in self._pods_by_address.get(address, ()))
        return pods

    def _index_slice(self, eps: EndpointSlice) -> None:
        if eps.service_key is not None:
            _index_add(self._slices_of_service, eps.service_key, eps.key)
        for endpoint in eps.endpoints:
            if endpoint.target is not None:
                _index_add(self._slices_by_target, endpoint.target.key, eps.key)
            else:
                for address in endpoint.addresses:
                    _index_add(self._slices_by_address, address, eps.key)

    def _unindex_slice(self, eps: EndpointSlice) -> None:
        if eps.service_key is not None:
            _index_remove(self._slices_of_service, eps.service_key, eps.key)
        for endpoint in eps.endpoints:
            if endpoint.target is not None:
                _index_remove(self._slices_by_target, endpoint.target.key, eps.key)
            else:
                for address in endpoint.addresses:
                    _index_remove(self._slices_by_address, address, eps.key)

    # --- namespaces and network policies ------------------------------------------------

    def upsert_namespace(self, namespace: Namespace) -> Dirty:
        if self._namespaces.get(namespace.name) == namespace:
            return NOTHING
        self._namespaces[namespace.name] = namespace
        return frozenset({NamespaceKey(namespace.name)})

    def delete_namespace(self, name: str) -> Dirty:
        if self._namespaces.pop(name, None) is None:
            return NOTHING
        return frozenset({NamespaceKey(name)})

    def upsert_network_policy(self, policy: NetworkPolicy) -> Dirty:
        key = key_of(policy)
        if self._network_policies.get(key) == policy:
            return NOTHING
        self._network_policies[key] = policy
        return frozenset({NetworkPolicyKey(*key)})

    def delete_network_policy(self, namespace: str, name: str) -> Dirty:
        if self._network_policies.pop((namespace, name), None) is None:
            return NOTHING
        return frozenset({NetworkPolicyKey(namespace, name)})


def _is_endpoint_of(endpoint: Endpoint, pod: Pod) -> bool:
    if endpoint.target is not None:
        ref = endpoint.target
        # A StatefulSet pod recreated under the same name is a new pod: an entry still
        # naming the old UID is not yet about it.
        return ref.key == pod.key and (not ref.uid or not pod.uid or ref.uid == pod.uid)
    return any(address in pod.ips for address in endpoint.addresses)
