"""schemas: the event model shared by the ingress and the consumers.

Holds the Python event types, and (with the event-log work) the Avro schemas and codec.
It is the one contract between producers and consumers, so it must not import `ingress`,
`consumers` or any I/O library.
"""
