"""Run a function inside a named network namespace, and set sysctls there.

A network namespace is a per-thread attribute on Linux, so a short-lived thread that calls
setns(2) (pyroute2's `netns.setns`) enters the namespace without moving the rest of the
process. Sockets keep the namespace they were created in, and `/proc/sys/net` resolves to
the namespace of the thread that opens it, so both netlink sockets and sysctl writes are
done in such a thread — no `ip netns exec` child in the product path.
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from pyroute2 import netns as pyroute2_netns

T = TypeVar("T")


class NamespaceNotFound(LookupError):
    pass


def run_in_netns(netns: str | None, fn: Callable[[], T]) -> T:
    """Call `fn` in a fresh thread that has entered `netns` (None: this thread, as is)."""
    if netns is None:
        return fn()
    result: list[T] = []
    failure: list[BaseException] = []

    def body() -> None:
        try:
            # flags=0: never create a namespace by accident (pyroute2 defaults to O_CREAT).
            pyroute2_netns.setns(netns, flags=0)
        except FileNotFoundError as exc:
            failure.append(NamespaceNotFound(f"network namespace {netns!r} does not exist"))
            failure[0].__cause__ = exc
            return
        except BaseException as exc:
            failure.append(exc)
            return
        try:
            result.append(fn())
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=body, name=f"netns:{netns}", daemon=True)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return result[0]


@dataclass(frozen=True)
class SysctlResult:
    changed: tuple[str, ...] = ()
    refused: tuple[str, ...] = ()  # "name: reason", for the operator


def _sysctl_path(name: str) -> str:
    # Device names may contain dots; callers pass them with "/" (net/ipv6/conf/eth0.1/...).
    # In a container /proc/sys is read-only; the DaemonSet mounts the host's /proc/sys/net
    # elsewhere and says where (net sysctls resolve to the writing thread's namespace).
    root = os.environ.get("SRV6CTL_PROC_SYS", "/proc/sys").rstrip("/")
    return f"{root}/" + (name if "/" in name else name.replace(".", "/"))


def read_sysctl(netns: str | None, name: str) -> str | None:
    """The value of sysctl `name` in `netns`; None where the kernel has no such entry."""

    def body() -> str | None:
        try:
            with open(_sysctl_path(name)) as current:
                return current.read().strip()
        except FileNotFoundError:
            return None

    return run_in_netns(netns, body)


def ensure_sysctls(netns: str | None, values: Mapping[str, str]) -> SysctlResult:
    """Write each sysctl whose value differs; report refusals instead of raising."""

    def body() -> SysctlResult:
        changed: list[str] = []
        refused: list[str] = []
        for name, wanted in values.items():
            path = _sysctl_path(name)
            try:
                with open(path) as current:
                    if current.read().split() == wanted.split():
                        continue
                with open(path, "w") as target:
                    target.write(wanted)
                changed.append(name)
            except OSError as exc:
                reason = os.strerror(exc.errno) if exc.errno else str(exc)
                if exc.errno == errno.ENOENT:
                    reason = "not present on this kernel"
                refused.append(f"{name}={wanted}: {reason}")
        return SysctlResult(tuple(changed), tuple(refused))

    return run_in_netns(netns, body)
