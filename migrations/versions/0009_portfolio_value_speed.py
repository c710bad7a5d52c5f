"""Portfolio value by asset: fewer sorts and lookups, and UTC days whatever the session's time zone.

Over a year of 100 assets the Portfolio dashboard's panels took 82-104 ms for 30 days of hourly buckets of a
10-asset portfolio. ``portfolio_value_by_asset`` gives the same rows (a test compares them with migration 0004's
definition on random data) with less work:

- the held assets are known before the query is planned and passed as an array, so the candles of the range are
  read through the (asset_id, bucket) index with constant bounds, in one scan rather than one per asset;
- assets are numbered (their order in that array): the window pass and the final order sort integers, not text;
- trades are summed into the bucket from which they count, so the window pass runs over the buckets alone (0007
  merged the trades into it);
- the value in USD is computed once per row;
- JIT compilation is off for the function: on a year of candles the plan's estimated cost (the fallback lookup
  of a close at any time before the range) crossed ``jit_above_cost``, and compiling took ~120 ms of ~220.

Also: daily buckets were generated with ``+ INTERVAL '1 day'`` in the session's time zone, so in a zone with
daylight saving time (a psql session with ``TimeZone = 'Europe/Berlin'``) the buckets after a change were an hour
off the UTC days of ``candles_1d`` and carried the previous close. Days now count as 24 hours, as ``time_bucket``
does, and the buckets are UTC days in every session.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UPGRADE = r"""
CREATE OR REPLACE FUNCTION coinpulse.portfolio_value_by_asset(p_portfolio text, p_from timestamptz,
                                                   p_to timestamptz DEFAULT now(), p_bucket interval DEFAULT NULL)
RETURNS TABLE ("time" timestamptz, portfolio_id bigint, portfolio text, currency text, asset_id text,
               quantity numeric, price_usd numeric, value_usd numeric, rate_usd numeric, value numeric)
LANGUAGE plpgsql STABLE
-- The plan's cost estimate (the fallback lookup of a close at any time before the range) crosses jit_above_cost
-- on a year of candles; compiling it took ~120 ms of a query that runs in ~40.
SET jit = off
AS $fn$
#variable_conflict use_column
DECLARE
    pf record;
    width interval;
    secs numeric;
    level text;
    native interval;
    first_bucket timestamptz;
    last_bucket timestamptz;
    held text[];
BEGIN
    SELECT p.portfolio_id, p.name, p.base_currency, p.rate_id INTO pf
    FROM coinpulse.portfolios p WHERE p.name = p_portfolio;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no portfolio named %', quote_literal(p_portfolio)
            USING ERRCODE = 'no_data_found', HINT = 'SELECT name FROM coinpulse.portfolios';
    END IF;
    IF p_from IS NULL OR p_to IS NULL OR p_to <= p_from THEN
        RAISE EXCEPTION 'portfolio value: the range must have from < to (got % .. %)', p_from, p_to
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- Hourly for ranges up to 31 days, daily beyond; a given bucket is rounded up to whole minutes, hours
    -- or days, and read from candles_1m, candles_1h or candles_1d so its edges fall on candle edges. Days are
    -- counted as 24 hours, as time_bucket does, so buckets stay on UTC days whatever the session's time zone.
    width := coalesce(p_bucket, CASE WHEN p_to - p_from <= INTERVAL '31 days' THEN INTERVAL '1 hour'
                                     ELSE INTERVAL '1 day' END);
    secs := extract(epoch FROM width);
    IF secs <= 0 THEN
        RAISE EXCEPTION 'portfolio value: the bucket must be positive (got %)', width
            USING ERRCODE = 'invalid_parameter_value';
    ELSIF secs >= 86400 THEN
        width := make_interval(hours => 24 * ceil(secs / 86400)::int);
        level := 'candles_1d';
        native := INTERVAL '24 hours';
    ELSIF secs >= 3600 THEN
        width := make_interval(hours => ceil(secs / 3600)::int);
        level := 'candles_1h';
        native := INTERVAL '1 hour';
    ELSE
        width := make_interval(mins => ceil(secs / 60)::int);
        level := 'candles_1m';
        native := INTERVAL '1 minute';
    END IF;
    IF extract(epoch FROM p_to - p_from) / extract(epoch FROM width) > 100000 THEN
        RAISE EXCEPTION 'portfolio value: % buckets of % is too many (at most 100000): use a wider bucket',
                        ceil(extract(epoch FROM p_to - p_from) / extract(epoch FROM width)), justify_hours(width)
            USING ERRCODE = 'program_limit_exceeded';
    END IF;
    -- The buckets: first_bucket, first_bucket + width, ... up to the last one starting before p_to.
    first_bucket := time_bucket(width, p_from);
    last_bucket := first_bucket
                   + width * (ceil(extract(epoch FROM p_to - first_bucket) / extract(epoch FROM width)) - 1);
    SELECT array_agg(DISTINCT t.asset_id ORDER BY t.asset_id) INTO held
    FROM coinpulse.portfolio_transactions t WHERE t.portfolio_id = pf.portfolio_id;
    IF held IS NULL THEN
        RETURN;
    END IF;
    -- One pass over buckets x held assets (asset k = its position in `held`), with every bound a constant when
    -- the query is planned: the candles of the held assets in the range (their closes; the last close of each
    -- bucket when it spans several candles), the trades summed into the bucket from which they count (a bucket
    -- holds every trade before its end; trades before the first bucket count from it), and the close before the
    -- first bucket (looked for in the 48 buckets before it first) to carry into buckets before any candle.
    RETURN QUERY EXECUTE format($q$
        WITH held AS MATERIALIZED (
            SELECT h.asset_id, h.k::int AS k FROM unnest($8::text[]) WITH ORDINALITY h(asset_id, k)
        ), closes AS MATERIALIZED (
            SELECT %2$s AS bucket, h.k, %3$s AS close
            FROM coinpulse.%1$I c JOIN held h ON h.asset_id = c.asset_id
            WHERE c.asset_id = ANY($8) AND c.bucket >= $3 AND c.bucket < $4 + $2
            %4$s
        ), trades AS MATERIALIZED (
            SELECT greatest(time_bucket($2, t.time), $3) AS bucket, h.k, sum(t.quantity) AS quantity
            FROM coinpulse.portfolio_transactions t JOIN held h ON h.asset_id = t.asset_id
            WHERE t.portfolio_id = $1 AND t.time < $4 + $2
            GROUP BY 1, 2
        ), seed AS MATERIALIZED (
            SELECT h.k, coalesce(n.close, f.close) AS close
            FROM held h
            LEFT JOIN LATERAL (
                SELECT c.close, c.bucket FROM coinpulse.%1$I c
                WHERE c.asset_id = h.asset_id AND c.bucket < $3 AND c.bucket >= $3 - 48 * $2
                ORDER BY c.bucket DESC LIMIT 1
            ) n ON true
            LEFT JOIN LATERAL (
                SELECT c.close FROM coinpulse.%1$I c
                WHERE n.bucket IS NULL AND c.asset_id = h.asset_id AND c.bucket < $3
                ORDER BY c.bucket DESC LIMIT 1
            ) f ON true
        ), filled AS (
            -- per asset in bucket order: the latest close so far (before any, the seed) and the quantity held
            SELECT g.bucket, s.k,
                   coalesce(last(cl.close, g.bucket) FILTER (WHERE cl.close IS NOT NULL) OVER w, s.close)::numeric
                       AS price_usd,
                   coalesce(sum(tr.quantity) OVER w, 0) AS quantity
            FROM seed s
            CROSS JOIN generate_series($3, $4, $2) AS g(bucket)
            LEFT JOIN closes cl ON cl.bucket = g.bucket AND cl.k = s.k
            LEFT JOIN trades tr ON tr.bucket = g.bucket AND tr.k = s.k
            WINDOW w AS (PARTITION BY s.k ORDER BY g.bucket)
        )
        SELECT v.bucket, $1, $6, $7, $8[v.k], v.quantity, v.price_usd, v.value_usd, v.rate_usd,
               coinpulse.usd_to(v.value_usd, v.rate_usd)
        FROM (
            SELECT f.bucket, f.k, f.quantity, f.price_usd,
                   CASE WHEN f.quantity = 0 THEN 0 ELSE f.quantity * f.price_usd END AS value_usd,
                   -- a USD portfolio (no rate) needs no lookup per bucket
                   CASE WHEN $5 IS NULL THEN 1::numeric ELSE coinpulse.currency_rate_usd($5, f.bucket + $2) END
                       AS rate_usd
            FROM filled f
            OFFSET 0  -- value_usd once per row, not once per use
        ) v
        ORDER BY v.bucket, v.k
    $q$, level,
         CASE WHEN width = native THEN 'c.bucket' ELSE 'time_bucket($2, c.bucket)' END,
         CASE WHEN width = native THEN 'c.close' ELSE 'last(c.close, c.bucket)' END,
         CASE WHEN width = native THEN '' ELSE 'GROUP BY 1, 2' END)
    USING pf.portfolio_id, width, first_bucket, last_bucket, pf.rate_id, pf.name, pf.base_currency, held;
END
$fn$;
"""

# Migration 0007's definition, as released.
DOWNGRADE = r"""
CREATE OR REPLACE FUNCTION coinpulse.portfolio_value_by_asset(p_portfolio text, p_from timestamptz,
                                                   p_to timestamptz DEFAULT now(), p_bucket interval DEFAULT NULL)
RETURNS TABLE ("time" timestamptz, portfolio_id bigint, portfolio text, currency text, asset_id text,
               quantity numeric, price_usd numeric, value_usd numeric, rate_usd numeric, value numeric)
LANGUAGE plpgsql STABLE AS $fn$
#variable_conflict use_column
DECLARE
    pf record;
    width interval;
    secs numeric;
    level text;
BEGIN
    SELECT p.portfolio_id, p.name, p.base_currency, p.rate_id INTO pf
    FROM coinpulse.portfolios p WHERE p.name = p_portfolio;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no portfolio named %', quote_literal(p_portfolio)
            USING ERRCODE = 'no_data_found', HINT = 'SELECT name FROM coinpulse.portfolios';
    END IF;
    IF p_from IS NULL OR p_to IS NULL OR p_to <= p_from THEN
        RAISE EXCEPTION 'portfolio value: the range must have from < to (got % .. %)', p_from, p_to
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- Hourly for ranges up to 31 days, daily beyond; a given bucket is rounded up to whole minutes, hours
    -- or days, and read from candles_1m, candles_1h or candles_1d so its edges fall on candle edges.
    width := coalesce(p_bucket, CASE WHEN p_to - p_from <= INTERVAL '31 days' THEN INTERVAL '1 hour'
                                     ELSE INTERVAL '1 day' END);
    secs := extract(epoch FROM width);
    IF secs <= 0 THEN
        RAISE EXCEPTION 'portfolio value: the bucket must be positive (got %)', width
            USING ERRCODE = 'invalid_parameter_value';
    ELSIF secs >= 86400 THEN
        width := make_interval(days => ceil(secs / 86400)::int);
        level := 'candles_1d';
    ELSIF secs >= 3600 THEN
        width := make_interval(hours => ceil(secs / 3600)::int);
        level := 'candles_1h';
    ELSE
        width := make_interval(mins => ceil(secs / 60)::int);
        level := 'candles_1m';
    END IF;
    IF extract(epoch FROM p_to - p_from) / extract(epoch FROM width) > 100000 THEN
        RAISE EXCEPTION 'portfolio value: % buckets of % is too many (at most 100000): use a wider bucket',
                        ceil(extract(epoch FROM p_to - p_from) / extract(epoch FROM width)), width
            USING ERRCODE = 'program_limit_exceeded';
    END IF;
    -- Same rows as 0004, with less work: the candles of each held asset through the (asset_id, bucket) index (0004's
    -- semi-join read every asset's candles), the close before the first bucket looked for in the 48 buckets before
    -- it first, and the price carried forward and the quantity held at each bucket's end in one window pass over
    -- the buckets and the transactions (0004 ran one subquery per bucket and asset, and a second window).
    RETURN QUERY EXECUTE format($q$
        WITH buckets AS (
            SELECT g AS bucket,  -- a USD portfolio (no rate) needs no lookup per bucket
                   CASE WHEN $5 IS NULL THEN 1::numeric ELSE coinpulse.currency_rate_usd($5, g + $2) END AS rate_usd
            FROM generate_series(time_bucket($2, $3), $4, $2) AS g
            WHERE g < $4
        ), held AS (
            SELECT DISTINCT t.asset_id FROM coinpulse.portfolio_transactions t WHERE t.portfolio_id = $1
        ), closes AS MATERIALIZED (
            -- the close of each bucket: the close of its last candle
            SELECT time_bucket($2, c.bucket) AS bucket, h.asset_id, last(c.close, c.bucket) AS close
            FROM held h
            CROSS JOIN LATERAL (
                SELECT c.bucket, c.close FROM coinpulse.%1$I c
                WHERE c.asset_id = h.asset_id
                  AND c.bucket >= time_bucket($2, $3)
                  AND c.bucket < (SELECT max(b.bucket) FROM buckets b) + $2
                OFFSET 0  -- a lookup per asset, not one scan of every asset's candles
            ) c
            GROUP BY 1, 2
        ), seed AS MATERIALIZED (
            -- the last close before the first bucket, carried into buckets without candles
            SELECT h.asset_id, coalesce(n.close, f.close) AS close
            FROM held h
            LEFT JOIN LATERAL (
                SELECT c.close, c.bucket FROM coinpulse.%1$I c
                WHERE c.asset_id = h.asset_id AND c.bucket < time_bucket($2, $3)
                  AND c.bucket >= time_bucket($2, $3) - 48 * $2
                ORDER BY c.bucket DESC LIMIT 1
            ) n ON true
            LEFT JOIN LATERAL (
                SELECT c.close FROM coinpulse.%1$I c
                WHERE n.bucket IS NULL AND c.asset_id = h.asset_id AND c.bucket < time_bucket($2, $3)
                ORDER BY c.bucket DESC LIMIT 1
            ) f ON true
        ), filled AS (
            -- every bucket of every held asset and every transaction, in time order per asset (a bucket at its
            -- end, after the transactions before it and before those at the same instant), in one pass: the
            -- latest close so far (carried into buckets without candles; before any, the seed) and the quantity
            -- held (every transaction before the bucket's end)
            SELECT u.bucket, u.rate_usd, u.asset_id, u.is_trade,
                   coalesce(last(u.close, u.at) FILTER (WHERE u.close IS NOT NULL) OVER w, sd.close)::numeric
                       AS price_usd,
                   coalesce(sum(u.quantity) OVER w, 0) AS quantity
            FROM (
                SELECT b.bucket, b.rate_usd, h.asset_id, cl.close, b.bucket + $2 AS at, false AS is_trade,
                       NULL::numeric AS quantity
                FROM buckets b
                CROSS JOIN held h
                LEFT JOIN closes cl ON cl.bucket = b.bucket AND cl.asset_id = h.asset_id
                UNION ALL
                SELECT NULL, NULL, t.asset_id, NULL, t.time, true, t.quantity
                FROM coinpulse.portfolio_transactions t WHERE t.portfolio_id = $1
            ) u
            JOIN seed sd ON sd.asset_id = u.asset_id
            WINDOW w AS (PARTITION BY u.asset_id ORDER BY u.at, u.is_trade)
        )
        SELECT f.bucket, $1, $6, $7, f.asset_id, f.quantity, f.price_usd,
               CASE WHEN f.quantity = 0 THEN 0 ELSE f.quantity * f.price_usd END,
               f.rate_usd,
               coinpulse.usd_to(CASE WHEN f.quantity = 0 THEN 0 ELSE f.quantity * f.price_usd END, f.rate_usd)
        FROM filled f
        WHERE NOT f.is_trade
        ORDER BY f.bucket, f.asset_id
    $q$, level) USING pf.portfolio_id, width, p_from, p_to, pf.rate_id, pf.name, pf.base_currency;
END
$fn$;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
