"""KafkaSettings validation (no broker)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from eventlog.base import TOPIC_DEAD_LETTER, TOPIC_DECISIONS, TOPIC_EVENTS, TOPIC_RISK
from eventlog.kafka_settings import KafkaSettings, TopicSettings


def test_defaults_are_the_audit_safe_ones() -> None:
    settings = KafkaSettings(bootstrap_servers="127.0.0.1:9092")
    assert settings.acks == "all"
    assert settings.enable_idempotence is True
    assert settings.compression == "zstd"
    assert settings.create_topics is True
    assert set(settings.topics) == {TOPIC_EVENTS, TOPIC_RISK, TOPIC_DECISIONS, TOPIC_DEAD_LETTER}
    assert settings.topics[TOPIC_DECISIONS].compacted
    assert not settings.topics[TOPIC_EVENTS].compacted


@pytest.mark.parametrize("acks", ["1", "0", 1, -1])
def test_acks_cannot_be_lowered(acks: object) -> None:
    with pytest.raises(ValidationError, match="acks"):
        KafkaSettings(bootstrap_servers="b:9092", acks=acks)


def test_unknown_keys_are_refused() -> None:
    with pytest.raises(ValidationError, match="lingerms"):
        KafkaSettings.model_validate({"bootstrap_servers": "b:9092", "lingerms": 5})


def test_a_configured_topic_keeps_the_defaults_of_the_others() -> None:
    settings = KafkaSettings.model_validate(
        {"bootstrap_servers": "b:9092", "topics": {TOPIC_EVENTS: {"partitions": 24}, "extra": {"partitions": 2}}}
    )
    assert settings.topics[TOPIC_EVENTS].partitions == 24
    assert settings.topics[TOPIC_DECISIONS].compacted
    assert settings.topic("extra").partitions == 2
    assert settings.topic("never-configured") == TopicSettings()


@pytest.mark.parametrize(
    ("brokers", "rf", "isr"),
    [(1, 1, 1), (2, 2, 1), (3, 3, 2), (7, 3, 2)],
)
def test_replication_follows_the_cluster_size_unless_set(brokers: int, rf: int, isr: int) -> None:
    resolved_rf, configs = TopicSettings().resolved(brokers)
    assert (resolved_rf, configs["min.insync.replicas"]) == (rf, str(isr))
    explicit_rf, explicit = TopicSettings(replication_factor=5, min_insync_replicas=3).resolved(brokers)
    assert (explicit_rf, explicit["min.insync.replicas"]) == (5, "3")


def test_topic_configs_carry_the_cleanup_policy() -> None:
    _, compacted = TopicSettings(compacted=True, retention_ms=1000).resolved(1)
    assert compacted["cleanup.policy"] == "compact"
    assert "retention.ms" not in compacted, "time retention must not delete the latest decision of a key"
    _, plain = TopicSettings(retention_ms=60_000, configs={"segment.ms": "1000"}).resolved(1)
    assert plain == {"cleanup.policy": "delete", "retention.ms": "60000", "min.insync.replicas": "1",
                     "segment.ms": "1000"}  # fmt: skip


def test_min_insync_cannot_exceed_replication() -> None:
    with pytest.raises(ValidationError, match="min_insync_replicas"):
        TopicSettings(replication_factor=2, min_insync_replicas=3)


def test_sasl_needs_its_credentials_and_a_sasl_protocol() -> None:
    with pytest.raises(ValidationError, match="needs sasl_mechanism"):
        KafkaSettings.model_validate({"bootstrap_servers": "b:9092", "security": {"security_protocol": "SASL_SSL"}})
    with pytest.raises(ValidationError, match="need security_protocol SASL"):
        KafkaSettings.model_validate({"bootstrap_servers": "b:9092", "security": {"sasl_mechanism": "PLAIN"}})
    settings = KafkaSettings.model_validate(
        {
            "bootstrap_servers": "b:9092",
            "security": {
                "security_protocol": "SASL_PLAINTEXT",
                "sasl_mechanism": "SCRAM-SHA-512",
                "sasl_plain_username": "gw",
                "sasl_plain_password": "s3cret",
            },
        }
    )
    kwargs = settings.client_kwargs()
    assert kwargs["sasl_mechanism"] == "SCRAM-SHA-512"
    assert kwargs["sasl_plain_password"] == "s3cret"
    assert "s3cret" not in repr(settings), "the password must not leak into logs of the settings"


def test_tls_builds_a_verifying_context() -> None:
    settings = KafkaSettings.model_validate({"bootstrap_servers": "b:9093", "security": {"security_protocol": "SSL"}})
    context = settings.client_kwargs()["ssl_context"]
    assert context.check_hostname
    with pytest.raises(ValidationError, match="ssl_\\* fields need"):
        KafkaSettings.model_validate({"bootstrap_servers": "b:9092", "security": {"ssl_cafile": "/ca.pem"}})
