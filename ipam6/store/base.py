"""The `Store` protocol: a small etcd-v3-shaped key/value contract every backend honours.

Keys are `str` (slash-separated paths), values `bytes`. Every write bumps one store-wide,
monotonic revision; each key remembers the revision that created it and the one that last
modified it, exactly as etcd does, so compare-and-swap can be expressed the same way on
SQLite and on etcd.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Protocol


class StoreError(Exception):
    """The store could not be reached or answered with an error (retryable)."""


class Compacted(StoreError):
    """A watch asked for a revision the store no longer keeps history for (relist)."""

    def __init__(self, requested: int, compact_revision: int) -> None:
        super().__init__(
            f"revision {requested} is compacted (oldest kept: {compact_revision}); relist"
        )
        self.requested = requested
        self.compact_revision = compact_revision


@dataclass(frozen=True)
class KeyValue:
    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    version: int


class CompareTarget(Enum):
    MOD_REVISION = "mod"
    CREATE_REVISION = "create"
    VALUE = "value"


@dataclass(frozen=True)
class Compare:
    """One guard of a transaction: `target(key) == expected`.

    A key that does not exist has create/mod revision 0, so `Compare.absent(k)` is the
    "create only if missing" guard, and a value compare on a missing key is false.
    """

    key: str
    target: CompareTarget
    expected: int | bytes

    @classmethod
    def absent(cls, key: str) -> Compare:
        return cls(key, CompareTarget.CREATE_REVISION, 0)

    @classmethod
    def mod_revision(cls, key: str, revision: int) -> Compare:
        return cls(key, CompareTarget.MOD_REVISION, revision)

    @classmethod
    def value(cls, key: str, value: bytes) -> Compare:
        return cls(key, CompareTarget.VALUE, value)


@dataclass(frozen=True)
class Put:
    key: str
    value: bytes


@dataclass(frozen=True)
class Delete:
    key: str


Op = Put | Delete


def check_distinct_keys(ops: Sequence[Op]) -> None:
    """Refuse a transaction branch that touches a key twice, as etcd does ("duplicate key
    given in txn request"): every store says it up front, as the programming error it is,
    so code written against one store does not break on another."""
    keys = [op.key for op in ops]
    if len(set(keys)) != len(keys):
        raise ValueError(f"a transaction branch touches a key more than once: {keys}")


@dataclass(frozen=True)
class TxnResult:
    succeeded: bool
    revision: int  # the store's revision after the transaction (unchanged when it failed)


class EventType(Enum):
    PUT = "put"
    DELETE = "delete"


@dataclass(frozen=True)
class WatchEvent:
    type: EventType
    key: str
    value: bytes  # empty for DELETE
    revision: int  # mod revision of the change


@dataclass(frozen=True)
class Listing:
    items: list[KeyValue]
    revision: int  # the store revision the listing is consistent with (watch from +1)


class Watch(Protocol):
    """An open watch: iterate for events (blocks), `cancel()` from any thread to stop."""

    def __iter__(self) -> Iterator[WatchEvent]: ...

    def cancel(self) -> None: ...


class Store(Protocol):
    def get(self, key: str) -> KeyValue | None: ...

    def put(self, key: str, value: bytes) -> int:
        """Write unconditionally; return the new revision."""
        ...

    def delete(self, key: str) -> bool:
        """Delete one key; True when it existed."""
        ...

    def txn(
        self,
        compares: Sequence[Compare],
        success: Sequence[Op],
        failure: Sequence[Op] = (),
    ) -> TxnResult:
        """Atomically: if every compare holds, apply `success`, else apply `failure`."""
        ...

    def list(self, prefix: str, keys_only: bool = False) -> Listing:
        """Every key starting with `prefix`, sorted by key."""
        ...

    def watch(self, prefix: str, start_revision: int) -> Watch:
        """Changes to keys under `prefix` with revision >= start_revision, in order.

        Raises `Compacted` (at once or on iteration) when that history is gone.
        """
        ...

    def revision(self) -> int: ...

    def close(self) -> None: ...
