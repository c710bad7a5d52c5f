"""Where every source hands over what it parsed: rejects counted, ticks counted, rows queued.

One object shared by all sources, so that counting and queueing are the same whatever the feed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from collector.buffer import RecordQueue
from collector.coincap.models import ParseResult, Record, Reject, Tick
from collector.metrics import Metrics

__all__ = ["Intake"]

log = logging.getLogger(__name__)


class Intake:
    def __init__(self, queue: RecordQueue, metrics: Metrics, *, log_every: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._queue = queue
        self._metrics = metrics
        self._log_every = log_every
        self._clock = clock
        self._lock = threading.Lock()
        self._last_logged: dict[str, float] = {}
        self._unlogged: dict[str, int] = {}

    def accept(self, result: ParseResult[Any]) -> bool:
        """Count the rejects, queue the records. False when the queue had no room (rows counted as dropped)."""
        for reject in result.rejects:
            self.reject(reject)
        return self.submit(result.records)

    def submit(self, records: Sequence[Record]) -> bool:
        if not records:
            return True
        newest: float | None = None
        ticks_by_source: dict[str, int] = {}
        for record in records:
            if type(record) is Tick:
                ticks_by_source[record.source] = ticks_by_source.get(record.source, 0) + 1
                if record.source != "history":
                    stamp = record.time.timestamp()
                    if newest is None or stamp > newest:
                        newest = stamp
        for source, n in ticks_by_source.items():
            self._metrics.ticks_received.labels(source=source).inc(n)
        if newest is not None:
            self._metrics.saw_tick(newest)
        if self._queue.put(records):
            return True
        self._metrics.rows_dropped.labels(reason="queue_full").inc(len(records))
        self._log_limited("queue_full", "queue full (capacity=%d rows): dropped rows=%d; is the database down?",
                          self._queue.capacity, len(records))
        return False

    def reject(self, reject: Reject) -> None:
        self._metrics.rows_rejected.labels(reason=reject.reason).inc()
        self._log_limited(f"reject:{reject.reason}", "rejected reason=%s detail=%s", reject.reason,
                          reject.detail[:200])

    def _log_limited(self, key: str, msg: str, *args: object) -> None:
        """Log the first occurrence, then at most once per ``log_every`` seconds with a count of the rest."""
        now = self._clock()
        with self._lock:
            last = self._last_logged.get(key)
            if last is not None and now - last < self._log_every:
                self._unlogged[key] = self._unlogged.get(key, 0) + 1
                return
            self._last_logged[key] = now
            suppressed = self._unlogged.pop(key, 0)
        log.warning("%s suppressed_since_last=%d", msg % args, suppressed)
