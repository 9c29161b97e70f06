"""`mcpgw`: run the gateway and its tools from one command."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from mcpgw import operator_cli
from mcpgw.config import ConfigError, GatewayConfig, load_config

EPILOG = """\
quick start:
  mcpgw up -c examples/gateway.yaml      run everything on embedded defaults (log + audit store in ./data)
  mcpgw config check -c gateway.yaml     validate a config; every problem with its path and a fix
  mcpgw audit query "SELECT ..." -c F    read-only SQL over the audit store (through the gateway while it runs)
  mcpgw block --scope principal --subject alice --ttl 600 --reason "..." -c F
                                         refuse a principal's calls (admin token: $MCPGW_ADMIN_TOKEN)
  mcpgw audit verify -c F                prove the audit trail complete and untampered

Agents connect to http://HOST:PORT/mcp (all servers, tools named server__tool) or
http://HOST:PORT/servers/NAME/mcp (one server, its own names), with
Authorization: Bearer <api key> unless the config says `auth: none`.
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mcpgw",
        description="mcp-audit-gateway: an audit-first gateway for the Model Context Protocol.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR (default INFO)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    up = sub.add_parser("up", help="run the gateway with everything embedded, in one process")
    up.add_argument("-c", "--config", required=True, type=Path, help="gateway.yaml")
    up.add_argument("--host", help="override listen.host")
    up.add_argument("--port", type=int, help="override listen.port")

    ingress = sub.add_parser("ingress", help="run only the ingress (agent-facing proxy)")
    ingress.add_argument("-c", "--config", required=True, type=Path, help="gateway.yaml")
    ingress.add_argument("--host", help="override listen.host")
    ingress.add_argument("--port", type=int, help="override listen.port")

    consume = sub.add_parser("consume", help="run one consumer on its own (distributed deployment)")
    consume.add_argument("role", choices=["audit", "risk"],
                         help="audit: mcp.events into the audit store; risk: scores and blocks to mcp.risk and "
                              "mcp.decisions, and both into the audit store")
    consume.add_argument("-c", "--config", required=True, type=Path, help="gateway.yaml")
    consume.add_argument("--metrics-host", help="override consumers.metrics.host (where /metrics and /healthz listen)")
    consume.add_argument("--metrics-port", type=int,
                         help="override consumers.metrics.audit_port or risk_port (0: any free port)")

    audit = sub.add_parser("audit", help="compliance tools over the audit store")
    audit_sub = audit.add_subparsers(dest="audit_command", metavar="SUBCOMMAND")
    query = audit_sub.add_parser("query", help="read-only SQL over the audit store")
    query.add_argument("sql", help='e.g. "SELECT principal, count() FROM audit.events GROUP BY principal"')
    query.add_argument("-c", "--config", required=True, type=Path, help="gateway.yaml")
    query.add_argument("--format", choices=["table", "json", "csv"], default="table")
    # While `mcpgw up` runs it holds the embedded store's lock: the query then goes to its admin API.
    query.add_argument("--url", help="the running gateway's base URL (default: from the config's listen)")
    query.add_argument("--admin-token", help="admin token for a running gateway (default: $MCPGW_ADMIN_TOKEN)")
    verify = audit_sub.add_parser("verify", help="check every stream's chain, sequence and checkpoint signatures")
    verify.add_argument("-c", "--config", required=True, type=Path, help="gateway.yaml")
    verify.add_argument("--stream", action="append", help="only this stream id (repeatable)")
    verify.add_argument("--json", action="store_true", help="print the report as JSON")
    export = audit_sub.add_parser("export", help="export events of a time range (Parquet, CSV or JSON lines)")
    export.add_argument("-c", "--config", required=True, type=Path, help="gateway.yaml")
    export.add_argument("--start", required=True, help="ISO time, inclusive (e.g. 2026-11-01T00:00:00Z)")
    export.add_argument("--end", required=True, help="ISO time, exclusive")
    export.add_argument("--tenant")
    export.add_argument("--principal")
    export.add_argument("-o", "--output", required=True, type=Path, help="file: .parquet, .csv or .jsonl")

    replay = sub.add_parser("replay", help="rebuild the audit store from the event log (idempotent)")
    replay.add_argument("-c", "--config", required=True, type=Path, help="gateway.yaml")

    operator_cli.add_parsers(sub)

    config = sub.add_parser("config", help="work with configuration files")
    config_sub = config.add_subparsers(dest="config_command", metavar="SUBCOMMAND")
    check = config_sub.add_parser("check", help="validate a config file and explain every problem")
    check.add_argument("-c", "--config", required=True, type=Path, help="gateway.yaml")
    return parser


def _load(path: Path) -> GatewayConfig | None:
    try:
        return load_config(path)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return None


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command is None:
        parser.print_help()
        return 2
    if args.command == "config":
        if args.config_command != "check":
            parser.parse_args(["config", "--help"])
            return 2
        config = _load(args.config)
        if config is None:
            return 1
        print(f"{args.config}: OK — {len(config.servers)} server(s): {', '.join(config.servers) or 'none'}; "
              f"listening on {config.listen.host}:{config.listen.port}; auth "
              f"{'none (loopback only)' if config.auth == 'none' else 'api keys'}; audit mode {config.audit.mode}")
        return 0
    if args.command in ("up", "ingress"):
        config = _load(args.config)
        if config is None:
            return 1
        overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
        if overrides:
            config = config.model_copy(update={"listen": config.listen.model_copy(update=overrides)})
        from mcpgw.runner import run_gateway

        return run_gateway(config, consumers=args.command == "up")
    if args.command in ("block", "unblock", "decisions"):
        config = _load(args.config) if args.config is not None else None
        if config is None and args.config is not None:
            return 1
        return operator_cli.main(args, config)
    if args.command in ("audit", "consume", "replay"):
        config = _load(args.config)
        if config is None:
            return 1
        from mcpgw import compliance_cli

        if args.command == "audit" and args.audit_command is None:
            parser.parse_args(["audit", "--help"])
            return 2
        return compliance_cli.main(args, config)
    parser.print_help()
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
