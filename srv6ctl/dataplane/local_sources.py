"""The node's own IPv4 addresses, accepted back from SRv6 and only from SRv6 (kernel nodes).

Linux refuses an IPv4 packet that arrives on an interface with one of the node's own
addresses as its source (a martian: `fib_validate_source`), unless the interface accepts
local sources. Two flows of ours do that, and both are legitimate:

- a host-network client's connection to *another* node's NodePort that lands on one of
  this node's pods: the entry node steers it back here, and End.DX4 hands the inner packet
  (source: this node's address) to the forwarding lookup as arriving on the uplink;
- a remote backend's direct reply to a pod that asked its *own* node's NodePort (source:
  this node's NodePort address, the one the pod asked).

IPv6 has no such check; both work there. kube-proxy avoids the case by SNAT at the entry
node, which is the state we do not keep.

So each **uplink** — a device holding one of the node's own global addresses (not the
cluster's: a pod veth's node end holds the pods' IPv4 gateway; not a device of ours) —
accepts local sources, and a guard puts back what the check did for everything else: the `ip` table
`srv6ctl_local_sources` drops IPv4 arriving on those devices from a local source at
prerouting. The packet End.DX4 decapsulates does not pass IPv4 prerouting (only with
`net.netfilter.nf_hooks_lwtunnel=1`, which the kernel cannot turn off once on: then the
guard would drop it too, so nothing is changed and the agent says why), while a spoofed
packet from the underlay does. Ownership: the set `uplinks` lists the devices whose
`accept_local` we turned on; the guard covers exactly those, and `remove` (cleanup) turns
them off again. A device that already accepted local sources is the operator's: left as
it is, and unguarded, as before.

The guard comes before the sysctl and goes after it: no moment accepts local sources
unguarded. With `rp_filter=1` on the uplink, the check still fails unless the address
is on that uplink itself (strict mode wants the reverse route through it).
"""

from __future__ import annotations

import ipaddress
import json
import logging
from collections.abc import Sequence

from pyroute2 import IPRoute

from policies.nftables import NftError, list_table, run_nft
from srv6ctl.dataplane.kernel_codec import OWN_ALIAS
from srv6ctl.dataplane.model import IPNetwork
from srv6ctl.dataplane.nsenter import ensure_sysctls, read_sysctl, run_in_netns

log = logging.getLogger(__name__)

TABLE = "srv6ctl_local_sources"  # family `ip`
LWTUNNEL_HOOKS = "net/netfilter/nf_hooks_lwtunnel"
_RT_SCOPE_UNIVERSE = 0


def accept_local(device: str) -> str:
    return f"net/ipv4/conf/{device}/accept_local"


def guard_script(devices: Sequence[str]) -> str:
    """The whole table for `devices` (none: no table)."""
    lines = [f"table ip {TABLE}", f"delete table ip {TABLE}"]
    if devices:
        elements = ", ".join(json.dumps(d) for d in sorted(devices))
        lines += [
            f"table ip {TABLE} {{",
            "  set uplinks { type ifname; elements = { " + elements + " } }",
            "  chain prerouting {",
            "    type filter hook prerouting priority raw; policy accept;",
            "    iifname @uplinks fib saddr type local counter drop",
            "  }",
            "}",
        ]
    return "\n".join(lines) + "\n"


def guarded(netns: str | None) -> list[str]:
    """The devices in the guard's set (ours to turn off again); [] without the table."""
    listing = list_table(netns, TABLE, family="ip")
    for item in json.loads(listing or "{}").get("nftables", []):
        found = item.get("set")
        if found and found.get("name") == "uplinks":
            return sorted(str(e) for e in found.get("elem", []))
    return []


def uplinks(netns: str | None, cluster: Sequence[IPNetwork]) -> list[str]:
    """The devices holding a global address of the node's own (of either family: SRv6
    arrives where the IPv6 underlay is, which need not be where the IPv4 address is)."""

    def body() -> list[str]:
        with IPRoute() as ipr:
            names = {
                link["index"]: link.get_attr("IFLA_IFNAME")
                for link in ipr.get_links()
                if not (link.get_attr("IFLA_IFALIAS") or "").startswith(OWN_ALIAS)
            }
            found: set[str] = set()
            for msg in ipr.get_addr():
                address = ipaddress.ip_address(msg.get_attr("IFA_ADDRESS"))
                if msg["scope"] != _RT_SCOPE_UNIVERSE or address.is_loopback:
                    continue
                if address.is_link_local or any(address in prefix for prefix in cluster):
                    continue
                name = names.get(msg["index"])
                if name is not None and name != "lo":
                    found.add(str(name))
            return sorted(found)

    return run_in_netns(netns, body)


def ensure(netns: str | None, cluster: Sequence[IPNetwork]) -> list[str]:
    """Make the node's uplinks accept its own IPv4 addresses, guarded; the devices turned
    on now. Refusals are logged (the flows above stay dropped), never raised."""
    if read_sysctl(netns, LWTUNNEL_HOOKS) == "1":
        log.warning(
            "%s=1: IPv4 packets decapsulated by SRv6 pass prerouting, where a guard against "
            "spoofed local sources would drop them too; uplinks keep refusing the node's own "
            "IPv4 addresses (IPv4 NodePort flows that return to their own node are lost)",
            LWTUNNEL_HOOKS.replace("/", "."),
        )
        return []
    try:
        held = guarded(netns)
        devices = uplinks(netns, cluster)
        ours = [d for d in held if d in devices]
        new = [d for d in devices if d not in held and read_sysctl(netns, accept_local(d)) == "0"]
        if sorted(ours + new) != held:
            run_nft(netns, ["-f", "-"], guard_script(ours + new))
    except (NftError, OSError) as err:
        log.warning("uplinks keep refusing the node's own IPv4 addresses: %s", err)
        return []
    result = ensure_sysctls(netns, {accept_local(d): "1" for d in ours + new})
    for refusal in result.refused:
        log.warning("uplink sysctl refused: %s", refusal)
    return new


def remove(netns: str | None) -> list[str]:
    """Turn off what `ensure` turned on, then drop the guard; the devices put back."""
    devices = guarded(netns)
    present = [d for d in devices if read_sysctl(netns, accept_local(d)) is not None]
    ensure_sysctls(netns, {accept_local(d): "0" for d in present})
    run_nft(netns, ["-f", "-"], guard_script([]))
    return devices


__all__ = ["LWTUNNEL_HOOKS", "TABLE", "accept_local", "ensure", "guard_script", "remove", "uplinks"]
