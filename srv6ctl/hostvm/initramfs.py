"""The guest's first userspace: a busybox initramfs that runs one job on the host's root.

Stage 1 (PID 1 in the initramfs) loads the few modules Debian builds as such (virtio,
virtiofs, overlay), mounts the host's root read-only with a tmpfs overlay on top so that
programs can write anywhere and nothing reaches the host, mounts the results share, gives
the new root a fresh /run (the host's would say its labs and netns exist; /tmp stays the
host's, overlaid, so paths under it such as pytest's tmp dirs mean the same inside), then
switch_roots. Stage 2 (PID 1 on that root) runs the job with its output on one virtio port,
writes the exit status to another and powers off. The job itself is a script for the
host's /bin/sh, every word shlex-quoted: cd, then `env -i` with the whole environment.
"""

from __future__ import annotations

import gzip
import lzma
import shlex
import stat
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from srv6ctl.hostvm.host import GuestKernel, HostVmError

OUTPUT_PORT = "srv6ctl.output"
STATUS_PORT = "srv6ctl.status"
ROOT_TAG = "hostroot"
RESULTS_TAG = "results"
GUEST_DIR = "/run/srv6ctl-vm"  # where stage 2 and the job live once the initramfs is gone

# Only what stage 1 needs before the root is mounted; modprobe finds the rest on the root.
MODULES = ("virtio_pci", "virtio_console", "virtiofs", "overlay")

_DECOMPRESS: dict[str, Callable[[bytes], bytes]] = {
    ".ko": lambda data: data,
    ".ko.xz": lzma.decompress,  # Debian 13 compresses its modules with xz
    ".ko.gz": gzip.decompress,
}

_STAGE1 = f"""#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox --install -s /bin
export PATH=/bin
fail() {{ echo "srv6ctl-vm: $*" >/dev/console; sync; poweroff -f; }}
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
. /config
hostname "$VM_HOSTNAME"
while read -r module; do
    insmod "/modules/$module" || fail "cannot load $module"
done </modules/order
mount -t virtiofs -o ro {ROOT_TAG} /lower || fail "cannot mount the host's root (virtiofs)"
mount -t tmpfs -o mode=0755 overlay-rw /rw && mkdir /rw/upper /rw/work
mount -t overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work overlay /newroot ||
    fail "cannot mount the overlay root"
mount -t tmpfs -o mode=0755,nosuid,nodev run /newroot/run
if [ -n "$RESULTS" ]; then
    mkdir -p "/newroot$RESULTS"
    mount -t virtiofs {RESULTS_TAG} "/newroot$RESULTS" || fail "cannot mount $RESULTS (virtiofs)"
fi
mkdir -p /newroot{GUEST_DIR}
cp /bin/busybox /stage2 /job /newroot{GUEST_DIR}/
for fs in proc sys dev; do mount --move /$fs /newroot/$fs; done
exec switch_root /newroot {GUEST_DIR}/busybox sh {GUEST_DIR}/stage2
"""

# A virtio port opens once at a time (EBUSY after), so the job writes into a FIFO that one
# cat copies to the port: `echo >/dev/stderr` and the like reopen the FIFO, not the port.
# Daemons the job leaves running may hold the FIFO open: cat gets 2 s to drain, not EOF.
_STAGE2 = f"""B={GUEST_DIR}/busybox
port() {{
    for p in /sys/class/virtio-ports/*; do
        [ "$($B cat "$p/name")" = "$1" ] && echo "/dev/${{p##*/}}"
    done
}}
$B mkdir -p /dev/pts /dev/shm
$B mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /dev/pts
$B mount -t tmpfs -o mode=1777,nosuid,nodev shm /dev/shm
$B ln -s /proc/self/fd /dev/fd
$B ln -s /proc/self/fd/0 /dev/stdin
$B ln -s /proc/self/fd/1 /dev/stdout
$B ln -s /proc/self/fd/2 /dev/stderr
$B ip link set lo up
out=$(port {OUTPUT_PORT})
status=$(port {STATUS_PORT})
if [ -n "$out" ] && [ -n "$status" ]; then
    $B mkfifo {GUEST_DIR}/output
    $B cat {GUEST_DIR}/output >"$out" &
    copier=$!
    /bin/sh {GUEST_DIR}/job </dev/null >{GUEST_DIR}/output 2>&1
    code=$?
    ($B sleep 2; $B kill $copier) 2>/dev/null &
    guard=$!
    wait $copier
    $B kill $guard 2>/dev/null
    echo $code >"$status"
else
    echo "srv6ctl-vm: no virtio ports {OUTPUT_PORT} and {STATUS_PORT}" >/dev/console
fi
$B sync
$B poweroff -f
"""


@dataclass(frozen=True)
class GuestJob:
    argv: tuple[str, ...]
    cwd: Path
    environ: tuple[tuple[str, str], ...]  # the whole environment the command starts with
    results: Path | None
    hostname: str

    @classmethod
    def of(
        cls,
        argv: Sequence[str],
        cwd: Path,
        environ: Mapping[str, str],
        results: Path | None,
        hostname: str,
    ) -> GuestJob:
        if not argv:
            raise ValueError("run_in_vm needs a command")
        if "=" in argv[0]:
            # env(1) would take it for one more variable.
            raise ValueError(f"command {argv[0]!r} contains '='")
        return cls(tuple(argv), cwd, tuple(sorted(environ.items())), results, hostname)


def job_script(job: GuestJob) -> str:
    """The host's /bin/sh runs this in the guest: the command, in its cwd and environment."""
    assignments = [f"{name}={value}" for name, value in job.environ]
    command = shlex.join(["exec", "/usr/bin/env", "-i", "--", *assignments, *job.argv])
    return f"cd -- {shlex.quote(str(job.cwd))} || exit 125\n{command}\n"


def module_load_order(modules: Path, names: Sequence[str]) -> list[Path]:
    """The module files to insmod, dependencies first; built-in ones are left out."""
    dependencies: dict[str, list[str]] = {}
    for line in (modules / "modules.dep").read_text().splitlines():
        target, _, needs = line.partition(":")
        dependencies[target] = needs.split()
    by_name = {_module_name(path): path for path in dependencies}
    builtin_list = modules / "modules.builtin"
    builtin = (
        {_module_name(path) for path in builtin_list.read_text().split()}
        if builtin_list.is_file()
        else set()
    )
    order: list[str] = []

    def visit(path: str) -> None:
        if path not in order:
            for dependency in dependencies.get(path, []):
                visit(dependency)
            order.append(path)

    for name in names:
        if name in builtin:
            continue
        if name not in by_name:
            raise HostVmError(f"{modules} has no {name} module")
        visit(by_name[name])
    return [modules / path for path in order]


def _module_name(path: str) -> str:
    return Path(path).name.split(".ko")[0].replace("-", "_")


def _module_bytes(path: Path) -> bytes:
    for suffix, decompress in _DECOMPRESS.items():
        if path.name.endswith(suffix):
            return decompress(path.read_bytes())
    raise HostVmError(f"cannot load {path}: busybox insmod needs it plain, .xz or .gz")


def build_initramfs(kernel: GuestKernel, busybox: Path, job: GuestJob) -> bytes:
    """An uncompressed newc cpio archive: the kernel unpacks it without any decompressor."""
    archive = _Cpio()
    for directory in ("bin", "dev", "lower", "modules", "newroot", "proc", "rw", "sys"):
        archive.directory(directory)
    archive.device("dev/console", major=5, minor=1)
    archive.file("bin/busybox", busybox.read_bytes(), executable=True)
    archive.file("init", _STAGE1.encode(), executable=True)
    archive.file("stage2", _STAGE2.encode())
    archive.file("job", job_script(job).encode())
    results = "" if job.results is None else str(job.results)
    config = f"RESULTS={shlex.quote(results)}\nVM_HOSTNAME={shlex.quote(job.hostname)}\n"
    archive.file("config", config.encode())
    names = []
    for path in module_load_order(kernel.modules, MODULES):
        name = path.name.split(".ko")[0] + ".ko"
        archive.file(f"modules/{name}", _module_bytes(path))
        names.append(name)
    archive.file("modules/order", "".join(f"{name}\n" for name in names).encode())
    return archive.close()


class _Cpio:
    """Just the newc format (kernel Documentation/driver-api/early-userspace/buffer-format)."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self._inode = 0

    def directory(self, name: str) -> None:
        self._entry(name, stat.S_IFDIR | 0o755, b"", nlink=2)

    def file(self, name: str, data: bytes, *, executable: bool = False) -> None:
        self._entry(name, stat.S_IFREG | (0o755 if executable else 0o644), data)

    def device(self, name: str, *, major: int, minor: int) -> None:
        self._entry(name, stat.S_IFCHR | 0o600, b"", rdev=(major, minor))

    def close(self) -> bytes:
        self._entry("TRAILER!!!", 0, b"", nlink=1)
        return b"".join(self._chunks)

    def _entry(
        self, name: str, mode: int, data: bytes, *, nlink: int = 1, rdev: tuple[int, int] = (0, 0)
    ) -> None:
        self._inode += 1
        encoded = name.encode() + b"\0"
        fields = (self._inode, mode, 0, 0, nlink, 0, len(data), 0, 0, *rdev, len(encoded), 0)
        header = b"070701" + b"".join(b"%08X" % field for field in fields)
        self._chunks += [header, encoded, _pad(len(header) + len(encoded)), data, _pad(len(data))]


def _pad(length: int) -> bytes:
    return b"\0" * (-length % 4)
