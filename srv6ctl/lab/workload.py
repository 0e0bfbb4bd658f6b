"""The lab's workload: its pods, each made through srv6-cni as kubelet's runtime would and
running a `podserver`, and the Kubernetes objects the agents read of them (Pods,
Services and their EndpointSlices)."""

from __future__ import annotations

import sys
import time
import uuid
from pathlib import Path

from srv6ctl.lab import netns, objects, processes
from srv6ctl.lab.cni import cni_add, cni_del
from srv6ctl.lab.netns import LabError
from srv6ctl.lab.shape import BACKEND_SERVICE, OUTSIDE_SERVER
from srv6ctl.lab.state import (
    LabPaths,
    LabState,
    NodeRecord,
    PodRecord,
    ProcessRecord,
    ServiceRecord,
    remove_file,
    write_atomically,
)


def plan_pods(state: LabState) -> list[PodRecord]:
    """Clients and backends, alternating per node so every node has both when it has
    two pods or more (pod→pod on one node, and service traffic to a local backend)."""
    pods: list[PodRecord] = []
    counts = {"client": 0, "backend": 0}
    for i, node in enumerate(state.nodes):
        for j in range(state.options.pods_per_node):
            role: str = "backend" if (i + j) % 2 else "client"
            counts[role] += 1
            name = f"web-{counts[role]}" if role == "backend" else f"client-{counts[role]}"
            pods.append(pod_record(state, name, node, role))
    return pods


def pod_record(state: LabState, name: str, node: NodeRecord, role: str) -> PodRecord:
    uid = str(uuid.uuid4())
    return PodRecord(
        name=name,
        node=node.name,
        netns=f"{state.options.prefix}-{name}",
        uid=uid,
        container_id=f"lab{uid.replace('-', '')}",
        role="backend" if role == "backend" else "client",
        service=BACKEND_SERVICE if role == "backend" else None,
    )


def create_pod(paths: LabPaths, state: LabState, pod: PodRecord) -> None:
    """Namespace, CNI ADD (as kubelet's runtime runs it), server, Pod object."""
    node = state.node(pod.node)
    netns.add_netns(pod.netns)
    result = cni_add(node.cni_socket, pod.container_id, pod.netns, pod.name, pod.namespace, pod.uid)
    pod.ipv6, pod.ipv4 = result.ipv6, result.ipv4
    pod.server = start_server(paths, pod)
    write_atomically(_pod_file(paths, pod), objects.dump([objects.pod_object(pod)]))


def start_server(paths: LabPaths, pod: PodRecord) -> ProcessRecord:
    return _spawn_server(paths, pod.netns, pod.name)


def host_server_name(node: NodeRecord) -> str:
    """What a host-network endpoint's server says it is (as a pod says its name)."""
    return f"{node.name}-host"


def start_host_server(paths: LabPaths, node: NodeRecord) -> ProcessRecord:
    """The server of a host-network endpoint, in the node's own namespace (as
    kube-apiserver listens on its node's addresses)."""
    return _spawn_server(paths, node.netns, host_server_name(node))


def start_probe_server(paths: LabPaths, state: LabState) -> ProcessRecord:
    """The server outside the cluster, on the probe (a database, a managed API server):
    the endpoint of the lab's Service of hand-made slices (shape.OUTSIDE_SERVER)."""
    return _spawn_server(paths, state.probe_netns, OUTSIDE_SERVER)


def wait_probe_server(paths: LabPaths, state: LabState, timeout: float = 20.0) -> None:
    _wait_listening(paths, OUTSIDE_SERVER, state.probe_server, timeout)


def _spawn_server(paths: LabPaths, netns_name: str, name: str) -> ProcessRecord:
    argv = [
        "ip",
        "netns",
        "exec",
        netns_name,
        sys.executable,
        "-m",
        "srv6ctl.lab.podserver",
        "--pod",
        name,
        "--http",
        str(objects.HTTP_PORT),
        "--echo",
        str(objects.ECHO_PORT),
        "--state-dir",
        str(paths.root),
    ]
    log = paths.pod_log(name)
    remove_file(log)  # "listening" below must be this server's, not a previous one's
    return processes.spawn(argv, log, lab=paths.root)


def wait_server(paths: LabPaths, pod: PodRecord, timeout: float = 20.0) -> None:
    _wait_listening(paths, pod.name, pod.server, timeout)


def wait_host_server(paths: LabPaths, node: NodeRecord, timeout: float = 20.0) -> None:
    _wait_listening(paths, host_server_name(node), node.host_server, timeout)


def _wait_listening(
    paths: LabPaths, name: str, server: ProcessRecord | None, timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    log = paths.pod_log(name)
    while time.monotonic() < deadline:
        if log.exists() and "listening" in log.read_text(errors="replace"):
            return
        if not processes.alive(server):
            raise LabError(f"the server of {name} exited:\n" + processes.log_tail(log))
        time.sleep(0.05)
    raise LabError(f"the server of {name} did not start within {timeout:.0f} s")


def _pod_file(paths: LabPaths, pod: PodRecord) -> Path:
    return paths.objects / "pods" / f"{pod.namespace}-{pod.name}.yaml"


def write_service(
    paths: LabPaths, state: LabState, service: ServiceRecord, *, with_endpoints: bool = True
) -> None:
    text = (
        objects.service_file(state, service)
        if with_endpoints
        else objects.dump([objects.service_object(service)])
    )
    path = paths.objects / "services" / f"{service.namespace}-{service.name}.yaml"
    write_atomically(path, text)


def delete_pod(paths: LabPaths, state: LabState, pod: PodRecord) -> None:
    """Server stopped, CNI DEL, namespace and Pod object removed."""
    if pod.server is not None:
        processes.stop([pod.server])
    node = state.node(pod.node)
    if netns.exists(pod.netns):
        cni_del(node.cni_socket, pod.container_id, pod.netns, pod.name, pod.namespace, pod.uid)
        netns.delete_netns(pod.netns)
    remove_file(_pod_file(paths, pod))
