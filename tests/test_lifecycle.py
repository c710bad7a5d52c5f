"""Columnstore and retention of the raw hypertables, the retention rule, and that candles outlive raw rows."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta

import psycopg
import pytest

from collector.db.lifecycle import RAW_TABLES, apply_lifecycle, check_retention, raw_refresh_windows
from collector.db.migrate import migrate
from collector.db.rollups import align_down, refresh_window
from collector.errors import ConfigError
from collector.settings import load_settings
from conftest import pause_policies
from test_rollups import (
    Conn,
    assert_candles_equal_raw,
    insert_ticks,
    run_job,
    server_now,
    stored_candles,
)

pytestmark = pytest.mark.full_edition

SEGMENTBY = {"price_ticks": "asset_id", "asset_snapshots": "asset_id", "exchange_snapshots": "exchange_id",
             "market_snapshots": "exchange_id", "rate_snapshots": "rate_id"}


@pytest.fixture
def fresh(make_database: Callable[[], str]) -> Iterator[Conn]:
    url = make_database()
    migrate(url)
    with psycopg.connect(url, autocommit=True) as conn:
        pause_policies(conn)
        yield conn


def policies(conn: Conn, proc: str, key: str) -> dict[str, timedelta]:
    rows = conn.execute(
        "SELECT hypertable_name, (config ->> %s)::interval FROM timescaledb_information.jobs "
        "WHERE proc_name = %s AND hypertable_schema = 'coinpulse'", (key, proc)).fetchall()
    return {str(r[0]): r[1] for r in rows}  # type: ignore[misc]


def test_defaults_columnstore_segmented_and_retention(fresh: Conn) -> None:
    settings = dict(fresh.execute(
        "SELECT hypertable::text, segmentby FROM timescaledb_information.hypertable_columnstore_settings "
        "WHERE hypertable::text LIKE 'coinpulse.%'").fetchall())
    assert settings == {f"coinpulse.{t}": s for t, s in SEGMENTBY.items()}
    assert policies(fresh, "policy_compression", "compress_after") == dict.fromkeys(RAW_TABLES, timedelta(days=7))
    assert policies(fresh, "policy_retention", "drop_after") == dict.fromkeys(RAW_TABLES, timedelta(days=90))
    defaults = load_settings({})
    assert (defaults.retention_days, defaults.columnstore_after_days) == (90, 7)
    assert apply_lifecycle(fresh, retention_days=90, columnstore_after_days=7) == []  # defaults == migration


def test_apply_lifecycle_sets_ages_idempotently(fresh: Conn) -> None:
    changes = apply_lifecycle(fresh, retention_days=30, columnstore_after_days=3)
    assert len(changes) == 2 * len(RAW_TABLES)
    assert "retention coinpulse.price_ticks: 90 days -> 30 days" in changes
    assert policies(fresh, "policy_compression", "compress_after") == dict.fromkeys(RAW_TABLES, timedelta(days=3))
    assert policies(fresh, "policy_retention", "drop_after") == dict.fromkeys(RAW_TABLES, timedelta(days=30))
    assert apply_lifecycle(fresh, retention_days=30, columnstore_after_days=3) == []
    assert len(apply_lifecycle(fresh, retention_days=0, columnstore_after_days=3)) == len(RAW_TABLES)
    assert policies(fresh, "policy_retention", "drop_after") == {}
    settings = load_settings({"COINPULSE_RETENTION_DAYS": "30", "COINPULSE_COLUMNSTORE_AFTER_DAYS": "3"})
    assert (settings.retention_days, settings.columnstore_after_days) == (30, 3)


def test_retention_rule_refuses_retention_within_a_refresh_window(fresh: Conn) -> None:
    windows = {w.rollup: w.start_offset for w in raw_refresh_windows(fresh)}
    assert windows == {"candles_1m": timedelta(hours=2), "asset_volume_1h": timedelta(days=1),
                       "exchange_volume_1h": timedelta(days=1)}
    with pytest.raises(ConfigError) as err:
        apply_lifecycle(fresh, retention_days=1, columnstore_after_days=7)
    message = str(err.value)
    assert "\n" not in message and "COINPULSE_RETENTION_DAYS=1" in message and ">= 2 days" in message
    assert policies(fresh, "policy_retention", "drop_after") == dict.fromkeys(RAW_TABLES, timedelta(days=90))
    apply_lifecycle(fresh, retention_days=2, columnstore_after_days=7)  # largest start_offset (1 day) + 1 day

    # The rule follows the policies as the database has them.
    fresh.execute("SELECT remove_continuous_aggregate_policy('coinpulse.candles_1m')")
    fresh.execute("SELECT add_continuous_aggregate_policy('coinpulse.candles_1m', start_offset => INTERVAL '10 days',"
                  " end_offset => INTERVAL '1 minute', schedule_interval => INTERVAL '1 minute')")
    with pytest.raises(ConfigError, match=r"candles_1m.*>= 11 days"):
        check_retention(fresh, timedelta(days=10))
    check_retention(fresh, timedelta(days=11))
    check_retention(fresh, None)  # keeping raw rows forever is always fine


def test_retention_drops_old_raw_rows_and_keeps_candles(fresh: Conn) -> None:
    now = server_now(fresh)
    old_day = align_down(now - timedelta(days=100), timedelta(days=1))
    old = [(old_day + timedelta(minutes=m), a, 10.0 + (m * 7) % 11) for m in range(0, 2880, 5)
           for a in ("bitcoin", "ethereum")]
    recent = [(now - timedelta(days=3, minutes=m), "bitcoin", 5.0 + m % 4) for m in range(0, 600, 5)]
    insert_ticks(fresh, old + recent)
    refresh_window(fresh, old_day, now)
    assert_candles_equal_raw(fresh, old + recent)
    before = {view: stored_candles(fresh, view) for view in ("candles_1m", "candles_1h", "candles_1d")}

    run_job(fresh, "policy_retention", "price_ticks")
    left = fresh.execute("SELECT min(time), count(*) FROM coinpulse.price_ticks").fetchone()
    assert left is not None and left[1] == len(recent) and left[0] >= now - timedelta(days=90)
    for view in ("candles_1m", "candles_1h", "candles_1d"):  # the policies keep refreshing: candles stay
        run_job(fresh, "policy_refresh_continuous_aggregate", view)
    assert {view: stored_candles(fresh, view) for view in before} == before

    # Why the rule: recomputing a bucket whose raw rows are gone erases it. Retention within a refresh
    # window would let the policy do exactly that.
    fresh.execute("CALL refresh_continuous_aggregate('coinpulse.candles_1m', %s::timestamptz, %s::timestamptz, "
                  "force => true)", (old_day, old_day + timedelta(days=1)))
    assert len(stored_candles(fresh, "candles_1m")) < len(before["candles_1m"])


def test_columnstore_compresses_old_chunks_and_late_rows_still_count(fresh: Conn) -> None:
    now = server_now(fresh)
    day = align_down(now - timedelta(days=12), timedelta(days=1))
    ticks = [(day + timedelta(minutes=m, seconds=s), "bitcoin", 1.0 + (m + s) % 9) for m in range(1440)
             for s in (0, 30)]
    insert_ticks(fresh, ticks)
    refresh_window(fresh, day, day + timedelta(days=1))
    run_job(fresh, "policy_compression", "price_ticks")
    compressed = fresh.execute(
        "SELECT count(*) FILTER (WHERE is_compressed) FROM timescaledb_information.chunks "
        "WHERE hypertable_name = 'price_ticks'").fetchone()
    assert compressed is not None and int(str(compressed[0])) >= 1
    assert_candles_equal_raw(fresh, ticks)
    late = [(day + timedelta(hours=3, seconds=15), "bitcoin", 123.0), (day + timedelta(hours=9), "solana", 2.0)]
    insert_ticks(fresh, late, source="history")  # into a compressed chunk
    refresh_window(fresh, day + timedelta(hours=3), day + timedelta(hours=9, seconds=1))
    assert_candles_equal_raw(fresh, ticks + late)
