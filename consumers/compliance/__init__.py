"""compliance: what auditors run against the audit store — `mcpgw audit query|verify|export`.

- `verify`: the pure chain checker (seq completeness, recomputed hashes, prev_hash links, payload
  hashes, signed checkpoints), fed events in seq order so a store can page millions of rows in.
- `rows_to_events`: audit.events rows (or exported records) back into `GatewayEvent`s, the
  inverse of `consumers/store/rows.py`.
- `sql`: read-only statement classification, ahead of the store's own refusal.
- `render`: query results and verify reports as text tables, JSON or CSV.
- `export`: time-bounded exports as Parquet, CSV or JSON lines, and reading them back.
- `tools`: the async commands over an `AuditStore`.

Must not import `ingress` (consumers share only `schemas` with it); `verify`, `sql`,
`rows_to_events` and `render` import no I/O library.
"""
