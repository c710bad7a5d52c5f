-- asset_volume_1h: per asset and hour, the market figures as of the end of the hour, from asset_snapshots.
--
-- CoinCap's volumeUsd24Hr is a ROLLING 24-hour volume. A bucket's volume_usd_24hr is therefore NOT the
-- volume traded during that hour: it is the 24-hour volume reported by the last snapshot of the hour
-- (about the 24 hours ending at as_of). Never sum it over buckets. The same holds for market_cap_usd,
-- supply, rank and price_usd: each is the latest non-null value reported within the bucket; as_of is the
-- time of the bucket's last snapshot and snapshots the number of snapshots in the bucket.
--
-- Refresh policy: every 30 minutes, re-materialize [now - 1 day, now - 1 hour). Real-time aggregation is on.
-- asset_snapshots retention must stay longer than this start_offset (collector/db/lifecycle.py enforces it).
--
-- Immutable once a migration has run it (sha256 recorded there): change = new file + new migration.

CREATE MATERIALIZED VIEW coinpulse.asset_volume_1h
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT time_bucket(INTERVAL '1 hour', time) AS bucket,
       asset_id,
       last(volume_usd_24hr, time) FILTER (WHERE volume_usd_24hr IS NOT NULL) AS volume_usd_24hr,
       last(market_cap_usd, time)  FILTER (WHERE market_cap_usd IS NOT NULL)  AS market_cap_usd,
       last(supply, time)          FILTER (WHERE supply IS NOT NULL)          AS supply,
       last(rank, time)            FILTER (WHERE rank IS NOT NULL)            AS rank,
       last(price_usd, time)       FILTER (WHERE price_usd IS NOT NULL)       AS price_usd,
       max(time)                                                              AS as_of,
       count(*)                                                               AS snapshots
FROM coinpulse.asset_snapshots
GROUP BY 1, asset_id
WITH NO DATA;

-- Few rows per bucket: chunks of 90 days (about 220k rows per 100 assets) rather than the default keep a year in one or two
-- chunks, which makes planning and scanning long ranges cheap.
SELECT set_chunk_time_interval('coinpulse.asset_volume_1h', INTERVAL '90 days');

ALTER MATERIALIZED VIEW coinpulse.asset_volume_1h OWNER TO coinpulse_rollup_owner;
GRANT SELECT ON coinpulse.asset_volume_1h TO coinpulse_reader, coinpulse_writer;
COMMENT ON VIEW coinpulse.asset_volume_1h IS
    'Per asset and hour: rolling 24h volume, market cap, supply, rank, price as of the last snapshot of the '
    'hour (latest non-null values). volume_usd_24hr is a rolling 24h figure: do not sum it over buckets.';

-- buckets_per_batch => 0: one atomic pass per run. TimescaleDB 2.28's incremental (batched) refresh
-- skips a bucket when an invalidation ends exactly on its start (timescale/timescaledb#10221, fixed in 2.29.0).
SELECT add_continuous_aggregate_policy('coinpulse.asset_volume_1h',
    start_offset      => INTERVAL '1 day',
    end_offset        => INTERVAL '1 hour',
    schedule_interval => INTERVAL '30 minutes',
    buckets_per_batch => 0);
