"""StdioProcess against real child processes (small `python -c` scripts and mcp-server-time)."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import random
import shutil
import signal
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest

from ingress.upstreams import stdio_process
from ingress.upstreams.errors import UpstreamError, UpstreamUnavailable
from ingress.upstreams.stdio_process import ProcessState, RestartPolicy, StdioProcess

# Bounds only against hangs; no test relies on how long anything takes.
HANG_GUARD_S = 20.0
FAST = RestartPolicy(initial_delay_s=0.01, max_delay_s=0.1, multiplier=2.0, jitter=0.0)

ECHO = """
import sys
for line in sys.stdin.buffer:
    sys.stdout.buffer.write(line)
    sys.stdout.buffer.flush()
"""

# Ignores stdin EOF and SIGTERM, saying so on stderr, so only SIGKILL ends it.
STUBBORN = """
import signal, sys, threading, time
def on_term(signum, frame):
    sys.stderr.write("got SIGTERM\\n"); sys.stderr.flush()
signal.signal(signal.SIGTERM, on_term)
def drain():
    sys.stdin.read()
    sys.stderr.write("stdin closed\\n"); sys.stderr.flush()
threading.Thread(target=drain, daemon=True).start()
print("ready", flush=True)
while True:
    time.sleep(1)
"""

# Leaves a grandchild that inherited every pipe, then exits with the code given in argv[1]
# (or, without one, when stdin closes).
WITH_GRANDCHILD = """
import subprocess, sys
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
print(child.pid, flush=True)
if len(sys.argv) > 1:
    sys.exit(int(sys.argv[1]))
sys.stdin.read()
"""


class Recorder:
    def __init__(self) -> None:
        self.lines: asyncio.Queue[bytes] = asyncio.Queue()
        self.states: list[ProcessState] = []

    def on_line(self, line: bytes) -> None:
        self.lines.put_nowait(line)

    def on_state(self, state: ProcessState) -> None:
        self.states.append(state)

    @property
    def statuses(self) -> list[str]:
        return [s.status for s in self.states]

    async def line(self) -> bytes:
        async with asyncio.timeout(HANG_GUARD_S):
            return await self.lines.get()


Factory = Callable[..., tuple[StdioProcess, Recorder]]


@pytest.fixture
async def spawn() -> AsyncIterator[Factory]:
    made: list[StdioProcess] = []

    def factory(
        script: str, *argv: str, restart: RestartPolicy = FAST, stop_grace_s: float = 0.2, **kw: Any
    ) -> tuple[StdioProcess, Recorder]:
        rec = Recorder()
        kw.setdefault("on_state", rec.on_state)
        proc = StdioProcess(
            kw.pop("name", "t"), kw.pop("command", sys.executable), kw.pop("args", ["-c", script, *argv]),
            kw.pop("env", None), kw.pop("cwd", None), on_line=rec.on_line, restart=restart,
            stop_grace_s=stop_grace_s, **kw,
        )
        made.append(proc)
        return proc, rec

    yield factory
    for proc in made:
        await proc.stop()


async def until(predicate: Callable[[], bool]) -> None:
    async with asyncio.timeout(HANG_GUARD_S):
        while not predicate():  # noqa: ASYNC110 - polls arbitrary conditions, some outside asyncio
            await asyncio.sleep(0.01)


def alive(pid: int) -> bool:
    """True unless the process is gone or a zombie (a container's PID 1 may never reap orphans)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def fast_orphan_poll(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(stdio_process, "_ORPHAN_POLL_S", 0.05)
    yield


def test_backoff_grows_caps_and_jitters() -> None:
    policy = RestartPolicy(initial_delay_s=1, max_delay_s=5, multiplier=2, jitter=0)
    assert [policy.backoff(i) for i in range(5)] == [1, 2, 4, 5, 5]
    assert policy.backoff(100_000) == 5
    jittered = RestartPolicy(initial_delay_s=1, max_delay_s=5, jitter=0.5)
    rng = random.Random(7)
    delays = [jittered.backoff(1, rng) for _ in range(200)]
    assert all(1 <= d <= 3 for d in delays) and len(set(delays)) > 1
    with pytest.raises(ValueError):
        RestartPolicy(multiplier=0.5)
    with pytest.raises(ValueError):
        RestartPolicy(max_restarts=-1)


async def test_line_round_trip(spawn: Factory) -> None:
    proc, rec = spawn(ECHO)
    await proc.start()
    assert proc.running and proc.pid is not None
    for line in (b'{"jsonrpc":"2.0","id":1,"method":"ping"}', "h\u00e9llo \u2603".encode(), b"x" * 100):
        await proc.send(line)
        assert await rec.line() == line
    await proc.send(b"")  # echoed as a blank line, which is not a message
    await proc.send(b"   ")
    await proc.send(b"after-blank")
    assert await rec.line() == b"after-blank"
    with pytest.raises(ValueError):
        await proc.send(b"two\nlines")
    assert rec.statuses == ["starting", "running"]
    assert rec.states[-1].pid == proc.pid


async def test_crlf_and_unterminated_last_line(spawn: Factory) -> None:
    proc, rec = spawn("import sys; sys.stdout.write('dos\\r\\nlast'); sys.stdout.flush()")
    await proc.start()
    assert await rec.line() == b"dos"
    assert await rec.line() == b"last"


async def test_env_is_merged_and_cwd_applied(spawn: Factory, tmp_path: Path) -> None:
    script = "import json, os; print(json.dumps([os.environ.get('FOO'), 'PATH' in os.environ, os.getcwd()]))"
    proc, rec = spawn(script, env={"FOO": "bar"}, cwd=str(tmp_path))
    await proc.start()
    assert orjson.loads(await rec.line()) == ["bar", True, str(tmp_path)]


async def test_stderr_goes_to_the_server_logger(spawn: Factory, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="mcpgw.upstream.errsrv")
    proc, _ = spawn(
        "import sys, time; sys.stderr.write('warming up\\n'); sys.stderr.flush(); time.sleep(60)",
        name="errsrv",
    )
    await proc.start()

    def records() -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.name == "mcpgw.upstream.errsrv"]

    await until(lambda: bool(records()))
    (record,) = records()
    assert record.levelno == logging.INFO
    assert "warming up" in record.getMessage() and "errsrv" in record.getMessage()
    assert record.__dict__["upstream"] == "errsrv"


async def test_wait_running_and_send_while_down(spawn: Factory) -> None:
    proc, _ = spawn(ECHO)
    with pytest.raises(UpstreamUnavailable) as info:
        await proc.send(b"early")
    assert info.value.retryable and info.value.server == "t" and isinstance(info.value, UpstreamError)
    starting = asyncio.create_task(proc.start())
    await proc.wait_running(HANG_GUARD_S)
    await starting
    await proc.stop()
    with pytest.raises(UpstreamUnavailable):
        await proc.send(b"late")
    with pytest.raises(UpstreamUnavailable):
        await proc.wait_running(HANG_GUARD_S)


async def test_crash_restarts_with_backoff_then_fails(spawn: Factory) -> None:
    proc, rec = spawn("import sys; sys.exit(3)", restart=replace(FAST, max_restarts=3))
    await proc.start()
    await until(lambda: proc.state.status == "failed")
    assert rec.statuses == (
        ["starting", "running"] + ["exited", "restarting", "starting", "running"] * 3 + ["exited", "failed"]
    )
    assert [s.exit_code for s in rec.states if s.status == "exited"] == [3, 3, 3, 3]
    assert [s.detail for s in rec.states if s.status == "restarting"] == [
        "restart in 0.010s", "restart in 0.020s", "restart in 0.040s",
    ]
    assert [s.restarts for s in rec.states if s.status == "running"] == [0, 1, 2, 3]
    assert proc.restarts == 3 and not proc.running
    with pytest.raises(UpstreamUnavailable):
        await proc.send(b"x")
    with pytest.raises(UpstreamUnavailable):
        await proc.wait_running(HANG_GUARD_S)


async def test_max_restarts_zero_fails_on_first_exit(spawn: Factory) -> None:
    proc, rec = spawn("import sys; sys.exit(0)", restart=RestartPolicy(max_restarts=0))
    await proc.start()
    await until(lambda: proc.state.status == "failed")
    assert rec.statuses == ["starting", "running", "exited", "failed"]
    assert proc.restarts == 0


async def test_restart_recovers_the_line_stream(spawn: Factory, tmp_path: Path) -> None:
    marker = tmp_path / "crashed-once"
    script = f"import pathlib, sys\nm = pathlib.Path({str(marker)!r})\nif not m.exists():\n"
    script += "    m.touch(); sys.exit(1)\n" + ECHO
    proc, rec = spawn(script)
    await proc.start()
    await until(lambda: proc.restarts == 1)
    await proc.wait_running(HANG_GUARD_S)
    await proc.send(b"second life")
    assert await rec.line() == b"second life"
    assert rec.statuses == ["starting", "running", "exited", "restarting", "starting", "running"]
    assert rec.states[2].exit_code == 1


async def test_a_stable_run_resets_delay_and_budget(spawn: Factory) -> None:
    policy = RestartPolicy(initial_delay_s=0.01, jitter=0.0, max_restarts=1, stable_after_s=0.0)
    proc, rec = spawn("import sys; sys.exit(2)", restart=policy)
    await proc.start()
    await until(lambda: proc.restarts >= 4)
    assert "failed" not in rec.statuses
    assert {s.detail for s in rec.states if s.status == "restarting"} == {"restart in 0.010s"}


@pytest.mark.parametrize("problem", ["missing command", "missing cwd", "not an OSError"])
async def test_start_failure_is_not_retryable(
    spawn: Factory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, problem: str
) -> None:
    if problem == "not an OSError":  # e.g. the ValueError asyncio raises for a NUL in an argument

        async def refuse(*args: object, **kwargs: object) -> None:
            raise ValueError("embedded null byte")

        monkeypatch.setattr(asyncio, "create_subprocess_exec", refuse)
    proc, rec = {
        "missing command": lambda: spawn("", command=str(tmp_path / "no-such-server"), args=[]),
        "missing cwd": lambda: spawn(ECHO, cwd=str(tmp_path / "no-such-dir")),
        "not an OSError": lambda: spawn(ECHO),
    }[problem]()
    with pytest.raises(UpstreamUnavailable) as info:
        await proc.start()
    assert not info.value.retryable
    assert rec.statuses == ["starting", "failed"]
    assert not proc.running and proc.pid is None


async def test_stop_closes_stdin_first_and_is_idempotent(spawn: Factory) -> None:
    proc, rec = spawn(ECHO)
    await proc.stop()  # before start: nothing to do
    assert rec.statuses == []
    await proc.start()
    pid = proc.pid
    assert pid is not None
    await asyncio.gather(proc.stop(), proc.stop())
    await proc.stop()
    assert rec.statuses == ["starting", "running", "stopped"]
    assert rec.states[-1].exit_code == 0  # left on stdin EOF, no signal needed
    assert not proc.running and proc.pid is None and not alive(pid)
    await proc.start()  # the same instance can be started again
    await proc.send(b"again")
    assert await rec.line() == b"again"
    await proc.stop()
    assert rec.statuses == ["starting", "running", "stopped"] * 2


async def test_stop_sends_sigterm_when_stdin_eof_is_ignored(spawn: Factory) -> None:
    proc, rec = spawn("import time; print('ready', flush=True); time.sleep(60)")
    await proc.start()
    assert await rec.line() == b"ready"
    await proc.stop()
    assert rec.states[-1].exit_code == -signal.SIGTERM


async def test_stop_escalates_to_sigkill(spawn: Factory, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="mcpgw.upstream.stubborn")
    proc, rec = spawn(STUBBORN, name="stubborn")
    await proc.start()
    assert await rec.line() == b"ready"
    pid = proc.pid
    assert pid is not None
    async with asyncio.timeout(HANG_GUARD_S):
        await proc.stop()
    assert rec.states[-1] == ProcessState("stopped", pid, 0, -signal.SIGKILL, "")
    said = [r.getMessage() for r in caplog.records if r.name == "mcpgw.upstream.stubborn"]
    assert [m.split("] ", 1)[1] for m in said] == ["stdin closed", "got SIGTERM"]
    assert not alive(pid)


async def test_stop_reaches_descendants_holding_the_pipes(spawn: Factory) -> None:
    proc, rec = spawn(WITH_GRANDCHILD)
    await proc.start()
    grandchild = int(await rec.line())
    assert alive(grandchild)
    async with asyncio.timeout(HANG_GUARD_S):
        await proc.stop()
    await until(lambda: not alive(grandchild))


async def test_supervisor_reaps_orphans_of_a_crashed_leader(spawn: Factory, fast_orphan_poll: None) -> None:
    proc, rec = spawn(WITH_GRANDCHILD, "5", restart=RestartPolicy(max_restarts=0))
    await proc.start()
    grandchild = int(await rec.line())
    await until(lambda: proc.state.status == "failed")
    assert [s.exit_code for s in rec.states if s.status == "exited"] == [5]
    await until(lambda: not alive(grandchild))


async def test_on_state_may_be_async_fail_or_stop_the_process(spawn: Factory) -> None:
    seen: list[str] = []
    holder: list[StdioProcess] = []

    async def on_state(state: ProcessState) -> None:
        seen.append(state.status)
        if state.status == "running":
            raise RuntimeError("observer bug")  # logged, never fatal
        if state.status == "exited":
            await holder[0].stop()

    proc, _ = spawn("import sys; sys.exit(1)", on_state=on_state)
    holder.append(proc)
    async with asyncio.timeout(HANG_GUARD_S):
        await proc.start()
        await until(lambda: "stopped" in seen)
    assert seen == ["starting", "running", "exited", "stopped"]


async def test_lines_beyond_the_asyncio_default_limit_are_delivered(spawn: Factory) -> None:
    big = 1024 * 1024
    proc, rec = spawn(f"import sys; sys.stdout.write('x' * {big} + '\\nafter\\n'); sys.stdout.flush()")
    await proc.start()
    assert await rec.line() == b"x" * big
    assert await rec.line() == b"after"


async def test_over_limit_lines_are_logged_and_skipped(
    spawn: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    script = """
import sys, time
out = sys.stdout
out.write("a" * 1024 + "\\n"); out.flush()            # exactly at the limit: delivered
out.write("b" * 5000); out.flush(); time.sleep(0.05)  # over the limit before its newline arrives
out.write("b" * 5000 + "\\n" + "c" * 10000 + "\\n"); out.flush()
sys.stderr.write("e" * 10000 + "\\nstderr ok\\n"); sys.stderr.flush()
out.write("ok\\n"); out.flush()
time.sleep(60)
"""
    proc, rec = spawn(script, name="longy", max_line_bytes=1024)
    await proc.start()
    assert await rec.line() == b"a" * 1024
    assert await rec.line() == b"ok"
    await until(lambda: any("stderr ok" in r.getMessage() for r in caplog.records))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        "upstream longy: dropping stdout line over 1024 bytes",
        "upstream longy: dropping stdout line over 1024 bytes",
        "upstream longy: dropping stderr line over 1024 bytes",
    ]
    assert proc.running and rec.lines.empty()


@pytest.mark.integration
async def test_mcp_server_time_answers_initialize(spawn: Factory) -> None:
    command = shutil.which("mcp-server-time") or str(Path(sys.executable).with_name("mcp-server-time"))
    proc, rec = spawn("", command=command, args=[], name="time", stop_grace_s=2.0)
    await proc.start()
    init = {
        "jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                   "clientInfo": {"name": "mcpgw-test", "version": "0"}},
    }
    await proc.send(orjson.dumps(init))
    answer = orjson.loads(await rec.line())
    assert answer["id"] == 1 and answer["result"]["serverInfo"]["name"]
    await proc.send(orjson.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}))
    await proc.send(orjson.dumps({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}))
    tools = orjson.loads(await rec.line())
    assert tools["id"] == 2
    assert "get_current_time" in {t["name"] for t in tools["result"]["tools"]}


async def test_no_leaked_processes_fds_or_tasks_after_50_cycles() -> None:
    async def cycle() -> int:
        rec = Recorder()
        proc = StdioProcess("cycle", sys.executable, ["-c", ECHO], None, None, rec.on_line, restart=FAST)
        await proc.start()
        pid = proc.pid
        assert pid is not None
        await proc.send(b"ping")
        assert await rec.line() == b"ping"
        await proc.stop()
        return pid

    await cycle()  # let the loop create its lazily built machinery (child watcher, ...) first
    gc.collect()
    before = fd_count()
    pids = [await cycle() for _ in range(50)]
    gc.collect()
    assert fd_count() == before
    assert [pid for pid in pids if alive(pid)] == []
    assert asyncio.all_tasks() == {asyncio.current_task()}


async def test_stop_during_the_first_spawn_fails_start(spawn: Factory) -> None:
    proc, rec = spawn(ECHO)
    starting = asyncio.create_task(proc.start())
    await asyncio.sleep(0)  # start() has created the supervisor; the spawn is not finished yet
    async with asyncio.timeout(HANG_GUARD_S):
        await proc.stop()
        with pytest.raises(UpstreamUnavailable):
            await starting
    assert rec.statuses == ["starting", "stopped"]
    stopped = rec.states[-1]
    assert stopped.exit_code == 0 and stopped.pid is not None  # the spawned child was stopped gracefully
    assert proc.pid is None and not proc.running and not alive(stopped.pid)


async def test_send_after_the_server_closed_its_stdin(spawn: Factory) -> None:
    # uvloop hands the child extra duplicates of its stdio sockets; close those too.
    script = "import os,time; os.closerange(3, 4096); os.close(0); print('closed', flush=True); time.sleep(9)"
    proc, rec = spawn(script)
    await proc.start()
    assert await rec.line() == b"closed"
    with pytest.raises(UpstreamUnavailable):
        async with asyncio.timeout(HANG_GUARD_S):
            while True:
                await proc.send(b"anyone there?")
                await asyncio.sleep(0.01)
