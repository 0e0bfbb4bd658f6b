"""srv6ctl: an IPv6/SRv6-first Kubernetes network plugin (controller, agent, CLI)."""

__version__ = "0.1.0"
