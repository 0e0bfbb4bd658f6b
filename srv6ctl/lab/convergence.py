"""When the lab has converged: every agent renders the lab's objects and its dataplane
holds them (each service's SIDs, every local pod attached and translating the Services
outside the cluster, no drift)."""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Iterable, Mapping

from ipam6.plan import AddressPlan
from srv6ctl.config import load_config
from srv6ctl.dataplane.model import PodAttachment
from srv6ctl.lab.netns import LabError
from srv6ctl.lab.state import LabPaths, LabState, ServiceRecord
from srv6ctl.observe.agentview import AgentUnavailable, view

CONVERGE_TIMEOUT = 30.0


def expected_sids(
    plan: AddressPlan,
    state: LabState,
    service: ServiceRecord,
    family: int,
    node_ids: Mapping[str, int],
) -> set[str]:
    """The pod SIDs (End.DX6 or End.DX4) of the service's backends, and the End.DT6
    `L::7` of each node serving it on its own stack (IPv6: host-network endpoints)."""
    sids = set()
    if family == 6:
        for name in service.host_endpoints:
            node_id = node_ids.get(name)
            if node_id is not None:
                sids.add(str(plan.host_sid(node_id)))
    for pod in state.backends(service.name):
        address = pod.ipv6 if family == 6 else pod.ipv4
        located = None if address is None else plan.pod_of_address(ipaddress.ip_address(address))
        if located is None:
            continue
        sid = plan.pod_sid_dx6(*located) if family == 6 else plan.pod_sid_dx4(*located)
        sids.add(str(sid))
    return sids


def convergence_problems(paths: LabPaths, state: LabState) -> list[str]:
    """What still differs between the lab's objects and the agents' dataplanes."""
    plan = load_config(paths.config)[1]
    problems = []
    views = {}
    for node in state.nodes:
        try:
            views[node.name] = view(node.api_socket)
        except AgentUnavailable as err:
            problems.append(str(err))
    node_ids = {name: seen.node_id for name, seen in views.items()}
    for node in state.nodes:
        seen = views.get(node.name)
        if seen is None:
            continue
        if seen.drift:
            problems.append(f"{node.name}: drift {dict(seen.drift)}")
        for service in state.services:
            for family, ip in ((6, service.cluster_ipv6), (4, service.cluster_ipv4)):
                if ip is None:
                    continue
                want = (
                    expected_sids(plan, state, service, family, node_ids)
                    if service.with_backends or service.host_endpoints
                    else set()
                )
                policy = seen.policy(f"svc/{service.namespace}/{service.name}/v{family}")
                have = (
                    set()
                    if policy is None
                    else {str(s) for sl in policy.segment_lists for s in sl.segments}
                )
                if have != want:
                    problems.append(
                        f"{node.name}: {service.name} v{family} has {sorted(have)}, "
                        f"wants {sorted(want)}"
                    )
        local = {p.name for p in state.pods if p.node == node.name}
        attached = {a.pod.split("/", 1)[1] for a in seen.desired.pods}
        if local - attached:
            problems.append(f"{node.name}: pods not attached yet: {sorted(local - attached)}")
        problems += _untranslated(state, node.name, seen.desired.pods)
    return problems


def _untranslated(state: LabState, node: str, pods: Iterable[PodAttachment]) -> list[str]:
    """Pods of `node` that do not translate yet a Service outside the cluster."""
    wanted = {
        ipaddress.ip_address(ip)
        for s in state.services
        if s.outside_endpoints
        for ip in (s.cluster_ipv6, s.cluster_ipv4)
        if ip
    }
    problems = []
    for attachment in pods:
        missing = wanted - {t.address for t in attachment.translations}
        if missing:
            problems.append(
                f"{node}: {attachment.pod} does not translate {sorted(map(str, missing))} yet"
            )
    return problems


def wait_converged(paths: LabPaths, state: LabState, timeout: float = CONVERGE_TIMEOUT) -> float:
    """Wait until every agent renders the lab's objects and holds them; seconds taken."""
    started = time.monotonic()
    problems: list[str] = []
    while time.monotonic() - started < timeout:
        problems = convergence_problems(paths, state)
        if not problems:
            return time.monotonic() - started
        time.sleep(0.1)
    raise LabError(f"agents did not converge within {timeout:.0f} s: " + "; ".join(problems))
