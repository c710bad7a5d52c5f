-- Minutes since the oldest ingest gap that is not backfilled yet (open, filling or failed) was detected; 0 when
-- every gap is done.
SELECT coalesce(max(extract(epoch FROM $__timeTo()::timestamptz - g.detected_at)) / 60, 0)::double precision
       AS oldest_open_gap_minutes
FROM coinpulse.ingest_gaps g
WHERE g.status <> 'done'
