"""The Linux kernel SRv6 backend: programs one network namespace over netlink.

`KernelBackend(netns)` implements the `Backend` protocol of `model.py`. The kernel shape
of each object is described in `kernel_codec`, the staging of writes in `kernel_program`,
the probing of what this kernel can do in `kernel_caps`, the batched socket (and its
ENOMEM retries) in `netlink_channel`.

Ownership: every route this backend creates carries the route protocol `route_protocol`
(default 0x5c = 92, a number neither iproute2's rt_protos nor any routing daemon we know
uses; values above RTPROT_STATIC (4) are not interpreted by the kernel), and every nexthop
carries the same protocol *and* an id in [nexthop_id_base, +nexthop_id_span). `dump`
reports only those, deletes name them by protocol, adds never overwrite (NLM_F_EXCL), so
a namespace's other routes and nexthops are never touched. Policy anchors live in their
own table (`policy_table`, see kernel_codec). The devices it may create: the SID device
(`sid_device`), when missing, and for End.DT4/DT46 into table T the VRF device `srv6vrfT`
bound to T (with `net.vrf.strict_mode=1`, which such a SID needs: see kernel_codec).

Pods: a `PodAttachment` is wired by the CNI side of the agent (the veth pair, the pod's
addresses, its loopback service addresses and stateless port rewrites all live in the
*pod's* namespace). From the node's namespace this backend could see a veth, but not the
pod's name, namespace path or addresses, so it cannot dump a `PodAttachment` faithfully;
it therefore reports none and treats pod changes as no-ops. The agent reconciles pods with
its CNI wiring, and the kernel objects here with this backend.

The node encap source is the namespace's `ip sr tunsrc` (genl family SEG6,
SEG6_CMD_SET_TUNSRC). A per-policy `encap_source` needs SEG6_IPTUNNEL_SRC on the nexthop,
which the probe checks (6.18 here ignores it, so such a policy is refused with a reason).

`writes` counts every state-changing netlink message sent (a restarted agent with nothing
to change must make none); `writes_by_type` splits them by message type.
"""

from __future__ import annotations

import dataclasses
import errno
import gc
import ipaddress
import logging
import socket
import struct
import sys
import threading
from collections import Counter
from collections.abc import Collection, Iterable, Iterator, Mapping
from contextlib import contextmanager
from types import TracebackType
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink import (
    CTRL_CMD_GETFAMILY,
    GENL_ID_CTRL,
    NETLINK_GENERIC,
    NETLINK_ROUTE,
    NLM_F_CREATE,
    NLM_F_EXCL,
    ctrlmsg,
    nlmsg,
)
from pyroute2.netlink.exceptions import NetlinkError as Pyroute2Error
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

from policies.nftables import list_table, run_nft
from srv6ctl.dataplane import host_ports
from srv6ctl.dataplane import kernel_affinity as affinity
from srv6ctl.dataplane import netlink_seg6 as nl
from srv6ctl.dataplane.kernel_caps import KernelFeatures, probe_kernel
from srv6ctl.dataplane.kernel_codec import (
    TABLE_ATTRS,
    VRF_STRICT_MODE,
    VRF_TABLE,
    Codec,
    DecodedNexthop,
    DecodedRoute,
    InvalidObject,
    Links,
    RouteMessage,
    SegmentPath,
    Slot,
    new_link,
    parse_bucket,
    parse_nexthop,
    parse_route,
    vrf_device,
    vrf_link,
)
from srv6ctl.dataplane.kernel_program import (
    HANDLERS,
    Compilation,
    Found,
    IdAllocator,
    Inventory,
    Program,
    prepare,
)
from srv6ctl.dataplane.kernel_rules import (
    LOCAL_RULE_PRIORITY,
    LOCAL_TABLE,
    RTM_GETRULE,
    is_mark_table,
    parse_rule,
    priority_of,
    rule_dump,
)
from srv6ctl.dataplane.model import (
    HOST_LOOP_DEVICE,
    HOST_LOOP_GATEWAY,
    HOST_LOOP_PEER,
    KINDS,
    Capabilities,
    Change,
    Counters,
    IPv6Address,
    NodeConfig,
    ObjectKind,
    SegmentList,
    SrPolicy,
    TableLookup,
    is_pod,
    kind_of,
)
from srv6ctl.dataplane.netlink_channel import (
    Failure,
    Feed,
    NetlinkChannel,
    NetlinkError,
    Request,
)
from srv6ctl.dataplane.nsenter import SysctlResult, ensure_sysctls, run_in_netns

log = logging.getLogger(__name__)

RTPROT_SRV6CTL = 0x5C
POLICY_TABLE = 0x5C  # table 92: BSID anchor routes (see kernel_codec)
NEXTHOP_ID_BASE = 0x5C00_0000
NEXTHOP_ID_SPAN = 0x0100_0000
GROUP_BUCKETS = 128  # resilient-group buckets: weight precision 1/128, cheap to hold
# Local SIDs without an interface of their own sit on this device (not lo: kernel_codec
# says why). Created when missing: a dummy device, as SRv6 set-ups usually use, or, on
# kernels without CONFIG_DUMMY (like this one), a bridge with no ports — any non-loopback
# device that is up will do, as a seg6local route is matched on input, never sent out.
SID_DEVICE = "srv6ctl0"
# Resilient groups move a bucket to a new backend only once the bucket has been idle this
# long, and force the balance after the unbalanced timer even if that cuts busy flows. The
# kernel's defaults (120 s, never) leave a backend added under load underweight for good
# (srv6ctl/lab/FINDINGS.md, finding 2).
GROUP_IDLE_TIMER_S = 10
GROUP_UNBALANCED_TIMER_S = 60
SID_DEVICE_KINDS = ("dummy", "bridge")
NEXTHOP_DEVICE = "lo"
# Plans touching this many objects are compiled on a second thread while being sent: below
# it, a thread costs more than the overlap gains (an agent's incremental steps are small).
STREAM_FROM = 1000
_IFA_F_NODAD = 0x02
_SWITCH_INTERVAL = 50e-6

# What the dataplane needs in the namespace. `net.ipv6.route.max_size` is left alone: since
# kernel 6.3 it defaults to INT_MAX and no longer limits routes (it only sized the dst
# cache). The per-device seg6_enabled of existing devices is added at start.
SYSCTLS: Mapping[str, str] = {
    "net.ipv6.conf.all.seg6_enabled": "1",
    "net.ipv6.conf.default.seg6_enabled": "1",  # devices created later (pod veths)
    "net.ipv6.conf.all.forwarding": "1",
    "net.ipv4.ip_forward": "1",
    # Policy 3 with fields 0x37 (addresses, protocol, ports): the 5-tuple and nothing else.
    # Policy 1 hashes a local socket's traffic on the socket's random txhash, which TCP
    # re-rolls on every retransmission timeout — a flow then jumps to another backend and
    # is reset (srv6ctl/lab/FINDINGS.md, finding 1). Kernel 5.12+.
    "net.ipv6.fib_multipath_hash_policy": "3",
    "net.ipv6.fib_multipath_hash_fields": "55",
    "net.ipv4.fib_multipath_hash_policy": "3",  # IPv4-in-SRv6 steering hashes in IPv4
    "net.ipv4.fib_multipath_hash_fields": "55",
    # The outer flow label of what H.Encaps makes: computed from the inner flow's hash (1)
    # rather than copied from the inner header (0, the default), which gives IPv4 and
    # every unlabelled IPv6 flow the label 0 — and a routed underlay, which sees no ports
    # behind the SRH, nothing to spread flows by (RFC 6438; srv6ctl conformance's
    # h.encaps.flow-label found it; VPP sets one).
    "net.ipv6.seg6_flowlabel": "1",
}

_IFINFO = struct.Struct("=BxHiII")  # struct ifinfomsg
_IFLA_IFNAME = 3
_RTM_GETLINK = 18
_RTM_NEWLINK = 16
_IFF_UP = 1


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Hold the cyclic garbage collector off while a plan is compiled and written.

    A plan of 10,000 services allocates a few hundred thousand objects beside the millions
    already alive (the desired config, the plan itself); every full collection walks all
    of them, and two of those took 0.35 s of a 0.6 s apply. Nothing made here forms a
    cycle, so nothing waits longer to be freed; the collector catches up afterwards.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


class ApplyError(RuntimeError):
    """Some writes of a plan failed for good. The stages before the failing one and the
    writes of that stage that succeeded were applied; a new dump shows exactly what."""

    def __init__(self, failures: Iterable[Failure]) -> None:
        self.failures = tuple(failures)
        lines = "; ".join(str(f) for f in self.failures[:5])
        more = f" (+{len(self.failures) - 5} more)" if len(self.failures) > 5 else ""
        super().__init__(f"kernel refused {len(self.failures)} write(s): {lines}{more}")


class KernelBackend:
    """SRv6 in the Linux kernel of network namespace `netns`, over netlink."""

    def __init__(
        self,
        netns: str,
        *,
        route_protocol: int = RTPROT_SRV6CTL,
        nexthop_id_base: int = NEXTHOP_ID_BASE,
        nexthop_id_span: int = NEXTHOP_ID_SPAN,
        policy_table: int = POLICY_TABLE,
        sid_device: str = SID_DEVICE,
        group_buckets: int = GROUP_BUCKETS,
        group_idle_timer: int | None = GROUP_IDLE_TIMER_S,
        group_unbalanced_timer: int | None = GROUP_UNBALANCED_TIMER_S,
        configure_sysctls: bool = True,
    ) -> None:
        if not 4 < route_protocol < 256:
            raise ValueError(f"route_protocol {route_protocol} must be in 5..255")
        if nexthop_id_base < 1 or nexthop_id_span < 1 or nexthop_id_base + nexthop_id_span > 2**32:
            raise ValueError(f"nexthop ids {nexthop_id_base}+{nexthop_id_span} leave 1..2**32-1")
        if policy_table in (0, 253, 254, 255):
            raise ValueError(f"policy_table {policy_table} is a kernel table")
        self.netns = netns
        self.features: KernelFeatures = probe_kernel()
        self.capabilities: Capabilities = self.features.capabilities
        self._codec = Codec(
            protocol=route_protocol,
            policy_table=policy_table,
            sid_device=sid_device,
            nexthop_device=NEXTHOP_DEVICE,
            sid_counters=self.capabilities.sid_counters,
            group_buckets=group_buckets,
            group_idle_timer=group_idle_timer,
            group_unbalanced_timer=group_unbalanced_timer,
        )
        self._id_range = range(nexthop_id_base, nexthop_id_base + nexthop_id_span)
        self._ids = IdAllocator(nexthop_id_base, nexthop_id_span, set())
        self._route = NetlinkChannel(netns, NETLINK_ROUTE, strict_dumps=True)
        self._genl: NetlinkChannel | None = None
        self._seg6_family: int | None = None
        self._inventory: Inventory | None = None
        self._ensure_sid_device(sid_device)
        if self.capabilities.rules:
            self.capabilities = dataclasses.replace(
                self.capabilities, host_loop=self._ensure_host_loop()
            )
        self._seg6_channel()  # now, not in the first apply (a socket and a family lookup)
        self.sysctls = SysctlResult()
        if configure_sysctls:
            self.sysctls = self.configure_sysctls()

    # --- the Backend protocol ---------------------------------------------------------

    def dump(self) -> NodeConfig:
        inventory, decoded = self._load()
        by_kind: dict[ObjectKind, list[Any]] = {}
        group_routes: list[tuple[Slot, int]] = []
        for route in decoded:
            if route.obj is not None:  # a local SID or a plain route
                by_kind.setdefault(kind_of(route.obj), []).append(route.obj)
            elif route.nh_id is not None:
                group_routes.append((route.slot, route.nh_id))
        found = Found(inventory, by_kind, group_routes, self._tunnel_source())
        return NodeConfig.of(
            obj for kind in KINDS if kind.dumped for obj in HANDLERS[kind].dump(found)
        )

    def as_held(self, desired: NodeConfig) -> NodeConfig:
        """`desired` itself: the kernel holds the model's weights (its resilient group
        spreads them over `group_buckets` buckets itself, within one bucket each)."""
        return desired

    def buckets(self, bsid: IPv6Address) -> dict[tuple[IPv6Address, ...], int]:
        """The policy's resilient group, bucket by bucket (RTM_GETNEXTHOPBUCKET), counted
        per member's segment list; {} without such a policy."""
        inventory, _ = self._load()
        group_id = inventory.anchors.get(bsid)
        if group_id is None:
            return {}
        held = Counter(
            self._route.dump(nl.RTM_GETNEXTHOPBUCKET, Codec.bucket_dump(group_id), parse_bucket)
        )
        path_of = {nh_id: SegmentPath(*path) for path, nh_id in inventory.paths.items()}
        out: dict[tuple[IPv6Address, ...], int] = {}
        for member, _ in inventory.groups[group_id]:
            path = path_of.get(member)
            if path is not None:
                out[path.segments] = out.get(path.segments, 0) + held[member]
        return out

    def sweep_pods(self, keep: Collection[str]) -> list[str]:
        """Nothing: the kernel holds no pod state of ours (the CNI wiring owns the veths,
        and a pod's own state goes with its netns)."""
        return []

    def apply(self, changes: Iterable[Change]) -> None:
        """Apply a plan in dependency stages, each one batched; see kernel_program.

        A large plan is compiled on a second thread while this one sends what is ready:
        the kernel does its part of each datagram inside `send()`, with the interpreter
        lock released, so building the writes and the kernel's work overlap.
        """
        todo = list(changes)
        if todo and all(is_pod(c.obj) for c in todo):
            return  # nothing for this backend: not even a read
        self._ensure_vrfs(todo)
        with _gc_paused():
            inventory = self._inventory if self._inventory is not None else self._load()[0]
            compilation = prepare(
                todo, inventory, self._codec, self._links(), self.features, self._ids
            )
            self._inventory = None  # until every stage has landed
            tunnel_source = compilation.tunnel_source
            if compilation.sets_tunnel_source and tunnel_source is not None:
                self._set_tunnel_source(tunnel_source)  # type: ignore[arg-type]
            if len(compilation) >= STREAM_FROM:
                program = self._stream_creates(compilation)
                stages = program.stages[1:] if compilation.creates else program.stages
            else:
                program = compilation.run()
                stages = program.stages
            for stage in stages:
                failures = self._route.execute(stage)
                if failures:
                    raise ApplyError(failures)
            if compilation.sets_tunnel_source and tunnel_source is None:
                self._set_tunnel_source(None)
            if program.nft_script is not None:
                # After the routes and rules: a mark with nowhere to go is harmless (the
                # packet falls through to the usual lookups), so any order is safe.
                run_nft(self.netns, ["-f", "-"], program.nft_script)
            self._inventory = program.inventory

    def _stream_creates(self, compilation: Compilation) -> Program:
        """Run `compilation` on a thread and send its first stage as it grows; the
        program, once both are done (the compile's own error, if it raised)."""
        feed = Feed()
        outcome: list[Program | BaseException] = []

        def compile_() -> None:
            try:
                outcome.append(compilation.run(feed.publish))
            except BaseException as error:  # handed to the caller below
                outcome.append(error)
            finally:
                feed.close()

        # The sender wants the lock back as soon as each send() returns; by default the
        # compiling thread would keep it for up to 5 ms after being asked.
        interval = sys.getswitchinterval()
        sys.setswitchinterval(min(interval, _SWITCH_INTERVAL))
        worker = threading.Thread(target=compile_, name="srv6ctl-compile", daemon=True)
        worker.start()
        try:
            failures = self._route.execute(compilation.creates, feed)
        finally:
            worker.join()  # pure and bounded: it ends even if sending failed
            sys.setswitchinterval(interval)
        result = outcome[0]
        if isinstance(result, BaseException):
            raise result
        if failures:
            raise ApplyError(failures)
        return result

    def counters(self) -> Mapping[Any, Counters]:
        """Per local SID: packets, bytes, errors (SEG6_LOCAL_COUNTERS). Per policy: packets
        over all its segment lists (nexthop-group member stats, kernel 6.7+); the kernel
        keeps no byte count for nexthop groups, so `bytes` stays 0 there.

        Both restart from zero when their object is replaced (a SID's route, a policy's
        group: the kernel builds a new one), which Prometheus reads as a counter reset.
        """
        out: dict[Any, Counters] = {}
        links = self._links()
        for msg in self._dump_routes(socket.AF_INET6):
            route = self._codec.decode_route(msg, links)
            if route.counters is not None and route.obj is not None:  # a local SID's
                packets, octets, errors = route.counters
                out[route.obj.key] = Counters(packets, octets, errors)
        if self.features.group_stats:
            inventory = self._inventory if self._inventory is not None else self._load()[0]
            stats = {n.nh_id: n for n in self._dump_nexthops(stats=True)}
            for bsid, group_id in inventory.anchors.items():
                group = stats.get(group_id)
                if group is not None:
                    out[("policy", bsid)] = Counters(packets=sum(group.member_packets.values()))
        return out

    def close(self) -> None:
        self._route.close()
        if self._genl is not None:
            self._genl.close()

    def __enter__(self) -> KernelBackend:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- extras -----------------------------------------------------------------------

    @property
    def writes(self) -> int:
        """Netlink messages sent that change kernel state (retries included)."""
        return self._route.writes + (self._genl.writes if self._genl else 0)

    @property
    def writes_by_type(self) -> Counter[int]:
        """`writes` by netlink message type (RTM_NEWROUTE, RTM_DELNEXTHOP...)."""
        out = Counter(self._route.writes_by_type)
        if self._genl is not None:
            out.update(self._genl.writes_by_type)
        return out

    @property
    def retries(self) -> int:
        return self._route.retries

    def configure_sysctls(self) -> SysctlResult:
        """Set SYSCTLS (and seg6_enabled on every present device) where they differ."""
        wanted = dict(SYSCTLS)
        for name in self._links().by_name:
            wanted[f"net/ipv6/conf/{name}/seg6_enabled"] = "1"
        result = ensure_sysctls(self.netns, wanted)
        for refusal in result.refused:
            log.warning("netns %s: sysctl refused: %s", self.netns, refusal)
        return result

    def _ensure_sid_device(self, name: str) -> None:
        alias = "srv6ctl: local SIDs without an interface"
        self._ensure_link(
            name, [(f"SID device {name} ({k})", new_link(name, k, alias)) for k in SID_DEVICE_KINDS]
        )

    def _ensure_host_loop(self) -> bool:
        """The veth pair HOST_LOOP_DEVICE ↔ HOST_LOOP_PEER, up, with HOST_LOOP_GATEWAY on
        the peer: what the node's own stack sends to its own SIDs (a host-network client
        reaching a Service backend on its node, a NodePort of its own address) leaves
        through the first end and comes back in through the second, as input, where the
        seg6local routes act (on output they would send it out of the SID device, lost).
        Idempotent; False, logged, where the kernel refuses it."""

        def address_and_up() -> None:
            with IPRoute() as ipr:
                (peer,) = ipr.link_lookup(ifname=HOST_LOOP_PEER)
                gateway = str(HOST_LOOP_GATEWAY)
                held = {a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(index=peer, family=6)}
                if gateway not in held:
                    ipr.addr("add", index=peer, address=gateway, prefixlen=64, flags=_IFA_F_NODAD)
                for name in (HOST_LOOP_DEVICE, HOST_LOOP_PEER):
                    (index,) = ipr.link_lookup(ifname=name)
                    ipr.link("set", index=index, state="up")

        alias = "srv6ctl: the node's own packets to its own SIDs, back in as input"
        peer = {"attrs": [("IFLA_IFNAME", HOST_LOOP_PEER), ("IFLA_IFALIAS", alias)]}
        # Created down: its addresses and sysctls come first (below).
        pair = new_link(HOST_LOOP_DEVICE, "veth", alias, data=[("VETH_INFO_PEER", peer)], up=False)
        try:
            self._ensure_link(HOST_LOOP_DEVICE, [(f"host loop {HOST_LOOP_DEVICE}", pair)])
            # Before the pair is up: no DAD, so that the gateway answers at once and the
            # first end's link-local (the source of its solicitations) is never tentative.
            # IPv4 in SRv6 comes back with the node's own address as its source, which
            # End.DX4's route lookup on the second end refuses as a martian unless that
            # end accepts local sources (it only ever carries the node's own packets).
            loop_sysctls = {
                f"net/ipv6/conf/{n}/accept_dad": "0" for n in (HOST_LOOP_DEVICE, HOST_LOOP_PEER)
            }
            loop_sysctls[f"net/ipv4/conf/{HOST_LOOP_PEER}/accept_local"] = "1"
            loop_sysctls[f"net/ipv4/conf/{HOST_LOOP_PEER}/rp_filter"] = "0"
            ensure_sysctls(self.netns, loop_sysctls)
            run_in_netns(self.netns, address_and_up)
        except (Pyroute2Error, NetlinkError, OSError, ValueError) as err:
            log.warning(
                "netns %s: no host loop (%s): the node's own packets to its own SIDs are lost",
                self.netns,
                err,
            )
            return False
        return True

    def _ensure_vrfs(self, changes: Iterable[Change]) -> None:
        """The VRF device of each table an End.DT4/DT46 being added decapsulates into, and
        strict mode, before the SID: idempotent, so a restart writes nothing here."""
        able = self.capabilities.behaviours  # the others are refused, unwritten, by prepare
        tables = {
            c.new.table
            for c in changes
            if isinstance(c.new, TableLookup)
            and TABLE_ATTRS[type(c.new)] == VRF_TABLE
            and c.new.behaviour in able
        }
        for table in sorted(tables):
            name = vrf_device(table)
            self._ensure_link(name, [(f"VRF device {name}", vrf_link(name, table, up=True))])
        if tables:
            refused = ensure_sysctls(self.netns, VRF_STRICT_MODE).refused
            if refused:
                raise InvalidObject(f"End.DT4/DT46 need VRF strict mode: {'; '.join(refused)}")

    def _ensure_link(self, name: str, candidates: list[tuple[str, Any]]) -> None:
        """Device `name` up: set up if present, else the first candidate the kernel takes."""
        links = self._link_table()
        if name in links:
            index, flags = links[name]
            if not flags & _IFF_UP:
                request = ifinfmsg()
                request["index"], request["flags"], request["change"] = index, _IFF_UP, _IFF_UP
                failures = self._route.execute([Request(_RTM_NEWLINK, 0, request, f"{name} up")])
                if failures:
                    raise NetlinkError(failures)
            return
        refused: list[Failure] = []
        for what, request in candidates:
            flags = NLM_F_CREATE | NLM_F_EXCL
            failures = self._route.execute([Request(_RTM_NEWLINK, flags, request, what)])
            if not failures:
                log.info("netns %s: created %s", self.netns, what)
                return
            refused += failures
        raise NetlinkError(refused)

    # --- reading ----------------------------------------------------------------------

    def _load(self) -> tuple[Inventory, list[DecodedRoute]]:
        """Read what of ours the namespace holds; refreshes the inventory."""
        links = self._links()
        protocol = self._codec.protocol
        inventory = Inventory()
        for nexthop in self._dump_nexthops(stats=False):
            inventory.occupied.add(nexthop.nh_id)
            if nexthop.protocol != protocol or nexthop.nh_id not in self._id_range:
                continue
            if nexthop.members is not None:
                inventory.groups[nexthop.nh_id] = nexthop.members
            elif nexthop.path is not None and nexthop.path not in inventory.paths:
                inventory.paths[nexthop.path] = nexthop.nh_id
            else:
                inventory.other.add(nexthop.nh_id)
        decoded = [
            self._codec.decode_route(msg, links)
            for family in (socket.AF_INET6, socket.AF_INET)
            for msg in self._dump_routes(family)
        ]
        for route in decoded:
            table, prefix = route.slot
            if is_mark_table(table) and route.nh_id is not None:
                inventory.mark_routes[route.slot] = route.nh_id  # kernel_affinity's
                continue
            is_anchor = isinstance(prefix, ipaddress.IPv6Network) and prefix.prefixlen == 128
            if table != self._codec.policy_table or not is_anchor:
                inventory.slot_refs[route.slot] = route.nh_id
                continue
            bsid = IPv6Address(prefix.network_address)
            inventory.anchor_refs[bsid] = route.nh_id
            if route.nh_id in inventory.groups:
                inventory.anchors[bsid] = route.nh_id
        sticky = self._affinity_table()
        path_of = {nh_id: SegmentPath(*path) for path, nh_id in inventory.paths.items()}
        lists: dict[tuple[SegmentPath, int], SegmentList] = {}  # shared: 10x fewer objects
        for bsid, group_id in inventory.anchors.items():
            members = inventory.groups[group_id]
            paths = [path_of.get(member) for member, _ in members]
            if not paths or None in paths:
                continue  # a member of no known shape: not a policy we can name
            shapes = {(p.mode, p.source) for p in paths if p is not None}
            if len(shapes) != 1:
                continue  # we never mix modes in one group; reconcile will replace it
            ((mode, source),) = shapes
            segment_lists = []
            for p, (_, weight) in zip(paths, members, strict=True):
                assert p is not None
                segment_list = lists.get((p, weight))
                if segment_list is None:
                    segment_list = lists[p, weight] = SegmentList(p.segments, weight)
                segment_lists.append(segment_list)
            inventory.policies[bsid] = SrPolicy(
                bsid,
                tuple(segment_lists),
                encap_source=source,
                mode=mode,
                affinity=sticky.timeouts.get(bsid, 0),
            )
            if bsid in sticky.timeouts:
                inventory.affine.add(bsid)
        inventory.marks = {
            key: mark for key, mark in sticky.marks.items() if key[0] in inventory.affine
        }
        inventory.nft_names = sticky.names
        caps = self.capabilities
        listing = self._nft_table(host_ports.TABLE, caps.port_maps or caps.translations)
        inventory.port_maps = {m.key: m for m in host_ports.parse_listing(listing)}
        translations = host_ports.parse_translations_listing(listing)
        inventory.translations = {t.key: t for t in translations}
        self._load_rules(inventory)
        self._inventory = inventory
        return inventory, [r for r in decoded if r.slot[0] != self._codec.policy_table]

    def _load_rules(self, inventory: Inventory) -> None:
        """Our rules, and where each family's local lookup is (kernel_rules)."""
        protocol = self._codec.protocol
        for version in (6, 4):
            for msg in self._route.dump(RTM_GETRULE, rule_dump(version), parse_rule):
                local = msg.plain and msg.table == LOCAL_TABLE
                if local and msg.priority == 0 and msg.protocol != protocol:
                    inventory.kernel_local.add(version)
                elif msg.protocol != protocol:
                    continue
                elif local and msg.priority == LOCAL_RULE_PRIORITY:
                    inventory.local_moved.add(version)
                elif msg.gate is not None:
                    inventory.gates[version] = msg.gate
                elif msg.mark is not None:
                    inventory.mark_rules.add((version, msg.mark))
                elif msg.mark_gate:
                    inventory.mark_gates.add(version)
                elif msg.rule is not None and msg.priority == priority_of(msg.rule):
                    inventory.rules[msg.rule.key] = msg.rule

    def _affinity_table(self) -> affinity.Held:
        """What the sessionAffinity table holds (kernel_affinity); nothing without one."""
        return affinity.parse_listing(self._nft_table(affinity.TABLE, self.capabilities.affinity))

    def _nft_table(self, table: str, able: bool) -> str:
        """`nft -j list table inet TABLE` in the namespace; "" when there is none (or
        this node cannot hold it)."""
        return list_table(self.netns, table) if able else ""

    def _dump_routes(self, family: int) -> list[RouteMessage]:
        msgs = self._route.dump(nl.RTM_GETROUTE, self._codec.route_dump(family), parse_route)
        # The kernel filters by protocol under strict checking; filter again in case not.
        return [m for m in msgs if m.protocol == self._codec.protocol]

    def _dump_nexthops(self, stats: bool) -> list[DecodedNexthop]:
        msgs = self._route.dump(nl.RTM_GETNEXTHOP, Codec.nexthop_dump(stats), parse_nexthop)
        return [Codec.decode_nexthop(m) for m in msgs]

    def _links(self) -> Links:
        return Links({name: index for name, (index, _) in self._link_table().items()})

    def _link_table(self) -> dict[str, tuple[int, int]]:
        """{name: (ifindex, IFF_* flags)} of the namespace's interfaces."""
        table: dict[str, tuple[int, int]] = {}

        def parse(msg_type: int, data: bytes) -> nlmsg | None:
            if msg_type == _RTM_NEWLINK:
                index, flags, name = _link_name(data)
                if name:
                    table[name] = (index, flags)
            return None

        self._route.dump(_RTM_GETLINK, ifinfmsg(), parse)
        return table

    # --- the node's tunnel source (genl SEG6) -----------------------------------------

    def _seg6_channel(self) -> tuple[NetlinkChannel, int] | None:
        if self._genl is None:
            self._genl = NetlinkChannel(self.netns, NETLINK_GENERIC)
            request = ctrlmsg()
            request["cmd"] = CTRL_CMD_GETFAMILY
            request["version"] = 1
            request["attrs"] = [("CTRL_ATTR_FAMILY_NAME", nl.SEG6_GENL_NAME)]
            try:
                answer = self._genl.query(GENL_ID_CTRL, request, _parse_ctrl)
            except OSError as exc:
                if exc.errno != errno.ENOENT:
                    raise
                answer = []
            self._seg6_family = answer[0].get_attr("CTRL_ATTR_FAMILY_ID") if answer else None
        if self._seg6_family is None:
            return None
        return self._genl, self._seg6_family

    def _tunnel_source(self) -> IPv6Address | None:
        channel = self._seg6_channel()
        if channel is None:
            return None
        genl, family = channel
        request = nl.seg6_genlmsg()
        request["cmd"] = nl.SEG6_CMD_GET_TUNSRC
        request["version"] = 0
        answer = genl.query(family, request, _seg6_parser(family))
        if not answer:
            return None
        address = IPv6Address(answer[0].get_attr("SEG6_ATTR_DST"))
        return None if address == IPv6Address("::") else address

    def _set_tunnel_source(self, address: IPv6Address | None) -> None:
        channel = self._seg6_channel()
        if channel is None:
            raise InvalidObject("this kernel has no SEG6 generic netlink family (ip sr tunsrc)")
        genl, family = channel
        request = nl.seg6_genlmsg()
        request["cmd"] = nl.SEG6_CMD_SET_TUNSRC
        request["version"] = 0
        request["attrs"] = [("SEG6_ATTR_DST", str(address or IPv6Address("::")))]
        failures = genl.execute([Request(family, 0, request, f"encap source {address}")])
        if failures:
            raise ApplyError(failures)


def _link_name(data: bytes) -> tuple[int, int, str]:
    """(ifindex, flags, IFLA_IFNAME) of an RTM_NEWLINK, not decoding the rest (stats...)."""
    offset = 16
    _, _, index, flags, _ = _IFINFO.unpack_from(data, offset)
    offset += _IFINFO.size
    while offset + 4 <= len(data):
        length, kind = struct.unpack_from("=HH", data, offset)
        if length < 4:
            break
        if kind & 0x3FFF == _IFLA_IFNAME:
            return index, flags, data[offset + 4 : offset + length].rstrip(b"\0").decode()
        offset += (length + 3) & ~3
    return index, flags, ""


def _parse_ctrl(msg_type: int, data: bytes) -> nlmsg | None:
    if msg_type != GENL_ID_CTRL:
        return None
    msg = ctrlmsg(data)
    msg.decode()
    return msg


def _seg6_parser(family: int) -> Any:
    def parse(msg_type: int, data: bytes) -> nlmsg | None:
        if msg_type != family:
            return None
        msg = nl.seg6_genlmsg(data)
        msg.decode()
        return msg

    return parse


__all__ = [
    "NEXTHOP_ID_BASE",
    "NEXTHOP_ID_SPAN",
    "POLICY_TABLE",
    "RTPROT_SRV6CTL",
    "SID_DEVICE",
    "ApplyError",
    "InvalidObject",
    "KernelBackend",
    "NetlinkError",
    "Slot",
]
