"""The lab on real Kubernetes (srv6ctl/lab/kubernetes.py): finding the binaries a user
gives, and a real control plane (etcd, kube-apiserver, kube-controller-manager,
kube-scheduler) in a network namespace wherever `SRV6CTL_KUBERNETES` names a directory of
Kubernetes binaries (README, "A lab on real Kubernetes"); without one, that test skips
saying so."""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import json
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from scapy.layers.dns import DNS, DNSQR

from srv6ctl.dataplane.nsenter import run_in_netns
from srv6ctl.lab import cluster_dns, e2e, kubernetes_lab, load_balancer, processes
from srv6ctl.lab.kubelet_node import (
    BIND_MOUNTS,
    KUBELET_KERNEL_DEFAULTS,
    HostSettings,
    KubeletNode,
    NodeCgroups,
    NodeSpec,
    image_names,
    leftover_cgroups,
)
from srv6ctl.lab.kubernetes import (
    COMPONENTS,
    ControlPlane,
    KubernetesUnavailable,
    find_binaries,
    go_build_version,
)
from srv6ctl.lab.requirements import kernel_problem
from srv6ctl.lab.shape import PLAN_V6
from srv6ctl.lab.state import LabPaths
from srv6ctl.lab.vpp import BIN_ENV as VPP_BIN_ENV
from tests.support.netns import NetnsFactory, require_netns
from tests.test_lab import LabRun, verify
from tests.test_vpp_integration import _why_no_vpp

BINARIES_ENV = "SRV6CTL_KUBERNETES"
GO_PLUGIN = Path("/usr/lib/cni/ptp")  # Debian's containernetworking-plugins: a Go binary


def _executable(path: Path, content: bytes = b"#!/bin/sh\nexit 0\n") -> Path:
    path.write_bytes(content)
    path.chmod(0o755)
    return path


def _go_binary(path: Path, version: str) -> Path:
    """A file carrying Go's build info header as Go 1.18+ writes it (flag 2: the version
    inline, length-prefixed), for a toolchain this machine does not have."""
    header = b"\xff Go buildinf:" + bytes([8, 2]) + bytes(16)
    return _executable(
        path, b"\x7fELF" + bytes(100) + header + bytes([len(version)]) + version.encode()
    )


def test_missing_components_and_tools_are_named_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _executable(tmp_path / "kube-apiserver")
    (tmp_path / "kubelet").write_text("not executable")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(KubernetesUnavailable) as refused:
        find_binaries(tmp_path)
    message = str(refused.value)
    assert "\n" not in message
    for name in ("kube-controller-manager", "kube-scheduler", "kubelet"):
        assert f"{tmp_path}/{name}" in message
    assert f"{tmp_path}/kube-apiserver" not in message
    for tool in ("etcd", "containerd", "ctr", "runc", "openssl"):
        assert f"{tool} (not on PATH)" in message


@pytest.mark.skipif(not GO_PLUGIN.exists(), reason="needs Debian's containernetworking-plugins")
def test_the_go_version_is_read_from_a_real_binary() -> None:
    # Debian records the toolchain a package was built with: golang-1.19 (= 1.19.8-2).
    built_using = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Built-Using}", "containernetworking-plugins"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    found = re.search(r"golang-1\.\d+ \(= (1\.\d+\.\d+)", built_using)
    assert found is not None, built_using
    assert go_build_version(GO_PLUGIN) == f"go{found.group(1)}"
    assert go_build_version(Path("/bin/sh")) is None  # not a Go binary


def test_a_kube_apiserver_built_with_go_1_27_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tools = tmp_path / "tools"
    tools.mkdir()
    for tool in ("etcd", "containerd", "ctr", "runc", "openssl"):
        _executable(tools / tool)
    monkeypatch.setenv("PATH", str(tools))
    kube = tmp_path / "kube"
    kube.mkdir()
    for name in COMPONENTS:
        _go_binary(kube / name, "go1.26.6")
    assert find_binaries(kube).path("containerd") == tools / "containerd"
    _go_binary(kube / "kube-apiserver", "go1.27.3")
    with pytest.raises(KubernetesUnavailable, match=r"built with go1\.27\.3.*Go 1\.26"):
        find_binaries(kube)


def _binaries_or_skip() -> Path:
    given = os.environ.get(BINARIES_ENV)
    if not given:
        pytest.skip(
            f"no Kubernetes binaries: set {BINARIES_ENV} to a directory holding "
            f"{', '.join(COMPONENTS)} (README, 'A lab on real Kubernetes')"
        )
    return Path(given)


def test_a_real_control_plane_serves_in_a_namespace(
    netns_factory: NetnsFactory, tmp_path: Path
) -> None:
    """etcd, kube-apiserver, kube-controller-manager and kube-scheduler in one namespace:
    the API server answers as the admin, the controller manager does its work (the
    `default` ServiceAccount), a kubelet's credentials are authorized as its Node, and
    nothing of it outlives `stop`."""
    binaries = find_binaries(_binaries_or_skip())
    host_paths = [Path("/usr/libexec/kubernetes"), Path("/var/lib/kubelet")]
    existing = {p for p in host_paths if p.exists()}
    node = netns_factory()
    address = ipaddress.IPv6Address("fd00:5e7::1")
    node.ip("link", "set", "lo", "up")
    node.ip("addr", "add", f"{address}/128", "dev", "lo")
    lab = tmp_path / "lab"
    plane = ControlPlane(
        binaries,
        node.name,
        address,
        [ipaddress.ip_network("fd00:96::/108"), ipaddress.ip_network("10.96.0.0/16")],
        tmp_path / "control-plane",
        lab,
    )
    try:
        plane.start()
        version = plane.get("/version")
        assert isinstance(version, dict) and str(version["gitVersion"]).startswith("v1.")
        deadline = time.monotonic() + 60
        accounts: object = {}
        while time.monotonic() < deadline:
            accounts = plane.get("/api/v1/namespaces/default/serviceaccounts")
            if isinstance(accounts, dict) and accounts.get("items"):
                break
            time.sleep(0.5)
        assert isinstance(accounts, dict)
        assert [a["metadata"]["name"] for a in accounts["items"]] == ["default"]
        plane.add_node("n1")
        # As kubelet asks since Kubernetes 1.32 (the Node authorizer lets a node read only
        # its own Node object: AuthorizeNodeWithSelectors).
        nodes = plane.get("/api/v1/nodes?fieldSelector=metadata.name%3Dn1", user="node:n1")
        assert isinstance(nodes, dict) and nodes["items"] == []
        service = plane.get("/api/v1/namespaces/default/services/kubernetes")
        assert isinstance(service, dict)
        # The first CIDR's family is the cluster's primary one: the `kubernetes` Service
        # has its first address (single-stack, as upstream makes it).
        assert service["spec"]["clusterIPs"] == ["fd00:96::1"]
    finally:
        plane.stop()
    assert list(processes.lab_processes(lab)) == []
    assert {p for p in host_paths if p.exists()} == existing  # nothing made on the host


IMAGES_ENV = "SRV6CTL_KUBERNETES_IMAGES"
CNI_PLUGINS = Path("/usr/lib/cni")  # Debian's reference plugins: ptp, host-local, loopback


def _images_or_skip() -> Path:
    """`SRV6CTL_KUBERNETES_IMAGES`, else the binaries' `images/` (as `lab up` reads them)."""
    given = os.environ.get(IMAGES_ENV)
    beside = _binaries_or_skip() / "images"
    if given:
        return Path(given)
    if not (beside / "pause.tar").is_file():
        pytest.skip(
            f"no images: set {IMAGES_ENV} to a directory holding pause.tar and agnhost.tar, "
            f"or put them in {beside} (README, 'A lab on real Kubernetes')"
        )
    return beside


def _sysctls() -> dict[str, str]:
    return {
        key: Path("/proc/sys", key.replace(".", "/")).read_text().strip()
        for key in KUBELET_KERNEL_DEFAULTS
    }


def _http_get(netns: str, url: str) -> str | None:
    """`url`'s body fetched from inside `netns`, or None while it does not answer."""

    def fetch() -> str | None:
        try:
            with urllib.request.urlopen(url, timeout=3) as answer:
                return str(answer.read().decode())
        except OSError:
            return None

    return run_in_netns(f"/run/netns/{netns}", fetch)


def _wait_for(what: str, check: Callable[[], object], timeout: float) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.5)
    raise AssertionError(f"{what} not within {timeout:.0f} s")


def test_a_kubelet_node_runs_a_pod_and_leaves_nothing_behind(
    netns_factory: NetnsFactory, tmp_path: Path
) -> None:
    """A real kubelet and containerd in a namespace register their Node and run a pod
    through CNI (Debian's ptp here: this test is about the node, not srv6ctl); the pod's
    token volume is filled (kubelet and containerd share a mount namespace) and its log
    comes back through the API server (kubelet's API, webhook-authorized). Stopped,
    nothing is left: processes, cgroups, mounts, host directories, kernel settings."""
    binaries = find_binaries(_binaries_or_skip())
    images = _images_or_skip()
    (agnhost,) = [n for n in image_names(images / "agnhost.tar") if "agnhost" in n][:1]
    node = netns_factory()
    address = ipaddress.IPv6Address("fd00:5e7::1")
    node.ip("link", "set", "lo", "up")
    node.ip("addr", "add", f"{address}/128", "dev", "lo", "nodad")
    lab = tmp_path / "lab"
    plane = ControlPlane(
        binaries, node.name, address, [ipaddress.ip_network("fd00:96::/108")],
        tmp_path / "control-plane", lab,
    )  # fmt: skip
    conf = tmp_path / "cni"
    conf.mkdir()
    (conf / "10-lab.conflist").write_text(
        json.dumps(
            {
                "cniVersion": "1.0.0",
                "name": "lab",
                "plugins": [
                    {
                        "type": "ptp",
                        "ipam": {
                            "type": "host-local",
                            "ranges": [[{"subnet": "10.244.7.0/24"}]],
                            "dataDir": str(tmp_path / "ipam"),
                        },
                    }
                ],
            }
        )
    )
    settings_before, hostname = _sysctls(), os.uname().nodename
    host_paths = {Path(target) for _, target in BIND_MOUNTS}
    existing = {p for p in host_paths if p.exists()}
    host = HostSettings(tmp_path / "host-settings.json")
    kubelet: KubeletNode | None = None
    try:
        plane.start()
        host.apply()
        spec = NodeSpec(
            name=node.name,
            cgroup=node.name,
            address=str(address),
            directory=str(tmp_path / "node"),
            kubelet=str(binaries.path("kubelet")),
            containerd=str(binaries.path("containerd")),
            ctr=str(shutil.which("ctr")),
            kubeconfig=str(plane.add_node(node.name)),
            client_ca=str(plane.pki / "ca.crt"),
            cni_bin_dir=str(CNI_PLUGINS),
            cni_conf_dir=str(conf),
            images=(str(images / "pause.tar"), str(images / "agnhost.tar")),
        )
        kubelet = KubeletNode(spec, node.name, lab)
        kubelet.start()
        kubelet.wait_ready()
        kubelet.start_kubelet()

        kubernetes_lab.wait_node_ready(plane, kubelet, 180)
        token = "/var/run/secrets/kubernetes.io/serviceaccount/token"
        plane.send(
            "POST",
            "/api/v1/namespaces/default/pods",
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "p1"},
                "spec": {
                    "nodeName": node.name,
                    "terminationGracePeriodSeconds": 1,
                    "containers": [
                        {
                            "name": "c",
                            "image": agnhost,
                            "command": [
                                "/bin/sh",
                                "-c",
                                f"wc -c {token}; exec /agnhost netexec --http-port=8080",
                            ],
                        }
                    ],
                },
            },
        )

        def running() -> dict[str, object] | None:
            pod = plane.get("/api/v1/namespaces/default/pods/p1")
            assert isinstance(pod, dict)
            status = pod["status"]
            return status if status.get("phase") == "Running" and status.get("podIP") else None

        status = _wait_for("the pod Running", running, 180)
        assert isinstance(status, dict)
        assert ipaddress.ip_address(str(status["podIP"])) in ipaddress.ip_network("10.244.7.0/24")
        url = f"http://{status['podIP']}:8080/hostname"  # wired by CNI, reached from the node
        assert _wait_for("the pod's server", lambda: _http_get(node.name, url), 60) == "p1"
        log = plane.text("/api/v1/namespaces/default/pods/p1/log")
        size = int(log.split()[0])
        assert size > 100, log  # a JWT: the projected volume is filled
        plane.send("DELETE", "/api/v1/namespaces/default/pods/p1", {})
    finally:
        if kubelet is not None:
            kubelet.stop()
        plane.stop()
        host.restore()
    assert list(processes.lab_processes(lab)) == []
    assert not any(p.exists() for p in NodeCgroups(node.name).paths())
    assert _sysctls() == settings_before
    assert {p for p in host_paths if p.exists()} == existing
    assert str(tmp_path) not in Path("/proc/self/mountinfo").read_text()
    assert os.uname().nodename == hostname


def _ask_dns(
    netns: str, server: ipaddress.IPv6Address, name: str, qtype: str, *, tcp: bool = False
) -> list[str]:
    """The answers (rdata, as text) of a real query from inside `netns` (scapy builds
    and parses the messages)."""

    def query() -> bytes:
        wire = bytes(DNS(id=7, rd=1, qd=DNSQR(qname=name, qtype=qtype)))
        kind = socket.SOCK_STREAM if tcp else socket.SOCK_DGRAM
        with socket.socket(socket.AF_INET6, kind) as s:
            s.settimeout(5)
            s.connect((str(server), 53))
            if not tcp:
                s.send(wire)
                return s.recv(4096)
            s.sendall(len(wire).to_bytes(2, "big") + wire)
            size = int.from_bytes(s.recv(2), "big")
            answer = b""
            while len(answer) < size:
                answer += s.recv(size - len(answer))
            return answer

    reply = DNS(run_in_netns(f"/run/netns/{netns}", query))
    assert reply.id == 7 and reply.qr == 1
    found = []
    for i in range(reply.ancount):
        rdata = reply.an[i].rdata
        found.append(rdata.decode() if isinstance(rdata, bytes) else str(rdata))
    return found


def test_the_cluster_dns_answers_from_the_api_server(
    netns_factory: NetnsFactory, tmp_path: Path
) -> None:
    """DIR/coredns beside a real control plane (`cluster_dns.start`): the `kube-dns`
    Service at the service CIDR's tenth address and its EndpointSlice to CoreDNS's own
    address; CoreDNS answers AAAA and PTR queries, over UDP and TCP, for Services the API
    server has, one made after it started too; its credentials read Services but no
    Secrets; nothing outlives `stop`."""
    directory = _binaries_or_skip()
    coredns = cluster_dns.binary(directory)
    if coredns is None:
        pytest.skip(f"no {directory}/coredns (README, 'A lab on real Kubernetes')")
    node = netns_factory()
    address = ipaddress.IPv6Address("fd00:5e7::1")
    node.ip("link", "set", "lo", "up")
    node.ip("addr", "add", f"{address}/128", "dev", "lo")
    lab = tmp_path / "lab"
    cidr = ipaddress.ip_network("fd00:96::/108")
    plane = ControlPlane(
        find_binaries(directory), node.name, address, [cidr], tmp_path / "control-plane", lab
    )
    dns_ip = cluster_dns.service_address(cidr)
    assert str(dns_ip) == "fd00:96::a"
    assert isinstance(dns_ip, ipaddress.IPv6Address)
    try:
        plane.start()
        cluster_dns.start(plane, coredns, dns_ip, address)
        ask = functools.partial(_ask_dns, node.name, address)
        kube_dns = plane.get("/api/v1/namespaces/kube-system/services/kube-dns")
        assert isinstance(kube_dns, dict) and kube_dns["spec"]["clusterIPs"] == [str(dns_ip)]
        assert ask("kubernetes.default.svc.cluster.local", "AAAA") == ["fd00:96::1"]
        assert ask("kube-dns.kube-system.svc.cluster.local", "AAAA", tcp=True) == [str(dns_ip)]
        reverse = ipaddress.IPv6Address("fd00:96::1").reverse_pointer
        assert ask(reverse, "PTR") == ["kubernetes.default.svc.cluster.local."]
        web = {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "web"},
            "spec": {"ports": [{"port": 80}]},
        }
        made = plane.send("POST", "/api/v1/namespaces/default/services", web)
        assert isinstance(made, dict)
        name = "web.default.svc.cluster.local"
        answer = _wait_for(name, lambda: ask(name, "AAAA") or None, 30)
        assert answer == [made["spec"]["clusterIP"]]
        with pytest.raises(urllib.error.HTTPError) as refused:
            plane.get("/api/v1/namespaces/kube-system/secrets", user="coredns")
        assert refused.value.code == 403
        assert isinstance(plane.get("/api/v1/services", user="coredns"), dict)
    finally:
        plane.stop()
    assert list(processes.lab_processes(lab)) == []


# --- srv6ctl lab up --kubernetes ------------------------------------------------------------


def _lab_dataplane_or_skip() -> str:
    if os.environ.get(VPP_BIN_ENV) and _why_no_vpp() is None:
        return "vpp"
    problem = kernel_problem()
    if problem is None:
        return "kernel"
    pytest.skip(f"no dataplane for the lab here: {problem}; and no VPP ({VPP_BIN_ENV})")


def _pod(
    name: str,
    node: str,
    image: str,
    command: list[str],
    ports: tuple[dict[str, object], ...] = (),
    **spec: object,
) -> object:
    container = {"name": "c", "image": image, "command": command, "ports": list(ports)}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "nodeName": node,
            "terminationGracePeriodSeconds": 1,
            "containers": [container],
            **spec,
        },
    }


def _http_hostname(address: str, port: int) -> str:
    """GET /hostname from here (agnhost netexec's answer: its pod's name)."""
    with socket.create_connection((address, port), timeout=5) as s:
        s.sendall(b"GET /hostname HTTP/1.0\r\n\r\n")
        answer = b""
        while chunk := s.recv(4096):
            answer += chunk
    return answer.decode().split("\r\n\r\n", 1)[-1]


def _load_balancer_serves(run: LabRun, plane: ControlPlane) -> None:
    """hello/hello made a LoadBalancer: the lab's controller gives it an address from its
    pool, the control plane's namespace (where the e2e suite runs) reaches the server
    through it via the probe; deleted, the Service goes (its finalizer taken off) and
    so does the probe's route."""
    path = "/api/v1/namespaces/hello/services/hello"
    plane.send("PATCH", path, {"spec": {"type": "LoadBalancer"}})

    def ingress() -> str | None:
        service = plane.get(path)
        assert isinstance(service, dict)
        found = (service.get("status") or {}).get("loadBalancer", {}).get("ingress") or []
        return str(found[0]["ip"]) if found else None

    address = str(_wait_for("the LoadBalancer's address", ingress, 30))
    assert ipaddress.ip_address(address) in load_balancer.POOL_V6
    service = plane.get(path)
    assert isinstance(service, dict)
    assert load_balancer.FINALIZER in service["metadata"]["finalizers"]
    fetch = functools.partial(_http_hostname, address, 80)
    assert run_in_netns(f"/run/netns/{plane.netns}", fetch) == "server"
    plane.send("DELETE", path, {})

    def gone() -> bool:
        try:
            plane.get(path)
        except urllib.error.HTTPError as err:
            return err.code == 404
        return False

    _wait_for("the LoadBalancer Service deleted", gone, 30)
    routes = subprocess.run(
        ["ip", "-n", run.state.probe_netns, "-6", "route", "show", f"{address}/128"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert routes == ""


@contextlib.contextmanager
def _kubernetes_lab(*up_args: str) -> Iterator[LabRun]:
    """A lab brought up with `up_args`; after the block, `lab down`, and then nothing of
    it may be left: processes, namespaces, state directory, cgroups."""
    run = LabRun.new("k")
    try:
        run.up(*up_args)
        yield run
    finally:
        run.lab("down", "--prefix", run.prefix, check=False)
        left = run.leftovers()
        shutil.rmtree(run.state_dir, ignore_errors=True)
    assert left == {"namespaces": [], "processes": [], "state dir": False}, left
    assert leftover_cgroups(run.prefix) == []


@pytest.mark.timeout(1200)  # verify's convergence adds and deletes 38 pods through kubelet
def test_lab_up_on_kubernetes_runs_pods_made_by_kubelet_over_srv6() -> None:
    """`lab up --kubernetes`: two real nodes whose pods kubelet makes through containerd
    and srv6-cni; the agents run as deploy/'s ServiceAccount (the store's ConfigMaps are
    written through its Role); a pod on n1 fetches from a pod on n2 by its IPv6 address,
    through a Service's ClusterIP (its EndpointSlice made by the real controller manager;
    no kube-proxy) and, with DIR/coredns, by the Service's name; it reaches the API server
    through the `kubernetes` Service (an endpoint outside the cluster); its log comes back
    through the API server (kube-apiserver → kubelet over the management network);
    `srv6ctl verify` passes on the lab's own pods and Services; `lab down` leaves nothing,
    on the host either."""
    directory = _binaries_or_skip()
    dataplane = _lab_dataplane_or_skip()
    dns = cluster_dns.binary(directory) is not None
    images = directory / "images"
    (agnhost,) = [n for n in image_names(images / "agnhost.tar") if "agnhost" in n][:1]
    settings_before = _sysctls()
    host_paths = {Path(target) for _, target in BIND_MOUNTS}
    existing = {p for p in host_paths if p.exists()}
    with _kubernetes_lab(
        "--kubernetes", str(directory), "--dataplane", dataplane, "--nodes", "2"
    ) as run:
        state = run.state
        plane = kubernetes_lab.control_plane(LabPaths(run.state_dir), state)
        nodes = plane.get("/api/v1/nodes")
        assert isinstance(nodes, dict)
        assert sorted(n["metadata"]["name"] for n in nodes["items"]) == ["n1", "n2"]
        maps = plane.get("/api/v1/namespaces/srv6ctl/configmaps?labelSelector=srv6ctl.io/ipam")
        assert isinstance(maps, dict) and maps["items"], maps  # the agents' store
        # In a namespace of their own: the lab's pods and policies are in `default`.
        namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "hello"}}
        plane.send("POST", "/api/v1/namespaces", namespace)
        # With a hostPort: portmap, chained after srv6-cni, DNATs the node's address.
        host_port = {"containerPort": 8080, "hostPort": 18080, "protocol": "TCP"}
        server = _pod(
            "server", "n2", agnhost, ["/agnhost", "netexec", "--http-port=8080"], (host_port,)
        )
        plane.send("POST", "/api/v1/namespaces/hello/pods", server)

        def server_ip() -> str | None:
            pod = plane.get("/api/v1/namespaces/hello/pods/server")
            assert isinstance(pod, dict)
            status = pod["status"]
            ready = status.get("phase") == "Running" and status.get("podIP")
            return str(status["podIP"]) if ready else None

        address = str(_wait_for("the server pod Running", server_ip, 180))
        assert ipaddress.ip_address(address) in ipaddress.ip_network(PLAN_V6["podCIDRv6"])
        n2 = state.node("n2")
        hostname = functools.partial(_http_hostname, n2.internal_ipv6, 18080)
        # From the node's own stack (a host-network client, as the upstream HostPort test).
        assert run_in_netns(f"/run/netns/{n2.netns}", hostname) == "server"
        web = {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "hello"},
            "spec": {"selector": {"app": "server"}, "ports": [{"port": 80, "targetPort": 8080}]},
        }
        answer = plane.send("POST", "/api/v1/namespaces/hello/services", web)
        assert isinstance(answer, dict)
        cluster_ip = answer["spec"]["clusterIP"]
        # busybox's nc speaks HTTP well enough; the image's static wget crashes resolving.
        get = "printf 'GET /hostname HTTP/1.0\\r\\n\\r\\n' | nc -w 5 {} | tail -n 1"
        # With DIR/coredns, the Service by its short name too: CoreDNS (beside the control
        # plane, reached through kube-dns's ClusterIP), kubelet's resolv.conf search.
        by_name = f"c=$({get.format('hello 80')}); " if dns else "c=server; "
        script = (
            "for i in $(seq 10); do "
            f"a=$({get.format(f'{address} 8080')}); b=$({get.format(f'{cluster_ip} 80')}); "
            f"{by_name}"
            # The API server through the `kubernetes` Service: an endpoint outside the
            # cluster, reached with the pod's own address.
            'if [ "$a$b$c" = serverserverserver ] && '
            "/agnhost connect [fd00:96::1]:443 --timeout 5s; "
            'then echo "by address: $a, by ClusterIP: $b"; exit 0; fi; sleep 2; done; exit 1'
        )
        client = _pod("client", "n1", agnhost, ["/bin/sh", "-c", script], restartPolicy="Never")
        plane.send("POST", "/api/v1/namespaces/hello/pods", client)

        def finished() -> str | None:
            pod = plane.get("/api/v1/namespaces/hello/pods/client")
            assert isinstance(pod, dict)
            phase = pod["status"].get("phase")
            return str(phase) if phase in ("Succeeded", "Failed") else None

        outcome = _wait_for("the client pod finished", finished, 180)
        log = plane.text("/api/v1/namespaces/hello/pods/client/log").strip()
        assert (outcome, log) == ("Succeeded", "by address: server, by ClusterIP: server")
        _load_balancer_serves(run, plane)

        # The lab's own pods are kubelet's too, and verify runs on it as on the plain lab:
        # every group (crafted SRv6 packets, flows, the external client, convergence with
        # pods kubelet adds and deletes, NetworkPolicy in the API server) passes.
        pods = plane.get("/api/v1/namespaces/default/pods?labelSelector=app%3Dweb")
        assert isinstance(pods, dict)
        assert sorted(p["metadata"]["name"] for p in pods["items"]) == sorted(
            p.name for p in state.backends("web")
        )
        result = verify(run)
        assert result["failed"] == [], result["failed"]
        groups = {c["group"] for c in result["checks"]}
        assert groups == {"conformance", "connectivity", "external", "convergence", "policy"}
    assert _sysctls() == settings_before
    assert {p for p in host_paths if p.exists()} == existing


@pytest.mark.timeout(1200)
def test_a_dual_stack_kubernetes_lab_passes_verify() -> None:
    """`lab up --kubernetes --dual-stack`: kubelet reports both InternalIPs, the lab's
    Services are dual-stack API objects, and every verify group passes in both families
    (IPv4 over SRv6 too); nothing is left."""
    directory = _binaries_or_skip()
    dataplane = _lab_dataplane_or_skip()
    up = ("--kubernetes", str(directory), "--dataplane", dataplane, "--dual-stack")
    with _kubernetes_lab(*up) as run:
        plane = kubernetes_lab.control_plane(LabPaths(run.state_dir), run.state)
        node = plane.get("/api/v1/nodes/n1")
        assert isinstance(node, dict)
        internal = [a["address"] for a in node["status"]["addresses"] if a["type"] == "InternalIP"]
        assert [ipaddress.ip_address(a).version for a in internal] == [6, 4]
        web = plane.get("/api/v1/namespaces/default/services/web")
        assert isinstance(web, dict) and web["spec"]["ipFamilies"] == ["IPv6", "IPv4"]
        result = verify(run)
        assert result["failed"] == [], result["failed"]
        assert any("v4" in c["name"] or "IPv4" in c["name"] for c in result["checks"])


def test_lab_up_kubernetes_without_the_binaries_refuses_and_makes_nothing(
    tmp_path: Path,
) -> None:
    require_netns()
    run = LabRun.new("k")
    done = run.up("--kubernetes", str(tmp_path), check=False)
    said = " ".join((done.stdout + done.stderr).split())  # rich may wrap the line
    assert done.returncode == 1, said
    assert f"--kubernetes {tmp_path}: missing {tmp_path}/kube-apiserver" in said
    assert "Traceback" not in said
    assert run.leftovers() == {"namespaces": [], "processes": [], "state dir": False}


def test_e2e_summary_reads_what_the_suite_ran(tmp_path: Path) -> None:
    """`lab e2e`'s summary of a real report: a dry run of the default selection (no
    cluster needed) counts as many specs as e2e.test says it ran, all passed."""
    e2e_test = _binaries_or_skip() / "e2e.test"
    if not e2e_test.is_file():
        pytest.skip(f"no {e2e_test}")
    done = subprocess.run(
        [
            str(e2e_test), "--provider=skeleton", f"--report-dir={tmp_path}",
            "--ginkgo.dry-run", "--ginkgo.no-color",
            f"--ginkgo.focus={e2e.DEFAULT_FOCUS}", f"--ginkgo.skip={e2e.DEFAULT_SKIP}",
        ],
        capture_output=True, text=True, check=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    ran = re.search(r"Ran (\d+) of (\d+) Specs", done.stdout)
    assert ran is not None, done.stdout[-500:]
    result = e2e.summary(tmp_path / "junit_01.xml")
    assert result.counts == {"passed": int(ran.group(1))}
    assert 0 < int(ran.group(1)) < int(ran.group(2))
    assert result.failed == () and result.skipped == ()


def test_e2e_runs_with_its_own_tmpdir_and_removes_it(tmp_path: Path) -> None:
    """What the suite leaves in its TMPDIR (a kubeconfig copy per spec, test-kuberc*)
    goes with the run: the suite gets a fresh directory of its own, gone afterwards."""
    paths = LabPaths(tmp_path)
    stale = e2e.scratch_dir(paths) / "test-kuberc-old"
    stale.mkdir(parents=True)
    script = (
        'test ! -e "$TMPDIR/test-kuberc-old" && mkdir "$TMPDIR/test-kuberc1" '
        '&& echo "$TMPDIR" > seen'
    )
    assert e2e.run(paths, ["sh", "-c", f"cd {tmp_path} && {script}"]) == 0
    assert (tmp_path / "seen").read_text().strip() == str(e2e.scratch_dir(paths))
    assert not e2e.scratch_dir(paths).exists()
    assert e2e.run(paths, ["sh", "-c", "exit 3"]) == 3
