"""The verifier against what ingress really writes (tests may import ingress; consumers may not):
chains stamped and checkpoints signed by ingress/chain.py, and the published schema examples."""

from __future__ import annotations

from consumers.compliance.report import FindingKind
from consumers.compliance.verify import verify
from ingress.chain import Chain, CheckpointPolicy
from schemas.codec import event_hash
from schemas.events import Direction, EventType, GatewayEvent, Kind
from tests.schemas.example_values import CHECKPOINT_KEY, gateway_events


def test_ingress_chain_verifies() -> None:
    key = b"ingress-key"
    chain = Chain(event_hash, CheckpointPolicy(every_events=3, key=key), stream_id="s-ingress")
    events: list[GatewayEvent] = []
    for i in range(10):
        batch = [GatewayEvent(EventType.AGENT_MESSAGE_RECEIVED, Kind.REQUEST, Direction.AGENT_TO_GATEWAY,
                              event_id=f"e-{i}", ts_us=i)]
        if chain.checkpoint_due():
            batch.append(chain.checkpoint("gw-1"))  # created before the batch is stamped, as log_sink does
        for event in batch:
            chain.stamp(event)
        events.extend(batch)
    report = verify(events, key)
    assert report.ok, report.findings
    assert report.counts["checkpoints_verified"] == report.counts["checkpoints"] >= 3
    assert not verify(events, b"another-key").ok


def test_schema_examples_verify_with_their_acknowledged_gap() -> None:
    report = verify(gateway_events(), CHECKPOINT_KEY)
    assert report.ok, report.findings
    assert [(f.kind, f.seq) for f in report.findings] == [(FindingKind.ACKNOWLEDGED_GAP, 13)]
    assert report.counts["checkpoints_verified"] == 1 and report.counts["payloads_truncated"] == 1
