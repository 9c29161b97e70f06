"""The broker's floor under a strict Kafka append, measured beside the gateway's own producer.

A strict-mode call on the Kafka log waits, at concurrency 1, for two acknowledged produces in series
(the request's events before forwarding, the response's before answering). `bench.run` measures one
after every c=1 round against the same broker: the project's own producer (`eventlog.kafka`, the
gateway's settings: acks=all, idempotence off, linger 0) appending one hop (two records of ~800
bytes) to a topic of its own, paced so the broker idles between appends as it does between calls at
c=1. Its median is the round trip plus the producer's own encoding and wake-ups: what a gateway
built on this client cannot go under, not what any client could.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time

RECORD_BYTES = 800  # one event of a tools/call hop
TOPIC = "bench-produce-floor"


async def produce_ms(bootstrap: str, samples: int = 100, gap_s: float = 0.001) -> float:
    """The median of `samples` acknowledged appends of one hop to `bootstrap`'s broker, in ms."""
    from eventlog.kafka import KafkaProducer
    from eventlog.kafka_settings import KafkaSettings

    # Tansu refuses idempotent producers (FIELD-NOTES.md), as for the gateway in bench.run.
    producer = KafkaProducer(KafkaSettings(bootstrap_servers=bootstrap, client_id="bench-floor",
                                           enable_idempotence=False))  # fmt: skip
    await producer.start()
    try:
        hop = [(f"floor-{os.getpid()}".encode(), b"\x5a" * RECORD_BYTES)] * 2
        await producer.append_batch(TOPIC, hop)  # the topic, metadata and connection: not measured
        took: list[float] = []
        for _ in range(samples):
            start = time.perf_counter()
            await producer.append_batch(TOPIC, hop)
            took.append((time.perf_counter() - start) * 1000)
            await asyncio.sleep(gap_s)
        return statistics.median(took)
    finally:
        await producer.close()
