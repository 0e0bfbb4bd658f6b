"""verify's policy group: real flows in the lab judged against the NetworkPolicy compiler.

Each flow's expected verdict, and what the wire says of it, come from
`srv6ctl.lab.policy_verdicts`. With policies in the lab, the group checks their verdicts on
the wire. With no policy in the lab, the group checks that everything passes, then applies a
sample policy (ingress to `app=web` only from `app=client`, only TCP on the named port
`http`), waits until the verdicts on the wire are the compiler's, removes it and waits
until everything passes again — leaving the lab as it found it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Sequence
from typing import Any

from srv6ctl.lab import objects
from srv6ctl.lab.kubernetes_policy import policy_store
from srv6ctl.lab.policy import PolicyError, validate
from srv6ctl.lab.policy_verdicts import Flow, Verdict, cluster_now, expected_flows, judge, settle
from srv6ctl.lab.state import LabPaths, LabState
from srv6ctl.verify.report import Report

GROUP = "policy"
MAX_REPORTED = 12  # mismatches reported one by one per phase; the rest are counted
SAMPLE_NAME = "srv6ctl-verify-sample"
SAMPLE_POLICY: dict[str, Any] = {
    "apiVersion": "networking.k8s.io/v1",
    "kind": "NetworkPolicy",
    "metadata": {"name": SAMPLE_NAME, "namespace": "default"},
    "spec": {
        "podSelector": {"matchLabels": {objects.APP_LABEL: "web"}},
        "policyTypes": ["Ingress"],
        "ingress": [
            {
                "from": [{"podSelector": {"matchLabels": {objects.APP_LABEL: "client"}}}],
                "ports": [{"protocol": "TCP", "port": "http"}],
            }
        ],
    },
}


def tally(flows: Iterable[Flow]) -> str:
    counts: dict[Verdict, int] = {}
    for flow in flows:
        counts[flow.expected] = counts.get(flow.expected, 0) + 1
    return ", ".join(f"{n} {v}" for v, n in sorted(counts.items()))


# --- the check group ----------------------------------------------------------------------------


class PolicyChecks:
    """verify's policy group, against the lab (`srv6ctl.lab.build.Lab`)."""

    def __init__(self, lab: Any, report: Report) -> None:
        self.lab = lab
        self.report = report
        self.paths: LabPaths = lab.paths
        self.store = policy_store(self.paths, lab.state)

    @property
    def state(self) -> LabState:
        state: LabState | None = self.lab.state
        assert state is not None
        return state

    def run(self) -> None:
        cluster, present = cluster_now(self.paths, self.state)
        if present:
            names = ", ".join(p.key for p in present)
            flows = expected_flows(self.state, cluster)
            self._phase(f"policies {names}: verdicts on the wire", flows, judge(flows))
            return
        flows = expected_flows(self.state, cluster)
        self._phase("no policy: every flow passes", flows, judge(flows))
        sample = validate(SAMPLE_POLICY, "the sample policy")
        try:
            started = time.monotonic()
            self.store.apply([sample])
            cluster, _ = cluster_now(self.paths, self.state)
            flows = expected_flows(self.state, cluster)
            problems = settle(flows)
            self.report.figures["policy_apply_ms"] = round((time.monotonic() - started) * 1000)
            self._phase(
                f"sample policy {SAMPLE_NAME} (ingress to app=web only from app=client, "
                "TCP port http)",
                flows,
                problems,
            )
        finally:
            started = time.monotonic()
            with contextlib.suppress(PolicyError):  # not there: apply failed before writing
                self.store.delete([(sample.namespace, sample.name)])
        cluster, _ = cluster_now(self.paths, self.state)
        flows = expected_flows(self.state, cluster)
        problems = settle(flows)
        self.report.figures["policy_remove_ms"] = round((time.monotonic() - started) * 1000)
        self._phase("sample policy removed: every flow passes again", flows, problems)

    def _phase(self, name: str, flows: Sequence[Flow], problems: list[tuple[Flow, str]]) -> None:
        self.report.figures["policy_flows"] = self.report.figures.get("policy_flows", 0) + len(
            flows
        )
        if not flows:
            self.report.skip(GROUP, name, "the lab has no pair of pods to try")
            return
        self.report.add(
            GROUP,
            name,
            not problems,
            f"{len(flows)} flows ({tally(flows)}), each as the compiler says"
            if not problems
            else f"{len(problems)} of {len(flows)} flows differ from the compiler's verdict",
        )
        for flow, problem in problems[:MAX_REPORTED]:
            self.report.add(GROUP, flow.label, False, problem)
        if len(problems) > MAX_REPORTED:
            self.report.add(
                GROUP, f"{name}: more mismatches", False, f"{len(problems) - MAX_REPORTED} more"
            )
