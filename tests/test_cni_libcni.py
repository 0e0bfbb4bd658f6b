"""srv6-cni through the real runtime library: libcni (Go) runs the conflist we ship.

`tests/cni_driver` is a small Go program that calls libcni's AddNetworkList /
CheckNetworkList / DelNetworkList, as containerd and CRI-O do, so libcni parses our
results, caches them, and hands them back as prevResult. It is built offline with
Debian's golang-go and golang-github-appc-cni-dev (libcni 1.1.2, GOPATH mode), once per
session: the libcni of containerd 1.6/1.7 and of Debian's own CNI packages.

The conflist is deploy/base/cni/10-srv6.conflist byte for byte, put in place by the
DaemonSet's own `install-cni-config` script, and the plugin is the launcher
`srv6-cni install` writes, as on a node. The conflist names the agent's socket
`/run/srv6ctl/cni.sock`: the driver runs in a private mount namespace where that directory
is the test agent's, so nothing in the file is substituted and the host's /run is untouched.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from cni import protocol
from cni.install import install
from cni.wiring import host_ifname
from tests.support.cni import Harness, ip, node_veths, ping, unavailable

pytestmark = pytest.mark.netns

ROOT = Path(__file__).resolve().parent.parent
SHIPPED_CONFLIST = ROOT / "deploy" / "base" / "cni" / "10-srv6.conflist"
DAEMONSET = ROOT / "deploy" / "base" / "kubernetes" / "daemonset.yaml"
REFERENCE_PLUGINS = "/usr/lib/cni"

# Runs its arguments with /run/srv6ctl being $2 and /run/netns the host's (the pods'
# namespaces), in a mount namespace of its own. /run is not a mount point on every host,
# so a directory cannot simply be bound over /run/srv6ctl: a tmpfs takes /run's place.
# `-n`: util-linux would otherwise create /run/mount/utab on the host.
_PRIVATE_RUN = """
old_run=$1 agent_dir=$2
shift 2
mount -n --rbind /run "$old_run"
mount -n -t tmpfs -o mode=0755 srv6ctl-test-run /run
mkdir /run/netns /run/srv6ctl
mount -n --rbind "$old_run/netns" /run/netns
mount -n --bind "$agent_dir" /run/srv6ctl
exec "$@"
"""


def install_shipped_conflist(net_d: Path) -> Path:
    """The conflist as a node gets it: the DaemonSet's `install-cni-config` script copies
    the ConfigMap's file (made from SHIPPED_CONFLIST as it is, tests/test_deploy.py checks)."""
    spec = yaml.safe_load(DAEMONSET.read_text())["spec"]["template"]["spec"]
    (init,) = [c for c in spec["initContainers"] if c["name"] == "install-cni-config"]
    env = {e["name"]: e["value"] for e in init["env"]}
    net_d.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        init["command"],
        env={
            "PATH": os.environ["PATH"],
            "CNI_CONF_SOURCE": str(SHIPPED_CONFLIST),
            "CNI_CONF_DIR": str(net_d),
        },
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    installed = net_d / Path(env["CNI_CONF_SOURCE"]).name
    assert installed.read_bytes() == SHIPPED_CONFLIST.read_bytes()
    return installed


class Runtime:
    """libcni with a conflist, a result cache and plugin dirs: a container runtime in small."""

    def __init__(self, driver: str, harness: Harness, work: Path, conflist: Path) -> None:
        self.driver = driver
        self.conflist = conflist
        self.cache = work / "cache"
        self.old_run = work / "host-run"
        self.old_run.mkdir()
        self.agent_dir = str(Path(harness.socket_path).parent)
        assert Path(harness.socket_path).name == "cni.sock"  # what the conflist names
        # The plugin as `srv6-cni install` writes it on a node: an isolated launcher.
        bin_dir = work / "bin"
        install(bin_dir=str(bin_dir), lib_dir=str(work / "lib"), python=sys.executable)
        self.plugin_dirs = f"{bin_dir}:{REFERENCE_PLUGINS}"

    def __call__(
        self, action: str, container_id: str, netns: str
    ) -> subprocess.CompletedProcess[str]:
        private_run = ["unshare", "--mount", "--propagation", "private", "--"]
        private_run += ["sh", "-ec", _PRIVATE_RUN, "sh", str(self.old_run), self.agent_dir]
        return subprocess.run(
            [
                *private_run,
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
def shipped(cni_driver: str, harness: Harness, tmp_path: Path) -> Runtime:
    if shutil.which("unshare") is None:
        unavailable("`unshare` is missing: apt-get install util-linux")
    conflist = install_shipped_conflist(tmp_path / "etc" / "cni" / "net.d")
    return Runtime(cni_driver, harness, tmp_path, conflist)


@pytest.fixture
def chained(cni_driver: str, harness: Harness, tmp_path: Path) -> Runtime:
    """The shipped conflist with the reference `tuning` plugin after ours, as an operator
    may chain one (cni/README.md): our result becomes a real plugin's prevResult."""
    if not Path(REFERENCE_PLUGINS, "tuning").exists():
        unavailable("reference CNI plugins missing: apt-get install containernetworking-plugins")
    conflist = json.loads(install_shipped_conflist(tmp_path / "net.d").read_text())
    conflist["plugins"].append({"type": "tuning", "sysctl": {"net.core.somaxconn": "512"}})
    chain = tmp_path / "chain.conflist"
    chain.write_text(json.dumps(conflist))
    return Runtime(cni_driver, harness, tmp_path, chain)


def _v6(result: dict[str, Any]) -> str:
    return next(str(i["address"]).split("/")[0] for i in result["ips"] if ":" in i["address"])


def test_the_shipped_conflist_adds_checks_and_deletes_through_libcni(
    shipped: Runtime, harness: Harness
) -> None:
    pod_a, pod_b = harness.new_pod(), harness.new_pod()
    added = shipped("add", "ctr-a", pod_a)
    assert added.returncode == 0, added.stderr
    result = json.loads(added.stdout)
    # libcni 1.1.x reads `cniVersion` only (not the `cniVersions` list) and knows no 1.1.0
    # result: the shipped file must say a version it parses.
    assert result["cniVersion"] == json.loads(SHIPPED_CONFLIST.read_text())["cniVersion"]
    assert [i["name"] for i in result["interfaces"]] == [host_ifname("ctr-a", "eth0"), "eth0"]
    assert result["interfaces"][1]["sandbox"] == pod_a
    (allocation,) = harness.allocator.pods(harness.node)
    assert allocation.pod == "default/ctr-a"
    assert _v6(result) == str(allocation.addresses.ipv6)
    assert "mtu 1420 " in ip(pod_a, "link", "show", "eth0")  # the conflist's mtu

    # libcni cached our result: that is what it hands back as prevResult on CHECK and DEL.
    cached = shipped("cached", "ctr-a", pod_a)
    assert cached.returncode == 0, cached.stderr
    assert json.loads(cached.stdout) == result

    other = shipped("add", "ctr-b", pod_b)
    assert other.returncode == 0, other.stderr
    assert ping(pod_a, _v6(json.loads(other.stdout)))

    checked = shipped("check", "ctr-a", pod_a)
    assert checked.returncode == 0, checked.stderr

    ip(pod_a, "-6", "addr", "del", f"{_v6(result)}/128", "dev", "eth0")
    broken = shipped("check", "ctr-a", pod_a)
    assert broken.returncode != 0
    error = json.loads(broken.stdout)  # libcni decoded our error object
    assert error["code"] == protocol.CHECK_FAILED and _v6(result) in error["details"]

    for container_id, netns in (("ctr-a", pod_a), ("ctr-b", pod_b)):
        deleted = shipped("del", container_id, netns)
        assert deleted.returncode == 0, deleted.stderr
    assert node_veths(harness.node_netns) == []
    assert harness.allocator.pods(harness.node) == []
    assert json.loads(shipped("cached", "ctr-a", pod_a).stdout) is None
    again = shipped("del", "ctr-a", pod_a)
    assert again.returncode == 0, again.stderr


def test_a_plugin_chained_after_ours_gets_our_result(chained: Runtime, harness: Harness) -> None:
    pod = harness.new_pod()
    added = chained("add", "ctr-t", pod)
    assert added.returncode == 0, added.stderr
    result = json.loads(added.stdout)
    assert [i["name"] for i in result["interfaces"]] == [host_ifname("ctr-t", "eth0"), "eth0"]
    # tuning ran after us, on our interface, in the pod.
    somaxconn = subprocess.run(
        ["ip", "netns", "exec", os.path.basename(pod), "cat", "/proc/sys/net/core/somaxconn"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert somaxconn.stdout.strip() == "512"
    checked = chained("check", "ctr-t", pod)
    assert checked.returncode == 0, checked.stderr
    deleted = chained("del", "ctr-t", pod)
    assert deleted.returncode == 0, deleted.stderr
    assert node_veths(harness.node_netns) == []
    assert harness.allocator.pods(harness.node) == []


def test_libcni_reports_our_error_codes(shipped: Runtime, harness: Harness) -> None:
    gone = "/run/netns/s6t-does-not-exist"
    failed = shipped("add", "ctr-x", gone)
    assert failed.returncode != 0
    # libcni decodes the plugin's error object; nothing got allocated or wired.
    assert json.loads(failed.stdout)["code"] == protocol.UNKNOWN_CONTAINER
    assert "container network namespace does not exist" in failed.stderr
    assert harness.allocator.pods(harness.node) == []
    assert node_veths(harness.node_netns) == []
