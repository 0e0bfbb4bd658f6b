"""`srv6ctl cleanup` removes exactly what srv6ctl owns on a node, nothing else (kube-proxy's
rules included: moving a cluster off kube-proxy is `kube-proxy --cleanup`, deploy/README.md)."""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from srv6ctl.dataplane import host_link, local_sources
from srv6ctl.dataplane.kernel import KernelBackend
from srv6ctl.dataplane.model import (
    End,
    EndDT4,
    NodeConfig,
    SegmentList,
    SrPolicy,
    Steering,
)
from srv6ctl.dataplane.reconcile import plan
from tests.support.netns import NetnsFactory

SRV6CTL = str(Path(sys.executable).parent / "srv6ctl")


@pytest.mark.kernel_srv6(vm=True)
def test_cleanup_leaves_only_foreign_state(netns_factory: NetnsFactory, tmp_path: Path) -> None:
    node = netns_factory()
    node.ip("link", "add", "eth0", "type", "veth", "peer", "name", "eth1")
    node.ip("link", "set", "eth0", "up")
    node.ip("addr", "add", "fd00:ff::1/64", "dev", "eth0", "nodad")
    desired = NodeConfig(
        encap_source="fd00:ff::1",
        local_sids={End(sid="fcbb:bb00:1::1")},
        policies={
            SrPolicy(bsid="fcbb:bb00::6000:1", segment_lists=[SegmentList(["fcbb:bb00:2::1:2"])])
        },
        steerings={Steering(prefix="fd00:96::10/128", bsid="fcbb:bb00::6000:1")},
    )
    node.ip("link", "add", "vrf-other", "type", "vrf", "table", "77", check=False)  # foreign
    with KernelBackend(node.name) as backend:
        if EndDT4.behaviour in backend.capabilities.behaviours:  # its VRF device goes too
            desired = replace(desired, local_sids={*desired.local_sids, EndDT4("fcbb:bb00:1::4")})
        backend.apply(plan(desired, backend.dump()))
        assert backend.dump() == desired
    node.ip("-6", "route", "add", "fd00:10:0:1::2/128", "dev", "eth0", "proto", "106")
    node.ip("-6", "route", "add", "2001:db8:1::/64", "via", "fd00:ff::2")  # foreign
    conf = tmp_path / "net.d"
    conf.mkdir()
    (conf / "10-srv6.conflist").write_text("{}")
    (conf / "99-other.conflist").write_text("{}")
    state = tmp_path / "state"
    state.mkdir()

    # kube-proxy's rules (nftables mode, and iptables mode where ip6tables is): not ours.
    node.exec("nft", "add", "table", "ip6", "kube-proxy")
    node.exec("nft", "add", "chain", "ip6", "kube-proxy", "services")
    node.exec(
        "nft",
        "add",
        "rule",
        "ip6",
        "kube-proxy",
        "services",
        "ip6",
        "daddr",
        "fd00:96::10",
        "tcp",
        "dport",
        "80",
        "counter",
    )
    kube_proxy_nft = node.exec("nft", "list", "table", "ip6", "kube-proxy").stdout
    iptables = shutil.which("ip6tables") is not None
    if iptables:
        node.exec("ip6tables", "-t", "nat", "-N", "KUBE-SERVICES")
        node.exec(
            "ip6tables",
            "-t",
            "nat",
            "-A",
            "KUBE-SERVICES",
            "-d",
            "fd00:96::10/128",
            "-p",
            "tcp",
            "--dport",
            "80",
            "-j",
            "RETURN",
        )
    before = node.ip("link", "show")
    done = subprocess.run(
        [
            SRV6CTL,
            "cleanup",
            "--netns",
            node.name,
            "--cni-conf-dir",
            str(conf),
            "--cni-bin-dir",
            str(tmp_path / "bin"),
            "--cni-lib-dir",
            str(tmp_path / "lib"),
            "--state-dir",
            str(state),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    links = node.ip("link", "show")
    assert "srv6ctl0" not in links and "srv6vrf" not in links
    assert ("vrf-other" in links) == ("vrf-other" in before)
    routes = node.ip("-6", "route", "show", "table", "all")
    assert "2001:db8:1::/64" in routes
    assert "fd00:10:0:1::2" not in routes and "fcbb" not in routes and "fd00:96" not in routes
    assert not (conf / "10-srv6.conflist").exists() and (conf / "99-other.conflist").exists()
    assert not state.exists()
    assert "tunsrc addr ::" in node.exec("ip", "sr", "tunsrc", "show").stdout
    assert node.exec("nft", "list", "table", "ip6", "kube-proxy").stdout == kube_proxy_nft
    if iptables:
        rules = node.exec("ip6tables", "-t", "nat", "-S", "KUBE-SERVICES").stdout
        assert "-A KUBE-SERVICES -d fd00:96::10/128 -p tcp -m tcp --dport 80 -j RETURN" in rules
    with KernelBackend(node.name) as backend:
        assert backend.dump() == NodeConfig()


@pytest.mark.netns
@pytest.mark.skipif(shutil.which("nft") is None, reason="needs nft")
def test_cleanup_takes_the_host_interconnect_and_the_uplinks_back(
    netns_factory: NetnsFactory, tmp_path: Path
) -> None:
    """What a node's kernel keeps around its dataplane beside SRv6 objects (any kernel):
    a VPP node's host interconnect and the ingress drop on VPP's af_packet uplinks (left
    behind, the node's kernel would stay off its own uplinks), and the accept_local the
    kernel backend turns on for its uplinks (left behind, unguarded)."""
    node, outside = netns_factory(), netns_factory()
    netns_factory.veth(outside, "o0", node, "eth0")
    netns_factory.veth(outside, "o1", node, "eth1")
    node.ip("addr", "add", "192.0.2.1/24", "dev", "eth0")
    node.ip("link", "add", "foreign0", "type", "veth", "peer", "name", "foreign1")
    link = host_link.HostLink(
        name="vpphost0",
        peer="vpphost0v",
        mac="02:fe:00:00:00:01",
        gateway=ipaddress.IPv6Address("fe80::1"),
        gateway_mac="02:fe:00:00:00:02",
        addresses=(ipaddress.ip_address("192.0.2.1"),),
        routes=(),
    )
    host_link.ensure(link, node.name)
    host_link.quiet_uplinks(["eth1"], node.name)
    assert local_sources.ensure(node.name, []) == ["eth0"]
    node.exec("nft", "add", "table", "netdev", "other")  # foreign

    dirs = [(f"--{d}", str(tmp_path / d)) for d in ("cni-conf-dir", "cni-bin-dir", "cni-lib-dir")]
    done = subprocess.run(
        [SRV6CTL, "cleanup", "--netns", node.name, *(a for pair in dirs for a in pair)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "vpphost0" in done.stdout and "netdev srv6ctl_uplinks" in done.stdout
    links = node.ip("link", "show")
    assert "vpphost0" not in links and "foreign0" in links and "eth1" in links
    assert node.exec("nft", "list", "tables").stdout.split("\n")[:-1] == ["table netdev other"]
    assert node.exec("sysctl", "-n", "net.ipv4.conf.eth0.accept_local").stdout.strip() == "0"
