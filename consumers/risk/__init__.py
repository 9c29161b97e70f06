"""consumers.risk: the risk engine, scores per principal (and tool, and client address) from the event stream.

- `settings`: `RiskSettings`, the `risk:` section of gateway.yaml.
- `signals/`: one pure class per signal family, each returning named `Hit`s (signal name, strength).
- `scoring`: a subject's decaying contributions and the rule for when a score is published.
- `blocks`: the blocks in force (the engine's own and those it is told of); `lru`: the bounded maps.
- `engine`: `RiskEngine.observe(event) -> Assessment`, pure and deterministic (time from
  `event.ts_us`, ids from `event.event_id`), so replaying the log rebuilds the same state.
- `assessment`: what one event yields: scores for `mcp.risk`, decisions for `mcp.decisions`.

Everything here is pure: no I/O, no clock, no randomness. Must not import `ingress`; the consumer
that moves the engine's output to Kafka and the audit store lives beside it and does the I/O.
"""
