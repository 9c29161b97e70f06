"""JSON-RPC error codes the gateway itself answers with (the -32000…-32019 implementation range).

Protocol codes (-32700 parse, -32600 invalid request, -32601 method not found, -32602 invalid
params, -32020 header mismatch, -32022 unsupported version) come from `mcp_types`.
"""

from __future__ import annotations

UPSTREAM_TIMEOUT = -32001  # the SDKs' REQUEST_TIMEOUT: the upstream did not answer in time
UPSTREAM_UNAVAILABLE = -32010  # the upstream is down, restarting, or refused the connection
AUDIT_UNAVAILABLE = -32011  # the event could not be recorded, so the call was not made (retryable)
BLOCKED = -32012  # a block decision covers this principal, session, tenant, tool or server
RATE_LIMITED = -32013
SESSION_LIMIT = -32014
UNAUTHENTICATED = -32015  # in the body of a 401; the status and WWW-Authenticate are what clients act on
