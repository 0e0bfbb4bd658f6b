"""What a lab is made of, as one JSON file in its state directory (`lab.json`).

The file is written before anything is created and after every step, so `lab down` and a
later `lab up` know what to remove even after a crash half way through a build: anything
the lab makes is either named here or carries the lab's prefix (namespaces) or its state
directory in its command line (processes).

Process records keep the process's start time (`/proc/<pid>/stat` field 22) next to its
pid: a pid alone may have been reused by an unrelated process since, and the lab must
only ever signal what it started.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from srv6ctl.lab import DEFAULT_PREFIX

STATE_FILE = "lab.json"
MARKER = ".srv6ctl-lab"  # a state directory the lab created (down may delete it)
SCHEMA = 1

Role = Literal["client", "backend"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ProcessRecord(_Model):
    pid: int
    start_time: int  # clock ticks after boot: tells our process from a recycled pid
    argv: list[str]
    log: str


class NodeRecord(_Model):
    name: str  # the Kubernetes Node name (n1, n2, ...)
    netns: str
    uplink: str  # its veth port's name in the underlay namespace
    internal_ipv6: str
    internal_ipv4: str | None = None
    mac: str = ""
    cni_socket: str
    api_socket: str
    agent: ProcessRecord | None = None
    # --dataplane vpp: the node's VPP (srv6ctl.lab.vpp), its directory and API socket
    vpp: ProcessRecord | None = None
    vpp_dir: str | None = None
    vpp_api_socket: str | None = None
    vpp_stats_socket: str | None = None
    host_server: ProcessRecord | None = None  # a host-network endpoint's (podserver)
    # --kubernetes: the supervisor of the node's kubelet and containerd (kubelet_node)
    kubelet: ProcessRecord | None = None


class PodRecord(_Model):
    name: str
    namespace: str = "default"
    node: str
    netns: str
    uid: str
    container_id: str
    role: Role
    service: str | None = None  # the lab service it backs
    ipv6: str | None = None
    ipv4: str | None = None
    server: ProcessRecord | None = None


class ServiceRecord(_Model):
    name: str
    namespace: str = "default"
    uid: str
    cluster_ipv6: str
    cluster_ipv4: str | None = None
    with_backends: bool = True  # False: the lab's endpoint-less service
    selects: str | None = None  # its pods' app label; None: its own name
    type: str = "ClusterIP"
    load_balancer_ips: list[str] = []  # status.loadBalancer.ingress[].ip
    external_ips: list[str] = []
    external_traffic_policy: str = "Cluster"
    health_check_node_port: int = 0
    node_ports: list[int] = []  # one per lab service port (lab/objects.SERVICE_PORTS)
    source_ranges: list[str] = []  # loadBalancerSourceRanges
    affinity: int = 0  # sessionAffinity ClientIP's timeoutSeconds; 0: None
    host_endpoints: list[str] = []  # nodes whose own stack serves it (a server there)
    outside_endpoints: list[str] = []  # addresses outside the cluster (the probe's server)

    @property
    def label(self) -> str:
        """The app label of the pods it selects."""
        return self.selects or self.name

    def external_vips(self, family: int) -> list[str]:
        return [
            a for a in (*self.load_balancer_ips, *self.external_ips) if (":" in a) == (family == 6)
        ]


class LabOptions(_Model):
    nodes: int = 3
    pods_per_node: int = 2
    dual_stack: bool = False
    dataplane: Literal["kernel", "vpp"] = "kernel"  # vpp: one VPP per node (lab/vpp.py)
    prefix: str = DEFAULT_PREFIX
    workarounds: bool = True  # FINDINGS.md: settings the lab fixes after the agents
    kubernetes: str | None = None  # real Kubernetes from this directory (kubernetes_lab)


class LabState(_Model):
    schema_version: int = SCHEMA
    state_dir: str
    options: LabOptions
    complete: bool = False  # set last by `up`; a lab without it is a crashed build
    underlay_netns: str
    probe_netns: str
    bridge: str = "br0"
    vpp_binary: str | None = None  # --dataplane vpp: the VPP the nodes run
    probe_server: ProcessRecord | None = None  # the endpoint outside the cluster (podserver)
    control_plane_netns: str | None = None  # --kubernetes: the control plane's namespace
    control_plane: list[ProcessRecord] = []  # --kubernetes: etcd, kube-apiserver, ...
    nodes: list[NodeRecord] = []
    pods: list[PodRecord] = []
    services: list[ServiceRecord] = []

    # --- look-ups ---------------------------------------------------------------------

    def node(self, name: str) -> NodeRecord:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(f"no node {name!r} in the lab (nodes: {', '.join(self.node_names)})")

    @property
    def node_names(self) -> list[str]:
        return [n.name for n in self.nodes]

    def pod(self, name: str) -> PodRecord:
        namespace, _, short = name.rpartition("/")
        for pod in self.pods:
            if pod.name == short and (not namespace or namespace == pod.namespace):
                return pod
        names = ", ".join(p.name for p in self.pods)
        raise KeyError(f"no pod {name!r} in the lab (pods: {names})")

    def service(self, name: str) -> ServiceRecord:
        namespace, _, short = name.rpartition("/")
        for service in self.services:
            if service.name == short and (not namespace or namespace == service.namespace):
                return service
        names = ", ".join(s.name for s in self.services)
        raise KeyError(f"no service {name!r} in the lab (services: {names})")

    def backends(self, service: str) -> list[PodRecord]:
        """The pods `service` selects (by name; services may share their pods' label)."""
        label = next((s.label for s in self.services if s.name == service), service)
        return [p for p in self.pods if p.service == label]

    def services_of(self, label: str) -> list[ServiceRecord]:
        """Every service selecting pods labelled `label`."""
        return [s for s in self.services if s.label == label]

    def namespaces(self) -> list[str]:
        """Every network namespace the lab holds, pods first (they hang off the nodes)."""
        return [
            *(p.netns for p in self.pods),
            *(n.netns for n in self.nodes),
            *([self.control_plane_netns] if self.control_plane_netns else []),
            self.probe_netns,
            self.underlay_netns,
        ]


class LabPaths:
    """Where a lab keeps its files. Socket paths stay short: sun_path holds 107 bytes."""

    def __init__(self, state_dir: str | Path) -> None:
        self.root = Path(state_dir).absolute()

    @property
    def state(self) -> Path:
        return self.root / STATE_FILE

    @property
    def marker(self) -> Path:
        return self.root / MARKER

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def store(self) -> Path:
        return self.root / "ipam.db"

    @property
    def objects(self) -> Path:
        return self.root / "objects"

    @property
    def control_plane(self) -> Path:
        """--kubernetes: the control plane's files (PKI, kubeconfigs, logs)."""
        return self.root / "control-plane"

    @property
    def agent_kubeconfig(self) -> Path:
        """--kubernetes: the agents' credentials (the `srv6ctl` ServiceAccount's token)."""
        return self.root / "agent.kubeconfig"

    def node_dir(self, node: str) -> Path:
        return self.root / node

    def pod_log(self, pod: str) -> Path:
        return self.root / "pods" / f"{pod}.log"


def load_state(paths: LabPaths) -> LabState | None:
    try:
        text = paths.state.read_text()
    except FileNotFoundError:
        return None
    return LabState.model_validate_json(text)


def save_state(paths: LabPaths, state: LabState) -> None:
    """Write atomically: a crash leaves the previous file or the new one, never half."""
    paths.root.mkdir(parents=True, exist_ok=True)
    tmp = paths.state.with_name(f".{STATE_FILE}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(state.model_dump(), indent=1) + "\n")
    os.replace(tmp, paths.state)


def write_atomically(path: Path, text: str) -> None:
    """Replace a file in one rename. The temporary name starts with a dot, which the lab
    source skips, so an agent never reads a half-written object file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def remove_file(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
