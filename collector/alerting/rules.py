"""The alert rules: user thresholds, market moves, pipeline health (Grafana file provisioning, apiVersion 1).

SQL lives in sql/*.sql beside this file and runs on the datasource ``coinpulse-tsdb`` (TimescaleDB, read-only
role); PromQL runs on ``coinpulse-prom``. Every rule's condition is a server-side expression (threshold or
math) over its queries; the limits come from ``COINPULSE_ALERT_*`` (``RuleParams``), so they can be changed
without editing SQL.

Deliberate choices (README.md, "Alerts", explains them to users):

- ``for``: user thresholds 1m (a breach must hold at two evaluations a minute apart, so one odd tick does not
  page); market move 1m; exchange volume collapse 30m (exchange snapshots come every 15 minutes: two in a row);
  no ticks 1m (the query itself already measures N minutes of silence); open gaps 1m; job failing 10m (a
  refresh retries on its own); commit lag 5m; spool growing 10m; database down 2m.
- no data: OK where "no rows" means "nothing to watch" (no enabled thresholds, no tracked asset, no jobs, no
  lag samples because nothing flows -- the no-ticks rule covers that); Alerting where silence *is* the problem
  (no ticks answer at all; the collector's ``coinpulse_database_up`` series missing = it is not scraped).
- errors: the pipeline rules go to Error (Grafana's DatasourceError alert: the database or Prometheus cannot
  be queried, which is itself a pipeline problem); user thresholds and market rules keep their last state, so
  one outage does not flip every user alert at once (the pipeline rules report it).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

from collector.errors import ConfigError

__all__ = ["ALERT_FOLDER", "PROM_UID", "TSDB_UID", "RuleParams", "rule_groups", "sql_file"]

TSDB_UID = "coinpulse-tsdb"
PROM_UID = "coinpulse-prom"
ALERT_FOLDER = "CoinPulse alerts"  # not the dashboards' "CoinPulse": provisioning order cannot make them clash


@dataclass(frozen=True, slots=True)
class Param:
    env: str
    default: float
    low: float  # exclusive
    high: float  # inclusive
    meaning: str


PARAMS: dict[str, Param] = {p.env: p for p in (
    Param("COINPULSE_ALERT_MARKET_MOVE_PCT", 5, 0, 1000, "market move: |change| in % within an hour"),
    Param("COINPULSE_ALERT_EXCHANGE_DROP_PCT", 50, 0, 100, "exchange volume collapse: drop in % against a day before"),
    Param("COINPULSE_ALERT_EXCHANGE_MIN_VOLUME_USD", 1_000_000, -1, 1e15,
          "exchange volume collapse: only exchanges with at least this 24h volume a day before"),
    Param("COINPULSE_ALERT_NO_TICKS_MINUTES", 10, 0, 1440, "no tick stored for this many minutes"),
    Param("COINPULSE_ALERT_COMMIT_LAG_SECONDS", 5, 0, 3600, "p95 tick-to-commit lag over 5 minutes, seconds"),
    Param("COINPULSE_ALERT_GAP_MINUTES", 30, 0, 10080,
          "an ingest gap not backfilled this many minutes after detection"),
)}


def _plain(value: float) -> int | float:
    """Whole numbers as ints, so the YAML says 600, not 600.0."""
    return int(value) if value == int(value) and abs(value) < 1e15 else value


def _number(value: float) -> str:
    return str(int(value)) if value == int(value) and abs(value) < 1e15 else repr(value)


@dataclass(frozen=True, slots=True)
class RuleParams:
    market_move_pct: float = 5
    exchange_drop_pct: float = 50
    exchange_min_volume_usd: float = 1_000_000
    no_ticks_minutes: float = 10
    commit_lag_seconds: float = 5
    gap_minutes: float = 30

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> RuleParams:
        values: dict[str, float] = {}
        for name, p in PARAMS.items():
            raw = (env.get(name) or "").strip()
            if not raw:
                values[name] = p.default
                continue
            try:
                value = float(raw)
            except ValueError:
                raise ConfigError(f"{name}: expected a number ({p.meaning}), got {raw!r}") from None
            if not math.isfinite(value) or not p.low < value <= p.high:
                raise ConfigError(f"{name}: expected a number above {_number(p.low)} and at most "
                                  f"{_number(p.high)} ({p.meaning}), got {raw!r}")
            values[name] = value
        return cls(values["COINPULSE_ALERT_MARKET_MOVE_PCT"], values["COINPULSE_ALERT_EXCHANGE_DROP_PCT"],
                   values["COINPULSE_ALERT_EXCHANGE_MIN_VOLUME_USD"], values["COINPULSE_ALERT_NO_TICKS_MINUTES"],
                   values["COINPULSE_ALERT_COMMIT_LAG_SECONDS"], values["COINPULSE_ALERT_GAP_MINUTES"])


def sql_file(name: str) -> str:
    return resources.files("collector.alerting").joinpath("sql", name).read_text(encoding="utf-8").rstrip("\n")


# -- building blocks ------------------------------------------------------------------------------------------

def _sql(ref: str, sql: str, seconds: int) -> dict[str, Any]:
    return {"refId": ref, "relativeTimeRange": {"from": seconds, "to": 0}, "datasourceUid": TSDB_UID,
            "model": {"refId": ref, "datasource": {"type": "grafana-postgresql-datasource", "uid": TSDB_UID},
                      "editorMode": "code", "format": "table", "rawQuery": True, "rawSql": sql,
                      "intervalMs": 60000, "maxDataPoints": 43200}}


def _prom(ref: str, expr: str, seconds: int) -> dict[str, Any]:
    return {"refId": ref, "relativeTimeRange": {"from": seconds, "to": 0}, "datasourceUid": PROM_UID,
            "model": {"refId": ref, "datasource": {"type": "prometheus", "uid": PROM_UID}, "editorMode": "code",
                      "expr": expr, "instant": True, "range": False, "legendFormat": "__auto",
                      "intervalMs": 15000, "maxDataPoints": 43200}}


def _expr(ref: str, model: dict[str, Any]) -> dict[str, Any]:
    return {"refId": ref, "datasourceUid": "__expr__",
            "model": {"refId": ref, "datasource": {"type": "__expr__", "uid": "__expr__"}, **model}}


def _threshold(ref: str, of: str, op: str, value: float) -> dict[str, Any]:
    return _expr(ref, {"type": "threshold", "expression": of,
                       "conditions": [{"evaluator": {"type": op, "params": [_plain(value)]}}]})


def _math(ref: str, expression: str) -> dict[str, Any]:
    return _expr(ref, {"type": "math", "expression": expression})


def _reduce(ref: str, of: str) -> dict[str, Any]:
    return _expr(ref, {"type": "reduce", "expression": of, "reducer": "last", "settings": {"mode": "dropNN"}})


def _rule(uid: str, title: str, condition: str, data: list[dict[str, Any]], *, for_: str, no_data: str,
          exec_err: str, summary: str, description: str, labels: dict[str, str]) -> dict[str, Any]:
    return {"uid": uid, "title": title, "condition": condition, "data": data, "noDataState": no_data,
            "execErrState": exec_err, "for": for_, "annotations": {"summary": summary, "description": description},
            "labels": labels, "isPaused": False}


def _group(name: str, rules: list[dict[str, Any]]) -> dict[str, Any]:
    return {"orgId": 1, "name": name, "folder": ALERT_FOLDER, "interval": "1m", "rules": rules}


# -- the rules ------------------------------------------------------------------------------------------------

_THRESHOLD_SUMMARY = (
    '{{ $labels.subject }}'
    '{{ if eq $labels.kind "price_above" }} price {{ printf "%.8g" $values.B.Value }} USD is above '
    '{{ printf "%.8g" $values.C.Value }} USD'
    '{{ else if eq $labels.kind "price_below" }} price {{ printf "%.8g" $values.B.Value }} USD is below '
    '{{ printf "%.8g" $values.C.Value }} USD'
    '{{ else if eq $labels.kind "change_above" }} rose {{ printf "%+.2f" $values.B.Value }} % over '
    '{{ $labels.time_window }} (threshold {{ printf "%+.4g" $values.C.Value }} %)'
    '{{ else if eq $labels.kind "change_below" }} fell {{ printf "%+.2f" $values.B.Value }} % over '
    '{{ $labels.time_window }} (threshold {{ printf "%+.4g" $values.C.Value }} %)'
    '{{ else if eq $labels.kind "volume_above" }} 24h volume {{ humanize $values.B.Value }} USD is above '
    '{{ humanize $values.C.Value }} USD'
    '{{ else if eq $labels.kind "volume_change_above" }} 24h volume changed {{ printf "%+.1f" $values.B.Value }} % '
    'over {{ $labels.time_window }} (threshold {{ printf "%+.4g" $values.C.Value }} %)'
    '{{ else if eq $labels.kind "stale" }} has had no tick for {{ humanizeDuration $values.B.Value }} '
    '(threshold {{ $labels.time_window }})'
    '{{ else if eq $labels.kind "portfolio_value_below" }} portfolio value {{ printf "%.2f" $values.B.Value }} '
    '{{ $labels.unit }} is below {{ printf "%.2f" $values.C.Value }} {{ $labels.unit }}'
    '{{ else if eq $labels.kind "portfolio_change_below" }} portfolio value changed '
    '{{ printf "%+.2f" $values.B.Value }} % over {{ $labels.time_window }} '
    '(threshold {{ printf "%+.4g" $values.C.Value }} %)'
    '{{ else }} {{ $labels.kind }}: {{ $values.B.Value }} against {{ $values.C.Value }}{{ end }}'
)
_THRESHOLD_DESCRIPTION = (
    'Threshold {{ $labels.threshold_id }} ({{ $labels.kind }} {{ $labels.subject }}'
    '{{ if $labels.time_window }} over {{ $labels.time_window }}{{ end }}): current value '
    '{{ printf "%.8g" $values.B.Value }} {{ $labels.unit }}, threshold {{ printf "%.8g" $values.C.Value }} '
    '{{ $labels.unit }}. Pause it with `coinpulse thresholds disable {{ $labels.threshold_id }}`, or silence it in '
    'Grafana (label threshold_id={{ $labels.threshold_id }}).'
)


def _user_thresholds() -> dict[str, Any]:
    sql = sql_file("user_thresholds.sql")
    data = [_sql(ref, sql.replace("__VALUE__", column), 600)
            for ref, column in (("A", "breached"), ("B", "current_value"), ("C", "threshold"))]
    data.append(_threshold("D", "A", "gt", 0))
    return _group("user-thresholds", [_rule(
        "coinpulse-user-thresholds", "CoinPulse: user threshold breached", "D", data,
        for_="1m", no_data="OK", exec_err="KeepLast", summary=_THRESHOLD_SUMMARY, description=_THRESHOLD_DESCRIPTION,
        labels={"coinpulse_area": "thresholds"})])


def _market(p: RuleParams) -> dict[str, Any]:
    move = _rule(
        "coinpulse-market-move-1h", "CoinPulse: asset moved sharply within an hour", "B",
        [_sql("A", sql_file("market_move_1h.sql"), 3600), _math("B", f"abs($A) > {_number(p.market_move_pct)}")],
        for_="1m", no_data="OK", exec_err="KeepLast",
        summary=('{{ $labels.asset_id }}{{ if $labels.symbol }} ({{ $labels.symbol }}){{ end }} moved '
                 '{{ printf "%+.2f" $values.A.Value }} % within the last hour'),
        description=(f"The change from the first to the last one-minute candle of the last hour is beyond "
                     f"{_number(p.market_move_pct)} % either way (COINPULSE_ALERT_MARKET_MOVE_PCT)."),
        labels={"coinpulse_area": "market", "severity": "warning"})
    collapse = _rule(
        "coinpulse-exchange-volume-collapse", "CoinPulse: exchange volume collapsed", "C",
        [_sql("A", sql_file("exchange_volume_change.sql"), 93600),
         _sql("B", sql_file("exchange_volume_before.sql"), 93600),
         _math("C", f"$A < -{_number(p.exchange_drop_pct)} && $B >= {_number(p.exchange_min_volume_usd)}")],
        for_="30m", no_data="OK", exec_err="KeepLast",
        summary=('{{ $labels.exchange_id }} 24h volume fell {{ printf "%.1f" $values.A.Value }} % against a day '
                 'earlier'),
        description=(f"Rolling 24h volume reported by CoinCap now against the same figure 24 hours earlier "
                     f"(then {{{{ humanize $values.B.Value }}}} USD): a drop of more than "
                     f"{_number(p.exchange_drop_pct)} % (COINPULSE_ALERT_EXCHANGE_DROP_PCT) on an exchange that "
                     f"traded at least {_number(p.exchange_min_volume_usd)} USD "
                     f"(COINPULSE_ALERT_EXCHANGE_MIN_VOLUME_USD). An outage or delisting at the exchange, or "
                     f"CoinCap no longer reporting it."),
        labels={"coinpulse_area": "market", "severity": "warning"})
    return _group("market", [move, collapse])


def _pipeline(p: RuleParams) -> dict[str, Any]:
    no_ticks = _rule(
        "coinpulse-no-ticks", "CoinPulse: no ticks stored", "B",
        [_sql("A", sql_file("no_ticks.sql"), 86400), _threshold("B", "A", "gt", p.no_ticks_minutes * 60)],
        for_="1m", no_data="Alerting", exec_err="Error",
        summary="No price tick stored for {{ humanizeDuration $values.A.Value }}",
        description=(f"The newest row of price_ticks is older than {_number(p.no_ticks_minutes)} minutes "
                     f"(COINPULSE_ALERT_NO_TICKS_MINUTES). Check the collector (/healthz, its log), the stream or "
                     f"REST polling (stretched polling intervals on a small credit budget can exceed this), and "
                     f"the database."),
        labels={"coinpulse_area": "pipeline", "severity": "critical"})
    gaps = _rule(
        "coinpulse-open-gaps", "CoinPulse: ingest gaps not backfilled", "C",
        [_sql("A", sql_file("open_gaps_age.sql"), 3600), _sql("B", sql_file("open_gaps_count.sql"), 3600),
         _threshold("C", "A", "gt", p.gap_minutes)],
        for_="1m", no_data="OK", exec_err="Error",
        summary=("{{ printf \"%.0f\" $values.B.Value }} ingest gap(s) not backfilled; the oldest was detected "
                 "{{ printf \"%.0f\" $values.A.Value }} minutes ago"),
        description=(f"coinpulse.ingest_gaps has rows not 'done' for more than {_number(p.gap_minutes)} minutes "
                     f"(COINPULSE_ALERT_GAP_MINUTES): the backfill from CoinCap history is stuck or failing. "
                     f"The table's rows not done show them and their errors (README.md, 'For analysts', recipe 8)."),
        labels={"coinpulse_area": "pipeline", "severity": "warning"})
    jobs = _rule(
        "coinpulse-job-failing", "CoinPulse: TimescaleDB policy job failing", "C",
        [_sql("A", sql_file("job_failing.sql"), 600), _sql("B", sql_file("job_failures.sql"), 600),
         _threshold("C", "A", "gt", 0)],
        for_="10m", no_data="OK", exec_err="Error",
        summary="{{ $labels.job }} on {{ $labels.relation }} (job {{ $labels.job_id }}) is failing",
        description=("Its last run failed or it is overdue ({{ printf \"%.0f\" $values.B.Value }} failed runs in "
                     "all). Rollups fall behind while a refresh job fails. `coinpulse doctor` prints the job's "
                     "error (job error texts are visible to the database owner only)."),
        labels={"coinpulse_area": "pipeline", "severity": "warning"})
    lag = _rule(
        "coinpulse-commit-lag", "CoinPulse: tick-to-commit lag high", "C",
        [_prom("A", "histogram_quantile(0.95, sum by (le) (rate(coinpulse_tick_to_commit_seconds_bucket[5m])))",
               600),
         _reduce("B", "A"), _threshold("C", "B", "gt", p.commit_lag_seconds)],
        for_="5m", no_data="OK", exec_err="Error",
        summary="95th percentile tick-to-commit lag is {{ humanizeDuration $values.B.Value }}",
        description=(f"Ticks take more than {_number(p.commit_lag_seconds)} s from receipt to commit "
                     f"(COINPULSE_ALERT_COMMIT_LAG_SECONDS, p95 over 5 minutes): the database is slow or the "
                     f"writer is falling behind (see the pipeline-health dashboard: batch write time, queue)."),
        labels={"coinpulse_area": "pipeline", "severity": "warning"})
    spool = _rule(
        "coinpulse-spool-growing", "CoinPulse: spool growing", "C",
        [_prom("A", "deriv(coinpulse_spool_bytes[10m])", 900), _reduce("B", "A"), _threshold("C", "B", "gt", 0)],
        for_="10m", no_data="OK", exec_err="Error",
        summary="The on-disk spool of {{ $labels.instance }} keeps growing ({{ humanize $values.B.Value }}B/s)",
        description=("Batches are spilled to disk because the database does not take them, for 10 minutes and "
                     "more. They drain in order when it is back; the disk under COINPULSE_SPOOL_DIR bounds how "
                     "long that can last."),
        labels={"coinpulse_area": "pipeline", "severity": "warning"})
    database = _rule(
        "coinpulse-collector-database-down", "CoinPulse: collector cannot reach the database", "C",
        [_prom("A", "coinpulse_database_up", 600), _reduce("B", "A"), _threshold("C", "B", "lt", 1)],
        for_="2m", no_data="Alerting", exec_err="Error",
        summary="{{ if $labels.instance }}{{ $labels.instance }}: {{ end }}the collector's database connection is down",
        description=("coinpulse_database_up is 0 (the writer's last round trip failed; it retries and spools), or "
                     "missing altogether (no data: Prometheus does not scrape the collector, which is down)."),
        labels={"coinpulse_area": "pipeline", "severity": "critical"})
    return _group("pipeline", [no_ticks, gaps, jobs, lag, spool, database])


def rule_groups(params: RuleParams) -> list[dict[str, Any]]:
    return [_user_thresholds(), _market(params), _pipeline(params)]
