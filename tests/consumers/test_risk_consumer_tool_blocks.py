"""The risk consumer's tool blocks over a real embedded log: published once, rebuilt at a restart
without being published again, and an operator's unblock (read from mcp.decisions) respected.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from eventlog.base import TOPIC_DECISIONS
from eventlog.embedded import EmbeddedLog
from schemas.codec import DecisionCodec
from schemas.decisions import Decision, DecisionAction, DecisionScope, DecisionSource
from tests.consumers.risk.builders import SECOND, T0, definitions_changed, tools_listed
from tests.consumers.risk.test_tool_blocks import ADD, ECHO, POISONED, POISONED_AGAIN
from tests.consumers.test_risk_consumer import append, consume, published

MINUTE = 60 * SECOND


@pytest.fixture
async def log(tmp_path: Path) -> AsyncIterator[EmbeddedLog]:
    async with EmbeddedLog(tmp_path / "log", partitions=1) as opened:
        yield opened


def tool_blocks(decisions: list[Decision]) -> list[tuple[DecisionAction, str, str | None, DecisionSource]]:
    return [(d.action, d.subject, d.tenant, d.source) for d in decisions if d.scope is DecisionScope.TOOL]


async def test_a_tool_block_is_published_once_rebuilt_at_restart_and_an_unblock_respected(log: EmbeddedLog) -> None:
    rug_pull = [definitions_changed(T0, "calc", [ADD, ECHO], "first seen: 2 tools"),
                definitions_changed(T0 + MINUTE, "calc", [POISONED, ECHO], "changed=['add']")]
    await append(log, rug_pull)
    first = await consume(log)
    assert first.risk_metrics.decisions == 1
    engine_block = (DecisionAction.BLOCK, "calc/add", None, DecisionSource.RISK_ENGINE)
    assert tool_blocks((await published(log))[1]) == [engine_block]

    # A restart: the engine is rebuilt from the log, knows the block is in force, publishes nothing.
    await append(log, [tools_listed(T0 + 2 * MINUTE, "calc", [POISONED, ECHO])])
    restarted = await consume(log)
    assert restarted.risk_metrics.rebuilt == len(rug_pull)
    assert restarted.risk_metrics.decisions == 0

    # The operator lifts it; the reviewed definition listed again is not blocked again, at this
    # run or at the next start (which replays the unblock at the same place).
    operator = Decision(ts=T0 + 3 * MINUTE, decision_id="op-1", action=DecisionAction.UNBLOCK,
                        scope=DecisionScope.TOOL, subject="calc/add", reason="definition reviewed",
                        source=DecisionSource.OPERATOR, actor="soc@example")  # fmt: skip
    await log.producer().append(TOPIC_DECISIONS, operator.compaction_key().encode(), DecisionCodec().encode(operator))
    await append(log, [tools_listed(T0 + 4 * MINUTE, "calc", [POISONED, ECHO])])
    after_unblock = await consume(log)
    assert after_unblock.risk_metrics.decisions == 0
    assert after_unblock.risk_metrics.decisions_noted == 2  # its own block (already in its state) and the unblock

    # A further change is judged afresh: one new block, published by this run only.
    await append(log, [tools_listed(T0 + 5 * MINUTE, "calc", [POISONED_AGAIN, ECHO])])
    assert (await consume(log)).risk_metrics.decisions == 1
    assert (await consume(log)).risk_metrics.decisions == 0
    assert [b[:2] for b in tool_blocks((await published(log))[1])] == [
        (DecisionAction.BLOCK, "calc/add"), (DecisionAction.UNBLOCK, "calc/add"), (DecisionAction.BLOCK, "calc/add")]
