"""`may_hold_secret` against its definition: some anchor occurs in the lowercased message.

The fast version folds letters and scans in pieces; it must answer exactly as the definition does
on every input, so it is compared with a plain oracle on crafted edge cases and on 60,000 random
messages (a fixed seed) built to be near misses.
"""

from __future__ import annotations

import itertools
import json
import random

import pytest

from schemas.secrets import _WORD_ANCHORS, PATTERNS, may_hold_secret, may_name_secret, patterns_in, secret_prescan

ANCHORS = sorted({a.lower() for p in PATTERNS for a in p.anchors_bytes} | set(_WORD_ANCHORS) | {b"\\u"})
PIVOTS = b"jJkKwWzZ_\\\x01"
NOISE = [b"", b" ", b'"', b"\\", b"{", b":", b",", b"_", b"-", b".", b"\x00", b"\x01", b"\x7f", b"\x80", b"\xff",
         "é".encode(), "ẞ".encode(), b"\xc3", b"j", b"K", b"w", b"z", b"x", b"a", b"s", b"e"]  # fmt: skip


def oracle(raw: bytes) -> bool:
    low = raw.lower()
    return any(a in low for a in ANCHORS)


def case_variants(word: bytes) -> list[bytes]:
    """Every upper/lower spelling of short anchors; a sample of them for long ones."""
    letters = [i for i, b in enumerate(word) if chr(b).isalpha()]
    if len(letters) <= 6:
        masks = itertools.product((False, True), repeat=len(letters))
    else:
        rnd = random.Random(word)
        masks = (tuple(rnd.random() < 0.5 for _ in letters) for _ in range(24))
    out = []
    for mask in masks:
        b = bytearray(word)
        for i, up in zip(letters, mask, strict=True):
            if up:
                b[i] = ord(chr(b[i]).upper())
        out.append(bytes(b))
    return out


def crafted() -> list[bytes]:
    cases: list[bytes] = [b"", b"\x01", b"\x01" * 40, b"\\", b"u", b"jwkz_\\\x01" * 8]
    for anchor in ANCHORS:
        for variant in case_variants(anchor):
            cases += [variant, b"x" + variant, variant + b"x", b'{"k":"' + variant + b'"}', b'"' + variant + b'":']
        for i in range(1, len(anchor)):  # split by one byte: a near miss, or a pivot where none belongs
            for noise in NOISE:
                cases.append(b"..." + anchor[:i] + noise + anchor[i:] + b"...")
        for i in range(len(anchor)):  # one byte swapped, for one of the same fold or a neighbour
            for swap in PIVOTS + b"aeu-":
                cases.append(anchor[:i] + bytes([swap]) + anchor[i + 1 :])
        cases += [anchor[1:], anchor[:-1], anchor * 2, anchor[:-1] + anchor, PIVOTS + anchor + PIVOTS]
        escaped = "".join(f"\\u{c:04x}" for c in anchor).encode()
        cases += [b'{"t":"' + escaped + b'"}', json.dumps({"t": anchor.decode() + "é"}).encode()]
    # A pivot anchor's match confirmed in a window around it: anchors right at the window's edges.
    for anchor, other in itertools.product(ANCHORS, repeat=2):
        cases.append(other[:-1] + b"\x01" * 11 + anchor)
    return cases


def test_crafted_cases() -> None:
    cases = crafted()
    wrong = [raw for raw in cases if may_hold_secret(raw) is not oracle(raw)]
    assert not wrong, wrong[:20]
    assert 1_000 < sum(map(oracle, cases)) < len(cases) - 1_000  # both answers well exercised


def random_message(rnd: random.Random) -> bytes:
    """Mostly near misses: fragments of anchors, their letters, pivots, JSON punctuation, high bytes."""
    parts = []
    for _ in range(rnd.randrange(0, 24)):
        kind = rnd.randrange(6)
        anchor = rnd.choice(ANCHORS)
        if kind == 0:
            whole = rnd.random() < 0.1
            parts.append(rnd.choice(case_variants(anchor)) if whole else anchor[: rnd.randrange(len(anchor))])
        elif kind == 1:
            parts.append(anchor[rnd.randrange(1, len(anchor)) :])
        elif kind == 2:
            parts.append(bytes(rnd.choice(PIVOTS + b'aeiorstuy-"{}:') for _ in range(rnd.randrange(1, 6))))
        elif kind == 3:
            parts.append(rnd.randbytes(rnd.randrange(1, 4)))
        elif kind == 4:
            b = bytearray(anchor)
            b[rnd.randrange(len(b))] = rnd.choice(PIVOTS)
            parts.append(bytes(b))
        else:
            parts.append(rnd.choice(NOISE))
    return b"".join(parts)


def test_random_near_misses() -> None:
    rnd = random.Random(20261121)
    found = 0
    for _ in range(60_000):
        raw = random_message(rnd)
        expected = oracle(raw)
        assert may_hold_secret(raw) is expected, raw
        found += expected
    assert 5_000 < found < 55_000, found  # both answers well exercised


def test_random_long_text() -> None:
    """Long messages: a match can be anywhere, confirmed after many false candidates."""
    rnd = random.Random(7)
    alphabet = b'abcdefghijklmnopqrstuvwxyz     .,"_\\{}:' + PIVOTS * 3
    for _ in range(400):
        raw = bytearray(rnd.choice(alphabet) for _ in range(rnd.randrange(100, 3000)))
        if rnd.random() < 0.5:
            at = rnd.randrange(len(raw))
            raw[at:at] = rnd.choice(case_variants(rnd.choice(ANCHORS)))
        assert may_hold_secret(bytes(raw)) is oracle(bytes(raw))


@pytest.mark.parametrize("seed", range(4))
def test_secret_prescan_is_the_full_tests(seed: int) -> None:
    rnd = random.Random(seed)
    for _ in range(3_000):
        raw = random_message(rnd)
        assert secret_prescan(raw) == (patterns_in(raw), may_name_secret(raw))
