-- Partitions the coordinator parked (loom_ray/policy/parking.py): their flush failed three times with one error
-- within 10 minutes, which means a bug or a broken invariant, not bad input. A parked partition is neither
-- claimed nor read; its loom_offsets row, its place, stays as it was. `python -m loom_ray.ctl unpark` sets
-- unparked_at and unparked_by once the cause is fixed. Rows are never deleted: they are the record of what was
-- parked and why (and the least-privilege role needs no DELETE).
CREATE TABLE IF NOT EXISTS loom_parked (
    topic           text        NOT NULL,
    "partition"     integer     NOT NULL,
    error           text        NOT NULL,  -- the newest fault's "ExceptionClass: first line of its message"
    faults          integer     NOT NULL,  -- faults since the partition was last clean (10 minutes without one)
    first_fault_at  timestamptz NOT NULL,  -- the first of them
    parked_at       timestamptz NOT NULL DEFAULT now(),
    unparked_at     timestamptz,           -- NULL while parked
    unparked_by     text,                  -- the coordinator's database role, or `ctl unpark --by`
    PRIMARY KEY (topic, "partition", parked_at)
);

-- A partition is parked at most once at a time.
CREATE UNIQUE INDEX IF NOT EXISTS loom_parked_open ON loom_parked (topic, "partition") WHERE unparked_at IS NULL;
