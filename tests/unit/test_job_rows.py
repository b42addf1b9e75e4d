"""The checks the jobs queue puts on what it reads (rows, NOTIFY payloads) and on what it
writes (file names, results), without a database (registry/job_rows.py)."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from skeleton_app.engines import DEFAULT_ENGINES
from skeleton_app.errors import UsageError
from skeleton_app.registry.job_records import JobEvent, JobSpec
from skeleton_app.registry.job_rows import (
    checked_files,
    event_from_payload,
    file_from_row,
    job_from_row,
    jsonable,
)
from skeleton_app.registry.records import FieldError

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
SPEC = JobSpec(engine=DEFAULT_ENGINES[0], input_name="a.wav", label="a.wav")


def row(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": 7, "engine": "stt", "role": "stt_batch", "spec": SPEC.as_json(),
        "state": "queued", "submitted_by": "me@here", "submitted_at": NOW, "max_attempts": 3,
        "attempts": 0, "cancel_requested": False, "lease_owner": None, "lease_until": None,
        "finished_at": None, "exit_code": None, "error": None, "result": None, "node": None,
    }
    return base | changes


def test_a_good_row_reads_back_as_the_job() -> None:
    job = job_from_row(row())
    assert (job.id, job.spec, job.state, job.result) == (7, SPEC, "queued", {})


@pytest.mark.parametrize(("changes", "field"), [
    ({"state": "sleeping"}, "state"),
    ({"spec": {"engine": {"name": "stt"}}}, "spec"),
    ({"spec": SPEC.as_json() | {"input_name": "../../etc/passwd"}}, "spec"),
    ({"spec": SPEC.as_json() | {"text": "x" * 20_000}}, "spec"),
    ({"spec": "not an object"}, "spec"),
    ({"engine": "tts"}, "engine"),  # the columns and the spec disagree
    ({"attempts": -1}, "attempts"),
    ({"max_attempts": 0}, "max_attempts"),
    ({"cancel_requested": "yes"}, "cancel_requested"),
    ({"lease_owner": "d1\x1b[2J"}, "lease_owner"),  # a terminal escape from a hostile row
    ({"result": [1, 2]}, "result"),
    ({"submitted_at": "yesterday"}, "submitted_at"),
])
def test_a_bad_row_names_its_field(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(FieldError) as info:
        job_from_row(row(**changes))
    assert info.value.field == field


def test_file_rows_are_checked() -> None:
    good = {"kind": "output", "name": "output.wav", "sha256": "a" * 64, "size": 3}
    assert file_from_row(good).name == "output.wav"
    for bad in ({"kind": "other"}, {"name": "../x"}, {"sha256": "nope"}, {"size": -1}):
        with pytest.raises(FieldError):
            file_from_row(good | bad)


def test_only_job_events_come_out_of_notify_payloads() -> None:
    good = {"id": 3, "state": "running", "engine": "stt", "attempt": 1, "cancel": True}
    assert event_from_payload(json.dumps(good)) == JobEvent(3, "running", "stt", 1, True)
    for bad in ("not json", "[]", json.dumps(good | {"id": "3"}),
                json.dumps(good | {"state": "exploded"}), json.dumps(good | {"cancel": 1}),
                json.dumps(good | {"id": True}), json.dumps(good | {"engine": "e" * 101})):
        assert event_from_payload(bad) is None


def test_written_files_and_results_are_checked() -> None:
    ((kind, name, digest, size, data),) = checked_files("output", [("o.txt", b"hi")])
    assert (kind, name, digest, size, data) == (
        "output", "o.txt", hashlib.sha256(b"hi").hexdigest(), 2, b"hi")
    with pytest.raises(UsageError, match="unsafe output file name"):
        checked_files("output", [("/etc/passwd", b"")])
    assert jsonable("result", {"seconds": 1.5, "path": "x"}) == {"seconds": 1.5, "path": "x"}
    with pytest.raises(UsageError, match="result"):
        jsonable("result", {"nan": float("nan")})
