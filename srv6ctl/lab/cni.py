"""Run the real `srv6-cni` executable the way kubelet's runtime does: env vars + stdin."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from srv6ctl.lab.netns import LabError, netns_path

CNI_VERSION = "1.1.0"


def cni_executable() -> str:
    """The venv's `srv6-cni` beside this interpreter, else the one on PATH."""
    beside = Path(sys.executable).parent / "srv6-cni"
    if beside.exists():
        return str(beside)
    found = shutil.which("srv6-cni")
    if found is None:
        raise LabError("srv6-cni is not installed (pip install -e . puts it beside srv6ctl)")
    return found


@dataclass(frozen=True)
class CniResult:
    ipv6: str | None
    ipv4: str | None
    raw: dict[str, Any]


def _call(
    command: str,
    socket_path: str,
    container_id: str,
    netns: str,
    pod: str,
    namespace: str,
    uid: str,
) -> subprocess.CompletedProcess[str]:
    config = {
        "cniVersion": CNI_VERSION,
        "name": "srv6",
        "type": "srv6-cni",
        "agentSocket": socket_path,
    }
    env = {
        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": container_id,
        "CNI_NETNS": netns_path(netns),
        "CNI_IFNAME": "eth0",
        "CNI_PATH": "/opt/cni/bin",
        "CNI_ARGS": f"K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={pod};K8S_POD_UID={uid}",
    }
    return subprocess.run(
        [cni_executable()],
        input=json.dumps(config),
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=90,
    )


def _error(command: str, pod: str, done: subprocess.CompletedProcess[str]) -> LabError:
    try:
        error = json.loads(done.stdout)
        reason = f"code {error.get('code')}: {error.get('msg')} ({error.get('details', '')})"
    except ValueError:
        reason = (done.stdout + done.stderr).strip() or f"exit status {done.returncode}"
    return LabError(f"CNI {command} of pod {pod} failed: {reason}")


def cni_add(
    socket_path: str, container_id: str, netns: str, pod: str, namespace: str, uid: str
) -> CniResult:
    done = _call("ADD", socket_path, container_id, netns, pod, namespace, uid)
    if done.returncode != 0:
        raise _error("ADD", pod, done)
    result = json.loads(done.stdout)
    ipv6 = ipv4 = None
    for entry in result.get("ips", []):
        address = str(entry["address"]).split("/", 1)[0]
        if ":" in address:
            ipv6 = address
        else:
            ipv4 = address
    return CniResult(ipv6, ipv4, result)


def cni_del(
    socket_path: str, container_id: str, netns: str, pod: str, namespace: str, uid: str
) -> None:
    done = _call("DEL", socket_path, container_id, netns, pod, namespace, uid)
    if done.returncode != 0:
        raise _error("DEL", pod, done)
