-- How many ingest gaps are not backfilled yet.
SELECT count(*)::double precision AS open_gaps
FROM coinpulse.ingest_gaps g
WHERE g.status <> 'done'
