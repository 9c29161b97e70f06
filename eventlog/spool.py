"""A producer that never loses a record when its primary log (Kafka) is unreachable.

Appends go to the primary while it answers. The first failure switches to the local spool (the
embedded log): from then on every append is spooled, so order is kept, and a drainer copies the
spool to the primary, in order, as soon as it answers again; only when the spool is empty do
appends go straight to the primary again. If the spool cannot take a record either, `append`
raises `LogUnavailable` and the caller fails closed: nothing is acknowledged that is not durable.

`submit_batch` is the same without a task per append (see `SubmittingProducer` in
eventlog/base.py), while the primary answers and both logs offer it: a primary's refusal then
spools the records from the primary's settle callback, in the order the refusals come in, as
concurrent `append_batch` calls do.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable, Sequence

from eventlog.base import Consumer, LogError, LogUnavailable, Producer, SubmittingProducer, TopicPartition

log = logging.getLogger("mcpgw.eventlog.spool")

DRAIN_GROUP = "mcpgw-spool-drain"
SWITCH_WAIT_S = 1.0  # longest a new append waits for the switch back to the primary


Records = Sequence[tuple[bytes | None, bytes]]
Settle = Callable[[LogError | None], None]


class SpoolingProducer:
    def __init__(self, primary: Producer, spool: Producer, spool_reader: Consumer, retry_s: float = 0.5,
                 drain_batch: int = 500) -> None:
        self.primary = primary
        self.spool = spool
        self._reader = spool_reader
        self._retry_s = retry_s
        self._drain_batch = drain_batch
        self.spooling = False
        self._inflight = 0
        self._drainer: asyncio.Task[None] | None = None
        self._closed = False
        self._switching = False
        self._switched = asyncio.Event()
        self._idle = asyncio.Event()
        self.spooled_total = 0
        self.drained_total = 0
        self._submit_primary = primary.submit_batch if isinstance(primary, SubmittingProducer) else None
        self._submit_spool = spool.submit_batch if isinstance(spool, SubmittingProducer) else None
        self._spooling_tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        await self.spool.start()
        await self._reader.start()
        try:
            await self.primary.start()
        except LogUnavailable as exc:
            log.warning("primary log unavailable at start (%s): spooling locally", exc)
        # Start as spooling: whatever a previous run left in the spool must reach the primary before
        # anything new; the drainer switches to direct appends once the spool is empty.
        self.spooling = True
        self._start_drainer()

    async def append(self, topic: str, key: bytes | None, value: bytes) -> None:
        await self.append_batch(topic, [(key, value)])

    async def append_batch(self, topic: str, records: Sequence[tuple[bytes | None, bytes]]) -> None:
        if self._switching:
            # The drainer is taking the spool's last records: wait briefly so this one can go to the
            # primary after them; if the switch does not complete in time, keep spooling.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._switched.wait(), SWITCH_WAIT_S)
        if not self.spooling:
            try:
                await self.primary.append_batch(topic, records)
                return
            except LogUnavailable as exc:
                if not self.spooling:
                    log.warning("primary log unavailable (%s): spooling locally until it is back", exc)
                    self.spooling = True
                    self._start_drainer()
        self._inflight += 1
        try:
            await self.spool.append_batch(topic, records)  # raises LogUnavailable: the caller fails closed
            self.spooled_total += len(records)
        finally:
            self._inflight -= 1
            if self._inflight == 0:
                self._idle.set()

    def submit_batch(self, topic: str, records: Records, settle: Settle) -> bool:
        """Take the records now and call `settle` once, on the loop, with None when they are durable
        (in the primary, or spooled after it refused them) or the error when the spool refused them
        too; False: nothing was taken (spooling, switching back, or the primary cannot), use
        `append_batch`."""
        submit = self._submit_primary
        if submit is None or self.spooling or self._switching:
            return False
        try:
            return submit(topic, records, functools.partial(self._primary_settled, topic, records, settle))
        except LogError:
            return False  # `append_batch` meets the refusal again and spools the records

    def _primary_settled(self, topic: str, records: Records, settle: Settle, error: LogError | None) -> None:
        if not isinstance(error, LogUnavailable):  # durable, or a refusal `append_batch` would raise too
            settle(error)
            return
        if not self.spooling:
            log.warning("primary log unavailable (%s): spooling locally until it is back", error)
            self.spooling = True
            self._start_drainer()
        self._inflight += 1
        spooled = functools.partial(self._spooled, len(records), settle)
        try:
            if self._submit_spool is not None and self._submit_spool(topic, records, spooled):
                return
        except LogError as exc:
            spooled(exc)
            return
        task = asyncio.ensure_future(self.spool.append_batch(topic, records))
        self._spooling_tasks.add(task)
        task.add_done_callback(functools.partial(self._spool_task_done, spooled))

    def _spool_task_done(self, spooled: Settle, task: asyncio.Task[None]) -> None:
        self._spooling_tasks.discard(task)
        error = LogUnavailable("the spool was closed during an append") if task.cancelled() else task.exception()
        spooled(error if error is None or isinstance(error, LogError) else LogUnavailable(f"spool failed: {error!r}"))

    def _spooled(self, count: int, settle: Settle, error: LogError | None) -> None:
        if error is None:
            self.spooled_total += count
        self._inflight -= 1
        if self._inflight == 0:
            self._idle.set()
        settle(error)  # an error: the spool refused too, and the caller fails closed

    def _start_drainer(self) -> None:
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.create_task(self._drain(), name="spool-drainer")

    async def _drain(self) -> None:
        while not self._closed:
            records = await self._reader.poll(self._drain_batch, 0.2)
            if not records:
                if self._inflight == 0:
                    self.spooling = False  # nothing spooled is left unread: back to the primary
                    self._switching = False
                    self._switched.set()
                    log.info("spool drained (%d records so far): appending to the primary again",
                             self.drained_total)
                    return
                # Caught up, but appends keep arriving (sustained load): hold new ones back for a
                # moment, let the ones in flight land, drain that tail, then switch.
                self._switching = True
                self._switched.clear()
                self._idle.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._idle.wait(), SWITCH_WAIT_S)
                continue
            by_topic: dict[str, list[tuple[bytes | None, bytes]]] = {}
            for record in records:
                by_topic.setdefault(record.topic, []).append((record.key, record.value))
            while True:
                try:
                    for topic, batch in by_topic.items():
                        await self.primary.append_batch(topic, batch)
                    break
                except LogUnavailable:
                    if self._closed:
                        return
                    await asyncio.sleep(self._retry_s)
            offsets: dict[TopicPartition, int] = {}
            for record in records:
                offsets[TopicPartition(record.topic, record.partition)] = record.offset + 1
            await self._reader.commit(offsets)
            self.drained_total += len(records)
            if len(records) < self._drain_batch and not self._switching:
                # Nearly caught up (a partial batch) and the primary answers: hold new appends from
                # here, so the spool stops growing and the next polls reach its end under load.
                self._switching = True
                self._switched.clear()

    async def wait_drained(self, timeout_s: float) -> bool:
        if self._drainer is None:
            return not self.spooling
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._drainer), timeout_s)
        return not self.spooling

    async def close(self) -> None:
        self._closed = True
        if self._drainer is not None:
            self._drainer.cancel()
            with contextlib.suppress(BaseException):
                await self._drainer
        await self.primary.close()
        await self._reader.close()
        await self.spool.close()
