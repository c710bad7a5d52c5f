-- candles_1h: hourly OHLC candles per asset, built from candles_1m (hierarchical continuous aggregate).
--
-- open = open of the first minute, close = close of the last minute (first()/last() ordered by the minute
-- bucket), high/low = max/min of the minutes, ticks = sum of the minutes' ticks. This equals OHLC computed
-- from the raw ticks of the hour. Real-time aggregation is on (it reads candles_1m, itself real-time).
--
-- Refresh policy: every 30 minutes, re-materialize [now - 1 day, now - 1 hour). The start offset covers
-- candles_1m's own 2-hour window, so whatever that policy re-materializes is propagated here.
--
-- Immutable once a migration has run it (sha256 recorded there): change = new file + new migration.

CREATE MATERIALIZED VIEW coinpulse.candles_1h
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT time_bucket(INTERVAL '1 hour', bucket) AS bucket,
       asset_id,
       first(open, bucket)  AS open,
       max(high)            AS high,
       min(low)             AS low,
       last(close, bucket)  AS close,
       sum(ticks)::bigint   AS ticks
FROM coinpulse.candles_1m
GROUP BY 1, asset_id
WITH NO DATA;

-- Few rows per bucket: chunks of 90 days (about 220k rows per 100 assets) rather than the default keep a year in one or two
-- chunks, which makes planning and scanning long ranges cheap.
SELECT set_chunk_time_interval('coinpulse.candles_1h', INTERVAL '90 days');

ALTER MATERIALIZED VIEW coinpulse.candles_1h OWNER TO coinpulse_rollup_owner;
GRANT SELECT ON coinpulse.candles_1h TO coinpulse_reader, coinpulse_writer;
COMMENT ON VIEW coinpulse.candles_1h IS
    'Hourly OHLC per asset, built from candles_1m. Real-time.';

-- buckets_per_batch => 0: one atomic pass per run. TimescaleDB 2.28's incremental (batched) refresh
-- skips a bucket when an invalidation ends exactly on its start (timescale/timescaledb#10221, fixed in 2.29.0).
SELECT add_continuous_aggregate_policy('coinpulse.candles_1h',
    start_offset      => INTERVAL '1 day',
    end_offset        => INTERVAL '1 hour',
    schedule_interval => INTERVAL '30 minutes',
    buckets_per_batch => 0);
