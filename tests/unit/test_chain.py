"""ingress/chain.py: numbering with a sealing encoder gives the chain the hasher gives."""

from __future__ import annotations

from dataclasses import replace
from itertools import pairwise

from ingress.chain import GENESIS, Chain, CheckpointPolicy
from schemas.codec import EventCodec, event_hash
from schemas.events import GatewayEvent
from tests.schemas.example_values import gateway_events


def fresh() -> list[GatewayEvent]:
    return [replace(e, stream_id="", seq=0, prev_hash="", hash="") for e in gateway_events()]


def test_stamp_encoded_matches_stamp_then_encode() -> None:
    codec = EventCodec()
    policy = CheckpointPolicy(every_events=5, key=b"k")
    hashed, sealed = Chain(event_hash, policy, stream_id="s"), Chain(event_hash, policy, stream_id="s")
    plain_events, sealed_events = fresh(), fresh()
    for plain, other in zip(plain_events, sealed_events, strict=True):
        hashed.stamp(plain)
        wire = sealed.stamp_encoded(other, codec.seal)
        assert other == plain
        assert wire == codec.encode(plain)
    assert sealed.head == hashed.head and sealed.seq == hashed.seq == len(plain_events)
    assert sealed_events[0].prev_hash == GENESIS
    assert all(b.prev_hash == a.hash for a, b in pairwise(sealed_events))
    assert sealed.checkpoint_due() == hashed.checkpoint_due()


def test_rewind_gives_back_the_numbers_and_the_checkpoint_taken_since_mark() -> None:
    codec = EventCodec()
    now = [0.0]
    chain = Chain(event_hash, CheckpointPolicy(every_events=2, key=b"k"), stream_id="s", clock=lambda: now[0])
    events = fresh()
    chain.stamp_encoded(events[0], codec.seal)
    chain.stamp_encoded(events[1], codec.seal)
    before = (chain.seq, chain.head, chain.checkpoint_due())
    mark = chain.mark()
    now[0] = 5.0
    chain.stamp_encoded(chain.checkpoint("gw"), codec.seal)
    chain.stamp_encoded(events[2], codec.seal)
    chain.rewind(mark)
    assert (chain.seq, chain.head, chain.checkpoint_due()) == before
    again = fresh()[2]
    chain.stamp_encoded(again, codec.seal)
    assert again.seq == 3 and again.prev_hash == events[1].hash
