"""Benchmark: program N services x B backends into a fresh kernel netns, ours vs references.

Four runs of the same services, each into its own throw-away network namespace:

- `ip_batch`: the kernel state README.md "Services without NAT" describes, loaded with
  `ip -batch` — one IPv6 seg6 nexthop per backend SID (shared by every service using that
  pod), one resilient nexthop group per service, one route `S/128 nhid G` per service;
- `iptables_restore`: kube-proxy's iptables mode for the same services and endpoints
  (KUBE-SERVICES → KUBE-SVC-* → KUBE-SEP-* with DNAT), as one `ip6tables-restore` input;
- `nft`: kube-proxy's nftables mode (GA since Kubernetes 1.33) for the same services: the
  transaction of its first full sync (table `ip6 kube-proxy`, the `service-ips` verdict
  map → `service-*` chains with `numgen random mod N vmap` → `endpoint-*` chains with
  DNAT), loaded with `nft -f -` as knftables does (bench/kube_proxy_nftables.py), then
  checked against `nft -j list ruleset` (chains, rules, elements: `nft_expected` and
  `nft_loaded` must be equal);
- `ours`: `KernelBackend` from `srv6ctl.dataplane.kernel`, when that module exists, with
  the reference's bucket count, so that it creates the same nexthops, groups and routes —
  plus one anchor route `bsid/128 nhid G` per service in its policy table, which the
  reference does not write (10,000 extra routes at 10,000 services: they are how a
  restarted agent finds its policies, so they are part of the work and of the timing).

What is timed for ours:

- `ours_apply_s`: `backend.apply(changes)` alone — the same work as the reference's
  timing (turning decided objects into kernel state), plus the anchors;
- `ours_plan_s`: `plan(desired, actual)`, reconcile's pure diff (the reference's batch
  files are written untimed);
- `ours_end_to_end_s`: what an agent's first sync costs — opening the backend (the
  capability probe in a scratch namespace, sysctls, creating the SID device), dumping the
  empty namespace, planning and applying.

`ratio` is `ours_apply_s / ip_batch_s`: applying the same objects, ours against `ip
-batch`; `ratio_end_to_end` uses `ours_end_to_end_s`; `ratio_vs_iptables` and
`ratio_nftables` divide `ours_apply_s` by the kube-proxy loads (`iptables_restore_s`,
`nft_s`). The `*_cpu` fields split each side's time into user and system (kernel) CPU
seconds. Then a restarted backend dumps the namespace and plans again:
`ours_restart_changes` and `ours_restart_writes` must be 0.

`--mix` (off by default) makes 2 services in 10 NodePort and 1 in 10 LoadBalancer with
one ingress IP (and no NodePort). The kube-proxy references then write what kube-proxy
writes for those: iptables `KUBE-NODEPORTS` rules and `KUBE-EXT-*` chains, a `loadbalancer
IP` rule in `KUBE-SERVICES`; nftables `service-nodeports` elements, `external-*` chains and
`service-ips` elements for the ingress IPs (no loadBalancerSourceRanges, so no `firewall-*`
chains). `ip -batch` adds `vip/128 nhid G` per ingress IP. Ours programs the ClusterIP
objects plus, per LoadBalancer service, one more steering `vip/128` into the service's SR
policy, as the agent renders LB VIPs, and per NodePort service what the agent renders for
it (srv6ctl/render.py): a steering of the node's address into the service's policy in
the service's own table, and a rule `to <node address> ipproto tcp dport <nodePort>
lookup <that table>` (behind the kernel backend's gate; kernel_rules.py).

Needs root, iproute2, ip6tables-restore (Debian package `iptables`) and nft (`nftables`).
Only creates and deletes its own namespaces; after deleting one it waits until the CPUs
are idle again, so that no run pays for the teardown of the one before it. Progress goes
to stderr; the last stdout line is one JSON object. No timing is asserted: comparing is
for the reader. The host is shared, so run it several times and compare ratios rather
than seconds.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import ipaddress
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as bench/<file>.py

from bench import kube_proxy_nftables

UPLINK = "up0"  # the namespace's stand-in for a node uplink (one end of a veth pair)
UPLINK_ADDRESS = "2001:db8:ffff::1/64"
UPLINK_PEER = "2001:db8:ffff::2"
SID_BLOCK = "fcbb:bb00::/32"
POD_CIDR = "fd00:10::/48"
SERVICE_BASE = int(ipaddress.IPv6Address("fd00:96::"))
SERVICE_CIDR = "fd00:96::/108"  # the ServiceCIDR the cluster IPs come from
LB_BASE = int(ipaddress.IPv6Address("2001:db8:1b::"))  # LoadBalancer ingress IPs (--mix)
NODE_PORTS = range(30000, 32768)  # kube-apiserver's default --service-node-port-range
BSID_BASE = int(ipaddress.IPv6Address("fcbb:bb00:0::"))
GROUP_ID_BASE = 10_000_000  # nexthop ids: 1.. for backends, GROUP_ID_BASE.. for groups
SYSCTLS = (
    "net.ipv6.conf.all.seg6_enabled=1",
    "net.ipv6.conf.default.seg6_enabled=1",
    "net.ipv6.conf.all.forwarding=1",
    "net.ipv6.fib_multipath_hash_policy=1",
)


def log(message: str) -> None:
    print(f"[kernel_programming] {message}", file=sys.stderr, flush=True)


# --- the services ---------------------------------------------------------------------


@dataclass(frozen=True)
class Pod:
    index: int
    node: int  # node id, 1.. (0 is the reserved BSID locator)
    k: int  # the pod's number on its node

    @property
    def sid(self) -> str:
        return f"fcbb:bb00:{self.node:x}::1:{self.k:x}"  # End.DX6 L::1:<k>

    @property
    def address(self) -> str:
        return f"fd00:10:{self.node:x}::{self.k:x}"

    @property
    def nexthop_id(self) -> int:
        return self.index + 1


@dataclass(frozen=True)
class Service:
    index: int
    backends: tuple[Pod, ...]
    port: int = 80
    target_port: int = 8080
    node_port: int | None = None  # NodePort Services (--mix)
    lb_ip: str | None = None  # LoadBalancer Services' one ingress IP (--mix)

    @property
    def name(self) -> str:
        return f"bench/svc-{self.index}"

    @property
    def cluster_ip(self) -> str:
        return str(ipaddress.IPv6Address(SERVICE_BASE + 1 + self.index))

    @property
    def bsid(self) -> str:
        return str(ipaddress.IPv6Address(BSID_BASE + 1 + self.index))

    @property
    def group_id(self) -> int:
        return GROUP_ID_BASE + self.index


def make_services(
    count: int, backends: int, pods: int, nodes: int, seed: int, mix: bool = False
) -> list[Service]:
    """`count` services, each with `backends` distinct pods drawn from a shared pool.

    With `mix`, of every 10 services 2 are NodePort and 1 is LoadBalancer with one ingress
    IP and no NodePort (`allocateLoadBalancerNodePorts: false`: with NodePorts, 30% of
    10,000 services would overflow the 2,768 ports of the default range).
    """
    pool = [Pod(index=i, node=1 + i % nodes, k=1 + i // nodes) for i in range(pods)]
    rng = random.Random(seed)
    services = []
    node_ports = iter(NODE_PORTS)
    for i in range(count):
        members = tuple(sorted(rng.sample(pool, backends), key=lambda p: p.index))
        kind = i % 10 if mix else None
        node_port = next(node_ports) if kind in (0, 1) else None
        lb_ip = str(ipaddress.IPv6Address(LB_BASE + 1 + i)) if kind == 2 else None
        services.append(Service(i, members, node_port=node_port, lb_ip=lb_ip))
    return services


def used_pods(services: Sequence[Service]) -> list[Pod]:
    return sorted({p for s in services for p in s.backends}, key=lambda p: p.index)


def buckets_for(backends: int) -> int:
    # A resilient group needs at least one bucket per nexthop; 64 keeps remapping coarse
    # enough to be cheap and fine enough for ~10 backends.
    return max(64, 1 << (backends * 4 - 1).bit_length())


# --- reference 1: ip -batch -----------------------------------------------------------


def ip_batch_files(services: Sequence[Service], directory: Path) -> tuple[Path, Path, int]:
    """Two batch files and the number of kernel objects they create.

    Two, because `ip -batch` lines take no options: seg6 nexthops must be AF_INET6 (an IPv6
    route refuses an AF_INET nexthop) so they load with `ip -6`, while groups must be
    AF_UNSPEC ("Invalid family for group" under -6), and routes infer their family anyway.
    """
    nexthops = directory / "nexthops.batch"
    groups = directory / "groups_routes.batch"
    pods = used_pods(services)
    with nexthops.open("w") as out:
        for pod in pods:
            out.write(
                f"nexthop add id {pod.nexthop_id} encap seg6 mode encap segs {pod.sid}"
                f" dev {UPLINK}\n"
            )
    with groups.open("w") as out:
        out.write(f"sr tunsrc set {UPLINK_ADDRESS.split('/')[0]}\n")
        out.write(f"route add {SID_BLOCK} via {UPLINK_PEER} dev {UPLINK}\n")
        for svc in services:
            members = "/".join(str(p.nexthop_id) for p in svc.backends)
            out.write(
                f"nexthop add id {svc.group_id} group {members} type resilient"
                f" buckets {buckets_for(len(svc.backends))}\n"
            )
            out.write(f"route add {svc.cluster_ip}/128 nhid {svc.group_id}\n")
            if svc.lb_ip is not None:  # --mix: the same group behind the ingress IP
                out.write(f"route add {svc.lb_ip}/128 nhid {svc.group_id}\n")
    lb_routes = sum(1 for svc in services if svc.lb_ip is not None)
    return nexthops, groups, len(pods) + 2 * len(services) + lb_routes + 2


# --- reference 2: kube-proxy iptables mode --------------------------------------------


def kube_hash(prefix: str, *parts: str) -> str:
    # kube-proxy: prefix + base32(sha256(servicePortName + protocol [+ endpoint]))[:16]
    digest = hashlib.sha256("".join(parts).encode()).digest()
    return prefix + base64.b32encode(digest).decode()[:16]


def iptables_restore_input(services: Sequence[Service]) -> tuple[str, int]:
    """kube-proxy's nat table for `services` (ip6tables-restore syntax) and its rule count."""
    chains = ["KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-POSTROUTING", "KUBE-MARK-MASQ"]
    rules = [
        '-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        '-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        '-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING',
        "-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000",
        "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN",
        "-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000",
        '-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT"'
        " -j MASQUERADE --random-fully",
    ]
    for svc in services:
        port_name = f"{svc.name}:http"
        svc_chain = kube_hash("KUBE-SVC-", port_name, "tcp")
        chains.append(svc_chain)
        rules.append(
            f"-A KUBE-SERVICES -d {svc.cluster_ip}/128 -p tcp -m comment"
            f' --comment "{port_name} cluster IP" -m tcp --dport {svc.port} -j {svc_chain}'
        )
        if svc.node_port is not None or svc.lb_ip is not None:  # --mix
            ext_chain = kube_hash("KUBE-EXT-", port_name, "tcp")
            chains.append(ext_chain)
            if svc.lb_ip is not None:
                rules.append(
                    f"-A KUBE-SERVICES -d {svc.lb_ip}/128 -p tcp -m comment --comment"
                    f' "{port_name} loadbalancer IP" -m tcp --dport {svc.port} -j {ext_chain}'
                )
            if svc.node_port is not None:
                rules.append(
                    f'-A KUBE-NODEPORTS -p tcp -m comment --comment "{port_name}" -m tcp'
                    f" --dport {svc.node_port} -j {ext_chain}"
                )
            # externalTrafficPolicy Cluster: masquerade, then the service's chain.
            rules.append(
                f'-A {ext_chain} -m comment --comment "masquerade traffic for {port_name}'
                ' external destinations" -j KUBE-MARK-MASQ'
            )
            rules.append(f"-A {ext_chain} -j {svc_chain}")
        rules.append(
            f"-A {svc_chain} ! -s {POD_CIDR} -d {svc.cluster_ip}/128 -p tcp -m comment"
            f' --comment "{port_name} cluster IP" -m tcp --dport {svc.port} -j KUBE-MARK-MASQ'
        )
        count = len(svc.backends)
        for i, pod in enumerate(svc.backends):
            endpoint = f"[{pod.address}]:{svc.target_port}"
            sep_chain = kube_hash("KUBE-SEP-", port_name, "tcp", endpoint)
            chains.append(sep_chain)
            pick = (
                f" -m statistic --mode random --probability {1 / (count - i):.10f}"
                if i < count - 1
                else ""
            )
            rules.append(
                f'-A {svc_chain} -m comment --comment "{port_name} -> {endpoint}"{pick}'
                f" -j {sep_chain}"
            )
            rules.append(
                f'-A {sep_chain} -s {pod.address}/128 -m comment --comment "{port_name}"'
                " -j KUBE-MARK-MASQ"
            )
            rules.append(
                f'-A {sep_chain} -p tcp -m comment --comment "{port_name}" -m tcp'
                f" -j DNAT --to-destination {endpoint}"
            )
    rules.append(
        '-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must'
        ' be the last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS'
    )
    lines = ["*nat"]
    lines += [f":{c} ACCEPT [0:0]" for c in ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING")]
    lines += [f":{c} - [0:0]" for c in chains]
    lines += rules
    lines.append("COMMIT")
    return "\n".join(lines) + "\n", len(rules)


# --- ours -----------------------------------------------------------------------------


def desired_config(services: Sequence[Service]) -> Any:
    from srv6ctl.dataplane.model import (
        NodeConfig,
        Route,
        Rule,
        SegmentList,
        SrPolicy,
        Steering,
    )
    from srv6ctl.render import SERVICE_TABLE_BASE

    node = ipaddress.IPv6Network(f"{UPLINK_ADDRESS.split('/')[0]}/128")
    node_ports = [svc for svc in services if svc.node_port is not None]

    return NodeConfig(
        encap_source=ipaddress.IPv6Address(UPLINK_ADDRESS.split("/")[0]),
        policies=frozenset(
            SrPolicy(
                bsid=ipaddress.IPv6Address(svc.bsid),
                segment_lists=tuple(
                    SegmentList((ipaddress.IPv6Address(p.sid),)) for p in svc.backends
                ),
                owner=f"svc/{svc.name}/v6",
            )
            for svc in services
        ),
        # A LoadBalancer Service's ingress IP is one more steering into the Service's
        # policy; a NodePort Service's node address one more, in the service's table.
        steerings=frozenset(
            [
                Steering(
                    prefix=ipaddress.IPv6Network(f"{address}/128"),
                    bsid=ipaddress.IPv6Address(svc.bsid),
                )
                for svc in services
                for address in (svc.cluster_ip, svc.lb_ip)
                if address is not None
            ]
            + [
                Steering(node, ipaddress.IPv6Address(svc.bsid), SERVICE_TABLE_BASE + svc.index)
                for svc in node_ports
            ]
        ),
        rules=frozenset(
            Rule(node, SERVICE_TABLE_BASE + svc.index, "TCP", svc.node_port)
            for svc in node_ports
            if svc.node_port is not None
        ),
        routes=frozenset(
            {
                Route(
                    prefix=ipaddress.IPv6Network(SID_BLOCK),
                    via=ipaddress.IPv6Address(UPLINK_PEER),
                    interface=UPLINK,
                )
            }
        ),
    )


def kernel_backend_class() -> tuple[Any, str | None]:
    try:
        from srv6ctl.dataplane import kernel
    except Exception as error:  # any import failure means "not measurable yet"
        return None, f"srv6ctl.dataplane.kernel is not importable: {error!r}"
    backend = getattr(kernel, "KernelBackend", None)
    if backend is None:
        return None, "srv6ctl.dataplane.kernel has no KernelBackend"
    return backend, None


def open_backend(backend_class: Any, netns: str, backends: int) -> Any:
    return backend_class(netns, group_buckets=buckets_for(backends))


# --- namespaces and commands ----------------------------------------------------------


def run(*command: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, input=stdin, capture_output=True, text=True, check=False)


def must(*command: str) -> str:
    done = run(*command)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {done.stderr.strip()}")
    return done.stdout


@contextmanager
def namespace(name: str) -> Iterator[str]:
    """A fresh netns with lo and a veth uplink up and SRv6 enabled; always deleted."""
    must("ip", "netns", "add", name)
    try:
        must("ip", "-n", name, "link", "set", "lo", "up")
        must("ip", "-n", name, "link", "add", UPLINK, "type", "veth", "peer", "name", "up1")
        must("ip", "-n", name, "link", "set", UPLINK, "up")
        must("ip", "-n", name, "link", "set", "up1", "up")
        must("ip", "-n", name, "addr", "add", UPLINK_ADDRESS, "dev", UPLINK, "nodad")
        must("ip", "netns", "exec", name, "sysctl", "-qw", *SYSCTLS)
        yield name
    finally:
        done = run("ip", "netns", "del", name)
        if done.returncode != 0:
            log(f"could not delete netns {name}: {done.stderr.strip()}")
        settle()


def settle(idle: float = 0.9, window: float = 0.2, limit: float = 10.0) -> None:
    """Wait until the CPUs are idle again: the kernel frees a deleted namespace's tens of
    thousands of routes and nexthops in the background (cleanup_net, RCU callbacks), and
    a run timed meanwhile would pay for the previous one's teardown."""

    def total_and_idle() -> tuple[int, int]:
        fields = [int(f) for f in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        return sum(fields), fields[3] + fields[4]  # all ticks, idle + iowait

    end = time.monotonic() + limit
    while time.monotonic() < end:
        total, idle_ticks = total_and_idle()
        time.sleep(window)
        total2, idle2 = total_and_idle()
        if total2 > total and (idle2 - idle_ticks) / (total2 - total) >= idle:
            return


def timed(
    *command: str, stdin: str | None = None
) -> tuple[float, subprocess.CompletedProcess[str]]:
    start = time.perf_counter()
    done = run(*command, stdin=stdin)
    return time.perf_counter() - start, done


def kernel_counts(netns: str) -> dict[str, int]:
    """Routes and nexthops in `netns` (counted untimed, to check that a run loaded it all)."""
    routes = must("ip", "-n", netns, "-6", "route", "show", "proto", "all")
    nexthops = must("ip", "-n", netns, "nexthop", "show")
    return {
        # Connected and link-local routes ("proto kernel") follow from devices, not from us.
        "routes": sum(
            1
            for line in routes.splitlines()
            if line and not line[0].isspace() and " proto kernel " not in line
        ),
        "nexthops": sum(1 for line in nexthops.splitlines() if line.startswith("id ")),
    }


def first_error(stderr: str) -> str | None:
    lines = [line for line in stderr.splitlines() if line.strip()]
    return " | ".join(lines[:3]) if lines else None


# --- the runs -------------------------------------------------------------------------


ENOMEM_TEXT = "Cannot allocate memory"
RETRY_ROUNDS = 50


def load_batch(netns: str, batch: Path, *options: str) -> dict[str, Any]:
    """`ip [options] -n netns -force -batch`, then the lines that failed with ENOMEM again.

    Every seg6 encap state (a route's or a nexthop's) allocates two per-CPU dst caches with
    GFP_ATOMIC (net/ipv6/seg6_iptunnel.c, seg6_build_state), which may only use per-CPU pages
    already populated; adds faster than the allocator's asynchronous refill get ENOMEM in
    bursts of a few hundred messages ("percpu: allocation failed ... atomic=1" in dmesg). A
    real backend must retry those, so the reference does too, inside the timing.
    """
    lines = batch.read_text().splitlines()
    pending = batch
    seconds, enomem, rounds, pause = 0.0, 0, 0, 0.001
    while True:
        elapsed, done = timed("ip", *options, "-n", netns, "-force", "-batch", str(pending))
        seconds += elapsed
        failed: list[int] = []
        other: list[str] = []
        reason = ""
        for line in done.stderr.splitlines():
            if line.startswith("Command failed "):
                number = int(line.rsplit(":", 1)[1])
                if reason == ENOMEM_TEXT:
                    failed.append(number)
                else:
                    other.append(f"{reason} ({lines[number - 1]})")
            elif line.strip():
                reason = line.split(": ", 1)[-1].strip()
        if other or not failed or rounds == RETRY_ROUNDS:
            break
        enomem += len(failed)
        rounds += 1
        lines = [lines[n - 1] for n in failed]
        pending = batch.with_suffix(f".retry{rounds}")
        pending.write_text("\n".join(lines) + "\n")
        time.sleep(pause)
        seconds += pause
        pause = min(pause * 2, 0.1)
    error = "; ".join(other[:3]) or (f"{len(failed)} lines still ENOMEM" if failed else None)
    return {"seconds": seconds, "enomem_retried": enomem, "retry_rounds": rounds, "error": error}


def bench_ip_batch(services: Sequence[Service], netns: str, work: Path) -> dict[str, Any]:
    nexthops, groups, objects = ip_batch_files(services, work)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    first = load_batch(netns, nexthops, "-6")
    second = load_batch(netns, groups)
    cpu = cpu_since(before, resource.RUSAGE_CHILDREN)
    errors = [e for e in (first["error"], second["error"]) if e]
    return {
        "seconds": first["seconds"] + second["seconds"],
        "cpu": cpu,
        "objects": objects,
        "enomem_retried": first["enomem_retried"] + second["enomem_retried"],
        "error": "; ".join(errors) or None,
        "loaded": kernel_counts(netns),
    }


def bench_iptables(services: Sequence[Service], netns: str) -> dict[str, Any]:
    if shutil.which("ip6tables-restore") is None:
        return {"seconds": None, "error": "ip6tables-restore missing: install Debian `iptables`"}
    text, rule_count = iptables_restore_input(services)
    seconds, done = timed("ip", "netns", "exec", netns, "ip6tables-restore", stdin=text)
    if done.returncode:
        return {"seconds": None, "rules": rule_count, "error": first_error(done.stderr)}
    saved = must("ip", "netns", "exec", netns, "ip6tables-save", "-t", "nat")
    loaded = sum(1 for line in saved.splitlines() if line.startswith("-A "))
    return {"seconds": seconds, "rules": rule_count, "loaded_rules": loaded, "error": None}


def bench_nftables(services: Sequence[Service], netns: str) -> dict[str, Any]:
    """kube-proxy's nftables mode: its first full sync, one `nft -f -` transaction."""
    if shutil.which("nft") is None:
        return {"seconds": None, "error": "nft missing: install Debian `nftables`"}
    rules = kube_proxy_nftables.ruleset(
        services, POD_CIDR, SERVICE_CIDR, UPLINK_ADDRESS.split("/")[0]
    )
    expected = rules.expected()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    seconds, done = timed("ip", "netns", "exec", netns, "nft", "-f", "-", stdin=rules.text)
    cpu = cpu_since(before, resource.RUSAGE_CHILDREN)
    if done.returncode:
        return {"seconds": None, "expected": expected, "error": first_error(done.stderr)}
    listing = json.loads(must("ip", "netns", "exec", netns, "nft", "-j", "list", "ruleset"))
    loaded = kube_proxy_nftables.loaded_counts(listing)
    return {
        "seconds": seconds,
        "cpu": cpu,
        "lines": len(rules.lines),
        "expected": expected,
        "loaded": loaded,
        "error": None if loaded == expected else "nft list ruleset differs from the input",
    }


def bench_ours(services: Sequence[Service], netns: str, backends: int) -> dict[str, Any]:
    backend_class, reason = kernel_backend_class()
    if backend_class is None:
        return {"seconds": None, "reason": reason}
    from srv6ctl.dataplane.reconcile import plan

    desired = desired_config(services)
    backend = None
    try:
        start = time.perf_counter()
        backend = open_backend(backend_class, netns, backends)
        actual = backend.dump()
        planning = time.perf_counter()
        changes = plan(desired, actual)
        applying = time.perf_counter()
        before = resource.getrusage(resource.RUSAGE_SELF)
        backend.apply(changes)
        end = time.perf_counter()
        cpu = cpu_since(before, resource.RUSAGE_SELF)
        retries = getattr(backend, "retries", None)
    except Exception as error:
        return {"seconds": None, "reason": f"KernelBackend failed: {error!r}"}
    finally:
        if backend is not None and hasattr(backend, "close"):
            backend.close()
    return {
        "seconds": end - applying,
        "cpu": cpu,
        "plan_seconds": applying - planning,
        "end_to_end_seconds": end - start,
        "changes": len(changes),
        "enomem_retried": retries,
        "loaded": kernel_counts(netns),
        **restart(backend_class, netns, backends, desired),
        "reason": None,
    }


def restart(backend_class: Any, netns: str, backends: int, desired: Any) -> dict[str, Any]:
    """A second backend on the loaded namespace: its plan must be empty, its writes 0."""
    from srv6ctl.dataplane.reconcile import plan

    start = time.perf_counter()
    try:
        with open_backend(backend_class, netns, backends) as backend:
            changes = plan(desired, backend.dump())
            backend.apply(changes)
            return {
                "restart_seconds": time.perf_counter() - start,
                "restart_changes": len(changes),
                "restart_writes": backend.writes,
            }
    except Exception as error:
        return {"restart_error": repr(error)}


def cpu_since(before: resource.struct_rusage, who: int) -> dict[str, float]:
    after = resource.getrusage(who)
    return {
        "user": round(after.ru_utime - before.ru_utime, 3),
        "sys": round(after.ru_stime - before.ru_stime, 3),
    }


def peak_rss() -> float:
    """This process's peak resident set so far, in MiB (ru_maxrss is KiB on Linux)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return round(numerator / denominator, 3)


def rounded(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=10_000)
    parser.add_argument("--backends", type=int, default=10)
    parser.add_argument(
        "--pods",
        type=int,
        help="pod pool the backends are drawn from (default services*backends/4)",
    )
    parser.add_argument("--nodes", type=int, default=100, help="nodes the pods are spread over")
    parser.add_argument("--seed", type=int, default=6)
    parser.add_argument("--quick", action="store_true", help="200 services x 4 backends")
    parser.add_argument("--skip-ours", action="store_true", help="references only")
    parser.add_argument(
        "--mix",
        action="store_true",
        help="20%% NodePort and 10%% LoadBalancer services (one ingress IP each)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.services, args.backends = 200, 4
    node_ported = sum(1 for i in range(args.services) if i % 10 < 2) if args.mix else 0
    if node_ported > len(NODE_PORTS):
        parser.error(f"--mix: {node_ported} NodePort services, the range has {len(NODE_PORTS)}")
    pods = args.pods or max(args.backends, args.services * args.backends // 4)
    if os.geteuid() != 0:
        parser.error("needs root (network namespaces)")

    # SIGTERM must still run the finally blocks that delete our namespaces.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    services = make_services(args.services, args.backends, pods, args.nodes, args.seed, args.mix)
    prefix = f"srv6bench-{os.getpid()}"
    log(f"{args.services} services x {args.backends} backends, {len(used_pods(services))} pods")

    # Ours first, so that the peak RSS taken right after it is ours, not the references'.
    if args.skip_ours:
        ours: dict[str, Any] = {"seconds": None, "reason": "--skip-ours"}
    else:
        with namespace(f"{prefix}-ours") as netns:
            ours = bench_ours(services, netns, args.backends)
    peak_rss_mb = peak_rss()
    log(f"ours: {ours}")
    with tempfile.TemporaryDirectory(prefix="srv6bench-") as tmp:
        with namespace(f"{prefix}-ipbatch") as netns:
            ip_batch = bench_ip_batch(services, netns, Path(tmp))
        log(f"ip -batch: {ip_batch}")
    with namespace(f"{prefix}-iptables") as netns:
        iptables = bench_iptables(services, netns)
    log(f"ip6tables-restore: {iptables}")
    with namespace(f"{prefix}-nft") as netns:
        nftables = bench_nftables(services, netns)
    log(f"nft -f: {nftables}")

    ours_s = ours["seconds"]
    objects = ip_batch["objects"]
    result = {
        "bench": "kernel_programming",
        "services": args.services,
        "backends": args.backends,
        "ip_batch_s": rounded(ip_batch["seconds"]),
        "iptables_restore_s": rounded(iptables["seconds"]),
        "nft_s": rounded(nftables["seconds"]),
        "ours_apply_s": rounded(ours_s),
        "ours_plan_s": rounded(ours.get("plan_seconds")),
        "ours_end_to_end_s": rounded(ours.get("end_to_end_seconds")),
        "ratio": ratio(ours_s, ip_batch["seconds"]),
        "ratio_end_to_end": ratio(ours.get("end_to_end_seconds"), ip_batch["seconds"]),
        "ratio_vs_iptables": ratio(ours_s, iptables["seconds"]),
        "ratio_nftables": ratio(ours_s, nftables["seconds"]),
        "ip_batch_cpu": ip_batch["cpu"],
        "ours_apply_cpu": ours.get("cpu"),
        "objects_per_s": round(objects / ours_s) if ours_s else None,
        "peak_rss_mb": peak_rss_mb,
        "peak_rss_total_mb": peak_rss(),
        "objects": objects,
        "ours_anchor_routes": args.services if ours_s else None,
        "pods": len(used_pods(services)),
        "ip_batch_objects_per_s": round(objects / ip_batch["seconds"]),
        "ip_batch_enomem_retried": ip_batch["enomem_retried"],
        "ours_enomem_retried": ours.get("enomem_retried"),
        "ip_batch_error": ip_batch["error"],
        "ip_batch_loaded": ip_batch["loaded"],
        "iptables_rules": iptables.get("rules"),
        "iptables_error": iptables.get("error"),
        "nft_cpu": nftables.get("cpu"),
        "nft_lines": nftables.get("lines"),
        # What kube-proxy's transaction creates, and what `nft -j list ruleset` shows.
        "nft_expected": nftables.get("expected"),
        "nft_loaded": nftables.get("loaded"),
        "nft_error": nftables.get("error"),
        "ours_reason": ours.get("reason"),
        "ours_loaded": ours.get("loaded"),
        # Same route and nexthop counts as the reference: ours really programmed it all.
        "ours_matches_ip_batch": (ours["loaded"] == ip_batch["loaded"]) if ours_s else None,
        "ours_restart_s": rounded(ours.get("restart_seconds")),
        "ours_restart_changes": ours.get("restart_changes"),
        "ours_restart_writes": ours.get("restart_writes"),
        "ours_restart_error": ours.get("restart_error"),
    }
    if args.mix:
        result["mix"] = {
            "nodeport": sum(1 for svc in services if svc.node_port is not None),
            "loadbalancer": sum(1 for svc in services if svc.lb_ip is not None),
        }
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
