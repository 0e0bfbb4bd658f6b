"""`srv6ctl lab ...`: argparse wiring only; the work happens in `srv6ctl.lab.build`.

`register(commands)` adds the `lab` command (with `demo`, which predates the lab) to the
top-level subparsers. Nothing heavy is imported until a subcommand runs: the commands
import the lab's modules (pyroute2, rich, pydantic, PyYAML, or only subprocess) when they
run, so that every `srv6ctl` command starts fast (test_lab_units: the CLI registers
without heavy imports).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path
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
    _up_options(up)
    _state_dir(up)
    up.set_defaults(func=_up)

    session = lab_commands.add_parser(
        "session", help="in one go: lab up, srv6ctl verify, then CMD (if given), lab down"
    )
    _up_options(session)
    _state_dir(session)
    session.add_argument("command", nargs=argparse.REMAINDER, metavar="-- CMD ...")
    session.set_defaults(func=_session)

    vm = lab_commands.add_parser(
        "vm",
        help="`lab session` in a VM booted with Debian's own kernel over this host's files "
        "(for a host kernel without SRv6; nothing of the host is changed)",
    )
    _up_options(vm)
    vm.add_argument("--kernel", help="the guest kernel release (default: the newest installed)")
    vm.add_argument("command", nargs=argparse.REMAINDER, metavar="-- CMD ...")
    vm.set_defaults(func=_vm)

    kernel = lab_commands.add_parser(
        "kernel", help="can this host's kernel run the lab (kernel SRv6)? exit 0 if so"
    )
    kernel.set_defaults(func=_kernel)

    status = lab_commands.add_parser("status", help="nodes, pods, services and agents' health")
    status.add_argument("--json", action="store_true", help="one JSON object")
    _state_dir(status)
    status.set_defaults(func=_status)

    exec_ = lab_commands.add_parser(
        "exec", help="run a command in a pod's (or node's) network namespace"
    )
    exec_.add_argument(
        "target",
        metavar="POD",
        help="a pod, or a node (n1), probe, underlay, control-plane (--kubernetes)",
    )
    exec_.add_argument("command", nargs=argparse.REMAINDER, metavar="-- CMD ...")
    _state_dir(exec_)
    exec_.set_defaults(func=_exec)

    e2e = lab_commands.add_parser(
        "e2e",
        help="--kubernetes labs: run the upstream e2e tests (DIR/e2e.test) against the lab",
    )
    e2e.add_argument("--focus", default=None, help="ginkgo focus (default: [sig-network])")
    e2e.add_argument("--skip", default=None, help="ginkgo skip (default: srv6ctl/lab/e2e.py)")
    e2e.add_argument(
        "--procs", type=int, default=1, help="specs at a time (DIR/ginkgo runs them; default 1)"
    )
    _state_dir(e2e)
    e2e.set_defaults(func=_e2e)

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

    _register_policy(lab_commands)

    demo = lab_commands.add_parser(
        "demo", help="allocate a small cluster's addresses and SIDs in a throw-away store"
    )
    demo.add_argument("--nodes", type=int, default=3)
    demo.add_argument("--pods-per-node", type=int, default=2)
    demo.set_defaults(func=_demo)


def _up_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--pods-per-node", type=int, default=2)
    parser.add_argument("--dual-stack", action="store_true", help="IPv4 too (IPv4-in-SRv6)")
    parser.add_argument("--dataplane", choices=("kernel", "vpp"), default="kernel")
    parser.add_argument(
        "--prefix",
        default=DEFAULT_PREFIX,
        help=f"name prefix of the lab's network namespaces (default {DEFAULT_PREFIX})",
    )
    parser.add_argument(
        "--kubernetes",
        metavar="DIR",
        default=os.environ.get("SRV6CTL_KUBERNETES") or None,
        help="real Kubernetes: kube-apiserver, kubelet, ... and images/ in DIR "
        "(default $SRV6CTL_KUBERNETES; README, 'A lab on real Kubernetes')",
    )
    parser.add_argument(
        "--no-workarounds",
        dest="workarounds",
        action="store_false",
        help="leave the agents' settings as they are (srv6ctl/lab/FINDINGS.md)",
    )


def _up_argv(args: argparse.Namespace) -> list[str]:
    """The `lab up` options of `args` as a command line again (for `session` and `vm`)."""
    argv = ["--nodes", str(args.nodes), "--pods-per-node", str(args.pods_per_node)]
    argv += ["--dataplane", args.dataplane, "--prefix", args.prefix]
    argv += ["--dual-stack"] * args.dual_stack + ["--no-workarounds"] * (not args.workarounds)
    argv += ["--kubernetes", args.kubernetes] if args.kubernetes else []
    return argv


def _command(args: argparse.Namespace) -> list[str]:
    command: list[str] = args.command
    return command[1:] if command[:1] == ["--"] else command


def _session(args: argparse.Namespace) -> int:
    from srv6ctl.lab.session import session  # lazy: hostvm (~15 ms to import)

    return session(_up_argv(args), _command(args), args.state_dir)


def _vm(args: argparse.Namespace) -> int:
    from srv6ctl.lab.session import session_in_vm  # lazy: hostvm (~15 ms to import)

    return session_in_vm(_up_argv(args), _command(args), args.kernel)


def _kernel(args: argparse.Namespace) -> int:
    from srv6ctl.dataplane.kernel_caps import probe_kernel  # lazy: pyroute2 (docstring)

    try:
        features = probe_kernel()
    except OSError as err:  # the probe's scratch namespace needs CAP_SYS_ADMIN
        print(f"cannot probe the kernel ({err}): run as root")
        return 1
    problem = features.unsupported()
    if problem is not None:
        print(problem)
        print("`srv6ctl lab vm` runs the lab in a VM with Debian's own kernel instead")
        return 1
    print(f"kernel {features.kernel}: the lab's kernel dataplane runs here")
    for note in features.left_out():
        print(f"  without {note}")
    return 0


def _lab(args: argparse.Namespace, *, quiet: bool = False) -> Any:
    # Lazy (the docstring): the lab's life cycle loads pyroute2, pydantic and rich.
    from srv6ctl.lab.build import Lab
    from srv6ctl.lab.progress import Steps, console

    return Lab(args.state_dir, Steps(console(), quiet=quiet))


def _up(args: argparse.Namespace) -> int:
    # Lazy (the docstring): pydantic, and subprocess.
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
        kubernetes=str(Path(args.kubernetes).absolute()) if args.kubernetes else None,
    )
    try:
        done = lab.up(options)
    except KeyboardInterrupt:
        out.print("[red]lab up interrupted[/]: `srv6ctl lab up` rebuilds, `lab down` cleans up")
        return 130
    except (LabError, OSError) as err:
        out.print(f"[red]lab up failed[/]: {err}")
        if lab.paths.root.exists():  # not a refusal before anything was made
            vpp_log = f", {lab.paths.root}/<node>/vpp/" if args.dataplane == "vpp" else ""
            out.print(
                f"logs: {lab.paths.root}/<node>/agent.log{vpp_log}, {lab.paths.root}/pods/; "
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
    if not state.services:  # --kubernetes: its pods and Services are not made yet
        out.print(f"{summary}: {len(state.nodes)} Kubernetes nodes, kubelet on each")
        return 0
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
    from srv6ctl.lab.status import collect, render  # lazy: rich, pydantic (docstring)

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
    healthy = healthy and all(n.get("vpp", "running") == "running" for n in status["nodes"])
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
    if state.control_plane_netns is not None:  # --kubernetes: kubectl as the admin there
        special["control-plane"] = state.control_plane_netns
        from srv6ctl.lab.kubernetes import kubeconfig_path

        os.environ["KUBECONFIG"] = str(kubeconfig_path(lab.paths.control_plane, "admin"))
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


def _e2e(args: argparse.Namespace) -> int:
    from srv6ctl.lab import e2e, kubernetes_lab

    lab = _lab(args, quiet=True)
    state = lab.state
    if state is None or state.options.kubernetes is None:
        print(
            f"no lab on Kubernetes in {lab.paths.root} (lab up --kubernetes DIR)", file=sys.stderr
        )
        return 1
    if not (Path(state.options.kubernetes) / "e2e.test").is_file():
        print(f"no e2e.test in {state.options.kubernetes}", file=sys.stderr)
        return 1
    focus = e2e.DEFAULT_FOCUS if args.focus is None else args.focus
    has_dns = kubernetes_lab.dns_address(state) is not None
    skip = e2e.default_skip(has_dns) if args.skip is None else args.skip
    if args.procs > 1 and not (Path(state.options.kubernetes) / "ginkgo").is_file():
        print(f"--procs {args.procs}: no ginkgo in {state.options.kubernetes}", file=sys.stderr)
        return 1
    argv = e2e.argv(lab.paths, state, focus, skip, args.procs)
    code = e2e.run(lab.paths, argv)
    report = e2e.report_dir(lab.paths) / "junit_01.xml"
    if report.exists():
        result = e2e.summary(report)
        print(f"e2e: {result.line()} (report: {report})")
        for name in result.failed:
            print(f"  failed: {name}")
    return code


def _scale(args: argparse.Namespace) -> int:
    from srv6ctl.lab.netns import LabError  # lazy: subprocess (the docstring)

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


def _register_policy(lab_commands: Any) -> None:
    """`lab policy apply|delete|list`: NetworkPolicies in the lab's objects directory."""
    policy = lab_commands.add_parser(
        "policy", help="NetworkPolicies in the lab: apply, delete, list (srv6ctl.lab.policy)"
    )
    commands = policy.add_subparsers(dest="policy_command", required=True, metavar="COMMAND")

    def wait_options(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--wait",
            action="store_true",
            help="until every pod→pod and pod→service verdict on the wire is the policies'",
        )
        parser.add_argument("--timeout", type=float, default=30.0, help="for --wait (seconds)")
        _state_dir(parser)

    apply = commands.add_parser(
        "apply", help="validate and write NetworkPolicies (a YAML/JSON file, or a List)"
    )
    apply.add_argument("file", metavar="FILE", help="the policies ('-': standard input)")
    wait_options(apply)
    apply.set_defaults(func=_policy_apply)

    delete = commands.add_parser("delete", help="remove policies by name, or those of a file")
    delete.add_argument("targets", nargs="*", metavar="NAME|FILE", help="[NAMESPACE/]NAME")
    delete.add_argument("--all", action="store_true", help="every policy `apply` wrote")
    wait_options(delete)
    delete.set_defaults(func=_policy_delete)

    list_ = commands.add_parser("list", help="the lab's policies and the pods they select")
    list_.add_argument("--json", action="store_true", help="one JSON list")
    _state_dir(list_)
    list_.set_defaults(func=_policy_list)


def _policy_lab(args: argparse.Namespace) -> Any:
    lab = _lab(args, quiet=True)
    if lab.state is None:
        print(f"no lab in {lab.paths.root} (srv6ctl lab up builds one)", file=sys.stderr)
        return None
    return lab


def _policy_wait(lab: Any, timeout: float) -> int:
    from srv6ctl.lab.policy_verdicts import wait_programmed  # lazy: pydantic, PyYAML

    out = lab.steps.out
    started = time.monotonic()
    with out.status("waiting until the verdicts on the wire are the policies'"):
        flows, problems = wait_programmed(lab.paths, lab.state, timeout)
    if problems:
        out.print(f"[red]not in effect after {timeout:.0f} s[/]: {len(problems)} of {flows} flows")
        for problem in problems[:10]:
            out.print(f"  {problem}")
        return 1
    out.print(
        f"[green]in effect[/]: {flows} flows as the policies say "
        f"({time.monotonic() - started:.1f} s)"
    )
    return 0


def _policy_apply(args: argparse.Namespace) -> int:
    # Lazy (the docstring): policies are read and validated with PyYAML and pydantic.
    from srv6ctl.lab.kubernetes_policy import policy_store
    from srv6ctl.lab.policy import PolicyError, lab_cluster, read_policy_file, selected

    lab = _policy_lab(args)
    if lab is None:
        return 1
    try:
        policies = read_policy_file(args.file)
        store = policy_store(lab.paths, lab.state)
        store.ensure_namespaces(lab.state)
        done = store.apply(policies)
    except PolicyError as err:
        print(f"lab policy apply: {err} (nothing written)", file=sys.stderr)
        return 1
    cluster = lab_cluster(lab.state, store.present(), store.namespaces())
    for policy, what in done:
        pods = ", ".join(selected(cluster, policy.policy)) or "no pod yet"
        lab.steps.out.print(f"networkpolicy {policy.key} {what} (selects {pods})")
    return _policy_wait(lab, args.timeout) if args.wait else 0


def _policy_delete(args: argparse.Namespace) -> int:
    # Lazy: PyYAML, pydantic.
    from srv6ctl.lab.kubernetes_policy import policy_store
    from srv6ctl.lab.policy import PolicyError, keys_of

    lab = _policy_lab(args)
    if lab is None:
        return 1
    if bool(args.targets) == args.all:
        print("lab policy delete: give NAME|FILE ..., or --all", file=sys.stderr)
        return 2
    store = policy_store(lab.paths, lab.state)
    try:
        removed = store.delete_all() if args.all else store.delete(keys_of(args.targets))
    except PolicyError as err:
        print(f"lab policy delete: {err} (nothing removed)", file=sys.stderr)
        return 1
    for key in removed:
        lab.steps.out.print(f"networkpolicy {key} deleted")
    if not removed:
        lab.steps.out.print("no policy to delete")
    return _policy_wait(lab, args.timeout) if args.wait else 0


def _policy_list(args: argparse.Namespace) -> int:
    # Lazy (the docstring): rich, and PyYAML and pydantic for the policies.
    from rich.table import Table

    from srv6ctl.lab.kubernetes_policy import policy_store
    from srv6ctl.lab.policy import describe, lab_cluster

    lab = _policy_lab(args)
    if lab is None:
        return 1
    store = policy_store(lab.paths, lab.state)
    present = store.present()
    cluster = lab_cluster(lab.state, present, store.namespaces())
    rows = [describe(p, cluster) for p in present]
    if args.json:
        print(json.dumps(rows))
        return 0
    if not rows:
        lab.steps.out.print("no NetworkPolicy in the lab (srv6ctl lab policy apply FILE)")
        return 0
    table = Table(title="NetworkPolicies", title_justify="left")
    for column in ("policy", "pod selector", "types", "rules in/out", "selects", "file"):
        table.add_column(column, overflow="fold")
    for row in rows:
        file = row["file"] or ""
        with contextlib.suppress(ValueError):
            file = str(Path(file).relative_to(lab.paths.objects))
        table.add_row(
            f"{row['namespace']}/{row['name']}",
            row["pod_selector"],
            ",".join(row["policy_types"]),
            f"{row['ingress_rules']}/{row['egress_rules']}",
            ", ".join(row["selects"]) or "-",
            file,
        )
    lab.steps.out.print(table)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from srv6ctl.demo import run_ipam_demo  # lazy: the store's etcd3gw, pydantic, rich

    return run_ipam_demo(nodes=args.nodes, pods_per_node=args.pods_per_node)


def main(argv: list[str] | None = None) -> int:
    """`python -m srv6ctl.lab ...` (the same as `srv6ctl lab ...`)."""
    parser = argparse.ArgumentParser(prog="srv6ctl")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["lab", *(sys.argv[1:] if argv is None else argv)])
    result: int = args.func(args)
    return result
