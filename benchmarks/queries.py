"""Candle queries: the rollups (continuous aggregates) against time_bucket over the raw ticks, side by side.

    .venv/bin/python benchmarks/queries.py [--database-url URL] [--assets 100] [--days 365] [--no-columnstore]

Loads one year of 5-minute ticks for 100 assets (10.5M rows, generated on the server with generate_series),
materializes the rollups, converts raw chunks older than 7 days to the columnstore as the default policy
would (unless --no-columnstore), runs VACUUM ANALYZE, then times each query both ways:

- server: planning + execution time from EXPLAIN (ANALYZE, TIMING OFF), median of the runs. This is the
  number to compare; decoding tens of thousands of rows in Python would otherwise dominate.
- client: wall time of executing the query and fetching every row with psycopg, median of the runs.

Without --database-url a throwaway local TimescaleDB cluster is started (as the tests do) and removed.
With a URL the database is migrated and reused: if it already holds exactly the generated data set, the
load is skipped. Background jobs of that database are paused so that retention does not drop the year.
Target (README): 1y x 100 assets daily candles from the rollup < 20 ms and >= 500x faster than raw.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from collector.db.migrate import migrate
from collector.db.rollups import align_down, refresh_window

TICK_EVERY = timedelta(minutes=5)

GENERATE = """
INSERT INTO coinpulse.price_ticks (time, asset_id, price_usd, source)
SELECT t, 'asset-' || lpad(a::text, 3, '0'),
       (10 + a * 97 %% 1000) * (1.5 + sin(extract(epoch FROM t) / 86400.0 / 7 + a)
                                   + 0.02 * sin(extract(epoch FROM t) / 3600.0 + a * 3) + 0.01 * random()),
       'demo'
FROM generate_series(%(start)s::timestamptz, %(end)s::timestamptz - interval '1 microsecond', %(every)s::interval) t
CROSS JOIN generate_series(0, %(assets)s::int - 1) a
ORDER BY t, a
"""


@dataclass(frozen=True)
class Pair:
    title: str
    rollup: str
    raw: str
    params: dict[str, Any]


def pairs(start: datetime, end: datetime, asset: str) -> list[Pair]:
    month = end - timedelta(days=30)
    return [
        Pair(
            "1y daily candles, all assets",
            "SELECT bucket, asset_id, open, high, low, close, ticks FROM coinpulse.candles_1d "
            "WHERE bucket >= %(start)s AND bucket < %(end)s ORDER BY asset_id, bucket",
            "SELECT time_bucket('1 day', time) AS bucket, asset_id, first(price_usd, time), max(price_usd), "
            "min(price_usd), last(price_usd, time), count(*) FROM coinpulse.price_ticks "
            "WHERE time >= %(start)s AND time < %(end)s GROUP BY 1, 2 ORDER BY asset_id, bucket",
            {"start": start, "end": end},
        ),
        Pair(
            "30d hourly candles, 1 asset",
            "SELECT bucket, open, high, low, close, ticks FROM coinpulse.candles_1h "
            "WHERE asset_id = %(asset)s AND bucket >= %(start)s AND bucket < %(end)s ORDER BY bucket",
            "SELECT time_bucket('1 hour', time) AS bucket, first(price_usd, time), max(price_usd), "
            "min(price_usd), last(price_usd, time), count(*) FROM coinpulse.price_ticks "
            "WHERE asset_id = %(asset)s AND time >= %(start)s AND time < %(end)s GROUP BY 1 ORDER BY 1",
            {"asset": asset, "start": month, "end": end},
        ),
    ]


def say(text: str) -> None:
    print(text, flush=True)


def load(url: str, assets: int, days: int, columnstore: bool) -> tuple[datetime, datetime]:
    migrate(url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT alter_job(job_id, scheduled => false) FROM timescaledb_information.jobs "
                     "WHERE job_id >= 1000")
        row = conn.execute("SELECT now()").fetchone()
        assert row is not None
        end = align_down(row[0], timedelta(days=1))  # whole UTC days: the year ends at today's midnight
        start = end - timedelta(days=days)
        expected = assets * (days * timedelta(days=1) // TICK_EVERY)
        have = conn.execute("SELECT count(*), min(time), max(time) FROM coinpulse.price_ticks").fetchone()
        assert have is not None
        if have[0] == expected:
            say(f"reusing the {expected:,} ticks already loaded ({have[1]} .. {have[2]})")
            return align_down(have[1], timedelta(days=1)), align_down(have[2], timedelta(days=1)) + timedelta(days=1)
        if have[0]:
            raise SystemExit(f"the database holds {have[0]:,} other ticks: give an empty database")
        say(f"loading {expected:,} ticks: {assets} assets, every {TICK_EVERY}, {start:%Y-%m-%d} .. {end:%Y-%m-%d}")
        started = time.perf_counter()
        step = timedelta(days=30)
        lo = start
        while lo < end:
            hi = min(lo + step, end)
            conn.execute(GENERATE, {"start": lo, "end": hi, "every": TICK_EVERY, "assets": assets})
            say(f"  ticks up to {hi:%Y-%m-%d}  ({time.perf_counter() - started:.0f} s)")
            lo = hi
        lo = start
        while lo < end:
            hi = min(lo + step, end)
            refresh_window(conn, lo, hi)
            say(f"  rollups materialized up to {hi:%Y-%m-%d}  ({time.perf_counter() - started:.0f} s)")
            lo = hi
        if columnstore:
            job = conn.execute("SELECT job_id FROM timescaledb_information.jobs WHERE proc_name = "
                               "'policy_compression' AND hypertable_name = 'price_ticks'").fetchone()
            assert job is not None
            conn.execute("CALL run_job(%s)", (job[0],))
            say(f"  raw chunks older than the columnstore policy converted ({time.perf_counter() - started:.0f} s)")
        conn.execute("VACUUM ANALYZE")
        say(f"loaded in {time.perf_counter() - started:.0f} s")
    return start, end


def server_ms(conn: psycopg.Connection[tuple[object, ...]], query: str, params: dict[str, Any]) -> float:
    row = conn.execute(f"EXPLAIN (ANALYZE, TIMING OFF, FORMAT JSON) {query}", params).fetchone()
    assert row is not None
    plan = row[0][0]  # type: ignore[index]
    return float(plan["Planning Time"]) + float(plan["Execution Time"])


def client_ms(conn: psycopg.Connection[tuple[object, ...]], query: str, params: dict[str, Any]) -> tuple[float, int]:
    started = time.perf_counter()
    rows = conn.execute(query, params).fetchall()
    return (time.perf_counter() - started) * 1000, len(rows)


def measure(url: str, start: datetime, end: datetime, runs: int, asset: str) -> list[str]:
    lines = []
    with psycopg.connect(url, autocommit=True) as conn:
        facts = conn.execute(
            "SELECT (SELECT count(*) FROM coinpulse.price_ticks), "
            "(SELECT count(*) FILTER (WHERE is_compressed) || '/' || count(*) FROM timescaledb_information.chunks "
            " WHERE hypertable_name = 'price_ticks'), current_setting('jit'), current_setting('shared_buffers'), "
            "(SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'), current_setting('server_version')"
        ).fetchone()
        assert facts is not None
        lines.append(f"price_ticks: {facts[0]:,} rows, columnstore chunks {facts[1]}; TimescaleDB {facts[4]}, "
                     f"PostgreSQL {facts[5]}, jit={facts[2]}, shared_buffers={facts[3]}; median of {runs} runs")
        lines.append(f"{'query':<30} {'rows':>6} | {'rollup server':>13} {'client':>9} | {'raw server':>11} "
                     f"{'client':>9} | {'ratio':>7}")
        for pair in pairs(start, end, asset):
            results = {}
            for kind, query in (("rollup", pair.rollup), ("raw", pair.raw)):
                server_ms(conn, query, pair.params)  # warm the cache
                server = statistics.median(server_ms(conn, query, pair.params) for _ in range(runs))
                client_runs = [client_ms(conn, query, pair.params) for _ in range(runs)]
                results[kind] = (server, statistics.median(ms for ms, _ in client_runs), client_runs[0][1])
            rollup, raw = results["rollup"], results["raw"]
            assert rollup[2] == raw[2], f"{pair.title}: rollup returned {rollup[2]} rows, raw {raw[2]}"
            lines.append(f"{pair.title:<30} {rollup[2]:>6} | {rollup[0]:>10.2f} ms {rollup[1]:>6.1f} ms | "
                         f"{raw[0]:>8.0f} ms {raw[1]:>6.0f} ms | {raw[0] / rollup[0]:>6.0f}x")
            if pair.title.startswith("1y"):
                ok = rollup[0] < 20 and raw[0] / rollup[0] >= 500
                lines.append(f"{'':<30} target rollup < 20 ms and >= 500x: {'met' if ok else 'NOT MET'}")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--database-url", help="libpq URL of a database to use (default: a throwaway cluster)")
    parser.add_argument("--assets", type=int, default=100)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--no-columnstore", action="store_true", help="keep every raw chunk in row storage")
    args = parser.parse_args()
    server = None
    url = args.database_url
    if url is None:
        from pgserver import find_server

        server = find_server()
        if server.admin_url is None:
            raise SystemExit(f"no TimescaleDB: {server.skip_reason}")
        with psycopg.connect(server.admin_url, autocommit=True) as conn:
            conn.execute("CREATE DATABASE coinpulse_bench")
        url = server.url("coinpulse_bench")
        say(f"throwaway cluster: {server.how}")
    try:
        start, end = load(url, args.assets, args.days, not args.no_columnstore)
        for line in measure(url, start, end, args.runs, f"asset-{min(42, args.assets - 1):03d}"):
            say(line)
    finally:
        if server is not None:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
