"""The gateway recording to Kafka (a real Kafka-protocol broker, Tansu) with its local spool
(DESIGN §2): calls recorded in `mcp.events` on an intact chain; a frozen broker and a crashed,
emptied broker mid-load cost no record: the gateway keeps answering (the events go to the spool
under data_dir/spool), and the spool drains into the broker once it answers again.

Tansu is memory-only and refuses idempotent producers, so `enable_idempotence: false`; without
idempotence a retry after a lost acknowledgement may store an event twice (same seq, same hash:
consumers dedupe by event id), which the checks below allow and count, but never two different
events under one seq. The upstream is `bench.fast_upstream`'s server in the test process, behind a
witness that notes every tools/call it is handed: every one of them must have its
`upstream_message_sent` event in the topic.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from mcp.client.client import Client

from eventlog.spool import SpoolingProducer
from ingress.log_sink import LogEventSink
from schemas.events import EventType, GatewayEvent
from tests.eventlog.kafka_fixture import TansuBroker, require_tansu, running_tansu
from tests.integration.rawmcp import ACCEPT_BOTH, bound_module_tests, modern_body, modern_call, modern_headers
from tests.support.durable import (
    CALL_STEPS,
    ChainReport,
    DurableGateway,
    Load,
    RecordedCall,
    WitnessUpstream,
    durable_gateway,
    gateway_config,
    read_kafka_events,
    recorded_calls,
    verify_chain,
    wait_for,
)

pytestmark = pytest.mark.integration

DRAIN_TIMEOUT_S = 90.0


@pytest.fixture
def broker() -> Iterator[TansuBroker]:
    """A broker of the test's own: the tests freeze, kill and restart it."""
    with running_tansu(require_tansu()) as tansu:
        yield tansu


def kafka_gateway_config(data_dir: Path, upstream_url: str, bootstrap: str) -> dict[str, Any]:
    return gateway_config(data_dir, upstream_url, event_log={"kafka": {
        "bootstrap_servers": bootstrap, "enable_idempotence": False, "request_timeout_ms": 1500,
    }})


def spool_of(gw: DurableGateway) -> SpoolingProducer:
    assert isinstance(gw.sink, LogEventSink)
    assert isinstance(gw.sink.producer, SpoolingProducer)
    return gw.sink.producer


def check_call(call: RecordedCall, agent_id: str | None = None) -> None:
    """One tools/call: its four events (a duplicate delivery of one counts once), in audit order."""
    for step in CALL_STEPS:
        found = {e.seq for e in call.events.get(step, [])}
        assert len(found) == 1, f"call {call.tag}: {len(found)} distinct {step} events"
    received, sent_up, received_up, sent = (call.events[step][0] for step in CALL_STEPS)
    if agent_id is not None:
        assert received.jsonrpc_id == agent_id, (call.tag, received.jsonrpc_id)
    assert sent.jsonrpc_id == received.jsonrpc_id
    assert received_up.jsonrpc_id == sent_up.jsonrpc_id
    assert call.tag in sent.payload.decode()
    assert received.seq < sent_up.seq < received_up.seq < sent.seq, (
        f"call {call.tag}: seqs {[e.seq for e in (received, sent_up, received_up, sent)]} are out of audit order"
    )


def missing_events(calls: dict[str, RecordedCall], tags: Iterable[str]) -> list[str]:
    """Tags among `tags` whose call lacks any of its four events."""
    return sorted(t for t in tags if t not in calls or any(s not in calls[t].events for s in CALL_STEPS))


def chain_problems(report: ChainReport) -> str:
    return "\n".join(report.problems[:20])


class Topic:
    """Re-reads `mcp.events` until a condition holds (the spool drains in the background)."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self.events: list[GatewayEvent] = []
        self.reads = 0

    async def read(self) -> list[GatewayEvent]:
        self.events = [s.event for s in await read_kafka_events(self.bootstrap)]
        self.reads += 1
        return self.events

    async def until_recorded(self, tags: Iterable[str], gw: DurableGateway, what: str) -> dict[str, RecordedCall]:
        wanted = set(tags)
        calls: dict[str, RecordedCall] = {}

        async def done() -> bool:
            nonlocal calls
            drained = not spool_of(gw).spooling  # before the read: then the read sees all it drained
            calls = recorded_calls(await self.read())
            return drained and not missing_events(calls, wanted)

        try:
            await wait_for(done, DRAIN_TIMEOUT_S, what, interval_s=0.5)
        except AssertionError as exc:
            spool = spool_of(gw)
            missing = missing_events(calls, wanted)
            raise AssertionError(
                f"{exc}: {len(missing)} of {len(wanted)} calls lack events in the topic, e.g. {missing[:5]}; "
                f"spooling={spool.spooling} spooled={spool.spooled_total} drained={spool.drained_total}"
            ) from None
        return calls


async def test_calls_are_recorded_in_the_topic_on_an_intact_chain(broker: TansuBroker, tmp_path: Path) -> None:
    topic = Topic(broker.bootstrap)
    async with WitnessUpstream() as upstream:
        config = kafka_gateway_config(tmp_path / "data", upstream.url, broker.bootstrap)
        async with durable_gateway(config) as gw:
            async with aiohttp.ClientSession() as http:

                async def raw(i: int) -> None:
                    tag = f"raw-{i}"
                    answer = await modern_call(http, gw.url, "fast__echo", {"tag": tag}, id=tag)
                    assert answer.status == 200, answer.raw[:300]
                    assert json.loads(answer.result["content"][0]["text"]) == {"tag": tag}

                async def sdk(c: int) -> None:
                    async with Client(gw.url, mode="legacy") as client:
                        for i in range(5):
                            tag = f"sdk-{c}-{i}"
                            result = await client.call_tool("fast__echo", {"tag": tag})
                            assert json.loads(result.content[0].text) == {"tag": tag}  # type: ignore[union-attr]

                await asyncio.gather(*(raw(i) for i in range(40)), *(sdk(c) for c in range(3)))
            tags = [f"raw-{i}" for i in range(40)] + [f"sdk-{c}-{i}" for c in range(3) for i in range(5)]
            calls = await topic.until_recorded(tags, gw, "every call's events in mcp.events")
            stream = gw.sink.chain.stream_id  # type: ignore[attr-defined]
    for tag in tags:
        check_call(calls[tag], agent_id=tag if tag.startswith("raw-") else None)
    report = verify_chain(topic.events)
    assert not report.problems, chain_problems(report)
    assert list(report.streams) == [stream]
    assert report.checkpoints >= 1
    assert not report.explained_gaps
    assert sorted(upstream.tags()) == sorted(tags)


async def not_spooling(gw: DurableGateway, timeout_s: float, what: str) -> None:
    spool = spool_of(gw)

    async def direct() -> bool:
        return not spool.spooling

    try:
        await wait_for(direct, timeout_s, what, interval_s=0.05)
    except AssertionError as exc:
        raise AssertionError(f"{exc}: spooled={spool.spooled_total} drained={spool.drained_total} "
                             f"in flight to the spool={spool._inflight}") from None


async def run_outage(tansu: TansuBroker, tmp_path: Path, outage: str) -> None:
    """Load at concurrency 8; mid-load the broker is frozen (`freeze`) or killed and restarted empty
    (`restart`); the load goes on, then stops; the spool drains; then everything is checked."""
    topic = Topic(tansu.bootstrap)
    async with WitnessUpstream() as upstream:
        config = kafka_gateway_config(tmp_path / "data", upstream.url, tansu.bootstrap)
        async with durable_gateway(config) as gw:
            spool = spool_of(gw)
            # A gateway starts spooling (whatever a previous run left must reach the broker first);
            # a first burst of calls, a pause to let the spool drain, and it appends to Kafka directly.
            warmup = Load(gw.url, concurrency=8, prefix=f"{outage}-warmup", phase="warmup")
            await warmup.start()
            try:
                await warmup.wait_answers(100)
            finally:
                await warmup.finish()
            await not_spooling(gw, 60, "the startup spool to drain once idle")
            spooled_before = spool.spooled_total
            load = Load(gw.url, concurrency=8, prefix=outage, phase="before")
            await load.start()
            try:
                await load.wait_answers(300, phase="before")
                assert not spool.spooling and spool.spooled_total == spooled_before, (
                    "the gateway spooled with a healthy broker: the outage below would not be felt")
                await asyncio.to_thread(tansu.freeze if outage == "freeze" else tansu.kill)
                load.phase = "outage"
                outage_began = asyncio.get_running_loop().time()
                try:
                    # Calls started during the outage are answered: their events went to the spool.
                    await load.wait_answers(300, phase="outage", timeout_s=60)
                finally:
                    await asyncio.to_thread(tansu.thaw if outage == "freeze" else tansu.start)
                outage_s = asyncio.get_running_loop().time() - outage_began
                load.phase = "after"
                await load.wait_answers(300, phase="after", timeout_s=90)
            finally:
                await load.finish()
            spooled = spool.spooled_total - spooled_before
            answered = {c.tag for c in [*warmup.answered(), *load.answered()]}
            unanswered = [c for c in [*warmup.calls.values(), *load.calls.values()] if not c.answered]
            assert not unanswered, f"{len(unanswered)} calls failed, e.g. {[c.error for c in unanswered[:3]]}"
            assert spooled > 0, "nothing was spooled: the outage was not felt"

            if outage == "freeze":
                must_be_recorded = answered
            else:  # the restarted broker is empty: what it had acknowledged before the kill is gone
                must_be_recorded = {c.tag for c in load.answered() if c.phase != "before"}
            calls = await topic.until_recorded(must_be_recorded, gw, "the spool drained into the broker")
            stream = gw.sink.chain.stream_id  # type: ignore[attr-defined]
            drained = spool.drained_total

    # Every answered call has its events, in audit order.
    for tag in must_be_recorded:
        check_call(calls[tag], agent_id=tag)
    # The stream has no gap (none explained by an audit_gap_recorded event either: nothing failed).
    first_seq = None
    if outage == "restart":
        first_seq = {stream: min(calls[t].events[EventType.AGENT_MESSAGE_RECEIVED][0].seq
                                 for t in must_be_recorded)}
    report = verify_chain(topic.events, first_seq=first_seq)
    assert not report.problems, chain_problems(report)
    assert list(report.streams) == [stream]
    assert not report.explained_gaps, f"calls refused during the outage: {report.explained_gaps}"
    # No call was forwarded without a record: every call the upstream was handed has its
    # upstream_message_sent in the topic (from the outage on, for the emptied broker).
    reached = set(upstream.tags())
    assert answered <= reached
    if outage == "restart":
        reached = {t for t in reached if t in load.calls and load.calls[t].phase != "before"}
    unrecorded = sorted(t for t in reached if t not in calls or EventType.UPSTREAM_MESSAGE_SENT not in calls[t].events)
    assert not unrecorded, f"calls the upstream received with no upstream_message_sent recorded: {unrecorded[:10]}"
    assert drained >= spooled, (drained, spooled)
    print(f"{outage} for {outage_s:.1f}s: {len(answered)} calls answered "
          f"({len(load.answered('outage'))} started during the outage), "
          f"{spooled} events spooled, {drained} drained, {report.duplicates} stored twice, "
          f"{sum(len(s) for s in report.streams.values())} distinct events checked")


async def test_frozen_broker_mid_load_loses_no_record(broker: TansuBroker, tmp_path: Path) -> None:
    await run_outage(broker, tmp_path, "freeze")


async def test_broker_killed_and_restarted_empty_mid_load(broker: TansuBroker, tmp_path: Path) -> None:
    await run_outage(broker, tmp_path, "restart")


async def test_under_sustained_load_the_gateway_goes_back_to_appending_to_kafka(
    broker: TansuBroker, tmp_path: Path
) -> None:
    """Spooling is for while the broker cannot take events (DESIGN §2: durable = acks=all). A gateway
    starts spooling, so the spool drainer has to hand back to direct appends once it has caught up,
    also while calls keep coming (a busy gateway is never idle)."""
    async with WitnessUpstream() as upstream:
        config = kafka_gateway_config(tmp_path / "data", upstream.url, broker.bootstrap)
        async with durable_gateway(config) as gw:
            load = Load(gw.url, concurrency=8, prefix="busy")
            await load.start()
            try:
                await load.wait_answers(200)
                await not_spooling(gw, 15, "direct appends to Kafka while the load goes on (the spool holds "
                                           "nothing the drainer has not copied)")
            finally:
                await load.finish()


async def impatient_call(http: aiohttp.ClientSession, url: str, tag: str, timeout_s: float) -> str:
    """A tools/call whose agent hangs up after `timeout_s` (the gateway cancels its handler)."""
    body = json.dumps(modern_body("tools/call", {"name": "fast__echo", "arguments": {"tag": tag}}, tag)).encode()
    headers = {"Content-Type": "application/json", "Accept": ACCEPT_BOTH, **modern_headers("tools/call", "fast__echo")}
    try:
        async with http.post(url, data=body, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
            await resp.read()
            return f"answered {resp.status}"
    except TimeoutError:
        return "gave up"


async def test_agents_hanging_up_during_an_outage_leave_no_unexplained_gap(
    broker: TansuBroker, tmp_path: Path
) -> None:
    """A strict-mode call whose agent leaves while its events wait for a frozen broker is not made,
    and the seq numbers its events took are still accounted for once the broker is back."""
    topic = Topic(broker.bootstrap)
    async with WitnessUpstream() as upstream:
        config = kafka_gateway_config(tmp_path / "data", upstream.url, broker.bootstrap)
        async with durable_gateway(config) as gw:
            async with aiohttp.ClientSession() as http:
                patient = [f"patient-{i}" for i in range(30)]

                async def call(tag: str) -> None:
                    answer = await modern_call(http, gw.url, "fast__echo", {"tag": tag}, id=tag)
                    assert answer.status == 200 and json.loads(answer.result["content"][0]["text"]) == {"tag": tag}

                await asyncio.gather(*(call(t) for t in patient[:10]))
                await not_spooling(gw, 60, "the startup spool to drain once idle")
                await asyncio.to_thread(broker.freeze)
                try:
                    outcomes = await asyncio.gather(*(impatient_call(http, gw.url, f"impatient-{i}", 0.3)
                                                      for i in range(20)))
                    assert set(outcomes) == {"gave up"}, outcomes
                    await asyncio.gather(*(call(t) for t in patient[10:20]))  # answered: spooled
                finally:
                    await asyncio.to_thread(broker.thaw)
                await asyncio.gather(*(call(t) for t in patient[20:]))
            calls = await topic.until_recorded(patient, gw, "the patient calls recorded and the spool drained")
            stream = gw.sink.chain.stream_id  # type: ignore[attr-defined]
    for tag in patient:
        check_call(calls[tag], agent_id=tag)
    assert not [t for t in upstream.tags() if t.startswith("impatient-")], "a call was made after its agent left"
    report = verify_chain(topic.events)
    assert list(report.streams) == [stream]
    assert not report.problems, chain_problems(report)


bound_module_tests(globals(), 420)
