"""Numbering and chaining this process's events, and signing checkpoints of the chain head (pure).

Each ingress process is one stream: events get `stream_id`, a gap-free `seq`, `prev_hash` (the
hash of the event before) and `hash` (SHA-256 of the event's canonical bytes, which include
`prev_hash` and `seq`), so a missing or altered event breaks the chain where it happened. Every N
events or T seconds a checkpoint event carries the head (`seq`, `hash`) signed with an HMAC key,
so even a rewritten chain cannot be passed off as ours.
"""

from __future__ import annotations

import hashlib
import hmac
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from schemas.events import Direction, EventType, GatewayEvent, Kind, Outcome, new_event_id

GENESIS = "0" * 64  # prev_hash of a stream's first event


@dataclass(frozen=True, slots=True)
class CheckpointPolicy:
    every_events: int = 1000
    every_seconds: float = 60.0
    key: bytes = b""  # empty: checkpoints are emitted unsigned (signature "")


def sign_head(key: bytes, stream_id: str, seq: int, head_hash: str) -> str:
    """The checkpoint signature over (stream, seq, head hash); verify recomputes it."""
    if not key:
        return ""
    return hmac.new(key, f"{stream_id}:{seq}:{head_hash}".encode(), hashlib.sha256).hexdigest()


class Chain:
    def __init__(self, hasher: Callable[[GatewayEvent], str], policy: CheckpointPolicy,
                 stream_id: str | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self._hasher = hasher
        self.policy = policy
        self.stream_id = stream_id or uuid.uuid4().hex
        self.seq = 0
        self.head = GENESIS
        self._clock = clock
        self._since_checkpoint = 0
        self._last_checkpoint = clock()

    def stamp(self, event: GatewayEvent) -> None:
        """Number and hash one event (in the order it will be written)."""
        self.seq += 1
        event.stream_id = self.stream_id
        event.seq = self.seq
        event.prev_hash = self.head
        event.hash = ""
        event.hash = self._hasher(event)
        self.head = event.hash
        self._since_checkpoint += 1

    def stamp_encoded(self, event: GatewayEvent, seal: Callable[[GatewayEvent], bytes]) -> bytes:
        """`stamp`, with `seal` setting the hash (as the hasher would) and returning the encoded event.

        For an encoder that gets the hash and the wire bytes from one encoding (`EventCodec.seal`).
        """
        self.seq += 1
        event.stream_id = self.stream_id
        event.seq = self.seq
        event.prev_hash = self.head
        encoded = seal(event)
        self.head = event.hash
        self._since_checkpoint += 1
        return encoded

    def mark(self) -> tuple[int, str, int, float]:
        """The chain's state now, to `rewind` to if what was stamped since is never written."""
        return self.seq, self.head, self._since_checkpoint, self._last_checkpoint

    def rewind(self, mark: tuple[int, str, int, float]) -> None:
        """Back to `mark`, as if nothing was stamped (nor checkpointed) since: the numbers are free again.

        Only for events that failed to be made, before anything stamped after them was handed on.
        """
        self.seq, self.head, self._since_checkpoint, self._last_checkpoint = mark

    def checkpoint_due(self) -> bool:
        return self._since_checkpoint > 0 and (
            self._since_checkpoint >= self.policy.every_events
            or self._clock() - self._last_checkpoint >= self.policy.every_seconds
        )

    def checkpoint(self, instance: str) -> GatewayEvent:
        """A checkpoint event for the current head; stamp it like any other event to append it."""
        signed_seq, signed_hash = self.seq, self.head
        signature = sign_head(self.policy.key, self.stream_id, signed_seq, signed_hash)
        self._since_checkpoint = 0
        self._last_checkpoint = self._clock()
        return GatewayEvent(
            event_type=EventType.CHECKPOINT_RECORDED, kind=Kind.LIFECYCLE, direction=Direction.INTERNAL,
            outcome=Outcome.OK, event_id=new_event_id(), ts_us=time.time_ns() // 1000, gateway_instance=instance,
            principal="gateway", transport="internal",
            detail=f"head seq={signed_seq} hash={signed_hash} sig={signature or 'unsigned'}",
        )
