"""The wheel ships the ClickHouse migrations, and an installed (non-editable) package opens a store with them.

Builds the project's wheel with pip and hatchling (a dev dependency; no build isolation, so no
download), unpacks it into a fresh directory and runs, from there and without this checkout on
the path, a ChdbStore that must find and apply every migration.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from pathlib import Path

import pytest

from consumers.store.migrations import PACKAGED_MIGRATIONS, load_migrations
from tests.store.conftest import ROOT

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(importlib.util.find_spec("hatchling") is None, reason="needs hatchling (the dev extra)"),
]

SOURCE = ROOT / "infra" / "clickhouse"
IN_WHEEL = f"consumers/store/{PACKAGED_MIGRATIONS}"

OPEN_STORE = textwrap.dedent("""
    import asyncio, sys
    from consumers.store import migrations
    from consumers.store.chdb_store import ChdbStore

    async def main() -> None:
        store = ChdbStore(sys.argv[1])
        await store.open()
        try:
            applied = await store.query("SELECT version FROM audit.schema_migrations ORDER BY version")
            print(migrations.MIGRATIONS_DIR)
            print(",".join(str(row[0]) for row in applied.rows))
        finally:
            await store.close()

    asyncio.run(main())
""")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-cache-dir", "-q",
         "-w", str(out), str(ROOT)],
        check=True, cwd=out, timeout=300,
    )  # fmt: skip
    (built,) = out.glob("mcp_audit_gateway-*.whl")
    return built


def test_the_wheel_carries_every_migration(wheel: Path) -> None:
    shipped = sorted(p.name for p in SOURCE.glob("*.sql"))
    assert len(shipped) >= 4
    with zipfile.ZipFile(wheel) as archive:
        inside = {name.removeprefix(f"{IN_WHEEL}/"): name for name in archive.namelist() if name.startswith(IN_WHEEL)}
        assert sorted(n for n in inside if n.endswith(".sql")) == shipped
        for name in shipped:
            assert archive.read(inside[name]) == (SOURCE / name).read_bytes(), name


def test_an_installed_package_opens_a_store_with_them(wheel: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)  # what installing a wheel does with its files
    # -S: no site-packages processing, so the editable install's path to this checkout is not there;
    # the installed package comes first, the venv's third-party packages after it.
    path = os.pathsep.join((str(site), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]))
    run = subprocess.run(
        [sys.executable, "-S", "-c", OPEN_STORE, str(tmp_path / "store")],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": path}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    where, versions = run.stdout.split()
    assert Path(where) == site / IN_WHEEL
    assert versions == ",".join(str(m.version) for m in load_migrations(SOURCE))
