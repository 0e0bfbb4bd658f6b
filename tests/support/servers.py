"""What the real servers the tests start (etcd, Prometheus) have in common."""

from __future__ import annotations

import ctypes
import signal
import socket
import subprocess
from pathlib import Path


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
