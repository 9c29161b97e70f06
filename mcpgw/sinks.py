"""Choosing and opening the event sink the ingress records into, from the config.

`event_log` absent or `embedded`: the durable segment log under `data_dir/log`. `kafka`: Kafka,
with `data_dir/spool` (an embedded log) taking events while the brokers are unreachable.
`memory`: in-memory only, for tests and benchmarks. Every durable sink chains the events and
signs checkpoints with `audit.checkpoint.key`.
"""

from __future__ import annotations

import logging
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

from eventlog.base import Producer
from eventlog.embedded.config import LogLimits, Retention
from eventlog.embedded.log import EmbeddedLog
from eventlog.kafka import KafkaProducer
from eventlog.spool import DRAIN_GROUP, SpoolingProducer
from ingress.chain import Chain, CheckpointPolicy
from ingress.log_sink import LogEventSink
from ingress.sink import EventSink, MemoryEventSink
from mcpgw.config import EmbeddedLogConfig, GatewayConfig
from schemas.codec import EventCodec, event_hash

log = logging.getLogger("mcpgw")


def embedded_log(root: Path, config: EmbeddedLogConfig, flush_on_loop: bool = True) -> EmbeddedLog:
    """`flush_on_loop=False` keeps the disk off the event loop whatever the config says: in async audit
    mode nobody waits for a flush, so blocking the loop for one would only delay the traffic."""
    bound = config.flush_on_loop_max_ms if flush_on_loop else None
    return EmbeddedLog(root, partitions=config.partitions, segment_bytes=config.segment_bytes,
                       retention=Retention(config.retention.max_bytes, config.retention.max_age_s),
                       limits=LogLimits(inline_flush_max_s=None if bound is None else bound / 1000))


@dataclass(frozen=True)
class OpenedSink:
    sink: EventSink
    local_log: EmbeddedLog | None  # the embedded event log, when that is where events go


async def open_sink(config: GatewayConfig, instance: str, stack: AsyncExitStack) -> EventSink:
    """Open the configured sink; `stack` closes it (and the logs under it) in the right order."""
    return (await open_event_log(config, instance, stack)).sink


async def open_event_log(config: GatewayConfig, instance: str, stack: AsyncExitStack) -> OpenedSink:
    event_log = config.event_log
    if event_log is not None and event_log.memory is not None:
        log.warning("event_log: memory: events are NOT durable (tests and benchmarks only)")
        return OpenedSink(MemoryEventSink(capacity=event_log.memory.capacity), None)
    data_dir = Path(config.data_dir)
    strict = config.audit.mode == "strict"
    producer: Producer
    local: EmbeddedLog | None = None
    if event_log is not None and event_log.kafka is not None:
        spool = embedded_log(data_dir / "spool", event_log.spool, strict)
        await spool.open()
        stack.push_async_callback(spool.close)
        producer = SpoolingProducer(KafkaProducer(event_log.kafka), spool.producer(),
                                    spool.consumer(DRAIN_GROUP, ["mcp.events"]))
        where = f"Kafka at {event_log.kafka.bootstrap_servers} (spool: {data_dir / 'spool'})"
    else:
        embedded = event_log.embedded if event_log is not None and event_log.embedded else EmbeddedLogConfig()
        local = embedded_log(data_dir / "log", embedded, strict)
        await local.open()
        stack.push_async_callback(local.close)
        producer = local.producer()
        where = f"the embedded log at {data_dir / 'log'}"
    checkpoint = config.audit.checkpoint
    if not checkpoint.key:
        log.warning("audit.checkpoint.key is empty: chain checkpoints are emitted unsigned")
    chain = Chain(event_hash, CheckpointPolicy(checkpoint.every_events, checkpoint.every_seconds,
                                               checkpoint.key.encode()))
    codec = EventCodec()
    sink = LogEventSink(producer, codec.encode, chain, instance, seal=codec.seal)
    await sink.start()
    stack.push_async_callback(sink.close)
    log.info("recording events to %s (audit mode %s, stream %s)", where, config.audit.mode, chain.stream_id)
    return OpenedSink(sink, local)
