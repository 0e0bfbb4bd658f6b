"""The Kubernetes lab's cluster DNS: CoreDNS beside the control plane, where DIR has one.

Upstream tests (and people) reach Services by name, so a cluster without DNS fails most of
`[sig-network]`. kubeadm runs CoreDNS as a Deployment behind the `kube-system/kube-dns`
Service; the lab runs the same server, from `DIR/coredns` (built from source like the
Kubernetes binaries: README, "A lab on real Kubernetes"), as a process of the control
plane's namespace listening on the control plane's underlay address only, and makes the
rest as kubeadm does:

- a client certificate `srv6ctl-lab:coredns` bound to the ClusterRole `system:coredns`
  (kubeadm's: list and watch Services, EndpointSlices, Namespaces and Pods, nothing else);
- the Service `kube-system/kube-dns` at the service CIDR's tenth address (kubeadm's
  choice) with ports `dns` (UDP 53) and `dns-tcp` (TCP 53). It has no selector: its
  EndpointSlice, written here, names the control plane's underlay address, an endpoint
  outside the cluster, which pods reach as they reach the API server (README, "Endpoints
  outside the cluster");
- kubelet's `clusterDNS` is that ClusterIP, so every pod's resolv.conf names it.

CoreDNS's `kubernetes` plugin serves `cluster.local` and the reverse zones with kubeadm's
options (`pods insecure`: the `a-b-c-d.<ns>.pod` names upstream tests look up). Nothing is
forwarded: the lab has no upstream resolver, and a name outside the cluster gets SERVFAIL.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

from srv6ctl.dataplane.model import IPNetwork, IPv6Address
from srv6ctl.lab.kubernetes import ControlPlane

BINARY = "coredns"  # in DIR, optional: without it the lab has no cluster DNS
DOMAIN = "cluster.local"
USER = "srv6ctl-lab:coredns"
READY_PORT = 8181  # the `ready` plugin, on the namespace's loopback only
SERVICE_INDEX = 10  # kubeadm's kube-dns ClusterIP: the service CIDR's tenth address
MANAGED_BY = "srv6ctl-lab"


def binary(directory: Path) -> Path | None:
    """DIR's CoreDNS, or None where there is none (or it is not executable)."""
    found = directory / BINARY
    return found if found.is_file() and found.stat().st_mode & 0o111 else None


def service_address(service_cidr: IPNetwork) -> ipaddress.IPv4Address | IPv6Address:
    return service_cidr.network_address + SERVICE_INDEX


def corefile(listen: IPv6Address, kubeconfig: Path) -> str:
    return f"""\
.:53 {{
    bind {listen}
    errors
    ready [::1]:{READY_PORT}
    kubernetes {DOMAIN} in-addr.arpa ip6.arpa {{
        kubeconfig {kubeconfig} lab
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 30
    }}
    cache 30
    loadbalance
}}
"""


def manifests(cluster_ip: IPv6Address, listen: IPv6Address) -> list[dict[str, object]]:
    """RBAC as kubeadm's, the selector-less kube-dns Service and its EndpointSlice."""
    ports = [("dns", "UDP"), ("dns-tcp", "TCP")]
    labels = {"k8s-app": "kube-dns", "kubernetes.io/name": "CoreDNS"}
    return [
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": "system:coredns"},
            "rules": [
                {
                    "apiGroups": [""],
                    "resources": ["endpoints", "services", "pods", "namespaces"],
                    "verbs": ["list", "watch"],
                },
                {
                    "apiGroups": ["discovery.k8s.io"],
                    "resources": ["endpointslices"],
                    "verbs": ["list", "watch"],
                },
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "system:coredns"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "system:coredns",
            },
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": USER}],
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "kube-dns", "namespace": "kube-system", "labels": labels},
            "spec": {
                "clusterIP": str(cluster_ip),
                "ipFamilies": ["IPv6"],
                "ipFamilyPolicy": "SingleStack",
                "ports": [{"name": n, "protocol": p, "port": 53} for n, p in ports],
            },
        },
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": "kube-dns-control-plane",
                "namespace": "kube-system",
                "labels": {
                    "kubernetes.io/service-name": "kube-dns",
                    "endpointslice.kubernetes.io/managed-by": MANAGED_BY,
                },
            },
            "addressType": "IPv6",
            "endpoints": [{"addresses": [str(listen)], "conditions": {"ready": True}}],
            "ports": [{"name": n, "protocol": p, "port": 53} for n, p in ports],
        },
    ]


# Where each kind of `manifests` is made (all cluster-scoped or in kube-system).
_COLLECTIONS = {
    "ClusterRole": "/apis/rbac.authorization.k8s.io/v1/clusterroles",
    "ClusterRoleBinding": "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
    "Service": "/api/v1/namespaces/kube-system/services",
    "EndpointSlice": "/apis/discovery.k8s.io/v1/namespaces/kube-system/endpointslices",
}


def start(
    plane: ControlPlane,
    coredns: Path,
    cluster_ip: IPv6Address,
    listen: IPv6Address,
    timeout: float = 60.0,
) -> None:
    """The RBAC, Service and EndpointSlice (`manifests`), then CoreDNS in the control
    plane's namespace with its own credentials; returns once its `kubernetes` plugin has
    synced (the `ready` plugin answers)."""
    for manifest in manifests(cluster_ip, listen):
        plane.send("POST", _COLLECTIONS[str(manifest["kind"])], manifest)
    kubeconfig = plane.add_user("coredns", f"/CN={USER}")
    config = plane.directory / "Corefile"
    config.write_text(corefile(listen, kubeconfig))
    plane.spawn("coredns", [str(coredns), f"-conf={config}"])
    plane.wait_healthy("coredns", f"http://[::1]:{READY_PORT}/ready", timeout, tls=False)


__all__ = [
    "BINARY",
    "DOMAIN",
    "binary",
    "corefile",
    "manifests",
    "service_address",
    "start",
]
