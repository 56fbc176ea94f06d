"""G8 control plane: tenant_quotas, usage_records; advanced audit logs: audit_chain

Revision ID: 8d9a2c3
Revises: 7c8f1b2
Create Date: 2025-08-08 09:00:00

Read and written only by the control plane (as the table owner); no row-level security and no
grants to xorb_tenant.

Advanced audit logs (the runbook's "Advanced Audit Logs"): every row inserted into audit_log is
chained by a trigger into audit_chain, so that an altered, deleted or forged audit entry shows
(docs/design/integrity-and-loss.md, "The platform's audit log"). The services do not change: the
trigger chains what they insert. Stable keeps writing plain audit_log rows after the downgrade.
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
    {"kind": "table", "object": "audit_chain", "description": "advanced audit logs: the hash chain over audit_log"},
]

# The canonical form of an audit_log row that the chain hashes: a JSON array (unambiguous, jsonb's text
# form is normalised), the time in UTC to the microsecond (independent of the session's TimeZone).
# xorb-adapters' audit check computes the same expression over the live rows (pg/audit.rs, CANONICAL).
CANONICAL = (
    "jsonb_build_array(r.id, r.tenant_id, r.actor, r.action, r.detail, "
    "to_char(r.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'))::text"
)


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
    # No foreign key to audit_log: a deleted audit row must leave its chain entry behind, as evidence.
    op.execute(
        """
        CREATE TABLE audit_chain (
            seq        bigint      PRIMARY KEY,
            audit_id   bigint      NOT NULL UNIQUE,
            created_us bigint      NOT NULL,
            prev_hash  bytea       NOT NULL,
            row_hash   bytea       NOT NULL,
            entry_hash bytea       NOT NULL
        )
        """
    )
    # SECURITY DEFINER: rc1's api inserts audit rows as xorb_tenant, which has no right on audit_chain.
    # The advisory lock (transaction-scoped) serialises appends from concurrent inserters until they commit,
    # so each entry links to the last committed one.
    canonical = CANONICAL.replace("r.", "NEW.")
    op.execute(
        f"""
        CREATE FUNCTION audit_chain_append() RETURNS trigger
        LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
        DECLARE
            last_seq  bigint;
            last_hash bytea;
            rh        bytea;
        BEGIN
            PERFORM pg_advisory_xact_lock(7306540785424187235);
            SELECT seq, entry_hash INTO last_seq, last_hash FROM audit_chain ORDER BY seq DESC LIMIT 1;
            IF NOT FOUND THEN
                last_seq := 0;
                last_hash := decode(repeat('00', 32), 'hex');
            END IF;
            rh := sha256(convert_to({canonical}, 'UTF8'));
            INSERT INTO audit_chain (seq, audit_id, created_us, prev_hash, row_hash, entry_hash)
            VALUES (last_seq + 1, NEW.id, (extract(epoch FROM NEW.created_at) * 1000000)::bigint,
                    last_hash, rh, sha256(last_hash || rh));
            RETURN NULL;
        END
        $$
        """
    )
    op.execute(
        "CREATE TRIGGER audit_chain_append AFTER INSERT ON audit_log "
        "FOR EACH ROW EXECUTE FUNCTION audit_chain_append()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER audit_chain_append ON audit_log")
    op.execute("DROP FUNCTION audit_chain_append()")
    op.execute("DROP TABLE audit_chain")
    op.execute("DROP TABLE usage_records")
    op.execute("DROP TABLE tenant_quotas")
