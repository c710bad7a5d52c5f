"""`coinpulse thresholds ...` and `coinpulse alerting render`: argument parsing and output.

The work is in collector/thresholds.py (the table, the YAML sync) and collector/alerting/ (Grafana provisioning).
Like cli.py, this builds objects from Settings (one-shot commands). Results go to stdout, notes to stderr.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from collector.settings import Settings
    from collector.thresholds import Threshold

__all__ = ["DEFAULT_FILE", "add_alerting_parser", "add_thresholds_parser", "cmd_alerting", "cmd_thresholds"]

DEFAULT_FILE = Path("alerting/thresholds.yaml")


def add_thresholds_parser(sub: Any) -> None:
    """Register ``thresholds`` and its actions on the ``coinpulse`` sub-parsers."""
    from collector.thresholds import KINDS

    kinds = ", ".join(KINDS)
    parser = sub.add_parser(
        "thresholds", help="add, list, remove, enable, disable or sync (from YAML) user alert thresholds",
        description="User alert thresholds, stored in coinpulse.alert_thresholds; Grafana alerts on "
                    "coinpulse.alert_threshold_status. See README.md, 'Alerts'.")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    p = actions.add_parser("add", help="add a threshold", description=f"kinds: {kinds}. Examples: "
                           "`add price_below bitcoin 60000`, `add change_above ethereum 5 --window 1h`, "
                           "`add stale bitcoin --window 10m`, `add portfolio_value_below main 10000`.")
    p.add_argument("kind", help=f"one of: {kinds}")
    p.add_argument("subject", help="CoinCap asset id or unique symbol; for portfolio_* kinds a portfolio name")
    p.add_argument("value", nargs="?", help="USD for price/volume, %% for changes, the portfolio currency for "
                                            "portfolio_value_below; none for stale")
    p.add_argument("--window", help="for changes and stale: 90s, 10m, 1h, 24h, 7d")
    p.add_argument("--severity", default="warning", choices=("info", "warning", "critical"))
    p.add_argument("--owner")
    p.add_argument("--note")
    p.add_argument("--disabled", action="store_true", help="store it disabled")

    p = actions.add_parser("list", help="every threshold, with its current value and whether it is breached")
    p.add_argument("--breached", action="store_true", help="only the breached ones")

    for action, verb in (("remove", "delete"), ("enable", "enable"), ("disable", "disable")):
        p = actions.add_parser(action, help=f"{verb} thresholds by id")
        p.add_argument("ids", nargs="+", type=int, metavar="ID")

    p = actions.add_parser("sync", help="make the rows a YAML file owns match it (declarative)")
    p.add_argument("file", nargs="?", type=Path, default=DEFAULT_FILE,
                   help=f"the thresholds file (default {DEFAULT_FILE})")
    p.add_argument("--dry-run", action="store_true", help="print the differences, change nothing")

    parser.set_defaults(func=cmd_thresholds)


def add_alerting_parser(sub: Any) -> None:
    """Register ``alerting render`` on the ``coinpulse`` sub-parsers."""
    parser = sub.add_parser(
        "alerting", help="write Grafana's alerting provisioning (rules, contact points, policy) from the environment",
        description="Grafana alerting provisioning from the environment (COINPULSE_ALERT_*): see README.md, "
                    "'Alerts'. Needs no database.")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = actions.add_parser("render", help="write rules.yaml, templates.yaml, contact-points.yaml, policies.yaml")
    p.add_argument("--out", type=Path, required=True, help="directory Grafana reads as provisioning/alerting")
    p.add_argument("--check", action="store_true",
                   help="write nothing; exit 1 if the directory differs from what would be written")
    parser.set_defaults(func=cmd_alerting)


# -- alerting render -------------------------------------------------------------------------------------------

def cmd_alerting(settings: Settings, args: argparse.Namespace, *, env: dict[str, str] | None = None,
                 out: TextIO | None = None) -> int:
    from collector.alerting import render_files, write_files

    stdout = out or sys.stdout
    files = render_files(dict(os.environ) if env is None else env)
    if args.check:
        stale = [name for name, text in files.items()
                 if not (args.out / name).is_file() or (args.out / name).read_text(encoding="utf-8") != text]
        for name in stale:
            print(f"{args.out / name}: differs from what `coinpulse alerting render` writes", file=stdout)
        return 1 if stale else 0
    for path in write_files(args.out, files):
        print(f"wrote {path}", file=stdout)
    return 0


# -- thresholds ------------------------------------------------------------------------------------------------

def cmd_thresholds(settings: Settings, args: argparse.Namespace, *, out: TextIO | None = None,
                   err: TextIO | None = None) -> int:
    from collector.db.connect import connect, require_schema
    from collector.errors import SchemaNotMigrated

    stdout, stderr = out or sys.stdout, err or sys.stderr
    with connect(settings.database_url.get_secret_value(), autocommit=True,
                 application_name="coinpulse-thresholds") as conn:
        require_schema(conn)
        row = conn.execute("SELECT to_regclass('coinpulse.alert_thresholds') IS NOT NULL").fetchone()
        if not row or not row[0]:
            raise SchemaNotMigrated("the database has no alert_thresholds table yet: run `coinpulse migrate`")
        if args.action == "add":
            return _add(conn, args, stdout)
        if args.action == "list":
            return _list(conn, args, stdout)
        if args.action == "remove":
            return _remove(conn, args, stdout)
        if args.action in ("enable", "disable"):
            return _enable(conn, args, stdout, stderr)
        return _sync(conn, args, stdout)


def _add(conn: Any, args: argparse.Namespace, out: TextIO) -> int:
    from collector.thresholds import (
        ThresholdError,
        ThresholdSpec,
        add_threshold,
        describe,
        parse_value,
        parse_window,
    )

    try:
        value = None if args.value is None else parse_value(args.value)
        window = None if args.window is None else parse_window(args.window)
    except ValueError as exc:
        raise ThresholdError(str(exc)) from None
    spec = ThresholdSpec(args.kind.strip().replace("-", "_"), args.subject, value, window, args.severity,
                         args.owner, args.note, not args.disabled)
    t = add_threshold(conn, spec)
    state = "" if t.enabled else " (disabled)"
    print(f"added threshold {t.id}: {describe(t.kind, t.subject, t.value, t.window, t.unit)} [{t.severity}]{state}",
          file=out)
    return 0


def _cells(t: Threshold) -> list[str]:
    from collector.thresholds import describe, format_number

    if not t.enabled:
        current, state = "", "disabled"
    else:
        unit = "s" if t.kind == "stale" else (t.unit or "")
        current = "n/a" if t.current_value is None else f"{format_number(round(t.current_value, 6))} {unit}".strip()
        state = "BREACHED" if t.breached else "ok"
    source = f"{t.sync_source}:{t.sync_key}" if t.sync_source else "by hand"
    return [str(t.id), describe(t.kind, t.subject, t.value, t.window, t.unit), t.severity, t.owner or "", current,
            state, source]


def _list(conn: Any, args: argparse.Namespace, out: TextIO) -> int:
    from collector.thresholds import list_thresholds

    rows = [t for t in list_thresholds(conn) if t.breached or not args.breached]
    if not rows:
        print("no breached thresholds" if args.breached else
              "no thresholds yet: `coinpulse thresholds add price_below bitcoin 60000` or `coinpulse thresholds sync`",
              file=out)
        return 0
    _table(out, ["id", "threshold", "severity", "owner", "current", "state", "managed"], [_cells(t) for t in rows],
           right={0})
    return 0


def _remove(conn: Any, args: argparse.Namespace, out: TextIO) -> int:
    from collector.thresholds import describe, remove_thresholds

    for t in remove_thresholds(conn, args.ids):
        note = f" (it is in {t.sync_source!r}: the next sync of that file adds it again)" if t.sync_source else ""
        print(f"removed threshold {t.id}: {describe(t.kind, t.subject, t.value, t.window, t.unit)}{note}", file=out)
    return 0


def _enable(conn: Any, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from collector.thresholds import describe, set_enabled

    enabled = args.action == "enable"
    rows, changed = set_enabled(conn, args.ids, enabled)
    for t in rows:
        verb = args.action + "d" if t.id in changed else f"already {args.action}d"
        print(f"{verb} threshold {t.id}: {describe(t.kind, t.subject, t.value, t.window, t.unit)}", file=out)
        if t.sync_source and t.id in changed:
            print(f"note: threshold {t.id} belongs to the thresholds file with source {t.sync_source!r}: the next "
                  "`coinpulse thresholds sync` sets `enabled` back to what that file says; edit the file to keep this",
                  file=err)
    return 0


def _sync(conn: Any, args: argparse.Namespace, out: TextIO) -> int:
    from collector.thresholds import apply_sync, load_file, plan_sync

    file = load_file(args.file)
    plan = plan_sync(conn, file) if args.dry_run else apply_sync(conn, file)
    for line in plan.lines():
        print(line, file=out)
    prefix = "dry run, nothing changed: " if args.dry_run else ("" if plan.empty else "applied: ")
    print(prefix + plan.summary(), file=out)
    return 0


def _table(out: TextIO, header: Sequence[str], rows: Sequence[Sequence[str]], right: set[int]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths,
                                                                                                 strict=True))).rstrip()

    print(line(header), file=out)
    for r in rows:
        print(line(r), file=out)
