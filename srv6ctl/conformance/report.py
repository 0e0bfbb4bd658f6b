"""The conformance report: a table for people (a column per implementation), JSON, and
JUnit XML for CI systems (a test suite per implementation; not applicable = skipped)."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ElementTree
from collections import Counter
from collections.abc import Mapping, Sequence

from rich.console import Console
from rich.table import Table

from srv6ctl.conformance.model import Result, Verdict

Results = Mapping[str, Sequence[Result]]  # implementation → its results, in case order

STYLE = {Verdict.PASS: "green", Verdict.FAIL: "red", Verdict.NOT_APPLICABLE: "dim"}


def table(results: Results, console: Console, details: bool = True) -> None:
    names = list(results)
    grid = Table(title="SRv6 conformance", show_lines=False)
    for column in ("case", "clause", "level", *names):
        grid.add_column(column, overflow="fold")
    rows = zip(*(results[n] for n in names), strict=True) if names else iter(())
    for row in rows:
        case = row[0].case
        cells = [f"[{STYLE[r.verdict]}]{r.verdict}[/]" for r in row]
        grid.add_row(case.id, case.rfc, str(case.level), *cells)
    console.print(grid)
    for name in names:
        counts = Counter(r.verdict for r in results[name])
        line = ", ".join(f"{counts.get(v, 0)} {v}" for v in Verdict)
        console.print(f"{name}: {line}")
    if details:
        for name in names:
            for r in results[name]:
                if r.verdict is not Verdict.PASS:
                    console.print(f"  {name} {r.case.id} ({r.verdict}): {r.detail}")
                if r.verdict is Verdict.FAIL:  # the packets, to see for oneself
                    seen = "; ".join(r.seen) or "nothing"
                    console.print(f"    sent: {r.sent}\n    seen: {seen}", highlight=False)
    differ = [row[0].case.id for row in zip(*results.values(), strict=True)
              if len({r.verdict for r in row}) > 1] if len(names) > 1 else []  # fmt: skip
    if differ:
        console.print(f"the implementations differ on: {', '.join(differ)}")


def as_json(results: Results) -> str:
    return json.dumps(
        {
            name: [
                {
                    "id": r.case.id,
                    "title": r.case.title,
                    "clause": r.case.rfc,
                    "level": str(r.case.level),
                    "sid": r.case.sid.name,
                    "expected": r.case.expect.what,
                    "verdict": str(r.verdict),
                    "detail": r.detail,
                    "sent": r.sent,
                    "seen": list(r.seen),
                }
                for r in rs
            ]
            for name, rs in results.items()
        },
        indent=1,
    )


def junit(results: Results) -> str:
    suites = ElementTree.Element("testsuites", name="srv6ctl conformance")
    for name, rs in results.items():
        counts = Counter(r.verdict for r in rs)
        suite = ElementTree.SubElement(
            suites,
            "testsuite",
            name=name,
            tests=str(len(rs)),
            failures=str(counts.get(Verdict.FAIL, 0)),
            skipped=str(counts.get(Verdict.NOT_APPLICABLE, 0)),
        )
        for r in rs:
            case = ElementTree.SubElement(
                suite, "testcase", classname=f"{name}.{r.case.sid.name}", name=r.case.id
            )
            ElementTree.SubElement(case, "properties").extend(
                [
                    ElementTree.Element("property", name="clause", value=r.case.rfc),
                    ElementTree.Element("property", name="level", value=str(r.case.level)),
                ]
            )
            if r.verdict is Verdict.FAIL:
                failure = ElementTree.SubElement(case, "failure", message=r.detail)
                failure.text = f"sent: {r.sent}\nseen: {'; '.join(r.seen) or 'nothing'}"
            elif r.verdict is Verdict.NOT_APPLICABLE:
                ElementTree.SubElement(case, "skipped", message=r.detail)
    return ElementTree.tostring(suites, encoding="unicode", xml_declaration=True)


__all__ = ["as_json", "junit", "table"]
