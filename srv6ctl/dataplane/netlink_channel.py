"""A netlink socket in a network namespace: batched writes that report only failures, dumps.

pyroute2 0.9's `IPRoute` waits for one round trip per request and runs an asyncio loop
underneath; at tens of thousands of routes that is the bottleneck. Here many writes go out
in one `send()`, and rtnetlink handles every message of a datagram, in order, inside that
very send (netlink_unicast_kernel → rtnetlink_rcv, under the sender's syscall). Writes are
sent *without* NLM_F_ACK: the kernel answers a failed message with an NLMSG_ERROR anyway
(netlink_rcv_skb acks when `NLM_F_ACK || err`), and a success says nothing, which spares
one reply skb per write in the kernel and one parse per write here. Each datagram ends
with a *barrier*, an NLMSG_NOOP that asks for an ack: replies come back in message order,
so once the barrier's ack is read every failure of that datagram has been read before it.
A failure names its write by sequence number (see `Writes`).

The kernel has done all the work of a datagram by the time `send()` returns, and it does
that work with the interpreter lock released, so another thread can build the next writes
meanwhile: `execute` can take writes that are still being added, told how many are ready
by a `Feed`. Every syscall hands the lock to that thread, and getting it back costs some
100 µs, so up to `window` (8) datagrams are sent before their replies are read: a
tenth of the syscalls are reads rather than half.

Writes of one datagram may depend on each other (a group on the nexthops before it). So
when a write is retried, every write of its datagram that failed after it is retried too,
after it — and reported only if it fails again.

ENOMEM and ENOBUFS are retried with back-off rather than reported: on this kernel a
burst of seg6 routes or nexthops fails with ENOMEM because each seg6 lightweight tunnel
allocates a per-CPU dst cache with GFP_ATOMIC (net/ipv6/seg6_iptunnel.c, seg6_build_state),
and atomic per-CPU allocations cannot grow the per-CPU pool — they wait for the pool's
background balancer to refill it. A short pause is enough; the write itself is fine. At
most `chunk` (128) writes share a datagram, so the balancer gets to run between datagrams:
25,000 seg6 nexthops sent back to back met 700 to 6,000 ENOMEMs at 256 per datagram and
almost none at 64 (6.18, 2 CPUs); with a plan's nexthops interleaved with the groups and
routes that use them (kernel_program), 128 met none in ten runs of 10,000 services x 10
backends, and halves the datagrams (each one a hand-over of the interpreter lock between
the sending and the compiling thread).
"""

from __future__ import annotations

import errno
import os
import select
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

from pyroute2.netlink import (
    NETLINK_EXT_ACK,
    NETLINK_GET_STRICT_CHK,
    NLM_F_ACK,
    NLM_F_ACK_TLVS,
    NLM_F_CAPPED,
    NLM_F_CREATE,
    NLM_F_DUMP,
    NLM_F_DUMP_INTR,
    NLM_F_EXCL,
    NLM_F_REQUEST,
    NLMSG_DONE,
    NLMSG_ERROR,
    NLMSG_NOOP,
    NLMSG_OVERRUN,
    SOL_NETLINK,
    nlmsg,
)

from srv6ctl.dataplane.nsenter import run_in_netns

T = TypeVar("T")
NETLINK_CAP_ACK = 10  # include/uapi/linux/netlink.h: do not echo the request in acks
NLMSGERR_ATTR_MSG = 1
_HEADER = struct.Struct("=IHHII")  # struct nlmsghdr
_ERRNO = struct.Struct("=i")
_SO_RCVBUFFORCE = 33
_SO_SNDBUFFORCE = 32
_BUFFER = 4 << 20
RETRYABLE = frozenset({errno.ENOMEM, errno.ENOBUFS})
RECEIVE_TIMEOUT = 30.0  # the kernel answers within the send; this only stops a hang
_FIRST_PAUSE = 0.001
_LAST_PAUSE = 1.0
# Writes number their messages 1..len; a barrier's sequence number has the top bit set so
# it can never be taken for a write's. NLMSG_NOOP is a control message: netlink_rcv_skb
# skips it, then acks it as asked.
_BARRIER_SEQ = 0x8000_0000
_BARRIER_FLAGS = NLM_F_REQUEST | NLM_F_ACK


@dataclass(frozen=True)
class Request:
    """One netlink write as a value: its type, NLM_F_* flags (NLM_F_REQUEST is added) and
    body — the bytes after the nlmsghdr (see netlink_wire), or a pyroute2 message to
    encode — and what it is about."""

    msg_type: int
    flags: int
    body: bytes | nlmsg
    what: object


class Writes:
    """Independent netlink writes, framed once and kept as parallel lists (one row each).

    A large plan makes some 50,000 writes: an object apiece, and the garbage collector
    walking them, cost more than the packing. Row i's message carries sequence number
    i + 1, so a failure names its row without a lookup table; what a row programs is a
    kind and a subject, formatted only if it fails.
    """

    __slots__ = ("flags", "kinds", "msg_types", "subjects", "wire")

    def __init__(self, requests: Iterable[Request] = ()) -> None:
        self.msg_types: list[int] = []
        self.flags: list[int] = []
        self.wire: list[bytes] = []
        self.kinds: list[str] = []
        self.subjects: list[object] = []
        for request in requests:
            self.add(request.msg_type, request.flags, request.body, "", request.what)

    def add(
        self, msg_type: int, flags: int, body: bytes | nlmsg, kind: str, subject: object
    ) -> None:
        if not isinstance(body, bytes):
            body = bytes(_frame(msg_type, 0, body)[_HEADER.size :])
        seq = len(self.wire) + 1
        header = _HEADER.pack(_HEADER.size + len(body), msg_type, flags | NLM_F_REQUEST, seq, 0)
        self.wire.append(header + body)
        self.msg_types.append(msg_type)
        self.flags.append(flags)
        self.kinds.append(kind)
        self.subjects.append(subject)

    def __len__(self) -> int:
        return len(self.wire)

    def __iter__(self) -> Iterator[Request]:
        return (self.request(row) for row in range(len(self.wire)))

    def request(self, row: int) -> Request:
        kind, subject = self.kinds[row], self.subjects[row]
        what = f"{kind} {subject}" if kind else subject
        return Request(self.msg_types[row], self.flags[row], self.wire[row][_HEADER.size :], what)


class Feed:
    """How many rows of a `Writes` another thread has finished adding, and whether it is
    done; `execute` waits on it for a datagram's worth of rows at a time."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._ready = 0
        self._closed = False

    def publish(self, ready: int) -> None:
        with self._cond:
            self._ready = ready
            self._cond.notify()

    def close(self) -> None:
        """No more rows (also after a failure: the consumer stops waiting)."""
        with self._cond:
            self._closed = True
            self._cond.notify()

    def wait(self, wanted: int) -> tuple[int, bool]:
        """Block until `wanted` rows are ready or the feed is closed: (ready, closed)."""
        with self._cond:
            while self._ready < wanted and not self._closed:
                self._cond.wait()
            return self._ready, self._closed


@dataclass(frozen=True)
class Failure:
    request: Request
    errno: int
    message: str  # the kernel's extended ack text, when it gave one

    def __str__(self) -> str:
        text = f"{self.request.what}: {os.strerror(self.errno)}"
        return f"{text} ({self.message})" if self.message else text


class NetlinkError(OSError):
    def __init__(self, failures: Sequence[Failure]) -> None:
        first = failures[0]
        more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
        super().__init__(first.errno, f"{first}{more}")
        self.failures = tuple(failures)


class NetlinkChannel:
    """A netlink socket of `protocol` created inside `netns` (None: the caller's)."""

    def __init__(
        self,
        netns: str | None,
        protocol: int,
        *,
        strict_dumps: bool = False,
        chunk: int = 128,
        window: int = 8,
        retry_deadline: float = 60.0,
    ) -> None:
        self.netns = netns
        self.chunk = chunk
        self.window = window
        self.retry_deadline = retry_deadline
        self.writes = 0  # messages that change kernel state, retries included
        self.writes_by_type: Counter[int] = Counter()  # by netlink message type
        self.retries = 0
        self._seq = 0
        self._sock = run_in_netns(
            netns, lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, protocol)
        )
        for forced, plain in (
            (_SO_SNDBUFFORCE, socket.SO_SNDBUF),
            (_SO_RCVBUFFORCE, socket.SO_RCVBUF),
        ):
            try:
                self._sock.setsockopt(socket.SOL_SOCKET, forced, _BUFFER)
            except PermissionError:  # without CAP_NET_ADMIN: capped by net.core.*mem_max
                self._sock.setsockopt(socket.SOL_SOCKET, plain, _BUFFER)
        self._sock.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)
        self._sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
        if strict_dumps:
            # Lets the kernel filter route dumps by protocol/table (kernel 4.20+).
            self._sock.setsockopt(SOL_NETLINK, NETLINK_GET_STRICT_CHK, 1)
        self._sock.bind((0, 0))
        # Non-blocking, with our own wait: a socket with a timeout polls before every
        # send and recv, and each of those syscalls hands the interpreter lock away (to
        # the compiling thread, see KernelBackend.apply) and waits to get it back. A
        # write's replies are already queued when send() returns, so recv rarely waits.
        self._sock.setblocking(False)
        self._poll = select.poll()
        self._poll.register(self._sock, select.POLLIN)

    # --- writes -----------------------------------------------------------------------

    def execute(
        self, writes: Writes | Sequence[Request], feed: Feed | None = None
    ) -> list[Failure]:
        """Send writes in order, `chunk` per datagram; return those that failed for good.

        With a `feed`, `writes` is still growing: rows are sent as the feed says they are
        ready, until it is closed.

        A datagram whose writes meet ENOMEM/ENOBUFS is followed by a pause before the
        failed writes go again, ahead of the rest: 1 ms while datagrams still make
        progress (the per-CPU pool's balancer refills a few pages per run, and each
        failure schedules a run), doubling up to 1 s while nothing gets through.
        """
        if not isinstance(writes, Writes):
            writes = Writes(writes)
        self._drain()
        failures: list[Failure] = []
        retry: list[int] = []  # rows
        retried: set[int] = set()  # rows that met ENOMEM/ENOBUFS once
        position = 0
        ready, closed = (len(writes), True) if feed is None else (0, False)
        delay = _FIRST_PAUSE
        deadline = time.monotonic() + self.retry_deadline
        while True:
            batches: list[Sequence[int]]
            if retry:
                batches, retry = [retry[: self.chunk]], retry[self.chunk :]
            else:
                if feed is not None and not closed and ready < position + self.chunk:
                    ready, closed = feed.wait(position + self.chunk)
                if position >= ready:
                    break
                batches = []
                while position < ready and len(batches) < self.window:
                    batches.append(range(position, min(position + self.chunk, ready)))
                    position = batches[-1][-1] + 1
            refused = [
                (row, code, message)
                for row, code, message in self._round_trip(writes, batches)
                if code
                and not _benign_after_retry(writes.flags[row], code, row in retried)
                and not _already_gone(writes.msg_types[row], code)
            ]
            again: list[int] = []
            for row, code, message in refused:
                if code in RETRYABLE and time.monotonic() < deadline:
                    retried.add(row)
                    again.append(row)
                elif again:
                    # It may have named a write retried above: its turn comes after that.
                    again.append(row)
                else:
                    failures.append(Failure(writes.request(row), code, message))
            if again:
                self.retries += len(again)
                retry = again + retry
                progress = len(refused) < sum(len(rows) for rows in batches)
                delay = _FIRST_PAUSE if progress else min(delay * 2, _LAST_PAUSE)
                time.sleep(delay)
        return failures

    def _round_trip(
        self, writes: Writes, batches: Sequence[Sequence[int]]
    ) -> list[tuple[int, int, str]]:
        """Send each batch of rows of `writes` as one datagram, then read the replies of
        all; (row, errno, kernel text) of each write that failed, in order (a success has
        no reply: the writes carry no NLM_F_ACK)."""
        wire = writes.wire
        barrier = 0
        for rows in batches:
            if isinstance(rows, range):
                messages = wire[rows.start : rows.stop]
            else:
                messages = [wire[row] for row in rows]
            barrier = _BARRIER_SEQ | self._next_seq()
            messages.append(_HEADER.pack(_HEADER.size, NLMSG_NOOP, _BARRIER_FLAGS, barrier, 0))
            self._send(b"".join(messages))
            self.writes += len(rows)
            self.writes_by_type.update([writes.msg_types[row] for row in rows])
        refused: list[tuple[int, int, str]] = []
        while True:
            for msg_type, flags, seq, payload in self._receive():
                if msg_type != NLMSG_ERROR:
                    continue
                if seq == barrier:  # the last datagram's: every reply before it is read
                    return refused
                if 0 < seq <= len(wire):
                    code, message = _parse_ack(flags, payload)
                    refused.append((seq - 1, code, message))

    def _send(self, datagram: bytes) -> None:
        while True:
            try:
                self._sock.send(datagram)
                return
            except BlockingIOError:
                time.sleep(0.001)
            except OSError as exc:
                if exc.errno not in RETRYABLE:
                    raise
                time.sleep(0.01)

    def _drain(self) -> None:
        """Drop replies left by an earlier call that raised before reading them all."""
        try:
            while True:
                self._sock.recv(1 << 16)
        except BlockingIOError:
            pass

    # --- reads ------------------------------------------------------------------------

    def dump(
        self, msg_type: int, body: bytes | nlmsg, parse: Callable[[int, bytes], T | None]
    ) -> list[T]:
        """A NLM_F_DUMP request; restarted if the kernel flags it inconsistent."""
        wire = _frame(msg_type, NLM_F_REQUEST | NLM_F_DUMP, body)
        self._drain()
        for _ in range(10):
            seq = self._next_seq()
            struct.pack_into("=I", wire, 8, seq)
            self._sock.send(wire)
            out, interrupted = self._collect(seq, parse)
            if not interrupted:
                return out
        raise OSError(errno.EAGAIN, "netlink dump kept being interrupted by changes")

    def query(
        self, msg_type: int, body: bytes | nlmsg, parse: Callable[[int, bytes], T | None]
    ) -> list[T]:
        """A plain request that answers with one message (e.g. a genl GET)."""
        wire = _frame(msg_type, NLM_F_REQUEST | NLM_F_ACK, body)
        self._drain()
        seq = self._next_seq()
        struct.pack_into("=I", wire, 8, seq)
        self._sock.send(wire)
        out, _ = self._collect(seq, parse, until_ack=True)
        return out

    def _next_seq(self) -> int:
        self._seq = self._seq % 0x7FFFFFFF + 1
        return self._seq

    def _collect(
        self,
        seq: int,
        parse: Callable[[int, bytes], T | None],
        until_ack: bool = False,
    ) -> tuple[list[T], bool]:
        out: list[T] = []
        interrupted = False
        while True:
            for msg_type, flags, msg_seq, payload in self._receive():
                if msg_seq != seq:
                    continue
                if flags & NLM_F_DUMP_INTR:
                    interrupted = True
                if msg_type == NLMSG_DONE:
                    return out, interrupted
                if msg_type == NLMSG_ERROR:
                    code, message = _parse_ack(flags, payload)
                    if code:
                        raise OSError(code, f"{os.strerror(code)} {message}".strip())
                    if until_ack:
                        return out, interrupted
                    continue
                if msg_type in (NLMSG_NOOP, NLMSG_OVERRUN):
                    continue
                parsed = parse(msg_type, payload)
                if parsed is not None:
                    out.append(parsed)

    def _receive(self) -> Iterable[tuple[int, int, int, bytes]]:
        data = self._recv()
        offset = 0
        while offset + _HEADER.size <= len(data):
            length, msg_type, flags, seq, _ = _HEADER.unpack_from(data, offset)
            if length < _HEADER.size:
                break
            yield msg_type, flags, seq, data[offset : offset + length]
            offset += (length + 3) & ~3

    def _recv(self) -> bytes:
        try:
            return self._sock.recv(1 << 18)
        except BlockingIOError:
            pass
        deadline = time.monotonic() + RECEIVE_TIMEOUT
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not self._poll.poll(left * 1000):
                raise TimeoutError(f"netlink: no answer within {RECEIVE_TIMEOUT:.0f} s")
            try:
                return self._sock.recv(1 << 18)
            except BlockingIOError:
                continue

    def close(self) -> None:
        self._sock.close()


def _frame(msg_type: int, flags: int, body: bytes | nlmsg) -> bytearray:
    """nlmsghdr + body; a pyroute2 message is encoded by pyroute2 (header included)."""
    if isinstance(body, bytes | bytearray):
        return bytearray(_HEADER.pack(_HEADER.size + len(body), msg_type, flags, 0, 0)) + body
    body["header"] = {"type": msg_type, "flags": flags}
    body.encode()
    return bytearray(body.data)


_DELETES = frozenset({25, 33, 105})  # RTM_DELROUTE, RTM_DELRULE, RTM_DELNEXTHOP


def _already_gone(msg_type: int, code: int) -> bool:
    # The kernel removes a route (and a nexthop) by itself when its device goes away, e.g.
    # a pod's End.DX6 SID when CNI DEL deletes the pod's veth: deleting it again is done.
    return msg_type in _DELETES and code in (errno.ESRCH, errno.ENOENT)


def _benign_after_retry(flags: int, code: int, retried: bool) -> bool:
    # A retried create that now finds its object, or a retried delete that no longer finds
    # it, means an earlier attempt did land (its reply was the one that failed).
    if not retried:
        return False
    creating = flags & (NLM_F_CREATE | NLM_F_EXCL) == NLM_F_CREATE | NLM_F_EXCL
    return (creating and code == errno.EEXIST) or (not creating and code == errno.ENOENT)


def _parse_ack(flags: int, message: bytes) -> tuple[int, str]:
    """(positive errno or 0, extended-ack text) of an NLMSG_ERROR message."""
    (code,) = _ERRNO.unpack_from(message, _HEADER.size)
    offset = _HEADER.size + _ERRNO.size
    original_length = _HEADER.unpack_from(message, offset)[0]
    offset += _HEADER.size if flags & NLM_F_CAPPED else original_length
    text = ""
    if flags & NLM_F_ACK_TLVS:
        while offset + 4 <= len(message):
            nla_len, nla_type = struct.unpack_from("=HH", message, offset)
            if nla_len < 4:
                break
            if nla_type & 0x3FFF == NLMSGERR_ATTR_MSG:
                text = message[offset + 4 : offset + nla_len].rstrip(b"\0").decode(errors="replace")
            offset += (nla_len + 3) & ~3
    return -code, text
