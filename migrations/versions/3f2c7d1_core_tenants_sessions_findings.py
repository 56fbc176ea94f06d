"""core schema: tenants, ptaas_sessions, findings

Revision ID: 3f2c7d1
Revises:
Create Date: 2025-07-01 09:00:00

"""

from alembic import op

revision = "3f2c7d1"
down_revision = None
branch_labels = None
depends_on = None

xorb_release = "v2025.07-stable"
xorb_downgrade_destroys = [
    {"kind": "table", "object": "tenants", "description": "tenants, their token hashes and scan allowlists"},
    {"kind": "table", "object": "ptaas_sessions", "description": "PTaaS sessions and their targets"},
    {"kind": "table", "object": "findings", "description": "scan findings (open/closed/filtered ports)"},
]


def upgrade() -> None:
    # gen_random_uuid() is built into PostgreSQL 13 and later.
    op.execute(
        """
        CREATE TABLE tenants (
            id              uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
            slug            text        NOT NULL UNIQUE,
            name            text        NOT NULL,
            token_sha256    text        NOT NULL UNIQUE,
            scope_allowlist text[]      NOT NULL DEFAULT '{127.0.0.0/8,::1/128}',
            created_at      timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    op.execute("COMMENT ON COLUMN tenants.token_sha256 IS 'hex SHA-256 of the tenant''s bearer token'")
    op.execute(
        """
        CREATE TABLE ptaas_sessions (
            id           uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
            tenant_id    uuid        NOT NULL REFERENCES tenants (id),
            status       text        NOT NULL DEFAULT 'queued'
                         CHECK (status IN ('queued', 'running', 'completed', 'failed', 'expired')),
            targets      jsonb       NOT NULL DEFAULT '[]'::jsonb,
            jobs_total   integer     NOT NULL DEFAULT 0,
            jobs_done    integer     NOT NULL DEFAULT 0,
            created_at   timestamptz NOT NULL DEFAULT now(),
            updated_at   timestamptz NOT NULL DEFAULT now(),
            completed_at timestamptz
        )
        """
    )
    op.execute(
        """
        CREATE TABLE findings (
            id          uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
            session_id  uuid        NOT NULL REFERENCES ptaas_sessions (id) ON DELETE CASCADE,
            tenant_id   uuid        NOT NULL,
            host        text        NOT NULL,
            port        integer     NOT NULL,
            state       text        NOT NULL CHECK (state IN ('open', 'closed', 'filtered')),
            latency_ms  integer,
            observed_at timestamptz NOT NULL DEFAULT now()
        )
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE findings")
    op.execute("DROP TABLE ptaas_sessions")
    op.execute("DROP TABLE tenants")
