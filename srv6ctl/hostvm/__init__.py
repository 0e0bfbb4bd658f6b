"""Run one command in a small VM booted from a Debian cloud kernel over the host's own root.

Why: the kernel-dataplane tests and the lab need kernel SRv6 (seg6local lwtunnels), VRF
and dummy links, which some CI kernels lack (6.18.44-fc: no CONFIG_IPV6_SEG6_LWTUNNEL).
Debian 12's linux-image-cloud-amd64 (6.1) has them; booted over the host's root file
system, the very same .venv and code run inside.

Why our own qemu and not virtme-ng (tried, 1.42): virtme-ng looks for the Rust virtiofsd
and calls it with options Debian 12's C daemon rejects, then falls back to 9p, which
Debian's kernel lacks (the guest panics); it only worked behind a PATH wrapper that
impersonates the Rust daemon's options and pid file, both internals. It has no
throw-away overlay for the whole root (only per-directory --overlay-rwdir, or --rw, which
writes to the host), it passes the command on the kernel command line (2 KiB on x86, too
short for an environment), and its init runs udev coldplug, ~10 of its 17 s under TCG.
The qemu command line, a newc cpio and two busybox scripts: a few hundred lines we own.

How: `host` finds kernels and tools, `initramfs` builds the guest's first userspace,
`machine` runs virtiofsd and qemu. virtiofsd serves the host's root from a read-only
recursive bind in a mount namespace of its own (`readonly_view`); the guest mounts it
read-only under a tmpfs overlay (writes anywhere, all thrown away), with a fresh tmpfs
/run and the results directory as a second, writable virtiofs share at its own path.
KVM is used when /dev/kvm is a regular one; SRV6CTL_VM_ACCEL=kvm|tcg overrides that.

Cost (measured on the 2-core CI machine, TCG): a boot plus `true` takes 4.6-7 s (median
~5.5 s); Python inside runs ~25x slower than on the host, so `import srv6ctl.cli` is ~1 s.
"""

from srv6ctl.hostvm.host import (
    GuestKernel,
    HostVmError,
    ensure_guest_kernel,
    guest_kernels,
    vm_unavailable,
)
from srv6ctl.hostvm.machine import run_in_vm

__all__ = [
    "GuestKernel",
    "HostVmError",
    "ensure_guest_kernel",
    "guest_kernels",
    "run_in_vm",
    "vm_unavailable",
]
