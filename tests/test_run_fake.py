"""`coinpulse run` as a subprocess against the fake CoinCap (REST + WebSocket on 127.0.0.1) and the real
TimescaleDB: what it stores is exactly what the fake sent, garbage is counted and not written, replays of
identical REST answers store nothing twice, and SIGTERM drains and exits 0.

Identity of a tick: CoinCap's stream carries no timestamp, so ``time`` is when the collector received the
frame (DESIGN.md). Every valid frame therefore becomes one group of rows sharing one ``time``; the test
rebuilds those groups from ``price_ticks`` and compares them, in order, with the frames the fake recorded
sending. A frame the fake sends again (after a reconnect) is a new receipt and lands once more, at its own
time; a REST answer sent again (same envelope ``timestamp``) is the same observation and adds no row.
"""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from collector_proc import CollectorProcess
from fake_coincap import DEFAULT_KEY, FakeCoinCap, SentFrame

TS = 1763753634750  # the fake's envelope timestamp, fixed: every snapshot poll is answered identically
ASSETS = ("bitcoin", "ethereum", "binance-coin", "usd-coin", "1inch")
BASE = {"bitcoin": 84000.0, "ethereum": 2700.0, "binance-coin": 840.0, "usd-coin": 1.0, "1inch": 0.5}
SNAPSHOT_TABLES = ("asset_snapshots", "exchange_snapshots", "market_snapshots", "rate_snapshots")
TABLES = ("price_ticks", *SNAPSHOT_TABLES)
VALID_FRAMES = 100
MALFORMED_PER_VALID = 100  # 10,000 malformed frames in all, between the valid ones

# One reject each, of the reason named (collector/coincap/parse.py); the eighth is a binary frame of bad UTF-8.
GARBAGE: list[tuple[str, str | bytes]] = [
    ("non_json", "not json at all"), ("bad_shape", "[84000, 2700]"), ("bad_asset_id", '{"BTC": "84000"}'),
    ("non_numeric", '{"bitcoin": "a lot"}'), ("not_finite", '{"ethereum": "NaN"}'),
    ("non_positive", '{"bitcoin": "-1"}'), ("absurd", '{"1inch": "1e300"}'), ("non_json", b"\xff\xfe garbage"),
]


def valid_frame(k: int) -> str:
    """Frame k: every asset at a price no other frame uses (quarter steps: exact in binary floating point)."""
    return json.dumps({a: repr(BASE[a] + k * 0.25) for a in ASSETS})


def db_ticks(url: str) -> list[tuple[datetime, str, float, str]]:
    with psycopg.connect(url) as conn:
        return [(r[0], r[1], r[2], r[3]) for r in conn.execute(
            "SELECT time, asset_id, price_usd, source FROM coinpulse.price_ticks ORDER BY time, asset_id")]


def counts(url: str) -> dict[str, int]:
    with psycopg.connect(url) as conn:
        out = {}
        for table in TABLES:
            row: Any = conn.execute(f"SELECT count(*) FROM coinpulse.{table}").fetchone()
            out[table] = int(row[0])
        return out


def receipts(rows: list[tuple[datetime, str, float, str]]) -> list[tuple[datetime, dict[str, float]]]:
    """Rows grouped by receipt time, oldest first: what each received frame became."""
    groups: dict[datetime, dict[str, float]] = {}
    for time, asset, price, _ in rows:
        assert asset not in groups.setdefault(time, {}), f"{asset} twice at {time}"
        groups[time][asset] = price
    return sorted(groups.items())


def priced(frames: list[SentFrame]) -> list[tuple[datetime, dict[str, float]]]:
    out = []
    for sent in frames:
        assert isinstance(sent.frame, str)
        out.append((sent.at, {a: float(p) for a, p in json.loads(sent.frame).items()}))
    return out


@pytest.mark.slow
def test_run_stores_exactly_what_the_fake_sent(db_url: str, tmp_path: Path) -> None:
    fake = FakeCoinCap(timestamp_ms=TS)
    with fake:
        proc = CollectorProcess({
            "COINPULSE_DATABASE_URL": db_url, "COINCAP_API_KEY": DEFAULT_KEY, "COINPULSE_FEED": "ws",
            "COINCAP_REST_URL": fake.rest_url, "COINCAP_WS_URL": fake.ws_url, "COINPULSE_ASSETS": ",".join(ASSETS),
            "COINPULSE_CREDIT_BUDGET": "0", "COINPULSE_BATCH_MAX_AGE": "0.05",
            "COINPULSE_SNAPSHOT_ASSETS_INTERVAL": "1", "COINPULSE_SNAPSHOT_EXCHANGES_INTERVAL": "1",
            "COINPULSE_SNAPSHOT_MARKETS_INTERVAL": "1", "COINPULSE_SNAPSHOT_RATES_INTERVAL": "1",
        }, tmp_path).start()
        try:
            assert fake.wait_for(lambda: fake.ws_open == 1, timeout=30), proc.log
            # 1. 100 valid frames, each after 100 malformed ones
            for k in range(VALID_FRAMES):
                for i in range(MALFORMED_PER_VALID):
                    assert fake.ws_send(GARBAGE[(k * MALFORMED_PER_VALID + i) % len(GARBAGE)][1]) == 1
                assert fake.ws_send(valid_frame(k)) == 1
            first_pass = VALID_FRAMES * len(ASSETS)
            proc.wait_for(lambda: counts(db_url)["price_ticks"] >= first_pass, what="every valid tick")
            proc.wait_for(lambda: sum(v for (name, _), v in proc.metrics().items()
                                      if name == "coinpulse_rows_rejected_total") >= 10_000, what="every reject")
            # 2. the fake drops the stream; on reconnect it sends three frames it sent before
            replayed = [valid_frame(k) for k in (0, 1, VALID_FRAMES - 1)]
            fake.ws_script(replayed)
            assert fake.ws_close_all() == 1
            proc.wait_for(lambda: counts(db_url)["price_ticks"] >= first_pass + len(replayed) * len(ASSETS),
                          what="the replayed frames")
            # 3. every snapshot endpoint answered (identically) at least twice, and written
            for path in ("/assets", "/exchanges", "/markets", "/rates"):
                assert fake.wait_for(lambda p=path: len(fake.requests_to(p)) >= 2, timeout=30), path
            proc.wait_for(lambda: all(n > 0 for n in counts(db_url).values()), what="rows in every table")
            scraped = proc.metrics()
            stored = counts(db_url)
        finally:
            code = proc.stop()
        with fake.lock:
            sent = list(fake.ws_sent)

    assert code == 0, proc.log
    assert "collector stopped rows_left=0" in proc.log  # SIGTERM drained the queue
    assert "Traceback" not in proc.log and DEFAULT_KEY not in proc.log

    # every valid frame the fake sent is one receipt, stored once, with every tick, in order
    texts = {valid_frame(k) for k in range(VALID_FRAMES)}
    valid = [s for s in sent if s.frame in texts]
    assert [s.connection for s in valid] == [1] * VALID_FRAMES + [2] * len(replayed)
    expected = priced(valid)
    every_row = db_ticks(db_url)
    # The stream gap of step 2 may later be backfilled from REST history (collector/gaps.py, after a delay):
    # such rows are `history`, never `ws`, and nothing else may appear.
    assert {source for *_, source in every_row} <= {"ws", "history"}
    rows = [row for row in every_row if row[3] == "ws"]
    got = receipts(rows)
    assert [prices for _, prices in got] == [prices for _, prices in expected]
    assert len(rows) == (VALID_FRAMES + len(replayed)) * len(ASSETS)
    for (stored_at, _), (sent_at, _) in zip(got, expected, strict=True):
        assert stored_at >= sent_at  # a receipt time, never before the fake sent the frame
    # the set view: (asset, time, price) for every tick, the replays being receipts of their own
    assert {(a, t, p) for t, a, p, _ in rows} == {(a, t, p) for t, prices in got for a, p in prices.items()}
    assert len({(a, t) for t, a, _, _ in rows}) == len(rows)

    # garbage: counted by reason on /metrics, never written
    reasons = Counter(GARBAGE[i % len(GARBAGE)][0] for i in range(VALID_FRAMES * MALFORMED_PER_VALID))
    rejected = {dict(labels)["reason"]: value for (name, labels), value in scraped.items()
                if name == "coinpulse_rows_rejected_total"}
    assert rejected == {reason: float(n) for reason, n in reasons.items()}
    assert sum(rejected.values()) == 10_000
    assert scraped[("coinpulse_ticks_received_total", (("source", "ws"),))] == len(rows)

    # identical REST answers polled again and again: one poll's worth of rows, however many polls
    assert stored["asset_snapshots"] == len(ASSETS)
    assert stored["exchange_snapshots"] == len(fake.exchanges)
    assert stored["market_snapshots"] == len(fake.markets)
    assert stored["rate_snapshots"] == len(fake.rates)
    with psycopg.connect(db_url) as conn:
        times = {r[0] for t in SNAPSHOT_TABLES for r in conn.execute(f"SELECT DISTINCT time FROM coinpulse.{t}")}
    assert times == {datetime.fromtimestamp(TS / 1000, UTC)}
    for endpoint in ("/assets", "/exchanges", "/markets", "/rates"):
        assert scraped[("coinpulse_api_requests_total", (("endpoint", endpoint), ("status", "200")))] >= 2

    # /metrics: rows written per table, the same figures as the database
    written = {dict(labels)["table"]: value for (name, labels), value in scraped.items()
               if name == "coinpulse_rows_written_total"}
    assert written == {table: float(n) for table, n in stored.items()}
    assert scraped[("coinpulse_stream_reconnects_total", (("reason", "closed"),))] == 1
