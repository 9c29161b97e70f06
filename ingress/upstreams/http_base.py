"""Connection lifecycle shared by the HTTP upstream connectors (Streamable HTTP and HTTP+SSE).

A supervisor task owns the state machine: CONNECTING (handshake) → READY → DOWN → CONNECTING …
with capped exponential backoff between failed attempts. Transports report a lost connection
with `_connection_lost`; requests made while the upstream is down fail at once and wake the
supervisor so the next attempt does not wait for the full backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Coroutine
from typing import Any

import aiohttp

from ingress.config import HttpServerConfig
from ingress.upstreams.base import (
    CallContext,
    StatusHandler,
    UnsolicitedHandler,
    UpstreamInfo,
    UpstreamState,
    UpstreamStatus,
    UpstreamTap,
)
from ingress.upstreams.errors import UpstreamError, UpstreamUnavailable
from ingress.upstreams.http1_pool import ConnectFailed, Http1Pool

log = logging.getLogger("mcpgw.upstream")

# Idle pooled connections are dropped before common server keep-alive timeouts (Node 5 s,
# uvicorn 5 s): reusing a socket the server is closing fails a POST that was never processed.
_KEEPALIVE_S = 4.0
_NEVER = float("inf")


class Deadlines:
    """Deadlines for calls in flight on one event loop, all watched by a single timer.

    `asyncio.timeout()` arms and cancels a TimerHandle per call (with uvloop ~4 of the ~7 µs it
    costs per call). Calls mostly end long before their deadline, so one timer armed at the
    earliest deadline serves them all: under steady load it fires about once per timeout period,
    expires what is due and re-arms itself; a call that ends just removes itself.
    """

    __slots__ = ("_calls", "_loop", "_timer", "_when")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._calls: dict[Deadline, None] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._when = _NEVER

    def within(self, seconds: float) -> Deadline:
        """`with deadlines.within(s):` acts as `async with asyncio.timeout(s):` (see `Deadline`)."""
        return Deadline(self, self._loop.time() + seconds)

    def _add(self, deadline: Deadline) -> None:
        self._calls[deadline] = None
        if deadline.when < self._when:
            self._arm(deadline.when)

    def _discard(self, deadline: Deadline) -> None:
        self._calls.pop(deadline, None)

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._when = when
        self._timer = self._loop.call_at(when, self._fire)

    def _fire(self) -> None:
        self._timer = None
        self._when = _NEVER
        now = self._loop.time() + 0.001  # the loop's clock has millisecond steps: do not re-arm for less
        earliest = _NEVER
        for deadline in list(self._calls):
            if deadline.when <= now:
                del self._calls[deadline]
                deadline.expire()
            elif deadline.when < earliest:
                earliest = deadline.when
        if earliest != _NEVER:
            self._arm(earliest)


class Deadline:
    """`with deadline:` bounds the current task like `async with asyncio.timeout(...)`: when the time
    runs out the task is cancelled and the block raises TimeoutError; a cancellation from elsewhere
    passes through untouched (the same `cancelling()`/`uncancel()` bookkeeping). A plain `with`:
    entering and leaving never wait.
    """

    __slots__ = ("_cancelling", "_task", "_watch", "expired", "when")

    def __init__(self, watch: Deadlines, when: float) -> None:
        self._watch = watch
        self.when = when
        self.expired = False

    def __enter__(self) -> Deadline:
        # The loop passed in: without it asyncio looks the running loop up, which on Python 3.11
        # costs a getpid() system call per call.
        task = asyncio.current_task(self._watch._loop)
        if task is None:
            raise RuntimeError("a Deadline must be used inside a task")
        self._task = task
        self._cancelling = task.cancelling()
        self._watch._add(self)
        return self

    def expire(self) -> None:
        self.expired = True
        self._task.cancel()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, _tb: object) -> None:
        self._watch._discard(self)
        # As asyncio.Timeout.__aexit__: the cancellation is ours to turn into TimeoutError only if
        # nobody else asked for one meanwhile.
        if self.expired and self._task.uncancel() <= self._cancelling and exc_type is asyncio.CancelledError:
            raise TimeoutError from exc


def describe(exc: BaseException) -> str:
    if isinstance(exc, UpstreamError):
        return exc.detail
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class HttpUpstreamBase:
    transport = ""
    # Connectors whose POST answers are read through `Http1Response`-compatible code set this:
    # their POSTs go through the lean HTTP/1.1 pool, everything else through aiohttp.
    lean_posts = False
    backoff_initial_s = 0.25
    backoff_max_s = 15.0

    def __init__(
        self,
        name: str,
        config: HttpServerConfig,
        tap: UpstreamTap,
        on_unsolicited: UnsolicitedHandler,
        on_status: StatusHandler,
        system_ctx: Callable[[], CallContext],
        default_timeout: float,
    ) -> None:
        self.name = name
        self.config = config
        self._url = config.url
        self._tap = tap
        self._on_unsolicited = on_unsolicited
        self._on_status = on_status
        self._system_ctx = system_ctx
        self._timeout = config.request_timeout_s or default_timeout
        self._status = UpstreamStatus(UpstreamState.STOPPED)
        self._info: UpstreamInfo | None = None
        self._http: aiohttp.ClientSession | None = None
        self._posts: Http1Pool | None = None
        self._deadlines: Deadlines | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._wake = asyncio.Event()
        self._lost = asyncio.Event()
        self._lost_reason = ""
        self._generation = 0
        self._stopping = False
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- the Upstream protocol's lifecycle half ---------------------------------------------

    @property
    def status(self) -> UpstreamStatus:
        return self._status

    @property
    def info(self) -> UpstreamInfo | None:
        return self._info

    async def start(self) -> None:
        if self._supervisor is not None and not self._supervisor.done():
            return
        self._stopping = False
        if self._http is None or self._http.closed:
            # No cookie jar: one upstream session serves every agent, and a cookie set for one
            # agent's call must never ride along on another's.
            self._http = aiohttp.ClientSession(
                cookie_jar=aiohttp.DummyCookieJar(),
                connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=_KEEPALIVE_S),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.config.connect_timeout_s),
                headers=self.config.headers,  # the upstream's credentials: config only, never the agent's
                trust_env=False,
            )
        if self._deadlines is None:
            self._deadlines = Deadlines(asyncio.get_running_loop())
        if self.lean_posts and (self._posts is None or self._posts.closed):
            self._posts = Http1Pool(self._url, self.config.headers, self.config.connect_timeout_s, _KEEPALIVE_S)
        self._supervisor = asyncio.create_task(self._supervise(), name=f"upstream-{self.name}")

    async def wait_ready(self, timeout: float) -> bool:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._ready.wait()
        return self._ready.is_set()

    async def stop(self) -> None:
        self._stopping = True
        self._ready.clear()
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(BaseException):
                await self._supervisor
            self._supervisor = None
        await self._cancel_tasks()
        with contextlib.suppress(Exception):
            await self._disconnect(final=True)
        await self._cancel_tasks()
        if self._posts is not None:
            self._posts.close()
            self._posts = None
        self._deadlines = None  # its timer still serves the calls in flight
        if self._http is not None:
            await self._http.close()
            self._http = None
        if self._status.state is not UpstreamState.STOPPED:
            await self._set_status(UpstreamState.STOPPED, "stopped")

    # -- hooks for the transports -----------------------------------------------------------

    async def _connect(self) -> UpstreamInfo:
        """Open the connection and run the handshake; raise on failure."""
        raise NotImplementedError

    def _on_ready(self, generation: int) -> None:
        """Start the background streams of a fresh connection."""

    async def _disconnect(self, final: bool) -> None:
        """Drop what `_connect`/`_on_ready` built (tasks in `_tasks` are cancelled separately)."""

    # -- shared machinery -------------------------------------------------------------------

    def _deadline(self, seconds: float) -> Deadline:
        """A per-call timeout: `with self._deadline(s):` (see `Deadlines`)."""
        deadlines = self._deadlines
        if deadlines is None:  # a call racing stop(): an ordinary timer for this one
            deadlines = Deadlines(asyncio.get_running_loop())
        return deadlines.within(seconds)

    async def _gate(self) -> int:
        """The generation to send under, or UpstreamUnavailable when the upstream is not ready."""
        state = self._status.state
        if state is UpstreamState.READY and not self._lost.is_set():
            return self._generation
        if state is UpstreamState.CONNECTING and not self._stopping:
            # A reconnect is under way: give it the time a fresh TCP connect would take.
            if await self.wait_ready(self.config.connect_timeout_s) and not self._lost.is_set():
                return self._generation
        elif state is UpstreamState.STOPPED or self._stopping:
            raise UpstreamUnavailable(self.name, "the upstream connector is stopped")
        self._wake.set()
        raise UpstreamUnavailable(self.name, f"upstream is down: {self._status.detail or 'not connected'}")

    def _connection_lost(self, generation: int, reason: str) -> None:
        if generation != self._generation or self._lost.is_set() or self._stopping:
            return
        log.warning("upstream %s: connection lost: %s", self.name, reason)
        self._lost_reason = reason
        self._ready.clear()
        self._lost.set()

    def _transport_error(self, exc: Exception, generation: int) -> UpstreamUnavailable:
        if isinstance(exc, aiohttp.ClientConnectorError | ConnectFailed):
            # Nothing reached the server: safe to repeat, and the server is unreachable.
            detail = f"cannot connect to {self._url}: {exc.os_error or exc}"
            self._connection_lost(generation, detail)
            return UpstreamUnavailable(self.name, detail, retryable=True)
        detail = f"connection to {self._url} failed: {describe(exc)}"
        return UpstreamUnavailable(self.name, detail, retryable=False)

    async def _supervise(self) -> None:
        attempt = 0
        detail = "starting"
        while not self._stopping:
            await self._set_status(UpstreamState.CONNECTING, detail)
            self._wake.clear()
            try:
                async with asyncio.timeout(max(self._timeout, self.config.connect_timeout_s)):
                    info = await self._connect()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                detail = describe(exc)
                log.info("upstream %s: connect failed: %s", self.name, detail)
                await self._reset()
                await self._set_status(UpstreamState.DOWN, detail)
                await self._pause(self._backoff(attempt))
                attempt += 1
                continue
            attempt = 0
            self._info = info
            self._generation += 1
            self._lost.clear()
            self._on_ready(self._generation)
            await self._set_status(UpstreamState.READY, "")
            await self._lost.wait()
            detail = self._lost_reason
            await self._reset()
            await self._set_status(UpstreamState.DOWN, detail)

    async def _reset(self) -> None:
        await self._cancel_tasks()
        with contextlib.suppress(Exception):
            await self._disconnect(final=False)

    def _backoff(self, attempt: int) -> float:
        base = min(self.backoff_max_s, self.backoff_initial_s * 2 ** min(attempt, 32))
        return float(base * random.uniform(0.8, 1.2))

    async def _pause(self, delay: float) -> None:
        # A request arriving while down may cut the wait short, but never below the initial
        # backoff, so a burst of requests cannot turn into a burst of connection attempts.
        floor = min(delay, self.backoff_initial_s)
        await asyncio.sleep(floor)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay - floor):
                await self._wake.wait()

    async def _set_status(self, state: UpstreamState, detail: str) -> None:
        previous = self._status
        if previous.state is state and previous.detail == detail:
            return
        self._status = UpstreamStatus(state, detail)
        if state is UpstreamState.READY:
            self._ready.set()
        else:
            self._ready.clear()
        try:
            await self._on_status(self.name, self._status, self._info)
        except Exception:
            log.exception("upstream %s: status handler failed", self.name)

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("upstream %s: background task failed", self.name, exc_info=task.exception())

    async def _cancel_tasks(self) -> None:
        tasks = [t for t in self._tasks if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
