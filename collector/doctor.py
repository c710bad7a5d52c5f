"""`coinpulse doctor`: what is wrong with the database side of an installation, one line per check.

``doctor_lines(url)`` returns ``Check(status, name, detail)`` tuples; the CLI prints ``format_check`` of each
and exits with ``exit_code``. Checks: the server and the TimescaleDB version and edition; the migration
state (current vs head revision); the job scheduler; every background job (refresh, columnstore and
retention policies) with its last run, status and failures; each rollup's lag (now - materialization
watermark); the retention rule (collector/db/lifecycle.py). The ``*_check`` helpers are pure functions of
rows, tested without a database.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal, NamedTuple

import psycopg
import sqlalchemy

from collector.alerting import render_files
from collector.alerting.channels import configured_channels
from collector.budget import CreditPlanner
from collector.db.connect import connect, server_info
from collector.db.lifecycle import RAW_TABLES, minimum_retention, raw_refresh_windows
from collector.db.migrate import current_revision, head_revision
from collector.db.rollups import ROLLUPS
from collector.errors import CoinPulseError, ConfigError
from collector.history import DEFAULT_POINTS_PER_REQUEST
from collector.settings import Settings, redact_url

__all__ = [
    "Check",
    "JobRow",
    "LagRow",
    "alerting_checks",
    "backfill_credit_checks",
    "database_checks",
    "doctor_lines",
    "exit_code",
    "format_check",
    "job_check",
    "lag_check",
    "plan_checks",
    "settings_checks",
]

Status = Literal["OK", "WARN", "FAIL"]


class Check(NamedTuple):
    status: Status
    name: str
    detail: str


@dataclass(frozen=True, slots=True)
class JobRow:
    job_id: int
    kind: str  # refresh / columnstore / retention / the job's application name
    target: str  # hypertable or rollup name, "" for other jobs
    scheduled: bool
    schedule_interval: timedelta
    last_run_started_at: datetime | None
    last_successful_finish: datetime | None
    last_run_status: str | None  # 'Success' / 'Failed' / None (never ran)
    next_start: datetime | None
    total_runs: int
    total_failures: int
    last_error: str | None


@dataclass(frozen=True, slots=True)
class LagRow:
    rollup: str
    watermark: datetime | None  # None: nothing materialized yet
    bucket: timedelta
    end_offset: timedelta | None  # None: no refresh policy
    schedule_interval: timedelta | None
    source_has_rows: bool


_KINDS = {
    "policy_refresh_continuous_aggregate": "refresh",
    "policy_compression": "columnstore",
    "policy_retention": "retention",
    "refresh_storage_sizes": "storage sizes",
}


def _ts(value: datetime | None) -> str:
    return "never" if value is None else value.strftime("%Y-%m-%d %H:%M:%S%z")


def _span(value: timedelta) -> str:
    seconds = int(value.total_seconds())
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    if seconds < 172800:
        return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"
    if seconds % 86400 == 0:
        return f"{seconds // 86400}d"
    return f"{seconds // 86400}d{(seconds % 86400) // 3600:02d}h"


# TimescaleDB's background job runner (2.28.3; 2.29.2 has the same code) runs a job inside a portal it creates and
# never starts, and drops it after the job's commit. Newer PostgreSQL minors refuse to drop such a portal (seen on
# 15.20 and 17.12, not on 15.18): the run's work is committed, but the run is recorded as failed.
PORTAL_ERROR = 'cannot drop portal "" while it is being set up'
PORTAL_HINT = ("TimescaleDB's job runner and this PostgreSQL minor disagree: the run's work was committed, but every "
               "background run is recorded failed and retried at up to 5x its interval (README \"Known problem: "
               "policy runs recorded as failed\")")


def job_check(job: JobRow, now: datetime) -> Check:
    """OK / WARN (paused, no success for 3 intervals) / FAIL (last run failed) for one background job."""
    name = f"job {job.job_id} {job.kind}" + (f" {job.target}" if job.target else "")
    stats = f"failures {job.total_failures}/{job.total_runs}"
    if not job.scheduled:
        return Check("WARN", name, f"paused (scheduled = false); last run {_ts(job.last_run_started_at)}, {stats}")
    if job.last_run_status == "Failed":
        error = f": {job.last_error}" if job.last_error else ""
        if job.last_error and PORTAL_ERROR in job.last_error:
            error += f" ({PORTAL_HINT})"
        return Check("FAIL", name, f"last run {_ts(job.last_run_started_at)} failed, {stats}{error}")
    if job.total_runs == 0 or job.last_run_started_at is None:
        return Check("OK", name, f"not run yet (every {_span(job.schedule_interval)}), next {_ts(job.next_start)}")
    if job.last_successful_finish is not None and now - job.last_successful_finish > 3 * job.schedule_interval:
        return Check("WARN", name, f"no success since {_ts(job.last_successful_finish)} "
                                   f"(runs every {_span(job.schedule_interval)}), {stats}")
    return Check("OK", name, f"last run {_ts(job.last_run_started_at)} {job.last_run_status}, "
                             f"next {_ts(job.next_start)}, {stats}")


def lag_check(row: LagRow, now: datetime) -> Check:
    """A rollup's lag: now - watermark, against end_offset + one bucket + two schedule intervals."""
    name = f"rollup {row.rollup}"
    if row.end_offset is None or row.schedule_interval is None:
        return Check("WARN", name, "no refresh policy: only real-time aggregation and manual refreshes update it")
    allowed = row.end_offset + row.bucket + 2 * row.schedule_interval
    if row.watermark is None:
        if not row.source_has_rows:
            return Check("OK", name, "no data yet")
        return Check("WARN", name, "nothing materialized yet: queries aggregate raw rows in real time until the "
                                   "refresh policy runs")
    lag = now - row.watermark
    if lag > allowed:
        return Check("WARN", name, f"lag {_span(lag)} (materialized up to {_ts(row.watermark)}) exceeds "
                                   f"{_span(allowed)}: its refresh job is failing, or no new rows arrive")
    return Check("OK", name, f"lag {_span(lag)} (materialized up to {_ts(row.watermark)}; "
                             f"expected <= {_span(allowed)})")


_JOBS = """
SELECT j.job_id, j.proc_name, j.application_name, coalesce(j.hypertable_name, ''), j.scheduled,
       j.schedule_interval,
       CASE WHEN isfinite(s.last_run_started_at) THEN s.last_run_started_at END,
       CASE WHEN isfinite(s.last_successful_finish) THEN s.last_successful_finish END,
       s.last_run_status,
       CASE WHEN isfinite(s.next_start) THEN s.next_start END,
       coalesce(s.total_runs, 0), coalesce(s.total_failures, 0),
       (SELECT e.err_message FROM timescaledb_information.job_errors e
        WHERE e.job_id = j.job_id ORDER BY e.finish_time DESC NULLS LAST LIMIT 1)
FROM timescaledb_information.jobs j
LEFT JOIN timescaledb_information.job_stats s ON s.job_id = j.job_id
WHERE j.job_id >= 1000
ORDER BY j.job_id
"""

_LAGS = """
SELECT c.user_view_name,
       CASE WHEN w.wm > 0 THEN _timescaledb_functions.to_timestamp(w.wm) END,
       b.bucket_width::interval,
       (j.config ->> 'end_offset')::interval,
       j.schedule_interval
FROM _timescaledb_catalog.continuous_agg c
CROSS JOIN LATERAL (SELECT _timescaledb_functions.cagg_watermark(c.mat_hypertable_id) AS wm) w
JOIN _timescaledb_catalog.continuous_aggs_bucket_function b ON b.mat_hypertable_id = c.mat_hypertable_id
LEFT JOIN timescaledb_information.jobs j
  ON j.hypertable_schema = c.user_view_schema AND j.hypertable_name = c.user_view_name
 AND j.proc_name = 'policy_refresh_continuous_aggregate'
WHERE c.user_view_schema = 'coinpulse'
ORDER BY c.mat_hypertable_id
"""

_SCHEDULER = """
SELECT count(*) FROM pg_stat_activity
WHERE datname = current_database() AND backend_type = 'TimescaleDB Background Worker Scheduler'
"""


def _root_source(rollup: str) -> str | None:
    by_name = {r.name: r for r in ROLLUPS}
    seen = rollup
    while seen in by_name:
        seen = by_name[seen].source
    return seen if seen in RAW_TABLES else None


def _has_rows(conn: psycopg.Connection[tuple[object, ...]], table: str | None) -> bool:
    if table is None:
        return True
    row = conn.execute(f"SELECT EXISTS (SELECT FROM coinpulse.{table})").fetchone()  # noqa: S608 - RAW_TABLES
    return bool(row and row[0])


def alerting_checks(env: Mapping[str, str]) -> list[Check]:
    """Alert provisioning from this environment (what `coinpulse alerting render` would write): the channels
    notifications go to, or the one-line reason a COINPULSE_ALERT_* / GF_SMTP_* setting is refused."""
    try:
        render_files(env)
        channels = configured_channels(env)
    except ConfigError as exc:
        return [Check("FAIL", "alerting: provisioning", str(exc))]
    if channels:
        return [Check("OK", "alerting: channels", ", ".join(channels))]
    return [Check("WARN", "alerting: channels", "none configured: alerts go only to the collector's own /alerts "
                  "(logged and counted); set COINPULSE_ALERT_EMAIL_TO, _WEBHOOK_URL, _SLACK_* or _TELEGRAM_* "
                  "(README \"Alerts\")")]


def settings_checks(settings: Settings) -> list[Check]:
    """What the configuration means, without secrets: feed, API key presence, database, assets."""
    url = settings.database_url.get_secret_value()
    feed = settings.resolved_feed
    has_key = settings.coincap_api_key is not None and bool(settings.coincap_api_key.get_secret_value())
    checks = [Check("OK", "config: database", redact_url(url))]
    if feed == "demo":
        status: Status = "WARN" if settings.feed != "demo" and not has_key else "OK"
        why = "COINPULSE_FEED=demo" if settings.feed == "demo" else "no COINCAP_API_KEY"
        checks.append(Check(status, "config: feed", f"demo (synthetic prices, source='demo'): {why}"))
    else:
        checks.append(Check("OK", "config: feed", f"{feed} (COINPULSE_FEED={settings.feed}), CoinCap at "
                            f"{settings.coincap_rest_url}"))
    checks.append(Check("OK" if has_key or feed == "demo" else "FAIL", "config: api key",
                        "set (not shown)" if has_key else "not set: live feeds need COINCAP_API_KEY"))
    assets = "ALL" if settings.assets == "ALL" else f"{len(settings.assets)} ({', '.join(settings.assets[:5])}"
    if settings.assets != "ALL":
        assets += ", ...)" if len(settings.assets) > 5 else ")"
    checks.append(Check("OK", "config: assets", assets))
    return checks


def plan_checks(planner: CreditPlanner, points_per_request: int = DEFAULT_POINTS_PER_REQUEST) -> list[Check]:
    """The API credit plan, one line per stream or poll and one for the gap backfill allowance; WARN when the
    budget cannot cover the configuration, or the allowance cannot pay for a history request or one outage's
    backfill in a day."""
    lines = planner.describe()
    checks = []
    for line in lines[:-1]:
        if line.startswith("gap backfill:") and not planner.backfill_covers(points_per_request):
            request = planner.request_estimate(points_per_request)
            if (planner.backfill_per_day or 0.0) < request:
                line += (f": a history request of up to {points_per_request} points costs about {request}, more than "
                         "the allowance, so gaps may never be filled; raise COINPULSE_BACKFILL_SHARE or "
                         "COINPULSE_CREDIT_BUDGET, or lower COINPULSE_HISTORY_POINTS_PER_REQUEST")
            else:
                line += (": gaps after an outage wait days for credits; raise COINPULSE_BACKFILL_SHARE or "
                         "COINPULSE_CREDIT_BUDGET, or track fewer COINPULSE_ASSETS")
            checks.append(Check("WARN", "credit plan", line))
        else:
            checks.append(Check("OK", "credit plan", line))
    checks.append(Check("OK" if planner.fits else "WARN", "credit plan", lines[-1] + (
        "" if planner.fits else ": set COINPULSE_CREDIT_BUDGET to your plan's monthly credits or poll fewer "
        "COINPULSE_ASSETS")))
    return checks


def _edition_checks(conn: psycopg.Connection[tuple[object, ...]]) -> tuple[list[Check], bool]:
    info = server_info(conn)
    checks = [Check("OK", "database", f"PostgreSQL {info.server_version}")]
    if info.timescaledb_installed is None:
        checks.append(Check("FAIL", "timescaledb", "extension not installed in this database: run `coinpulse migrate`"
                            if info.timescaledb_available else "extension not available on this server"))
        return checks, False
    if not info.full_edition:
        checks.append(Check("FAIL", "timescaledb", f"{info.timescaledb_installed}, edition: {info.edition}; the "
                            "rollups need the full edition (timescaledb.license = 'timescale')"))
        return checks, False
    checks.append(Check("OK", "timescaledb", f"{info.timescaledb_installed}, edition: {info.edition}"))
    return checks, True


def database_checks(conn: psycopg.Connection[tuple[object, ...]]) -> list[Check]:
    """Everything doctor checks through an open connection (all but the migration state)."""
    checks, usable = _edition_checks(conn)
    if not usable:
        return checks
    now_row = conn.execute("SELECT now()").fetchone()
    assert now_row is not None and isinstance(now_row[0], datetime)
    now = now_row[0]
    row = conn.execute(_SCHEDULER).fetchone()
    if row and int(str(row[0])) > 0:
        checks.append(Check("OK", "scheduler", "running for this database"))
    else:
        checks.append(Check("WARN", "scheduler", "no TimescaleDB scheduler runs for this database, so no "
                            "policy runs: check timescaledb.max_background_workers and the server log"))
    for r in conn.execute(_JOBS).fetchall():
        checks.append(job_check(JobRow(
            job_id=int(str(r[0])), kind=_KINDS.get(str(r[1]), str(r[2])), target=str(r[3]),
            scheduled=bool(r[4]), schedule_interval=r[5] if isinstance(r[5], timedelta) else timedelta(0),
            last_run_started_at=_dt(r[6]), last_successful_finish=_dt(r[7]),
            last_run_status=None if r[8] is None else str(r[8]), next_start=_dt(r[9]),
            total_runs=int(str(r[10])), total_failures=int(str(r[11])),
            last_error=None if r[12] is None else str(r[12]),
        ), now))
    for r in conn.execute(_LAGS).fetchall():
        name = str(r[0])
        checks.append(lag_check(LagRow(
            rollup=name, watermark=_dt(r[1]), bucket=r[2] if isinstance(r[2], timedelta) else timedelta(0),
            end_offset=r[3] if isinstance(r[3], timedelta) else None,
            schedule_interval=r[4] if isinstance(r[4], timedelta) else None,
            source_has_rows=_has_rows(conn, _root_source(name)) if r[1] is None else True,
        ), now))
    checks.append(_retention_check(conn))
    return checks


def _retention_check(conn: psycopg.Connection[tuple[object, ...]]) -> Check:
    minimum = minimum_retention(raw_refresh_windows(conn))
    rows = conn.execute(
        "SELECT hypertable_name, (config ->> 'drop_after')::interval FROM timescaledb_information.jobs "
        "WHERE proc_name = 'policy_retention' AND hypertable_schema = 'coinpulse' ORDER BY 1").fetchall()
    if not rows:
        return Check("OK", "retention rule", "no retention policy: raw rows are kept forever")
    floor = "none (a refresh policy reads from the beginning of time)" if minimum is None else _span(minimum)
    short = [f"{r[0]} ({_span(r[1]) if isinstance(r[1], timedelta) else r[1]})" for r in rows
             if not isinstance(r[1], timedelta) or minimum is None or r[1] < minimum]
    if short:
        return Check("FAIL", "retention rule", f"retention shorter than the refresh windows allow (minimum {floor}): "
                     f"{', '.join(short)}; run `coinpulse migrate` with a longer COINPULSE_RETENTION_DAYS")
    kept = sorted({_span(r[1]) for r in rows if isinstance(r[1], timedelta)})
    return Check("OK", "retention rule", f"raw rows kept {', '.join(kept)} >= minimum {floor} "
                 "(largest refresh start_offset on raw data + 1 day)")


def _dt(value: object) -> datetime | None:
    return value if isinstance(value, datetime) else None


_BACKFILL_CREDITS = """
SELECT to_regclass('coinpulse.backfill_credits') IS NOT NULL
"""
_BACKFILL_USED = """
SELECT coalesce(sum(credits) FILTER (WHERE purpose = 'gap' AND spent_at > now() - INTERVAL '1 day'), 0),
       coalesce(sum(credits) FILTER (WHERE purpose = 'cli' AND spent_at > now() - INTERVAL '31 days'), 0)
FROM coinpulse.backfill_credits
"""


def backfill_credit_checks(conn: psycopg.Connection[tuple[object, ...]], planner: CreditPlanner) -> list[Check]:
    """What history requests spent (``backfill_credits``): the gap worker in the last 24 hours against its
    allowance (WARN when over it), and `coinpulse backfill` in the last 31 days. Nothing before migration."""
    row = conn.execute(_BACKFILL_CREDITS).fetchone()
    if not row or not row[0]:
        return []
    used = conn.execute(_BACKFILL_USED).fetchone()
    assert used is not None
    gap_used, cli_used = int(str(used[0])), int(str(used[1]))
    allowance = planner.backfill_per_day
    tail = f"; `coinpulse backfill` used {cli_used:,} in the last 31 days"
    if allowance is None or not planner.backfill:
        return [Check("OK", "backfill credits", f"gap worker used {gap_used:,} in the last 24 h{tail}")]
    detail = f"gap worker used {gap_used:,} of {allowance:,.1f} in the last 24 h{tail}"
    if gap_used > allowance + 1e-9:
        return [Check("WARN", "backfill credits", detail + ": over the allowance (history answers cost more than "
                      "estimated); the worker waits until the window has room again")]
    return [Check("OK", "backfill credits", detail)]


def doctor_lines(url: str, planner: CreditPlanner | None = None) -> list[Check]:
    """Run every check against the database at ``url``; never raises for a problem it can report. With the
    credit ``planner``, also what gap backfills and `coinpulse backfill` spent (``backfill_credit_checks``)."""
    try:
        with connect(url, autocommit=True, application_name="coinpulse-doctor") as conn:
            checks = database_checks(conn)
            if planner is not None:
                checks += backfill_credit_checks(conn, planner)
    except CoinPulseError as exc:
        return [Check("FAIL", "database", str(exc))]
    except psycopg.Error as exc:
        return [Check("FAIL", "database", str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc))]
    head = head_revision()
    try:
        current = current_revision(url)
    except sqlalchemy.exc.SQLAlchemyError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        checks.insert(min(2, len(checks)), Check("FAIL", "migrations", f"cannot read the revision: {reason}"))
        return checks
    if current is None:
        migration = Check("FAIL", "migrations", f"not migrated (head is {head}): run `coinpulse migrate`")
    elif current != head:
        migration = Check("FAIL", "migrations", f"at {current}, head is {head}: run `coinpulse migrate`")
    else:
        migration = Check("OK", "migrations", f"at head ({head})")
    checks.insert(min(2, len(checks)), migration)
    return checks


def format_check(check: Check) -> str:
    """One printable line: status, check name, detail."""
    return f"{check.status:<4}  {check.name:<36}  {check.detail}"


def exit_code(checks: list[Check]) -> int:
    """1 if any check failed, else 0 (warnings do not fail)."""
    return 1 if any(c.status == "FAIL" for c in checks) else 0
