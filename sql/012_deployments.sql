-- Deployments (LOOM_DEPLOYMENT): one row each, registered by the driver at start and kept alive by its
-- coordinator every round. A driver refuses to start while another live deployment ingests one of its topics
-- into this schema (loom_ray/deployment.py): two coordinators would fence each other's claims for ever.
CREATE TABLE IF NOT EXISTS loom_deployments (
    deployment   text        PRIMARY KEY,
    topics       text[]      NOT NULL,
    fingerprint  text        NOT NULL,              -- of every setting: a change replaces the coordinator
    started_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now(), -- the coordinator's last round
    stopped_at   timestamptz                        -- set when its coordinator stopped; rows are never deleted
);
