"""Gateways on a durable event log, for tests that read back what was recorded.

- `durable_gateway(config, data_dir)`: a real gateway in this process, on the sink `mcpgw.sinks.open_sink`
  builds from the config (embedded log under data_dir/log, or Kafka + spool under data_dir/spool).
- `GatewayProcess`: `mcpgw up -c FILE` as a subprocess, for tests that SIGKILL it.
- `WitnessUpstream`: `bench.fast_upstream`'s HTTP server (unchanged, imported) in this process,
  noting every `tools/call` it is handed (and optionally checking, before it answers, that the
  gateway already recorded the request: the audit-first promise seen from the upstream's side).
- `read_embedded_events` / `read_kafka_events`: everything in `mcp.events`, decoded.
- `verify_chain`: seq contiguity, hash links, hashes recomputed, signed checkpoints (per stream).
- `Load`: closed-loop tool calls (modern era, raw aiohttp), each with a unique tag, noting which
  were answered and in which phase of the test they started.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
import signal
import subprocess
import sys
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from bench.fast_upstream import HttpServer
from eventlog.base import TOPIC_EVENTS
from eventlog.embedded import EmbeddedLog
from eventlog.embedded.reader import PartitionCursor, read_all
from ingress.chain import GENESIS, sign_head
from ingress.gateway import Gateway
from ingress.http.app import build_app, start_runner
from ingress.sink import EventSink
from mcpgw.config import GatewayConfig, parse_config
from mcpgw.sinks import open_sink
from schemas.codec import EventCodec, event_hash
from schemas.events import EventType, GatewayEvent
from tests.integration.rawmcp import modern_call
from tests.support.gateway import REPO, free_port

CHECKPOINT_KEY = "durable-test-checkpoint-key"
MAX_BODY = 8 * 1024 * 1024


def gateway_config(data_dir: Path, upstream_url: str, **extra: Any) -> dict[str, Any]:
    """A gateway.yaml-shaped dict: one HTTP upstream `fast`, strict audit, frequent signed checkpoints."""
    config: dict[str, Any] = {
        "auth": "none",
        "listen": {"host": "127.0.0.1", "port": free_port()},
        "data_dir": str(data_dir),
        "servers": {"fast": {"url": upstream_url}},
        "audit": {"mode": "strict", "checkpoint": {"every_events": 25, "every_seconds": 3600, "key": CHECKPOINT_KEY}},
    }
    config.update(extra)
    return config


# -- in-process gateway -----------------------------------------------------------------------------


@dataclass
class DurableGateway:
    gateway: Gateway
    sink: EventSink
    config: GatewayConfig
    instance: str

    @property
    def port(self) -> int:
        return self.config.listen.port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    @property
    def data_dir(self) -> Path:
        return Path(self.config.data_dir)


@contextlib.asynccontextmanager
async def durable_gateway(config: dict[str, Any], wait_ready_s: float = 30.0) -> AsyncIterator[DurableGateway]:
    """Run the gateway the way `mcpgw.runner.serve` does (open_sink + build_app), in this event loop."""
    parsed = parse_config(config)
    instance = f"test-{uuid.uuid4().hex[:8]}"
    async with AsyncExitStack() as stack:
        sink = await open_sink(parsed, instance, stack)
        gateway = Gateway(parsed, sink, instance)
        runner = await start_runner(build_app(gateway))
        stack.push_async_callback(runner.cleanup)  # closed before the sink, as in serve()
        site = web.TCPSite(runner, parsed.listen.host, parsed.listen.port)
        await site.start()
        if wait_ready_s:
            ready = await asyncio.gather(*(u.wait_ready(wait_ready_s) for u in gateway.upstreams.values()))
            assert all(ready), f"upstreams not ready within {wait_ready_s:g}s: {gateway.readiness()}"
        yield DurableGateway(gateway, sink, parsed, instance)


# -- gateway subprocess -----------------------------------------------------------------------------


def mcpgw_argv() -> list[str]:
    script = Path(sys.executable).parent / "mcpgw"
    return [str(script)] if script.exists() else [sys.executable, "-m", "mcpgw.cli"]


class GatewayProcess:
    """`mcpgw up -c FILE` (JSON is YAML); output goes to a log file next to the config."""

    def __init__(self, config: dict[str, Any], workdir: Path, name: str = "gateway") -> None:
        self.config = config
        self.config_path = workdir / f"{name}.yaml"
        self.config_path.write_text(json.dumps(config, indent=2) + "\n")
        self.log_path = workdir / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def port(self) -> int:
        return int(self.config["listen"]["port"])

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.base}/mcp"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> None:
        assert self.process is None or self.process.poll() is not None, "already running"
        self.starts += 1
        with self.log_path.open("ab") as log:
            log.write(f"\n===== start #{self.starts} =====\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                [*mcpgw_argv(), "--log-level", "INFO", "up", "-c", str(self.config_path)],
                cwd=REPO, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )  # fmt: skip

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def output_of_last_start(self) -> str:
        return self.output().rsplit(f"===== start #{self.starts} =====", 1)[-1]

    async def wait_ready(self, timeout_s: float = 30.0) -> None:
        """Until /readyz says ready; fails at once if the process exits."""
        assert self.process is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        last = ""
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
            while True:
                code = self.process.poll()
                if code is not None:
                    raise AssertionError(f"mcpgw up exited with {code} while starting:\n{self.output_of_last_start()}")
                try:
                    async with http.get(f"{self.base}/readyz") as resp:
                        state = await resp.json()
                        if resp.status == 200 and state.get("ready"):
                            return
                        last = json.dumps(state)
                except (aiohttp.ClientError, ValueError, TimeoutError) as exc:
                    last = repr(exc)
                if loop.time() > deadline:
                    raise AssertionError(
                        f"gateway not ready within {timeout_s:g}s ({last}):\n{self.output_of_last_start()}")
                await asyncio.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL: a crash; nothing runs in the gateway after this returns."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def terminate(self, timeout_s: float = 30.0) -> int:
        """SIGTERM (clean shutdown); the exit status."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)
                raise AssertionError(f"mcpgw did not stop within {timeout_s:g}s of SIGTERM") from None
        return int(self.process.returncode)

    def wait_exit(self, timeout_s: float = 60.0) -> int:
        assert self.process is not None
        return int(self.process.wait(timeout=timeout_s))

    def stop_quietly(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)


# -- the upstream -----------------------------------------------------------------------------------


def call_tag(body: bytes | dict[str, Any]) -> str | None:
    """The `tag` argument of a tools/call request (every test call carries a unique one)."""
    try:
        message = json.loads(body) if isinstance(body, (bytes, bytearray)) else body
    except ValueError:
        return None
    if not isinstance(message, dict) or message.get("method") != "tools/call":
        return None
    params = message.get("params")
    arguments = params.get("arguments") if isinstance(params, dict) else None
    tag = arguments.get("tag") if isinstance(arguments, dict) else None
    return tag if isinstance(tag, str) else None


Check = Callable[[bytes], Awaitable[str | None]]


class WitnessUpstream:
    """bench.fast_upstream's server, unchanged, behind a handler that notes every tools/call.

    `check(body)`, if given, runs before the request is answered; a string it returns is a
    violation, kept in `violations` (the call is answered anyway, so the load goes on).
    """

    def __init__(self, check: Check | None = None) -> None:
        self.inner = HttpServer()
        self.check = check
        self.received: list[bytes] = []  # tools/call bodies, in arrival order
        self.violations: list[str] = []
        self.port = free_port()
        self._runner: web.ServerRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    def tags(self) -> list[str]:
        return [t for t in (call_tag(b) for b in self.received) if t is not None]

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        if request.method == "POST":
            body = await request.read()  # cached: the inner handler reads it again
            if b'"tools/call"' in body and call_tag(body) is not None:
                self.received.append(body)
                if self.check is not None:
                    problem = await self.check(body)
                    if problem:
                        self.violations.append(problem)
        return await self.inner.handle(request)

    async def start(self) -> None:
        self._runner = web.ServerRunner(web.Server(self._handle, access_log=None), handle_signals=False)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> WitnessUpstream:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


class EmbeddedLogWitness:
    """Reads a live embedded log read-only, as another process would, following its tail.

    `has_upstream_request(body)`: is there an `upstream_message_sent` event whose stored payload is
    exactly `body`? Used by `WitnessUpstream.check` to prove a request was recorded before it arrived.
    """

    def __init__(self, root: Path, topic: str = TOPIC_EVENTS) -> None:
        self.root = root
        self.topic = topic
        self.codec = EventCodec()
        self._log: EmbeddedLog | None = None
        self._cursors: dict[int, PartitionCursor] = {}
        self.sent_payload_sha: set[str] = set()

    async def _catch_up(self) -> None:
        if self._log is None:
            self._log = EmbeddedLog(self.root, read_only=True)
            await self._log.open()
        for plog in await self._log.partitions(self.topic, create=False):
            cursor = self._cursors.get(plog.partition)
            if cursor is None:
                cursor = self._cursors[plog.partition] = PartitionCursor(plog, MAX_BODY, plog.start_offset)
            while records := cursor.read(10_000):
                for record in records:
                    event = self.codec.decode(record.value)
                    if event.event_type is EventType.UPSTREAM_MESSAGE_SENT:
                        self.sent_payload_sha.add(hashlib.sha256(event.payload).hexdigest())

    async def has_upstream_request(self, body: bytes) -> bool:
        await self._catch_up()
        return hashlib.sha256(body).hexdigest() in self.sent_payload_sha

    async def check(self, body: bytes) -> str | None:
        if await self.has_upstream_request(body):
            return None
        return f"the upstream received {call_tag(body)!r} before its upstream_message_sent event was in the log"

    async def close(self) -> None:
        for cursor in self._cursors.values():
            cursor.close()
        self._cursors.clear()
        if self._log is not None:
            await self._log.close()
            self._log = None


# -- reading the log back -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Stored:
    partition: int
    offset: int
    event: GatewayEvent


async def read_embedded_events(root: Path, topic: str = TOPIC_EVENTS) -> list[Stored]:
    """Every event in an embedded log directory (read-only: the writer may be running), in offset order."""
    codec = EventCodec()
    async with EmbeddedLog(root, read_only=True) as log:
        partitions = await log.partitions(topic, create=False)
        return [Stored(r.partition, r.offset, codec.decode(r.value))
                for p in partitions for r in read_all(p, MAX_BODY)]


async def read_kafka_events(bootstrap: str, topic: str = TOPIC_EVENTS, timeout_s: float = 60.0,
                            quiet_ms: int = 1000) -> list[Stored]:
    """Every event in a Kafka topic: read from the beginning until two polls of `quiet_ms` bring nothing.

    Not up to `end_offsets()`: Tansu (0.6) answers ListOffsets(latest) with less than the
    partition's real end (seen: 15 for a partition holding 28 records).
    """
    from aiokafka import AIOKafkaConsumer, TopicPartition  # type: ignore[import-untyped]

    codec = EventCodec()
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None,
                                auto_offset_reset="earliest", request_timeout_ms=5_000,
                                metadata_max_age_ms=1_000, fetch_max_wait_ms=200)
    await consumer.start()
    try:
        async with asyncio.timeout(timeout_s):
            await consumer.topics()  # a metadata refresh
            partitions = consumer.partitions_for_topic(topic)
            if not partitions:
                return []
            tps = [TopicPartition(topic, p) for p in sorted(partitions)]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            out: list[Stored] = []
            empty = 0
            while empty < 2:
                batches = await consumer.getmany(timeout_ms=quiet_ms, max_records=10_000)
                empty = 0 if batches else empty + 1
                for tp, records in batches.items():
                    out.extend(Stored(tp.partition, r.offset, codec.decode(r.value)) for r in records)
            return out
    finally:
        await consumer.stop()


# -- checking the chain -------------------------------------------------------------------------------

_CHECKPOINT = re.compile(r"head seq=(\d+) hash=([0-9a-f]{64}) sig=(\S+)")
_GAP_RANGE = re.compile(r"(\d+)-(\d+)")


@dataclass
class ChainReport:
    streams: dict[str, dict[int, GatewayEvent]] = field(default_factory=dict)  # stream → seq → event
    problems: list[str] = field(default_factory=list)
    duplicates: int = 0  # the same event (same seq and hash) stored more than once (at-least-once delivery)
    checkpoints: int = 0
    explained_gaps: list[tuple[str, int, int]] = field(default_factory=list)

    @property
    def events(self) -> list[GatewayEvent]:
        return [e for by_seq in self.streams.values() for _, e in sorted(by_seq.items())]


def _ranges(seqs: Iterable[int]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for s in sorted(seqs):
        if out and s == out[-1][1] + 1:
            out[-1] = (out[-1][0], s)
        else:
            out.append((s, s))
    return out


def verify_chain(events: Iterable[GatewayEvent], key: str = CHECKPOINT_KEY,
                 first_seq: dict[str, int] | None = None) -> ChainReport:
    """Check every stream: seq 1..max with no gap that an `audit_gap_recorded` event does not explain,
    each hash recomputed, each prev_hash the hash before it, each checkpoint signed over a real head.

    `first_seq[stream]`: check only from that seq on (e.g. a broker that lost older records).
    """
    report = ChainReport()
    for event in events:
        by_seq = report.streams.setdefault(event.stream_id, {})
        seen = by_seq.get(event.seq)
        if seen is None:
            by_seq[event.seq] = event
        elif seen.hash == event.hash and seen.event_id == event.event_id:
            report.duplicates += 1
        else:
            report.problems.append(f"{event.stream_id}: two different events with seq {event.seq}: "
                                   f"{seen.event_type}/{seen.event_id} and {event.event_type}/{event.event_id}")
    for stream, by_seq in report.streams.items():
        start = (first_seq or {}).get(stream, 1)
        explained: set[int] = set()
        for event in by_seq.values():
            if event.event_type is EventType.AUDIT_GAP_RECORDED:
                for a, b in _GAP_RANGE.findall(event.detail):
                    explained.update(range(int(a), int(b) + 1))
                    report.explained_gaps.append((stream, int(a), int(b)))
        top = max(by_seq)
        missing = [s for s in range(start, top + 1) if s not in by_seq]
        unexplained = [s for s in missing if s not in explained]
        if unexplained:
            report.problems.append(f"{stream}: seq missing without an audit_gap_recorded event: "
                                   f"{_ranges(unexplained)[:10]} (of {start}..{top})")
        for seq, event in sorted(by_seq.items()):
            if seq < start:
                continue
            if event.hash != event_hash(event):
                report.problems.append(f"{stream}: seq {seq} ({event.event_type}): hash does not match its content")
            if seq == 1 and event.prev_hash != GENESIS:
                report.problems.append(f"{stream}: seq 1 prev_hash is {event.prev_hash}, not the genesis hash")
            before = by_seq.get(seq - 1)
            if before is not None and event.prev_hash != before.hash:
                report.problems.append(f"{stream}: seq {seq} prev_hash does not link to seq {seq - 1}'s hash")
            if event.event_type is EventType.CHECKPOINT_RECORDED:
                report.checkpoints += 1
                match = _CHECKPOINT.search(event.detail)
                if match is None:
                    report.problems.append(f"{stream}: checkpoint seq {seq} names no head: {event.detail!r}")
                    continue
                head_seq, head_hash, sig = int(match[1]), match[2], match[3]
                head = by_seq.get(head_seq)
                if head_seq >= seq:
                    report.problems.append(f"{stream}: checkpoint seq {seq} names a later head {head_seq}")
                if head is None and head_seq >= start:
                    report.problems.append(f"{stream}: checkpoint seq {seq} names head {head_seq}, not in the log")
                elif head is not None and head.hash != head_hash:
                    report.problems.append(f"{stream}: checkpoint seq {seq} names head {head_seq} with another hash")
                if sig != sign_head(key.encode(), stream, head_seq, head_hash):
                    report.problems.append(f"{stream}: checkpoint seq {seq}: bad signature over head {head_seq}")
    return report


# -- calls and their events ---------------------------------------------------------------------------

CALL_STEPS = (EventType.AGENT_MESSAGE_RECEIVED, EventType.UPSTREAM_MESSAGE_SENT,
              EventType.UPSTREAM_MESSAGE_RECEIVED, EventType.AGENT_MESSAGE_SENT)


@dataclass
class RecordedCall:
    tag: str
    correlation_id: str
    events: dict[EventType, list[GatewayEvent]]

    def one(self, event_type: EventType) -> GatewayEvent:
        found = self.events.get(event_type, [])
        assert len(found) == 1, f"call {self.tag}: {len(found)} {event_type} events"
        return found[0]


def recorded_calls(events: Iterable[GatewayEvent]) -> dict[str, RecordedCall]:
    """tag → the events of the tools/call that carried it, grouped by the correlation id of its
    `agent_message_received` event (also: `upstream_message_sent` events whose payload carries a
    tag, so a call with a missing first event still shows up)."""
    by_correlation: dict[str, dict[EventType, list[GatewayEvent]]] = defaultdict(lambda: defaultdict(list))
    tags: dict[str, str] = {}
    seen_ids: set[tuple[str, int]] = set()
    for event in events:
        if (event.stream_id, event.seq) in seen_ids:
            continue  # a duplicate delivery
        seen_ids.add((event.stream_id, event.seq))
        if event.correlation_id:
            by_correlation[event.correlation_id][event.event_type].append(event)
        if event.event_type in (EventType.AGENT_MESSAGE_RECEIVED, EventType.UPSTREAM_MESSAGE_SENT):
            tag = call_tag(event.payload)
            if tag is not None:
                tags.setdefault(tag, event.correlation_id)
    return {tag: RecordedCall(tag, cid, dict(by_correlation[cid])) for tag, cid in tags.items()}


# -- load -----------------------------------------------------------------------------------------------


@dataclass
class Call:
    tag: str
    phase: str  # the test's phase when the call started
    answered: bool = False
    answered_phase: str = ""
    error: str = ""


@dataclass
class Load:
    """Closed-loop tools/call load: each worker keeps one call in flight until `stop` is set."""

    url: str
    tool: str = "fast__echo"
    concurrency: int = 8
    prefix: str = "call"
    phase: str = "start"
    calls: dict[str, Call] = field(default_factory=dict)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _http: aiohttp.ClientSession | None = None

    def answered(self, phase: str | None = None) -> list[Call]:
        return [c for c in self.calls.values() if c.answered and (phase is None or c.phase == phase)]

    def failed(self) -> list[Call]:
        return [c for c in self.calls.values() if c.error]

    async def _worker(self, w: int) -> None:
        assert self._http is not None
        i = 0
        while not self.stop.is_set():
            tag = f"{self.prefix}-{w}-{i}"
            i += 1
            call = self.calls[tag] = Call(tag, self.phase)
            try:
                answer = await modern_call(self._http, self.url, self.tool, {"tag": tag}, id=tag)
                text = answer.result["content"][0]["text"] if answer.status == 200 and "result" in answer.body else ""
                if answer.body.get("id") == tag and json.loads(text or "{}").get("tag") == tag:
                    call.answered, call.answered_phase = True, self.phase
                else:
                    call.error = f"status {answer.status}: {answer.raw[:300]!r}"
            except (aiohttp.ClientError, AssertionError, ValueError, TimeoutError, OSError) as exc:
                call.error = repr(exc)
                if self.stop.is_set():
                    break
                await asyncio.sleep(0.05)  # a dead gateway: do not spin
            self._changed.set()

    async def start(self) -> None:
        self._http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=self.concurrency * 2))
        self._tasks = [asyncio.create_task(self._worker(w), name=f"load-{w}") for w in range(self.concurrency)]

    async def until(self, predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
        """Wait (bounded) until `predicate()` holds, re-checking after every finished call."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while not predicate():
            if all(t.done() for t in self._tasks):
                for t in self._tasks:
                    t.result()
                raise AssertionError(f"the load stopped before {what}")
            if loop.time() > deadline:
                raise AssertionError(f"timed out after {timeout_s:g}s waiting for {what}")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), 1.0)

    async def wait_answers(self, n: int, phase: str | None = None, timeout_s: float = 60.0) -> None:
        try:
            await self.until(lambda: len(self.answered(phase)) >= n, timeout_s, f"{n} answers")
        except AssertionError as exc:
            failed = self.failed()
            raise AssertionError(
                f"{exc}: only {len(self.answered(phase))} of {n} calls answered (phase {phase}); "
                f"{len(failed)} failed, e.g. {[c.error for c in failed[:3]]}"
            ) from None

    async def finish(self, timeout_s: float = 60.0) -> None:
        """Stop starting calls and wait for those in flight."""
        self.stop.set()
        try:
            async with asyncio.timeout(timeout_s):
                await asyncio.gather(*self._tasks, return_exceptions=True)
        finally:
            for t in self._tasks:
                t.cancel()
            if self._http is not None:
                await self._http.close()

    async def abort(self) -> None:
        self.stop.set()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._http is not None:
            await self._http.close()


async def wait_for(predicate: Callable[[], Awaitable[bool]], timeout_s: float, what: str,
                   interval_s: float = 0.25) -> None:
    """Poll an async condition (e.g. a read of the log) until it holds, bounded."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not await predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g}s waiting for {what}")
        await asyncio.sleep(interval_s)
