"""Tables and routes as VPP binary API messages, both ways (no I/O).

- tables: the model's MAIN_TABLE (254, the kernel's main) is VPP's table 0; any other id
  is used as is and created (`ip_table_add_del`, both families, named
  `srv6ctl-<id>-ip6/ip4` so that the backend knows its own) before first use, except
  AFFINITY_TABLE, which is the backend's own (`vpp_affinity`) and no model table.
- `Route` → `ip_route_add_del` with one path: NORMAL via a next hop (or attached to an
  interface), DROP (blackhole), ICMP_UNREACH, ICMP_PROHIBIT. An add with `is_multipath=0`
  replaces whatever paths the API had given the prefix, so it is also the replace.
- A reject route (unreachable, prohibit) carries a second path, a DROP of a worse
  preference that never forwards (VPP uses only the best preference's paths): VPP 25.10's
  API decodes an ICMP path without its interface (`fib_api_path_decode` leaves it at 0,
  local0), so the path reads as attached to local0; in any table but 0 that makes the
  route a cross-table import, and VPP crashes (SIGSEGV in `fib_attached_export_import`).
  A DROP path marks the entry no-attached-export and, being last and not attached,
  clears the import flag (`fib_entry_flags_update`). A dump reads the pair back as the
  one reject route.

The `fib_path` built here is also what a pod port's host route uses (`vpp_interface_codec`).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any

from srv6ctl.dataplane.model import (
    MAIN_TABLE,
    Change,
    IPAddress,
    IPNetwork,
    IPv4Address,
    IPv6Address,
    Route,
    RouteKind,
)
from srv6ctl.dataplane.vpp_api import Request
from srv6ctl.dataplane.vpp_codec_base import (
    ADDRESS_IP6,
    INVALID_INDEX,
    ZERO4,
    ZERO6,
    InterfaceIndex,
    InterfaceName,
    InvalidObject,
)

LABEL_STACK_SLOTS = 16  # fib_path.label_stack[16]
# vl_api_fib_path_type_t
FIB_PATH_TYPE_NORMAL = 0
FIB_PATH_TYPE_LOCAL = 1
FIB_PATH_TYPE_DROP = 2
FIB_PATH_TYPE_ICMP_UNREACH = 5
FIB_PATH_TYPE_ICMP_PROHIBIT = 6
# vl_api_fib_path_nh_proto_t
FIB_PATH_NH_PROTO_IP4 = 0
FIB_PATH_NH_PROTO_IP6 = 1
# fib_source_t of VPP 25.10 (src/vnet/fib/fib_source.h): not part of the API definitions,
# but what ip_route_v2_dump filters on and reports in `src`. Checked against a running VPP.
FIB_SOURCE_SR = 5
FIB_SOURCE_API = 8
# The reject route's DROP path: any preference worse (higher) than the ICMP path's 0.
BACKSTOP_PREFERENCE = 1

TABLE_NAME_PREFIX = "srv6ctl-"
# The IPv6 table the policies with sessionAffinity are made in (`vpp_affinity`): 92, our
# protocol number, as the kernel backend's table of BSID anchors.
AFFINITY_TABLE = 0x5C

ROUTE_PATH_TYPES: Mapping[RouteKind, int] = {
    RouteKind.BLACKHOLE: FIB_PATH_TYPE_DROP,
    RouteKind.UNREACHABLE: FIB_PATH_TYPE_ICMP_UNREACH,
    RouteKind.PROHIBIT: FIB_PATH_TYPE_ICMP_PROHIBIT,
    RouteKind.LOCAL: FIB_PATH_TYPE_LOCAL,
}
ROUTE_KIND_OF_PATH: Mapping[int, RouteKind] = {v: k for k, v in ROUTE_PATH_TYPES.items()}
REJECT_KINDS = frozenset({RouteKind.UNREACHABLE, RouteKind.PROHIBIT})


# --- tables ---------------------------------------------------------------------------


def vpp_table(table: int) -> int:
    """The VPP table id of a model table (MAIN_TABLE → 0)."""
    if table == MAIN_TABLE:
        return 0
    if not 0 < table < INVALID_INDEX:
        raise InvalidObject(f"table {table}: not a table VPP can hold (0 is the kernel's unspec)")
    if table == AFFINITY_TABLE:
        raise InvalidObject(f"table {table}: the VPP backend's own (sessionAffinity policies)")
    return table


def model_table(table_id: int) -> int:
    return MAIN_TABLE if table_id == 0 else table_id


def table_add(table_id: int, ipv6: bool, name: str = "") -> Request:
    """Create table `table_id` (an add of one that exists changes nothing), named
    `srv6ctl-<id>-ip6/ip4` unless `name` says otherwise."""
    family = "ip6" if ipv6 else "ip4"
    name = name or f"{TABLE_NAME_PREFIX}{table_id}-{family}"
    return Request(
        "ip_table_add_del",
        {"is_add": True, "table": {"table_id": table_id, "is_ip6": ipv6, "name": name}},
        f"{family} table {table_id}",
    )


def table_del(table_id: int, ipv6: bool) -> Request:
    """Delete table `table_id` with its API routes. VPP frees the table when its last lock
    goes, whatever other sources' entries (SR's BSIDs) it still holds: the caller makes
    sure none is left."""
    family = "ip6" if ipv6 else "ip4"
    return Request(
        "ip_table_add_del",
        {"is_add": False, "table": {"table_id": table_id, "is_ip6": ipv6, "name": ""}},
        f"delete {family} table {table_id}",
    )


# vl_api_ip_flow_hash_config_t: src, dst, sport, dport, proto — VPP's default (0x9F) adds
# the IPv6 flow label (0x80), which Linux draws anew per connection and on every RTO.
FLOW_HASH_5_TUPLE = 0x1F
FLOW_HASH_SOURCE = 0x01  # IP_API_FLOW_HASH_SRC_IP alone: one client, one bucket


def flow_hash_5_tuple(table_id: int) -> Request:
    """IPv6 table `table_id` hashes the 5-tuple only: an SR policy's load-balance takes
    the hash config of its BSID's table when VPP makes the policy (sr_policy_rewrite.c,
    update_lb)."""
    return Request(
        "set_ip_flow_hash_v2",
        {"table_id": table_id, "af": ADDRESS_IP6, "flow_hash_config": FLOW_HASH_5_TUPLE},
        f"ip6 table {table_id}: flow hash on the 5-tuple",
    )


def flow_hash_source(table_id: int) -> Request:
    """IPv6 table `table_id` hashes the source address only (sessionAffinity ClientIP:
    `vpp_affinity`)."""
    return Request(
        "set_ip_flow_hash_v2",
        {"table_id": table_id, "af": ADDRESS_IP6, "flow_hash_config": FLOW_HASH_SOURCE},
        f"ip6 table {table_id}: flow hash on the source address",
    )


# --- routes ---------------------------------------------------------------------------


def _nh(address: IPAddress | None, ipv6: bool) -> dict[str, Any]:
    if address is None:
        address = ZERO6 if ipv6 else ZERO4
    key = "ip6" if isinstance(address, IPv6Address) else "ip4"
    return {"address": {key: address}, "via_label": 0, "obj_id": 0, "classify_table_index": 0}


def fib_path(
    path_type: int,
    *,
    ipv6: bool,
    nexthop: IPAddress | None = None,
    sw_if_index: int = INVALID_INDEX,
    table_id: int = 0,
    preference: int = 0,
) -> dict[str, Any]:
    """A `fib_path` with every field set (its label stack too: 16 empty labels)."""
    if nexthop is not None:
        ipv6 = isinstance(nexthop, IPv6Address)
    return {
        "sw_if_index": sw_if_index,
        "table_id": table_id,
        "rpf_id": 0,
        "weight": 1,
        "preference": preference,
        "type": path_type,
        "flags": 0,
        "proto": FIB_PATH_NH_PROTO_IP6 if ipv6 else FIB_PATH_NH_PROTO_IP4,
        "nh": _nh(nexthop, ipv6),
        "n_labels": 0,
        "label_stack": [{"is_uniform": 0, "label": 0, "ttl": 0, "exp": 0}] * LABEL_STACK_SLOTS,
    }


def route_add(route: Route, ifindex: InterfaceIndex) -> Request:
    table_id = vpp_table(route.table)
    ipv6 = isinstance(route.prefix, ipaddress.IPv6Network)
    if route.kind is RouteKind.UNICAST:
        if route.via is None and not route.interface:
            raise InvalidObject(f"route {route.prefix}: unicast needs a next hop or interface")
        sw_if_index = ifindex(route.interface) if route.interface else INVALID_INDEX
        paths = [
            fib_path(
                FIB_PATH_TYPE_NORMAL,
                ipv6=ipv6,
                nexthop=route.via,
                sw_if_index=sw_if_index,
                table_id=table_id,
            )
        ]
    else:
        paths = [fib_path(ROUTE_PATH_TYPES[route.kind], ipv6=ipv6)]
        if route.kind in REJECT_KINDS:
            # Last: the entry's flags are those of its last path (module docstring).
            paths.append(fib_path(FIB_PATH_TYPE_DROP, ipv6=ipv6, preference=BACKSTOP_PREFERENCE))
    return Request(
        "ip_route_add_del",
        {
            "is_add": True,
            "is_multipath": False,
            "route": route_fields(table_id, route.prefix, paths),
        },
        lambda: f"route {route.prefix} {_describe(route)} (table {route.table})",
    )


def route_del(route: Route) -> Request:
    table_id = vpp_table(route.table)
    return Request(
        "ip_route_add_del",
        {"is_add": False, "is_multipath": False, "route": route_fields(table_id, route.prefix, [])},
        lambda: f"delete route {route.prefix} (table {route.table})",
    )


def route_change(change: Change, ifindex: InterfaceIndex) -> list[Request]:
    """A route's plan step: an add replaces whatever the prefix had, so no delete first."""
    route = change.obj
    assert isinstance(route, Route)
    return [route_del(route)] if change.new is None else [route_add(route, ifindex)]


def lookup_route(table_id: int, prefix: IPNetwork, into: int) -> Request:
    """`prefix` in table `table_id` (of the prefix's family) looked up again in table
    `into` (a deaggregation: a NORMAL path with neither next hop nor interface, VPP table
    `into` in `table_id`). `decode_route` reads it as None: never a model route."""
    path = fib_path(FIB_PATH_TYPE_NORMAL, ipv6=prefix.version == 6, table_id=into)
    return Request(
        "ip_route_add_del",
        {"is_add": True, "is_multipath": False, "route": route_fields(table_id, prefix, [path])},
        f"route {prefix} (table {table_id}) looked up in table {into}",
    )


def lookup_route_del(table_id: int, prefix: IPNetwork) -> Request:
    """Delete a `lookup_route` (what the API holds of `prefix` in table `table_id`)."""
    return Request(
        "ip_route_add_del",
        {"is_add": False, "is_multipath": False, "route": route_fields(table_id, prefix, [])},
        f"delete route {prefix} (table {table_id}) looked up in another table",
    )


def route_fields(table_id: int, prefix: IPNetwork, paths: list[dict[str, Any]]) -> dict[str, Any]:
    """The `ip_route` of a route message (also a pod's host route's)."""
    return {
        "table_id": table_id,
        "stats_index": 0,
        "prefix": prefix,
        "n_paths": len(paths),
        "paths": paths,
    }


def _describe(route: Route) -> str:
    if route.kind is not RouteKind.UNICAST:
        return str(route.kind)
    parts = []
    if route.via is not None:
        parts.append(f"via {route.via}")
    if route.interface:
        parts.append(f"dev {route.interface}")
    return " ".join(parts)


def path_nexthop(path: Any) -> IPAddress | None:
    """The next hop of a dumped `fib_path`, None when unset (attached, or not an IP path)."""
    union = path.nh.address
    proto = int(path.proto)
    if proto == FIB_PATH_NH_PROTO_IP6:
        address: IPAddress = IPv6Address(union.ip6)
    elif proto == FIB_PATH_NH_PROTO_IP4:
        address = IPv4Address(union.ip4)
    else:
        return None
    return None if int(address) == 0 else address


def _reject_kind(paths: list[Any]) -> RouteKind | None:
    """The kind of a reject route as `route_add` writes it (its ICMP path, then a DROP of
    a worse preference; VPP may dump them in either order), else None."""
    if len(paths) != 2:
        return None
    by_type = {int(p.type): int(p.preference) for p in paths}
    drop = by_type.pop(FIB_PATH_TYPE_DROP, None)
    if drop is None or len(by_type) != 1:
        return None
    ((path_type, preference),) = by_type.items()
    kind = ROUTE_KIND_OF_PATH.get(path_type)
    return kind if kind in REJECT_KINDS and preference < drop else None


def decode_route(details: Any, ifname: InterfaceName) -> Route | None:
    """A `ip_route_v2_details`' route as a model Route; None for shapes we never make."""
    route = details.route
    prefix = ipaddress.ip_network(route.prefix, strict=False)
    table = model_table(int(route.table_id))
    paths = list(route.paths[: route.n_paths])
    if not paths:
        return None
    reject = _reject_kind(paths)
    if reject is not None:
        return Route(prefix, kind=reject, table=table)
    if len(paths) > 1:
        # We only ever install one path. Report a value no desired route has, so that
        # reconcile replaces it (an add with is_multipath=0 replaces all paths).
        return Route(prefix, interface=f"({len(paths)} paths)", table=table)
    path = paths[0]
    path_type = int(path.type)
    if path_type in ROUTE_KIND_OF_PATH:
        return Route(prefix, kind=ROUTE_KIND_OF_PATH[path_type], table=table)
    if path_type != FIB_PATH_TYPE_NORMAL:
        return None
    sw_if_index = int(path.sw_if_index)
    interface = ifname(sw_if_index) if sw_if_index != INVALID_INDEX else None
    via = path_nexthop(path)
    if via is None and interface is None:
        return None  # a deaggregation into another table: not ours
    return Route(prefix, via=via, interface=interface, table=table)


__all__ = [
    "AFFINITY_TABLE",
    "BACKSTOP_PREFERENCE",
    "FIB_PATH_NH_PROTO_IP4",
    "FIB_PATH_NH_PROTO_IP6",
    "FIB_PATH_TYPE_DROP",
    "FIB_PATH_TYPE_ICMP_PROHIBIT",
    "FIB_PATH_TYPE_ICMP_UNREACH",
    "FIB_PATH_TYPE_LOCAL",
    "FIB_PATH_TYPE_NORMAL",
    "FIB_SOURCE_API",
    "FIB_SOURCE_SR",
    "FLOW_HASH_5_TUPLE",
    "FLOW_HASH_SOURCE",
    "LABEL_STACK_SLOTS",
    "REJECT_KINDS",
    "ROUTE_KIND_OF_PATH",
    "ROUTE_PATH_TYPES",
    "TABLE_NAME_PREFIX",
    "decode_route",
    "fib_path",
    "flow_hash_5_tuple",
    "flow_hash_source",
    "lookup_route",
    "lookup_route_del",
    "model_table",
    "path_nexthop",
    "route_add",
    "route_change",
    "route_del",
    "route_fields",
    "table_add",
    "table_del",
    "vpp_table",
]
