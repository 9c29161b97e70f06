"""The ingress part of gateway.yaml, validated by pydantic.

The keys documented in DESIGN.md §5 are a contract; everything else may grow. Unknown keys are
errors (a typo must not silently change behaviour). Upstreams use the shape agents' configs use:
`command`/`args`/`env` for stdio servers, `url`/`headers` for HTTP ones.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator, model_validator

SERVER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,31}$")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ListenConfig(Strict):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    # Origins allowed to call /mcp from a browser. Requests without Origin are always allowed.
    allowed_origins: list[str] = Field(default_factory=list)

    @property
    def is_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


class ApiKey(Strict):
    key_sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    principal: Annotated[str, Field(min_length=1)]
    tenant: str = "default"
    roles: list[str] = Field(default_factory=list)


class ApiKeyAuth(Strict):
    api_keys: list[ApiKey] = Field(min_length=1)


class GrafanaWebhookConfig(Strict):
    """Grafana unified-alerting webhook contact point posting to /admin/alerts/grafana.

    The contact point's HMAC signature settings must match: the shared secret, and the headers
    Grafana puts the signature and its timestamp in.
    """

    secret: Annotated[str, Field(min_length=16)]  # put it in the environment: `secret: ${MCPGW_GRAFANA_SECRET}`
    signature_header: str = "X-Grafana-Alerting-Signature"
    timestamp_header: str = "X-Grafana-Alerting-Signature-Timestamp"
    max_age_s: float = Field(300.0, gt=0)  # older (or further in the future) signatures are refused
    default_ttl_s: float = Field(3600.0, gt=0)  # block TTL when the alert carries no ttl label


class AdminConfig(Strict):
    token_sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    grafana: GrafanaWebhookConfig | None = None


class RestartConfig(Strict):
    initial_delay_s: float = Field(0.5, gt=0)
    max_delay_s: float = Field(30.0, gt=0)
    max_restarts: int | None = None


class StdioServerConfig(Strict):
    command: Annotated[str, Field(min_length=1)]
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    cwd: str | None = None
    # shared: one process serves every agent; session: one process per agent session
    # (for servers that keep per-client state), at most max_processes at once.
    isolation: Literal["shared", "session"] = "shared"
    max_processes: int = Field(16, ge=1)
    restart: RestartConfig = RestartConfig()
    startup_timeout_s: float = Field(20.0, gt=0)
    request_timeout_s: float | None = Field(None, gt=0)

    @property
    def transport(self) -> str:
        return "stdio"


class HttpServerConfig(Strict):
    url: Annotated[str, Field(pattern=r"^https?://")]
    headers: dict[str, str] = Field(default_factory=dict)
    # streamable_http (default) or sse (the 2024-11-05 HTTP+SSE transport); a URL ending in /sse
    # selects sse when not given.
    transport: Literal["streamable_http", "sse"] | None = None
    # auto: try the modern era, fall back to initialize; legacy: always initialize.
    protocol: Literal["auto", "legacy", "modern"] = "auto"
    connect_timeout_s: float = Field(5.0, gt=0)
    request_timeout_s: float | None = Field(None, gt=0)

    @property
    def resolved_transport(self) -> str:
        if self.transport:
            return self.transport
        return "sse" if self.url.rstrip("/").endswith("/sse") else "streamable_http"


def _server_kind(value: object) -> str | None:
    if isinstance(value, StdioServerConfig | HttpServerConfig):
        return "stdio" if isinstance(value, StdioServerConfig) else "http"
    if isinstance(value, dict):
        if "command" in value:
            return "stdio"
        if "url" in value:
            return "http"
    return None


ServerConfig = Annotated[
    Annotated[StdioServerConfig, Tag("stdio")] | Annotated[HttpServerConfig, Tag("http")],
    Discriminator(
        _server_kind,
        custom_error_type="server_kind",
        custom_error_message="a server needs either `command` (a local stdio process) or `url` (a remote "
        "Streamable HTTP or SSE server)",
    ),
]


class NamingConfig(Strict):
    separator: Annotated[str, Field(min_length=1, max_length=4, pattern=r"^[A-Za-z0-9_.-]+$")] = "__"
    mode: Literal["prefix", "none"] = "prefix"
    max_length: int = Field(64, ge=16, le=256)


class LimitsConfig(Strict):
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    request_timeout_s: float = Field(60.0, gt=0)
    page_size: int = Field(100, ge=0)  # items per aggregated list page; 0 = everything at once
    session_idle_timeout_s: float = Field(3600.0, gt=0)
    max_sessions: int = Field(10_000, ge=1)
    catalog_ttl_s: float = Field(60.0, ge=0)


class CheckpointConfig(Strict):
    every_events: int = Field(1000, ge=1)
    every_seconds: float = Field(60.0, gt=0)
    # The HMAC key signing chain heads; put it in the environment: `key: ${MCPGW_CHECKPOINT_KEY}`.
    key: str = ""


class RedactionConfig(Strict):
    json_paths: list[str] = Field(default_factory=list)  # e.g. params.arguments.password, result.content[*].text
    patterns: bool = True  # API keys, tokens, private keys, password-like JSON keys
    max_payload_bytes: int = Field(1024 * 1024, ge=1024)  # stored whole up to this, else a prefix + hash
    prefix_bytes: int = Field(64 * 1024, ge=0)


class AuditConfig(Strict):
    mode: Literal["strict", "async"] = "strict"
    checkpoint: CheckpointConfig = CheckpointConfig()
    redaction: RedactionConfig = RedactionConfig()


class IngressConfig(Strict):
    listen: ListenConfig = ListenConfig()
    auth: Literal["none"] | ApiKeyAuth
    admin: AdminConfig | None = None
    servers: dict[str, ServerConfig] = Field(default_factory=dict)
    naming: NamingConfig = NamingConfig()
    limits: LimitsConfig = LimitsConfig()
    audit: AuditConfig = AuditConfig()
    instance_id: str | None = None

    @field_validator("servers")
    @classmethod
    def _server_names(cls, servers: dict[str, ServerConfig]) -> dict[str, ServerConfig]:
        for name in servers:
            if not SERVER_NAME.match(name):
                raise ValueError(
                    f"server name {name!r} must be 1-32 letters, digits or '-', starting with a letter or "
                    "digit (it prefixes tool names and appears in URLs)"
                )
        return servers

    @model_validator(mode="after")
    def _auth_none_only_on_loopback(self) -> IngressConfig:
        if self.auth == "none" and not self.listen.is_loopback:
            raise ValueError(
                f"auth: none is allowed only when listen.host is a loopback address (got "
                f"{self.listen.host!r}); configure auth.api_keys or listen on 127.0.0.1"
            )
        return self
