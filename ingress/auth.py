"""Who is calling: API keys (stored as SHA-256 digests) to principal, tenant and roles (pure).

Also the Origin rule against DNS rebinding: a browser Origin must be listed, or be a loopback
origin while the gateway itself listens on loopback.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from ingress.config import ApiKeyAuth, IngressConfig


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header (the scheme in any case), else None."""
    scheme, _, token = (authorization or "").partition(" ")
    token = token.strip()
    return token if token and scheme.lower() == "bearer" else None


def token_sha256(token: str) -> bytes:
    """A presented token's SHA-256; header bytes that are not UTF-8 hash as they came (aiohttp's
    surrogateescape), rather than failing the request."""
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


@dataclass(frozen=True, slots=True)
class Identity:
    principal: str
    tenant: str
    roles: tuple[str, ...] = field(default_factory=tuple)


@dataclass(frozen=True, slots=True)
class AuthFailure:
    reason: str  # said in the 401 and recorded in the refusal event
    missing: bool = False  # no credentials at all (RFC 6750: the challenge then carries no error code)


ANONYMOUS = Identity("anonymous", "default")
_LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})


class Authenticator:
    def __init__(self, config: IngressConfig) -> None:
        self.open = config.auth == "none"
        self._keys: dict[str, Identity] = {}
        if isinstance(config.auth, ApiKeyAuth):
            for key in config.auth.api_keys:
                self._keys[key.key_sha256] = Identity(key.principal, key.tenant, tuple(key.roles))
        self._allowed_origins = frozenset(o.rstrip("/") for o in config.listen.allowed_origins)
        self._loopback = config.listen.is_loopback

    def authenticate(self, authorization: str | None) -> Identity | AuthFailure:
        if self.open:
            return ANONYMOUS
        if not authorization:
            return AuthFailure("missing bearer token: send Authorization: Bearer <api key>", missing=True)
        token = bearer_token(authorization)
        if token is None:
            return AuthFailure("the Authorization header must be 'Bearer <api key>'")
        identity = self._keys.get(token_sha256(token).hex())
        if identity is None:
            return AuthFailure("invalid API key")
        return identity

    def origin_allowed(self, origin: str | None) -> bool:
        if origin is None:
            return True
        if origin.rstrip("/") in self._allowed_origins:
            return True
        if self._loopback:
            host = urlsplit(origin).hostname or ""
            return host in _LOOPBACK_HOSTS
        return False
