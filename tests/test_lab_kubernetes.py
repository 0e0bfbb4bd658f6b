"""The lab on real Kubernetes (srv6ctl/lab/kubernetes.py): finding the binaries a user
gives, and a real control plane (etcd, kube-apiserver, kube-controller-manager,
kube-scheduler) in a network namespace wherever `SRV6CTL_KUBERNETES` names a directory of
Kubernetes binaries (README, "A lab on real Kubernetes"); without one, that test skips
saying so."""

from __future__ import annotations

import ipaddress
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from srv6ctl.lab import processes
from srv6ctl.lab.kubernetes import (
    COMPONENTS,
    ControlPlane,
    KubernetesUnavailable,
    find_binaries,
    go_build_version,
)
from tests.support.netns import NetnsFactory

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
    for tool in ("etcd", "containerd", "runc", "openssl"):
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
    for tool in ("etcd", "containerd", "runc", "openssl"):
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
