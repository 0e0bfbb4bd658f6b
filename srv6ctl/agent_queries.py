"""The agent's read-only API (`srv6ctl show`): its status, the config it rendered, what the
backend holds, how far the two are apart, and the store's allocations."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ipam6.allocator import Allocator
from ipam6.plan import AddressPlan
from srv6ctl.dataplane.model import NodeConfig
from srv6ctl.reconciler import Reconciler
from srv6ctl.serialize import to_jsonable

QUERIES = ("status", "desired", "actual", "drift", "allocations")


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
        desired = self._rendered()
        if what == "status":
            return {"rendered": desired is not None, **self._status(), **self.reconciler.stats}
        if what == "desired":
            return to_jsonable(desired)
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
