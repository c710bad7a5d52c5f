"""The batching writer against a real TimescaleDB: every row once, replays add nothing, dimensions kept."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import psycopg
import pytest

from collector.buffer import RecordQueue
from collector.coincap.models import Tick
from collector.metrics import Metrics
from collector.writer import BatchWriter
from records import T0, asset_snapshot, exchange_snapshot, market_snapshot, rate_snapshot, ticks

Conn = psycopg.Connection[tuple[object, ...]]


def count(db: Conn, table: str) -> int:
    row = db.execute(f"SELECT count(*) FROM coinpulse.{table}").fetchone()
    assert row is not None
    return int(str(row[0]))


def written(metrics: Metrics, table: str) -> float:
    return metrics.registry.get_sample_value("coinpulse_rows_written_total", {"table": table}) or 0.0


def make_writer(url: str, metrics: Metrics | None = None, capacity: int = 10_000) -> BatchWriter:
    return BatchWriter(url, RecordQueue(capacity), metrics or Metrics(), batch_size=1000, batch_max_age=0.05)


def test_batch_of_every_kind_lands_once(db_url: str, db: Conn) -> None:
    metrics = Metrics()
    writer = make_writer(db_url, metrics)
    batch = [*ticks(10), asset_snapshot(), exchange_snapshot(), market_snapshot(), rate_snapshot()]
    assert writer.write(batch) == {"price_ticks": 10, "asset_snapshots": 1, "exchange_snapshots": 1,
                                   "market_snapshots": 1, "rate_snapshots": 1}
    assert writer.write(batch) == {"price_ticks": 0, "asset_snapshots": 0, "exchange_snapshots": 0,
                                   "market_snapshots": 0, "rate_snapshots": 0}
    writer.close()
    for table, n in (("price_ticks", 10), ("asset_snapshots", 1), ("exchange_snapshots", 1),
                     ("market_snapshots", 1), ("rate_snapshots", 1)):
        assert count(db, table) == n
        assert written(metrics, table) == n
    row = db.execute("SELECT time, asset_id, price_usd, source FROM coinpulse.price_ticks ORDER BY time LIMIT 1")
    assert row.fetchone() == (T0, "bitcoin", 100.0, "ws")
    snap = db.execute("SELECT max_supply, rank, volume_usd_24hr FROM coinpulse.asset_snapshots").fetchone()
    assert snap == (None, 1, 1.5e10)
    market = db.execute("SELECT trades_count_24hr, updated FROM coinpulse.market_snapshots").fetchone()
    assert market == (120_000, T0 - timedelta(seconds=10))


def test_partly_replayed_batch_adds_only_new_rows(db_url: str, db: Conn) -> None:
    metrics = Metrics()
    writer = make_writer(db_url, metrics)
    first = ticks(100)
    writer.write(first[:60])
    assert writer.write(first[40:]) == {"price_ticks": 40}
    # duplicates inside one batch too
    assert writer.write([*first[:5], *first[:5], *ticks(3, start=T0 + timedelta(hours=1))]) == {"price_ticks": 3}
    writer.close()
    assert count(db, "price_ticks") == 103
    assert written(metrics, "price_ticks") == 103
    dupes = db.execute("SELECT count(*) FROM (SELECT asset_id, time FROM coinpulse.price_ticks "
                       "GROUP BY 1, 2 HAVING count(*) > 1) d").fetchone()
    assert dupes == (0,)


def test_dimensions_upserted_with_first_and_last_seen(db_url: str, db: Conn) -> None:
    writer = make_writer(db_url)
    later = T0 + timedelta(minutes=5)
    writer.write([asset_snapshot(time=later, rank=2), asset_snapshot(time=T0, rank=1)])
    writer.write([Tick(T0 - timedelta(minutes=1), "newcoin", 1.0, "ws"), market_snapshot("kraken")])
    writer.write([asset_snapshot(time=T0 - timedelta(minutes=3), rank=7)])  # an older snapshot, replayed late
    writer.write([exchange_snapshot("kraken", time=later)])
    writer.close()
    assets = {r[0]: r[1:] for r in db.execute(
        "SELECT asset_id, rank, first_seen, last_seen, name FROM coinpulse.assets")}
    assert assets["bitcoin"] == (2, T0 - timedelta(minutes=3), later, "Bitcoin")
    assert assets["newcoin"][1:3] == (T0 - timedelta(minutes=1), T0 - timedelta(minutes=1))
    exchanges = {r[0]: r[1:] for r in db.execute(
        "SELECT exchange_id, name, first_seen, last_seen FROM coinpulse.exchanges")}
    assert exchanges["kraken"] == ("Kraken", T0, later)


def test_database_refusing_a_row_keeps_the_others(db_url: str, db: Conn) -> None:
    metrics = Metrics()
    writer = make_writer(db_url, metrics)
    bad = Tick(T0, "bitcoin", -5.0, "ws")  # the parser never makes one; the table's CHECK refuses it
    assert writer._attempt([*ticks(4, start=T0 + timedelta(seconds=1)), bad])
    writer.close()
    assert count(db, "price_ticks") == 4
    assert metrics.registry.get_sample_value("coinpulse_rows_rejected_total", {"reason": "db_23514"}) == 1


def test_run_loop_batches_by_age_and_drains_on_stop(db_url: str, db: Conn) -> None:
    metrics = Metrics()
    queue = RecordQueue(10_000)
    writer = BatchWriter(db_url, queue, metrics, batch_size=1000, batch_max_age=0.05)
    stop = threading.Event()
    thread = threading.Thread(target=writer.run, args=(stop, lambda: time.monotonic() + 10))
    thread.start()
    queue.put(ticks(5))
    deadline = time.monotonic() + 5
    while count(db, "price_ticks") < 5 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert count(db, "price_ticks") == 5  # a partial batch is committed by age, without waiting for size
    for i in range(20):
        queue.put(ticks(50, start=T0 + timedelta(hours=1 + i)))
    stop.set()
    thread.join(15)
    assert not thread.is_alive()
    assert count(db, "price_ticks") == 5 + 20 * 50
    assert metrics.registry.get_sample_value("coinpulse_queue_depth") == 0
    assert (metrics.registry.get_sample_value("coinpulse_tick_to_commit_seconds_count") or 0) >= 2


def test_unreachable_database_keeps_the_batch_and_says_so() -> None:
    metrics = Metrics()
    queue = RecordQueue(1000)
    writer = BatchWriter("postgresql://x@127.0.0.1:1/none", queue, metrics)
    batch = ticks(3)
    assert writer._attempt(batch) is False
    assert metrics.registry.get_sample_value("coinpulse_database_up") == 0
    assert metrics.registry.get_sample_value("coinpulse_write_errors_total", {"kind": "connection"}) == 1
    assert writer.last_error and "connection" in writer.last_error.lower()


class TestRecordQueue:
    def test_bounded_by_rows(self) -> None:
        q = RecordQueue(10)
        assert q.put(ticks(6))
        assert not q.put(ticks(5))  # would exceed: refused whole, nothing taken
        assert q.put(ticks(4))
        assert len(q) == 10

    def test_batch_by_size_splits_lists(self) -> None:
        q = RecordQueue(100)
        q.put(ticks(7))
        q.put(ticks(7))
        first = q.get_batch(5, max_age=10, wait=0)
        assert len(first) == 5 and len(q) == 9
        assert len(q.get_batch(100, max_age=0, wait=0)) == 9

    def test_batch_by_age_with_injected_clock(self) -> None:
        now = [0.0]
        q = RecordQueue(100, clock=lambda: now[0])
        q.put(ticks(3))
        now[0] = 1.0  # the oldest row is older than max_age: no waiting for a full batch
        assert len(q.get_batch(1000, max_age=0.5, wait=0)) == 3
        assert q.get_batch(1000, max_age=0.5, wait=0) == []

    def test_rejects_bad_capacity(self) -> None:
        with pytest.raises(ValueError):
            RecordQueue(0)

    def test_wait_for_room_blocks_a_producer_until_the_consumer_takes(self) -> None:
        q = RecordQueue(10)
        assert q.put(ticks(8))
        assert q.wait_for_room(2, timeout=0) and not q.wait_for_room(3, timeout=0)
        got: list[bool] = []
        producer = threading.Thread(target=lambda: got.append(q.wait_for_room(5)))
        producer.start()
        producer.join(0.05)
        assert producer.is_alive() and got == []  # still waiting: 8 + 5 > 10
        assert len(q.take_all(4)) == 4
        producer.join(10)
        assert got == [True] and q.put(ticks(5))  # now it fits: no overflow, no drop
        assert len(q) == 9

    def test_wait_for_room_lets_a_batch_bigger_than_the_queue_through_once_empty(self) -> None:
        q = RecordQueue(10)
        assert q.wait_for_room(50, timeout=0)  # empty: waiting could never help (put then overflows, as before)
        q.put(ticks(1))
        assert not q.wait_for_room(50, timeout=0)
