-- Routes (LOOM_ROUTES_FILE): records each route applied to its own table, per partition. Written by the
-- flush in the same transaction as the rows and the offset compare-and-set, so the counts are exact.
CREATE TABLE IF NOT EXISTS loom_route_counts (
    route        text   NOT NULL,            -- the route's name in the routes file
    topic        text   NOT NULL,
    "partition"  int    NOT NULL,
    inserted     bigint NOT NULL DEFAULT 0,  -- records appended by an insert route
    upserted     bigint NOT NULL DEFAULT 0,  -- records written by an upsert route (later ones of a key overwrite)
    deleted      bigint NOT NULL DEFAULT 0,  -- tombstones applied as deletes by key
    dead_letters bigint NOT NULL DEFAULT 0,  -- records of the route's topics that became dead letters
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (route, topic, "partition")
);
