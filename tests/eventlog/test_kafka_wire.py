"""kafka_wire against aiokafka's own implementations: the same partitions, bytes and answers."""

from __future__ import annotations

import io
import random
import struct

import pytest
from aiokafka.partitioner import DefaultPartitioner  # type: ignore[import-untyped]
from aiokafka.protocol import produce  # type: ignore[import-untyped]

from eventlog.kafka_wire import ProduceWire, WireError, key_partition, produce_frame


def test_keys_get_the_partition_aiokafkas_default_partitioner_picks() -> None:
    partitioner = DefaultPartitioner()
    rng = random.Random(7)
    for _ in range(5000):
        key = rng.randbytes(rng.randrange(0, 80))
        partitions = list(range(rng.choice([1, 3, 6, 7, 12, 64])))
        assert key_partition(key, partitions) == partitioner(key, partitions, partitions), key


@pytest.mark.parametrize("version", [3, 5, 7])
def test_a_produce_frame_decodes_with_aiokafkas_request_schema(version: int) -> None:
    topics = [("mcp.events", [(0, b"batch-a"), (4, b"batch-b" * 100)]), ("other", [(1, b"c")])]
    frame = produce_frame(version, 42, b"mcpgw", -1, 10_000, topics)
    assert struct.unpack_from(">i", frame)[0] == len(frame) - 4
    api_key, api_version, correlation_id, client_id_length = struct.unpack_from(">hhih", frame, 4)
    assert (api_key, api_version, correlation_id, frame[14:14 + client_id_length]) == (0, version, 42, b"mcpgw")
    request = getattr(produce, f"ProduceRequest_v{version}").decode(io.BytesIO(frame[14 + client_id_length:]))
    assert (request.transactional_id, request.required_acks, request.timeout) == (None, -1, 10_000)
    assert request.topics == topics


@pytest.mark.parametrize("version", [3, 5, 7, 8])
def test_produce_answers_decode_as_aiokafka_reads_them(version: int) -> None:
    response = getattr(produce, f"ProduceResponse_v{version}")
    extra = {5: (0,), 8: (0, [(1, "bad record")], "some error")}
    tail = extra[8] if version >= 8 else extra[5] if version >= 5 else ()
    partitions = [(p, code, 100 + p, -1, *tail) for p, code in [(0, 0), (3, 6)]]
    body = response(topics=[("mcp.events", partitions), ("x", [(1, 0, 5, -1, *tail)])], throttle_time_ms=0).encode()
    buffer = io.BytesIO(struct.pack(">i", 9) + body)
    wire = ProduceWire(version)
    assert wire.parse_response_header(buffer).correlation_id == 9
    answer = wire.RESPONSE_TYPE.decode(buffer)
    assert answer.topics == [("mcp.events", [(0, 0), (3, 6)]), ("x", [(1, 0)])]
    with pytest.raises(WireError):
        ProduceWire(version).RESPONSE_TYPE.decode(io.BytesIO(body[:-12]))
