"""NetworkPolicy in the lab for real: `lab policy apply`, verify's policy group, real flows.

One small lab (2 nodes, 2 pods each: a client and a web backend per node) is shared by
the tests below, in file order, and torn down at the end whatever happened, after which
nothing of it may be left. The commands run as a user runs them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from srv6ctl.lab.build import Lab
from srv6ctl.lab.policy import lab_cluster
from srv6ctl.lab.policy_verdicts import expected_flows, judge
from srv6ctl.lab.progress import Steps, console
from srv6ctl.verify.flows import Answer, tcp_flows, udp_flows
from tests.test_lab import LabRun, lab_run_of, verify

pytestmark = [pytest.mark.netns, pytest.mark.slow, pytest.mark.kernel_srv6]

POLICY = """\
# Ingress to the web pods: only from the clients, only TCP 8080 (the service's
# targetPort behind port 80). The clients may talk to the web pods only.
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: web-from-clients
spec:
  podSelector:
    matchLabels: {app: web}
  ingress:
  - from:
    - podSelector:
        matchLabels: {app: client}
    ports:
    - {protocol: TCP, port: 8080}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: clients-to-web-only
spec:
  podSelector:
    matchLabels: {app: client}
  policyTypes: [Egress]
  egress:
  - to:
    - namespaceSelector:
        matchLabels: {kubernetes.io/metadata.name: default}
      podSelector:
        matchLabels: {app: web}
"""


@pytest.fixture(scope="module")
def lab() -> Iterator[LabRun]:
    with lab_run_of("p", "--nodes", "2", "--pods-per-node", "2") as run:
        yield run


@pytest.fixture(scope="module")
def policy_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("policies") / "web.yaml"
    path.write_text(POLICY)
    return path


def policies(run: LabRun) -> list[dict[str, Any]]:
    done = run.lab("policy", "list", "--json")
    result: list[dict[str, Any]] = json.loads(done.stdout)
    return result


def policy_checks(result: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for c in result["checks"] if c.get("group") == "policy"]


class Pods:
    """Real flows between the lab's pods (verify's own client code)."""

    def __init__(self, run: LabRun) -> None:
        self.state = run.state

    def tcp(self, src: str, dst: str, port: int) -> bool:
        netns = self.state.pod(src).netns
        address = dst if ":" in dst else self.state.pod(dst).ipv6
        (result,) = tcp_flows(netns, address, port, timeout=1.5)
        return isinstance(result, Answer)

    def udp(self, src: str, dst: str, port: int) -> bool:
        netns = self.state.pod(src).netns
        (result,) = udp_flows(netns, self.state.pod(dst).ipv6, port, timeout=1.5)
        return isinstance(result, Answer)


def test_verify_policy_group_without_policies_uses_a_sample_and_removes_it(lab: LabRun) -> None:
    result = verify(lab, "--only", "policy")
    assert result["failed"] == []
    names = [c["name"] for c in policy_checks(result)]
    assert names[0] == "no policy: every flow passes"
    assert names[1].startswith("sample policy srv6ctl-verify-sample")
    assert names[2] == "sample policy removed: every flow passes again"
    # 4 pods: 12 pairs x 2 ports x 2 protocols, and 2 clients x 4 service ports.
    assert "56 flows (30 allowed, 26 blocked)" in policy_checks(result)[1]["detail"]
    assert policies(lab) == []  # the lab as verify found it


def test_apply_rejects_a_bad_file_and_writes_nothing(lab: LabRun, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(POLICY.replace("port: 8080", "port: 80800"))
    done = lab.lab("policy", "apply", str(bad), check=False)
    assert done.returncode == 1
    assert "spec.ingress[0].ports[0].port: 80800 is not a port number" in done.stderr
    assert "nothing written" in done.stderr
    assert policies(lab) == []


def test_applied_policy_blocks_and_allows_real_flows(lab: LabRun, policy_file: Path) -> None:
    done = lab.lab("policy", "apply", str(policy_file), "--wait")
    assert "networkpolicy default/web-from-clients created (selects web-1, web-2)" in done.stdout
    assert "in effect" in done.stdout
    assert {p["name"] for p in policies(lab)} == {"web-from-clients", "clients-to-web-only"}
    pods = Pods(lab)
    assert pods.tcp("client-1", "web-2", 8080)  # across nodes, the allowed port
    assert not pods.tcp("client-1", "web-2", 8081)  # another port
    assert not pods.udp("client-2", "web-1", 8080)  # another protocol
    assert not pods.tcp("web-1", "web-2", 8080)  # not a client
    assert not pods.tcp("client-1", "client-2", 8080)  # the clients' egress
    # client-1 is isolated for egress only: web-1 may open a connection to it (its
    # ingress is open), and the replies pass.
    assert pods.tcp("web-1", "client-1", 8081)


def test_verify_judges_the_applied_policies(lab: LabRun) -> None:
    result = verify(lab, "--only", "policy")
    assert result["failed"] == []
    (check,) = policy_checks(result)
    assert check["name"] == (
        "policies default/clients-to-web-only, default/web-from-clients: verdicts on the wire"
    )
    assert "blocked" in check["detail"] and "allowed" in check["detail"]
    assert {p["name"] for p in policies(lab)} == {"web-from-clients", "clients-to-web-only"}


def test_a_wrong_expectation_is_caught_with_src_dst_port_and_protocol(lab: LabRun) -> None:
    """The probe really tells blocked from allowed: expecting no policy at all while the
    policies are in force gives one mismatch per flow they block, each named."""
    state = Lab(lab.state_dir, Steps(console(), quiet=True)).state
    assert state is not None
    problems = judge(expected_flows(state, lab_cluster(state, [])))
    labels = {flow.label: problem for flow, problem in problems}
    web_2 = state.pod("web-2").ipv6
    key = f"client-1→web-2 [{web_2}]:8081/TCP"
    assert labels[key].startswith("expected allowed, got blocked")
    assert all(p.startswith("expected allowed, got blocked") for p in labels.values())


def test_delete_allows_everything_again(lab: LabRun, policy_file: Path) -> None:
    done = lab.lab("policy", "delete", str(policy_file), "--wait")
    assert "networkpolicy default/web-from-clients deleted" in done.stdout
    assert "in effect" in done.stdout
    assert policies(lab) == []
    pods = Pods(lab)
    assert pods.tcp("client-1", "web-2", 8081)
    assert pods.udp("client-2", "web-1", 8080)
    assert pods.tcp("web-1", "web-2", 8080)
    assert pods.tcp("client-1", "client-2", 8080)
