"""Connectivity through the lab: pod to pod, pod to service, with what each end saw.

- pod → pod on one node and across nodes (TCP and UDP, IPv6; IPv4 too in dual-stack):
  the right pod answers and saw the client's own address;
- pod → service over many flows (distinct source ports, from every client pod): every
  ready backend is reached, each one's share is within a statistical tolerance of its
  weight in the node's policy, the backend saw the client's real address (no NAT) and was
  reached at the ClusterIP on the targetPort (the pod's stateless rewrite), and the client
  saw the answer come from the ClusterIP and the service port;
- a backend reaching its own Service (issue 17): its connections spread over every
  backend, itself included, by the weights, with no NAT (its own address seen, the
  ClusterIP answering);
- port == targetPort (8081), UDP, the IPv4 ClusterIP in dual-stack: UDP reaches the
  backend at its own address (the pod DNATs UDP to its VIPs to itself, srv6ctl/podnet.py)
  and the client is answered from the ClusterIP and the service port;
- a service without endpoints is refused at once (connection refused, as kube-proxy
  refuses it: the client's own table answers with a TCP reset), not black-holed;
- flow affinity: a flow's backend is a function of its 5-tuple, and an established TCP
  connection keeps its backend through retransmission timeouts (Linux re-hashes a socket's
  flow hash on every RTO; a node that balanced on it would move the flow to a backend that
  answers with a reset — FINDINGS.md, finding 1).
"""

from __future__ import annotations

import errno
import functools
import json
import math
import os
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from srv6ctl.lab.objects import ECHO_PORT, HTTP_PORT, SERVICE_HTTP_PORT
from srv6ctl.observe.netinfo import sockets_in
from srv6ctl.verify.flows import Answer, answers, failures, tcp_flows, udp_flows
from srv6ctl.verify.report import Report
from srv6ctl.verify.topology import PodInfo, ServiceInfo, Topology

GROUP = "connectivity"
BUCKETS = 128  # the kernel backend's resilient-group size: weights are quantised to 1/128
SIGMAS = 4.0


def _spread_tolerance(flows: int, share: float) -> float:
    """How far a backend's count may be from `flows * share`: 4 standard deviations of a
    binomial draw plus one bucket's worth of the group's quantisation."""
    return SIGMAS * math.sqrt(flows * share * (1 - share)) + flows / BUCKETS


def _tcp_answers(pod: PodInfo, family: int, ip: Any, flows: int, found: Findings) -> Counter[str]:
    """`flows` new TCP connections from `pod` to the service address `ip` (its HTTP port),
    each answer checked into `found` (the pod's own address seen, answered from `ip`, the
    port rewritten); how many each backend answered."""
    src = str(pod.ipv6 if family == 6 else pod.ipv4)
    results = tcp_flows(pod.netns, ip, SERVICE_HTTP_PORT, flows)
    found.lost += [f"{pod.short}: {f.error}" for f in failures(results)]
    counts: Counter[str] = Counter()
    for answer in answers(results):
        counts[answer.pod] += 1
        found.add(answer, pod.short, src, str(ip), HTTP_PORT)
    return counts


class Connectivity:
    def __init__(self, topo: Topology, report: Report, flows: int) -> None:
        self.topo = topo
        self.report = report
        self.flows = flows
        self.clients = [p for p in topo.pods if p.role == "client"] or topo.pods

    def run(self) -> None:
        self.pod_to_pod()
        for service in self.topo.services:
            if service.host_endpoints:
                self.host_endpoint(service)
            elif service.outside_endpoints:
                for family in (6, 4):
                    if service.cluster_ip(family) is not None:
                        self.outside(service, family)
                        self.outside_from_hosts(service, family)
            elif service.backends and service.affinity:
                for family in (6, 4):
                    if service.cluster_ip(family) is not None:
                        self.affinity(service, family)
            elif service.backends:
                self.service(service, 6)
                self.hairpin(service, 6)
                if service.cluster_ipv4 is not None:
                    self.service(service, 4)
                    self.hairpin(service, 4)
            else:
                self.no_endpoints(service)
        web = next((s for s in self.topo.services if s.backends), None)
        if web is not None:
            self.five_tuple(web)
            for family in (6, 4):
                if web.cluster_ip(family) is not None:
                    self.host_network(web, family)

    # --- pod → pod -----------------------------------------------------------------------------

    def pod_to_pod(self) -> None:
        topo = self.topo
        for family in (6, 4):
            pods = [p for p in topo.pods if (p.ipv6 if family == 6 else p.ipv4)]
            if not pods:
                continue
            same: list[tuple[PodInfo, PodInfo]] = []
            across: list[tuple[PodInfo, PodInfo]] = []
            for a in pods:
                for b in pods:
                    if a is b:
                        continue
                    (same if a.node == b.node else across).append((a, b))
            for label, pairs in (("same node", same), ("across nodes", across)):
                if not pairs:
                    self.report.skip(GROUP, f"pod→pod {label} (IPv{family})", "no such pair")
                    continue
                self._pairs(f"pod→pod {label} (IPv{family})", pairs, family)

    def _pairs(self, name: str, pairs: list[tuple[PodInfo, PodInfo]], family: int) -> None:
        # One pair per (client node, server node): enough to cover every path once.
        chosen: dict[tuple[str, str], tuple[PodInfo, PodInfo]] = {}
        for a, b in pairs:
            chosen.setdefault((a.node, b.node), (a, b))
        problems, flows = [], 0
        for a, b in chosen.values():
            src = a.ipv6 if family == 6 else a.ipv4
            dst = b.ipv6 if family == 6 else b.ipv4
            for proto, run in (("tcp", tcp_flows), ("udp", udp_flows)):
                for result in run(a.netns, dst, HTTP_PORT):
                    flows += 1
                    if not isinstance(result, Answer):
                        problems.append(f"{a.short}→{b.short} {proto}: {result.error}")
                    elif result.pod != b.short:
                        problems.append(f"{a.short}→{b.short} {proto}: {result.pod} answered")
                    elif result.peer != str(src):
                        problems.append(f"{a.short}→{b.short} {proto}: seen from {result.peer}")
        paths = ", ".join(sorted(f"{x}→{y}" for x, y in chosen))
        if problems:
            self.report.add(GROUP, name, False, "; ".join(problems[:3]))
        else:
            self.report.add(
                GROUP, name, True, f"{flows} flows over {paths}: right pod, real source"
            )

    # --- pod → service -------------------------------------------------------------------------

    def _weights(self, service: ServiceInfo, family: int) -> dict[str, dict[str, float]]:
        """Per client node, each backend pod's expected share (its weight / the sum)."""
        shares: dict[str, dict[str, float]] = {}
        for node in self.topo.nodes:
            policy = self.topo.policy(node.name, service.name, family)
            if policy is None:
                continue
            total = sum(sl.weight for sl in policy.segment_lists)
            node_shares: dict[str, float] = {}
            for sl in policy.segment_lists:
                pod = self.topo.pod_of_sid(sl.segments[-1])
                name = pod.short if pod else str(sl.segments[-1])
                node_shares[name] = node_shares.get(name, 0.0) + sl.weight / total
            shares[node.name] = node_shares
        return shares

    def service(self, service: ServiceInfo, family: int) -> None:
        ip = service.cluster_ip(family)
        assert ip is not None
        label = (
            f"service {service.name} [{ip}]:{SERVICE_HTTP_PORT}"
            if family == 6
            else (f"service {service.name} {ip}:{SERVICE_HTTP_PORT}")
        )
        shares = self._weights(service, family)
        backends = {b.split("/", 1)[-1] for b in service.backends}
        clients = [c for c in self.clients if (c.ipv6 if family == 6 else c.ipv4)]
        per_client = max(1, math.ceil(self.flows / len(clients)))
        counts: Counter[str] = Counter()
        expected: dict[str, float] = {}
        found = Findings(own=own_addresses(self.topo))
        total = 0
        started = time.monotonic()
        for client in clients:
            src = str(client.ipv6 if family == 6 else client.ipv4)
            results = tcp_flows(client.netns, ip, SERVICE_HTTP_PORT, per_client)
            found.lost += [f"{client.short}: {f.error}" for f in failures(results)]
            for answer in answers(results):
                total += 1
                counts[answer.pod] += 1
                for name, share in shares.get(client.node, {}).items():
                    expected[name] = expected.get(name, 0.0) + share
                found.add(answer, client.short, src, str(ip), HTTP_PORT)
        seconds = time.monotonic() - started
        key = f"v{family}"
        self.report.figures[f"service_flows_{key}"] = total
        self.report.figures[f"service_flows_per_second_{key}"] = round(total / seconds, 1)
        self.report.figures[f"service_spread_{key}"] = dict(sorted(counts.items()))
        self.report.add(
            GROUP,
            f"{label}: backend saw the client's own address (no NAT)",
            not found.nat and total > 0,
            found.nat[0] if found.nat else f"{total} TCP flows from {len(clients)} client pods",
        )
        self.report.add(
            GROUP,
            f"{label}: answered from the ClusterIP; port {SERVICE_HTTP_PORT}→{HTTP_PORT} "
            "rewritten in the pod",
            not found.rewrite and total > 0,
            found.rewrite[0]
            if found.rewrite
            else f"every backend was reached at {ip} port {HTTP_PORT}; "
            f"the client saw {ip} port {SERVICE_HTTP_PORT} answer",
        )
        lost = found.lost
        missing = sorted(backends - set(counts))
        strangers = sorted(set(counts) - backends)
        spread_problems = []
        deviations = {}
        for name in sorted(backends | set(counts)):
            want = expected.get(name, 0.0)
            share = want / total if total else 0.0
            tolerance = _spread_tolerance(total, share)
            deviation = counts[name] - want
            deviations[name] = round(deviation / max(tolerance, 1e-9), 2)
            if abs(deviation) > tolerance:
                spread_problems.append(
                    f"{name}: {counts[name]} flows, expected {want:.0f}±{tolerance:.0f}"
                )
        ok = not (lost or missing or strangers or spread_problems) and total >= self.flows * 0.9
        detail = (
            f"{total} flows: "
            + ", ".join(f"{n} {counts[n]} (≈{expected[n]:.0f})" for n in sorted(expected))
            + " — every ready backend reached, within tolerance of the weights"
        )
        if not ok:
            detail = (
                "; ".join(
                    [*(lost[:2]), *(f"{m} never reached" for m in missing)]
                    + [f"{s} is not a backend" for s in strangers]
                    + spread_problems
                )
                or f"only {total} of {self.flows} flows answered"
            )
        self.report.add(GROUP, f"{label}: spread over the backends by weight", ok, detail)
        self._udp(service, family, clients)
        self._same_port(service, family, clients)

    def host_network(self, service: ServiceInfo, family: int, flows: int = 20) -> None:
        """A host-network client (the node's own namespace: kubelet probes, hostNetwork
        pods), unbound, reaches the Service from every node, its connections spread over
        the backends, its own node's backends included:
        those it reaches through the host loop (model.HOST_LOOP_DEVICE), since a SID acts
        only on packets that come in; on a VPP node through the host interconnect
        (dataplane/vpp_host.py), into VPP's steering like a pod's packets."""
        ip = service.cluster_ip(family)
        label = f"host-network clients reach {service.name} from every node (IPv{family})"
        if ip is None:
            self.report.skip(GROUP, label, f"{service.name} has no IPv{family} ClusterIP")
            return
        names = {b.split("/", 1)[-1] for b in service.backends}
        problems: list[str] = []
        shown: list[str] = []
        for node in self.topo.nodes:
            if node.netns is None:
                continue
            # An unbound client, as kubelet's probes are: steered on output, the route was
            # looked up before the ephemeral port was picked, and all its connections took
            # one backend; the host loop (VPP: the interconnect) has them hashed on input,
            # ports known (README, "Host-network clients").
            results = tcp_flows(node.netns, ip, SERVICE_HTTP_PORT, flows)
            problems += [f"{node.name}: lost: {f.error}" for f in failures(results)]
            counts = Counter(a.pod for a in answers(results))
            here = {p.short for p in self.topo.pods_on(node.name) if p.short in names}
            problems += [
                f"{node.name}: its own {n} never reached" for n in sorted(here - set(counts))
            ]
            if len(names) > 1 and len(counts) == 1:
                problems.append(f"{node.name}: all {flows} connections took one backend")
            shown.append(
                f"{node.name}: " + ", ".join(f"{n} {c}" for n, c in sorted(counts.items()))
            )
        self.report.add(GROUP, label, not problems, "; ".join(problems[:3]) or "; ".join(shown))

    def hairpin(self, service: ServiceInfo, family: int, flows: int = 60) -> None:
        """A backend's own connections to its Service (issue 17: etcd, Cassandra seeds,
        Kafka call their own Service) are balanced like anyone's, over every backend and
        itself among them, by the weights of its node's policy: the pod's hairpin rules
        (srv6ctl/podnet.py) send them out through the node instead of to its loopback."""
        ip = service.cluster_ip(family)
        names = set(service.backends)
        backend = next(
            (p for p in self.topo.pods if p.name in names and (p.ipv6 if family == 6 else p.ipv4)),
            None,
        )
        label = f"a backend reaching its own Service {service.name} spreads over all backends"
        label += f" (IPv{family})"
        if ip is None or backend is None:
            self.report.skip(GROUP, label, "no backend pod of that family")
            return
        src = str(backend.ipv6 if family == 6 else backend.ipv4)
        found = Findings(own=own_addresses(self.topo))
        counts = _tcp_answers(backend, family, ip, flows, found)
        total = sum(counts.values())
        shares = self._weights(service, family).get(backend.node, {})
        self.report.figures[f"hairpin_spread_v{family}"] = {
            "from": backend.short,
            **dict(sorted(counts.items())),
        }
        problems = [*found.all]
        problems += [f"{n} never reached" for n in sorted(shares) if not counts[n]]
        problems += [f"{n} is not a backend" for n in sorted(set(counts) - set(shares))]
        for name, share in sorted(shares.items()):
            tolerance = _spread_tolerance(total, share)
            if abs(counts[name] - total * share) > tolerance:
                problems.append(
                    f"{name}: {counts[name]} flows, expected {total * share:.0f}±{tolerance:.0f}"
                )
        spread = ", ".join(f"{n} {counts[n]} (≈{total * shares[n]:.0f})" for n in sorted(shares))
        self.report.add(
            GROUP,
            label,
            not problems and total == flows and backend.short in counts,
            "; ".join(problems[:3])
            if problems
            else f"{flows} connections from {backend.short} to {ip}:{SERVICE_HTTP_PORT}: {spread}"
            f" — itself included, each saw {src} and answered from the ClusterIP",
        )

    def host_endpoint(self, service: ServiceInfo, flows: int = 8) -> None:
        """A Service whose endpoint is a node's own stack, as `kubernetes` is kube-apiserver
        on a control-plane node: every client pod reaches it through the ClusterIP, the
        node's stack saw the pod's own address and answered from the ClusterIP, and the
        service port was rewritten to the endpoint's by that node (`PortMap`)."""
        ip = service.cluster_ipv6
        hosts = {f"{name}-host" for name in service.host_endpoints}
        label = (
            f"pods reach {service.name} [{ip}]:{SERVICE_HTTP_PORT}, served by "
            f"{', '.join(service.host_endpoints)}'s own stack (port rewritten there, no NAT)"
        )
        found, total = Findings(own=own_addresses(self.topo)), 0
        for client in self.clients:
            if client.ipv6 is None:
                continue
            counts = _tcp_answers(client, 6, ip, flows, found)
            total += sum(counts.values())
            found.lost += [f"{client.short}: answered by {p}" for p in sorted(set(counts) - hosts)]
        problems = found.all
        self.report.add(
            GROUP,
            label,
            not problems and total > 0,
            "; ".join(problems[:3])
            or f"{total} TCP flows from {len(self.clients)} client pods: the node saw each "
            f"pod's own address at {ip} port {HTTP_PORT}, the pods saw {ip} port "
            f"{SERVICE_HTTP_PORT} answer",
        )

    def outside(self, service: ServiceInfo, family: int, flows: int = 8) -> None:
        """A Service whose endpoint is outside the cluster (neither pod nor node: here the
        probe's server): each client pod translates its own connections (DNAT in its own
        namespace, model.Translation), so the endpoint saw the pod's own address — no
        SNAT anywhere — and the pod saw the ClusterIP and service port answer."""
        ip = service.cluster_ip(family)
        ends = {str(a) for a in service.outside_endpoints if a.version == family}
        label = (
            f"pods reach {service.name} [{ip}]:{SERVICE_HTTP_PORT}, whose endpoint "
            f"{', '.join(sorted(ends))} is outside the cluster (translated in each pod)"
        )
        clients = [c for c in self.clients if (c.ipv6 if family == 6 else c.ipv4)]
        if not clients or not ends:
            self.report.skip(GROUP, label, "no client or endpoint of that family")
            return
        problems: list[str] = []
        total = 0
        for client in clients:
            src = str(client.ipv6 if family == 6 else client.ipv4)
            results = tcp_flows(client.netns, ip, SERVICE_HTTP_PORT, flows)
            problems += [f"{client.short}: {f.error}" for f in failures(results)]
            for a in answers(results):
                total += 1
                if a.peer != src:
                    problems.append(f"{a.pod} saw {a.peer}, not {client.short}'s {src}")
                if a.local not in ends or a.local_port != HTTP_PORT:
                    problems.append(f"{client.short} reached {a.local}:{a.local_port}")
                if a.reply_from != (str(ip), SERVICE_HTTP_PORT):
                    problems.append(f"{client.short} was answered from {a.reply_from}")
        self.report.add(
            GROUP,
            label,
            not problems and total == flows * len(clients),
            "; ".join(problems[:3])
            or f"{total} TCP flows from {len(clients)} client pods: the endpoint saw each "
            f"pod's own address at port {HTTP_PORT}, the pods saw {ip} port "
            f"{SERVICE_HTTP_PORT} answer",
        )

    def outside_from_hosts(self, service: ServiceInfo, family: int) -> None:
        """The node's own stack (host-network clients) translates the same Service: the
        endpoint saw the node's InternalIP (on a VPP node the node's kernel translates,
        behind the host interconnect: dataplane/vpp_host.py)."""
        ip = service.cluster_ip(family)
        label = f"host-network clients reach {service.name}, outside the cluster (IPv{family})"
        problems: list[str] = []
        for node in self.topo.nodes:
            if node.netns is None:
                continue
            results = tcp_flows(node.netns, ip, SERVICE_HTTP_PORT, 4)
            problems += [f"{node.name}: {f.error}" for f in failures(results)]
            own = node.internal_ips.get(family)
            problems += [
                f"{node.name}: seen as {a.peer}" for a in answers(results) if a.peer != own
            ]
        self.report.add(
            GROUP,
            label,
            not problems,
            "; ".join(problems[:3]) or "each node's connections: the endpoint saw its own address",
        )

    def affinity(self, service: ServiceInfo, family: int, flows: int = 100) -> None:
        """sessionAffinity ClientIP: every client's new connections land on one backend
        (kernel: the node's nftables sets remember its choice; VPP: the policy hashes the
        source address alone), still without NAT."""
        ip = service.cluster_ip(family)
        label = (
            f"session affinity keeps each client of {service.name} on one backend "
            f"across {flows} new connections (IPv{family})"
        )
        clients = [c for c in self.clients if (c.ipv6 if family == 6 else c.ipv4)]
        if ip is None or not clients:
            self.report.skip(GROUP, label, "no client of that family")
            return
        found, shown = Findings(own=own_addresses(self.topo)), []
        problems: list[str] = []
        for client in clients:
            counts = _tcp_answers(client, family, ip, flows, found)
            if len(counts) != 1:
                problems.append(f"{client.short}: {dict(sorted(counts.items()))}")
            shown.append(f"{client.short} → {', '.join(f'{p} {n}' for p, n in counts.items())}")
        problems += found.all
        self.report.add(
            GROUP,
            label,
            not problems,
            "; ".join(problems[:3]) or "; ".join(shown) + ", each saw the client, no NAT",
        )

    def _udp(self, service: ServiceInfo, family: int, clients: list[PodInfo]) -> None:
        ip = service.cluster_ip(family)
        found, total, pods = Findings(own=own_addresses(self.topo)), 0, set()
        for client in clients:
            src = str(client.ipv6 if family == 6 else client.ipv4)
            results = udp_flows(client.netns, ip, SERVICE_HTTP_PORT, 8)
            found.lost += [f"{client.short}: {f.error}" for f in failures(results)]
            for answer in answers(results):
                total += 1
                pods.add(answer.pod)
                found.add(answer, client.short, src, str(ip), HTTP_PORT)
        problems = found.all
        self.report.add(
            GROUP,
            f"service {service.name} UDP v{family}: answers from {ip}:{SERVICE_HTTP_PORT}, no NAT",
            not problems and total > 0,
            problems[0] if problems else f"{total} datagrams answered by {len(pods)} backends",
        )

    def _same_port(self, service: ServiceInfo, family: int, clients: list[PodInfo]) -> None:
        ip = service.cluster_ip(family)
        found, total = Findings(own=own_addresses(self.topo)), 0
        for client in clients[:2]:
            src = str(client.ipv6 if family == 6 else client.ipv4)
            results = tcp_flows(client.netns, ip, ECHO_PORT, 6)
            found.lost += [f"{client.short}: {f.error}" for f in failures(results)]
            for answer in answers(results):
                total += 1
                found.add(answer, client.short, src, str(ip), ECHO_PORT)
        problems = found.all
        self.report.add(
            GROUP,
            f"service {service.name} v{family} port {ECHO_PORT} (port == targetPort)",
            not problems and total > 0,
            problems[0] if problems else f"{total} flows, no rewrite needed, none made",
        )

    def no_endpoints(self, service: ServiceInfo) -> None:
        for family in (6, 4):
            ip = service.cluster_ip(family)
            if ip is None or not self.clients:
                continue
            client = self.clients[0]
            if (client.ipv6 if family == 6 else client.ipv4) is None:
                continue
            kind = socket.AF_INET6 if family == 6 else socket.AF_INET
            (sock,) = sockets_in(client.netns, functools.partial(socket.socket, kind))
            started = time.monotonic()
            code = 0
            try:
                sock.settimeout(3.0)
                sock.connect((str(ip), SERVICE_HTTP_PORT))
            except OSError as err:
                code = err.errno or 0
            finally:
                sock.close()
            took = (time.monotonic() - started) * 1000
            # The client's own table refuses it with a TCP reset, as kube-proxy's REJECT
            # does (render: a Translation without targets): ECONNREFUSED at once. The
            # node's PROHIBIT route behind it would say EACCES (IPv4: EHOSTUNREACH), and
            # only with the SYN's retransmission, ~1 s later (an ICMP error met while
            # connect() holds the socket is kept as a soft error); a black hole would
            # time out.
            refused = code == errno.ECONNREFUSED
            outcome = errno.errorcode.get(code, "connected") if code else "connected"
            self.report.add(
                GROUP,
                f"service {service.name} without endpoints is refused (IPv{family})",
                refused and took < 2000,
                f"connect to {ip}: {outcome} ({os.strerror(code) if code else 'no error'}) "
                f"after {took:.0f} ms",
            )

    # --- flow affinity -------------------------------------------------------------------------

    def five_tuple(self, service: ServiceInfo) -> None:
        ip = service.cluster_ipv6
        client = self.clients[0]
        sports = [41000 + i for i in range(6)]
        placements: dict[int, set[str]] = {p: set() for p in sports}
        for _ in range(4):
            for answer in answers(tcp_flows(client.netns, ip, SERVICE_HTTP_PORT, sports=sports)):
                placements[answer.sport].add(answer.pod)
        moved = {p: sorted(b) for p, b in placements.items() if len(b) > 1}
        self.report.add(
            GROUP,
            "a TCP flow's backend is a function of its 5-tuple",
            not moved and all(placements.values()),
            f"{len(sports)} source ports, 4 connections each: one backend per port"
            if not moved
            else f"the same 5-tuple reached several backends: {moved} (FINDINGS.md, finding 1)",
        )

    def rto_affinity(self, service: ServiceInfo, connections: int = 8) -> None:
        """Established connections through 1.5 s of loss (several RTOs, each re-hashing the
        client socket's flow hash) must come back to the backend they started on."""
        ip = service.cluster_ipv6
        client = self.clients[0]
        node = self.topo.node(client.node)
        socks = sockets_in(
            client.netns, lambda: socket.socket(socket.AF_INET6, socket.SOCK_STREAM), connections
        )
        first: list[str] = []
        try:
            for sock in socks:
                sock.settimeout(5.0)
                sock.connect((str(ip), ECHO_PORT))
                first.append(_read_pod(sock))
            table = "srv6ctl_verify_loss"
            # With VPP the node's kernel never sees the pod's packets (VPP reads them off
            # the veth): the loss is made in the client pod, on the way out.
            in_pod = node.agent.dataplane == "vpp"
            where = os.path.basename(client.netns) if in_pod else node.netns
            hook = "output" if in_pod else "prerouting"
            rule = (
                f"table inet {table} {{\n chain pre {{\n"
                f"  type filter hook {hook} priority -300; policy accept;\n"
                f"  ip6 saddr {client.ipv6} ip6 daddr {ip} tcp dport {ECHO_PORT} drop\n }}\n}}\n"
            )
            _nft(where, rule)
            try:
                for sock in socks:
                    sock.sendall(b"again\n")
                time.sleep(1.5)  # RTOs at about 0.2, 0.6 and 1.4 s
            finally:
                _nft(where, f"delete table inet {table}\n")
            second: list[str] = []
            for sock in socks:
                try:
                    second.append(_read_pod(sock))
                except OSError as err:
                    second.append(f"{type(err).__name__}: {err.strerror or err}")
        finally:
            for sock in socks:
                sock.close()
        broken = [f"{a} → {b}" for a, b in zip(first, second, strict=True) if a != b]
        self.report.add(
            GROUP,
            "established TCP connections keep their backend through RTOs",
            not broken,
            f"{connections} connections, 1.5 s of loss at {where}: every one resumed on its backend"
            if not broken
            else f"{len(broken)} of {connections} broke: {', '.join(broken[:3])} "
            "(FINDINGS.md, finding 1)",
        )


def _read_pod(sock: socket.socket) -> str:
    line = b""
    while not line.endswith(b"\n"):
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionResetError("closed")
        line += chunk
    return str(json.loads(line.splitlines()[-1])["pod"])


def _nft(netns: str | None, script: str) -> None:
    command = ["nft", "-f", "-"]
    if netns is not None:
        command = ["ip", "netns", "exec", netns, *command]
    done = subprocess.run(command, input=script, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"nft in {netns}: {done.stderr.strip()}")


@dataclass
class Findings:
    """What went wrong with service flows, by the property it breaks."""

    nat: list[str] = field(default_factory=list)  # the backend did not see the client
    rewrite: list[str] = field(default_factory=list)  # wrong address/port on either end
    lost: list[str] = field(default_factory=list)  # no answer at all
    # Each pod's own addresses (short name → addresses): where a UDP flow reaches it,
    # since the pod DNATs UDP to its VIPs to itself (srv6ctl/podnet.py).
    own: Mapping[str, frozenset[str]] = field(default_factory=dict)

    def add(self, answer: Answer, client: str, src: str, cluster_ip: str, target_port: int) -> None:
        """Check one answer to `client` (a name for messages), which called from `src`
        the service address `cluster_ip` (a ClusterIP or an external VIP)."""
        if answer.peer != src:
            self.nat.append(f"{answer.pod} saw {answer.peer}, not {client}'s {src}")
        if answer.proto == "udp":
            # TCP arrives at the VIP itself; UDP at the pod's own address (its DNAT, so that
            # a server on the wildcard answers from the VIP).
            if answer.local not in self.own.get(answer.pod, ()) or answer.local_port != (
                target_port
            ):
                self.rewrite.append(
                    f"{answer.pod} was reached at {answer.local}:{answer.local_port} over UDP, "
                    f"not at its own address and {target_port}"
                )
        elif answer.local != cluster_ip or answer.local_port != target_port:
            self.rewrite.append(
                f"{answer.pod} was reached at {answer.local}:{answer.local_port}, "
                f"not {cluster_ip}:{target_port}"
            )
        service_port = SERVICE_HTTP_PORT if target_port == HTTP_PORT else target_port
        if answer.reply_from != (cluster_ip, service_port):
            self.rewrite.append(
                f"{client} was answered from {answer.reply_from[0]}:{answer.reply_from[1]}"
            )

    @property
    def all(self) -> list[str]:
        return self.lost + self.nat + self.rewrite


def own_addresses(topo: Topology) -> dict[str, frozenset[str]]:
    """Each pod's own addresses, by its short name (`Findings.own`)."""
    return {
        p.short: frozenset(str(a) for a in (p.ipv6, p.ipv4) if a is not None) for p in topo.pods
    }


def expected_shares(topo: Topology, service: ServiceInfo, family: int) -> dict[str, Any]:
    return Connectivity(topo, Report(), 0)._weights(service, family)
