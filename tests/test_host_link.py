"""The kernel's end of a VPP node's host interconnect (srv6ctl/dataplane/host_link.py),
in a throw-away namespace: any kernel."""

from __future__ import annotations

import ipaddress
import subprocess
import time

import pytest

from srv6ctl.dataplane import host_link
from srv6ctl.dataplane.host_link import HostLink, HostRoute
from tests.support.netns import NetnsFactory

pytestmark = pytest.mark.netns


def test_a_second_ensure_writes_nothing(netns_factory: NetnsFactory) -> None:
    """Routes given no metric are kept by the kernel at 1024 (IPv6): read back, they are
    the same routes, not others to delete and add again on every pass (which flapped the
    node's routes to the pods and Services every few seconds on VPP nodes)."""
    node = netns_factory()
    link = HostLink(
        name="vpphost0",
        peer="vpphost0v",
        mac="02:fe:00:00:00:01",
        gateway=ipaddress.IPv6Address("fe80::1"),
        gateway_mac="02:fe:00:00:00:02",
        addresses=(ipaddress.ip_address("fd00:ff::1"), ipaddress.ip_address("192.0.2.1")),
        routes=(
            HostRoute(ipaddress.ip_network("fd00:10::/48")),
            HostRoute(ipaddress.ip_network("10.96.0.0/16")),
            HostRoute(ipaddress.ip_network("::/0"), 4096),
        ),
    )
    assert host_link.ensure(link, node.name)
    routes = node.ip("-6", "route", "show", "dev", "vpphost0", "proto", "92")
    assert "fd00:10::/48 via fe80::1" in routes and "metric 1024" in routes
    assert "10.96.0.0/16 via inet6 fe80::1" in node.ip("route", "show", "dev", "vpphost0")
    monitor = subprocess.Popen(
        ["ip", "netns", "exec", node.name, "ip", "-o", "monitor", "route"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(0.2)  # the monitor listening before the passes (what it sees is checked)
        for _ in range(3):
            assert not host_link.ensure(link, node.name)
    finally:
        monitor.terminate()
    seen = monitor.communicate()[0]
    assert seen == "", seen
