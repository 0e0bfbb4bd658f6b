"""`srv6ctl lab ...`: argparse wiring only; the work happens in `srv6ctl.lab.build`.

`register(commands)` adds the `lab` command (with `demo`, which predates the lab) to the
top-level subparsers. Nothing heavy is imported until a subcommand runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from srv6ctl.lab import DEFAULT_PREFIX, DEFAULT_STATE_DIR


def _state_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--state-dir",
        default=os.environ.get("SRV6CTL_LAB_DIR", DEFAULT_STATE_DIR),
        help=f"where the lab keeps its state, logs and objects (default {DEFAULT_STATE_DIR}, "
        "or $SRV6CTL_LAB_DIR)",
    )


def register(commands: Any) -> None:
    """Add `lab` and its subcommands to the `srv6ctl` subparsers."""
    lab = commands.add_parser("lab", help="the local multi-node lab (network namespaces)")
    lab_commands = lab.add_subparsers(dest="lab_command", required=True, metavar="COMMAND")

    up = lab_commands.add_parser(
        "up", help="build the lab: nodes, agents, pods through srv6-cni, a service"
    )
    up.add_argument("--nodes", type=int, default=3)
    up.add_argument("--pods-per-node", type=int, default=2)
    up.add_argument("--dual-stack", action="store_true", help="IPv4 too (IPv4-in-SRv6)")
    up.add_argument("--dataplane", choices=("kernel", "vpp"), default="kernel")
    up.add_argument(
        "--prefix",
        default=DEFAULT_PREFIX,
        help=f"name prefix of the lab's network namespaces (default {DEFAULT_PREFIX})",
    )
    up.add_argument(
        "--no-workarounds",
        dest="workarounds",
        action="store_false",
        help="leave the agents' settings as they are (srv6ctl/lab/FINDINGS.md)",
    )
    _state_dir(up)
    up.set_defaults(func=_up)

    status = lab_commands.add_parser("status", help="nodes, pods, services and agents' health")
    status.add_argument("--json", action="store_true", help="one JSON object")
    _state_dir(status)
    status.set_defaults(func=_status)

    exec_ = lab_commands.add_parser(
        "exec", help="run a command in a pod's (or node's) network namespace"
    )
    exec_.add_argument("target", metavar="POD", help="a pod, or a node (n1), probe, underlay")
    exec_.add_argument("command", nargs=argparse.REMAINDER, metavar="-- CMD ...")
    _state_dir(exec_)
    exec_.set_defaults(func=_exec)

    scale = lab_commands.add_parser(
        "scale", help="give a service N backend pods (through CNI; slices updated)"
    )
    scale.add_argument("service")
    scale.add_argument("replicas", type=int)
    _state_dir(scale)
    scale.set_defaults(func=_scale)

    down = lab_commands.add_parser("down", help="remove every namespace, process and file")
    down.add_argument("--prefix", default=None, help="also remove namespaces with this prefix")
    _state_dir(down)
    down.set_defaults(func=_down)

    demo = lab_commands.add_parser(
        "demo", help="allocate a small cluster's addresses and SIDs in a throw-away store"
    )
    demo.add_argument("--nodes", type=int, default=3)
    demo.add_argument("--pods-per-node", type=int, default=2)
    demo.set_defaults(func=_demo)


def _lab(args: argparse.Namespace, *, quiet: bool = False) -> Any:
    from srv6ctl.lab.build import Lab
    from srv6ctl.lab.progress import Steps, console

    return Lab(args.state_dir, Steps(console(), quiet=quiet))


def _up(args: argparse.Namespace) -> int:
    from srv6ctl.lab.netns import LabError
    from srv6ctl.lab.state import LabOptions

    lab = _lab(args)
    out = lab.steps.out
    options = LabOptions(
        nodes=args.nodes,
        pods_per_node=args.pods_per_node,
        dual_stack=args.dual_stack,
        dataplane=args.dataplane,
        prefix=args.prefix,
        workarounds=args.workarounds,
    )
    try:
        done = lab.up(options)
    except KeyboardInterrupt:
        out.print("[red]lab up interrupted[/]: `srv6ctl lab up` rebuilds, `lab down` cleans up")
        return 130
    except (LabError, OSError) as err:
        out.print(f"[red]lab up failed[/]: {err}")
        out.print(
            f"logs: {lab.paths.root}/<node>/agent.log, {lab.paths.root}/pods/; "
            "`srv6ctl lab up` again rebuilds from scratch, `srv6ctl lab down` cleans up"
        )
        return 1
    state = lab.state
    assert state is not None
    summary = {
        "built": "[green]lab is up[/]",
        "already up": "[green]lab is already up[/] (nothing to do)",
        "repaired": "[green]lab repaired[/]",
    }[done]
    web = state.services[0]
    addresses = ", ".join(ip for ip in (web.cluster_ipv6, web.cluster_ipv4) if ip)
    out.print(
        f"{summary}: {len(state.nodes)} nodes, {len(state.pods)} pods, "
        f"service {web.name} at {addresses}"
    )
    out.print(
        f"next: srv6ctl verify · srv6ctl lab status · srv6ctl lab exec client-1 -- ip -6 route"
        f" · srv6ctl trace client-1 web · state in {lab.paths.root}"
    )
    return 0


def _status(args: argparse.Namespace) -> int:
    from srv6ctl.lab.status import collect, render

    lab = _lab(args, quiet=True)
    if lab.state is None:
        print(f"no lab in {lab.paths.root} (srv6ctl lab up builds one)", file=sys.stderr)
        return 1
    status = collect(lab.paths, lab.state)
    if args.json:
        print(json.dumps(status))
    else:
        render(lab.steps.out, status)
    healthy = all(n["agent"] == "ready" for n in status["nodes"]) and all(
        p["server"] == "running" for p in status["pods"]
    )
    return 0 if healthy and status["complete"] else 1


def _exec(args: argparse.Namespace) -> int:
    lab = _lab(args, quiet=True)
    state = lab.state
    if state is None:
        print(f"no lab in {lab.paths.root}", file=sys.stderr)
        return 1
    command = list(args.command)
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        print("nothing to run: srv6ctl lab exec POD -- CMD ...", file=sys.stderr)
        return 2
    target = args.target
    special = {"probe": state.probe_netns, "underlay": state.underlay_netns}
    if target in special:
        name = special[target]
    elif target in state.node_names:
        name = state.node(target).netns
    else:
        try:
            name = state.pod(target).netns
        except KeyError as err:
            print(err.args[0], file=sys.stderr)
            return 1
    os.execvp("ip", ["ip", "netns", "exec", name, *command])
    return 127  # not reached: exec replaced this process


def _scale(args: argparse.Namespace) -> int:
    from srv6ctl.lab.netns import LabError

    lab = _lab(args)
    try:
        with lab.steps.step(f"scaling {args.service} to {args.replicas}"):
            added, removed = lab.scale(args.service, args.replicas)
    except (LabError, KeyError) as err:
        lab.steps.out.print(f"[red]scale failed[/]: {err}")
        return 1
    lab.steps.out.print(
        f"added {', '.join(added) or 'none'}; removed {', '.join(removed) or 'none'}"
    )
    return 0


def _down(args: argparse.Namespace) -> int:
    lab = _lab(args)
    report = lab.down(prefix=args.prefix)
    if report.nothing:
        lab.steps.out.print(f"nothing to remove (no lab in {lab.paths.root})")
        return 0
    lab.steps.out.print(
        f"[green]lab down[/]: {report.processes} process(es) stopped, "
        f"{len(report.namespaces)} namespace(s) deleted"
        + (f", {lab.paths.root} removed" if report.removed_dir else "")
    )
    return 0


def _demo(args: argparse.Namespace) -> int:
    from srv6ctl.demo import run_ipam_demo

    return run_ipam_demo(nodes=args.nodes, pods_per_node=args.pods_per_node)


def main(argv: list[str] | None = None) -> int:
    """`python -m srv6ctl.lab ...` (the same as `srv6ctl lab ...`)."""
    parser = argparse.ArgumentParser(prog="srv6ctl")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["lab", *(sys.argv[1:] if argv is None else argv)])
    result: int = args.func(args)
    return result
