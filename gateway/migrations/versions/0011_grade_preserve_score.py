"""grades, grade_revisions: preserve_score (keep or clear the LMS's score on a non-final gradingProgress)

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07 04:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for table in ("grades", "grade_revisions"):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(sa.Column("preserve_score", sa.Boolean(), server_default=sa.true(), nullable=False))


def downgrade() -> None:
    for table in ("grade_revisions", "grades"):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_column("preserve_score")
