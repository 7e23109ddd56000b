-- Operating the data: python -m loom_ray.ctl dead-letters|replay|rewind|skip|pause|resume (loom_ray/ops/).

-- Every operation a person asked for, one row each: who (the database role), why (ctl --reason), when, what
-- (the filter, or the partitions and where to), and how many. A replay, a pause and a resume are done by ctl
-- at once; a rewind or a skip waits as `pending` until the coordinator of the deployment that ingests its
-- topics applies it at its next round, or ctl applies it itself when no coordinator runs. Rows are never
-- deleted. (loom_audit stays what it was: the offset ranges each flush committed, read by the fault checker.)
CREATE TABLE IF NOT EXISTS loom_operations (
    id            bigserial   PRIMARY KEY,
    kind          text        NOT NULL CHECK (kind IN ('replay', 'rewind', 'skip', 'pause', 'resume')),
    topics        text[]      NOT NULL,
    selection     jsonb       NOT NULL,                 -- what was asked
    reason        text,
    requested_by  text        NOT NULL DEFAULT current_user,
    requested_at  timestamptz NOT NULL DEFAULT now(),
    state         text        NOT NULL CHECK (state IN ('pending', 'running', 'done', 'failed')),
    applied_by    text,                                 -- 'coordinator <deployment>', or 'ctl'
    finished_at   timestamptz,
    records       bigint      NOT NULL DEFAULT 0,       -- how many: dead letters, offsets, partitions or topics
    result        jsonb       NOT NULL DEFAULT '{}'::jsonb  -- counts by outcome, positions before and after, error
);
CREATE INDEX IF NOT EXISTS loom_operations_pending ON loom_operations (id) WHERE state = 'pending';

-- A dead letter is never deleted: a replay (or a rewind reading it again) that makes it fit writes its row and
-- marks it resolved in the same transaction; one that still does not fit keeps it, with its new reason.
ALTER TABLE loom_dead_letters
    ADD COLUMN IF NOT EXISTS attempts     integer NOT NULL DEFAULT 0,  -- replays and re-reads that tried it
    ADD COLUMN IF NOT EXISTS attempted_at timestamptz,
    ADD COLUMN IF NOT EXISTS resolved_at  timestamptz,                 -- when it became its row or route write
    ADD COLUMN IF NOT EXISTS resolved_by  bigint;                      -- loom_operations.id of that replay or rewind

-- A rewind's window: offsets of the current incarnation below reread_until were read before, so a record read
-- again that is already stored is skipped (loom_ray/ops/reread.py); reread_operation is the rewind.
ALTER TABLE loom_offsets
    ADD COLUMN IF NOT EXISTS reread_until     bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS reread_operation bigint;

-- What a rewind's re-read did per partition, counted in the flush transactions that read [from_offset,
-- to_offset) again.
CREATE TABLE IF NOT EXISTS loom_rereads (
    operation    bigint  NOT NULL,
    topic        text    NOT NULL,
    "partition"  integer NOT NULL,
    incarnation  integer NOT NULL,
    from_offset  bigint  NOT NULL,
    to_offset    bigint  NOT NULL,
    skipped      bigint  NOT NULL DEFAULT 0,  -- already stored (loom_messages, an insert route): left as it was
    reapplied    bigint  NOT NULL DEFAULT 0,  -- applied again by an upsert route (or left out as stale again)
    resolved     bigint  NOT NULL DEFAULT 0,  -- a dead letter that fits now: its row written, it resolved
    failing      bigint  NOT NULL DEFAULT 0,  -- a dead letter that still does not fit: kept, its attempt counted
    PRIMARY KEY (operation, topic, "partition")
);

-- Topics paused by ctl pause (a topic, or a route's topics): the coordinator neither claims nor reads their
-- partitions, whose offset rows keep their place, until ctl resume sets resumed_at. Never deleted.
CREATE TABLE IF NOT EXISTS loom_paused (
    topic             text        NOT NULL,
    paused_at         timestamptz NOT NULL DEFAULT now(),
    paused_by         text        NOT NULL DEFAULT current_user,
    operation         bigint      NOT NULL,  -- loom_operations.id of the pause
    reason            text,
    resumed_at        timestamptz,
    resumed_by        text,
    resume_operation  bigint,
    PRIMARY KEY (topic, paused_at)
);
CREATE UNIQUE INDEX IF NOT EXISTS loom_paused_open ON loom_paused (topic) WHERE resumed_at IS NULL;

-- Two more reasons a range of offsets ends as neither row nor dead letter:
--   log_rewritten  the log was truncated below the offset being read and written again before the consumer
--                  looked (loom_ray/policy/positions.py): [from_offset, to_offset) of the new incarnation
--                  were not read;
--   skipped        python -m loom_ray.ctl skip: a person moved the partition past them (detail: who and why).
ALTER TABLE loom_gaps DROP CONSTRAINT IF EXISTS loom_gaps_reason_check;
ALTER TABLE loom_gaps ADD CONSTRAINT loom_gaps_reason_check
    CHECK (reason IN ('offset_out_of_range', 'topic_recreated', 'log_truncated', 'log_rewritten', 'skipped'));
