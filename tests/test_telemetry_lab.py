"""A real Prometheus scrapes the agents of a real lab while `srv6ctl verify` sends traffic.

One 2-node lab (its own state directory and namespace prefix, torn down whatever happened,
nothing left behind; see tests/test_lab.py) and one Prometheus (Debian's binary on
127.0.0.1, temporary storage, 1 s scrapes) whose jobs `n1`, `n2` are the agents' /metrics,
found as a user finds them: `srv6ctl show status --api-socket <node>/agent.sock`.
`srv6ctl top` is run against the same agents.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.support.prometheus import PROMETHEUS, PrometheusServer, Vector, require
from tests.test_lab import LabRun, lab_run_of, verify

pytestmark = [pytest.mark.netns, pytest.mark.slow, pytest.mark.kernel_srv6]

NODES = 2


def srv6ctl(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """`srv6ctl ARGS` as a user runs it; fails the test on a non-zero exit."""
    command = [sys.executable, "-m", "srv6ctl.cli", *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{command}:\n{done.stdout}\n{done.stderr}"
    return done


def ask_agent(api_socket: str, what: str) -> Any:
    return json.loads(srv6ctl("show", what, "--json", "--api-socket", api_socket).stdout)


@dataclass
class TelemetryLab:
    run: LabRun
    metrics: dict[str, str]  # node -> the URL its agent reports (http://127.0.0.1:<port>)

    def pods_on(self, node: str) -> int:
        return sum(1 for pod in self.run.state.pods if pod.node == node)


@pytest.fixture(scope="module")
def lab() -> Iterator[TelemetryLab]:
    with lab_run_of("m", "--nodes", str(NODES), "--pods-per-node", "2") as run:
        metrics = {}
        for node in run.state.nodes:
            url = ask_agent(node.api_socket, "status")["metrics"]
            assert url, f"the agent of {node.name} serves no metrics"
            metrics[node.name] = url
        yield TelemetryLab(run, metrics)


@pytest.fixture(scope="module")
def prometheus(lab: TelemetryLab) -> Iterator[PrometheusServer]:
    require(PROMETHEUS)
    jobs = {node: urllib.parse.urlsplit(url).netloc for node, url in lab.metrics.items()}
    with PrometheusServer(jobs) as server:
        yield server


def by_job(vector: Vector, *labels: str) -> dict[tuple[str, ...], float]:
    """{(job, label values...): value}; every key once."""
    out: dict[tuple[str, ...], float] = {}
    for metric, value in vector:
        key = (metric["job"], *(metric[label] for label in labels))
        assert key not in out, (key, vector)
        out[key] = value
    return out


def scraped_since(seconds: float) -> Any:
    """A condition: every job's last scrape began after Unix time `seconds`."""
    return lambda v: len(v) == NODES and all(value > seconds for _, value in v)


def test_prometheus_sees_the_lab_agents_and_the_traffic_verify_sends(
    lab: TelemetryLab, prometheus: PrometheusServer
) -> None:
    state = lab.run.state
    jobs = sorted(lab.metrics)
    dx6 = 'srv6ctl_sid_packets_total{behaviour="End.DX6"}'
    web = 'srv6ctl_service_packets_total{service="default/web", family="ipv6"}'
    policies = 'srv6ctl_policy_packets_total{owner=~"node/.*"}'

    # The first samples: every agent scraped, one End.DX6 SID per pod.
    prometheus.wait_for("up", lambda v: len(v) == NODES)
    prometheus.wait_for(dx6, lambda v: len(v) == len(state.pods))
    before = by_job(prometheus.query(dx6), "sid")
    bytes_before = by_job(prometheus.query(dx6.replace("_packets_", "_bytes_")), "sid")
    services_before = by_job(prometheus.query(web))
    policies_before = by_job(prometheus.query(policies), "owner")

    result = verify(lab.run, "--only", "conformance,connectivity")
    assert result["failed"] == []
    traffic_ended = time.time()
    prometheus.wait_for("timestamp(up)", scraped_since(traffic_ended + 1))  # two scrapes

    assert by_job(prometheus.query("up")) == {(job,): 1 for job in jobs}
    assert by_job(prometheus.query("srv6ctl_agent_ready")) == {(job,): 1 for job in jobs}

    # Every End.DX6 SID carried verify's probe; a backend's, at least one packet per
    # service flow it answered. Bytes grow with packets (an IPv6 header is 40 bytes).
    after = by_job(prometheus.query(dx6), "sid")
    assert after.keys() == before.keys()
    grown = {key: after[key] - before[key] for key in after}
    assert all(packets >= 1 for packets in grown.values()), grown
    bytes_after = by_job(prometheus.query(dx6.replace("_packets_", "_bytes_")), "sid")
    for key, packets in grown.items():
        assert bytes_after[key] - bytes_before[key] >= 40 * packets, key
    spread = result["figures"]["service_spread_v6"]
    assert sorted(spread) == sorted(p.name for p in state.backends("web")), spread
    for node in state.nodes:
        sid_of = {
            s.get("nexthop"): s["sid"] for s in ask_agent(node.api_socket, "desired")["local_sids"]
        }
        for pod in state.backends("web"):
            if pod.node == node.name:
                key = (node.name, sid_of[pod.ipv6])
                assert grown[key] >= spread[pod.name], (pod.name, grown[key], spread)

    # Service and per-node policy counters: nexthop group statistics (kernel 6.7+); an
    # older kernel exports no such series at all, rather than a 0.
    if services_before:
        services = by_job(prometheus.query(web))
        assert services.keys() == {(job,) for job in jobs}
        steered = sum(services.values()) - sum(services_before.values())
        assert steered >= result["figures"]["service_flows_v6"]
    if policies_before:
        after_policies = by_job(prometheus.query(policies), "owner")
        assert after_policies.keys() == policies_before.keys()
        # node/<other>/v6 on each node: pod→pod across nodes went through it.
        assert all(after_policies[k] > policies_before[k] for k in after_policies)

    # Control plane: the agents programmed the lab and served its pods' CNI ADDs.
    changes = by_job(prometheus.query("sum by (job) (srv6ctl_reconcile_changes_total)"))
    dx6_added = by_job(
        prometheus.query('srv6ctl_reconcile_changes_total{kind="EndDX6", operation="add"}')
    )
    adds = by_job(
        prometheus.query('srv6ctl_cni_request_duration_seconds_count{command="ADD"}'), "code"
    )
    add_seconds = by_job(
        prometheus.query('srv6ctl_cni_request_duration_seconds_sum{command="ADD", code="0"}')
    )
    for job in jobs:
        pods = lab.pods_on(job)
        assert changes[(job,)] >= dx6_added[(job,)] >= pods
        codes = {code: count for (j, code), count in adds.items() if j == job}
        assert codes == {"0": pods}  # one successful ADD per pod, none failed
        assert 0 < add_seconds[(job,)] / pods < 10

    # IPAM: this node's pods, the lab's nodes and services.
    used = by_job(prometheus.query("srv6ctl_ipam_pool_used"), "pool")
    size = by_job(prometheus.query("srv6ctl_ipam_pool_size"), "pool")
    for job in jobs:
        assert used[(job, "pod_addresses")] == lab.pods_on(job)
        assert used[(job, "node_ids")] == NODES
        assert used[(job, "service_bsids")] == len(state.services)
    assert used.keys() == size.keys() and all(used[k] <= size[k] for k in used)
    assert by_job(prometheus.query("srv6ctl_ipam_scrape_success")) == {(j,): 1 for j in jobs}


def test_top_shows_an_agents_sids_and_services(lab: TelemetryLab) -> None:
    node = lab.run.state.node("n1")
    by_url = srv6ctl("top", "--url", lab.metrics["n1"], "--count", "1", "--interval", "0.3")
    by_socket = srv6ctl("top", "--api-socket", node.api_socket, "--count", "1", "--interval", "0.3")
    for screen in (by_url.stdout, by_socket.stdout):
        assert "ready — rates over" in screen, screen
        assert "local SID (behaviour)" in screen and "service (family)" in screen, screen
        assert "packets/s" in screen and "bytes/s" in screen, screen
        assert "fcbb:bb00:1::6 (End.DT6)" in screen and "(End.DX6)" in screen, screen
        assert "ipam: " in screen, screen
