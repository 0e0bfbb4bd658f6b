"""VPP's binary API over its socket: definitions, the CRC check, calls, dumps and pipelines.

The only module that touches `vpp_papi`'s client. It loads the `*.api.json` definitions of
the VPP release we speak (`SUPPORTED_RELEASES`), connects to VPP's API socket
(`socksvr { socket-name ... }`), and refuses to go on when the running VPP's message table
disagrees with those definitions for any message we use: the error names the message and
both CRCs, because a silent mismatch encodes fields at the wrong offsets.

Where the definitions come from, first hit wins: the `api_dir` argument,
`$SRV6CTL_VPP_API_DIR`, `../shared/vpp-api/` beside the checkout, then the places a VPP
package installs them (`/usr/share/vpp/api`). They must be those of the running VPP.

Calls:
- `call(name, **fields)`: one request, one reply; a non-zero `retval` raises `VppError`.
- `dump(name, **fields)`: the details of a dump (old-style dumps end with VPP's
  control_ping, new-style ones with their `_reply`; both come back as a list).
- `pipeline(requests, window)`: many requests without waiting for each reply. VPP handles
  the messages of one client socket in order, one after the other, so pipelining keeps the
  order of a plan; only the waiting goes. Replies are matched back by context. After the
  first failure no further request is sent (those in flight are still collected), so
  what was applied is a prefix of the requests, up to `window - 1` beyond the failure.

`vpp_papi` reads the socket in a thread of its own and hands us replies through a queue,
so a reply that arrives while we are still writing is never lost and VPP never blocks on a
full socket. One lock serialises callers: the agent's loop and a /metrics scrape share
this channel. A lost socket (VPP died or restarted) raises `VppUnavailable`; `connect()`
makes a fresh client.
"""

from __future__ import annotations

import logging
import os
import queue
import struct
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SUPPORTED_RELEASES = ("25.10",)
API_DIR_ENV = "SRV6CTL_VPP_API_DIR"
DEFAULT_API_SOCKET = "/run/vpp/api.sock"
INSTALLED_API_DIRS = ("/usr/share/vpp/api",)

# Messages every VppBackend uses (requests; their replies/details are checked with them).
CORE_MESSAGES = (
    "control_ping",
    "show_version",
    "cli_inband",
    "sr_set_encap_source",
    "sr_localsid_add_del",
    "sr_localsids_dump",
    "sr_localsids_with_packet_stats_dump",
    "sr_policy_add",
    "sr_policy_mod",
    "sr_policy_del",
    "sr_policies_with_sl_index_dump",
    "sr_policies_v2_dump",
    "sr_steering_add_del",
    "sr_steering_pol_dump",
    "ip_table_add_del",
    "ip_table_dump",
    "ip_route_add_del",
    "ip_route_v2_dump",
    "sw_interface_dump",
    "sw_interface_set_flags",
    "sw_interface_tag_add_del",
    "sw_interface_set_table",
    "sw_interface_get_table",
    "sw_interface_ip6_enable_disable",
    "sw_interface_ip6_set_link_local_address",
    "sw_interface_ip6_get_link_local_address",
)
AF_PACKET_MESSAGES = ("af_packet_create_v3", "af_packet_delete", "af_packet_dump")
TAP_MESSAGES = ("tap_create_v3", "tap_delete_v2", "sw_interface_tap_v2_dump")
# The pods' gateway: a loopback holding the node's gateway addresses, pod ports unnumbered.
GATEWAY_MESSAGES = (
    "create_loopback_instance",
    "sw_interface_add_del_address",
    "sw_interface_set_unnumbered",
    "ip_unnumbered_dump",
    "ip_address_dump",
    "ip_neighbor_add_del",
    "ip_neighbor_dump",
)
# Used only when a policy has an encap source of its own (VPP marks them "in progress").
POLICY_SOURCE_MESSAGES = ("sr_policy_add_v2", "sr_policy_mod_v2")
# Memif pods (CNFs); optional: a VPP without the memif plugin serves every other pod.
MEMIF_MESSAGES = (
    "memif_socket_filename_add_del_v2",
    "memif_socket_filename_dump",
    "memif_create_v2",
    "memif_delete",
    "memif_dump",
)


# The socket transport's frame header (vpp_transport_socket: ">QII", length in the middle).
_FRAME = struct.Struct(">QII")
_HEADER = struct.Struct(">HII")  # _vl_msg_id, client_index, context: every request's start
_WRITE_BATCH = 64  # pipelined frames per write(2)


def _speed_up(client: Any) -> None:
    """Two changes to vpp-papi's socket transport for pipelining, same behaviour:

    - its reader thread hands replies over in a multiprocessing.Queue, which pickles each
      one through a pipe and a feeder thread — a third of a pipelined apply's time — to a
      reader in the same process: a plain queue.Queue does the same job;
    - it asks `has_context` of every incoming message, which builds (and registers) a new
      VPPType with a namedtuple each time: looked up once per message id instead.

    Left alone if this vpp-papi is shaped differently (then it is only slower).
    """
    transport = client.transport
    if hasattr(transport, "q") and hasattr(transport.q, "get"):
        transport.q = queue.Queue()
    if callable(getattr(client, "has_context", None)) and hasattr(client, "id_msgdef"):
        header = struct.Struct(">H")
        definitions = client.id_msgdef
        names = client.id_names

        def has_context(msg: bytes) -> bool | None:
            if len(msg) < 10:
                return False
            (index,) = header.unpack_from(msg, 0)
            if index >= len(definitions) or definitions[index] is None:
                return False
            if names[index] == "rx_thread_exit":
                return None
            return "context" in definitions[index].field_by_name

        client.has_context = has_context


_REPLY_HEAD = struct.Struct(">HIi")  # _vl_msg_id, context, retval


def _reply_status(client: Any, raw: bytes) -> tuple[int, int]:
    """(context, retval) of a reply, read straight from its first fields when the
    definitions say every reply starts with them (all `*_reply` messages do), else
    decoded; (-1, 0) for a message without a context (an event)."""
    (index,) = struct.unpack_from(">H", raw, 0)
    definitions = client.id_msgdef
    message = definitions[index] if index < len(definitions) else None
    if message is None:
        return -1, 0
    if message.fields[:3] == ["_vl_msg_id", "context", "retval"] and len(raw) >= 10:
        _, context, retval = _REPLY_HEAD.unpack_from(raw, 0)
        return context, retval
    decoded = client.decode_incoming_msg(raw)
    return getattr(decoded, "context", -1), getattr(decoded, "retval", 0)


class VppApiError(RuntimeError):
    """The API definitions are missing, or do not match the running VPP."""


class VppUnavailable(ConnectionError):
    """No VPP answers on the API socket (not started yet, died, or restarting)."""


class VppError(RuntimeError):
    """VPP refused a request: `retval` is its (negative) return value."""

    def __init__(self, request: Request, retval: int) -> None:
        self.request = request
        self.retval = retval
        super().__init__(f"{request.name} ({request.describe()}): VPP returned {retval}")


@dataclass(frozen=True)
class Request:
    """One VPP API request: the message name, its fields, and what it does (for errors;
    a callable is only called when there is an error to report)."""

    name: str
    fields: Mapping[str, Any] = field(default_factory=dict)
    what: str | Callable[[], str] = ""

    def describe(self) -> str:
        return self.what() if callable(self.what) else self.what


def find_api_dir(explicit: str | os.PathLike[str] | None = None) -> Path | None:
    """Where the `*.api.json` files are (see the module docstring), or None."""
    candidates: list[Path] = []
    if explicit is not None:
        return Path(explicit) if _has_api_files(Path(explicit)) else None
    if os.environ.get(API_DIR_ENV):
        candidates.append(Path(os.environ[API_DIR_ENV]))
    checkout = Path(__file__).resolve().parents[2]
    candidates.append(checkout.parent / "shared" / "vpp-api")
    candidates.extend(Path(d) for d in INSTALLED_API_DIRS)
    for candidate in candidates:
        if _has_api_files(candidate):
            return candidate
    return None


def _has_api_files(path: Path) -> bool:
    return path.is_dir() and any(path.glob("**/*.api.json"))


def load_client(api_dir: Path, api_socket: str = DEFAULT_API_SOCKET, timeout: float = 10.0) -> Any:
    """A `VPPApiClient` with the definitions of `api_dir`, not connected.

    Without a connection it still packs and unpacks every message (`client.messages[name]`),
    which is what the message-layer tests use.
    """
    try:
        from vpp_papi import VPPApiClient
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise VppApiError("the VPP backend needs vpp-papi (pip install vpp-papi)") from err
    files = sorted(str(p) for p in api_dir.glob("**/*.api.json"))
    if not files:
        raise VppApiError(f"no *.api.json files in {api_dir}")
    return VPPApiClient(
        apifiles=files,
        use_socket=True,
        server_address=api_socket,
        read_timeout=timeout,
        async_thread=False,
    )


def message_names(client: Any, requests: Iterable[str]) -> list[str]:
    """The requests and every reply/details message they bring (for the CRC check)."""
    names: list[str] = []
    for name in requests:
        names.append(name)
        service = client.services.get(name, {})
        for key in ("reply", "stream_msg"):
            reply = service.get(key)
            if reply and reply != "null":
                names.append(reply)
    return names


def crc_mismatches(client: Any, names: Iterable[str], table: Mapping[str, int]) -> list[str]:
    """Why `table` (a running VPP's `name_crc` → index) cannot serve `names`, one line each."""
    vpp_crcs: dict[str, str] = {}
    for name_crc in table:
        name, _, crc = name_crc.rpartition("_")
        vpp_crcs[name] = "0x" + crc
    problems = []
    for name in names:
        ours = client.messages[name].crc if name in client.messages else None
        theirs = vpp_crcs.get(name)
        if ours is None:
            problems.append(f"{name}: not in the API definitions")
        elif theirs is None:
            problems.append(f"{name}: the running VPP has no such message (plugin not loaded?)")
        elif theirs != ours:
            problems.append(f"{name}: VPP has CRC {theirs}, the API definitions have {ours}")
    return problems


class VppChannel:
    """One connection to VPP's API socket (see the module docstring)."""

    def __init__(
        self,
        api_socket: str = DEFAULT_API_SOCKET,
        *,
        api_dir: str | os.PathLike[str] | None = None,
        messages: Sequence[str] = CORE_MESSAGES,
        optional_messages: Sequence[str] = POLICY_SOURCE_MESSAGES,
        client_name: str = "srv6ctl",
        timeout: float = 10.0,
        fast_packers: Mapping[str, tuple[str, Callable[[Mapping[str, Any]], bytes]]] | None = None,
    ) -> None:
        found = find_api_dir(api_dir)
        if found is None:
            where = api_dir or f"${API_DIR_ENV}, ../shared/vpp-api or /usr/share/vpp/api"
            raise VppApiError(
                f"no VPP API definitions (*.api.json) in {where}: they must be those of the "
                f"running VPP (srv6ctl supports VPP {', '.join(SUPPORTED_RELEASES)})"
            )
        self.api_dir = found
        self.api_socket = api_socket
        self.client_name = client_name
        self.timeout = timeout
        self._required = tuple(messages)
        self._optional = tuple(optional_messages)
        self.available: frozenset[str] = frozenset()
        self._fast_packers = dict(fast_packers or {})  # name → (definitions' CRC, packer)
        self._fast: dict[str, Callable[[Mapping[str, Any]], bytes]] = {}
        self._lock = threading.RLock()
        self._client: Any = None
        self._contexts = 0
        self.writes = 0  # state-changing requests sent
        self.round_trips = 0  # waits for VPP with nothing else in flight
        self.version = ""

    # --- connection -------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        client = self._client
        if client is None:
            return False
        thread = getattr(client.transport, "message_thread", None)
        return bool(client.transport.connected) and thread is not None and thread.is_alive()

    def connect(self) -> None:
        """Connect (again) and check the CRCs; raises VppUnavailable or VppApiError."""
        with self._lock:
            self._drop()
            client = load_client(self.api_dir, self.api_socket, self.timeout)
            try:
                client.connect(self.client_name)
            except (OSError, client.VPPIOError) as err:
                raise VppUnavailable(f"VPP API socket {self.api_socket}: {err}") from err
            _speed_up(client)
            table = dict(client.transport.message_table)
            problems = crc_mismatches(client, message_names(client, self._required), table)
            if problems:
                client.disconnect()
                raise VppApiError(
                    f"the VPP on {self.api_socket} does not speak the API of {self.api_dir} "
                    f"(srv6ctl supports VPP {', '.join(SUPPORTED_RELEASES)}): "
                    + "; ".join(problems)
                )
            optional = [
                name
                for name in self._optional
                if not crc_mismatches(client, message_names(client, [name]), table)
            ]
            self.available = frozenset((*self._required, *optional))
            self._fast = {
                name: packer
                for name, (crc, packer) in self._fast_packers.items()
                if name in client.messages and client.messages[name].crc == crc
            }
            self._client = client
            reply = self.call("show_version")
            self.version = str(reply.version)
            log.info("connected to VPP %s on %s", self.version, self.api_socket)

    def close(self) -> None:
        with self._lock:
            self._drop()

    def _drop(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                client.disconnect()
            except Exception as err:  # a dead socket: nothing left to release
                log.debug("disconnect: %s", err)

    def _live(self) -> Any:
        if self._client is None or not self.connected:
            raise VppUnavailable(f"not connected to VPP on {self.api_socket}")
        return self._client

    # --- messages ---------------------------------------------------------------------

    def messages(self) -> Mapping[str, Any]:
        return self._live().messages  # type: ignore[no-any-return]

    def _frame(self, client: Any, request: Request) -> tuple[int, bytes]:
        """A new context and the request packed with it, framed for the socket."""
        message = client.messages[request.name]
        index = client.transport.get_msg_index(f"{request.name}_{message.crc[2:]}")
        if index <= 0:
            raise VppApiError(f"the running VPP has no message {request.name}")
        self._contexts = self._contexts % 0x7FFF_FFFF + 1
        fast = self._fast.get(request.name)
        if fast is not None:
            head = _HEADER.pack(index, client.transport.socket_index, self._contexts)
            body = head + fast(request.fields)
        else:
            fields = dict(request.fields)
            fields["_vl_msg_id"] = index
            fields["client_index"] = client.transport.socket_index
            fields["context"] = self._contexts
            body = message.pack(fields)
        return self._contexts, _FRAME.pack(0, len(body), 0) + body

    def _write(self, client: Any, frames: Sequence[bytes]) -> None:
        """Frames out in one write: VPP reads them off the socket in order."""
        if not frames:
            return
        try:
            client.transport.socket.sendall(b"".join(frames))
        except (OSError, AttributeError) as err:
            self._drop()
            raise VppUnavailable(f"VPP API socket {self.api_socket}: {err}") from err

    def _send(self, client: Any, request: Request, *, write: bool) -> int:
        context, frame = self._frame(client, request)
        self._write(client, [frame])
        if write:
            self.writes += 1
        return context

    def _receive(self, client: Any) -> Any:
        cause: OSError | None = None
        try:
            reply = client.read_blocking(timeout=self.timeout)
        except OSError as err:
            reply, cause = None, err
        if reply is None:
            self._drop()
            raise VppUnavailable(
                f"no answer from VPP on {self.api_socket} within {self.timeout}s"
            ) from cause
        return reply

    def _receive_raw(self, client: Any) -> bytes:
        """The next message, undecoded (pipelines only need its context and retval)."""
        cause: OSError | None = None
        try:
            raw = client.transport.read(timeout=self.timeout)
        except OSError as err:
            raw, cause = None, err
        if not raw:
            self._drop()
            raise VppUnavailable(
                f"no answer from VPP on {self.api_socket} within {self.timeout}s"
            ) from cause
        return bytes(raw)

    def call(
        self, name: str, *, write: bool = False, what: str | Callable[[], str] = "", **fields: Any
    ) -> Any:
        """One request and its reply; raises VppError on a non-zero retval."""
        request = Request(name, fields, what or name)
        with self._lock:
            client = self._live()
            context = self._send(client, request, write=write)
            self.round_trips += 1
            while True:
                reply = self._receive(client)
                if getattr(reply, "context", None) == context:
                    break
        retval = getattr(reply, "retval", 0)
        if retval:
            raise VppError(request, retval)
        return reply

    def dump(self, name: str, **fields: Any) -> list[Any]:
        """Every details message of dump `name` (old-style or new-style)."""
        with self._lock:
            client = self._live()
            service = client.services[name]
            details_name = service.get("stream_msg", service["reply"])
            end = service["reply"] if "stream_msg" in service else "control_ping_reply"
            context = self._send(client, Request(name, fields, name), write=False)
            if "stream_msg" not in service:
                ping = client.messages["control_ping"]
                index = client.transport.get_msg_index(f"control_ping_{ping.crc[2:]}")
                ping_fields = {
                    "_vl_msg_id": index,
                    "client_index": client.transport.socket_index,
                    "context": context,
                }
                client.transport.write(ping.pack(ping_fields))
            self.round_trips += 1
            details: list[Any] = []
            while True:
                reply = self._receive(client)
                if getattr(reply, "context", None) != context:
                    continue
                kind = type(reply).__name__
                if kind == details_name:
                    details.append(reply)
                elif kind == end:
                    return details

    def pipeline(
        self,
        requests: Sequence[Request],
        *,
        window: int = 256,
        write: bool = True,
        on_reply: Callable[[int, Any], None] | None = None,
    ) -> Pipelined:
        """Send `requests` with up to `window` in flight (see the module docstring).

        `on_reply(i, reply)` is called for every successful reply. Stops sending at the
        first failure; `sent` says how many requests went out (the rest were not sent).
        """
        failures: dict[int, VppError] = {}
        sent = 0
        if not requests:
            return Pipelined((), 0)
        window = max(1, window)
        with self._lock:
            client = self._live()
            pending: dict[int, int] = {}  # context -> request index

            def collect() -> None:
                if len(pending) == 1:
                    self.round_trips += 1  # nothing else in flight: a full round trip
                raw = self._receive_raw(client)
                context, retval = _reply_status(client, raw)
                position = pending.pop(context, None)
                if position is None:
                    return  # not ours (an event, or a reply we gave up on)
                if retval:
                    failures[position] = VppError(requests[position], retval)
                elif on_reply is not None:
                    on_reply(position, client.decode_incoming_msg(raw))

            out: list[bytes] = []  # framed, not yet written
            for position, request in enumerate(requests):
                if failures:
                    break
                if len(pending) >= window:
                    self._write(client, out)
                    out.clear()
                    while len(pending) > window // 2:  # then refill in one write
                        collect()
                context, frame = self._frame(client, request)
                out.append(frame)
                pending[context] = position
                sent = position + 1
                if write:
                    self.writes += 1
                if len(out) >= _WRITE_BATCH:
                    self._write(client, out)
                    out.clear()
            self._write(client, out)
            while pending:
                collect()
        return Pipelined(tuple(failures[i] for i in sorted(failures)), sent)


@dataclass(frozen=True)
class Pipelined:
    """What `VppChannel.pipeline` did: the refusals in request order, and how many
    requests were sent (after a refusal, the rest are not)."""

    failures: tuple[VppError, ...]
    sent: int


def wait_for_vpp(channel: VppChannel, timeout: float, *, first_delay: float = 0.1) -> None:
    """Connect, retrying with exponential back-off for up to `timeout` seconds."""
    deadline = time.monotonic() + timeout
    delay = first_delay
    while True:
        try:
            channel.connect()
            return
        except VppUnavailable:
            left = deadline - time.monotonic()
            if left <= 0:
                raise
            time.sleep(min(delay, left))
            delay = min(delay * 2, 5.0)


__all__ = [
    "AF_PACKET_MESSAGES",
    "API_DIR_ENV",
    "CORE_MESSAGES",
    "DEFAULT_API_SOCKET",
    "GATEWAY_MESSAGES",
    "MEMIF_MESSAGES",
    "POLICY_SOURCE_MESSAGES",
    "SUPPORTED_RELEASES",
    "TAP_MESSAGES",
    "Pipelined",
    "Request",
    "VppApiError",
    "VppChannel",
    "VppError",
    "VppUnavailable",
    "crc_mismatches",
    "find_api_dir",
    "load_client",
    "message_names",
    "wait_for_vpp",
]
