"""Real Kubernetes for the lab (issue 18): the binaries a user gives, and the control plane.

The lab fakes kubelet (pods are namespaces wired by calling srv6-cni ourselves) and the
API server (YAML files). Its Kubernetes mode runs the real components instead, built by
the user from the Kubernetes source (README, "A lab on real Kubernetes": nothing of
Kubernetes is shipped or built here). This module holds its first two parts:

- `find_binaries(DIR)`: the components in DIR and the host tools beside them, refused in
  one line naming what is missing — or a kube-apiserver built with a Go whose
  `encoding/json` breaks the OpenAPI document of Kubernetes 1.36 (Go 1.27: the spec is
  served with `Extensions` keys, and `kubectl apply` fails validating against it).
- `ControlPlane`: etcd, kube-apiserver, kube-controller-manager and kube-scheduler in one
  network namespace (the lab's control-plane node), with a throw-away PKI made by openssl:
  a CA, the API server's serving certificate (its address, the first ClusterIP of each
  service CIDR, `kubernetes.default.svc`), and a client certificate per user
  (`system:masters` for the admin, `system:kube-controller-manager`,
  `system:kube-scheduler`, and `system:node:<name>` in `system:nodes` for each kubelet,
  which the Node authorizer requires). Node IPAM stays off (`--allocate-node-cidrs=false`):
  srv6ctl allocates pod prefixes itself. Leader election is off (one of each).

Every process starts through `nsenter --net=<namespace>` and no other namespace (`ip netns
exec` would also remount /sys, which hides the cgroup hierarchies the kubelet needs), in
its own session, marked as the lab's (`processes.spawn`), and is stopped by its record.
"""

from __future__ import annotations

import ipaddress
import json
import mmap
import shutil
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from srv6ctl.dataplane.model import IPNetwork, IPv6Address
from srv6ctl.dataplane.nsenter import run_in_netns
from srv6ctl.lab import processes
from srv6ctl.lab.netns import LabError
from srv6ctl.lab.state import ProcessRecord

COMPONENTS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet")
HOST_TOOLS = ("etcd", "containerd", "ctr", "runc", "openssl")
API_PORT = 6443
ETCD_PORT = 2379
CONTROLLER_MANAGER_PORT = 10257
SCHEDULER_PORT = 10259
# Go 1.27's encoding/json marshals kube-openapi's spec.Swagger with its `Extensions`
# field as a key: the server's OpenAPI is then invalid ("$root has invalid property:
# Extensions") and every `kubectl apply` fails validating against it.
BROKEN_GO = ("go1.27",)
_BUILDINFO_MAGIC = b"\xff Go buildinf:"


class KubernetesUnavailable(LabError):
    """The lab's Kubernetes mode cannot run with what was given: the one line to stop with."""


@dataclass(frozen=True)
class Binaries:
    """The Kubernetes components in `directory` and the host tools they run with."""

    directory: Path
    tools: dict[str, Path] = field(default_factory=dict)

    def path(self, name: str) -> Path:
        return self.tools[name] if name in self.tools else self.directory / name


def go_build_version(binary: Path) -> str | None:
    """The Go version a binary was built with, from its build info (the header Go 1.18+
    writes: 14 bytes of magic, pointer size, flags, padding to 32, then the version as a
    length-prefixed string when flag 2 is set); None where it has none."""
    with open(binary, "rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
        at = data.find(_BUILDINFO_MAGIC)
        if at < 0 or not data[at + 15] & 2:
            return None
        length, start = _uvarint(data, at + 32)
        return bytes(data[start : start + length]).decode(errors="replace")


def _uvarint(data: mmap.mmap, at: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, at
        shift += 7


def find_binaries(directory: Path) -> Binaries:
    """The components in `directory` and the tools on PATH, or KubernetesUnavailable
    naming everything missing at once."""
    missing = [
        f"{directory}/{name}"
        for name in COMPONENTS
        if not (directory / name).is_file() or not (directory / name).stat().st_mode & 0o111
    ]
    tools = {name: shutil.which(name) for name in HOST_TOOLS}
    missing += [f"{name} (not on PATH)" for name, found in tools.items() if found is None]
    if missing:
        raise KubernetesUnavailable(f"--kubernetes {directory}: missing {', '.join(missing)}")
    apiserver = directory / "kube-apiserver"
    built = go_build_version(apiserver) or ""
    if built.startswith(BROKEN_GO):
        raise KubernetesUnavailable(
            f"--kubernetes {directory}: kube-apiserver was built with {built}, which serves an "
            "invalid OpenAPI document (kubectl apply fails): build it with Go 1.26"
        )
    return Binaries(directory, {name: Path(str(path)) for name, path in tools.items()})


def kubeconfig_path(directory: Path, user: str) -> Path:
    """Where a control plane with its files in `directory` keeps `user`'s kubeconfig."""
    return directory / f"{user.replace(':', '-')}.kubeconfig"


def first_address(network: IPNetwork) -> ipaddress.IPv4Address | IPv6Address:
    """The first ClusterIP of a service CIDR: the `kubernetes` Service's."""
    return network.network_address + 1


@dataclass
class ControlPlane:
    """The control plane in network namespace `netns` (a name under /run/netns),
    reachable at `address`, its files and logs under `directory`."""

    binaries: Binaries
    netns: str
    address: IPv6Address
    service_cidrs: Sequence[IPNetwork]
    directory: Path
    lab: Path  # the lab's state directory: marks the processes as the lab's
    # What the `kubernetes` Service's endpoint is (pods reach the API server there); None:
    # `address`, which the components and kubelets use.
    advertise: IPv6Address | None = None
    records: list[ProcessRecord] = field(default_factory=list)

    @property
    def pki(self) -> Path:
        return self.directory / "pki"

    @property
    def url(self) -> str:
        return f"https://[{self.address}]:{API_PORT}"

    # --- life cycle ------------------------------------------------------------------------

    def start(self, timeout: float = 120.0) -> None:
        """Credentials, then each component, each waited for before the next."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self._credentials()
        self.spawn("etcd", self._etcd_argv())
        self.wait_healthy("etcd", f"http://127.0.0.1:{ETCD_PORT}/health", timeout, tls=False)
        self.spawn("kube-apiserver", self._apiserver_argv())
        self.wait_healthy("kube-apiserver", f"{self.url}/readyz", timeout)
        self.spawn("kube-controller-manager", self._controller_manager_argv())
        self.spawn("kube-scheduler", self._scheduler_argv())
        self.wait_healthy(
            "kube-controller-manager", f"https://[::1]:{CONTROLLER_MANAGER_PORT}/healthz", timeout
        )
        self.wait_healthy("kube-scheduler", f"https://[::1]:{SCHEDULER_PORT}/healthz", timeout)
        # Until the controller manager has made it, every pod is refused (403: "error
        # looking up service account default/default").
        self._wait_for_object("/api/v1/namespaces/default/serviceaccounts/default", timeout)

    def stop(self) -> list[int]:
        """Stop every component (the API server can take its time to shut down)."""
        stopped = processes.stop(self.records, timeout=30.0)
        self.records.clear()
        return stopped

    def kubeconfig(self, user: str) -> Path:
        """The kubeconfig of `user` (admin, controller-manager, scheduler, node:<name>)."""
        return kubeconfig_path(self.directory, user)

    def add_node(self, name: str) -> Path:
        """A kubelet's credentials (`system:node:<name>`); its kubeconfig."""
        return self.add_user(f"node:{name}", f"/O=system:nodes/CN=system:node:{name}")

    def add_user(self, user: str, subject: str) -> Path:
        """A client certificate for `subject` (`/O=group/CN=name`); `user`'s kubeconfig."""
        self._client_certificate(user, subject)
        return self.kubeconfig(user)

    def get(self, path: str, user: str = "admin") -> object:
        """GET `path` from the API server as `user`, from inside the namespace."""
        return json.loads(self._fetch(f"{self.url}{path}", user))

    def send(self, method: str, path: str, body: object, user: str = "admin") -> object:
        """`method` `path` with a JSON `body` (POST, PUT, DELETE; PATCH: a JSON merge
        patch) as `user`; the answer."""
        return json.loads(self._fetch(f"{self.url}{path}", user, method, json.dumps(body)))

    def text(self, path: str, user: str = "admin") -> str:
        """A plain-text resource (a pod's log, `/healthz`)."""
        return self._fetch(f"{self.url}{path}", user).decode(errors="replace")

    # --- processes -------------------------------------------------------------------------

    def spawn(self, name: str, argv: list[str]) -> None:
        """Run `argv` in the namespace as the lab's process `name` (its log `<name>.log`)."""
        wrapped = ["nsenter", f"--net=/run/netns/{self.netns}", "--", *argv]
        self.records.append(processes.spawn(wrapped, self.directory / f"{name}.log", lab=self.lab))

    def wait_healthy(self, name: str, url: str, timeout: float, *, tls: bool = True) -> None:
        """Until `url` answers ok (as the admin over TLS), or stop naming `name`'s log."""
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if not all(processes.alive(r) for r in self.records):
                raise KubernetesUnavailable(
                    f"{name} exited while starting: see {self.directory / (name + '.log')}"
                )
            try:
                body = self._fetch(url, "admin" if tls else None)
                if body.strip().lower() == b"ok" or b'"health":"true"' in body:
                    return
                last = body[:200].decode(errors="replace")
            except (OSError, urllib.error.URLError) as err:
                last = str(err)
            time.sleep(0.5)
        raise KubernetesUnavailable(f"{name} not healthy within {timeout:.0f} s: {last}")

    def _wait_for_object(self, path: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self.get(path)
                return
            except urllib.error.HTTPError as err:
                if err.code != 404:
                    raise KubernetesUnavailable(f"GET {path}: {err}") from None
            time.sleep(0.3)
        raise KubernetesUnavailable(f"{path} was not made within {timeout:.0f} s")

    def _fetch(
        self, url: str, user: str | None, method: str = "GET", data: str | None = None
    ) -> bytes:
        def body() -> bytes:
            context = None
            if url.startswith("https"):
                context = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
                if "[::1]" in url:  # the components' own self-signed serving certificates
                    context.check_hostname = False
                    context.verify_mode = ssl.CERT_NONE
                if user is not None:
                    name = user.replace(":", "-")
                    context.load_cert_chain(self.pki / f"{name}.crt", self.pki / f"{name}.key")
            kind = "application/merge-patch+json" if method == "PATCH" else "application/json"
            request = urllib.request.Request(
                url,
                method=method,
                data=None if data is None else data.encode(),
                headers={} if data is None else {"Content-Type": kind},
            )
            with urllib.request.urlopen(request, timeout=10, context=context) as answer:
                return bytes(answer.read())

        return run_in_netns(f"/run/netns/{self.netns}", body)

    # --- command lines ---------------------------------------------------------------------

    def _etcd_argv(self) -> list[str]:
        client = f"http://127.0.0.1:{ETCD_PORT}"
        return [
            str(self.binaries.path("etcd")),
            f"--data-dir={self.directory / 'etcd'}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            "--listen-peer-urls=http://127.0.0.1:2380",
            "--log-level=warn",
        ]

    def _apiserver_argv(self) -> list[str]:
        d = self.pki
        return [
            str(self.binaries.path("kube-apiserver")),
            f"--etcd-servers=http://127.0.0.1:{ETCD_PORT}",
            "--bind-address=::",
            f"--advertise-address={self.advertise or self.address}",
            f"--secure-port={API_PORT}",
            f"--cert-dir={d}",
            f"--tls-cert-file={d / 'apiserver.crt'}",
            f"--tls-private-key-file={d / 'apiserver.key'}",
            f"--client-ca-file={d / 'ca.crt'}",
            f"--kubelet-client-certificate={d / 'apiserver-kubelet-client.crt'}",
            f"--kubelet-client-key={d / 'apiserver-kubelet-client.key'}",
            "--kubelet-preferred-address-types=InternalIP,Hostname",
            f"--service-account-key-file={d / 'sa.pub'}",
            f"--service-account-signing-key-file={d / 'sa.key'}",
            "--service-account-issuer=https://kubernetes.default.svc",
            f"--service-cluster-ip-range={','.join(str(c) for c in self.service_cidrs)}",
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NodeRestriction",
            "--profiling=false",
            "--v=1",
        ]

    def _component_argv(self, name: str, user: str, port: int) -> list[str]:
        kubeconfig = str(self.kubeconfig(user))
        return [
            str(self.binaries.path(name)),
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--bind-address=::1",
            f"--secure-port={port}",
            f"--cert-dir={self.directory / name}",
            "--leader-elect=false",
            "--profiling=false",
        ]

    def _controller_manager_argv(self) -> list[str]:
        d = self.pki
        return [
            *self._component_argv(
                "kube-controller-manager", "controller-manager", CONTROLLER_MANAGER_PORT
            ),
            "--use-service-account-credentials",
            f"--service-account-private-key-file={d / 'sa.key'}",
            f"--root-ca-file={d / 'ca.crt'}",
            f"--cluster-signing-cert-file={d / 'ca.crt'}",
            f"--cluster-signing-key-file={d / 'ca.key'}",
            "--allocate-node-cidrs=false",  # srv6ctl's own IPAM gives nodes their prefixes
            # Its default is under /usr/libexec on the host, which it would create.
            f"--flex-volume-plugin-dir={self.directory / 'volume-plugins'}",
        ]

    def _scheduler_argv(self) -> list[str]:
        return self._component_argv("kube-scheduler", "scheduler", SCHEDULER_PORT)

    # --- credentials -----------------------------------------------------------------------

    def _credentials(self) -> None:
        d = self.pki
        d.mkdir(parents=True, exist_ok=True)
        if (d / "ca.crt").exists():
            return
        self._openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", d / "ca.key")
        self._openssl(
            "req", "-x509", "-new", "-key", d / "ca.key", "-out", d / "ca.crt", "-days", "30",
            "-subj", "/CN=srv6ctl-lab-ca",
        )  # fmt: skip
        names = [
            f"IP:{self.address}",
            *([f"IP:{self.advertise}"] if self.advertise else []),
            "IP:::1",
            "IP:127.0.0.1",
            *(f"IP:{first_address(c)}" for c in self.service_cidrs),
            "DNS:kubernetes",
            "DNS:kubernetes.default",
            "DNS:kubernetes.default.svc",
            "DNS:localhost",
        ]
        self._certificate("apiserver", "/CN=kube-apiserver", server_names=names)
        self._client_certificate("admin", "/O=system:masters/CN=srv6ctl-lab-admin")
        self._client_certificate(
            "apiserver-kubelet-client", "/O=system:masters/CN=kube-apiserver-kubelet-client"
        )
        self._client_certificate("controller-manager", "/CN=system:kube-controller-manager")
        self._client_certificate("scheduler", "/CN=system:kube-scheduler")
        self._openssl("genrsa", "-out", d / "sa.key", "2048")
        self._openssl("rsa", "-in", d / "sa.key", "-pubout", "-out", d / "sa.pub")

    def _client_certificate(self, user: str, subject: str) -> None:
        name = user.replace(":", "-")
        self._certificate(name, subject)
        self._write_kubeconfig(name)

    def _certificate(self, name: str, subject: str, server_names: Sequence[str] = ()) -> None:
        d = self.pki
        key, csr, ext = d / f"{name}.key", d / f"{name}.csr", d / f"{name}.ext"
        self._openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", key)
        self._openssl("req", "-new", "-key", key, "-out", csr, "-subj", subject)
        usage = "serverAuth,clientAuth" if server_names else "clientAuth"
        lines = [f"extendedKeyUsage={usage}"]
        if server_names:
            lines.append(f"subjectAltName={','.join(server_names)}")
        ext.write_text("\n".join(lines) + "\n")
        self._openssl(
            "x509", "-req", "-in", csr, "-CA", d / "ca.crt", "-CAkey", d / "ca.key",
            "-CAcreateserial", "-out", d / f"{name}.crt", "-days", "30", "-extfile", ext,
        )  # fmt: skip

    def _write_kubeconfig(self, name: str) -> None:
        d = self.pki
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "lab",
                    "cluster": {"server": self.url, "certificate-authority": str(d / "ca.crt")},
                }
            ],
            "users": [
                {
                    "name": name,
                    "user": {
                        "client-certificate": str(d / f"{name}.crt"),
                        "client-key": str(d / f"{name}.key"),
                    },
                }
            ],
            "contexts": [{"name": "lab", "context": {"cluster": "lab", "user": name}}],
            "current-context": "lab",
        }
        (self.directory / f"{name}.kubeconfig").write_text(json.dumps(config, indent=2) + "\n")

    def _openssl(self, *args: object) -> None:
        argv = [str(self.binaries.path("openssl")), *(str(a) for a in args)]
        done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)
        if done.returncode != 0:
            raise KubernetesUnavailable(f"openssl {args[0]}: {done.stderr.strip()[:300]}")


__all__ = [
    "COMPONENTS",
    "Binaries",
    "ControlPlane",
    "KubernetesUnavailable",
    "find_binaries",
    "go_build_version",
    "kubeconfig_path",
]
