"""A service's backends changed in a running lab, as Kubernetes would change them: pods
added and then published in the slices, withdrawn from the slices, deleted. `lab scale`
uses it, and so do verify's convergence checks (through `Lab`).

On the lab on real Kubernetes the same changes go through the API server
(`kubernetes_workload`): kubelet makes and deletes the pods, and a pod's labels decide
whether the EndpointSlice controller lists it (published) or not (withdrawn)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from srv6ctl.lab import kubernetes_lab, kubernetes_workload
from srv6ctl.lab.context import LabContext
from srv6ctl.lab.convergence import wait_converged
from srv6ctl.lab.external import route_external
from srv6ctl.lab.kubernetes import ControlPlane
from srv6ctl.lab.netns import LabError
from srv6ctl.lab.parallel import in_parallel
from srv6ctl.lab.state import PodRecord
from srv6ctl.lab.workload import create_pod, delete_pod, pod_record, wait_server, write_service


def add_backends(
    ctx: LabContext, service: str, count: int, *, publish: bool = True
) -> list[PodRecord]:
    """`count` new backend pods on the least loaded nodes, then (unless `publish` is
    False: `publish_slices` does it later) the slices that name them."""
    state = ctx.state
    record = state.service(service)
    added: list[PodRecord] = []
    for _ in range(count):
        load = {n.name: 0 for n in state.nodes}
        for pod in state.pods + added:
            if pod.service == record.label:
                load[pod.node] += 1
        node = state.node(min(load, key=lambda n: (load[n], state.node_names.index(n))))
        taken = {p.name for p in state.pods + added}
        k = next(k for k in range(1, 10_000) if f"{record.label}-{k}" not in taken)
        pod = pod_record(state, f"{record.label}-{k}", node, "backend")
        pod.service = record.label
        added.append(pod)
    plane = _control_plane(ctx)
    try:
        if plane is None:
            in_parallel(lambda pod: create_pod(ctx.paths, state, pod), added)
        else:  # each waited for until its server answers
            in_parallel(
                lambda pod: kubernetes_workload.create_pod(ctx, plane, pod, published=publish),
                added,
            )
    finally:
        state.pods.extend(p for p in added if p.server is not None or p.ipv6)
        ctx.save()
    if plane is None:
        in_parallel(lambda pod: wait_server(ctx.paths, pod), added)
        if publish:
            publish_slices(ctx, record.name)
    return added


def _control_plane(ctx: LabContext) -> ControlPlane | None:
    """The lab's API server, on the lab on real Kubernetes."""
    if ctx.state.options.kubernetes is None:
        return None
    return kubernetes_lab.control_plane(ctx.paths, ctx.state)


def publish_slices(ctx: LabContext, service: str) -> None:
    """Write the slices of the service, and of every service selecting the same pods, as
    the lab's pods say they are (on Kubernetes: label its pods, the controller writes)."""
    label = ctx.state.service(service).label
    plane = _control_plane(ctx)
    if plane is not None:
        kubernetes_workload.relabel(plane, [p for p in ctx.state.pods if p.service == label])
        return
    for record in ctx.state.services_of(label):
        write_service(ctx.paths, ctx.state, record)


def withdraw_backends(ctx: LabContext, service: str, pods: Iterable[PodRecord]) -> None:
    """Drop pods from the service's slices, as the EndpointSlice controller does when a
    pod starts terminating; the pods themselves keep running (and serving)."""
    pods = list(pods)
    for pod in pods:
        pod.service = None
    ctx.save()
    plane = _control_plane(ctx)
    if plane is not None:
        kubernetes_workload.relabel(plane, pods)
        return
    publish_slices(ctx, service)


def delete_pods(ctx: LabContext, pods: Sequence[PodRecord]) -> None:
    state = ctx.state
    plane = _control_plane(ctx)
    if plane is None:
        in_parallel(lambda pod: delete_pod(ctx.paths, state, pod), pods)
    else:
        in_parallel(lambda pod: kubernetes_workload.delete_pod(ctx, plane, pod), pods)
    names = {p.name for p in pods}
    state.pods = [p for p in state.pods if p.name not in names]
    ctx.save()


def scale(ctx: LabContext, service: str, replicas: int) -> tuple[list[str], list[str]]:
    """Make `service` have `replicas` backends; returns (added, removed) pod names.
    Removal is make-before-break: endpoints leave every node's policy first, and only
    then are their pods deleted."""
    state = ctx.state
    record = state.service(service)
    if not record.with_backends:
        raise LabError(f"service {service} is the lab's endpoint-less service")
    if replicas < 0:
        raise LabError("replicas must be >= 0")
    current = state.backends(record.name)
    if replicas > len(current):
        added = add_backends(ctx, record.name, replicas - len(current))
        wait_converged(ctx.paths, state)
        route_external(state)  # nodes may have their first local backend now
        return [p.name for p in added], []
    victims = sorted(current, key=_pod_order)[replicas:]
    if victims:
        withdraw_backends(ctx, record.name, victims)
        wait_converged(ctx.paths, state)
        route_external(state)  # before the pods go: make before break
        delete_pods(ctx, victims)
        wait_converged(ctx.paths, state)
    return [], [p.name for p in victims]


def _pod_order(pod: PodRecord) -> tuple[str, int]:
    """web-2 before web-10: scaling down removes the newest pods first."""
    stem, _, number = pod.name.rpartition("-")
    return (stem, int(number)) if number.isdigit() else (pod.name, 0)
