"""The lab's NetworkPolicies where its cluster is real (issue 18): in the API server.

`lab policy` and verify's policy group keep policies through a store: the plain lab's is
its objects directory (`policy.PolicyStore`); on the lab on real Kubernetes it is the
API server itself (`ApiPolicyStore`), which the agents watch as on any cluster. Both take
policies validated the same way (`policy.validate`) and say what happened as `kubectl
apply` says it (created, configured, unchanged). `policy_store` picks the lab's.

The API store deletes with `--all` only the policies it made (labelled `MANAGED_BY`), as
the file store deletes only its own files: a policy an e2e test or a user made stays.
"""

from __future__ import annotations

import json
import urllib.error
from collections.abc import Iterable, Mapping
from typing import Any

from policies import model
from policies.kube import namespace_from_k8s
from srv6ctl.lab import kubernetes_lab
from srv6ctl.lab.kubernetes import ControlPlane
from srv6ctl.lab.policy import API_VERSION, KIND, LabPolicy, PolicyError, PolicyStore, validate
from srv6ctl.lab.state import LabPaths, LabState

MANAGED_BY = ("app.kubernetes.io/managed-by", "srv6ctl-lab")
_COLLECTION = "/apis/networking.k8s.io/v1/namespaces/{}/networkpolicies"


class ApiPolicyStore:
    """The NetworkPolicies of a lab on real Kubernetes, in its API server."""

    def __init__(self, plane: ControlPlane) -> None:
        self.plane = plane

    def present(self) -> list[LabPolicy]:
        """Every NetworkPolicy in the cluster, as the agents read them."""
        found = self.plane.get("/apis/networking.k8s.io/v1/networkpolicies")
        assert isinstance(found, dict)
        out = []
        for item in found.get("items", []):
            document = {"apiVersion": API_VERSION, "kind": KIND, **item}
            try:
                out.append(validate(document, "the API server"))
            except PolicyError:
                continue  # one the agents' converter refuses: they skip it too
        return sorted(out, key=lambda p: (p.namespace, p.name))

    def namespaces(self) -> list[model.Namespace]:
        found = self.plane.get("/api/v1/namespaces")
        assert isinstance(found, dict)
        return [namespace_from_k8s(item) for item in found.get("items", [])]

    def ensure_namespaces(self, state: LabState) -> bool:
        return False  # the cluster's own

    def apply(self, policies: Iterable[LabPolicy]) -> list[tuple[LabPolicy, str]]:
        """Create or replace each policy (labelled as the lab's)."""
        done = []
        for policy in policies:
            document = _labelled(policy.document)
            path = _COLLECTION.format(policy.namespace)
            current = self._get(f"{path}/{policy.name}")
            if current is None:
                self._send("POST", path, document, policy)
                done.append((policy, "created"))
                continue
            if _same(current, document):
                done.append((policy, "unchanged"))
                continue
            metadata = {
                **document["metadata"],
                "resourceVersion": current["metadata"]["resourceVersion"],
            }
            self._send("PUT", f"{path}/{policy.name}", {**document, "metadata": metadata}, policy)
            done.append((policy, "configured"))
        return done

    def delete(self, keys: Iterable[tuple[str, str]]) -> list[str]:
        """Delete the named policies (namespace, name); all must exist, or none is."""
        present = {(p.namespace, p.name) for p in self.present()}
        chosen = list(keys)
        for namespace, name in chosen:
            if (namespace, name) not in present:
                known = ", ".join(f"{n}/{m}" for n, m in sorted(present)) or "none"
                raise PolicyError(f"no NetworkPolicy {namespace}/{name} in the lab ({known})")
        for namespace, name in chosen:
            try:
                self.plane.send("DELETE", f"{_COLLECTION.format(namespace)}/{name}", {})
            except urllib.error.HTTPError as err:
                if err.code != 404:
                    raise PolicyError(f"NetworkPolicy {namespace}/{name}: {_said(err)}") from None
        return [f"{n}/{m}" for n, m in chosen]

    def delete_all(self) -> list[str]:
        key, value = MANAGED_BY
        mine = [
            (p.namespace, p.name)
            for p in self.present()
            if p.document.get("metadata", {}).get("labels", {}).get(key) == value
        ]
        return self.delete(mine)

    def _get(self, path: str) -> dict[str, Any] | None:
        try:
            found = self.plane.get(path)
        except urllib.error.HTTPError as err:
            if err.code == 404:
                return None
            raise PolicyError(f"GET {path}: {_said(err)}") from None
        assert isinstance(found, dict)
        return found

    def _send(self, method: str, path: str, document: object, policy: LabPolicy) -> None:
        try:
            self.plane.send(method, path, document)
        except urllib.error.HTTPError as err:
            raise PolicyError(f"NetworkPolicy {policy.key}: {_said(err)}") from None


def _labelled(document: Mapping[str, Any]) -> dict[str, Any]:
    metadata = dict(document["metadata"])
    metadata["labels"] = {**metadata.get("labels", {}), MANAGED_BY[0]: MANAGED_BY[1]}
    return {**document, "metadata": metadata}


def _same(current: Mapping[str, Any], document: Mapping[str, Any]) -> bool:
    """The API server's copy says what `document` says (its defaults aside: it is compared
    after the same validation)."""
    theirs = validate({"apiVersion": API_VERSION, "kind": KIND, **current}, "the API server")
    ours = validate(document, "the policy")
    labels = ("labels", "annotations")
    return theirs.policy == ours.policy and all(
        theirs.document["metadata"].get(k) == ours.document["metadata"].get(k) for k in labels
    )


def _said(err: urllib.error.HTTPError) -> str:
    """The API server's own message of a refusal."""
    try:
        return str(json.loads(err.read()).get("message", err))
    except ValueError:
        return str(err)


def policy_store(paths: LabPaths, state: LabState | None) -> PolicyStore | ApiPolicyStore:
    """The lab's policy store: its API server on the lab on real Kubernetes, else its
    objects directory."""
    if state is not None and state.options.kubernetes is not None:
        return ApiPolicyStore(kubernetes_lab.control_plane(paths, state))
    return PolicyStore(paths)


__all__ = ["MANAGED_BY", "ApiPolicyStore", "policy_store"]
