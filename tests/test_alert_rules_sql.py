"""The market and pipeline alert rules' SQL, as provisioned (grafana/provisioning/alerting/rules.yaml), expanded
as Grafana does and run as coinpulse_reader on known data: each rule fires for exactly the expected label sets."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import psycopg
import pytest

from alerting_support import evaluate, numbers, schedule_jobs

pytestmark = pytest.mark.full_edition

Conn = psycopg.Connection[Any]


def now_of(conn: Conn) -> datetime:
    return conn.execute("SELECT now()").fetchone()[0]  # type: ignore[index, no-any-return]


def ticks(conn: Conn, rows: list[tuple[str, datetime, float]]) -> None:
    conn.execute("INSERT INTO coinpulse.assets (asset_id, symbol) SELECT DISTINCT a, upper(left(a, 3)) "
                 "FROM unnest(%s::text[]) a ON CONFLICT DO NOTHING", ([r[0] for r in rows],))
    with conn.cursor() as cur:
        cur.executemany("INSERT INTO coinpulse.price_ticks VALUES (%s, %s, %s, 'demo')",
                        [(t, a, p) for a, t, p in rows])


def test_market_move_fires_beyond_the_configured_percentage_either_way(db: Conn) -> None:
    now = now_of(db)
    ticks(db, [("bitcoin", now - timedelta(minutes=55), 60000), ("bitcoin", now - timedelta(minutes=30), 61000),
               ("bitcoin", now - timedelta(minutes=1), 64000),          # +6.67 %: fires
               ("ethereum", now - timedelta(minutes=50), 3000), ("ethereum", now - timedelta(minutes=2), 3030),  # +1 %
               ("solana", now - timedelta(minutes=40), 100), ("solana", now - timedelta(minutes=3), 90),  # -10 %: fires
               ("tether", now - timedelta(minutes=20), 1.0),              # one candle: 0 %
               ("dogecoin", now - timedelta(hours=3), 0.1), ("dogecoin", now - timedelta(minutes=5), 1.0)])
    values = {dict(k)["asset_id"]: v for k, v in numbers(db, "coinpulse-market-move-1h", "A").items()}
    # dogecoin's old tick is outside the hour: its move is measured within the hour only (one candle: 0 %)
    assert values == pytest.approx({"bitcoin": 100 * (64000 / 60000 - 1), "ethereum": 1.0, "solana": -10.0,
                                    "tether": 0.0, "dogecoin": 0.0})
    fired = {dict(k)["asset_id"] for k in evaluate(db, "coinpulse-market-move-1h")}
    assert fired == {"bitcoin", "solana"}
    labels = next(iter(numbers(db, "coinpulse-market-move-1h", "A")))
    assert dict(labels) == {"asset_id": "bitcoin", "symbol": "BIT"}


def test_exchange_volume_collapse(db: Conn) -> None:
    now = now_of(db)
    rows = [("binance", 25, 5e9), ("binance", 0.5, 1e9),      # -80 %: fires
            ("kraken", 25, 1e9), ("kraken", 0.5, 0.9e9),      # -10 %
            ("tinyex", 25, 5e5), ("tinyex", 0.5, 1e4),         # -98 %, but too small to matter
            ("newex", 0.5, 1e9),                               # nothing a day before: no verdict
            ("goneex", 25, 2e9)]                                # nothing recent: no verdict
    with db.cursor() as cur:
        cur.executemany("INSERT INTO coinpulse.exchange_snapshots (time, exchange_id, volume_usd, source) "
                        "VALUES (%s, %s, %s, 'rest')", [(now - timedelta(hours=h), e, v) for e, h, v in rows])
    change = {dict(k)["exchange_id"]: v for k, v in numbers(db, "coinpulse-exchange-volume-collapse", "A").items()}
    assert change == pytest.approx({"binance": -80.0, "kraken": -10.0, "tinyex": -98.0})
    before = {dict(k)["exchange_id"]: v for k, v in numbers(db, "coinpulse-exchange-volume-collapse", "B").items()}
    assert before == pytest.approx({"binance": 5e9, "kraken": 1e9, "tinyex": 5e5})
    assert {dict(k)["exchange_id"] for k in evaluate(db, "coinpulse-exchange-volume-collapse")} == {"binance"}


@pytest.mark.parametrize(("newest_minutes_ago", "fires"), [(15, True), (1, False), (None, True)])
def test_no_ticks(db: Conn, newest_minutes_ago: int | None, fires: bool) -> None:
    now = now_of(db)
    if newest_minutes_ago is not None:
        ticks(db, [("bitcoin", now - timedelta(hours=2), 1),
                   ("bitcoin", now - timedelta(minutes=newest_minutes_ago), 2)])
    (value,) = numbers(db, "coinpulse-no-ticks", "A", now=now).values()
    assert value == pytest.approx(86400 if newest_minutes_ago is None else newest_minutes_ago * 60)
    assert bool(evaluate(db, "coinpulse-no-ticks", now=now)) is fires


def test_open_gaps_older_than_the_limit(db: Conn) -> None:
    now = now_of(db)
    assert numbers(db, "coinpulse-open-gaps", "A", now=now) == {(): 0.0}  # no gaps: 0, never no data
    gaps = [("bitcoin", 45, "done"), ("ethereum", 20, "open"), (None, 10, "filling")]
    with db.cursor() as cur:
        cur.executemany("INSERT INTO coinpulse.ingest_gaps (asset_id, gap_start, gap_end, reason, status, detected_at) "
                        "VALUES (%s, %s, %s, 'watchdog', %s, %s)",
                        [(a, now - timedelta(minutes=m + 5), now - timedelta(minutes=m), s, now - timedelta(minutes=m))
                         for a, m, s in gaps])
    assert numbers(db, "coinpulse-open-gaps", "A", now=now) == {(): pytest.approx(20.0)}
    assert numbers(db, "coinpulse-open-gaps", "B", now=now) == {(): 2.0}
    assert not evaluate(db, "coinpulse-open-gaps", now=now)  # 20 min < 30
    db.execute("UPDATE coinpulse.ingest_gaps SET status = 'failed' WHERE asset_id = 'bitcoin'")  # 45 min, not done
    assert numbers(db, "coinpulse-open-gaps", "A", now=now) == {(): pytest.approx(45.0)}
    assert evaluate(db, "coinpulse-open-gaps", now=now) == {()}


def test_failing_and_overdue_policy_jobs(db: Conn) -> None:
    """Three jobs scheduled (the tests pause them all), with statistics as TimescaleDB's scheduler records them:
    one fine, one whose last run failed, one overdue. All in one transaction that is rolled back, so the
    scheduler never sees (or runs) them."""
    now = now_of(db)
    with db.transaction(force_rollback=True):
        ok, failed, overdue = schedule_jobs(db, now)
        failing = {dict(k)["job_id"]: v for k, v in numbers(db, "coinpulse-job-failing", "A").items()}
        # Only the scheduled jobs: one row each.
        assert failing == {str(ok): 0.0, str(failed): 1.0, str(overdue): 1.0}
        fired = {(dict(k)["job_id"], dict(k)["relation"], dict(k)["job"])
                 for k in evaluate(db, "coinpulse-job-failing")}
        assert fired == {(str(failed), "candles_1m", "policy_refresh_continuous_aggregate"),
                         (str(overdue), "price_ticks", "policy_retention")}
        failures = {dict(k)["job_id"]: v for k, v in numbers(db, "coinpulse-job-failing", "B").items()}
        assert failures == {str(ok): 0.0, str(failed): 3.0, str(overdue): 0.0}
