"""SIGKILL the audit consumer process mid-stream; the restarted one leaves exactly one row per event.

Real processes, a real embedded log and chDB (through the store's chDB backend): the child is
tests/consumers/crash_child.py.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from eventlog.embedded import EmbeddedLog
from tests.consumers.conftest import chdb_store_factory
from tests.consumers.support import append_events, make_events

REPO = Path(__file__).resolve().parents[2]
N = 3000

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _needs_chdb() -> None:
    factory, reason = chdb_store_factory()
    if factory is None:
        pytest.skip(f"needs the chDB store to count rows after a crash: {reason}")


def spawn(log_dir: Path, store_dir: Path, max_rows: int, die_after: int = 0) -> subprocess.Popen[str]:
    argv = [sys.executable, "-m", "tests.consumers.crash_child", str(log_dir), str(store_dir), str(max_rows), str(N)]
    if die_after:
        argv.append(str(die_after))
    return subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(child: subprocess.Popen[str], timeout_s: float = 120) -> str:
    out, err = child.communicate(timeout=timeout_s)
    assert child.returncode == 0, f"consumer failed ({child.returncode}):\n{err[-3000:]}"
    assert out.rstrip().endswith("done"), out[-500:]
    return out


async def prefill(tmp_path: Path) -> tuple[Path, Path, list[str]]:
    events = make_events(N, sessions=16, checkpoint_every=100)
    async with EmbeddedLog(tmp_path / "log", partitions=2) as log:
        await append_events(log.producer(), events)
    return tmp_path / "log", tmp_path / "store", [e.event_id for e in events]


async def counts(store_dir: Path) -> tuple[int, int, int]:
    factory, _ = chdb_store_factory()
    store = factory(store_dir)
    await store.open()
    try:
        events = (await store.query("SELECT count(), uniqExact(event_id) FROM audit.events")).rows[0]
        checkpoints = (await store.query("SELECT count() FROM audit.checkpoints")).rows[0][0]
        return int(events[0]), int(events[1]), int(checkpoints)
    finally:
        await store.close()


async def test_sigkill_mid_stream_then_restart_leaves_exactly_one_row_per_event(tmp_path: Path) -> None:
    log_dir, store_dir, _ = await prefill(tmp_path)
    child = spawn(log_dir, store_dir, max_rows=97)
    assert child.stdout is not None
    while True:  # kill once a few batches are in, while more are being read, inserted and committed
        line = child.stdout.readline()
        assert line, f"the consumer exited early: {child.stderr.read() if child.stderr else ''}"
        inserted, _committed = map(int, line.split())
        if inserted >= N // 3:
            child.send_signal(signal.SIGKILL)
            child.wait()
            break
    finish(spawn(log_dir, store_dir, max_rows=97))
    assert await counts(store_dir) == (N, N, N // 100)


async def test_death_between_insert_and_commit_with_batches_cut_differently_on_restart(tmp_path: Path) -> None:
    # The restart cuts its batches elsewhere (100 vs 70 rows), so the replayed batch's dedup token
    # differs from the one already written: only the replay guard keeps the rows single.
    log_dir, store_dir, _ = await prefill(tmp_path)
    dying = spawn(log_dir, store_dir, max_rows=70, die_after=5)
    out, _ = dying.communicate(timeout=120)
    assert dying.returncode == -signal.SIGKILL and "dying after" in out
    uncommitted_rows = (await counts(store_dir))[0]
    assert uncommitted_rows > 0
    finish(spawn(log_dir, store_dir, max_rows=100))
    assert await counts(store_dir) == (N, N, N // 100)
