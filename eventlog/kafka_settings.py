"""Settings of the Kafka backend: connection, producer durability, consumer group timing, topics.

`KafkaSettings` is what `event_log: kafka: {...}` in the gateway config validates into. Only
`bootstrap_servers` is required; every other field has a default that is safe for audit.
"""

from __future__ import annotations

import ssl
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from eventlog.base import TOPIC_DEAD_LETTER, TOPIC_DECISIONS, TOPIC_EVENTS, TOPIC_RISK

KiB = 1024
MiB = 1024 * KiB


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TopicSettings(_Strict):
    """How one topic is created when it is absent (existing topics are never altered).

    `replication_factor=None` takes min(3, brokers in the cluster), so one setting works for a
    single-broker dev cluster and a production one; `min_insync_replicas=None` takes
    `replication_factor - 1` (at least 1): with acks=all that is the number of copies an
    acknowledged record has, tolerating one broker loss without refusing writes.
    `retention_ms=-1` keeps records forever (the log is the source of truth, and projections are
    rebuilt from its beginning); bound it explicitly or use tiered storage.
    """

    partitions: int = Field(default=6, ge=1)
    replication_factor: int | None = Field(default=None, ge=1)
    min_insync_replicas: int | None = Field(default=None, ge=1)
    retention_ms: int = Field(default=-1, ge=-1)
    compacted: bool = False
    # Anything else the broker accepts at creation (segment.ms, max.message.bytes, ...).
    configs: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _isr_within_replicas(self) -> TopicSettings:
        rf, isr = self.replication_factor, self.min_insync_replicas
        if rf is not None and isr is not None and isr > rf:
            raise ValueError(f"min_insync_replicas ({isr}) cannot exceed replication_factor ({rf})")
        return self

    def resolved(self, brokers: int) -> tuple[int, dict[str, str]]:
        """Replication factor and topic configs for a cluster of `brokers` brokers."""
        rf = self.replication_factor if self.replication_factor is not None else max(1, min(3, brokers))
        isr = self.min_insync_replicas if self.min_insync_replicas is not None else max(1, rf - 1)
        configs = {
            "min.insync.replicas": str(isr),
            "cleanup.policy": "compact" if self.compacted else "delete",
            **({} if self.compacted else {"retention.ms": str(self.retention_ms)}),
            **self.configs,
        }
        return rf, configs


def default_topics() -> dict[str, TopicSettings]:
    return {
        TOPIC_EVENTS: TopicSettings(partitions=6),
        TOPIC_RISK: TopicSettings(partitions=3),
        # One partition: every ingress replica reads all of it, and blocks must apply in the order
        # they were decided. Compacted: the latest decision per scope:subject lives forever.
        TOPIC_DECISIONS: TopicSettings(partitions=1, compacted=True),
        TOPIC_DEAD_LETTER: TopicSettings(partitions=1),
    }


class KafkaSecurity(_Strict):
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_plain_username: str | None = None
    sasl_plain_password: SecretStr | None = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None

    @model_validator(mode="after")
    def _coherent(self) -> KafkaSecurity:
        sasl = self.security_protocol.startswith("SASL_")
        if sasl and not (self.sasl_mechanism and self.sasl_plain_username and self.sasl_plain_password):
            raise ValueError(
                f"security_protocol {self.security_protocol} needs sasl_mechanism, "
                "sasl_plain_username and sasl_plain_password"
            )
        if not sasl and (self.sasl_mechanism or self.sasl_plain_username or self.sasl_plain_password):
            raise ValueError("sasl_* fields need security_protocol SASL_PLAINTEXT or SASL_SSL")
        tls = self.security_protocol in ("SSL", "SASL_SSL")
        if not tls and (self.ssl_cafile or self.ssl_certfile or self.ssl_keyfile):
            raise ValueError("ssl_* fields need security_protocol SSL or SASL_SSL")
        if bool(self.ssl_certfile) != bool(self.ssl_keyfile):
            raise ValueError("ssl_certfile and ssl_keyfile go together (client certificate)")
        return self

    def client_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"security_protocol": self.security_protocol}
        if self.security_protocol in ("SSL", "SASL_SSL"):
            context = ssl.create_default_context(cafile=self.ssl_cafile)
            if self.ssl_certfile:
                context.load_cert_chain(self.ssl_certfile, self.ssl_keyfile)
            kwargs["ssl_context"] = context
        if self.sasl_mechanism:
            kwargs["sasl_mechanism"] = self.sasl_mechanism
            kwargs["sasl_plain_username"] = self.sasl_plain_username
            assert self.sasl_plain_password is not None  # the validator requires it with a mechanism
            kwargs["sasl_plain_password"] = self.sasl_plain_password.get_secret_value()
        return kwargs


class ConsumerGroupSettings(_Strict):
    """Group membership timing; aiokafka's defaults, exposed so tests and operators can shorten them."""

    session_timeout_ms: int = Field(default=10_000, ge=1)
    heartbeat_interval_ms: int = Field(default=3_000, ge=1)
    max_poll_interval_ms: int = Field(default=300_000, ge=1)
    fetch_max_wait_ms: int = Field(default=500, ge=0)
    max_partition_fetch_bytes: int = Field(default=1 * MiB, ge=1)


class KafkaSettings(_Strict):
    bootstrap_servers: str = Field(min_length=1)
    client_id: str = "mcpgw"
    # Fixed, not configurable: DESIGN §2 defines "durable" as acknowledged by every in-sync replica.
    # acks=1 acknowledges a record the leader may lose in a failover (an unrecorded action), and
    # acks=0 acknowledges nothing at all. The field exists so configs can state it, not change it.
    acks: Literal["all"] = "all"
    # True on Apache Kafka: retries after a timeout then cannot duplicate or reorder records within
    # a partition. Brokers without InitProducerId support (Tansu) need False; then a retry after a
    # lost acknowledgement may write a record twice (consumers dedupe by event id).
    enable_idempotence: bool = True
    # 0: in strict mode every hop waits for its own append, so a linger is paid twice per call
    # (through the gateway on Tansu, strict, c=1: +7.6-8.6 ms over direct with 2, +1.9-2.3 ms with
    # 0). Batching does not need it: appends arriving while a produce request is in flight share
    # the next one. Raise it only for throughput on a busy gateway in async mode. (Tansu
    # acknowledges a produce to a topic it lost in a restart and then drops the record;
    # KafkaProducer re-checks the topic after a lost connection and, without idempotence, sends an
    # append it interrupted again: 0 is safe there.)
    linger_ms: int = Field(default=0, ge=0)
    # zstd: the log is kept forever and replicated, and zstd stores a busy gateway's batches ~3x
    # smaller than lz4 (~29x vs ~11x on 100 KB of sample events; 2.7x vs 2.0x on one call's two).
    # Its price is client CPU, mostly fixed per batch (a fresh zstd context): ~50 µs to build a
    # batch of a call's two events (~1.4 KB) against ~5 µs uncompressed; lz4 ~25 µs.
    compression: Literal["zstd", "lz4", "snappy", "gzip"] | None = "zstd"
    # Record batches smaller than this (uncompressed) are sent without compression (Kafka takes the
    # codec per batch): on a quiet gateway each append is one such small batch, where compression
    # saves ~1 KB for that fixed price and the broker (Tansu) spent no less on it. Batches reach
    # this size when appends share requests (a busy gateway), and are compressed. 0 compresses
    # every batch. Only on the direct produce path (idempotence off, linger 0); aiokafka's
    # accumulator, used with idempotence, compresses every batch.
    compression_min_bytes: int = Field(default=4 * KiB, ge=0)
    max_batch_bytes: int = Field(default=256 * KiB, ge=1 * KiB)
    max_request_bytes: int = Field(default=1 * MiB, ge=1 * KiB)
    # Bounds each stage of an append (metadata, buffer space, broker acknowledgement). A strict-mode
    # request waits this long at most before the caller spools or fails closed.
    request_timeout_ms: int = Field(default=10_000, ge=100)
    security: KafkaSecurity = Field(default_factory=KafkaSecurity)
    consumer: ConsumerGroupSettings = Field(default_factory=ConsumerGroupSettings)
    # Merged over `default_topics()`: a config naming one topic keeps the defaults of the others.
    # Topics not listed here are created with `TopicSettings()` when first used.
    topics: dict[str, TopicSettings] = Field(default_factory=default_topics)
    create_topics: bool = True

    @field_validator("topics", mode="before")
    @classmethod
    def _merge_default_topics(cls, value: object) -> object:
        if isinstance(value, dict):
            return {**default_topics(), **value}
        return value

    def topic(self, name: str) -> TopicSettings:
        return self.topics.get(name) or TopicSettings()

    def client_kwargs(self) -> dict[str, Any]:
        """Connection arguments shared by aiokafka's producer, consumer and admin client."""
        return {
            "bootstrap_servers": self.bootstrap_servers,
            "client_id": self.client_id,
            "request_timeout_ms": self.request_timeout_ms,
            **self.security.client_kwargs(),
        }
