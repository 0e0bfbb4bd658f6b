"""The FD.io VPP backend: the node's NodeConfig programmed into VPP over its binary API.

`VppBackend(api_socket)` implements the `Backend` protocol of `model.py` for VPP 25.10
(`vpp_api.SUPPORTED_RELEASES`): it connects, reads VPP back as the model, applies plans,
and replays what VPP lost after a restart. What each model object becomes in VPP is in
the codec modules (`vpp_sr_codec`: local SIDs, policies, steerings; `vpp_fib_codec`:
tables and routes; `vpp_interface_codec`: ports; `vpp_classify_codec`: rules as
classifier sessions, `vpp_rule_codec` as ACLs and ABF policies, the older engine;
`vpp_packers`: the bulk messages' packers; `vpp_changes`: the handler of each kind;
`vpp_affinity`: the table of the policies with sessionAffinity); the socket, the CRC
check and pipelining are in `vpp_api`; pod ports in `vpp_pods`; rules in
`vpp_classify_rules` (`vpp_rules` for ABF); counters in `vpp_stats`; what it keeps of
VPP's interfaces and tables between calls in `vpp_interfaces` and `vpp_tables`.

Ownership. VPP has no owner mark on SR objects or routes, so:
- local SIDs, policies and steerings: all of VPP's are ours, or with `owned_prefixes`
  only those whose SID / BSID lies in one of them;
- routes: those the binary API added (FIB source API) in table 0 and in the tables we
  created (named `srv6ctl-<id>-ip6/ip4`), restricted to `owned_prefixes` when given. Routes
  an operator adds from VPP's startup config or CLI have the FIB source CLI and are never
  read or touched; pod host routes belong to their pod port (below), not to `routes`;
- interfaces: only those tagged `srv6ctl:` (`sw_interface_tag_add_del`);
- rules: the classifier tables whose miss_next_index is our mark, their sessions and
  the uplinks' input ACL naming their chain (`vpp_classify_codec`; with the ABF engine,
  the ACLs tagged `srv6ctl:rule:`, the ABF policies using them and their attachments),
  and in each rule's table (ours) the default route looked up again in table 0
  (`vpp_rule_codec`, "Falling through"; never read as a `Route`).

Pods. A `PodAttachment` is the *VPP side* of a pod: its port, with the port's addresses,
neighbours and host routes (`vpp_pods`). `apply` handles ADD/REPLACE as "make it so",
writing only what is missing, and DELETE as "remove it". `dump()` reports no
`PodAttachment`, like the kernel backend: a pod's name, namespace and service addresses
are not VPP state; `pod_ports()` lists the ports, `detach_pod()` removes one.
End.DX6/End.X/routes name interfaces by the pod's interface name or by VPP's own
interface name (an operator's uplink).

Hitless policies. VPP cannot remove a policy's last segment list and has no atomic list
swap, so a changed policy is edited in place with `sr_policy_mod`: new lists first, then
weight changes, then the old lists by their `sl_index` (`reconcile.segment_list_edits`):
at every moment it has at least one list, and new paths are live before old ones go.
`sr_policy_add`/`sr_policy_mod` do not return the new list's `sl_index`, so after an edit
the policy's lists are read again (one dump) the next time it is edited. Only a change of
mode (encap ↔ insert) deletes and re-creates a policy. VPP bakes the encap source into
each list when the list is made, so changing the node's source rebuilds every list that
used the old one (adds first, again).

sessionAffinity. A policy with `affinity` is made in a table of its own whose flow hash
is the client's address (`vpp_affinity`): made before the first such policy, deleted
after the last. VPP keeps no timeout, so any affinity is held as one value (`as_held`);
turning affinity on or off re-creates the policy in the other table (not hitless).

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
import logging
import os
import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import replace
from types import TracebackType
from typing import Any, Literal

from srv6ctl.dataplane.model import (
    ENCAP_SOURCE,
    MAIN_TABLE,
    POD,
    POLICY,
    PORT_MAP,
    RULE,
    TRANSLATION,
    Capabilities,
    Change,
    DataplaneObject,
    EncapMode,
    EncapSource,
    Flavour,
    IPNetwork,
    IPv4Address,
    IPv6Address,
    NodeConfig,
    ObjectKind,
    Op,
    PodAttachment,
    SrPolicy,
    is_pod,
    kind_of,
)
from srv6ctl.dataplane.reconcile import config_of, plan
from srv6ctl.dataplane.vpp_affinity import (
    AFFINITY_TABLE,
    may_empty_table,
    needs_table,
    policy_table,
)
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
from srv6ctl.dataplane.vpp_changes import change_requests
from srv6ctl.dataplane.vpp_classify_codec import CLASSIFY_MESSAGES
from srv6ctl.dataplane.vpp_classify_rules import ClassifyRules
from srv6ctl.dataplane.vpp_codec_base import ZERO6, InvalidObject
from srv6ctl.dataplane.vpp_fib_codec import (
    FIB_SOURCE_API,
    decode_route,
    flow_hash_5_tuple,
    vpp_table,
)
from srv6ctl.dataplane.vpp_host import (
    HOST_MESSAGES,
    HostInterconnect,
    HostPort,
    HostTranslations,
)
from srv6ctl.dataplane.vpp_interface_codec import pod_of_tag
from srv6ctl.dataplane.vpp_interfaces import Interfaces
from srv6ctl.dataplane.vpp_packers import FAST_PACKERS
from srv6ctl.dataplane.vpp_pods import (
    POD_LINK_LOCAL,
    PodInterfaceKind,
    PodPort,
    PodPorts,
    PortKind,
    is_pod_host_route,
    port_kind,
)
from srv6ctl.dataplane.vpp_rule_codec import RULE_MESSAGES
from srv6ctl.dataplane.vpp_rules import Rules
from srv6ctl.dataplane.vpp_sr_codec import (
    BEHAVIOURS,
    VppPolicy,
    buckets_command,
    decode_localsid,
    decode_policy,
    decode_steering,
    encap_source,
    held_policy,
    list_add,
    list_del,
    parse_buckets,
    parse_encap_source,
    policy_as_model,
)
from srv6ctl.dataplane.vpp_stats import (
    StatsSegment,
    localsid_counters,
    pod_counters,
    policy_counters,
)
from srv6ctl.dataplane.vpp_tables import Tables

log = logging.getLogger(__name__)

BULK = 1000  # changes in one apply above which the cycle collector is paused
EXTRA_MESSAGES = ("ip_route_lookup", "set_ip_flow_hash_v2")

CAPABILITY_NOTES = (
    "VPP has no End.DT46: IPv4 and IPv6 payloads need End.DT4 and End.DT6 SIDs",
    "PSP only for End and End.X; VPP's API has no USP/USD",
    "encap.red: VPP puts no SRH on a one-SID list, and the whole list in the SRH otherwise",
    "no resilient hashing: VPP's policy load-balance rehashes when lists change",
    "sessionAffinity ClientIP: by the client's address alone, without a timeout; a client "
    "keeps its segment list while the policy's lists stay (a list added or removed moves "
    "some clients)",
    "counters: per SID from sr_localsids_with_packet_stats_dump; per policy only with a "
    "stats socket (the steering routes' counters)",
)
RULE_NOTES = {
    "classify": (
        "rules (classifier sessions, the uplinks' input ACL): not for traffic from this "
        "node's pods to its own addresses; a packet the rule's table has no route for is "
        "looked up in the main table, not passed on to the next rule; a rule with a port "
        "misses IPv4 packets with options and IPv6 packets with extension headers",
    ),
    "abf": (
        "rules (ABF on the uplinks): not for traffic from this node's pods to its own "
        "addresses; a packet the rule's table has no route for is looked up in the main "
        "table, not passed on to the next rule; an SCTP rule with a port matches nothing "
        "(VPP's ACL plugin reads TCP and UDP ports only)",
    ),
}
# How rules are programmed: VPP's classifier (the default: O(1) per rule), or the ACL and
# ABF plugins (what this backend used before; its attach cost grows with the cube of the
# policies, README "VPP backend", and it is kept as the benchmark's reference).
RuleEngine = Literal["classify", "abf"]
NO_RULES = "no rules (NodePorts, loadBalancerSourceRanges): "
NO_HOST_TRANSLATIONS = (
    "host-network clients cannot reach Services whose endpoints are outside the cluster: "
)


class ApplyError(RuntimeError):
    """VPP refused some requests of a plan. What came before the first refusal was
    applied (and up to `window - 1` requests after it); a new dump shows exactly what."""

    def __init__(self, failures: Sequence[VppError | InvalidObject]) -> None:
        self.failures = tuple(failures)
        lines = "; ".join(str(f) for f in self.failures[:5])
        more = f" (+{len(self.failures) - 5} more)" if len(self.failures) > 5 else ""
        super().__init__(f"VPP refused {len(self.failures)} request(s): {lines}{more}")


def _no_port_maps(change: Change) -> None:
    """Refused (Capabilities.port_maps is False, so render makes none for VPP)."""
    raise InvalidObject(
        f"{change.obj}: VPP does not rewrite ports for the node's own stack (host-network "
        "endpoints whose port differs from the Service's)"
    )


def _no_translations(change: Change) -> None:
    """Refused without the host interconnect (Capabilities.translations is False then, so
    render makes none)."""
    raise InvalidObject(
        f"{change.obj}: this VPP node does not translate its own connections (no host "
        "interconnect, or its kernel has no nftables NAT)"
    )


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
        rule_engine: RuleEngine = "classify",
        host: HostInterconnect | None = None,
    ) -> None:
        kind = port_kind(pod_interface)
        self.rule_engine = rule_engine
        self.pod_table = pod_table
        pod_table_id = vpp_table(pod_table)
        link_local = IPv6Address(pod_link_local)
        gateway_v6 = None if pod_gateway_v6 is None else IPv6Address(pod_gateway_v6)
        gateway_v4 = None if pod_gateway_v4 is None else IPv4Address(pod_gateway_v4)
        self.owned_prefixes: tuple[IPNetwork, ...] | None = (
            None if owned_prefixes is None else tuple(owned_prefixes)
        )
        self.window = window
        messages = [*CORE_MESSAGES, *EXTRA_MESSAGES]
        messages += AF_PACKET_MESSAGES if kind == "af_packet" else TAP_MESSAGES
        messages += GATEWAY_MESSAGES
        if host is not None:
            messages += HOST_MESSAGES
        self.channel = VppChannel(
            api_socket,
            api_dir=api_dir,
            messages=messages,
            # ABF's also for the classifier: to find the rules an older agent left there.
            optional_messages=(
                *POLICY_SOURCE_MESSAGES,
                *MEMIF_MESSAGES,
                *RULE_MESSAGES,
                *(CLASSIFY_MESSAGES if rule_engine == "classify" else ()),
            ),
            client_name=client_name,
            timeout=timeout,
            fast_packers=FAST_PACKERS,
        )
        self._lock = threading.RLock()
        self._stats = StatsSegment(stats_socket)
        self._boot_time: float | None = None
        self._retry_at = 0.0
        self._retry_delay = 0.1
        self._ever_connected = False
        self.reconnects = 0
        self.replays = 0
        # What VPP holds of ours, as far as we know: the last dump plus what we applied
        # since. Replayed after VPP restarts.
        self._known: dict[Any, DataplaneObject] = {}
        self._interfaces = Interfaces(self.channel)
        self._tables = Tables(self.channel)
        self._pods = PodPorts(
            self.channel,
            self._interfaces,
            self._tables,
            self._run,
            kind=kind,
            table_id=pod_table_id,
            link_local=link_local,
            gateway_v6=gateway_v6,
            gateway_v4=gateway_v4,
            vpp_netns=vpp_netns,
        )
        # The node's own stack behind VPP (`vpp_host`), set up on every connection.
        self._host = (
            None
            if host is None
            else HostPort(
                self.channel,
                self._interfaces,
                self._run,
                self._pods.gateway_steps,
                link_local,
                host,
                vpp_netns,
            )
        )
        self._host_translations = None if host is None else HostTranslations(vpp_netns)
        abf = Rules(self.channel, self._interfaces, self._tables, self._run)
        self._rules: Rules | ClassifyRules = abf
        self._abf_left: Rules | None = None  # an older agent's ABF rules, moved on connecting
        if rule_engine == "classify":
            self._rules = ClassifyRules(self.channel, self._interfaces, self._tables, self._call)
            self._abf_left = abf
        self._policies: dict[IPv6Address, VppPolicy] | None = None
        self._stale: set[IPv6Address] = set()
        self._node_source: IPv6Address | None = None
        # The kinds applied one by one, not pipelined: a pod port's creation returns the
        # sw_if_index later messages need, the encap source changes which policies need
        # rebuilding, and (ABF) a rule group's ACL creation returns the index its ABF
        # policy names. Every other kind is plain requests (vpp_changes.HANDLERS; a
        # classifier rule's are `ClassifyRules.requests`, pipelined with the rest).
        self._synchronous: dict[ObjectKind, Callable[[Change], None]] = {
            POD: self._pods.apply,
            ENCAP_SOURCE: self._apply_encap_source,
            PORT_MAP: _no_port_maps,
            TRANSLATION: _no_translations,
        }
        if isinstance(self._rules, Rules):
            self._synchronous[RULE] = self._rules.apply
        self._wait_connected(connect_timeout)
        # Probed on the first connection: whether VPP (and our definitions) can hold rules.
        missing = self._rules.missing()
        rules = missing is None
        notes: tuple[str, ...] = CAPABILITY_NOTES + (
            RULE_NOTES[rule_engine] if rules else (f"{NO_RULES}{missing}",)
        )
        unable = (
            "no host interconnect"
            if self._host_translations is None
            else self._host_translations.able()
        )
        if unable is None:
            assert self._host_translations is not None
            self._synchronous[TRANSLATION] = self._host_translations.apply
        else:
            self._host_translations = None
            notes += (f"{NO_HOST_TRANSLATIONS}{unable}",)
        self.capabilities = Capabilities(
            behaviours=BEHAVIOURS,
            flavours=frozenset({Flavour.PSP}),
            encap_modes=frozenset({EncapMode.ENCAP_RED, EncapMode.INSERT}),
            resilient_groups=False,
            sid_counters=True,
            rules=rules,
            affinity=True,
            translations=unable is None,
            local_refusals=unable is None,
            notes=notes,
        )

    # --- settings (the pod ones are kept by the pod ports) ----------------------------

    @property
    def pod_interface(self) -> PortKind:
        return self._pods.kind

    @property
    def pod_link_local(self) -> IPv6Address:
        return self._pods.link_local

    @property
    def pod_gateway_v6(self) -> IPv6Address | None:
        return self._pods.gateway_v6

    @property
    def pod_gateway_v4(self) -> IPv4Address | None:
        return self._pods.gateway_v4

    @property
    def vpp_netns(self) -> str | None:
        return self._pods.vpp_netns

    @property
    def stats_socket(self) -> str | None:
        return self._stats.socket

    # --- the Backend protocol ---------------------------------------------------------

    def dump(self) -> NodeConfig:
        with self._lock:
            self._ensure()
            if self._host is not None:
                # Each full read (the agent's resync) keeps the interconnect as VPP's
                # addresses say (an uplink addressed after VPP came up, a renumbered
                # node): reads only when nothing changed.
                self._host.ensure()
            return self._dump()

    def as_held(self, desired: NodeConfig) -> NodeConfig:
        """Policies with the weights and affinity VPP holds (`held_policy`), the rest as
        they are."""
        return replace(desired, policies=frozenset(held_policy(p) for p in desired.policies))

    def buckets(self, bsid: IPv6Address) -> dict[tuple[IPv6Address, ...], int]:
        """The buckets of the policy's load balance, per segment list, as VPP has them."""
        with self._lock:
            self._ensure()
            # The BSID's entry is in the table the policy was made in: table 0, or the
            # affinity table (asked second: a policy-wide dump would cost more).
            for table in (0, AFFINITY_TABLE):
                reply = self.channel.call("cli_inband", cmd=buckets_command(bsid, table))
                held = parse_buckets(str(reply.reply))
                if held:
                    return held
            return {}

    def apply(self, changes: Iterable[Change]) -> None:
        todo = list(changes)
        with self._lock:
            if not todo:
                return
            try:
                self._ensure()
            except VppUnavailable:
                if all(c.op is Op.DELETE and is_pod(c.obj) for c in todo):
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
        `stats_socket`); ("pod", interface) → InterfaceCounters (needs it too), from the
        pod's point of view (receive = what VPP sent to the pod)."""
        with self._lock:
            self._ensure()
            out: dict[Any, Any] = dict(localsid_counters(self.channel, self._owns_address))
            stats = self._stats.connected()
            if stats is not None:
                try:
                    out.update(policy_counters(self.channel, stats, self._owns_address))
                    out.update(pod_counters(stats, self._interfaces.load(refresh=True)))
                except Exception as err:  # a stale segment (VPP restarting): next scrape
                    log.warning("VPP stats segment: %s", err)
                    self._stats.forget()
            return out

    def close(self) -> None:
        with self._lock:
            self.channel.close()
            self._stats.disconnect()

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
            return self._pods.ports()

    def sweep_pods(self, keep: Collection[str]) -> list[str]:
        """Remove our pod ports whose interface is not in `keep` (GC)."""
        gone = sorted(set(self.pod_ports()) - set(keep))
        for interface in gone:
            self.detach_pod(interface)
        return gone

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
        self._boot_time = self._stats.boot_time()
        if previous_boot is not None and self._boot_time != previous_boot:
            log.warning("VPP restarted (boot time %s → %s)", previous_boot, self._boot_time)
        self._hash_without_flow_label()
        if self._host is not None:
            self._host.ensure()
        self._migrate_abf_rules()
        if self._known:
            self._replay()

    def _hash_without_flow_label(self) -> None:
        """Our policies' BSIDs live in the main table (fib_table 0; those with affinity in
        the affinity table, `vpp_affinity`), and VPP gives a policy's
        load-balance that table's flow-hash config when it makes the policy (VPP 25.10
        src/vnet/srv6/sr_policy_rewrite.c, update_lb). VPP's default hashes the IPv6 flow
        label, which Linux draws per connection and redraws on an RTO (sk_rethink_txhash):
        a NAT-free service connection would move to another backend. So the table hashes
        the 5-tuple, set before any policy is made (policies VPP made earlier keep their
        config). VPP has no API to read it back: the CLI says whether it is needed."""
        shown = str(self.channel.call("cli_inband", cmd="show ip6 fib table 0 summary").reply)
        if "flow hash:[" not in shown or "flowlabel" not in shown.split("]", 1)[0]:
            return
        request = flow_hash_5_tuple(0)
        try:
            self.channel.call(request.name, write=True, what=request.what, **request.fields)
        except VppError as err:
            log.warning("VPP keeps hashing the IPv6 flow label for SR policies: %s", err)

    def _migrate_abf_rules(self) -> None:
        """Rules an agent of the ABF engine left in VPP (its `srv6ctl:rule:` ACLs and their
        policies) become classifier sessions, then the ABF groups go: each rule is in
        the classifier before its ABF group is removed (make before break), and a dump
        after this reads them as the classifier's, so cleanup and reconcile see them."""
        abf = self._abf_left
        if abf is None or not abf.available or not self._rules.available:
            return
        left = abf.every_rule()
        if not left:
            return
        log.info("moving %d rule(s) from ABF to the classifier", len(left))
        # What VPP holds of the model does not change (the rules forwarded before, and do
        # after): `_known`, which the replay after this plans from, stays as it was.
        known = dict(self._known)
        try:
            self._execute([Change(Op.ADD, new=rule) for rule in left])
        except ApplyError as err:
            # The ABF groups keep forwarding; reconcile says what the classifier lacks.
            log.warning("rules left in ABF: the classifier refused them: %s", err)
            return
        finally:
            self._known = known
        abf.remove_all()

    def _replay(self) -> None:
        """Make VPP hold everything we know it held (after a reconnect)."""
        known = config_of(self._known.values())
        actual = self._dump()
        pods = known.pods
        self._known.update({pod.key: pod for pod in pods})
        changes = plan(self.as_held(known), replace(actual, pods=pods))
        changes += [Change(Op.ADD, new=pod) for pod in pods]  # ensure: writes only what lacks
        if changes:
            self.replays += 1
            log.info("replaying %d change(s) into VPP after reconnecting", len(changes))
            self._execute(_ordered(changes))

    def _forget_caches(self) -> None:
        self._interfaces.forget()
        self._tables.forget()
        self._rules.forget()
        self._policies = None
        self._stale.clear()
        self._stats.disconnect()

    # --- reading ----------------------------------------------------------------------

    def _dump(self) -> NodeConfig:
        interfaces = self._interfaces.load()
        pod_ports = {i for i, iface in interfaces.items() if pod_of_tag(iface.tag)}
        reply = self.channel.call("cli_inband", cmd="show sr encaps source addr")
        self._node_source = parse_encap_source(str(reply.reply))
        local_sids = []
        for details in self.channel.dump("sr_localsids_dump"):
            sid = decode_localsid(details, self._interfaces.model_name)
            if sid is not None and self._owns_address(sid.sid):
                local_sids.append(sid)
        policies = []
        for state in self._load_policies(refresh=True).values():
            policy = policy_as_model(state, self._node_source)
            if policy is not None:
                policies.append(policy)
        steerings = []
        for details in self.channel.dump("sr_steering_pol_dump"):
            st = decode_steering(details)
            if st is not None and self._owns_address(st.bsid):
                steerings.append(st)
        routes = []
        api_routes: dict[tuple[int, bool], list[Any]] = {}
        for table_id, ipv6 in sorted(self._tables.ours()):
            table = {"table_id": table_id, "is_ip6": ipv6, "name": ""}
            found = self.channel.dump("ip_route_v2_dump", src=FIB_SOURCE_API, table=table)
            api_routes[(table_id, ipv6)] = found
            for details in found:
                if is_pod_host_route(details.route, pod_ports):
                    continue  # part of its pod port, not of `routes`
                route = decode_route(details, self._interfaces.model_name)
                if route is not None and self._owns_prefix(route.prefix):
                    routes.append(route)
        config = NodeConfig(
            encap_source=self._node_source,
            local_sids=frozenset(local_sids),
            policies=frozenset(policies),
            steerings=frozenset(steerings),
            routes=frozenset(routes),
            rules=frozenset(
                self._rules.held(api_routes)
                if isinstance(self._rules, ClassifyRules)
                else self._rules.held()
            ),
            translations=frozenset(
                () if self._host_translations is None else self._host_translations.held()
            ),
        )
        pods = [obj for obj in self._known.values() if is_pod(obj)]
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

    def _load_policies(self, refresh: bool = False) -> dict[IPv6Address, VppPolicy]:
        if self._policies is None or refresh:
            v2 = {IPv6Address(d.bsid): d for d in self.channel.dump("sr_policies_v2_dump")}
            policies = {}
            for details in self.channel.dump("sr_policies_with_sl_index_dump"):
                bsid = IPv6Address(details.bsid)
                if self._owns_address(bsid):
                    policies[bsid] = decode_policy(details, v2.get(bsid))
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
        touched = {c.obj.bsid for c in changes if kind_of(c.obj) is POLICY}  # type: ignore[union-attr]
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
            created = self._tables.ensure(changes, self.pod_table, self._run)
            if isinstance(self._rules, ClassifyRules):
                self._rules.made_tables(created, changes)
            if needs_table(changes):
                try:
                    self._tables.ensure_affinity(self._run)
                except InvalidObject as err:
                    raise ApplyError([err]) from err
            for position, change in enumerate(changes):
                step = self._synchronous.get(kind_of(change.obj))
                if step is not None:
                    flush()
                    step(change)
                    self._record(change)
                    continue
                if isinstance(self._rules, ClassifyRules) and self._rules.reads(change):
                    flush()  # it reads its table's routes, which the batch may be changing
                try:
                    requests = self._requests(change)
                except InvalidObject as err:
                    flush()
                    raise ApplyError([err]) from err
                batch.extend(requests)
                owner.extend([position] * len(requests))
                queued.append(position)
            flush()
            if self._tables.release(changes, self._known.values(), self.pod_table, self._run):
                self._rules.forget()  # its rule groups' fallbacks were in those tables
            if may_empty_table(changes):
                self._tables.release_affinity(self._run)
        except (ApplyError, VppError, VppUnavailable):
            self._policies = None  # whatever happened, read the lists again
            self._interfaces.forget()
            self._rules.forget()
            self._tables.doubt()
            raise

    def _record(self, change: Change) -> None:
        if change.old is not None:
            self._known.pop(change.old.key, None)
        if change.new is not None:
            self._known[change.new.key] = change.new

    def _requests(self, change: Change) -> list[Request]:
        obj = change.obj
        if isinstance(obj, SrPolicy):  # edited in place: from what VPP holds of it
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
                elif held is not None and held.fib_table != policy_table(obj):
                    log.info(
                        "policy %s: affinity %s; re-creating it in table %d (not hitless)",
                        obj.bsid,
                        "on" if obj.affinity else "off",
                        policy_table(obj),
                    )
            return change_requests(change, self._interfaces.index, inventory, self._node_source)
        if isinstance(self._rules, ClassifyRules) and kind_of(obj) is RULE:
            return self._rules.requests(change)
        return change_requests(change, self._interfaces.index, {}, self._node_source)

    def _call(self, request: Request) -> Any:
        return self.channel.call(request.name, write=True, what=request.what, **request.fields)

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
        self._run([encap_source(address)])
        self._node_source = address
        # VPP bakes the source into each list when the list is made: setting it changes no
        # existing policy. Rebuild those that were following the node's old source.
        old_source = previous or ZERO6
        rebuild: list[Request] = []
        for state in self._load_policies(refresh=True).values():
            if not state.is_encap or state.encap_src != old_source:
                continue
            policy = policy_as_model(state, previous)
            if policy is None or policy.encap_source is not None:
                continue
            rebuild += [list_add(policy, sl) for sl in policy.segment_lists]
            rebuild += [list_del(state.bsid, sl) for sl in state.lists]
            self._stale.add(state.bsid)
        self._run(rebuild)


# --- helpers --------------------------------------------------------------------------


def _ordered(changes: list[Change]) -> list[Change]:
    """Pods that are ensured go first (SIDs and routes name their ports)."""
    pods = [c for c in changes if is_pod(c.obj) and c.op is not Op.DELETE]
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
