"""srv6-cni through the real runtime library: libcni (Go) runs a .conflist with our plugin.

`tests/cni_driver` is a small Go program that calls libcni's AddNetworkList /
CheckNetworkList / DelNetworkList, as containerd and CRI-O do, so libcni parses our
results, caches them, and hands them back as prevResult. It is built offline with
Debian's golang-go and golang-github-appc-cni-dev (GOPATH mode), once per session.

Debian's libcni (1.1.2) speaks spec 1.0.0, so the conflist says 1.0.0; the chain puts the
reference `tuning` plugin after ours, so our result is also a real plugin's prevResult.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any, NoReturn

import pytest

from cni import protocol
from cni.wiring import host_ifname
from tests.test_cni_support import SRV6_CNI, Harness, ip, node_veths, ping

pytest_plugins = ["tests.test_cni_support"]
pytestmark = pytest.mark.netns

DRIVER_SOURCE = Path(__file__).parent / "cni_driver"
GOPATH_SYSTEM = "/usr/share/gocode"
LIBCNI = Path(GOPATH_SYSTEM, "src/github.com/containernetworking/cni/libcni")
REFERENCE_PLUGINS = "/usr/lib/cni"


def _unavailable(reason: str) -> NoReturn:
    # CI installs the toolchain: there a missing piece is a failure, not a skip.
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: the libcni tests must run)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def cni_driver(tmp_path_factory: pytest.TempPathFactory) -> str:
    go = shutil.which("go")
    if go is None:
        _unavailable("`go` is missing: apt-get install golang-go golang-github-appc-cni-dev")
    if not LIBCNI.is_dir():
        _unavailable(
            f"libcni source missing at {LIBCNI}: apt-get install golang-github-appc-cni-dev"
        )
    work = tmp_path_factory.mktemp("cni-driver")
    binary = work / "cni_driver"
    env = {
        **os.environ,
        "GO111MODULE": "off",  # Debian ships libcni as GOPATH source, with no module proxy
        "GOPATH": f"{work / 'gopath'}:{GOPATH_SYSTEM}",
        "GOCACHE": str(work / "gocache"),
        "GOFLAGS": "",
        "CGO_ENABLED": "0",
    }
    done = subprocess.run(
        [go, "build", "-o", str(binary), "."],
        cwd=DRIVER_SOURCE,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if done.returncode != 0:
        pytest.fail(f"building the libcni driver failed:\n{done.stderr}")
    return str(binary)


class Runtime:
    """libcni with a conflist, a result cache and plugin dirs: a container runtime in small."""

    def __init__(self, driver: str, harness: Harness, work: Path) -> None:
        self.driver = driver
        self.harness = harness
        self.cache = work / "cache"
        self.conflist = work / "srv6.conflist"
        self.conflist.write_text(
            json.dumps(
                {
                    "cniVersion": "1.0.0",
                    "name": harness.network,
                    "plugins": [
                        {"type": "srv6-cni", "agentSocket": harness.socket_path},
                        {"type": "tuning", "sysctl": {"net.core.somaxconn": "512"}},
                    ],
                }
            )
        )
        self.plugin_dirs = f"{Path(SRV6_CNI).parent}:{REFERENCE_PLUGINS}"

    def __call__(
        self, action: str, container_id: str, netns: str
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                self.driver,
                action,
                str(self.conflist),
                container_id,
                netns,
                "eth0",
                str(self.cache),
                self.plugin_dirs,
                f"K8S_POD_NAMESPACE=default;K8S_POD_NAME={container_id};IgnoreUnknown=1",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )


@pytest.fixture
def runtime(cni_driver: str, harness: Harness, tmp_path: Path) -> Runtime:
    if not Path(REFERENCE_PLUGINS, "tuning").exists():
        _unavailable("reference CNI plugins missing: apt-get install containernetworking-plugins")
    return Runtime(cni_driver, harness, tmp_path)


def _v6(result: dict[str, Any]) -> str:
    return next(str(i["address"]).split("/")[0] for i in result["ips"] if ":" in i["address"])


def test_libcni_add_check_del_of_a_conflist(runtime: Runtime, harness: Harness) -> None:
    pod_a, pod_b = harness.new_pod(), harness.new_pod()
    added = runtime("add", "ctr-a", pod_a)
    assert added.returncode == 0, added.stderr
    result = json.loads(added.stdout)
    assert result["cniVersion"] == "1.0.0"
    assert [i["name"] for i in result["interfaces"]] == [host_ifname("ctr-a", "eth0"), "eth0"]
    assert result["interfaces"][1]["sandbox"] == pod_a
    (allocation,) = harness.allocator.pods(harness.node)
    assert allocation.pod == "default/ctr-a"
    assert _v6(result) == str(allocation.addresses.ipv6)
    # tuning ran after us, on our interface, in the pod.
    somaxconn = subprocess.run(
        ["ip", "netns", "exec", os.path.basename(pod_a), "cat", "/proc/sys/net/core/somaxconn"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert somaxconn.stdout.strip() == "512"

    # libcni cached our result: that is what it hands back as prevResult on CHECK and DEL.
    cached = runtime("cached", "ctr-a", pod_a)
    assert cached.returncode == 0, cached.stderr
    assert json.loads(cached.stdout) == result

    other = runtime("add", "ctr-b", pod_b)
    assert other.returncode == 0, other.stderr
    assert ping(pod_a, _v6(json.loads(other.stdout)))

    checked = runtime("check", "ctr-a", pod_a)
    assert checked.returncode == 0, checked.stderr

    ip(pod_a, "-6", "addr", "del", f"{_v6(result)}/128", "dev", "eth0")
    broken = runtime("check", "ctr-a", pod_a)
    assert broken.returncode != 0
    error = json.loads(broken.stdout)  # libcni decoded our error object
    assert error["code"] == protocol.CHECK_FAILED and _v6(result) in error["details"]

    for container_id, netns in (("ctr-a", pod_a), ("ctr-b", pod_b)):
        deleted = runtime("del", container_id, netns)
        assert deleted.returncode == 0, deleted.stderr
    assert node_veths(harness.node_netns) == []
    assert harness.allocator.pods(harness.node) == []
    assert json.loads(runtime("cached", "ctr-a", pod_a).stdout) is None
    again = runtime("del", "ctr-a", pod_a)
    assert again.returncode == 0, again.stderr


def test_libcni_reports_our_error_codes(runtime: Runtime, harness: Harness) -> None:
    gone = "/run/netns/s6t-does-not-exist"
    failed = runtime("add", "ctr-x", gone)
    assert failed.returncode != 0
    # libcni decodes the plugin's error object; nothing got allocated or wired.
    assert json.loads(failed.stdout)["code"] == protocol.UNKNOWN_CONTAINER
    assert "container network namespace does not exist" in failed.stderr
    assert harness.allocator.pods(harness.node) == []
    assert node_veths(harness.node_netns) == []
