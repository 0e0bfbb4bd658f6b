"""`srv6ctl show`: what one agent holds — desired next to actual, drift highlighted.

The successor of contiv-netctl: it asks the agent's API (its unix socket) for the desired
config, what the dataplane really holds, and the allocations, and prints one table per
question. A row's state is `ok` (programmed as desired), `missing` (desired, not in the
dataplane), `unexpected` (in the dataplane, not desired: it goes at the next resync) or
`differs` (both, with other values). `--json` prints the rows instead.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from srv6ctl.agent_api import query_agent

Row = dict[str, str]
STATE_STYLE = {
    "ok": "green",
    "missing": "bold red",
    "unexpected": "bold yellow",
    "differs": "bold red",
}


def _pair(
    desired: Iterable[Mapping[str, Any]],
    actual: Iterable[Mapping[str, Any]],
    key: Callable[[Mapping[str, Any]], str],
    ignore: frozenset[str] = frozenset(),
) -> list[tuple[str, Mapping[str, Any] | None, Mapping[str, Any] | None, str]]:
    """Desired and actual objects by key, with their state; `ignore`d fields are labels a
    dataplane does not keep (a policy's owner), never part of the comparison."""
    want = {key(o): o for o in desired}
    have = {key(o): o for o in actual}

    def same(d: Mapping[str, Any], a: Mapping[str, Any]) -> bool:
        return {k: v for k, v in d.items() if k not in ignore} == {
            k: v for k, v in a.items() if k not in ignore
        }

    rows = []
    for k in sorted(set(want) | set(have)):
        d, a = want.get(k), have.get(k)
        if a is None:
            state = "missing"
        elif d is None:
            state = "unexpected"
        else:
            state = "ok" if same(d, a) else "differs"
        rows.append((k, d, a, state))
    return rows


def _sid_detail(sid: Mapping[str, Any]) -> str:
    parts = []
    for name in ("nexthop", "interface", "table"):
        if sid.get(name) not in (None, "", "::", "0.0.0.0"):
            parts.append(f"{name} {sid[name]}")
    if sid.get("flavours"):
        parts.append("flavours " + ",".join(sid["flavours"]))
    return ", ".join(parts)


def _lists(policy: Mapping[str, Any]) -> str:
    return " | ".join(
        ",".join(sl["segments"]) + (f" w{sl['weight']}" if sl["weight"] != 1 else "")
        for sl in policy["segment_lists"]
    )


def sids(desired: Mapping[str, Any], actual: Mapping[str, Any]) -> list[Row]:
    out = []
    for sid, d, a, state in _pair(
        desired["local_sids"], actual["local_sids"], lambda s: str(s["sid"])
    ):
        obj = d or a
        assert obj is not None
        out.append(
            {"sid": sid, "behaviour": obj["behaviour"], "detail": _sid_detail(obj), "state": state}
        )
    return out


def policies(desired: Mapping[str, Any], actual: Mapping[str, Any]) -> list[Row]:
    out = []
    for bsid, d, a, state in _pair(
        desired["policies"], actual["policies"], lambda p: str(p["bsid"]), frozenset({"owner"})
    ):
        obj = d or a
        assert obj is not None
        row = {
            "bsid": bsid,
            "owner": str((d or {}).get("owner", "")) or "-",
            "mode": obj["mode"],
            "segment lists": _lists(obj),
            "state": state,
        }
        if state == "differs" and a is not None:
            row["segment lists"] += f"  (programmed: {_lists(a)})"
        out.append(row)
    return out


def services(desired: Mapping[str, Any], actual: Mapping[str, Any]) -> list[Row]:
    """ClusterIPs: steered into a service policy, or rejected (no endpoint)."""
    owners = {p["bsid"]: p.get("owner", "") for p in desired["policies"]}
    lists = {p["bsid"]: len(p["segment_lists"]) for p in desired["policies"]}

    def entries(config: Mapping[str, Any]) -> list[dict[str, Any]]:
        found = [
            {"prefix": s["prefix"], "to": s["bsid"]}
            for s in config["steerings"]
            if str(owners.get(s["bsid"], "")).startswith("svc/")
        ]
        found += [
            {"prefix": r["prefix"], "to": r["kind"]}
            for r in config["routes"]
            if r["kind"] in ("prohibit", "unreachable", "blackhole")
        ]
        return found

    out = []
    for prefix, d, a, state in _pair(entries(desired), entries(actual), lambda e: e["prefix"]):
        target = (d or a or {}).get("to", "")
        owner = str(owners.get(target, ""))
        name = owner.removeprefix("svc/").rsplit("/", 1)[0] if owner else "-"
        backends = f"{lists[target]} endpoint(s)" if target in lists else "none: rejected"
        out.append(
            {
                "ClusterIP": prefix,
                "service": name,
                "policy": str(target),
                "backends": backends,
                "state": state,
            }
        )
    return out


def nodes(
    desired: Mapping[str, Any],
    actual: Mapping[str, Any],
    allocations: Mapping[str, Any],
    status: Mapping[str, Any],
) -> list[Row]:
    """Every node with an ID, and whether the route to its locator is programmed."""
    routes_d = {r["prefix"]: r for r in desired["routes"] if r["kind"] == "unicast"}
    routes_a = {r["prefix"]: r for r in actual["routes"] if r["kind"] == "unicast"}
    out = []
    locators = allocations.get("locators", {})
    for name, node_id in sorted(allocations["nodes"].items(), key=lambda kv: kv[1]):
        locator = str(locators.get(name, "?"))
        route = routes_d.get(locator)
        if name == status["node"]:
            state, via = "this node", "-"
        elif route is None:
            state, via = "no route (no InternalIP?)", "-"
        else:
            via = str(route.get("via"))
            state = "ok" if routes_a.get(locator) == route else "missing"
        out.append(
            {"node": name, "ID": str(node_id), "locator": locator, "via": via, "state": state}
        )
    return out


def pods(desired: Mapping[str, Any], allocations: Mapping[str, Any]) -> list[Row]:
    attached = {a["interface"]: a for a in desired["pods"]}
    out = []
    for pod in allocations["pods"]:
        addresses = pod["addresses"]
        interface = next((i for i, a in attached.items() if a["pod"] == pod["pod"]), "")
        services_ = attached.get(interface, {}).get("service_addresses", [])
        out.append(
            {
                "pod": pod["pod"] or pod["container_id"],
                "IPv6": addresses["ipv6"],
                "IPv4": addresses["ipv4"] or "-",
                "End.DX6": addresses["sid_dx6"],
                "ClusterIPs on lo": ", ".join(services_) or "-",
            }
        )
    return out


def ipam(allocations: Mapping[str, Any]) -> list[Row]:
    return [
        {"pool": "node IDs", "used": str(len(allocations["nodes"]))},
        {"pool": "pod addresses (this node)", "used": str(len(allocations["pods"]))},
        {"pool": "service BSIDs", "used": str(len(allocations["services"]))},
    ]


def show(what: str, api_socket: str, as_json: bool) -> int:
    raw = {"status", "desired", "held", "actual", "drift", "allocations"}
    if what in raw:
        print(
            json.dumps(query_agent(api_socket, what), indent=None if as_json else 2, sort_keys=True)
        )
        return 0
    # Desired as the backend holds it: VPP is given weights of its own for some policies
    # (vpp_buckets), and a dump says those.
    desired = query_agent(api_socket, "held")
    actual = query_agent(api_socket, "actual")
    if desired is None:
        print("the agent has not rendered yet")
        return 1
    error = query_agent(api_socket, "status").get("programming_error")
    if error:
        # Rows then show what render wants against what the dataplane holds.
        print(f"rendered, not programmed: {error}")
    if what == "sids":
        rows = sids(desired, actual)
    elif what == "policies":
        rows = policies(desired, actual)
    elif what == "services":
        rows = services(desired, actual)
    elif what == "pods":
        rows = pods(desired, query_agent(api_socket, "allocations"))
    elif what == "nodes":
        rows = nodes(
            desired,
            actual,
            query_agent(api_socket, "allocations"),
            query_agent(api_socket, "status"),
        )
    else:
        rows = ipam(query_agent(api_socket, "allocations"))
    if as_json:
        print(json.dumps(rows))
        return 0
    _table(what, rows)
    drifted = [r for r in rows if r.get("state") in ("missing", "unexpected", "differs")]
    return 1 if drifted else 0


def _table(title: str, rows: list[Row]) -> None:
    # Here, not above: `--json` and the CLI's start need no rich.
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not console.is_terminal:
        console = Console(width=200)
    table = Table(title=title)
    columns = list(rows[0]) if rows else ["(none)"]
    for column in columns:
        table.add_column(column)
    for row in rows:
        cells = []
        for column in columns:
            value = row.get(column, "")
            style = STATE_STYLE.get(value) if column == "state" else None
            cells.append(f"[{style}]{value}[/]" if style else value)
        table.add_row(*cells)
    console.print(table)
