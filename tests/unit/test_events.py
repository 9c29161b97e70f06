"""schemas/events.py: UUIDv7 event ids."""

from __future__ import annotations

import re
import time
import uuid
from itertools import pairwise

import pytest

import schemas.events as events
from schemas.events import EventType, GatewayEvent, Kind, new_event_id

UUID7 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


@pytest.fixture
def fresh_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(events, "_last_ms", 0)
    monkeypatch.setattr(events, "_counter", 0)


def ms_of(event_id: str) -> int:
    return int(event_id.replace("-", "")[:12], 16)


def test_shape() -> None:
    for _ in range(100):
        value = new_event_id()
        assert UUID7.match(value), value
        parsed = uuid.UUID(value)
        assert parsed.version == 7
        assert parsed.variant == uuid.RFC_4122
        assert str(parsed) == value


def test_timestamp_is_unix_ms(fresh_clock: None) -> None:
    now_ns = time.time_ns()
    assert ms_of(new_event_id(now_ns)) == now_ns // 1_000_000
    before = time.time_ns() // 1_000_000
    value = new_event_id()
    after = time.time_ns() // 1_000_000
    assert before <= ms_of(value) <= after


def test_strictly_increasing_within_one_millisecond(fresh_clock: None) -> None:
    now_ns = 1_700_000_000_000 * 1_000_000
    ids = [new_event_id(now_ns) for _ in range(10_000)]  # more than the 4096 a ms-counter holds
    assert all(a < b for a, b in pairwise(ids)), "ids not strictly increasing"
    assert len(set(ids)) == len(ids)
    assert all(UUID7.match(i) for i in ids)
    # as UUIDs (integer order) too
    ints = [uuid.UUID(i).int for i in ids]
    assert ints == sorted(ints)


def test_strictly_increasing_when_the_clock_steps_back(fresh_clock: None) -> None:
    base = 1_700_000_000_000 * 1_000_000
    ids = [new_event_id(base + 5_000_000), new_event_id(base), new_event_id(base - 1_000_000_000),
           new_event_id(base + 5_000_000), new_event_id(base + 6_000_000)]
    assert all(a < b for a, b in pairwise(ids))
    assert ms_of(ids[-1]) == base // 1_000_000 + 6


def test_strictly_increasing_real_clock() -> None:
    ids = [new_event_id() for _ in range(20_000)]
    assert all(a < b for a, b in pairwise(ids))


def test_event_to_dict() -> None:
    event = GatewayEvent(EventType.AGENT_MESSAGE_RECEIVED, Kind.REQUEST, events.Direction.AGENT_TO_GATEWAY,
                         payload=b"x")
    d = event.to_dict()
    assert d["event_type"] == "agent_message_received"
    assert d["payload"] == b"x"
    assert d["outcome"] == "ok"
