"""The dispatchers' side of the jobs queue in PostgreSQL: claims, fenced leases, the end of a
run, node loss, orphan clean-up and dispatcher heartbeats.

Rules every statement here keeps:
- Time is the database's: leases are `statement_timestamp() + lease`, never a client clock.
  statement_timestamp(), not now(): now() is the transaction's start, which for a claim is
  before it waited for the claim lock (a lease would start short, and an attempt could seem
  to start before the one it replaced ended).
- Fencing: a claim draws a new token from job_lease_seq; every later write for that run
  matches `lease_token` AND state = 'running', so a dispatcher whose lease was taken over
  writes nothing and is told so (False / None).
- Claims are serialised across dispatchers by one transaction-scoped advisory lock, so the
  per-node running counts the router sees (Load) include every claim committed before.
  `FOR UPDATE SKIP LOCKED` keeps a claim from waiting on a job a submitter is cancelling.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Literal

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from skeleton_app.errors import UsageError
from skeleton_app.registry.connection import DEFAULT_CONNECT_TIMEOUT
from skeleton_app.registry.job_records import (
    FINAL_STATES,
    Claim,
    Cleanup,
    JobState,
    Load,
    Router,
)
from skeleton_app.registry.job_rows import (
    ATTEMPT_COLUMNS,
    JOB_COLUMNS,
    MAX_ERROR,
    attempt_from_row,
    checked_files,
    clean_text,
    cleanup_from_row,
    job_from_row,
    jsonable,
)
from skeleton_app.registry.job_table import INSERT_FILE, JobTable
from skeleton_app.registry.records import FieldError, NodeDefaults, check_text
from skeleton_app.registry.session import PostgresSession

log = logging.getLogger(__name__)

# pg_advisory_xact_lock key serialising claims: the first 8 bytes of sha256("skeleton_app.jobs
# claim") as a signed bigint. Any constant works if nothing else uses it.
CLAIM_LOCK_KEY = 0x5B2E_90C4_1D7A_36F8
STDERR_TAIL = 64 * 1024  # characters of an attempt's stderr kept at most (the caller trims)

# Expired leases, taken over: the running attempt is superseded, and the job queued again,
# or cancelled (a cancel was asked for) or failed (no attempt left).
_TAKE_OVER_SQL = """
WITH expired AS (
    SELECT id FROM jobs
    WHERE state = 'running' AND lease_until < statement_timestamp()
    ORDER BY id LIMIT %(limit)s FOR UPDATE SKIP LOCKED
), ended AS (
    UPDATE job_attempts a SET outcome = 'superseded', ended_at = statement_timestamp()
    FROM expired e WHERE a.job_id = e.id AND a.outcome = 'running'
    RETURNING a.job_id
)
UPDATE jobs j SET
    state = CASE WHEN j.cancel_requested THEN 'cancelled'
                 WHEN j.attempts >= j.max_attempts THEN 'failed'
                 ELSE 'queued' END,
    finished_at = CASE WHEN j.cancel_requested OR j.attempts >= j.max_attempts
                       THEN statement_timestamp() END,
    error = CASE WHEN j.cancel_requested THEN 'cancelled (its dispatcher had stopped)'
                 WHEN j.attempts >= j.max_attempts
                 THEN format('its dispatcher stopped renewing the lease of attempt %%s of %%s',
                             j.attempts, j.max_attempts)
                 END,
    lease_owner = NULL, lease_token = NULL, lease_until = NULL
FROM expired e WHERE j.id = e.id
RETURNING j.id, j.state
"""

_CLAIMABLE_SQL = (
    f"SELECT {JOB_COLUMNS} FROM jobs j"
    " WHERE j.state = 'queued' AND coalesce(j.not_before, statement_timestamp())"
    " <= statement_timestamp() AND j.id > %(after)s"
    " AND (%(only)s::bigint[] IS NULL OR j.id = ANY(%(only)s::bigint[]))"
    " ORDER BY j.id LIMIT %(limit)s FOR UPDATE OF j SKIP LOCKED"
)
# Pages of `limit` queued jobs read per claim (under the claim lock): jobs that no node can
# take now (their role's nodes are all busy or down) never hide the ones behind them.
MAX_PAGES = 8

_FENCED_SQL = ("SELECT attempts, max_attempts, cancel_requested FROM jobs"
               " WHERE id = %s AND lease_token = %s AND state = 'running' FOR UPDATE")


_LOAD_SQL = """
SELECT 'now', NULL, NULL::int, statement_timestamp(), NULL
UNION ALL
SELECT 'running', node_id, count(*)::int, NULL, NULL FROM job_attempts
WHERE outcome = 'running' GROUP BY node_id
UNION ALL
SELECT 'cooldown', node_id, NULL, until, why FROM job_node_cooldown
WHERE until > statement_timestamp()
UNION ALL
SELECT 'idle', node_id, NULL, max(ended_at), NULL FROM job_attempts
WHERE ended_at > statement_timestamp() - interval '1 hour' GROUP BY node_id
"""


def _seconds(name: str, value: float, *, zero: bool = False) -> float:
    if (not isinstance(value, int | float) or isinstance(value, bool)
            or not (value >= 0 if zero else value > 0) or not value < 86_400 * 365):
        raise UsageError(f"{name} must be a {'non-negative' if zero else 'positive'} number"
                         f" of seconds, got {value!r}")
    return float(value)


class JobLeases(JobTable):
    """Jobs as dispatchers see them (a class of ~270 lines: claim is most of it).

    The running attempts' own writes (started, renew, finish, lose) go through a second
    connection, so they do not queue behind the claims (one connection runs one statement
    at a time). Which connection writes changes nothing for fencing: every such write
    matches its lease token in its own transaction."""

    def __init__(self, dsn: str, *, defaults: NodeDefaults,
                 connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
                 application_name: str = "skeleton"):
        super().__init__(dsn, defaults=defaults, connect_timeout=connect_timeout,
                         application_name=application_name)
        self._ends = PostgresSession(dsn, defaults=defaults, connect_timeout=connect_timeout,
                                     application_name=application_name)

    def close(self) -> None:
        self._ends.close()
        super().close()

    # -- claims

    def _load(self, conn: psycopg.Connection[Any]) -> Load:
        """Running attempts, cool-downs and idle times per node, by the database (one
        statement: a claim holds the claim lock while it runs)."""
        now: datetime | None = None
        running: dict[str, int] = {}
        cooldown: dict[str, tuple[datetime, str]] = {}
        idle: dict[str, datetime] = {}
        for kind, node, count, at, why in conn.execute(_LOAD_SQL):
            if kind == "now" and isinstance(at, datetime):
                now = at
            elif not isinstance(node, str):
                continue
            elif kind == "running":
                running[node] = int(count)
            elif kind == "cooldown" and isinstance(at, datetime):
                cooldown[node] = (at, str(why)[:200])
            elif kind == "idle" and isinstance(at, datetime):
                idle[node] = at
        assert now is not None  # the query's first part has no FROM: always its row
        return Load(now=now, running=running, cooldown=cooldown, idle_since=idle)

    def claim(self, dispatcher: str, *, lease: float, route: Router,
              limit: int = 16, only: Sequence[int] | None = None) -> Claim | None:
        """Take the oldest claimable job that `route` can place (see JobStore.claim). A row
        that does not read back as a job is failed, never run, and does not block the rest."""
        claims = self.claim_many(dispatcher, lease=lease, route=route, most=1, limit=limit,
                                 only=only)
        return claims[0] if claims else None

    def claim_many(self, dispatcher: str, *, lease: float, route: Router, most: int,
                   limit: int = 16, only: Sequence[int] | None = None) -> tuple[Claim, ...]:
        """Up to `most` claims in one transaction (see JobStore.claim_many)."""
        check_text("dispatcher", dispatcher, limit=200)
        seconds = _seconds("lease", lease)
        claims: list[Claim] = []
        limit = max(1, limit, most)
        with self._session("cannot claim a job") as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (CLAIM_LOCK_KEY,))
            for job_id, state in conn.execute(_TAKE_OVER_SQL, {"limit": limit}):
                log.info("job %s: lease expired, taken over: now %s", job_id, state)
            ids = None if only is None else [int(i) for i in only]
            load: Load | None = None
            after = 0
            unplaced: set[str] = set()  # engines no node can take now: not asked again
            for _page in range(MAX_PAGES):
                with conn.cursor(row_factory=dict_row) as cur:
                    rows = cur.execute(_CLAIMABLE_SQL, {"after": after, "only": ids,
                                                        "limit": limit}).fetchall()
                if not rows:
                    break
                after = int(rows[-1]["id"])
                if load is None:
                    load = self._load(conn)
                load = self._place(conn, rows, load, claims, unplaced, most, dispatcher,
                                   seconds, route)
                if len(claims) >= most or len(rows) < limit:
                    break
        return tuple(claims)

    def _place(self, conn: psycopg.Connection[Any], rows: Sequence[Mapping[str, Any]],
               load: Load, claims: list[Claim], unplaced: set[str], most: int,
               dispatcher: str, seconds: float, route: Router) -> Load:
        """Route one page of queued rows; the Load with the new claims counted."""
        for row in rows:
            if len(claims) >= most:
                break
            try:
                job = job_from_row(row)
            except FieldError as exc:
                self._fail_bad_row(conn, row.get("id"), exc)
                continue
            key = json.dumps(job.spec.engine.as_dict(), sort_keys=True)
            if key in unplaced:
                continue
            chosen = route(job, load)
            if chosen is None:
                unplaced.add(key)  # the Load only fills up within one claim
                continue
            claims.append(self._start_attempt(conn, job.id, dispatcher, seconds,
                                              chosen.node_id, chosen.reason))
            # The next job is routed with this one counted on its node.
            running = dict(load.running)
            running[chosen.node_id] = running.get(chosen.node_id, 0) + 1
            load = dataclasses.replace(load, running=running)
        return load

    def _fail_bad_row(self, conn: psycopg.Connection[Any], job_id: object,
                      exc: FieldError) -> None:
        log.warning("registry %s: job %s failed: invalid row (%s)", self._target, job_id, exc)
        conn.execute("UPDATE jobs SET state = 'failed', finished_at = statement_timestamp(),"
                     " error = %s WHERE id = %s",
                     (clean_text(f"invalid job row: {exc}", MAX_ERROR), job_id))

    def _start_attempt(self, conn: psycopg.Connection[Any], job_id: int, dispatcher: str,
                       lease: float, node_id: str, reason: Mapping[str, Any]) -> Claim:
        node_id = check_text("node_id", node_id, limit=200)
        stored_reason = jsonable("reason", reason)
        row = conn.execute(
            "UPDATE jobs SET state = 'running', lease_owner = %s,"
            " lease_token = nextval('job_lease_seq'),"
            " lease_until = statement_timestamp() + make_interval(secs => %s),"
            " attempts = attempts + 1 WHERE id = %s RETURNING lease_token",
            (dispatcher, lease, job_id)).fetchone()
        assert row is not None  # the row is locked by this transaction (FOR UPDATE)
        token = int(row[0])
        # Numbered after every earlier attempt: a retried job keeps its history.
        with conn.cursor(row_factory=dict_row) as cur:
            attempt_row = cur.execute(
                "INSERT INTO job_attempts (job_id, n, node_id, dispatcher, lease_token, reason,"
                " started_at) SELECT %s, coalesce(max(n), 0) + 1, %s, %s, %s, %s,"
                " statement_timestamp() FROM job_attempts WHERE job_id = %s"
                f" RETURNING {ATTEMPT_COLUMNS}",
                (job_id, node_id, dispatcher, token, Jsonb(stored_reason), job_id)).fetchone()
            job_row = cur.execute(f"SELECT {JOB_COLUMNS} FROM jobs j WHERE j.id = %s",
                                  (job_id,)).fetchone()
        assert attempt_row is not None and job_row is not None  # written just now
        try:
            return Claim(job=job_from_row(job_row), attempt=attempt_from_row(attempt_row),
                         token=token)
        except FieldError as exc:  # read back what this transaction wrote: cannot be bad
            raise self._bad_row(f"job {job_id}", exc) from None

    # -- the run's fenced writes

    def renew(self, job_id: int, token: int, *, lease: float) -> bool:
        seconds = _seconds("lease", lease)
        with self._ends._session(f"cannot renew the lease of job {job_id}") as conn:
            cur = conn.execute(
                "UPDATE jobs SET lease_until = statement_timestamp() + make_interval(secs => %s)"
                " WHERE id = %s AND lease_token = %s AND state = 'running'",
                (seconds, job_id, token))
            return cur.rowcount == 1

    def started(self, job_id: int, token: int, *, remote_pgid: int | None) -> bool:
        """Record the attempt's process group; False if the lease is no longer ours. The pgid
        is kept on this token's own attempt even then (once): the orphan sweep needs it to
        kill a process whose lease was taken over."""
        with self._ends._session(f"cannot record the start of job {job_id}") as conn, \
                conn.transaction():
            ours = conn.execute(_FENCED_SQL, (job_id, token)).fetchone()
            conn.execute("UPDATE job_attempts SET remote_pgid = %s WHERE job_id = %s"
                         " AND lease_token = %s AND remote_pgid IS NULL",
                         (remote_pgid, job_id, token))
            return ours is not None

    def finish(self, job_id: int, token: int, *,
               state: Literal["done", "failed", "cancelled"], exit_code: int | None,
               error: str | None, stderr_tail: str, result: Mapping[str, Any],
               outputs: Sequence[tuple[str, bytes]] = (),
               remote_pgid: int | None = None, cleaned: bool = False) -> bool:
        """End the job and its running attempt, outputs stored in the same transaction.
        False: the lease is not ours any more (nothing written)."""
        if state not in FINAL_STATES:
            raise UsageError(f"cannot finish a job as {state!r}: expected one of"
                             f" {', '.join(FINAL_STATES)}")
        files = checked_files("output", outputs)
        stored = jsonable("result", result)
        with self._ends._session(f"cannot record the end of job {job_id}") as conn, \
                conn.transaction():
            cur = conn.execute(
                "UPDATE jobs SET state = %s, finished_at = statement_timestamp(),"
                " exit_code = %s, error = %s, result = %s, lease_until = NULL"
                " WHERE id = %s AND lease_token = %s AND state = 'running'",
                (state, exit_code, clean_text(error, MAX_ERROR), Jsonb(stored), job_id, token))
            if cur.rowcount != 1:
                return False
            conn.execute(
                "UPDATE job_attempts SET outcome = %s, ended_at = statement_timestamp(),"
                " exit_code = %s, stderr_tail = %s,"
                " remote_pgid = coalesce(remote_pgid, %s),"
                " cleaned_at = CASE WHEN %s THEN statement_timestamp() END"
                " WHERE job_id = %s AND lease_token = %s AND outcome = 'running'",
                (state, exit_code, clean_text(stderr_tail, STDERR_TAIL) or "", remote_pgid,
                 cleaned, job_id, token))
            with conn.cursor() as files_cur:
                files_cur.executemany(INSERT_FILE, [(job_id, *f) for f in files])
            return True

    def lose(self, job_id: int, token: int, *, why: str, cooldown: float) -> JobState | None:
        """The node is gone: attempt `lost`, the node cooled down, the job queued again
        (cancelled if a cancel was asked for; failed when max_attempts is reached)."""
        seconds = _seconds("cooldown", cooldown, zero=True)  # 0: no cool-down
        why = clean_text(why, 500) or "lost"
        with self._ends._session(f"cannot record the loss of job {job_id}") as conn, \
                conn.transaction():
            row = conn.execute(_FENCED_SQL, (job_id, token)).fetchone()
            if row is None:
                return None
            attempts, max_attempts, cancel_requested = row
            lost = conn.execute(
                "UPDATE job_attempts SET outcome = 'lost', ended_at = statement_timestamp()"
                " WHERE job_id = %s AND lease_token = %s AND outcome = 'running'"
                " RETURNING node_id", (job_id, token)).fetchone()
            node = str(lost[0]) if lost else "?"
            if lost and seconds > 0:
                conn.execute(
                    "INSERT INTO job_node_cooldown (node_id, until, why) VALUES"
                    " (%s, statement_timestamp() + make_interval(secs => %s), %s)"
                    " ON CONFLICT (node_id) DO UPDATE SET"
                    " until = greatest(job_node_cooldown.until, EXCLUDED.until),"
                    " why = EXCLUDED.why",
                    (node, seconds, clean_text(f"lost job {job_id}: {why}", 200)))
            state: JobState
            error: str | None = None
            if cancel_requested:
                state, error = "cancelled", f"cancelled (lost on {node}: {why})"
            elif attempts >= max_attempts:
                state = "failed"
                error = f"lost on {node}: {why} (attempt {attempts} of {max_attempts})"
            else:
                state = "queued"
            conn.execute(
                "UPDATE jobs SET state = %s, error = %s, lease_owner = NULL,"
                " lease_token = NULL, lease_until = NULL,"
                " finished_at = CASE WHEN %s THEN statement_timestamp() END WHERE id = %s",
                (state, clean_text(error, MAX_ERROR), state != "queued", job_id))
            return state

    # -- orphans and dispatchers

    def cleanups(self, *, limit: int = 50) -> tuple[Cleanup, ...]:
        """Ended attempts whose node may still hold their process or directory."""
        with self._session("cannot list attempts to clean up") as conn, \
                conn.cursor(row_factory=dict_row) as cur:
            rows = cur.execute(
                "SELECT job_id, n, node_id, remote_pgid FROM job_attempts"
                " WHERE cleaned_at IS NULL"
                " AND outcome IN ('cancelled', 'lost', 'superseded', 'failed', 'done')"
                " ORDER BY ended_at, job_id, n LIMIT %s", (max(1, limit),)).fetchall()
        found: list[Cleanup] = []
        for row in rows:
            try:
                found.append(cleanup_from_row(row))
            except FieldError as exc:
                log.warning("registry %s: attempt %s/%s skipped: invalid row (%s)",
                            self._target, row.get("job_id"), row.get("n"), exc)
        return tuple(found)

    def cleaned(self, job_id: int, n: int) -> None:
        with self._session(f"cannot record the clean-up of job {job_id}") as conn:
            conn.execute("UPDATE job_attempts SET cleaned_at = statement_timestamp()"
                         " WHERE job_id = %s AND n = %s AND cleaned_at IS NULL", (job_id, n))

    def dispatcher_seen(self, dispatcher: str, *, host: str, pid: int) -> None:
        check_text("dispatcher", dispatcher, limit=200)
        with self._session("cannot record the dispatcher's heartbeat") as conn:
            conn.execute(
                "INSERT INTO job_dispatchers (id, host, pid, started_at, seen_at)"
                " VALUES (%s, %s, %s, statement_timestamp(), statement_timestamp())"
                " ON CONFLICT (id) DO UPDATE SET host = EXCLUDED.host, pid = EXCLUDED.pid,"
                " seen_at = EXCLUDED.seen_at", (dispatcher, clean_text(host, 255), pid))

    def dispatcher_gone(self, dispatcher: str) -> None:
        with self._session("cannot record the dispatcher's stop") as conn:
            conn.execute("DELETE FROM job_dispatchers WHERE id = %s", (dispatcher,))

    def live_dispatchers(self, *, within: float) -> tuple[str, ...]:
        seconds = _seconds("within", within)
        with self._session("cannot list dispatchers") as conn:
            rows = conn.execute(
                "SELECT id FROM job_dispatchers"
                " WHERE seen_at >= statement_timestamp() - make_interval(secs => %s)"
                " ORDER BY id", (seconds,)).fetchall()
        return tuple(r[0] for r in rows if isinstance(r[0], str) and r[0].isprintable())
