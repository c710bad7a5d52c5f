"""`coinpulse run` on the demo feed, as a subprocess against the real database: what a newcomer sees."""

from __future__ import annotations

from pathlib import Path

import psycopg

from collector_proc import CollectorProcess

TABLES = ("price_ticks", "asset_snapshots", "exchange_snapshots", "market_snapshots", "rate_snapshots")


def counts(url: str) -> dict[str, int]:
    with psycopg.connect(url) as conn:
        return {t: int(str(conn.execute(f"SELECT count(*) FROM coinpulse.{t}").fetchone()[0]))  # type: ignore[index]
                for t in TABLES}


def test_demo_feed_fills_every_table_and_exits_cleanly(db_url: str, tmp_path: Path) -> None:
    proc = CollectorProcess({"COINPULSE_DATABASE_URL": db_url, "COINPULSE_FEED": "demo",
                             "COINPULSE_DEMO_TICK_INTERVAL": "0.1"}, tmp_path).start()
    try:
        proc.wait_for(lambda: all(n > 0 for n in counts(db_url).values()), timeout=30, what="rows in every table")
        proc.wait_for(lambda: proc.health()[0] == 200, timeout=10, what="healthy")
        for table in TABLES:
            assert proc.metric("coinpulse_rows_written_total", table=table) > 0, table
        assert proc.metric("coinpulse_feed_info", feed="demo") == 1
    finally:
        code = proc.stop()
    assert code == 0, proc.log
    written = counts(db_url)
    with psycopg.connect(db_url) as conn:
        sources = {r[0] for r in conn.execute("SELECT DISTINCT source FROM coinpulse.price_ticks")}
        snap_sources = {r[0] for r in conn.execute("SELECT DISTINCT source FROM coinpulse.asset_snapshots")}
        assets = conn.execute("SELECT count(*) FROM coinpulse.assets").fetchone()
    assert sources == {"demo"} and snap_sources == {"demo"}
    assert assets is not None and assets[0] >= 16
    assert "DEMO FEED" in proc.log
    assert "collector stopped rows_left=0" in proc.log  # SIGTERM drained the queue
    assert "Traceback" not in proc.log
    assert written["price_ticks"] >= 16


def test_run_on_unmigrated_database_says_what_to_do(make_database: object, tmp_path: Path) -> None:
    url = make_database()  # type: ignore[operator]
    proc = CollectorProcess({"COINPULSE_DATABASE_URL": url, "COINPULSE_FEED": "demo"}, tmp_path).start()
    assert proc.proc is not None
    code = proc.proc.wait(30)
    proc._log.close()
    assert code == 1
    assert proc.log.strip().splitlines()[-1] == (
        "coinpulse run: error: the database has no CoinPulse schema yet: run `coinpulse migrate` first")
