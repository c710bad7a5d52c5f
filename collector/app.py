"""Wires the collector from Settings: sources -> intake -> queue -> writer, plus the HTTP server.

Nothing else builds objects from Settings (cli.py does, for one-shot commands).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
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
from collector.http import HealthReport, HttpServer
from collector.intake import Intake
from collector.leader import SnapshotLeader, leader_connection
from collector.metrics import Metrics
from collector.scheduler import Job, Scheduler
from collector.settings import Settings
from collector.sharding import Shard
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
    return CreditPlanner(settings.credit_budget or None, polls, websocket=websocket)


class Collector:
    """The running collector. ``start()``, then ``shutdown()``; ``health()`` at any time."""

    def __init__(self, settings: Settings, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.feed = settings.resolved_feed
        self.queue = RecordQueue(settings.queue_max_rows)
        self.intake = Intake(self.queue, self.metrics)
        self.writer = BatchWriter(
            settings.database_url.get_secret_value(), self.queue, self.metrics,
            batch_size=settings.batch_size, batch_max_age=settings.batch_max_age)
        self.http = HttpServer(settings.metrics_host, settings.metrics_port, self.metrics, self.health)
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
        if self.shard.whole:
            result = self._fetch_assets()
        else:
            assert self.rest is not None
            mine = self._my_share()
            result = self.rest.assets(ids=mine, limit=len(mine)) if mine else ParseResult([], [])
        return ParseResult(ticks_from_assets(result.records, _utcnow(), source="rest"), result.rejects)

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
            lambda text, at: self.intake.accept(parse_price_message(text, at)),
            metrics=self.metrics, watchdog=s.ws_watchdog, backoff=Backoff(initial=1.0, cap=60.0))
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

    def shutdown(self) -> None:
        """Stop the sources, write what is queued (within the grace period), stop serving."""
        grace = self.settings.shutdown_grace
        log.info("collector stopping: draining rows_waiting=%d grace=%.0fs", len(self.queue), grace)
        self._sources_stop.set()
        for name, thread in self._threads.items():
            if name != "writer":
                thread.join(min(5.0, grace / 2))
        self._drain_deadline = time.monotonic() + grace * 0.8
        self._writer_stop.set()
        writer = self._threads.get("writer")
        if writer is not None:
            writer.join(grace)
        self.http.stop()
        log.info("collector stopped rows_left=%d", len(self.queue))

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
        return failing


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
