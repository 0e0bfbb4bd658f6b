"""`srv6ctl conformance` (issue 19): its cases, its judging and its reports, and real runs
against the Linux kernel (in the VM where this host's kernel lacks SRv6) and a VPP 25.10
the suite starts itself (`SRV6CTL_VPP_BIN`)."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest
from rich.console import Console
from scapy.layers.inet import UDP
from scapy.layers.inet6 import (
    ICMPv6ParamProblem,
    ICMPv6TimeExceeded,
    IPerror6,
    IPv6,
    IPv6ExtHdrSegmentRouting,
    fragment6,
)

from srv6ctl.conformance import cases as catalogue
from srv6ctl.conformance import report
from srv6ctl.conformance.cases import CASES, SL_POINTER, shifted
from srv6ctl.conformance.in_vm import results_of
from srv6ctl.conformance.model import (
    HMAC_KEY,
    Case,
    Expect,
    Level,
    Link,
    Plan,
    Result,
    Seen,
    Verdict,
)
from srv6ctl.conformance.run import judge, judge_counters, run, select
from srv6ctl.conformance.targets import (
    ExternalTarget,
    KernelTarget,
    VppTarget,
    parse_sid,
    parse_sid_file,
)
from srv6ctl.conformance.testbed import Testbed
from srv6ctl.dataplane.kernel_caps import probe_kernel
from srv6ctl.hostvm import vm_unavailable
from tests.support.vpp import BIN_ENV, why_no_vpp

PLAN = Plan()
SID = PLAN.sid(1)
MARK = b"s6conf-test-mark"


def case(case_id: str):  # type: ignore[no-untyped-def]
    (found,) = [c for c in CASES if c.id == case_id]
    return found


def test_every_case_is_declared_once_with_its_clause() -> None:
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids))
    for c in CASES:
        assert c.rfc.startswith(
            ("RFC 8986 §", "RFC 8754 §", "RFC 8200 §", "RFC 9800 (", "draft-")
        ), c.id
        assert c.expect.what, c.id
        packet = c.build(PLAN, SID, MARK)
        assert MARK in bytes(packet), c.id  # found in whatever comes out of the DUT


def _built(case_id: str) -> IPv6:
    return IPv6(bytes(case(case_id).build(PLAN, SID, MARK)))  # as on the wire


def test_the_malformed_probes_are_malformed_as_their_clause_says() -> None:
    probe = _built("end.sl-past-last-entry")
    srh = probe[IPv6ExtHdrSegmentRouting]
    assert srh.segleft > srh.lastentry + 1
    # The pointer the error must carry: the Segments Left byte, counted from the IPv6 header.
    assert bytes(probe)[SL_POINTER] == srh.segleft
    srh = _built("end.last-entry-past-header")[IPv6ExtHdrSegmentRouting]
    assert srh.lastentry > srh.len // 2 - 1  # max_LE = (Hdr Ext Len / 2) - 1
    assert _built("end.hop-limit").hlim == 1
    upper = _built("end.sl0-upper-layer")
    assert upper[IPv6ExtHdrSegmentRouting].segleft == 0 and upper.haslayer(UDP)


def test_the_new_probes_are_what_their_clauses_say() -> None:
    overrun = bytes(_built("srh.tlv.overrun"))
    srh_len = (overrun[41] + 1) * 8
    tlv_at = 40 + 8 + 16 * 2  # after the fixed part and two segments
    assert tlv_at + 2 + overrun[tlv_at + 1] > 40 + srh_len  # the TLV runs past the header
    truncated = _built("srh.truncated")
    assert truncated.plen < (bytes(truncated)[41] + 1) * 8
    flags = bytes(_built("srh.flags"))[45]
    assert flags != 0 and not flags & 0x20  # unassigned bits only: not RFC 9259's O-flag
    broken = bytes(_built("local.sl0.unrecognized-next-header"))
    assert broken[40] == 150 and broken[43] == 0  # pointer 40: the SRH's Next Header, SL 0
    local = bytes(_built("local.sl-not-zero"))
    assert local[24:40] == PLAN.dut_near.packed and local[42] == 4  # pointer 42: Routing Type
    csid = PLAN.csid(1)
    shifted_probe = IPv6(bytes(case("csid.shift").build(PLAN, csid, MARK)))
    assert shifted_probe.dst == "fc00:5:c001:e001::"
    assert shifted(PLAN, shifted_probe.dst) == ipaddress.IPv6Address("fc00:5:e001::")
    assert ipaddress.IPv6Address("fc00:5:e001::") in PLAN.csid_next
    whole = case("end.dt6.reassembly")
    pieces = fragment6(whole.build(PLAN, SID, MARK), whole.fragment)
    assert len(pieces) > 1 and all(len(bytes(p)) <= whole.fragment for p in pieces)


def test_the_hmac_probes_carry_rfc_8754s_tlv_and_hmac() -> None:
    """The TLV at the SRH's end as RFC 8754 §2.1.2 lays it out (Type 5, Length 38, D
    clear, the suite's Key ID), the HMAC over §2.1.2.1's text read here at its fixed
    offsets; the invalid probe differs from the valid one in that HMAC only."""
    valid, invalid = bytes(_built("srh.hmac.valid")), bytes(_built("srh.hmac.invalid"))
    srh_end = 40 + (valid[41] + 1) * 8
    tlv = valid[80:srh_end]  # after the SRH's fixed part and its two segments
    assert (tlv[0], tlv[1], len(tlv)) == (5, 38, 40)
    assert tlv[2:4] == b"\0\0" and int.from_bytes(tlv[4:8], "big") == HMAC_KEY.key_id
    text = valid[8:24] + valid[44:46] + tlv[2:8] + valid[48:80]  # SA, LE, Flags, ..., list
    assert tlv[8:] == hmac.new(HMAC_KEY.secret, text, hashlib.sha256).digest()
    assert [i for i in range(len(valid)) if valid[i] != invalid[i]] == [88]
    assert bytes(_built("srh.tlv.hmac-unverified"))[80:82] == bytes([5, 38])


def test_judging_a_next_csid_shift_and_an_insertion() -> None:
    c = case("csid.shift-keeps-srh")
    sent = IPv6(bytes(c.build(PLAN, PLAN.csid(1), MARK)))
    out = sent.copy()
    out.dst, out.hlim = "fc00:5:e001::", sent.hlim - 1
    assert judge(c, sent, [_seen(Link.FAR, IPv6(bytes(out)))])[0] is Verdict.PASS
    out[IPv6ExtHdrSegmentRouting].segleft = 0  # the SRH must stay as sent
    verdict, detail = judge(c, sent, [_seen(Link.FAR, IPv6(bytes(out)))])
    assert verdict is Verdict.FAIL and "an SRH must stay" in detail
    insert = case("h.insert")
    sent = IPv6(bytes(insert.build(PLAN, SID, MARK)))
    first, second = (str(s) for s in insert.sid.segments)
    inserted = (
        IPv6(src=sent.src, dst=first, hlim=sent.hlim - 1)
        / IPv6ExtHdrSegmentRouting(addresses=[sent.dst, second, first], segleft=2, lastentry=2)
        / sent.payload
    )
    assert judge(insert, sent, [_seen(Link.FAR, IPv6(bytes(inserted)))])[0] is Verdict.PASS
    red = case("h.insert.red")
    verdict, detail = judge(red, sent, [_seen(Link.FAR, IPv6(bytes(inserted)))])
    assert verdict is Verdict.FAIL and "SRH lists" in detail


def test_judging_a_sids_counters() -> None:
    sent = case("end.counters").build(PLAN, SID, MARK)
    assert judge_counters(None, sent)[0] is Verdict.NOT_APPLICABLE
    assert judge_counters((1, len(bytes(sent))), sent)[0] is Verdict.PASS
    verdict, detail = judge_counters((0, 0), sent)
    assert verdict is Verdict.FAIL and "counted 0 packets" in detail


def _seen(link: Link, packet: object) -> Seen:
    return Seen(link, packet, bytes(packet))  # type: ignore[arg-type]


def test_judging_forwarded_packets() -> None:
    forward = case("end.forward")
    sent = forward.build(PLAN, SID, MARK)
    good = sent.copy()
    good.dst, good.hlim = str(PLAN.segment(1)), sent.hlim - 1
    good[IPv6ExtHdrSegmentRouting].segleft = 0
    good = IPv6(bytes(good))
    assert judge(forward, sent, [_seen(Link.FAR, good)])[0] is Verdict.PASS
    same_hlim = IPv6(bytes(good))
    same_hlim.hlim = sent.hlim
    verdict, detail = judge(forward, sent, [_seen(Link.FAR, IPv6(bytes(same_hlim)))])
    assert verdict is Verdict.FAIL and "hop limit 64" in detail
    verdict, detail = judge(forward, sent, [])
    assert verdict is Verdict.FAIL and "nothing came out" in detail
    verdict, detail = judge(forward, sent, [_seen(Link.FAR, good), _seen(Link.FAR, good)])
    assert verdict is Verdict.FAIL and "2 copies" in detail


def test_judging_icmp_errors_by_type_code_and_pointer() -> None:
    c = case("end.sl-past-last-entry")
    sent = c.build(PLAN, SID, MARK)

    def error(code: int, pointer: int) -> IPv6:
        quoted = IPerror6(bytes(sent))
        made = (
            IPv6(src=str(PLAN.dut_near), dst=str(PLAN.tester_near))
            / ICMPv6ParamProblem(code=code, ptr=pointer)
            / quoted
        )
        return IPv6(bytes(made))

    assert judge(c, sent, [_seen(Link.NEAR, error(0, SL_POINTER))])[0] is Verdict.PASS
    verdict, detail = judge(c, sent, [_seen(Link.NEAR, error(0, 42))])
    assert verdict is Verdict.FAIL and "pointer 42" in detail
    assert judge(c, sent, [_seen(Link.FAR, sent)])[0] is Verdict.FAIL  # forwarded
    hop = case("end.hop-limit")
    exceeded = IPv6(
        bytes(IPv6(dst=str(PLAN.tester_near)) / ICMPv6TimeExceeded() / IPerror6(bytes(sent)))
    )
    assert judge(hop, sent, [_seen(Link.NEAR, exceeded)])[0] is Verdict.PASS
    assert judge(c, sent, [_seen(Link.NEAR, exceeded)])[0] is Verdict.FAIL


def test_reports_say_the_same_in_each_format() -> None:
    forward, dt4 = case("end.forward"), case("end.dt4.lookup")
    results = {
        "one": [
            Result(forward, Verdict.PASS, "ok", "sent", ("seen",)),
            Result(dt4, Verdict.NOT_APPLICABLE, "needs a VRF"),
        ],
        "two": [
            Result(forward, Verdict.FAIL, "nothing came out", "sent", ()),
            Result(dt4, Verdict.PASS, "ok"),
        ],
    }
    loaded = json.loads(report.as_json(results))
    assert [r["verdict"] for r in loaded["two"]] == ["fail", "pass"]
    assert loaded["one"][0]["clause"] == forward.rfc
    suites = ElementTree.fromstring(report.junit(results))
    one, two = suites.findall("testsuite")
    assert (one.get("tests"), one.get("failures"), one.get("skipped")) == ("2", "0", "1")
    assert (two.get("failures"), two.get("skipped")) == ("1", "0")
    (failure,) = two.iter("failure")
    assert failure.get("message") == "nothing came out"
    console = Console(record=True, width=200)
    report.table(results, console)
    text = console.export_text()
    assert "two end.forward (fail): nothing came out\n    sent: sent\n    seen: nothing" in text
    assert "one end.dt4.lookup (n/a): needs a VRF\n" in text


def test_a_report_read_back_is_the_report() -> None:
    """The VM's kernel column comes back as JSON (in_vm): read back, it is what was run."""
    forward, dt4 = case("end.forward"), case("end.dt4.lookup")
    sent = [
        Result(forward, Verdict.PASS, "ok", "IPv6 / SRH", ("seen on far",)),
        Result(dt4, Verdict.NOT_APPLICABLE, "needs a VRF"),
    ]
    (rows,) = json.loads(report.as_json({"linux": sent})).values()
    assert results_of(rows) == sent


@pytest.mark.netns
def test_the_kernel_column_comes_from_a_vm_where_this_kernel_has_no_srv6() -> None:
    """`srv6ctl conformance --target kernel` on a host whose kernel lacks SRv6 (as this
    CI's): the kernel run happens in the VM, its column in the host's report."""
    if probe_kernel().unsupported() is None:
        pytest.skip("this host's kernel has SRv6: the kernel column is its own")
    why = vm_unavailable()
    if why is not None:
        pytest.skip(f"no VM: {why}")
    srv6ctl = str(Path(sys.executable).parent / "srv6ctl")
    done = subprocess.run(
        [srv6ctl, "conformance", "--target", "kernel", "--case", "end.forward", "--json"],
        capture_output=True, text=True, check=False, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    ((name, rows),) = json.loads(done.stdout).items()
    assert name.startswith("linux ") and name.endswith(" (VM)")
    assert [(r["id"], r["verdict"]) for r in rows] == [("end.forward", "pass")]


def test_select_by_glob() -> None:
    assert {c.id for c in select(["end.dx6.*"])} == {
        c.id for c in CASES if c.id.startswith("end.dx6.")
    }
    assert select([]) == list(CASES)
    assert select(["nothing-like-this"]) == []


def test_the_cli_lists_cases_and_refuses_a_target_it_cannot_run() -> None:
    srv6ctl = str(Path(sys.executable).parent / "srv6ctl")
    done = subprocess.run(
        [srv6ctl, "conformance", "--list"], capture_output=True, text=True, check=True
    )
    assert len(done.stdout.splitlines()) == len(CASES)
    done = subprocess.run(
        [srv6ctl, "conformance", "--target", "vpp", "--vpp-bin", "/nonexistent/vpp"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2 and "no vpp binary" in done.stderr
    assert "Traceback" not in done.stderr
    done = subprocess.run(
        [srv6ctl, "conformance", "--target", "lab", "--state-dir", "/nonexistent/lab"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 2 and "no complete lab in /nonexistent/lab" in done.stderr
    assert "Traceback" not in done.stderr


def _verdicts(results: list[Result]) -> dict[str, Verdict]:
    return {r.case.id: r.verdict for r in results}


# The behaviours every implementation here offers and gets right: the suite's own proof
# that its probes and judging see a conformant node as conformant.
CORE = (
    "end.forward",
    "end.hop-limit",
    "transit.not-a-sid",
    "end.x.cross-connect",
    "end.t.table",
    "end.dx6.srh",
    "end.dx6.reduced",
    "end.dt6.lookup",
)


@pytest.mark.netns
def test_against_vpp() -> None:
    if not os.environ.get(BIN_ENV):
        pytest.skip(f"no VPP: set {BIN_ENV} to a vpp 25.10 binary (the suite starts it)")
    reason = why_no_vpp()
    if reason is not None:
        pytest.skip(reason)
    results = run(VppTarget(os.environ[BIN_ENV]), CASES)
    verdicts = _verdicts(results)
    assert {c: verdicts[c] for c in CORE} == dict.fromkeys(CORE, Verdict.PASS), results
    for offered in ("end.dx4.srh", "end.dt4.lookup", "end.psp", "h.encaps"):
        assert verdicts[offered] is Verdict.PASS, offered
    assert verdicts["end.dt46.v6"] is Verdict.NOT_APPLICABLE  # VPP 25.10 has no End.DT46
    assert verdicts["srh.hmac.invalid"] is Verdict.NOT_APPLICABLE  # nor HMAC verification
    assert verdicts["end.b6.encaps"] is Verdict.PASS
    # VPP 25.10's deviations (README, "Conformance"): malformed SRHs and a decapsulating
    # SID's Segments Left are dropped without the ICMP error the RFCs require, and a Last
    # Entry past the header is not checked at all.
    for deviation in ("end.sl-past-last-entry", "end.dx6.sl-not-zero"):
        by_id = {r.case.id: r for r in results}
        assert by_id[deviation].verdict is Verdict.FAIL
        assert "nothing came out" in by_id[deviation].detail
    by_id = {r.case.id: r for r in results}
    assert "on far" in by_id["end.last-entry-past-header"].detail
    # uN (NEXT-CSID), its counters, TLVs it ignores; and where it deviates: a TLV running
    # past the header is forwarded, H.Insert spends two hops of hop limit, the outer
    # packet's fragments are not reassembled for End.DT6.
    for offered in ("csid.shift", "csid.shift-keeps-srh", "csid.hop-limit", "end.counters",
                    "srh.tlv.unknown", "srh.tlv.pad1", "srh.tlv.padn", "end.fragment"):  # fmt: skip
        assert verdicts[offered] is Verdict.PASS, by_id[offered]
    assert "on far" in by_id["srh.tlv.overrun"].detail
    assert "hop limit 62, sent 64" in by_id["h.insert"].detail
    assert "nothing came out" in by_id["end.dt6.reassembly"].detail
    assert "nothing came out" in by_id["local.sl0.unrecognized-next-header"].detail


def _draft_hmac_case(*, kernel_text: bool) -> Case:
    """End(HMAC) with the HMAC TLV signed under the SRH's H flag of the drafts before RFC
    8754 (0x08 in Flags), over RFC 8754's text or (`kernel_text`) without the two octets
    after the TLV's Length: what Linux checks (README, "RFC conformance")."""

    def build(p: Plan, sid: ipaddress.IPv6Address, m: bytes) -> IPv6:
        def signed(digest: bytes) -> IPv6:
            tlv = catalogue.hmac_tlv(HMAC_KEY.key_id, digest)
            probe = catalogue.srh_probe(p, sid, [p.segment(1)], catalogue.payload(m), tlvs=[tlv])
            probe[IPv6ExtHdrSegmentRouting].hmac = 1
            return IPv6(bytes(probe))

        unsigned = signed(bytes(32))
        if not kernel_text:
            return signed(catalogue.hmac_digest(unsigned, HMAC_KEY))
        raw = bytes(unsigned)
        text = raw[8:24] + raw[44:46] + raw[84:88] + raw[48:80]
        return signed(hmac.new(HMAC_KEY.secret, text, hashlib.sha256).digest())

    return Case(
        f"draft-h-flag.{'kernel' if kernel_text else 'rfc'}-text",
        "An HMAC TLV under the drafts' H flag",
        "RFC 8754 §2.1.2.1",
        Level.SHOULD,
        catalogue.END_HMAC,
        build,
        Expect.forwarded(catalogue.forwarded_to_next(), "next segment"),
    )


@pytest.mark.netns
@pytest.mark.kernel_srv6(vm=True)
def test_against_the_kernel() -> None:
    drafts = [_draft_hmac_case(kernel_text=False), _draft_hmac_case(kernel_text=True)]
    results = run(KernelTarget(), [*CASES, *drafts])
    verdicts = _verdicts(results)
    assert {c: verdicts[c] for c in CORE} == dict.fromkeys(CORE, Verdict.PASS), [
        (r.case.id, r.verdict, r.detail) for r in results if r.verdict is not Verdict.PASS
    ]
    assert verdicts["h.encaps"] is verdicts["h.encaps.red"] is Verdict.PASS
    for offered in ("csid.shift", "csid.shift-keeps-srh", "csid.hop-limit", "end.counters",
                    "h.insert", "srh.tlv.unknown", "srh.tlv.padn", "local.sl0",
                    "local.sl0.unrecognized-next-header"):  # fmt: skip
        assert verdicts[offered] is Verdict.PASS, offered
    by_id = {r.case.id: r for r in results}
    # Linux 6.1's deviations (README, "RFC conformance"): a Pad1 TLV drops the packet, and
    # End.DT6 decapsulates the outer packet's first fragment alone.
    assert "nothing came out" in by_id["srh.tlv.pad1"].detail
    assert "bytes out" in by_id["end.dt6.reassembly"].detail
    # HMAC: with the key, an RFC 8754 TLV is not verified at all (a wrong HMAC forwarded);
    # Linux looks for the TLV only under the drafts' H flag and verifies its own text.
    assert verdicts["srh.tlv.hmac-unverified"] is verdicts["srh.hmac.valid"] is Verdict.PASS
    assert "on far" in by_id["srh.hmac.invalid"].detail
    assert "nothing came out" in by_id["draft-h-flag.rfc-text"].detail
    assert verdicts["draft-h-flag.kernel-text"] is Verdict.PASS
    for r in results:
        print(f"kernel {r.case.id}: {r.verdict} {r.detail}")


def test_the_cli_names_what_is_wrong_with_an_external_target() -> None:
    srv6ctl = str(Path(sys.executable).parent / "srv6ctl")

    def said(*args: str) -> str:
        done = subprocess.run(
            [srv6ctl, "conformance", "--target", "external", *args],
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
        return done.stderr

    assert "needs --near" in said("--sid", "fc00:5::1=End")
    assert "not ADDRESS=NAME" in said("--sid", "fc00:5::1")
    assert "is not an IPv6 address" in said("--sid", "10.0.0.1=End")
    assert "one NETNS" in said("--near", "a:x", "--far", "b:y")
    with tempfile.TemporaryDirectory() as tmp:
        sids = Path(tmp) / "sids"
        sids.write_text("# the router's\nfc00:5::1=End\nfc00:5::2 End.X\n")
        assert f"{sids}:3: --sid fc00:5::2 End.X: not ADDRESS=NAME" in said("--sids", str(sids))
        assert "No such file" in said("--sids", str(Path(tmp) / "none"))
    assert "no network namespace" in said("--near", "s6conf-none:x", "--far", "s6conf-none:y")


def test_a_sid_file_declares_what_sid_flags_do() -> None:
    text = "# rack 1 leaf\n\nfc00:5::1=End  # the node SID\nfc00:5::6=End.DT6,table=254\n"
    assert parse_sid_file(text, "sids") == [
        parse_sid("fc00:5::1=End"),
        ("End.DT6", ipaddress.IPv6Address("fc00:5::6")),
    ]


@pytest.mark.netns
def test_an_external_device_is_judged_as_when_the_suite_configures_it() -> None:
    """A VPP configured by hand (here, by the suite's own VPP target on a testbed of its
    own), then probed as an external device through the tester's two interfaces, with
    its SIDs declared: the same verdicts as the direct run; what is not declared is n/a."""
    if not os.environ.get(BIN_ENV):
        pytest.skip(f"no VPP: set {BIN_ENV} to a vpp 25.10 binary (the suite starts it)")
    reason = why_no_vpp()
    if reason is not None:
        pytest.skip(reason)
    owner = VppTarget(os.environ[BIN_ENV])
    bed = Testbed.new()
    chosen = [
        c
        for c in CASES
        if c.sid.behaviour in ("End", "End.X", "End.DX6", "End.DT6")
        and not c.sid.flavours
        and not c.sid.counted
        and not c.sid.hmac
    ]
    try:
        bed.up()
        owner.setup(bed)
        declared = {}
        for n, sid in enumerate(dict.fromkeys(c.sid for c in chosen), start=0x50):
            address = PLAN.sid(n)
            assert owner.install(sid, address) is None
            declared[sid.name] = address
        del declared["End.X"]  # the owner has one, but does not say so
        attached = Testbed.attached(bed.tester, "t-near", "t-far", bed.dut_mac)
        results = run(ExternalTarget(declared), chosen, bed=attached)
    finally:
        owner.close()
        bed.down()
    verdicts = _verdicts(results)
    direct = _verdicts(run(VppTarget(os.environ[BIN_ENV]), chosen))
    assert verdicts["end.x.cross-connect"] is Verdict.NOT_APPLICABLE
    assert {k: v for k, v in verdicts.items() if k != "end.x.cross-connect"} == {
        k: v for k, v in direct.items() if k != "end.x.cross-connect"
    }
    assert verdicts["end.forward"] is verdicts["end.dt6.lookup"] is Verdict.PASS
