"""audit_log and indexes

Revision ID: 1a5be11
Revises: 3f2c7d1
Create Date: 2025-07-08 09:00:00

"""

from alembic import op

revision = "1a5be11"
down_revision = "3f2c7d1"
branch_labels = None
depends_on = None

xorb_release = "v2025.07-stable"
xorb_downgrade_destroys = [
    {"kind": "table", "object": "audit_log", "description": "audit trail of tenant and service actions"},
]

INDEXES = [
    # api: a tenant's sessions, newest first
    ("ptaas_sessions_tenant_created_idx", "ptaas_sessions (tenant_id, created_at DESC)"),
    # orchestrator (oldest queued) and scheduler (expiry of queued/running)
    (
        "ptaas_sessions_active_created_idx",
        "ptaas_sessions (created_at) WHERE status IN ('queued', 'running')",
    ),
    # a session's findings ordered by host, port; the worker's "already recorded" check; the cascade
    ("findings_session_host_port_idx", "findings (session_id, host, port)"),
    ("findings_tenant_idx", "findings (tenant_id)"),
    ("audit_log_tenant_created_idx", "audit_log (tenant_id, created_at)"),
    ("audit_log_created_idx", "audit_log (created_at)"),
]


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE audit_log (
            id         bigserial   PRIMARY KEY,
            tenant_id  uuid,
            actor      text        NOT NULL,
            action     text        NOT NULL,
            detail     jsonb       NOT NULL DEFAULT '{}'::jsonb,
            created_at timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    for name, definition in INDEXES:
        op.execute(f"CREATE INDEX {name} ON {definition}")


def downgrade() -> None:
    for name, _ in reversed(INDEXES):
        if not name.startswith("audit_log_"):
            op.execute(f"DROP INDEX {name}")
    op.execute("DROP TABLE audit_log")
