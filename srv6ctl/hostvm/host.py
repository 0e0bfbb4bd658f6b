"""What this host offers a VM: its Debian cloud kernels and the tools that boot them.

Reads /boot, /lib/modules and PATH; writes nothing, except through `scripts/vm-deps.sh`
when `ensure_guest_kernel` has to install what is missing.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

BOOT = Path("/boot")
MODULES = Path("/lib/modules")
VM_DEPS = Path(__file__).resolve().parents[2] / "scripts" / "vm-deps.sh"

# Debian 12's qemu ships the C daemon here; qemu >= 8 dropped it for the Rust one, which
# distributions put under libexec.
_VIRTIOFSD = (
    Path("/usr/lib/qemu/virtiofsd"),
    Path("/usr/libexec/virtiofsd"),
    Path("/usr/lib/virtiofsd"),
)
_BUSYBOX = (Path("/bin/busybox"), Path("/usr/bin/busybox"))
_PT_INTERP = 3


class HostVmError(RuntimeError):
    """The VM itself could not run (not the command inside it): one line saying why."""


@dataclass(frozen=True)
class GuestKernel:
    release: str  # e.g. "6.1.0-41-cloud-amd64"
    image: Path  # /boot/vmlinuz-<release>

    @property
    def modules(self) -> Path:
        return MODULES / self.release


@dataclass(frozen=True)
class HostTools:
    qemu: Path
    virtiofsd: Path
    busybox: Path  # statically linked: the initramfs has no libc
    setpriv: Path  # its --pdeathsig ties qemu and virtiofsd to our life


def guest_kernels() -> list[GuestKernel]:
    """Debian cloud kernels installed on this host (image and modules), newest first."""
    found = []
    for image in BOOT.glob("vmlinuz-*-cloud-amd64"):
        release = image.name.removeprefix("vmlinuz-")
        if (MODULES / release / "modules.dep").is_file():
            found.append(GuestKernel(release=release, image=image))
    return sorted(found, key=lambda kernel: _version_key(kernel.release), reverse=True)


def _version_key(release: str) -> tuple[int, ...]:
    # "6.1.0-41-cloud-amd64" < "6.1.0-57-cloud-amd64" < "6.12.0-1-cloud-amd64"
    return tuple(int(number) for number in re.findall(r"\d+", release))


def host_tools() -> HostTools | list[str]:
    """The tools a VM needs, or the Debian packages that would bring the missing ones."""
    qemu = shutil.which("qemu-system-x86_64")
    virtiofsd = next((path for path in _VIRTIOFSD if os.access(path, os.X_OK)), None)
    busybox = next((path for path in _BUSYBOX if _is_static_elf(path)), None)
    setpriv = shutil.which("setpriv")
    if qemu and virtiofsd and busybox and setpriv:
        return HostTools(Path(qemu), virtiofsd, busybox, Path(setpriv))
    missing = {
        "qemu-system-x86": not (qemu and virtiofsd),
        "busybox-static": not busybox,
        "util-linux": not setpriv,
    }
    return [package for package, absent in missing.items() if absent]


def _is_static_elf(path: Path) -> bool:
    """A 64-bit little-endian ELF without an interpreter (PT_INTERP) runs without libc."""
    try:
        with path.open("rb") as elf:
            header = elf.read(64)
            if header[:4] != b"\x7fELF" or header[4] != 2 or header[5] != 1:
                return False
            phoff = int.from_bytes(header[32:40], "little")
            phentsize = int.from_bytes(header[54:56], "little")
            phnum = int.from_bytes(header[56:58], "little")
            elf.seek(phoff)
            table = elf.read(phentsize * phnum)
    except OSError:
        return False
    return all(
        int.from_bytes(table[i : i + 4], "little") != _PT_INTERP
        for i in range(0, len(table), phentsize)
    )


def missing_packages() -> list[str]:
    """Debian packages to install before a VM can boot here (empty: nothing missing)."""
    tools = host_tools()
    missing = tools if isinstance(tools, list) else []
    if not guest_kernels():
        missing.append("linux-image-cloud-amd64")
    return missing


def vm_unavailable() -> str | None:
    """Why a VM cannot run on this host, or None (missing packages it can install are fine)."""
    if platform.machine() != "x86_64":
        return f"the guest kernels are Debian's amd64 ones; this host is {platform.machine()}"
    if os.geteuid() != 0:
        return "a host VM needs root: virtiofsd serves the host's root file system as root"
    missing = missing_packages()
    if missing and not (shutil.which("apt-get") and VM_DEPS.is_file()):
        return f"missing {' '.join(missing)}, and no apt-get with {VM_DEPS.name} to install them"
    return None


def distribution_release() -> str | None:
    """The release Debian's own `linux-image-cloud-amd64` stands for (its image package),
    when installed: the guest `make test` and `make lab` use, whatever newer kernel
    (`scripts/vm-deps.sh --newer`) lies beside it for `make test-kernels`."""
    try:
        done = subprocess.run(
            ["dpkg-query", "-W", "-f", "${Depends}", "linux-image-cloud-amd64"],
            capture_output=True,
            text=True,
            check=False,
        )
    except OSError:  # no dpkg: not a Debian host
        return None
    found = re.search(r"linux-image-(\S+-cloud-amd64)", done.stdout)
    return found.group(1) if found else None


def ensure_guest_kernel() -> GuestKernel:
    """The distribution's guest kernel (else the newest), after installing the VM's
    packages if any is missing."""
    missing = missing_packages()
    if missing:
        reason = vm_unavailable()
        if reason is not None:
            raise HostVmError(reason)
        done = subprocess.run(["bash", str(VM_DEPS)], stdin=subprocess.DEVNULL, check=False)
        if done.returncode != 0:
            raise HostVmError(
                f"{VM_DEPS.name} failed (exit {done.returncode}) installing {missing}"
            )
    kernels = guest_kernels()
    if not kernels or isinstance(host_tools(), list):
        raise HostVmError(f"still missing after {VM_DEPS.name}: {' '.join(missing_packages())}")
    own = distribution_release()
    return next((k for k in kernels if k.release == own), kernels[0])
