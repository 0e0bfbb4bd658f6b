"""The self-contained srv6-cni (cni/freeze.py) on a node that has no Python and no C library.

The executable is built from this tree by scripts/build-cni.sh, as deploy/Containerfile's
cni-builder stage builds it, installed by the DaemonSet's own `install-cni-plugin` command,
and run by libcni 1.1.2 (tests/cni_driver, a static Go program) with the shipped conflist
inside an empty root: a private mount namespace whose `/` is a fresh tmpfs holding only
what a runtime needs — /opt/cni, /etc/cni/net.d, /run/netns, /run/srv6ctl (the test
agent's socket), /var/lib/cni, /proc and /dev. No /usr, /lib, /root or venv: no python3 to
find or exec, no dynamic loader, no libc. The Python launcher fails there (the control);
the executable adds, checks and deletes pods against a real agent-side server.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cni import install, protocol
from cni.freeze import elf_problems, shim_modules
from cni.wiring import host_ifname
from tests.support.cni import Harness, ip, node_veths, ping, unavailable
from tests.test_cni_libcni import DAEMONSET, install_shipped_conflist

pytestmark = pytest.mark.netns

# $1: the empty directory that becomes the node's root; $2: the host-side tree (opt/cni,
# etc/cni/net.d, var/lib/cni) as the init containers left it; $3: the agent's socket
# directory; $4: the libcni driver. The rest is the driver's command line. `-n`: util-linux
# would otherwise write /run/mount/utab on the host.
_EMPTY_ROOT = """
node=$1 host=$2 agent_dir=$3 driver=$4
shift 4
mount -n -t tmpfs -o mode=0755 srv6ctl-test-node "$node"
for dir in opt/cni etc/cni/net.d var/lib/cni run/netns run/srv6ctl proc dev sbin; do
    mkdir -p "$node/$dir"
done
mount -n --rbind "$host/opt/cni" "$node/opt/cni"
mount -n --bind "$host/etc/cni/net.d" "$node/etc/cni/net.d"
mount -n --bind "$host/var/lib/cni" "$node/var/lib/cni"
mount -n --rbind /run/netns "$node/run/netns"
mount -n --bind "$agent_dir" "$node/run/srv6ctl"
mount -n --rbind /proc "$node/proc"
mount -n --rbind /dev "$node/dev"
touch "$node/sbin/cni_driver"
mount -n --bind "$driver" "$node/sbin/cni_driver"
exec chroot "$node" /sbin/cni_driver "$@"
"""


class EmptyNode:
    """libcni running the shipped conflist on a node whose root holds nothing but CNI."""

    def __init__(self, driver: str, harness: Harness, work: Path) -> None:
        self.driver = driver
        self.root = work / "node-root"
        self.root.mkdir()
        self.host = work / "host"
        (self.host / "var/lib/cni").mkdir(parents=True)
        install_shipped_conflist(self.host / "etc/cni/net.d")
        self.agent_dir = str(Path(harness.socket_path).parent)
        assert Path(harness.socket_path).name == "cni.sock"  # what the conflist names

    def __call__(
        self, action: str, container_id: str, netns: str
    ) -> subprocess.CompletedProcess[str]:
        empty_root = ["unshare", "--mount", "--propagation", "private", "--"]
        empty_root += ["sh", "-ec", _EMPTY_ROOT, "sh", str(self.root), str(self.host)]
        return subprocess.run(
            [
                *empty_root,
                self.agent_dir,
                self.driver,
                action,
                "/etc/cni/net.d/10-srv6.conflist",
                container_id,
                netns,
                "eth0",
                "/var/lib/cni",
                "/opt/cni/bin",
                f"K8S_POD_NAMESPACE=default;K8S_POD_NAME={container_id}",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )


def install_as_the_daemonset_does(executable: Path, host: Path) -> Path:
    """Run the `install-cni-plugin` init container's command, below `host` for /host."""
    spec = yaml.safe_load(DAEMONSET.read_text())["spec"]["template"]["spec"]
    (init,) = [c for c in spec["initContainers"] if c["name"] == "install-cni-plugin"]
    assert init["command"][:2] == ["srv6-cni", "install"]
    args = []
    for arg in init["command"][2:]:
        name, _, value = arg.partition("=")
        if name == "--root":
            value = str(host)
        elif name == "--executable":
            assert value == install.DEFAULT_EXECUTABLE  # where the image has it
            value = str(executable)
        args.append(f"{name}={value}")
    assert install.cli(args) == 0
    return host / "opt/cni/bin/srv6-cni"


@pytest.fixture
def empty_node(cni_driver: str, harness: Harness, tmp_path: Path) -> EmptyNode:
    if shutil.which("unshare") is None or shutil.which("chroot") is None:
        unavailable("`unshare` or `chroot` is missing: apt-get install util-linux coreutils")
    return EmptyNode(cni_driver, harness, tmp_path)


def _v6(result: dict[str, object]) -> str:
    ips = result["ips"]
    assert isinstance(ips, list)
    return next(str(i["address"]).split("/")[0] for i in ips if ":" in i["address"])


def test_the_executable_needs_nothing_from_the_node_but_the_kernel(
    cni_static_executable: Path, cni_driver: str
) -> None:
    assert elf_problems(cni_static_executable) == []
    assert elf_problems(Path(cni_driver)) == []  # so the empty root below tests only ours
    assert elf_problems(Path("/bin/sh"))  # the check does see a dynamic executable


def test_pods_are_added_checked_and_deleted_on_a_node_without_python(
    cni_static_executable: Path, empty_node: EmptyNode, harness: Harness
) -> None:
    # The control: the launcher, as `srv6-cni install --python` writes it, cannot run there.
    launcher = install.install(
        bin_dir=str(empty_node.host / "opt/cni/bin"),
        lib_dir=str(empty_node.host / "opt/cni/lib/srv6-cni"),
        python=sys.executable,
    )
    pod_a, pod_b = harness.new_pod(), harness.new_pod()
    refused = empty_node("add", "ctr-a", pod_a)
    assert refused.returncode != 0
    # libcni execs the launcher; the kernel finds no interpreter for its #! line.
    assert "fork/exec /opt/cni/bin/srv6-cni: no such file or directory" in refused.stderr
    assert harness.allocator.pods(harness.node) == []

    plugin = install_as_the_daemonset_does(cni_static_executable, empty_node.host)
    assert plugin == launcher  # the same file name, replaced in place
    assert plugin.read_bytes() == cni_static_executable.read_bytes()
    assert not (empty_node.host / "opt/cni/lib/srv6-cni/cni").exists()  # launcher's modules

    added = empty_node("add", "ctr-a", pod_a)
    assert added.returncode == 0, added.stderr
    result = json.loads(added.stdout)
    assert [i["name"] for i in result["interfaces"]] == [host_ifname("ctr-a", "eth0"), "eth0"]
    (allocation,) = harness.allocator.pods(harness.node)
    assert allocation.pod == "default/ctr-a"
    assert _v6(result) == str(allocation.addresses.ipv6)
    assert "mtu 1420 " in ip(pod_a, "link", "show", "eth0")  # the conflist's mtu

    other = empty_node("add", "ctr-b", pod_b)
    assert other.returncode == 0, other.stderr
    assert ping(pod_a, _v6(json.loads(other.stdout)))

    checked = empty_node("check", "ctr-a", pod_a)  # libcni passes its cached prevResult
    assert checked.returncode == 0, checked.stderr
    ip(pod_a, "-6", "addr", "del", f"{_v6(result)}/128", "dev", "eth0")
    broken = empty_node("check", "ctr-a", pod_a)
    assert broken.returncode != 0
    assert json.loads(broken.stdout)["code"] == protocol.CHECK_FAILED

    for container_id, netns in (("ctr-a", pod_a), ("ctr-b", pod_b)):
        deleted = empty_node("del", container_id, netns)
        assert deleted.returncode == 0, deleted.stderr
    assert node_veths(harness.node_netns) == []
    assert harness.allocator.pods(harness.node) == []

    gone = empty_node("add", "ctr-x", "/run/netns/s6t-does-not-exist")
    assert json.loads(gone.stdout)["code"] == protocol.UNKNOWN_CONTAINER


def _run(executable: Path, config: bytes, **env: str) -> dict[str, object]:
    done = subprocess.run(
        [str(executable)],
        env={"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "abc", "CNI_IFNAME": "eth0", **env},
        input=config,
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert b"Traceback" not in done.stdout + done.stderr, done.stderr
    answer = json.loads(done.stdout)
    assert isinstance(answer, dict)
    return answer


def test_json_without_its_c_accelerator_still_refuses_deep_nesting_with_code_6(
    cni_static_executable: Path, tmp_path: Path
) -> None:
    # `_json` is a shared module in Debian's Python, so the executable parses with json's
    # pure-Python scanner, which recurses about twice per level. Around its limit each depth
    # must still be 6 (nested too deeply) or 11 (decoded, no agent): never 999.
    def code(depth: int) -> object:
        config = (
            '{"cniVersion": "1.1.0", "name": "srv6", "type": "srv6-cni", '
            f'"agentSocket": "{tmp_path}/none.sock", "x": {"[" * depth}{"]" * depth}}}'
        )
        return _run(cni_static_executable, config.encode(), CNI_NETNS="/proc/self/ns/net")["code"]

    low, high = 1, 4096  # code(low) is 11, code(high) is 6: bisect to the boundary
    assert (code(low), code(high)) == (protocol.TRY_AGAIN_LATER, protocol.DECODING_FAILURE)
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if code(middle) == protocol.TRY_AGAIN_LATER else (low, middle)
    codes = {depth: code(depth) for depth in range(high - 12, high + 4)}
    assert set(codes.values()) == {protocol.TRY_AGAIN_LATER, protocol.DECODING_FAILURE}, codes


def test_it_answers_like_the_shim_and_leaves_installing_to_the_image(
    cni_static_executable: Path,
) -> None:
    version = _run(cni_static_executable, b'{"cniVersion": "0.4.0"}', CNI_COMMAND="VERSION")
    assert version == {"cniVersion": "0.4.0", "supportedVersions": ["0.4.0", "1.0.0", "1.1.0"]}
    bad = _run(cni_static_executable, b"{", CNI_NETNS="/proc/self/ns/net")
    assert bad["code"] == protocol.DECODING_FAILURE
    refused = subprocess.run(
        [str(cni_static_executable), "install", "--root=/nonexistent"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert refused.returncode == 2
    assert "srv6ctl image" in refused.stderr and not Path("/nonexistent").exists()


def test_the_freeze_carries_exactly_what_the_shim_imports() -> None:
    # The same interpreter as scripts/build-cni.sh: Debian's, whose libpython is linked.
    python = os.environ.get("CNI_BUILD_PYTHON", "/usr/bin/python3")
    if not Path(python).exists():
        unavailable(f"{python} is missing: apt-get install python3")
    modules = shim_modules(python)
    assert {"cni", "cni.main", "cni.protocol", "json", "json.decoder"} <= set(modules)
    # The installer is not in the plugin (argparse, subprocess, shutil: start-up and size).
    assert not {"cni.install", "cni.freeze", "argparse", "subprocess"} & set(modules)


@pytest.mark.slow
def test_the_end_to_end_suite_passes_with_the_executable_as_the_shim(
    cni_static_executable: Path,
) -> None:
    # tests/test_cni.py and the concurrency test (every command, version, malformed input,
    # agent down...) run the executable instead of the venv's console script: same answers.
    root = Path(__file__).resolve().parent.parent
    suite = ["tests/test_cni.py", "tests/test_cni_concurrency.py"]
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *suite],
        cwd=root,
        env={**os.environ, "SRV6_CNI_EXECUTABLE": str(cni_static_executable)},
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert " passed" in done.stdout, done.stdout[-2000:]
