"""`python -m srv6ctl.hostvm [--kernel RELEASE] [--results DIR] -- CMD ARGS...`: CMD in a VM
(`--list`: the guest kernels installed).

Runs in the current directory; prints the command's output and exits with its status
(125 when the VM itself failed, as env(1) does for its own errors).
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from srv6ctl.hostvm.host import GuestKernel, HostVmError, ensure_guest_kernel, guest_kernels
from srv6ctl.hostvm.machine import run_in_vm

VM_FAILED = 125


def main(args: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m srv6ctl.hostvm",
        description="Run a command as root in a VM booted from a Debian cloud kernel over "
        "this host's root (read-only, with a throw-away overlay).",
    )
    parser.add_argument("--kernel", metavar="RELEASE", help="e.g. 6.1.0-41-cloud-amd64")
    parser.add_argument("--results", type=Path, metavar="DIR", help="a dir the guest can write")
    parser.add_argument("--memory", type=int, default=4096, metavar="MIB")
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=1800, metavar="SECONDS")
    parser.add_argument(
        "--list", action="store_true", help="print the guest kernels installed, newest first"
    )
    parser.add_argument("command", nargs="*", help="the command and its arguments (after --)")
    options = parser.parse_args(args)
    if options.list:
        for kernel in guest_kernels():
            print(kernel.release)
        return 0
    if not options.command:
        parser.error("a command to run in the VM is needed (after --)")
    # SIGTERM (a CI job cancelled) unwinds like Ctrl-C, so qemu and the temp dir go too.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        status = run_in_vm(
            options.command,
            kernel=_kernel(options.kernel),
            cwd=Path.cwd(),
            results=options.results,
            memory_mib=options.memory,
            cpus=options.cpus,
            timeout=options.timeout,
        )
    except HostVmError as error:
        print(f"hostvm: {error}", file=sys.stderr)
        return VM_FAILED
    except KeyboardInterrupt:
        return 128 + signal.SIGINT
    return status


def _kernel(release: str | None) -> GuestKernel:
    if release is None:
        return ensure_guest_kernel()
    for kernel in guest_kernels():
        if kernel.release == release:
            return kernel
    installed = " ".join(kernel.release for kernel in guest_kernels()) or "none"
    raise HostVmError(f"no guest kernel {release} (installed: {installed})")


if __name__ == "__main__":
    sys.exit(main())
