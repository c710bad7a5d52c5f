"""Views for people: latest_prices and asset_overview (price changes over 1h/24h/7d from candles_1m).

Both start from coinpulse.assets (every asset ever seen; the writer upserts a row for each new asset) and
look up the newest rows per asset through the (asset_id, time) indexes, so they stay cheap on a large
price_ticks.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UPGRADE = r"""
CREATE VIEW coinpulse.latest_prices AS
SELECT a.asset_id,
       a.symbol,
       a.name,
       t.price_usd,
       t.time,
       now() - t.time AS age,
       t.source
FROM coinpulse.assets a
CROSS JOIN LATERAL (
    SELECT p.time, p.price_usd, p.source
    FROM coinpulse.price_ticks p
    WHERE p.asset_id = a.asset_id
    ORDER BY p.time DESC
    LIMIT 1
) t;
COMMENT ON VIEW coinpulse.latest_prices IS
    'The newest tick of every asset that has one: price, time, age (now() - time), source.';

CREATE VIEW coinpulse.asset_overview AS
SELECT a.asset_id,
       coalesce(s.symbol, a.symbol) AS symbol,
       coalesce(s.name, a.name)     AS name,
       s.rank,
       lp.price_usd,
       lp.time                      AS price_time,
       100 * (lp.price_usd / c1h.close - 1)  AS change_1h_pct,
       100 * (lp.price_usd / c24h.close - 1) AS change_24h_pct,
       100 * (lp.price_usd / c7d.close - 1)  AS change_7d_pct,
       s.market_cap_usd,
       s.volume_usd_24hr,
       s.supply,
       s.max_supply,
       s.time                       AS snapshot_time
FROM coinpulse.assets a
LEFT JOIN LATERAL (
    SELECT x.* FROM coinpulse.asset_snapshots x
    WHERE x.asset_id = a.asset_id ORDER BY x.time DESC LIMIT 1
) s ON true
LEFT JOIN LATERAL (
    SELECT p.time, p.price_usd FROM coinpulse.price_ticks p
    WHERE p.asset_id = a.asset_id ORDER BY p.time DESC LIMIT 1
) lp ON true
-- The price N ago = close of the last one-minute candle that ended at or before now() - N.
LEFT JOIN LATERAL (
    SELECT c.close FROM coinpulse.candles_1m c
    WHERE c.asset_id = a.asset_id AND c.bucket <= now() - INTERVAL '1 hour' - INTERVAL '1 minute'
    ORDER BY c.bucket DESC LIMIT 1
) c1h ON true
LEFT JOIN LATERAL (
    SELECT c.close FROM coinpulse.candles_1m c
    WHERE c.asset_id = a.asset_id AND c.bucket <= now() - INTERVAL '24 hours' - INTERVAL '1 minute'
    ORDER BY c.bucket DESC LIMIT 1
) c24h ON true
LEFT JOIN LATERAL (
    SELECT c.close FROM coinpulse.candles_1m c
    WHERE c.asset_id = a.asset_id AND c.bucket <= now() - INTERVAL '7 days' - INTERVAL '1 minute'
    ORDER BY c.bucket DESC LIMIT 1
) c7d ON true;
COMMENT ON VIEW coinpulse.asset_overview IS
    'Per asset: latest snapshot (rank, market cap, 24h volume, supply), latest tick price, and its change in '
    'percent against the price 1h/24h/7d ago (close of the last 1-minute candle ended by then; NULL if none).';

GRANT SELECT ON coinpulse.latest_prices, coinpulse.asset_overview TO coinpulse_reader, coinpulse_writer;
"""

DOWNGRADE = r"""
DROP VIEW IF EXISTS coinpulse.asset_overview, coinpulse.latest_prices;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
