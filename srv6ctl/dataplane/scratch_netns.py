"""A throw-away network namespace with no name: unshare(2) in a thread, held by an fd.

The capability probe needs an empty namespace to try things in. Naming one (`ip netns
add`, pyroute2's `netns.create`) mounts it under /run/netns — which AppArmor's default
container profile refuses, which leaves a namespace behind when the process dies half way,
and which pyroute2 does in a forked helper that times out on a loaded machine. Here a
short-lived thread unshares its own network namespace (the attribute is per thread on
Linux) and opens it; the fd keeps it alive, `/proc/self/fd/N` names it for setns, and
closing the fd is the whole clean-up — even a SIGKILL cannot leak it.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

CLONE_NEWNET = 0x40000000


def _unshare_in_thread() -> int:
    result: list[int] = []
    failure: list[OSError] = []

    def body() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.unshare(CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            failure.append(OSError(errno, f"unshare(CLONE_NEWNET): {os.strerror(errno)}"))
            return
        result.append(os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC))

    thread = threading.Thread(target=body, name="scratch-netns", daemon=True)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return result[0]


@contextmanager
def scratch_netns() -> Iterator[str]:
    """Yield a path naming a fresh, empty network namespace; gone when the block ends."""
    fd = _unshare_in_thread()
    try:
        yield f"/proc/{os.getpid()}/fd/{fd}"
    finally:
        os.close(fd)
