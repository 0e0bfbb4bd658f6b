"""`PodRules` as VPP ACLs (policies/vpp_acl.py), on plain data.

The truth table: for random clusters (tests/test_policies_compiler.py's strategy) every
(source, destination, protocol, port) a new connection may have is run through the ACL's
first match, as VPP evaluates it, and compared with the compiled rules' verdict
(`PodRules.ingress_allows` / `egress_allows`, themselves checked against Kubernetes'
semantics there). SCTP ports are invisible to VPP's ACL plugin: there the ACL may deny
what the rules allow (fails closed), never the reverse.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policies.compiler import compile_node
from policies.model import (
    Cluster,
    ContainerPort,
    Frontend,
    IPAddress,
    IPBlock,
    NetworkPolicy,
    Peer,
    PodKey,
    PodRules,
    PolicyPort,
    PolicyRule,
    Protocol,
)
from policies.vpp_acl import (
    ANY_V4,
    ANY_V6,
    AclRule,
    Action,
    PodAcls,
    first_match,
    translate,
)
from tests.test_policies_compiler import (
    NAMESPACES,
    NODES,
    addresses_to_probe,
    clusters,
    pod,
    policy,
    probe_ports,
    rules_st,
    sel,
)

A = ipaddress.ip_address
N = ipaddress.ip_network
TCP, UDP, SCTP = Protocol.TCP, Protocol.UDP, Protocol.SCTP
SERVICE6, SERVICE4 = A("fd00:96::1"), A("10.96.0.1")
EPHEMERAL = 40000  # a client's source port


def packet(protocol: Protocol | None, port: int, version: int) -> tuple[int, int, int]:
    """(proto, sport, dport) as the ACL reads them; None is an ICMP echo request."""
    if protocol is None:
        return (58, 128, 0) if version == 6 else (1, 8, 0)
    return protocol.number, EPHEMERAL, port


def acl_allows(
    acl: tuple[AclRule, ...], src: IPAddress, dst: IPAddress, protocol: Protocol | None, port: int
) -> bool:
    return first_match(acl, src, dst, *packet(protocol, port, src.version)) is not Action.DENY


Verdict = tuple[IPAddress, IPAddress, Protocol | None, int]  # src, dst, protocol, port


def ingress(acls: PodAcls | None, *probe: *Verdict) -> bool:
    return acls is None or acl_allows(acls.ingress, *probe)


def egress(acls: PodAcls | None, *probe: *Verdict) -> bool:
    return acls is None or acl_allows(acls.egress, *probe)


def mismatches(cluster: Cluster) -> Iterator[str]:
    protocols: list[Protocol | None] = [TCP, UDP, SCTP, None]
    ports = probe_ports(cluster)
    peers = addresses_to_probe(cluster)
    frontends = {f for p in cluster.pods.values() for f in p.resolved_frontends}
    cluster_ips = sorted({f.cluster_ip for f in frontends}, key=lambda a: (a.version, int(a)))
    for key, rules in sorted(compile_node(cluster).items()):
        acls = translate(rules)
        assert (acls is None) == (not rules.isolated)
        own = {a.version: a for a in rules.addresses}

        def check(way: str, got: bool, want: bool, protocol: Protocol | None, what: str) -> str:
            if got == want or (protocol is SCTP and want and not got):
                return ""
            return f"{way} {what} {protocol}: rules say {want}, the ACL {got}"

        for protocol in protocols:
            for port in ports if protocol else [0]:
                for peer in peers:
                    mine = own.get(peer.version)
                    if mine is None or peer in rules.addresses:
                        continue
                    want = rules.ingress_allows(peer, protocol, port or None)
                    got = ingress(acls, peer, mine, protocol, port)
                    yield check("ingress", got, want, protocol, f"{peer} -> {key}:{port}")
                    want = rules.egress_allows(peer, protocol, port or None)
                    got = egress(acls, mine, peer, protocol, port)
                    yield check("egress", got, want, protocol, f"{key} -> {peer}:{port}")
                for cluster_ip in cluster_ips:
                    mine = own.get(cluster_ip.version)
                    if mine is None:
                        continue
                    want = rules.egress_allows(cluster_ip, protocol, port or None)
                    got = egress(acls, mine, cluster_ip, protocol, port)
                    yield check("egress", got, want, protocol, f"{key} -> {cluster_ip}:{port}")
                    # A packet to a ClusterIP this pod serves, as it arrives (before the
                    # pod's port rewrite), from every peer.
                    if cluster_ip not in {f.cluster_ip for f in rules.frontends}:
                        continue
                    for peer in peers:
                        if peer.version != cluster_ip.version or peer in rules.addresses:
                            continue
                        want = rules.ingress_allows(peer, protocol, port or None, cluster_ip)
                        got = ingress(acls, peer, cluster_ip, protocol, port)
                        what = f"{peer} -> {cluster_ip}:{port}"
                        yield check("ingress", got, want, protocol, what)


def assert_same_verdicts(cluster: Cluster) -> None:
    found = [m for m in mismatches(cluster) if m]
    assert not found, "\n".join(found[:20])


@st.composite
def isolated_clusters(draw: st.DrawFn) -> Cluster:
    """The compiler tests' random clusters, plus a policy isolating every pod of some
    pod's namespace both ways (most random clusters isolate little)."""
    cluster = draw(clusters())
    pods = cluster.enforceable_pods
    if not pods:
        return cluster
    namespace = draw(st.sampled_from(pods)).namespace
    ingress = draw(st.lists(rules_st, max_size=3))
    egress = draw(st.lists(rules_st, min_size=1, max_size=3))
    extra = policy(namespace, "extra", sel(), ingress, egress, ["Ingress", "Egress"])
    return cluster.with_([extra], [])[0]


@settings(max_examples=200, deadline=None)
@given(isolated_clusters())
def test_acl_first_match_equals_the_compiled_verdicts(cluster: Cluster) -> None:
    assert_same_verdicts(cluster)


# --- by hand ----------------------------------------------------------------------------

WEB = pod(
    "prod",
    "web",
    ["fd00:10::1", "10.128.0.1"],
    {"app": "web"},
    [ContainerPort(8080, TCP, "http")],
    [Frontend(SERVICE6, TCP, 80, "http"), Frontend(SERVICE4, TCP, 80, 8080)],
)
CLIENT = pod("prod", "client", ["fd00:10::3", "10.128.0.3"], {"app": "client"})
OTHER = pod("prod", "other", ["fd00:10::4"], {"app": "other"})
WEB_KEY, CLIENT_KEY = PodKey("prod", "web"), PodKey("prod", "client")


def compiled(*policies: NetworkPolicy) -> dict[PodKey, PodRules]:
    cluster = Cluster.of(NAMESPACES, [WEB, CLIENT, OTHER], policies, NODES)
    assert_same_verdicts(cluster)
    return compile_node(cluster)


def allow_client_on(port: int | str) -> NetworkPolicy:
    return policy(
        "prod",
        "web-in",
        sel(app="web"),
        [PolicyRule((Peer(pod_selector=sel(app="client")),), (PolicyPort(TCP, port),))],
    )


def test_no_policy_no_acl_and_one_way_isolation_reflects_the_other() -> None:
    assert translate(compiled()[WEB_KEY]) is None
    acls = translate(compiled(policy("prod", "deny", sel(app="web")))[WEB_KEY])
    assert acls is not None
    # Egress is not isolated, yet it has an ACL: permit+reflect everything, so that
    # replies to what peers open are looked up in VPP's sessions.
    assert acls.egress == (
        AclRule(Action.PERMIT_REFLECT, ANY_V6, ANY_V6),
        AclRule(Action.PERMIT_REFLECT, ANY_V4, ANY_V4),
    )
    assert acls.ingress[-2:] == (
        AclRule(Action.DENY, ANY_V6, ANY_V6),
        AclRule(Action.DENY, ANY_V4, ANY_V4),
    )
    # Every permit but ICMP's makes a session: the replies of an allowed connection pass.
    assert all(r.action is not Action.PERMIT for r in acls.ingress if r.proto not in (1, 58))


def test_service_port_not_target_port() -> None:
    """ClusterIP:80 → targetPort 8080: the ACL sees :80 (before the pod's rewrite)."""
    acls = translate(compiled(allow_client_on("http"))[WEB_KEY])
    assert acls is not None
    client6, client4, other = A("fd00:10::3"), A("10.128.0.3"), A("fd00:10::4")
    web6 = A("fd00:10::1")
    assert ingress(acls, client6, SERVICE6, TCP, 80)
    assert ingress(acls, client4, SERVICE4, TCP, 80)
    assert ingress(acls, client6, web6, TCP, 8080)
    assert not ingress(acls, other, SERVICE6, TCP, 80)
    assert not ingress(acls, client6, web6, TCP, 80)
    # Allowing port 80 on the pod does not open ClusterIP:80, whose target 8080 is closed.
    acls = translate(compiled(allow_client_on(80))[WEB_KEY])
    assert acls is not None
    assert ingress(acls, client6, web6, TCP, 80)
    assert not ingress(acls, client6, SERVICE6, TCP, 80)
    assert AclRule(Action.DENY, ANY_V6, N(f"{SERVICE6}/128"), 6, (0, 65535), (80, 80)) in (
        acls.ingress
    )


def test_egress_to_a_cluster_ip_by_its_backends_and_ip_block_excepts() -> None:
    to_web = policy(
        "prod",
        "client-out",
        sel(app="client"),
        egress=[
            PolicyRule((Peer(pod_selector=sel(app="web")),), (PolicyPort(TCP, 8080),)),
            PolicyRule(
                (Peer(ip_block=IPBlock(N("fd00::/16"), (N("fd00:10::/64"),))),),
                (PolicyPort(UDP, 53, 60),),
            ),
            # A pod inside the except, allowed by another rule: the except must not win.
            PolicyRule((Peer(pod_selector=sel(app="other")),), (PolicyPort(UDP, 53),)),
        ],
    )
    acls = translate(compiled(to_web)[CLIENT_KEY])
    assert acls is not None
    me = A("fd00:10::3")
    assert egress(acls, me, SERVICE6, TCP, 80)
    assert not egress(acls, me, SERVICE6, TCP, 8080)
    assert egress(acls, me, A("fd00:20::1"), UDP, 60)
    assert not egress(acls, me, A("fd00:20::1"), UDP, 61)
    assert not egress(acls, me, A("fd00:10::1"), UDP, 53)  # in the except
    assert egress(acls, me, A("fd00:10::4"), UDP, 53)  # in the except, but a pod rule's
    # The ipBlock covers the service range: it opens no ClusterIP.
    assert not egress(acls, me, SERVICE6, UDP, 53)


def test_always_allowed_icmp_and_node() -> None:
    deny = policy("prod", "deny", sel(app="web"), types=["Ingress", "Egress"])
    acls = translate(compiled(deny)[WEB_KEY])
    assert acls is not None
    web6, peer6, web4, peer4 = A("fd00:10::1"), A("2001:db8::1"), A("10.128.0.1"), A("192.0.2.1")
    for acl, (src6, dst6, src4, dst4) in (
        (acls.ingress, (peer6, web6, peer4, web4)),
        (acls.egress, (web6, peer6, web4, peer4)),
    ):
        for icmp_type in (1, 2, 3, 4, 133, 134, 135, 136, 137, 143):
            assert first_match(acl, src6, dst6, 58, icmp_type, 0) is Action.PERMIT
        assert first_match(acl, src6, dst6, 58, 128, 0) is Action.DENY  # echo
        assert first_match(acl, src4, dst4, 1, 3, 4) is Action.PERMIT
        assert first_match(acl, src4, dst4, 1, 8, 0) is Action.DENY
    node = A("fd00::100")
    assert first_match(acls.ingress, node, web6, 6, 1234, 8080) is Action.PERMIT_REFLECT
    assert first_match(acls.egress, web6, node, 17, 1234, 53) is Action.PERMIT_REFLECT


def test_sctp_ports_fail_closed_in_vpp() -> None:
    sctp = policy(
        "prod",
        "sctp",
        sel(app="web"),
        [
            PolicyRule((Peer(pod_selector=sel(app="client")),), (PolicyPort(SCTP, 3868),)),
            PolicyRule((Peer(pod_selector=sel(app="other")),), (PolicyPort(SCTP),)),
        ],
    )
    rules = compiled(sctp)[WEB_KEY]
    acls = translate(rules)
    web6 = A("fd00:10::1")
    assert rules.ingress_allows(A("fd00:10::3"), SCTP, 3868)
    assert not ingress(acls, A("fd00:10::3"), web6, SCTP, 3868)  # VPP reads no SCTP port
    assert ingress(acls, A("fd00:10::4"), web6, SCTP, 3868)  # every SCTP port: passes


@pytest.mark.parametrize("bad", [(N("::/0"), N("0.0.0.0/0"))])
def test_a_rule_is_one_family(bad: tuple[ipaddress.IPv6Network, ipaddress.IPv4Network]) -> None:
    with pytest.raises(ValueError, match="different families"):
        AclRule(Action.DENY, *bad)
