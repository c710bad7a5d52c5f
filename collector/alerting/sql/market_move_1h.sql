-- Change in % of every tracked asset (an asset with candles in the last hour) from the open of its first
-- one-minute candle in the rule's time range (the last hour) to the close of its last one.
SELECT c.asset_id,
       coalesce(a.symbol, '') AS symbol,
       (100 * (last(c.close, c.bucket) / first(c.open, c.bucket) - 1))::double precision AS change_pct
FROM coinpulse.candles_1m c
LEFT JOIN coinpulse.assets a ON a.asset_id = c.asset_id
WHERE $__timeFilter(c.bucket)
GROUP BY c.asset_id, a.symbol
HAVING first(c.open, c.bucket) > 0
ORDER BY c.asset_id
