"""NetworkPolicy for the agent: its `ClusterState` as a `policies.model.Cluster`, and the
compiled rules of this node's pods, in full or incrementally from the state's dirty keys.

The state already holds NetworkPolicies as `policies.model` objects (one model, one reader:
`policies.kube`), so they go into the snapshot as they are; only the state's own pods,
namespaces and nodes are converted here.

Pure: no I/O. The agent applies the result with `policies.nftables.NftablesBackend` (in
each pod's namespace), or with `--dataplane vpp` as VPP ACLs on each pod's port
(`policies.vpp_acl.translate`, `srv6ctl.dataplane.vpp_acl.VppAclBackend`).

The compiler needs, per pod, the service frontends it serves — `(ClusterIP, protocol,
port, targetPort)` for every service whose EndpointSlices list the pod — for *every* pod
of the cluster, not only local ones: egress to a ClusterIP is judged by its backends.
`frontends_of` derives them from the state as render's `_service_membership` does for
local pods, but keeps every port (also those with `port == targetPort`) and leaves a
named targetPort for the model to resolve on the pod.
"""

from __future__ import annotations

from collections.abc import Iterable

from policies import model
from policies.compiler import compile_node, recompile
from srv6ctl import state as st

ServiceName = tuple[str, str]


def frontends_of(state: st.ClusterState, pod: st.Pod) -> tuple[model.Frontend, ...]:
    """The service frontends `pod` serves, from the slices that list it."""
    return tuple(f for f, _ in _frontends_with_services(state, pod))


def _frontends_with_services(
    state: st.ClusterState, pod: st.Pod
) -> list[tuple[model.Frontend, ServiceName]]:
    found: list[tuple[model.Frontend, ServiceName]] = []
    for eps, _ in state.endpoint_entries(pod):
        if eps.service_name is None:
            continue
        service = state.service(eps.namespace, eps.service_name)
        if service is None or service.headless:
            continue
        if eps.address_type == "IPv6":
            cluster_ip: st.IPAddress | None = service.cluster_ip_v6
        elif eps.address_type == "IPv4":
            cluster_ip = service.cluster_ip_v4
        else:
            cluster_ip = None
        if cluster_ip is None:
            continue
        for port in service.ports:
            if port.protocol not in model.Protocol.__members__:
                continue
            frontend = model.Frontend(
                cluster_ip, model.Protocol(port.protocol), port.port, port.target_port
            )
            found.append((frontend, service.key))
    return found


def namespace_to_model(namespace: st.Namespace) -> model.Namespace:
    return model.Namespace(namespace.name, namespace.labels)


def node_to_model(node: st.Node) -> model.Node:
    return model.Node(node.name, frozenset(node.addresses))


def pod_to_model(pod: st.Pod, frontends: Iterable[model.Frontend] = ()) -> model.Pod | None:
    """None for a finished pod: its addresses may already be another pod's."""
    if pod.finished:
        return None
    return model.Pod(
        namespace=pod.namespace,
        name=pod.name,
        labels=pod.labels,
        ips=pod.ips,
        container_ports=tuple(
            model.ContainerPort(p.port, model.Protocol(p.protocol), p.name)
            for p in pod.container_ports
            if p.protocol in model.Protocol.__members__
        ),
        frontends=tuple(frontends),
        node_name=pod.node_name,
        host_network=pod.host_network,
    )


class PolicyView:
    """This node's compiled rules, kept in step with a `ClusterState`.

    `full(state)` rebuilds the snapshot and compiles every local pod; `update(state,
    dirty)` turns the state's dirty keys into the snapshot's changed keys and recompiles
    only the pods they may affect (None: the pod has nothing left to enforce).
    """

    def __init__(self, node: str) -> None:
        self.node = node
        self.cluster = model.Cluster()
        self.rules: dict[model.PodKey, model.PodRules] = {}
        # Which pods serve which service (for a Service change: old and new backends).
        self._serving: dict[ServiceName, set[model.PodKey]] = {}

    def _pod(self, state: st.ClusterState, pod: st.Pod) -> model.Pod | None:
        found = _frontends_with_services(state, pod)
        key = model.PodKey(pod.namespace, pod.name)
        for _, service in found:
            self._serving.setdefault(service, set()).add(key)
        return pod_to_model(pod, (f for f, _ in found))

    def snapshot(self, state: st.ClusterState) -> model.Cluster:
        self._serving = {}
        pods = (self._pod(state, p) for p in state.pods.values())
        return model.Cluster.of(
            (namespace_to_model(n) for n in state.namespaces.values()),
            (p for p in pods if p is not None),
            state.network_policies.values(),
            (node_to_model(n) for n in state.nodes.values()),
        )

    def full(self, state: st.ClusterState) -> dict[model.PodKey, model.PodRules]:
        self.cluster = self.snapshot(state)
        self.rules = compile_node(self.cluster, self.node)
        return dict(self.rules)

    def update(
        self, state: st.ClusterState, dirty: Iterable[st.DirtyKey]
    ) -> dict[model.PodKey, model.PodRules | None]:
        before = self.cluster
        upsert: list[model.Namespace | model.Pod | model.NetworkPolicy | model.Node] = []
        delete: list[model.ChangedKey] = []
        pods: set[tuple[str, str]] = set()
        for key in dirty:
            if isinstance(key, st.PodKey):
                pods.add((key.namespace, key.name))
            elif isinstance(key, st.ServiceKey):
                service = (key.namespace, key.name)
                pods.update((k.namespace, k.name) for k in self._serving.pop(service, ()))
                for eps in state.slices_of_service(*service):
                    for endpoint in eps.endpoints:
                        if endpoint.target is not None:
                            pods.add(endpoint.target.key)
                        else:
                            pods.update(
                                p.key
                                for a in endpoint.addresses
                                for p in state.pods.values()
                                if a in p.ips
                            )
            elif isinstance(key, st.NamespaceKey):
                found = state.namespaces.get(key.name)
                _change(
                    before.namespaces.get(key.name),
                    None if found is None else namespace_to_model(found),
                    model.NamespaceKey(key.name),
                    upsert,
                    delete,
                )
            elif isinstance(key, st.NetworkPolicyKey):
                policy_key = model.PolicyKey(key.namespace, key.name)
                _change(
                    before.policies.get(policy_key),
                    state.network_policies.get((key.namespace, key.name)),
                    policy_key,
                    upsert,
                    delete,
                )
            elif isinstance(key, st.NodeKey):
                node = state.node(key.name)
                _change(
                    before.nodes.get(key.name),
                    None if node is None else node_to_model(node),
                    model.NodeKey(key.name),
                    upsert,
                    delete,
                )
        for namespace, name in pods:
            pod = state.pod(namespace, name)
            pod_key = model.PodKey(namespace, name)
            new = None if pod is None else self._pod(state, pod)
            _change(before.pods.get(pod_key), new, pod_key, upsert, delete)
        if not upsert and not delete:
            return {}
        after, changed = before.with_(upsert, delete)
        result = recompile(before, after, changed, self.node)
        self.cluster = after
        for pod_key, rules in result.items():
            if rules is None:
                self.rules.pop(pod_key, None)
            else:
                self.rules[pod_key] = rules
        return result


def _change(
    old: object,
    new: model.Namespace | model.Pod | model.NetworkPolicy | model.Node | None,
    changed_key: model.ChangedKey,
    upsert: list[model.Namespace | model.Pod | model.NetworkPolicy | model.Node],
    delete: list[model.ChangedKey],
) -> None:
    if new is None:
        if old is not None:
            delete.append(changed_key)
    elif new != old:
        upsert.append(new)
