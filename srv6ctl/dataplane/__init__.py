"""The node dataplane: the model, reconcile, and the backends that program it."""
