"""sandbox_faults.hang_seconds: an injected fault may hold each write this long before answering

Revision ID: 0018
Revises: 0014
Create Date: 2026-12-08 10:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("sandbox_faults", schema=None) as batch_op:
        batch_op.add_column(sa.Column("hang_seconds", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("sandbox_faults", schema=None) as batch_op:
        batch_op.drop_column("hang_seconds")
