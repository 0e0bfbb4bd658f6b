"""The `store` section of the config, and opening the store it names."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ipam6.store.base import Store
from ipam6.store.etcd import EtcdStore
from ipam6.store.sqlite import SqliteStore

DEFAULT_DB_PATH = "/var/lib/srv6ctl/ipam.db"
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


class EtcdConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)

    endpoints: list[str] = Field(default_factory=list)
    ca_file: str | None = Field(default=None, alias="caFile")
    cert_file: str | None = Field(default=None, alias="certFile")
    key_file: str | None = Field(default=None, alias="keyFile")
    username: str | None = None
    # A file, not an inline value, so the password can come from a mounted Secret.
    password_file: str | None = Field(default=None, alias="passwordFile")
    timeout_seconds: float = Field(default=5.0, alias="timeoutSeconds", gt=0)

    @field_validator("endpoints")
    @classmethod
    def _urls(cls, endpoints: list[str]) -> list[str]:
        for endpoint in endpoints:
            url = urlparse(endpoint)
            if url.scheme not in ("http", "https") or not url.hostname or url.port is None:
                raise ValueError(f"endpoint {endpoint!r} must look like http(s)://host:port")
        return endpoints

    @model_validator(mode="after")
    def _client_cert_pair(self) -> EtcdConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("certFile and keyFile go together (client certificate and key)")
        if self.password_file is not None and self.username is None:
            raise ValueError("passwordFile needs username")
        return self


class KubernetesStoreConfig(BaseModel):
    """The Kubernetes API store: ConfigMaps in one namespace (ipam6.store.kubernetes)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)

    # None: the agent's own namespace (its service account's), else "srv6ctl".
    namespace: str | None = None
    # None: the in-cluster configuration (the pod's service account).
    kubeconfig: str | None = None
    timeout_seconds: float = Field(default=5.0, alias="timeoutSeconds", gt=0)

    @field_validator("namespace")
    @classmethod
    def _dns_label(cls, namespace: str | None) -> str | None:
        if namespace is not None and not _DNS_LABEL.fullmatch(namespace):
            raise ValueError(
                f"namespace {namespace!r} must be a DNS label (lowercase letters, digits, '-')"
            )
        return namespace


class StoreConfig(BaseModel):
    """`store: {type: embedded|etcd|kubernetes, ...}`: where allocations are kept."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)

    type: Literal["embedded", "etcd", "kubernetes"] = "embedded"
    path: str = DEFAULT_DB_PATH  # embedded: the SQLite file, shared by the agents of a host
    prefix: str = "/srv6ctl/"
    etcd: EtcdConfig = Field(default_factory=EtcdConfig)
    kubernetes: KubernetesStoreConfig = Field(default_factory=KubernetesStoreConfig)

    @model_validator(mode="after")
    def _etcd_needs_endpoints(self) -> StoreConfig:
        if self.type == "etcd" and not self.etcd.endpoints:
            raise ValueError("type etcd needs etcd.endpoints")
        return self


def open_store(config: StoreConfig, *, kubeconfig: str | None = None) -> Store:
    """Open the configured store (the embedded one creates its directory).

    `kubeconfig`: the one the caller talks to the API server with (the agent's
    `--kubeconfig`); the Kubernetes store uses it unless its config names its own, so one
    flag serves the watches and the allocations alike (outside a pod there is no in-cluster
    configuration to fall back on)."""
    if config.type == "embedded":
        Path(config.path).parent.mkdir(parents=True, exist_ok=True)
        return SqliteStore(config.path)
    if config.type == "kubernetes":
        # Here, not above: only this store needs the Kubernetes client (~0.3 s to import).
        from ipam6.store.kubernetes import KubernetesStore, default_namespace

        return KubernetesStore(
            config.kubernetes.namespace or default_namespace(),
            kubeconfig=config.kubernetes.kubeconfig or kubeconfig,
            timeout=config.kubernetes.timeout_seconds,
        )
    password = None
    if config.etcd.password_file is not None:
        password = Path(config.etcd.password_file).read_text().strip()
    return EtcdStore(
        config.etcd.endpoints,
        ca_file=config.etcd.ca_file,
        cert_file=config.etcd.cert_file,
        key_file=config.etcd.key_file,
        username=config.etcd.username,
        password=password,
        timeout=config.etcd.timeout_seconds,
    )
