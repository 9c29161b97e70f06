"""Fixtures for the event-log tests: `log_backend`, parametrized over every backend.

Contract tests (test_contract.py) are written once against `log_backend` and run on each backend.
The object it yields satisfies `tests.eventlog.backends.LogBackend`:

    kind: str                                   "embedded" or "kafka"; backend-specific asserts key on it
    async new_topic(partitions=1) -> str        a topic unique to the test (a shared broker needs no
                                                cleanup), created now with `partitions` partitions
    producer() -> Producer                      not started; the fixture closes it at restart/teardown
    consumer(group_id, topics) -> Consumer      not started; the fixture closes it at restart/teardown
    async restart()                             close every handle given out and the log, then reopen
                                                the same log (embedded: same directory; Kafka: new
                                                clients on the same broker). Handles from before are dead.
    async drop_old_records(topic)               make retention delete the older records of `topic`,
                                                keeping the most recent ones (embedded: 4 KiB segments
                                                with a 16 KiB bound, applied on this call; Kafka: e.g.
                                                AdminClient.delete_records, or retention.bytes + wait)

Tests call `start()` on the handles they get. Groups have one member at a time (the embedded log
allows no more); a test that needs several members of a group belongs to Kafka's own tests.
"""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.eventlog.backends import EmbeddedBackend, LogBackend

# ---- Kafka backend: REGISTER IT HERE -------------------------------------------------------------
# tests/eventlog/kafka_fixture.py (the Kafka side's) is registered below as a pytest plugin, so its
# broker fixtures (`tansu`, `kafka_bootstrap`, ...) are visible to every test here. Once it defines
#
#     def kafka_backend(request: pytest.FixtureRequest) -> AbstractAsyncContextManager[LogBackend]
#
# (e.g. an @asynccontextmanager calling request.getfixturevalue("kafka_bootstrap") and yielding an
# object with the methods above), the contract suite also runs with kind == "kafka", marked
# `integration`. Nothing else in this file needs to change.
KafkaFactory = Callable[[pytest.FixtureRequest], AbstractAsyncContextManager[LogBackend]]
kafka_fixture: ModuleType | None
try:
    kafka_fixture = importlib.import_module("tests.eventlog.kafka_fixture")
except ModuleNotFoundError as exc:
    if exc.name != "tests.eventlog.kafka_fixture":
        raise
    kafka_fixture = None
kafka_backend: KafkaFactory | None = getattr(kafka_fixture, "kafka_backend", None)


def pytest_configure(config: pytest.Config) -> None:
    if kafka_fixture is not None and not config.pluginmanager.has_plugin(kafka_fixture.__name__):
        config.pluginmanager.register(kafka_fixture, kafka_fixture.__name__)


# ---------------------------------------------------------------------------------------------------

BACKENDS: list[Any] = ["embedded"]
if kafka_backend is not None:
    BACKENDS.append(pytest.param("kafka", marks=pytest.mark.integration))


@pytest.fixture(params=BACKENDS)
async def log_backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[LogBackend]:
    if request.param == "embedded":
        backend = EmbeddedBackend(tmp_path / "log")
        await backend.start()
        try:
            yield backend
        finally:
            await backend.stop()
    else:
        assert kafka_backend is not None
        async with kafka_backend(request) as kafka:
            yield kafka
