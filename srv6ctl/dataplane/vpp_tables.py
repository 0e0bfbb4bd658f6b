"""The VPP tables the backend reads and writes: table 0, and those it created.

A VPP table must exist before a SID, steering, route or pod port names it, and VPP does
not create one on first use as the kernel does. The backend creates them named
`srv6ctl-<id>-ip6/ip4` (`vpp_fib_codec.table_add`), which is also how it tells its own
tables, whose routes it reads and owns, from an operator's.

A rule's table also holds a default route of the rule's group, looked up again in table
0 (`vpp_rules`): like the affinity table's route, a deaggregation, never a model route.

The affinity table (`vpp_affinity`) is the backend's own, not the model's: its route is
never read as a model route, it is made before the first policy with affinity and
deleted when the last one leaves it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from srv6ctl.dataplane import vpp_affinity
from srv6ctl.dataplane.model import (
    LOCAL_SID,
    MAIN_TABLE,
    POD,
    RULE,
    Change,
    DataplaneObject,
    Rule,
    TableLookup,
    kind_of,
)
from srv6ctl.dataplane.vpp_api import Request, VppChannel
from srv6ctl.dataplane.vpp_codec_base import InvalidObject
from srv6ctl.dataplane.vpp_fib_codec import (
    AFFINITY_TABLE,
    FIB_SOURCE_SR,
    TABLE_NAME_PREFIX,
    table_add,
    table_del,
    vpp_table,
)
from srv6ctl.dataplane.vpp_sr_codec import BEHAVIOR_OF

Table = tuple[int, bool]  # (VPP table id, ipv6)


class Tables:
    """Table 0 and ours, read through `channel` and kept until forgotten."""

    def __init__(self, channel: VppChannel) -> None:
        self.channel = channel
        self._ours: set[Table] | None = None
        # Every table VPP had at the last read, plus those we made since: a plan whose
        # tables are all there reads nothing (with a table per NodePort service, a read is
        # thousands of tables per change).
        self._seen: set[Table] | None = None
        # Whether this connection made (or finished) the affinity table: VPP cannot be
        # asked for a table's flow hash, so a table found made is set up again once.
        self._affinity_ready = False

    def ours(self) -> set[Table]:
        """(table id, ipv6) of table 0 and of the model tables we created."""
        if self._ours is None:
            tables = {(0, False), (0, True)}
            for details in self.channel.dump("ip_table_dump"):
                table = details.table
                if str(table.name).startswith(TABLE_NAME_PREFIX):
                    tables.add((int(table.table_id), bool(table.is_ip6)))
            tables.discard((AFFINITY_TABLE, True))
            self._ours = tables
        return self._ours

    def forget(self) -> None:
        self._ours = None
        self._seen = None
        self._affinity_ready = False

    def ensure(
        self,
        changes: Sequence[Change],
        pod_table: int,
        run: Callable[[Sequence[Request]], None],
    ) -> list[Table]:
        """Create (with `run`) the tables the new objects of `changes` need and VPP lacks;
        an operator's table of the same id is used as it is. The tables it created."""
        wanted: set[Table] = set()
        for change in changes:
            obj = change.new
            if obj is None:
                continue
            for table, ipv6s in tables_of(obj, pod_table):
                table_id = vpp_table(table)
                if table_id != 0:
                    wanted.update((table_id, ipv6) for ipv6 in ipv6s)
        if not wanted or (self._seen is not None and wanted <= self._seen):
            return []
        # Read afresh before making one: an add of a table that exists renames it
        # (fib_table_find_or_create_and_lock_w_name), which would make an operator's ours.
        self._seen = self._existing()
        missing = sorted(wanted - self._seen)
        if missing:
            run([table_add(table_id, ipv6) for table_id, ipv6 in missing])
            self._seen.update(missing)
        if self._ours is not None:
            self._ours.update(missing)  # ours by name now
        return missing

    def release(
        self,
        changes: Sequence[Change],
        held: Iterable[DataplaneObject],
        pod_table: int,
        run: Callable[[Sequence[Request]], None],
    ) -> list[Table]:
        """Delete (with `run`) our tables that objects removed by `changes` used and no
        object still `held` uses (a Service's own table, once the Service is gone: a VPP
        table is memory — an IPv4 one a 256 KiB mtrie root — and a cluster churns
        Services); the pod table stays. The tables it deleted."""
        left = {
            (vpp_table(table), ipv6)
            for change in changes
            if change.old is not None
            for table, ipv6s in tables_of(change.old, pod_table)
            for ipv6 in ipv6s
        }
        left -= {
            (vpp_table(table), ipv6) for table in (MAIN_TABLE, pod_table) for ipv6 in (False, True)
        }
        if not left:
            return []
        for obj in held:
            for table, ipv6s in tables_of(obj, pod_table):
                left -= {(vpp_table(table), ipv6) for ipv6 in ipv6s}
            if not left:
                return []
        unused = sorted(left & self.ours())
        if unused:
            run([table_del(table_id, ipv6) for table_id, ipv6 in unused])
            for gone in unused:
                self.ours().discard(gone)
                if self._seen is not None:
                    self._seen.discard(gone)
        return unused

    def doubt(self) -> None:
        """A plan failed: the tables seen may be gone (an operator's delete), read again."""
        self._seen = None

    def ensure_affinity(self, run: Callable[[Sequence[Request]], None]) -> None:
        """Make (with `run`) the affinity table ready for policies, once per connection;
        an operator's table of its id is refused (InvalidObject), never reconfigured."""
        if self._affinity_ready:
            return
        name = self._names().get((AFFINITY_TABLE, True))
        if name not in (None, vpp_affinity.AFFINITY_TABLE_NAME):
            raise InvalidObject(
                f"VPP table {AFFINITY_TABLE} (ip6) is {name!r}, not ours: policies with "
                "sessionAffinity are made in it"
            )
        run(vpp_affinity.setup())
        self._affinity_ready = True

    def release_affinity(self, run: Callable[[Sequence[Request]], None]) -> bool:
        """Delete (with `run`) the affinity table if it holds no policy's BSID any more;
        whether it did. Any policy's: another srv6ctl on this VPP may own some."""
        if self._names().get((AFFINITY_TABLE, True)) != vpp_affinity.AFFINITY_TABLE_NAME:
            return False  # gone already, or an operator's
        table = {"table_id": AFFINITY_TABLE, "is_ip6": True, "name": ""}
        if any(True for _ in self.channel.dump("ip_route_v2_dump", src=FIB_SOURCE_SR, table=table)):
            return False
        self._affinity_ready = False
        run([vpp_affinity.teardown()])
        return True

    def _existing(self) -> set[Table]:
        """Every table VPP has, ours or not."""
        return set(self._names())

    def _names(self) -> dict[Table, str]:
        """Every table VPP has, with its name."""
        return {
            (int(d.table.table_id), bool(d.table.is_ip6)): str(d.table.name)
            for d in self.channel.dump("ip_table_dump")
        }


def tables_of(obj: DataplaneObject, pod_table: int) -> list[tuple[int, tuple[bool, ...]]]:
    """The model tables an object needs to exist (table, families: is_ip6) before it is
    written: a pod's port is in the pod table (both families), a route or steering is in
    its own table, a table-lookup SID VPP has and a rule (its session's FIB, or its ABF
    policy's path) look up in their table."""
    kind = kind_of(obj)
    if kind is POD:
        return [(pod_table, (False, True))]
    if kind is RULE:
        assert isinstance(obj, Rule)
        return [(obj.table, (obj.destination.version == 6,))]
    if kind is LOCAL_SID:
        if isinstance(obj, TableLookup) and type(obj) in BEHAVIOR_OF:
            return [(obj.table, tuple(family == 6 for family in sorted(obj.lookup_families)))]
        return []
    slot = kind.slot(obj)
    if slot is not None:
        table, prefix = slot
        return [(table, (prefix.version == 6,))]
    return []


__all__ = ["Table", "Tables", "tables_of"]
