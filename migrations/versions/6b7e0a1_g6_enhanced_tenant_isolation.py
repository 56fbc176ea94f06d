"""G6 enhanced tenant isolation: tenants.isolation_mode, role xorb_tenant, row-level security

Revision ID: 6b7e0a1
Revises: 1a5be11
Create Date: 2025-08-01 09:00:00

Row-level security is ENABLEd, not FORCEd: the table owner (the services' login role) bypasses it,
so v2025.07-stable services, which never SET ROLE, keep working on this schema. rc1's api in
`advanced` mode runs tenant queries after `SET LOCAL ROLE xorb_tenant` and
`set_config('xorb.tenant_id', ...)`, and the policies do the filtering.

Roles are cluster-wide while this revision runs per database: `xorb_tenant` is created only when
missing, and downgrade() drops it only when no other database still grants it anything.
"""

from alembic import op

revision = "6b7e0a1"
down_revision = "1a5be11"
branch_labels = None
depends_on = None

xorb_release = "v2025.08-rc1"
xorb_downgrade_destroys = [
    {
        "kind": "column",
        "object": "tenants.isolation_mode",
        "description": "per-tenant isolation mode (basic/advanced)",
    },
]

ROLE = "xorb_tenant"
# Tables whose rows belong to one tenant: RLS policy plus DML for the tenant role.
TENANT_TABLES = ["ptaas_sessions", "findings", "audit_log"]
TENANT_ID = "nullif(current_setting('xorb.tenant_id', true), '')::uuid"


def upgrade() -> None:
    op.execute("ALTER TABLE tenants ADD COLUMN isolation_mode text NOT NULL DEFAULT 'advanced'")

    # Create the role unless another database of this cluster already did (or is doing it now),
    # and let the services' login role (the one migrating) SET ROLE to it. Needs CREATEROLE (or a
    # superuser) unless an administrator created the role and granted it beforehand.
    op.execute(
        f"""
        DO $$
        BEGIN
            IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = '{ROLE}') THEN
                BEGIN
                    CREATE ROLE {ROLE} NOLOGIN;
                EXCEPTION WHEN duplicate_object THEN
                    NULL;
                END;
            END IF;
            IF NOT pg_has_role(current_user, '{ROLE}', 'MEMBER') THEN
                GRANT {ROLE} TO CURRENT_USER;
            END IF;
        END
        $$
        """
    )

    op.execute(f"GRANT SELECT ON tenants TO {ROLE}")
    for table in TENANT_TABLES:
        op.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON {table} TO {ROLE}")
        op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        op.execute(
            f"CREATE POLICY tenant_isolation ON {table} "
            f"USING (tenant_id = {TENANT_ID}) WITH CHECK (tenant_id = {TENANT_ID})"
        )
    # audit_log.id is a bigserial: inserting as the tenant role needs its sequence.
    op.execute(f"GRANT USAGE, SELECT ON SEQUENCE audit_log_id_seq TO {ROLE}")


def downgrade() -> None:
    for table in reversed(TENANT_TABLES):
        op.execute(f"DROP POLICY IF EXISTS tenant_isolation ON {table}")
        op.execute(f"ALTER TABLE {table} DISABLE ROW LEVEL SECURITY")
    # Revoke what this database granted, then drop the role unless something else (privileges
    # in another database of the cluster, objects it owns) still depends on it.
    op.execute(
        f"""
        DO $$
        BEGIN
            IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = '{ROLE}') THEN
                REVOKE ALL ON SEQUENCE audit_log_id_seq FROM {ROLE};
                REVOKE ALL ON {", ".join(["tenants"] + TENANT_TABLES)} FROM {ROLE};
                BEGIN
                    DROP ROLE {ROLE};
                EXCEPTION WHEN dependent_objects_still_exist OR insufficient_privilege THEN
                    RAISE NOTICE 'role {ROLE} kept: still used elsewhere in this cluster or not ours to drop';
                END;
            END IF;
        END
        $$
        """
    )
    op.execute("ALTER TABLE tenants DROP COLUMN isolation_mode")
