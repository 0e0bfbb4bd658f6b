"""Fixture: a real etcd (Debian etcd-server) on 127.0.0.1 with a temporary data dir.

`EtcdServer()` is a plain context manager (benchmarks use it too); the `etcd_server`
fixture shares one per test session and `etcd_store` hands each test an `EtcdStore` on
an emptied key space. Without etcd the tests are skipped locally and fail under CI=true.
"""

from __future__ import annotations

import base64
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from ipam6.store.etcd import EtcdStore
from tests.support.servers import ServerProcess, die_with_parent, free_port, stop, tail

ETCD_BINARY = os.environ.get("SRV6CTL_ETCD", "/usr/bin/etcd")
_ALL = base64.b64encode(b"\0").decode()


class EtcdServer(ServerProcess):
    """One single-member etcd on free 127.0.0.1 ports; stopped and wiped on exit."""

    def __init__(self, binary: str = ETCD_BINARY, start_timeout: float = 15.0) -> None:
        self.binary = binary
        self.start_timeout = start_timeout
        self.endpoint = ""
        self._process: subprocess.Popen[bytes] | None = None
        self._data_dir: Path | None = None

    def __enter__(self) -> EtcdServer:
        if not os.access(self.binary, os.X_OK):
            raise FileNotFoundError(
                f"etcd binary {self.binary} not found (apt install etcd-server)"
            )
        return super().__enter__()

    def pause(self) -> None:
        """Freeze etcd (SIGSTOP): clients see an outage — connections hang, then time out."""
        assert self._process is not None
        self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self._process is not None
        self._process.send_signal(signal.SIGCONT)

    def _start(self) -> None:
        # tmpfs makes etcd's fsyncs free; etcd 3.4 has no --unsafe-no-fsync yet.
        shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
        self._data_dir = Path(tempfile.mkdtemp(prefix="srv6ctl-etcd-", dir=shm))
        client, peer = free_port(), free_port()
        self.endpoint = f"http://127.0.0.1:{client}"
        peer_url = f"http://127.0.0.1:{peer}"
        command = [
            self.binary,
            "--name=test",
            f"--data-dir={self._data_dir / 'data'}",
            f"--listen-client-urls={self.endpoint}",
            f"--advertise-client-urls={self.endpoint}",
            f"--listen-peer-urls={peer_url}",
            f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=test={peer_url}",
            "--enable-v2=false",
            "--logger=zap",
            "--log-level=error",
        ]
        with open(self._data_dir / "etcd.log", "wb") as log:
            self._process = subprocess.Popen(
                command,
                stdout=subprocess.DEVNULL,
                stderr=log,
                preexec_fn=die_with_parent if sys.platform == "linux" else None,
            )
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"etcd exited with {self._process.returncode}: {self.log()}")
            try:
                health = requests.get(f"{self.endpoint}/health", timeout=1).json()
            except (requests.RequestException, ValueError):
                health = {}
            if health.get("health") == "true":
                return
            time.sleep(0.05)
        raise RuntimeError(f"etcd not healthy after {self.start_timeout}s: {self.log()}")

    def _stop(self) -> None:
        if self._process is not None:
            self._process.send_signal(signal.SIGCONT)  # a paused etcd cannot act on TERM
            stop(self._process, timeout=5)
            self._process = None
        if self._data_dir is not None:
            shutil.rmtree(self._data_dir, ignore_errors=True)
            self._data_dir = None

    def log(self) -> str:
        if self._data_dir is None:
            return ""
        return tail(self._data_dir / "etcd.log", 2000)

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        response = requests.post(f"{self.endpoint}/v3/{path}", json=body, timeout=5)
        response.raise_for_status()
        answer: dict[str, Any] = response.json()
        return answer

    def wipe(self) -> None:
        """Delete every key (revisions keep counting, as they would in production)."""
        self._post("kv/deleterange", {"key": _ALL, "range_end": _ALL})

    def compact(self, revision: int) -> None:
        """Drop the history before `revision` (etcd's maintenance compaction)."""
        self._post("kv/compaction", {"revision": revision, "physical": True})

    def enable_auth(self, password: str) -> None:
        """Create `root` with `password` and turn authentication on (for good)."""
        self._post("auth/user/add", {"name": "root", "password": password})
        self._post("auth/user/grant", {"user": "root", "role": "root"})
        self._post("auth/enable", {})


def require_etcd() -> None:
    """Skip the calling test when etcd is missing; under CI=true, fail it instead."""
    if os.access(ETCD_BINARY, os.X_OK):
        return
    reason = f"etcd not installed at {ETCD_BINARY} (apt install etcd-server)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; CI must run the etcd tests", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def etcd_server() -> Iterator[EtcdServer]:
    require_etcd()
    with EtcdServer() as server:
        yield server


@pytest.fixture
def etcd_store(etcd_server: EtcdServer) -> Iterator[EtcdStore]:
    etcd_server.wipe()
    store = EtcdStore([etcd_server.endpoint], timeout=5.0)
    try:
        yield store
    finally:
        store.close()
