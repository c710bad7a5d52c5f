"""Fixtures for tests against a real TimescaleDB (see tests/pgserver.py for how it is found)."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator

import psycopg
import pytest
from psycopg import sql

import tools
from pgserver import Server, find_server

_server: Server | None = None
_names = itertools.count(1)


def _get_server() -> Server:
    global _server
    if _server is None:
        _server = find_server()
    return _server


def pytest_report_header(config: pytest.Config) -> list[str]:
    server = _get_server()
    if server.admin_url is None:
        return [f"timescaledb: NOT AVAILABLE, database tests will skip: {server.skip_reason}"]
    edition = {"timescale": "full edition (Timescale License)", "apache": "Apache-2 edition"}.get(
        server.license or "", f"license={server.license}")
    return [f"timescaledb: {server.version}, {edition}, on PostgreSQL {server.postgres}; via {server.how}"]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _server is not None:
        _server.stop()


@pytest.fixture(scope="session")
def pg_server() -> Server:
    server = _get_server()
    if server.admin_url is None:
        pytest.skip(server.skip_reason or "no TimescaleDB")
    return server


@pytest.fixture(autouse=True)
def _edition_gate(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("full_edition") is None:
        return
    server = _get_server()
    if server.admin_url is None:
        pytest.skip(server.skip_reason or "no TimescaleDB")
    if not server.full_edition:
        pytest.skip(f"needs the TimescaleDB full edition (continuous aggregates, columnstore, policies); "
                    f"installed: {server.version} with license={server.license}")


@pytest.fixture(scope="session")
def make_database(pg_server: Server) -> Iterator[Callable[[], str]]:
    """A factory of fresh, empty databases on the test server; returns their URLs."""
    created: list[str] = []

    def make() -> str:
        name = f"coinpulse_t{next(_names)}"
        with psycopg.connect(pg_server.admin_url or "", autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        created.append(name)
        return pg_server.url(name)

    yield make


@pytest.fixture(scope="session")
def migrated_url(make_database: Callable[[], str]) -> str:
    from collector.db.migrate import migrate

    url = make_database()
    migrate(url)
    with psycopg.connect(url, autocommit=True) as conn:
        pause_policies(conn)
    return url


def alembic_to(url: str, direction: str, revision: str) -> None:
    """Run ``alembic upgrade|downgrade <revision>`` on the database at ``url`` (tests of migration steps)."""
    import sqlalchemy
    from alembic import command

    from collector.db.migrate import alembic_config

    engine = sqlalchemy.create_engine("postgresql+psycopg://", creator=lambda: psycopg.connect(url),
                                      poolclass=sqlalchemy.pool.NullPool)
    cfg = alembic_config()
    try:
        with engine.connect() as sa_conn:
            cfg.attributes["connection"] = sa_conn
            {"upgrade": command.upgrade, "downgrade": command.downgrade}[direction](cfg, revision)
            sa_conn.commit()
    finally:
        engine.dispose()


def pause_policies(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    """Unschedule the refresh/columnstore/retention jobs: in the background they would drop or compress test
    rows mid-test (retention 90 days, columnstore 7 days). Tests that need a job run it with CALL run_job."""
    conn.execute("SELECT alter_job(job_id, scheduled => false) FROM timescaledb_information.jobs WHERE job_id >= 1000")


def materialization_table(conn: psycopg.Connection[tuple[object, ...]], view: str) -> sql.Identifier:
    """A rollup's materialization hypertable: the rows its refreshes wrote, without real-time aggregation."""
    row = conn.execute("SELECT materialization_hypertable_schema, materialization_hypertable_name "
                       "FROM timescaledb_information.continuous_aggregates "
                       "WHERE view_schema = 'coinpulse' AND view_name = %s", (view,)).fetchone()
    assert row is not None, f"no rollup coinpulse.{view}"
    return sql.Identifier(str(row[0]), str(row[1]))


TRUNCATE = """
DO $$
DECLARE t record;
BEGIN
    FOR t IN SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = 'coinpulse' AND c.relkind IN ('r', 'p') AND c.relname <> 'alembic_version'
    LOOP
        EXECUTE format('TRUNCATE coinpulse.%I RESTART IDENTITY CASCADE', t.relname);
    END LOOP;
    -- Emptying a continuous aggregate also resets its watermark, so every rollup is real-time again.
    FOR t IN SELECT view_name AS relname FROM timescaledb_information.continuous_aggregates
             WHERE view_schema = 'coinpulse'
    LOOP
        EXECUTE format('TRUNCATE coinpulse.%I', t.relname);
    END LOOP;
END
$$;
"""


@pytest.fixture
def db_url(migrated_url: str) -> str:
    """The migrated test database, emptied of rows before the test."""
    with psycopg.connect(migrated_url, autocommit=True) as conn:
        conn.execute(TRUNCATE)
    return migrated_url


@pytest.fixture
def db(db_url: str) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    with psycopg.connect(db_url, autocommit=True) as conn:
        yield conn


@pytest.fixture(scope="session")
def promtool() -> str:
    """Prometheus's promtool (for PromQL checks), or the test skips naming where it is looked for."""
    path = tools.promtool()
    if path is None:
        pytest.skip("promtool not available ($PROMTOOL, PATH, or `scripts/tools promtool` from Debian's prometheus)")
    return path
