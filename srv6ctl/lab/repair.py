"""A lab's health, and its repair in place: `lab up` on a lab of the same shape whose
processes died (its namespaces intact) restarts just those, then waits until every agent
has converged again."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from srv6ctl.lab import netns, processes, vpp
from srv6ctl.lab.context import LabContext
from srv6ctl.lab.convergence import wait_converged
from srv6ctl.lab.node_processes import (
    MULTIPATH_HASH_WORKAROUND,
    agent_ready,
    kernel_workarounds,
    start_agent,
    start_vpp,
    vpp_ready,
)
from srv6ctl.lab.parallel import in_parallel
from srv6ctl.lab.state import LabState
from srv6ctl.lab.workload import start_server, wait_server
from srv6ctl.observe.agentview import AgentUnavailable, query
from srv6ctl.observe.netinfo import sysctl


@dataclass
class Health:
    """What `inspect` found; `problems` empty means the lab is whole."""

    missing_namespaces: list[str] = field(default_factory=list)
    dead_agents: list[str] = field(default_factory=list)
    dead_vpps: list[str] = field(default_factory=list)
    dead_kubelets: list[str] = field(default_factory=list)  # --kubernetes: a node's supervisor
    dead_control_plane: list[str] = field(default_factory=list)  # --kubernetes: its processes
    unready_agents: list[str] = field(default_factory=list)
    dead_servers: list[str] = field(default_factory=list)
    unfixed: list[str] = field(default_factory=list)  # nodes missing the lab's workarounds

    @property
    def problems(self) -> list[str]:
        out = [f"namespace {n} is missing" for n in self.missing_namespaces]
        out += [f"VPP of {n} is not running" for n in self.dead_vpps]
        out += [f"kubelet and containerd of {n} are not running" for n in self.dead_kubelets]
        out += [f"{c} of the control plane is not running" for c in self.dead_control_plane]
        out += [f"agent of {n} is not running" for n in self.dead_agents]
        out += [f"agent of {n} is not ready" for n in self.unready_agents]
        out += [f"server of pod {p} is not running" for p in self.dead_servers]
        out += [f"{n} lacks the multipath hash workaround" for n in self.unfixed]
        return out

    @property
    def repairable(self) -> bool:
        """Only processes died: restarting them restores the lab in place (not a node's
        kubelet and containerd: its pods went with them)."""
        return not (self.missing_namespaces or self.dead_kubelets or self.dead_control_plane)


def inspect(state: LabState) -> Health:
    health = Health()
    health.missing_namespaces = [n for n in state.namespaces() if not netns.exists(n)]
    health.dead_control_plane = [  # each logs to <component>.log
        Path(r.log).stem for r in state.control_plane if not processes.alive(r)
    ]
    for node in state.nodes:
        if state.options.dataplane == "vpp" and not processes.alive(node.vpp):
            health.dead_vpps.append(node.name)
        if state.options.kubernetes is not None and not processes.alive(node.kubelet):
            health.dead_kubelets.append(node.name)
        if not processes.alive(node.agent):
            health.dead_agents.append(node.name)
            continue
        try:
            if not query(node.api_socket, "status", timeout=2.0).get("ready"):
                health.unready_agents.append(node.name)
        except AgentUnavailable:
            health.unready_agents.append(node.name)
    health.dead_servers = [p.name for p in state.pods if not processes.alive(p.server)]
    if kernel_workarounds(state):
        for node in state.nodes:
            if node.name in health.dead_agents or not netns.exists(node.netns):
                continue
            for name, value in MULTIPATH_HASH_WORKAROUND.items():
                if sysctl(node.netns, name) != value:
                    health.unfixed.append(node.name)
                    break
    return health


def repair(ctx: LabContext, health: Health) -> None:
    state, steps = ctx.state, ctx.steps
    vpps = [state.node(n) for n in health.dead_vpps]
    if vpps:
        # Each agent reconnects by itself and replays what its VPP should hold (the
        # pods' ports at its next full resync, within node_processes.RESYNC_SECONDS).
        with steps.step(f"VPPs restarted: {', '.join(n.name for n in vpps)}"):
            vpp.remove_leftovers(state.options.prefix)  # of the dead ones only: named
            for node in vpps:
                start_vpp(ctx, node)
            ctx.save()
            in_parallel(lambda node: vpp_ready(ctx.paths, node), vpps)
    dead = [state.node(n) for n in health.dead_agents]
    if dead:
        with steps.step(f"agents restarted: {', '.join(n.name for n in dead)}"):
            for node in dead:
                node.agent = start_agent(ctx, node)
            ctx.save()
            in_parallel(lambda node: agent_ready(ctx, node), dead)
    if health.unready_agents:
        with steps.step(f"agents ready: {', '.join(health.unready_agents)}"):
            unready = [state.node(n) for n in health.unready_agents]
            in_parallel(lambda node: agent_ready(ctx, node), unready)
    if health.unfixed:
        with steps.step(f"workarounds re-applied: {', '.join(health.unfixed)}"):
            unfixed = [state.node(n) for n in health.unfixed]
            in_parallel(lambda node: agent_ready(ctx, node), unfixed)
    pods = [state.pod(p) for p in health.dead_servers]
    if pods:
        with steps.step(f"pod servers restarted: {', '.join(p.name for p in pods)}"):
            for pod in pods:
                pod.server = start_server(ctx.paths, pod)
            ctx.save()
            in_parallel(lambda pod: wait_server(ctx.paths, pod), pods)
    with steps.step("every agent converged"):
        wait_converged(ctx.paths, state)
