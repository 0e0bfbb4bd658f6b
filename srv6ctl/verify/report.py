"""Verify's results: named checks that pass or fail with a reason, and measured figures."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    detail: str
    group: str = ""
    skipped: bool = False  # could not run here (the reason is the detail); not a failure

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "pass": self.passed, "detail": self.detail}
        if self.group:
            out["group"] = self.group
        if self.skipped:
            out["skipped"] = True
        return out


@dataclass
class Report:
    checks: list[Check] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)

    def add(self, group: str, name: str, passed: bool, detail: str) -> Check:
        check = Check(name, passed, detail, group)
        self.checks.append(check)
        return check

    def skip(self, group: str, name: str, reason: str) -> None:
        self.checks.append(Check(name, True, reason, group, skipped=True))

    def crashed(self, group: str, err: BaseException) -> None:
        """A group that could not finish is one failed check, not a traceback."""
        self.add(group, f"{group} checks ran", False, f"{type(err).__name__}: {err}")

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def as_json(self) -> str:
        return json.dumps(
            {"checks": [c.as_json() for c in self.checks], "figures": self.figures},
            separators=(",", ":"),
            default=str,
        )

    def render(self, out: Console) -> None:
        table = Table(title="srv6ctl verify", title_justify="left")
        table.add_column("group")
        table.add_column("check")
        table.add_column("result")
        table.add_column("detail", overflow="fold")
        for check in self.checks:
            if check.skipped:
                result = "[yellow]skip[/]"
            else:
                result = "[green]pass[/]" if check.passed else "[red]FAIL[/]"
            table.add_row(check.group, escape(check.name), result, escape(check.detail))
        out.print(table)
        if self.figures:
            figures = Table(title="figures", title_justify="left", show_header=False)
            figures.add_column(style="bold")
            figures.add_column()
            for key, value in self.figures.items():
                figures.add_row(key, escape(_figure(value)))
            out.print(figures)
        failed = [c for c in self.checks if not c.passed]
        ran = sum(1 for c in self.checks if not c.skipped)
        if failed:
            out.print(f"[red]{len(failed)} of {ran} checks failed[/]")
        else:
            out.print(f"[green]all {ran} checks passed[/]")


def _figure(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_figure(v)}" for k, v in value.items())
    return str(value)
