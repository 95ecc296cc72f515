"""directory: updated_at on users, enrollments and placements, indexes for `updatedSince` and paging, and the
roster:read scope for district-app tokens

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-08 10:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

# The scopes authorize_app has always issued; tokens issued with exactly these are the full district-app tokens
# (a catalog pull's short-lived district token has only me:read and gets nothing more).
FULL_DISTRICT_APP_SCOPES = "grades:write grades:read assignments:read assignments:write"
ROSTER_SCOPE = "roster:read"


def _add_updated_at(table: str) -> None:
    # Rows written before this revision changed last, as far as anyone knows, when they were created.
    with op.batch_alter_table(table, schema=None) as batch_op:
        batch_op.add_column(sa.Column("updated_at", sa.DateTime(), nullable=True))
    op.execute(sa.text(f"UPDATE {table} SET updated_at = created_at"))  # noqa: S608 - a fixed table name
    with op.batch_alter_table(table, schema=None) as batch_op:
        batch_op.alter_column("updated_at", existing_type=sa.DateTime(), nullable=False)


def upgrade() -> None:
    _add_updated_at("users")
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.create_index("ix_users_district_created", ["district_id", "created_at", "id"], unique=False)
        batch_op.create_index("ix_users_district_updated", ["district_id", "updated_at"], unique=False)
    _add_updated_at("enrollments")
    with op.batch_alter_table("enrollments", schema=None) as batch_op:
        batch_op.create_index("ix_enrollments_district_updated", ["district_id", "updated_at"], unique=False)
    _add_updated_at("placements")
    with op.batch_alter_table("placements", schema=None) as batch_op:
        batch_op.create_index("ix_placements_district_updated", ["district_id", "updated_at"], unique=False)
    with op.batch_alter_table("lms_identities", schema=None) as batch_op:
        batch_op.create_index("ix_lms_identities_district_created", ["district_id", "created_at"], unique=False)
    with op.batch_alter_table("grades", schema=None) as batch_op:
        batch_op.create_index("ix_grades_district_updated", ["district_id", "updated_at"], unique=False)
    op.execute(
        sa.text("UPDATE api_tokens SET scopes = :widened WHERE kind = 'district_app' AND scopes = :full").bindparams(
            widened=f"{FULL_DISTRICT_APP_SCOPES} {ROSTER_SCOPE}", full=FULL_DISTRICT_APP_SCOPES
        )
    )


def downgrade() -> None:
    op.execute(
        sa.text("UPDATE api_tokens SET scopes = :full WHERE kind = 'district_app' AND scopes = :widened").bindparams(
            widened=f"{FULL_DISTRICT_APP_SCOPES} {ROSTER_SCOPE}", full=FULL_DISTRICT_APP_SCOPES
        )
    )
    with op.batch_alter_table("grades", schema=None) as batch_op:
        batch_op.drop_index("ix_grades_district_updated")
    with op.batch_alter_table("lms_identities", schema=None) as batch_op:
        batch_op.drop_index("ix_lms_identities_district_created")
    with op.batch_alter_table("placements", schema=None) as batch_op:
        batch_op.drop_index("ix_placements_district_updated")
        batch_op.drop_column("updated_at")
    with op.batch_alter_table("enrollments", schema=None) as batch_op:
        batch_op.drop_index("ix_enrollments_district_updated")
        batch_op.drop_column("updated_at")
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.drop_index("ix_users_district_updated")
        batch_op.drop_index("ix_users_district_created")
        batch_op.drop_column("updated_at")
