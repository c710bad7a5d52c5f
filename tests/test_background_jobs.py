"""TimescaleDB's own scheduler, not a test, runs a CoinPulse policy: the run does its work and is recorded a success.

Every other test runs policies in the foreground (CALL run_job) or pauses them. Users depend on the background
path, so this is where a server whose job runner is broken shows up: TimescaleDB 2.28.3 on PostgreSQL 15.20 or
17.12 commits each run's work and then records the run as failed (README "Known problem: policy runs recorded as
failed"); that case is reported as an expected failure naming the server, anything else as a failure.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import psycopg
import pytest
from psycopg import sql

from collector.db.migrate import migrate
from collector.doctor import PORTAL_ERROR
from conftest import materialization_table, pause_policies
from pgserver import Server

Conn = psycopg.Connection[tuple[object, ...]]


def free_scheduler_slots(server: Server, keep: str) -> None:
    """Stop the TimescaleDB schedulers of the session's other test databases (none of their tests uses the
    scheduler: they pause their policies), so that this database gets one within timescaledb.max_background_workers.
    """
    assert server.admin_url is not None
    with psycopg.connect(server.admin_url, autocommit=True) as admin:
        names = [str(r[0]) for r in admin.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE 'coinpulse\\_t%%' AND datname <> %s", (keep,))]
    for name in names:
        with psycopg.connect(server.url(name), autocommit=True) as conn:
            if conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'").fetchone():
                conn.execute("SELECT _timescaledb_functions.stop_background_workers()")


def wait_for(conn: Conn, query: str, params: tuple[object, ...], seconds: float) -> tuple[object, ...] | None:
    deadline = time.monotonic() + seconds
    while True:
        row = conn.execute(query, params).fetchone()
        if row is not None or time.monotonic() > deadline:
            return row
        time.sleep(0.5)


@pytest.mark.full_edition
def test_the_scheduler_runs_the_candles_1m_refresh_policy(make_database: Callable[[], str],
                                                          pg_server: Server) -> None:
    url = make_database()
    migrate(url)
    with psycopg.connect(url, autocommit=True) as conn:
        dbname = conn.info.dbname
        pause_policies(conn)  # only the refresh under test is scheduled again below
        conn.execute("INSERT INTO coinpulse.price_ticks VALUES (now() - interval '10 minutes', 'bitcoin', 100, 'demo'),"
                     " (now() - interval '5 minutes', 'bitcoin', 101, 'demo')")
        job_row = conn.execute(
            "SELECT job_id FROM timescaledb_information.jobs WHERE proc_name = 'policy_refresh_continuous_aggregate' "
            "AND hypertable_schema = 'coinpulse' AND hypertable_name = 'candles_1m'").fetchone()
        assert job_row is not None
        job_id = int(str(job_row[0]))
        materialized = sql.SQL("SELECT count(*) FROM {} WHERE asset_id = 'bitcoin'").format(
            materialization_table(conn, "candles_1m"))
        assert conn.execute(materialized).fetchone() == (0,)  # so far the two minutes are real-time only

        free_scheduler_slots(pg_server, keep=dbname)
        conn.execute("SELECT _timescaledb_functions.restart_background_workers()")
        scheduler = wait_for(conn, "SELECT 1 FROM pg_stat_activity WHERE datname = current_database() "
                                   "AND backend_type = 'TimescaleDB Background Worker Scheduler'", (), 60)
        assert scheduler is not None, "no TimescaleDB scheduler started for the test database within 60 s"
        # Finished runs (total_runs counts a run from its start); the scheduler may have run the job at migrate.
        before = conn.execute("SELECT coalesce(max(total_successes + total_failures), 0) "
                              "FROM timescaledb_information.job_stats WHERE job_id = %s", (job_id,)).fetchone()
        assert before is not None
        conn.execute("SELECT alter_job(%s, scheduled => true, next_start => now())", (job_id,))

        stats = wait_for(conn, "SELECT last_run_status FROM timescaledb_information.job_stats "
                               "WHERE job_id = %s AND total_successes + total_failures > %s", (job_id, before[0]), 90)
        assert stats is not None, f"the scheduler did not finish a run of job {job_id} within 90 s"
        conn.execute("SELECT alter_job(%s, scheduled => false)", (job_id,))

        # The work: both ticks' minutes are materialized.
        assert conn.execute(materialized).fetchone() == (2,)
        status = str(stats[0])
        if status == "Failed":
            error_row = conn.execute("SELECT err_message FROM timescaledb_information.job_errors WHERE job_id = %s "
                                     "ORDER BY finish_time DESC LIMIT 1", (job_id,)).fetchone()
            error = "" if error_row is None else str(error_row[0])
            if PORTAL_ERROR in error:
                pytest.xfail(f"TimescaleDB {pg_server.version} on PostgreSQL {pg_server.postgres}: the run's work was "
                             f"committed, but it was recorded failed ({error}): README \"Known problem: policy runs "
                             "recorded as failed\"")
            pytest.fail(f"the background run of job {job_id} failed: {error}")
        assert status == "Success", stats
