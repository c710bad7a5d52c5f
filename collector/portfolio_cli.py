"""`coinpulse portfolio ...`: argument parsing and output; the work is in collector/portfolio.py and
collector/history.py. Like cli.py, this builds objects from Settings (a one-shot command).

Progress and notes go to stderr, results to stdout (so ``coinpulse portfolio value`` can be piped).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from collector.coincap.rest import CoinCapRest
    from collector.history import HistoryTiers
    from collector.portfolio import Conn, CsvRow, Holding, Portfolio, RowError, Transaction
    from collector.settings import Settings
    from collector.writer import BatchWriter

__all__ = ["add_portfolio_parser", "cmd_portfolio", "parse_bucket", "parse_since"]

_RELATIVE = re.compile(r"^(\d+)([mhdwy])$")
_UNITS = {"m": timedelta(minutes=1), "h": timedelta(hours=1), "d": timedelta(days=1), "w": timedelta(weeks=1),
          "y": timedelta(days=365)}


def parse_since(text: str, now: datetime) -> datetime:
    """``30d``, ``12h``, ``2w``, ``1y`` (before now), or an ISO 8601 date / date-time (UTC if no offset)."""
    from collector.portfolio import parse_time

    match = _RELATIVE.match(text.strip())
    if match:
        return now - int(match.group(1)) * _UNITS[match.group(2)]
    return parse_time(text, now)


def parse_bucket(text: str) -> timedelta:
    """``15m``, ``1h``, ``1d``, ``1w``."""
    match = _RELATIVE.match(text.strip())
    if not match or match.group(2) == "y" or int(match.group(1)) == 0:
        raise ValueError(f"bucket {text!r}: give a width like 15m, 1h, 1d or 1w")
    return int(match.group(1)) * _UNITS[match.group(2)]


def add_portfolio_parser(sub: Any) -> None:
    """Register ``portfolio`` and its actions on the ``coinpulse`` sub-parsers."""
    parser = sub.add_parser(
        "portfolio", help="record holdings and transactions; show holdings, P&L and value over time",
        description="Portfolios: transactions (buys, sells, CSV imports), holdings with average cost and P&L "
                    "(average-cost method), value over time. Prices and fees are in USD; a portfolio's currency "
                    "is how amounts are shown. See README.md, 'Portfolios'.")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    p = actions.add_parser("create", help="create a portfolio")
    p.add_argument("name")
    p.add_argument("--currency", default="USD",
                   help="currency amounts are shown in: USD (default) or a CoinCap rate symbol such as EUR")
    p.add_argument("--note")

    actions.add_parser("list", help="list portfolios")

    for action, verb in (("buy", "bought"), ("sell", "sold")):
        p = actions.add_parser(action, help=f"record that QUANTITY of ASSET was {verb}")
        p.add_argument("name", help="portfolio")
        p.add_argument("asset", help="CoinCap asset id (bitcoin) or a unique symbol (BTC)")
        p.add_argument("quantity", help="how much, a positive number")
        p.add_argument("--price", help="USD per unit; default: the stored price nearest to --time (from candles)")
        p.add_argument("--fee", default="0", help="fee in USD (default 0)")
        p.add_argument("--time", help="when (ISO 8601; UTC if no offset); default now")
        p.add_argument("--note")

    p = actions.add_parser("import", help="import transactions from a CSV file (all or nothing)")
    p.add_argument("name", help="portfolio")
    p.add_argument("file", type=Path, help="CSV with a header: time,asset,quantity[,price][,fee][,note]")

    p = actions.add_parser("show", help="holdings, average cost, market value, unrealized and realized P&L")
    p.add_argument("name", help="portfolio")
    p.add_argument("--transactions", action="store_true", help="also list the transactions")
    p.add_argument("--no-history", action="store_true", help="do not fetch missing history from CoinCap")

    p = actions.add_parser("value", help="value over time (at each bucket's close)")
    p.add_argument("name", help="portfolio")
    p.add_argument("--from", dest="start", help="start: ISO date/time or 30d, 12h, 1y ago; default: the first "
                                               "transaction")
    p.add_argument("--to", dest="end", help="end: ISO date/time or 1d ago; default now")
    p.add_argument("--bucket", help="bucket width such as 15m, 1h, 1d; default hourly up to 31 days, daily beyond")
    p.add_argument("--no-history", action="store_true", help="do not fetch missing history from CoinCap")

    p = actions.add_parser("delete", help="delete a portfolio (or one transaction of it)")
    p.add_argument("name", help="portfolio")
    p.add_argument("--transaction", type=int, metavar="ID", help="delete only this transaction (see show "
                                                                 "--transactions)")
    p.add_argument("--yes", action="store_true", help="confirm deleting a portfolio that has transactions")

    parser.set_defaults(func=cmd_portfolio)


# -- the command -------------------------------------------------------------------------------------------

@dataclass
class _Context:
    settings: Settings
    conn: Conn
    now: datetime
    tiers: HistoryTiers
    out: TextIO
    err: TextIO
    _writer: BatchWriter | None = None

    def writer(self) -> BatchWriter:
        from collector.buffer import RecordQueue
        from collector.metrics import Metrics
        from collector.writer import BatchWriter

        if self._writer is None:
            self._writer = BatchWriter(self.settings.database_url.get_secret_value(), RecordQueue(1), Metrics())
        return self._writer

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def cmd_portfolio(settings: Settings, args: argparse.Namespace, *, out: TextIO | None = None,
                  err: TextIO | None = None, now: datetime | None = None) -> int:
    from collector.db.connect import connect, require_schema
    from collector.errors import ConfigError, SchemaNotMigrated
    from collector.history import HistoryTiers

    try:
        tiers = HistoryTiers.parse(settings.history_intervals)
    except ValueError as exc:
        raise ConfigError(f"COINPULSE_HISTORY_INTERVALS: {exc}") from None
    with connect(settings.database_url.get_secret_value(), autocommit=True,
                 application_name="coinpulse-portfolio") as conn:
        require_schema(conn)
        row = conn.execute("SELECT to_regclass('coinpulse.portfolio_transactions') IS NOT NULL").fetchone()
        if not row or not row[0]:
            raise SchemaNotMigrated("the database has no portfolio tables yet: run `coinpulse migrate`")
        ctx = _Context(settings, conn, now or datetime.now(UTC), tiers, out or sys.stdout, err or sys.stderr)
        try:
            action: Callable[[_Context, argparse.Namespace], int] = _ACTIONS[args.action]
            return action(ctx, args)
        finally:
            ctx.close()


def _create(ctx: _Context, args: argparse.Namespace) -> int:
    from collector.portfolio import create_portfolio

    p = create_portfolio(ctx.conn, args.name, args.currency, args.note)
    rate = "" if p.rate_id is None else f" (CoinCap rate {p.rate_id})"
    print(f"created portfolio {p.name!r} in {p.currency}{rate}", file=ctx.out)
    return 0


def _list(ctx: _Context, args: argparse.Namespace) -> int:
    from collector.portfolio import list_portfolios

    rows = list_portfolios(ctx.conn)
    if not rows:
        print("no portfolios yet: `coinpulse portfolio create NAME`", file=ctx.out)
        return 0
    _table(ctx.out, ["portfolio", "currency", "transactions", "created"],
           [[p.name, p.currency, str(n), _iso(p.created_at)] for p, n in rows], right={2})
    return 0


def _trade(ctx: _Context, args: argparse.Namespace) -> int:
    from collector.portfolio import CsvRow, PortfolioError, get_portfolio, parse_decimal, parse_time

    portfolio = get_portfolio(ctx.conn, args.name)
    try:
        quantity = parse_decimal(args.quantity, "quantity", positive=True)
        price = None if args.price is None else parse_decimal(args.price, "price", positive=True)
        fee = parse_decimal(args.fee, "fee", non_negative=True)
        moment = ctx.now if args.time is None else parse_time(args.time, ctx.now)
    except ValueError as exc:
        raise PortfolioError(str(exc)) from None
    row = CsvRow(0, moment, args.asset, quantity if args.action == "buy" else -quantity, price, fee, args.note)
    stored = _add(ctx, portfolio, [row], single=True)
    t, tx_id = stored[0]
    source = "from the stored candles" if t.price_source == "candle" else "given"
    verb = "bought" if t.quantity > 0 else "sold"
    print(f"{portfolio.name}: {verb} {_qty(abs(t.quantity))} {t.asset_id} at {_money(t.price_usd, 8)} USD ({source}), "
          f"fee {_money(t.fee_usd)} USD, {_iso(t.time)}: transaction {tx_id}", file=ctx.out)
    return 0


def _import(ctx: _Context, args: argparse.Namespace) -> int:
    from collector.portfolio import PortfolioError, get_portfolio, parse_csv

    portfolio = get_portfolio(ctx.conn, args.name)
    try:
        text = args.file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PortfolioError(f"cannot read {args.file}: {getattr(exc, 'strerror', None) or exc}") from None
    rows, errors = parse_csv(text, ctx.now)
    stored = _add(ctx, portfolio, rows, parse_errors=errors)
    priced = sum(t.price_source == "candle" for t, _ in stored)
    print(f"{portfolio.name}: imported {len(stored)} transactions from {args.file}"
          + (f" ({priced} priced from the stored candles)" if priced else ""), file=ctx.out)
    return 0


def _add(ctx: _Context, portfolio: Portfolio, rows: Sequence[CsvRow], *, single: bool = False,
         parse_errors: Sequence[RowError] = ()) -> list[tuple[Transaction, int]]:
    """Resolve, price, check and store ``rows`` all or nothing; PortfolioError (after printing one line per
    bad row for imports) if any is bad."""
    from collector.history import INTERVAL_STEP
    from collector.portfolio import (
        PortfolioError,
        RowError,
        Transaction,
        check_holdings,
        price_near,
        record,
        resolve_asset,
    )

    errors = list(parse_errors)
    resolved: list[tuple[CsvRow, str]] = []
    unknown: dict[str, list[CsvRow]] = {}
    for row in rows:
        try:
            asset_id = resolve_asset(ctx.conn, row.asset)
        except PortfolioError as exc:
            errors.append(RowError(row.line, str(exc)))
            continue
        if asset_id is None:
            unknown.setdefault(row.asset, []).append(row)
        else:
            resolved.append((row, asset_id))
    for name, learned in _learn_assets(ctx, list(unknown)).items():
        for row in unknown[name]:
            if learned is None:
                errors.append(RowError(row.line, f"unknown asset {name!r}: CoinPulse has not seen it (use the "
                                                 "CoinCap id, e.g. bitcoin)"))
            else:
                resolved.append((row, learned))
    if errors:
        _fail(ctx, errors, single)
    wanted: dict[str, datetime] = {}
    for row, asset_id in resolved:
        wanted[asset_id] = min(row.time, wanted.get(asset_id, row.time))
    _ensure_history(ctx, wanted)
    new: list[Transaction] = []
    lines: list[int] = []
    for row, asset_id in sorted(resolved, key=lambda item: item[0].line):
        price, source = row.price, "user"
        if price is None:
            tolerance = max(timedelta(hours=1), INTERVAL_STEP[ctx.tiers.interval_at(row.time, ctx.now)])
            price, source = price_near(ctx.conn, asset_id, row.time, tolerance), "candle"
            if price is None:
                errors.append(RowError(row.line, f"no price given, and no stored price of {asset_id} within "
                                                 f"{_span(tolerance)} of {_iso(row.time)}: give the price"))
                continue
        new.append(Transaction(row.time, asset_id, row.quantity, price, row.fee, source, row.note,
                               f"line {row.line}"))
        lines.append(row.line)
    if not errors:
        errors += [RowError(lines[i], why) for i, why in check_holdings(ctx.conn, portfolio, new)]
    if errors:
        _fail(ctx, errors, single)
    ids = record(ctx.conn, portfolio, new)
    return list(zip(new, ids, strict=True))


def _fail(ctx: _Context, errors: Sequence[RowError], single: bool) -> None:
    from collector.portfolio import PortfolioError

    if single:
        raise PortfolioError("; ".join(e.reason for e in errors))
    for error in sorted(errors, key=lambda e: e.line):
        print(str(error), file=ctx.err)
    raise PortfolioError(f"{len(errors)} bad row(s), nothing imported")


def _learn_assets(ctx: _Context, names: Sequence[str]) -> dict[str, str | None]:
    """Assets CoinPulse has not seen: ask CoinCap (with a key) and store what it knows; name -> id or None."""
    from collector.coincap.parse import is_valid_id
    from collector.errors import CoinCapError, CoinCapNotFound

    found: dict[str, str | None] = dict.fromkeys(names)
    candidates = [n for n in names if is_valid_id(n.strip().lower())]
    if not candidates:
        return found
    rest = _rest(ctx)
    if rest is None:
        print(f"assets: COINCAP_API_KEY is not set, so unknown assets ({', '.join(candidates)}) cannot be looked "
              "up on CoinCap", file=ctx.err)
        return found
    with rest:
        for name in candidates:
            asset_id = name.strip().lower()
            try:
                result = rest.asset(asset_id)
            except CoinCapNotFound:
                continue
            except CoinCapError as exc:
                print(f"assets: cannot look up {asset_id} on CoinCap: {exc}", file=ctx.err)
                continue
            if result.records:
                ctx.writer().write(result.records)
                found[name] = asset_id
                print(f"assets: added {asset_id} from CoinCap", file=ctx.err)
    return found


def _rest(ctx: _Context) -> CoinCapRest | None:
    from collector.coincap.rest import CoinCapRest

    key = ctx.settings.coincap_api_key
    if key is None or not key.get_secret_value():
        return None
    return CoinCapRest(ctx.settings.coincap_rest_url, key.get_secret_value(), timeout=ctx.settings.http_timeout)


def _ensure_history(ctx: _Context, wanted: dict[str, datetime]) -> None:
    """Fetch from CoinCap the history before what is stored that ``wanted`` (asset -> since) reaches into."""
    from collector.errors import CoinCapError
    from collector.history import HistoryProgress, import_history, missing_history

    missing = missing_history(ctx.conn, wanted, now=ctx.now, tiers=ctx.tiers)
    if not missing:
        return
    rest = _rest(ctx)
    if rest is None:
        what = ", ".join(f"{m.asset_id} from {_iso(m.start)}" for m in missing)
        print(f"history: COINCAP_API_KEY is not set, so history before the stored data cannot be fetched ({what}); "
              "using what is stored", file=ctx.err)
        return

    def progress(p: HistoryProgress) -> None:
        print(f"history {p.asset_id}: {p.done}/{p.total} requests done ({p.interval} up to {_iso(p.end)}), "
              f"{p.points} points, {p.written} new", file=ctx.err)

    with rest:
        for m in missing:
            print(f"history {m.asset_id}: fetching {_iso(m.start)} .. {_iso(m.end)} from CoinCap", file=ctx.err)
            try:
                import_history(rest, ctx.writer(), ctx.conn, m.asset_id, m.start, m.end, now=ctx.now,
                               tiers=ctx.tiers, points_per_request=ctx.settings.history_points_per_request,
                               on_progress=progress)
            except CoinCapError as exc:
                print(f"history {m.asset_id}: cannot fetch ({exc}); using what is stored", file=ctx.err)


def _show(ctx: _Context, args: argparse.Namespace) -> int:
    from collector.portfolio import PortfolioError, first_transactions, get_portfolio, holdings, transactions

    portfolio = get_portfolio(ctx.conn, args.name)
    if not args.no_history:
        _ensure_history(ctx, first_transactions(ctx.conn, portfolio))
    rows = holdings(ctx.conn, portfolio)
    if not rows:
        print(f"portfolio {portfolio.name!r} ({portfolio.currency}) has no transactions yet", file=ctx.out)
        return 0
    if rows[0].rate_usd is None:
        raise PortfolioError(f"no CoinCap rate for {portfolio.currency} is stored (rate_snapshots): let the collector "
                             "poll /rates (`coinpulse run`)")
    cur = portfolio.currency
    header = f"portfolio {portfolio.name!r}, amounts in {cur}"
    if portfolio.rate_id is not None:
        header += f" (1 {cur} = {_money(rows[0].rate_usd, 6)} USD, latest CoinCap rate)"
    print(header + "; average-cost method", file=ctx.out)
    _table(ctx.out, ["asset", "quantity", "avg cost", "price", "market value", "unrealized P&L", "realized P&L",
                     "fees", "price as of"],
           [_holding_cells(h) for h in rows] + [_total_cells(rows)], right=set(range(1, 8)))
    unpriced = [h.asset_id for h in rows if h.quantity != 0 and h.price is None]
    if unpriced:
        print(f"no stored price for {', '.join(unpriced)}: market value and unrealized P&L unknown", file=ctx.err)
    if args.transactions:
        print("", file=ctx.out)
        _table(ctx.out, ["id", "time", "asset", "quantity", "price USD", "price from", "fee USD", "note"],
               [[str(i), _iso(t.time), t.asset_id, _qty(t.quantity), _money(t.price_usd, 8), t.price_source,
                 _money(t.fee_usd), t.note or ""] for i, t in transactions(ctx.conn, portfolio)],
               right={0, 3, 4, 6})
    return 0


def _holding_cells(h: Holding) -> list[str]:
    return [h.asset_id, _qty(h.quantity), _money(h.avg_cost, 8), _money(h.price, 8), _money(h.market_value),
            _money(h.unrealized_pnl), _money(h.realized_pnl), _money(h.fees),
            "" if h.price_time is None else _iso(h.price_time)]


def _total_cells(rows: Sequence[Holding]) -> list[str]:
    def total(values: Sequence[Decimal | None]) -> str:
        return "n/a" if any(v is None for v in values) else _money(sum((v for v in values if v is not None),
                                                                        Decimal(0)))
    return ["total", "", "", "", total([h.market_value for h in rows]), total([h.unrealized_pnl for h in rows]),
            total([h.realized_pnl for h in rows]), total([h.fees for h in rows]), ""]


def _value(ctx: _Context, args: argparse.Namespace) -> int:
    from collector.portfolio import PortfolioError, first_transactions, get_portfolio, value_series

    portfolio = get_portfolio(ctx.conn, args.name)
    firsts = first_transactions(ctx.conn, portfolio)
    if not firsts:
        print(f"portfolio {portfolio.name!r} has no transactions yet", file=ctx.out)
        return 0
    try:
        end = ctx.now if args.end is None else parse_since(args.end, ctx.now)
        start = min(firsts.values()) if args.start is None else parse_since(args.start, ctx.now)
        bucket = None if args.bucket is None else parse_bucket(args.bucket)
    except ValueError as exc:
        raise PortfolioError(str(exc)) from None
    if end <= start:
        raise PortfolioError(f"--from ({_iso(start)}) must be before --to ({_iso(end)})")
    if not args.no_history:
        _ensure_history(ctx, {a: max(t, start) for a, t in firsts.items() if t < end})
    points = value_series(ctx.conn, portfolio, start, end, bucket)
    print(f"time\tvalue {portfolio.currency}", file=ctx.out)
    for point in points:
        print(f"{_iso(point.time)}\t{'n/a' if point.value is None else _money(point.value)}", file=ctx.out)
    return 0


def _delete(ctx: _Context, args: argparse.Namespace) -> int:
    from collector.portfolio import (
        PortfolioError,
        count_transactions,
        delete_portfolio,
        delete_transaction,
        get_portfolio,
    )

    portfolio = get_portfolio(ctx.conn, args.name)
    if args.transaction is not None:
        delete_transaction(ctx.conn, portfolio, args.transaction)
        print(f"{portfolio.name}: deleted transaction {args.transaction}", file=ctx.out)
        return 0
    count = count_transactions(ctx.conn, portfolio)
    if count and not args.yes:
        raise PortfolioError(f"portfolio {portfolio.name!r} has {count} transactions: add --yes to delete it "
                             "with them")
    delete_portfolio(ctx.conn, portfolio)
    print(f"deleted portfolio {portfolio.name!r} and its {count} transactions", file=ctx.out)
    return 0


_ACTIONS: dict[str, Callable[[_Context, argparse.Namespace], int]] = {
    "create": _create, "list": _list, "buy": _trade, "sell": _trade, "import": _import, "show": _show,
    "value": _value, "delete": _delete,
}


# -- formatting --------------------------------------------------------------------------------------------

def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _span(delta: timedelta) -> str:
    if delta % timedelta(days=1) == timedelta(0):
        return f"{delta.days} day" + ("s" if delta.days != 1 else "")
    hours = delta // timedelta(hours=1)
    return f"{hours} hour" + ("s" if hours != 1 else "")


def _qty(value: Decimal) -> str:
    text = format(value.normalize(), "f")
    return "0" if text in ("-0", "0") else text


def _money(value: Decimal | None, small_places: int = 2) -> str:
    """Two decimals; for amounts below 1, up to ``small_places`` significant decimals."""
    if value is None:
        return "n/a"
    if small_places > 2 and value != 0 and abs(value) < 1:
        return _qty(round(value, small_places))
    return f"{value.quantize(Decimal('0.01'), rounding=ROUND_HALF_UP):,}"


def _table(out: TextIO, header: Sequence[str], rows: Sequence[Sequence[str]], right: set[int]) -> None:
    widths = [max(len(str(r[i])) for r in (header, *rows)) for i in range(len(header))]
    for row in (header, *rows):
        cells = [str(c).rjust(w) if i in right else str(c).ljust(w) for i, (c, w) in enumerate(zip(row, widths,
                                                                                                    strict=True))]
        print("  ".join(cells).rstrip(), file=out)
