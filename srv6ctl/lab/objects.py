"""The lab's Kubernetes objects, shaped exactly as the API serves them. Pure.

The agents read these from the lab directory (`srv6ctl.sources.lab`) through the same
converter as real API objects, so what works here works against a cluster. Each pod and
each service is one file: a change rewrites one file in one rename.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import yaml

from srv6ctl.lab.state import LabState, NodeRecord, PodRecord, ServiceRecord

# What every lab pod's tiny server listens on (srv6ctl.lab.podserver): `http` is reached
# through service port 80 (port != targetPort: the pod rewrites it, statelessly), `echo`
# through 8081 (port == targetPort).
HTTP_PORT = 8080
ECHO_PORT = 8081
SERVICE_HTTP_PORT = 80
CONTAINER_PORTS = (
    ("http", HTTP_PORT, "TCP"),
    ("http-udp", HTTP_PORT, "UDP"),
    ("echo", ECHO_PORT, "TCP"),
    ("echo-udp", ECHO_PORT, "UDP"),
)
SERVICE_PORTS = (
    ("http", SERVICE_HTTP_PORT, "http", "TCP"),
    ("http-udp", SERVICE_HTTP_PORT, "http-udp", "UDP"),
    ("echo", ECHO_PORT, ECHO_PORT, "TCP"),
    ("echo-udp", ECHO_PORT, ECHO_PORT, "UDP"),
)
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
APP_LABEL = "app"
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
NAMESPACES_FILE = "namespaces.yaml"  # in the objects directory


def namespace_object(name: str) -> dict[str, Any]:
    """A Namespace as the API server keeps it: it labels every namespace with its own name
    (`kubernetes.io/metadata.name`), which is what a namespaceSelector can always match."""
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "labels": {NAMESPACE_NAME_LABEL: name}},
        "status": {"phase": "Active"},
    }


def namespace_file(state: LabState) -> str:
    names = sorted(
        {"default", *(p.namespace for p in state.pods)} | {s.namespace for s in state.services}
    )
    return dump([namespace_object(n) for n in names])


def node_object(node: NodeRecord) -> dict[str, Any]:
    addresses = [{"type": "InternalIP", "address": node.internal_ipv6}]
    if node.internal_ipv4:
        addresses.append({"type": "InternalIP", "address": node.internal_ipv4})
    addresses.append({"type": "Hostname", "address": node.name})
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": node.name, "labels": {"kubernetes.io/hostname": node.name}},
        "status": {"addresses": addresses},
    }


def pod_labels(pod: PodRecord) -> dict[str, str]:
    """Its Service's app label selects a backend; a pod of none has its role's."""
    return {APP_LABEL: pod.service or pod.role}


def pod_object(pod: PodRecord) -> dict[str, Any]:
    ips = [ip for ip in (pod.ipv6, pod.ipv4) if ip]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod.name,
            "namespace": pod.namespace,
            "uid": pod.uid,
            "labels": pod_labels(pod),
        },
        "spec": {
            "nodeName": pod.node,
            "containers": [
                {
                    "name": "server",
                    "image": "srv6ctl-lab/podserver",
                    "ports": [
                        {"name": name, "containerPort": port, "protocol": protocol}
                        for name, port, protocol in CONTAINER_PORTS
                    ],
                }
            ],
        },
        "status": {
            "phase": "Running",
            "podIP": ips[0] if ips else None,
            "podIPs": [{"ip": ip} for ip in ips],
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }


def service_object(service: ServiceRecord) -> dict[str, Any]:
    cluster_ips = [ip for ip in (service.cluster_ipv6, service.cluster_ipv4) if ip]
    families = ["IPv6"] + (["IPv4"] if service.cluster_ipv4 else [])
    spec: dict[str, Any] = {
        "type": service.type,
        "clusterIP": cluster_ips[0],
        "clusterIPs": cluster_ips,
        "ipFamilies": families,
        "ipFamilyPolicy": "PreferDualStack" if len(families) > 1 else "SingleStack",
        "ports": [
            {"name": name, "port": port, "targetPort": target, "protocol": protocol}
            for name, port, target, protocol in SERVICE_PORTS
        ],
    }
    if not service.outside_endpoints:  # a Service of hand-made slices has no selector
        spec["selector"] = {APP_LABEL: service.label}
    for entry, node_port in zip(spec["ports"], service.node_ports, strict=False):
        entry["nodePort"] = node_port
    obj: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": service.name, "namespace": service.namespace, "uid": service.uid},
        "spec": spec,
    }
    if service.external_ips:
        spec["externalIPs"] = list(service.external_ips)
    if service.affinity:
        spec["sessionAffinity"] = "ClientIP"
        spec["sessionAffinityConfig"] = {"clientIP": {"timeoutSeconds": service.affinity}}
    if service.type == "LoadBalancer":
        spec["externalTrafficPolicy"] = service.external_traffic_policy
        if service.source_ranges:
            spec["loadBalancerSourceRanges"] = list(service.source_ranges)
        if service.health_check_node_port:
            spec["healthCheckNodePort"] = service.health_check_node_port
        # What a load balancer controller (MetalLB, a cloud's) writes once it announces
        # the addresses; the lab's probe is that load balancer's router (lab/build.py).
        ingress = [{"ip": ip, "ipMode": "VIP"} for ip in service.load_balancer_ips]
        obj["status"] = {"loadBalancer": {"ingress": ingress}}
    return obj


def endpoint_slices(
    service: ServiceRecord, backends: list[PodRecord], hosts: Sequence[NodeRecord] = ()
) -> list[dict[str, Any]]:
    """One slice per address family, as the EndpointSlice controller writes them; a
    host-network endpoint (`hosts`) as the API server writes `kubernetes`'s: the node's
    address, no pod; an endpoint outside the cluster as a user writes one by hand: its
    address alone."""
    families = [("IPv6", "ipv6")] + ([("IPv4", "ipv4")] if service.cluster_ipv4 else [])
    slices = []
    for address_type, attribute in families:
        endpoints: list[dict[str, Any]] = []
        for outside in service.outside_endpoints:
            if (":" in outside) == (attribute == "ipv6"):
                endpoints.append({"addresses": [outside], "conditions": {"ready": True}})
        for node in hosts:
            address = getattr(node, f"internal_{attribute}")
            if address:
                endpoints.append(
                    {
                        "addresses": [address],
                        "conditions": {"ready": True, "serving": True, "terminating": False},
                        "nodeName": node.name,
                    }
                )
        for pod in backends:
            address = getattr(pod, attribute)
            if not address:
                continue
            endpoints.append(
                {
                    "addresses": [address],
                    "conditions": {"ready": True, "serving": True, "terminating": False},
                    "nodeName": pod.node,
                    "targetRef": {
                        "kind": "Pod",
                        "name": pod.name,
                        "namespace": pod.namespace,
                        "uid": pod.uid,
                    },
                }
            )
        slices.append(
            {
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {
                    "name": f"{service.name}-{attribute}",
                    "namespace": service.namespace,
                    "labels": {SERVICE_NAME_LABEL: service.name},
                },
                "addressType": address_type,
                "endpoints": endpoints,
                "ports": [
                    {"name": name, "port": port, "protocol": protocol}
                    for name, port, protocol in CONTAINER_PORTS
                ],
            }
        )
    return slices


def dump(documents: list[dict[str, Any]]) -> str:
    return yaml.safe_dump_all(documents, sort_keys=False)


def node_file(state: LabState) -> str:
    return dump([node_object(n) for n in state.nodes])


def service_file(state: LabState, service: ServiceRecord) -> str:
    backends = state.backends(service.name) if service.with_backends else []  # by its label
    hosts = [state.node(name) for name in service.host_endpoints]
    return dump([service_object(service), *endpoint_slices(service, backends, hosts)])
