"""lms_connections: per-connection request rate and concurrency limits

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-23 10:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("lms_connections", schema=None) as batch_op:
        batch_op.add_column(sa.Column("rate_limit", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("concurrency_limit", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("lms_connections", schema=None) as batch_op:
        batch_op.drop_column("concurrency_limit")
        batch_op.drop_column("rate_limit")
