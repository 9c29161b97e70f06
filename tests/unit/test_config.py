"""ingress/config.py + mcpgw/config.py: parsing gateway.yaml and reporting problems a person can fix."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from ingress.config import HttpServerConfig, IngressConfig, ListenConfig, StdioServerConfig
from mcpgw.config import ConfigError, ConfigProblem, GatewayConfig, load_config, parse_config

KEY = hashlib.sha256(b"k").hexdigest()
API_KEYS = {"api_keys": [{"key_sha256": KEY, "principal": "p"}]}


def problems(data: Any) -> list[ConfigProblem]:
    with pytest.raises(ConfigError) as info:
        parse_config(data, "gw.yaml")
    assert info.value.source == "gw.yaml"
    assert str(info.value).startswith(f"gw.yaml: {len(info.value.problems)} problem(s)")
    assert info.value.problems
    return info.value.problems


def by_path(found: list[ConfigProblem], path: str) -> ConfigProblem:
    matches = [p for p in found if p.path == path]
    assert matches, f"no problem at {path!r}: {found}"
    return matches[0]


# -- defaults and discrimination -------------------------------------------------------------------


def test_defaults() -> None:
    config = parse_config({"auth": "none"})
    assert isinstance(config, GatewayConfig)
    assert config.auth == "none"
    assert (config.listen.host, config.listen.port, config.listen.allowed_origins) == ("127.0.0.1", 8080, [])
    assert config.servers == {}
    assert (config.naming.separator, config.naming.mode, config.naming.max_length) == ("__", "prefix", 64)
    assert config.limits.page_size == 100
    assert config.limits.max_body_bytes == 4 * 1024 * 1024
    assert config.limits.max_sessions == 10_000
    assert config.audit.mode == "strict"
    assert config.admin is None
    assert config.instance_id is None
    assert config.data_dir == "./data"
    assert config.event_log is None


def test_stdio_vs_http_servers() -> None:
    config = parse_config({
        "auth": API_KEYS,
        "servers": {
            "time": {"command": "uvx", "args": ["mcp-server-time"], "env": {"TZ": "UTC"}},
            "remote": {"url": "https://mcp.example/mcp", "headers": {"X-Api": "1"}},
            "legacy-sse": {"url": "http://127.0.0.1:9000/sse/"},
            "forced": {"url": "http://127.0.0.1:9000/sse", "transport": "streamable_http"},
        },
    })
    time_server = config.servers["time"]
    assert isinstance(time_server, StdioServerConfig)
    assert time_server.transport == "stdio"
    assert (time_server.command, time_server.args, time_server.env) == ("uvx", ["mcp-server-time"], {"TZ": "UTC"})
    assert (time_server.isolation, time_server.max_processes) == ("shared", 16)
    remote = config.servers["remote"]
    assert isinstance(remote, HttpServerConfig)
    assert remote.resolved_transport == "streamable_http"
    assert remote.protocol == "auto"
    assert isinstance(config.servers["legacy-sse"], HttpServerConfig)
    assert config.servers["legacy-sse"].resolved_transport == "sse"
    assert config.servers["forced"].resolved_transport == "streamable_http"
    assert list(config.servers) == ["time", "remote", "legacy-sse", "forced"]  # config order is kept


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.1.2.3", True), ("::1", True), ("localhost", True),
     ("0.0.0.0", False), ("::", False), ("10.0.0.1", False), ("example.com", False)],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert ListenConfig(host=host).is_loopback is loopback


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost"])
def test_auth_none_on_loopback_ok(host: str) -> None:
    assert parse_config({"auth": "none", "listen": {"host": host}}).listen.host == host


def test_api_keys_on_any_host() -> None:
    config = parse_config({"auth": API_KEYS, "listen": {"host": "0.0.0.0", "port": 443}})
    assert not isinstance(config.auth, str)
    assert config.auth.api_keys[0].principal == "p"
    assert config.auth.api_keys[0].tenant == "default"


def test_config_is_frozen() -> None:
    config = parse_config({"auth": "none"})
    with pytest.raises(Exception):  # noqa: B017 - pydantic ValidationError on frozen models
        config.listen.port = 1  # type: ignore[misc]


def test_ingress_config_alone_rejects_gateway_keys() -> None:
    with pytest.raises(Exception, match="data_dir"):
        IngressConfig.model_validate({"auth": "none", "data_dir": "x"})


@pytest.mark.parametrize("data", [None, {}])
def test_empty_file_says_auth_missing(data: Any) -> None:
    found = problems(data)
    problem = by_path(found, "auth")
    assert "required" in problem.message.lower()
    assert "api_keys" in problem.hint


@pytest.mark.parametrize("data", [[1, 2], "auth: none", 3])
def test_not_a_mapping(data: Any) -> None:
    (problem,) = problems(data)
    assert problem.path == ""
    assert "mapping" in problem.message
    assert problem.hint


# -- every problem with its path and a hint ------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "path", "message_fragment", "hint_fragment"),
    [
        ({"auth": "none", "servrs": {}}, "servrs", "Extra", "remove this key"),
        ({"auth": "none", "listen": {"hots": "x"}}, "listen.hots", "Extra", "remove this key"),
        ({"auth": "none", "servers": {"a": {"command": "x", "argz": []}}}, "servers.a.argz", "Extra",
         "remove this key"),
        ({"auth": "none", "servers": {"a": {"url": "http://x", "header": {}}}}, "servers.a.header", "Extra",
         "remove this key"),
        ({"auth": {"api_keys": [{"key_sha256": "XYZ", "principal": "p"}]}}, "auth.api_keys[0].key_sha256",
         "pattern", "sha256sum"),
        ({"auth": {"api_keys": [{"key_sha256": KEY.upper(), "principal": "p"}]}}, "auth.api_keys[0].key_sha256",
         "pattern", "sha256sum"),
        ({"auth": {"api_keys": [{"key_sha256": KEY, "principal": "p"}, {"key_sha256": KEY[:-1], "principal": "q"}]}},
         "auth.api_keys[1].key_sha256", "pattern", "sha256sum"),
        ({"auth": "none", "admin": {"token_sha256": "short"}}, "admin.token_sha256", "pattern", "sha256sum"),
        ({"auth": "none", "servers": {"a": {"url": "ftp://x"}}}, "servers.a.url", "pattern", "http://"),
        ({"auth": "none", "servers": {"a": {}}}, "servers.a", "command", ""),
        ({"auth": "none", "servers": {"a": {"cmd": "x"}}}, "servers.a", "command", ""),
        ({"auth": "none", "limits": {"page_size": "many"}}, "limits.page_size", "integer", "whole number"),
        ({"auth": "none", "limits": {"request_timeout_s": "soon"}}, "limits.request_timeout_s", "number",
         "write a number"),
        ({"auth": "none", "servers": {"a": {"command": "x", "args": "y"}}}, "servers.a.args", "list", "list"),
        ({"auth": "none", "servers": {"a": {"command": "x", "env": ["A=1"]}}}, "servers.a.env", "dictionary",
         "mapping"),
        ({"auth": "none", "servers": []}, "servers", "dictionary", "mapping"),
        ({"auth": "yes"}, "auth", "none", "api_keys"),
        ({"auth": {"api_keys": []}}, "auth.api_keys", "at least 1", ""),
        ({"auth": "none", "audit": {"mode": "sometimes"}}, "audit.mode", "'strict' or 'async'", ""),
        ({"auth": "none", "listen": {"port": 70000}}, "listen.port", "65535", ""),
        ({"auth": "none", "naming": {"max_length": 8}}, "naming.max_length", "16", ""),
        ({"auth": "none", "servers": {"my_server": {"command": "x"}}}, "servers.my_server", "server name",
         "rename"),
        ({"auth": "none", "servers": {"-lead": {"command": "x"}}}, "servers.-lead", "server name", "rename"),
        ({"auth": "none", "servers": {"a" * 33: {"command": "x"}}}, "servers." + "a" * 33, "server name",
         "rename"),
        ({"auth": "none", "listen": {"host": "0.0.0.0"}}, "auth", "loopback", "api_keys"),
        ({"auth": "none", "listen": {"host": "10.0.0.5"}}, "auth", "loopback", "api_keys"),
    ],
)
def test_problem_path_message_hint(data: Any, path: str, message_fragment: str, hint_fragment: str) -> None:
    found = problems(data)
    problem = by_path(found, path)
    assert message_fragment in problem.message
    assert hint_fragment in problem.hint
    assert path in str(problem)
    if problem.hint:
        assert "fix: " + problem.hint in str(problem)


def test_several_problems_reported_at_once() -> None:
    found = problems({
        "auth": "none",
        "listen": {"host": "0.0.0.0"},
        "servrs": {},
        "servers": {"bad_name": {"command": "x"}, "ok": {"url": "nope"}},
        "limits": {"page_size": -1},
    })
    paths = {p.path for p in found}
    assert {"servrs", "servers.bad_name", "servers.ok.url", "limits.page_size", "auth"} <= paths


@pytest.mark.parametrize(
    "data",
    [
        pytest.param({"auth": "none", "listen": {"host": "0.0.0.0"}}, id="auth-none-on-0.0.0.0"),
        pytest.param({"auth": "none", "servers": {"my_server": {"command": "x"}}}, id="bad-server-name"),
    ],
)
def test_one_mistake_one_problem_at_its_path_with_a_hint(data: Any) -> None:
    # A single mistake must be reported once, at the key to change, with what to write instead.
    found = problems(data)
    assert all(p.path for p in found), f"problem(s) without a path: {found}"
    assert all(p.hint for p in found), f"problem(s) without a hint: {found}"
    assert len(found) == 1, found


def test_unchosen_auth_branch_is_not_reported() -> None:
    # The user wrote api_keys; "Input should be 'none'" about the other union branch is noise.
    found = problems({"auth": {"api_keys": [{"key_sha256": "XYZ", "principal": "p"}]}})
    assert [p.path for p in found] == ["auth.api_keys[0].key_sha256"], found


def test_extra_key_hint_is_not_overridden_by_field_hint() -> None:
    # A server with both `command` and `url` is a stdio server with an extra `url` key: the fix is to
    # remove one of them, not "write an http:// URL".
    found = problems({"auth": "none", "servers": {"a": {"command": "x", "url": "http://127.0.0.1/mcp"}}})
    problem = by_path(found, "servers.a.url")
    assert "Extra" in problem.message
    assert "remove" in problem.hint, problem


# -- ${VAR} expansion ------------------------------------------------------------------------------


def test_env_expansion(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GW_TEST_TOKEN", "s3cret")
    monkeypatch.setenv("GW_TEST_PORT", "9001")
    monkeypatch.delenv("GW_TEST_UNSET", raising=False)
    config = parse_config({
        "auth": "none",
        "listen": {"port": "${GW_TEST_PORT}"},
        "servers": {
            "a": {"command": "x", "args": ["--token=${GW_TEST_TOKEN}", "${GW_TEST_UNSET:-fallback}"],
                  "env": {"T": "${GW_TEST_TOKEN}", "E": "${GW_TEST_UNSET:-}"}},
        },
        "data_dir": "/var/${GW_TEST_UNSET:-gw}/data",
    })
    assert config.listen.port == 9001
    server = config.servers["a"]
    assert isinstance(server, StdioServerConfig)
    assert server.args == ["--token=s3cret", "fallback"]
    assert server.env == {"T": "s3cret", "E": ""}
    assert config.data_dir == "/var/gw/data"


def test_env_not_expanded_in_non_strings_or_bare_dollars(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GW_TEST_TOKEN", "s3cret")
    config = parse_config({"auth": "none", "servers": {"a": {"command": "x", "args": ["$GW_TEST_TOKEN", "$5"]}}})
    assert config.servers["a"].args == ["$GW_TEST_TOKEN", "$5"]  # type: ignore[union-attr]


def test_set_but_empty_variable_takes_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    # `${VAR:-default}` is shell syntax: the default applies when VAR is unset *or empty*.
    monkeypatch.setenv("GW_TEST_EMPTY", "")
    assert parse_config({"auth": "none", "data_dir": "${GW_TEST_EMPTY:-dflt}"}).data_dir == "dflt"


def test_missing_env_vars_all_reported_with_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GW_TEST_MISSING_A", raising=False)
    monkeypatch.delenv("GW_TEST_MISSING_B", raising=False)
    found = problems({
        "auth": "none",
        "servers": {"a": {"command": "x", "env": {"TOKEN": "${GW_TEST_MISSING_A}"},
                          "args": ["ok", "${GW_TEST_MISSING_B}"]}},
    })
    token = by_path(found, "servers.a.env.TOKEN")
    assert "GW_TEST_MISSING_A" in token.message and "not set" in token.message
    assert "export GW_TEST_MISSING_A=" in token.hint
    assert "${GW_TEST_MISSING_A:-default}" in token.hint
    arg = by_path(found, "servers.a.args[1]")
    assert "GW_TEST_MISSING_B" in arg.message
    assert len(found) == 2


# -- load_config -----------------------------------------------------------------------------------


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    return path


def test_load_config_ok(tmp_path: Path) -> None:
    path = write(tmp_path, "auth: none\nservers:\n  time:\n    command: uvx\n    args: [mcp-server-time]\n")
    config = load_config(path)
    assert list(config.servers) == ["time"]
    assert load_config(str(path)) == config


def test_load_config_empty_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, ""))
    assert by_path(info.value.problems, "auth")


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("auth: none\nservers:\n  a: {command: [x\n", "line 4, column 1"),
        ("auth: none\nlisten:\n  host: 1\n   port: 2\n", "line 4, column 8"),
        ("auth: none\n\tbad: tab\n", "line 2, column 1"),
        ("auth: 'unterminated\n", "line 2, column 1"),
    ],
)
def test_load_config_invalid_yaml_names_line_and_column(tmp_path: Path, text: str, where: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    (problem,) = info.value.problems
    assert problem.path == where
    assert "not valid YAML" in problem.message
    assert problem.hint
    assert str(path) in str(info.value)


def test_load_config_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    (problem,) = info.value.problems
    assert "cannot read" in problem.message
    assert "-c FILE" in problem.hint


def test_load_config_reports_validation_problems_with_file_name(tmp_path: Path) -> None:
    path = write(tmp_path, "auth: none\nservrs: {}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.source == str(path)
    assert by_path(info.value.problems, "servrs")


@pytest.mark.parametrize(("value", "bound_s"), [(None, None), (0, 0.0), (2.5, 0.0025)])
def test_embedded_flush_on_loop_bound_reaches_the_log(tmp_path: Path, value: float | None,
                                                      bound_s: float | None) -> None:
    from mcpgw.sinks import embedded_log

    config = parse_config({"auth": "none", "event_log": {"embedded": {"flush_on_loop_max_ms": value}}})
    assert config.event_log is not None and config.event_log.embedded is not None
    log = embedded_log(tmp_path, config.event_log.embedded)
    assert log.config.limits.inline_flush_max_s == bound_s


def test_embedded_flush_on_loop_bound_defaults_to_4_ms(tmp_path: Path) -> None:
    from mcpgw.config import EmbeddedLogConfig
    from mcpgw.sinks import embedded_log

    assert embedded_log(tmp_path, EmbeddedLogConfig()).config.limits.inline_flush_max_s == 0.004
    assert by_path(problems({"auth": "none", "event_log": {"embedded": {"flush_on_loop_max_ms": -1}}}),
                   "event_log.embedded.flush_on_loop_max_ms")


def test_async_audit_mode_keeps_the_disk_off_the_event_loop(tmp_path: Path) -> None:
    from mcpgw.config import EmbeddedLogConfig
    from mcpgw.sinks import embedded_log

    assert embedded_log(tmp_path, EmbeddedLogConfig(), flush_on_loop=False).config.limits.inline_flush_max_s is None
