"""vpp_classify_codec without VPP: shapes, masks and sessions both ways."""

from __future__ import annotations

from ipaddress import IPv6Network

from hypothesis import given
from hypothesis import strategies as st

from srv6ctl.dataplane.model import Rule
from srv6ctl.dataplane.vpp_classify_codec import (
    Shape,
    decode_session,
    match_of,
    session,
    shape_of,
    shape_of_mask,
)
from srv6ctl.dataplane.vpp_fib_codec import AFFINITY_TABLE

NODEPORT6 = Rule("2001:db8::1/128", 50, "TCP", 30080)
NODEPORT4 = Rule("192.0.2.1/32", 51, "UDP", 30053)
RANGE6 = Rule("fd00:96::20/128", 52, source="2001:db8:99::/48")
SCTP4 = Rule("192.0.2.1/32", 53, "SCTP", 30100)


def test_a_node_port_matches_its_address_protocol_and_port_from_the_ip_header() -> None:
    mask, match = shape_of(NODEPORT6).mask(), match_of(NODEPORT6)
    assert len(mask) == len(match) == 48  # three vectors, none skipped
    assert mask[6] == 0xFF and match[6] == 6  # next header TCP
    assert mask[8:24] == bytes(16)  # any source
    assert match[24:40] == bytes.fromhex("20010db8000000000000000000000001")
    assert (mask[42:44], match[42:44]) == (b"\xff\xff", (30080).to_bytes(2, "big"))


def test_an_ipv4_port_needs_no_options_and_the_first_fragment() -> None:
    mask, match = shape_of(NODEPORT4).mask(), match_of(NODEPORT4)
    assert len(mask) == 32
    assert (mask[0], match[0]) == (0xFF, 0x45)
    assert (mask[6:8], match[6:8]) == (b"\x1f\xff", b"\x00\x00")
    assert (mask[9], match[9]) == (0xFF, 17)
    assert match[16:20] == bytes([192, 0, 2, 1]) and match[22:24] == (30053).to_bytes(2, "big")
    # Without a port, fragments and options match too (as ip-rule's ipproto).
    assert shape_of(Rule("192.0.2.1/32", 51, "UDP")).mask()[0] == 0


def test_a_source_range_is_its_own_shape() -> None:
    shape = shape_of(RANGE6)
    assert shape == Shape(6, 48, 128, False, False)
    assert shape.mask()[8:24] == b"\xff" * 6 + bytes(10)
    assert shape != shape_of(NODEPORT6)


def test_sessions_read_back_as_their_rules() -> None:
    for rule in (NODEPORT6, NODEPORT4, RANGE6, SCTP4):
        shape = shape_of(rule)
        assert shape_of_mask(shape.mask(), 0) == shape
        assert decode_session(match_of(rule), rule.table, shape) == rule


def test_what_we_never_write_reads_as_nothing() -> None:
    assert shape_of_mask(b"\xff" * 48, 0) is None  # not a shape of ours
    assert shape_of_mask(shape_of(NODEPORT6).mask(), 1) is None  # skipped vectors
    assert decode_session(match_of(NODEPORT6), 0, shape_of(NODEPORT6)) is None  # main
    assert decode_session(match_of(NODEPORT6), AFFINITY_TABLE, shape_of(NODEPORT6)) is None


def test_a_delete_names_no_fib() -> None:
    """VPP would create the FIB a delete's action names."""
    fields = session(3, NODEPORT6, False).fields
    assert (fields["action"], fields["metadata"]) == (0, 0)
    added = session(3, NODEPORT6, True).fields
    assert (added["action"], added["metadata"], added["opaque_index"]) == (2, 50, 50)


@given(
    st.integers(0, 2**128 - 1),
    st.integers(1, 128),
    st.integers(0, 128),
    st.sampled_from(["", "TCP", "UDP", "SCTP"]),
    st.integers(1, 65535),
    st.integers(1, 2**31),
)
def test_any_ipv6_rule_round_trips(
    address: int, length: int, source_len: int, protocol: str, port: int, table: int
) -> None:
    if table in (254, AFFINITY_TABLE):
        table = 1  # main, and the backend's own: no rule's table
    destination = IPv6Network((address, length), strict=False)
    source = IPv6Network((address ^ 0xFFFF, source_len), strict=False) if source_len else None
    rule = Rule(destination, table, protocol, port if protocol else 0, source)
    shape = shape_of(rule)
    assert shape_of_mask(shape.mask(), 0) == shape
    assert decode_session(match_of(rule), table, shape) == rule
