-- Failed runs of each job the job_failing rule watches (same rows and labels), for its description.
SELECT j.job_id::text AS job_id,
       j.proc_name::text AS job,
       coalesce(j.hypertable_name::text, '') AS relation,
       coalesce(s.total_failures, 0)::double precision AS total_failures
FROM timescaledb_information.jobs j
JOIN timescaledb_information.job_stats s ON s.job_id = j.job_id
WHERE j.scheduled AND j.hypertable_schema = 'coinpulse'
ORDER BY j.job_id
