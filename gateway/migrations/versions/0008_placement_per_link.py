"""placements: one per LMS resource link; identities linked by hand under the key launches use

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07 04:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

UNLINKED = sa.text("resource_link_id IS NULL")


def upgrade() -> None:
    # Existing rows already satisfy both new rules: they were unique per course and assignment.
    with op.batch_alter_table("placements", schema=None) as batch_op:
        batch_op.drop_constraint("uq_placements_lms_connection_id_course_id_assignment_id", type_="unique")
        batch_op.create_unique_constraint(
            "uq_placements_link", ["lms_connection_id", "course_id", "assignment_id", "resource_link_id"]
        )
    op.create_index(
        "uq_placements_unlinked",
        "placements",
        ["lms_connection_id", "course_id", "assignment_id"],
        unique=True,
        sqlite_where=UNLINKED,
        postgresql_where=UNLINKED,
    )
    with op.batch_alter_table("launch_destinations", schema=None) as batch_op:
        batch_op.add_column(sa.Column("link_unknown", sa.Boolean(), server_default=sa.false(), nullable=False))
    # Until now a placement's link id was rewritten by every launch of any link of the assignment in the course,
    # so an LTI 1.3 launch row says only that the user launched one of those links, not which one.
    op.execute(
        "UPDATE launch_destinations SET link_unknown = true WHERE placement_id IN (SELECT p.id FROM placements p "
        "JOIN lms_connections c ON c.id = p.lms_connection_id WHERE c.adapter = 'lti13')"
    )
    _rekey_identities()


def _rekey_identities() -> None:
    """`user enroll --lms-user-id` stored LTI identities as `passback:<connection id>`; launches look them up
    by the LTI 1.1 consumer key or the LTI 1.3 issuer, read here from the plaintext registration key. A row
    whose launch key is already taken (the student launched since and got a second user) is left as it was."""
    bind = op.get_bind()
    rows = bind.execute(
        sa.text(
            "SELECT i.id, i.district_id, i.subject, c.adapter, c.registration_key FROM lms_identities i "
            "JOIN lms_connections c ON c.id = i.lms_connection_id "
            "WHERE i.issuer = 'passback:' || c.id AND c.adapter IN ('lti11', 'lti13') "
            "AND c.registration_key IS NOT NULL"
        )
    ).all()
    for identity_id, district_id, subject, adapter, key in rows:
        if adapter == "lti11":
            issuer = "lti11:" + key.removeprefix("lti11|")
        else:
            issuer = key.rpartition("|")[0]
        taken = bind.execute(
            sa.text("SELECT 1 FROM lms_identities WHERE district_id = :d AND issuer = :i AND subject = :s"),
            {"d": district_id, "i": issuer, "s": subject},
        ).first()
        if issuer and taken is None:
            bind.execute(
                sa.text("UPDATE lms_identities SET issuer = :i WHERE id = :id"), {"i": issuer, "id": identity_id}
            )


def downgrade() -> None:
    with op.batch_alter_table("launch_destinations", schema=None) as batch_op:
        batch_op.drop_column("link_unknown")
    op.drop_index("uq_placements_unlinked", table_name="placements")
    with op.batch_alter_table("placements", schema=None) as batch_op:
        batch_op.drop_constraint("uq_placements_link", type_="unique")
        batch_op.create_unique_constraint(
            "uq_placements_lms_connection_id_course_id_assignment_id",
            ["lms_connection_id", "course_id", "assignment_id"],
        )
