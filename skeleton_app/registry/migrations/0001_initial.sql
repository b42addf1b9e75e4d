-- 0001: the node registry and the run journal.
-- Applied by skeleton_app.registry.init_schema inside one transaction under an advisory lock,
-- which also records the version in schema_version. Never edit a released migration: add the
-- next NNNN_*.sql file instead.
--
-- No CHECK constraints on node fields: rows are validated in Python on write AND on read
-- (skeleton_app.registry), with the same rules as config.yaml, so that an invalid row written
-- by anything else is skipped with a warning instead of breaking every query.

CREATE TABLE nodes (
    id            text        PRIMARY KEY,
    name          text,
    host          text        NOT NULL,
    ssh_port      integer,                      -- NULL: the reader's ssh.port
    ssh_user      text,                         -- NULL: the reader's ssh.user
    api_port      integer,                      -- NULL: the reader's daemon.api_port
    roles         text[]      NOT NULL DEFAULT '{}',
    labels        jsonb       NOT NULL DEFAULT '{}',
    app_dir       text,                         -- NULL: the reader's app.dir
    capabilities  jsonb       NOT NULL DEFAULT '{}',
    enabled       boolean     NOT NULL DEFAULT true,
    registered_at timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    last_seen     timestamptz,
    daemon_state  text,
    daemon_pid    integer,
    started_at    timestamptz,
    code_version  text,
    metrics       jsonb       NOT NULL DEFAULT '{}',   -- the daemon's last heartbeat
    last_status   jsonb,                             -- the controller's last status probe
    status_at     timestamptz
);

CREATE TABLE runs (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    started_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    who         text        NOT NULL,
    operation   text        NOT NULL,
    arguments   jsonb       NOT NULL DEFAULT '{}',
    selection   text[]      NOT NULL DEFAULT '{}',
    exit_code   integer,
    duration    double precision
);

CREATE INDEX runs_started_at ON runs (started_at DESC);

-- node_id is not a foreign key: the history of a run outlives the node's registration.
CREATE TABLE run_nodes (
    run_id      bigint      NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    node_id     text        NOT NULL,
    exit_code   integer,
    error_kind  text,
    error       text,
    duration    double precision,
    stdout_tail text        NOT NULL DEFAULT '',
    stderr_tail text        NOT NULL DEFAULT '',
    PRIMARY KEY (run_id, node_id)
);
