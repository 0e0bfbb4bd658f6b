"""srv6-cni pieces with no kernel: the JSON codec, validation, result shapes, the shim's
import diet and its answers to JSON it cannot take, the installer, and the server's locks."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cni import protocol
from cni.install import install
from cni.main import run
from cni.protocol import CniError, Request
from cni.server import _Gate, _KeyedLocks
from cni.wiring import HOST_IFNAME_RE, host_ifname

# --- the JSON codec: the standard library's, strict -----------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=20,
)


@given(json_values)
def test_the_codec_round_trips_like_the_standard_library(value: Any) -> None:
    assert protocol.dumps(value) == json.dumps(value)
    assert protocol.dumps(value, compact=True) == json.dumps(value, separators=(",", ":"))
    text = json.dumps(value)
    assert protocol.loads(text) == json.loads(text)
    assert protocol.loads(f" \n{text}\t ".encode()) == json.loads(text)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "{",
        "[",
        '{"a": 1} x',
        "[1,]",
        "NaN",
        '{"a": Infinity}',
        '{"a": -Infinity}',
        "1e999",
        "'x'",
        b"\xff\xfe",
        '{"a": 1'.encode("utf-16"),  # json.loads alone would guess UTF-16 from bytes
        "\ufeff{}",
        "[" * 100_000,
        '{"a": ' * 100_000,
        "1" * 5000,  # past CPython's int string limit
    ],
)
def test_the_codec_raises_value_error_for_what_is_not_json(text: str | bytes) -> None:
    with pytest.raises(ValueError):
        protocol.loads(text)


def test_the_codec_refuses_to_encode_nan_and_nesting_too_deep() -> None:
    with pytest.raises(ValueError):
        protocol.dumps({"mtu": float("nan")})
    deep: list[Any] = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(ValueError, match="nested too deeply"):
        protocol.dumps(deep)


# --- the shim's start-up --------------------------------------------------------------


def _loaded_by(statement: str) -> dict[str, str | None]:
    """Modules `python -I -S` (the installed launcher's mode) loads for `statement`, beyond
    a bare interpreter, with where each came from."""
    probe = (
        "import sys; before = set(sys.modules); "
        f"{statement}; "
        "print({n: getattr(sys.modules[n].__spec__, 'origin', None) "
        "for n in set(sys.modules) - before})"
    )
    root = str(Path(__file__).resolve().parent.parent)
    done = subprocess.run(
        [sys.executable, "-I", "-S", "-c", f"import sys; sys.path.insert(0, {root!r}); {probe}"],
        capture_output=True,
        text=True,
        check=True,
    )
    loaded: dict[str, str | None] = eval(done.stdout)
    return loaded


def test_the_shim_imports_only_built_in_modules_and_json() -> None:
    # Beyond frozen or built-in modules: `json` and what it pulls in (re, enum...: ~8 ms
    # under -I -S, cni/README.md "Latency"), _socket, our three modules and __future__.
    # Any other stdlib .py module here (socket, typing, dataclasses...) costs every ADD.
    json_closure = set(_loaded_by("import json"))
    loaded = _loaded_by("import cni.main, cni.protocol, _socket")
    heavy = {
        name
        for name, origin in loaded.items()
        if origin not in ("frozen", "built-in")
        and name not in json_closure
        and name not in {"cni", "cni.main", "cni.protocol", "_socket", "__future__"}
    }
    assert not heavy, f"the shim now imports {sorted(heavy)}"


def test_config_nested_to_the_interpreters_limit_is_a_decoding_error_never_a_crash(
    tmp_path: Path,
) -> None:
    # Near the recursion limit a config may decode yet not encode again for the agent (the
    # encoder runs deeper in the stack). Each depth around the limit must come back as
    # code 6 or, decoded and encoded, as "agent not running" (11): never 999.
    launcher = install(
        bin_dir=str(tmp_path / "bin"), lib_dir=str(tmp_path / "lib"), python=sys.executable
    )
    deepest = subprocess.run(
        [sys.executable, "-I", "-S", "-c", _DEEPEST_JSON_ARRAY],
        capture_output=True,
        text=True,
        check=True,
    )
    limit = int(deepest.stdout)
    codes = {}
    for depth in range(limit - 16, limit + 3):
        config = (
            '{"cniVersion": "1.1.0", "name": "srv6", "type": "srv6-cni", '
            f'"agentSocket": "{tmp_path}/none.sock", "x": {"[" * depth}{"]" * depth}}}'
        )
        done = subprocess.run(
            [str(launcher)],
            env={**BASE_ENV, "CNI_NETNS": "/proc/self/ns/net"},
            input=config.encode(),
            capture_output=True,
            check=False,
        )
        codes[depth] = json.loads(done.stdout)["code"]
    assert set(codes.values()) <= {protocol.DECODING_FAILURE, protocol.TRY_AGAIN_LATER}, codes
    assert codes[limit + 2] == protocol.DECODING_FAILURE


_DEEPEST_JSON_ARRAY = """
import json
depth = 1
while True:
    try:
        json.loads("[" * (depth + 1) + "]" * (depth + 1))
    except RecursionError:
        break
    depth += 1
print(depth)
"""


def test_install_writes_an_isolated_launcher(tmp_path: Path) -> None:
    stale = tmp_path / "lib" / "cni" / "fastjson.py"  # what an older shim had
    stale.parent.mkdir(parents=True)
    stale.write_text("import _json\n")
    launcher = install(
        bin_dir=str(tmp_path / "bin"), lib_dir=str(tmp_path / "lib"), python=sys.executable
    )
    assert launcher.read_text().startswith(f"#!{sys.executable} -IS\n")
    assert launcher.stat().st_mode & 0o777 == 0o755
    assert sorted(p.name for p in (tmp_path / "lib" / "cni").glob("*.py")) == [
        "__init__.py",
        "main.py",
        "protocol.py",
    ]
    done = subprocess.run(
        [str(launcher)],
        env={"CNI_COMMAND": "VERSION"},
        input=b'{"cniVersion": "1.0.0"}',
        capture_output=True,
        check=True,
    )
    assert json.loads(done.stdout)["supportedVersions"] == list(protocol.SUPPORTED_VERSIONS)


# --- validation and results -----------------------------------------------------------

BASE_ENV = {
    "CNI_COMMAND": "ADD",
    "CNI_CONTAINERID": "abc",
    "CNI_NETNS": "/proc/self/ns/net",
    "CNI_IFNAME": "eth0",
    "CNI_PATH": "/opt/cni/bin",
}
BASE_CONFIG = {"cniVersion": "1.1.0", "name": "srv6", "type": "srv6-cni"}


def test_errors_use_the_callers_version_when_we_speak_it() -> None:
    status, output = run(
        {**BASE_ENV, "CNI_IFNAME": ""}, json.dumps({**BASE_CONFIG, "cniVersion": "0.4.0"}).encode()
    )
    assert status == 1
    assert output["cniVersion"] == "0.4.0" and output["code"] == protocol.INVALID_ENVIRONMENT
    assert "CNI_IFNAME" in output["msg"]  # the spec: name the invalid variables


def test_unsupported_fields_name_key_and_value() -> None:
    config = {**BASE_CONFIG, "ipam": {"type": "host-local"}}
    with pytest.raises(CniError) as caught:
        protocol.request_from_env(BASE_ENV, json.dumps(config).encode())
    assert caught.value.code == protocol.UNSUPPORTED_FIELD
    assert 'ipam={"type": "host-local"}' in caught.value.msg


@pytest.mark.parametrize(
    ("name", "ok"),
    [("abc", True), ("a-b_c.9", True), ("9", True), ("-a", False), ("a b", False), ("é", False)],
)
def test_container_id_rules(name: str, ok: bool) -> None:
    assert protocol.valid_name(name) is ok


def test_valid_attachments_are_checked() -> None:
    config = {**BASE_CONFIG, protocol.VALID_ATTACHMENTS: [{"containerID": "a", "ifname": "eth0"}]}
    assert protocol.valid_attachments(config) == {("a", "eth0")}
    with pytest.raises(CniError) as caught:
        protocol.valid_attachments({protocol.VALID_ATTACHMENTS: [{"containerID": 1}]})
    assert caught.value.code == protocol.INVALID_CONFIG


def test_payload_round_trip_revalidates() -> None:
    request = protocol.request_from_env(BASE_ENV, json.dumps(BASE_CONFIG).encode())
    again = Request.from_payload(json.loads(json.dumps(request.to_payload())))
    assert again.to_payload() == request.to_payload()
    broken = {**request.to_payload(), "ifname": "x" * 16}
    with pytest.raises(CniError) as caught:
        Request.from_payload(broken)
    assert caught.value.code == protocol.INVALID_ENVIRONMENT


def test_results_per_version() -> None:
    interfaces = [{"name": "s6x", "mac": "02:00:00:00:00:01", "mtu": 1420}]
    ips = [{"address": "fd00::2/128", "gateway": "fe80::1", "interface": 0}]
    new = protocol.format_result("1.1.0", interfaces, ips, [], {})
    assert new["interfaces"][0]["mtu"] == 1420 and "version" not in new["ips"][0]
    old = protocol.format_result("0.4.0", interfaces, ips, [], {})
    assert "mtu" not in old["interfaces"][0] and old["ips"][0]["version"] == "6"
    # A 0.4.0 prevResult chains into a 1.0.0 result without its "version" tags.
    chained = protocol.format_result("1.0.0", interfaces, ips, [], {}, prev_result=old)
    assert [ip["interface"] for ip in chained["ips"]] == [0, 1]
    assert all("version" not in ip for ip in chained["ips"])


def test_host_interface_names_are_short_stable_and_distinct() -> None:
    names = {host_ifname(f"container-{n}", "eth0") for n in range(1000)}
    assert len(names) == 1000
    assert all(len(n) <= 15 and HOST_IFNAME_RE.match(n) for n in names)
    assert host_ifname("a", "eth0") == host_ifname("a", "eth0") != host_ifname("a", "eth1")


# --- the server's locks -----------------------------------------------------------------


def test_gc_gate_waits_for_requests_in_flight_and_holds_new_ones() -> None:
    gate = _Gate()
    events: list[str] = []
    inside = threading.Event()
    release = threading.Event()

    def request(name: str) -> None:
        with gate.shared():
            events.append(f"{name} in")
            inside.set()
            release.wait(5)
            events.append(f"{name} out")

    def gc() -> None:
        with gate.exclusive():
            events.append("gc")

    first = threading.Thread(target=request, args=("add1",))
    first.start()
    inside.wait(5)
    collector = threading.Thread(target=gc)
    collector.start()
    time.sleep(0.05)
    late = threading.Thread(target=request, args=("add2",))
    late.start()
    time.sleep(0.05)
    assert events == ["add1 in"]  # GC waits for add1; add2 waits behind GC
    release.set()
    for thread in (first, collector, late):
        thread.join(5)
    assert events == ["add1 in", "add1 out", "gc", "add2 in", "add2 out"]


def test_keyed_locks_serialise_one_key_and_forget_it_after() -> None:
    locks = _KeyedLocks()
    order: list[str] = []

    def hold(tag: str) -> None:
        with locks.hold(("c", "eth0")):
            order.append(f"{tag}+")
            time.sleep(0.02)
            order.append(f"{tag}-")

    threads = [threading.Thread(target=hold, args=(t,)) for t in "ab"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    assert order in (["a+", "a-", "b+", "b-"], ["b+", "b-", "a+", "a-"])
    assert locks._locks == {}
