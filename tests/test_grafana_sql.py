"""The Grafana macro/template expander (tests/grafana_sql.py) against outputs Grafana's own tests expect.

Expected strings come from grafana/grafana pkg/tsdb/grafana-postgresql-datasource/macros_test.go, the
grafana-plugin-sdk-go gtime tests, and grafana/scenes formatRegistry.test.ts; a few are derived from the
same source where no upstream test pins them (marked).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from grafana_sql import (
    Fill,
    GrafanaSqlError,
    Variable,
    auto_interval,
    expand,
    expand_query,
    go_format_interval,
    go_parse_interval,
    panel_interval,
    panel_targets,
    parse_time,
    time_range,
)

FROM = datetime(2018, 4, 12, 18, 0, tzinfo=UTC)
TO = FROM + timedelta(minutes=5)


def x(sql: str, *, timescaledb: bool = False, interval: timedelta = timedelta(minutes=10),
      time_from: datetime = FROM, time_to: datetime = TO, **variables: str | list[str] | Variable) -> str:
    return expand(sql, time_from=time_from, time_to=time_to, interval=interval, variables=variables,
                  timescaledb=timescaledb)


# ---- macros_test.go, "Given a time range between 2018-04-12 00:00 and 2018-04-12 00:05"

def test_time_and_epoch() -> None:
    assert x("select $__time(time_column)") == 'select time_column AS "time"'
    assert x("select min($__time(time_column))") == 'select min(time_column AS "time")'
    assert x("select $__timeEpoch(t)") == 'select extract(epoch from t) as "time"'


def test_time_filter_from_to() -> None:
    assert x("WHERE $__timeFilter(time_column)") == \
        "WHERE time_column BETWEEN '2018-04-12T18:00:00Z' AND '2018-04-12T18:05:00Z'"
    assert x("select $__timeFrom()") == "select '2018-04-12T18:00:00Z'"
    assert x("select $__timeTo()") == "select '2018-04-12T18:05:00Z'"


def test_time_group_pre_5_3_compatibility() -> None:
    assert x("SELECT $__timeGroup(time_column,'5m'), value") == \
        'SELECT floor(extract(epoch from time_column)/300)*300 AS "time", value'
    assert x("SELECT $__timeGroup(time_column,'5m') as time, value") == \
        "SELECT floor(extract(epoch from time_column)/300)*300 as time, value"


def test_time_group_and_alias() -> None:
    assert x("SELECT $__timeGroup(time_column,'5m')") == "SELECT floor(extract(epoch from time_column)/300)*300"
    assert x("SELECT $__timeGroupAlias(time_column,'5m')") == \
        'SELECT floor(extract(epoch from time_column)/300)*300 AS "time"'
    assert x("$__timeGroup(time_column , '5m')") == "floor(extract(epoch from time_column)/300)*300"


def test_time_group_timescaledb() -> None:
    assert x("GROUP BY $__timeGroup(time_column,'5m')", timescaledb=True) == \
        "GROUP BY time_bucket('300.000s',time_column)"
    assert x("GROUP BY $__timeGroup(time_column , '5m')", timescaledb=True) == \
        "GROUP BY time_bucket('300.000s',time_column)"
    assert x("GROUP BY $__timeGroup(time_column , '12d')", timescaledb=True) == \
        "GROUP BY time_bucket('1036800.000s',time_column)"
    assert x("GROUP BY $__timeGroup(time_column , '20ms')", timescaledb=True) == \
        "GROUP BY time_bucket('0.020s',time_column)"


def test_time_group_non_timescale_uses_go_float_format() -> None:
    # Derived: Go formats float64 with %v, i.e. shortest 'g' (exponent from 1e6 up).
    assert x("$__timeGroup(t, '12d')") == "floor(extract(epoch from t)/1.0368e+06)*1.0368e+06"
    assert x("$__timeGroup(t, '20ms')") == "floor(extract(epoch from t)/0.02)*0.02"


def test_unix_epoch_macros() -> None:
    assert x("select $__unixEpochFilter(time)") == "select time >= 1523556000 AND time <= 1523556300"
    assert x("select $__unixEpochNanoFilter(time)") == \
        "select time >= 1523556000000000000 AND time <= 1523556300000000000"
    assert x("select $__unixEpochNanoFrom()") == "select 1523556000000000000"
    assert x("select $__unixEpochNanoTo()") == "select 1523556300000000000"
    assert x("select $__unixEpochFrom(), $__unixEpochTo()") == "select 1523556000, 1523556300"
    assert x("SELECT $__unixEpochGroup(time_column+time_adjustment,'5m')") == \
        "SELECT floor((time_column+time_adjustment)/300)*300"
    assert x("SELECT $__unixEpochGroupAlias(time_column+time_adjustment,'5m')") == \
        'SELECT floor((time_column+time_adjustment)/300)*300 AS "time"'


def test_interval_substitution() -> None:
    # macros_test.go TestInterpolateSQLCommenter: Interval 10m -> "SELECT 10m ..."
    assert x("SELECT $__interval /*app='grafana',source='bi'*/") == "SELECT 10m /*app='grafana',source='bi'*/"
    assert x("SELECT $__interval_ms") == "SELECT 600000"
    assert x("$__timeGroup(t, $__interval)", timescaledb=True) == "time_bucket('600.000s',t)"


def test_old_and_fractional_time_ranges() -> None:
    f = datetime(1960, 2, 1, 7, 0, 0, 500_000, tzinfo=UTC)
    t = datetime(1980, 2, 3, 8, 0, 0, 500_000, tzinfo=UTC)
    assert x("WHERE $__timeFilter(c)", time_from=f, time_to=t) == \
        "WHERE c BETWEEN '1960-02-01T07:00:00.5Z' AND '1980-02-03T08:00:00.5Z'"
    # Go's Unix() floors: 1960-02-01T07:00:00.5Z is -312915599.5 s -> -312915600
    f2, t2 = datetime(1960, 2, 1, 7, tzinfo=UTC), datetime(1965, 2, 3, 8, tzinfo=UTC)
    assert x("$__unixEpochFilter(time)", time_from=f2, time_to=t2) == \
        f"time >= {int(f2.timestamp())} AND time <= {int(t2.timestamp())}"
    assert x("$__unixEpochFilter(time)", time_from=f, time_to=t) == "time >= -312915600 AND time <= 318412800"


def test_fill_options_are_parsed() -> None:
    kw = {"time_from": FROM, "time_to": TO, "interval": timedelta(minutes=1)}
    assert expand_query("$__timeGroup(t, '5m', NULL)", **kw).fill == Fill("null", timedelta(minutes=5))
    assert expand_query("$__timeGroup(t, '5m', previous)", **kw).fill == Fill("previous", timedelta(minutes=5))
    assert expand_query("$__timeGroupAlias(t, 1h, 0)", **kw).fill == Fill("value", timedelta(hours=1), 0.0)
    assert expand_query("$__timeGroup(t, '5m')", **kw).fill is None
    with pytest.raises(GrafanaSqlError, match="error parsing fill value nope"):
        expand_query("$__timeGroup(t, '5m', nope)", **kw)


def test_errors_like_grafana() -> None:
    with pytest.raises(GrafanaSqlError, match='unknown macro "__nope"'):
        x("SELECT $__nope(a)")
    with pytest.raises(GrafanaSqlError, match="needs time column and interval"):
        x("SELECT $__timeGroup(a)")
    with pytest.raises(GrafanaSqlError, match="error parsing interval"):
        x("SELECT $__timeGroup(a, 'five')")
    with pytest.raises(GrafanaSqlError, match="unknown template variable"):
        x("SELECT $asset")


# ---- gtime

def test_go_intervals() -> None:
    assert go_parse_interval("1h30m") == timedelta(minutes=90)
    assert go_parse_interval("1.5s") == timedelta(seconds=1.5)
    assert go_parse_interval("2d") == timedelta(days=2)
    assert go_parse_interval("1w") == timedelta(days=7)
    now = datetime(2026, 2, 10, tzinfo=UTC)
    assert go_parse_interval("1M", now=now) == timedelta(days=28)
    assert go_parse_interval("1y", now=now) == timedelta(days=365)
    assert go_parse_interval("1y", now=datetime(2027, 6, 1, tzinfo=UTC)) == timedelta(days=366)
    assert go_format_interval(timedelta(seconds=90)) == "1m"
    assert go_format_interval(timedelta(days=400)) == "1y"
    assert go_format_interval(timedelta(hours=25)) == "1d"
    assert go_format_interval(timedelta(milliseconds=20)) == "20ms"
    assert go_format_interval(timedelta(microseconds=5)) == "1ms"


# ---- template variables (SqlDatasource.interpolateVariable and scenes formatRegistry.test.ts)

def test_default_sql_interpolation() -> None:
    assert x("a IN ($asset)", asset=["bitcoin", "it's"]) == "a IN ('bitcoin','it''s')"
    assert x("a = '$asset'", asset="it's") == "a = 'it''s'"
    assert x("a IN ($asset)", asset=Variable("it's", multi=True)) == "a IN ('it''s')"
    assert x("a IN (${asset})", asset=["x"]) == "a IN ('x')"
    assert x("a IN ([[asset]])", asset=["x", "y"]) == "a IN ('x','y')"
    assert x("a LIKE $asset", asset=Variable("%", raw=True)) == "a LIKE %"


def test_formats() -> None:
    assert x("${v:sqlstring}", v="test'value") == "'test''value'"
    assert x("${v:sqlstring}", v='test"value') == "'test\\\"value'"
    assert x("${v:sqlstring}", v=["test", "test'value2", 'test"value3']) == "'test','test''value2','test\\\"value3'"
    assert x("${v:csv}", v=["test", "test2"]) == "test,test2"
    assert x("${v:csv}", v="test") == "test"
    assert x("${v:raw}", v=["12", "13"]) == "12,13"
    assert x("${v:pipe}", v=["test", "test2"]) == "test|test2"
    assert x("${v:regex}", v=["test.", "test2"]) == "(test\\.|test2)"
    assert x("${v:regex}", v=["test."]) == "test\\."
    assert x("${v:singlequote}", v=["test", "test'2"]) == "'test','test\\'2'"
    assert x("${v:doublequote}", v=["test", 'test"2']) == '"test","test\\"2"'
    assert x("${v:glob}", v=["AA", "BB", "C.*"]) == "{AA,BB,C.*}"
    assert x("${v:join: | }", v=["hello", "world"]) == "hello | world"
    assert x("${v:json}", v=["a", "b"]) == '["a","b"]'
    assert x("[[v:csv]]", v=["a", "b"]) == "a,b"


def test_from_to_builtins() -> None:
    t = datetime(2020, 7, 13, 20, 19, 9, 254_000, tzinfo=UTC)
    kw = {"time_from": t, "time_to": t + timedelta(hours=1)}
    assert x("${__from:date}", **kw) == "2020-07-13T20:19:09.254Z"
    assert x("${__from:date:iso}", **kw) == "2020-07-13T20:19:09.254Z"
    assert x("${__from:date:seconds}", **kw) == "1594671549"
    assert x("$__from", **kw) == "1594671549254"
    assert x("${__to}", **kw) == str(1594671549254 + 3_600_000)
    assert x("${__interval}") == "10m"


def test_variables_before_macros() -> None:
    sql = "SELECT $__timeGroupAlias(time, $__interval), avg(p) FROM t WHERE $__timeFilter(time) AND a IN ($a)"
    assert x(sql, timescaledb=True, a=["bitcoin"]) == (
        "SELECT time_bucket('600.000s',time) AS \"time\", avg(p) FROM t "
        "WHERE time BETWEEN '2018-04-12T18:00:00Z' AND '2018-04-12T18:05:00Z' AND a IN ('bitcoin')")


# ---- time ranges

def test_relative_times_and_auto_interval() -> None:
    now = datetime(2026, 3, 15, 13, 45, 30, tzinfo=UTC)
    assert parse_time("now-24h", now=now) == now - timedelta(hours=24)
    assert parse_time("now-1M", now=now) == datetime(2026, 2, 15, 13, 45, 30, tzinfo=UTC)
    assert parse_time("now/d", now=now) == datetime(2026, 3, 15, tzinfo=UTC)
    assert time_range("now-1d/d", "now-1d/d", now=now) == (
        datetime(2026, 3, 14, tzinfo=UTC), datetime(2026, 3, 14, 23, 59, 59, 999_000, tzinfo=UTC))
    assert parse_time("2026-01-01T00:00:00Z", now=now) == datetime(2026, 1, 1, tzinfo=UTC)
    # 24h over 1000 points = 86.4 s -> 1m; 7d -> 604.8 s -> 10m; 365d -> 31536 s -> 6h; 1h -> 3.6 s -> 1m floor
    assert auto_interval(now - timedelta(hours=24), now) == timedelta(minutes=1)
    assert auto_interval(now - timedelta(days=7), now) == timedelta(minutes=10)
    assert auto_interval(now - timedelta(days=365), now) == timedelta(hours=6)
    assert auto_interval(now - timedelta(hours=1), now) == timedelta(minutes=1)
    assert auto_interval(now - timedelta(hours=1), now, min_interval=None) == timedelta(seconds=5)


def test_panel_targets_walks_rows() -> None:
    dash = {
        "uid": "d",
        "panels": [
            {"id": 1, "type": "stat", "datasource": {"uid": "coinpulse-tsdb"},
             "targets": [{"refId": "A", "rawSql": "SELECT 1", "format": "table"}]},
            {"id": 2, "type": "row", "panels": [
                {"id": 3, "type": "timeseries", "datasource": {"uid": "coinpulse-prom"},
                 "targets": [{"refId": "A", "expr": "up"}]}]},
        ],
        "templating": {"list": [{"type": "query", "name": "asset", "datasource": {"uid": "coinpulse-tsdb"},
                                 "query": "SELECT asset_id FROM assets"}]},
    }
    targets = panel_targets(dash)
    assert [(t.panel_id, t.language, t.datasource_uid, t.text) for t in targets] == [
        (1, "sql", "coinpulse-tsdb", "SELECT 1"),
        (3, "promql", "coinpulse-prom", "up"),
        (None, "sql", "coinpulse-tsdb", "SELECT asset_id FROM assets"),
    ]


def test_panel_interval_follows_the_panels_query_options() -> None:
    now = datetime(2026, 3, 15, 13, 45, 30, tzinfo=UTC)
    dash = {"uid": "d", "panels": [
        {"id": 1, "type": "timeseries", "datasource": {"uid": "coinpulse-tsdb"},
         "targets": [{"refId": "A", "rawSql": "SELECT 1"}]},
        {"id": 2, "type": "timeseries", "datasource": {"uid": "coinpulse-tsdb"}, "maxDataPoints": 400,
         "interval": "1h", "targets": [{"refId": "A", "rawSql": "SELECT 2"}]},
    ]}
    plain, capped = panel_targets(dash)
    assert (plain.max_data_points, plain.min_interval) == (None, None)
    assert (capped.max_data_points, capped.min_interval) == (400, "1h")
    month = now - timedelta(days=30)
    # without options: the panel's width (1000 px here) and the datasource's 1m: 43.2 min -> 30m
    assert panel_interval(plain, month, now) == timedelta(minutes=30)
    assert panel_interval(plain, month, now, width=2000) == timedelta(minutes=20)
    # 400 points: 30 days -> 1.8 h -> 2h; 10 days -> 36 min -> 30m, raised to the panel's 1h minimum
    assert panel_interval(capped, month, now) == timedelta(hours=2)
    assert panel_interval(capped, now - timedelta(days=10), now) == timedelta(hours=1)
    assert panel_interval(capped, now - timedelta(days=365), now) == timedelta(hours=12)  # 21.9 h
