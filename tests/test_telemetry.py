"""telemetry: metric names, collectors, the HTTP endpoint, promtool, dashboard and examples.

The real-Prometheus scrapes live in test_telemetry_prometheus.py; here everything runs in
process (plus promtool), so it is quick.
"""

from __future__ import annotations

import gzip
import ipaddress
import json
import re
import socket
import sqlite3
import subprocess
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from ipam6.allocator import Allocator
from ipam6.plan import AddressPlan
from ipam6.store.base import StoreError
from ipam6.store.sqlite import SqliteStore
from srv6ctl.dataplane.model import (
    Change,
    Counters,
    EndDT6,
    EndDX6,
    InterfaceCounters,
    NodeConfig,
    Op,
    PodAttachment,
    Route,
    SegmentList,
    SrPolicy,
)
from srv6ctl.dataplane.reconcile import drift
from telemetry import metrics as m
from telemetry.agent import Telemetry
from telemetry.dataplane import service_of
from telemetry.linkstats import from_node_side
from telemetry.pools import PoolUsage, allocator_pools
from telemetry.server import MetricsServer, parse_address
from tests.support.prometheus import PROMTOOL, require

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy" / "grafana" / "srv6ctl-dashboard.json"
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"

A = ipaddress.IPv6Address
DX6 = EndDX6("fcbb:bb00:1::1:5", nexthop="fd00:10:0:1::5", interface="veth-web")
DT6 = EndDT6("fcbb:bb00:1::6")
WEB = SrPolicy(
    "fcbb:bb00::1",
    (SegmentList(("fcbb:bb00:2::1:7",)), SegmentList(("fcbb:bb00:3::1:9",))),
    owner="svc/default/web/v6",
)
WEB4 = SrPolicy("fcbb:bb00::2", (SegmentList(("fcbb:bb00:2::1:8",)),), owner="svc/default/web/v4")
REMOTE_POD = SrPolicy("fcbb:bb00::3", (SegmentList(("fcbb:bb00:2::2:8",)),), owner="pod/a/b/v4")
CONFIG = NodeConfig(
    local_sids=[DX6, DT6],
    policies=[WEB, WEB4, REMOTE_POD],
    pods=[PodAttachment("veth-web", "default/web-1", "/run/netns/web-1")],
)


def counters_of(scale: int = 1) -> dict[Any, Any]:
    return {
        DX6.key: Counters(10 * scale, 1500 * scale, 1),
        DT6.key: Counters(3 * scale, 0, 0),  # packets without bytes: bytes not counted
        WEB.key: Counters(7 * scale, 0),
        WEB4.key: Counters(2 * scale, 200 * scale),
        REMOTE_POD.key: Counters(1, 100),
        ("policy", A("fcbb:bb00::99")): Counters(4),  # not in the config (being deleted)
        ("segment_list", WEB.bsid, WEB.segment_lists[0].segments): Counters(5 * scale),
        ("segment_list", WEB.bsid, WEB.segment_lists[1].segments): Counters(1, 90),
        ("localsid", A("fcbb:bb00:1::77")): Counters(1, 64),  # unknown behaviour
        ("pod", "veth-web"): Counters(99),  # no direction: ignored
        ("route", 254, ipaddress.ip_network("::/0")): Counters(1),  # not a counted kind
    }


def samples(body: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def value(body: str, name: str, **labels: str) -> float | None:
    return samples(body).get((name, frozenset(labels.items())))


def exposition(telemetry: Telemetry) -> str:
    """What `/metrics` answers Prometheus' default Accept (the HTTP path has its own tests)."""
    body, content_type, _ = MetricsServer(telemetry.registry).metrics_payload("text/plain")
    assert content_type.startswith("text/plain; version=0.0.4")
    return body.decode()


def fetch(url: str, headers: Mapping[str, str] | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def populated() -> Telemetry:
    """A Telemetry with every metric family holding at least one sample."""
    telemetry = Telemetry(version="1.2.3")
    telemetry.add_dataplane(
        counters_of,
        lambda: CONFIG,
        interfaces=lambda names: {n: InterfaceCounters(1, 2, 3, 4, 5, 6) for n in names},
    )
    telemetry.add_pools(lambda: [PoolUsage("node_ids", 1000, 3)])
    metrics = telemetry.metrics
    with metrics.reconcile(), metrics.render():
        pass
    metrics.changes_applied([Change(Op.ADD, new=DX6), Change(Op.DELETE, old=DT6)])
    metrics.programming_latency.observe_since(datetime.now(UTC) - timedelta(seconds=2))
    metrics.watch_restarted("services")
    metrics.relisted("endpointslices")
    with pytest.raises(StoreError), metrics.store_operation("txn"):
        raise StoreError("etcd is down")
    metrics.cni_request("ADD", 0, 0.05)
    metrics.record_drift({"Route": {"add": 1}})
    metrics.record_repair({"Route": {"add": 1}})
    return telemetry


# --- names -------------------------------------------------------------------------------


def test_metric_names_follow_prometheus_conventions() -> None:
    assert len({spec.name for spec in m.ALL}) == len(m.ALL)
    for spec in m.ALL:
        assert re.fullmatch(r"srv6ctl_[a-z0-9_]+", spec.name), spec.name
        assert spec.help.endswith("."), spec.name
        if spec.kind is m.Kind.COUNTER:
            assert spec.name.endswith("_total"), spec.name
        else:
            assert not spec.name.endswith("_total"), spec.name
        if spec.kind is m.Kind.HISTOGRAM:
            assert spec.name.endswith("_seconds") and spec.buckets, spec.name
        for unit in ("milliseconds", "_ms", "kilobytes", "_kb"):
            assert unit not in spec.name, spec.name
        assert all(re.fullmatch(r"[a-z_]+", label) for label in spec.labels), spec.name
        # Unbounded identities never become labels.
        assert not {"uid", "flow", "container_id", "port", "client"} & set(spec.labels)


def test_every_declared_metric_is_exported_and_nothing_else() -> None:
    telemetry = populated()
    families = {f.name for f in telemetry.registry.collect() if f.name.startswith("srv6ctl_")}
    assert families == {spec.base for spec in m.ALL}
    body = exposition(telemetry)
    exposed = {name for name, _ in samples(body) if name.startswith("srv6ctl_")}
    assert exposed == m.exported_series_names()
    assert "_created" not in body  # left out: one more series per child for nothing


def test_promtool_finds_no_problem_in_the_exposition() -> None:
    require(PROMTOOL)
    telemetry = populated()
    with MetricsServer(telemetry.registry, address="127.0.0.1:0") as server:
        status, body = fetch(server.url + "/metrics")
    assert status == 200
    done = subprocess.run(
        [PROMTOOL, "check", "metrics"], input=body.encode(), capture_output=True, timeout=30
    )
    assert done.returncode == 0 and not done.stdout and not done.stderr, done


def test_readme_table_lists_every_metric() -> None:
    readme = (ROOT / "telemetry" / "README.md").read_text()
    assert m.markdown_table() in readme, "regenerate the table: python -m telemetry.metrics"


# --- dataplane collector -----------------------------------------------------------------


def test_dataplane_counters_are_labelled_from_the_desired_config() -> None:
    telemetry = Telemetry(version="t", process_metrics=False)
    telemetry.add_dataplane(counters_of, lambda: CONFIG)
    body = exposition(telemetry)
    dx6 = {"sid": "fcbb:bb00:1::1:5", "behaviour": "End.DX6"}
    assert value(body, "srv6ctl_sid_packets_total", **dx6) == 10
    assert value(body, "srv6ctl_sid_bytes_total", **dx6) == 1500
    assert value(body, "srv6ctl_sid_errors_total", **dx6) == 1
    dt6 = {"sid": "fcbb:bb00:1::6", "behaviour": "End.DT6"}
    assert value(body, "srv6ctl_sid_packets_total", **dt6) == 3
    assert value(body, "srv6ctl_sid_bytes_total", **dt6) is None  # not counted, not faked
    unknown = {"sid": "fcbb:bb00:1::77", "behaviour": "unknown"}
    assert value(body, "srv6ctl_sid_packets_total", **unknown) == 1

    web6 = {"service": "default/web", "family": "ipv6"}
    assert value(body, "srv6ctl_service_packets_total", **web6) == 7
    assert value(body, "srv6ctl_service_bytes_total", **web6) is None
    web4 = {"service": "default/web", "family": "ipv4"}
    assert value(body, "srv6ctl_service_bytes_total", **web4) == 200
    path = {**web6, "segments": "fcbb:bb00:2::1:7"}
    assert value(body, "srv6ctl_service_segment_list_packets_total", **path) == 5
    assert value(body, "srv6ctl_policy_packets_total", bsid="fcbb:bb00::3", owner="pod/a/b/v4")
    assert value(body, "srv6ctl_policy_packets_total", bsid="fcbb:bb00::99", owner="") == 4
    # A pod counter without direction is not guessed at; no interface source, no pod series.
    assert not [name for name, _ in samples(body) if name.startswith("srv6ctl_pod_")]
    assert value(body, "srv6ctl_dataplane_scrape_success", source="backend") == 1


def test_counters_are_read_at_scrape_time() -> None:
    scale = [1]
    telemetry = Telemetry(version="t", process_metrics=False)
    telemetry.add_dataplane(lambda: counters_of(scale[0]), lambda: CONFIG)
    labels = {"sid": "fcbb:bb00:1::1:5", "behaviour": "End.DX6"}
    assert value(exposition(telemetry), "srv6ctl_sid_packets_total", **labels) == 10
    scale[0] = 5
    assert value(exposition(telemetry), "srv6ctl_sid_packets_total", **labels) == 50


def test_pod_interfaces_only_for_this_nodes_pods_from_the_pods_point_of_view() -> None:
    asked: list[list[str]] = []

    def interfaces(names: Any) -> dict[str, InterfaceCounters]:
        asked.append(list(names))
        node_side = {"tx_packets": 5, "tx_bytes": 500, "tx_dropped": 1, "rx_packets": 7}
        return {"veth-web": from_node_side(node_side), "veth-gone": InterfaceCounters(1)}

    telemetry = Telemetry(version="t", process_metrics=False)
    telemetry.add_dataplane(dict, lambda: CONFIG, interfaces=interfaces)
    body = exposition(telemetry)
    assert asked == [["veth-web"]]
    pod = {"pod": "default/web-1", "interface": "veth-web"}
    assert value(body, "srv6ctl_pod_receive_packets_total", **pod) == 5  # node tx = pod rx
    assert value(body, "srv6ctl_pod_receive_bytes_total", **pod) == 500
    assert value(body, "srv6ctl_pod_receive_drops_total", **pod) == 1
    assert value(body, "srv6ctl_pod_transmit_packets_total", **pod) == 7
    assert "veth-gone" not in body  # not a pod of this node (any more): no leftover series


def test_a_failing_backend_does_not_break_the_scrape() -> None:
    def broken() -> dict[Any, Any]:
        raise OSError("netlink socket closed")

    telemetry = Telemetry(version="t", process_metrics=False)
    telemetry.add_dataplane(broken, lambda: None)
    telemetry.add_pools(lambda: [][0])
    body = exposition(telemetry)
    assert value(body, "srv6ctl_dataplane_scrape_success", source="backend") == 0
    assert value(body, "srv6ctl_ipam_scrape_success") == 0
    assert value(body, "srv6ctl_agent_ready") == 0


def test_the_backend_lock_is_held_while_counters_are_read() -> None:
    lock = threading.Lock()
    held: list[bool] = []

    def counters() -> dict[Any, Any]:
        held.append(lock.locked())
        return {}

    telemetry = Telemetry(version="t", process_metrics=False)
    telemetry.add_dataplane(counters, lambda: CONFIG, lock=lock)
    exposition(telemetry)
    assert held == [True] and not lock.locked()


def test_service_owner_labels() -> None:
    assert service_of("svc/kube-system/kube-dns/v6") == ("kube-system/kube-dns", "ipv6")
    assert service_of("svc/a/b/v4") == ("a/b", "ipv4")
    assert service_of("pod/a/b/v4") is None
    assert service_of("") is None
    assert service_of("svc/a/b/v5") is None


# --- control plane -----------------------------------------------------------------------


def test_reconcile_readiness_and_results() -> None:
    telemetry = Telemetry(version="t", process_metrics=False)
    metrics = telemetry.metrics
    assert metrics.readiness() == "the dataplane has not been reconciled yet"
    with pytest.raises(RuntimeError), metrics.reconcile():
        raise RuntimeError("EEXIST")
    assert metrics.readiness() is not None
    with metrics.reconcile():
        pass
    assert metrics.readiness() is None
    metrics.set_not_ready("store unreachable")
    assert metrics.readiness() == "store unreachable"
    body = exposition(telemetry)
    assert value(body, "srv6ctl_agent_ready") == 0
    assert value(body, "srv6ctl_reconcile_duration_seconds_count", result="error") == 1
    assert value(body, "srv6ctl_reconcile_duration_seconds_count", result="success") == 1
    metrics.set_not_ready(None)
    assert value(exposition(telemetry), "srv6ctl_agent_ready") == 1


def test_changes_and_drift_by_kind_and_operation() -> None:
    telemetry = Telemetry(version="t", process_metrics=False)
    desired = NodeConfig(local_sids=[DX6], routes=[Route("fd00::/64", interface="eth0")])
    actual = NodeConfig(local_sids=[DT6], routes=[Route("fd00::/64", interface="eth1")])
    found = drift(desired, actual)
    telemetry.metrics.record_drift(found)
    telemetry.metrics.record_repair(found)
    telemetry.metrics.changes_applied([Change(Op.ADD, new=DX6), Change(Op.ADD, new=DT6)])
    body = exposition(telemetry)
    for name in ("srv6ctl_dataplane_drift_found_total", "srv6ctl_dataplane_drift_repaired_total"):
        assert value(body, name, kind="Route", operation="replace") == 1
        assert value(body, name, kind="EndDX6", operation="add") == 1
        assert value(body, name, kind="EndDT6", operation="delete") == 1
    assert value(body, "srv6ctl_reconcile_changes_total", kind="EndDX6", operation="add") == 1


def test_programming_latency_since_a_kubernetes_timestamp() -> None:
    telemetry = Telemetry(version="t", process_metrics=False)
    latency = telemetry.metrics.programming_latency
    latency.observe_since(1000.0, now=1001.5)
    latency.observe_since(datetime(2024, 1, 1, 0, 0, 0), now=1704067203.0)  # naive = UTC
    latency.observe_since(datetime.now(UTC) + timedelta(seconds=60))  # skew: counts as 0
    body = exposition(telemetry)
    name = "srv6ctl_network_programming_duration_seconds"
    assert value(body, name + "_count") == 3
    assert value(body, name + "_sum") == pytest.approx(4.5)
    assert value(body, name + "_bucket", le="0.01") == 1
    assert value(body, name + "_bucket", le="2.0") == 2


def test_cni_commands_and_codes_are_bounded() -> None:
    telemetry = Telemetry(version="t", process_metrics=False)
    telemetry.metrics.cni_request("ADD", 0, 0.2)
    telemetry.metrics.cni_request("ADD", 11, 0.01)
    telemetry.metrics.cni_request("$(rm -rf)", 6, 0.001)
    body = exposition(telemetry)
    name = "srv6ctl_cni_request_duration_seconds_count"
    assert value(body, name, command="ADD", code="0") == 1
    assert value(body, name, command="ADD", code="11") == 1
    assert value(body, name, command="unknown", code="6") == 1


def test_store_latency_and_errors_through_a_real_store(tmp_path: Path) -> None:
    telemetry = Telemetry(version="t", process_metrics=False)
    store = telemetry.instrument_store(SqliteStore(str(tmp_path / "ipam.db")))
    plan = AddressPlan.from_mapping({"podCIDRv6": "fd00:10::/48", "maxNodes": 100})
    allocator = Allocator(store, plan)
    allocator.claim_node("node-a")
    allocator.claim_node("node-b")
    allocator.allocate_pod("node-a", "c1", "eth0", pod="default/web-1")
    allocator.allocate_service("uid-1", "default/web")
    telemetry.add_pools(allocator_pools(allocator, "node-a"))
    store.close()
    with pytest.raises(sqlite3.ProgrammingError):  # a closed store refuses: an error
        store.get("/x")
    body = exposition(telemetry)
    assert value(body, "srv6ctl_store_operation_duration_seconds_count", operation="txn") >= 4
    assert value(body, "srv6ctl_store_operation_errors_total", operation="get") == 1
    assert value(body, "srv6ctl_store_operation_errors_total", operation="txn") is None
    # The pools were read with the closed store: they fail without breaking the scrape.
    assert value(body, "srv6ctl_ipam_scrape_success") == 0


def test_pool_usage_from_a_real_allocator(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "ipam.db"))
    try:
        plan = AddressPlan.from_mapping({"podCIDRv6": "fd00:10::/48", "maxNodes": 100})
        allocator = Allocator(store, plan)
        allocator.claim_node("node-a")
        allocator.claim_node("node-b")
        for i in range(3):
            allocator.allocate_pod("node-a", f"c{i}", "eth0", pod=f"default/web-{i}")
        allocator.allocate_pod("node-b", "c9", "eth0", pod="default/other")
        allocator.allocate_service("uid-1", "default/web")
        telemetry = Telemetry(version="t", process_metrics=False)
        telemetry.add_pools(allocator_pools(allocator, "node-a"))
        body = exposition(telemetry)
    finally:
        store.close()
    assert value(body, "srv6ctl_ipam_pool_size", pool="node_ids") == 100
    assert value(body, "srv6ctl_ipam_pool_used", pool="node_ids") == 2
    assert value(body, "srv6ctl_ipam_pool_size", pool="pod_addresses") == len(plan.pod_indexes)
    assert value(body, "srv6ctl_ipam_pool_used", pool="pod_addresses") == 3
    assert value(body, "srv6ctl_ipam_pool_size", pool="service_bsids") == len(plan.service_indexes)
    assert value(body, "srv6ctl_ipam_pool_used", pool="service_bsids") == 1
    assert value(body, "srv6ctl_ipam_scrape_success") == 1


# --- HTTP endpoint -----------------------------------------------------------------------


@pytest.fixture
def served() -> Iterator[tuple[Telemetry, MetricsServer]]:
    telemetry = Telemetry(version="t", process_metrics=False)
    server = telemetry.serve("127.0.0.1:0")
    try:
        yield telemetry, server
    finally:
        telemetry.close()


def test_health_and_readiness_endpoints(served: tuple[Telemetry, MetricsServer]) -> None:
    telemetry, server = served
    assert fetch(server.url + "/healthz") == (200, "ok\n")
    status, body = fetch(server.url + "/readyz")
    assert (status, body) == (503, "not ready: the dataplane has not been reconciled yet\n")
    with telemetry.metrics.reconcile():
        pass
    assert fetch(server.url + "/readyz") == (200, "ready\n")
    assert fetch(server.url + "/nope")[0] == 404
    head = urllib.request.Request(server.url + "/healthz", method="HEAD")
    with urllib.request.urlopen(head, timeout=5) as response:
        assert response.status == 200 and response.read() == b""


def test_a_raising_readiness_check_is_not_ready() -> None:
    def readiness() -> str | None:
        raise KeyError("oops")

    telemetry = Telemetry(version="t", process_metrics=False)
    telemetry.serve("127.0.0.1:0", readiness=readiness)
    try:
        assert telemetry.server is not None
        status, body = fetch(telemetry.server.url + "/readyz")
    finally:
        telemetry.close()
    assert status == 503 and "KeyError" in body


def test_metrics_negotiation_and_gzip(served: tuple[Telemetry, MetricsServer]) -> None:
    _, server = served
    status, text = fetch(server.url + "/metrics")
    assert status == 200 and "# TYPE srv6ctl_agent_ready gauge" in text
    accept = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
    request = urllib.request.Request(
        server.url + "/metrics", headers={"Accept": accept, "Accept-Encoding": "gzip"}
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.headers["Content-Type"].startswith("application/openmetrics-text")
        assert response.headers["Content-Encoding"] == "gzip"
        body = gzip.decompress(response.read()).decode()
    assert body.endswith("# EOF\n") and "srv6ctl_build_info" in body
    assert "_created" not in body


def listeners(port: int) -> list[str]:
    """Local addresses listening on TCP `port` in this namespace (from /proc/net/tcp{,6})."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as lines:
            next(lines)
            for line in lines:
                local, state = line.split()[1], line.split()[3]
                address, hex_port = local.split(":")
                if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                    raw = bytes.fromhex(address)
                    # The kernel prints each 32-bit word in host (little-endian) order.
                    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
                    found.append(str(ipaddress.ip_address(words)))
    return found


def test_binds_only_the_given_address_and_stops_cleanly() -> None:
    telemetry = Telemetry(version="t", process_metrics=False)
    server = telemetry.serve("127.0.0.1:0")
    host, port = server.address
    assert host == "127.0.0.1"
    assert listeners(port) == ["127.0.0.1"]  # no wildcard, no other address
    telemetry.close()
    telemetry.close()  # idempotent
    assert listeners(port) == []
    with pytest.raises(OSError):
        socket.create_connection((host, port), timeout=1).close()
    again = MetricsServer(telemetry.registry, address=f"127.0.0.1:{port}")
    again.start()  # the port is free again at once
    again.stop()


def test_addresses() -> None:
    assert parse_address("127.0.0.1:9876") == ("127.0.0.1", 9876)
    assert parse_address("localhost:9876") == ("127.0.0.1", 9876)
    assert parse_address("[fd00::1]:80") == ("fd00::1", 80)
    assert parse_address("0.0.0.0:9876") == ("0.0.0.0", 9876)  # only when configured
    assert parse_address("[::]:9876") == ("::", 9876)  # what the DaemonSet configures
    for bad in ("9876", ":9876", "node-1:9876", "127.0.0.1:http", "127.0.0.1:70000"):
        with pytest.raises(ValueError):
            parse_address(bad)


# --- dashboard and Prometheus examples ---------------------------------------------------

_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool"}
_KEYWORDS |= {"and", "or", "unless", "inf", "nan"}


def promql_metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (not functions, labels or keywords)."""
    expr = re.sub(r'"(?:\\.|[^"\\])*"', '""', expr)  # string literals
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range and subquery durations
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    names = set()
    for match in re.finditer(r"(?<![\w.$])[A-Za-z_:][A-Za-z0-9_:]*", expr):
        word = match.group(0)
        if expr[match.end() :].lstrip().startswith("(") or word.lower() in _KEYWORDS:
            continue
        names.add(word)
    return names


def test_promql_name_extraction() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, command) (rate(a_bucket{code!="0", x=~"$i"}'
        "[$__rate_interval]))) / on (instance) group_left b:rec:p99 + 1e3 > bool c offset 5m"
    )
    assert promql_metric_names(expr) == {"a_bucket", "b:rec:p99", "c"}


def dashboard_panels() -> list[dict[str, Any]]:
    panels = []
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))  # collapsed rows hold their panels
    return panels


def dashboard_queries() -> list[str]:
    return [t["expr"] for p in dashboard_panels() for t in p.get("targets", [])]


def test_dashboard_queries_name_only_exported_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"] == "srv6ctl"
    ids = [p["id"] for p in dashboard_panels()]
    assert len(ids) == len(set(ids))
    exported = m.exported_series_names()
    queries = dashboard_queries()
    assert len(queries) >= 10
    used: set[str] = set()
    for expr in queries:
        names = promql_metric_names(expr)
        assert names, expr
        assert names <= exported, (expr, names - exported)
        used |= names
    variables = dashboard["templating"]["list"]
    for variable in variables:
        query = variable.get("definition", "")
        assert promql_metric_names(query.replace("label_values", "")) <= exported | {"instance"}
    for panel in dashboard_panels():
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
    titles = " | ".join(p["title"].lower() for p in dashboard_panels())
    for wanted in (
        "network programming latency",
        "reconcile changes",
        "top sids",
        "top services",
        "cni request latency",
        "ipam pool usage",
    ):
        assert wanted in titles
    for needed in (
        m.PROGRAMMING_LATENCY,
        m.RECONCILE_CHANGES,
        m.SID_PACKETS,
        m.SERVICE_PACKETS,
        m.CNI_DURATION,
        m.POOL_USED,
    ):
        assert set(needed.series_names) & used, needed.name


def rules() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((PROMETHEUS_DIR / "srv6ctl-rules.yaml").read_text())
    return loaded


def test_rules_are_valid_and_name_only_exported_metrics() -> None:
    require(PROMTOOL)
    done = subprocess.run(
        [PROMTOOL, "check", "rules", str(PROMETHEUS_DIR / "srv6ctl-rules.yaml")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    recorded = {r["record"] for g in rules()["groups"] for r in g["rules"] if "record" in r}
    for group in rules()["groups"]:
        for rule in group["rules"]:
            names = promql_metric_names(rule["expr"])
            assert names <= m.exported_series_names() | recorded, rule


def test_scrape_config_example_is_valid(tmp_path: Path) -> None:
    require(PROMTOOL)
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["srv6ctl"]["kubernetes_sd_configs"][0]["role"] == "pod"
    # Debian builds Prometheus without Kubernetes discovery, so promtool would reject the
    # section: check everything else (relabelling included) with a static target instead.
    for job in jobs.values():
        if job.pop("kubernetes_sd_configs", None) is not None:
            job["static_configs"] = [{"targets": ["127.0.0.1:9876"]}]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    (tmp_path / "srv6ctl-rules.yaml").write_text(yaml.safe_dump(rules()))
    done = subprocess.run(
        [PROMTOOL, "check", "config", str(tmp_path / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_pod_and_service_monitor_examples() -> None:
    documents = list(yaml.safe_load_all((PROMETHEUS_DIR / "podmonitor.yaml").read_text()))
    kinds = {doc["kind"]: doc for doc in documents}
    assert set(kinds) == {"PodMonitor", "ServiceMonitor"}
    for doc in documents:
        assert doc["apiVersion"] == "monitoring.coreos.com/v1"
        assert doc["metadata"]["namespace"] == "srv6ctl"
        assert doc["spec"]["selector"]["matchLabels"] == {
            "app.kubernetes.io/name": "srv6ctl",
            "app.kubernetes.io/component": "agent",
        }
    (endpoint,) = kinds["PodMonitor"]["spec"]["podMetricsEndpoints"]
    assert (endpoint["port"], endpoint["path"]) == ("metrics", "/metrics")
    (endpoint,) = kinds["ServiceMonitor"]["spec"]["endpoints"]
    assert (endpoint["port"], endpoint["path"]) == ("metrics", "/metrics")


# --- srv6ctl top -------------------------------------------------------------------------


def test_top_shows_rates_of_the_busiest_objects() -> None:
    from io import StringIO

    from telemetry.top import rates, render, top

    reads = [0]

    def counters() -> dict[Any, Any]:
        reads[0] += 1
        return {
            DX6.key: Counters(1000 * reads[0], 100_000 * reads[0]),
            DT6.key: Counters(5, 500),  # idle
            WEB.key: Counters(10 * reads[0], 0),
        }

    telemetry = Telemetry(version="4.5.6")
    telemetry.add_dataplane(counters, lambda: CONFIG)
    telemetry.add_pools(lambda: [PoolUsage("pod_addresses", 254, 3)])
    server = telemetry.serve("127.0.0.1:0")
    out = StringIO()
    try:
        top(server.url + "/metrics", interval=0.05, count=1, out=out)
    finally:
        telemetry.close()
    screen = out.getvalue()
    assert screen.startswith("srv6ctl 4.5.6 — NOT READY")
    lines = screen.splitlines()
    sid_rows = [line for line in lines if "fcbb:bb00:1::" in line]
    assert "End.DX6" in sid_rows[0] and "End.DT6" in sid_rows[1]  # busiest first
    assert "default/web (ipv6)" in screen and "pod_addresses 3/254" in screen

    before = {("x_total", frozenset({("a", "1")})): 50.0}
    after = {("x_total", frozenset({("a", "1")})): 20.0}  # reset: 20 since
    assert rates(before, after, 2.0, "x_total")[0].per_second == 10.0
    assert "(none)" in render({}, {}, 1.0)
