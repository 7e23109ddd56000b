-- Per partition: owner, epoch, committed offset, newest high watermark and lag, and the rows and dead letters
-- of its current incarnation in the last 1 and 5 minutes (a view the seed system had, over loom-ray's tables).
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

COMMENT ON VIEW v_consumer_performance_monitor IS
    'Per partition: owner, epoch, committed offset, newest high watermark and lag, rows and dead letters '
    'in the last 1 and 5 minutes, msgs/s over the last minute, seconds since the offset row changed.';
