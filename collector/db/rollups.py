"""The continuous aggregates ("rollups"): their SQL files, and refreshing a window after late data.

Every rollup is defined by one file in ``continuous_aggregates/`` that an alembic migration executes. A
migration records the sha256 of each file it runs and refuses to run if a file differs (``checked_sql``):
a database that applied the old text would never see the edit, so a change to a rollup is a new file run
by a new migration.

``refresh_window`` is what the gap backfill and the spool drain call after writing rows into a time range
that the rollups may already have materialized. Real-time aggregation shows recent, not yet materialized
data anyway; late rows inside an already materialized range only show after such a refresh.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import psycopg

from collector.db.resources import continuous_aggregates_dir
from collector.errors import DatabaseError

__all__ = ["ROLLUPS", "Rollup", "align_down", "align_up", "checked_sql", "file_sha256", "refresh_window",
           "verify_sql_files"]

log = logging.getLogger(__name__)

# time_bucket's default origin for sub-month widths (a Monday, midnight UTC).
_ORIGIN = datetime(2000, 1, 3, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Rollup:
    name: str  # view name in schema coinpulse
    source: str  # the hypertable or rollup it reads, in schema coinpulse
    bucket: timedelta


# Hierarchical order: every rollup after the one it reads. tests/test_rollups.py checks this against the
# database, so a migration that adds a rollup must add it here too.
ROLLUPS: tuple[Rollup, ...] = (
    Rollup("candles_1m", "price_ticks", timedelta(minutes=1)),
    Rollup("candles_1h", "candles_1m", timedelta(hours=1)),
    Rollup("candles_1d", "candles_1h", timedelta(days=1)),
    Rollup("asset_volume_1h", "asset_snapshots", timedelta(hours=1)),
    Rollup("asset_volume_1d", "asset_volume_1h", timedelta(days=1)),
    Rollup("exchange_volume_1h", "exchange_snapshots", timedelta(hours=1)),
)
# Every window is widened to whole buckets of the widest level, so each level refreshes all the buckets the
# level above it reads. Unchanged buckets cost nothing: a refresh only recomputes invalidated ranges.
_WIDEST = max(r.bucket for r in ROLLUPS)


def file_sha256(name: str) -> str:
    """sha256 (hex) of ``continuous_aggregates/<name>`` as stored on disk."""
    return hashlib.sha256((continuous_aggregates_dir() / name).read_bytes()).hexdigest()


def verify_sql_files(files: Mapping[str, str], revision: str) -> None:
    """Raise DatabaseError unless every file has the sha256 that migration ``revision`` recorded."""
    for name, expected in files.items():
        try:
            actual = file_sha256(name)
        except FileNotFoundError:
            raise DatabaseError(
                f"continuous_aggregates/{name}, run by migration {revision}, is missing: restore it "
                "(to change or drop a rollup, make a new migration)"
            ) from None
        if actual != expected:
            raise DatabaseError(
                f"continuous_aggregates/{name} has changed since migration {revision} recorded it "
                f"(sha256 {actual[:12]}, recorded {expected[:12]}): restore it and make a new migration "
                "with a new file for the change"
            )


def checked_sql(name: str, expected_sha256: str, revision: str) -> str:
    """The text of ``continuous_aggregates/<name>``, after checking it against the recorded sha256."""
    verify_sql_files({name: expected_sha256}, revision)
    return (continuous_aggregates_dir() / name).read_text(encoding="utf-8")


def align_down(moment: datetime, width: timedelta) -> datetime:
    """Start of the time_bucket(width, moment) bucket (default origin)."""
    return _ORIGIN + ((moment - _ORIGIN) // width) * width


def align_up(moment: datetime, width: timedelta) -> datetime:
    """The smallest bucket boundary >= moment."""
    down = align_down(moment, width)
    return down if down == moment else down + width


_NOW_BUCKET = "SELECT time_bucket(%s::interval, now())"
# A refresh policy running over an overlapping window makes refresh_continuous_aggregate fail at once
# (LockNotAvailable) rather than wait; policy runs are short, so wait and try again.
RETRY_DELAYS: tuple[float, ...] = (0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
# buckets_per_batch 0: one atomic pass. TimescaleDB 2.28's incremental refresh skips a bucket when an
# invalidation ends exactly on its start (timescale/timescaledb#10221, fixed in 2.29.0); options needs >= 2.28.
_REFRESH = ("CALL refresh_continuous_aggregate(%s::regclass, %s::timestamptz, %s::timestamptz, "
            "options => '{\"buckets_per_batch\": 0}'::jsonb)")


def refresh_window(conn: psycopg.Connection[tuple[object, ...]], start: datetime, end: datetime, *,
                   sleep: Callable[[float], None] = time.sleep) -> None:
    """Re-materialize every rollup over the buckets that intersect [start, end), in hierarchical order.

    Call it after writing rows with times in [start, end) into price_ticks or the snapshot tables (history
    import, spool drain). ``conn`` must be in autocommit mode (refresh_continuous_aggregate cannot run in a
    transaction) and connected as the rollups' owner or a member of ``coinpulse_rollup_owner`` (the
    ``coinpulse_writer`` role is one). The open bucket of each level is left to real-time aggregation:
    materializing it would hide rows that arrive in it later until the next refresh. While a refresh
    policy is refreshing an overlapping window, it waits and retries (``RETRY_DELAYS``, about 16 s in all).
    """
    if start.tzinfo is None or end.tzinfo is None:
        raise ValueError("refresh_window needs timezone-aware datetimes")
    if not conn.autocommit:
        raise ValueError("refresh_window needs an autocommit connection: "
                         "refresh_continuous_aggregate cannot run inside a transaction")
    if end <= start:
        return
    lo, hi = align_down(start, _WIDEST), align_up(end, _WIDEST)
    for rollup in ROLLUPS:
        row = conn.execute(_NOW_BUCKET, (rollup.bucket,)).fetchone()
        assert row is not None and isinstance(row[0], datetime)
        upper = min(hi, row[0])
        if upper <= lo:
            continue
        log.info("refresh rollup=%s start=%s end=%s", rollup.name, lo.isoformat(), upper.isoformat())
        _refresh(conn, rollup.name, lo, upper, sleep)


def _refresh(conn: psycopg.Connection[tuple[object, ...]], name: str, lo: datetime, hi: datetime,
             sleep: Callable[[float], None]) -> None:
    for delay in (*RETRY_DELAYS, None):
        try:
            conn.execute(_REFRESH, (f"coinpulse.{name}", lo, hi))
            return
        except psycopg.errors.InsufficientPrivilege as exc:
            raise DatabaseError(
                f"cannot refresh coinpulse.{name}: {_first_line(exc)} (connect as a member of "
                "coinpulse_rollup_owner, e.g. coinpulse_writer, or as the role that ran `coinpulse migrate`)"
            ) from None
        except psycopg.errors.LockNotAvailable as exc:
            if delay is None:
                raise DatabaseError(f"cannot refresh coinpulse.{name}: {_first_line(exc)} (gave up after "
                                    f"{sum(RETRY_DELAYS):.0f} s)") from None
            log.info("refresh rollup=%s busy, retry in %.2fs: %s", name, delay, _first_line(exc))
            sleep(delay)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
