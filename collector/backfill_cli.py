"""`coinpulse backfill`: argument parsing and output; the work is in collector/gaps.py and collector/history.py.
Like cli.py, this builds objects from Settings (a one-shot command).

    coinpulse backfill --assets bitcoin,ethereum --since 2025-01-01 [--until 2025-02-01]
    coinpulse backfill --gaps [--assets bitcoin]

The first imports CoinCap history for the assets over [since, until), at the finest interval
``COINPULSE_HISTORY_INTERVALS`` allows for each age, through the batching writer (idempotent), and refreshes
the rollup windows it touched. Every request's range is logged in ``history_imports`` as soon as it is
stored, so a re-run (after Ctrl-C, a CoinCap error, or just again) skips what is done. The second fills the
gaps recorded in ``ingest_gaps`` now (open and failed ones), as the collector's backfill worker would.

Credits: before anything is fetched, the command prints its estimate; after, what the requests really cost
(each request is logged in ``backfill_credits`` as ``cli``). With ``COINPULSE_CREDIT_BUDGET`` set, an import
whose estimate exceeds what the month has left -- the budget minus what the collector's plan spends
(polls, stream, gap-backfill reserve) minus what on-demand imports spent in the last 31 days -- is refused
with one line unless ``--yes`` is given. Nothing is asked interactively, so scripts behave the same.

Progress (a tqdm bar) and notes go to stderr, the summary to stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TextIO

from collector.errors import CoinPulseError

if TYPE_CHECKING:
    from collector.coincap.rest import CoinCapRest
    from collector.gaps import Conn, MeteredHistory
    from collector.history import HistoryTiers
    from collector.settings import Settings
    from collector.writer import BatchWriter

__all__ = ["BackfillError", "add_backfill_parser", "cmd_backfill"]


class BackfillError(CoinPulseError):
    """Bad input to `coinpulse backfill`, or a failure it explains in one line."""


def add_backfill_parser(sub: Any) -> None:
    """Register ``backfill`` on the ``coinpulse`` sub-parsers."""
    parser = sub.add_parser(
        "backfill", help="import CoinCap history for assets and a time range (or fill the recorded gaps), "
                         "then refresh the affected rollups",
        description="Import CoinCap /assets/{id}/history into price_ticks (source 'history') at the finest "
                    "interval COINPULSE_HISTORY_INTERVALS allows for each age, then refresh the affected rollup "
                    "windows. Ranges imported before (history_imports) are skipped, so an interrupted run resumes "
                    "where it stopped. Needs COINCAP_API_KEY. See README.md, 'Gaps and backfill'.")
    parser.add_argument("--assets", help="comma-separated CoinCap asset ids (bitcoin,ethereum) or unique symbols")
    parser.add_argument("--since", help="start: ISO 8601 date or date-time (UTC if no offset), or 30d, 12h, 2w, 1y "
                                        "ago")
    parser.add_argument("--until", help="end (excluded), same forms; default now")
    parser.add_argument("--gaps", action="store_true",
                        help="instead: fill the gaps recorded in ingest_gaps now (open and failed ones; of --assets "
                             "only, if given)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--yes", action="store_true",
                        help="go ahead even if the estimated credits exceed what COINPULSE_CREDIT_BUDGET has left "
                             "this month")
    parser.set_defaults(func=cmd_backfill)


@dataclass
class _Run:
    settings: Settings
    conn: Conn
    rest: CoinCapRest
    writer: BatchWriter
    now: datetime
    out: TextIO
    err: TextIO
    progress: bool
    yes: bool = False

    def source(self) -> MeteredHistory:
        """The REST client, each request's credits logged as on-demand (``cli``)."""
        from collector.gaps import MeteredHistory

        return MeteredHistory(self.rest, self.conn, purpose="cli")


def cmd_backfill(settings: Settings, args: argparse.Namespace, *, out: TextIO | None = None,
                 err: TextIO | None = None, now: datetime | None = None) -> int:
    from collector.buffer import RecordQueue
    from collector.coincap.rest import CoinCapRest
    from collector.db.connect import connect, require_schema
    from collector.errors import SchemaNotMigrated
    from collector.metrics import Metrics
    from collector.writer import BatchWriter

    now = now or datetime.now(UTC)
    names = _asset_names(args.assets)
    since = until = now
    if args.gaps:
        if args.since is not None or args.until is not None:
            raise BackfillError("--gaps fills the recorded gaps: it takes no --since/--until")
    else:
        if not names or args.since is None:
            raise BackfillError("give --assets and --since (e.g. --assets bitcoin --since 7d), or --gaps")
        since = _when("--since", args.since, now)
        until = now if args.until is None else min(_when("--until", args.until, now), now)
        if since >= until:
            raise BackfillError(f"--since ({_iso(since)}) must be before --until ({_iso(until)})")
    _tiers(settings)  # a bad COINPULSE_HISTORY_INTERVALS is reported before anything is fetched
    key = settings.require_api_key("`coinpulse backfill` fetches history from CoinCap")
    url = settings.database_url.get_secret_value()
    with connect(url, autocommit=True, application_name="coinpulse-backfill") as conn:
        require_schema(conn)
        row = conn.execute("SELECT to_regclass('coinpulse.history_imports') IS NOT NULL, "
                           "to_regclass('coinpulse.backfill_credits') IS NOT NULL").fetchone()
        if not row or not row[0] or not row[1]:
            raise SchemaNotMigrated("the database lacks the history_imports or backfill_credits table: "
                                    "run `coinpulse migrate`")
        writer = BatchWriter(url, RecordQueue(1), Metrics())
        try:
            with CoinCapRest(settings.coincap_rest_url, key, timeout=settings.http_timeout) as rest:
                run = _Run(settings, conn, rest, writer, now, out or sys.stdout, err or sys.stderr,
                           not args.no_progress, args.yes)
                if args.gaps:
                    return _fill_gaps(run, names)
                return _import(run, _resolve_assets(run, names), since, until)
        finally:
            writer.close()


# -- input -------------------------------------------------------------------------------------------------

def _asset_names(text: str | None) -> list[str]:
    if text is None:
        return []
    names = list(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    if not names:
        raise BackfillError(f"--assets {text!r}: give comma-separated CoinCap asset ids such as bitcoin,ethereum")
    return names


def _when(option: str, text: str, now: datetime) -> datetime:
    from collector.portfolio_cli import parse_since

    try:
        return parse_since(text, now)
    except ValueError as exc:
        raise BackfillError(f"{option}: {exc}; or give an age like 30d, 12h, 2w, 1y") from None


def _tiers(settings: Settings) -> HistoryTiers:
    from collector.errors import ConfigError
    from collector.history import HistoryTiers

    try:
        return HistoryTiers.parse(settings.history_intervals)
    except ValueError as exc:
        raise ConfigError(f"COINPULSE_HISTORY_INTERVALS: {exc}") from None


def _resolve_assets(run: _Run, names: Sequence[str]) -> list[str]:
    """Asset ids for ``names`` (ids or unique symbols of stored assets; unknown ids are looked up on CoinCap and
    stored); BackfillError naming every unknown one, before anything is fetched."""
    from collector.coincap.parse import is_valid_id
    from collector.errors import CoinCapError, CoinCapNotFound
    from collector.portfolio import PortfolioError, resolve_asset

    found: list[str] = []
    unknown: list[str] = []
    for name in names:
        try:
            asset_id = resolve_asset(run.conn, name)
        except PortfolioError as exc:
            raise BackfillError(str(exc)) from None
        if asset_id is None and is_valid_id(name.lower()):
            try:
                result = run.rest.asset(name.lower())
            except CoinCapNotFound:
                result = None
            except CoinCapError as exc:
                raise BackfillError(f"cannot look up {name!r} on CoinCap: {exc}") from None
            if result is not None and result.records:
                run.writer.write(result.records)
                asset_id = name.lower()
                print(f"assets: added {asset_id} from CoinCap", file=run.err)
        if asset_id is None:
            unknown.append(name)
        elif asset_id not in found:
            found.append(asset_id)
    if unknown:
        raise BackfillError(f"unknown asset{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}: neither "
                            "stored nor known to CoinCap (use CoinCap ids such as bitcoin, ethereum)")
    return found


# -- importing a range -------------------------------------------------------------------------------------

def _import(run: _Run, assets: Sequence[str], since: datetime, until: datetime) -> int:
    from collector.errors import CoinCapError
    from collector.gaps import estimate_credits, plan_backfill
    from collector.history import import_history

    tiers = _tiers(run.settings)
    ppr = run.settings.history_points_per_request
    plans = [plan_backfill(run.conn, a, since, until, now=run.now, tiers=tiers, points_per_request=ppr)
             for a in assets]
    total = sum(len(p.chunks) for p in plans)
    for plan in plans:
        skipped = f"; {_ranges(len(plan.skipped))} imported before, skipped" if plan.skipped else ""
        what = f"{len(plan.chunks)} requests ({plan.intervals})" if plan.chunks else "nothing to fetch"
        print(f"backfill {plan.asset_id}: {_iso(plan.start)} .. {_iso(plan.end)}: {what}{skipped}", file=run.err)
    _check_credits(run, total, estimate_credits(c for p in plans for c in p.chunks))
    source = run.source()
    totals = [0, 0, 0]  # requests, points, new rows
    with _progress(run, total, "requests") as bar:
        for plan in plans:
            points = written = requests = 0
            for number, chunk in enumerate(plan.chunks, 1):
                bar.set_description(f"{plan.asset_id} {chunk.interval}")
                try:
                    result = import_history(source, run.writer, run.conn, plan.asset_id, chunk.start, chunk.end,
                                            now=run.now, tiers=tiers, points_per_request=ppr)
                except CoinCapError as exc:
                    raise BackfillError(
                        f"{plan.asset_id}: CoinCap failed at request {number} of {len(plan.chunks)} ({exc}); what "
                        f"was fetched before is stored ({source.credits} credits spent): run the same command again "
                        "to resume") from None
                requests, points, written = requests + result.requests, points + result.points, \
                    written + result.written
                bar.update(1)
            totals = [totals[0] + requests, totals[1] + points, totals[2] + written]
            bar.clear()
            print(f"{plan.asset_id}: {_iso(plan.start)} .. {_iso(plan.end)}: {requests} requests, {points} points, "
                  f"{written} new rows" + (f" ({plan.intervals})" if plan.chunks else "")
                  + (f", {_ranges(len(plan.skipped))} imported before skipped" if plan.skipped else ""), file=run.out)
    print(f"backfill done: {len(plans)} assets, {totals[0]} requests, {totals[1]} points, {totals[2]} new rows, "
          f"{source.credits} credits; rollups refreshed", file=run.out)
    return 0


def _check_credits(run: _Run, requests: int, estimate: int) -> None:
    """Print the estimate; with a budget, refuse (BackfillError) an import the month has no credits left for,
    unless --yes."""
    from datetime import timedelta

    from collector.app import credit_planner
    from collector.budget import DAYS_PER_MONTH
    from collector.gaps import credits_spent

    if not requests:
        return
    print(f"backfill: {requests} requests to CoinCap, about {estimate:,} credits (estimated from the points "
          "asked for)", file=run.err)
    budget = run.settings.credit_budget
    if not budget:
        return
    planner = credit_planner(run.settings, websocket=run.settings.resolved_feed == "ws")
    planned = round(planner.credits_per_day() * DAYS_PER_MONTH) if planner is not None else 0
    used = sum(c for _, c in credits_spent(run.conn, "cli", run.now - timedelta(days=DAYS_PER_MONTH)))
    left = budget - planned - used
    why = (f"COINPULSE_CREDIT_BUDGET={budget:,} a month: the collector's plan spends {planned:,} (see `coinpulse "
           f"doctor`) and on-demand imports spent {used:,} in the last {DAYS_PER_MONTH} days, leaving "
           f"{max(0, left):,}")
    if estimate <= left:
        print(f"backfill: within {why}", file=run.err)
        return
    if run.yes:
        print(f"backfill: about {estimate:,} credits is more than {why}; going ahead (--yes)", file=run.err)
        return
    raise BackfillError(f"about {estimate:,} credits is more than {why}; pass --yes to spend them anyway, or "
                        "import fewer assets or a shorter range")


# -- filling recorded gaps ---------------------------------------------------------------------------------

def _fill_gaps(run: _Run, names: Sequence[str]) -> int:
    from collector.gaps import FillResult, estimate_credits, fill_gaps, open_gaps, plan_backfill

    assets = _resolve_assets(run, names) if names else None
    gaps = open_gaps(run.conn, until=run.now, statuses=("open", "failed"), assets=assets)
    if not gaps:
        print("backfill: no open gaps" + (f" for {', '.join(assets)}" if assets else ""), file=run.out)
        return 0
    print(f"backfill: {len(gaps)} gaps to fill", file=run.err)
    tiers, ppr = _tiers(run.settings), run.settings.history_points_per_request
    chunks = [c for g in gaps for c in plan_backfill(run.conn, g.asset_id, g.start, g.end, now=run.now, tiers=tiers,
                                                      points_per_request=ppr).chunks]
    _check_credits(run, len(chunks), estimate_credits(chunks))
    source = run.source()
    failed = 0

    def report(result: FillResult, bar: Any) -> None:
        nonlocal failed
        g = result.gap
        bar.clear()
        if result.status == "done":
            line = f"gap {g.id} {g.asset_id} {_iso(g.start)} .. {_iso(g.end)} ({g.reason}): {result.rows} rows " \
                   f"({result.intervals})"
        elif result.status == "skipped":
            line = f"gap {g.id} {g.asset_id}: being filled by another process, skipped"
        else:
            failed += 1
            line = f"gap {g.id} {g.asset_id} {_iso(g.start)} .. {_iso(g.end)}: failed: {result.error}"
        print(line, file=run.out)
        bar.update(1)

    with _progress(run, len(gaps), "gaps") as bar:
        fill_gaps(run.conn, source, run.writer, gaps, now=run.now, tiers=tiers, points_per_request=ppr,
                  on_result=lambda result: report(result, bar))
    print(f"backfill done: {len(gaps) - failed} of {len(gaps)} gaps filled, {source.credits} credits; rollups "
          "refreshed", file=run.out)
    return 1 if failed else 0


# -- output ------------------------------------------------------------------------------------------------

_CHATTY = ("collector.history", "collector.db.rollups", "collector.gaps")
"""Loggers that say INFO for every request: quiet (WARNING) while the bar shows the same progress."""


@contextlib.contextmanager
def _progress(run: _Run, total: int, unit: str) -> Iterator[Any]:
    """A tqdm bar on stderr (unless --no-progress); log lines meanwhile print above it, not through it."""
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    bar = tqdm(total=total, unit=f" {unit}", file=run.err, disable=not run.progress or total == 0,
               dynamic_ncols=True, mininterval=0.2)
    if bar.disable:
        with bar:
            yield bar
        return
    chatty = [logging.getLogger(name) for name in _CHATTY]
    levels = [logger.level for logger in chatty]
    for logger in chatty:
        if logger.getEffectiveLevel() == logging.INFO:
            logger.setLevel(logging.WARNING)
    try:
        with bar, logging_redirect_tqdm():
            yield bar
    finally:
        for logger, level in zip(chatty, levels, strict=True):
            logger.setLevel(level)


def _ranges(n: int) -> str:
    return f"{n} range" + ("s" if n != 1 else "")


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
