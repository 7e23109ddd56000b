-- Routes (LOOM_ROUTES_FILE): one row per route, what it applied, left out and dead-lettered since it was first used.
CREATE OR REPLACE VIEW v_route_counts AS
SELECT route,
       count(DISTINCT topic)  AS topics,
       sum(inserted)::bigint     AS inserted,
       sum(upserted)::bigint     AS upserted,
       sum(deleted)::bigint      AS deleted,
       sum(dead_letters)::bigint AS dead_letters,
       max(updated_at)        AS last_write,
       sum(stale)::bigint        AS stale,
       sum(duplicates)::bigint   AS duplicates
FROM loom_route_counts
GROUP BY route;

COMMENT ON VIEW v_route_counts IS 'Per route: records inserted, upserted, deleted and dead-lettered, the last write, and records left out as stale (older than the row, by version) or duplicates (on_duplicate = ignore).';
