"""The text of a stored payload, as detectors should see it. Pure.

Payloads are JSON-RPC messages as bytes. Most can be scanned as they are; but a `\\u` escape can
spell any character (an attacker can hide a word, or an invisible character, behind escapes), so
a payload holding such an escape is parsed and its strings are scanned instead. Python's json
module escapes every non-ASCII character by default; those escapes hide no ASCII word, and
parsing every such payload would cost more than the rest of the scan. `words` gives the lowercase
words of a text for cheap anchor tests before any regex runs.
"""

from __future__ import annotations

import json
import re
from typing import Any, TypeVar

T = TypeVar("T")

# Lowercase letters and `_` are word bytes; uppercase folds to lowercase; everything else splits.
_WORD_FOLD = bytes(
    c + 32 if 65 <= c <= 90 else c if 97 <= c <= 122 or c == 95 else 32 for c in range(256)
)
_ESCAPED_WHITESPACE = ("\\n", "\\r", "\\t")
# In raw JSON a word after an escaped newline or tab is glued to its `n`, `r` or `t`; anchor sets
# include those spellings (see `with_escape_prefixes`) rather than every payload being rewritten.
ESCAPE_LETTERS = (b"n", b"r", b"t")
# Escapes that can hide what detectors look for: ASCII (and control) characters, which serializers
# do not escape unless asked (Go escapes <, > and &), and the invisible characters. Escaped
# non-ASCII letters (\u00e9) are left as they are: they spell none of the ASCII anchors.
_REVEALING_ESCAPE = re.compile(rb"\\u(?:00[0-7][0-9a-fA-F]|200[b-fB-F]|202[a-eA-E]|206[0-4]|[dD][bB]40)")


def json_strings(tree: Any) -> list[str]:
    """Every string in a parsed JSON value, keys included, depth first in document order."""
    out: list[str] = []
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            out.append(node)
        elif isinstance(node, dict):
            for key, value in reversed(node.items()):
                stack.append(value)
                stack.append(key)
        elif isinstance(node, list):
            stack.extend(reversed(node))
    return out


def message_text(payload: bytes, limit: int) -> bytes:
    """UTF-8 text to scan for `payload` (at most its first `limit` bytes).

    The JSON's strings, one per line, when the payload holds a `\\u` escape that could hide an
    ASCII character or an invisible one, and parses; otherwise the bytes themselves (a payload cut
    short, or not JSON, is scanned as it is). Raw JSON keeps its escaped whitespace (`\\n`): see
    `words` and `unescape_whitespace`.
    """
    raw = payload[:limit]
    if b"\\u" in raw and _REVEALING_ESCAPE.search(raw) is not None:
        try:
            return "\n".join(json_strings(json.loads(raw))).encode("utf-8", "surrogatepass")
        except (ValueError, RecursionError):
            pass
    return raw


def unescape_whitespace(text: str) -> str:
    """JSON's escaped newlines and tabs as spaces, so that they separate words as whitespace does."""
    if "\\" in text:
        for escaped in _ESCAPED_WHITESPACE:
            text = text.replace(escaped, "  ")
    return text


def words(text: bytes) -> list[bytes]:
    """The lowercase words of `text` (ASCII letters and `_`), split on everything else."""
    return text.translate(_WORD_FOLD).split()


def with_escape_prefixes(anchors: dict[bytes, T]) -> dict[bytes, T]:
    """`anchors` plus each one as `words` finds it right after a JSON `\\n`, `\\r` or `\\t`."""
    out = dict(anchors)
    for word, value in anchors.items():
        for letter in ESCAPE_LETTERS:
            out.setdefault(letter + word, value)
    return out
