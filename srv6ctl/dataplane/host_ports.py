"""The node's own stateless port rewrites (`PortMap`), as an nftables table (pure).

A Service whose endpoint is the node's own stack (a host-network endpoint: kube-apiserver
behind the `kubernetes` Service, 443 → 6443) gets its ClusterIP delivered locally by
End.DT6 `L::7`; the port must still become the target port, as a backend pod does it in
its own namespace (`policies.nftables.port_rewrite_ruleset`, the same rules). Here the
inbound rewrite hooks `input`: a packet End.DT6 delivers locally does not pass
`prerouting` (unless `net.netfilter.nf_hooks_lwtunnel` is set). Replies get their port
back at `output`: one to a pod on another node is encapsulated by its route (seg6 on
output), so `postrouting` would only see the outer packet. No state: the rewrite is a
map lookup per packet.

The same table translates the node's own connections to Services whose endpoints are
outside the cluster (`Translation`, as client pods do in theirs: a DNAT at output, its
state in the node's conntrack — the node's own connections are tracked there anyway).
A `Translation` without targets is refused (a TCP reset, else ICMP port unreachable) for
the node's own connections at output and, behind VPP (`refuse_inbound`), for what VPP
punts to the node's kernel at prerouting: external clients of an endpoint-less Service's
load balancer IPs get *connection refused*, as from kube-proxy's REJECT, where VPP's
route alone would answer "administratively prohibited".

The table is rewritten whole when a rewrite or translation changes (one transaction; few
entries), and read back from its maps and chains on restart.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable

from policies.model import Frontend, Protocol
from policies.nftables import (
    ClientTranslation,
    parse_translations,
    port_rewrite_ruleset,
    removal_script,
)
from srv6ctl.dataplane.model import PortMap, Translation

TABLE = "srv6ctl_host_ports"  # `inet`, in the node's namespace


def script(
    port_maps: Iterable[PortMap],
    translations: Iterable[Translation] = (),
    refuse_inbound: bool = False,
) -> str:
    """The transaction that makes the table hold `port_maps` and `translations` (none:
    no table); `refuse_inbound`: those without targets refused at prerouting too (the
    kernel behind VPP's host interconnect)."""
    frontends = [Frontend(m.address, Protocol(m.protocol), m.port, m.target) for m in port_maps]
    text = port_rewrite_ruleset(
        frontends,
        TABLE,
        inbound_hook="input",
        outbound_hook="output",
        translations=[client_translation(t) for t in translations],
        refuse_inbound=refuse_inbound,
    )
    return text if text is not None else removal_script(TABLE)


def probe_script() -> str:
    """A table with one translation (two endpoints, an affinity set): what a kernel must
    load to translate the node's own connections (kernel_caps, vpp_host check it)."""
    targets = (
        (ipaddress.IPv6Address("fd00:5c::2"), 5432),
        (ipaddress.IPv6Address("fd00:5c::3"), 5432),
    )
    sample = Translation("TCP", ipaddress.IPv6Address("fd00:5c::1"), 5432, targets, 10)
    return script([], [sample])


def client_translation(t: Translation) -> ClientTranslation:
    """A `Translation` in the terms of the nftables rules (policies.nftables)."""
    targets = tuple((str(address), port) for address, port in t.targets)
    return ClientTranslation(Protocol(t.protocol), str(t.address), t.port, targets, t.affinity)


def parse_translations_listing(text: str) -> list[Translation]:
    """`nft -j list table inet TABLE` → the translations its chains make."""
    return [
        Translation(
            str(t.protocol),
            ipaddress.ip_address(t.address),
            t.port,
            tuple((ipaddress.ip_address(a), port) for a, port in t.targets),
            t.affinity,
        )
        for t in parse_translations(text)
    ]


def parse_listing(text: str) -> list[PortMap]:
    """`nft -j list table inet TABLE` → the rewrites its inbound maps hold."""
    out = []
    for item in json.loads(text).get("nftables", []) if text.strip() else []:
        entry = item.get("map")
        if entry is None or not str(entry.get("name", "")).startswith("in_"):
            continue
        _, proto, _ = str(entry["name"]).split("_")
        for key, target in entry.get("elem", []):
            address, port = key["concat"]
            protocol = proto.upper()
            out.append(PortMap(protocol, ipaddress.ip_address(address), int(port), int(target)))
    return out
