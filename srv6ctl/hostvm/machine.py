"""Run one command in a VM on the host's own root: boot, stream its output, return its status.

Owns the processes of one run (a virtiofsd per share, one qemu) and a private 0700 temp dir
for their sockets and logs, the initramfs and the guest's console log. All are gone when
`run_in_vm` returns or raises (timeout, exception, Ctrl-C); if this process is killed
outright, the kernel kills them too (setpriv --pdeathsig), leaving only the temp dir.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from srv6ctl.hostvm.host import GuestKernel, HostTools, HostVmError, ensure_guest_kernel, host_tools
from srv6ctl.hostvm.initramfs import (
    OUTPUT_PORT,
    RESULTS_TAG,
    ROOT_TAG,
    STATUS_PORT,
    GuestJob,
    build_initramfs,
)

_SOCKET_WAIT = 10.0  # seconds for a virtiofsd to listen; ~10 ms when healthy
_STOP_WAIT = 5.0
_DAEMON_GRACE = 2.0  # a virtiofsd ends when qemu hangs up; qemu is gone well within this


@dataclass(frozen=True)
class _Share:
    tag: str
    source: Path
    socket: Path
    cache: str  # virtiofsd's: "always" for the read-only root, "auto" for results
    read_only: bool

    @property
    def log(self) -> Path:
        return self.socket.with_suffix(".log")


def run_in_vm(
    argv: Sequence[str],
    *,
    kernel: GuestKernel | None = None,
    cwd: Path,
    env: Mapping[str, str] | None = None,
    results: Path | None = None,
    memory_mib: int = 4096,
    cpus: int = 2,
    timeout: float = 1800,
    output: Callable[[str], None] | None = None,
) -> int:
    """Run `argv` as root in `cwd` inside a VM and return its exit status.

    The command gets our environment plus `env` and SRV6CTL_IN_VM=1, stdin /dev/null, and
    stdout and stderr merged; `output` receives each line as it comes (default: our stdout).
    Only `results` is written on the host. Raises HostVmError if the VM did not boot, died
    or ran out of `timeout` seconds.
    """
    kernel = kernel if kernel is not None else ensure_guest_kernel()
    tools = host_tools()
    if not isinstance(tools, HostTools):
        raise HostVmError(f"missing {' '.join(tools)}: run scripts/vm-deps.sh")
    if not cwd.is_dir():
        raise HostVmError(f"working directory {cwd} does not exist")
    if results is not None and not results.is_dir():
        raise HostVmError(f"results directory {results} does not exist")
    environ = {
        # Through a pipe Python block-buffers; whoever waits wants progress line by line.
        "PYTHONUNBUFFERED": "1",
        **os.environ,
        **(env or {}),
        "SRV6CTL_IN_VM": "1",
    }
    results = results.resolve() if results is not None else None
    job = GuestJob.of(argv, cwd.resolve(), environ, results, socket.gethostname())
    deadline = time.monotonic() + timeout  # installing packages above does not count
    with _private_dir() as workdir, contextlib.ExitStack() as processes:
        initrd = workdir / "initramfs.cpio"
        initrd.write_bytes(build_initramfs(kernel, tools.busybox, job))
        view = workdir / "root-view"
        view.mkdir()
        shares = [_Share(ROOT_TAG, view, workdir / "root.sock", "always", read_only=True)]
        if results is not None:
            shares.append(_Share(RESULTS_TAG, results, workdir / "results.sock", "auto", False))
        daemons = {share.tag: _start_virtiofsd(processes, tools, share) for share in shares}
        for share in shares:
            _wait_for_socket(share, daemons[share.tag])
        read_end, write_end = os.pipe()
        processes.callback(os.close, read_end)
        try:
            qemu = _spawn(
                processes,
                tools,
                _qemu_argv(tools, kernel, initrd, shares, workdir, write_end, memory_mib, cpus),
                log=workdir / "qemu.log",
                pass_fds=(write_end,),
            )
        finally:
            os.close(write_end)

        def check() -> None:
            _check_daemons(qemu, daemons, shares)
            if time.monotonic() > deadline:
                raise HostVmError(f"the VM did not finish within {timeout:g} s")

        _stream_lines(read_end, check, output or _print_line)
        while qemu.poll() is None:
            check()
            time.sleep(0.05)
        if qemu.returncode != 0:
            raise HostVmError(f"qemu exited {qemu.returncode}: {_last_line(workdir / 'qemu.log')}")
        return _exit_status(workdir)


def _print_line(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


@contextlib.contextmanager
def _private_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="srv6ctl-vm-"))  # mkdtemp makes it 0700
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _spawn(
    processes: contextlib.ExitStack,
    tools: HostTools,
    argv: Sequence[str],
    *,
    log: Path,
    pass_fds: tuple[int, ...] = (),
) -> subprocess.Popen[bytes]:
    with log.open("ab") as log_file:
        # Its own session: a Ctrl-C at the terminal reaches only us, and we stop it in order.
        process = subprocess.Popen(
            [str(tools.setpriv), "--pdeathsig", "KILL", "--", *argv],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            pass_fds=pass_fds,
            start_new_session=True,
        )
    processes.callback(_stop, process)
    return process


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM then SIGKILL to the process's own group (C virtiofsd forks a sandboxed child,
    which its parent's death also ends: it asks for PR_SET_PDEATHSIG)."""
    if process.poll() is not None:
        return  # its group id may belong to someone else by now
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(_STOP_WAIT)
            return
        except subprocess.TimeoutExpired:
            continue


def _virtiofsd_argv(virtiofsd: Path, share: _Share) -> list[str]:
    usage = subprocess.run([str(virtiofsd), "--help"], capture_output=True, text=True, check=False)
    if "--shared-dir" in usage.stdout + usage.stderr:
        # The Rust daemon (hosts with qemu >= 8).
        return [str(virtiofsd), f"--socket-path={share.socket}",
                f"--shared-dir={share.source}", f"--cache={share.cache}"]  # fmt: skip
    return [str(virtiofsd), "-f", f"--socket-path={share.socket}", "-o", f"source={share.source}",
            "-o", f"cache={share.cache}", "-o", "log_level=warn"]  # fmt: skip


def _start_virtiofsd(
    processes: contextlib.ExitStack, tools: HostTools, share: _Share
) -> subprocess.Popen[bytes]:
    daemon = _virtiofsd_argv(tools.virtiofsd, share)
    if share.read_only:
        view = [sys.executable, "-m", "srv6ctl.hostvm.readonly_view", str(share.source)]
        daemon = view + daemon
    return _spawn(processes, tools, daemon, log=share.log)


def _wait_for_socket(share: _Share, daemon: subprocess.Popen[bytes]) -> None:
    give_up = time.monotonic() + _SOCKET_WAIT
    while not share.socket.exists():
        if daemon.poll() is not None or time.monotonic() > give_up:
            why = _last_line(share.log)
            raise HostVmError(f"virtiofsd for {share.source} did not start: {why}")
        time.sleep(0.01)


def _check_daemons(
    qemu: subprocess.Popen[bytes],
    daemons: Mapping[str, subprocess.Popen[bytes]],
    shares: Sequence[_Share],
) -> None:
    """A guest whose virtiofsd died hangs on its next file access: fail now, not at timeout."""
    for share in shares:
        if daemons[share.tag].poll() is None or qemu.poll() is not None:
            continue
        try:
            qemu.wait(_DAEMON_GRACE)
        except subprocess.TimeoutExpired:
            why = _last_line(share.log)
            raise HostVmError(f"virtiofsd for {share.source} died under the VM: {why}") from None


def _accelerator() -> list[str]:
    choice = os.environ.get("SRV6CTL_VM_ACCEL", "")
    if choice not in ("", "kvm", "tcg"):
        raise HostVmError(f"SRV6CTL_VM_ACCEL={choice!r}: expected kvm or tcg")
    if not choice:
        # kvm_pvm (the paravirtual KVM of nested sandboxes) stops a stock Debian kernel at
        # its first emulated instruction ("KVM internal error ... emulation failure").
        usable = os.access("/dev/kvm", os.R_OK | os.W_OK)
        choice = "kvm" if usable and not Path("/sys/module/kvm_pvm").exists() else "tcg"
    if choice == "kvm":
        return ["-accel", "kvm", "-cpu", "host"]
    return ["-accel", "tcg,thread=multi", "-cpu", "max"]


def _qemu_argv(
    tools: HostTools,
    kernel: GuestKernel,
    initrd: Path,
    shares: Sequence[_Share],
    workdir: Path,
    output_fd: int,
    memory_mib: int,
    cpus: int,
) -> list[str]:
    # `pc`, not `microvm`: microvm booted ~0.7 s faster but hung in one boot of three here.
    argv = [
        str(tools.qemu), "-nodefaults", "-no-user-config", "-no-reboot", "-display", "none",
        "-machine", "pc,memory-backend=mem", *_accelerator(),
        "-smp", str(cpus), "-m", f"{memory_mib}M",
        # vhost-user devices need guest memory the daemons can map.
        "-object", f"memory-backend-memfd,id=mem,size={memory_mib}M,share=on",
        "-kernel", str(kernel.image), "-initrd", str(initrd),
        "-append", "console=ttyS0 quiet panic=-1",
        "-chardev", f"file,id=console,path={workdir / 'console.log'}", "-serial", "chardev:console",
        "-device", "virtio-serial-pci",
        "-chardev", f"file,id=output,path=/proc/self/fd/{output_fd}",
        "-device", f"virtserialport,chardev=output,name={OUTPUT_PORT}",
        "-chardev", f"file,id=status,path={workdir / 'status'}",
        "-device", f"virtserialport,chardev=status,name={STATUS_PORT}",
    ]  # fmt: skip
    for share in shares:
        argv += ["-chardev", f"socket,id={share.tag},path={share.socket}",
                 "-device", f"vhost-user-fs-pci,chardev={share.tag},tag={share.tag}"]  # fmt: skip
    return argv


def _stream_lines(read_end: int, check: Callable[[], None], output: Callable[[str], None]) -> None:
    """Hand each line to `output` as the guest prints it, until qemu closes the pipe."""
    pending = b""
    with selectors.DefaultSelector() as selector:
        selector.register(read_end, selectors.EVENT_READ)
        while True:
            check()
            if not selector.select(0.5):
                continue
            chunk = os.read(read_end, 65536)
            if not chunk:
                break
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                output(line.decode(errors="replace"))
    if pending:
        output(pending.decode(errors="replace"))


def _exit_status(workdir: Path) -> int:
    status = workdir / "status"
    reported = status.read_text().strip() if status.exists() else ""
    if reported.isdigit():
        return int(reported)
    console = workdir / "console.log"
    raise HostVmError(f"the VM stopped without the command's status: {_last_line(console)}")


def _last_line(log: Path) -> str:
    """The guest's own complaint if it made one, else the log's last line."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return f"no {log.name}"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    ours = [line for line in lines if line.startswith("srv6ctl-vm:")]
    return (ours or lines or [f"{log.name} is empty"])[-1]
