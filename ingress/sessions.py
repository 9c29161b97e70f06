"""Agent sessions of the legacy era (initialize + Mcp-Session-Id, or the HTTP+SSE transport).

A session belongs to the principal that opened it: another principal presenting its id gets 404,
as if it did not exist. Sessions idle past the timeout are closed. Each holds the streams the
gateway pushes to (the GET stream or the SSE connection) and the agent's answers it awaits for
server-to-client requests, and the gate that withholds server-to-agent messages from it while its
caller is blocked (`ingress.block_cutoff`).
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ingress.upstreams.base import JsonObject

if TYPE_CHECKING:
    from ingress.block_cutoff import BlockCutoff

# Queue items are ready-to-send JSON bytes; None closes the stream.
Outbox = asyncio.Queue[bytes | None]

MAX_LOGGED_STREAMS = 8  # every legacy request has one; only the last few can still be resumed
MAX_LOGGED_EVENTS = 1000


@dataclass(slots=True, eq=False)
class StreamLog:
    """The events of one resumable POST stream (2025-11-25 SSE resumability), by event number."""

    number: int
    events: list[bytes] = field(default_factory=list)
    done: bool = False
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def event_id(self, index: int) -> str:
        return f"{self.number}-{index}"

    def append(self, data: bytes) -> str:
        if len(self.events) < MAX_LOGGED_EVENTS:
            self.events.append(data)
        self.changed.set()
        return self.event_id(len(self.events))

    def close(self) -> None:
        self.done = True
        self.changed.set()


@dataclass(slots=True, eq=False)
class AgentSession:
    id: str
    principal: str
    tenant: str
    target: str  # "" for the aggregate, else the server name
    transport: str  # streamable_http | sse
    protocol_version: str = ""
    client_info: JsonObject = field(default_factory=dict)
    client_capabilities: JsonObject = field(default_factory=dict)
    log_level: str | None = None
    initialized: bool = False
    created: float = field(default_factory=time.time)
    last_seen: float = field(default_factory=time.monotonic)
    # Where unsolicited messages go: the GET stream (streamable HTTP) or the SSE connection.
    streams: list[Outbox] = field(default_factory=list)
    # Answers awaited from the agent for server-to-client requests, by the id the agent sees.
    awaiting: dict[str, asyncio.Future[tuple[JsonObject, bytes]]] = field(default_factory=dict)
    # The agent's requests in flight, by their JSON-RPC id, so notifications/cancelled can stop them.
    inflight: dict[Any, asyncio.Task[Any]] = field(default_factory=dict)
    subscriptions: dict[str, str] = field(default_factory=dict)  # resource URI -> server
    stream_logs: dict[int, StreamLog] = field(default_factory=dict)
    # Consulted before anything unsolicited goes to the agent (None: no blocklist, as in unit tests).
    gate: BlockCutoff | None = None
    _ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def next_request_id(self) -> str:
        return f"gw-{next(self._ids)}"

    def new_stream_log(self) -> StreamLog:
        log = StreamLog(next(self._ids))
        self.stream_logs[log.number] = log
        while len(self.stream_logs) > MAX_LOGGED_STREAMS:
            del self.stream_logs[next(iter(self.stream_logs))]
        return log

    def resume_point(self, last_event_id: str) -> tuple[StreamLog, int] | None:
        number, _, index = last_event_id.partition("-")
        try:
            log = self.stream_logs.get(int(number))
            position = int(index)
        except ValueError:
            return None
        if log is None or not 0 <= position <= len(log.events):
            return None
        return log, position

    def touch(self) -> None:
        self.last_seen = time.monotonic()

    def push(self, data: bytes) -> bool:
        """Queue a message on the session's open stream; False when no stream is open."""
        if not self.streams:
            return False
        self.streams[-1].put_nowait(data)
        return True

    def supports(self, capability: str) -> bool:
        return capability in self.client_capabilities


class SessionLimitReached(Exception):
    pass


class SessionRegistry:
    def __init__(self, max_sessions: int, idle_timeout_s: float) -> None:
        self.max_sessions = max_sessions
        self.idle_timeout_s = idle_timeout_s
        self._sessions: dict[str, AgentSession] = {}
        self.gate: BlockCutoff | None = None  # handed to every session opened

    def __len__(self) -> int:
        return len(self._sessions)

    def __iter__(self) -> Iterator[AgentSession]:
        return iter(list(self._sessions.values()))

    def open(self, principal: str, tenant: str, target: str, transport: str) -> AgentSession:
        if len(self._sessions) >= self.max_sessions:
            raise SessionLimitReached(f"the gateway holds its maximum of {self.max_sessions} sessions")
        session = AgentSession(secrets.token_hex(16), principal, tenant, target, transport, gate=self.gate)
        self._sessions[session.id] = session
        return session

    def get(self, session_id: str, principal: str, target: str) -> AgentSession | None:
        session = self._sessions.get(session_id)
        if session is None or session.principal != principal or session.target != target:
            return None
        session.touch()
        return session

    def close(self, session_id: str) -> AgentSession | None:
        session = self._sessions.pop(session_id, None)
        if session is not None:
            for stream in session.streams:
                stream.put_nowait(None)
            for waiter in session.awaiting.values():
                if not waiter.done():
                    waiter.set_exception(ConnectionError("the session was closed"))
            for task in session.inflight.values():
                task.cancel()
        return session

    def expired(self) -> list[AgentSession]:
        cutoff = time.monotonic() - self.idle_timeout_s
        return [s for s in self._sessions.values() if s.last_seen < cutoff and not s.streams]
