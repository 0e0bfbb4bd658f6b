"""A real Prometheus (Debian's `prometheus`) on 127.0.0.1 with a temporary data dir.

`PrometheusServer(jobs)` scrapes each job's 127.0.0.1 target every second; `query()` asks
its HTTP API, `wait_for()` polls a query until a condition on its result holds. Process
and directory are removed on exit, whatever happened. Without the binary, `require()`
skips the calling test, and fails it under CI=true.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from tests.support.servers import ServerProcess, die_with_parent, free_port, stop, tail

PROMETHEUS = os.environ.get("SRV6CTL_PROMETHEUS", "/usr/bin/prometheus")
PROMTOOL = os.environ.get("SRV6CTL_PROMTOOL", "/usr/bin/promtool")

Vector = list[tuple[dict[str, str], float]]


def require(binary: str) -> None:
    """Skip when `binary` is missing; under CI=true, fail instead."""
    if os.access(binary, os.X_OK):
        return
    reason = f"{binary} not installed (apt install prometheus)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; CI must run the telemetry tests", pytrace=False)
    pytest.skip(reason)


class PrometheusServer(ServerProcess):
    """Prometheus scraping `jobs` ({job name: "127.0.0.1:port"}) every second."""

    def __init__(self, jobs: Mapping[str, str], start_timeout: float = 15.0) -> None:
        self.jobs = dict(jobs)
        self.start_timeout = start_timeout
        self.url = ""
        self._process: subprocess.Popen[bytes] | None = None
        self._dir: Path | None = None

    def _start(self) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="srv6ctl-prometheus-"))
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": [target]}]}
                for job, target in self.jobs.items()
            ],
        }
        (self._dir / "prometheus.yml").write_text(yaml.safe_dump(config))
        listen = f"127.0.0.1:{free_port()}"
        self.url = f"http://{listen}"
        command = [
            PROMETHEUS,
            f"--config.file={self._dir / 'prometheus.yml'}",
            f"--storage.tsdb.path={self._dir / 'data'}",
            f"--web.listen-address={listen}",
            "--log.level=warn",
        ]
        with open(self._dir / "prometheus.log", "wb") as log:
            self._process = subprocess.Popen(
                command,
                stdout=subprocess.DEVNULL,
                stderr=log,
                cwd=self._dir,
                preexec_fn=die_with_parent if sys.platform == "linux" else None,
            )
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"prometheus exited with {self._process.returncode}: {self.log()}"
                )
            try:
                if requests.get(f"{self.url}/-/ready", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"prometheus not ready after {self.start_timeout}s: {self.log()}")

    def _stop(self) -> None:
        if self._process is not None:
            stop(self._process, timeout=10)
            self._process = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def log(self) -> str:
        if self._dir is None:
            return ""
        return tail(self._dir / "prometheus.log", 3000)

    def api(self, path: str, **params: str) -> Any:
        response = requests.get(f"{self.url}/api/v1/{path}", params=params, timeout=5)
        body = response.json()
        if body.get("status") != "success":
            raise AssertionError(f"{path} {params}: {body}")
        return body["data"]

    def query(self, expr: str) -> Vector:
        """An instant query's result as [(labels, value)]."""
        data = self.api("query", query=expr)
        if data["resultType"] == "scalar":
            return [({}, float(data["result"][1]))]
        return [(item["metric"], float(item["value"][1])) for item in data["result"]]

    def wait_for(
        self, expr: str, condition: Callable[[Vector], bool], timeout: float = 10.0
    ) -> Vector:
        """Poll `expr` until `condition(result)` holds; fail with the last result if not."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.query(expr)
            if condition(result):
                return result
            if time.monotonic() > deadline:
                targets = self.api("targets")["activeTargets"]
                health = [(t["scrapeUrl"], t["health"], t["lastError"]) for t in targets]
                raise AssertionError(f"{expr}: still {result} after {timeout}s; targets {health}")
            time.sleep(0.2)
