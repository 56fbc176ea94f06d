"""G7 evidence system: table evidence

Revision ID: 7c8f1b2
Revises: 6b7e0a1
Create Date: 2025-08-05 09:00:00

One row per finding: the exact canonical JSON bytes the worker signed and their 64-byte Ed25519
signature. Tenant-owned, so it gets the same row-level security policy as the G6 tables.
"""

from alembic import op

revision = "7c8f1b2"
down_revision = "6b7e0a1"
branch_labels = None
depends_on = None

xorb_release = "v2025.08-rc1"
xorb_downgrade_destroys = [
    {"kind": "table", "object": "evidence", "description": "Ed25519-signed evidence records"},
]

ROLE = "xorb_tenant"
TENANT_ID = "nullif(current_setting('xorb.tenant_id', true), '')::uuid"


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE evidence (
            id         uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
            tenant_id  uuid        NOT NULL,
            session_id uuid        NOT NULL REFERENCES ptaas_sessions (id) ON DELETE CASCADE,
            finding_id uuid        NOT NULL REFERENCES findings (id) ON DELETE CASCADE,
            payload    bytea       NOT NULL,
            signature  bytea       NOT NULL,
            key_id     text        NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    op.execute("COMMENT ON COLUMN evidence.payload IS 'the exact signed bytes (canonical JSON)'")
    op.execute("COMMENT ON COLUMN evidence.signature IS '64-byte Ed25519 signature of payload'")
    op.execute("CREATE INDEX evidence_finding_idx ON evidence (finding_id)")
    op.execute("CREATE INDEX evidence_session_idx ON evidence (session_id)")
    op.execute("CREATE INDEX evidence_tenant_idx ON evidence (tenant_id)")

    op.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON evidence TO {ROLE}")
    op.execute("ALTER TABLE evidence ENABLE ROW LEVEL SECURITY")
    op.execute(
        "CREATE POLICY tenant_isolation ON evidence "
        f"USING (tenant_id = {TENANT_ID}) WITH CHECK (tenant_id = {TENANT_ID})"
    )


def downgrade() -> None:
    # Dropping the table drops its policy and its grants.
    op.execute("DROP TABLE evidence")
