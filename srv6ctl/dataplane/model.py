"""The node's dataplane as plain data: what render produces and what backends dump.

Every object is a frozen dataclass with normalised addresses (`ipaddress`), so equality,
hashing and diffing come for free, and `"FCBB::1"` and `"fcbb:0::1"` are one key. Each object
has a `key` that names *which* object it is (a SID, a BSID, a prefix); reconcile compares
the objects that share a key and replaces those whose values differ.

Nothing here knows about the kernel or VPP: the backends translate (a `SrPolicy` becomes
nexthops and a resilient group in the kernel, an `sr_policy_add` in VPP).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar, Protocol, TypeAlias, TypedDict, TypeGuard

IPv6Address = ipaddress.IPv6Address
IPv4Address = ipaddress.IPv4Address
IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network

MAIN_TABLE = 254
# Pods whose VPP port is a memif (`PodAttachment.interface_type`): VPP listens on
# <MEMIF_DIR>/<pod uid>/memif.sock, a directory the pod mounts (README, "memif pods").
MEMIF = "memif"
MEMIF_DIR = "/run/srv6ctl/memif"
# The node's own traffic to its own SIDs needs an input path (a seg6local route acts on
# input only): a veth pair inside the node, whose first end routes the locator back in
# through the second (README, "Host-network clients"). `Capabilities.host_loop` says a
# backend has it; render then routes the locator through it for locally made packets.
HOST_LOOP_DEVICE = "srv6lp0"
HOST_LOOP_PEER = "srv6lp1"
HOST_LOOP_GATEWAY = ipaddress.IPv6Address("fe80::5c")  # on HOST_LOOP_PEER
# sessionAffinity's longest timeout (Kubernetes validates timeoutSeconds to 1..86400).
MAX_AFFINITY = 86400


def v6(value: str | int | IPv6Address) -> IPv6Address:
    """Normalise anything address-like into an `IPv6Address` (rejects IPv4)."""
    return value if isinstance(value, IPv6Address) else IPv6Address(value)


def ip(value: str | int | IPAddress) -> IPAddress:
    if isinstance(value, IPv4Address | IPv6Address):
        return value
    return ipaddress.ip_address(value)


def net(value: str | IPNetwork) -> IPNetwork:
    if isinstance(value, ipaddress.IPv4Network | ipaddress.IPv6Network):
        return value
    return ipaddress.ip_network(value)


class Flavour(StrEnum):
    """RFC 8986 §4.16 flavours (the kernel has PSP since 6.x; USP/USD are VPP-only)."""

    PSP = "psp"
    USP = "usp"
    USD = "usd"


class EncapMode(StrEnum):
    """H.Encaps, H.Encaps.Red (no SRH for a single SID) or H.Insert."""

    ENCAP = "encap"
    ENCAP_RED = "encap.red"
    INSERT = "insert"


class RouteKind(StrEnum):
    UNICAST = "unicast"
    UNREACHABLE = "unreachable"  # ICMPv6 no route
    PROHIBIT = "prohibit"  # ICMPv6 administratively prohibited: a service with no endpoint
    BLACKHOLE = "blackhole"
    LOCAL = "local"  # delivered to this host's own stack (a host-network service endpoint)


# --- local SIDs -----------------------------------------------------------------------


@dataclass(frozen=True)
class LocalSid:
    """A SID this node instantiates; subclasses are the RFC 8986 behaviours."""

    behaviour: ClassVar[str] = ""
    sid: IPv6Address
    flavours: frozenset[Flavour] = frozenset()

    def __post_init__(self) -> None:
        object.__setattr__(self, "sid", v6(self.sid))
        object.__setattr__(self, "flavours", frozenset(Flavour(f) for f in self.flavours))

    @property
    def key(self) -> tuple[str, IPv6Address]:
        return ("localsid", self.sid)


@dataclass(frozen=True)
class CrossConnect(LocalSid):
    """A behaviour that hands the packet to a neighbour: `nexthop` on `interface`.

    End.X forwards the SRv6 packet itself; End.DX6/End.DX4 the decapsulated inner packet,
    whose family the nexthop has (`nexthop_version`)."""

    nexthop_version: ClassVar[int] = 6
    nexthop: IPAddress = IPv6Address("::")
    interface: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        nexthop = ip(self.nexthop)
        if nexthop.version != self.nexthop_version:
            raise ValueError(
                f"{self.behaviour} {self.sid}: nexthop {nexthop} is not IPv{self.nexthop_version}"
            )
        object.__setattr__(self, "nexthop", nexthop)


@dataclass(frozen=True)
class TableLookup(LocalSid):
    """A behaviour that looks the next destination up in `table`: the next segment (End.T)
    or the decapsulated inner packet (End.DT*), of the families `lookup_families`."""

    lookup_families: ClassVar[frozenset[int]] = frozenset({6})
    table: int = MAIN_TABLE


@dataclass(frozen=True)
class End(LocalSid):
    behaviour: ClassVar[str] = "End"


@dataclass(frozen=True)
class EndX(CrossConnect):
    """End with cross-connect to an IPv6 neighbour."""

    behaviour: ClassVar[str] = "End.X"


@dataclass(frozen=True)
class EndT(TableLookup):
    behaviour: ClassVar[str] = "End.T"


@dataclass(frozen=True)
class EndDX6(CrossConnect):
    """Decapsulate and cross-connect the inner IPv6 packet to a neighbour (a pod)."""

    behaviour: ClassVar[str] = "End.DX6"


@dataclass(frozen=True)
class EndDX4(CrossConnect):
    behaviour: ClassVar[str] = "End.DX4"
    nexthop_version: ClassVar[int] = 4
    nexthop: IPAddress = IPv4Address("0.0.0.0")


@dataclass(frozen=True)
class EndDT6(TableLookup):
    behaviour: ClassVar[str] = "End.DT6"


@dataclass(frozen=True)
class EndDT4(TableLookup):
    behaviour: ClassVar[str] = "End.DT4"
    lookup_families: ClassVar[frozenset[int]] = frozenset({4})


@dataclass(frozen=True)
class EndDT46(TableLookup):
    behaviour: ClassVar[str] = "End.DT46"
    lookup_families: ClassVar[frozenset[int]] = frozenset({4, 6})


BEHAVIOURS: Mapping[str, type[LocalSid]] = {
    cls.behaviour: cls for cls in (End, EndX, EndT, EndDX6, EndDX4, EndDT6, EndDT4, EndDT46)
}


# --- SR policies and steering ---------------------------------------------------------


@dataclass(frozen=True, order=True)
class SegmentList:
    segments: tuple[IPv6Address, ...]
    weight: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "segments", tuple(v6(s) for s in self.segments))
        if not self.segments:
            raise ValueError("a segment list needs at least one segment")
        if self.weight < 1:
            raise ValueError(f"segment list weight {self.weight} must be >= 1")


@dataclass(frozen=True)
class SrPolicy:
    """Headend policy: traffic steered to `bsid` is encapsulated along one of the lists.

    `segment_lists` is kept sorted so that two policies with the same lists compare equal
    whatever order render produced them in. An empty policy is not representable: VPP
    cannot hold one, and a service without endpoints gets a reject `Route` instead.
    """

    bsid: IPv6Address
    segment_lists: tuple[SegmentList, ...]
    encap_source: IPv6Address | None = None
    mode: EncapMode = EncapMode.ENCAP
    # sessionAffinity ClientIP: seconds a client's source address keeps the segment list
    # it was given (0: each flow is hashed on its own). The kernel remembers the choice
    # that long (nftables, kernel_affinity); VPP hashes the source address alone, which
    # holds while the lists do (vpp_sr_codec.held_policy says so).
    affinity: int = 0
    # e.g. "svc/default/web/v6": a label for telemetry, neither identity nor value, so it is
    # left out of equality: a backend cannot dump it back, and a restarted agent must not
    # replace every policy because its dump says owner="".
    owner: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "bsid", v6(self.bsid))
        if self.encap_source is not None:
            object.__setattr__(self, "encap_source", v6(self.encap_source))
        object.__setattr__(self, "mode", EncapMode(self.mode))
        if not self.segment_lists:
            raise ValueError(f"policy {self.bsid} has no segment list")
        object.__setattr__(self, "segment_lists", tuple(sorted(self.segment_lists)))
        if not 0 <= self.affinity <= MAX_AFFINITY:
            raise ValueError(
                f"policy {self.bsid}: affinity {self.affinity} s is not in 0..{MAX_AFFINITY}"
            )

    @property
    def key(self) -> tuple[str, IPv6Address]:
        return ("policy", self.bsid)


@dataclass(frozen=True)
class Steering:
    """Traffic to `prefix` (IPv6, or IPv4 for IPv4-in-SRv6) in `table` goes to policy `bsid`."""

    prefix: IPNetwork
    bsid: IPv6Address
    table: int = MAIN_TABLE

    def __post_init__(self) -> None:
        object.__setattr__(self, "prefix", net(self.prefix))
        object.__setattr__(self, "bsid", v6(self.bsid))

    @property
    def key(self) -> tuple[str, int, IPNetwork]:
        return ("steering", self.table, self.prefix)


# --- routes and pods ------------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    """A plain route: via a neighbour, onto an interface, or a reject/unreachable.

    A global next hop is resolved by the dataplane itself (the kernel reports whichever
    interface it chose, which render cannot know), so `interface` is dropped beside one:
    only a link-local next hop, ambiguous without its interface, keeps it.
    """

    prefix: IPNetwork
    via: IPAddress | None = None
    interface: str | None = None
    kind: RouteKind = RouteKind.UNICAST
    table: int = MAIN_TABLE

    def __post_init__(self) -> None:
        object.__setattr__(self, "prefix", net(self.prefix))
        if self.via is not None:
            object.__setattr__(self, "via", ip(self.via))
            if not self.via.is_link_local:
                object.__setattr__(self, "interface", None)
        object.__setattr__(self, "kind", RouteKind(self.kind))

    @property
    def key(self) -> tuple[str, int, IPNetwork]:
        return ("route", self.table, self.prefix)


PROTOCOLS = ("TCP", "UDP", "SCTP")  # a Rule's `protocol`, as Kubernetes spells them


@dataclass(frozen=True)
class Rule:
    """Policy routing ahead of the node's own lookups: packets to `destination` (and from
    `source`, and of `protocol` to destination `port`) are looked up in `table`.

    It is how traffic is steered by more than its destination address: a NodePort is a
    node's own address *and* a port (the rest of the node's traffic to that address must
    stay the node's), and `loadBalancerSourceRanges` admits a VIP's traffic by its source.
    The table holds what the matched packets get (a steering into a service's policy, or a
    reject route); a packet the table has no route for falls through to the next rule, as
    in ip-rule(8). No two rules of one plan match one packet (render keeps them apart:
    distinct node ports, distinct VIPs), so they need no order among themselves; the key is
    the match, and the table is the value.
    """

    destination: IPNetwork
    table: int
    protocol: str = ""  # "" (any), or one of PROTOCOLS
    port: int = 0  # destination port; 0: any (a port needs a protocol)
    source: IPNetwork | None = None
    iif: str = ""  # only packets that came in on this interface; "lo": the node's own

    def __post_init__(self) -> None:
        object.__setattr__(self, "destination", net(self.destination))
        if self.source is not None:
            object.__setattr__(self, "source", net(self.source))
            if self.source.version != self.destination.version:
                raise ValueError(
                    f"rule to {self.destination}: source {self.source} is of another family"
                )
        if self.protocol and self.protocol not in PROTOCOLS:
            raise ValueError(
                f"rule to {self.destination}: protocol {self.protocol!r} is not one of {PROTOCOLS}"
            )
        if not 0 <= self.port <= 65535 or (self.port and not self.protocol):
            raise ValueError(
                f"rule to {self.destination}: port {self.port} needs a protocol and 1..65535"
            )
        if self.table == MAIN_TABLE:
            raise ValueError(
                f"rule to {self.destination}: a rule sends packets to a table of its own, not main"
            )

    @property
    def key(self) -> tuple[str, IPNetwork, IPNetwork | None, str, int, str]:
        return ("rule", self.destination, self.source, self.protocol, self.port, self.iif)


@dataclass(frozen=True, order=True)
class PortMap:
    """A stateless port rewrite in the node's own stack, for a Service's host-network
    endpoint on this node (kube-apiserver behind the `kubernetes` Service: port 443,
    target 6443): what arrives for `address`:`port` (the ClusterIP, delivered locally by
    End.DT6 `L::7`) goes to `target`, and the replies from `target` leave from `port`. A
    pod endpoint rewrites in its own namespace (`PodAttachment.port_maps`); the node's
    stack is the host-network endpoint's.
    """

    protocol: str  # one of PROTOCOLS
    address: IPAddress
    port: int
    target: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "address", ip(self.address))
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"port map {self.protocol!r}: not one of {PROTOCOLS}")
        for value in (self.port, self.target):
            if not 0 < value < 65536:
                raise ValueError(f"port map to {self.address}: port {value} is not 1..65535")

    @property
    def key(self) -> tuple[str, str, IPAddress, int]:
        return ("portmap", self.protocol, self.address, self.port)


@dataclass(frozen=True, order=True)
class Translation:
    """A Service frontend a client pod translates itself: its own new connections to
    `address` (the ClusterIP) `protocol`/`port` are DNATed, in its own namespace, to one
    of `targets` ((address, port), sorted), kept per client for `affinity` seconds when
    non-zero (sessionAffinity ClientIP).

    Only for endpoints outside the cluster (neither a pod nor a node): nothing there can
    hold the ClusterIP, so no SRv6 policy can deliver the packet unchanged, and the one
    NAT the Service needs lives with the client that opened the connection (podnet), not
    on any node. As a node-level object (`NodeConfig.translations`) it is the same for the
    node's own stack, whose connections are its host-network clients'; where that stack
    sits behind VPP (its host interconnect) also for its own NodePorts, translated to the
    ClusterIP (`address` a node address, one target: render `_own_node_ports`).

    Without `targets` the Service has no endpoint at all: the client's connections are
    refused where they start (a TCP reset, else ICMP port unreachable: ECONNREFUSED, as
    kube-proxy's REJECT), before the route's PROHIBIT could answer "administratively
    prohibited" (EACCES) — which stays for whatever no client translates (a VPP node's
    host-network clients, other nodes' traffic).
    """

    protocol: str  # one of PROTOCOLS
    address: IPAddress
    port: int
    targets: tuple[tuple[IPAddress, int], ...]
    affinity: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "address", ip(self.address))
        targets = tuple(sorted((ip(a), int(p)) for a, p in self.targets))
        object.__setattr__(self, "targets", targets)
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"translation {self.protocol!r}: not one of {PROTOCOLS}")
        for address, port in ((self.address, self.port), *targets):
            if not 0 < port < 65536:
                raise ValueError(f"translation of {self.address}: port {port} is not 1..65535")
            if address.version != self.address.version:
                raise ValueError(f"translation of {self.address}: {address} is another family")
        if not 0 <= self.affinity <= MAX_AFFINITY:
            raise ValueError(
                f"translation of {self.address}: affinity {self.affinity} s is not in "
                f"0..{MAX_AFFINITY}"
            )
        if self.affinity and not targets:
            raise ValueError(f"translation of {self.address}: affinity without a target")

    @property
    def key(self) -> tuple[str, str, IPAddress, int]:
        return ("translation", self.protocol, self.address, self.port)


@dataclass(frozen=True)
class PodAttachment:
    """A pod's interface as the node sees it: the node-side end and the pod's addresses.

    `service_addresses` are ClusterIPs added to the pod's loopback while it is an endpoint;
    `port_maps` are stateless (protocol, ClusterIP, service port, target port) rewrites in
    the pod: keyed by the ClusterIP too, so two services mapping one port differently, and
    traffic to the pod's own address, never share a rewrite. `node_ports` are (protocol, IP
    version, nodePort, target port): what arrives for an address that is not the pod's
    own (a node's, through a NodePort) is DNATed to the pod's address of that version and
    the target port, in the pod's own namespace (podnet). `service_ports` are the
    (protocol, VIP, service port) the pod serves: anything else sent to one of its VIPs is
    rejected, as kube-proxy rejects a ClusterIP's other ports; the VIPs with a UDP port
    among them (`udp_addresses`) the pod DNATs UDP to its own address, so that a UDP
    server's reply leaves from the VIP (podnet). `translations` are the Services
    with endpoints outside the cluster, which the pod DNATs its own connections to
    (`Translation`): every pod on the node gets the same set.

    `interface_type` "memif" (VPP only) makes the pod's port a memif in IP mode, VPP the
    master listening on `memif_socket`: a CNF whose own data plane holds the pod's
    addresses; "" is the backend's usual port (af_packet on the veth, or a tap).
    """

    interface: str  # node-side interface name (veth peer / VPP interface tag)
    pod: str  # "namespace/name"
    netns: str  # the pod's network namespace path
    container_interface: str = "eth0"
    addresses: frozenset[ipaddress.IPv4Interface | ipaddress.IPv6Interface] = frozenset()
    service_addresses: frozenset[IPAddress] = frozenset()
    port_maps: frozenset[tuple[str, IPAddress, int, int]] = frozenset()
    node_ports: frozenset[tuple[str, int, int, int]] = frozenset()
    translations: frozenset[Translation] = frozenset()
    service_ports: frozenset[tuple[str, IPAddress, int]] = frozenset()
    interface_type: str = ""  # "" or MEMIF
    memif_socket: str = ""  # with MEMIF: the socket VPP listens on

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "addresses", frozenset(ipaddress.ip_interface(a) for a in self.addresses)
        )
        object.__setattr__(
            self, "service_addresses", frozenset(ip(a) for a in self.service_addresses)
        )
        object.__setattr__(
            self,
            "service_ports",
            frozenset((proto, ip(addr), port) for proto, addr, port in self.service_ports),
        )
        object.__setattr__(
            self,
            "port_maps",
            frozenset(
                (proto, ip(addr), port, target) for proto, addr, port, target in self.port_maps
            ),
        )
        object.__setattr__(self, "node_ports", frozenset(self.node_ports))

    @property
    def key(self) -> tuple[str, str]:
        return ("pod", self.interface)

    @property
    def udp_addresses(self) -> frozenset[IPAddress]:
        """The VIPs the pod serves a UDP port of."""
        return frozenset(vip for proto, vip, _ in self.service_ports if proto == "UDP")

    def own_addresses(self) -> dict[int, IPAddress]:
        """IP version → the pod's own address of it: where its DNATs send what they take."""
        return {a.version: a.ip for a in self.addresses}


def memif_socket_path(pod_uid: str, directory: str = MEMIF_DIR) -> str:
    """Where VPP listens for a memif pod: a directory per pod, so that the pod can mount
    its own (hostPath + subPathExpr by the pod's UID) and see no other pod's socket."""
    if not pod_uid or "/" in pod_uid or pod_uid in (".", ".."):
        raise ValueError(f"pod UID {pod_uid!r}: not usable as a directory name")
    return f"{directory}/{pod_uid}/memif.sock"


class PodInterfaceFields(TypedDict, total=False):
    interface_type: str
    memif_socket: str


def pod_interface_fields(interface_type: str, pod_uid: str) -> PodInterfaceFields:
    """The `PodAttachment` fields for a pod's requested interface type (its annotation):
    a memif and its socket, or nothing (the backend's usual port; also for a type this
    version does not know, or a pod without a UID)."""
    if interface_type != MEMIF or not pod_uid:
        return {}
    return {"interface_type": MEMIF, "memif_socket": memif_socket_path(pod_uid)}


@dataclass(frozen=True)
class EncapSource:
    """The node's default SRv6 encapsulation source, for policies that set none.

    Kernel `ip sr tunsrc`, VPP `sr_set_encap_source`. It lives in `NodeConfig.encap_source`;
    reconcile turns it into this object so that a plan can set, change or clear it like any
    other object.
    """

    address: IPv6Address

    def __post_init__(self) -> None:
        object.__setattr__(self, "address", v6(self.address))

    @property
    def key(self) -> tuple[str]:
        return ("encap_source",)


DataplaneObject: TypeAlias = (
    LocalSid
    | SrPolicy
    | Steering
    | Route
    | Rule
    | PortMap
    | Translation
    | PodAttachment
    | EncapSource
)
Slot: TypeAlias = tuple[int, IPNetwork]


# --- the kinds, declared once ---------------------------------------------------------


def _no_slot(obj: Any) -> Slot | None:
    return None


@dataclass(frozen=True)
class ObjectKind:
    """One kind of dataplane object: what every layer needs to know of it, said here only.

    `refers_to` names the kinds its objects point at (a steering names a policy's BSID, a
    local SID or route a pod's interface); `KINDS` lists the kinds so that each refers only
    to kinds before it, which is the order objects are created in (and deleted against).
    `slot` is the FIB entry `(table, prefix)` an object occupies, if any: in both dataplanes
    a route, a steering and a local SID (a route for `sid/128` in the main table) are FIB
    entries of one table, so two of them cannot hold one prefix at once. `field` is the
    `NodeConfig` attribute holding them ("" for the one encap source, `encap_source`).
    """

    name: str
    model: type
    field: str
    refers_to: tuple[str, ...] = ()
    slot: Callable[[Any], Slot | None] = _no_slot
    dumped: bool = True  # False: no backend can read the objects back whole (see POD)

    def __str__(self) -> str:
        return self.name


def _route_slot(obj: Route | Steering) -> Slot:
    return (obj.table, obj.prefix)


def _sid_slot(obj: LocalSid) -> Slot:
    return (MAIN_TABLE, ipaddress.IPv6Network(obj.sid))


ENCAP_SOURCE = ObjectKind("EncapSource", EncapSource, "")
# A pod's attachment is not read back: its pod side (loopback ClusterIPs, port rewrites)
# lives in the pod's own netns, and VPP's port keeps no record of the pod's name or
# services. So reconcile takes pods as last applied, and applying a pod is an *ensure*: it
# reads what the pod has and writes only what lacks (a full resync re-applies each one).
POD = ObjectKind("PodAttachment", PodAttachment, "pods", dumped=False)
LOCAL_SID = ObjectKind("LocalSid", LocalSid, "local_sids", ("PodAttachment",), _sid_slot)
POLICY = ObjectKind("SrPolicy", SrPolicy, "policies", ("EncapSource",))
STEERING = ObjectKind("Steering", Steering, "steerings", ("SrPolicy",), _route_slot)
ROUTE = ObjectKind("Route", Route, "routes", ("PodAttachment",), _route_slot)
# A rule names a table, not an object; it comes last so that it is created once the
# steerings and routes it sends packets to are there, and deleted before them.
RULE = ObjectKind("Rule", Rule, "rules", ("Steering", "Route"))
# Refers to nothing: a rewrite of packets the node's local routes deliver.
PORT_MAP = ObjectKind("PortMap", PortMap, "port_maps")
# Refers to nothing: a rewrite of the node's own connections (the route and rule that let
# their lookup succeed are plain objects of their own).
TRANSLATION = ObjectKind("Translation", Translation, "translations")

# Dependency order: a kind refers only to kinds before it.
KINDS: tuple[ObjectKind, ...] = (
    ENCAP_SOURCE,
    POD,
    LOCAL_SID,
    POLICY,
    STEERING,
    ROUTE,
    RULE,
    PORT_MAP,
    TRANSLATION,
)
RANK: Mapping[ObjectKind, int] = {kind: rank for rank, kind in enumerate(KINDS)}
_KIND_OF_TYPE: dict[type, ObjectKind] = {
    **{kind.model: kind for kind in KINDS},
    **{behaviour: LOCAL_SID for behaviour in BEHAVIOURS.values()},
}


def _check_order(kinds: tuple[ObjectKind, ...]) -> None:
    """A kind may refer only to kinds before it (plan creates in this order)."""
    for rank, kind in enumerate(kinds):
        earlier = {k.name for k in kinds[:rank]}
        if not set(kind.refers_to) <= earlier:
            raise TypeError(f"{kind} refers to a kind after it in KINDS")


_check_order(KINDS)


def is_pod(obj: object) -> TypeGuard[PodAttachment]:
    """`kind_of(obj) is POD`, for the type checker too."""
    return _KIND_OF_TYPE.get(type(obj)) is POD


def kind_of(obj: object) -> ObjectKind:
    """The kind of a dataplane object (a dict lookup: plans of 100,000 objects ask)."""
    try:
        return _KIND_OF_TYPE[type(obj)]
    except KeyError:
        raise TypeError(f"not a dataplane object: {obj!r}") from None


@dataclass(frozen=True)
class NodeConfig:
    """A node's complete dataplane state (desired, from render; actual, from `dump`)."""

    encap_source: IPv6Address | None = None
    pods: frozenset[PodAttachment] = frozenset()
    local_sids: frozenset[LocalSid] = frozenset()
    policies: frozenset[SrPolicy] = frozenset()
    steerings: frozenset[Steering] = frozenset()
    routes: frozenset[Route] = frozenset()
    rules: frozenset[Rule] = frozenset()
    port_maps: frozenset[PortMap] = frozenset()
    translations: frozenset[Translation] = frozenset()

    def __post_init__(self) -> None:
        if self.encap_source is not None:
            object.__setattr__(self, "encap_source", v6(self.encap_source))
        for kind in KINDS:
            if kind.field:
                object.__setattr__(self, kind.field, frozenset(getattr(self, kind.field)))

    def objects(self) -> Iterable[DataplaneObject]:
        """Every object but the encap source (a field of its own), kind by kind."""
        for kind in KINDS:
            if kind.field:
                yield from getattr(self, kind.field)

    @classmethod
    def of(
        cls, objects: Iterable[DataplaneObject], encap_source: IPv6Address | None = None
    ) -> NodeConfig:
        """A NodeConfig holding `objects`, sorted into their kinds (an EncapSource among
        them sets the encap source)."""
        parts: dict[str, list[DataplaneObject]] = {k.field: [] for k in KINDS if k.field}
        for obj in objects:
            field_name = kind_of(obj).field
            if field_name:
                parts[field_name].append(obj)
            else:
                assert isinstance(obj, EncapSource)
                encap_source = obj.address
        return cls(encap_source=encap_source, **parts)  # type: ignore[arg-type]

    def by_key(self) -> dict[Any, DataplaneObject]:
        return {obj.key: obj for obj in self.objects()}


# --- changes and the backend protocol -------------------------------------------------


class Op(StrEnum):
    ADD = "add"
    DELETE = "delete"
    REPLACE = "replace"


@dataclass(frozen=True)
class Change:
    """One step of a plan: `old` is None for ADD, `new` is None for DELETE."""

    op: Op
    old: DataplaneObject | None = None
    new: DataplaneObject | None = None

    @property
    def obj(self) -> DataplaneObject:
        target = self.new if self.new is not None else self.old
        assert target is not None
        return target

    @property
    def kind(self) -> str:
        return type(self.obj).__name__


@dataclass(frozen=True)
class Counters:
    packets: int = 0
    bytes: int = 0
    errors: int = 0


@dataclass(frozen=True)
class InterfaceCounters:
    """A pod interface's counters from the pod's point of view (receive = to the pod)."""

    receive_packets: int = 0
    receive_bytes: int = 0
    receive_drops: int = 0
    transmit_packets: int = 0
    transmit_bytes: int = 0
    transmit_drops: int = 0


@dataclass(frozen=True)
class Capabilities:
    """What a backend can program, probed once at start so render can choose."""

    behaviours: frozenset[str] = frozenset()
    flavours: frozenset[Flavour] = frozenset()
    encap_modes: frozenset[EncapMode] = frozenset()
    resilient_groups: bool = False
    sid_counters: bool = False
    rules: bool = False  # `Rule`s (kernel 4.17+: ip rules by protocol and port; VPP: classify)
    host_loop: bool = False  # HOST_LOOP_DEVICE is there (the kernel backend makes it)
    affinity: bool = False  # `SrPolicy.affinity` (kernel: nftables and fwmark rules; VPP)
    port_maps: bool = False  # `PortMap`s (the kernel backend: nftables in the node's stack)
    translations: bool = False  # `Translation`s of the node's own connections (kernel: NAT)
    # A route of kind LOCAL hands what it carries to the node's kernel (VPP: its punt to
    # the host interconnect), whose translation table refuses what it is told to refuse:
    # the route an endpoint-less Service's load balancer IPs take there to be refused.
    local_refusals: bool = False
    notes: tuple[str, ...] = field(default=())  # why something is missing, for humans


class Backend(Protocol):
    """A dataplane backend: the kernel (netlink) or VPP (vpp-papi)."""

    capabilities: Capabilities

    def dump(self) -> NodeConfig:
        """What the dataplane holds of ours (owned objects only)."""
        ...

    def as_held(self, desired: NodeConfig) -> NodeConfig:
        """`desired` as this backend would dump it once applied: what a dump is compared
        with. The kernel holds the model's weights (`desired` itself); VPP holds weights of
        its own for some policies (vpp_sr_codec.held_policy)."""
        ...

    def buckets(self, bsid: IPv6Address) -> Mapping[tuple[IPv6Address, ...], int]:
        """The load-balance buckets the dataplane really has for policy `bsid`, per segment
        list ({} without such a policy): the kernel's resilient group, VPP's load balance."""
        ...

    def apply(self, changes: Iterable[Change]) -> None:
        """Apply an ordered plan; raises after applying the prefix it could.

        A pod (`PodAttachment`) is the node side of its wiring: the kernel holds none (the
        CNI wiring owns the veth), VPP a port with its neighbours and host routes. Adding
        one that is there is an ensure (`POD`)."""
        ...

    def sweep_pods(self, keep: Collection[str]) -> list[str]:
        """Remove what this backend holds for pod interfaces not in `keep` (pods gone
        while the agent was away); returns their names."""
        ...

    def counters(self) -> Mapping[Any, Counters]:
        """Packet/byte counters keyed by object key (SIDs, policies, pods)."""
        ...

    def close(self) -> None: ...
