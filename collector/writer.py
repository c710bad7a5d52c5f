"""The one batching writer: rows from the queue into TimescaleDB by binary COPY, idempotently.

Idempotency: every hypertable is unique on its natural key (asset_id, time) and so on. A batch is first
COPYed straight into its table inside a savepoint: that is the fast path, as fast as a raw COPY. If the
batch repeats rows already stored (a replay after a reconnect, a spool drain, a restarted history import),
the unique index refuses it and the batch goes the slow way: COPY into a temporary staging table, then
``INSERT ... SELECT ... ON CONFLICT DO NOTHING``. Either way a row is stored exactly once. Live rows are
COPYed with psycopg's ``write_row`` (its C dumpers); spooled ticks arrive as ready-made COPY rows
(``collector.spool.TickRows``) and are COPYed as the bytes they are.

A batch that fails for connection reasons goes to the on-disk spool (collector/spool.py) and the database is
retried with capped, jittered backoff; meanwhile every new batch goes straight to the spool, so memory stays
bounded however long the outage. Once the database answers, the writer drains the spool, oldest first:
one drain transaction of up to ``drain_rows`` spooled rows (whole spool records; their ticks are stored
COPY-ready, so a drain is one COPY of bytes, no work per row), then the live batch that is due, if any, and
so on, so new rows keep flowing while the backlog shrinks: a live row waits at most its batch age plus one
drain transaction (``COINPULSE_SPOOL_DRAIN_ROWS``, 50,000 rows by default: 0.4-1 s at the drain rates
measured on a small shared machine, the deduplicating replay path included). Replays are safe (see above). When
the spool is empty again, the rollups are refreshed over the drained time range (``refresh_window``, in a
thread), since late rows in already materialized buckets show only after that. Without a spool the failed
batch is kept in memory and retried (the queue in front is bounded, so memory is still bounded, and sources
count what does not fit).

Rows the spool drops at its cap (``Spool.on_drop``, wired to ``note_dropped``) are kept as one time range
per asset (merged while they wait; the spool also keeps them on disk, ``dropped.spans``, so a crash or restart
before the database answers does not lose them) and recorded in ``ingest_gaps`` with reason ``spool_cap`` as
soon as the database answers; ``on_gaps`` then wakes the gap worker, which backfills them from CoinCap's history.

The connection asks libpq for TCP keepalives (idle 30 s, then every 10 s, 3 probes) and a 60 s
``tcp_user_timeout`` unless the URL sets them, so a link that goes silent (a NAT or firewall dropping the
flow without a reset) fails the writer's call within about a minute instead of hanging it; the batch then
goes to the spool like any other connection loss. It also sets ``client_encoding`` UTF8, the encoding of
the COPY-ready tick rows.

Shutdown (``run``'s ``stop``): what is queued is written to the database until the grace deadline, or to the
spool at once when the database is away; ``spool_remaining`` lets the caller do the same if this thread is
stuck in a database call when the grace period ends.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from collector.backoff import Backoff
from collector.buffer import RecordQueue
from collector.coincap.models import (
    AssetSnapshot,
    ExchangeSnapshot,
    MarketSnapshot,
    RateSnapshot,
    Record,
    Tick,
)
from collector.db.rollups import refresh_window
from collector.errors import CoinPulseError
from collector.gaps import Gap, record_gaps
from collector.metrics import Metrics
from collector.spool import DroppedSpan, Spool, SpoolError, TickRows, utc_from_micros

__all__ = ["TABLES", "BatchWriter", "TableSpec", "copy_rows", "copy_tick_rows", "writer_connect_params"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TableSpec:
    name: str
    columns: tuple[str, ...]
    types: tuple[str, ...]


def _spec(name: str, record: type[Any], types: tuple[str, ...]) -> TableSpec:
    columns = tuple(record._fields)
    assert len(columns) == len(types), name
    return TableSpec(name, columns, types)


TABLES: dict[type[Any], TableSpec] = {
    Tick: _spec("price_ticks", Tick, ("timestamptz", "text", "float8", "text")),
    AssetSnapshot: _spec("asset_snapshots", AssetSnapshot, (
        "timestamptz", "text", "int4", "text", "text", "float8", "float8", "float8", "float8", "float8",
        "float8", "float8", "text", "text")),
    ExchangeSnapshot: _spec("exchange_snapshots", ExchangeSnapshot, (
        "timestamptz", "text", "text", "int4", "float8", "float8", "int4", "bool", "text", "timestamptz",
        "text")),
    MarketSnapshot: _spec("market_snapshots", MarketSnapshot, (
        "timestamptz", "text", "text", "text", "text", "text", "int4", "float8", "float8", "float8", "float8",
        "int8", "timestamptz", "text")),
    RateSnapshot: _spec("rate_snapshots", RateSnapshot, (
        "timestamptz", "text", "text", "text", "float8", "text", "text")),
}

_UPSERT_ASSETS = """
INSERT INTO coinpulse.assets AS a (asset_id, symbol, name, rank, explorer, first_seen, last_seen)
VALUES (%s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (asset_id) DO UPDATE SET
    symbol = coalesce(EXCLUDED.symbol, a.symbol),
    name = coalesce(EXCLUDED.name, a.name),
    rank = CASE WHEN EXCLUDED.last_seen >= a.last_seen THEN EXCLUDED.rank ELSE a.rank END,
    explorer = coalesce(EXCLUDED.explorer, a.explorer),
    first_seen = least(a.first_seen, EXCLUDED.first_seen),
    last_seen = greatest(a.last_seen, EXCLUDED.last_seen)
"""

_UPSERT_EXCHANGES = """
INSERT INTO coinpulse.exchanges AS e (exchange_id, name, rank, exchange_url, first_seen, last_seen)
VALUES (%s, %s, %s, %s, %s, %s)
ON CONFLICT (exchange_id) DO UPDATE SET
    name = coalesce(EXCLUDED.name, e.name),
    rank = CASE WHEN EXCLUDED.last_seen >= e.last_seen THEN EXCLUDED.rank ELSE e.rank END,
    exchange_url = coalesce(EXCLUDED.exchange_url, e.exchange_url),
    first_seen = least(e.first_seen, EXCLUDED.first_seen),
    last_seen = greatest(e.last_seen, EXCLUDED.last_seen)
"""

_TOUCH_ASSETS = """
INSERT INTO coinpulse.assets AS a (asset_id, first_seen, last_seen)
SELECT id, t0, t1 FROM unnest(%s::text[], %s::timestamptz[], %s::timestamptz[]) AS u(id, t0, t1)
ON CONFLICT (asset_id) DO UPDATE SET
    first_seen = least(a.first_seen, EXCLUDED.first_seen),
    last_seen = greatest(a.last_seen, EXCLUDED.last_seen)
"""

_TOUCH_EXCHANGES = """
INSERT INTO coinpulse.exchanges (exchange_id, first_seen, last_seen)
SELECT id, t, t FROM unnest(%s::text[], %s::timestamptz[]) AS u(id, t)
ON CONFLICT (exchange_id) DO NOTHING
"""

Connection = psycopg.Connection[tuple[Any, ...]]

_COPY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + bytes(8)  # binary COPY signature, flags 0, no header extension
_COPY_TRAILER = b"\xff\xff"
_KEEPALIVES = {"keepalives": "1", "keepalives_idle": "30", "keepalives_interval": "10", "keepalives_count": "3",
               "tcp_user_timeout": "60000"}
_DROPPED_REASON = "spool_cap"


def writer_connect_params(database_url: str) -> dict[str, str]:
    """The libpq parameters the writer adds to ``database_url``: TCP keepalives and a user timeout (unless the
    URL sets them), and client_encoding UTF8 (always: the tick rows are UTF-8)."""
    given = conninfo_to_dict(database_url)
    params = {k: v for k, v in _KEEPALIVES.items() if k not in given}
    params["client_encoding"] = "UTF8"
    return params


def copy_rows(cur: psycopg.Cursor[tuple[Any, ...]], table: sql.Composable, spec: TableSpec,
              rows: Sequence[Sequence[Any]]) -> None:
    """Binary COPY of ``rows`` (tuples in ``spec.columns`` order) into ``table``."""
    stmt = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
        table, sql.SQL(", ").join(map(sql.Identifier, spec.columns)))
    with cur.copy(stmt) as copy:
        copy.set_types(list(spec.types))
        for row in rows:
            copy.write_row(row)


def copy_tick_rows(cur: psycopg.Cursor[tuple[Any, ...]], table: sql.Composable, rows: TickRows) -> None:
    """Binary COPY of ready-made tick rows into ``table`` (price_ticks' columns): the bytes as they are."""
    spec = TABLES[Tick]
    stmt = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
        table, sql.SQL(", ").join(map(sql.Identifier, spec.columns)))
    with cur.copy(stmt) as copy:
        copy.write(_COPY_SIGNATURE)
        copy.write(memoryview(rows.data))
        copy.write(_COPY_TRAILER)


class BatchWriter:
    """Takes batches from ``queue`` and commits them; one thread runs ``run``."""

    def __init__(
        self,
        database_url: str,
        queue: RecordQueue,
        metrics: Metrics,
        *,
        batch_size: int = 5000,
        batch_max_age: float = 0.2,
        backoff: Backoff | None = None,
        wall_clock: Callable[[], float] = time.time,
        on_committed: Callable[[dict[str, int]], None] | None = None,
        spool: Spool | None = None,
        log_every: float = 60.0,
        refresh_rollups: bool = True,
        drain_rows: int = 50_000,
        on_gaps: Callable[[], object] | None = None,
    ) -> None:
        self._url = database_url
        self._queue = queue
        self._metrics = metrics
        self._batch_size = batch_size
        self._batch_max_age = batch_max_age
        self._backoff = backoff or Backoff(initial=0.5, cap=5.0)
        self._now = wall_clock
        self._on_committed = on_committed
        self._spool = spool
        self._log_every = log_every
        self._drain_rows = max(1, drain_rows)
        self._on_gaps = on_gaps
        self._dropped: dict[str, tuple[datetime, datetime]] = {}  # spans the spool dropped, not yet recorded
        self._dropped_lock = threading.Lock()
        self._conn: Connection | None = None
        self._known_assets: set[str] = set()
        self._known_exchanges: set[str] = set()
        self._pending: list[Record] = []
        self._retry_at: float | None = None  # monotonic; set while the database is away
        self._down_since: float | None = None
        self._down_logged = 0.0
        self._spool_retry_at = 0.0  # after a spool error, leave the spool alone until then
        self._refresh_rollups = refresh_rollups
        self._drained: tuple[datetime, datetime] | None = None  # time range of the rows drained so far
        self._refresher: threading.Thread | None = None
        self.last_success: float | None = None  # wall-clock time of the last commit or successful connect
        self.last_error: str | None = None
        metrics.queue_capacity.set(queue.capacity)
        metrics.queue_depth.set_function(lambda: len(queue))
        metrics.rows_waiting.set_function(lambda: len(queue) + len(self._pending))

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.closed

    @property
    def database_down(self) -> bool:
        """True from a failed round trip until the next successful one (batches are spooled meanwhile)."""
        return self._retry_at is not None

    def _may_try(self) -> bool:
        return self._retry_at is None or time.monotonic() >= self._retry_at

    def _spool_ready(self) -> bool:
        return self._spool is not None and time.monotonic() >= self._spool_retry_at

    # -- the loop -----------------------------------------------------------------------------------------

    def run(self, stop: threading.Event, drain_deadline: Callable[[], float | None] = lambda: None) -> None:
        """Write until ``stop`` is set, then write what is queued: to the database until the monotonic time
        ``drain_deadline()`` (or to the spool at once while the database is away), then to the spool."""
        try:  # connect now, so health reports the database before the first batch
            self._connection()
        except psycopg.OperationalError as exc:
            self._metrics.db_up.set(0)
            self.last_error = _one_line(exc)
            self._database_failed()
        while not (stop.is_set() and self._finished(drain_deadline())):
            self._step(stop)
        self.close()

    def _step(self, stop: threading.Event) -> None:
        spool = self._spool
        draining = (spool is not None and not stop.is_set() and self._may_try() and self._spool_ready()
                    and not spool.empty)
        if not self._pending:
            if draining:  # the spool has work: take live rows only when they are due, never wait for them
                self._pending = self._queue.take_due(self._batch_size, self._batch_max_age)
            else:
                wait = 0.05 if stop.is_set() else 0.5
                self._pending = self._queue.get_batch(self._batch_size, self._batch_max_age, wait)
        if self._pending:
            if not self._deliver(self._pending):  # neither the database nor the spool took it: wait
                delay = max(0.05, (self._retry_at or 0.0) - time.monotonic())
                if stop.is_set():
                    time.sleep(min(delay, 0.5))  # draining for shutdown: keep trying until the deadline
                else:
                    stop.wait(delay)
                return
            self._pending = []
        if draining and self._may_try():
            self._drain_one()
        if ((self._dropped or (self._spool is not None and self._spool.drops_pending))
                and self._retry_at is None and self.connected):
            self._record_dropped()

    def _deliver(self, batch: list[Record]) -> bool:
        """To the database if it may be tried now, else (or if that fails) to the spool. True when taken."""
        if self._may_try():
            if self._attempt(batch):
                self._database_back()
                return True
            self._database_failed()
        if self._spool_ready():
            return self._to_spool(batch)
        return False

    def _drain_one(self) -> None:
        spool = self._spool
        assert spool is not None
        try:
            batch = spool.read(self._drain_rows)
        except (SpoolError, OSError) as exc:
            self._spool_failed("read", exc)
            return
        if batch is None:
            return
        if batch.count:
            if not self._attempt(batch.records, batch.ticks):
                self._database_failed()
                return
            self._database_back()
            times = [r.time for r in batch.records]
            if batch.ticks is not None:
                times += [utc_from_micros(batch.ticks.lo), utc_from_micros(batch.ticks.hi)]
            lo, hi = min(times), max(times)
            if self._drained is not None:
                lo, hi = min(lo, self._drained[0]), max(hi, self._drained[1])
            self._drained = lo, hi
        spool.ack(batch)
        if spool.empty:
            log.info("spool drained: every spooled row is in the database")
            self._refresh_drained()

    def _refresh_drained(self) -> None:
        """Late rows inside buckets the rollups already materialized show there only after a refresh: refresh
        the drained time range, in a thread of its own (it may wait for a refresh policy's lock)."""
        drained, self._drained = self._drained, None
        if drained is None or not self._refresh_rollups:
            return
        lo, hi = drained[0], drained[1] + timedelta(microseconds=1)
        previous = self._refresher

        def refresh() -> None:
            if previous is not None:
                previous.join()
            try:
                with psycopg.connect(self._url, autocommit=True, connect_timeout=10,
                                     application_name="coinpulse-rollup-refresh") as conn:
                    refresh_window(conn, lo, hi)
                log.info("rollups refreshed over the drained rows start=%s end=%s", lo.isoformat(), hi.isoformat())
            except (psycopg.Error, CoinPulseError) as exc:
                log.error("rollup refresh over the drained rows failed start=%s end=%s: %s (the refresh policies "
                          "cover the last 2 hours; older buckets: collector.db.rollups.refresh_window)",
                          lo.isoformat(), hi.isoformat(), _one_line(exc))

        self._refresher = threading.Thread(target=refresh, name="rollup-refresh", daemon=True)
        self._refresher.start()

    def note_dropped(self, spans: Sequence[DroppedSpan]) -> None:
        """The spool's ``on_drop`` (any thread): keep the time ranges of the ticks it dropped at its cap, merged
        per asset, until they are recorded in ingest_gaps."""
        with self._dropped_lock:
            for span in spans:
                had = self._dropped.get(span.asset_id)
                self._dropped[span.asset_id] = (span.first, span.last) if had is None else (
                    min(had[0], span.first), max(had[1], span.last))

    def _record_dropped(self) -> None:
        # The spool's record (dropped.spans) survives a crash: it may hold an earlier run's spans as well as the ones
        # noted in memory (the same spans again: merging per asset makes that harmless).
        stored, lines = self._spool.pending_drops() if self._spool is not None else ([], 0)
        with self._dropped_lock:
            pending, self._dropped = self._dropped, {}
        for span in stored:
            had = pending.get(span.asset_id)
            pending[span.asset_id] = (span.first, span.last) if had is None else (
                min(had[0], span.first), max(had[1], span.last))
        if not pending:
            if self._spool is not None:
                self._spool.forget_drops(lines)
            return
        gaps = [Gap(asset_id, t0, t1 + timedelta(microseconds=1), _DROPPED_REASON)
                for asset_id, (t0, t1) in sorted(pending.items())]
        try:
            record_gaps(self._connection(), gaps)
        except psycopg.Error as exc:
            if not self._lost(exc):
                log.error("cannot record the gaps of rows dropped at the spool cap assets=%d from=%s error=%s: "
                          "fill them with `coinpulse backfill`", len(gaps), min(g.start for g in gaps).isoformat(),
                          _one_line(exc))
                if self._spool is not None:
                    self._spool.forget_drops(lines)  # logged for the user; retrying would only repeat the error
                return
            self.note_dropped([DroppedSpan(g.asset_id, g.start, g.end - timedelta(microseconds=1), 0) for g in gaps])
            self._connection_failed(exc)
            self._database_failed()
            return
        if self._spool is not None:
            self._spool.forget_drops(lines)
        log.warning("gaps recorded for rows dropped at the spool cap assets=%d from=%s to=%s reason=%s: the gap "
                    "worker backfills them", len(gaps), min(g.start for g in gaps).isoformat(),
                    max(g.end for g in gaps).isoformat(), _DROPPED_REASON)
        if self._on_gaps is not None:
            self._on_gaps()

    def _to_spool(self, batch: Sequence[Record]) -> bool:
        assert self._spool is not None
        try:
            for i in range(0, len(batch), self._batch_size):
                self._spool.append(batch[i:i + self._batch_size])
        except (SpoolError, OSError) as exc:
            self._spool_failed("write", exc)
            return False
        return True

    def _spool_failed(self, what: str, exc: BaseException) -> None:
        self._spool_retry_at = time.monotonic() + 5.0
        log.error("spool %s failed, retrying in 5s (rows stay in memory meanwhile): %s", what, exc)

    def _database_failed(self) -> None:
        now = time.monotonic()
        delay = self._backoff.next_delay()
        self._retry_at = now + delay
        spool = "" if self._spool is None else f" spool_rows={self._spool.rows} spool_bytes={self._spool.size_bytes}"
        where = "to the spool" if self._spool is not None else "in memory"
        if self._down_since is None:
            self._down_since = self._down_logged = now
            log.warning("database unreachable, keeping batches %s, retrying in delay=%.1fs error=%s",
                        where, delay, self.last_error)
        elif now - self._down_logged >= self._log_every:
            self._down_logged = now
            log.warning("database unreachable for %.0fs, keeping batches %s rows_waiting=%d%s error=%s",
                        now - self._down_since, where, len(self._queue) + len(self._pending), spool,
                        self.last_error)

    def _database_back(self) -> None:
        if self._down_since is not None:
            spool = self._spool
            log.info("database back after %.1fs%s", time.monotonic() - self._down_since,
                     "" if spool is None or spool.empty else
                     f": draining the spool rows={spool.rows} bytes={spool.size_bytes}")
        self._retry_at = self._down_since = None
        self._backoff.reset()

    def _finished(self, deadline: float | None) -> bool:
        """While stopping: True when nothing is left to write (or what is left went to the spool)."""
        left = len(self._pending) + len(self._queue)
        if left == 0:
            return True
        out_of_time = deadline is not None and time.monotonic() >= deadline
        if self._spool is not None and (self.database_down or out_of_time):
            why = "the database is away" if self.database_down else "the shutdown grace period ran out"
            spooled = self.spool_remaining()
            log.warning("writer stopping: %s, spooled rows=%d to %s for the next run", why, spooled,
                        self._spool.directory)
            return True
        if out_of_time:
            log.error("writer stopping with rows_unwritten=%d: the shutdown grace period ran out", left)
            self._metrics.rows_dropped.labels(reason="shutdown").inc(left)
            return True
        return False

    def spool_remaining(self) -> int:
        """Put the batch in hand and everything queued into the spool; the rows spooled. Rows the spool refuses
        are counted as dropped (reason ``shutdown``). Safe to call from another thread at shutdown (a row
        spooled twice is stored once)."""
        spooled = 0
        batch, self._pending = self._pending, []
        while batch or (batch := self._queue.take_all(self._batch_size)):
            if self._spool is not None and self._to_spool(batch):
                spooled += len(batch)
            else:
                log.error("rows_unwritten=%d at shutdown: the spool refused them", len(batch))
                self._metrics.rows_dropped.labels(reason="shutdown").inc(len(batch))
            batch = []
        return spooled

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _attempt(self, batch: Sequence[Record], ticks: TickRows | None = None) -> bool:
        try:
            self.write(batch, ticks)
        except psycopg.Error as exc:
            if self._lost(exc):
                self._connection_failed(exc)
                return False
            # Not the connection: the database refused some row. Find it, keep all the others.
            self._metrics.write_errors.labels(kind="data").inc()
            rows = [*(ticks.ticks() if ticks is not None else ()), *batch]
            log.error("batch refused rows=%d error=%s: writing row by row", len(rows), _one_line(exc))
            try:
                self._write_one_by_one(rows)
            except psycopg.Error as exc2:
                self._connection_failed(exc2)
                return False
        self._backoff.reset()
        return True

    def _lost(self, exc: psycopg.Error) -> bool:
        """Is ``exc`` about the connection (retry the batch) rather than the data?"""
        conn = self._conn
        return (isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError)
                or conn is None or conn.closed or conn.broken)

    def _connection_failed(self, exc: psycopg.Error) -> None:
        self._metrics.write_errors.labels(kind="connection").inc()
        self._metrics.db_up.set(0)
        self.last_error = _one_line(exc)
        self.close()

    def _write_one_by_one(self, batch: Sequence[Record]) -> None:
        for record in batch:
            try:
                self.write([record])
            except psycopg.Error as exc:
                if self._lost(exc):
                    raise
                reason = f"db_{exc.sqlstate or 'error'}"
                self._metrics.rows_rejected.labels(reason=reason).inc()
                log.error("row refused by the database table=%s reason=%s error=%s",
                          TABLES[type(record)].name, reason, _one_line(exc))

    # -- one batch ----------------------------------------------------------------------------------------

    def _connection(self) -> Connection:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(make_conninfo(self._url, **writer_connect_params(self._url)),
                                         application_name="coinpulse-writer", connect_timeout=10)
            self._metrics.db_up.set(1)
            self.last_success = self._now()
            log.info("writer connected to the database")
        return self._conn

    def write(self, batch: Sequence[Record], ticks: TickRows | None = None) -> dict[str, int]:
        """Commit one batch (one transaction) of ``batch`` and the ready-made tick rows ``ticks``; returns rows
        inserted per table. Raises OperationalError when the connection is lost (the caller retries the same
        batch)."""
        groups: dict[type[Any], list[Record]] = {}
        for record in batch:
            groups.setdefault(type(record), []).append(record)
        started = time.perf_counter()
        conn = self._connection()
        written: dict[str, int] = {}
        new_assets: set[str] = set()
        new_exchanges: set[str] = set()
        with conn.transaction():
            cur = conn.cursor()
            new_assets = self._upsert_assets(cur, groups, ticks)
            new_exchanges = self._upsert_exchanges(cur, groups)
            if ticks is not None:
                rows_in = ticks
                written[TABLES[Tick].name] = self._copy_idempotent(
                    cur, TABLES[Tick], ticks.rows, lambda table: copy_tick_rows(cur, table, rows_in))
            for kind, rows in groups.items():
                name = TABLES[kind].name
                written[name] = written.get(name, 0) + self._write_table(cur, TABLES[kind], rows)
        elapsed = time.perf_counter() - started
        self._known_assets |= new_assets
        self._known_exchanges |= new_exchanges
        self.last_success = now = self._now()
        self._metrics.db_up.set(1)
        self._metrics.write_batch_seconds.observe(elapsed)
        for table, count in written.items():
            self._metrics.rows_written.labels(table=table).inc(count)
        live = [t.time.timestamp() for t in groups.get(Tick, ()) if t.source != "history"]
        if ticks is not None and ticks.live_lo is not None:
            live.append(ticks.live_lo / 1e6)
        if live:
            self._metrics.tick_to_commit_seconds.observe(max(0.0, now - min(live)))
        if self._on_committed is not None:
            self._on_committed(written)
        return written

    def _upsert_assets(self, cur: psycopg.Cursor[tuple[Any, ...]], groups: dict[type[Any], list[Any]],
                       ticks: TickRows | None) -> set[str]:
        snapshots: dict[str, AssetSnapshot] = {}
        for snap in groups.get(AssetSnapshot, ()):
            if snap.asset_id not in snapshots or snap.time > snapshots[snap.asset_id].time:
                snapshots[snap.asset_id] = snap
        if snapshots:
            cur.executemany(_UPSERT_ASSETS, [
                (s.asset_id, s.symbol, s.name, s.rank, s.explorer, s.time, s.time) for s in snapshots.values()])
        # Ticks of assets never seen before get a dimension row, so thresholds and joins can refer to them.
        span: dict[str, tuple[datetime, datetime]] = {}
        if ticks is not None:
            for asset_id, (first, last, _) in ticks.assets.items():
                if asset_id not in self._known_assets and asset_id not in snapshots:
                    span[asset_id] = (utc_from_micros(first), utc_from_micros(last))
        for tick in groups.get(Tick, ()):
            if tick.asset_id in self._known_assets or tick.asset_id in snapshots:
                continue
            t0, t1 = span.get(tick.asset_id, (tick.time, tick.time))
            span[tick.asset_id] = (min(t0, tick.time), max(t1, tick.time))
        if span:
            ids = list(span)
            cur.execute(_TOUCH_ASSETS, (ids, [span[i][0] for i in ids], [span[i][1] for i in ids]))
        return set(snapshots) | set(span)

    def _upsert_exchanges(self, cur: psycopg.Cursor[tuple[Any, ...]],
                          groups: dict[type[Any], list[Any]]) -> set[str]:
        exchanges: dict[str, ExchangeSnapshot] = {}
        for ex in groups.get(ExchangeSnapshot, ()):
            if ex.exchange_id not in exchanges or ex.time > exchanges[ex.exchange_id].time:
                exchanges[ex.exchange_id] = ex
        if exchanges:
            cur.executemany(_UPSERT_EXCHANGES, [
                (e.exchange_id, e.name, e.rank, e.exchange_url, e.time, e.time) for e in exchanges.values()])
        # Markets can name exchanges no exchange snapshot has shown yet.
        unseen: dict[str, datetime] = {}
        for market in groups.get(MarketSnapshot, ()):
            if market.exchange_id not in self._known_exchanges and market.exchange_id not in exchanges:
                unseen.setdefault(market.exchange_id, market.time)
        if unseen:
            cur.execute(_TOUCH_EXCHANGES, (list(unseen), list(unseen.values())))
        return set(exchanges) | set(unseen)

    def _write_table(self, cur: psycopg.Cursor[tuple[Any, ...]], spec: TableSpec, rows: Sequence[Any]) -> int:
        return self._copy_idempotent(cur, spec, len(rows), lambda table: copy_rows(cur, table, spec, rows))

    def _copy_idempotent(self, cur: psycopg.Cursor[tuple[Any, ...]], spec: TableSpec, n: int,
                         copy: Callable[[sql.Composable], None]) -> int:
        """``copy(table)`` the ``n`` rows into ``spec``'s table, or, if some are stored already, into a staging
        table and from there ``ON CONFLICT DO NOTHING``; the rows inserted."""
        target = sql.Identifier("coinpulse", spec.name)
        try:
            with cur.connection.transaction():  # savepoint: a duplicate key undoes only this COPY
                copy(target)
            return n
        except psycopg.errors.UniqueViolation:
            pass
        stage = sql.Identifier(f"stage_{spec.name}")
        cur.execute(sql.SQL(
            "CREATE TEMPORARY TABLE IF NOT EXISTS {} (LIKE {} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
        ).format(stage, target))
        copy(stage)
        cur.execute(sql.SQL("INSERT INTO {} SELECT * FROM {} ON CONFLICT DO NOTHING").format(target, stage))
        inserted = cur.rowcount
        log.debug("replayed rows table=%s rows=%d inserted=%d", spec.name, n, inserted)
        return inserted


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
