"""End to end: `coinpulse run` as a subprocess against the fake CoinCap and a real TimescaleDB. A WebSocket that
goes silent but stays open is reconnected by the watchdog, and the silence is recorded in ingest_gaps (each asset
from its own last tick) and backfilled from history; a restart's downtime likewise. The watchdog is 1 s so this
stays short."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from collector_proc import CollectorProcess
from fake_coincap import FakeCoinCap

ASSETS = ("bitcoin", "ethereum")
STEP = timedelta(milliseconds=100)  # the fake's bitcoin history is dense, so a few seconds of gap hold points


@pytest.fixture
def fake() -> Iterator[FakeCoinCap]:
    with FakeCoinCap() as server:
        now = datetime.now(UTC)
        t, points = now - timedelta(seconds=30), []
        while t < now + timedelta(minutes=3):
            points.append({"priceUsd": f"{60000 + len(points) % 500:.2f}", "time": int(t.timestamp() * 1000)})
            t += STEP
        server.history["bitcoin"] = points
        server.ws_feed(0.05)
        yield server


def env(db_url: str, fake: FakeCoinCap) -> dict[str, str]:
    return {"COINPULSE_DATABASE_URL": db_url, "COINPULSE_FEED": "ws", "COINCAP_API_KEY": fake.api_key or "",
            "COINCAP_WS_URL": fake.ws_url, "COINCAP_REST_URL": fake.rest_url, "COINPULSE_ASSETS": ",".join(ASSETS),
            "COINPULSE_WS_WATCHDOG": "1", "COINPULSE_BACKFILL_DELAY": "0", "COINPULSE_CREDIT_BUDGET": "0"}


def query(url: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(sql, params).fetchall()


def gaps(url: str, reason: str) -> list[tuple[Any, ...]]:
    return query(url, "SELECT asset_id, gap_start, gap_end, status, rows_filled FROM coinpulse.ingest_gaps "
                      "WHERE reason = %s ORDER BY asset_id", reason)


def ws_ticks(url: str, asset: str) -> int:
    return int(query(url, "SELECT count(*) FROM coinpulse.price_ticks WHERE asset_id = %s AND source = 'ws'",
                     asset)[0][0])


def check_filled(url: str, fake: FakeCoinCap, gap: tuple[Any, ...]) -> None:
    """The gap holds no live tick, its history ticks are exactly the fake's points inside it, rows_filled counts
    them, and candles_1m shows them."""
    asset, start, end, status, rows = gap
    assert status == "done"
    assert query(url, "SELECT count(*) FROM coinpulse.price_ticks WHERE asset_id = %s AND source IN ('ws', 'rest') "
                      "AND time > %s AND time < %s", asset, start, end) == [(0,)]
    stored = [r[0] for r in query(url, "SELECT time FROM coinpulse.price_ticks WHERE asset_id = %s "
                                       "AND source = 'history' AND time >= %s AND time < %s ORDER BY time",
                                  asset, start, end)]
    assert rows == len(stored)
    if asset == "bitcoin":
        sent = [datetime.fromtimestamp(p["time"] / 1000, UTC) for p in fake.history["bitcoin"]]
        assert stored == [t for t in sent if start <= t < end] and rows > 0
        calls = [r for r in fake.requests_to("/assets/bitcoin/history")
                 if int(r.query["start"]) == int(start.timestamp() * 1000)]
        assert [r.query["interval"] for r in calls] == ["m1"]  # seconds old: the finest interval
        in_candles = query(url, "SELECT coalesce(sum(ticks), 0) FROM coinpulse.candles_1m WHERE asset_id = %s "
                                "AND bucket >= time_bucket('1 minute', %s::timestamptz) AND bucket <= %s", asset,
                           start, end)[0][0]
        in_ticks = query(url, "SELECT count(*) FROM coinpulse.price_ticks WHERE asset_id = %s "
                              "AND time >= time_bucket('1 minute', %s::timestamptz) "
                              "AND time < time_bucket('1 minute', %s::timestamptz) + INTERVAL '1 minute'",
                         asset, start, end)[0][0]
        assert in_candles == in_ticks


@pytest.mark.slow
@pytest.mark.full_edition
def test_a_silent_open_websocket_is_reconnected_and_the_gap_recorded_and_backfilled(
        db_url: str, fake: FakeCoinCap, tmp_path: Path) -> None:
    budget = 1_000_000  # with a budget the worker asks the plan's backfill allowance before each request
    proc = CollectorProcess({**env(db_url, fake), "COINPULSE_CREDIT_BUDGET": str(budget)}, tmp_path).start()
    try:
        proc.wait_for(lambda: ws_ticks(db_url, "bitcoin") >= 5 and ws_ticks(db_url, "ethereum") >= 5, timeout=30,
                      what="streamed ticks")
        fake.ws_feed(None)
        for i in range(5):  # for a second only bitcoin moves: ethereum's data stops before the stream's
            fake.ws_send(json.dumps({"bitcoin": f"{61000 + i}.5"}))
            time.sleep(0.2)
        fake.ws_silent()  # the socket stays open, nothing arrives
        proc.wait_for(lambda: fake.ws_connections >= 2, timeout=20, what="a reconnect by the watchdog")
        fake.ws_silent(False)
        fake.ws_feed(0.05)
        proc.wait_for(lambda: [g[3] for g in gaps(db_url, "watchdog")][:2] == ["done", "done"], timeout=30,
                      what="the gap recorded and backfilled")
        assert proc.metric("coinpulse_stream_reconnects_total", reason="watchdog") >= 1
        proc.wait_for(lambda: proc.metric("coinpulse_open_gaps") == 0, timeout=10, what="no open gaps")
        assert proc.metric("coinpulse_rows_written_total", table="price_ticks") > 0
        # every history request was charged to the allowance (0.2 of what the stream leaves) and logged
        charged = query(db_url, "SELECT count(DISTINCT gap_id), sum(credits) FROM coinpulse.backfill_credits "
                                "WHERE purpose = 'gap'")[0]
        assert charged[0] >= 2 and charged[1] >= 2
        allowance = 0.2 * (budget / 31 - 1440)
        assert proc.metric("coinpulse_backfill_credits_left") == pytest.approx(allowance - charged[1])
    finally:
        code = proc.stop()
    assert code == 0, proc.log
    recorded = gaps(db_url, "watchdog")
    first = [g for g in recorded if g[2] == min(r[2] for r in recorded)]
    assert sorted(g[0] for g in first) == list(ASSETS)  # one row per tracked asset, ending together
    for gap in first:
        # each asset's gap runs from its own last tick before the silence to the first frame after the reconnect
        asset, start, end = gap[:3]
        assert query(db_url, "SELECT max(time) FROM coinpulse.price_ticks WHERE source = 'ws' AND asset_id = %s "
                             "AND time < %s", asset, end) == [(start,)]
        assert query(db_url, "SELECT min(time) FROM coinpulse.price_ticks WHERE source = 'ws' AND time >= %s",
                     end) == [(end,)]
        assert end - start >= timedelta(seconds=1)  # at least the watchdog period
        check_filled(db_url, fake, gap)
    by_asset = {g[0]: g for g in first}
    # bitcoin's gap starts at the stream's last frame; ethereum's at its own, a second of bitcoin-only frames before
    assert query(db_url, "SELECT max(time) FROM coinpulse.price_ticks WHERE source = 'ws' AND time < %s",
                 by_asset["bitcoin"][2]) == [(by_asset["bitcoin"][1],)]
    assert by_asset["bitcoin"][1] - by_asset["ethereum"][1] >= timedelta(seconds=0.6)
    assert "watchdog" in proc.log and "gap filled" in proc.log and "Traceback" not in proc.log


@pytest.mark.slow
@pytest.mark.full_edition
def test_a_restart_leaves_a_gap_that_is_recorded_and_backfilled(db_url: str, fake: FakeCoinCap,
                                                                tmp_path: Path) -> None:
    first = CollectorProcess(env(db_url, fake), tmp_path / "1")
    (tmp_path / "1").mkdir()
    first.start()
    try:
        first.wait_for(lambda: ws_ticks(db_url, "bitcoin") >= 5 and ws_ticks(db_url, "ethereum") >= 5,
                       timeout=30, what="streamed ticks")
    finally:
        assert first.stop() == 0, first.log
    last = {a: query(db_url, "SELECT max(time) FROM coinpulse.price_ticks WHERE asset_id = %s", a)[0][0]
            for a in ASSETS}
    time.sleep(1.5)  # the collector is down: this is the gap
    (tmp_path / "2").mkdir()
    second = CollectorProcess(env(db_url, fake), tmp_path / "2").start()
    try:
        second.wait_for(lambda: [g[3] for g in gaps(db_url, "restart")] == ["done", "done"], timeout=30,
                        what="the restart gap recorded and backfilled")
    finally:
        assert second.stop() == 0, second.log
    for gap in gaps(db_url, "restart"):
        asset, start, end = gap[:3]
        assert start == last[asset]  # from the last stored tick of the previous run...
        assert end - start >= timedelta(seconds=1.5)  # ...to the start of this one
        assert query(db_url, "SELECT min(time) FROM coinpulse.price_ticks WHERE asset_id = %s AND source = 'ws' "
                             "AND time > %s", asset, start)[0][0] >= end
        check_filled(db_url, fake, gap)


@pytest.mark.slow
@pytest.mark.full_edition
def test_failed_rest_polls_leave_a_gap_that_is_recorded_and_backfilled(db_url: str, fake: FakeCoinCap,
                                                                        tmp_path: Path) -> None:
    settings = {**env(db_url, fake), "COINPULSE_FEED": "rest", "COINPULSE_REST_PRICE_INTERVAL": "1"}
    proc = CollectorProcess(settings, tmp_path).start()
    try:
        proc.wait_for(lambda: polled(db_url) >= 2, timeout=30, what="polled prices")
        fake.script(400, {"error": "bad request"}, path="/assets", times=2)  # the next two price polls fail
        proc.wait_for(lambda: [g[3] for g in gaps(db_url, "poll_failed")] == ["done", "done"], timeout=30,
                      what="the gap recorded and backfilled")
    finally:
        assert proc.stop() == 0, proc.log
    for gap in gaps(db_url, "poll_failed"):
        asset, start, end = gap[:3]
        # from the last good poll to the next good one, which are about three poll intervals apart
        assert query(db_url, "SELECT count(*) FROM coinpulse.price_ticks WHERE asset_id = %s AND source = 'rest' "
                             "AND time IN (%s, %s)", asset, start, end) == [(2,)]
        assert end - start >= timedelta(seconds=2)
        check_filled(db_url, fake, gap)


def polled(url: str) -> int:
    return int(query(url, "SELECT count(DISTINCT time) FROM coinpulse.price_ticks WHERE asset_id = 'bitcoin' "
                          "AND source = 'rest'")[0][0])
