"""`PodRules` as VPP ACL plugin rule lists: what one pod's two ACLs must say. Pure.

Where: on the pod's port in VPP (the af_packet port on the node end of its veth). VPP's
directions are the port's, so they are the pod's reversed: *input* on the port is what the
pod sends (its egress), *output* is what VPP sends to it (its ingress). The backend
(`srv6ctl.dataplane.vpp_acl`) binds `PodAcls.egress` as the input ACL and
`PodAcls.ingress` as the output ACL.

First match wins in an ACL (and no match denies), so each list is ordered:

    ingress (VPP output)                 egress (VPP input)
    ICMP that must always pass           ICMP that must always pass
    src in the pod's node      permit    dst in the pod's node      permit
    src is the pod itself      permit    dst is the pod itself      permit
    (peer, ClusterIP S, P)     permit    (S, P) a rule allows       permit
    S:P of its own frontends   deny      every ClusterIP            deny
    (peer, port) of each rule  permit    (peer, port) of each rule  permit
    everything                 deny      everything                 deny

Services without NAT (see policies/compiler.py): the ACL sees a service packet before the
backend pod rewrites P to its targetPort T, so frontend ports are judged by the
`ServiceRule`s alone — the deny after them keeps a rule that allows port P on the pod's
own address from opening S:P when T is closed. On egress every ClusterIP is judged by
the service entries alone (an ipBlock covering the service range must not open it).

ipBlock excepts: the compiler's `AddressSet`s have them subtracted already; their
prefixes (`networks()`) are what the ACL holds. A deny for the except placed before the
block's permit would be wrong in a first-match list that holds several rules: it would
also shadow another rule that allows a peer inside the except.

Replies and state: every permit is permit+reflect, which makes a session on the port;
packets of the session in either direction pass without being judged again — replies to
a connection the pod opened pass its ingress ACL, replies to one a peer opened pass its
egress ACL. That works only where the reply's direction has an ACL to look the session
up, so a pod isolated in one way gets, in the other, an ACL that permits+reflects
everything; a pod isolated in neither way has no ACL at all. A policy change: with VPP's
`reclassify sessions` on (the backend turns it on), replacing an ACL bumps the port's
policy epoch and the next packet of an older session in its original direction is
judged again — a now-denied flow stops, as with the nftables backend.

Always passes, as in policies/nftables.py: neighbour discovery and MLD (ICMPv6 130-137,
143; VPP resolves pods' addresses with them, and ARP is not IP), and ICMP errors
(ICMPv6 1-4, ICMP 3/11/12). Those errors pass unconditionally: the ACL plugin has no
`related` state for them as conntrack has, and a dropped Packet Too Big breaks every
flow over SRv6's smaller MTU.

What VPP cannot see: the ACL plugin reads ports of TCP and UDP only (VPP 25.10,
acl/public_inlines.h); an SCTP packet has port 0 to it. An SCTP rule for some ports
therefore matches no SCTP packet (fails closed), one for every port matches all of
them. `AclRule.matches` models that, so the truth-table tests compare what VPP does.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import IntEnum

from policies.model import (
    ALL_PORTS,
    AddressSet,
    Direction,
    IPAddress,
    IPNetwork,
    PodKey,
    PodRules,
    Ports,
    Protocol,
    ServicePort,
)

ICMP, ICMP6 = 1, 58
ANY_PROTOCOL = 0
ANY_V4 = ipaddress.IPv4Network("0.0.0.0/0")
ANY_V6 = ipaddress.IPv6Network("::/0")
# Protocols whose ports the ACL plugin reads (others have port 0 to it).
PORTS_VISIBLE = frozenset({Protocol.TCP.number, Protocol.UDP.number})
# ICMP type ranges (in the rule's source-port field; codes in the destination-port field)
# that pass both ways: errors, and for ICMPv6 also MLD (130-132, 143) and ND (133-137).
ICMP6_ALWAYS = ((1, 4), (130, 137), (143, 143))
ICMP4_ALWAYS = ((3, 3), (11, 12))


class Action(IntEnum):
    """vl_api_acl_action_t."""

    DENY = 0
    PERMIT = 1
    PERMIT_REFLECT = 2


@dataclass(frozen=True)
class AclRule:
    """One vl_api_acl_rule_t. `proto` 0 is any protocol (ports then ignored); for ICMP
    `sport` is the type range and `dport` the code range, as VPP reads them."""

    action: Action
    src: IPNetwork
    dst: IPNetwork
    proto: int = ANY_PROTOCOL
    sport: tuple[int, int] = ALL_PORTS
    dport: tuple[int, int] = ALL_PORTS

    def __post_init__(self) -> None:
        if self.src.version != self.dst.version:
            raise ValueError(f"ACL rule {self}: source and destination of different families")

    def matches(self, src: IPAddress, dst: IPAddress, proto: int, sport: int, dport: int) -> bool:
        """As the ACL plugin's match (acl/public_inlines.h), for a first fragment."""
        if src.version != self.src.version or src not in self.src or dst not in self.dst:
            return False
        if self.proto == ANY_PROTOCOL:
            return True
        if proto != self.proto:
            return False
        if proto not in PORTS_VISIBLE and proto not in (ICMP, ICMP6):
            sport = dport = 0
        return self.sport[0] <= sport <= self.sport[1] and self.dport[0] <= dport <= self.dport[1]


Acl = tuple[AclRule, ...]


@dataclass(frozen=True)
class PodAcls:
    """One pod's two ACLs, by the pod's directions (see the module docstring)."""

    pod: PodKey
    ingress: Acl  # VPP output on the pod's port
    egress: Acl  # VPP input on the pod's port

    @property
    def rule_count(self) -> int:
        return len(self.ingress) + len(self.egress)


def first_match(
    acl: Iterable[AclRule], src: IPAddress, dst: IPAddress, proto: int, sport: int, dport: int
) -> Action:
    """What VPP does with the packet: the first matching rule's action; no match denies."""
    for rule in acl:
        if rule.matches(src, dst, proto, sport, dport):
            return rule.action
    return Action.DENY


def translate(rules: PodRules) -> PodAcls | None:
    """The ACLs enforcing `rules`; None for a pod isolated in neither way (no ACL)."""
    if not rules.isolated:
        return None
    own = rules.own_addresses
    ingress = _ingress(rules, own) if rules.ingress.isolated else _PERMIT_ALL
    egress = _egress(rules.egress, rules.node, own) if rules.egress.isolated else _PERMIT_ALL
    return PodAcls(rules.pod, ingress, egress)


def _ingress(rules: PodRules, own: AddressSet) -> Acl:
    direction = rules.ingress
    acl = [*_always(), *_peers(rules.node, "src"), *_peers(own, "src")]
    for service in direction.services:
        for port in service.services:
            for peer in _networks(service.peers, port.address.version):
                acl += _service(Action.PERMIT_REFLECT, peer, port)
    for frontend in rules.frontends:
        acl += _service(
            Action.DENY,
            _any(frontend.cluster_ip.version),
            ServicePort(frontend.cluster_ip, frontend.protocol, frontend.port),
        )
    for rule in direction.rules:
        for peer in _networks(rule.peers):
            acl += _ports(peer, _any(peer.version), rule.ports)
    return (*acl, *_DENY_ALL)


def _egress(direction: Direction, node: AddressSet, own: AddressSet) -> Acl:
    acl = [*_always(), *_peers(node, "dst"), *_peers(own, "dst")]
    for service in direction.services:
        for port in service.services:
            # Egress service rules name no peers (the compiler's); were there any, the
            # ClusterIP itself would have to be one of them.
            if service.peers is None or port.address in service.peers:
                acl += _service(Action.PERMIT_REFLECT, _any(port.address.version), port)
    for net in direction.service_addresses.networks():
        acl.append(AclRule(Action.DENY, _any(net.version), net))
    for rule in direction.rules:
        for peer in _networks(rule.peers):
            acl += _ports(_any(peer.version), peer, rule.ports)
    return (*acl, *_DENY_ALL)


def _any(version: int) -> IPNetwork:
    return ANY_V4 if version == 4 else ANY_V6


def _host(address: IPAddress) -> IPNetwork:
    return ipaddress.ip_network(address)


def _networks(peers: AddressSet | None, version: int | None = None) -> Iterator[IPNetwork]:
    """The peers as prefixes (None: anything, of both families or of `version`)."""
    if peers is None:
        yield from (_any(v) for v in (4, 6) if version in (None, v))
        return
    for net in peers.networks():
        if version in (None, net.version):
            yield net


def _peers(addresses: AddressSet, side: str) -> Iterator[AclRule]:
    """Permit anything from (side "src") or to ("dst") these addresses."""
    for net in addresses.networks():
        other = _any(net.version)
        src, dst = (net, other) if side == "src" else (other, net)
        yield AclRule(Action.PERMIT_REFLECT, src, dst)


def _ports(src: IPNetwork, dst: IPNetwork, ports: Ports | None) -> Iterator[AclRule]:
    if ports is None:
        yield AclRule(Action.PERMIT_REFLECT, src, dst)
        return
    for r in ports.ranges:
        yield AclRule(
            Action.PERMIT_REFLECT, src, dst, r.protocol.number, ALL_PORTS, (r.first, r.last)
        )


def _service(action: Action, peer: IPNetwork, port: ServicePort) -> Iterator[AclRule]:
    """`peer` to ClusterIP `port.address` on `port` (any traffic when it has none)."""
    if peer.version != port.address.version:
        return
    dst = _host(port.address)
    if port.protocol is None or port.port is None:
        yield AclRule(action, peer, dst)
    else:
        yield AclRule(action, peer, dst, port.protocol.number, ALL_PORTS, (port.port, port.port))


def _always() -> Iterator[AclRule]:
    for version, proto, types in ((6, ICMP6, ICMP6_ALWAYS), (4, ICMP, ICMP4_ALWAYS)):
        any_net = _any(version)
        for first, last in types:
            yield AclRule(Action.PERMIT, any_net, any_net, proto, (first, last), (0, 255))


_PERMIT_ALL: Acl = (
    AclRule(Action.PERMIT_REFLECT, ANY_V6, ANY_V6),
    AclRule(Action.PERMIT_REFLECT, ANY_V4, ANY_V4),
)
_DENY_ALL: Acl = (AclRule(Action.DENY, ANY_V6, ANY_V6), AclRule(Action.DENY, ANY_V4, ANY_V4))
