-- Every exchange's rolling 24h volume a day earlier (USD), for the collapse rule's minimum size; same rows and
-- labels as exchange_volume_change.sql.
WITH latest AS (
    SELECT DISTINCT ON (v.exchange_id) v.exchange_id
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
       d.volume_usd::double precision AS volume_usd_day_before
FROM latest l
JOIN day_before d ON d.exchange_id = l.exchange_id
ORDER BY l.exchange_id
