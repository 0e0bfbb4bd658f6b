"""srv6ctl.hostvm for real: two VM boots (exit status and output; then kernel SRv6, the
results share and the throw-away overlay), and the job script run by the host's /bin/sh."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from srv6ctl.hostvm import (
    GuestKernel,
    ensure_guest_kernel,
    guest_kernels,
    run_in_vm,
    vm_unavailable,
)
from srv6ctl.hostvm.initramfs import MODULES, GuestJob, job_script, module_load_order

UNAVAILABLE = vm_unavailable()
needs_vm = pytest.mark.skipif(UNAVAILABLE is not None, reason=UNAVAILABLE or "")
# The first boot on a fresh machine installs the kernel and qemu (scripts/vm-deps.sh).
INSTALL_AND_BOOT = pytest.mark.timeout(900)
VM_TIMEOUT = 240.0


def test_job_script_hands_argv_cwd_and_environment_over_unchanged(tmp_path: Path) -> None:
    show = "import json, os, sys; print(json.dumps([sys.argv[1:], os.getcwd(), dict(os.environ)]))"
    argv = [sys.executable, "-c", show, "a b", "it's", '"$HOME"', "line\nbreak", "--", "*"]
    # LC_ALL keeps Python from coercing the C locale (PEP 538), which would add LC_CTYPE.
    env = {"LC_ALL": "C.UTF-8", "QUOTES": "'\"", "NEWLINE": "a\nb", "DOLLAR": "$(false)`x`"}
    script = tmp_path / "job"
    script.write_text(job_script(GuestJob.of(argv, tmp_path, env, None, "vm")))
    done = subprocess.run(["/bin/sh", str(script)], capture_output=True, text=True, check=True)
    assert json.loads(done.stdout) == [argv[3:], str(tmp_path), env]


def test_a_command_with_an_equals_sign_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="contains '='"):
        GuestJob.of(["A=1", "true"], tmp_path, {}, None, "vm")


@pytest.mark.parametrize("kernel", guest_kernels(), ids=lambda kernel: kernel.release)
def test_initramfs_modules_come_after_what_they_need(kernel: GuestKernel) -> None:
    names = [path.name.split(".ko")[0] for path in module_load_order(kernel.modules, MODULES)]
    # What the kernel has built in (6.12: virtio_pci, virtiofs, ...) is not loaded.
    builtin_list = (kernel.modules / "modules.builtin").read_text().split()
    builtin = {Path(path).name.split(".ko")[0].replace("-", "_") for path in builtin_list}
    assert set(MODULES) - builtin <= set(names) and not builtin & set(names)
    for first, then in (("virtio", "virtio_pci"), ("fuse", "virtiofs")):
        if {first, then} <= set(names):
            assert names.index(first) < names.index(then)


@pytest.mark.slow
@needs_vm
@INSTALL_AND_BOOT
def test_exit_status_and_output_lines_come_back(tmp_path: Path) -> None:
    lines: list[str] = []
    status = run_in_vm(
        # /dev/stderr reopens the guest's stdout: it must not be the (single-open) port.
        ["sh", "-c", "echo out; echo err >&2; echo reopened >/dev/stderr; exit 7"],
        cwd=tmp_path,
        timeout=VM_TIMEOUT,
        output=lines.append,
    )
    assert status == 7
    assert lines == ["out", "err", "reopened"]


@dataclass(frozen=True)
class GuestRun:
    status: int
    facts: dict[str, str]  # the script's "key=value" lines
    kernel: GuestKernel
    results: Path
    cwd: Path
    host_tmp_file: Path


# One boot for several checks; each prints "key=value" and the tests read them.
GUEST_CHECKS = """set -eu
echo "release=$(uname -r)"
echo "in_vm=$SRV6CTL_IN_VM"
echo "extra=$HOSTVM_EXTRA"
echo "cwd=$(pwd)"
echo "user=$(id -u)"
ip netns add hostvm-check
ip -n hostvm-check link set lo up
ip -n hostvm-check -6 route add fc00::1/128 encap seg6local action End dev lo
echo "route=$(ip -n hostvm-check -6 route show fc00::1/128)"
modprobe vrf
ip link add hostvm-vrf type vrf table 10
ip link add hostvm-dummy type dummy
echo "links=$(ip -o link show type vrf | wc -l),$(ip -o link show type dummy | wc -l)"
echo kept >"$1/kept"
echo gone >"$2"
echo gone >left-in-cwd
echo "root=$(awk '$2 == "/" {print $3}' /proc/mounts)"
"""


@pytest.fixture(scope="module")
def guest_run(tmp_path_factory: pytest.TempPathFactory) -> GuestRun:
    if UNAVAILABLE is not None:
        pytest.skip(UNAVAILABLE)
    kernel = ensure_guest_kernel()
    results, cwd = tmp_path_factory.mktemp("results"), tmp_path_factory.mktemp("cwd")
    host_tmp_file = Path("/tmp") / f"srv6ctl-hostvm-{uuid.uuid4().hex}"
    lines: list[str] = []
    status = run_in_vm(
        ["sh", "-c", GUEST_CHECKS, "guest-checks", str(results), str(host_tmp_file)],
        kernel=kernel,
        cwd=cwd,
        env={"HOSTVM_EXTRA": "passed"},
        results=results,
        timeout=VM_TIMEOUT,
        output=lines.append,
    )
    facts = {}
    for line in lines:
        key, equals, value = line.partition("=")
        if equals:
            facts[key] = value
    return GuestRun(status, facts, kernel, results, cwd, host_tmp_file)


@pytest.mark.slow
@INSTALL_AND_BOOT
def test_the_guest_runs_the_debian_kernel_as_root_with_our_environment(guest_run: GuestRun) -> None:
    assert guest_run.status == 0, guest_run.facts
    assert guest_run.facts["release"] == guest_run.kernel.release
    assert guest_run.facts["in_vm"] == "1"
    assert guest_run.facts["extra"] == "passed"
    assert guest_run.facts["cwd"] == str(guest_run.cwd)
    assert guest_run.facts["user"] == "0"
    assert guest_run.facts["root"] == "overlay"


@pytest.mark.slow
@INSTALL_AND_BOOT
def test_seg6local_vrf_and_dummy_work_inside(guest_run: GuestRun) -> None:
    """The whole point: the host kernel may lack these, the guest's has them."""
    assert "encap seg6local action End dev lo" in guest_run.facts["route"]
    assert guest_run.facts["links"] == "1,1"


@pytest.mark.slow
@INSTALL_AND_BOOT
def test_only_the_results_directory_reaches_the_host(guest_run: GuestRun) -> None:
    assert (guest_run.results / "kept").read_text() == "kept\n"
    assert not guest_run.host_tmp_file.exists()
    assert not (guest_run.cwd / "left-in-cwd").exists()
