"""A supervised child process speaking newline-delimited JSON-RPC on stdin/stdout (MCP stdio).

Only an I/O adapter: it frames lines, restarts the process with backoff and shuts it down the
way the MCP spec asks (close stdin, SIGTERM, SIGKILL). The MCP session belongs to the layer
above, which must redo its handshake after every "running": each one is a fresh process.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import random
import signal
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from ingress.upstreams.errors import UpstreamUnavailable

__all__ = ["ProcessState", "RestartPolicy", "Status", "StdioProcess"]

_log = logging.getLogger(__name__)

Status = Literal["starting", "running", "exited", "restarting", "stopped", "failed"]

# proc.wait() also waits for every pipe to close, so a descendant that inherited stdout would
# hide the leader's death forever; the supervisor looks at the exit status this often.
_ORPHAN_POLL_S = 1.0


@dataclass(frozen=True)
class RestartPolicy:
    """Exponential backoff. ``max_restarts`` (None = forever) counts only restarts since the
    last run that lasted ``stable_after_s``: a weekly crash must not end in "failed" one day."""

    initial_delay_s: float = 0.25
    max_delay_s: float = 30.0
    multiplier: float = 2.0
    jitter: float = 0.2
    max_restarts: int | None = None
    stable_after_s: float = 10.0

    def __post_init__(self) -> None:
        if not (0 <= self.initial_delay_s <= self.max_delay_s and self.multiplier >= 1
                and 0 <= self.jitter <= 1 and (self.max_restarts or 0) >= 0):
            raise ValueError(f"invalid {self!r}")

    def backoff(self, attempt: int, rng: random.Random | None = None) -> float:
        """Delay before the ``attempt``-th (0-based) consecutive restart."""
        try:
            base = min(self.max_delay_s, self.initial_delay_s * self.multiplier**attempt)
        except OverflowError:
            base = self.max_delay_s
        # Jitter keeps upstreams that died together (a shared dependency) from restarting in step.
        return base * (rng or random).uniform(1 - self.jitter, 1 + self.jitter)


@dataclass(frozen=True)
class ProcessState:
    """One lifecycle transition; ``exit_code`` is negative when a signal killed the process."""

    status: Status
    pid: int | None = None
    restarts: int = 0
    exit_code: int | None = None
    detail: str = ""


@dataclass(eq=False)
class _Child:
    proc: asyncio.subprocess.Process
    started_at: float
    exit_task: asyncio.Task[int]
    readers: tuple[asyncio.Task[None], ...]


class StdioProcess:
    """One configured stdio server. ``on_line`` gets every non-empty stdout line (without its
    newline) from the reader task; ``on_state`` gets every lifecycle transition, in order."""

    def __init__(
        self,
        name: str,
        command: str,
        args: Sequence[str],
        env: Mapping[str, str] | None,
        cwd: str | None,
        on_line: Callable[[bytes], None],
        on_state: Callable[[ProcessState], Awaitable[None] | None] | None = None,
        restart: RestartPolicy = RestartPolicy(),
        stop_grace_s: float = 2.0,
        max_line_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        self.name = name
        self.command = command
        self.args = tuple(args)
        self.env = dict(env or {})
        self.cwd = cwd
        self.policy = restart
        self.stop_grace_s = stop_grace_s
        self.max_line_bytes = max_line_bytes
        self._on_line = on_line
        self._on_state = on_state
        self._stderr_log = logging.getLogger("mcpgw.upstream." + name)
        self._state = ProcessState("stopped")
        self._changed = asyncio.Event()
        self._child: _Child | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._stop_task: asyncio.Task[None] | None = None
        self._first_spawn: asyncio.Future[None] | None = None
        self._stopping = False
        self._restarts = 0

    @property
    def state(self) -> ProcessState:
        return self._state

    @property
    def pid(self) -> int | None:
        return self._child.proc.pid if self._child is not None else None

    @property
    def running(self) -> bool:
        child = self._child
        ok = not self._stopping and self._state.status == "running"
        return ok and child is not None and child.proc.returncode is None

    @property
    def restarts(self) -> int:
        return self._restarts

    async def start(self) -> None:
        """Spawn and supervise; a no-op while supervised. UpstreamUnavailable if the first spawn fails."""
        if self._stop_task is not None:
            await asyncio.shield(self._stop_task)
        if self._supervisor is None or self._supervisor.done():
            self._stopping = False
            self._restarts = 0
            self._first_spawn = asyncio.get_running_loop().create_future()
            # Its awaiting start() may be cancelled: mark the outcome seen so asyncio won't warn.
            self._first_spawn.add_done_callback(lambda f: f.cancelled() or f.exception())
            self._supervisor = asyncio.create_task(
                self._supervise(self._first_spawn), name=f"stdio:{self.name}:supervisor"
            )
        assert self._first_spawn is not None
        await asyncio.shield(self._first_spawn)

    async def stop(self) -> None:
        """Stop supervising and terminate the process; idempotent and safe to call concurrently."""
        if self._stop_task is not None and self._stop_task is asyncio.current_task():
            return  # an on_state("stopped") callback calling stop() again
        if self._stop_task is None:
            self._stop_task = asyncio.create_task(self._do_stop(), name=f"stdio:{self.name}:stop")
        # Shielded so that a cancelled caller (or an on_state callback running inside the
        # supervisor we are about to cancel) cannot abandon the process half-terminated.
        await asyncio.shield(self._stop_task)

    async def send(self, line: bytes) -> None:
        if b"\n" in line:
            raise ValueError("a JSON-RPC message on stdio must not contain a raw newline")
        child = self._child
        stdin = child.proc.stdin if child is not None else None
        if not self.running or stdin is None or stdin.is_closing():
            raise UpstreamUnavailable(self.name, f"process is {self._state.status}")
        try:
            stdin.write(line + b"\n")
            await stdin.drain()
        except (BrokenPipeError, ConnectionResetError) as exc:
            # Part of the message may already sit in the pipe, so the server may have seen it.
            raise UpstreamUnavailable(self.name, f"stdin broken: {exc!r}", retryable=False) from exc

    async def wait_running(self, timeout: float) -> None:
        """Return once running; TimeoutError on timeout, UpstreamUnavailable once failed or stopped."""
        async with asyncio.timeout(timeout):
            while not self.running:
                if self._state.status == "failed" or self._stopping:
                    raise UpstreamUnavailable(self.name, f"process is {self._state.status}", retryable=False)
                await self._changed.wait()

    async def _emit(
        self, status: Status, *, pid: int | None = None, exit_code: int | None = None, detail: str = ""
    ) -> None:
        self._state = ProcessState(status, pid, self._restarts, exit_code, detail)
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
        _log.debug("upstream %s: %s", self.name, self._state)
        if self._on_state is None:
            return
        try:
            result = self._on_state(self._state)
            if inspect.isawaitable(result):
                await result
        except Exception:
            _log.exception("upstream %s: on_state callback failed", self.name)

    async def _spawn(self) -> None:
        await self._emit("starting")
        pipe = asyncio.subprocess.PIPE
        # A new session makes the child a process-group leader, so stop() can signal everything
        # it spawned (npx -> node, uv -> python) through its pid.
        spawning = asyncio.ensure_future(asyncio.create_subprocess_exec(
            self.command, *self.args, stdin=pipe, stdout=pipe, stderr=pipe, env={**os.environ, **self.env},
            cwd=self.cwd, start_new_session=True, limit=self.max_line_bytes,
        ))
        try:
            proc = await asyncio.shield(spawning)
        except asyncio.CancelledError:
            # Finish the spawn and adopt the child so stop() ends it like any other: a cancelled
            # spawn only SIGKILLs the leader, and uvloop then leaves its transport open.
            with contextlib.suppress(Exception):
                self._adopt(await spawning)
            raise
        self._adopt(proc)
        await self._emit("running", pid=proc.pid)

    def _adopt(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None and proc.stderr is not None
        tag = f"stdio:{self.name}:{proc.pid}"
        readers = (
            asyncio.create_task(self._pump(proc.stdout, self._on_line, "stdout"), name=f"{tag}:stdout"),
            asyncio.create_task(self._pump(proc.stderr, self._log_stderr, "stderr"), name=f"{tag}:stderr"),
        )
        wait = asyncio.create_task(proc.wait(), name=f"{tag}:wait")
        self._child = _Child(proc, asyncio.get_running_loop().time(), wait, readers)

    async def _supervise(self, first_spawn: asyncio.Future[None]) -> None:
        try:
            await self._spawn()
            first_spawn.set_result(None)
            await self._keep_alive()
        except Exception as exc:  # unspawnable (no such file, bad cwd) or a bug: never leave start() hanging
            if first_spawn.done():
                _log.exception("upstream %s: supervision failed", self.name)
            await self._emit("failed", detail=f"{type(exc).__name__}: {exc}")
            if not first_spawn.done():
                error = UpstreamUnavailable(self.name, f"cannot start: {exc}", retryable=False)
                first_spawn.set_exception(error)

    async def _keep_alive(self) -> None:
        consecutive = 0
        while True:
            child = self._child
            if child is not None:
                code = await self._watch(child)
                uptime = asyncio.get_running_loop().time() - child.started_at
                await self._reap(child)
                self._child = None
                await self._emit("exited", pid=child.proc.pid, exit_code=code, detail=f"up {uptime:.3f}s")
                if uptime >= self.policy.stable_after_s:
                    consecutive = 0
            limit = self.policy.max_restarts
            if limit is not None and consecutive >= limit:
                await self._emit("failed", detail=f"gave up after {consecutive} consecutive restarts")
                return
            delay = self.policy.backoff(consecutive)
            consecutive += 1
            await self._emit("restarting", detail=f"restart in {delay:.3f}s")
            await asyncio.sleep(delay)
            self._restarts += 1
            try:
                await self._spawn()
            except OSError as exc:  # e.g. EAGAIN/ENOMEM under pressure: worth another try later
                _log.warning("upstream %s: respawn failed: %s", self.name, exc)
                await self._emit("exited", detail=f"spawn failed: {exc}")

    async def _watch(self, child: _Child) -> int:
        leader_gone = False
        while True:
            done, _ = await asyncio.wait({child.exit_task}, timeout=_ORPHAN_POLL_S)
            if done:
                return child.exit_task.result()
            if child.proc.returncode is None:
                continue
            if leader_gone:
                # Orphaned descendants would hold our pipes and run beside the restarted server.
                _signal_group(child.proc, signal.SIGKILL)
                _close_transport(child.proc)
            # Wait one more poll first: the pipes may simply not have drained yet.
            leader_gone = True

    async def _do_stop(self) -> None:
        try:
            self._stopping = True
            supervisor, self._supervisor = self._supervisor, None
            if supervisor is not None:
                supervisor.cancel()
                await asyncio.wait({supervisor})
            # A supervisor cancelled during (or before) the first spawn never told start() the outcome.
            first = self._first_spawn
            if first is not None and not first.done():
                first.set_exception(UpstreamUnavailable(self.name, "stopped while starting", retryable=False))
            child, code = self._child, None
            if child is not None:
                code = await self._terminate(child)
                self._child = None
            if supervisor is not None or child is not None:
                await self._emit("stopped", pid=child.proc.pid if child else None, exit_code=code)
        finally:
            self._stop_task = None

    async def _terminate(self, child: _Child) -> int | None:
        proc, grace = child.proc, self.stop_grace_s
        if proc.stdin is not None:
            proc.stdin.close()
        # exit_task finishes only when the leader is gone *and* nobody holds its pipes, so a
        # lingering descendant also earns the group the next signal.
        for sig in (None, signal.SIGTERM, signal.SIGKILL):
            if sig is not None:
                _signal_group(proc, sig)
            done, _ = await asyncio.wait({child.exit_task}, timeout=grace)
            if done:
                break
        else:
            _log.error("upstream %s: pid %s survived SIGKILL; closing its pipes", self.name, proc.pid)
            _close_transport(proc)
            await asyncio.wait({child.exit_task}, timeout=grace)
        await self._reap(child)
        return proc.returncode

    async def _reap(self, child: _Child) -> None:
        if child.proc.returncode is not None:  # with the leader gone, nobody would ever stop them
            _signal_group(child.proc, signal.SIGKILL)
        _close_transport(child.proc)
        tasks = {child.exit_task, *child.readers}
        _, pending = await asyncio.wait(tasks, timeout=self.stop_grace_s)
        for task in pending:
            task.cancel()
        await asyncio.wait(tasks)

    async def _pump(self, stream: asyncio.StreamReader, sink: Callable[[bytes], None], what: str) -> None:
        skipping = False  # inside an over-limit line: everything up to its newline is dropped
        while True:
            try:
                line, eof = (await stream.readuntil(b"\n"))[:-1], False
            except asyncio.IncompleteReadError as exc:  # EOF; the last line may lack its newline
                line, eof = exc.partial, True
            except asyncio.LimitOverrunError as exc:
                if not skipping:
                    limit = self.max_line_bytes
                    _log.warning("upstream %s: dropping %s line over %d bytes", self.name, what, limit)
                skipping = True
                await stream.readexactly(exc.consumed)
                continue
            except Exception:
                _log.exception("upstream %s: %s reader failed", self.name, what)
                return
            line = line.removesuffix(b"\r")
            if not skipping and line and not line.isspace():
                try:
                    sink(line)
                except Exception:  # one bad message must not stop the stream for every later one
                    _log.exception("upstream %s: %s handler failed", self.name, what)
            skipping = False
            if eof:
                return

    def _log_stderr(self, line: bytes) -> None:
        text = line.decode("utf-8", "replace")
        self._stderr_log.info("[%s] %s", self.name, text, extra={"upstream": self.name})


def _signal_group(proc: asyncio.subprocess.Process, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def _close_transport(proc: asyncio.subprocess.Process) -> None:
    # Process exposes no public close(); the transport normally closes itself once the process
    # exited and its pipes hit EOF, and closing it again is a no-op, so this only matters when
    # a runaway descendant keeps a pipe open.
    transport = getattr(proc, "_transport", None)
    if transport is not None:
        transport.close()
