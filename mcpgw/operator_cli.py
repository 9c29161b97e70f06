"""The operator commands that go through a running gateway's admin API: `mcpgw block|unblock|decisions`,
and `mcpgw audit query` while the gateway holds the embedded store.

Going through the ingress (not straight to `mcp.decisions`) is what makes an operator decision
audited: the gateway authenticates the admin token, records the decision as an event and publishes
it. Where: `--url`, else the config's `listen` (a wildcard host is reached on loopback), else the
default `http://127.0.0.1:8080`. Who: `--admin-token`, else `$MCPGW_ADMIN_TOKEN`.

Exit codes: 0 done, 1 refused (no gateway answering, wrong token, admin API disabled, bad
request), 2 usage (no token given).
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import socket
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from consumers.compliance.render import render
from consumers.store.base import QueryResult
from ingress.config import ListenConfig
from mcpgw.config import GatewayConfig

TOKEN_ENV = "MCPGW_ADMIN_TOKEN"
TIMEOUT_S = 30.0
EXIT_OK, EXIT_REFUSED, EXIT_USAGE = 0, 1, 2
SCOPES = ("principal", "session", "tenant", "tool", "server")
DECISION_COLUMNS = ("decision_id", "scope", "subject", "tenant", "source", "actor", "reason", "ts", "expires_at")


class OperatorError(Exception):
    """A refusal or failure to print as is; `exit_code` says which kind."""

    def __init__(self, message: str, exit_code: int = EXIT_REFUSED) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def add_connection_flags(parser: argparse.ArgumentParser, *, config_required: bool = False) -> None:
    parser.add_argument("-c", "--config", type=Path, required=config_required,
                        help="gateway.yaml (for the gateway's address)")
    parser.add_argument("--url", help="the gateway's base URL (default: from the config's listen, "
                                      "else http://127.0.0.1:8080)")
    parser.add_argument("--admin-token", help=f"the admin bearer token (default: ${TOKEN_ENV})")


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    for action in ("block", "unblock"):
        p = sub.add_parser(action, help=f"{action} a principal, session, tenant, tool or server (admin API)")
        p.add_argument("--scope", required=True, choices=SCOPES, help="what kind of subject the decision is about")
        p.add_argument("--subject", required=True,
                       help="who or what: a principal, session id, tenant or server name; a tool as `name` "
                       "(on every server), `server/name` or its aggregated name `server__name`")
        p.add_argument("--tenant", help="confine the decision to one tenant (default: every tenant)")
        if action == "block":
            p.add_argument("--ttl", type=float, metavar="SECONDS", help="lift the block after this long "
                                                                         "(default: until unblocked)")
        p.add_argument("--reason", required=True, help="why: recorded with the decision")
        add_connection_flags(p)
    listing = sub.add_parser("decisions", help="list the blocks in force (admin API)")
    listing.add_argument("--format", choices=["table", "json", "csv"], default="table")
    add_connection_flags(listing)


@dataclass(frozen=True, slots=True)
class AdminClient:
    base_url: str
    token: str
    config_path: str | None  # the config given with -c, for the messages

    def call(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> dict[str, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base_url + path, data=data, method=method, headers={
            "Authorization": f"Bearer {self.token}", "Content-Type": "application/json", "Accept": "application/json",
        })
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
                return _json_object(response.read(), path)
        except urllib.error.HTTPError as exc:
            raise self._refusal(exc.code, exc.read(), path) from None
        except urllib.error.URLError as exc:
            raise self._unreachable(exc.reason) from None
        except (TimeoutError, ConnectionError) as exc:
            raise self._unreachable(exc) from None

    def _unreachable(self, reason: object) -> OperatorError:
        if isinstance(reason, ConnectionRefusedError):
            config = self.config_path or "gateway.yaml"
            return OperatorError(f"no gateway answers at {self.base_url} (connection refused): start it with "
                                 f"`mcpgw up -c {config}` (or `mcpgw ingress -c {config}`), or pass --url where it "
                                 "listens")
        if isinstance(reason, TimeoutError | socket.timeout):
            return OperatorError(f"the gateway at {self.base_url} did not answer within {TIMEOUT_S:g}s")
        return OperatorError(f"cannot reach the gateway at {self.base_url}: {reason}")

    def _refusal(self, status: int, raw: bytes, path: str) -> OperatorError:
        message = _error_text(raw)
        if status == 401:
            where = self.config_path or "the gateway's config"
            return OperatorError(
                f"the gateway refused the admin token (401): give the token whose SHA-256 is `admin.token_sha256` "
                f"in {where} (check with `printf %s \"$TOKEN\" | sha256sum`), with --admin-token or ${TOKEN_ENV}")
        if status == 403:
            return OperatorError(f"the gateway refused (403): {message or 'forbidden'}; to enable the admin API add "
                                 "`admin: {token_sha256: <hex>}` to the gateway's config and restart it")
        if status == 404:
            return OperatorError(f"the gateway at {self.base_url} has no {path} (404): is it an mcp-audit-gateway "
                                 "with the admin API, and is --url its base URL?")
        if status == 503:
            return OperatorError(f"the gateway cannot serve this now (503): {message or 'unavailable'}")
        return OperatorError(f"the gateway refused the request ({status}): {message or raw[:200]!r}")


def _error_text(raw: bytes) -> str:
    try:
        doc = json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace").strip()[:500]
    if isinstance(doc, dict) and isinstance(doc.get("error"), str):
        return str(doc["error"])
    return json.dumps(doc)[:500]


def _json_object(raw: bytes, path: str) -> dict[str, Any]:
    try:
        doc = json.loads(raw)
    except ValueError:
        raise OperatorError(f"the gateway answered {path} with something other than JSON: {raw[:200]!r}") from None
    if not isinstance(doc, dict):
        raise OperatorError(f"the gateway answered {path} with JSON that is not an object: {raw[:200]!r}")
    return doc


def base_url(url: str | None, config: GatewayConfig | None) -> str:
    if url:
        return url.rstrip("/")
    listen = config.listen if config is not None else ListenConfig()
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(listen.host, listen.host)
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{listen.port}"


def client(args: argparse.Namespace, config: GatewayConfig | None) -> AdminClient:
    token = args.admin_token or os.environ.get(TOKEN_ENV, "")
    if not token:
        raise OperatorError(f"no admin token: pass --admin-token TOKEN or set {TOKEN_ENV} (the token whose SHA-256 "
                            "is admin.token_sha256 in the gateway's config)", EXIT_USAGE)
    path = getattr(args, "config", None)
    return AdminClient(base_url(args.url, config), token, str(path) if path else None)


def actor() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def decision_request(args: argparse.Namespace) -> dict[str, Any]:
    if not args.subject.strip():
        raise OperatorError("--subject must not be empty", EXIT_USAGE)
    ttl = getattr(args, "ttl", None)
    if ttl is not None and ttl <= 0:
        raise OperatorError(f"--ttl must be a positive number of seconds (got {ttl:g})", EXIT_USAGE)
    return {"action": args.command, "scope": args.scope, "subject": args.subject, "tenant": args.tenant,
            "ttl_s": ttl, "reason": args.reason, "actor": actor()}


def describe(decision: Mapping[str, Any]) -> str:
    where = f" in tenant {decision['tenant']}" if decision.get("tenant") else ""
    until = decision.get("expires_at")
    lasting = f", until {_when(until)}" if until else (", until unblocked" if decision.get("action") == "block" else "")
    return (f"{decision.get('action', '?')}: {decision.get('scope', '?')} {decision.get('subject', '?')}{where}"
            f"{lasting} (decision {decision.get('decision_id', '?')})")


def _when(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool):  # µs since the epoch, as a Decision holds it
        when = datetime.fromtimestamp(value / 1_000_000, UTC)
        return when.replace(tzinfo=None).isoformat(timespec="seconds") + "Z"
    return str(value)


def decisions_result(active: list[Mapping[str, Any]]) -> QueryResult:
    return QueryResult(list(DECISION_COLUMNS), [""] * len(DECISION_COLUMNS),
                       [tuple(_when(d[c]) if c in ("ts", "expires_at") and d.get(c) is not None else d.get(c)
                              for c in DECISION_COLUMNS) for d in active])


def admin_query(args: argparse.Namespace, config: GatewayConfig | None, sql: str) -> QueryResult:
    """Run read-only SQL through the gateway's `POST /admin/audit/query`."""
    doc = client(args, config).call("POST", "/admin/audit/query", {"sql": sql})
    columns, types, rows = doc.get("columns"), doc.get("types"), doc.get("rows")
    if not isinstance(columns, list) or not isinstance(rows, list):
        raise OperatorError(f"the gateway's query answer has no columns/rows: {json.dumps(doc)[:200]}")
    return QueryResult([str(c) for c in columns], [str(t) for t in types] if isinstance(types, list) else [],
                       [tuple(r) for r in rows])


def main(args: argparse.Namespace, config: GatewayConfig | None) -> int:
    try:
        if args.command in ("block", "unblock"):
            doc = client(args, config).call("POST", "/admin/decisions", decision_request(args))
            decision = doc.get("decision")
            print(describe(decision) if isinstance(decision, dict) else json.dumps(doc))
            return EXIT_OK
        doc = client(args, config).call("GET", "/admin/decisions")
        active = doc.get("active")
        if not isinstance(active, list):
            raise OperatorError(f"the gateway's answer has no list of active decisions: {json.dumps(doc)[:200]}")
        print(render(decisions_result(active), args.format), end="")
        return EXIT_OK
    except OperatorError as exc:
        print(f"mcpgw {args.command}: {exc}", file=sys.stderr)
        return exc.exit_code
