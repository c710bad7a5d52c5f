-- Every scheduled TimescaleDB policy job on a CoinPulse table or rollup (refresh, columnstore, retention):
-- 1 when its last run failed, or when it is overdue (its next start is more than two schedule intervals,
-- and at least 10 minutes, in the past: the scheduler is not running it), else 0. Paused jobs are left out.
SELECT j.job_id::text AS job_id,
       j.proc_name::text AS job,
       coalesce(j.hypertable_name::text, '') AS relation,
       (CASE WHEN s.last_run_status = 'Failed' THEN 1
             WHEN s.next_start < $__timeTo()::timestamptz - greatest(2 * j.schedule_interval, INTERVAL '10 minutes')
             THEN 1
             ELSE 0 END)::double precision AS failing
FROM timescaledb_information.jobs j
JOIN timescaledb_information.job_stats s ON s.job_id = j.job_id
WHERE j.scheduled AND j.hypertable_schema = 'coinpulse'
ORDER BY j.job_id
