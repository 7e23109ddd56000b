-- Real topics: incarnations of a recreated topic, and offsets skipped for a recorded reason (loom_gaps).
--
-- A topic deleted and created again under the same name starts its offsets at 0 again. Its partitions keep
-- their loom_offsets row; the claim that notices the new topic (another Kafka topic id, or a stored
-- next_offset above the high watermark) bumps that row's `incarnation`. Every stored record carries the
-- incarnation it was read from, so the new records' (topic, partition, offset) do not collide with the old
-- incarnation's rows, which stay as they are. Changing the primary keys rebuilds their indexes once.

ALTER TABLE loom_offsets ADD COLUMN IF NOT EXISTS incarnation integer NOT NULL DEFAULT 0;
ALTER TABLE loom_offsets ADD COLUMN IF NOT EXISTS topic_id text;  -- Kafka's topic id (base64) it was read from
COMMENT ON COLUMN loom_offsets.incarnation IS 'Bumped when the topic was recreated or its log truncated';

ALTER TABLE loom_messages ADD COLUMN IF NOT EXISTS incarnation integer NOT NULL DEFAULT 0;
ALTER TABLE loom_dead_letters ADD COLUMN IF NOT EXISTS incarnation integer NOT NULL DEFAULT 0;
ALTER TABLE loom_audit ADD COLUMN IF NOT EXISTS incarnation integer NOT NULL DEFAULT 0;

-- The primary keys take the incarnation (once: a second run finds it there and changes nothing).
DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['loom_messages', 'loom_dead_letters'] LOOP
        IF NOT EXISTS (
            SELECT 1 FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
            WHERE i.indrelid = to_regclass(t) AND i.indisprimary AND a.attname = 'incarnation'
        ) THEN
            EXECUTE format('ALTER TABLE %I DROP CONSTRAINT %I', t, t || '_pkey');
            EXECUTE format('ALTER TABLE %I ADD PRIMARY KEY (topic, "partition", incarnation, "offset")', t);
        END IF;
    END LOOP;
END
$$;

-- Offsets that end as neither a row nor a dead letter, and why. [from_offset, to_offset) of `incarnation`:
--   offset_out_of_range  the log start moved past the committed offset (retention, DeleteRecords) before the
--                        records were read; written in the same transaction as the batch that follows it;
--   topic_recreated      the topic was deleted and created again: the old incarnation's records from
--                        from_offset on were never read (to_offset NULL: its end is unknown);
--   log_truncated        the broker's log ends below offsets already stored (an unclean leader election):
--                        [from_offset, to_offset) are stored, but the broker no longer has them.
CREATE TABLE IF NOT EXISTS loom_gaps (
    topic        text        NOT NULL,
    "partition"  integer     NOT NULL,
    incarnation  integer     NOT NULL,
    from_offset  bigint      NOT NULL,
    to_offset    bigint,
    reason       text        NOT NULL
                 CHECK (reason IN ('offset_out_of_range', 'topic_recreated', 'log_truncated')),
    detail       text        NOT NULL,
    detected_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, "partition", incarnation, from_offset),
    CHECK (to_offset IS NOT NULL OR reason = 'topic_recreated')
);

-- v_consumer_performance_monitor: rows and dead letters of the current incarnation (the offset range
-- bound follows the new primary key).
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
    WHERE x.topic = p.topic AND x."partition" = p."partition" AND x.incarnation = coalesce(o.incarnation, 0)
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
    WHERE x.topic = p.topic AND x."partition" = p."partition" AND x.incarnation = coalesce(o.incarnation, 0)
      AND x.failed_at >= now() - interval '5 minutes'
) AS d;

-- v_consumer_activity_monitoring: the newest row and dead letter of the partition's current incarnation.
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
    WHERE x.topic = o.topic AND x."partition" = o."partition" AND x.incarnation = o.incarnation
    ORDER BY x."offset" DESC
    LIMIT 1
) AS lm ON true
LEFT JOIN LATERAL (
    SELECT x."offset", x.failed_at, x.stage, x.error_class, x.error_message
    FROM loom_dead_letters AS x
    WHERE x.topic = o.topic AND x."partition" = o."partition" AND x.incarnation = o.incarnation
    ORDER BY x."offset" DESC
    LIMIT 1
) AS ld ON true;

-- v_consumer_alerts gains one kind:
--   gap           offsets skipped for a recorded reason in the last hour (loom_gaps: retention moved the log
--                 start past the committed offset, the topic was recreated, or its log was truncated).
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
WHERE detected_at > now() - interval '1 hour';

COMMENT ON VIEW v_consumer_alerts IS
    'Active alerts per partition: lag_growing, stalled, dead_letters, no_owner (003_views.sql), gap (005).';
