"""${message}

Revision ID: ${up_revision}
Revises: ${down_revision | comma,n}
Create Date: ${create_date}

"""

from alembic import op
${imports if imports else ""}
revision = ${repr(up_revision)}
down_revision = ${repr(down_revision)}
branch_labels = ${repr(branch_labels)}
depends_on = ${repr(depends_on)}

# The release that ships this revision, e.g. "v2025.08-rc1" (docs/design/platform.md, "Schema").
# migrations/xorb_meta.py refuses a revision that leaves it unset.
xorb_release = None
# What downgrade() destroys, for the rollback plan: one entry per table or column whose data is lost,
# e.g. {"kind": "table", "object": "evidence", "description": "Ed25519-signed evidence records"}.
xorb_downgrade_destroys = []


def upgrade() -> None:
    ${upgrades if upgrades else "pass"}


def downgrade() -> None:
    ${downgrades if downgrades else "pass"}
