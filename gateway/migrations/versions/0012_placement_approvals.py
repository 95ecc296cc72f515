"""placement_approvals: the LMS columns (Schoology section + assignment) a district lets each app write into

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07 04:05:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "placement_approvals",
        sa.Column("id", sa.String(length=24), nullable=False),
        sa.Column("district_id", sa.String(length=24), nullable=False),
        sa.Column("lms_connection_id", sa.String(length=24), nullable=False),
        sa.Column("app_id", sa.String(length=24), nullable=False),
        sa.Column("section_id", sa.String(length=255), nullable=False),
        sa.Column("lms_assignment_id", sa.String(length=255), nullable=True),
        sa.Column("approved_by", sa.String(length=320), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["app_id"], ["apps.id"], name=op.f("fk_placement_approvals_app_id_apps"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["district_id"],
            ["districts.id"],
            name=op.f("fk_placement_approvals_district_id_districts"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["lms_connection_id"],
            ["lms_connections.id"],
            name=op.f("fk_placement_approvals_lms_connection_id_lms_connections"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_placement_approvals")),
    )
    with op.batch_alter_table("placement_approvals", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_placement_approvals_district_id"), ["district_id"], unique=False)
        batch_op.create_index(
            "ix_placement_approvals_lookup", ["lms_connection_id", "app_id", "section_id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("placement_approvals", schema=None) as batch_op:
        batch_op.drop_index("ix_placement_approvals_lookup")
        batch_op.drop_index(batch_op.f("ix_placement_approvals_district_id"))
    op.drop_table("placement_approvals")
