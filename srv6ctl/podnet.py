"""Inside a backend pod: its service VIPs on loopback, the hairpin rules that send the pod's
own connections to them out through the node, and stateless port rewrites.

This is the pod half of "services without NAT" (README.md): End.DX6/End.DX4 on the node
hands the pod the *original* packet, destination still the ClusterIP `S`. The pod accepts
it because `S` is on its loopback while it is an endpoint, and answers from `S` directly.
Where a service's `port != targetPort`, the pod's own namespace rewrites the destination
port on the way in and the source port on the way out, statelessly (fixed maps, no NAT
state), in the one form NetworkPolicy relies on (`policies.nftables.port_rewrite_ruleset`,
policies/README.md): `P -> T` in prerouting at priority -300, before conntrack, and
`T -> P` in postrouting at priority 100, after it. So conntrack in the pod sees one tuple
`S:T` per flow, and the policy table (input/output, priority 0) judges `T` as Kubernetes
does after DNAT. The rewrite does not `notrack`: an untracked packet could not be
recognised as a reply by the policy table.

UDP is the exception to "no NAT" in the pod (`policies.nftables.UdpVipTarget`): a UDP
server bound to the wildcard answers from the kernel's default source, the pod's own
address, where a TCP server's accepted socket answers from `S`; so the pod DNATs UDP to
its VIPs to its own address, and the flow's conntrack entry gives the reply `S` back.
The entry lives in the pod that serves the flow; no node keeps any. When the table
changes, the UDP entries of a DNAT it no longer makes are deleted (srv6ctl/stale_udp.py),
as kube-proxy deletes them: a client sending from one port would keep the old target.

A client too: every pod DNATs its own connections to Services whose endpoints are outside
the cluster (`PodAttachment.translations`, chain `translate` at output in the same table):
nothing there can hold the ClusterIP, so the one NAT lives with the client (README,
"Endpoints outside the cluster").

Hairpin (issue 17, "a backend is also a client"): with `S` on its loopback, the pod's own
connections to `S` would never leave it — the `local` table, consulted first, says `S` is
here — so a backend calling its own Service (etcd, Cassandra seeds, Kafka) would always
reach itself. With kube-proxy it is load-balanced like any client. So, per family that has
a VIP, in the pod (ip-rule(8)):

    pref HAIRPIN_PRIORITY  iif lo to S/128 (/32) lookup main   (one per VIP)
    pref LOCAL_PRIORITY    lookup local                        (moved from pref 0)

`iif lo` matches only output route lookups (locally generated packets), so the pod's own
sockets route `S` out of its interface to the node, whose steering puts it into the
Service's SR policy like anyone's; a packet arriving on the interface skips the rule and
finds `S` in the local table. No NAT anywhere: the backend that answers (the pod itself
included) sees the pod's own address and answers from `S`. What that needs besides:

- IPv6 VIPs are added with IFA_F_NOPREFIXROUTE: otherwise the kernel also puts `S/128 dev
  lo` in the *main* table and the rule would find the loopback again.
- `net.ipv6.conf.<if>.use_oif_addrs_only=1`: IPv6 source selection otherwise considers
  every interface's addresses, and RFC 6724 rule 1 ("prefer the same address") would make
  `S` the source of a connection to `S`, so the answer would never come back to the pod.
- `net.ipv6.conf.<if>.accept_redirects=0`: when a connection lands on the pod itself, the
  kernel node's End.DX6 forwards the decapsulated packet out of the veth it came in on,
  and `ip6_forward` answers that with a redirect saying `S` is on-link (IPv6 has no
  send_redirects switch); a pod that took it would look `S` up by neighbour discovery on
  its link from then on, and fail (seen on 6.1: 34 redirects, 36 of 60 connections
  lost). The node is the pod's only router: it has nothing to learn from redirects.
- `net.ipv4.conf.<if>.accept_local=1`: a hairpinned IPv4 packet that lands on the pod
  itself carries the pod's own address as its source, a martian without it (IPv6 has no
  such check).

Ownership: loopback addresses inside the configured service CIDRs are ours (nothing else
puts a ClusterIP on a pod's `lo`), and so is every address carrying our protocol,
`ADDRESS_PROTOCOL` (IFA_PROTO, kernel 6.1+), which each VIP is added with: LoadBalancer
IPs and externalIPs lie outside the service CIDRs. An older kernel drops the tag: there a
VIP outside the service CIDRs that stops being the pod's stays on its loopback until the
pod goes, and the pod's own connections to that address then stay inside it (nothing
else changes: no node routes the VIP to the pod any more). The rules are ours by their
protocol, `RULE_PROTOCOL` (FRA_PROTOCOL, 4.17+: the same 0x5C the kernel backend tags its
routes with), never by their destination, so VIPs outside the service CIDRs are covered
too. The kernel's own
`pref 0 lookup local` rule is deleted only after ours is in place and put back before ours
is deleted, so a family always has one local rule, and ours present means we moved it. The
sysctls above, on the pod's interface, are ours while the pod holds a VIP of that family
and go back to the kernel's defaults when it holds none. The rewrites live in one nftables
table, `inet srv6ctl_svc`, replaced atomically in one `nft -f` transaction and tagged with
a digest of its content. An unchanged pod costs reads, not writes.
"""

from __future__ import annotations

import hashlib
import ipaddress
import socket
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pyroute2 import IPRoute

from policies.model import Frontend, Protocol
from policies.nftables import NodePortTarget, UdpVipTarget, VipPort, port_rewrite_ruleset
from srv6ctl.dataplane.host_ports import client_translation
from srv6ctl.dataplane.kernel import RTPROT_SRV6CTL
from srv6ctl.dataplane.model import IPAddress, IPNetwork, PodAttachment
from srv6ctl.dataplane.nsenter import ensure_sysctls, run_in_netns
from srv6ctl.stale_udp import forget_stale

TABLE = "srv6ctl_svc"
NFT = "nft"
RULE_PROTOCOL = RTPROT_SRV6CTL
ADDRESS_PROTOCOL = RTPROT_SRV6CTL  # IFA_PROTO (6.1+): the VIPs we put on lo
# Small, so ours come before any rule a pod may have of its own (rare: it needs
# CAP_NET_ADMIN), main's 32766 included; 0 stays where the kernel's local rule goes back.
HAIRPIN_PRIORITY = 100
LOCAL_PRIORITY = 200
LOCAL_TABLE = 255
MAIN_TABLE = 254
_RTPROT_KERNEL = 2  # what the kernel's own `pref 0 lookup local` carries
_IFA_F_NOPREFIXROUTE = 0x200
_FAMILY = {4: socket.AF_INET, 6: socket.AF_INET6}
# Per family: the sysctls on the pod's interface a hairpin needs (see above), as
# name: (value while the pod holds a VIP of that family, the kernel's default).
_HAIRPIN_SYSCTLS = {
    4: {"net/ipv4/conf/{}/accept_local": ("1", "0")},
    6: {
        "net/ipv6/conf/{}/use_oif_addrs_only": ("1", "0"),
        "net/ipv6/conf/{}/accept_redirects": ("0", "1"),
    },
}


class PodProgrammingError(RuntimeError):
    pass


@dataclass(frozen=True)
class PodRule:
    """One policy-routing rule in a pod: `pref priority [iif lo to destination] lookup
    table`. A rule with a destination is a hairpin rule (it always has `iif lo`)."""

    family: int  # 4 or 6
    priority: int
    table: int
    destination: IPAddress | None = None

    def __str__(self) -> str:
        where = f" iif lo to {self.destination}" if self.destination is not None else ""
        table = {LOCAL_TABLE: "local", MAIN_TABLE: "main"}.get(self.table, str(self.table))
        return f"-{self.family} pref {self.priority}{where} lookup {table}"


KERNEL_LOCAL_RULES = {f: PodRule(f, 0, LOCAL_TABLE) for f in _FAMILY}


def hairpin_rules(service_addresses: Iterable[IPAddress]) -> frozenset[PodRule]:
    """The rules of ours a pod holding these VIPs needs (none when it holds none)."""
    rules = set()
    for address in service_addresses:
        rules.add(PodRule(address.version, HAIRPIN_PRIORITY, MAIN_TABLE, address))
        rules.add(PodRule(address.version, LOCAL_PRIORITY, LOCAL_TABLE))
    return frozenset(rules)


@dataclass(frozen=True)
class PodSync:
    """What one sync changed in a pod (for logs, telemetry and tests)."""

    added: tuple[IPAddress, ...] = ()
    removed: tuple[IPAddress, ...] = ()
    rewrites_replaced: bool = False
    rules_added: tuple[PodRule, ...] = ()  # the kernel's pref 0 local rule included
    rules_removed: tuple[PodRule, ...] = ()
    sysctls: tuple[str, ...] = ()  # those written
    udp_forgotten: int = 0  # UDP conntrack entries of a DNAT the new table no longer makes

    @property
    def writes(self) -> int:
        return (
            len(self.added)
            + len(self.removed)
            + int(self.rewrites_replaced)
            + len(self.rules_added)
            + len(self.rules_removed)
            + len(self.sysctls)
            + self.udp_forgotten
        )


def frontends(attachment: PodAttachment) -> tuple[Frontend, ...]:
    """The pod's port maps as the policy model's frontends (numeric targets)."""
    return tuple(
        Frontend(address, Protocol(protocol), port, target)
        for protocol, address, port, target in attachment.port_maps
    )


def node_port_targets(attachment: PodAttachment) -> tuple[NodePortTarget, ...]:
    """The pod's node ports, each DNATed to the pod's own address of its IP version (none
    for a version the pod has no address of)."""
    own = attachment.own_addresses()
    return tuple(
        NodePortTarget(Protocol(protocol), version, node_port, str(own[version]), target)
        for protocol, version, node_port, target in attachment.node_ports
        if version in own
    )


def udp_vip_targets(attachment: PodAttachment) -> tuple[UdpVipTarget, ...]:
    """The pod's VIPs of Services with a UDP port, each DNATed for UDP to the pod's own
    address of its IP version (`UdpVipTarget`: so a UDP server's reply leaves from the
    VIP). Only those: the DNAT brings conntrack into the pod, which a pod serving only
    TCP does without."""
    own = attachment.own_addresses()
    return tuple(
        UdpVipTarget(vip.version, str(vip), str(own[vip.version]))
        for vip in sorted(attachment.udp_addresses, key=lambda a: (a.version, int(a)))
        if vip.version in own
    )


def ruleset(attachment: PodAttachment) -> str:
    """The transaction (re)installing the `inet srv6ctl_svc` table for a pod's port maps,
    node ports, UDP VIPs, served ports and translations ('' when it needs none), tagged
    with a digest of its content."""
    text = port_rewrite_ruleset(
        frontends(attachment),
        TABLE,
        node_port_targets(attachment),
        translations=[client_translation(t) for t in attachment.translations],
        udp_vips=udp_vip_targets(attachment),
        vip_ports=[
            VipPort(str(vip), Protocol(p), port) for p, vip, port in attachment.service_ports
        ],
    )
    if text is None:
        return ""
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    opening = f"table inet {TABLE} {{\n"
    return text.replace(opening, f'{opening}comment "srv6ctl:{digest}"\n', 1)


def _digest(text: str) -> str | None:
    marker = 'comment "srv6ctl:'
    start = text.find(marker)
    if start < 0:
        return None
    return text[start + len(marker) : text.find('"', start + len(marker))]


def _rule_of(version: int, msg: Any) -> PodRule | None:
    """A dumped rule as a `PodRule` when it has a shape we make, else None."""
    attrs = dict(msg["attrs"])
    if any(attrs.get(a) for a in ("FRA_SRC", "FRA_OIFNAME", "FRA_FWMARK", "FRA_GOTO")):
        return None
    priority = int(attrs.get("FRA_PRIORITY", 0))
    table = int(attrs.get("FRA_TABLE", msg["table"]))
    destination = attrs.get("FRA_DST")
    if destination is None:
        return None if attrs.get("FRA_IIFNAME") else PodRule(version, priority, table)
    address = ipaddress.ip_address(destination)
    if attrs.get("FRA_IIFNAME") != "lo" or msg["dst_len"] != address.max_prefixlen:
        return None
    return PodRule(version, priority, table, address)


class PodNetworkProgrammer:
    """Makes a pod's namespace hold exactly what its `PodAttachment` says."""

    def __init__(self, service_cidrs: Iterable[IPNetwork]) -> None:
        self.service_cidrs = tuple(service_cidrs)

    def _ours(self, address: IPAddress) -> bool:
        return any(address in cidr for cidr in self.service_cidrs)

    def sync(self, attachment: PodAttachment) -> PodSync:
        return run_in_netns(attachment.netns, lambda: self._sync_here(attachment))

    def clear(self, netns: str, container_interface: str = "eth0") -> PodSync:
        """Remove everything of ours from a pod (it stopped being an endpoint, or left),
        and put back the kernel's local rule at priority 0."""
        empty = PodAttachment(
            interface="", pod="", netns=netns, container_interface=container_interface
        )
        return self.sync(empty)

    def _sync_here(self, attachment: PodAttachment) -> PodSync:
        wanted = set(attachment.service_addresses)
        with IPRoute() as ipr:
            lo = ipr.link_lookup(ifname="lo")[0]
            present = set()  # every address on lo: none is added twice
            ours = set()
            flagless = set()  # IPv6 VIPs of ours the kernel also routes in `main`
            for msg in ipr.get_addr(index=lo):
                address = ipaddress.ip_address(msg.get_attr("IFA_ADDRESS"))
                present.add(address)
                if self._ours(address) or msg.get_attr("IFA_PROTO") == ADDRESS_PROTOCOL:
                    ours.add(address)
                    flags = msg.get_attr("IFA_FLAGS") or msg["flags"]
                    if address.version == 6 and not flags & _IFA_F_NOPREFIXROUTE:
                        flagless.add(address)
            added = sorted(wanted - present, key=str)
            removed = sorted(ours - wanted, key=str)
            for address in added:
                self._address(ipr, "add", lo, address)
            for address in sorted(flagless & wanted, key=str):
                # An address added before hairpins existed: setting the flag drops its route.
                self._address(ipr, "replace", lo, address)
            for address in removed:
                ipr.addr("del", index=lo, address=str(address), prefixlen=address.max_prefixlen)
            rules = self._read_rules(ipr)
            families: set[int] = {a.version for a in wanted}
            had = {version for version, (ours, _) in rules.items() if ours}
            if ipr.link_lookup(ifname=attachment.container_interface):
                # Before the rules: a hairpin never runs without what it needs.
                sysctls = self._sync_sysctls(attachment.container_interface, families, had)
            else:
                # A memif pod (VPP) has no kernel interface of that name (its own data plane
                # holds its addresses), or the pod is gone: nothing of the kernel's to tune.
                sysctls = ()
            rules_added, rules_removed = self._write_rules(ipr, rules, hairpin_rules(wanted))
        replaced = self._sync_rewrites(ruleset(attachment))
        # Only when the table changed: an unchanged pod costs reads, not a conntrack dump.
        forgotten = forget_stale(attachment) if replaced else 0
        return PodSync(
            tuple(added), tuple(removed), replaced, rules_added, rules_removed, sysctls, forgotten
        )

    @staticmethod
    def _address(ipr: IPRoute, command: str, lo: int, address: IPAddress) -> None:
        ipr.addr(
            command,
            index=lo,
            address=str(address),
            prefixlen=address.max_prefixlen,
            flags=_IFA_F_NOPREFIXROUTE,
            IFA_PROTO=ADDRESS_PROTOCOL,  # ours, wherever it lies (kernels before 6.1 drop it)
        )

    @staticmethod
    def _read_rules(ipr: IPRoute) -> dict[int, tuple[set[PodRule], bool]]:
        """Per family: our rules, and whether the kernel's own local rule is there."""
        found: dict[int, tuple[set[PodRule], bool]] = {}
        for version, family in _FAMILY.items():
            ours: set[PodRule] = set()
            kernel_local = False
            for msg in ipr.get_rules(family=family):
                rule = _rule_of(version, msg)
                if rule is None:
                    continue
                if msg.get_attr("FRA_PROTOCOL") == RULE_PROTOCOL:
                    ours.add(rule)
                elif rule == KERNEL_LOCAL_RULES[version]:
                    kernel_local = True
            found[version] = (ours, kernel_local)
        return found

    def _write_rules(
        self,
        ipr: IPRoute,
        present: dict[int, tuple[set[PodRule], bool]],
        wanted: frozenset[PodRule],
    ) -> tuple[tuple[PodRule, ...], tuple[PodRule, ...]]:
        added: list[PodRule] = []
        removed: list[PodRule] = []
        for version, (ours, kernel_local) in present.items():
            mine = {r for r in wanted if r.family == version}
            moved = PodRule(version, LOCAL_PRIORITY, LOCAL_TABLE) in ours
            # Never a moment without a local rule: ours goes in before the kernel's comes
            # out, and the kernel's comes back before ours goes.
            for rule in sorted(mine - ours, key=str):
                self._rule(ipr, "add", rule, RULE_PROTOCOL)
                added.append(rule)
            if mine and kernel_local:
                self._rule(ipr, "del", KERNEL_LOCAL_RULES[version])
                removed.append(KERNEL_LOCAL_RULES[version])
            if not mine and moved and not kernel_local:
                self._rule(ipr, "add", KERNEL_LOCAL_RULES[version], _RTPROT_KERNEL)
                added.append(KERNEL_LOCAL_RULES[version])
            for rule in sorted(ours - mine, key=str):
                self._rule(ipr, "del", rule, RULE_PROTOCOL)
                removed.append(rule)
        return tuple(added), tuple(removed)

    @staticmethod
    def _rule(ipr: IPRoute, command: str, rule: PodRule, protocol: int | None = None) -> None:
        spec: dict[str, object] = {
            "family": _FAMILY[rule.family],
            "priority": rule.priority,
            "table": rule.table,
        }
        if protocol is not None:
            spec["protocol"] = protocol
        if rule.destination is not None:
            spec.update(
                dst=str(rule.destination), dst_len=rule.destination.max_prefixlen, iifname="lo"
            )
        ipr.rule(command, **spec)

    @staticmethod
    def _sync_sysctls(interface: str, families: set[int], had: set[int]) -> tuple[str, ...]:
        """The hairpin's sysctls for the families the pod holds VIPs of; the kernel's
        defaults back for those it held (our rules say so) and holds no more. A pod that
        never held a VIP of a family is not touched: its settings are not ours."""
        values = {}
        for version, sysctls in _HAIRPIN_SYSCTLS.items():
            if version not in families | had:
                continue
            for name, (hairpin, default) in sysctls.items():
                # Device names may hold dots: ensure_sysctls takes "/"-separated names.
                values[name.format(interface)] = hairpin if version in families else default
        done = ensure_sysctls(None, values)
        if done.refused:
            raise PodProgrammingError(f"pod sysctls refused: {'; '.join(done.refused)}")
        return done.changed

    def _sync_rewrites(self, text: str) -> bool:
        # A child forked from this thread inherits its network namespace: nft runs in the pod.
        current = subprocess.run(
            [NFT, "list", "table", "inet", TABLE], capture_output=True, text=True, check=False
        )
        exists = current.returncode == 0
        if text and exists and _digest(current.stdout) == _digest(text):
            return False
        if not text and not exists:
            return False
        # One transaction: create-if-missing, delete, re-create. No window without rules.
        script = text or f"table inet {TABLE}\ndelete table inet {TABLE}\n"
        done = subprocess.run([NFT, "-f", "-"], input=script, capture_output=True, text=True)
        if done.returncode != 0:
            raise PodProgrammingError(f"nft in the pod failed: {done.stderr.strip()}")
        return True
