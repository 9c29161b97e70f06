"""Errors raised by upstream connectors, independent of the transport in use.

    UpstreamError              base; ``server`` names the upstream, ``retryable`` says whether
    │                          repeating the same request may succeed
    ├── UpstreamUnavailable    the upstream cannot take the request right now (process not
    │                          running, pipe broken, connection refused)
    ├── UpstreamTimeout        no answer in time; the request was cancelled upstream
    └── UpstreamProtocolError  the upstream's answer is not valid MCP, or its handshake failed

``retryable`` is about delivery, not about the upstream's health: it is True only when the
request certainly never reached the server, so the caller may repeat even a non-idempotent call.
"""

from __future__ import annotations

__all__ = ["UpstreamError", "UpstreamProtocolError", "UpstreamTimeout", "UpstreamUnavailable"]


class UpstreamError(Exception):
    """Base of every upstream failure; carries the configured server name."""

    def __init__(self, server: str, detail: str, *, retryable: bool = False) -> None:
        super().__init__(f"upstream {server!r}: {detail}")
        self.server = server
        self.detail = detail
        self.retryable = retryable


class UpstreamUnavailable(UpstreamError):
    """The upstream is not accepting requests (down, restarting, failed or stopped)."""

    def __init__(self, server: str, detail: str, *, retryable: bool = True) -> None:
        super().__init__(server, detail, retryable=retryable)


class UpstreamTimeout(UpstreamError):
    """The upstream took the request but did not answer in time; it was cancelled upstream."""

    def __init__(self, server: str, detail: str) -> None:
        super().__init__(server, detail, retryable=False)


class UpstreamProtocolError(UpstreamError):
    """The upstream answered with something that is not valid MCP (or refused the handshake)."""

    def __init__(self, server: str, detail: str) -> None:
        super().__init__(server, detail, retryable=False)
