"""G8 control plane: tenant_quotas, usage_records

Revision ID: 8d9a2c3
Revises: 7c8f1b2
Create Date: 2025-08-08 09:00:00

Read and written only by the control plane (as the table owner); no row-level security and no
grants to xorb_tenant.
"""

from alembic import op

revision = "8d9a2c3"
down_revision = "7c8f1b2"
branch_labels = None
depends_on = None

xorb_release = "v2025.08-rc1"
xorb_downgrade_destroys = [
    {"kind": "table", "object": "tenant_quotas", "description": "per-tenant session quotas"},
    {"kind": "table", "object": "usage_records", "description": "control-plane usage metering"},
]


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE tenant_quotas (
            tenant_id             uuid        PRIMARY KEY REFERENCES tenants (id),
            max_sessions_per_hour integer     NOT NULL DEFAULT 100,
            updated_at            timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    op.execute(
        """
        CREATE TABLE usage_records (
            id          bigserial   PRIMARY KEY,
            tenant_id   uuid        NOT NULL,
            kind        text        NOT NULL,
            amount      integer     NOT NULL DEFAULT 1,
            recorded_at timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    op.execute("CREATE INDEX usage_records_tenant_recorded_idx ON usage_records (tenant_id, recorded_at)")


def downgrade() -> None:
    op.execute("DROP TABLE usage_records")
    op.execute("DROP TABLE tenant_quotas")
