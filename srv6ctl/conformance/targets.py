"""The implementations the suite configures itself, each in the testbed's DUT namespace:
the Linux kernel (seg6local routes, through iproute2) and FD.io VPP (started here, on
af_packet ports over the DUT's two veths, through its CLI). Each programs the SIDs the
cases need in its own terms, or says why it cannot (the case is then not applicable);
what a SID then does is left to the implementation: the suite measures it, not our agent.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Protocol

from srv6ctl.conformance.model import HMAC_KEY, HmacKey, IPv6Address, Plan, SidSpec
from srv6ctl.conformance.testbed import (
    DUT_FAR,
    DUT_NEAR,
    TESTER_FAR,
    TESTER_NEAR,
    Testbed,
    ip,
    sysctl,
)
from srv6ctl.observe.netinfo import link_mac

TABLE = 100  # End.T's table
# iproute2's names of the flavours (`flavors psp,usp,usd`, `flavors next-csid`)
KERNEL_FLAVOURS = {"NEXT-CSID": "next-csid"}
# The headends as `encap seg6 mode ...` (None: the kernel has no such mode)
HEADEND_MODES = {
    "H.Encaps": "encap",
    "H.Encaps.Red": "encap.red",
    "H.Insert": "inline",
    "H.Insert.Red": None,
}
VRF, VRF_TABLE = "s6conf-vrf", 101  # the kernel's End.DT4/End.DT46 look up in a VRF


class Target(Protocol):
    name: str

    def setup(self, bed: Testbed) -> None: ...

    def address(self, sid: SidSpec, proposed: IPv6Address) -> IPv6Address:
        """Where `sid` is: `proposed` for a target the suite configures."""
        ...

    def install(self, sid: SidSpec, address: IPv6Address) -> str | None:
        """Program `address` as `sid`; None, or why the target cannot."""
        ...

    def counters(self, address: IPv6Address) -> tuple[int, int] | None:
        """The SID's (packets, bytes) processed (RFC 8986 §6), None where not shown."""
        ...

    def close(self) -> None: ...


class KernelTarget:
    """The running kernel's SRv6 (`ip -6 route ... encap seg6local`), in the DUT namespace."""

    name = "linux"

    def __init__(self) -> None:
        self.bed: Testbed | None = None
        self.vrf_problem: str | None = None

    def setup(self, bed: Testbed) -> None:
        self.bed = bed
        p, dut = bed.plan, bed.dut
        sysctl(
            dut,
            "net.ipv6.conf.all.forwarding=1",
            "net.ipv4.ip_forward=1",
            "net.ipv6.conf.all.seg6_enabled=1",
            "net.ipv6.conf.all.accept_dad=0",
            "net.ipv6.conf.default.accept_dad=0",
        )
        sysctl(dut, f"net.ipv6.conf.{DUT_NEAR}.seg6_enabled=1")
        # End.DX4 routes the inner packet from its own source, which is nobody the DUT
        # routes back to: reverse-path filtering (the larger of `all` and the interface's
        # value counts) would drop it before the behaviour is seen.
        sysctl(dut, *(f"net.ipv4.conf.{i}.rp_filter=0" for i in ("all", "default", DUT_NEAR)))
        for ifname, addresses in zip((DUT_NEAR, DUT_FAR), p.dut_addresses(), strict=True):
            for address in addresses:
                ip(dut, "addr", "add", address, "dev", ifname, "nodad")
            ip(dut, "link", "set", ifname, "up")
        ip(dut, "link", "set", "lo", "up")
        ip(dut, "sr", "tunsrc", "set", str(p.dut_far))  # H.Encaps' outer source
        # The tester's MACs, fixed (as for VPP): what is measured is SRv6, not how neighbour
        # discovery copes with a burst of probes.
        for ifname, tester_if, neighbours in (
            (DUT_NEAR, TESTER_NEAR, [str(p.tester_near)]),
            (DUT_FAR, TESTER_FAR, [str(p.tester_far), str(p.tester_far4)]),
        ):
            mac = link_mac(bed.tester, tester_if)
            for neighbour in neighbours:
                ip(dut, "neigh", "replace", neighbour, "lladdr", mac, "dev", ifname,
                   "nud", "permanent")  # fmt: skip
        ip(dut, "-6", "route", "add", str(p.beyond), "via", str(p.tester_far))
        ip(dut, "-6", "route", "add", str(p.csid_next), "via", str(p.tester_far))
        ip(dut, "-6", "route", "add", f"{p.table_segment}/128", "via", str(p.tester_far),
           "table", str(TABLE))  # fmt: skip
        ip(dut, "-6", "route", "add", str(p.inner_net6), "via", str(p.tester_far))
        ip(dut, "route", "add", str(p.inner_net4), "via", str(p.tester_far4))
        self.vrf_problem = self._vrf(p, dut)

    @staticmethod
    def _vrf(p: Plan, dut: str) -> str | None:
        """The VRF End.DT4/End.DT46 take (`vrftable`): its table routes the inner
        destinations out of the far link, which stays outside it (route leaking)."""
        try:
            # The kernel takes `vrftable` only with a table bound to one VRF (strict mode).
            sysctl(dut, "net.vrf.strict_mode=1")
            ip(dut, "link", "add", VRF, "type", "vrf", "table", str(VRF_TABLE))
            ip(dut, "link", "set", VRF, "up")
            ip(dut, "-6", "route", "add", str(p.inner_net6), "via", str(p.tester_far),
               "dev", DUT_FAR, "table", str(VRF_TABLE))  # fmt: skip
            ip(dut, "route", "add", str(p.inner_net4), "via", str(p.tester_far4),
               "dev", DUT_FAR, "table", str(VRF_TABLE))  # fmt: skip
        except RuntimeError as err:
            return f"no VRF device for its table: {err}"
        return None

    def address(self, sid: SidSpec, proposed: IPv6Address) -> IPv6Address:
        return proposed

    def install(self, sid: SidSpec, address: IPv6Address) -> str | None:
        assert self.bed is not None
        p = self.bed.plan
        if sid.flavours and sid.behaviour not in ("End", "End.X", "End.T"):
            return f"the kernel has no flavours for {sid.behaviour}"
        if sid.hmac:
            # The key is the namespace's, not the SID's; what checks it is each
            # interface's seg6_require_hmac (0, the default: when an HMAC TLV is present).
            why = set_hmac_key(self.bed.dut, HMAC_KEY)
            if why:
                return why
        flavours = []
        if sid.flavours:
            names = ",".join(KERNEL_FLAVOURS.get(f, f.lower()) for f in sorted(sid.flavours))
            flavours = ["flavors", names]
            if sid.compressed:  # the kernel's names for RFC 9800's LBL and LNL + FL
                flavours += ["lblen", str(p.CSID_BLOCK_BITS), "nflen", str(p.CSID_BITS)]
        if sid.behaviour in HEADEND_MODES:
            mode = HEADEND_MODES[sid.behaviour]
            if mode is None:
                return "the kernel has no reduced insertion (modes inline, encap, encap.red)"
            try:
                ip(self.bed.dut, "-6", "route", "add", f"{p.steered_to(address)}/128", "encap",
                   "seg6", "mode", mode, "segs", _segs(sid), "dev", DUT_FAR)  # fmt: skip
            except RuntimeError as err:
                return f"the kernel refused it: {err}"
            return None
        action = {
            "End": ["End"],
            "End.X": ["End.X", "nh6", str(p.tester_far)],
            "End.T": ["End.T", "table", str(TABLE)],
            "End.DX6": ["End.DX6", "nh6", str(p.tester_far)],
            "End.DX4": ["End.DX4", "nh4", str(p.tester_far4)],
            "End.DX2": ["End.DX2", "oif", DUT_FAR],
            "End.DT6": ["End.DT6", "table", "main"],
            "End.DT4": ["End.DT4", "vrftable", str(VRF_TABLE)],
            "End.DT46": ["End.DT46", "vrftable", str(VRF_TABLE)],
            "End.B6.Encaps": ["End.B6.Encaps", "srh", "segs", _segs(sid)],
            "End.B6": ["End.B6", "srh", "segs", _segs(sid)],
        }.get(sid.behaviour)
        if action is None:
            return f"the kernel has no {sid.behaviour}"
        if "vrftable" in action and self.vrf_problem:
            return self.vrf_problem
        dev = DUT_FAR if sid.behaviour in ("End.X", "End.DX6", "End.DX4") else DUT_NEAR
        length = p.csid_prefix_len() if sid.compressed else 128
        count = ["count"] if sid.counted else []
        try:
            ip(self.bed.dut, "-6", "route", "add", f"{address}/{length}", "encap", "seg6local",
               "action", *action, *count, *flavours, "dev", dev)  # fmt: skip
        except RuntimeError as err:
            return f"the kernel refused it: {err}"
        return None

    def counters(self, address: IPv6Address) -> tuple[int, int] | None:
        """`ip -s route`'s seg6local counters (kernel 5.14+, routes added with `count`)."""
        assert self.bed is not None
        shown = subprocess.run(
            ["ip", "-n", self.bed.dut, "-s", "-j", "-6", "route", "show", f"{address}/128"],
            capture_output=True, text=True, check=False,
        ).stdout  # fmt: skip
        for route in json.loads(shown or "[]"):
            encap = route.get("encap") or {}
            stats = encap.get("stats64") if isinstance(encap, dict) else None
            stats = stats or route.get("stats64")
            if isinstance(stats, dict) and "packets" in stats:
                return int(stats["packets"]), int(stats["bytes"])
        return None

    def close(self) -> None:
        self.bed = None


def set_hmac_key(netns: str, key: HmacKey) -> str | None:
    """`ip sr hmac set ID ALGO` in `netns`, the secret on its standard input; None, or
    why not. A session of its own: iproute2 asks for the secret with getpass(3), which
    reads the controlling terminal where there is one."""
    done = subprocess.run(
        ["ip", "-n", netns, "sr", "hmac", "set", str(key.key_id), key.algorithm],
        input=key.secret + b"\n",
        capture_output=True,
        check=False,
        start_new_session=True,
    )
    if done.returncode != 0:
        return f"the kernel took no HMAC key: {done.stderr.decode(errors='replace').strip()}"
    return None


def localsid_counters(shown: str, address: IPv6Address) -> tuple[int, int] | None:
    """The (packets, bytes) `show sr localsids` counts as the SID's "Good traffic" (VPP
    counts every SID), None where it lists no such SID."""
    for block in shown.split("--------------------"):
        if re.search(rf"Address:\s+{re.escape(str(address))}/", block):
            good = re.search(r"Good traffic:\s+\[(\d+) packets : (\d+) bytes\]", block)
            if good:
                return int(good.group(1)), int(good.group(2))
    return None


def _segs(sid: SidSpec) -> str:
    return ",".join(str(s) for s in sid.segments)


class VppTarget:
    """A VPP started in the DUT namespace (its binary given), whose two ports are af_packet
    interfaces on the DUT's veths (with their MACs), configured through its CLI."""

    name = "vpp"

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.dir = Path(tempfile.mkdtemp(prefix="srv6ctl-conformance-vpp-"))
        self.process: subprocess.Popen[bytes] | None = None
        self.bed: Testbed | None = None

    @property
    def api_socket(self) -> str:
        return str(self.dir / "api.sock")

    def cli(self, command: str) -> str:
        from srv6ctl.lab.vpp import cli

        return cli(self.api_socket, command)

    def setup(self, bed: Testbed) -> None:
        from srv6ctl.lab.vpp import VppNode, plugin_path, startup_config

        self.bed = bed
        p, dut = bed.plan, bed.dut
        lines = []
        for ifname, addresses in zip((DUT_NEAR, DUT_FAR), p.dut_addresses(), strict=True):
            ip(dut, "link", "set", ifname, "up")
            mac = link_mac(dut, ifname)
            port = f"host-{ifname}"
            lines.append(f"create host-interface name {ifname} hw-addr {mac} cksum-gso-disable")
            lines += [f"set interface ip address {port} {a}" for a in addresses]
            lines += [f"ip6 nd {port} ra-suppress", f"set interface state {port} up"]
        # The tester's MACs, fixed: VPP answers none of the tester's own neighbour
        # solicitations here ("neighbor discovery not configured") and drops the packet
        # that starts its own — an ICMP error it owes the tester among them.
        near_mac = link_mac(bed.tester, TESTER_NEAR)
        far_mac = link_mac(bed.tester, TESTER_FAR)
        lines += [
            f"set sr encaps source addr {p.dut_far}",  # H.Encaps' outer source
            f"set ip neighbor host-{DUT_NEAR} {p.tester_near} {near_mac}",
            f"set ip neighbor host-{DUT_FAR} {p.tester_far} {far_mac}",
            f"set ip neighbor host-{DUT_FAR} {p.tester_far4} {far_mac}",
            f"ip table add {TABLE}",
            f"ip6 table add {TABLE}",
            f"ip route add {p.beyond} via {p.tester_far} host-{DUT_FAR}",
            f"ip route add {p.csid_next} via {p.tester_far} host-{DUT_FAR}",
            f"ip route add {p.table_segment}/128 table {TABLE} via {p.tester_far} host-{DUT_FAR}",
            f"ip route add {p.inner_net6} via {p.tester_far} host-{DUT_FAR}",
            f"ip route add {p.inner_net4} via {p.tester_far4} host-{DUT_FAR}",
        ]
        node = VppNode(self.dir, f"{bed.name}-vpp")
        (self.dir / "setup.vpp").write_text("\n".join(lines) + "\n")
        node.startup.write_text(startup_config(node, plugin_path(self.binary)))
        log = open(self.dir / "stdout.log", "ab")  # noqa: SIM115 - the process keeps it
        self.process = subprocess.Popen(
            ["ip", "netns", "exec", dut, self.binary, "-c", str(node.startup)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while True:
            if self.process.poll() is not None:
                tail = (self.dir / "stdout.log").read_text(errors="replace")[-1500:]
                raise RuntimeError(f"vpp exited: {tail}")
            try:
                if f"host-{DUT_FAR}" in self.cli("show interface address"):
                    break
            except Exception:
                pass  # the API socket is not there yet
            if time.monotonic() > deadline:
                raise RuntimeError(f"vpp did not come up within 30 s ({self.dir})")
            time.sleep(0.2)

    def address(self, sid: SidSpec, proposed: IPv6Address) -> IPv6Address:
        return proposed

    def install(self, sid: SidSpec, address: IPv6Address) -> str | None:
        assert self.bed is not None
        p = self.bed.plan
        if sid.hmac:
            return "VPP 25.10 verifies no HMAC TLV (it has no key to configure)"
        flavours = set(sid.flavours)
        psp = " psp" if flavours == {"PSP"} and sid.behaviour in ("End", "End.X") else ""
        if sid.compressed and flavours == {"NEXT-CSID"} and sid.behaviour == "End":
            # uN: the SID a prefix of locator block and node ID, C-SIDs of 16 bits
            prefix = f"{address}/{p.csid_prefix_len()}"
            said = self.cli(f"sr localsid prefix {prefix} behavior un {p.CSID_BITS}").strip()
            return f"VPP refused it: {said}" if said else None
        if flavours and not psp:
            return f"VPP has no {'/'.join(sorted(flavours))} flavour for {sid.behaviour}"
        headend = sid.behaviour.startswith("H.")
        if headend or sid.behaviour in ("End.B6.Encaps", "End.B6.Encaps.Red"):
            if sid.behaviour.endswith(".Red"):
                return "VPP's CLI makes no policy in the reduced mode"
            kind = "insert" if sid.behaviour.startswith("H.Insert") else "encap"
            segments = " ".join(f"next {s}" for s in sid.segments)
            said = self.cli(f"sr policy add bsid {address} {segments} {kind}").strip()
            if said or not headend:
                return f"VPP refused it: {said}" if said else None
            command = f"sr steer l3 {p.steered_to(address)}/128 via bsid {address}"
        else:
            behaviour = {
                "End": "end",
                "End.X": f"end.x host-{DUT_FAR} {p.tester_far}",
                "End.T": f"end.t {TABLE}",  # the table ID (fib_table_find)
                "End.DX6": f"end.dx6 host-{DUT_FAR} {p.tester_far}",
                "End.DX4": f"end.dx4 host-{DUT_FAR} {p.tester_far4}",
                "End.DX2": f"end.dx2 host-{DUT_FAR}",
                "End.DT6": "end.dt6 0",
                "End.DT4": "end.dt4 0",
            }.get(sid.behaviour)
            if behaviour is None:
                return f"VPP 25.10 has no {sid.behaviour}"  # End.DT46 among them
            command = f"sr localsid address {address} behavior {behaviour}{psp}"
        said = self.cli(command).strip()
        return f"VPP refused it: {said}" if said else None

    def counters(self, address: IPv6Address) -> tuple[int, int] | None:
        return localsid_counters(self.cli("show sr localsids"), address)

    def close(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


class ExternalTarget:
    """A device configured by its owner, reached through two interfaces of an existing
    namespace (`Testbed.attached`): nothing is programmed; each SID the owner declares
    (`--sid ADDRESS=NAME`, NAME as the cases' SIDs are named: End, End(PSP), End.X,
    End.DX6, ...) is probed, the others are not applicable. The device's addresses and
    routes are the testbed's plan (README, "RFC conformance"): its End.X and End.DX*
    next hops are the tester's far address, End.DT* tables route the inner prefixes there,
    and the next segments (fc00:6::/32) are routed out of the far link."""

    name = "external"
    # Policies (End.B6.Encaps, the headends) would need the suite's own segment lists
    # configured on the device: not offered yet.
    UNOFFERED = ("End.B6.Encaps", "End.B6.Encaps.Red", "H.Encaps", "H.Encaps.Red")

    def __init__(self, declared: dict[str, IPv6Address]) -> None:
        self.declared = declared

    def setup(self, bed: Testbed) -> None:
        pass

    def address(self, sid: SidSpec, proposed: IPv6Address) -> IPv6Address:
        return self.declared.get(sid.name, proposed)

    def install(self, sid: SidSpec, address: IPv6Address) -> str | None:
        if sid.behaviour in self.UNOFFERED or sid.behaviour.startswith("H."):
            return f"{sid.behaviour} on an external target: not offered yet"
        if sid.name not in self.declared:
            return f"no {sid.name} declared (--sid ADDRESS={sid.name})"
        return None

    def counters(self, address: IPv6Address) -> tuple[int, int] | None:
        return None  # the device's own tools show them, if it has any

    def close(self) -> None:
        pass


def parse_sid(text: str) -> tuple[str, IPv6Address]:
    """`ADDRESS=NAME[,anything]` (what follows a comma is the owner's note) → (NAME,
    address); ValueError naming what is wrong."""
    address, sep, rest = text.partition("=")
    name = rest.split(",", 1)[0].strip()
    if not sep or not name:
        raise ValueError(f"--sid {text}: not ADDRESS=NAME (e.g. fc00:5::1=End.DX6)")
    try:
        return name, IPv6Address(address.strip())
    except ValueError:
        raise ValueError(f"--sid {text}: {address!r} is not an IPv6 address") from None


def parse_sid_file(text: str, source: str) -> list[tuple[str, IPv6Address]]:
    """A file of SIDs, one `ADDRESS=NAME` a line (as --sid), blank lines and `#` comments
    ignored; ValueError naming the file and line of what is wrong."""
    found = []
    for number, line in enumerate(text.splitlines(), start=1):
        entry = line.split("#", 1)[0].strip()
        if entry:
            try:
                found.append(parse_sid(entry))
            except ValueError as err:
                raise ValueError(f"{source}:{number}: {err}") from None
    return found


__all__ = [
    "TABLE",
    "ExternalTarget",
    "KernelTarget",
    "Target",
    "VppTarget",
    "localsid_counters",
    "parse_sid",
    "parse_sid_file",
]
