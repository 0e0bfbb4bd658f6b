"""The kernel column where this host's kernel cannot give it: the suite's own kernel run,
inside a VM booted from Debian's cloud kernel over this host's root (srv6ctl.hostvm, as
`make test` and `srv6ctl lab vm` use it), read back as results for the same report.

The run inside is `srv6ctl conformance --target kernel --json` with the same cases; its
JSON line is turned back into `Result`s by case id, so the VM's column sits beside the
host's (VPP, a lab node) in one table.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from srv6ctl.conformance.cases import CASES
from srv6ctl.conformance.model import Case, Result, Verdict


def kernel_in_vm(cases: Sequence[Case]) -> tuple[str, list[Result]]:
    """Run the kernel target in a VM on `cases`: (the column's name, its results).
    HostVmError when the VM cannot run, RuntimeError when the run inside gave no report."""
    from srv6ctl.hostvm import ensure_guest_kernel, run_in_vm

    kernel = ensure_guest_kernel()
    argv = [sys.executable, "-m", "srv6ctl.cli", "conformance", "--target", "kernel", "--json"]
    for case in cases:
        argv += ["--case", case.id]
    lines: list[str] = []
    status = run_in_vm(argv, kernel=kernel, cwd=Path.cwd(), output=lines.append)
    # The report (`report.as_json`: indented) is the output's last top-level object.
    start = next((i for i in range(len(lines) - 1, -1, -1) if lines[i].rstrip() == "{"), None)
    end = next((i for i in range(len(lines) - 1, -1, -1) if lines[i].rstrip() == "}"), None)
    if start is None or end is None or end < start:
        tail = "\n".join(lines[-10:])
        raise RuntimeError(f"the kernel run in the VM gave no report (exit {status}):\n{tail}")
    ((_, rows),) = json.loads("\n".join(lines[start : end + 1])).items()
    return f"linux {kernel.release} (VM)", results_of(rows)


def results_of(rows: Sequence[dict[str, Any]]) -> list[Result]:
    """The report's JSON rows (`report.as_json`) as results of this suite's cases."""
    by_id = {case.id: case for case in CASES}
    return [
        Result(
            by_id[row["id"]],
            Verdict(row["verdict"]),
            str(row["detail"]),
            str(row.get("sent", "")),
            tuple(str(s) for s in row.get("seen", ())),
        )
        for row in rows
    ]


__all__ = ["kernel_in_vm", "results_of"]
