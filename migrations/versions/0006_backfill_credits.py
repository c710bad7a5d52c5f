"""Backfill credits: the CoinCap credits every history request of a gap backfill or an on-demand import cost.

- ``backfill_credits``: one row per ``/assets/{id}/history`` request made by the collector's gap worker
  (``purpose = 'gap'``) or by ``coinpulse backfill`` (``purpose = 'cli'``), with the credits it cost
  (``collector.coincap.rest.credits_for`` of the answer, retries included). The gap worker's credit allowance
  is a sliding 24-hour window over its own rows (collector/budget.py), so it holds across restarts;
  ``coinpulse doctor`` prints what was used, and ``coinpulse backfill`` counts the on-demand imports of the
  last 31 days against the monthly budget. The worker deletes rows older than 62 days.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UPGRADE = r"""
CREATE TABLE coinpulse.backfill_credits (
    id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    spent_at  timestamptz NOT NULL,
    purpose   text        NOT NULL CHECK (purpose IN ('gap', 'cli')),
    asset_id  text        NOT NULL,
    gap_id    bigint,
    credits   integer     NOT NULL CHECK (credits >= 0)
);
CREATE INDEX backfill_credits_spent_idx ON coinpulse.backfill_credits (purpose, spent_at);
COMMENT ON TABLE coinpulse.backfill_credits IS
    'CoinCap credits of each history request made by the gap worker (purpose gap) or coinpulse backfill (cli).';

GRANT SELECT ON coinpulse.backfill_credits TO coinpulse_reader, coinpulse_writer;
GRANT INSERT, DELETE ON coinpulse.backfill_credits TO coinpulse_writer;
"""

DOWNGRADE = r"""
DROP TABLE IF EXISTS coinpulse.backfill_credits;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
