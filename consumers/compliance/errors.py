"""Errors of the compliance tools (one small tree; none is retryable: the same input fails the same way).

    ComplianceError
    ├── RowMappingError (also ValueError)      a stored or exported value that cannot become its event field
    ├── IncompleteAuditSchema                   audit.events lacks columns the chain hash covers
    └── ExportFormatError (also ValueError)     an export format or file this module cannot write or read

A query that would write is refused with the store's own `consumers.store.base.StoreReadOnly`,
so callers handle one refusal whichever layer caught it.
"""

from __future__ import annotations


class ComplianceError(Exception):
    retryable = False


class RowMappingError(ComplianceError, ValueError):
    """A column value that cannot become the event field it maps to."""


class IncompleteAuditSchema(ComplianceError):
    """The store's rows lack event fields, so no row's hash could be recomputed: fix the store first."""


class ExportFormatError(ComplianceError, ValueError):
    """An unknown export format, or a file that is not an export of that format."""
