"""Polling until something holds: the one helper every test waits with.

`wait_for(condition, timeout, what)` calls `condition` until it returns true and returns the
monotonic time at which it first did (tests measuring convergence use it); past `timeout`
seconds it fails the test with an AssertionError naming `what`. An exception raised by
`condition` propagates at once: a condition may fail the test itself (a process that died).
"""

from __future__ import annotations

import time
from collections.abc import Callable

INTERVAL_S = 0.02


def wait_for(
    condition: Callable[[], bool], timeout: float = 15.0, what: str = "the condition"
) -> float:
    """Poll `condition` every 20 ms until it holds; the monotonic time at which it did."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(INTERVAL_S)
    return time.monotonic()
