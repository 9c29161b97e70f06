"""Embedded log across real processes: SIGKILL while appending, the single-writer lock, readers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

from eventlog.embedded import EmbeddedLog
from tests.eventlog.backends import read_n, read_until_quiet

REPO = Path(__file__).resolve().parents[2]

# Eight tasks append in a loop and print "worker:seq" once each append has returned (is durable).
APPENDER = """
import asyncio, sys
from pathlib import Path
from eventlog.embedded import EmbeddedLog

async def main() -> None:
    log = EmbeddedLog(Path(sys.argv[1]), partitions=2, segment_bytes=64 * 1024)
    await log.open()
    producer = log.producer()

    async def worker(w: int) -> None:
        i = 0
        while True:
            await producer.append("t", f"w{w}".encode(), f"{w}:{i}:".encode() + b"x" * 300)
            sys.stdout.write(f"{w}:{i}\\n")
            sys.stdout.flush()
            i += 1

    await asyncio.gather(*(worker(w) for w in range(8)))

asyncio.run(main())
"""

SECOND_WRITER = """
import asyncio, sys
from pathlib import Path
from eventlog.embedded import EmbeddedLog, LogLocked

async def main() -> None:
    try:
        await EmbeddedLog(Path(sys.argv[1])).open()
        print("opened for writing")
    except LogLocked as exc:
        print("locked:", exc)
    async with EmbeddedLog(Path(sys.argv[1]), read_only=True) as log:
        print("read-only end offsets:", sum((await log.end_offsets("t")).values()))

asyncio.run(main())
"""


def spawn(code: str, root: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", code, str(root)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


async def test_sigkill_while_appending_loses_no_acknowledged_record(tmp_path: Path) -> None:
    child = spawn(APPENDER, tmp_path)
    assert child.stdout is not None
    acked: dict[int, int] = defaultdict(lambda: -1)
    lines = 0
    try:
        while lines < 2000:
            line = child.stdout.readline()
            assert line, f"the appender died early: {child.stderr.read() if child.stderr else ''}"
            w, i = map(int, line.split(":"))
            acked[w] = max(acked[w], i)
            lines += 1
            if lines == 500:
                # Meanwhile a read-only reader in this process follows the live writer through the files.
                async with EmbeddedLog(tmp_path, read_only=True, poll_interval_s=0.01) as reader:
                    consumer = reader.consumer("live", ["t"])
                    await consumer.start()
                    assert len(await read_n(consumer, 300)) == 300
    finally:
        os.kill(child.pid, signal.SIGKILL)
        rest, _ = child.communicate(timeout=30)
    for line in rest.splitlines(keepends=True):
        if line.endswith("\n"):  # whatever reached the pipe was acknowledged before the kill
            w, i = map(int, line.split(":"))
            acked[w] = max(acked[w], i)
    assert child.returncode == -signal.SIGKILL

    async with EmbeddedLog(tmp_path, partitions=2) as log:  # the dead writer's lock is gone with it
        consumer = log.consumer("check", ["t"])
        await consumer.start()
        records = await read_until_quiet(consumer, quiet_s=0.2)
        stored: dict[int, list[int]] = defaultdict(list)
        for r in sorted(records, key=lambda r: (r.partition, r.offset)):
            worker, seq, pad = r.value.split(b":")
            assert pad == b"x" * 300 and r.key == b"w" + worker
            stored[int(worker)].append(int(seq))
        assert set(stored) == set(range(8))
        for w, seqs in stored.items():
            # In order, no gaps, nothing twice, and at least everything acknowledged (the last few may
            # have become durable just before the kill, unacknowledged).
            assert seqs == list(range(len(seqs))), f"worker {w}: {seqs[:5]}…"
            assert seqs[-1] >= acked[w], f"worker {w}: acknowledged {acked[w]}, stored up to {seqs[-1]}"
        producer = log.producer()
        await producer.append("t", b"w0", b"0:after:")
        more = await read_n(consumer, 1)
        assert more[0].value == b"0:after:"


async def test_another_process_cannot_write_but_can_read(tmp_path: Path) -> None:
    async with EmbeddedLog(tmp_path) as log:
        await log.producer().append_batch("t", [(b"k", b"v")] * 7)
        child = spawn(SECOND_WRITER, tmp_path)
        out, err = child.communicate(timeout=60)
    assert child.returncode == 0, err
    assert f"locked: event log {tmp_path} is locked by another writer (pid {os.getpid()})" in out
    assert "read-only end offsets: 7" in out
