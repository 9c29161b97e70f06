"""A standalone consumer's /metrics and /healthz: `mcpgw consume audit` as a real process against a
real broker (Tansu) and a real chDB store, scraped over HTTP; and the token rule off loopback."""

from __future__ import annotations

import asyncio
import hashlib
import signal
import subprocess
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from consumers.pipeline import ConsumerMetrics
from eventlog.base import TOPIC_DEAD_LETTER, TOPIC_EVENTS, TopicPartition
from eventlog.kafka import KafkaProducer
from eventlog.kafka_admin import ensure_topics
from mcpgw.config import GatewayConfig, parse_config
from mcpgw.consumer_http import ConsumerHttp, start_consumer_http
from tests.consumers.support import append_events, kafka_chdb_config, make_events
from tests.eventlog.kafka_fixture import TansuBroker, free_port, kafka_settings
from tests.support.durable import mcpgw_argv, wait_for
from tests.support.gateway import REPO

pytestmark = pytest.mark.integration

TOKEN = "consumer-metrics-test-token"


def samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """The samples named `name` in a /metrics answer, by their sorted labels."""
    return {tuple(sorted(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples if s.name == name}


async def scrape(http: aiohttp.ClientSession, base: str, **headers: str) -> str:
    async with http.get(f"{base}/metrics", headers=headers) as response:
        assert response.status == 200, await response.text()
        return await response.text()


async def test_consume_audit_serves_metrics_that_move_with_the_log_and_answers_healthz(
        tmp_path: Path, tansu_private: TansuBroker) -> None:
    settings = kafka_settings(tansu_private.bootstrap)
    await ensure_topics(settings, [TOPIC_EVENTS, TOPIC_DEAD_LETTER])
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    config = kafka_chdb_config(tmp_path, settings.bootstrap_servers, "mcpgw-consume-test",
                               consumers={"metrics": {"audit_port": port}})
    output = (tmp_path / "consume.log").open("w+")
    process = subprocess.Popen([*mcpgw_argv(), "consume", "audit", "-c", str(config)],  # noqa: ASYNC220 (a daemon)
                               cwd=REPO, stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)  # fmt: skip
    producer = KafkaProducer(settings)
    try:
        async with aiohttp.ClientSession() as http:
            async def healthy() -> bool:
                assert process.poll() is None, (tmp_path / "consume.log").read_text()
                try:
                    async with http.get(f"{base}/healthz") as response:
                        return response.status == 200 and (await response.json())["status"] == "ok"
                except aiohttp.ClientConnectionError:
                    return False

            await wait_for(healthy, 60, "the consumer's /healthz", interval_s=0.1)
            before = await scrape(http, base)
            assert samples(before, "mcpgw_consumer_consumed_total") == {(("consumer", "audit"),): 0.0}

            await producer.start()
            events = make_events(50, sessions=5)
            await append_events(producer, events[:30])
            await append_events(producer, events[30:])

            async def stored_everything() -> bool:
                text = await scrape(http, base)
                return (samples(text, "mcpgw_consumer_inserted_total") == {(("consumer", "audit"),): 50.0}
                        and sum(samples(text, "mcpgw_consumer_committed_offset").values()) == 50
                        and sum(samples(text, "mcpgw_log_end_offset").values()) == 50)

            await wait_for(stored_everything, 60, "the inserted counter, the commits and the log's ends to reach 50",
                           interval_s=0.1)
            after = await scrape(http, base)
            assert samples(after, "mcpgw_consumer_consumed_total") == {(("consumer", "audit"),): 50.0}
            assert samples(after, "mcpgw_consumer_commits_total")[(("consumer", "audit"),)] >= 1
            ends = samples(after, "mcpgw_log_end_offset")
            assert {dict(labels)["topic"] for labels in ends} == {TOPIC_EVENTS}
            committed = samples(after, "mcpgw_consumer_committed_offset")
            for labels, end in ends.items():  # lag 0: each partition's end minus its committed offset
                assert committed.get((("consumer", "audit"), *labels), 0.0) == end
            assert samples(after, "process_cpu_seconds_total")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0, (tmp_path / "consume.log").read_text()
    finally:
        await producer.close()
        if process.poll() is None:
            process.kill()
            process.wait()
        output.close()


@asynccontextmanager
async def served(http_app: web.Application) -> AsyncIterator[str]:
    runner = web.AppRunner(http_app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def token_config(embedded_root: Path) -> GatewayConfig:
    return parse_config({"auth": "none", "servers": {}, "data_dir": str(embedded_root),
                         "admin": {"token_sha256": hashlib.sha256(TOKEN.encode()).hexdigest()}})


async def test_off_loopback_metrics_want_the_admin_token_and_healthz_does_not(tmp_path: Path) -> None:
    metrics = ConsumerMetrics(consumed=7, committed={TopicPartition(TOPIC_EVENTS, 0): 7})
    config = token_config(tmp_path)
    stopped: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    off_loopback = ConsumerHttp(config, "audit", None, [], lambda: {"audit": metrics}, [stopped],
                                loopback=False)
    async with served(off_loopback.app()) as base, aiohttp.ClientSession() as http:
        async with http.get(f"{base}/metrics") as response:
            assert response.status == 401
        async with http.get(f"{base}/metrics", headers={"Authorization": "Bearer wrong"}) as response:
            assert response.status == 401
            assert response.headers["WWW-Authenticate"] == 'Bearer realm="mcpgw-admin"'
        async with http.get(f"{base}/metrics", headers={"Authorization": TOKEN}) as response:
            assert response.status == 401  # the ingress's rule: the Bearer scheme is required...
        assert samples(await scrape(http, base, Authorization=f"bearer {TOKEN}"),  # ...in any case
                       "mcpgw_consumer_consumed_total") == {(("consumer", "audit"),): 7.0}
        text = await scrape(http, base, Authorization=f"Bearer {TOKEN}")
        assert samples(text, "mcpgw_consumer_consumed_total") == {(("consumer", "audit"),): 7.0}
        async with http.get(f"{base}/healthz") as response:
            assert response.status == 200
        stopped.set_result(None)  # a consumer task ended: the process is about to exit
        async with http.get(f"{base}/healthz") as response:
            assert response.status == 503 and (await response.json())["status"] == "stopped"

    # On loopback no token is asked for, as on the ingress.
    async with AsyncExitStack() as stack, aiohttp.ClientSession() as http:
        port = free_port()
        [address] = await start_consumer_http(config, "audit", "127.0.0.1", port, None, [],
                                              lambda: {"audit": metrics}, [], stack)
        assert address == f"http://127.0.0.1:{port}"
        assert samples(await scrape(http, address), "mcpgw_consumer_commits_total") == {(("consumer", "audit"),): 0.0}
