"""The durable event sink: events chained, encoded as Avro and appended to the event log.

`record()` returns only when the log holds the events durably (acks=all on Kafka; fsync on the
embedded log), which is what strict audit mode waits for. Events are numbered in the order they
will be written. When the log refuses a batch, the numbers it took are not silently skipped: the
next batch that is written starts with an `audit_gap_recorded` event naming the refused range, so
`mcpgw audit verify` can tell an acknowledged outage (whose calls were refused) from tampering.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Sequence

from eventlog.base import TOPIC_EVENTS, LogError, Producer, SubmittingProducer
from ingress.chain import Chain
from ingress.sink import SinkUnavailable
from schemas.events import Direction, EventType, GatewayEvent, Kind, Outcome, new_event_id

log = logging.getLogger("mcpgw.audit")


def _retrieved(task: asyncio.Future[None]) -> None:
    if not task.cancelled():
        task.exception()  # seen by the awaiting caller, or (caller gone) already in the refused ranges


def event_key(event: GatewayEvent) -> bytes:
    """Kafka key: the conversation, so its events stay in order on one partition."""
    return (event.session_id or event.correlation_id or event.stream_id).encode()


class LogEventSink:
    """`seal`, when given, hashes and encodes an event in one go (`EventCodec.seal`); else the chain's
    hasher hashes and `encode` encodes."""

    def __init__(self, producer: Producer, encode: Callable[[GatewayEvent], bytes], chain: Chain,
                 instance: str, topic: str = TOPIC_EVENTS,
                 seal: Callable[[GatewayEvent], bytes] | None = None) -> None:
        self.producer = producer
        self._encode = encode
        self._seal = seal
        self.chain = chain
        self.instance = instance
        self.topic = topic
        self._refused: list[tuple[int, int]] = []
        self.closed = False
        self._submit = producer.submit_batch if isinstance(producer, SubmittingProducer) else None

    async def start(self) -> None:
        await self.producer.start()

    async def record(self, *events: GatewayEvent) -> None:
        if self.closed:
            raise SinkUnavailable("the event log is closed")
        chain, seal = self.chain, self._seal
        mark = chain.mark()
        batch: Sequence[GatewayEvent] = events
        reported = len(self._refused)
        if reported or chain.checkpoint_due():
            batch = [self._gap_event()] if reported else []
            batch.extend(events)
            if chain.checkpoint_due():
                batch.append(chain.checkpoint(self.instance))
        first = chain.seq + 1
        records: list[tuple[bytes | None, bytes]]
        try:
            if seal is not None:
                stamp = chain.stamp_encoded
                # `event_key`, inline (a call per event less), and read before the stamp as there.
                records = [
                    ((event.session_id or event.correlation_id or event.stream_id).encode(), stamp(event, seal))
                    for event in batch
                ]
            else:
                records = []
                for event in batch:
                    chain.stamp(event)
                    records.append((event_key(event), self._encode(event)))
        except Exception:
            # A value the schema refuses (e.g. a lone surrogate, which is what aiohttp makes of a
            # header byte that is not UTF-8): nothing was handed on, so the numbers are given back;
            # kept, they would be a hole in the chain that no gap event explains.
            chain.rewind(mark)
            raise
        # The numbers are taken: the append must run to its end even if the caller gives up (an agent
        # hanging up), or a refusal would leave a hole no gap event explains.
        last = chain.seq
        if self._submit is not None:
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            try:
                taken = self._submit(self.topic, records,
                                     functools.partial(self._settled, waiter, first, last, reported))
            except LogError as exc:
                self._refused.append((first, last))
                raise SinkUnavailable(f"the event log refused the events: {exc}") from exc
            if taken:
                # A cancelled caller cancels only this waiter: `_settled` still accounts for the batch.
                await waiter
                return
        append = asyncio.ensure_future(self._append(records, first, last, reported))
        append.add_done_callback(_retrieved)
        await asyncio.shield(append)

    async def _append(self, records: list[tuple[bytes | None, bytes]], first: int, last: int, reported: int) -> None:
        try:
            await self.producer.append_batch(self.topic, records)
        except LogError as exc:  # retryable or not, the numbers it took must be explained
            self._refused.append((first, last))
            raise SinkUnavailable(f"the event log refused the events: {exc}") from exc
        # Ranges refused while this batch was in flight stay for the next one.
        del self._refused[:reported]

    def _settled(self, waiter: asyncio.Future[None], first: int, last: int, reported: int,
                 error: LogError | None) -> None:
        if error is None:
            del self._refused[:reported]  # as in `_append`
            if not waiter.done():
                waiter.set_result(None)
            return
        self._refused.append((first, last))
        if not waiter.done():
            waiter.set_exception(SinkUnavailable(f"the event log refused the events: {error}"))

    def _gap_event(self) -> GatewayEvent:
        ranges = ", ".join(f"{a}-{b}" for a, b in self._refused)
        log.warning("recording refused event ranges %s: their calls were not made", ranges)
        return GatewayEvent(
            event_type=EventType.AUDIT_GAP_RECORDED, kind=Kind.LIFECYCLE, direction=Direction.INTERNAL,
            outcome=Outcome.REFUSED, event_id=new_event_id(), ts_us=time.time_ns() // 1000,
            gateway_instance=self.instance, principal="gateway", transport="internal",
            detail=f"seq {ranges} were refused by the event log; the actions they describe were not taken",
        )

    async def close(self) -> None:
        self.closed = True
        await self.producer.close()
