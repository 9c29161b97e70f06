"""The checks every agent request passes before its message is read: origin, identity, size.

Each refusal is recorded as a `message_refused` event and answered with the right HTTP status and
a JSON-RPC error body a person can act on.
"""

from __future__ import annotations

import logging
import re

import orjson
from aiohttp import web
from mcp_types import INVALID_REQUEST

from ingress.auth import AuthFailure, Identity
from ingress.errors import UNAUTHENTICATED
from ingress.gateway import Gateway
from ingress.jsonrpc import JsonObject, error_body
from ingress.sink import SinkUnavailable
from ingress.upstreams.base import CallContext
from schemas.events import Outcome, new_event_id

log = logging.getLogger("mcpgw.http")

SESSION_HEADER = "Mcp-Session-Id"


# version-traceid-parentid-flags; a later version may append fields after a dash.
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}(?:-|$)")


def base_context(request: web.Request, transport: str) -> CallContext:
    traceparent = request.headers.get("traceparent")
    trace_id = span_id = ""
    if traceparent:  # most agents send none: no match
        # W3C Trace Context: a header that does not parse is ignored (a new trace starts), so nothing
        # but hex ids reaches the events, never header bytes that are not text.
        parsed = _TRACEPARENT.match(traceparent)
        if parsed is not None and parsed[1] != "ff" and parsed[2].strip("0") and parsed[3].strip("0"):
            trace_id, span_id = parsed[2], parsed[3]
    return CallContext(correlation_id=new_event_id(), client_addr=request.remote or "", transport=transport,
                       principal="anonymous", trace_id=trace_id, span_id=span_id)


async def refuse(gateway: Gateway, ctx: CallContext, status: int, code: int, message: str, outcome: Outcome,
                 received: bytes = b"", body: JsonObject | None = None, msg_id: object = None,
                 headers: dict[str, str] | None = None, data: object = None) -> web.Response:
    try:
        await gateway.recorder.refused(ctx, body or {}, received, code, message, outcome)
    except SinkUnavailable as exc:
        # The refusal still goes out (nothing was done), unrecorded: the audit log is down.
        log.error("audit sink unavailable; refusal of %s not recorded: %s", ctx.method or "a request", exc)
    payload = orjson.dumps(error_body(msg_id if isinstance(msg_id, str | int) else None, code, message, data))
    return web.Response(status=status, body=payload, content_type="application/json", headers=headers)


def target_of(gateway: Gateway, request: web.Request) -> str | None:
    """The upstream a `/servers/{server}/...` path names ("" on the aggregate), or None if unknown."""
    target = request.match_info.get("server", "")
    return target if not target or target in gateway.upstreams else None


async def unknown_server(gateway: Gateway, request: web.Request, ctx: CallContext) -> web.Response:
    name = request.match_info.get("server", "")
    known = ", ".join(gateway.upstreams) or "none"
    return await refuse(gateway, ctx, 404, INVALID_REQUEST, f"no server named {name!r} (configured: {known})",
                        Outcome.REFUSED)


def resource_metadata_url(request: web.Request) -> str:
    """RFC 9728: the metadata of resource https://host/path lives at /.well-known/oauth-protected-resource/path."""
    return f"{request.scheme}://{request.host}/.well-known/oauth-protected-resource{request.path}"


async def admit(gateway: Gateway, request: web.Request, ctx: CallContext) -> Identity | web.Response:
    """Origin and identity; returns the caller or the refusal to send."""
    if not gateway.auth.origin_allowed(request.headers.get("Origin")):
        return await refuse(gateway, ctx, 403, INVALID_REQUEST,
                            f"Forbidden: Origin {request.headers.get('Origin')!r} is not allowed; add it to "
                            "listen.allowed_origins", Outcome.FORBIDDEN)
    identity = gateway.auth.authenticate(request.headers.get("Authorization"))
    if isinstance(identity, AuthFailure):
        metadata = f'resource_metadata="{resource_metadata_url(request)}"'
        challenge = (f"Bearer {metadata}" if identity.missing else
                     f'Bearer error="invalid_token", error_description="{identity.reason}", {metadata}')
        return await refuse(gateway, ctx, 401, UNAUTHENTICATED, f"Unauthorized: {identity.reason}",
                            Outcome.UNAUTHENTICATED, headers={"WWW-Authenticate": challenge})
    ctx.principal = identity.principal
    ctx.tenant = identity.tenant
    return identity


async def read_body(gateway: Gateway, request: web.Request, ctx: CallContext) -> bytes | web.Response:
    limit = gateway.config.limits.max_body_bytes
    length = request.content_length
    if length is not None and length > limit:
        return await refuse(gateway, ctx, 413, INVALID_REQUEST,
                            f"Payload too large: {length} bytes is over the {limit}-byte limit "
                            "(limits.max_body_bytes)", Outcome.REFUSED)
    if length is not None:
        content = request.content
        if content.is_eof():
            # The whole body came with the head (the usual small message): take it as is, without
            # read()'s two awaits and its bytearray copy.
            return content.read_nowait()
        return await request.read()
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(65536):
        size += len(chunk)
        if size > limit:
            return await refuse(gateway, ctx, 413, INVALID_REQUEST,
                                f"Payload too large: the body is over the {limit}-byte limit (limits.max_body_bytes)",
                                Outcome.REFUSED, received=b"".join(chunks)[:4096])
        chunks.append(chunk)
    return b"".join(chunks)
