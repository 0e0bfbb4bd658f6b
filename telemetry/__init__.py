"""telemetry: Prometheus collectors, metric names and health endpoints.

A library the node agent embeds. `agent.Telemetry` is the entry point; metric names live in
`metrics`, the scrape-time collectors in `dataplane` and `pools`, pod veth counters in
`linkstats`, the store timing wrapper in `store`, the HTTP endpoint in `server`, and
`srv6ctl top` in `top`. It depends on the dataplane model only, never on the sources.
"""
