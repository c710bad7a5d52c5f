"""The README's "For analysts" recipes, executed as coinpulse_reader against known data, results asserted.

Each recipe's rows are compared with values computed here, in Python, from the rows inserted, so a wrong
recipe (or a wrong rollup under it) fails. The data is laid out relative to the database's now(): the
recipes use now() themselves.
"""

from __future__ import annotations

import math
import random
import re
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from collector.db.rollups import refresh_window

Conn = psycopg.Connection[tuple[object, ...]]
README = Path(__file__).resolve().parents[1] / "README.md"
ASSETS = ("bitcoin", "ethereum", "solana")
STEP = timedelta(minutes=5)
SPAN = timedelta(days=8)

pytestmark = pytest.mark.full_edition


def recipes() -> dict[int, str]:
    text = README.read_text(encoding="utf-8")
    section = text.split("## For analysts", 1)[1].split("\n## ", 1)[0]
    found = re.findall(r"\*\*(\d+)\. [^*]+\*\*\n```sql\n(.*?)```", section, flags=re.S)
    return {int(n): sql for n, sql in found}


def test_the_readme_has_six_to_ten_recipes_all_tested() -> None:
    numbers = sorted(recipes())
    assert 6 <= len(numbers) <= 10 and numbers == list(range(1, len(numbers) + 1))
    assert set(numbers) == set(CHECKS), "every recipe needs an assertion below"


class Data:
    """What was inserted, for independent computation."""

    def __init__(self, now: datetime) -> None:
        self.now = now
        rng = random.Random(7)
        start = now.replace(second=0, microsecond=0) - SPAN
        self.ticks: list[tuple[datetime, str, float, str]] = []
        for k, asset in enumerate(ASSETS):
            price = 100.0 * (k + 1) ** 3
            at = start + timedelta(seconds=17 * k)
            while at <= now - timedelta(seconds=30):
                price = round(price * math.exp(rng.gauss(0, 0.01)), 6)
                source = "rest" if (at.minute // 5) % 7 == 0 else "ws"
                self.ticks.append((at, asset, price, source))
                at += STEP
        hour = now.replace(minute=0, second=0, microsecond=0)
        # asset snapshots: bitcoin every 20 minutes over 3 days, rising volume and market cap
        self.snaps = [(hour - timedelta(days=3) + timedelta(minutes=20 * i), 1e9 + 1e6 * i, 1e12 + 1e9 * i)
                      for i in range(3 * 72)]
        self.snaps = [s for s in self.snaps if s[0] < now]
        # exchange snapshots: three exchanges every 15 minutes over the last 6 hours
        self.exchanges = [(hour - timedelta(hours=5) + timedelta(minutes=15 * i), ex, vol * (1 + 0.01 * i))
                          for i in range(24) for ex, vol in (("binance", 5e9), ("kraken", 1e9), ("coinbase", 2e9))]
        self.exchanges = [e for e in self.exchanges if e[0] < now]
        # market snapshots of bitcoin: two polls; only the newest within the hour counts
        self.markets = [(now - timedelta(minutes=m), ex, quote, price)
                        for m, bump in ((40, 0.0), (10, 25.0))
                        for ex, quote, price in (("binance", "tether", 60000.0 + bump),
                                                 ("kraken", "united-states-dollar", 60050.0 + bump),
                                                 ("coinbase", "united-states-dollar", 59990.0 + bump))]
        self.markets.append((now - timedelta(hours=3), "bitstamp", "euro", 59000.0))  # too old for the recipe
        self.gaps = [("bitcoin", now - timedelta(hours=5), now - timedelta(hours=4, minutes=50), "watchdog", "open"),
                     (None, now - timedelta(hours=2), now - timedelta(hours=1, minutes=58), "restart", "failed"),
                     ("ethereum", now - timedelta(hours=7), now - timedelta(hours=6), "closed", "done")]

    def load(self, conn: Conn) -> None:
        with conn.cursor() as cur:
            for asset in ASSETS:
                cur.execute("INSERT INTO coinpulse.assets (asset_id, symbol, name) VALUES (%s, %s, %s)",
                            (asset, asset[:3].upper(), asset.title()))
            with cur.copy("COPY coinpulse.price_ticks (time, asset_id, price_usd, source) FROM STDIN") as copy:
                for row in self.ticks:
                    copy.write_row(row)
            cur.executemany("INSERT INTO coinpulse.asset_snapshots (time, asset_id, rank, symbol, name, "
                            "volume_usd_24hr, market_cap_usd, price_usd, source) "
                            "VALUES (%s, 'bitcoin', 1, 'BTC', 'Bitcoin', %s, %s, 60000, 'rest')", self.snaps)
            cur.executemany("INSERT INTO coinpulse.exchange_snapshots (time, exchange_id, volume_usd, source) "
                            "VALUES (%s, %s, %s, 'rest')", self.exchanges)
            cur.executemany("INSERT INTO coinpulse.market_snapshots (time, exchange_id, base_id, quote_id, price_usd, "
                            "source) VALUES (%s, %s, 'bitcoin', %s, %s, 'rest')", self.markets)
            cur.executemany("INSERT INTO coinpulse.ingest_gaps (asset_id, gap_start, gap_end, reason, status) "
                            "VALUES (%s, %s, %s, %s, %s)", self.gaps)
        # Materialize most of it (the rest stays real-time), as the policies would have.
        refresh_window(conn, self.now - SPAN - timedelta(days=1), self.now)

    def series(self, asset: str) -> list[tuple[datetime, float]]:
        return [(t, p) for t, a, p, _ in self.ticks if a == asset]


def ohlc(points: list[tuple[datetime, float]]) -> tuple[float, float, float, float, int]:
    prices = [p for _, p in sorted(points)]
    return prices[0], max(prices), min(prices), prices[-1], len(prices)


def buckets(points: list[tuple[datetime, float]], width: timedelta, origin: datetime) -> dict[datetime, list[tuple[
        datetime, float]]]:
    out: dict[datetime, list[tuple[datetime, float]]] = defaultdict(list)
    for t, p in points:
        out[origin + (t - origin) // width * width].append((t, p))
    return out


EPOCH = datetime(2000, 1, 3, tzinfo=UTC)  # time_bucket's origin for widths under a month


def check_1(rows: list[tuple[object, ...]], d: Data, now: datetime) -> None:
    expected = []
    for asset in ASSETS:
        t, p = max(d.series(asset))
        source = next(s for tt, a, _, s in d.ticks if a == asset and tt == t)
        expected.append((asset, asset[:3].upper(), p, now - t, source))
    assert rows == expected


def check_2(rows: list[tuple[object, ...]], d: Data, now: datetime) -> None:
    hourly = buckets(d.series("bitcoin"), timedelta(hours=1), EPOCH)
    expected = [(b, *ohlc(pts)) for b, pts in sorted(hourly.items()) if b >= now - timedelta(hours=24)]
    assert len(expected) in (24, 25) and rows == expected


def check_3(rows: list[tuple[object, ...]], d: Data, now: datetime) -> None:
    hourly = buckets(d.series("bitcoin"), timedelta(hours=1), EPOCH)
    recent = [pt for b, pts in hourly.items() if b >= now - timedelta(days=2) for pt in pts]
    four = buckets(recent, timedelta(hours=4), EPOCH)
    expected = [(b, *ohlc(pts)) for b, pts in sorted(four.items())]
    assert len(expected) >= 12 and rows == expected


def check_4(rows: list[tuple[object, ...]], d: Data, now: datetime) -> None:
    changes = []
    for asset in ASSETS:
        series = d.series(asset)
        latest = max(series)[1]
        cutoff = now - timedelta(hours=24) - timedelta(minutes=1)  # close of the last minute ended by now-24h
        minutes = buckets(series, timedelta(minutes=1), EPOCH)
        old = max(b for b in minutes if b <= cutoff)
        close = max(minutes[old])[1]
        changes.append((asset, latest, 100 * (latest / close - 1)))
    changes.sort(key=lambda c: abs(c[2]), reverse=True)
    assert [(r[0], r[1]) for r in rows] == [(a, p) for a, p, _ in changes]
    for row, (_, _, pct) in zip(rows, changes, strict=True):
        assert float(str(row[2])) == pytest.approx(round(pct, 2), abs=0.006)


def check_5(rows: list[tuple[object, ...]], d: Data, now: datetime) -> None:
    days: dict[object, tuple[datetime, float, float]] = {}
    for t, vol, cap in d.snaps:
        day = t.date()
        if day not in days or t > days[day][0]:
            days[day] = (t, vol, cap)
    assert rows == [(day, vol, cap, t) for day, (t, vol, cap) in sorted(days.items())]


def check_6(rows: list[tuple[object, ...]], d: Data, now: datetime) -> None:
    last: dict[tuple[datetime, str], tuple[datetime, float]] = {}
    for t, ex, vol in d.exchanges:
        b = t.replace(minute=0, second=0, microsecond=0)
        if b >= now - timedelta(hours=6) and ((b, ex) not in last or t > last[(b, ex)][0]):
            last[(b, ex)] = (t, vol)
    expected = []
    for b in sorted({b for b, _ in last}):
        total = sum(v for (bb, _), (_, v) in last.items() if bb == b)
        per = sorted(((ex, v) for (bb, ex), (_, v) in last.items() if bb == b), key=lambda x: -x[1])
        expected += [(b, ex, v, round(100 * v / total, 2)) for ex, v in per]
    assert [(r[0], r[1], r[2]) for r in rows] == [e[:3] for e in expected]
    assert [float(str(r[3])) for r in rows] == [e[3] for e in expected]


def check_7(rows: list[tuple[object, ...]], d: Data, now: datetime) -> None:
    newest = [m for m in d.markets if m[0] == d.now - timedelta(minutes=10)]
    assert rows == sorted(((ex, q, p, t) for t, ex, q, p in newest), key=lambda r: (r[0], r[1]))
    prices = [float(str(r[2])) for r in rows]
    assert max(prices) - min(prices) == 60.0  # the spread an analyst reads off


def check_8(rows: list[tuple[object, ...]], d: Data, now: datetime) -> None:
    expected = [(a or "all streamed assets", s, e, e - s, r, st) for a, s, e, r, st in d.gaps if st != "done"]
    assert rows == sorted(expected, key=lambda g: g[1])


def check_9(rows: list[tuple[object, ...]], d: Data, now: datetime) -> None:
    counts: dict[tuple[datetime, str], int] = defaultdict(int)
    for t, _, _, s in d.ticks:
        if t >= now - timedelta(days=7):
            counts[(EPOCH + (t - EPOCH) // timedelta(days=1) * timedelta(days=1), s)] += 1
    assert rows == [(day, s, n) for (day, s), n in sorted(counts.items())]
    assert {s for _, s, _ in rows} == {"rest", "ws"}


CHECKS = {1: check_1, 2: check_2, 3: check_3, 4: check_4, 5: check_5, 6: check_6, 7: check_7, 8: check_8,
          9: check_9}


@pytest.fixture(scope="module")
def loaded(migrated_url: str) -> tuple[str, Data]:
    from conftest import TRUNCATE

    with psycopg.connect(migrated_url, autocommit=True) as conn:
        conn.execute(TRUNCATE)
        conn.execute("SET timezone = 'UTC'")
        row = conn.execute("SELECT now()").fetchone()
        assert row is not None and isinstance(row[0], datetime)
        data = Data(row[0])
        data.load(conn)
    return migrated_url, data


@pytest.mark.parametrize("number", sorted(recipes()))
def test_recipe(number: int, loaded: tuple[str, Data]) -> None:
    url, data = loaded
    with psycopg.connect(url) as conn:
        conn.execute("SET ROLE coinpulse_reader")
        conn.execute("SET search_path = coinpulse, public")  # what ALTER ROLE ... SET gives a real login
        conn.execute("SET timezone = 'UTC'")
        row = conn.execute("SELECT now()").fetchone()  # constant for the transaction the recipe runs in
        assert row is not None and isinstance(row[0], datetime)
        rows = conn.execute(recipes()[number]).fetchall()
    assert rows, f"recipe {number} returned nothing"
    CHECKS[number](rows, data, row[0])
