"""srv6-cni end to end: the real executable, a real agent-side server, real namespaces.

Each test runs `srv6-cni` exactly as a container runtime does (CNI_* env, config on
stdin) against a `CniServer` with a temp SQLite store, wiring pods into throw-away
namespaces under a throw-away "node" namespace, and proves the wiring with real packets.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import stat
import subprocess
from collections.abc import Callable
from typing import Any

import pytest

from cni import protocol
from cni.server import CniServer
from cni.wiring import PodWiring, host_ifname
from ipam6.store.base import StoreError
from tests.support.cni import (
    IPV6_ONLY,
    TINY,
    Harness,
    Namespaces,
    ip,
    node_veths,
    ping,
    run_cni,
    unique,
)
from tests.support.wait import wait_for

pytestmark = pytest.mark.netns


def _address(result: dict[str, object], version: int) -> str:
    for entry in result["ips"]:  # type: ignore[attr-defined]
        address = ipaddress.ip_interface(entry["address"])
        if address.version == version:
            return str(address.ip)
    raise AssertionError(f"no IPv{version} address in {result}")


# --- VERSION, result shape, packets ---------------------------------------------------


def test_version_answers_without_an_agent() -> None:
    done = run_cni("VERSION", {"cniVersion": "1.0.0"}, ifname=None)
    assert done.returncode == 0
    assert done.output == {"cniVersion": "1.0.0", "supportedVersions": ["0.4.0", "1.0.0", "1.1.0"]}
    bare = run_cni("VERSION", b"", ifname=None)
    assert bare.returncode == 0 and bare.output["cniVersion"] == "1.1.0"


def test_add_wires_two_pods_that_ping_each_other_over_ipv6_and_ipv4(harness: Harness) -> None:
    pod_a, pod_b = harness.new_pod(), harness.new_pod()
    a = harness.add("ctr-a", pod_a, dns={"nameservers": ["fd00:96::a"]})
    b = harness.add("ctr-b", pod_b)

    # The spec's result shape: node end, then the pod end with its sandbox.
    assert a["cniVersion"] == "1.1.0"
    host, pod_if = a["interfaces"]
    assert host["name"] == host_ifname("ctr-a", "eth0") and "sandbox" not in host
    assert pod_if["name"] == "eth0" and pod_if["sandbox"] == pod_a and pod_if["mtu"] == 1420
    assert all(len(i["mac"].split(":")) == 6 for i in a["interfaces"])
    assert [ip_["interface"] for ip_ in a["ips"]] == [1, 1]
    assert a["ips"][0]["gateway"] == "fe80::1"
    node_id = harness.allocator.node_id(harness.node)
    assert node_id is not None
    plan = harness.allocator.plan
    assert a["ips"][1]["gateway"] == str(plan.gateway_v4(node_id))
    assert a["routes"] == [
        {"dst": "::/0", "gw": "fe80::1"},
        {"dst": "0.0.0.0/0", "gw": str(plan.gateway_v4(node_id))},
    ]
    assert a["dns"] == {"nameservers": ["fd00:96::a"]}
    a6, b6 = _address(a, 6), _address(b, 6)
    assert ipaddress.ip_address(a6) in plan.pod_prefix_v6(node_id)
    assert a6 != b6

    # The pod's address is usable at once (no DAD), and its link-local is out of the
    # "tentative" state within a few ms, where DAD would hold it for a second.
    pod_addresses = json.loads(ip(pod_a, "-j", "-6", "addr", "show", "dev", "eth0"))
    (global_,) = [a for a in pod_addresses[0]["addr_info"] if a["local"] == a6]
    assert global_["prefixlen"] == 128 and global_.get("nodad") and not global_.get("tentative")
    wait_for(
        lambda: "tentative" not in ip(pod_a, "-6", "addr", "show", "dev", "eth0"),
        0.3,
        "the link-local address to leave DAD",
    )

    assert ping(pod_a, b6) and ping(pod_b, a6)
    assert ping(pod_a, _address(b, 4)) and ping(pod_b, _address(a, 4))
    # IPv4 reaches the pod through its own address as the next hop (what End.DX4 hands
    # it may be addressed elsewhere, e.g. a NodePort's packet), and its veth accepts the
    # node's own address as a source (the pod answering a NodePort of its node).
    a4 = _address(a, 4)
    (route,) = json.loads(ip(harness.node_netns, "-j", "-4", "route", "show", f"{a4}/32"))
    assert route["gateway"] == a4 and "onlink" in route["flags"], route
    accept_local = subprocess.run(
        [
            "nsenter",
            f"--net={harness.node_netns}",
            "cat",
            f"/proc/sys/net/ipv4/conf/{host['name']}/accept_local",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert accept_local == "1"
    # And nothing answers for an address nobody has.
    assert not ping(pod_a, str(plan.pod_prefix_v6(node_id)[999]), timeout=0.3, attempts=1)

    # The agent heard about both pods, with what it needs for the End.DX6 SIDs.
    added = {alloc.container_id: (alloc, att) for alloc, att in harness.hooks.added}
    alloc_a, att_a = added["ctr-a"]
    assert str(alloc_a.addresses.ipv6) == a6 and att_a.host_ifname == host["name"]
    assert alloc_a.addresses.sid_dx6 == plan.pod_sid_dx6(node_id, alloc_a.addresses.index)


@pytest.mark.parametrize("version", ["0.4.0", "1.0.0"])
def test_older_configs_get_results_in_their_own_shape(
    make_cni_harness: Callable[..., Harness], version: str
) -> None:
    harness = make_cni_harness(IPV6_ONLY)
    pod_a, pod_b = harness.new_pod(), harness.new_pod()
    a = harness.add("ctr-a", pod_a, version)
    b = harness.add("ctr-b", pod_b, version)
    assert a["cniVersion"] == version
    assert len(a["ips"]) == 1 and a["routes"] == [{"dst": "::/0", "gw": "fe80::1"}]
    assert all("mtu" not in i for i in a["interfaces"])  # a 1.1.0 field
    if version == "0.4.0":
        assert a["ips"][0]["version"] == "6"
    else:
        assert "version" not in a["ips"][0]
    assert ping(pod_a, _address(b, 6))


def test_add_twice_returns_the_same_result(harness: Harness) -> None:
    pod = harness.new_pod()
    first = harness.add("ctr-1", pod)
    second = harness.add("ctr-1", pod)
    assert first == second
    assert len(harness.allocator.pods(harness.node)) == 1
    assert node_veths(harness.node_netns) == [host_ifname("ctr-1", "eth0")]


def test_cni_args_name_the_pod_in_the_allocation(harness: Harness) -> None:
    pod = harness.new_pod()
    done = harness.run(
        "ADD",
        container_id="ctr-1",
        netns=pod,
        args="IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=cart-7;K8S_POD_UID=u-42",
    )
    assert done.returncode == 0, done.output
    (allocation,) = harness.allocator.pods(harness.node)
    assert (allocation.pod, allocation.uid) == ("shop/cart-7", "u-42")


def test_chained_add_appends_to_prev_result(harness: Harness) -> None:
    pod = harness.new_pod()
    prev: dict[str, Any] = {
        "cniVersion": "1.1.0",
        "interfaces": [{"name": "dummy0", "mac": "02:00:00:00:00:01"}],
        "ips": [{"address": "192.0.2.9/24", "interface": 0}],
        "routes": [{"dst": "198.51.100.0/24"}],
        "dns": {"search": ["example"]},
    }
    result = harness.add("ctr-1", pod, prevResult=prev)
    assert result["interfaces"][0]["name"] == "dummy0"
    assert result["interfaces"][2]["name"] == "eth0"
    assert result["ips"][0] == prev["ips"][0]
    assert [i["interface"] for i in result["ips"][1:]] == [2, 2]
    assert result["routes"][0] == {"dst": "198.51.100.0/24"}
    assert result["dns"] == {"search": ["example"]}


# --- DEL, CHECK -------------------------------------------------------------------------


def test_del_removes_everything_and_del_again_succeeds(harness: Harness) -> None:
    pod = harness.new_pod()
    result = harness.add("ctr-1", pod)
    config = harness.config(prevResult=result)
    assert harness.run("DEL", config, container_id="ctr-1", netns=pod).returncode == 0
    assert node_veths(harness.node_netns) == []
    assert harness.allocator.pods(harness.node) == []
    assert "eth0" not in ip(pod, "link", "show")
    routes = ip(harness.node_netns, "-6", "route", "show")
    assert _address(result, 6) not in routes
    assert [a.container_id for a, _ in harness.hooks.deleted] == ["ctr-1"]

    again = harness.run("DEL", config, container_id="ctr-1", netns=pod)
    assert again.returncode == 0 and again.output is None
    # DEL without CNI_NETNS or prevResult, of a container never added: still success.
    never = harness.run("DEL", container_id="never-added", drop=("CNI_NETNS",))
    assert never.returncode == 0


def test_del_after_the_pod_namespace_is_gone(harness: Harness, cni_namespaces: Namespaces) -> None:
    pod = harness.new_pod()
    harness.add("ctr-1", pod)
    cni_namespaces.delete(pod)
    done = harness.run("DEL", container_id="ctr-1", netns=pod)
    assert done.returncode == 0
    assert harness.allocator.pods(harness.node) == []
    assert node_veths(harness.node_netns) == []


def test_check_passes_after_add_and_fails_when_the_address_is_deleted(harness: Harness) -> None:
    pod = harness.new_pod()
    result = harness.add("ctr-1", pod)
    config = harness.config(prevResult=result)
    ok = harness.run("CHECK", config, container_id="ctr-1", netns=pod)
    assert ok.returncode == 0 and ok.output is None

    address = _address(result, 6)
    ip(pod, "-6", "addr", "del", f"{address}/128", "dev", "eth0")
    broken = harness.run("CHECK", config, container_id="ctr-1", netns=pod)
    assert broken.returncode == 1
    assert broken.code == protocol.CHECK_FAILED
    assert address in broken.output["details"]


def test_check_reports_a_missing_node_route_and_a_missing_sid(harness: Harness) -> None:
    pod = harness.new_pod()
    result = harness.add("ctr-1", pod)
    config = harness.config(prevResult=result)
    ip(harness.node_netns, "-4", "route", "del", f"{_address(result, 4)}/32")
    harness.hooks.check_problems = ["End.DX6 SID fcbb:bb00:1::1:7 is not programmed"]
    broken = harness.run("CHECK", config, container_id="ctr-1", netns=pod)
    assert broken.code == protocol.CHECK_FAILED
    assert f"does not route {_address(result, 4)}" in broken.output["details"]
    assert "End.DX6" in broken.output["details"]


def test_check_of_an_unknown_container_is_code_3(harness: Harness) -> None:
    pod = harness.new_pod()
    done = harness.run("CHECK", harness.config(prevResult={}), container_id="who", netns=pod)
    assert done.code == protocol.UNKNOWN_CONTAINER


# --- malformed input: the right code, and nothing left behind ---------------------------

_VALID = b'{"cniVersion": "1.1.0", "name": "srv6", "type": "srv6-cni"'
MALFORMED = [
    ("bad JSON", b'{"cniVersion": "1.1.0", "name": ', {}, protocol.DECODING_FAILURE),
    # Issue #15: the shim's own parser answered these two with 999 (SystemError from
    # CPython's private scanner, RecursionError).
    ("a lone brace", b"{", {}, protocol.DECODING_FAILURE),
    ("nested 100000 deep", b"[" * 100_000, {}, protocol.DECODING_FAILURE),
    ("objects nested 100000 deep", b'{"a": ' * 100_000, {}, protocol.DECODING_FAILURE),
    ("empty stdin", b"", {}, protocol.DECODING_FAILURE),
    ("trailing garbage", _VALID + b"} x", {}, protocol.DECODING_FAILURE),
    ("single quotes", b"{'cniVersion': '1.1.0'}", {}, protocol.DECODING_FAILURE),
    ("not UTF-8", _VALID + b', "k": "\xff"}', {}, protocol.DECODING_FAILURE),
    ("UTF-16", (_VALID + b"}").decode().encode("utf-16"), {}, protocol.DECODING_FAILURE),
    ("NaN", _VALID + b', "mtu": NaN}', {}, protocol.DECODING_FAILURE),
    ("number out of range", _VALID + b', "timeoutSeconds": 1e999}', {}, 6),
    ("integer of 5000 digits", _VALID + b', "mtu": 1' + b"0" * 5000 + b"}", {}, 6),
    ("config is a list", b"[]", {}, protocol.DECODING_FAILURE),
    ("unknown cniVersion", {"cniVersion": "2.0.0"}, {}, protocol.INCOMPATIBLE_VERSION),
    ("unsupported cniVersion", {"cniVersion": "0.3.1"}, {}, protocol.INCOMPATIBLE_VERSION),
    ("missing cniVersion", {"cniVersion": None}, {}, protocol.INCOMPATIBLE_VERSION),
    ("cniVersion not a string", {"cniVersion": 1.1}, {}, protocol.DECODING_FAILURE),
    ("missing CNI_COMMAND", {}, {"drop": ("CNI_COMMAND",)}, protocol.INVALID_ENVIRONMENT),
    ("unknown CNI_COMMAND", {}, {"command": "MAKE"}, protocol.INVALID_ENVIRONMENT),
    ("missing CNI_CONTAINERID", {}, {"drop": ("CNI_CONTAINERID",)}, protocol.INVALID_ENVIRONMENT),
    ("missing CNI_NETNS", {}, {"drop": ("CNI_NETNS",)}, protocol.INVALID_ENVIRONMENT),
    ("missing CNI_IFNAME", {}, {"drop": ("CNI_IFNAME",)}, protocol.INVALID_ENVIRONMENT),
    ("bad container ID", {}, {"container_id": "-bad/id"}, protocol.INVALID_ENVIRONMENT),
    ("ifname too long", {}, {"ifname": "eth0123456789012"}, protocol.INVALID_ENVIRONMENT),
    ("ifname with a slash", {}, {"ifname": "et/h0"}, protocol.INVALID_ENVIRONMENT),
    ("relative CNI_NETNS", {}, {"netns": "netns/x"}, protocol.INVALID_ENVIRONMENT),
    ("bad CNI_ARGS", {}, {"args": "K8S_POD_NAME"}, protocol.INVALID_ENVIRONMENT),
    ("missing name", {"name": None}, {}, protocol.INVALID_CONFIG),
    ("bad network name", {"name": "my net"}, {}, protocol.INVALID_CONFIG),
    ("bad mtu", {"mtu": 576}, {}, protocol.INVALID_CONFIG),
    ("relative agentSocket", {"agentSocket": "cni.sock"}, {}, protocol.INVALID_CONFIG),
    # Beyond what a socket timeout can hold: was an OverflowError, code 999.
    ("timeoutSeconds 1e10", {"timeoutSeconds": 1e10}, {}, protocol.INVALID_CONFIG),
    ("ipam section", {"ipam": {"type": "host-local"}}, {}, protocol.UNSUPPORTED_FIELD),
    ("ipMasq", {"ipMasq": True}, {}, protocol.UNSUPPORTED_FIELD),
    ("prevResult not an object", {"prevResult": [1]}, {}, protocol.DECODING_FAILURE),
    ("netns does not exist", {}, {"netns": "/run/netns/s6t-none"}, protocol.UNKNOWN_CONTAINER),
    # Exists, so the agent allocates, then setns refuses it: the allocation is undone.
    ("netns is not a netns", {}, {"netns": "/etc/hostname"}, protocol.INVALID_ENVIRONMENT),
    ("CHECK without prevResult", {}, {"command": "CHECK"}, protocol.INVALID_CONFIG),
    ("GC on a 1.0.0 config", {"cniVersion": "1.0.0"}, {"command": "GC"}, 1),
    ("STATUS on a 0.4.0 config", {"cniVersion": "0.4.0"}, {"command": "STATUS"}, 1),
    ("GC without valid-attachments", {}, {"command": "GC"}, protocol.INVALID_CONFIG),
]


@pytest.mark.parametrize(
    ("config_change", "call", "code"),
    [pytest.param(c, k, code, id=name) for name, c, k, code in MALFORMED],
)
def test_malformed_input_gets_the_right_code_and_leaves_nothing(
    harness: Harness, config_change: dict[str, object] | bytes, call: dict[str, object], code: int
) -> None:
    pod = harness.new_pod()
    if isinstance(config_change, bytes):
        config: dict[str, object] | bytes = config_change
    else:
        config = harness.config()
        for key, value in config_change.items():
            if value is None:
                config.pop(key, None)
            else:
                config[key] = value
    done = run_cni(
        str(call.get("command", "ADD")),
        config,
        container_id=str(call.get("container_id", "ctr-1")),
        netns=str(call.get("netns", pod)),
        ifname=str(call.get("ifname", "eth0")),
        args=str(call.get("args", "")),
        drop=tuple(call.get("drop", ())),  # type: ignore[arg-type]
    )
    assert done.returncode == 1
    assert done.code == code, done.output
    assert set(done.output) == {"cniVersion", "code", "msg", "details"}
    assert done.output["cniVersion"] in protocol.SUPPORTED_VERSIONS
    assert node_veths(harness.node_netns) == []
    assert harness.allocator.pods(harness.node) == []
    assert "eth0" not in ip(pod, "link", "show")


def test_netns_vanishing_before_the_agent_sees_it_is_code_3(harness: Harness) -> None:
    # The shim checks CNI_NETNS too; this is the agent's own check, for the race.
    request = protocol.Request(
        "ADD",
        harness.config(),
        container_id="ctr-1",
        netns="/run/netns/" + unique("gone"),
        ifname="eth0",
    )
    reply = harness.server.handle(request.to_payload())
    assert reply["error"]["code"] == protocol.UNKNOWN_CONTAINER
    assert harness.allocator.pods(harness.node) == []


def test_the_node_namespace_itself_is_refused(harness: Harness) -> None:
    done = harness.run("ADD", container_id="ctr-1", netns=harness.node_netns)
    assert done.code == protocol.INVALID_ENVIRONMENT
    assert harness.allocator.pods(harness.node) == []


def test_an_existing_interface_in_the_pod_is_an_error(harness: Harness) -> None:
    pod = harness.new_pod()
    ip(pod, "link", "add", "eth0", "type", "veth", "peer", "name", "other0")
    done = harness.run("ADD", container_id="ctr-1", netns=pod)
    assert done.code == protocol.INTERFACE_SETUP_FAILED
    assert "eth0" in done.output["details"]
    assert node_veths(harness.node_netns) == []
    assert harness.allocator.pods(harness.node) == []


def test_exhausted_pool_names_the_pool_and_status_says_not_ready(
    make_cni_harness: Callable[..., Harness],
) -> None:
    harness = make_cni_harness(TINY)
    capacity = len(harness.allocator.plan.pod_indexes)
    assert capacity == 5
    for n in range(capacity):
        harness.add(f"ctr-{n}", harness.new_pod())
    pod = harness.new_pod()
    done = harness.run("ADD", container_id="one-too-many", netns=pod)
    assert done.code == protocol.POOL_EXHAUSTED
    assert "exhausted" in done.output["msg"] and harness.node in done.output["msg"]
    assert host_ifname("one-too-many", "eth0") not in node_veths(harness.node_netns)
    assert "eth0" not in ip(pod, "link", "show")

    status = harness.run("STATUS", drop=("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"))
    assert status.code == protocol.NOT_AVAILABLE and "exhausted" in status.output["msg"]

    # Freeing one address makes the next ADD (and STATUS) succeed again.
    assert harness.run("DEL", container_id="ctr-0", netns=pod).returncode == 0
    assert harness.run("ADD", container_id="one-too-many", netns=pod).returncode == 0


def test_agent_not_running_is_try_again_later(cni_namespaces: Namespaces) -> None:
    pod = cni_namespaces.add("s6p")
    config = {
        "cniVersion": "1.1.0",
        "name": "srv6",
        "type": "srv6-cni",
        "agentSocket": f"/run/{unique('no-agent')}/cni.sock",
    }
    for command in ("ADD", "DEL", "CHECK"):
        cfg = {**config, "prevResult": {}} if command == "CHECK" else config
        done = run_cni(command, cfg, container_id="ctr-1", netns=pod)
        assert done.code == protocol.TRY_AGAIN_LATER, (command, done.output)
        assert "not running" in done.output["msg"]
    status = run_cni("STATUS", config)
    assert status.code == protocol.NOT_AVAILABLE
    assert "eth0" not in ip(pod, "link", "show")


def test_store_failure_is_retryable_and_status_reports_it(harness: Harness) -> None:
    pod = harness.new_pod()
    harness.store.broken = True
    done = harness.run("ADD", container_id="ctr-1", netns=pod)
    assert done.code == protocol.TRY_AGAIN_LATER
    assert "store" in done.output["msg"]
    status = harness.run("STATUS")
    assert status.code == protocol.NOT_AVAILABLE
    # DEL never waits for the store: it succeeds, and the release is retried later.
    assert harness.run("DEL", container_id="ctr-1", netns=pod).returncode == 0
    with pytest.raises(StoreError):
        harness.server.retry_pending_releases()
    harness.store.broken = False
    assert harness.server.retry_pending_releases() == 0
    assert node_veths(harness.node_netns) == []
    assert harness.run("ADD", container_id="ctr-1", netns=pod).returncode == 0
    assert harness.run("STATUS").returncode == 0


def test_agent_not_ready_and_failing_hooks(harness: Harness) -> None:
    pod = harness.new_pod()
    harness.server.set_ready(False, "dataplane not programmed yet")
    done = harness.run("ADD", container_id="ctr-1", netns=pod)
    assert done.code == protocol.TRY_AGAIN_LATER
    status = harness.run("STATUS")
    assert status.code == protocol.NOT_AVAILABLE
    assert status.output["details"] == "dataplane not programmed yet"
    harness.server.set_ready(True)

    harness.hooks.fail_add = True
    done = harness.run("ADD", container_id="ctr-1", netns=pod)
    assert done.code == protocol.TRY_AGAIN_LATER and "SID" in done.output["details"]
    assert node_veths(harness.node_netns) == []
    assert harness.allocator.pods(harness.node) == []
    harness.hooks.fail_add = False
    assert harness.run("ADD", container_id="ctr-1", netns=pod).returncode == 0


def test_status_when_ready_prints_nothing(harness: Harness) -> None:
    done = harness.run("STATUS", drop=("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"))
    assert done.returncode == 0 and done.output is None


# --- GC, the socket ---------------------------------------------------------------------


def test_gc_releases_everything_not_in_valid_attachments(harness: Harness) -> None:
    pods = {f"ctr-{n}": harness.new_pod() for n in range(3)}
    results = {cid: harness.add(cid, netns) for cid, netns in pods.items()}
    # Wiring whose allocation is gone (an agent crash between the two): GC removes it too.
    leaked = "s6" + "0" * 12
    ip(harness.node_netns, "link", "add", leaked, "type", "veth", "peer", "name", "leak-peer")

    config = {
        **harness.config(),
        protocol.VALID_ATTACHMENTS: [{"containerID": "ctr-1", "ifname": "eth0"}],
    }
    done = run_cni("GC", config, ifname=None)
    assert done.returncode == 0 and done.output is None

    assert [a.container_id for a in harness.allocator.pods(harness.node)] == ["ctr-1"]
    assert node_veths(harness.node_netns) == [host_ifname("ctr-1", "eth0")]
    check = harness.run(
        "CHECK",
        harness.config(prevResult=results["ctr-1"]),
        container_id="ctr-1",
        netns=pods["ctr-1"],
    )
    assert check.returncode == 0, check.output
    assert sorted(a.container_id for a, _ in harness.hooks.deleted) == ["ctr-0", "ctr-2"]


def test_socket_is_private_and_a_stale_one_is_replaced(harness: Harness) -> None:
    mode = os.stat(harness.socket_path).st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600

    # A second server on a live socket refuses; after a crash (stale file) it takes over.
    other = CniServer(
        harness.node,
        harness.allocator,
        PodWiring(harness.node_netns),
        socket_path=harness.socket_path,
    )
    with pytest.raises(RuntimeError, match="another agent"):
        other.start()
    harness.server.stop()
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(harness.socket_path)  # a socket file nobody listens on
    stale.close()
    other.start()
    try:
        assert stat.S_IMODE(os.stat(harness.socket_path).st_mode) == 0o600
        assert harness.run("STATUS").returncode == 0
    finally:
        other.stop()
    assert not os.path.exists(harness.socket_path)


def test_garbage_on_the_socket_gets_an_error_not_a_crash(harness: Harness) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(harness.socket_path)
        body = b"not json"
        sock.sendall(len(body).to_bytes(4, "big") + body)
        reply = protocol.recv_frame(sock)
    assert reply["error"]["code"] == protocol.DECODING_FAILURE
    payload = {"command": "ADD", "config": {"cniVersion": "1.1.0"}, "containerId": 7}
    assert harness.server.handle(payload)["error"]["code"] == protocol.DECODING_FAILURE
    assert harness.run("STATUS").returncode == 0  # still serving
