"""Portfolios: transactions in, holdings, average cost, P&L and value out.

The pure part (no I/O) parses user input (numbers, times, the import CSV) and does the average-cost
arithmetic; the database part (functions taking a connection) reads and writes the tables and views of
migration 0004 (``portfolios``, ``portfolio_transactions``, ``portfolio_holdings``, ``portfolio_value``).

Average-cost method (the same in SQL, ``coinpulse.average_cost``, and here, ``apply_trade``):
- a buy of q at price p with fee f adds q to the quantity and q*p + f to the cost basis;
- a sell of q at price p with fee f removes q * (cost basis / quantity) from the cost basis (all of it when
  the holding goes to zero) and realizes (q*p - f) - that removed cost;
- unrealized P&L = quantity * current price - cost basis.
Transactions are applied in time order; at the same instant buys come before sells, then by id (file line).
The holding of an asset may never be negative at any point in that order: a backdated sell is checked
against the holding at its own time and against every later sell.

Money is ``Decimal`` here and ``numeric`` in SQL, always USD per unit (CoinCap prices are USD); a
portfolio's base currency only changes how amounts are shown (converted at CoinCap's rate).
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

import psycopg

from collector.errors import CoinPulseError

__all__ = [
    "CSV_COLUMNS",
    "Conn",
    "CsvRow",
    "Holding",
    "Portfolio",
    "PortfolioError",
    "Position",
    "RowError",
    "Trade",
    "Transaction",
    "ValuePoint",
    "apply_trade",
    "check_holdings",
    "count_transactions",
    "create_portfolio",
    "delete_portfolio",
    "delete_transaction",
    "find_oversells",
    "first_transactions",
    "get_portfolio",
    "holdings",
    "list_portfolios",
    "parse_csv",
    "parse_decimal",
    "parse_time",
    "positions",
    "price_near",
    "record",
    "resolve_asset",
    "resolve_currency",
    "stored_trades",
    "trade_order",
    "transactions",
    "value_series",
]

ZERO = Decimal(0)
FUTURE_SLACK = timedelta(minutes=5)
"""A transaction may be this far in the future (clock skew); beyond, it is refused."""

CSV_COLUMNS = ("time", "asset", "quantity", "price", "fee", "note")
CSV_REQUIRED = ("time", "asset", "quantity")

_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d{1,3})?$")
_MAX_DIGITS = 40


class PortfolioError(CoinPulseError):
    """A portfolio command cannot be carried out (unknown portfolio, bad input, oversell...)."""


# -- parsing user input ------------------------------------------------------------------------------------

def parse_decimal(text: str, what: str, *, positive: bool = False, non_negative: bool = False,
                  non_zero: bool = False) -> Decimal:
    """A plain decimal number (``12``, ``-0.5``, ``1.2e-3``); no NaN, infinities, separators or units."""
    raw = text.strip()
    if not _NUMBER.match(raw):
        raise ValueError(f"{what} {text.strip()!r} is not a number")
    try:
        value = Decimal(raw)
    except InvalidOperation:  # pragma: no cover - the pattern admits only valid literals
        raise ValueError(f"{what} {raw!r} is not a number") from None
    if len(value.as_tuple().digits) > _MAX_DIGITS:
        raise ValueError(f"{what} {raw!r} has more than {_MAX_DIGITS} digits")
    if positive and value <= 0:
        raise ValueError(f"{what} must be positive, not {raw}")
    if non_negative and value < 0:
        raise ValueError(f"{what} must not be negative, not {raw}")
    if non_zero and value == 0:
        raise ValueError(f"{what} must not be zero")
    return value


def parse_time(text: str, now: datetime) -> datetime:
    """An ISO 8601 date (midnight UTC) or date-time; without an offset it is UTC. Not in the future."""
    raw = text.strip()
    try:
        if len(raw) == 10:
            moment = datetime.combine(date.fromisoformat(raw), time(0), tzinfo=UTC)
        else:
            moment = datetime.fromisoformat(raw)
    except ValueError:
        raise ValueError(f"time {raw!r} is not an ISO 8601 date or date-time (e.g. 2025-03-01T14:30:00Z)") from None
    if moment.tzinfo is None or moment.utcoffset() is None:
        moment = moment.replace(tzinfo=UTC)
    moment = moment.astimezone(UTC)
    if moment > now + FUTURE_SLACK:
        raise ValueError(f"time {raw} is in the future")
    return moment


@dataclass(frozen=True, slots=True)
class CsvRow:
    """One parsed import line; ``asset`` as written (an id or a symbol), ``price`` None = from candles."""

    line: int
    time: datetime
    asset: str
    quantity: Decimal
    price: Decimal | None
    fee: Decimal
    note: str | None


@dataclass(frozen=True, slots=True)
class RowError:
    line: int
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}"


def parse_csv(text: str, now: datetime) -> tuple[list[CsvRow], list[RowError]]:
    """Parse an import file: a header naming the columns, then one transaction per line.

    Columns (any order, names case-insensitive): ``time``, ``asset``, ``quantity`` required; ``price``
    (USD per unit; empty = taken from the stored candles), ``fee`` (USD; empty = 0), ``note`` optional.
    ``quantity`` is signed: positive buys, negative sells. Blank lines and lines starting with ``#`` are
    skipped. Line numbers count physical lines from 1 (the header). A file-level problem (no header,
    unknown or missing columns) is reported as line 1.
    """
    if text.startswith("\ufeff"):
        text = text[1:]
    reader = csv.reader(io.StringIO(text, newline=""))
    header: list[str] | None = None
    header_line = 0
    rows: list[CsvRow] = []
    errors: list[RowError] = []
    for record in reader:
        line = reader.line_num
        if not record or all(not cell.strip() for cell in record) or record[0].lstrip().startswith("#"):
            continue
        if header is None:
            header = [cell.strip().lower() for cell in record]
            header_line = line
            unknown = [c for c in header if c not in CSV_COLUMNS]
            missing = [c for c in CSV_REQUIRED if c not in header]
            dupes = sorted({c for c in header if header.count(c) > 1})
            if unknown or missing or dupes:
                parts = []
                if missing:
                    parts.append(f"missing column(s) {', '.join(missing)}")
                if unknown:
                    parts.append(f"unknown column(s) {', '.join(unknown)}")
                if dupes:
                    parts.append(f"repeated column(s) {', '.join(dupes)}")
                return [], [RowError(line, "header: " + "; ".join(parts) +
                                     f" (expected {', '.join(CSV_COLUMNS)}; the first three are required)")]
            continue
        if len(record) != len(header):
            errors.append(RowError(line, f"{len(record)} fields, the header has {len(header)}"))
            continue
        cells = {name: value.strip() for name, value in zip(header, record, strict=True)}
        try:
            rows.append(_csv_row(line, cells, now))
        except ValueError as exc:
            errors.append(RowError(line, str(exc)))
    if header is None:
        return [], [RowError(1, "the file is empty: expected a header line " + ",".join(CSV_COLUMNS))]
    if not rows and not errors:
        errors.append(RowError(header_line, "no transactions after the header"))
    return rows, errors


def _csv_row(line: int, cells: dict[str, str], now: datetime) -> CsvRow:
    problems: list[str] = []
    moment = quantity = price = None
    fee = ZERO
    try:
        if not cells["time"]:
            raise ValueError("time is empty")
        moment = parse_time(cells["time"], now)
    except ValueError as exc:
        problems.append(str(exc))
    asset = cells["asset"]
    if not asset:
        problems.append("asset is empty")
    try:
        if not cells["quantity"]:
            raise ValueError("quantity is empty")
        quantity = parse_decimal(cells["quantity"], "quantity", non_zero=True)
    except ValueError as exc:
        problems.append(str(exc))
    try:
        if cells.get("price"):
            price = parse_decimal(cells["price"], "price", positive=True)
    except ValueError as exc:
        problems.append(str(exc))
    try:
        if cells.get("fee"):
            fee = parse_decimal(cells["fee"], "fee", non_negative=True)
    except ValueError as exc:
        problems.append(str(exc))
    if problems:
        raise ValueError("; ".join(problems))
    assert moment is not None and quantity is not None
    return CsvRow(line, moment, asset, quantity, price, fee, cells.get("note") or None)


# -- average cost ------------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Trade:
    """A transaction as the arithmetic sees it: signed quantity, USD price per unit and fee.

    ``seq`` orders trades at the same instant after buys-before-sells (a transaction id, or a file line);
    ``ref`` names it in messages (``line 7``, ``transaction 12``).
    """

    time: datetime
    asset_id: str
    quantity: Decimal
    price_usd: Decimal
    fee_usd: Decimal = ZERO
    seq: int = 0
    ref: str = ""


def trade_order(trade: Trade) -> tuple[datetime, bool, int]:
    """Time order; at the same instant buys before sells, then ``seq``. SQL uses the same order."""
    return (trade.time, trade.quantity < 0, trade.seq)


@dataclass(frozen=True, slots=True)
class Position:
    """An asset's holding under the average-cost method (USD)."""

    quantity: Decimal = ZERO
    cost_basis: Decimal = ZERO
    realized_pnl: Decimal = ZERO
    fees: Decimal = ZERO

    @property
    def average_cost(self) -> Decimal | None:
        return self.cost_basis / self.quantity if self.quantity > 0 else None

    def market_value(self, price: Decimal) -> Decimal:
        return self.quantity * price

    def unrealized_pnl(self, price: Decimal) -> Decimal:
        return self.quantity * price - self.cost_basis


def apply_trade(position: Position, trade: Trade) -> Position:
    """The position after ``trade``; ValueError if it sells more than is held."""
    q, p, f = trade.quantity, trade.price_usd, trade.fee_usd
    if q > 0:
        return Position(position.quantity + q, position.cost_basis + q * p + f, position.realized_pnl,
                        position.fees + f)
    sold = -q
    if sold > position.quantity:
        raise ValueError(f"sells {_num(sold)} {trade.asset_id} but only {_num(position.quantity)} are held then")
    remaining = position.quantity - sold
    cost_sold = position.cost_basis if remaining == 0 else position.cost_basis * sold / position.quantity
    return Position(remaining, position.cost_basis - cost_sold,
                    position.realized_pnl + (sold * p - f) - cost_sold, position.fees + f)


def positions(trades: Iterable[Trade]) -> dict[str, Position]:
    """Every asset's position after ``trades`` (applied in ``trade_order``)."""
    out: dict[str, Position] = {}
    for trade in sorted(trades, key=trade_order):
        out[trade.asset_id] = apply_trade(out.get(trade.asset_id, Position()), trade)
    return out


def find_oversells(existing: Sequence[Trade], new: Sequence[Trade]) -> list[tuple[Trade, str]]:
    """New trades that would make a holding negative at some point, with why.

    All of ``existing + new`` are replayed in time order per asset. At the first point where a holding goes
    below zero, the new sell at or before that point that came last is blamed, set aside, and the replay
    starts again, so every bad new trade is named once and the good ones are judged without the bad.
    ``existing`` is assumed valid on its own (the database guarantees it).
    """
    blamed: list[tuple[Trade, str]] = []
    pending = list(range(len(new)))
    while True:
        found = _first_oversell(existing, new, pending)
        if found is None:
            return blamed
        index, why = found
        blamed.append((new[index], why))
        pending.remove(index)


def _first_oversell(existing: Sequence[Trade], new: Sequence[Trade],
                    pending: Sequence[int]) -> tuple[int, str] | None:
    """(index into ``new``, reason) of the first oversell, or None."""
    by_asset: dict[str, list[tuple[Trade, int | None]]] = {}
    for trade in existing:
        by_asset.setdefault(trade.asset_id, []).append((trade, None))
    for index in pending:
        by_asset.setdefault(new[index].asset_id, []).append((new[index], index))
    for asset_id in sorted(by_asset):
        held = ZERO
        last_new_sell: int | None = None
        for trade, position in sorted(by_asset[asset_id], key=lambda item: trade_order(item[0])):
            before = held
            held += trade.quantity
            if position is not None and trade.quantity < 0:
                last_new_sell = position
            if held >= 0 or last_new_sell is None:  # (None: only an invalid stored history gets here)
                continue
            culprit = new[last_new_sell]
            if position == last_new_sell:
                return last_new_sell, (f"sells {_num(-trade.quantity)} {asset_id} at {_iso(trade.time)} but only "
                                       f"{_num(before)} are held then")
            return last_new_sell, (f"sells {_num(-culprit.quantity)} {asset_id} at {_iso(culprit.time)}, which "
                                   f"leaves {_num(held)} at {_iso(trade.time)} ({trade.ref or 'a later sell'})")
    return None


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _num(value: Decimal) -> str:
    """A quantity as people write it: no exponent, no trailing zeros."""
    text = format(value.normalize(), "f")
    return "0" if text == "-0" else text


# -- the database ------------------------------------------------------------------------------------------
# Functions below take a psycopg connection (autocommit, or inside the caller's transaction) and raise
# PortfolioError for what a user can cause.

Conn = psycopg.Connection[Any]
USD = "USD"
_CURRENCY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,49}$")


@dataclass(frozen=True, slots=True)
class Portfolio:
    portfolio_id: int
    name: str
    currency: str
    rate_id: str | None
    note: str | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Transaction:
    """A transaction ready to store (asset resolved, price known)."""

    time: datetime
    asset_id: str
    quantity: Decimal
    price_usd: Decimal
    fee_usd: Decimal = ZERO
    price_source: str = "user"  # 'user' or 'candle'
    note: str | None = None
    ref: str = ""  # where it came from, for messages ("line 7")


@dataclass(frozen=True, slots=True)
class Holding:
    """A row of ``portfolio_holdings``: amounts in the portfolio currency (None when no rate/price)."""

    asset_id: str
    symbol: str | None
    quantity: Decimal
    avg_cost: Decimal | None
    cost_basis: Decimal | None
    price: Decimal | None
    market_value: Decimal | None
    unrealized_pnl: Decimal | None
    realized_pnl: Decimal | None
    fees: Decimal | None
    price_time: datetime | None
    rate_usd: Decimal | None


@dataclass(frozen=True, slots=True)
class ValuePoint:
    time: datetime
    value: Decimal | None  # in the portfolio currency
    value_usd: Decimal | None


_CREATE = """
INSERT INTO coinpulse.portfolios (name, base_currency, rate_id, note) VALUES (%s, %s, %s, %s)
RETURNING portfolio_id, name, base_currency, rate_id, note, created_at
"""
_GET = """
SELECT portfolio_id, name, base_currency, rate_id, note, created_at FROM coinpulse.portfolios WHERE name = %s
"""
_LIST = """
SELECT p.portfolio_id, p.name, p.base_currency, p.rate_id, p.note, p.created_at, count(t.transaction_id)
FROM coinpulse.portfolios p LEFT JOIN coinpulse.portfolio_transactions t USING (portfolio_id)
GROUP BY p.portfolio_id ORDER BY p.name
"""
_DELETE = "DELETE FROM coinpulse.portfolios WHERE portfolio_id = %s"
_COUNT = "SELECT count(*) FROM coinpulse.portfolio_transactions WHERE portfolio_id = %s"
_DELETE_TX = "DELETE FROM coinpulse.portfolio_transactions WHERE portfolio_id = %s AND transaction_id = %s"
# CoinCap lists fiat and crypto rates together; a symbol may name both (prefer the fiat one).
_FIND_RATE = """
SELECT rate_id, symbol FROM coinpulse.rate_snapshots
WHERE symbol = %s OR rate_id = %s
ORDER BY (type = 'fiat') DESC NULLS LAST, time DESC
LIMIT 1
"""
_ASSET_BY_ID = "SELECT asset_id FROM coinpulse.assets WHERE asset_id = %s"
_ASSET_BY_SYMBOL = """
SELECT asset_id FROM coinpulse.assets WHERE upper(symbol) = upper(%s) ORDER BY rank NULLS LAST, asset_id
"""
# The nearest 1-minute candle: the close of the last one starting at or before the time (the last price
# up to its end), or the open of the first one after it; only candles within the tolerance are read.
_NEAREST_CANDLES = """
(SELECT 'before', c.bucket, c.close::numeric FROM coinpulse.candles_1m c
 WHERE c.asset_id = %(asset)s AND c.bucket <= %(at)s AND c.bucket >= %(lo)s ORDER BY c.bucket DESC LIMIT 1)
UNION ALL
(SELECT 'after', c.bucket, c.open::numeric FROM coinpulse.candles_1m c
 WHERE c.asset_id = %(asset)s AND c.bucket > %(at)s AND c.bucket <= %(hi)s ORDER BY c.bucket LIMIT 1)
"""
_TRADES = """
SELECT transaction_id, time, asset_id, quantity, price_usd, fee_usd FROM coinpulse.portfolio_transactions
WHERE portfolio_id = %s ORDER BY time, quantity < 0, transaction_id
"""
_TRANSACTIONS = """
SELECT transaction_id, time, asset_id, quantity, price_usd, price_source, fee_usd, note
FROM coinpulse.portfolio_transactions WHERE portfolio_id = %s ORDER BY time, quantity < 0, transaction_id
"""
_MAX_ID = "SELECT coalesce(max(transaction_id), 0) FROM coinpulse.portfolio_transactions"
# One statement for the whole batch: the holding check runs once, on the result.
_INSERT = """
INSERT INTO coinpulse.portfolio_transactions (portfolio_id, time, asset_id, quantity, price_usd, price_source,
                                              fee_usd, note)
SELECT %s, u.time, u.asset_id, u.quantity, u.price_usd, u.price_source, u.fee_usd, u.note
FROM unnest(%s::timestamptz[], %s::text[], %s::numeric[], %s::numeric[], %s::text[], %s::numeric[], %s::text[])
     WITH ORDINALITY AS u(time, asset_id, quantity, price_usd, price_source, fee_usd, note, n)
ORDER BY u.n
RETURNING transaction_id
"""
_HOLDINGS = """
SELECT asset_id, symbol, quantity, avg_cost, cost_basis, price, market_value, unrealized_pnl, realized_pnl, fees,
       price_time, rate_usd
FROM coinpulse.portfolio_holdings WHERE portfolio_id = %s
ORDER BY quantity = 0, market_value_usd DESC NULLS LAST, asset_id
"""
_VALUE = "SELECT time, value, value_usd FROM coinpulse.portfolio_value(%s, %s, %s, %s::interval)"
_FIRST_TIMES = """
SELECT asset_id, min(time) FROM coinpulse.portfolio_transactions WHERE portfolio_id = %s GROUP BY asset_id
"""


def _portfolio(row: Sequence[Any]) -> Portfolio:
    return Portfolio(int(row[0]), str(row[1]), str(row[2]), row[3], row[4], row[5])


def resolve_currency(conn: Conn, text: str) -> tuple[str, str | None]:
    """(symbol, CoinCap rate_id) for ``USD`` or a currency CoinCap has a stored rate for (symbol or id)."""
    raw = text.strip()
    if raw.upper() == USD or raw.lower() == "united-states-dollar":
        return USD, None
    if not _CURRENCY.match(raw):
        raise PortfolioError(f"currency {raw!r} is not a symbol like EUR or a CoinCap rate id like euro")
    row = conn.execute(_FIND_RATE, (raw.upper(), raw.lower())).fetchone()
    if row is None or not row[1] or not re.match(r"^[A-Z0-9]{1,12}$", str(row[1])):
        raise PortfolioError(f"no CoinCap rate for currency {raw!r} is stored (table rate_snapshots): let the "
                             "collector poll /rates first (`coinpulse run`), or use USD")
    return str(row[1]), str(row[0])


def create_portfolio(conn: Conn, name: str, currency: str = USD, note: str | None = None) -> Portfolio:
    symbol, rate_id = resolve_currency(conn, currency)
    try:
        with conn.transaction():
            row = conn.execute(_CREATE, (name, symbol, rate_id, note)).fetchone()
    except psycopg.errors.UniqueViolation:
        raise PortfolioError(f"a portfolio named {name!r} exists already") from None
    except psycopg.errors.CheckViolation:
        raise PortfolioError(f"portfolio name {name!r} is not allowed: 1-100 characters, no control characters, "
                             "no leading or trailing spaces") from None
    assert row is not None
    return _portfolio(row)


def get_portfolio(conn: Conn, name: str) -> Portfolio:
    row = conn.execute(_GET, (name,)).fetchone()
    if row is None:
        raise PortfolioError(f"no portfolio named {name!r} (`coinpulse portfolio list` shows them; "
                             "`coinpulse portfolio create NAME` makes one)")
    return _portfolio(row)


def list_portfolios(conn: Conn) -> list[tuple[Portfolio, int]]:
    return [(_portfolio(row), int(row[6])) for row in conn.execute(_LIST).fetchall()]


def count_transactions(conn: Conn, portfolio: Portfolio) -> int:
    row = conn.execute(_COUNT, (portfolio.portfolio_id,)).fetchone()
    return int(row[0]) if row else 0


def delete_portfolio(conn: Conn, portfolio: Portfolio) -> None:
    """Delete the portfolio and its transactions."""
    conn.execute(_DELETE, (portfolio.portfolio_id,))


def delete_transaction(conn: Conn, portfolio: Portfolio, transaction_id: int) -> None:
    """Delete one transaction; refused if a later sell would then sell more than is held."""
    try:
        with conn.transaction():
            cur = conn.execute(_DELETE_TX, (portfolio.portfolio_id, transaction_id))
    except psycopg.errors.CheckViolation as exc:
        raise PortfolioError(_first_line(exc)) from None
    if cur.rowcount == 0:
        raise PortfolioError(f"portfolio {portfolio.name!r} has no transaction {transaction_id}")


def resolve_asset(conn: Conn, text: str) -> str | None:
    """The asset id named by ``text`` (a CoinCap id, or a symbol only one stored asset has); None if unknown.

    PortfolioError if a symbol is ambiguous."""
    raw = text.strip()
    row = conn.execute(_ASSET_BY_ID, (raw.lower(),)).fetchone()
    if row is not None:
        return str(row[0])
    ids = [str(r[0]) for r in conn.execute(_ASSET_BY_SYMBOL, (raw,)).fetchall()]
    if len(ids) > 1:
        raise PortfolioError(f"symbol {raw!r} names several assets ({', '.join(ids)}): use the asset id")
    return ids[0] if ids else None


def price_near(conn: Conn, asset_id: str, at: datetime, tolerance: timedelta) -> Decimal | None:
    """The stored price of ``asset_id`` nearest to ``at`` (from the 1-minute candles), if one is within
    ``tolerance``: the close of the candle at or before ``at`` (distance from its end, 0 inside it) or the open
    of the next one (distance from its start), whichever is nearer."""
    best: tuple[timedelta, Decimal] | None = None
    window = {"asset": asset_id, "at": at, "lo": at - tolerance - timedelta(minutes=1), "hi": at + tolerance}
    for side, bucket, price in conn.execute(_NEAREST_CANDLES, window).fetchall():
        # before: distance from the candle's end (0 inside it); after: from its start
        distance = max(timedelta(0), at - (bucket + timedelta(minutes=1))) if side == "before" else bucket - at
        if best is None or distance < best[0]:
            best = (distance, Decimal(price))
    if best is None or best[0] > tolerance:
        return None
    return best[1]


def stored_trades(conn: Conn, portfolio: Portfolio) -> list[Trade]:
    return [Trade(row[1], row[2], row[3], row[4], row[5], seq=int(row[0]), ref=f"transaction {row[0]}")
            for row in conn.execute(_TRADES, (portfolio.portfolio_id,)).fetchall()]


def transactions(conn: Conn, portfolio: Portfolio) -> list[tuple[int, Transaction]]:
    return [(int(r[0]), Transaction(r[1], r[2], r[3], r[4], r[6], r[5], r[7]))
            for r in conn.execute(_TRANSACTIONS, (portfolio.portfolio_id,)).fetchall()]


def check_holdings(conn: Conn, portfolio: Portfolio, new: Sequence[Transaction]) -> list[tuple[int, str]]:
    """(index into ``new``, reason) for each new transaction that would sell more than is held at some
    point, against what is stored (``find_oversells``), in the order ``record`` would store them."""
    row = conn.execute(_MAX_ID).fetchone()
    base = int(row[0]) if row else 0
    trades = [Trade(t.time, t.asset_id, t.quantity, t.price_usd, t.fee_usd, seq=base + i + 1, ref=t.ref)
              for i, t in enumerate(new)]
    bad = find_oversells(stored_trades(conn, portfolio), trades)
    index = {id(t): i for i, t in enumerate(trades)}
    return sorted((index[id(trade)], why) for trade, why in bad)


def record(conn: Conn, portfolio: Portfolio, new: Sequence[Transaction]) -> list[int]:
    """Store ``new`` in one statement (all or nothing); their transaction ids, in order."""
    if not new:
        return []
    columns = (
        [t.time for t in new], [t.asset_id for t in new], [t.quantity for t in new], [t.price_usd for t in new],
        [t.price_source for t in new], [t.fee_usd for t in new], [t.note for t in new])
    try:
        with conn.transaction():
            rows = conn.execute(_INSERT, (portfolio.portfolio_id, *columns)).fetchall()
    except psycopg.errors.ForeignKeyViolation:
        unknown = sorted({t.asset_id for t in new if resolve_asset(conn, t.asset_id) is None})
        raise PortfolioError(f"unknown asset(s) {', '.join(unknown) or '?'}: not in coinpulse.assets") from None
    except (psycopg.errors.CheckViolation, psycopg.errors.NotNullViolation) as exc:
        raise PortfolioError(_first_line(exc)) from None
    return [int(r[0]) for r in rows]


def holdings(conn: Conn, portfolio: Portfolio) -> list[Holding]:
    return [Holding(*row) for row in conn.execute(_HOLDINGS, (portfolio.portfolio_id,)).fetchall()]


def value_series(conn: Conn, portfolio: Portfolio, start: datetime, end: datetime,
                 bucket: timedelta | None = None) -> list[ValuePoint]:
    """``portfolio_value(name, start, end, bucket)``: value at each bucket's close (bucket None: hourly up to
    31 days, daily beyond)."""
    rows = conn.execute(_VALUE, (portfolio.name, start, end, bucket)).fetchall()
    return [ValuePoint(row[0], row[1], row[2]) for row in rows]


def first_transactions(conn: Conn, portfolio: Portfolio) -> dict[str, datetime]:
    """The time of each asset's first transaction in the portfolio."""
    return {str(r[0]): r[1] for r in conn.execute(_FIRST_TIMES, (portfolio.portfolio_id,)).fetchall()}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
