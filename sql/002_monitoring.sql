-- Progress history, written by the coordinator once per LOOM_LAG_SAMPLE_INTERVAL_S.
CREATE TABLE IF NOT EXISTS consumer_lag_history (
    sampled_at     timestamptz NOT NULL DEFAULT now(),
    topic          text        NOT NULL,
    "partition"    integer     NOT NULL,
    next_offset    bigint      NOT NULL,
    high_watermark bigint      NOT NULL,
    lag            bigint      GENERATED ALWAYS AS (greatest(high_watermark - next_offset, 0)) STORED,
    owner          text,
    PRIMARY KEY (topic, "partition", sampled_at)
);
CREATE INDEX IF NOT EXISTS consumer_lag_history_sampled_at ON consumer_lag_history (sampled_at);
