"""`srv6ctl trace SRC DST`: the path one flow takes, from the control plane down to the wire.

For a 5-tuple (SRC pod, DST pod/service/address, protocol, source and destination port):

1. the source pod, its node and the veth it enters the node by;
2. what the source node's agent *wants* for DST (its desired config): the steering that
   matches, the SR policy behind it, every candidate segment list with its weight, and
   the buckets each list actually holds in the dataplane (the agent's `buckets` query:
   the kernel's resilient group, or VPP's load balance);
3. which list *this* flow gets. Two answers, with what each one is worth:
   - the kernel's FIB, asked with the whole 5-tuple (RTM_GETROUTE with RTA_IIF, RTA_SRC,
     RTA_IP_PROTO, RTA_SPORT, RTA_DPORT, over netlink in the node's namespace). The hash
     of the group cannot be computed from user space (a per-namespace random seed, and
     `fib_multipath_hash_policy` decides the inputs), so this is the kernel's own answer
     — but for a route lookup, which is exact only where the data path hashes the same
     way: policy 1 for packets without a socket hash. A pod's own TCP/connected-UDP
     socket stamps its packets with a random hash that policy 1 uses instead (and that
     changes after every RTO), and policy 3 mixes its fields differently on the packet
     path than on a lookup (FINDINGS.md, finding 1);
   - the data path itself (`--probe`, the default in the lab): one packet with exactly
     this 5-tuple is sent out of the source pod's interface and caught leaving the node
     (its outer destination is the chosen SID) or arriving at a local backend. This is
     what the node really does with a packet that carries no socket hash — and, under
     the hash policy the lab sets (3: the 5-tuple), what it does with every packet.
4. each SID of the chosen list: its node and behaviour (address plan + that node's
   agent), and the pod an End.DX6/End.DX4 SID delivers to, with the port the pod's
   stateless rewrite hands the flow to.

Every `srv6ctl` command imports this module to register `trace`, so it stays light: the
dataplane model (~15 ms to import), pyroute2, scapy, the lab's topology (pydantic, rich)
and even subprocess are imported by the function that uses them.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import socket
import struct
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from srv6ctl.lab import DEFAULT_STATE_DIR

if TYPE_CHECKING:  # for annotations only (the docstring)
    from srv6ctl.dataplane.model import IPAddress, PodAttachment, SrPolicy, Translation
    from srv6ctl.verify.topology import NodeInfo, PodInfo, ServiceInfo, Topology

RTM_NEWROUTE, RTM_GETROUTE = 24, 26
NLM_F_REQUEST = 1
NLMSG_ERROR = 2
RTA_DST, RTA_SRC, RTA_IIF, RTA_OIF, RTA_GATEWAY = 1, 2, 3, 4, 5
RTA_ENCAP_TYPE, RTA_ENCAP, RTA_IP_PROTO, RTA_SPORT, RTA_DPORT, RTA_NH_ID = 21, 22, 27, 28, 29, 30
LWTUNNEL_ENCAP_SEG6, LWTUNNEL_ENCAP_SEG6_LOCAL = 5, 7
SEG6_IPTUNNEL_SRH = 1
SEG6_LOCAL_ACTION, SEG6_LOCAL_NH6 = 1, 5
RTN_NAMES = {1: "unicast", 2: "local", 6: "blackhole", 7: "unreachable", 8: "prohibit"}
_NLMSG = struct.Struct("=IHHII")
_RTMSG = struct.Struct("=BBBBBBBBI")
PROTOCOLS = {"tcp": 6, "udp": 17}


# --- the kernel's answers, over netlink in the node's namespace ----------------------------


@dataclass
class KernelRoute:
    kind: str  # unicast, prohibit, ... or "error: ..." when the kernel refused
    segments: tuple[ipaddress.IPv6Address, ...] = ()
    mode: int | None = None
    seg6local_action: int | None = None
    oif: int | None = None
    gateway: str | None = None
    nh_id: int | None = None


def route_get(
    netns: str | None,
    dst: IPAddress,
    src: IPAddress,
    iif: int,
    proto: int,
    sport: int,
    dport: int,
) -> KernelRoute:
    """RTM_GETROUTE for this 5-tuple, as if it arrived on interface `iif`."""
    # Lazy (the docstring): netlink_seg6 and nsenter load pyroute2.
    from srv6ctl.dataplane import netlink_seg6 as nl
    from srv6ctl.dataplane import netlink_wire as w
    from srv6ctl.dataplane.nsenter import run_in_netns

    family = socket.AF_INET6 if dst.version == 6 else socket.AF_INET
    bits = dst.max_prefixlen
    body = _RTMSG.pack(family, bits, bits, 0, 0, 0, 0, 0, 0) + b"".join(
        (
            w.address(RTA_DST, dst),
            w.address(RTA_SRC, src),
            w.u32(RTA_IIF, iif),
            w.u8(RTA_IP_PROTO, proto),
            w.attr(RTA_SPORT, struct.pack("!H", sport)),
            w.attr(RTA_DPORT, struct.pack("!H", dport)),
        )
    )
    message = _NLMSG.pack(_NLMSG.size + len(body), RTM_GETROUTE, NLM_F_REQUEST, 1, 0) + body

    def ask() -> bytes:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as sock:
            sock.settimeout(5.0)
            sock.send(message)
            return sock.recv(65536)

    reply = run_in_netns(_path(netns), ask)
    _, msg_type, _, _, _ = _NLMSG.unpack_from(reply, 0)
    if msg_type == NLMSG_ERROR:
        (code,) = struct.unpack_from("=i", reply, _NLMSG.size)
        return KernelRoute(kind=f"error: {os.strerror(-code)}")
    rtm = _RTMSG.unpack_from(reply, _NLMSG.size)
    attrs = w.Attrs(reply, _NLMSG.size + _RTMSG.size)
    route = KernelRoute(kind=RTN_NAMES.get(rtm[7], str(rtm[7])))
    route.oif = attrs.uint(RTA_OIF)
    route.nh_id = attrs.uint(RTA_NH_ID)
    gateway = attrs.ip(RTA_GATEWAY)
    route.gateway = str(gateway) if gateway else None
    encap = attrs.nested(RTA_ENCAP)
    encap_type = attrs.uint(RTA_ENCAP_TYPE)
    if encap is not None and encap_type == LWTUNNEL_ENCAP_SEG6:
        srh = encap.raw(SEG6_IPTUNNEL_SRH)
        if srh is not None:
            route.mode, route.segments = nl.unpack_seg6_srh(srh)
    elif encap is not None and encap_type == LWTUNNEL_ENCAP_SEG6_LOCAL:
        route.seg6local_action = encap.uint(SEG6_LOCAL_ACTION)
    return route


def _path(netns: str | None) -> str | None:
    if netns is None or netns.startswith("/"):
        return netns
    return f"/var/run/netns/{netns}"


def _ifindex(netns: str | None, ifname: str) -> int:
    from srv6ctl.dataplane.nsenter import run_in_netns  # lazy: pyroute2 (the docstring)

    return run_in_netns(_path(netns), lambda: socket.if_nametoindex(ifname))


# --- the trace -------------------------------------------------------------------------------


@dataclass
class Hop:
    sid: str
    node: str | None
    behaviour: str | None
    delivers_to: str | None = None
    detail: str = ""


@dataclass
class Trace:
    flow: dict[str, Any]
    source: dict[str, Any]
    match: dict[str, Any] = field(default_factory=dict)
    candidates: list[dict[str, Any]] = field(default_factory=list)
    kernel: dict[str, Any] = field(default_factory=dict)
    probe: dict[str, Any] = field(default_factory=dict)
    chosen: list[str] = field(default_factory=list)
    hops: list[Hop] = field(default_factory=list)
    final: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def resolve_source(topo: Topology, text: str) -> PodInfo:
    for pod in topo.pods:
        if text in (pod.name, pod.short, str(pod.ipv6), str(pod.ipv4)):
            return pod
    raise ValueError(f"no pod {text!r} (pods: {', '.join(p.short for p in topo.pods)})")


def resolve_destination(
    topo: Topology, text: str, family: int
) -> tuple[IPAddress, str, ServiceInfo | None]:
    for service in topo.services:
        if text in (service.name, service.name.split("/", 1)[1]):
            ip = service.cluster_ip(family)
            if ip is None:
                raise ValueError(f"service {service.name} has no IPv{family} ClusterIP")
            return ip, f"service {service.name}", service
    for pod in topo.pods:
        if text in (pod.name, pod.short):
            ip = pod.ipv6 if family == 6 else pod.ipv4
            if ip is None:
                raise ValueError(f"pod {pod.short} has no IPv{family} address")
            return ip, f"pod {pod.short}", None
    address = ipaddress.ip_address(text)
    for service in topo.services:
        if address in (service.cluster_ipv6, service.cluster_ipv4):
            return address, f"service {service.name}", service
    return address, str(address), None


def trace(
    topo: Topology,
    source: str,
    destination: str,
    *,
    port: int,
    sport: int,
    proto: str,
    family: int,
    probe: bool,
) -> Trace:
    src_pod = resolve_source(topo, source)
    dst, label, service = resolve_destination(topo, destination, family)
    src = src_pod.ipv6 if dst.version == 6 else src_pod.ipv4
    if src is None:
        raise ValueError(f"pod {src_pod.short} has no IPv{dst.version} address")
    node = topo.node(src_pod.node)
    result = Trace(
        flow={
            "src": str(src),
            "dst": str(dst),
            "proto": proto,
            "sport": sport,
            "dport": port,
            "to": label,
        },
        source={
            "pod": src_pod.name,
            "node": node.name,
            "node_id": node.agent.node_id,
            "locator": str(node.agent.locator),
            "interface": src_pod.host_ifname,
        },
    )
    translation = _translation(node.agent.attachment(src_pod.name), dst, port, proto)
    if translation is not None:
        # Translated in the pod itself: the packet leaves it for an endpoint outside the
        # cluster, with the pod's own address; no steering or SID takes part.
        result.match = {
            "kind": "translated",
            "targets": [f"{_bracketed(a)}:{p}" for a, p in translation.targets],
            "affinity": translation.affinity,
        }
        return result
    policy = _match(topo, node, dst, result)
    kernel = route_get(
        node.netns,
        dst,
        src,
        _ifindex(node.netns, src_pod.host_ifname),
        PROTOCOLS[proto],
        sport,
        port,
    )
    result.kernel = {
        "route": kernel.kind,
        "segments": [str(s) for s in kernel.segments],
        "nexthop_group": kernel.nh_id,
        "hash_policy": _hash_policy(node),
    }
    if kernel.seg6local_action is not None:
        result.kernel["seg6local_action"] = kernel.seg6local_action
    chosen: tuple[ipaddress.IPv6Address, ...] = kernel.segments
    if probe and policy is not None:
        seen = probe_data_path(topo, node, src_pod, src, dst, proto, sport, port, policy)
        result.probe = seen
        if seen.get("segments"):
            chosen = tuple(ipaddress.IPv6Address(s) for s in seen["segments"])
        if kernel.segments and seen.get("segments") and kernel.segments != chosen:
            result.notes.append(
                "the route lookup and the data path disagree: expected under hash policy "
                f"{result.kernel['hash_policy']} (see FINDINGS.md, finding 1); the data "
                "path is what packets get"
            )
    result.chosen = [str(s) for s in chosen]
    for sid in chosen:
        result.hops.append(_hop(topo, sid))
    _final(topo, result, dst, port, proto, service)
    return result


def _translation(
    attachment: PodAttachment | None, dst: IPAddress, port: int, proto: str
) -> Translation | None:
    """The source pod's translation of this flow (a Service outside the cluster), if any."""
    for t in () if attachment is None else attachment.translations:
        if t.address == dst and t.port == port and t.protocol.lower() == proto:
            return t
    return None


def _bracketed(address: IPAddress) -> str:
    return f"[{address}]" if address.version == 6 else str(address)


def _hash_policy(node: NodeInfo) -> str:
    from srv6ctl.observe.netinfo import sysctl  # lazy: pyroute2 (the docstring)

    try:
        return sysctl(node.netns, "net.ipv6.fib_multipath_hash_policy")
    except OSError:
        return "?"


def _match(topo: Topology, node: NodeInfo, dst: IPAddress, result: Trace) -> SrPolicy | None:
    """The steering (or route) of the node's desired config that `dst` falls in."""
    from srv6ctl.dataplane.model import Route, Steering  # lazy: ~15 ms (the docstring)

    desired = node.agent.desired
    best: Steering | Route | None = None
    candidates: list[Steering | Route] = [*desired.steerings, *desired.routes]
    for obj in candidates:
        if dst in obj.prefix and (best is None or obj.prefix.prefixlen > best.prefix.prefixlen):
            best = obj
    local = next((p for p in topo.pods_on(node.name) if dst in (p.ipv6, p.ipv4)), None)
    if local is not None and (best is None or best.prefix.prefixlen < dst.max_prefixlen):
        result.match = {"kind": "local pod", "pod": local.name, "interface": local.host_ifname}
        return None
    if best is None:
        result.match = {"kind": "none", "detail": "no steering or route of the agent matches"}
        return None
    if not isinstance(best, Steering):
        result.match = {"kind": f"route ({best.kind})", "prefix": str(best.prefix)}
        if best.via is not None:
            result.match["via"] = str(best.via)
        return None
    policy = next((p for p in desired.policies if p.bsid == best.bsid), None)
    result.match = {
        "kind": "steering",
        "prefix": str(best.prefix),
        "bsid": str(best.bsid),
        "policy": policy.owner if policy else "(missing)",
        "mode": str(policy.mode) if policy else "",
    }
    if policy is None:
        return None
    total = sum(sl.weight for sl in policy.segment_lists)
    buckets, bucket_total = agent_buckets(node.api_socket, policy.bsid)
    for sl in policy.segment_lists:
        pod = topo.pod_of_sid(sl.segments[-1])
        entry: dict[str, Any] = {
            "segments": [str(s) for s in sl.segments],
            "weight": sl.weight,
            "share": round(sl.weight / total, 3),
            "ends_at": pod.name if pod else None,
        }
        if bucket_total:
            entry["buckets"] = f"{buckets.get(tuple(map(str, sl.segments)), 0)}/{bucket_total}"
        result.candidates.append(entry)
    return policy


def agent_buckets(
    api_socket: str, bsid: ipaddress.IPv6Address
) -> tuple[dict[tuple[str, ...], int], int]:
    """The policy's buckets as the node's dataplane has them, asked of its agent (the
    kernel's resilient group, or VPP's load balance): segments → buckets, and the total."""
    from srv6ctl.observe.agentview import query  # lazy: the dataplane model (the docstring)

    answer = query(api_socket, f"buckets {bsid}")
    held = {tuple(entry["segments"]): int(entry["buckets"]) for entry in answer["lists"]}
    return held, int(answer["total"])


def _hop(topo: Topology, sid: ipaddress.IPv6Address) -> Hop:
    node = topo.node_of_sid(sid)
    behaviour = None
    delivers = None
    detail = ""
    if node is not None:
        local = next((s for s in node.agent.desired.local_sids if s.sid == sid), None)
        if local is not None:
            behaviour = local.behaviour
            nexthop = getattr(local, "nexthop", None)
            interface = getattr(local, "interface", "")
            if nexthop is not None and interface:
                detail = f"nh {nexthop} via {interface}"
    pod = topo.pod_of_sid(sid)
    if pod is not None:
        delivers = pod.name
    node_id = topo.plan.node_of_sid(sid)
    return Hop(
        sid=str(sid),
        node=node.name if node else (f"node ID {node_id}" if node_id else None),
        behaviour=behaviour,
        delivers_to=delivers,
        detail=detail,
    )


def _final(
    topo: Topology,
    result: Trace,
    dst: IPAddress,
    port: int,
    proto: str,
    service: ServiceInfo | None,
) -> None:
    pod_name = next((h.delivers_to for h in reversed(result.hops) if h.delivers_to), None)
    if pod_name is None and result.match.get("kind") == "local pod":
        pod_name = result.match["pod"]
    if pod_name is None:
        pod_name = next((p.name for p in topo.pods if dst in (p.ipv6, p.ipv4)), None)
    if pod_name is None:
        return
    pod = topo.pod(pod_name)
    target = port
    node = topo.node(pod.node)
    attachment = node.agent.attachment(pod.name)
    if attachment is not None and service is not None:
        for protocol, address, service_port, target_port in attachment.port_maps:
            if protocol.lower() == proto and address == dst and service_port == port:
                target = target_port
    result.final = {
        "pod": pod.name,
        "node": pod.node,
        "address_seen": str(dst),
        "port_seen": target,
        "rewritten": target != port,
    }


# --- the data path ------------------------------------------------------------------------


def probe_data_path(
    topo: Topology,
    node: NodeInfo,
    pod: PodInfo,
    src: IPAddress,
    dst: IPAddress,
    proto: str,
    sport: int,
    dport: int,
    policy: SrPolicy,
) -> dict[str, Any]:
    """Send one packet with this 5-tuple out of the pod; see where the node puts it."""
    # Lazy (the docstring): scapy, and pyroute2 for the taps.
    from scapy.layers.inet import IP, TCP, UDP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import Ether
    from scapy.packet import Raw

    from srv6ctl.observe.netinfo import link_mac
    from srv6ctl.verify.conformance import split
    from srv6ctl.verify.packets import Capture, Tap, marker

    mark = marker()
    layer3 = (
        IPv6(src=str(src), dst=str(dst)) if dst.version == 6 else IP(src=str(src), dst=str(dst))
    )
    # A bare ACK with data: a backend answers it with a reset, nobody opens anything.
    layer4 = (
        TCP(sport=sport, dport=dport, flags="A")
        if proto == "tcp"
        else UDP(sport=sport, dport=dport)
    )
    frame = bytes(
        Ether(src=link_mac(pod.netns, "eth0"), dst=link_mac(node.netns, pod.host_ifname))
        / layer3
        / layer4
        / Raw(mark)
    )
    with Capture() as capture:
        capture.add(node.netns, node.uplink, "uplink")
        local = {p.host_ifname: p for p in topo.pods_on(node.name) if p.host_ifname}
        for ifname in local:
            capture.add(node.netns, ifname, ifname)
        injector = Tap(pod.netns, "eth0", "source")
        try:
            capture.drain()
            started = time.monotonic()
            injector.send([frame])
            seen = capture.collect([mark], timeout=1.0, expect=1, settle=0.05)[mark]
        finally:
            injector.close()
    out = [s for s in seen if s.outgoing]
    if not out:
        return {"seen": "nowhere within 1 s (dropped or rejected)"}
    first = out[0]
    took = round((first.at - started) * 1000, 2)
    if first.tap == "uplink":
        ip6, srh, _ = split(first.data)
        outer_dst = ipaddress.IPv6Address(ip6[24:40])
        lists = [sl.segments for sl in policy.segment_lists]
        segments = next((s for s in lists if s[0] == outer_dst), (outer_dst,))
        return {
            "seen": f"leaving {node.name} on {node.uplink}",
            "outer_dst": str(outer_dst),
            "srh": srh is not None,
            "segments": [str(s) for s in segments],
            "ms": took,
        }
    target = local[first.tap]
    sids = [
        sl.segments for sl in policy.segment_lists if topo.pod_of_sid(sl.segments[-1]) == target
    ]
    return {
        "seen": f"delivered to {target.name} on {node.name} (its End.DX6 is local)",
        "segments": [str(s) for s in sids[0]] if sids else [],
        "ms": took,
    }


# --- output and the command ---------------------------------------------------------------------


def render(result: Trace) -> str:
    flow = result.flow
    lines = [
        f"trace {flow['proto']} [{flow['src']}]:{flow['sport']} → [{flow['dst']}]:{flow['dport']}"
        f" ({flow['to']})",
        f"1. source     {result.source['pod']} on {result.source['node']} (node ID "
        f"{result.source['node_id']}, locator {result.source['locator']}), enters the node "
        f"on {result.source['interface']}",
    ]
    match = result.match
    if match.get("kind") == "steering":
        lines.append(
            f"2. steering   {match['prefix']} → policy {match['bsid']} ({match['policy']}), "
            f"mode {match['mode']}"
        )
        count = len(result.candidates)
        lines.append(f"3. candidates ({count} segment list{'s' if count != 1 else ''})")
        for c in result.candidates:
            buckets = f", {c['buckets']} buckets" if "buckets" in c else ""
            ends = f" → {c['ends_at']}" if c["ends_at"] else ""
            mark = "*" if c["segments"] == result.chosen else " "
            lines.append(
                f"   {mark} [{', '.join(c['segments'])}] weight {c['weight']} "
                f"({c['share']:.0%}{buckets}){ends}"
            )
    elif match.get("kind") == "translated":
        sticky = f", a client keeps its choice {match['affinity']} s" if match["affinity"] else ""
        lines.append(
            f"2. translated in {result.source['pod']} itself (endpoints outside the cluster): "
            f"DNAT to one of {', '.join(match['targets'])}{sticky}; the endpoint sees "
            f"{flow['src']}, the pod's conntrack holds the one NAT entry"
        )
        return "\n".join(lines)
    else:
        lines.append(f"2. match      {json.dumps(match)}")
    kernel = result.kernel
    segs = ", ".join(kernel.get("segments") or []) or "-"
    lines.append(
        f"4. kernel     route get with the 5-tuple: {kernel.get('route')}, segments [{segs}] "
        f"(fib_multipath_hash_policy {kernel.get('hash_policy')})"
    )
    if result.probe:
        probe = result.probe
        extra = f", outer destination {probe['outer_dst']}" if "outer_dst" in probe else ""
        ms = f" after {probe['ms']} ms" if "ms" in probe else ""
        lines.append(f"   data path  a probe with this 5-tuple was seen {probe['seen']}{extra}{ms}")
    for note in result.notes:
        lines.append(f"   note       {note}")
    if result.chosen:
        lines.append(f"5. segments   [{', '.join(result.chosen)}]")
    for hop in result.hops:
        what = hop.behaviour or "unknown behaviour"
        to = f" → pod {hop.delivers_to}" if hop.delivers_to else ""
        detail = f" ({hop.detail})" if hop.detail else ""
        lines.append(f"   {hop.sid}: {what} on {hop.node or 'an unknown node'}{detail}{to}")
    if result.final:
        final = result.final
        rewrite = (
            f", port {flow['dport']}→{final['port_seen']} rewritten in the pod"
            if final["rewritten"]
            else ""
        )
        lines.append(
            f"6. arrives at {final['pod']} on {final['node']}, addressed to "
            f"[{final['address_seen']}]:{flow['dport']}{rewrite}; it answers from "
            f"{flow['dst']} (no NAT on the way)"
        )
    return "\n".join(lines)


def register(commands: Any) -> None:
    """Add `trace` to the `srv6ctl` subparsers."""
    trace_ = commands.add_parser("trace", help="the path one flow takes (SIDs, nodes, pod)")
    trace_.add_argument("src", metavar="SRC", help="source pod (name or address)")
    trace_.add_argument("dst", metavar="DST", help="pod, service (name or ns/name) or address")
    trace_.add_argument("--port", type=int, default=80, help="destination port (default 80)")
    trace_.add_argument("--sport", type=int, default=40000, help="source port (default 40000)")
    trace_.add_argument("--proto", choices=("tcp", "udp"), default="tcp")
    trace_.add_argument("-4", dest="family", action="store_const", const=4, default=6)
    trace_.add_argument(
        "--no-probe",
        dest="probe",
        action="store_false",
        help="do not send the one probe packet (kernel route lookup only)",
    )
    trace_.add_argument("--json", action="store_true")
    trace_.add_argument("--state-dir", default=os.environ.get("SRV6CTL_LAB_DIR", DEFAULT_STATE_DIR))
    trace_.set_defaults(func=_trace)


def _trace(args: argparse.Namespace) -> int:
    # Lazy (the docstring): the topology loads the lab and the dataplane model.
    from srv6ctl.lab.netns import LabError
    from srv6ctl.observe.agentview import AgentUnavailable
    from srv6ctl.verify.topology import from_lab

    try:
        topo, _ = from_lab(args.state_dir)
        result = trace(
            topo,
            args.src,
            args.dst,
            port=args.port,
            sport=args.sport,
            proto=args.proto,
            family=args.family,
            probe=args.probe,
        )
    except (LabError, AgentUnavailable, ValueError, OSError) as err:
        print(f"trace: {err}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(asdict(result)))
    else:
        print(render(result))
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m srv6ctl.trace ...` (the same as `srv6ctl trace ...`)."""
    parser = argparse.ArgumentParser(prog="srv6ctl")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["trace", *(sys.argv[1:] if argv is None else argv)])
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
