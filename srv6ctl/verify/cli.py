"""`srv6ctl verify`: argparse wiring only; the checks live in `srv6ctl.verify.run`.

The checks (scapy, pyroute2, rich, the dataplane model, even the lab's subprocess) are
imported when the command runs, not above, so that registering it keeps every `srv6ctl`
command's start fast.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from srv6ctl.lab import DEFAULT_STATE_DIR

# Every group, in the order they run: `srv6ctl.verify.run.GROUPS` (a test keeps them equal;
# importing run here would load the checks with every command).
DEFAULT_GROUPS = ("conformance", "connectivity", "external", "convergence", "policy")


def register(commands: Any) -> None:
    """Add `verify` to the `srv6ctl` subparsers."""
    verify = commands.add_parser(
        "verify", help="prove on the wire that the dataplane does what the agents say"
    )
    verify.add_argument("--json", action="store_true", help="one line: {checks, figures}")
    verify.add_argument(
        "--state-dir",
        default=os.environ.get("SRV6CTL_LAB_DIR", DEFAULT_STATE_DIR),
        help="the lab to verify (default: the default lab, or $SRV6CTL_LAB_DIR)",
    )
    verify.add_argument(
        "--only",
        default=",".join(DEFAULT_GROUPS),
        help="comma-separated check groups to run",
    )
    verify.add_argument(
        "--flows", type=int, default=240, help="service flows for the spread check (≥200)"
    )
    node = verify.add_argument_group(
        "node mode", "inside one real node's network namespace instead of the lab"
    )
    node.add_argument("--node", help="this node's name: conformance checks of this node only")
    node.add_argument("--api-socket", default="/run/srv6ctl/agent.sock")
    node.add_argument("--config", default="/etc/srv6ctl/srv6ctl.yaml", help="agent config")
    node.add_argument("--uplink", default="eth0", help="the node's underlay interface")
    verify.set_defaults(func=_verify)


def _verify(args: argparse.Namespace) -> int:
    # Lazy (the docstring): the checks and rich load only when verify runs.
    from srv6ctl.lab.netns import LabError
    from srv6ctl.lab.progress import console
    from srv6ctl.observe.agentview import AgentUnavailable
    from srv6ctl.verify.run import GROUPS, VerifyOptions, run

    groups = tuple(g.strip() for g in args.only.split(",") if g.strip())
    unknown = [g for g in groups if g not in GROUPS]
    if unknown:
        print(f"unknown check group(s) {unknown}; choose from {list(GROUPS)}", file=sys.stderr)
        return 2
    options = VerifyOptions(
        state_dir=args.state_dir,
        node=args.node,
        api_socket=args.api_socket,
        config=args.config,
        uplink=args.uplink,
        groups=groups,
        flows=args.flows,
    )
    out = console()
    try:
        if args.json:
            report = run(options)
        else:
            with out.status("verifying: crafted SRv6 packets, flows, convergence, policies"):
                report = run(options)
    except (LabError, AgentUnavailable, OSError, ValueError) as err:
        print(f"verify could not start: {err}", file=sys.stderr)
        return 1
    if args.json:
        print(report.as_json())
    else:
        report.render(out)
    return 0 if report.passed else 1


def main(argv: list[str] | None = None) -> int:
    """`python -m srv6ctl.verify ...` (the same as `srv6ctl verify ...`)."""
    parser = argparse.ArgumentParser(prog="srv6ctl")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["verify", *(sys.argv[1:] if argv is None else argv)])
    result: int = args.func(args)
    return result
