"""`srv6ctl lab status`: the lab's nodes, pods, services and agents' health, as data first.

`collect` reads the state file and asks every agent; `render` turns the result into rich
tables, `--json` prints it as it is.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from rich.console import Console
from rich.table import Table

from srv6ctl.config import load_config
from srv6ctl.lab import netns, processes
from srv6ctl.lab.state import LabPaths, LabState
from srv6ctl.observe.agentview import AgentUnavailable, AgentView, view


def collect(paths: LabPaths, state: LabState) -> dict[str, Any]:
    plan = load_config(paths.config)[1]
    views: dict[str, AgentView] = {}
    nodes = []
    for node in state.nodes:
        entry: dict[str, Any] = {
            "name": node.name,
            "netns": node.netns,
            "internal_ips": [ip for ip in (node.internal_ipv6, node.internal_ipv4) if ip],
            "agent_pid": node.agent.pid if node.agent else None,
            "agent": "down",
        }
        if state.options.dataplane == "vpp":
            entry["vpp"] = "running" if processes.alive(node.vpp) else "down"
            entry["vpp_pid"] = node.vpp.pid if node.vpp else None
            entry["vpp_api_socket"] = node.vpp_api_socket
        if processes.alive(node.agent):
            try:
                seen = view(node.api_socket)
            except AgentUnavailable:
                entry["agent"] = "not answering"
            else:
                views[node.name] = seen
                entry.update(
                    agent="ready" if seen.ready else "starting",
                    metrics=seen.metrics,
                    node_id=seen.node_id,
                    locator=str(seen.locator),
                    in_sync=not seen.drift,
                    **seen.stats,
                )
        nodes.append(entry)
    pods = []
    for pod in state.pods:
        located = plan.pod_of_address(ipaddress.ip_address(pod.ipv6)) if pod.ipv6 else None
        pods.append(
            {
                "name": f"{pod.namespace}/{pod.name}",
                "node": pod.node,
                "role": pod.role,
                "service": pod.service,
                "ipv6": pod.ipv6,
                "ipv4": pod.ipv4,
                "sid": str(plan.pod_sid_dx6(*located)) if located else None,
                "netns": pod.netns,
                "server": "running" if processes.alive(pod.server) else "down",
                "netns_present": netns.exists(pod.netns),
            }
        )
    services = []
    for service in state.services:
        backends = state.backends(service.name)
        # A host-network endpoint is its node's own stack ("n1 (host)").
        names = [p.name for p in backends] + [f"{n} (host)" for n in service.host_endpoints]
        programmed = 0
        translated = {ipaddress.ip_address(service.cluster_ipv6)}
        for seen in views.values():
            if service.outside_endpoints:
                # Not steered: every pod translates it (model.Translation).
                held = [{t.address for t in p.translations} for p in seen.desired.pods]
                programmed += all(translated <= h for h in held)
                continue
            policy = seen.policy(f"svc/{service.namespace}/{service.name}/v6")
            count = 0 if policy is None else len(policy.segment_lists)
            if count == len(names):
                programmed += 1
        names += [f"{a} (outside)" for a in service.outside_endpoints]
        services.append(
            {
                "name": f"{service.namespace}/{service.name}",
                "cluster_ips": [ip for ip in (service.cluster_ipv6, service.cluster_ipv4) if ip],
                "backends": names,
                "nodes_in_sync": programmed,
                "nodes": len(state.nodes),
            }
        )
    return {
        "state_dir": str(paths.root),
        "complete": state.complete,
        "options": state.options.model_dump(),
        "dataplane": state.options.dataplane,
        "vpp_binary": state.vpp_binary,
        "nodes": nodes,
        "pods": pods,
        "services": services,
    }


def render(out: Console, status: dict[str, Any]) -> None:
    options = status["options"]
    stack = "dual-stack" if options["dual_stack"] else "IPv6-only"
    title = f"lab in {status['state_dir']}: {stack}, {options['dataplane']} dataplane"
    if not status["complete"]:
        title += " [red](build did not finish: run `srv6ctl lab up` again)[/]"
    nodes = Table(title=title, title_justify="left")
    with_vpp = options["dataplane"] == "vpp"
    columns = ("node", "netns", "InternalIP", "id", "locator", "agent", "in sync", "changes")
    for column in (*columns, "metrics", *(("VPP",) if with_vpp else ())):
        nodes.add_column(column)
    for node in status["nodes"]:
        health = node["agent"]
        colour = "green" if health == "ready" else "red"
        vpp = []
        if with_vpp:
            vpp_colour = "green" if node["vpp"] == "running" else "red"
            vpp = [f"[{vpp_colour}]{node['vpp']}[/] (pid {node['vpp_pid']})"]
        nodes.add_row(
            node["name"],
            node["netns"],
            "\n".join(node["internal_ips"]),
            str(node.get("node_id", "-")),
            node.get("locator", "-"),
            f"[{colour}]{health}[/] (pid {node['agent_pid']})",
            _yes_no(node.get("in_sync")),
            f"{node.get('changes', '-')} ({node.get('repairs', 0)} repairs)"
            if "changes" in node
            else "-",
            node.get("metrics") or "-",
            *vpp,
        )
    out.print(nodes)
    pods = Table(title="pods", title_justify="left")
    for column in ("pod", "node", "role", "addresses", "End.DX6 SID", "netns", "server"):
        pods.add_column(column)
    for pod in status["pods"]:
        role = pod["role"] + (f" of {pod['service']}" if pod["service"] else "")
        addresses = "\n".join(a for a in (pod["ipv6"], pod["ipv4"]) if a)
        server = pod["server"]
        pods.add_row(
            pod["name"],
            pod["node"],
            role,
            addresses,
            pod["sid"] or "-",
            pod["netns"],
            f"[{'green' if server == 'running' else 'red'}]{server}[/]",
        )
    out.print(pods)
    services = Table(title="services", title_justify="left")
    for column in ("service", "ClusterIPs", "ports", "backends", "policy on nodes"):
        services.add_column(column)
    for service in status["services"]:
        in_sync = f"{service['nodes_in_sync']}/{service['nodes']}"
        colour = "green" if service["nodes_in_sync"] == service["nodes"] else "yellow"
        services.add_row(
            service["name"],
            "\n".join(service["cluster_ips"]),
            "80→http(8080), 8081 (tcp, udp)",
            ", ".join(service["backends"]) or "none (refused)",
            f"[{colour}]{in_sync}[/]",
        )
    out.print(services)


def _yes_no(value: object) -> str:
    if value is None:
        return "-"
    return "[green]yes[/]" if value else "[red]no[/]"
