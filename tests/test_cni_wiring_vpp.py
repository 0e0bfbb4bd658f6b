"""PodWiring in VPP mode (the agent's `--dataplane vpp`), without a VPP: real namespaces.

The node end of the veth is left bare for VPP's af_packet port (up, no fe80::1, no node
routes), the pod end is wired as in kernel mode but sends with full checksums (tx checksum
offload off), CHECK expects exactly that, and teardown is the same. The packets through
VPP are tests/test_agent_vpp.py's.
"""

from __future__ import annotations

import json
from ipaddress import IPv4Address, IPv6Address

import pytest

from cni.wiring import PodSpec, PodWiring, host_ifname, tx_checksum
from tests.support.cni import Namespaces, ip
from tests.support.netns import open_in

pytestmark = pytest.mark.netns


def test_vpp_mode_leaves_the_node_end_bare_and_turns_tx_checksum_offload_off(
    cni_namespaces: Namespaces,
) -> None:
    node = cni_namespaces.add("s6n")
    pod = cni_namespaces.add("s6p")
    wiring = PodWiring(node, mode="vpp")
    spec = PodSpec(
        "ctr-1",
        "eth0",
        pod,
        IPv6Address("fd00:10:0:1::3"),
        IPv4Address("10.128.1.3"),
        IPv4Address("10.128.1.1"),
    )
    attachment = wiring.setup(spec)
    host = host_ifname("ctr-1", "eth0")
    assert attachment.host_ifname == host and attachment.gateway_v6 == IPv6Address("fe80::1")

    (link,) = json.loads(ip(node, "-j", "addr", "show", "dev", host))
    assert "UP" in link["flags"]
    assert [a for a in link["addr_info"] if a["family"] == "inet6" and a["scope"] == "global"] == []
    assert not any(a["local"] == "fe80::1" for a in link["addr_info"])
    assert not any(a["family"] == "inet" for a in link["addr_info"])
    assert ip(node, "-6", "route", "show", "proto", "106") == ""
    assert ip(node, "-4", "route", "show", "proto", "106") == ""

    # The pod side is the kernel mode's: its addresses and default routes via the gateways.
    assert "fd00:10:0:1::3/128" in ip(pod, "-6", "addr", "show", "dev", "eth0")
    assert "default via fe80::1 dev eth0" in ip(pod, "-6", "route", "show")
    assert "default via 10.128.1.1 dev eth0" in ip(pod, "-4", "route", "show")
    assert open_in(pod, lambda: tx_checksum("eth0")) is False
    assert open_in(node, lambda: tx_checksum(host)) is True  # the node end is untouched

    # CHECK: all is well as wired; kernel mode's expectations do not apply to this end.
    assert wiring.check(spec) == []
    assert "lacks fe80::1/64" in " ".join(PodWiring(node).check(spec))
    # ADD again is idempotent (nothing rewired).
    assert wiring.setup(spec) == attachment

    assert wiring.teardown("ctr-1", "eth0") is True
    assert host not in ip(node, "link", "show")


def test_an_unknown_wiring_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="kernel, vpp"):
        PodWiring(None, mode="dpdk")
