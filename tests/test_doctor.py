"""`coinpulse doctor`: the pure checks on made-up rows, and the whole report against real databases."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from collector.budget import CreditPlanner, PollSpec
from collector.db.migrate import head_revision, migrate
from collector.db.rollups import ROLLUPS, refresh_window
from collector.doctor import (
    Check,
    JobRow,
    LagRow,
    alerting_checks,
    backfill_credit_checks,
    doctor_lines,
    exit_code,
    format_check,
    job_check,
    lag_check,
    settings_checks,
)
from collector.settings import load_settings
from conftest import pause_policies

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


def job(**changes: object) -> JobRow:
    base: dict[str, object] = dict(
        job_id=1000, kind="refresh", target="candles_1m", scheduled=True, schedule_interval=timedelta(minutes=1),
        last_run_started_at=NOW - timedelta(seconds=30), last_successful_finish=NOW - timedelta(seconds=29),
        last_run_status="Success", next_start=NOW + timedelta(seconds=30), total_runs=100, total_failures=2,
        last_error=None)
    base.update(changes)
    return JobRow(**base)  # type: ignore[arg-type]


def test_job_check_statuses() -> None:
    ok = job_check(job(), NOW)
    assert ok.status == "OK" and ok.name == "job 1000 refresh candles_1m" and "failures 2/100" in ok.detail
    failed = job_check(job(last_run_status="Failed", last_error="permission denied for table price_ticks"), NOW)
    assert failed.status == "FAIL" and "permission denied for table price_ticks" in failed.detail
    assert "job runner" not in failed.detail
    portal = job_check(job(last_run_status="Failed", total_failures=5, total_runs=5,
                           last_error='cannot drop portal "" while it is being set up'), NOW)
    assert portal.status == "FAIL" and portal.detail.endswith(
        'failures 5/5: cannot drop portal "" while it is being set up (TimescaleDB\'s job runner and this PostgreSQL '
        "minor disagree: the run's work was committed, but every background run is recorded failed and retried at "
        'up to 5x its interval (README "Known problem: policy runs recorded as failed"))')
    paused = job_check(job(scheduled=False), NOW)
    assert paused.status == "WARN" and "paused" in paused.detail
    stale = job_check(job(last_successful_finish=NOW - timedelta(minutes=10)), NOW)
    assert stale.status == "WARN" and "no success since" in stale.detail
    new = job_check(job(total_runs=0, last_run_started_at=None, last_successful_finish=None, last_run_status=None),
                    NOW)
    assert new.status == "OK" and "not run yet" in new.detail


def lag(**changes: object) -> LagRow:
    base: dict[str, object] = dict(rollup="candles_1h", watermark=NOW - timedelta(hours=1), bucket=timedelta(hours=1),
                                   end_offset=timedelta(hours=1), schedule_interval=timedelta(minutes=30),
                                   source_has_rows=True)
    base.update(changes)
    return LagRow(**base)  # type: ignore[arg-type]


def test_lag_check_statuses() -> None:
    ok = lag_check(lag(), NOW)
    assert ok.status == "OK" and "lag 60m" in ok.detail and "expected <= 3h00m" in ok.detail
    behind = lag_check(lag(watermark=NOW - timedelta(hours=5)), NOW)
    assert behind.status == "WARN" and "lag 5h00m" in behind.detail
    assert lag_check(lag(watermark=None, source_has_rows=False), NOW) == Check("OK", "rollup candles_1h", "no data yet")
    assert lag_check(lag(watermark=None), NOW).status == "WARN"
    assert lag_check(lag(end_offset=None, schedule_interval=None), NOW).status == "WARN"


def test_format_and_exit_code() -> None:
    checks = [Check("OK", "database", "PostgreSQL 15"), Check("WARN", "x", "y")]
    assert exit_code(checks) == 0 and exit_code([*checks, Check("FAIL", "z", "w")]) == 1
    assert format_check(checks[0]).split() == ["OK", "database", "PostgreSQL", "15"]


@pytest.mark.full_edition
def test_doctor_on_a_migrated_database(make_database: Callable[[], str]) -> None:
    url = make_database()
    migrate(url)
    with psycopg.connect(url, autocommit=True) as conn:
        pause_policies(conn)
        now = conn.execute("SELECT now()").fetchone()
        assert now is not None and isinstance(now[0], datetime)
        conn.execute("INSERT INTO coinpulse.price_ticks SELECT t, 'bitcoin', 100, 'demo' "
                     "FROM generate_series(now() - interval '2 days', now(), interval '1 minute') t")
        refresh_window(conn, now[0] - timedelta(days=2), now[0])
    checks = doctor_lines(url)
    by_name = {c.name: c for c in checks}
    assert [c.name for c in checks[:3]] == ["database", "timescaledb", "migrations"]
    assert by_name["timescaledb"].status == "OK" and "full (Timescale License)" in by_name["timescaledb"].detail
    assert by_name["migrations"] == Check("OK", "migrations", f"at head ({head_revision()})")
    jobs = [c for c in checks if c.name.startswith("job ")]
    kinds = sorted(c.name.split()[2] for c in jobs)
    assert kinds == ["columnstore"] * 5 + ["refresh"] * len(ROLLUPS) + ["retention"] * 5 + ["storage"]
    assert sum(c.name.endswith(" storage sizes") for c in jobs) == 1
    assert all(c.status == "WARN" and "paused" in c.detail for c in jobs)  # paused above
    assert {c.name for c in checks if c.name.startswith("rollup ")} == {f"rollup {r.name}" for r in ROLLUPS}
    assert by_name["rollup candles_1m"].status == "OK" and "lag " in by_name["rollup candles_1m"].detail
    assert by_name["rollup asset_volume_1h"] == Check("OK", "rollup asset_volume_1h", "no data yet")
    assert by_name["retention rule"].status == "OK" and "90d >= minimum 2d" in by_name["retention rule"].detail
    assert exit_code(checks) == 0
    assert all("\n" not in format_check(c) for c in checks)

    with psycopg.connect(url, autocommit=True) as conn:  # break the retention rule behind migrate's back
        conn.execute("SELECT remove_retention_policy('coinpulse.price_ticks')")
        conn.execute("SELECT add_retention_policy('coinpulse.price_ticks', drop_after => INTERVAL '12 hours')")
    rule = {c.name: c for c in doctor_lines(url)}["retention rule"]
    assert rule.status == "FAIL" and "price_ticks (12h00m)" in rule.detail


def test_doctor_on_an_empty_database(make_database: Callable[[], str]) -> None:
    url = make_database()
    checks = doctor_lines(url)
    by_name = {c.name: c for c in checks}
    assert by_name["timescaledb"].status == "FAIL" and "coinpulse migrate" in by_name["timescaledb"].detail
    assert by_name["migrations"].status == "FAIL" and "run `coinpulse migrate`" in by_name["migrations"].detail
    assert exit_code(checks) == 1


def test_doctor_when_the_database_is_unreachable() -> None:
    checks = doctor_lines("postgresql://nobody:secret@127.0.0.1:1/none")
    assert len(checks) == 1 and checks[0].status == "FAIL" and checks[0].name == "database"
    assert "cannot connect" in checks[0].detail and "secret" not in checks[0].detail


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("COINPULSE_", "COINCAP_"))}
    return subprocess.run([sys.executable, "-m", "collector.cli", *args], env={**clean, **env},
                          capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.full_edition
def test_cli_migrate_applies_the_configured_lifecycle_then_doctor_reports_it(
        make_database: Callable[[], str]) -> None:
    url = make_database()
    env = {"COINPULSE_DATABASE_URL": url, "COINPULSE_RETENTION_DAYS": "30", "COINPULSE_COLUMNSTORE_AFTER_DAYS": "3",
           "COINCAP_API_KEY": "doctor-test-key-123"}
    first = run_cli("migrate", env=env)
    assert first.returncode == 0, first.stderr
    assert "policy changed: retention coinpulse.price_ticks: 90 days -> 30 days" in first.stdout
    assert "policy changed: columnstore coinpulse.price_ticks: 7 days -> 3 days" in first.stdout
    second = run_cli("migrate", env=env)
    assert second.returncode == 0 and "policy changed" not in second.stdout and "nothing to do" in second.stdout

    with psycopg.connect(url, autocommit=True) as conn:
        # Paused, so that the verdict does not depend on background workers; on this machine's build
        # (TimescaleDB 2.28.3 on PostgreSQL 15.20) every background job fails, which doctor reports as FAIL.
        pause_policies(conn)
    doctor = run_cli("doctor", env=env)
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    lines = doctor.stdout.splitlines()
    assert any(line.split()[:4] == ["OK", "config:", "api", "key"] and "set (not shown)" in line for line in lines)
    assert "doctor-test-key-123" not in doctor.stdout + doctor.stderr
    assert any(line.startswith("OK") and "retention rule" in line and "30d" in line for line in lines)
    assert not [line for line in lines if line.startswith("FAIL")]
    assert " 0 failed, " in lines[-1]


def test_cli_doctor_on_an_unreachable_database_fails_with_one_line_per_problem() -> None:
    out = run_cli("doctor", env={"COINPULSE_DATABASE_URL": "postgresql://nobody:pw-secret@127.0.0.1:1/none"})
    assert out.returncode == 1
    assert "pw-secret" not in out.stdout + out.stderr and "Traceback" not in out.stderr
    assert any(line.startswith("FAIL") and "cannot connect" in line for line in out.stdout.splitlines())
    assert any(line.startswith("WARN") and "config: feed" in line and "no COINCAP_API_KEY" in line
               for line in out.stdout.splitlines())


def test_settings_checks_without_and_with_a_live_feed() -> None:
    demo = {c.name: c for c in settings_checks(load_settings({"COINPULSE_FEED": "demo"}))}
    assert demo["config: feed"].status == "OK" and demo["config: api key"].status == "OK"
    missing = {c.name: c for c in settings_checks(load_settings({"COINPULSE_FEED": "rest"}))}
    assert missing["config: api key"].status == "FAIL"
    assets = {c.name: c for c in settings_checks(load_settings({"COINPULSE_ASSETS": "bitcoin,ethereum"}))}
    assert assets["config: assets"].detail == "2 (bitcoin, ethereum)"


def test_alerting_checks_name_the_channels_or_the_refused_setting() -> None:
    (none,) = alerting_checks({})
    assert none.status == "WARN" and "collector's own /alerts" in none.detail
    (ok,) = alerting_checks({"COINPULSE_ALERT_WEBHOOK_URL": "https://hooks.example.com/x",
                             "COINPULSE_ALERT_TELEGRAM_BOT_TOKEN": "123:abc",
                             "COINPULSE_ALERT_TELEGRAM_CHAT_ID": "-1001"})
    assert (ok.status, ok.name, ok.detail) == ("OK", "alerting: channels", "webhook, telegram")
    (bad,) = alerting_checks({"COINPULSE_ALERT_EMAIL_TO": "ops@example.com"})
    assert bad.status == "FAIL" and bad.detail.startswith("COINPULSE_ALERT_EMAIL_TO is set but GF_SMTP_HOST is not")
    (bad,) = alerting_checks({"COINPULSE_ALERT_TELEGRAM_BOT_TOKEN": "123:abc"})
    assert bad.status == "FAIL" and "COINPULSE_ALERT_TELEGRAM_CHAT_ID" in bad.detail


def test_doctor_prints_what_backfills_used_against_the_allowance(db: psycopg.Connection[tuple[object, ...]],
                                                                 db_url: str) -> None:
    planner = CreditPlanner(4000, [PollSpec("prices", 30, 1)], websocket=False, backfill_share=0.2, gap_assets=2)
    db.execute("INSERT INTO coinpulse.backfill_credits (spent_at, purpose, asset_id, credits) VALUES "
               "(now() - INTERVAL '1 hour', 'gap', 'bitcoin', 7), (now() - INTERVAL '23 hours', 'gap', 'bitcoin', 5), "
               "(now() - INTERVAL '25 hours', 'gap', 'bitcoin', 100), "
               "(now() - INTERVAL '3 days', 'cli', 'bitcoin', 40), (now() - INTERVAL '32 days', 'cli', 'bitcoin', 900)")
    assert backfill_credit_checks(db, planner) == [Check(
        "OK", "backfill credits", "gap worker used 12 of 25.8 in the last 24 h; `coinpulse backfill` used 40 in the "
        "last 31 days")]
    assert [c for c in doctor_lines(db_url, planner=planner) if c.name == "backfill credits"] == \
        backfill_credit_checks(db, planner)
    assert [c for c in doctor_lines(db_url) if c.name == "backfill credits"] == []  # without a plan: not asked
    db.execute("INSERT INTO coinpulse.backfill_credits (spent_at, purpose, asset_id, credits) VALUES "
               "(now() - INTERVAL '2 hours', 'gap', 'ethereum', 20)")
    (over,) = backfill_credit_checks(db, planner)
    assert over.status == "WARN" and over.detail.startswith("gap worker used 32 of 25.8 in the last 24 h") and \
        "over the allowance" in over.detail
    (unlimited,) = backfill_credit_checks(db, CreditPlanner(None, [], websocket=False, backfill_share=0.2))
    assert unlimited == Check("OK", "backfill credits", "gap worker used 32 in the last 24 h; `coinpulse backfill` "
                                                        "used 40 in the last 31 days")


@pytest.mark.full_edition
def test_cli_doctor_prints_the_credit_plan_with_the_backfill_allowance(db_url: str) -> None:
    env = {"COINPULSE_DATABASE_URL": db_url, "COINCAP_API_KEY": "k", "COINPULSE_FEED": "rest",
           "COINPULSE_ASSETS": "bitcoin,ethereum"}
    out = run_cli("doctor", env=env)
    plan = [line for line in out.stdout.splitlines() if "credit plan" in line or "backfill credits" in line]
    assert [line.split("  ")[0] for line in plan] == ["OK"] * len(plan), out.stdout
    details = [line.split("credit plan", 1)[-1].split("backfill credits", 1)[-1].strip() for line in plan]
    assert details == [
        "assets: every 7.6h x 1.0 credits = 3 credits/day",
        "exchanges: every 22.8h x 20.0 credits = 21 credits/day",
        "markets: every 22.8h x 34.0 credits = 36 credits/day",
        "rates: every 22.8h x 11.0 credits = 12 credits/day",
        "prices: every 45.6min x 1.0 credits = 32 credits/day",
        "gap backfill: up to 25.8 credits/day, 20% of what the stream leaves (COINPULSE_BACKFILL_SHARE); one "
        "outage of the 2 tracked assets costs about 2",
        "total: 4,000 of 4,000 credits per 31-day month: fits with intervals stretched x91.14 (at most 24.0h)",
        "gap worker used 0 of 25.8 in the last 24 h; `coinpulse backfill` used 0 in the last 31 days",
    ], out.stdout
    # README "CoinCap plans and credits" shows this very output
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8").splitlines()
    shown = [line for line in readme if line.startswith(("OK    credit plan", "OK    backfill credits"))]
    assert shown == plan
