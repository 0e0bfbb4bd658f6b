"""The whole lab in one go — up, `srv6ctl verify`, the user's command, down — here or in a VM.

A host whose kernel lacks SRv6 (no `CONFIG_IPV6_SEG6_LWTUNNEL`) cannot carry the lab's
kernel dataplane, but a VM booted with Debian's own kernel over this host's file system
(`srv6ctl.hostvm`) can, with the same `.venv` and code, for the length of one command. So
`srv6ctl lab vm` runs `srv6ctl lab session` inside such a VM, and `make lab` does that on
such a host: the newcomer's lab and its verify are the same as on any other host, only
slower (TCG where KVM cannot boot a stock kernel) and gone when the command ends.

The user's command runs with `SRV6CTL_LAB_DIR` naming the lab, so `srv6ctl lab status`,
`srv6ctl trace client-1 web` and friends find it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from srv6ctl.hostvm import HostVmError, ensure_guest_kernel, guest_kernels, run_in_vm

# Inside the VM /run is the guest's own tmpfs: the lab's state never reaches the host.
VM_STATE_DIR = "/run/srv6ctl-lab"


def session(up_argv: Sequence[str], command: Sequence[str], state_dir: str) -> int:
    """Up, verify, `command` (if any), then down whatever happened; the first failure's
    exit status, else 0."""
    lab = [sys.executable, "-m", "srv6ctl.lab"]
    steps = [
        [*lab, "up", *up_argv, "--state-dir", state_dir],
        [sys.executable, "-m", "srv6ctl.verify", "--state-dir", state_dir],
    ]
    if command:
        steps.append(list(command))
    env = {**os.environ, "SRV6CTL_LAB_DIR": state_dir}
    status = 0
    try:
        for argv in steps:
            status = subprocess.run(argv, env=env, check=False).returncode
            if status != 0:
                break
    finally:
        subprocess.run([*lab, "down", "--state-dir", state_dir], env=env, check=False)
    return status


def session_in_vm(up_argv: Sequence[str], command: Sequence[str], release: str | None) -> int:
    """`session` in a VM on Debian's kernel `release` (default: the newest installed, which
    is installed first when there is none); its output streams as it comes."""
    try:
        if release:
            kernel = next((k for k in guest_kernels() if k.release == release), None)
            if kernel is None:
                raise HostVmError(f"--kernel {release}: no such Debian kernel is installed")
        else:
            kernel = ensure_guest_kernel()
        print(
            f"running the lab in a VM on Debian's kernel {kernel.release} "
            "(up, verify, then down; about 2 minutes without KVM)",
            flush=True,
        )
        start = time.monotonic()
        inner = [sys.executable, "-m", "srv6ctl.lab", "session", *up_argv]
        inner += ["--state-dir", VM_STATE_DIR]
        if command:
            inner += ["--", *command]
        status = run_in_vm(inner, kernel=kernel, cwd=Path.cwd(), output=_echo)
    except HostVmError as err:
        print(f"lab vm failed: {err}", file=sys.stderr)
        return 1
    print(
        f"the VM ended after {time.monotonic() - start:.0f} s (exit {status}), and the lab with "
        "it: `srv6ctl lab vm -- CMD` runs CMD against a fresh one "
        "(e.g. -- srv6ctl trace client-1 web)",
        flush=True,
    )
    return status


def _echo(line: str) -> None:
    print(line, flush=True)
