-- Every exchange's rolling 24h volume now (its newest hourly bucket of the last 3 hours) against the same figure
-- a day earlier (its newest bucket at least 24 hours before the end of the rule's time range), in %.
WITH latest AS (
    SELECT DISTINCT ON (v.exchange_id) v.exchange_id, v.volume_usd
    FROM coinpulse.exchange_volume_1h v
    WHERE $__timeFilter(v.bucket) AND v.bucket >= $__timeTo()::timestamptz - INTERVAL '3 hours'
      AND v.volume_usd IS NOT NULL
    ORDER BY v.exchange_id, v.bucket DESC
), day_before AS (
    SELECT DISTINCT ON (v.exchange_id) v.exchange_id, v.volume_usd
    FROM coinpulse.exchange_volume_1h v
    WHERE $__timeFilter(v.bucket) AND v.bucket <= $__timeTo()::timestamptz - INTERVAL '24 hours'
      AND v.volume_usd > 0
    ORDER BY v.exchange_id, v.bucket DESC
)
SELECT l.exchange_id,
       (100 * (l.volume_usd / d.volume_usd - 1))::double precision AS change_pct
FROM latest l
JOIN day_before d ON d.exchange_id = l.exchange_id
ORDER BY l.exchange_id
