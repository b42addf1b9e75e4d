"""The node daemon (`skeleton daemon run`, or `python -m skeleton_app.agent`).

What `skeleton cluster daemon start` starts on every node. It:

1. works out which node it is (identity.py): `$SKELETON_NODE_ID` (set by daemon control),
   else the config entry whose id is this machine's hostname;
2. registers that node in the registry: a new row lands `pending` until an operator approves
   it; an existing row only gets its capabilities (CPU count, memory, GPUs) refreshed, never
   its host, app_dir, roles or state. It connects only with the node's own credentials
   (`$SKELETON_NODE_DSN`, else `registry.node_dsn_file`, written by `skeleton nodes
   credentials ID --install`), so PostgreSQL itself confines it to its own row. It never uses
   `registry.dsn` / `SKELETON_DATABASE_URL` (the operator's, which may rewrite every row),
   and checks on every connection that its role is this node's own, else it refuses the DSN.
   Without credentials it serves /health only and says once, in its log, what to run;
3. sends a heartbeat every few seconds (daemon.py): last_seen, load, memory, disk, GPUs,
   running job attempts (metrics.py, running_jobs.py) and the code version (version.py);
   once a minute it prunes and down-samples its own rows of the history
   (registry/metrics_retention.py);
4. answers `GET /health` on the node's api_port, on the node's own cluster address
   (health.py): without a token just `{"status": "ok"}`, with the token the details (node id,
   pid, started_at, uptime, code version, skeleton_app version, registry state), which
   rolling restarts use; and `GET /metrics` in the Prometheus text format (prometheus.py),
   open on loopback, token required elsewhere;
5. on SIGTERM (or SIGINT) marks itself stopped and exits 0 (main.py: `run_daemon`, `main`,
   and the daemon's log file).
"""

from skeleton_app.agent.daemon import DEFAULT_INTERVAL, MAX_BACKOFF, Agent, DbState
from skeleton_app.agent.health import _saved_token
from skeleton_app.agent.identity import (
    ENV_NODE_DSN,
    ENV_NODE_HOST,
    ENV_NODE_ID,
    own_credentials,
    resolve_node,
)
from skeleton_app.agent.main import ENV_HEALTH_BIND, main, run_daemon
from skeleton_app.agent.metrics import capabilities, gpu_report, metrics, read_meminfo
from skeleton_app.agent.version import code_version

__all__ = [
    "DEFAULT_INTERVAL",
    "ENV_HEALTH_BIND",
    "ENV_NODE_DSN",
    "ENV_NODE_HOST",
    "ENV_NODE_ID",
    "MAX_BACKOFF",
    "Agent",
    "DbState",
    "_saved_token",
    "capabilities",
    "code_version",
    "gpu_report",
    "main",
    "metrics",
    "own_credentials",
    "read_meminfo",
    "resolve_node",
    "run_daemon",
]
