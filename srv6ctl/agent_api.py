"""The agent's read-only API: JSON frames over a 0600 unix socket, server and client.

The successor of Contiv's vswitch REST API: `srv6ctl show`, `verify`, `trace` and `top`
ask a running agent for its status, desired and programmed dataplane, drift and
allocations. The client side imports nothing heavy, so those commands start fast.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Callable, Mapping
from typing import Any

from cni import protocol as frames


class AgentApiServer:
    """Answers `{"query": WHAT}` with `{"ok": true, "result": answer(WHAT)}` (or an error)."""

    def __init__(self, path: str, answer: Callable[[str], Any]) -> None:
        self.path = path
        self._answer = answer
        self._stop = threading.Event()
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        from cni.server import bind_private  # server side only: the client stays light

        listener = bind_private(self.path)  # 0600 from the first moment
        listener.settimeout(0.5)
        self._listener = listener
        self._thread = threading.Thread(target=self._serve, name="srv6ctl-api", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._listener is not None:
            self._listener.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
        if self._thread is not None:
            self._thread.join(2)

    def _serve(self) -> None:
        assert self._listener is not None
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(10)
                try:
                    request = frames.recv_frame(conn)
                    what = str(request.get("query", "")) if isinstance(request, Mapping) else ""
                    reply = {"ok": True, "result": self._answer(what)}
                except Exception as err:  # answer the client, keep serving
                    reply = {"ok": False, "error": f"{type(err).__name__}: {err}"}
                with contextlib.suppress(OSError):
                    frames.send_frame(conn, reply)


def query_agent(api_socket: str, what: str, timeout: float = 10.0) -> Any:
    """Ask a running agent (the client side of `srv6ctl show`)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(api_socket)
        frames.send_frame(sock, {"query": what})
        answer = frames.recv_frame(sock)
    if not answer.get("ok"):
        raise RuntimeError(answer.get("error", "the agent refused the query"))
    return answer["result"]
