"""ChdbStore beyond the contract: the directory lock, one engine per process, the event loop stays free."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from consumers.store.base import EVENTS_TABLE, StoreUnavailable
from consumers.store.chdb_store import ChdbStore, lock_holder
from consumers.store.rows import event_row
from tests.schemas.example_values import gateway_events
from tests.store.conftest import ROOT

pytestmark = pytest.mark.integration

HOLDER = textwrap.dedent("""
    import asyncio, sys
    from consumers.store.chdb_store import ChdbStore

    async def main() -> None:
        store = ChdbStore(sys.argv[1])
        await store.open()
        print("OPEN", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        await store.close()

    asyncio.run(main())
""")


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[ChdbStore]:
    opened = ChdbStore(tmp_path / "chdb")
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
def held_elsewhere(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    """A store directory another process (a stand-in for a running gateway) has open."""
    path = tmp_path / "held"
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], cwd=ROOT, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdin is not None
    try:
        assert proc.stdout.readline().strip() == "OPEN"
        yield path, proc.pid
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)
        proc.stdout.close()


async def test_a_store_another_process_holds_is_unavailable(held_elsewhere: tuple[Path, int]) -> None:
    path, pid = held_elsewhere
    assert lock_holder(path) == pid
    with pytest.raises(StoreUnavailable, match=f"locked by process {pid}: the gateway is running; query through "
                                               "its admin API") as raised:
        await ChdbStore(path).open()
    assert raised.value.retryable


async def test_a_released_store_opens(held_elsewhere: tuple[Path, int], tmp_path: Path) -> None:
    free = tmp_path / "free"
    store = ChdbStore(free)
    await store.open()
    await store.close()
    assert lock_holder(free) is None


async def test_one_directory_per_process(store: ChdbStore, tmp_path: Path) -> None:
    with pytest.raises(StoreUnavailable, match="one per process"):
        await ChdbStore(tmp_path / "other").open()
    await store.close()
    other = ChdbStore(tmp_path / "other")
    await other.open()  # once the first engine is closed, another directory can be opened
    await other.close()


async def test_stores_on_one_directory_share_the_engine(store: ChdbStore) -> None:
    second = ChdbStore(store.path)
    await second.open()
    try:
        await store.insert(EVENTS_TABLE, [event_row(e) for e in gateway_events()], "t:0:0-12")
        assert (await second.query("SELECT count() FROM audit.events")).rows == [(len(gateway_events()),)]
    finally:
        await second.close()


async def test_a_closed_store_is_unavailable(store: ChdbStore) -> None:
    await store.close()
    with pytest.raises(StoreUnavailable, match="not open"):
        await store.query("SELECT 1")


async def test_a_long_query_blocks_neither_the_loop_nor_ingestion(store: ChdbStore) -> None:
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticker = asyncio.create_task(tick())
    slow = asyncio.create_task(store.query("SELECT sleep(1)"))
    await asyncio.sleep(0.1)
    started = time.monotonic()
    await store.insert(EVENTS_TABLE, [event_row(e) for e in gateway_events()], "t:0:0-12")
    inserted_after = time.monotonic() - started
    await slow
    ticker.cancel()
    assert inserted_after < 0.8, "the insert waited for the reader's query"
    assert ticks > 50, "the event loop was blocked"
