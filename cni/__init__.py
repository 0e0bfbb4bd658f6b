"""cni: the CNI plugin executable (spec 1.1) and the agent-side pod wiring."""
