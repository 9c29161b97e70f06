"""Consumer lag from one scrape of `mcpgw up`'s /metrics on Kafka (a real broker, Tansu): the topics'
end offsets, read from the broker when /metrics is scraped, next to the in-process consumers'
committed offsets (the expression of docs/consumers.md); the embedded version is
test_up_lag_metrics.py, whose parsing and checks this reuses.

Tansu is memory-only and refuses idempotent producers, so `enable_idempotence: false`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from eventlog.base import TOPIC_DECISIONS, TOPIC_EVENTS, TOPIC_RISK
from eventlog.kafka_settings import default_topics
from tests.eventlog.kafka_fixture import TansuBroker, require_tansu, running_tansu
from tests.integration.rawmcp import modern_call
from tests.integration.test_up_lag_metrics import TOOL, caught_up, check_consistent, events_of, scrape
from tests.support.admin import assert_ok
from tests.support.durable import GatewayProcess
from tests.support.gateway import free_port, time_server

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

CALLS = 6


@pytest.fixture
def broker() -> Iterator[TansuBroker]:
    """A broker of the test's own: the test freezes it."""
    with running_tansu(require_tansu()) as tansu:
        yield tansu


async def test_mcpgw_up_on_kafka_serves_log_end_offsets_next_to_committed_offsets(
        tmp_path: Path, broker: TansuBroker) -> None:
    config = {"auth": "none", "listen": {"host": "127.0.0.1", "port": free_port()}, "data_dir": str(tmp_path / "data"),
              "event_log": {"kafka": {"bootstrap_servers": broker.bootstrap, "enable_idempotence": False,
                                      "request_timeout_ms": 5000,
                                      "consumer": {"session_timeout_ms": 6000, "heartbeat_interval_ms": 500}}},
              "servers": {"time": time_server()}}
    process = GatewayProcess(config, tmp_path)
    process.start()
    try:
        await process.wait_ready(60)
        async with aiohttp.ClientSession() as http:
            for i in range(CALLS):
                assert_ok(await modern_call(http, process.url, TOOL, {"timezone": "UTC"}, id=f"lag-{i}"))
            first = await scrape(http, process.base)
            check_consistent(first)
            # Every partition of the topics the in-process consumers read, as the broker has them.
            partitions = {topic: default_topics()[topic].partitions for topic in (TOPIC_EVENTS, TOPIC_RISK,
                                                                                  TOPIC_DECISIONS)}
            for topic, count in partitions.items():
                assert {p for t, p in first.ends if t == topic} == set(range(count)), (topic, first.ends)
            # Strict audit mode: every call's events are on the broker before its answer.
            assert sum(events_of(first.ends).values()) >= CALLS * 2, first.ends

            # Until the audit and risk consumers have committed everything the calls wrote: lag 0.
            latest = await caught_up(http, process.base)
            ends = events_of(latest.ends)
            assert all(ends[tp] >= end for tp, end in events_of(first.ends).items())  # ends never go back

            # A broker that does not answer: the scrape still answers (after at most the read's
            # timeout), with every other family, and no end offsets rather than stale ones.
            with broker.frozen():
                await asyncio.sleep(1.1)  # past the one-read-per-second window of the last scrape
                async with http.get(f"{process.base}/metrics") as resp:
                    assert resp.status == 200
                    families = {f.name: f for f in text_string_to_metric_families(await resp.text())}
            assert families["mcpgw_log_end_offset"].samples == []
            assert "mcpgw_consumer_committed_offset" in families and "process_cpu_seconds" in families
    finally:
        await asyncio.to_thread(process.terminate)
        process.stop_quietly()
