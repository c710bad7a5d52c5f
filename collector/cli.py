"""`coinpulse`: argument parsing and output only; the work is in the modules it calls."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from collector import __version__
from collector.backfill_cli import add_backfill_parser
from collector.errors import CoinPulseError
from collector.portfolio_cli import add_portfolio_parser
from collector.settings import Settings, load_settings, redact_url
from collector.thresholds_cli import add_alerting_parser, add_thresholds_parser

__all__ = ["main"]


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level),
        format="%(asctime)s level=%(levelname)s logger=%(name)s %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("alembic").setLevel(logging.WARNING)


def cmd_migrate(settings: Settings, args: argparse.Namespace) -> int:
    from collector.db.migrate import migrate

    url = settings.database_url.get_secret_value()
    result = migrate(url, retention_days=settings.retention_days,
                     columnstore_after_days=settings.columnstore_after_days)
    info = result.server
    print(f"database: {redact_url(url)}")
    print(f"timescaledb {info.timescaledb_installed}, edition: {info.edition}")
    if result.changed:
        print(f"schema migrated: {result.before or 'empty'} -> {result.after}")
    else:
        print(f"schema already at {result.after}: nothing to do")
    for line in result.lifecycle:
        print(f"policy changed: {line}")
    return 0


def cmd_doctor(settings: Settings, args: argparse.Namespace) -> int:
    from collector.app import credit_planner
    from collector.doctor import alerting_checks, doctor_lines, exit_code, format_check, plan_checks, settings_checks

    checks = settings_checks(settings) + alerting_checks(os.environ)
    planner = credit_planner(settings, websocket=settings.resolved_feed == "ws")
    if planner is not None:
        checks += plan_checks(planner, settings.history_points_per_request)
    checks += doctor_lines(settings.database_url.get_secret_value(), planner=planner)
    for check in checks:
        print(format_check(check))
    failed = sum(c.status == "FAIL" for c in checks)
    warned = sum(c.status == "WARN" for c in checks)
    print(f"{len(checks)} checks: {failed} failed, {warned} warnings")
    return exit_code(checks)


def cmd_run(settings: Settings, args: argparse.Namespace) -> int:
    from collector.app import run

    return run(settings)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="coinpulse",
        description="CoinPulse: CoinCap market data into TimescaleDB. Configuration comes from the "
                    "environment (COINPULSE_*, COINCAP_*); see README.md.",
    )
    parser.add_argument("--version", action="version", version=f"coinpulse {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("migrate", help="create or upgrade the database schema (idempotent)").set_defaults(func=cmd_migrate)
    sub.add_parser("run", help="run the collector until SIGTERM/SIGINT").set_defaults(func=cmd_run)
    sub.add_parser("doctor", help="check the database, TimescaleDB edition, migrations, policy jobs, rollup lag "
                   "and configuration; exit 1 if anything fails").set_defaults(func=cmd_doctor)
    add_backfill_parser(sub)
    add_portfolio_parser(sub)
    add_thresholds_parser(sub)
    add_alerting_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
        _setup_logging(settings.log_level)
        code: int = args.func(settings, args)
    except CoinPulseError as exc:
        print(f"coinpulse {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
