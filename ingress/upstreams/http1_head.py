"""Reading an HTTP/1.1 response head: the status line, the header lines, and the body framing,
connection reuse and content coding they imply (RFC 9112 §6.3). No I/O: bytes in, a verdict out.
"""

from __future__ import annotations

import zlib

import aiohttp

__all__ = ["CHUNKED", "EOF", "EVENT_STREAM", "LENGTH", "NONE", "BadResponse", "ResponseHead", "parse_head"]

EVENT_STREAM = "text/event-stream"

# Response framing (RFC 9112 §6.3)
NONE, LENGTH, CHUNKED, EOF = 0, 1, 2, 3
_FRAMING_HEADERS = frozenset({"transfer-encoding", "content-length", "connection", "content-encoding", "content-type"})
# The usual spellings of header names, lowercased (framing headers) or None (others): spares a
# lower() per header line.
_KNOWN: dict[str, str | None] = {
    **{name: name.lower() for name in ("Content-Type", "Content-Length", "Connection", "Content-Encoding",
                                       "Transfer-Encoding")},
    **{name: None for name in ("Date", "Server", "Mcp-Session-Id", "Cache-Control", "Keep-Alive", "Vary")},
}
_KNOWN.update({name.lower(): low for name, low in _KNOWN.items()})


# Verdicts on heads seen lately, by their exact bytes: an upstream repeats the same head (same
# status, headers and body length, and a Date that changes once a second) for answers of the same
# size, and parsing one costs more than the rest of reading the answer. A verdict is never changed
# after parsing, so responses can share it.
_RECENT: dict[bytes, ResponseHead] = {}
_RECENT_MAX = 256


class BadResponse(aiohttp.ClientError):
    """The upstream's bytes are not a valid HTTP/1.1 response."""


class ResponseHead:
    """A final response's head, and what it says about the body that follows."""

    __slots__ = ("content_type", "decoder", "framing", "keep_alive", "length", "pairs", "reason", "status")

    def __init__(self, status: int, reason: str, pairs: list[tuple[str, str]], content_type: str,
                 framing: int, length: int, keep_alive: bool, decoder: zlib._Decompress | None) -> None:
        self.status = status
        self.reason = reason
        self.pairs = pairs  # the header fields in order, values without surrounding blanks
        self.content_type = content_type
        self.framing = framing
        self.length = length  # body bytes (LENGTH framing)
        self.keep_alive = keep_alive
        self.decoder = decoder  # a decompressor for the body's Content-Encoding, if any


def parse_head(head: bytes) -> ResponseHead | None:
    """The head (without its blank line), or None for a 1xx interim response; BadResponse if invalid."""
    seen = _RECENT.get(head)
    if seen is not None:
        return seen
    verdict = _parse(head)
    if verdict is not None and verdict.decoder is None:  # (a decoder has state: one per response)
        if len(_RECENT) >= _RECENT_MAX:
            _RECENT.clear()
        _RECENT[head] = verdict
    return verdict


def _parse(head: bytes) -> ResponseHead | None:
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes any byte
        raise BadResponse("undecodable response head") from None
    lines = text.split("\r\n")
    version, _, rest = lines[0].partition(" ")
    code, _, reason = rest.partition(" ")
    if not version.startswith("HTTP/1.") or len(code) != 3 or not code.isdigit():
        raise BadResponse(f"invalid status line {lines[0][:100]!r}")
    status = int(code)
    if 100 <= status < 200 and status != 101:
        return None  # interim response (100 Continue, 103 Early Hints): the real one follows
    pairs: list[tuple[str, str]] = []
    # The first value of each header framing needs (what CIMultiDict.get would return), picked
    # out while splitting: the multidict itself is built only if a caller asks for headers.
    fields: dict[str, str] = {}
    known = _KNOWN
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name[-1] in " \t" or name[0] in " \t":
            raise BadResponse(f"invalid header line {line[:100]!r}")
        value = value.strip(" \t")
        pairs.append((name, value))
        low = known.get(name, "")
        if low == "":
            low = name.lower()
            if low not in _FRAMING_HEADERS:
                continue
        elif low is None:
            continue
        if low not in fields:
            fields[low] = value
    return _verdict(status, reason, version, fields, pairs)


def _verdict(status: int, reason: str, version: str, fields: dict[str, str],
             pairs: list[tuple[str, str]]) -> ResponseHead:
    """What the status and the framing headers say of the body and the connection."""
    framing = EOF
    length = 0
    te = fields.get("transfer-encoding")
    if status in (101, 204, 304):
        framing = NONE if status != 101 else EOF
    elif te is not None:
        codings = [c.strip().lower() for c in te.split(",")]
        if codings[-1] == "chunked":
            if len(codings) > 1:
                raise BadResponse(f"unsupported Transfer-Encoding {te!r}")
            framing = CHUNKED
    else:
        cl = fields.get("content-length")
        if cl is not None:
            if cl.isascii() and cl.isdigit():  # (not "²": str.isdigit takes it, int does not)
                length = int(cl)
            else:
                values = {v.strip() for v in cl.split(",")} if "," in cl else {cl}
                if len(values) != 1 or not ((value := values.pop()).isascii() and value.isdigit()):
                    raise BadResponse(f"invalid Content-Length {cl!r}")
                length = int(value)
            framing = LENGTH if length else NONE
    connection = fields.get("connection")
    keep_alive = version == "HTTP/1.1" and framing != EOF and (connection is None or "close" not in connection.lower())
    encoding = fields.get("content-encoding")
    decoder: zlib._Decompress | None = None
    if encoding is not None:
        encoding = encoding.strip().lower()
        if encoding in ("gzip", "x-gzip", "deflate"):
            decoder = zlib.decompressobj(wbits=47)  # gzip or zlib, by the header
        elif encoding not in ("", "identity"):
            raise BadResponse(f"unsupported Content-Encoding {encoding!r}")
    content_type = fields.get("content-type")
    content_type = "" if content_type is None else content_type.partition(";")[0].strip().lower()
    return ResponseHead(status, reason, pairs, content_type, framing, length, keep_alive, decoder)
