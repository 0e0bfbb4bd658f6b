"""The uplinks accept the node's own IPv4 addresses (srv6ctl/dataplane/local_sources.py):
which devices, what is ours, the guard against spoofing, and putting it all back. The
SRv6 side (End.DX4 delivering such a packet) is in test_kernel_packets.py (needs SRv6)."""

from __future__ import annotations

import ipaddress
import shutil
import time
from pathlib import Path

import pytest
from scapy.layers.inet import ICMP, IP
from scapy.layers.l2 import Ether

from srv6ctl.dataplane import local_sources
from tests.support.netns import Netns, NetnsFactory, PacketPort

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(shutil.which("nft") is None, reason="needs nft"),
]

CLUSTER = [ipaddress.ip_network("10.244.0.0/16"), ipaddress.ip_network("fd00:10::/48")]


def accept_local(node: Netns, device: str) -> str:
    return node.exec("sysctl", "-n", f"net.ipv4.conf.{device}.accept_local").stdout.strip()


def in_echos(node: Netns) -> int:
    lines = [ln.split() for ln in node.exec("cat", "/proc/net/snmp").stdout.splitlines()]
    names, values = (ln for ln in lines if ln[0] == "Icmp:")
    return int(values[names.index("InEchos")])


def test_uplinks_accept_their_own_addresses_guarded_and_cleanup_puts_them_back(
    netns_factory: NetnsFactory,
) -> None:
    node, outside = netns_factory(), netns_factory()
    netns_factory.veth(outside, "o0", node, "up0")  # the uplink: the node's addresses
    netns_factory.veth(outside, "o1", node, "up1")  # an IPv6-only uplink: SRv6 arrives there
    netns_factory.veth(outside, "o2", node, "pod0")  # a pod's node end: the pods' gateway
    netns_factory.veth(outside, "o3", node, "mgmt0")  # accepts local sources already
    for dev, address in (
        ("up0", "192.0.2.1/24"),
        ("up1", "2001:db8:7::1/64"),
        ("pod0", "10.244.1.1/32"),
        ("mgmt0", "198.51.100.1/24"),
    ):
        node.ip("addr", "add", address, "dev", dev, "nodad" if ":" in address else "noprefixroute")
        node.ip("link", "set", dev, "up")
    node.exec("sysctl", "-w", "net.ipv4.conf.mgmt0.accept_local=1")

    assert local_sources.uplinks(node.name, CLUSTER) == ["mgmt0", "up0", "up1"]
    assert local_sources.ensure(node.name, CLUSTER) == ["up0", "up1"]
    assert [accept_local(node, d) for d in ("up0", "up1", "pod0", "mgmt0")] == ["1", "1", "0", "1"]
    assert local_sources.guarded(node.name) == ["up0", "up1"]
    # Ours are found again: a second pass writes nothing and turns nothing on.
    table = node.exec("nft", "list", "table", "ip", local_sources.TABLE).stdout
    assert local_sources.ensure(node.name, CLUSTER) == []
    assert node.exec("nft", "list", "table", "ip", local_sources.TABLE).stdout == table

    # A packet from the underlay claiming the node's own address is still refused (the
    # guard's counter), as the martian check refused it; another source is answered.
    node_mac = node.mac("up0")
    with PacketPort(outside, "o0") as port:
        before = in_echos(node)
        port.send([Ether(dst=node_mac) / IP(src="192.0.2.1", dst="192.0.2.1") / ICMP()])
        time.sleep(0.3)
        assert in_echos(node) == before
        assert "packets 1 " in node.exec("nft", "list", "table", "ip", local_sources.TABLE).stdout
        port.send([Ether(dst=node_mac) / IP(src="192.0.2.2", dst="192.0.2.1") / ICMP()])
        time.sleep(0.3)
        assert in_echos(node) == before + 1

    # A device that went away leaves the set at the next pass.
    node.ip("link", "del", "up1")
    assert local_sources.ensure(node.name, CLUSTER) == []
    assert local_sources.guarded(node.name) == ["up0"]

    assert local_sources.remove(node.name) == ["up0"]
    assert [accept_local(node, d) for d in ("up0", "pod0", "mgmt0")] == ["0", "0", "1"]
    assert node.exec("nft", "list", "tables").stdout.strip() == ""


def test_nothing_is_changed_where_lwtunnel_packets_pass_prerouting(
    netns_factory: NetnsFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With `nf_hooks_lwtunnel=1` the guard would drop the decapsulated packets too: the
    uplinks are left refusing local sources (the flows stay lost), and the log says why."""
    node, outside = netns_factory(), netns_factory()
    netns_factory.veth(outside, "o0", node, "up0")
    node.ip("addr", "add", "192.0.2.1/24", "dev", "up0")
    # The sysctls read from a copy of the tree with the hook on (it cannot be turned off
    # again once on, so the test does not turn on the machine's own).
    hooks = tmp_path / "net/netfilter/nf_hooks_lwtunnel"
    hooks.parent.mkdir(parents=True)
    hooks.write_text("1\n")
    monkeypatch.setenv("SRV6CTL_PROC_SYS", str(tmp_path))
    assert local_sources.ensure(node.name, CLUSTER) == []
    monkeypatch.delenv("SRV6CTL_PROC_SYS")
    assert accept_local(node, "up0") == "0"
    assert node.exec("nft", "list", "tables").stdout.strip() == ""
