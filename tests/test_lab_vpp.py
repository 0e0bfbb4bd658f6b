"""`srv6ctl lab up --dataplane vpp`: one real VPP per node namespace, or a clear refusal.

Without VPP (CI): the refusal names what is missing and how to provide it, and nothing is
made. With VPP (`SRV6CTL_VPP_BIN`, as in tests/test_vpp_integration.py; skipped with the
reason otherwise): a 2-node lab whose nodes' uplinks and pods' ports are VPP's, where a
pod reaches a pod and the ClusterIP on the other node through VPP — its counters show the
packets — verify's connectivity checks pass, and `lab down` leaves nothing: no VPP, no
namespace, no shared-memory file, no state directory.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from ipaddress import IPv6Address
from pathlib import Path
from typing import Any

import pytest

from srv6ctl.lab import netns as lab_netns
from srv6ctl.lab import processes
from srv6ctl.lab.state import LabPaths, LabState, load_state
from srv6ctl.lab.vpp import BIN_ENV
from srv6ctl.verify.flows import answers, tcp_flows
from tests.support.netns import require_netns
from tests.test_lab import LabRun, verify
from tests.test_vpp_integration import _why_no_vpp

pytestmark = [pytest.mark.netns, pytest.mark.slow]


def _leftovers(run: LabRun) -> dict[str, Any]:
    return {
        "namespaces": [n for n in lab_netns.list_netns() if n.startswith(run.prefix + "-")],
        "processes": [p.argv for p in processes.lab_processes(run.state_dir)],
        "state dir": run.state_dir.exists(),
        "shm": sorted(p.name for p in Path("/dev/shm").glob(f"{run.prefix}-*")),
    }


NOTHING = {"namespaces": [], "processes": [], "state dir": False, "shm": []}


def _new_run() -> LabRun:
    tag = secrets.token_hex(3)
    return LabRun(Path(f"/tmp/s6v-{tag}").absolute(), f"s6v{tag}")


def test_without_vpp_up_refuses_and_makes_nothing(tmp_path: Path) -> None:
    run = _new_run()
    env = {k: v for k, v in os.environ.items() if k != BIN_ENV}
    env["PATH"] = str(tmp_path)  # no `vpp` there (nor anything else the lab would run)
    command = [sys.executable, "-m", "srv6ctl.lab", "up", "--dataplane", "vpp"]
    command += ["--prefix", run.prefix, "--state-dir", str(run.state_dir)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)
    said = " ".join((done.stdout + done.stderr).split())  # rich may wrap the line
    assert done.returncode != 0
    assert f"no `vpp` binary on PATH (or {BIN_ENV})" in said, said
    assert "--dataplane kernel" in said
    assert _leftovers(run) == NOTHING

    env[BIN_ENV] = str(tmp_path / "vpp")  # named, but not there
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)
    said = " ".join((done.stdout + done.stderr).split())
    assert done.returncode != 0 and f"{BIN_ENV}={tmp_path / 'vpp'}" in said, said
    assert _leftovers(run) == NOTHING


# --- with a real VPP -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vpp_lab() -> Iterator[LabRun]:
    if not os.environ.get(BIN_ENV):
        pytest.skip(f"no VPP: set {BIN_ENV} to a vpp 25.10 binary (the lab starts one per node)")
    reason = _why_no_vpp()
    if reason is not None:
        pytest.skip(reason)
    require_netns()
    run = _new_run()
    try:
        # One pod per node: the client on n1, the backend on n2 — every flow crosses nodes.
        run.up("--dataplane", "vpp", "--nodes", "2", "--pods-per-node", "1")
        yield run
    finally:
        run.lab("down", "--prefix", run.prefix, check=False)
        left = _leftovers(run)
        shutil.rmtree(run.state_dir, ignore_errors=True)
        assert left == NOTHING, left


def _state(run: LabRun) -> LabState:
    state = load_state(LabPaths(run.state_dir))
    assert state is not None
    return state


def test_up_runs_one_vpp_per_node_owning_its_uplink(vpp_lab: LabRun) -> None:
    done = vpp_lab.lab("status", "--json", check=False)
    seen = json.loads(done.stdout)
    assert done.returncode == 0, done.stdout + done.stderr
    assert seen["dataplane"] == "vpp" and seen["complete"]
    assert [(n["name"], n["agent"], n["vpp"]) for n in seen["nodes"]] == [
        ("n1", "ready", "running"),
        ("n2", "ready", "running"),
    ]
    state = _state(vpp_lab)
    for node in state.nodes:
        assert node.vpp_api_socket and node.vpp_dir
        assert Path(node.vpp_api_socket).is_relative_to(vpp_lab.state_dir)
        startup = (Path(node.vpp_dir) / "startup.conf").read_text()
        assert "dpdk" not in startup and "page-size 4k" in startup
        assert "poll-sleep-usec 100" in startup and "plugin default { disable }" in startup
        # The kernel's end of the uplink is silent: VPP holds the node's address.
        kernel = lab_netns.ip("-6", "addr", "show", "dev", "eth0", netns=node.netns)
        assert "inet6" not in kernel
        from srv6ctl.lab.vpp import cli

        assert node.internal_ipv6 in cli(node.vpp_api_socket, "show interface address")


def test_pod_to_pod_and_to_the_cluster_ip_across_nodes_through_vpp(vpp_lab: LabRun) -> None:
    state = _state(vpp_lab)
    client, backend = state.pod("client-1"), state.pod("web-1")
    assert (client.node, backend.node) == ("n1", "n2")
    web = state.service("web")
    n1, n2 = state.node("n1"), state.node("n2")
    before = _sid_packets(n2.vpp_api_socket, n2.vpp_stats_socket)

    netns = f"/var/run/netns/{client.netns}"
    to_pod = answers(tcp_flows(netns, IPv6Address(backend.ipv6), 8080, sports=[42001, 42002]))
    to_service = answers(tcp_flows(netns, IPv6Address(web.cluster_ipv6), 80, sports=[42003]))
    assert [(a.pod, a.peer) for a in to_pod] == [("web-1", client.ipv6)] * 2
    assert [(a.pod, a.peer) for a in to_service] == [("web-1", client.ipv6)]

    # Real packets through VPP: n2's SIDs (its End.DT6 for the pod, the backend's End.DX6
    # for the service) counted each flow's SYN, ACK and request at least.
    after = _sid_packets(n2.vpp_api_socket, n2.vpp_stats_socket)
    assert after - before >= 3 * 3, (before, after)
    # And n1's kernel never routed them: VPP did (no SRv6 route in its namespace).
    assert "seg6" not in lab_netns.ip("-6", "route", "show", "table", "all", netns=n1.netns)

    result = verify(vpp_lab, "--only", "connectivity", "--flows", "200")
    checks = {c["name"]: c for c in result["checks"]}
    assert checks["pod→pod across nodes (IPv6)"]["pass"], checks
    no_nat = [c for n, c in checks.items() if "backend saw the client's own address" in n]
    assert no_nat and all(c["pass"] for c in no_nat), no_nat
    assert result["failed"] == [], result["failed"]


def _sid_packets(api_socket: str | None, stats_socket: str | None) -> int:
    """Packets VPP counted on all its local SIDs."""
    from srv6ctl.dataplane.vpp import VppBackend

    assert api_socket is not None
    with VppBackend(
        api_socket, stats_socket=stats_socket, connect_timeout=10, client_name="srv6ctl-test"
    ) as backend:
        counted = backend.counters()
    return sum(c.packets for key, c in counted.items() if key[0] == "localsid")
