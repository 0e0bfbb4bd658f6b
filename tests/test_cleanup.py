"""`srv6ctl cleanup` removes exactly what srv6ctl owns on a node, nothing else (kube-proxy's
rules included: moving a cluster off kube-proxy is `kube-proxy --cleanup`, deploy/README.md)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

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
