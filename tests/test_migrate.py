"""`coinpulse migrate` against a real TimescaleDB: schema, hypertables, roles, idempotency, clear errors."""

from __future__ import annotations

from collections.abc import Callable

import psycopg
import pytest

from collector.db.connect import ServerInfo
from collector.db.migrate import head_revision, migrate, require_full_edition
from collector.errors import DatabaseError, ExtensionMissing

HYPERTABLES = {"price_ticks", "asset_snapshots", "exchange_snapshots", "market_snapshots", "rate_snapshots"}


def test_fresh_migrate_creates_schema_and_second_run_is_noop(make_database: Callable[[], str]) -> None:
    url = make_database()
    first = migrate(url)
    assert first.before is None and first.after == head_revision()
    with psycopg.connect(url) as conn:
        hypertables = {r[0] for r in conn.execute(
            "SELECT hypertable_name FROM timescaledb_information.hypertables WHERE hypertable_schema='coinpulse'")}
        tables = {r[0] for r in conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema='coinpulse'")}
        snapshot = conn.execute(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid=c.relnamespace WHERE nspname='coinpulse'"
        ).fetchone()
    assert hypertables >= HYPERTABLES
    assert {"assets", "exchanges", "ingest_gaps"} <= tables
    second = migrate(url)
    assert not second.changed and second.after == first.after
    with psycopg.connect(url) as conn:
        again = conn.execute(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid=c.relnamespace WHERE nspname='coinpulse'"
        ).fetchone()
    assert again == snapshot


def test_chunk_intervals(migrated_url: str) -> None:
    with psycopg.connect(migrated_url) as conn:
        rows = dict(conn.execute(
            "SELECT hypertable_name, time_interval FROM timescaledb_information.dimensions "
            "WHERE hypertable_schema = 'coinpulse'").fetchall())
    assert str(rows["price_ticks"]) == "1 day, 0:00:00"
    assert str(rows["market_snapshots"]) == "1 day, 0:00:00"
    assert str(rows["asset_snapshots"]) == "7 days, 0:00:00"


def test_roles_and_grants(migrated_url: str) -> None:
    with psycopg.connect(migrated_url) as conn:
        cfg = dict(conn.execute(
            "SELECT r.rolname, s.setconfig FROM pg_roles r LEFT JOIN pg_db_role_setting s ON s.setrole = r.oid "
            "WHERE r.rolname IN ('coinpulse_writer', 'coinpulse_reader')").fetchall())
        assert set(cfg) == {"coinpulse_writer", "coinpulse_reader"}
        assert cfg["coinpulse_reader"] == ["search_path=coinpulse, public"]
        grants = conn.execute(
            "SELECT has_table_privilege('coinpulse_reader', 'coinpulse.price_ticks', 'SELECT'),"
            " has_table_privilege('coinpulse_reader', 'coinpulse.price_ticks', 'INSERT'),"
            " has_table_privilege('coinpulse_writer', 'coinpulse.price_ticks', 'INSERT'),"
            " has_table_privilege('coinpulse_writer', 'coinpulse.assets', 'UPDATE')").fetchone()
    assert grants == (True, False, True, True)


def test_constraints_reject_bad_ticks(db: psycopg.Connection[tuple[object, ...]]) -> None:
    for price, source in (("0", "ws"), ("-1", "ws"), ("NaN", "ws"), ("Infinity", "ws"), ("1", "bogus")):
        with pytest.raises(psycopg.errors.CheckViolation):
            db.execute("INSERT INTO coinpulse.price_ticks VALUES (now(), 'bitcoin', %s::float8, %s)", (price, source))


def test_unreachable_database_is_one_clear_line() -> None:
    with pytest.raises(DatabaseError) as err:
        migrate("postgresql://nobody:secret@127.0.0.1:1/none")
    msg = str(err.value)
    assert "cannot connect" in msg and "COINPULSE_DATABASE_URL" in msg and "secret" not in msg
    assert "\n" not in msg


def test_missing_extension_is_one_clear_line(pg_server: object) -> None:
    """A server without the extension: simulated by a database where it cannot be preloaded is not possible
    on one cluster, so check the decision function on the facts a plain PostgreSQL reports."""
    from collector.db.connect import ServerInfo, require_timescaledb

    with pytest.raises(ExtensionMissing, match="no timescaledb extension"):
        require_timescaledb(ServerInfo("15.8", None, None, False, None))
    with pytest.raises(ExtensionMissing, match="shared_preload_libraries"):
        require_timescaledb(ServerInfo("15.8", "2.28.3", None, False, None))


def test_the_apache_edition_is_refused_with_what_to_do() -> None:
    info = ServerInfo(server_version="15.20", timescaledb_available="2.28.3", timescaledb_installed="2.28.3",
                      preloaded=True, license="apache")
    with pytest.raises(ExtensionMissing, match=r"need the full edition: set timescaledb\.license = 'timescale'"):
        require_full_edition(info)
    require_full_edition(ServerInfo("15.20", "2.28.3", "2.28.3", True, "timescale"))
