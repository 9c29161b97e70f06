"""ingress: the agent-facing aiohttp gateway in front of many MCP servers.

Pure core modules (jsonrpc, eras, naming, aggregation, routing, classification, policy) take
values and return values; adapters (http/, upstreams/, sink) do the I/O. Must not import
`consumers`; shares only `schemas` with it.
"""
