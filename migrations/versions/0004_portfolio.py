"""Portfolios: tables, the average-cost aggregate, holdings and value-over-time views, the history import log.

- ``portfolios`` (name unique, base currency: USD or a CoinCap rate symbol, resolved to its ``rate_id``) and
  ``portfolio_transactions`` (signed quantity, USD price per unit -- given, or taken from the candles and
  marked ``price_source = 'candle'`` -- fee in USD, note). CHECKs refuse zero, NaN and infinite numbers;
  the foreign key refuses unknown assets; a statement trigger refuses any change after which a holding
  would be negative at some point in time order (backdated sells, deleted buys), naming the point.
- ``average_cost(quantity, price_usd, fee_usd ORDER BY ...)``: the average-cost method as an aggregate
  (see collector/portfolio.py for the rules); ``portfolio_holdings`` applies it per portfolio and asset and
  prices the holdings at the latest price, in USD and in the portfolio's currency.
- ``portfolio_value(portfolio, from, to, bucket)`` and ``portfolio_value_by_asset(...)``: value over time
  from the candles, with the holdings as of each bucket's close; the view ``portfolio_value``: every
  portfolio, daily, since its first transaction.
- ``history_imports``: what ``collector/history.py`` fetched from CoinCap, so a range CoinCap has no
  data for is not asked for again.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UPGRADE = r"""
CREATE TABLE coinpulse.portfolios (
    portfolio_id   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name           text        NOT NULL UNIQUE
                   CHECK (length(name) BETWEEN 1 AND 100 AND name = btrim(name) AND name !~ '[[:cntrl:]]'),
    base_currency  text        NOT NULL DEFAULT 'USD' CHECK (base_currency ~ '^[A-Z0-9]{1,12}$'),
    rate_id        text        CHECK (rate_id ~ '^[a-z0-9][a-z0-9-]*$'),
    note           text,
    created_at     timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT portfolios_currency_rate CHECK ((base_currency = 'USD') = (rate_id IS NULL))
);
COMMENT ON TABLE coinpulse.portfolios IS
    'A named set of transactions. base_currency: USD, or the symbol of a CoinCap rate (rate_id) used to show '
    'amounts, converted at rate_snapshots.rate_usd (USD per unit of the currency).';

CREATE TABLE coinpulse.portfolio_transactions (
    transaction_id  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    portfolio_id    bigint      NOT NULL REFERENCES coinpulse.portfolios ON DELETE CASCADE,
    time            timestamptz NOT NULL CHECK (time > '-infinity' AND time < 'infinity'),
    asset_id        text        NOT NULL REFERENCES coinpulse.assets (asset_id),
    -- numeric NaN compares greater than every number, so each check names it explicitly.
    quantity        numeric     NOT NULL
                    CHECK (quantity <> 'NaN' AND quantity <> 0 AND abs(quantity) < 'Infinity'),
    price_usd       numeric     NOT NULL CHECK (price_usd <> 'NaN' AND price_usd > 0 AND price_usd < 'Infinity'),
    price_source    text        NOT NULL DEFAULT 'user' CHECK (price_source IN ('user', 'candle')),
    fee_usd         numeric     NOT NULL DEFAULT 0 CHECK (fee_usd <> 'NaN' AND fee_usd >= 0 AND fee_usd < 'Infinity'),
    note            text,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX portfolio_transactions_holding_idx ON coinpulse.portfolio_transactions (portfolio_id, asset_id, time);
COMMENT ON TABLE coinpulse.portfolio_transactions IS
    'Buys (quantity > 0) and sells (quantity < 0) at price_usd per unit (USD), fee_usd in USD. price_source: '
    '''user'' (given) or ''candle'' (taken from the stored candles at that time). Order of application: time, '
    'buys before sells at the same instant, transaction_id.';

-- A holding may never be negative at any point in time order. Checked once per statement over the
-- (portfolio, asset) pairs it touched, so a multi-row INSERT (an import) is judged as a whole.
CREATE FUNCTION coinpulse.portfolio_check_holdings() RETURNS trigger
LANGUAGE plpgsql AS $fn$
DECLARE
    pids bigint[];
    aids text[];
    bad record;
BEGIN
    IF TG_OP = 'INSERT' THEN
        SELECT array_agg(d.portfolio_id), array_agg(d.asset_id) INTO pids, aids
        FROM (SELECT DISTINCT n.portfolio_id, n.asset_id FROM new_rows n) d;
    ELSIF TG_OP = 'DELETE' THEN
        SELECT array_agg(d.portfolio_id), array_agg(d.asset_id) INTO pids, aids
        FROM (SELECT DISTINCT o.portfolio_id, o.asset_id FROM old_rows o) d;
    ELSE
        SELECT array_agg(d.portfolio_id), array_agg(d.asset_id) INTO pids, aids
        FROM (SELECT n.portfolio_id, n.asset_id FROM new_rows n
              UNION SELECT o.portfolio_id, o.asset_id FROM old_rows o) d;
    END IF;
    IF pids IS NULL THEN
        RETURN NULL;
    END IF;
    -- Concurrent writers of the same portfolio wait for each other, so each check sees the other's rows.
    PERFORM 1 FROM coinpulse.portfolios p WHERE p.portfolio_id = ANY (pids) ORDER BY p.portfolio_id
        FOR NO KEY UPDATE;
    SELECT r.*, p.name INTO bad
    FROM (
        SELECT t.portfolio_id, t.asset_id, t.time, t.transaction_id, t.quantity,
               sum(t.quantity) OVER (PARTITION BY t.portfolio_id, t.asset_id
                                     ORDER BY t.time, t.quantity < 0, t.transaction_id
                                     ROWS UNBOUNDED PRECEDING) AS held
        FROM coinpulse.portfolio_transactions t
        JOIN unnest(pids, aids) AS c(portfolio_id, asset_id)
          ON c.portfolio_id = t.portfolio_id AND c.asset_id = t.asset_id
    ) r
    JOIN coinpulse.portfolios p ON p.portfolio_id = r.portfolio_id
    WHERE r.held < 0
    ORDER BY r.time, r.transaction_id
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'portfolio %: cannot sell more % than is held: the holding would be % at % (transaction %)',
                        quote_literal(bad.name), bad.asset_id, bad.held,
                        to_char(bad.time AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'), bad.transaction_id
            USING ERRCODE = 'check_violation', CONSTRAINT = 'portfolio_holding_not_negative',
                  HINT = 'a sell (or a deleted/changed buy) may not leave a holding below zero at any time';
    END IF;
    RETURN NULL;
END
$fn$;

CREATE TRIGGER portfolio_holding_not_negative_insert AFTER INSERT ON coinpulse.portfolio_transactions
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION coinpulse.portfolio_check_holdings();
CREATE TRIGGER portfolio_holding_not_negative_update AFTER UPDATE ON coinpulse.portfolio_transactions
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT
    EXECUTE FUNCTION coinpulse.portfolio_check_holdings();
CREATE TRIGGER portfolio_holding_not_negative_delete AFTER DELETE ON coinpulse.portfolio_transactions
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION coinpulse.portfolio_check_holdings();

-- The average-cost method, one transaction at a time (collector/portfolio.py apply_trade is the same).
CREATE TYPE coinpulse.position AS (quantity numeric, cost_basis numeric, realized_pnl numeric, fees numeric);

CREATE FUNCTION coinpulse.average_cost_step(s coinpulse.position, p_quantity numeric, p_price numeric,
                                            p_fee numeric)
RETURNS coinpulse.position LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $fn$
DECLARE
    sold numeric;
    cost_sold numeric;
BEGIN
    IF p_quantity > 0 THEN
        RETURN ROW(s.quantity + p_quantity, s.cost_basis + p_quantity * p_price + p_fee, s.realized_pnl,
                   s.fees + p_fee)::coinpulse.position;
    END IF;
    sold := -p_quantity;
    IF sold >= s.quantity THEN
        cost_sold := s.cost_basis;  -- the whole holding (more than held cannot be stored)
    ELSE
        cost_sold := s.cost_basis * sold / s.quantity;
    END IF;
    RETURN ROW(s.quantity - sold, s.cost_basis - cost_sold, s.realized_pnl + (sold * p_price - p_fee) - cost_sold,
               s.fees + p_fee)::coinpulse.position;
END
$fn$;

CREATE AGGREGATE coinpulse.average_cost(numeric, numeric, numeric) (
    SFUNC = coinpulse.average_cost_step,
    STYPE = coinpulse.position,
    INITCOND = '(0,0,0,0)'
);
COMMENT ON AGGREGATE coinpulse.average_cost(numeric, numeric, numeric) IS
    'average_cost(quantity, price_usd, fee_usd ORDER BY time, quantity < 0, transaction_id): (quantity, '
    'cost_basis, realized_pnl, fees) under the average-cost method.';

-- USD per unit of a currency (CoinCap rateUsd) as of a time: the latest rate at or before it, else the
-- earliest after it (raw snapshots are kept COINPULSE_RETENTION_DAYS); NULL rate_id = USD = 1.
CREATE FUNCTION coinpulse.currency_rate_usd(p_rate_id text, p_at timestamptz DEFAULT now())
RETURNS numeric LANGUAGE sql STABLE PARALLEL SAFE AS $fn$
    SELECT CASE WHEN p_rate_id IS NULL THEN 1::numeric ELSE coalesce(
        (SELECT r.rate_usd::numeric FROM coinpulse.rate_snapshots r
         WHERE r.rate_id = p_rate_id AND r.time <= p_at AND r.rate_usd > 0 ORDER BY r.time DESC LIMIT 1),
        (SELECT r.rate_usd::numeric FROM coinpulse.rate_snapshots r
         WHERE r.rate_id = p_rate_id AND r.time > p_at AND r.rate_usd > 0 ORDER BY r.time LIMIT 1)) END
$fn$;

-- An amount in USD shown in a currency worth rate_usd USD per unit (exact when the currency is USD).
CREATE FUNCTION coinpulse.usd_to(p_usd numeric, p_rate_usd numeric)
RETURNS numeric LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $fn$
    SELECT CASE WHEN p_rate_usd = 1 THEN p_usd ELSE p_usd / p_rate_usd END
$fn$;

CREATE VIEW coinpulse.portfolio_holdings AS
WITH positions AS (
    SELECT t.portfolio_id, t.asset_id,
           coinpulse.average_cost(t.quantity, t.price_usd, t.fee_usd
                                  ORDER BY t.time, t.quantity < 0, t.transaction_id) AS pos,
           count(*) AS transactions, min(t.time) AS first_transaction, max(t.time) AS last_transaction
    FROM coinpulse.portfolio_transactions t
    GROUP BY t.portfolio_id, t.asset_id
), priced AS (
    SELECT x.portfolio_id, x.asset_id, x.transactions, x.first_transaction, x.last_transaction,
           (x.pos).quantity AS quantity, (x.pos).cost_basis AS cost_basis_usd,
           (x.pos).realized_pnl AS realized_pnl_usd, (x.pos).fees AS fees_usd,
           coalesce(tk.price_usd, cd.price_usd) AS price_usd, coalesce(tk.time, cd.time) AS price_time,
           CASE WHEN (x.pos).quantity = 0 THEN 0
                ELSE (x.pos).quantity * coalesce(tk.price_usd, cd.price_usd) END AS market_value_usd
    FROM positions x
    -- The latest price: the newest tick, or (only when raw retention dropped them all) the close of the newest
    -- candle.
    LEFT JOIN LATERAL (
        SELECT pt.price_usd::numeric AS price_usd, pt.time FROM coinpulse.price_ticks pt
        WHERE pt.asset_id = x.asset_id ORDER BY pt.time DESC LIMIT 1
    ) tk ON true
    LEFT JOIN LATERAL (
        SELECT c.close::numeric AS price_usd, c.bucket AS time FROM coinpulse.candles_1m c
        WHERE tk.time IS NULL AND c.asset_id = x.asset_id ORDER BY c.bucket DESC LIMIT 1
    ) cd ON true
)
SELECT p.portfolio_id,
       p.name                                                    AS portfolio,
       p.base_currency                                           AS currency,
       q.asset_id,
       a.symbol,
       q.quantity,
       coinpulse.usd_to(CASE WHEN q.quantity > 0 THEN q.cost_basis_usd / q.quantity END, r.rate_usd) AS avg_cost,
       coinpulse.usd_to(q.cost_basis_usd, r.rate_usd)                      AS cost_basis,
       coinpulse.usd_to(q.price_usd, r.rate_usd)                           AS price,
       coinpulse.usd_to(q.market_value_usd, r.rate_usd)                    AS market_value,
       coinpulse.usd_to(q.market_value_usd - q.cost_basis_usd, r.rate_usd) AS unrealized_pnl,
       coinpulse.usd_to(q.realized_pnl_usd, r.rate_usd)                    AS realized_pnl,
       coinpulse.usd_to(q.fees_usd, r.rate_usd)                            AS fees,
       CASE WHEN q.quantity > 0 THEN q.cost_basis_usd / q.quantity END AS avg_cost_usd,
       q.cost_basis_usd,
       q.price_usd,
       q.market_value_usd,
       q.market_value_usd - q.cost_basis_usd                     AS unrealized_pnl_usd,
       q.realized_pnl_usd,
       q.fees_usd,
       r.rate_usd,
       q.price_time,
       q.transactions,
       q.first_transaction,
       q.last_transaction
FROM priced q
JOIN coinpulse.portfolios p ON p.portfolio_id = q.portfolio_id
LEFT JOIN coinpulse.assets a ON a.asset_id = q.asset_id
CROSS JOIN LATERAL (SELECT coinpulse.currency_rate_usd(p.rate_id) AS rate_usd) r;
COMMENT ON VIEW coinpulse.portfolio_holdings IS
    'Per portfolio and asset (also fully sold ones, for their realized P&L): quantity, average cost, cost '
    'basis, latest price, market value, unrealized and realized P&L and fees under the average-cost method, '
    'in the portfolio currency (converted at the latest CoinCap rate; NULL if none is stored) and in USD.';

CREATE FUNCTION coinpulse.portfolio_value_by_asset(p_portfolio text, p_from timestamptz,
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
    RETURN QUERY EXECUTE format($q$
        WITH buckets AS (
            SELECT g AS bucket, coinpulse.currency_rate_usd($5, g + $2) AS rate_usd
            FROM generate_series(time_bucket($2, $3), $4, $2) AS g
            WHERE g < $4
        ), held AS (
            SELECT DISTINCT t.asset_id FROM coinpulse.portfolio_transactions t WHERE t.portfolio_id = $1
        ), closes AS (
            -- the close of each bucket: the close of its last candle
            SELECT time_bucket($2, c.bucket) AS bucket, c.asset_id, last(c.close, c.bucket) AS close
            FROM coinpulse.%1$I c
            WHERE c.asset_id IN (SELECT h.asset_id FROM held h)
              AND c.bucket >= time_bucket($2, $3)
              AND c.bucket < (SELECT max(b.bucket) FROM buckets b) + $2
            GROUP BY 1, 2
        ), seed AS (
            -- the last close before the first bucket, carried into buckets without candles
            SELECT h.asset_id, s.close
            FROM held h
            LEFT JOIN LATERAL (
                SELECT c.close FROM coinpulse.%1$I c
                WHERE c.asset_id = h.asset_id AND c.bucket < time_bucket($2, $3)
                ORDER BY c.bucket DESC LIMIT 1
            ) s ON true
        ), grid AS (
            SELECT b.bucket, b.rate_usd, h.asset_id, cl.close,
                   count(cl.close) OVER (PARTITION BY h.asset_id ORDER BY b.bucket) AS grp
            FROM buckets b
            CROSS JOIN held h
            LEFT JOIN closes cl ON cl.bucket = b.bucket AND cl.asset_id = h.asset_id
        ), filled AS (
            SELECT g.bucket, g.rate_usd, g.asset_id,
                   coalesce(first_value(g.close) OVER (PARTITION BY g.asset_id, g.grp ORDER BY g.bucket),
                            sd.close)::numeric AS price_usd,
                   (SELECT coalesce(sum(t.quantity), 0) FROM coinpulse.portfolio_transactions t
                    WHERE t.portfolio_id = $1 AND t.asset_id = g.asset_id AND t.time < g.bucket + $2) AS quantity
            FROM grid g
            JOIN seed sd ON sd.asset_id = g.asset_id
        )
        SELECT f.bucket, $1, $6, $7, f.asset_id, f.quantity, f.price_usd,
               CASE WHEN f.quantity = 0 THEN 0 ELSE f.quantity * f.price_usd END,
               f.rate_usd,
               coinpulse.usd_to(CASE WHEN f.quantity = 0 THEN 0 ELSE f.quantity * f.price_usd END, f.rate_usd)
        FROM filled f
        ORDER BY f.bucket, f.asset_id
    $q$, level) USING pf.portfolio_id, width, p_from, p_to, pf.rate_id, pf.name, pf.base_currency;
END
$fn$;
COMMENT ON FUNCTION coinpulse.portfolio_value_by_asset(text, timestamptz, timestamptz, interval) IS
    'Per bucket (labelled by its start) and asset: the holding after every transaction before the bucket''s end, '
    'priced at the close of the bucket (the asset''s last price before its end, carried forward). Buckets: hourly '
    'for ranges up to 31 days, daily beyond, or p_bucket rounded up to whole minutes/hours/days.';

CREATE FUNCTION coinpulse.portfolio_value(p_portfolio text, p_from timestamptz, p_to timestamptz DEFAULT now(),
                                          p_bucket interval DEFAULT NULL)
RETURNS TABLE ("time" timestamptz, portfolio_id bigint, portfolio text, currency text, value numeric,
               value_usd numeric, rate_usd numeric)
LANGUAGE sql STABLE AS $fn$
    SELECT v.time, v.portfolio_id, v.portfolio, v.currency,
           CASE WHEN bool_and(v.value IS NOT NULL) THEN sum(v.value) END,
           CASE WHEN bool_and(v.value_usd IS NOT NULL) THEN sum(v.value_usd) END,
           min(v.rate_usd)
    FROM coinpulse.portfolio_value_by_asset(p_portfolio, p_from, p_to, p_bucket) v
    GROUP BY v.time, v.portfolio_id, v.portfolio, v.currency
    ORDER BY v.time
$fn$;
COMMENT ON FUNCTION coinpulse.portfolio_value(text, timestamptz, timestamptz, interval) IS
    'Value of a portfolio per bucket (see portfolio_value_by_asset), in its currency and in USD; NULL where a '
    'held asset has no price yet.';

CREATE VIEW coinpulse.portfolio_value AS
SELECT v.*
FROM (SELECT t.portfolio_id, time_bucket(INTERVAL '1 day', min(t.time)) AS since
      FROM coinpulse.portfolio_transactions t GROUP BY t.portfolio_id) f
JOIN coinpulse.portfolios p ON p.portfolio_id = f.portfolio_id
CROSS JOIN LATERAL coinpulse.portfolio_value(p.name, f.since, greatest(now(), f.since + INTERVAL '1 day'),
                                             INTERVAL '1 day') v;
COMMENT ON VIEW coinpulse.portfolio_value IS
    'Every portfolio, daily since its first transaction: value at each day''s close (portfolio_value()).';

CREATE TABLE coinpulse.history_imports (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    asset_id      text        NOT NULL,
    range_start   timestamptz NOT NULL,
    range_end     timestamptz NOT NULL,
    intervals     text        NOT NULL,
    requests      integer     NOT NULL,
    points        integer     NOT NULL,
    rows_written  integer     NOT NULL,
    first_point   timestamptz,
    last_point    timestamptz,
    finished_at   timestamptz NOT NULL DEFAULT now(),
    CHECK (range_end > range_start)
);
CREATE INDEX history_imports_asset_idx ON coinpulse.history_imports (asset_id, range_start);
COMMENT ON TABLE coinpulse.history_imports IS
    'CoinCap /assets/{id}/history imports (collector/history.py): the range asked for and what came back.';

GRANT SELECT ON coinpulse.portfolios, coinpulse.portfolio_transactions, coinpulse.portfolio_holdings,
                coinpulse.portfolio_value, coinpulse.history_imports TO coinpulse_reader, coinpulse_writer;
GRANT INSERT, UPDATE, DELETE ON coinpulse.portfolios, coinpulse.portfolio_transactions TO coinpulse_writer;
GRANT INSERT ON coinpulse.history_imports TO coinpulse_writer;
GRANT EXECUTE ON FUNCTION coinpulse.currency_rate_usd(text, timestamptz), coinpulse.usd_to(numeric, numeric),
                          coinpulse.portfolio_value_by_asset(text, timestamptz, timestamptz, interval),
                          coinpulse.portfolio_value(text, timestamptz, timestamptz, interval)
    TO coinpulse_reader, coinpulse_writer;
"""

DOWNGRADE = r"""
DROP VIEW IF EXISTS coinpulse.portfolio_value, coinpulse.portfolio_holdings;
DROP FUNCTION IF EXISTS coinpulse.portfolio_value(text, timestamptz, timestamptz, interval),
                        coinpulse.usd_to(numeric, numeric),
                        coinpulse.portfolio_value_by_asset(text, timestamptz, timestamptz, interval),
                        coinpulse.currency_rate_usd(text, timestamptz);
DROP AGGREGATE IF EXISTS coinpulse.average_cost(numeric, numeric, numeric);
DROP FUNCTION IF EXISTS coinpulse.average_cost_step(coinpulse.position, numeric, numeric, numeric);
DROP TYPE IF EXISTS coinpulse.position;
DROP TABLE IF EXISTS coinpulse.history_imports, coinpulse.portfolio_transactions, coinpulse.portfolios;
DROP FUNCTION IF EXISTS coinpulse.portfolio_check_holdings();
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
