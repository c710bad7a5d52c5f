"""The bounded in-memory queue between the sources and the writer, bounded by rows (not messages).

When rows do not fit, they go to ``overflow`` (the on-disk spool, collector/spool.py) if one is given, so a
burst or a slow database costs disk, not memory and not data.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence

from collector.coincap.models import Record

__all__ = ["RecordQueue"]

log = logging.getLogger(__name__)


class RecordQueue:
    """Rows from many producer threads to one consumer, never holding more than ``capacity`` rows.

    ``put`` does not block: when the rows do not fit they are handed to ``overflow`` (which returns True when
    it kept them, e.g. on disk); without one, or when it fails, ``put`` returns False and the caller counts a
    drop. A producer that would rather wait than overflow (a benchmark, an import) calls ``wait_for_room``
    first. The consumer takes batches by size or age, whichever comes first.
    """

    def __init__(self, capacity: int, clock: Callable[[], float] = time.monotonic,
                 overflow: Callable[[Sequence[Record]], bool] | None = None) -> None:
        if capacity < 1:
            raise ValueError("capacity must be positive")
        self.capacity = capacity
        self.overflow = overflow
        self._clock = clock
        self._overflow_logged = float("-inf")
        self._items: deque[tuple[float, Sequence[Record]]] = deque()
        self._rows = 0
        lock = threading.Lock()
        self._cond = threading.Condition(lock)  # rows arrived (the consumer waits on it)
        self._room = threading.Condition(lock)  # rows were taken (producers in wait_for_room wait on it)

    def __len__(self) -> int:
        return self._rows

    def put(self, records: Sequence[Record]) -> bool:
        if not records:
            return True
        with self._cond:
            fits = self._rows + len(records) <= self.capacity
            if fits:
                self._items.append((self._clock(), records))
                self._rows += len(records)
                self._cond.notify()
        if fits:
            return True
        if self.overflow is None:
            return False
        try:
            return self.overflow(records)  # outside the queue's lock: the spool fsyncs
        except Exception as exc:  # a full or broken disk must not stop the source that called put
            now = self._clock()
            if now - self._overflow_logged >= 60.0:
                self._overflow_logged = now
                log.error("queue full and its overflow failed: rows=%d are dropped (logged once a minute) error=%s",
                          len(records), exc)
            return False

    def wait_for_room(self, rows: int, timeout: float | None = None) -> bool:
        """Block until ``rows`` more rows fit (or the queue is empty, for a batch larger than the capacity);
        False if ``timeout`` s passed first. With one producer a ``put`` right after it does not overflow."""
        with self._room:
            return self._room.wait_for(lambda: self._rows == 0 or self._rows + rows <= self.capacity, timeout)

    def take_due(self, max_rows: int, max_age: float) -> list[Record]:
        """Without waiting: a batch if ``max_rows`` rows are queued or the oldest has waited ``max_age`` s,
        else nothing (the writer uses this while it also drains the spool)."""
        with self._cond:
            if not self._items:
                return []
            if self._rows < max_rows and self._clock() - self._items[0][0] < max_age:
                return []
            return self._take(max_rows)

    def take_all(self, max_rows: int) -> list[Record]:
        """Without waiting: up to ``max_rows`` queued rows, oldest first."""
        with self._cond:
            return self._take(max_rows)

    def get_batch(self, max_rows: int, max_age: float, wait: float) -> list[Record]:
        """Up to ``max_rows`` rows. Waits up to ``wait`` s for a first row; once there is one, returns when
        ``max_rows`` are there or the oldest row has waited ``max_age`` s, whichever is first."""
        deadline = self._clock() + wait
        with self._cond:
            while not self._items:
                remaining = deadline - self._clock()
                if remaining <= 0:
                    return []
                self._cond.wait(remaining)
            oldest = self._items[0][0]
            while self._rows < max_rows:
                remaining = oldest + max_age - self._clock()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            return self._take(max_rows)

    def _take(self, max_rows: int) -> list[Record]:
        batch: list[Record] = []
        while self._items and len(batch) < max_rows:
            stamp, records = self._items[0]
            room = max_rows - len(batch)
            if len(records) <= room:
                self._items.popleft()
                batch.extend(records)
            else:
                batch.extend(records[:room])
                self._items[0] = (stamp, records[room:])
        self._rows -= len(batch)
        if batch:
            self._room.notify_all()
        return batch
