"""Pods through the plan: each one on its own, its pod side in its real namespace.

The pod side is real (`PodNetworkProgrammer` in throw-away namespaces: loopback ClusterIPs
and the rewrite table). The node side is a recording backend that refuses one interface,
as VPP refuses a port for a veth that is not there: what is asserted is how the reconciler
carries on around it — the other pods and the rest of the plan go on, the failed pod is
not "programmed", CNI's wait hears why, and the next full pass wires it. The real node
sides are in tests/test_agent.py (kernel) and tests/test_agent_vpp.py (VPP).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection, Iterable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry

from srv6ctl.dataplane.model import (
    Capabilities,
    Change,
    DataplaneObject,
    EndDX6,
    IPv6Address,
    NodeConfig,
    Op,
    PodAttachment,
)
from srv6ctl.dataplane.reconcile import config_of
from srv6ctl.podnet import PodNetworkProgrammer
from srv6ctl.reconciler import Reconciler
from srv6ctl.render import RenderDelta
from telemetry.metrics import AgentMetrics
from tests.support.netns import Netns, NetnsFactory

SERVICE = "fd00:96::11"


class NodeSide:
    """Holds what it is told; refuses pods on `broken` interfaces (like a missing veth)."""

    capabilities = Capabilities()

    def __init__(self) -> None:
        self.objects: dict[Any, DataplaneObject] = {}
        self.broken: set[str] = set()
        self.applied: list[Change] = []
        self.ports: set[str] = set()

    def dump(self) -> NodeConfig:
        return config_of(o for o in self.objects.values() if not isinstance(o, PodAttachment))

    def apply(self, changes: Iterable[Change]) -> None:
        for change in changes:
            obj = change.obj
            if isinstance(obj, PodAttachment) and obj.interface in self.broken:
                raise RuntimeError(f"no interface {obj.interface}")
            self.applied.append(change)
            if change.op is Op.DELETE:
                self.objects.pop(obj.key, None)
                self.ports.discard(getattr(obj, "interface", ""))
            else:
                self.objects[obj.key] = obj
                if isinstance(obj, PodAttachment):
                    self.ports.add(obj.interface)

    def sweep_pods(self, keep: Collection[str]) -> list[str]:
        gone = sorted(self.ports - set(keep))
        self.ports -= set(gone)
        return gone

    def as_held(self, desired: NodeConfig) -> NodeConfig:
        return desired

    def buckets(self, bsid: IPv6Address) -> dict[tuple[IPv6Address, ...], int]:
        return {}

    def counters(self) -> Mapping[Any, Any]:
        return {}

    def close(self) -> None:
        pass


def attachment(ns: Netns, interface: str) -> PodAttachment:
    return PodAttachment(
        interface=interface,
        pod=f"default/{interface}",
        netns=f"/var/run/netns/{ns.name}",
        addresses=frozenset({ipaddress.ip_interface(f"fd00:10::{len(interface)}/128")}),
        service_addresses=frozenset({ipaddress.ip_address(SERVICE)}),
    )


def loopback_has_service(ns: Netns) -> bool:
    return SERVICE in ns.ip("-6", "addr", "show", "dev", "lo")


def test_one_pod_that_cannot_be_wired_stops_nothing_and_is_wired_at_the_next_pass(
    netns_factory: NetnsFactory,
) -> None:
    good_ns, bad_ns = netns_factory(), netns_factory()
    good, bad = attachment(good_ns, "veth-good"), attachment(bad_ns, "veth-bad1")
    sid = EndDX6("fcbb:bb00:1::1:2", nexthop="fd00:10::9", interface="veth-good")
    backend = NodeSide()
    backend.broken.add("veth-bad1")
    backend.ports.add("veth-gone")  # a port of a pod deleted while the agent was away
    podnet = PodNetworkProgrammer([ipaddress.ip_network("fd00:96::/108")])
    reconciler = Reconciler(backend, AgentMetrics(CollectorRegistry(), version="test"), podnet)
    desired = NodeConfig(pods=frozenset({good, bad}), local_sids=frozenset({sid}))

    changes = reconciler.full(desired, keep=())
    # The pods are ensures, not changes; the SID is the one change, and it was applied.
    assert changes == [Change(Op.ADD, new=sid)]
    assert backend.objects[sid.key] == sid
    assert reconciler.programmed(good.key) and loopback_has_service(good_ns)
    assert not reconciler.programmed(bad.key) and not loopback_has_service(bad_ns)
    assert reconciler.wait_pod("veth-bad1", 0.1) == "RuntimeError: no interface veth-bad1"
    assert reconciler.wait_pod("veth-good", 0.1) is None
    assert backend.ports == {"veth-good"}  # the leftover port was swept

    backend.broken.clear()  # the veth is there now: the next full pass wires the pod
    assert reconciler.full(desired, keep=()) == []
    assert reconciler.programmed(bad.key) and loopback_has_service(bad_ns)
    assert reconciler.stats["changes"] == 1


def test_incremental_pods_go_first_and_last_and_a_failed_one_is_not_programmed(
    netns_factory: NetnsFactory,
) -> None:
    ns = netns_factory()
    pod = attachment(ns, "veth-web")
    sid = EndDX6("fcbb:bb00:1::1:2", nexthop="fd00:10::9", interface="veth-web")
    backend = NodeSide()
    podnet = PodNetworkProgrammer([ipaddress.ip_network("fd00:96::/108")])
    reconciler = Reconciler(backend, AgentMetrics(CollectorRegistry(), version="test"), podnet)
    reconciler.full(NodeConfig(), keep=())

    added = NodeConfig(pods=frozenset({pod}), local_sids=frozenset({sid}))
    changes = reconciler.incremental(added, RenderDelta(added=frozenset({pod, sid})))
    assert [c.obj for c in backend.applied] == [pod, sid]  # the port before what names it
    assert len(changes) == 2 and loopback_has_service(ns)

    backend.applied.clear()
    removed = RenderDelta(removed=frozenset({pod, sid}))
    reconciler.incremental(NodeConfig(), removed)
    assert [c.obj for c in backend.applied] == [sid, pod]  # and after, on the way out
    assert not loopback_has_service(ns)  # its pod side cleared
    assert not reconciler.programmed(pod.key)

    backend.broken.add("veth-web")
    reconciler.expect_pod("veth-web")
    reconciler.incremental(added, RenderDelta(added=frozenset({pod, sid})))
    assert not reconciler.programmed(pod.key) and reconciler.programmed(sid.key)
    assert reconciler.wait_pod("veth-web", 0.1) == "RuntimeError: no interface veth-web"
