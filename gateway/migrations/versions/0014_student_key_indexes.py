"""student keys: indexes for addressing a student by sisID, email or an LMS's user id; the key each grade
revision was posted with

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07 14:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Every lookup by sis_id or email is within one district, and SIS ids repeat across districts.
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.drop_index("ix_users_email")
        batch_op.drop_index("ix_users_sis_id")
        batch_op.create_index("ix_users_district_sis_id", ["district_id", "sis_id"], unique=False)
        batch_op.create_index("ix_users_district_email", ["district_id", "email"], unique=False)
    with op.batch_alter_table("lms_identities", schema=None) as batch_op:
        batch_op.create_index("ix_lms_identities_connection_subject", ["lms_connection_id", "subject"], unique=False)
    # Grades stored before this revision keep NULL: the answers show them as addressed by userID.
    with op.batch_alter_table("grades", schema=None) as batch_op:
        batch_op.add_column(sa.Column("student_key", sa.JSON(), nullable=True))
    with op.batch_alter_table("grade_revisions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("student_key", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("grade_revisions", schema=None) as batch_op:
        batch_op.drop_column("student_key")
    with op.batch_alter_table("grades", schema=None) as batch_op:
        batch_op.drop_column("student_key")
    with op.batch_alter_table("lms_identities", schema=None) as batch_op:
        batch_op.drop_index("ix_lms_identities_connection_subject")
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.drop_index("ix_users_district_email")
        batch_op.drop_index("ix_users_district_sis_id")
        batch_op.create_index("ix_users_sis_id", ["sis_id"], unique=False)
        batch_op.create_index("ix_users_email", ["email"], unique=False)
