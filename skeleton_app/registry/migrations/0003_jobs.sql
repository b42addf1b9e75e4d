-- 0003: the voice jobs queue (skeleton_app.registry.jobs; values in registry/job_records.py).
--
-- * jobs: one row per submitted job. `state` is queued|running|done|failed|cancelled, checked
--   in Python on write and on read (as in 0001: a bad row is refused by the reader, it does
--   not break every query). While running, the dispatcher holding it owns `lease_token`
--   (drawn from job_lease_seq, never reused) until `lease_until`, by the database clock:
--   every later write for that run matches `lease_token` AND state = 'running' (fencing).
-- * job_attempts: one row per run on one node, with the routing decision (`reason`) and, for
--   an attempt that may have left a process or a directory on its node, `cleaned_at`.
-- * job_files: inputs (written with the job) and outputs (written with its end); the
--   database is the one store every submitter and dispatcher shares.
-- * job_dispatchers: heartbeats; job_node_cooldown: nodes that lost a job get none for a
--   while.
-- * A trigger NOTIFYs channel `skeleton_jobs` with a small JSON payload (a JobEvent) on every
--   insert and on every change of state or cancel_requested.
-- * Node roles (0002) get no privilege on any of this: only the operator's role (the owner)
--   or a role it grants uses the queue. The REVOKEs below say so explicitly (tables and
--   sequences have no PUBLIC privileges by default; functions have EXECUTE).

CREATE SEQUENCE job_lease_seq;

CREATE TABLE jobs (
    id               bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    engine           text        NOT NULL,
    role             text        NOT NULL,
    spec             jsonb       NOT NULL,       -- JobSpec.as_json(): the engine whole, text, names
    state            text        NOT NULL DEFAULT 'queued',
    submitted_by     text        NOT NULL,
    submitted_at     timestamptz NOT NULL DEFAULT now(),
    not_before       timestamptz,
    max_attempts     integer     NOT NULL,
    attempts         integer     NOT NULL DEFAULT 0,   -- started since submit (or retry)
    cancel_requested boolean     NOT NULL DEFAULT false,
    lease_owner      text,
    lease_token      bigint,
    lease_until      timestamptz,
    finished_at      timestamptz,
    exit_code        integer,
    error            text,
    result           jsonb
);

CREATE INDEX jobs_queued ON jobs (id) WHERE state = 'queued';
CREATE INDEX jobs_leases ON jobs (lease_until) WHERE state = 'running';
CREATE INDEX jobs_state ON jobs (state, id);

CREATE TABLE job_files (
    job_id bigint NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    kind   text   NOT NULL,                     -- input|output
    name   text   NOT NULL,
    sha256 text   NOT NULL,
    size   bigint NOT NULL,
    data   bytea  NOT NULL,
    PRIMARY KEY (job_id, kind, name)
);

-- node_id is not a foreign key: a job's history outlives the node's registration.
CREATE TABLE job_attempts (
    job_id      bigint      NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    n           integer     NOT NULL,
    node_id     text        NOT NULL,
    dispatcher  text        NOT NULL,
    lease_token bigint      NOT NULL,
    reason      jsonb       NOT NULL,           -- the routing decision
    started_at  timestamptz NOT NULL DEFAULT now(),
    ended_at    timestamptz,
    outcome     text        NOT NULL DEFAULT 'running',  -- running|done|failed|cancelled|
                                                     -- lost|superseded
    exit_code   integer,
    stderr_tail text        NOT NULL DEFAULT '',
    remote_pgid integer,
    cleaned_at  timestamptz,
    PRIMARY KEY (job_id, n)
);

CREATE INDEX job_attempts_running ON job_attempts (node_id) WHERE outcome = 'running';
-- Claims read the last hour's ends (idle longest wins a tie) under the claim lock: a range
-- on ended_at, so the cost does not grow with the whole history.
CREATE INDEX job_attempts_ended ON job_attempts (ended_at, node_id);
CREATE INDEX job_attempts_unclean ON job_attempts (ended_at)
    WHERE cleaned_at IS NULL AND outcome IN ('cancelled', 'lost', 'superseded');

CREATE TABLE job_dispatchers (
    id         text        PRIMARY KEY,
    host       text,
    pid        integer,
    started_at timestamptz NOT NULL DEFAULT now(),
    seen_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE job_node_cooldown (
    node_id text        PRIMARY KEY,
    until   timestamptz NOT NULL,
    why     text        NOT NULL
);

-- The payload is a JobEvent, far below NOTIFY's 8000-byte limit: ids and short words only.
CREATE FUNCTION jobs_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('skeleton_jobs', json_build_object(
        'id', NEW.id, 'state', NEW.state, 'engine', left(NEW.engine, 100),
        'attempt', NEW.attempts, 'cancel', NEW.cancel_requested)::text);
    RETURN NEW;
END $$;

CREATE TRIGGER jobs_notify_insert AFTER INSERT ON jobs
    FOR EACH ROW EXECUTE FUNCTION jobs_notify();
-- WHEN, not `UPDATE OF state, ...`: that would fire whenever the columns are assigned, even
-- to the value they had.
CREATE TRIGGER jobs_notify_update AFTER UPDATE ON jobs
    FOR EACH ROW
    WHEN (OLD.state IS DISTINCT FROM NEW.state
          OR OLD.cancel_requested IS DISTINCT FROM NEW.cancel_requested)
    EXECUTE FUNCTION jobs_notify();

REVOKE ALL ON jobs, job_files, job_attempts, job_dispatchers, job_node_cooldown FROM PUBLIC;
REVOKE ALL ON SEQUENCE job_lease_seq FROM PUBLIC;
REVOKE ALL ON FUNCTION jobs_notify() FROM PUBLIC;
