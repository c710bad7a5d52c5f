"""Wires the collector from Settings: sources -> intake -> queue -> writer, plus the HTTP server.

Nothing else builds objects from Settings (cli.py does, for one-shot commands).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from types import FrameType
from typing import Any, Literal

from collector.backoff import Backoff
from collector.budget import CreditPlanner, PollSpec
from collector.buffer import RecordQueue
from collector.coincap.models import ParseResult, Tick
from collector.coincap.parse import parse_price_message, ticks_from_assets
from collector.coincap.rest import CoinCapRest
from collector.coincap.stream import PriceStream
from collector.db.connect import connect, require_schema
from collector.demo import DemoFeed
from collector.errors import CoinCapError, ConfigError, DatabaseError, NoWebSocketAccess, SchemaNotMigrated
from collector.gaps import BackfillWorker, GapTracker
from collector.history import HistoryTiers
from collector.http import HealthReport, HttpServer
from collector.intake import Intake
from collector.leader import SnapshotLeader, leader_connection
from collector.metrics import Metrics
from collector.scheduler import Job, Scheduler
from collector.settings import Settings
from collector.sharding import Shard
from collector.spool import Spool
from collector.writer import BatchWriter

__all__ = ["Collector", "credit_planner", "run"]

log = logging.getLogger(__name__)


def _utcnow() -> datetime:
    return datetime.now(UTC)


_EXCHANGES_ESTIMATE = 150  # CoinCap lists about this many exchanges; observed sizes replace the estimate
_RATES_ESTIMATE = 180


def _asset_rows(settings: Settings) -> tuple[int, int]:
    """Rows and calls of one /assets poll (explicit ids in one call; ALL in pages of 2,000)."""
    if settings.assets == "ALL":
        return settings.rest_asset_limit, -(-settings.rest_asset_limit // 2000)
    return len(settings.assets), 1


def price_poll(settings: Settings) -> PollSpec:
    rows, calls = _asset_rows(settings)
    return PollSpec.estimate("prices", settings.rest_price_interval, rows, "asset", calls)


def credit_planner(settings: Settings, *, websocket: bool) -> CreditPlanner | None:
    """The credit plan of a live feed (None for the demo feed, which calls nothing)."""
    if settings.resolved_feed == "demo":
        return None
    rows, calls = _asset_rows(settings)
    polls = [
        PollSpec.estimate("assets", settings.snapshot_assets_interval, rows, "asset", calls),
        PollSpec.estimate("exchanges", settings.snapshot_exchanges_interval, _EXCHANGES_ESTIMATE, "exchange"),
        PollSpec.estimate("markets", settings.snapshot_markets_interval, settings.markets_limit, "market"),
        PollSpec.estimate("rates", settings.snapshot_rates_interval, _RATES_ESTIMATE, "rate"),
    ]
    if not websocket:
        polls.append(price_poll(settings))
    # Gap backfills get COINPULSE_BACKFILL_SHARE of what the stream leaves (none when they are off).
    shard = Shard(settings.replica_index, settings.replicas)
    tracked = -(-settings.rest_asset_limit // settings.replicas) if settings.assets == "ALL" else len(
        shard.select(settings.assets))
    return CreditPlanner(settings.credit_budget or None, polls, websocket=websocket,
                         backfill_share=settings.backfill_share, backfill=settings.backfill != "off",
                         gap_assets=tracked)


class Collector:
    """The running collector. ``start()``, then ``shutdown()``; ``health()`` at any time."""

    def __init__(self, settings: Settings, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.feed = settings.resolved_feed
        # The spool (README "Reliability") takes batches while the database is away and rows the full queue
        # cannot take; the writer drains it when the database answers.
        self.spool = Spool(settings.spool_dir, max_bytes=settings.spool_max_bytes, metrics=self.metrics)
        self.queue = RecordQueue(settings.queue_max_rows, overflow=self.spool.append)
        self.intake = Intake(self.queue, self.metrics)
        self.writer = BatchWriter(
            settings.database_url.get_secret_value(), self.queue, self.metrics,
            batch_size=settings.batch_size, batch_max_age=settings.batch_max_age, spool=self.spool,
            drain_rows=settings.spool_drain_rows, on_gaps=self._wake_gap_worker)
        # Ticks the spool drops at its cap become gaps (reason spool_cap) once the database answers.
        self.spool.on_drop = self.writer.note_dropped
        self.http = HttpServer(settings.metrics_host, settings.metrics_port, self.metrics, self.health,
                               self.health_details)
        self._sources_stop = threading.Event()
        self._writer_stop = threading.Event()
        self._drain_deadline: float | None = None
        self._threads: dict[str, threading.Thread] = {}
        self._failures: dict[str, str] = {}
        self._started = time.monotonic()
        self.rest: CoinCapRest | None = None
        if self.feed != "demo":
            key = settings.require_api_key(f"COINPULSE_FEED={self.feed} reads CoinCap")
            self.rest = CoinCapRest(settings.coincap_rest_url, key, timeout=settings.http_timeout,
                                    metrics=self.metrics)
        # Scale-out (README "Deploy"): this replica streams its shard of the assets; only the leader polls snapshots.
        self.shard = Shard(settings.replica_index, settings.replicas)
        self._share: tuple[str, ...] | None = None
        self.leader: SnapshotLeader | None = None
        if not self.shard.whole:
            if self.feed == "demo":
                raise ConfigError("COINPULSE_REPLICAS: the demo feed runs in a single replica; "
                                  "set COINPULSE_REPLICAS=1, or COINCAP_API_KEY for a live feed")
            self.leader = SnapshotLeader(leader_connection(settings.database_url.get_secret_value()))
        for feed in ("ws", "rest", "demo"):
            self.metrics.feed_info.labels(feed=feed).set(1 if feed == self.feed else 0)
        self.planner = credit_planner(settings, websocket=self.feed == "ws")
        if self.planner is not None:
            self._log_plan("credit plan")
        self.gaps, self.backfill = self._gap_worker()

    def _gap_worker(self) -> tuple[GapTracker | None, BackfillWorker | None]:
        """Gaps (README "Gaps and backfill"): a live feed's outages and restarts are recorded in ingest_gaps;
        the worker fills them from CoinCap history (COINPULSE_BACKFILL: auto = live feeds only)."""
        s, url = self.settings, self.settings.database_url.get_secret_value()
        fill = s.backfill == "on" or (s.backfill == "auto" and self.feed != "demo")
        if self.feed == "demo" and not fill:
            return None, None
        try:
            tiers = HistoryTiers.parse(s.history_intervals)
        except ValueError as exc:
            raise ConfigError(f"COINPULSE_HISTORY_INTERVALS: {exc}") from None
        wake = threading.Event()
        streamed = None if s.assets == "ALL" else self.shard.select(s.assets)
        tracker = None if self.feed == "demo" else GapTracker(
            streamed, started_at=_utcnow(), min_gap=s.gap_min_seconds, on_gap=wake.set,
            asset_lookback=s.gap_asset_lookback,
            first_grace=s.ws_watchdog if self.feed == "ws" else s.rest_price_interval)
        source, sink = None, None
        if fill:  # its own REST client, so its credits are not counted against a poll's plan
            source = CoinCapRest(s.coincap_rest_url, s.require_api_key("COINPULSE_BACKFILL fills gaps from CoinCap"),
                                 timeout=s.http_timeout, metrics=self.metrics, sleep=self._sources_stop.wait)
            sink = BatchWriter(url, RecordQueue(1), Metrics(), on_committed=self._count_backfilled)
        polled = self.planner.interval("prices") if self.planner and self.planner.knows("prices") else 0.0
        return tracker, BackfillWorker(
            url, tracker, source, sink, self.metrics, tiers=tiers, points_per_request=s.history_points_per_request,
            fill=fill, delay=s.backfill_delay, restart_assets=streamed, restart_check=tracker is not None,
            restart_min_gap=max(s.gap_min_seconds, polled), owns=self.shard.owns, wake=wake, planner=self.planner,
            max_age=timedelta(days=s.retention_days) if s.retention_days else None)

    def _wake_gap_worker(self) -> None:
        """The writer recorded gaps (rows the spool dropped): fill them without waiting for the next pass."""
        if self.backfill is not None:
            self.backfill.wake.set()

    def _count_backfilled(self, written: dict[str, int]) -> None:
        for table, count in written.items():
            self.metrics.rows_written.labels(table=table).inc(count)

    def _on_price_frame(self, text: str, at: datetime) -> None:
        result = parse_price_message(text, at)
        self.intake.accept(result)
        if self.gaps is not None:
            self.gaps.message(at, (t.asset_id for t in result.records))  # each asset's gap starts at its last tick

    # -- sources ------------------------------------------------------------------------------------------

    def _asset_ids(self) -> list[str] | None:
        return None if self.settings.assets == "ALL" else list(self.settings.assets)

    def _fetch_assets(self) -> ParseResult[Any]:
        assert self.rest is not None
        ids = self._asset_ids()
        if ids is None:
            return self.rest.all_assets(self.settings.rest_asset_limit)
        return self.rest.assets(ids=ids, limit=len(ids))

    def _my_share(self) -> tuple[str, ...]:
        """This replica's assets, resolved once; with ALL, of the top COINPULSE_REST_ASSET_LIMIT from REST."""
        if self._share is None:
            assert self.rest is not None
            universe = self.settings.assets if self.settings.assets != "ALL" else [
                a.asset_id for a in self.rest.all_assets(self.settings.rest_asset_limit).records]
            self._share = self.shard.select(universe)
            log.info("replica %s streams %d of %d assets: %s", self.shard, len(self._share), len(universe),
                     ",".join(self._share) or "none (more replicas than assets?)")
        return self._share

    def _fetch_prices(self) -> ParseResult[Tick]:
        try:
            if self.shard.whole:
                result = self._fetch_assets()
            else:
                assert self.rest is not None
                mine = self._my_share()
                result = self.rest.assets(ids=mine, limit=len(mine)) if mine else ParseResult([], [])
        except CoinCapError:
            if self.gaps is not None:  # no prices until a poll works again: a gap
                self.gaps.disconnected(_utcnow(), "poll_failed")
            raise
        ticks = ticks_from_assets(result.records, now := _utcnow(), source="rest")
        if self.gaps is not None:
            self.gaps.message(now, (t.asset_id for t in ticks))
        return ParseResult(ticks, result.rejects)

    def snapshot_jobs(self) -> list[Job]:
        assert self.rest is not None
        rest, s = self.rest, self.settings
        return [
            Job("assets", s.snapshot_assets_interval, self._fetch_assets),
            Job("exchanges", s.snapshot_exchanges_interval, lambda: rest.exchanges(limit=2000)),
            Job("markets", s.snapshot_markets_interval, lambda: rest.markets(limit=s.markets_limit)),
            Job("rates", s.snapshot_rates_interval, rest.rates),
        ]

    def _log_plan(self, what: str) -> None:
        assert self.planner is not None
        level = logging.INFO if self.planner.fits else logging.WARNING
        for line in self.planner.describe():
            log.log(level, "%s %s", what, line)
        if not self.planner.fits:
            log.warning("the credit budget (COINPULSE_CREDIT_BUDGET=%d a month) cannot cover this configuration: "
                        "polls run at most once a day; set your plan's credits or poll fewer COINPULSE_ASSETS",
                        self.settings.credit_budget)

    def _scheduler(self, jobs: list[Job]) -> Scheduler:
        rest = self.rest
        meter = None if rest is None else (lambda: rest.credits_used)
        return Scheduler(jobs, self.intake, planner=self.planner, credit_meter=meter)

    def _price_polling(self) -> Scheduler:
        return self._scheduler([Job("prices", self.settings.rest_price_interval, self._fetch_prices)])

    def _stream_then_poll(self, stop: threading.Event) -> None:
        s = self.settings
        assets: tuple[str, ...] | Literal["ALL"] = s.assets
        while not self.shard.whole and not stop.is_set():
            try:
                assets = self._my_share()
                break
            except CoinCapError as exc:
                log.warning("cannot resolve this replica's assets, retrying in 30s: %s", exc)
                stop.wait(30.0)
        if not assets or stop.is_set():
            stop.wait()  # stopped, or this replica's share is empty: nothing to stream
            return
        stream = PriceStream(
            s.coincap_ws_url, s.require_api_key("the WebSocket needs it"), assets,
            self._on_price_frame, metrics=self.metrics, watchdog=s.ws_watchdog, backoff=Backoff(initial=1.0, cap=60.0),
            on_disconnect=None if self.gaps is None else self.gaps.disconnected)
        try:
            stream.run(stop)
            return
        except NoWebSocketAccess:
            log.warning("the API key's plan has no WebSocket access: polling REST /assets for prices "
                        "every %.0fs instead (COINPULSE_REST_PRICE_INTERVAL)", s.rest_price_interval)
        self.metrics.feed_info.labels(feed="ws").set(0)
        self.metrics.feed_info.labels(feed="rest").set(1)
        if self.planner is not None:
            self.planner.set_websocket(False)
            self.planner.add(price_poll(s))
            self._log_plan("credit plan without WebSocket")
        self._price_polling().run(stop)

    def _sources(self) -> dict[str, Callable[[threading.Event], None]]:
        s = self.settings
        if self.feed == "demo":
            demo = DemoFeed(self.intake, seed=s.demo_seed, tick_interval=s.demo_tick_interval,
                            snapshot_interval=s.demo_snapshot_interval, markets_limit=s.markets_limit)
            return {"demo": demo.run}
        snapshots, leader = self._scheduler(self.snapshot_jobs()).run, self.leader
        sources: dict[str, Callable[[threading.Event], None]] = {
            "snapshots": snapshots if leader is None else lambda stop: leader.run(snapshots, stop)}
        if self.feed == "ws":
            sources["prices"] = self._stream_then_poll
        else:
            sources["prices"] = self._price_polling().run
        return sources

    # -- lifecycle ----------------------------------------------------------------------------------------

    def _guard(self, name: str, target: Callable[[threading.Event], None], stop: threading.Event) -> None:
        try:
            target(stop)
        except Exception as exc:
            self._failures[name] = f"{type(exc).__name__}: {exc}"
            log.exception("thread stopped thread=%s", name)

    def _spawn(self, name: str, target: Callable[[threading.Event], None], stop: threading.Event) -> None:
        thread = threading.Thread(target=self._guard, args=(name, target, stop), name=name, daemon=True)
        self._threads[name] = thread
        thread.start()

    def preflight(self) -> None:
        """Refuse to start on an unmigrated database; only warn when it is unreachable (the writer retries)."""
        try:
            with connect(self.settings.database_url.get_secret_value(), connect_timeout=5) as conn:
                require_schema(conn)
        except SchemaNotMigrated:
            raise
        except DatabaseError as exc:
            log.warning("%s; starting anyway, the writer keeps retrying", exc)

    def start(self) -> None:
        self._started = time.monotonic()
        log.info("collector starting feed=%s assets=%s", self.feed,
                 "ALL" if self.settings.assets == "ALL" else ",".join(self.settings.assets))
        self.http.start()
        self._spawn("writer", lambda stop: self.writer.run(stop, lambda: self._drain_deadline), self._writer_stop)
        for name, target in self._sources().items():
            self._spawn(name, target, self._sources_stop)
        if self.backfill is not None:
            self._spawn("gaps", self.backfill.run, self._sources_stop)

    def shutdown(self) -> None:
        """Within COINPULSE_SHUTDOWN_GRACE: stop the sources, write what is queued to the database (to the
        spool at once while the database is away, and whatever is left when time runs short), stop serving."""
        grace = self.settings.shutdown_grace
        deadline = time.monotonic() + grace
        log.info("collector stopping: draining rows_waiting=%d grace=%.0fs", len(self.queue), grace)
        self._sources_stop.set()
        sources_by = time.monotonic() + min(5.0, grace / 4)
        for name, thread in self._threads.items():
            if name != "writer":
                thread.join(max(0.0, sources_by - time.monotonic()))
        reserve = min(3.0, grace * 0.3)  # to spool what the database did not take, and to stop serving
        self._drain_deadline = deadline - reserve
        self._writer_stop.set()
        writer = self._threads.get("writer")
        if writer is not None:
            writer.join(max(0.0, deadline - reserve / 2 - time.monotonic()))
            if writer.is_alive():
                log.warning("the writer is stuck in a database call at the end of the grace period: "
                            "spooling what it has not written")
        if len(self.queue) or (writer is not None and writer.is_alive()):  # rows put late, or a stuck writer
            self.writer.spool_remaining()
        self.http.stop()
        self.spool.close()
        log.info("collector stopped rows_left=%d spool_rows=%d", len(self.queue), self.spool.rows)

    def health(self) -> HealthReport:
        failing: HealthReport = {}
        for name, thread in self._threads.items():
            if not thread.is_alive() and not self._sources_stop.is_set():
                failing[f"thread:{name}"] = self._failures.get(name, "stopped")
        if not self.writer.connected:
            failing["database"] = f"not connected: {self.writer.last_error or 'no connection yet'}"
        up_for = time.monotonic() - self._started
        newest = self.metrics.newest_tick_at()
        stale = self.settings.stale_after
        if self.planner is not None and self.planner.knows("prices"):  # polled prices: allow two poll periods
            stale = max(stale, 2 * self.planner.interval("prices") + self.settings.http_timeout)
        if newest is None:
            if up_for > stale:
                failing["ticks"] = f"no price tick received in {up_for:.0f}s since start"
        elif time.time() - newest > stale:
            failing["ticks"] = f"newest price tick is {time.time() - newest:.0f}s old (limit {stale:.0f}s)"
        if len(self.queue) > 0.9 * self.queue.capacity:
            failing["queue"] = f"queue {len(self.queue)}/{self.queue.capacity} rows: the writer is falling behind"
        if self.spool.size_bytes > 0.9 * self.spool.max_bytes:
            failing["spool"] = (f"spool {self.spool.size_bytes}/{self.spool.max_bytes} bytes "
                                "(COINPULSE_SPOOL_MAX_BYTES): at the cap its oldest rows are dropped")
        return failing

    def health_details(self) -> dict[str, Any]:
        """Informational keys of /healthz: the spool's state (``empty``; ``spooling`` while the database is
        away; ``draining`` once it is back), rows and bytes."""
        spool = self.spool
        state = "empty" if spool.empty else "spooling" if self.writer.database_down else "draining"
        return {"spool": {"state": state, "rows": spool.rows, "bytes": spool.size_bytes}}


def run(settings: Settings) -> int:
    """`coinpulse run`: until SIGTERM or SIGINT, then drain and exit 0."""
    collector = Collector(settings)
    collector.preflight()
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("signal received signal=%s", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    collector.start()
    while not stop.wait(1.0):
        pass
    collector.shutdown()
    return 0
