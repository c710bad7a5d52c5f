-- candles_1d: daily (UTC) OHLC candles per asset, built from candles_1h (hierarchical continuous aggregate).
--
-- Same rules as candles_1h one level up: open/close of the first/last hour, max/min, sum of ticks.
-- Real-time aggregation is on.
--
-- Refresh policy: every hour, re-materialize [now - 3 days, now - 1 hour). A day is materialized from
-- about 01:00 UTC the next day, once its hours have settled; the current day is always real-time.
--
-- Immutable once a migration has run it (sha256 recorded there): change = new file + new migration.

CREATE MATERIALIZED VIEW coinpulse.candles_1d
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT time_bucket(INTERVAL '1 day', bucket) AS bucket,
       asset_id,
       first(open, bucket)  AS open,
       max(high)            AS high,
       min(low)             AS low,
       last(close, bucket)  AS close,
       sum(ticks)::bigint   AS ticks
FROM coinpulse.candles_1h
GROUP BY 1, asset_id
WITH NO DATA;

-- Few rows per bucket: chunks of 365 days (36,500 rows per 100 assets) rather than the default keep a year in one or two
-- chunks, which makes planning and scanning long ranges cheap.
SELECT set_chunk_time_interval('coinpulse.candles_1d', INTERVAL '365 days');

ALTER MATERIALIZED VIEW coinpulse.candles_1d OWNER TO coinpulse_rollup_owner;
GRANT SELECT ON coinpulse.candles_1d TO coinpulse_reader, coinpulse_writer;
COMMENT ON VIEW coinpulse.candles_1d IS
    'Daily (UTC) OHLC per asset, built from candles_1h. Real-time.';

-- buckets_per_batch => 0: one atomic pass per run. TimescaleDB 2.28's incremental (batched) refresh
-- skips a bucket when an invalidation ends exactly on its start (timescale/timescaledb#10221, fixed in 2.29.0).
SELECT add_continuous_aggregate_policy('coinpulse.candles_1d',
    start_offset      => INTERVAL '3 days',
    end_offset        => INTERVAL '1 hour',
    schedule_interval => INTERVAL '1 hour',
    buckets_per_batch => 0);
