"""compose.yaml and the files it mounts stay consistent with the code (no Docker engine runs here).

Each service command must be one the `mcpgw` CLI accepts, the gateway config it mounts must pass
`mcpgw config check` with the variables .env.example names, and every path the Dockerfile copies or
compose mounts must exist.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from mcpgw.cli import _parser
from mcpgw.config import load_config

ROOT = Path(__file__).resolve().parents[2]


def _compose() -> dict[str, object]:
    data = yaml.safe_load((ROOT / "compose.yaml").read_text())
    assert isinstance(data, dict)
    return data


def _services() -> dict[str, dict[str, object]]:
    services = _compose()["services"]
    assert isinstance(services, dict)
    return services


def test_the_stack_has_every_part_of_the_design() -> None:
    assert {"kafka", "clickhouse", "grafana", "ingress", "audit-consumer", "risk-consumer"} <= set(_services())


@pytest.mark.parametrize("service", ["ingress", "audit-consumer", "risk-consumer"])
def test_gateway_services_run_real_cli_commands(service: str) -> None:
    command = _services()[service]["command"]
    assert isinstance(command, list)
    args = _parser().parse_args([str(part) for part in command])  # SystemExit on an unknown command
    assert Path(str(args.config)) == Path("/etc/mcpgw/gateway.yaml")


def test_mounted_gateway_config_passes_config_check(monkeypatch: pytest.MonkeyPatch) -> None:
    names = re.findall(r"^([A-Z0-9_]+)=", (ROOT / ".env.example").read_text(), flags=re.M)
    for name in names:
        monkeypatch.setenv(name, "0" * 64 if name.endswith("SHA256") else f"value-of-{name.lower()}-long-enough")
    config = load_config(ROOT / "infra/gateway/gateway.yaml")
    assert config.event_log is not None and config.event_log.kafka is not None
    assert config.event_log.kafka.enable_idempotence  # Apache Kafka supports it (Tansu, in tests, does not)
    assert config.audit_store is not None and config.audit_store.clickhouse is not None
    assert config.admin is not None and config.admin.grafana is not None


def test_every_variable_the_files_use_is_documented_in_env_example() -> None:
    documented = set(re.findall(r"^([A-Z0-9_]+)=", (ROOT / ".env.example").read_text(), flags=re.M))
    used: set[str] = set()
    for path in ("compose.yaml", "infra/gateway/gateway.yaml"):
        used |= set(re.findall(r"\$\{([A-Z0-9_]+)", (ROOT / path).read_text()))
    assert used <= documented, f"add {sorted(used - documented)} to .env.example"


def test_paths_the_dockerfile_copies_and_compose_mounts_exist() -> None:
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), f"Dockerfile copies missing {source}"
    for service in _services().values():
        for volume in service.get("volumes", []) or []:  # type: ignore[attr-defined]
            source = str(volume).split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"compose mounts missing {source}"


def test_grafana_provisioning_files_are_valid_yaml() -> None:
    files = sorted((ROOT / "infra/grafana/provisioning").rglob("*.yaml"))
    assert files
    for file in files:
        data = yaml.safe_load(file.read_text())
        assert isinstance(data, dict) and data.get("apiVersion") == 1, file


@pytest.mark.parametrize(("service", "role"), [("audit-consumer", "audit"), ("risk-consumer", "risk")])
def test_consumers_expose_and_healthcheck_their_metrics_port(service: str, role: str,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    for name in re.findall(r"^([A-Z0-9_]+)=", (ROOT / ".env.example").read_text(), flags=re.M):
        monkeypatch.setenv(name, "0" * 64 if name.endswith("SHA256") else f"value-of-{name.lower()}-long-enough")
    metrics = load_config(ROOT / "infra/gateway/gateway.yaml").consumers.metrics
    port = metrics.audit_port if role == "audit" else metrics.risk_port
    spec = _services()[service]
    assert port is not None and spec["expose"] == [str(port)]
    assert metrics.host == "0.0.0.0"  # reachable from Prometheus on the compose network
    healthcheck = spec["healthcheck"]
    assert isinstance(healthcheck, dict) and f"http://127.0.0.1:{port}/healthz" in " ".join(healthcheck["test"])
