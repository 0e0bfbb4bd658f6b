"""A node's processes: its agent and, with `--dataplane vpp`, its VPP, each started and
waited for until ready; and the kernel settings the lab applies once an agent is."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from srv6ctl.dataplane.nsenter import ensure_sysctls
from srv6ctl.lab import netns, processes, vpp
from srv6ctl.lab.context import LabContext
from srv6ctl.lab.netns import LabError
from srv6ctl.lab.shape import node_addresses
from srv6ctl.lab.state import LabPaths, LabState, NodeRecord, ProcessRecord
from srv6ctl.observe.agentview import AgentUnavailable, query

RESYNC_SECONDS = 5
# FINDINGS.md, finding 1: the agent sets fib_multipath_hash_policy=1, under which a pod's
# own TCP flows are balanced on their socket's random hash, re-drawn on every RTO. Policy 3
# with fields 0x37 (source and destination address, protocol, source and destination
# port) hashes the 5-tuple of every packet, whoever sent it. Set after the agent is ready
# (its start-up writes policy 1); `lab up --no-workarounds` leaves the agent's values.
MULTIPATH_HASH_WORKAROUND = {
    "net.ipv6.fib_multipath_hash_policy": "3",
    "net.ipv6.fib_multipath_hash_fields": "55",  # 0x37
    "net.ipv4.fib_multipath_hash_policy": "3",
    "net.ipv4.fib_multipath_hash_fields": "55",
}
AGENT_READY_TIMEOUT = 60.0
AGENT_FAILING_S = 10.0  # an agent refused by its dataplane for this long is not starting


class AgentExited(LabError):
    """An agent process ended before it was ready."""


# --- agents ------------------------------------------------------------------------------


def _agent_argv(ctx: LabContext, node: NodeRecord) -> list[str]:
    return [
        *_agent_place(ctx, node),
        sys.executable,
        "-m",
        "srv6ctl.cli",
        "agent",
        "--node-name",
        node.name,
        "--config",
        str(ctx.paths.config),
        *_agent_source(ctx, node),
        "--cni-socket",
        node.cni_socket,
        "--api-socket",
        node.api_socket,
        "--resync",
        str(RESYNC_SECONDS),
        "--dataplane",
        ctx.state.options.dataplane,
        *_vpp_agent_args(ctx, node),
        # Several agents on one host: each takes a free port (`lab status` shows it).
        "--metrics-address",
        "127.0.0.1:0",
    ]


def _agent_place(ctx: LabContext, node: NodeRecord) -> list[str]:
    """Where the agent runs: with --kubernetes, in the node's namespaces (mount included:
    containerd makes the pods' network namespaces under the node's own /run/netns)."""
    if ctx.state.options.kubernetes is None:
        return []
    assert node.kubelet is not None
    return ["nsenter", "--target", str(node.kubelet.pid), "--mount", "--uts", "--net", "--"]


def _agent_source(ctx: LabContext, node: NodeRecord) -> list[str]:
    """The lab's object files and the node's namespace by name, or (--kubernetes) the
    API server, from inside the node's namespace."""
    if ctx.state.options.kubernetes is None:
        return ["--netns", node.netns, "--lab-dir", str(ctx.paths.objects)]
    return ["--kubeconfig", str(ctx.paths.agent_kubeconfig)]  # kubernetes_lab writes it


def _vpp_agent_args(ctx: LabContext, node: NodeRecord) -> list[str]:
    if node.vpp_api_socket is None:
        return []
    args = ["--vpp-api-socket", node.vpp_api_socket]
    if node.vpp_stats_socket is not None:
        args += ["--vpp-stats-socket", node.vpp_stats_socket]
    # The running VPP's own definitions: they are the running VPP's, and ../shared/vpp-api
    # has no abf.api.json (which moves rules an older agent left in ABF).
    api_dir = vpp.own_api_dir(ctx.state.vpp_binary) if ctx.state.vpp_binary else None
    if api_dir is not None:
        args += ["--vpp-api-dir", api_dir]
    return args


def start_agent(ctx: LabContext, node: NodeRecord) -> ProcessRecord:
    log = ctx.paths.node_dir(node.name) / "agent.log"
    return processes.spawn(_agent_argv(ctx, node), log, lab=ctx.paths.root)


def agent_ready(ctx: LabContext, node: NodeRecord) -> None:
    """Wait until the node's agent is ready, then apply the lab's kernel workarounds."""
    try:
        _wait_agent_ready(node)
    except AgentExited as exited:
        # Once: an agent that dies during start-up (FINDINGS.md, finding 4: the kernel
        # probe has timed out under load) gets a second chance; its log keeps both.
        ctx.steps.note(f"[yellow]agent of {node.name} exited during start-up[/]: {exited}")
        node.agent = start_agent(ctx, node)
        ctx.save()
        _wait_agent_ready(node)
    if kernel_workarounds(ctx.state):
        result = ensure_sysctls(netns.netns_path(node.netns), MULTIPATH_HASH_WORKAROUND)
        if result.refused:
            raise LabError(f"{node.name}: {'; '.join(result.refused)}")


def _wait_agent_ready(node: NodeRecord) -> None:
    deadline = time.monotonic() + AGENT_READY_TIMEOUT
    why = "its API never answered"
    failing_since: float | None = None
    while time.monotonic() < deadline:
        if not processes.alive(node.agent):
            log = node.agent.log if node.agent else ""
            raise AgentExited(
                f"the agent of {node.name} exited; its log ({log}) ends with:\n"
                + processes.log_tail(log)
            )
        try:
            status = query(node.api_socket, "status", timeout=2.0)
        except AgentUnavailable:
            status = {}
        if status.get("ready"):
            return
        error = status.get("programming_error")
        if status:
            why = f"the dataplane could not be programmed: {error}" if error else "not ready"
        # Its passes are retried with back-off; the same refusal for this long is not
        # going away by itself.
        failing_since = (failing_since or time.monotonic()) if error else None
        if failing_since is not None and time.monotonic() - failing_since > AGENT_FAILING_S:
            raise LabError(f"the agent of {node.name} is not ready: {why}")
        time.sleep(0.1)
    raise LabError(
        f"the agent of {node.name} was not ready within {AGENT_READY_TIMEOUT:.0f} s: {why}"
    )


def kernel_workarounds(state: LabState) -> bool:
    """FINDINGS.md's settings are the kernel's forwarding: VPP hashes each packet's
    5-tuple already, and the kernel of a VPP node forwards nothing."""
    return state.options.workarounds and state.options.dataplane == "kernel"


# --- VPP (--dataplane vpp) -------------------------------------------------------------------


def vpp_node(paths: LabPaths, node: NodeRecord) -> vpp.VppNode:
    where = node.vpp_dir or paths.node_dir(node.name) / "vpp"
    return vpp.VppNode(Path(where), shm_prefix=node.netns)  # <prefix>-<node>


def quiet_uplink(node: NodeRecord) -> None:
    """No IPv6 on the kernel's end of the uplink (set before the veth exists: as a
    default it also covers the eth0 about to be made), so it sends no RS/MLD/NA and
    does not answer for the node's addresses beside VPP."""
    result = ensure_sysctls(
        netns.netns_path(node.netns), {"net.ipv6.conf.default.disable_ipv6": "1"}
    )
    if result.refused:
        raise LabError(f"{node.name}: {'; '.join(result.refused)}")


def start_vpp(ctx: LabContext, node: NodeRecord) -> None:
    assert ctx.state.vpp_binary is not None
    where = vpp_node(ctx.paths, node)
    vpp.write_config(where, ctx.state.vpp_binary, node.mac, node_addresses(node))
    node.vpp = vpp.start(where, ctx.state.vpp_binary, node.netns, lab=ctx.paths.root)


def vpp_ready(paths: LabPaths, node: NodeRecord) -> None:
    assert node.vpp is not None
    vpp.wait_ready(vpp_node(paths, node), node.vpp, node.name)
