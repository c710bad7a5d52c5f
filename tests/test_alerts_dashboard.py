"""The alerts dashboard (grafana/dashboards/alerts-thresholds.json), every SQL query run as Grafana would run it.

Known data (tests/test_alert_thresholds.py's ``load_known_data``: ticks, snapshots and a portfolio placed relative to
the database's ``now()``, plus an asset whose id holds a quote and an empty portfolio whose name does) and thresholds
of every kind in every state a kind can be in: breached, ok, no data (its current value cannot be known) and
disabled. Everything happens in one transaction that is rolled back, so ``now()`` is one instant and the expected
numbers are exact. Each query is expanded by tests/grafana_sql.py with the variables as Grafana passes them
(all options for "All", as the variable queries return them) and run as ``coinpulse_reader``; rows are compared with
values written down here from the data, not read back from the view.

The PromQL panels are evaluated by Prometheus's own engine (``promtool test rules``) on synthetic series.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from alerting_support import schedule_jobs
from grafana_sql import Target, expand, panel_interval, panel_targets, time_range
from test_alert_thresholds import CASES, load_known_data

Conn = psycopg.Connection[Any]
Row = tuple[Any, ...]
ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "grafana" / "dashboards" / "alerts-thresholds.json"


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return data


def target(title: str, ref: str = "A") -> Target:
    found = [t for t in panel_targets(dashboard()) if t.panel_title == title and t.ref_id == ref]
    assert len(found) == 1, f"no single target {title!r}/{ref}"
    return found[0]


# ------------------------------------------------------------------------------------------------ the thresholds


@dataclass(frozen=True)
class Case:
    """A threshold and what the dashboard must show for it, by hand from the known data."""

    name: str
    kind: str
    subject: str  # asset id, or portfolio name for portfolio kinds
    value: float | None
    window: str | None  # as inserted (a PostgreSQL interval)
    state: str  # breached | ok | no data | disabled
    current: float | None  # the current value the table shows (disabled ones too)
    as_of: timedelta | None  # how long before now() the current value is from (None: no time)
    severity: str = "warning"
    owner: str | None = None


# Known data (load_known_data, and extra() below), relative to now():
#   bitcoin 64000 at now-90m, 59000 at now-30s; 24h volume 3e10 at now-5m (no snapshot a day earlier)
#   ethereum 3000 at now-90m, 3300 at now-1m; 24h volume 1e9 at now-25h, 2.5e9 at now-5m
#   solana 100 at now-90m, 101 at now-20m; no snapshot
#   dogecoin 0.1 at now-2m only; cardano no tick, first seen at now-1h; o'coin 2 at now-10m
#   portfolio main: 1 bitcoin; portfolio "empty's": no transaction
S, M = timedelta(seconds=1), timedelta(minutes=1)
AS_OF = {"bitcoin": 30 * S, "ethereum": 1 * M, "solana": 20 * M, "dogecoin": 2 * M, "cardano": None,
         "o'coin": 10 * M}
VOLUME_AS_OF = {"bitcoin": 5 * M, "ethereum": 5 * M, "solana": None}


def _from_shared() -> list[Case]:
    """test_alert_thresholds.CASES (breached and ok for every kind), with the state and time each one shows."""
    out = []
    for t in CASES:
        if not t.enabled:
            continue  # its own disabled case is below, with the current value the table shows for it
        state = "breached" if t.fires else ("no data" if t.current is None else "ok")
        if t.kind.startswith("portfolio_"):
            as_of: timedelta | None = AS_OF["bitcoin"]  # main holds bitcoin only
        elif t.kind.startswith("volume_"):
            as_of = VOLUME_AS_OF[t.subject]
        elif t.kind == "stale" and t.subject == "cardano":
            as_of = 60 * M  # never ticked: counted from first_seen
        else:
            as_of = AS_OF[t.subject]
        out.append(Case(t.name, t.kind, t.subject, t.value, t.window, state, t.current, as_of))
    return out


EXTRA = [
    # no data: the current value cannot be known (stale never is: an asset without ticks counts from first_seen)
    Case("cardano above 1 (no price)", "price_above", "cardano", 1, None, "no data", None, None, "critical", "bob"),
    Case("cardano below 1 (no price)", "price_below", "cardano", 1, None, "no data", None, None),
    Case("cardano 1h change above 1 (no price)", "change_above", "cardano", 1, "1 hour", "no data", None, None),
    Case("sol volume above 1 (no snapshot)", "volume_above", "solana", 1, None, "no data", None, None),
    Case("btc volume change above 1 (no snapshot a day ago)", "volume_change_above", "bitcoin", 1, "24 hours",
         "no data", None, 5 * M),
    Case("empty's value below 1", "portfolio_value_below", "empty's", 1, None, "no data", None, 0 * S),
    Case("empty's 1h change below -1", "portfolio_change_below", "empty's", -1, "1 hour", "no data", None, None),
    # a quote in the asset id: the variables must keep it intact
    Case("o'coin above 1", "price_above", "o'coin", 1, None, "breached", 2, 10 * M, "info", "o'neil"),
    # disabled, one of every kind: not evaluated by the rule; the table shows the value for reference
    Case("off: btc below a billion", "price_below", "bitcoin", 1e9, None, "disabled", 59000, 30 * S),
    Case("off: eth above 1", "price_above", "ethereum", 1, None, "disabled", 3300, 1 * M, "critical", "alice"),
    Case("off: btc 1h change below -1", "change_below", "bitcoin", -1, "1 hour", "disabled", -7.8125, 30 * S),
    Case("off: eth 1h change above 1", "change_above", "ethereum", 1, "1 hour", "disabled", 10.0, 1 * M),
    Case("off: btc volume above 1", "volume_above", "bitcoin", 1, None, "disabled", 3e10, 5 * M),
    Case("off: eth volume change above 1", "volume_change_above", "ethereum", 1, "24 hours", "disabled", 150.0, 5 * M),
    Case("off: sol stale 10m", "stale", "solana", None, "10 minutes", "disabled", 1200.0, 20 * M),
    Case("off: main value below 1", "portfolio_value_below", "main", 1, None, "disabled", 59000, 30 * S),
    Case("off: main 1h change below -1", "portfolio_change_below", "main", -1, "1 hour", "disabled", -7.8125, 30 * S),
]
ALL = _from_shared() + EXTRA

UNIT = {"price_above": "USD", "price_below": "USD", "volume_above": "USD", "stale": "s",
        "portfolio_value_below": "USD",  # the portfolio's currency: main and empty's are USD portfolios
        "change_above": "%", "change_below": "%", "volume_change_above": "%", "portfolio_change_below": "%"}
WINDOW = {None: ("", None), "1 hour": ("1h", 3600.0), "24 hours": ("1d", 86400.0), "5 minutes": ("5m", 300.0),
          "10 minutes": ("10m", 600.0), "30 minutes": ("30m", 1800.0)}
STATE_ORDER = {"breached": 0, "no data": 1, "ok": 2, "disabled": 3}


def test_the_cases_cover_every_kind_in_every_state_it_can_be_in() -> None:
    from collector.thresholds import KINDS

    states = {(c.kind, c.state) for c in ALL}
    for kind in KINDS:
        expected = {"breached", "ok", "disabled"} | ({"no data"} if kind != "stale" else set())
        assert {s for k, s in states if k == kind} == expected, kind


def extra(conn: Conn, now: datetime) -> None:
    conn.execute("INSERT INTO coinpulse.assets (asset_id, symbol, first_seen) VALUES ('o''coin', 'OC', %s)",
                 (now - timedelta(hours=1),))
    conn.execute("INSERT INTO coinpulse.price_ticks VALUES (%s, 'o''coin', 2, 'demo')", (now - timedelta(minutes=10),))
    conn.execute("INSERT INTO coinpulse.portfolios (name) VALUES ('empty''s')")


def insert(conn: Conn, c: Case) -> int:
    portfolio = c.kind.startswith("portfolio_")
    row = conn.execute(
        "INSERT INTO coinpulse.alert_thresholds (kind, asset_id, portfolio_id, value, time_window, enabled, severity, "
        "owner, note) VALUES (%s, %s, (SELECT portfolio_id FROM coinpulse.portfolios WHERE name = %s), %s, "
        "%s::interval, %s, %s, %s, %s) RETURNING id",
        (c.kind, None if portfolio else c.subject, c.subject if portfolio else None, c.value, c.window,
         c.state != "disabled", c.severity, c.owner, c.name)).fetchone()
    assert row is not None
    return int(row[0])


@dataclass
class World:
    conn: Conn
    now: datetime
    ids: dict[str, int]

    def run(self, title: str, variables: dict[str, list[str]], ref: str = "A", raw_from: str = "now-24h"
            ) -> tuple[list[str], list[str], list[Row]]:
        """Expand a query as Grafana does (the dashboard's time range ending now) and run it as coinpulse_reader."""
        t_from, t_to = time_range(raw_from, "now", now=self.now)
        query = target(title, ref)
        sql = expand(query.text, time_from=t_from, time_to=t_to, interval=panel_interval(query, t_from, t_to),
                     variables=variables, now=self.now)
        with self.conn.transaction(force_rollback=True):  # a savepoint: the role goes back with it
            self.conn.execute("SET LOCAL ROLE coinpulse_reader")
            cur = self.conn.execute(sql)
            assert cur.description is not None
            types = [self.conn.adapters.types.get(c.type_code).name  # type: ignore[union-attr]
                     for c in cur.description]
            return [c.name for c in cur.description], types, cur.fetchall()

    def options(self, name: str) -> list[tuple[str, str]]:
        columns, types, rows = self.run(f"variable {name}", {}, ref=name)
        assert columns == ["__value", "__text"] and types == ["text", "text"]
        return [(r[0], r[1]) for r in rows]

    def everything(self) -> dict[str, list[str]]:
        """What Grafana passes for "All" in both variables: every option the variable queries returned."""
        return {name: [value for value, _ in self.options(name)] for name in ("kind", "subject")}


def begin(db: Conn, cases: list[Case]) -> Iterator[World]:
    with db.transaction(force_rollback=True):
        now = load_known_data(db)
        extra(db, now)
        yield World(db, now, {c.name: insert(db, c) for c in cases})


@pytest.fixture
def world(db: Conn) -> Iterator[World]:
    yield from begin(db, ALL)


@pytest.fixture
def empty(db: Conn) -> Iterator[World]:
    yield from begin(db, [])


CHECKED: set[tuple[str, str]] = set()


def checks(title: str, ref: str = "A") -> Callable[[Callable[..., None]], Callable[..., None]]:
    CHECKED.add((title, ref))
    return lambda fn: fn


def subject_key(c: Case) -> str:
    return ("portfolio:" if c.kind.startswith("portfolio_") else "asset:") + c.subject


# ------------------------------------------------------------------------------------------------ variables

CHECKED |= {("variable kind", "kind"), ("variable subject", "subject")}


@pytest.mark.full_edition
def test_variables_list_the_kinds_and_subjects_that_have_thresholds(world: World) -> None:
    from collector.thresholds import KINDS

    assert world.options("kind") == [(k, k) for k in sorted(KINDS)]
    assert world.options("subject") == [
        ("asset:bitcoin", "bitcoin"), ("asset:cardano", "cardano"), ("asset:dogecoin", "dogecoin"),
        ("asset:ethereum", "ethereum"), ("asset:o'coin", "o'coin"), ("asset:solana", "solana"),
        ("portfolio:empty's", "empty's (portfolio)"), ("portfolio:main", "main (portfolio)")]
    assert {subject_key(c) for c in ALL} == {v for v, _ in world.options("subject")}


# ------------------------------------------------------------------------------------------------ the table

TABLE_COLUMNS = ["id", "state", "kind", "asset", "portfolio", "window", "threshold", "current value", "unit",
                 "severity", "owner", "note", "as of"]
TABLE_TYPES = ["int8", "text", "text", "text", "text", "text", "float8", "float8", "text", "text", "text", "text",
               "timestamptz"]


def expected_rows(world: World, cases: list[Case]) -> list[Row]:
    rows = []
    for c in sorted(cases, key=lambda c: (STATE_ORDER[c.state], world.ids[c.name])):
        portfolio = c.kind.startswith("portfolio_")
        window, seconds = WINDOW[c.window]
        rows.append((world.ids[c.name], c.state, c.kind, "" if portfolio else c.subject, c.subject if portfolio else "",
                     window, c.value if c.value is not None else seconds, c.current, UNIT[c.kind], c.severity,
                     c.owner or "", c.name, None if c.as_of is None else world.now - c.as_of))
    return rows


def assert_table(got: list[Row], expected: list[Row]) -> None:
    assert [r[:2] for r in got] == [e[:2] for e in expected]  # ids and states, in order
    for g, e in zip(got, expected, strict=True):
        assert g[2:7] == e[2:7] and g[8:] == e[8:], (g, e)
        assert g[7] == (None if e[7] is None else pytest.approx(e[7], rel=1e-12)), (g, e)


@checks("Thresholds")
@pytest.mark.full_edition
def test_table_shows_every_threshold_with_its_current_value_and_state(world: World) -> None:
    columns, types, rows = world.run("Thresholds", world.everything())
    assert columns == TABLE_COLUMNS and types == TABLE_TYPES
    assert_table(rows, expected_rows(world, ALL))
    assert {r[1] for r in rows} == {"breached", "ok", "no data", "disabled"}


@checks("Thresholds")
@pytest.mark.full_edition
@pytest.mark.parametrize(("kinds", "subjects"), [
    (["stale", "price_above"], ["asset:o'coin", "asset:cardano", "asset:solana", "asset:ethereum"]),
    (["portfolio_value_below", "portfolio_change_below", "price_below"], ["portfolio:empty's", "asset:bitcoin"]),
    (["change_below"], ["asset:dogecoin"]),
], ids=["asset-kinds", "portfolio-and-asset", "one"])
def test_table_keeps_to_the_chosen_kinds_and_subjects(world: World, kinds: list[str], subjects: list[str]) -> None:
    _, _, rows = world.run("Thresholds", {"kind": kinds, "subject": subjects})
    chosen = [c for c in ALL if c.kind in kinds and subject_key(c) in subjects]
    assert chosen, "the selection must match something"
    assert_table(rows, expected_rows(world, chosen))


@checks("Thresholds")
@pytest.mark.full_edition
def test_a_disabled_threshold_turns_disabled_and_back(world: World) -> None:
    btc = world.ids["btc below 60k"]
    world.conn.execute("UPDATE coinpulse.alert_thresholds SET enabled = false WHERE id = %s", (btc,))
    _, _, rows = world.run("Thresholds", world.everything())
    (row,) = [r for r in rows if r[0] == btc]
    assert row[1] == "disabled" and row[7] == pytest.approx(59000)
    assert rows.index(row) > max(i for i, r in enumerate(rows) if r[1] != "disabled")  # sorted among disabled
    world.conn.execute("UPDATE coinpulse.alert_thresholds SET enabled = true WHERE id = %s", (btc,))
    _, _, rows = world.run("Thresholds", world.everything())
    assert [r[1] for r in rows if r[0] == btc] == ["breached"]


# ------------------------------------------------------------------------------------------------ the counts

# panel -> its columns, each with the cases it counts
COUNTS: dict[str, list[tuple[str, Callable[[Case], bool]]]] = {
    "Breached now": [("breached now", lambda c: c.state == "breached"), ("no data", lambda c: c.state == "no data")],
    "Enabled": [("enabled", lambda c: c.state != "disabled")],
    "Disabled": [("disabled", lambda c: c.state == "disabled")],
}
for _title in COUNTS:
    CHECKED.add((_title, "A"))


@pytest.mark.full_edition
@pytest.mark.parametrize("title", list(COUNTS))
@pytest.mark.parametrize("selection", ["all", "some"])
def test_counts(world: World, title: str, selection: str) -> None:
    if selection == "all":
        variables, chosen = world.everything(), ALL
    else:
        kinds, subjects = ["price_above", "price_below", "stale"], ["asset:cardano", "asset:bitcoin", "asset:o'coin"]
        variables = {"kind": kinds, "subject": subjects}
        chosen = [c for c in ALL if c.kind in kinds and subject_key(c) in subjects]
    columns, types, rows = world.run(title, variables)
    assert columns == [column for column, _ in COUNTS[title]] and types == ["int8"] * len(columns)
    assert rows == [tuple(sum(1 for c in chosen if counted(c)) for _, counted in COUNTS[title])]
    assert all(rows[0])  # every count is something here: a count stuck at 0 would pass unnoticed


@pytest.mark.full_edition
def test_no_threshold_at_all_is_zero_everywhere(empty: World) -> None:
    """A fresh stack: the variables have no option, so "All" expands to nothing (ARRAY[]::text[], not IN ())."""
    assert empty.options("kind") == [] and empty.options("subject") == []
    nothing: dict[str, list[str]] = {"kind": [], "subject": []}
    assert empty.run("Thresholds", nothing)[2] == []
    for title, columns in COUNTS.items():
        assert empty.run(title, nothing)[2] == [(0,) * len(columns)]


# ------------------------------------------------------------------------------------------------ pipeline signals

PIPELINE = "Pipeline signals the rules watch (database)"
CHECKED.add((PIPELINE, "A"))


@pytest.mark.full_edition
def test_pipeline_signals(world: World) -> None:
    now = world.now
    columns, types, rows = world.run(PIPELINE, {})
    assert columns == ["newest tick age", "gaps not backfilled", "oldest gap age", "policy jobs failing"]
    assert types == ["float8", "int8", "float8", "int8"]
    assert rows == [(30.0, 0, 0.0, 0)]  # bitcoin ticked 30 s ago; no gap; every job paused
    world.conn.cursor().executemany(
        "INSERT INTO coinpulse.ingest_gaps (asset_id, gap_start, gap_end, reason, status, detected_at) "
        "VALUES (%s, %s, %s, 'watchdog', %s, %s)",
        [("bitcoin", now - timedelta(hours=2), now - timedelta(hours=1), "done", now - timedelta(minutes=90)),
         ("solana", now - timedelta(hours=1), now - timedelta(minutes=50), "failed", now - timedelta(minutes=45)),
         (None, now - timedelta(minutes=20), now - timedelta(minutes=15), "open", now - timedelta(minutes=12))])
    schedule_jobs(world.conn, now)
    assert world.run(PIPELINE, {})[2] == [(30.0, 2, 45.0, 2)]  # done gaps and the fine job left out


@pytest.mark.full_edition
def test_pipeline_signals_without_a_tick_for_a_day(empty: World) -> None:
    empty.conn.execute("DELETE FROM coinpulse.price_ticks")
    empty.conn.execute("INSERT INTO coinpulse.price_ticks VALUES (%s, 'bitcoin', 1, 'demo')",
                       (empty.now - timedelta(days=2),))
    assert empty.run(PIPELINE, {})[2] == [(86400.0, 0, 0.0, 0)]  # the whole day the rule looks at


def test_every_sql_query_of_the_dashboard_is_checked_here() -> None:
    found = {(t.panel_title, t.ref_id) for t in panel_targets(dashboard()) if t.language == "sql"}
    assert found == CHECKED, {"unchecked": sorted(found - CHECKED), "stale": sorted(CHECKED - found)}


# ------------------------------------------------------------------------------------------------ the dashboard


def test_dashboard_shape() -> None:
    dash = dashboard()
    assert dash["uid"] == "coinpulse-alerts"
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    for name in ("kind", "subject"):  # multi-value with "All", never a custom all value (it is inserted raw)
        assert variables[name]["multi"] and variables[name]["includeAll"] and not variables[name].get("allValue")
        assert variables[name]["refresh"] == 2  # refreshed with the time range: new thresholds join "All"
    links = {link["title"]: link for link in dash["links"]}
    assert links["Alert rules"]["type"] == "link" and links["Alert rules"]["url"] == "/alerting/list"
    (table,) = [p for p in dash["panels"] if p["title"] == "Thresholds"]
    (state,) = [o for o in table["fieldConfig"]["overrides"] if o["matcher"]["options"] == "state"]
    props = {p["id"]: p["value"] for p in state["properties"]}
    (mapping,) = props["mappings"]
    assert set(mapping["options"]) == set(STATE_ORDER)  # every state the query returns has a text and a colour
    assert mapping["options"]["breached"]["color"] == "red" and mapping["options"]["ok"]["color"] == "green"
    assert props["custom.cellOptions"]["type"] == "color-background"


# ------------------------------------------------------------------------------------------------ PromQL


def promql(title: str, ref: str = "A") -> str:
    """A panel's PromQL as Grafana sends it with the panel's minimum interval (1m) as $__interval."""
    return target(title, ref).text.replace("$__interval", "1m")


def test_promql_panels_compute_the_expected_values(promtool: str, tmp_path: Path) -> None:
    """Synthetic series sampled every minute; each panel expression evaluated at minute 10 by Prometheus."""
    notifications = "Alert notifications received by the collector"
    signals = "Pipeline signals the rules watch (Prometheus)"
    series = [
        # two collectors; firing: +2 on a and +1 on b in the last minute; resolved: flat; invalid: +1
        {"series": 'coinpulse_alert_notifications_total{instance="a",status="firing"}', "values": "0+0x8 3 5"},
        {"series": 'coinpulse_alert_notifications_total{instance="b",status="firing"}', "values": "0+0x8 1 2"},
        {"series": 'coinpulse_alert_notifications_total{instance="a",status="resolved"}', "values": "4+0x10"},
        {"series": 'coinpulse_alert_notifications_total{instance="a",status="invalid"}', "values": "0+0x9 1"},
        {"series": 'coinpulse_database_up{instance="a"}', "values": "1+0x10"},
        {"series": 'coinpulse_database_up{instance="b"}', "values": "1+0x8 0 0"},
        # 60 observations a minute, all in (1, 5] s: p95 interpolates to 1 + 4 * 0.95 = 4.8 s
        *[{"series": f'coinpulse_tick_to_commit_seconds_bucket{{instance="a",le="{le}"}}',
           "values": "0+0x10" if le == "1" else "0+60x10"} for le in ("1", "5", "10", "+Inf")],
        # the spool of b grows by 600 bytes a minute (10 B/s); a's stays empty
        {"series": 'coinpulse_spool_bytes{instance="a"}', "values": "0+0x10"},
        {"series": 'coinpulse_spool_bytes{instance="b"}', "values": "1000+600x10"},
    ]
    cases: list[tuple[str, list[tuple[dict[str, str], float]]]] = [
        (promql(notifications), [({"status": "firing"}, 3), ({"status": "resolved"}, 0), ({"status": "invalid"}, 1)]),
        (promql(signals, "A"), [({}, 0)]),
        (promql(signals, "B"), [({}, 4.8)]),
        (promql(signals, "C"), [({}, 10)]),
    ]
    tests = [{"interval": "1m", "input_series": series, "promql_expr_test": [
        {"expr": expr, "eval_time": "10m",
         "exp_samples": [{"labels": "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}", "value": value}
                         for labels, value in samples]}
        for expr, samples in cases]}]
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump({"tests": tests}), encoding="utf-8")
    done = subprocess.run([promtool, "test", "rules", "tests.yaml"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "[1m]" in cases[0][0]  # $__interval replaced: the expression evaluated is the panel's
