"""Running the cases against a target: the testbed up, the SIDs programmed, each probe
sent and judged on what the tester saw, the testbed gone again whatever happened."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence
from typing import Any

from scapy.layers.inet6 import (
    ICMPv6DestUnreach,
    ICMPv6ParamProblem,
    ICMPv6TimeExceeded,
    fragment6,
)

from srv6ctl.conformance.cases import CASES
from srv6ctl.conformance.model import (
    Case,
    IPv6Address,
    Link,
    Plan,
    Result,
    Seen,
    SidSpec,
    Verdict,
)
from srv6ctl.conformance.targets import Target
from srv6ctl.conformance.testbed import Testbed, received
from srv6ctl.verify.packets import marker

WAIT_S = 1.0  # for what a probe makes to come out
ICMP_ERRORS = (ICMPv6DestUnreach, ICMPv6TimeExceeded, ICMPv6ParamProblem)


def select(patterns: Sequence[str] = ()) -> list[Case]:
    """The cases whose id matches one of `patterns` (shell-style), all without any."""
    if not patterns:
        return list(CASES)
    return [c for c in CASES if any(fnmatch.fnmatch(c.id, p) for p in patterns)]


def run(
    target: Target,
    cases: Iterable[Case],
    plan: Plan | None = None,
    bed: Testbed | None = None,
) -> list[Result]:
    """Each case against `target`, on `bed` (default: a testbed of the suite's own)."""
    cases = list(cases)
    bed = bed or Testbed.new(plan)
    try:
        bed.up()
        target.setup(bed)
        sids, refused = _install(target, cases, bed.plan)
        _warm_up(bed)
        capture = bed.capture()
        try:
            results = []
            for case in cases:
                why = refused.get(case.sid)
                if why is not None:
                    results.append(Result(case, Verdict.NOT_APPLICABLE, why))
                    continue
                results.append(_probe(bed, capture, case, sids[case.sid], target))
            return results
        finally:
            for tap in capture.taps:
                tap.close()
    finally:
        target.close()
        bed.down()


def _install(
    target: Target, cases: list[Case], plan: Plan
) -> tuple[dict[SidSpec, IPv6Address], dict[SidSpec, str]]:
    """Each distinct SID the cases need, at the locator's next address."""
    sids: dict[SidSpec, IPv6Address] = {}
    refused: dict[SidSpec, str] = {}
    for case in cases:
        if case.sid in sids or case.sid in refused:
            continue
        n = len(sids) + len(refused) + 1
        address = target.address(case.sid, plan.csid(n) if case.sid.compressed else plan.sid(n))
        why = target.install(case.sid, address)
        if why is None:
            sids[case.sid] = address
        else:
            refused[case.sid] = why
    return sids, refused


def _warm_up(bed: Testbed) -> None:
    """The DUT learns the tester's MACs on both links before the first probe."""
    p = bed.plan
    for address in (p.dut_near, *((p.dut_far, p.dut_far4) if bed.far else ())):
        bed.ping(str(address))


def _probe(bed: Testbed, capture: Any, case: Case, sid: IPv6Address, target: Target) -> Result:
    mark = marker()
    packet = case.build(bed.plan, sid, mark)
    pieces = fragment6(packet, case.fragment) if case.fragment else [packet]  # type: ignore[no-untyped-call]
    before = target.counters(sid) if case.sid.counted else None
    capture.taps[0].send([bed.frame(piece) for piece in pieces])
    found = capture.collect([mark], timeout=WAIT_S, icmp=True)[mark]
    seen = received(found)
    verdict, detail = judge(case, packet, seen)
    if case.sid.counted and verdict is Verdict.PASS:
        after = target.counters(sid)
        counted = None
        if before is not None and after is not None:
            counted = (after[0] - before[0], after[1] - before[1])
        verdict, detail = judge_counters(counted, packet)
    sent = packet.summary() + (f" in {len(pieces)} fragments" if len(pieces) > 1 else "")
    return Result(case, verdict, detail, sent, tuple(describe(s) for s in seen))


def judge_counters(counted: tuple[int, int] | None, sent: Any) -> tuple[Verdict, str]:
    """What the SID counted (packets, bytes) while one probe passed: one packet of the
    probe's length (a SID other traffic uses, as a lab node's, may count more)."""
    if counted is None:
        return Verdict.NOT_APPLICABLE, "the target shows no per-SID counters"
    packets, octets = counted
    expected = (1, len(bytes(sent)))
    if (packets, octets) != expected:
        return (
            Verdict.FAIL,
            f"counted {packets} packets / {octets} bytes, {expected[0]} / {expected[1]} expected",
        )
    return Verdict.PASS, f"counted 1 packet, {octets} bytes"


def judge(case: Case, sent: Any, seen: list[Seen]) -> tuple[Verdict, str]:
    """The verdict on what came out of the DUT for `sent`."""
    expect = case.expect
    # ICMP errors are the DUT's answers to the tester, never what it forwards; where the
    # far link is a lab node's uplink they pass there on their way to the tester.
    far = [s for s in seen if s.link is Link.FAR and icmp_error(s.packet) is None]
    errors = [s for s in seen if s.link is Link.NEAR and icmp_error(s.packet) is not None]
    instead = "; ".join(describe(s) for s in seen) or "nothing came out"
    if expect.icmp is not None:
        for error in errors:
            if icmp_fields(error.packet)[: len(expect.icmp)] == expect.icmp:
                return Verdict.PASS, describe(error)
        return Verdict.FAIL, f"expected {expect.what}; saw {instead}"
    if expect.link is not None:
        out = far
        if expect.link is Link.NEAR:
            out = [s for s in seen if s.link is Link.NEAR and icmp_error(s.packet) is None]
        if not out:
            return Verdict.FAIL, f"expected {expect.what}; saw {instead}"
        assert expect.check is not None
        wrong = expect.check(sent, out[0].packet)
        if len(out) > 1:
            wrong.append(f"{len(out)} copies came out")
        return (Verdict.FAIL, "; ".join(wrong)) if wrong else (Verdict.PASS, describe(out[0]))
    if far:
        return Verdict.FAIL, f"expected it dropped; saw {instead}"
    return Verdict.PASS, "dropped" + (f" ({describe(errors[0])})" if errors else "")


def icmp_error(packet: Any) -> Any:
    """The ICMPv6 error in `packet`, or None."""
    for kind in ICMP_ERRORS:
        if packet.haslayer(kind):
            return packet[kind]
    return None


def icmp_fields(packet: Any) -> tuple[int, ...]:
    """(type, code, pointer) of an ICMPv6 error (pointer only for Parameter Problem)."""
    error = icmp_error(packet)
    if isinstance(error, ICMPv6ParamProblem):
        return (int(error.type), int(error.code), int(error.ptr))
    return (int(error.type), int(error.code))


def describe(seen: Seen) -> str:
    packet = seen.packet
    if icmp_error(packet) is not None:
        fields = icmp_fields(packet)
        name = {1: "Destination Unreachable", 3: "Time Exceeded", 4: "Parameter Problem"}
        text = f"ICMPv6 {name.get(fields[0], fields[0])} code {fields[1]}"
        return text + (f" pointer {fields[2]}" if len(fields) > 2 else "") + f" on {seen.link}"
    return f"{packet.summary()} on {seen.link}"


__all__ = ["describe", "judge", "run", "select"]
