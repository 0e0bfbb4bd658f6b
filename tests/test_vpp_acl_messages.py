"""The VPP ACL backend's messages against VPP 25.10's real ACL plugin definitions.

As tests/test_vpp_messages.py (its fixtures and helpers): every request
srv6ctl/dataplane/vpp_acl.py builds is checked field by field against
`plugins/acl.api.json` and packed with vpp-papi as it goes on the socket; details are
packed from the same definitions and decoded back into `AclRule`s. What VPP does with
them is tests/test_vpp_acl.py's job.
"""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from policies.compiler import compile_node
from policies.model import (
    Cluster,
    Frontend,
    IPBlock,
    LabelSelector,
    NetworkPolicy,
    Node,
    Peer,
    Pod,
    PodKey,
    PolicyPort,
    PolicyRule,
    Protocol,
)
from policies.vpp_acl import ANY_V6, AclRule, Action, translate
from srv6ctl.dataplane.vpp_acl import (
    ACL_MESSAGES,
    acl_add_replace,
    acl_bind,
    acl_del,
    acl_tag,
    decode_rule,
    parse_tag,
)
from srv6ctl.dataplane.vpp_codec_base import INVALID_INDEX
from tests.test_vpp_messages import api_dir, client, details, encode, enum

__all__ = ["api_dir", "client"]  # fixtures, re-exported for pytest

N = ipaddress.ip_network
A = ipaddress.ip_address

# VPP 25.10's CRCs: a different VPP release would encode these at other offsets.
CRCS = {
    "acl_add_replace": "0xee5c2f18",
    "acl_add_replace_reply": "0xac407b0c",
    "acl_del": "0xef34fea4",
    "acl_interface_set_acl_list": "0x473982bd",
    "acl_dump": "0xef34fea4",
    "acl_details": "0x95babae0",
    "acl_interface_list_dump": "0xf9e6675e",
    "acl_interface_list_details": "0xe695d256",
}


def sample_acls() -> tuple[AclRule, ...]:
    """A real translation: a backend of a ClusterIP, dual-stack peers, ranges, SCTP."""
    web = Pod(
        "prod",
        "web",
        {"app": "web"},
        (A("fd00:10::1"), A("10.128.0.1")),
        frontends=(Frontend(A("fd00:96::1"), Protocol.TCP, 80, 8080),),
        node_name="n1",
    )
    rule = PolicyRule(
        (
            Peer(ip_block=IPBlock(N("2001:db8::/32"), (N("2001:db8:1::/48"),))),
            Peer(ip_block=IPBlock(N("192.0.2.0/24"))),
        ),
        (
            PolicyPort(Protocol.TCP, 8080),
            PolicyPort(Protocol.UDP, 5000, 5100),
            PolicyPort(Protocol.SCTP, 3868),
        ),
    )
    policy = NetworkPolicy("prod", "web", LabelSelector({"app": "web"}), {"Ingress"}, (rule,))
    cluster = Cluster.of((), [web], [policy], [Node("n1", {A("fd00:ff::1")})])
    acls = translate(compile_node(cluster)[PodKey("prod", "web")])
    assert acls is not None
    return acls.ingress + acls.egress


def test_the_definitions_are_vpp_25_10s(client: Any) -> None:
    for name in ACL_MESSAGES:
        assert name in client.messages, name
    for name, crc in CRCS.items():
        assert client.messages[name].crc == crc, name


def test_actions_and_protocols_are_vpps_enum_values(client: Any) -> None:
    for action in Action:
        member = {0: "DENY", 1: "PERMIT", 2: "PERMIT_REFLECT"}[int(action)]
        assert enum(client, "vl_api_acl_action_t", f"ACL_ACTION_API_{member}") == action
    for protocol in (Protocol.TCP, Protocol.UDP, Protocol.SCTP):
        member = protocol.value
        assert enum(client, "vl_api_ip_proto_t", f"IP_API_PROTO_{member}") == protocol.number
    assert enum(client, "vl_api_ip_proto_t", "IP_API_PROTO_ICMP6") == 58
    assert enum(client, "vl_api_ip_proto_t", "IP_API_PROTO_ICMP") == 1
    assert enum(client, "vl_api_ip_proto_t", "IP_API_PROTO_HOPOPT") == 0  # "any" in a rule


def test_add_replace_encodes_every_rule_and_decodes_back(client: Any) -> None:
    rules = sample_acls()
    assert len(rules) > 20
    tag = acl_tag("s6abcdef012345", "ingress", "prod/web")
    _, decoded = encode(client, acl_add_replace(INVALID_INDEX, tag, rules))
    assert decoded.acl_index == 0xFFFFFFFF  # ~0: create
    assert decoded.tag == tag and decoded.count == len(rules)
    for sent, got in zip(rules, decoded.r, strict=True):
        assert int(got.is_permit) == sent.action
        assert (got.src_prefix, got.dst_prefix) == (sent.src, sent.dst)
        assert int(got.proto) == sent.proto
        assert (got.dstport_or_icmpcode_first, got.dstport_or_icmpcode_last) == sent.dport
        assert (got.tcp_flags_mask, got.tcp_flags_value) == (0, 0)
    # What acl_dump sends back decodes into the same rules.
    back = details(
        client,
        "acl_details",
        acl_index=4,
        tag=tag,
        count=len(rules),
        r=[r._asdict() for r in decoded.r],
    )
    assert tuple(decode_rule(r) for r in back.r) == rules
    # A replace in place names the ACL's index.
    _, replaced = encode(client, acl_add_replace(4, tag, rules[:1]))
    assert (replaced.acl_index, replaced.count) == (4, 1)


def test_a_prefix_on_the_wire(client: Any) -> None:
    """vl_api_prefix_t: address family (ADDRESS_IP6 = 1), a 16-byte union, the length."""
    rule = AclRule(Action.PERMIT_REFLECT, N("2001:db8::/32"), ANY_V6, 6, (0, 65535), (80, 80))
    data, _ = encode(client, acl_add_replace(INVALID_INDEX, "t", (rule,)))
    af = enum(client, "vl_api_address_family_t", "ADDRESS_IP6")
    wire = bytes([af]) + A("2001:db8::").packed + bytes([32])
    assert wire in data
    rule4 = AclRule(Action.DENY, N("192.0.2.0/24"), N("0.0.0.0/0"))
    data, decoded = encode(client, acl_add_replace(INVALID_INDEX, "t", (rule4,)))
    af4 = enum(client, "vl_api_address_family_t", "ADDRESS_IP4")
    assert bytes([af4]) + A("192.0.2.0").packed + bytes(12) + bytes([24]) in data
    assert decode_rule(decoded.r[0]) == rule4


def test_binding_puts_inputs_first(client: Any) -> None:
    _, decoded = encode(client, acl_bind(7, [3], [5]))
    assert (decoded.sw_if_index, decoded.count, decoded.n_input) == (7, 2, 1)
    assert list(decoded.acls) == [3, 5]
    _, cleared = encode(client, acl_bind(7, [], []))
    assert (cleared.count, cleared.n_input, list(cleared.acls)) == (0, 0, [])
    _, deleted = encode(client, acl_del(3))
    assert deleted.acl_index == 3
    listed = details(
        client, "acl_interface_list_details", sw_if_index=7, count=2, n_input=1, acls=[3, 5]
    )
    assert (listed.n_input, list(listed.acls)) == (1, [3, 5])


def test_tags_fit_vpp_and_name_interface_and_way() -> None:
    tag = acl_tag("s6abcdef012345", "egress", "a-namespace/" + "p" * 200)
    assert len(tag.encode()) <= 63
    assert parse_tag(tag) == ("s6abcdef012345", "egress")
    assert parse_tag(acl_tag("s6x", "ingress")) == ("s6x", "ingress")
    assert parse_tag("srv6ctl:pod:s6x") is None and parse_tag("someone else's") is None
    with pytest.raises(ValueError, match="too long"):
        acl_tag("x" * 60, "ingress")
