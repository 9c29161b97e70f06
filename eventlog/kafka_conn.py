"""The direct produce path's own connections to partition leaders: answers settled in `data_received`.

On aiokafka's connection each produce answer passed through its reader task (two `readexactly`
awaits, a task step, a future set, its done callback) before the append settled; that was the
largest client-side cost left per produce (Tansu on loopback, c=1). `ProduceConnection` is a plain
`asyncio.Protocol`: `data_received` cuts the bytes into frames (4-byte size prefix, then the
correlation id), decodes a produce answer with `kafka_wire` and hands it to the request's callback
right there, with no task woken per answer.

What aiokafka's connection did and this one keeps: answers come in request order, so each must
carry the correlation id of the oldest request awaiting one (anything else closes the connection
with a `CorrelationIdError`, as aiokafka does); a request unanswered after request_timeout_ms
closes the connection (`RequestTimedOutError`); a closed or broken connection fails every request
still awaiting an answer with a `KafkaConnectionError`. One timer per connection watches the
oldest request's deadline instead of a timer per request. The produce version is agreed by an
ApiVersions v0 exchange when the connection opens (aiokafka's schemas: once per connection). A
connection idle for `idle_s` (aiokafka's 9 minutes) is closed by us, not counted as a loss: a
broker closes idle ones after 10 (Apache Kafka's connections.max.idle.ms), which would count.

`LeaderLinks` holds one such connection per broker for `DirectSender`; metadata, bootstrap, topic
creation and leader lookup stay on aiokafka's client. TLS is asyncio's `ssl=`; SASL is not spoken
here (the sender keeps aiokafka's connections then, see `kafka_wire.AiokafkaLinks`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import io
import struct
from collections.abc import Callable
from typing import Any

from aiokafka.errors import (  # type: ignore[import-untyped]
    CorrelationIdError,
    KafkaConnectionError,
    NodeNotReadyError,
    RequestTimedOutError,
    UnsupportedVersionError,
    for_code,
)
from aiokafka.protocol.admin import ApiVersionRequest_v0, ApiVersionResponse_v0  # type: ignore[import-untyped]

from eventlog.base import settle_future
from eventlog.kafka_wire import (
    MAX_VERSION,
    MIN_VERSION,
    Topics,
    WireError,
    decode_produce,
    produce_frame,
    produce_version,
)

OnAnswer = Callable[[Any], None]
# Decodes the frame's body, data[start:end] past the correlation id; raises WireError when malformed.
Decode = Callable[[bytes, int, int], Any]

_SIZE = struct.Struct(">i")
_MAX_IDLE_S = 540.0  # aiokafka's connections_max_idle_ms
_MAX_FRAME = 100 * 1024 * 1024  # aiokafka's reader has no bound; a size past this is a broken stream


class ProduceConnection(asyncio.Protocol):
    """One broker connection carrying produce requests; see the module docstring."""

    def __init__(self, node: int, client_id: bytes, timeout_s: float,
                 on_closed: Callable[[ProduceConnection, bool], None], idle_s: float = _MAX_IDLE_S) -> None:
        self.node = node
        self.version = 0  # the produce version, set once ApiVersions has answered
        self.closed = False
        self._client_id = client_id
        self._timeout_s = timeout_s
        self._on_closed = on_closed
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._write: Callable[[bytes], None] = _not_connected
        self._buffer = b""  # the start of a frame not complete yet
        # Requests awaiting an answer, oldest first: (correlation id, deadline, decode, on_answer).
        self._pending: collections.deque[tuple[int, float, Decode, OnAnswer]] = collections.deque()
        self._correlation_id = 0
        self._watchdog: asyncio.TimerHandle | None = None
        self._idle_s = idle_s
        self._last_sent = self._loop.time()
        self._idle_check = self._loop.call_at(self._last_sent + idle_s, self._check_idle)
        self._gone: asyncio.Future[None] = self._loop.create_future()

    # -- asyncio.Protocol ----------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods.
        self._transport = transport  # type: ignore[assignment]
        self._write = transport.write  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        if self._buffer:
            data = self._buffer + data
        end = len(data)
        pos = 0
        unpack = _SIZE.unpack_from
        while end - pos >= 4:
            (size,) = unpack(data, pos)
            if size < 4 or size > _MAX_FRAME:
                self.close(KafkaConnectionError(f"broker {self.node} sent a frame of {size} bytes"), lost=True)
                return
            start = pos + 4
            if end - start < size:
                break
            pos = start + size
            self._frame(data, start, pos)
            if self.closed:
                return
        self._buffer = data[pos:] if pos < end else b""

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._gone.done():
            self._gone.set_result(None)
        detail = f": {exc}" if exc is not None else ""
        self.close(KafkaConnectionError(f"connection to broker {self.node} lost{detail}"), lost=True)

    # -- requests ------------------------------------------------------------------------------------

    def produce(self, topics: Topics, timeout_ms: int, on_answer: OnAnswer) -> None:
        """Send a produce request (acks=all); `on_answer` gets the `ProduceAnswer` or the error, once."""
        correlation_id = self._next_correlation_id()
        self.request(produce_frame(self.version, correlation_id, self._client_id, -1, timeout_ms, topics),
                     correlation_id, functools.partial(decode_produce, self.version), on_answer)

    def request(self, frame: bytes, correlation_id: int, decode: Decode, on_answer: OnAnswer) -> None:
        if self.closed:
            self._loop.call_soon(on_answer, KafkaConnectionError(f"connection to broker {self.node} closed"))
            return
        self._last_sent = now = self._loop.time()
        deadline = now + self._timeout_s
        self._pending.append((correlation_id, deadline, decode, on_answer))
        if self._watchdog is None:
            self._watchdog = self._loop.call_at(deadline, self._watch)
        self._write(frame)

    def close(self, error: BaseException, lost: bool) -> None:
        """Fail what awaits an answer with `error` (from the loop, not from here) and close; `lost`:
        not our own shutdown (reported to `on_closed`)."""
        if self.closed:
            return
        self.closed = True
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        self._idle_check.cancel()
        if self._transport is not None:
            self._transport.close()
        pending, self._pending = self._pending, collections.deque()
        for _, _, _, on_answer in pending:
            self._loop.call_soon(on_answer, error)
        self._on_closed(self, lost)

    async def wait_closed(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._gone), 1.0)

    def _next_correlation_id(self) -> int:
        self._correlation_id = (self._correlation_id + 1) % 2**31
        return self._correlation_id

    def _frame(self, data: bytes, start: int, end: int) -> None:
        if not self._pending:
            self.close(CorrelationIdError(f"broker {self.node} answered a request nobody sent"), lost=True)
            return
        correlation_id, _, decode, on_answer = self._pending.popleft()
        (answered,) = _SIZE.unpack_from(data, start)
        if answered != correlation_id:
            error = CorrelationIdError(f"correlation ids do not match: sent {correlation_id}, received {answered}")
            self._loop.call_soon(on_answer, error)
            self.close(error, lost=True)
            return
        try:
            answer = decode(data, start + 4, end)
        except Exception as exc:  # WireError, or a decoder's bug: the stream is not trusted
            self._loop.call_soon(on_answer, KafkaConnectionError(f"the answer could not be read: {exc}"))
            self.close(KafkaConnectionError(f"broker {self.node} sent an answer that does not parse"), lost=True)
            return
        try:
            on_answer(answer)
        except Exception as exc:  # a callback's bug must not break the framing
            self._loop.call_exception_handler({"message": "produce answer callback failed", "exception": exc})

    def _watch(self) -> None:
        self._watchdog = None
        if not self._pending:
            return
        deadline = self._pending[0][1]
        if deadline <= self._loop.time():
            self.close(RequestTimedOutError(f"broker {self.node} did not answer within {self._timeout_s:.1f}s"),
                       lost=True)
        else:
            self._watchdog = self._loop.call_at(deadline, self._watch)

    def _check_idle(self) -> None:
        idle_until = self._last_sent + self._idle_s
        if self._pending or idle_until > self._loop.time():
            self._idle_check = self._loop.call_at(max(idle_until, self._loop.time() + 1.0), self._check_idle)
        else:
            self.close(KafkaConnectionError(f"connection to broker {self.node} closed: idle"), lost=False)


def _not_connected(data: bytes) -> None:
    raise KafkaConnectionError("not connected")


def _decode_versions(data: bytes, start: int, end: int) -> dict[int, tuple[int, int]] | BaseException:
    try:
        answer = ApiVersionResponse_v0.decode(io.BytesIO(data[start:end]))
    except (struct.error, ValueError) as exc:
        raise WireError(f"malformed ApiVersions answer: {exc}") from exc
    if answer.error_code:
        error: BaseException = for_code(answer.error_code)()
        return error  # settles the handshake with it
    return {api_key: (low, high) for api_key, low, high in answer.api_versions}


async def connect(node: int, host: str, port: int, ssl: Any, client_id: bytes, timeout_s: float,
                  on_closed: Callable[[ProduceConnection, bool], None], idle_s: float = _MAX_IDLE_S
                  ) -> ProduceConnection:
    """Open a connection to broker `node` and agree on the produce version, within `timeout_s`."""
    loop = asyncio.get_running_loop()
    conn: ProduceConnection | None = None
    answered: asyncio.Future[Any] = loop.create_future()
    try:
        async with asyncio.timeout(timeout_s):
            _, conn = await loop.create_connection(
                lambda: ProduceConnection(node, client_id, timeout_s, on_closed, idle_s), host, port, ssl=ssl)
            request = ApiVersionRequest_v0()
            correlation_id = conn._next_correlation_id()
            header = request.build_request_header(correlation_id=correlation_id, client_id=client_id.decode())
            message = header.encode() + request.encode()
            conn.request(_SIZE.pack(len(message)) + message, correlation_id, _decode_versions,
                         functools.partial(settle_future, answered))
            versions = await answered
        version = produce_version(versions)
        if version is None:
            raise UnsupportedVersionError(
                f"broker {node} speaks no produce version from {MIN_VERSION} to {MAX_VERSION}: {versions.get(0)}")
        conn.version = version
        return conn
    except BaseException as exc:
        answered.cancel()  # its answer (the error below) is nobody's any more
        if conn is not None:
            conn.close(KafkaConnectionError(f"connecting to broker {node} failed: {exc!r}"), lost=False)
        raise


class LeaderLinks:
    """One `ProduceConnection` per broker, opened on demand (see `DirectSender`)."""

    def __init__(self, client: Any, client_id: bytes, timeout_ms: int, ssl: Any,
                 on_lost: Callable[[], None]) -> None:
        self._client = client
        self._client_id = client_id
        self._timeout_ms = timeout_ms
        self._ssl = ssl
        self._on_lost = on_lost
        self._conns: dict[int, ProduceConnection] = {}

    def connection(self, node: int) -> ProduceConnection | None:
        conn = self._conns.get(node)
        return conn if conn is not None and not conn.closed and conn.version else None

    async def ready(self, node: int) -> None:
        if self.connection(node) is not None:
            return
        broker = self._client.cluster.broker_metadata(node)
        if broker is None:
            raise NodeNotReadyError(f"broker {node} is not in the cluster metadata")
        self._conns[node] = await connect(node, broker.host, broker.port, self._ssl, self._client_id,
                                          self._timeout_ms / 1000, self._closed)

    def transmit(self, node: int, topics: Topics, on_answer: OnAnswer) -> None:
        conn = self.connection(node)
        if conn is None:
            asyncio.get_running_loop().call_soon(on_answer, NodeNotReadyError(f"no connection to broker {node}"))
        else:
            conn.produce(topics, self._timeout_ms, on_answer)

    async def close(self) -> None:
        conns = list(self._conns.values())
        self._conns.clear()
        for conn in conns:
            conn.close(KafkaConnectionError(f"connection to broker {conn.node} closed"), lost=False)
        for conn in conns:
            await conn.wait_closed()

    def _closed(self, conn: ProduceConnection, lost: bool) -> None:
        if self._conns.get(conn.node) is conn:
            del self._conns[conn.node]
        if lost:
            # A restarted broker may have lost its topics, and an append in flight on it: the
            # producer re-checks topics and sends such an append again (see eventlog/kafka.py).
            self._on_lost()
