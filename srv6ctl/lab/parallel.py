"""Lab steps that run over many nodes or pods at once, in threads."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


def in_parallel(fn: Callable[[T], object], items: Sequence[T], workers: int = 4) -> None:
    """Run `fn` over `items` in threads; the first failure is raised after all finish."""
    if not items:
        return
    with ThreadPoolExecutor(max_workers=min(workers, len(items))) as pool:
        futures = [pool.submit(fn, item) for item in items]
    for future in futures:
        future.result()
