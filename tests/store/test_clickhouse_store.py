"""ClickHouseStore beyond the contract: reachability, capability detection, the shim itself."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request

import pytest

from consumers.store.base import EVENTS_TABLE, StoreUnavailable
from consumers.store.clickhouse_store import ClickHouseStore
from consumers.store.rows import event_row
from tests.schemas.example_values import gateway_events
from tests.store.conftest import Shim

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("url", ["127.0.0.1:8123", "tcp://127.0.0.1:9000", "http://"])
def test_url_must_be_http(url: str) -> None:
    with pytest.raises(ValueError, match="http"):
        ClickHouseStore(url)


async def test_nothing_listening_is_unavailable() -> None:
    store = ClickHouseStore(f"http://127.0.0.1:{free_port()}", connect_timeout=2)
    with pytest.raises(StoreUnavailable, match="cannot reach ClickHouse") as raised:
        await store.open()
    assert raised.value.retryable


async def test_a_server_that_goes_away_makes_inserts_retryable(shim: Shim) -> None:
    store = ClickHouseStore(shim.url, connect_timeout=2, send_receive_timeout=5)
    await store.open()
    try:
        shim.stop()
        with pytest.raises(StoreUnavailable) as raised:
            await store.insert(EVENTS_TABLE, [event_row(e) for e in gateway_events()], "t:0:0-12")
        assert raised.value.retryable
    finally:
        await store.close()


async def test_the_shim_serves_chdb_without_access_control(shim: Shim) -> None:
    store = ClickHouseStore(shim.url)
    await store.open()
    try:
        assert store.capabilities == frozenset()
        assert (await store.query("SELECT version() LIKE '2%'")).rows == [(True,)]
    finally:
        await store.close()


def test_the_shim_answers_like_clickhouse(shim: Shim) -> None:
    with urllib.request.urlopen(f"{shim.url}/ping", timeout=10) as answer:
        assert answer.read() == b"Ok.\n"
    with urllib.request.urlopen(f"{shim.url}/?query=SELECT%201%2B1", timeout=10) as answer:
        assert answer.read() == b"2\n"
        assert answer.headers["X-ClickHouse-Format"] == "TabSeparated"
    with pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(f"{shim.url}/?query=SELECT%20*%20FROM%20nowhere.nothing", timeout=10)
    assert raised.value.code == 404
    assert raised.value.headers["X-ClickHouse-Exception-Code"] == "81"
    assert raised.value.read().startswith(b"Code: 81. DB::Exception: ")
