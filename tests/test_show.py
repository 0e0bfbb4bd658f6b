"""`srv6ctl show`: desired next to actual, each row's state right, labels never drift."""

from __future__ import annotations

from srv6ctl.dataplane.model import (
    End,
    EndDX6,
    NodeConfig,
    Route,
    RouteKind,
    SegmentList,
    SrPolicy,
    Steering,
)
from srv6ctl.serialize import to_jsonable
from srv6ctl.show import policies, services, sids

WEB = SrPolicy(
    bsid="fcbb:bb00::6000:1",
    owner="svc/default/web/v6",
    segment_lists=[SegmentList(["fcbb:bb00:1::1:2"]), SegmentList(["fcbb:bb00:2::1:2"])],
)
DESIRED = NodeConfig(
    local_sids={
        End(sid="fcbb:bb00:1::1"),
        EndDX6(sid="fcbb:bb00:1::1:2", nexthop="fd00:10:0:1::2", interface="s6a"),
    },
    policies={WEB},
    steerings={Steering(prefix="fd00:96::10/128", bsid="fcbb:bb00::6000:1")},
    routes={Route(prefix="fd00:96::11/128", kind=RouteKind.PROHIBIT)},
)


def test_rows_report_missing_unexpected_and_differs() -> None:
    dumped_web = SrPolicy(bsid=WEB.bsid, segment_lists=[SegmentList(["fcbb:bb00:1::1:2"])])
    actual = NodeConfig(
        local_sids={End(sid="fcbb:bb00:1::1"), End(sid="fcbb:bb00:1::99")},
        policies={dumped_web},  # one list short, and no owner label (a dump has none)
        steerings=DESIRED.steerings,
    )
    d, a = to_jsonable(DESIRED), to_jsonable(actual)
    assert {r["sid"]: r["state"] for r in sids(d, a)} == {
        "fcbb:bb00:1::1": "ok",
        "fcbb:bb00:1::1:2": "missing",
        "fcbb:bb00:1::99": "unexpected",
    }
    (web,) = policies(d, a)
    assert web["state"] == "differs" and "programmed: fcbb:bb00:1::1:2" in web["segment lists"]
    rows = {r["ClusterIP"]: r for r in services(d, a)}
    assert rows["fd00:96::10/128"]["service"] == "default/web"
    assert rows["fd00:96::10/128"]["backends"] == "2 endpoint(s)"
    assert rows["fd00:96::11/128"]["state"] == "missing"  # the reject route was deleted


def test_a_dump_without_owner_labels_is_in_sync() -> None:
    dumped = NodeConfig(
        local_sids=DESIRED.local_sids,
        steerings=DESIRED.steerings,
        routes=DESIRED.routes,
        policies={SrPolicy(bsid=WEB.bsid, segment_lists=WEB.segment_lists)},
    )
    d, a = to_jsonable(DESIRED), to_jsonable(dumped)
    assert all(r["state"] == "ok" for r in [*sids(d, a), *policies(d, a), *services(d, a)])
