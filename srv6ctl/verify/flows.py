"""Real TCP and UDP flows from inside pods to the lab's pod servers (`srv6ctl.lab.podserver`).

Sockets are created in the client pod's namespace (and stay there), then used from here.
Every answer is the server's own account of the flow — which pod answered, which peer and
which local address/port it saw — plus what the client saw answering: the peer of the TCP
connection, the source of the UDP reply.
"""

from __future__ import annotations

import ipaddress
import json
import socket
from dataclasses import dataclass
from typing import Any

from srv6ctl.observe.netinfo import sockets_in


@dataclass(frozen=True)
class Answer:
    pod: str  # short pod name of the server
    peer: str  # the client address the server saw
    peer_port: int
    local: str  # the address the server was reached at
    local_port: int
    reply_from: tuple[str, int]  # what the client saw answering
    sport: int  # the client's source port
    proto: str = "tcp"  # "tcp" or "udp", as the server answered


@dataclass(frozen=True)
class Failure:
    error: str
    sport: int


Result = Answer | Failure


def _family(address: Any) -> socket.AddressFamily:
    return socket.AF_INET6 if ipaddress.ip_address(str(address)).version == 6 else socket.AF_INET


def _plain(address: str) -> str:
    return str(ipaddress.ip_address(address.split("%", 1)[0]))


def _answer(line: bytes, reply_from: tuple[str, int], sport: int) -> Answer:
    data = json.loads(line)
    return Answer(
        pod=str(data["pod"]),
        peer=_plain(str(data["peer"])),
        peer_port=int(data["peer_port"]),
        local=_plain(str(data["local"])) if data["local"] else "",
        local_port=int(data["local_port"]),
        reply_from=(_plain(reply_from[0]), int(reply_from[1])),
        sport=sport,
        proto=str(data.get("proto", "tcp")),
    )


def tcp_flows(
    netns: str,
    dst: Any,
    port: int,
    count: int = 1,
    *,
    sports: list[int] | None = None,
    timeout: float = 3.0,
    source: str | None = None,
) -> list[Result]:
    """`count` TCP connections (one each from a distinct source port; ephemeral ones
    unless `sports` are given; from `source`, else the address the kernel picks), each
    reading the server's one-line answer."""
    family = _family(dst)
    total = len(sports) if sports is not None else count
    socks = sockets_in(netns, lambda: socket.socket(family, socket.SOCK_STREAM), total)
    results: list[Result] = []
    for i, sock in enumerate(socks):
        sport = 0
        try:
            sock.settimeout(timeout)
            if sports is not None or source is not None:
                # Reusing a 4-tuple whose last connection is in TIME_WAIT on our side.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                anywhere = "::" if family == socket.AF_INET6 else "0.0.0.0"
                sock.bind((source or anywhere, sports[i] if sports is not None else 0))
            sock.connect((str(dst), port))
            sport = int(sock.getsockname()[1])
            peer = sock.getpeername()
            line = sock.makefile("rb").readline()
            if not line:
                results.append(Failure("connection closed without an answer", sport))
            else:
                results.append(_answer(line, (peer[0], peer[1]), sport))
        except OSError as err:
            results.append(Failure(f"{type(err).__name__}: {err.strerror or err}", sport))
        finally:
            sock.close()
    return results


def udp_flows(
    netns: str,
    dst: Any,
    port: int,
    count: int = 1,
    *,
    sports: list[int] | None = None,
    timeout: float = 2.0,
    retries: int = 2,
) -> list[Result]:
    """One datagram per source port, unconnected (so a reply from any source is seen and
    reported, not silently filtered by the kernel), answer awaited."""
    family = _family(dst)
    wildcard = "::" if family == socket.AF_INET6 else "0.0.0.0"
    total = len(sports) if sports is not None else count
    socks = sockets_in(netns, lambda: socket.socket(family, socket.SOCK_DGRAM), total)
    results: list[Result] = []
    for i, sock in enumerate(socks):
        sport = 0
        try:
            sock.settimeout(timeout / (retries + 1))
            if sports is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((wildcard, sports[i] if sports is not None else 0))
            sport = int(sock.getsockname()[1])
            for attempt in range(retries + 1):
                sock.sendto(b"hello\n", (str(dst), port))
                try:
                    data, source = sock.recvfrom(4096)
                except TimeoutError:
                    if attempt == retries:
                        raise
                    continue
                results.append(_answer(data, (source[0], source[1]), sport))
                break
        except OSError as err:
            results.append(Failure(f"{type(err).__name__}: {err.strerror or err}", sport))
        finally:
            sock.close()
    return results


def answers(results: list[Result]) -> list[Answer]:
    return [r for r in results if isinstance(r, Answer)]


def failures(results: list[Result]) -> list[Failure]:
    return [r for r in results if isinstance(r, Failure)]
