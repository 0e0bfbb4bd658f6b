"""The lab on real Kubernetes (`srv6ctl lab up --kubernetes DIR`, issue 18): the steps that
make its nodes Kubernetes nodes.

The lab's underlay, node namespaces and (with `--dataplane vpp`) VPPs are built as for
the plain lab; then:

- **A management network**: the control plane's namespace (`<prefix>-cp`) holds a bridge
  `mgmt` with its own address, and every node a link `mgmt0` on it. kubelet and the agent
  reach the API server over it, as on clusters whose nodes have a management NIC beside
  the data one: on a VPP node the kernel has no path to the underlay until its agent has
  made the host interconnect, and the agent needs the API server first (its node ID is in
  the Kubernetes store). The control plane routes each node's InternalIP through its
  management address (kube-apiserver → kubelet: logs, exec).
- **The control plane** (`kubernetes.ControlPlane`) with the lab's service CIDRs, and
  srv6ctl's own RBAC and namespace applied from `deploy/base/kubernetes` with kubectl: the
  agents run as the `srv6ctl` ServiceAccount (a TokenRequest token), so its ClusterRole
  and Role are what they are allowed, as in a cluster.
- **A load balancer** (`load_balancer`): a controller that gives LoadBalancer Services
  their ingress IPs, and the probe as the router in front of the nodes.
- **Per node** a kubelet with its own containerd (`kubelet_node.KubeletNode`), srv6-cni
  installed as containerd's CNI plugin (with Debian's `loopback`, which containerd's CRI
  runs for every pod), and the agent with the Kubernetes source and store, started in the
  node's mount namespace (containerd's pod namespaces are under the node's own
  /run/netns, as a DaemonSet's agent sees them through its hostPath). kubelet starts once
  the agent is ready, and the node is up when its Node is Ready.

There is no kube-proxy anywhere: Services are srv6ctl's.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
import time
import urllib.error
from collections.abc import Callable
from functools import partial
from pathlib import Path

import yaml

from cni.install import install as install_cni
from cni.wiring import set_tx_checksum
from srv6ctl.dataplane.nsenter import ensure_sysctls, run_in_netns
from srv6ctl.lab import cluster_dns, load_balancer, netns
from srv6ctl.lab.context import LabContext
from srv6ctl.lab.kubelet_node import (
    HostSettings,
    KubeletNode,
    NodeFailed,
    NodeSpec,
    leftover_cgroups,
)
from srv6ctl.lab.kubernetes import ControlPlane, KubernetesUnavailable, find_binaries
from srv6ctl.lab.netns import LabError
from srv6ctl.lab.node_processes import agent_ready, start_agent
from srv6ctl.lab.parallel import in_parallel
from srv6ctl.lab.shape import PLAN_V4, PLAN_V6, underlay_v6
from srv6ctl.lab.state import LabPaths, LabState, NodeRecord

ROOT = Path(__file__).resolve().parents[2]
AGENT_MANIFESTS = (
    ROOT / "deploy" / "base" / "kubernetes" / "namespace.yaml",
    ROOT / "deploy" / "base" / "kubernetes" / "rbac.yaml",
)
AGENT_NAMESPACE = "srv6ctl"  # deploy/'s, with its ServiceAccount `srv6ctl`
IMAGES = ("pause.tar", "agnhost.tar")  # in DIR/images: the sandbox and the e2e test image
OPTIONAL_IMAGES = ("busybox.tar",)  # imported where given: some e2e tests run it
MANAGEMENT_BRIDGE = "mgmt"
MANAGEMENT_IFNAME = "mgmt0"
MANAGEMENT_NET = ipaddress.IPv6Network("fd00:fe::/64")
CONTROL_PLANE_ADDRESS = MANAGEMENT_NET[0xFF00]
# Its address on the underlay, beside the probe's: what the `kubernetes` Service's endpoint
# is, so that pods reach the API server as any endpoint outside the cluster (README,
# "Endpoints outside the cluster"), through their node's dataplane.
CONTROL_PLANE_UNDERLAY_INDEX = 0xFFFD
# Debian's containernetworking-plugins: `loopback`, which containerd's CRI runs for every
# pod, and `portmap`, chained after srv6-cni for hostPorts (as Calico and Cilium chain it).
DEBIAN_PLUGINS = (Path("/usr/lib/cni/loopback"), Path("/usr/lib/cni/portmap"))
TOKEN_SECONDS = 7 * 24 * 3600
NODE_READY_TIMEOUT = 180.0


def management_address(index: int) -> ipaddress.IPv6Address:
    return MANAGEMENT_NET[index]


def control_plane_netns(prefix: str) -> str:
    return f"{prefix}-cp"


def check(directory: str) -> None:
    """Refuse, in one line, a DIR without the components, the tools or the images."""
    find_binaries(Path(directory))
    missing = [i for i in IMAGES if not (Path(directory) / "images" / i).is_file()]
    if missing:
        raise KubernetesUnavailable(
            f"--kubernetes {directory}: missing images/{', images/'.join(missing)} "
            "(OCI archives: README, 'A lab on real Kubernetes')"
        )
    missing = [str(p) for p in DEBIAN_PLUGINS if not p.exists()]
    if missing:
        raise KubernetesUnavailable(
            f"{', '.join(missing)} missing (the lab's nodes run Debian's `loopback` and "
            "`portmap` CNI plugins: containernetworking-plugins)"
        )


# --- the control plane and the management network -----------------------------------------


def control_plane(paths: LabPaths, state: LabState) -> ControlPlane:
    assert state.options.kubernetes is not None
    plan = [
        PLAN_V6["serviceCIDRv6"],
        *([PLAN_V4["serviceCIDRv4"]] if state.options.dual_stack else []),
    ]
    return ControlPlane(
        find_binaries(Path(state.options.kubernetes)),
        control_plane_netns(state.options.prefix),
        CONTROL_PLANE_ADDRESS,
        [ipaddress.ip_network(c) for c in plan],
        paths.control_plane,
        paths.root,
        advertise=ipaddress.IPv6Address(underlay_v6(CONTROL_PLANE_UNDERLAY_INDEX)),
    )


def control_plane_network(state: LabState) -> None:
    """The control plane's namespace: on the underlay (the API server's advertised
    address, the pod CIDR routed to the nodes as the probe routes it) and the management
    bridge, each node's `mgmt0` on it, the nodes' InternalIPs routed over it."""
    cp = control_plane_netns(state.options.prefix)
    netns.add_netns(cp)
    underlay = underlay_v6(CONTROL_PLANE_UNDERLAY_INDEX)
    netns.attach(state.underlay_netns, state.bridge, "cp", cp, "eth0", [f"{underlay}/64"])
    if state.options.dataplane == "vpp":
        # As the probe's (lab build): a veth leaves checksums to its receiver, and VPP's
        # af_packet uplink forwards them to the pods unchecked.
        run_in_netns(netns.netns_path(cp), partial(set_tx_checksum, "eth0", False))
    hops = " ".join(f"nexthop via {n.internal_ipv6}" for n in state.nodes)
    netns.ip_batch(cp, [f"route replace {PLAN_V6['podCIDRv6']} {hops}"])
    netns.add_bridge(cp, MANAGEMENT_BRIDGE)
    netns.ip_batch(cp, [f"addr add {CONTROL_PLANE_ADDRESS}/64 dev {MANAGEMENT_BRIDGE} nodad"])
    for index, node in enumerate(state.nodes, start=1):
        netns.attach(cp, MANAGEMENT_BRIDGE, f"m-{node.name}", node.netns, MANAGEMENT_IFNAME, [])
        # A VPP node's namespace has IPv6 off by default (its uplink must stay silent).
        result = ensure_sysctls(
            netns.netns_path(node.netns), {f"net.ipv6.conf.{MANAGEMENT_IFNAME}.disable_ipv6": "0"}
        )
        if result.refused:
            raise LabError(f"{node.name}: {'; '.join(result.refused)}")
        address = management_address(index)
        netns.ip_batch(node.netns, [f"addr add {address}/64 dev {MANAGEMENT_IFNAME} nodad"])
        netns.ip_batch(cp, [f"route add {node.internal_ipv6}/128 via {address}"])


def start_control_plane(ctx: LabContext) -> ControlPlane:
    plane = control_plane(ctx.paths, ctx.state)
    try:
        plane.start()
    finally:
        ctx.state.control_plane = list(plane.records)
        ctx.save()
    _kubectl(plane, "apply", *(f"--filename={m}" for m in AGENT_MANIFESTS))
    return plane


def dns_address(state: LabState) -> ipaddress.IPv6Address | None:
    """The kube-dns ClusterIP kubelet gives pods, where the lab runs a cluster DNS."""
    assert state.options.kubernetes is not None
    if cluster_dns.binary(Path(state.options.kubernetes)) is None:
        return None
    address = cluster_dns.service_address(ipaddress.ip_network(PLAN_V6["serviceCIDRv6"]))
    assert isinstance(address, ipaddress.IPv6Address)
    return address


def start_cluster_dns(ctx: LabContext, plane: ControlPlane, address: ipaddress.IPv6Address) -> None:
    """CoreDNS on the control plane's underlay address, and the kube-dns Service for it at
    `address` (cluster_dns); only where DIR has a `coredns` (`dns_address`)."""
    assert ctx.state.options.kubernetes is not None
    coredns = cluster_dns.binary(Path(ctx.state.options.kubernetes))
    assert coredns is not None
    listen = ipaddress.IPv6Address(underlay_v6(CONTROL_PLANE_UNDERLAY_INDEX))
    try:
        cluster_dns.start(plane, coredns, address, listen)
    finally:
        ctx.state.control_plane = list(plane.records)
        ctx.save()


def _kubectl(plane: ControlPlane, *args: str) -> str:
    kubectl = Path(sys.executable).parent / "kubectl"
    argv = [
        "nsenter", f"--net=/run/netns/{plane.netns}", "--",
        str(kubectl), f"--kubeconfig={plane.kubeconfig('admin')}", *args,
    ]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=120)
    if done.returncode != 0:
        raise LabError(f"kubectl {args[0]}: {done.stderr.strip()[:400]}")
    return done.stdout


def agent_kubeconfig(plane: ControlPlane, path: Path) -> Path:
    """A kubeconfig for the `srv6ctl` ServiceAccount (a TokenRequest token), 0600."""
    answer = plane.send(
        "POST",
        f"/api/v1/namespaces/{AGENT_NAMESPACE}/serviceaccounts/srv6ctl/token",
        {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"expirationSeconds": TOKEN_SECONDS},
        },
    )
    assert isinstance(answer, dict)
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "lab",
                "cluster": {
                    "server": plane.url,
                    "certificate-authority": str(plane.pki / "ca.crt"),
                },
            }
        ],
        "users": [{"name": "srv6ctl", "user": {"token": answer["status"]["token"]}}],
        "contexts": [{"name": "lab", "context": {"cluster": "lab", "user": "srv6ctl"}}],
        "current-context": "lab",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as out:
        out.write(yaml.safe_dump(config, sort_keys=False))
    return path


# --- the nodes ------------------------------------------------------------------------------


def host_settings(paths: LabPaths) -> HostSettings:
    return HostSettings(paths.root / "host-settings.json")


def cni_directories(paths: LabPaths, node: NodeRecord) -> tuple[Path, Path]:
    """srv6-cni (the launcher form: the node's Python runs the shim) and Debian's
    loopback and portmap in the node's plugin directory, and its conflist: srv6-cni
    naming the node's agent, then portmap for the pods' hostPorts (containerd hands it
    their `portMappings`; it DNATs the node's address and port to the pod in the node's
    own namespace)."""
    where = paths.node_dir(node.name)
    bin_dir, conf_dir = where / "cni-bin", where / "cni-conf"
    install_cni(bin_dir=str(bin_dir), lib_dir=str(where / "cni-lib"))
    for plugin in DEBIAN_PLUGINS:
        if not (bin_dir / plugin.name).exists():
            (bin_dir / plugin.name).symlink_to(plugin)
    conf_dir.mkdir(parents=True, exist_ok=True)
    conflist = {
        "cniVersion": "1.0.0",
        "cniVersions": ["1.0.0", "1.1.0"],
        "name": "srv6",
        "plugins": [
            {"type": "srv6-cni", "agentSocket": node.cni_socket},
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }
    (conf_dir / "10-srv6.conflist").write_text(json.dumps(conflist, indent=1) + "\n")
    return bin_dir, conf_dir


def kubelet_node(ctx: LabContext, plane: ControlPlane, node: NodeRecord) -> KubeletNode:
    assert ctx.state.options.kubernetes is not None
    directory = Path(ctx.state.options.kubernetes)
    binaries = plane.binaries  # found once, by the control plane
    bin_dir, conf_dir = cni_directories(ctx.paths, node)
    spec = NodeSpec(
        name=node.name,
        cgroup=node.netns,  # the lab's prefix keeps it apart from another lab's n1
        address=node.internal_ipv6,
        directory=str(ctx.paths.node_dir(node.name) / "kubelet-node"),
        kubelet=str(binaries.path("kubelet")),
        containerd=str(binaries.path("containerd")),
        ctr=str(binaries.path("ctr")),
        kubeconfig=str(plane.add_node(node.name)),
        client_ca=str(plane.pki / "ca.crt"),
        cni_bin_dir=str(bin_dir),
        cni_conf_dir=str(conf_dir),
        images=tuple(
            str(directory / "images" / i)
            for i in (*IMAGES, *OPTIONAL_IMAGES)
            if (directory / "images" / i).is_file()
        ),
        cluster_dns=tuple(str(a) for a in [dns_address(ctx.state)] if a is not None),
        other_ips=(node.internal_ipv4,) if node.internal_ipv4 else (),
    )
    return KubeletNode(spec, node.netns, ctx.paths.root)


def wait_node_ready(plane: ControlPlane, kubelet: KubeletNode, timeout: float) -> None:
    name = kubelet.spec.name
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not kubelet.alive():
            raise NodeFailed(f"node {name} exited:\n{kubelet.log_tail()}")
        try:
            found = plane.get(f"/api/v1/nodes/{name}")
        except urllib.error.HTTPError:
            found = {}
        assert isinstance(found, dict)
        conditions = found.get("status", {}).get("conditions", [])
        if any(c["type"] == "Ready" and c["status"] == "True" for c in conditions):
            return
        time.sleep(0.5)
    raise NodeFailed(f"the Node {name} was not Ready within {timeout:.0f} s")


def build_nodes(ctx: LabContext, claim: Callable[[str], None]) -> ControlPlane:
    """The control plane, then each node's containerd, agent and kubelet, each step
    waited for on every node before the next; `claim(kubeconfig)` claims the node IDs
    (in order, as the plain lab does) once the API server serves. Returns the control
    plane."""
    state, paths, steps = ctx.state, ctx.paths, ctx.steps
    with steps.step("control plane, srv6ctl's RBAC, the nodes' management network"):
        control_plane_network(state)
        plane = start_control_plane(ctx)
    dns = dns_address(state)
    if dns is not None:
        with steps.step("cluster DNS: CoreDNS, the kube-dns Service"):
            start_cluster_dns(ctx, plane, dns)
    with steps.step("load balancer: a controller for LoadBalancer Services, the probe routing"):
        try:
            load_balancer.start(plane, paths, state)
        finally:
            state.control_plane = list(plane.records)
            ctx.save()
    with steps.step("node IDs claimed, the agents' credentials"):
        agent_kubeconfig(plane, paths.agent_kubeconfig)
        admin = str(plane.kubeconfig("admin"))
        run_in_netns(netns.netns_path(plane.netns), lambda: claim(admin))
    kubelets = {node.name: kubelet_node(ctx, plane, node) for node in state.nodes}
    with steps.step(f"{len(state.nodes)} nodes: containerd with srv6-cni, images imported"):
        host_settings(paths).apply()
        for node in state.nodes:
            kubelets[node.name].start()
            node.kubelet = kubelets[node.name].record
            ctx.save()
        in_parallel(lambda node: kubelets[node.name].wait_ready(), state.nodes)
    with steps.step(f"{len(state.nodes)} agents (Kubernetes source and store) ready"):
        for node in state.nodes:
            node.agent = start_agent(ctx, node)
        ctx.save()
        in_parallel(lambda node: agent_ready(ctx, node), state.nodes)
    with steps.step(f"{len(state.nodes)} kubelets started, every Node Ready"):
        for kubelet in kubelets.values():
            kubelet.start_kubelet()
        in_parallel(
            lambda node: wait_node_ready(plane, kubelets[node.name], NODE_READY_TIMEOUT),
            state.nodes,
        )
    return plane


def remove_nodes(paths: LabPaths, prefix: str) -> None:
    """After the lab's processes are stopped: what is left in its nodes' cgroups (the
    pods), the cgroups, then the host's settings put back (after every node: they share
    them)."""
    for cgroups in leftover_cgroups(f"{prefix}-"):
        cgroups.remove()
    host_settings(paths).restore()


__all__ = [
    "AGENT_NAMESPACE",
    "CONTROL_PLANE_ADDRESS",
    "agent_kubeconfig",
    "build_nodes",
    "check",
    "control_plane",
    "control_plane_network",
    "kubelet_node",
    "remove_nodes",
    "start_control_plane",
    "wait_node_ready",
]
