"""telemetry: Prometheus collectors, metric names and health endpoints."""
