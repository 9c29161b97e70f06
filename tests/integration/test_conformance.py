"""The official conformance suite, run through the gateway, scores at least what its fixture scores directly.

The fixture is our reference server (examples/reference_server.py, built on the `mcp` SDK), served
over Streamable HTTP in both eras. The gateway reaches it as `ref` (era negotiated: modern) and as
`ref-legacy` (pinned to 2025-11-25, so a legacy agent meets a legacy upstream session, era for era).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.peers.everything import wait_for_port
from tests.support.gateway import NODE_BIN, REPO, free_port, running_gateway

pytestmark = [pytest.mark.integration, pytest.mark.node]

TOTAL = re.compile(r"^Total: (\d+) passed, (\d+) failed", re.MULTILINE)


@contextlib.asynccontextmanager
async def reference_server() -> AsyncIterator[str]:
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "examples.reference_server", "--transport", "http", "--port", str(port),
        cwd=REPO, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    try:
        await wait_for_port(port, 30)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def conformance(url: str, requirements: str, out: Path) -> tuple[int, int, str]:
    env = {**os.environ, "PATH": f"{NODE_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = await asyncio.create_subprocess_exec(
        str(NODE_BIN / "conformance"), "server", "--url", url, "--requirements", requirements, "-o", str(out),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env)
    output, _ = await asyncio.wait_for(proc.communicate(), 600)
    text = output.decode(errors="replace")
    found = TOTAL.search(text)
    assert found, f"no Total line in the conformance output:\n{text[-3000:]}"
    return int(found.group(1)), int(found.group(2)), text


@pytest.mark.parametrize(("requirements", "server"), [("2025-11-25", "ref-legacy"), ("2026-07-28", "ref")])
async def test_gateway_scores_at_least_the_fixture(requirements: str, server: str, tmp_path: Path) -> None:
    async with reference_server() as upstream_url:
        config = {"servers": {"ref": {"url": upstream_url},
                              "ref-legacy": {"url": upstream_url, "protocol": "legacy"}}}
        async with running_gateway(config) as gw:
            direct_passed, direct_failed, _ = await conformance(upstream_url, requirements, tmp_path / "direct")
            passed, failed, text = await conformance(gw.server_url(server), requirements, tmp_path / "gateway")
    assert direct_failed == 0 and direct_passed > 0, "the fixture itself must pass the suite"
    assert passed >= direct_passed and failed == 0, f"through the gateway: {passed} passed, {failed} failed " \
        f"(directly: {direct_passed} passed)\n{text[-4000:]}"
