"""JSON for the shim without importing `json`: the C scanner and string encoder directly.

`import json` pulls in `re` (json.decoder and json.encoder compile regexes at import),
which with `enum` and friends is ~9 ms — more than the shim's whole remaining start-up
under `python -I -S` (~7 ms). CPython's `_json` C module has the real scanner and string
escaper; this wraps them with the small amount of Python that `json` adds around them.
Behaviour matches `json.loads`/`json.dumps` for JSON documents (tests/test_cni_unit.py
checks that against the standard library), except that NaN and Infinity are refused in
both directions, as strict JSON (and Go's encoding/json) do.

CPython only (as is the rest of srv6-cni: setns through ctypes, /proc).
"""

from __future__ import annotations

import _json

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_encode_string = _json.encode_basestring_ascii


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


class _Context:
    # The attributes the C scanner reads from json.JSONDecoder.
    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = staticmethod(_no_constants)


# typeshed wants a json.JSONDecoder; the scanner only reads the attributes above.
_scan: Any = _json.make_scanner(_Context())  # type: ignore[arg-type]
_WHITESPACE = " \t\n\r"


def loads(data: str | bytes) -> Any:
    """Decode one JSON document; ValueError (UnicodeDecodeError included) when it is not."""
    text = data.decode("utf-8") if isinstance(data, bytes) else data
    start = len(text) - len(text.lstrip(_WHITESPACE))
    try:
        value, end = _scan(text, start)
    except StopIteration as stop:
        raise ValueError(f"Expecting value: char {stop.value}") from None
    rest = len(text) - len(text.rstrip(_WHITESPACE))
    if end != len(text) - rest:
        raise ValueError(f"Extra data: char {end}")
    return value


def dumps(value: Any, *, compact: bool = False) -> str:
    """Encode like json.dumps (ASCII output; compact drops the spaces after , and :)."""
    item, key = (",", ":") if compact else (", ", ": ")
    return _encode(value, item, key)


def _encode(value: Any, item: str, key: str) -> str:
    if isinstance(value, str):
        return str(_encode_string(value))
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return int.__repr__(value)
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"{value!r} is not valid JSON")
        return float.__repr__(value)
    if isinstance(value, dict):
        parts = []
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"JSON object keys must be strings, not {type(k).__name__}")
            parts.append(_encode_string(k) + key + _encode(v, item, key))
        return "{" + item.join(parts) + "}"
    if isinstance(value, list | tuple):
        return "[" + item.join(_encode(v, item, key) for v in value) + "]"
    raise TypeError(f"{type(value).__name__} is not JSON serializable")
