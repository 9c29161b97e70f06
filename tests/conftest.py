"""Shared pytest setup: markers for tests that need the npm peers."""

from __future__ import annotations

import os

import pytest

from tests.support.gateway import NODE_BIN


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if (NODE_BIN / "mcp-server-everything").exists():
        return
    if os.environ.get("MCPGW_REQUIRE_PEERS") == "1":
        raise pytest.UsageError("npm peers are missing but required (MCPGW_REQUIRE_PEERS=1): run scripts/setup")
    skip = pytest.mark.skip(reason="npm peers missing: run scripts/test (it installs them)")
    for item in items:
        if "node" in item.keywords:
            item.add_marker(skip)
