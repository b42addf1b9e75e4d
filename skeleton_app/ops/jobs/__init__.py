"""Voice jobs: work routed to the best node through a durable PostgreSQL queue, with failover.

- `engines`   what each kind of work runs (skeleton_app/engines.py holds the values);
- `node`      the node side over a `Runner`: stage an attempt's input, start it detached
              (payloads/job.sh), wait for it, fetch its output, kill it, check tools;
- `routing`   pure: candidates and heartbeat metrics in, a `Route` (node + why) out;
- `dispatcher` the loop: claim, route, run, renew the lease, finish fenced, fail over;
- `queue`     the facade `Cluster.jobs` returns: submit, handles, list/show/cancel/retry/watch.

The queue itself (claims, leases, fencing, NOTIFY) is registry/jobs.py over
registry/job_records.py's `JobStore` protocol.
"""
