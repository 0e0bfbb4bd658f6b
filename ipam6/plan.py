"""The cluster address plan: its validated config, and pure functions from IDs to addresses.

Everything a node needs to know about addresses follows from two numbers: its node ID `N`
and, for a pod, its pod index `k` on that node. From the config (pod CIDRs, SID block,
locator length) these functions derive, with no I/O:

- node `N`'s locator `L = <sidBlock> + N` as a /locatorLength (`fcbb:bb00:N::/48`),
  its SIDs `L::1` (End), `L::6` (End.DT6), `L::4` (End.DT4);
- its pod prefixes: the `N`-th /nodePrefixLengthV6 of podCIDRv6 (and V4), gateway `::1`/`.1`;
- pod `k`'s addresses `prefix + k` and SIDs `L::1:k` (End.DX6) and `L::4:k` (End.DX4);
- service `j`'s binding SIDs in the service locator: `::6000:j`-style (IPv6 policy) and
  `::4000:j`-style (IPv4-in-SRv6 policy) — the family tag sits in the function's top nibble.

Each derivation has an inverse, so any address can be traced back to the node/pod/service
it belongs to (`srv6ctl trace` relies on that).

Node-local BSIDs. Node and pod policies need a BSID that is local to this node; they live in
the node's own locator with a *tag in the top nibble of the function* — the plan's SIDs
(`L::1`, `L::4`, `L::6`, `L::1:k`, `L::4:k`) all have a zero top nibble, so these can never
collide with them, and the shape matches the plan's service BSIDs (family tag on top):

    L::2000:<R>      function (0x2 << (bits-4)) | R            → [R::6]    (v6 to node R)
    L::3000:<R>      function (0x3 << (bits-4)) | R            → [R::4]    (v4 to node R)
    L::5<RRR>:<k>    function (0x5 << (bits-4)) | R << 16 | k  → [R::4:k]  (v4 to pod k on R)
    L::8000:<j>      function (0x8 << (bits-4)) | j            → service j's external v6
    L::9000:<j>      function (0x9 << (bits-4)) | j            → service j's external v4

with `bits` the plan's function bits (32 by default: `fcbb:bb00:1::2000:3`,
`fcbb:bb00:1::5003:2`). The per-pod form needs `R < 2**(bits - 20)` (4096 by default).
A service's external policy holds the endpoints its external traffic (load balancer IPs,
externalIPs) goes to when they are not the ones its ClusterIP uses: this node's own with
externalTrafficPolicy Local; every node's when internalTrafficPolicy Local narrows the
ClusterIP's. Service indexes fit the bits below the tag, as in the service locator.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

FIRST_POD_INDEX = 2  # index 0 is the prefix itself, 1 the node-side gateway
POD_DX6_FUNCTION = 0x1  # pod SIDs are L::<type>:<k>, k in the low 16 bits
POD_DX4_FUNCTION = 0x4
POD_INDEX_BITS = 16
SERVICE_FAMILY_V6 = 0x6
SERVICE_FAMILY_V4 = 0x4
END_FUNCTION = 0x1
DT6_FUNCTION = 0x6
DT4_FUNCTION = 0x4
HOST_FUNCTION = 0x7  # End.DT6 into the host-services table: host-network endpoints
NODE_POLICY_V6_TAG = 0x2  # node-local BSIDs: the tag in the function's top nibble
NODE_POLICY_V4_TAG = 0x3
POD_POLICY_V4_TAG = 0x5
SERVICE_EXTERNAL_V6_TAG = 0x8
SERVICE_EXTERNAL_V4_TAG = 0x9


class InvalidConfig(ValueError):
    """A config that must stop start-up; the message names the field and the reason."""


class PoolExhausted(RuntimeError):
    """No free ID/address is left in a pool; the message names the pool."""


# --- the config model -----------------------------------------------------------------


def _network(value: Any, field: str, version: int) -> IPv4Network | IPv6Network:
    """Parse a CIDR strictly, with a message naming the field (pydantic's is generic)."""
    family = "IPv6" if version == 6 else "IPv4"
    if isinstance(value, IPv4Network | IPv6Network):
        network: IPv4Network | IPv6Network = value
    else:
        text = str(value).strip()
        try:
            network = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise ValueError(f"{field} {text!r} is not an IP network in CIDR notation") from None
        if network.version == version and ipaddress.ip_interface(text).ip != network[0]:
            raise ValueError(
                f"{field} {text} has host bits set (did you mean {network.with_prefixlen}?)"
            )
    if network.version != version:
        raise ValueError(f"{field} {network} is not an {family} network")
    return network


class AddressPlanConfig(BaseModel):
    """The `addressPlan` section of the config (camelCase keys, as a ConfigMap holds them)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)

    pod_cidr_v6: IPv6Network = Field(alias="podCIDRv6")
    pod_cidr_v4: IPv4Network | None = Field(default=None, alias="podCIDRv4")
    node_prefix_length_v6: int = Field(default=64, alias="nodePrefixLengthV6")
    node_prefix_length_v4: int = Field(default=24, alias="nodePrefixLengthV4")
    service_cidr_v6: IPv6Network | None = Field(default=None, alias="serviceCIDRv6")
    service_cidr_v4: IPv4Network | None = Field(default=None, alias="serviceCIDRv4")
    sid_block: IPv6Network = Field(
        default=IPv6Network("fcbb:bb00::/32"), alias="sidBlock", validate_default=True
    )
    locator_length: int = Field(default=48, alias="locatorLength")
    function_bits: int = Field(default=32, alias="functionBits")
    service_bsid_locator: IPv6Network | None = Field(default=None, alias="serviceBsidLocator")
    max_nodes: int = Field(default=1000, alias="maxNodes")

    @field_validator(
        "pod_cidr_v6", "service_cidr_v6", "sid_block", "service_bsid_locator", mode="before"
    )
    @classmethod
    def _v6(cls, value: Any, info: Any) -> Any:
        if value is None:
            return None
        return _network(value, _ALIASES[info.field_name], 6)

    @field_validator("pod_cidr_v4", "service_cidr_v4", mode="before")
    @classmethod
    def _v4(cls, value: Any, info: Any) -> Any:
        if value is None:
            return None
        return _network(value, _ALIASES[info.field_name], 4)

    def resolve(self) -> AddressPlan:
        """Check the cross-field rules and return the pure, derived plan."""
        return AddressPlan.from_config(self)


_ALIASES = {name: f.alias or name for name, f in AddressPlanConfig.model_fields.items()}


def _overlap(
    named: list[tuple[str, IPv4Network | IPv6Network | None]],
) -> tuple[str, str] | None:
    present = [(name, n) for name, n in named if n is not None]
    for i, (name_a, a) in enumerate(present):
        for name_b, b in present[i + 1 :]:
            if a.version == b.version and a.overlaps(b):
                return (f"{name_a} {a}", f"{name_b} {b}")
    return None


# --- the resolved plan ----------------------------------------------------------------


@dataclass(frozen=True)
class PodAddresses:
    """Everything derived for pod index `k` on node `N`."""

    node_id: int
    index: int
    ipv6: IPv6Address
    ipv4: IPv4Address | None
    sid_dx6: IPv6Address
    sid_dx4: IPv6Address | None


@dataclass(frozen=True)
class AddressPlan:
    """The validated plan, with pure derivations. Build it with `from_config`."""

    pod_cidr_v6: IPv6Network
    pod_cidr_v4: IPv4Network | None
    node_prefix_length_v6: int
    node_prefix_length_v4: int
    service_cidr_v6: IPv6Network | None
    service_cidr_v4: IPv4Network | None
    sid_block: IPv6Network
    locator_length: int
    function_bits: int
    service_bsid_locator: IPv6Network
    max_nodes: int

    # --- construction and validation -------------------------------------------------

    @classmethod
    def from_config(cls, config: AddressPlanConfig) -> AddressPlan:
        c = config
        a = _ALIASES
        if c.max_nodes < 1:
            raise InvalidConfig(f"{a['max_nodes']} {c.max_nodes} must be at least 1")
        # SID layout: block | node ID | ... | function bits.
        if not c.sid_block.prefixlen < c.locator_length <= 128 - c.function_bits:
            raise InvalidConfig(
                f"{a['locator_length']} /{c.locator_length} does not fit {a['sid_block']} "
                f"{c.sid_block} with {a['function_bits']} {c.function_bits}: it must be longer "
                f"than /{c.sid_block.prefixlen} and at most /{128 - c.function_bits}"
            )
        if not POD_INDEX_BITS + 4 <= c.function_bits <= 64:
            raise InvalidConfig(
                f"{a['function_bits']} {c.function_bits} must be between {POD_INDEX_BITS + 4} "
                f"(room for the pod SIDs L::<type>:<k>) and 64"
            )
        node_id_bits = c.locator_length - c.sid_block.prefixlen
        _require_room(
            a["locator_length"],
            f"/{c.locator_length} locators in {c.sid_block}",
            node_id_bits,
            c.max_nodes,
        )

        # Pod prefixes: one per node, index = node ID (so node 3 has fd00:10:0:3::/64).
        _check_node_prefix(
            a["node_prefix_length_v6"],
            c.node_prefix_length_v6,
            a["pod_cidr_v6"],
            c.pod_cidr_v6,
            max_len=120,
        )
        _require_room(
            a["node_prefix_length_v6"],
            f"/{c.node_prefix_length_v6} node prefixes in {c.pod_cidr_v6}",
            c.node_prefix_length_v6 - c.pod_cidr_v6.prefixlen,
            c.max_nodes,
        )
        if c.pod_cidr_v4 is not None:
            _check_node_prefix(
                a["node_prefix_length_v4"],
                c.node_prefix_length_v4,
                a["pod_cidr_v4"],
                c.pod_cidr_v4,
                max_len=29,
            )
            _require_room(
                a["node_prefix_length_v4"],
                f"/{c.node_prefix_length_v4} node prefixes in {c.pod_cidr_v4}",
                c.node_prefix_length_v4 - c.pod_cidr_v4.prefixlen,
                c.max_nodes,
            )
        elif c.service_cidr_v4 is not None:
            raise InvalidConfig(
                f"{a['service_cidr_v4']} {c.service_cidr_v4} is set but {a['pod_cidr_v4']} is "
                "not: IPv4 services need IPv4 pods (dual-stack needs both)"
            )

        bsid_locator = c.service_bsid_locator
        if bsid_locator is None:
            bsid_locator = IPv6Network((int(c.sid_block.network_address), c.locator_length))
        elif bsid_locator.prefixlen != c.locator_length:
            raise InvalidConfig(
                f"{a['service_bsid_locator']} {bsid_locator} must be a "
                f"/{c.locator_length} like every locator ({a['locator_length']})"
            )
        if bsid_locator.subnet_of(c.sid_block):
            node_of_bsid = _field(
                int(bsid_locator.network_address), 128 - c.locator_length, node_id_bits
            )
            if 1 <= node_of_bsid <= c.max_nodes:
                raise InvalidConfig(
                    f"{a['service_bsid_locator']} {bsid_locator} is the locator of node ID "
                    f"{node_of_bsid}, inside the node range 1..{c.max_nodes} ({a['max_nodes']})"
                )

        clash = _overlap(
            [
                (a["pod_cidr_v6"], c.pod_cidr_v6),
                (a["service_cidr_v6"], c.service_cidr_v6),
                (a["sid_block"], c.sid_block),
                (a["pod_cidr_v4"], c.pod_cidr_v4),
                (a["service_cidr_v4"], c.service_cidr_v4),
            ]
        ) or _overlap(
            [
                (a["service_bsid_locator"], bsid_locator),
                (a["pod_cidr_v6"], c.pod_cidr_v6),
                (a["service_cidr_v6"], c.service_cidr_v6),
            ]
        )
        if clash:
            raise InvalidConfig(f"{clash[0]} overlaps {clash[1]}")

        return cls(
            pod_cidr_v6=c.pod_cidr_v6,
            pod_cidr_v4=c.pod_cidr_v4,
            node_prefix_length_v6=c.node_prefix_length_v6,
            node_prefix_length_v4=c.node_prefix_length_v4,
            service_cidr_v6=c.service_cidr_v6,
            service_cidr_v4=c.service_cidr_v4,
            sid_block=c.sid_block,
            locator_length=c.locator_length,
            function_bits=c.function_bits,
            service_bsid_locator=bsid_locator,
            max_nodes=c.max_nodes,
        )

    @classmethod
    def from_mapping(cls, data: dict[str, Any]) -> AddressPlan:
        """Validate camelCase data (a YAML file's `addressPlan`); InvalidConfig on error."""
        try:
            config = AddressPlanConfig.model_validate(data)
        except ValidationError as err:
            raise InvalidConfig(describe_validation_error(err, "addressPlan")) from None
        return config.resolve()

    # --- sizes ---------------------------------------------------------------------

    @property
    def dual_stack(self) -> bool:
        return self.pod_cidr_v4 is not None

    @property
    def node_ids(self) -> range:
        return range(1, self.max_nodes + 1)

    @property
    def pod_indexes(self) -> range:
        """Pod indexes usable on every node: bounded by the v6 prefix, the v4 prefix
        (its last address is the broadcast) and the 16 bits of the pod SID."""
        last = min(2**POD_INDEX_BITS - 1, 2 ** (128 - self.node_prefix_length_v6) - 1)
        if self.pod_cidr_v4 is not None:
            last = min(last, 2 ** (32 - self.node_prefix_length_v4) - 2)
        return range(FIRST_POD_INDEX, last + 1)

    @property
    def service_indexes(self) -> range:
        return range(1, 2 ** (self.function_bits - 4))

    # --- nodes ---------------------------------------------------------------------

    def _check_node(self, node_id: int) -> None:
        if node_id not in self.node_ids:
            raise ValueError(f"node ID {node_id} is outside 1..{self.max_nodes}")

    def locator(self, node_id: int) -> IPv6Network:
        self._check_node(node_id)
        base = int(self.sid_block.network_address) | (node_id << (128 - self.locator_length))
        return IPv6Network((base, self.locator_length))

    def _function(self, node_id: int, function: int) -> IPv6Address:
        return IPv6Address(int(self.locator(node_id).network_address) | function)

    def end_sid(self, node_id: int) -> IPv6Address:
        return self._function(node_id, END_FUNCTION)

    def dt6_sid(self, node_id: int) -> IPv6Address:
        return self._function(node_id, DT6_FUNCTION)

    def dt4_sid(self, node_id: int) -> IPv6Address:
        return self._function(node_id, DT4_FUNCTION)

    def host_sid(self, node_id: int) -> IPv6Address:
        """`L::7`: decapsulate into the node's own stack, for host-network endpoints."""
        return self._function(node_id, HOST_FUNCTION)

    def node_of_sid(self, sid: IPv6Address) -> int | None:
        """The node whose locator holds `sid`, or None (not ours, or the service locator)."""
        if sid not in self.sid_block:
            return None
        node_id = _field(
            int(sid), 128 - self.locator_length, self.locator_length - self.sid_block.prefixlen
        )
        return node_id if node_id in self.node_ids else None

    def pod_prefix_v6(self, node_id: int) -> IPv6Network:
        self._check_node(node_id)
        size = 128 - self.node_prefix_length_v6
        base = int(self.pod_cidr_v6.network_address) | (node_id << size)
        return IPv6Network((base, self.node_prefix_length_v6))

    def pod_prefix_v4(self, node_id: int) -> IPv4Network | None:
        if self.pod_cidr_v4 is None:
            return None
        self._check_node(node_id)
        size = 32 - self.node_prefix_length_v4
        base = int(self.pod_cidr_v4.network_address) | (node_id << size)
        return IPv4Network((base, self.node_prefix_length_v4))

    def gateway_v6(self, node_id: int) -> IPv6Address:
        return self.pod_prefix_v6(node_id)[1]

    def gateway_v4(self, node_id: int) -> IPv4Address | None:
        prefix = self.pod_prefix_v4(node_id)
        return None if prefix is None else prefix[1]

    # --- pods ----------------------------------------------------------------------

    def _check_pod(self, index: int) -> None:
        if index not in self.pod_indexes:
            idx = self.pod_indexes
            raise ValueError(f"pod index {index} is outside {idx.start}..{idx.stop - 1}")

    def pod_sid_dx6(self, node_id: int, index: int) -> IPv6Address:
        self._check_pod(index)
        return self._function(node_id, (POD_DX6_FUNCTION << POD_INDEX_BITS) | index)

    def pod_sid_dx4(self, node_id: int, index: int) -> IPv6Address:
        self._check_pod(index)
        return self._function(node_id, (POD_DX4_FUNCTION << POD_INDEX_BITS) | index)

    def pod(self, node_id: int, index: int) -> PodAddresses:
        self._check_pod(index)
        prefix_v4 = self.pod_prefix_v4(node_id)
        return PodAddresses(
            node_id=node_id,
            index=index,
            ipv6=self.pod_prefix_v6(node_id)[index],
            ipv4=None if prefix_v4 is None else prefix_v4[index],
            sid_dx6=self.pod_sid_dx6(node_id, index),
            sid_dx4=None if prefix_v4 is None else self.pod_sid_dx4(node_id, index),
        )

    def pod_of_address(self, address: IPv4Address | IPv6Address) -> tuple[int, int] | None:
        """(node ID, pod index) of a pod address or pod SID, None when it is neither."""
        if isinstance(address, IPv6Address) and address in self.sid_block:
            node_id = self.node_of_sid(address)
            function = int(address) & ((1 << (128 - self.locator_length)) - 1)
            kind, index = function >> POD_INDEX_BITS, function & (2**POD_INDEX_BITS - 1)
            if node_id is None or kind not in (POD_DX6_FUNCTION, POD_DX4_FUNCTION):
                return None
            if kind == POD_DX4_FUNCTION and not self.dual_stack:
                return None
            return (node_id, index) if index in self.pod_indexes else None
        if isinstance(address, IPv6Address):
            cidr: IPv4Network | IPv6Network = self.pod_cidr_v6
            node_len = self.node_prefix_length_v6
        elif self.pod_cidr_v4 is not None:
            cidr, node_len = self.pod_cidr_v4, self.node_prefix_length_v4
        else:
            return None
        if address not in cidr:
            return None
        host_bits = address.max_prefixlen - node_len
        node_id = _field(int(address), host_bits, node_len - cidr.prefixlen)
        index = int(address) & ((1 << host_bits) - 1)
        if node_id not in self.node_ids or index not in self.pod_indexes:
            return None
        return node_id, index

    # --- node-local BSIDs -----------------------------------------------------------

    def node_policy_bsid(self, local_id: int, remote_id: int, family: int) -> IPv6Address:
        """The BSID, on `local_id`'s locator, of its policy to node `remote_id`'s
        End.DT6 (family 6) or End.DT4 (4)."""
        tag = NODE_POLICY_V6_TAG if family == 6 else NODE_POLICY_V4_TAG
        return self._function(local_id, (tag << (self.function_bits - 4)) | remote_id)

    def pod_policy_bsid_v4(self, local_id: int, remote_id: int, index: int) -> IPv6Address:
        """The BSID, on `local_id`'s locator, of its policy to pod `index`'s End.DX4 on
        `remote_id`."""
        node_bits = self.function_bits - 4 - POD_INDEX_BITS
        if remote_id >= 1 << node_bits:
            raise ValueError(
                f"node ID {remote_id} does not fit the {node_bits} bits that per-pod IPv4 "
                f"policy BSIDs leave for it with functionBits {self.function_bits}: give the "
                "plan more function bits, or the nodes End.DT4"
            )
        function = (POD_POLICY_V4_TAG << (self.function_bits - 4)) | remote_id << POD_INDEX_BITS
        return self._function(local_id, function | index)

    def _tagged(self, bsid: IPv6Address) -> tuple[int, int, int] | None:
        """A node-local BSID's (node ID, tag, what follows the tag), or None."""
        local_id = self.node_of_sid(bsid)
        if local_id is None:
            return None
        function = int(bsid) & ((1 << (128 - self.locator_length)) - 1)
        if function >> self.function_bits:
            return None
        shift = self.function_bits - 4
        return local_id, function >> shift, function & ((1 << shift) - 1)

    def local_policy_of_bsid(self, bsid: IPv6Address) -> tuple[int, int, int, int | None] | None:
        """The inverse of both: (local node ID, remote node ID, family, pod index or None),
        or None when `bsid` is not a node-local BSID."""
        tagged = self._tagged(bsid)
        if tagged is None:
            return None
        local_id, tag, rest = tagged
        if tag in (NODE_POLICY_V6_TAG, NODE_POLICY_V4_TAG):
            family = 6 if tag == NODE_POLICY_V6_TAG else 4
            return (local_id, rest, family, None) if rest in self.node_ids else None
        if tag == POD_POLICY_V4_TAG:
            remote_id, index = rest >> POD_INDEX_BITS, rest & ((1 << POD_INDEX_BITS) - 1)
            if remote_id in self.node_ids and index in self.pod_indexes:
                return (local_id, remote_id, 4, index)
        return None

    def service_external_bsid(self, local_id: int, index: int, family: int) -> IPv6Address:
        """The BSID, on `local_id`'s locator, of service `index`'s external policy for IPv6
        (family 6) or IPv4 (4) traffic."""
        if index not in self.service_indexes:
            raise ValueError(f"service index {index} is outside 1..{self.service_indexes[-1]}")
        tag = SERVICE_EXTERNAL_V6_TAG if family == 6 else SERVICE_EXTERNAL_V4_TAG
        return self._function(local_id, (tag << (self.function_bits - 4)) | index)

    def service_of_external_bsid(self, bsid: IPv6Address) -> tuple[int, int, Literal[4, 6]] | None:
        """The inverse: (local node ID, service index, family), or None."""
        tagged = self._tagged(bsid)
        if tagged is None:
            return None
        local_id, tag, index = tagged
        if index not in self.service_indexes:
            return None
        if tag == SERVICE_EXTERNAL_V6_TAG:
            return local_id, index, 6
        if tag == SERVICE_EXTERNAL_V4_TAG:
            return local_id, index, 4
        return None

    # --- services ------------------------------------------------------------------

    def _service_bsid(self, index: int, family: int) -> IPv6Address:
        if index not in self.service_indexes:
            raise ValueError(f"service index {index} is outside 1..{self.service_indexes[-1]}")
        function = (family << (self.function_bits - 4)) | index
        return IPv6Address(int(self.service_bsid_locator.network_address) | function)

    def service_bsid_v6(self, index: int) -> IPv6Address:
        return self._service_bsid(index, SERVICE_FAMILY_V6)

    def service_bsid_v4(self, index: int) -> IPv6Address:
        return self._service_bsid(index, SERVICE_FAMILY_V4)

    def service_of_bsid(self, bsid: IPv6Address) -> tuple[int, Literal[4, 6]] | None:
        if bsid not in self.service_bsid_locator:
            return None
        function = int(bsid) - int(self.service_bsid_locator.network_address)
        if function >> self.function_bits:
            return None
        family = function >> (self.function_bits - 4)
        index = function & ((1 << (self.function_bits - 4)) - 1)
        if index not in self.service_indexes:
            return None
        if family == SERVICE_FAMILY_V6:
            return index, 6
        if family == SERVICE_FAMILY_V4:
            return index, 4
        return None

    def describe(self) -> dict[str, str]:
        """A human summary of the resolved plan (`srv6ctl config check`)."""
        node = 1
        pods = self.pod_indexes
        out = {
            "stack": "dual-stack" if self.dual_stack else "IPv6-only",
            "pod CIDR v6": f"{self.pod_cidr_v6} → /{self.node_prefix_length_v6} per node",
            "pod CIDR v4": (
                f"{self.pod_cidr_v4} → /{self.node_prefix_length_v4} per node"
                if self.pod_cidr_v4
                else "-"
            ),
            "service CIDR v6": str(self.service_cidr_v6 or "-"),
            "service CIDR v4": str(self.service_cidr_v4 or "-"),
            "SID block": f"{self.sid_block} → /{self.locator_length} locator per node",
            "node IDs": f"1..{self.max_nodes}",
            "pods per node": f"{len(pods)} (indexes {pods.start}..{pods.stop - 1})",
            "service BSID locator": f"{self.service_bsid_locator} "
            f"({len(self.service_indexes)} services)",
            f"node {node} locator": str(self.locator(node)),
            f"node {node} End / End.DT6": f"{self.end_sid(node)} / {self.dt6_sid(node)}",
            f"node {node} pod prefix v6": str(self.pod_prefix_v6(node)),
            f"node {node} first pod": _describe_pod(self.pod(node, pods.start)),
            "service 1 BSID v6": str(self.service_bsid_v6(1)),
        }
        if self.dual_stack:
            out[f"node {node} End.DT4"] = str(self.dt4_sid(node))
            out[f"node {node} pod prefix v4"] = str(self.pod_prefix_v4(node))
            out["service 1 BSID v4"] = str(self.service_bsid_v4(1))
        return out


class PodSids:
    """Endpoint address → pod SID, fast, with the plan as the only source of truth.

    The plan's documented layout is linear in the pod index: pod `k` of node `N` has the
    addresses `prefix(N) + k` and the SIDs `L(N)::1:k` / `L(N)::4:k`. So the plan is asked
    once per node prefix (`pod_of_address`) and once per node and family (`pod_sid_*`), and
    every other address of that prefix is located and given its SID by an offset: about a
    microsecond instead of seven, which is most of a full render at 100,000 endpoints. A
    property test checks both against the plan.
    """

    def __init__(self, plan: AddressPlan) -> None:
        self._plan = plan
        indexes = plan.pod_indexes
        self._first, self._last = indexes.start, indexes.stop - 1
        self._host_bits = {
            6: 128 - plan.node_prefix_length_v6,
            4: 32 - plan.node_prefix_length_v4,
        }
        self._node_of_prefix: dict[tuple[int, int], int] = {}  # (family, prefix) → node ID
        self._sid_base: dict[tuple[int, int], int] = {}  # (node ID, family) → SID - k

    def locate(self, address: IPv4Address | IPv6Address) -> tuple[int, int] | None:
        """`AddressPlan.pod_of_address` for pod addresses: (node ID, pod index) or None."""
        family = 6 if isinstance(address, ipaddress.IPv6Address) else 4
        value = int(address)
        bits = self._host_bits[family]
        node_id = self._node_of_prefix.get((family, value >> bits))
        if node_id is None:
            located = self._plan.pod_of_address(address)
            if located is not None and not (family == 6 and address in self._plan.sid_block):
                self._node_of_prefix[(family, value >> bits)] = located[0]
            return located
        index = value & ((1 << bits) - 1)
        return (node_id, index) if self._first <= index <= self._last else None

    def sid(self, located: tuple[int, int], family: int) -> IPv6Address:
        """`AddressPlan.pod_sid_dx6` (family 6) or `pod_sid_dx4` (family 4)."""
        return IPv6Address(self.sid_value(located, family))

    def sid_value(self, located: tuple[int, int], family: int) -> int:
        node_id, index = located
        base = self._sid_base.get((node_id, family))
        if base is None:
            plan, first = self._plan, self._first
            if family == 6:
                sid = plan.pod_sid_dx6(node_id, first)
            else:
                sid = plan.pod_sid_dx4(node_id, first)
            base = self._sid_base[(node_id, family)] = int(sid) - first
        return base + index


def _describe_pod(pod: PodAddresses) -> str:
    text = f"{pod.ipv6} SID {pod.sid_dx6} (End.DX6)"
    if pod.ipv4 is not None:
        text += f", {pod.ipv4} SID {pod.sid_dx4} (End.DX4)"
    return text


def _field(value: int, shift: int, width: int) -> int:
    return (value >> shift) & ((1 << width) - 1)


def _check_node_prefix(
    field: str, length: int, cidr_field: str, cidr: IPv4Network | IPv6Network, max_len: int
) -> None:
    if length < cidr.prefixlen:
        raise InvalidConfig(
            f"{field} /{length} is shorter than {cidr_field} {cidr}: a node prefix must fit "
            "inside the pod CIDR"
        )
    if length > max_len:
        raise InvalidConfig(f"{field} /{length} leaves no room for pods (at most /{max_len})")


def _require_room(field: str, what: str, bits: int, max_nodes: int) -> None:
    # ID 0 is reserved (it would be the block's/CIDR's first subnet, kept for services).
    available = 2**bits - 1
    if available < max_nodes:
        raise InvalidConfig(
            f"{field}: only {available} {what} for node IDs 1..{max_nodes} (maxNodes)"
        )


def describe_validation_error(err: ValidationError, section: str) -> str:
    """One line per problem, each naming the field (`addressPlan.podCIDRv6: ...`)."""
    lines = []
    for problem in err.errors():
        loc = ".".join(str(part) for part in (section, *problem["loc"]) if part != "")
        message = problem["msg"].removeprefix("Value error, ")
        if problem["type"] == "extra_forbidden":
            message = "unknown field"
        elif problem["type"] == "missing":
            message = "is required"
        lines.append(f"{loc}: {message}")
    return "; ".join(lines)
