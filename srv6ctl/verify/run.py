"""Run verify's check groups against the lab, or against one node from inside it.

Lab mode (the default) reads the lab's state directory and runs every group:
conformance (crafted SRv6 packets), connectivity (real flows between the lab's pods and
services), external (an external client reaching LoadBalancer IPs and externalIPs: see
external.py), convergence (it removes a backend and adds one back, leaving the lab in
the shape it found it) and policy (real flows judged against the NetworkPolicy
compiler's verdicts; with no policy in the lab, around a sample policy it removes again).

Node mode (`--node NAME`), for a real cluster: run inside that node's network namespace
(e.g. a privileged hostNetwork pod, or `nsenter -t 1 -n` on the node) as root
(CAP_NET_ADMIN, CAP_NET_RAW, CAP_SYS_ADMIN for namespaces), with the agent's API socket
(`--api-socket`, default /run/srv6ctl/agent.sock) and its config file (`--config`, for
the address plan), iproute2 and scapy. Verify then makes a throw-away namespace joined to
the node by a veth (`s6vp<hex>`, the only thing it adds to the node, removed at the end),
injects its crafted packets through it, and taps the node's uplink (`--uplink`, eth0) and
its pods' veths. Only the conformance group runs there: connectivity, convergence and
policy need the lab's pod servers and its control of the cluster's objects. Crafted
packets that a node forwards (End) go to the next node's End.DT6 and on to a pod there,
whose discard port drops them.
"""

from __future__ import annotations

import contextlib
import ipaddress
import secrets
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass

from srv6ctl.observe.netinfo import link_mac, sysctl
from srv6ctl.verify.connectivity import Connectivity
from srv6ctl.verify.convergence import Convergence
from srv6ctl.verify.external import ExternalChecks
from srv6ctl.verify.policy import PolicyChecks
from srv6ctl.verify.report import Report
from srv6ctl.verify.topology import Injector, Topology, from_lab, from_node

GROUPS = ("conformance", "connectivity", "external", "convergence", "policy")
DEFAULT_FLOWS = 240
NODE_PROBE_SOURCE = ipaddress.IPv6Address("2001:db8:5ec::1")  # documentation range


@dataclass(frozen=True)
class VerifyOptions:
    state_dir: str | None = None
    node: str | None = None
    api_socket: str = "/run/srv6ctl/agent.sock"
    config: str = "/etc/srv6ctl/srv6ctl.yaml"
    uplink: str = "eth0"
    groups: tuple[str, ...] = GROUPS
    flows: int = DEFAULT_FLOWS


def run(options: VerifyOptions) -> Report:
    report = Report()
    started = time.monotonic()
    if options.node is not None:
        with node_injector(options.node) as injector:
            topo = from_node(options.node, options.api_socket, options.config, injector)
            for node in topo.nodes:
                node.uplink = options.uplink
            _run_groups(topo, None, report, ("conformance",))
            for group in ("connectivity", "external", "convergence", "policy"):
                if group in options.groups:
                    report.skip(group, group, "needs the lab (its pod servers and objects)")
    else:
        assert options.state_dir is not None
        topo, lab = from_lab(options.state_dir)
        report.figures["lab"] = {
            "nodes": len(topo.nodes),
            "pods": len(topo.pods),
            "dual_stack": topo.plan.dual_stack,
        }
        _run_groups(topo, lab, report, options.groups, options.flows)
    report.figures["seconds"] = round(time.monotonic() - started, 2)
    return report


def _run_groups(
    topo: Topology,
    lab: object | None,
    report: Report,
    groups: tuple[str, ...],
    flows: int = DEFAULT_FLOWS,
) -> None:
    # Here, not above: only the conformance group needs scapy (~0.5 s to import).
    from srv6ctl.verify.conformance import Conformance

    for node in topo.nodes:
        report.figures.setdefault("multipath_hash_policy", {})[node.name] = sysctl(
            node.netns, "net.ipv6.fib_multipath_hash_policy"
        )
    if "conformance" in groups:
        try:
            Conformance(topo, report).run()
        except Exception as err:
            report.crashed("conformance", err)
    if "connectivity" in groups:
        try:
            connectivity = Connectivity(topo, report, flows)
            connectivity.run()
            web = next((s for s in topo.services if s.backends), None)
            if web is not None:
                connectivity.rto_affinity(web)
        except Exception as err:
            report.crashed("connectivity", err)
    if "external" in groups and lab is not None:
        try:
            ExternalChecks(topo, lab, report).run()
        except Exception as err:
            report.crashed("external", err)
    if "convergence" in groups and lab is not None:
        try:
            Convergence(topo, lab, report).run()
        except Exception as err:
            report.crashed("convergence", err)
    if "policy" in groups and lab is not None:
        try:
            PolicyChecks(lab, report).run()
        except Exception as err:
            report.crashed("policy", err)


@contextlib.contextmanager
def node_injector(node: str) -> Iterator[Injector]:
    """A throw-away namespace joined to this one (the node's) by a veth."""
    suffix = secrets.token_hex(4)
    probe_ns, node_side = f"s6verify-{suffix}", f"s6vp{suffix}"
    subprocess.run(["ip", "netns", "add", probe_ns], check=True)
    try:
        _ip(["link", "add", node_side, "type", "veth", "peer", "name", "eth0", "netns", probe_ns])
        _ip(["link", "set", node_side, "up"])
        _ip(["-n", probe_ns, "link", "set", "eth0", "up"])
        _ip(["-n", probe_ns, "link", "set", "lo", "up"])
        yield Injector(
            netns=probe_ns,
            interface="eth0",
            mac=link_mac(probe_ns, "eth0"),
            source_v6=NODE_PROBE_SOURCE,
            node_macs={node: link_mac(None, node_side)},
        )
    finally:
        subprocess.run(["ip", "link", "del", node_side], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", probe_ns], capture_output=True, check=False)


def _ip(args: list[str]) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
