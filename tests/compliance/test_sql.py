"""consumers/compliance/sql.py: only reads get through, whatever the comments and strings say."""

from __future__ import annotations

import pytest

from consumers.compliance.sql import check_read_only, code_of, refusal, statement_keyword
from consumers.store.base import StoreReadOnly


@pytest.mark.parametrize("sql", [
    "SELECT * FROM audit.events",
    "  select count() from audit.events;  ",
    "WITH t AS (SELECT 1) SELECT * FROM t",
    "(SELECT 1) UNION ALL (SELECT 2)",
    "SHOW TABLES FROM audit",
    "DESCRIBE TABLE audit.events",
    "desc audit.events",
    "EXPLAIN SELECT 1",
    "-- who deleted things?\n/* a note; with a semicolon */ SELECT 'DROP TABLE x; INSERT'",
    "SELECT `insert`, \"drop\" FROM audit.events WHERE detail = 'it''s; DELETE'",
    "SELECT $$; ALTER TABLE x$$",
    "SELECT * FROM audit.events WHERE tool = 'file' AND method LIKE 'url%'",
    "# comment\nSELECT 1",
])
def test_reads_are_allowed(sql: str) -> None:
    assert refusal(sql) is None
    check_read_only(sql)


@pytest.mark.parametrize(("sql", "reason"), [
    ("INSERT INTO audit.events SELECT * FROM audit.events", "INSERT is not a read"),
    ("ALTER TABLE audit.events DELETE WHERE 1", "ALTER is not a read"),
    ("  /* hidden */ DROP TABLE audit.events", "DROP is not a read"),
    ("TRUNCATE audit.events", "TRUNCATE is not a read"),
    ("OPTIMIZE TABLE audit.events FINAL", "OPTIMIZE is not a read"),
    ("SET readonly = 0", "SET is not a read"),
    ("SYSTEM DROP MARK CACHE", "SYSTEM is not a read"),
    ("SELECT 1; DELETE FROM audit.events WHERE 1", "one statement at a time"),
    ("SELECT * FROM audit.events INTO OUTFILE 'x.csv'", "INTO OUTFILE"),
    ("SELECT * FROM url('http://169.254.169.254/', CSV)", "url(…) reaches outside"),
    ("SELECT * FROM s3 ('bucket')", "s3(…) reaches outside"),
    ("SELECT * FROM executable('x.sh', TSV, 'a String')", "executable(…)"),
    ("", "empty"),
    ("-- nothing\n;", "empty"),
])
def test_writes_and_escapes_are_refused(sql: str, reason: str) -> None:
    found = refusal(sql)
    assert found is not None and reason in found
    with pytest.raises(StoreReadOnly, match="query refused"):
        check_read_only(sql)


def test_code_of_drops_comments_and_literals() -> None:
    assert code_of("SELECT 'a;b' -- c;\n, \"d\" /* e */").split() == ["SELECT", ","]
    assert statement_keyword(" /* x */ ( select 1)") == "SELECT"
    assert statement_keyword("'unterminated") == ""
