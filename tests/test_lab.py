"""The one-command lab for real: namespaces, agents, srv6-cni, pods; verify and trace on it.

Every lab here has its own state directory and namespace prefix (parallel-safe), and is
torn down at the end whatever happened, after which nothing may be left: no namespace
with its prefix, no process started with its marker, no state directory. The commands
run as a user runs them (`python -m srv6ctl.lab ...` is `srv6ctl lab ...`).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from srv6ctl.lab import netns as lab_netns
from srv6ctl.lab import processes
from srv6ctl.lab.build import Lab
from srv6ctl.lab.progress import Steps, console
from srv6ctl.lab.state import LabPaths, LabState, load_state
from srv6ctl.verify.flows import Answer, tcp_flows
from tests.support.kernel import host_kernel_problem
from tests.support.netns import require_netns
from tests.support.wait import wait_for

pytestmark = [pytest.mark.netns, pytest.mark.slow]


@dataclass
class LabRun:
    state_dir: Path
    prefix: str

    def cli(
        self, module: str, *args: str, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", module, *args, "--state-dir", str(self.state_dir)]
        if module == "srv6ctl.lab" and args and args[0] == "exec":
            # `exec` takes everything after `--` as the command: the option goes first.
            command = [sys.executable, "-m", module, args[0], "--state-dir", str(self.state_dir)]
            command += list(args[1:])
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        if check and done.returncode != 0:
            raise AssertionError(f"{command} failed:\n{done.stdout}\n{done.stderr}")
        return done

    def lab(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.cli("srv6ctl.lab", *args, check=check)

    def up(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.lab("up", "--prefix", self.prefix, *args, check=check)

    @property
    def state(self) -> LabState:
        state = load_state(LabPaths(self.state_dir))
        assert state is not None
        return state

    def leftovers(self) -> dict[str, Any]:
        return {
            "namespaces": [n for n in lab_netns.list_netns() if n.startswith(self.prefix + "-")],
            "processes": [p.argv for p in processes.lab_processes(self.state_dir)],
            "state dir": self.state_dir.exists(),
        }

    def destroy(self) -> None:
        """Whatever state the lab is in: everything of it goes."""
        Lab(self.state_dir, Steps(console(), quiet=True)).down(prefix=self.prefix)

    @classmethod
    def new(cls, letter: str) -> LabRun:
        """A lab of unique names (`s6<letter><hex>`), so that test modules run in parallel."""
        tag = secrets.token_hex(3)
        return cls(Path(f"/tmp/s6{letter}-{tag}").absolute(), f"s6{letter}{tag}")


@contextmanager
def lab_run_of(letter: str, *up_args: str) -> Iterator[LabRun]:
    """A new lab, brought up with `up_args` when given; destroyed at the end, and then
    nothing of it may be left."""
    require_netns()
    run = LabRun.new(letter)
    try:
        if up_args:
            run.up(*up_args)
        yield run
    finally:
        run.destroy()
        left = run.leftovers()
        shutil.rmtree(run.state_dir, ignore_errors=True)
        assert left == {"namespaces": [], "processes": [], "state dir": False}, left


@pytest.fixture
def lab_run() -> Iterator[LabRun]:
    with lab_run_of("l") as run:
        yield run


@pytest.fixture(scope="module")
def lab() -> Iterator[LabRun]:
    """One 3-node lab shared by the tests below, in file order."""
    with lab_run_of("l", "--nodes", "3", "--pods-per-node", "2") as run:
        yield run


def status(run: LabRun) -> dict[str, Any]:
    done = run.lab("status", "--json", check=False)
    result: dict[str, Any] = json.loads(done.stdout)
    result["exit"] = done.returncode
    return result


def verify(run: LabRun, *args: str) -> dict[str, Any]:
    # Minutes without KVM: convergence grows web to 40 backends and back.
    done = run.cli("srv6ctl.verify", "--json", *args, check=False, timeout=1200)
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1, done.stdout + done.stderr
    result: dict[str, Any] = json.loads(lines[0])
    failed = [c for c in result["checks"] if not c["pass"]]
    assert done.returncode == (1 if failed else 0)
    result["failed"] = failed
    return result


def lab_conformance(
    run: LabRun, node: str, passing: tuple[str, ...], absent: tuple[str, ...]
) -> dict[str, dict[str, Any]]:
    """`srv6ctl conformance --target lab --node NODE --json`, the `passing` cases passed
    and the `absent` ones n/a: the results by case id."""
    done = run.cli(
        "srv6ctl.cli", "conformance", "--target", "lab", "--node", node, "--json", check=False,
        timeout=800,
    )  # fmt: skip
    assert done.returncode in (0, 1), done.stdout + done.stderr
    (results,) = json.loads(done.stdout).values()
    by_id = {r["id"]: r for r in results}
    for case_id in passing:
        assert by_id[case_id]["verdict"] == "pass", by_id[case_id]
    for case_id in absent:
        assert by_id[case_id]["verdict"] == "n/a", by_id[case_id]
    return by_id


# --- one shared lab ---------------------------------------------------------------------------


@pytest.mark.kernel_srv6
def test_up_builds_nodes_agents_pods_and_services(lab: LabRun) -> None:
    seen = status(lab)
    assert seen["exit"] == 0 and seen["complete"]
    assert [(n["name"], n["node_id"], n["agent"]) for n in seen["nodes"]] == [
        ("n1", 1, "ready"),
        ("n2", 2, "ready"),
        ("n3", 3, "ready"),
    ]
    assert all(n["in_sync"] for n in seen["nodes"])
    pods = {p["name"]: p for p in seen["pods"]}
    assert len(pods) == 6 and all(p["server"] == "running" for p in pods.values())
    # Every node has a client and a backend.
    for node in ("n1", "n2", "n3"):
        assert {p["role"] for p in pods.values() if p["node"] == node} == {"client", "backend"}
    (web,) = [s for s in seen["services"] if s["name"] == "default/web"]
    assert len(web["backends"]) == 3 and web["nodes_in_sync"] == 3
    for name in lab.state.namespaces():
        assert lab_netns.exists(name)
    # The table a human reads.
    table = lab.lab("status").stdout
    assert "fcbb:bb00:1::/48" in table and "web-1" in table and "default/empty" in table


@pytest.mark.kernel_srv6(vm=True)
@pytest.mark.timeout(1500)
def test_verify_passes_every_check(lab: LabRun) -> None:
    result = verify(lab)
    assert result["failed"] == []
    names = " | ".join(c["name"] for c in result["checks"])
    for expected in (
        "End on n1",
        "End.DT6 on n2",
        "End.DX6 on n3",
        "H.Encaps.Red",
        "segments left > last entry",
        "SRH cut short",
        "pod→pod same node",
        "pod→pod across nodes",
        "no NAT",
        "spread over the backends by weight",
        "a backend reaching its own Service default/web spreads over all backends (IPv6)",
        "port == targetPort",
        "without endpoints is refused",
        "keep their backend through RTOs",
        "removed backend",
        "new backend",
        "session affinity keeps each client of default/web-sticky on one backend",
        "at 40 backends of default/web",
    ):
        assert expected in names, expected
    figures = result["figures"]
    assert figures["service_flows_v6"] >= 200
    # Issue 17: web-1's own connections to its Service reached all three backends.
    hairpin = figures["hairpin_spread_v6"]
    assert {"web-1", "web-2", "web-3"} <= set(hairpin), hairpin
    print(f"hairpin spread: {hairpin}")
    assert 0 < figures["withdraw_convergence_ms"] < 20_000
    assert 0 < figures["add_convergence_ms"] < 20_000
    # The convergence checks put the lab back in its shape.
    assert len(lab.state.backends("web")) == 3


@pytest.mark.kernel_srv6(vm=True)
@pytest.mark.timeout(900)
def test_conformance_against_a_kernel_lab_node(lab: LabRun) -> None:
    """`srv6ctl conformance --target lab`: n1's SIDs as the agent programmed them in the
    kernel (End, End.DT6, a pod's End.DX6), probed from the lab's external client: they
    forward and deliver as RFC 8986 says; the agent adds no `count`, so the counters case
    is n/a, as is what it does not program."""
    lab_conformance(
        lab, "n1",
        passing=("end.forward", "end.hop-limit", "transit.not-a-sid", "end.dt6.lookup",
                 "end.dx6.srh", "end.dx6.reduced", "srh.tlv.unknown"),
        absent=("end.counters", "end.x.cross-connect", "csid.shift"),
    )  # fmt: skip


@pytest.mark.kernel_srv6
def test_exec_runs_in_the_pods_namespace(lab: LabRun) -> None:
    pod = lab.state.pod("client-1")
    done = lab.lab("exec", "client-1", "--", "ip", "-6", "-o", "addr", "show", "dev", "eth0")
    assert f"{pod.ipv6}/128" in done.stdout
    node = lab.lab("exec", "n2", "--", "ip", "-6", "route", "show", "fd00:96::10")
    assert "encap seg6" in node.stdout


@pytest.mark.kernel_srv6
def test_trace_names_the_policy_the_sid_the_node_and_the_pod(lab: LabRun) -> None:
    client = lab.state.pod("client-2")
    for sport in (40000, 40001, 40002):
        done = lab.cli("srv6ctl.trace", "client-2", "web", "--sport", str(sport), "--json")
        trace = json.loads(done.stdout)
        assert trace["match"]["policy"] == "svc/default/web/v6"
        assert len(trace["candidates"]) == 3
        assert trace["chosen"] in [c["segments"] for c in trace["candidates"]]
        (hop,) = trace["hops"]
        assert hop["behaviour"] == "End.DX6"
        assert trace["final"]["rewritten"] and trace["final"]["port_seen"] == 8080
        # The data path's answer is what a real connection with this 5-tuple gets.
        (answer,) = tcp_flows(f"/var/run/netns/{client.netns}", "fd00:96::10", 80, sports=[sport])
        assert isinstance(answer, Answer)
        assert trace["final"]["pod"] == f"default/{answer.pod}"
    pod = json.loads(
        lab.cli("srv6ctl.trace", "client-1", "web-2", "--port", "8080", "--json").stdout
    )
    assert pod["match"]["policy"] == "node/n2/v6"
    assert pod["hops"][0]["behaviour"] == "End.DT6" and pod["hops"][0]["node"] == "n2"
    assert pod["final"]["pod"] == "default/web-2"
    rejected = json.loads(lab.cli("srv6ctl.trace", "client-1", "empty", "--json").stdout)
    assert rejected["match"]["kind"] == "route (prohibit)"
    human = lab.cli("srv6ctl.trace", "client-1", "web").stdout
    assert "candidates (3 segment lists)" in human and "arrives at default/web-" in human


@pytest.mark.kernel_srv6
def test_up_twice_changes_nothing(lab: LabRun) -> None:
    before = [n.agent for n in lab.state.nodes]
    done = lab.up("--nodes", "3", "--pods-per-node", "2")
    assert "already up" in done.stdout
    assert [n.agent for n in lab.state.nodes] == before


@pytest.mark.kernel_srv6
def test_up_restores_a_killed_agent(lab: LabRun) -> None:
    victim = lab.state.node("n2").agent
    assert victim is not None
    os.kill(victim.pid, signal.SIGKILL)
    wait_for(lambda: not processes.alive(victim), 5, "n2's agent to die of SIGKILL")
    seen = status(lab)
    assert seen["exit"] == 1
    assert [n["agent"] for n in seen["nodes"]][1] == "down"
    done = lab.up("--nodes", "3", "--pods-per-node", "2")
    assert "repaired" in done.stdout and "agent of n2 is not running" in done.stdout
    restarted = lab.state.node("n2").agent
    assert restarted is not None and restarted.pid != victim.pid
    seen = status(lab)
    assert seen["exit"] == 0 and all(n["in_sync"] for n in seen["nodes"])
    # The restarted agent found its pods and serves them: service flows from n2 work.
    client = lab.state.pod("client-2")
    results = tcp_flows(f"/var/run/netns/{client.netns}", "fd00:96::10", 80, 12)
    assert all(isinstance(r, Answer) for r in results)


@pytest.mark.kernel_srv6
def test_scale_adds_and_removes_backends_through_cni(lab: LabRun) -> None:
    lab.lab("scale", "web", "5")
    backends = lab.state.backends("web")
    assert len(backends) == 5
    assert {p.node for p in backends} == {"n1", "n2", "n3"}
    seen = status(lab)
    (web,) = [s for s in seen["services"] if s["name"] == "default/web"]
    assert len(web["backends"]) == 5 and web["nodes_in_sync"] == 3
    added = [p for p in backends if p.name in ("web-4", "web-5")]
    lab.lab("scale", "web", "3")
    assert sorted(p.name for p in lab.state.backends("web")) == ["web-1", "web-2", "web-3"]
    for pod in added:
        assert not lab_netns.exists(pod.netns)
        assert not processes.alive(pod.server)
    assert status(lab)["exit"] == 0


@pytest.mark.kernel_srv6
def test_verify_in_node_mode_from_inside_a_node(lab: LabRun) -> None:
    node = lab.state.node("n1")
    command = ["ip", "netns", "exec", node.netns, sys.executable, "-m", "srv6ctl.verify"]
    command += ["--json", "--node", "n1", "--api-socket", node.api_socket]
    command += ["--config", str(lab.state_dir / "config.yaml")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    result = json.loads(done.stdout)
    assert done.returncode == 0, result
    ran = [c for c in result["checks"] if not c.get("skipped")]
    assert len(ran) >= 8 and all(c["pass"] for c in ran)
    # It removed its probe namespace and veth again.
    assert not [n for n in lab_netns.list_netns() if n.startswith("s6verify-")]
    links = lab_netns.ip("-o", "link", netns=node.netns)
    assert "s6vp" not in links


@pytest.mark.kernel_srv6
def test_down_removes_everything_and_twice_is_fine(lab: LabRun) -> None:
    done = lab.lab("down")
    assert "lab down" in done.stdout
    assert lab.leftovers() == {"namespaces": [], "processes": [], "state dir": False}
    again = lab.lab("down")
    assert "nothing to remove" in again.stdout


# --- labs of their own ------------------------------------------------------------------------


@pytest.mark.kernel_srv6
def test_up_after_a_crashed_build_cleans_up_and_builds(lab_run: LabRun) -> None:
    command = [sys.executable, "-m", "srv6ctl.lab", "up", "--prefix", lab_run.prefix]
    command += ["--nodes", "2", "--state-dir", str(lab_run.state_dir)]
    build = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        logs = [lab_run.state_dir / f"n{i}" / "agent.log" for i in (1, 2)]
        wait_for(lambda: all(log.exists() for log in logs), 30, "the build to start its agents")
    finally:
        build.kill()  # the crash: agents and namespaces stay behind, unfinished
        build.wait()
    assert not lab_run.state.complete
    assert lab_run.leftovers()["processes"]
    done = lab_run.up("--nodes", "2")
    assert "rebuilding" in done.stdout and "lab is up" in done.stdout
    assert status(lab_run)["exit"] == 0
    # Only the new agents are left: the crashed build's were stopped.
    live = {p.pid for p in processes.lab_processes(lab_run.state_dir)}
    assert {n.agent.pid for n in lab_run.state.nodes if n.agent} <= live


@pytest.mark.kernel_srv6
def test_dual_stack_lab_passes_verify(lab_run: LabRun) -> None:
    lab_run.up("--nodes", "2", "--pods-per-node", "2", "--dual-stack")
    result = verify(lab_run, "--only", "conformance,connectivity")
    assert result["failed"] == []
    names = " | ".join(c["name"] for c in result["checks"])
    assert "End.DX4" in names and "pod→pod across nodes (IPv4)" in names
    assert "10.96.0.10:80" in names and result["figures"]["service_flows_v4"] >= 200
    # Issue 17 over End.DX4: a backend's own IPv4 connections to its Service spread too.
    assert (
        "a backend reaching its own Service default/web spreads over all backends (IPv4)" in names
    )


def test_vpp_dataplane_is_refused_without_vpp(tmp_path: Path) -> None:
    env = {**os.environ, "PATH": str(tmp_path)}  # an empty PATH directory: no vpp
    command = [sys.executable, "-m", "srv6ctl.lab", "up", "--dataplane", "vpp"]
    done = subprocess.run(
        [*command, "--state-dir", str(tmp_path / "lab")],
        capture_output=True,
        text=True,
        env=env,
    )
    assert done.returncode == 1
    assert "no `vpp` binary on PATH" in done.stdout
    assert not (tmp_path / "lab").exists()


def test_up_on_a_kernel_without_srv6_refuses_within_seconds_and_names_the_way_out(
    lab_run: LabRun,
) -> None:
    if host_kernel_problem() is None:
        pytest.skip("the host kernel has SRv6: the refusal is for a kernel without it")
    start = time.monotonic()
    done = lab_run.up(check=False)
    assert done.returncode == 1
    assert time.monotonic() - start < 15  # the probe, not an agent's 60 s wait
    said = " ".join(done.stdout.split())  # rich folds long lines
    assert "CONFIG_IPV6_SEG6_LWTUNNEL" in said and "`srv6ctl lab vm`" in said
    assert lab_run.leftovers() == {"namespaces": [], "processes": [], "state dir": False}
