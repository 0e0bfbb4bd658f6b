"""UDP conntrack entries a pod's NAT no longer makes, forgotten when its NAT changes.

A pod DNATs in its own namespace (srv6ctl/podnet.py): what arrives at a NodePort to its
target port, UDP to its VIPs to its own address, and its own connections to Services with
endpoints outside the cluster to one of them. For UDP the conntrack entry outlives any
change: a client that keeps sending from one source port (a resolver, a metrics agent,
upstream e2e's "cleanup conntrack entries when UDP service target port changes") keeps
its entry alive and goes on reaching the old target for as long as it sends. kube-proxy
deletes such entries when a Service's endpoints or ports change; here, after the pod's
table is replaced, every UDP entry whose DNAT the new table would not make is deleted —
judged from the entries themselves, so an agent restarted in between misses none. TCP
entries stay: a connection to a target that is gone fails on its own, and one that still
works must not be cut.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass

from pyroute2 import Conntrack
from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple

from srv6ctl.dataplane.model import IPAddress, PodAttachment

_IPS_DST_NAT = 0x20  # include/uapi/linux/netfilter/nf_conntrack_common.h


@dataclass(frozen=True)
class UdpNat:
    """The UDP DNATs a pod's table makes: (address, port) it answers for → the targets."""

    translations: dict[tuple[IPAddress, int], frozenset[tuple[IPAddress, int]]]
    vips: dict[IPAddress, IPAddress]  # VIP → the pod's own address (the port kept)
    node_ports: dict[tuple[int, int], tuple[IPAddress, int]]  # (version, port) → target

    @classmethod
    def of(cls, attachment: PodAttachment) -> UdpNat:
        own = attachment.own_addresses()
        return cls(
            translations={
                (t.address, t.port): frozenset((ipaddress.ip_address(a), p) for a, p in t.targets)
                for t in attachment.translations
                if t.protocol == "UDP"
            },
            vips={v: own[v.version] for v in attachment.udp_addresses if v.version in own},
            node_ports={
                (version, port): (own[version], target)
                for protocol, version, port, target in attachment.node_ports
                if protocol == "UDP" and version in own
            },
        )

    def makes(self, original: tuple[IPAddress, int], target: tuple[IPAddress, int]) -> bool:
        """Whether this table DNATs a datagram for `original` to `target`."""
        address, port = original
        if original in self.translations:
            return target in self.translations[original]
        if address in self.vips:
            return target == (self.vips[address], port)
        return self.node_ports.get((address.version, port)) == target


def forget_stale(attachment: PodAttachment) -> int:
    """Delete, in this thread's network namespace (the pod's), the DNATed UDP entries the
    pod's NAT no longer makes; how many."""
    nat = UdpNat.of(attachment)
    forgotten = 0
    for family in (socket.AF_INET6, socket.AF_INET):  # a socket dumps one family
        conntrack = Conntrack(nfgen_family=family)
        try:
            found = []
            udp = NFCTAttrTuple(family=family, proto=socket.IPPROTO_UDP)
            for entry in conntrack.dump_entries(tuple_orig=udp):
                if not entry.status & _IPS_DST_NAT:
                    continue
                orig, reply = entry.tuple_orig, entry.tuple_reply
                original = (ipaddress.ip_address(orig.daddr), int(orig.dport))
                target = (ipaddress.ip_address(reply.saddr), int(reply.sport))
                if not nat.makes(original, target):
                    found.append(entry)
            for entry in found:
                conntrack.delete(entry)
            forgotten += len(found)
        finally:
            conntrack.close()
    return forgotten


__all__ = ["UdpNat", "forget_stale"]
