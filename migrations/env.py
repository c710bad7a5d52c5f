"""Alembic environment: runs on the connection that `coinpulse migrate` hands over.

The version table lives in the `coinpulse` schema. Revisions are plain SQL (op.execute); there is no
ORM model to autogenerate from.
"""

from __future__ import annotations

from alembic import context

config = context.config
connection = config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations with `coinpulse migrate`, which supplies the database connection")

context.configure(
    connection=connection,
    version_table_schema="coinpulse",
    transaction_per_migration=True,
)
with context.begin_transaction():
    context.run_migrations()
