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

-- v_consumer_alerts: its definition in 005_real_topics.sql plus one kind:
--   sink_blocked  PostgreSQL refuses the flushes of the partition's owner (SQLSTATE, condition, since when,
--                 message, fix), reported within the last 2 minutes and not cleared.
CREATE OR REPLACE VIEW v_consumer_alerts AS
WITH window_samples AS (
    SELECT topic, "partition",
           count(*)                                      AS samples,
           (array_agg(lag ORDER BY sampled_at))[1]      AS first_lag,
           (array_agg(lag ORDER BY sampled_at DESC))[1] AS last_lag,
           max(sampled_at) - min(sampled_at)             AS span
    FROM consumer_lag_history
    WHERE sampled_at > now() - interval '5 minutes'
    GROUP BY topic, "partition"
)
SELECT topic, "partition", 'lag_growing'::text AS alert_kind,
       format('lag %s -> %s over %s s (%s samples)',
              first_lag, last_lag, round(extract(epoch FROM span)), samples) AS detail
FROM window_samples
WHERE samples >= 2 AND last_lag > first_lag
UNION ALL
SELECT topic, "partition", 'stalled',
       format('no offset advance for %s s, lag %s, owner %s',
              seconds_since_update, lag, coalesce(owner, '(none)'))
FROM v_consumer_performance_monitor
WHERE lag > 0 AND seconds_since_update > 60
UNION ALL
SELECT topic, "partition", 'dead_letters',
       format('%s dead letters in the last 5 minutes (%s in the last minute)', dead_letters_5m, dead_letters_1m)
FROM v_consumer_performance_monitor
WHERE dead_letters_5m > 0
UNION ALL
SELECT topic, "partition", 'no_owner',
       format('no owner, next_offset %s, lag %s',
              coalesce(next_offset::text, '(never claimed)'), coalesce(lag::text, 'unknown'))
FROM v_consumer_performance_monitor
WHERE owner IS NULL
UNION ALL
SELECT topic, "partition", 'gap',
       format('%s: offsets %s..%s of incarnation %s skipped: %s', reason, from_offset,
              coalesce((to_offset - 1)::text, '(end unknown)'), incarnation, detail)
FROM loom_gaps
WHERE detected_at > now() - interval '1 hour'
UNION ALL
SELECT o.topic, o."partition", 'sink_blocked',
       format('SQLSTATE %s (%s) since %s, owner %s: %s; fix: %s',
              e.sqlstate, e.condition, e.first_seen, e.owner, e.message, e.fix)
FROM loom_sink_errors AS e
JOIN loom_offsets AS o ON o.owner = e.owner
WHERE e.cleared_at IS NULL AND e.last_seen > now() - interval '2 minutes';

COMMENT ON VIEW v_consumer_alerts IS
    'Active alerts per partition: lag_growing, stalled, dead_letters, no_owner (003_views.sql), gap (005), '
    'sink_blocked (006).';
