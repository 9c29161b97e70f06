"""schemas: the event model, the one contract between the ingress and the consumers (DESIGN.md §3).

- `events`, `risk`, `decisions`: the Python types (plain dataclasses and StrEnums), each
  field-for-field the Avro record of the same name in `avsc/` (`<namespace>.<Name>.avsc`);
  `examples/` holds one valid record of each kind, in Avro JSON.
- `catalog`: loads the `.avsc` files (lazily) and computes fingerprints.
- `codec`: values ⇄ bytes (single-object encoding by default, Confluent framing as an option)
  and `canonical_event_bytes`, what the chain hash covers.
- `scan`: checks an Avro body without decoding it, picking a few fields (the audit consumer hands
  bodies to ClickHouse, which decodes them).
- `payload`, `redaction`, `secrets`, `jsonpath`: what is stored of a message: redacted, hashed,
  truncated past a limit. Pure functions.

Must not import `ingress`, `consumers`, `mcpgw` or any I/O library (file reads of its own
schemas aside); both sides import it.
"""
