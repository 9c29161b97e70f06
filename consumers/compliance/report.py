"""What `mcpgw audit verify` found: findings per stream, counts, and one verdict. Pure values.

A finding is a problem (the chain is not provably complete and untampered) or a notice (a fact an
auditor should see that breaks no promise: a gap the gateway acknowledged, a redelivered row).
`ok` is true exactly when no stream has a problem.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class FindingKind(StrEnum):
    GAP = "gap"  # seq numbers missing that no audit_gap_recorded event explains
    ACKNOWLEDGED_GAP = "acknowledged_gap"  # missing seqs the gateway recorded as refused: their calls were not made
    DUPLICATE_SEQ = "duplicate_seq"  # two different rows claim one seq
    DUPLICATE_ROW = "duplicate_row"  # the same row stored twice (a redelivered insert)
    HASH_MISMATCH = "hash_mismatch"  # the row's content does not hash to its `hash`: altered
    BROKEN_LINK = "broken_link"  # `prev_hash` is not the previous row's hash: a row was rewritten or replaced
    PAYLOAD_MISMATCH = "payload_mismatch"  # stored payload does not match payload_sha256 / payload_size
    BAD_SIGNATURE = "bad_signature"  # checkpoint signature does not verify with the key
    UNSIGNED_CHECKPOINT = "unsigned_checkpoint"  # a key was given but the checkpoint carries no signature
    CHECKPOINT_MISMATCH = "checkpoint_mismatch"  # the signed head is not the chain's row at that seq
    MALFORMED_RECORD = "malformed_record"  # a checkpoint or gap event whose detail cannot be read
    INVALID_SEQ = "invalid_seq"  # seq below 1
    REFUSED_BUT_RECORDED = "refused_but_recorded"  # a row inside a range the gateway recorded as refused
    CHECKPOINT_UNCHECKED = "checkpoint_unchecked"  # head too far back to compare in one streaming pass


NOTICES = frozenset({
    FindingKind.ACKNOWLEDGED_GAP, FindingKind.DUPLICATE_ROW, FindingKind.REFUSED_BUT_RECORDED,
    FindingKind.CHECKPOINT_UNCHECKED,
})


@dataclass(frozen=True, slots=True)
class Finding:
    kind: FindingKind
    stream_id: str
    seq: int | None
    event_id: str
    detail: str

    @property
    def problem(self) -> bool:
        return self.kind not in NOTICES

    def to_dict(self) -> dict[str, Any]:
        return {"kind": str(self.kind), "problem": self.problem, "stream_id": self.stream_id, "seq": self.seq,
                "event_id": self.event_id, "detail": self.detail}


@dataclass(slots=True)
class StreamReport:
    stream_id: str
    rows: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    checkpoints: int = 0
    checkpoints_verified: int = 0  # signature and head both checked and sound
    last_verified_head: int | None = None  # rows after it are protected by links only, not by a signature
    payloads_checked: int = 0
    payloads_truncated: int = 0  # only a prefix is stored, so sha256(payload) cannot be compared
    signatures_checked: bool = False
    findings: list[Finding] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)  # by finding kind, complete even when findings are capped
    findings_omitted: int = 0

    @property
    def problems(self) -> int:
        return sum(n for kind, n in self.counts.items() if FindingKind(kind) not in NOTICES)

    @property
    def ok(self) -> bool:
        return self.problems == 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "stream_id": self.stream_id, "ok": self.ok, "rows": self.rows, "first_seq": self.first_seq,
            "last_seq": self.last_seq, "checkpoints": self.checkpoints,
            "checkpoints_verified": self.checkpoints_verified, "last_verified_head": self.last_verified_head,
            "payloads_checked": self.payloads_checked, "payloads_truncated": self.payloads_truncated,
            "signatures_checked": self.signatures_checked, "counts": dict(self.counts),
            "findings": [f.to_dict() for f in self.findings], "findings_omitted": self.findings_omitted,
        }


@dataclass(slots=True)
class Report:
    streams: list[StreamReport] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(s.ok for s in self.streams)

    @property
    def findings(self) -> list[Finding]:
        return [f for s in self.streams for f in s.findings]

    @property
    def problems(self) -> list[Finding]:
        return [f for f in self.findings if f.problem]

    @property
    def counts(self) -> dict[str, int]:
        totals: dict[str, int] = {"streams": len(self.streams), "rows": 0, "checkpoints": 0,
                                  "checkpoints_verified": 0, "payloads_checked": 0, "payloads_truncated": 0}
        for s in self.streams:
            totals["rows"] += s.rows
            totals["checkpoints"] += s.checkpoints
            totals["checkpoints_verified"] += s.checkpoints_verified
            totals["payloads_checked"] += s.payloads_checked
            totals["payloads_truncated"] += s.payloads_truncated
            for kind, n in s.counts.items():
                totals[kind] = totals.get(kind, 0) + n
        return totals

    def stream(self, stream_id: str) -> StreamReport:
        for s in self.streams:
            if s.stream_id == stream_id:
                return s
        raise KeyError(stream_id)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "counts": self.counts, "streams": [s.to_dict() for s in self.streams]}
