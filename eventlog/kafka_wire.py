"""Produce requests and responses, encoded and decoded with `struct` instead of aiokafka's schemas.

aiokafka builds every request from a generic schema tree (a Python call per field) and decodes
every response the same way; for the gateway's produce requests that was ~0.13 ms of client CPU
per append (Tansu on loopback, c=1), a third of the Kafka path's own cost. A produce request of
versions 3-7 is a short fixed layout around the record batches aiokafka's builder still makes, so
both directions are written out here: ~10 µs together.

`decode_produce` reads an answer for `kafka_conn`'s own connections. With SASL (which those do not
speak) `transmit` writes a request onto an `AIOKafkaConnection` the way its `send` does (its
writer, its correlation ids, its queue of awaited answers), minus the coroutine and timeout wrapper
around the answer: the answer comes back through a callback. `ProduceWire` stands in for aiokafka's request
struct where the connection reads the response (`parse_response_header`, `RESPONSE_TYPE.decode`),
and its answer has the shape of aiokafka's (`topics` = [(name, [(partition, error_code)])]).
The version is the highest both sides support up to 7, as aiokafka 0.14 picks it (v8 only adds
fields to the answer, which the decoder skips; v9 and later use flexible encodings).

`key_partition` is the Java client's (and aiokafka's default partitioner's) choice of partition
for a key, murmur2 over its bytes, computed a word at a time: ~4 µs instead of aiokafka's ~18 µs
for a 36-byte key (a call's correlation id: one per stateless call, past the key cache).
"""

from __future__ import annotations

import asyncio
import functools
import struct
from collections.abc import Callable, Sequence
from io import BytesIO
from typing import Any

from aiokafka.client import ConnectionGroup  # type: ignore[import-untyped]
from aiokafka.conn import CloseReason  # type: ignore[import-untyped]
from aiokafka.errors import (  # type: ignore[import-untyped]
    KafkaConnectionError,
    KafkaError,
    NodeNotReadyError,
    RequestTimedOutError,
    UnsupportedVersionError,
)

PRODUCE_API_KEY = 0
MIN_VERSION = 3  # record batches (magic 2) need produce v3
MAX_VERSION = 7  # the highest aiokafka 0.14 sends

_HEADER = struct.Struct(">ihhih")  # size, api_key, api_version, correlation_id, client_id length
_BODY_HEAD = struct.Struct(">hhii")  # transactional_id (null), acks, timeout_ms, topic count
_STRING = struct.Struct(">h")
_PARTITION_HEAD = struct.Struct(">ii")  # partition, record set size
_INT32 = struct.Struct(">i")
_PARTITION_ANSWER = struct.Struct(">ih")  # partition, error_code
_WORDS = struct.Struct("<I")
_M = 0x5BD1E995  # murmur2's mixing constant


def key_partition(key: bytes, ordered: Sequence[int]) -> int:
    """The partition of `ordered` (all of a topic's, sorted) that Kafka's default partitioner picks."""
    length = len(key)
    h = 0x9747B28C ^ length
    end = length & ~3
    for (k,) in _WORDS.iter_unpack(key[:end]):
        k = (k * _M) & 0xFFFFFFFF
        k = ((k ^ (k >> 24)) * _M) & 0xFFFFFFFF
        h = ((h * _M) & 0xFFFFFFFF) ^ k
    extra = length & 3
    if extra == 3:
        h ^= key[end + 2] << 16
    if extra >= 2:
        h ^= key[end + 1] << 8
    if extra:
        h = ((h ^ key[end]) * _M) & 0xFFFFFFFF
    h = ((h ^ (h >> 13)) * _M) & 0xFFFFFFFF
    h ^= h >> 15
    return ordered[(h & 0x7FFFFFFF) % len(ordered)]


class WireError(Exception):
    """A produce response that does not parse (raised in the connection's reader, which closes the connection)."""


def produce_version(versions: dict[int, tuple[int, int]]) -> int | None:
    """The produce version to speak with a broker that announced `versions`, or None if none fits."""
    supported = versions.get(PRODUCE_API_KEY)
    if supported is None:
        return None
    low, high = supported
    version = min(high, MAX_VERSION)
    return version if version >= max(low, MIN_VERSION) else None


def produce_frame(version: int, correlation_id: int, client_id: bytes, acks: int, timeout_ms: int,
                  topics: Sequence[tuple[str, Sequence[tuple[int, bytes | bytearray]]]]) -> bytes:
    """One size-prefixed produce request: header v1, then the body (the same for versions 3-8)."""
    parts: list[bytes | bytearray] = [b"", client_id, _BODY_HEAD.pack(-1, acks, timeout_ms, len(topics))]
    for topic, partitions in topics:
        name = topic.encode()
        parts.append(_STRING.pack(len(name)))
        parts.append(name)
        parts.append(_INT32.pack(len(partitions)))
        for partition, records in partitions:
            parts.append(_PARTITION_HEAD.pack(partition, len(records)))
            parts.append(records)
    size = sum(map(len, parts)) + _HEADER.size - 4
    parts[0] = _HEADER.pack(size, PRODUCE_API_KEY, version, correlation_id, len(client_id))
    return b"".join(parts)


class _Header:
    __slots__ = ("correlation_id",)

    def __init__(self, correlation_id: int) -> None:
        self.correlation_id = correlation_id


class ProduceAnswer:
    """Per topic, per partition: (partition, error_code); what the produce path reads of a response."""

    __slots__ = ("topics",)

    def __init__(self, topics: list[tuple[str, list[tuple[int, int]]]]) -> None:
        self.topics = topics

    def __repr__(self) -> str:
        return f"ProduceAnswer({self.topics!r})"


class _Decoder:
    """`RESPONSE_TYPE` for aiokafka's reader: `decode(buffer)` past the response header."""

    __slots__ = ("version",)

    def __init__(self, version: int) -> None:
        self.version = version

    def decode(self, buffer: BytesIO) -> ProduceAnswer:
        data = buffer.getbuffer()
        return decode_produce(self.version, data, buffer.tell(), len(data))


def decode_produce(version: int, data: bytes | memoryview, start: int, end: int) -> ProduceAnswer:
    """The produce answer in data[start:end] (past the response header); WireError if malformed."""
    try:
        return _decode(version, data, start, end)
    except (struct.error, UnicodeDecodeError, IndexError) as exc:
        raise WireError(f"malformed produce response (v{version}): {exc}") from exc


def _decode(version: int, data: bytes | memoryview, pos: int, end: int) -> ProduceAnswer:
    unpack_int32, unpack_string, unpack_answer = _INT32.unpack_from, _STRING.unpack_from, _PARTITION_ANSWER.unpack_from
    # Per partition after (partition, error_code): base_offset, log_append_time (v2+), log_start_offset (v5+).
    fixed = 6 + 8 + 8 + (8 if version >= 5 else 0)
    topics: list[tuple[str, list[tuple[int, int]]]] = []
    (topic_count,) = unpack_int32(data, pos)
    pos += 4
    for _ in range(topic_count):
        (length,) = unpack_string(data, pos)
        pos += 2
        name = bytes(data[pos:pos + length]).decode()
        pos += length
        (count,) = unpack_int32(data, pos)
        pos += 4
        partitions: list[tuple[int, int]] = []
        for _ in range(count):
            partitions.append(unpack_answer(data, pos))
            pos += fixed
            if version >= 8:
                (errors,) = unpack_int32(data, pos)  # record_errors: (batch_index, message)
                pos += 4
                for _ in range(max(0, errors)):
                    (length,) = unpack_string(data, pos + 4)
                    pos += 6 + max(0, length)
                (length,) = unpack_string(data, pos)  # error_message
                pos += 2 + max(0, length)
        topics.append((name, partitions))
    if pos > end:
        raise WireError(f"produce response (v{version}) ends before its last field")
    return ProduceAnswer(topics)


class ProduceWire:
    """What `AIOKafkaConnection` keeps of a request it awaits an answer to (see the module docstring)."""

    __slots__ = ("RESPONSE_TYPE",)

    FLEXIBLE_VERSION = False

    def __init__(self, version: int) -> None:
        self.RESPONSE_TYPE = _Decoder(version)

    def parse_response_header(self, buffer: BytesIO) -> _Header:
        (correlation_id,) = _INT32.unpack(buffer.read(4))
        return _Header(correlation_id)


Topics = Sequence[tuple[str, Sequence[tuple[int, bytes | bytearray]]]]


def transmit(conn: Any, node: int, client_id: bytes, timeout_ms: int, topics: Topics,
             on_answer: Callable[[Any], None]) -> None:
    """Write one produce request (acks=all) onto `conn`, aiokafka's connection to broker `node` (None:
    not connected). `on_answer` is called once, on the loop, with the `ProduceAnswer` or the error
    (a KafkaError or OSError). A request unanswered after `timeout_ms` closes the connection, as
    aiokafka's client does, so the next attempt starts on a fresh one."""
    loop = asyncio.get_running_loop()
    if conn is None:
        loop.call_soon(on_answer, NodeNotReadyError(f"no connection to broker {node}"))
        return
    version = produce_version(conn._versions)
    if version is None:
        loop.call_soon(on_answer, UnsupportedVersionError(
            f"broker {node} speaks no produce version from {MIN_VERSION} to {MAX_VERSION}: {conn._versions.get(0)}"))
        return
    correlation_id = conn._next_correlation_id()
    try:
        conn._writer.write(produce_frame(version, correlation_id, client_id, -1, timeout_ms, topics))
    except OSError as exc:
        conn.close(reason=CloseReason.CONNECTION_BROKEN, exc=exc)
        loop.call_soon(on_answer, KafkaConnectionError(f"connection to broker {node} broken: {exc}"))
        return
    response: asyncio.Future[Any] = loop.create_future()
    # aiokafka's reader answers the head of this queue with each frame that comes in.
    conn._requests.append((correlation_id, ProduceWire(version), response))
    timer = loop.call_at(loop.time() + timeout_ms / 1000, _timed_out, conn, response)
    response.add_done_callback(functools.partial(_delivered, on_answer, timer))


def _timed_out(conn: Any, response: asyncio.Future[Any]) -> None:
    if not response.done():
        response.set_exception(RequestTimedOutError())
        conn.close(reason=CloseReason.CONNECTION_TIMEOUT)


def _delivered(on_answer: Callable[[Any], None], timer: asyncio.TimerHandle, response: asyncio.Future[Any]) -> None:
    timer.cancel()
    if response.cancelled():
        on_answer(KafkaConnectionError("the produce request was cancelled"))
        return
    error = response.exception()
    if error is None:
        on_answer(response.result())
    elif isinstance(error, KafkaError | OSError):
        on_answer(error)
    else:  # e.g. a malformed answer: the reader closed the connection
        on_answer(KafkaConnectionError(f"the produce response could not be read: {error!r}"))


class AiokafkaLinks:
    """`DirectSender`'s links to brokers over aiokafka's own connections (its reader task reads the
    answers): for SASL, which `kafka_conn.LeaderLinks` does not speak."""

    def __init__(self, client: Any, client_id: bytes, timeout_ms: int) -> None:
        self._client = client
        self._client_id = client_id
        self._timeout_ms = timeout_ms

    def connection(self, node: int) -> Any:
        conn = self._client._conns.get((node, ConnectionGroup.DEFAULT))
        return conn if conn is not None and conn.connected() else None

    async def ready(self, node: int) -> None:
        await self._client.ready(node)

    def transmit(self, node: int, topics: Topics, on_answer: Callable[[Any], None]) -> None:
        transmit(self.connection(node), node, self._client_id, self._timeout_ms, topics, on_answer)

    async def close(self) -> None:
        """aiokafka's producer closes its connections."""
