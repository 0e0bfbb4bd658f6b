"""The lab pods' tiny server: answers who it is and whom it saw, over TCP and UDP.

    python -m srv6ctl.lab.podserver --pod web-1 --http 8080 --echo 8081

On the `http` port a TCP connection gets one JSON line and is closed; on the `echo` port
it gets one line at once and one more for every chunk it sends, and stays open (long-lived
flows: verify's flow-affinity check). Every UDP datagram gets one JSON datagram back.
The line says the pod's name and both ends of the flow *as this pod saw them*, which is
what `srv6ctl verify` checks: the peer is the client pod's own address (no NAT), the
local address is the service's ClusterIP (it arrived unchanged over End.DX6), and the
local port is the targetPort (the pod rewrote the service port).

UDP replies are sent from the address the request was sent to (IPV6_PKTINFO/IP_PKTINFO):
a wildcard UDP socket would otherwise answer from the pod's own address, and the client,
which talked to the ClusterIP, would discard the reply. TCP does this by itself.

Standard library only, one thread, no per-request allocations worth mentioning: it runs
in every lab pod.
"""

from __future__ import annotations

import argparse
import json
import selectors
import socket
import struct
import sys

IPV6_RECVPKTINFO = getattr(socket, "IPV6_RECVPKTINFO", 49)
IPV6_PKTINFO = getattr(socket, "IPV6_PKTINFO", 50)
IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)  # Linux; not exported by every Python
_IN6_PKTINFO = struct.Struct("=16sI")  # struct in6_pktinfo
_IN_PKTINFO = struct.Struct("=I4s4s")  # struct in_pktinfo: ifindex, spec_dst, addr


def answer(pod: str, proto: str, peer: tuple[str, int], local: tuple[str, int]) -> bytes:
    return (
        json.dumps(
            {
                "pod": pod,
                "proto": proto,
                "peer": _plain(peer[0]),
                "peer_port": peer[1],
                "local": _plain(local[0]),
                "local_port": local[1],
            }
        )
        + "\n"
    ).encode()


def _plain(address: str) -> str:
    return address.split("%", 1)[0]


def _listeners(ports: list[int]) -> list[tuple[socket.socket, str]]:
    out: list[tuple[socket.socket, str]] = []
    for port in ports:
        for family, wildcard in ((socket.AF_INET6, "::"), (socket.AF_INET, "0.0.0.0")):
            tcp = socket.socket(family, socket.SOCK_STREAM)
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            udp = socket.socket(family, socket.SOCK_DGRAM)
            if family == socket.AF_INET6:
                # One socket per family: IPv4 requests then carry IPv4 packet info.
                for sock in (tcp, udp):
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                udp.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVPKTINFO, 1)
            else:
                udp.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
            tcp.bind((wildcard, port))
            tcp.listen(512)
            udp.bind((wildcard, port))
            for sock in (tcp, udp):
                sock.setblocking(False)
            out += [(tcp, "tcp"), (udp, "udp")]
    return out


def _serve_udp(sock: socket.socket, pod: str) -> None:
    port = sock.getsockname()[1]
    while True:
        try:
            _, ancillary, _, peer = sock.recvmsg(2048, 256)
        except BlockingIOError:
            return
        local, reply_info = None, []
        for level, kind, data in ancillary:
            if level == socket.IPPROTO_IPV6 and kind == IPV6_PKTINFO:
                raw, _ = _IN6_PKTINFO.unpack_from(data)
                local = socket.inet_ntop(socket.AF_INET6, raw)
                # Source = the address asked for; interface 0 lets routing choose.
                reply_info = [(socket.IPPROTO_IPV6, IPV6_PKTINFO, _IN6_PKTINFO.pack(raw, 0))]
            elif level == socket.IPPROTO_IP and kind == IP_PKTINFO:
                _, _, raw = _IN_PKTINFO.unpack_from(data)
                local = socket.inet_ntop(socket.AF_INET, raw)
                reply_info = [(socket.IPPROTO_IP, IP_PKTINFO, _IN_PKTINFO.pack(0, raw, raw))]
        message = answer(pod, "udp", (peer[0], peer[1]), (local or "", port))
        try:
            sock.sendmsg([message], reply_info, 0, peer)
        except OSError as err:  # one bad peer must not stop the pod's server
            print(f"udp reply to {peer[0]} failed: {err}", file=sys.stderr, flush=True)


def _tcp_answer(conn: socket.socket, pod: str) -> bool:
    """Send this connection's answer line; False when the peer is gone."""
    try:
        peer, local = conn.getpeername(), conn.getsockname()
        conn.settimeout(1.0)  # a line of JSON: a stalled peer must not stall the pod
        conn.sendall(answer(pod, "tcp", (peer[0], peer[1]), (local[0], local[1])))
        return True
    except OSError as err:
        print(f"tcp answer failed: {err}", file=sys.stderr, flush=True)
        return False


def _accept(sock: socket.socket, pod: str, selector: selectors.BaseSelector, echo: bool) -> None:
    while True:
        try:
            conn, _ = sock.accept()
        except BlockingIOError:
            return
        if _tcp_answer(conn, pod) and echo:
            conn.setblocking(False)
            selector.register(conn, selectors.EVENT_READ, "conn")
        else:
            conn.close()


def _echo(conn: socket.socket, pod: str, selector: selectors.BaseSelector) -> None:
    try:
        data = conn.recv(4096)
    except BlockingIOError:
        return
    except OSError:
        data = b""
    if not data or not _tcp_answer(conn, pod):
        selector.unregister(conn)
        conn.close()
        return
    conn.setblocking(False)


def serve(pod: str, http_port: int, echo_port: int) -> None:
    selector = selectors.DefaultSelector()
    for listener, proto in _listeners([http_port, echo_port]):
        echo = listener.getsockname()[1] == echo_port
        selector.register(listener, selectors.EVENT_READ, proto + ("-echo" if echo else ""))
    print(
        f"pod {pod}: listening (http {http_port}, echo {echo_port}; tcp, udp; IPv6, IPv4)",
        flush=True,
    )
    while True:
        for key, _ in selector.select():
            sock = key.fileobj
            if not isinstance(sock, socket.socket):
                continue
            if key.data.startswith("udp"):
                _serve_udp(sock, pod)
            elif key.data == "conn":
                _echo(sock, pod, selector)
            else:
                _accept(sock, pod, selector, echo=key.data == "tcp-echo")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="srv6ctl.lab.podserver")
    parser.add_argument("--pod", required=True)
    parser.add_argument("--http", type=int, default=8080)
    parser.add_argument("--echo", type=int, default=8081)
    parser.add_argument("--state-dir", help="the lab it belongs to (for humans reading ps)")
    args = parser.parse_args(argv)
    try:
        serve(args.pod, args.http, args.echo)
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
