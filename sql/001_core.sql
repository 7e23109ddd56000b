-- Core tables: the default sink, the offsets (the source of truth for progress) and the dead letters.
-- Every offset a partition has ever held lands exactly once in loom_messages or loom_dead_letters,
-- in the same transaction that advances loom_offsets.next_offset.

CREATE TABLE IF NOT EXISTS loom_messages (
    topic        text        NOT NULL,
    "partition"  integer     NOT NULL,
    "offset"     bigint      NOT NULL,
    key          bytea,
    payload      jsonb       NOT NULL,
    headers      jsonb,
    kafka_ts     timestamptz,
    ingested_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, "partition", "offset")
);

CREATE TABLE IF NOT EXISTS loom_offsets (
    topic        text        NOT NULL,
    "partition"  integer     NOT NULL,
    next_offset  bigint      NOT NULL,           -- first offset not yet applied
    epoch        bigint      NOT NULL DEFAULT 0, -- fencing token, bumped by every claim
    owner        text,                           -- consumer actor holding the claim (diagnostics)
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, "partition")
);

CREATE TABLE IF NOT EXISTS loom_dead_letters (
    topic          text        NOT NULL,
    "partition"    integer     NOT NULL,
    "offset"       bigint      NOT NULL,
    key            bytea,
    raw_value      bytea,                        -- capped at LOOM_DEAD_LETTER_MAX_BYTES
    value_len      integer,                      -- original length; NULL for a null value (tombstone)
    value_sha256   bytea,
    headers        jsonb,
    error_class    text        NOT NULL,
    error_message  text        NOT NULL,
    stage          text        NOT NULL CHECK (stage IN ('decode', 'validate', 'db_row')),
    sqlstate       text,
    failed_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, "partition", "offset")
);
