-- asset_volume_1d: per asset and UTC day, the market figures as of the end of the day, built from
-- asset_volume_1h (hierarchical continuous aggregate).
--
-- Each value is the latest non-null value of the day's hours, i.e. the latest non-null value reported by a
-- snapshot during the day. volume_usd_24hr of a day is CoinCap's rolling 24-hour volume as of the day's last
-- snapshot (as_of): with snapshots every few minutes that is, within that interval, the volume traded during
-- the day itself. It is still a snapshot figure, not a sum: never add the hourly values up.
--
-- Refresh policy: every hour, re-materialize [now - 3 days, now - 1 hour). Real-time aggregation is on.
--
-- Immutable once a migration has run it (sha256 recorded there): change = new file + new migration.

CREATE MATERIALIZED VIEW coinpulse.asset_volume_1d
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT time_bucket(INTERVAL '1 day', bucket) AS bucket,
       asset_id,
       last(volume_usd_24hr, bucket) FILTER (WHERE volume_usd_24hr IS NOT NULL) AS volume_usd_24hr,
       last(market_cap_usd, bucket)  FILTER (WHERE market_cap_usd IS NOT NULL)  AS market_cap_usd,
       last(supply, bucket)          FILTER (WHERE supply IS NOT NULL)          AS supply,
       last(rank, bucket)            FILTER (WHERE rank IS NOT NULL)            AS rank,
       last(price_usd, bucket)       FILTER (WHERE price_usd IS NOT NULL)       AS price_usd,
       max(as_of)                                                               AS as_of,
       sum(snapshots)::bigint                                                   AS snapshots
FROM coinpulse.asset_volume_1h
GROUP BY 1, asset_id
WITH NO DATA;

-- Few rows per bucket: chunks of 365 days (36,500 rows per 100 assets) rather than the default keep a year in one or two
-- chunks, which makes planning and scanning long ranges cheap.
SELECT set_chunk_time_interval('coinpulse.asset_volume_1d', INTERVAL '365 days');

ALTER MATERIALIZED VIEW coinpulse.asset_volume_1d OWNER TO coinpulse_rollup_owner;
GRANT SELECT ON coinpulse.asset_volume_1d TO coinpulse_reader, coinpulse_writer;
COMMENT ON VIEW coinpulse.asset_volume_1d IS
    'Per asset and UTC day: rolling 24h volume, market cap, supply, rank, price as of the day''s last '
    'snapshot (latest non-null values), built from asset_volume_1h.';

-- buckets_per_batch => 0: one atomic pass per run. TimescaleDB 2.28's incremental (batched) refresh
-- skips a bucket when an invalidation ends exactly on its start (timescale/timescaledb#10221, fixed in 2.29.0).
SELECT add_continuous_aggregate_policy('coinpulse.asset_volume_1d',
    start_offset      => INTERVAL '3 days',
    end_offset        => INTERVAL '1 hour',
    schedule_interval => INTERVAL '1 hour',
    buckets_per_batch => 0);
