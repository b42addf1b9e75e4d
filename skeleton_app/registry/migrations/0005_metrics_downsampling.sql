-- 0005: down-sampled history rows carry their weight, and reads are by node and time.
--
-- A down-sampled row (step 60 or 600) stands for `samples` heartbeats: averages over
-- buckets that mix raw and down-sampled rows weigh each row by it, so a bucket at the edge
-- of two steps is not pulled towards the few coarse rows (metrics_history.py). Raw rows
-- (step 0) stand for one heartbeat each.
--
-- Every query on node_metrics names its nodes and a time range (the history reads, each
-- daemon's pruning of its own rows): one (node_id, at) index serves them all, so the
-- global (at) index of 0004 goes (one index fewer to maintain per heartbeat).

ALTER TABLE node_metrics ADD COLUMN samples integer NOT NULL DEFAULT 1
    CHECK (samples > 0);

CREATE INDEX node_metrics_node_at ON node_metrics (node_id, at);
DROP INDEX node_metrics_at;

-- The same policy as 0004's, with skeleton_node_of in scalar subqueries: evaluated once per
-- statement instead of once per row (a daemon's prune of 1680 rows spent 0.1 s of 0.3 s
-- calling it row by row).
DROP POLICY node_metrics_own_rows ON node_metrics;
CREATE POLICY node_metrics_own_rows ON node_metrics
    USING ((SELECT skeleton_node_of(current_user)) IS NULL
           OR node_id = (SELECT skeleton_node_of(current_user)))
    WITH CHECK ((SELECT skeleton_node_of(current_user)) IS NULL
                OR node_id = (SELECT skeleton_node_of(current_user)));
