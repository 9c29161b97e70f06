"""Checking the audit chain (DESIGN.md §2, "provably complete and untampered"). Pure.

Each ingress process is one stream: events numbered 1, 2, … (`seq`), each `hash` the SHA-256 of
the event's canonical bytes (which cover `prev_hash` and `seq`), each `prev_hash` the hash of the
event before, and the first one's 64 zeros. Checkpoint events carry the head (`seq`, `hash`) with an
HMAC-SHA256 signature over f"{stream_id}:{seq}:{hash}". What each check proves:

- seq completeness: a missing seq is a deleted row, unless an `audit_gap_recorded` event names
  exactly that range (the log refused those events, and their calls were not made);
- recomputed hash: a row whose content was changed but whose `hash` was kept;
- prev_hash link: a row rewritten *with* a recomputed hash breaks the link of the row after it;
- payload hash: the stored bytes are the evidence the row describes (skipped for truncated payloads,
  whose `payload_sha256` is over bytes no longer stored);
- signed checkpoints: a chain rewritten from some row onwards, links and all, no longer matches the
  heads the gateway signed. Rows after the last signed head are protected by links alone.

`StreamVerifier` takes one stream's events in seq order, one at a time, and keeps only a bounded
window of recent hashes (to compare checkpoint heads, which name a seq shortly before them), so a
store can page millions of rows through it. `verify` groups and sorts in memory, for small inputs.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from consumers.compliance.report import NOTICES, Finding, FindingKind, Report, StreamReport
from schemas.codec import CodecError, event_hash
from schemas.events import EventType, GatewayEvent

GENESIS = "0" * 64
DEFAULT_HEAD_WINDOW = 65_536
DEFAULT_MAX_FINDINGS = 1_000
_CHECKPOINT = re.compile(r"head seq=(\d+) hash=([0-9a-f]{64}) sig=(\S+)")
_GAP_RECORD = re.compile(r"seq (\d+-\d+(?:, \d+-\d+)*) were refused\b.*", re.DOTALL)
_RANGE = re.compile(r"(\d+)-(\d+)")


def sign_head(key: bytes, stream_id: str, seq: int, head_hash: str) -> str:
    """The checkpoint signature ingress computes (ingress/chain.py), recomputed without importing it."""
    return hmac.new(key, f"{stream_id}:{seq}:{head_hash}".encode(), hashlib.sha256).hexdigest()


@dataclass(frozen=True, slots=True)
class _Missing:
    first: int
    last: int
    next_seq: int
    next_event_id: str


@dataclass(frozen=True, slots=True)
class _Ack:
    first: int
    last: int
    seq: int
    event_id: str


class StreamVerifier:
    def __init__(self, stream_id: str, checkpoint_key: bytes | str | None = None, *, start_seq: int = 1,
                 head_window: int = DEFAULT_HEAD_WINDOW, max_findings: int = DEFAULT_MAX_FINDINGS) -> None:
        """`start_seq`: check from that seq on (a store whose retention dropped older rows)."""
        self.key = (checkpoint_key.encode() if isinstance(checkpoint_key, str) else checkpoint_key) or None
        self.start_seq = start_seq
        self.report = StreamReport(stream_id, signatures_checked=self.key is not None)
        self._max_findings = max_findings
        self._last_seq: int | None = None
        self._at_last_seq: list[GatewayEvent] = []  # the rows read so far at the current seq
        self._link_from: frozenset[str] | None = frozenset({GENESIS}) if start_seq == 1 else None
        self._hashes: dict[int, tuple[str, ...]] = {}  # seq → hashes of its rows, the last `head_window` seqs
        self._order: deque[int] = deque()
        self._window = head_window
        self._linked: dict[int, str] = {}  # seq → its hash as the next row's prev_hash states it (after gaps)
        self._missing: list[_Missing] = []
        self._acks: list[_Ack] = []

    def feed(self, event: GatewayEvent) -> None:
        r = self.report
        if event.stream_id != r.stream_id:
            raise ValueError(f"event of stream {event.stream_id!r} fed to the verifier of {r.stream_id!r}")
        if self._last_seq is not None and event.seq < self._last_seq:
            raise ValueError(f"events must come in seq order: seq {event.seq} after {self._last_seq}")
        r.rows += 1
        if event.seq < 1:
            self._find(FindingKind.INVALID_SEQ, event, f"seq {event.seq} is below 1")
            return
        if event.seq < self.start_seq:
            return
        if event.seq == self._last_seq:
            if self._duplicate(event):
                return
        else:
            self._advance(event)
        self._check_hash(event)
        self._check_link(event)
        self._remember(event)
        self._check_payload(event)
        if event.event_type == EventType.CHECKPOINT_RECORDED:
            self._check_checkpoint(event)
        elif event.event_type == EventType.AUDIT_GAP_RECORDED:
            self._note_gap_record(event)

    def finish(self) -> StreamReport:
        for gap in self._missing:
            self._classify(gap)
        self.report.findings.sort(key=lambda f: f.seq if f.seq is not None else 0)  # stable: feed order within a seq
        return self.report

    def _advance(self, event: GatewayEvent) -> None:
        r = self.report
        expected = self.start_seq if self._last_seq is None else self._last_seq + 1
        if self._last_seq is None:
            r.first_seq = event.seq
        if event.seq > expected:
            self._missing.append(_Missing(expected, event.seq - 1, event.seq, event.event_id))
            self._linked[event.seq - 1] = event.prev_hash
            self._link_from = None  # the row it links to is missing: the gap itself is the finding
        elif self._last_seq is not None:
            self._link_from = frozenset(e.hash for e in self._at_last_seq)
        self._last_seq = r.last_seq = event.seq
        self._at_last_seq = []

    def _duplicate(self, event: GatewayEvent) -> bool:
        """True when `event` repeats, field for field, a row already checked (nothing more to check)."""
        if event in self._at_last_seq:
            self._find(FindingKind.DUPLICATE_ROW, event, "stored again; identical to the row already read")
            return True
        others = ", ".join(e.event_id for e in self._at_last_seq)
        self._find(FindingKind.DUPLICATE_SEQ, event,
                   f"a second, different row with seq {event.seq} (also there: event_id {others})")
        return False

    def _check_hash(self, event: GatewayEvent) -> None:
        try:
            recomputed = event_hash(event)
        except CodecError as exc:
            self._find(FindingKind.HASH_MISMATCH, event, f"content no longer fits the event schema: {exc}")
            return
        if recomputed != event.hash:
            self._find(FindingKind.HASH_MISMATCH, event,
                       f"content hashes to {recomputed}, the row says {event.hash or '(empty)'}: the row was altered")

    def _check_link(self, event: GatewayEvent) -> None:
        if self._link_from is None or event.prev_hash in self._link_from:
            return
        if event.seq == 1:
            detail = f"prev_hash is {event.prev_hash or '(empty)'}, not the genesis hash: the chain breaks here"
        else:
            before = " or ".join(sorted(self._link_from))
            detail = (f"prev_hash {event.prev_hash or '(empty)'} is not seq {event.seq - 1}'s hash {before}: "
                      f"the chain breaks here (seq {event.seq - 1} or this row was rewritten or replaced)")
        self._find(FindingKind.BROKEN_LINK, event, detail)

    def _remember(self, event: GatewayEvent) -> None:
        self._at_last_seq.append(event)
        known = self._hashes.get(event.seq)
        if known is None:
            self._order.append(event.seq)
            if len(self._order) > self._window:
                del self._hashes[self._order.popleft()]
        self._hashes[event.seq] = (*(known or ()), event.hash)

    def _check_payload(self, event: GatewayEvent) -> None:
        r = self.report
        if event.payload_truncated:
            r.payloads_truncated += 1
            if len(event.payload) >= event.payload_size > 0:
                self._find(FindingKind.PAYLOAD_MISMATCH, event, f"marked truncated, but its {len(event.payload)} "
                           f"stored bytes are not fewer than payload_size {event.payload_size}")
            return
        if not event.payload and not event.payload_sha256:
            return  # an event that carries no message
        digest = hashlib.sha256(event.payload).hexdigest()
        if digest != event.payload_sha256:
            self._find(FindingKind.PAYLOAD_MISMATCH, event, f"sha256(payload) is {digest}, payload_sha256 says "
                       f"{event.payload_sha256 or '(empty)'}: the stored payload is not the recorded one")
        elif len(event.payload) != event.payload_size:
            self._find(FindingKind.PAYLOAD_MISMATCH, event,
                       f"payload is {len(event.payload)} bytes, payload_size says {event.payload_size}")
        else:
            r.payloads_checked += 1

    def _check_checkpoint(self, event: GatewayEvent) -> None:
        r = self.report
        r.checkpoints += 1
        match = _CHECKPOINT.fullmatch(event.detail)
        if match is None:
            self._find(FindingKind.MALFORMED_RECORD, event, f"checkpoint names no head: {event.detail!r}")
            return
        head_seq, head_hash, signature = int(match[1]), match[2], match[3]
        head_ok = self._check_head(event, head_seq, head_hash)
        if self.key is None:
            return
        if signature == "unsigned":
            self._find(FindingKind.UNSIGNED_CHECKPOINT, event, f"head seq {head_seq} is not signed")
        elif not hmac.compare_digest(sign_head(self.key, r.stream_id, head_seq, head_hash), signature):
            self._find(FindingKind.BAD_SIGNATURE, event,
                       f"signature over head seq {head_seq} hash {head_hash} does not verify with the key")
        elif head_ok:
            r.checkpoints_verified += 1
            r.last_verified_head = head_seq

    def _check_head(self, event: GatewayEvent, head_seq: int, head_hash: str) -> bool:
        if head_seq >= event.seq:
            self._find(FindingKind.CHECKPOINT_MISMATCH, event, f"names head seq {head_seq}, not before itself")
            return False
        if head_seq < self.start_seq:
            return False
        known = self._hashes.get(head_seq) or ((self._linked[head_seq],) if head_seq in self._linked else None)
        if known is None:
            if self._order and head_seq < self._order[0] and len(self._order) >= self._window:
                self._find(FindingKind.CHECKPOINT_UNCHECKED, event,
                           f"head seq {head_seq} is older than the last {self._window} seqs kept for comparison")
            else:
                self._find(FindingKind.CHECKPOINT_MISMATCH, event,
                           f"signs head seq {head_seq}, which is missing from the store")
            return False
        if head_hash not in known:
            self._find(FindingKind.CHECKPOINT_MISMATCH, event, f"signs head seq {head_seq} with hash {head_hash}, "
                       f"but the chain has {' or '.join(known)} there: the chain was rewritten")
            return False
        return True

    def _note_gap_record(self, event: GatewayEvent) -> None:
        match = _GAP_RECORD.fullmatch(event.detail)
        if match is None:
            self._find(FindingKind.MALFORMED_RECORD, event, f"gap record names no seq range: {event.detail!r}")
            return
        for a, b in _RANGE.findall(match[1]):
            first, last = int(a), int(b)
            self._acks.append(_Ack(first, last, event.seq, event.event_id))
            present = sorted(s for s in self._hashes if first <= s <= last)
            if present:
                self._find(FindingKind.REFUSED_BUT_RECORDED, event, f"records seq {first}-{last} as refused, "
                           f"but rows {present[0]}..{present[-1]} are in the store (the log took them after all)")

    def _classify(self, gap: _Missing) -> None:
        """Acknowledged only when gap records, each written after its range, tile exactly this range."""
        starts: dict[int, list[_Ack]] = {}
        for ack in self._acks:
            if ack.seq > ack.last:
                starts.setdefault(ack.first, []).append(ack)
        cursor, used = gap.first, []
        while cursor <= gap.last:
            fits = [a for a in starts.get(cursor, []) if a.last <= gap.last]
            if not fits:
                break
            ack = max(fits, key=lambda a: a.last)
            used.append(ack)
            cursor = ack.last + 1
        span = f"seq {gap.first}-{gap.last}" if gap.first != gap.last else f"seq {gap.first}"
        count = f"{gap.last - gap.first + 1} row{'s' if gap.last > gap.first else ''}"
        if cursor == gap.last + 1:
            by = ", ".join(f"seq {a.seq}" for a in used)
            self._find_at(FindingKind.ACKNOWLEDGED_GAP, gap.first, ",".join(a.event_id for a in used),
                          f"{span} missing ({count}); audit_gap_recorded at {by} says the log refused them "
                          f"and their calls were not made")
            return
        after = f"seq {gap.first - 1}" if gap.first > self.start_seq else "the stream's start"
        partly = f" (gap records cover only seq {gap.first}-{cursor - 1})" if used else ""
        self._find_at(FindingKind.GAP, gap.first, "",
                      f"{span} missing ({count}) and not acknowledged by an audit_gap_recorded event{partly}: "
                      f"the chain breaks between {after} and seq {gap.next_seq} (event_id {gap.next_event_id})")

    def _find(self, kind: FindingKind, event: GatewayEvent, detail: str) -> None:
        self._find_at(kind, event.seq, event.event_id, detail)

    def _find_at(self, kind: FindingKind, seq: int, event_id: str, detail: str) -> None:
        r = self.report
        r.counts[kind] = r.counts.get(kind, 0) + 1
        if len(r.findings) < self._max_findings or (kind not in NOTICES and self._drop_a_notice()):
            r.findings.append(Finding(kind, r.stream_id, seq, event_id, detail))
        else:
            r.findings_omitted += 1

    def _drop_a_notice(self) -> bool:
        """At the cap, a problem displaces a notice: the list an auditor reads should show problems first."""
        for i, f in enumerate(self.report.findings):
            if not f.problem:
                del self.report.findings[i]
                self.report.findings_omitted += 1
                return True
        return False


def verify_stream(events: Iterable[GatewayEvent], checkpoint_key: bytes | str | None = None, *,
                  stream_id: str | None = None, start_seq: int = 1, head_window: int = DEFAULT_HEAD_WINDOW,
                  max_findings: int = DEFAULT_MAX_FINDINGS) -> StreamReport:
    """Check one stream's events, given in seq order (consumed lazily, one pass)."""
    verifier: StreamVerifier | None = None
    if stream_id is not None:
        verifier = StreamVerifier(stream_id, checkpoint_key, start_seq=start_seq, head_window=head_window,
                                  max_findings=max_findings)
    for event in events:
        if verifier is None:
            verifier = StreamVerifier(event.stream_id, checkpoint_key, start_seq=start_seq,
                                      head_window=head_window, max_findings=max_findings)
        verifier.feed(event)
    if verifier is None:
        return StreamReport("", signatures_checked=bool(checkpoint_key))
    return verifier.finish()


def verify(events: Iterable[GatewayEvent], checkpoint_key: bytes | str | None = None) -> Report:
    """Check every stream in `events`, in any order (held in memory: for exports and tests, not a whole store)."""
    streams: dict[str, list[GatewayEvent]] = {}
    for event in events:
        streams.setdefault(event.stream_id, []).append(event)
    return Report([
        verify_stream(sorted(evs, key=lambda e: (e.seq, e.event_id)), checkpoint_key, stream_id=sid)
        for sid, evs in sorted(streams.items())
    ])
