"""The Kubernetes lab's load balancer: what MetalLB (BGP mode) or a cloud's controller is to
a cluster, for the Services the lab does not make itself (issue 18: the upstream
`LoadBalancer` specs).

Kubernetes hands a `type: LoadBalancer` Service to whatever controller implements load
balancers; without one its `status.loadBalancer` stays empty (EXTERNAL-IP `<pending>`).
This one runs beside the control plane (`srv6ctl-lab-load-balancer`, a process of the
control plane's namespace with credentials of its own and a ClusterRole that lets it read
Services and write their status and finalizers, nothing else) and does what such a
controller does:

- **Addresses**: each LoadBalancer Service without a `loadBalancerClass` gets one ingress
  IP per IP family it has, from the lab's pools (`POOLS`: outside every prefix the lab
  uses otherwise), with `ipMode: VIP` — the dataplane then treats it as any external VIP
  (README, "Services"). A Service whose status names addresses from elsewhere (the lab's
  own LoadBalancer Services, whose status the lab writes) is not its business.
- **Cleanup**: the finalizer `service.kubernetes.io/load-balancer-cleanup` (the one
  Kubernetes' own service controller adds) is put on every Service it gives an address,
  and removed — with the address — only when the Service is deleted or stops being a
  LoadBalancer, after its routes are gone; the address is then free again.
- **The router in front of the cluster**: the probe (the lab's external client) routes
  each ingress IP to the Service's entry nodes, ECMP over all nodes for
  `externalTrafficPolicy: Cluster` and for `Local` over the nodes whose
  `healthCheckNodePort` answers 200, as `route_external` (lab/external.py) does for the
  lab's own Services; the health checks are repeated every pass, so the routes follow
  the endpoints. The control plane's namespace, where the e2e suite runs, sends the pools
  to the probe, which forwards (the one router of the lab's outside): a host's own
  connections all take one ECMP next hop (an IPv6 connect() looks its route up before it
  has a source port), a router's forwarding hashes each flow's ports.

Every pass reads the whole state (the Services by one list, the lab's nodes from its
state file) and derives what it wants from it (`decide`, `wanted_routes`: pure), so a
restarted controller resumes where its predecessor stopped; an address in use is never
handed out twice because the addresses in use are read from the Services themselves.
A lab tool, polled once a second: not a watch.
"""

from __future__ import annotations

import argparse
import functools
import ipaddress
import json
import logging
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from srv6ctl.dataplane.nsenter import ensure_sysctls
from srv6ctl.lab import netns
from srv6ctl.lab.external import SPREAD_CONNECTIONS, healthy, vip_route
from srv6ctl.lab.kubernetes import ControlPlane
from srv6ctl.lab.netns import LabError
from srv6ctl.lab.shape import PROBE_INDEX_V6, underlay_v6
from srv6ctl.lab.state import LabPaths, LabState, NodeRecord

log = logging.getLogger("srv6ctl.lab.load_balancer")

POOL_V6 = ipaddress.IPv6Network("fd00:ee::1:0/112")  # the lab's own VIPs: fd00:ee::10, ::11
POOL_V4 = ipaddress.IPv4Network("198.51.100.128/25")  # the lab's own: 198.51.100.10, .11
FINALIZER = "service.kubernetes.io/load-balancer-cleanup"
USER = "srv6ctl-lab:load-balancer"
NAME = "srv6ctl-lab-load-balancer"  # the process, its ClusterRole and binding
PERIOD_S = 1.0


@dataclass(frozen=True)
class Pools:
    """The addresses handed out, per family."""

    v6: ipaddress.IPv6Network = POOL_V6
    v4: ipaddress.IPv4Network = POOL_V4

    def holds(self, address: str) -> bool:
        ip = ipaddress.ip_address(address)
        return ip in (self.v6 if ip.version == 6 else self.v4)

    def free(self, family: int, taken: set[str]) -> str | None:
        """The pool's first address of `family` not in `taken` (its network address and,
        for IPv4, its broadcast address are never handed out)."""
        for ip in (self.v6 if family == 6 else self.v4).hosts():
            if str(ip) not in taken:
                return str(ip)
        return None


POOLS = Pools()


@dataclass(frozen=True)
class Decision:
    """What to change on one Service: its finalizers and its ingress IPs, each None
    where it stays as it is."""

    namespace: str
    name: str
    finalizers: tuple[str, ...] | None = None
    ingress: tuple[str, ...] | None = None


def _family(address: str) -> int:
    return ipaddress.ip_address(address).version


def _ingress(service: Mapping[str, Any]) -> list[str]:
    status = (service.get("status") or {}).get("loadBalancer") or {}
    return [i["ip"] for i in status.get("ingress") or [] if i.get("ip")]


def _families(service: Mapping[str, Any]) -> list[int]:
    spec = service.get("spec") or {}
    return [6 if f == "IPv6" else 4 for f in spec.get("ipFamilies") or ["IPv6"]]


def wants_load_balancer(service: Mapping[str, Any]) -> bool:
    """A LoadBalancer Service of no other controller's class, not being deleted."""
    spec, meta = service.get("spec") or {}, service.get("metadata") or {}
    return (
        spec.get("type") == "LoadBalancer"
        and not spec.get("loadBalancerClass")
        and not meta.get("deletionTimestamp")
    )


def decide(services: Iterable[Mapping[str, Any]], pools: Pools = POOLS) -> list[Decision]:
    """The changes that make every Service's load balancer what its spec asks: addresses
    given (one per family, in the Service's family order) or taken back, the cleanup
    finalizer added or removed."""
    services = list(services)
    taken = {ip for s in services for ip in _ingress(s) if pools.holds(ip)}
    decisions = []
    for service in services:
        meta = service.get("metadata") or {}
        ingress = _ingress(service)
        if any(not pools.holds(ip) for ip in ingress):
            continue  # someone else's addresses (the lab's own Services)
        finalizers = tuple(meta.get("finalizers") or ())
        new_finalizers: tuple[str, ...] = finalizers
        if wants_load_balancer(service):
            families = _families(service)
            kept = [ip for ip in ingress if _family(ip) in families]
            for family in families:
                if not any(_family(ip) == family for ip in kept):
                    address = pools.free(family, taken)
                    if address is not None:
                        taken.add(address)
                        kept.append(address)
            kept.sort(key=lambda ip: families.index(_family(ip)))
            new_ingress = tuple(kept)
            if FINALIZER not in finalizers:
                new_finalizers = (*finalizers, FINALIZER)
        else:
            new_ingress = ()
            new_finalizers = tuple(f for f in finalizers if f != FINALIZER)
        if new_ingress != tuple(ingress) or new_finalizers != finalizers:
            decisions.append(
                Decision(
                    meta["namespace"],
                    meta["name"],
                    new_finalizers if new_finalizers != finalizers else None,
                    new_ingress if new_ingress != tuple(ingress) else None,
                )
            )
    return decisions


def after(services: Iterable[Mapping[str, Any]], decisions: Sequence[Decision]) -> list[Any]:
    """The Services as they are once `decisions` are applied (their ingress IPs only)."""
    changed = {(d.namespace, d.name): d.ingress for d in decisions if d.ingress is not None}
    out = []
    for service in services:
        meta = service.get("metadata") or {}
        ingress = changed.get((str(meta.get("namespace")), str(meta.get("name"))))
        if ingress is not None:
            service = {
                **service,
                "status": {"loadBalancer": {"ingress": [{"ip": i} for i in ingress]}},
            }
        out.append(service)
    return out


def wanted_routes(
    services: Iterable[Mapping[str, Any]],
    nodes: Sequence[NodeRecord],
    healthy: Callable[[NodeRecord, int], bool],
    pools: Pools = POOLS,
) -> dict[str, tuple[str, ...]]:
    """Each ingress IP from the pools → the names of the nodes the router sends it to
    (every node; for externalTrafficPolicy Local the healthy ones)."""
    routes: dict[str, tuple[str, ...]] = {}
    for service in services:
        ips = [ip for ip in _ingress(service) if pools.holds(ip)]
        if not ips or not wants_load_balancer(service):
            continue
        spec = service.get("spec") or {}
        entry = list(nodes)
        if spec.get("externalTrafficPolicy") == "Local":
            port = int(spec.get("healthCheckNodePort") or 0)
            entry = [n for n in nodes if port and healthy(n, port)]
        for ip in ips:
            routes[ip] = tuple(n.name for n in entry)
    return routes


def route_commands(
    old: Mapping[str, tuple[str, ...]],
    new: Mapping[str, tuple[str, ...]],
    nodes: Sequence[NodeRecord],
) -> list[str]:
    """`ip -batch` lines that turn the probe's routes for `old` into those for `new`."""
    by_name = {n.name: n for n in nodes}
    commands = [
        f"route del {ip}/{128 if _family(ip) == 6 else 32}" for ip in sorted(set(old) - set(new))
    ]
    for ip, names in sorted(new.items()):
        if old.get(ip) != names:
            commands.append(vip_route(ip, [by_name[n] for n in names if n in by_name]))
    return commands


# --- the process --------------------------------------------------------------------------


def manifests() -> list[dict[str, Any]]:
    """Its ClusterRole (read Services, write their status and finalizers) and binding."""
    return [
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": NAME},
            "rules": [
                {"apiGroups": [""], "resources": ["services"], "verbs": ["list", "patch"]},
                {"apiGroups": [""], "resources": ["services/status"], "verbs": ["patch"]},
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": NAME},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": NAME,
            },
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": USER}],
        },
    ]


class Controller:
    """One pass a second: list the Services, route, then write the decisions."""

    def __init__(self, api: Any, paths: LabPaths, pools: Pools = POOLS) -> None:
        self.api = api  # kubernetes.client.CoreV1Api
        self.paths = paths
        self.pools = pools
        self.routed: dict[str, tuple[str, ...]] = {}

    def state(self) -> LabState:
        from srv6ctl.lab.state import load_state

        state = load_state(self.paths)
        if state is None:
            raise RuntimeError(f"no lab in {self.paths.root}")
        return state

    def services(self) -> list[dict[str, Any]]:
        answer = self.api.list_service_for_all_namespaces(_preload_content=False)
        return list(json.loads(answer.data)["items"])

    def flush(self, state: LabState) -> None:
        """The pools' routes of an earlier controller gone: this one starts from none."""
        netns.ip_batch(
            state.probe_netns,
            [f"route flush root {self.pools.v6}", f"route flush root {self.pools.v4}"],
        )

    def once(self) -> None:
        state = self.state()
        services = self.services()
        decisions = decide(services, self.pools)
        routes = wanted_routes(
            after(services, decisions),
            state.nodes,
            functools.partial(healthy, state.probe_netns),
            self.pools,
        )
        commands = route_commands(self.routed, routes, state.nodes)
        if commands:
            netns.ip_batch(state.probe_netns, commands)
            log.info("routes: %s", "; ".join(commands))
        self.routed = routes
        for decision in decisions:  # after the routes: an address is routed before it is told
            self.apply(decision)

    def apply(self, decision: Decision) -> None:
        merge = "application/merge-patch+json"
        if decision.ingress is not None:
            ingress = [{"ip": ip, "ipMode": "VIP"} for ip in decision.ingress]
            self.api.patch_namespaced_service_status(
                decision.name,
                decision.namespace,
                {"status": {"loadBalancer": {"ingress": ingress}}},
                _content_type=merge,
                _preload_content=False,
            )
        if decision.finalizers is not None:
            self.api.patch_namespaced_service(
                decision.name,
                decision.namespace,
                {"metadata": {"finalizers": list(decision.finalizers)}},
                _content_type=merge,
                _preload_content=False,
            )
        log.info("%s/%s: %s", decision.namespace, decision.name, decision)


def start(plane: ControlPlane, paths: LabPaths, state: LabState) -> None:
    """Its RBAC and credentials, the router (the probe forwards, hashing flows; the control
    plane's namespace sends the pools to it), then the controller, in the control plane's
    namespace."""
    for manifest in manifests():
        kind = "clusterroles" if manifest["kind"] == "ClusterRole" else "clusterrolebindings"
        plane.send("POST", f"/apis/rbac.authorization.k8s.io/v1/{kind}", manifest)
    kubeconfig = plane.add_user("load-balancer", f"/CN={USER}")
    router = {
        **SPREAD_CONNECTIONS,
        "net.ipv6.conf.all.forwarding": "1",
        "net.ipv4.ip_forward": "1",
    }
    # The probe and the control plane share the underlay: the probe would redirect the
    # control plane to the first next hop, which would then take every connection.
    client = {"net.ipv6.conf.all.accept_redirects": "0", "net.ipv6.conf.eth0.accept_redirects": "0"}
    for where, settings in ((state.probe_netns, router), (plane.netns, client)):
        result = ensure_sysctls(netns.netns_path(where), settings)
        if result.refused:
            raise LabError(f"{where}: {'; '.join(result.refused)}")
    probe = underlay_v6(PROBE_INDEX_V6)
    netns.ip_batch(plane.netns, [f"route replace {POOL_V6} via {probe} dev eth0"])
    argv = [sys.executable, "-m", "srv6ctl.lab.load_balancer", str(paths.root), str(kubeconfig)]
    plane.spawn(NAME, argv)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=NAME, description=__doc__.split("\n\n")[0])
    parser.add_argument("state_dir", help="the lab's state directory")
    parser.add_argument("kubeconfig", help="its own credentials")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    from kubernetes import client, config

    api_client = config.new_client_from_config(config_file=args.kubeconfig)  # type: ignore[no-untyped-call]
    controller = Controller(client.CoreV1Api(api_client), LabPaths(Path(args.state_dir)))
    controller.flush(controller.state())
    while True:
        try:
            controller.once()
        except Exception as err:  # the API server restarting, a route refused: next pass
            log.warning("pass failed: %s", err)
        time.sleep(PERIOD_S)


if __name__ == "__main__":
    sys.exit(main())
