"""NetworkPolicy verdicts in the lab: what the compiler says each flow may do, and what it does.

For the lab's pods and the policies present, every pod → pod flow (each container port,
TCP and UDP, each address family) and every client → service flow (each service port,
80 → targetPort 8080 included) gets an expected verdict from the pure compiler
(`PodRules.egress_allows` of the source, `ingress_allows` of the destination — for a
service, of each backend, at the ClusterIP and service port it receives). Then real
connections are made from inside the source pods to the lab's pod servers, all at once
(non-blocking sockets, one deadline): a flow is allowed when the server answered,
blocked when the sender's egress refused it (EPERM) or nothing answered in time. A
mismatch is confirmed by a second, slower try before it is reported (a lost first SYN).

`srv6ctl lab policy apply --wait` waits with it until the agents have programmed the
policies; `srv6ctl verify`'s policy group (`srv6ctl.verify.policy`) judges the lab by it.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import selectors
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from policies import model
from policies.compiler import compile_node
from srv6ctl.lab import objects
from srv6ctl.lab.kubernetes_policy import policy_store
from srv6ctl.lab.policy import LabPolicy, lab_cluster
from srv6ctl.lab.state import LabPaths, LabState, PodRecord
from srv6ctl.observe.netinfo import sockets_in

ROUND_SECONDS = 1.0  # how long an unanswered flow is given (an allowed one takes ms)
CONFIRM_SECONDS = 3.0  # a mismatch's second try: past the first SYN retransmission (1 s)
SETTLE_SECONDS = 20.0
UDP_RESEND_SECONDS = 0.25
PROTOCOLS = (model.Protocol.TCP, model.Protocol.UDP)


class Verdict(StrEnum):
    ALLOWED = "allowed"
    BLOCKED = "blocked"
    EITHER = "allowed by some backends"  # a service whose backends disagree


@dataclass(frozen=True)
class Flow:
    """One connection to try, and what the policies say of it."""

    src: str  # pod name
    src_netns: str
    src_address: model.IPAddress
    dst: str  # pod name, or "service NAME"
    address: model.IPAddress
    protocol: model.Protocol
    port: int
    expected: Verdict
    answerers: frozenset[str]  # pods that may answer: the destination, allowed backends

    @property
    def label(self) -> str:
        host = f"[{self.address}]" if self.address.version == 6 else str(self.address)
        return f"{self.src}→{self.dst} {host}:{self.port}/{self.protocol}"


@dataclass(frozen=True)
class Seen:
    allowed: bool
    pod: str | None = None  # who answered
    why: str = ""  # why not: refused by the sender, timed out, ...

    def __str__(self) -> str:
        if self.allowed:
            return f"allowed (answered by {self.pod})" if self.pod else "allowed"
        return f"blocked ({self.why})"


# --- expected verdicts (pure) -------------------------------------------------------------------


def _addresses(pod: PodRecord) -> dict[int, model.IPAddress]:
    return {model.ip(a).version: model.ip(a) for a in (pod.ipv6, pod.ipv4) if a}


def expected_flows(state: LabState, cluster: model.Cluster) -> list[Flow]:
    """Every flow verify tries, with the compiler's verdict."""
    rules = compile_node(cluster)

    def allows_out(pod: PodRecord, dst: model.IPAddress, proto: model.Protocol, port: int) -> bool:
        own = rules.get(model.PodKey(pod.namespace, pod.name))
        return own is None or own.egress_allows(dst, proto, port)

    def allows_in(
        pod: PodRecord,
        src: model.IPAddress,
        proto: model.Protocol,
        port: int,
        dst: model.IPAddress | None = None,
    ) -> bool:
        own = rules.get(model.PodKey(pod.namespace, pod.name))
        return own is None or own.ingress_allows(src, proto, port, dst)

    flows = []
    ports = sorted({port for _, port, _ in objects.CONTAINER_PORTS})
    for a in state.pods:
        for b in state.pods:
            if a is b:
                continue
            dst_addresses = _addresses(b)
            for family, src in _addresses(a).items():
                dst = dst_addresses.get(family)
                if dst is None:
                    continue
                for proto in PROTOCOLS:
                    for port in ports:
                        allowed = allows_out(a, dst, proto, port) and allows_in(b, src, proto, port)
                        flows.append(
                            Flow(
                                a.name,
                                a.netns,
                                src,
                                b.name,
                                dst,
                                proto,
                                port,
                                Verdict.ALLOWED if allowed else Verdict.BLOCKED,
                                frozenset({b.name}),
                            )
                        )
    for service in state.services:
        backends = state.backends(service.name)
        if not backends:
            continue
        for client in state.pods:
            if client in backends:
                continue  # its flows may reach itself, which every policy allows
            for family, src in _addresses(client).items():
                cluster_ip = next(
                    (
                        model.ip(a)
                        for a in (service.cluster_ipv6, service.cluster_ipv4)
                        if a and model.ip(a).version == family
                    ),
                    None,
                )
                if cluster_ip is None:
                    continue
                for _, port, _, protocol in objects.SERVICE_PORTS:
                    proto = model.Protocol(protocol)
                    allowed_backends = frozenset(
                        b.name
                        for b in backends
                        if family in _addresses(b)
                        and allows_out(client, cluster_ip, proto, port)
                        and allows_in(b, src, proto, port, cluster_ip)
                    )
                    reachable = [b for b in backends if family in _addresses(b)]
                    if not allowed_backends:
                        verdict = Verdict.BLOCKED
                    elif len(allowed_backends) == len(reachable):
                        verdict = Verdict.ALLOWED
                    else:
                        verdict = Verdict.EITHER
                    flows.append(
                        Flow(
                            client.name,
                            client.netns,
                            src,
                            f"service {service.name}",
                            cluster_ip,
                            proto,
                            port,
                            verdict,
                            allowed_backends,
                        )
                    )
    return flows


def mismatch(flow: Flow, seen: Seen) -> str | None:
    """Why what was seen is not what the policies say; None when it is."""
    if seen.allowed and flow.expected is Verdict.BLOCKED:
        return f"expected blocked, got {seen}"
    if not seen.allowed and flow.expected is Verdict.ALLOWED:
        return f"expected allowed, got {seen}"
    if seen.allowed and seen.pod is not None and seen.pod not in flow.answerers:
        allowed = ", ".join(sorted(flow.answerers))
        return f"expected an answer from {allowed}, got {seen}"
    return None


# --- real flows ------------------------------------------------------------------------------


@dataclass
class _Try:
    flow: Flow
    sock: socket.socket
    connected: bool = False
    sent_at: float = 0.0


def probe(flows: Sequence[Flow], seconds: float = ROUND_SECONDS) -> list[Seen]:
    """Try every flow at once from its source pod; what each one saw, in order."""
    results: list[Seen | None] = [None] * len(flows)
    by_source: dict[tuple[str, int, model.Protocol], list[int]] = {}
    for i, flow in enumerate(flows):
        key = (flow.src_netns, flow.address.version, flow.protocol)
        by_source.setdefault(key, []).append(i)
    tries: dict[int, _Try] = {}
    selector = selectors.DefaultSelector()
    try:
        for (netns, version, proto), indexes in by_source.items():
            family = socket.AF_INET6 if version == 6 else socket.AF_INET
            kind = socket.SOCK_STREAM if proto is model.Protocol.TCP else socket.SOCK_DGRAM
            make = functools.partial(socket.socket, family, kind)
            socks = sockets_in(netns, make, len(indexes))
            for i, sock in zip(indexes, socks, strict=True):
                sock.setblocking(False)
                attempt = tries[i] = _Try(flows[i], sock)
                results[i] = _start(attempt, selector, i)
                if results[i] is not None:
                    _forget(selector, sock)
        deadline = time.monotonic() + seconds
        while any(r is None for r in results):
            now = time.monotonic()
            if now >= deadline:
                break
            for i, attempt in tries.items():
                udp = attempt.sock.type == socket.SOCK_DGRAM
                if results[i] is None and udp and now - attempt.sent_at >= UDP_RESEND_SECONDS:
                    results[i] = _send(attempt)  # datagrams may be lost: send again
                    if results[i] is not None:
                        _forget(selector, attempt.sock)
            timeout = min(deadline - now, UDP_RESEND_SECONDS)
            for ready, events in selector.select(timeout):
                i = ready.data
                if results[i] is None:
                    results[i] = _progress(tries[i], selector, events)
                if results[i] is not None:
                    _forget(selector, tries[i].sock)
        for i, result in enumerate(results):
            if result is None:
                attempt = tries[i]
                results[i] = (
                    Seen(True, None, "")  # connected; the answer line was late
                    if attempt.connected
                    else Seen(False, why=f"no answer within {seconds:.1f} s")
                )
    finally:
        selector.close()
        for attempt in tries.values():
            attempt.sock.close()
    return [r for r in results if r is not None]


def _forget(selector: selectors.BaseSelector, sock: socket.socket) -> None:
    with contextlib.suppress(KeyError, ValueError):
        selector.unregister(sock)


def _refused(err: int) -> Seen:
    # EPERM: the sender's own netfilter dropped it (its egress chain).
    reason = "refused by the sender" if err == errno.EPERM else errno.errorcode.get(err, str(err))
    return Seen(False, why=reason)


def _start(attempt: _Try, selector: selectors.BaseSelector, index: int) -> Seen | None:
    flow, sock = attempt.flow, attempt.sock
    if sock.type == socket.SOCK_STREAM:
        code = sock.connect_ex((str(flow.address), flow.port))
        if code not in (0, errno.EINPROGRESS):
            return _refused(code)
        selector.register(sock, selectors.EVENT_WRITE | selectors.EVENT_READ, index)
        return None
    sock.bind(("::" if flow.address.version == 6 else "0.0.0.0", 0))
    selector.register(sock, selectors.EVENT_READ, index)
    return _send(attempt)


def _send(attempt: _Try) -> Seen | None:
    attempt.sent_at = time.monotonic()
    try:
        attempt.sock.sendto(b"policy\n", (str(attempt.flow.address), attempt.flow.port))
    except BlockingIOError:
        return None
    except OSError as err:
        return _refused(err.errno or 0)
    return None


def _progress(attempt: _Try, selector: selectors.BaseSelector, events: int) -> Seen | None:
    sock = attempt.sock
    if sock.type == socket.SOCK_DGRAM:
        try:
            data, _ = sock.recvfrom(4096)
        except BlockingIOError:
            return None
        except OSError as err:
            return _refused(err.errno or 0)
        return Seen(True, _pod_of(data))
    if not attempt.connected:
        code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code:
            return _refused(code)
        attempt.connected = True
        selector.modify(sock, selectors.EVENT_READ, selector.get_key(sock).data)
        if not events & selectors.EVENT_READ:
            return None
    try:
        data = sock.recv(4096)
    except BlockingIOError:
        return None
    except OSError as err:
        return Seen(True, why=f"connected, then {errno.errorcode.get(err.errno or 0)}")
    return Seen(True, _pod_of(data))


def _pod_of(data: bytes) -> str | None:
    try:
        return str(json.loads(data.splitlines()[0])["pod"])
    except (ValueError, KeyError, IndexError, TypeError):
        return None


def judge(flows: Sequence[Flow]) -> list[tuple[Flow, str]]:
    """The flows whose verdict on the wire is not the expected one, twice over."""
    first = probe(flows)
    suspects = [f for f, seen in zip(flows, first, strict=True) if mismatch(f, seen)]
    if not suspects:
        return []
    second = probe(suspects, CONFIRM_SECONDS)
    out = []
    for flow, seen in zip(suspects, second, strict=True):
        problem = mismatch(flow, seen)
        if problem:
            out.append((flow, problem))
    return out


def settle(flows: Sequence[Flow], timeout: float = SETTLE_SECONDS) -> list[tuple[Flow, str]]:
    """Try until every flow's verdict is the expected one (the agents have programmed
    the policies) or `timeout` passes; the flows still wrong then, confirmed."""
    deadline = time.monotonic() + timeout
    pending = list(flows)
    while pending and time.monotonic() < deadline:
        seen = probe(pending)
        pending = [f for f, s in zip(pending, seen, strict=True) if mismatch(f, s)]
        if pending:
            time.sleep(0.1)
    return judge(pending) if pending else []


def cluster_now(paths: LabPaths, state: LabState) -> tuple[model.Cluster, list[LabPolicy]]:
    """The lab with the policies its objects directory holds now."""
    store = policy_store(paths, state)
    present = store.present()
    return lab_cluster(state, present, store.namespaces()), present


def wait_programmed(paths: LabPaths, state: LabState, timeout: float) -> tuple[int, list[str]]:
    """Until every pod → pod and pod → service verdict on the wire is the one the lab's
    policies give (the agents have programmed them); the number of flows tried and the
    ones still wrong at `timeout`."""
    cluster, _ = cluster_now(paths, state)
    flows = expected_flows(state, cluster)
    return len(flows), [f"{flow.label}: {problem}" for flow, problem in settle(flows, timeout)]
