"""Migration 0007 re-creates the alert and portfolio views set-based: the rows must not change.

On random data (seeded) placed around the database's ``now()`` -- prices found in the last hour, the last week, only
earlier, only as a candle (raw ticks dropped after materializing), or never; materialized and real-time candles;
volumes recent, older than a day, NULL or missing; portfolios in USD and in another currency, empty, holding an asset
without a price -- and thresholds of every kind, enabled or not:

- ``alert_threshold_evaluation`` and ``alert_threshold_status`` equal, row for row and bit for bit, what migration
  0005's definition (the per-threshold function ``alert_threshold_current``) gives, and each current value equals
  one computed here in Python from the raw rows;
- ``portfolio_holdings`` and ``portfolio_value_by_asset`` / ``portfolio_value`` equal migration 0004's definitions
  (re-created here as temporary objects from the 0004 file) for hourly, daily and minute buckets.
"""

from __future__ import annotations

import importlib.util
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal as D
from pathlib import Path
from typing import Any

import psycopg
import pytest

from collector.db.rollups import refresh_window

pytestmark = pytest.mark.full_edition

Conn = psycopg.Connection[Any]
VERSIONS = Path(__file__).resolve().parents[1] / "migrations" / "versions"
MIN, HOUR, DAY = timedelta(minutes=1), timedelta(hours=1), timedelta(days=1)


def released_sql(filename: str) -> str:
    """The UPGRADE text of a released migration, as it was run."""
    spec = importlib.util.spec_from_file_location(f"released_{filename[:4]}", VERSIONS / filename)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    text: str = module.UPGRADE
    return text


def between(text: str, start: str, end: str) -> str:
    i = text.index(start)
    return text[i:text.index(end, i)]


# 0005's alert_threshold_status without its WHERE: every threshold, through alert_threshold_current.
STATUS_0005 = between(released_sql("0005_alert_thresholds.py"), "CREATE VIEW coinpulse.alert_threshold_status AS",
                      "WHERE t.enabled;").removeprefix("CREATE VIEW coinpulse.alert_threshold_status AS")
_0004 = released_sql("0004_portfolio.py")
HOLDINGS_0004 = between(_0004, "CREATE VIEW coinpulse.portfolio_holdings AS",
                        ";\nCOMMENT ON VIEW coinpulse.portfolio_holdings").removeprefix(
                            "CREATE VIEW coinpulse.portfolio_holdings AS")
VALUE_BY_ASSET_0004 = between(_0004, "CREATE FUNCTION coinpulse.portfolio_value_by_asset(",
                              "COMMENT ON FUNCTION coinpulse.portfolio_value_by_asset(").replace(
                                  "CREATE FUNCTION coinpulse.portfolio_value_by_asset(",
                                  "CREATE FUNCTION pg_temp.value_by_asset_0004(")


def test_the_released_definitions_were_found() -> None:
    assert "alert_threshold_current(t.kind" in STATUS_0005 and "FROM coinpulse.alert_thresholds t" in STATUS_0005
    assert "LEFT JOIN LATERAL" in HOLDINGS_0004 and "FROM priced q" in HOLDINGS_0004
    assert "RETURN QUERY EXECUTE" in VALUE_BY_ASSET_0004


# ---------------------------------------------------------------------------------------------- random data

ASSETS = {  # asset -> when its ticks are (ages before now; None: no tick)
    "fresh": (timedelta(hours=3), timedelta(seconds=5)),  # found in the last hour
    "gappy": (timedelta(days=3), timedelta(minutes=40)),  # last tick 40 minutes ago, gaps: some windows empty
    "days": (timedelta(days=6), timedelta(days=2)),  # found in the last week
    "old": (timedelta(days=14), timedelta(days=9)),  # only earlier: the any-time lookup
    "candle": (timedelta(days=20), timedelta(days=19)),  # ticks dropped after materializing: candles only
    "never": None,  # no tick, no candle
    "steady": (timedelta(days=25), timedelta(seconds=30)),  # a price in every window
}
WINDOWS = ["1 minute", "10 minutes", "1 hour", "90 minutes", "1 day", "24 hours", "3 days", "10 days"]
STALE_WINDOWS = ["10 seconds", "5 minutes", "2 hours", "30 days"]
KIND_NAMES = ["price_above", "price_below", "change_above", "change_below", "volume_above", "volume_change_above",
              "stale", "portfolio_value_below", "portfolio_change_below"]


@dataclass
class Market:
    now: datetime  # when the data was placed (the evaluation runs a moment later)


def load(conn: Conn, rng: random.Random) -> Market:
    now: datetime = conn.execute("SELECT now()").fetchone()[0]  # type: ignore[index]
    conn.execute("INSERT INTO coinpulse.assets (asset_id, symbol, first_seen) SELECT a, upper(a), %s - a_age "
                 "FROM unnest(%s::text[], %s::interval[]) x(a, a_age)",
                 (now, list(ASSETS), [timedelta(days=rng.randint(1, 40)) for _ in ASSETS]))
    ticks = []
    for asset, span in ASSETS.items():
        if span is None:
            continue
        oldest, newest = span
        seconds = int((oldest - newest).total_seconds())
        count = 3000 if asset == "steady" else rng.randint(40, 400)
        moments = {now - newest - timedelta(seconds=rng.randrange(seconds)) for _ in range(count)} | {now - newest}
        if asset == "gappy":  # nothing between 65 minutes and 2h05 ago, nor between 3 hours and a day ago
            moments = {m for m in moments if not (now - DAY < m < now - 3 * HOUR
                                                  or now - 125 * MIN < m < now - 65 * MIN)}
            moments |= {now - 150 * MIN, now - 170 * MIN}  # before the gap: a window of an hour finds nothing
        price = rng.uniform(0.5, 50000)
        for moment in sorted(moments):
            price = max(0.01, price * (1 + rng.uniform(-0.03, 0.03)))
            ticks.append((moment, asset, price))
    with conn.cursor() as cur, cur.copy("COPY coinpulse.price_ticks (time, asset_id, price_usd, source) "
                                        "FROM STDIN") as copy:
        for moment, asset, price in ticks:
            copy.write_row((moment, asset, price, "demo"))
    # Materialize all but the last day (the rest stays real-time), then drop "candle"'s raw ticks.
    refresh_window(conn, now - 25 * DAY, now - DAY)
    conn.execute("DELETE FROM coinpulse.price_ticks WHERE asset_id = 'candle'")

    snapshots = []
    for asset in ("fresh", "gappy", "days", "old"):
        newest = {"fresh": 2 * MIN, "gappy": 3 * HOUR, "days": 5 * DAY, "old": 2 * MIN}[asset]
        for _ in range(rng.randint(5, 40)):
            moment = now - newest - timedelta(minutes=rng.randrange(0, 4 * 24 * 60))
            volume = None if rng.random() < 0.15 else rng.uniform(1e6, 1e10)
            snapshots.append((moment, asset, volume))
    snapshots.append((now - 3 * MIN, "candle", None))  # a snapshot without a volume only
    with conn.cursor() as cur:
        cur.executemany("INSERT INTO coinpulse.asset_snapshots (time, asset_id, volume_usd_24hr, source) "
                        "VALUES (%s, %s, %s, 'rest') ON CONFLICT DO NOTHING", snapshots)
        cur.executemany("INSERT INTO coinpulse.rate_snapshots (time, rate_id, symbol, rate_usd, source) "
                        "VALUES (%s, 'euro', 'EUR', %s, 'rest')",
                        [(now - timedelta(minutes=rng.randrange(3 * 24 * 60)), rng.uniform(0.9, 1.2))
                         for _ in range(20)])

    conn.execute("INSERT INTO coinpulse.portfolios (name, base_currency, rate_id) VALUES ('usd', 'USD', NULL), "
                 "('eur', 'EUR', 'euro'), ('empty', 'USD', NULL), ('unpriced', 'USD', NULL)")
    trades = []
    for name, assets in (("usd", [*rng.sample(["fresh", "gappy", "days", "old", "candle"], 4), "steady"]),
                         ("eur", ["steady"])):  # eur: a change over every window can be known
        for asset in assets:
            held = D(0)
            for _ in range(rng.randint(1, 4)):
                moment = now - timedelta(minutes=rng.randrange(30 * 24 * 60))
                if held > 0 and rng.random() < 0.4:
                    quantity = -held if rng.random() < 0.3 else -(held / 2).quantize(D("0.0001"))
                else:
                    quantity = D(rng.randint(1, 5000)) / 100
                trades.append((name, moment, asset, quantity))
                held += quantity
    trades.append(("unpriced", now - 5 * DAY, "never", D(2)))
    trades.append(("unpriced", now - 5 * DAY, "fresh", D(1)))
    # applied in time order, buys first: no holding is ever negative, as the table's trigger demands
    trades.sort(key=lambda t: (t[1], t[3] < 0))
    running: dict[tuple[str, str], D] = {}
    kept = []
    for name, moment, asset, quantity in trades:
        have = running.get((name, asset), D(0))
        if have + quantity < 0:
            continue
        running[name, asset] = have + quantity
        kept.append((name, moment, asset, quantity))
    with conn.cursor() as cur:
        cur.executemany("INSERT INTO coinpulse.portfolio_transactions (portfolio_id, time, asset_id, quantity, "
                        "price_usd) SELECT portfolio_id, %s, %s, %s, 100 FROM coinpulse.portfolios WHERE name = %s",
                        [(moment, asset, quantity, name) for name, moment, asset, quantity in kept])

    # every asset and portfolio with every kind and window, and random ones besides
    rows = [(kind, asset, None, 1.0, window, True, "warning", None)
            for kind in ("change_above", "change_below", "volume_change_above") for asset in ASSETS
            for window in WINDOWS]
    rows += [(kind, asset, None, 1.0, None, True, "warning", None)
             for kind in ("price_above", "price_below", "volume_above") for asset in ASSETS]
    rows += [("stale", asset, None, None, window, True, "warning", None)
             for asset in ASSETS for window in STALE_WINDOWS]
    rows += [("portfolio_change_below", None, name, -1.0, window, True, "warning", None)
             for name in ("usd", "eur", "empty", "unpriced") for window in WINDOWS]
    rows += [("portfolio_value_below", None, name, 1.0, None, True, "warning", None)
             for name in ("usd", "eur", "empty", "unpriced")]
    for kind in KIND_NAMES:
        for _ in range(rng.randint(3, 6)):
            portfolio = rng.choice(["usd", "eur", "empty", "unpriced"]) if kind.startswith("portfolio_") else None
            asset = None if portfolio else rng.choice(list(ASSETS))
            if kind == "stale":
                value, window = None, rng.choice(STALE_WINDOWS)
            elif "change" in kind:
                value, window = round(rng.uniform(-20, 20), 2), rng.choice(WINDOWS)
            else:
                value, window = rng.choice([1e-6, 1.0, 1e3, 1e5, 1e12]), None
            rows.append((kind, asset, portfolio, value, window, rng.random() < 0.8,
                         rng.choice(["info", "warning", "critical"]), rng.choice([None, "o'neil"])))
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO coinpulse.alert_thresholds (kind, asset_id, portfolio_id, value, time_window, enabled, "
            "severity, owner) VALUES (%s, %s, (SELECT portfolio_id FROM coinpulse.portfolios WHERE name = %s), %s, "
            "%s::interval, %s, %s, %s)", rows)
    return Market(now)


# ------------------------------------------------------------------------------------------- Python oracle


class Oracle:
    """The current value of a threshold, from the raw rows, as README "Alerts" describes it."""

    def __init__(self, conn: Conn) -> None:
        self.now: datetime = conn.execute("SELECT now()").fetchone()[0]  # type: ignore[index]
        self.ticks: dict[str, list[tuple[datetime, float]]] = {}
        for asset, moment, price in conn.execute("SELECT asset_id, time, price_usd FROM coinpulse.price_ticks"):
            self.ticks.setdefault(asset, []).append((moment, price))
        self.candles: dict[str, list[tuple[datetime, float]]] = {}
        for asset, bucket, close in conn.execute("SELECT asset_id, bucket, close FROM coinpulse.candles_1m"):
            self.candles.setdefault(asset, []).append((bucket, close))
        self.volumes: dict[str, list[tuple[datetime, float]]] = {}
        for asset, moment, volume in conn.execute("SELECT asset_id, time, volume_usd_24hr FROM "
                                                  "coinpulse.asset_snapshots WHERE volume_usd_24hr IS NOT NULL"):
            self.volumes.setdefault(asset, []).append((moment, volume))
        self.first_seen = dict(conn.execute("SELECT asset_id, first_seen FROM coinpulse.assets").fetchall())
        self.rates = conn.execute("SELECT time, rate_usd FROM coinpulse.rate_snapshots WHERE rate_id = 'euro' "
                                  "AND rate_usd > 0 ORDER BY time").fetchall()
        self.portfolios = {r[0]: r[1:] for r in conn.execute(
            "SELECT portfolio_id, name, rate_id FROM coinpulse.portfolios")}
        self.held: dict[int, dict[str, D]] = {}
        for pid, asset, quantity in conn.execute("SELECT portfolio_id, asset_id, sum(quantity) FROM "
                                                 "coinpulse.portfolio_transactions GROUP BY 1, 2"):
            self.held.setdefault(pid, {})[asset] = quantity

    def latest(self, asset: str) -> tuple[float | None, datetime | None, datetime | None]:
        """(price, tick time, candle start)."""
        if self.ticks.get(asset):
            moment, price = max(self.ticks[asset])
            return price, moment, None
        if self.candles.get(asset):
            bucket, close = max(self.candles[asset])
            return close, None, bucket
        return None, None, None

    def ago(self, asset: str, window: timedelta) -> float | None:
        found = [(b, c) for b, c in self.candles.get(asset, [])
                 if self.now - 2 * window - MIN < b <= self.now - window - MIN]
        return max(found)[1] if found else None

    def rate(self, rate_id: str | None, moment: datetime) -> D:
        if rate_id is None:
            return D(1)
        before = [r for t, r in self.rates if t <= moment]
        return D(before[-1] if before else next(r for t, r in self.rates if t > moment))

    def current(self, kind: str, asset: str | None, pid: int | None, window: timedelta | None
                ) -> tuple[float | D | None, datetime | None]:
        now = self.now
        if kind in ("price_above", "price_below", "change_above", "change_below", "stale"):
            assert asset is not None
            price, tick, candle = self.latest(asset)
            as_of = tick or (candle + MIN if candle else None)
            if kind == "stale":
                as_of = as_of or self.first_seen[asset]
                return (now - as_of).total_seconds(), as_of
            if kind.startswith("change"):
                assert window is not None
                ref = self.ago(asset, window)
                return (100 * (price / ref - 1) if price is not None and ref is not None and ref > 0 else None), as_of
            return price, as_of
        if kind.startswith("volume"):
            assert asset is not None
            volumes = self.volumes.get(asset, [])
            moment, volume = max(volumes) if volumes else (None, None)
            if kind == "volume_above":
                return volume, moment
            assert window is not None
            before = [v for v in volumes if now - 2 * window < v[0] <= now - window]
            ref = max(before)[1] if before else None
            return (100 * (volume / ref - 1) if volume is not None and ref else None), moment
        assert pid is not None
        _, rate_id = self.portfolios[pid]
        held = {a: q for a, q in self.held.get(pid, {}).items() if q != 0}
        prices = {a: self.latest(a) for a in held}
        times = [tick or candle for _, tick, candle in prices.values() if tick or candle]
        if kind == "portfolio_value_below":
            if not self.held.get(pid):
                return None, now
            as_of = min(times) if times else now
            if any(p is None for p, _, _ in prices.values()):
                return None, as_of
            total = sum((q * D(prices[a][0]) for a, q in held.items()), D(0))  # type: ignore[arg-type]
            return total / self.rate(rate_id, now), as_of
        assert window is not None
        as_of = min(times) if times else None
        then = {a: self.ago(a, window) for a in held}
        if not held or any(prices[a][0] is None or then[a] is None for a in held):
            return None, as_of
        value_now = sum((q * D(prices[a][0]) for a, q in held.items()), D(0)) / self.rate(rate_id, now)  # type: ignore[arg-type]
        value_then = sum((q * D(then[a]) for a, q in held.items()), D(0)) / self.rate(rate_id, now - window)  # type: ignore[arg-type]
        return (100 * (value_now / value_then - 1) if value_then else None), as_of


# ----------------------------------------------------------------------------------------------- the tests

COLUMNS = ["threshold_id", "kind", "subject", "asset_id", "portfolio", "time_window", "unit", "severity", "owner",
           "note", "current_value", "threshold", "breached", "as_of"]


def query(conn: Conn, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    cur = conn.execute(sql)  # type: ignore[call-overload]
    assert cur.description is not None
    return [c.name for c in cur.description], cur.fetchall()


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_alert_views_equal_0005_and_an_independent_computation(db: Conn, seed: int) -> None:
    load(db, random.Random(seed))
    with db.transaction(force_rollback=True):  # one now() for every query below
        db.execute("SET LOCAL ROLE coinpulse_reader")  # what Grafana's rule runs as
        columns, status = query(db, "SELECT * FROM coinpulse.alert_threshold_status ORDER BY threshold_id::bigint")
        _, evaluated = query(db, "SELECT * FROM coinpulse.alert_threshold_evaluation ORDER BY id")
        db.execute("RESET ROLE")
        old_columns, old_enabled = query(db, STATUS_0005 + " WHERE t.enabled ORDER BY t.id")
        _, old_disabled = query(db, STATUS_0005 + " WHERE NOT t.enabled ORDER BY t.id")
        oracle = Oracle(db)
        thresholds = db.execute("SELECT id, kind, asset_id, portfolio_id, time_window, enabled "
                                "FROM coinpulse.alert_thresholds ORDER BY id").fetchall()

    assert columns == old_columns == COLUMNS
    assert status == old_enabled  # the rule's rows: the same, bit for bit
    assert [r[:14] for r in evaluated if r[15]] == old_enabled
    assert [r[:14] for r in evaluated if not r[15]] == old_disabled
    assert [r[14] for r in evaluated] == [t[0] for t in thresholds]

    # every kind, with and without a value, enabled and not, is in the sample
    assert {r[1] for r in evaluated} == set(KIND_NAMES)
    assert any(r[10] is None for r in evaluated) and any(r[12] == 1 for r in evaluated)
    assert any(not r[15] for r in evaluated)
    for kind in KIND_NAMES:  # a value, not only NULLs, for every kind
        assert any(r[1] == kind and r[10] is not None for r in evaluated), kind

    for (tid, kind, asset, pid, window, _), row in zip(thresholds, evaluated, strict=True):
        value, as_of = oracle.current(kind, asset, pid, window)
        assert row[13] == as_of, (tid, kind, asset, window)
        if value is None:
            assert row[10] is None, (tid, kind, asset, window, row[10])
        else:
            assert row[10] == pytest.approx(float(value), rel=1e-9), (tid, kind, asset, window)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [4, 5])
def test_portfolio_views_equal_0004(db: Conn, seed: int) -> None:
    market = load(db, random.Random(seed))
    now = market.now
    with db.transaction(force_rollback=True):
        db.execute(VALUE_BY_ASSET_0004)  # type: ignore[arg-type]
        _, holdings = query(db, "SELECT * FROM coinpulse.portfolio_holdings ORDER BY portfolio_id, asset_id")
        _, old_holdings = query(db, f"SELECT * FROM ({HOLDINGS_0004}) h ORDER BY portfolio_id, asset_id")
        assert holdings == old_holdings and len(holdings) >= 8
        cases: list[tuple[datetime, datetime, str | None]] = [
            (now - 30 * DAY, now, None),  # hourly
            (now - 40 * DAY, now + HOUR, None),  # daily, past now
            (now - 6 * HOUR, now - HOUR, "7 minutes"),  # minute candles, 7-minute buckets
            (now - 3 * DAY - timedelta(minutes=13), now - DAY, "90 minutes"),  # rounded up to 2 hours
            (now - 300 * DAY, now - 200 * DAY, "1 day"),  # before every transaction and candle
        ]
        checked = 0
        for name in ("usd", "eur", "unpriced", "empty"):
            for start, end, bucket in cases:
                params = (name, start, end, bucket)
                new = db.execute("SELECT * FROM coinpulse.portfolio_value_by_asset(%s, %s, %s, %s::interval)",
                                 params).fetchall()
                old = db.execute("SELECT * FROM pg_temp.value_by_asset_0004(%s, %s, %s, %s::interval)",
                                 params).fetchall()
                assert new == old, (name, start, end, bucket)
                assert [str(r[5]) for r in new] == [str(r[5]) for r in old]  # same numeric scale too
                checked += sum(1 for r in new if r[7])
                totals = db.execute("SELECT time, value, value_usd FROM coinpulse.portfolio_value(%s, %s, %s, "
                                    "%s::interval)", params).fetchall()
                expected: dict[datetime, list[Any]] = {}
                for r in old:
                    expected.setdefault(r[0], []).append(r)
                assert [t[0] for t in totals] == sorted(expected)
                for moment, value, value_usd in totals:
                    rows = expected[moment]
                    assert value_usd == (None if any(r[7] is None for r in rows) else sum(r[7] for r in rows))
                    assert value == (None if any(r[9] is None for r in rows) else sum(r[9] for r in rows))
        assert checked > 100  # most buckets have a value: the comparison is not between empty series


def test_a_trade_at_a_bucket_edge_counts_from_the_next_bucket(db: Conn) -> None:
    """0004: the holding of a bucket is every trade before its end, so a trade exactly at the end is not in it."""
    db.execute("INSERT INTO coinpulse.assets (asset_id) VALUES ('x')")
    edge = datetime.fromisoformat("2026-10-01T01:00:00+00:00")
    db.execute("INSERT INTO coinpulse.price_ticks VALUES (%s, 'x', 10, 'demo')", (edge - HOUR,))
    db.execute("INSERT INTO coinpulse.portfolios (name) VALUES ('p')")
    db.execute("INSERT INTO coinpulse.portfolio_transactions (portfolio_id, time, asset_id, quantity, price_usd) "
               "SELECT portfolio_id, t, 'x', q, 10 FROM coinpulse.portfolios, (VALUES (%s::timestamptz, 1), "
               "(%s, 2), (%s, -3)) v(t, q)", (edge - HOUR, edge, edge + HOUR))
    rows = db.execute("SELECT time, quantity, value FROM coinpulse.portfolio_value_by_asset('p', %s, %s)",
                      (edge - HOUR, edge + 3 * HOUR)).fetchall()
    assert [(t - edge, q, v) for t, q, v in rows] == [
        (-HOUR, D(1), D(10)), (timedelta(0), D(3), D(30)), (HOUR, D(0), D(0)), (2 * HOUR, D(0), D(0))]


def test_daily_buckets_are_utc_days_in_any_session_time_zone(db: Conn) -> None:
    """0009: daily buckets are UTC days (those of candles_1d) also in a session whose time zone has daylight
    saving time; 0004/0007 stepped by '1 day' in the session's zone, an hour off after the change."""
    db.execute("INSERT INTO coinpulse.assets (asset_id) VALUES ('x')")
    first = datetime.fromisoformat("2026-03-25T00:00:00+00:00")  # Europe/Berlin moves to summer time on 03-29
    db.execute("INSERT INTO coinpulse.price_ticks SELECT %s + make_interval(days => d, hours => 12), 'x', 10 + d, "
               "'demo' FROM generate_series(0, 7) d", (first,))
    db.execute("INSERT INTO coinpulse.portfolios (name) VALUES ('p')")
    db.execute("INSERT INTO coinpulse.portfolio_transactions (portfolio_id, time, asset_id, quantity, price_usd) "
               "SELECT portfolio_id, %s, 'x', 2, 10 FROM coinpulse.portfolios", (first - DAY,))
    results = {}
    for zone in ("UTC", "Europe/Berlin", "America/New_York"):
        with db.transaction():
            db.execute("SELECT set_config('TimeZone', %s, true)", (zone,))
            results[zone] = db.execute(
                "SELECT time, quantity, price_usd, value_usd FROM coinpulse.portfolio_value_by_asset('p', %s, %s, "
                "'1 day')", (first, first + 8 * DAY)).fetchall()
    assert results["UTC"] == [(first + d * DAY, D(2), D(10 + d), D(2 * (10 + d))) for d in range(8)]
    assert results["Europe/Berlin"] == results["UTC"] and results["America/New_York"] == results["UTC"]


def test_downgrade_to_0006_restores_the_released_views(make_database: Callable[[], str]) -> None:
    from collector.db.migrate import migrate
    from conftest import alembic_to

    url = make_database()
    migrate(url)
    alembic_to(url, "downgrade", "0006")
    with psycopg.connect(url, autocommit=True) as conn:
        assert conn.execute("SELECT to_regclass('coinpulse.alert_threshold_evaluation')").fetchone() == (None,)
        definition = conn.execute("SELECT pg_get_viewdef('coinpulse.alert_threshold_status')").fetchone()
        assert definition is not None and "alert_threshold_current" in definition[0]
        source = conn.execute("SELECT prosrc FROM pg_proc WHERE proname = 'portfolio_value_by_asset'").fetchone()
        assert source is not None and "(SELECT coalesce(sum(t.quantity), 0)" in source[0]
        functions = conn.execute("SELECT count(*) FROM pg_proc WHERE proname = 'latest_price_any_time'").fetchone()
        assert functions == (0,)
    alembic_to(url, "upgrade", "head")
    with psycopg.connect(url, autocommit=True) as conn:
        definition = conn.execute("SELECT pg_get_viewdef('coinpulse.alert_threshold_status')").fetchone()
        assert definition is not None and "alert_threshold_evaluation" in definition[0]
        grants = conn.execute("SELECT has_table_privilege('coinpulse_reader', 'coinpulse.alert_threshold_status', "
                              "'SELECT'), has_table_privilege('coinpulse_reader', "
                              "'coinpulse.alert_threshold_evaluation', 'SELECT')").fetchone()
        assert grants == (True, True)
