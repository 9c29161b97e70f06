"""The gateway on its embedded durable log (DESIGN §2): every call recorded, in audit-first order,
on an intact signed chain; a SIGKILLed gateway restarts on the same directory without losing
anything it acknowledged; a second gateway on the same directory refuses to start.

The log is read back the way another process would: a read-only `EmbeddedLog` + `EventCodec`.
The upstream is `bench.fast_upstream`'s server run in the test process behind a witness that
notes every tools/call it is handed and, before answering, looks in the log for the request's
`upstream_message_sent` event (so "recorded before forwarded" is observed, not inferred).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
import pytest
from mcp.client.client import Client

from schemas.events import AuditMode, EventType, GatewayEvent
from tests.integration.rawmcp import bound_module_tests, modern_call
from tests.support.durable import (
    CALL_STEPS,
    EmbeddedLogWitness,
    GatewayProcess,
    Load,
    RecordedCall,
    WitnessUpstream,
    durable_gateway,
    gateway_config,
    read_embedded_events,
    recorded_calls,
    verify_chain,
)
from tests.support.gateway import free_port

pytestmark = pytest.mark.integration

RAW_CALLS = 48
SDK_CLIENTS = 4
SDK_CALLS_EACH = 6


def check_call(call: RecordedCall, agent_id: str | None = None) -> None:
    """One tools/call: exactly its four events, matching ids, in audit-first order by seq."""
    for step in CALL_STEPS:
        assert len(call.events.get(step, [])) == 1, (
            f"call {call.tag}: expected one {step} event, found {len(call.events.get(step, []))} "
            f"(events: { {k.value: len(v) for k, v in call.events.items()} })"
        )
    received, sent_up, received_up, sent = (call.one(step) for step in CALL_STEPS)
    if agent_id is not None:
        assert received.jsonrpc_id == agent_id, (call.tag, received.jsonrpc_id)
    assert sent.jsonrpc_id == received.jsonrpc_id, (call.tag, received.jsonrpc_id, sent.jsonrpc_id)
    assert received_up.jsonrpc_id == sent_up.jsonrpc_id, (call.tag, sent_up.jsonrpc_id, received_up.jsonrpc_id)
    assert json.loads(sent_up.payload)["id"] == json.loads(received_up.payload)["id"]
    assert call.tag in sent.payload.decode(), f"call {call.tag}: the answer recorded is not the one given"
    assert len({e.stream_id for e in (received, sent_up, received_up, sent)}) == 1
    # Audit-first: the request was on the log before it went upstream, the upstream's answer before
    # it went back to the agent.
    assert received.seq < sent_up.seq < received_up.seq < sent.seq, (
        f"call {call.tag}: seqs {[e.seq for e in (received, sent_up, received_up, sent)]} are out of audit order"
    )
    assert all(e.audit_mode is AuditMode.STRICT for e in (received, sent_up, received_up, sent))
    assert sent_up.server == "fast" and sent_up.tool == "echo"


def chain_ok(events: list[GatewayEvent], min_checkpoints: int = 1) -> None:
    report = verify_chain(events)
    assert not report.problems, "\n".join(report.problems[:20])
    assert report.duplicates == 0, f"{report.duplicates} events stored twice in the embedded log"
    assert report.checkpoints >= min_checkpoints, f"only {report.checkpoints} signed checkpoints"
    assert not report.explained_gaps, f"audit gaps recorded with a healthy log: {report.explained_gaps}"


async def test_strict_calls_are_all_recorded_in_audit_order_on_a_signed_chain(tmp_path: Path) -> None:
    witness = EmbeddedLogWitness(tmp_path / "log")
    config = gateway_config(tmp_path, "", audit={"mode": "strict", "checkpoint": {
        "every_events": 10, "every_seconds": 3600, "key": "durable-test-checkpoint-key"}})
    try:
        async with WitnessUpstream(witness.check) as upstream:
            config["servers"]["fast"]["url"] = upstream.url
            async with durable_gateway(config) as gw, aiohttp.ClientSession() as http:

                async def raw(i: int) -> None:
                    tag = f"raw-{i}"
                    answer = await modern_call(http, gw.url, "fast__echo", {"tag": tag}, id=tag)
                    assert answer.status == 200, (answer.status, answer.raw[:300])
                    assert json.loads(answer.result["content"][0]["text"]) == {"tag": tag}

                async def sdk(c: int) -> None:
                    async with Client(gw.url, mode="legacy") as client:
                        assert client.protocol_version == "2025-11-25"

                        async def one(i: int) -> None:
                            tag = f"sdk-{c}-{i}"
                            result = await client.call_tool("fast__echo", {"tag": tag})
                            assert not result.is_error
                            assert json.loads(result.content[0].text) == {"tag": tag}  # type: ignore[union-attr]

                        await asyncio.gather(*(one(i) for i in range(SDK_CALLS_EACH)))

                await asyncio.gather(*(raw(i) for i in range(RAW_CALLS)), *(sdk(c) for c in range(SDK_CLIENTS)))
                # Read while the gateway runs (another reader of a live log) ...
                live = await read_embedded_events(gw.data_dir / "log")
    finally:
        await witness.close()
    # ... and after its clean shutdown.
    stored = await read_embedded_events(tmp_path / "log")
    events = [s.event for s in stored]
    assert [s.event.seq for s in live] == [e.seq for e in events[: len(live)]], "the log changed under a reader"

    raw_tags = {f"raw-{i}" for i in range(RAW_CALLS)}
    sdk_tags = {f"sdk-{c}-{i}" for c in range(SDK_CLIENTS) for i in range(SDK_CALLS_EACH)}
    calls = recorded_calls(events)
    assert set(calls) == raw_tags | sdk_tags, f"missing: {sorted((raw_tags | sdk_tags) - set(calls))[:10]}"
    for tag in raw_tags:
        check_call(calls[tag], agent_id=tag)
        assert calls[tag].one(EventType.AGENT_MESSAGE_RECEIVED).protocol_era == "modern"
    for tag in sdk_tags:
        check_call(calls[tag])
        assert calls[tag].one(EventType.AGENT_MESSAGE_RECEIVED).protocol_era == "legacy"
        assert calls[tag].one(EventType.AGENT_MESSAGE_RECEIVED).session_id
    correlation_ids = [c.correlation_id for c in calls.values()]
    assert len(set(correlation_ids)) == len(correlation_ids), "two calls share a correlation id"

    # One process, one stream: seq 1..N, no gap, every link and checkpoint signature valid.
    assert len({e.stream_id for e in events}) == 1
    assert [e.seq for e in events] == list(range(1, len(events) + 1)), "offset order differs from seq order"
    chain_ok(events, min_checkpoints=5)

    # The upstream saw each call once, and each had been recorded before it arrived.
    assert sorted(upstream.tags()) == sorted(raw_tags | sdk_tags)
    assert not upstream.violations, upstream.violations[:5]


async def test_sigkill_under_load_then_restart_on_the_same_data_dir(tmp_path: Path) -> None:
    witness = EmbeddedLogWitness(tmp_path / "data" / "log")
    async with WitnessUpstream(witness.check) as upstream:
        gateway = GatewayProcess(gateway_config(tmp_path / "data", upstream.url), tmp_path)
        load = Load(gateway.url, concurrency=16, prefix="before-kill", phase="before")
        try:
            gateway.start()
            await gateway.wait_ready()
            await load.start()
            await load.wait_answers(1000, timeout_s=120)  # a couple of seconds of load
            gateway.kill()  # mid-load: 16 calls in flight
            killed_pid = gateway.pid
            await load.finish()
            answered_before = {c.tag for c in load.answered()}
            in_flight = {c.tag for c in load.calls.values() if not c.answered}
            assert in_flight, "no call was in flight at the kill"

            gateway.start()  # same config, same data_dir
            await gateway.wait_ready()
            restart_log = gateway.output_of_last_start()
            async with aiohttp.ClientSession() as http:
                tag = "after-restart"
                answer = await modern_call(http, gateway.url, "fast__echo", {"tag": tag}, id=tag)
            assert answer.status == 200 and json.loads(answer.result["content"][0]["text"]) == {"tag": tag}
            assert gateway.terminate() == 0, gateway.output_of_last_start()
        finally:
            gateway.stop_quietly()
            await witness.close()
    assert "Traceback" not in restart_log, restart_log
    assert "locked" not in restart_log.lower(), f"the dead gateway's lock (pid {killed_pid}) was not released"

    events = [s.event for s in await read_embedded_events(tmp_path / "data" / "log")]
    streams = list(dict.fromkeys(e.stream_id for e in events))
    assert len(streams) == 2, f"expected the killed run's stream and the restarted run's, got {len(streams)}"
    first, second = ([e for e in events if e.stream_id == s] for s in streams)
    # The killed run: a gap-free prefix of its stream (a torn tail, if any, was cut on restart).
    assert [e.seq for e in first] == list(range(1, len(first) + 1))
    assert [e.seq for e in second] == list(range(1, len(second) + 1))
    chain_ok(events)

    calls = recorded_calls(events)
    missing = sorted(answered_before - set(calls))
    assert not missing, f"{len(missing)} calls answered before the kill are not in the log: {missing[:10]}"
    for tag in answered_before:
        check_call(calls[tag], agent_id=tag)
    check_call(calls["after-restart"], agent_id="after-restart")
    assert calls["after-restart"].one(EventType.AGENT_MESSAGE_SENT).stream_id == streams[1]
    # Calls cut by the kill: whatever of them was recorded is in audit order; none was answered
    # without its record, and none reached the upstream without its upstream_message_sent.
    for tag in in_flight & set(calls):
        seqs = [calls[tag].events[s][0].seq for s in CALL_STEPS if s in calls[tag].events]
        assert seqs == sorted(seqs), (tag, seqs)
    reached_upstream = set(upstream.tags())
    unrecorded = sorted(t for t in reached_upstream
                        if t not in calls or EventType.UPSTREAM_MESSAGE_SENT not in calls[t].events)
    assert not unrecorded, f"calls the upstream received with no upstream_message_sent in the log: {unrecorded[:10]}"
    assert not upstream.violations, upstream.violations[:5]
    assert answered_before <= reached_upstream


async def test_a_second_gateway_on_the_same_data_dir_refuses_to_start(tmp_path: Path) -> None:
    async with WitnessUpstream() as upstream:
        config = gateway_config(tmp_path / "data", upstream.url)
        first = GatewayProcess(config, tmp_path, name="first")
        second = GatewayProcess({**config, "listen": {"host": "127.0.0.1", "port": free_port()}}, tmp_path,
                                name="second")
        try:
            first.start()
            await first.wait_ready()
            second.start()
            code = await asyncio.to_thread(second.wait_exit, 60)
            output = second.output_of_last_start()
            assert code != 0, output
            assert "Traceback" not in output, output
            locked = f"event log {tmp_path / 'data' / 'log'} is locked by another writer (pid {first.pid})"
            assert locked in output, output
            # The first one is untouched and still records.
            async with aiohttp.ClientSession() as http:
                answer = await modern_call(http, first.url, "fast__echo", {"tag": "still-serving"}, id="s")
                assert answer.status == 200, answer.raw[:300]
                with pytest.raises(aiohttp.ClientConnectionError):
                    await modern_call(http, second.url, "fast__echo", {"tag": "nobody"}, id="n")
            assert first.terminate() == 0
        finally:
            first.stop_quietly()
            second.stop_quietly()
    events = [s.event for s in await read_embedded_events(tmp_path / "data" / "log")]
    assert len({e.stream_id for e in events}) == 1, "the refused gateway wrote to the log"
    check_call(recorded_calls(events)["still-serving"], agent_id="s")
    chain_ok(events, min_checkpoints=0)


bound_module_tests(globals(), 240)
