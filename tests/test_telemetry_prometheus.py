"""A real Prometheus scrapes the agent's telemetry, and we ask it what it saw.

One Prometheus per module (Debian's binary, 127.0.0.1, temporary storage, 1 s scrapes)
with two jobs on ports reserved up front: `fake`, whose counters a test increments between
scrapes, and `kernel`, whose counters come from a namespace programmed through
`KernelBackend` and crossed by scapy packets. Every dashboard and rule expression is also
run through Prometheus' own PromQL parser.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from scapy.layers.inet import UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from srv6ctl.dataplane.model import (
    Counters,
    EndDX6,
    InterfaceCounters,
    NodeConfig,
    PodAttachment,
    Route,
    SegmentList,
    SrPolicy,
    Steering,
)
from srv6ctl.dataplane.reconcile import plan
from telemetry.agent import Telemetry
from telemetry.linkstats import LinkStats
from telemetry.pools import PoolUsage
from tests.support.netns import NetnsFactory, PacketPort
from tests.support.prometheus import PROMETHEUS, PrometheusServer, Vector, free_port, require
from tests.test_telemetry import DASHBOARD, PROMETHEUS_DIR

A = ipaddress.IPv6Address


@dataclasses.dataclass
class Scraped:
    server: PrometheusServer
    ports: dict[str, int]


@pytest.fixture(scope="module")
def prometheus() -> Iterator[Scraped]:
    require(PROMETHEUS)
    ports = {"fake": free_port(), "kernel": free_port()}
    with PrometheusServer({job: f"127.0.0.1:{port}" for job, port in ports.items()}) as server:
        yield Scraped(server, ports)


def one(vector: Vector) -> float:
    assert len(vector) == 1, vector
    return vector[0][1]


def equals(expected: float) -> Any:
    return lambda v: len(v) == 1 and v[0][1] == expected


# --- fake-but-honest counters ------------------------------------------------------------

SID = EndDX6("fcbb:bb00:1::1:5", nexthop="fd00:10:0:1::5", interface="veth-web")
WEB = SrPolicy("fcbb:bb00::1", (SegmentList(("fcbb:bb00:2::1:7",)),), owner="svc/default/web/v6")
CONFIG = NodeConfig(
    local_sids=[SID],
    policies=[WEB],
    pods=[PodAttachment("veth-web", "default/web-1", "/run/netns/web-1")],
)


def test_prometheus_scrapes_counters_that_grow(prometheus: Scraped) -> None:
    counts = {"sid": 10, "web": 4}
    telemetry = Telemetry(version="9.9.9")
    telemetry.add_dataplane(
        lambda: {
            SID.key: Counters(counts["sid"], counts["sid"] * 100),
            WEB.key: Counters(counts["web"], counts["web"] * 80),
        },
        lambda: CONFIG,
        interfaces=lambda names: {n: InterfaceCounters(counts["sid"], 1000) for n in names},
    )
    telemetry.add_pools(lambda: [PoolUsage("pod_addresses", 254, 17)])
    telemetry.metrics.cni_request("ADD", 0, 0.04)
    telemetry.metrics.programming_latency.observe(1.5)
    with telemetry.metrics.reconcile():
        pass
    prom = prometheus.server
    job = 'job="fake"'
    sid = f'srv6ctl_sid_packets_total{{{job}, sid="fcbb:bb00:1::1:5", behaviour="End.DX6"}}'
    telemetry.serve(f"127.0.0.1:{prometheus.ports['fake']}")
    try:
        prom.wait_for(sid, equals(10))
        counts["sid"], counts["web"] = 25, 9
        prom.wait_for(sid, equals(25))
        increase = one(prom.query(f"increase({sid}[1m])"))
        assert increase > 0

        assert one(prom.query(f"up{{{job}}}")) == 1
        build = prom.query(f"srv6ctl_build_info{{{job}}}")
        assert build[0][0]["version"] == "9.9.9" and one(build) == 1
        assert one(prom.query(f"srv6ctl_agent_ready{{{job}}}")) == 1
        web = f'srv6ctl_service_packets_total{{{job}, service="default/web", family="ipv6"}}'
        assert one(prom.wait_for(web, equals(9))) == 9
        assert one(prom.query(f'srv6ctl_service_bytes_total{{{job}, service="default/web"}}'))
        pod = f'srv6ctl_pod_receive_packets_total{{{job}, pod="default/web-1"}}'
        assert one(prom.query(pod)) == 25
        usage = prom.query(f"srv6ctl_ipam_pool_used{{{job}}} / srv6ctl_ipam_pool_size{{{job}}}")
        assert usage[0][0]["pool"] == "pod_addresses" and one(usage) == pytest.approx(17 / 254)
        latency = prom.query(
            f'srv6ctl_network_programming_duration_seconds_bucket{{{job}, le="2.0"}}'
        )
        assert one(latency) == 1
        cni = prom.query(f'srv6ctl_cni_request_duration_seconds_count{{{job}, command="ADD"}}')
        assert cni[0][0]["code"] == "0" and one(cni) == 1
        assert prom.query(f"process_resident_memory_bytes{{{job}}}")

        # The dashboard's own queries find data: top SIDs and services by traffic.
        for title in ("Top SIDs by packets", "Top services by packets"):
            (expr,) = panel_queries(title)
            assert prom.query(instant(expr)), title
    finally:
        telemetry.close()


def instant(expr: str) -> str:
    """A Grafana query made runnable by Prometheus: its variables substituted."""
    return expr.replace("$__rate_interval", "1m").replace("$instance", ".*")


def panel_queries(title: str) -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [t["expr"] for p in panels if p["title"] == title for t in p["targets"]]


def test_every_dashboard_and_rule_expression_parses_in_prometheus(prometheus: Scraped) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    rules = yaml.safe_load((PROMETHEUS_DIR / "srv6ctl-rules.yaml").read_text())
    exprs += [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    for expr in exprs:
        prometheus.server.query(instant(expr))  # raises on a PromQL error


# --- a real kernel: SID and service counters from KernelBackend --------------------------

NODE_SOURCE = "fcbb:bb00:1::"
CLIENT6, PEER6 = "2001:db8:1::2", "2001:db8:2::2"
KERNEL_SID = EndDX6("fcbb:bb00:1:0:1::5", nexthop=PEER6, interface="out0")
KERNEL_WEB = SrPolicy(
    "fcbb:bb00::7", (SegmentList(("fcbb:bb00:2:0:1::9",)),), owner="svc/default/web/v6"
)
CLUSTER_IP = "fd00:96::7"
MARK = b"s6t-telemetry"


@pytest.mark.netns
@pytest.mark.kernel_srv6
def test_kernel_sid_counters_grow_in_prometheus(
    prometheus: Scraped, netns_factory: NetnsFactory
) -> None:
    from srv6ctl.dataplane.kernel import KernelBackend

    node, peer = netns_factory(), netns_factory()
    # peer:src0 -> in0:node:out0 -> dst0:peer; out0 plays the pod's node-side interface.
    netns_factory.veth(peer, "src0", node, "in0")
    netns_factory.veth(node, "out0", peer, "dst0")
    node.ip("addr", "add", "2001:db8:1::1/64", "dev", "in0", "nodad")
    node.ip("addr", "add", "2001:db8:2::1/64", "dev", "out0", "nodad")
    peer.ip("addr", "add", f"{CLIENT6}/64", "dev", "src0", "nodad")
    peer.ip("addr", "add", f"{PEER6}/64", "dev", "dst0", "nodad")
    node.ip(
        "neigh", "replace", PEER6, "lladdr", peer.mac("dst0"), "dev", "out0", "nud", "permanent"
    )
    node.ip(
        "neigh", "replace", CLIENT6, "lladdr", peer.mac("src0"), "dev", "in0", "nud", "permanent"
    )
    desired = NodeConfig(
        encap_source=NODE_SOURCE,
        local_sids=[KERNEL_SID],
        policies=[KERNEL_WEB],
        steerings=[Steering(f"{CLUSTER_IP}/128", KERNEL_WEB.bsid)],
        routes=[Route("fcbb:bb00::/32", via=PEER6, interface="out0")],
    )
    # The telemetry view adds the pod that owns out0 (the kernel backend reports no pods).
    view = dataclasses.replace(
        desired, pods=frozenset([PodAttachment("out0", "default/web-1", str(peer))])
    )
    lock = threading.Lock()  # the agent's backend lock: scrapes and applies never overlap
    frame = Ether(dst=node.mac("in0"), src=peer.mac("src0"))
    inner = IPv6(src=CLIENT6, dst=CLUSTER_IP, hlim=64) / UDP(sport=4242, dport=80) / Raw(MARK)
    to_sid = frame / IPv6(src="fcbb:bb00:9::", dst=str(KERNEL_SID.sid), hlim=64) / inner
    to_service = frame / inner

    telemetry = Telemetry(version="kernel-test")
    with KernelBackend(node.name) as backend, PacketPort(peer, "src0") as ingress:
        with lock:
            backend.apply(plan(desired, backend.dump()))
        telemetry.add_dataplane(
            backend.counters, lambda: view, interfaces=LinkStats(node.name).read, lock=lock
        )
        telemetry.serve(f"127.0.0.1:{prometheus.ports['kernel']}")
        try:
            prom = prometheus.server
            job = 'job="kernel"'
            sid = f'srv6ctl_sid_packets_total{{{job}, sid="{KERNEL_SID.sid}", behaviour="End.DX6"}}'
            prom.wait_for(sid, equals(0))
            ingress.send([to_sid] * 5 + [to_service] * 3)
            prom.wait_for(sid, equals(5))
            sid_bytes = sid.replace("_packets_", "_bytes_")
            assert one(prom.query(sid_bytes)) >= 5 * len(bytes(to_sid[IPv6]))
            pod = f'srv6ctl_pod_receive_packets_total{{{job}, pod="default/web-1"}}'
            prom.wait_for(pod, lambda v: len(v) == 1 and v[0][1] >= 8)  # 5 decapsulated + 3
            if backend.features.group_stats:
                web = f'srv6ctl_service_packets_total{{{job}, service="default/web"}}'
                prom.wait_for(web, equals(3))

            ingress.send([to_sid] * 7)
            prom.wait_for(sid, equals(12))
            assert one(prom.query(f"increase({sid}[1m])")) > 0
            success = prom.query(f"srv6ctl_dataplane_scrape_success{{{job}}}")
            assert {s[0]["source"]: s[1] for s in success} == {"backend": 1, "interfaces": 1}
        finally:
            telemetry.close()
