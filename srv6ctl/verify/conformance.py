"""RFC 8986 behaviour of every node's SIDs, checked with crafted packets on the wire.

Per node, crafted frames enter through the injector (the lab's probe host on the
underlay) and taps on every node's uplink and every pod's node-side veth record where they
went (on a VPP node, at those links' far ends: VPP sends past the kernel's taps, see
srv6ctl.verify.packets). What is checked, and against what:

- End (`L::1`, RFC 8986 §4.1): a packet with Segments Left 1 leaves the node with Segments
  Left 0, the destination set to the next segment, the hop limit decremented by one and
  the SRH and the inner packet otherwise unchanged.
- End.DT6 (`L::6`, §4.6) and End.DX6 (`L::1:k`, §4.4; End.DX4 `L::4:k`, §4.5 in
  dual-stack): the inner packet, with or without an SRH (Segments Left 0) and with the
  reduced encapsulation (no SRH), reaches exactly the pod it should, unchanged but for one
  hop of hop limit/TTL. End.DX6 is given an inner destination that is not the pod's own
  address where it can (the service's ClusterIP for a backend): cross-connecting must not
  depend on the inner destination, which a lookup would.
- H.Encaps / H.Encaps.Red (§5.1, §5.2) from a pod: the outer source is the node's
  encapsulation source, the outer destination the policy's first SID, the SRH (when the
  mode puts one) lists the segments in reverse order with Segments Left = Last Entry =
  n - 1, and with the reduced mode and one SID there is no SRH at all.
- Malformed SRHs (RFC 8754 §4.3.1.1, §4.3.2; RFC 8986 §4.1) are dropped, not forwarded:
  Segments Left greater than Last Entry, a Last Entry past the header's length, a header
  cut short, a decapsulating SID given an upper-layer header that is not IPv6, and
  Segments Left 0 at an End SID. "Dropped" means seen on no uplink and at no pod, while
  the well-formed packet to the same SID was forwarded.
"""

from __future__ import annotations

import ipaddress
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrSegmentRouting
from scapy.layers.l2 import Ether
from scapy.packet import Packet, Raw

from srv6ctl.dataplane.model import EncapMode, IPv6Address, SrPolicy
from srv6ctl.observe.netinfo import gateway_mac, link_mac
from srv6ctl.verify.packets import Capture, Seen, Tap, marker
from srv6ctl.verify.report import Report
from srv6ctl.verify.topology import NodeInfo, PodInfo, Topology

GROUP = "conformance"
DISCARD_PORT = 9  # RFC 863: whatever reaches a pod there is dropped by it, harmlessly
PROBE_V4 = ipaddress.IPv4Address("198.51.100.254")  # TEST-NET-2: inner IPv4 source
NH_IPV6, NH_IPV4, NH_ROUTING, NH_UDP = 41, 4, 43, 17
SERVICE_FLOWS = 12

Verdict = tuple[bool, str]


@dataclass
class Probe:
    """One crafted packet and what must become of it."""

    name: str
    send: Callable[[], None]
    mark: bytes
    judge: Callable[[list[Seen]], Verdict]
    expected_frames: int = 1
    more_marks: tuple[bytes, ...] = ()  # a probe of several packets (one flow each)
    judge_all: Callable[[list[list[Seen]]], Verdict] | None = None


# --- packet helpers -----------------------------------------------------------------------


def inner6(src: Any, dst: Any, mark: bytes, hlim: int = 64) -> Packet:
    return (
        IPv6(src=str(src), dst=str(dst), hlim=hlim)
        / UDP(sport=4242, dport=DISCARD_PORT)
        / Raw(mark)
    )


def inner4(src: Any, dst: Any, mark: bytes) -> Packet:
    return IP(src=str(src), dst=str(dst), ttl=64) / UDP(sport=4242, dport=DISCARD_PORT) / Raw(mark)


def split(data: bytes) -> tuple[bytes, bytes | None, bytes]:
    """An Ethernet frame's outer IPv6 header, its SRH (or None) and what follows."""
    ip6 = data[14:54]
    rest = data[54:]
    if ip6[6] == NH_ROUTING and len(rest) >= 8:
        length = (rest[1] + 1) * 8
        return ip6, rest[:length], rest[length:]
    return ip6, None, rest


def ip_length(packet: bytes) -> int:
    """The length an IP packet says it has (frames may carry padding after it)."""
    if packet and packet[0] >> 4 == 6:
        return 40 + int(struct.unpack_from("!H", packet, 4)[0])
    return int(struct.unpack_from("!H", packet, 2)[0])


def hop_delta(got: bytes, sent: bytes) -> tuple[bool, int]:
    """(same packet but for hop limit/TTL and the IPv4 checksum, hops taken)."""
    got = got[: ip_length(got)]
    if got[0] >> 4 == 6:
        same = got[:7] + got[8:] == sent[:7] + sent[8:]
        return same, sent[7] - got[7]
    same = got[:8] + got[9:10] + got[12:] == sent[:8] + sent[9:10] + sent[12:]
    return same, sent[8] - got[8]


def describe(seen: list[Seen]) -> str:
    if not seen:
        return "seen nowhere"
    return "seen at " + ", ".join(f"{s.tap} ({'out' if s.outgoing else 'in'})" for s in seen)


def delivered_to(seen: list[Seen], tap: str) -> list[Seen]:
    return [s for s in seen if s.tap == tap and s.outgoing]


# --- the checks ----------------------------------------------------------------------------


class Conformance:
    def __init__(self, topo: Topology, report: Report) -> None:
        self.topo = topo
        self.report = report
        self.capture = Capture()
        self.injector: Tap | None = None
        self.pod_taps: dict[str, Tap] = {}

    def run(self) -> None:
        topo = self.topo
        try:
            for node in topo.nodes:
                wire = node.uplink_wire()
                self.capture.add(wire.netns, wire.interface, _uplink_tap(node), wire.far)
                for pod in topo.pods_on(node.name):
                    if pod.host_ifname:
                        wire = node.pod_wire(pod)
                        self.capture.add(wire.netns, wire.interface, _pod_tap(pod), wire.far)
            injector = topo.injector
            self.injector = Tap(injector.netns, injector.interface, "injector")
            probes: list[Probe] = []
            negatives: list[Probe] = []
            for node in topo.nodes:
                probes += self._end(node)
                probes += self._decap(node)
                probes += self._encap(node)
                probes += self._service_encap(node)
                negatives += self._malformed(node)
            self._run_batch(probes, timeout=2.0)
            self._run_batch(negatives, timeout=0.6)
        finally:
            self.capture.close()
            if self.injector is not None:
                self.injector.close()
            for tap in self.pod_taps.values():
                tap.close()

    def _run_batch(self, probes: list[Probe], timeout: float) -> None:
        if not probes:
            return
        started = time.monotonic()
        results = self._judge_batch(probes, timeout)
        # A first packet can die in neighbour resolution on a busy machine, which is not
        # the behaviour under test: a probe that expected frames and saw none gets one more
        # try. Negative probes (expect nothing) are never retried.
        retry = [i for i, (ok, _) in enumerate(results) if not ok and probes[i].expected_frames]
        if retry:
            again = self._judge_batch([probes[i] for i in retry], timeout)
            for i, result in zip(retry, again, strict=True):
                results[i] = result
        for probe, (passed, detail) in zip(probes, results, strict=True):
            self.report.add(GROUP, probe.name, passed, detail)
        self.report.figures.setdefault("conformance_seconds", 0.0)
        self.report.figures["conformance_seconds"] += time.monotonic() - started

    def _judge_batch(self, probes: list[Probe], timeout: float) -> list[tuple[bool, str]]:
        self.capture.drain()
        for probe in probes:
            probe.send()
        expected = sum(p.expected_frames for p in probes)
        found = self.capture.collect(
            [m for p in probes for m in (p.mark, *p.more_marks)],
            timeout=timeout,
            expect=expected if expected else None,
        )
        self.report.figures.setdefault("conformance_probes", 0)
        self.report.figures["conformance_probes"] += len(probes)
        results: list[tuple[bool, str]] = []
        for probe in probes:
            try:
                if probe.judge_all is not None:
                    seen = [found[m] for m in (probe.mark, *probe.more_marks)]
                    results.append(probe.judge_all(seen))
                else:
                    results.append(probe.judge(found[probe.mark]))
            except Exception as err:  # a judge tripping over an odd frame is a failure
                results.append((False, f"{type(err).__name__}: {err}"))
        return results

    def _inject(self, node: NodeInfo, packet: Packet) -> Callable[[], None]:
        injector = self.topo.injector
        frame = bytes(Ether(src=injector.mac, dst=injector.node_macs[node.name]) / packet)

        def send() -> None:
            assert self.injector is not None
            self.injector.send([frame])

        return send

    # --- End -------------------------------------------------------------------------------

    def _next_hop_node(self, node: NodeInfo) -> NodeInfo:
        """Another node (its End.DT6 is the next segment), or this one in a 1-node setup."""
        others = [n for n in self.topo.nodes if n.name != node.name and n.dt6_sid]
        return others[0] if others else node

    def _end(self, node: NodeInfo) -> list[Probe]:
        end, source = node.end_sid, self.topo.injector.source_v6
        if end is None:
            self.report.add(GROUP, f"End on {node.name}", False, "the agent programs no End SID")
            return []
        target_node = self._next_hop_node(node)
        targets = self.topo.pods_on(target_node.name)
        if target_node.dt6_sid is None or not targets:
            self.report.skip(GROUP, f"End on {node.name}", "no End.DT6 with a pod to aim at")
            return []
        pod = targets[0]
        next_sid = target_node.dt6_sid
        mark = marker()
        inner = inner6(source, pod.ipv6, mark)
        srh = IPv6ExtHdrSegmentRouting(addresses=[str(next_sid), str(end)], segleft=1, nh=NH_IPV6)
        packet = IPv6(src=str(source), dst=str(end), hlim=64) / srh / inner
        sent_srh = bytes(srh)  # built alone: `/` above composed copies
        sent_inner = bytes(inner)

        def judge(seen: list[Seen]) -> Verdict:
            if target_node is node:
                return _judge_delivery(seen, _pod_tap(pod), sent_inner, hops=(1,))
            out = [s for s in seen if s.tap == _uplink_tap(node) and s.outgoing]
            if not out:
                return False, f"not forwarded: {describe(seen)}"
            ip6, got_srh, rest = split(out[0].data)
            problems = []
            if ipaddress.IPv6Address(ip6[24:40]) != next_sid:
                problems.append(f"destination {ipaddress.IPv6Address(ip6[24:40])} != {next_sid}")
            if ip6[7] != 63:
                problems.append(f"hop limit {ip6[7]} (sent 64)")
            if got_srh is None:
                return False, "the SRH is gone"
            if got_srh[3] != 0:
                problems.append(f"segments left {got_srh[3]} (want 0)")
            expected_srh = bytearray(sent_srh)
            expected_srh[3] = 0
            if got_srh != bytes(expected_srh):
                problems.append("SRH fields other than segments left changed")
            same, _ = hop_delta(rest, sent_inner)
            if not same:
                problems.append("inner packet changed")
            at_pod = delivered_to(seen, _pod_tap(pod))
            if not at_pod:
                problems.append(f"End.DT6 on {target_node.name} did not deliver it to {pod.short}")
            if problems:
                return False, "; ".join(problems)
            return True, (
                f"SL 1→0, DA {end}→{next_sid}, hop limit 64→63, SRH otherwise unchanged; "
                f"then End.DT6 on {target_node.name} delivered it to {pod.short}"
            )

        return [
            Probe(
                f"End on {node.name} ({end})",
                self._inject(node, packet),
                mark,
                judge,
                expected_frames=2 if target_node is not node else 1,
            )
        ]

    # --- decapsulation: End.DT6, End.DX6, End.DX4 -----------------------------------------

    def _decap(self, node: NodeInfo) -> list[Probe]:
        probes: list[Probe] = []
        source = self.topo.injector.source_v6
        pods = [p for p in self.topo.pods_on(node.name) if p.host_ifname and p.ipv6]
        dt6 = node.dt6_sid
        if dt6 is not None and pods:
            pod = pods[0]
            for with_srh in (False, True):
                mark = marker()
                inner = inner6(source, pod.ipv6, mark)
                probes.append(
                    self._decap_probe(
                        node,
                        f"End.DT6 on {node.name} ({dt6}){' with SRH' if with_srh else ''}",
                        dt6,
                        inner,
                        mark,
                        pod,
                        with_srh,
                        hops=(1,),
                    )
                )
        for pod in pods:
            sid = node.pod_sid(pod, 6)
            if sid is None:
                self.report.add(
                    GROUP, f"End.DX6 of {pod.short}", False, f"no End.DX6 SID for {pod.ipv6}"
                )
                continue
            inner_dst = self._cluster_ip_of(pod, 6) or pod.ipv6
            mark = marker()
            probes.append(
                self._decap_probe(
                    node,
                    f"End.DX6 on {node.name} ({sid}) → {pod.short}",
                    sid,
                    inner6(source, inner_dst, mark),
                    mark,
                    pod,
                    with_srh=True,
                    hops=(0, 1),
                )
            )
            if pod.ipv4 is None:
                continue
            sid4 = node.pod_sid(pod, 4)
            if sid4 is None:
                self.report.add(
                    GROUP, f"End.DX4 of {pod.short}", False, f"no End.DX4 SID for {pod.ipv4}"
                )
                continue
            mark = marker()
            inner_dst4 = self._cluster_ip_of(pod, 4) or pod.ipv4
            probes.append(
                self._decap_probe(
                    node,
                    f"End.DX4 on {node.name} ({sid4}) → {pod.short}",
                    sid4,
                    inner4(PROBE_V4, inner_dst4, mark),
                    mark,
                    pod,
                    with_srh=False,
                    hops=(0, 1),
                )
            )
        return probes

    def _cluster_ip_of(self, pod: PodInfo, family: int) -> Any:
        for service in self.topo.services:
            if pod.name in service.backends:
                return service.cluster_ip(family)
        return None

    def _decap_probe(
        self,
        node: NodeInfo,
        name: str,
        sid: IPv6Address,
        inner: Packet,
        mark: bytes,
        pod: PodInfo,
        with_srh: bool,
        hops: tuple[int, ...],
    ) -> Probe:
        source = self.topo.injector.source_v6
        nh = NH_IPV4 if IP in inner and IPv6 not in inner else NH_IPV6
        if with_srh:
            srh = IPv6ExtHdrSegmentRouting(addresses=[str(sid)], segleft=0, nh=nh)
            packet = IPv6(src=str(source), dst=str(sid), hlim=64) / srh / inner
        else:
            packet = IPv6(src=str(source), dst=str(sid), hlim=64, nh=nh) / inner
        sent = bytes(inner)

        inner_dst = inner[IPv6].dst if IPv6 in inner else inner[IP].dst

        def judge(seen: list[Seen]) -> Verdict:
            passed, detail = _judge_delivery(seen, _pod_tap(pod), sent, hops)
            return passed, f"{detail}; inner destination {inner_dst}"

        return Probe(name, self._inject(node, packet), mark, judge)

    # --- headend: H.Encaps(.Red) from a pod -------------------------------------------------

    def _encap(self, node: NodeInfo) -> list[Probe]:
        """Pod-to-pod traffic to another node: one packet out of a local pod, towards a
        remote pod (or, in node mode where remote pods are unknown, the first pod address
        of a remote node's prefix), must leave through the node policy that steers it."""
        local = [p for p in self.topo.pods_on(node.name) if p.host_ifname and p.ipv6]
        if not local:
            return []
        pod = local[0]
        remote = [p for p in self.topo.pods if p.node != node.name and p.ipv6]
        target_name, target = "", None
        if remote:
            target_name, target = remote[0].short, remote[0].ipv6
        else:
            for steering in sorted(node.agent.desired.steerings, key=lambda s: str(s.prefix)):
                policy = node.agent.desired_policy(steering.bsid)
                if (
                    policy is not None
                    and policy.owner.startswith("node/")
                    and (steering.prefix.version == 6)
                ):
                    target = steering.prefix[self.topo.plan.pod_indexes.start]
                    target_name = f"a pod address of {policy.owner.split('/')[1]}"
                    break
        if target is None:
            return []
        policy = node.agent.steering_policy(target)
        if policy is None:
            self.report.add(GROUP, f"H.Encaps on {node.name}", False, f"no policy steers {target}")
            return []
        mark = marker()
        inner = inner6(pod.ipv6, target, mark)
        sent = bytes(inner)
        encap_source = node.agent.desired.encap_source

        def judge(seen: list[Seen]) -> Verdict:
            out = [s for s in seen if s.tap == _uplink_tap(node) and s.outgoing]
            if not out:
                return False, f"not sent to the underlay: {describe(seen)}"
            return _judge_encap(out[0].data, policy, encap_source, sent)

        return [
            Probe(
                f"{_mode_name(policy)} on {node.name} ({pod.short} → {target_name})",
                self._from_pod(node, pod, inner),
                mark,
                judge,
                expected_frames=2 if remote else 1,
            )
        ]

    def _service_encap(self, node: NodeInfo) -> list[Probe]:
        """Service traffic from a pod: each flow leaves encapsulated towards one of the
        service policy's SIDs, or (its backend being local) reaches that backend."""
        local = [p for p in self.topo.pods_on(node.name) if p.host_ifname and p.ipv6]
        clients = [p for p in local if p.role == "client"] or local
        probes = []
        for service in self.topo.services:
            policy = node.agent.policy(f"svc/{service.name}/v6")
            if policy is None or service.cluster_ipv6 is None or not clients:
                continue
            if node.name in service.host_endpoints:
                continue  # it ends at this node's own stack: connectivity checks that one
            pod = clients[0]
            flows = []
            for sport in range(33000, 33000 + SERVICE_FLOWS):
                mark = marker()
                inner = (
                    IPv6(src=str(pod.ipv6), dst=str(service.cluster_ipv6), hlim=64)
                    / UDP(sport=sport, dport=DISCARD_PORT)
                    / Raw(mark)
                )
                flows.append((mark, inner))
            sends = [self._from_pod(node, pod, inner) for _, inner in flows]
            local_backends = {
                _pod_tap(p): p for p in self.topo.pods_on(node.name) if p.name in service.backends
            }
            encap_source = node.agent.desired.encap_source
            sent = [bytes(inner) for _, inner in flows]

            def judge_all(
                seen: list[list[Seen]],
                policy: SrPolicy = policy,
                encap_source: IPv6Address | None = encap_source,
                sent: list[bytes] = sent,
                local_backends: dict[str, PodInfo] = local_backends,
            ) -> Verdict:
                encapsulated, local_hits, problems = 0, 0, []
                for frames, inner in zip(seen, sent, strict=True):
                    out = [s for s in frames if s.tap == _uplink_tap(node) and s.outgoing]
                    here = [s for s in frames if s.outgoing and s.tap in local_backends]
                    if out:
                        ok, why = _judge_encap(out[0].data, policy, encap_source, inner)
                        encapsulated += ok
                        if not ok:
                            problems.append(why)
                    elif here:
                        local_hits += 1
                    else:
                        problems.append(f"a flow was lost: {describe(frames)}")
                if problems:
                    return False, f"{len(problems)} flow(s) wrong: {problems[0]}"
                return True, (
                    f"{encapsulated} flow(s) left {_mode_name(policy)} to a backend SID, "
                    f"{local_hits} reached a local backend directly"
                )

            def send_all(sends: list[Callable[[], None]] = sends) -> None:
                for send in sends:
                    send()

            probes.append(
                Probe(
                    f"{_mode_name(policy)} of service {service.name} on {node.name}",
                    send_all,
                    flows[0][0],
                    lambda seen: (False, "unused"),
                    expected_frames=len(flows),
                    more_marks=tuple(m for m, _ in flows[1:]),
                    judge_all=judge_all,
                )
            )
        return probes

    def _from_pod(self, node: NodeInfo, pod: PodInfo, packet: Packet) -> Callable[[], None]:
        """Send `packet` out of the pod's eth0, as the pod's own stack would: to the MAC
        its default route resolves to (the node's veth end, or VPP's port on it)."""
        tap = self.pod_taps.get(pod.name)
        if tap is None:
            tap = self.pod_taps[pod.name] = Tap(pod.netns, pod.ifname, f"pod {pod.short}")
        gateway = gateway_mac(pod.netns, pod.ifname) or link_mac(node.netns, pod.host_ifname)
        frame = bytes(Ether(src=link_mac(pod.netns, pod.ifname), dst=gateway) / packet)

        def send() -> None:
            tap.send([frame])

        return send

    # --- malformed SRHs ---------------------------------------------------------------------

    def _malformed(self, node: NodeInfo) -> list[Probe]:
        end, dt6 = node.end_sid, node.dt6_sid
        if end is None:
            return []
        source = self.topo.injector.source_v6
        target_node = self._next_hop_node(node)
        pods = self.topo.pods_on(target_node.name)
        if target_node.dt6_sid is None or not pods:
            return []
        next_sid, pod = target_node.dt6_sid, pods[0]
        variants: list[tuple[str, Callable[[bytes], bytes]]] = []

        def srh_packet(mark: bytes, segleft: int, lastentry: int | None = None) -> bytes:
            srh = IPv6ExtHdrSegmentRouting(
                addresses=[str(next_sid), str(end)], segleft=segleft, nh=NH_IPV6
            )
            if lastentry is not None:
                srh.lastentry = lastentry
            return bytes(
                IPv6(src=str(source), dst=str(end), hlim=64) / srh / inner6(source, pod.ipv6, mark)
            )

        variants.append(("segments left > last entry", lambda m: srh_packet(m, 5)))
        variants.append(("last entry past the header", lambda m: srh_packet(m, 1, lastentry=7)))

        def truncated(mark: bytes) -> bytes:
            whole = srh_packet(mark, 1)
            cut = bytearray(whole[: 40 + 24])  # the SRH's 8 fixed bytes and one of two SIDs
            struct.pack_into("!H", cut, 4, 24)
            return bytes(cut) + mark  # the marker after the cut, so a leak is still seen

        variants.append(("SRH cut short", truncated))
        variants.append(("segments left 0 at End", lambda m: srh_packet(m, 0)))
        probes = []
        for label, build in variants:
            mark = marker()
            raw = build(mark)
            probes.append(self._negative(node, f"{label} → dropped at {node.name}", raw, mark))
        if dt6 is not None:
            local = [p for p in self.topo.pods_on(node.name) if p.ipv6]
            if local:
                mark = marker()
                srh = IPv6ExtHdrSegmentRouting(addresses=[str(dt6)], segleft=0, nh=NH_UDP)
                raw = bytes(
                    IPv6(src=str(source), dst=str(dt6), hlim=64)
                    / srh
                    / inner6(source, local[0].ipv6, mark)
                )
                probes.append(
                    self._negative(
                        node, f"End.DT6 with next header UDP → dropped at {node.name}", raw, mark
                    )
                )
        return probes

    def _negative(self, node: NodeInfo, name: str, raw: bytes, mark: bytes) -> Probe:
        injector = self.topo.injector
        frame = bytes(Ether(src=injector.mac, dst=injector.node_macs[node.name])) + raw

        def send() -> None:
            assert self.injector is not None
            self.injector.send([frame])

        def judge(seen: list[Seen]) -> Verdict:
            leaked = [s for s in seen if s.outgoing]
            if leaked:
                return False, f"forwarded: {describe(leaked)}"
            return True, "dropped: seen on no uplink and at no pod"

        return Probe(name, send, mark, judge, expected_frames=0)


# --- judging --------------------------------------------------------------------------------


def _uplink_tap(node: NodeInfo) -> str:
    return f"{node.name}/{node.uplink}"


def _pod_tap(pod: PodInfo) -> str:
    return f"{pod.node}/pod {pod.short}"


def _mode_name(policy: SrPolicy) -> str:
    return "H.Encaps.Red" if policy.mode == EncapMode.ENCAP_RED else "H.Encaps"


def _judge_delivery(seen: list[Seen], tap: str, sent: bytes, hops: tuple[int, ...]) -> Verdict:
    at_pod = delivered_to(seen, tap)
    elsewhere = [s for s in seen if s.outgoing and s.tap != tap]
    if not at_pod:
        return False, f"not delivered to {tap.split(' ', 1)[-1]}: {describe(seen)}"
    if elsewhere:
        return False, f"also {describe(elsewhere)}"
    same, delta = hop_delta(at_pod[0].data[14:], sent)
    if not same:
        return False, "delivered, but the inner packet changed"
    if delta not in hops:
        return False, f"delivered unchanged, but {delta} hops of hop limit/TTL taken"
    return True, f"inner packet delivered unchanged to {tap.split(' ', 1)[-1]} (hop limit -{delta})"


def _judge_encap(
    data: bytes, policy: SrPolicy, encap_source: IPv6Address | None, sent: bytes
) -> Verdict:
    ip6, srh, rest = split(data)
    outer_src = ipaddress.IPv6Address(ip6[8:24])
    outer_dst = ipaddress.IPv6Address(ip6[24:40])
    problems = []
    if encap_source is not None and outer_src != encap_source:
        problems.append(f"outer source {outer_src} != encap source {encap_source}")
    lists = [sl.segments for sl in policy.segment_lists]
    chosen = next((s for s in lists if s[0] == outer_dst), None)
    if chosen is None:
        problems.append(f"outer destination {outer_dst} is no list's first SID")
        chosen = lists[0]
    reduced = policy.mode == EncapMode.ENCAP_RED
    if reduced and len(chosen) == 1:
        if srh is not None:
            problems.append("an SRH on a reduced encapsulation of one SID")
        if ip6[6] != NH_IPV6 and ip6[6] != NH_IPV4:
            problems.append(f"outer next header {ip6[6]}")
        srh_text = "no SRH (reduced, one SID)"
    else:
        if srh is None:
            return False, "no SRH where the mode needs one"
        addresses = [
            ipaddress.IPv6Address(srh[8 + 16 * i : 24 + 16 * i])
            for i in range((len(srh) - 8) // 16)
        ]
        # RFC 8986 §5.1/§5.2: Segment List[0] is the last segment; the reduced form
        # leaves the first SID out of the SRH (it is only in the destination).
        want = list(reversed(chosen if not reduced else chosen[1:]))
        if addresses != want:
            problems.append(f"SRH lists {addresses}, want {want}")
        if srh[3] != len(chosen) - 1:
            problems.append(f"segments left {srh[3]} != {len(chosen) - 1}")
        if srh[4] != len(want) - 1:
            problems.append(f"last entry {srh[4]} != {len(want) - 1}")
        srh_text = f"SRH {[str(a) for a in addresses]}, SL {srh[3]}"
    same, delta = hop_delta(rest, sent)
    if not same:
        problems.append("the inner packet changed")
    if problems:
        return False, "; ".join(problems)
    return True, (
        f"outer {outer_src} → {outer_dst}, {srh_text}, inner unchanged (hop limit -{delta})"
    )
