"""Kubernetes API JSON (as `kubectl get -o json` prints it) into the compiler's input types.

NetworkPolicies are read with the API server's validation and defaulting, so that an
object written by hand (a test fixture, a lab file) means what the cluster would make of
it: policyTypes defaults to Ingress plus Egress when there are egress rules, a port's
protocol to TCP, and an invalid object is refused with `InvalidPolicy` naming the object
and the field. This is the one NetworkPolicy reader: srv6ctl's sources use it too (the
controller's state holds these model objects), with `mask_host_bits` for objects the API
server already accepted. Pods and Namespaces are read for the few fields policies depend
on; a pod's service frontends are not in its object (they come from Services and
EndpointSlices) and are passed in by the caller.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from policies.model import (
    ContainerPort,
    Frontend,
    InvalidPolicy,
    IPBlock,
    IPNetwork,
    Labels,
    LabelSelector,
    Namespace,
    NetworkPolicy,
    Operator,
    Peer,
    Pod,
    PolicyPort,
    PolicyRule,
    PolicyType,
    Protocol,
    Requirement,
    ip,
)

__all__ = [
    "namespace_from_k8s",
    "pod_from_k8s",
    "policies_from_k8s",
    "policy_from_k8s",
    "selector_from_k8s",
]

# IANA_SVC_NAME, as validation.IsValidPortName: 1-15 characters, lower-case letters,
# digits and inner single dashes, at least one letter.
_PORT_NAME = re.compile(r"^(?=.*[a-z])[a-z0-9]([a-z0-9]|-(?=[a-z0-9])){0,14}$")


def _where(obj: Mapping[str, Any], kind: str) -> str:
    meta = obj.get("metadata") or {}
    return f"{kind} {meta.get('namespace', '')}/{meta.get('name', '?')}"


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidPolicy(f"{where}: expected an object, got {value!r}")
    return value


def _list(value: Any, where: str) -> Sequence[Any]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise InvalidPolicy(f"{where}: expected a list, got {value!r}")
    return value


def selector_from_k8s(obj: Any, where: str = "selector") -> LabelSelector:
    """A metav1.LabelSelector; `{}` (or null matchLabels) is the everything-selector."""
    obj = _mapping(obj, where)
    labels = _mapping(obj.get("matchLabels"), f"{where}.matchLabels")
    requirements = []
    for i, expr in enumerate(_list(obj.get("matchExpressions"), f"{where}.matchExpressions")):
        at = f"{where}.matchExpressions[{i}]"
        expr = _mapping(expr, at)
        try:
            operator = Operator(str(expr.get("operator")))
        except ValueError:
            raise InvalidPolicy(
                f"{at}.operator: {expr.get('operator')!r} is not In, NotIn, Exists or DoesNotExist"
            ) from None
        values = frozenset(str(v) for v in _list(expr.get("values"), f"{at}.values"))
        if operator in (Operator.IN, Operator.NOT_IN) and not values:
            raise InvalidPolicy(f"{at}.values: must be non-empty for {operator}")
        if operator in (Operator.EXISTS, Operator.DOES_NOT_EXIST) and values:
            raise InvalidPolicy(f"{at}.values: must be empty for {operator}")
        if not expr.get("key"):
            # The API server refuses it too; an empty key would silently match nothing.
            raise InvalidPolicy(f"{at}.key: required")
        requirements.append(Requirement(str(expr["key"]), operator, values))
    return LabelSelector(Labels({str(k): str(v) for k, v in labels.items()}), tuple(requirements))


def _cidr(value: Any, where: str, mask_host_bits: bool) -> IPNetwork:
    try:
        return ipaddress.ip_network(str(value), strict=not mask_host_bits)
    except ValueError as exc:
        raise InvalidPolicy(f"{where}: {value!r} is not a CIDR ({exc})") from None


def _peer(obj: Any, where: str, mask_host_bits: bool) -> Peer:
    obj = _mapping(obj, where)
    block = obj.get("ipBlock")
    pod_selector = obj.get("podSelector")
    namespace_selector = obj.get("namespaceSelector")
    if block is not None:
        if pod_selector is not None or namespace_selector is not None:
            raise InvalidPolicy(f"{where}: ipBlock may not be combined with selectors")
        block = _mapping(block, f"{where}.ipBlock")
        cidr = _cidr(block.get("cidr"), f"{where}.ipBlock.cidr", mask_host_bits)
        excepted = tuple(
            _cidr(e, f"{where}.ipBlock.except[{i}]", mask_host_bits)
            for i, e in enumerate(_list(block.get("except"), f"{where}.ipBlock.except"))
        )
        return Peer(ip_block=IPBlock(cidr, excepted))
    if pod_selector is None and namespace_selector is None:
        raise InvalidPolicy(f"{where}: must have podSelector, namespaceSelector or ipBlock")
    return Peer(
        pod_selector=None
        if pod_selector is None
        else selector_from_k8s(pod_selector, f"{where}.podSelector"),
        namespace_selector=None
        if namespace_selector is None
        else selector_from_k8s(namespace_selector, f"{where}.namespaceSelector"),
    )


def _protocol(value: Any, where: str) -> Protocol:
    try:
        return Protocol(value if value is not None else "TCP")
    except ValueError:
        raise InvalidPolicy(f"{where}: {value!r} is not TCP, UDP or SCTP") from None


def _port_number(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise InvalidPolicy(f"{where}: {value!r} is not a port number (1-65535)")
    return value


def _policy_port(obj: Any, where: str) -> PolicyPort:
    obj = _mapping(obj, where)
    protocol = _protocol(obj.get("protocol"), f"{where}.protocol")
    port = obj.get("port")
    end_port = obj.get("endPort")
    if isinstance(port, str):
        if not _PORT_NAME.match(port):
            raise InvalidPolicy(f"{where}.port: {port!r} is not a valid port name")
        if end_port is not None:
            raise InvalidPolicy(f"{where}.endPort: may not be set with a named port")
        return PolicyPort(protocol, port)
    if port is None:
        if end_port is not None:
            raise InvalidPolicy(f"{where}.endPort: may not be set without port")
        return PolicyPort(protocol)
    number = _port_number(port, f"{where}.port")
    if end_port is None:
        return PolicyPort(protocol, number)
    end = _port_number(end_port, f"{where}.endPort")
    if end < number:
        raise InvalidPolicy(f"{where}.endPort: {end} is less than port {number}")
    return PolicyPort(protocol, number, end)


def _rule(obj: Any, peers_field: str, where: str, mask_host_bits: bool) -> PolicyRule:
    obj = _mapping(obj, where)
    peers = tuple(
        _peer(p, f"{where}.{peers_field}[{i}]", mask_host_bits)
        for i, p in enumerate(_list(obj.get(peers_field), f"{where}.{peers_field}"))
    )
    ports = tuple(
        _policy_port(p, f"{where}.ports[{i}]")
        for i, p in enumerate(_list(obj.get("ports"), f"{where}.ports"))
    )
    return PolicyRule(peers, ports)


def policy_from_k8s(obj: Mapping[str, Any], *, mask_host_bits: bool = False) -> NetworkPolicy:
    """One networking.k8s.io/v1 NetworkPolicy.

    An ipBlock CIDR with host bits set ("10.0.0.1/8") is refused by default: written by
    hand it is most likely a typo. The API server lets it through, though (it parses
    CIDRs sloppily) and implementations read it as its network, so a reader of objects
    the server already accepted passes `mask_host_bits=True` and gets that network:
    refusing the object there would leave its pods unisolated.
    """
    where = _where(obj, "NetworkPolicy")
    meta = _mapping(obj.get("metadata"), f"{where}: metadata")
    if not meta.get("name") or not meta.get("namespace"):
        raise InvalidPolicy(f"{where}: metadata.name and metadata.namespace are required")
    spec = _mapping(obj.get("spec"), f"{where}: spec")
    ingress = tuple(
        _rule(r, "from", f"{where}: spec.ingress[{i}]", mask_host_bits)
        for i, r in enumerate(_list(spec.get("ingress"), f"{where}: spec.ingress"))
    )
    egress = tuple(
        _rule(r, "to", f"{where}: spec.egress[{i}]", mask_host_bits)
        for i, r in enumerate(_list(spec.get("egress"), f"{where}: spec.egress"))
    )
    types: set[PolicyType] = set()
    for i, value in enumerate(_list(spec.get("policyTypes"), f"{where}: spec.policyTypes")):
        try:
            types.add(PolicyType(value))
        except ValueError:
            raise InvalidPolicy(
                f"{where}: spec.policyTypes[{i}]: {value!r} is not Ingress or Egress"
            ) from None
    if not types:
        # SetDefaults_NetworkPolicySpec: Ingress always, Egress when there are egress rules.
        types = {PolicyType.INGRESS} | ({PolicyType.EGRESS} if egress else set())
    return NetworkPolicy(
        namespace=str(meta["namespace"]),
        name=str(meta["name"]),
        pod_selector=selector_from_k8s(spec.get("podSelector"), f"{where}: spec.podSelector"),
        policy_types=frozenset(types),
        ingress=ingress,
        egress=egress,
    )


def policies_from_k8s(obj: Mapping[str, Any]) -> list[NetworkPolicy]:
    """A NetworkPolicy, or a List of them (`kubectl get networkpolicy -A -o json`)."""
    if "items" in obj:
        items = _list(obj.get("items"), "List.items")
        return [policy_from_k8s(_mapping(item, f"List.items[{i}]")) for i, item in enumerate(items)]
    return [policy_from_k8s(obj)]


def namespace_from_k8s(obj: Mapping[str, Any]) -> Namespace:
    meta = _mapping(obj.get("metadata"), "Namespace metadata")
    labels = _mapping(meta.get("labels"), "Namespace metadata.labels")
    return Namespace(str(meta.get("name", "")), Labels({str(k): str(v) for k, v in labels.items()}))


def pod_from_k8s(obj: Mapping[str, Any], frontends: Iterable[Frontend] = ()) -> Pod:
    """A v1 Pod; a finished one (Succeeded/Failed) keeps no address, since its
    status.podIPs may already be another pod's."""
    where = _where(obj, "Pod")
    meta = _mapping(obj.get("metadata"), f"{where}: metadata")
    spec = _mapping(obj.get("spec"), f"{where}: spec")
    status = _mapping(obj.get("status"), f"{where}: status")
    labels = _mapping(meta.get("labels"), f"{where}: metadata.labels")
    finished = status.get("phase") in ("Succeeded", "Failed")
    addresses = [
        _mapping(a, f"{where}: status.podIPs").get("ip")
        for a in _list(status.get("podIPs"), f"{where}: status.podIPs")
    ]
    if not addresses and status.get("podIP"):
        addresses = [status["podIP"]]
    ports = []
    for c, container in enumerate(_list(spec.get("containers"), f"{where}: spec.containers")):
        container = _mapping(container, f"{where}: spec.containers[{c}]")
        for p, port in enumerate(
            _list(container.get("ports"), f"{where}: spec.containers[{c}].ports")
        ):
            at = f"{where}: spec.containers[{c}].ports[{p}]"
            port = _mapping(port, at)
            ports.append(
                ContainerPort(
                    _port_number(port.get("containerPort"), f"{at}.containerPort"),
                    _protocol(port.get("protocol"), f"{at}.protocol"),
                    str(port.get("name") or ""),
                )
            )
    return Pod(
        namespace=str(meta.get("namespace", "")),
        name=str(meta.get("name", "")),
        labels=Labels({str(k): str(v) for k, v in labels.items()}),
        ips=() if finished else tuple(ip(a) for a in addresses if a),
        container_ports=tuple(ports),
        frontends=tuple(frontends),
        node_name=spec.get("nodeName"),
        host_network=bool(spec.get("hostNetwork", False)),
    )
