"""A small incremental Server-Sent Events codec (WHATWG event-stream format).

`SseParser` turns arbitrary byte chunks into events; `iter_events` drives it from an aiohttp
`StreamReader`. Chunks are read with `iter_any` rather than `readline` because aiohttp caps a
line at 128 KiB and one JSON-RPC message (a base64 image, a large tool result) is one `data:`
line. `format_event` frames the gateway's own SSE output.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp

__all__ = ["DEFAULT_MAX_EVENT_BYTES", "SseError", "SseEvent", "SseParser", "format_event", "iter_events"]

DEFAULT_MAX_EVENT_BYTES = 64 * 1024 * 1024


class SseError(ValueError):
    """The stream is not a valid event stream (or an event exceeds the size limit)."""


@dataclass(slots=True)
class SseEvent:
    event: str  # "message" when the stream gave no `event:` field
    data: bytes  # data lines joined with b"\n"; b"" for an id-only or retry-only event
    id: str | None = None
    retry: int | None = None


class SseParser:
    """Incremental parser; `feed` returns the events completed by a chunk.

    Tolerates CRLF and bare-LF line ends and ignores comments (`:keepalive`). An event that is
    still open when the stream ends is dropped, as the SSE spec requires.
    """

    __slots__ = ("_buf", "_data", "_event", "_id", "_max", "_retry", "_scan", "_seen", "_size")

    def __init__(self, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> None:
        self._max = max_event_bytes
        self._buf = bytearray()
        self._scan = 0  # where to resume looking for b"\n", so long lines cost O(n) overall
        self._data: list[bytes] = []
        self._size = 0
        self._event: str | None = None
        self._id: str | None = None
        self._retry: int | None = None
        self._seen = False

    def feed(self, chunk: bytes) -> list[SseEvent]:
        buf = self._buf
        buf += chunk
        events: list[SseEvent] = []
        start = 0
        find = buf.find
        nl = find(b"\n", self._scan)
        while nl >= 0:
            end = nl - 1 if nl > start and buf[nl - 1] == 13 else nl
            if end == start:
                if self._seen:
                    events.append(self._dispatch())
            else:
                self._field(bytes(buf[start:end]))
            start = nl + 1
            nl = find(b"\n", start)
        if start:
            del buf[:start]
        self._scan = len(buf)
        if self._scan > self._max:
            raise SseError(f"an SSE line exceeds {self._max} bytes")
        return events

    def _field(self, line: bytes) -> None:
        colon = line.find(b":")
        if colon == 0:
            return  # comment / keep-alive
        if colon < 0:
            name, value = line, b""
        else:
            name = line[:colon]
            value = line[colon + 2 :] if line[colon + 1 : colon + 2] == b" " else line[colon + 1 :]
        if name == b"data":
            self._size += len(value) + 1
            if self._size > self._max:
                raise SseError(f"an SSE event exceeds {self._max} bytes")
            self._data.append(value)
            self._seen = True
        elif name == b"event":
            self._event = value.decode("utf-8", "replace")
            self._seen = True
        elif name == b"id":
            if b"\0" not in value:
                self._id = value.decode("utf-8", "replace")
                self._seen = True
        elif name == b"retry" and value.isdigit():
            self._retry = int(value)
            self._seen = True

    def _dispatch(self) -> SseEvent:
        data = self._data
        payload = data[0] if len(data) == 1 else b"\n".join(data)
        event = SseEvent(self._event or "message", payload, self._id, self._retry)
        self._data = []
        self._size = 0
        self._event = None
        self._retry = None
        self._seen = False
        # The last event id persists across events per the SSE spec; callers track it themselves.
        self._id = None
        return event


async def iter_events(
    content: aiohttp.StreamReader, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES
) -> AsyncIterator[SseEvent]:
    parser = SseParser(max_event_bytes)
    async for chunk in content.iter_any():
        for event in parser.feed(chunk):
            yield event


def format_event(data: bytes, event: str | None = None, id: str | None = None) -> bytes:
    """Frame one event; multi-line data becomes several `data:` lines."""
    parts: list[bytes] = []
    if event is not None:
        if "\n" in event or "\r" in event:
            raise ValueError("an SSE event name cannot contain a line break")
        parts.append(b"event: " + event.encode())
    if id is not None:
        if "\n" in id or "\r" in id or "\0" in id:
            raise ValueError("an SSE event id cannot contain a line break or NUL")
        parts.append(b"id: " + id.encode())
    if b"\n" in data or b"\r" in data:
        parts.extend(b"data: " + line for line in data.splitlines())
    else:
        parts.append(b"data: " + data)
    parts.append(b"\n")
    return b"\n".join(parts)
