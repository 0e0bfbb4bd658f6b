"""Convergence: how long until a new backend gets flows, and a removed one gets none.

The lab plays the EndpointSlice controller, and verify leaves the lab as it found it:

1. scale up: a new backend pod (through CNI) joins the slices; the clock runs from the
   slice write until fresh flows (new source ports) from some node reach it;
2. delete that pod again, in Kubernetes' order: its endpoint leaves the slices first
   (the pod is terminating and still serving), and the clock stops when no flow from any
   node reaches it any more — a flow that still does proves a node has not converged;
   only then is the pod deleted (CNI DEL). Its flows are known in advance (fixed source
   ports, mapped before the change), and every other flow must stay where it was:
   resilient nexthop groups move only the removed member's buckets.

3. at scale (issue 17): the service grows to SCALE_BACKENDS backends; every node's
   buckets for it (the kernel's resilient group, VPP's load balance, as the dataplane has
   them) give each backend its weight's share within one bucket, and new flows from
   every client node follow; then the service shrinks back.

Adding first and removing the same pod keeps the original backends *and* their share of
the groups' buckets: the other order (remove an original backend, add a new one) would
leave the new one only the buckets that were idle when it joined, for as long as the
groups' idle timer (FINDINGS.md, finding 2), and a second verify right after would find
the spread off. Both times include the lab source's polling interval (0.5 s): the lab's
"API watch latency".
"""

from __future__ import annotations

import ipaddress
import random
import time
from collections import Counter
from typing import Any

from srv6ctl.dataplane.vpp import VppBackend
from srv6ctl.lab.objects import SERVICE_HTTP_PORT
from srv6ctl.observe.netinfo import group_buckets
from srv6ctl.verify.connectivity import _spread_tolerance
from srv6ctl.verify.flows import answers, udp_flows
from srv6ctl.verify.report import Report
from srv6ctl.verify.topology import PodInfo, ServiceInfo, Topology

GROUP = "convergence"
PORTS_PER_CLIENT = 48
FRESH_BATCH = 16
FRESH_ROUNDS = 6
TIMEOUT = 20.0
SCALE_BACKENDS = 40
SCALE_FLOWS = 600  # new UDP flows at scale, over the client nodes: 15 a backend
# Rendering and programming 37 more pods takes minutes in a VM without KVM (Python there
# runs 15-20 times slower); the agents answer nothing meanwhile.
SCALE_CONVERGE_TIMEOUT = 300.0


def _vpp_weights(backend: Any, node: Any, service: ServiceInfo) -> dict[tuple[Any, ...], int]:
    """segments → weight of the service's policy as VPP holds it (no buckets in VPP)."""
    desired = node.agent.policy(f"svc/{service.name}/v6")
    if desired is None:
        return {}
    held = next((p for p in backend.dump().policies if p.bsid == desired.bsid), None)
    return {} if held is None else {sl.segments: sl.weight for sl in held.segment_lists}


class Convergence:
    def __init__(self, topo: Topology, lab: Any, report: Report) -> None:
        self.topo = topo
        self.lab = lab
        self.report = report

    def _clients(self) -> list[PodInfo]:
        """One client pod per node that has one: every node's policy is measured."""
        chosen: dict[str, PodInfo] = {}
        for pod in self.topo.pods:
            if pod.role == "client" and pod.ipv6:
                chosen.setdefault(pod.node, pod)
        return list(chosen.values())

    def _placement(
        self, clients: list[PodInfo], ip: Any, sports: dict[str, list[int]]
    ) -> dict[tuple[str, int], str]:
        placed = {}
        for client in clients:
            flows = udp_flows(
                client.netns, ip, SERVICE_HTTP_PORT, sports=sports[client.name], timeout=1.0
            )
            for answer in answers(flows):
                placed[(client.name, answer.sport)] = answer.pod
        return placed

    def run(self) -> None:
        service = next((s for s in self.topo.services if s.backends), None)
        if service is None or service.cluster_ipv6 is None:
            self.report.skip(GROUP, "scale up and down", "no service with backends")
            return
        clients = self._clients()
        if not clients:
            self.report.skip(GROUP, "scale up and down", "no client pod")
            return
        short = service.name.split("/", 1)[-1]
        (pod,) = self.lab.add_backends(short, 1, publish=False)
        try:
            self._scale_up(service, clients, pod)
            self._scale_down(service, clients, pod)
        finally:
            # Whatever failed above, the lab goes back to the shape verify found it in.
            self._remove([pod], short)
        self._at_scale(service, clients)

    def _remove(self, pods: list[Any], short: str, timeout: float | None = None) -> None:
        gone = {p.name for p in pods}
        left = [p for p in self.lab.state.pods if p.name in gone]
        if left:
            self.lab.withdraw_backends(short, left)
            self.lab.delete_pods(left)
        if timeout is None:
            self.lab.wait_converged(self.lab.state)
        else:
            self.lab.wait_converged(self.lab.state, timeout=timeout)
        self.topo.refresh()

    def _at_scale(self, service: ServiceInfo, clients: list[PodInfo]) -> None:
        """SCALE_BACKENDS backends: each one's share of every node's buckets is within one
        bucket of its weight's share, and new flows follow (the VPP lab once gave the first
        of 40 lists 11 of 128 buckets and every other 3: 58 of 800 flows, not 20)."""
        short = service.name.split("/", 1)[-1]
        label = (
            f"at {SCALE_BACKENDS} backends of {service.name}, every node's buckets give "
            "each its weight's share within one bucket, and new flows follow"
        )
        grow = SCALE_BACKENDS - len(service.backends)
        if grow <= 0:
            self.report.skip(GROUP, label, f"{service.name} has {SCALE_BACKENDS} already")
            return
        added = self.lab.add_backends(short, grow)
        try:
            self.lab.wait_converged(self.lab.state, timeout=SCALE_CONVERGE_TIMEOUT)
            self.topo.refresh()
            problems, shown = self._scaled_buckets(service)
            problems += self._scaled_flows(service, clients)
            self.report.add(GROUP, label, not problems, "; ".join(problems[:3]) or shown)
        finally:
            self._remove(added, short, SCALE_CONVERGE_TIMEOUT)

    def _scaled_buckets(self, service: ServiceInfo) -> tuple[list[str], str]:
        problems: list[str] = []
        shown: list[str] = []
        vpp = self._vpp_backends()
        try:
            for node in self.topo.nodes:
                policy = self.topo.policy(node.name, service.name, 6)
                if policy is None:
                    problems.append(f"{node.name}: no policy for {service.name}")
                    continue
                if node.name in vpp:
                    held = vpp[node.name].buckets(policy.bsid)
                else:
                    held = group_buckets(node.netns, f"{service.cluster_ipv6}/128")
                total = sum(held.values())
                weights = {sl.segments: sl.weight for sl in policy.segment_lists}
                if len(weights) != SCALE_BACKENDS:
                    problems.append(f"{node.name}: {len(weights)} segment lists")
                    continue
                counts = []
                for segments, weight in weights.items():
                    expected = total * weight / sum(weights.values())
                    got = held.get(segments, 0)
                    counts.append(got)
                    if abs(got - expected) > 1:
                        problems.append(
                            f"{node.name}: {segments[-1]} holds {got} of {total} buckets, "
                            f"expected {expected:.1f}"
                        )
                shown.append(f"{node.name} {min(counts)} to {max(counts)} of {total}")
        finally:
            for backend in vpp.values():
                backend.close()
        return problems, "buckets a backend: " + ", ".join(shown)

    def _scaled_flows(self, service: ServiceInfo, clients: list[PodInfo]) -> list[str]:
        counts: Counter[str] = Counter()
        each = SCALE_FLOWS // len(clients)
        for client in clients:
            sports = random.sample(range(10000, 60000), each)
            found = udp_flows(
                client.netns, service.cluster_ipv6, SERVICE_HTTP_PORT, sports=sports, timeout=1.0
            )
            counts.update(a.pod for a in answers(found))
        total = sum(counts.values())
        share = 1 / SCALE_BACKENDS
        tolerance = _spread_tolerance(total, share)
        problems = [
            f"{pod}: {n} of {total} flows, expected {total * share:.0f}±{tolerance:.0f}"
            for pod, n in sorted(counts.items())
            if abs(n - total * share) > tolerance
        ]
        if len(counts) < SCALE_BACKENDS:
            problems.append(f"only {len(counts)} of {SCALE_BACKENDS} backends reached")
        if total < 0.9 * each * len(clients):
            problems.append(f"{total} of {each * len(clients)} flows answered")
        self.report.figures["scale_spread"] = {
            "backends": len(counts),
            "flows": total,
            "min": min(counts.values(), default=0),
            "max": max(counts.values(), default=0),
        }
        return problems

    def _scale_up(self, service: ServiceInfo, clients: list[PodInfo], pod: Any) -> None:
        """First the data plane (every node's group has the new SID as a member, read
        from the kernel), then a few rounds of fresh flows: few, because every flow keeps
        a bucket busy for the groups' idle timer, and only idle buckets go to a new member
        (FINDINGS.md, finding 2) — a verify that flooded the groups would starve the next
        one's new backend."""
        short = service.name.split("/", 1)[-1]
        located = self.topo.plan.pod_of_address(ipaddress.IPv6Address(pod.ipv6))
        assert located is not None
        sid = (self.topo.plan.pod_sid_dx6(*located),)
        prefix = f"{service.cluster_ipv6}/128"
        started = time.monotonic()
        self.lab.publish(short)
        buckets: dict[str, int | None] = {}
        vpp = self._vpp_backends()
        while time.monotonic() - started < TIMEOUT:
            groups = {
                n.name: _vpp_weights(vpp[n.name], n, service)
                if n.name in vpp
                else group_buckets(n.netns, prefix)
                for n in self.topo.nodes
            }
            buckets = {name: group.get(sid) for name, group in groups.items()}
            if all(count is not None for count in buckets.values()):
                break
            time.sleep(0.02)
        programmed = time.monotonic() - started
        for backend in vpp.values():
            backend.close()
        in_groups = all(count is not None for count in buckets.values())
        self.report.figures["add_programmed_ms"] = round(programmed * 1000)
        self.report.add(
            GROUP,
            f"new backend {pod.name} joins every node's group",
            in_groups,
            f"{programmed * 1000:.0f} ms after its endpoint joined the slices; buckets "
            + ", ".join(
                f"{n} {c}" + (" (VPP weight)" if n in vpp else "/128") for n, c in buckets.items()
            )
            if in_groups
            else f"missing after {TIMEOUT:.0f} s on "
            + ", ".join(n for n, c in buckets.items() if c is None),
        )
        reached, port = False, random.randrange(10000)
        for _ in range(FRESH_ROUNDS):
            for client in clients:
                batch = [10000 + (port + k) % 10000 for k in range(FRESH_BATCH)]
                port += FRESH_BATCH
                found = udp_flows(
                    client.netns, service.cluster_ipv6, SERVICE_HTTP_PORT, sports=batch, timeout=0.5
                )
                reached = reached or any(a.pod == pod.name for a in answers(found))
            if reached:
                break
            time.sleep(0.1)
        took = time.monotonic() - started
        if reached:
            self.report.figures["add_convergence_ms"] = round(took * 1000)
        starved = in_groups and not any(buckets.values())
        self.report.add(
            GROUP,
            f"new backend {pod.name} gets flows",
            reached,
            f"reached by new flows {took * 1000:.0f} ms after its endpoint joined the slices"
            if reached
            else "it holds no bucket on any node: every bucket was busy when it joined "
            "(FINDINGS.md, finding 2)"
            if starved
            else f"no new flow reached it ({FRESH_ROUNDS} rounds of {FRESH_BATCH} per client)",
        )
        self.lab.wait_converged(self.lab.state)

    def _vpp_backends(self) -> dict[str, Any]:
        """A connection to each VPP node's VPP (named in the lab's state), to read its
        policies' lists as VPP holds them: VPP's counterpart of the kernel's groups."""
        out = {}
        for node in self.topo.nodes:
            record = self.lab.state.node(node.name)
            if node.agent.dataplane == "vpp" and record.vpp_api_socket:
                out[node.name] = VppBackend(
                    record.vpp_api_socket, connect_timeout=10, client_name="srv6ctl-verify"
                )
        return out

    def _scale_down(self, service: ServiceInfo, clients: list[PodInfo], victim: Any) -> None:
        short = service.name.split("/", 1)[-1]
        ip = service.cluster_ipv6
        # Fresh ports each run: a port this run's predecessor kept busy sits in a bucket
        # the new backend could not take (FINDINGS.md, finding 2), so reused ports might
        # never reach it.
        base = random.randrange(20000, 60000 - PORTS_PER_CLIENT * len(clients))
        sports = {
            c.name: [base + PORTS_PER_CLIENT * i + k for k in range(PORTS_PER_CLIENT)]
            for i, c in enumerate(clients)
        }
        before = self._placement(clients, ip, sports)
        doomed = {flow for flow, pod in before.items() if pod == victim.name}
        started = time.monotonic()
        self.lab.withdraw_backends(short, [victim])
        remaining = set(doomed)
        while remaining and time.monotonic() - started < TIMEOUT:
            for client in clients:
                ports = [p for (c, p) in remaining if c == client.name]
                if not ports:
                    continue
                found = udp_flows(client.netns, ip, SERVICE_HTTP_PORT, sports=ports, timeout=0.5)
                for answer in answers(found):
                    if answer.pod != victim.name:
                        remaining.discard((client.name, answer.sport))
        took = time.monotonic() - started
        if doomed:
            self.report.figures["withdraw_convergence_ms"] = round(took * 1000)
            self.report.add(
                GROUP,
                f"removed backend {victim.name} gets no flow (from every node)",
                not remaining,
                f"{len(doomed)} of its flows moved to other backends {took * 1000:.0f} ms "
                "after its endpoint left the slices"
                if not remaining
                else f"{len(remaining)} flows still reached it after {TIMEOUT:.0f} s",
            )
        else:
            self.report.add(
                GROUP,
                f"removed backend {victim.name} gets no flow (from every node)",
                False,
                f"none of {len(before)} mapped flows reached it before its removal",
            )
        after = self._placement(clients, ip, sports)
        moved = [f for f, pod in before.items() if f not in doomed and after.get(f) != pod]
        if any(n.agent.dataplane == "vpp" for n in self.topo.nodes):
            # A property of resilient nexthop groups, which only the kernel backend has.
            self.report.skip(
                GROUP,
                "removing a backend moved only its own flows",
                "VPP has no resilient hashing (its policy load-balance rehashes when lists "
                f"change): {len(moved)} of {len(before) - len(doomed)} other flows moved",
            )
        else:
            self.report.add(
                GROUP,
                "removing a backend moved only its own flows",
                not moved,
                f"{len(before) - len(doomed)} other flows stayed on their backends"
                if not moved
                else f"{len(moved)} flows of other backends moved too",
            )
        self.lab.wait_converged(self.lab.state)
        self.lab.delete_pods([victim])
        self.lab.wait_converged(self.lab.state)
