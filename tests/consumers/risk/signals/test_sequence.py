"""consumers/risk/signals/sequence.py: a sensitive read, then an outbound call, in one session."""

from __future__ import annotations

import pytest

from consumers.risk.settings import SensitiveSequenceSettings
from consumers.risk.signals.sequence import SensitiveSequence, normalize_tool_name
from tests.consumers.risk.builders import SECOND, T0

WHO = ("acme", "alice")


@pytest.mark.parametrize(
    ("name", "normalized"),
    [("readFile", "read_file"), ("read-file", "read_file"), ("Read File", "read_file"), ("HTTPRequest", "httprequest"),
     ("sendEmail", "send_email"), ("fs.read_text_file", "fs_read_text_file"), ("get_secret", "get_secret")],
)  # fmt: skip
def test_normalize_tool_name(name: str, normalized: str) -> None:
    assert normalize_tool_name(name) == normalized


@pytest.mark.parametrize(
    ("tool", "sensitive", "outbound"),
    [
        ("read_file", True, False), ("readMultipleFiles", True, False), ("read_text_file", True, False),
        ("get_secret", True, False), ("vault_read", True, False), ("query", True, False), ("run_sql", True, False),
        ("db_query", True, False), ("list_emails", True, False), ("get_env_var", True, False),
        ("send_email", False, True), ("sendMessage", False, True), ("http_request", False, True),
        ("fetch", False, True), ("web_fetch", False, True), ("upload_file", False, True), ("post_webhook", False, True),
        ("search", False, False), ("get_weather", False, False), ("list_notes", False, False),
        ("create_note", False, False), ("summarize", False, False), ("postgres_stats", False, False),
        ("prefetch_index", False, False), ("sender_info", False, False),
    ],
)  # fmt: skip
def test_classify(tool: str, sensitive: bool, outbound: bool) -> None:
    signal = SensitiveSequence(SensitiveSequenceSettings(), max_sessions=10, max_principals=10)
    assert signal.classify(tool) == (sensitive, outbound)


Step = tuple[str, str, str, float]  # (session, method, tool, seconds after start)

TABLE: list[tuple[str, list[Step], list[float | None]]] = [
    ("read-then-send", [("s", "tools/call", "read_file", 0), ("s", "tools/call", "send_email", 30)], [None, 1.0]),
    ("too-late", [("s", "tools/call", "read_file", 0), ("s", "tools/call", "send_email", 301)], [None, None]),
    ("send-then-read", [("s", "tools/call", "send_email", 0), ("s", "tools/call", "read_file", 5)], [None, None]),
    ("other-session", [("a", "tools/call", "get_secret", 0), ("b", "tools/call", "http_request", 5)], [None, None]),
    ("resource-then-fetch", [("s", "resources/read", "", 0), ("s", "tools/call", "fetch", 5)], [None, 1.0]),
    ("harmless-between", [("s", "tools/call", "read_file", 0), ("s", "tools/call", "search", 5),
                          ("s", "tools/call", "upload", 10)], [None, None, 1.0]),
    ("habituation", [("s", "tools/call", "read_file", 0), ("s", "tools/call", "send_email", 1),
                     ("s", "tools/call", "send_email", 2), ("s", "tools/call", "send_email", 3),
                     ("s", "tools/call", "http_request", 4)], [None, 1.0, 0.5, 1 / 3, 1.0]),
    ("other-methods", [("s", "tools/call", "read_file", 0), ("s", "prompts/get", "send_email", 1)], [None, None]),
]  # fmt: skip


@pytest.mark.parametrize(("steps", "expected"), [pytest.param(s, e, id=name) for name, s, e in TABLE])
def test_sequences(steps: list[Step], expected: list[float | None]) -> None:
    signal = SensitiveSequence(SensitiveSequenceSettings(), max_sessions=10, max_principals=10)
    got = []
    for i, (session, method, tool, at) in enumerate(steps):
        hit = signal.observe(WHO, session, method, tool, T0 + int(at * SECOND), f"e{i}")
        got.append(None if hit is None else hit.strength)
    assert got == [None if e is None else pytest.approx(e) for e in expected]


def test_the_hit_cites_the_read() -> None:
    signal = SensitiveSequence(SensitiveSequenceSettings(), max_sessions=10, max_principals=10)
    signal.observe(WHO, "s", "tools/call", "read_file", T0, "the-read")
    hit = signal.observe(WHO, "s", "tools/call", "send_email", T0 + SECOND, "the-send")
    assert hit is not None and hit.evidence == ("the-read",)


@pytest.mark.parametrize(
    ("settings", "strengths"),
    [
        (SensitiveSequenceSettings(habituate=False), [1.0, 1.0]),
        (SensitiveSequenceSettings(resource_reads_are_sensitive=False), [None, None]),
        (SensitiveSequenceSettings(outbound_tools=(r"^send_email$",)), [1.0, 0.5]),
        (SensitiveSequenceSettings(outbound_tools=(r"^telegram$",)), [None, None]),
        (SensitiveSequenceSettings(window_s=0.5), [None, None]),
    ],
)  # fmt: skip
def test_settings(settings: SensitiveSequenceSettings, strengths: list[float | None]) -> None:
    signal = SensitiveSequence(settings, max_sessions=10, max_principals=10)
    signal.observe(WHO, "s", "resources/read", "", T0)
    got = []
    for i in range(2):
        hit = signal.observe(WHO, "s", "tools/call", "send_email", T0 + (i + 1) * SECOND)
        got.append(None if hit is None else hit.strength)
    assert got == strengths


def test_sessions_are_bounded() -> None:
    signal = SensitiveSequence(SensitiveSequenceSettings(), max_sessions=2, max_principals=10)
    for i in range(3):
        signal.observe(WHO, f"s{i}", "tools/call", "read_file", T0)
    assert len(signal) == 2
    assert signal.observe(WHO, "s0", "tools/call", "send_email", T0 + SECOND) is None  # forgotten
    assert signal.observe(WHO, "s2", "tools/call", "send_email", T0 + SECOND) is not None
