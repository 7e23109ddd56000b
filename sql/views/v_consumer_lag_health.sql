-- Lag health by Burrow's rules (loom_ray/policy/lag_health.py says what each status means; the unit-test table
-- in tests/support/lag_health_cases.py runs through this view too, so the two agree).
--
-- One row per partition (the partitions of v_consumer_performance_monitor) with its status over its window,
-- the newest 10 samples of consumer_lag_history (policy WINDOW_SAMPLES; fewer than 3, MIN_SAMPLES, is OK).
-- Each partition's window is read backwards along consumer_lag_history's primary key. A partition of a topic
-- paused with python -m loom_ray.ctl pause (loom_paused) is OK: it is not read on purpose, and the paused
-- alert of v_consumer_alerts says so.
CREATE OR REPLACE VIEW v_consumer_lag_health AS
WITH parts AS (
    SELECT topic, "partition" FROM loom_offsets
    UNION
    SELECT topic, "partition" FROM consumer_lag_history WHERE sampled_at > now() - interval '5 minutes'
),
windows AS (
    SELECT p.topic, p."partition", o.owner,
           EXISTS (SELECT 1 FROM loom_paused AS z WHERE z.topic = p.topic AND z.resumed_at IS NULL) AS paused,
           -- As in v_consumer_performance_monitor: the newest high watermark minus the committed offset.
           greatest(w.last_high - coalesce(o.next_offset, w.last_offset), 0) AS current_lag,
           w.*
    FROM parts AS p
    LEFT JOIN loom_offsets AS o USING (topic, "partition")
    CROSS JOIN LATERAL (
        SELECT count(*)                                                  AS samples,
               min(x.sampled_at)                                         AS first_at,
               max(x.sampled_at)                                         AS last_at,
               (array_agg(x.high_watermark ORDER BY x.sampled_at DESC))[1] AS last_high,
               (array_agg(x.next_offset ORDER BY x.sampled_at DESC))[1]    AS last_offset,
               (array_agg(x.lag ORDER BY x.sampled_at))[1]                 AS first_lag,
               (array_agg(x.lag ORDER BY x.sampled_at DESC))[1]            AS last_lag,
               coalesce(bool_or(x.lag = 0), false)                       AS lag_was_zero,
               coalesce(bool_or(x.next_offset < x.prev_offset), false)   AS rewound,
               coalesce(bool_or(x.next_offset <> x.prev_offset), false)  AS moved,
               coalesce(bool_or(x.lag < x.prev_lag), false)              AS lag_went_down
        FROM (
            SELECT s.sampled_at, s.next_offset, s.high_watermark, s.lag,
                   lag(s.next_offset) OVER (ORDER BY s.sampled_at) AS prev_offset,
                   lag(s.lag) OVER (ORDER BY s.sampled_at)         AS prev_lag
            FROM (
                SELECT h.sampled_at, h.next_offset, h.high_watermark, h.lag
                FROM consumer_lag_history AS h
                WHERE h.topic = p.topic AND h."partition" = p."partition"
                ORDER BY h.sampled_at DESC
                LIMIT 10
            ) AS s
        ) AS x
    ) AS w
),
judged AS (
    SELECT *,
           CASE
               WHEN paused OR samples < 3 OR coalesce(current_lag, 0) = 0 OR lag_was_zero THEN 'OK'
               WHEN rewound THEN 'REWIND'
               WHEN now() - last_at > last_at - first_at THEN 'STOP'
               WHEN NOT moved THEN 'STALL'
               WHEN NOT lag_went_down THEN 'WARN'
               ELSE 'OK'
           END AS status
    FROM windows
)
SELECT topic, "partition", owner, status,
       CASE WHEN status IN ('STOP', 'STALL', 'REWIND') THEN 'ERR' ELSE status END AS severity,
       current_lag                                    AS lag,
       samples,
       round(extract(epoch FROM last_at - first_at))  AS window_s,
       round(extract(epoch FROM now() - last_at))     AS sample_age_s,
       CASE status
           WHEN 'REWIND' THEN 'committed offset went back within the last ' || samples || ' samples'
           WHEN 'STOP' THEN format('no lag sample for %s s (the window spans %s s): is the job running?',
                                   round(extract(epoch FROM now() - last_at)),
                                   round(extract(epoch FROM last_at - first_at)))
           WHEN 'STALL' THEN format('committed offset %s unchanged over %s samples (%s s), lag %s, owner %s',
                                    last_offset, samples, round(extract(epoch FROM last_at - first_at)),
                                    current_lag, coalesce(owner, '(none)'))
           WHEN 'WARN' THEN format('consuming, but lag never went down over %s samples: %s -> %s',
                                   samples, first_lag, last_lag)
       END                                            AS detail
FROM judged;

COMMENT ON VIEW v_consumer_lag_health IS
    'Per partition: Burrow lag status (OK, WARN, STOP, STALL, REWIND; severity OK, WARN, ERR) over the newest '
    '10 samples of consumer_lag_history (loom_ray/policy/lag_health.py).';
