"""The disk's floor under a durable append, measured beside the gateway's own log.

A strict-mode call on the embedded log waits, at concurrency 1, for two write+fdatasync in series
(the request's events before forwarding, the response's before answering). What one of them costs
is the device's and the host's, not the gateway's, and it moves with the host's load: on the same
machine it has read 0.2 ms and 0.6 ms an hour apart. So `bench.run` measures it in every round,
the way the log does it (a call's hop of ~1.6 KB written at an explicit position into preallocated,
already fsync'd space, then `fdatasync`), on the same filesystem, paced so the device idles between
appends as it does between calls at c=1, and reports the c=1 latency beside it.
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

HOP_BYTES = 1600  # a tools/call hop: two events of ~800 bytes, framed
SPACE = 4 << 20


def write_fdatasync_ms(directory: Path, samples: int = 100, gap_s: float = 0.001) -> float:
    """The median of `samples` write+fdatasync of one hop into preallocated space under `directory`."""
    path = directory / f".disk-floor-{os.getpid()}"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.pwrite(fd, bytes(SPACE), 0)
        os.fsync(fd)
        hop = b"\x5a" * HOP_BYTES
        took: list[float] = []
        position = 0
        for _ in range(samples):
            if position + HOP_BYTES > SPACE:
                position = 0
            start = time.perf_counter()
            os.pwrite(fd, hop, position)
            os.fdatasync(fd)
            took.append((time.perf_counter() - start) * 1000)
            position += HOP_BYTES
            time.sleep(gap_s)
        return statistics.median(took)
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)
