"""Snapshot leadership: of several collector replicas, exactly one runs the REST snapshot schedule.

The leader is whoever holds a PostgreSQL *session* advisory lock (``pg_try_advisory_lock``) on a
connection dedicated to it. The database is the one thing every replica already shares, and a session lock
is released by the server the moment that session ends, so:

- a leader that exits (SIGTERM) unlocks and closes, and the next replica to try takes over;
- a leader whose process dies loses its connection and with it the lock at once; one whose machine or
  network dies is dropped by the server's TCP keepalives (set to about 25 s on this session);
- the other replicas try again every ``retry_interval`` seconds (default 10), so a takeover happens within
  about ``retry_interval`` after the lock is freed;
- the leader re-checks every ``retry_interval`` that its session still holds the lock (a query on
  ``pg_locks``); if the connection broke, it stops its snapshot jobs and waits one interval before
  trying again, to let another replica take over.

Between a leader losing its session and noticing (at most one check interval), two replicas may both poll
snapshots. That costs API credits, not data: snapshot rows are keyed by CoinCap's response time and the
writer is idempotent, so nothing is stored twice.

Time comes from an injected clock and connections from an injected factory, so tests run two "replicas"
in one process against a real database.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg

from collector.errors import DatabaseError
from collector.settings import redact_url

__all__ = ["LOCK_KEY", "Connect", "SnapshotLeader", "leader_connection"]

log = logging.getLogger(__name__)

Connect = Callable[[], "psycopg.Connection[Any]"]
"""Opens a new autocommit connection (raising ``DatabaseError`` or ``psycopg.Error`` when it cannot)."""

# A positive bigint derived from a fixed name: the same in every replica and every release.
LOCK_KEY = int.from_bytes(hashlib.sha256(b"coinpulse:snapshot-leader").digest()[:8], "big") >> 1

TRY_LOCK = "SELECT pg_try_advisory_lock(%s)"
UNLOCK = "SELECT pg_advisory_unlock(%s)"
# A bigint advisory key shows in pg_locks as classid = high 32 bits, objid = low 32 bits, objsubid = 1.
HOLDS_LOCK = """
SELECT EXISTS (
    SELECT FROM pg_locks
    WHERE locktype = 'advisory' AND pid = pg_backend_pid() AND granted
      AND classid::bigint = %s AND objid::bigint = %s AND objsubid = 1
)
"""
# Let the server notice a dead leader (machine or network gone) within ~25 s and free the lock.
SERVER_KEEPALIVES = ("SET tcp_keepalives_idle = 10", "SET tcp_keepalives_interval = 5",
                     "SET tcp_keepalives_count = 3")


def leader_connection(url: str, *, application_name: str = "coinpulse-leader") -> Connect:
    """A factory of dedicated leader connections to ``url``, with keepalives on both ends."""

    def connect() -> psycopg.Connection[Any]:
        try:
            conn = psycopg.connect(
                url, autocommit=True, connect_timeout=5, application_name=application_name,
                keepalives=1, keepalives_idle=10, keepalives_interval=5, keepalives_count=3,
                tcp_user_timeout=30_000)
        except psycopg.OperationalError as exc:
            reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            raise DatabaseError(f"cannot connect to the database at {redact_url(url)}: {reason}") from None
        for statement in SERVER_KEEPALIVES:
            conn.execute(statement)
        return conn

    return connect


class SnapshotLeader:
    """Seeks, holds and gives up the snapshot lock. ``poll()`` steps once; ``run()`` drives a job with it."""

    def __init__(self, connect: Connect, *, key: int = LOCK_KEY, retry_interval: float = 10.0,
                 clock: Callable[[], float] = time.monotonic, name: str = "snapshots") -> None:
        if retry_interval <= 0:
            raise ValueError("retry_interval must be positive")
        self._connect = connect
        self._key = key
        self._retry = retry_interval
        self._clock = clock
        self._name = name
        self._conn: psycopg.Connection[Any] | None = None
        self._leader = False
        self._next_try = -math.inf
        self._last_problem: str | None = None

    @property
    def is_leader(self) -> bool:
        return self._leader

    @property
    def backend_pid(self) -> int | None:
        """The server process of the dedicated connection (None without one)."""
        return None if self._conn is None or self._conn.closed else self._conn.info.backend_pid

    def seconds_to_next_try(self) -> float:
        return max(0.0, self._next_try - self._clock())

    def poll(self) -> bool:
        """One step: confirm the lock when leading, else try for it when due. True while this replica leads."""
        if self._leader:
            if self._holds_lock():
                return True
            self._step_down("the leader connection lost its lock")
            self._next_try = self._clock() + self._retry  # let another replica take over first
            return False
        now = self._clock()
        if now < self._next_try:
            return False
        self._next_try = now + self._retry
        try:
            if self._conn is None or self._conn.closed:
                self._conn = self._connect()
            row = self._conn.execute(TRY_LOCK, (self._key,)).fetchone()
        except (psycopg.Error, DatabaseError) as exc:
            self._close()
            self._problem(f"cannot try the leader lock: {_one_line(exc)}")
            return False
        self._last_problem = None
        if row is not None and row[0]:
            self._leader = True
            log.info("leadership acquired role=%s backend_pid=%s", self._name, self.backend_pid)
        return self._leader

    def release(self) -> None:
        """Give up leadership (if held) and close the dedicated connection."""
        if self._leader and self._conn is not None and not self._conn.closed:
            try:
                self._conn.execute(UNLOCK, (self._key,))
            except psycopg.Error as exc:
                log.debug("unlock failed (the session end frees it) error=%s", _one_line(exc))
        if self._leader:
            self._leader = False
            log.info("leadership released role=%s", self._name)
        self._close()

    def run(self, target: Callable[[threading.Event], None], stop: threading.Event) -> None:
        """Run ``target(event)`` while this replica leads, until ``stop`` is set.

        ``event`` is set when leadership is lost or on ``stop``; ``target`` must return soon after. Whenever
        leadership is lost this goes back to seeking it. An exception from ``target`` gives up the lock and
        is raised here; ``target`` returning by itself ends the run.
        """
        try:
            while not stop.is_set():
                if not self.poll():
                    stop.wait(max(self.seconds_to_next_try(), 0.05))
                    continue
                if self._lead(target, stop):
                    return
        finally:
            self.release()

    # -- internals ------------------------------------------------------------------------------------------

    def _lead(self, target: Callable[[threading.Event], None], stop: threading.Event) -> bool:
        """Run ``target`` until leadership is lost or ``stop``; True when ``target`` ended by itself."""
        lost = threading.Event()
        failure: list[BaseException] = []

        def work() -> None:
            try:
                target(lost)
            except BaseException as exc:
                failure.append(exc)

        worker = threading.Thread(target=work, name=f"{self._name}-leader", daemon=True)
        worker.start()
        while not stop.wait(self._retry) and worker.is_alive() and self.poll():
            pass
        ended_by_itself = not worker.is_alive() and not stop.is_set() and not lost.is_set()
        lost.set()
        worker.join()
        if failure:
            raise failure[0]
        return ended_by_itself

    def _holds_lock(self) -> bool:
        if self._conn is None or self._conn.closed:
            return False
        try:
            row = self._conn.execute(HOLDS_LOCK, (self._key >> 32, self._key & 0xFFFFFFFF)).fetchone()
        except psycopg.Error as exc:
            self._problem(f"leader connection failed: {_one_line(exc)}")
            return False
        return bool(row is not None and row[0])

    def _step_down(self, why: str) -> None:
        self._leader = False
        self._close()
        log.warning("leadership lost role=%s reason=%s", self._name, why)

    def _close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
        self._conn = None

    def _problem(self, message: str) -> None:
        if message != self._last_problem:  # say each new problem once, not every retry
            log.warning("%s role=%s retry_in=%.0fs", message, self._name, self._retry)
        self._last_problem = message


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[-1] if text else type(exc).__name__
