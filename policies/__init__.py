"""policies: Kubernetes NetworkPolicy compiled into a backend-neutral rule set."""
