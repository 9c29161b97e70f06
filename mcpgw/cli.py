"""`mcpgw`: run the gateway and its tools from one command."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from mcpgw.config import ConfigError, GatewayConfig, load_config

EPILOG = """\
quick start:
  mcpgw up -c examples/gateway.yaml      run everything on embedded defaults
  mcpgw config check -c gateway.yaml     validate a config; every problem with its path and a fix

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

        return run_gateway(config)
    parser.print_help()
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
