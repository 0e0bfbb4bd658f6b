"""ipam6: the cluster address plan, its allocations, and the store that keeps them."""
