"""The CNI contract shared by the shim and the agent: validation, error codes, results, framing.

Both sides run the same checks: the shim so that a malformed call fails fast with the
right code even when no agent is running, the agent because its socket is an API of its
own. The shim imports this module on every pod ADD, where interpreter start-up is most of
the cost, so it imports little beyond built-in modules: no `dataclasses` (6 ms), `typing`
(2 ms), `struct`. `json` (with the `re` and `enum` it pulls in, 7-10 ms under `python -I -S`)
is the one exception: a JSON parser of our own, or CPython's private `_json` scanner driven
by hand, cost less but failed on bad input with internal errors (issue #15).

Error codes are the CNI spec 1.1 table ("Error" in SPEC.md section 5); 100+ are ours.
"""

from __future__ import annotations

import json

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy honours the name)
if TYPE_CHECKING:
    import _socket
    from collections.abc import Mapping
    from typing import Any

CNI_VERSION = "1.1.0"
SUPPORTED_VERSIONS = ("0.4.0", "1.0.0", "1.1.0")
COMMANDS = ("ADD", "DEL", "CHECK", "STATUS", "GC", "VERSION")
DEFAULT_AGENT_SOCKET = "/run/srv6ctl/cni.sock"
DEFAULT_TIMEOUT_S = 60.0  # kubelet's own CNI timeout is longer; a stuck agent must not pin it
MAX_TIMEOUT_S = 3600.0  # far past any runtime's own; and socket timeouts overflow near 1e10 s
VALID_ATTACHMENTS = "cni.dev/valid-attachments"

# --- JSON --------------------------------------------------------------------------------


_INFINITY = float("inf")


def _refuse_constant(name: str) -> Any:
    # NaN and Infinity are not JSON (RFC 8259 section 6); Go's encoding/json, which libcni
    # and the reference plugins use, refuses them too.
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    # 1e999 is valid JSON but no float: Go refuses it ("cannot unmarshal number"); Python
    # would make it inf, which later fails far from the input (settimeout, json.dumps).
    value = float(text)
    if value in (_INFINITY, -_INFINITY):
        raise ValueError(f"number {text} is out of range")
    return value


def loads(data: str | bytes) -> Any:
    """One JSON document; ValueError (UnicodeDecodeError, JSONDecodeError) when it is not."""
    # UTF-8 only, as RFC 8259 section 8.1 asks: json.loads would guess UTF-16/32 from bytes.
    text = data.decode("utf-8") if isinstance(data, bytes) else data
    try:
        return json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except RecursionError:
        # The C decoder recurses once per level: `[` * 100000 exhausts the stack. Raised
        # from the decoder's own frames, so the stack is whole again when we get here.
        raise ValueError("JSON nested too deeply") from None


def dumps(value: Any, *, compact: bool = False) -> str:
    """JSON text, ASCII only; ValueError for NaN/Infinity or nesting too deep to encode."""
    try:
        return json.dumps(value, allow_nan=False, separators=(",", ":") if compact else None)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


# --- error codes ----------------------------------------------------------------------
INCOMPATIBLE_VERSION = 1
UNSUPPORTED_FIELD = 2
UNKNOWN_CONTAINER = 3
INVALID_ENVIRONMENT = 4
IO_FAILURE = 5
DECODING_FAILURE = 6
INVALID_CONFIG = 7
TRY_AGAIN_LATER = 11
NOT_AVAILABLE = 50
LIMITED_CONNECTIVITY = 51
# Plugin-specific codes (the spec reserves 0-99).
POOL_EXHAUSTED = 100
INTERFACE_SETUP_FAILED = 101
CHECK_FAILED = 102
INTERNAL_ERROR = 999  # libcni's ErrInternal: an agent bug, never a traceback on stdout

# CNI_CONTAINERID and network names: libcni's utils.cniReg, ^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$
_ALNUM = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
_NAME_CHARS = _ALNUM | frozenset("_.-")
_MAX_IFNAME = 15  # IFNAMSIZ - 1
_MIN_MTU = 1280  # IPv6 minimum link MTU (RFC 8200 section 5)
_MAX_MTU = 65535
_MAX_FRAME = 16 << 20  # a GC list of every attachment on a node fits many times over
_FRAME_HEADER_SIZE = 4  # big-endian length

# Env vars each command needs (spec section 2). CNI_PATH is only required for GC, where
# the spec says so; we never delegate, so we do not insist on it elsewhere.
_REQUIRED_ENV = {
    "ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
    "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
    "DEL": ("CNI_CONTAINERID", "CNI_IFNAME"),
    "GC": ("CNI_PATH",),
    "STATUS": (),
}
# STATUS and GC are new in spec 1.1.0 (libcni's skel refuses them on older configs too).
_MIN_VERSION = {"STATUS": "1.1.0", "GC": "1.1.0"}


class CniError(Exception):
    """A CNI error result: `code` from the spec table, a short `msg`, longer `details`."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(f"[{code}] {msg}" + (f": {details}" if details else ""))
        self.code = code
        self.msg = msg
        self.details = details

    def to_result(self, cni_version: str = CNI_VERSION) -> dict[str, Any]:
        return {
            "cniVersion": cni_version,
            "code": self.code,
            "msg": self.msg,
            "details": self.details,
        }

    @classmethod
    def from_result(cls, data: Mapping[str, Any]) -> CniError:
        return cls(
            int(data.get("code", INTERNAL_ERROR)),
            str(data.get("msg", "")),
            str(data.get("details", "")),
        )


def valid_name(name: str) -> bool:
    """A container ID or network name as the spec allows it."""
    return bool(name) and name[0] in _ALNUM and all(c in _NAME_CHARS for c in name)


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def error_version(config: object) -> str:
    """The cniVersion to put in an error result: the caller's, when we speak it."""
    if isinstance(config, dict):
        version = config.get("cniVersion")
        if version in SUPPORTED_VERSIONS:
            return str(version)
    return CNI_VERSION


class Request:
    """One validated CNI invocation: the env parameters plus the network config."""

    __slots__ = ("args", "command", "config", "container_id", "ifname", "netns", "path")

    def __init__(
        self,
        command: str,
        config: dict[str, Any],
        *,
        container_id: str = "",
        netns: str = "",
        ifname: str = "",
        args: str = "",
        path: str = "",
    ) -> None:
        self.command = command
        self.config = config
        self.container_id = container_id
        self.netns = netns
        self.ifname = ifname
        self.args = args
        self.path = path

    @property
    def cni_version(self) -> str:
        return str(self.config["cniVersion"])

    @property
    def agent_socket(self) -> str:
        return str(self.config.get("agentSocket", DEFAULT_AGENT_SOCKET))

    @property
    def timeout(self) -> float:
        return float(self.config.get("timeoutSeconds", DEFAULT_TIMEOUT_S))

    @property
    def cni_args(self) -> dict[str, str]:
        return parse_cni_args(self.args)

    def to_payload(self) -> dict[str, Any]:
        return {
            "command": self.command,
            "containerId": self.container_id,
            "netns": self.netns,
            "ifname": self.ifname,
            "args": self.args,
            "path": self.path,
            "config": self.config,
        }

    @classmethod
    def from_payload(cls, payload: object) -> Request:
        """Rebuild and re-validate a request the agent received on its socket."""
        if not isinstance(payload, dict):
            raise CniError(DECODING_FAILURE, "request is not a JSON object")
        fields = ("command", "containerId", "netns", "ifname", "args", "path")
        if not all(isinstance(payload.get(name, ""), str) for name in fields):
            raise CniError(DECODING_FAILURE, "request parameters must be strings")
        config = payload.get("config")
        if not isinstance(config, dict):
            raise CniError(DECODING_FAILURE, "request has no network config object")
        request = cls(
            payload.get("command", ""),
            config,
            container_id=payload.get("containerId", ""),
            netns=payload.get("netns", ""),
            ifname=payload.get("ifname", ""),
            args=payload.get("args", ""),
            path=payload.get("path", ""),
        )
        validate(request)
        return request


def decode_config(stdin: bytes) -> dict[str, Any]:
    """The network config from stdin; code 6 when it is not a JSON object."""
    try:
        config = loads(stdin)
    except ValueError as err:  # UnicodeDecodeError is one
        raise CniError(DECODING_FAILURE, "error decoding network config", str(err)) from None
    if not isinstance(config, dict):
        raise CniError(DECODING_FAILURE, "error decoding network config", "it is not a JSON object")
    return config


def request_from_env(environ: Mapping[str, str], stdin: bytes) -> Request:
    """Build and validate a request the way a runtime invokes us (env vars + stdin)."""
    command = environ.get("CNI_COMMAND", "")
    if command not in COMMANDS:
        raise CniError(
            INVALID_ENVIRONMENT,
            "required env variables [CNI_COMMAND] missing"
            if not command
            else f"unknown CNI_COMMAND: {command}",
            f"one of {', '.join(COMMANDS)}",
        )
    config = decode_config(stdin)
    request = Request(
        command,
        config,
        container_id=environ.get("CNI_CONTAINERID", ""),
        netns=environ.get("CNI_NETNS", ""),
        ifname=environ.get("CNI_IFNAME", ""),
        args=environ.get("CNI_ARGS", ""),
        path=environ.get("CNI_PATH", ""),
    )
    validate(request)
    return request


def validate(request: Request) -> None:
    """Every check that needs no agent, in libcni's order: env, version, config."""
    _validate_env(request)
    _validate_version(request.command, request.config)
    _validate_config(request)


def _validate_env(request: Request) -> None:
    if request.command not in _REQUIRED_ENV:
        raise CniError(INVALID_ENVIRONMENT, f"unknown CNI_COMMAND: {request.command}")
    values = {
        "CNI_CONTAINERID": request.container_id,
        "CNI_NETNS": request.netns,
        "CNI_IFNAME": request.ifname,
        "CNI_PATH": request.path,
    }
    missing = [name for name in _REQUIRED_ENV[request.command] if not values[name]]
    if missing:
        raise CniError(INVALID_ENVIRONMENT, f"required env variables [{','.join(missing)}] missing")
    if request.container_id and not valid_name(request.container_id):
        raise CniError(
            INVALID_ENVIRONMENT,
            "invalid characters in CNI_CONTAINERID",
            f"{request.container_id!r}: it must start with a letter or digit, then letters, "
            "digits, '_', '.' or '-'",
        )
    if request.ifname:
        problem = interface_name_problem(request.ifname)
        if problem:
            raise CniError(INVALID_ENVIRONMENT, f"invalid CNI_IFNAME {request.ifname!r}", problem)
    if request.netns and not request.netns.startswith("/"):
        raise CniError(INVALID_ENVIRONMENT, f"CNI_NETNS {request.netns!r} must be an absolute path")
    try:
        parse_cni_args(request.args)
    except ValueError as err:
        raise CniError(INVALID_ENVIRONMENT, "invalid CNI_ARGS", str(err)) from None


def interface_name_problem(name: str) -> str:
    """Why `name` cannot be a Linux interface name ('' when it can): the spec's rules."""
    if not name:
        return "it is empty"
    if len(name) > _MAX_IFNAME:
        return f"it is longer than {_MAX_IFNAME} characters"
    if name in (".", ".."):
        return "it is '.' or '..'"
    if any(c in "/:" or c.isspace() for c in name):
        return "it contains '/', ':' or whitespace"
    return ""


def parse_cni_args(text: str) -> dict[str, str]:
    """`K8S_POD_NAMESPACE=a;K8S_POD_NAME=b` -> dict; ValueError on a pair without '='."""
    args: dict[str, str] = {}
    for pair in text.split(";"):
        if not pair:
            continue
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"{pair!r} is not KEY=VALUE")
        args[key] = value
    return args


def _validate_version(command: str, config: dict[str, Any]) -> None:
    version = config.get("cniVersion")
    if version is None:
        # libcni reads a missing cniVersion as 0.1.0, which predates everything we speak.
        raise CniError(
            INCOMPATIBLE_VERSION,
            "incompatible CNI versions",
            'config has no cniVersion (libcni reads that as "0.1.0"), plugin supports '
            f"{list(SUPPORTED_VERSIONS)}",
        )
    if not isinstance(version, str):
        raise CniError(DECODING_FAILURE, "cniVersion must be a string", repr(version))
    if version not in SUPPORTED_VERSIONS:
        raise CniError(
            INCOMPATIBLE_VERSION,
            "incompatible CNI versions",
            f"config is {version!r}, plugin supports {list(SUPPORTED_VERSIONS)}",
        )
    needed = _MIN_VERSION.get(command)
    if needed and _version_tuple(version) < _version_tuple(needed):
        raise CniError(
            INCOMPATIBLE_VERSION,
            f"config version {version} does not allow {command}",
            f"{command} needs cniVersion {needed} or later",
        )


def _validate_config(request: Request) -> None:
    config = request.config
    name = config.get("name")
    if not isinstance(name, str) or not name:
        raise CniError(INVALID_CONFIG, "missing network name")
    if not valid_name(name):
        raise CniError(INVALID_CONFIG, "invalid characters found in network name", name)
    plugin_type = config.get("type")
    if not isinstance(plugin_type, str) or not plugin_type:
        raise CniError(INVALID_CONFIG, "missing plugin type")
    socket_path = config.get("agentSocket", DEFAULT_AGENT_SOCKET)
    if not isinstance(socket_path, str) or not socket_path.startswith("/"):
        raise CniError(INVALID_CONFIG, "agentSocket must be an absolute path", repr(socket_path))
    mtu = config.get("mtu")
    if mtu is not None and (
        not isinstance(mtu, int) or isinstance(mtu, bool) or not _MIN_MTU <= mtu <= _MAX_MTU
    ):
        raise CniError(
            INVALID_CONFIG, f"mtu must be an integer in {_MIN_MTU}..{_MAX_MTU}", repr(mtu)
        )
    timeout = config.get("timeoutSeconds", DEFAULT_TIMEOUT_S)
    if (
        not isinstance(timeout, int | float)
        or isinstance(timeout, bool)
        or not 0 < timeout <= MAX_TIMEOUT_S
    ):
        raise CniError(
            INVALID_CONFIG,
            f"timeoutSeconds must be a number in (0, {MAX_TIMEOUT_S:g}]",
            repr(timeout),
        )
    dns = config.get("dns")
    if dns is not None and not isinstance(dns, dict):
        raise CniError(INVALID_CONFIG, "dns must be an object", repr(dns))
    # Fields we understand but refuse: silently ignoring them would give the operator a
    # network that differs from the one they configured. The spec wants key and value.
    if "ipam" in config:
        raise CniError(
            UNSUPPORTED_FIELD,
            f"unsupported field ipam={dumps(config['ipam'])}",
            "srv6-cni allocates pod addresses from the cluster address plan (ipam6); "
            "remove the ipam section",
        )
    if config.get("ipMasq"):
        raise CniError(
            UNSUPPORTED_FIELD,
            f"unsupported field ipMasq={dumps(config['ipMasq'])}",
            "srv6-cni routes pod addresses without NAT by design",
        )
    prev = config.get("prevResult")
    if prev is not None and not isinstance(prev, dict):
        raise CniError(DECODING_FAILURE, "prevResult is not a JSON object", repr(prev))
    if request.command == "CHECK" and prev is None:
        raise CniError(INVALID_CONFIG, "CHECK needs prevResult (the result of the ADD)")
    if request.command == "GC":
        valid_attachments(config)


def valid_attachments(config: Mapping[str, Any]) -> set[tuple[str, str]]:
    """The GC input `cni.dev/valid-attachments` as (container ID, ifname) pairs."""
    entries = config.get(VALID_ATTACHMENTS)
    if not isinstance(entries, list):
        # Absent means "no list", not "nothing is valid": refuse rather than wipe the node.
        raise CniError(INVALID_CONFIG, f"GC needs the {VALID_ATTACHMENTS} list")
    pairs: set[tuple[str, str]] = set()
    for entry in entries:
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("containerID"), str)
            or not isinstance(entry.get("ifname"), str)
        ):
            raise CniError(
                INVALID_CONFIG,
                f"{VALID_ATTACHMENTS} entries need string containerID and ifname",
                dumps(entry),
            )
        pairs.add((entry["containerID"], entry["ifname"]))
    return pairs


# --- results --------------------------------------------------------------------------


def normalize_result(result: Mapping[str, Any]) -> dict[str, Any]:
    """A result of any supported version as version-neutral lists (drops 0.4.0's 'version')."""
    ips = []
    for ip in result.get("ips") or []:
        if isinstance(ip, dict):
            ips.append({k: v for k, v in ip.items() if k != "version"})
    return {
        "interfaces": [i for i in result.get("interfaces") or [] if isinstance(i, dict)],
        "ips": ips,
        "routes": [r for r in result.get("routes") or [] if isinstance(r, dict)],
        "dns": dict(result.get("dns") or {}),
    }


def format_result(
    cni_version: str,
    interfaces: list[dict[str, Any]],
    ips: list[dict[str, Any]],
    routes: list[dict[str, Any]],
    dns: Mapping[str, Any],
    prev_result: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """An ADD result in the shape the requested spec version shows.

    `ips[*]["interface"]` index into our `interfaces`; with a `prevResult` (a chained ADD)
    ours are appended after the previous plugins' and the indexes shifted to match.
    """
    prev = normalize_result(prev_result or {})
    offset = len(prev["interfaces"])
    all_interfaces = prev["interfaces"] + [dict(i) for i in interfaces]
    all_ips = prev["ips"] + [{**ip, "interface": ip["interface"] + offset} for ip in ips]
    if cni_version != "1.1.0":
        # `mtu` (and socketPath, pciID) on interfaces arrived with 1.1.0.
        for interface in all_interfaces:
            interface.pop("mtu", None)
    if _version_tuple(cni_version) < (1, 0, 0):
        # 0.3.x/0.4.0 results tag each IP with its family.
        for ip in all_ips:
            ip["version"] = "6" if ":" in str(ip.get("address", "")) else "4"
    merged_dns = {**prev["dns"], **dict(dns)}
    return {
        "cniVersion": cni_version,
        "interfaces": all_interfaces,
        "ips": all_ips,
        "routes": prev["routes"] + list(routes),
        "dns": merged_dns,
    }


# --- framing --------------------------------------------------------------------------
# One request and one reply per connection, each a 4-byte big-endian length and a JSON
# object. A reply is {"result": <object or null>} or {"error": {code, msg, details}}.


def frame(message: Mapping[str, Any]) -> bytes:
    """The bytes of one frame; ValueError when the message cannot be encoded as JSON."""
    body = dumps(message, compact=True).encode()
    return len(body).to_bytes(_FRAME_HEADER_SIZE, "big") + body


def send_frame(sock: _socket.socket, message: Mapping[str, Any]) -> None:
    sock.sendall(frame(message))


def recv_frame(sock: _socket.socket) -> Any:
    """One framed JSON message; ConnectionError when the peer goes away mid-frame."""
    length = int.from_bytes(_recv_exact(sock, _FRAME_HEADER_SIZE), "big")
    if length > _MAX_FRAME:
        raise ValueError(f"frame of {length} bytes is larger than {_MAX_FRAME}")
    return loads(_recv_exact(sock, length))


def _recv_exact(sock: _socket.socket, size: int) -> bytes:
    chunks = []
    while size:
        chunk = sock.recv(min(size, 1 << 20))
        if not chunk:
            raise ConnectionError("connection closed mid-frame")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)
