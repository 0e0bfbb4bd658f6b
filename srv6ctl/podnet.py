"""Inside a backend pod: its service ClusterIPs on loopback, and stateless port rewrites.

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

Ownership: loopback addresses inside the configured service CIDRs are ours (nothing else
puts a ClusterIP on a pod's `lo`); the rewrites live in one nftables table,
`inet srv6ctl_svc`, replaced atomically in one `nft -f` transaction and tagged with a
digest of its content so an unchanged pod costs a read, not a write.
"""

from __future__ import annotations

import hashlib
import ipaddress
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass

from pyroute2 import IPRoute

from policies.model import Frontend, Protocol
from policies.nftables import port_rewrite_ruleset
from srv6ctl.dataplane.model import IPAddress, IPNetwork, PodAttachment
from srv6ctl.dataplane.nsenter import run_in_netns

TABLE = "srv6ctl_svc"
NFT = "nft"


class PodProgrammingError(RuntimeError):
    pass


@dataclass(frozen=True)
class PodSync:
    """What one sync changed in a pod (for logs, telemetry and tests)."""

    added: tuple[IPAddress, ...] = ()
    removed: tuple[IPAddress, ...] = ()
    rewrites_replaced: bool = False

    @property
    def writes(self) -> int:
        return len(self.added) + len(self.removed) + int(self.rewrites_replaced)


def frontends(attachment: PodAttachment) -> tuple[Frontend, ...]:
    """The pod's port maps as the policy model's frontends (numeric targets)."""
    return tuple(
        Frontend(address, Protocol(protocol), port, target)
        for protocol, address, port, target in attachment.port_maps
    )


def ruleset(attachment: PodAttachment) -> str:
    """The transaction (re)installing the `inet srv6ctl_svc` table for a pod's port maps
    ('' when it needs none), tagged with a digest of its content."""
    text = port_rewrite_ruleset(frontends(attachment), TABLE)
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


class PodNetworkProgrammer:
    """Makes a pod's namespace hold exactly what its `PodAttachment` says."""

    def __init__(self, service_cidrs: Iterable[IPNetwork]) -> None:
        self.service_cidrs = tuple(service_cidrs)

    def _ours(self, address: IPAddress) -> bool:
        return any(address in cidr for cidr in self.service_cidrs)

    def sync(self, attachment: PodAttachment) -> PodSync:
        return run_in_netns(attachment.netns, lambda: self._sync_here(attachment))

    def clear(self, netns: str) -> PodSync:
        """Remove everything of ours from a pod (it stopped being an endpoint, or left)."""
        empty = PodAttachment(interface="", pod="", netns=netns)
        return self.sync(empty)

    def _sync_here(self, attachment: PodAttachment) -> PodSync:
        wanted = set(attachment.service_addresses)
        with IPRoute() as ipr:
            lo = ipr.link_lookup(ifname="lo")[0]
            present = set()
            for msg in ipr.get_addr(index=lo):
                address = ipaddress.ip_address(msg.get_attr("IFA_ADDRESS"))
                if self._ours(address):
                    present.add(address)
            added = sorted(wanted - present, key=str)
            removed = sorted(present - wanted, key=str)
            for address in added:
                ipr.addr("add", index=lo, address=str(address), prefixlen=address.max_prefixlen)
            for address in removed:
                ipr.addr("del", index=lo, address=str(address), prefixlen=address.max_prefixlen)
        replaced = self._sync_rewrites(ruleset(attachment))
        return PodSync(tuple(added), tuple(removed), replaced)

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
