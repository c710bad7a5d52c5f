"""Opening connections, with failures turned into one-line errors a user can act on."""

from __future__ import annotations

from dataclasses import dataclass

import psycopg

from collector.errors import DatabaseError, ExtensionMissing, SchemaNotMigrated
from collector.settings import redact_url

__all__ = ["ServerInfo", "connect", "require_schema", "require_timescaledb", "server_info"]


def connect(url: str, *, autocommit: bool = False, connect_timeout: int = 10,
            application_name: str = "coinpulse") -> psycopg.Connection[tuple[object, ...]]:
    try:
        return psycopg.connect(
            url, autocommit=autocommit, connect_timeout=connect_timeout, application_name=application_name
        )
    except psycopg.OperationalError as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise DatabaseError(
            f"cannot connect to the database at {redact_url(url)}: {reason} "
            "(check COINPULSE_DATABASE_URL and that the server is running)"
        ) from None


@dataclass(frozen=True, slots=True)
class ServerInfo:
    server_version: str
    timescaledb_available: str | None  # default_version of the available extension
    timescaledb_installed: str | None  # installed version in this database
    preloaded: bool
    license: str | None  # 'timescale' (full edition) or 'apache'; None when not loaded

    @property
    def edition(self) -> str:
        if self.license == "timescale":
            return "full (Timescale License)"
        if self.license == "apache":
            return "Apache-2 (community features only: no continuous aggregates, columnstore or policies)"
        return "unknown"

    @property
    def full_edition(self) -> bool:
        return self.license == "timescale"


def server_info(conn: psycopg.Connection[tuple[object, ...]]) -> ServerInfo:
    row = conn.execute(
        """
        SELECT current_setting('server_version'),
               (SELECT default_version FROM pg_available_extensions WHERE name = 'timescaledb'),
               (SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'),
               coalesce(current_setting('shared_preload_libraries', true), '') LIKE '%timescaledb%',
               current_setting('timescaledb.license', true)
        """
    ).fetchone()
    assert row is not None
    return ServerInfo(
        server_version=str(row[0]),
        timescaledb_available=None if row[1] is None else str(row[1]),
        timescaledb_installed=None if row[2] is None else str(row[2]),
        preloaded=bool(row[3]),
        license=None if row[4] in (None, "") else str(row[4]),
    )


def require_timescaledb(info: ServerInfo) -> None:
    """Raise ExtensionMissing with what to do, unless TimescaleDB can be used on this server."""
    if info.timescaledb_available is None and info.timescaledb_installed is None:
        raise ExtensionMissing(
            f"the database server (PostgreSQL {info.server_version}) has no timescaledb extension: "
            "install TimescaleDB on it (or use the timescale/timescaledb-ha image) and run `coinpulse migrate` again"
        )
    if not info.preloaded:
        raise ExtensionMissing(
            "timescaledb is installed but not preloaded: add shared_preload_libraries = 'timescaledb' "
            "to postgresql.conf, restart the server, and run `coinpulse migrate` again"
        )


def require_schema(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    """Raise SchemaNotMigrated unless `coinpulse migrate` has been run on this database."""
    row = conn.execute("SELECT to_regclass('coinpulse.alembic_version') IS NOT NULL").fetchone()
    if not row or not row[0]:
        raise SchemaNotMigrated("the database has no CoinPulse schema yet: run `coinpulse migrate` first")
