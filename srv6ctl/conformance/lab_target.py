"""A lab node as the device under test: the SIDs our agent programmed, probed in place.

The other targets measure an implementation the suite configures itself; this one measures
what srv6ctl makes of it — the node's SIDs as the agent programmed them (its End `L::1`,
End.DT6 `L::6`, End.DT4 `L::4`, a pod's End.DX6 `L::1:k` and End.DX4 `L::4:k`), on the
kernel or the VPP dataplane, with the agent's settings. Nothing is programmed: a case whose
behaviour the agent does not program (End.X, End.T, the flavours, the headends' own
policies ...) is not applicable, saying so.

The testbed is the lab's own wiring (srv6ctl.verify's topology): probes enter from the
lab's external client (the probe host on the underlay, the near link), and what the node
sends is watched where verify watches it — its uplink and its pods' veths (on a VPP node
at their far ends: VPP sends past the kernel's taps) — as the far link. The plan's
addresses become the lab's: the tester is the probe, the DUT's near address the node's
InternalIP, the next segments lie in another node's locator (routed out of the uplink),
and the inner destinations of the decapsulating SIDs are one of the node's own pods.
"""

from __future__ import annotations

import dataclasses
import ipaddress

from srv6ctl.conformance.model import IPv6Address, Plan, SidSpec
from srv6ctl.conformance.targets import localsid_counters
from srv6ctl.conformance.testbed import Testbed
from srv6ctl.dataplane.model import EndDT4
from srv6ctl.verify.topology import NodeInfo, PodInfo, Topology, from_lab


class LabTarget:
    """Lab node `node` of the lab in `state_dir`, as its agent programmed it."""

    def __init__(self, state_dir: str, node: str) -> None:
        self.state_dir = state_dir
        topo, lab = from_lab(state_dir)
        self.topo: Topology = topo
        records = {n.name: n for n in lab.state.nodes}  # type: ignore[attr-defined]
        names = [n.name for n in topo.nodes]
        if node not in names:
            raise ValueError(f"--node {node}: the lab's nodes are {', '.join(names)}")
        self.node: NodeInfo = topo.node(node)
        self.vpp_api_socket: str | None = records[node].vpp_api_socket
        self.name = f"lab {node} ({self.node.agent.dataplane})"
        pods = [p for p in topo.pods_on(node) if p.ipv6 is not None]
        if not pods:
            raise ValueError(f"--node {node}: no pod on it to deliver to")
        self.pod: PodInfo = pods[0]
        self.sids = self._sids()

    # --- the testbed --------------------------------------------------------------------

    def plan(self) -> Plan:
        """The plan in the lab's addresses (see the module docstring)."""
        node, pod = self.node, self.pod
        others = [n for n in self.topo.nodes if n.name != node.name and n.end_sid]
        beyond = (
            ipaddress.IPv6Network(f"{others[0].end_sid}/48", strict=False)
            if others
            else Plan.beyond
        )
        assert pod.ipv6 is not None
        changes: dict[str, object] = {
            "tester_near": self.topo.injector.source_v6,
            "dut_near": IPv6Address(node.internal_ips[6]),
            "beyond": beyond,
            "inner6": pod.ipv6,
            "inner_net6": ipaddress.IPv6Network(f"{pod.ipv6}/128"),
        }
        if pod.ipv4 is not None:
            changes |= {
                "inner4": pod.ipv4,
                "inner_net4": ipaddress.IPv4Network(f"{pod.ipv4}/32"),
            }
        return dataclasses.replace(Plan(), **changes)  # type: ignore[arg-type]

    def testbed(self) -> Testbed:
        injector, node = self.topo.injector, self.node
        assert injector.netns is not None
        wires = [node.uplink_wire(), *(node.pod_wire(p) for p in self.topo.pods_on(node.name))]
        # Verify's taps say "outgoing" for what the node sends; the testbed keeps what the
        # tester receives: the same frames, the direction turned round.
        taps = tuple((w.netns, w.interface, not w.far) for w in wires if w.interface)
        return Testbed.lab(
            injector.netns, injector.interface, injector.node_macs[node.name], self.plan(), taps
        )

    # --- the Target protocol ------------------------------------------------------------

    def setup(self, bed: Testbed) -> None:
        pass  # the agent configured the node

    def address(self, sid: SidSpec, proposed: IPv6Address) -> IPv6Address:
        return self.sids.get(sid.behaviour, proposed)

    def install(self, sid: SidSpec, address: IPv6Address) -> str | None:
        if sid.hmac:
            return "the agent configures no HMAC key"
        if sid.flavours:
            return f"the agent programs no {'/'.join(sorted(sid.flavours))} flavour"
        if sid.behaviour not in self.sids:
            return f"the agent programs no {sid.behaviour} on {self.node.name}"
        return None

    def counters(self, address: IPv6Address) -> tuple[int, int] | None:
        if self.vpp_api_socket is None:
            return None  # a kernel node: the agent adds its SIDs without `count`
        from srv6ctl.lab.vpp import cli

        return localsid_counters(cli(self.vpp_api_socket, "show sr localsids"), address)

    def close(self) -> None:
        pass

    def _sids(self) -> dict[str, IPv6Address]:
        """The behaviours the agent programs on the node, each at one of its SIDs."""
        node, pod = self.node, self.pod
        found: dict[str, IPv6Address | None] = {
            "End": node.end_sid,
            "End.DT6": node.dt6_sid,
            "End.DX6": node.pod_sid(pod, 6),
            "End.DX4": node.pod_sid(pod, 4) if pod.ipv4 else None,
            "End.DT4": next(
                (s.sid for s in node.agent.desired.local_sids if type(s) is EndDT4), None
            ),
        }
        return {behaviour: sid for behaviour, sid in found.items() if sid is not None}


__all__ = ["LabTarget"]
