-- Routes that append by COPY: an insert route whose repeated keys are dead letters, into a plain or
-- partitioned table without rules (there a COPY is what an INSERT is: triggers, constraints, defaults).

-- Run in the flush transaction before such a route's records are COPYed into `target`: takes the lock an
-- INSERT takes on it (so its columns keep their shape until the commit; ONLY: a partitioned table's columns
-- change on the parent, and each partition a row goes to is locked by the COPY itself), then raises LR001, as
-- loom_route_guard does, when the table's shape is not `expected` or it no longer takes a COPY as an INSERT.
CREATE OR REPLACE FUNCTION loom_route_lock(target regclass, expected text) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('LOCK TABLE ONLY %s IN ROW EXCLUSIVE MODE', target);
    IF NOT EXISTS (SELECT 1 FROM pg_class c
                   WHERE c.oid = target AND c.relkind IN ('r', 'p') AND NOT c.relhasrules) THEN
        RAISE EXCEPTION 'the table % has a rule now, or is no table', target USING ERRCODE = 'LR001';
    END IF;
    RETURN loom_route_guard(target, expected);
END
$$;
