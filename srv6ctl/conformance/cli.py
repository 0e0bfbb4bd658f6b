"""`srv6ctl conformance`: argparse wiring only; the suite lives in srv6ctl.conformance.run.

Imported lazily (scapy, rich) when the command runs, like verify.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from srv6ctl.lab import DEFAULT_STATE_DIR

TARGETS = ("kernel", "vpp", "external", "lab")
VPP_BIN_ENV = "SRV6CTL_VPP_BIN"


def register(commands: Any) -> None:
    conformance = commands.add_parser(
        "conformance",
        help="RFC 8986/8754 clause by clause: crafted packets into an SRv6 implementation",
    )
    conformance.add_argument(
        "--target",
        action="append",
        choices=TARGETS,
        help="what to test: the running kernel (in a VM where it has no SRv6) or a VPP it "
        "starts (--vpp-bin), configured "
        "by the suite in throw-away namespaces, a lab node as our agent configured it "
        "(lab: --node), or a device someone else configured (external: --near, --far, "
        "--sid); repeat for a column each (default: kernel)",
    )
    lab = conformance.add_argument_group("lab", "a node of a running `srv6ctl lab`")
    lab.add_argument("--node", default="n1", help="the lab node to probe (default n1)")
    lab.add_argument(
        "--state-dir",
        default=os.environ.get("SRV6CTL_LAB_DIR", DEFAULT_STATE_DIR),
        help="the lab (default: the default lab, or $SRV6CTL_LAB_DIR)",
    )
    external = conformance.add_argument_group(
        "external", "a device configured by its owner, on the addresses of the README's plan"
    )
    external.add_argument("--near", help="NETNS:IFACE facing the device (probes in, errors back)")
    external.add_argument("--far", help="NETNS:IFACE where the device forwards (same NETNS)")
    external.add_argument("--dut-mac", default="", help="the device's MAC on the near link")
    external.add_argument(
        "--sid",
        action="append",
        default=[],
        metavar="ADDRESS=NAME",
        help="a SID the device has, e.g. fc00:5::6=End.DT6 (NAME as --list shows it)",
    )
    external.add_argument(
        "--sids",
        type=Path,
        metavar="FILE",
        help="the device's SIDs from a file: an ADDRESS=NAME a line, # comments",
    )
    conformance.add_argument(
        "--vpp-bin",
        default=os.environ.get(VPP_BIN_ENV),
        help=f"the vpp binary for --target vpp (default ${VPP_BIN_ENV})",
    )
    conformance.add_argument(
        "--case", action="append", default=[], help="only cases whose id matches (glob)"
    )
    conformance.add_argument("--list", action="store_true", help="list the cases and stop")
    conformance.add_argument("--json", action="store_true", help="the results as JSON")
    conformance.add_argument("--junit", type=Path, help="also write JUnit XML to this file")
    conformance.set_defaults(func=_conformance)


def _conformance(args: argparse.Namespace) -> int:
    from srv6ctl.conformance import report
    from srv6ctl.conformance.run import run, select
    from srv6ctl.conformance.targets import (
        ExternalTarget,
        KernelTarget,
        Target,
        VppTarget,
        parse_sid,
        parse_sid_file,
    )
    from srv6ctl.conformance.testbed import Testbed
    from srv6ctl.dataplane.kernel_caps import probe_kernel
    from srv6ctl.lab.progress import console

    cases = select(args.case)
    if not cases:
        print(f"no case matches {' '.join(args.case)}", file=sys.stderr)
        return 2
    if args.list:
        for case in cases:
            print(f"{case.id:30} {case.level:6} {case.sid.name:16} {case.rfc}: {case.title}")
        return 0
    targets: list[tuple[Target, Testbed | None]] = []
    in_vm = False
    for name in args.target or ["kernel"]:
        if name == "external":
            try:
                declared = dict(parse_sid(text) for text in args.sid)
                if args.sids:
                    declared |= dict(parse_sid_file(args.sids.read_text(), str(args.sids)))
                bed = _attached(args, Testbed)
            except (ValueError, OSError) as err:
                print(f"--target external: {err}", file=sys.stderr)
                return 2
            targets.append((ExternalTarget(declared), bed))
        elif name == "lab":
            from srv6ctl.conformance.lab_target import LabTarget
            from srv6ctl.lab.netns import LabError
            from srv6ctl.observe.agentview import AgentUnavailable

            try:
                lab_target = LabTarget(args.state_dir, args.node)
            except (ValueError, LabError, AgentUnavailable, OSError) as err:
                # OSError: the lab's sockets and namespaces are root's
                print(f"--target lab: {err}", file=sys.stderr)
                return 2
            targets.append((lab_target, lab_target.testbed()))
        elif name == "kernel":
            problem = probe_kernel().unsupported()
            if problem:
                # This host's kernel cannot: the column comes from a VM's (`in_vm`).
                from srv6ctl.hostvm import vm_unavailable

                why = vm_unavailable()
                if os.environ.get("SRV6CTL_IN_VM"):
                    why = "this is the VM"
                if why is not None:
                    print(f"--target kernel: {problem}; no VM either: {why}", file=sys.stderr)
                    return 2
                in_vm = True
                continue
            targets.append((KernelTarget(), None))
        else:
            if not args.vpp_bin or not os.access(args.vpp_bin, os.X_OK):
                print(f"--target vpp: no vpp binary (--vpp-bin or ${VPP_BIN_ENV})", file=sys.stderr)
                return 2
            targets.append((VppTarget(args.vpp_bin), None))
    if os.geteuid() != 0:
        print("conformance: needs root (network namespaces)", file=sys.stderr)
        return 2
    results = {}
    if in_vm:
        from srv6ctl.conformance.in_vm import kernel_in_vm
        from srv6ctl.hostvm import HostVmError

        print("the kernel column: this host's kernel has no SRv6, running it in a VM",
              file=sys.stderr)  # fmt: skip
        try:
            name, in_vm_results = kernel_in_vm(cases)
        except (HostVmError, RuntimeError) as err:
            print(f"--target kernel (in a VM): {err}", file=sys.stderr)
            return 2
        results[name] = in_vm_results
    results |= {target.name: run(target, cases, bed=bed) for target, bed in targets}
    if args.junit:
        args.junit.write_text(report.junit(results))
    if args.json:
        print(report.as_json(results))
    else:
        report.table(results, console())
    failed = any(
        r.verdict == "fail" and r.case.level == "MUST" for rs in results.values() for r in rs
    )
    return 1 if failed else 0


def _attached(args: argparse.Namespace, testbed: Any) -> Any:
    """The testbed on --near and --far (one namespace); ValueError saying what is wrong."""
    if not args.near or not args.far:
        raise ValueError("needs --near NETNS:IFACE and --far NETNS:IFACE")
    (near_ns, _, near), (far_ns, _, far) = args.near.partition(":"), args.far.partition(":")
    if not near or not far or near_ns != far_ns:
        raise ValueError(f"--near {args.near} --far {args.far}: NETNS:IFACE, one NETNS")
    if not os.path.exists(f"/run/netns/{near_ns}"):
        raise ValueError(f"no network namespace {near_ns}")
    return testbed.attached(near_ns, near, far, args.dut_mac)


__all__ = ["register"]
