"""Reading the jobs queue's rows (migration 0003) into its values (job_records.py): the
column lists the queries select, and one check per record. Rows are untrusted input (anything
holding a write grant could have written them): every field is checked again here, and a bad
row raises FieldError naming the field. Also the checks on what a caller writes.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, cast

from skeleton_app.errors import ConfigError, UsageError
from skeleton_app.nodes import ROLE_RE
from skeleton_app.registry.job_records import (
    ATTEMPT_OUTCOMES,
    JOB_STATES,
    AttemptOutcome,
    Cleanup,
    Job,
    JobEvent,
    JobFile,
    JobSpec,
    JobState,
    safe_file_name,
)
from skeleton_app.registry.job_records import Attempt as AttemptRecord
from skeleton_app.registry.records import FieldError, check_json_object, check_text, shown

# The node of the latest attempt comes with every job row.
JOB_COLUMNS = (
    "j.id, j.engine, j.role, j.spec, j.state, j.submitted_by, j.submitted_at, j.max_attempts,"
    " j.attempts, j.cancel_requested, j.lease_owner, j.lease_until, j.finished_at,"
    " j.exit_code, j.error, j.result,"
    " (SELECT a.node_id FROM job_attempts a WHERE a.job_id = j.id ORDER BY a.n DESC LIMIT 1)"
    " AS node"
)
ATTEMPT_COLUMNS = (
    "job_id, n, node_id, dispatcher, lease_token, reason, started_at, ended_at, outcome,"
    " exit_code, stderr_tail, remote_pgid, cleaned_at"
)
FILE_KINDS = ("input", "output")
MAX_ERROR = 4000  # characters of a job's error kept
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_ID_TEXT = 200  # dispatcher ids, node ids, submitters


def _int(name: str, value: object, *, minimum: int = 0) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise FieldError(name, f"expected an integer >= {minimum}, got {shown(value)}")
    return value


def _opt_int(name: str, value: object) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise FieldError(name, f"expected an integer, got {shown(value)}")
    return value


def _time(name: str, value: object) -> datetime:
    if not isinstance(value, datetime):
        raise FieldError(name, f"expected a timestamp, got {shown(value)}")
    return value


def _opt_time(name: str, value: object) -> datetime | None:
    return None if value is None else _time(name, value)


def _opt_text(name: str, value: object, *, limit: int) -> str | None:
    return None if value is None else check_text(name, value, limit=limit)


def _free_text(name: str, value: object, *, limit: int) -> str:
    """An error message or a stderr tail: any characters (shown escaped by the views)."""
    if not isinstance(value, str):
        raise FieldError(name, f"expected a string, got {type(value).__name__}")
    return value[-limit:]


def parse_spec(raw: object) -> JobSpec:
    if not isinstance(raw, Mapping):
        raise FieldError("spec", f"expected a JSON object, got {type(raw).__name__}")
    try:
        return JobSpec.from_json(raw)
    except (ConfigError, ValueError, KeyError, TypeError) as exc:
        raise FieldError("spec", str(exc) or type(exc).__name__) from None


def job_from_row(row: Mapping[str, Any]) -> Job:
    """A `jobs` row (JOB_COLUMNS) as a Job; FieldError names the first bad field."""
    state = row["state"]
    if state not in JOB_STATES:
        raise FieldError("state", f"unknown state {shown(state)}")
    spec = parse_spec(row["spec"])
    engine = check_text("engine", row["engine"], limit=_ID_TEXT)
    role = check_text("role", row["role"], limit=_ID_TEXT)
    if (engine, role) != (spec.engine.name, spec.engine.role):
        raise FieldError("engine", f"{shown(engine)}/{shown(role)} differs from the spec's")
    cancel = row["cancel_requested"]
    if not isinstance(cancel, bool):
        raise FieldError("cancel_requested", f"expected a boolean, got {shown(cancel)}")
    result = row["result"]
    return Job(
        id=_int("id", row["id"], minimum=1),
        engine=engine,
        role=role,
        spec=spec,
        state=cast(JobState, state),
        submitted_by=check_text("submitted_by", row["submitted_by"], limit=_ID_TEXT),
        submitted_at=_time("submitted_at", row["submitted_at"]),
        max_attempts=_int("max_attempts", row["max_attempts"], minimum=1),
        attempts=_int("attempts", row["attempts"]),
        cancel_requested=cancel,
        lease_owner=_opt_text("lease_owner", row["lease_owner"], limit=_ID_TEXT),
        lease_until=_opt_time("lease_until", row["lease_until"]),
        finished_at=_opt_time("finished_at", row["finished_at"]),
        exit_code=_opt_int("exit_code", row["exit_code"]),
        error=None if row["error"] is None else _free_text("error", row["error"],
                                                            limit=MAX_ERROR),
        node=_opt_text("node", row["node"], limit=_ID_TEXT),
        result={} if result is None else check_json_object("result", result),
    )


def attempt_from_row(row: Mapping[str, Any]) -> AttemptRecord:
    outcome = row["outcome"]
    if outcome not in ATTEMPT_OUTCOMES:
        raise FieldError("outcome", f"unknown outcome {shown(outcome)}")
    return AttemptRecord(
        job_id=_int("job_id", row["job_id"], minimum=1),
        n=_int("n", row["n"], minimum=1),
        node_id=check_text("node_id", row["node_id"], limit=_ID_TEXT),
        dispatcher=check_text("dispatcher", row["dispatcher"], limit=_ID_TEXT),
        lease_token=_int("lease_token", row["lease_token"], minimum=1),
        reason=check_json_object("reason", row["reason"]),
        started_at=_time("started_at", row["started_at"]),
        ended_at=_opt_time("ended_at", row["ended_at"]),
        outcome=cast(AttemptOutcome, outcome),
        exit_code=_opt_int("exit_code", row["exit_code"]),
        stderr_tail=_free_text("stderr_tail", row["stderr_tail"], limit=64 * 1024),
        remote_pgid=_opt_int("remote_pgid", row["remote_pgid"]),
        cleaned_at=_opt_time("cleaned_at", row["cleaned_at"]),
    )


def file_from_row(row: Mapping[str, Any]) -> JobFile:
    kind, name, digest = row["kind"], row["name"], row["sha256"]
    if kind not in FILE_KINDS:
        raise FieldError("kind", f"unknown file kind {shown(kind)}")
    if not isinstance(name, str) or safe_file_name(name) != name:
        raise FieldError("name", f"unsafe file name {shown(name)}")
    if not isinstance(digest, str) or not _SHA256_RE.match(digest):
        raise FieldError("sha256", f"not a sha256 {shown(digest)}")
    return JobFile(kind=kind, name=name, sha256=digest, size=_int("size", row["size"]))


def cleanup_from_row(row: Mapping[str, Any]) -> Cleanup:
    return Cleanup(job_id=_int("job_id", row["job_id"], minimum=1),
                   n=_int("n", row["n"], minimum=1),
                   node_id=check_text("node_id", row["node_id"], limit=_ID_TEXT),
                   remote_pgid=_opt_int("remote_pgid", row["remote_pgid"]))


def event_from_payload(payload: str) -> JobEvent | None:
    """A NOTIFY payload (anyone may NOTIFY on the channel): None unless it is a JobEvent."""
    try:
        raw = json.loads(payload)
    except ValueError:
        return None
    if not isinstance(raw, dict):
        return None
    job_id, state, engine = raw.get("id"), raw.get("state"), raw.get("engine")
    attempt, cancel = raw.get("attempt"), raw.get("cancel")
    if (not isinstance(job_id, int) or isinstance(job_id, bool) or job_id < 1
            or state not in JOB_STATES or not isinstance(engine, str)
            or not ROLE_RE.match(engine)
            or not isinstance(attempt, int) or isinstance(attempt, bool) or attempt < 0
            or not isinstance(cancel, bool)):
        return None
    return JobEvent(id=job_id, state=cast(JobState, state), engine=engine, attempt=attempt,
                    cancel=cancel)


# -- what callers write


def checked_files(kind: str, files: Sequence[tuple[str, bytes]]
                  ) -> list[tuple[str, str, str, int, bytes]]:
    """(kind, name, sha256, size, data) rows for job_files; UsageError on a bad name."""
    rows: list[tuple[str, str, str, int, bytes]] = []
    seen: set[str] = set()
    for name, data in files:
        if not isinstance(name, str) or safe_file_name(name) != name:
            raise UsageError(f"unsafe {kind} file name {shown(name)}: use safe_file_name()")
        if name in seen:
            raise UsageError(f"{kind} file {name} given twice")
        seen.add(name)
        blob = bytes(data)
        rows.append((kind, name, hashlib.sha256(blob).hexdigest(), len(blob), blob))
    return rows


def jsonable(name: str, value: Mapping[str, Any]) -> dict[str, Any]:
    """A result or routing reason as it will be stored: a JSON object; UsageError if not."""
    try:
        return check_json_object(name, json.loads(json.dumps(dict(value), allow_nan=False)))
    except (TypeError, ValueError) as exc:
        raise UsageError(f"job {name}: {exc}") from None


def clean_text(value: str | None, limit: int) -> str | None:
    """Text bound for a text column: PostgreSQL text cannot hold NUL; the tail is kept."""
    return None if value is None else value.replace("\0", "\ufffd")[-limit:]
