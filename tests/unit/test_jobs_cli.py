"""`skeleton jobs ...` over a fake queue facade (`app.commands.jobs_facade` replaced): what
the front end parses and refuses before anything is queued, what it prints, the exit codes,
the `--json` shapes, `--wait` writing outputs as they end, and Ctrl-C. The queue itself is
tested against a real PostgreSQL (tests/registry), jobs end to end on the testbed."""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from skeleton_app.app import commands
from skeleton_app.app.cli import main
from skeleton_app.app.cli.jobs_cmds import JOB_STATES as CLI_STATES
from skeleton_app.app.views.jobs import event_line, job_dict, reason_line
from skeleton_app.engines import DEFAULT_ENGINES, Engine
from skeleton_app.errors import RegistryError, UsageError
from skeleton_app.ops.jobs.dispatcher import DispatchOutcome
from skeleton_app.ops.jobs.queue import JobDetail, JobResult
from skeleton_app.registry.job_records import (
    JOB_STATES,
    Attempt,
    Job,
    JobEvent,
    JobFile,
    JobSpec,
    safe_file_name,
)

ENGINES = {e.name: e for e in DEFAULT_ENGINES}
T0 = datetime(2026, 12, 6, 14, 2, 11, tzinfo=UTC)
REASON = {"policy": "score-v1", "chosen": "linux-02", "score": 0.41, "candidates": 2,
          "terms": {"cpu": 0.05, "slots": "1/2", "mem": 0.36}, "heartbeat_age_s": 1.8,
          "others": {"linux-01": {"score": 1.7},
                     "linux-03": "cool-down until 14:02:11: lost job 17",
                     "linux-04": "no role stt_batch"}}


def make_job(job_id: int, engine: str = "stt", *, state: str = "queued",
             label: str = "a.wav", node: str | None = None, exit_code: int | None = None,
             error: str | None = None) -> Job:
    spec_engine = ENGINES.get(engine) or Engine(name="run", role="batch", command="true")
    input_name = safe_file_name(label) if engine != "tts" else None
    return Job(id=job_id, engine=engine, role=spec_engine.role,
               spec=JobSpec(engine=spec_engine, input_name=input_name, label=label),
               state=state,  # type: ignore[arg-type]
               submitted_by="me@here", submitted_at=T0, max_attempts=3,
               attempts=1 if state != "queued" else 0, node=node, exit_code=exit_code,
               error=error, finished_at=T0 + timedelta(seconds=2) if state in
               ("done", "failed", "cancelled") else None)


class FakeDetail(JobDetail):
    """`JobDetail.as_dict` is the facade's (ops/jobs/queue.py): the front end prints it."""

    def as_dict(self) -> dict[str, Any]:
        return {**job_dict(self.job), "attempts": [
            {"n": a.n, "node": a.node_id, "why": reason_line(a.reason)}
            for a in self.attempts], "files": [{"name": f.name} for f in self.files]}


class FakeHandle:
    def __init__(self, jobs: FakeJobs, job: Job):
        self._jobs = jobs
        self.id = job.id
        self.submitted = job

    def _end(self) -> JobResult | BaseException | None:
        end = self._jobs.ends.get(self.submitted.spec.label)
        if isinstance(end, JobResult):  # finish() may run before the job has its id
            return dataclasses.replace(end, job=dataclasses.replace(end.job, id=self.id))
        return end

    def state(self) -> Job:
        end = self._end()
        return end.job if isinstance(end, JobResult) else self.submitted

    def result(self, timeout: float | None = None) -> JobResult:
        self._jobs.waited.append((self.id, timeout))
        end = self._end()
        if end is None:
            raise TimeoutError
        if isinstance(end, BaseException):
            raise end
        return end

    def cancel(self) -> Job:
        return self._jobs.cancel(self.id)


class FakeJobs:
    """The `Jobs` facade's surface, recording calls. `ends` maps a job's label to how it
    ends: a JobResult, or an exception `result()` raises (KeyboardInterrupt, TimeoutError)."""

    def __init__(self, *, dispatcher_alive: bool = True,
                 submit_error: Exception | None = None):
        self.submits: list[tuple[str, Any, dict[str, Any]]] = []
        self.ends: dict[str, JobResult | BaseException] = {}
        self.waited: list[tuple[int, float | None]] = []
        self.cancelled: list[int] = []
        self.dispatcher_alive = dispatcher_alive
        self.dispatcher_runs: list[str] = []
        self.submit_error = submit_error
        self.jobs: dict[int, Job] = {}

    def _new(self, engine: str, label: str) -> FakeHandle:
        if self.submit_error is not None:
            raise self.submit_error
        job = make_job(len(self.jobs) + 1, engine, label=label)
        self.jobs[job.id] = job
        return FakeHandle(self, job)

    def submit(self, engine: str, input: str | None = None, **kwargs: Any) -> FakeHandle:
        self.submits.append((engine, input, kwargs))
        return self._new(engine, input or kwargs.get("text") or "")

    def submit_many(self, engine: str, inputs: Sequence[str], **kwargs: Any
                    ) -> list[FakeHandle]:
        self.submits.append((engine, list(inputs), kwargs))
        if self.submit_error is not None:
            raise self.submit_error
        return [self._new(engine, str(i)) for i in inputs]

    def finish(self, label: str, state: str = "done", output: bytes | None = None, *,
               node: str = "linux-02", exit_code: int | None = 0,
               error: str | None = None) -> None:
        job_id = 0  # the handle gives it its id
        engine = "tts" if output and output.startswith(b"RIFF") else "stt"
        job = make_job(job_id, engine, state=state, label=label, node=node,
                       exit_code=exit_code, error=error)
        name = "output.wav" if engine == "tts" else "output.txt"
        self.ends[label] = JobResult(job=job, output=output, output_name=name)

    def get(self, job_id: int) -> Job:
        if job_id not in self.jobs:
            raise UsageError(f"unknown job {job_id}")
        return self.jobs[job_id]

    def result_of(self, job: Job) -> JobResult:
        end = self.ends.get(job.spec.label)
        if isinstance(end, JobResult) and job.state == "done":
            return end
        return JobResult(job=job, output=None, output_name=None)

    def list(self, *, states: Sequence[str] = (), limit: int = 100) -> tuple[Job, ...]:
        self.listed = (tuple(states), limit)
        return (make_job(2, "tts", state="running", label="Hello world", node="linux-03"),
                make_job(1, state="failed", node="linux-02", exit_code=1, error="exit 1"))

    def show(self, job_id: int) -> JobDetail:
        if job_id == 404:
            raise UsageError("unknown job 404")
        job = make_job(job_id, state="done", node="linux-02", exit_code=0)
        attempts = (
            Attempt(job_id=job_id, n=1, node_id="linux-01", dispatcher="d1", lease_token=7,
                    reason={"chosen": "linux-01", "score": 0.2}, started_at=T0,
                    ended_at=T0 + timedelta(seconds=1), outcome="lost",
                    stderr_tail="boom\x1b[31m red\n"),
            Attempt(job_id=job_id, n=2, node_id="linux-02", dispatcher="d1", lease_token=9,
                    reason={**REASON, "retry_of": {"attempt": 1, "node": "linux-01",
                                                   "outcome": "lost"}},
                    started_at=T0 + timedelta(seconds=1), ended_at=T0 + timedelta(seconds=3),
                    outcome="done", exit_code=0))
        files = (JobFile(kind="input", name="a.wav", sha256="ab" * 32, size=44_000),
                 JobFile(kind="output", name="output.txt", sha256="cd" * 32, size=12))
        return FakeDetail(job=job, attempts=attempts, files=files)

    def cancel(self, job_id: int) -> Job:
        self.cancelled.append(job_id)
        return make_job(job_id, state="cancelled")

    def retry(self, job_id: int) -> Job:
        return make_job(job_id, state="queued" if job_id != 5 else "done")

    def watch(self) -> Iterator[JobEvent]:
        yield JobEvent(id=3, state="queued", engine="stt", attempt=0, cancel=False)
        yield JobEvent(id=3, state="running", engine="stt", attempt=1, cancel=False)
        raise KeyboardInterrupt

    def dispatcher(self, **kwargs: Any) -> FakeDispatcher:
        return FakeDispatcher(self, kwargs)

    def dispatcher_running(self) -> bool:
        return self.dispatcher_alive


class FakeDispatcher:
    def __init__(self, jobs: FakeJobs, kwargs: dict[str, Any]):
        self.jobs = jobs
        self.on_event = kwargs.get("on_event")

    def start(self) -> Any:
        self.jobs.dispatcher_runs.append("started")
        return lambda: self.jobs.dispatcher_runs.append("stopped")

    def run(self) -> DispatchOutcome:
        if self.on_event is not None:
            self.on_event("job 3 -> linux-02 (lowest score)")
        return DispatchOutcome(dispatcher="host-1", claimed=4, done=3, failed=1, lost=0,
                               cancelled=0, seconds=12.0)


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> FakeJobs:
    jobs = FakeJobs()
    monkeypatch.setattr(commands, "jobs_facade", lambda session: jobs)
    (tmp_path / "config.yaml").write_text("ssh: {connect_timeout: 5}\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SKELETON_CONFIG", raising=False)
    for name in ("a.wav", "b.wav"):
        (tmp_path / name).write_bytes(b"RIFF....WAVE")
    return jobs


def skeleton(*args: str) -> tuple[int, str, str]:
    """Run `skeleton ARGS` as the console command does (main(): errors become one line and
    an exit code); the exit code, stdout and stderr."""
    with CliRunner().isolation() as (out, err, _):
        try:
            main(["jobs", *args])
            code = 0
        except SystemExit as exc:
            code = int(exc.code or 0)
        sys.stdout.flush()
        sys.stderr.flush()
        return code, out.getvalue().decode(), err.getvalue().decode()


# ---------------------------------------------------------------- submit


def test_submit_queues_one_job_per_file_and_prints_their_ids(fake: FakeJobs) -> None:
    code, out, err = skeleton("submit", "stt", "a.wav", "b.wav")
    assert (code, err) == (0, "")
    assert fake.submits == [("stt", ["a.wav", "b.wav"], {})]
    assert out == "job 1 queued: stt a.wav\njob 2 queued: stt b.wav\n"
    assert fake.waited == [] and fake.dispatcher_runs == []


def test_wait_prints_the_transcript_and_runs_a_dispatcher_when_none_is_alive(
        fake: FakeJobs) -> None:
    fake.dispatcher_alive = False
    fake.finish("a.wav", output=b"hello world\n")
    code, out, err = skeleton("submit", "stt", "a.wav", "--wait")
    assert code == 0, err
    assert out == "hello world\n"
    assert "no dispatcher is running: dispatching in this process until the job ends" in err
    assert fake.dispatcher_runs == ["started", "stopped"]
    assert fake.waited == [(1, None)]


def test_wait_with_a_live_dispatcher_starts_none_and_passes_the_timeout(fake: FakeJobs) -> None:
    fake.finish("a.wav", output=b"hello world")
    code, out, err = skeleton("submit", "stt", "a.wav", "--wait", "--timeout", "30")
    assert (code, out, err) == (0, "hello world\n", "")
    assert fake.dispatcher_runs == []
    ((job_id, timeout),) = fake.waited
    assert job_id == 1 and timeout is not None and 29 < timeout <= 30


def test_out_dir_writes_each_output_as_its_job_ends(fake: FakeJobs, tmp_path: Path) -> None:
    fake.finish("a.wav", output=b"one")
    fake.finish("b.wav", output=b"two")
    code, out, err = skeleton("submit", "stt", "a.wav", "b.wav", "--out", "texts")
    assert code == 0, err
    assert (tmp_path / "texts" / "a.txt").read_bytes() == b"one"
    assert (tmp_path / "texts" / "b.txt").read_bytes() == b"two"
    assert sorted(p.name for p in (tmp_path / "texts").iterdir()) == ["a.txt", "b.txt"]
    assert out == ""
    assert "job 1 done on linux-02: wrote texts/a.txt" in err


def test_several_printed_transcripts_get_a_header_each(fake: FakeJobs) -> None:
    fake.finish("a.wav", output=b"one")
    fake.finish("b.wav", output=b"two")
    code, out, _ = skeleton("submit", "stt", "a.wav", "b.wav", "--wait")
    assert code == 0
    assert out == "==> a.wav <==\none\n==> b.wav <==\ntwo\n"


def test_tts_writes_the_wav_named_by_out(fake: FakeJobs, tmp_path: Path) -> None:
    fake.finish("Hello world", output=b"RIFFdata")
    code, _, err = skeleton("submit", "tts", "Hello world", "--out", "hello.wav", "--wait")
    assert code == 0, err
    assert fake.submits == [("tts", None, {"text": "Hello world"})]
    assert (tmp_path / "hello.wav").read_bytes() == b"RIFFdata"
    assert not list(tmp_path.glob("hello.wav.tmp-*"))


def test_run_passes_command_role_and_output_suffix_and_writes_the_named_output(
        fake: FakeJobs, tmp_path: Path) -> None:
    code, out, _ = skeleton("submit", "run", "--role", "stt_batch", "--input", "a.wav",
                            "--output", "a.txt", "--", "my-tool {input} > {output}")
    assert code == 0 and out.startswith("job 1 queued: run")
    assert fake.submits == [("run", "a.wav", {"command": "my-tool {input} > {output}",
                                              "role": "stt_batch", "output_suffix": ".txt"})]
    fake.finish("a.wav", output=b"mine")
    code, _, err = skeleton("submit", "run", "--role", "stt_batch", "--input", "a.wav",
                            "--output", "a.txt", "--wait", "--", "my-tool {input} > {output}")
    assert code == 0, err
    assert (tmp_path / "a.txt").read_bytes() == b"mine"


def test_a_failed_job_with_wait_exits_1_with_its_node_exit_and_error(fake: FakeJobs) -> None:
    fake.finish("a.wav", state="failed", exit_code=2, error="sox: can't open input")
    code, out, err = skeleton("submit", "stt", "a.wav", "--wait")
    assert (code, out) == (1, "")
    assert ("skeleton: job 1 (a.wav) failed on linux-02: exit 2: sox: can't open input"
            " (skeleton jobs show 1)") in err
    fake.finish("a.wav", state="failed", exit_code=2, error="exit 2: sox: can't open input")
    code, out, err = skeleton("submit", "stt", "a.wav", "--wait")
    assert code == 1 and "linux-02: exit 2: sox: can't open input (skeleton" in err


def test_ctrl_c_during_wait_leaves_the_job_and_says_so(fake: FakeJobs) -> None:
    fake.dispatcher_alive = False
    fake.ends["a.wav"] = KeyboardInterrupt()
    code, _, err = skeleton("submit", "stt", "a.wav", "--wait")
    assert code == 130
    assert "skeleton: interrupted: job 1 left queued (skeleton jobs cancel 1 stops it)" in err
    assert "the jobs run when a dispatcher runs (skeleton jobs dispatch)" in err
    assert fake.cancelled == [] and fake.dispatcher_runs == ["started", "stopped"]


def test_ctrl_c_with_cancel_on_interrupt_cancels_the_job(fake: FakeJobs) -> None:
    fake.ends["a.wav"] = KeyboardInterrupt()
    code, _, err = skeleton("submit", "stt", "a.wav", "--wait", "--cancel-on-interrupt")
    assert code == 130
    assert fake.cancelled == [1]
    assert "skeleton: interrupted: job 1: cancelled" in err


def test_ctrl_c_cancel_gives_the_in_process_dispatcher_a_moment_to_kill_it(
        fake: FakeJobs, monkeypatch: pytest.MonkeyPatch) -> None:
    from skeleton_app.app import jobs_submit

    monkeypatch.setattr(jobs_submit, "CANCEL_GRACE", 0.3)
    fake.dispatcher_alive = False
    fake.ends["a.wav"] = KeyboardInterrupt()
    fake.cancel = lambda job_id: make_job(job_id, state="running")  # type: ignore[method-assign]
    code, _, err = skeleton("submit", "stt", "a.wav", "--wait", "--cancel-on-interrupt")
    assert code == 130 and "skeleton: interrupted: job 1: cancel requested" in err
    assert fake.dispatcher_runs == ["started", "stopped"]


def test_a_timeout_leaves_the_job_running_and_exits_1(fake: FakeJobs) -> None:
    code, _, err = skeleton("submit", "stt", "a.wav", "--wait", "--timeout", "1")
    assert code == 1
    assert "skeleton: timed out: job 1 left queued" in err


def test_submit_json_has_every_job_with_its_output(fake: FakeJobs) -> None:
    code, out, _ = skeleton("submit", "stt", "a.wav", "--json")
    assert code == 0
    data = json.loads(out)
    assert data["waited"] is False and [j["id"] for j in data["jobs"]] == [1]
    assert data["jobs"][0]["state"] == "queued" and data["jobs"][0]["output"] is None

    fake.finish("a.wav", output=b"hello world")
    code, out, _ = skeleton("submit", "stt", "a.wav", "--wait", "--json")
    data = json.loads(out)
    assert code == 0 and data["waited"] is True and data["interrupted"] is False
    (job,) = data["jobs"]
    assert (job["state"], job["output_text"], job["node"]) == ("done", "hello world",
                                                                "linux-02")
    assert job["submitted_at"] == "2026-12-06T14:02:11+00:00"


@pytest.mark.parametrize("args, message", [
    (("whisper", "a.wav"), "unknown engine 'whisper' (engines: stt, tts; or run)"),
    (("stt",), "submit stt: no input file given"),
    (("tts", " "), "submit tts: no text given"),
    (("run", "--", "true"), "submit run: --role ROLE is required"),
    (("run", "--role", "x"), "submit run: no command"),
    (("stt", "a.wav", "--role", "x"), "--role, --input and --output are for `submit run`"),
    (("stt", "a.wav", "--timeout", "3"), "--timeout needs --wait (or --out)"),
    (("stt", "a.wav", "--cancel-on-interrupt"), "--cancel-on-interrupt needs --wait"),
    (("stt", "a.wav", "b.wav", "--out", "a.wav"), "--out a.wav: not a directory"),
    (("stt", "a.wav", "sub/a.wav", "--out", "d"), "two inputs would both write a.txt"),
    (("stt", "a.wav", "--out", "no/such/x.txt"), "--out no/such/x.txt: no directory"),
])
def test_bad_input_is_one_line_exit_2_and_nothing_queued(
        fake: FakeJobs, args: tuple[str, ...], message: str) -> None:
    code, out, err = skeleton("submit", *args)
    assert code == 2, (out, err)
    assert err.startswith("skeleton: error: ") and message in err
    assert err.count("\n") == 1, err
    assert fake.submits == []


def test_the_facades_refusals_map_to_2_and_3(fake: FakeJobs) -> None:
    fake.submit_error = UsageError("missing.wav: no such file")
    code, _, err = skeleton("submit", "stt", "missing.wav")
    assert (code, err) == (2, "skeleton: error: missing.wav: no such file\n")
    fake.submit_error = RegistryError("cannot connect to 127.0.0.1:1")
    code, _, err = skeleton("submit", "stt", "a.wav")
    assert (code, err) == (3, "skeleton: error: cannot connect to 127.0.0.1:1\n")


def test_a_bad_timeout_is_refused_by_the_parser() -> None:
    code, _, err = skeleton("submit", "stt", "a.wav", "--wait", "--timeout", "soon")
    assert code == 2 and "expected a number of seconds" in err


# ---------------------------------------------------------------- list, show, cancel, ...


def test_list_renders_a_table_and_passes_states(fake: FakeJobs) -> None:
    code, out, _ = skeleton("list", "--state", "failed", "--state", "running")
    assert code == 0
    assert fake.listed == (("failed", "running"), 100)
    lines = out.splitlines()
    assert any("job" in line and "engine" in line and "node" in line for line in lines)
    assert any("2" in line and "tts" in line and "running" in line and "linux-03" in line
               for line in lines)
    assert any("failed" in line and "exit 1" in line for line in lines)


def test_list_rejects_an_unknown_state() -> None:
    code, _, err = skeleton("list", "--state", "lost")
    assert code == 2 and "'lost' is not one of" in err


def test_list_json_is_a_list_of_jobs(fake: FakeJobs) -> None:
    code, out, _ = skeleton("list", "--json")
    data = json.loads(out)
    assert code == 0 and [j["id"] for j in data] == [2, 1]
    assert set(data[0]) >= {"id", "engine", "role", "state", "label", "node", "attempts_made",
                            "max_attempts", "submitted_at", "finished_at", "exit_code",
                            "error", "cancel_requested", "result"}


def test_show_lists_every_attempt_with_why_and_a_safe_stderr_tail(fake: FakeJobs) -> None:
    code, out, _ = skeleton("show", "7")
    assert code == 0
    assert out.startswith("job 7: stt (role stt_batch), done on linux-02, 1 of at most 3")
    assert "linux-01" in out and "lost" in out
    assert "retry of attempt 1" in out and "lowest score 0.41" in out
    assert "attempt 1 on linux-01, stderr (last 1 lines):\n  | boom\\x1b[31m red\n" in out
    assert "\x1b" not in out
    assert "input: a.wav (43KiB, sha256 abababababababab)" in out


def test_show_json_has_attempts_with_why_and_files(fake: FakeJobs) -> None:
    code, out, _ = skeleton("show", "7", "--json")
    data = json.loads(out)
    assert code == 0 and data["id"] == 7 and data["state"] == "done"
    assert [a["node"] for a in data["attempts"]] == ["linux-01", "linux-02"]
    assert "linux-02: lowest score 0.41" in data["attempts"][1]["why"]
    assert data["files"][0] == {"name": "a.wav"}


def test_show_of_an_unknown_job_and_a_bad_id_exit_2(fake: FakeJobs) -> None:
    assert skeleton("show", "404")[0] == 2
    code, _, err = skeleton("show", "x")
    assert code == 2 and "expected a job id" in err and "'x'" in err


def test_cancel_and_retry(fake: FakeJobs) -> None:
    assert skeleton("cancel", "4") == (0, "job 4: cancelled\n", "")
    assert fake.cancelled == [4]
    assert skeleton("retry", "4") == (0, "job 4 queued again\n", "")
    code, _, err = skeleton("retry", "5")
    assert code == 2
    assert err == ("skeleton: error: job 5 is done: only a failed or cancelled job can be"
                   " retried\n")


def test_watch_prints_a_line_per_change_and_ctrl_c_ends_it_cleanly(fake: FakeJobs) -> None:
    code, out, _ = skeleton("watch")
    assert code == 0
    lines = out.splitlines()
    assert [line.split(" ", 1)[1] for line in lines] == ["job 3 stt queued",
                                                        "job 3 stt running (attempt 1)"]


def test_dispatch_prints_its_events_and_a_summary(fake: FakeJobs) -> None:
    code, out, err = skeleton("dispatch")
    assert code == 0
    assert out == "job 3 -> linux-02 (lowest score)\n"
    assert err == ("dispatcher host-1: claimed 4, done 3, failed 1, lost 0, cancelled 0"
                   " in 12s\n")


# ---------------------------------------------------------------- views


def test_reason_line_says_where_and_why() -> None:
    line = reason_line(REASON)  # the routing module's explain()
    assert "linux-02: lowest score 0.41 of 2 candidates" in line and "linux-04" in line
    assert reason_line({"chosen": "a\x1b[31m", "score": 1}).isprintable()


def test_event_line() -> None:
    event = JobEvent(id=9, state="running", engine="tts", attempt=2, cancel=True)
    assert event_line(event, now=datetime(2026, 1, 1, 9, 5, 1)) == (
        "09:05:01 job 9 tts running (attempt 2), cancel requested")


def test_the_cli_states_are_the_queues() -> None:
    assert CLI_STATES == JOB_STATES


def test_output_paths() -> None:
    from skeleton_app.app.jobs_submit import JobsRequest
    from skeleton_app.config import Settings

    settings = dataclasses.replace(Settings())
    stt = JobsRequest.parse(settings, "stt", ["x/a.wav"], wait=True)
    assert stt.output_path(0, 1) is None  # printed
    tts = JobsRequest.parse(settings, "tts", ["hi"], wait=True)
    assert tts.output_path(0, 12) == "./job-12.wav"
    run = JobsRequest.parse(settings, "run", ["cat {input}"], role="r", wait=True)
    assert run.prints and run.output_path(0, 3) is None


def test_an_output_never_follows_a_planted_symlink(tmp_path: Path) -> None:
    from skeleton_app.app.jobs_submit import write_atomic

    victim = tmp_path / "victim"
    victim.write_text("keep")
    for n in range(1, 4):  # the old temporary names: `<path>.tmp-<job id>`
        (tmp_path / f"out.txt.tmp-{n}").symlink_to(victim)
    write_atomic(str(tmp_path / "out.txt"), b"hello world", 2)
    assert victim.read_text() == "keep"
    assert (tmp_path / "out.txt").read_bytes() == b"hello world"
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name and not p.is_symlink()]


def test_output_of_a_done_job_and_of_one_without(fake: FakeJobs, tmp_path: Path) -> None:
    done = fake.submit("tts", text="hi")
    fake.jobs[done.id] = dataclasses.replace(fake.jobs[done.id], state="done")
    fake.finish("hi", output=b"RIFF\0wav")
    code, _out, err = skeleton("output", str(done.id), "--out", str(tmp_path / "hi.wav"))
    assert code == 0 and (tmp_path / "hi.wav").read_bytes() == b"RIFF\0wav", err
    queued = fake.submit("stt", "a.wav")
    code, _out, err = skeleton("output", str(queued.id))
    assert code == 2 and f"job {queued.id} has no output: it is queued" in err
    assert skeleton("output", "99")[0] == 2
