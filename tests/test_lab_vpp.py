"""`srv6ctl lab up --dataplane vpp`: one real VPP per node namespace, or a clear refusal.

Without VPP (CI): the refusal names what is missing and how to provide it, and nothing is
made. With VPP (`SRV6CTL_VPP_BIN`, as in tests/test_vpp_integration.py; skipped with the
reason otherwise): a 2-node lab (a client and a backend of `web` on each node) whose
nodes' uplinks and pods' ports are VPP's, where a pod reaches a pod on the other node and
the ClusterIP through VPP — its counters show the packets —, the agents have VPP hash SR
policies on the 5-tuple without the IPv6 flow label, the whole of `srv6ctl verify`
(conformance's crafted SRv6 packets, connectivity with two backends, convergence,
policy, NodePorts from the external client under both traffic policies) passes but for
checks skipped with their reason, and `lab down` leaves nothing: no VPP, no namespace, no
shared-memory file, no state directory.
"""

from __future__ import annotations

import json
import os
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
from tests.test_lab import LabRun, lab_conformance, verify
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
    return LabRun.new("v")


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
        # Two pods per node (client-i and web-i on node i): two backends of `web`, so that
        # verify's load-balancing and flow-affinity checks mean something.
        run.up("--dataplane", "vpp", "--nodes", "2")
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
    client, backend = state.pod("client-1"), state.pod("web-2")
    assert (client.node, backend.node) == ("n1", "n2")
    web = state.service("web")
    n1, n2 = state.node("n1"), state.node("n2")
    before = _sid_packets(n2.vpp_api_socket, n2.vpp_stats_socket)

    netns = f"/var/run/netns/{client.netns}"
    sports = [42001, 42002, 42003]
    to_pod = answers(tcp_flows(netns, IPv6Address(backend.ipv6), 8080, sports=sports))
    to_service = answers(tcp_flows(netns, IPv6Address(web.cluster_ipv6), 80, sports=[42004]))
    assert [(a.pod, a.peer) for a in to_pod] == [("web-2", client.ipv6)] * 3
    assert [(a.peer, a.pod.startswith("web-")) for a in to_service] == [(client.ipv6, True)]

    # Real packets through VPP: n2's SIDs (its End.DT6 for the pod) counted each flow's
    # SYN, ACK and request at least.
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


def test_vpp_hashes_sr_policies_on_the_5_tuple_without_the_flow_label(vpp_lab: LabRun) -> None:
    """The agent (not the lab) set it, through the API, before making any policy."""
    from srv6ctl.lab.vpp import cli

    for node in _state(vpp_lab).nodes:
        assert node.vpp_api_socket is not None
        shown = cli(node.vpp_api_socket, "show ip6 fib table 0 summary").splitlines()[0]
        assert "flow hash:[src dst sport dport proto ]" in shown, shown
        script = (Path(str(node.vpp_dir)) / "setup.vpp").read_text()
        assert "flow-hash" not in script


def test_verify_passes_on_vpp(vpp_lab: LabRun) -> None:
    result = verify(vpp_lab, "--flows", "200")
    assert result["failed"] == [], result["failed"]
    checks = {(c["group"], c["name"]): c for c in result["checks"]}
    passed = {name for (group, name), c in checks.items() if c["pass"] and not c.get("skipped")}
    skipped = [c for c in checks.values() if c.get("skipped")]
    assert all(c["detail"] for c in skipped), skipped  # each says why
    # Conformance: crafted SRv6 packets judged on the wire against VPP, on both nodes.
    for node, sid in (("n1", "fcbb:bb00:1::"), ("n2", "fcbb:bb00:2::")):
        for behaviour in (f"End on {node} ({sid}1)", f"End.DT6 on {node} ({sid}6)"):
            assert behaviour in passed, (behaviour, sorted(passed))
        assert any(n.startswith(f"End.DX6 on {node} ") for n in passed)
        assert any(n.startswith(f"H.Encaps.Red of service default/web on {node}") for n in passed)
        assert f"segments left > last entry → dropped at {node}" in passed
    conformance = [c for (group, _), c in checks.items() if group == "conformance"]
    assert conformance and not any(c.get("skipped") for c in conformance), conformance
    # Flow affinity with two backends: VPP no longer hashes the flow label.
    assert "a TCP flow's backend is a function of its 5-tuple" in passed
    # Issue 17: a backend's own connections to its Service go through VPP's SR policy too.
    hairpin = "a backend reaching its own Service default/web spreads over all backends (IPv6)"
    assert hairpin in passed
    print(f"{hairpin}: {checks[('connectivity', hairpin)]['detail']}")
    assert "established TCP connections keep their backend through RTOs" in passed
    # NodePorts from the external client through VPP (a classifier session on the uplink's
    # input ACL, the service's table,
    # End.DX6 to a backend that DNATs to itself), both traffic policies.
    for service, ports in (("web", "30080/TCP 30081/UDP"), ("web-local", "31080/TCP 31081/UDP")):
        node_port = f"external client → default/{service} NodePort {ports} on every node (IPv6)"
        assert node_port in passed, (node_port, checks.get(("external", node_port)))


def test_conformance_against_a_lab_node_judges_what_the_agent_programmed(
    vpp_lab: LabRun,
) -> None:
    """`srv6ctl conformance --target lab`: the agent's own SIDs on n1 (End, End.DT6, a
    pod's End.DX6), probed from the lab's external client and watched on n1's uplink and
    pod veths: End forwards to the next segment (n2's locator), the decapsulating SIDs
    deliver to the pod, VPP counts the probe on the SID; what the agent does not program is
    n/a, saying so."""
    by_id = lab_conformance(
        vpp_lab, "n1",
        passing=("end.forward", "end.hop-limit", "transit.not-a-sid", "end.dt6.lookup",
                 "end.dx6.srh", "end.dx6.reduced", "end.counters"),
        absent=("end.x.cross-connect", "end.psp"),
    )  # fmt: skip
    assert "the agent programs no End.X" in by_id["end.x.cross-connect"]["detail"]
    # The same VPP deviation the suite's own VPP run measures (README, "RFC conformance").
    assert by_id["end.sl-past-last-entry"]["verdict"] == "fail"
