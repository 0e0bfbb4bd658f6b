"""Tests that need the kernel's SRv6 say so: `@pytest.mark.kernel_srv6`; this plugin decides
where they run.

- The host kernel has SRv6 (seg6/seg6local lightweight tunnels): here, as every test.
- It lacks them (built without `CONFIG_IPV6_SEG6_LWTUNNEL`, as some cloud microVM kernels
  are): the tests marked `kernel_srv6(vm=True)` — the packet tests of every kernel behaviour
  and one whole lab — run in one VM booted with Debian's own kernel over this host's file
  system (`srv6ctl.hostvm`), before the other tests, and their reports are replayed here
  as if they had run here (they pass, fail and print the same); the rest are skipped, and
  the summary says how many, why, and how to run them all. Never a failure for want of a
  kernel feature, never a silent skip.

`SRV6CTL_KERNEL_TESTS` overrides the choice:
- `vm`: the `vm=True` set in a VM, even on a host whose kernel has SRv6;
- `vm-all`: every `kernel_srv6` test in a VM (what `make test-kernels` runs, once per
  guest kernel, `SRV6CTL_GUEST_KERNEL=<release>` picking it);
- `skip`: skip them all; `native`: run them here whatever the kernel (they fail without it).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from srv6ctl.dataplane.kernel_caps import LWTUNNEL_OPTION, probe_kernel
from srv6ctl.hostvm import (
    HostVmError,
    ensure_guest_kernel,
    guest_kernels,
    run_in_vm,
    vm_unavailable,
)

MARKER = "kernel_srv6"
MODE_ENV = "SRV6CTL_KERNEL_TESTS"
KERNEL_ENV = "SRV6CTL_GUEST_KERNEL"
MODES = ("auto", "vm", "vm-all", "skip", "native")
VM_TIMEOUT_S = 1800.0


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{MARKER}(vm=False): needs the kernel's SRv6 lightweight tunnels; vm=True: also one "
        "of the tests run in a VM where the host kernel lacks them (tests/support/kernel.py)",
    )
    config.pluginmanager.register(KernelTests(config), "kernel-srv6")


def host_kernel_problem() -> str | None:
    """Why this host's kernel cannot run the kernel-SRv6 tests, or None."""
    return probe_kernel().unsupported()


class KernelTests:
    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.reason: str | None = None  # why they do not run here
        self.vm_items: list[pytest.Item] = []
        self.skipped = 0
        self.vm_problem: str | None = None  # why the VM did not run them
        self.vm_kernel = ""
        self.vm_seconds = 0.0
        self.reports: dict[str, list[pytest.TestReport]] = {}

    # --- where each marked test runs ---------------------------------------------------

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        marked = [i for i in items if i.get_closest_marker(MARKER) is not None]
        mode = os.environ.get(MODE_ENV, "auto")
        if mode not in MODES:
            raise pytest.UsageError(f"{MODE_ENV}={mode}: one of {', '.join(MODES)}")
        if not marked or mode == "native" or os.environ.get("SRV6CTL_IN_VM"):
            return
        if mode == "auto":
            if os.geteuid() != 0:
                return  # the namespace fixtures skip them, with that reason
            self.reason = host_kernel_problem()
            if self.reason is None:
                return
        else:
            self.reason = f"{MODE_ENV}={mode}"
        if mode == "vm-all":
            chosen = marked
        elif mode == "skip":
            chosen = []
        else:
            chosen = [i for i in marked if _in_vm_set(i)]
        if chosen:
            self.vm_problem = vm_unavailable()
            if self.vm_problem is not None:
                chosen = []
        where = (
            f"no VM: {self.vm_problem}"
            if self.vm_problem
            else f"not in the VM set ({MODE_ENV}=vm-all runs every one in a VM)"
        )
        short = (
            f"host kernel without {LWTUNNEL_OPTION}"
            if LWTUNNEL_OPTION in self.reason
            else self.reason
        )
        for item in marked:
            if item not in chosen:
                item.add_marker(pytest.mark.skip(reason=f"kernel SRv6: {short}; {where}"))
                self.skipped += 1
        self.vm_items = chosen
        # Reported first, as they ran: a test run here after one of them then never finds
        # its module's set-up half done (a replayed report sets nothing up or down).
        items[:] = chosen + [i for i in items if i not in chosen]

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtestloop(self, session: pytest.Session) -> None:
        # Before the loop, not inside the first test: pytest-timeout's per-test limit must
        # not cover the whole VM run.
        if self.vm_items and not session.config.option.collectonly:
            self._run_in_vm()

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_protocol(self, item: pytest.Item) -> bool | None:
        if not self.vm_items or item not in self.vm_items:
            return None
        hook = item.ihook
        hook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
        for report in self.reports.get(item.nodeid) or _did_not_run(item, self.vm_problem):
            hook.pytest_runtest_logreport(report=report)
        hook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
        return True

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.reason is None:
            return
        line = f"kernel SRv6: {self.reason}"
        if self.vm_items:
            line += (
                f"; {len(self.vm_items)} test(s) ran in a VM on Debian's {self.vm_kernel} "
                f"({self.vm_seconds:.0f} s)"
            )
        if self.skipped:
            line += f"; {self.skipped} skipped ({MODE_ENV}=vm-all runs them all in a VM)"
        terminalreporter.write_line(line, yellow=True, bold=True)

    # --- the VM run ---------------------------------------------------------------------

    def _run_in_vm(self) -> None:
        writer = self.config.pluginmanager.get_plugin("terminalreporter")

        def say(line: str) -> None:
            if writer is not None:
                writer.write_line(f"[vm] {line}")

        wanted = os.environ.get(KERNEL_ENV)
        try:
            if wanted:
                found = [k for k in guest_kernels() if k.release == wanted]
                if not found:
                    raise HostVmError(f"{KERNEL_ENV}={wanted}: no such guest kernel installed")
                kernel = found[0]
            else:
                kernel = ensure_guest_kernel()
        except HostVmError as err:
            self.vm_problem = str(err)
            return
        self.vm_kernel = kernel.release
        say(f"{len(self.vm_items)} kernel-SRv6 test(s) in a VM on {kernel.release} ({self.reason})")
        with tempfile.TemporaryDirectory(prefix="s6t-vm-") as tmp:
            results = Path(tmp)
            report_file = results / "reports.jsonl"
            argv = [
                sys.executable,
                "-m",
                "pytest",
                "-v",  # a line per test as it ends: the progress a 10-minute VM run needs
                "-p",
                "no:cacheprovider",
                "-p",
                "tests.support.report_file",
                "--report-file",
                str(report_file),
                *(item.nodeid for item in self.vm_items),
            ]
            start = time.monotonic()
            try:
                run_in_vm(
                    argv,
                    kernel=kernel,
                    cwd=self.config.rootpath,
                    env={MODE_ENV: "native"},
                    results=results,
                    timeout=VM_TIMEOUT_S,
                    output=say,
                )
            except HostVmError as err:
                self.vm_problem = str(err)
            self.vm_seconds = time.monotonic() - start
            if report_file.exists():
                for line in report_file.read_text().splitlines():
                    report = self.config.hook.pytest_report_from_serializable(
                        config=self.config, data=json.loads(line)
                    )
                    if isinstance(report.longrepr, list):  # a skip's (path, line, reason):
                        report.longrepr = tuple(report.longrepr)  # JSON made it a list
                    self.reports.setdefault(report.nodeid, []).append(report)
        if not self.reports and self.vm_problem is None:
            self.vm_problem = "the VM's pytest reported nothing (see the [vm] lines above)"


def _in_vm_set(item: pytest.Item) -> bool:
    marker = item.get_closest_marker(MARKER)
    return bool(marker is not None and marker.kwargs.get("vm"))


def _did_not_run(item: pytest.Item, problem: str | None) -> list[pytest.TestReport]:
    why = f"ran in no VM: {problem or 'its report is missing (the VM stopped early?)'}"
    return [
        pytest.TestReport(item.nodeid, item.location, {}, "passed", None, "setup"),
        pytest.TestReport(item.nodeid, item.location, {}, "failed", why, "call"),
        pytest.TestReport(item.nodeid, item.location, {}, "passed", None, "teardown"),
    ]
