"""Gaps (collector/gaps.py): found on reconnects and restarts, recorded in ingest_gaps, backfilled from the fake
CoinCap's /assets/{id}/history at the finest interval for their age into a real TimescaleDB, marked done with
the row count, rollups refreshed. The end-to-end runs of `coinpulse run` are in tests/test_gaps_run.py."""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg import sql

from collector.backoff import Backoff
from collector.budget import CreditPlanner
from collector.buffer import RecordQueue
from collector.coincap.rest import CoinCapRest
from collector.coincap.stream import PriceStream
from collector.db.rollups import align_down
from collector.gaps import BackfillWorker, Gap, GapTracker, restart_gaps, uncovered
from collector.history import HistoryTiers
from collector.metrics import Metrics
from collector.writer import BatchWriter
from conftest import materialization_table
from fake_coincap import FakeCoinCap
from test_watchdog import FakeClock, wait_until

Conn = psycopg.Connection[tuple[Any, ...]]
T0 = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
TIERS = HistoryTiers.parse("m1:1d,m5:7d,h1:90d,d1")
MINUTE = timedelta(minutes=1)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


# -- the tracker (no I/O) ----------------------------------------------------------------------------------

def test_a_reconnect_is_a_gap_from_the_last_message_to_the_first_after_it() -> None:
    woken: list[int] = []
    tracker = GapTracker(["bitcoin", "ethereum"], started_at=at(0), first_grace=30,
                         on_gap=lambda: woken.append(1))
    tracker.message(at(1))
    tracker.message(at(10))
    tracker.disconnected(at(40), "watchdog")
    tracker.disconnected(at(42), "error")  # failed reconnect attempts: still the same outage
    assert tracker.take() == [] and woken == []
    tracker.message(at(50))
    assert tracker.take() == [Gap("bitcoin", at(10), at(50), "watchdog"), Gap("ethereum", at(10), at(50), "watchdog")]
    assert woken == [1]
    tracker.message(at(51))
    assert tracker.take() == []


def test_the_first_connection_counts_when_it_is_late_or_fails() -> None:
    quick = GapTracker(["bitcoin"], started_at=at(0), first_grace=30)
    quick.message(at(5))
    assert quick.take() == []  # connecting took 5 s: normal
    late = GapTracker(["bitcoin"], started_at=at(0), first_grace=30)
    late.message(at(45))
    assert late.take() == [Gap("bitcoin", at(0), at(45), "start")]
    failed = GapTracker(["bitcoin"], started_at=at(0), first_grace=30)
    failed.disconnected(at(3), "closed")
    failed.message(at(8))
    assert failed.take() == [Gap("bitcoin", at(0), at(8), "closed")]


def test_shutdown_and_the_switch_to_rest_polling_open_no_gap() -> None:
    tracker = GapTracker(["bitcoin"], started_at=at(0), first_grace=30)
    tracker.message(at(1))
    tracker.disconnected(at(2), "stop")
    tracker.disconnected(at(2), "unauthorized")
    tracker.message(at(9))
    assert tracker.take() == []


def test_with_all_assets_the_tracked_ones_are_those_seen_or_known() -> None:
    tracker = GapTracker(None, started_at=at(0), first_grace=30)
    assert tracker.tracks_all
    tracker.message(at(1), ["bitcoin", "solana"])
    tracker.message(at(2), ["bitcoin"])
    tracker.track(["dogecoin"])
    tracker.disconnected(at(3), "closed")
    tracker.message(at(7), ["bitcoin"])
    assert sorted(g.asset_id for g in tracker.take()) == ["bitcoin", "dogecoin", "solana"]
    assert tracker.tracked() == ("bitcoin", "solana", "dogecoin")


def test_gaps_shorter_than_the_minimum_are_not_recorded() -> None:
    tracker = GapTracker(["bitcoin"], started_at=at(0), first_grace=30, min_gap=10)
    tracker.message(at(1))
    tracker.disconnected(at(2), "closed")
    tracker.message(at(8))  # 7 s
    tracker.disconnected(at(9), "closed")
    tracker.message(at(20))  # 12 s
    assert tracker.take() == [Gap("bitcoin", at(8), at(20), "closed")]


def test_each_assets_gap_starts_at_its_own_last_tick_within_the_lookback() -> None:
    tracker = GapTracker(["bitcoin", "ethereum", "solana", "dogecoin"], started_at=at(0), first_grace=30,
                         asset_lookback=600)
    tracker.message(at(5), ["bitcoin", "ethereum", "solana"])
    tracker.message(at(100), ["ethereum"])  # solana is quiet from now on
    tracker.message(at(900), ["bitcoin", "ethereum"])  # dogecoin never ticked
    tracker.message(at(1000), ["bitcoin"])
    tracker.disconnected(at(1030), "watchdog")
    tracker.message(at(1040), ["ethereum"])  # the stream is back: every asset's gap ends here
    assert tracker.take() == [
        Gap("bitcoin", at(1000), at(1040), "watchdog"),  # the stream's last message was its own
        Gap("ethereum", at(900), at(1040), "watchdog"),  # its own last tick, 100 s before the stream's
        Gap("solana", at(400), at(1040), "watchdog"),  # last tick at 5 s: bounded to 600 s before 1000 s
        Gap("dogecoin", at(400), at(1040), "watchdog"),  # no tick since the start: the earliest start allowed
    ]
    # the message that closed the outage counts as ethereum's tick; bitcoin's last is still 1000 s
    tracker.disconnected(at(1050), "closed")
    tracker.message(at(1060), ["bitcoin"])
    assert {g.asset_id: g.start for g in tracker.take()} == {
        "bitcoin": at(1000), "ethereum": at(1040), "solana": at(1040 - 600), "dogecoin": at(1040 - 600)}


def test_an_assets_gap_never_starts_before_the_collector_did_and_min_gap_judges_the_outage() -> None:
    tracker = GapTracker(["bitcoin", "ethereum"], started_at=at(0), first_grace=30, asset_lookback=3600,
                         min_gap=20)
    tracker.message(at(10), ["bitcoin", "ethereum"])
    tracker.message(at(300), ["bitcoin"])
    tracker.disconnected(at(310), "closed")
    tracker.message(at(315), ["bitcoin"])  # a 15 s outage: under min_gap, nothing, however quiet ethereum was
    assert tracker.take() == []
    tracker.disconnected(at(320), "closed")
    tracker.message(at(345), ["bitcoin"])  # 30 s
    assert tracker.take() == [Gap("bitcoin", at(315), at(345), "closed"), Gap("ethereum", at(10), at(345), "closed")]
    quiet = GapTracker(["ethereum"], started_at=at(0), first_grace=30, asset_lookback=3600)
    quiet.message(at(1), ["bitcoin"])
    quiet.disconnected(at(50), "error")
    quiet.message(at(60))
    assert quiet.take() == [Gap("ethereum", at(0), at(60), "error")]  # not before the start (the restart check's)
    # lookback 0: every asset's gap starts at the stream's last message, as with one asset
    flat = GapTracker(["bitcoin", "ethereum"], started_at=at(0), first_grace=30)
    flat.message(at(1), ["ethereum"])
    flat.message(at(9), ["bitcoin"])
    flat.disconnected(at(20), "closed")
    flat.message(at(25))
    assert [g.start for g in flat.take()] == [at(9), at(9)]


def test_gaps_waiting_for_the_database_are_bounded() -> None:
    tracker = GapTracker(["bitcoin"], started_at=at(0), first_grace=30)
    tracker.put_back([Gap("bitcoin", at(i), at(i + 1), "closed") for i in range(100_001)])
    assert tracker.dropped == 1
    kept = tracker.take()
    assert len(kept) == 100_000 and kept[0].start == at(1)  # the oldest went


def test_uncovered_ranges() -> None:
    assert uncovered(at(0), at(100), []) == [(at(0), at(100))]
    assert uncovered(at(0), at(100), [(at(-5), at(10)), (at(20), at(30)), (at(25), at(40)), (at(90), at(200))]) == [
        (at(10), at(20)), (at(40), at(90))]
    assert uncovered(at(0), at(100), [(at(0), at(100))]) == []


# -- restart gaps in the database --------------------------------------------------------------------------

def insert_ticks(db: Conn, rows: list[tuple[datetime, str, float, str]]) -> None:
    with db.cursor() as cur:
        cur.executemany("INSERT INTO coinpulse.price_ticks (time, asset_id, price_usd, source) VALUES (%s, %s, %s, %s)",
                        rows)
        cur.executemany("INSERT INTO coinpulse.assets (asset_id) VALUES (%s) ON CONFLICT DO NOTHING",
                        [(a,) for a in dict.fromkeys(r[1] for r in rows)])


def test_restart_gaps_start_at_each_assets_last_stored_tick(db: Conn) -> None:
    start = T0
    insert_ticks(db, [
        (start - timedelta(minutes=10), "bitcoin", 1.0, "ws"),
        (start - timedelta(minutes=9), "bitcoin", 1.0, "ws"),
        (start + timedelta(minutes=1), "bitcoin", 1.0, "ws"),  # written by the new run: not before the start
        (start - timedelta(minutes=5), "ethereum", 1.0, "rest"),
        (start - timedelta(minutes=4), "ethereum", 1.0, "history"),  # any source but demo counts as stored
        (start - timedelta(minutes=1), "solana", 1.0, "demo"),  # demo data is no reference
        (start - timedelta(minutes=3), "dogecoin", 1.0, "history"),  # imported, never streamed
    ])
    listed = ["bitcoin", "ethereum", "solana", "cardano", "dogecoin"]
    assert restart_gaps(db, listed, started_at=start) == [
        Gap("bitcoin", start - timedelta(minutes=9), start, "restart"),
        Gap("ethereum", start - timedelta(minutes=4), start, "restart"),
        Gap("dogecoin", start - timedelta(minutes=3), start, "restart"),
    ]
    # ALL: the stored assets that were streamed or polled (dogecoin never was), owned by this replica
    assert [g.asset_id for g in restart_gaps(db, None, started_at=start)] == ["bitcoin", "ethereum"]
    assert [g.asset_id for g in restart_gaps(db, None, started_at=start, owns=lambda a: a != "bitcoin")] == [
        "ethereum"]
    # shorter than the minimum (e.g. the REST poll interval): nothing was missed
    assert [g.asset_id for g in restart_gaps(db, listed, started_at=start, min_gap=300)] == ["bitcoin"]
    # never further back than the raw retention
    assert restart_gaps(db, ["bitcoin"], started_at=start, max_age=timedelta(minutes=5)) == [
        Gap("bitcoin", start - timedelta(minutes=5), start, "restart")]
    # a gap recorded by an earlier restart that ends later than the last tick: the new gap starts at its end
    db.execute("INSERT INTO coinpulse.ingest_gaps (asset_id, gap_start, gap_end, reason, status) "
               "VALUES ('bitcoin', %s, %s, 'restart', 'open')", (start - timedelta(minutes=9), start - MINUTE))
    assert restart_gaps(db, ["bitcoin"], started_at=start) == [Gap("bitcoin", start - MINUTE, start, "restart")]


# -- backfill against the fake -----------------------------------------------------------------------------

@pytest.fixture
def fake() -> Iterator[FakeCoinCap]:
    with FakeCoinCap() as server:
        yield server


@pytest.fixture
def rest(fake: FakeCoinCap) -> Iterator[CoinCapRest]:
    with CoinCapRest(fake.rest_url, fake.api_key, timeout=5, sleep=lambda s: False, max_attempts=2) as client:
        yield client


@pytest.fixture
def writer(db_url: str) -> Iterator[BatchWriter]:
    w = BatchWriter(db_url, RecordQueue(1), Metrics())
    yield w
    w.close()


def points(start: datetime, end: datetime, step: timedelta, base: float = 50000.0) -> list[dict[str, Any]]:
    out, t, i = [], start, 0
    while t < end:
        out.append({"priceUsd": f"{base + i:.2f}", "time": ms(t)})
        t, i = t + step, i + 1
    return out


def gap_rows(db: Conn) -> list[tuple[Any, ...]]:
    return db.execute("SELECT asset_id, gap_start, gap_end, reason, status, rows_filled, error, filled_at IS NOT NULL "
                      "FROM coinpulse.ingest_gaps ORDER BY id").fetchall()


def materialized_candles(db: Conn, asset: str, lo: datetime, hi: datetime) -> list[tuple[Any, ...]]:
    """Rows of candles_1m's materialization hypertable (what a refresh wrote, not real-time aggregation)."""
    return db.execute(sql.SQL("SELECT bucket, open, high, low, close, ticks FROM {} WHERE asset_id = %s "
                              "AND bucket >= %s AND bucket < %s ORDER BY bucket").format(
        materialization_table(db, "candles_1m")), (asset, lo, hi)).fetchall()


def expected_candles(ticks: list[tuple[datetime, float]]) -> list[tuple[Any, ...]]:
    buckets: dict[datetime, list[tuple[datetime, float]]] = {}
    for t, p in sorted(ticks):
        buckets.setdefault(align_down(t, MINUTE), []).append((t, p))
    return [(b, v[0][1], max(p for _, p in v), min(p for _, p in v), v[-1][1], len(v))
            for b, v in sorted(buckets.items())]


def worker_for(db_url: str, tracker: GapTracker | None, rest: CoinCapRest, writer: BatchWriter, metrics: Metrics,
               **kwargs: Any) -> BackfillWorker:
    options: dict[str, Any] = {"tiers": TIERS, "points_per_request": 500, "delay": 0.0,
                               "restart_assets": None if tracker is None else tracker.tracked()}
    options.update(kwargs)
    return BackfillWorker(db_url, tracker, rest, writer, metrics, **options)


@pytest.mark.full_edition
def test_a_restart_gap_is_recorded_then_filled_at_m1_and_the_rollups_refreshed(
        db: Conn, db_url: str, fake: FakeCoinCap, rest: CoinCapRest, writer: BatchWriter) -> None:
    started = align_down(datetime.now(UTC), MINUTE) - timedelta(minutes=10)  # all buckets closed: materialized
    last = started - timedelta(minutes=20) + timedelta(seconds=17)
    insert_ticks(db, [(last - MINUTE, "bitcoin", 49000.0, "ws"), (last, "bitcoin", 49500.0, "ws")])
    history = points(last - timedelta(minutes=5, seconds=17), started + timedelta(minutes=5), MINUTE)
    fake.history["bitcoin"] = history
    inside = [(datetime.fromtimestamp(p["time"] / 1000, UTC), float(p["priceUsd"])) for p in history]
    inside = [(t, p) for t, p in inside if last <= t < started]
    assert len(inside) == 19  # the minutes after the last tick, before the start
    metrics = Metrics()
    tracker = GapTracker(["bitcoin"], started_at=started, first_grace=30)
    worker = worker_for(db_url, tracker, rest, writer, metrics)
    try:
        worker.step()
        # the restart gap, filled: rows_filled = the history points stored in it
        assert gap_rows(db) == [("bitcoin", last, started, "restart", "done", 19, None, True)]
        sent = fake.requests_to("/assets/bitcoin/history")
        assert [(r.query["interval"], int(r.query["start"]), int(r.query["end"])) for r in sent] == [
            ("m1", ms(last), ms(started) - 1)]  # 30 minutes old: the finest interval, m1
        stored = db.execute("SELECT time, price_usd FROM coinpulse.price_ticks WHERE source = 'history' "
                            "ORDER BY time").fetchall()
        assert stored == inside
        # the rollup windows were re-materialized: candles_1m's own table has the right candles
        ticks = [(last - MINUTE, 49000.0), (last, 49500.0), *inside]
        assert materialized_candles(db, "bitcoin", last - timedelta(hours=1), started + MINUTE) == \
            expected_candles(ticks)
        assert metrics.registry.get_sample_value("coinpulse_open_gaps") == 0
        assert db.execute("SELECT asset_id, range_start, range_end, intervals, points FROM coinpulse.history_imports"
                          ).fetchall() == [("bitcoin", last, started, "m1", 19)]
        # the restart check runs once; nothing new: no more requests
        worker.step()
        assert len(fake.requests_to("/assets/bitcoin/history")) == 1 and len(gap_rows(db)) == 1
    finally:
        worker._close()


@pytest.mark.full_edition
def test_a_restart_gap_shrinks_to_what_the_spool_did_not_bring(db: Conn, db_url: str, fake: FakeCoinCap,
                                                                rest: CoinCapRest, writer: BatchWriter) -> None:
    """The previous run's spool drains after the restart check: the ticks it brings into the gap are kept, and
    the backfill starts after the last of them."""
    now = [align_down(datetime.now(UTC), MINUTE) - timedelta(minutes=5)]
    started, last = now[0], now[0] - timedelta(minutes=20)
    insert_ticks(db, [(last, "bitcoin", 49500.0, "ws")])
    fake.history["bitcoin"] = points(last, started, MINUTE)
    tracker = GapTracker(["bitcoin"], started_at=started, first_grace=30)
    worker = worker_for(db_url, tracker, rest, writer, Metrics(), delay=60.0, wall_clock=lambda: now[0])
    try:
        worker.step()
        assert [r[1:5] for r in gap_rows(db)] == [(last, started, "restart", "open")]
        spooled = last + timedelta(minutes=12, seconds=30)
        insert_ticks(db, [(spooled, "bitcoin", 49600.0, "ws")])  # drained from the spool meanwhile
        now[0] += timedelta(minutes=2)
        worker.step()
    finally:
        worker._close()
    assert [r[1:6] for r in gap_rows(db)] == [(spooled, started, "restart", "done", 7)]
    sent = fake.requests_to("/assets/bitcoin/history")
    assert [int(r.query["start"]) for r in sent] == [ms(spooled)]
    assert db.execute("SELECT min(time) FROM coinpulse.price_ticks WHERE source = 'history'").fetchone() == (
        last + timedelta(minutes=13),)


@pytest.mark.full_edition
def test_a_watchdog_reconnect_is_recorded_and_backfilled(db: Conn, db_url: str, fake: FakeCoinCap,
                                                          rest: CoinCapRest, writer: BatchWriter) -> None:
    """The real PriceStream against the fake's WebSocket, silent but open, with an injected clock that also
    drives the wall clock (two hours ago, so the window is materialized by the refresh)."""
    clock = FakeClock()
    base = align_down(datetime.now(UTC), MINUTE) - timedelta(hours=2)

    def wall() -> datetime:
        return base + timedelta(seconds=clock() - 1000.0)

    stop = threading.Event()
    tracker = GapTracker(["bitcoin"], started_at=wall(), first_grace=30)
    fake.ws_script(['{"bitcoin": "50000.5"}'])  # one frame per connection, then silence with the socket open
    stamps: list[datetime] = []

    def on_message(text: str, when: datetime) -> None:
        stamps.append(when)
        tracker.message(when)

    def sleep(seconds: float) -> bool:
        clock.advance(seconds)
        return stop.is_set()

    stream = PriceStream(fake.ws_url, fake.api_key or "", ["bitcoin"], on_message, watchdog=30.0, clock=clock,
                         wall_clock=wall, sleep=sleep, poll=0.01, on_disconnect=tracker.disconnected,
                         backoff=Backoff(initial=1.0, cap=60.0, rng=random.Random(5)))
    thread = threading.Thread(target=stream.run, args=(stop,), daemon=True)
    thread.start()
    try:
        assert wait_until(lambda: len(stamps) == 1)
        clock.advance(40.0)  # 40 s of silence: the watchdog reconnects, the new connection delivers
        assert wait_until(lambda: len(stamps) == 2)
    finally:
        stop.set()
        thread.join(10)
    gap_start, gap_end = stamps
    assert timedelta(seconds=40) < gap_end - gap_start < timedelta(seconds=42)  # silence + jittered backoff
    fake.history["bitcoin"] = points(gap_start - MINUTE, gap_end + MINUTE, timedelta(seconds=5))
    inside = [(datetime.fromtimestamp(p["time"] / 1000, UTC), float(p["priceUsd"]))
              for p in fake.history["bitcoin"]]
    inside = [(t, p) for t, p in inside if gap_start <= t < gap_end]
    metrics = Metrics()
    worker = worker_for(db_url, tracker, rest, writer, metrics, restart_check=False)
    try:
        worker.step()
    finally:
        worker._close()
    assert gap_rows(db) == [("bitcoin", gap_start, gap_end, "watchdog", "done", len(inside), None, True)]
    assert len(inside) >= 8
    sent = fake.requests_to("/assets/bitcoin/history")
    assert [(r.query["interval"], int(r.query["start"])) for r in sent] == [("m1", ms(gap_start))]
    assert materialized_candles(db, "bitcoin", gap_start - timedelta(hours=1), gap_end + timedelta(hours=1)) == \
        expected_candles(inside)


@pytest.mark.full_edition
def test_a_gap_waits_for_the_backfill_delay(db: Conn, db_url: str, fake: FakeCoinCap, rest: CoinCapRest,
                                            writer: BatchWriter) -> None:
    now = [datetime.now(UTC)]
    tracker = GapTracker(["bitcoin"], started_at=now[0] - timedelta(seconds=60), first_grace=30)
    tracker.message(now[0] - timedelta(seconds=50))
    tracker.disconnected(now[0] - timedelta(seconds=45), "closed")
    tracker.message(now[0] - timedelta(seconds=10))
    worker = worker_for(db_url, tracker, rest, writer, Metrics(), restart_check=False, delay=120.0, idle=600.0,
                        wall_clock=lambda: now[0])
    try:
        wait = worker.step()
        assert [r[4] for r in gap_rows(db)] == ["open"]  # recorded, not filled yet
        assert 109 <= wait <= 110  # the next pass when it is due
        assert fake.requests_to("/assets/bitcoin/history") == []
        now[0] += timedelta(seconds=111)
        worker.step()
        assert [r[4] for r in gap_rows(db)] == ["done"]
    finally:
        worker._close()


@pytest.mark.full_edition
def test_failures_leave_the_gap_open_with_the_error_then_retry_or_give_up(
        db: Conn, db_url: str, fake: FakeCoinCap, rest: CoinCapRest, writer: BatchWriter) -> None:
    now = align_down(datetime.now(UTC), MINUTE)
    db.execute("INSERT INTO coinpulse.ingest_gaps (asset_id, gap_start, gap_end, reason) VALUES "
               "('bitcoin', %s, %s, 'closed'), ('notacoin', %s, %s, 'closed')",
               (now - timedelta(minutes=30), now - timedelta(minutes=20), now - timedelta(minutes=30),
                now - timedelta(minutes=20)))
    fake.history["bitcoin"] = points(now - timedelta(minutes=30), now - timedelta(minutes=20), MINUTE)
    fake.script(400, {"error": "try later"}, path="/assets/bitcoin/history")
    mono = [100.0]
    worker = worker_for(db_url, None, rest, writer, Metrics(), restart_check=False, monotonic=lambda: mono[0],
                        backoff=lambda: Backoff(initial=30.0, cap=900.0, jitter=0.0), max_attempts=3)
    try:
        wait = worker.step()
        rows = {r[0]: r for r in gap_rows(db)}
        assert rows["notacoin"][4] == "failed" and "HTTP 404" in rows["notacoin"][6]  # unknown asset: for good
        assert rows["bitcoin"][4] == "open" and "HTTP 400" in rows["bitcoin"][6]  # retried later
        assert wait == 30.0
        worker.step()  # not due yet: no request
        assert len(fake.requests_to("/assets/bitcoin/history")) == 1
        mono[0] += 30.0
        worker.step()
        rows = {r[0]: r for r in gap_rows(db)}
        assert rows["bitcoin"][4:7] == ("done", 10, None)
        # a gap that keeps failing is given up after max_attempts (a new one: the range of the first is imported)
        db.execute("INSERT INTO coinpulse.ingest_gaps (asset_id, gap_start, gap_end, reason) VALUES "
                   "('bitcoin', %s, %s, 'closed')", (now - timedelta(minutes=15), now - timedelta(minutes=10)))
        fake.script(400, {"error": "no"}, path="/assets/bitcoin/history", times=3)
        for _ in range(3):
            worker.step()
            mono[0] += 1000.0
        rows = {(r[0], r[1]): r for r in gap_rows(db)}
        assert rows["bitcoin", now - timedelta(minutes=15)][4] == "failed"
        assert "HTTP 400" in rows["bitcoin", now - timedelta(minutes=15)][6]
        assert len(fake.requests_to("/assets/bitcoin/history")) == 2 + 3
    finally:
        worker._close()


@pytest.mark.full_edition
def test_a_gap_left_filling_by_a_dead_process_is_reopened_and_filled(
        db: Conn, db_url: str, fake: FakeCoinCap, rest: CoinCapRest, writer: BatchWriter) -> None:
    now = align_down(datetime.now(UTC), MINUTE)
    db.execute("INSERT INTO coinpulse.ingest_gaps (asset_id, gap_start, gap_end, reason, status) VALUES "
               "('bitcoin', %s, %s, 'closed', 'filling'), ('ethereum', %s, %s, 'closed', 'filling')",
               (now - timedelta(minutes=30), now - timedelta(minutes=20), now - timedelta(minutes=30),
                now - timedelta(minutes=20)))
    worker = worker_for(db_url, None, rest, writer, Metrics(), restart_check=False,
                        owns=lambda asset: asset == "bitcoin")  # another replica owns ethereum
    try:
        worker.step()
    finally:
        worker._close()
    assert {r[0]: r[4] for r in gap_rows(db)} == {"bitcoin": "done", "ethereum": "filling"}
    assert fake.requests_to("/assets/ethereum/history") == []


@pytest.mark.full_edition
def test_gaps_wait_oldest_first_once_the_backfill_allowance_is_spent_and_are_filled_when_it_frees_up(
        db: Conn, db_url: str, fake: FakeCoinCap, rest: CoinCapRest, writer: BatchWriter) -> None:
    """3 credits a day for backfills; five 10-minute gaps of one credit each. Three are filled, the fourth waits
    (open, with the reason), the fifth is not even tried; a restarted worker still knows the day's charges (from
    backfill_credits); a day later the rest are filled."""
    base = align_down(datetime.now(UTC), MINUTE) - timedelta(hours=3)
    assets = ["bitcoin", "ethereum", "binance-coin", "usd-coin", "1inch"]
    gaps = [(a, base + i * timedelta(minutes=20), base + i * timedelta(minutes=20) + timedelta(minutes=10))
            for i, a in enumerate(assets)]
    for asset, start, end in reversed(gaps):  # inserted newest first: the order comes from gap_start
        db.execute("INSERT INTO coinpulse.ingest_gaps (asset_id, gap_start, gap_end, reason) VALUES (%s, %s, %s, "
                   "'closed')", (asset, start, end))
    fake.history["bitcoin"] = points(base - MINUTE, base + timedelta(hours=2), MINUTE)
    now = [base + timedelta(hours=2)]

    def planner() -> CreditPlanner:
        p = CreditPlanner(31 * 30, [], websocket=False, backfill_share=0.1)  # 30 credits a day, 3 for backfills
        assert p.backfill_per_day == pytest.approx(3)
        return p

    def status() -> dict[str, tuple[Any, ...]]:
        return {r[0]: r[4:7] for r in gap_rows(db)}

    def fetched() -> list[str]:
        return [r.path.split("/")[-2] for r in fake.requests if r.path.endswith("/history")]

    metrics = Metrics()
    worker = worker_for(db_url, None, rest, writer, metrics, restart_check=False, planner=planner(), idle=10.0**6,
                        wall_clock=lambda: now[0])
    try:
        wait = worker.step()
        assert fetched() == assets[:3]  # oldest first
        rows = status()
        assert [rows[a][0] for a in assets[:3]] == ["done"] * 3
        assert rows["usd-coin"][0] == "open" and rows["usd-coin"][2].startswith(
            "deferred: backfill allowance spent (3 of 3.0 credits in the last 24 h)")
        assert rows["1inch"] == ("open", None, None)  # strictly oldest first: not tried
        assert wait == pytest.approx(24 * 3600)  # when the first charge leaves the window
        charged = db.execute("SELECT spent_at, purpose, asset_id, gap_id, credits FROM coinpulse.backfill_credits "
                             "ORDER BY id").fetchall()
        assert charged == [(now[0], "gap", a, 5 - i, 1) for i, a in enumerate(assets[:3])]  # ids: newest first
        assert metrics.registry.get_sample_value("coinpulse_gap_fills_deferred_total") == 1
        assert metrics.registry.get_sample_value("coinpulse_backfill_credits_left") == 0
        assert metrics.registry.get_sample_value("coinpulse_open_gaps") == 2
        now[0] += timedelta(hours=1)
        worker.step()
        assert len(fetched()) == 3
    finally:
        worker._close()
    # a restart: the new planner knows nothing, the database does
    now[0] += timedelta(hours=1)
    restarted = worker_for(db_url, None, rest, writer, Metrics(), restart_check=False, planner=planner(),
                           idle=10.0**6, wall_clock=lambda: now[0])
    try:
        assert restarted.step() == pytest.approx(22 * 3600)
        assert len(fetched()) == 3 and status()["usd-coin"][0] == "open"
        now[0] = base + timedelta(hours=2, seconds=1) + timedelta(days=1)  # the day's charges have left the window
        restarted.step()
    finally:
        restarted._close()
    assert fetched() == assets
    rows = status()
    for asset, start, end in gaps:
        stored = db.execute("SELECT count(*) FROM coinpulse.price_ticks WHERE asset_id = %s AND source = 'history' "
                            "AND time >= %s AND time < %s", (asset, start, end)).fetchone()
        assert rows[asset] == ("done", stored[0] if stored else None, None) and rows[asset][1] > 0
    assert db.execute("SELECT count(*), sum(credits) FROM coinpulse.backfill_credits").fetchone() == (5, 5)
