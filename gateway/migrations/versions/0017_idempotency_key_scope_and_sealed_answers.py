"""idempotency keys: scoped to a user token's user as well; answers of every mutating operation, encrypted

Revision ID: 0017
Revises: 0014
Create Date: 2026-12-08 10:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Keys stored before this revision keep the district-app scope (""): their answers replay as before.
    with op.batch_alter_table("idempotency_records", schema=None) as batch_op:
        batch_op.add_column(sa.Column("scope", sa.String(length=24), server_default="", nullable=False))
        batch_op.add_column(sa.Column("response_sealed", sa.Text(), nullable=True))
        batch_op.alter_column("response_body", existing_type=sa.JSON(), nullable=True)
        batch_op.drop_constraint("uq_idempotency_records_district_id_app_id_key", type_="unique")
        batch_op.create_unique_constraint(
            "uq_idempotency_records_district_id_app_id_scope_key", ["district_id", "app_id", "scope", "key"]
        )


def downgrade() -> None:
    # Sealed answers cannot go back into response_body, nor users' keys into one scope: a replay within the
    # retention window is what is lost.
    op.execute("DELETE FROM idempotency_records WHERE response_body IS NULL OR scope <> ''")
    with op.batch_alter_table("idempotency_records", schema=None) as batch_op:
        batch_op.drop_constraint("uq_idempotency_records_district_id_app_id_scope_key", type_="unique")
        batch_op.create_unique_constraint(
            "uq_idempotency_records_district_id_app_id_key", ["district_id", "app_id", "key"]
        )
        batch_op.alter_column("response_body", existing_type=sa.JSON(), nullable=False)
        batch_op.drop_column("response_sealed")
        batch_op.drop_column("scope")
