"""The rollup SQL files are immutable once a migration ran them: checksums recorded in every migration."""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import psycopg
import pytest

from collector.db import rollups
from collector.db.migrate import migrate
from collector.db.resources import continuous_aggregates_dir, migrations_dir
from collector.errors import DatabaseError


def migration_modules() -> list[ModuleType]:
    modules = []
    for path in sorted((migrations_dir() / "versions").glob("*.py")):
        spec = importlib.util.spec_from_file_location(f"_migration_{path.stem}", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        modules.append(module)
    return modules


def test_sql_files_unchanged_since_their_migrations() -> None:
    problems = []
    for module in migration_modules():
        for name, recorded in getattr(module, "SQL_FILES", {}).items():
            path = continuous_aggregates_dir() / name
            actual = hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else "missing"
            if actual != recorded:
                problems.append(f"continuous_aggregates/{name} differs from what migration {module.revision} ran "
                                f"(sha256 {actual[:12]}, recorded {recorded[:12]})")
    assert not problems, ("; ".join(problems) + ". Restore the file(s): an applied rollup file never changes. "
                          "To change a rollup, make a new migration that runs a new file.")


def test_every_sql_file_is_run_by_a_migration() -> None:
    recorded = {name for module in migration_modules() for name in getattr(module, "SQL_FILES", {})}
    on_disk = {p.name for p in continuous_aggregates_dir().glob("*.sql")}
    assert on_disk == recorded, f"files no migration runs: {sorted(on_disk - recorded)}"


def test_migration_refuses_a_changed_file(make_database: Callable[[], str], tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    copy = tmp_path / "continuous_aggregates"
    shutil.copytree(continuous_aggregates_dir(), copy)
    with (copy / "candles_1h.sql").open("a") as f:
        f.write("-- an innocent-looking edit\n")
    monkeypatch.setattr(rollups, "continuous_aggregates_dir", lambda: copy)
    url = make_database()
    with pytest.raises(DatabaseError) as err:
        migrate(url)
    message = str(err.value)
    assert "candles_1h.sql has changed since migration 0002" in message and "make a new migration" in message
    assert "\n" not in message
    with psycopg.connect(url) as conn:  # refused before touching anything: still at 0001, no rollup
        assert conn.execute("SELECT version_num FROM coinpulse.alembic_version").fetchone() == ("0001",)
        assert conn.execute("SELECT to_regclass('coinpulse.candles_1m')").fetchone() == (None,)
