"""History on demand: CoinCap ``/assets/{id}/history`` for an asset and a time range into ``price_ticks``.

``import_history`` fetches a range in chunks, at the finest interval CoinCap allows for the age of each
part of the range (``HistoryTiers``), writes the points as ``history`` ticks through the writer (binary COPY,
idempotent on (asset_id, time): a repeated import stores nothing twice), refreshes the rollup windows it
touched (``refresh_window``), logs the import in ``history_imports`` and reports progress via a callback.

``missing_history`` says which ranges lie before what is stored for an asset (its earliest candle, or the
start of an earlier import that found nothing older), which is what portfolios ask for.

CoinCap documents neither the largest ``start``..``end`` span per interval nor the number of points per
answer (../shared/coincap-v3.md, section 5), nor how far back each interval reaches. Both are settings:
``COINPULSE_HISTORY_INTERVALS`` (e.g. ``m1:1d,m5:7d,h1:90d,d1``: points younger than 1 day at m1, younger
than 7 days at m5, ...; the last entry, without an age, for anything older) and
``COINPULSE_HISTORY_POINTS_PER_REQUEST`` (each request spans at most that many intervals). When an answer
stops short of its chunk's end, the rest of the chunk is asked for again from the last point on, so a
server-side cap on points loses nothing.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

import psycopg

from collector.coincap.models import ParseResult, Record, Tick
from collector.db.rollups import refresh_window

__all__ = [
    "DEFAULT_TIERS",
    "INTERVAL_STEP",
    "Chunk",
    "HistoryProgress",
    "HistoryResult",
    "HistorySink",
    "HistorySource",
    "HistoryTiers",
    "Missing",
    "import_history",
    "missing_history",
    "plan_chunks",
    "stored_since",
]

log = logging.getLogger(__name__)

INTERVAL_STEP: dict[str, timedelta] = {
    "m1": timedelta(minutes=1), "m5": timedelta(minutes=5), "m15": timedelta(minutes=15),
    "m30": timedelta(minutes=30), "h1": timedelta(hours=1), "h2": timedelta(hours=2), "h6": timedelta(hours=6),
    "h12": timedelta(hours=12), "d1": timedelta(days=1),
}
DEFAULT_TIERS = "m1:1d,m5:7d,h1:90d,d1"
DEFAULT_POINTS_PER_REQUEST = 500
_ONE_MS = timedelta(milliseconds=1)


def _last_ms_before(moment: datetime) -> datetime:
    """The last whole millisecond before ``moment``: the inclusive ``end`` (in ms) of a request for [.., moment).
    ``moment - 1 ms`` would be one millisecond short when ``moment`` has a fraction of one (a gap's end is the
    instant a collector started): CoinCap's point at ``floor(moment)`` ms lies inside the range."""
    floored = moment - timedelta(microseconds=moment.microsecond % 1000)
    return floored - _ONE_MS if floored == moment else floored


_AGE = re.compile(r"^(\d+)([mhd])$")
_AGE_UNIT = {"m": timedelta(minutes=1), "h": timedelta(hours=1), "d": timedelta(days=1)}


@dataclass(frozen=True, slots=True)
class HistoryTiers:
    """Which interval to ask for, by age: ``tiers[i] = (max_age, interval)``, finest first; the last has
    ``max_age`` None and covers everything older."""

    tiers: tuple[tuple[timedelta | None, str], ...]

    @classmethod
    def parse(cls, text: str) -> HistoryTiers:
        """``m1:1d,m5:7d,h1:90d,d1`` -> tiers; ValueError saying what is wrong."""
        items = [part.strip() for part in text.split(",") if part.strip()]
        if not items:
            raise ValueError("needs at least one interval, e.g. d1")
        tiers: list[tuple[timedelta | None, str]] = []
        for index, item in enumerate(items):
            interval, _, age_text = item.partition(":")
            interval = interval.strip()
            if interval not in INTERVAL_STEP:
                raise ValueError(f"{interval!r} is not a CoinCap interval ({', '.join(INTERVAL_STEP)})")
            last = index == len(items) - 1
            if last and age_text:
                raise ValueError(f"the last entry ({item}) must have no age: it covers everything older")
            if not last:
                match = _AGE.match(age_text.strip())
                if not match:
                    raise ValueError(f"{item!r}: give the age as INTERVAL:AGE with AGE like 90m, 12h or 7d")
                age = int(match.group(1)) * _AGE_UNIT[match.group(2)]
                if age <= timedelta(0) or (tiers and age <= (tiers[-1][0] or timedelta(0))):
                    raise ValueError(f"{item!r}: ages must grow from one entry to the next")
                tiers.append((age, interval))
            else:
                tiers.append((None, interval))
        steps = [INTERVAL_STEP[interval] for _, interval in tiers]
        if steps != sorted(steps):
            raise ValueError("intervals must go from finer to coarser")
        return cls(tuple(tiers))

    def interval_at(self, moment: datetime, now: datetime) -> str:
        """The interval for a point at ``moment``."""
        age = now - moment
        for max_age, interval in self.tiers:
            if max_age is None or age <= max_age:
                return interval
        raise AssertionError("the last tier has no age")  # pragma: no cover


@dataclass(frozen=True, slots=True)
class Chunk:
    """One request: points at ``interval`` with times in [start, end)."""

    interval: str
    start: datetime
    end: datetime


def plan_chunks(start: datetime, end: datetime, now: datetime, tiers: HistoryTiers,
                points_per_request: int) -> list[Chunk]:
    """Split [start, end) by age into tiers, and each part into requests of at most ``points_per_request``
    intervals, oldest first."""
    if points_per_request < 1:
        raise ValueError("points_per_request must be at least 1")
    chunks: list[Chunk] = []
    upper = end
    # Walk from the newest part (finest interval) to the oldest, then reverse.
    for max_age, interval in tiers.tiers:
        lower = start if max_age is None else max(start, now - max_age)
        if lower < upper:
            span = INTERVAL_STEP[interval] * points_per_request
            part: list[Chunk] = []
            cursor = lower
            while cursor < upper:
                part.append(Chunk(interval, cursor, min(cursor + span, upper)))
                cursor += span
            chunks[:0] = part
            upper = lower
        if upper <= start:
            break
    return chunks


class HistorySource(Protocol):
    """What ``import_history`` needs of the REST client (``CoinCapRest`` is one)."""

    def history(self, asset_id: str, interval: str, start: datetime, end: datetime) -> ParseResult[Tick]: ...


class HistorySink(Protocol):
    """What ``import_history`` needs of the writer (``BatchWriter`` is one): commit a batch, rows per table."""

    def write(self, batch: Sequence[Record]) -> dict[str, int]: ...


@dataclass(frozen=True, slots=True)
class HistoryProgress:
    """After each chunk: ``done`` of ``total`` chunks, and the running totals for the asset."""

    asset_id: str
    done: int
    total: int
    interval: str
    start: datetime
    end: datetime
    points: int
    written: int


@dataclass(frozen=True, slots=True)
class HistoryResult:
    asset_id: str
    start: datetime
    end: datetime
    requests: int
    points: int  # valid points received within the range
    written: int  # new rows in price_ticks (the rest were stored already)
    rejected: int  # points the parser refused (counted, not written)
    first: datetime | None  # earliest point received
    last: datetime | None


_LOG_IMPORT = """
INSERT INTO coinpulse.history_imports (asset_id, range_start, range_end, intervals, requests, points, rows_written,
                                       first_point, last_point)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)
"""


def import_history(source: HistorySource, sink: HistorySink, conn: psycopg.Connection[Any], asset_id: str,
                   start: datetime, end: datetime, *, now: datetime, tiers: HistoryTiers,
                   points_per_request: int = DEFAULT_POINTS_PER_REQUEST,
                   on_progress: Callable[[HistoryProgress], None] | None = None) -> HistoryResult:
    """Fetch, write and refresh the history of ``asset_id`` over [start, end) (aware datetimes).

    ``conn`` (autocommit) refreshes the rollups and logs the import; it must be allowed to refresh them
    (``refresh_window``). CoinCap errors (``CoinCapError``) propagate after what was fetched so far is
    written; the rollups are then refreshed over that part only, and nothing is logged.
    """
    if start.tzinfo is None or end.tzinfo is None:
        raise ValueError("import_history needs timezone-aware datetimes")
    end = min(end, now)
    chunks = plan_chunks(start, end, now, tiers, points_per_request) if start < end else []
    requests = points = written = rejected = 0
    first: datetime | None = None
    last: datetime | None = None
    try:
        for number, chunk in enumerate(chunks, 1):
            cursor = chunk.start
            while cursor < chunk.end:
                result = source.history(asset_id, chunk.interval, cursor, _last_ms_before(chunk.end))
                requests += 1
                rejected += len(result.rejects)
                ticks = sorted((t for t in result.records if cursor <= t.time < chunk.end), key=lambda t: t.time)
                if not ticks:
                    break
                written += sink.write(ticks).get("price_ticks", 0)
                points += len(ticks)
                first = ticks[0].time if first is None else min(first, ticks[0].time)
                last = ticks[-1].time if last is None else max(last, ticks[-1].time)
                # An answer that stops short of the chunk's end may have been capped: ask for the rest.
                if ticks[-1].time + INTERVAL_STEP[chunk.interval] >= chunk.end:
                    break
                cursor = ticks[-1].time + _ONE_MS
            if on_progress is not None:
                on_progress(HistoryProgress(asset_id, number, len(chunks), chunk.interval, chunk.start, chunk.end,
                                            points, written))
    finally:
        if first is not None and last is not None and written:
            refresh_window(conn, first, last + _ONE_MS)
    if chunks:
        intervals = ",".join(dict.fromkeys(c.interval for c in chunks))
        conn.execute(_LOG_IMPORT, (asset_id, start, end, intervals, requests, points, written, first, last))
    log.info("history imported asset=%s start=%s end=%s requests=%d points=%d written=%d rejected=%d",
             asset_id, start.isoformat(), end.isoformat(), requests, points, written, rejected)
    return HistoryResult(asset_id, start, end, requests, points, written, rejected, first, last)


# -- what is missing ---------------------------------------------------------------------------------------

_EARLIEST_CANDLE = "SELECT bucket FROM coinpulse.candles_1m WHERE asset_id = %s ORDER BY bucket LIMIT 1"
_EARLIEST_IMPORT = "SELECT min(range_start) FROM coinpulse.history_imports WHERE asset_id = %s"


def stored_since(conn: psycopg.Connection[Any], asset_id: str) -> datetime | None:
    """Where the stored history of ``asset_id`` begins: its earliest candle, or the start of an earlier
    import if that is older (CoinCap may have had nothing that far back); None if nothing is stored."""
    found: list[datetime] = []
    for query in (_EARLIEST_CANDLE, _EARLIEST_IMPORT):
        row = conn.execute(query, (asset_id,)).fetchone()
        if row is not None and isinstance(row[0], datetime):
            found.append(row[0])
    return min(found) if found else None


@dataclass(frozen=True, slots=True)
class Missing:
    """History of ``asset_id`` over [start, end) is not stored and was never imported."""

    asset_id: str
    start: datetime
    end: datetime


def missing_history(conn: psycopg.Connection[Any], wanted: Mapping[str, datetime] | Iterable[tuple[str, datetime]],
                    *, now: datetime, tiers: HistoryTiers) -> list[Missing]:
    """For each (asset, since): the range before the stored history of the asset that ``since`` reaches into.

    A range shorter than one interval at that age is not missing (CoinCap has no point inside it). A missing
    range starts one interval before ``since``, so the last price before ``since`` is fetched too.
    """
    items = wanted.items() if isinstance(wanted, Mapping) else wanted
    out: list[Missing] = []
    for asset_id, since in items:
        since = min(since, now)
        step = INTERVAL_STEP[tiers.interval_at(since, now)]
        stored = stored_since(conn, asset_id)
        upper = now if stored is None else stored
        if upper - since > step:
            out.append(Missing(asset_id, since - step, upper))
    return out
