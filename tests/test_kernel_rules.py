"""`Rule`s in the kernel backend: ip rules by destination, source, protocol and port.

No SRv6 needed (ip rules and reject routes are in every kernel), so these run on any host
in throw-away namespaces, with real sockets: a client namespace connects to the node
namespace over a veth.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import socket
from collections.abc import Iterator

import pytest

from srv6ctl.cleanup import cleanup
from srv6ctl.dataplane.kernel import POLICY_TABLE, InvalidObject, KernelBackend
from srv6ctl.dataplane.kernel_rules import (
    GATE_PRIORITY,
    LOCAL_RULE_PRIORITY,
    PORT_RULE_PRIORITY,
)
from srv6ctl.dataplane.model import Change, NodeConfig, Op, Route, RouteKind, Rule
from srv6ctl.dataplane.reconcile import plan
from tests.support.netns import Netns, NetnsFactory, open_in

pytestmark = [pytest.mark.netns]

NODE6, CLIENT6, OTHER6 = "2001:db8:5::1", "2001:db8:5::2", "2001:db8:5::3"
NODE4, CLIENT4 = "192.0.2.1", "192.0.2.2"
TABLE = 0x5C000001
NODE_PORT, OTHER_PORT = 30080, 30081


@pytest.fixture
def wired(netns_factory: NetnsFactory) -> Iterator[tuple[Netns, Netns]]:
    """A node and a client namespace on one veth, with listeners on the node at both
    ports of both families (a connection that reaches the node's stack is accepted)."""
    node, client = netns_factory(), netns_factory()
    netns_factory.veth(node, "up0", client, "up1")
    for ns, addresses in ((node, (NODE6, NODE4)), (client, (CLIENT6, OTHER6, CLIENT4))):
        device = "up0" if ns is node else "up1"
        for address in addresses:
            prefix = 64 if ":" in address else 24
            ns.ip("addr", "add", f"{address}/{prefix}", "dev", device, "nodad")
    listeners = [
        open_in(node.name, lambda f=family, a=address, p=port: _listen(f, a, p))
        for family, address in ((socket.AF_INET6, NODE6), (socket.AF_INET, NODE4))
        for port in (NODE_PORT, OTHER_PORT)
    ]
    try:
        yield node, client
    finally:
        for listener in listeners:
            listener.close()


def _listen(family: int, address: str, port: int) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.bind((address, port))
    sock.listen(16)
    return sock


def _connect(ns: Netns, address: str, port: int, source: str | None = None) -> int:
    """0 when a TCP connection from `ns` to address:port is accepted, else the errno."""

    def attempt() -> int:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            if source is not None:
                sock.bind((source, 0))
            return sock.connect_ex((address, port))

    return open_in(ns.name, attempt)


def _backend(node: Netns) -> KernelBackend:
    """The node's kernel backend; skips where the kernel has no rules by port."""
    backend = KernelBackend(node.name, configure_sysctls=False)
    if not backend.capabilities.rules:
        pytest.skip(f"this kernel: {backend.capabilities.notes}")
    return backend


def _rules(ns: Netns, family: str) -> list[dict[str, object]]:
    return list(json.loads(ns.ip("-j", family, "rule", "show")))


def _assert_local_rule_back(node: Netns, families: tuple[str, ...]) -> None:
    for family in families:
        shown = {(r["priority"], r.get("table")) for r in _rules(node, family)}
        assert (0, "local") in shown and (LOCAL_RULE_PRIORITY, "local") not in shown


def _apply(backend: KernelBackend, desired: NodeConfig) -> None:
    backend.apply(plan(desired, backend.dump()))


def test_a_node_port_rule_steers_only_its_port_and_the_local_rule_moves_and_returns(
    wired: tuple[Netns, Netns],
) -> None:
    node, client = wired
    backend = _backend(node)
    assert _connect(client, NODE6, NODE_PORT) == 0  # before: the node's own stack answers
    desired = NodeConfig(
        routes=frozenset(
            {
                Route(f"{NODE6}/128", kind=RouteKind.PROHIBIT, table=TABLE),
                Route(f"{NODE4}/32", kind=RouteKind.PROHIBIT, table=TABLE),
            }
        ),
        rules=frozenset(
            {
                Rule(f"{NODE6}/128", TABLE, "TCP", NODE_PORT),
                Rule(f"{NODE4}/32", TABLE, "TCP", NODE_PORT),
            }
        ),
    )
    _apply(backend, desired)
    assert backend.dump() == desired
    # A fresh backend (an agent restart) reads the same state back: nothing to do.
    assert plan(desired, KernelBackend(node.name, configure_sysctls=False).dump()) == []
    for family in ("-6", "-4"):
        shown = {(r["priority"], r.get("table"), r.get("protocol")) for r in _rules(node, family)}
        assert (0, "local", "kernel") not in shown
        assert (LOCAL_RULE_PRIORITY, "local", "92") in shown
        assert any(p == PORT_RULE_PRIORITY and t == str(TABLE) for p, t, _ in shown)
        # The gate sends every packet not to the node's address past the port rules.
        (gate,) = [r for r in _rules(node, family) if r["priority"] == GATE_PRIORITY]
        assert "not" in gate and gate["dst"] in (NODE6, NODE4), gate
    # The node port's traffic follows the table (a prohibit route: refused), every other
    # port still reaches the node's own stack, both families.
    for address in (NODE6, NODE4):
        assert _connect(client, address, NODE_PORT) in (errno.EACCES, errno.EHOSTUNREACH)
        assert _connect(client, address, OTHER_PORT) == 0
        # The node's own connections go through the same rule (an output lookup).
        assert _connect(node, address, NODE_PORT) in (errno.EACCES, errno.EHOSTUNREACH)
        assert _connect(node, address, OTHER_PORT) == 0
    _apply(backend, NodeConfig())
    assert backend.dump() == NodeConfig()
    _assert_local_rule_back(node, ("-6", "-4"))
    assert _connect(client, NODE6, NODE_PORT) == 0


def test_a_source_rule_admits_only_its_range_and_a_table_change_is_applied(
    wired: tuple[Netns, Netns],
) -> None:
    node, client = wired
    backend = _backend(node)
    # Everything to NODE6:NODE_PORT is refused in `refuse`, except from CLIENT6, whose
    # rule (more specific: it has a source) sends it to an empty table, so it falls
    # through to the local lookup. Both at one priority: the key keeps them apart.
    refuse, admit = TABLE, TABLE + 1
    host = ipaddress.ip_network(f"{NODE6}/128")
    desired = NodeConfig(
        routes=frozenset({Route(host, kind=RouteKind.PROHIBIT, table=refuse)}),
        rules=frozenset(
            {
                Rule(host, admit, "TCP", NODE_PORT, source=f"{CLIENT6}/128"),
                Rule(host, refuse, "TCP", NODE_PORT),
            }
        ),
    )
    _apply(backend, desired)
    assert backend.dump() == desired
    # Rules of one priority are tried in the order they were added: which one wins for
    # CLIENT6 is not ours to rely on, so only the other source is asserted here.
    assert _connect(client, NODE6, NODE_PORT, source=OTHER6) in (errno.EACCES, errno.EHOSTUNREACH)
    # Changing a rule's table is a delete and an add (the kernel has no rule replace).
    moved = NodeConfig(
        routes=desired.routes,
        rules=frozenset({Rule(host, admit, "TCP", NODE_PORT)}),
    )
    changes = plan(moved, backend.dump())
    assert {c.op for c in changes} == {Op.REPLACE, Op.DELETE}
    backend.apply(changes)
    assert backend.dump() == moved
    assert _connect(client, NODE6, NODE_PORT, source=OTHER6) == 0  # `admit` is empty
    _apply(backend, NodeConfig())
    assert _rules(node, "-6")[0]["priority"] == 0


def test_the_nodes_own_connections_skip_the_port_rules_to_the_local_table(
    wired: tuple[Netns, Netns],
) -> None:
    """`iif lo to N lookup 94`, 94 holding N as a local route, before the port rules
    (render, for the node's own NodePorts, which its kernel DNATs at output): the node's
    own connection reaches its own address while the port's table blackholes everyone
    else's."""
    node, client = wired
    backend = _backend(node)
    host = ipaddress.ip_network(f"{NODE6}/128")
    desired = NodeConfig(
        routes=frozenset(
            {
                Route(host, kind=RouteKind.BLACKHOLE, table=TABLE),
                Route(host, kind=RouteKind.LOCAL, table=94),
            }
        ),
        rules=frozenset({Rule(host, TABLE, "TCP", NODE_PORT), Rule(host, 94, iif="lo")}),
    )
    _apply(backend, desired)
    assert backend.dump() == desired
    assert _connect(node, NODE6, NODE_PORT) == 0
    assert _connect(client, NODE6, NODE_PORT) != 0
    _apply(backend, NodeConfig())
    assert _rules(node, "-6")[0]["priority"] == 0


def test_a_rule_by_input_interface_matches_only_the_nodes_own_packets(
    wired: tuple[Netns, Netns],
) -> None:
    """`iif lo` (the host loop's rule): the node's own connections follow the table, a
    client's packets to the same destination do not."""
    node, client = wired
    backend = _backend(node)
    host = ipaddress.ip_network(f"{NODE6}/128")
    desired = NodeConfig(
        routes=frozenset({Route(host, kind=RouteKind.PROHIBIT, table=TABLE)}),
        rules=frozenset({Rule(host, TABLE, "TCP", NODE_PORT, iif="lo")}),
    )
    _apply(backend, desired)
    assert backend.dump() == desired
    assert _connect(node, NODE6, NODE_PORT) in (errno.EACCES, errno.EHOSTUNREACH)
    assert _connect(client, NODE6, NODE_PORT) == 0
    _apply(backend, NodeConfig())


def test_cleanup_removes_the_rules_and_puts_the_local_rule_back(
    wired: tuple[Netns, Netns],
) -> None:
    node, client = wired
    backend = _backend(node)
    host = ipaddress.ip_network(f"{NODE6}/128")
    _apply(
        backend,
        NodeConfig(
            routes=frozenset({Route(host, kind=RouteKind.PROHIBIT, table=TABLE)}),
            rules=frozenset({Rule(host, TABLE, "TCP", NODE_PORT)}),
        ),
    )
    # Someone deletes our rule by hand: our moved local rule is stray, and an empty plan
    # (what cleanup applies when nothing else of ours is left) still puts it back.
    node.ip("-6", "rule", "del", "pref", str(PORT_RULE_PRIORITY))
    cleanup(f"/var/run/netns/{node.name}")
    _assert_local_rule_back(node, ("-6",))
    assert KernelBackend(node.name, configure_sysctls=False).dump() == NodeConfig()
    assert _connect(client, NODE6, NODE_PORT) == 0


def test_a_rule_into_a_reserved_table_is_refused_before_any_write(
    wired: tuple[Netns, Netns],
) -> None:
    node, _ = wired
    backend = _backend(node)
    bad = Rule(f"{NODE6}/128", POLICY_TABLE, "TCP", NODE_PORT)
    with pytest.raises(InvalidObject, match="not a table rules may name"):
        backend.apply([Change(Op.ADD, new=bad)])
    assert backend.dump() == NodeConfig()


def test_node_ports_on_two_addresses_of_a_family_go_ungated_and_the_gate_comes_back(
    wired: tuple[Netns, Netns],
) -> None:
    """--nodeport-addresses with an ExternalIP too: two destinations in one family cannot
    share the gate (`not to N`), so that family has none and its packets walk the rules;
    with one destination again the gate returns."""
    node, client = wired
    second = "2001:db8:5::10"
    node.ip("addr", "add", f"{second}/64", "dev", "up0", "nodad")
    listener = open_in(node.name, lambda: _listen(socket.AF_INET6, second, NODE_PORT))
    backend = _backend(node)
    both = NodeConfig(
        routes=frozenset(
            Route(f"{a}/128", kind=RouteKind.PROHIBIT, table=TABLE) for a in (NODE6, second)
        ),
        rules=frozenset(Rule(f"{a}/128", TABLE, "TCP", NODE_PORT) for a in (NODE6, second)),
    )
    try:
        _apply(backend, both)
        assert backend.dump() == both
        assert not [r for r in _rules(node, "-6") if r["priority"] == GATE_PRIORITY]
        for address in (NODE6, second):
            assert _connect(client, address, NODE_PORT) in (errno.EACCES, errno.EHOSTUNREACH)
        assert _connect(client, NODE6, OTHER_PORT) == 0
        one = NodeConfig(
            routes=frozenset(r for r in both.routes if str(r.prefix.network_address) == NODE6),
            rules=frozenset(r for r in both.rules if str(r.destination.network_address) == NODE6),
        )
        _apply(backend, one)
        (gate,) = [r for r in _rules(node, "-6") if r["priority"] == GATE_PRIORITY]
        assert gate["dst"] == NODE6
        assert _connect(client, second, NODE_PORT) == 0  # the node's own again
        _apply(backend, NodeConfig())
    finally:
        listener.close()
