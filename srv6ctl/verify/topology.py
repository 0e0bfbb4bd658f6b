"""What verify checks against: nodes, pods, services and SIDs, from the agents themselves.

Two sources, one shape:

- `from_lab`: the lab's state file names the namespaces, pods and services, and every
  node's agent says what it programmed (`AgentView`).
- `from_node`: run inside one real node's network namespace, with only that node's agent
  socket. Its pods (name, namespace path, node-side interface, addresses) come from the
  agent's desired `PodAttachment`s, its services from its policies' owners and steerings,
  and every SID on the wire is traced back to a node or pod by the address plan.

The expected SIDs, policies and encapsulation source are always the agent's *desired*
config: verify checks that the dataplane does what the control plane says it should.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from ipam6.plan import AddressPlan
from srv6ctl.config import load_config
from srv6ctl.dataplane.model import (
    End,
    EndDT6,
    EndDX4,
    EndDX6,
    IPAddress,
    IPNetwork,
    IPv6Address,
    SrPolicy,
)
from srv6ctl.lab.build import Lab
from srv6ctl.lab.netns import LabError, mac
from srv6ctl.lab.objects import SERVICE_PORTS
from srv6ctl.lab.progress import Steps, console
from srv6ctl.lab.shape import PROBE_INDEX_V6, underlay_v6
from srv6ctl.observe.agentview import AgentView, view
from srv6ctl.render import HOST_SERVICES_TABLE

UPLINK = "eth0"


@dataclass
class PodInfo:
    name: str  # "namespace/name"
    node: str
    netns: str  # path
    host_ifname: str  # the node-side veth
    ipv6: ipaddress.IPv6Address | None
    ipv4: ipaddress.IPv4Address | None
    role: str = "pod"  # client | backend | pod (unknown, node mode)
    service: str | None = None
    ifname: str = "eth0"  # the pod's own end of its veth

    @property
    def short(self) -> str:
        return self.name.split("/", 1)[-1]


@dataclass(frozen=True)
class Wire:
    """Where a tap watches one of a node's links: the node's end, or the far end (`far`:
    directions reversed there, see srv6ctl.verify.packets)."""

    netns: str | None
    interface: str
    far: bool = False


@dataclass
class NodeInfo:
    name: str
    netns: str | None  # name/path of the node's namespace; None: this process's own
    uplink: str
    mac: str
    agent: AgentView
    api_socket: str
    uplink_peer: tuple[str, str] | None = None  # (netns, interface): the uplink's far end
    internal_ips: dict[int, str] = field(default_factory=dict)  # IP version → InternalIP

    @property
    def watched_from_far_end(self) -> bool:
        """VPP sends past the kernel's taps on the ports it owns (PACKET_QDISC_BYPASS):
        what it sends is seen only where it arrives."""
        return self.agent.dataplane == "vpp"

    def uplink_wire(self) -> Wire:
        if self.watched_from_far_end and self.uplink_peer is not None:
            return Wire(*self.uplink_peer, far=True)
        return Wire(self.netns, self.uplink)

    def pod_wire(self, pod: PodInfo) -> Wire:
        if self.watched_from_far_end:
            return Wire(pod.netns, pod.ifname, far=True)
        return Wire(self.netns, pod.host_ifname)

    @property
    def end_sid(self) -> IPv6Address | None:
        return next((s.sid for s in self.agent.desired.local_sids if type(s) is End), None)

    @property
    def dt6_sid(self) -> IPv6Address | None:
        """The End.DT6 into the pod table (`L::6`), not the host-services one (`L::7`)."""
        return next(
            (
                s.sid
                for s in self.agent.desired.local_sids
                if type(s) is EndDT6 and s.table != HOST_SERVICES_TABLE
            ),
            None,
        )

    def pod_sid(self, pod: PodInfo, family: int = 6) -> IPv6Address | None:
        address = pod.ipv6 if family == 6 else pod.ipv4
        kind = EndDX6 if family == 6 else EndDX4
        for sid in self.agent.desired.local_sids:
            if isinstance(sid, kind) and sid.nexthop == address:
                return sid.sid
        return None


@dataclass
class ServiceInfo:
    name: str  # "namespace/name"
    cluster_ipv6: ipaddress.IPv6Address | None
    cluster_ipv4: ipaddress.IPv4Address | None
    backends: list[str] = field(default_factory=list)  # pod names ("namespace/name")
    # Load balancer IPs and externalIPs, by IP version (the lab's; a node knows no intent).
    external: dict[int, list[IPAddress]] = field(default_factory=dict)
    external_traffic_policy: str = "Cluster"
    health_check_node_port: int = 0
    # (protocol, service port) → nodePort (the lab's; a node knows no intent)
    node_ports: dict[tuple[str, int], int] = field(default_factory=dict)
    load_balancer_ips: list[IPAddress] = field(default_factory=list)
    source_ranges: list[IPNetwork] = field(default_factory=list)  # loadBalancerSourceRanges
    affinity: int = 0  # sessionAffinity ClientIP's timeout (the lab's); 0: None
    host_endpoints: list[str] = field(default_factory=list)  # nodes serving it (the lab's)
    # Endpoints outside the cluster (the lab's: the probe's server), by hand-made slices.
    outside_endpoints: list[IPAddress] = field(default_factory=list)

    def cluster_ip(self, family: int) -> IPAddress | None:
        return self.cluster_ipv6 if family == 6 else self.cluster_ipv4


@dataclass
class Injector:
    """Where crafted packets enter the node(s): a host on the underlay (the lab's probe)
    or a veth into a node made for the run (node mode)."""

    netns: str | None
    interface: str
    mac: str
    source_v6: ipaddress.IPv6Address
    node_macs: dict[str, str]  # node name → MAC frames are addressed to


@dataclass
class Topology:
    plan: AddressPlan
    nodes: list[NodeInfo]
    pods: list[PodInfo]
    services: list[ServiceInfo]
    injector: Injector
    mode: str  # "lab" | "node"

    def node(self, name: str) -> NodeInfo:
        return next(n for n in self.nodes if n.name == name)

    def pod(self, name: str) -> PodInfo:
        return next(p for p in self.pods if p.name == name or p.short == name)

    def pods_on(self, node: str) -> list[PodInfo]:
        return [p for p in self.pods if p.node == node]

    def policy(self, node: str, service: str, family: int) -> SrPolicy | None:
        return self.node(node).agent.policy(f"svc/{service}/v{family}")

    def pod_of_sid(self, sid: IPv6Address) -> PodInfo | None:
        """The pod an End.DX6/End.DX4 SID delivers to (the plan is the only truth)."""
        located = self.plan.pod_of_address(sid)
        if located is None:
            return None
        addresses = self.plan.pod(*located)
        for pod in self.pods:
            if pod.ipv6 == addresses.ipv6 or (pod.ipv4 and pod.ipv4 == addresses.ipv4):
                return pod
        return None

    def node_of_sid(self, sid: IPv6Address) -> NodeInfo | None:
        node_id = self.plan.node_of_sid(sid)
        return next((n for n in self.nodes if n.agent.node_id == node_id), None)

    def refresh(self) -> None:
        """Re-read every agent (after the lab changed: an agent still catching up with
        tens of pods answers late in a VM without KVM)."""
        for node in self.nodes:
            node.agent = view(node.api_socket, timeout=60.0)


def from_lab(state_dir: str) -> tuple[Topology, object]:
    """The lab's topology, and the `Lab` object (verify's convergence checks drive it)."""
    lab = Lab(state_dir, Steps(console(), quiet=True))
    state = lab.state
    if state is None or not state.complete:
        raise LabError(f"no complete lab in {lab.paths.root}: run `srv6ctl lab up` first")
    plan = load_config(lab.paths.config)[1]
    nodes = []
    for node_record in state.nodes:
        nodes.append(
            NodeInfo(
                name=node_record.name,
                netns=node_record.netns,
                uplink=UPLINK,
                mac=node_record.mac,
                agent=view(node_record.api_socket),
                api_socket=node_record.api_socket,
                uplink_peer=(state.underlay_netns, node_record.uplink),
                internal_ips={
                    version: address
                    for version, address in (
                        (6, node_record.internal_ipv6),
                        (4, node_record.internal_ipv4),
                    )
                    if address
                },
            )
        )
    pods = []
    for record in state.pods:
        node = next(n for n in nodes if n.name == record.node)
        attachment = node.agent.attachment(f"{record.namespace}/{record.name}")
        pods.append(
            PodInfo(
                name=f"{record.namespace}/{record.name}",
                node=record.node,
                netns=f"/var/run/netns/{record.netns}",
                host_ifname=attachment.interface if attachment else "",
                ipv6=ipaddress.IPv6Address(record.ipv6) if record.ipv6 else None,
                ipv4=ipaddress.IPv4Address(record.ipv4) if record.ipv4 else None,
                role=record.role,
                service=record.service,
                ifname=attachment.container_interface if attachment else "eth0",
            )
        )
    services = [
        ServiceInfo(
            name=f"{s.namespace}/{s.name}",
            cluster_ipv6=ipaddress.IPv6Address(s.cluster_ipv6),
            cluster_ipv4=ipaddress.IPv4Address(s.cluster_ipv4) if s.cluster_ipv4 else None,
            backends=[f"{p.namespace}/{p.name}" for p in state.backends(s.name)],
            external={
                family: [ipaddress.ip_address(a) for a in s.external_vips(family)]
                for family in (6, 4)
                if s.external_vips(family)
            },
            external_traffic_policy=s.external_traffic_policy,
            health_check_node_port=s.health_check_node_port,
            load_balancer_ips=[ipaddress.ip_address(a) for a in s.load_balancer_ips],
            source_ranges=[ipaddress.ip_network(r) for r in s.source_ranges],
            affinity=s.affinity,
            host_endpoints=list(s.host_endpoints),
            outside_endpoints=[ipaddress.ip_address(a) for a in s.outside_endpoints],
            node_ports={
                (protocol, port): node_port
                for (_, port, _, protocol), node_port in zip(
                    SERVICE_PORTS, s.node_ports, strict=False
                )
            },
        )
        for s in state.services
    ]
    injector = Injector(
        netns=state.probe_netns,
        interface=UPLINK,
        mac=mac(state.probe_netns, UPLINK),
        source_v6=ipaddress.IPv6Address(underlay_v6(PROBE_INDEX_V6)),
        node_macs={n.name: n.mac for n in nodes},
    )
    return Topology(plan, nodes, pods, services, injector, "lab"), lab


def from_node(node_name: str, api_socket: str, config: str, injector: Injector) -> Topology:
    """This namespace as node `node_name` (see the module docstring)."""
    plan = load_config(config)[1]
    agent = view(api_socket)
    if agent.node != node_name:
        raise ValueError(f"the agent at {api_socket} is node {agent.node}, not {node_name}")
    node = NodeInfo(node_name, None, UPLINK, injector.node_macs[node_name], agent, api_socket)
    pods = []
    for attachment in sorted(agent.desired.pods, key=lambda a: a.pod):
        v6 = next((a.ip for a in attachment.addresses if a.version == 6), None)
        v4 = next((a.ip for a in attachment.addresses if a.version == 4), None)
        pods.append(
            PodInfo(
                name=attachment.pod,
                node=node_name,
                netns=attachment.netns,
                host_ifname=attachment.interface,
                ipv6=v6 if isinstance(v6, ipaddress.IPv6Address) else None,
                ipv4=v4 if isinstance(v4, ipaddress.IPv4Address) else None,
                role="backend" if attachment.service_addresses else "pod",
                ifname=attachment.container_interface,
            )
        )
    services: dict[str, ServiceInfo] = {}
    by_bsid = {p.bsid: p for p in agent.desired.policies}
    for steering in agent.desired.steerings:
        policy = by_bsid.get(steering.bsid)
        if policy is None or not policy.owner.startswith("svc/"):
            continue
        _, namespace, name, _family = policy.owner.split("/")
        service = services.setdefault(
            f"{namespace}/{name}", ServiceInfo(f"{namespace}/{name}", None, None)
        )
        address = steering.prefix.network_address
        cidrs = [c for c in (plan.service_cidr_v6, plan.service_cidr_v4) if c is not None]
        if cidrs and not any(address in cidr for cidr in cidrs):
            continue  # an external VIP steered into the ClusterIP's policy
        if isinstance(address, ipaddress.IPv6Address):
            service.cluster_ipv6 = address
        else:
            service.cluster_ipv4 = address
        # Backends on this node are known by their SIDs; remote ones only by the plan.
        local_sids = {node.pod_sid(p): p for p in pods}
        for segment_list in policy.segment_lists:
            pod = local_sids.get(segment_list.segments[-1])
            if pod is not None and pod.name not in service.backends:
                service.backends.append(pod.name)
    return Topology(plan, [node], pods, list(services.values()), injector, "node")
