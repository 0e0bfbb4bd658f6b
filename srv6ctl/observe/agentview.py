"""A running agent as verify, trace and the lab see it: its API answers, parsed back into
the dataplane model (`srv6ctl show desired` prints the same data as JSON).

The agent serialises its `NodeConfig` with `srv6ctl.serialize.to_jsonable`; this is the
inverse, so that checks compare `End`, `EndDX6`, `SrPolicy`... objects with their own
equality rather than re-reading dictionaries field by field.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from srv6ctl.agent_api import query_agent
from srv6ctl.dataplane.model import (
    BEHAVIOURS,
    EndDX4,
    EndDX6,
    IPAddress,
    IPv6Address,
    LocalSid,
    NodeConfig,
    PodAttachment,
    PortMap,
    Route,
    Rule,
    SegmentList,
    SrPolicy,
    Steering,
    Translation,
)


class AgentUnavailable(RuntimeError):
    """The agent's API socket did not answer (the message names the socket)."""


def query(api_socket: str, what: str, timeout: float = 5.0) -> Any:
    try:
        return query_agent(api_socket, what, timeout=timeout)
    except (OSError, RuntimeError, ValueError) as err:
        raise AgentUnavailable(f"agent at {api_socket}: {err}") from None


def local_sid_from_json(data: Mapping[str, Any]) -> LocalSid:
    cls = BEHAVIOURS[str(data["behaviour"])]
    fields = {k: v for k, v in data.items() if k != "behaviour"}
    return cls(**fields)


def config_from_json(data: Mapping[str, Any]) -> NodeConfig:
    """`to_jsonable(NodeConfig)` back into a `NodeConfig`."""
    policies = [
        SrPolicy(
            bsid=p["bsid"],
            segment_lists=tuple(
                SegmentList(tuple(s["segments"]), int(s["weight"])) for s in p["segment_lists"]
            ),
            encap_source=p.get("encap_source"),
            mode=p["mode"],
            owner=p.get("owner", ""),
            affinity=int(p.get("affinity", 0)),
        )
        for p in data.get("policies") or ()
    ]
    pods = [
        PodAttachment(
            interface=p["interface"],
            pod=p["pod"],
            netns=p["netns"],
            container_interface=p.get("container_interface", "eth0"),
            addresses=frozenset(p.get("addresses") or ()),
            service_addresses=frozenset(p.get("service_addresses") or ()),
            port_maps=frozenset(tuple(m) for m in p.get("port_maps") or ()),
            node_ports=frozenset(tuple(n) for n in p.get("node_ports") or ()),
            translations=frozenset(map(_translation, p.get("translations") or ())),
            service_ports=frozenset(tuple(x) for x in p.get("service_ports") or ()),
        )
        for p in data.get("pods") or ()
    ]
    return NodeConfig(
        encap_source=data.get("encap_source"),
        pods=frozenset(pods),
        local_sids=frozenset(local_sid_from_json(s) for s in data.get("local_sids") or ()),
        policies=frozenset(policies),
        steerings=frozenset(
            Steering(s["prefix"], s["bsid"], int(s.get("table", 254)))
            for s in data.get("steerings") or ()
        ),
        routes=frozenset(
            Route(
                r["prefix"],
                via=r.get("via"),
                interface=r.get("interface"),
                kind=r.get("kind", "unicast"),
                table=int(r.get("table", 254)),
            )
            for r in data.get("routes") or ()
        ),
        rules=frozenset(
            Rule(
                r["destination"],
                int(r["table"]),
                protocol=r.get("protocol", ""),
                port=int(r.get("port", 0)),
                source=r.get("source"),
                iif=r.get("iif", ""),
            )
            for r in data.get("rules") or ()
        ),
        port_maps=frozenset(
            PortMap(m["protocol"], m["address"], int(m["port"]), int(m["target"]))
            for m in data.get("port_maps") or ()
        ),
        translations=frozenset(map(_translation, data.get("translations") or ())),
    )


def _translation(t: dict[str, Any]) -> Translation:
    return Translation(
        t["protocol"],
        t["address"],
        int(t["port"]),
        tuple((a, int(port)) for a, port in t["targets"]),
        int(t.get("affinity", 0)),
    )


@dataclass(frozen=True)
class AgentView:
    """One agent's answers at one moment."""

    node: str
    node_id: int
    locator: ipaddress.IPv6Network
    ready: bool
    desired: NodeConfig
    drift: Mapping[str, Mapping[str, int]]
    stats: Mapping[str, int]
    metrics: str | None = None  # the agent's /metrics URL, when it serves one
    dataplane: str = "kernel"  # or "vpp": the node's kernel then forwards no pod traffic
    # Why its dataplane programs no `Rule`s (NodePorts), or None when it does (or the agent
    # predates the answer).
    no_rules: str | None = None

    def policy(self, owner: str) -> SrPolicy | None:
        """The policy render labelled `owner` (e.g. "svc/default/web/v6")."""
        for policy in self.desired.policies:
            if policy.owner == owner:
                return policy
        return None

    def desired_policy(self, bsid: IPv6Address) -> SrPolicy | None:
        return next((p for p in self.desired.policies if p.bsid == bsid), None)

    def steering_policy(self, address: IPAddress) -> SrPolicy | None:
        """The policy the longest matching steering sends `address` to, if any."""
        best = None
        for steering in self.desired.steerings:
            if address in steering.prefix and (
                best is None or steering.prefix.prefixlen > best.prefix.prefixlen
            ):
                best = steering
        return None if best is None else self.desired_policy(best.bsid)

    def pod_sids(self) -> dict[IPv6Address, EndDX6 | EndDX4]:
        return {s.sid: s for s in self.desired.local_sids if isinstance(s, EndDX6 | EndDX4)}

    def attachment(self, pod: str) -> PodAttachment | None:
        for attachment in self.desired.pods:
            if attachment.pod == pod:
                return attachment
        return None


def view(api_socket: str, *, with_drift: bool = True, timeout: float = 5.0) -> AgentView:
    status = query(api_socket, "status", timeout)
    desired = query(api_socket, "desired", timeout)
    drift = query(api_socket, "drift", timeout) if with_drift else {}
    stats = {
        k: v
        for k, v in status.items()
        if isinstance(v, int) and not isinstance(v, bool) and k != "node_id"
    }
    return AgentView(
        node=str(status["node"]),
        node_id=int(status["node_id"]),
        locator=ipaddress.IPv6Network(status["locator"]),
        ready=bool(status["ready"]),
        desired=config_from_json(desired) if desired else NodeConfig(),
        drift=drift or {},
        stats=stats,
        metrics=status.get("metrics"),
        dataplane=str(status.get("dataplane", "kernel")),
        no_rules=no_rules_reason(status.get("capabilities")),
    )


def no_rules_reason(capabilities: Mapping[str, Any] | None) -> str | None:
    """Why an agent's dataplane programs no `Rule`s, from its status' "capabilities" (its
    note on rules); None when it does, or when the agent does not say."""
    if not capabilities or capabilities.get("rules", True):
        return None
    notes = [str(n) for n in capabilities.get("notes", ())]
    return next((n for n in notes if "rule" in n), "its dataplane cannot program rules")
