-- candles_1m: one-minute OHLC candles per asset, straight from the raw ticks.
--
-- open/close = price of the first/last tick of the minute (Timescale first()/last() ordered by time; time
-- is unique per asset, so the order is total), high/low = max/min price, ticks = number of ticks.
-- Real-time aggregation is on: buckets above the materialization watermark are computed from price_ticks
-- at query time, so a tick shows here as soon as it is committed.
--
-- Refresh policy: every minute, re-materialize [now - 2 hours, now - 1 minute). The open minute is never
-- materialized (real-time covers it); ticks arriving up to 2 hours late are picked up by the policy; older
-- late data (backfill, spool drain) is refreshed by collector.db.rollups.refresh_window.
-- price_ticks retention must stay longer than this start_offset (collector/db/lifecycle.py enforces it).
--
-- This file is immutable once a migration has run it (its sha256 is recorded in that migration):
-- to change the rollup, add a new file and a new migration.

CREATE MATERIALIZED VIEW coinpulse.candles_1m
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT time_bucket(INTERVAL '1 minute', time) AS bucket,
       asset_id,
       first(price_usd, time) AS open,
       max(price_usd)         AS high,
       min(price_usd)         AS low,
       last(price_usd, time)  AS close,
       count(*)               AS ticks
FROM coinpulse.price_ticks
GROUP BY bucket, asset_id
WITH NO DATA;

ALTER MATERIALIZED VIEW coinpulse.candles_1m OWNER TO coinpulse_rollup_owner;
GRANT SELECT ON coinpulse.candles_1m TO coinpulse_reader, coinpulse_writer;
COMMENT ON VIEW coinpulse.candles_1m IS
    'One-minute OHLC per asset from price_ticks (open/close = first/last tick, ticks = count). Real-time.';

-- buckets_per_batch => 0: one atomic pass per run. TimescaleDB 2.28's incremental (batched) refresh
-- skips a bucket when an invalidation ends exactly on its start (timescale/timescaledb#10221, fixed in 2.29.0).
SELECT add_continuous_aggregate_policy('coinpulse.candles_1m',
    start_offset      => INTERVAL '2 hours',
    end_offset        => INTERVAL '1 minute',
    schedule_interval => INTERVAL '1 minute',
    buckets_per_batch => 0);
