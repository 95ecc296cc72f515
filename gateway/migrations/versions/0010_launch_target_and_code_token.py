"""lti_launch_states.target_link_uri; authorization_codes.token_id

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07 04:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("lti_launch_states", schema=None) as batch_op:
        batch_op.add_column(sa.Column("target_link_uri", sa.Text(), nullable=True))
    with op.batch_alter_table("authorization_codes", schema=None) as batch_op:
        batch_op.add_column(sa.Column("token_id", sa.String(length=24), nullable=True))
        batch_op.create_foreign_key(
            batch_op.f("fk_authorization_codes_token_id_api_tokens"),
            "api_tokens",
            ["token_id"],
            ["id"],
            ondelete="SET NULL",
        )


def downgrade() -> None:
    with op.batch_alter_table("authorization_codes", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_authorization_codes_token_id_api_tokens"), type_="foreignkey")
        batch_op.drop_column("token_id")
    with op.batch_alter_table("lti_launch_states", schema=None) as batch_op:
        batch_op.drop_column("target_link_uri")
