"""Network namespaces, veth pairs and the underlay bridge of the lab, through iproute2.

The lab is a developer tool, and these are the exact commands a person would type to
rebuild or inspect it by hand (`ip -n s6lab-n1 addr`), so it runs `ip` rather than hiding
the topology behind netlink calls; the product path (agent, CNI) never does.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Sequence


class LabError(RuntimeError):
    """A lab operation failed; the message says which object and why."""


def ip(*args: str, netns: str | None = None, check: bool = True) -> str:
    command = ["ip", *(["-n", netns] if netns else []), *args]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if check and done.returncode != 0:
        raise LabError(f"`{' '.join(command)}` failed: {done.stderr.strip() or done.returncode}")
    return done.stdout


def ip_batch(netns: str, commands: Sequence[str]) -> None:
    """Several `ip` commands in one process (`ip -batch`), stopping at the first error."""
    done = subprocess.run(
        ["ip", "-n", netns, "-batch", "-"],
        input="\n".join(commands) + "\n",
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise LabError(f"in namespace {netns}: {done.stderr.strip() or done.returncode}")


def netns_path(name: str) -> str:
    return f"/var/run/netns/{name}"


def list_netns() -> list[str]:
    out = ip("-j", "netns", "list")
    if not out.strip():
        return []
    return [str(entry["name"]) for entry in json.loads(out)]


def exists(name: str) -> bool:
    return os.path.exists(netns_path(name))


def add_netns(name: str) -> None:
    ip("netns", "add", name)
    ip_batch(name, ["link set lo up"])


def delete_netns(name: str) -> bool:
    """Delete a namespace; False when it was not there."""
    if not exists(name):
        return False
    ip("netns", "del", name)
    return True


def add_bridge(netns: str, bridge: str) -> None:
    # No multicast snooping: Neighbour Discovery is multicast, and a snooping bridge
    # that has not yet heard a node's MLD report would hold the node's first NS back.
    ip_batch(
        netns,
        [
            f"link add {bridge} type bridge mcast_snooping 0",
            f"link set {bridge} up",
        ],
    )


def attach(
    underlay: str,
    bridge: str,
    port: str,
    netns: str,
    ifname: str,
    addresses: Sequence[str],
) -> str:
    """A veth from the underlay bridge (port `port`) to `ifname` in `netns`, addressed and
    up; returns the MAC of `ifname`."""
    ip_batch(
        underlay,
        [
            f"link add {port} type veth peer name {ifname} netns {netns}",
            f"link set {port} master {bridge} up",
        ],
    )
    # nodad: underlay addresses are unique by construction, and DAD would keep them
    # tentative (unusable as a source) for a second or more.
    commands = [f"addr add {a} dev {ifname}" + (" nodad" if ":" in a else "") for a in addresses]
    ip_batch(netns, [*commands, f"link set {ifname} up"])
    return mac(netns, ifname)


def mac(netns: str, ifname: str) -> str:
    (link,) = json.loads(ip("-j", "link", "show", "dev", ifname, netns=netns))
    return str(link["address"])
