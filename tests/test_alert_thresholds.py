"""User alert thresholds on a real TimescaleDB: the table's checks, alert_threshold_status, and the provisioned
Grafana rule's SQL (as provisioned, after macro expansion, run as coinpulse_reader) firing for exactly the
thresholds the known data breaches -- every kind, including the portfolio ones."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg
import pytest

from alerting_support import evaluate, numbers

pytestmark = pytest.mark.full_edition

Conn = psycopg.Connection[Any]
UID = "coinpulse-user-thresholds"


@dataclass(frozen=True)
class T:
    name: str
    kind: str
    subject: str
    value: float | None
    window: str | None
    fires: bool
    current: float | None  # expected current_value (None: unknown)
    enabled: bool = True


# Known data (relative to the database's now()):
#   bitcoin  64000 at now-90m, 59000 at now-30s; 24h volume 3e10 (snapshot now-5m)
#   ethereum 3000 at now-90m, 3300 at now-1m;   24h volume 1e9 at now-25h, 2.5e9 at now-5m
#   solana   100 at now-90m, 101 at now-20m
#   dogecoin 0.1 at now-2m only (no price an hour ago)
#   cardano  no tick at all, first seen an hour ago
#   portfolio "main": 1 bitcoin bought at 50000 three hours ago
CASES = [
    T("btc below 60k", "price_below", "bitcoin", 60000, None, True, 59000),
    T("btc below 50k", "price_below", "bitcoin", 50000, None, False, 59000),
    T("eth above 3200", "price_above", "ethereum", 3200, None, True, 3300),
    T("eth above 4000", "price_above", "ethereum", 4000, None, False, 3300),
    T("btc 1h change below -5", "change_below", "bitcoin", -5, "1 hour", True, -7.8125),
    T("btc 1h change below -10", "change_below", "bitcoin", -10, "1 hour", False, -7.8125),
    T("eth 1h change above 5", "change_above", "ethereum", 5, "1 hour", True, 10.0),
    T("eth 1h change above 15", "change_above", "ethereum", 15, "1 hour", False, 10.0),
    T("sol 1h change above 0.5", "change_above", "solana", 0.5, "1 hour", True, 1.0),
    T("doge 1h change below -1 (no reference)", "change_below", "dogecoin", -1, "1 hour", False, None),
    T("btc volume above 2e10", "volume_above", "bitcoin", 2e10, None, True, 3e10),
    T("btc volume above 5e10", "volume_above", "bitcoin", 5e10, None, False, 3e10),
    T("eth volume change above 100", "volume_change_above", "ethereum", 100, "24 hours", True, 150.0),
    T("eth volume change above 200", "volume_change_above", "ethereum", 200, "24 hours", False, 150.0),
    T("sol stale 10m", "stale", "solana", None, "10 minutes", True, 1200.0),
    T("sol stale 30m", "stale", "solana", None, "30 minutes", False, 1200.0),
    T("cardano stale 5m (never ticked)", "stale", "cardano", None, "5 minutes", True, 3600.0),
    T("btc stale 5m", "stale", "bitcoin", None, "5 minutes", False, 30.0),
    T("main value below 60000", "portfolio_value_below", "main", 60000, None, True, 59000),
    T("main value below 10000", "portfolio_value_below", "main", 10000, None, False, 59000),
    T("main 1h change below -5", "portfolio_change_below", "main", -5, "1 hour", True, -7.8125),
    T("main 1h change below -10", "portfolio_change_below", "main", -10, "1 hour", False, -7.8125),
    T("disabled: btc below a billion", "price_below", "bitcoin", 1e9, None, False, None, enabled=False),
]


def load_known_data(conn: Conn) -> datetime:
    now = conn.execute("SELECT now()").fetchone()[0]  # type: ignore[index]
    conn.execute("INSERT INTO coinpulse.assets (asset_id, symbol, first_seen) VALUES ('bitcoin', 'BTC', %(t)s), "
                 "('ethereum', 'ETH', %(t)s), ('solana', 'SOL', %(t)s), ('dogecoin', 'DOGE', %(t)s), "
                 "('cardano', 'ADA', %(t)s)", {"t": now - timedelta(hours=1)})
    ticks = [("bitcoin", 90 * 60, 64000), ("bitcoin", 30, 59000), ("ethereum", 90 * 60, 3000), ("ethereum", 60, 3300),
             ("solana", 90 * 60, 100), ("solana", 20 * 60, 101), ("dogecoin", 120, 0.1)]
    with conn.cursor() as cur:
        cur.executemany("INSERT INTO coinpulse.price_ticks VALUES (%s, %s, %s, 'demo')",
                        [(now - timedelta(seconds=s), a, p) for a, s, p in ticks])
        cur.executemany("INSERT INTO coinpulse.asset_snapshots (time, asset_id, volume_usd_24hr, source) "
                        "VALUES (%s, %s, %s, 'rest')",
                        [(now - timedelta(minutes=5), "bitcoin", 3e10), (now - timedelta(hours=25), "ethereum", 1e9),
                         (now - timedelta(minutes=5), "ethereum", 2.5e9)])
    conn.execute("INSERT INTO coinpulse.portfolios (name) VALUES ('main')")
    conn.execute("INSERT INTO coinpulse.portfolio_transactions (portfolio_id, time, asset_id, quantity, price_usd) "
                 "SELECT portfolio_id, %s, 'bitcoin', 1, 50000 FROM coinpulse.portfolios WHERE name = 'main'",
                 (now - timedelta(hours=3),))
    return now


def insert(conn: Conn, t: T) -> int:
    portfolio = t.kind.startswith("portfolio_")
    row = conn.execute(
        "INSERT INTO coinpulse.alert_thresholds (kind, asset_id, portfolio_id, value, time_window, enabled, note) "
        "VALUES (%s, %s, (SELECT portfolio_id FROM coinpulse.portfolios WHERE name = %s), %s, %s::interval, %s, %s) "
        "RETURNING id",
        (t.kind, None if portfolio else t.subject, t.subject if portfolio else None, t.value, t.window, t.enabled,
         t.name)).fetchone()
    assert row is not None
    return int(row[0])


@pytest.fixture
def world(db: Conn) -> Iterator[tuple[Conn, dict[str, int]]]:
    load_known_data(db)
    with db.transaction():
        db.execute("SET LOCAL ROLE coinpulse_writer")  # what the CLI's role may do, psql users too
        ids = {t.name: insert(db, t) for t in CASES}
    yield db, ids


def test_every_kind_is_covered() -> None:
    from collector.thresholds import KINDS

    assert {t.kind for t in CASES} == set(KINDS)
    assert all(any(t.kind == k and t.fires for t in CASES) and any(t.kind == k and not t.fires for t in CASES)
               for k in KINDS)


def test_provisioned_rule_fires_for_exactly_the_breached_thresholds(world: tuple[Conn, dict[str, int]]) -> None:
    conn, ids = world
    firing = evaluate(conn, UID)
    fired_ids = {dict(labels)["threshold_id"] for labels in firing}
    assert fired_ids == {str(ids[t.name]) for t in CASES if t.fires}
    # One row (alert instance) per enabled threshold, with the values the annotations print.
    breached = numbers(conn, UID, "A")
    current = {dict(k)["threshold_id"]: v for k, v in numbers(conn, UID, "B").items()}
    threshold = {dict(k)["threshold_id"]: v for k, v in numbers(conn, UID, "C").items()}
    assert {dict(k)["threshold_id"] for k in breached} == {str(ids[t.name]) for t in CASES if t.enabled}
    assert set(current) == set(threshold) == {dict(k)["threshold_id"] for k in breached}
    for t in CASES:
        if not t.enabled:
            continue
        got = current[str(ids[t.name])]
        if t.current is None:
            assert got is None, t.name
        elif t.kind == "stale":  # seconds since the tick: the test's own statements take a moment
            assert got is not None and t.current <= got < t.current + 30, (t.name, got)
        else:
            assert got == pytest.approx(t.current, rel=1e-9), (t.name, got)
        window_seconds = {"1 hour": 3600, "24 hours": 86400, "5 minutes": 300, "10 minutes": 600,
                          "30 minutes": 1800}
        expected = t.value if t.value is not None else window_seconds[str(t.window)]
        assert threshold[str(ids[t.name])] == pytest.approx(expected), t.name


def test_labels_are_text_stable_and_name_the_threshold(world: tuple[Conn, dict[str, int]]) -> None:
    conn, ids = world
    first = numbers(conn, UID, "A")
    again = numbers(conn, UID, "A")
    assert set(first) == set(again)  # same label sets on every evaluation: stable alert instances
    by_id = {dict(k)["threshold_id"]: dict(k) for k in first}
    labels = by_id[str(ids["eth 1h change above 5"])]
    assert labels == {"threshold_id": str(ids["eth 1h change above 5"]), "kind": "change_above",
                      "subject": "ethereum", "time_window": "1h", "unit": "%", "severity": "warning", "owner": ""}
    assert by_id[str(ids["main value below 60000"])]["unit"] == "USD"
    assert by_id[str(ids["main value below 60000"])]["subject"] == "main"
    assert by_id[str(ids["sol stale 10m"])]["time_window"] == "10m"


def test_disable_and_enable(world: tuple[Conn, dict[str, int]]) -> None:
    from collector.thresholds import set_enabled

    conn, ids = world
    btc = ids["btc below 60k"]
    rows, changed = set_enabled(conn, [btc], False)
    assert changed == [btc] and not rows[0].enabled
    assert str(btc) not in {dict(k)["threshold_id"] for k in evaluate(conn, UID)}
    assert str(btc) not in {dict(k)["threshold_id"] for k in numbers(conn, UID, "A")}  # no instance at all
    _, changed = set_enabled(conn, [btc], False)
    assert changed == []  # already disabled
    set_enabled(conn, [btc], True)
    assert str(btc) in {dict(k)["threshold_id"] for k in evaluate(conn, UID)}


def test_no_enabled_threshold_is_no_data(db: Conn) -> None:
    """No rows at all: Grafana's NoData, which the rule maps to OK (nothing to watch)."""
    from alerting_support import rule

    assert numbers(db, UID, "A") == {}
    assert rule(UID)["noDataState"] == "OK"


# -- what the table refuses ----------------------------------------------------------------------------------

REFUSED = [
    ("INSERT INTO coinpulse.alert_thresholds (kind, asset_id, value) VALUES ('price_below', 'dogecoinz', 1)",
     "alert threshold: unknown asset 'dogecoinz': CoinPulse has not seen it", "ForeignKeyViolation"),
    ("INSERT INTO coinpulse.alert_thresholds (kind, asset_id, value, time_window) "
     "VALUES ('change_below', 'bitcoin', -5, '-1 hour')",
     "alert threshold: the window must be positive and at least 1m, not -1h", "CheckViolation"),
    ("INSERT INTO coinpulse.alert_thresholds (kind, asset_id, time_window) VALUES ('stale', 'bitcoin', '-30 seconds')",
     "alert threshold: the window must be positive and at least 10s, not -30s", "CheckViolation"),
    ("INSERT INTO coinpulse.alert_thresholds (kind, asset_id, value) VALUES ('price_below', 'bitcoin', 'NaN')",
     "alert threshold: value must be a finite number, not NaN", "CheckViolation"),
    ("INSERT INTO coinpulse.alert_thresholds (kind, asset_id, value) VALUES ('price_above', 'bitcoin', 'Infinity')",
     "alert threshold: value must be a finite number, not Infinity", "CheckViolation"),
    ("INSERT INTO coinpulse.alert_thresholds (kind, asset_id, value) VALUES ('price_bellow', 'bitcoin', 1)",
     "alert threshold: unknown kind 'price_bellow'", "CheckViolation"),
    ("INSERT INTO coinpulse.alert_thresholds (kind, asset_id, value, time_window) "
     "VALUES ('price_below', 'bitcoin', 1, '1 hour')", "alert threshold: kind price_below takes no window",
     "CheckViolation"),
    ("INSERT INTO coinpulse.alert_thresholds (kind, asset_id, value) VALUES ('change_above', 'bitcoin', 5)",
     "alert threshold: kind change_above needs a window (time_window, e.g. 1 hour)", "NotNullViolation"),
    ("INSERT INTO coinpulse.alert_thresholds (kind, asset_id, value) VALUES ('price_below', 'bitcoin', -3)",
     "alert threshold: kind price_below needs a positive amount, not -3", "CheckViolation"),
    ("INSERT INTO coinpulse.alert_thresholds (kind, asset_id, value, time_window) "
     "VALUES ('stale', 'bitcoin', 5, '5 minutes')",
     "alert threshold: kind stale takes a window (no tick for how long), not a value", "CheckViolation"),
    ("INSERT INTO coinpulse.alert_thresholds (kind, asset_id, value) VALUES ('portfolio_value_below', 'bitcoin', 5)",
     "alert threshold: kind portfolio_value_below needs a portfolio (portfolio_id) and no asset", "CheckViolation"),
    ("INSERT INTO coinpulse.alert_thresholds (kind, asset_id, value, time_window) "
     "VALUES ('change_below', 'bitcoin', -100, '1 hour')",
     "alert threshold: a change of -100 % or less is impossible (values fall by 100 % at most)", "CheckViolation"),
    ("INSERT INTO coinpulse.alert_thresholds (kind, asset_id, value, severity) "
     "VALUES ('price_below', 'bitcoin', 1, 'page-me')",
     "alert threshold: severity must be info, warning or critical, not 'page-me'", "CheckViolation"),
]


@pytest.mark.parametrize(("statement", "message", "error"), REFUSED,
                         ids=[m.split(": ", 1)[1][:40] for _, m, _ in REFUSED])
def test_nonsense_is_refused_with_a_clear_message(db: Conn, statement: str, message: str, error: str) -> None:
    db.execute("INSERT INTO coinpulse.assets (asset_id, symbol) VALUES ('bitcoin', 'BTC')")
    with pytest.raises(psycopg.errors.IntegrityError) as err, db.transaction():
        db.execute("SET LOCAL ROLE coinpulse_writer")
        db.execute(statement)  # type: ignore[arg-type]
    assert type(err.value).__name__ == error
    assert err.value.diag.message_primary == message


def test_an_update_is_checked_too_and_stamps_updated_at(db: Conn) -> None:
    db.execute("INSERT INTO coinpulse.assets (asset_id, symbol) VALUES ('bitcoin', 'BTC')")
    row = db.execute("INSERT INTO coinpulse.alert_thresholds (kind, asset_id, value, created_at, updated_at) "
                     "VALUES ('price_below', 'bitcoin', 1, now() - interval '1 day', now() - interval '1 day') "
                     "RETURNING id").fetchone()
    assert row is not None
    with pytest.raises(psycopg.errors.CheckViolation, match="finite number"):
        db.execute("UPDATE coinpulse.alert_thresholds SET value = 'NaN' WHERE id = %s", (row[0],))
    db.execute("UPDATE coinpulse.alert_thresholds SET value = 2 WHERE id = %s", (row[0],))
    stamps = db.execute("SELECT created_at < updated_at, updated_at > now() - interval '1 minute' "
                        "FROM coinpulse.alert_thresholds WHERE id = %s", (row[0],)).fetchone()
    assert stamps == (True, True)


def test_the_check_constraints_back_up_the_trigger(db: Conn) -> None:
    """With the trigger out of the way (as a superuser could), the CHECK constraints still refuse the same."""
    db.execute("INSERT INTO coinpulse.assets (asset_id, symbol) VALUES ('bitcoin', 'BTC')")
    with db.transaction():
        db.execute("ALTER TABLE coinpulse.alert_thresholds DISABLE TRIGGER alert_thresholds_validate")
        for statement, constraint in [
            ("INSERT INTO coinpulse.alert_thresholds (kind, asset_id, value) VALUES ('price_below', 'bitcoin', 'NaN')",
             "alert_thresholds_value_finite"),
            ("INSERT INTO coinpulse.alert_thresholds (kind, asset_id, value, time_window) "
             "VALUES ('change_below', 'bitcoin', -5, '-1 hour')", "alert_thresholds_window_range"),
            ("INSERT INTO coinpulse.alert_thresholds (kind, asset_id, value) VALUES ('price_below', 'nope', 1)",
             "alert_thresholds_asset_id_fkey"),
            ("INSERT INTO coinpulse.alert_thresholds (kind, asset_id, value) VALUES ('x', 'bitcoin', 1)",
             "alert_thresholds_kind_known"),
        ]:
            with pytest.raises(psycopg.errors.IntegrityError) as err, db.transaction():
                db.execute(statement)  # type: ignore[arg-type]
            assert err.value.diag.constraint_name == constraint
        db.execute("ALTER TABLE coinpulse.alert_thresholds ENABLE TRIGGER alert_thresholds_validate")


def test_reader_may_read_but_not_change(world: tuple[Conn, dict[str, int]]) -> None:
    conn, _ = world
    with pytest.raises(psycopg.errors.InsufficientPrivilege), conn.transaction():
        conn.execute("SET LOCAL ROLE coinpulse_reader")
        conn.execute("DELETE FROM coinpulse.alert_thresholds")
    with conn.transaction():
        conn.execute("SET LOCAL ROLE coinpulse_reader")
        assert conn.execute("SELECT count(*) FROM coinpulse.alert_thresholds").fetchone() == (len(CASES),)
