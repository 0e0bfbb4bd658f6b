"""ClusterState's dirty keys, the JSON converters on real Kubernetes objects, and both sources:
the lab directory watcher and the list+watch source against a faithful fake API server."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import logging
import queue
import random
import shutil
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import urllib3
from kubernetes import client

from ipam6.store.kubernetes import KubernetesStore
from policies.kube import policy_from_k8s
from policies.model import InvalidPolicy, IPBlock, LabelSelector, PolicyKey
from srv6ctl.sources import lab as lab_module
from srv6ctl.sources.convert import ConversionError, from_json
from srv6ctl.sources.kubernetes import (
    REQUIRED_RBAC,
    RESOURCES,
    Backoff,
    KubernetesSource,
)
from srv6ctl.sources.lab import LabSource, lab_uid
from srv6ctl.state import (
    SERVICE_PROXY_NAME_LABEL,
    ClusterState,
    ContainerPort,
    Delete,
    Endpoint,
    EndpointSlice,
    Kind,
    Labels,
    Namespace,
    NamespaceKey,
    NetworkPolicy,
    NetworkPolicyKey,
    Node,
    NodeKey,
    Pod,
    PodKey,
    PodRef,
    Replace,
    Service,
    ServiceKey,
    ServicePort,
    SourceEvent,
    Upsert,
    key_of,
)
from tests.support.cluster import IPV6_ONLY, endpoint, endpoint_slice, node, pod, service
from tests.support.fake_apiserver import FakeApiServer, self_signed_certificate
from tests.support.wait import wait_for

FIXTURES = Path(__file__).parent / "fixtures" / "kube"
V6 = ipaddress.IPv6Address
V4 = ipaddress.IPv4Address

# The official client's model for each fixture kind.
MODELS = {
    "Node": "V1Node",
    "Pod": "V1Pod",
    "Service": "V1Service",
    "EndpointSlice": "V1EndpointSlice",
    "Namespace": "V1Namespace",
    "NetworkPolicy": "V1NetworkPolicy",
}


def fixture(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_text())
    return data


def all_fixtures() -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(FIXTURES.glob("*.json"))]


# --- converters on real objects -------------------------------------------------------


def test_node_from_kubectl_json() -> None:
    converted = from_json(Kind.NODE, fixture("node-1"))
    assert converted == Node(
        name="node-1",
        uid="3f0e4d9a-5b7c-4e3a-9a51-0c8a9e1d2b71",
        internal_ipv6=V6("2001:db8::1"),
        internal_ipv4=V4("192.0.2.1"),
        zone="lab-a",
        labels=Labels(fixture("node-1")["metadata"]["labels"]),
        sr_behaviours=frozenset({"End", "End.DT6", "End.DX6", "End.DX4"}),
        all_addresses=(V6("2001:db8::1"), V4("192.0.2.1")),
    )
    assert isinstance(converted, Node) and converted.labels["kubernetes.io/hostname"] == "node-1"


def test_a_nodes_external_ips_are_its_addresses_and_a_bad_one_is_left_out() -> None:
    """ExternalIPs (a second NIC, a cloud's public address) are the node's too: node ports
    may serve them (--nodeport-addresses) and no VIP may take them. Hostnames are not
    addresses; an ExternalIP that is none is dropped, not the Node."""
    obj = fixture("node-1")
    obj["status"]["addresses"] = [
        {"type": "Hostname", "address": "node-1"},
        {"type": "ExternalIP", "address": "2001:db8:e::1"},
        {"type": "InternalIP", "address": "2001:db8::1"},
        {"type": "ExternalIP", "address": "203.0.113.7"},
        {"type": "ExternalIP", "address": "node-1.example.com"},
        {"type": "InternalIP", "address": "192.0.2.1"},
    ]
    node = from_json(Kind.NODE, obj)
    assert isinstance(node, Node)
    assert (node.internal_ipv6, node.internal_ipv4) == (V6("2001:db8::1"), V4("192.0.2.1"))
    # The primary InternalIPs first, then the rest in the API's order.
    assert node.addresses == (
        V6("2001:db8::1"),
        V4("192.0.2.1"),
        V6("2001:db8:e::1"),
        V4("203.0.113.7"),
    )
    state = ClusterState()
    state.upsert_node(node)
    assert [n.name for n in state.nodes_with_address(V4("203.0.113.7"))] == ["node-1"]


def test_pod_from_kubectl_json() -> None:
    converted = from_json(Kind.POD, fixture("pod-web"))
    assert isinstance(converted, Pod)
    assert converted.key == ("default", "web-7d9c8b6f5-x2v9k")
    assert converted.uid == "9b4f1c2e-6d3a-4b8e-a7f0-2c5d8e1b3a94"
    assert converted.ips == (V6("fd00:10:0:1::2"), V4("10.128.1.2"))
    assert (converted.ipv6, converted.ipv4) == (V6("fd00:10:0:1::2"), V4("10.128.1.2"))
    assert converted.node_name == "node-1"
    assert converted.ready and not converted.host_network and not converted.terminating
    assert converted.phase == "Running" and not converted.finished
    assert converted.labels == {"app": "web", "pod-template-hash": "7d9c8b6f5"}
    # Named ports, including the sidecar's (a restartable init container).
    assert converted.container_ports == (
        ContainerPort(9376, "TCP", "http"),
        ContainerPort(9376, "UDP", "http-udp"),
        ContainerPort(9100, "TCP", "metrics"),
    )


def test_service_from_kubectl_json() -> None:
    converted = from_json(Kind.SERVICE, fixture("service-web"))
    assert converted == Service(
        uid="c7e2a9f4-1d3b-4c6e-8f0a-5b2d7e9c1a36",
        namespace="default",
        name="web",
        cluster_ips=(V6("fd00:96::a"), V4("10.96.0.10")),
        ports=(
            ServicePort(80, "TCP", "http", "http"),
            ServicePort(443, "TCP", "https", 8443),
        ),
        type="ClusterIP",
        session_affinity="None",
        internal_traffic_policy="Cluster",
        traffic_distribution="PreferClose",
        labels=Labels({"app": "web"}),
    )


def test_load_balancer_service_from_kubectl_json() -> None:
    converted = from_json(Kind.SERVICE, fixture("service-lb"))
    assert isinstance(converted, Service)
    assert converted.type == "LoadBalancer"
    assert converted.ports == (
        ServicePort(80, "TCP", "http", 8080, node_port=30080),
        ServicePort(53, "UDP", "dns", 53, node_port=30053),
    )
    assert converted.external_ips == (V6("2001:db8:ee::20"), V4("198.51.100.20"))
    # ipMode Proxy: the load balancer rewrites the destination; a hostname has no IP.
    assert converted.load_balancer_ips == (V6("2001:db8:ee::10"), V4("198.51.100.10"))
    assert converted.load_balancer_source_ranges == (
        ipaddress.ip_network("2001:db8:c0::/48"),
        ipaddress.ip_network("203.0.113.0/24"),
    )
    assert converted.external_traffic_policy == "Local"
    assert converted.health_check_node_port == 31999
    assert converted.external_vips(6) == (V6("2001:db8:ee::20"), V6("2001:db8:ee::10"))
    assert converted.external_vips(4) == (V4("198.51.100.20"), V4("198.51.100.10"))
    assert converted.proxied
    broken = fixture("service-lb")
    broken["spec"]["loadBalancerSourceRanges"][0] = "2001:db8:c0::/129"
    with pytest.raises(
        ConversionError, match=r"Service store/shop: spec.loadBalancerSourceRanges\[0\]"
    ):
        from_json(Kind.SERVICE, broken)


def test_a_vip_two_services_claim_belongs_to_one_and_changes_hands_with_it() -> None:
    state = ClusterState()
    vip = V6("2001:db8:ee::1")
    a = service("a", 1, external_ips=(vip,))
    b = service("b", 2, load_balancer_ips=(vip,))
    state.upsert(b)
    assert state.vip_owner(vip) == b
    # a claims it too and sorts first: both are dirtied, a owns it.
    assert state.upsert(a) >= {ServiceKey("default", "a"), ServiceKey("default", "b")}
    assert state.vip_owner(vip) == a
    assert state.delete_service("default", "a") >= {ServiceKey("default", "b")}
    assert state.vip_owner(vip) == b
    # A service no proxy of ours programs does not take it from one we do.
    other_proxy = service(
        "0-other", 4, external_ips=(vip,), labels=Labels({SERVICE_PROXY_NAME_LABEL: "x"})
    )
    state.upsert(other_proxy)
    assert state.vip_owner(vip) == b
    # A ClusterIP is its service's, whoever else names it.
    c = service("c", 3, external_ips=(V6("fd00:96::2"),))
    state.upsert(c)
    assert state.vip_owner(V6("fd00:96::2")) == b


def test_endpoint_slices_from_kubectl_json() -> None:
    v6 = from_json(Kind.ENDPOINT_SLICE, fixture("endpointslice-web-v6"))
    assert isinstance(v6, EndpointSlice)
    assert (v6.service_key, v6.address_type) == (("default", "web"), "IPv6")
    ready, draining = v6.endpoints
    assert ready == Endpoint(
        addresses=(V6("fd00:10:0:1::2"),),
        ready=True,
        serving=True,
        terminating=False,
        node_name="node-1",
        zone="lab-a",
        target=PodRef("default", "web-7d9c8b6f5-x2v9k", "9b4f1c2e-6d3a-4b8e-a7f0-2c5d8e1b3a94"),
        hints_for_zones=frozenset({"lab-a"}),
    )
    assert (draining.ready, draining.serving, draining.terminating) == (False, True, True)
    assert [(p.name, p.port) for p in v6.ports] == [("http", 9376), ("https", 8443)]
    v4 = from_json(Kind.ENDPOINT_SLICE, fixture("endpointslice-web-v4"))
    assert isinstance(v4, EndpointSlice)
    assert v4.endpoints[0].addresses == (V4("10.128.1.2"),)


def test_namespace_and_network_policy_from_kubectl_json() -> None:
    ns = from_json(Kind.NAMESPACE, fixture("namespace-default"))
    assert ns == Namespace(
        "default",
        "6e1a8c3f-9b2d-4f7e-a0c5-3d8b1e6f2a94",
        Labels({"kubernetes.io/metadata.name": "default"}),
    )
    policy = from_json(Kind.NETWORK_POLICY, fixture("networkpolicy-web"))
    assert isinstance(policy, NetworkPolicy)
    assert policy.policy_types == {"Ingress", "Egress"}
    assert policy.pod_selector.matches({"app": "web", "x": "y"})
    assert not policy.pod_selector.matches({"app": "db"})
    (rule,) = policy.ingress
    frontend, block = rule.peers
    assert frontend.pod_selector is not None and frontend.namespace_selector is None
    assert frontend.pod_selector.matches({"role": "canary"})
    assert not frontend.pod_selector.matches({"role": "backend"})
    assert block.ip_block is not None
    assert str(block.ip_block.cidr) == "2001:db8:100::/48"
    assert [str(n) for n in block.ip_block.excepted] == ["2001:db8:100:bad::/64"]
    assert [(p.protocol, p.port, p.end_port) for p in rule.ports] == [
        ("TCP", "http", None),
        ("TCP", 8000, 9000),
    ]
    (egress,) = policy.egress
    # An empty namespaceSelector ({}) selects every namespace; absent would mean "own".
    assert egress.peers[0].namespace_selector == LabelSelector()
    # One reader: the sources' NetworkPolicy is the compiler's, as policies.kube reads it.
    assert policy == policy_from_k8s(fixture("networkpolicy-web"))
    assert policy.key == PolicyKey("default", "web-allow-frontend")


def test_network_policy_conversion_follows_the_sources_conventions() -> None:
    spec = {"podSelector": {}, "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.1/8"}}]}]}
    obj: dict[str, Any] = {"metadata": {"name": "out"}, "spec": spec}
    # A lab file's missing namespace is "default", as for every namespaced kind.
    policy = from_json(Kind.NETWORK_POLICY, obj)
    assert isinstance(policy, NetworkPolicy) and policy.namespace == "default"
    # The API server accepts host bits in an ipBlock CIDR: what it served is its network;
    # only a hand-written policy (policies.kube's default) is refused for them.
    (peer,) = policy.egress[0].peers
    assert peer.ip_block == IPBlock(ipaddress.ip_network("10.0.0.0/8"))
    obj["metadata"]["namespace"] = "default"
    with pytest.raises(InvalidPolicy, match=r"spec\.egress\[0\]\.to\[0\]\.ipBlock\.cidr"):
        policy_from_k8s(obj)
    # A refusal is a ConversionError (what the sources catch), naming object and field.
    bad = {"metadata": {"name": "bad"}, "spec": {"ingress": [{"from": [{}]}]}}
    with pytest.raises(
        ConversionError,
        match=r"^NetworkPolicy default/bad: spec\.ingress\[0\]\.from\[0\]: must have",
    ):
        from_json(Kind.NETWORK_POLICY, bad)
    no_key = {"podSelector": {"matchExpressions": [{"operator": "Exists"}]}}
    with pytest.raises(
        ConversionError, match=r"spec\.podSelector\.matchExpressions\[0\]\.key: required"
    ):
        from_json(Kind.NETWORK_POLICY, {"metadata": {"name": "k"}, "spec": no_key})
    with pytest.raises(ConversionError, match=r"metadata\.name is missing"):
        from_json(Kind.NETWORK_POLICY, {"metadata": {"namespace": "default"}})


@pytest.mark.parametrize("obj", all_fixtures(), ids=lambda o: o["kind"])
def test_fixtures_survive_the_official_clients_deserialisation(obj: dict[str, Any]) -> None:
    """The fixtures are objects the official client accepts, and a round trip through its
    models (what a deserialising source would hand over) converts to the same thing."""
    api = client.ApiClient()
    model = api.deserialize(json.dumps(obj), MODELS[obj["kind"]], "application/json")
    assert type(model).__name__ == MODELS[obj["kind"]]
    round_trip = api.sanitize_for_serialization(model)  # type: ignore[no-untyped-call]
    kind = Kind(obj["kind"])
    assert from_json(kind, round_trip) == from_json(kind, obj)


def test_converter_defaults_follow_the_api() -> None:
    minimal_service = {
        "metadata": {"name": "dns", "namespace": "kube-system"},
        "spec": {"clusterIP": "fd00:96::a", "ports": [{"port": 53, "protocol": "UDP"}]},
    }
    dns = from_json(Kind.SERVICE, minimal_service)
    assert isinstance(dns, Service)
    assert dns.ports == (ServicePort(53, "UDP", "", 53),)  # targetPort defaults to port
    assert (dns.session_affinity, dns.internal_traffic_policy) == ("None", "Cluster")
    headless = from_json(
        Kind.SERVICE,
        {"metadata": {"name": "db"}, "spec": {"clusterIP": "None", "clusterIPs": ["None"]}},
    )
    assert isinstance(headless, Service) and headless.headless and headless.cluster_ips == ()
    # Unset conditions: ready and serving mean true, terminating false (kube-proxy's reading).
    eps = from_json(
        Kind.ENDPOINT_SLICE,
        {
            "metadata": {"name": "x", "labels": {"kubernetes.io/service-name": "x"}},
            "addressType": "IPv6",
            "endpoints": [{"addresses": ["FD00:10:0:1:0::2"]}],
            "ports": None,
        },
    )
    assert isinstance(eps, EndpointSlice)
    (only,) = eps.endpoints
    assert (only.ready, only.serving, only.terminating) == (True, True, False)
    assert only.addresses == (V6("fd00:10:0:1::2"),)  # normalised
    # A slice with no endpoints arrives as "endpoints": null.
    empty = from_json(
        Kind.ENDPOINT_SLICE, {"metadata": {"name": "e"}, "addressType": "IPv4", "endpoints": None}
    )
    assert isinstance(empty, EndpointSlice) and empty.endpoints == ()


def test_conversion_errors_name_the_object_and_the_field() -> None:
    broken = fixture("pod-web")
    broken["status"]["podIPs"][1]["ip"] = "10.128.1.300"
    with pytest.raises(
        ConversionError, match=r"Pod default/web-7d9c8b6f5-x2v9k: status.podIPs\[1\]"
    ):
        from_json(Kind.POD, broken)
    bad_port = fixture("service-web")
    bad_port["spec"]["ports"][0]["port"] = 70000
    with pytest.raises(ConversionError, match=r"Service default/web: spec.ports\[0\].port 70000"):
        from_json(Kind.SERVICE, bad_port)
    with pytest.raises(ConversionError, match=r"metadata\.name is missing"):
        from_json(Kind.NODE, {"metadata": {}})


# --- ClusterState: dirty keys ---------------------------------------------------------


def small_cluster() -> tuple[ClusterState, Service, list[Pod]]:
    state = ClusterState()
    pods = [pod(IPV6_ONLY, "web-a", 1, 2), pod(IPV6_ONLY, "web-b", 2, 2)]
    web = service("web", 1)
    for obj in (node(1), node(2), *pods, web):
        state.upsert(obj)  # type: ignore[arg-type]
    state.upsert_endpoint_slice(endpoint_slice(web, [endpoint(p) for p in pods]))
    return state, web, pods


def test_upserting_an_unchanged_object_dirties_nothing() -> None:
    state, web, pods = small_cluster()
    assert state.upsert_node(node(1)) == frozenset()
    assert state.upsert_pod(pods[0]) == frozenset()
    assert state.upsert_service(web) == frozenset()
    assert state.upsert_endpoint_slice(endpoint_slice(web, [endpoint(p) for p in pods])) == set()


def test_a_readiness_flip_dirties_its_service_and_that_pod_only() -> None:
    state, web, pods = small_cluster()
    flipped = endpoint_slice(web, [endpoint(pods[0]), endpoint(pods[1], ready=False)])
    assert state.upsert_endpoint_slice(flipped) == {
        ServiceKey("default", "web"),
        PodKey("default", "web-b"),
    }
    assert state.delete_endpoint_slice("default", flipped.name) == {
        ServiceKey("default", "web"),
        PodKey("default", "web-a"),
        PodKey("default", "web-b"),
    }


def test_new_slice_ports_dirty_every_pod_of_the_slice() -> None:
    """A Service's targetPort changed: the controller rewrites its slices' ports, the
    endpoints stay as they were, and every pod's port rewrite and NodePort target must
    follow (upstream e2e: a UDP NodePort's target port change kept the old one)."""
    state = small_cluster()[0]
    (current,) = state.slices_of_service("default", "web")
    moved = dataclasses.replace(
        current, ports=tuple(dataclasses.replace(p, port=9090) for p in current.ports)
    )
    assert state.upsert_endpoint_slice(moved) == {
        ServiceKey("default", "web"),
        PodKey("default", "web-a"),
        PodKey("default", "web-b"),
    }


def test_a_service_change_dirties_its_endpoint_pods_a_pod_change_only_itself() -> None:
    state, web, pods = small_cluster()
    assert state.upsert_service(
        dataclasses.replace(web, ports=(ServicePort(80, target_port=8080),))
    ) == {
        ServiceKey("default", "web"),
        PodKey("default", "web-a"),
        PodKey("default", "web-b"),
    }
    moved = dataclasses.replace(pods[0], ready=False)
    assert state.upsert_pod(moved) == {PodKey("default", "web-a")}
    assert state.upsert_node(dataclasses.replace(node(2), zone="b")) == {NodeKey("node-2")}
    assert state.delete_node("node-2") == {NodeKey("node-2")}
    assert state.delete_node("node-2") == frozenset()
    assert state.upsert_namespace(Namespace("default")) == {NamespaceKey("default")}
    assert state.upsert_network_policy(NetworkPolicy("default", "deny")) == {
        NetworkPolicyKey("default", "deny")
    }
    assert state.upsert_network_policy(NetworkPolicy("default", "deny")) == frozenset()
    assert set(state.network_policies) == {("default", "deny")}
    assert state.replace(Kind.NETWORK_POLICY, [NetworkPolicy("default", "allow")]) == {
        NetworkPolicyKey("default", "allow"),
        NetworkPolicyKey("default", "deny"),
    }
    assert state.delete_network_policy("default", "allow") == {NetworkPolicyKey("default", "allow")}
    assert state.network_policies == {}


def test_endpoint_entries_follow_target_refs_with_uids_and_bare_addresses() -> None:
    state, _, pods = small_cluster()
    (entry,) = state.endpoint_entries(pods[0])
    assert entry[0].service_name == "web"
    # A recreated pod (same name, new UID) is not the endpoint the slice still names.
    recreated = dataclasses.replace(pods[0], uid="new-uid")
    state.upsert_pod(recreated)
    assert state.endpoint_entries(recreated) == []
    # A hand-written slice without targetRefs is matched by address; its pods are dirtied.
    bare = EndpointSlice("default", "manual", "web", "IPv6", (Endpoint((pods[1].ips[0],)),))
    assert PodKey("default", "web-b") in state.upsert_endpoint_slice(bare)
    assert [eps.name for eps, _ in state.endpoint_entries(pods[1])] == ["manual", "web-v6a"]
    assert [s.name for s in state.slices_of_service("default", "web")] == ["manual", "web-v6a"]


def test_replace_is_a_relist_that_deletes_what_vanished() -> None:
    state, _, pods = small_cluster()
    survivor = dataclasses.replace(pods[1], ready=False)
    dirty = state.replace(Kind.POD, [survivor])
    assert dirty == {PodKey("default", "web-a"), PodKey("default", "web-b")}
    assert list(state.pods) == [("default", "web-b")]
    assert state.pods_on_node("node-1") == []
    assert state.pod_by_uid(pods[0].uid) is None
    with pytest.raises(ValueError, match="replace"):
        state.replace(Kind.NODE, [survivor])
    assert state.apply(Replace(Kind.POD, (survivor,))) == frozenset()
    assert state.apply(Delete(Kind.POD, "default", "web-b")) == {PodKey("default", "web-b")}
    assert state.apply(Upsert(node(3))) == {NodeKey("node-3")}


def test_nodes_are_found_by_address_for_host_network_endpoints() -> None:
    state, _, _ = small_cluster()
    assert [n.name for n in state.nodes_with_address(V6("2001:db8::2"))] == ["node-2"]
    state.upsert_node(dataclasses.replace(node(2), internal_ipv6=V6("2001:db8::22")))
    assert state.nodes_with_address(V6("2001:db8::2")) == []
    assert [n.name for n in state.nodes_with_address(V4("192.0.2.2"))] == ["node-2"]


# --- the lab source -------------------------------------------------------------------

LAB_YAML = """\
apiVersion: v1
kind: Node
metadata:
  name: node-2
  labels: {topology.kubernetes.io/zone: lab-b}
status:
  addresses:
  - {type: InternalIP, address: "2001:db8::2"}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: ignored}
---
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata: {name: dns, namespace: kube-system}
  spec:
    clusterIP: fd00:96::a
    ports: [{name: dns, port: 53, protocol: UDP}]
- apiVersion: v1
  kind: ConfigMap
  metadata: {name: also-ignored}
"""


def objects_of(events: list[SourceEvent]) -> dict[tuple[str, str, str], Upsert | Delete]:
    found: dict[tuple[str, str, str], Upsert | Delete] = {}
    for event in events:
        if isinstance(event, Upsert):
            obj = event.obj
            found[(type(obj).__name__, *key_of(obj))] = event
        elif isinstance(event, Delete):
            found[(event.kind.value, event.namespace, event.name)] = event
    return found


@pytest.fixture
def lab_dir(tmp_path: Path) -> Path:
    for path in FIXTURES.glob("*.json"):
        shutil.copy(path, tmp_path / path.name)
    (tmp_path / "more.yaml").write_text(LAB_YAML)
    (tmp_path / ".hidden.yaml").write_text("kind: Node\nmetadata: {name: hidden}\n")
    return tmp_path


def test_lab_source_reads_every_object_and_then_only_changes(lab_dir: Path) -> None:
    source = LabSource(lab_dir)
    first = objects_of(source.poll())
    assert set(first) == {
        ("Node", "", "node-1"),
        ("Node", "", "node-2"),
        ("Pod", "default", "web-7d9c8b6f5-x2v9k"),
        ("Service", "default", "web"),
        ("Service", "store", "shop"),
        ("Service", "kube-system", "dns"),
        ("EndpointSlice", "default", "web-6xw4p"),
        ("EndpointSlice", "default", "web-k9r2d"),
        ("Namespace", "", "default"),
        ("NetworkPolicy", "default", "web-allow-frontend"),
    }
    assert source.errors == {}
    # The same converter as the API source: a lab file means what the API object means.
    web = first[("Service", "default", "web")]
    assert isinstance(web, Upsert) and web.obj == from_json(Kind.SERVICE, fixture("service-web"))
    # Objects without a uid get a stable one (a lab service keeps its BSID).
    dns = first[("Service", "kube-system", "dns")]
    assert isinstance(dns, Upsert) and isinstance(dns.obj, Service)
    assert dns.obj.uid == lab_uid(Kind.SERVICE, "kube-system", "dns")
    assert source.poll() == []

    # One changed file: one upsert; one removed file: its objects are deleted.
    pod_json = fixture("pod-web")
    pod_json["status"]["conditions"][2]["status"] = "False"
    (lab_dir / "pod-web.json").write_text(json.dumps(pod_json))
    changed = source.poll()
    assert [type(e).__name__ for e in changed] == ["Upsert"]
    assert isinstance(changed[0], Upsert) and isinstance(changed[0].obj, Pod)
    assert not changed[0].obj.ready
    (lab_dir / "more.yaml").unlink()
    assert objects_of(source.poll()) == {
        ("Node", "", "node-2"): Delete(Kind.NODE, "", "node-2"),
        ("Service", "kube-system", "dns"): Delete(Kind.SERVICE, "kube-system", "dns"),
    }


def test_a_broken_file_changes_nothing_until_it_is_fixed(lab_dir: Path) -> None:
    source = LabSource(lab_dir)
    source.poll()
    (lab_dir / "more.yaml").write_text(LAB_YAML.replace("items:", "items: [unclosed"))
    assert source.poll() == []
    assert list(source.errors) == [lab_dir / "more.yaml"]
    bad_ip = LAB_YAML.replace('"2001:db8::2"', '"2001:db8::zz"')
    (lab_dir / "more.yaml").write_text(bad_ip)
    assert source.poll() == []
    assert "Node node-2: status.addresses[0].address" in source.errors[lab_dir / "more.yaml"]
    (lab_dir / "more.yaml").write_text(LAB_YAML.replace("lab-b", "lab-c"))
    (fixed,) = source.poll()
    assert isinstance(fixed, Upsert) and isinstance(fixed.obj, Node) and fixed.obj.zone == "lab-c"
    assert source.errors == {}


def test_lab_source_sees_a_same_size_rewrite_within_the_timestamp_granularity(
    lab_dir: Path,
) -> None:
    source = LabSource(lab_dir)
    source.poll()
    path = lab_dir / "more.yaml"
    stat = path.stat()
    path.write_text(LAB_YAML.replace("lab-b", "lab-x"))  # same size
    import os

    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same mtime too
    (changed,) = source.poll()
    assert isinstance(changed, Upsert) and isinstance(changed.obj, Node)
    assert changed.obj.zone == "lab-x"


def test_lab_source_rejects_other_api_versions(tmp_path: Path) -> None:
    (tmp_path / "old.yaml").write_text(
        "apiVersion: discovery.k8s.io/v1beta1\nkind: EndpointSlice\nmetadata: {name: old}\n"
        "addressType: IPv6\n"
    )
    source = LabSource(tmp_path)
    assert source.poll() == []
    assert (
        "apiVersion discovery.k8s.io/v1beta1 is not supported"
        in source.errors[tmp_path / "old.yaml"]
    )


def test_lab_source_watches_in_a_thread(lab_dir: Path) -> None:
    events: queue.Queue[SourceEvent] = queue.Queue()
    source = LabSource(lab_dir, interval=0.05)
    source.start(events.put)
    try:
        state = ClusterState()
        wait_for(lambda: drain(events, state) or len(state.nodes) == 2)
        (lab_dir / "more.yaml").write_text(LAB_YAML.replace("node-2", "node-3"))
        wait_for(lambda: drain(events, state) or set(state.nodes) == {"node-1", "node-3"})
    finally:
        source.stop()
    assert lab_module.RACY_SECONDS > 0


# --- the Kubernetes source against the fake API server --------------------------------


def drain(events: queue.Queue[SourceEvent], state: ClusterState) -> bool:
    """Apply whatever arrived; always False so it can sit in a wait_for condition."""
    while True:
        try:
            state.apply(events.get_nowait())
        except queue.Empty:
            return False


class Consumer:
    """The agent's side: one thread applies events to a ClusterState, in order."""

    def __init__(self) -> None:
        self.events: queue.Queue[SourceEvent] = queue.Queue()
        self.state = ClusterState()
        self.log: list[SourceEvent] = []
        self._lock = threading.Lock()

    def sink(self, event: SourceEvent) -> None:
        self.events.put(event)

    def pump(self) -> None:
        while True:
            try:
                event = self.events.get_nowait()
            except queue.Empty:
                return
            with self._lock:
                self.log.append(event)
                self.state.apply(event)

    def until(self, condition: Callable[[ClusterState], bool], timeout: float = 15.0) -> None:
        def check() -> bool:
            self.pump()
            return condition(self.state)

        wait_for(check, timeout)


@pytest.fixture
def apiserver() -> Iterator[FakeApiServer]:
    server = FakeApiServer(bookmark_interval=0.1).start()
    for obj in all_fixtures():
        server.apply(obj)
    yield server
    server.stop()


def start_source(server: FakeApiServer, consumer: Consumer, **kwargs: Any) -> KubernetesSource:
    configuration = client.Configuration()
    configuration.host = server.url
    options: dict[str, Any] = {
        "backoff": Backoff(initial=0.02, cap=0.1),
        "watch_timeout": (1, 1),
        "rng": random.Random(7),
        **kwargs,
    }
    source = KubernetesSource(consumer.sink, configuration=configuration, **options)
    source.start()
    return source


def test_list_then_watch_delivers_the_cluster_and_its_changes(apiserver: FakeApiServer) -> None:
    consumer = Consumer()
    source = start_source(apiserver, consumer)
    try:
        assert source.wait_synced(timeout=15)
        consumer.until(lambda s: len(s.endpoint_slices) == 2 and len(s.network_policies) == 1)
        replaced = [e for e in consumer.log if isinstance(e, Replace)]
        assert {e.kind for e in replaced} == set(Kind)
        state = consumer.state
        # What came through the list is what the converter makes of the fixtures.
        assert state.pod("default", "web-7d9c8b6f5-x2v9k") == from_json(
            Kind.POD, fixture("pod-web")
        )
        assert state.nodes["node-1"].sr_behaviours == {"End", "End.DT6", "End.DX6", "End.DX4"}

        # Changes arrive as watch events.
        changed = fixture("service-web")
        changed["spec"]["trafficDistribution"] = None
        apiserver.apply(changed)
        consumer.until(lambda s: s.services[("default", "web")].traffic_distribution is None)
        second = fixture("node-1")
        second["metadata"]["name"] = "node-2"
        apiserver.apply(second)
        consumer.until(lambda s: "node-2" in s.nodes)
        apiserver.delete("endpointslices", "default", "web-k9r2d")
        consumer.until(lambda s: ("default", "web-k9r2d") not in s.endpoint_slices)
        assert source.relists[Kind.POD] == 1  # no relist was needed for any of that
        # Watches asked for bookmarks and started from the list's resourceVersion.
        first_watch = apiserver.watch_requests("pods")[0]
        assert first_watch["allowWatchBookmarks"] == "true"
        assert int(first_watch["resourceVersion"]) >= 1007
    finally:
        source.stop()


def test_an_object_the_clients_models_reject_does_not_stop_the_watch(
    apiserver: FakeApiServer,
) -> None:
    """The API server accepts a Service status condition without `lastTransitionTime`
    (upstream e2e's Service status tests write one); the official client's models do not.
    The watch reads events as JSON, so that object arrives and so does every later change
    (it once stopped the kind's watch on every node: each retry failed on the same event)."""
    consumer = Consumer()
    source = start_source(apiserver, consumer)
    try:
        assert source.wait_synced(timeout=15)
        odd = fixture("service-web")
        odd["metadata"]["name"] = "odd"
        odd["spec"]["clusterIP"] = odd["spec"]["clusterIPs"][0] = "fd00:96::77"
        odd["status"] = {"conditions": [{"type": "Odd", "status": "True", "reason": "E2e",
                                         "message": "no lastTransitionTime"}]}  # fmt: skip
        apiserver.apply(odd)
        consumer.until(lambda s: ("default", "odd") in s.services)
        later = fixture("node-1")
        later["metadata"]["name"] = "node-9"
        apiserver.apply(later)
        changed = fixture("service-web")
        changed["spec"]["trafficDistribution"] = None
        apiserver.apply(changed)
        consumer.until(
            lambda s: (
                "node-9" in s.nodes and s.services[("default", "web")].traffic_distribution is None
            )
        )
        assert source.relists[Kind.SERVICE] == 1
    finally:
        source.stop()


@pytest.mark.parametrize("bookmarks", [True, False], ids=["bookmarks", "no-bookmarks"])
def test_bookmarks_keep_a_quiet_watch_resumable_after_compaction(
    apiserver: FakeApiServer, bookmarks: bool
) -> None:
    if not bookmarks:
        apiserver.bookmark_interval = 1e9  # a server that never sends any
    consumer = Consumer()
    source = start_source(apiserver, consumer)
    try:
        assert source.wait_synced(timeout=15)
        listed_at = int(source.resource_versions[Kind.NAMESPACE])
        # Much happens to services, nothing to namespaces; then history is compacted.
        for i in range(5):
            changed = fixture("service-web")
            changed["metadata"]["labels"]["round"] = str(i)
            apiserver.apply(changed)
        latest = apiserver.revision
        if bookmarks:
            wait_for(lambda: int(source.resource_versions[Kind.NAMESPACE]) >= latest)
        else:
            time.sleep(0.3)
            assert int(source.resource_versions[Kind.NAMESPACE]) == listed_at
        apiserver.compact()
        # The namespace watch ends every second and resumes from the version it has.
        count = len(apiserver.watch_requests("namespaces"))
        wait_for(lambda: len(apiserver.watch_requests("namespaces")) >= count + 2)
        # With bookmarks that version is recent: no relist. Without, it is older than the
        # history: 410, and a relist.
        assert source.relists[Kind.NAMESPACE] == (1 if bookmarks else 2)
    finally:
        source.stop()


@pytest.mark.parametrize("gone_as_status", [False, True], ids=["error-event", "http-410"])
def test_410_gone_relists_and_the_relist_deletes_what_vanished(
    apiserver: FakeApiServer, gone_as_status: bool
) -> None:
    apiserver.gone_as_status = gone_as_status
    consumer = Consumer()
    source = start_source(apiserver, consumer)
    try:
        assert source.wait_synced(timeout=15)
        consumer.until(lambda s: ("default", "web-6xw4p") in s.endpoint_slices)
        # The deletion's event never reaches the watch: it is compacted away meanwhile.
        apiserver.lose_events(lambda: apiserver.delete("endpointslices", "default", "web-6xw4p"))
        consumer.until(lambda s: ("default", "web-6xw4p") not in s.endpoint_slices)
        assert source.relists[Kind.ENDPOINT_SLICE] == 2
        assert source.errors[Kind.ENDPOINT_SLICE] == 0  # a 410 is not an error: no backoff
        assert source.expirations[Kind.ENDPOINT_SLICE] == 1
        assert len(apiserver.list_requests("endpointslices")) == 2
        assert ("default", "web-k9r2d") in consumer.state.endpoint_slices
    finally:
        source.stop()


@pytest.mark.parametrize("gone_as_status", [False, True], ids=["error-event", "http-410"])
def test_events_lost_while_a_watch_is_being_answered_still_end_in_a_relist(
    apiserver: FakeApiServer, gone_as_status: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The window the 410 test above hits now and then, held open: the events are lost
    after the server has accepted the first watch (from the list's resourceVersion) and
    before it has answered. A watch the server accepted is one it ends when it loses
    events, so the source resumes, gets 410 and relists; it must never carry on from its
    resourceVersion with the change skipped and a bookmark past it (the fake once checked
    the version before its headers and joined the open watches after them)."""
    apiserver.gone_as_status = gone_as_status
    handler: Any = apiserver._server.RequestHandlerClass  # the class serving its requests
    answering, release = threading.Event(), threading.Event()
    end_headers = handler.end_headers

    def slow_end_headers(self: Any) -> None:
        # A server slow to send one response's headers (a loaded machine), here on purpose.
        first = "endpointslices" in self.path and "watch=true" in self.path
        if first and not answering.is_set():
            answering.set()
            release.wait(15)
        end_headers(self)

    monkeypatch.setattr(handler, "end_headers", slow_end_headers)
    consumer = Consumer()
    source = start_source(apiserver, consumer)
    try:
        assert answering.wait(15)
        consumer.until(lambda s: ("default", "web-6xw4p") in s.endpoint_slices)
        apiserver.lose_events(lambda: apiserver.delete("endpointslices", "default", "web-6xw4p"))
        release.set()
        consumer.until(lambda s: ("default", "web-6xw4p") not in s.endpoint_slices)
        assert source.expirations[Kind.ENDPOINT_SLICE] == 1
        assert source.relists[Kind.ENDPOINT_SLICE] == 2
    finally:
        release.set()
        source.stop()


def test_errors_back_off_and_do_not_stall_other_kinds(apiserver: FakeApiServer) -> None:
    apiserver.fail_next("pods", 1000, code=500)
    apiserver.fail_next("services", 1, code=429)
    consumer = Consumer()
    source = start_source(apiserver, consumer)
    try:
        # Pods keep failing; every other kind syncs meanwhile.
        consumer.until(lambda s: "node-1" in s.nodes and ("default", "web") in s.services)
        consumer.until(lambda s: len(s.endpoint_slices) == 2 and len(s.network_policies) == 1)
        wait_for(lambda: source.errors[Kind.POD] >= 4)
        assert len(consumer.state.pods) == 0
        assert source.errors[Kind.SERVICE] == 1
        assert source.errors[Kind.NODE] == 0
        apiserver.clear_failures()
        consumer.until(lambda s: len(s.pods) == 1)
        # A failing watch (not only a list) is retried too, and the pods stay correct.
        apiserver.fail_next("pods", 2, code=503)
        changed = fixture("pod-web")
        changed["status"]["conditions"][2]["status"] = "False"
        apiserver.apply(changed)
        consumer.until(lambda s: not s.pods[("default", "web-7d9c8b6f5-x2v9k")].ready)
    finally:
        source.stop()


def test_paged_lists_are_one_snapshot(apiserver: FakeApiServer) -> None:
    for i in range(7):
        extra = fixture("namespace-default")
        extra["metadata"]["name"] = f"team-{i}"
        apiserver.apply(extra)
    consumer = Consumer()
    source = start_source(apiserver, consumer, page_size=3)
    try:
        consumer.until(lambda s: len(s.namespaces) == 8)
        pages = apiserver.list_requests("namespaces")
        assert [q.get("limit") for q in pages] == ["3", "3", "3"]
        assert "continue" not in pages[0] and all("continue" in q for q in pages[1:])
        assert sum(isinstance(e, Replace) and e.kind is Kind.NAMESPACE for e in consumer.log) == 1
    finally:
        source.stop()


def new_service(name: str) -> dict[str, Any]:
    created = fixture("service-web")
    created["metadata"] = {**created["metadata"], "name": name, "uid": f"uid-{name}"}
    return created


def test_an_api_server_outage_of_any_length_ends_within_a_second_of_its_return(
    apiserver: FakeApiServer,
) -> None:
    """The production backoff (0.5 s doubling to 30 s) would, after a long outage, leave
    each kind asleep for up to its current step once the server is back; the probe of /readyz
    (every 0.5 s, one per source) resumes them within that interval instead."""
    consumer = Consumer()
    configuration = client.Configuration()
    configuration.host = apiserver.url
    source = KubernetesSource(consumer.sink, configuration=configuration, rng=random.Random(3))
    source.start()
    try:
        assert source.wait_synced(timeout=15)
        for outage in (10.0, 1.0):  # long enough for 4-8 s steps of backoff; then short
            apiserver.stop()
            time.sleep(outage)
            requests_before = len(apiserver.requests)
            apiserver.start()  # same port, the state kept, the watch history gone
            returned = time.monotonic()
            name = f"after-{outage:.0f}s"
            apiserver.apply(new_service(name))
            consumer.until(lambda s, name=name: ("default", name) in s.services, timeout=10)
            took = time.monotonic() - returned
            assert took < 1.0, f"a Service created at the return came {took:.1f}s later"
            # One probe per source, then per kind a resumed watch, a 410 (the restarted
            # server's history is new) and a relist: no storm of retries.
            time.sleep(0.5)
            assert len(apiserver.requests) - requests_before < 6 * 3 + 4
        assert any(path == "/readyz" for path, _ in apiserver.requests)
    finally:
        source.stop()


def test_the_backoff_starts_afresh_once_a_watch_opens(apiserver: FakeApiServer) -> None:
    """Errors while the server answers back off (0.2 s doubling); a watch that opens
    proves the kind healthy, so the next error waits 0.1-0.2 s again, not the last step."""
    apiserver.fail_next("pods", 5, code=500)  # 0.1-0.2 + 0.2-0.4 + ... + 1.6-3.2 s
    consumer = Consumer()
    configuration = client.Configuration()
    configuration.host = apiserver.url
    source = KubernetesSource(
        consumer.sink, configuration=configuration, backoff=Backoff(initial=0.2, cap=30.0)
    )
    source.start()
    try:
        consumer.until(lambda s: len(s.pods) == 1)
        wait_for(lambda: apiserver.streams("pods") == 1)  # not just asked: end_watches ends it
        apiserver.fail_next("pods", 1, code=500)
        apiserver.end_watches(abruptly=True)  # broken; then the resumed watch fails once
        wait_for(lambda: source.errors[Kind.POD] == 7)
        changed = fixture("pod-web")
        changed["status"]["conditions"][2]["status"] = "False"
        apiserver.apply(changed)
        started = time.monotonic()
        consumer.until(lambda s: not s.pods[("default", "web-7d9c8b6f5-x2v9k")].ready)
        assert time.monotonic() - started < 1.0
        assert source.relists[Kind.POD] == 1  # resumed from its resourceVersion each time
    finally:
        source.stop()


def test_stopping_is_quiet(apiserver: FakeApiServer, caplog: pytest.LogCaptureFixture) -> None:
    """SIGTERM used to log one `ProtocolError ... retrying` per kind after "stopping": the
    streams cut by stop() are not failures."""
    consumer = Consumer()
    source = start_source(apiserver, consumer, watch_timeout=(60, 60))
    assert source.wait_synced(timeout=15)
    wait_for(lambda: all(apiserver.streams(r.resource) for r in RESOURCES))
    with caplog.at_level(logging.INFO, logger="srv6ctl.sources.kubernetes"):
        source.stop()
    assert [r.getMessage() for r in caplog.records] == []


def test_an_unverified_certificate_is_said_once_not_at_every_request(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A kubeconfig with insecure-skip-tls-verify: urllib3 warns (two lines on stderr) at
    every request, and filters its own warning as "always"; we say it once per server."""
    server = FakeApiServer(bookmark_interval=0.05, tls=self_signed_certificate(str(tmp_path)))
    server.start()
    for obj in all_fixtures():
        server.apply(obj)
    configuration = client.Configuration()
    configuration.host = server.url
    configuration.verify_ssl = False
    consumer = Consumer()
    try:
        with warnings.catch_warnings(record=True) as seen, caplog.at_level(logging.WARNING):
            warnings.simplefilter("always")  # as urllib3 sets it for its own warnings
            source = KubernetesSource(consumer.sink, configuration=configuration)
            source.start()
            try:
                consumer.until(lambda s: len(s.pods) == 1 and len(s.endpoint_slices) == 2)
                store = KubernetesStore("srv6ctl", configuration=configuration)
                for n in range(5):
                    store.put(f"/p/n/by-index/{n}", b"x")
                store.close()
                server.end_watches()  # more requests: every kind watches again
                wait_for(lambda: len(server.watch_requests("pods")) >= 2)
            finally:
                source.stop()
        insecure = [w for w in seen if issubclass(w.category, urllib3.exceptions.HTTPWarning)]
        assert insecure == []
        said = [r.getMessage() for r in caplog.records if "not verified" in r.getMessage()]
        assert said == [
            f"the certificate of the API server {server.url} is not verified "
            "(insecure-skip-tls-verify)"
        ]
    finally:
        server.stop()


def test_required_rbac_is_list_and_watch_of_the_six_kinds() -> None:
    expected = {
        (verb, resource, group)
        for verb in ("list", "watch")
        for resource, group in (
            ("nodes", ""),
            ("pods", ""),
            ("services", ""),
            ("namespaces", ""),
            ("endpointslices", "discovery.k8s.io"),
            ("networkpolicies", "networking.k8s.io"),
        )
    }
    assert expected == REQUIRED_RBAC


def test_backoff_is_exponential_capped_and_jittered() -> None:
    backoff = Backoff(initial=0.5, cap=30.0)
    rng = random.Random(1)
    delays = [backoff.delay(n, rng) for n in range(12)]
    for n, delay in enumerate(delays):
        nominal = min(30.0, 0.5 * 2**n)
        assert nominal / 2 <= delay <= nominal
    assert max(delays) <= 30.0 and delays[-1] >= 15.0
    assert len({round(d, 6) for d in delays[-4:]}) == 4  # jitter: capped delays still differ
    assert backoff.delay(10_000, rng) <= 30.0
