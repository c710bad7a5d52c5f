"""Portfolio logic without a database: input parsing, the CSV format, average-cost arithmetic against values
computed by hand, oversell detection (backdated sells), CLI argument parsing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal as D
from pathlib import Path

import pytest

from collector.cli import build_parser, main
from collector.portfolio import (
    Position,
    Trade,
    apply_trade,
    find_oversells,
    parse_csv,
    parse_decimal,
    parse_time,
    positions,
)
from collector.portfolio_cli import parse_bucket, parse_since

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
FIXTURES = Path(__file__).parent / "fixtures" / "portfolio"


def at(day: int, hour: int = 0) -> datetime:
    return datetime(2026, 10, day, hour, tzinfo=UTC)


# -- numbers and times -------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, value", [("12", D("12")), ("-0.5", D("-0.5")), (" 1.25 ", D("1.25")),
                                         ("1e-3", D("0.001")), (".5", D("0.5")), ("+3.", D("3"))])
def test_parse_decimal_accepts_plain_numbers(text: str, value: D) -> None:
    assert parse_decimal(text, "quantity") == value


@pytest.mark.parametrize("text", ["NaN", "nan", "Infinity", "-inf", "1,000", "12 BTC", "", "0x10", "1e", "--1",
                                  "1" * 41])
def test_parse_decimal_refuses_what_is_not_a_plain_number(text: str) -> None:
    with pytest.raises(ValueError, match="quantity"):
        parse_decimal(text, "quantity")


def test_parse_decimal_sign_rules() -> None:
    with pytest.raises(ValueError, match="must be positive"):
        parse_decimal("0", "price", positive=True)
    with pytest.raises(ValueError, match="must not be negative"):
        parse_decimal("-1", "fee", non_negative=True)
    with pytest.raises(ValueError, match="must not be zero"):
        parse_decimal("0.000", "quantity", non_zero=True)
    assert parse_decimal("0", "fee", non_negative=True) == 0


def test_parse_time_forms() -> None:
    assert parse_time("2026-10-01", NOW) == at(1)
    assert parse_time("2026-10-01T10:00:00Z", NOW) == at(1, 10)
    assert parse_time("2026-10-01T12:00:00+02:00", NOW) == at(1, 10)
    assert parse_time("2026-10-01 10:00", NOW) == at(1, 10)  # no offset: UTC
    assert parse_time("2026-11-24T12:04:00Z", NOW) == NOW + timedelta(minutes=4)  # clock skew allowed
    with pytest.raises(ValueError, match="in the future"):
        parse_time("2026-11-25", NOW)
    with pytest.raises(ValueError, match="not an ISO 8601"):
        parse_time("01/10/2026", NOW)


# -- CSV ---------------------------------------------------------------------------------------------------

def test_csv_good_file_parses_every_row() -> None:
    rows, errors = parse_csv((FIXTURES / "good.csv").read_text(encoding="utf-8"), NOW)
    assert errors == []
    assert [(r.line, r.asset, r.quantity, r.price, r.fee) for r in rows] == [
        (3, "bitcoin", D("2"), D("30000"), D("10")),
        (4, "ethereum", D("10"), D("2000"), D("4")),
        (5, "bitcoin", D("1"), D("33000"), D("5")),
        (6, "BTC", D("-1.5"), D("35000"), D("15")),
        (8, "ethereum", D("-10"), D("2500"), D("6")),
        (9, "bitcoin", D("-1"), D("40000"), D("20")),
        (10, "bitcoin", D("1"), None, D("0")),
    ]
    assert rows[0].time == at(1, 10) and rows[0].note == "first buy"
    assert rows[1].note is None and rows[6].note == "price from the stored candles"


def test_csv_bad_rows_are_named_with_their_line_and_reason() -> None:
    text = ("time,asset,quantity,price,fee\n"
            "2026-10-01T10:00:00Z,bitcoin,2,30000,10\n"
            "2026-10-02,bitcoin,0,30000,0\n"
            "2026-10-03,,1,NaN,-1\n"
            "not a time,bitcoin,1,30000,0\n"
            "2026-10-04,bitcoin,1,30000\n"
            "2099-01-01,bitcoin,1,30000,0\n")
    rows, errors = parse_csv(text, NOW)
    assert [r.line for r in rows] == [2]
    assert [(e.line, e.reason) for e in errors] == [
        (3, "quantity must not be zero"),
        (4, "asset is empty; price 'NaN' is not a number; fee must not be negative, not -1"),
        (5, "time 'not a time' is not an ISO 8601 date or date-time (e.g. 2025-03-01T14:30:00Z)"),
        (6, "4 fields, the header has 5"),
        (7, "time 2099-01-01 is in the future"),
    ]
    assert str(errors[0]) == "line 3: quantity must not be zero"


def test_csv_header_problems_are_one_error_on_its_line() -> None:
    rows, errors = parse_csv("# my trades\ntime,asset,amount\n2026-10-01,bitcoin,1\n", NOW)
    assert rows == [] and len(errors) == 1
    assert errors[0].line == 2
    assert "missing column(s) quantity" in errors[0].reason and "unknown column(s) amount" in errors[0].reason
    assert parse_csv("", NOW)[1][0].reason.startswith("the file is empty")
    assert parse_csv("time,asset,quantity\n", NOW)[1][0].reason == "no transactions after the header"


def test_csv_columns_in_any_order_with_bom_and_quotes() -> None:
    text = '\ufeffAsset,Quantity,Time,Note\nbitcoin,"1.5",2026-10-01,"bought, finally"\n'
    rows, errors = parse_csv(text, NOW)
    assert errors == []
    assert rows[0].quantity == D("1.5") and rows[0].price is None and rows[0].fee == 0
    assert rows[0].note == "bought, finally"


# -- average cost, by hand ---------------------------------------------------------------------------------

def btc(day: int, quantity: str, price: str, fee: str = "0", seq: int = 0) -> Trade:
    return Trade(at(day, 12), "bitcoin", D(quantity), D(price), D(fee), seq=seq)


def test_average_cost_by_hand() -> None:
    p = apply_trade(Position(), btc(1, "2", "30000", "10"))
    assert p == Position(D("2"), D("60010"), D("0"), D("10"))
    p = apply_trade(p, btc(5, "1", "33000", "5"))
    assert p == Position(D("3"), D("93015"), D("0"), D("15"))
    assert p.average_cost == D("31005")
    # partial sell of 1.5 at 35000, fee 15: cost removed 93015 * 1.5 / 3 = 46507.5,
    # realized (52500 - 15) - 46507.5 = 5977.5
    p = apply_trade(p, btc(10, "-1.5", "35000", "15"))
    assert p == Position(D("1.5"), D("46507.5"), D("5977.5"), D("30"))
    assert p.average_cost == D("31005")  # a sell does not change the average cost
    assert p.market_value(D("42000")) == D("63000")
    assert p.unrealized_pnl(D("42000")) == D("16492.5")
    # selling the rest removes all the cost basis, exactly
    p = apply_trade(p, btc(12, "-1.5", "30000", "0"))
    assert p == Position(D("0"), D("0"), D("5977.5") + D("45000") - D("46507.5"), D("30"))
    assert p.average_cost is None


def test_average_cost_with_a_backdated_buy() -> None:
    """The same trades plus a buy dated before the second one: applied in time order, not entry order."""
    trades = [btc(1, "2", "30000", "10", 1), btc(5, "1", "33000", "5", 2), btc(10, "-1.5", "35000", "15", 3),
              btc(20, "-1", "40000", "20", 4)]
    before = positions(trades)["bitcoin"]
    # by hand: 2@30000+10 -> C 60010; +1@33000+5 -> Q3 C93015; -1.5: cost 46507.5, realized 5977.5;
    # -1@40000-20: cost 46507.5/1.5 = 31005, realized += 39980 - 31005 = 8975
    assert before == Position(D("0.5"), D("15502.5"), D("14952.5"), D("50"))
    backdated = Trade(at(3, 8), "bitcoin", D("1"), D("28000"), D("5"), seq=5)
    after = positions([*trades, backdated])["bitcoin"]
    # by hand: Q2 C60010; +1@28000+5 -> Q3 C88015; +1@33000+5 -> Q4 C121020; -1.5: cost 45382.5,
    # realized 52485 - 45382.5 = 7102.5, C 75637.5 Q2.5; -1@40000-20: cost 30255, realized += 9725
    assert after == Position(D("1.5"), D("45382.5"), D("16827.5"), D("55"))
    assert after.average_cost == D("30255")


def test_same_instant_buys_come_before_sells() -> None:
    t = at(1, 12)
    trades = [Trade(t, "bitcoin", D("-1"), D("10"), seq=1), Trade(t, "bitcoin", D("1"), D("8"), seq=2)]
    assert positions(trades)["bitcoin"] == Position(D("0"), D("0"), D("2"), D("0"))


def test_overselling_is_refused() -> None:
    with pytest.raises(ValueError, match="sells 3 bitcoin but only 2 are held then"):
        apply_trade(Position(D("2"), D("20")), btc(1, "-3", "10"))


# -- oversell detection ------------------------------------------------------------------------------------

def test_backdated_sell_that_breaks_a_later_sell_is_blamed() -> None:
    stored = [btc(1, "2", "100", seq=1), btc(10, "-2", "120", seq=2)]
    ok = Trade(at(2), "bitcoin", D("1"), D("100"), ref="line 2", seq=3)
    bad = Trade(at(5), "bitcoin", D("-0.5"), D("110"), ref="line 3", seq=4)
    found = find_oversells(stored, [ok, bad])
    assert found == []  # the new buy on day 2 covers the backdated sell
    found = find_oversells(stored, [bad])
    assert [(t.ref, why) for t, why in found] == [
        ("line 3", "sells 0.5 bitcoin at 2026-10-05T00:00:00Z, which leaves -0.5 at 2026-10-10T12:00:00Z "
                   "(a later sell)")]


def test_each_bad_sell_is_named_once_and_good_ones_are_not() -> None:
    stored = [btc(1, "1", "100", seq=1)]
    new = [Trade(at(2), "bitcoin", D("-0.5"), D("1"), ref="line 2", seq=2),
           Trade(at(3), "bitcoin", D("-2"), D("1"), ref="line 3", seq=3),
           Trade(at(4), "bitcoin", D("-0.5"), D("1"), ref="line 4", seq=4),
           Trade(at(5), "bitcoin", D("-0.1"), D("1"), ref="line 5", seq=5),
           Trade(at(5), "ethereum", D("-1"), D("1"), ref="line 6", seq=6)]
    found = {t.ref: why for t, why in find_oversells(stored, new)}
    assert found == {
        "line 3": "sells 2 bitcoin at 2026-10-03T00:00:00Z but only 0.5 are held then",
        "line 5": "sells 0.1 bitcoin at 2026-10-05T00:00:00Z but only 0 are held then",
        "line 6": "sells 1 ethereum at 2026-10-05T00:00:00Z but only 0 are held then",
    }


# -- CLI arguments -----------------------------------------------------------------------------------------

def test_cli_parses_portfolio_actions() -> None:
    parser = build_parser()
    args = parser.parse_args(["portfolio", "buy", "main", "bitcoin", "0.5", "--price", "100", "--fee", "1",
                              "--time", "2026-10-01"])
    assert (args.command, args.action, args.name, args.asset, args.quantity, args.price, args.fee, args.time) == (
        "portfolio", "buy", "main", "bitcoin", "0.5", "100", "1", "2026-10-01")
    args = parser.parse_args(["portfolio", "value", "main", "--from", "30d", "--bucket", "1d"])
    assert (args.action, args.start, args.end, args.bucket) == ("value", "30d", None, "1d")
    args = parser.parse_args(["portfolio", "delete", "main", "--transaction", "7"])
    assert args.transaction == 7 and not args.yes
    for action in ("create", "list", "sell", "import", "show"):
        assert action in parser._subparsers._group_actions[0].choices["portfolio"].format_help()  # type: ignore[union-attr]
    with pytest.raises(SystemExit):
        parser.parse_args(["portfolio", "frobnicate", "main"])


def test_relative_times_and_buckets() -> None:
    assert parse_since("30d", NOW) == NOW - timedelta(days=30)
    assert parse_since("12h", NOW) == NOW - timedelta(hours=12)
    assert parse_since("1y", NOW) == NOW - timedelta(days=365)
    assert parse_since("2026-10-01", NOW) == at(1)
    assert parse_bucket("15m") == timedelta(minutes=15)
    assert parse_bucket("1d") == timedelta(days=1)
    for bad in ("0h", "1y", "hourly", "1.5h"):
        with pytest.raises(ValueError, match="bucket"):
            parse_bucket(bad)


def test_a_bad_history_setting_is_one_clear_line(monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("COINPULSE_HISTORY_INTERVALS", "m1:1d,h1:2h,d1")
    monkeypatch.setenv("COINPULSE_DATABASE_URL", "postgresql://nobody@127.0.0.1:9/none")  # never reached
    assert main(["portfolio", "show", "main"]) == 1
    assert capsys.readouterr().err.strip() == (
        "coinpulse portfolio: error: COINPULSE_HISTORY_INTERVALS: 'h1:2h': ages must grow from one entry to the next")
