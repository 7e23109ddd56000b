-- Append-only record of every committed batch, written in the flush transaction when LOOM_AUDIT=true.
-- It has no unique key on purpose: the fault checker counts duplicates here, where the primary key of
-- loom_messages cannot hide them.
CREATE TABLE IF NOT EXISTS loom_audit (
    topic         text        NOT NULL,
    "partition"   integer     NOT NULL,
    start_offset  bigint      NOT NULL,  -- first offset the batch covers
    end_offset    bigint      NOT NULL,  -- one past the last
    rows          integer     NOT NULL,
    dead_letters  integer     NOT NULL,
    epoch         bigint      NOT NULL,
    owner         text        NOT NULL,
    txid          xid8        NOT NULL DEFAULT pg_current_xact_id(),
    committed_at  timestamptz NOT NULL DEFAULT now()
);
