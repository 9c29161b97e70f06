"""Node peers used as *clients* in integration tests: the MCP Inspector CLI, run once per call.

`run_inspector()` runs `mcp-inspector --cli ...` with stdin closed, a private HOME (the Inspector
keeps a catalog and OAuth state under ~/.mcp-inspector) and a deadline, and returns its exit
code, stdout and stderr. `--format json` output is parsed for the caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
NODE_BIN = REPO / "node_modules" / ".bin"
INSPECTOR = NODE_BIN / "mcp-inspector"


def inspector_installed() -> bool:
    return INSPECTOR.exists()


@dataclass
class InspectorRun:
    returncode: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)

    def error(self) -> Any:
        return json.loads(self.stderr.strip().splitlines()[-1])


async def run_inspector(*args: str, timeout: float = 90.0) -> InspectorRun:
    with tempfile.TemporaryDirectory(prefix="inspector-home-") as home:
        env = {**os.environ, "HOME": home, "PATH": f"{NODE_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
               "MCP_CATALOG_PATH": str(Path(home) / "mcp.json"), "NO_COLOR": "1", "CI": "1"}
        proc = await asyncio.create_subprocess_exec(
            str(INSPECTOR), "--cli", *args,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env=env, cwd=home, start_new_session=True,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), timeout)
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 9)
            await proc.wait()
            raise
        return InspectorRun(proc.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace"))
