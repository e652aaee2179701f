-- linehost: a read-only PostgreSQL role for auditors (issue 4; see docs/database.md).
--
-- Run as the owner of the linehost database, after `linehost db upgrade`, and again after
-- every upgrade that adds a revision (it is idempotent):
--
--     psql -v ON_ERROR_STOP=1 -d linehost -f deploy/sql/auditor-role.sql
--
-- It creates the group role `linehost_auditor` (no login) allowed to SELECT the documented
-- views, the tables `linehost audit ...` reads, and nothing else: no INSERT, UPDATE, DELETE,
-- TRUNCATE, no outbox, no sealed onboarding secrets. Give each auditor their own login in it:
--
--     CREATE ROLE alice LOGIN PASSWORD '...' IN ROLE linehost_auditor;
--     ALTER ROLE alice SET default_transaction_read_only = on;  -- settings are per login
--
-- PostgreSQL 15 and later already deny CREATE on schema public to ordinary roles; on older
-- servers also run `REVOKE CREATE ON SCHEMA public FROM PUBLIC`.

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'linehost_auditor') THEN
        CREATE ROLE linehost_auditor NOLOGIN;
    END IF;
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO linehost_auditor', current_database());
END
$$;

GRANT USAGE ON SCHEMA public TO linehost_auditor;

-- Start from nothing, so a re-run also takes back what an earlier version granted.
REVOKE ALL ON ALL TABLES IN SCHEMA public FROM linehost_auditor;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM linehost_auditor;

-- The documented views: one row per assignment / attempt with the export record's fields.
GRANT SELECT ON assignments_v, attempts_v TO linehost_auditor;

-- What `linehost audit export|attempts|uid|dac|verify|bundles` reads: the records, the
-- hash-chained audit log, the pre-issued DAC pool, work orders, and the schema revision.
GRANT SELECT ON assignments, attempts, audit_log, bundle_entries, work_orders, alembic_version
    TO linehost_auditor;

-- `linehost audit prove` reads the signed checkpoints (issue 14; revision 0006).
GRANT SELECT ON audit_checkpoints TO linehost_auditor;

-- `linehost audit export|uid|dac|verify` show revocations; `pki revocation-set` and CRL checks
-- read the ledger and the CRL numbers (issue 13; revisions 0008, 0010).
GRANT SELECT ON revocations, crl_numbers TO linehost_auditor;
