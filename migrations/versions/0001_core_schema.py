"""Core schema: hypertables for ticks and snapshots, dimension tables, ingest gaps, roles.

Chunk intervals (TimescaleDB advises chunks whose indexes fit in about a quarter of memory):
- price_ticks: 1 day. A top-100 WebSocket stream is ~100 rows/s, ~9M rows and ~1 GB with indexes per
  day; ALL assets can be several times that. Daily chunks keep the hot chunk in memory on a small box
  and give retention and columnstore a one-day granularity.
- market_snapshots: 1 day. /markets pages are the widest snapshot (hundreds of rows per poll).
- asset_snapshots, exchange_snapshots, rate_snapshots: 7 days. At most a few thousand rows per poll
  every few minutes: a day would make tiny chunks.

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UPGRADE = r"""
CREATE TABLE coinpulse.price_ticks (
    time        timestamptz      NOT NULL,
    asset_id    text             NOT NULL,
    price_usd   double precision NOT NULL CHECK (price_usd > 0 AND price_usd < 'Infinity'),
    source      text             NOT NULL CHECK (source IN ('ws', 'rest', 'history', 'demo')),
    CONSTRAINT price_ticks_asset_time_key UNIQUE (asset_id, time)
);
SELECT create_hypertable('coinpulse.price_ticks', by_range('time', INTERVAL '1 day'));
COMMENT ON TABLE coinpulse.price_ticks IS
    'One row per price observation. time = when the collector received it (history rows: CoinCap''s time).';

CREATE TABLE coinpulse.asset_snapshots (
    time                 timestamptz NOT NULL,
    asset_id             text        NOT NULL,
    rank                 integer,
    symbol               text,
    name                 text,
    supply               double precision,
    max_supply           double precision,
    market_cap_usd       double precision,
    volume_usd_24hr      double precision,
    price_usd            double precision,
    change_percent_24hr  double precision,
    vwap_24hr            double precision,
    explorer             text,
    source               text        NOT NULL CHECK (source IN ('rest', 'demo')),
    CONSTRAINT asset_snapshots_asset_time_key UNIQUE (asset_id, time)
);
SELECT create_hypertable('coinpulse.asset_snapshots', by_range('time', INTERVAL '7 days'));

CREATE TABLE coinpulse.exchange_snapshots (
    time                  timestamptz NOT NULL,
    exchange_id           text        NOT NULL,
    name                  text,
    rank                  integer,
    percent_total_volume  double precision,
    volume_usd            double precision,
    trading_pairs         integer,
    socket                boolean,
    exchange_url          text,
    updated               timestamptz,
    source                text        NOT NULL CHECK (source IN ('rest', 'demo')),
    CONSTRAINT exchange_snapshots_exchange_time_key UNIQUE (exchange_id, time)
);
SELECT create_hypertable('coinpulse.exchange_snapshots', by_range('time', INTERVAL '7 days'));

CREATE TABLE coinpulse.market_snapshots (
    time                     timestamptz NOT NULL,
    exchange_id              text        NOT NULL,
    base_id                  text        NOT NULL,
    quote_id                 text        NOT NULL,
    base_symbol              text,
    quote_symbol             text,
    rank                     integer,
    price_quote              double precision,
    price_usd                double precision,
    volume_usd_24hr          double precision,
    percent_exchange_volume  double precision,
    trades_count_24hr        bigint,
    updated                  timestamptz,
    source                   text        NOT NULL CHECK (source IN ('rest', 'demo')),
    CONSTRAINT market_snapshots_market_time_key UNIQUE (exchange_id, base_id, quote_id, time)
);
SELECT create_hypertable('coinpulse.market_snapshots', by_range('time', INTERVAL '1 day'));

CREATE TABLE coinpulse.rate_snapshots (
    time             timestamptz NOT NULL,
    rate_id          text        NOT NULL,
    symbol           text,
    currency_symbol  text,
    rate_usd         double precision,
    type             text,
    source           text        NOT NULL CHECK (source IN ('rest', 'demo')),
    CONSTRAINT rate_snapshots_rate_time_key UNIQUE (rate_id, time)
);
SELECT create_hypertable('coinpulse.rate_snapshots', by_range('time', INTERVAL '7 days'));

CREATE TABLE coinpulse.assets (
    asset_id    text PRIMARY KEY,
    symbol      text,
    name        text,
    rank        integer,
    explorer    text,
    first_seen  timestamptz NOT NULL DEFAULT now(),
    last_seen   timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE coinpulse.assets IS 'Every asset ever seen (from snapshots or ticks), upserted by the collector.';

CREATE TABLE coinpulse.exchanges (
    exchange_id   text PRIMARY KEY,
    name          text,
    rank          integer,
    exchange_url  text,
    first_seen    timestamptz NOT NULL DEFAULT now(),
    last_seen     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE coinpulse.ingest_gaps (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    asset_id     text,
    gap_start    timestamptz NOT NULL,
    gap_end      timestamptz NOT NULL,
    reason       text        NOT NULL,
    detected_at  timestamptz NOT NULL DEFAULT now(),
    status       text        NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'filling', 'done', 'failed')),
    rows_filled  bigint,
    filled_at    timestamptz,
    error        text,
    CHECK (gap_end > gap_start)
);
COMMENT ON TABLE coinpulse.ingest_gaps IS
    'Intervals without stream data (asset_id NULL = every streamed asset), and their backfill state.';
CREATE INDEX ingest_gaps_open_idx ON coinpulse.ingest_gaps (gap_start) WHERE status <> 'done';

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'coinpulse_writer') THEN
        CREATE ROLE coinpulse_writer NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'coinpulse_reader') THEN
        CREATE ROLE coinpulse_reader NOLOGIN;
    END IF;
END
$$;
ALTER ROLE coinpulse_writer SET search_path = coinpulse, public;
ALTER ROLE coinpulse_reader SET search_path = coinpulse, public;
GRANT USAGE ON SCHEMA coinpulse TO coinpulse_writer, coinpulse_reader;
GRANT SELECT ON ALL TABLES IN SCHEMA coinpulse TO coinpulse_reader, coinpulse_writer;
GRANT INSERT ON coinpulse.price_ticks, coinpulse.asset_snapshots, coinpulse.exchange_snapshots,
                coinpulse.market_snapshots, coinpulse.rate_snapshots TO coinpulse_writer;
GRANT INSERT, UPDATE ON coinpulse.assets, coinpulse.exchanges, coinpulse.ingest_gaps TO coinpulse_writer;
ALTER DEFAULT PRIVILEGES IN SCHEMA coinpulse GRANT SELECT ON TABLES TO coinpulse_reader;
"""

DOWNGRADE = r"""
DROP TABLE IF EXISTS coinpulse.ingest_gaps, coinpulse.exchanges, coinpulse.assets,
    coinpulse.rate_snapshots, coinpulse.market_snapshots, coinpulse.exchange_snapshots,
    coinpulse.asset_snapshots, coinpulse.price_ticks;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
