"""Consumer lag from one scrape of `mcpgw up`'s /metrics: the embedded log's end offsets next to the
in-process consumers' committed offsets (the expression of docs/consumers.md).

`mcpgw up` runs as a real process on an embedded log of two partitions per topic, with a real MCP
server behind it; /metrics is scraped over HTTP and parsed with prometheus_client's text parser.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from eventlog.base import TOPIC_EVENTS
from tests.integration.rawmcp import modern_call
from tests.support.admin import assert_ok
from tests.support.durable import GatewayProcess
from tests.support.gateway import free_port, time_server

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

TOOL = "time__get_current_time"
PARTITIONS = 2
Offsets = dict[tuple[str, int], float]


class Scrape:
    def __init__(self, text: str) -> None:
        families = list(text_string_to_metric_families(text))
        self.names = [family.name for family in families]
        by_name = {family.name: family for family in families}
        self.ends: Offsets = {(s.labels["topic"], int(s.labels["partition"])): s.value
                              for s in by_name["mcpgw_log_end_offset"].samples}
        self.committed: dict[str, Offsets] = {}
        for s in by_name["mcpgw_consumer_committed_offset"].samples:
            group = self.committed.setdefault(s.labels["consumer"], {})
            group[(s.labels["topic"], int(s.labels["partition"]))] = s.value


async def scrape(http: aiohttp.ClientSession, base: str) -> Scrape:
    async with http.get(f"{base}/metrics") as resp:
        assert resp.status == 200
        text = await resp.text()
    # Each family once: a family registered twice would be exposed twice per scrape.
    types = Counter(line.split()[2] for line in text.splitlines() if line.startswith("# TYPE "))
    assert not [name for name, n in types.items() if n > 1], types
    return Scrape(text)


def events_of(offsets: Offsets) -> Offsets:
    return {tp: value for tp, value in offsets.items() if tp[0] == TOPIC_EVENTS}


def check_consistent(s: Scrape) -> None:
    assert len(s.names) == len(set(s.names)), s.names
    for consumer, offsets in s.committed.items():
        for tp, committed in offsets.items():
            assert tp in s.ends, f"{consumer} committed on {tp}, which has no end offset: {s.ends}"
            assert s.ends[tp] >= committed, f"{consumer} on {tp}: end {s.ends[tp]} < committed {committed}"


async def caught_up(http: aiohttp.ClientSession, base: str) -> Scrape:
    """Scrape until the audit and risk groups have committed every event offset; that scrape."""
    for _ in range(240):
        latest = await scrape(http, base)
        check_consistent(latest)
        ends = events_of(latest.ends)
        if all(latest.committed.get(group, {}).get(tp, 0) == end
               for group in ("audit", "risk") for tp, end in ends.items() if end):
            return latest
        await asyncio.sleep(0.25)
    raise AssertionError(f"consumers not caught up: ends {latest.ends}, committed {latest.committed}")


async def test_mcpgw_up_serves_log_end_offsets_next_to_committed_offsets(tmp_path: Path) -> None:
    config = {"auth": "none", "listen": {"host": "127.0.0.1", "port": free_port()}, "data_dir": str(tmp_path / "data"),
              "event_log": {"embedded": {"partitions": PARTITIONS}}, "servers": {"time": time_server()}}
    process = GatewayProcess(config, tmp_path)
    process.start()
    try:
        await process.wait_ready(60)
        async with aiohttp.ClientSession() as http:
            first = await scrape(http, process.base)
            check_consistent(first)
            # Every partition of the topics the process opened at start: the events, what the risk
            # consumer writes, and the decisions the ingress rebuilt its blocklist from.
            assert {tp for tp in first.ends if tp[0] == TOPIC_EVENTS} == {(TOPIC_EVENTS, p) for p in range(PARTITIONS)}
            assert {"mcp.risk", "mcp.decisions"} <= {topic for topic, _ in first.ends}

            for i in range(6):
                assert_ok(await modern_call(http, process.url, TOOL, {"timezone": "UTC"}, id=f"lag-{i}"))
            after = await scrape(http, process.base)
            check_consistent(after)
            # Strict audit mode: every call's events are durable before its answer, so already counted.
            assert sum(events_of(after.ends).values()) >= sum(events_of(first.ends).values()) + 6 * 2

            # Until the audit and risk consumers have committed everything the calls wrote: lag 0.
            latest = await caught_up(http, process.base)
            ends = events_of(latest.ends)
            assert sum(ends.values()) >= sum(events_of(after.ends).values())  # ends never go back

        # Restarted on the same log: the ends are recovered, and each group's committed offsets show
        # from its start (loaded with the group), not only after its next commit.
        await asyncio.to_thread(process.terminate)
        process.start()
        await process.wait_ready(60)
        async with aiohttp.ClientSession() as http:
            for _ in range(240):
                again = await scrape(http, process.base)
                check_consistent(again)
                if {"audit", "risk"} <= set(again.committed):
                    break
                await asyncio.sleep(0.25)
            assert all(again.ends[tp] >= end for tp, end in latest.ends.items()), (latest.ends, again.ends)
            for group in ("audit", "risk"):
                assert all(again.committed[group].get(tp, 0) >= end for tp, end in ends.items() if end), again.committed
    finally:
        await asyncio.to_thread(process.terminate)
        process.stop_quietly()
