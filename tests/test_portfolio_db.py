"""Portfolios against a real TimescaleDB: the CLI, the tables' constraints and holding trigger, the
``portfolio_holdings`` view and the ``portfolio_value`` functions, checked against values computed by hand
or independently from the raw ticks."""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal as D
from pathlib import Path
from typing import Any

import psycopg
import pytest

from collector.cli import main
from collector.db.rollups import refresh_window
from collector.portfolio import (
    Position,
    Transaction,
    create_portfolio,
    get_portfolio,
    holdings,
    positions,
    record,
    stored_trades,
    value_series,
)
from fake_coincap import FakeCoinCap

pytestmark = pytest.mark.full_edition

Conn = psycopg.Connection[tuple[Any, ...]]
FIXTURES = Path(__file__).parent / "fixtures" / "portfolio"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def add_assets(db: Conn, *ids: str) -> None:
    for asset_id in ids:
        db.execute("INSERT INTO coinpulse.assets (asset_id, symbol) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                   (asset_id, {"bitcoin": "BTC", "ethereum": "ETH"}.get(asset_id, asset_id[:3].upper())))


def add_ticks(db: Conn, ticks: Iterable[tuple[datetime, str, float]]) -> None:
    copy_sql = "COPY coinpulse.price_ticks (time, asset_id, price_usd, source) FROM STDIN"
    with db.cursor() as cur, cur.copy(copy_sql) as copy:
        for moment, asset, price in ticks:
            copy.write_row((moment, asset, price, "demo"))


class Cli:
    """``coinpulse ...`` in-process, with the environment of a user without a CoinCap key."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], url: str) -> None:
        self.capsys = capsys
        monkeypatch.setenv("COINPULSE_DATABASE_URL", url)
        for name in ("COINCAP_API_KEY", "COINCAP_API_KEY_FILE", "COINPULSE_DATABASE_URL_FILE"):
            monkeypatch.delenv(name, raising=False)

    def __call__(self, *args: str, code: int = 0) -> tuple[str, str]:
        self.capsys.readouterr()
        got = main(["portfolio", *args])
        out, err = self.capsys.readouterr()
        assert got == code, f"exit {got}, expected {code}\nstdout: {out}\nstderr: {err}"
        return out, err


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], db_url: str) -> Cli:
    return Cli(monkeypatch, capsys, db_url)


def holding(db: Conn, name: str, asset_id: str) -> dict[str, Any]:
    cur = db.execute("SELECT * FROM coinpulse.portfolio_holdings WHERE portfolio = %s AND asset_id = %s",
                     (name, asset_id))
    row = cur.fetchone()
    assert row is not None and cur.description is not None
    return dict(zip([c.name for c in cur.description], row, strict=True))


SCRIPT = [  # the scripted sequence (also tests/fixtures/portfolio/good.csv, without its last line)
    ("buy", "bitcoin", "2", "30000", "10", "2026-10-01T10:00:00Z"),
    ("buy", "ethereum", "10", "2000", "4", "2026-10-02T10:00:00Z"),
    ("buy", "bitcoin", "1", "33000", "5", "2026-10-05T12:00:00Z"),
    ("sell", "BTC", "1.5", "35000", "15", "2026-10-10T09:00:00Z"),  # partial sell, asset by symbol
    ("sell", "ethereum", "10", "2500", "6", "2026-10-15T10:00:00Z"),  # sold out
    ("sell", "bitcoin", "1", "40000", "20", "2026-10-20T10:00:00Z"),
]


def market(db: Conn) -> None:
    add_assets(db, "bitcoin", "ethereum")
    add_ticks(db, [(at("2026-09-30T00:00:00Z"), "bitcoin", 29000.0), (at("2026-09-30T00:00:00Z"), "ethereum", 1900.0),
                   (at("2026-10-20T23:59:30Z"), "bitcoin", 41000.0),
                   (at("2026-11-01T00:00:00Z"), "bitcoin", 42000.0), (at("2026-11-01T00:00:00Z"), "ethereum", 2600.0)])


def test_scripted_sequence_equals_hand_computed_values(db: Conn, cli: Cli) -> None:
    market(db)
    cli("create", "main")
    for action, asset, quantity, price, fee, moment in SCRIPT:
        out, _ = cli(action, "main", asset, quantity, "--price", price, "--fee", fee, "--time", moment)
        assert "transaction" in out
    # By hand (average cost). BTC: 2@30000+10 -> Q2 C60010; +1@33000+5 -> Q3 C93015 (avg 31005);
    # -1.5@35000-15: cost 46507.5, realized 52485-46507.5 = 5977.5, C 46507.5 Q1.5;
    # -1@40000-20: cost 31005, realized += 39980-31005 = 8975 -> 14952.5, C 15502.5 Q0.5. Price 42000.
    # ETH: 10@2000+4 -> C 20004; -10@2500-6: realized 24994-20004 = 4990; nothing held.
    btc = holding(db, "main", "bitcoin")
    assert (btc["quantity"], btc["cost_basis"], btc["avg_cost"], btc["realized_pnl"], btc["fees"]) == (
        D("0.5"), D("15502.5"), D("31005"), D("14952.5"), D("50"))
    assert (btc["price"], btc["market_value"], btc["unrealized_pnl"]) == (D("42000"), D("21000"), D("5497.5"))
    eth = holding(db, "main", "ethereum")
    assert (eth["quantity"], eth["cost_basis"], eth["avg_cost"], eth["realized_pnl"], eth["market_value"],
            eth["unrealized_pnl"], eth["fees"]) == (D("0"), D("0"), None, D("4990"), D("0"), D("0"), D("10"))

    # A backdated buy (before the second buy) changes the average cost of every later sell.
    cli("buy", "main", "bitcoin", "1", "--price", "28000", "--fee", "5", "--time", "2026-10-03T08:00:00Z")
    # By hand: Q2 C60010; +1@28000+5 -> Q3 C88015; +1@33000+5 -> Q4 C121020; -1.5: cost 45382.5, realized
    # 7102.5, C 75637.5 Q2.5; -1: cost 30255, realized += 9725 -> 16827.5; C 45382.5 Q1.5 (avg 30255).
    expected = Position(D("1.5"), D("45382.5"), D("16827.5"), D("55"))
    btc = holding(db, "main", "bitcoin")
    assert (btc["quantity"], btc["cost_basis"], btc["avg_cost"], btc["realized_pnl"], btc["fees"]) == (
        expected.quantity, expected.cost_basis, D("30255"), expected.realized_pnl, expected.fees)
    assert (btc["market_value"], btc["unrealized_pnl"]) == (D("63000"), D("17617.5"))
    # the Python arithmetic over the stored transactions agrees
    portfolio = get_portfolio(db, "main")
    assert positions(stored_trades(db, portfolio))["bitcoin"] == expected
    # and so does `show`
    out, _ = cli("show", "main", "--transactions")
    lines = out.splitlines()
    assert lines[0] == "portfolio 'main', amounts in USD; average-cost method"
    assert lines[2].split() == ["bitcoin", "1.5", "30,255.00", "42,000.00", "63,000.00", "17,617.50", "16,827.50",
                                "55.00", "2026-11-01T00:00:00Z"]
    assert lines[3].split() == ["ethereum", "0", "n/a", "2,600.00", "0.00", "0.00", "4,990.00", "10.00",
                                "2026-11-01T00:00:00Z"]
    assert lines[4].split() == ["total", "63,000.00", "17,617.50", "21,817.50", "65.00"]
    assert sum(" bitcoin " in line or " ethereum " in line for line in lines[6:]) == 7


def test_oversells_are_refused_at_every_point_in_time(db: Conn, cli: Cli) -> None:
    market(db)
    cli("create", "main")
    for action, asset, quantity, price, fee, moment in SCRIPT:
        cli(action, "main", asset, quantity, "--price", price, "--fee", fee, "--time", moment)
    # BTC held: 2 from 10-01, 3 from 10-05, 1.5 from 10-10, 0.5 from 10-20
    _, err = cli("sell", "main", "bitcoin", "2", "--price", "1", "--time", "2026-10-06", code=1)
    assert err.strip().splitlines()[-1] == ("coinpulse portfolio: error: sells 2 bitcoin at 2026-10-06T00:00:00Z, "
                                            "which leaves -0.5 at 2026-10-10T09:00:00Z (transaction 4)")
    _, err = cli("sell", "main", "bitcoin", "0.6", "--price", "1", code=1)
    assert "sells 0.6 bitcoin at" in err and "but only 0.5 are held then" in err
    assert db.execute("SELECT count(*) FROM coinpulse.portfolio_transactions").fetchone() == (6,)
    # The database refuses it too, for psql users: the trigger names the point where the holding goes negative.
    with pytest.raises(psycopg.errors.CheckViolation, match=r"portfolio 'main': cannot sell more bitcoin than is "
                       r"held: the holding would be -0\.5 at 2026-10-10T09:00:00Z \(transaction 4\)"):
        db.execute("INSERT INTO coinpulse.portfolio_transactions (portfolio_id, time, asset_id, quantity, price_usd) "
                   "SELECT portfolio_id, '2026-10-06', 'bitcoin', -2, 1 FROM coinpulse.portfolios")
    # Deleting the first buy would leave the later sells short; changing a buy likewise.
    first = db.execute("SELECT min(transaction_id) FROM coinpulse.portfolio_transactions").fetchone()
    assert first is not None
    _, err = cli("delete", "main", "--transaction", str(first[0]), code=1)
    assert "cannot sell more bitcoin than is held: the holding would be -0.5 at 2026-10-10T09:00:00Z" in err
    with pytest.raises(psycopg.errors.CheckViolation, match="cannot sell more bitcoin"):
        db.execute("UPDATE coinpulse.portfolio_transactions SET quantity = 0.5 WHERE transaction_id = %s", first)
    with pytest.raises(psycopg.errors.CheckViolation, match="cannot sell more bitcoin"):
        db.execute("UPDATE coinpulse.portfolio_transactions SET time = '2026-10-11' WHERE transaction_id = %s", first)
    # A sell in one statement with the buy that covers it is fine, whatever their order in the statement.
    db.execute("INSERT INTO coinpulse.portfolio_transactions (portfolio_id, time, asset_id, quantity, price_usd) "
               "SELECT portfolio_id, t, 'bitcoin', q, 1 FROM coinpulse.portfolios, "
               "(VALUES ('2026-10-22'::timestamptz, -1.5), ('2026-10-21'::timestamptz, 1)) v(t, q)")
    assert holding(db, "main", "bitcoin")["quantity"] == 0
    # deleting the last transaction is allowed; deleting the portfolio needs --yes
    _, err = cli("delete", "main", code=1)
    assert "has 8 transactions: add --yes" in err
    out, _ = cli("delete", "main", "--yes")
    assert out.strip() == "deleted portfolio 'main' and its 8 transactions"
    assert db.execute("SELECT count(*) FROM coinpulse.portfolio_transactions").fetchone() == (0,)


@pytest.mark.parametrize("column, value", [
    ("quantity", "NaN"), ("quantity", "0"), ("quantity", "Infinity"), ("price_usd", "NaN"), ("price_usd", "0"),
    ("price_usd", "-1"), ("price_usd", "Infinity"), ("fee_usd", "NaN"), ("fee_usd", "-0.01"),
    ("price_source", "guess"), ("time", "infinity"),
])
def test_constraints_refuse_bad_values(db: Conn, column: str, value: str) -> None:
    add_assets(db, "bitcoin")
    db.execute("INSERT INTO coinpulse.portfolios (name) VALUES ('main')")
    row = {"time": "2026-10-01", "quantity": "1", "price_usd": "100", "fee_usd": "0", "price_source": "user"}
    row[column] = value
    with pytest.raises(psycopg.errors.CheckViolation):
        db.execute("INSERT INTO coinpulse.portfolio_transactions (portfolio_id, asset_id, time, quantity, price_usd, "
                   "fee_usd, price_source) SELECT portfolio_id, 'bitcoin', %(time)s, %(quantity)s, %(price_usd)s, "
                   "%(fee_usd)s, %(price_source)s FROM coinpulse.portfolios", row)


def test_unknown_assets_and_names_are_refused(db: Conn, cli: Cli) -> None:
    add_assets(db, "bitcoin")
    cli("create", "main")
    with pytest.raises(psycopg.errors.ForeignKeyViolation):
        db.execute("INSERT INTO coinpulse.portfolio_transactions (portfolio_id, time, asset_id, quantity, price_usd) "
                   "SELECT portfolio_id, '2026-10-01', 'no-such-coin', 1, 1 FROM coinpulse.portfolios")
    _, err = cli("buy", "main", "no-such-coin", "1", "--price", "1", code=1)
    assert "unknown asset 'no-such-coin'" in err
    assert "COINCAP_API_KEY is not set, so unknown assets (no-such-coin) cannot be looked up" in err
    _, err = cli("create", "main", code=1)
    assert err.strip() == "coinpulse portfolio: error: a portfolio named 'main' exists already"
    _, err = cli("show", "nope", code=1)
    assert "no portfolio named 'nope'" in err
    _, err = cli("buy", "main", "bitcoin", "-1", "--price", "1", code=1)
    assert "quantity must be positive" in err
    _, err = cli("create", "eu", "--currency", "EUR", code=1)
    assert "no CoinCap rate for currency 'EUR' is stored" in err


# -- CSV import --------------------------------------------------------------------------------------------

def test_csv_import_good_file_imports_every_row(db: Conn, cli: Cli) -> None:
    market(db)
    cli("create", "main")
    out, err = cli("import", "main", str(FIXTURES / "good.csv"))
    assert out.strip() == (f"main: imported 7 transactions from {FIXTURES / 'good.csv'} "
                           "(1 priced from the stored candles)")
    assert "history" not in err  # everything it reaches is stored
    rows = db.execute("SELECT time, asset_id, quantity, price_usd, price_source, fee_usd, note "
                      "FROM coinpulse.portfolio_transactions ORDER BY transaction_id").fetchall()
    assert len(rows) == 7
    assert rows[3][1:6] == ("bitcoin", D("-1.5"), D("35000"), "user", D("15"))  # "BTC" resolved by symbol
    # the last line has no price: the close of the 1-minute candle that ends at that time
    assert rows[6] == (at("2026-10-21T00:00:00Z"), "bitcoin", D("1"), D("41000"), "candle", D("0"),
                       "price from the stored candles")
    # by hand: the scripted sequence (Q0.5 C15502.5 realized 14952.5) then +1@41000 -> Q1.5 C56502.5
    btc = holding(db, "main", "bitcoin")
    assert (btc["quantity"], btc["cost_basis"], btc["realized_pnl"], btc["fees"]) == (
        D("1.5"), D("56502.5"), D("14952.5"), D("50"))


def test_csv_import_with_one_bad_row_imports_nothing_and_names_it(db: Conn, cli: Cli) -> None:
    market(db)
    cli("create", "main")
    _, err = cli("import", "main", str(FIXTURES / "bad_row.csv"), code=1)
    assert err.strip().splitlines() == [
        "line 5: sells 4 bitcoin at 2026-10-10T09:00:00Z but only 3 are held then",
        "coinpulse portfolio: error: 1 bad row(s), nothing imported",
    ]
    assert db.execute("SELECT count(*) FROM coinpulse.portfolio_transactions").fetchone() == (0,)


def test_csv_import_names_every_bad_row(db: Conn, cli: Cli, tmp_path: Path) -> None:
    market(db)
    cli("create", "main")
    path = tmp_path / "trades.csv"
    path.write_text("time,asset,quantity,price,fee\n"
                    "2026-10-01T10:00:00Z,bitcoin,1,30000,0\n"
                    "2026-10-02,dogecoin-classic,1,1,0\n"
                    "2026-10-03,bitcoin,1,NaN,0\n"
                    "2026-10-04,ethereum,1,,0\n"
                    "2026-10-05,bitcoin,1,,\n", encoding="utf-8")
    _, err = cli("import", "main", str(path), code=1)
    lines = err.strip().splitlines()
    assert [line.split(":")[0] for line in lines if line.startswith("line")] == ["line 3", "line 4"]
    assert "line 3: unknown asset 'dogecoin-classic'" in err and "line 4: price 'NaN' is not a number" in err
    assert lines[-1] == "coinpulse portfolio: error: 2 bad row(s), nothing imported"
    # with those fixed, the rows without a price and no stored price nearby are named
    path.write_text("time,asset,quantity,price,fee\n"
                    "2026-10-01T10:00:00Z,bitcoin,1,30000,0\n"
                    "2026-10-10,ethereum,1,,0\n", encoding="utf-8")
    _, err = cli("import", "main", str(path), code=1)
    assert "line 3: no price given, and no stored price of ethereum within" in err
    assert db.execute("SELECT count(*) FROM coinpulse.portfolio_transactions").fetchone() == (0,)


# -- value over time ---------------------------------------------------------------------------------------

def floor_to(moment: datetime, width: timedelta) -> datetime:
    micros = (moment - EPOCH) // timedelta(microseconds=1)
    step = width // timedelta(microseconds=1)
    return EPOCH + timedelta(microseconds=(micros // step) * step)


def expected_values(ticks: list[tuple[datetime, str, float]], trades: list[Transaction], start: datetime,
                    end: datetime, width: timedelta) -> dict[datetime, D | None]:
    """Independently of the SQL: per bucket [b, b+w) intersecting [start, end), the sum over assets of the
    quantity after every transaction before b+w times the last raw tick before b+w."""
    out: dict[datetime, D | None] = {}
    assets = sorted({t.asset_id for t in trades})
    b = floor_to(start, width)
    while b < end:
        close = b + width
        total: D | None = D(0)
        for asset in assets:
            quantity = sum((t.quantity for t in trades if t.asset_id == asset and t.time < close), D(0))
            before = [(m, p) for m, a, p in ticks if a == asset and m < close]
            if quantity == 0:
                continue
            if not before or total is None:
                total = None
                continue
            total += quantity * D(repr(max(before)[1]))
        out[b] = total
        b = close
    return out


def random_market(rng: random.Random, start: datetime, hours: int) -> list[tuple[datetime, str, float]]:
    ticks: dict[tuple[datetime, str], float] = {}
    for asset, base in (("bitcoin", 30000.0), ("ethereum", 2000.0)):
        for _ in range(hours * 3):
            moment = start + timedelta(seconds=rng.randrange(hours * 3600))
            if asset == "ethereum" and start + timedelta(hours=20) <= moment < start + timedelta(hours=31):
                continue  # a gap: values carry the last price forward
            ticks[moment, asset] = round(base * (1 + rng.uniform(-0.05, 0.05)), 2)
        ticks[start + timedelta(hours=hours // 2), asset] = base  # a tick exactly on bucket edges
    return sorted((moment, asset, price) for (moment, asset), price in ticks.items())


@pytest.mark.parametrize("materialized", [False, True], ids=["real-time", "materialized"])
def test_value_over_time_equals_an_independent_computation_from_raw_ticks(db: Conn, materialized: bool) -> None:
    rng = random.Random(9)
    start = at("2026-10-01T00:00:00Z")
    hours = 72
    ticks = random_market(rng, start, hours)
    add_assets(db, "bitcoin", "ethereum")
    add_ticks(db, ticks)
    if materialized:
        refresh_window(db, start, start + timedelta(hours=hours))
    portfolio = create_portfolio(db, "main")
    trades = [
        Transaction(start + timedelta(hours=2, minutes=17), "bitcoin", D("1.5"), D("30000")),
        Transaction(start + timedelta(hours=5), "ethereum", D("10"), D("2000")),  # exactly on an hour edge
        Transaction(start + timedelta(hours=26, seconds=1), "bitcoin", D("0.25"), D("31000")),
        Transaction(start + timedelta(hours=40, minutes=59, seconds=59), "ethereum", D("-4"), D("2100")),
        Transaction(start + timedelta(hours=50), "bitcoin", D("-1.75"), D("29000")),  # sold out
        Transaction(start + timedelta(hours=60), "ethereum", D("2.5"), D("1900")),
    ]
    record(db, portfolio, trades)
    end = start + timedelta(hours=hours)
    cases = [(start, end, None, timedelta(hours=1)),  # automatic: hourly up to 31 days
             (start, end, timedelta(minutes=15), timedelta(minutes=15)),
             (start, end, timedelta(days=1), timedelta(days=1)),
             (start + timedelta(hours=30, minutes=10), end - timedelta(hours=7), timedelta(hours=2),
              timedelta(hours=2))]  # starts mid-data: the first buckets price from before the range
    for lo, hi, bucket, width in cases:
        expected = expected_values(ticks, trades, lo, hi, width)
        got = {p.time: p.value_usd for p in value_series(db, portfolio, lo, hi, bucket)}
        assert list(got) == list(expected), f"buckets of {width}"
        wrong = {b: (got[b], expected[b]) for b in expected if got[b] != expected[b]}
        assert not wrong, f"buckets of {width}: {len(wrong)} differ, e.g. {list(wrong.items())[:3]}"
        assert any(v not in (None, 0) for v in expected.values())
    # the sale shows in the curve: after hour 50 only ethereum is held
    hourly = {p.time: p for p in value_series(db, portfolio, start, end)}
    eth_only = db.execute("SELECT bool_and(asset_id = 'ethereum') FROM coinpulse.portfolio_value_by_asset("
                          "'main', %s, %s) WHERE quantity <> 0 AND time >= %s",
                          (start, end, start + timedelta(hours=50))).fetchone()
    assert eth_only == (True,) and hourly[start].value_usd == 0
    # the view: daily since the first transaction
    view = db.execute("SELECT time, value_usd FROM coinpulse.portfolio_value WHERE portfolio = 'main' "
                      "AND time < %s ORDER BY time", (end,)).fetchall()
    daily = expected_values(ticks, trades, start, end, timedelta(days=1))
    assert dict(view) == daily


def test_value_in_a_non_usd_currency_uses_the_rate_as_of_each_bucket(db: Conn, cli: Cli) -> None:
    start = at("2026-10-01T00:00:00Z")
    add_assets(db, "bitcoin")
    add_ticks(db, [(start + timedelta(hours=h, minutes=30), "bitcoin", 1000.0 + h) for h in range(6)])
    # CoinCap rateUsd = USD per unit of the currency: 1 EUR = 1.25 USD, later 1.6 USD
    for moment, rate in ((start + timedelta(hours=2), 1.25), (start + timedelta(hours=4, minutes=10), 1.6)):
        db.execute("INSERT INTO coinpulse.rate_snapshots (time, rate_id, symbol, currency_symbol, rate_usd, type, "
                   "source) VALUES (%s, 'euro', 'EUR', '€', %s, 'fiat', 'rest')", (moment, rate))
    out, _ = cli("create", "eu", "--currency", "euro")
    assert out.strip() == "created portfolio 'eu' in EUR (CoinCap rate euro)"
    cli("buy", "eu", "bitcoin", "2", "--price", "900", "--fee", "2", "--time", "2026-10-01T00:10:00Z")
    portfolio = get_portfolio(db, "eu")
    points = value_series(db, portfolio, start, start + timedelta(hours=6))
    # bucket h closes at h+1: value 2 * (1000 + h) USD; the rate as of the close (before the first: the first)
    rates = [D("1.25")] * 4 + [D("1.6")] * 2
    assert [(p.value_usd, p.value) for p in points] == [
        (2 * D(1000 + h), 2 * D(1000 + h) / rates[h]) for h in range(6)]
    h = holdings(db, portfolio)[0]
    # latest price 1005, cost 1802 USD; all in EUR at the latest rate 1.6
    assert (h.market_value, h.cost_basis, h.unrealized_pnl, h.avg_cost, h.rate_usd) == (
        D("2010") / D("1.6"), D("1802") / D("1.6"), D("208") / D("1.6"), D("901") / D("1.6"), D("1.6"))
    out, _ = cli("show", "eu")
    assert out.splitlines()[0] == ("portfolio 'eu', amounts in EUR (1 EUR = 1.60 USD, latest CoinCap rate); "
                                   "average-cost method")
    assert out.splitlines()[2].split()[:7] == ["bitcoin", "2", "563.13", "628.13", "1,256.25", "130.00", "0.00"]
    out, _ = cli("value", "eu", "--from", "2026-10-01T03:00:00Z", "--to", "2026-10-01T05:00:00Z")
    assert out.splitlines() == ["time\tvalue EUR", "2026-10-01T03:00:00Z\t1,604.80", "2026-10-01T04:00:00Z\t1,255.00"]


def test_reader_can_read_and_writer_can_record(db: Conn) -> None:
    add_assets(db, "bitcoin")
    add_ticks(db, [(at("2026-10-01T00:00:00Z"), "bitcoin", 100.0)])
    db.execute("SET ROLE coinpulse_writer")
    try:
        portfolio = create_portfolio(db, "main")
        record(db, portfolio, [Transaction(at("2026-10-01T01:00:00Z"), "bitcoin", D("1"), D("100"))])
    finally:
        db.execute("RESET ROLE")
    db.execute("SET ROLE coinpulse_reader")
    try:
        assert db.execute("SELECT quantity, market_value FROM coinpulse.portfolio_holdings").fetchall() == [
            (D("1"), D("100"))]
        assert db.execute("SELECT count(*) FROM coinpulse.portfolio_value('main', '2026-10-01', '2026-10-02')"
                          ).fetchone() == (24,)
        assert db.execute("SELECT count(*) FROM coinpulse.portfolio_value").fetchone() is not None
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            db.execute("DELETE FROM coinpulse.portfolios")
    finally:
        db.execute("RESET ROLE")


# -- history on demand -------------------------------------------------------------------------------------

@pytest.fixture
def fake() -> Iterator[FakeCoinCap]:
    with FakeCoinCap() as server:
        yield server


def test_backdated_transaction_fetches_missing_history_first(db: Conn, cli: Cli, fake: FakeCoinCap,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    market(db)  # stored history of bitcoin begins 2026-09-30
    # One tier for every age, so the margin (one interval) does not depend on today's date.
    monkeypatch.setenv("COINPULSE_HISTORY_INTERVALS", "h1:3650d,d1")
    cli("create", "main")
    # Without a key: one line says so, and the stored data is used (here: no price that far back).
    _, err = cli("buy", "main", "bitcoin", "1", "--time", "2026-09-01T05:20:00Z", code=1)
    assert err.splitlines()[0] == ("history: COINCAP_API_KEY is not set, so history before the stored data cannot "
                                   "be fetched (bitcoin from 2026-09-01T04:20:00Z); using what is stored")
    assert "no price given, and no stored price of bitcoin within" in err
    # With a key, the range before the stored history is imported first, with progress, then priced.
    start = at("2026-09-01T00:00:00Z")
    fake.history["bitcoin"] = [{"priceUsd": f"{25000 + h}.5", "time": int((start + timedelta(hours=h)).timestamp())
                                * 1000} for h in range(29 * 24)]
    monkeypatch.setenv("COINCAP_API_KEY", fake.api_key or "")
    monkeypatch.setenv("COINCAP_REST_URL", fake.rest_url)
    monkeypatch.setenv("COINPULSE_HISTORY_POINTS_PER_REQUEST", "300")
    out, err = cli("buy", "main", "bitcoin", "1", "--time", "2026-09-01T05:20:00Z")
    lines = err.splitlines()
    # (from one interval before the transaction, so that the price before it is there too)
    assert lines[0] == "history bitcoin: fetching 2026-09-01T04:20:00Z .. 2026-09-30T00:00:00Z from CoinCap"
    assert lines[1].startswith("history bitcoin: 1/3 requests done (h1 up to ")
    assert lines[3].endswith(f"{28 * 24 + 19} points, {28 * 24 + 19} new")
    # nearest candle: 05:00 (its end is 19 minutes before) rather than 06:00 (40 minutes after)
    assert "bought 1 bitcoin at 25,005.50 USD (from the stored candles)" in out
    assert db.execute("SELECT price_usd, price_source FROM coinpulse.portfolio_transactions").fetchall() == [
        (D("25005.5"), "candle")]
    assert db.execute("SELECT count(*) FROM coinpulse.price_ticks WHERE source = 'history'").fetchone() == (
        28 * 24 + 19,)
    # shown and valued again: nothing more to fetch, and no CoinCap request
    before = len(fake.requests)
    _, err = cli("show", "main")
    _, err2 = cli("value", "main", "--bucket", "1d")
    assert "history" not in err + err2 and len(fake.requests) == before
