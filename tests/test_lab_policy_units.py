"""`srv6ctl lab policy` and verify's policy verdicts, their pure parts: no root needed.

Parsing and validation (every refusal names the field, and nothing is written), the
files the agents read (through the agents' own LabSource), and the verdicts verify
expects — checked against what an agent compiles from the same objects.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from policies import model
from srv6ctl.lab import cli as lab_cli
from srv6ctl.lab import objects
from srv6ctl.lab.policy import (
    PolicyError,
    PolicyStore,
    ensure_namespaces,
    keys_of,
    lab_cluster,
    namespaces_present,
    parse_policies,
    selected,
    selector_text,
    validate,
)
from srv6ctl.lab.policy_verdicts import Flow, Seen, Verdict, expected_flows, mismatch
from srv6ctl.lab.state import (
    LabPaths,
    LabState,
    PodRecord,
    ServiceRecord,
    save_state,
    write_atomically,
)
from srv6ctl.netpol import PolicyView
from srv6ctl.sources.lab import LabSource
from srv6ctl.state import ClusterState, Kind, Upsert, kind_of
from srv6ctl.verify.policy import SAMPLE_POLICY
from tests.test_lab_units import two_nodes

WEB_FROM_CLIENTS = """
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
"""


def policy_doc(name: str = "p", **spec: object) -> dict[str, object]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"podSelector": {}, **spec},
    }


def lab_state(tmp_path: Path, dual_stack: bool = True) -> LabState:
    """client-1 and web-2 on n1, web-1 on n2; service web (80 → http, 8081)."""
    state = two_nodes(tmp_path, dual_stack, pods_per_node=2)
    for name, node, host, role in (
        ("client-1", "n1", 2, "client"),
        ("web-1", "n2", 3, "backend"),
        ("web-2", "n1", 4, "backend"),
    ):
        index = node[1]
        state.pods.append(
            PodRecord(
                name=name,
                node=node,
                netns=f"t-{name}",
                uid=f"uid-{name}",
                container_id=name,
                role=role,  # type: ignore[arg-type]
                service="web" if role == "backend" else None,
                ipv6=f"fd00:10:0:{index}::{host}",
                ipv4=f"10.128.{index}.{host}" if dual_stack else None,
            )
        )
    state.services.append(
        ServiceRecord(
            name="web",
            uid="uid-web",
            cluster_ipv6="fd00:96::10",
            cluster_ipv4="10.96.0.10" if dual_stack else None,
        )
    )
    return state


def verdicts(flows: list[Flow]) -> dict[tuple[str, str, int, str, int], Verdict]:
    return {(f.src, f.dst, f.address.version, str(f.protocol), f.port): f.expected for f in flows}


# --- parsing and validation --------------------------------------------------------------------


def test_a_file_of_several_documents_defaults_namespace_and_types() -> None:
    text = WEB_FROM_CLIENTS + "---\n" + yaml.safe_dump(policy_doc("deny-all", ingress=[]))
    first, second = parse_policies(text, "two.yaml")
    assert (first.key, second.key) == ("default/web-from-clients", "default/deny-all")
    # kubectl's namespace, the API's policyTypes default; written back explicitly.
    assert first.document["metadata"] == {"name": "web-from-clients", "namespace": "default"}
    assert first.policy.policy_types == frozenset({model.PolicyType.INGRESS})
    assert first.policy.ingress[0].ports == (model.PolicyPort(model.Protocol.TCP, 8080),)


def test_lists_json_and_typed_lists_are_unpacked() -> None:
    as_list = json.dumps({"apiVersion": "v1", "kind": "List", "items": [policy_doc("a")]})
    assert [p.name for p in parse_policies(as_list)] == ["a"]
    item = {"metadata": {"name": "b", "namespace": "ns1"}, "spec": {"podSelector": {}}}
    typed = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicyList", "items": [item]}
    assert [p.key for p in parse_policies(yaml.safe_dump(typed))] == ["ns1/b"]


def test_server_side_fields_are_dropped() -> None:
    doc = policy_doc("a")
    doc["metadata"] = {
        "name": "a",
        "namespace": "default",
        "uid": "x",
        "resourceVersion": "7",
        "labels": {"team": "t"},
    }
    doc["status"] = {}
    (policy,) = parse_policies(yaml.safe_dump(doc))
    assert policy.document["metadata"] == {
        "name": "a",
        "namespace": "default",
        "labels": {"team": "t"},
    }
    assert "status" not in policy.document


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"spec": {"podSelector": {}, "ingres": []}},
            "spec.ingres: unknown field (did you mean ingress?)",
        ),
        (
            {"spec": {"podSelector": {"matchLabel": {"a": "b"}}}},
            "spec.podSelector.matchLabel: unknown field (did you mean matchLabels?)",
        ),
        (
            {"spec": {"podSelector": {}, "ingress": [{"from": [{"podSelecter": {}}]}]}},
            "spec.ingress[0].from[0].podSelecter: unknown field (did you mean podSelector?)",
        ),
        (
            {"spec": {"podSelector": {}, "ingress": [{"ports": [{"port": 70000}]}]}},
            "spec.ingress[0].ports[0].port: 70000 is not a port number (1-65535)",
        ),
        (
            {"spec": {"podSelector": {}, "egress": [{"ports": [{"protocol": "ICMP"}]}]}},
            "spec.egress[0].ports[0].protocol: 'ICMP' is not TCP, UDP or SCTP",
        ),
        (
            {
                "spec": {
                    "podSelector": {},
                    "ingress": [{"from": [{"ipBlock": {"cidr": "fd00::/8"}, "podSelector": {}}]}],
                }
            },
            "spec.ingress[0].from[0]: ipBlock may not be combined with selectors",
        ),
        (
            {
                "spec": {
                    "podSelector": {},
                    "ingress": [{"from": [{"ipBlock": {"cidr": "fd00::1/8"}}]}],
                }
            },
            "spec.ingress[0].from[0].ipBlock.cidr: 'fd00::1/8' is not a CIDR",
        ),
        ({"spec": {"podSelector": {}, "policyTypes": ["Both"]}}, "spec.policyTypes[0]: 'Both'"),
        ({"kind": "Pod"}, "kind: 'Pod' is not NetworkPolicy"),
        ({"apiVersion": "extensions/v1beta1"}, "apiVersion: 'extensions/v1beta1' is not"),
        ({"metadata": {"name": "../escape"}}, "metadata.name: '../escape' is not a valid name"),
        (
            {"metadata": {"name": "a", "namespace": "Prod"}},
            "metadata.namespace: 'Prod' is not a valid namespace",
        ),
        ({"spec": None}, "spec: required"),
    ],
)
def test_refusals_name_the_field(change: dict[str, object], message: str) -> None:
    doc = {**policy_doc("a"), **change}
    with pytest.raises(PolicyError) as refused:
        parse_policies(yaml.safe_dump(doc), "p.yaml")
    assert message in str(refused.value)
    assert str(refused.value).startswith("p.yaml")


def test_file_level_refusals() -> None:
    with pytest.raises(PolicyError, match="empty"):
        parse_policies("", "e.yaml")
    with pytest.raises(PolicyError, match="not YAML or JSON"):
        parse_policies("a: [b", "y.yaml")
    twice = yaml.safe_dump_all([policy_doc("a"), policy_doc("a")])
    with pytest.raises(PolicyError, match="default/a is defined twice"):
        parse_policies(twice, "t.yaml")
    with pytest.raises(PolicyError, match="document 2: expected a Kubernetes object, got list"):
        parse_policies(yaml.safe_dump(policy_doc("a")) + "---\n- 1\n", "l.yaml")


def test_the_sample_policy_is_valid() -> None:
    sample = validate(SAMPLE_POLICY)
    assert sample.policy.ingress[0].ports == (model.PolicyPort(model.Protocol.TCP, "http"),)


def test_selector_text() -> None:
    both = model.LabelSelector(
        {"app": "web"},
        (
            model.Requirement("tier", model.Operator.IN, frozenset({"a", "b"})),
            model.Requirement("canary", model.Operator.DOES_NOT_EXIST),
        ),
    )
    assert selector_text(both) == "app=web, tier In (a,b), canary DoesNotExist"
    assert selector_text(model.EVERYTHING) == "(all pods)"


# --- the objects directory ---------------------------------------------------------------------


def test_apply_writes_one_file_per_policy_that_the_agents_source_reads(tmp_path: Path) -> None:
    paths = LabPaths(tmp_path)
    store = PolicyStore(paths)
    policies = parse_policies(WEB_FROM_CLIENTS + "---\n" + yaml.safe_dump(policy_doc("b")))
    assert [what for _, what in store.apply(policies)] == ["created", "created"]
    assert sorted(p.name for p in (paths.objects / "policies" / "default").iterdir()) == [
        "b.yaml",
        "web-from-clients.yaml",
    ]
    assert not list(paths.objects.rglob(".*"))  # no temporary file left behind
    events = LabSource(paths.objects).poll()
    assert sorted(e.obj.name for e in events if isinstance(e, Upsert)) == ["b", "web-from-clients"]
    assert {kind_of(e.obj) for e in events if isinstance(e, Upsert)} == {Kind.NETWORK_POLICY}
    # Again: unchanged; a changed one: configured.
    assert [what for _, what in store.apply(policies)] == ["unchanged", "unchanged"]
    changed = parse_policies(yaml.safe_dump(policy_doc("b", ingress=[])))
    assert [what for _, what in store.apply(changed)] == ["configured"]
    assert [p.key for p in store.present()] == ["default/b", "default/web-from-clients"]


def test_a_policy_defined_in_another_file_is_neither_overwritten_nor_deleted(
    tmp_path: Path,
) -> None:
    paths = LabPaths(tmp_path)
    store = PolicyStore(paths)
    other = paths.objects / "mine.yaml"
    write_atomically(other, yaml.safe_dump_all([policy_doc("a"), {"kind": "ConfigMap"}]))
    assert [(p.key, p.path) for p in store.present()] == [("default/a", other)]
    with pytest.raises(PolicyError, match="already defined in"):
        store.apply(parse_policies(yaml.safe_dump_all([policy_doc("new"), policy_doc("a")])))
    assert not store.directory.exists()  # refused before writing "new"
    with pytest.raises(PolicyError, match="does not manage"):
        store.delete([("default", "a")])
    assert other.exists()
    assert store.delete_all() == []


def test_delete_is_all_or_nothing(tmp_path: Path) -> None:
    store = PolicyStore(LabPaths(tmp_path))
    store.apply(parse_policies(yaml.safe_dump_all([policy_doc("a"), policy_doc("b")])))
    with pytest.raises(PolicyError, match="no NetworkPolicy default/zzz"):
        store.delete([("default", "a"), ("default", "zzz")])
    assert len(store.present()) == 2
    assert store.delete([("default", "a")]) == ["default/a"]
    assert store.delete_all() == ["default/b"]
    assert store.present() == []
    assert list(store.directory.iterdir()) == []  # the namespace's directory went too


def test_delete_names_policies_or_files(tmp_path: Path) -> None:
    file = tmp_path / "p.yaml"
    file.write_text(WEB_FROM_CLIENTS)
    assert keys_of([str(file), "ns1/x", "y", "y"]) == [
        ("default", "web-from-clients"),
        ("ns1", "x"),
        ("default", "y"),
    ]


def test_namespace_objects_carry_the_name_label(tmp_path: Path) -> None:
    state = lab_state(tmp_path)
    paths = LabPaths(tmp_path)
    assert ensure_namespaces(paths, state) is True
    assert ensure_namespaces(paths, state) is False
    (default,) = namespaces_present(paths)
    assert default.labels == {"kubernetes.io/metadata.name": "default"}
    events = LabSource(paths.objects).poll()
    assert [(kind_of(e.obj), e.obj.name) for e in events if isinstance(e, Upsert)] == [
        (Kind.NAMESPACE, "default")
    ]


# --- expected verdicts ---------------------------------------------------------------------------


def test_no_policy_allows_every_flow(tmp_path: Path) -> None:
    state = lab_state(tmp_path)
    flows = expected_flows(state, lab_cluster(state, []))
    # 3 pods: 6 ordered pairs x 2 ports x 2 protocols x 2 families; client-1 → web:
    # 2 ports x 2 protocols x 2 families (backends do not try their own service).
    assert len(flows) == 6 * 2 * 2 * 2 + 8
    assert {f.expected for f in flows} == {Verdict.ALLOWED}


def test_sample_policy_verdicts_both_ways(tmp_path: Path) -> None:
    state = lab_state(tmp_path)
    cluster = lab_cluster(state, [validate(SAMPLE_POLICY)])
    assert selected(cluster, validate(SAMPLE_POLICY).policy) == ["web-1", "web-2"]
    seen = verdicts(expected_flows(state, cluster))
    allowed, blocked = Verdict.ALLOWED, Verdict.BLOCKED
    for family in (6, 4):
        assert seen[("client-1", "web-1", family, "TCP", 8080)] is allowed
        assert seen[("client-1", "web-1", family, "TCP", 8081)] is blocked
        assert seen[("client-1", "web-1", family, "UDP", 8080)] is blocked
        assert seen[("web-2", "web-1", family, "TCP", 8080)] is blocked  # not a client
        assert seen[("web-1", "client-1", family, "TCP", 8081)] is allowed  # not isolated
        # Service port 80 is targetPort http (8080): allowed through the ClusterIP too.
        assert seen[("client-1", "service web", family, "TCP", 80)] is allowed
        assert seen[("client-1", "service web", family, "UDP", 80)] is blocked
        assert seen[("client-1", "service web", family, "TCP", 8081)] is blocked


def test_backends_that_disagree_make_a_service_flow_either(tmp_path: Path) -> None:
    state = lab_state(tmp_path, dual_stack=False)
    only_web_1 = validate(
        policy_doc(
            "deny-web-1",
            podSelector={"matchExpressions": [{"key": "app", "operator": "In", "values": ["web"]}]},
            ingress=[],
        )
    )
    # Select only web-1: label the Pod object as the API would see it.
    cluster = lab_cluster(state, [only_web_1])
    pods = dict(cluster.pods)
    web_2 = pods[model.PodKey("default", "web-2")]
    pods[web_2.key] = model.Pod(
        web_2.namespace,
        web_2.name,
        {"app": "web-canary"},
        web_2.ips,
        web_2.container_ports,
        web_2.frontends,
        web_2.node_name,
    )
    cluster = model.Cluster(cluster.namespaces, pods, cluster.policies, cluster.nodes)
    (flow,) = [
        f
        for f in expected_flows(state, cluster)
        if f.dst == "service web" and f.port == 80 and f.protocol is model.Protocol.TCP
    ]
    assert flow.expected is Verdict.EITHER and flow.answerers == frozenset({"web-2"})
    assert mismatch(flow, Seen(False, why="timed out")) is None
    assert mismatch(flow, Seen(True, "web-2")) is None
    assert "expected an answer from web-2" in str(mismatch(flow, Seen(True, "web-1")))


def test_namespace_selectors_match_the_lab_namespace_objects(tmp_path: Path) -> None:
    state = lab_state(tmp_path, dual_stack=False)
    paths = LabPaths(tmp_path)
    ensure_namespaces(paths, state)
    from_default = validate(
        policy_doc(
            "from-default",
            podSelector={"matchLabels": {"app": "web"}},
            ingress=[
                {
                    "from": [
                        {
                            "namespaceSelector": {
                                "matchLabels": {"kubernetes.io/metadata.name": "default"}
                            }
                        }
                    ]
                }
            ],
        )
    )
    from_prod = validate(
        {
            **policy_doc(
                "from-prod",
                podSelector={"matchLabels": {"app": "web"}},
                ingress=[{"from": [{"namespaceSelector": {"matchLabels": {"env": "prod"}}}]}],
            ),
        }
    )
    allowed = verdicts(
        expected_flows(state, lab_cluster(state, [from_default], namespaces_present(paths)))
    )
    assert allowed[("client-1", "web-1", 6, "TCP", 8081)] is Verdict.ALLOWED
    denied = verdicts(
        expected_flows(state, lab_cluster(state, [from_prod], namespaces_present(paths)))
    )
    assert denied[("client-1", "web-1", 6, "TCP", 8081)] is Verdict.BLOCKED


def test_mismatch_names_expected_and_seen() -> None:
    flow = Flow(
        "client-1",
        "t-client-1",
        model.ip("fd00::1"),
        "web-1",
        model.ip("fd00::2"),
        model.Protocol.UDP,
        8081,
        Verdict.BLOCKED,
        frozenset({"web-1"}),
    )
    assert flow.label == "client-1→web-1 [fd00::2]:8081/UDP"
    assert (
        mismatch(flow, Seen(True, "web-1")) == "expected blocked, got allowed (answered by web-1)"
    )
    assert mismatch(flow, Seen(False, why="refused by the sender")) is None


def test_verify_expects_what_the_agents_compile(tmp_path: Path) -> None:
    """The expected verdicts come from the lab's records; an agent compiles from the
    objects the lab wrote. Both must give every pod the same rules."""
    state = lab_state(tmp_path)
    paths = LabPaths(tmp_path)
    ensure_namespaces(paths, state)
    write_atomically(paths.objects / "nodes.yaml", objects.node_file(state))
    for pod in state.pods:
        write_atomically(
            paths.objects / f"{pod.name}.yaml", objects.dump([objects.pod_object(pod)])
        )
    write_atomically(paths.objects / "web.yaml", objects.service_file(state, state.services[0]))
    store = PolicyStore(paths)
    store.apply(
        parse_policies(
            WEB_FROM_CLIENTS
            + "---\n"
            + yaml.safe_dump(SAMPLE_POLICY)
            + "---\n"
            + yaml.safe_dump(
                policy_doc(
                    "client-egress",
                    podSelector={"matchLabels": {"app": "client"}},
                    egress=[
                        {
                            "to": [{"podSelector": {"matchLabels": {"app": "web"}}}],
                            "ports": [{"port": "http"}],
                        }
                    ],
                )
            )
        )
    )
    cluster_state = ClusterState()
    for event in LabSource(paths.objects).poll():
        cluster_state.apply(event)
    from policies.compiler import compile_node

    expected = compile_node(lab_cluster(state, store.present(), namespaces_present(paths)))
    for node in state.nodes:
        agent = PolicyView(node.name).full(cluster_state)
        mine = {
            k: v
            for k, v in expected.items()
            if k.name in {p.name for p in state.pods if p.node == node.name}
        }
        assert mine and all(rules.isolated for rules in mine.values())
        assert agent == mine


# --- the command line -----------------------------------------------------------------------------


def test_cli_apply_list_delete_without_a_running_lab(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The commands only need the lab's state file and objects directory."""
    state = lab_state(tmp_path)
    paths = LabPaths(tmp_path)
    save_state(paths, state)
    file = tmp_path / "p.yaml"
    file.write_text(WEB_FROM_CLIENTS)
    args = ["--state-dir", str(tmp_path)]
    assert lab_cli.main(["policy", "apply", str(file), *args]) == 0
    assert "networkpolicy default/web-from-clients created (selects web-1, web-2)" in (
        capsys.readouterr().out
    )
    assert (paths.objects / "namespaces.yaml").exists()  # a lab from before: written now
    assert lab_cli.main(["policy", "list", "--json", *args]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["selects"] == ["web-1", "web-2"] and row["policy_types"] == ["Ingress"]
    bad = tmp_path / "bad.yaml"
    bad.write_text(WEB_FROM_CLIENTS.replace("web-from-clients", "x").replace("ingress", "ingres"))
    assert lab_cli.main(["policy", "apply", str(bad), *args]) == 1
    err = capsys.readouterr().err
    assert "spec.ingres: unknown field" in err and "nothing written" in err
    assert [p.name for p in PolicyStore(paths).present()] == ["web-from-clients"]
    assert lab_cli.main(["policy", "delete", *args]) == 2
    assert lab_cli.main(["policy", "delete", "web-from-clients", *args]) == 0
    assert lab_cli.main(["policy", "list", "--json", *args]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1]) == []
    assert lab_cli.main(["policy", "list", "--state-dir", str(tmp_path / "none")]) == 1


def test_present_finds_policies_among_other_objects(tmp_path: Path) -> None:
    paths = LabPaths(tmp_path)
    mixed = {"apiVersion": "v1", "kind": "List", "items": [{"kind": "Pod"}, policy_doc("in-list")]}
    write_atomically(paths.objects / "mixed.json", json.dumps(mixed))
    write_atomically(paths.objects / ".hidden.yaml", yaml.safe_dump(policy_doc("hidden")))
    write_atomically(paths.objects / "broken.yaml", "a: [b")
    assert [p.name for p in PolicyStore(paths).present()] == ["in-list"]
