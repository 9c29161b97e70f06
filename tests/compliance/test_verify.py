"""consumers/compliance/verify.py on hand-built chains: each kind of tampering named precisely."""

from __future__ import annotations

import hashlib
import random
from dataclasses import replace

import pytest

from consumers.compliance.report import Finding, FindingKind, Report
from consumers.compliance.verify import StreamVerifier, verify, verify_stream
from tests.compliance.chains import KEY, ChainBuilder, rehash, sign

K = FindingKind


def kinds(report: Report) -> list[tuple[str, int | None]]:
    return [(str(f.kind), f.seq) for f in report.findings]


def only(report: Report, kind: FindingKind) -> Finding:
    matches = [f for f in report.findings if f.kind is kind]
    assert len(matches) == 1, report.findings
    return matches[0]


def clean_chain() -> ChainBuilder:
    b = ChainBuilder()
    b.messages(5)
    b.checkpoint()
    b.messages(4)
    b.truncated(b'{"big":"' + b"x" * 500 + b'"}', prefix=64)
    b.checkpoint()
    b.messages(2)
    return b


def test_clean_chain_is_ok() -> None:
    b = clean_chain()
    report = verify(b.events, KEY)
    assert report.ok, report.findings
    assert report.findings == []
    s = report.stream("stream-a")
    assert (s.rows, s.first_seq, s.last_seq) == (14, 1, 14)
    assert (s.checkpoints, s.checkpoints_verified, s.last_verified_head) == (2, 2, 11)
    assert (s.payloads_checked, s.payloads_truncated) == (11, 1)
    assert report.counts["rows"] == 14


def test_altered_payload_and_deleted_row_are_named() -> None:
    b = clean_chain()
    altered = b.at(3)
    altered.payload = altered.payload.replace(b"tools/call", b"tools/list")
    events = b.without(8)
    report = verify(events, KEY)
    assert not report.ok
    assert sorted(kinds(report)) == [("gap", 8), ("hash_mismatch", 3), ("payload_mismatch", 3)]
    changed = only(report, K.HASH_MISMATCH)
    assert (changed.stream_id, changed.event_id) == ("stream-a", altered.event_id)
    assert "altered" in changed.detail
    assert altered.payload_sha256 in only(report, K.PAYLOAD_MISMATCH).detail
    gap = only(report, K.GAP)
    assert gap.event_id == ""
    assert "seq 8 missing (1 row)" in gap.detail
    assert "between seq 7 and seq 9" in gap.detail and b.at(9).event_id in gap.detail
    assert report.stream("stream-a").counts == {"hash_mismatch": 1, "payload_mismatch": 1, "gap": 1}


def test_deleting_a_run_of_rows_names_the_range() -> None:
    b = clean_chain()
    report = verify(b.without(2, 3, 4), KEY)
    gap = only(report, K.GAP)
    assert gap.seq == 2 and "seq 2-4 missing (3 rows)" in gap.detail


def test_deleting_the_first_row_is_a_gap_at_the_start() -> None:
    b = clean_chain()
    gap = only(verify(b.without(1), KEY), K.GAP)
    assert gap.seq == 1 and "the stream's start" in gap.detail


def test_row_rewritten_with_a_recomputed_hash_breaks_the_next_link() -> None:
    b = clean_chain()
    forged = b.at(4)
    forged.payload = b'{"jsonrpc":"2.0","id":4,"method":"tools/list"}'
    forged.payload_sha256 = hashlib.sha256(forged.payload).hexdigest()
    forged.payload_size = len(forged.payload)
    rehash(forged)
    report = verify(b.events, KEY)
    # Row 4 is self-consistent; row 5 still links to the original, and checkpoint 6 signed row 5's hash
    # (which is unchanged), so the link is what names it.
    assert kinds(report) == [("broken_link", 5)]
    assert "seq 4 or this row was rewritten" in report.findings[0].detail


def test_rewritten_tail_is_caught_by_the_signed_checkpoint_only() -> None:
    b = clean_chain()
    # Rewrite seq 3..6 consistently (relinked, rehashed): only the checkpoint's signed head disagrees.
    head = b.at(2).hash
    for seq in range(3, 6):
        e = b.at(seq)
        e.tool, e.prev_hash = "fs__delete", head
        head = rehash(e).hash
    checkpoint = b.at(6)
    checkpoint.prev_hash = head
    rehash(checkpoint)
    b.at(7).prev_hash = checkpoint.hash
    rehash(b.at(7))
    report = verify(b.events, KEY)
    found = kinds(report)
    assert ("checkpoint_mismatch", 6) in found
    assert "the chain was rewritten" in only(report, K.CHECKPOINT_MISMATCH).detail
    assert ("broken_link", 8) in found  # row 8 was not rewritten: it still links to the original row 7


def test_forged_checkpoint_signature_is_named() -> None:
    b = ChainBuilder()
    b.messages(3)
    bad = b.checkpoint(key=b"not-the-gateway-key")
    b.messages(2)
    report = verify(b.events, KEY)
    finding = only(report, K.BAD_SIGNATURE)
    assert (finding.seq, finding.event_id) == (4, bad.event_id)
    assert "head seq 3" in finding.detail
    assert report.stream("stream-a").checkpoints_verified == 0
    assert not report.ok


def test_unsigned_and_malformed_checkpoints() -> None:
    b = ChainBuilder()
    b.messages(2)
    b.checkpoint(signature="unsigned")
    b.checkpoint(detail="head of nothing")
    assert sorted(kinds(verify(b.events, KEY))) == [("malformed_record", 4), ("unsigned_checkpoint", 3)]
    # Without a key, signatures are not checked (and not counted as verified), but heads still are.
    report = verify(b.without(4), None)
    assert report.ok and report.stream("stream-a").checkpoints_verified == 0
    assert not report.stream("stream-a").signatures_checked


def test_checkpoint_naming_a_deleted_head() -> None:
    b = ChainBuilder()
    b.messages(5)
    b.message()
    b.message()
    b.checkpoint(head_seq=5)  # signed before two more events were stamped into its batch
    report = verify(b.without(5, 6), KEY)
    assert sorted(kinds(report)) == [("checkpoint_mismatch", 8), ("gap", 5)]
    assert "missing from the store" in only(report, K.CHECKPOINT_MISMATCH).detail


def test_checkpoint_head_hash_must_be_the_chains() -> None:
    b = ChainBuilder()
    b.messages(3)
    wrong = "ab" * 32
    b.checkpoint(detail=f"head seq=3 hash={wrong} sig={sign(KEY, 'stream-a', 3, wrong)}")
    report = verify(b.events, KEY)
    assert kinds(report) == [("checkpoint_mismatch", 4)]


def test_checkpoint_head_beyond_the_window_is_a_notice() -> None:
    b = ChainBuilder()
    b.messages(5)
    b.checkpoint(head_seq=1)
    report = verify_stream(b.events, KEY, head_window=3)
    assert report.ok and [f.kind for f in report.findings] == [K.CHECKPOINT_UNCHECKED]


def test_reordered_input_verifies_and_swapped_seqs_do_not() -> None:
    b = clean_chain()
    shuffled = list(b.events)
    random.Random(7).shuffle(shuffled)
    assert verify(shuffled, KEY).ok
    with pytest.raises(ValueError, match="seq order"):
        verify_stream(shuffled, KEY)
    # Swap the positions of rows 2 and 3 (their seq numbers), keeping their hashes.
    two, three = b.at(2), b.at(3)
    two.seq, three.seq = 3, 2
    report = verify(b.events, KEY)
    assert ("hash_mismatch", 2) in kinds(report) and ("hash_mismatch", 3) in kinds(report)
    assert {f.event_id for f in report.findings if f.kind is K.HASH_MISMATCH} == {two.event_id, three.event_id}


def test_acknowledged_gap_is_a_notice() -> None:
    b = ChainBuilder()
    b.messages(3)
    refused = b.refuse(2)
    record = b.gap_record(refused)
    b.checkpoint()
    b.messages(2)
    report = verify(b.events, KEY)
    assert report.ok, report.findings
    finding = only(report, K.ACKNOWLEDGED_GAP)
    assert (finding.seq, finding.event_id) == (4, record.event_id)
    assert "seq 4-5 missing (2 rows)" in finding.detail and "seq 6" in finding.detail


def test_checkpoint_signing_a_refused_head_verifies_through_the_next_link() -> None:
    b = ChainBuilder()
    b.messages(2)
    refused = b.refuse(2)  # the checkpoint below signs seq 4, which never reached the log
    b.gap_record(refused)
    b.checkpoint(head_seq=4)
    report = verify(b.events, KEY)
    assert report.ok and report.stream("stream-a").checkpoints_verified == 1


def test_adjacent_refused_ranges_tile_one_gap() -> None:
    b = ChainBuilder()
    b.messages(2)
    first, second = b.refuse(2), b.refuse(3)
    b.gap_record(first, second)
    assert only(verify(b.events, KEY), K.ACKNOWLEDGED_GAP).seq == 3


@pytest.mark.parametrize("claimed", [(4, 4), (3, 6), (5, 5)])
def test_gap_record_must_name_exactly_the_missing_range(claimed: tuple[int, int]) -> None:
    b = ChainBuilder()
    b.messages(3)
    b.refuse(2)  # 4-5
    b.gap_record(claimed)
    b.messages(1)
    report = verify(b.events, KEY)
    assert not report.ok
    assert only(report, K.GAP).seq == 4


def test_gap_record_written_before_the_gap_does_not_excuse_it() -> None:
    b = ChainBuilder()
    b.messages(1)
    b.gap_record((3, 3))  # seq 2 claims seq 3 was refused before seq 3 existed
    b.messages(2)
    report = verify(b.without(3), KEY)
    assert only(report, K.GAP).seq == 3


def test_refused_range_present_in_the_store_is_a_notice() -> None:
    b = ChainBuilder()
    b.messages(3)
    b.gap_record((2, 3))
    report = verify(b.events, KEY)
    assert report.ok and only(report, K.REFUSED_BUT_RECORDED).seq == 4


def test_truncated_payload_skips_the_payload_hash() -> None:
    b = ChainBuilder()
    full = b'{"result":"' + b"y" * 1000 + b'"}'
    b.truncated(full, prefix=100)
    report = verify(b.events, KEY)
    assert report.ok and report.stream("stream-a").payloads_truncated == 1
    # The same prefix without the flag is an altered payload (and an altered row).
    b2 = ChainBuilder()
    b2.message(full[:100], payload_sha256=b.at(1).payload_sha256, payload_size=len(full))
    assert ("payload_mismatch", 1) in kinds(verify(b2.events, KEY))


def test_duplicates() -> None:
    b = clean_chain()
    redelivered = replace(b.at(5))
    report = verify([*b.events, redelivered], KEY)
    assert report.ok and only(report, K.DUPLICATE_ROW).seq == 5
    impostor = rehash(replace(b.at(5), event_id="00000000-0000-7000-8000-ffffffffffff", tool="fs__delete"))
    report = verify([*b.events, impostor], KEY)
    finding = only(report, K.DUPLICATE_SEQ)
    assert finding.seq == 5 and b.at(5).event_id in finding.detail + finding.event_id
    # An altered row stored twice is one altered row, and a redelivery.
    b.at(6).tool = "changed"
    report = verify([*b.events, replace(b.at(6))], KEY)
    assert sorted(kinds(report)) == [("duplicate_row", 6), ("hash_mismatch", 6)]


def test_genesis_link_and_invalid_seq() -> None:
    b = ChainBuilder()
    b.messages(2)
    first = b.at(1)
    first.prev_hash = "1" * 64
    rehash(first)
    assert ("broken_link", 1) in kinds(verify(b.events, KEY))
    zero = rehash(replace(b.at(2), seq=0))
    assert ("invalid_seq", 0) in kinds(verify([zero], KEY))


def test_streams_are_reported_separately() -> None:
    a, c = ChainBuilder("stream-a"), ChainBuilder("stream-c")
    a.messages(3)
    c.messages(3)
    c.at(2).tool = "changed"
    report = verify([*c.events, *a.events], KEY)
    assert [s.stream_id for s in report.streams] == ["stream-a", "stream-c"]
    assert report.stream("stream-a").ok and not report.stream("stream-c").ok
    assert report.findings[0].stream_id == "stream-c"


def test_findings_are_capped_but_counted_problems_first() -> None:
    b = ChainBuilder()
    b.messages(10)
    b.gap_record((20, 20))
    for e in b.events[:10]:
        e.tool = "changed"
    verifier = StreamVerifier("stream-a", KEY, max_findings=3)
    for e in b.events:
        verifier.feed(e)
    s = verifier.finish()
    assert s.counts["hash_mismatch"] == 10 and len(s.findings) == 3 and s.findings_omitted == 7
    assert all(f.problem for f in s.findings)


def test_stream_of_another_id_is_refused_and_empty_input_is_empty() -> None:
    b = ChainBuilder()
    b.messages(1)
    with pytest.raises(ValueError, match="fed to the verifier"):
        verify_stream(b.events, KEY, stream_id="other")
    empty = verify_stream([], KEY)
    assert empty.rows == 0 and empty.ok


def test_start_seq_checks_a_retained_suffix() -> None:
    b = clean_chain()
    assert verify_stream(b.events[5:], KEY, start_seq=6).ok
    assert not verify_stream(b.events[5:], KEY).ok


def test_key_given_as_text() -> None:
    b = clean_chain()
    assert verify(b.events, KEY.decode()).stream("stream-a").checkpoints_verified == 2
