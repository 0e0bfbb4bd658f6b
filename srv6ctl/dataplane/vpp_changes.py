"""One plan step as the VPP requests of its kind (no I/O).

The backend pipelines these requests; pods, the encap source and rules are not here,
because they are synchronous steps of their own (see `VppBackend`): a pod port's creation
returns the sw_if_index later messages need, the encap source changes which policies need
rebuilding, and (ABF engine) a rule group's new ACL returns the index its ABF policy
names (`vpp_rules`). Classifier rules are pipelined, but their requests come from
`vpp_classify_rules`, which keeps the chain of tables they depend on.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from srv6ctl.dataplane.model import (
    LOCAL_SID,
    POLICY,
    ROUTE,
    STEERING,
    Change,
    IPv6Address,
    ObjectKind,
    kind_of,
)
from srv6ctl.dataplane.vpp_api import Request
from srv6ctl.dataplane.vpp_codec_base import InterfaceIndex, InvalidObject
from srv6ctl.dataplane.vpp_fib_codec import route_change
from srv6ctl.dataplane.vpp_sr_codec import (
    VppPolicy,
    localsid_change,
    policy_change,
    steering_change,
)

Policies = Mapping[IPv6Address, VppPolicy]
Handler = Callable[[Change, InterfaceIndex, Policies, IPv6Address | None], list[Request]]

# The kinds programmed with plain (pipelined) requests, and how.
HANDLERS: Mapping[ObjectKind, Handler] = {
    LOCAL_SID: lambda change, ifindex, _policies, _source: localsid_change(change, ifindex),
    POLICY: lambda change, _ifindex, policies, source: policy_change(change, policies, source),
    STEERING: lambda change, _ifindex, _policies, _source: steering_change(change),
    ROUTE: lambda change, ifindex, _policies, _source: route_change(change, ifindex),
}


def change_requests(
    change: Change,
    ifindex: InterfaceIndex,
    policies: Policies,
    node_source: IPv6Address | None,
) -> list[Request]:
    """The requests of one plan step. A policy is edited from what VPP holds of it
    (`policies`, by BSID) and follows the node's encap source (`node_source`) unless it
    has its own."""
    handler = HANDLERS.get(kind_of(change.obj))
    if handler is None:
        raise InvalidObject(f"{change.kind} is not programmed with plain requests")
    return handler(change, ifindex, policies, node_source)


__all__ = ["HANDLERS", "change_requests"]
