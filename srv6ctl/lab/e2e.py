"""The upstream Kubernetes e2e tests against the lab on real Kubernetes (`srv6ctl lab e2e`).

`e2e.test` (built beside the other binaries: README, "A lab on real Kubernetes") runs in
the control plane's namespace with the admin's kubeconfig, `--provider=skeleton` (no
cloud), the kubectl beside it for its `kubectl exec`s, and writes its JUnit report into
the lab's directory; `summary` reads that report back as counts and the failed tests'
names. The default selection is `[sig-network]` without what needs more than the lab
has or disturbs it for the others (`DEFAULT_SKIP`, each reason beside it; and the DNS
tests where the lab runs no cluster DNS).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from srv6ctl.lab.kubernetes import kubeconfig_path
from srv6ctl.lab.state import LabPaths, LabState

DEFAULT_FOCUS = r"\[sig-network\]"
DEFAULT_SKIP = "|".join(
    (
        r"\[Serial\]",  # they change the cluster for everyone (taints, node restarts)
        r"\[Disruptive\]",
        r"\[Flaky\]",
        # Optional features, each its own setup; the LoadBalancer specs ([Feature:
        # LoadBalancer], [Slow]) run against the lab's controller with --focus LoadBalancer.
        r"\[Feature:[^\]]+\]",
        r"\bIngress",  # no ingress controller
        r"\[Slow\]",
    )
)

# Where DIR has no CoreDNS the lab has no cluster DNS (cluster_dns): its tests are skipped.
WITHOUT_DNS = r"\bDNS\b"


def default_skip(has_dns: bool) -> str:
    return DEFAULT_SKIP if has_dns else f"{DEFAULT_SKIP}|{WITHOUT_DNS}"


SUITE_NODES = ("[SynchronizedBeforeSuite]", "[SynchronizedAfterSuite]", "[BeforeSuite]",
               "[AfterSuite]", "[ReportBeforeSuite]", "[ReportAfterSuite]")  # fmt: skip
NOT_SELECTED = "skipped"  # ginkgo's whole message for a spec its focus/skip left out


@dataclass(frozen=True)
class Summary:
    """The selected specs by status; the failed ones' names, the skipped ones' reasons (a
    spec may skip itself at run time: e2eskipper says why)."""

    counts: Counter[str] = field(default_factory=Counter)
    failed: tuple[str, ...] = ()
    skipped: tuple[tuple[str, str], ...] = ()  # (name, why)

    def line(self) -> str:
        order = ("passed", "failed", "skipped")
        return f"{sum(self.counts.values())} specs: " + ", ".join(
            f"{self.counts.get(k, 0)} {k}" for k in order
        )


def report_dir(paths: LabPaths) -> Path:
    return paths.root / "e2e"


def scratch_dir(paths: LabPaths) -> Path:
    """The suite's TMPDIR: what it leaves behind (a kubeconfig copy per spec, test-kuberc*)
    goes with it, not into the host's /tmp."""
    return paths.root / "e2e-tmp"


def run(paths: LabPaths, command: list[str]) -> int:
    """Run the suite (`argv`) with its own TMPDIR, removed afterwards; its exit code."""
    scratch = scratch_dir(paths)
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(mode=0o700, parents=True)
    try:
        env = {**os.environ, "TMPDIR": str(scratch)}
        return subprocess.run(command, check=False, env=env).returncode
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def argv(paths: LabPaths, state: LabState, focus: str, skip: str, procs: int = 1) -> list[str]:
    """The command running the suite in the control plane's namespace; with `procs` > 1
    under DIR/ginkgo, that many specs at a time (as upstream CI runs the network tests:
    most of a spec's time is spent waiting)."""
    assert state.options.kubernetes is not None and state.control_plane_netns is not None
    binaries = Path(state.options.kubernetes)
    kubectl = binaries / "kubectl"
    if not kubectl.exists():
        kubectl = Path(sys.executable).parent / "kubectl"
    kubeconfig = kubeconfig_path(paths.control_plane, "admin")
    suite = [
        f"--kubeconfig={kubeconfig}",
        "--provider=skeleton",
        f"--kubectl-path={kubectl}",
        f"--report-dir={report_dir(paths)}",
        "--disable-log-dump",
        # Without it (the skeleton provider has no count) every spec needing 2 nodes skips.
        f"--num-nodes={len(state.nodes)}",
    ]
    ginkgo = [f"--focus={focus}", f"--skip={skip}", "--no-color", "--silence-skips",
              "--timeout=12h"]  # fmt: skip
    enter = ["nsenter", f"--net=/run/netns/{state.control_plane_netns}", "--"]
    if procs > 1:
        runner = [str(binaries / "ginkgo"), f"--procs={procs}", *ginkgo]
        return [*enter, *runner, str(binaries / "e2e.test"), "--", *suite]
    return [
        *enter,
        str(binaries / "e2e.test"),
        *suite,
        *(f"--ginkgo.{flag.removeprefix('--')}" for flag in ginkgo),
    ]


def summary(report: Path) -> Summary:
    """The specs the run selected, from ginkgo's JUnit report (a suite node counts only
    when it failed: a failed [SynchronizedBeforeSuite] fails every spec)."""
    counts: Counter[str] = Counter()
    failed, skipped = [], []
    for case in ElementTree.parse(report).getroot().iter("testcase"):
        name = case.get("name", "?")
        status = case.get("status", "")
        if status not in ("passed", "skipped"):
            status = "failed"  # failed, panicked, interrupted, timedout, aborted
        why = case.find("skipped")
        if status == "skipped" and why is not None and why.get("message") == NOT_SELECTED:
            continue
        if name.startswith(SUITE_NODES) and status != "failed":
            continue
        counts[status] += 1
        if status == "failed":
            failed.append(name)
        elif status == "skipped":
            skipped.append((name, (why.get("message", "") if why is not None else "").strip()))
    return Summary(counts, tuple(failed), tuple(skipped))


__all__ = [
    "DEFAULT_FOCUS",
    "DEFAULT_SKIP",
    "Summary",
    "argv",
    "default_skip",
    "report_dir",
    "run",
    "scratch_dir",
    "summary",
]
