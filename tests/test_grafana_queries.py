"""Every SQL query of the four CoinPulse dashboards, run as Grafana would run it, with asserted results.

Known rows go into the test TimescaleDB (ticks and snapshots over nine days, part of them materialized into
the rollups and the newest hours left to real-time aggregation, one chunk moved to the columnstore, job
statistics for two policies). Each panel query and each SQL template-variable query of grafana/dashboards/
{market-overview,asset-detail,exchanges-markets,pipeline-health}.json is then expanded by tests/grafana_sql.py
(Grafana's macros and variable formatting) for the dashboard's default time range and for wide and narrow
ones, and executed as ``coinpulse_reader`` in one read-only transaction (so ``now()`` is one instant). The
rows are compared with values computed here, in Python, from the rows inserted: right columns and types,
right rows in the right order, equal numbers.

The portfolio and alerts dashboards belong to other issues and are executed by their own tests.
"""

from __future__ import annotations

import json
import math
import random
import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from collector.db.lifecycle import RAW_TABLES
from collector.db.rollups import ROLLUPS
from grafana_sql import Target, expand, panel_interval, panel_targets, time_range

pytestmark = pytest.mark.full_edition

Conn = psycopg.Connection[tuple[object, ...]]
Row = tuple[Any, ...]
DASHBOARDS = Path(__file__).resolve().parents[1] / "grafana" / "dashboards"
MINE = ("market-overview.json", "asset-detail.json", "exchanges-markets.json", "pipeline-health.json")
ORIGIN = datetime(2000, 1, 3, tzinfo=UTC)  # time_bucket's origin for widths under a month
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)  # chunk boundaries are multiples of the interval from here

ASSETS = ("bitcoin", "ethereum", "solana", "o'coin")  # a quote in an id: variables must be escaped
RANKS = {"bitcoin": 1, "ethereum": 2, "solana": 5, "o'coin": 40, "dogecoin": 8}  # dogecoin: no data at all
EXCHANGES = ("binance", "coinbase", "kraken", "bitstamp")
SPAN = timedelta(days=9)
CUT = timedelta(hours=3)  # rollups materialized up to now - CUT; newer rows are aggregated in real time


def bucket(t: datetime, width: timedelta) -> datetime:
    return ORIGIN + (t - ORIGIN) // width * width


def load_dashboard(name: str) -> dict[str, Any]:
    data = json.loads((DASHBOARDS / name).read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


# ------------------------------------------------------------------------------------------------ the data

@dataclass
class Data:
    t0: datetime
    ticks: list[tuple[datetime, str, float, str]] = field(default_factory=list)
    snaps: list[dict[str, Any]] = field(default_factory=list)
    exch: list[dict[str, Any]] = field(default_factory=list)
    markets: list[dict[str, Any]] = field(default_factory=list)
    gaps: list[tuple[str | None, datetime, datetime, str, str, datetime, str | None]] = field(default_factory=list)

    @classmethod
    def make(cls, t0: datetime) -> Data:
        d = cls(t0)
        rng = random.Random(20261124)
        minute = t0.replace(second=0, microsecond=0)
        start = minute - SPAN
        for k, asset in enumerate(ASSETS):
            price = (60000.0, 3000.0, 150.0, 0.5)[k]
            at = start + timedelta(seconds=11 * k + 3)
            i = 0
            while at < t0 - timedelta(seconds=40):
                price = round(price * math.exp(rng.gauss(0, 0.004)), 8)
                source = "rest" if i % 9 == 0 else "ws"
                d.ticks.append((at, asset, price, source))
                # mostly 5 minutes apart, sometimes two ticks in a minute (real candles, not single prices)
                at += timedelta(minutes=5) if i % 4 else timedelta(seconds=23)
                i += 1
        for k, asset in enumerate(ASSETS):
            at = start + timedelta(minutes=7 + k)
            i = 0
            while at < t0 - timedelta(seconds=40):
                cap = (1.2e12, 3.6e11, 7e10, 2e8)[k] * (1 + 0.001 * i)
                vol = (3e10, 1.5e10, 2e9, 1e6)[k] * (1 + 0.002 * (i % 50))
                d.snaps.append({
                    "time": at, "asset_id": asset, "rank": RANKS[asset] + (i % 3 == 0),
                    "symbol": asset[:3].upper(), "name": asset.title(), "supply": 1e6 * (k + 1) + i,
                    "max_supply": 2.1e7 if asset == "bitcoin" else None,
                    # nulls: market cap missing in every 5th snapshot, volume in every 7th; the newest snapshot
                    # of o'coin has no market cap, so the table must sort it last
                    "market_cap_usd": None if i % 5 == 4 else cap,
                    "volume_usd_24hr": None if i % 7 == 6 else vol,
                    "price_usd": 1.0 + i, "vwap_24hr": 0.5 + i, "source": "rest"})
                at += timedelta(minutes=25)
                i += 1
        last_ocoin = max((s for s in d.snaps if s["asset_id"] == "o'coin"), key=lambda s: s["time"])
        last_ocoin["market_cap_usd"] = None
        for k, ex in enumerate(EXCHANGES):
            at = minute - timedelta(days=2) + timedelta(minutes=3 * k)
            i = 0
            while at < t0 - timedelta(seconds=40):
                d.exch.append({
                    "time": at, "exchange_id": ex, "name": None if ex == "bitstamp" else ex.title(),
                    "rank": k + 1, "volume_usd": (5e9, 2e9, 1e9, 4e8)[k] * (1 + 0.003 * i),
                    "percent_total_volume": None if i % 6 == 5 else (40.0, 20.0, 10.0, 4.0)[k] + 0.01 * i,
                    "trading_pairs": 100 + k + i % 3, "source": "rest"})
                at += timedelta(minutes=20)
                i += 1
        markets = [("binance", "bitcoin", "tether", "BTC", "USDT"), ("binance", "ethereum", "tether", "ETH", "USDT"),
                   ("kraken", "bitcoin", "united-states-dollar", "BTC", "USD"),
                   ("kraken", "bitcoin", "euro", "BTC", "EUR"), ("coinbase", "bitcoin", "united-states-dollar", "BTC",
                                                               "USD"),
                   ("coinbase", "o'coin", "united-states-dollar", None, "USD"),
                   ("bitstamp", "bitcoin", "united-states-dollar", "BTC", "USD")]
        for p in range(96):  # a /markets poll every 15 minutes for a day
            at = minute - timedelta(minutes=15 * p) - timedelta(seconds=50)
            for j, (ex, base, quote, bsym, qsym) in enumerate(markets):
                if ex == "bitstamp" and p % 2:  # bitstamp only in every other poll
                    continue
                base_price = {"bitcoin": 60000.0, "ethereum": 3000.0, "o'coin": 0.5}[base]
                d.markets.append({
                    "time": at, "exchange_id": ex, "base_id": base, "quote_id": quote, "base_symbol": bsym,
                    "quote_symbol": qsym, "rank": j + 1,
                    "price_usd": None if (p == 3 and ex == "kraken")
                    else base_price * (1 + 0.0004 * ((j * 7 + p) % 11 - 5)),
                    "volume_usd_24hr": None if j == 5 else 1e8 * (7 - j) + 1e5 * p,
                    "percent_exchange_volume": 1.5 * j, "trades_count_24hr": 1000 * j + p, "source": "rest"})
        d.gaps = [("bitcoin", t0 - timedelta(hours=5), t0 - timedelta(hours=4, minutes=50), "watchdog", "open",
                   t0 - timedelta(hours=4, minutes=49), None),
                  (None, t0 - timedelta(days=3), t0 - timedelta(days=3) + timedelta(minutes=2), "restart", "failed",
                   t0 - timedelta(days=3) + timedelta(minutes=3), "HTTP 429"),
                  ("ethereum", t0 - timedelta(hours=7), t0 - timedelta(hours=6), "closed", "done",
                   t0 - timedelta(hours=6), None),
                  ("solana", t0 - timedelta(minutes=30), t0 - timedelta(minutes=20), "watchdog", "filling",
                   t0 - timedelta(minutes=19), None)]
        return d

    def load(self, conn: Conn) -> None:
        with conn.cursor() as cur:
            for asset, rank in RANKS.items():
                symbol = None if asset == "dogecoin" else asset[:3].upper()
                cur.execute("INSERT INTO coinpulse.assets (asset_id, symbol, name, rank) VALUES (%s, %s, %s, %s)",
                            (asset, symbol, asset.title(), rank))
            for k, ex in enumerate(EXCHANGES):
                cur.execute("INSERT INTO coinpulse.exchanges (exchange_id, name, rank) VALUES (%s, %s, %s)",
                            (ex, None if ex == "bitstamp" else ex.title(), k + 1))
            with cur.copy("COPY coinpulse.price_ticks (time, asset_id, price_usd, source) FROM STDIN") as copy:
                for row in self.ticks:
                    copy.write_row(row)
            for table, rows in (("asset_snapshots", self.snaps), ("exchange_snapshots", self.exch),
                                ("market_snapshots", self.markets)):
                cols = list(rows[0])
                insert = sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
                    sql.Identifier("coinpulse", table), sql.SQL(", ").join(map(sql.Identifier, cols)),
                    sql.SQL(", ").join(sql.Placeholder() * len(cols)))
                cur.executemany(insert, [tuple(r[c] for c in cols) for r in rows])
            cur.executemany("INSERT INTO coinpulse.ingest_gaps (asset_id, gap_start, gap_end, reason, status, "
                            "detected_at, error) VALUES (%s, %s, %s, %s, %s, %s, %s)", self.gaps)

    # ---- independent computations

    def series(self, asset: str) -> list[tuple[datetime, float]]:
        return sorted((t, p) for t, a, p, _ in self.ticks if a == asset)

    def candles(self, asset: str, width: timedelta) -> dict[datetime, tuple[float, float, float, float, int]]:
        groups: dict[datetime, list[float]] = defaultdict(list)
        for t, p in self.series(asset):
            groups[bucket(t, width)].append(p)
        return {b: (ps[0], max(ps), min(ps), ps[-1], len(ps)) for b, ps in sorted(groups.items())}

    def last_tick(self, asset: str, after: datetime, before: datetime, *,
                  inclusive: bool) -> tuple[datetime, float] | None:
        """The newest tick of ``asset`` in (after, before] (``inclusive``) or [after, before)."""
        found = [(t, p) for t, p in self.series(asset)
                 if (after < t <= before if inclusive else after <= t < before)]
        return found[-1] if found else None

    def latest_snapshot(self, asset: str, at: datetime | None = None) -> dict[str, Any] | None:
        rows = [s for s in self.snaps if s["asset_id"] == asset
                and (at is None or at - timedelta(days=7) < s["time"] <= at)]
        return max(rows, key=lambda s: s["time"]) if rows else None

    def overview(self, asset: str, at: datetime) -> dict[str, Any]:
        """The dashboards' figures as of ``at`` (the end of the time range): the newest tick at most 7 days old;
        the change against the last tick before the minute N earlier, looking back at most a day more; the newest
        snapshot at most 7 days old; dimension rows where the snapshot has no value."""
        snap = self.latest_snapshot(asset, at) or {}
        dim_symbol = None if asset == "dogecoin" else asset[:3].upper()
        out: dict[str, Any] = {"asset": asset, "rank": snap.get("rank", RANKS[asset]),
                               "symbol": snap.get("symbol") or dim_symbol, "name": snap.get("name") or asset.title(),
                               "market cap": snap.get("market_cap_usd"), "24h volume": snap.get("volume_usd_24hr"),
                               "price": None, "price at": None, "1h %": None, "24h %": None, "7d %": None}
        latest = self.last_tick(asset, at - timedelta(days=7), at, inclusive=True)
        if latest is not None:
            out["price at"], out["price"] = latest
            for key, back, look in (("1h %", timedelta(hours=1), timedelta(hours=25)),
                                    ("24h %", timedelta(hours=24), timedelta(hours=48)),
                                    ("7d %", timedelta(days=7), timedelta(days=8))):
                old = self.last_tick(asset, at - look, bucket(at - back, timedelta(minutes=1)), inclusive=False)
                out[key] = None if old is None else 100 * (latest[1] / old[1] - 1)
        return out

    def last_per_group(self, rows: Sequence[dict[str, Any]], key: str, column: str, inner: timedelta,
                       outer: timedelta) -> dict[tuple[datetime, str], float]:
        """Rollup semantics: latest non-null value per ``inner`` bucket, then the last of those per ``outer``."""
        per_inner: dict[tuple[datetime, str], tuple[datetime, float]] = {}
        for r in rows:
            if r[column] is None:
                continue
            k = (bucket(r["time"], inner), r[key])
            if k not in per_inner or r["time"] > per_inner[k][0]:
                per_inner[k] = (r["time"], r[column])
        out: dict[tuple[datetime, str], tuple[datetime, float]] = {}
        for (b, ident), (_, value) in per_inner.items():
            g = (bucket(b, outer), ident)
            if g not in out or b > out[g][0]:
                out[g] = (b, value)
        return {k: v for k, (_, v) in out.items()}


# ------------------------------------------------------------------------------------------------ fixtures


@dataclass
class World:
    url: str
    data: Data
    jobs: dict[str, int]  # "refresh:candles_1h" -> job id
    job_stats: dict[int, tuple[bool, datetime, int, int]]  # job -> (success, finish, runs, failures)
    compressed_chunk: str
    storage_measured: datetime  # when refresh_storage_sizes (the job's procedure) ran


def refresh(conn: Conn, name: str, hi: datetime) -> None:
    conn.execute("CALL refresh_continuous_aggregate(%s::regclass, NULL, %s)", (f"coinpulse.{name}", hi))


@pytest.fixture(scope="module")
def world(migrated_url: str) -> Iterator[World]:
    from conftest import TRUNCATE

    # The data ends at the module's start and the panels ask for ranges ending at the query's now(): an hour
    # boundary in between would leave the newest hourly bucket empty. The module takes seconds (about a minute
    # on a loaded machine), so start it after the next hour has begun when that is less than 90 s away.
    to_next_hour = 3600 - time.time() % 3600
    if to_next_hour < 90:
        time.sleep(to_next_hour + 1)
    with psycopg.connect(migrated_url, autocommit=True) as conn:
        conn.execute(TRUNCATE)
        row = conn.execute("SELECT now()").fetchone()
        assert row is not None and isinstance(row[0], datetime)
        data = Data.make(row[0].astimezone(UTC))
        data.load(conn)
        cut = data.t0 - CUT
        for rollup in ROLLUPS:
            refresh(conn, rollup.name, bucket(cut, rollup.bucket))
        chunk = conn.execute("SELECT c::text FROM show_chunks('coinpulse.price_ticks') c ORDER BY 1 LIMIT 1"
                             ).fetchone()
        assert chunk is not None
        conn.execute("SELECT compress_chunk(%s::regclass)", (chunk[0],))
        with conn.transaction():
            conn.execute("CALL coinpulse.refresh_storage_sizes()")
            measured = conn.execute("SELECT now()").fetchone()
        assert measured is not None
        jobs = {f"{kind}:{target}": job_id for job_id, kind, target in conn.execute(
            "SELECT job_id, proc_name, hypertable_name FROM timescaledb_information.jobs WHERE job_id >= 1000")}
        jobs = {k.replace("policy_refresh_continuous_aggregate", "refresh").replace("policy_compression",
                "columnstore").replace("policy_retention", "retention"): v for k, v in jobs.items()}
        # Job statistics as TimescaleDB's scheduler records them (the tests keep the scheduler paused; runs it
        # made right after the migration are set aside and put back afterwards).
        conn.execute("CREATE TEMP TABLE saved_job_stat AS SELECT * FROM _timescaledb_internal.bgw_job_stat")
        conn.execute("DELETE FROM _timescaledb_internal.bgw_job_stat")
        stats = {jobs["refresh:candles_1h"]: (True, data.t0 - timedelta(minutes=20), 12, 0),
                 jobs["retention:market_snapshots"]: (False, data.t0 - timedelta(minutes=5), 4, 3)}
        for job_id, (ok, finish, runs, failures) in stats.items():
            conn.execute(
                "INSERT INTO _timescaledb_internal.bgw_job_stat (job_id, last_start, last_finish, next_start, "
                "last_successful_finish, last_run_success, total_runs, total_duration, total_duration_failures, "
                "total_successes, total_failures, total_crashes, consecutive_failures, consecutive_crashes) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, '1 s', '0 s', %s, %s, 0, %s, 0)",
                (job_id, finish - timedelta(seconds=2), finish, finish + timedelta(hours=1),
                 finish if ok else data.t0 - timedelta(days=2), ok, runs, runs - failures, failures,
                 0 if ok else failures))
        try:
            yield World(migrated_url, data, jobs, stats, chunk[0], measured[0])
        finally:
            conn.execute("DELETE FROM _timescaledb_internal.bgw_job_stat")
            conn.execute("INSERT INTO _timescaledb_internal.bgw_job_stat SELECT * FROM saved_job_stat")
            conn.execute(TRUNCATE)


@dataclass
class Result:
    columns: list[str]
    types: list[str]
    rows: list[Row]

    def dicts(self) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, r, strict=True)) for r in self.rows]


class Runner:
    """Runs expanded dashboard SQL as coinpulse_reader in one read-only transaction (one now())."""

    def __init__(self, conn: Conn) -> None:
        self.conn = conn
        row = conn.execute("SELECT now()").fetchone()
        assert row is not None and isinstance(row[0], datetime)
        self.now = row[0].astimezone(UTC)

    def run(self, target: Target, raw_from: str, raw_to: str = "now", *,
            variables: dict[str, str | list[str]] | None = None) -> tuple[Result, datetime, datetime, timedelta]:
        t_from, t_to = time_range(raw_from, raw_to, now=self.now)
        interval = panel_interval(target, t_from, t_to)
        sql = expand(target.text, time_from=t_from, time_to=t_to, interval=interval, variables=variables or {},
                     now=self.now)
        cur = self.conn.execute(sql)  # type: ignore[arg-type]
        assert cur.description is not None
        types = [self.conn.adapters.types.get(c.type_code).name  # type: ignore[union-attr]
                 for c in cur.description]
        return Result([c.name for c in cur.description], types, cur.fetchall()), t_from, t_to, interval


@pytest.fixture
def runner(world: World) -> Iterator[Runner]:
    with psycopg.connect(world.url) as conn:
        conn.execute("SET TRANSACTION READ ONLY")
        conn.execute("SET ROLE coinpulse_reader")
        yield Runner(conn)
        conn.rollback()


def target(dashboard: str, title: str, ref: str = "A") -> Target:
    dash = load_dashboard(dashboard)
    found = [t for t in panel_targets(dash) if t.panel_title == title and t.ref_id == ref]
    assert len(found) == 1, f"{dashboard}: no single target {title!r}/{ref}"
    return found[0]


def variable_values(runner: Runner, dashboard: str, name: str) -> list[str]:
    result, *_ = runner.run(target(dashboard, f"variable {name}", name), "now-24h")
    assert result.columns == ["__value", "__text"] and result.types == ["text", "text"]
    return [r[0] for r in result.rows]


def approx(x: float | None) -> Any:
    return None if x is None else pytest.approx(x, rel=1e-12, abs=1e-9)


def within(t: datetime, t_from: datetime, t_to: datetime) -> bool:
    return t_from <= t <= t_to


NUMERIC = {"float8", "float4", "numeric", "int8", "int4", "int2"}


def assert_time_series(result: Result) -> None:
    """What Grafana's time_series format needs: a timestamptz "time" column, numeric values, sorted by time."""
    assert result.columns[0] == "time" and result.types[0] == "timestamptz"
    for name, typ in zip(result.columns[1:], result.types[1:], strict=True):
        assert typ in NUMERIC or (name == "metric" and typ == "text"), (name, typ)
    times = [r[0] for r in result.rows]
    assert times == sorted(times)


# ------------------------------------------------------------------------------------------------ completeness

CHECKED: set[tuple[str, str, str]] = set()


def checks(dashboard: str, title: str, ref: str = "A") -> Callable[[Callable[..., None]], Callable[..., None]]:
    CHECKED.add((dashboard, title, ref))
    return lambda fn: fn


# ------------------------------------------------------------------------------------------------ market overview

MO = "market-overview.json"


def test_variable_queries_list_assets_and_exchanges_by_rank(runner: Runner) -> None:
    expected_assets = sorted(RANKS, key=lambda a: (RANKS[a], a))
    assert variable_values(runner, MO, "asset") == expected_assets
    result, *_ = runner.run(target(MO, "variable asset", "asset"), "now-24h")
    assert dict(result.rows)["o'coin"] == "O'C (o'coin)" and dict(result.rows)["dogecoin"] == "dogecoin"
    assert variable_values(runner, "asset-detail.json", "asset") == expected_assets
    assert variable_values(runner, "exchanges-markets.json", "exchange") == list(EXCHANGES)
    # base: assets traded in markets polled in the last day
    assert variable_values(runner, "exchanges-markets.json", "base") == ["bitcoin", "ethereum", "o'coin"]


for _name in (MO, "asset-detail.json"):
    CHECKED.add((_name, "variable asset", "asset"))
CHECKED |= {("exchanges-markets.json", "variable exchange", "exchange"),
            ("exchanges-markets.json", "variable base", "base")}


@checks(MO, "Data source")
def test_demo_banner_is_off_for_live_data_and_on_for_demo_ticks(runner: Runner, world: World) -> None:
    t = target(MO, "Data source")
    result, *_ = runner.run(t, "now-24h", variables={})
    assert result.columns == ["demo feed"] and result.types == ["int4"] and result.rows == [(0,)]
    # A demo tick newer than every other tick of one asset turns the banner on ...
    with psycopg.connect(world.url, autocommit=True) as conn:
        conn.execute("INSERT INTO coinpulse.price_ticks VALUES (now() - interval '10 seconds', 'solana', 1, 'demo')")
    try:
        with psycopg.connect(world.url) as conn:
            conn.execute("SET ROLE coinpulse_reader")
            demo, *_ = Runner(conn).run(t, "now-24h")
            assert demo.rows == [(1,)]
            # ... but not for a time range that ended before it
            old, *_ = Runner(conn).run(t, "now-2d", "now-1d")
            assert old.rows == [(0,)]
    finally:
        with psycopg.connect(world.url, autocommit=True) as conn:
            conn.execute("DELETE FROM coinpulse.price_ticks WHERE source = 'demo'")


TABLE_COLUMNS = ["rank", "asset", "symbol", "name", "price", "1h %", "24h %", "7d %", "market cap", "24h volume",
                 "price at"]


@checks(MO, "Top assets by market cap", "A")
@pytest.mark.parametrize("selection", ["all", "some"])
@pytest.mark.parametrize(("raw_from", "raw_to"), [("now-24h", "now"), ("now-3d", "now-2d")])
def test_top_assets_table(runner: Runner, world: World, selection: str, raw_from: str, raw_to: str) -> None:
    """As of the end of the time range: now by default, two days ago for a range that ended then."""
    all_assets = variable_values(runner, MO, "asset")
    chosen = all_assets if selection == "all" else ["o'coin", "ethereum"]
    result, _, t_to, _ = runner.run(target(MO, "Top assets by market cap", "A"), raw_from, raw_to,
                                    variables={"asset": chosen})
    assert result.columns == TABLE_COLUMNS
    assert result.types == ["int4", "text", "text", "text", "float8", "float8", "float8", "float8", "float8",
                            "float8", "timestamptz"]
    expected = [world.data.overview(a, t_to) for a in chosen]
    expected.sort(key=lambda o: (o["market cap"] is None, -(o["market cap"] or 0), o["asset"]))
    got = result.dicts()
    assert [g["asset"] for g in got] == [e["asset"] for e in expected]
    # no snapshot / newest snapshot without a market cap: last (o'coin's has one two days ago)
    nulls = ({"dogecoin", "o'coin"} if raw_to == "now" else {"dogecoin"}) & set(chosen)
    tail = got[len(got) - len(nulls):]
    assert {g["asset"] for g in tail} == nulls and all(g["market cap"] is None for g in tail)
    for g, e in zip(got, expected, strict=True):
        assert {k: g[k] for k in ("rank", "symbol", "name", "price at")} == \
            {k: e[k] for k in ("rank", "symbol", "name", "price at")}
        for k in ("price", "1h %", "24h %", "7d %", "market cap", "24h volume"):
            assert g[k] == approx(e[k]), (g["asset"], k)
    assert got[0]["1h %"] is not None and got[0]["1h %"] != got[0]["24h %"]
    # 7 days before a range that ended two days ago lies before the first tick (nine days ago)
    assert (got[0]["7d %"] is None) == (raw_to != "now")


@checks(MO, "Top assets by market cap", "B")
@pytest.mark.parametrize("raw_from", ["now-24h", "now-1y"])
def test_top_assets_sparkline(runner: Runner, world: World, raw_from: str) -> None:
    chosen = ["bitcoin", "o'coin"]
    result, t_from, t_to, _ = runner.run(target(MO, "Top assets by market cap", "B"), raw_from,
                                         variables={"asset": chosen})
    assert result.columns == ["time", "asset", "trend"] and result.types == ["timestamptz", "text", "float8"]
    width = timedelta(hours=1) if raw_from == "now-24h" else timedelta(days=1)
    expected = sorted((b, a, c[3]) for a in chosen for b, c in world.data.candles(a, width).items()
                      if within(b, t_from, t_to))
    # Sanity floors (the equality below is the check): 23 full hours of each asset, not 24, as the query's now()
    # may be just past an hour the data (ending when the module started) has not reached.
    assert len(expected) >= (46 if width == timedelta(hours=1) else 18)
    assert [(r[0], r[1]) for r in result.rows] == [(e[0], e[1]) for e in expected]
    assert [r[2] for r in result.rows] == [approx(e[2]) for e in expected]


@checks(MO, "Movers (24h)")
def test_movers(runner: Runner, world: World) -> None:
    all_assets = variable_values(runner, MO, "asset")
    result, *_ = runner.run(target(MO, "Movers (24h)"), "now-24h", variables={"asset": all_assets})
    assert result.columns == ["asset", "24h %"] and result.types == ["text", "float8"]
    moves = [o for o in (world.data.overview(a, runner.now) for a in all_assets) if o["24h %"] is not None]
    moves.sort(key=lambda o: (-abs(o["24h %"]), o["asset"]))
    assert [r[0] for r in result.rows] == [o["symbol"] for o in moves][:10]
    assert [r[1] for r in result.rows] == [approx(o["24h %"]) for o in moves][:10]
    assert len(result.rows) == 4


@checks(MO, "Total market cap and 24h volume")
@pytest.mark.parametrize("raw_from", ["now-24h", "now-7d", "now-1y"])
def test_total_market_cap_and_volume(runner: Runner, world: World, raw_from: str) -> None:
    chosen = ["bitcoin", "ethereum", "o'coin"]
    result, t_from, t_to, _ = runner.run(target(MO, "Total market cap and 24h volume"), raw_from,
                                         variables={"asset": chosen})
    assert result.columns == ["time", "total market cap", "total 24h volume"]
    assert_time_series(result)
    width = timedelta(hours=1) if raw_from != "now-1y" else timedelta(days=1)
    rows = [s for s in world.data.snaps if s["asset_id"] in chosen and within(bucket(s["time"], width), t_from, t_to)]
    caps = world.data.last_per_group(rows, "asset_id", "market_cap_usd", width, width)
    vols = world.data.last_per_group(rows, "asset_id", "volume_usd_24hr", width, width)
    groups = sorted({bucket(s["time"], width) for s in rows})
    assert [r[0] for r in result.rows] == groups
    assert len(groups) >= {"now-24h": 23, "now-7d": 160, "now-1y": 9}[raw_from]  # 23: see test_top_assets_sparkline
    for row in result.rows:
        cap = [v for (g, _), v in caps.items() if g == row[0]]
        vol = [v for (g, _), v in vols.items() if g == row[0]]
        assert row[1] == approx(sum(cap) if cap else None)
        assert row[2] == approx(sum(vol) if vol else None)


# ------------------------------------------------------------------------------------------------ asset detail

AD = "asset-detail.json"


@checks(AD, "Price (OHLC)")
@pytest.mark.parametrize(("raw_from", "width"), [("now-6h", timedelta(minutes=1)), ("now-7d", timedelta(hours=1)),
                                                 ("now-1y", timedelta(days=1))])
@pytest.mark.parametrize("asset", ["bitcoin", "o'coin"])
def test_candles_pick_the_rollup_by_range(runner: Runner, world: World, raw_from: str, width: timedelta,
                                          asset: str) -> None:
    result, t_from, t_to, _ = runner.run(target(AD, "Price (OHLC)"), raw_from, variables={"asset": asset})
    assert result.columns == ["time", "open", "high", "low", "close", "ticks"]
    assert result.types == ["timestamptz", "float8", "float8", "float8", "float8", "int8"]
    expected = [(b, *c) for b, c in world.data.candles(asset, width).items() if within(b, t_from, t_to)]
    assert 9 <= len(expected) <= 800
    assert [r[0] for r in result.rows] == [e[0] for e in expected]
    assert [r[5] for r in result.rows] == [e[5] for e in expected]
    for r, e in zip(result.rows, expected, strict=True):
        assert list(r[1:5]) == [approx(v) for v in e[1:5]]


@checks(AD, "24h volume")
@checks(AD, "Market cap")
@pytest.mark.parametrize("raw_from", ["now-7d", "now-1y"])
@pytest.mark.parametrize(("title", "column"), [("24h volume", "volume_usd_24hr"), ("Market cap", "market_cap_usd")])
def test_asset_volume_and_market_cap(runner: Runner, world: World, raw_from: str, title: str, column: str) -> None:
    result, t_from, t_to, _ = runner.run(target(AD, title), raw_from, variables={"asset": "bitcoin"})
    assert result.columns == ["time", title.lower()] and result.types == ["timestamptz", "float8"]
    assert_time_series(result)
    width = timedelta(hours=1) if raw_from == "now-7d" else timedelta(days=1)
    rows = [s for s in world.data.snaps if s["asset_id"] == "bitcoin"]
    per = world.data.last_per_group(rows, "asset_id", column, width, width)
    expected = sorted((b, v) for (b, _), v in per.items() if within(b, t_from, t_to))
    assert [r[0] for r in result.rows] == [e[0] for e in expected]
    assert [r[1] for r in result.rows] == [approx(e[1]) for e in expected]


@checks(AD, "Latest price")
@pytest.mark.parametrize("asset", ["bitcoin", "o'coin", "dogecoin"])
def test_latest_price(runner: Runner, world: World, asset: str) -> None:
    result, *_ = runner.run(target(AD, "Latest price"), "now-7d", variables={"asset": asset})
    assert result.columns == ["price", "1h %", "24h %", "7d %", "price age"]
    assert result.types == ["float8", "float8", "float8", "float8", "numeric"]
    o = world.data.overview(asset, runner.now)
    (row,) = result.rows
    assert list(row[:4]) == [approx(o[k]) for k in ("price", "1h %", "24h %", "7d %")]
    if o["price at"] is None:
        assert row[4] is None
    else:
        assert row[4] == Decimal(str((runner.now - o["price at"]) / timedelta(microseconds=1))) / Decimal(10**6)


@checks(AD, "Latest snapshot")
@pytest.mark.parametrize("asset", ["bitcoin", "o'coin", "dogecoin"])
def test_latest_snapshot(runner: Runner, world: World, asset: str) -> None:
    result, *_ = runner.run(target(AD, "Latest snapshot"), "now-7d", variables={"asset": asset})
    assert result.columns == ["rank", "market cap", "24h volume", "supply", "max supply", "24h VWAP", "snapshot age"]
    assert result.types == ["int4", "float8", "float8", "float8", "float8", "float8", "numeric"]
    snap = world.data.latest_snapshot(asset, runner.now)
    if snap is None:
        assert result.rows == []
        return
    (row,) = result.rows
    assert row[:6] == (snap["rank"], snap["market_cap_usd"], snap["volume_usd_24hr"], snap["supply"],
                       snap["max_supply"], snap["vwap_24hr"])
    assert float(row[6]) == pytest.approx((runner.now - snap["time"]).total_seconds(), abs=1e-6)


# ------------------------------------------------------------------------------------------------ exchanges & markets

EM = "exchanges-markets.json"


@checks(EM, "Volume share by exchange")
@pytest.mark.parametrize("raw_from", ["now-24h", "now-1y"])
@pytest.mark.parametrize("selection", [["binance", "coinbase", "kraken", "bitstamp"], ["kraken", "bitstamp"]])
def test_volume_share_by_exchange(runner: Runner, world: World, raw_from: str, selection: list[str]) -> None:
    result, t_from, t_to, interval = runner.run(target(EM, "Volume share by exchange"), raw_from,
                                                variables={"exchange": selection})
    assert result.columns == ["time", "metric", "share"] and result.types == ["timestamptz", "text", "float8"]
    assert_time_series(result)
    hour, day = timedelta(hours=1), timedelta(days=1)
    rows = [e for e in world.data.exch if e["exchange_id"] in selection and within(bucket(e["time"], hour), t_from,
                                                                                     t_to)]
    if raw_from == "now-24h":  # as of the end of each interval
        per = world.data.last_per_group(rows, "exchange_id", "percent_total_volume", hour, interval)
    else:  # over 31 days: one point a day, the day's last hour
        hourly = world.data.last_per_group(rows, "exchange_id", "percent_total_volume", hour, hour)
        per = {(bucket(b, day), ex): v for (b, ex), v in hourly.items() if b.hour == 23}
    expected = sorted((g, ex, v) for (g, ex), v in per.items())
    assert len({e[0] for e in expected}) >= (23 if raw_from == "now-24h" else 2)
    assert [(r[0], r[1]) for r in result.rows] == [(e[0], e[1]) for e in expected]
    assert [r[2] for r in result.rows] == [approx(e[2]) for e in expected]


@checks(EM, "Exchanges")
@pytest.mark.parametrize("raw_to", ["now", "now-1d"])
def test_exchanges_table(runner: Runner, world: World, raw_to: str) -> None:
    result, _, t_to, _ = runner.run(target(EM, "Exchanges"), "now-2d", raw_to,
                                    variables={"exchange": list(EXCHANGES)})
    assert result.columns == ["rank", "exchange", "24h volume", "share %", "pairs", "as of"]
    assert result.types == ["int4", "text", "float8", "float8", "int4", "timestamptz"]
    expected = []
    for ex in sorted(EXCHANGES):  # the newest snapshot at the end of the range, at most 7 days old
        e = max((r for r in world.data.exch if r["exchange_id"] == ex and t_to - timedelta(days=7) < r["time"] <= t_to),
                key=lambda r: r["time"])
        expected.append((e["rank"], e["name"] or ex, e["volume_usd"], e["percent_total_volume"], e["trading_pairs"],
                         e["time"]))
    assert result.rows == expected


def newest_poll_markets(data: Data, t_from: datetime, t_to: datetime, keep: Callable[[dict[str, Any]], bool]
                        ) -> list[dict[str, Any]]:
    polls = [m["time"] for m in data.markets if within(m["time"], t_from, t_to)]
    newest = max(polls)
    latest: dict[tuple[str, str, str], dict[str, Any]] = {}
    for m in data.markets:
        if newest - timedelta(hours=1) < m["time"] <= newest and keep(m):
            k = (m["exchange_id"], m["base_id"], m["quote_id"])
            if k not in latest or m["time"] > latest[k]["time"]:
                latest[k] = m
    return list(latest.values())


@checks(EM, "Top markets by 24h volume")
@pytest.mark.parametrize(("raw_from", "raw_to"), [("now-24h", "now"), ("now-24h", "now-6h")])
def test_top_markets(runner: Runner, world: World, raw_from: str, raw_to: str) -> None:
    chosen = ["binance", "kraken", "coinbase"]
    result, t_from, t_to, _ = runner.run(target(EM, "Top markets by 24h volume"), raw_from, raw_to,
                                         variables={"exchange": chosen})
    assert result.columns == ["market", "exchange", "price", "24h volume", "% of exchange", "24h trades", "as of"]
    assert result.types == ["text", "text", "float8", "float8", "float8", "int8", "timestamptz"]
    ms = newest_poll_markets(world.data, t_from, t_to, lambda m: m["exchange_id"] in chosen)
    ms.sort(key=lambda m: (m["volume_usd_24hr"] is None, -(m["volume_usd_24hr"] or 0), m["exchange_id"],
                           m["base_id"], m["quote_id"]))
    expected = [((m["base_symbol"] or m["base_id"]) + "/" + (m["quote_symbol"] or m["quote_id"]), m["exchange_id"],
                 m["price_usd"], m["volume_usd_24hr"], m["percent_exchange_volume"], m["trades_count_24hr"],
                 m["time"]) for m in ms][:25]
    assert len(expected) == 6 and expected[-1][0] == "o'coin/USD"
    assert result.rows == expected


@checks(EM, "${base} across exchanges")
@pytest.mark.parametrize("base", ["bitcoin", "o'coin"])
def test_price_across_exchanges(runner: Runner, world: World, base: str) -> None:
    chosen = ["binance", "kraken", "coinbase"]
    result, t_from, t_to, _ = runner.run(target(EM, "${base} across exchanges"), "now-24h",
                                         variables={"exchange": chosen, "base": base})
    assert result.columns == ["exchange", "quote", "price", "vs median %", "24h volume", "as of"]
    assert result.types == ["text", "text", "float8", "float8", "float8", "timestamptz"]
    polls = [m["time"] for m in world.data.markets if m["base_id"] == base and within(m["time"], t_from, t_to)]
    newest = max(polls)
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    for m in world.data.markets:
        if (m["base_id"] == base and m["price_usd"] is not None and m["exchange_id"] in chosen
                and newest - timedelta(hours=1) < m["time"] <= newest):
            k = (m["exchange_id"], m["quote_id"])
            if k not in latest or m["time"] > latest[k]["time"]:
                latest[k] = m
    med = statistics.median(m["price_usd"] for m in latest.values())
    ordered = sorted(latest.values(), key=lambda m: (-m["price_usd"], m["exchange_id"], m["quote_id"]))
    assert [(r[0], r[1], r[2], r[4], r[5]) for r in result.rows] == [
        (m["exchange_id"], m["quote_symbol"] or m["quote_id"], m["price_usd"], m["volume_usd_24hr"], m["time"])
        for m in ordered]
    assert [r[3] for r in result.rows] == [approx(100 * (m["price_usd"] / med - 1)) for m in ordered]
    assert len(result.rows) == (4 if base == "bitcoin" else 1)


@checks(EM, "${base} price spread across exchanges")
@pytest.mark.parametrize("raw_from", ["now-24h", "now-1y"])
def test_price_spread_over_time(runner: Runner, world: World, raw_from: str) -> None:
    chosen = list(EXCHANGES)
    result, t_from, t_to, interval = runner.run(target(EM, "${base} price spread across exchanges"), raw_from,
                                                variables={"exchange": chosen, "base": "bitcoin"})
    assert result.columns == ["time", "spread %", "lowest price", "highest price"]
    assert_time_series(result)
    polls: dict[datetime, list[float]] = defaultdict(list)
    for m in world.data.markets:
        if m["base_id"] == "bitcoin" and m["price_usd"] is not None and within(m["time"], t_from, t_to):
            polls[m["time"]].append(m["price_usd"])
    groups: dict[datetime, list[tuple[float, float, float]]] = defaultdict(list)
    for t, prices in polls.items():
        if len(prices) >= 2:
            spread = 100 * (max(prices) - min(prices)) / statistics.median(prices)
            groups[bucket(t, interval)].append((spread, min(prices), max(prices)))
    expected = [(g, max(s for s, _, _ in v), min(lo for _, lo, _ in v), max(hi for _, _, hi in v))
                for g, v in sorted(groups.items())]
    assert len(expected) >= (90 if raw_from == "now-24h" else 1)
    assert [r[0] for r in result.rows] == [e[0] for e in expected]
    for r, e in zip(result.rows, expected, strict=True):
        assert list(r[1:]) == [approx(v) for v in e[1:]]


# ------------------------------------------------------------------------------------------------ pipeline health

PH = "pipeline-health.json"


@checks(PH, "Rollup freshness")
def test_rollup_freshness(runner: Runner, world: World) -> None:
    result, *_ = runner.run(target(PH, "Rollup freshness"), "now-6h")
    assert result.columns == ["rollup", "materialized through", "lag", "last refresh", "last run", "failures"]
    assert result.types == ["text", "timestamptz", "numeric", "timestamptz", "text", "int8"]
    assert [r[0] for r in result.rows] == [r.name for r in ROLLUPS]
    cut = world.data.t0 - CUT
    sources = {"candles": [t for t, *_ in world.data.ticks], "asset_volume": [s["time"] for s in world.data.snaps],
               "exchange_volume": [e["time"] for e in world.data.exch]}
    for row, rollup in zip(result.rows, ROLLUPS, strict=True):
        times = next(v for k, v in sources.items() if rollup.name.startswith(k))
        # materialized: buckets with rows before the refresh window's end; the watermark is the last one's end
        hi = bucket(cut, rollup.bucket)
        expected = max(bucket(t, rollup.bucket) for t in times if bucket(t, rollup.bucket) < hi) + rollup.bucket
        assert row[1] == expected, rollup.name
        assert float(row[2]) == pytest.approx((runner.now - expected).total_seconds(), abs=1e-6)
    ok_id = world.jobs["refresh:candles_1h"]
    ok = world.job_stats[ok_id]
    by_name = {r[0]: r for r in result.rows}
    assert by_name["candles_1h"][3:] == (ok[1], "Success", 0)
    assert by_name["candles_1m"][3:] == (None, None, 0)


@checks(PH, "Policy jobs")
def test_policy_jobs_failing_first(runner: Runner, world: World) -> None:
    result, *_ = runner.run(target(PH, "Policy jobs"), "now-6h")
    assert result.columns == ["job", "kind", "target", "scheduled", "last run", "last started", "last success",
                              "next start", "runs", "failures"]
    assert result.types == ["int4", "text", "text", "bool", "text", "timestamptz", "timestamptz", "timestamptz",
                            "int8", "int8"]
    expected_jobs = ({f"columnstore:{t}" for t in RAW_TABLES} | {f"retention:{t}" for t in RAW_TABLES}
                     | {f"refresh:{r.name}" for r in ROLLUPS} | {"storage sizes:"})
    assert {f"{r[1]}:{r[2]}" for r in result.rows} == expected_jobs and len(result.rows) == len(expected_jobs)
    failed_id = world.jobs["retention:market_snapshots"]
    ok_id = world.jobs["refresh:candles_1h"]
    first, second = result.rows[0], result.rows[1]
    _, finish, runs, failures = world.job_stats[failed_id]
    # The tests' jobs are unscheduled (paused), and job_stats shows no next start for those.
    assert first == (failed_id, "retention", "market_snapshots", False, "Failed", finish - timedelta(seconds=2),
                     world.data.t0 - timedelta(days=2), None, runs, failures)
    assert second[0] == ok_id and second[4] == "Success" and second[8:] == (12, 0)
    rest = [r[0] for r in result.rows[2:]]
    assert rest == sorted(rest) and all(r[4] is None and r[8:] == (0, 0) for r in result.rows[2:])


@checks(PH, "Chunks and columnstore")
def test_chunks_and_columnstore(runner: Runner, world: World) -> None:
    result, *_ = runner.run(target(PH, "Chunks and columnstore"), "now-6h")
    assert result.columns == ["kind", "table", "chunks", "in columnstore", "total size", "columnstore before",
                              "columnstore after", "measured"]
    assert result.types == ["text", "text", "int8", "int8", "int8", "int8", "int8", "timestamptz"]
    # the job's measurement, taken when the module's data was in place
    assert {r[7] for r in result.rows} == {world.storage_measured}
    assert [(r[0], r[1]) for r in result.rows] == sorted(
        [("raw", t) for t in RAW_TABLES] + [("rollup", r.name) for r in ROLLUPS])
    rows = {r[1]: r for r in result.rows}

    def chunk_count(times: list[datetime], interval: timedelta) -> int:
        return len({(t - EPOCH) // interval for t in times})

    d = world.data
    assert rows["price_ticks"][2:4] == (chunk_count([t for t, *_ in d.ticks], timedelta(days=1)), 1)
    assert rows["asset_snapshots"][2:4] == (chunk_count([s["time"] for s in d.snaps], timedelta(days=7)), 0)
    assert rows["exchange_snapshots"][2:4] == (chunk_count([e["time"] for e in d.exch], timedelta(days=7)), 0)
    assert rows["market_snapshots"][2:4] == (chunk_count([m["time"] for m in d.markets], timedelta(days=1)), 0)
    assert rows["rate_snapshots"][2:4] == (0, 0)
    before, after = rows["price_ticks"][5], rows["price_ticks"][6]
    assert before is not None and after is not None and before > after > 0
    assert all(r[5] is None and r[6] is None for name, r in rows.items() if name != "price_ticks")
    assert all(r[4] > 0 for name, r in rows.items() if name != "rate_snapshots")
    assert all(r[2] >= 1 for name, r in rows.items() if name in {x.name for x in ROLLUPS})


@checks(PH, "Ingest gaps")
@pytest.mark.parametrize(("raw_from", "in_range"), [("now-6h", 2), ("now-7d", 4)])
def test_gap_counts(runner: Runner, world: World, raw_from: str, in_range: int) -> None:
    result, t_from, t_to, _ = runner.run(target(PH, "Ingest gaps"), raw_from)
    assert result.columns == ["not backfilled", "backfill failed", "detected in range"]
    assert result.types == ["int8", "int8", "int8"]
    gaps = world.data.gaps
    assert result.rows == [(sum(g[4] != "done" for g in gaps), sum(g[4] == "failed" for g in gaps),
                            sum(within(g[5], t_from, t_to) for g in gaps))]
    assert result.rows[0][2] == in_range


@checks(PH, "Open gaps")
def test_open_gaps(runner: Runner, world: World) -> None:
    result, *_ = runner.run(target(PH, "Open gaps"), "now-6h")
    assert result.columns == ["asset", "from", "to", "length", "reason", "status", "detected", "error"]
    assert result.types == ["text", "timestamptz", "timestamptz", "numeric", "text", "text", "timestamptz", "text"]
    expected = sorted(((a or "all streamed assets", s, e, Decimal((e - s).total_seconds()).normalize(), r, st, det,
                        err) for a, s, e, r, st, det, err in world.data.gaps if st != "done"), key=lambda g: g[1])
    assert [(*r[:3], r[3].normalize(), *r[4:]) for r in result.rows] == expected


# ------------------------------------------------------------------------------------------------ completeness

def test_every_sql_query_of_these_dashboards_is_checked_here() -> None:
    found = {(name, t.panel_title, t.ref_id) for name in MINE for t in panel_targets(load_dashboard(name))
             if t.language == "sql"}
    assert found == CHECKED, {"unchecked": sorted(found - CHECKED), "stale": sorted(CHECKED - found)}
