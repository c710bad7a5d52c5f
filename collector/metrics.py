"""All Prometheus metrics of the collector, in one object with its own registry.

Build a fresh ``Metrics()`` per collector (and per test); pass it to the pieces that count.
Names are part of the contract (DESIGN.md "Metrics and health"); dashboards and alert rules use them.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["Metrics"]

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.ticks_received = Counter(
            "coinpulse_ticks_received", "Valid price ticks parsed from a source", ["source"], registry=r
        )
        self.rows_written = Counter(
            "coinpulse_rows_written", "Rows committed to the database, per table", ["table"], registry=r
        )
        self.rows_rejected = Counter(
            "coinpulse_rows_rejected", "Values refused before writing, per reason", ["reason"], registry=r
        )
        self.rows_dropped = Counter(
            "coinpulse_rows_dropped",
            "Rows discarded without being written, per reason (queue_full, spool_cap, spool_torn, "
            "spool_corrupt, shutdown)",
            ["reason"],
            registry=r,
        )
        self.write_batch_seconds = Histogram(
            "coinpulse_write_batch_seconds", "Time to write and commit one batch", buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.tick_to_commit_seconds = Histogram(
            "coinpulse_tick_to_commit_seconds",
            "From receipt of the oldest tick in a batch to its commit",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.write_errors = Counter(
            "coinpulse_write_errors", "Failed batch writes (retried), per kind", ["kind"], registry=r
        )
        self.queue_depth = Gauge("coinpulse_queue_depth", "Rows waiting in the in-memory queue", registry=r)
        self.queue_capacity = Gauge("coinpulse_queue_capacity", "Capacity of the in-memory queue", registry=r)
        self.rows_waiting = Gauge(
            "coinpulse_rows_waiting", "Rows not yet committed (queue plus the batch being written)", registry=r
        )
        self.spool_bytes = Gauge("coinpulse_spool_bytes", "Bytes in the on-disk spool", registry=r)
        self.spool_rows = Gauge("coinpulse_spool_rows", "Rows in the on-disk spool waiting to be written",
                                registry=r)
        self.spool_rows_spooled = Counter(
            "coinpulse_spool_rows_spooled", "Rows written to the on-disk spool (database away or queue full)",
            registry=r)
        self.spool_rows_drained = Counter(
            "coinpulse_spool_rows_drained", "Rows from the on-disk spool committed to the database", registry=r)
        self.db_up = Gauge("coinpulse_database_up", "1 when the writer's last database round trip worked",
                           registry=r)
        self.stream_connected = Gauge(
            "coinpulse_stream_connected", "1 while the price stream is connected", registry=r
        )
        self.stream_reconnects = Counter(
            "coinpulse_stream_reconnects", "Price stream reconnects, per reason", ["reason"], registry=r
        )
        self.newest_tick_age = Gauge(
            "coinpulse_newest_tick_age_seconds", "Seconds since the newest tick was received", registry=r
        )
        self.api_requests = Counter(
            "coinpulse_api_requests", "CoinCap REST requests, per endpoint and HTTP status", ["endpoint", "status"],
            registry=r,
        )
        self.api_credits = Counter(
            "coinpulse_api_credits_used", "CoinCap API credits spent (estimated from response sizes)", registry=r
        )
        self.open_gaps = Gauge("coinpulse_open_gaps", "Ingest gaps not yet backfilled", registry=r)
        self.gap_fills_deferred = Counter(
            "coinpulse_gap_fills_deferred", "Gap backfills put off because the backfill credit allowance was spent",
            registry=r)
        self.backfill_credits_left = Gauge(
            "coinpulse_backfill_credits_left",
            "Credits the gap backfill allowance has left in the last 24 hours (NaN without a credit budget)",
            registry=r)
        self.feed_info = Gauge("coinpulse_feed_info", "The price feed in use (1 for the active one)", ["feed"],
                               registry=r)
        self.alert_notifications = Counter(
            "coinpulse_alert_notifications",
            "Alerts received on POST /alerts (Grafana's webhook), per status: firing, resolved; invalid = a body "
            "that is not a webhook notification", ["status"], registry=r)
        self._newest_tick: float | None = None
        self._clock: Callable[[], float] = time.time
        self.newest_tick_age.set_function(self._tick_age)

    def saw_tick(self, received_at: float) -> None:
        if self._newest_tick is None or received_at > self._newest_tick:
            self._newest_tick = received_at

    def newest_tick_at(self) -> float | None:
        return self._newest_tick

    def _tick_age(self) -> float:
        if self._newest_tick is None:
            return float("nan")
        return max(0.0, self._clock() - self._newest_tick)
