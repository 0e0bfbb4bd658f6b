"""The `srv6ctl` command line: one entry point, subcommands in small functions.

Any other import (even logging or the agent's API client, let alone rich, pydantic, the
stores, pyroute2 or the agent) happens inside the subcommand that needs it, so `srv6ctl
--help` stays instant; the modules imported below register their subcommands alike.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from srv6ctl import __version__, trace
from srv6ctl.conformance import cli as conformance_cli
from srv6ctl.lab import cli as lab_cli
from srv6ctl.verify import cli as verify_cli
from telemetry import top

# `srv6ctl agent` exits with this when the chosen dataplane cannot work on this host (for
# instance a kernel without SRv6 lightweight tunnels): restarting it will not help.
EXIT_DATAPLANE_UNAVAILABLE = 3


def _listen_address(value: str) -> str | None:
    if value == "off":
        return None
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an IP address or 'off'") from None


def _host_interface(value: str) -> str:
    """An interface name for the host interconnect, or "none"."""
    if value == "none":
        return value
    from srv6ctl.dataplane.vpp_host import HostInterconnect

    try:
        HostInterconnect(name=value)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return value


def _node_port_addresses(
    value: str,
) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] | None:
    if value.strip() == "primary":
        return None
    prefixes = []
    for part in value.split(","):
        try:
            prefixes.append(ipaddress.ip_network(part.strip(), strict=False))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{part.strip()!r} is not a prefix (give 'primary' or prefixes, e.g. ::/0)"
            ) from None
    return tuple(prefixes)


def _config_check(args: argparse.Namespace) -> int:
    from srv6ctl.config import InvalidConfig, load_config  # lazy: pydantic, the stores

    try:
        config, plan = load_config(args.file)
    except (InvalidConfig, OSError) as err:
        print(f"invalid config: {err}", file=sys.stderr)
        return 1
    summary = plan.describe()
    summary["store"] = {
        "embedded": f"embedded SQLite at {config.store.path}",
        "etcd": f"etcd at {', '.join(config.store.etcd.endpoints)}",
        "kubernetes": "Kubernetes API, ConfigMaps in namespace "
        + (config.store.kubernetes.namespace or "of the agent's pod"),
    }[config.store.type]
    if args.json:
        print(json.dumps(summary))
        return 0
    # Lazy (the docstring): rich only for a table.
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{args.file}: valid", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    for key, value in summary.items():
        table.add_row(key, value)
    Console().print(table)
    return 0


def _agent(args: argparse.Namespace) -> int:
    # Lazy (the docstring): the agent loads every dataplane, source and store library.
    import signal

    from srv6ctl.agent import Agent, AgentOptions, DataplaneUnavailable
    from srv6ctl.config import InvalidConfig, load_config
    from srv6ctl.logs import setup_logging

    setup_logging(json_lines=args.log_json, level=args.log_level)
    try:
        config, plan = load_config(args.config)
    except (InvalidConfig, OSError) as err:
        print(f"invalid config: {err}", file=sys.stderr)
        return 1
    options = AgentOptions(
        node_name=args.node_name,
        netns=args.netns,
        lab_dir=args.lab_dir,
        kubeconfig=args.kubeconfig,
        cni_socket=args.cni_socket,
        api_socket=args.api_socket,
        resync_seconds=args.resync,
        dataplane=args.dataplane,
        vpp_api_socket=args.vpp_api_socket,
        vpp_stats_socket=args.vpp_stats_socket,
        vpp_api_dir=args.vpp_api_dir,
        vpp_host_interface=None if args.vpp_host_interface == "none" else args.vpp_host_interface,
        metrics_address=None if args.metrics_address == "off" else args.metrics_address,
        health_check_address=args.health_check_address,
        node_port_addresses=args.nodeport_addresses,
    )
    agent = Agent(options, config, plan)
    signal.signal(signal.SIGTERM, lambda *_: agent.stop())
    signal.signal(signal.SIGINT, lambda *_: agent.stop())
    try:
        return agent.run()
    except DataplaneUnavailable as err:
        print(f"srv6ctl agent: {err}", file=sys.stderr)
        return EXIT_DATAPLANE_UNAVAILABLE


def _show(args: argparse.Namespace) -> int:
    from srv6ctl.show import show  # lazy: the agent's API client (the docstring)

    try:
        return show(args.what, args.api_socket, args.json)
    except (OSError, RuntimeError) as err:
        print(f"cannot query the agent at {args.api_socket}: {err}", file=sys.stderr)
        return 2


def _cleanup(args: argparse.Namespace) -> int:
    from srv6ctl.cleanup import cleanup  # lazy: pyroute2 (the docstring)

    files = [Path(args.cni_conf_dir) / "10-srv6.conflist", Path(args.cni_bin_dir) / "srv6-cni"]
    report = cleanup(
        args.netns,
        files=files,
        directories=[Path(d) for d in args.state_dir] + [Path(args.cni_lib_dir)],
    )
    print(
        f"removed {report.dataplane_changes} SRv6 object(s), {report.pod_routes} pod route(s), "
        f"devices {report.devices or '-'}, tables {report.tables or '-'}, "
        f"accept_local off on {report.uplinks or '-'}, files {report.files or '-'}"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="srv6ctl",
        description="IPv6/SRv6-first Kubernetes networking: services without NAT over SRv6.",
    )
    parser.add_argument("--version", action="version", version=f"srv6ctl {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    config = commands.add_parser("config", help="validate and explain a config file")
    config_commands = config.add_subparsers(dest="config_command", required=True)
    check = config_commands.add_parser("check", help="validate FILE and print the resolved plan")
    check.add_argument("file")
    check.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    check.set_defaults(func=_config_check)

    agent = commands.add_parser("agent", help="run the node agent (one per node)")
    agent.add_argument("--node-name", required=True, help="this node's Kubernetes name")
    agent.add_argument("--config", required=True, help="the config file (addressPlan, store)")
    agent.add_argument("--netns", help="program this network namespace (the lab's nodes)")
    source = agent.add_mutually_exclusive_group()
    source.add_argument("--lab-dir", help="watch Kubernetes-shaped YAML files here (the lab)")
    source.add_argument("--kubeconfig", help="a kubeconfig; default: the in-cluster config")
    agent.add_argument("--cni-socket", default="/run/srv6ctl/cni.sock")
    agent.add_argument("--api-socket", default="/run/srv6ctl/agent.sock")
    agent.add_argument("--dataplane", choices=("kernel", "vpp"), default="kernel")
    agent.add_argument(
        "--vpp-api-socket",
        default="/run/vpp/api.sock",
        help="VPP's binary API socket (--dataplane vpp)",
    )
    agent.add_argument(
        "--vpp-stats-socket",
        help="VPP's stats socket (--dataplane vpp): per-policy and pod counters, restarts",
    )
    agent.add_argument(
        "--vpp-api-dir",
        help="the VPP's API definitions, *.api.json (--dataplane vpp); default: "
        "$SRV6CTL_VPP_API_DIR, ../shared/vpp-api, /usr/share/vpp/api. NodePorts need "
        "classify.api.json (the VPP's own share/vpp/api has it, and abf.api.json, with "
        "which rules an older agent left in ABF are moved)",
    )
    agent.add_argument(
        "--vpp-host-interface",
        default="vpphost0",
        type=_host_interface,
        help="the node's own stack behind VPP (--dataplane vpp): the veth the agent makes "
        "for it, holding the node's addresses and routing the cluster's prefixes (and, at "
        "metric 4096, everything else) through VPP, which hands the node what is addressed "
        "to it (default vpphost0; 'none': no interconnect, the node's stack is cut off)",
    )
    agent.add_argument("--resync", type=float, default=30.0, help="seconds between full resyncs")
    agent.add_argument(
        "--metrics-address",
        default="127.0.0.1:9876",
        help="where /metrics, /healthz and /readyz listen (host:port, [v6]:port, port 0 = any "
        "free port, 'off'); beyond loopback only when you say so",
    )
    agent.add_argument(
        "--health-check-address",
        default="::",
        type=_listen_address,
        help="where the healthCheckNodePorts of LoadBalancer services with "
        "externalTrafficPolicy Local listen, as kube-proxy's (default '::': every node "
        "address, both families; 'off': none)",
    )
    agent.add_argument(
        "--nodeport-addresses",
        default=None,
        type=_node_port_addresses,
        help="which of the node's addresses serve NodePorts, as kube-proxy's option: "
        "'primary' (default: its InternalIP of each family) or comma-separated prefixes "
        "(e.g. '0.0.0.0/0,::/0': every InternalIP and ExternalIP its Node lists)",
    )
    agent.add_argument("--log-json", action="store_true", help="one JSON object per log line")
    agent.add_argument("--log-level", default="INFO")
    agent.set_defaults(func=_agent)

    clean = commands.add_parser(
        "cleanup",
        help="remove everything srv6ctl put on this node (uninstall; stop the agent first)",
    )
    clean.add_argument("--netns", help="the node's network namespace (default: this one)")
    clean.add_argument("--cni-conf-dir", default="/etc/cni/net.d")
    clean.add_argument("--cni-bin-dir", default="/opt/cni/bin")
    clean.add_argument("--cni-lib-dir", default="/opt/cni/lib/srv6-cni")
    clean.add_argument(
        "--state-dir", action="append", default=[], help="agent state to delete (repeatable)"
    )
    clean.set_defaults(func=_cleanup)

    show_ = commands.add_parser("show", help="ask a running agent what it holds")
    show_.add_argument(
        "what",
        choices=(
            "nodes",
            "pods",
            "sids",
            "policies",
            "services",
            "ipam",
            "status",
            "desired",
            "held",
            "actual",
            "drift",
            "allocations",
        ),
        help="a table, desired vs programmed (exit 1 when anything drifted), or raw JSON",
    )
    show_.add_argument("--api-socket", default="/run/srv6ctl/agent.sock")
    show_.add_argument("--json", action="store_true", help="one line")
    show_.set_defaults(func=_show)

    for register in (
        lab_cli.register,
        verify_cli.register,
        conformance_cli.register,
        trace.register,
        top.register,
    ):
        register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
