"""User alert thresholds: the alert_thresholds table, its checks, and the alert_threshold_status view.

- ``alert_thresholds``: one row per "tell me when ..." (an asset's price above/below a value, its % change over
  a window above/below a value, its 24h volume above a value or its % change over a window, no tick for a
  window; a portfolio's value below a value or its % change over a window below a value), with severity,
  owner, note, enabled, and -- for rows created by ``coinpulse thresholds sync FILE`` -- the file that owns
  them (``sync_source``, ``sync_key``). A BEFORE trigger refuses nonsense with one clear message (unknown
  kind or asset, a window where none applies or a negative one, NaN or infinite values, ...); CHECK
  constraints and foreign keys state the same rules declaratively, as a backstop.
- ``alert_threshold_current(kind, asset, portfolio, window)``: the value a threshold is compared with, now.
- ``alert_threshold_status``: one row per enabled threshold with its current value, the threshold, and
  ``breached`` (0/1), plus text label columns; the Grafana rule "CoinPulse: user threshold breached"
  (grafana/provisioning/alerting/rules.yaml) reads it, one alert instance per row.

Who may change thresholds: ``coinpulse_writer`` (the CLI runs with the collector's URL) and the database
owner; ``coinpulse_reader`` (Grafana) only reads. README.md, "Alerts", has the psql recipes.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UPGRADE = r"""
-- A window as people write it: 90s, 10m, 1h, 36h, 7d (the largest unit that divides it; months count 30 days).
CREATE FUNCTION coinpulse.alert_window_text(p_window interval)
RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $fn$
    SELECT CASE
        WHEN p_window IS NULL THEN NULL
        WHEN s % 86400 = 0 THEN (s / 86400)::text || 'd'
        WHEN s % 3600 = 0 THEN (s / 3600)::text || 'h'
        WHEN s % 60 = 0 THEN (s / 60)::text || 'm'
        ELSE s::text || 's' END
    FROM (SELECT round(extract(epoch FROM p_window))::bigint AS s) x
$fn$;

CREATE TABLE coinpulse.alert_thresholds (
    id            bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind          text        NOT NULL,
    asset_id      text        REFERENCES coinpulse.assets (asset_id),
    portfolio_id  bigint      REFERENCES coinpulse.portfolios ON DELETE CASCADE,
    value         double precision,
    time_window   interval,
    enabled       boolean     NOT NULL DEFAULT true,
    severity      text        NOT NULL DEFAULT 'warning',
    owner         text,
    note          text,
    sync_source   text,
    sync_key      text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT alert_thresholds_kind_known CHECK (kind IN (
        'price_above', 'price_below', 'change_above', 'change_below', 'volume_above', 'volume_change_above',
        'stale', 'portfolio_value_below', 'portfolio_change_below')),
    CONSTRAINT alert_thresholds_one_subject CHECK (
        (kind LIKE 'portfolio\_%' AND portfolio_id IS NOT NULL AND asset_id IS NULL)
        OR (kind NOT LIKE 'portfolio\_%' AND asset_id IS NOT NULL AND portfolio_id IS NULL)),
    -- double precision NaN compares equal to itself and above every number: name it explicitly.
    CONSTRAINT alert_thresholds_value_finite CHECK (
        value IS NULL OR (value <> 'NaN' AND value > '-Infinity' AND value < 'Infinity')),
    CONSTRAINT alert_thresholds_value_where_needed CHECK ((value IS NULL) = (kind = 'stale')),
    CONSTRAINT alert_thresholds_amount_positive CHECK (
        kind NOT IN ('price_above', 'price_below', 'volume_above', 'portfolio_value_below') OR value > 0),
    CONSTRAINT alert_thresholds_change_possible CHECK (
        kind NOT IN ('change_above', 'change_below', 'volume_change_above', 'portfolio_change_below') OR value > -100),
    CONSTRAINT alert_thresholds_window_where_needed CHECK ((time_window IS NOT NULL) = (kind IN (
        'change_above', 'change_below', 'volume_change_above', 'stale', 'portfolio_change_below'))),
    CONSTRAINT alert_thresholds_window_range CHECK (time_window IS NULL OR (
        time_window >= CASE WHEN kind = 'stale' THEN INTERVAL '10 seconds' ELSE INTERVAL '1 minute' END
        AND time_window <= INTERVAL '366 days')),
    CONSTRAINT alert_thresholds_severity_known CHECK (severity IN ('info', 'warning', 'critical')),
    CONSTRAINT alert_thresholds_owner_text CHECK (
        owner IS NULL OR (length(owner) BETWEEN 1 AND 100 AND owner !~ '[[:cntrl:]]')),
    CONSTRAINT alert_thresholds_sync_pair CHECK ((sync_source IS NULL) = (sync_key IS NULL)),
    CONSTRAINT alert_thresholds_sync_unique UNIQUE (sync_source, sync_key)
);
CREATE INDEX alert_thresholds_enabled_idx ON coinpulse.alert_thresholds (id) WHERE enabled;
COMMENT ON TABLE coinpulse.alert_thresholds IS
    'User alert thresholds (README "Alerts"). kind: price_above/price_below (value USD), change_above/'
    'change_below (value % over time_window), volume_above (24h volume USD), volume_change_above (% change of '
    'the 24h volume over time_window), stale (no tick for time_window; value NULL), portfolio_value_below '
    '(value in the portfolio currency), portfolio_change_below (% over time_window). sync_source/sync_key: '
    'the thresholds file that owns the row (coinpulse thresholds sync); NULL = managed by hand.';

-- One clear message per kind of nonsense, before the CHECK constraints above (which say the same, tersely).
CREATE FUNCTION coinpulse.alert_thresholds_validate() RETURNS trigger
LANGUAGE plpgsql AS $fn$
DECLARE
    asset_kinds constant text[] := ARRAY['price_above', 'price_below', 'change_above', 'change_below',
                                         'volume_above', 'volume_change_above', 'stale'];
    portfolio_kinds constant text[] := ARRAY['portfolio_value_below', 'portfolio_change_below'];
    window_kinds constant text[] := ARRAY['change_above', 'change_below', 'volume_change_above', 'stale',
                                          'portfolio_change_below'];
    change_kinds constant text[] := ARRAY['change_above', 'change_below', 'volume_change_above',
                                          'portfolio_change_below'];
    shortest interval;
BEGIN
    IF NEW.kind IS NULL OR NOT (NEW.kind = ANY (asset_kinds || portfolio_kinds)) THEN
        RAISE EXCEPTION 'alert threshold: unknown kind %', coalesce(quote_literal(NEW.kind), 'NULL')
            USING ERRCODE = 'check_violation', CONSTRAINT = 'alert_thresholds_kind_known',
                  HINT = 'kinds: ' || array_to_string(asset_kinds || portfolio_kinds, ', ');
    END IF;
    IF NEW.kind = ANY (portfolio_kinds) THEN
        IF NEW.asset_id IS NOT NULL OR NEW.portfolio_id IS NULL THEN
            RAISE EXCEPTION 'alert threshold: kind % needs a portfolio (portfolio_id) and no asset', NEW.kind
                USING ERRCODE = 'check_violation', CONSTRAINT = 'alert_thresholds_one_subject';
        END IF;
        IF NOT EXISTS (SELECT FROM coinpulse.portfolios p WHERE p.portfolio_id = NEW.portfolio_id) THEN
            RAISE EXCEPTION 'alert threshold: unknown portfolio id %', NEW.portfolio_id
                USING ERRCODE = 'foreign_key_violation', CONSTRAINT = 'alert_thresholds_portfolio_id_fkey',
                      HINT = 'SELECT portfolio_id, name FROM coinpulse.portfolios';
        END IF;
    ELSE
        IF NEW.asset_id IS NULL OR NEW.portfolio_id IS NOT NULL THEN
            RAISE EXCEPTION 'alert threshold: kind % needs an asset (asset_id) and no portfolio', NEW.kind
                USING ERRCODE = 'check_violation', CONSTRAINT = 'alert_thresholds_one_subject';
        END IF;
        IF NOT EXISTS (SELECT FROM coinpulse.assets a WHERE a.asset_id = NEW.asset_id) THEN
            RAISE EXCEPTION 'alert threshold: unknown asset %: CoinPulse has not seen it', quote_literal(NEW.asset_id)
                USING ERRCODE = 'foreign_key_violation', CONSTRAINT = 'alert_thresholds_asset_id_fkey',
                      HINT = 'use a CoinCap asset id such as bitcoin (SELECT asset_id, symbol FROM coinpulse.assets)';
        END IF;
    END IF;
    IF NEW.kind = 'stale' THEN
        IF NEW.value IS NOT NULL THEN
            RAISE EXCEPTION 'alert threshold: kind stale takes a window (no tick for how long), not a value'
                USING ERRCODE = 'check_violation', CONSTRAINT = 'alert_thresholds_value_where_needed';
        END IF;
    ELSIF NEW.value IS NULL THEN
        RAISE EXCEPTION 'alert threshold: kind % needs a value', NEW.kind
            USING ERRCODE = 'not_null_violation', CONSTRAINT = 'alert_thresholds_value_where_needed';
    ELSIF NEW.value = 'NaN' OR NEW.value IN ('Infinity', '-Infinity') THEN
        RAISE EXCEPTION 'alert threshold: value must be a finite number, not %', NEW.value
            USING ERRCODE = 'check_violation', CONSTRAINT = 'alert_thresholds_value_finite';
    ELSIF NEW.kind IN ('price_above', 'price_below', 'volume_above', 'portfolio_value_below') AND NEW.value <= 0 THEN
        RAISE EXCEPTION 'alert threshold: kind % needs a positive amount, not %', NEW.kind, NEW.value
            USING ERRCODE = 'check_violation', CONSTRAINT = 'alert_thresholds_amount_positive';
    ELSIF NEW.kind = ANY (change_kinds) AND NEW.value <= -100 THEN
        RAISE EXCEPTION 'alert threshold: a change of % %% or less is impossible (values fall by 100 %% at most)',
                        NEW.value
            USING ERRCODE = 'check_violation', CONSTRAINT = 'alert_thresholds_change_possible';
    END IF;
    IF NEW.kind = ANY (window_kinds) THEN
        shortest := CASE WHEN NEW.kind = 'stale' THEN INTERVAL '10 seconds' ELSE INTERVAL '1 minute' END;
        IF NEW.time_window IS NULL THEN
            RAISE EXCEPTION 'alert threshold: kind % needs a window (time_window, e.g. 1 hour)', NEW.kind
                USING ERRCODE = 'not_null_violation', CONSTRAINT = 'alert_thresholds_window_where_needed';
        ELSIF NEW.time_window < shortest THEN
            RAISE EXCEPTION 'alert threshold: the window must be positive and at least %, not %',
                            coinpulse.alert_window_text(shortest), coinpulse.alert_window_text(NEW.time_window)
                USING ERRCODE = 'check_violation', CONSTRAINT = 'alert_thresholds_window_range';
        ELSIF NEW.time_window > INTERVAL '366 days' THEN
            RAISE EXCEPTION 'alert threshold: the window may be 366 days at most, not %',
                            coinpulse.alert_window_text(NEW.time_window)
                USING ERRCODE = 'check_violation', CONSTRAINT = 'alert_thresholds_window_range';
        END IF;
    ELSIF NEW.time_window IS NOT NULL THEN
        RAISE EXCEPTION 'alert threshold: kind % takes no window', NEW.kind
            USING ERRCODE = 'check_violation', CONSTRAINT = 'alert_thresholds_window_where_needed';
    END IF;
    IF NEW.severity IS NULL OR NEW.severity NOT IN ('info', 'warning', 'critical') THEN
        RAISE EXCEPTION 'alert threshold: severity must be info, warning or critical, not %',
                        coalesce(quote_literal(NEW.severity), 'NULL')
            USING ERRCODE = 'check_violation', CONSTRAINT = 'alert_thresholds_severity_known';
    END IF;
    IF NEW.owner IS NOT NULL AND (length(NEW.owner) NOT BETWEEN 1 AND 100 OR NEW.owner ~ '[[:cntrl:]]') THEN
        RAISE EXCEPTION 'alert threshold: owner must be 1 to 100 printable characters'
            USING ERRCODE = 'check_violation', CONSTRAINT = 'alert_thresholds_owner_text';
    END IF;
    IF TG_OP = 'UPDATE' AND NEW IS DISTINCT FROM OLD THEN
        NEW.updated_at := now();
    END IF;
    RETURN NEW;
END
$fn$;

CREATE TRIGGER alert_thresholds_validate BEFORE INSERT OR UPDATE ON coinpulse.alert_thresholds
    FOR EACH ROW EXECUTE FUNCTION coinpulse.alert_thresholds_validate();

-- The latest price of an asset: its newest tick, or (only when raw retention dropped them all) the close of its
-- newest one-minute candle. Looked for in the last hour, then the last week, then everywhere: each lookup names
-- its bound with now(), so TimescaleDB excludes older chunks when planning. An unbounded ORDER BY time DESC
-- LIMIT 1 plans every chunk (90 days of them by default) for every threshold, every minute the rule runs.
CREATE FUNCTION coinpulse.alert_latest_price(p_asset text, OUT price double precision, OUT as_of timestamptz)
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $fn$
BEGIN
    SELECT t.price_usd, t.time INTO price, as_of FROM coinpulse.price_ticks t
    WHERE t.asset_id = p_asset AND t.time > now() - INTERVAL '1 hour' ORDER BY t.time DESC LIMIT 1;
    IF FOUND THEN RETURN; END IF;
    SELECT t.price_usd, t.time INTO price, as_of FROM coinpulse.price_ticks t
    WHERE t.asset_id = p_asset AND t.time > now() - INTERVAL '7 days' ORDER BY t.time DESC LIMIT 1;
    IF FOUND THEN RETURN; END IF;
    SELECT t.price_usd, t.time INTO price, as_of FROM coinpulse.price_ticks t
    WHERE t.asset_id = p_asset ORDER BY t.time DESC LIMIT 1;
    IF FOUND THEN RETURN; END IF;
    SELECT c.close, c.bucket + INTERVAL '1 minute' INTO price, as_of FROM coinpulse.candles_1m c
    WHERE c.asset_id = p_asset ORDER BY c.bucket DESC LIMIT 1;
END
$fn$;

-- The price of an asset a window ago: the close of the last one-minute candle that ended by now() - window,
-- looked for no further back than one more window (so a data gap does not compare with a much older price).
CREATE FUNCTION coinpulse.alert_price_ago(p_asset text, p_window interval)
RETURNS double precision LANGUAGE sql STABLE PARALLEL SAFE AS $fn$
    SELECT c.close FROM coinpulse.candles_1m c
    WHERE c.asset_id = p_asset
      AND c.bucket <= now() - p_window - INTERVAL '1 minute'
      AND c.bucket > now() - 2 * p_window - INTERVAL '1 minute'
    ORDER BY c.bucket DESC LIMIT 1
$fn$;

-- What a threshold is compared with, now: a price (USD), a change (%), a 24h volume (USD), a tick age (s), or a
-- portfolio value (its currency). NULL when it cannot be known (no price yet, no reference point in the window).
CREATE FUNCTION coinpulse.alert_threshold_current(p_kind text, p_asset text, p_portfolio bigint, p_window interval,
                                                  OUT current_value double precision, OUT as_of timestamptz)
LANGUAGE plpgsql STABLE AS $fn$
DECLARE
    ref double precision;
    pf record;
BEGIN
    IF p_kind IN ('price_above', 'price_below') THEN
        SELECT lp.price, lp.as_of INTO current_value, as_of FROM coinpulse.alert_latest_price(p_asset) lp;
    ELSIF p_kind IN ('change_above', 'change_below') THEN
        SELECT lp.price, lp.as_of INTO current_value, as_of FROM coinpulse.alert_latest_price(p_asset) lp;
        ref := coinpulse.alert_price_ago(p_asset, p_window);
        current_value := CASE WHEN ref > 0 THEN 100 * (current_value / ref - 1) END;
    ELSIF p_kind IN ('volume_above', 'volume_change_above') THEN
        -- Bounded first (a day), for the same reason as alert_latest_price.
        SELECT s.volume_usd_24hr, s.time INTO current_value, as_of FROM coinpulse.asset_snapshots s
        WHERE s.asset_id = p_asset AND s.volume_usd_24hr IS NOT NULL AND s.time > now() - INTERVAL '1 day'
        ORDER BY s.time DESC LIMIT 1;
        IF NOT FOUND THEN
            SELECT s.volume_usd_24hr, s.time INTO current_value, as_of FROM coinpulse.asset_snapshots s
            WHERE s.asset_id = p_asset AND s.volume_usd_24hr IS NOT NULL ORDER BY s.time DESC LIMIT 1;
        END IF;
        IF p_kind = 'volume_change_above' THEN
            SELECT s.volume_usd_24hr INTO ref FROM coinpulse.asset_snapshots s
            WHERE s.asset_id = p_asset AND s.volume_usd_24hr IS NOT NULL
              AND s.time <= now() - p_window AND s.time > now() - 2 * p_window
            ORDER BY s.time DESC LIMIT 1;
            current_value := CASE WHEN ref > 0 THEN 100 * (current_value / ref - 1) END;
        END IF;
    ELSIF p_kind = 'stale' THEN
        -- Seconds since the newest tick; an asset that never had one counts from when CoinPulse first saw it.
        SELECT coalesce(lp.as_of, a.first_seen) INTO as_of
        FROM coinpulse.assets a LEFT JOIN LATERAL coinpulse.alert_latest_price(a.asset_id) lp ON true
        WHERE a.asset_id = p_asset;
        current_value := extract(epoch FROM now() - as_of);
    ELSIF p_kind = 'portfolio_value_below' THEN
        -- Market value of the holdings in the portfolio currency; 0 once everything is sold; NULL while a held
        -- asset has no price or the currency no rate.
        SELECT CASE WHEN count(*) = 0 THEN NULL
                    WHEN bool_and(h.quantity = 0 OR h.market_value IS NOT NULL)
                    THEN coalesce(sum(h.market_value) FILTER (WHERE h.quantity <> 0), 0) END,
               coalesce(min(h.price_time) FILTER (WHERE h.quantity <> 0), now())
        INTO current_value, as_of
        FROM coinpulse.portfolio_holdings h WHERE h.portfolio_id = p_portfolio;
    ELSIF p_kind = 'portfolio_change_below' THEN
        -- Change of the value of what is held now, priced a window ago and now, in the portfolio currency:
        -- a buy or sell inside the window is not a "change" (a market move of the holdings is).
        SELECT p.rate_id INTO pf FROM coinpulse.portfolios p WHERE p.portfolio_id = p_portfolio;
        SELECT CASE WHEN count(*) > 0 AND bool_and(x.price_now IS NOT NULL AND x.price_then IS NOT NULL)
                    THEN 100 * ((sum(x.quantity * x.price_now) / coinpulse.currency_rate_usd(pf.rate_id, now()))
                                / nullif(sum(x.quantity * x.price_then)
                                         / coinpulse.currency_rate_usd(pf.rate_id, now() - p_window), 0) - 1) END,
               min(x.price_time)
        INTO current_value, as_of
        FROM (SELECT h.quantity, h.price_usd AS price_now, h.price_time,
                     coinpulse.alert_price_ago(h.asset_id, p_window)::numeric AS price_then
              FROM coinpulse.portfolio_holdings h
              WHERE h.portfolio_id = p_portfolio AND h.quantity <> 0) x;
    END IF;
END
$fn$;

CREATE VIEW coinpulse.alert_threshold_status AS
SELECT t.id::text                                   AS threshold_id,
       t.kind,
       coalesce(t.asset_id, p.name)                 AS subject,
       coalesce(t.asset_id, '')                     AS asset_id,
       coalesce(p.name, '')                         AS portfolio,
       coalesce(coinpulse.alert_window_text(t.time_window), '') AS time_window,
       CASE WHEN t.kind IN ('price_above', 'price_below', 'volume_above') THEN 'USD'
            WHEN t.kind = 'stale' THEN 's'
            WHEN t.kind = 'portfolio_value_below' THEN p.base_currency
            ELSE '%' END                            AS unit,
       t.severity,
       coalesce(t.owner, '')                        AS owner,
       coalesce(t.note, '')                         AS note,
       c.current_value,
       coalesce(t.value, extract(epoch FROM t.time_window)::double precision) AS threshold,
       CASE WHEN t.kind IN ('price_above', 'change_above', 'volume_above', 'volume_change_above')
                 AND c.current_value > t.value THEN 1
            WHEN t.kind IN ('price_below', 'change_below', 'portfolio_value_below', 'portfolio_change_below')
                 AND c.current_value < t.value THEN 1
            WHEN t.kind = 'stale' AND c.current_value > extract(epoch FROM t.time_window) THEN 1
            ELSE 0 END                              AS breached,
       c.as_of
FROM coinpulse.alert_thresholds t
LEFT JOIN coinpulse.portfolios p ON p.portfolio_id = t.portfolio_id
CROSS JOIN LATERAL coinpulse.alert_threshold_current(t.kind, t.asset_id, t.portfolio_id, t.time_window) c
WHERE t.enabled;
COMMENT ON VIEW coinpulse.alert_threshold_status IS
    'One row per enabled alert threshold: current_value against threshold (unit: USD, %, s, or the portfolio '
    'currency; stale: seconds since the newest tick against the window in seconds), breached 0/1, and text '
    'label columns (empty string when not set), shaped for the Grafana rule "CoinPulse: user threshold breached".';

GRANT SELECT ON coinpulse.alert_thresholds, coinpulse.alert_threshold_status TO coinpulse_reader, coinpulse_writer;
GRANT INSERT, UPDATE, DELETE ON coinpulse.alert_thresholds TO coinpulse_writer;
GRANT EXECUTE ON FUNCTION coinpulse.alert_latest_price(text), coinpulse.alert_price_ago(text, interval),
                          coinpulse.alert_threshold_current(text, text, bigint, interval),
                          coinpulse.alert_window_text(interval)
    TO coinpulse_reader, coinpulse_writer;
"""

DOWNGRADE = r"""
DROP VIEW IF EXISTS coinpulse.alert_threshold_status;
DROP FUNCTION IF EXISTS coinpulse.alert_threshold_current(text, text, bigint, interval),
                        coinpulse.alert_price_ago(text, interval), coinpulse.alert_latest_price(text),
                        coinpulse.alert_window_text(interval);
DROP TABLE IF EXISTS coinpulse.alert_thresholds;
DROP FUNCTION IF EXISTS coinpulse.alert_thresholds_validate();
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
