"""Compile NetworkPolicies into per-pod rule sets (`PodRules`), with Kubernetes' semantics. Pure.

`compile_node(cluster, node)` compiles every enforceable pod of a node; `recompile(before,
after, changed, node)` recompiles only the pods a change can affect, and its result,
merged into the previous one, equals a full compile of `after` (tested with hypothesis).

The semantics, as the API documents them:

- A pod is isolated for ingress when some policy of its namespace selects it
  (`podSelector`, empty = every pod of the namespace) and lists Ingress in its
  policyTypes; likewise for egress. The effective policyTypes default to Ingress, plus
  Egress when the policy has egress rules (kube.py applies that default).
- What an isolated pod allows is the union of the rules of every policy selecting it: an
  empty rule list denies everything (default deny), an empty rule (`{}`) allows
  everything, and evaluation order never matters.
- A peer is either an ipBlock (CIDR minus its excepts) or selectors: `podSelector` alone
  picks pods of the policy's namespace, `namespaceSelector` alone every pod of the
  matching namespaces, both together the matching pods of the matching namespaces.
- A port is a number (with `endPort`, an inclusive range), a name, or absent (every port
  of the protocol: TCP unless given, UDP or SCTP). A name resolves on the *destination*
  pod against its declared container ports with the same name and protocol: for ingress
  that is the selected pod, for egress each destination pod on its own — so one named
  egress rule may open port 5432 on one pod and 5433 on another, and never opens
  anything on an address that is not a pod's.
- Replies to allowed connections pass (the backend is stateful), traffic between a pod
  and its own node always passes (kubelet probes), and a pod cannot block itself.
- Host-network pods are neither selected nor selectable (Kubernetes leaves them
  undefined; their address is their node's).

Services without NAT. Kubernetes evaluates policies on the post-DNAT packet: traffic to a
Service is judged as traffic to the backend pod's own address and targetPort. Here no one
translates: SRv6 End.DX6 hands the backend the original packet, destination ClusterIP S
on its loopback, and where port P != targetPort T the pod's own namespace rewrites P to T
statelessly. Contiv-VPP hit exactly this and never solved it for IPv6 (contiv/vpp#1625:
its VPP ACLs saw the service address, not the pod's, so IPv6 deployments fell back to
per-pod iptables, one rule per peer). The compiled rules therefore say, for ClusterIP
traffic, what a packet looks like *before* the rewrite:

- Ingress: every frontend (S, protocol, P→T) the destination pod serves is listed in the
  `ServiceRule` of each rule that allows T, with the rule's peers: allowing T allows
  S:P, denying T denies S:P. A backend that sees packets after the rewrite (the
  nftables one, in the pod's input hook) needs only `rules`; one that sees them before
  (a node-side ACL) must judge frontend ports by `services` instead.
- Egress: the client's packet to S:P is never rewritten, so egress rules must name
  ClusterIPs themselves. A rule allows S:P when it allows a backend pod D of S on D's
  own T (selectors match D, or an ipBlock holds D's address of S's family; a named port
  resolves on D). Every ClusterIP the cluster serves is in `service_addresses`, and
  traffic to those is judged by the service entries alone — an ipBlock that covers the
  service range must not open it, since after DNAT the destination would have been a
  pod. One approximation remains: when a rule allows some backends of S but not others,
  S:P is allowed (the node's SR policy, not the client, picks the backend); kube-proxy
  would let only the connections to allowed backends through.

Incremental: what a pod's rules depend on is its own object, the policies of its
namespace that select it, the peers those policies name (pods, their namespaces'
labels, and for egress the ports and frontends of destination pods), its node's
addresses and the cluster's set of ClusterIPs. `affected_pods` inverts that from the
changed keys and both snapshots (old labels matter as much as new ones).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass

from policies.model import (
    EVERYTHING,
    AddressSet,
    ChangedKey,
    Cluster,
    Direction,
    Frontend,
    IPAddress,
    IPBlock,
    LabelSelector,
    NamespaceKey,
    NetworkPolicy,
    NodeKey,
    Peer,
    Pod,
    PodKey,
    PodRules,
    PolicyKey,
    PolicyPort,
    PolicyRule,
    PolicyType,
    PortRange,
    Ports,
    Rule,
    ServicePort,
    ServiceRule,
    address_key,
)

__all__ = ["affected_pods", "compile_node", "compile_pod", "recompile"]


@dataclass(frozen=True)
class _EgressRule:
    """One egress rule compiled once for every pod its policy selects: unlike ingress,
    nothing in it depends on the selected pod."""

    rules: tuple[Rule, ...]
    services: frozenset[ServicePort]


def _scope(namespace: str, peers: Iterable[Peer]) -> str:
    """The part of a policy's namespace its peers depend on: only a podSelector without a
    namespaceSelector reads it, so a rule naming other namespaces, ipBlocks or anyone
    compiles once for every namespace that has it."""
    return (
        namespace if any(p.ip_block is None and p.namespace_selector is None for p in peers) else ""
    )


class _Memo:
    """Per-compile caches over one snapshot: 100 pods selected by one policy resolve its
    peers once, and the same peer in 50 namespaces' policies resolves once."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self._peer_pods: dict[tuple[str, Peer], tuple[Pod, ...]] = {}
        self._peer_addresses: dict[tuple[str, Peer], AddressSet] = {}
        self._blocks: dict[IPBlock, AddressSet] = {}
        self._in_blocks: dict[IPBlock, tuple[tuple[Pod, frozenset[IPAddress]], ...]] = {}
        self._addresses_of: dict[tuple[str, tuple[Peer, ...]], AddressSet | None] = {}
        self._egress: dict[tuple[str, PolicyRule], _EgressRule] = {}

    def peer_pods(self, namespace: str, peer: Peer) -> tuple[Pod, ...]:
        key = (_scope(namespace, (peer,)), peer)
        found = self._peer_pods.get(key)
        if found is None:
            found = self._peer_pods[key] = _select_peer(self.cluster, namespace, peer)
        return found

    def block(self, ip_block: IPBlock) -> AddressSet:
        found = self._blocks.get(ip_block)
        if found is None:
            found = self._blocks[ip_block] = AddressSet.block(ip_block)
        return found

    def ingress_peers(self, policy: NetworkPolicy, index: int) -> AddressSet | None:
        return self.addresses(policy.namespace, policy.ingress[index].peers)

    def egress_rule(self, policy: NetworkPolicy, index: int) -> _EgressRule:
        rule = policy.egress[index]
        key = (_scope(policy.namespace, rule.peers), rule)
        found = self._egress.get(key)
        if found is None:
            found = self._egress[key] = self._compile_egress(policy.namespace, rule)
        return found

    def addresses(self, namespace: str, peers: tuple[Peer, ...]) -> AddressSet | None:
        """Who a `from`/`to` list names; None when it is empty (anyone)."""
        if not peers:
            return None
        key = (_scope(namespace, peers), peers)
        if key not in self._addresses_of:
            self._addresses_of[key] = AddressSet.union(self._peer_set(namespace, p) for p in peers)
        return self._addresses_of[key]

    def _peer_set(self, namespace: str, peer: Peer) -> AddressSet:
        if peer.ip_block is not None:
            return self.block(peer.ip_block)
        key = (_scope(namespace, (peer,)), peer)
        found = self._peer_addresses.get(key)
        if found is None:
            pods = self.peer_pods(namespace, peer)
            found = self._peer_addresses[key] = AddressSet.of(a for p in pods for a in p.ips)
        return found

    def _in_block(self, ip_block: IPBlock) -> tuple[tuple[Pod, frozenset[IPAddress]], ...]:
        """The pods (among `port_owners`) with an address in the block, and those addresses."""
        found = self._in_blocks.get(ip_block)
        if found is None:
            block = self.block(ip_block)
            inside = (
                (pod, frozenset(a for a in pod.ips if a in block))
                for pod in self.cluster.port_owners
            )
            found = self._in_blocks[ip_block] = tuple((pod, ips) for pod, ips in inside if ips)
        return found

    def _destinations(
        self, namespace: str, peers: tuple[Peer, ...]
    ) -> list[tuple[Pod, tuple[IPAddress, ...]]]:
        """The pods a `to` list names, each with the addresses of it the list covers, among
        those whose ports or frontends can matter (`Cluster.port_owners`)."""
        if not peers:
            return [(p, p.ips) for p in self.cluster.port_owners]
        found: dict[PodKey, tuple[Pod, set[IPAddress]]] = {}
        for peer in peers:
            if peer.ip_block is not None:
                for pod, inside in self._in_block(peer.ip_block):
                    found.setdefault(pod.key, (pod, set()))[1].update(inside)
            else:
                for pod in self.peer_pods(namespace, peer):
                    found.setdefault(pod.key, (pod, set()))[1].update(pod.ips)
        return [(pod, tuple(sorted(ips, key=address_key))) for pod, ips in found.values()]

    def _compile_egress(self, namespace: str, rule: PolicyRule) -> _EgressRule:
        addresses = self.addresses(namespace, rule.peers)
        destinations = self._destinations(namespace, rule.peers)
        named = [p for p in rule.ports if isinstance(p.port, str)]
        numeric = Ports.of(r for p in rule.ports if (r := p.numbers()) is not None)
        rules: list[Rule] = []
        if addresses is None or addresses:
            if not rule.ports:
                rules.append(Rule(addresses, None))
            elif numeric:
                rules.append(Rule(addresses, numeric))
        # Named ports, per destination pod: group the pods by the number the name has on
        # each, so that a rule over 1,000 pods with one port number stays one rule.
        by_number: dict[PortRange, list[IPAddress]] = {}
        for port in named:
            for pod, inside in destinations:
                number = pod.named_port(str(port.port), port.protocol)
                if number is not None:
                    by_number.setdefault(PortRange(port.protocol, number, number), []).extend(
                        inside
                    )
        for numbers in sorted(by_number):
            rules.append(Rule(AddressSet.of(by_number[numbers]), Ports((numbers,))))
        services: set[ServicePort] = set()
        for pod, inside in destinations:
            for frontend in pod.resolved_frontends:
                # The backend is reached with its address of the ClusterIP's family.
                if not any(a.version == frontend.cluster_ip.version for a in inside):
                    continue
                if not rule.ports:
                    services.add(ServicePort(frontend.cluster_ip))
                elif _allows_target(numeric, named, pod, frontend):
                    services.add(ServicePort(frontend.cluster_ip, frontend.protocol, frontend.port))
        return _EgressRule(tuple(rules), frozenset(services))


def _allows_target(numeric: Ports, named: list[PolicyPort], pod: Pod, frontend: Frontend) -> bool:
    """Does an egress rule allow `frontend`'s target port on backend `pod`?"""
    target = frontend.target_port
    if not isinstance(target, int):
        return False  # resolved_frontends has resolved every name it could
    if numeric.allows(frontend.protocol, target):
        return True
    return any(
        port.protocol == frontend.protocol
        and pod.named_port(str(port.port), port.protocol) == target
        for port in named
    )


def _select(
    cluster: Cluster, namespaces: Collection[str] | None, selector: LabelSelector
) -> tuple[Pod, ...]:
    """Enforceable pods in `namespaces` (None: all) that `selector` matches."""
    if selector.match_labels:
        # The smallest bucket of one of its labels holds every pod it can match.
        buckets = [cluster.pods_by_label.get(item, ()) for item in selector.match_labels.items()]
        smallest: tuple[Pod, ...] = min(buckets, key=len)
        candidates: Iterable[Pod] = smallest
    elif namespaces is None:
        candidates = cluster.enforceable_pods
    else:
        candidates = (p for ns in sorted(namespaces) for p in cluster.pods_by_namespace.get(ns, ()))
    return tuple(
        p
        for p in candidates
        if p.enforceable
        and (namespaces is None or p.namespace in namespaces)
        and selector.matches(p.labels)
    )


def _select_peer(cluster: Cluster, namespace: str, peer: Peer) -> tuple[Pod, ...]:
    namespaces: Collection[str] | None
    if peer.namespace_selector is None:
        namespaces = {namespace}
    elif peer.namespace_selector.empty:
        namespaces = None
    else:
        selector = peer.namespace_selector
        namespaces = {
            n for n in cluster.namespace_names if selector.matches(cluster.namespace_labels(n))
        }
    return _select(cluster, namespaces, peer.pod_selector or EVERYTHING)


def _own_services(frontends: tuple[Frontend, ...], ports: Ports | None) -> tuple[ServicePort, ...]:
    """The frontends of the selected pod an ingress rule opens, as the packet carries
    them before the pod rewrites P to T: the rule opens S:P when it opens T."""
    if ports is None:
        addresses = sorted({f.cluster_ip for f in frontends}, key=lambda a: (a.version, int(a)))
        return tuple(ServicePort(a) for a in addresses)
    return tuple(
        ServicePort(f.cluster_ip, f.protocol, f.port)
        for f in frontends
        if isinstance(f.target_port, int) and ports.allows(f.protocol, f.target_port)
    )


def _ingress_ports(rule: PolicyRule, pod: Pod) -> Ports | None:
    if not rule.ports:
        return None
    ranges = []
    for port in rule.ports:
        numbers = port.numbers()
        if numbers is None:
            number = pod.named_port(str(port.port), port.protocol)
            if number is None:
                continue  # the selected pod declares no such port: this entry opens nothing
            numbers = PortRange(port.protocol, number, number)
        ranges.append(numbers)
    return Ports.of(ranges)


def _unique(items: Iterable[Rule]) -> tuple[Rule, ...]:
    return tuple(dict.fromkeys(items))


def compile_pod(cluster: Cluster, key: PodKey, memo: _Memo | None = None) -> PodRules | None:
    """The rules of one pod; None when there is nothing to enforce on it (no such pod,
    host network, no address yet)."""
    pod = cluster.pods.get(key)
    if pod is None or not pod.enforceable:
        return None
    memo = memo or _Memo(cluster)
    selecting = [
        p
        for p in cluster.policies_by_namespace.get(pod.namespace, ())
        if p.pod_selector.matches(pod.labels)
    ]
    frontends = pod.resolved_frontends

    ingress = Direction()
    if any(PolicyType.INGRESS in p.policy_types for p in selecting):
        rules: list[Rule] = []
        service_rules: list[ServiceRule] = []
        for policy in selecting:
            if PolicyType.INGRESS not in policy.policy_types:
                continue
            for index, rule in enumerate(policy.ingress):
                peers = memo.ingress_peers(policy, index)
                ports = _ingress_ports(rule, pod)
                if (peers is not None and not peers) or (ports is not None and not ports):
                    continue  # names no peer, or no port this pod has: allows nothing
                rules.append(Rule(peers, ports))
                services = _own_services(frontends, ports)
                if services:
                    service_rules.append(ServiceRule(peers, services))
        ingress = Direction(True, _unique(rules), tuple(dict.fromkeys(service_rules)))

    egress = Direction()
    if any(PolicyType.EGRESS in p.policy_types for p in selecting):
        rules = []
        allowed: set[ServicePort] = set()
        for policy in selecting:
            if PolicyType.EGRESS not in policy.policy_types:
                continue
            for index in range(len(policy.egress)):
                compiled = memo.egress_rule(policy, index)
                rules.extend(compiled.rules)
                allowed |= compiled.services
        services = tuple(sorted(allowed, key=ServicePort.sort_key))
        egress = Direction(
            True,
            _unique(rules),
            (ServiceRule(None, services),) if services else (),
            cluster.cluster_ips,
        )

    return PodRules(
        pod=key,
        addresses=pod.ips,
        node=cluster.node_addresses(pod),
        frontends=frontends,
        ingress=ingress,
        egress=egress,
        policies=tuple(p.key for p in selecting),
    )


def _on_node(pod: Pod | None, node: str | None) -> bool:
    return pod is not None and (node is None or pod.node_name == node)


def compile_node(cluster: Cluster, node: str | None = None) -> dict[PodKey, PodRules]:
    """Every enforceable pod on `node` (None: in the cluster), isolated or not."""
    memo = _Memo(cluster)
    compiled = {}
    for key in sorted(cluster.pods):
        if _on_node(cluster.pods[key], node):
            rules = compile_pod(cluster, key, memo)
            if rules is not None:
                compiled[key] = rules
    return compiled


# --- incremental -----------------------------------------------------------------------


def _peer_names(cluster: Cluster, namespace: str, peer: Peer, pod: Pod) -> bool:
    """Does selector peer `peer` of a policy in `namespace` match `pod` in `cluster`?"""
    if peer.namespace_selector is None:
        if pod.namespace != namespace:
            return False
    elif not peer.namespace_selector.matches(cluster.namespace_labels(pod.namespace)):
        return False
    return (peer.pod_selector or EVERYTHING).matches(pod.labels)


def _references_pod(cluster: Cluster, policy: NetworkPolicy, pod: Pod) -> bool:
    """Could `policy`'s compiled rules change with `pod` (as it is in `cluster`)?"""
    if not pod.enforceable:
        return False
    matters_by_port = bool(pod.resolved_frontends) or pod.has_named_ports
    for rule in policy.ingress:
        for peer in rule.peers:
            if peer.ip_block is None and _peer_names(cluster, policy.namespace, peer, pod):
                return True
    for rule in policy.egress:
        if not rule.peers and matters_by_port:
            return True
        for peer in rule.peers:
            if peer.ip_block is None:
                if _peer_names(cluster, policy.namespace, peer, pod):
                    return True
            elif matters_by_port:
                block = AddressSet.block(peer.ip_block)
                if any(a in block for a in pod.ips):
                    return True
    return False


def _policies_naming_pod(cluster: Cluster, pod: Pod) -> set[PolicyKey]:
    candidates = {
        p.key: p
        for p in (
            *cluster.policies_by_namespace.get(pod.namespace, ()),
            *cluster.policies_with_remote_peers,
        )
    }
    return {key for key, policy in candidates.items() if _references_pod(cluster, policy, pod)}


def _policies_naming_namespace(cluster: Cluster, name: str) -> set[PolicyKey]:
    labels = cluster.namespace_labels(name)
    return {
        policy.key
        for policy in cluster.policies_with_remote_peers
        for rule in (*policy.ingress, *policy.egress)
        for peer in rule.peers
        if peer.namespace_selector is not None and peer.namespace_selector.matches(labels)
    }


def _selected_by(cluster: Cluster, policy: NetworkPolicy) -> set[PodKey]:
    return {
        p.key
        for p in cluster.pods_by_namespace.get(policy.namespace, ())
        if policy.pod_selector.matches(p.labels)
    }


def _cluster_ips_may_change(before: Cluster, after: Cluster, pods: Iterable[PodKey]) -> bool:
    def served(cluster: Cluster, key: PodKey) -> set[IPAddress]:
        pod = cluster.pods.get(key)
        if pod is None or not pod.enforceable:
            return set()
        return {f.cluster_ip for f in pod.resolved_frontends}

    if all(served(before, k) == served(after, k) for k in pods):
        return False
    return before.cluster_ips != after.cluster_ips


def affected_pods(
    before: Cluster, after: Cluster, changed: Iterable[ChangedKey], node: str | None = None
) -> frozenset[PodKey]:
    """The pods on `node` (None: anywhere) whose rules `changed` may alter.

    `before` and `after` are the snapshots around the change and `changed` the keys that
    differ between them (`Cluster.with_` returns both). Old objects count: a pod that
    loses a label must leave the rules of every policy that named it by that label.
    """
    changed = set(changed)
    pods: set[PodKey] = set()
    policies: set[PolicyKey] = set()
    for key in changed:
        if isinstance(key, PodKey):
            pods.add(key)
            for cluster in (before, after):
                pod = cluster.pods.get(key)
                if pod is not None:
                    policies |= _policies_naming_pod(cluster, pod)
        elif isinstance(key, PolicyKey):
            policies.add(key)
        elif isinstance(key, NamespaceKey):
            for cluster in (before, after):
                policies |= _policies_naming_namespace(cluster, key.name)
        elif isinstance(key, NodeKey):
            for cluster in (before, after):
                pods.update(k for k, p in cluster.pods.items() if p.node_name == key.name)
    for policy_key in policies:
        for cluster in (before, after):
            policy = cluster.policies.get(policy_key)
            if policy is not None:
                pods |= _selected_by(cluster, policy)
    if _cluster_ips_may_change(before, after, (k for k in changed if isinstance(k, PodKey))):
        # Every egress-isolated pod judges ClusterIPs apart from other addresses.
        pods.update(after.pods)
    return frozenset(
        k for k in pods if _on_node(after.pods.get(k), node) or _on_node(before.pods.get(k), node)
    )


def recompile(
    before: Cluster, after: Cluster, changed: Iterable[ChangedKey], node: str | None = None
) -> dict[PodKey, PodRules | None]:
    """The new rules of every pod `changed` may affect on `node`; None for a pod that has
    nothing left to enforce (gone, moved, lost its address). Merged into the previous
    `compile_node(before, node)`, this is `compile_node(after, node)`."""
    memo = _Memo(after)
    result: dict[PodKey, PodRules | None] = {}
    for key in sorted(affected_pods(before, after, changed, node)):
        pod = after.pods.get(key)
        result[key] = compile_pod(after, key, memo) if _on_node(pod, node) else None
    return result
