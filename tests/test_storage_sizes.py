"""Migration 0008: storage sizes measured by a job, read from ``coinpulse.storage_sizes``.

The view gives the stored measurement while it is at most 15 minutes old, else measures now; what it gives
must equal a live measurement taken at the same moment, and the job that keeps it fresh must exist.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import psycopg
import pytest

pytestmark = pytest.mark.full_edition

Conn = psycopg.Connection[Any]
COLUMNS = ["kind", "name", "chunks", "columnstore_chunks", "total_bytes", "columnstore_before_bytes",
           "columnstore_after_bytes", "measured_at"]


def add_ticks(conn: Conn, days_ago: list[int]) -> None:
    conn.execute(
        "INSERT INTO coinpulse.price_ticks (time, asset_id, price_usd, source) "
        "SELECT now() - make_interval(days => d) + make_interval(secs => s), 'bitcoin', 100 + s, 'demo' "
        "FROM unnest(%s::int[]) d, generate_series(0, 99) s", (days_ago,))


def sizes(conn: Conn, source: str) -> list[tuple[Any, ...]]:
    cur = conn.execute(f"SELECT * FROM {source} ORDER BY kind, name")  # source: a fixed name from this module
    return cur.fetchall()


def now(conn: Conn) -> datetime:
    row = conn.execute("SELECT now()").fetchone()
    assert row is not None
    return row[0]  # type: ignore[no-any-return]


def test_the_job_measures_every_five_minutes(db: Conn) -> None:
    rows = db.execute("SELECT schedule_interval FROM timescaledb_information.jobs "
                      "WHERE proc_schema = 'coinpulse' AND proc_name = 'refresh_storage_sizes'").fetchall()
    assert rows == [(timedelta(minutes=5),)]


def test_view_gives_the_stored_measurement_while_fresh_then_measures_now(db: Conn) -> None:
    add_ticks(db, [3, 2])
    with db.transaction():
        db.execute("CALL coinpulse.refresh_storage_sizes()")
        stored_at = now(db)
    with db.transaction():  # one now() for both
        stored = sizes(db, "coinpulse.storage_sizes")
        live = sizes(db, "coinpulse.storage_sizes_now()")
    cols = [c.name for c in db.execute("SELECT * FROM coinpulse.storage_sizes LIMIT 0").description or []]
    assert cols == COLUMNS
    assert [r[:7] for r in stored] == live
    assert {r[7] for r in stored} == {stored_at}
    ticks = next(r for r in stored if r[1] == "price_ticks")
    assert ticks[:4] == ("raw", "price_ticks", 2, 0) and ticks[4] > 0
    assert {(r[0], r[1]) for r in stored} >= {("raw", "price_ticks"), ("rollup", "candles_1m"),
                                               ("rollup", "candles_1d")}

    # A new chunk: the stored measurement (not yet 15 minutes old) does not show it ...
    add_ticks(db, [1])
    again = sizes(db, "coinpulse.storage_sizes")
    assert again == stored
    # ... a measurement older than 15 minutes is not used: the view measures now
    db.execute("UPDATE coinpulse.storage_size_measurements SET measured_at = now() - interval '15 minutes 1 second'")
    with db.transaction():
        fallback = sizes(db, "coinpulse.storage_sizes")
        live = sizes(db, "coinpulse.storage_sizes_now()")
        at = now(db)
    assert [r[:7] for r in fallback] == live and {r[7] for r in fallback} == {at}
    assert next(r for r in fallback if r[1] == "price_ticks")[2] == 3
    # so does an empty table (before the job's first run)
    db.execute("DELETE FROM coinpulse.storage_size_measurements")
    assert next(r for r in sizes(db, "coinpulse.storage_sizes") if r[1] == "price_ticks")[2] == 3


def test_the_job_runs_the_measurement(db: Conn) -> None:
    add_ticks(db, [2])
    job = db.execute("SELECT job_id FROM timescaledb_information.jobs "
                     "WHERE proc_schema = 'coinpulse' AND proc_name = 'refresh_storage_sizes'").fetchone()
    assert job is not None
    db.execute("CALL run_job(%s)", (job[0],))
    row = db.execute("SELECT chunks, measured_at FROM coinpulse.storage_size_measurements "
                     "WHERE kind = 'raw' AND name = 'price_ticks'").fetchone()
    assert row is not None and row[0] == 1 and row[1] <= now(db)


def test_readers_see_both_paths(db: Conn) -> None:
    add_ticks(db, [2])
    for setup in ("CALL coinpulse.refresh_storage_sizes()", "DELETE FROM coinpulse.storage_size_measurements"):
        db.execute(setup)
        with db.transaction():
            db.execute("SET LOCAL ROLE coinpulse_reader")
            db.execute("SET LOCAL transaction_read_only = on")
            got = sizes(db, "coinpulse.storage_sizes")
            assert next(r for r in got if r[1] == "price_ticks")[2] == 1
