-- Flushes PostgreSQL refuses for a reason that is not an outage (loom_ray/policy/sink_errors.py): a privilege
-- revoked, a table dropped or altered, disk full, read-only after a failover. The consumer keeps retrying
-- with its buffers; the coordinator copies what its consumers report here every health-check round (best
-- effort: PostgreSQL may refuse this write for the same reason) and sets cleared_at once flushes go through.
CREATE TABLE IF NOT EXISTS loom_sink_errors (
    owner       text        PRIMARY KEY,  -- the consumer actor (loom_offsets.owner of the partitions it holds)
    sqlstate    text        NOT NULL,
    condition   text        NOT NULL,     -- PostgreSQL's name for the SQLSTATE, e.g. disk_full
    message     text        NOT NULL,     -- PostgreSQL's message
    fix         text        NOT NULL,     -- what a person should do
    first_seen  timestamptz NOT NULL,     -- the first flush it refused
    last_seen   timestamptz NOT NULL,     -- the coordinator's last report of it
    cleared_at  timestamptz               -- set when flushes went through again (or the consumer stopped)
);
