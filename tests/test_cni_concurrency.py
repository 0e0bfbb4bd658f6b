"""Many pods at once on one node: the runtime may ADD and DEL different containers in parallel.

Fifty `srv6-cni` processes ADD at the same time, then fifty DEL at the same time, against
one server: every pod gets its own addresses, and afterwards nothing is left — no node
interface, no route, no allocation.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.support.cni import DUAL_STACK, CniRun, Harness, ip, node_veths, ping

pytestmark = pytest.mark.netns

PODS = 50


def test_fifty_pods_added_and_deleted_concurrently(
    make_cni_harness: Callable[..., Harness],
) -> None:
    harness = make_cni_harness(DUAL_STACK)
    pods = {f"ctr-{n:02d}": harness.new_pod() for n in range(PODS)}

    def run(command: str, container_id: str) -> CniRun:
        return harness.run(
            command,
            container_id=container_id,
            netns=pods[container_id],
            args=f"K8S_POD_NAMESPACE=load;K8S_POD_NAME={container_id}",
        )

    with ThreadPoolExecutor(max_workers=PODS) as pool:
        added = dict(zip(pods, pool.map(lambda cid: run("ADD", cid), pods), strict=True))
    failures = {cid: done.output for cid, done in added.items() if done.returncode != 0}
    assert not failures

    v6 = [done.output["ips"][0]["address"] for done in added.values()]
    v4 = [done.output["ips"][1]["address"] for done in added.values()]
    hosts = [done.output["interfaces"][0]["name"] for done in added.values()]
    assert len(set(v6)) == len(set(v4)) == len(set(hosts)) == PODS
    allocations = harness.allocator.pods(harness.node)
    assert len(allocations) == PODS
    assert len({a.addresses.index for a in allocations}) == PODS
    assert len(node_veths(harness.node_netns)) == PODS
    # Spot-check the data path between the first and the last pod.
    first, last = added["ctr-00"].output, added[f"ctr-{PODS - 1}"].output
    assert ping(pods["ctr-00"], last["ips"][0]["address"].split("/")[0])
    assert ping(pods[f"ctr-{PODS - 1}"], first["ips"][1]["address"].split("/")[0])

    with ThreadPoolExecutor(max_workers=PODS) as pool:
        deleted = list(pool.map(lambda cid: run("DEL", cid), pods))
    assert all(done.returncode == 0 for done in deleted), [d.output for d in deleted]

    assert node_veths(harness.node_netns) == []
    assert harness.allocator.pods(harness.node) == []
    routes = ip(harness.node_netns, "-6", "route", "show") + ip(harness.node_netns, "route", "show")
    assert "proto 106" not in routes
