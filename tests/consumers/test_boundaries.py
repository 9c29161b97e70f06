"""Import boundaries of this part (DESIGN.md §6): the pipeline is generic, the consumers never reach ingress."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def offenders(paths: list[Path], forbidden: tuple[str, ...]) -> dict[str, list[str]]:
    found = {}
    for path in paths:
        bad = sorted(n for n in imported(path) if any(n == f or n.startswith(f + ".") for f in forbidden))
        if bad:
            found[str(path.relative_to(REPO))] = bad
    return found


def test_the_pipeline_imports_no_consumer_specifics() -> None:
    paths = sorted((REPO / "consumers" / "pipeline").glob("*.py"))
    assert paths
    assert offenders(paths, ("ingress", "schemas", "consumers.store", "consumers.audit")) == {}


def test_consumers_never_import_ingress() -> None:
    assert offenders(sorted((REPO / "consumers").rglob("*.py")), ("ingress",)) == {}
