"""`srv6ctl lab session` and `srv6ctl lab vm`: the whole lab in one go, and what `make lab`
does on a host whose kernel lacks SRv6.

Where the host kernel has SRv6 the session runs here; where it lacks it, in the VM (the
same command a newcomer's `make lab` runs there). Either way: the lab comes up, `verify`
passes, the user's command runs against that lab, and nothing of it is left.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from srv6ctl.hostvm import vm_unavailable
from srv6ctl.lab import netns as lab_netns
from tests.support.kernel import host_kernel_problem
from tests.support.netns import require_netns

PREFIX = "s6session"


@pytest.mark.slow
@pytest.mark.timeout(900)  # a fresh machine installs the guest kernel first
def test_a_session_brings_the_lab_up_verifies_runs_a_command_and_takes_it_down() -> None:
    require_netns()
    in_vm = host_kernel_problem() is not None
    if in_vm and (why := vm_unavailable()) is not None:
        pytest.skip(f"the host kernel lacks SRv6 and no VM can run here: {why}")
    command = "vm" if in_vm else "session"
    shape = ["--nodes", "2", "--pods-per-node", "1", "--prefix", PREFIX]
    status = [sys.executable, "-m", "srv6ctl.lab", "status", "--json"]
    done = subprocess.run(
        [sys.executable, "-m", "srv6ctl.lab", command, *shape, "--", *status],
        capture_output=True,
        text=True,
        timeout=840,
    )
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert "lab is up: 2 nodes, 2 pods" in out
    assert re.search(r"^all \d+ checks passed$", out, re.MULTILINE), out
    (shown,) = [line for line in out.splitlines() if line.startswith("{")]
    assert sorted(n["name"] for n in json.loads(shown)["nodes"]) == ["n1", "n2"]
    assert "lab down:" in out
    if in_vm:
        assert "running the lab in a VM on Debian's kernel" in out
    # Inside the VM nothing could reach the host; here, the session removed it all.
    assert not [n for n in lab_netns.list_netns() if n.startswith(PREFIX + "-")]
