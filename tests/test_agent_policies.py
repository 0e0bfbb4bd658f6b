"""NetworkPolicy enforced by the agent: the ClusterState adapter (pure), then for real.

The real part reuses tests/test_agent.py's emulated node: a client pod (app=client), an
unlabelled pod, and two backends (app=web) of a service ClusterIP:80 → targetPort 8080,
all wired by the real srv6-cni, with policies written to the lab directory.
"""

from __future__ import annotations

import ipaddress
import sys
from typing import Any

import pytest
import yaml

from policies import model
from policies.compiler import compile_node
from srv6ctl import state as st
from srv6ctl.netpol import PolicyView, frontends_of, pod_to_model
from tests.support.wait import wait_for
from tests.test_agent import SERVICE_IP, Node, lab_node

__all__ = ["lab_node"]  # the fixture, re-exported for pytest

# --- the adapter, pure -------------------------------------------------------------------

WEB_A, WEB_B, CLIENT_IP = "fd00:10::a", "fd00:10::b", "fd00:10::c"


def _pod(name: str, address: str, labels: dict[str, str], node: str = "n1") -> st.Pod:
    return st.Pod(
        uid=f"uid-{name}",
        namespace="default",
        name=name,
        node_name=node,
        ips=(ipaddress.ip_address(address),),
        labels=st.Labels(labels),
        ready=True,
        phase="Running",
        container_ports=(st.ContainerPort(8080, "TCP", "http"),),
    )


def _service(target: int | str = "http") -> st.Service:
    return st.Service(
        uid="uid-web",
        namespace="default",
        name="web",
        cluster_ips=(ipaddress.ip_address(SERVICE_IP),),
        ports=(st.ServicePort(80, "TCP", "http", target),),
    )


def _slice(*names: tuple[str, str]) -> st.EndpointSlice:
    return st.EndpointSlice(
        namespace="default",
        name="web-1",
        service_name="web",
        address_type="IPv6",
        endpoints=tuple(
            st.Endpoint(
                (ipaddress.ip_address(address),),
                node_name="n2" if name == "web-b" else "n1",
                target=st.PodRef("default", name),
            )
            for name, address in names
        ),
        ports=(st.EndpointPort(8080, "TCP", "http"),),
    )


def _policy(**spec: Any) -> st.NetworkPolicy:
    from srv6ctl.sources.convert import network_policy_from_json

    obj = {"metadata": {"name": "web-in", "namespace": "default", "uid": "p"}, "spec": spec}
    return network_policy_from_json(obj)


ALLOW_CLIENT = {
    "podSelector": {"matchLabels": {"app": "web"}},
    "ingress": [
        {"from": [{"podSelector": {"matchLabels": {"app": "client"}}}], "ports": [{"port": 8080}]}
    ],
}


def _state() -> tuple[st.ClusterState, set[st.DirtyKey]]:
    state = st.ClusterState()
    dirty: set[st.DirtyKey] = set()
    for obj in (
        st.Node("n1", internal_ipv6=ipaddress.IPv6Address("fd00:ff::1")),
        st.Node("n2", internal_ipv6=ipaddress.IPv6Address("fd00:ff::2")),
        st.Namespace("default", labels=st.Labels({"team": "a"})),
        _pod("web-a", WEB_A, {"app": "web"}),
        _pod("web-b", WEB_B, {"app": "web"}, node="n2"),  # remote: frontends from state too
        _pod("client", CLIENT_IP, {"app": "client"}),
        _service(),
        _slice(("web-a", WEB_A), ("web-b", WEB_B)),
    ):
        dirty |= state.upsert(obj)
    return state, dirty


def test_frontends_of_a_remote_pod_come_from_the_slices_listing_it() -> None:
    state, _ = _state()
    web_b = state.pod("default", "web-b")
    assert web_b is not None
    frontends = frontends_of(state, web_b)
    assert frontends == (
        model.Frontend(ipaddress.ip_address(SERVICE_IP), model.Protocol.TCP, 80, "http"),
    )
    converted = pod_to_model(web_b, frontends)
    assert converted is not None and converted.node_name == "n2"
    assert [f.target_port for f in converted.resolved_frontends] == [8080]
    client = state.pod("default", "client")
    assert client is not None and frontends_of(state, client) == ()
    finished = st.Pod(uid="x", namespace="default", name="done", phase="Succeeded")
    assert pod_to_model(finished) is None


def test_full_compile_matches_the_semantics_and_keeps_only_local_pods() -> None:
    state, _ = _state()
    state.upsert(_policy(**ALLOW_CLIENT))
    view = PolicyView("n1")
    rules = view.full(state)
    assert set(rules) == {model.PodKey("default", "web-a"), model.PodKey("default", "client")}
    web_a = rules[model.PodKey("default", "web-a")]
    client, web_b = ipaddress.ip_address(CLIENT_IP), ipaddress.ip_address(WEB_B)
    tcp = model.Protocol.TCP
    assert web_a.ingress.isolated and not rules[model.PodKey("default", "client")].isolated
    service = ipaddress.ip_address(SERVICE_IP)
    assert web_a.ingress_allows(client, tcp, 8080)
    assert web_a.ingress_allows(client, tcp, 80, service)  # 80 is 8080 there: allowed
    assert not web_a.ingress_allows(web_b, tcp, 8080)
    assert not web_a.ingress_allows(web_b, tcp, 80, service)
    assert not web_a.ingress_allows(client, tcp, 80)


def test_incremental_updates_equal_a_full_compile() -> None:
    state, _ = _state()
    view = PolicyView("n1")
    view.full(state)

    def step(*events: st.ClusterObject | tuple[st.Kind, str, str]) -> dict[Any, Any]:
        dirty: set[st.DirtyKey] = set()
        for event in events:
            if isinstance(event, tuple):
                dirty |= state.delete(*event)
            else:
                dirty |= state.upsert(event)
        changed = view.update(state, dirty)
        expected = compile_node(PolicyView("n1").snapshot(state), "n1")
        assert view.rules == expected
        return changed

    web_a = model.PodKey("default", "web-a")
    assert web_a in step(_policy(podSelector={"matchLabels": {"app": "web"}}))
    assert web_a in step(_policy(**ALLOW_CLIENT))
    # The client loses its label: web-a's peers change.
    assert web_a in step(_pod("client", CLIENT_IP, {"app": "other"}))
    # A named targetPort becomes a number: web-a's frontend changes.
    step(_service(target=9090))
    # web-a leaves the slice; the namespace's labels change; nothing else moves.
    step(_slice(("web-b", WEB_B)))
    step(st.Namespace("default", labels=st.Labels({"team": "b"})))
    assert step() == {}
    changed = step((st.Kind.NETWORK_POLICY, "default", "web-in"))
    assert web_a in changed and not changed[web_a].isolated  # type: ignore[union-attr]
    changed = step((st.Kind.POD, "default", "web-a"))
    assert changed[web_a] is None


# --- for real ---------------------------------------------------------------------------

TRY = """
import socket, sys
try:
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1)
    print(s.recv(200).decode().split()[0])
except OSError:
    print("blocked")
"""

LABELS = {"client": "client", "web-a": "web", "web-b": "web"}  # "other" has none

DENY_ALL = {"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Ingress"]}


def write(node: Node, *specs: dict[str, Any]) -> None:
    """The cluster of test_agent's `write_objects`, with labels and these policies."""
    node.write_objects({"web-a": True, "web-b": True})
    path = node.tmp / "objects" / "cluster.yaml"
    objects = list(yaml.safe_load_all(path.read_text()))
    for obj in objects:
        if obj["kind"] == "Pod" and obj["metadata"]["name"] in LABELS:
            obj["metadata"]["labels"] = {"app": LABELS[obj["metadata"]["name"]]}
    objects += [
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": f"policy-{i}", "namespace": "default"},
            "spec": spec,
        }
        for i, spec in enumerate(specs)
    ]
    path.with_suffix(".tmp").write_text(yaml.safe_dump_all(objects))
    path.with_suffix(".tmp").rename(path)


def reach(node: Node, pod: str, host: str, port: int) -> str:
    """The backend that answered `pod`'s connection, or "blocked"."""
    netns, _ = node.pods[pod]
    done = netns.exec(sys.executable, "-c", TRY, host, str(port))
    return done.stdout.strip()


def reaches_every_backend(node: Node, pod: str, host: str, port: int, backends: set[str]) -> bool:
    """A flow's backend follows its 5-tuple: ask until every backend answered, at most 30
    times (with two backends, a miss by chance has odds of 2**-29)."""
    seen: set[str] = set()
    for _ in range(30):
        seen.add(reach(node, pod, host, port))
        if seen == backends:
            return True
    return False


def has_table(node: Node, pod: str) -> bool:
    netns, _ = node.pods[pod]
    tables = netns.exec("nft", "list", "tables", check=False)
    return "srv6ctl_policy" in tables.stdout


@pytest.mark.kernel_srv6
def test_agent_enforces_network_policy_on_service_and_pod_traffic(lab_node: Node) -> None:
    node = lab_node
    node.start_agent()
    for pod in ("client", "other", "web-a", "web-b"):
        node.add_pod(pod)
    for backend in ("web-a", "web-b"):
        node.serve(backend)
    write(node)
    wait_for(
        lambda: any(str(s.prefix) == f"{SERVICE_IP}/128" for s in node.dump().steerings),
        20,
        "the service steering",
    )
    wait_for(
        lambda: reach(node, "client", node.pods["web-a"][1], 8080) != "blocked",
        20,
        "web-a to answer",
    )
    web_a = node.pods["web-a"][1]
    assert reach(node, "other", SERVICE_IP, 80) in {"web-a", "web-b"}
    assert not any(has_table(node, p) for p in node.pods)  # no policy: no table, anywhere

    # Default deny on the backends: the service and the pod's own address are closed.
    write(node, DENY_ALL)
    wait_for(lambda: has_table(node, "web-a") and has_table(node, "web-b"), 20, "the tables")
    assert not has_table(node, "client")
    assert reach(node, "client", SERVICE_IP, 80) == "blocked"
    assert reach(node, "client", web_a, 8080) == "blocked"
    # A table deleted by hand comes back at the next full resync (every second here).
    node.pods["web-a"][0].exec("nft", "delete", "table", "inet", "srv6ctl_policy")
    wait_for(lambda: has_table(node, "web-a"), 20, "the resync to restore web-a's table")
    assert reach(node, "client", web_a, 8080) == "blocked"

    # Allowing app=client on the targetPort opens the service (80 → 8080) for it alone.
    write(node, DENY_ALL, ALLOW_CLIENT)
    wait_for(lambda: reach(node, "client", SERVICE_IP, 80) != "blocked", 20, "the client to pass")
    assert reaches_every_backend(node, "client", SERVICE_IP, 80, {"web-a", "web-b"})
    assert reach(node, "client", web_a, 8080) == "web-a"
    assert reach(node, "other", SERVICE_IP, 80) == "blocked"
    assert reach(node, "other", web_a, 8080) == "blocked"

    # No policy: everything reopens, and the tables go.
    write(node)
    wait_for(
        lambda: not has_table(node, "web-a") and not has_table(node, "web-b"),
        20,
        "the tables to go",
    )
    assert reach(node, "other", SERVICE_IP, 80) in {"web-a", "web-b"}
    assert reach(node, "other", web_a, 8080) == "web-a"
    assert reach(node, "client", SERVICE_IP, 80) in {"web-a", "web-b"}
