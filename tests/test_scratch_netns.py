"""The capability probe's scratch namespace: empty, separate, and gone with its block."""

from __future__ import annotations

import os

import pytest
from pyroute2 import IPRoute

from srv6ctl.dataplane.kernel_caps import probe_kernel
from srv6ctl.dataplane.nsenter import run_in_netns
from srv6ctl.dataplane.scratch_netns import scratch_netns
from tests.support.netns import require_netns


def _links() -> list[str]:
    with IPRoute() as ipr:
        return [str(link.get_attr("IFLA_IFNAME")) for link in ipr.get_links()]


def test_scratch_namespace_is_fresh_and_leaves_nothing() -> None:
    require_netns()
    mine = os.stat("/proc/thread-self/ns/net").st_ino
    named_before = set(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else set()
    with scratch_netns() as netns:
        assert os.stat(netns).st_ino != mine
        assert run_in_netns(netns, _links) == ["lo"]
        fd_path = netns
    assert not os.path.exists(fd_path)  # the fd holding it is closed: the namespace is gone
    named_after = set(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else set()
    assert named_after == named_before  # no name, no mount
    assert os.stat("/proc/thread-self/ns/net").st_ino == mine  # this thread never moved


@pytest.mark.kernel_srv6
def test_probe_finds_this_kernels_srv6() -> None:
    require_netns()
    capabilities = probe_kernel().capabilities
    assert {"End", "End.DX6", "End.DT6"} <= capabilities.behaviours
