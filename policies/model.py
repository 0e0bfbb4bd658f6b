"""The policy compiler's vocabulary: what it reads (a cluster snapshot) and what it writes.

Inputs are the few Kubernetes facts NetworkPolicy depends on, as frozen dataclasses with
normalised addresses: namespaces (labels), pods (labels, addresses, declared container
ports, and — because services here have no NAT — the service frontends they serve),
nodes (their addresses: traffic between a pod and its own node is always allowed), and
the policies themselves. `Cluster` is one immutable snapshot of all of them.

Outputs are backend-neutral: per pod, a `PodRules` with one `Direction` per way (ingress,
egress), each an isolation flag and a list of `Rule`s (who may talk: an `AddressSet` of
prefixes, excepts already subtracted; on what: `Ports`, protocol + port ranges, named
ports already resolved) plus `ServiceRule`s for ClusterIP traffic (see compiler.py for
why those exist). `PodRules.ingress_allows` / `egress_allows` define what any backend
must enforce; the tests compare them with the Kubernetes semantics and the nftables
data path with them.

Nothing here imports the controller (`srv6ctl`) or the CNI. The controller's state holds
this module's `NetworkPolicy` as it is (kube.py reads it from API JSON, for both); its
pods, namespaces and nodes are its own objects, converted into these types by the agent.
"""

from __future__ import annotations

import bisect
import ipaddress
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cached_property
from types import MappingProxyType
from typing import TypeAlias

IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network

# The API server puts this label on every Namespace (immutable, since Kubernetes 1.22), so
# that a namespaceSelector can name a namespace; we add it the same way.
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"


class InvalidPolicy(ValueError):
    """An input the API server would have refused; the message names the object and field."""


class Protocol(StrEnum):
    TCP = "TCP"
    UDP = "UDP"
    SCTP = "SCTP"

    @property
    def number(self) -> int:
        return _PROTOCOL_NUMBERS[self]


_PROTOCOL_NUMBERS = {Protocol.TCP: 6, Protocol.UDP: 17, Protocol.SCTP: 132}


class PolicyType(StrEnum):
    INGRESS = "Ingress"
    EGRESS = "Egress"


def ip(value: object) -> IPAddress:
    if isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return value
    return ipaddress.ip_address(str(value))


def address_key(address: IPAddress) -> tuple[int, int]:
    """A total order over both families (ipaddress refuses to compare v4 with v6)."""
    return (address.version, int(address))


def network(value: object) -> IPNetwork:
    if isinstance(value, ipaddress.IPv4Network | ipaddress.IPv6Network):
        return value
    # strict: a CIDR with host bits set ("10.0.0.1/8") is most likely a typo; kube.py masks
    # them itself where it must read what the API server accepted.
    return ipaddress.ip_network(str(value), strict=True)


# --- labels and selectors --------------------------------------------------------------


class Labels(Mapping[str, str]):
    """An immutable, hashable label map (dataclasses holding it stay hashable)."""

    __slots__ = ("_hash", "_items")

    def __init__(self, items: Mapping[str, str] | Iterable[tuple[str, str]] = ()) -> None:
        pairs = items.items() if isinstance(items, Mapping) else items
        self._items: dict[str, str] = dict(sorted(pairs))
        self._hash = hash(tuple(self._items.items()))

    def __getitem__(self, key: str) -> str:
        return self._items[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Labels):
            return self._hash == other._hash and self._items == other._items
        return isinstance(other, Mapping) and self._items == dict(other.items())

    def __repr__(self) -> str:
        return f"Labels({self._items!r})"


NO_LABELS = Labels()


class Operator(StrEnum):
    IN = "In"
    NOT_IN = "NotIn"
    EXISTS = "Exists"
    DOES_NOT_EXIST = "DoesNotExist"


@dataclass(frozen=True)
class Requirement:
    """One matchExpressions entry (metav1.LabelSelectorRequirement)."""

    key: str
    operator: Operator | str
    values: AbstractSet[str] = frozenset()

    def __post_init__(self) -> None:
        object.__setattr__(self, "operator", Operator(self.operator))
        object.__setattr__(self, "values", frozenset(self.values))

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.operator is Operator.IN:
            return labels.get(self.key) in self.values
        if self.operator is Operator.NOT_IN:
            # As labels.Selector: a missing key is "not in" any set.
            return labels.get(self.key) not in self.values
        if self.operator is Operator.EXISTS:
            return self.key in labels
        return self.key not in labels


@dataclass(frozen=True)
class LabelSelector:
    """metav1.LabelSelector: every term must hold; the empty selector matches everything."""

    match_labels: Mapping[str, str] = NO_LABELS
    match_expressions: tuple[Requirement, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.match_labels, Labels):
            object.__setattr__(self, "match_labels", Labels(self.match_labels))
        object.__setattr__(self, "match_expressions", tuple(self.match_expressions))

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in self.match_labels.items()) and all(
            r.matches(labels) for r in self.match_expressions
        )

    @property
    def empty(self) -> bool:
        return not self.match_labels and not self.match_expressions


EVERYTHING = LabelSelector()


# --- cluster objects -------------------------------------------------------------------


@dataclass(frozen=True, order=True)
class PodKey:
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, order=True)
class PolicyKey:
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, order=True)
class NamespaceKey:
    name: str


@dataclass(frozen=True, order=True)
class NodeKey:
    name: str


ChangedKey: TypeAlias = PodKey | PolicyKey | NamespaceKey | NodeKey


@dataclass(frozen=True)
class Namespace:
    name: str
    labels: Mapping[str, str] = NO_LABELS

    def __post_init__(self) -> None:
        labels = dict(self.labels)
        labels.setdefault(NAMESPACE_NAME_LABEL, self.name)
        object.__setattr__(self, "labels", Labels(labels))

    @property
    def key(self) -> NamespaceKey:
        return NamespaceKey(self.name)


@dataclass(frozen=True)
class ContainerPort:
    """A port a container declares; its name is what a named policy port refers to."""

    port: int
    protocol: Protocol = Protocol.TCP
    name: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "protocol", Protocol(self.protocol))


@dataclass(frozen=True)
class Frontend:
    """A service frontend a pod serves: `cluster_ip`:`port` arrives at the pod unchanged
    (SRv6 End.DX6 delivers the original packet) and the pod rewrites `port` to
    `target_port` itself. `target_port` may still be a container port's name."""

    cluster_ip: IPAddress
    protocol: Protocol
    port: int
    target_port: int | str

    def __post_init__(self) -> None:
        object.__setattr__(self, "cluster_ip", ip(self.cluster_ip))
        object.__setattr__(self, "protocol", Protocol(self.protocol))

    def sort_key(self) -> tuple[int, int, str, int, str]:
        return (*address_key(self.cluster_ip), self.protocol, self.port, str(self.target_port))


@dataclass(frozen=True)
class Pod:
    """A pod as policies see it. Give only pods whose addresses are theirs: a finished
    (Succeeded/Failed) pod's status.podIPs may already belong to another pod."""

    namespace: str
    name: str
    labels: Mapping[str, str] = NO_LABELS
    ips: tuple[IPAddress, ...] = ()
    container_ports: tuple[ContainerPort, ...] = ()
    frontends: tuple[Frontend, ...] = ()
    node_name: str | None = None
    host_network: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.labels, Labels):
            object.__setattr__(self, "labels", Labels(self.labels))
        object.__setattr__(self, "ips", tuple(ip(a) for a in self.ips))
        object.__setattr__(self, "container_ports", tuple(self.container_ports))
        object.__setattr__(
            self, "frontends", tuple(sorted(set(self.frontends), key=Frontend.sort_key))
        )

    @property
    def key(self) -> PodKey:
        return PodKey(self.namespace, self.name)

    @property
    def enforceable(self) -> bool:
        """Policies neither select nor name host-network pods (their address is the node's;
        Kubernetes leaves that case undefined), nor pods that have no address yet."""
        return not self.host_network and bool(self.ips)

    def named_port(self, name: str, protocol: Protocol) -> int | None:
        """Resolve a named port as Kubernetes does: same name *and* protocol."""
        for port in self.container_ports:
            if port.name == name and port.protocol == protocol:
                return port.port
        return None

    @cached_property
    def resolved_frontends(self) -> tuple[Frontend, ...]:
        """Frontends with numeric target ports; one whose named target this pod does not
        declare has no backend here (as with Kubernetes endpoints) and is left out."""
        resolved = []
        for frontend in self.frontends:
            target = frontend.target_port
            if isinstance(target, str):
                number = self.named_port(target, frontend.protocol)
                if number is None:
                    continue
                frontend = Frontend(frontend.cluster_ip, frontend.protocol, frontend.port, number)
            resolved.append(frontend)
        return tuple(sorted(set(resolved), key=Frontend.sort_key))

    @property
    def has_named_ports(self) -> bool:
        return any(port.name for port in self.container_ports)


@dataclass(frozen=True)
class Node:
    """A node's addresses: traffic between a pod and its own node is always allowed
    (kubelet probes), so they are needed wherever a pod is enforced."""

    name: str
    addresses: AbstractSet[IPAddress] = frozenset()

    def __post_init__(self) -> None:
        object.__setattr__(self, "addresses", frozenset(ip(a) for a in self.addresses))

    @property
    def key(self) -> NodeKey:
        return NodeKey(self.name)


@dataclass(frozen=True)
class IPBlock:
    cidr: IPNetwork
    excepted: tuple[IPNetwork, ...] = ()  # the API's `except`

    def __post_init__(self) -> None:
        object.__setattr__(self, "cidr", network(self.cidr))
        object.__setattr__(self, "excepted", tuple(network(n) for n in self.excepted))


@dataclass(frozen=True)
class Peer:
    """One `from`/`to` entry. A selector is None when absent, which is not the same as
    empty: `podSelector: {}` alone means every pod of the policy's namespace,
    `namespaceSelector: {}` alone every pod of every namespace."""

    pod_selector: LabelSelector | None = None
    namespace_selector: LabelSelector | None = None
    ip_block: IPBlock | None = None

    def __post_init__(self) -> None:
        selectors = self.pod_selector is not None or self.namespace_selector is not None
        if selectors == (self.ip_block is not None):
            # The API server's validation: exactly one of ipBlock and the selectors.
            raise InvalidPolicy(f"a peer needs either selectors or an ipBlock, not {self}")


@dataclass(frozen=True)
class PolicyPort:
    protocol: Protocol = Protocol.TCP
    port: int | str | None = None  # None: every port of the protocol
    end_port: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "protocol", Protocol(self.protocol))
        if self.end_port is not None and not (
            isinstance(self.port, int) and self.port <= self.end_port
        ):
            raise InvalidPolicy(f"endPort {self.end_port} needs a numeric port <= it, not {self}")

    def numbers(self) -> PortRange | None:
        """The range of a numeric (or absent) port; None for a named one."""
        if isinstance(self.port, str):
            return None
        if self.port is None:
            return PortRange(self.protocol, *ALL_PORTS)
        return PortRange(self.protocol, self.port, self.end_port or self.port)


@dataclass(frozen=True)
class PolicyRule:
    """An ingress or egress rule: empty `peers` means every peer, empty `ports` every port
    of every protocol — as in the API, where an absent list and an empty one are alike."""

    peers: tuple[Peer, ...] = ()
    ports: tuple[PolicyPort, ...] = ()


@dataclass(frozen=True)
class NetworkPolicy:
    namespace: str
    name: str
    pod_selector: LabelSelector = EVERYTHING
    # The effective policyTypes (kube.py applies the API's default: Ingress, plus Egress
    # when there are egress rules).
    policy_types: AbstractSet[PolicyType | str] = frozenset({PolicyType.INGRESS})
    ingress: tuple[PolicyRule, ...] = ()
    egress: tuple[PolicyRule, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "policy_types", frozenset(PolicyType(t) for t in self.policy_types)
        )
        object.__setattr__(self, "ingress", tuple(self.ingress))
        object.__setattr__(self, "egress", tuple(self.egress))

    @property
    def key(self) -> PolicyKey:
        return PolicyKey(self.namespace, self.name)


@dataclass(frozen=True, eq=False)
class Cluster:
    """One immutable snapshot of everything the compiler reads, with lazily built indexes.

    The agent keeps the previous snapshot to give `compiler.recompile` both sides of a
    change; `with_` builds the next one (a shallow copy: cheap next to a compile).
    """

    namespaces: Mapping[str, Namespace] = field(default_factory=dict)
    pods: Mapping[PodKey, Pod] = field(default_factory=dict)
    policies: Mapping[PolicyKey, NetworkPolicy] = field(default_factory=dict)
    nodes: Mapping[str, Node] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("namespaces", "pods", "policies", "nodes"):
            object.__setattr__(self, name, MappingProxyType(dict(getattr(self, name))))

    @classmethod
    def of(
        cls,
        namespaces: Iterable[Namespace] = (),
        pods: Iterable[Pod] = (),
        policies: Iterable[NetworkPolicy] = (),
        nodes: Iterable[Node] = (),
    ) -> Cluster:
        return cls(
            {n.name: n for n in namespaces},
            {p.key: p for p in pods},
            {p.key: p for p in policies},
            {n.name: n for n in nodes},
        )

    def with_(
        self,
        upsert: Iterable[Namespace | Pod | NetworkPolicy | Node] = (),
        delete: Iterable[ChangedKey] = (),
    ) -> tuple[Cluster, frozenset[ChangedKey]]:
        """The next snapshot, and the keys that changed (for `compiler.recompile`)."""
        namespaces, pods = dict(self.namespaces), dict(self.pods)
        policies, nodes = dict(self.policies), dict(self.nodes)
        changed: set[ChangedKey] = set()
        for obj in upsert:
            if isinstance(obj, Namespace):
                namespaces[obj.name] = obj
            elif isinstance(obj, Pod):
                pods[obj.key] = obj
            elif isinstance(obj, NetworkPolicy):
                policies[obj.key] = obj
            else:
                nodes[obj.name] = obj
            changed.add(obj.key)
        for key in delete:
            if isinstance(key, NamespaceKey):
                namespaces.pop(key.name, None)
            elif isinstance(key, PodKey):
                pods.pop(key, None)
            elif isinstance(key, PolicyKey):
                policies.pop(key, None)
            else:
                nodes.pop(key.name, None)
            changed.add(key)
        return Cluster(namespaces, pods, policies, nodes), frozenset(changed)

    def namespace_labels(self, name: str) -> Mapping[str, str]:
        namespace = self.namespaces.get(name)
        # A pod's namespace always exists in the API; a snapshot may lack it briefly.
        return namespace.labels if namespace is not None else Namespace(name).labels

    @cached_property
    def pods_by_namespace(self) -> Mapping[str, tuple[Pod, ...]]:
        index: dict[str, list[Pod]] = defaultdict(list)
        for key in sorted(self.pods):
            index[key.namespace].append(self.pods[key])
        return MappingProxyType({ns: tuple(pods) for ns, pods in index.items()})

    @cached_property
    def policies_by_namespace(self) -> Mapping[str, tuple[NetworkPolicy, ...]]:
        index: dict[str, list[NetworkPolicy]] = defaultdict(list)
        for key in sorted(self.policies):
            index[key.namespace].append(self.policies[key])
        return MappingProxyType({ns: tuple(policies) for ns, policies in index.items()})

    @cached_property
    def pods_by_label(self) -> Mapping[tuple[str, str], tuple[Pod, ...]]:
        """Enforceable pods per (key, value): a selector's matchLabels narrow the scan."""
        index: dict[tuple[str, str], list[Pod]] = defaultdict(list)
        for pod in self.enforceable_pods:
            for item in pod.labels.items():
                index[item].append(pod)
        return MappingProxyType({item: tuple(pods) for item, pods in index.items()})

    @cached_property
    def namespace_names(self) -> tuple[str, ...]:
        return tuple(sorted(set(self.namespaces) | set(self.pods_by_namespace)))

    @cached_property
    def enforceable_pods(self) -> tuple[Pod, ...]:
        return tuple(self.pods[k] for k in sorted(self.pods) if self.pods[k].enforceable)

    @cached_property
    def cluster_ips(self) -> AddressSet:
        """Every ClusterIP some pod serves: egress to these is judged by their backends."""
        return AddressSet.of(
            f.cluster_ip for pod in self.enforceable_pods for f in pod.resolved_frontends
        )

    @cached_property
    def port_owners(self) -> tuple[Pod, ...]:
        """Pods whose declared ports or frontends egress rules may depend on (per
        destination): the only ones a named port or a ClusterIP can resolve to."""
        return tuple(p for p in self.enforceable_pods if p.resolved_frontends or p.has_named_ports)

    @cached_property
    def policies_with_remote_peers(self) -> tuple[NetworkPolicy, ...]:
        """Policies that may name pods outside their own namespace (a namespaceSelector,
        an ipBlock, or an egress rule to anywhere): a pod change must look at these as
        well as at the policies of its own namespace."""

        def remote(rule: PolicyRule) -> bool:
            return any(p.namespace_selector is not None or p.ip_block for p in rule.peers)

        return tuple(
            policy
            for key, policy in sorted(self.policies.items())
            if any(remote(r) for r in policy.ingress)
            or any(remote(r) or not r.peers for r in policy.egress)
        )

    def node_addresses(self, pod: Pod) -> AddressSet:
        node = None if pod.node_name is None else self.nodes.get(pod.node_name)
        return AddressSet.of(()) if node is None else AddressSet.of(node.addresses)


# --- compiled output: address sets, ports, rules ---------------------------------------


Range: TypeAlias = tuple[int, int]  # first and last address, inclusive, as integers


def _merge(ranges: Iterable[Range]) -> tuple[Range, ...]:
    merged: list[Range] = []
    for first, last in sorted(ranges):
        if merged and first <= merged[-1][1] + 1:
            if last > merged[-1][1]:
                merged[-1] = (merged[-1][0], last)
        else:
            merged.append((first, last))
    return tuple(merged)


def _subtract(ranges: tuple[Range, ...], hole: Range) -> tuple[Range, ...]:
    left: list[Range] = []
    for first, last in ranges:
        if hole[1] < first or last < hole[0]:
            left.append((first, last))
            continue
        if first < hole[0]:
            left.append((first, hole[0] - 1))
        if hole[1] < last:
            left.append((hole[1] + 1, last))
    return tuple(left)


def _span(net: IPNetwork) -> Range:
    return int(net.network_address), int(net.broadcast_address)


@dataclass(frozen=True)
class AddressSet:
    """A set of addresses per family as sorted, disjoint, non-adjacent integer ranges.

    Ranges, not prefixes: building a set of 10,000 pod addresses must take milliseconds
    (ipaddress.collapse_addresses takes a sixth of a second), nftables interval sets
    take ranges as they are, and `networks()` gives prefixes to a backend that needs them
    (VPP ACLs). The form is canonical, so equal sets compare equal. `except`s are
    already subtracted: no backend has to apply them.
    """

    v4: tuple[Range, ...] = ()
    v6: tuple[Range, ...] = ()

    @classmethod
    def of(cls, items: Iterable[IPAddress | IPNetwork]) -> AddressSet:
        v4: list[Range] = []
        v6: list[Range] = []
        for item in items:
            if isinstance(item, ipaddress.IPv4Network | ipaddress.IPv6Network):
                span = _span(item)
            else:
                span = (int(item), int(item))
            (v4 if item.version == 4 else v6).append(span)
        return cls(_merge(v4), _merge(v6))

    @classmethod
    def block(cls, block: IPBlock) -> AddressSet:
        """`cidr` minus every `except` (an except outside the CIDR, or of the other family,
        removes nothing — as Kubernetes evaluates it)."""
        ranges: tuple[Range, ...] = (_span(block.cidr),)
        for excepted in block.excepted:
            if excepted.version == block.cidr.version:
                ranges = _subtract(ranges, _span(excepted))
        if block.cidr.version == 4:
            return cls(v4=ranges)
        return cls(v6=ranges)

    @classmethod
    def union(cls, sets: Iterable[AddressSet]) -> AddressSet:
        sets = list(sets)
        if len(sets) == 1:
            return sets[0]
        return cls(_merge(r for s in sets for r in s.v4), _merge(r for s in sets for r in s.v6))

    def __bool__(self) -> bool:
        return bool(self.v4 or self.v6)

    def __contains__(self, address: object) -> bool:
        if not isinstance(address, ipaddress.IPv4Address | ipaddress.IPv6Address):
            return False
        ranges, starts = (
            (self.v4, self._starts[0])
            if address.version == 4
            else (
                self.v6,
                self._starts[1],
            )
        )
        value = int(address)
        i = bisect.bisect_right(starts, value) - 1
        return i >= 0 and value <= ranges[i][1]

    @cached_property
    def _starts(self) -> tuple[list[int], list[int]]:
        return [r[0] for r in self.v4], [r[0] for r in self.v6]

    def __len__(self) -> int:
        """The number of ranges (what a backend stores), not of addresses."""
        return len(self.v4) + len(self.v6)

    def elements(self, version: int) -> Iterator[str]:
        """One family's ranges as text: `a`, `a/len` when the range is a prefix, else
        `a-b` (nftables interval-set syntax; also how `repr` shows them)."""
        make = ipaddress.IPv4Address if version == 4 else ipaddress.IPv6Address
        bits = 32 if version == 4 else 128
        for first, last in self.v4 if version == 4 else self.v6:
            size = last - first + 1
            if size == 1:
                yield str(make(first))
            elif size & (size - 1) == 0 and first % size == 0:
                yield f"{make(first)}/{bits - size.bit_length() + 1}"
            else:
                yield f"{make(first)}-{make(last)}"

    def __repr__(self) -> str:
        return f"AddressSet({', '.join([*self.elements(4), *self.elements(6)])})"

    def networks(self) -> Iterator[IPNetwork]:
        """The same set as prefixes (for backends that take only prefixes)."""
        for first, last in self.v4:
            yield from ipaddress.summarize_address_range(
                ipaddress.IPv4Address(first), ipaddress.IPv4Address(last)
            )
        for first, last in self.v6:
            yield from ipaddress.summarize_address_range(
                ipaddress.IPv6Address(first), ipaddress.IPv6Address(last)
            )


@dataclass(frozen=True, order=True)
class PortRange:
    protocol: Protocol
    first: int
    last: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "protocol", Protocol(self.protocol))
        if not 0 <= self.first <= self.last <= 65535:
            raise InvalidPolicy(f"port range {self.first}-{self.last} is not within 0-65535")


ALL_PORTS = (0, 65535)


@dataclass(frozen=True)
class Ports:
    """Protocol + port ranges, merged per protocol (sorted, disjoint, non-adjacent)."""

    ranges: tuple[PortRange, ...] = ()

    @classmethod
    def of(cls, ranges: Iterable[PortRange]) -> Ports:
        merged: list[PortRange] = []
        for r in sorted(ranges):
            last = merged[-1] if merged else None
            if last is not None and last.protocol == r.protocol and r.first <= last.last + 1:
                merged[-1] = PortRange(r.protocol, last.first, max(last.last, r.last))
            else:
                merged.append(r)
        return cls(tuple(merged))

    def __bool__(self) -> bool:
        return bool(self.ranges)

    def allows(self, protocol: Protocol, port: int) -> bool:
        return any(r.protocol == protocol and r.first <= port <= r.last for r in self.ranges)


@dataclass(frozen=True)
class Rule:
    """Traffic to/from `peers` on `ports`. None means any: `peers=None` any address,
    `ports=None` any traffic at all (every protocol, ICMP included)."""

    peers: AddressSet | None
    ports: Ports | None

    def allows(self, address: IPAddress, protocol: Protocol | None, port: int | None) -> bool:
        if self.peers is not None and address not in self.peers:
            return False
        if self.ports is None:
            return True
        return protocol is not None and port is not None and self.ports.allows(protocol, port)


@dataclass(frozen=True)
class ServicePort:
    """A ClusterIP destination as the packet carries it (before any pod's port rewrite):
    `protocol`/`port` None means any traffic to `address`."""

    address: IPAddress
    protocol: Protocol | None = None
    port: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "address", ip(self.address))
        if self.protocol is not None:
            object.__setattr__(self, "protocol", Protocol(self.protocol))

    def sort_key(self) -> tuple[int, int, str, int]:
        return (
            *address_key(self.address),
            self.protocol or "",
            -1 if self.port is None else self.port,
        )

    def allows(self, address: IPAddress, protocol: Protocol | None, port: int | None) -> bool:
        if address != self.address:
            return False
        return self.protocol is None or (self.protocol == protocol and self.port == port)


@dataclass(frozen=True)
class ServiceRule:
    """ClusterIP traffic a rule allows. Ingress: `peers` may reach this pod's frontends
    `services` (the packet still says ClusterIP:port when it enters the pod). Egress:
    `peers` is None and `services` are the frontends whose backends the rule allows."""

    peers: AddressSet | None
    services: tuple[ServicePort, ...]

    def allows(
        self, peer: IPAddress, dst: IPAddress, protocol: Protocol | None, port: int | None
    ) -> bool:
        if self.peers is not None and peer not in self.peers:
            return False
        return any(s.allows(dst, protocol, port) for s in self.services)


@dataclass(frozen=True)
class Direction:
    """One way of one pod. Not isolated: everything passes (and `rules` is empty).
    Isolated: only what a rule allows, plus replies, loopback and the pod's node."""

    isolated: bool = False
    rules: tuple[Rule, ...] = ()
    services: tuple[ServiceRule, ...] = ()
    # Egress only: every ClusterIP in the cluster. Traffic to one of them is judged by
    # `services` alone, never by `rules` — an ipBlock that happens to cover the service
    # range must not open it, as the real destination is the backend pod (kube-proxy
    # semantics: policies see the post-DNAT address).
    service_addresses: AddressSet = AddressSet()


@dataclass(frozen=True)
class PodRules:
    """Everything a backend needs to enforce the policies of one pod."""

    pod: PodKey
    addresses: tuple[IPAddress, ...]
    node: AddressSet  # the pod's own node: always allowed, both ways
    frontends: tuple[Frontend, ...]  # the pod's own, target ports resolved
    ingress: Direction
    egress: Direction
    policies: tuple[PolicyKey, ...] = ()  # the policies selecting the pod (for `show`)

    @property
    def isolated(self) -> bool:
        return self.ingress.isolated or self.egress.isolated

    @property
    def own_addresses(self) -> AddressSet:
        return AddressSet.of((*self.addresses, *(f.cluster_ip for f in self.frontends)))

    def ingress_allows(
        self,
        src: IPAddress,
        protocol: Protocol | None,
        port: int | None,
        dst: IPAddress | None = None,
    ) -> bool:
        """May a new connection from `src` reach this pod at `dst`:`port`? `dst` defaults to
        the pod's address; with a ClusterIP and a frontend port, the verdict is the one of
        the target port the pod rewrites it to."""
        if not self.ingress.isolated or src in self.node or src in self.own_addresses:
            return True
        if dst is not None and self._is_frontend(dst, protocol, port):
            return any(r.allows(src, dst, protocol, port) for r in self.ingress.services)
        return any(r.allows(src, protocol, port) for r in self.ingress.rules)

    def egress_allows(self, dst: IPAddress, protocol: Protocol | None, port: int | None) -> bool:
        """May this pod open a connection to `dst`:`port` (a pod, a ClusterIP, anything)?"""
        if not self.egress.isolated or dst in self.node or dst in self.own_addresses:
            return True
        if dst in self.egress.service_addresses:
            return any(r.allows(dst, dst, protocol, port) for r in self.egress.services)
        return any(r.allows(dst, protocol, port) for r in self.egress.rules)

    def _is_frontend(self, dst: IPAddress, protocol: Protocol | None, port: int | None) -> bool:
        return any(
            (f.cluster_ip, f.protocol, f.port) == (dst, protocol, port) for f in self.frontends
        )
