"""The portfolio dashboard (grafana/dashboards/portfolio.json): valid JSON model, one datasource, the
``portfolio`` variable, and every query expanded as Grafana would (tests/grafana_sql.py) and run as
``coinpulse_reader`` against known data, with asserted results."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from decimal import Decimal as D
from pathlib import Path
from typing import Any

import psycopg
import pytest

from collector.portfolio import Transaction, create_portfolio, record
from grafana_sql import expand, panel_interval, panel_targets
from test_portfolio_db import add_assets, add_ticks, at, expected_values

Conn = psycopg.Connection[tuple[Any, ...]]
ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "grafana" / "dashboards" / "portfolio.json"
SCHEMA = ROOT / "tests" / "fixtures" / "grafana-schema" / "dashboard.jsonschema.json"  # Grafana's, vendored


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return data


def test_dashboard_is_a_valid_grafana_model() -> None:
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema (test extra) is not installed")
    if not SCHEMA.exists():
        pytest.skip(f"the Grafana dashboard schema is missing ({SCHEMA})")
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    errors = [e.message for e in jsonschema.Draft7Validator(schema).iter_errors(dashboard())]
    assert errors == []


def test_dashboard_uses_only_the_tsdb_datasource_and_has_a_portfolio_variable() -> None:
    dash = dashboard()
    assert dash["uid"] == "coinpulse-portfolio"
    uids = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("datasource"), dict):
                uids.add(node["datasource"].get("uid"))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(dash)
    assert uids == {"coinpulse-tsdb"}
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["portfolio"]["type"] == "query" and not variables["portfolio"]["multi"]
    assert {p["type"] for p in dash["panels"]} >= {"timeseries", "piechart", "table", "stat"}
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))


TICKS = [(at("2026-09-30T00:00:00Z"), "bitcoin", 29000.0), (at("2026-09-30T00:00:00Z"), "ethereum", 1900.0),
         (at("2026-10-20T23:59:30Z"), "bitcoin", 41000.0),
         (at("2026-11-01T00:00:00Z"), "bitcoin", 42000.0), (at("2026-11-01T00:00:00Z"), "ethereum", 2600.0)]
MAIN = [  # the scripted sequence with its backdated buy (tests/test_portfolio_db.py): values by hand there
    Transaction(at("2026-10-01T10:00:00Z"), "bitcoin", D("2"), D("30000"), D("10")),
    Transaction(at("2026-10-02T10:00:00Z"), "ethereum", D("10"), D("2000"), D("4")),
    Transaction(at("2026-10-05T12:00:00Z"), "bitcoin", D("1"), D("33000"), D("5")),
    Transaction(at("2026-10-10T09:00:00Z"), "bitcoin", D("-1.5"), D("35000"), D("15")),
    Transaction(at("2026-10-15T10:00:00Z"), "ethereum", D("-10"), D("2500"), D("6")),
    Transaction(at("2026-10-20T10:00:00Z"), "bitcoin", D("-1"), D("40000"), D("20")),
    Transaction(at("2026-10-03T08:00:00Z"), "bitcoin", D("1"), D("28000"), D("5")),
]


@pytest.mark.full_edition
@pytest.mark.parametrize(("days", "width"),
                         [(38, timedelta(days=1)), (28, timedelta(hours=2)), (10, timedelta(hours=1))],
                         ids=["daily", "two-hourly", "hourly"])
def test_every_dashboard_query_runs_with_the_expected_results(db: Conn, days: int, width: timedelta) -> None:
    add_assets(db, "bitcoin", "ethereum")
    add_ticks(db, TICKS)
    main = create_portfolio(db, "main")
    record(db, main, MAIN)
    other = create_portfolio(db, "other's")  # a quote in the name: the variable must keep it intact
    record(db, other, [Transaction(at("2026-10-01T00:00:00Z"), "ethereum", D("3"), D("1900"))])
    time_to = at("2026-11-02T00:00:00Z")
    time_from = time_to - timedelta(days=days)
    results: dict[str, list[tuple[Any, ...]]] = {}
    db.execute("SET ROLE coinpulse_reader")
    try:
        for target in panel_targets(dashboard()):
            assert target.language == "sql" and target.datasource_uid == "coinpulse-tsdb"
            interval = panel_interval(target, time_from, time_to)
            sql = expand(target.text, time_from=time_from, time_to=time_to, interval=interval,
                         variables={"portfolio": "main"})
            results[target.panel_title] = db.execute(sql).fetchall()
        table_target = next(t for t in panel_targets(dashboard()) if t.panel_title == "Holdings and P&L")
        other_sql = expand(table_target.text, time_from=time_from, time_to=time_to,
                           interval=panel_interval(table_target, time_from, time_to),
                           variables={"portfolio": "other's"})
        other_rows = db.execute(other_sql).fetchall()
    finally:
        db.execute("RESET ROLE")
    assert results["variable portfolio"] == [("main",), ("other's",)]
    # by hand (test_portfolio_db): BTC 1.5 held, cost 45382.5, realized 16827.5, fees 55; ETH sold out,
    # realized 4990, fees 10; prices 42000 / 2600
    assert results["Market value and P&L (portfolio currency)"] == [
        (D("63000"), D("45382.5"), D("17617.5"), D("21817.5"), D("65"))]
    assert results["Allocation by asset"] == [("BTC", D("63000"))]
    table = results["Holdings and P&L"]
    assert [r[:9] for r in table] == [
        ("bitcoin", "BTC", D("1.5"), D("30255"), D("42000"), D("63000"), D("45382.5"), D("17617.5"), D("16827.5")),
        ("ethereum", "ETH", D("0"), None, D("2600"), D("0"), D("0"), D("0"), D("4990")),
    ]
    assert [r[2] for r in other_rows] == [D("3")]
    # value over time: one point per bucket (daily beyond 31 days; up to 31 days Grafana's interval for at most
    # 400 points, an hour at least), each equal to the value computed independently from the raw ticks; the
    # stacked per-asset series adds up to it
    expected = expected_values(TICKS, MAIN, time_from, time_to, width)
    assert results["Value over time"] == list(expected.items())
    by_asset: dict[datetime, D] = {}
    for moment, _asset, value in results["Value by asset"]:
        by_asset[moment] = by_asset.get(moment, D(0)) + value
    assert by_asset == expected
    assert {asset for _, asset, _ in results["Value by asset"]} == {"bitcoin", "ethereum"}
    assert any(value for value in expected.values())
