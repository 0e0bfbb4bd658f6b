"""The lab's background processes: started detached, recorded, and stopped by their id only.

A record is (pid, start time): `/proc/<pid>/stat` field 22 is fixed for a process's life,
so a pid reused by an unrelated process after ours died is never signalled. Leftovers of
a crashed build (a process started but not yet recorded) are found by the environment
variable every lab process is started with, `SRV6CTL_LAB=<state directory>`; nothing is
ever matched by program name or command line (a `srv6ctl verify --state-dir ...` running
beside `lab down` names the directory too, and is not the lab's).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from srv6ctl.lab.state import ProcessRecord


def start_time(pid: int) -> int | None:
    """Field 22 of /proc/<pid>/stat (after the parenthesised command, which may hold
    spaces), or None when the process is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[19])  # fields[0] is field 3 (state)


def alive(record: ProcessRecord | None) -> bool:
    if record is None:
        return False
    started = start_time(record.pid)
    if started != record.start_time:
        return False
    # A zombie (exited, not yet reaped by its parent) is not serving anything. A process
    # reaped between the open and the read (another thread's `_reap`) reads as ESRCH.
    with contextlib.suppress(FileNotFoundError, ProcessLookupError):
        state = Path(f"/proc/{record.pid}/stat").read_text()
        return state[state.rindex(")") + 2] != "Z"
    return False


LAB_ENV = "SRV6CTL_LAB"


def spawn(argv: Sequence[str], log: Path, *, lab: Path) -> ProcessRecord:
    """Start `argv` in its own session (it outlives `lab up`), output appended to `log`,
    marked with `SRV6CTL_LAB=<lab>` in its environment."""
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, LAB_ENV: str(lab)}
    with open(log, "ab") as out:
        process = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
            env=env,
        )
    started = start_time(process.pid)
    # Popen keeps a handle to reap it; once this CLI exits, init adopts it instead.
    return ProcessRecord(pid=process.pid, start_time=started or 0, argv=list(argv), log=str(log))


def stop(records: Sequence[ProcessRecord], timeout: float = 5.0) -> list[int]:
    """SIGTERM every live record, SIGKILL what is left after `timeout`; the pids stopped."""
    live = [r for r in records if alive(r)]
    for record in live:
        with contextlib.suppress(ProcessLookupError):
            os.kill(record.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(alive(r) for r in live):
        _reap()
        time.sleep(0.05)
    for record in live:
        if alive(record):
            with contextlib.suppress(ProcessLookupError):
                os.kill(record.pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(alive(r) for r in live):
        _reap()
        time.sleep(0.02)
    return [r.pid for r in live]


def _reap() -> None:
    # Children of this process (started by this very CLI run) become zombies when they
    # exit; collect them so `alive` sees them go.
    with contextlib.suppress(ChildProcessError):
        while True:
            pid, _ = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                return


def lab_processes(state_dir: Path) -> Iterator[ProcessRecord]:
    """Live processes started with `SRV6CTL_LAB=<state_dir>` (leftovers included)."""
    marker = f"{LAB_ENV}={state_dir}".encode()
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if marker not in environ:
            continue
        pid = int(entry.name)
        started = start_time(pid)
        if started is not None:
            args = [a.decode(errors="replace") for a in argv if a]
            yield ProcessRecord(pid=pid, start_time=started, argv=args, log="")


def log_tail(path: str | Path, lines: int = 15) -> str:
    try:
        text = Path(path).read_text(errors="replace")
    except FileNotFoundError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])
