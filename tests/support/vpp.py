"""Fixtures: a real VPP 25.10 to test the VPP backend against, pods and a peer on it.

Which VPP:
- `SRV6CTL_VPP_BIN=/path/to/vpp`: the tests start their own VPP in a throw-away network
  namespace (no DPDK, 4k pages, API and stats sockets in a temp dir; plugins from
  `SRV6CTL_VPP_PLUGIN_PATH` or `../lib/<arch>/vpp_plugins` beside the binary). Only then
  can a test restart it (`Target.process`).
- `SRV6CTL_VPP_API_SOCKET=/run/vpp/api.sock`: a VPP that is already running (optionally
  `SRV6CTL_VPP_STATS_SOCKET`, and `SRV6CTL_VPP_NETNS`, the namespace it runs in, for the
  pod-port and packet tests). The tests remove what they programmed, but use a VPP that
  is theirs: srv6ctl owns every SR object and API route of the VPP it is given.

Packets (`SRV6CTL_VPP_DATAPATH=1`, root): `lab` puts a peer namespace on an af_packet
uplink (the operator's, made by CLI) and a dual-stack pod namespace on an af_packet pod
port (the backend's); frames are written and read raw with scapy (`PacketPort`).

tests/conftest.py registers the fixtures: `vpp` (one VPP per test module), `backend` (a
clean VppBackend on it, cleaned again after), `pod` and `lab`.
Everything is skipped with the reason when something it needs is missing.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from srv6ctl.dataplane import vpp_codec_base as codec_base
from srv6ctl.dataplane.model import (
    Change,
    EncapMode,
    End,
    EndDT4,
    EndDT6,
    EndT,
    IPv4Address,
    IPv6Address,
    NodeConfig,
    Op,
    PodAttachment,
    Route,
    RouteKind,
    SegmentList,
    SrPolicy,
    Steering,
)
from srv6ctl.dataplane.reconcile import plan
from srv6ctl.dataplane.vpp import VppBackend
from srv6ctl.dataplane.vpp_api import find_api_dir
from srv6ctl.lab import vpp as lab_vpp
from srv6ctl.lab.vpp import BIN_ENV, plugin_path
from tests.support.netns import run

SOCKET_ENV = "SRV6CTL_VPP_API_SOCKET"
STATS_ENV = "SRV6CTL_VPP_STATS_SOCKET"
NETNS_ENV = "SRV6CTL_VPP_NETNS"
DATAPATH_ENV = "SRV6CTL_VPP_DATAPATH"

NODE = "fcbb:bb00:1::"
SOURCE = IPv6Address("2001:db8:1::1")
PEER = IPv6Address("2001:db8:1::2")
BSID = IPv6Address("fcbb:bb00::1:10")
A, B, C, D = (IPv6Address(f"fcbb:bb00:{n}::1:3") for n in (2, 3, 4, 5))
CLUSTER_IP = "fd00:96::10/128"
CLUSTER_IP4 = "10.96.0.10/32"
POD6 = IPv6Address("fd00:10:0:1::3")
POD4 = IPv4Address("10.128.1.3")
GATEWAY6 = IPv6Address("fd00:10:0:1::1")  # the plan's node-side gateway (::1 of its /64)
GATEWAY4 = IPv4Address("10.128.1.1")
MARK = b"s6t-vpp-probe"


def red(*lists: SegmentList, bsid: IPv6Address = BSID) -> SrPolicy:
    return SrPolicy(bsid, lists, mode=EncapMode.ENCAP_RED)


def base_config(**extra: Any) -> NodeConfig:
    """A node with a weighted two-list service (v6 and v4 ClusterIPs), node SIDs and routes."""
    fields: dict[str, Any] = {
        "encap_source": SOURCE,
        "local_sids": frozenset(
            {
                End(f"{NODE}1"),
                EndDT6(f"{NODE}6"),
                EndDT4(f"{NODE}4", table=10),
                EndT(f"{NODE}7", table=10),
            }
        ),
        "policies": frozenset({red(SegmentList((A,), 3), SegmentList((B,), 1))}),
        "steerings": frozenset({Steering(CLUSTER_IP, BSID), Steering(CLUSTER_IP4, BSID)}),
        "routes": frozenset(
            {
                Route("fd00:96::11/128", kind=RouteKind.PROHIBIT),
                Route("10.96.0.11/32", kind=RouteKind.PROHIBIT),
                Route("fcbb:bb00::/32", via=PEER),
                Route("fd00:96::12/128", kind=RouteKind.BLACKHOLE, table=10),
            }
        ),
    }
    fields.update(extra)
    return NodeConfig(**fields)


# --- a VPP to test against --------------------------------------------------------------


STARTUP = """
unix {{ nodaemon cli-listen {dir}/cli.sock log {dir}/vpp.log poll-sleep-usec 100 }}
api-segment {{ prefix {prefix} }}
socksvr {{ socket-name {dir}/api.sock }}
statseg {{ socket-name {dir}/stats.sock size 32m page-size 4k }}
memory {{ main-heap-size 256M main-heap-page-size 4k }}
buffers {{ buffers-per-numa 8192 page-size 4k }}
plugins {{
{plugins}  plugin dpdk_plugin.so {{ disable }}
}}
"""


class VppProcess:
    """A VPP of our own in network namespace `netns`, configured in a temp dir."""

    def __init__(self, binary: str, netns: str) -> None:
        self.binary = binary
        self.netns = netns
        self.dir = Path(tempfile.mkdtemp(prefix="s6t-vpp-"))
        found = plugin_path(binary)
        plugins = f"  path {found}\n" if found else ""  # None: a packaged VPP's own path
        config = STARTUP.format(dir=self.dir, prefix=f"s6t{secrets.token_hex(4)}", plugins=plugins)
        (self.dir / "startup.conf").write_text(config)
        self.api_socket = str(self.dir / "api.sock")
        self.stats_socket = str(self.dir / "stats.sock")
        self.cli_socket = str(self.dir / "cli.sock")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        for name in ("api.sock", "stats.sock", "cli.sock"):
            (self.dir / name).unlink(missing_ok=True)
        log = open(self.dir / "stdout.log", "ab")  # noqa: SIM115 - kept by the process
        self.process = subprocess.Popen(
            ["ip", "netns", "exec", self.netns, self.binary, "-c", str(self.dir / "startup.conf")],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"vpp exited: {(self.dir / 'stdout.log').read_text()[-2000:]}")
            try:
                with socket.socket(socket.AF_UNIX) as probe:
                    probe.connect(self.api_socket)
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("vpp did not open its API socket within 30s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def kill(self) -> None:
        """SIGKILL: VPP gets no chance to close its sockets or say goodbye to clients."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@dataclass
class Target:
    api_socket: str
    stats_socket: str | None
    netns: str | None  # where VPP runs (None: unknown)
    process: VppProcess | None  # ours to restart, or None

    def backend(self, **options: Any) -> VppBackend:
        options.setdefault("pod_gateway_v6", GATEWAY6)
        options.setdefault("pod_gateway_v4", GATEWAY4)
        return VppBackend(
            self.api_socket, stats_socket=self.stats_socket, vpp_netns=self.netns, **options
        )


def why_no_vpp() -> str | None:
    """Why no VPP test can run here, or None."""
    if os.environ.get(BIN_ENV) or os.environ.get(SOCKET_ENV):
        if find_api_dir() is None:
            return "no VPP API definitions ($SRV6CTL_VPP_API_DIR or ../shared/vpp-api)"
        try:
            import vpp_papi  # noqa: F401
        except ImportError:
            return "vpp-papi is not installed"
        if os.environ.get(BIN_ENV) and os.geteuid() != 0:
            return f"{BIN_ENV}: starting VPP in a namespace needs root"
        return None
    return (
        f"no VPP: set {SOCKET_ENV} to a running VPP 25.10's API socket, or {BIN_ENV} to a "
        "vpp binary these tests start themselves"
    )


def own_api_dir() -> str | None:
    """The API definitions the VPP of `SRV6CTL_VPP_BIN` ships (`share/vpp/api` of its
    install), unless `SRV6CTL_VPP_API_DIR` says which: ../shared/vpp-api holds only some
    plugins' (no abf), and a test of another plugin needs the binary's own."""
    binary = os.environ.get(BIN_ENV)
    return lab_vpp.own_api_dir(binary) if binary else None


@pytest.fixture(scope="module")
def vpp() -> Iterator[Target]:
    reason = why_no_vpp()
    if reason is not None:
        pytest.skip(reason)
    binary = os.environ.get(BIN_ENV)
    if binary:
        netns = f"s6t-{secrets.token_hex(5)}"
        run("ip", "netns", "add", netns)
        run("ip", "-n", netns, "link", "set", "lo", "up")
        process = VppProcess(binary, netns)
        try:
            process.start()
            yield Target(process.api_socket, process.stats_socket, netns, process)
        finally:
            process.cleanup()
            run("ip", "netns", "del", netns, check=False)
        return
    yield Target(
        os.environ[SOCKET_ENV],
        os.environ.get(STATS_ENV),
        os.environ.get(NETNS_ENV),
        None,
    )


def clean(backend: VppBackend) -> None:
    for interface in backend.pod_ports():
        backend.detach_pod(interface)
    backend.apply(plan(NodeConfig(), backend.dump()))


@pytest.fixture
def backend(vpp: Target) -> Iterator[VppBackend]:
    with vpp.backend() as b:
        clean(b)
        yield b
    with vpp.backend() as b:
        clean(b)


def reconcile(backend: VppBackend, desired: NodeConfig) -> int:
    """Apply what the backend's dump says is missing; the writes it took."""
    before = backend.writes
    backend.apply(plan(desired, backend.dump()))
    return backend.writes - before


# --- pods -------------------------------------------------------------------------------


def require_netns(vpp: Target) -> str:
    if os.geteuid() != 0:
        pytest.skip("pod ports need root (veth pairs, namespaces)")
    if vpp.netns is None:
        pytest.skip(f"pod ports need the namespace VPP runs in ({NETNS_ENV})")
    return vpp.netns


@dataclass
class PodNs:
    name: str
    host_interface: str  # the veth end in VPP's namespace
    attachment: PodAttachment


@pytest.fixture
def pod(vpp: Target) -> Iterator[PodNs]:
    """A dual-stack pod namespace (POD6, POD4 on eth0) on a veth into VPP's namespace."""
    vpp_netns = require_netns(vpp)
    name = f"s6t-{secrets.token_hex(5)}"
    host = f"s6t{secrets.token_hex(4)}"
    run("ip", "netns", "add", name)
    try:
        run("ip", "-n", name, "link", "set", "lo", "up")
        for sysctl in ("all", "default"):
            run(
                "ip", "netns", "exec", name, "sysctl", "-qw", f"net.ipv6.conf.{sysctl}.accept_dad=0"
            )
        run(
            "ip",
            "-n",
            vpp_netns,
            "link",
            "add",
            host,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            name,
        )
        run("ip", "-n", vpp_netns, "link", "set", host, "up")
        run("ip", "-n", name, "link", "set", "eth0", "up")
        run("ip", "-n", name, "-6", "addr", "add", f"{POD6}/128", "dev", "eth0", "nodad")
        run("ip", "-n", name, "-6", "route", "add", "default", "via", "fe80::1", "dev", "eth0")
        run("ip", "-n", name, "-4", "addr", "add", f"{POD4}/32", "dev", "eth0")
        attachment = PodAttachment(
            interface=host,
            pod="default/web-0",
            netns=f"/var/run/netns/{name}",
            addresses=frozenset({f"{POD6}/128", f"{POD4}/32"}),
        )
        yield PodNs(name, host, attachment)
    finally:
        run("ip", "-n", vpp_netns, "link", "del", host, check=False)
        run("ip", "netns", "del", name, check=False)


def in_netns(netns: str, path: str) -> str:
    """A file's content as seen from `netns` (e.g. a /proc/sys value)."""
    done = run("ip", "netns", "exec", netns, "cat", path, check=False)
    return done.stdout.strip()


# --- real packets -----------------------------------------------------------------------


@dataclass
class Lab:
    backend: VppBackend
    pod: PodNs
    peer: str
    uplink: str  # VPP's name of the uplink interface (host-...)
    vpp_uplink_mac: str
    vpp_pod_mac: str
    pod_mac: str
    peer_mac: str


def mac_of(backend: VppBackend, sw_if_index: int) -> str:
    (details,) = backend.channel.dump("sw_interface_dump", sw_if_index=sw_if_index)
    return str(details.l2_address)


def link_mac(netns: str, interface: str) -> str:
    (link,) = json.loads(run("ip", "-n", netns, "-j", "link", "show", "dev", interface).stdout)
    return str(link["address"])


@pytest.fixture
def lab(vpp: Target, backend: VppBackend, pod: PodNs) -> Iterator[Lab]:
    if os.environ.get(DATAPATH_ENV) != "1":
        pytest.skip(f"packets through VPP need {DATAPATH_ENV}=1")
    assert vpp.netns is not None
    peer = f"s6t-{secrets.token_hex(5)}"
    uplink = f"s6u{secrets.token_hex(4)}"
    run("ip", "netns", "add", peer)
    try:
        run("ip", "-n", peer, "link", "set", "lo", "up")
        run(
            "ip",
            "-n",
            vpp.netns,
            "link",
            "add",
            uplink,
            "type",
            "veth",
            "peer",
            "name",
            "p0",
            "netns",
            peer,
        )
        run("ip", "-n", vpp.netns, "link", "set", uplink, "up")
        run("ip", "-n", peer, "link", "set", "p0", "up")
        run("ip", "-n", peer, "-6", "addr", "add", f"{PEER}/64", "dev", "p0", "nodad")
        # The uplink is the operator's, not ours: made by CLI, untagged, never dumped.
        backend.cli(f"create host-interface name {uplink} cksum-gso-disable")
        backend.cli(f"set interface state host-{uplink} up")
        backend.cli(f"set interface ip address host-{uplink} {SOURCE}/64")
        backend.apply([Change(Op.ADD, new=pod.attachment)])
        ports = backend.pod_ports()
        uplink_index = next(
            int(d.sw_if_index)
            for d in backend.channel.dump("sw_interface_dump", sw_if_index=codec_base.INVALID_INDEX)
            if d.interface_name == f"host-{uplink}"
        )
        yield Lab(
            backend=backend,
            pod=pod,
            peer=peer,
            uplink=f"host-{uplink}",
            vpp_uplink_mac=mac_of(backend, uplink_index),
            vpp_pod_mac=mac_of(backend, ports[pod.host_interface].sw_if_index),
            pod_mac=link_mac(pod.name, "eth0"),
            peer_mac=link_mac(peer, "p0"),
        )
    finally:
        backend.cli(f"delete host-interface name {uplink}")
        run("ip", "-n", vpp.netns, "link", "del", uplink, check=False)
        run("ip", "netns", "del", peer, check=False)


def warm_up(lab: Lab) -> None:
    """Let VPP resolve the peer's MAC (neighbour discovery) first; pods are static."""
    lab.backend.cli(f"ping {PEER} repeat 2 interval 0.1")


def marked(frame: Any) -> bool:
    return MARK in bytes(frame)


__all__ = [
    "BIN_ENV",
    "DATAPATH_ENV",
    "Lab",
    "PodNs",
    "Target",
    "VppProcess",
    "backend",
    "base_config",
    "clean",
    "lab",
    "own_api_dir",
    "pod",
    "reconcile",
    "vpp",
    "why_no_vpp",
]
