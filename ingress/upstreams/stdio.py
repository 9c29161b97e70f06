"""Stdio upstreams: MCP servers run as local processes, spoken to over stdin/stdout.

Each process is supervised by `StdioProcess` (restart with backoff, clean stop) and multiplexed
by `JsonRpcPeer`; every (re)start redoes the initialize handshake before calls flow again.
Isolation `shared` runs one process for every agent; `session` gives each agent session its own
process (for servers that keep per-client state), at most `max_processes` at once, and calls
without a session (the stateless era) use a shared one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections import OrderedDict
from collections.abc import Callable

from ingress.config import StdioServerConfig
from ingress.upstreams.base import (
    CallContext,
    JsonObject,
    StatusHandler,
    UnsolicitedHandler,
    UpstreamInfo,
    UpstreamState,
    UpstreamStatus,
    UpstreamTap,
)
from ingress.upstreams.errors import UpstreamError, UpstreamUnavailable
from ingress.upstreams.rpc_peer import JsonRpcPeer
from ingress.upstreams.stdio_process import ProcessState, RestartPolicy, StdioProcess

log = logging.getLogger("mcpgw.upstream")


class _Instance:
    """One process and the JSON-RPC session on top of it."""

    def __init__(self, owner: StdioUpstream, key: str) -> None:
        self.owner = owner
        self.key = key
        config = owner.config
        env = dict(config.env)
        if "PATH" not in env:
            # Commands installed beside the gateway (same venv) resolve even when the venv is
            # not activated, as they would for an agent that launched them itself.
            env["PATH"] = os.pathsep.join((os.path.dirname(sys.executable), os.environ.get("PATH", "")))
        self.peer = JsonRpcPeer(owner.name, self._send, owner.tap, owner.on_unsolicited, owner.system_ctx)
        self.peer.close("starting")
        self.process = StdioProcess(
            owner.name if not key else f"{owner.name}[{key[:8]}]",
            config.command,
            config.args,
            env,
            config.cwd,
            on_line=self.peer.feed,
            on_state=self._on_state,
            restart=RestartPolicy(
                initial_delay_s=config.restart.initial_delay_s,
                max_delay_s=max(config.restart.max_delay_s, config.restart.initial_delay_s),
                max_restarts=config.restart.max_restarts,
            ),
        )
        self.status = UpstreamStatus(UpstreamState.CONNECTING, "starting")
        self.info: UpstreamInfo | None = None
        self.ready = asyncio.Event()
        self.last_used = time.monotonic()
        self._handshake: asyncio.Task[None] | None = None

    async def _send(self, line: bytes) -> None:
        await self.process.send(line)

    async def _on_state(self, state: ProcessState) -> None:
        if state.status == "running":
            self.peer.reopen()
            self._handshake = asyncio.create_task(self._initialize(state.pid))
        elif state.status in ("exited", "failed", "stopped"):
            detail = {"exited": f"process exited (code {state.exit_code})", "failed": f"process failed: "
                      f"{state.detail}", "stopped": "process stopped"}[state.status]
            self.peer.close(detail)
            self.ready.clear()
            await self._set_status(UpstreamState.STOPPED if state.status == "stopped" else UpstreamState.DOWN,
                                   detail)

    async def _initialize(self, pid: int | None) -> None:
        try:
            self.info = await self.peer.initialize(self.owner.config.startup_timeout_s)
        except (UpstreamError, OSError) as exc:
            log.warning("upstream %s: initialize failed: %s", self.owner.name, exc)
            await self._set_status(UpstreamState.DOWN, f"initialize failed: {exc}")
            # A process that cannot finish its handshake is wedged: end it, and the supervisor
            # starts a fresh one after its backoff.
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            return
        self.ready.set()
        await self._set_status(UpstreamState.READY, f"pid {pid}")

    async def _set_status(self, state: UpstreamState, detail: str) -> None:
        self.status = UpstreamStatus(state, detail)
        if not self.key:
            await self.owner.on_status(self.owner.name, self.status, self.info)

    async def start(self) -> None:
        try:
            await self.process.start()
        except UpstreamError as exc:
            await self._set_status(UpstreamState.DOWN, str(exc.detail))

    async def stop(self) -> None:
        await self.process.stop()
        if self._handshake is not None:
            self._handshake.cancel()
            with contextlib.suppress(BaseException):
                await self._handshake
        await self.peer.aclose()


class StdioUpstream:
    transport = "stdio"

    def __init__(
        self,
        name: str,
        config: StdioServerConfig,
        tap: UpstreamTap,
        on_unsolicited: UnsolicitedHandler,
        on_status: StatusHandler,
        system_ctx: Callable[[], CallContext],
        default_timeout: float,
    ) -> None:
        self.name = name
        self.config = config
        self.tap = tap
        self.on_unsolicited = on_unsolicited
        self.on_status = on_status
        self.system_ctx = system_ctx
        self.timeout = config.request_timeout_s or default_timeout
        self._shared = _Instance(self, "")
        self._sessions: OrderedDict[str, _Instance] = OrderedDict()
        self._lock = asyncio.Lock()
        self._stopped = False

    @property
    def status(self) -> UpstreamStatus:
        return self._shared.status

    @property
    def info(self) -> UpstreamInfo | None:
        return self._shared.info

    @property
    def process_count(self) -> int:
        return sum(1 for i in (self._shared, *self._sessions.values()) if i.process.pid is not None)

    async def start(self) -> None:
        await self._shared.start()

    async def wait_ready(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self._shared.ready.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def stop(self) -> None:
        self._stopped = True
        instances = [self._shared, *self._sessions.values()]
        self._sessions.clear()
        await asyncio.gather(*(i.stop() for i in instances), return_exceptions=True)

    async def _instance_for(self, ctx: CallContext) -> _Instance:
        if self.config.isolation == "shared" or not ctx.session_id:
            return self._shared
        instance = self._sessions.get(ctx.session_id)
        if instance is not None:
            self._sessions.move_to_end(ctx.session_id)
            return instance
        async with self._lock:
            instance = self._sessions.get(ctx.session_id)
            if instance is None:
                if self._stopped:
                    raise UpstreamUnavailable(self.name, "the gateway is stopping")
                if len(self._sessions) + 1 >= self.config.max_processes:
                    raise UpstreamUnavailable(
                        self.name,
                        f"all {self.config.max_processes} processes are in use by other sessions; "
                        "raise max_processes or end idle sessions",
                        retryable=True,
                    )
                instance = _Instance(self, ctx.session_id)
                self._sessions[ctx.session_id] = instance
                await instance.start()
            return instance

    async def release_session(self, session_id: str) -> None:
        """The agent session ended: its dedicated process (if any) goes with it."""
        instance = self._sessions.pop(session_id, None)
        if instance is not None:
            await instance.stop()

    async def _ready(self, instance: _Instance) -> None:
        if instance.ready.is_set():
            return
        if instance.status.state is UpstreamState.CONNECTING or instance.process.state.status in (
            "starting", "restarting", "running"
        ):
            try:
                await asyncio.wait_for(instance.ready.wait(), self.config.startup_timeout_s)
                return
            except TimeoutError:
                pass
        raise UpstreamUnavailable(self.name, instance.status.detail or "not running")

    async def request(self, body: JsonObject, ctx: CallContext, timeout: float | None = None) -> JsonObject:
        instance = await self._instance_for(ctx)
        await self._ready(instance)
        instance.last_used = time.monotonic()
        return await instance.peer.request(body, ctx, timeout or self.timeout)

    async def notify(self, body: JsonObject, ctx: CallContext) -> None:
        instance = await self._instance_for(ctx)
        await self._ready(instance)
        await instance.peer.notify(body, ctx)
