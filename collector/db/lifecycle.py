"""Lifecycle of the raw hypertables: columnstore (compression) after an age, retention after another.

Migration 0002 sets the defaults (columnstore after 7 days, retention 90 days); ``apply_lifecycle`` sets the
configured ages (COINPULSE_COLUMNSTORE_AFTER_DAYS, COINPULSE_RETENTION_DAYS) by replacing a policy only where
it differs, so running it again changes nothing. The rollups are never subject to retention.

The retention rule: raw rows must be kept at least ``RETENTION_MARGIN`` longer than the largest
``start_offset`` of any refresh policy that reads a raw hypertable. A refresh policy recomputes the buckets of
[now - start_offset, now - end_offset) from raw rows; with the rule, a row has left every refresh window
(a day before) it can be dropped, so a refresh never recomputes a bucket whose raw rows are gone (which would
erase its candles), and every row is materialized before it goes, provided the refresh jobs succeed
(`coinpulse doctor` reports failing jobs and rollup lag).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta

import psycopg

from collector.errors import ConfigError

__all__ = ["RAW_TABLES", "RETENTION_MARGIN", "RefreshWindow", "apply_lifecycle", "check_retention",
           "minimum_retention", "raw_refresh_windows"]

log = logging.getLogger(__name__)

RAW_TABLES: tuple[str, ...] = ("price_ticks", "asset_snapshots", "exchange_snapshots", "market_snapshots",
                               "rate_snapshots")
RETENTION_MARGIN = timedelta(days=1)


@dataclass(frozen=True, slots=True)
class RefreshWindow:
    rollup: str
    source: str  # the raw hypertable it reads
    start_offset: timedelta | None  # None: the policy refreshes from the beginning of time


_RAW_WINDOWS = """
SELECT ca.view_name, ca.hypertable_name, (j.config ->> 'start_offset')::interval
FROM timescaledb_information.continuous_aggregates ca
JOIN timescaledb_information.jobs j
  ON j.hypertable_schema = ca.view_schema AND j.hypertable_name = ca.view_name
 AND j.proc_name = 'policy_refresh_continuous_aggregate'
WHERE ca.view_schema = 'coinpulse' AND ca.hypertable_schema = 'coinpulse'
ORDER BY ca.view_name
"""

_POLICY = """
SELECT job_id, (config ->> %s)::interval
FROM timescaledb_information.jobs
WHERE proc_name = %s AND hypertable_schema = 'coinpulse' AND hypertable_name = %s
"""


def raw_refresh_windows(conn: psycopg.Connection[tuple[object, ...]]) -> list[RefreshWindow]:
    """Refresh policies of the rollups that read raw hypertables directly, as the database has them."""
    rows = conn.execute(_RAW_WINDOWS).fetchall()
    return [RefreshWindow(str(r[0]), str(r[1]), r[2] if isinstance(r[2], timedelta) else None) for r in rows]


def minimum_retention(windows: list[RefreshWindow]) -> timedelta | None:
    """The shortest retention the rule allows; None if some policy refreshes from the beginning of time."""
    longest = timedelta(0)
    for window in windows:
        if window.start_offset is None:
            return None
        longest = max(longest, window.start_offset)
    return longest + RETENTION_MARGIN


def check_retention(conn: psycopg.Connection[tuple[object, ...]], retention: timedelta | None) -> None:
    """Raise ConfigError (one line) if ``retention`` (None = keep forever) breaks the retention rule."""
    if retention is None:
        return
    windows = raw_refresh_windows(conn)
    minimum = minimum_retention(windows)
    if minimum is not None and retention >= minimum:
        return
    widest = max(windows, key=lambda w: w.start_offset or timedelta.max)
    reach = "the beginning of time" if widest.start_offset is None else _days(widest.start_offset)
    need = "cannot be used (set COINPULSE_RETENTION_DAYS=0)" if minimum is None else f"must be >= {_days(minimum)}"
    raise ConfigError(
        f"COINPULSE_RETENTION_DAYS={retention.days} is too short: the refresh policy of coinpulse.{widest.rollup} "
        f"recomputes from coinpulse.{widest.source} rows up to {reach} old, so retention {need} "
        f"(its start_offset + {_days(RETENTION_MARGIN)} margin) or raw rows would be dropped before they are "
        "materialized"
    )


def apply_lifecycle(conn: psycopg.Connection[tuple[object, ...]], *, retention_days: int,
                    columnstore_after_days: int) -> list[str]:
    """Set columnstore and retention policies on every raw hypertable; return one line per change.

    ``retention_days`` 0 keeps raw rows forever. Raises ConfigError, changing nothing, if the retention rule
    would be broken. Idempotent: policies that already match are left alone.
    """
    if retention_days < 0 or columnstore_after_days < 1:
        raise ConfigError("COINPULSE_RETENTION_DAYS must be >= 0 and COINPULSE_COLUMNSTORE_AFTER_DAYS >= 1")
    retention = timedelta(days=retention_days) if retention_days else None
    columnstore_after = timedelta(days=columnstore_after_days)
    changes: list[str] = []
    with conn.transaction():
        check_retention(conn, retention)
        for table in RAW_TABLES:
            regclass = f"coinpulse.{table}"
            current = _policy(conn, "policy_compression", "compress_after", table)
            if current != columnstore_after:
                conn.execute("CALL remove_columnstore_policy(%s::regclass, if_exists => true)", (regclass,))
                conn.execute("CALL add_columnstore_policy(%s::regclass, after => %s::interval)",
                             (regclass, columnstore_after))
                changes.append(f"columnstore {regclass}: {_days(current)} -> {_days(columnstore_after)}")
            current = _policy(conn, "policy_retention", "drop_after", table)
            if current != retention:
                conn.execute("SELECT remove_retention_policy(%s::regclass, if_exists => true)", (regclass,))
                if retention is not None:
                    conn.execute("SELECT add_retention_policy(%s::regclass, drop_after => %s::interval)",
                                 (regclass, retention))
                changes.append(f"retention {regclass}: {_days(current)} -> {_days(retention)}")
    for line in changes:
        log.info("lifecycle %s", line)
    return changes


def _policy(conn: psycopg.Connection[tuple[object, ...]], proc: str, key: str, table: str) -> timedelta | None:
    rows = conn.execute(_POLICY, (key, proc, table)).fetchall()
    if not rows:
        return None
    value = rows[0][1]
    return value if isinstance(value, timedelta) else None


def _days(value: timedelta | None) -> str:
    if value is None:
        return "none"
    if value % timedelta(days=1) == timedelta(0):
        n = value.days
        return f"{n} day" if n == 1 else f"{n} days"
    return str(value)
