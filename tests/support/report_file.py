"""A pytest plugin for a run inside a VM: every test report, serialised, one JSON per line.

`tests/support/kernel.py` runs the kernel-SRv6 tests in a VM when the host kernel lacks
SRv6, with `-p tests.support.report_file --report-file PATH`; the host then replays these
reports as its own (pytest's `pytest_report_to_serializable` / `_from_serializable`, the
hooks pytest-xdist moves reports between processes with), so a test that ran in the VM
counts, fails and prints exactly as if it had run on the host.
"""

from __future__ import annotations

import json
from typing import IO, Any

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--report-file", help="write each test report here as a JSON line")


class _Writer:
    def __init__(self, config: pytest.Config, out: IO[str]) -> None:
        self._config = config
        self._out = out

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        data: Any = self._config.hook.pytest_report_to_serializable(
            config=self._config, report=report
        )
        self._out.write(json.dumps(data) + "\n")
        self._out.flush()  # the VM may be stopped at any moment: each line is whole

    def pytest_unconfigure(self) -> None:
        self._out.close()


def pytest_configure(config: pytest.Config) -> None:
    path = config.getoption("--report-file")
    if path:
        out = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed at unconfigure
        config.pluginmanager.register(_Writer(config, out), "report-file-writer")
