"""The lab's NetworkPolicies: validated, then written where the agents read objects.

`srv6ctl lab policy apply FILE` plays `kubectl apply` against the lab's "API server", its
objects directory: every document is checked first — strict field names, the API
server's validation and defaulting (`policies.kube`), and the agents' own converter —
and only when all of them pass is each policy written, one file per policy
(`objects/policies/<namespace>/<name>.yaml`) in one rename, so an agent never reads half
of one and a bad file never reaches them (the lab source would keep the previous objects
and log the error, which a user would not see).

`lab_cluster` is the lab as the policy compiler sees it (its pods with their labels,
ports and service frontends, its namespaces and the policies present): `lab policy list`
and `srv6ctl verify`'s policy group judge expected verdicts on it.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import re
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from policies import model
from policies.kube import namespace_from_k8s, pod_from_k8s, policy_from_k8s
from srv6ctl.lab import objects
from srv6ctl.lab.state import LabPaths, LabState, remove_file, write_atomically
from srv6ctl.sources.convert import ConversionError, from_json
from srv6ctl.state import Kind

API_VERSION = "networking.k8s.io/v1"
KIND = "NetworkPolicy"
POLICY_DIR = "policies"  # under the objects directory
DEFAULT_NAMESPACE = "default"  # kubectl's, for objects that name none
SUFFIXES = (".yaml", ".yml", ".json")

# Field names the API knows, per place in the object: `kubectl apply` refuses unknown
# fields (strict field validation), and so do we — `ingres:` would otherwise silently
# mean "no ingress rules", i.e. deny all.
_FIELDS: dict[str, frozenset[str]] = {
    "object": frozenset({"apiVersion", "kind", "metadata", "spec", "status"}),
    "spec": frozenset({"podSelector", "policyTypes", "ingress", "egress"}),
    "ingress": frozenset({"from", "ports"}),
    "egress": frozenset({"to", "ports"}),
    "peer": frozenset({"podSelector", "namespaceSelector", "ipBlock"}),
    "ipBlock": frozenset({"cidr", "except"}),
    "port": frozenset({"protocol", "port", "endPort"}),
    "selector": frozenset({"matchLabels", "matchExpressions"}),
    "requirement": frozenset({"key", "operator", "values"}),
}
# Metadata kept in the written object; the rest (uid, resourceVersion, managedFields, ...)
# is the API server's and would only make two applies of one policy differ.
_KEPT_METADATA = ("name", "namespace", "labels", "annotations")
# DNS-1123: a policy's name is a subdomain, a namespace a label. Both become file names.
_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


class PolicyError(ValueError):
    """A policy file, or a document in it, the lab refuses; the message names the field."""


@dataclass(frozen=True)
class LabPolicy:
    """One NetworkPolicy: the object as it is (or will be) written, and what it means."""

    document: Mapping[str, Any]
    policy: model.NetworkPolicy
    path: Path | None = None  # where it is stored (policies read from the lab)

    @property
    def namespace(self) -> str:
        return self.policy.namespace

    @property
    def name(self) -> str:
        return self.policy.name

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def text(self) -> str:
        return yaml.safe_dump(dict(self.document), sort_keys=False)


# --- parsing and validation (pure) ------------------------------------------------------------


def parse_policies(text: str, source: str = "<input>") -> list[LabPolicy]:
    """Every NetworkPolicy in `text` (YAML or JSON; several documents, a `List` or a
    `NetworkPolicyList`), validated; PolicyError names the document and the field."""
    try:
        documents = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as err:
        raise PolicyError(f"{source}: not YAML or JSON: {err}") from None
    if not documents:
        raise PolicyError(f"{source}: no NetworkPolicy in it (the file is empty)")
    found: list[LabPolicy] = []
    for index, document in enumerate(documents, 1):
        where = f"{source}: document {index}" if len(documents) > 1 else source
        found += _policies_of(document, where)
    seen: set[str] = set()
    for policy in found:
        if policy.key in seen:
            raise PolicyError(f"{source}: NetworkPolicy {policy.key} is defined twice")
        seen.add(policy.key)
    return found


def _policies_of(document: Any, where: str) -> list[LabPolicy]:
    if not isinstance(document, Mapping):
        raise PolicyError(f"{where}: expected a Kubernetes object, got {type(document).__name__}")
    kind = document.get("kind")
    if kind in ("List", f"{KIND}List"):
        items = document.get("items")
        if not isinstance(items, list):
            raise PolicyError(f"{where}: {kind}.items: expected a list of NetworkPolicies")
        out = []
        for i, item in enumerate(items):
            if isinstance(item, Mapping) and kind != "List":
                # A typed list's items carry neither kind nor apiVersion.
                item = {"apiVersion": API_VERSION, "kind": KIND, **item}
            out.append(validate(item, f"{where}: items[{i}]"))
        return out
    return [validate(document, where)]


def validate(obj: Any, where: str = "<input>") -> LabPolicy:
    """One NetworkPolicy object, as `kubectl apply` would have the API server take it: a
    missing namespace is `default`; anything the API would refuse raises PolicyError."""
    if not isinstance(obj, Mapping):
        raise PolicyError(f"{where}: expected a NetworkPolicy object, got {type(obj).__name__}")
    kind = obj.get("kind")
    if kind != KIND:
        raise PolicyError(
            f"{where}: kind: {kind!r} is not {KIND} "
            "(`lab policy apply` takes NetworkPolicies, or a List of them)"
        )
    if obj.get("apiVersion") != API_VERSION:
        raise PolicyError(f"{where}: apiVersion: {obj.get('apiVersion')!r} is not {API_VERSION}")
    metadata = obj.get("metadata")
    if not isinstance(metadata, Mapping):
        raise PolicyError(f"{where}: metadata: required, with a name")
    name = metadata.get("name")
    namespace = metadata.get("namespace", DEFAULT_NAMESPACE)
    if not isinstance(name, str) or not _SUBDOMAIN.match(name) or len(name) > 253:
        raise PolicyError(
            f"{where}: metadata.name: {name!r} is not a valid name "
            "(lower-case letters, digits, '-' and '.', at most 253)"
        )
    if not isinstance(namespace, str) or not _LABEL.match(namespace) or len(namespace) > 63:
        raise PolicyError(
            f"{where}: metadata.namespace: {namespace!r} is not a valid namespace "
            "(lower-case letters, digits and '-', at most 63)"
        )
    where = f"{where}: NetworkPolicy {namespace}/{name}"
    _check_fields(obj, "object", where, "")
    spec = obj.get("spec")
    if not isinstance(spec, Mapping):
        raise PolicyError(f"{where}: spec: required (at least `podSelector: {{}}`)")
    _check_spec(spec, where)
    kept = {k: metadata[k] for k in _KEPT_METADATA if k in metadata}
    document = {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {**kept, "namespace": namespace},
        "spec": _plain(spec),
    }
    try:
        policy = policy_from_k8s(document)
    except model.InvalidPolicy as err:
        raise PolicyError(_reword(str(err), where)) from None
    # The agents read it with srv6ctl's converter: what it refuses would never reach them.
    try:
        from_json(Kind.NETWORK_POLICY, document)
    except (ConversionError, ValueError) as err:
        raise PolicyError(f"{where}: {err}") from None
    return LabPolicy(document, policy)


def _reword(message: str, where: str) -> str:
    """policies.kube names the object itself ("NetworkPolicy ns/name: spec..."): say it once."""
    _, sep, rest = message.partition(": ")
    return f"{where}: {rest}" if sep and message.startswith(f"{KIND} ") else f"{where}: {message}"


def _plain(value: Any) -> Any:
    """YAML as JSON would have it (so a written policy reads back as it was given)."""
    return json.loads(json.dumps(value, default=str))


def _check_fields(obj: Mapping[str, Any], kind: str, where: str, path: str) -> None:
    known = _FIELDS[kind]
    for key in obj:
        if key not in known:
            at = f"{path}.{key}" if path else str(key)
            close = difflib.get_close_matches(str(key), sorted(known), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise PolicyError(f"{where}: {at}: unknown field{hint}")


def _check_spec(spec: Mapping[str, Any], where: str) -> None:
    _check_fields(spec, "spec", where, "spec")
    _check_selector(spec.get("podSelector"), where, "spec.podSelector")
    for direction, peers in (("ingress", "from"), ("egress", "to")):
        rules = spec.get(direction)
        for i, rule in enumerate(rules if isinstance(rules, list) else ()):
            at = f"spec.{direction}[{i}]"
            if not isinstance(rule, Mapping):
                continue  # policies.kube names it
            _check_fields(rule, direction, where, at)
            for j, peer in enumerate(_items(rule.get(peers))):
                peer_at = f"{at}.{peers}[{j}]"
                _check_fields(peer, "peer", where, peer_at)
                _check_selector(peer.get("podSelector"), where, f"{peer_at}.podSelector")
                _check_selector(
                    peer.get("namespaceSelector"), where, f"{peer_at}.namespaceSelector"
                )
                block = peer.get("ipBlock")
                if isinstance(block, Mapping):
                    _check_fields(block, "ipBlock", where, f"{peer_at}.ipBlock")
            for j, port in enumerate(_items(rule.get("ports"))):
                _check_fields(port, "port", where, f"{at}.ports[{j}]")


def _check_selector(selector: Any, where: str, path: str) -> None:
    if not isinstance(selector, Mapping):
        return
    _check_fields(selector, "selector", where, path)
    for i, requirement in enumerate(_items(selector.get("matchExpressions"))):
        _check_fields(requirement, "requirement", where, f"{path}.matchExpressions[{i}]")


def _items(value: Any) -> Iterator[Mapping[str, Any]]:
    for item in value if isinstance(value, list) else ():
        if isinstance(item, Mapping):
            yield item


def policy_key(text: str) -> tuple[str, str]:
    """`NAME` or `NAMESPACE/NAME` → (namespace, name)."""
    namespace, _, name = text.rpartition("/")
    return (namespace or DEFAULT_NAMESPACE, name)


def read_policy_file(path: str) -> list[LabPolicy]:
    """The policies of a file (`-`: standard input)."""
    if path == "-":
        return parse_policies(sys.stdin.read(), "<stdin>")
    try:
        text = Path(path).read_text()
    except OSError as err:
        raise PolicyError(f"cannot read {path}: {err.strerror or err}") from None
    return parse_policies(text, path)


def keys_of(targets: Iterable[str]) -> list[tuple[str, str]]:
    """What `lab policy delete NAME|FILE ...` names: a file's policies, or a policy."""
    keys: list[tuple[str, str]] = []
    for target in targets:
        if Path(target).is_file():
            keys += [(p.namespace, p.name) for p in read_policy_file(target)]
        else:
            keys.append(policy_key(target))
    return list(dict.fromkeys(keys))


# --- the lab's objects directory ---------------------------------------------------------------


class PolicyStore:
    """The policies of one lab: those `apply` wrote (one file each, under
    `objects/policies/`) and any other NetworkPolicy a user dropped in the objects
    directory (listed and judged, but not deleted: its file may hold other objects)."""

    def __init__(self, paths: LabPaths) -> None:
        self.paths = paths

    @property
    def directory(self) -> Path:
        return self.paths.objects / POLICY_DIR

    def path_of(self, namespace: str, name: str) -> Path:
        return self.directory / namespace / f"{name}.yaml"

    def namespaces(self) -> list[model.Namespace]:
        """The lab's Namespace objects (their labels are what namespaceSelectors match)."""
        return namespaces_present(self.paths)

    def ensure_namespaces(self, state: LabState) -> bool:
        """Write the lab's Namespace objects if it has none; True when written."""
        return ensure_namespaces(self.paths, state)

    def present(self) -> list[LabPolicy]:
        """Every NetworkPolicy in the objects directory, as the agents read them: files
        that do not parse are skipped here (the agents keep their previous objects)."""
        found: dict[str, LabPolicy] = {}
        for path, document in _documents(self.paths.objects):
            for item in _policy_objects(document):
                try:
                    policy = validate(item, str(path))
                except PolicyError:
                    continue
                found[policy.key] = LabPolicy(policy.document, policy.policy, path)
        return sorted(found.values(), key=lambda p: (p.namespace, p.name))

    def apply(self, policies: Iterable[LabPolicy]) -> list[tuple[LabPolicy, str]]:
        """Write each policy (already validated); returns each with what happened:
        created, configured (changed) or unchanged — as `kubectl apply` says."""
        policies = list(policies)
        elsewhere = {p.key: p.path for p in self.present()}
        for policy in policies:  # all refused before any is written
            other = elsewhere.get(policy.key)
            if other is not None and other != self.path_of(policy.namespace, policy.name):
                raise PolicyError(
                    f"NetworkPolicy {policy.key} is already defined in {other}, which "
                    "`lab policy` does not manage: edit that file instead"
                )
        done = []
        for policy in policies:
            path = self.path_of(policy.namespace, policy.name)
            text = policy.text()
            try:
                before: str | None = path.read_text()
            except FileNotFoundError:
                before = None
            if before == text:
                done.append((policy, "unchanged"))
                continue
            write_atomically(path, text)
            done.append((policy, "created" if before is None else "configured"))
        return done

    def delete(self, keys: Iterable[tuple[str, str]]) -> list[str]:
        """Remove the named policies (namespace, name); all must exist here, or nothing is
        removed. Returns their keys."""
        present = {(p.namespace, p.name): p for p in self.present()}
        chosen = []
        for namespace, name in keys:
            policy = present.get((namespace, name))
            if policy is None:
                known = ", ".join(p.key for p in present.values()) or "none"
                raise PolicyError(f"no NetworkPolicy {namespace}/{name} in the lab ({known})")
            if policy.path != self.path_of(namespace, name):
                raise PolicyError(
                    f"NetworkPolicy {policy.key} is defined in {policy.path}, which "
                    "`lab policy` does not manage: remove it from that file"
                )
            chosen.append(policy)
        for policy in chosen:
            assert policy.path is not None
            remove_file(policy.path)
            _remove_empty(policy.path.parent, self.directory)
        return [p.key for p in chosen]

    def delete_all(self) -> list[str]:
        mine = [p for p in self.present() if p.path == self.path_of(p.namespace, p.name)]
        return self.delete((p.namespace, p.name) for p in mine)


def _policy_objects(document: Any) -> Iterator[Mapping[str, Any]]:
    """The NetworkPolicies among a document's objects (lists unpacked, others skipped)."""
    if not isinstance(document, Mapping):
        return
    kind = document.get("kind")
    if kind == KIND:
        yield document
    elif kind in ("List", f"{KIND}List"):
        for item in _items(document.get("items")):
            if kind != "List":
                item = {"apiVersion": API_VERSION, "kind": KIND, **item}
            if item.get("kind") == KIND:
                yield item


def _remove_empty(directory: Path, stop: Path) -> None:
    while directory != stop and stop in directory.parents:
        try:
            directory.rmdir()
        except OSError:
            return
        directory = directory.parent


def _documents(directory: Path) -> Iterator[tuple[Path, Any]]:
    """Every document of every object file the lab source would read."""
    if not directory.is_dir():
        return
    for path in sorted(directory.rglob("*")):
        relative = path.relative_to(directory).parts
        if (
            path.suffix not in SUFFIXES
            or any(part.startswith(".") for part in relative)
            or path.name.endswith("~")
            or not path.is_file()
        ):
            continue
        try:
            text = path.read_text()
            documents = (
                [json.loads(text)]
                if path.suffix == ".json"
                else [d for d in yaml.safe_load_all(text) if d is not None]
            )
        except (OSError, ValueError, yaml.YAMLError):
            continue
        for document in documents:
            yield path, document


def namespaces_present(paths: LabPaths) -> list[model.Namespace]:
    """The Namespace objects of the lab (their labels are what namespaceSelectors match)."""
    found = []
    for _, document in _documents(paths.objects):
        if isinstance(document, Mapping) and document.get("kind") == "Namespace":
            found.append(namespace_from_k8s(document))
    return found


def ensure_namespaces(paths: LabPaths, state: LabState) -> bool:
    """Write the lab's Namespace objects if it has none (a lab built before it wrote them);
    True when written."""
    path = paths.objects / objects.NAMESPACES_FILE
    if path.exists():
        return False
    write_atomically(path, objects.namespace_file(state))
    return True


# --- the lab as the compiler sees it (pure) -----------------------------------------------------


def frontends_of(state: LabState) -> dict[tuple[str, str], list[model.Frontend]]:
    """Per backend pod (namespace, name): the (ClusterIP, protocol, port, targetPort) it
    serves, from the lab's services and their backends (what its slices say)."""
    out: dict[tuple[str, str], list[model.Frontend]] = {}
    for service in state.services:
        if not service.with_backends:
            continue
        cluster_ips = [ip for ip in (service.cluster_ipv6, service.cluster_ipv4) if ip]
        for pod in state.backends(service.name):
            if pod.namespace != service.namespace:
                continue
            families = {ipaddress.ip_address(a).version for a in (pod.ipv6, pod.ipv4) if a}
            for cluster_ip in cluster_ips:
                if ipaddress.ip_address(cluster_ip).version not in families:
                    continue  # a slice of that family lists no address of this pod
                for _, port, target, protocol in objects.SERVICE_PORTS:
                    frontend = model.Frontend(
                        model.ip(cluster_ip), model.Protocol(protocol), port, target
                    )
                    out.setdefault((pod.namespace, pod.name), []).append(frontend)
    return out


def lab_cluster(
    state: LabState,
    policies: Sequence[LabPolicy | model.NetworkPolicy],
    namespaces: Iterable[model.Namespace] = (),
) -> model.Cluster:
    """The lab's pods (read from the very objects the agents read), namespaces, nodes
    and `policies`, as one compiler snapshot."""
    frontends = frontends_of(state)
    pods = [
        pod_from_k8s(objects.pod_object(p), frontends.get((p.namespace, p.name), ()))
        for p in state.pods
    ]
    nodes = [
        model.Node(n.name, frozenset(model.ip(a) for a in (n.internal_ipv6, n.internal_ipv4) if a))
        for n in state.nodes
    ]
    return model.Cluster.of(
        namespaces,
        pods,
        (p.policy if isinstance(p, LabPolicy) else p for p in policies),
        nodes,
    )


def selected(cluster: model.Cluster, policy: model.NetworkPolicy) -> list[str]:
    """The names of the pods `policy` selects (its namespace's, by its podSelector)."""
    return sorted(
        pod.name
        for pod in cluster.pods_by_namespace.get(policy.namespace, ())
        if pod.enforceable and policy.pod_selector.matches(pod.labels)
    )


def describe(policy: LabPolicy, cluster: model.Cluster) -> dict[str, Any]:
    """One row of `lab policy list`."""
    spec = policy.policy
    return {
        "namespace": policy.namespace,
        "name": policy.name,
        "pod_selector": selector_text(spec.pod_selector),
        "policy_types": sorted(str(t) for t in spec.policy_types),
        "ingress_rules": len(spec.ingress),
        "egress_rules": len(spec.egress),
        "selects": selected(cluster, spec),
        "file": str(policy.path) if policy.path else None,
    }


def selector_text(selector: model.LabelSelector) -> str:
    if selector.empty:
        return "(all pods)"
    terms = [f"{k}={v}" for k, v in selector.match_labels.items()]
    for requirement in selector.match_expressions:
        values = ",".join(sorted(requirement.values))
        term = f"{requirement.key} {requirement.operator}"
        terms.append(f"{term} ({values})" if values else term)
    return ", ".join(terms)
