"""Candle queries: the rollups (continuous aggregates) against time_bucket over the raw ticks, side by side.

    .venv/bin/python benchmarks/queries.py [--database-url URL] [--assets 100] [--days 365] [--no-columnstore]
                                           [--work-mem 16MB] [--dashboards]

Loads one year of 5-minute ticks for 100 assets (10.5M rows, generated on the server with generate_series),
materializes the rollups, converts raw chunks older than 7 days to the columnstore as the default policy
would (unless --no-columnstore), runs VACUUM ANALYZE, then times each query both ways:

- server: planning + execution time from EXPLAIN (ANALYZE, TIMING OFF), median of the runs. This is the
  number to compare; decoding tens of thousands of rows in Python would otherwise dominate.
- client: wall time of executing the query and fetching every row with psycopg, median of the runs.

The year of daily candles is timed in two orders: by asset (`ORDER BY asset_id, bucket`, an export per asset)
and by time (`ORDER BY bucket`, what a Grafana time series needs). A real-time rollup is a UNION ALL view
(materialized rows + rows aggregated since the watermark): on PostgreSQL 15 either order is a sort of its 36,500
rows (~5 MB: at the default work_mem of 4 MB it goes to disk; --work-mem sets it for both sides); from
PostgreSQL 16 TimescaleDB pushes an ORDER BY of the time column alone into both halves of the view, so the
rows by time are read in order with no sort. The output says, per query, how many rows the rollup sorted and
what spilled to disk. A fixed CPU-bound query is timed as a reference, to compare figures of different days on
a shared machine.

Without --database-url a throwaway local TimescaleDB cluster is started (as the tests do) and removed.
With a URL the database is migrated and reused: if it already holds exactly the generated data set, the
load is skipped. Background jobs of that database are paused so that retention does not drop the year.
Target (README): 1y x 100 assets daily candles from the rollup < 20 ms and >= 500x faster than raw.
"""

from __future__ import annotations

import argparse
import json
import re
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
from pgserver import benchmark_database

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
            "1y daily candles, by asset",
            "SELECT bucket, asset_id, open, high, low, close, ticks FROM coinpulse.candles_1d "
            "WHERE bucket >= %(start)s AND bucket < %(end)s ORDER BY asset_id, bucket",
            "SELECT time_bucket('1 day', time) AS bucket, asset_id, first(price_usd, time), max(price_usd), "
            "min(price_usd), last(price_usd, time), count(*) FROM coinpulse.price_ticks "
            "WHERE time >= %(start)s AND time < %(end)s GROUP BY 1, 2 ORDER BY asset_id, bucket",
            {"start": start, "end": end},
        ),
        Pair(
            "1y daily candles, by time",
            "SELECT bucket, asset_id, open, high, low, close, ticks FROM coinpulse.candles_1d "
            "WHERE bucket >= %(start)s AND bucket < %(end)s ORDER BY bucket",
            # Aggregated in the order the columnstore yields (by asset), then sorted: the planner's own plan for
            # ORDER BY bucket, asset_id sorts the decompressed ticks instead (75 s against 5.5 s on 2026-12-02).
            "SELECT * FROM (SELECT time_bucket('1 day', time) AS bucket, asset_id, first(price_usd, time), "
            "max(price_usd), min(price_usd), last(price_usd, time), count(*) FROM coinpulse.price_ticks "
            "WHERE time >= %(start)s AND time < %(end)s GROUP BY 1, 2 ORDER BY asset_id, bucket) r "
            "ORDER BY bucket",
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


def server_plan(conn: psycopg.Connection[tuple[object, ...]], query: str, params: dict[str, Any]) -> dict[str, Any]:
    row = conn.execute(f"EXPLAIN (ANALYZE, TIMING OFF, FORMAT JSON) {query}", params).fetchone()
    assert row is not None
    plan: dict[str, Any] = row[0][0]  # type: ignore[index]
    return plan


def server_ms(conn: psycopg.Connection[tuple[object, ...]], query: str, params: dict[str, Any]) -> float:
    plan = server_plan(conn, query, params)
    return float(plan["Planning Time"]) + float(plan["Execution Time"])


def spills(node: dict[str, Any]) -> list[str]:
    """Plan nodes that went to disk for want of work_mem: sorts ("external merge") and hash aggregates."""
    found = []
    if node.get("Sort Space Type") == "Disk":
        found.append(f"sort {node.get('Sort Space Used', '?')} kB")
    if int(node.get("HashAgg Batches", 1) or 1) > 1:
        found.append(f"hash aggregate {node.get('Disk Usage', '?')} kB")
    for child in node.get("Plans", []):
        found += spills(child)
    return found


def sorted_rows(node: dict[str, Any]) -> int:
    """Rows that went through Sort nodes of the plan (0: the rows were read in the order asked for)."""
    own = int(node.get("Actual Rows", 0)) if node.get("Node Type") == "Sort" else 0
    return own + sum(sorted_rows(child) for child in node.get("Plans", []))


def client_ms(conn: psycopg.Connection[tuple[object, ...]], query: str, params: dict[str, Any]) -> tuple[float, int]:
    started = time.perf_counter()
    rows = conn.execute(query, params).fetchall()
    return (time.perf_counter() - started) * 1000, len(rows)


def measure(url: str, start: datetime, end: datetime, runs: int, asset: str, work_mem: str | None) -> list[str]:
    lines = []
    with psycopg.connect(url, autocommit=True) as conn:
        if work_mem:
            try:
                conn.execute("SELECT set_config('work_mem', %s, false)", (work_mem,))
            except psycopg.errors.InvalidParameterValue as err:
                raise SystemExit(f"--work-mem {work_mem!r}: {str(err).splitlines()[0]}") from None
        facts = conn.execute(
            "SELECT (SELECT count(*) FROM coinpulse.price_ticks), "
            "(SELECT count(*) FILTER (WHERE is_compressed) || '/' || count(*) FROM timescaledb_information.chunks "
            " WHERE hypertable_name = 'price_ticks'), current_setting('jit'), current_setting('shared_buffers'), "
            "(SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'), current_setting('server_version'), "
            "current_setting('work_mem')"
        ).fetchone()
        assert facts is not None
        lines.append(f"price_ticks: {facts[0]:,} rows, columnstore chunks {facts[1]}; TimescaleDB {facts[4]}, "
                     f"PostgreSQL {facts[5]}, jit={facts[2]}, shared_buffers={facts[3]}, work_mem={facts[6]}"
                     f"{'' if work_mem else ' (server default)'}; median of {runs} runs")
        lines.append(f"machine reference: SELECT count(*) FROM generate_series(1, 1000000) "
                     f"{machine_reference_ms(conn, runs):.1f} ms")
        lines.append(f"{'query':<30} {'rows':>6} | {'rollup server':>13} {'client':>9} | {'raw server':>11} "
                     f"{'client':>9} | {'ratio':>7}")
        for pair in pairs(start, end, asset):
            results = {}
            plans = {}
            for kind, query in (("rollup", pair.rollup), ("raw", pair.raw)):
                plans[kind] = server_plan(conn, query, pair.params)["Plan"]  # also warms the cache
                server = statistics.median(server_ms(conn, query, pair.params) for _ in range(runs))
                client_runs = [client_ms(conn, query, pair.params) for _ in range(runs)]
                results[kind] = (server, statistics.median(ms for ms, _ in client_runs), client_runs[0][1])
            rollup, raw = results["rollup"], results["raw"]
            assert rollup[2] == raw[2], f"{pair.title}: rollup returned {rollup[2]} rows, raw {raw[2]}"
            lines.append(f"{pair.title:<30} {rollup[2]:>6} | {rollup[0]:>10.2f} ms {rollup[1]:>6.1f} ms | "
                         f"{raw[0]:>8.0f} ms {raw[1]:>6.0f} ms | {raw[0] / rollup[0]:>6.0f}x")
            sorted_by_rollup = sorted_rows(plans["rollup"])
            lines.append(f"{'':<30} rollup: " + (f"sorts {sorted_by_rollup:,} rows" if sorted_by_rollup else
                                                 "no sort (read in the order asked for)"))
            for kind, plan in plans.items():
                if found := spills(plan):
                    lines.append(f"{'':<30} {kind}: spilled to disk ({', '.join(found)}): see --work-mem")
            if pair.title.startswith("1y"):  # the same rows, ordered as an export per asset / as a chart reads them
                ok = rollup[0] < 20 and raw[0] / rollup[0] >= 500
                lines.append(f"{'':<30} target rollup < 20 ms and >= 500x: {'met' if ok else 'NOT MET'}")
    return lines


# ---- Dashboard panel queries (issue 6): every SQL panel of grafana/dashboards/, expanded as Grafana does
# (tests/grafana_sql.py), timed (server time) for the dashboard's default time range and for a year.

DASHBOARD_ASSET_SNAPSHOTS = """
INSERT INTO coinpulse.asset_snapshots (time, asset_id, rank, symbol, name, supply, market_cap_usd, volume_usd_24hr,
                                       price_usd, source)
SELECT t, 'asset-' || lpad(a::text, 3, '0'), a + 1, 'A' || a, 'Asset ' || a, 1e6 * (a + 1),
       1e9 * (100 - a) * (1.2 + sin(extract(epoch FROM t) / 86400.0 / 9 + a)),
       1e8 * (100 - a) * (1.1 + cos(extract(epoch FROM t) / 86400.0 / 3 + a)), 10 + a, 'demo'
FROM generate_series(%(start)s::timestamptz, %(end)s::timestamptz, %(every)s::interval) t
CROSS JOIN generate_series(0, %(assets)s::int - 1) a
"""

DASHBOARD_EXCHANGE_SNAPSHOTS = """
INSERT INTO coinpulse.exchange_snapshots (time, exchange_id, name, rank, percent_total_volume, volume_usd,
                                          trading_pairs, source)
SELECT t, 'exchange-' || lpad(e::text, 2, '0'), 'Exchange ' || e, e + 1, 100.0 / (e + 2) / 2,
       1e9 / (e + 1) * (1.5 + sin(extract(epoch FROM t) / 86400.0 + e)), 100 + e, 'demo'
FROM generate_series(%(start)s::timestamptz, %(end)s::timestamptz, %(every)s::interval) t
CROSS JOIN generate_series(0, 19) e
"""

DASHBOARD_MARKET_SNAPSHOTS = """
INSERT INTO coinpulse.market_snapshots (time, exchange_id, base_id, quote_id, base_symbol, quote_symbol, rank,
                                        price_usd, volume_usd_24hr, percent_exchange_volume, trades_count_24hr,
                                        source)
SELECT t, 'exchange-' || lpad((m %% 20)::text, 2, '0'), 'asset-' || lpad((m / 2 %% 100)::text, 3, '0'),
       CASE WHEN m %% 2 = 0 THEN 'tether' ELSE 'united-states-dollar' END, 'A' || (m / 2 %% 100),
       CASE WHEN m %% 2 = 0 THEN 'USDT' ELSE 'USD' END, m + 1,
       (10 + m) * (1 + 0.001 * sin(m + extract(epoch FROM t) / 900)), 1e7 * (200 - m), 1, 1000 + m, 'demo'
FROM generate_series(%(start)s::timestamptz, %(end)s::timestamptz, %(every)s::interval) t
CROSS JOIN generate_series(0, 199) m
"""


def load_dashboard_data(url: str, assets: int, days: int) -> None:
    """Dimension rows and snapshots beside the ticks: /assets snapshots of every asset and /exchanges snapshots
    of 20 exchanges every 15 minutes for ``days``, /markets polls of 200 markets every 15 minutes for a week;
    then the volume rollups are materialized. Skipped when asset snapshots are already there."""
    with psycopg.connect(url, autocommit=True) as conn:
        have = conn.execute("SELECT count(*) FROM coinpulse.asset_snapshots").fetchone()
        assert have is not None
        if have[0]:
            say(f"reusing the {have[0]:,} asset snapshots already loaded")
            return
        row = conn.execute("SELECT date_trunc('hour', now())").fetchone()
        assert row is not None
        end: datetime = row[0]
        start = end - timedelta(days=days)
        started = time.perf_counter()
        conn.execute("INSERT INTO coinpulse.assets (asset_id, symbol, name, rank) SELECT 'asset-' || "
                     "lpad(a::text, 3, '0'), 'A' || a, 'Asset ' || a, a + 1 FROM generate_series(0, %s - 1) a "
                     "ON CONFLICT DO NOTHING", (assets,))
        conn.execute("INSERT INTO coinpulse.exchanges (exchange_id, name, rank) SELECT 'exchange-' || "
                     "lpad(e::text, 2, '0'), 'Exchange ' || e, e + 1 FROM generate_series(0, 19) e "
                     "ON CONFLICT DO NOTHING")
        every = timedelta(minutes=15)
        lo = start
        while lo < end:
            hi = min(lo + timedelta(days=30), end)
            params = {"start": lo, "end": hi - timedelta(minutes=1), "every": every, "assets": assets}
            conn.execute(DASHBOARD_ASSET_SNAPSHOTS, params)
            conn.execute(DASHBOARD_EXCHANGE_SNAPSHOTS, params)
            lo = hi
        conn.execute(DASHBOARD_MARKET_SNAPSHOTS, {"start": end - timedelta(days=7), "end": end, "every": every})
        lo = start
        while lo < end:
            hi = min(lo + timedelta(days=30), end)
            refresh_window(conn, lo, hi)
            lo = hi
        conn.execute("VACUUM ANALYZE")
        say(f"dashboard snapshots loaded and rolled up in {time.perf_counter() - started:.0f} s")


DASHBOARD_THRESHOLDS = """
INSERT INTO coinpulse.alert_thresholds (kind, asset_id, value, time_window, enabled)
SELECT k.kind, 'asset-' || lpad(a::text, 3, '0'), k.value, k.time_window::interval, a %% 10 <> 9
FROM generate_series(0, least(%(assets)s::int, 20) - 1) a
CROSS JOIN (VALUES ('price_above', 1e6::float8, NULL), ('price_below', 1, NULL), ('change_above', 5, '1 hour'),
                   ('change_below', -5, '1 day'), ('volume_above', 1e12, NULL), ('volume_change_above', 50, '1 day'),
                   ('stale', NULL, '10 minutes')) k(kind, value, time_window)
"""


def load_alert_thresholds(url: str, assets: int) -> None:
    """For the alerts dashboard: a portfolio holding 10 assets, and user thresholds of every kind (each asset kind
    on 20 assets, one in ten disabled, and both portfolio kinds): 142. Skipped when thresholds are there."""
    with psycopg.connect(url, autocommit=True) as conn:
        have = conn.execute("SELECT count(*) FROM coinpulse.alert_thresholds").fetchone()
        assert have is not None
        if have[0]:
            say(f"reusing the {have[0]} alert thresholds already there")
            return
        conn.execute("INSERT INTO coinpulse.portfolios (name) VALUES ('bench') ON CONFLICT DO NOTHING")
        conn.execute("INSERT INTO coinpulse.portfolio_transactions (portfolio_id, time, asset_id, quantity, price_usd) "
                     "SELECT p.portfolio_id, now() - interval '30 days', 'asset-' || lpad(a::text, 3, '0'), 1, 100 "
                     "FROM coinpulse.portfolios p CROSS JOIN generate_series(0, least(%s, 10) - 1) a "
                     "WHERE p.name = 'bench'", (assets,))
        conn.execute(DASHBOARD_THRESHOLDS, {"assets": assets})
        conn.execute("INSERT INTO coinpulse.alert_thresholds (kind, portfolio_id, value, time_window) "
                     "SELECT k, portfolio_id, v, w::interval FROM coinpulse.portfolios, "
                     "(VALUES ('portfolio_value_below', 1000::float8, NULL), ('portfolio_change_below', -5, '1 day')) "
                     "x(k, v, w) WHERE name = 'bench'")
        count = conn.execute("SELECT count(*) FROM coinpulse.alert_thresholds").fetchone()
        assert count is not None
        say(f"{count[0]} alert thresholds and a portfolio of {min(assets, 10)} assets loaded")


def _explain_ms(conn: psycopg.Connection[tuple[object, ...]], query: str) -> float:
    # No parameters: panel SQL is complete text (and may hold % signs, e.g. format('%I.%I', ...)).
    row = conn.execute(f"EXPLAIN (ANALYZE, TIMING OFF, FORMAT JSON) {query}").fetchone()
    assert row is not None
    plan = row[0][0]  # type: ignore[index]
    return float(plan["Planning Time"]) + float(plan["Execution Time"])


def grafana_session_settings() -> dict[str, str]:
    """The settings docker-compose.yml gives Grafana's login role (``ALTER ROLE coinpulse_grafana SET ...``; the
    README's Helm instructions give the same), except search_path: dashboards are timed as Grafana runs them."""
    compose = (Path(__file__).resolve().parents[1] / "docker-compose.yml").read_text(encoding="utf-8")
    found = dict(re.findall(r"ALTER ROLE coinpulse_grafana SET (\w+) = ([^;]+);", compose))
    found.pop("search_path", None)
    if "jit" not in found:
        raise SystemExit("docker-compose.yml no longer sets jit for coinpulse_grafana: update grafana_session_settings")
    return found


def machine_reference_ms(conn: psycopg.Connection[tuple[object, ...]], runs: int) -> float:
    """Server time of a fixed CPU-bound query, to compare figures taken on different days of a shared machine."""
    return statistics.median(_explain_ms(conn, "SELECT count(*) FROM generate_series(1, 1000000)")
                             for _ in range(max(runs, 3)))


def dashboard_queries(url: str, runs: int) -> list[str]:
    """Server time (planning + execution, median of ``runs``) of every SQL panel query of every dashboard, for
    the dashboard's default time range and for the last year, slowest first. Query variables take the values
    their queries return (all of them for multi-value variables, the first otherwise); a dashboard whose
    variables cannot be resolved in this database is reported and skipped. Target: every panel < 50 ms."""
    from grafana_sql import expand, panel_interval, panel_targets, time_range

    results: list[tuple[float, str, str, str, int]] = []
    lines: list[str] = []
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT now()").fetchone()
        assert row is not None
        now: datetime = row[0]
        # What the storage-size job does every 5 minutes (the benchmark keeps the jobs paused).
        conn.execute("CALL coinpulse.refresh_storage_sizes()")
        settings = grafana_session_settings()
        for name, value in settings.items():
            conn.execute("SELECT set_config(%s, %s, false)", (name, value))
        lines.append("session settings of Grafana's login role (docker-compose.yml): "
                     + ", ".join(f"{k}={v}" for k, v in settings.items()))
        lines.append(f"machine reference: SELECT count(*) FROM generate_series(1, 1000000) "
                     f"{machine_reference_ms(conn, runs):.1f} ms")
        for path in sorted((Path(__file__).resolve().parents[1] / "grafana" / "dashboards").glob("*.json")):
            dash = json.loads(path.read_text(encoding="utf-8"))
            t_from, t_to = time_range(dash["time"]["from"], dash["time"]["to"], now=now)
            values: dict[str, str | list[str]] = {}
            try:
                for var in dash.get("templating", {}).get("list", []):
                    if var.get("type") != "query":
                        continue
                    text = var["query"] if isinstance(var["query"], str) else var["query"].get("rawSql", "")
                    sql = expand(text, time_from=t_from, time_to=t_to, interval=timedelta(minutes=1),
                                 variables=values, now=now)
                    found = [str(r[0]) for r in conn.execute(sql).fetchall()]
                    values[var["name"]] = (found or [""]) if var.get("multi") else (found[0] if found else "")
            except psycopg.Error as err:
                lines.append(f"{path.stem}: skipped, its variables do not resolve here: {str(err).splitlines()[0]}")
                continue
            for label, raw in (("default", (dash["time"]["from"], dash["time"]["to"])), ("1 year", ("now-1y", "now"))):
                t_from, t_to = time_range(*raw, now=now)
                for target in panel_targets(dash):
                    if target.language != "sql" or target.panel_id is None:
                        continue
                    # $__interval as Grafana computes it: the panel's query options, else a 1000-pixel panel
                    interval = panel_interval(target, t_from, t_to)
                    sql = expand(target.text, time_from=t_from, time_to=t_to, interval=interval, variables=values,
                                 now=now)
                    _explain_ms(conn, sql)  # warm the cache
                    ms = statistics.median(_explain_ms(conn, sql) for _ in range(runs))
                    n = len(conn.execute(sql).fetchall())
                    results.append((ms, path.stem, f"{target.panel_title}/{target.ref_id}", label, n))
    results.sort(reverse=True)
    lines.append(f"{'dashboard':<20} {'panel/query':<40} {'range':<8} {'rows':>6} {'server':>10}")
    lines += [f"{d:<20} {p[:40]:<40} {r:<8} {n:>6} {ms:>7.2f} ms" for ms, d, p, r, n in results]
    if results:
        ms, d, p, r, _ = results[0]
        lines.append(f"slowest: {d} {p} ({r}) {ms:.2f} ms; target every panel < 50 ms: "
                     f"{'met' if ms < 50 else 'NOT MET'}")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--database-url", help="libpq URL of a database to use (default: a throwaway cluster)")
    parser.add_argument("--assets", type=int, default=100)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--no-columnstore", action="store_true", help="keep every raw chunk in row storage")
    parser.add_argument("--work-mem", help="work_mem for the candle queries, both sides (default: the server's)")
    parser.add_argument("--dashboards", action="store_true",
                        help="also load snapshots and time every SQL panel of grafana/dashboards/")
    args = parser.parse_args()
    with benchmark_database(args.database_url, "coinpulse_bench") as (url, how):
        if how:
            say(f"throwaway cluster: {how}")
        start, end = load(url, args.assets, args.days, not args.no_columnstore)
        for line in measure(url, start, end, args.runs, f"asset-{min(42, args.assets - 1):03d}",
                            args.work_mem):
            say(line)
        if args.dashboards:
            load_dashboard_data(url, args.assets, args.days)
            load_alert_thresholds(url, args.assets)
            for line in dashboard_queries(url, args.runs):
                say(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
