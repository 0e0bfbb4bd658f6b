"""A netlink socket in a network namespace: pipelined writes with per-message acks, dumps.

pyroute2 0.9's `IPRoute` waits for one round trip per request and runs an asyncio loop
underneath; at tens of thousands of routes that is the bottleneck. Here the messages are
still pyroute2 messages (encoded and decoded by pyroute2), but many of them go out in one
`send()`: the kernel processes every message of a datagram in order and answers each
with its own ack (NLM_F_ACK), so one datagram carries a whole stage of independent
writes and the acks say exactly which ones failed.

ENOMEM and ENOBUFS are retried with back-off rather than reported: on this kernel a
burst of seg6 routes or nexthops fails with ENOMEM because each seg6 lightweight tunnel
allocates a per-CPU dst cache with GFP_ATOMIC (net/ipv6/seg6_iptunnel.c, seg6_build_state),
and atomic per-CPU allocations cannot grow the per-CPU pool — they wait for the pool's
background balancer to refill it. A short pause is enough; the write itself is fine.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
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
_FIRST_PAUSE = 0.001
_LAST_PAUSE = 1.0


@dataclass
class Request:
    """One netlink write: its type, NLM_F_* flags and body — the bytes after the nlmsghdr
    (see netlink_wire), or a pyroute2 message to encode."""

    msg_type: int
    flags: int
    body: bytes | nlmsg
    what: object  # the object it programs; only formatted if the write fails
    wire: bytearray = field(default_factory=bytearray, repr=False)
    retried: bool = False


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
        chunk: int = 256,
        retry_deadline: float = 60.0,
    ) -> None:
        self.netns = netns
        self.chunk = chunk
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
        self._sock.settimeout(30.0)

    # --- writes -----------------------------------------------------------------------

    def execute(self, requests: Sequence[Request]) -> list[Failure]:
        """Send independent writes, pipelined; return the ones that failed for good.

        A datagram whose writes meet ENOMEM/ENOBUFS is followed by a pause before the
        failed writes go again, ahead of the rest: 1 ms while datagrams still make
        progress (the per-CPU pool's balancer refills a few pages per run, and each
        failure schedules a run), doubling up to 1 s while nothing gets through.
        """
        for request in requests:
            flags = NLM_F_REQUEST | NLM_F_ACK | request.flags
            request.wire = _frame(request.msg_type, flags, request.body)
        failures: list[Failure] = []
        queue = deque(requests)
        delay = _FIRST_PAUSE
        deadline = time.monotonic() + self.retry_deadline
        while queue:
            batch = [queue.popleft() for _ in range(min(self.chunk, len(queue)))]
            retry: list[Request] = []
            progress = False
            for request, code, message in self._round_trip(batch):
                if code == 0 or self._benign_after_retry(request, code):
                    progress = True
                    continue
                if code in RETRYABLE and time.monotonic() < deadline:
                    request.retried = True
                    retry.append(request)
                else:
                    failures.append(Failure(request, code, message))
            if retry:
                self.retries += len(retry)
                queue.extendleft(reversed(retry))
                delay = _FIRST_PAUSE if progress else min(delay * 2, _LAST_PAUSE)
                time.sleep(delay)
        return failures

    @staticmethod
    def _benign_after_retry(request: Request, code: int) -> bool:
        # A retried create that now finds its object, or a retried delete that no longer
        # finds it, means an earlier attempt did land (its ack was the one that failed).
        if not request.retried:
            return False
        creating = request.flags & (NLM_F_CREATE | NLM_F_EXCL) == NLM_F_CREATE | NLM_F_EXCL
        return (creating and code == errno.EEXIST) or (not creating and code == errno.ENOENT)

    def _round_trip(self, batch: Sequence[Request]) -> Iterable[tuple[Request, int, str]]:
        by_seq: dict[int, Request] = {}
        datagram = bytearray()
        for request in batch:
            seq = self._next_seq()
            struct.pack_into("=I", request.wire, 8, seq)
            by_seq[seq] = request
            datagram += request.wire
        while True:
            try:
                self._sock.send(datagram)
                break
            except OSError as exc:
                if exc.errno not in RETRYABLE:
                    raise
                time.sleep(0.01)
        self.writes += len(batch)
        self.writes_by_type.update(request.msg_type for request in batch)
        answered: list[tuple[Request, int, str]] = []
        while len(answered) < len(batch):
            for msg_type, flags, seq, payload in self._receive():
                if msg_type != NLMSG_ERROR or seq not in by_seq:
                    continue
                code, message = _parse_ack(flags, payload)
                answered.append((by_seq.pop(seq), code, message))
        return answered

    # --- reads ------------------------------------------------------------------------

    def dump(
        self, msg_type: int, body: bytes | nlmsg, parse: Callable[[int, bytes], T | None]
    ) -> list[T]:
        """A NLM_F_DUMP request; restarted if the kernel flags it inconsistent."""
        wire = _frame(msg_type, NLM_F_REQUEST | NLM_F_DUMP, body)
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
        data = self._sock.recv(1 << 18)
        offset = 0
        while offset + _HEADER.size <= len(data):
            length, msg_type, flags, seq, _ = _HEADER.unpack_from(data, offset)
            if length < _HEADER.size:
                break
            yield msg_type, flags, seq, data[offset : offset + length]
            offset += (length + 3) & ~3

    def close(self) -> None:
        self._sock.close()


def _frame(msg_type: int, flags: int, body: bytes | nlmsg) -> bytearray:
    """nlmsghdr + body; a pyroute2 message is encoded by pyroute2 (header included)."""
    if isinstance(body, bytes | bytearray):
        return bytearray(_HEADER.pack(_HEADER.size + len(body), msg_type, flags, 0, 0)) + body
    body["header"] = {"type": msg_type, "flags": flags}
    body.encode()
    return bytearray(body.data)


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
