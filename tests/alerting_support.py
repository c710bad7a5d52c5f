"""Shared by the alerting tests: the provisioned rules as Grafana holds them, and running their SQL as Grafana does.

``rule(uid)`` reads grafana/provisioning/alerting/rules.yaml (the committed, provisioned file); ``run_query``
expands a query's SQL with tests/grafana_sql.py for the rule's relative time range ending at the database's
``now()`` and executes it as ``coinpulse_reader`` in one read-only transaction. ``evaluate`` applies the rule's
server-side expressions (threshold, math over the forms the rules use) to the query rows, giving the label sets
that would fire.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

import psycopg
import yaml

from grafana_sql import expand

ROOT = Path(__file__).resolve().parents[1]
ALERTING = ROOT / "grafana" / "provisioning" / "alerting"
Labels = tuple[tuple[str, str], ...]


@cache
def provisioned() -> dict[str, dict[str, Any]]:
    data = yaml.safe_load((ALERTING / "rules.yaml").read_text(encoding="utf-8"))
    return {r["uid"]: r for g in data["groups"] for r in g["rules"]}


def rule(uid: str) -> dict[str, Any]:
    return provisioned()[uid]


def query(uid: str, ref: str) -> dict[str, Any]:
    (q,) = [d for d in rule(uid)["data"] if d["refId"] == ref]
    return q


def run_query(conn: psycopg.Connection[Any], uid: str, ref: str, *, now: datetime | None = None
              ) -> tuple[list[str], list[str], list[tuple[Any, ...]]]:
    """(columns, type names, rows) of a rule's SQL query, as coinpulse_reader, after Grafana's macro expansion."""
    q = query(uid, ref)
    assert q["datasourceUid"] == "coinpulse-tsdb"
    with conn.transaction():
        conn.execute("SET TRANSACTION READ ONLY")
        at = now or conn.execute("SELECT now()").fetchone()[0]  # type: ignore[index]
        rel = q["relativeTimeRange"]
        sql = expand(q["model"]["rawSql"], time_from=at - timedelta(seconds=rel["from"]),
                     time_to=at - timedelta(seconds=rel["to"]),
                     interval=timedelta(milliseconds=q["model"]["intervalMs"]))
        conn.execute("SET LOCAL ROLE coinpulse_reader")
        cur = conn.execute(sql)  # type: ignore[arg-type]
        assert cur.description is not None
        columns = [c.name for c in cur.description]
        types = [conn.adapters.types.get(c.type_code).name for c in cur.description]  # type: ignore[union-attr]
        rows = cur.fetchall()
    return columns, types, rows


def numbers(conn: psycopg.Connection[Any], uid: str, ref: str, *, now: datetime | None = None
            ) -> dict[Labels, float | None]:
    """A query as Grafana's numeric data: text columns are labels, the one float8 column the value."""
    columns, types, rows = run_query(conn, uid, ref, now=now)
    numeric = [i for i, t in enumerate(types) if t == "float8"]
    assert len(numeric) == 1, (uid, ref, columns, types)  # exactly one number per row ...
    assert all(t == "text" for i, t in enumerate(types) if i != numeric[0]), (uid, ref, types)  # ... the rest labels
    out: dict[Labels, float | None] = {}
    for row in rows:
        labels = tuple((columns[i], str(row[i])) for i in range(len(columns)) if i != numeric[0])
        assert labels not in out, f"{uid}/{ref}: labels {labels} not unique"
        out[labels] = row[numeric[0]]
    return out


_OPS: dict[str, Callable[[float, float], bool]] = {"gt": operator.gt, "lt": operator.lt}
_CMP = {">": operator.gt, "<": operator.lt, ">=": operator.ge, "<=": operator.le}
_TERM = re.compile(r"^\s*(abs\()?\$([A-Z])\)?\s*(>=|<=|>|<)\s*(-?[0-9.e+]+)\s*$")


def _math(expression: str, values: Mapping[str, float | None]) -> bool:
    """The rules' math expressions: terms ``$X op N`` or ``abs($X) op N`` joined by ``&&``."""
    result = True
    for term in expression.split("&&"):
        m = _TERM.match(term)
        assert m, f"unsupported math expression {expression!r}"
        value = values[m.group(2)]
        if value is None:
            return False
        if m.group(1):
            value = abs(value)
        result = result and _CMP[m.group(3)](value, float(m.group(4)))
    return result


def evaluate(conn: psycopg.Connection[Any], uid: str, *, now: datetime | None = None) -> set[Labels]:
    """The label sets the rule's condition fires for (every SQL query run, then the condition expression)."""
    r = rule(uid)
    results = {d["refId"]: numbers(conn, uid, d["refId"], now=now) for d in r["data"]
               if d["datasourceUid"] == "coinpulse-tsdb"}
    (cond,) = [d for d in r["data"] if d["refId"] == r["condition"]]
    model = cond["model"]
    firing = set()
    if model["type"] == "threshold":
        evaluator = model["conditions"][0]["evaluator"]
        for labels, value in results[model["expression"]].items():
            if value is not None and _OPS[evaluator["type"]](value, evaluator["params"][0]):
                firing.add(labels)
    else:
        assert model["type"] == "math"
        refs = sorted(set(re.findall(r"\$([A-Z])", model["expression"])))
        for labels in results[refs[0]]:
            if _math(model["expression"], {ref: results[ref].get(labels) for ref in refs}):
                firing.add(labels)
    return firing


def schedule_jobs(conn: psycopg.Connection[Any], now: datetime) -> tuple[int, int, int]:
    """Three policy jobs scheduled (the tests pause them all) with statistics as TimescaleDB's scheduler records them:
    one fine, one whose last run failed, one overdue. Call it inside a transaction that is rolled back, so
    the scheduler never sees (or runs) them. Returns the three job ids."""
    jobs = {name: job_id for job_id, name in conn.execute(
        "SELECT job_id, hypertable_name || '/' || proc_name FROM timescaledb_information.jobs "
        "WHERE hypertable_schema = 'coinpulse'")}
    ok, failed, overdue = (jobs["candles_1h/policy_refresh_continuous_aggregate"],
                           jobs["candles_1m/policy_refresh_continuous_aggregate"],
                           jobs["price_ticks/policy_retention"])
    for job_id in (ok, failed, overdue):
        conn.execute("SELECT alter_job(%s, scheduled => true)", (job_id,))
    conn.execute("DELETE FROM _timescaledb_internal.bgw_job_stat")
    for job_id, success, next_start in ((ok, True, now + timedelta(hours=1)), (failed, False, now + timedelta(hours=1)),
                                        (overdue, True, now - timedelta(days=3))):
        conn.execute(
            "INSERT INTO _timescaledb_internal.bgw_job_stat (job_id, last_start, last_finish, next_start, "
            "last_successful_finish, last_run_success, total_runs, total_duration, total_duration_failures, "
            "total_successes, total_failures, total_crashes, consecutive_failures, consecutive_crashes) "
            "VALUES (%s, %s, %s, %s, %s, %s, 10, '1 s', '0 s', %s, %s, 0, %s, 0)",
            (job_id, now - timedelta(minutes=6), now - timedelta(minutes=5), next_start,
             now - timedelta(minutes=5) if success else now - timedelta(days=1), success, 10 if success else 7,
             0 if success else 3, 0 if success else 3))
    return ok, failed, overdue
