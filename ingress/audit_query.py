"""The read-only audit query port the admin API serves `POST /admin/audit/query` through.

The ingress never imports `consumers`, so whoever opened the audit store (the `mcpgw up` wiring)
hands in a function from SQL to a result with `.columns`, `.types` and `.rows`, translating the
store's errors into the two below.

Errors (one small tree):
    AuditQueryError          base
    ├── AuditQueryRefused    the store refused the statement (a write, bad SQL); not retryable
    └── AuditQueryUnavailable  the store cannot answer now; retryable
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol


class AuditQueryError(Exception):
    retryable = False


class AuditQueryRefused(AuditQueryError):
    pass


class AuditQueryUnavailable(AuditQueryError):
    retryable = True


class QueryAnswer(Protocol):
    @property
    def columns(self) -> Sequence[str]: ...

    @property
    def types(self) -> Sequence[str]: ...

    @property
    def rows(self) -> Sequence[Sequence[object]]: ...


AuditQuery = Callable[[str], Awaitable[QueryAnswer]]
