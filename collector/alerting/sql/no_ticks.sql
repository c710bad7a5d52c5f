-- Seconds since the newest stored tick of any asset, as of the end of the rule's time range (the last day);
-- the whole range when there is none in it.
SELECT coalesce(extract(epoch FROM $__timeTo()::timestamptz - max(t.time)),
                extract(epoch FROM $__timeTo()::timestamptz - $__timeFrom()::timestamptz))::double precision
       AS seconds_since_last_tick
FROM coinpulse.price_ticks t
WHERE $__timeFilter(t.time)
