"""Progress for humans: one line per build step, a spinner while it runs (rich)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

from rich.console import Console


def console() -> Console:
    out = Console()
    if not out.is_terminal:
        out = Console(width=160)  # piped (make lab | tee): keep addresses unabridged
    return out


class Steps:
    def __init__(self, out: Console, *, quiet: bool = False) -> None:
        self.out = out
        self.quiet = quiet

    def note(self, text: str) -> None:
        if not self.quiet:
            self.out.print(text)

    @contextmanager
    def step(self, text: str) -> Iterator[None]:
        started = time.monotonic()
        spinner: Any = (
            self.out.status(text) if self.out.is_terminal and not self.quiet else nullcontext()
        )
        try:
            with spinner:
                yield
        except BaseException:
            if not self.quiet:
                self.out.print(f"[red]✗[/] {text}")
            raise
        if not self.quiet:
            self.out.print(f"[green]✓[/] {text} [dim]({time.monotonic() - started:.1f} s)[/]")
