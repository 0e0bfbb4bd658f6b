"""Kernel pod wiring: a veth pair from the node's namespace into the pod's, over netlink.

For one pod interface this owns exactly:

- in the node namespace: the node end of a veth pair, named `s6` + 12 hex digits of a
  hash of (container ID, ifname) — deterministic, so DEL and GC find it with no state —
  holding `fe80::1/64` (and the node's IPv4 pod gateway `/32`), and a `/128` (and `/32`)
  route to the pod through it, tagged with `POD_ROUTE_PROTOCOL`;
- in the pod namespace: the other end, renamed to CNI_IFNAME, with the pod's `/128`
  (and `/32`), default routes via `fe80::1` (and via the IPv4 gateway, on-link), `lo` up,
  and the namespace's sysctls that keep the kernel from delaying or overriding that.

Design choices, each checked with real packets in tests/test_cni.py:

- Pods get host routes (`/128`, `/32`), not the node's `/64`: every packet goes through
  the node, which routes it — pods on one node reach each other without a bridge or proxy
  NDP, and the node sees every flow (policies, SRv6 encapsulation).
- The IPv6 gateway is the link-local `fe80::1` on every node end: link-local addresses are
  per link, so one address serves every pod with no global address spent on the node side.
- DAD is off for everything we add (IFA_F_NODAD, accept_dad=0 in the pod): addresses are
  unique by construction (ipam6), and DAD would hold a fresh pod's address "tentative" for
  about a second — the reference plugins wait that long on every ADD.
- Namespaces are entered with setns(2) on the calling thread only, just long enough to
  open a netlink socket or a /proc/sys file (both keep the namespace they were opened
  in). pyroute2's own `netns=` forks a helper process per socket, ~10 ms each.

The node namespace is a parameter (`node_netns`), not "wherever this process runs": the
lab runs one agent per emulated node, each node being a namespace.

`mode="vpp"` (the agent's `--dataplane vpp`): FD.io VPP takes the node end over (an
af_packet port, `srv6ctl.dataplane.vpp`), so the wiring leaves that end bare — up, with no
`fe80::1`, no gateway address and no node routes (VPP holds them, and the kernel must not
answer there) — and turns transmit checksum offload off on the pod end: VPP's af_packet
port reads frames without the virtio header, so a frame whose checksum the pod left to
"the hardware" would reach VPP, and through it the other pod, with a wrong checksum. The
pod side is otherwise the same as in kernel mode.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import hashlib
import ipaddress
import os
import re
import socket
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

POD_ROUTE_PROTOCOL = 106  # rtnetlink protocol of the node's pod routes: marks them as ours
GATEWAY_V6 = IPv6Address("fe80::1")
HOST_IFNAME_PREFIX = "s6"
HOST_IFNAME_RE = re.compile(r"^s6[0-9a-f]{12}$")
DEFAULT_MTU = 1420  # 1500 minus an outer IPv6 header and an SRH with two segments (80 B)

_CLONE_NEWNET = 0x40000000
_IFA_F_NODAD = 0x02
_RTNH_F_ONLINK = 0x04
_IFF_UP = 0x1
_LOOPBACK_INDEX = 1  # the kernel registers lo first in every namespace (LOOPBACK_IFINDEX)
_MAIN_TABLE = 254
_SIOCETHTOOL = 0x8946
_ETHTOOL_GTXCSUM = 0x16
_ETHTOOL_STXCSUM = 0x17

KERNEL = "kernel"
VPP = "vpp"
MODES = (KERNEL, VPP)

# Written in the pod's namespace before its interface arrives, so the interface inherits
# them from `default`: no DAD (see above), no SLAAC/RA (addressing is ipam6's job), IPv6
# on even where the node boots with it disabled by default.
POD_SYSCTLS = {
    "net/ipv6/conf/all/accept_dad": "0",
    "net/ipv6/conf/default/accept_dad": "0",
    "net/ipv6/conf/all/accept_ra": "0",
    "net/ipv6/conf/default/accept_ra": "0",
    "net/ipv6/conf/all/disable_ipv6": "0",
    "net/ipv6/conf/default/disable_ipv6": "0",
}
# The node routes between pods (and, later, into SRv6).
NODE_SYSCTLS = {
    "net/ipv6/conf/all/forwarding": "1",
    "net/ipv4/ip_forward": "1",
}

_libc = ctypes.CDLL(None, use_errno=True)


class WiringError(RuntimeError):
    """The kernel refused a step of the wiring; the message names the step and the object."""


class NetnsNotFound(WiringError):
    """The pod's network namespace path does not exist (the container is gone)."""


class NetnsInvalid(WiringError):
    """CNI_NETNS exists but is not a network namespace (setns refused it)."""


class NetnsIsNode(WiringError):
    """CNI_NETNS names the node's own namespace: wiring a pod there would break the node."""


class InterfaceExists(WiringError):
    """The pod already has an interface with CNI_IFNAME that is not ours (spec: an error)."""


@dataclass(frozen=True)
class PodSpec:
    """What to wire: one pod interface and its addresses from ipam6."""

    container_id: str
    ifname: str
    netns: str
    ipv6: IPv6Address
    ipv4: IPv4Address | None = None
    gateway_v4: IPv4Address | None = None
    mtu: int = DEFAULT_MTU

    def __post_init__(self) -> None:
        if (self.ipv4 is None) != (self.gateway_v4 is None):
            raise ValueError("ipv4 and gateway_v4 go together (dual-stack) or not at all")


@dataclass(frozen=True)
class Attachment:
    """What got wired: everything the CNI result and the agent's SIDs need."""

    container_id: str
    ifname: str
    netns: str
    host_ifname: str
    host_ifindex: int
    host_mac: str
    pod_mac: str
    mtu: int
    ipv6: IPv6Address
    ipv4: IPv4Address | None
    gateway_v6: IPv6Address
    gateway_v4: IPv4Address | None


def host_ifname(container_id: str, ifname: str) -> str:
    """The node end's name: stable across agent restarts, ≤ 15 chars, `s6` + 48 hash bits."""
    digest = hashlib.sha256(f"{container_id}/{ifname}".encode()).hexdigest()
    return HOST_IFNAME_PREFIX + digest[:12]


# --- namespaces -------------------------------------------------------------------------


def _setns(fd: int) -> None:
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"setns: {os.strerror(code)}")


class _Netns:
    """An open network namespace: netlink sockets and sysctl writes inside it."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.fd: int | None = None
        if path is not None:
            try:
                self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                raise NetnsNotFound(f"network namespace {path} does not exist") from None

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    @contextmanager
    def entered(self) -> Iterator[None]:
        """This thread inside the namespace (others are unaffected); back out on exit."""
        if self.fd is None:
            yield
            return
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            try:
                _setns(self.fd)
            except OSError as err:
                if err.errno == errno.EINVAL:
                    raise NetnsInvalid(f"{self.path} is not a network namespace") from None
                raise
            try:
                yield
            finally:
                _setns(own)  # a failure here must propagate: this thread is in the wrong place
        finally:
            os.close(own)

    def iproute(self) -> Any:
        with self.entered():
            return IPRoute()

    def write_sysctls(self, values: dict[str, str]) -> None:
        with self.entered():
            for key, value in values.items():
                # SRV6CTL_PROC_SYS: where the DaemonSet mounts a writable /proc/sys.
                root = os.environ.get("SRV6CTL_PROC_SYS", "/proc/sys").rstrip("/")
                fd = os.open(f"{root}/{key}", os.O_WRONLY | os.O_CLOEXEC)
                try:
                    os.write(fd, value.encode())
                finally:
                    os.close(fd)

    def same_as(self, other: _Netns) -> bool:
        mine = os.fstat(self.fd) if self.fd is not None else os.stat("/proc/thread-self/ns/net")
        theirs = os.fstat(other.fd) if other.fd is not None else os.stat("/proc/thread-self/ns/net")
        return (mine.st_dev, mine.st_ino) == (theirs.st_dev, theirs.st_ino)


@contextmanager
def _opened(path: str | None) -> Iterator[_Netns]:
    ns = _Netns(path)
    try:
        yield ns
    finally:
        ns.close()


@contextmanager
def _netlink(ns: _Netns) -> Iterator[Any]:
    ipr = ns.iproute()
    try:
        yield ipr
    finally:
        ipr.close()


def _first(items: list[Any]) -> Any:
    return items[0] if items else None


def _link(ipr: Any, name: str) -> Any:
    """The interface's netlink message (index, MAC, flags, peer...), None when absent.

    One RTM_GETLINK by name: each pyroute2 call costs ~0.4 ms of Python, so ADD asks
    for every interface once and passes indexes around.
    """
    try:
        return _first(ipr.link("get", ifname=name))
    except NetlinkError as err:
        if err.code == errno.ENODEV:
            return None
        raise


@contextmanager
def _step(what: str) -> Iterator[None]:
    """Turn a netlink error into a WiringError naming the step."""
    try:
        yield
    except NetlinkError as err:
        raise WiringError(f"{what}: {os.strerror(err.code)} (errno {err.code})") from None


# --- the wiring -------------------------------------------------------------------------


class PodWiring:
    """Creates, checks and removes pod interfaces for one node (its network namespace)."""

    def __init__(
        self,
        node_netns: str | None = None,
        *,
        route_protocol: int = POD_ROUTE_PROTOCOL,
        mode: str = KERNEL,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"wiring mode {mode!r}: one of {', '.join(MODES)}")
        self.node_netns = node_netns
        self.route_protocol = route_protocol
        self.mode = mode

    def prepare_node(self) -> None:
        """Turn on forwarding in the node namespace (pods are routed, not bridged)."""
        with _opened(self.node_netns) as node:
            node.write_sysctls(NODE_SYSCTLS)

    def setup(self, spec: PodSpec) -> Attachment:
        """Wire the pod; an identical existing wiring is returned as is (ADD is idempotent)."""
        host = host_ifname(spec.container_id, spec.ifname)
        with _opened(self.node_netns) as node_ns, _opened(spec.netns) as pod_ns:
            if node_ns.same_as(pod_ns):
                raise NetnsIsNode(f"CNI_NETNS {spec.netns} is the node's own network namespace")
            with _netlink(node_ns) as node, _netlink(pod_ns) as pod:
                if _link(node, host) is not None:
                    if not self._problems(node, pod, spec, host):
                        return self._attachment(
                            spec, host, _link(node, host), _link(pod, spec.ifname)
                        )
                    # Half-wired by an earlier, interrupted ADD: start again from nothing.
                    self._delete(node, host)
                if _link(pod, spec.ifname) is not None:
                    raise InterfaceExists(
                        f"the pod already has an interface {spec.ifname} ({spec.netns})"
                    )
                pod_ns.write_sysctls(POD_SYSCTLS)
                assert pod_ns.fd is not None
                with _step(f"creating veth {host} <-> {spec.ifname} in {spec.netns}"):
                    node.link(
                        "add",
                        ifname=host,
                        kind="veth",
                        mtu=spec.mtu,
                        peer={"ifname": spec.ifname, "net_ns_fd": pod_ns.fd, "mtu": spec.mtu},
                    )
                try:
                    host_link, pod_link = _link(node, host), _link(pod, spec.ifname)
                    if host_link is None or pod_link is None:
                        raise WiringError(f"veth {host} <-> {spec.ifname} vanished while wired")
                    self._wire(node, pod, spec, host, host_link["index"], pod_link["index"], pod_ns)
                    if self.mode == KERNEL and spec.ipv4 is not None:
                        # A pod answering a NodePort that entered on its own node sends
                        # from the node's address (podnet): IPv4 drops that as a martian
                        # unless the veth accepts local sources. Only the pod's veth: the
                        # uplink still refuses the node's address from outside.
                        node_ns.write_sysctls({f"net/ipv4/conf/{host}/accept_local": "1"})
                    return self._attachment(spec, host, host_link, pod_link)
                except BaseException:
                    self._delete(node, host)
                    raise

    def _wire(
        self,
        node: Any,
        pod: Any,
        spec: PodSpec,
        host: str,
        host_index: int,
        pod_index: int,
        pod_ns: _Netns | None = None,
    ) -> None:
        if self.mode == KERNEL:
            with _step(f"node end {host}: addresses"):
                node.addr(
                    "add",
                    index=host_index,
                    address=str(GATEWAY_V6),
                    prefixlen=64,
                    flags=_IFA_F_NODAD,
                )
                if spec.gateway_v4 is not None:
                    node.addr("add", index=host_index, address=str(spec.gateway_v4), prefixlen=32)
        with _step(f"node end {host}: up"):
            node.link("set", index=host_index, state="up")
        if self.mode == VPP:
            assert pod_ns is not None
            try:
                with pod_ns.entered():
                    set_tx_checksum(spec.ifname, False)
            except OSError as err:
                raise WiringError(
                    f"pod {spec.netns}: turning tx checksum offload off on {spec.ifname}: {err}"
                ) from None
        else:
            self._node_routes(node, spec, host, host_index)
        self._wire_pod(pod, spec, pod_index)

    def _node_routes(self, node: Any, spec: PodSpec, host: str, host_index: int) -> None:
        with _step(f"node route to {spec.ipv6}/128 via {host}"):
            node.route("replace", dst=f"{spec.ipv6}/128", oif=host_index, proto=self.route_protocol)
        if spec.ipv4 is not None:
            # Via the pod's own address, on-link, not a plain device route: the kernel
            # resolves a device route's next hop from the *packet's* destination, and what
            # End.DX4 hands a pod is not always addressed to the pod (a NodePort's packet
            # is still addressed to the entry node: ARP for that on the veth goes
            # unanswered). IPv6 needs nothing: End.DX6 looks its next hop up itself.
            with _step(f"node route to {spec.ipv4}/32 via {host}"):
                node.route(
                    "replace",
                    dst=f"{spec.ipv4}/32",
                    gateway=str(spec.ipv4),
                    oif=host_index,
                    proto=self.route_protocol,
                    flags=_RTNH_F_ONLINK,
                )

    @staticmethod
    def _wire_pod(pod: Any, spec: PodSpec, pod_index: int) -> None:
        with _step(f"pod {spec.netns}: lo up"):
            pod.link("set", index=_LOOPBACK_INDEX, state="up")
        with _step(f"pod {spec.netns}: addresses on {spec.ifname}"):
            pod.addr(
                "add", index=pod_index, address=str(spec.ipv6), prefixlen=128, flags=_IFA_F_NODAD
            )
            if spec.ipv4 is not None:
                pod.addr("add", index=pod_index, address=str(spec.ipv4), prefixlen=32)
        with _step(f"pod {spec.netns}: {spec.ifname} up"):
            pod.link("set", index=pod_index, state="up")
        with _step(f"pod {spec.netns}: default route via {GATEWAY_V6}"):
            pod.route(
                "add",
                dst="::/0",
                family=socket.AF_INET6,
                gateway=str(GATEWAY_V6),
                oif=pod_index,
            )
        if spec.gateway_v4 is not None:
            # On-link: the gateway is not in the pod's /32, the node end answers its ARP.
            with _step(f"pod {spec.netns}: default route via {spec.gateway_v4}"):
                pod.route(
                    "add",
                    dst="0.0.0.0/0",
                    gateway=str(spec.gateway_v4),
                    oif=pod_index,
                    flags=_RTNH_F_ONLINK,
                )

    @staticmethod
    def _attachment(spec: PodSpec, host: str, host_link: Any, pod_link: Any) -> Attachment:
        if host_link is None or pod_link is None:
            raise WiringError(f"veth {host} <-> {spec.ifname} vanished")
        return Attachment(
            container_id=spec.container_id,
            ifname=spec.ifname,
            netns=spec.netns,
            host_ifname=host,
            host_ifindex=int(host_link["index"]),
            host_mac=str(host_link.get("IFLA_ADDRESS")),
            pod_mac=str(pod_link.get("IFLA_ADDRESS")),
            mtu=int(pod_link.get("IFLA_MTU")),
            ipv6=spec.ipv6,
            ipv4=spec.ipv4,
            gateway_v6=GATEWAY_V6,
            gateway_v4=spec.gateway_v4,
        )

    def teardown(self, container_id: str, ifname: str) -> bool:
        """Remove the pod interface; False when there was nothing to remove (not an error).

        Deleting the node end deletes its peer and every route through it, so this needs
        neither the pod's namespace (it may be gone) nor any saved state.
        """
        host = host_ifname(container_id, ifname)
        with _opened(self.node_netns) as node_ns, _netlink(node_ns) as node:
            return self._delete(node, host)

    @staticmethod
    def _delete(node: Any, host: str) -> bool:
        try:
            node.link("del", ifname=host)
        except NetlinkError as err:
            if err.code == errno.ENODEV:  # nothing to delete, or a concurrent teardown won
                return False
            raise WiringError(f"deleting {host}: {os.strerror(err.code)}") from None
        return True

    def host_interfaces(self) -> set[str]:
        """Names of every node end of ours in the node namespace (for GC)."""
        with _opened(self.node_netns) as node_ns, _netlink(node_ns) as node:
            names = set()
            for link in node.get_links():
                name = link.get("IFLA_IFNAME")
                if name and HOST_IFNAME_RE.match(name) and _link_kind(link) == "veth":
                    names.add(str(name))
            return names

    def delete_host_interface(self, name: str) -> bool:
        """Remove a node end by name (GC of wiring whose allocation is already gone)."""
        if not HOST_IFNAME_RE.match(name):
            raise ValueError(f"{name} is not a srv6-cni node interface name")
        with _opened(self.node_netns) as node_ns, _netlink(node_ns) as node:
            return self._delete(node, name)

    def check(self, spec: PodSpec) -> list[str]:
        """What is missing or wrong in the pod's wiring; an empty list means all is well."""
        host = host_ifname(spec.container_id, spec.ifname)
        try:
            with (
                _opened(self.node_netns) as node_ns,
                _opened(spec.netns) as pod_ns,
                _netlink(node_ns) as node,
                _netlink(pod_ns) as pod,
            ):
                problems = self._problems(node, pod, spec, host)
                if self.mode == VPP and not problems:
                    with pod_ns.entered():
                        if tx_checksum(spec.ifname):
                            problems.append(
                                f"pod interface {spec.ifname} has tx checksum offload on"
                            )
                return problems
        except NetnsNotFound as err:
            return [str(err)]

    def _problems(self, node: Any, pod: Any, spec: PodSpec, host: str) -> list[str]:
        problems: list[str] = []
        host_link = _link(node, host)
        if host_link is None:
            return [f"node interface {host} is missing"]
        host_index = host_link["index"]
        if _link_kind(host_link) != "veth":
            problems.append(f"node interface {host} is not a veth")
        if not host_link["flags"] & _IFF_UP:
            problems.append(f"node interface {host} is down")
        if self.mode == KERNEL:  # in VPP mode the node end is VPP's port: nothing of ours
            if not _has_address(node, host_index, GATEWAY_V6, 64):
                problems.append(f"node interface {host} lacks {GATEWAY_V6}/64")
            if spec.gateway_v4 is not None and not _has_address(
                node, host_index, spec.gateway_v4, 32
            ):
                problems.append(f"node interface {host} lacks {spec.gateway_v4}/32")
            for address in (spec.ipv6, spec.ipv4):
                if address is not None and _route_oif(node, address) != host_index:
                    problems.append(f"node does not route {address} to {host}")

        pod_link = _link(pod, spec.ifname)
        if pod_link is None:
            problems.append(f"pod interface {spec.ifname} is missing in {spec.netns}")
            return problems
        pod_index = pod_link["index"]
        if pod_link.get("IFLA_LINK") != host_index:
            problems.append(f"pod interface {spec.ifname} is not the peer of {host}")
        if not pod_link["flags"] & _IFF_UP:
            problems.append(f"pod interface {spec.ifname} is down")
        if not _has_address(pod, pod_index, spec.ipv6, 128):
            problems.append(f"pod interface {spec.ifname} lacks {spec.ipv6}/128")
        if spec.ipv4 is not None and not _has_address(pod, pod_index, spec.ipv4, 32):
            problems.append(f"pod interface {spec.ifname} lacks {spec.ipv4}/32")
        if not _has_default_route(pod, socket.AF_INET6, GATEWAY_V6, pod_index):
            problems.append(f"pod has no default route via {GATEWAY_V6} dev {spec.ifname}")
        if spec.gateway_v4 is not None and not _has_default_route(
            pod, socket.AF_INET, spec.gateway_v4, pod_index
        ):
            problems.append(f"pod has no default route via {spec.gateway_v4} dev {spec.ifname}")
        lo = _first(pod.link("get", index=_LOOPBACK_INDEX))
        if lo is not None and not lo["flags"] & _IFF_UP:
            problems.append("pod loopback is down")
        return problems


def _ethtool_value(ifname: str, command: int, data: int = 0) -> int:
    """One ETHTOOL_{G,S}* ioctl with a struct ethtool_value, in this thread's namespace."""
    value = ctypes.create_string_buffer(struct.pack("II", command, data))
    request = struct.pack("16sP", ifname.encode(), ctypes.addressof(value))
    request += b"\0" * (40 - len(request))  # sizeof(struct ifreq)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        fcntl.ioctl(sock.fileno(), _SIOCETHTOOL, request)
    return int(struct.unpack("II", value.raw[:8])[1])


def set_tx_checksum(ifname: str, on: bool) -> None:
    """`ethtool -K <ifname> tx on|off` (TSO goes with it: the kernel needs csum for TSO)."""
    _ethtool_value(ifname, _ETHTOOL_STXCSUM, int(on))


def tx_checksum(ifname: str) -> bool:
    return bool(_ethtool_value(ifname, _ETHTOOL_GTXCSUM))


def _link_kind(link: Any) -> str | None:
    info = link.get("IFLA_LINKINFO")
    return None if info is None else info.get("IFLA_INFO_KIND")


def _has_address(ipr: Any, index: int, address: IPv4Address | IPv6Address, prefixlen: int) -> bool:
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    for msg in ipr.get_addr(family=family, index=index):
        found = msg.get("IFA_ADDRESS")
        if (
            found is not None
            and ipaddress.ip_address(found) == address
            and msg["prefixlen"] == prefixlen
        ):
            return True
    return False


def _route_oif(ipr: Any, address: IPv4Address | IPv6Address) -> int | None:
    """The interface the node's FIB sends `address` to (a lookup, as a packet would)."""
    try:
        found = _first(ipr.route("get", dst=str(address)))
    except NetlinkError:
        return None
    oif = None if found is None else found.get("RTA_OIF")
    return None if oif is None else int(oif)


def _has_default_route(
    ipr: Any, family: int, gateway: IPv4Address | IPv6Address, index: int
) -> bool:
    for msg in ipr.get_routes(family=family, table=_MAIN_TABLE):
        if msg["dst_len"] != 0 or msg.get("RTA_OIF") != index:
            continue
        found = msg.get("RTA_GATEWAY")
        if found is not None and ipaddress.ip_address(found) == gateway:
            return True
    return False
