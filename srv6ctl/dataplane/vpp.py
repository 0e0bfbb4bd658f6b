"""The FD.io VPP backend: the node's NodeConfig programmed into VPP over its binary API.

`VppBackend(api_socket)` implements the `Backend` protocol of `model.py` for VPP 25.10
(`vpp_api.SUPPORTED_RELEASES`). What each model object becomes in VPP is in `vpp_codec`;
the socket, the CRC check and pipelining are in `vpp_api`.

Ownership. VPP has no owner mark on SR objects or routes, so:
- local SIDs, policies and steerings: all of VPP's are ours, or with `owned_prefixes`
  only those whose SID / BSID lies in one of them;
- routes: those the binary API added (FIB source API) in table 0 and in the tables we
  created (named `srv6ctl-<id>-ip6/ip4`), restricted to `owned_prefixes` when given. Routes
  an operator adds from VPP's startup config or CLI have the FIB source CLI and are never
  read or touched; pod host routes belong to their pod port (below), not to `routes`;
- interfaces: only those tagged `srv6ctl:` (`sw_interface_tag_add_del`).

Pods. A `PodAttachment` is the *VPP side* of a pod (apply handles ADD/REPLACE as "make it
so", writing only what is missing, and DELETE as "remove it"): a port tagged
`srv6ctl:pod:<interface>` — an af_packet interface on the node end of the pod's veth pair
(created by the CNI wiring, which in VPP mode leaves that end unaddressed; we switch its
kernel IPv6 off, in `vpp_netns`, so that only VPP answers there), or, where the kernel has
/dev/vhost-net, a tap that VPP creates straight into the pod's namespace, named, addressed
and with its default routes; or, for a pod whose `interface_type` is "memif" (a CNF), a
memif master in IP mode on the pod's own socket (`memif_socket`, made on demand and
removed with the port), which needs no neighbour. An af_packet port's MAC is derived from
its interface name, so a restarted VPP gives the pods' neighbour caches the MAC they
hold. Then: the port in the pod table, IPv6 on with `fe80::1` (the pods' default gateway)
as its link-local address, unnumbered to a loopback tagged `srv6ctl:gateway` that holds
the node's pod gateways (`pod_gateway_v6/v4`, the plan's `::1`/`.1`: VPP needs a global
source address on the egress interface for neighbour solicitations and ICMPv6 errors
towards a pod), up, a static neighbour per pod address (End.DX6 never resolves its next
hop itself, see `_pod_neighbours`; none on a memif), and a host route to each pod address
through the port. A port of the wrong kind (the pod's annotation seen after its CNI ADD)
is re-made. `dump()` reports no `PodAttachment`, like the kernel backend: a pod's name,
namespace and service addresses are not VPP state; `pod_ports()` lists the ports,
`detach_pod()` removes one. End.DX6/End.X/routes name interfaces by the
pod's interface name or by VPP's own interface name (an operator's uplink).

Hitless policies. VPP cannot remove a policy's last segment list and has no atomic list
swap, so a changed policy is edited in place with `sr_policy_mod`: new lists first, then
weight changes, then the old lists by their `sl_index` (`reconcile.segment_list_edits`):
at every moment it has at least one list, and new paths are live before old ones go.
`sr_policy_add`/`sr_policy_mod` do not return the new list's `sl_index`, so after an edit
the policy's lists are read again (one dump) the next time it is edited. Only a change of
mode (encap ↔ insert) deletes and re-creates a policy. VPP bakes the encap source into
each list when the list is made, so changing the node's source rebuilds every list that
used the old one (adds first, again).

VPP restarts. A lost API socket raises `VppUnavailable` from the call that noticed it;
the next call reconnects (exponential back-off between attempts, never sleeping inside a
call; the constructor waits up to `connect_timeout` for a first connection) and, before
anything else, replays everything this backend knows VPP should hold (`plan(known,
dump())`), pods included. With `stats_socket`, VPP's boot time (`/sys/boottime`) tells a
restarted VPP from a dropped socket in the log; the replay is a diff either way. A pod
DELETE while VPP is away succeeds at once (its port goes with VPP; it is forgotten, not
replayed), so CNI DEL never waits for VPP.

Bulk. `apply` sends the requests of a plan pipelined (`window` in flight, replies matched
by context): VPP handles them in order, so dependency order holds without a round trip
each. Only pod ports (whose creation returns the sw_if_index later messages need) and the
encap source are synchronous steps. bench/vpp_programming.py measures it (10,000 services
x 2 backends: about 6x the blocking rate, a third of `vppctl exec` of the same CLI).

`writes` counts the state-changing messages sent (a restarted agent with nothing to
change must make none).
"""

from __future__ import annotations

import gc
import ipaddress
import logging
import os
import stat
import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal

from srv6ctl.dataplane import vpp_codec as codec
from srv6ctl.dataplane.model import (
    MAIN_TABLE,
    MEMIF,
    Capabilities,
    Change,
    Counters,
    DataplaneObject,
    EncapMode,
    EncapSource,
    EndDT4,
    EndDT6,
    EndT,
    Flavour,
    IPNetwork,
    IPv4Address,
    IPv6Address,
    LocalSid,
    NodeConfig,
    Op,
    PodAttachment,
    Route,
    SrPolicy,
    Steering,
)
from srv6ctl.dataplane.nsenter import ensure_sysctls, run_in_netns
from srv6ctl.dataplane.reconcile import plan
from srv6ctl.dataplane.vpp_api import (
    AF_PACKET_MESSAGES,
    CORE_MESSAGES,
    DEFAULT_API_SOCKET,
    GATEWAY_MESSAGES,
    MEMIF_MESSAGES,
    POLICY_SOURCE_MESSAGES,
    SUPPORTED_RELEASES,
    TAP_MESSAGES,
    Request,
    VppApiError,
    VppChannel,
    VppError,
    VppUnavailable,
)
from srv6ctl.dataplane.vpp_codec import INVALID_INDEX, InvalidObject, VppPolicy

log = logging.getLogger(__name__)

PodInterfaceKind = Literal["auto", "af_packet", "tap"]
POD_LINK_LOCAL = IPv6Address("fe80::1")
GATEWAY_TAG = codec.TAG_PREFIX + "gateway"
VHOST_NET = "/dev/vhost-net"
MEMIF_DEV_TYPE = "memif"  # sw_interface_details.interface_dev_type of a memif
BULK = 1000  # changes in one apply above which the cycle collector is paused
EXTRA_MESSAGES = ("ip_route_lookup", "set_ip_flow_hash_v2")

CAPABILITY_NOTES = (
    "VPP has no End.DT46: IPv4 and IPv6 payloads need End.DT4 and End.DT6 SIDs",
    "PSP only for End and End.X; VPP's API has no USP/USD",
    "encap.red: VPP puts no SRH on a one-SID list, and the whole list in the SRH otherwise",
    "no resilient hashing: VPP's policy load-balance rehashes when lists change",
    "counters: per SID from sr_localsids_with_packet_stats_dump; per policy only with a "
    "stats socket (the steering routes' counters)",
)


class ApplyError(RuntimeError):
    """VPP refused some requests of a plan. What came before the first refusal was
    applied (and up to `window - 1` requests after it); a new dump shows exactly what."""

    def __init__(self, failures: Sequence[VppError | InvalidObject]) -> None:
        self.failures = tuple(failures)
        lines = "; ".join(str(f) for f in self.failures[:5])
        more = f" (+{len(self.failures) - 5} more)" if len(self.failures) > 5 else ""
        super().__init__(f"VPP refused {len(self.failures)} request(s): {lines}{more}")


@dataclass(frozen=True)
class PodPort:
    """A pod's port in VPP, as `pod_ports()` reports it."""

    interface: str  # the model's name (the tag's suffix)
    sw_if_index: int
    vpp_name: str  # e.g. host-s6abc..., tap3
    dev_type: str  # VPP's interface_dev_type: "af-packet", or "virtio" for a tap
    up: bool


@dataclass(frozen=True)
class _Interface:
    sw_if_index: int
    name: str
    tag: str
    dev_type: str
    up: bool


class VppBackend:
    """SRv6 in FD.io VPP 25.10, over the binary API socket `api_socket`."""

    def __init__(
        self,
        api_socket: str = DEFAULT_API_SOCKET,
        *,
        api_dir: str | os.PathLike[str] | None = None,
        stats_socket: str | None = None,
        pod_interface: PodInterfaceKind = "auto",
        pod_table: int = MAIN_TABLE,
        pod_link_local: IPv6Address = POD_LINK_LOCAL,
        pod_gateway_v6: IPv6Address | None = None,
        pod_gateway_v4: IPv4Address | None = None,
        owned_prefixes: Iterable[IPNetwork] | None = None,
        vpp_netns: str | None = None,
        window: int = 256,
        timeout: float = 10.0,
        connect_timeout: float = 30.0,
        client_name: str = "srv6ctl",
    ) -> None:
        if pod_interface == "auto":
            pod_interface = "tap" if os.path.exists(VHOST_NET) else "af_packet"
        if pod_interface not in ("af_packet", "tap"):
            raise ValueError(f"pod_interface {pod_interface!r}: af_packet, tap or auto")
        self.pod_interface: Literal["af_packet", "tap"] = pod_interface
        self.pod_table = pod_table
        self._pod_table_id = codec.vpp_table(pod_table)
        self.pod_link_local = IPv6Address(pod_link_local)
        self.pod_gateway_v6 = None if pod_gateway_v6 is None else IPv6Address(pod_gateway_v6)
        self.pod_gateway_v4 = None if pod_gateway_v4 is None else IPv4Address(pod_gateway_v4)
        self.owned_prefixes: tuple[IPNetwork, ...] | None = (
            None if owned_prefixes is None else tuple(owned_prefixes)
        )
        self.window = window
        self.stats_socket = stats_socket
        self.vpp_netns = vpp_netns
        messages = [*CORE_MESSAGES, *EXTRA_MESSAGES]
        messages += AF_PACKET_MESSAGES if pod_interface == "af_packet" else TAP_MESSAGES
        messages += GATEWAY_MESSAGES
        self.channel = VppChannel(
            api_socket,
            api_dir=api_dir,
            messages=messages,
            optional_messages=(*POLICY_SOURCE_MESSAGES, *MEMIF_MESSAGES),
            client_name=client_name,
            timeout=timeout,
            fast_packers=codec.FAST_PACKERS,
        )
        self.capabilities = Capabilities(
            behaviours=codec.BEHAVIOURS,
            flavours=frozenset({Flavour.PSP}),
            encap_modes=frozenset({EncapMode.ENCAP_RED, EncapMode.INSERT}),
            resilient_groups=False,
            sid_counters=True,
            notes=CAPABILITY_NOTES,
        )
        self._lock = threading.RLock()
        self._stats: Any = None
        self._boot_time: float | None = None
        self._retry_at = 0.0
        self._retry_delay = 0.1
        self._ever_connected = False
        self.reconnects = 0
        self.replays = 0
        # What VPP holds of ours, as far as we know: the last dump plus what we applied
        # since. Replayed after VPP restarts.
        self._known: dict[Any, DataplaneObject] = {}
        self._interfaces: dict[int, _Interface] | None = None
        self._tables: set[tuple[int, bool]] | None = None
        self._policies: dict[IPv6Address, VppPolicy] | None = None
        self._stale: set[IPv6Address] = set()
        self._node_source: IPv6Address | None = None
        self._memif_sockets: set[str] = set()  # deleted in VPP, to remove from the disk
        self._wait_connected(connect_timeout)

    # --- the Backend protocol ---------------------------------------------------------

    def dump(self) -> NodeConfig:
        with self._lock:
            self._ensure()
            return self._dump()

    def apply(self, changes: Iterable[Change]) -> None:
        todo = list(changes)
        with self._lock:
            if not todo:
                return
            try:
                self._ensure()
            except VppUnavailable:
                if all(c.op is Op.DELETE and isinstance(c.obj, PodAttachment) for c in todo):
                    # A pod going away while VPP is down: its port goes with VPP (or is
                    # removed by the next replay's GC); do not keep the caller waiting.
                    for change in todo:
                        self._known.pop(change.obj.key, None)
                    return
                raise
            self._execute(todo)

    def counters(self) -> Mapping[Any, Any]:
        """("localsid", sid) → Counters (good packets/bytes; errors = bad packets);
        ("policy", bsid) → Counters summed over the FIB entries steering into it (needs
        `stats_socket`); ("pod", interface) → telemetry InterfaceCounters (needs it too),
        from the pod's point of view (receive = what VPP sent to the pod)."""
        with self._lock:
            self._ensure()
            out: dict[Any, Any] = {}
            for details in self.channel.dump("sr_localsids_with_packet_stats_dump"):
                sid = IPv6Address(details.addr)
                if self._owns_address(sid):
                    out[("localsid", sid)] = Counters(
                        packets=int(details.good_traffic_pkt_count),
                        bytes=int(details.good_traffic_bytes),
                        errors=int(details.bad_traffic_pkt_count),
                    )
            stats = self._stats_segment()
            if stats is not None:
                try:
                    out.update(self._policy_counters(stats))
                    out.update(self._pod_counters(stats))
                except Exception as err:  # a stale segment (VPP restarting): next scrape
                    log.warning("VPP stats segment: %s", err)
                    self._stats = None
            return out

    def close(self) -> None:
        with self._lock:
            self.channel.close()
            if self._stats is not None:
                try:
                    self._stats.disconnect()
                except Exception as err:
                    log.debug("stats disconnect: %s", err)
                self._stats = None

    def __enter__(self) -> VppBackend:
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
        """State-changing API messages sent (pipelined or not)."""
        return self.channel.writes

    @property
    def version(self) -> str:
        return self.channel.version

    def pod_ports(self) -> dict[str, PodPort]:
        """Our pod ports in VPP, by the pod's interface name (for GC and `show`)."""
        with self._lock:
            self._ensure()
            interfaces = self._load_interfaces()
            ports = {}
            for iface in interfaces.values():
                name = codec.pod_of_tag(iface.tag)
                if name is not None:
                    ports[name] = PodPort(
                        name, iface.sw_if_index, iface.name, iface.dev_type, iface.up
                    )
            return ports

    def detach_pod(self, interface: str) -> None:
        """Remove a pod's port (e.g. found by GC with no pod behind it)."""
        self.apply([Change(Op.DELETE, old=PodAttachment(interface, "", ""))])

    def cli(self, command: str) -> str:
        """Run a VPP CLI command through the API (`cli_inband`); for diagnostics."""
        with self._lock:
            self._ensure()
            return str(self.channel.call("cli_inband", cmd=command).reply)

    # --- connection, restarts and replay ----------------------------------------------

    def _wait_connected(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with self._lock:
                    self._ensure()
                return
            except VppUnavailable:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise
                time.sleep(min(max(self._retry_at - time.monotonic(), 0.05), left))

    def _ensure(self) -> None:
        """Connected to the VPP that holds what we know; reconnect and replay if not."""
        if self.channel.connected:
            return
        now = time.monotonic()
        if now < self._retry_at:
            raise VppUnavailable(
                f"VPP on {self.channel.api_socket} unavailable; next attempt in "
                f"{self._retry_at - now:.1f}s"
            )
        self._forget_caches()
        try:
            self.channel.connect()
        except VppUnavailable:
            self._retry_at = now + self._retry_delay
            self._retry_delay = min(self._retry_delay * 2, 5.0)
            raise
        self._retry_delay = 0.1
        self._retry_at = 0.0
        if self._ever_connected:
            self.reconnects += 1
        self._ever_connected = True
        # The boot time tells a restarted VPP from a socket that only dropped; either way
        # the replay below is a diff, so it writes only what VPP lost.
        previous_boot = self._boot_time
        self._boot_time = self._read_boot_time()
        if previous_boot is not None and self._boot_time != previous_boot:
            log.warning("VPP restarted (boot time %s → %s)", previous_boot, self._boot_time)
        self._hash_without_flow_label()
        if self._known:
            self._replay()

    def _hash_without_flow_label(self) -> None:
        """Our policies' BSIDs live in the main table (fib_table 0), and VPP gives a policy's
        load-balance that table's flow-hash config when it makes the policy (VPP 25.10
        src/vnet/srv6/sr_policy_rewrite.c, update_lb). VPP's default hashes the IPv6 flow
        label, which Linux draws per connection and redraws on an RTO (sk_rethink_txhash):
        a NAT-free service connection would move to another backend. So the table hashes
        the 5-tuple, set before any policy is made (policies VPP made earlier keep their
        config). VPP has no API to read it back: the CLI says whether it is needed."""
        shown = str(self.channel.call("cli_inband", cmd="show ip6 fib table 0 summary").reply)
        if "flow hash:[" not in shown or "flowlabel" not in shown.split("]", 1)[0]:
            return
        request = codec.flow_hash_5_tuple(0)
        try:
            self.channel.call(request.name, write=True, what=request.what, **request.fields)
        except VppError as err:
            log.warning("VPP keeps hashing the IPv6 flow label for SR policies: %s", err)

    def _replay(self) -> None:
        """Make VPP hold everything we know it held (after a reconnect)."""
        known = _config(self._known.values())
        actual = self._dump()
        pods = [obj for obj in self._known.values() if isinstance(obj, PodAttachment)]
        self._known.update({pod.key: pod for pod in pods})
        changes = plan(known, _with_pods(actual, pods))
        changes += [Change(Op.ADD, new=pod) for pod in pods]  # ensure: writes only what lacks
        if changes:
            self.replays += 1
            log.info("replaying %d change(s) into VPP after reconnecting", len(changes))
            self._execute(_ordered(changes))

    def _forget_caches(self) -> None:
        self._interfaces = None
        self._tables = None
        self._policies = None
        self._stale.clear()
        if self._stats is not None:
            try:
                self._stats.disconnect()
            except Exception as err:
                log.debug("stats disconnect: %s", err)
            self._stats = None

    def _stats_segment(self) -> Any:
        if self.stats_socket is None:
            return None
        if self._stats is None:
            try:
                from vpp_papi.vpp_stats import VPPStats

                stats = VPPStats(socketname=self.stats_socket, timeout=2)
                stats.connect()
            except Exception as err:
                log.warning("VPP stats socket %s: %s", self.stats_socket, err)
                return None
            self._stats = stats
        return self._stats

    def _read_boot_time(self) -> float | None:
        stats = self._stats_segment()
        if stats is None:
            return None
        try:
            return float(stats["/sys/boottime"])
        except Exception as err:
            log.debug("boot time: %s", err)
            self._stats = None
            return None

    # --- reading ----------------------------------------------------------------------

    def _dump(self) -> NodeConfig:
        interfaces = self._load_interfaces()
        pod_ports = {i for i, iface in interfaces.items() if codec.pod_of_tag(iface.tag)}
        reply = self.channel.call("cli_inband", cmd="show sr encaps source addr")
        self._node_source = codec.parse_encap_source(str(reply.reply))
        local_sids = []
        for details in self.channel.dump("sr_localsids_dump"):
            sid = codec.decode_localsid(details, self._model_interface)
            if sid is not None and self._owns_address(sid.sid):
                local_sids.append(sid)
        policies = []
        for state in self._load_policies(refresh=True).values():
            policy = codec.policy_as_model(state, self._node_source)
            if policy is not None:
                policies.append(policy)
        steerings = []
        for details in self.channel.dump("sr_steering_pol_dump"):
            st = codec.decode_steering(details)
            if st is not None and self._owns_address(st.bsid):
                steerings.append(st)
        routes = []
        for table_id, ipv6 in sorted(self._load_tables()):
            table = {"table_id": table_id, "is_ip6": ipv6, "name": ""}
            for details in self.channel.dump(
                "ip_route_v2_dump", src=codec.FIB_SOURCE_API, table=table
            ):
                if _is_pod_host_route(details.route, pod_ports):
                    continue  # part of its pod port, not of `routes`
                route = codec.decode_route(details, self._model_interface)
                if route is not None and self._owns_prefix(route.prefix):
                    routes.append(route)
        config = NodeConfig(
            encap_source=self._node_source,
            local_sids=frozenset(local_sids),
            policies=frozenset(policies),
            steerings=frozenset(steerings),
            routes=frozenset(routes),
        )
        pods = [obj for obj in self._known.values() if isinstance(obj, PodAttachment)]
        self._known = {obj.key: obj for obj in config.objects()}
        self._known.update({pod.key: pod for pod in pods})
        if config.encap_source is not None:
            source = EncapSource(config.encap_source)
            self._known[source.key] = source
        return config

    def _owns_address(self, address: IPv6Address) -> bool:
        if self.owned_prefixes is None:
            return True
        return any(address in prefix for prefix in self.owned_prefixes)

    def _owns_prefix(self, prefix: IPNetwork) -> bool:
        if self.owned_prefixes is None:
            return True
        return any(
            prefix.version == owned.version and prefix.subnet_of(owned)  # type: ignore[arg-type]
            for owned in self.owned_prefixes
        )

    def _load_interfaces(self, refresh: bool = False) -> dict[int, _Interface]:
        if self._interfaces is None or refresh:
            interfaces = {}
            for details in self.channel.dump("sw_interface_dump", sw_if_index=INVALID_INDEX):
                index = int(details.sw_if_index)
                interfaces[index] = _Interface(
                    index,
                    str(details.interface_name),
                    str(details.tag),
                    str(details.interface_dev_type),
                    bool(int(details.flags) & codec.IF_STATUS_ADMIN_UP),
                )
            self._interfaces = interfaces
        return self._interfaces

    def _model_interface(self, sw_if_index: int) -> str | None:
        iface = self._load_interfaces().get(sw_if_index)
        if iface is None:
            return None
        return codec.pod_of_tag(iface.tag) or iface.name

    def _find_interface(self, name: str) -> int | None:
        for refresh in (False, True):
            interfaces = self._load_interfaces(refresh)
            by_tag = codec.pod_tag(name) if len(name) < 40 else None
            for iface in interfaces.values():
                if by_tag is not None and iface.tag == by_tag:
                    return iface.sw_if_index
            for iface in interfaces.values():
                if iface.name == name:
                    return iface.sw_if_index
        return None

    def _interface_index(self, name: str) -> int:
        index = self._find_interface(name)
        if index is None:
            raise InvalidObject(
                f"interface {name}: VPP has no pod port tagged {codec.POD_TAG_PREFIX}{name} "
                "and no interface of that name"
            )
        return index

    def _load_tables(self) -> set[tuple[int, bool]]:
        """(table id, ipv6) of table 0 and of the tables we created."""
        if self._tables is None:
            tables = {(0, False), (0, True)}
            for details in self.channel.dump("ip_table_dump"):
                table = details.table
                if str(table.name).startswith(codec.TABLE_NAME_PREFIX):
                    tables.add((int(table.table_id), bool(table.is_ip6)))
            self._tables = tables
        return self._tables

    def _all_table_ids(self) -> set[tuple[int, bool]]:
        tables = set()
        for details in self.channel.dump("ip_table_dump"):
            tables.add((int(details.table.table_id), bool(details.table.is_ip6)))
        return tables

    def _load_policies(self, refresh: bool = False) -> dict[IPv6Address, VppPolicy]:
        if self._policies is None or refresh:
            v2 = {IPv6Address(d.bsid): d for d in self.channel.dump("sr_policies_v2_dump")}
            policies = {}
            for details in self.channel.dump("sr_policies_with_sl_index_dump"):
                bsid = IPv6Address(details.bsid)
                if self._owns_address(bsid):
                    policies[bsid] = codec.decode_policy(details, v2.get(bsid))
            self._policies = policies
            self._stale.clear()
        return self._policies

    # --- writing ----------------------------------------------------------------------

    def _execute(self, changes: Sequence[Change]) -> None:
        """Apply `changes` in order: pipelined, with pods and the encap source as steps."""
        if not changes:
            return
        if len(changes) < BULK:
            self._execute_changes(changes)
            return
        # Thousands of requests, fields and replies, none in a reference cycle: the cycle
        # collector could free nothing, but its full passes over the agent's whole state
        # cost a fifth of a 10,000-service apply (as in render's bulk re-render).
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            self._execute_changes(changes)
        finally:
            if was_enabled:
                gc.enable()

    def _execute_changes(self, changes: Sequence[Change]) -> None:
        touched = {c.obj.bsid for c in changes if isinstance(c.obj, SrPolicy)}
        if touched and (self._policies is None or touched & self._stale):
            self._load_policies(refresh=True)  # the lists' sl_index for in-place edits
        batch: list[Request] = []
        owner: list[int] = []  # the change each request of `batch` belongs to
        queued: list[int] = []  # the changes whose requests are all in `batch`

        def flush() -> None:
            failures = self._pipeline(batch)
            first = len(changes)
            if failures:
                culprit = failures[0].request
                first = next(owner[i] for i, r in enumerate(batch) if r is culprit)
            for position in queued:
                if position < first:
                    self._record(changes[position])
            batch.clear()
            owner.clear()
            queued.clear()
            if failures:
                raise ApplyError(failures)

        try:
            self._ensure_tables(changes)
            for position, change in enumerate(changes):
                obj = change.obj
                if isinstance(obj, PodAttachment | EncapSource):
                    flush()
                    if isinstance(obj, PodAttachment):
                        self._apply_pod(change)
                    else:
                        self._apply_encap_source(change)
                    self._record(change)
                    continue
                try:
                    requests = self._requests(change)
                except InvalidObject as err:
                    flush()
                    raise ApplyError([err]) from err
                batch.extend(requests)
                owner.extend([position] * len(requests))
                queued.append(position)
            flush()
        except (ApplyError, VppError, VppUnavailable):
            self._policies = None  # whatever happened, read the lists again
            self._interfaces = None
            raise

    def _record(self, change: Change) -> None:
        if change.old is not None:
            self._known.pop(change.old.key, None)
        if change.new is not None:
            self._known[change.new.key] = change.new

    def _requests(self, change: Change) -> list[Request]:
        obj = change.obj
        if isinstance(obj, SrPolicy):
            inventory = self._policies if self._policies is not None else {}
            if change.new is None:
                inventory.pop(obj.bsid, None)
            else:
                if obj.encap_source is not None and not (
                    set(POLICY_SOURCE_MESSAGES) <= self.channel.available
                ):
                    raise InvalidObject(
                        f"policy {obj.bsid}: an encap source of its own needs "
                        "sr_policy_add_v2, which this VPP does not have"
                    )
                self._stale.add(obj.bsid)  # its new lists' sl_index are unknown
                held = inventory.get(obj.bsid)
                if held is not None and held.is_encap != (obj.mode is not EncapMode.INSERT):
                    log.warning(
                        "policy %s: VPP cannot change its mode in place; deleting and "
                        "re-creating it (not hitless)",
                        obj.bsid,
                    )
            return codec.change_requests(
                change, self._interface_index, inventory, self._node_source
            )
        return codec.change_requests(change, self._interface_index, {}, self._node_source)

    def _ensure_tables(self, changes: Sequence[Change]) -> None:
        wanted: set[tuple[int, bool]] = set()
        for change in changes:
            obj = change.new
            if obj is None:
                continue
            for table, ipv6s in _tables_of(obj, self.pod_table):
                table_id = codec.vpp_table(table)
                if table_id != 0:
                    wanted.update((table_id, ipv6) for ipv6 in ipv6s)
        if not wanted:
            return
        existing = self._all_table_ids()
        missing = sorted(wanted - existing)
        if missing:
            self._run([codec.table_add(table_id, ipv6) for table_id, ipv6 in missing])
        self._tables = None

    def _run(self, requests: Sequence[Request]) -> None:
        failures = self._pipeline(requests)
        if failures:
            raise ApplyError(failures)

    def _pipeline(self, requests: Sequence[Request]) -> list[VppError]:
        """Pipeline `requests`; refusals we can work around are, and the rest goes on."""
        start = 0
        while start < len(requests):
            done = self.channel.pipeline(requests[start:], window=self.window)
            if not done.failures:
                return []
            unrecovered = [f for f in done.failures if not self._recover(f)]
            if unrecovered:
                return unrecovered
            start += done.sent
        return []

    def _recover(self, failure: VppError) -> bool:
        """A local SID added from VPP's CLI without a prefix length is keyed /0 there, and
        the API (which always says /128) cannot delete it (-2): the CLI can."""
        request = failure.request
        if request.name != "sr_localsid_add_del" or not request.fields.get("is_del"):
            return False
        if failure.retval != -2:
            return False
        sid = request.fields["localsid"]
        if not any(IPv6Address(d.addr) == sid for d in self.channel.dump("sr_localsids_dump")):
            return True  # already gone: what the delete wanted
        self.channel.call(
            "cli_inband", write=True, what=f"delete {sid}", cmd=f"sr localsid del address {sid}"
        )
        return not any(IPv6Address(d.addr) == sid for d in self.channel.dump("sr_localsids_dump"))

    def _apply_encap_source(self, change: Change) -> None:
        new = change.new
        address = new.address if isinstance(new, EncapSource) else None
        previous = self._node_source
        self._run([codec.encap_source(address)])
        self._node_source = address
        # VPP bakes the source into each list when the list is made: setting it changes no
        # existing policy. Rebuild those that were following the node's old source.
        old_source = previous or codec.ZERO6
        rebuild: list[Request] = []
        for state in self._load_policies(refresh=True).values():
            if not state.is_encap or state.encap_src != old_source:
                continue
            policy = codec.policy_as_model(state, previous)
            if policy is None or policy.encap_source is not None:
                continue
            rebuild += [codec.list_add(policy, sl) for sl in policy.segment_lists]
            rebuild += [codec.list_del(state.bsid, sl) for sl in state.lists]
            self._stale.add(state.bsid)
        self._run(rebuild)

    # --- pods -------------------------------------------------------------------------

    def _pod_port(self, interface: str) -> _Interface | None:
        tag = codec.pod_tag(interface)
        for iface in self._load_interfaces().values():
            if iface.tag == tag:
                return iface
        return None

    def _apply_pod(self, change: Change) -> None:
        if change.new is None:
            assert isinstance(change.old, PodAttachment)
            self._pod_remove(change.old.interface)
            return
        assert isinstance(change.new, PodAttachment)
        stale: frozenset[Any] = frozenset()
        if isinstance(change.old, PodAttachment):
            stale = frozenset(a.ip for a in change.old.addresses) - {
                a.ip for a in change.new.addresses
            }
        self._pod_ensure(change.new, stale)

    def _pod_ensure(self, pod: PodAttachment, stale: Iterable[Any] = ()) -> None:
        self._load_interfaces(refresh=True)
        port = self._pod_port(pod.interface)
        memif = pod.interface_type == MEMIF
        if port is not None and (port.dev_type == MEMIF_DEV_TYPE) != memif:
            # The pod's annotation and its port disagree (e.g. the CNI ADD came before the
            # API showed us the pod): the port is re-made as the annotation says.
            log.info("pod %s: its VPP port becomes a %s", pod.pod, pod.interface_type or "veth")
            self._pod_remove(pod.interface)
            port = None
        if port is None:
            index = self._pod_create(pod)
            port = self._load_interfaces(refresh=True).get(index)
            if port is None:
                raise VppApiError(f"pod {pod.pod}: VPP created port {index} but does not list it")
        index = port.sw_if_index
        steps: list[Request] = []
        if self._pod_table_id != 0:
            for ipv6 in (False, True):
                reply = self.channel.call("sw_interface_get_table", sw_if_index=index, is_ipv6=ipv6)
                if int(reply.vrf_id) != self._pod_table_id:
                    steps.append(codec.interface_table(index, self._pod_table_id, ipv6))
        try:
            reply = self.channel.call("sw_interface_ip6_get_link_local_address", sw_if_index=index)
            link_local: IPv6Address | None = IPv6Address(reply.ip)
        except VppError:
            link_local = None  # IPv6 not enabled on it yet (-62)
        if link_local != self.pod_link_local:
            steps.append(codec.interface_ip6_enable(index))
            steps.append(codec.interface_link_local(index, self.pod_link_local))
        gateway = self._gateway_loopback()
        if gateway is not None:
            borrowed = self.channel.dump("ip_unnumbered_dump", sw_if_index=index)
            if not any(int(d.ip_sw_if_index) == gateway for d in borrowed):
                steps.append(codec.interface_unnumbered(index, gateway))
        if not port.up:
            steps.append(codec.interface_up(index))
        if not memif:  # IP mode: no L2, no neighbours
            steps += self._pod_neighbours(pod, index, stale)
        for address in sorted(stale, key=lambda a: (a.version, int(a))):
            steps.append(
                codec.pod_route(address, index, self._pod_table_id, pod.interface, delete=True)
            )
        for address in sorted((a.ip for a in pod.addresses), key=lambda a: (a.version, int(a))):
            if not self._has_pod_route(address, index):
                steps.append(codec.pod_route(address, index, self._pod_table_id, pod.interface))
        self._run(steps)
        self._interfaces = None

    def _pod_neighbours(
        self, pod: PodAttachment, index: int, stale: Iterable[Any]
    ) -> list[Request]:
        """Static neighbours for the pod's addresses. End.DX6/DX4 hand a packet straight to
        the neighbour's adjacency, which never starts neighbour discovery: while it is
        incomplete VPP 25.10 sends the packet to ip6-rewrite with no MAC and drops it
        ("ip6-frag: malformed packet"). So VPP is told the pod's MAC instead of asking."""
        mac = self._pod_mac(pod)
        if mac is None:
            return []
        held = set()
        for af in (codec.ADDRESS_IP6, codec.ADDRESS_IP4):
            for details in self.channel.dump("ip_neighbor_dump", sw_if_index=index, af=af):
                neighbour = details.neighbor
                held.add((ipaddress.ip_address(neighbour.ip_address), str(neighbour.mac_address)))
        steps = [
            codec.pod_neighbour(index, address, held_mac, delete=True)
            for address, held_mac in sorted(held, key=lambda h: (h[0].version, int(h[0])))
            if address in set(stale) or held_mac != mac
        ]
        for address in sorted((a.ip for a in pod.addresses), key=lambda a: (a.version, int(a))):
            if (address, mac) not in held:
                steps.append(codec.pod_neighbour(index, address, mac))
        return steps

    def _pod_mac(self, pod: PodAttachment) -> str | None:
        if self.pod_interface == "tap":
            return codec.tap_host_mac(pod.interface)

        def read() -> str | None:
            from pyroute2 import IPRoute

            with IPRoute() as ipr:
                links = ipr.get_links(ifname=pod.container_interface)
                return str(links[0].get_attr("IFLA_ADDRESS")) if links else None

        try:
            return run_in_netns(pod.netns, read)
        except Exception as err:
            log.warning(
                "pod %s: cannot read the MAC of %s in %s (%s): VPP will not reach it by "
                "End.DX6 until it is resolved otherwise",
                pod.pod,
                pod.container_interface,
                pod.netns,
                err,
            )
            return None

    def _pod_create(self, pod: PodAttachment) -> int:
        if pod.interface_type == MEMIF:
            return self._memif_create(pod)
        if self.pod_interface == "tap":
            request = codec.tap_create(pod, self.pod_link_local, self.pod_gateway_v4)
            reply = self.channel.call(request.name, write=True, what=request.what, **request.fields)
            return int(reply.sw_if_index)
        _kernel_side_quiet(self.vpp_netns, pod.interface)
        request = codec.af_packet_create(pod.interface)
        reply = self.channel.call(request.name, write=True, what=request.what, **request.fields)
        index = int(reply.sw_if_index)
        self._run([codec.interface_tag(index, codec.pod_tag(pod.interface))])
        return index

    def _memif_create(self, pod: PodAttachment) -> int:
        """A memif master on the pod's own socket (made when missing), tagged as its port."""
        if not set(MEMIF_MESSAGES) <= self.channel.available:
            raise InvalidObject(
                f"pod {pod.pod}: a memif port needs VPP's memif plugin, which this VPP lacks"
            )
        if not pod.memif_socket.startswith("/"):
            raise InvalidObject(f"pod {pod.pod}: memif socket {pod.memif_socket!r} not absolute")
        try:
            os.makedirs(os.path.dirname(pod.memif_socket), mode=0o755, exist_ok=True)
        except OSError as err:  # VPP may see another /run: it makes the directory itself
            log.debug("memif directory for %s: %s", pod.pod, err)
        socket_id = self._memif_socket_id(pod.memif_socket)
        if socket_id is None:
            request = codec.memif_socket_add(pod.memif_socket)
            reply = self.channel.call(request.name, write=True, what=request.what, **request.fields)
            socket_id = int(reply.socket_id)
        request = codec.memif_create(socket_id, pod)
        reply = self.channel.call(request.name, write=True, what=request.what, **request.fields)
        index = int(reply.sw_if_index)
        self._run([codec.interface_tag(index, codec.pod_tag(pod.interface))])
        return index

    def _memif_socket_id(self, path: str) -> int | None:
        for details in self.channel.dump("memif_socket_filename_dump"):
            if str(details.socket_filename) == path:
                return int(details.socket_id)
        return None

    def _memif_remove(self, index: int, interface: str) -> list[Request]:
        """Delete a memif port, then its socket file when no other memif uses it."""
        memifs = {int(d.sw_if_index): int(d.socket_id) for d in self.channel.dump("memif_dump")}
        socket_id = memifs.pop(index, None)
        steps = [codec.memif_delete(index, interface)]
        # Socket 0 is VPP's default socket, never ours.
        if socket_id is not None and socket_id != 0 and socket_id not in memifs.values():
            paths = {
                int(d.socket_id): str(d.socket_filename)
                for d in self.channel.dump("memif_socket_filename_dump")
            }
            path = paths.get(socket_id, "")
            steps.append(codec.memif_socket_del(socket_id, path))
            if path:
                self._memif_sockets.add(path)
        return steps

    def _has_pod_route(self, address: Any, sw_if_index: int) -> bool:
        prefix = ipaddress.ip_network((address, 128 if address.version == 6 else 32))
        try:
            reply = self.channel.call(
                "ip_route_lookup", table_id=self._pod_table_id, exact=1, prefix=prefix
            )
        except VppError:
            return False
        paths = reply.route.paths[: reply.route.n_paths]
        return (
            len(paths) == 1
            and int(paths[0].sw_if_index) == sw_if_index
            and (codec.path_nexthop(paths[0]) == address)
        )

    def _gateway_loopback(self) -> int | None:
        """The loopback holding the pods' gateway addresses (made when missing), or None
        without gateways. Pod ports are unnumbered to it: VPP sources its neighbour
        solicitations and ICMPv6 errors towards a pod from an address of the egress
        interface (ip6_sas_by_sw_if_index), and a link-local one serves only link-local
        destinations — without a global gateway address no pod is ever resolved."""
        wanted: list[ipaddress.IPv4Interface | ipaddress.IPv6Interface] = []
        if self.pod_gateway_v6 is not None:
            wanted.append(ipaddress.IPv6Interface((self.pod_gateway_v6, 128)))
        if self.pod_gateway_v4 is not None:
            wanted.append(ipaddress.IPv4Interface((self.pod_gateway_v4, 32)))
        if not wanted:
            return None
        index = next(
            (i.sw_if_index for i in self._load_interfaces().values() if i.tag == GATEWAY_TAG),
            None,
        )
        steps: list[Request] = []
        if index is None:
            request = codec.loopback_create(GATEWAY_TAG)
            reply = self.channel.call(request.name, write=True, what=request.what, **request.fields)
            index = int(reply.sw_if_index)
            steps.append(codec.interface_tag(index, GATEWAY_TAG))
            if self._pod_table_id != 0:
                steps.append(codec.interface_table(index, self._pod_table_id, False))
                steps.append(codec.interface_table(index, self._pod_table_id, True))
            steps.append(codec.interface_up(index))
            held: set[Any] = set()
        else:
            held = {
                ipaddress.ip_interface(d.prefix)
                for ipv6 in (False, True)
                for d in self.channel.dump("ip_address_dump", sw_if_index=index, is_ipv6=ipv6)
            }
        steps += [codec.interface_address(index, prefix) for prefix in wanted if prefix not in held]
        if steps:
            self._run(steps)
            self._interfaces = None
        return index

    def _pod_remove(self, interface: str) -> None:
        self._load_interfaces(refresh=True)
        port = self._pod_port(interface)
        if port is None:
            return
        index = port.sw_if_index
        steps: list[Request] = []
        for table_id, ipv6 in sorted(self._load_tables()):
            table = {"table_id": table_id, "is_ip6": ipv6, "name": ""}
            for details in self.channel.dump(
                "ip_route_v2_dump", src=codec.FIB_SOURCE_API, table=table
            ):
                paths = details.route.paths[: details.route.n_paths]
                if paths and all(int(p.sw_if_index) == index for p in paths):
                    prefix = ipaddress.ip_network(details.route.prefix, strict=False)
                    steps.append(
                        codec.pod_route(
                            prefix.network_address, index, table_id, interface, delete=True
                        )
                    )
        if port.dev_type == "virtio":
            steps.append(codec.tap_delete(index, interface))
        elif port.dev_type == MEMIF_DEV_TYPE:
            steps += self._memif_remove(index, interface)
        else:
            steps.append(codec.af_packet_delete(port.name.removeprefix("host-")))
        self._run(steps)
        self._interfaces = None
        while self._memif_sockets:
            _remove_memif_socket(self._memif_sockets.pop())

    # --- counters ---------------------------------------------------------------------

    def _policy_counters(self, stats: Any) -> dict[Any, Counters]:
        steered: dict[tuple[int, IPNetwork], IPv6Address] = {}
        for details in self.channel.dump("sr_steering_pol_dump"):
            st = codec.decode_steering(details)
            if st is not None and self._owns_address(st.bsid):
                steered[(codec.vpp_table(st.table), st.prefix)] = st.bsid
        if not steered:
            return {}
        route_to = stats["/net/route/to"]
        totals: dict[IPv6Address, list[int]] = defaultdict(lambda: [0, 0])
        for table_id, ipv6 in {(t, p.version == 6) for t, p in steered}:
            table = {"table_id": table_id, "is_ip6": ipv6, "name": ""}
            for details in self.channel.dump(
                "ip_route_v2_dump", src=codec.FIB_SOURCE_SR, table=table
            ):
                prefix = ipaddress.ip_network(details.route.prefix, strict=False)
                bsid = steered.get((table_id, prefix))
                if bsid is None:
                    continue
                index = int(details.route.stats_index)
                packets, octets = _combined(route_to, index)
                totals[bsid][0] += packets
                totals[bsid][1] += octets
        return {("policy", b): Counters(packets=p, bytes=o) for b, (p, o) in totals.items()}

    def _pod_counters(self, stats: Any) -> dict[Any, Any]:
        from telemetry.dataplane import InterfaceCounters

        ports = {
            iface.sw_if_index: name
            for iface in self._load_interfaces(refresh=True).values()
            if (name := codec.pod_of_tag(iface.tag)) is not None
        }
        if not ports:
            return {}
        rx, tx = stats["/if/rx"], stats["/if/tx"]
        drops, tx_errors = stats["/if/drops"], stats["/if/tx-error"]
        out: dict[Any, Any] = {}
        for index, name in ports.items():
            rx_packets, rx_bytes = _combined(rx, index)
            tx_packets, tx_bytes = _combined(tx, index)
            # The pod's point of view: what VPP transmits on the port, the pod receives.
            out[("pod", name)] = InterfaceCounters(
                receive_packets=tx_packets,
                receive_bytes=tx_bytes,
                receive_drops=_simple(tx_errors, index),
                transmit_packets=rx_packets,
                transmit_bytes=rx_bytes,
                transmit_drops=_simple(drops, index),
            )
        return out


# --- helpers --------------------------------------------------------------------------


def _combined(counter: Any, index: int) -> tuple[int, int]:
    """Packets and bytes of `index` summed over VPP's threads (a combined counter)."""
    packets = octets = 0
    for per_thread in counter:
        if index < len(per_thread):
            value = per_thread[index]  # vpp_stats gives {"packets": n, "bytes": n}
            packets += int(value["packets"])
            octets += int(value["bytes"])
    return packets, octets


def _simple(counter: Any, index: int) -> int:
    total = 0
    for per_thread in counter:
        if index < len(per_thread):
            total += int(per_thread[index])
    return total


def _is_pod_host_route(route: Any, pod_ports: set[int]) -> bool:
    """A pod port's host route (`codec.pod_route`): one path, through the port, to the
    prefix's own address. Any other route through a pod port (an operator's, say, via the
    pod's link-local address) is a `Route` like any other and must be dumped as one, or
    reconcile would add it again on every pass."""
    paths = route.paths[: route.n_paths]
    if len(paths) != 1 or int(paths[0].sw_if_index) not in pod_ports:
        return False
    prefix = ipaddress.ip_network(route.prefix, strict=False)
    host = prefix.prefixlen == prefix.max_prefixlen
    return host and codec.path_nexthop(paths[0]) == prefix.network_address


def _tables_of(obj: DataplaneObject, pod_table: int) -> list[tuple[int, tuple[bool, ...]]]:
    """The tables an object needs to exist (table, families) before it is written."""
    if isinstance(obj, EndT | EndDT6):
        return [(obj.table, (True,))]
    if isinstance(obj, EndDT4):
        return [(obj.table, (False,))]
    if isinstance(obj, Steering | Route):
        return [(obj.table, (obj.prefix.version == 6,))]
    if isinstance(obj, PodAttachment):
        return [(pod_table, (False, True))]
    return []


def _remove_memif_socket(path: str) -> None:
    """The socket file and the pod's directory of a memif socket VPP has deleted (VPP
    25.10 leaves the file behind). Only a socket is removed, and only an empty directory;
    where VPP's /run is not ours to see, nothing is."""
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
        os.rmdir(os.path.dirname(path))
    except OSError as err:
        log.debug("memif socket %s: %s", path, err)


def _kernel_side_quiet(netns: str | None, interface: str) -> None:
    """Switch the kernel's IPv6 off on the veth end VPP takes over, so that only VPP
    answers neighbour discovery there (in VPP's namespace: `vpp_netns`)."""
    result = ensure_sysctls(netns, {f"net/ipv6/conf/{interface}/disable_ipv6": "1"})
    for refusal in result.refused:
        log.warning("%s (is vpp_netns VPP's namespace?)", refusal)


def _config(objects: Iterable[DataplaneObject]) -> NodeConfig:
    encap: IPv6Address | None = None
    parts: dict[str, list[Any]] = defaultdict(list)
    for obj in objects:
        if isinstance(obj, EncapSource):
            encap = obj.address
        elif isinstance(obj, PodAttachment):
            parts["pods"].append(obj)
        elif isinstance(obj, LocalSid):
            parts["local_sids"].append(obj)
        elif isinstance(obj, SrPolicy):
            parts["policies"].append(obj)
        elif isinstance(obj, Steering):
            parts["steerings"].append(obj)
        else:
            parts["routes"].append(obj)
    return NodeConfig(
        encap_source=encap,
        pods=frozenset(parts["pods"]),
        local_sids=frozenset(parts["local_sids"]),
        policies=frozenset(parts["policies"]),
        steerings=frozenset(parts["steerings"]),
        routes=frozenset(parts["routes"]),
    )


def _with_pods(config: NodeConfig, pods: Iterable[PodAttachment]) -> NodeConfig:
    return NodeConfig(
        encap_source=config.encap_source,
        pods=frozenset(pods),
        local_sids=config.local_sids,
        policies=config.policies,
        steerings=config.steerings,
        routes=config.routes,
    )


def _ordered(changes: list[Change]) -> list[Change]:
    """Pods that are ensured go first (SIDs and routes name their ports)."""
    pods = [c for c in changes if isinstance(c.obj, PodAttachment) and c.op is not Op.DELETE]
    rest = [c for c in changes if c not in pods]
    return pods + rest


__all__ = [
    "POD_LINK_LOCAL",
    "SUPPORTED_RELEASES",
    "ApplyError",
    "InvalidObject",
    "PodPort",
    "VppApiError",
    "VppBackend",
    "VppError",
    "VppUnavailable",
]
