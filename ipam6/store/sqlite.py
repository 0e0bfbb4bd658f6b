"""Embedded `Store` backend: one SQLite file in WAL mode, shared by the processes of one host.

Every process (and every `SqliteStore`) opens its own connection. Writers take the database
write lock up front (`BEGIN IMMEDIATE`) and wait on a busy timeout, so concurrent writers
serialise instead of failing, and a transaction's compares and its writes see one state.

Durability: WAL with `synchronous=NORMAL` writes each commit to the WAL before COMMIT
returns and fsyncs only at checkpoints. A killed process (even SIGKILL) loses nothing it
committed, because the data is already in the OS; only a power loss or kernel crash can
drop the last few commits, and even then the file stays consistent.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

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
    StoreError,
    TxnResult,
    WatchEvent,
    check_distinct_keys,
)

# Long enough for 8 processes hammering one key; a writer stuck longer is a real fault.
_BUSY_TIMEOUT_S = 30.0

# Revisions start at 1 on an empty store, as in etcd, so the first write is revision 2 on
# both backends. `compact_revision` is the oldest revision whose events are still kept.
_SCHEMA = """
BEGIN IMMEDIATE;
CREATE TABLE IF NOT EXISTS kv (
    key BLOB PRIMARY KEY,
    value BLOB NOT NULL,
    create_rev INTEGER NOT NULL,
    mod_rev INTEGER NOT NULL,
    version INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    rev INTEGER NOT NULL,
    key BLOB NOT NULL,
    type TEXT NOT NULL,
    value BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS events_rev ON events (rev);
INSERT OR IGNORE INTO meta (name, value) VALUES ('revision', 1), ('compact_revision', 0);
COMMIT;
"""


def _prefix_end(prefix: bytes) -> bytes | None:
    """The first key after every key starting with `prefix` (etcd's range_end); None: no end."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return None
    return stripped[:-1] + bytes([stripped[-1] + 1])


def _prefix_clause(prefix: str) -> tuple[str, tuple[bytes, ...]]:
    # Keys are stored as UTF-8 BLOBs: SQLite compares BLOBs with memcmp, which is etcd's
    # byte order, so "/x/1" sorts before "/x/10" and a range scan uses the primary key.
    start = prefix.encode()
    end = _prefix_end(start)
    if end is None:
        return "key >= ?", (start,)
    return "key >= ? AND key < ?", (start, end)


def _connect(path: str) -> sqlite3.Connection:
    # isolation_level=None: no implicit transactions; we issue BEGIN/COMMIT ourselves.
    conn = sqlite3.connect(
        path, timeout=_BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
    )
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
    except sqlite3.Error:
        conn.close()
        raise
    return conn


class SqliteStore:
    """The `Store` protocol on one SQLite file; safe across threads and processes of a host.

    `history` bounds the events kept for watches (whole revisions are trimmed, oldest
    first); `poll_interval` is how often an idle watch looks for new commits.
    A watch with `start_revision <= 0` starts after the current revision, as in etcd.
    Open the store after forking, never before: a connection must not cross a fork.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        history: int = 100_000,
        poll_interval: float = 0.05,
    ) -> None:
        if history < 1:
            raise ValueError(f"history must keep at least one event, not {history}")
        if poll_interval <= 0:
            raise ValueError(f"poll_interval must be positive, not {poll_interval}")
        self._path = os.fspath(path)
        self._history = history
        self._poll_interval = poll_interval
        # One connection per store, shared by its threads under this lock; watches open
        # their own, so a blocked watch never holds the lock.
        self._lock = threading.RLock()
        try:
            self._conn = _connect(self._path)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open store {self._path}: {exc}") from exc
        try:
            self._conn.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            self._conn.close()
            raise StoreError(f"cannot create the schema of store {self._path}: {exc}") from exc

    @contextmanager
    def _transaction(self, begin: str) -> Iterator[sqlite3.Connection]:
        with self._lock:
            conn = self._conn
            try:
                conn.execute(begin)
                try:
                    yield conn
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise StoreError(f"store {self._path}: {exc}") from exc

    def get(self, key: str) -> KeyValue | None:
        with self._transaction("BEGIN") as conn:
            row = conn.execute(
                "SELECT key, value, create_rev, mod_rev, version FROM kv WHERE key = ?",
                (key.encode(),),
            ).fetchone()
        return None if row is None else _key_value(row)

    def put(self, key: str, value: bytes) -> int:
        return self.txn((), (Put(key, value),)).revision

    def delete(self, key: str) -> bool:
        _, _, changed = self._commit((), (Delete(key),), ())
        return changed > 0

    def txn(
        self,
        compares: Sequence[Compare],
        success: Sequence[Op],
        failure: Sequence[Op] = (),
    ) -> TxnResult:
        succeeded, revision, _ = self._commit(compares, success, failure)
        return TxnResult(succeeded=succeeded, revision=revision)

    def _commit(
        self, compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op]
    ) -> tuple[bool, int, int]:
        """Run one transaction; return (compares held, revision after, keys changed)."""
        check_distinct_keys(success)
        check_distinct_keys(failure)
        with self._transaction("BEGIN IMMEDIATE") as conn:
            current = _meta(conn, "revision")
            succeeded = all(_holds(conn, compare) for compare in compares)
            # etcd gives every change of one transaction the same revision.
            revision = current + 1
            changed = _apply(conn, success if succeeded else failure, revision)
            if changed:
                conn.execute("UPDATE meta SET value = ? WHERE name = 'revision'", (revision,))
                self._trim(conn)
            else:
                revision = current
        return succeeded, revision, changed

    def _trim(self, conn: sqlite3.Connection) -> None:
        newest = conn.execute("SELECT max(id) FROM events").fetchone()[0]
        cutoff = newest - self._history
        if cutoff <= 0:
            return
        oldest_kept = conn.execute(
            "SELECT rev FROM events WHERE id > ? ORDER BY id LIMIT 1", (cutoff,)
        ).fetchone()[0]
        # Whole revisions go at once, so a watch never starts in the middle of a txn.
        deleted = conn.execute("DELETE FROM events WHERE rev < ?", (oldest_kept,)).rowcount
        if deleted:
            conn.execute(
                "UPDATE meta SET value = ? WHERE name = 'compact_revision'", (oldest_kept,)
            )

    def list(self, prefix: str, keys_only: bool = False) -> Listing:
        clause, args = _prefix_clause(prefix)
        value = "X''" if keys_only else "value"
        with self._transaction("BEGIN") as conn:
            rows = conn.execute(
                f"SELECT key, {value}, create_rev, mod_rev, version FROM kv "
                f"WHERE {clause} ORDER BY key",
                args,
            ).fetchall()
            revision = _meta(conn, "revision")
        return Listing(items=[_key_value(row) for row in rows], revision=revision)

    def watch(self, prefix: str, start_revision: int) -> SqliteWatch:
        with self._transaction("BEGIN") as conn:
            current = _meta(conn, "revision")
            compacted = _meta(conn, "compact_revision")
        if start_revision <= 0:
            start_revision = current + 1
        if start_revision < compacted:
            raise Compacted(start_revision, compacted)
        return SqliteWatch(self._path, prefix, start_revision, self._poll_interval)

    def revision(self) -> int:
        with self._transaction("BEGIN") as conn:
            return _meta(conn, "revision")

    def close(self) -> None:
        with self._lock:
            self._conn.close()


class SqliteWatch:
    """Events under a prefix from a revision on, found by polling the events table."""

    def __init__(self, path: str, prefix: str, start_revision: int, poll_interval: float) -> None:
        self._path = path
        self._prefix = prefix
        self._next_revision = start_revision
        self._poll_interval = poll_interval
        self._cancelled = threading.Event()

    def cancel(self) -> None:
        self._cancelled.set()

    def __iter__(self) -> Iterator[WatchEvent]:
        try:
            conn = _connect(self._path)
        except sqlite3.Error as exc:
            raise StoreError(f"store {self._path}: {exc}") from exc
        try:
            seen_version = None
            while not self._cancelled.is_set():
                # data_version changes only when another connection commits: an idle
                # poll costs one pragma, not a query.
                version = conn.execute("PRAGMA data_version").fetchone()[0]
                if version == seen_version:
                    self._cancelled.wait(self._poll_interval)
                    continue
                seen_version = version
                for event in self._poll(conn):
                    if self._cancelled.is_set():
                        return
                    yield event
        except sqlite3.Error as exc:
            raise StoreError(f"store {self._path}: {exc}") from exc
        finally:
            conn.close()

    def _poll(self, conn: sqlite3.Connection) -> list[WatchEvent]:
        clause, args = _prefix_clause(self._prefix)
        # One read transaction: the compaction check and the events come from one snapshot.
        conn.execute("BEGIN")
        try:
            compacted = _meta(conn, "compact_revision")
            if self._next_revision < compacted:
                raise Compacted(self._next_revision, compacted)
            rows = conn.execute(
                f"SELECT type, key, value, rev FROM events WHERE rev >= ? AND {clause} ORDER BY id",
                (self._next_revision, *args),
            ).fetchall()
            current = _meta(conn, "revision")
        finally:
            conn.execute("COMMIT")
        # Advance past quiet revisions too, so trimming other prefixes' history does not
        # look like compaction to an idle watch.
        self._next_revision = max(self._next_revision, current + 1)
        return [
            WatchEvent(type=EventType(kind), key=key.decode(), value=value, revision=rev)
            for kind, key, value, rev in rows
        ]


def _meta(conn: sqlite3.Connection, name: str) -> int:
    value: int = conn.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()[0]
    return value


def _key_value(row: tuple[bytes, bytes, int, int, int]) -> KeyValue:
    key, value, create_rev, mod_rev, version = row
    return KeyValue(
        key=key.decode(),
        value=bytes(value),
        create_revision=create_rev,
        mod_revision=mod_rev,
        version=version,
    )


def _holds(conn: sqlite3.Connection, compare: Compare) -> bool:
    row = conn.execute(
        "SELECT value, create_rev, mod_rev FROM kv WHERE key = ?", (compare.key.encode(),)
    ).fetchone()
    if compare.target is CompareTarget.VALUE:
        # As in etcd: a value compare on a missing key is false, even against b"".
        return row is not None and bytes(row[0]) == compare.expected
    if row is None:
        return compare.expected == 0
    actual = row[1] if compare.target is CompareTarget.CREATE_REVISION else row[2]
    return bool(actual == compare.expected)


def _apply(conn: sqlite3.Connection, ops: Sequence[Op], revision: int) -> int:
    """Apply `ops` at `revision`, recording events; return how many keys changed."""
    changed = 0
    for op in ops:
        key = op.key.encode()
        if isinstance(op, Put):
            conn.execute(
                "INSERT INTO kv (key, value, create_rev, mod_rev, version) "
                "VALUES (?, ?, ?, ?, 1) ON CONFLICT (key) DO UPDATE SET "
                "value = excluded.value, mod_rev = excluded.mod_rev, version = version + 1",
                (key, op.value, revision, revision),
            )
            event = (revision, key, EventType.PUT.value, op.value)
        else:
            # etcd does not bump the revision for deleting a key that is not there.
            if not conn.execute("DELETE FROM kv WHERE key = ?", (key,)).rowcount:
                continue
            event = (revision, key, EventType.DELETE.value, b"")
        conn.execute("INSERT INTO events (rev, key, type, value) VALUES (?, ?, ?, ?)", event)
        changed += 1
    return changed
