-- Monitoring views carried over from the seed system, over loom-ray's tables (001_core, 002_monitoring).
-- Idempotent: CREATE OR REPLACE only. Changing a view's existing columns later needs DROP VIEW first
-- (PostgreSQL only lets CREATE OR REPLACE append columns), in v_consumer_alerts -> performance order.
--
-- Which partitions: every row of loom_offsets (claimed at least once) plus any partition the lag sampler saw
-- in the last 5 minutes (it may know partitions nobody has claimed yet).
-- Lag: the newest sampled high watermark minus loom_offsets.next_offset (committed progress, our truth), so
-- a commit after the sample lowers it at once; the high watermark itself is only as fresh as lag_sampled_at.

CREATE OR REPLACE VIEW v_consumer_performance_monitor AS
WITH parts AS (
    SELECT topic, "partition" FROM loom_offsets
    UNION
    SELECT topic, "partition" FROM consumer_lag_history WHERE sampled_at > now() - interval '5 minutes'
)
SELECT
    p.topic,
    p."partition",
    o.owner,
    o.epoch,
    o.next_offset,
    h.high_watermark,
    CASE WHEN h.high_watermark IS NOT NULL
         THEN greatest(h.high_watermark - coalesce(o.next_offset, h.next_offset), 0)
    END                                                        AS lag,
    h.sampled_at                                               AS lag_sampled_at,
    m.rows_1m,
    m.rows_5m,
    d.dead_letters_1m,
    d.dead_letters_5m,
    -- Every offset becomes a row or a dead letter: both count as consumed.
    round((m.rows_1m + d.dead_letters_1m) / 60.0, 2)           AS msgs_per_s,
    -- updated_at moves with every committed flush (and with claims and releases).
    round(extract(epoch FROM now() - o.updated_at), 1)         AS seconds_since_update
FROM parts AS p
LEFT JOIN loom_offsets AS o USING (topic, "partition")
LEFT JOIN LATERAL (
    SELECT s.high_watermark, s.next_offset, s.sampled_at
    FROM consumer_lag_history AS s
    WHERE s.topic = p.topic AND s."partition" = p."partition"
    ORDER BY s.sampled_at DESC
    LIMIT 1
) AS h ON true
CROSS JOIN LATERAL (
    SELECT count(*) FILTER (WHERE x.ingested_at >= now() - interval '1 minute') AS rows_1m,
           count(*)                                                          AS rows_5m
    FROM loom_messages AS x
    WHERE x.topic = p.topic AND x."partition" = p."partition"
      AND x.ingested_at >= now() - interval '5 minutes'
      -- Not needed for the result, only for speed: loom_messages has no index on ingested_at, so bound the
      -- primary-key range by the progress sampled 5 minutes ago (offsets below it were committed earlier).
      AND x."offset" >= coalesce((
          SELECT least(b.next_offset, o.next_offset)
          FROM consumer_lag_history AS b
          WHERE b.topic = p.topic AND b."partition" = p."partition"
            AND b.sampled_at <= now() - interval '5 minutes'
          ORDER BY b.sampled_at DESC
          LIMIT 1), 0)
) AS m
CROSS JOIN LATERAL (
    SELECT count(*) FILTER (WHERE x.failed_at >= now() - interval '1 minute') AS dead_letters_1m,
           count(*)                                                        AS dead_letters_5m
    FROM loom_dead_letters AS x
    WHERE x.topic = p.topic AND x."partition" = p."partition"
      AND x.failed_at >= now() - interval '5 minutes'
) AS d;

COMMENT ON VIEW v_consumer_performance_monitor IS
    'Per partition: owner, epoch, committed offset, newest high watermark and lag, rows and dead letters '
    'in the last 1 and 5 minutes, msgs/s over the last minute, seconds since the offset row changed.';


-- One row per active alert. alert_kind is one of:
--   lag_growing   newest lag sample above the oldest of the last 5 minutes (at least 2 samples);
--   stalled       lag > 0 and the offset row unchanged for more than 60 s;
--   dead_letters  at least one dead letter in the last 5 minutes;
--   no_owner      nobody holds the partition (released, never claimed, or its consumer is gone).
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
WHERE owner IS NULL;

COMMENT ON VIEW v_consumer_alerts IS
    'Active alerts per partition: lag_growing, stalled, dead_letters, no_owner (see 003_views.sql).';


CREATE OR REPLACE VIEW v_consumer_activity_monitoring AS
SELECT
    o.topic,
    o."partition",
    o.owner,
    o.next_offset,
    lm."offset"                                              AS last_consumed_offset,
    lm.kafka_ts                                              AS last_consumed_kafka_ts,
    lm.ingested_at                                           AS last_consumed_ingested_at,
    -- Produce-to-ingest delay of that message (NULL when the producer set no timestamp).
    round(extract(epoch FROM lm.ingested_at - lm.kafka_ts), 3) AS last_ingest_delay_s,
    ld."offset"                                              AS last_dead_letter_offset,
    ld.failed_at                                             AS last_dead_letter_at,
    ld.stage || ': ' || ld.error_class || ': ' || ld.error_message AS last_dead_letter_reason
FROM loom_offsets AS o
-- Newest by offset, read backwards along the primary key: each offset is written once, in order.
LEFT JOIN LATERAL (
    SELECT x."offset", x.kafka_ts, x.ingested_at
    FROM loom_messages AS x
    WHERE x.topic = o.topic AND x."partition" = o."partition"
    ORDER BY x."offset" DESC
    LIMIT 1
) AS lm ON true
LEFT JOIN LATERAL (
    SELECT x."offset", x.failed_at, x.stage, x.error_class, x.error_message
    FROM loom_dead_letters AS x
    WHERE x.topic = o.topic AND x."partition" = o."partition"
    ORDER BY x."offset" DESC
    LIMIT 1
) AS ld ON true;

COMMENT ON VIEW v_consumer_activity_monitoring IS
    'Per partition: the last ingested message (offset, kafka_ts, ingested_at) and the last dead letter.';
