"""Is this SQL a read? Statement classification for `mcpgw audit query`, ahead of the store. Pure.

The store refuses writes itself (readonly users, `StoreReadOnly`); this is the first line, so a
write is refused with a clear message before it reaches any backend — including the embedded one,
which runs in-process with the gateway's file-system rights. Allowed: one statement starting with
SELECT, WITH, SHOW, DESCRIBE/DESC or EXPLAIN, with no `INTO OUTFILE` and no table function that
reaches outside the store (files, URLs, other databases, executables).

The scan skips comments (`--`, `#`, `/* */`) and quoted text ('…', "…", `…`, $$…$$), so a keyword
inside a string neither refuses a read nor lets a write through.
"""

from __future__ import annotations

import itertools
import re

from consumers.store.base import StoreReadOnly

READ_STATEMENTS = frozenset({"SELECT", "WITH", "SHOW", "DESCRIBE", "DESC", "EXPLAIN"})
# Table functions that read or run things outside the audit store; lower-cased.
OUTSIDE_TABLE_FUNCTIONS = frozenset({
    "file", "filecluster", "url", "urlcluster", "s3", "s3cluster", "gcs", "oss", "cosn", "azureblobstorage",
    "azureblobstoragecluster", "hdfs", "hdfscluster", "remote", "remotesecure", "cluster", "clusterallreplicas",
    "mysql", "postgresql", "sqlite", "mongodb", "redis", "jdbc", "odbc", "executable", "executablepool",
    "deltalake", "iceberg", "hudi",
})
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def code_of(sql: str) -> str:
    """`sql` with comments removed and each quoted literal or identifier replaced by a space."""
    out: list[str] = []
    i, n = 0, len(sql)
    while i < n:
        c = sql[i]
        if sql.startswith("--", i) or c == "#":
            end = sql.find("\n", i)
            i = n if end < 0 else end
        elif sql.startswith("/*", i):
            end = sql.find("*/", i + 2)
            i = n if end < 0 else end + 2
            out.append(" ")
        elif sql.startswith("$$", i):
            end = sql.find("$$", i + 2)
            i = n if end < 0 else end + 2
            out.append(" ")
        elif c in "'\"`":
            i = _after_quoted(sql, i, c)
            out.append(" ")
        else:
            out.append(c)
            i += 1
    return "".join(out)


def _after_quoted(sql: str, i: int, quote: str) -> int:
    j = i + 1
    while j < len(sql):
        if sql[j] == "\\":
            j += 2
        elif sql[j] == quote:
            if sql.startswith(quote * 2, j):  # a doubled quote is an escaped one
                j += 2
            else:
                return j + 1
        else:
            j += 1
    return j


def statement_keyword(sql: str) -> str:
    """The first keyword of the (single) statement, upper-cased; "" when there is none."""
    match = _WORD.search(code_of(sql).lstrip().lstrip("(").lstrip())
    return match[0].upper() if match else ""


def refusal(sql: str) -> str | None:
    """Why `sql` is not an allowed read, or None when it is."""
    code = code_of(sql)
    statements = [s for s in code.split(";") if s.strip()]
    if not statements:
        return "the query is empty"
    if len(statements) > 1:
        return f"one statement at a time: this text holds {len(statements)}"
    body = statements[0].strip()
    first = _WORD.match(body.lstrip("(").lstrip())
    keyword = first[0].upper() if first else body[:20]
    if keyword not in READ_STATEMENTS:
        allowed = ", ".join(sorted(READ_STATEMENTS - {"DESC"}))
        return (f"{keyword or 'this statement'} is not a read: the audit store is append-only and this "
                f"command only reads ({allowed})")
    words = [w.lower() for w in _WORD.findall(body)]
    for a, b in itertools.pairwise(words):
        if a == "into" and b == "outfile":
            return "INTO OUTFILE writes a file: use `mcpgw audit export` for files"
    for m in _WORD.finditer(body):
        if m[0].lower() in OUTSIDE_TABLE_FUNCTIONS and body[m.end():].lstrip().startswith("("):
            return f"{m[0]}(…) reaches outside the audit store: queries read the audit tables only"
    return None


def check_read_only(sql: str) -> None:
    reason = refusal(sql)
    if reason is not None:
        raise StoreReadOnly(f"query refused: {reason}")
