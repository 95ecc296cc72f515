"""deliveries.error_cause: the catalogued cause of a delivery's last failure (adapters/causes.py), indexed with
the district for the dashboard's grouped counts and its filtered list

Revision ID: 0022
Revises: 0020
Create Date: 2026-12-07 19:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0022"
down_revision = "0020"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.add_column(sa.Column("error_cause", sa.String(length=40), nullable=True))
        batch_op.create_index(
            "ix_deliveries_district_cause",
            ["district_id", "error_cause", "lms_connection_id", "status"],
            unique=False,
        )
    # Rows whose status alone tells the cause get it; an older failure's cause is unknown (its text stays).
    deliveries = sa.table("deliveries", sa.column("status", sa.String), sa.column("error_cause", sa.String))
    for status in ("awaiting_launch", "unroutable", "superseded"):
        op.execute(deliveries.update().where(deliveries.c.status == status).values(error_cause=status))


def downgrade() -> None:
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.drop_index("ix_deliveries_district_cause")
        batch_op.drop_column("error_cause")
