-- exchange_volume_1h: per exchange and hour, the exchange figures as of the end of the hour, from
-- exchange_snapshots.
--
-- CoinCap's exchange volumeUsd is a rolling 24-hour volume, like the assets' volumeUsd24Hr: volume_usd of a
-- bucket is the 24-hour volume reported by the bucket's last snapshot (as of as_of), not the volume of the
-- hour. percent_total_volume, trading_pairs and rank likewise: latest non-null values within the bucket.
--
-- Refresh policy: every 30 minutes, re-materialize [now - 1 day, now - 1 hour). Real-time aggregation is on.
-- exchange_snapshots retention must stay longer than this start_offset (collector/db/lifecycle.py enforces it).
--
-- Immutable once a migration has run it (sha256 recorded there): change = new file + new migration.

CREATE MATERIALIZED VIEW coinpulse.exchange_volume_1h
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT time_bucket(INTERVAL '1 hour', time) AS bucket,
       exchange_id,
       last(volume_usd, time)           FILTER (WHERE volume_usd IS NOT NULL)           AS volume_usd,
       last(percent_total_volume, time) FILTER (WHERE percent_total_volume IS NOT NULL) AS percent_total_volume,
       last(trading_pairs, time)        FILTER (WHERE trading_pairs IS NOT NULL)        AS trading_pairs,
       last(rank, time)                 FILTER (WHERE rank IS NOT NULL)                 AS rank,
       max(time)                                                                        AS as_of,
       count(*)                                                                         AS snapshots
FROM coinpulse.exchange_snapshots
GROUP BY 1, exchange_id
WITH NO DATA;

-- Few rows per bucket: chunks of 90 days (about 220k rows per 100 exchanges) rather than the default keep a year in one or two
-- chunks, which makes planning and scanning long ranges cheap.
SELECT set_chunk_time_interval('coinpulse.exchange_volume_1h', INTERVAL '90 days');

ALTER MATERIALIZED VIEW coinpulse.exchange_volume_1h OWNER TO coinpulse_rollup_owner;
GRANT SELECT ON coinpulse.exchange_volume_1h TO coinpulse_reader, coinpulse_writer;
COMMENT ON VIEW coinpulse.exchange_volume_1h IS
    'Per exchange and hour: rolling 24h volume, share of total volume, trading pairs, rank as of the last '
    'snapshot of the hour (latest non-null values). volume_usd is a rolling 24h figure: do not sum it.';

-- buckets_per_batch => 0: one atomic pass per run. TimescaleDB 2.28's incremental (batched) refresh
-- skips a bucket when an invalidation ends exactly on its start (timescale/timescaledb#10221, fixed in 2.29.0).
SELECT add_continuous_aggregate_policy('coinpulse.exchange_volume_1h',
    start_offset      => INTERVAL '1 day',
    end_offset        => INTERVAL '1 hour',
    schedule_interval => INTERVAL '30 minutes',
    buckets_per_batch => 0);
