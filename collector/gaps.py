"""Gaps: intervals without stream data, recorded per asset in ``ingest_gaps`` and backfilled from history.

Where gaps come from:

- **Stream outages** (``GapTracker``, fed by the price stream's callbacks or by REST price polls): an outage
  opens at the last message received before a disconnect (the watchdog tripping on a silent socket, a close,
  an error, a failed poll) and closes at the first message after it; every tracked asset gets a gap ending
  there and starting at its own last tick (bounded: see ``GapTracker``). The first connection after start
  counts too when its first message takes longer than ``first_grace`` (normally the watchdog period).
- **Restarts** (``restart_gaps``): at start, each tracked asset's last stored tick (any source but ``demo``)
  is compared with the start time; the interval between them, or from the end of the asset's latest
  recorded gap if that is later, is a gap. Ticks the previous run left in the spool may reach the database
  after that check: when such a gap is filled, it starts after the last live tick inside it.

``BackfillWorker`` (a thread of ``coinpulse run``) writes the gaps the tracker found, records the restart
gaps, and fills every open gap of this replica's assets once it is ``delay`` seconds old (CoinCap's history
needs a moment to have the newest points): ``collector.history.import_history`` fetches
``/assets/{id}/history`` at the finest interval allowed for the gap's age, writes through the batching
writer (idempotent), refreshes the rollup windows it touched and logs the import in ``history_imports``.
The gap is then ``done`` with ``rows_filled`` = the history points stored in it. A CoinCap error leaves it
``open`` with the error and a backoff; ``failed`` after ``max_attempts`` (or at once for an unknown asset or
a refused key). ``fill_gaps`` is the same pass on demand (``coinpulse backfill --gaps``).

Credits: every history request goes through ``MeteredHistory``, which logs what it cost in
``backfill_credits``; for the worker it first asks the credit plan's backfill allowance
(collector/budget.py) and raises ``BackfillDeferred`` when the allowance cannot pay for it now: the gap stays
``open`` and waits, oldest gaps first (``BackfillWorker``).

``plan_backfill`` is the on-demand import of ``coinpulse backfill --assets ... --since ...``: the range minus
what ``history_imports`` says was imported already (so a re-run, or a run after an interruption, skips what
is done), split into the same requests ``import_history`` makes.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import psycopg

from collector.backoff import Backoff
from collector.budget import BACKFILL_WINDOW, CreditPlanner, history_credits
from collector.coincap.models import ParseResult, Tick
from collector.errors import CoinCapAuthError, CoinCapError, CoinCapNotFound, CoinPulseError
from collector.history import (
    INTERVAL_STEP,
    Chunk,
    HistorySink,
    HistorySource,
    HistoryTiers,
    import_history,
    plan_chunks,
)
from collector.metrics import Metrics

__all__ = [
    "AssetPlan",
    "BackfillDeferred",
    "BackfillWorker",
    "CreditedSource",
    "FillResult",
    "Gap",
    "GapTracker",
    "MeteredHistory",
    "OpenGap",
    "credits_spent",
    "estimate_credits",
    "fill_gap",
    "fill_gaps",
    "imported_ranges",
    "open_gaps",
    "plan_backfill",
    "record_gaps",
    "reopen_abandoned",
    "restart_gaps",
    "uncovered",
]

log = logging.getLogger(__name__)

Conn = psycopg.Connection[Any]

_MAX_PENDING = 100_000
"""Gaps held in memory while the database is away; beyond, the oldest are dropped (and logged)."""
_IGNORED_REASONS = frozenset({"stop", "unauthorized"})
"""Disconnects that open no outage: shutdown (the next start finds the gap) and the switch to REST polling."""


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class Gap:
    """No stream data for ``asset_id`` over [start, end)."""

    asset_id: str
    start: datetime
    end: datetime
    reason: str


class GapTracker:
    """Turns stream events into gaps; no I/O, safe to call from any thread.

    ``assets``: the streamed assets, or None when the stream carries ALL assets: then the tracked assets are
    those seen in messages (``message(at, asset_ids)``) and those added by ``track``.

    Each asset's gap starts at its own last tick (``message`` names the assets a message carried), since
    CoinCap streams only the prices that changed: an asset that fell silent before the stream did is missing
    data from then on. Bounded: never before the collector started (``started_at``; the restart check covers
    what lies before) and never more than ``asset_lookback`` seconds before the stream's last message, so an
    asset that is quiet or delisted does not stretch every outage back to its last trade. An asset with no
    tick since the start gets the earliest start those bounds allow. ``asset_lookback=0``: every asset's gap
    starts at the stream's last message. ``min_gap`` applies to the outage of the stream (a reconnect shorter
    than it records nothing, however long an asset had been quiet).
    """

    def __init__(self, assets: Sequence[str] | None, *, started_at: datetime, first_grace: float,
                 min_gap: float = 0.0, asset_lookback: float = 0.0,
                 on_gap: Callable[[], object] | None = None) -> None:
        self.started_at = started_at
        self._fixed = None if assets is None else tuple(dict.fromkeys(assets))
        self._seen: dict[str, None] = {}
        self._first_grace = timedelta(seconds=first_grace)
        self._min_gap = timedelta(seconds=min_gap)
        self._lookback = timedelta(seconds=asset_lookback)
        self._on_gap = on_gap
        self._lock = threading.Lock()
        self._last_message: datetime | None = None
        self._last_tick: dict[str, datetime] = {}  # each asset's newest message time
        self._open_since: datetime | None = None
        self._open_reason = ""
        self._pending: list[Gap] = []
        self.dropped = 0

    @property
    def tracks_all(self) -> bool:
        return self._fixed is None

    def tracked(self) -> tuple[str, ...]:
        with self._lock:
            return self._fixed if self._fixed is not None else tuple(self._seen)

    def track(self, asset_ids: Iterable[str]) -> None:
        """With ALL: add assets known to be streamed (e.g. those the restart check found)."""
        if self._fixed is None:
            with self._lock:
                self._seen.update(dict.fromkeys(asset_ids))

    def message(self, at: datetime, asset_ids: Iterable[str] = ()) -> None:
        """A message carrying prices of ``asset_ids`` arrived at ``at`` (any message: the stream is alive);
        closes an open outage."""
        ids = tuple(asset_ids)
        with self._lock:
            if self._fixed is None:
                for asset_id in ids:
                    if asset_id not in self._seen:
                        self._seen[asset_id] = None
            if self._open_since is not None:
                self._add_outage(self._open_since, at, self._open_reason)
                self._open_since = None
            elif self._last_message is None and at - self.started_at > self._first_grace:
                self._add(self.started_at, at, "start")  # the first message was long in coming
            if self._last_message is None or at > self._last_message:
                self._last_message = at
            for asset_id in ids:
                last = self._last_tick.get(asset_id)
                if last is None or at > last:
                    self._last_tick[asset_id] = at
        if self._pending and self._on_gap is not None:
            self._on_gap()

    def disconnected(self, at: datetime, reason: str) -> None:
        """The stream lost its connection (or a poll failed): an outage is open from the last message."""
        if reason in _IGNORED_REASONS:
            return
        with self._lock:
            if self._open_since is None:
                self._open_since = self._last_message if self._last_message is not None else self.started_at
                self._open_reason = reason

    def take(self) -> list[Gap]:
        """The gaps found since the last call (to be written)."""
        with self._lock:
            out, self._pending = self._pending, []
            return out

    def put_back(self, gaps: Sequence[Gap]) -> None:
        """Gaps that could not be written (database away): keep them, oldest first, bounded."""
        with self._lock:
            self._pending[:0] = gaps
            excess = len(self._pending) - _MAX_PENDING
            if excess > 0:
                del self._pending[:excess]
                self.dropped += excess
                log.error("gaps not recorded dropped=%d: the database has been away too long", excess)

    def _assets(self) -> tuple[str, ...]:
        return self._fixed if self._fixed is not None else tuple(self._seen)

    def _add_outage(self, stream_start: datetime, end: datetime, reason: str) -> None:
        """An outage of the stream from ``stream_start`` (its last message) to ``end``: each asset's gap starts
        at its own last tick, within the bounds the class describes."""
        if end <= stream_start or end - stream_start < self._min_gap:  # the outage itself is what min_gap judges
            return
        floor = max(self.started_at, stream_start - self._lookback)
        gaps = []
        for asset_id in self._assets():
            own = self._last_tick.get(asset_id, floor)
            gaps.append(Gap(asset_id, max(floor, min(own, stream_start)), end, reason))
        self._pending.extend(gaps)
        if gaps:
            first = min(g.start for g in gaps)
            log.warning("stream gap start=%s end=%s seconds=%.1f reason=%s assets=%d earliest_asset_start=%s",
                        stream_start.isoformat(), end.isoformat(), (end - stream_start).total_seconds(), reason,
                        len(gaps), first.isoformat())

    def _add(self, start: datetime, end: datetime, reason: str) -> None:
        if end <= start or end - start < self._min_gap:
            return
        assets = self._assets()
        self._pending.extend(Gap(a, start, end, reason) for a in assets)
        log.warning("stream gap start=%s end=%s seconds=%.1f reason=%s assets=%d", start.isoformat(),
                    end.isoformat(), (end - start).total_seconds(), reason, len(assets))


# -- the database side -------------------------------------------------------------------------------------

_INSERT_GAP = "INSERT INTO coinpulse.ingest_gaps (asset_id, gap_start, gap_end, reason) VALUES (%s, %s, %s, %s)"

# The newest stored tick of an asset (any source but demo) before the start, or the end of its newest
# recorded gap if later (an earlier restart recorded the time before it already); and whether it was streamed
# or polled since ``oldest`` (with ALL only such assets are tracked).
_LAST_STORED = """
SELECT greatest(
           (SELECT t.time FROM coinpulse.price_ticks t
            WHERE t.asset_id = %(asset)s AND t.time < %(start)s AND t.source <> 'demo'
            ORDER BY t.time DESC LIMIT 1),
           (SELECT max(g.gap_end) FROM coinpulse.ingest_gaps g
            WHERE g.asset_id = %(asset)s AND g.gap_end <= %(start)s)),
       EXISTS (SELECT FROM coinpulse.price_ticks t
               WHERE t.asset_id = %(asset)s AND t.time < %(start)s AND t.time >= %(oldest)s
                 AND t.source IN ('ws', 'rest'))
"""
_ALL_ASSETS = "SELECT asset_id FROM coinpulse.assets ORDER BY asset_id"


def record_gaps(conn: Conn, gaps: Sequence[Gap]) -> None:
    """Insert ``gaps`` (status ``open``) in one transaction."""
    if not gaps:
        return
    with conn.transaction():
        conn.cursor().executemany(_INSERT_GAP, [(g.asset_id, g.start, g.end, g.reason) for g in gaps])


def restart_gaps(conn: Conn, assets: Sequence[str] | None, *, started_at: datetime, min_gap: float = 0.0,
                 max_age: timedelta | None = None, owns: Callable[[str], bool] = lambda _: True) -> list[Gap]:
    """The gaps a restart left: for each asset (``assets``, or with None every stored asset this replica owns
    that was streamed or polled within ``max_age``), from its last stored tick to ``started_at``.

    ``max_age`` (raw retention) bounds how far back a gap starts; ``min_gap`` seconds is the shortest gap
    recorded (e.g. the price poll interval, within which no tick is missing)."""
    oldest = started_at - max_age if max_age is not None else datetime(1970, 1, 1, tzinfo=UTC)
    candidates = list(assets) if assets is not None else [
        str(row[0]) for row in conn.execute(_ALL_ASSETS).fetchall() if owns(str(row[0]))]
    out: list[Gap] = []
    for asset_id in candidates:
        row = conn.execute(_LAST_STORED, {"asset": asset_id, "start": started_at, "oldest": oldest}).fetchone()
        if row is None or row[0] is None or (assets is None and not row[1]):
            continue
        last: datetime = max(row[0], oldest)
        if started_at - last > timedelta(seconds=min_gap) and started_at > last:
            out.append(Gap(asset_id, last, started_at, "restart"))
    return out


# -- credits of history requests --------------------------------------------------------------------------

_LOG_CREDITS = ("INSERT INTO coinpulse.backfill_credits (spent_at, purpose, asset_id, gap_id, credits) "
                "VALUES (%s, %s, %s, %s, %s)")
_CREDITS_SINCE = ("SELECT spent_at, asset_id, credits FROM coinpulse.backfill_credits "
                  "WHERE purpose = %s AND spent_at > %s ORDER BY spent_at")
_PRUNE_CREDITS = "DELETE FROM coinpulse.backfill_credits WHERE spent_at < %s"
_KEEP_CREDITS = timedelta(days=62)
"""The credit log is pruned to two months: the worker needs a day of it, `coinpulse backfill` 31 days."""


def credits_spent(conn: Conn, purpose: str, since: datetime,
                  owns: Callable[[str], bool] = lambda _: True) -> list[tuple[datetime, int]]:
    """(time, credits) of the history requests made for ``purpose`` (``gap``: the gap worker; ``cli``:
    `coinpulse backfill`) after ``since``, of assets this replica owns, oldest first."""
    rows = conn.execute(_CREDITS_SINCE, (purpose, since)).fetchall()
    return [(r[0], int(r[2])) for r in rows if owns(str(r[1]))]


def request_points(interval: str, start: datetime, end: datetime) -> int:
    """Points a history request over [start, end] at ``interval`` can hold at most."""
    return int((end - start) / INTERVAL_STEP[interval]) + 1


def estimate_credits(chunks: Iterable[Chunk]) -> int:
    """Credits the history requests of ``chunks`` are expected to cost (one request each)."""
    return sum(history_credits(request_points(c.interval, c.start, c.end)) for c in chunks)


class BackfillDeferred(CoinPulseError):
    """The gap backfill credit allowance is spent: the gap waits. ``wait``: seconds until the request would
    fit, None when it never fits (it costs more than a whole day's allowance)."""

    def __init__(self, message: str, wait: float | None) -> None:
        super().__init__(message)
        self.wait = wait


class CreditedSource(HistorySource, Protocol):
    """A history source that counts the credits its answers cost (``CoinCapRest`` is one)."""

    credits_used: int


class MeteredHistory:
    """A ``HistorySource`` over ``rest`` that logs what every request cost in ``backfill_credits`` (and charges
    ``planner``, if given). With a planner it asks first: a request the backfill allowance cannot pay for
    now raises ``BackfillDeferred`` instead of being sent."""

    def __init__(self, rest: CreditedSource, conn: Conn, *, purpose: str, planner: CreditPlanner | None = None,
                 gap_id: int | None = None, clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self._rest = rest
        self._conn = conn
        self._purpose = purpose
        self._planner = planner
        self._gap_id = gap_id
        self._clock = clock
        self.credits = 0
        """Credits of the requests made through this object."""
        self.requests = 0

    def history(self, asset_id: str, interval: str, start: datetime, end: datetime) -> ParseResult[Tick]:
        if self._planner is not None:
            self.ask(interval, start, end)
        before = self._rest.credits_used
        points = 0
        try:
            result = self._rest.history(asset_id, interval, start, end)
            points = len(result.records) + len(result.rejects)
            return result
        finally:
            spent = self._rest.credits_used - before
            if spent > 0:
                at = self._clock()
                self.credits += spent
                self.requests += 1
                if self._planner is not None:
                    self._planner.charge_backfill(at, spent, points)
                self._conn.execute(_LOG_CREDITS, (at, self._purpose, asset_id, self._gap_id, spent))

    def ask(self, interval: str, start: datetime, end: datetime) -> None:
        """BackfillDeferred unless the allowance pays for a request over [start, end] now."""
        assert self._planner is not None
        estimate = self._planner.backfill_estimate(request_points(interval, start, end))
        now = self._clock()
        wait = self._planner.backfill_wait(now, estimate)
        if wait == 0.0:
            return
        allowance = self._planner.backfill_per_day or 0.0
        if wait is None:
            raise BackfillDeferred(
                f"a history request of about {estimate} credits costs more than the whole backfill allowance "
                f"({allowance:.1f} credits a day): raise COINPULSE_BACKFILL_SHARE or COINPULSE_CREDIT_BUDGET, lower "
                "COINPULSE_HISTORY_POINTS_PER_REQUEST, or run `coinpulse backfill --gaps`", None)
        raise BackfillDeferred(
            f"deferred: backfill allowance spent ({self._planner.backfill_used(now)} of {allowance:.1f} credits in "
            f"the last 24 h); this request (about {estimate} credits) fits in {wait:.0f}s", wait)


@dataclass(frozen=True, slots=True)
class OpenGap:
    id: int
    asset_id: str
    start: datetime
    end: datetime
    reason: str
    status: str


_OPEN_GAPS = """
SELECT id, asset_id, gap_start, gap_end, reason, status FROM coinpulse.ingest_gaps
WHERE status = ANY(%s) AND asset_id IS NOT NULL AND gap_end <= %s
ORDER BY gap_start, id
"""
_CLAIM = ("UPDATE coinpulse.ingest_gaps SET status = 'filling', error = NULL "
          "WHERE id = %s AND status = ANY(%s) RETURNING id")
_DONE = ("UPDATE coinpulse.ingest_gaps SET status = 'done', rows_filled = %s, filled_at = now(), error = NULL "
         "WHERE id = %s")
_FAILED = "UPDATE coinpulse.ingest_gaps SET status = %s, error = %s WHERE id = %s"
_FILLING = "SELECT id, asset_id FROM coinpulse.ingest_gaps WHERE status = 'filling' AND asset_id IS NOT NULL"
_REOPEN = "UPDATE coinpulse.ingest_gaps SET status = 'open' WHERE id = ANY(%s) AND status = 'filling'"
_COUNT_OPEN = "SELECT count(*) FROM coinpulse.ingest_gaps WHERE status <> 'done'"
_LAST_LIVE_IN = ("SELECT max(time) FROM coinpulse.price_ticks WHERE asset_id = %s AND source IN ('ws', 'rest') "
                 "AND time > %s AND time < %s")
_MOVE_START = "UPDATE coinpulse.ingest_gaps SET gap_start = %s WHERE id = %s"


def open_gaps(conn: Conn, *, until: datetime, statuses: Sequence[str] = ("open",),
              owns: Callable[[str], bool] = lambda _: True, assets: Sequence[str] | None = None) -> list[OpenGap]:
    """Gaps in ``statuses`` that ended by ``until``, of assets this replica owns (and in ``assets``), oldest
    first."""
    rows = conn.execute(_OPEN_GAPS, (list(statuses), until)).fetchall()
    gaps = [OpenGap(int(r[0]), str(r[1]), r[2], r[3], str(r[4]), str(r[5])) for r in rows]
    return [g for g in gaps if owns(g.asset_id) and (assets is None or g.asset_id in assets)]


def reopen_abandoned(conn: Conn, owns: Callable[[str], bool] = lambda _: True) -> int:
    """Gaps left ``filling`` by a process that died mid-fill (this replica's assets): ``open`` again."""
    ids = [int(r[0]) for r in conn.execute(_FILLING).fetchall() if owns(str(r[1]))]
    if ids:
        conn.execute(_REOPEN, (ids,))
        log.info("gaps reopened after an interrupted backfill count=%d", len(ids))
    return len(ids)


@dataclass(frozen=True, slots=True)
class FillResult:
    gap: OpenGap
    status: str  # done, open (will be retried), failed, skipped (someone else claimed it), deferred (no credits)
    rows: int = 0
    requests: int = 0
    intervals: str = ""
    error: str | None = None
    wait: float | None = None  # deferred: seconds until the allowance pays for the next request (None: never)


_HISTORY_IN = ("SELECT count(*) FROM coinpulse.price_ticks WHERE asset_id = %s AND source = 'history' "
               "AND time >= %s AND time < %s")


def fill_gap(conn: Conn, source: HistorySource, sink: HistorySink, gap: OpenGap, *, now: datetime,
             tiers: HistoryTiers, points_per_request: int, claim_from: Sequence[str] = ("open",),
             permanent_failure: bool = False) -> FillResult:
    """Claim ``gap``, fill it from history, mark it done (or open/failed with the error).

    The gap is fetched request by request (``plan_backfill``), each logged in ``history_imports`` when stored,
    so a fill that stops half way (a CoinCap error, ``BackfillDeferred`` from a metered source) resumes after
    what was stored. ``rows_filled`` is the number of history points stored in the gap.

    ``conn`` must be autocommit. A CoinCap error other than "unknown asset"/"refused key" leaves the gap
    ``open`` (or ``failed`` when ``permanent_failure``); ``BackfillDeferred`` leaves it ``open`` with the reason
    (status ``deferred``); database errors propagate after reopening it."""
    if conn.execute(_CLAIM, (gap.id, list(claim_from))).fetchone() is None:
        return FillResult(gap, "skipped")
    if gap.reason == "restart":
        # Ticks the previous run spooled may have reached the database since the gap was recorded (the spool
        # drains after a restart): the hole begins at the last of them.
        row = conn.execute(_LAST_LIVE_IN, (gap.asset_id, gap.start, gap.end)).fetchone()
        if row is not None and row[0] is not None:
            log.info("gap id=%d asset=%s starts later than recorded: live ticks up to %s arrived since", gap.id,
                     gap.asset_id, row[0].isoformat())
            gap = replace(gap, start=row[0])
            conn.execute(_MOVE_START, (gap.start, gap.id))
    intervals = ",".join(dict.fromkeys(c.interval for c in plan_chunks(gap.start, min(gap.end, now), now, tiers,
                                                                        points_per_request)))
    requests = written = 0
    try:
        plan = plan_backfill(conn, gap.asset_id, gap.start, gap.end, now=now, tiers=tiers,
                             points_per_request=points_per_request)
        for chunk in plan.chunks:
            result = import_history(source, sink, conn, gap.asset_id, chunk.start, chunk.end, now=now, tiers=tiers,
                                    points_per_request=points_per_request)
            requests, written = requests + result.requests, written + result.written
    except BackfillDeferred as exc:
        conn.execute(_FAILED, ("open", _one_line(exc), gap.id))
        return FillResult(gap, "deferred", requests=requests, intervals=intervals, error=_one_line(exc),
                          wait=exc.wait)
    except (CoinCapNotFound, CoinCapAuthError) as exc:
        conn.execute(_FAILED, ("failed", _one_line(exc), gap.id))
        return FillResult(gap, "failed", intervals=intervals, error=_one_line(exc))
    except psycopg.OperationalError:
        raise  # the database is away: the gap stays 'filling' until the worker reconnects and reopens it
    except (CoinCapError, CoinPulseError, psycopg.Error) as exc:
        status = "failed" if permanent_failure else "open"
        conn.execute(_FAILED, (status, _one_line(exc), gap.id))
        return FillResult(gap, status, intervals=intervals, error=_one_line(exc))
    except BaseException:
        with contextlib.suppress(psycopg.Error):
            conn.execute(_REOPEN, ([gap.id],))
        raise
    row = conn.execute(_HISTORY_IN, (gap.asset_id, gap.start, gap.end)).fetchone()
    rows = int(row[0]) if row is not None else 0
    conn.execute(_DONE, (rows, gap.id))
    log.info("gap filled id=%d asset=%s start=%s end=%s intervals=%s requests=%d rows=%d new=%d", gap.id,
             gap.asset_id, gap.start.isoformat(), gap.end.isoformat(), intervals, requests, rows, written)
    return FillResult(gap, "done", rows, requests, intervals)


def fill_gaps(conn: Conn, source: HistorySource, sink: HistorySink, gaps: Iterable[OpenGap], *, now: datetime,
              tiers: HistoryTiers, points_per_request: int,
              on_result: Callable[[FillResult], None] | None = None) -> list[FillResult]:
    """Fill ``gaps`` one after the other now (``coinpulse backfill --gaps``): open and failed ones alike."""
    results = []
    for gap in gaps:
        result = fill_gap(conn, source, sink, gap, now=now, tiers=tiers, points_per_request=points_per_request,
                          claim_from=("open", "failed"), permanent_failure=True)
        results.append(result)
        if on_result is not None:
            on_result(result)
    return results


# -- on-demand imports (coinpulse backfill) ---------------------------------------------------------------

_IMPORTED = """
SELECT range_start, range_end FROM coinpulse.history_imports
WHERE asset_id = %s AND range_end > %s AND range_start < %s
ORDER BY range_start
"""


def imported_ranges(conn: Conn, asset_id: str, start: datetime, end: datetime) -> list[tuple[datetime, datetime]]:
    """Ranges of ``asset_id`` that history imports (``history_imports``) already fetched, overlapping [start, end)."""
    return [(r[0], r[1]) for r in conn.execute(_IMPORTED, (asset_id, start, end)).fetchall()]


Span = tuple[datetime, datetime]


def uncovered(start: datetime, end: datetime, covered: Iterable[Span]) -> list[Span]:
    """[start, end) minus the union of ``covered``, as sorted disjoint ranges."""
    out: list[Span] = []
    cursor = start
    for lo, hi in sorted(covered):
        if hi <= cursor:
            continue
        if lo >= end:
            break
        if lo > cursor:
            out.append((cursor, lo))
        cursor = max(cursor, hi)
        if cursor >= end:
            break
    if cursor < end:
        out.append((cursor, end))
    return out


@dataclass(frozen=True, slots=True)
class AssetPlan:
    """What ``coinpulse backfill`` will fetch for one asset: ``chunks`` (one request each, unless CoinCap cuts an
    answer short), and the ranges already imported that it skips."""

    asset_id: str
    start: datetime
    end: datetime
    chunks: tuple[Chunk, ...]
    skipped: tuple[tuple[datetime, datetime], ...]

    @property
    def intervals(self) -> str:
        return ",".join(dict.fromkeys(c.interval for c in self.chunks))


def plan_backfill(conn: Conn, asset_id: str, start: datetime, end: datetime, *, now: datetime, tiers: HistoryTiers,
                  points_per_request: int) -> AssetPlan:
    """The requests that import [start, end) of ``asset_id``, minus what earlier imports fetched. A piece left
    between imported ranges that is shorter than one interval at its age is skipped: it holds no point."""
    end = min(end, now)
    covered: list[Span] = []  # the imported ranges within [start, end), merged where they touch or overlap
    for lo, hi in imported_ranges(conn, asset_id, start, end):
        lo, hi = max(lo, start), min(hi, end)
        if covered and lo <= covered[-1][1]:
            covered[-1] = (covered[-1][0], max(covered[-1][1], hi))
        else:
            covered.append((lo, hi))
    chunks: list[Chunk] = []
    for lo, hi in uncovered(start, end, covered):
        if covered and hi - lo < INTERVAL_STEP[tiers.interval_at(lo, now)]:
            continue
        chunks += plan_chunks(lo, hi, now, tiers, points_per_request)
    return AssetPlan(asset_id, start, end, tuple(chunks), tuple(covered))


# -- the worker --------------------------------------------------------------------------------------------

class BackfillWorker:
    """Records the tracker's gaps and the restart gaps, and (when ``fill``) backfills the open ones.

    ``run(stop)`` is a thread of ``coinpulse run``; the database being away only delays it (backoff).
    ``source`` may be None when ``fill`` is off (gaps are then only recorded).

    Every history request's credits are logged in ``backfill_credits`` (purpose ``gap``). With a ``planner``
    that has a budget, each request first asks it (``MeteredHistory``): when the backfill allowance is spent,
    the gap stays ``open`` with the reason in ``error`` and the pass ends there; the worker comes back when
    the oldest charges leave the 24-hour window. Gaps are filled **oldest first**, strictly: a later, cheaper
    gap does not overtake one that waits for credits (CoinCap's finest history reaches back only so far, so
    the oldest gap is the one about to lose resolution, and no gap waits forever behind newer ones). At
    (re)connect the planner is loaded with the last 24 hours of this replica's charges, so a restart does not
    reset the window."""

    def __init__(
        self,
        database_url: str,
        tracker: GapTracker | None,
        source: CreditedSource | None,
        sink: HistorySink | None,
        metrics: Metrics,
        *,
        tiers: HistoryTiers,
        points_per_request: int,
        fill: bool = True,
        delay: float = 120.0,
        restart_assets: Sequence[str] | None = None,
        restart_check: bool = True,
        restart_min_gap: float = 0.0,
        max_age: timedelta | None = None,
        owns: Callable[[str], bool] = lambda _: True,
        max_attempts: int = 5,
        idle: float = 60.0,
        wall_clock: Callable[[], datetime] = _utcnow,
        monotonic: Callable[[], float] = time.monotonic,
        backoff: Callable[[], Backoff] = lambda: Backoff(initial=30.0, cap=900.0),
        wake: threading.Event | None = None,
        planner: CreditPlanner | None = None,
    ) -> None:
        if fill and (source is None or sink is None):
            raise ValueError("filling gaps needs a history source and a sink")
        self._url = database_url
        self._tracker = tracker
        self._source = source
        self._sink = sink
        self._metrics = metrics
        self._tiers = tiers
        self._ppr = points_per_request
        self._fill = fill
        self._delay = timedelta(seconds=delay)
        self._restart_assets = restart_assets
        self._restart_pending = restart_check
        self._restart_min_gap = restart_min_gap
        self._max_age = max_age
        self._owns = owns
        self._max_attempts = max_attempts
        self._idle = idle
        self._now = wall_clock
        self._monotonic = monotonic
        self._new_backoff = backoff
        self._retry: dict[int, tuple[float, Backoff]] = {}  # gap id -> (monotonic time of the next try, backoff)
        self._conn: Conn | None = None
        self._db_backoff = Backoff(initial=1.0, cap=30.0)
        self._planner = planner
        self._deferred_since: datetime | None = None  # when the current wait for credits began (logged once)
        if planner is None or planner.backfill_per_day is None:
            metrics.backfill_credits_left.set(math.nan)
        self.wake = wake if wake is not None else threading.Event()
        """Set it (the tracker's ``on_gap``) to start a pass at once."""
        self.filled: list[FillResult] = []  # what this worker did, newest last (bounded; for tests and logs)

    def run(self, stop: threading.Event) -> None:
        log.info("gap worker started fill=%s delay=%.0fs", self._fill, self._delay.total_seconds())
        while not stop.is_set():
            try:
                wait = self.step(stop)
                self._db_backoff.reset()
            except psycopg.OperationalError as exc:
                self._close()
                wait = self._db_backoff.next_delay()
                log.warning("gap worker: database unreachable, retrying in %.1fs: %s", wait, _one_line(exc))
            except (psycopg.Error, CoinPulseError) as exc:
                wait = self._db_backoff.next_delay()
                log.error("gap worker: pass failed, retrying in %.1fs: %s", wait, _one_line(exc))
            self._sleep(stop, wait)
        self._close()

    def step(self, stop: threading.Event | None = None) -> float:
        """One pass: record new gaps, fill the due ones; the seconds until the next pass is useful."""
        conn = self._connection()
        if self._restart_pending:
            self._record_restart_gaps(conn)
        if self._tracker is not None:
            gaps = self._tracker.take()
            try:
                record_gaps(conn, gaps)
            except psycopg.Error:
                self._tracker.put_back(gaps)
                raise
            if gaps:
                log.info("gaps recorded count=%d", len(gaps))
        wait = self._idle
        if self._fill:
            wait = min(wait, self._fill_due(conn, stop))
        row = conn.execute(_COUNT_OPEN).fetchone()
        self._metrics.open_gaps.set(int(row[0]) if row else 0)
        return wait

    def _record_restart_gaps(self, conn: Conn) -> None:
        started_at = self._tracker.started_at if self._tracker is not None else self._now()
        gaps = restart_gaps(conn, self._restart_assets, started_at=started_at, min_gap=self._restart_min_gap,
                            max_age=self._max_age, owns=self._owns)
        record_gaps(conn, gaps)
        if self._tracker is not None and self._restart_assets is None:
            self._tracker.track(g.asset_id for g in gaps)
        if gaps:
            log.warning("gaps since the last run recorded count=%d (from %s)", len(gaps),
                        min(g.start for g in gaps).isoformat())
        self._restart_pending = False

    def _fill_due(self, conn: Conn, stop: threading.Event | None) -> float:
        assert self._source is not None and self._sink is not None
        now = self._now()
        wait = self._idle
        for gap in open_gaps(conn, until=now, owns=self._owns):
            if stop is not None and stop.is_set():
                break
            due = gap.end + self._delay
            if due > now:
                wait = min(wait, (due - now).total_seconds())
                continue
            retry = self._retry.get(gap.id)
            if retry is not None and retry[0] > self._monotonic():
                wait = min(wait, retry[0] - self._monotonic())
                continue
            source = MeteredHistory(self._source, conn, purpose="gap", planner=self._planner, gap_id=gap.id,
                                    clock=self._now)
            result = fill_gap(conn, source, self._sink, gap, now=self._now(), tiers=self._tiers,
                              points_per_request=self._ppr)
            if result.status == "deferred":
                self._metrics.gap_fills_deferred.inc()
                if self._deferred_since is None:
                    self._deferred_since = now
                    log.warning("gap backfill waits for credits id=%d asset=%s: %s", gap.id, gap.asset_id,
                                result.error)
                # Strictly oldest first: nothing newer goes ahead. Back when the window has room (or, when this
                # request can never fit, at the idle interval: a new budget needs a restart anyway).
                wait = min(wait, result.wait if result.wait is not None else self._idle)
                self._show_allowance()
                break
            if result.requests and self._deferred_since is not None:
                log.info("gap backfill resumed after waiting %.0fs for credits", (now - self._deferred_since)
                         .total_seconds())
                self._deferred_since = None
            if result.status == "open":
                backoff = retry[1] if retry is not None else self._new_backoff()
                if backoff.attempts + 1 >= self._max_attempts:
                    conn.execute(_FAILED, ("failed", result.error, gap.id))
                    result = FillResult(gap, "failed", error=result.error)
                    self._retry.pop(gap.id, None)
                else:
                    delay = backoff.next_delay()
                    self._retry[gap.id] = (self._monotonic() + delay, backoff)
                    wait = min(wait, delay)
                log.warning("gap backfill failed id=%d asset=%s status=%s error=%s", gap.id, gap.asset_id,
                            result.status, result.error)
            elif result.status == "failed":
                log.error("gap backfill failed for good id=%d asset=%s error=%s", gap.id, gap.asset_id, result.error)
            else:
                self._retry.pop(gap.id, None)
            if result.status != "skipped":
                self.filled = [*self.filled[-999:], result]
        self._show_allowance()
        return max(0.0, wait)

    def _show_allowance(self) -> None:
        if self._planner is not None and self._planner.backfill_per_day is not None:
            self._metrics.backfill_credits_left.set(
                max(0.0, self._planner.backfill_per_day - self._planner.backfill_used(self._now())))

    def _connection(self) -> Conn:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self._url, autocommit=True, connect_timeout=10,
                                         application_name="coinpulse-gaps")
            reopen_abandoned(self._conn, self._owns)
            if self._fill:
                now = self._now()
                self._conn.execute(_PRUNE_CREDITS, (now - _KEEP_CREDITS,))
                if self._planner is not None:
                    charges = credits_spent(self._conn, "gap", now - BACKFILL_WINDOW, self._owns)
                    self._planner.load_backfill(charges)
                    if charges:
                        log.info("gap backfill credits used in the last 24 h: %d", sum(c for _, c in charges))
        return self._conn

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _sleep(self, stop: threading.Event, seconds: float) -> None:
        """Until ``stop``, a new gap (``wake``) or ``seconds``, whichever comes first."""
        deadline = self._monotonic() + max(0.0, seconds)
        while not stop.is_set():
            left = deadline - self._monotonic()
            if left <= 0:
                return
            if self.wake.wait(min(left, 0.2)):
                self.wake.clear()
                return


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:500]
