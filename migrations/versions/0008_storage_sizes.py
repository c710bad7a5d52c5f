"""Storage sizes: chunks, columnstore and bytes of every raw hypertable and rollup, measured by a job.

Measuring the size of a hypertable opens every chunk and asks the size of every file of it and its indexes:
over a year (~540 chunks) that takes 40-90 ms, too slow for a dashboard panel that is read on every refresh,
and the figures move slowly. So:

- ``storage_sizes_now()``: the live measurement (what the Pipeline health panel computed before), per raw
  hypertable and rollup: chunks, chunks in the columnstore, total size (``hypertable_approximate_size``) and
  the columnstore's size before and after compression.
- ``storage_size_measurements``: the latest measurement, written by ``refresh_storage_sizes``, which a
  TimescaleDB job runs every 5 minutes (``coinpulse doctor`` lists it as "storage sizes").
- ``storage_sizes`` (view): the stored measurement while it is at most 15 minutes old (three job intervals),
  else a live one (job paused or failing, or before its first run), with the time of the measurement in
  ``measured_at``. The live branch is planned and run only when it is needed.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UPGRADE = r"""
CREATE FUNCTION coinpulse.storage_sizes_now()
RETURNS TABLE (kind text, name text, chunks bigint, columnstore_chunks bigint, total_bytes bigint,
               columnstore_before_bytes bigint, columnstore_after_bytes bigint)
-- plpgsql, so that a query that does not call it (storage_sizes with a fresh measurement) does not plan it
LANGUAGE plpgsql STABLE AS $fn$
BEGIN
    RETURN QUERY
    SELECT t.kind, t.name, ch.chunks, ch.compressed,
           hypertable_approximate_size(format('%I.%I', t.schema_name, t.table_name)::regclass),
           st.before_compression_total_bytes, st.after_compression_total_bytes
    FROM (
        SELECT 'raw'::text AS kind, h.hypertable_name::text AS name, h.hypertable_schema AS schema_name,
               h.hypertable_name AS table_name
        FROM timescaledb_information.hypertables h
        WHERE h.hypertable_schema = 'coinpulse'
        UNION ALL
        SELECT 'rollup', c.view_name::text, c.materialization_hypertable_schema, c.materialization_hypertable_name
        FROM timescaledb_information.continuous_aggregates c
        WHERE c.view_schema = 'coinpulse'
    ) t
    CROSS JOIN LATERAL (
        SELECT count(*) AS chunks, count(*) FILTER (WHERE x.is_compressed) AS compressed
        FROM timescaledb_information.chunks x
        WHERE x.hypertable_schema = t.schema_name AND x.hypertable_name = t.table_name
    ) ch
    LEFT JOIN LATERAL hypertable_columnstore_stats(format('%I.%I', t.schema_name, t.table_name)::regclass) st
        ON true;
END
$fn$;
COMMENT ON FUNCTION coinpulse.storage_sizes_now() IS
    'Per raw hypertable (kind raw) and rollup (kind rollup, its materialization): chunks, chunks in the '
    'columnstore, total bytes (hypertable_approximate_size) and the columnstore''s bytes before and after '
    'compression (NULL without columnstore chunks). Measured now: opens every chunk.';

CREATE TABLE coinpulse.storage_size_measurements (
    kind                     text        NOT NULL,
    name                     text        NOT NULL,
    chunks                   bigint      NOT NULL,
    columnstore_chunks       bigint      NOT NULL,
    total_bytes              bigint,
    columnstore_before_bytes bigint,
    columnstore_after_bytes  bigint,
    measured_at              timestamptz NOT NULL,
    PRIMARY KEY (kind, name)
);
COMMENT ON TABLE coinpulse.storage_size_measurements IS
    'The latest storage_sizes_now() measurement, replaced by refresh_storage_sizes (a job, every 5 minutes).';

CREATE PROCEDURE coinpulse.refresh_storage_sizes(job_id integer DEFAULT NULL, config jsonb DEFAULT NULL)
LANGUAGE plpgsql AS $fn$
BEGIN
    DELETE FROM coinpulse.storage_size_measurements;
    INSERT INTO coinpulse.storage_size_measurements
    SELECT s.kind, s.name, s.chunks, s.columnstore_chunks, s.total_bytes, s.columnstore_before_bytes,
           s.columnstore_after_bytes, now()
    FROM coinpulse.storage_sizes_now() s;
END
$fn$;
COMMENT ON PROCEDURE coinpulse.refresh_storage_sizes(integer, jsonb) IS
    'Replace storage_size_measurements with a measurement taken now (the job''s procedure; CALL it by hand too).';

CREATE VIEW coinpulse.storage_sizes AS
WITH stored AS MATERIALIZED (
    SELECT m.* FROM coinpulse.storage_size_measurements m
    WHERE m.measured_at > now() - INTERVAL '15 minutes'
)
SELECT s.kind, s.name, s.chunks, s.columnstore_chunks, s.total_bytes, s.columnstore_before_bytes,
       s.columnstore_after_bytes, s.measured_at
FROM stored s
UNION ALL
SELECT n.kind, n.name, n.chunks, n.columnstore_chunks, n.total_bytes, n.columnstore_before_bytes,
       n.columnstore_after_bytes, now()
FROM coinpulse.storage_sizes_now() n
WHERE NOT EXISTS (SELECT FROM stored);
COMMENT ON VIEW coinpulse.storage_sizes IS
    'Chunks, columnstore chunks and bytes per raw hypertable and rollup: the job''s measurement while it is at '
    'most 15 minutes old, else measured now (storage_sizes_now()); measured_at says when.';

SELECT add_job('coinpulse.refresh_storage_sizes', INTERVAL '5 minutes', initial_start => now());

GRANT SELECT ON coinpulse.storage_size_measurements, coinpulse.storage_sizes TO coinpulse_reader, coinpulse_writer;
GRANT EXECUTE ON FUNCTION coinpulse.storage_sizes_now() TO coinpulse_reader, coinpulse_writer;
"""

DOWNGRADE = r"""
SELECT delete_job(job_id) FROM timescaledb_information.jobs
WHERE proc_schema = 'coinpulse' AND proc_name = 'refresh_storage_sizes';
DROP VIEW IF EXISTS coinpulse.storage_sizes;
DROP PROCEDURE IF EXISTS coinpulse.refresh_storage_sizes(integer, jsonb);
DROP TABLE IF EXISTS coinpulse.storage_size_measurements;
DROP FUNCTION IF EXISTS coinpulse.storage_sizes_now();
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
