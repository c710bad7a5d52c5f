"""Rollups: OHLC candles 1m/1h/1d and volume rollups (continuous aggregates), and the raw data lifecycle.

- The rollups are the files in continuous_aggregates/ named in SQL_FILES, run in that (hierarchical) order,
  each in an autocommit block (continuous-aggregate DDL and refresh_continuous_aggregate refuse to run in a
  transaction), then materialized once up to the current bucket so that history already in the database
  stays visible when the refresh policies move the watermark.
- Their owner is the role coinpulse_rollup_owner. refresh_continuous_aggregate needs ownership, and the
  collector (coinpulse_writer, a member of that role) refreshes windows after a backfill or a spool drain.
  The role has LOGIN because TimescaleDB runs a rollup's refresh policy as the rollup's owner in a
  background worker (and refuses a NOLOGIN owner); it has no password, so clients cannot authenticate as it
  under password authentication.
- Raw hypertables get columnstore (compression) segmented by asset/exchange/rate, and retention. Defaults
  here (columnstore after 7 days, retention 90 days); `coinpulse migrate` then applies the configured ages
  (collector/db/lifecycle.py), refusing a retention shorter than the rollups' refresh windows.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

import time
from collections.abc import Sequence

import psycopg
import sqlalchemy
from alembic import op

from collector.db.rollups import RETRY_DELAYS, checked_sql, verify_sql_files

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# sha256 of every continuous_aggregates/ file this migration executes, in execution order. The migration
# refuses to run if a file differs, and tests/test_rollups_files.py fails: make a new migration instead.
SQL_FILES: dict[str, str] = {
    "candles_1m.sql": "5a8d5bb74a2140c175c0fa84c1c6f81ac570145dbd7eb8541c2a0c910ff6839d",
    "candles_1h.sql": "f125be4cd1c27d7eb61fcf0f8c9c9b859766a75eee7fc194e07c251ce7a90873",
    "candles_1d.sql": "b424cc9b10ecec5395871158245c6a7bc7b2800a65879aaba38c16d188162813",
    "asset_volume_1h.sql": "0b9d0ecff5cf015690c7448419922da585950c5fb39f544ea12b148fd6e1c2bf",
    "asset_volume_1d.sql": "ab424036013610d084bd030fb4edb8c6f9180ac6f342f572a7abfe0bb91c7797",
    "exchange_volume_1h.sql": "84052938019de41af4278c8fc35babd34f77e7912100ef22b4e91ec7b6bfcb16",
}
BUCKETS: dict[str, str] = {
    "candles_1m": "1 minute",
    "candles_1h": "1 hour",
    "candles_1d": "1 day",
    "asset_volume_1h": "1 hour",
    "asset_volume_1d": "1 day",
    "exchange_volume_1h": "1 hour",
}

PREPARE = r"""
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'coinpulse_rollup_owner') THEN
        CREATE ROLE coinpulse_rollup_owner LOGIN;  -- no password: see the docstring
    ELSE
        ALTER ROLE coinpulse_rollup_owner LOGIN;
    END IF;
    -- Handing the rollups over needs membership, unless the migrating role is a superuser.
    IF NOT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)
       AND NOT pg_has_role(current_user, 'coinpulse_rollup_owner', 'MEMBER') THEN
        EXECUTE format('GRANT coinpulse_rollup_owner TO %I', current_user);
    END IF;
    IF NOT pg_has_role('coinpulse_writer', 'coinpulse_rollup_owner', 'MEMBER') THEN
        GRANT coinpulse_rollup_owner TO coinpulse_writer;
    END IF;
END
$$;
-- The real-time part of a rollup reads the raw tables with its owner's rights.
GRANT USAGE ON SCHEMA coinpulse TO coinpulse_rollup_owner;
GRANT SELECT ON coinpulse.price_ticks, coinpulse.asset_snapshots, coinpulse.exchange_snapshots
    TO coinpulse_rollup_owner;

-- Columnstore: chunks older than `after` are converted, segmented by the id the queries filter on.
ALTER TABLE coinpulse.price_ticks SET (timescaledb.enable_columnstore = true,
    timescaledb.segmentby = 'asset_id', timescaledb.orderby = 'time DESC');
ALTER TABLE coinpulse.asset_snapshots SET (timescaledb.enable_columnstore = true,
    timescaledb.segmentby = 'asset_id', timescaledb.orderby = 'time DESC');
ALTER TABLE coinpulse.exchange_snapshots SET (timescaledb.enable_columnstore = true,
    timescaledb.segmentby = 'exchange_id', timescaledb.orderby = 'time DESC');
ALTER TABLE coinpulse.market_snapshots SET (timescaledb.enable_columnstore = true,
    timescaledb.segmentby = 'exchange_id', timescaledb.orderby = 'base_id, quote_id, time DESC');
ALTER TABLE coinpulse.rate_snapshots SET (timescaledb.enable_columnstore = true,
    timescaledb.segmentby = 'rate_id', timescaledb.orderby = 'time DESC');
CALL add_columnstore_policy('coinpulse.price_ticks', after => INTERVAL '7 days');
CALL add_columnstore_policy('coinpulse.asset_snapshots', after => INTERVAL '7 days');
CALL add_columnstore_policy('coinpulse.exchange_snapshots', after => INTERVAL '7 days');
CALL add_columnstore_policy('coinpulse.market_snapshots', after => INTERVAL '7 days');
CALL add_columnstore_policy('coinpulse.rate_snapshots', after => INTERVAL '7 days');

-- Retention of raw rows; the rollups are kept. Must stay longer than every refresh policy's start_offset
-- on these tables (see collector/db/lifecycle.py).
SELECT add_retention_policy('coinpulse.price_ticks', drop_after => INTERVAL '90 days');
SELECT add_retention_policy('coinpulse.asset_snapshots', drop_after => INTERVAL '90 days');
SELECT add_retention_policy('coinpulse.exchange_snapshots', drop_after => INTERVAL '90 days');
SELECT add_retention_policy('coinpulse.market_snapshots', drop_after => INTERVAL '90 days');
SELECT add_retention_policy('coinpulse.rate_snapshots', drop_after => INTERVAL '90 days');
"""

# One atomic pass (buckets_per_batch 0): see the note on the policies in the SQL files (timescaledb#10221).
INITIAL_REFRESH = ("CALL refresh_continuous_aggregate('coinpulse.{name}', NULL, "
                   "time_bucket(INTERVAL '{width}', now()), options => '{{\"buckets_per_batch\": 0}}')")

DOWNGRADE_LIFECYCLE = r"""
DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['price_ticks', 'asset_snapshots', 'exchange_snapshots', 'market_snapshots',
                             'rate_snapshots']
    LOOP
        PERFORM remove_retention_policy(format('coinpulse.%I', t)::regclass, if_exists => true);
        CALL remove_columnstore_policy(format('coinpulse.%I', t)::regclass, if_exists => true);
        PERFORM decompress_chunk(c, true) FROM show_chunks(format('coinpulse.%I', t)::regclass) c;
        EXECUTE format('ALTER TABLE coinpulse.%I SET (timescaledb.enable_columnstore = false)', t);
    END LOOP;
END
$$;
REVOKE SELECT ON coinpulse.price_ticks, coinpulse.asset_snapshots, coinpulse.exchange_snapshots
    FROM coinpulse_rollup_owner;
REVOKE USAGE ON SCHEMA coinpulse FROM coinpulse_rollup_owner;
"""


def upgrade() -> None:
    verify_sql_files(SQL_FILES, revision)
    op.execute(PREPARE)
    for name, sha in SQL_FILES.items():
        text = checked_sql(name, sha, revision)
        view = name.removesuffix(".sql")
        with op.get_context().autocommit_block():
            op.execute(text)
            _initial_refresh(view)


def _initial_refresh(view: str) -> None:
    # The policy just added may already be refreshing (it starts at once): wait and retry, as refresh_window does.
    for delay in (*RETRY_DELAYS, None):
        try:
            op.execute(INITIAL_REFRESH.format(name=view, width=BUCKETS[view]))
            return
        except sqlalchemy.exc.DBAPIError as exc:
            if delay is None or not isinstance(exc.orig, psycopg.errors.LockNotAvailable):
                raise
            time.sleep(delay)


def downgrade() -> None:
    for name in reversed(SQL_FILES):
        with op.get_context().autocommit_block():
            op.execute(f"DROP MATERIALIZED VIEW IF EXISTS coinpulse.{name.removesuffix('.sql')}")
    op.execute(DOWNGRADE_LIFECYCLE)
