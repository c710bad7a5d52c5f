"""`coinpulse backfill` end to end: a subprocess against the fake CoinCap and a real TimescaleDB. History is
imported at the interval for its age, in requests of COINPULSE_HISTORY_POINTS_PER_REQUEST, with a progress bar;
a run cut short by a CoinCap error resumes where it stopped; bad input gets one clear line. Credits: the estimate
is printed before, what the requests cost after (and logged in backfill_credits); an import the monthly budget
has no room for is refused unless --yes."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
import requests
from psycopg import sql

from collector.app import credit_planner
from collector.budget import DAYS_PER_MONTH
from collector.cli import main
from collector.coincap.rest import credits_for
from collector.db.rollups import align_down
from conftest import materialization_table
from fake_coincap import FakeCoinCap

HOUR = timedelta(hours=1)
NOW = align_down(datetime.now(UTC), HOUR)
SINCE = NOW - timedelta(days=40)  # 40 to 20 days old: the h1 tier of m1:1d,m5:7d,h1:90d,d1
UNTIL = NOW - timedelta(days=20)


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


@pytest.fixture
def fake() -> Iterator[FakeCoinCap]:
    with FakeCoinCap() as server:
        start = SINCE - timedelta(days=1)
        server.history["bitcoin"] = [{"priceUsd": f"{40000 + i:.2f}", "time": ms(start + i * HOUR)}
                                     for i in range(22 * 24)]
        yield server


def run(db_url: str, fake: FakeCoinCap, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("COINPULSE_", "COINCAP_"))}
    env = {**base, "COINPULSE_DATABASE_URL": db_url, "COINCAP_API_KEY": fake.api_key or "",
           "COINCAP_REST_URL": fake.rest_url, "COINPULSE_HISTORY_POINTS_PER_REQUEST": "200",
           "COINPULSE_CREDIT_BUDGET": "0", **extra}
    return subprocess.run([sys.executable, "-m", "collector.cli", "backfill", *args], env=env, capture_output=True,
                          text=True, timeout=120)


def history_calls(fake: FakeCoinCap, asset: str) -> list[tuple[str, int, int]]:
    return [(r.query["interval"], int(r.query["start"]), int(r.query["end"]))
            for r in fake.requests_to(f"/assets/{asset}/history")]


def rows(db: psycopg.Connection[Any], sql: str, *params: Any) -> list[tuple[Any, ...]]:
    return db.execute(sql, params or None).fetchall()


def billed(fake: FakeCoinCap, calls: list[tuple[str, dict[str, str]]]) -> int:
    """What CoinCap bills for the answers to ``calls`` ((asset, query) as sent), computed here by
    asking the fake the same questions again and applying 1 credit + 1 per further 2,500 bytes."""
    total = 0
    for asset, query in calls:
        answer = requests.get(f"{fake.rest_url}/assets/{asset}/history", params=query, timeout=10,
                              headers={"Authorization": f"Bearer {fake.api_key}"})
        assert answer.status_code == 200
        total += credits_for(len(answer.content))
    return total


def sent(fake: FakeCoinCap, asset: str) -> list[tuple[str, dict[str, str]]]:
    return [(asset, r.query) for r in fake.requests_to(f"/assets/{asset}/history")]


def cli_credits(db: psycopg.Connection[Any]) -> int:
    return int(rows(db, "SELECT coalesce(sum(credits), 0) FROM coinpulse.backfill_credits WHERE purpose = 'cli'")[0][0])


@pytest.mark.slow
@pytest.mark.full_edition
def test_backfill_imports_with_progress_and_a_rerun_resumes_where_it_stopped(
        db: psycopg.Connection[Any], db_url: str, fake: FakeCoinCap) -> None:
    chunks = [(SINCE, SINCE + 200 * HOUR), (SINCE + 200 * HOUR, SINCE + 400 * HOUR), (SINCE + 400 * HOUR, UNTIL)]
    # First run: bitcoin's first request works, its second fails (CoinCap answers 400).
    first_answer = [p for p in fake.history["bitcoin"] if ms(SINCE) <= p["time"] < ms(chunks[0][1])]
    fake.script(200, {"data": first_answer, "timestamp": ms(NOW)}, path="/assets/bitcoin/history")
    fake.script(400, {"error": "bad request"}, path="/assets/bitcoin/history")
    args = ("--assets", "bitcoin,ethereum", "--since", iso(SINCE), "--until", iso(UNTIL))
    failed = run(db_url, fake, *args)
    assert failed.returncode == 1, failed.stderr
    last = failed.stderr.strip().splitlines()[-1]
    assert last.startswith("coinpulse backfill: error: bitcoin: CoinCap failed at request 2 of 3")
    assert "run the same command again to resume" in last and "Traceback" not in failed.stderr
    assert "assets: added bitcoin from CoinCap" in failed.stderr  # unknown to the database: looked up
    assert rows(db, "SELECT count(*) FROM coinpulse.price_ticks WHERE source = 'history'") == [(200,)]
    assert rows(db, "SELECT asset_id, range_start, range_end, intervals FROM coinpulse.history_imports") == [
        ("bitcoin", SINCE, chunks[0][1], "h1")]
    assert history_calls(fake, "ethereum") == []

    first_run_credits = cli_credits(db)
    assert first_run_credits >= 2  # the good answer and the refused one are billed (and logged)

    # The same command again: the first 200 hours are skipped, the rest fetched, with a progress bar.
    before = len(history_calls(fake, "bitcoin"))
    done = run(db_url, fake, *args)
    assert done.returncode == 0, done.stderr
    assert history_calls(fake, "bitcoin")[before:] == [("h1", ms(s), ms(e) - 1) for s, e in chunks[1:]]
    assert history_calls(fake, "ethereum") == [("h1", ms(s), ms(e) - 1) for s, e in chunks]
    assert f"backfill bitcoin: {iso(SINCE)} .. {iso(UNTIL)}: 2 requests (h1); 1 range imported before, skipped" \
        in done.stderr
    # estimate before, 80 bytes a point: 200 hours -> 201 points -> 7 credits, 80 hours -> 3; bitcoin 7 + 3,
    # ethereum 7 + 7 + 3
    assert "backfill: 5 requests to CoinCap, about 27 credits (estimated from the points asked for)" in done.stderr
    assert "5/5" in done.stderr and "requests" in done.stderr  # the tqdm bar, finished
    credits = billed(fake, sent(fake, "bitcoin")[before:] + sent(fake, "ethereum"))
    assert cli_credits(db) == first_run_credits + credits
    out = done.stdout.splitlines()
    assert out == [
        f"bitcoin: {iso(SINCE)} .. {iso(UNTIL)}: 2 requests, 280 points, 280 new rows (h1), "
        "1 range imported before skipped",
        f"ethereum: {iso(SINCE)} .. {iso(UNTIL)}: 3 requests, 480 points, 480 new rows (h1)",
        f"backfill done: 2 assets, 5 requests, 760 points, 760 new rows, {credits} credits; rollups refreshed",
    ]
    stored = rows(db, "SELECT time, price_usd FROM coinpulse.price_ticks WHERE asset_id = 'bitcoin' ORDER BY time")
    assert stored == [(datetime.fromtimestamp(p["time"] / 1000, UTC), float(p["priceUsd"]))
                      for p in fake.history["bitcoin"] if ms(SINCE) <= p["time"] < ms(UNTIL)]
    assert rows(db, "SELECT count(*) FROM coinpulse.price_ticks WHERE asset_id = 'ethereum'") == [(480,)]
    # the rollups were refreshed over the range: candles_1h's own table holds every hour of both assets
    assert db.execute(sql.SQL("SELECT asset_id, count(*) FROM {} GROUP BY 1 ORDER BY 1").format(
        materialization_table(db, "candles_1h"))).fetchall() == [("bitcoin", 480), ("ethereum", 480)]

    # Once more (assets by symbol this time): nothing left to fetch.
    calls = len(fake.requests_to("/assets/bitcoin/history")) + len(fake.requests_to("/assets/ethereum/history"))
    again = run(db_url, fake, "--assets", "BTC,ethereum", "--since", iso(SINCE), "--until", iso(UNTIL))
    assert again.returncode == 0, again.stderr
    assert len(fake.requests_to("/assets/bitcoin/history")) + len(fake.requests_to("/assets/ethereum/history")) == \
        calls
    assert f"backfill bitcoin: {iso(SINCE)} .. {iso(UNTIL)}: nothing to fetch; 1 range imported before, skipped" \
        in again.stderr
    assert again.stdout.splitlines()[-1] == "backfill done: 2 assets, 0 requests, 0 points, 0 new rows, 0 credits; " \
                                            "rollups refreshed"
    assert "credits" not in again.stderr  # nothing to fetch: no estimate


@pytest.mark.full_edition
def test_unknown_assets_are_refused_before_anything_is_fetched(db_url: str, fake: FakeCoinCap) -> None:
    result = run(db_url, fake, "--assets", "bitcoin,notacoin,BTC/USD", "--since", "7d")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "coinpulse backfill: error: unknown assets 'notacoin', 'BTC/USD': neither stored nor known to CoinCap "
        "(use CoinCap ids such as bitcoin, ethereum)")
    assert fake.requests_to("/assets/notacoin") != []  # looked up on CoinCap first
    assert history_calls(fake, "bitcoin") == []


@pytest.mark.slow
@pytest.mark.full_edition
def test_gaps_mode_fills_the_recorded_gaps_now(db: psycopg.Connection[Any], db_url: str, fake: FakeCoinCap) -> None:
    start = SINCE + 10 * HOUR
    db.execute("INSERT INTO coinpulse.ingest_gaps (asset_id, gap_start, gap_end, reason, status, error) VALUES "
               "('bitcoin', %s, %s, 'restart', 'open', NULL), ('bitcoin', %s, %s, 'watchdog', 'failed', 'HTTP 500'), "
               "('ethereum', %s, %s, 'closed', 'done', NULL)",
               (start, start + 5 * HOUR, start + 20 * HOUR, start + 22 * HOUR, start, start + HOUR))
    result = run(db_url, fake, "--gaps")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"gap 1 bitcoin {iso(start)} .. {iso(start + 5 * HOUR)} (restart): 5 rows (h1)",
        f"gap 2 bitcoin {iso(start + 20 * HOUR)} .. {iso(start + 22 * HOUR)} (watchdog): 2 rows (h1)",
        f"backfill done: 2 of 2 gaps filled, {billed(fake, sent(fake, 'bitcoin'))} credits; rollups refreshed",
    ]
    assert "backfill: 2 requests to CoinCap, about 2 credits" in result.stderr
    assert rows(db, "SELECT id, status, rows_filled, error FROM coinpulse.ingest_gaps ORDER BY id") == [
        (1, "done", 5, None), (2, "done", 2, None), (3, "done", None, None)]
    assert history_calls(fake, "ethereum") == []
    again = run(db_url, fake, "--gaps")
    assert (again.returncode, again.stdout) == (0, "backfill: no open gaps\n")


@pytest.mark.parametrize(("args", "env", "message"), [
    (["--assets", "bitcoin", "--since", "2025-03-01", "--until", "2025-02-01"], {},
     "--since (2025-03-01T00:00:00Z) must be before --until (2025-02-01T00:00:00Z)"),
    (["--assets", "bitcoin", "--since", "last tuesday"], {},
     "--since: time 'last tuesday' is not an ISO 8601 date or date-time (e.g. 2025-03-01T14:30:00Z); "
     "or give an age like 30d, 12h, 2w, 1y"),
    (["--assets", "bitcoin", "--since", "2025-02-30"], {}, "--since: time '2025-02-30' is not an ISO 8601 date"),
    (["--assets", "bitcoin", "--since", "7d", "--until", "2999-01-01"], {},
     "--until: time 2999-01-01 is in the future"),
    (["--assets", " , ", "--since", "7d"], {}, "--assets ' , ': give comma-separated CoinCap asset ids"),
    (["--since", "7d"], {}, "give --assets and --since (e.g. --assets bitcoin --since 7d), or --gaps"),
    (["--gaps", "--since", "7d"], {}, "--gaps fills the recorded gaps: it takes no --since/--until"),
    (["--assets", "bitcoin", "--since", "7d"], {"COINCAP_API_KEY": ""},
     "COINCAP_API_KEY is not set but `coinpulse backfill` fetches history from CoinCap"),
    (["--assets", "bitcoin", "--since", "7d"], {"COINPULSE_HISTORY_INTERVALS": "m1:1d"},
     "COINPULSE_HISTORY_INTERVALS: the last entry (m1:1d) must have no age"),
])
def test_bad_input_gets_one_clear_line(args: list[str], env: dict[str, str], message: str,
                                       monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    for name in [k for k in os.environ if k.startswith(("COINPULSE_", "COINCAP_"))]:
        monkeypatch.delenv(name)
    # nothing listens here: input errors must be found before the database or CoinCap is asked
    monkeypatch.setenv("COINPULSE_DATABASE_URL", "postgresql://nobody@127.0.0.1:9/none")
    monkeypatch.setenv("COINCAP_REST_URL", "http://127.0.0.1:9/v3")
    monkeypatch.setenv("COINCAP_API_KEY", "k")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main(["backfill", *args]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"coinpulse backfill: error: {message}"), err


@pytest.mark.full_edition
def test_an_import_the_budget_has_no_room_for_needs_yes(db: psycopg.Connection[Any], db_url: str, fake: FakeCoinCap,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    for name in [k for k in os.environ if k.startswith(("COINPULSE_", "COINCAP_"))]:
        monkeypatch.delenv(name)
    env = {"COINPULSE_DATABASE_URL": db_url, "COINCAP_API_KEY": fake.api_key or "", "COINCAP_REST_URL": fake.rest_url,
           "COINPULSE_HISTORY_POINTS_PER_REQUEST": "200", "COINPULSE_ASSETS": "bitcoin",
           "COINPULSE_CREDIT_BUDGET": "1000000"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    from collector.settings import load_settings

    planner = credit_planner(load_settings(), websocket=True)
    assert planner is not None
    planned = round(planner.credits_per_day() * DAYS_PER_MONTH)
    # on-demand imports of the last 31 days leave 10 credits; one older than that no longer counts
    db.execute("INSERT INTO coinpulse.backfill_credits (spent_at, purpose, asset_id, credits) VALUES "
               "(now() - INTERVAL '2 days', 'cli', 'ethereum', %s), "
               "(now() - INTERVAL '40 days', 'cli', 'ethereum', 5000), "
               "(now() - INTERVAL '1 hour', 'gap', 'bitcoin', 5000)", (1_000_000 - planned - 10,))
    args = ["backfill", "--assets", "bitcoin", "--since", iso(SINCE), "--until", iso(UNTIL), "--no-progress"]
    assert main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert "backfill: 3 requests to CoinCap, about 17 credits (estimated from the points asked for)" in err
    assert err[-1] == (
        f"coinpulse backfill: error: about 17 credits is more than COINPULSE_CREDIT_BUDGET=1,000,000 a month: the "
        f"collector's plan spends {planned:,} (see `coinpulse doctor`) and on-demand imports spent "
        f"{1_000_000 - planned - 10:,} in the last 31 days, leaving 10; pass --yes to spend them anyway, or import "
        "fewer assets or a shorter range")
    assert history_calls(fake, "bitcoin") == []  # refused before anything was fetched
    assert main([*args, "--yes"]) == 0
    captured = capsys.readouterr()
    assert "about 17 credits is more than COINPULSE_CREDIT_BUDGET=1,000,000 a month" in captured.err
    assert "going ahead (--yes)" in captured.err
    assert len(history_calls(fake, "bitcoin")) == 3
    spent = billed(fake, sent(fake, "bitcoin")[:3])
    assert captured.out.splitlines()[-1] == (
        f"backfill done: 1 assets, 3 requests, 480 points, 480 new rows, {spent} credits; rollups refreshed")
    # with room in the budget it just goes ahead, saying so
    db.execute("DELETE FROM coinpulse.backfill_credits")
    db.execute("DELETE FROM coinpulse.history_imports")
    assert main(args) == 0
    assert "backfill: within COINPULSE_CREDIT_BUDGET=1,000,000 a month" in capsys.readouterr().err
