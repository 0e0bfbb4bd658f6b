"""External traffic: an external client reaching LoadBalancer IPs and externalIPs.

The client is the lab's probe, a host on the underlay that is not a node; it routes each
VIP to the nodes as a router in front of a cluster would (srv6ctl/lab/external.py). Over
real TCP connections and UDP datagrams it checks, per service, VIP and family:

- every flow is answered by one of the service's backends, which saw the **client's own
  address** (no SNAT anywhere) and was reached at the VIP itself on the targetPort (the
  packet arrived unchanged over SRv6; the pod rewrote only the port), and the client saw
  the answer come **from the VIP and the service port** — the backend answered directly
  (direct server return: no node kept NAT or conntrack state for the flow);
- externalTrafficPolicy Cluster: the flows spread over every backend;
- externalTrafficPolicy Local: each node's healthCheckNodePort answers 200 with its local
  endpoint count where it has a backend and 503 where it has none (kube-proxy's answer),
  and traffic entering a node (the probe's route pinned to it) never leaves it: only that
  node's backends answer.
- NodePorts, on every node's address of each family: the backend saw the client's own
  address (kube-proxy SNATs here under externalTrafficPolicy Cluster; we do not), was
  reached on its own address at the targetPort (its own namespace DNATed the node port),
  and the client saw the answer come from the node's address and the nodePort; under
  Cluster the flows entering each node spread over every backend, under Local they are
  answered only by that node's backends and a node without one answers nothing.
- loadBalancerSourceRanges: the client's second address, outside the ranges, gets no
  answer from the load balancer IPs (its flows from the allowed address are the VIP
  checks above).
"""

from __future__ import annotations

import ipaddress
import random
from collections import Counter
from typing import Any

from srv6ctl.dataplane.model import IPAddress
from srv6ctl.lab.external import health_check, node_address, route_external
from srv6ctl.lab.netns import ip
from srv6ctl.lab.objects import HTTP_PORT, SERVICE_HTTP_PORT
from srv6ctl.lab.shape import (
    PROBE_INDEX_V4,
    PROBE_INDEX_V6,
    STRANGER_INDEX_V4,
    STRANGER_INDEX_V6,
    underlay_v4,
    underlay_v6,
)
from srv6ctl.lab.state import LabState
from srv6ctl.verify.connectivity import Findings, own_addresses
from srv6ctl.verify.flows import Result, answers, failures, tcp_flows, udp_flows
from srv6ctl.verify.report import Report
from srv6ctl.verify.topology import PodInfo, ServiceInfo, Topology

GROUP = "external"
FLOWS_PER_BACKEND = 20


class ExternalChecks:
    def __init__(self, topo: Topology, lab: Any, report: Report) -> None:
        self.topo, self.report = topo, report
        self.state: LabState = lab.state
        self.client = self.state.probe_netns
        self.address = {6: underlay_v6(PROBE_INDEX_V6), 4: underlay_v4(PROBE_INDEX_V4)}

    def run(self) -> None:
        services = [s for s in self.topo.services if s.external]
        if not services:
            self.report.skip(GROUP, "external traffic", "no service with an external VIP")
            return
        for service in services:
            for family, vips in sorted(service.external.items(), reverse=True):
                for vip in vips:
                    self.vip(service, family, vip)
            if service.external_traffic_policy == "Local":
                self.local_policy(service)
        for service in self.topo.services:
            if service.node_ports:
                self.node_ports(service)
            if service.node_ports and service.external_traffic_policy != "Local":
                self.host_clients(service)
            if service.source_ranges:
                self.source_ranges(service)

    # --- every VIP, from the external client --------------------------------------------

    def vip(self, service: ServiceInfo, family: int, vip: IPAddress) -> None:
        backends = {b.split("/", 1)[-1] for b in service.backends}
        count = max(FLOWS_PER_BACKEND * len(backends), 30)
        label = f"external client → {service.name} {_show(vip)}:{SERVICE_HTTP_PORT}"
        # Source ports bound before connect(): the probe's ECMP route then hashes them
        # (lab/external.py), so the flows enter through every node.
        tcp = tcp_flows(self.client, vip, SERVICE_HTTP_PORT, sports=_ports(count))
        udp = udp_flows(self.client, vip, SERVICE_HTTP_PORT, 8)
        problems = self._problems(tcp + udp, family, vip, backends)
        spread = Counter(a.pod for a in answers(tcp))
        if service.external_traffic_policy != "Local":
            missing = sorted(backends - set(spread))
            if missing:
                problems.append(f"no flow reached {', '.join(missing)}")
        seen = sorted({a.peer for a in answers(tcp + udp)})
        detail = (
            f"{len(tcp)} TCP + {len(udp)} UDP flows; backends saw {', '.join(seen) or '-'} "
            f"(the client's own address), replies from {_show(vip)}:{SERVICE_HTTP_PORT}; "
            f"spread {_spread(spread)}"
        )
        self.report.add(
            GROUP, f"{label} (IPv{family})", not problems, "; ".join(problems[:3]) or detail
        )

    def _problems(
        self, results: list[Result], family: int, vip: IPAddress, backends: set[str]
    ) -> list[str]:
        found = Findings(
            lost=[f"lost: {f.error}" for f in failures(results)], own=own_addresses(self.topo)
        )
        strangers = []
        for answer in answers(results):
            if answer.pod not in backends:
                strangers.append(f"{answer.pod} answered, not a backend here")
            found.add(answer, "the external client", self.address[family], str(vip), HTTP_PORT)
        return [*strangers, *found.all]

    # --- loadBalancerSourceRanges ------------------------------------------------------------

    def source_ranges(self, service: ServiceInfo) -> None:
        stranger = {6: underlay_v6(STRANGER_INDEX_V6), 4: underlay_v4(STRANGER_INDEX_V4)}
        for vip in service.load_balancer_ips:
            family = vip.version
            ranges = [r for r in service.source_ranges if r.version == family]
            if not ranges:
                continue
            # Short timeouts: every one of these is meant to go unanswered.
            refused = tcp_flows(
                self.client, vip, SERVICE_HTTP_PORT, 5, timeout=1.0, source=stranger[family]
            )
            allowed = tcp_flows(self.client, vip, SERVICE_HTTP_PORT, 5, source=self.address[family])
            problems = [f"{a.pod} answered {stranger[family]}" for a in answers(refused)]
            problems += [f"allowed source lost: {f.error}" for f in failures(allowed)]
            shown = ", ".join(str(r) for r in ranges)
            name = (
                f"{service.name} loadBalancerSourceRanges {shown}: "
                f"{_show(vip)} refuses {stranger[family]}"
            )
            detail = (
                f"{len(refused)} flows from {stranger[family]} unanswered; "
                f"{len(answers(allowed))}/{len(allowed)} from {self.address[family]} answered"
            )
            self.report.add(GROUP, name, not problems, "; ".join(problems[:3]) or detail)

    # --- NodePorts --------------------------------------------------------------------------

    def node_ports(self, service: ServiceInfo) -> None:
        backends = {b.split("/", 1)[-1] for b in service.backends}
        tcp_port = service.node_ports.get(("TCP", SERVICE_HTTP_PORT))
        udp_port = service.node_ports.get(("UDP", SERVICE_HTTP_PORT))
        if tcp_port is None or udp_port is None:
            return
        ports = (tcp_port, udp_port)
        families = [f for f in (6, 4) if service.cluster_ip(f) is not None]
        # A node whose dataplane cannot steer by port serves no NodePort (render leaves
        # them out): nothing to check, and the reason is the node's, not a failure.
        unable = [f"{n.name}: {n.agent.no_rules}" for n in self.topo.nodes if n.agent.no_rules]
        if unable:
            for family in families:
                name = _node_port_check(service, ports, family)
                self.report.skip(GROUP, name, unable[0] + _more(unable))
            return
        for family in families:
            problems: list[str] = []
            shown: list[str] = []
            for node in self.state.nodes:
                address = node.internal_ipv6 if family == 6 else node.internal_ipv4
                if address is None:
                    continue
                here = {p.short for p in self.topo.pods_on(node.name) if p.short in backends}
                local = service.external_traffic_policy == "Local"
                expected = here if local else backends
                found, spread = self._node_port(family, address, ports, expected, backends)
                problems += [f"via {node.name}: {p}" for p in found]
                shown.append(f"{node.name}: {spread if expected else 'none (no backend there)'}")
            name = _node_port_check(service, ports, family)
            detail = f"backends saw {self.address[family]} (the client's own address); "
            detail += "; ".join(shown)
            self.report.add(GROUP, name, not problems, "; ".join(problems[:3]) or detail)

    def host_clients(self, service: ServiceInfo) -> None:
        """Host-network clients reach every type (issue 17), not only the ClusterIP: from
        each node's own namespace, the service's load balancer IP and its TCP node port on
        the node's own address and on the next node's; the backend saw the node's own
        address (no SNAT). A node's own node port: its host loop (kernel), or its kernel's
        DNAT to the ClusterIP behind the host interconnect (VPP, render `_own_node_ports`)."""
        tcp_port = service.node_ports.get(("TCP", SERVICE_HTTP_PORT))
        nodes = self.state.nodes
        unable = [f"{n.name}: {n.agent.no_rules}" for n in self.topo.nodes if n.agent.no_rules]
        for family in [f for f in (6, 4) if service.cluster_ip(f) is not None]:
            label = (
                f"host-network clients reach {service.name}'s load balancer IP and NodePort "
                f"{tcp_port}/TCP on their own node and the next (IPv{family})"
            )
            if unable or tcp_port is None or len(nodes) < 2:
                self.report.skip(GROUP, label, unable[0] if unable else "no node port")
                continue
            problems: list[str] = []
            reached: Counter[str] = Counter()
            for index, node in enumerate(nodes):
                own = node_address(node, family)
                other = node_address(nodes[(index + 1) % len(nodes)], family)
                if own is None or other is None:
                    continue
                targets = [(own, tcp_port, "its own NodePort"), (other, tcp_port, "the next's")]
                targets += [
                    (str(v), SERVICE_HTTP_PORT, "the VIP")
                    for v in service.external.get(family, [])[:1]
                ]
                for address, port, what in targets:
                    results = tcp_flows(node.netns, address, port, 4)
                    problems += [f"{node.name} → {what}: {f.error}" for f in failures(results)]
                    for answer in answers(results):
                        reached[answer.pod] += 1
                        if answer.peer != own:
                            problems.append(f"{node.name} → {what}: {answer.pod} saw {answer.peer}")
            detail = f"backends saw each node's own address; reached {_spread(reached)}"
            self.report.add(GROUP, label, not problems, "; ".join(problems[:3]) or detail)
            self._pods_to_own_node(service, family, tcp_port)
            self._backends_to_node_ports(service, family, tcp_port)

    def _pods_to_own_node(self, service: ServiceInfo, family: int, tcp_port: int) -> None:
        """Each client pod reaches the NodePort on its own node's address (kernel: the
        node's rules; VPP, whose rules sit on the uplinks: the pod's own DNAT to the
        ClusterIP, render `_own_node_ports`), and the backend saw the pod's address."""
        label = f"pods reach {service.name}'s NodePort {tcp_port}/TCP on their own node"
        label += f" (IPv{family})"
        by_name = {n.name: n for n in self.state.nodes}
        problems: list[str] = []
        reached: Counter[str] = Counter()
        clients = [p for p in self.topo.pods if p.role == "client"]
        for pod in clients:
            own = node_address(by_name[pod.node], family)
            source = pod.ipv6 if family == 6 else pod.ipv4
            if own is None or source is None:
                continue
            problems += _flows_from(pod, pod.node, own, tcp_port, 4, str(source), reached)
        if not clients:
            self.report.skip(GROUP, label, "no client pod")
            return
        detail = f"each backend saw the client pod's own address; reached {_spread(reached)}"
        self.report.add(GROUP, label, not problems, "; ".join(problems[:3]) or detail)

    def _backends_to_node_ports(self, service: ServiceInfo, family: int, tcp_port: int) -> None:
        """Each backend on a VPP node reaches the NodePort on its own node and on the
        next, every flow answered — those landing on the backend itself too (it
        translates them to the endpoints itself, render `_backends_node_ports`: they
        were lost when its own flow came back to it) — and whoever answered saw the
        backend's address. Kernel nodes' backends still lose those (README): skipped."""
        label = (
            f"backends of {service.name} reach its NodePort {tcp_port}/TCP on their own node "
            f"and the next, themselves included (IPv{family})"
        )
        nodes = self.state.nodes
        by_name = {n.name: index for index, n in enumerate(nodes)}
        vpp = {n.name for n in self.topo.nodes if n.agent.dataplane == "vpp"}
        members = {b.split("/", 1)[-1] for b in service.backends}
        backends = [p for p in self.topo.pods if p.short in members and p.node in vpp]
        if not backends or len(nodes) < 2:
            why = "one node" if backends else "no backend pod on a VPP node"
            if not vpp:
                why = "kernel nodes: a backend's NodePort flow landing on itself is lost (README)"
            self.report.skip(GROUP, label, why)
            return
        problems: list[str] = []
        reached: Counter[str] = Counter()
        itself = 0
        for pod in backends:
            index = by_name[pod.node]
            source = pod.ipv6 if family == 6 else pod.ipv4
            for node in (nodes[index], nodes[(index + 1) % len(nodes)]):
                address = node_address(node, family)
                if address is None or source is None:
                    continue
                # Eight flows: were those that land on the pod itself lost (half of them
                # with two backends), all eight would survive one time in 256.
                before = reached[pod.short]
                problems += _flows_from(pod, node.name, address, tcp_port, 8, str(source), reached)
                itself += reached[pod.short] - before
        detail = f"every flow answered, {itself} by the backend itself; {_spread(reached)}"
        self.report.add(GROUP, label, not problems, "; ".join(problems[:3]) or detail)

    def _node_port(
        self,
        family: int,
        address: str,
        ports: tuple[int, int],
        expected: set[str],
        backends: set[str],
    ) -> tuple[list[str], str]:
        """Flows from the client to one node's `address` at the TCP and UDP node ports:
        what is wrong with them, and the TCP spread over backends."""
        tcp = tcp_flows(self.client, address, ports[0], max(10 * len(expected), 10))
        udp = udp_flows(self.client, address, ports[1], 4)
        problems = [f"lost: {f.error}" for f in failures(tcp + udp)] if expected else []
        own = {str(a) for p in self.topo.pods if p.short in backends for a in (p.ipv6, p.ipv4)}
        for answer in answers(tcp + udp):
            if answer.pod not in expected:
                problems.append(f"{answer.pod} answered, not a backend for this node")
            if answer.peer != self.address[family]:
                problems.append(f"{answer.pod} saw {answer.peer}, not the client")
            if answer.local not in own or answer.local_port != HTTP_PORT:
                problems.append(
                    f"{answer.pod} was reached at {answer.local}:{answer.local_port}, "
                    f"not at its own address and {HTTP_PORT}"
                )
            if answer.reply_from[0] != address or answer.reply_from[1] not in ports:
                problems.append("the client was answered from {}:{}".format(*answer.reply_from))
        spread = Counter(a.pod for a in answers(tcp))
        missing = sorted(expected - set(spread))
        if missing:
            problems.append(f"no flow reached {', '.join(missing)}")
        return problems, _spread(spread)

    # --- externalTrafficPolicy Local --------------------------------------------------------

    def local_policy(self, service: ServiceInfo) -> None:
        backends = {b.split("/", 1)[-1] for b in service.backends}
        on_node = Counter(p.node for p in self.topo.pods if p.short in backends)
        self._health_ports(service, on_node)
        vips = service.external.get(6, [])
        if not vips:
            return
        vip = vips[0]
        problems: list[str] = []
        shown: list[str] = []
        try:
            for node in self.state.nodes:
                if not on_node.get(node.name):
                    continue
                # Pin the router's route for the VIP to this node alone.
                ip(
                    "-6",
                    "route",
                    "replace",
                    f"{vip}/128",
                    "via",
                    node.internal_ipv6,
                    netns=self.client,
                )
                results = tcp_flows(self.client, vip, SERVICE_HTTP_PORT, 10)
                local = {p.short for p in self.topo.pods_on(node.name) if p.short in backends}
                problems += [
                    f"via {node.name}: {p}" for p in self._problems(results, 6, vip, local)
                ]
                shown.append(
                    f"via {node.name}: {_spread(Counter(a.pod for a in answers(results)))}"
                )
        finally:
            route_external(self.state)
        name = f"{service.name} externalTrafficPolicy Local: traffic stays on its entry node"
        self.report.add(GROUP, name, not problems, "; ".join(problems[:3]) or "; ".join(shown))

    def _health_ports(self, service: ServiceInfo, on_node: Counter[str]) -> None:
        port = service.health_check_node_port
        problems, shown = [], []
        for node in self.state.nodes:
            answer = health_check(self.client, node.internal_ipv6, port)
            local = on_node.get(node.name, 0)
            want = 200 if local else 503
            count = answer.body.get("localEndpoints")
            shown.append(f"{node.name} {answer.status} ({count})")
            if answer.status != want or count != local:
                problems.append(
                    f"{node.name}: {answer.status} with {count} local endpoints; "
                    f"wanted {want} with {local}"
                )
        name = f"{service.name} healthCheckNodePort {port} answers as kube-proxy's"
        self.report.add(GROUP, name, not problems, "; ".join(problems) or ", ".join(shown))


def _flows_from(
    pod: PodInfo, node: str, address: str, port: int, count: int, source: str, reached: Counter[str]
) -> list[str]:
    """`count` TCP flows from `pod` to `address`:`port` (on `node`): what went wrong, the
    answers counted into `reached` by the pod that gave them, each checked to have seen
    the client at `source`."""
    results = tcp_flows(pod.netns, address, port, count)
    problems = [f"{pod.short} → {node}: {f.error}" for f in failures(results)]
    for answer in answers(results):
        reached[answer.pod] += 1
        if answer.peer != source:
            problems.append(f"{pod.short}: {answer.pod} saw {answer.peer}")
    return problems


def _ports(count: int) -> list[int]:
    """`count` distinct source ports, a fresh draw each time (no TIME_WAIT clash)."""
    return random.sample(range(20000, 30000), count)


def _show(address: IPAddress) -> str:
    return f"[{address}]" if isinstance(address, ipaddress.IPv6Address) else str(address)


def _node_port_check(service: ServiceInfo, ports: tuple[int, int], family: int) -> str:
    return (
        f"external client → {service.name} NodePort {ports[0]}/TCP {ports[1]}/UDP "
        f"on every node (IPv{family})"
    )


def _more(items: list[str]) -> str:
    return f" (and {len(items) - 1} more nodes)" if len(items) > 1 else ""


def _spread(counts: Counter[str]) -> str:
    return ", ".join(f"{pod} {n}" for pod, n in sorted(counts.items())) or "-"


__all__ = ["ExternalChecks"]
