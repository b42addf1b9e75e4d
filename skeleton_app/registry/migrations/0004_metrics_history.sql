-- 0004: the daemons' heartbeats as a time series (`skeleton cluster top`, `skeleton web`).
--
-- One row per heartbeat (step 0); down-sampled rows (step = seconds one row stands for) replace
-- old ones, and rows older than registry.metrics_retention are pruned, by the daemons
-- themselves (skeleton_app.registry.metrics_history): no cron job. Scalars are columns so
-- that reads can average them over buckets in SQL; per-GPU values are small arrays indexed
-- like the node's GPUs. Values are as the node sent them: untrusted (checked on write and on
-- read).

CREATE TABLE node_metrics (
    node_id          text             NOT NULL,
    at               timestamptz      NOT NULL DEFAULT now(),
    step             integer          NOT NULL DEFAULT 0,
    load1            double precision,
    cpu_busy         double precision,          -- 0..1 of all CPUs since the last heartbeat
    mem_total        bigint,                    -- bytes
    mem_available    bigint,
    disk_total       bigint,                    -- the app dir's file system, bytes
    disk_free        bigint,
    gpu_util         double precision[],        -- percent, per GPU
    gpu_mem_used     double precision[],        -- MiB, per GPU
    gpu_mem_total    double precision[],
    jobs_running     integer,
    PRIMARY KEY (node_id, step, at)
);

CREATE INDEX node_metrics_at ON node_metrics (at);

ALTER TABLE node_metrics ENABLE ROW LEVEL SECURITY;
CREATE POLICY node_metrics_own_rows ON node_metrics
    USING (skeleton_node_of(current_user) IS NULL OR node_id = skeleton_node_of(current_user))
    WITH CHECK (skeleton_node_of(current_user) IS NULL
                OR node_id = skeleton_node_of(current_user));

-- Node roles made before this migration get the rights that `issue_credentials` grants now.
DO $$
DECLARE r name;
BEGIN
    FOR r IN SELECT role FROM node_roles LOOP
        EXECUTE format('GRANT SELECT, INSERT, DELETE ON node_metrics TO %I', r);
    END LOOP;
END $$;
