"""History on demand (collector/history.py): planning by age, and importing from the fake CoinCap into a real
TimescaleDB through the writer, idempotently, with the rollups refreshed and progress reported."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg import sql

from collector.buffer import RecordQueue
from collector.coincap.rest import CoinCapRest
from collector.history import (
    Chunk,
    HistoryProgress,
    HistoryTiers,
    import_history,
    missing_history,
    plan_chunks,
    stored_since,
)
from collector.metrics import Metrics
from collector.writer import BatchWriter
from conftest import materialization_table
from fake_coincap import FakeCoinCap

Conn = psycopg.Connection[tuple[Any, ...]]
NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
TIERS = HistoryTiers.parse("m1:1d,m5:7d,h1:90d,d1")


def ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


# -- planning ----------------------------------------------------------------------------------------------

def test_tiers_parse_and_pick_by_age() -> None:
    assert TIERS.tiers == ((timedelta(days=1), "m1"), (timedelta(days=7), "m5"), (timedelta(days=90), "h1"),
                           (None, "d1"))
    assert TIERS.interval_at(NOW - timedelta(hours=3), NOW) == "m1"
    assert TIERS.interval_at(NOW - timedelta(days=1), NOW) == "m1"
    assert TIERS.interval_at(NOW - timedelta(days=3), NOW) == "m5"
    assert TIERS.interval_at(NOW - timedelta(days=30), NOW) == "h1"
    assert TIERS.interval_at(NOW - timedelta(days=400), NOW) == "d1"
    assert HistoryTiers.parse("d1").tiers == ((None, "d1"),)


@pytest.mark.parametrize("text, message", [
    ("", "at least one"), ("m1:1d", "must have no age"), ("x1:1d,d1", "not a CoinCap interval"),
    ("m1:1x,d1", "INTERVAL:AGE"), ("m1:7d,m5:1d,d1", "ages must grow"), ("h1:1d,m5:7d,d1", "finer to coarser"),
])
def test_tiers_refuse_bad_text(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        HistoryTiers.parse(text)


def test_plan_splits_by_age_and_by_points_per_request() -> None:
    start = NOW - timedelta(days=100)
    chunks = plan_chunks(start, NOW, NOW, TIERS, points_per_request=500)
    # oldest first; every part at the interval for its age; contiguous; each at most 500 intervals long
    assert chunks[0].start == start and chunks[-1].end == NOW
    assert all(a.end == b.start for a, b in itertools.pairwise(chunks))
    # d1: 10 days in one request; h1: 83 days = 1992 h in 4; m5: 6 days = 1728 intervals in 4; m1: 1440 in 3
    assert [c.interval for c in chunks] == ["d1"] + ["h1"] * 4 + ["m5"] * 4 + ["m1"] * 3
    assert chunks[0].end == NOW - timedelta(days=90)
    assert chunks[1].end - chunks[1].start == timedelta(hours=500)
    assert chunks[5].start == NOW - timedelta(days=7)
    assert chunks[9].start == NOW - timedelta(days=1)
    assert max(c.end - c.start for c in chunks if c.interval == "m1") == timedelta(minutes=500)
    old = (NOW - timedelta(days=200), NOW - timedelta(days=150))
    assert plan_chunks(*old, NOW, TIERS, 500) == [Chunk("d1", *old)]
    assert plan_chunks(NOW, NOW, NOW, TIERS, 500) == []


# -- importing against the fake ----------------------------------------------------------------------------

@pytest.fixture
def fake() -> Iterator[FakeCoinCap]:
    with FakeCoinCap() as server:
        yield server


@pytest.fixture
def writer(db_url: str) -> Iterator[BatchWriter]:
    w = BatchWriter(db_url, RecordQueue(1), Metrics())
    yield w
    w.close()


def hourly_points(start: datetime, hours: int, base: float = 50000.0) -> list[dict[str, Any]]:
    return [{"priceUsd": f"{base + 10 * i:.2f}", "time": ms(start + timedelta(hours=i))} for i in range(hours)]


@pytest.mark.full_edition
def test_import_writes_refreshes_logs_and_is_idempotent(db: Conn, fake: FakeCoinCap, writer: BatchWriter) -> None:
    start = NOW - timedelta(days=40)
    points = hourly_points(start, 72)
    points.insert(5, {"priceUsd": "NaN", "time": ms(start + timedelta(minutes=30))})  # refused by the parser
    fake.history["bitcoin"] = points
    tiers = HistoryTiers.parse("h1:90d,d1")
    progress: list[HistoryProgress] = []
    with CoinCapRest(fake.rest_url, fake.api_key, timeout=5) as rest:
        result = import_history(rest, writer, db, "bitcoin", start, start + timedelta(hours=72), now=NOW,
                                tiers=tiers, points_per_request=24, on_progress=progress.append)
    assert (result.requests, result.points, result.written, result.rejected) == (3, 72, 72, 1)
    assert (result.first, result.last) == (start, start + timedelta(hours=71))
    assert [(p.done, p.total, p.points) for p in progress] == [(1, 3, 24), (2, 3, 48), (3, 3, 72)]
    sent = fake.requests_to("/assets/bitcoin/history")
    assert [(r.query["interval"], int(r.query["start"]), int(r.query["end"])) for r in sent] == [
        ("h1", ms(start + timedelta(hours=24 * i)), ms(start + timedelta(hours=24 * (i + 1))) - 1) for i in range(3)]
    rows = db.execute("SELECT time, price_usd, source FROM coinpulse.price_ticks ORDER BY time").fetchall()
    assert rows == [(start + timedelta(hours=i), 50000.0 + 10 * i, "history") for i in range(72)]
    # the rollup windows were materialized (not only visible through real-time aggregation)
    materialized = db.execute(sql.SQL("SELECT count(*) FROM {}").format(materialization_table(db, "candles_1h"))
                              ).fetchone()
    assert materialized == (72,)
    logged = db.execute("SELECT asset_id, range_start, range_end, intervals, requests, points, rows_written "
                        "FROM coinpulse.history_imports").fetchall()
    assert logged == [("bitcoin", start, start + timedelta(hours=72), "h1", 3, 72, 72)]
    # the same import again stores nothing twice
    with CoinCapRest(fake.rest_url, fake.api_key, timeout=5) as rest:
        again = import_history(rest, writer, db, "bitcoin", start, start + timedelta(hours=72), now=NOW,
                               tiers=tiers, points_per_request=24)
    assert (again.points, again.written) == (72, 0)
    assert db.execute("SELECT count(*) FROM coinpulse.price_ticks").fetchone() == (72,)


@pytest.mark.full_edition
def test_a_range_ending_inside_a_millisecond_keeps_the_point_at_that_millisecond(db: Conn, fake: FakeCoinCap,
                                                                                 writer: BatchWriter) -> None:
    """A gap ends at the instant a collector started (microseconds): a point at its last whole millisecond lies
    inside it and must be asked for (CoinCap's end is inclusive, in ms) and stored."""
    start = NOW - timedelta(hours=2)
    end = start + timedelta(minutes=5, microseconds=801_307)
    fake.history["bitcoin"] = [{"priceUsd": "50000.5", "time": ms(start + timedelta(minutes=1))},
                               {"priceUsd": "50001.5", "time": ms(end)}]  # ms() floors: 801 ms < end
    with CoinCapRest(fake.rest_url, fake.api_key, timeout=5) as rest:
        result = import_history(rest, writer, db, "bitcoin", start, end, now=NOW, tiers=HistoryTiers.parse("m1"))
    assert int(fake.requests_to("/assets/bitcoin/history")[0].query["end"]) == ms(end)
    assert result.written == 2
    assert db.execute("SELECT max(time) FROM coinpulse.price_ticks").fetchone() == (end.replace(microsecond=801_000),)


@pytest.mark.full_edition
def test_an_answer_cut_short_is_continued_from_its_last_point(db: Conn, fake: FakeCoinCap,
                                                              writer: BatchWriter) -> None:
    start = NOW - timedelta(days=20)
    points = hourly_points(start, 48)
    fake.history["bitcoin"] = points
    fake.script(200, {"data": points[:10], "timestamp": ms(NOW)}, path="/assets/bitcoin/history")  # capped answer
    with CoinCapRest(fake.rest_url, fake.api_key, timeout=5) as rest:
        result = import_history(rest, writer, db, "bitcoin", start, start + timedelta(hours=48), now=NOW,
                                tiers=HistoryTiers.parse("h1:90d,d1"), points_per_request=500)
    assert (result.requests, result.points, result.written) == (2, 48, 48)
    sent = fake.requests_to("/assets/bitcoin/history")
    assert int(sent[1].query["start"]) == points[9]["time"] + 1
    assert db.execute("SELECT count(*) FROM coinpulse.price_ticks").fetchone() == (48,)


@pytest.mark.full_edition
def test_missing_history_is_what_lies_before_the_stored_data(db: Conn, fake: FakeCoinCap,
                                                             writer: BatchWriter) -> None:
    tiers = HistoryTiers.parse("h1:90d,d1")
    since = NOW - timedelta(days=30)
    assert stored_since(db, "bitcoin") is None
    missing = missing_history(db, {"bitcoin": since}, now=NOW, tiers=tiers)
    assert [(m.asset_id, m.start, m.end) for m in missing] == [("bitcoin", since - timedelta(hours=1), NOW)]
    stored = NOW - timedelta(days=10)
    db.execute("INSERT INTO coinpulse.price_ticks VALUES (%s, 'bitcoin', 1, 'demo')", (stored,))
    assert stored_since(db, "bitcoin") == stored
    missing = missing_history(db, {"bitcoin": since}, now=NOW, tiers=tiers)
    assert [(m.start, m.end) for m in missing] == [(since - timedelta(hours=1), stored)]
    # within one interval of the stored start: nothing is missing
    assert missing_history(db, {"bitcoin": stored - timedelta(minutes=50)}, now=NOW, tiers=tiers) == []
    # CoinCap has nothing that far back: after one import the range counts as known, and is not asked again
    fake.history["bitcoin"] = []
    with CoinCapRest(fake.rest_url, fake.api_key, timeout=5) as rest:
        result = import_history(rest, writer, db, "bitcoin", since, stored, now=NOW, tiers=tiers)
    assert (result.points, result.written) == (0, 0)
    assert stored_since(db, "bitcoin") == since
    assert missing_history(db, {"bitcoin": since}, now=NOW, tiers=tiers) == []
