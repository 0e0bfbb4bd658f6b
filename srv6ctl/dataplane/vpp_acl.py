"""NetworkPolicy in VPP: each pod's `PodAcls` as two ACL plugin ACLs on its port.

What the ACLs say is policies/vpp_acl.py's; this module puts them into VPP 25.10 over the
binary API and keeps them there:

- Naming. An ACL is tagged `srv6ctl:acl:<interface>:<ingress|egress> <ns>/<pod>` (the
  pod's name cut to VPP's 63-byte tag); the interface is the pod port's (tagged
  `srv6ctl:pod:<interface>` by the VPP backend). Tags are how a restarted agent finds its
  ACLs again: `acl_dump` and `acl_interface_list_dump` are read once per connection, and
  an apply that changes nothing writes nothing.
- Binding. `acl_interface_set_acl_list` on the pod's port: the egress ACL as its one
  input ACL, the ingress ACL as its one output ACL (VPP's directions are the port's).
- Changes. `acl_add_replace` with the ACL's own index replaces its rules in place: the
  binding stays, and VPP swaps the rules between two packets — no window where the pod
  is open or closed. A pod no longer isolated is unbound, then its ACLs deleted; so are
  the ACLs of pods that are gone (`sweep`).
- Sessions. Permit+reflect makes VPP sessions; with `reclassify sessions` off (VPP's
  default) a session outlives a policy change and a now-denied flow goes on. The backend
  turns it on once per connection (`set acl-plugin reclassify-sessions 1`, written only
  when VPP reports it off; `acl-plugin { reclassify sessions 1 }` in startup.conf
  does the same). Then replacing an ACL bumps the port's policy epoch, and the next packet
  of an older session is judged again.

A second connection to VPP's API socket (`client_name` srv6ctl-acl), apart from the VPP
backend's: its CRC check covers the ACL plugin's messages, and a VPP without the plugin
leaves the SR dataplane working. A lost socket raises `VppUnavailable`; the next call
reconnects and reads the ACLs again (a restarted VPP has none: they are all made again).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from policies.model import IPNetwork
from policies.vpp_acl import Acl, AclRule, Action, PodAcls
from srv6ctl.dataplane.vpp_api import (
    DEFAULT_API_SOCKET,
    Request,
    VppChannel,
    VppError,
)
from srv6ctl.dataplane.vpp_codec_base import INVALID_INDEX
from srv6ctl.dataplane.vpp_interface_codec import pod_of_tag

log = logging.getLogger(__name__)

ACL_MESSAGES = (
    "control_ping",
    "show_version",
    "cli_inband",
    "sw_interface_dump",
    "acl_add_replace",
    "acl_del",
    "acl_dump",
    "acl_interface_set_acl_list",
    "acl_interface_list_dump",
)
TAG_PREFIX = "srv6ctl:acl:"
TAG_BYTES = 63  # vl_api string tag[64], NUL included
INGRESS, EGRESS = "ingress", "egress"
RECLASSIFY_ON = "set acl-plugin reclassify-sessions 1"


class Outcome(StrEnum):
    UNCHANGED = "unchanged"
    CREATED = "created"  # ACLs made and bound
    UPDATED = "updated"  # rules replaced in place, or the binding repaired
    REMOVED = "removed"


# --- messages ---------------------------------------------------------------------------


def acl_tag(interface: str, way: str, pod: str = "") -> str:
    tag = f"{TAG_PREFIX}{interface}:{way}"
    if len(tag.encode()) > TAG_BYTES:
        raise ValueError(f"pod interface {interface!r}: name too long for a VPP ACL tag")
    full = f"{tag} {pod}".encode()[:TAG_BYTES].decode(errors="ignore")
    return full.rstrip() if pod else tag


def parse_tag(tag: str) -> tuple[str, str] | None:
    """(interface, way) of one of our tags, else None."""
    if not tag.startswith(TAG_PREFIX):
        return None
    name, _, way = tag[len(TAG_PREFIX) :].partition(" ")[0].rpartition(":")
    return (name, way) if name and way in (INGRESS, EGRESS) else None


def encode_rule(rule: AclRule) -> dict[str, Any]:
    """A vl_api_acl_rule_t (vpp-papi encodes the prefixes from ipaddress networks)."""
    return {
        "is_permit": int(rule.action),
        "src_prefix": rule.src,
        "dst_prefix": rule.dst,
        "proto": rule.proto,
        "srcport_or_icmptype_first": rule.sport[0],
        "srcport_or_icmptype_last": rule.sport[1],
        "dstport_or_icmpcode_first": rule.dport[0],
        "dstport_or_icmpcode_last": rule.dport[1],
        "tcp_flags_mask": 0,
        "tcp_flags_value": 0,
    }


def decode_rule(details: Any) -> AclRule:
    src: IPNetwork = details.src_prefix
    dst: IPNetwork = details.dst_prefix
    return AclRule(
        Action(int(details.is_permit)),
        src,
        dst,
        int(details.proto),
        (int(details.srcport_or_icmptype_first), int(details.srcport_or_icmptype_last)),
        (int(details.dstport_or_icmpcode_first), int(details.dstport_or_icmpcode_last)),
    )


def acl_add_replace(acl_index: int, tag: str, rules: Acl) -> Request:
    """Create (`acl_index` INVALID_INDEX) or replace in place one ACL."""
    return Request(
        "acl_add_replace",
        {
            "acl_index": acl_index,
            "tag": tag,
            "count": len(rules),
            "r": [encode_rule(r) for r in rules],
        },
        f"ACL {tag} ({len(rules)} rules)",
    )


def acl_del(acl_index: int) -> Request:
    return Request("acl_del", {"acl_index": acl_index}, f"ACL {acl_index}")


def acl_bind(sw_if_index: int, input_acls: Iterable[int], output_acls: Iterable[int]) -> Request:
    inputs, outputs = list(input_acls), list(output_acls)
    return Request(
        "acl_interface_set_acl_list",
        {
            "sw_if_index": sw_if_index,
            "count": len(inputs) + len(outputs),
            "n_input": len(inputs),
            "acls": [*inputs, *outputs],
        },
        f"interface {sw_if_index}: input ACLs {inputs}, output ACLs {outputs}",
    )


# --- the backend --------------------------------------------------------------------------


@dataclass(frozen=True)
class InstalledAcl:
    index: int
    tag: str
    rules: Acl


Binding = tuple[tuple[int, ...], tuple[int, ...]]  # input ACLs, output ACLs


class VppAclBackend:
    """Pods' ACLs in VPP, by pod interface (see the module docstring)."""

    def __init__(
        self,
        api_socket: str = DEFAULT_API_SOCKET,
        *,
        api_dir: str | os.PathLike[str] | None = None,
        client_name: str = "srv6ctl-acl",
        timeout: float = 10.0,
        reclassify_sessions: bool = True,
    ) -> None:
        self.channel = VppChannel(
            api_socket,
            api_dir=api_dir,
            messages=ACL_MESSAGES,
            optional_messages=(),
            client_name=client_name,
            timeout=timeout,
        )
        self.reclassify_sessions = reclassify_sessions
        self._lock = threading.RLock()
        # What VPP holds, read once per connection and kept up to date by our writes.
        self._acls: dict[tuple[str, str], InstalledAcl] | None = None
        self._strays: list[InstalledAcl] = []  # ours, but a second one for the same key
        self._bindings: dict[int, Binding] = {}
        self._ports: dict[str, int] = {}

    @property
    def writes(self) -> int:
        return self.channel.writes

    def close(self) -> None:
        with self._lock:
            self.channel.close()

    # --- the interface the agent uses ---------------------------------------------------

    def apply(self, pod: str, interface: str, acls: PodAcls | None) -> Outcome:
        """Make the port of `interface` enforce `acls` (None: no ACL at all)."""
        with self._lock:
            self._ensure()
            try:
                if acls is None:
                    return self._remove(interface)
                return self._apply(pod, interface, acls)
            except VppError:
                self._acls = None  # VPP holds something else than we thought: read again
                raise

    def remove(self, interface: str) -> Outcome:
        with self._lock:
            self._ensure()
            return self._remove(interface)

    def sweep(self, keep: Iterable[str]) -> list[str]:
        """Remove the ACLs of every interface not in `keep` (pods that are gone), and
        stray duplicates; returns the interfaces whose ACLs went."""
        with self._lock:
            self._ensure()
            keep = set(keep)
            gone = sorted({name for name, _ in self._loaded()} - keep)
            for name in gone:
                self._remove(name)
            for stray in self._strays:
                self._unbind_everywhere(stray.index)
                self.channel.call("acl_del", write=True, acl_index=stray.index)
            self._strays = []
            return gone

    def installed(self) -> dict[str, dict[str, InstalledAcl]]:
        """Our ACLs as VPP has them now (a fresh read), by interface and way."""
        with self._lock:
            self._ensure()
            self._acls = None
            found: dict[str, dict[str, InstalledAcl]] = {}
            for (name, way), acl in self._loaded().items():
                found.setdefault(name, {})[way] = acl
            return found

    def bindings(self) -> dict[str, Binding]:
        """The ACL lists bound to our pod ports, by interface (a fresh read)."""
        with self._lock:
            self._ensure()
            self._acls = None
            self._loaded()
            return {
                name: self._bindings.get(index, ((), ())) for name, index in self._ports.items()
            }

    # --- internals ----------------------------------------------------------------------

    def _ensure(self) -> None:
        if self.channel.connected:
            return
        self._acls = None
        self.channel.connect()
        if self.reclassify_sessions:
            shown = str(self.channel.call("cli_inband", cmd="show acl-plugin sessions").reply)
            if "Reclassify sessions: 1" not in shown:
                self.channel.call("cli_inband", write=True, cmd=RECLASSIFY_ON)

    def _loaded(self) -> dict[tuple[str, str], InstalledAcl]:
        if self._acls is not None:
            return self._acls
        acls: dict[tuple[str, str], InstalledAcl] = {}
        strays = []
        for details in self.channel.dump("acl_dump", acl_index=INVALID_INDEX):
            key = parse_tag(str(details.tag))
            if key is None:
                continue
            acl = InstalledAcl(
                int(details.acl_index), str(details.tag), tuple(decode_rule(r) for r in details.r)
            )
            if key in acls:
                strays.append(acl)
            else:
                acls[key] = acl
        self._bindings = {}
        for details in self.channel.dump("acl_interface_list_dump", sw_if_index=INVALID_INDEX):
            indices = [int(i) for i in details.acls[: int(details.count)]]
            n = int(details.n_input)
            self._bindings[int(details.sw_if_index)] = (tuple(indices[:n]), tuple(indices[n:]))
        self._load_ports()
        # A duplicate bound to its port wins over the one we met first (a crash between
        # creating and binding leaves the unbound one behind).
        for i, stray in enumerate(strays):
            key = parse_tag(stray.tag)
            assert key is not None
            bound = self._bindings.get(self._ports.get(key[0], -1), ((), ()))
            if stray.index in (*bound[0], *bound[1]):
                acls[key], strays[i] = stray, acls[key]
        self._acls, self._strays = acls, strays
        return acls

    def _load_ports(self) -> None:
        self._ports = {}
        for details in self.channel.dump("sw_interface_dump", sw_if_index=INVALID_INDEX):
            name = pod_of_tag(str(details.tag))
            if name is not None:
                self._ports[name] = int(details.sw_if_index)

    def _port(self, interface: str) -> int | None:
        if interface not in self._ports:
            self._load_ports()
        return self._ports.get(interface)

    def _apply(self, pod: str, interface: str, acls: PodAcls) -> Outcome:
        sw_if_index = self._port(interface)
        if sw_if_index is None:
            raise LookupError(f"pod {pod}: no VPP port for {interface} (not attached yet?)")
        installed = self._loaded()
        outcome = Outcome.UNCHANGED
        indices = {}
        for way, rules in ((EGRESS, acls.egress), (INGRESS, acls.ingress)):
            tag = acl_tag(interface, way, pod)
            current = installed.get((interface, way))
            if current is not None and (current.tag, current.rules) == (tag, rules):
                indices[way] = current.index
                continue
            index = INVALID_INDEX if current is None else current.index
            request = acl_add_replace(index, tag, rules)
            reply = self.channel.call(request.name, write=True, what=request.what, **request.fields)
            indices[way] = int(reply.acl_index)
            installed[(interface, way)] = InstalledAcl(indices[way], tag, rules)
            if outcome is Outcome.UNCHANGED:
                outcome = Outcome.CREATED if current is None else Outcome.UPDATED
        wanted: Binding = ((indices[EGRESS],), (indices[INGRESS],))
        if self._bindings.get(sw_if_index) != wanted:
            self._bind(sw_if_index, wanted)
            if outcome is Outcome.UNCHANGED:
                outcome = Outcome.UPDATED
        return outcome

    def _bind(self, sw_if_index: int, binding: Binding) -> None:
        request = acl_bind(sw_if_index, *binding)
        self.channel.call(request.name, write=True, what=request.what, **request.fields)
        self._bindings[sw_if_index] = binding

    def _remove(self, interface: str) -> Outcome:
        installed = self._loaded()
        mine = {way: installed[(interface, way)] for way in (EGRESS, INGRESS)
                if (interface, way) in installed}  # fmt: skip
        if not mine:
            return Outcome.UNCHANGED
        for acl in mine.values():
            self._unbind_everywhere(acl.index)
        for way, acl in mine.items():
            self.channel.call("acl_del", write=True, acl_index=acl.index)
            del installed[(interface, way)]
        return Outcome.REMOVED

    def _unbind_everywhere(self, acl_index: int) -> None:
        """VPP refuses to delete an ACL still bound to an interface."""
        for sw_if_index, (inputs, outputs) in list(self._bindings.items()):
            if acl_index in inputs or acl_index in outputs:
                binding = (
                    tuple(i for i in inputs if i != acl_index),
                    tuple(i for i in outputs if i != acl_index),
                )
                self._bind(sw_if_index, binding)


def rule_counts(acls: Mapping[str, PodAcls | None]) -> int:
    """Rules VPP would hold for these pods (for benchmarks and logs)."""
    return sum(a.rule_count for a in acls.values() if a is not None)
