"""The bounded in-memory queue between the sources and the writer, bounded by rows (not messages)."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence

from collector.coincap.models import Record

__all__ = ["RecordQueue"]


class RecordQueue:
    """Rows from many producer threads to one consumer, never holding more than ``capacity`` rows.

    ``put`` does not block: when the rows do not fit it returns False and the caller decides (count a
    drop, or spool them). The consumer takes batches by size or age, whichever comes first.
    """

    def __init__(self, capacity: int, clock: Callable[[], float] = time.monotonic) -> None:
        if capacity < 1:
            raise ValueError("capacity must be positive")
        self.capacity = capacity
        self._clock = clock
        self._items: deque[tuple[float, Sequence[Record]]] = deque()
        self._rows = 0
        self._cond = threading.Condition()

    def __len__(self) -> int:
        return self._rows

    def put(self, records: Sequence[Record]) -> bool:
        if not records:
            return True
        with self._cond:
            if self._rows + len(records) > self.capacity:
                return False
            self._items.append((self._clock(), records))
            self._rows += len(records)
            self._cond.notify()
        return True

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
        return batch
