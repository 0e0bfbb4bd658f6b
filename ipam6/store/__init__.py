"""The ipam6 key/value store: the etcd-v3-shaped `Store` protocol and its backends.

The Kubernetes API backend is `ipam6.store.kubernetes.KubernetesStore`, imported only where
used (it pulls in the Kubernetes client).
"""

from ipam6.store.base import (
    Compacted,
    Compare,
    CompareTarget,
    Delete,
    EventType,
    KeyValue,
    Listing,
    Op,
    Put,
    Store,
    StoreError,
    TxnResult,
    Watch,
    WatchEvent,
)
from ipam6.store.etcd import EtcdStore, EtcdWatch
from ipam6.store.sqlite import SqliteStore, SqliteWatch

__all__ = [
    "Compacted",
    "Compare",
    "CompareTarget",
    "Delete",
    "EtcdStore",
    "EtcdWatch",
    "EventType",
    "KeyValue",
    "Listing",
    "Op",
    "Put",
    "SqliteStore",
    "SqliteWatch",
    "Store",
    "StoreError",
    "TxnResult",
    "Watch",
    "WatchEvent",
]
