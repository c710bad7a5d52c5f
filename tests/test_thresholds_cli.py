"""`coinpulse thresholds add|list|remove|enable|disable|sync` against a real TimescaleDB, through the CLI's own
entry point (collector.cli.main), and the YAML sync's plan: it touches only the rows its file owns."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from collector.cli import main
from collector.thresholds import ThresholdError, parse_file, parse_window, plan_sync

pytestmark = pytest.mark.full_edition

Conn = psycopg.Connection[Any]
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def cli(db: Conn, db_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Any:
    monkeypatch.setenv("COINPULSE_DATABASE_URL", db_url)
    db.execute("INSERT INTO coinpulse.assets (asset_id, symbol) VALUES ('bitcoin', 'BTC'), ('ethereum', 'ETH'), "
               "('solana', 'SOL')")
    db.execute("INSERT INTO coinpulse.price_ticks VALUES (now() - interval '10 seconds', 'bitcoin', 59000, 'demo')")

    def run(*argv: str) -> tuple[int, str, str]:
        code = main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    return run


def rows(db: Conn) -> list[tuple[Any, ...]]:
    return db.execute("SELECT kind, asset_id, value, time_window, enabled, severity, sync_source, sync_key "
                      "FROM coinpulse.alert_thresholds ORDER BY id").fetchall()


def test_add_list_disable_enable_remove(cli: Any, db: Conn) -> None:
    code, out, _ = cli("thresholds", "add", "price_below", "BTC", "60000", "--severity", "critical", "--owner", "alice")
    assert code == 0 and out == "added threshold 1: bitcoin price < 60000 USD [critical]\n"
    code, out, _ = cli("thresholds", "add", "change-above", "ethereum", "5", "--window", "1h")
    assert code == 0 and "ethereum price change over 1h > +5 %" in out
    code, out, _ = cli("thresholds", "add", "stale", "solana", "--window", "10m")
    assert code == 0 and "solana no tick for 10m" in out
    assert rows(db) == [("price_below", "bitcoin", 60000.0, None, True, "critical", None, None),
                        ("change_above", "ethereum", 5.0, timedelta(hours=1), True, "warning", None, None),
                        ("stale", "solana", None, timedelta(minutes=10), True, "warning", None, None)]
    code, out, _ = cli("thresholds", "list")
    lines = out.splitlines()
    assert lines[0].split() == ["id", "threshold", "severity", "owner", "current", "state", "managed"]
    assert "bitcoin price < 60000 USD" in lines[1] and "59000 USD" in lines[1] and "BREACHED" in lines[1]
    assert "alice" in lines[1] and "by hand" in lines[1]
    code, out, _ = cli("thresholds", "list", "--breached")
    assert [line.split()[0] for line in out.splitlines()[1:]] == ["1"]  # solana: no tick, but first seen just now
    code, out, _ = cli("thresholds", "disable", "1")
    assert code == 0 and out.startswith("disabled threshold 1: bitcoin price < 60000 USD")
    assert "disabled" in cli("thresholds", "list")[1].splitlines()[1]
    code, out, _ = cli("thresholds", "disable", "1")
    assert out.startswith("already disabled threshold 1")
    code, out, _ = cli("thresholds", "enable", "1", "2")
    assert out.splitlines() == ["enabled threshold 1: bitcoin price < 60000 USD",
                                "already enabled threshold 2: ethereum price change over 1h > +5 %"]
    code, out, _ = cli("thresholds", "remove", "2", "3")
    assert code == 0 and len(out.splitlines()) == 2
    assert [r[0] for r in rows(db)] == ["price_below"]


@pytest.mark.parametrize(("argv", "message"), [
    (["price_below", "dogecoin", "1"], "unknown asset 'dogecoin': CoinPulse has not seen it"),
    (["price_below", "bitcoin", "nan"], "value 'nan' is not a number"),
    (["change_above", "bitcoin", "5", "--window=-1h"], "window '-1h': give a duration like 90s"),
    (["change_above", "bitcoin", "5"], "kind change_above needs a window (e.g. 1h)"),
    (["price_bellow", "bitcoin", "5"], "unknown kind 'price_bellow'"),
    (["portfolio_value_below", "nope", "5"], "unknown portfolio 'nope'"),
    (["stale", "bitcoin", "5", "--window", "1m"], "kind stale takes a window (no tick for how long), not a value"),
])
def test_add_refuses_with_one_line(cli: Any, db: Conn, argv: list[str], message: str) -> None:
    code, out, err = cli("thresholds", "add", *argv)
    assert code == 1 and out == ""
    assert err.startswith("coinpulse thresholds: error: ") and message in err and len(err.splitlines()) == 1
    assert rows(db) == []


def test_the_database_message_reaches_the_cli(cli: Any, db: Conn) -> None:
    """A refusal only the database can make (here: a window of 5 s for a change) comes back as its message."""
    code, _, err = cli("thresholds", "add", "change_above", "bitcoin", "5", "--window", "5s")
    assert code == 1
    assert err == "coinpulse thresholds: error: alert threshold: the window must be positive and at least 1m, not 5s\n"


def test_unknown_ids_change_nothing(cli: Any, db: Conn) -> None:
    cli("thresholds", "add", "price_below", "bitcoin", "1")
    code, _, err = cli("thresholds", "remove", "1", "99")
    assert code == 1 and "no threshold with id 99" in err
    assert len(rows(db)) == 1  # all or nothing


FILE_V1 = """
source: team-a
thresholds:
  - key: btc-60k
    kind: price_below
    asset: BTC
    value: 60000
    severity: critical
  - kind: change_above
    asset: ethereum
    value: 5
    window: 1h
  - kind: stale
    asset: solana
    window: 10m
"""
FILE_V2 = """
source: team-a
thresholds:
  - key: btc-60k
    kind: price_below
    asset: bitcoin
    value: 55000
    severity: critical
    enabled: false
  - kind: change_above
    asset: ethereum
    value: 5
    window: 1h
  - kind: volume_above
    asset: ethereum
    value: 2e10
"""


def test_sync_dry_run_apply_and_ownership(cli: Any, db: Conn, tmp_path: Path) -> None:
    path = tmp_path / "thresholds.yaml"
    path.write_text(FILE_V1, encoding="utf-8")
    # Rows the file does not own: made by hand, and owned by another file.
    cli("thresholds", "add", "price_above", "bitcoin", "100000")
    db.execute("INSERT INTO coinpulse.alert_thresholds (kind, asset_id, value, sync_source, sync_key) "
               "VALUES ('price_below', 'bitcoin', 1, 'team-b', 'btc-60k')")
    before = rows(db)

    code, out, _ = cli("thresholds", "sync", str(path), "--dry-run")
    assert code == 0
    assert out.splitlines() == [
        "+ btc-60k: bitcoin price < 60000 USD [critical]",
        "+ change_above:ethereum:1h: ethereum price change over 1h > +5 % [warning]",
        "+ stale:solana:10m: solana no tick for 10m [warning]",
        f"dry run, nothing changed: 3 to add, 0 to change, 0 to remove, 0 unchanged (source 'team-a', {path})"]
    assert rows(db) == before

    code, out, _ = cli("thresholds", "sync", str(path))
    assert code == 0 and out.splitlines()[-1].startswith("applied: 3 to add")
    owned = [r for r in rows(db) if r[6] == "team-a"]
    assert sorted(r[7] for r in owned) == ["btc-60k", "change_above:ethereum:1h", "stale:solana:10m"]
    code, out, _ = cli("thresholds", "sync", str(path))
    assert out == f"0 to add, 0 to change, 0 to remove, 3 unchanged (source 'team-a', {path})\n"  # idempotent

    path.write_text(FILE_V2, encoding="utf-8")
    code, out, _ = cli("thresholds", "sync", str(path), "--dry-run")
    btc_id = next(i for (i,) in db.execute("SELECT id FROM coinpulse.alert_thresholds WHERE sync_source = 'team-a' "
                                           "AND sync_key = 'btc-60k'"))
    sol_id = next(i for (i,) in db.execute("SELECT id FROM coinpulse.alert_thresholds WHERE sync_source = 'team-a' "
                                           "AND sync_key = 'stale:solana:10m'"))
    assert out.splitlines() == [
        "+ volume_above:ethereum: ethereum 24h volume > 20000000000 USD [warning]",
        f"~ btc-60k (id {btc_id}): value 60000 -> 55000; enabled true -> false",
        f"- stale:solana:10m (id {sol_id}): solana no tick for 10m",
        f"dry run, nothing changed: 1 to add, 1 to change, 1 to remove, 1 unchanged (source 'team-a', {path})"]
    cli("thresholds", "sync", str(path))
    after = rows(db)
    assert ("price_above", "bitcoin", 100000.0, None, True, "warning", None, None) in after  # by hand: untouched
    assert ("price_below", "bitcoin", 1.0, None, True, "warning", "team-b", "btc-60k") in after  # other file
    owned = {r[7]: r for r in after if r[6] == "team-a"}
    assert set(owned) == {"btc-60k", "change_above:ethereum:1h", "volume_above:ethereum"}
    assert owned["btc-60k"][2:5] == (55000.0, None, False)
    assert db.execute("SELECT id FROM coinpulse.alert_thresholds WHERE sync_key = 'btc-60k' AND sync_source = "
                      "'team-a'").fetchone() == (btc_id,)  # changed in place: same id, same alert instance


def test_disabling_a_file_owned_row_warns_that_sync_will_undo_it(cli: Any, db: Conn, tmp_path: Path) -> None:
    path = tmp_path / "t.yaml"
    path.write_text("thresholds:\n  - kind: price_below\n    asset: bitcoin\n    value: 1\n", encoding="utf-8")
    cli("thresholds", "sync", str(path))
    assert rows(db)[0][6:] == ("t", "price_below:bitcoin")  # source defaults to the file's name
    code, _, err = cli("thresholds", "disable", "1")
    assert code == 0 and "the next `coinpulse thresholds sync` sets `enabled` back" in err
    _, out, _ = cli("thresholds", "sync", str(path), "--dry-run")
    assert out.splitlines()[0] == "~ price_below:bitcoin (id 1): enabled false -> true"


def test_a_bad_file_changes_nothing(cli: Any, db: Conn, tmp_path: Path) -> None:
    path = tmp_path / "t.yaml"
    path.write_text("source: s\nthresholds:\n  - kind: price_below\n    asset: bitcoin\n    value: 1\n"
                    "  - kind: price_below\n    asset: dogecoin\n    value: 1\n", encoding="utf-8")
    code, _, err = cli("thresholds", "sync", str(path))
    assert code == 1 and "entry 2: unknown asset 'dogecoin'" in err
    assert rows(db) == []


@pytest.mark.parametrize(("text", "message"), [
    ("thresholds:\n  - kind: price_below\n    asset: bitcoin\n    value: .nan\n", "not a finite number"),
    ("thresholds:\n  - kind: change_below\n    asset: bitcoin\n    value: -5\n    window: -1h\n", "window '-1h'"),
    ("thresholds:\n  - kind: price_below\n    asset: bitcoin\n", "kind price_below needs a value"),
    ("thresholds:\n  - kind: price_below\n    portfolio: main\n    value: 1\n", "takes `asset:`, not `portfolio:`"),
    ("thresholds:\n  - {kind: price_below, asset: bitcoin, value: 1, key: a}\n"
     "  - {kind: price_above, asset: bitcoin, value: 2, key: a}\n", "key 'a' is used by more than one entry"),
    ("thresholds:\n  - {kind: price_below, asset: bitcoin, value: 1, colour: red}\n", "unknown keys ['colour']"),
    ("thresholds: {}\n", "`thresholds` must be a list"),
    ("[1, 2]\n", "expected a mapping"),
    ("source: 'a b'\n", "source 'a b' must be"),
])
def test_file_errors_name_the_entry(text: str, message: str) -> None:
    with pytest.raises(ThresholdError, match=r".*") as err:
        parse_file(text, "t.yaml", default_source="t")
    assert message in str(err.value)


def test_two_entries_with_the_same_derived_key_need_keys(db: Conn) -> None:
    db.execute("INSERT INTO coinpulse.assets (asset_id, symbol) VALUES ('bitcoin', 'BTC')")
    file = parse_file("thresholds:\n  - {kind: price_below, asset: bitcoin, value: 1}\n"
                      "  - {kind: price_below, asset: BTC, value: 2}\n", "t.yaml", default_source="t")
    with pytest.raises(ThresholdError, match="give each a `key:`"):
        plan_sync(db, file)


def test_the_example_file_parses_and_syncs(cli: Any, db: Conn) -> None:
    code, out, err = cli("thresholds", "sync", str(ROOT / "alerting" / "thresholds.yaml"))
    assert code == 0, err
    assert out.splitlines()[-1].startswith("applied: 5 to add, 0 to change, 0 to remove, 0 unchanged (source 'example'")
    assert {r[0] for r in rows(db)} == {"price_below", "price_above", "change_below", "volume_change_above", "stale"}


def test_parse_window() -> None:
    assert parse_window("90s") == timedelta(seconds=90)
    assert parse_window(" 24h ") == timedelta(hours=24)
    assert parse_window("2w") == timedelta(weeks=2)
    for bad in ("", "1", "1 hour", "-1h", "1.5h", "1y"):
        with pytest.raises(ValueError, match="give a duration"):
            parse_window(bad)
