"""Personal data detectors: payment cards, IBANs, US SSNs, emails, phone numbers. Pure, regex only.

Each is cheap on the common payload that holds none: emails need an `@` (a literal the regex
engine finds at C speed); the numeric kinds need at least nine digits in the payload, and are
looked for in its shape (one `bytes.translate`), where a literal starts every candidate.
Candidates are then validated so that ids and timestamps are not taken for personal data: cards
by issuer prefix, length and Luhn checksum; IBANs by format and the ISO 7064 mod-97 check; SSNs
by the SSA's never-issued ranges; phones by their formatting (`+` and country code, or
`(555) 010-4477` / `555-010-4477`), never a bare run of digits.
"""

from __future__ import annotations

import re

_NOT_DIGITS = bytes(c for c in range(256) if not 48 <= c <= 57)
_MIN_DIGITS = 9  # the shortest numeric kind (an SSN) has nine
_MIN_IBAN_DIGITS = 12  # the shortest IBANs (Norway's, 15 characters) have 13

_EMAIL = re.compile(rb"@[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?(?:\.[A-Za-z0-9-]{1,63})*\.[A-Za-z]{2,24}\b")
_LOCAL_PART_END = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._%+-")
# The payload's shape: digits "0", uppercase letters "A", number separators as they are, all else "x".
# A run of digits with separators is then found by a regex that starts with a literal, which the
# regex engine skips to far faster than to a character class; an IBAN starts with "AA00".
_SHAPE = bytes(48 if 48 <= c <= 57 else 65 if 65 <= c <= 90 else c if c in b" ().-+" else 120 for c in range(256))
_NUMBER = re.compile(rb"0[0 ().-]{7,62}0")
_WORD = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")
_NOT_BEFORE = _WORD | frozenset(b".-")
_SSN = re.compile(rb"(?!000|666|9)\d{3}-(?!00)\d{2}-(?!0000)\d{4}")
_PHONE = re.compile(rb"\+\d{1,3}[ .-]?(?:\(?\d{1,4}\)?[ .-]?){2,4}\d{2,4}|\(?\d{3}\)?[ .-]\d{3}[ .-]\d{4}")
_CARD = re.compile(rb"\d{13,19}|\d{4}(?:[ -]\d{4}){2}[ -]\d{1,7}|\d{4}[ -]\d{6}[ -]\d{5}")
_IBAN = re.compile(rb"\b([A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?)\b")
# Issuer prefixes and lengths: Visa, Mastercard, Amex, Discover, JCB, Diners, UnionPay.
_CARD_PREFIX = re.compile(
    rb"4\d{12}(?:\d{3}){0,2}|5[1-5]\d{14}|2(?:2[2-9][1-9]|2[3-9]\d|[3-6]\d\d|7[01]\d|720)\d{12}|3[47]\d{13}"
    rb"|6(?:011|5\d\d|4[4-9]\d)\d{12,15}|35(?:2[89]|[3-8]\d)\d{12,15}|3(?:0[0-5]|[689]\d)\d{11,16}|62\d{14,17}"
)


def luhn_valid(digits: bytes) -> bool:
    total = 0
    for i, c in enumerate(reversed(digits)):
        d = c - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def iban_valid(candidate: bytes) -> bool:
    """ISO 13616: length 15-34, and the number with its first four characters moved last is 1 mod 97."""
    iban = candidate.replace(b" ", b"")
    if not 15 <= len(iban) <= 34:
        return False
    rearranged = iban[4:] + iban[:4]
    number = "".join(str(c - 55) if c >= 65 else chr(c) for c in rearranged)
    return int(number) % 97 == 1


def is_card(candidate: bytes) -> bool:
    if _CARD.fullmatch(candidate) is None:
        return False
    digits = candidate.translate(None, _NOT_DIGITS)
    return _CARD_PREFIX.fullmatch(digits) is not None and luhn_valid(digits) and len(set(digits)) > 1


def _kind(candidate: bytes) -> str | None:
    if _SSN.fullmatch(candidate):
        return "ssn"
    if is_card(candidate):
        return "card"
    if _PHONE.fullmatch(candidate):
        return "phone"
    return None


def find_pii(payload: bytes) -> dict[str, int]:
    """How many of each kind (`card`, `iban`, `ssn`, `email`, `phone`) `payload` holds; kinds absent are left out."""
    found: dict[str, int] = {}
    if b"@" in payload:
        for match in _EMAIL.finditer(payload):
            start = match.start()
            if start and payload[start - 1] in _LOCAL_PART_END:
                found["email"] = found.get("email", 0) + 1
    shape = payload.translate(_SHAPE)
    digits = shape.count(b"0")
    if digits < _MIN_DIGITS:
        return found
    end = len(payload)
    for match in _NUMBER.finditer(shape):
        start, stop = match.span()
        if shape.count(b"0", start, stop) < _MIN_DIGITS:
            continue  # a date, a time, a version: too few digits to be any kind
        if stop < end and payload[stop] in _WORD:
            continue  # inside a longer token: an id, a hash, a version
        if start:
            before = payload[start - 1]
            if before == 43 or before == 40:  # "+1 415 …", "(415) …": the sign and the parenthesis belong to it
                start -= 1
            elif before in _NOT_BEFORE:
                continue
        candidate = payload[start:stop]
        kind = _kind(candidate)
        if kind is not None:
            found[kind] = found.get(kind, 0) + 1
        elif b" " in candidate:  # numbers side by side: "123-45-6789 4111111111111111"
            for part in candidate.split():
                if len(part) >= _MIN_DIGITS and (kind := _kind(part)) is not None:
                    found[kind] = found.get(kind, 0) + 1
    if digits >= _MIN_IBAN_DIGITS and b"AA00" in shape:
        for match in _IBAN.finditer(payload):
            if iban_valid(match.group(1)):
                found["iban"] = found.get("iban", 0) + 1
    return found
