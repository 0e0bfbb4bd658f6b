"""A real Kubernetes node for the lab (issue 18): a kubelet and its own containerd in a
lab node's network namespace, the way kind makes a node of a container.

Both run under one supervisor (`python -m srv6ctl.lab.kubelet_node DIR`) started as
`unshare --mount --uts --propagation private nsenter --net=<node> -- ...`, so that:

- containerd and kubelet share one private mount namespace (kubelet hands containerd
  paths under /var/lib/kubelet: a projected token volume made in another mount namespace
  is silently empty in the container). The supervisor binds the node's own directories
  over the paths they hard-code — /var/lib/kubelet, /var/log (pods' logs), /run/containerd,
  /run/netns (containerd's CRI makes pod namespaces there) and /var/lib/cni (libcni's
  cache) — and none of it shows on the host or on another node.
- The node's hostname is its name (its own UTS namespace).
- Every process of the node (supervisor, containerd, its shims, kubelet, the pods) lives in
  the cgroup `srv6ctl-<name>` of every cgroup v1 hierarchy, which is also kubelet's
  `cgroupRoot`: stopping the node kills what is left in it, then removes it depth-first.

The network namespace is entered with `nsenter --net` only: `ip netns exec` also remounts
/sys, which hides the cgroup hierarchies kubelet needs.

kubelet writes host-global kernel settings at start unless they already hold its values
(`protectKernelDefaults` makes it refuse instead), and a bind mount needs its target on the
host: `HostSettings` sets and makes them for the lab and puts back what it changed,
recorded in a file so that `lab down` from another process, or after a crash, still can.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from srv6ctl.lab import processes
from srv6ctl.lab.netns import LabError
from srv6ctl.lab.state import ProcessRecord

CGROUP_ROOT = Path("/sys/fs/cgroup")
CGROUP_PREFIX = "srv6ctl-"
# What kubelet's container manager requires (pkg/kubelet/cm, setupKernelTunables).
KUBELET_KERNEL_DEFAULTS = {
    "vm.overcommit_memory": "1",
    "vm.panic_on_oom": "0",
    "kernel.panic": "10",
    "kernel.panic_on_oops": "1",
    "kernel.keys.root_maxkeys": "1000000",
    "kernel.keys.root_maxbytes": "25000000",
}
# The node's own directory → the path containerd and kubelet hard-code.
BIND_MOUNTS = (
    ("kubelet", "/var/lib/kubelet"),
    ("log", "/var/log"),
    ("run-containerd", "/run/containerd"),
    ("netns", "/run/netns"),
    ("cni", "/var/lib/cni"),  # libcni's cache of results (containerd 1.6 has no setting)
)
CONTAINERD_SOCKET = "/run/containerd/containerd.sock"
SANDBOX_IMAGE = "registry.k8s.io/pause:3.10.2"
KUBELET_HEALTHZ_PORT = 10248
READY_FILE = "ready"  # the supervisor's: mounts made, containerd serving, images imported
GO_FILE = "start-kubelet"  # the lab's: the node's network plugin is ready


class NodeFailed(LabError):
    """A node did not come up: the one line to stop with."""


# --- what the nodes need of the host --------------------------------------------------------


def _sysctl_path(key: str) -> Path:
    return Path("/proc/sys") / key.replace(".", "/")


@dataclass(frozen=True)
class HostSettings:
    """What every node needs of the host, for the lab's lifetime: kubelet's kernel
    settings, and the directories the nodes bind theirs over where the host has none.
    The values replaced and the directories made are kept in `record` until restored,
    written before each change (a crash in between still restores it)."""

    record: Path

    def apply(self) -> None:
        done = self._recorded()
        sysctls, made = done.setdefault("sysctls", {}), done.setdefault("made", [])
        for _, target in BIND_MOUNTS:
            if not Path(target).exists():
                made.append(target)
                self._save(done)
                Path(target).mkdir(parents=True)
        for key, value in KUBELET_KERNEL_DEFAULTS.items():
            current = _sysctl_path(key).read_text().strip()
            if current != value and key not in sysctls:
                sysctls[key] = current
                self._save(done)
                _sysctl_path(key).write_text(value)

    def restore(self) -> dict[str, str]:
        """Put back the settings and remove the (empty) directories `apply` made, once
        every node has stopped (a directory another node still binds over would be
        unmounted under it); the settings put back."""
        done = self._recorded()
        sysctls = done.get("sysctls", {})
        for key, value in sysctls.items():
            _sysctl_path(key).write_text(value)
        for target in reversed(done.get("made", [])):
            with contextlib.suppress(FileNotFoundError):
                Path(target).rmdir()
        self.record.unlink(missing_ok=True)
        return dict(sysctls)

    def _save(self, done: dict[str, Any]) -> None:
        self.record.parent.mkdir(parents=True, exist_ok=True)
        self.record.write_text(json.dumps(done, indent=2) + "\n")

    def _recorded(self) -> dict[str, Any]:
        try:
            return dict(json.loads(self.record.read_text()))
        except FileNotFoundError:
            return {}


# --- cgroups ----------------------------------------------------------------------------------


def _hierarchies() -> list[Path]:
    """The cgroup hierarchies: v1's, and cgroup2's `unified` beside them (a hybrid host's:
    runc makes each container's cgroup there too)."""
    if not CGROUP_ROOT.is_dir():
        return []
    return sorted(h for h in CGROUP_ROOT.iterdir() if h.is_dir() and not h.is_symlink())


@dataclass(frozen=True)
class NodeCgroups:
    """The cgroup `srv6ctl-<name>` in every hierarchy: the node's processes and its
    kubelet's `cgroupRoot`."""

    name: str

    @property
    def root(self) -> str:
        return f"/{CGROUP_PREFIX}{self.name}"

    def paths(self) -> list[Path]:
        return [h / self.root.lstrip("/") for h in _hierarchies()]

    def create(self) -> None:
        for path in self.paths():
            path.mkdir(exist_ok=True)
            if path.parent.name == "cpuset":  # empty cpus/mems admit no process
                for knob in ("cpuset.cpus", "cpuset.mems"):
                    (path / knob).write_text((path.parent / knob).read_text())

    def join(self) -> None:
        """Move the calling process into the node's cgroups (its children follow)."""
        for path in self.paths():
            (path / "cgroup.procs").write_text(f"{os.getpid()}\n")

    def pids(self) -> set[int]:
        found: set[int] = set()
        for path in self.paths():
            if not path.exists():
                continue
            for procs in path.rglob("cgroup.procs"):
                with contextlib.suppress(OSError):
                    found.update(int(p) for p in procs.read_text().split())
        return found

    def remove(self, timeout: float = 10.0) -> None:
        """Kill what is left in the node's cgroups, then remove them, deepest first."""
        deadline = time.monotonic() + timeout
        while (left := self.pids() - {os.getpid()}) and time.monotonic() < deadline:
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)
        for path in self.paths():
            if not path.exists():
                continue
            for sub in sorted(path.rglob("*"), key=lambda p: len(p.parts), reverse=True):
                if sub.is_dir():
                    _rmdir(sub, deadline)
            _rmdir(path, deadline)


def leftover_cgroups(prefix: str) -> list[NodeCgroups]:
    """The node cgroups whose name starts with `prefix` (a lab's, by its prefix)."""
    names = {
        path.name.removeprefix(CGROUP_PREFIX)
        for hierarchy in _hierarchies()
        for path in hierarchy.glob(f"{CGROUP_PREFIX}{prefix}*")
        if path.is_dir()
    }
    return [NodeCgroups(name) for name in sorted(names)]


def _rmdir(path: Path, deadline: float) -> None:
    while True:
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:  # EBUSY while a killed process is still leaving
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


# --- the node's description and configuration files ---------------------------------------


@dataclass(frozen=True)
class NodeSpec:
    """What the supervisor needs, written to `<directory>/node.json`."""

    name: str
    cgroup: str  # the node's cgroups are srv6ctl-<cgroup> (unique on the host)
    address: str  # kubelet's --node-ip (and its listening address)
    directory: str
    kubelet: str
    containerd: str
    ctr: str
    kubeconfig: str  # the kubelet's credentials (system:node:<name>)
    client_ca: str  # the cluster CA: kubelet authenticates the API server's calls with it
    cni_bin_dir: str
    cni_conf_dir: str
    images: tuple[str, ...] = ()  # OCI archives imported before kubelet starts
    cluster_dns: tuple[str, ...] = ()
    labels: tuple[str, ...] = ()  # key=value
    other_ips: tuple[str, ...] = ()  # --node-ip's second family (dual-stack)

    @property
    def path(self) -> Path:
        return Path(self.directory)

    @property
    def containerd_socket(self) -> Path:
        """containerd's socket as the host sees it (the bind source of /run/containerd)."""
        source = next(s for s, target in BIND_MOUNTS if target == "/run/containerd")
        return self.path / source / Path(CONTAINERD_SOCKET).name

    def task_pid(self, container_id: str) -> int | None:
        """The host PID of a running container's task (its pod's namespaces are that
        process's); None while it has none."""
        done = subprocess.run(
            [self.ctr, "--address", str(self.containerd_socket), "--namespace", "k8s.io",
             "tasks", "ls"],
            capture_output=True, text=True, check=False, timeout=30,
        )  # fmt: skip
        for line in done.stdout.splitlines()[1:]:
            fields = line.split()
            if len(fields) >= 3 and fields[0] == container_id and fields[2] == "RUNNING":
                return int(fields[1])
        return None

    def save(self) -> None:
        (self.path / "node.json").write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, directory: Path) -> NodeSpec:
        raw = json.loads((directory / "node.json").read_text())
        raw.setdefault("other_ips", [])
        for key in ("images", "cluster_dns", "labels", "other_ips"):
            raw[key] = tuple(raw[key])
        return cls(**raw)


def containerd_config(spec: NodeSpec) -> str:
    """containerd 1.6's configuration (version 2): its state under the node's directory,
    the CRI plugin with spec's CNI directories and the native snapshotter (overlayfs on
    overlayfs is not given), no listener but its socket."""
    d = spec.path / "containerd"
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    return f"""version = 2
root = "{d / "root"}"
state = "{d / "state"}"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "{CONTAINERD_SOCKET}"

[plugins."io.containerd.internal.v1.opt"]
  path = "{d / "opt"}"

[{cri}]
  sandbox_image = "{SANDBOX_IMAGE}"
  # The lab runs without CAP_SYS_RESOURCE: runc could not lower a sandbox's oom_score_adj.
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"

[{cri}.containerd]
  snapshotter = "native"
  default_runtime_name = "runc"

[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[{cri}.containerd.runtimes.runc.options]
  SystemdCgroup = false

[{cri}.cni]
  bin_dir = "{spec.cni_bin_dir}"
  conf_dir = "{spec.cni_conf_dir}"
  max_conf_num = 1
"""


def kubelet_config(spec: NodeSpec) -> dict[str, object]:
    """KubeletConfiguration: webhook-authorized, x509-authenticated API, no read-only
    port, the node's cgroup as its root, eviction only when the host is nearly full."""
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": spec.address,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": KUBELET_HEALTHZ_PORT,
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": spec.client_ca},
        },
        "authorization": {"mode": "Webhook"},
        "containerRuntimeEndpoint": f"unix://{CONTAINERD_SOCKET}",
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": NodeCgroups(spec.cgroup).root,
        # The hosts here have cgroup v1 only; kubelet 1.35+ refuses it unless told.
        "failCgroupV1": False,
        "failSwapOn": False,
        # HostSettings has set them (and puts them back): kubelet only checks.
        "protectKernelDefaults": True,
        "clusterDomain": "cluster.local",
        "clusterDNS": list(spec.cluster_dns),
        "resolvConf": str(spec.path / "resolv.conf"),
        "evictionHard": {
            "memory.available": "100Mi",
            "nodefs.available": "1%",
            "imagefs.available": "1%",
            "nodefs.inodesFree": "1%",
        },
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "serializeImagePulls": False,
        "localStorageCapacityIsolation": False,
    }


def kubelet_argv(spec: NodeSpec) -> list[str]:
    argv = [
        spec.kubelet,
        f"--config={spec.path / 'kubelet.json'}",
        f"--kubeconfig={spec.kubeconfig}",
        f"--hostname-override={spec.name}",
        f"--node-ip={','.join((spec.address, *spec.other_ips))}",
        f"--cert-dir={spec.path / 'kubelet-pki'}",
        "--v=2",
    ]
    if spec.labels:
        argv.append(f"--node-labels={','.join(spec.labels)}")
    return argv


def write_files(spec: NodeSpec) -> None:
    spec.path.mkdir(parents=True, exist_ok=True)
    for source, _ in BIND_MOUNTS:
        (spec.path / source).mkdir(exist_ok=True)
    spec.save()
    (spec.path / "containerd.toml").write_text(containerd_config(spec))
    (spec.path / "kubelet.json").write_text(json.dumps(kubelet_config(spec), indent=2) + "\n")
    # No DNS server for pods that use the node's resolver: an empty search, no server.
    (spec.path / "resolv.conf").write_text("options ndots:1\n")


def image_names(archive: Path) -> list[str]:
    """The image names an OCI archive carries (its index's `io.containerd.image.name`
    annotations, which `ctr images import` names the images by)."""
    with tarfile.open(archive) as tar:
        member = tar.extractfile("index.json")
        if member is None:
            raise NodeFailed(f"{archive}: no index.json (not an OCI archive)")
        index = json.load(member)
    return [
        str(m["annotations"]["io.containerd.image.name"])
        for m in index.get("manifests", [])
        if "io.containerd.image.name" in m.get("annotations", {})
    ]


# --- the supervisor (runs inside the node's namespaces) --------------------------------------


def _wait_socket(path: str, process: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise NodeFailed(f"containerd exited ({process.returncode}) while starting")
        with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as probe:
            probe.connect(path)
            return
        time.sleep(0.1)
    raise NodeFailed(f"containerd's socket {path} did not answer within {timeout:.0f} s")


def _spawn(argv: Sequence[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            list(argv), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
        )


def _terminate(process: subprocess.Popen[bytes], timeout: float) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def supervise(directory: Path) -> int:
    """Bind the node's directories, start containerd, import the images, start kubelet;
    on SIGTERM (or when either exits) stop kubelet, the pods, containerd, in that order."""
    spec = NodeSpec.load(directory)
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    cgroups = NodeCgroups(spec.cgroup)
    try:
        socket.sethostname(spec.name)
        for source, target in BIND_MOUNTS:
            bound = subprocess.run(
                ["mount", "--bind", str(directory / source), target],
                capture_output=True, text=True, check=False,
            )  # fmt: skip
            if bound.returncode != 0:
                raise NodeFailed(f"binding {target}: {bound.stderr.strip()}")
        cgroups.join()
    except (NodeFailed, OSError) as failed:
        print(f"node {spec.name}: {failed}", file=sys.stderr, flush=True)
        return 1
    containerd = _spawn(
        [spec.containerd, "--config", str(directory / "containerd.toml")],
        directory / "containerd.log",
    )
    kubelet: subprocess.Popen[bytes] | None = None
    try:
        _wait_socket(CONTAINERD_SOCKET, containerd, 60.0)
        for image in spec.images:
            imported = subprocess.run(
                [
                    spec.ctr, "--address", CONTAINERD_SOCKET, "--namespace", "k8s.io",
                    "images", "import", "--all-platforms", "--snapshotter", "native", image,
                ],
                capture_output=True, text=True, check=False, timeout=300,
            )  # fmt: skip
            if imported.returncode != 0:
                raise NodeFailed(f"importing {image}: {imported.stderr.strip()[:300]}")
        (directory / READY_FILE).touch()
        # The node's network plugin may need the node's mount namespace to start in (its
        # agent: the pods' namespaces are under its /run/netns): kubelet waits for it.
        while not (directory / GO_FILE).exists():
            if stopping.wait(0.2):
                return 0
            if containerd.poll() is not None:
                raise NodeFailed(f"containerd exited ({containerd.returncode})")
        kubelet = _spawn(kubelet_argv(spec), directory / "kubelet.log")
        while not stopping.wait(0.5):
            for name, process in (("containerd", containerd), ("kubelet", kubelet)):
                if process.poll() is not None:
                    raise NodeFailed(f"{name} exited ({process.returncode})")
        return 0
    except NodeFailed as failed:
        print(f"node {spec.name}: {failed}", file=sys.stderr, flush=True)
        return 1
    finally:
        if kubelet is not None:
            _terminate(kubelet, 20.0)
        # The pods before containerd: their shims would otherwise outlive it.
        for pid in cgroups.pids() - {os.getpid(), containerd.pid}:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        _terminate(containerd, 10.0)


# --- the lab's side -------------------------------------------------------------------------


@dataclass
class KubeletNode:
    """A node's supervisor, started in network namespace `netns` (a name under /run/netns)
    and stopped by its record; the lab's state directory `lab` marks it."""

    spec: NodeSpec
    netns: str
    lab: Path
    record: ProcessRecord | None = None
    _cgroups: NodeCgroups = field(init=False)

    def __post_init__(self) -> None:
        self._cgroups = NodeCgroups(self.spec.cgroup)

    def start(self) -> None:
        """The supervisor; `wait_ready`, then `start_kubelet` once the network plugin is."""
        write_files(self.spec)
        for leftover in (READY_FILE, GO_FILE):
            (self.spec.path / leftover).unlink(missing_ok=True)
        self._cgroups.create()
        argv = [
            "unshare", "--mount", "--uts", "--propagation", "private",
            "nsenter", f"--net=/run/netns/{self.netns}", "--",
            sys.executable, "-m", "srv6ctl.lab.kubelet_node", self.spec.directory,
        ]  # fmt: skip
        self.record = processes.spawn(argv, self.spec.path / "supervisor.log", lab=self.lab)

    def wait_ready(self, timeout: float = 300.0) -> None:
        """Until containerd serves in the node's namespaces with the images imported."""
        deadline = time.monotonic() + timeout
        while not (self.spec.path / READY_FILE).exists():
            if not self.alive():
                raise NodeFailed(f"node {self.spec.name} exited:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise NodeFailed(f"node {self.spec.name} not ready within {timeout:.0f} s")
            time.sleep(0.2)

    def start_kubelet(self) -> None:
        (self.spec.path / GO_FILE).touch()

    def alive(self) -> bool:
        return processes.alive(self.record)

    def log_tail(self) -> str:
        return "\n".join(
            f"{name}: {processes.log_tail(self.spec.path / name, 5)}"
            for name in ("supervisor.log", "kubelet.log", "containerd.log")
        )

    def stop(self) -> None:
        if self.record is not None:
            processes.stop([self.record], timeout=40.0)
            self.record = None
        self._cgroups.remove()


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m srv6ctl.lab.kubelet_node NODE_DIRECTORY", file=sys.stderr)
        return 2
    return supervise(Path(args[0]))


if __name__ == "__main__":
    sys.exit(main())

__all__ = [
    "HostSettings",
    "KubeletNode",
    "NodeCgroups",
    "NodeFailed",
    "NodeSpec",
    "image_names",
    "leftover_cgroups",
]
