"""Plain JSON for the data model: dataclasses, addresses, enums and sets, generically.

Like a scapy layer, a model object says what it is; its JSON follows from its fields with
no per-type code. Used by the agent's API (`srv6ctl show`) and `--json` outputs.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from enum import Enum
from typing import Any

_ADDRESSES = (
    ipaddress.IPv4Address,
    ipaddress.IPv6Address,
    ipaddress.IPv4Network,
    ipaddress.IPv6Network,
    ipaddress.IPv4Interface,
    ipaddress.IPv6Interface,
)


def to_jsonable(value: Any) -> Any:
    if isinstance(value, _ADDRESSES):
        return str(value)
    if isinstance(value, Enum):
        return value.value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out: dict[str, Any] = {}
        behaviour = getattr(type(value), "behaviour", None)
        if behaviour:
            out["behaviour"] = behaviour
        for field in dataclasses.fields(value):
            out[field.name] = to_jsonable(getattr(value, field.name))
        return out
    if isinstance(value, dict):
        return {str(to_jsonable(k)): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, frozenset | set):
        return sorted((to_jsonable(v) for v in value), key=repr)
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    return value
