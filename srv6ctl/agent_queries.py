"""The agent's read-only API (`srv6ctl show`): its status, the config it rendered, what the
backend holds, how far the two are apart, the store's allocations, and a policy's
load-balance buckets (`srv6ctl trace`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ipam6.allocator import Allocator
from ipam6.plan import AddressPlan
from srv6ctl.dataplane.model import IPv6Address, NodeConfig
from srv6ctl.reconciler import Reconciler
from srv6ctl.serialize import to_jsonable

# "buckets BSID" takes the policy's BSID: its load-balance buckets as the dataplane has
# them, per segment list (`srv6ctl trace` shows them beside the weights).
# "held" is desired as the backend holds it once applied (VPP's own weights for some
# policies): what `srv6ctl show` compares with "actual".
QUERIES = ("status", "desired", "held", "actual", "drift", "allocations", "buckets BSID")


class AgentQueries:
    def __init__(
        self,
        node_name: str,
        plan: AddressPlan,
        allocator: Allocator,
        reconciler: Reconciler,
        status: Callable[[], dict[str, Any]],
        rendered: Callable[[], NodeConfig | None],
    ) -> None:
        self.node_name, self.plan, self.allocator = node_name, plan, allocator
        self.reconciler = reconciler
        self._status, self._rendered = status, rendered

    def __call__(self, what: str) -> Any:
        name, _, argument = what.partition(" ")
        if name == "buckets":
            return self.buckets(argument.strip())
        desired = self._rendered()
        if what == "status":
            return {"rendered": desired is not None, **self._status(), **self.reconciler.stats}
        if what == "desired":
            return to_jsonable(desired)
        if what == "held":
            return None if desired is None else to_jsonable(self.reconciler.held(desired))
        if what == "actual":
            return to_jsonable(self.reconciler.actual())
        if what == "drift":
            return {} if desired is None else self.reconciler.drift(desired)
        if what == "allocations":
            nodes = self.allocator.nodes()
            return {
                "nodes": nodes,
                "locators": {n: str(self.plan.locator(i)) for n, i in nodes.items()},
                "pods": to_jsonable(self.allocator.pods(self.node_name)),
                "services": to_jsonable(self.allocator.services()),
            }
        raise ValueError(f"unknown query {what!r} ({', '.join(QUERIES)})")

    def buckets(self, bsid: str) -> dict[str, Any]:
        """{"bsid", "total", "lists": [{"segments", "buckets"}]} of the policy `bsid`."""
        try:
            address = IPv6Address(bsid)
        except ValueError:
            raise ValueError(f"buckets: {bsid!r} is not a BSID (an IPv6 address)") from None
        held = self.reconciler.buckets(address)
        lists = [
            {"segments": [str(s) for s in segments], "buckets": count}
            for segments, count in sorted(held.items())
        ]
        return {"bsid": str(address), "total": sum(held.values()), "lists": lists}
