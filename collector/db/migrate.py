"""`coinpulse migrate`: preflight checks, alembic upgrade to head, then the configured data lifecycle.

Idempotent. The rollups (continuous aggregates, policies, columnstore) need the full TimescaleDB edition;
on the Apache-2 edition migrate stops before changing anything and says so.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import psycopg
import sqlalchemy
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from collector.db.connect import ServerInfo, connect, require_timescaledb, server_info
from collector.db.lifecycle import apply_lifecycle
from collector.db.resources import migrations_dir
from collector.errors import DatabaseError, ExtensionMissing

__all__ = ["MigrateResult", "alembic_config", "current_revision", "head_revision", "migrate"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class MigrateResult:
    before: str | None
    after: str | None
    server: ServerInfo
    lifecycle: tuple[str, ...] = ()  # policy changes made (empty when already as configured)

    @property
    def changed(self) -> bool:
        return self.before != self.after


def alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    return cfg


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def _engine(url: str) -> sqlalchemy.Engine:
    # libpq URL handed to psycopg as is (SQLAlchemy would re-parse it); no pooling for a one-shot run.
    return sqlalchemy.create_engine(
        "postgresql+psycopg://",
        creator=lambda: psycopg.connect(url, application_name="coinpulse-migrate"),
        poolclass=sqlalchemy.pool.NullPool,
    )


def current_revision(url: str) -> str | None:
    engine = _engine(url)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn, opts={"version_table_schema": "coinpulse"}).get_current_revision()
    finally:
        engine.dispose()


def migrate(url: str, *, retention_days: int = 90, columnstore_after_days: int = 7) -> MigrateResult:
    """Create or upgrade the schema, then set the raw data lifecycle (retention 0 = keep forever).

    Raises a CoinPulseError with one clear line on failure.
    """
    with connect(url, autocommit=True, application_name="coinpulse-migrate") as conn:
        info = server_info(conn)
        require_timescaledb(info)
        try:
            conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
            conn.execute("CREATE SCHEMA IF NOT EXISTS coinpulse")
        except psycopg.Error as exc:
            raise DatabaseError(f"cannot prepare the database: {_first_line(exc)}") from None
        info = server_info(conn)
        require_full_edition(info)
    log.info("migrate server=%s timescaledb=%s edition=%s", info.server_version, info.timescaledb_installed,
             info.license)
    engine = _engine(url)
    try:
        with engine.begin() as sa_conn:
            before = MigrationContext.configure(
                sa_conn, opts={"version_table_schema": "coinpulse"}
            ).get_current_revision()
        cfg = alembic_config()
        with engine.connect() as sa_conn:
            cfg.attributes["connection"] = sa_conn
            try:
                command.upgrade(cfg, "head")
            except sqlalchemy.exc.DBAPIError as exc:
                raise DatabaseError(f"migration failed: {_first_line(exc.orig or exc)}") from None
            sa_conn.commit()
        with engine.connect() as sa_conn:
            after = MigrationContext.configure(
                sa_conn, opts={"version_table_schema": "coinpulse"}
            ).get_current_revision()
    finally:
        engine.dispose()
    with connect(url, autocommit=True, application_name="coinpulse-migrate") as conn:
        try:
            changes = apply_lifecycle(conn, retention_days=retention_days,
                                      columnstore_after_days=columnstore_after_days)
        except psycopg.Error as exc:
            raise DatabaseError(f"cannot set the data lifecycle policies: {_first_line(exc)}") from None
    return MigrateResult(before=before, after=after, server=info, lifecycle=tuple(changes))


def require_full_edition(info: ServerInfo) -> None:
    """Raise ExtensionMissing unless the server runs the full (Timescale License) edition."""
    if not info.full_edition:
        raise ExtensionMissing(
            f"TimescaleDB {info.timescaledb_installed or info.timescaledb_available} runs as the {info.edition} "
            "edition; CoinPulse's rollups need the full edition: set timescaledb.license = 'timescale' in "
            "postgresql.conf (with a build that ships it, e.g. the timescale/timescaledb images), restart the "
            "server, and run `coinpulse migrate` again")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
