"""Topic administration for the Kafka backend: create absent topics, read topic configs.

Existing topics are never altered (partition counts in particular: changing one moves keys to
other partitions and breaks per-key order). A compacted topic found with another cleanup policy is
reported, not fixed, because fixing it is an operator's decision.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # type: ignore[import-untyped]
from aiokafka.admin.config_resource import (  # type: ignore[import-untyped]
    ConfigResource,
    ConfigResourceType,
)
from aiokafka.errors import KafkaError, TopicAlreadyExistsError, for_code  # type: ignore[import-untyped]

from eventlog.base import LogUnavailable
from eventlog.kafka_settings import KafkaSettings

log = logging.getLogger("mcpgw.eventlog.kafka")


def describe_error(exc: BaseException) -> str:
    """`Name: detail` for an aiokafka error; many of them have an empty str()."""
    name = type(exc).__name__
    detail = str(exc) or getattr(exc, "description", "") or ""
    if not detail or detail == name:
        return name
    return detail if detail.startswith(name) else f"{name}: {detail}"


def unavailable(what: str, exc: BaseException) -> LogUnavailable:
    error = LogUnavailable(f"kafka: {what}: {describe_error(exc)}")
    # Waiting does not fix a refusal (record too large, authorization, bad config): say so, so a
    # spool drainer can tell a poison record from an outage.
    if isinstance(exc, KafkaError) and not getattr(exc, "retriable", False):
        error.retryable = False
    return error


@asynccontextmanager
async def admin_client(settings: KafkaSettings) -> AsyncIterator[Any]:
    admin = AIOKafkaAdminClient(**settings.client_kwargs())
    try:
        await admin.start()
        yield admin
    except (KafkaError, OSError) as exc:
        raise unavailable("admin request failed", exc) from exc
    finally:
        await admin.close()


async def ensure_topics(settings: KafkaSettings, names: Iterable[str]) -> list[str]:
    """Create those of `names` that are absent, as `settings.topic(name)` says; returns the created.

    Tolerates a concurrent creator (TopicAlreadyExists), since every ingress replica and consumer
    runs this at start.
    """
    wanted = list(dict.fromkeys(names))
    async with admin_client(settings) as admin:
        existing = set(await admin.list_topics())
        missing = [name for name in wanted if name not in existing]
        if missing:
            brokers = len((await admin.describe_cluster())["brokers"])
            new_topics = []
            for name in missing:
                topic = settings.topic(name)
                rf, configs = topic.resolved(brokers)
                new_topics.append(NewTopic(name, topic.partitions, rf, topic_configs=configs))
            response = await admin.create_topics(new_topics)
            for name, code, *message in response.topic_errors:  # v0 responses carry no message
                if code == 0 or code == TopicAlreadyExistsError.errno:
                    continue
                raise unavailable(f"creating topic {name!r} failed", for_code(code)(*message))
            log.info("kafka: created topics %s on a %d-broker cluster", missing, brokers)
        compacted = [name for name in wanted if settings.topic(name).compacted]
        if compacted:
            for name, configs in (await _topic_configs(admin, compacted)).items():
                if "compact" not in configs.get("cleanup.policy", ""):
                    log.warning(
                        "kafka: topic %s should be compacted but has cleanup.policy=%s: old decisions "
                        "may expire; set cleanup.policy=compact on it",
                        name,
                        configs.get("cleanup.policy"),
                    )
    return missing


async def topic_configs(settings: KafkaSettings, names: Iterable[str]) -> dict[str, dict[str, str]]:
    """The broker's view of each topic's configs (DescribeConfigs)."""
    async with admin_client(settings) as admin:
        return await _topic_configs(admin, list(names))


async def _topic_configs(admin: Any, names: list[str]) -> dict[str, dict[str, str]]:
    resources = [ConfigResource(ConfigResourceType.TOPIC, name) for name in names]
    result: dict[str, dict[str, str]] = {}
    for response in await admin.describe_configs(resources):
        for code, message, _type, name, entries in response.resources:
            if code != 0:
                raise unavailable(f"describing topic {name!r} failed", for_code(code)(message))
            result[name] = {entry[0]: entry[1] for entry in entries}
    return result
