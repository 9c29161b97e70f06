"""ingress/sessions.py: legacy-era agent sessions bound to principal and target."""

from __future__ import annotations

import asyncio
import re
import time

import pytest

from ingress.sessions import AgentSession, SessionLimitReached, SessionRegistry


def registry(max_sessions: int = 10, idle: float = 60.0) -> SessionRegistry:
    return SessionRegistry(max_sessions, idle)


def test_open_and_get() -> None:
    reg = registry()
    s = reg.open("alice", "acme", "", "streamable_http")
    assert re.fullmatch(r"[0-9a-f]{32}", s.id)
    assert (s.principal, s.tenant, s.target, s.transport) == ("alice", "acme", "", "streamable_http")
    assert not s.initialized
    assert reg.get(s.id, "alice", "") is s
    assert len(reg) == 1
    assert list(reg) == [s]


def test_ids_are_unique() -> None:
    reg = registry(max_sessions=500)
    ids = {reg.open("p", "t", "", "sse").id for _ in range(500)}
    assert len(ids) == 500


@pytest.mark.parametrize(
    ("principal", "target", "found"),
    [
        ("alice", "fs", True),
        ("bob", "fs", False),  # another principal: as if it did not exist
        ("alice", "", False),  # the aggregate is another endpoint
        ("alice", "web", False),
        ("Alice", "fs", False),
    ],
)
def test_binding(principal: str, target: str, found: bool) -> None:
    reg = registry()
    s = reg.open("alice", "acme", "fs", "streamable_http")
    assert (reg.get(s.id, principal, target) is s) is found


def test_unknown_id() -> None:
    reg = registry()
    reg.open("alice", "acme", "", "sse")
    assert reg.get("nope", "alice", "") is None
    assert reg.get("", "alice", "") is None


def test_get_touches_only_on_success() -> None:
    reg = registry()
    s = reg.open("alice", "acme", "", "sse")
    s.last_seen = 0.0
    assert reg.get(s.id, "mallory", "") is None
    assert s.last_seen == 0.0  # a probe by another principal must not keep it alive
    reg.get(s.id, "alice", "")
    assert s.last_seen > 0.0


def test_limit() -> None:
    reg = registry(max_sessions=2)
    a = reg.open("p", "t", "", "sse")
    reg.open("p", "t", "", "sse")
    with pytest.raises(SessionLimitReached, match="2"):
        reg.open("p", "t", "", "sse")
    assert len(reg) == 2
    reg.close(a.id)
    reg.open("p", "t", "", "sse")  # room again after a close
    assert len(reg) == 2


async def test_close_ends_streams_fails_waiters_and_cancels_inflight() -> None:
    reg = registry()
    s = reg.open("alice", "acme", "", "streamable_http")
    q1: asyncio.Queue[bytes | None] = asyncio.Queue()
    q2: asyncio.Queue[bytes | None] = asyncio.Queue()
    s.streams.extend([q1, q2])
    loop = asyncio.get_running_loop()
    pending = loop.create_future()
    done = loop.create_future()
    done.set_result(({"result": {}}, b"{}"))
    s.awaiting.update({"gw-1": pending, "gw-2": done})
    started = asyncio.Event()

    async def work() -> None:
        started.set()
        await asyncio.sleep(3600)

    task = asyncio.create_task(work())
    await started.wait()
    s.inflight[1] = task

    assert reg.close(s.id) is s
    assert len(reg) == 0
    assert reg.get(s.id, "alice", "") is None
    assert q1.get_nowait() is None and q2.get_nowait() is None
    with pytest.raises(ConnectionError, match="closed"):
        await pending
    assert done.result() == ({"result": {}}, b"{}")  # already-answered waiters are left alone
    with pytest.raises(asyncio.CancelledError):
        await task
    assert task.cancelled()


def test_close_unknown_and_twice() -> None:
    reg = registry()
    s = reg.open("a", "t", "", "sse")
    assert reg.close("nope") is None
    assert reg.close(s.id) is s
    assert reg.close(s.id) is None


def test_expired() -> None:
    reg = registry(idle=10.0)
    now = time.monotonic()
    old = reg.open("a", "t", "", "sse")
    old.last_seen = now - 11
    fresh = reg.open("a", "t", "", "sse")
    fresh.last_seen = now - 9
    streaming = reg.open("a", "t", "", "sse")
    streaming.last_seen = now - 1000
    streaming.streams.append(asyncio.Queue())
    assert reg.expired() == [old]
    # expired() only reports; closing is the caller's job
    assert len(reg) == 3


def test_session_helpers() -> None:
    s = AgentSession("id", "p", "t", "", "sse", client_capabilities={"sampling": {}})
    assert [s.next_request_id() for _ in range(3)] == ["gw-1", "gw-2", "gw-3"]
    other = AgentSession("id2", "p", "t", "", "sse")
    assert other.next_request_id() == "gw-1"  # counters are per session
    assert s.supports("sampling") and not s.supports("roots")
    assert s.push(b"x") is False
    q1: asyncio.Queue[bytes | None] = asyncio.Queue()
    q2: asyncio.Queue[bytes | None] = asyncio.Queue()
    s.streams.extend([q1, q2])
    assert s.push(b"hello") is True
    assert q2.get_nowait() == b"hello" and q1.empty()  # the newest stream gets it
