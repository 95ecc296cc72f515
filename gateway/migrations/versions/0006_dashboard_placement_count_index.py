"""dashboard: covering index for delivery counts by placement

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-23 09:30:00
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.create_index(
            "ix_deliveries_district_placement", ["district_id", "placement_id", "status", "operation"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.drop_index("ix_deliveries_district_placement")
