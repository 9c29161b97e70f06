"""The compliance commands: `mcpgw audit query|verify|export`, `mcpgw consume audit|risk`, `mcpgw replay`.

`replay` rebuilds what is a projection of the log in the store: `audit.events` (and the tables
derived from it) from `mcp.events`, `audit.risk_scores` from `mcp.risk`, `audit.decisions` from
`mcp.decisions`.

`audit query` opens the store itself, except when the store is the embedded one and a running
gateway holds its lock (chDB admits one process per directory): then the SQL goes to that
gateway's `POST /admin/audit/query` (admin token from --admin-token or $MCPGW_ADMIN_TOKEN), so the
same command works whether the gateway runs or not. A ClickHouse server is always queried directly.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import uuid
from contextlib import AsyncExitStack
from pathlib import Path

from consumers.compliance.render import render, render_report, render_report_json
from consumers.compliance.tools import audit_export, audit_query, audit_verify
from consumers.risk_consumer import RISK_TOPICS
from consumers.store.base import StoreError
from consumers.store.chdb_store import ChdbStore, lock_holder
from eventlog.base import TOPIC_EVENTS, LogUnavailable
from eventlog.embedded.log import EmbeddedLog
from mcpgw import operator_cli
from mcpgw.audit_runtime import RunningConsumer, start_audit_consumer
from mcpgw.config import EmbeddedLogConfig, GatewayConfig
from mcpgw.consumer_http import listener_port, start_consumer_http
from mcpgw.consumer_metrics import in_process
from mcpgw.log_ends import committed_through, end_offsets, of_topic
from mcpgw.risk_runtime import PROJECTION_SPECS, RunningRisk, replay_projections, start_risk
from mcpgw.runner import install_fast_loop
from mcpgw.sinks import embedded_log
from mcpgw.stores import store_for

log = logging.getLogger("mcpgw")

REPLAY_TIMEOUT_S = 3600.0


def main(args: argparse.Namespace, config: GatewayConfig) -> int:
    if args.command == "audit" and args.audit_command == "query" and held_by_gateway(config) is not None:
        return _query_through_gateway(args, config)
    if args.command in ("consume", "replay"):
        install_fast_loop()
    try:
        return asyncio.run(_main(args, config))
    except (StoreError, LogUnavailable) as exc:
        print(f"mcpgw {args.command}: {exc}", file=sys.stderr)
        return 1


async def _main(args: argparse.Namespace, config: GatewayConfig) -> int:
    if args.command == "consume":
        return await _consume(config, args.role, args.metrics_host, args.metrics_port)
    if args.command == "replay":
        return await _replay(config)
    store = store_for(config)
    await store.open()
    try:
        if args.audit_command == "query":
            print(render(await audit_query(store, args.sql), args.format))
            return 0
        if args.audit_command == "verify":
            report = await audit_verify(store, config.audit.checkpoint.key or None, args.stream)
            print(render_report_json(report) if args.json else render_report(report))
            return 0 if report.ok else 3
        summary = await audit_export(store, args.start, args.end, args.tenant, args.principal,
                                     out_path=args.output)
        print(json.dumps({"file": str(args.output), "rows": summary.rows, "sha256": summary.sha256}))
        return 0
    finally:
        await store.close()


def held_by_gateway(config: GatewayConfig) -> int | None:
    """The pid of another process holding the embedded store (0: unknown pid), None when free or a server."""
    store = store_for(config)
    if not isinstance(store, ChdbStore):
        return None
    holder = lock_holder(store.path)
    return None if holder is None or holder == os.getpid() else holder


def _query_through_gateway(args: argparse.Namespace, config: GatewayConfig) -> int:
    try:
        result = operator_cli.admin_query(args, config, args.sql)
    except operator_cli.OperatorError as exc:
        print(f"mcpgw audit query: the audit store is held by a running gateway, so the query goes through its "
              f"admin API, which failed: {exc}", file=sys.stderr)
        return exc.exit_code
    print(render(result, args.format))
    return 0


async def _consume(config: GatewayConfig, role: str = "audit", metrics_host: str | None = None,
                   metrics_port: int | None = None) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with AsyncExitStack() as stack:
        local = await _local_log(config, stack)
        audit: RunningConsumer | None = None
        risk: RunningRisk | None = None
        if role == "risk":
            risk = await start_risk(config, local, stack)
            tasks = risk.tasks
            topics = [*RISK_TOPICS, *(spec.topic for spec in PROJECTION_SPECS)]
        else:
            audit = await start_audit_consumer(config, local, stack)
            tasks = [audit.task]
            topics = [TOPIC_EVENTS]
        host = metrics_host or config.consumers.metrics.host
        port = metrics_port if metrics_port is not None else listener_port(config, role)
        if port is not None:
            try:
                await start_consumer_http(config, role, host, port, local, topics, lambda: in_process(audit, risk),
                                          tasks, stack)
            except OSError as exc:
                print(f"mcpgw consume {role}: cannot serve /metrics on {host}:{port}: {exc.strerror or exc}; "
                      f"free the port, or set consumers.metrics.{role}_port (null: no listener)", file=sys.stderr)
                return 1
        waiter = asyncio.ensure_future(stop.wait())
        await asyncio.wait({waiter, *tasks}, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        return 1 if any(t.done() and not t.cancelled() and t.exception() is not None for t in tasks) else 0


async def _replay(config: GatewayConfig) -> int:
    """Run the audit consumer, then the risk and decision projections, from the beginning under
    groups of their own until each has committed through where its topics ended when the replay
    started (on the embedded log or on Kafka alike)."""
    async with AsyncExitStack() as stack:
        kafka = config.kafka
        local = await _local_log(config, stack)
        run_id = uuid.uuid4().hex[:12]
        ends = await end_offsets(kafka, local, [TOPIC_EVENTS, *(spec.topic for spec in PROJECTION_SPECS)])
        # A group of its own, new each time, reads the whole log; what is already stored is not
        # written again (dedup tokens and the replay guard), so a second replay changes nothing.
        running = await start_audit_consumer(config, local, stack, group=f"audit-replay-{run_id}")
        done = await committed_through(running.audit.metrics, of_topic(ends, TOPIC_EVENTS), REPLAY_TIMEOUT_S,
                                       running.task)
        projected = await replay_projections(kafka, local, running.store, run_id, ends, timeout_s=REPLAY_TIMEOUT_S)
        metrics = running.audit.metrics
        complete = done and all(p.complete for p in projected)
        print(json.dumps({"consumed": metrics.consumed, "inserted": metrics.inserted,
                          "already_stored": metrics.already_written, "complete": complete,
                          "projections": {p.table: p.summary() for p in projected}}))
        return 0 if complete else 1


async def _local_log(config: GatewayConfig, stack: AsyncExitStack) -> EmbeddedLog | None:
    if config.kafka is not None:
        return None
    embedded = config.event_log.embedded if config.event_log is not None and config.event_log.embedded else None
    local = embedded_log(Path(config.data_dir) / "log", embedded or EmbeddedLogConfig())
    await local.open()
    stack.push_async_callback(local.close)
    return local
