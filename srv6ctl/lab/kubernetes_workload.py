"""The lab's workload on real Kubernetes (issue 18): the shape's Services and pods as API
objects, so that `srv6ctl verify` checks a cluster whose pods kubelet made.

- **Services** as the plain lab writes them (`objects.service_object`), created through
  the API server with their fixed ClusterIPs and node ports; a LoadBalancer's ingress IPs
  written to its status, as a load balancer controller (MetalLB, a cloud's) writes them
  once it announces them (the probe is that load balancer's router: lab/external.py); the
  Service whose endpoint is outside the cluster gets its hand-made EndpointSlices. The
  shape's `kubernetes` (a host-network endpoint) is left out: the cluster has its own,
  whose endpoint is the control plane.
- **Pods**: the lab's clients and backends, each bound to its node (`nodeName`), running
  the sandbox image only (imported on every node; pull policy Never: there is no
  registry), with the server's container ports and a TCP readiness probe on its HTTP
  port. kubelet makes them through containerd and srv6-cni. The lab's server (podserver:
  Python, which no image here has) then runs in the pod's network namespace, started from
  the host as a sidecar container shares it: the namespace is named on the host (`ip
  netns attach <prefix>-<pod> <pid>`, the pid of the container's task), so verify and `lab
  exec` reach the pod as any lab pod. The pod is Ready once its server listens, and the
  real EndpointSlice controller lists it then.
"""

from __future__ import annotations

import contextlib
import time
import urllib.error
from pathlib import Path
from typing import Any

from srv6ctl.lab import netns, objects, processes
from srv6ctl.lab.context import LabContext
from srv6ctl.lab.kubelet_node import SANDBOX_IMAGE, NodeSpec
from srv6ctl.lab.kubernetes import ControlPlane
from srv6ctl.lab.netns import LabError
from srv6ctl.lab.state import PodRecord, ServiceRecord
from srv6ctl.lab.workload import start_server, wait_server

POD_RUNNING_TIMEOUT = 180.0
ENDPOINTS_TIMEOUT = 120.0


def service_manifest(service: ServiceRecord) -> dict[str, Any]:
    """The Service to create: the plain lab's object without what the API server sets
    (its UID) or ignores on create (its status)."""
    manifest = objects.service_object(service)
    manifest["metadata"].pop("uid")
    manifest.pop("status", None)
    return manifest


def create_services(plane: ControlPlane, services: list[ServiceRecord]) -> None:
    """Each Service (its record takes the API's UID), a LoadBalancer's status, and the
    hand-made slices of a Service outside the cluster."""
    for service in services:
        path = f"/api/v1/namespaces/{service.namespace}/services"
        made = plane.send("POST", path, service_manifest(service))
        assert isinstance(made, dict)
        service.uid = made["metadata"]["uid"]
        if service.type == "LoadBalancer":
            ingress = [{"ip": ip, "ipMode": "VIP"} for ip in service.load_balancer_ips]
            made["status"] = {"loadBalancer": {"ingress": ingress}}
            plane.send("PUT", f"{path}/{service.name}/status", made)
        if service.outside_endpoints:
            for endpoint_slice in objects.endpoint_slices(service, []):
                plane.send(
                    "POST",
                    f"/apis/discovery.k8s.io/v1/namespaces/{service.namespace}/endpointslices",
                    endpoint_slice,
                )


def labels(pod: PodRecord, *, published: bool = True) -> dict[str, str]:
    """A pod's labels, as the plain lab's Pod objects carry them; an unpublished backend
    has its role's only (no Service selects it yet)."""
    return objects.pod_labels(pod) if published else {objects.APP_LABEL: pod.role}


def pod_manifest(pod: PodRecord, *, published: bool = True) -> dict[str, Any]:
    """The plain lab's Pod object as kubelet is to run it: without what the API server
    sets (UID, status), the sandbox image as its container (there is no registry), and a
    readiness probe on its server's HTTP port."""
    manifest = objects.pod_object(pod)
    manifest.pop("status")
    metadata = manifest["metadata"]
    metadata.pop("uid")
    metadata["labels"] = labels(pod, published=published)
    manifest["spec"]["terminationGracePeriodSeconds"] = 1
    manifest["spec"]["containers"][0].update(
        image=SANDBOX_IMAGE,
        imagePullPolicy="Never",
        readinessProbe={"tcpSocket": {"port": objects.HTTP_PORT}, "periodSeconds": 1},
    )
    return manifest


def create_pod(
    ctx: LabContext, plane: ControlPlane, pod: PodRecord, *, published: bool = True
) -> None:
    """The Pod through the API, then (once kubelet runs it) its namespace named on the
    host and its server started there; the record takes its UID, container and IPs.
    Unless `published`, its Service does not select it yet (`publish`)."""
    path = f"/api/v1/namespaces/{pod.namespace}/pods"
    made = plane.send("POST", path, pod_manifest(pod, published=published))
    assert isinstance(made, dict)
    pod.uid = made["metadata"]["uid"]
    try:
        status = _wait_running(plane, f"{path}/{pod.name}")
        container = status["containerStatuses"][0]["containerID"].removeprefix("containerd://")
        spec = NodeSpec.load(node_spec_dir(ctx, pod.node))
        pid = spec.task_pid(container)
        if pid is None:
            raise LabError(f"pod {pod.name}: containerd on {pod.node} has no task {container}")
        netns.delete_netns(pod.netns)  # a stale name of the lab's (it carries the prefix)
        netns.ip("netns", "attach", pod.netns, str(pid))
    except BaseException:
        # Not recorded in the lab's state (add_backends keeps only pods that run): the
        # Pod must not outlive it in the API either.
        with contextlib.suppress(OSError, urllib.error.URLError):
            plane.send("DELETE", f"{path}/{pod.name}", {"gracePeriodSeconds": 0})
        raise
    pod.container_id = container
    for entry in status.get("podIPs", []):
        if ":" in entry["ip"]:
            pod.ipv6 = entry["ip"]
        else:
            pod.ipv4 = entry["ip"]
    pod.server = start_server(ctx.paths, pod)
    ctx.save()
    wait_server(ctx.paths, pod)


def relabel(plane: ControlPlane, pods: list[PodRecord]) -> None:
    """Give each pod the labels its record says (`labels`): a backend joins its Service's
    slices, or a withdrawn one leaves them (the EndpointSlice controller follows)."""
    for pod in pods:
        plane.send(
            "PATCH",
            f"/api/v1/namespaces/{pod.namespace}/pods/{pod.name}",
            {"metadata": {"labels": labels(pod)}},
        )


def delete_pod(ctx: LabContext, plane: ControlPlane, pod: PodRecord) -> None:
    """Server stopped, the host's name for its namespace removed, the Pod deleted and
    waited for (kubelet has run CNI DEL and removed its sandbox)."""
    if pod.server is not None:
        processes.stop([pod.server])
    netns.delete_netns(pod.netns)
    path = f"/api/v1/namespaces/{pod.namespace}/pods/{pod.name}"
    try:
        plane.send("DELETE", path, {"gracePeriodSeconds": 1})
    except urllib.error.HTTPError as err:
        if err.code != 404:
            raise
        return
    deadline = time.monotonic() + POD_RUNNING_TIMEOUT
    while time.monotonic() < deadline:
        try:
            plane.get(path)
        except urllib.error.HTTPError as err:
            if err.code == 404:
                return
            raise
        time.sleep(0.3)
    raise LabError(f"{path} not gone within {POD_RUNNING_TIMEOUT:.0f} s")


def node_spec_dir(ctx: LabContext, node: str) -> Path:
    """Where `kubernetes_lab.kubelet_node` keeps a node's `NodeSpec`."""
    return ctx.paths.node_dir(node) / "kubelet-node"


def _wait_running(plane: ControlPlane, path: str) -> dict[str, Any]:
    deadline = time.monotonic() + POD_RUNNING_TIMEOUT
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        found = plane.get(path)
        assert isinstance(found, dict)
        status = found.get("status", {})
        running = status.get("phase") == "Running" and status.get("podIPs")
        if running and status.get("containerStatuses", [{}])[0].get("containerID"):
            return status
        time.sleep(0.3)
    raise LabError(f"{path} not running within {POD_RUNNING_TIMEOUT:.0f} s: {status}")


def wait_endpoints(plane: ControlPlane, ctx: LabContext) -> None:
    """Until the EndpointSlice controller lists every backend of every Service with
    backends, ready (kubelet's readiness probe has reached its server)."""
    deadline = time.monotonic() + ENDPOINTS_TIMEOUT
    missing: dict[str, set[str]] = {}
    while time.monotonic() < deadline:
        missing = {}
        for service in ctx.state.services:
            if not service.with_backends:
                continue
            want = {a for p in ctx.state.backends(service.name) for a in (p.ipv6, p.ipv4) if a}
            have = _ready_addresses(plane, service)
            if want - have:
                missing[service.name] = want - have
        if not missing:
            return
        time.sleep(0.5)
    raise LabError(f"EndpointSlices not ready within {ENDPOINTS_TIMEOUT:.0f} s: {missing}")


def _ready_addresses(plane: ControlPlane, service: ServiceRecord) -> set[str]:
    selector = f"{objects.SERVICE_NAME_LABEL}%3D{service.name}"
    try:
        found = plane.get(
            f"/apis/discovery.k8s.io/v1/namespaces/{service.namespace}/endpointslices"
            f"?labelSelector={selector}"
        )
    except urllib.error.HTTPError:
        return set()
    assert isinstance(found, dict)
    return {
        address
        for s in found.get("items", [])
        for e in s.get("endpoints") or []
        if e.get("conditions", {}).get("ready")
        for address in e["addresses"]
    }


__all__ = [
    "create_pod",
    "create_services",
    "delete_pod",
    "labels",
    "pod_manifest",
    "relabel",
    "service_manifest",
    "wait_endpoints",
]
