"""Kubernetes JSON → `srv6ctl.state` objects: the one converter every source shares.

Input is an object exactly as the API serves it (and `kubectl get -o json` prints it):
camelCase keys, absent fields left out, `null` where the API says so. Items of a list
response carry no `kind`, so the kind is always passed in by the caller.

Defaults follow the API's, so that a hand-written lab file and a server-defaulted object
mean the same: a Service's targetPort defaults to its port, sessionAffinity to None,
internalTrafficPolicy to Cluster; an endpoint's ready/serving conditions to true and
terminating to false (as kube-proxy reads them). Malformed values raise `ConversionError`
naming the object and the field.

NetworkPolicies are read by `policies.kube`, the compiler's own reader (the state holds its
model), under this module's conventions: a missing namespace is "default" and a refusal
is a `ConversionError`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from policies.kube import policy_from_k8s
from policies.model import InvalidPolicy
from srv6ctl.state import (
    BEHAVIOURS_ANNOTATION,
    CLUSTER_SCOPED,
    HEADLESS_LABEL,
    POD_INTERFACE_ANNOTATION,
    SERVICE_NAME_LABEL,
    ZONE_LABEL,
    ClusterObject,
    ContainerPort,
    Endpoint,
    EndpointPort,
    EndpointSlice,
    IPAddress,
    IPNetwork,
    Kind,
    Labels,
    Namespace,
    NetworkPolicy,
    Node,
    Pod,
    PodRef,
    Service,
    ServicePort,
)

JSON = Mapping[str, Any]

# apiVersion/kind pairs a source may hand over (lab files say which one they hold).
API_VERSIONS: Mapping[Kind, str] = {
    Kind.NODE: "v1",
    Kind.POD: "v1",
    Kind.SERVICE: "v1",
    Kind.NAMESPACE: "v1",
    Kind.ENDPOINT_SLICE: "discovery.k8s.io/v1",
    Kind.NETWORK_POLICY: "networking.k8s.io/v1",
}


class ConversionError(ValueError):
    """An object the API would not have served; the message names object and field."""


class _Reader:
    """Field access with errors that say which object and which field was wrong."""

    def __init__(self, kind: Kind, obj: JSON) -> None:
        if not isinstance(obj, Mapping):
            raise ConversionError(f"{kind}: expected a JSON object, got {type(obj).__name__}")
        self.kind = kind
        meta = obj.get("metadata") or {}
        self.name = str(meta.get("name") or "")
        self.namespace = "" if kind in CLUSTER_SCOPED else str(meta.get("namespace") or "default")
        if not self.name:
            raise ConversionError(f"{kind}: metadata.name is missing")

    def error(self, path: str, problem: str) -> ConversionError:
        where = f"{self.namespace}/{self.name}" if self.namespace else self.name
        return ConversionError(f"{self.kind} {where}: {path} {problem}")

    def ip(self, path: str, value: Any) -> IPAddress:
        try:
            return ipaddress.ip_address(str(value).strip())
        except ValueError:
            raise self.error(path, f"{value!r} is not an IP address") from None

    def network(self, path: str, value: Any) -> IPNetwork:
        # The API server accepts spaces around a source range (kube-proxy trims them).
        try:
            return ipaddress.ip_network(str(value).strip(), strict=False)
        except ValueError:
            raise self.error(path, f"{value!r} is not a CIDR") from None

    def port(self, path: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
            raise self.error(path, f"{value!r} is not a port number")
        return value

    def timeout(self, path: str, value: Any) -> int:
        # sessionAffinityConfig.clientIP.timeoutSeconds: the API server admits 1..86400.
        if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= 86400:
            raise self.error(path, f"{value!r} is not a number of seconds in 1..86400")
        return value

    def int_or_name(self, path: str, value: Any) -> int | str:
        # IntOrString: a JSON number is a port, a string is a port *name* (API validation
        # requires names to contain a letter, so "8080" as a string is still a name).
        if isinstance(value, str):
            return value
        return self.port(path, value)

    def items(self, obj: JSON, key: str) -> Sequence[JSON]:
        value = obj.get(key)
        if value is None:
            return ()
        if not isinstance(value, list):
            raise self.error(key, f"must be a list, not {type(value).__name__}")
        return value


def _labels(obj: JSON) -> Labels:
    return Labels(
        {str(k): str(v) for k, v in ((obj.get("metadata") or {}).get("labels") or {}).items()}
    )


def _uid(obj: JSON) -> str:
    return str((obj.get("metadata") or {}).get("uid") or "")


# --- per kind -------------------------------------------------------------------------


def node_from_json(obj: JSON) -> Node:
    r = _Reader(Kind.NODE, obj)
    internal_v6: ipaddress.IPv6Address | None = None
    internal_v4: ipaddress.IPv4Address | None = None
    addresses: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    for i, entry in enumerate(r.items(obj.get("status") or {}, "addresses")):
        kind = entry.get("type")
        if kind not in ("InternalIP", "ExternalIP"):
            continue  # Hostname, InternalDNS, ExternalDNS: names, not addresses
        if kind == "ExternalIP":
            # Node ports and the node-address checks use these; one that is no address is
            # left out, not the whole Node.
            try:
                external = ipaddress.ip_address(str(entry.get("address")).strip())
            except ValueError:
                continue
            if external not in addresses:
                addresses.append(external)
            continue
        address = r.ip(f"status.addresses[{i}].address", entry.get("address"))
        if address not in addresses:
            addresses.append(address)
        # The first of each family, as the kubelet orders them (primary first).
        if isinstance(address, ipaddress.IPv6Address) and internal_v6 is None:
            internal_v6 = address
        elif isinstance(address, ipaddress.IPv4Address) and internal_v4 is None:
            internal_v4 = address
    labels = _labels(obj)
    annotations = (obj.get("metadata") or {}).get("annotations") or {}
    behaviours = str(annotations.get(BEHAVIOURS_ANNOTATION) or "")
    return Node(
        name=r.name,
        uid=_uid(obj),
        internal_ipv6=internal_v6,
        internal_ipv4=internal_v4,
        zone=labels.get(ZONE_LABEL),
        labels=labels,
        sr_behaviours=frozenset(b.strip() for b in behaviours.split(",") if b.strip()),
        all_addresses=tuple(addresses),
    )


def pod_from_json(obj: JSON) -> Pod:
    r = _Reader(Kind.POD, obj)
    spec = obj.get("spec") or {}
    annotations = (obj.get("metadata") or {}).get("annotations") or {}
    status = obj.get("status") or {}
    ips: list[IPAddress] = []
    for i, entry in enumerate(r.items(status, "podIPs")):
        ips.append(r.ip(f"status.podIPs[{i}].ip", entry.get("ip")))
    if not ips and status.get("podIP"):
        ips.append(r.ip("status.podIP", status["podIP"]))
    ready = any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in r.items(status, "conditions")
    )
    ports: list[ContainerPort] = []
    containers = list(r.items(spec, "containers"))
    # Sidecars (restartable init containers) serve traffic like any container.
    containers += [c for c in r.items(spec, "initContainers") if c.get("restartPolicy") == "Always"]
    for container in containers:
        for i, port in enumerate(r.items(container, "ports")):
            path = f"container {container.get('name')!r} ports[{i}].containerPort"
            ports.append(
                ContainerPort(
                    port=r.port(path, port.get("containerPort")),
                    protocol=str(port.get("protocol") or "TCP"),
                    name=str(port.get("name") or ""),
                )
            )
    return Pod(
        uid=_uid(obj),
        namespace=r.namespace,
        name=r.name,
        node_name=spec.get("nodeName") or None,
        ips=tuple(ips),
        labels=_labels(obj),
        ready=ready,
        host_network=bool(spec.get("hostNetwork")),
        container_ports=tuple(ports),
        phase=str(status.get("phase") or "Pending"),
        terminating=bool((obj.get("metadata") or {}).get("deletionTimestamp")),
        interface_type=str(annotations.get(POD_INTERFACE_ANNOTATION) or "").strip().lower(),
    )


def service_from_json(obj: JSON) -> Service:
    r = _Reader(Kind.SERVICE, obj)
    spec = obj.get("spec") or {}
    raw_ips = list(spec.get("clusterIPs") or ([spec["clusterIP"]] if spec.get("clusterIP") else []))
    headless = any(str(a) == "None" for a in raw_ips)
    cluster_ips = (
        ()
        if headless
        else tuple(r.ip(f"spec.clusterIPs[{i}]", a) for i, a in enumerate(raw_ips) if a)
    )
    ports = []
    for i, port in enumerate(r.items(spec, "ports")):
        number = r.port(f"spec.ports[{i}].port", port.get("port"))
        target = port.get("targetPort")
        ports.append(
            ServicePort(
                port=number,
                protocol=str(port.get("protocol") or "TCP"),
                name=str(port.get("name") or ""),
                target_port=number
                if target is None
                else r.int_or_name(f"spec.ports[{i}].targetPort", target),
                node_port=0
                if not port.get("nodePort")
                else r.port(f"spec.ports[{i}].nodePort", port.get("nodePort")),
            )
        )
    external_ips = tuple(
        r.ip(f"spec.externalIPs[{i}]", a) for i, a in enumerate(r.items(spec, "externalIPs"))
    )
    status = obj.get("status") or {}
    ingress = r.items(status.get("loadBalancer") or {}, "ingress")
    load_balancer_ips = tuple(
        r.ip(f"status.loadBalancer.ingress[{i}].ip", entry["ip"])
        for i, entry in enumerate(ingress)
        if entry.get("ip") and (entry.get("ipMode") or "VIP") == "VIP"
    )
    source_ranges = tuple(
        r.network(f"spec.loadBalancerSourceRanges[{i}]", cidr)
        for i, cidr in enumerate(r.items(spec, "loadBalancerSourceRanges"))
    )
    health_port = spec.get("healthCheckNodePort")
    affinity_timeout = ((spec.get("sessionAffinityConfig") or {}).get("clientIP") or {}).get(
        "timeoutSeconds"
    )
    return Service(
        uid=_uid(obj),
        namespace=r.namespace,
        name=r.name,
        cluster_ips=cluster_ips,
        ports=tuple(ports),
        type=str(spec.get("type") or "ClusterIP"),
        session_affinity=str(spec.get("sessionAffinity") or "None"),
        session_affinity_timeout=10800
        if affinity_timeout is None
        else r.timeout("spec.sessionAffinityConfig.clientIP.timeoutSeconds", affinity_timeout),
        internal_traffic_policy=str(spec.get("internalTrafficPolicy") or "Cluster"),
        traffic_distribution=spec.get("trafficDistribution") or None,
        headless=headless,
        labels=_labels(obj),
        external_ips=external_ips,
        load_balancer_ips=load_balancer_ips,
        load_balancer_source_ranges=source_ranges,
        external_traffic_policy=str(spec.get("externalTrafficPolicy") or "Cluster"),
        health_check_node_port=0
        if not health_port
        else r.port("spec.healthCheckNodePort", health_port),
    )


def endpoint_slice_from_json(obj: JSON) -> EndpointSlice:
    r = _Reader(Kind.ENDPOINT_SLICE, obj)
    address_type = str(obj.get("addressType") or "")
    if not address_type:
        raise r.error("addressType", "is missing")
    endpoints = []
    for i, entry in enumerate(r.items(obj, "endpoints")):
        addresses: tuple[IPAddress, ...] = ()
        if address_type in ("IPv4", "IPv6"):
            addresses = tuple(
                r.ip(f"endpoints[{i}].addresses[{j}]", a)
                for j, a in enumerate(entry.get("addresses") or ())
            )
        conditions = entry.get("conditions") or {}
        ref = entry.get("targetRef") or {}
        target = None
        if ref.get("kind") == "Pod" and ref.get("name"):
            target = PodRef(
                namespace=str(ref.get("namespace") or r.namespace),
                name=str(ref["name"]),
                uid=str(ref.get("uid") or ""),
            )
        hints = entry.get("hints") or {}
        endpoints.append(
            Endpoint(
                addresses=addresses,
                ready=conditions.get("ready") is not False,
                serving=conditions.get("serving") is not False,
                terminating=conditions.get("terminating") is True,
                node_name=entry.get("nodeName") or None,
                zone=entry.get("zone") or None,
                target=target,
                hints_for_zones=frozenset(str(z.get("name")) for z in hints.get("forZones") or ()),
                hints_for_nodes=frozenset(str(n.get("name")) for n in hints.get("forNodes") or ()),
            )
        )
    ports = [
        EndpointPort(
            port=None if p.get("port") is None else r.port(f"ports[{i}].port", p.get("port")),
            protocol=str(p.get("protocol") or "TCP"),
            name=str(p.get("name") or ""),
        )
        for i, p in enumerate(r.items(obj, "ports"))
    ]
    labels = _labels(obj)
    return EndpointSlice(
        namespace=r.namespace,
        name=r.name,
        # A slice labelled headless serves no Service's proxy: kube-proxy's informer
        # selects `!service.kubernetes.io/headless`, so such a slice is as good as gone
        # (and labelling one takes its endpoints out of the Service at once).
        service_name=None if HEADLESS_LABEL in labels else labels.get(SERVICE_NAME_LABEL),
        address_type=address_type,
        endpoints=tuple(endpoints),
        ports=tuple(ports),
        uid=_uid(obj),
    )


def namespace_from_json(obj: JSON) -> Namespace:
    r = _Reader(Kind.NAMESPACE, obj)
    return Namespace(name=r.name, uid=_uid(obj), labels=_labels(obj))


def network_policy_from_json(obj: JSON) -> NetworkPolicy:
    r = _Reader(Kind.NETWORK_POLICY, obj)
    # policies.kube wants the namespace the API server always sets; a lab file may leave
    # it out and mean "default", as everywhere in this module.
    metadata = {**(obj.get("metadata") or {}), "namespace": r.namespace}
    try:
        # Sources hand over what the API server accepted: host bits in an ipBlock CIDR
        # are its network there (refusing the object would leave its pods unisolated).
        return policy_from_k8s({**obj, "metadata": metadata}, mask_host_bits=True)
    except InvalidPolicy as err:
        # Its message already names the object and the field, as a ConversionError does.
        raise ConversionError(str(err)) from None


CONVERTERS: Mapping[Kind, Callable[[JSON], ClusterObject]] = {
    Kind.NODE: node_from_json,
    Kind.POD: pod_from_json,
    Kind.SERVICE: service_from_json,
    Kind.ENDPOINT_SLICE: endpoint_slice_from_json,
    Kind.NAMESPACE: namespace_from_json,
    Kind.NETWORK_POLICY: network_policy_from_json,
}


def from_json(kind: Kind, obj: JSON) -> ClusterObject:
    """Convert one API object of `kind` (list items carry no kind of their own)."""
    return CONVERTERS[kind](obj)


def object_key(kind: Kind, obj: JSON) -> tuple[str, str]:
    """(namespace, name) of an API object; namespace "" for cluster-scoped kinds."""
    r = _Reader(kind, obj)
    return (r.namespace, r.name)
