-- Least-privilege login for the loom-ray pipeline. An admin script, NOT a migration (sql/NNN_*.sql):
-- run it as the owner of loom-ray's tables, after the migrations, then give the role a password and
-- allow it only over TLS with SCRAM:
--
--   psql "$OWNER_DSN" -v ON_ERROR_STOP=1 -f sql/roles/least_privilege.sql
--   psql "$OWNER_DSN" -c "\password loom_ingest"
--   pg_hba.conf:  hostssl <database> loom_ingest <client-cidr> scram-sha-256
--
-- Re-runnable. The role may write rows, dead letters, audit lines and lag samples, advance and claim
-- offsets, park and unpark partitions, apply the rewinds and skips ctl asks for, delete lag samples past
-- LOOM_LAG_HISTORY_RETENTION_S, and read what the driver and the monitoring views read; it cannot create,
-- alter, drop or truncate anything, nor delete anything else.

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'loom_ingest') THEN
        CREATE ROLE loom_ingest LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;
    END IF;
END
$$;

-- A consumer paused inside its flush transaction (GC pause, frozen VM, SIGSTOP) holds its offset rows'
-- locks, and the coordinator's claim waits on them. The pipeline sets this per session
-- (LOOM_DB_IDLE_IN_TRANSACTION_TIMEOUT_MS); the role default also covers other clients (RELIABILITY.md T4b).
ALTER ROLE loom_ingest SET idle_in_transaction_session_timeout = '10s';

DO $$
BEGIN
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO loom_ingest', current_database());
END
$$;
GRANT USAGE ON SCHEMA public TO loom_ingest;

-- Written by every flush (one transaction): rows, dead letters, gaps, audit ranges; by the coordinator: lag
-- and the gaps a reset leaves.
GRANT SELECT, INSERT ON loom_messages, loom_dead_letters, loom_audit, loom_gaps, consumer_lag_history TO loom_ingest;
-- The coordinator deletes lag samples older than LOOM_LAG_HISTORY_RETENTION_S (the only DELETE granted).
GRANT DELETE ON consumer_lag_history TO loom_ingest;
-- Claims (INSERT ... ON CONFLICT DO UPDATE) and the offset compare-and-set.
GRANT SELECT, INSERT, UPDATE ON loom_offsets TO loom_ingest;
-- Written by the coordinator: consumers whose flushes PostgreSQL refuses (cleared by UPDATE, never deleted).
GRANT SELECT, INSERT, UPDATE ON loom_sink_errors TO loom_ingest;
-- Written by the coordinator: partitions it parked, unparked by UPDATE (python -m loom_ray.ctl unpark), never
-- deleted.
GRANT SELECT, INSERT, UPDATE ON loom_parked TO loom_ingest;
-- Registered by the driver, kept alive by the coordinator, marked stopped by UPDATE, never deleted.
GRANT SELECT, INSERT, UPDATE ON loom_deployments TO loom_ingest;
-- Per-route counts, advanced by every flush of a routed topic (sql/008_routes.sql). The routes' own tables
-- are the user's: grant SELECT, INSERT, UPDATE (upsert) and DELETE (tombstones) on them as their routes need.
GRANT SELECT, INSERT, UPDATE ON loom_route_counts TO loom_ingest;
GRANT SELECT ON v_route_counts TO loom_ingest;
-- Operations (python -m loom_ray.ctl, sql/013_operations.sql): the coordinator reads the paused topics and
-- the pending rewinds and skips every round and closes each it applies (UPDATE, never DELETE), recording a
-- rewind's window; a flush that reads records again after a rewind counts them there and resolves, or
-- re-fails, the dead letters it reads again (those columns only). ctl itself runs as a role that may write
-- what it changes: the owner, or one granted INSERT on loom_operations and loom_paused, UPDATE on
-- loom_operations, loom_paused and loom_dead_letters, and what a replay writes (the data tables, the routes').
GRANT SELECT ON loom_paused TO loom_ingest;
GRANT SELECT, UPDATE ON loom_operations TO loom_ingest;
GRANT SELECT, INSERT, UPDATE ON loom_rereads TO loom_ingest;
GRANT UPDATE (error_class, error_message, stage, sqlstate, attempts, attempted_at, resolved_at, resolved_by)
    ON loom_dead_letters TO loom_ingest;
-- Read only: which migrations and view definitions are applied (loom_ray/migrate.py), and the monitoring views.
GRANT SELECT ON loom_migrations, loom_views, v_consumer_performance_monitor, v_consumer_alerts,
    v_consumer_activity_monitoring, v_consumer_lag_health TO loom_ingest;
