"""Loading gateway.yaml: YAML, `${ENV}` expansion, validation, and errors a person can act on.

`GatewayConfig` is the whole file: the ingress sections plus where the event log and the audit
store live. Every problem is reported with its path in the file and what to write instead.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import Field, ValidationError, model_validator

from consumers.risk.settings import RiskSettings
from eventlog.kafka_settings import KafkaSettings
from ingress.config import SERVER_NAME, IngressConfig, ListenConfig, Strict


class MemoryLogConfig(Strict):
    """Events kept in memory only (tests and benchmarks): nothing is durable."""

    capacity: int = Field(1_000_000, ge=1)


class RetentionConfig(Strict):
    max_bytes: int | None = Field(None, ge=0)
    max_age_s: float | None = Field(None, ge=0)


class EmbeddedLogConfig(Strict):
    """The append-only segment log under data_dir (the default)."""

    partitions: int = Field(1, ge=1)
    segment_bytes: int = Field(64 * 1024 * 1024, ge=1024)
    retention: RetentionConfig = RetentionConfig()
    # In strict audit mode a flush's write+fsync runs on the event loop while the previous one took
    # less than this (no thread hand-off per audited hop); a slower disk moves flushes to the log's
    # own thread until it is fast again. null, or async mode: always the thread.
    flush_on_loop_max_ms: float | None = Field(4.0, ge=0)


class EventLogConfig(Strict):
    memory: MemoryLogConfig | None = None
    embedded: EmbeddedLogConfig | None = None
    kafka: KafkaSettings | None = None
    # Where events wait while Kafka is unreachable (under data_dir/spool).
    spool: EmbeddedLogConfig = EmbeddedLogConfig()

    @model_validator(mode="after")
    def _one_backend(self) -> EventLogConfig:
        chosen = [name for name in ("memory", "embedded", "kafka") if getattr(self, name) is not None]
        if len(chosen) > 1:
            raise ValueError(f"choose one event log, not {' and '.join(chosen)}")
        return self


class ChdbStoreConfig(Strict):
    """Embedded ClickHouse (chDB); the directory defaults to data_dir/clickhouse."""

    path: str | None = None


class ClickHouseStoreConfig(Strict):
    url: Annotated[str, Field(pattern=r"^https?://")]
    user: str = "default"
    password: str = ""
    database: str = "audit"


class AuditStoreConfig(Strict):
    chdb: ChdbStoreConfig | None = None
    clickhouse: ClickHouseStoreConfig | None = None

    @model_validator(mode="after")
    def _one_store(self) -> AuditStoreConfig:
        if self.chdb is not None and self.clickhouse is not None:
            raise ValueError("choose one audit store, not chdb and clickhouse")
        return self


class ConsumerMetricsConfig(Strict):
    """The metrics and health listener of `mcpgw consume audit|risk` (under `mcpgw up` the
    consumers' metrics are on the gateway's own /metrics). A port of null: no listener."""

    host: str = "127.0.0.1"
    audit_port: int | None = Field(9464, ge=0, le=65535)
    risk_port: int | None = Field(9465, ge=0, le=65535)


class ConsumersConfig(Strict):
    metrics: ConsumerMetricsConfig = ConsumerMetricsConfig()


class GatewayConfig(IngressConfig):
    data_dir: str = "./data"
    event_log: EventLogConfig | None = None
    audit_store: AuditStoreConfig | None = None
    # The risk consumer's signals, weights and block rule (`mcpgw up`, `mcpgw consume risk`).
    risk: RiskSettings = RiskSettings()
    # The standalone consumers' own settings (`mcpgw consume audit|risk`).
    consumers: ConsumersConfig = ConsumersConfig()

    @property
    def kafka(self) -> KafkaSettings | None:
        """The Kafka event log's settings; None on the embedded or in-memory log."""
        return self.event_log.kafka if self.event_log is not None else None


@dataclass(frozen=True)
class ConfigProblem:
    path: str
    message: str
    hint: str = ""

    def __str__(self) -> str:
        text = f"{self.path or '(top level)'}: {self.message}"
        return f"{text}\n    fix: {self.hint}" if self.hint else text


class ConfigError(Exception):
    def __init__(self, source: str, problems: list[ConfigProblem]) -> None:
        self.source = source
        self.problems = problems
        lines = [f"{source}: {len(problems)} problem(s)"] + [f"  - {p}" for p in problems]
        super().__init__("\n".join(lines))


_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")

_HINTS = {
    "missing": "add this key",
    "extra_forbidden": "remove this key, or check its spelling against the documented keys",
    "string_pattern_mismatch": "",
    "literal_error": "",
    "bool_parsing": "write true or false",
    "int_parsing": "write a whole number",
    "float_parsing": "write a number",
    "dict_type": "write a mapping (key: value lines)",
    "list_type": "write a list ([a, b] or '- item' lines)",
}

_FIELD_HINTS = {
    "key_sha256": "write the SHA-256 hex digest of the key: `printf %s \"$KEY\" | sha256sum`",
    "token_sha256": "write the SHA-256 hex digest of the admin token: `printf %s \"$TOKEN\" | sha256sum`",
    "url": "write an http:// or https:// URL, e.g. http://127.0.0.1:9000/mcp",
    "auth": "write `auth: none` (loopback only) or `auth: {api_keys: [{key_sha256: ..., principal: ...}]}`",
}


def _expand(value: Any, path: str, missing: list[ConfigProblem]) -> Any:
    if isinstance(value, str):
        def substitute(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if os.environ.get(name):
                return os.environ[name]
            if name in os.environ and default is None:
                return ""
            if default is not None:
                return default
            missing.append(ConfigProblem(path, f"environment variable {name} is not set",
                                         f"export {name}=... or write ${{{name}:-default}}"))
            return ""
        return _ENV.sub(substitute, value)
    if isinstance(value, dict):
        return {k: _expand(v, f"{path}.{k}" if path else str(k), missing) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, f"{path}[{i}]", missing) for i, v in enumerate(value)]
    return value


def _path(loc: Iterable[int | str]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("stdio", "http", "ApiKeyAuth", "literal['none']", "function-after[_server_names()]"):
            continue  # union/validator branch labels are not keys in the file
        else:
            out += f".{part}" if out else str(part)
    return out


def problems_from(error: ValidationError) -> list[ConfigProblem]:
    problems: list[ConfigProblem] = []
    seen: set[tuple[str, str]] = set()
    for item in error.errors(include_url=False):
        path = _path(item["loc"])
        if item["type"] == "value_error" and path in ("", "servers"):
            continue  # our cross-field rules: _raw_checks reports them at their exact path
        if item["type"] == "literal_error" and path == "auth" and isinstance(item.get("input"), dict):
            continue  # the api_keys branch was meant; its own errors say what is wrong
        message = item["msg"].removeprefix("Value error, ")
        last = str(item["loc"][-1]) if item["loc"] else ""
        hint = _HINTS.get(item["type"], "") if item["type"] == "extra_forbidden" else (
            _FIELD_HINTS.get(last) or _HINTS.get(item["type"], ""))
        if (item["type"] == "literal_error" and last == "auth") or path == "auth":
            hint = _FIELD_HINTS["auth"]
        if (path, message) in seen:
            continue
        seen.add((path, message))
        problems.append(ConfigProblem(path, message, hint))
    return problems


def parse_config(data: Any, source: str = "<config>") -> GatewayConfig:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(source, [ConfigProblem("", "the file must hold a YAML mapping of keys",
                                                 "start from the example in README.md")])
    missing: list[ConfigProblem] = []
    expanded = _expand(data, "", missing)
    if missing:
        raise ConfigError(source, missing)
    try:
        return GatewayConfig.model_validate(expanded)
    except ValidationError as exc:
        problems = problems_from(exc)
    # Cross-field rules run only once every field parsed; report them anyway, from the raw data.
    paths = {p.path for p in problems}
    for extra in _raw_checks(expanded):
        if extra.path not in paths:
            problems.append(extra)
    raise ConfigError(source, problems)


def _raw_checks(data: dict[str, Any]) -> list[ConfigProblem]:
    problems: list[ConfigProblem] = []
    servers = data.get("servers")
    if isinstance(servers, dict):
        for name, server in servers.items():
            if not SERVER_NAME.match(str(name)):
                problems.append(ConfigProblem(f"servers.{name}", "server names must be 1-32 letters, digits or "
                                              "'-', starting with a letter or digit",
                                              "rename the server, e.g. my-server"))
            if isinstance(server, dict) and "command" not in server and "url" not in server:
                keys = ", ".join(sorted(map(str, server))) or "nothing"
                problems.append(ConfigProblem(f"servers.{name}", f"found {keys}",
                                              "a stdio server needs `command:`, an HTTP server `url:`"))
    listen = data.get("listen")
    host = listen.get("host", "127.0.0.1") if isinstance(listen, dict) else "127.0.0.1"
    if data.get("auth") == "none" and not ListenConfig(host=host).is_loopback:
        problems.append(ConfigProblem("auth", f"auth: none is allowed only on a loopback listen.host (got {host!r})",
                                      "configure auth.api_keys, or set listen.host: 127.0.0.1"))
    return problems


def load_config(path: str | Path) -> GatewayConfig:
    file = Path(path)
    try:
        text = file.read_text()
    except OSError as exc:
        raise ConfigError(str(path), [ConfigProblem("", f"cannot read the file: {exc.strerror}",
                                                    "pass an existing file with -c FILE")]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(str(path), [ConfigProblem(where, f"not valid YAML: {getattr(exc, 'problem', exc)}",
                                                    "fix the YAML syntax at that place")]) from None
    return parse_config(data, str(path))
