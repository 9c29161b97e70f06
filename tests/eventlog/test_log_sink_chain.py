"""`LogEventSink` on the embedded log: an event that cannot be encoded leaves no hole in the chain.

A record whose events the schema refuses is not written; the numbers its events took are given
back, so the stream stays gap-free and `mcpgw audit verify` finds nothing (a hole no
`audit_gap_recorded` event explains reads as a deleted row). The gateway-level case, a header that
is not UTF-8, is in tests/integration/test_chain_encoding_errors.py.
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import pytest

from consumers.compliance.verify import StreamVerifier
from eventlog.base import TOPIC_EVENTS
from eventlog.embedded import EmbeddedLog
from eventlog.embedded.reader import read_all
from ingress.chain import Chain, CheckpointPolicy
from ingress.log_sink import LogEventSink
from schemas.codec import CodecError, EventCodec, event_hash
from schemas.events import Direction, EventType, GatewayEvent, Kind
from tests.support.durable import verify_chain

KEY = "log-sink-test-key"


def message(call: int, hop: int) -> GatewayEvent:
    body = b'{"call":%d,"hop":%d}' % (call, hop)
    return GatewayEvent(
        EventType.AGENT_MESSAGE_RECEIVED, Kind.REQUEST, Direction.AGENT_TO_GATEWAY, principal="agent",
        session_id=f"s{call % 3}", correlation_id=f"c{call}", method="tools/call", tool="echo",
        jsonrpc_id=str(call), payload=body, payload_sha256=hashlib.sha256(body).hexdigest(),
        payload_size=len(body), gateway_instance="gw-test", detail=f"{call}:{hop}",
    )


async def stored(log: EmbeddedLog) -> list[GatewayEvent]:
    codec = EventCodec()
    return [codec.decode(r.value) for p in await log.partitions(TOPIC_EVENTS) for r in read_all(p, 1 << 20)]


@pytest.mark.parametrize("sealed", [True, False], ids=["seal", "hash-then-encode"])
async def test_an_event_that_cannot_be_encoded_takes_no_number(tmp_path: Path, sealed: bool) -> None:
    async with EmbeddedLog(tmp_path) as log:
        codec = EventCodec()
        chain = Chain(event_hash, CheckpointPolicy(every_events=3, every_seconds=3600, key=KEY.encode()))
        sink = LogEventSink(log.producer(), codec.encode, chain, "gw-test", seal=codec.seal if sealed else None)
        await sink.start()
        await sink.record(message(0, 0), message(0, 1))
        bad = message(1, 1)
        bad.trace_id = "\udcff"  # what aiohttp makes of a header byte that is not UTF-8
        with pytest.raises(CodecError):
            await sink.record(message(1, 0), bad)  # a checkpoint was due: it is given back too
        await asyncio.gather(*(sink.record(message(c, 0), message(c, 1)) for c in range(2, 6)))
        events = await stored(log)
    assert [e.seq for e in events] == list(range(1, len(events) + 1)), "no hole, nothing to explain"
    assert "1:0" not in [e.detail for e in events], "a record is all or nothing"
    verified = verify_chain(events, key=KEY)
    assert verified.problems == []
    assert verified.checkpoints >= 3
    verifier = StreamVerifier(chain.stream_id, KEY)
    for event in events:
        verifier.feed(event)
    assert verifier.finish().counts == {}
