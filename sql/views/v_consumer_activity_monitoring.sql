-- Per claimed partition: the newest row and dead letter of its current incarnation (a view the seed system had).
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

COMMENT ON VIEW v_consumer_activity_monitoring IS
    'Per partition: the last ingested message (offset, kafka_ts, ingested_at) and the last dead letter.';
