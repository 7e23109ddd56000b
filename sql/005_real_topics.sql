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
