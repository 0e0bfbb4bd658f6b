"""deploy/Containerfile, read (there is no container engine here to build it): its stages,
what it copies, and the console scripts the image and the manifests rely on. Its cni-builder
stage runs scripts/build-cni.sh, which tests/test_cni_executable.py runs for real."""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import yaml

from cni import install

ROOT = Path(__file__).resolve().parent.parent
CONTAINERFILE = ROOT / "deploy" / "Containerfile"
BASE = ROOT / "deploy" / "base"  # the kustomize base (deploy/README.md)
BUILD_CNI = ROOT / "scripts" / "build-cni.sh"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())

Instruction = tuple[str, str]  # (keyword, arguments)


def instructions(text: str) -> list[Instruction]:
    """Instructions in order: comments dropped, backslash continuations joined."""
    result: list[Instruction] = []
    pending = ""
    for line in text.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        keyword, _, arguments = (pending + line).strip().partition(" ")
        result.append((keyword.upper(), arguments.strip()))
        pending = ""
    assert not pending, "the file ends inside a continued line"
    return result


def stages() -> list[tuple[str, str, list[Instruction]]]:
    """(base image, stage name, instructions) per FROM."""
    found: list[tuple[str, str, list[Instruction]]] = []
    for keyword, arguments in instructions(CONTAINERFILE.read_text()):
        if keyword == "FROM":
            match = re.fullmatch(r"(\S+)\s+AS\s+(\S+)", arguments, re.IGNORECASE)
            assert match, f"FROM {arguments}: name every stage"
            found.append((match.group(1), match.group(2), []))
        else:
            assert found, f"{keyword} before the first FROM"
            found[-1][2].append((keyword, arguments))
    return found


def stage(name: str) -> list[Instruction]:
    (found,) = [instructions for _, stage_name, instructions in stages() if stage_name == name]
    return found


def test_three_stages_the_static_cni_the_wheels_and_the_runtime() -> None:
    found = stages()
    assert [(base, name) for base, name, _ in found] == [
        ("debian:bookworm-slim", "cni-builder"),
        ("python:3.11-slim", "builder"),
        ("python:3.11-slim", "runtime"),
    ]
    minimum = re.fullmatch(r">=(\d+)\.(\d+)", PYPROJECT["project"]["requires-python"])
    assert minimum and (int(minimum.group(1)), int(minimum.group(2))) <= (3, 11)
    builder, runtime = stage("builder"), stage("runtime")
    assert any(k == "RUN" and "pip wheel" in a for k, a in builder)
    # The runtime installs the builder's wheels, offline, and keeps no build tools.
    installs = [a for k, a in runtime if k == "RUN" and "pip install" in a]
    assert len(installs) == 1 and "from=builder" in installs[0] and "--no-index" in installs[0]
    assert not any(k == "RUN" and "apt-get" in a for k, a in runtime)


def _copied(instructions: list[Instruction]) -> set[str]:
    copied: set[str] = set()
    for keyword, arguments in instructions:
        if keyword == "COPY":
            *sources, _ = shlex.split(arguments)
            assert not any(s.startswith("--from") for s in sources)
            for source in sources:
                assert (ROOT / source).exists(), source
                copied.add(source)
    return copied


def test_the_builder_copies_every_package_the_wheel_is_made_of() -> None:
    copied = _copied(stage("builder"))
    patterns = PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {p.rstrip("*") for p in patterns}
    assert packages <= copied
    assert {"pyproject.toml", PYPROJECT["project"]["readme"]} <= copied


def test_the_runtime_carries_the_static_cni_where_the_daemonset_installs_it_from() -> None:
    cni_builder = stage("cni-builder")
    assert {"cni", "scripts/build-cni.sh"} <= _copied(cni_builder)
    # Every Debian package build-cni.sh would install is already there: nothing is fetched
    # by the script, and the interpreter it uses is Debian's (its libpython has _socket).
    wanted = set(re.findall(r'^\s*"([a-z0-9.+-]+):/', BUILD_CNI.read_text(), re.MULTILINE))
    apt = " ".join(a for k, a in cni_builder if k == "RUN" and "apt-get install" in a)
    assert wanted and wanted <= set(apt.split()), wanted - set(apt.split())
    (build,) = [shlex.split(a) for k, a in cni_builder if k == "RUN" and "build-cni.sh" in a]
    assert build[0] == "scripts/build-cni.sh"
    built = build[1]
    copies = [shlex.split(a) for k, a in stage("runtime") if k == "COPY"]
    assert ["--from=cni-builder", built, install.DEFAULT_EXECUTABLE] in copies
    daemonset = yaml.safe_load((BASE / "kubernetes" / "daemonset.yaml").read_text())
    (init,) = [c for c in _containers(daemonset) if c["name"] == "install-cni-plugin"]
    assert f"--executable={install.DEFAULT_EXECUTABLE}" in init["command"]


def test_the_image_runs_the_console_scripts_the_project_declares() -> None:
    scripts = PYPROJECT["project"]["scripts"]
    runtime = stage("runtime")
    entrypoint = [a for k, a in runtime if k == "ENTRYPOINT"]
    assert len(entrypoint) == 1
    assert yaml.safe_load(entrypoint[0])[0] in scripts
    # Every command the manifests run in this image is one of its console scripts (or sh).
    for path in (ROOT / "deploy").rglob("*.yaml"):
        for document in yaml.safe_load_all(path.read_text()):
            for c in _containers(document):
                if c.get("image", "").startswith("srv6ctl") and c.get("command"):
                    assert c["command"][0] in {*scripts, "/bin/sh"}, (path, c["name"])


def _containers(document: object) -> list[dict[str, Any]]:
    if not isinstance(document, dict):
        return []
    pod = document.get("spec", {}).get("template", {}).get("spec", {})
    return [*pod.get("initContainers", []), *pod.get("containers", [])]


def test_non_root_by_default_and_root_only_where_the_manifest_says_why() -> None:
    runtime = stage("runtime")
    users = [a for k, a in runtime if k == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    daemonset = yaml.safe_load((BASE / "kubernetes" / "daemonset.yaml").read_text())
    for c in _containers(daemonset):
        assert c["securityContext"]["runAsUser"] == 0, c["name"]


def test_the_manifests_name_the_image_of_this_version() -> None:
    version = PYPROJECT["project"]["version"]
    kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    assert {"name": "srv6ctl", "newTag": version} in kustomization["images"]
    daemonset = yaml.safe_load((BASE / "kubernetes" / "daemonset.yaml").read_text())
    assert {c["image"] for c in _containers(daemonset)} == {f"srv6ctl:{version}"}
    assert f"-t REGISTRY/srv6ctl:{version} ." in (ROOT / "deploy" / "README.md").read_text()
    assert f"-t srv6ctl:{version} ." in CONTAINERFILE.read_text()


def test_the_instruction_reader_joins_continued_lines() -> None:
    text = "# c\nFROM a AS b\nRUN x \\\n    && y\n\nUSER 1\n"
    assert instructions(text) == [("FROM", "a AS b"), ("RUN", "x      && y"), ("USER", "1")]
