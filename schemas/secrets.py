"""What a secret looks like (`PATTERNS`) and which names hold one (`is_secret_key`). Pure.

Speed matters: every message is checked. Python's `re` tries an alternation at every position
of the text, so one big pattern costs ~100 µs per KB; instead each pattern names literal
anchors, one of which every match contains, and a pattern runs only where a plain substring
test (C speed) found an anchor. Most messages contain none and cost a few substring tests.

Even where an anchor occurs, a pattern led by `\b` or a character set would be tried at every
position (~8 ns a byte): prose trips anchors ("task-", "wearer"). So each such pattern also
names where its matches start (`starts`: a literal, and how far before it a match begins); the
literals are found by `str.find` and the pattern is matched only there (`_sub_at_starts`).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import AnyStr

REDACTED = "[REDACTED:{}]"


@dataclass(frozen=True, slots=True)
class SecretPattern:
    kind: str
    anchors: tuple[str, ...]  # every match contains one of these
    source: str
    # Every match starts `back` characters before an occurrence of one of these literals; none:
    # the regex leads with a literal itself, and `re` skips ahead to it in C.
    starts: tuple[tuple[str, int], ...] = ()
    regex: re.Pattern[str] = field(init=False, repr=False, compare=False)
    regex_bytes: re.Pattern[bytes] = field(init=False, repr=False, compare=False)
    anchors_bytes: tuple[bytes, ...] = field(init=False, repr=False, compare=False)
    starts_bytes: tuple[tuple[bytes, int], ...] = field(init=False, repr=False, compare=False)

    @property
    def marker(self) -> str:
        return REDACTED.format(self.kind)

    def __post_init__(self) -> None:
        object.__setattr__(self, "regex", re.compile(self.source, re.DOTALL | re.ASCII))
        object.__setattr__(self, "regex_bytes", re.compile(self.source.encode(), re.DOTALL))
        object.__setattr__(self, "anchors_bytes", tuple(a.encode() for a in self.anchors))
        object.__setattr__(self, "starts_bytes", tuple((a.encode(), back) for a, back in self.starts))


# Applied in this order: a bearer JWT is one bearer_token, not a jwt.
PATTERNS: tuple[SecretPattern, ...] = (
    SecretPattern("private_key", ("PRIVATE KEY-----",),
                  r"-----BEGIN[A-Z0-9 ]{0,40}PRIVATE KEY-----(?:.*?-----END[A-Z0-9 ]{0,40}PRIVATE KEY-----|.*)"),
    # A token has a digit or symbol, or is long: "Bearer authentication" in prose is not one.
    SecretPattern("bearer_token", ("earer", "EARER"),
                  r"\b(?:[Bb]earer|BEARER)[ \t]+(?:[A-Za-z]{32,}|(?=[\w.~+/=-]{12})[A-Za-z]*[0-9_.~+/=-][\w.~+/=-]*)",
                  (("earer", 1), ("EARER", 1))),
    SecretPattern("jwt", ("eyJ",), r"\beyJ[A-Za-z0-9_-]{2,}\.eyJ[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]*", (("eyJ", 0),)),
    SecretPattern("api_key", ("sk-", "k_live_", "k_test_", "AIza"),
                  r"\bsk-[A-Za-z0-9_-]{20,}|\b[sr]k_(?:live|test)_[A-Za-z0-9]{16,}|\bAIza[0-9A-Za-z_-]{35}",
                  (("sk-", 0), ("k_live_", 1), ("k_test_", 1), ("AIza", 0))),
    SecretPattern("aws_access_key", ("AKIA", "ASIA"), r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b", (("AKIA", 0), ("ASIA", 0))),
    SecretPattern("github_token", ("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"),
                  r"\bgh[pousr]_[A-Za-z0-9]{36,}|\bgithub_pat_[A-Za-z0-9_]{22,}",
                  (("ghp_", 0), ("gho_", 0), ("ghu_", 0), ("ghs_", 0), ("ghr_", 0), ("github_pat_", 0))),
    SecretPattern("slack_token", ("xox",), r"\bxox[abposr]-[A-Za-z0-9-]{10,}", (("xox", 0),)),
)  # fmt: skip
SECRET_KINDS = tuple(p.kind for p in PATTERNS)

_SECRET_WORDS = (
    "password", "passwd", "pwd", "passphrase", "secret", "token", "api_key", "apikey", "access_key",
    "secret_key", "private_key", "credential", "credentials", "authorization", "cookie", "jwt",
)  # fmt: skip
# Protocol fields that end like a secret but are not one: audit needs them.
_NOT_SECRET = frozenset({"progress_token", "page_token", "next_page_token", "max_tokens", "token_count"})
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
# Every secret word, lowercased in any spelling (snake, camel, kebab), contains one of these; few,
# because each is a scan of the whole message.
_WORD_ANCHORS = (b"pass", b"pwd", b"secret", b"token", b"key", b"credential", b"authoriz", b"cookie", b"jwt")
_SAFE_TOKEN_KEYS = tuple(
    sorted({f'"{k.replace("_", sep)}"'.encode() for k in _NOT_SECRET if "token" in k for sep in ("_", "", "-")})
)
# Keys with escapes are not matched; payloads with \u escapes are walked whole anyway.
_JSON_KEY = re.compile(rb'"([^"\\]{1,80})"\s*:')


@functools.lru_cache(maxsize=4096)
def is_secret_key(name: str) -> bool:
    """Whether a JSON key or header name names a secret: `clientSecret`, `x-api-key`, `db_password`."""
    norm = _CAMEL.sub("_", name).lower().replace("-", "_")
    if norm in _NOT_SECRET:
        return False
    return any(norm == w or norm.endswith("_" + w) for w in _SECRET_WORDS)


# All anchors in one literal alternation: one C-speed scan instead of one per anchor (~3x faster on
# the typical message, which contains none).
_ANCHOR_OWNER = {a: p for p in PATTERNS for a in p.anchors_bytes}
_ANY_ANCHOR = re.compile(b"|".join(re.escape(a) for a in _ANCHOR_OWNER))


def _literal_trie(words: Sequence[bytes]) -> bytes:
    """A regex matching any of `words`, with shared prefixes factored out: `re` tries alternatives
    one by one at each position, so `p(?:ass|wd)` costs one test where `pass|pwd` costs two."""
    groups: dict[bytes, list[bytes]] = {}
    for word in words:
        groups.setdefault(word[:1], []).append(word[1:])
    alternatives = []
    for first, rests in sorted(groups.items()):
        if not first or b"" in rests:  # a word ends here: the longer ones add no match
            alternatives.append(re.escape(first))
        else:
            alternatives.append(re.escape(first) + _literal_trie(rests))
    return alternatives[0] if len(alternatives) == 1 else b"(?:" + b"|".join(alternatives) + b")"


# Every anchor of `patterns_in` and `may_name_secret`, lowercased, and "\u" (after which both
# look at everything): what `may_hold_secret` looks for. Too slow for whole messages (see below);
# it confirms candidates in a few bytes around them.
_LOWER_ANCHORS = sorted({a.lower() for a in _ANCHOR_OWNER} | set(_WORD_ANCHORS) | {b"\\u"})
_ANY_LOWER_ANCHOR = re.compile(_literal_trie(_LOWER_ANCHORS))


# `may_hold_secret` runs on every message, so it avoids `_ANY_LOWER_ANCHOR`: a pattern that starts
# with a set of bytes makes `re` test each byte against the set (~8 ns a byte here), while one that
# starts with a single literal byte skips ahead in a tight C loop (~0.5 ns), as does `in`. So one
# `translate` lowercases the message and folds the rare letters below into one byte, _PIVOT; every
# anchor holding one of them is then found by one regex starting with _PIVOT (the rest of the
# anchor matched after it, the part before it by lookbehind); the few anchors without one are
# found by literal scans. Folding can only add matches, so each match is confirmed on the
# original bytes around it.
_PIVOT_LETTERS = b"jkwz_\\"
_PIVOT = 1
_FOLD = bytes(_PIVOT if b in _PIVOT_LETTERS else b for b in bytes(range(256)).lower())
# An anchor that contains another adds no match: "private key-----" holds "key".
_MIN_ANCHORS = [a for a in _LOWER_ANCHORS if not any(o != a and o in a for o in _LOWER_ANCHORS)]
_PIVOTED = [a.translate(_FOLD) for a in _MIN_ANCHORS if a.translate(_FOLD) != a]
# Anchors without a pivot letter, and literal scans finding them exactly in the folded message.
_UNPIVOTED = frozenset(a for a in _MIN_ANCHORS if a.translate(_FOLD) == a)
_UNPIVOTED_SCANS = (
    re.compile(rb"cre(?:dential|t(?<=secret))").search,
    re.compile(rb"as(?:s(?<=pass)|ia)").search,
    re.compile(rb"earer").search,
    re.compile(rb"xox").search,
)
_LONGEST_ANCHOR = max(len(a) for a in _MIN_ANCHORS)


def _after_pivot(folded: bytes) -> bytes:
    """A regex for `folded` (an anchor holding _PIVOT) to follow a _PIVOT byte just matched: the
    rest literally, then the whole by lookbehind. The first _PIVOT with something after it is the
    one matched, so that most alternatives start with a literal: `re` skips those with one
    comparison, and tries the others (lookbehinds alone) in full."""
    pivots = [i for i, b in enumerate(folded) if b == _PIVOT]
    at = next((i for i in pivots if i + 1 < len(folded)), pivots[-1])
    return re.escape(folded[at + 1 :]) + (b"(?<=" + re.escape(folded) + b")" if at else b"")


def _pivot_regex(folded_anchors: Sequence[bytes]) -> re.Pattern[bytes]:
    literal: list[bytes] = []
    bare: dict[int, list[bytes]] = {}  # lookbehinds alone, by width: one of each width
    for folded in folded_anchors:
        alternative = _after_pivot(folded)
        if alternative.startswith(b"(?<="):
            bare.setdefault(len(folded), []).append(alternative[4:-1])
        else:
            literal.append(alternative)
    alternatives = sorted(literal) + [b"(?<=" + b"|".join(sorted(v)) + b")" for _, v in sorted(bare.items())]
    return re.compile(re.escape(bytes([_PIVOT])) + b"(?:" + b"|".join(alternatives) + b")")


def _check_unpivoted_scans() -> None:
    """The hand-written scans find each anchor without a pivot letter, and nothing shorter."""
    for anchor in _UNPIVOTED:
        if not any(scan(anchor) for scan in _UNPIVOTED_SCANS):
            raise RuntimeError(f"no scan finds the anchor {anchor!r}: update _UNPIVOTED_SCANS")
        for cut in (anchor[1:], anchor[:-1]):
            if any(scan(cut) for scan in _UNPIVOTED_SCANS):
                raise RuntimeError(f"a scan finds {cut!r}, which is no anchor: update _UNPIVOTED_SCANS")


_check_unpivoted_scans()
_PIVOTED_SEARCH = _pivot_regex(_PIVOTED).search


def may_hold_secret(raw: bytes) -> bool:
    """Whether an anchor of any secret pattern or secret-key word occurs in `raw` (case-blind)."""
    folded = raw.translate(_FOLD)
    for scan in _UNPIVOTED_SCANS:
        if scan(folded) is not None:
            return True
    match = _PIVOTED_SEARCH(folded)
    while match is not None:
        at = match.start()
        near = raw[max(0, at - _LONGEST_ANCHOR) : at + _LONGEST_ANCHOR].lower()
        if _ANY_LOWER_ANCHOR.search(near) is not None:
            return True
        match = _PIVOTED_SEARCH(folded, at + 1)
    return False


def secret_prescan(raw: bytes) -> tuple[tuple[SecretPattern, ...], bool]:
    """`(patterns_in(raw), may_name_secret(raw))`, faster when `raw` has none of their anchors."""
    if not may_hold_secret(raw):
        return (), False
    return patterns_in(raw), may_name_secret(raw)


def _overlap(a: bytes, b: bytes) -> bool:
    """Whether an occurrence of `b` can start inside (or where) one of `a` does."""
    return any(a[k:].startswith(b) or b.startswith(a[k:]) for k in range(len(a)))


def _anchor_probes(p: SecretPattern) -> tuple[Callable[[bytes], object], ...]:
    """Searches that together find whether an anchor of `p` occurs: one per first byte, so that
    each starts with a literal and `re` skips ahead to it in C."""
    groups: dict[bytes, list[bytes]] = {}
    for anchor in p.anchors_bytes:
        groups.setdefault(anchor[:1], []).append(anchor)
    return tuple(re.compile(_literal_trie(g)).search for _, g in sorted(groups.items()))


_PROBES = tuple((p, _anchor_probes(p)) for p in PATTERNS)
# Pairs of patterns where `_ANY_ANCHOR.finditer` can skip an anchor of the second that overlaps a
# match of the first ("AKIAIza"): when both are present, the scan decides.
_OVERLAPPING = tuple(
    (p, q) for p in PATTERNS for q in PATTERNS
    if p is not q and any(_overlap(a, b) for a in p.anchors_bytes for b in q.anchors_bytes)
)  # fmt: skip
# Below this size one alternation scan is cheaper than the probes' per-call costs.
_PROBE_FROM = 1024


def patterns_in(raw: bytes) -> tuple[SecretPattern, ...]:
    """The patterns that can match somewhere in `raw` (JSON \\u escapes can spell anything).

    Defined as the owners of the anchors `_ANY_ANCHOR.finditer` finds. In a long text that scan
    tries its alternation at every byte (~30 ns a byte); the probes find the same set faster:
    every anchor the scan finds occurs, and every anchor that occurs is found by the scan or
    overlaps one it found, which belongs to the same pattern unless an `_OVERLAPPING` pair is
    present."""
    if b"\\u" in raw:
        return PATTERNS
    if len(raw) >= _PROBE_FROM:
        present = tuple(p for p, probes in _PROBES if any(probe(raw) for probe in probes))
        if not any(p in present and q in present for p, q in _OVERLAPPING):
            return present
    if _ANY_ANCHOR.search(raw) is None:
        return ()
    owners = {_ANCHOR_OWNER[m.group()] for m in _ANY_ANCHOR.finditer(raw)}
    return tuple(p for p in PATTERNS if p in owners)  # in PATTERNS order: it decides precedence


_FEW_KEYS = 64


def may_name_secret(raw: bytes) -> bool:
    """Whether some JSON object key in `raw` may name a secret (false only when none can)."""
    if b"\\u" in raw:
        return True
    keys = _JSON_KEY.findall(raw)
    # The answer is no unless a key names a secret, and a few keys are checked faster than the
    # words are scanned for (~3 µs each in 4 KB); the scan below only ever turns a yes into a no.
    if len(keys) <= _FEW_KEYS and not any(is_secret_key(k.decode("utf-8", "replace")) for k in keys):
        return False
    low = raw.lower()
    hits = [w for w in _WORD_ANCHORS if w in low]
    if hits == [b"token"]:  # `progressToken` is in most requests: not worth a closer look alone
        for safe in _SAFE_TOKEN_KEYS:
            low = low.replace(safe, b"")
        if b"token" not in low:
            return False
    elif not hits:
        return False
    return any(is_secret_key(k.decode("utf-8", "replace")) for k in keys)


# A match attempt from Python costs about what `re` spends on this many bytes trying a pattern.
_CANDIDATE_COST = 48


def _sub_at_starts(
    value: AnyStr, regex: re.Pattern[AnyStr], marker: AnyStr, starts: Sequence[tuple[AnyStr, int]]
) -> tuple[AnyStr, int]:
    """`regex.subn(marker, value)`, trying `regex` only at the starts `starts` names. The same
    result: `subn` replaces the leftmost match, then searches on from its end; every match starts
    at a candidate, and `match(value, start)` sees the text before `start` (for `\\b`) as a search
    does. No pattern matches the empty string, so `subn` has no empty-match steps to mirror."""
    occurrences = sum(value.count(literal) for literal, _ in starts)  # no more than the starts
    if not occurrences:
        return value, 0
    if occurrences * _CANDIDATE_COST > len(value):  # dense: trying the pattern at every byte is cheaper
        return regex.subn(marker, value)
    candidates = set()
    for literal, back in starts:
        at = value.find(literal)
        while at >= 0:
            if at >= back:
                candidates.add(at - back)
            at = value.find(literal, at + 1)
    pieces: list[AnyStr] = []
    end = 0
    for start in sorted(candidates):
        if start < end:
            continue
        match = regex.match(value, start)
        if match is not None:
            pieces += (value[end:start], marker)
            end = match.end()
    if not pieces:
        return value, 0
    pieces.append(value[end:])
    return value[:0].join(pieces), len(pieces) // 2


def redact_text(value: str, patterns: Sequence[SecretPattern] = PATTERNS) -> tuple[str, int]:
    """Secret-shaped substrings of `value` replaced by markers; for strings, log lines, header values."""
    count = 0
    for p in patterns:
        if p.starts:
            value, n = _sub_at_starts(value, p.regex, p.marker, p.starts)
            count += n
            continue
        for anchor in p.anchors:
            if anchor in value:
                value, n = p.regex.subn(p.marker, value)
                count += n
                break
    return value, count


def redact_bytes(value: bytes, patterns: Sequence[SecretPattern] = PATTERNS) -> tuple[bytes, int]:
    """`redact_text` for bytes that are not JSON (or not even UTF-8)."""
    count = 0
    for p in patterns:
        if p.starts_bytes:
            value, n = _sub_at_starts(value, p.regex_bytes, p.marker.encode(), p.starts_bytes)
            count += n
            continue
        for anchor in p.anchors_bytes:
            if anchor in value:
                value, n = p.regex_bytes.subn(p.marker.encode(), value)
                count += n
                break
    return value, count
