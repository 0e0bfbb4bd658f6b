"""policies: Kubernetes NetworkPolicy compiled into a backend-neutral rule set.

`model` (input types, the `Cluster` snapshot, the compiled `PodRules`), `compiler` (pure:
`compile_node`, `recompile`), `kube` (API JSON into the model), `nftables` (enforcement in
each pod's network namespace). See README.md for the design.
"""
