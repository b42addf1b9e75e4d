"""The submitters' side of the jobs queue in PostgreSQL (migration 0003): submit a job with
its input files in one transaction, read jobs, attempts and files back (every row checked
again, registry/job_rows.py), cancel and retry. The dispatchers' side is job_leases.py.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from skeleton_app.errors import RegistryError, UsageError
from skeleton_app.registry.job_records import JOB_STATES, Attempt, Job, JobFile, JobSpec
from skeleton_app.registry.job_rows import (
    ATTEMPT_COLUMNS,
    FILE_KINDS,
    JOB_COLUMNS,
    attempt_from_row,
    checked_files,
    file_from_row,
    job_from_row,
    parse_spec,
)
from skeleton_app.registry.records import FieldError, check_text
from skeleton_app.registry.session import PostgresSession

log = logging.getLogger(__name__)

SELECT_JOB = f"SELECT {JOB_COLUMNS} FROM jobs j WHERE j.id = %s"
INSERT_FILE = ("INSERT INTO job_files (job_id, kind, name, sha256, size, data)"
               " VALUES (%s, %s, %s, %s, %s, %s)")


class JobTable(PostgresSession):
    """Jobs as submitters see them."""

    def _bad_row(self, what: str, exc: FieldError) -> RegistryError:
        return RegistryError(f"registry {self._target}: {what}: invalid row ({exc})")

    def _read_job(self, conn: psycopg.Connection[Any], job_id: int) -> Job | None:
        with conn.cursor(row_factory=dict_row) as cur:
            row = cur.execute(SELECT_JOB, (job_id,)).fetchone()
        if row is None:
            return None
        try:
            return job_from_row(row)
        except FieldError as exc:
            raise self._bad_row(f"job {job_id}", exc) from None

    def submit(self, spec: JobSpec, inputs: Sequence[tuple[str, bytes]], *,
               submitted_by: str, max_attempts: int) -> Job:
        """Insert a queued job and its input files (name, data) in one transaction."""
        raw = spec.as_json()
        try:
            parse_spec(raw)  # what could not be read back is never written
            check_text("submitted_by", submitted_by, limit=200)
        except FieldError as exc:
            raise UsageError(f"cannot queue the job: {exc}") from None
        if not isinstance(max_attempts, int) or max_attempts < 1:
            raise UsageError(f"max_attempts must be at least 1, got {max_attempts!r}")
        files = checked_files("input", inputs)
        with self._session("cannot queue the job") as conn, conn.transaction():
            row = conn.execute(
                "INSERT INTO jobs (engine, role, spec, submitted_by, max_attempts)"
                " VALUES (%s, %s, %s, %s, %s) RETURNING id",
                (spec.engine.name, spec.engine.role, Jsonb(raw), submitted_by, max_attempts),
            ).fetchone()
            assert row is not None  # INSERT ... RETURNING always returns the row
            job_id = int(row[0])
            with conn.cursor() as cur:
                cur.executemany(INSERT_FILE, [(job_id, *f) for f in files])
            job = self._read_job(conn, job_id)
        assert job is not None  # written just now, in this transaction
        return job

    def get(self, job_id: int) -> Job | None:
        with self._session(f"cannot read job {job_id}") as conn:
            return self._read_job(conn, job_id)

    def list(self, *, states: Sequence[str] = (), limit: int = 100) -> tuple[Job, ...]:
        """Newest first; a bad row is skipped with a warning (it must not hide the rest)."""
        unknown = [s for s in states if s not in JOB_STATES]
        if unknown:
            raise UsageError(f"unknown job state {unknown[0]!r}: expected one of"
                             f" {', '.join(JOB_STATES)}")
        query = f"SELECT {JOB_COLUMNS} FROM jobs j"
        params: list[Any] = []
        if states:
            query += " WHERE j.state = ANY(%s)"
            params.append(list(states))
        query += " ORDER BY j.id DESC LIMIT %s"
        params.append(max(1, limit))
        with self._session("cannot list jobs") as conn, conn.cursor(row_factory=dict_row) as cur:
            rows = cur.execute(query, params).fetchall()
        jobs: list[Job] = []
        for row in rows:
            try:
                jobs.append(job_from_row(row))
            except FieldError as exc:
                log.warning("registry %s: job %s skipped: invalid row (%s)",
                            self._target, row.get("id"), exc)
        return tuple(jobs)

    def attempts(self, job_id: int) -> tuple[Attempt, ...]:
        with self._session(f"cannot read the attempts of job {job_id}") as conn, \
                conn.cursor(row_factory=dict_row) as cur:
            rows = cur.execute(f"SELECT {ATTEMPT_COLUMNS} FROM job_attempts WHERE job_id = %s"
                               " ORDER BY n", (job_id,)).fetchall()
        try:
            return tuple(attempt_from_row(r) for r in rows)
        except FieldError as exc:
            raise self._bad_row(f"the attempts of job {job_id}", exc) from None

    def files(self, job_id: int) -> tuple[JobFile, ...]:
        with self._session(f"cannot read the files of job {job_id}") as conn, \
                conn.cursor(row_factory=dict_row) as cur:
            rows = cur.execute("SELECT kind, name, sha256, size FROM job_files"
                               " WHERE job_id = %s ORDER BY kind, name", (job_id,)).fetchall()
        try:
            return tuple(file_from_row(r) for r in rows)
        except FieldError as exc:
            raise self._bad_row(f"the files of job {job_id}", exc) from None

    def file_data(self, job_id: int, kind: str, name: str) -> bytes | None:
        """The file's bytes, checked against its stored size and sha256."""
        if kind not in FILE_KINDS:
            raise UsageError(f"unknown file kind {kind!r}: expected input or output")
        with self._session(f"cannot read a file of job {job_id}") as conn, \
                conn.cursor(row_factory=dict_row) as cur:
            row = cur.execute("SELECT kind, name, sha256, size, data FROM job_files"
                              " WHERE job_id = %s AND kind = %s AND name = %s",
                              (job_id, kind, name)).fetchone()
        if row is None:
            return None
        what = f"{kind} file {name} of job {job_id}"
        try:
            meta = file_from_row(row)
        except FieldError as exc:
            raise self._bad_row(what, exc) from None
        data = bytes(row["data"])
        if len(data) != meta.size or hashlib.sha256(data).hexdigest() != meta.sha256:
            raise RegistryError(f"registry {self._target}: {what}: the data does not match"
                                " its stored size and sha256")
        return data

    def cancel(self, job_id: int) -> Job | None:
        """Queued: cancelled now. Running: cancel_requested (the owner kills it); running
        with an expired lease (no dispatcher owns it): cancelled now, its attempt left for
        the clean-up sweep to kill on its node. Final: as is."""
        with self._session(f"cannot cancel job {job_id}") as conn, conn.transaction():
            orphan = conn.execute(
                "UPDATE jobs SET cancel_requested = true, state = 'cancelled',"
                " finished_at = statement_timestamp(),"
                " error = 'cancelled (no dispatcher held its lease)',"
                " lease_owner = NULL, lease_token = NULL, lease_until = NULL"
                " WHERE id = %s AND state = 'running' AND lease_until < statement_timestamp()",
                (job_id,))
            if orphan.rowcount:
                conn.execute(
                    "UPDATE job_attempts SET outcome = 'cancelled',"
                    " ended_at = statement_timestamp() WHERE job_id = %s AND outcome = 'running'",
                    (job_id,))
                return self._read_job(conn, job_id)
            conn.execute(
                "UPDATE jobs SET cancel_requested = true,"
                " state = CASE WHEN state = 'queued' THEN 'cancelled' ELSE state END,"
                " finished_at = CASE WHEN state = 'queued' THEN now() ELSE finished_at END,"
                " error = CASE WHEN state = 'queued' THEN 'cancelled before it started'"
                "   ELSE error END"
                " WHERE id = %s AND state IN ('queued', 'running')", (job_id,))
            return self._read_job(conn, job_id)

    def retry(self, job_id: int) -> Job | None:
        """Failed or cancelled: queued again with attempts reset (the attempts' history and
        numbering stay); otherwise unchanged."""
        with self._session(f"cannot retry job {job_id}") as conn, conn.transaction():
            cur = conn.execute(
                "UPDATE jobs SET state = 'queued', attempts = 0, cancel_requested = false,"
                " not_before = NULL, lease_owner = NULL, lease_token = NULL,"
                " lease_until = NULL, finished_at = NULL, exit_code = NULL, error = NULL,"
                " result = NULL WHERE id = %s AND state IN ('failed', 'cancelled')", (job_id,))
            if cur.rowcount:
                conn.execute("DELETE FROM job_files WHERE job_id = %s AND kind = 'output'",
                             (job_id,))
            return self._read_job(conn, job_id)

