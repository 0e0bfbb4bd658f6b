"""One FD.io VPP per lab node (`lab up --dataplane vpp`): found, configured, started, checked.

Each node's VPP runs inside the node's network namespace with a startup config the lab
writes into the node's directory (`<state dir>/<node>/vpp/`): no DPDK (plugins off but
af_packet, ping, acl, abf and memif), 4 KiB pages only (no hugepages to reserve),
`poll-sleep-usec` so an idle VPP does not spin a core, and its API, stats and CLI
sockets, its runtime directory and its log in that directory. Its shared-memory API
segment is named after the lab's prefix and the node (`/dev/shm/<prefix>-<node>-*`); VPP
removes it when it exits, and `remove_leftovers` does for one that was killed. Its agent
speaks the API definitions the binary ships (`own_api_dir`): they are the running VPP's
own (NodePorts need classify.api.json, a core one; abf.api.json lets the agent move the
`Rule`s an older agent programmed with ABF to the classifier).

The node's uplink (`eth0`, its veth to the underlay bridge) belongs to VPP, as a NIC
would on a real node: the startup config's CLI script makes it an af_packet interface
with the kernel device's MAC (frames addressed to the node reach VPP, and verify's probe
finds the node where the state file says) and gives it the node's InternalIPs. The kernel
end keeps no address and has IPv6 switched off, so only VPP answers on the underlay.
Because the script is part of VPP's own config, a restarted VPP has its uplink again
before the agent replays the rest.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from srv6ctl.dataplane.vpp_api import API_DIR_ENV, VppChannel, find_api_dir
from srv6ctl.lab import processes
from srv6ctl.lab.netns import LabError
from srv6ctl.lab.state import ProcessRecord

BIN_ENV = "SRV6CTL_VPP_BIN"
PLUGINS_ENV = "SRV6CTL_VPP_PLUGIN_PATH"
# Pod and uplink ports; ICMP echo; NetworkPolicy (the agent's ACLs); ABF (where an older
# agent put its `Rule`s: NodePorts are classifier sessions now, VPP's own); memif pods.
PLUGINS = (
    "af_packet_plugin.so",
    "ping_plugin.so",
    "acl_plugin.so",
    "abf_plugin.so",
    "memif_plugin.so",
)
UPLINK = "eth0"
READY_TIMEOUT = 30.0
SHM_SUFFIXES = ("-global_vm", "-vpe-api")  # what api-segment { prefix P } puts in /dev/shm

STARTUP = """\
unix {{
  nodaemon
  runtime-dir {dir}
  cli-listen {dir}/cli.sock
  log {dir}/vpp.log
  poll-sleep-usec 100
  startup-config {dir}/setup.vpp
}}
api-segment {{ prefix {shm_prefix} }}
socksvr {{ socket-name {dir}/api.sock }}
statseg {{ socket-name {dir}/stats.sock size 32m page-size 4k }}
memory {{ main-heap-size 256M main-heap-page-size 4k }}
buffers {{ buffers-per-numa 8192 page-size 4k }}
plugins {{
{plugins}
}}
"""


class NoVpp(LabError):
    """`--dataplane vpp` without a usable VPP on this host."""


def find_binary() -> str:
    """`$SRV6CTL_VPP_BIN`, else `vpp` on PATH; NoVpp says what is missing otherwise."""
    explicit = os.environ.get(BIN_ENV)
    if explicit:
        if not (os.path.isfile(explicit) and os.access(explicit, os.X_OK)):
            raise NoVpp(f"--dataplane vpp: {BIN_ENV}={explicit} is not an executable file")
        return explicit
    found = shutil.which("vpp")
    if found is None:
        raise NoVpp(
            f"--dataplane vpp needs FD.io VPP: no `vpp` binary on PATH (or {BIN_ENV}); "
            f"install VPP 25.10, or set {BIN_ENV}=/path/to/vpp, or use --dataplane kernel"
        )
    return found


def check_client(binary: str) -> None:
    """The agents talk to VPP through vpp-papi and the API definitions of VPP 25.10."""
    try:
        import vpp_papi  # noqa: F401  # here, not above: only asks whether it is installed
    except ImportError as err:
        raise NoVpp("--dataplane vpp: vpp-papi is not installed (pip install vpp-papi)") from err
    if own_api_dir(binary) is None and find_api_dir() is None:
        raise NoVpp(
            f"--dataplane vpp: no VPP API definitions (*.api.json): set ${API_DIR_ENV}, "
            "or install VPP's (/usr/share/vpp/api)"
        )


def plugin_path(binary: str) -> str | None:
    """`$SRV6CTL_VPP_PLUGIN_PATH`, else the build tree's `lib*/**/vpp_plugins` beside the
    binary, else None (VPP's own default, right for a packaged VPP)."""
    explicit = os.environ.get(PLUGINS_ENV)
    if explicit:
        return explicit
    found = next(Path(binary).resolve().parent.parent.glob("lib*/**/vpp_plugins"), None)
    return str(found) if found is not None else None


def own_api_dir(binary: str) -> str | None:
    """The API definitions `binary` ships (`share/vpp/api` of its install: a build tree's
    or /usr/share/vpp/api of a package), unless `$SRV6CTL_VPP_API_DIR` names others; None
    then, or without any (the agent's own search decides: vpp_api.find_api_dir)."""
    if os.environ.get(API_DIR_ENV):
        return None
    found = Path(binary).resolve().parent.parent / "share" / "vpp" / "api"
    return str(found) if find_api_dir(found) is not None else None


@dataclass(frozen=True)
class VppNode:
    """Where one node's VPP keeps its files, and what its config says."""

    dir: Path
    shm_prefix: str

    @property
    def startup(self) -> Path:
        return self.dir / "startup.conf"

    @property
    def script(self) -> Path:
        return self.dir / "setup.vpp"

    @property
    def api_socket(self) -> str:
        return str(self.dir / "api.sock")

    @property
    def stats_socket(self) -> str:
        return str(self.dir / "stats.sock")

    @property
    def log(self) -> Path:
        return self.dir / "stdout.log"

    def shm_files(self) -> list[Path]:
        return [Path("/dev/shm") / f"{self.shm_prefix}{s}" for s in SHM_SUFFIXES]


def startup_config(node: VppNode, plugins: str | None) -> str:
    lines = [*([f"  path {plugins}"] if plugins else []), "  plugin default { disable }"]
    lines += [f"  plugin {name} {{ enable }}" for name in PLUGINS]
    return STARTUP.format(dir=node.dir, shm_prefix=node.shm_prefix, plugins="\n".join(lines))


def uplink_script(mac: str, addresses: Sequence[str]) -> str:
    """VPP CLI: the node's uplink as VPP's interface `host-eth0`, addressed and up."""
    # cksum-gso-disable: VPP 25.10's af_packet on a veth otherwise corrupts what it sends
    # (shared/vpp-api/README.md).
    interface = f"host-{UPLINK}"
    lines = [f"create host-interface name {UPLINK} hw-addr {mac} cksum-gso-disable"]
    lines += [f"set interface ip address {interface} {a}" for a in addresses]
    # ra-suppress: a node is no router for the underlay's hosts (the probe would take it
    # as its default router).
    lines += [f"ip6 nd {interface} ra-suppress", f"set interface state {interface} up"]
    return "\n".join(lines) + "\n"


def write_config(node: VppNode, binary: str, mac: str, addresses: Sequence[str]) -> None:
    node.dir.mkdir(parents=True, exist_ok=True)
    node.script.write_text(uplink_script(mac, addresses))
    node.startup.write_text(startup_config(node, plugin_path(binary)))


def start(node: VppNode, binary: str, netns: str, *, lab: Path) -> ProcessRecord:
    """VPP in `netns` (`ip netns exec` execs it: the recorded pid is VPP's own)."""
    for stale in ("api.sock", "stats.sock", "cli.sock"):
        (node.dir / stale).unlink(missing_ok=True)
    argv = ["ip", "netns", "exec", netns, binary, "-c", str(node.startup)]
    return processes.spawn(argv, node.log, lab=lab)


def wait_ready(node: VppNode, record: ProcessRecord, name: str) -> None:
    """Until VPP's API socket accepts, then check that the uplink is VPP's and addressed."""
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        if not processes.alive(record):
            raise LabError(
                f"VPP of {name} exited; its output ({node.log}) ends with:\n"
                + processes.log_tail(node.log)
            )
        try:
            with socket.socket(socket.AF_UNIX) as probe:
                probe.connect(node.api_socket)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise LabError(
                    f"VPP of {name} did not open {node.api_socket} within {READY_TIMEOUT:.0f} s"
                ) from None
            time.sleep(0.1)
    # VPP runs the startup script after it opens its API socket: give it until the deadline.
    while f"host-{UPLINK}" not in cli(node.api_socket, "show interface address"):
        if time.monotonic() > deadline or not processes.alive(record):
            raise LabError(
                f"VPP of {name} has no uplink host-{UPLINK} after {node.script}; its output "
                f"({node.log}):\n{processes.log_tail(node.log)}"
            )
        time.sleep(0.1)


def cli(api_socket: str, command: str) -> str:
    """One VPP CLI command through the binary API (the lab's checks and diagnostics)."""
    channel = VppChannel(
        api_socket, messages=("cli_inband", "show_version"), client_name="srv6ctl-lab"
    )
    channel.connect()
    try:
        return str(channel.call("cli_inband", cmd=command).reply)
    finally:
        channel.close()


def remove_leftovers(prefix: str) -> list[Path]:
    """The shared-memory files of the lab's VPPs that did not exit cleanly (SIGKILL):
    only names made of the lab's prefix and a node (`s6lab-n1-vpe-api`), as with its
    namespaces. Call once no VPP of the lab runs."""
    pattern = re.compile(re.escape(prefix) + r"-n\d+(" + "|".join(SHM_SUFFIXES) + ")")
    removed = []
    for path in Path("/dev/shm").iterdir():
        if pattern.fullmatch(path.name):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed
