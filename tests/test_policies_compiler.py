"""The policy compiler against Kubernetes' semantics: a reference evaluator, truth tables.

`reference_ingress` / `reference_egress` below are written from the API documentation
alone (NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort) and read the *input* objects
only — raw fields, their own selector matching, their own CIDR arithmetic — so that a
mistake in the compiler's model cannot hide in both. Hypothesis builds small dual-stack
clusters with services, and every (source, destination, protocol, port) verdict of the
compiled rules must equal the reference's; the classic cases are spelled out by hand.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policies.compiler import affected_pods, compile_node, compile_pod, recompile
from policies.kube import namespace_from_k8s, pod_from_k8s, policies_from_k8s, policy_from_k8s
from policies.model import (
    ChangedKey,
    Cluster,
    ContainerPort,
    Frontend,
    InvalidPolicy,
    IPAddress,
    IPBlock,
    LabelSelector,
    Namespace,
    NamespaceKey,
    NetworkPolicy,
    Node,
    NodeKey,
    Peer,
    Pod,
    PodKey,
    PodRules,
    PolicyKey,
    PolicyPort,
    PolicyRule,
    Protocol,
    Requirement,
)

A = ipaddress.ip_address
TCP, UDP, SCTP = Protocol.TCP, Protocol.UDP, Protocol.SCTP
ICMP = None  # "a protocol policies cannot name": only rules without ports allow it

# --- the reference: Kubernetes semantics, from the documentation ------------------------


def ref_selector(selector: LabelSelector, labels: Mapping[str, str]) -> bool:
    """metav1.LabelSelector: matchLabels and matchExpressions ANDed; {} selects all."""
    for key, value in selector.match_labels.items():
        if labels.get(key) != value:
            return False
    for expr in selector.match_expressions:
        op, present = str(expr.operator), expr.key in labels
        if op == "In" and not (present and labels[expr.key] in expr.values):
            return False
        if op == "NotIn" and present and labels[expr.key] in expr.values:
            return False
        if op == "Exists" and not present:
            return False
        if op == "DoesNotExist" and present:
            return False
    return True


def ref_namespace_labels(cluster: Cluster, name: str) -> dict[str, str]:
    ns = cluster.namespaces.get(name)
    labels = dict(ns.labels) if ns else {}
    labels["kubernetes.io/metadata.name"] = name  # set by the API server on every namespace
    return labels


def ref_pod_at(cluster: Cluster, address: IPAddress) -> Pod | None:
    """The pod that owns `address` (host-network pods own none: theirs is the node's)."""
    for pod in cluster.pods.values():
        if not pod.host_network and address in pod.ips:
            return pod
    return None


def ref_peer(cluster: Cluster, policy: NetworkPolicy, peer: Peer, address: IPAddress) -> bool:
    if peer.ip_block is not None:
        block = peer.ip_block
        if address.version != block.cidr.version or address not in block.cidr:
            return False
        return not any(address.version == e.version and address in e for e in block.excepted)
    pod = ref_pod_at(cluster, address)
    if pod is None:
        return False  # selectors select pods, never other addresses
    if peer.namespace_selector is None:
        if pod.namespace != policy.namespace:  # podSelector alone: the policy's namespace
            return False
    elif not ref_selector(peer.namespace_selector, ref_namespace_labels(cluster, pod.namespace)):
        return False
    return peer.pod_selector is None or ref_selector(peer.pod_selector, pod.labels)


def ref_port(
    ports: Iterable[PolicyPort], destination: Pod | None, protocol: Protocol | None, port: int
) -> bool:
    """NetworkPolicyPort: an empty list matches every port; a name is a port of the
    destination pod (never of a non-pod address), with the same protocol."""
    ports = list(ports)
    if not ports:
        return True
    for p in ports:
        if protocol is None or p.protocol != protocol:
            continue
        if p.port is None:
            return True
        if isinstance(p.port, int):
            last = p.end_port if p.end_port is not None else p.port
            if p.port <= port <= last:
                return True
        elif destination is not None and any(
            c.name == p.port and c.protocol == protocol and c.port == port
            for c in destination.container_ports
        ):
            return True
    return False


def ref_policies(cluster: Cluster, pod: Pod, policy_type: str) -> list[NetworkPolicy]:
    if pod.host_network:
        return []
    return [
        p
        for p in cluster.policies.values()
        if p.namespace == pod.namespace
        and ref_selector(p.pod_selector, pod.labels)
        and policy_type in {str(t) for t in p.policy_types}
    ]


def ref_node_addresses(cluster: Cluster, pod: Pod) -> set[IPAddress]:
    node = cluster.nodes.get(pod.node_name or "")
    return set(node.addresses) if node else set()


def reference_ingress(
    cluster: Cluster, pod: Pod, src: IPAddress, protocol: Protocol | None, port: int
) -> bool:
    """May a connection from `src` reach `pod` on `port` (its own port, after DNAT)?"""
    policies = ref_policies(cluster, pod, "Ingress")
    if not policies or src in ref_node_addresses(cluster, pod):
        return True
    return any(
        ref_port(rule.ports, pod, protocol, port)
        and (not rule.peers or any(ref_peer(cluster, p, peer, src) for peer in rule.peers))
        for p in policies
        for rule in p.ingress
    )


def reference_egress(
    cluster: Cluster, pod: Pod, dst: IPAddress, protocol: Protocol | None, port: int
) -> bool:
    """May `pod` open a connection to `dst`:`port` (a real address, after DNAT)?"""
    policies = ref_policies(cluster, pod, "Egress")
    if not policies or dst in ref_node_addresses(cluster, pod):
        return True
    destination = ref_pod_at(cluster, dst)
    return any(
        ref_port(rule.ports, destination, protocol, port)
        and (not rule.peers or any(ref_peer(cluster, p, peer, dst) for peer in rule.peers))
        for p in policies
        for rule in p.egress
    )


def ref_backends(
    cluster: Cluster, cluster_ip: IPAddress, protocol: Protocol, port: int
) -> list[tuple[Pod, IPAddress, int]]:
    """(pod, its address of the ClusterIP's family, target port) for each endpoint."""
    found = []
    for pod in cluster.pods.values():
        if pod.host_network or not pod.ips:
            continue
        for f in pod.frontends:
            if (f.cluster_ip, f.protocol, f.port) != (cluster_ip, protocol, port):
                continue
            target = f.target_port
            if isinstance(target, str):
                named = [
                    c.port
                    for c in pod.container_ports
                    if (c.name, c.protocol) == (target, protocol)
                ]
                if not named:
                    continue
                target = named[0]
            for address in pod.ips:
                if address.version == cluster_ip.version:
                    found.append((pod, address, target))
    return found


# --- comparing the compiled rules with the reference ------------------------------------


def probe_ports(cluster: Cluster) -> list[int]:
    """Every port a policy or a pod mentions, the edges of every range, and a stranger."""
    ports = {1, 7777}
    for policy in cluster.policies.values():
        for rule in (*policy.ingress, *policy.egress):
            for p in rule.ports:
                if isinstance(p.port, int):
                    ports |= {p.port, p.port - 1, p.port + 1}
                    if p.end_port:
                        ports |= {p.end_port, p.end_port + 1}
    for pod in cluster.pods.values():
        ports |= {c.port for c in pod.container_ports}
        ports |= {f.port for f in pod.frontends}
    return sorted(p for p in ports if 1 <= p <= 65535)


EXTERNAL = [A("2001:db8::1"), A("fd00::1"), A("192.0.2.1"), A("10.128.0.77"), A("fd00:10::77")]


def addresses_to_probe(cluster: Cluster) -> list[IPAddress]:
    found = {a for pod in cluster.pods.values() for a in pod.ips}
    found |= {a for node in cluster.nodes.values() for a in node.addresses}
    return sorted(found | set(EXTERNAL), key=lambda a: (a.version, int(a)))


def mismatches(cluster: Cluster) -> Iterator[str]:
    compiled = compile_node(cluster)
    ports = probe_ports(cluster)
    protocols: list[Protocol | None] = [TCP, UDP, SCTP, ICMP]
    cluster_ips = {f.cluster_ip for p in cluster.pods.values() for f in p.frontends}
    for key, pod in sorted(cluster.pods.items()):
        rules = compiled.get(key)
        if not pod.enforceable:
            assert rules is None
            continue
        assert rules is not None
        for peer in addresses_to_probe(cluster):
            if peer in pod.ips:
                continue  # a pod cannot block itself
            for protocol in protocols:
                for port in ports if protocol else [0]:
                    want = reference_ingress(cluster, pod, peer, protocol, port)
                    if rules.ingress_allows(peer, protocol, port or None) != want:
                        yield f"ingress {peer} -> {key}:{protocol}/{port}: want {want}"
                    if peer in cluster_ips:
                        continue
                    want = reference_egress(cluster, pod, peer, protocol, port)
                    if rules.egress_allows(peer, protocol, port or None) != want:
                        yield f"egress {key} -> {peer} {protocol}/{port}: want {want}"
        yield from service_mismatches(cluster, key, pod, rules)


def service_mismatches(cluster: Cluster, key: PodKey, pod: Pod, rules: PodRules) -> Iterator[str]:
    # Ingress through a frontend this pod serves: judged as its target port.
    for f in pod.resolved_frontends:
        assert isinstance(f.target_port, int)
        for peer in addresses_to_probe(cluster):
            if peer in pod.ips:
                continue
            want = reference_ingress(cluster, pod, peer, f.protocol, f.target_port)
            got = rules.ingress_allows(peer, f.protocol, f.port, dst=f.cluster_ip)
            if got != want:
                yield f"ingress {peer} -> {key} via {f}: want {want}"
    # Egress to any ClusterIP: allowed when some backend is (the SR policy picks one).
    frontends = {
        (f.cluster_ip, f.protocol, f.port) for p in cluster.pods.values() for f in p.frontends
    }
    own = {f.cluster_ip for f in pod.resolved_frontends}
    for cluster_ip, protocol, port in sorted(frontends, key=str):
        if cluster_ip in own:
            continue  # on the pod's own loopback
        backends = ref_backends(cluster, cluster_ip, protocol, port)
        if not backends:
            continue
        want = any(
            reference_egress(cluster, pod, address, protocol, target)
            for backend, address, target in backends
            if backend.key != key
        ) or any(backend.key == key for backend, _, _ in backends)
        if rules.egress_allows(cluster_ip, protocol, port) != want:
            yield f"egress {key} -> {cluster_ip} {protocol}/{port}: want {want}"


def assert_matches_reference(cluster: Cluster) -> None:
    found = list(mismatches(cluster))
    assert not found, "\n".join(found[:20])


# --- building clusters ------------------------------------------------------------------


def sel(**labels: str) -> LabelSelector:
    return LabelSelector(labels)


def pod(
    namespace: str,
    name: str,
    ips: Iterable[str],
    labels: Mapping[str, str] | None = None,
    ports: Iterable[ContainerPort] = (),
    frontends: Iterable[Frontend] = (),
    node: str = "n1",
    host_network: bool = False,
) -> Pod:
    return Pod(
        namespace,
        name,
        labels or {},
        tuple(A(a) for a in ips),
        tuple(ports),
        tuple(frontends),
        node,
        host_network,
    )


def policy(
    namespace: str,
    name: str,
    selector: LabelSelector | None = None,
    ingress: Iterable[PolicyRule] | None = None,
    egress: Iterable[PolicyRule] | None = None,
    types: Iterable[str] | None = None,
) -> NetworkPolicy:
    """Policy types defaulted as the API server does."""
    ingress, egress = tuple(ingress or ()), tuple(egress or ())
    if types is None:
        types = ["Ingress", *(["Egress"] if egress else [])]
    return NetworkPolicy(
        namespace, name, selector or LabelSelector(), frozenset(types), ingress, egress
    )


NODES = [Node("n1", {A("fd00::100"), A("10.0.0.1")}), Node("n2", {A("fd00::200")})]


def cluster_of(
    pods: Iterable[Pod], policies: Iterable[NetworkPolicy], namespaces: Iterable[Namespace] = ()
) -> Cluster:
    return Cluster.of(namespaces, pods, policies, NODES)


def verdicts(cluster: Cluster, key: PodKey) -> PodRules:
    rules = compile_node(cluster)[key]
    assert_matches_reference(cluster)
    return rules


# --- the classic cases, by hand ---------------------------------------------------------

WEB = pod(
    "prod", "web", ["fd00:10::1", "10.128.0.1"], {"app": "web"}, [ContainerPort(8080, TCP, "http")]
)
DB = pod("prod", "db", ["fd00:10::2"], {"app": "db"}, [ContainerPort(5432, TCP, "pg")])
CLIENT = pod("prod", "client", ["fd00:10::3", "10.128.0.3"], {"app": "client"})
OTHER = pod("dev", "other", ["fd00:10::4"], {"app": "client"}, node="n2")
NAMESPACES = [Namespace("prod", {"env": "prod"}), Namespace("dev", {"env": "dev"})]
BASE = [WEB, DB, CLIENT, OTHER]


def test_no_policy_allows_everything() -> None:
    rules = verdicts(cluster_of(BASE, []), WEB.key)
    assert not rules.isolated
    assert rules.ingress_allows(A("2001:db8::1"), UDP, 9)


def test_deny_all_ingress_still_allows_node_self_and_replies_are_the_backends_job() -> None:
    c = cluster_of(BASE, [policy("prod", "deny", LabelSelector(), ingress=[])], NAMESPACES)
    rules = verdicts(c, WEB.key)
    assert rules.ingress.isolated and not rules.egress.isolated and not rules.ingress.rules
    assert not rules.ingress_allows(A("fd00:10::3"), TCP, 8080)
    assert rules.ingress_allows(A("fd00::100"), TCP, 8080)  # its node: kubelet probes
    assert not rules.ingress_allows(A("fd00::200"), TCP, 8080)  # another node is not
    assert rules.egress_allows(A("2001:db8::1"), TCP, 443)
    assert not compile_node(c)[OTHER.key].isolated  # other namespace untouched


def test_allow_all_by_an_empty_rule() -> None:
    c = cluster_of(BASE, [policy("prod", "open", sel(app="web"), ingress=[PolicyRule()])])
    rules = verdicts(c, WEB.key)
    assert rules.ingress_allows(A("2001:db8::1"), UDP, 9)
    assert rules.ingress_allows(A("2001:db8::1"), ICMP, None)


def test_allow_from_the_same_namespace_only() -> None:
    same_ns = PolicyRule((Peer(pod_selector=LabelSelector()),))
    c = cluster_of(BASE, [policy("prod", "same", LabelSelector(), ingress=[same_ns])], NAMESPACES)
    rules = verdicts(c, WEB.key)
    assert rules.ingress_allows(A("fd00:10::3"), TCP, 1)
    assert rules.ingress_allows(A("10.128.0.3"), UDP, 1)  # the same pod over IPv4
    assert not rules.ingress_allows(A("fd00:10::4"), TCP, 1)  # dev/other


def test_allow_from_a_namespace_label_and_both_selectors_together() -> None:
    from_dev = PolicyRule((Peer(namespace_selector=sel(env="dev")),))
    from_dev_clients = PolicyRule(
        (Peer(pod_selector=sel(app="client"), namespace_selector=sel(env="dev")),),
        (PolicyPort(TCP, 8080),),
    )
    c = cluster_of(BASE, [policy("prod", "ns", sel(app="web"), ingress=[from_dev])], NAMESPACES)
    assert verdicts(c, WEB.key).ingress_allows(A("fd00:10::4"), UDP, 53)
    assert not verdicts(c, WEB.key).ingress_allows(A("fd00:10::3"), UDP, 53)
    c = cluster_of(
        BASE, [policy("prod", "ns", sel(app="web"), ingress=[from_dev_clients])], NAMESPACES
    )
    assert verdicts(c, WEB.key).ingress_allows(A("fd00:10::4"), TCP, 8080)
    assert not verdicts(c, WEB.key).ingress_allows(A("fd00:10::4"), TCP, 80)
    # namespaceSelector by the name label the API server sets on every namespace
    by_name = PolicyRule((Peer(namespace_selector=sel(**{"kubernetes.io/metadata.name": "dev"})),))
    c = cluster_of(BASE, [policy("prod", "ns", sel(app="web"), ingress=[by_name])], NAMESPACES)
    assert verdicts(c, WEB.key).ingress_allows(A("fd00:10::4"), TCP, 1)


def test_match_expressions() -> None:
    not_web = LabelSelector(match_expressions=(Requirement("app", "NotIn", frozenset({"web"})),))
    rule = PolicyRule((Peer(pod_selector=not_web),))
    c = cluster_of(BASE, [policy("prod", "x", sel(app="web"), ingress=[rule])], NAMESPACES)
    rules = verdicts(c, WEB.key)
    assert rules.ingress_allows(A("fd00:10::2"), TCP, 1)
    assert not rules.ingress_allows(A("fd00:10::4"), TCP, 1)


def test_ip_block_with_except_both_families() -> None:
    rule = PolicyRule(
        (
            Peer(
                ip_block=IPBlock(
                    ipaddress.ip_network("fd00:10::/120"), (ipaddress.ip_network("fd00:10::2/127"),)
                )
            ),
            Peer(
                ip_block=IPBlock(
                    ipaddress.ip_network("10.128.0.0/24"), (ipaddress.ip_network("10.128.0.0/30"),)
                )
            ),
        )
    )
    c = cluster_of(BASE, [policy("prod", "blk", sel(app="web"), ingress=[rule])])
    rules = verdicts(c, WEB.key)
    assert rules.ingress_allows(A("fd00:10::4"), TCP, 1)
    assert not rules.ingress_allows(A("fd00:10::3"), TCP, 1)  # excepted
    assert not rules.ingress_allows(A("10.128.0.3"), TCP, 1)  # excepted (v4)
    assert rules.ingress_allows(A("10.128.0.77"), TCP, 1)
    assert not rules.ingress_allows(A("2001:db8::1"), TCP, 1)


def test_named_ports_resolve_per_destination_pod() -> None:
    a = pod("prod", "a", ["fd00:10::a"], {"app": "api"}, [ContainerPort(8080, TCP, "http")])
    b = pod("prod", "b", ["fd00:10::b"], {"app": "api"}, [ContainerPort(9090, TCP, "http")])
    c_ = pod("prod", "c", ["fd00:10::c"], {"app": "api"}, [ContainerPort(9090, UDP, "http")])
    to_api = PolicyRule((Peer(pod_selector=sel(app="api")),), (PolicyPort(TCP, "http"),))
    c = cluster_of([a, b, c_, CLIENT], [policy("prod", "out", sel(app="client"), egress=[to_api])])
    rules = verdicts(c, CLIENT.key)
    assert rules.egress_allows(A("fd00:10::a"), TCP, 8080)
    assert not rules.egress_allows(A("fd00:10::a"), TCP, 9090)
    assert rules.egress_allows(A("fd00:10::b"), TCP, 9090)
    assert not rules.egress_allows(A("fd00:10::c"), TCP, 9090)  # its "http" is UDP
    # ingress: the name resolves on the selected pod itself
    into = PolicyRule((), (PolicyPort(TCP, "http"),))
    c = cluster_of([a, b, CLIENT], [policy("prod", "in", sel(app="api"), ingress=[into])])
    assert verdicts(c, a.key).ingress_allows(A("fd00:10::3"), TCP, 8080)
    assert not verdicts(c, b.key).ingress_allows(A("fd00:10::3"), TCP, 8080)


def test_a_named_port_never_opens_a_non_pod_address() -> None:
    anywhere = PolicyRule(
        (Peer(ip_block=IPBlock(ipaddress.ip_network("::/0"))),), (PolicyPort(TCP, "http"),)
    )
    c = cluster_of(BASE, [policy("prod", "out", sel(app="client"), egress=[anywhere])])
    rules = verdicts(c, CLIENT.key)
    assert rules.egress_allows(A("fd00:10::1"), TCP, 8080)  # web's "http"
    assert not rules.egress_allows(A("2001:db8::1"), TCP, 8080)


KUBE_DNS = pod(
    "kube-system",
    "coredns",
    ["fd00:10::53", "10.128.0.53"],
    {"k8s-app": "kube-dns"},
    [ContainerPort(53, UDP, "dns"), ContainerPort(53, TCP, "dns-tcp")],
    [Frontend(A("fd00:96::a"), UDP, 53, "dns"), Frontend(A("10.96.0.10"), UDP, 53, 53)],
    node="n2",
)


def test_egress_to_dns_only_also_through_the_dns_service() -> None:
    dns = PolicyRule(
        (Peer(pod_selector=sel(**{"k8s-app": "kube-dns"}), namespace_selector=LabelSelector()),),
        (PolicyPort(UDP, 53), PolicyPort(TCP, 53)),
    )
    c = cluster_of(
        [*BASE, KUBE_DNS], [policy("prod", "dns", LabelSelector(), egress=[dns], types=["Egress"])]
    )
    rules = verdicts(c, CLIENT.key)
    assert rules.egress.isolated and not rules.ingress.isolated
    assert rules.egress_allows(A("fd00:10::53"), UDP, 53)
    assert rules.egress_allows(A("fd00:96::a"), UDP, 53)  # the ClusterIP
    assert rules.egress_allows(A("10.96.0.10"), UDP, 53)
    assert not rules.egress_allows(A("fd00:96::a"), UDP, 54)
    assert not rules.egress_allows(A("fd00:10::1"), TCP, 8080)
    assert not rules.egress_allows(A("2001:db8::1"), UDP, 53)


def test_multiple_policies_are_a_union() -> None:
    one = policy(
        "prod",
        "one",
        sel(app="web"),
        ingress=[PolicyRule((Peer(pod_selector=sel(app="client")),), (PolicyPort(TCP, 80),))],
    )
    two = policy(
        "prod",
        "two",
        LabelSelector(),
        ingress=[PolicyRule((Peer(pod_selector=sel(app="db")),), (PolicyPort(TCP, 81),))],
    )
    rules = verdicts(cluster_of(BASE, [one, two]), WEB.key)
    assert rules.ingress_allows(A("fd00:10::3"), TCP, 80)
    assert rules.ingress_allows(A("fd00:10::2"), TCP, 81)
    assert not rules.ingress_allows(A("fd00:10::3"), TCP, 81)
    assert rules.policies == (PolicyKey("prod", "one"), PolicyKey("prod", "two"))


def test_end_port_and_sctp() -> None:
    rule = PolicyRule((), (PolicyPort(TCP, 32000, 32768), PolicyPort(SCTP, 3868), PolicyPort(UDP)))
    rules = verdicts(
        cluster_of(BASE, [policy("prod", "r", sel(app="web"), ingress=[rule])]), WEB.key
    )
    assert rules.ingress_allows(A("fd00:10::3"), TCP, 32000)
    assert rules.ingress_allows(A("fd00:10::3"), TCP, 32768)
    assert not rules.ingress_allows(A("fd00:10::3"), TCP, 32769)
    assert rules.ingress_allows(A("fd00:10::3"), SCTP, 3868)
    assert not rules.ingress_allows(A("fd00:10::3"), TCP, 3868)
    assert rules.ingress_allows(A("fd00:10::3"), UDP, 65535)  # every UDP port
    assert not rules.ingress_allows(A("fd00:10::3"), ICMP, None)


def test_dual_stack_peers_are_both_addresses_of_a_pod() -> None:
    rule = PolicyRule((Peer(pod_selector=sel(app="client")),))
    rules = verdicts(
        cluster_of(BASE, [policy("prod", "r", sel(app="web"), ingress=[rule])]), WEB.key
    )
    (peers,) = [r.peers for r in rules.ingress.rules]
    assert peers is not None
    assert A("fd00:10::3") in peers and A("10.128.0.3") in peers
    assert A("fd00:10::4") not in peers  # dev/other is not in prod


SERVED_WEB = replace(
    WEB,
    frontends=(
        Frontend(A("fd00:96::80"), TCP, 80, "http"),
        Frontend(A("10.96.0.80"), TCP, 80, 8080),
    ),
)


def test_service_cluster_ip_with_port_not_target_port() -> None:
    allow_target = PolicyRule((Peer(pod_selector=sel(app="client")),), (PolicyPort(TCP, 8080),))
    allow_service_port = PolicyRule((Peer(pod_selector=sel(app="client")),), (PolicyPort(TCP, 80),))
    base = [SERVED_WEB, DB, CLIENT, OTHER]
    rules = verdicts(
        cluster_of(base, [policy("prod", "t", sel(app="web"), ingress=[allow_target])]), WEB.key
    )
    # The packet says fd00:96::80:80; the pod rewrites it to 8080, which is allowed.
    assert rules.ingress_allows(A("fd00:10::3"), TCP, 80, dst=A("fd00:96::80"))
    assert rules.ingress_allows(A("10.128.0.3"), TCP, 80, dst=A("10.96.0.80"))
    assert not rules.ingress_allows(A("fd00:10::2"), TCP, 80, dst=A("fd00:96::80"))
    assert not rules.ingress_allows(A("fd00:10::3"), TCP, 80)  # the pod's own port 80
    rules = verdicts(
        cluster_of(base, [policy("prod", "p", sel(app="web"), ingress=[allow_service_port])]),
        WEB.key,
    )
    # Allowing 80 does not allow the service's 80, which is the pod's 8080.
    assert not rules.ingress_allows(A("fd00:10::3"), TCP, 80, dst=A("fd00:96::80"))
    assert rules.ingress_allows(A("fd00:10::3"), TCP, 80)
    (service_rule,) = verdicts(
        cluster_of(base, [policy("prod", "t", sel(app="web"), ingress=[allow_target])]), WEB.key
    ).ingress.services
    assert {(str(s.address), s.port) for s in service_rule.services} == {
        ("fd00:96::80", 80),
        ("10.96.0.80", 80),
    }


def test_egress_to_a_cluster_ip_is_judged_by_its_backends_not_by_ip_blocks() -> None:
    base = [SERVED_WEB, DB, CLIENT, OTHER]
    to_web = PolicyRule((Peer(pod_selector=sel(app="web")),), (PolicyPort(TCP, "http"),))
    rules = verdicts(
        cluster_of(base, [policy("prod", "e", sel(app="client"), egress=[to_web])]), CLIENT.key
    )
    assert rules.egress_allows(A("fd00:96::80"), TCP, 80)
    assert rules.egress_allows(A("10.96.0.80"), TCP, 80)
    assert not rules.egress_allows(A("fd00:96::80"), TCP, 8080)
    # "Anywhere but the pod network": the service range is not the pod network, but the
    # service's backend is, so the ClusterIP stays closed (as after kube-proxy's DNAT).
    internet = PolicyRule(
        (
            Peer(
                ip_block=IPBlock(
                    ipaddress.ip_network("::/0"), (ipaddress.ip_network("fd00:10::/64"),)
                )
            ),
            Peer(
                ip_block=IPBlock(
                    ipaddress.ip_network("0.0.0.0/0"), (ipaddress.ip_network("10.128.0.0/14"),)
                )
            ),
        )
    )
    rules = verdicts(
        cluster_of(base, [policy("prod", "i", sel(app="client"), egress=[internet])]), CLIENT.key
    )
    assert rules.egress_allows(A("2001:db8::1"), TCP, 443)
    assert not rules.egress_allows(A("fd00:96::80"), TCP, 80)
    assert not rules.egress_allows(A("10.96.0.80"), TCP, 80)
    assert A("fd00:96::80") in rules.egress.service_addresses


def test_host_network_pods_are_neither_selected_nor_selectable() -> None:
    host = pod("prod", "host", ["fd00::100"], {"app": "client"}, host_network=True)
    rule = PolicyRule((Peer(pod_selector=sel(app="client")),))
    c = cluster_of([WEB, CLIENT, host], [policy("prod", "r", LabelSelector(), ingress=[rule])])
    assert compile_node(c).get(host.key) is None
    (peers,) = [r.peers for r in verdicts(c, WEB.key).ingress.rules]
    assert peers is not None and A("fd00::100") not in peers


# --- the Kubernetes JSON converter -------------------------------------------------------

KUBECTL_POLICY = json.loads(
    """
{
  "apiVersion": "networking.k8s.io/v1",
  "kind": "NetworkPolicy",
  "metadata": {"name": "test-network-policy", "namespace": "default", "resourceVersion": "1"},
  "spec": {
    "podSelector": {"matchLabels": {"role": "db"}},
    "policyTypes": ["Ingress", "Egress"],
    "ingress": [{
      "from": [
        {"ipBlock": {"cidr": "172.17.0.0/16", "except": ["172.17.1.0/24"]}},
        {"namespaceSelector": {"matchLabels": {"project": "myproject"}}},
        {"podSelector": {"matchLabels": {"role": "frontend"}}}
      ],
      "ports": [{"protocol": "TCP", "port": 6379}]
    }],
    "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/24"}}],
                "ports": [{"protocol": "TCP", "port": 32000, "endPort": 32768},
                          {"port": "dns", "protocol": "UDP"}]}]
  }
}
"""
)


def test_kubectl_json_converts_with_every_field() -> None:
    p = policy_from_k8s(KUBECTL_POLICY)
    assert p.key == PolicyKey("default", "test-network-policy")
    assert {str(t) for t in p.policy_types} == {"Ingress", "Egress"}
    (rule,) = p.ingress
    block, ns, pods = rule.peers
    assert block.ip_block == IPBlock(
        ipaddress.ip_network("172.17.0.0/16"), (ipaddress.ip_network("172.17.1.0/24"),)
    )
    assert ns.namespace_selector == sel(project="myproject") and ns.pod_selector is None
    assert pods.pod_selector == sel(role="frontend") and pods.namespace_selector is None
    assert rule.ports == (PolicyPort(TCP, 6379),)
    assert p.egress[0].ports == (PolicyPort(TCP, 32000, 32768), PolicyPort(UDP, "dns"))


def test_policy_types_default_as_the_api_server_does() -> None:
    spec: dict[str, object] = {"podSelector": {}, "egress": [{}]}
    obj: dict[str, object] = {"metadata": {"name": "x", "namespace": "n"}, "spec": spec}
    assert {str(t) for t in policy_from_k8s(obj).policy_types} == {"Ingress", "Egress"}
    obj["spec"] = {"podSelector": {}}
    assert {str(t) for t in policy_from_k8s(obj).policy_types} == {"Ingress"}
    # A List, as `kubectl get networkpolicy -A -o json` prints it.
    assert len(policies_from_k8s({"kind": "List", "items": [obj, KUBECTL_POLICY]})) == 2


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        (
            {"ingress": [{"ports": [{"port": "http", "endPort": 90}]}]},
            "spec.ingress[0].ports[0].endPort",
        ),
        (
            {"ingress": [{"ports": [{"port": 90, "endPort": 80}]}]},
            "spec.ingress[0].ports[0].endPort",
        ),
        ({"ingress": [{"ports": [{"protocol": "ICMP"}]}]}, "spec.ingress[0].ports[0].protocol"),
        (
            {"egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.1/8"}}]}]},
            "spec.egress[0].to[0].ipBlock.cidr",
        ),
        ({"egress": [{"to": [{}]}]}, "spec.egress[0].to[0]"),
        (
            {"podSelector": {"matchExpressions": [{"key": "a", "operator": "In"}]}},
            "spec.podSelector.matchExpressions[0].values",
        ),
        (
            {"podSelector": {"matchExpressions": [{"key": "", "operator": "Exists"}]}},
            "spec.podSelector.matchExpressions[0].key",
        ),
    ],
)
def test_invalid_policies_are_refused_naming_object_and_field(
    spec: dict[str, object], field: str
) -> None:
    with pytest.raises(
        InvalidPolicy, match=f"NetworkPolicy ns/bad: {field.replace('[', '.').replace(']', '.')}"
    ):
        policy_from_k8s({"metadata": {"name": "bad", "namespace": "ns"}, "spec": spec})


# --- hypothesis: random clusters against the reference -----------------------------------

LABEL_KEYS = ["app", "tier"]
LABEL_VALUES = ["a", "b"]
NAMESPACE_NAMES = ["ns1", "ns2", "ns3"]
TARGETS: list[int | str] = [80, 8080, 53, "http", "dns"]
NAMED = {
    "http": [(80, TCP), (8080, TCP), (8080, UDP)],
    "dns": [(53, UDP), (53, TCP)],
    "sig": [(3868, SCTP)],
}
CIDRS = [
    ("fd00:10::/124", ["fd00:10::4/126"]),
    ("fd00::/16", ["fd00:96::/112"]),
    ("::/0", ["fd00:10::/64"]),
    ("10.128.0.0/24", ["10.128.0.0/30"]),
    ("0.0.0.0/0", []),
    ("fd00:96::/112", []),
    ("fd00:10::2/128", []),
]

labels_st = st.dictionaries(st.sampled_from(LABEL_KEYS), st.sampled_from(LABEL_VALUES), max_size=2)


@st.composite
def selectors(draw: st.DrawFn) -> LabelSelector:
    expressions = draw(
        st.lists(
            st.builds(
                Requirement,
                st.sampled_from(LABEL_KEYS),
                st.sampled_from(["In", "NotIn", "Exists", "DoesNotExist"]),
                st.frozensets(st.sampled_from(LABEL_VALUES), min_size=1, max_size=2),
            ),
            max_size=1,
        )
    )
    expressions = [
        Requirement(
            e.key,
            e.operator,
            frozenset() if str(e.operator) in ("Exists", "DoesNotExist") else e.values,
        )
        for e in expressions
    ]
    return LabelSelector(draw(labels_st), tuple(expressions))


@st.composite
def peers(draw: st.DrawFn) -> Peer:
    kind = draw(st.sampled_from(["pod", "ns", "both", "block"]))
    if kind == "block":
        cidr, excepted = draw(st.sampled_from(CIDRS))
        return Peer(
            ip_block=IPBlock(
                ipaddress.ip_network(cidr), tuple(ipaddress.ip_network(e) for e in excepted)
            )
        )
    return Peer(
        pod_selector=draw(selectors()) if kind in ("pod", "both") else None,
        namespace_selector=draw(selectors()) if kind in ("ns", "both") else None,
    )


@st.composite
def policy_ports(draw: st.DrawFn) -> PolicyPort:
    protocol = draw(st.sampled_from([TCP, UDP, SCTP]))
    kind = draw(st.sampled_from(["number", "range", "name", "all"]))
    if kind == "number":
        return PolicyPort(protocol, draw(st.sampled_from([53, 80, 8080, 3868, 443])))
    if kind == "range":
        first = draw(st.sampled_from([53, 79, 8000]))
        return PolicyPort(protocol, first, first + draw(st.integers(0, 100)))
    if kind == "name":
        return PolicyPort(protocol, draw(st.sampled_from([*NAMED, "nope"])))
    return PolicyPort(protocol)


rules_st = st.builds(
    PolicyRule,
    st.lists(peers(), max_size=2).map(tuple),
    st.lists(policy_ports(), max_size=2).map(tuple),
)


@st.composite
def clusters(draw: st.DrawFn) -> Cluster:
    namespaces = [Namespace(n, draw(labels_st)) for n in NAMESPACE_NAMES]
    pods = []
    for i in range(draw(st.integers(2, 6))):
        names = draw(st.lists(st.sampled_from(sorted(NAMED)), unique=True, max_size=2))
        ports = [ContainerPort(*draw(st.sampled_from(NAMED[n])), n) for n in names]
        ips = [f"fd00:10::{i + 1:x}"] + ([f"10.128.0.{i + 1}"] if draw(st.booleans()) else [])
        pods.append(
            pod(
                draw(st.sampled_from(NAMESPACE_NAMES)),
                f"p{i}",
                ips,
                draw(labels_st),
                ports,
                node=draw(st.sampled_from(["n1", "n2"])),
                host_network=draw(st.integers(0, 9)) == 0,
            )
        )
    for s in range(draw(st.integers(0, 2))):
        endpoints = draw(st.lists(st.sampled_from(range(len(pods))), unique=True, max_size=3))
        service_ports = draw(
            st.lists(
                st.tuples(
                    st.sampled_from([80, 53, 3868]),
                    st.sampled_from([TCP, UDP, SCTP]),
                    st.sampled_from(TARGETS),
                ),
                min_size=1,
                max_size=2,
                unique_by=lambda t: (t[0], t[1]),
            )
        )
        for i in endpoints:
            frontends = [
                Frontend(A(ip), protocol, port, target)
                for ip in (f"fd00:96::{s + 1}", f"10.96.0.{s + 1}")
                for port, protocol, target in service_ports
            ]
            pods[i] = replace(pods[i], frontends=pods[i].frontends + tuple(frontends))
    policies = []
    for i in range(draw(st.integers(0, 4))):
        types = draw(st.sampled_from([["Ingress"], ["Egress"], ["Ingress", "Egress"]]))
        policies.append(
            policy(
                draw(st.sampled_from(NAMESPACE_NAMES)),
                f"np{i}",
                draw(selectors()),
                draw(st.lists(rules_st, max_size=2)),
                draw(st.lists(rules_st, max_size=2)),
                types,
            )
        )
    return Cluster.of(namespaces, pods, policies, NODES)


@settings(max_examples=150)
@given(clusters())
def test_compiled_verdicts_equal_kubernetes_semantics(cluster: Cluster) -> None:
    assert_matches_reference(cluster)


# --- incremental == full -------------------------------------------------------------------


@st.composite
def changes(draw: st.DrawFn, cluster: Cluster) -> tuple[Cluster, frozenset[ChangedKey]]:
    kind = draw(
        st.sampled_from(
            [
                "labels",
                "pod_add",
                "pod_del",
                "policy",
                "policy_del",
                "namespace",
                "frontends",
                "node",
                "ports",
            ]
        )
    )
    pods = sorted(cluster.pods)
    if kind in ("labels", "pod_del", "frontends", "ports") and not pods:
        kind = "namespace"
    if kind == "policy_del" and not cluster.policies:
        kind = "policy"
    if kind == "labels":
        p = cluster.pods[draw(st.sampled_from(pods))]
        return cluster.with_([replace(p, labels=draw(labels_st))])
    if kind == "ports":
        p = cluster.pods[draw(st.sampled_from(pods))]
        name = draw(st.sampled_from(sorted(NAMED)))
        return cluster.with_(
            [
                replace(
                    p, container_ports=(ContainerPort(*draw(st.sampled_from(NAMED[name])), name),)
                )
            ]
        )
    if kind == "frontends":
        p = cluster.pods[draw(st.sampled_from(pods))]
        frontends = () if p.frontends else (Frontend(A("fd00:96::99"), TCP, 80, "http"),)
        return cluster.with_([replace(p, frontends=frontends)])
    if kind == "pod_del":
        return cluster.with_(delete=[draw(st.sampled_from(pods))])
    if kind == "pod_add":
        new = pod(
            draw(st.sampled_from(NAMESPACE_NAMES)),
            "new",
            ["fd00:10::99", "10.128.0.99"],
            draw(labels_st),
            [ContainerPort(80, TCP, "http")],
        )
        return cluster.with_([new])
    if kind == "policy":
        return cluster.with_(
            [
                policy(
                    draw(st.sampled_from(NAMESPACE_NAMES)),
                    draw(st.sampled_from(["np0", "np9"])),
                    draw(selectors()),
                    draw(st.lists(rules_st, max_size=2)),
                    draw(st.lists(rules_st, max_size=2)),
                    draw(st.sampled_from([["Ingress"], ["Egress"], ["Ingress", "Egress"]])),
                )
            ]
        )
    if kind == "policy_del":
        return cluster.with_(delete=[draw(st.sampled_from(sorted(cluster.policies)))])
    if kind == "node":
        return cluster.with_([Node("n1", {A("fd00::101")})])
    return cluster.with_([Namespace(draw(st.sampled_from(NAMESPACE_NAMES)), draw(labels_st))])


@settings(max_examples=200)
@given(st.data())
def test_incremental_recompile_equals_a_full_compile(data: st.DataObject) -> None:
    before = data.draw(clusters())
    after, changed = data.draw(changes(before))
    for node in (None, "n1"):
        merged: dict[PodKey, PodRules | None] = dict(compile_node(before, node))
        merged.update(recompile(before, after, changed, node))
        assert {k: v for k, v in merged.items() if v is not None} == compile_node(after, node)


def test_one_label_change_recompiles_only_the_pods_whose_policies_name_it() -> None:
    pods = [pod("a", f"web{i}", [f"fd00:10::{i + 1:x}"], {"app": "web"}) for i in range(5)] + [
        pod("a", "cli", ["fd00:10::c1"], {"app": "cli"}),
        pod("b", "db", ["fd00:10::d1"], {"app": "db"}),
    ]
    web_in = policy(
        "a", "web-in", sel(app="web"), ingress=[PolicyRule((Peer(pod_selector=sel(app="cli")),))]
    )
    db_in = policy(
        "b", "db-in", sel(app="db"), ingress=[PolicyRule((Peer(pod_selector=sel(app="x")),))]
    )
    before = Cluster.of([], pods, [web_in, db_in], NODES)
    after, changed = before.with_([replace(pods[5], labels={"app": "other"})])
    assert affected_pods(before, after, changed) == {p.key for p in pods[:6]}
    after, changed = before.with_([replace(pods[6], labels={"app": "db", "x": "y"})])
    assert affected_pods(before, after, changed) == {pods[6].key}
    after, changed = before.with_([replace(web_in, ingress=())])
    assert affected_pods(before, after, changed) == {p.key for p in pods[:5]}
    after, changed = before.with_([Namespace("b", {"env": "x"})])
    assert affected_pods(before, after, changed) == set()
    after, changed = before.with_([Node("n1", {A("fd00::1")})])
    assert affected_pods(before, after, changed) == {p.key for p in pods}
    assert NodeKey("n1") in changed and NamespaceKey("b") not in changed
    assert compile_pod(after, PodKey("a", "nope")) is None


def test_a_cluster_ip_is_open_only_in_the_families_whose_backend_address_is_allowed() -> None:
    v6_pods = PolicyRule((Peer(ip_block=IPBlock(ipaddress.ip_network("fd00:10::/64"))),))
    c = cluster_of([SERVED_WEB, CLIENT], [policy("prod", "e", sel(app="client"), egress=[v6_pods])])
    rules = verdicts(c, CLIENT.key)
    assert rules.egress_allows(A("fd00:96::80"), TCP, 80)
    assert not rules.egress_allows(A("10.96.0.80"), TCP, 80)  # web's 10.128.0.1 is not in it


@pytest.mark.parametrize(
    "to",
    [(), (Peer(ip_block=IPBlock(ipaddress.ip_network("fd00:10::/64"))),)],
    ids=["anywhere", "ip-block"],
)
def test_a_destination_port_change_recompiles_egress_rules_that_name_it(
    to: tuple[Peer, ...],
) -> None:
    out = policy(
        "prod", "out", sel(app="client"), egress=[PolicyRule(to, (PolicyPort(TCP, "http"),))]
    )
    before = cluster_of([WEB, CLIENT], [out])
    moved = replace(WEB, container_ports=(ContainerPort(9090, TCP, "http"),))
    after, changed = before.with_([moved])
    assert CLIENT.key in affected_pods(before, after, changed)
    rules = recompile(before, after, changed)[CLIENT.key]
    assert rules is not None and rules.egress_allows(A("fd00:10::1"), TCP, 9090)
    assert not rules.egress_allows(A("fd00:10::1"), TCP, 8080)
    served = replace(WEB, frontends=(Frontend(A("fd00:96::1"), TCP, 80, "http"),))
    after, changed = before.with_([served])
    rules = recompile(before, after, changed)[CLIENT.key]
    assert rules is not None and rules.egress_allows(A("fd00:96::1"), TCP, 80)


def test_pods_and_namespaces_from_kubectl_json() -> None:
    status = {"phase": "Running", "podIPs": [{"ip": "fd00:10::1"}, {"ip": "10.128.0.1"}]}
    obj: dict[str, object] = {
        "metadata": {"namespace": "prod", "name": "web-1", "labels": {"app": "web"}},
        "spec": {
            "nodeName": "n1",
            "containers": [
                {"name": "c", "ports": [{"containerPort": 8080, "name": "http"}]},
                {"name": "d", "ports": [{"containerPort": 53, "protocol": "UDP", "name": "dns"}]},
            ],
        },
        "status": status,
    }
    web = pod_from_k8s(obj, [Frontend(A("fd00:96::1"), TCP, 80, "http")])
    assert web.key == PodKey("prod", "web-1") and web.labels == {"app": "web"}
    assert web.ips == (A("fd00:10::1"), A("10.128.0.1"))
    assert web.named_port("dns", UDP) == 53 and web.named_port("dns", TCP) is None
    assert web.resolved_frontends == (Frontend(A("fd00:96::1"), TCP, 80, 8080),)
    finished = pod_from_k8s({**obj, "status": {**status, "phase": "Succeeded"}})
    assert not finished.enforceable  # its addresses may already be another pod's
    ns = namespace_from_k8s({"metadata": {"name": "prod", "labels": {"env": "prod"}}})
    assert ns.labels == {"env": "prod", "kubernetes.io/metadata.name": "prod"}
