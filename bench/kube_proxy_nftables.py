"""kube-proxy's nftables mode for the bench's Services: its first full sync as `nft -f` input.

The structure follows kubernetes/kubernetes pkg/proxy/nftables/proxier.go (read at commit
b0f823e6ccd8a10b3893fc75011b9981af39285c): `setupNFTables` (the table, its base chains, the
jump rules, masquerading, the `cluster-ips` set, the `nodeport-ips` set, the no-endpoint,
firewall, service-IP and NodePort maps), then `syncProxyRules` per service port (the
`service-`, `external-` and `endpoint-` chains and their elements and rules) and
`writeServiceToEndpointRules` (the `numgen random mod N vmap`). The lines are those
knftables sends `nft -f -` for one transaction: one operation per line, each chain added
and then flushed, each element added on its own.

What the bench's Services are, in kube-proxy's terms: IPv6 single-stack (table `ip6
kube-proxy` only), one TCP port named `http`, every endpoint ready and serving, traffic
policies `Cluster`, no session affinity, no externalIPs, no loadBalancerSourceRanges (so
`firewall-ips` stays empty and there are no `firewall-` chains), `--masquerade-all` off
with a cluster-CIDR local detector (`ip6 saddr != POD_CIDR`), the default masquerade bit
14, `--nodeport-addresses primary` (the nftables mode's default: `nodeport-ips` holds the
node's IP) and one ServiceCIDR. Not written: kube-proxy's `nft list chains` before the
transaction (to find stale chains: there are none in a fresh namespace) and conntrack
cleanup after it.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

FAMILY = "ip6"
TABLE = "kube-proxy"
PREFIX = f"{FAMILY} {TABLE}"
MASQUERADE_MARK = f"{1 << 14:#08x}"  # proxier.go: fmt.Sprintf("%#08x", 1<<masqueradeBit)
PROTOCOL = "tcp"
PORT_NAME = "http"

# (name, type, hook, priority): proxier.go's nftablesBaseChains. knftables writes their
# priorities as numbers (nft 1.0.6 takes `dstnat` in the prerouting hook only):
# dstnat - 10 = -110, dstnat + 10 = -90, dstnat = -100, srcnat = 100.
BASE_CHAINS = (
    ("filter-prerouting", "filter", "prerouting", -110),
    ("filter-input", "filter", "input", -110),
    ("filter-forward", "filter", "forward", -110),
    ("filter-output", "filter", "output", -110),
    ("filter-output-post-dnat", "filter", "output", -90),
    ("nat-prerouting", "nat", "prerouting", -100),
    ("nat-output", "nat", "output", -100),
    ("nat-postrouting", "nat", "postrouting", 100),
)

# (chain jumped to, base chain, match): proxier.go's nftablesJumpChains.
JUMP_CHAINS = (
    ("nodeport-endpoints-check", "filter-input", "ct state new"),
    ("service-endpoints-check", "filter-input", "ct state new"),
    ("service-endpoints-check", "filter-forward", "ct state new"),
    ("service-endpoints-check", "filter-output", "ct state new"),
    ("firewall-check", "filter-prerouting", "ct state new"),
    ("firewall-check", "filter-output", "ct state new"),
    ("services", "nat-output", ""),
    ("services", "nat-prerouting", ""),
    ("masquerading", "nat-postrouting", ""),
    ("cluster-ips-check", "filter-forward", "ct state new"),
    ("cluster-ips-check", "filter-output-post-dnat", "ct state new"),
)

ADDRESS_KEY = "ipv6_addr . inet_proto . inet_service : verdict"
PORT_KEY = "inet_proto . inet_service : verdict"
# (name, type, comment) in the order setupNFTables adds them; all flushed at its end.
NO_ENDPOINTS = "vmap to drop or reject packets to service"
MAPS = (
    ("no-endpoint-services", ADDRESS_KEY, f"{NO_ENDPOINTS}s with no endpoints"),
    ("no-endpoint-nodeports", PORT_KEY, f"{NO_ENDPOINTS} nodeports with no endpoints"),
    ("firewall-ips", ADDRESS_KEY, "destinations that are subject to LoadBalancerSourceRanges"),
    ("service-ips", ADDRESS_KEY, "ClusterIP, ExternalIP and LoadBalancer IP traffic"),
    ("service-nodeports", PORT_KEY, "NodePort traffic"),
)


class Endpoint(Protocol):
    @property
    def address(self) -> str: ...


class ServicePort(Protocol):
    @property
    def name(self) -> str: ...  # "namespace/name"
    @property
    def cluster_ip(self) -> str: ...
    @property
    def port(self) -> int: ...
    @property
    def target_port(self) -> int: ...
    @property
    def backends(self) -> Sequence[Endpoint]: ...
    @property
    def node_port(self) -> int | None: ...
    @property
    def lb_ip(self) -> str | None: ...


@dataclass
class Ruleset:
    """`nft -f` input and what it should leave in the table once loaded."""

    lines: list[str] = field(default_factory=list)
    chains: set[str] = field(default_factory=set)
    rules: int = 0
    elements: dict[str, int] = field(default_factory=dict)  # set or map -> elements

    @property
    def text(self) -> str:
        return "\n".join(self.lines) + "\n"

    def expected(self) -> dict[str, int]:
        return {"chains": len(self.chains), "rules": self.rules, **self.elements}

    def ensure_chain(self, chain: str) -> None:
        # proxier.go ensureChain: add and flush, once per transaction.
        if chain not in self.chains:
            self.chains.add(chain)
            self.lines += [f"add chain {PREFIX} {chain}", f"flush chain {PREFIX} {chain}"]

    def rule(self, chain: str, rule: str, comment: str | None = None) -> None:
        note = f' comment "{comment}"' if comment else ""
        self.lines.append(f"add rule {PREFIX} {chain} {rule}{note}")
        self.rules += 1

    def container(self, kind: str, name: str, type_: str, comment: str) -> None:
        self.lines.append(f'add {kind} {PREFIX} {name} {{ type {type_} ; comment "{comment}" ; }}')
        self.elements[name] = 0

    def element(self, container: str, key: str, value: str | None = None) -> None:
        item = f"{key} : {value}" if value else key
        self.lines.append(f"add element {PREFIX} {container} {{ {item} }}")
        self.elements[container] += 1


def name_base(name: str) -> str:
    # proxier.go hashAndTruncate: base32(sha256(name))[:8] + "-" + name (never truncated here)
    digest = base64.b32encode(hashlib.sha256(name.encode()).digest()).decode()
    return f"{digest[:8]}-{name}"


def port_chain_base(svc: ServicePort) -> str:
    return name_base(f"{svc.name}/{PROTOCOL}/{PORT_NAME}")  # ns/name/protocol/portName


def endpoint_chain(svc: ServicePort, endpoint: Endpoint) -> str:
    address = endpoint.address.replace(":", ".")  # chain names allow no colons
    base = f"{svc.name}/{PROTOCOL}/{PORT_NAME}__{address}/{svc.target_port}"
    return f"endpoint-{name_base(base)}"


def setup(out: Ruleset, service_cidr: str, node_ip: str) -> None:
    """proxier.go setupNFTables, for a first sync of the IPv6 proxier."""
    out.lines.append(f'add table {PREFIX} {{ comment "rules for kube-proxy" ; }}')
    for name, *_ in BASE_CHAINS:  # the first sync re-creates base chains: add+delete
        out.lines += [f"add chain {PREFIX} {name}", f"delete chain {PREFIX} {name}"]
    for name, type_, hook, priority in BASE_CHAINS:
        out.lines.append(
            f"add chain {PREFIX} {name} {{ type {type_} hook {hook} priority {priority} ; }}"
        )
        out.lines.append(f"flush chain {PREFIX} {name}")
        out.chains.add(name)
    for target, base, match in JUMP_CHAINS:
        out.ensure_chain(target)
        out.rule(base, f"{match} jump {target}".strip())
    for chain in ("services", "cluster-ips-check", "masquerading", "mark-for-masquerade"):
        out.ensure_chain(chain)
    out.rule("mark-for-masquerade", f"mark set mark or {MASQUERADE_MARK}")
    out.rule("masquerading", f"mark and {MASQUERADE_MARK} == 0 return")
    out.rule("masquerading", f"mark set mark xor {MASQUERADE_MARK}")
    out.rule("masquerading", "masquerade fully-random")

    out.container("set", "cluster-ips", "ipv6_addr", "Active ClusterIPs")
    out.rule(
        "cluster-ips-check",
        f"{FAMILY} daddr @cluster-ips reject",
        "Reject traffic to invalid ports of ClusterIPs",
    )
    out.rule(
        "cluster-ips-check",
        f"{FAMILY} daddr {{ {service_cidr} }} drop",
        "Drop traffic to unallocated ClusterIPs",
    )
    out.container("set", "nodeport-ips", "ipv6_addr", "IPs that accept NodePort traffic")
    out.lines.append(f"flush set {PREFIX} nodeport-ips")
    out.element("nodeport-ips", node_ip)

    for name, type_, comment in MAPS[:2]:
        out.container("map", name, type_, comment)
    out.lines.append(
        f"add chain {PREFIX} reject-chain"
        ' { comment "helper for @no-endpoint-services / @no-endpoint-nodeports" ; }'
    )
    out.lines.append(f"flush chain {PREFIX} reject-chain")
    out.chains.add("reject-chain")
    out.rule("reject-chain", "reject")
    out.rule(
        "service-endpoints-check",
        f"{FAMILY} daddr . meta l4proto . th dport vmap @no-endpoint-services",
    )
    out.rule(
        "nodeport-endpoints-check",
        f"{FAMILY} daddr @nodeport-ips meta l4proto . th dport vmap @no-endpoint-nodeports",
    )
    out.container("map", *MAPS[2])
    out.ensure_chain("firewall-check")
    out.rule("firewall-check", f"{FAMILY} daddr . meta l4proto . th dport vmap @firewall-ips")
    for name, type_, comment in MAPS[3:]:
        out.container("map", name, type_, comment)
    out.rule("services", f"{FAMILY} daddr . meta l4proto . th dport vmap @service-ips")
    out.rule(
        "services",
        f"{FAMILY} daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports",
    )
    out.lines.append(f"flush set {PREFIX} cluster-ips")
    for name, *_ in (MAPS[3], MAPS[2], MAPS[0], MAPS[1], MAPS[4]):
        out.lines.append(f"flush map {PREFIX} {name}")


def service(out: Ruleset, svc: ServicePort, pod_cidr: str) -> None:
    """proxier.go syncProxyRules for one service port whose endpoints are all ready."""
    base = port_chain_base(svc)
    cluster_chain = f"service-{base}"
    external_chain = f"external-{base}"
    external = svc.node_port is not None or svc.lb_ip is not None
    endpoints = [endpoint_chain(svc, pod) for pod in svc.backends]
    for chain in endpoints:
        out.ensure_chain(chain)
    out.ensure_chain(cluster_chain)
    if external:
        out.ensure_chain(external_chain)

    out.element("cluster-ips", svc.cluster_ip)
    dispatch = f"{svc.cluster_ip} . {PROTOCOL} . {svc.port}"
    out.element("service-ips", dispatch, f"goto {cluster_chain}")
    if svc.lb_ip is not None:
        out.element(
            "service-ips", f"{svc.lb_ip} . {PROTOCOL} . {svc.port}", f"goto {external_chain}"
        )
    if svc.node_port is not None:
        out.element("service-nodeports", f"{PROTOCOL} . {svc.node_port}", f"goto {external_chain}")

    # Internal traffic: masquerade what does not come from a pod (the local detector).
    out.rule(
        cluster_chain,
        f"{FAMILY} daddr {svc.cluster_ip} {PROTOCOL} dport {svc.port}"
        f" {FAMILY} saddr != {pod_cidr} jump mark-for-masquerade",
    )
    if external:  # externalTrafficPolicy Cluster: masquerade, then the cluster chain
        out.rule(external_chain, "jump mark-for-masquerade")
        out.rule(external_chain, f"goto {cluster_chain}")
    # writeServiceToEndpointRules
    choices = " , ".join(f"{i} : goto {chain}" for i, chain in enumerate(endpoints))
    out.rule(cluster_chain, f"numgen random mod {len(endpoints)} vmap {{ {choices} }}")
    for chain, pod in zip(endpoints, svc.backends, strict=True):
        out.rule(chain, f"{FAMILY} saddr {pod.address} jump mark-for-masquerade")  # hairpin
        out.rule(chain, f"meta l4proto {PROTOCOL} dnat to [{pod.address}]:{svc.target_port}")


def ruleset(
    services: Sequence[ServicePort], pod_cidr: str, service_cidr: str, node_ip: str
) -> Ruleset:
    """The transaction kube-proxy's first full sync sends `nft -f -` for `services`."""
    out = Ruleset()
    setup(out, service_cidr, node_ip)
    for svc in services:
        service(out, svc, pod_cidr)
    return out


def loaded_counts(listing: dict[str, object]) -> dict[str, int]:
    """Chains, rules and each set's or map's elements in our table, from `nft -j list ruleset`."""
    counts: dict[str, int] = {"chains": 0, "rules": 0}
    objects = listing.get("nftables")
    for item in objects if isinstance(objects, list) else []:
        ((kind, body),) = item.items()
        if not isinstance(body, dict) or body.get("table") != TABLE:
            continue
        if body.get("family") != FAMILY:
            continue
        if kind == "chain":
            counts["chains"] += 1
        elif kind == "rule":
            counts["rules"] += 1
        elif kind in ("set", "map"):
            counts[str(body["name"])] = len(body.get("elem", []))
    return counts
