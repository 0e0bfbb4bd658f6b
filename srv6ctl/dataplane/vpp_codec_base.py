"""What every VPP message module shares (no I/O).

`vpp_sr_codec`, `vpp_fib_codec` and `vpp_interface_codec` each translate one part of the
model into VPP binary API messages and back. What they all speak of is here: VPP's "no
index", the zero addresses its messages use for "unset", its address families, how a
codec names interfaces without holding VPP's interface list itself, and the error for a
model object VPP cannot hold.
"""

from __future__ import annotations

from collections.abc import Callable

from srv6ctl.dataplane.model import IPv4Address, IPv6Address

INVALID_INDEX = 0xFFFF_FFFF  # ~0: no interface, no table, "pick one for me"
ZERO6 = IPv6Address("::")
ZERO4 = IPv4Address("0.0.0.0")
# vl_api_address_family_t
ADDRESS_IP4 = 0
ADDRESS_IP6 = 1

# The backend resolves names against VPP's interfaces; a codec only needs the mapping.
InterfaceIndex = Callable[[str], int]  # model interface name → sw_if_index (raises)
InterfaceName = Callable[[int], str | None]  # sw_if_index → model interface name


class InvalidObject(ValueError):
    """A model object VPP cannot hold (the message names it and why)."""


__all__ = [
    "ADDRESS_IP4",
    "ADDRESS_IP6",
    "INVALID_INDEX",
    "ZERO4",
    "ZERO6",
    "InterfaceIndex",
    "InterfaceName",
    "InvalidObject",
]
