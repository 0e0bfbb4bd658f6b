"""What NodePort rules cost the node's forwarding: packets/s through a router namespace.

The kernel walks ip rules as a list on every route lookup, so NodePort rules (one per
node port and family, `srv6ctl/dataplane/kernel_rules.py`) sit in front of every packet
the node forwards unless something sends that traffic past them: the gate, `not to N goto
<local>`. Three namespaces, A → R → B over veths; A sends small UDP datagrams to B for a
few seconds and B counts what arrives. Run side by side in the same process:

- reference: R with no rules of ours (what kube-proxy's nftables mode costs routing: its
  NodePort match is a hash lookup in nftables, none in the rule list);
- ours: R with `--services` NodePort services' rules (TCP and UDP each), written through
  `KernelBackend` (so with the gate), and, for the record, the same rules with the gate
  deleted (`ungated`): what the gate saves.

The last line is one JSON object: {"bench", figures, "ratio": ours / reference} (packets
per second; 1.0 is no cost). Needs root; no SRv6 (rules and routes only).

    python -m bench.rule_walk --services 10000 --seconds 3
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import socket
import subprocess
import threading
import time
import uuid

from srv6ctl.dataplane.kernel import KernelBackend
from srv6ctl.dataplane.kernel_rules import GATE_PRIORITY
from srv6ctl.dataplane.model import NodeConfig, Route, RouteKind, Rule
from srv6ctl.dataplane.nsenter import run_in_netns
from srv6ctl.dataplane.reconcile import plan
from srv6ctl.render import SERVICE_TABLE_BASE

NODE = "10.1.0.1"  # R's address on A's side: the "node address" the NodePorts are on
TARGET = ("10.2.0.2", 9999)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


class Bench:
    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:6]
        self.a, self.r, self.b = (f"rw{x}-{tag}" for x in "arb")

    def __enter__(self) -> Bench:
        for ns in (self.a, self.r, self.b):
            _ip("netns", "add", ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        _ip(
            "-n", self.a, "link", "add", "a0", "type", "veth", "peer", "name", "r0", "netns", self.r
        )
        _ip(
            "-n", self.b, "link", "add", "b0", "type", "veth", "peer", "name", "r1", "netns", self.r
        )
        for ns, dev, address, via in (
            (self.a, "a0", "10.1.0.2/24", NODE),
            (self.b, "b0", "10.2.0.2/24", "10.2.0.1"),
        ):
            _ip("-n", ns, "addr", "add", address, "dev", dev)
            _ip("-n", ns, "link", "set", dev, "up")
            _ip("-n", ns, "route", "add", "default", "via", via)
        for dev, address in (("r0", f"{NODE}/24"), ("r1", "10.2.0.1/24")):
            _ip("-n", self.r, "addr", "add", address, "dev", dev)
            _ip("-n", self.r, "link", "set", dev, "up")
        subprocess.run(
            ["ip", "netns", "exec", self.r, "sysctl", "-qw", "net.ipv4.ip_forward=1"], check=True
        )
        return self

    def __exit__(self, *exc: object) -> None:
        for ns in (self.a, self.r, self.b):
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)

    def forwarded_per_second(self, seconds: float) -> float:
        """Datagrams A → B through R, per second, as B counts them."""
        receiver = run_in_netns(
            f"/var/run/netns/{self.b}", lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        )
        receiver.bind(TARGET)
        receiver.settimeout(0.5)
        received = 0

        def count() -> None:
            nonlocal received
            while True:
                try:
                    receiver.recv(64)
                except TimeoutError:
                    return
                received += 1

        counter = threading.Thread(target=count)
        counter.start()

        def send() -> None:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
                end = time.monotonic() + seconds
                while time.monotonic() < end:
                    for _ in range(100):
                        sender.sendto(b"x", TARGET)

        run_in_netns(f"/var/run/netns/{self.a}", send)
        counter.join()
        receiver.close()
        return received / seconds

    @staticmethod
    def rules(services: int) -> NodeConfig:
        """One NodePort service per port of the default range, TCP and UDP each: a table
        with a reject route for the node's address, and a rule per protocol into it."""
        node = ipaddress.ip_network(f"{NODE}/32")
        routes, rules = [], []
        for index in range(1, services + 1):
            table = SERVICE_TABLE_BASE + index
            routes.append(Route(node, kind=RouteKind.PROHIBIT, table=table))
            for protocol in ("TCP", "UDP"):
                rules.append(Rule(node, table, protocol, 29999 + index))
        return NodeConfig(routes=frozenset(routes), rules=frozenset(rules))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--services", type=int, default=2768, help="NodePort services (the default range: 2768)"
    )
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    services = min(args.services, 2768)  # the default NodePort range holds 2768 ports
    with Bench() as bench:
        reference = bench.forwarded_per_second(args.seconds)
        backend = KernelBackend(f"/var/run/netns/{bench.r}", configure_sysctls=False)
        desired = bench.rules(services)
        backend.apply(plan(desired, backend.dump()))
        ours = bench.forwarded_per_second(args.seconds)
        # The same rules without the gate, for the record: what the gate saves.
        subprocess.run(
            ["ip", "-n", bench.r, "rule", "del", "pref", str(GATE_PRIORITY)],
            check=True,
            capture_output=True,
        )
        ungated = bench.forwarded_per_second(args.seconds)
    result = {
        "bench": "rule_walk",
        "services": services,
        "rules": len(desired.rules),
        "reference_pps": round(reference),
        "ours_pps": round(ours),
        "ungated_pps": round(ungated),
        "ratio": round(ours / reference, 3) if reference else None,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
