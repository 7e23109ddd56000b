-- Reads views: v_consumer_performance_monitor, v_consumer_lag_health
--
-- One row per active alert. alert_kind is one of:
--   lag_growing   newest lag sample above the oldest of the last 5 minutes (at least 2 samples);
--   stalled       lag > 0 and the offset row unchanged for more than 60 s (not for a paused topic);
--   dead_letters  at least one dead letter in the last 5 minutes;
--   no_owner      nobody holds the partition (released, never claimed, or its consumer is gone; not for a
--                 paused topic);
--   gap           offsets skipped for a recorded reason in the last hour (loom_gaps: retention moved the log
--                 start past the committed offset, the topic was recreated, its log was truncated or written
--                 again, or a person skipped them with python -m loom_ray.ctl skip);
--   sink_blocked  PostgreSQL refuses the flushes of the partition's owner (SQLSTATE, condition, since when,
--                 message, fix), reported within the last 2 minutes and not cleared (loom_sink_errors);
--   lag_warn, lag_stop, lag_stall, lag_rewind
--                 the partition's lag health is not OK (v_consumer_lag_health; the detail says what was seen);
--   parked        the coordinator parked the partition: its flush failed again and again with one error (a bug
--                 or a broken invariant), so it is not read until `python -m loom_ray.ctl unpark` (loom_parked);
--   paused        a person paused the partition's topic (python -m loom_ray.ctl pause, loom_paused): it is not
--                 read, its offset row keeps its place, until python -m loom_ray.ctl resume.
CREATE OR REPLACE VIEW v_consumer_alerts AS
WITH paused AS (
    SELECT topic, paused_at, paused_by, reason FROM loom_paused WHERE resumed_at IS NULL
),
window_samples AS (
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
WHERE lag > 0 AND seconds_since_update > 60 AND topic NOT IN (SELECT topic FROM paused)
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
WHERE owner IS NULL AND topic NOT IN (SELECT topic FROM paused)
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
WHERE e.cleared_at IS NULL AND e.last_seen > now() - interval '2 minutes'
UNION ALL
SELECT topic, "partition", 'lag_' || lower(status), detail
FROM v_consumer_lag_health
WHERE status <> 'OK'
UNION ALL
SELECT topic, "partition", 'parked',
       format('parked since %s after %s faults (the first at %s): %s; fix the cause, then '
              'python -m loom_ray.ctl unpark %s[%s]', parked_at, faults, first_fault_at, error, topic, "partition")
FROM loom_parked
WHERE unparked_at IS NULL
UNION ALL
SELECT m.topic, m."partition", 'paused',
       format('paused since %s by %s%s; lag %s, next_offset %s kept; python -m loom_ray.ctl resume --topic %s',
              z.paused_at, z.paused_by, coalesce(': ' || z.reason, ''), coalesce(m.lag::text, 'unknown'),
              coalesce(m.next_offset::text, '(never claimed)'), m.topic)
FROM v_consumer_performance_monitor AS m
JOIN paused AS z USING (topic);

COMMENT ON VIEW v_consumer_alerts IS
    'Active alerts per partition: lag_growing, stalled, dead_letters, no_owner, gap, sink_blocked, lag_warn, '
    'lag_stop, lag_stall, lag_rewind, parked, paused (sql/views/v_consumer_alerts.sql).';
