"""What the lab needs of the host and of its options, checked before it builds anything."""

from __future__ import annotations

import os
import shutil

from srv6ctl.dataplane.kernel_caps import probe_kernel
from srv6ctl.lab import vpp
from srv6ctl.lab.netns import LabError
from srv6ctl.lab.state import LabOptions

MAX_NODES = 64


def kernel_problem() -> str | None:
    """Why this host's kernel cannot carry the lab's kernel dataplane, or None (probed in a
    scratch namespace: the agents would stop with the same line)."""
    return probe_kernel().unsupported()


def check_requirements(options: LabOptions) -> None:
    """Refuse early, with the reason, what the build would fail on half way."""
    if options.dataplane == "vpp":
        vpp.check_client(vpp.find_binary())
    if os.geteuid() != 0:
        raise LabError("the lab needs root (network namespaces, veth pairs, SRv6 routes)")
    for tool, why in (("ip", "iproute2"), ("nft", "nftables: the pods' port rewrites")):
        if shutil.which(tool) is None:
            raise LabError(f"`{tool}` is not installed ({why})")
    if not 1 <= options.nodes <= MAX_NODES:
        raise LabError(f"--nodes {options.nodes} must be between 1 and {MAX_NODES}")
    if not 1 <= options.pods_per_node <= 50:
        raise LabError(f"--pods-per-node {options.pods_per_node} must be between 1 and 50")
    if options.nodes * options.pods_per_node < 2:
        raise LabError("the lab needs at least two pods: a client and a backend")
    if not options.prefix.replace("-", "").isalnum() or len(options.prefix) > 20:
        raise LabError(f"--prefix {options.prefix!r}: letters, digits and '-', at most 20")
    if options.kubernetes is not None:
        from srv6ctl.lab import kubernetes_lab  # only this mode needs its modules

        kubernetes_lab.check(options.kubernetes)
    if options.dataplane == "kernel":  # last: the probe is the one check that takes time
        problem = kernel_problem()
        if problem is not None:
            raise LabError(
                f"{problem}. `srv6ctl lab vm` runs this lab in a VM with Debian's own kernel "
                "instead (`make lab` does that on such a host)"
            )
