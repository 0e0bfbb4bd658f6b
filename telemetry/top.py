"""`srv6ctl top`: the busiest SIDs, services and pods of one agent, from its /metrics.

    top("http://127.0.0.1:9876/metrics")          # refreshes every 2 s until ^C
    top(url, interval=1, count=1, out=buffer)     # one screen (tests, scripts)
    register(commands)                            # adds `srv6ctl top` to the CLI

Scrapes the agent twice per screen, `interval` apart, and shows per-second rates of the
dataplane counters (a counter that went down was reset: its new value counts from 0) and
a few control-plane figures. Reads only the exposition: no Prometheus needed.
"""

from __future__ import annotations

import argparse
import sys
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TextIO, TypeVar

DEFAULT_API_SOCKET = "/run/srv6ctl/agent.sock"

Number = TypeVar("Number", int, float)

Series = tuple[str, frozenset[tuple[str, str]]]
Sample = dict[Series, float]


def scrape(url: str, timeout: float = 5.0) -> Sample:
    """Every sample of the exposition at `url`: {(name, labels): value}."""
    # Imported here: `srv6ctl --help` builds the parser with `register` and stays quick.
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    request = urllib.request.Request(url, headers={"Accept": "text/plain;version=0.0.4"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        text = response.read().decode()
    out: Sample = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = float(sample.value)
    return out


@dataclass(frozen=True)
class Rate:
    labels: Mapping[str, str]
    per_second: float


def rates(before: Sample, after: Sample, seconds: float, name: str) -> list[Rate]:
    """Per-second increase of counter `name`, busiest first."""
    out = []
    for (sample_name, labels), value in after.items():
        if sample_name != name:
            continue
        previous = before.get((sample_name, labels), 0.0)
        grown = value - previous if value >= previous else value  # a reset restarts at 0
        out.append(Rate(dict(labels), grown / seconds if seconds > 0 else 0.0))
    out.sort(key=lambda r: (-r.per_second, sorted(r.labels.items())))
    return out


def _si(value: float) -> str:
    """950, 1.2k, 3.4M: rates at a glance."""
    for prefix in ("", "k", "M", "G"):
        if abs(value) < 1000:
            return f"{value:.0f}" if not prefix else f"{value:.1f}{prefix}"
        value /= 1000
    return f"{value:.1f}T"


def _value(sample: Sample, name: str, **labels: str) -> float | None:
    return sample.get((name, frozenset(labels.items())))


def render(before: Sample, after: Sample, seconds: float, limit: int = 10) -> str:
    """One screen of `top` from two scrapes `seconds` apart."""
    lines: list[str] = []
    info = [labels for (name, labels) in after if name == "srv6ctl_build_info"]
    version = dict(info[0]).get("version", "?") if info else "?"
    ready = _value(after, "srv6ctl_agent_ready")
    state = "ready" if ready == 1 else "NOT READY" if ready == 0 else "?"
    lines.append(f"srv6ctl {version} — {state} — rates over {seconds:.1f} s")

    def table(
        title: str,
        packets: str,
        octets: str,
        key: Callable[[Mapping[str, str]], str],
    ) -> None:
        bytes_by_key = {key(r.labels): r.per_second for r in rates(before, after, seconds, octets)}
        rows = rates(before, after, seconds, packets)[:limit]
        lines.append("")
        lines.append(f"{title:<60} {'packets/s':>12} {'bytes/s':>12}")
        if not rows:
            lines.append("  (none)")
        for row in rows:
            name = key(row.labels)
            octet_rate = bytes_by_key.get(name)
            shown = "-" if octet_rate is None else _si(octet_rate)
            lines.append(f"  {name:<58} {_si(row.per_second):>12} {shown:>12}")

    table(
        "local SID (behaviour)",
        "srv6ctl_sid_packets_total",
        "srv6ctl_sid_bytes_total",
        lambda labels: f"{labels.get('sid', '')} ({labels.get('behaviour', '')})",
    )
    table(
        "service (family)",
        "srv6ctl_service_packets_total",
        "srv6ctl_service_bytes_total",
        lambda labels: f"{labels.get('service', '')} ({labels.get('family', '')})",
    )
    table(
        "pod (interface), received",
        "srv6ctl_pod_receive_packets_total",
        "srv6ctl_pod_receive_bytes_total",
        lambda labels: f"{labels.get('pod', '')} ({labels.get('interface', '')})",
    )

    changes = sum(
        r.per_second for r in rates(before, after, seconds, "srv6ctl_reconcile_changes_total")
    )
    cni = sum(
        r.per_second
        for r in rates(before, after, seconds, "srv6ctl_cni_request_duration_seconds_count")
    )
    drift = sum(
        r.per_second for r in rates(before, after, seconds, "srv6ctl_dataplane_drift_found_total")
    )
    lines.append("")
    lines.append(
        f"control plane: {changes:.1f} changes/s, {cni:.1f} CNI requests/s, "
        f"{drift:.1f} drifted objects/s"
    )
    pools = sorted(
        (dict(labels)["pool"], value)
        for (name, labels), value in after.items()
        if name == "srv6ctl_ipam_pool_used"
    )
    if pools:
        parts = []
        for pool, used in pools:
            size = _value(after, "srv6ctl_ipam_pool_size", pool=pool)
            parts.append(f"{pool} {used:.0f}/{size:.0f}" if size else f"{pool} {used:.0f}")
        lines.append("ipam: " + ", ".join(parts))
    return "\n".join(lines) + "\n"


def top(
    url: str,
    *,
    interval: float = 2.0,
    count: int | None = None,
    limit: int = 10,
    out: TextIO | None = None,
) -> None:
    """Show `render` screens every `interval` seconds (`count` of them; None: until ^C).

    `url` is the agent's metrics URL (e.g. http://127.0.0.1:9876/metrics). On a terminal
    each screen replaces the last; elsewhere screens are printed one after the other.
    """
    stream = out if out is not None else sys.stdout
    clear = stream.isatty()
    shown = 0
    before, started = scrape(url), time.monotonic()
    try:
        while count is None or shown < count:
            time.sleep(interval)
            after, now = scrape(url), time.monotonic()
            screen = render(before, after, now - started, limit)
            stream.write(("\x1b[H\x1b[2J" if clear else "") + screen)
            stream.flush()
            before, started = after, now
            shown += 1
    except KeyboardInterrupt:
        pass


def metrics_url(url: str) -> str:
    """`url` with `/metrics` added when it names no path (the agent reports its base URL)."""
    parts = urllib.parse.urlsplit(url)
    if parts.path in ("", "/"):
        parts = parts._replace(path="/metrics")
    return urllib.parse.urlunsplit(parts)


def _positive(kind: Callable[[str], Number]) -> Callable[[str], Number]:
    def parse(text: str) -> Number:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0: {text!r}")
        return value

    return parse


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `top` to the `srv6ctl` subparsers."""
    top_ = commands.add_parser(
        "top",
        help="a live terminal view of the busiest services and SIDs of one agent",
        description="Per-second rates of one agent's busiest local SIDs, services and pods, "
        "read from its /metrics (no Prometheus needed).",
    )
    where = top_.add_mutually_exclusive_group()
    where.add_argument("--url", help="the agent's metrics URL (e.g. http://127.0.0.1:9876)")
    where.add_argument(
        "--api-socket",
        default=DEFAULT_API_SOCKET,
        help=f"ask this agent for its metrics URL (default {DEFAULT_API_SOCKET})",
    )
    top_.add_argument(
        "--interval", type=_positive(float), default=2.0, help="seconds between screens"
    )
    top_.add_argument(
        "--count", type=_positive(int), default=None, help="screens to show (default: until ^C)"
    )
    top_.add_argument("--limit", type=_positive(int), default=10, help="rows per table")
    top_.set_defaults(func=_top)


def _top(args: argparse.Namespace) -> int:
    url: str | None = args.url
    if url is None:
        # Here, not above: `srv6ctl --help` imports this module (see `scrape`).
        from srv6ctl.agent_api import query_agent

        try:
            url = query_agent(args.api_socket, "status").get("metrics")
        except (OSError, RuntimeError) as err:
            print(f"cannot query the agent at {args.api_socket}: {err}", file=sys.stderr)
            return 1
        if not url:
            print(f"the agent at {args.api_socket} serves no /metrics", file=sys.stderr)
            return 1
    url = metrics_url(url)
    try:
        top(url, interval=args.interval, count=args.count, limit=args.limit)
    except KeyboardInterrupt:  # during the first scrape; `top` handles the later ones
        pass
    except (OSError, ValueError) as err:  # URLError is an OSError; ValueError: a bad URL
        print(f"cannot read {url}: {err}", file=sys.stderr)
        return 1
    return 0
