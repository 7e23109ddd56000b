-- Routes into the user's own tables: the check that a table still has the shape loom-ray read, and the
-- outcomes of records a route takes without changing its table.

-- A digest of what a route's conversions and statements rely on in table `target`: each column's name,
-- type with modifiers, NOT NULL, default, enum labels, and how many deferrable constraints touch the table.
CREATE OR REPLACE FUNCTION loom_route_shape(target regclass) RETURNS text
LANGUAGE sql STABLE AS $$
SELECT md5(
    coalesce((
        SELECT string_agg(
            format('%s:%s:%s:%s:%s', a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
                   a.atthasdef OR a.attidentity <> '' OR a.attgenerated <> '',
                   (SELECT string_agg(e.enumlabel, ',' ORDER BY e.enumsortorder)
                    FROM pg_enum e WHERE e.enumtypid = a.atttypid)),
            ';' ORDER BY a.attnum)
        FROM pg_attribute a
        WHERE a.attrelid = target AND a.attnum > 0 AND NOT a.attisdropped), '')
    || '|' || (SELECT count(*) FROM pg_constraint c
               WHERE (c.conrelid = target OR c.confrelid = target) AND c.condeferrable)::text)
$$;

-- Raised (SQLSTATE LR001) at the start of every statement that writes a route's table when the table's shape
-- is not the one its records were converted for; the consumer then reads the table again.
CREATE OR REPLACE FUNCTION loom_route_guard(target regclass, expected text) RETURNS boolean
LANGUAGE plpgsql STABLE AS $$
BEGIN
    IF loom_route_shape(target) IS DISTINCT FROM expected THEN
        RAISE EXCEPTION 'the table % was altered since loom-ray read it', target USING ERRCODE = 'LR001';
    END IF;
    RETURN true;
END
$$;

ALTER TABLE loom_route_counts
    ADD COLUMN IF NOT EXISTS stale bigint NOT NULL DEFAULT 0,       -- older than the key's row (version): not applied
    ADD COLUMN IF NOT EXISTS duplicates bigint NOT NULL DEFAULT 0;  -- insert, on_duplicate = "ignore": key was there
