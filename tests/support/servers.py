"""What the real servers the tests start (etcd, Prometheus) have in common."""

from __future__ import annotations

import ctypes
import signal
import socket
import subprocess
from pathlib import Path
from types import TracebackType
from typing import Self


class ServerProcess:
    """A real server for the length of a `with` block. Subclasses start it in `_start`
    (raising RuntimeError when it does not come up) and remove every trace in `_stop`."""

    def _start(self) -> None:
        raise NotImplementedError

    def _stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        try:
            # A probed free port can be taken before the server binds it: try fresh ones.
            for attempt in range(3):
                try:
                    self._start()
                    return self
                except RuntimeError:
                    self._stop()
                    if attempt == 2:
                        raise
        except BaseException:
            self._stop()
            raise
        raise AssertionError("unreachable")

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop()


def die_with_parent() -> None:
    # Runs in the child before exec: a test run killed hard (timeout, ^C twice) must not
    # leave the server running. Linux ties this to the thread that started it.
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def stop(process: subprocess.Popen[bytes], timeout: float) -> None:
    """TERM, then KILL after `timeout` seconds; always reaped."""
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def tail(path: Path, size: int) -> str:
    return path.read_text(errors="replace")[-size:] if path.exists() else ""
