-- 0004: who may do what (DESIGN.md §4): the ingest path may only INSERT; readers only read.
--
-- Everything here needs ClickHouse access control, which an embedded chDB engine does not have
-- (it answers ACCESS_DENIED to CREATE ROLE / CREATE USER). The section header below tells the
-- migration runner so: a backend without the `access_control` capability skips these statements,
-- and records how many it skipped in audit.schema_migrations.
--
-- Roles, not users, are created here: passwords do not belong in a repository. An operator
-- creates the users once per deployment and hands them a role, e.g.
--
--     CREATE USER mcpgw_ingest IDENTIFIED WITH sha256_password BY '<secret>' DEFAULT ROLE audit_ingest;
--     GRANT audit_ingest TO mcpgw_ingest;
--     CREATE USER soc_analyst IDENTIFIED WITH sha256_password BY '<secret>' DEFAULT ROLE audit_reader;
--     GRANT audit_reader TO soc_analyst;
--
-- Migrations themselves (CREATE TABLE, ALTER) run as an administrative user, not as mcpgw_ingest:
-- the ingest role can read audit.schema_migrations to see that the schema is current, no more.
--
-- A reader bound to one tenant gets a role with a row policy on every table that carries a tenant
-- column (consumers/store/migrations.py: tenant_reader_statements generates these):
--
--     CREATE ROLE IF NOT EXISTS audit_reader_acme SETTINGS PROFILE 'audit_readonly';
--     GRANT SELECT ON audit.* TO audit_reader_acme;
--     CREATE ROW POLICY OR REPLACE tenant_acme ON audit.events FOR SELECT USING tenant = 'acme' TO audit_reader_acme;
--     ... the same ON audit.risk_scores, audit.decisions, audit.events_per_minute
--     CREATE USER acme_auditor IDENTIFIED WITH sha256_password BY '<secret>' DEFAULT ROLE audit_reader_acme;
--     GRANT audit_reader_acme TO acme_auditor;
--
-- A user with a row policy on a table sees only the rows the policy admits; users with none (the
-- admin, the ingest user, the all-tenant audit_reader) are unaffected.

-- requires: access_control

CREATE SETTINGS PROFILE IF NOT EXISTS audit_readonly SETTINGS readonly = 1;

CREATE ROLE IF NOT EXISTS audit_ingest;
GRANT INSERT ON audit.* TO audit_ingest;
GRANT SELECT ON audit.schema_migrations TO audit_ingest;

CREATE ROLE IF NOT EXISTS audit_reader SETTINGS PROFILE 'audit_readonly';
GRANT SELECT ON audit.* TO audit_reader;
