"""VPP's interfaces as the backend last read them, and the model's names for them.

The model names an interface by the pod's interface name (a pod port, found by its
`srv6ctl:pod:` tag) or by VPP's own name (an operator's uplink). Dumping VPP's interface
list for every name would cost a round trip per SID or route, so the list is kept until
something may have changed it (`forget`), and read again once when a name is missing.
"""

from __future__ import annotations

from dataclasses import dataclass

from srv6ctl.dataplane.vpp_api import VppChannel
from srv6ctl.dataplane.vpp_codec_base import INVALID_INDEX, InvalidObject
from srv6ctl.dataplane.vpp_interface_codec import (
    IF_STATUS_ADMIN_UP,
    POD_TAG_PREFIX,
    TAG_PREFIX,
    pod_of_tag,
    pod_tag,
)

LOCAL0 = 0  # VPP's null interface: nothing enters there


@dataclass(frozen=True)
class VppInterface:
    """One of VPP's interfaces, from `sw_interface_details`."""

    sw_if_index: int
    name: str
    tag: str
    dev_type: str
    up: bool


class Interfaces:
    """VPP's interfaces by sw_if_index, read through `channel` and kept until forgotten."""

    def __init__(self, channel: VppChannel) -> None:
        self.channel = channel
        self._cache: dict[int, VppInterface] | None = None

    def load(self, refresh: bool = False) -> dict[int, VppInterface]:
        if self._cache is None or refresh:
            interfaces = {}
            for details in self.channel.dump("sw_interface_dump", sw_if_index=INVALID_INDEX):
                index = int(details.sw_if_index)
                interfaces[index] = VppInterface(
                    index,
                    str(details.interface_name),
                    str(details.tag),
                    str(details.interface_dev_type),
                    bool(int(details.flags) & IF_STATUS_ADMIN_UP),
                )
            self._cache = interfaces
        return self._cache

    def uplinks(self, refresh: bool = False) -> list[int]:
        """The interfaces traffic enters the node by, where rules apply: VPP's that are
        not ours (pod ports, the pods' gateway), local0 aside."""
        return sorted(
            index
            for index, iface in self.load(refresh).items()
            if index != LOCAL0 and not iface.tag.startswith(TAG_PREFIX)
        )

    def forget(self) -> None:
        """Read the list again next time (after writes that create or change interfaces)."""
        self._cache = None

    def model_name(self, sw_if_index: int) -> str | None:
        iface = self.load().get(sw_if_index)
        if iface is None:
            return None
        return pod_of_tag(iface.tag) or iface.name

    def pod_port(self, interface: str) -> VppInterface | None:
        """The port tagged as the pod interface `interface`'s, if VPP has one."""
        tag = pod_tag(interface)
        for iface in self.load().values():
            if iface.tag == tag:
                return iface
        return None

    def find(self, name: str) -> int | None:
        for refresh in (False, True):
            interfaces = self.load(refresh)
            by_tag = pod_tag(name) if len(name) < 40 else None
            for iface in interfaces.values():
                if by_tag is not None and iface.tag == by_tag:
                    return iface.sw_if_index
            for iface in interfaces.values():
                if iface.name == name:
                    return iface.sw_if_index
        return None

    def index(self, name: str) -> int:
        """The sw_if_index of a model interface name; `InvalidObject` if VPP has none."""
        index = self.find(name)
        if index is None:
            raise InvalidObject(
                f"interface {name}: VPP has no pod port tagged {POD_TAG_PREFIX}{name} "
                "and no interface of that name"
            )
        return index


__all__ = ["Interfaces", "VppInterface"]
