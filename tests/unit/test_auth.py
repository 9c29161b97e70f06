"""ingress/auth.py: API keys to identities, and the Origin rule."""

from __future__ import annotations

import hashlib

import pytest

from ingress.auth import ANONYMOUS, Authenticator, AuthFailure, Identity
from ingress.config import IngressConfig


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def keyed(host: str = "127.0.0.1", origins: list[str] | None = None) -> Authenticator:
    config = IngressConfig.model_validate({
        "listen": {"host": host, "allowed_origins": origins or []},
        "auth": {"api_keys": [
            {"key_sha256": sha("alice-key"), "principal": "alice", "tenant": "acme", "roles": ["admin", "dev"]},
            {"key_sha256": sha("bob-key"), "principal": "bob"},
        ]},
    })
    return Authenticator(config)


def open_auth(host: str = "127.0.0.1", origins: list[str] | None = None) -> Authenticator:
    return Authenticator(IngressConfig.model_validate(
        {"listen": {"host": host, "allowed_origins": origins or []}, "auth": "none"}))


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("Bearer alice-key", Identity("alice", "acme", ("admin", "dev"))),
        ("bearer alice-key", Identity("alice", "acme", ("admin", "dev"))),
        ("BEARER bob-key", Identity("bob", "default", ())),
        ("Bearer  bob-key ", Identity("bob", "default", ())),
    ],
)
def test_api_key_match(header: str, expected: Identity) -> None:
    assert keyed().authenticate(header) == expected


@pytest.mark.parametrize(
    ("header", "fragment"),
    [
        (None, "missing bearer token"),
        ("", "missing bearer token"),
        ("Bearer", "Bearer <api key>"),
        ("Bearer ", "Bearer <api key>"),
        ("Bearer    ", "Bearer <api key>"),
        ("Basic YWxpY2U6cHc=", "Bearer <api key>"),
        ("Token alice-key", "Bearer <api key>"),
        ("alice-key", "Bearer <api key>"),
        ("Bearer wrong-key", "invalid API key"),
        ("Bearer ALICE-KEY", "invalid API key"),
        (f"Bearer {sha('alice-key')}", "invalid API key"),  # the digest itself is not a key
        ("Bearer alice-key extra", "invalid API key"),
        ("Bearer alice-\udcff", "invalid API key"),  # a header byte that is not UTF-8, as aiohttp hands it over
    ],
)
def test_api_key_failures(header: str | None, fragment: str) -> None:
    result = keyed().authenticate(header)
    assert isinstance(result, AuthFailure)
    assert fragment in result.reason


@pytest.mark.parametrize("header", [None, "", "Bearer whatever", "Basic abc"])
def test_auth_none_is_anonymous(header: str | None) -> None:
    auth = open_auth()
    assert auth.open is True
    assert auth.authenticate(header) == ANONYMOUS == Identity("anonymous", "default")


def test_keyed_is_not_open() -> None:
    assert keyed().open is False


# -- Origin ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "origins", "origin", "allowed"),
    [
        # no Origin (non-browser clients): always allowed
        ("127.0.0.1", [], None, True),
        ("0.0.0.0", [], None, True),
        # loopback gateway: loopback origins allowed
        ("127.0.0.1", [], "http://localhost:3000", True),
        ("127.0.0.1", [], "http://127.0.0.1:6274", True),
        ("127.0.0.1", [], "http://[::1]:8080", True),
        ("127.0.0.1", [], "https://LOCALHOST", True),
        ("localhost", [], "http://localhost", True),
        ("::1", [], "http://localhost:1", True),
        ("127.0.0.1", [], "http://evil.example", False),
        ("127.0.0.1", [], "http://localhost.evil.example", False),
        ("127.0.0.1", [], "http://127.0.0.1.nip.io", False),
        ("127.0.0.1", [], "null", False),
        ("127.0.0.1", [], "", False),
        # listed origins, trailing slash ignored on either side
        ("127.0.0.1", ["https://app.example"], "https://app.example", True),
        ("127.0.0.1", ["https://app.example/"], "https://app.example", True),
        ("127.0.0.1", ["https://app.example"], "https://app.example/", True),
        ("127.0.0.1", ["https://app.example"], "http://app.example", False),
        ("127.0.0.1", ["https://app.example"], "https://app.example:8443", False),
        # non-loopback gateway: loopback origins are NOT implicitly allowed (DNS rebinding)
        ("0.0.0.0", [], "http://localhost:3000", False),
        ("0.0.0.0", [], "http://127.0.0.1", False),
        ("0.0.0.0", ["http://localhost:3000"], "http://localhost:3000", True),
        ("10.1.2.3", ["https://app.example"], "https://app.example", True),
        ("10.1.2.3", ["https://app.example"], "https://other.example", False),
    ],
)
def test_origin_allowed(host: str, origins: list[str], origin: str | None, allowed: bool) -> None:
    auth = keyed(host, origins)
    assert auth.origin_allowed(origin) is allowed
