"""How one agent runs: the command line's choices (`srv6ctl agent --help`)."""

from __future__ import annotations

from dataclasses import dataclass

from cni import protocol as cni_protocol
from srv6ctl.dataplane.model import IPNetwork


@dataclass(frozen=True)
class AgentOptions:
    node_name: str
    netns: str | None = None  # the node's network namespace (the lab); None: this one
    lab_dir: str | None = None  # the lab source's directory; None: Kubernetes
    kubeconfig: str | None = None  # None with no lab_dir: in-cluster config
    cni_socket: str = cni_protocol.DEFAULT_AGENT_SOCKET
    api_socket: str = "/run/srv6ctl/agent.sock"
    resync_seconds: float = 30.0
    dataplane: str = "kernel"  # or "vpp"
    vpp_api_socket: str = "/run/vpp/api.sock"  # --dataplane vpp: VPP's binary API socket
    vpp_stats_socket: str | None = None  # --dataplane vpp: its stats socket (counters)
    # --dataplane vpp: its API definitions (*.api.json); None: vpp_api.find_api_dir's search
    vpp_api_dir: str | None = None
    # --dataplane vpp: the kernel end of the host interconnect (vpp_host); None: none
    vpp_host_interface: str | None = "vpphost0"
    metrics_address: str | None = "127.0.0.1:9876"  # /metrics /healthz /readyz; None: off
    health_check_address: str | None = "::"  # healthCheckNodePorts (service_health); None: off
    # NodePorts on the Node's addresses in these prefixes; None: its InternalIPs ("primary")
    node_port_addresses: tuple[IPNetwork, ...] | None = None

    @property
    def netns_path(self) -> str | None:
        """The node's namespace as a path (a bare name is one of `ip netns`'s)."""
        netns = self.netns
        if netns is None or netns.startswith("/"):
            return netns
        return f"/var/run/netns/{netns}"
