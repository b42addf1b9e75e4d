"""The jobs benchmark's own logic (bench/jobs_*.py), fast and without a testbed.

Our side is driven through a stand-in of the queue's facade (same method names as
skeleton_app/ops/jobs/queue.py) to prove the waiting and the latency arithmetic; against the
real facade it must say "not available" while the queue raises NotImplementedError. The
round-robin loop runs for real with an `ssh` on PATH that records where each job went.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from bench import jobs_case, jobs_peers
from bench.jobs_ours import Ours, OursUnavailable, guarded
from bench.peers import Hosts
from skeleton_app.engines import DEFAULT_ENGINES, find_engine
from skeleton_app.registry.job_records import JobEvent

T0 = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


@dataclass
class FakeJob:
    id: int
    state: str
    submitted_at: datetime
    error: str | None = None


@dataclass
class FakeAttempt:
    n: int
    started_at: datetime


@dataclass
class FakeStore:
    """Jobs end the moment they are submitted; events arrive on the next wait()."""

    jobs: dict[int, FakeJob] = field(default_factory=dict)
    events: list[JobEvent] = field(default_factory=list)
    outputs: dict[int, bytes] = field(default_factory=dict)

    def listen(self) -> FakeStore:
        return self

    def wait(self, timeout: float) -> list[JobEvent]:
        got, self.events = self.events, []
        return got

    def close(self) -> None:
        pass

    def get(self, job_id: int) -> FakeJob | None:
        return self.jobs.get(job_id)

    def list(self, *, states: Any = (), limit: int = 100) -> tuple[FakeJob, ...]:
        return tuple(j for j in self.jobs.values() if j.state in states)[:limit]

    def attempts(self, job_id: int) -> tuple[FakeAttempt, ...]:
        # Attempt 2 started later: the first attempt's start is what counts.
        start = self.jobs[job_id].submitted_at + timedelta(milliseconds=job_id)
        return (FakeAttempt(2, start + timedelta(seconds=5)), FakeAttempt(1, start))


@dataclass
class FakeHandle:
    store: FakeStore
    id: int
    submitted: FakeJob

    def result(self, timeout: float | None = None) -> Any:
        return type("R", (), {"text": self.store.outputs[self.id].decode()})()


@dataclass
class FakeJobs:
    store: FakeStore = field(default_factory=FakeStore)
    submitted: list[tuple[str, object, dict[str, Any]]] = field(default_factory=list)
    lose_events: bool = False

    def submit(self, engine: str, input: object = None, **kwargs: Any) -> FakeHandle:
        job_id = len(self.store.jobs) + 1
        job = FakeJob(job_id, "done", T0)
        self.store.jobs[job_id] = job
        self.store.outputs[job_id] = b"hello world\n"
        if not self.lose_events:
            self.store.events.append(JobEvent(job_id, "running", engine, 1, False))
            self.store.events.append(JobEvent(job_id, "done", engine, 1, False))
        self.submitted.append((engine, input, kwargs))
        return FakeHandle(self.store, job_id, job)


def ours_with(jobs: FakeJobs) -> Ours:
    return Ours(cluster=None, jobs=jobs, stop=lambda: None)  # type: ignore[arg-type]


def test_noop_submits_run_jobs_and_waits_for_every_one():
    jobs = FakeJobs()
    seconds = ours_with(jobs).noop(25)
    assert seconds >= 0 and len(jobs.submitted) == 25
    assert {(e, kw["command"], kw["role"]) for e, _i, kw in jobs.submitted} == {
        ("run", "true", "testbed")}


def test_waiting_falls_back_to_polling_when_notify_is_lost():
    jobs = FakeJobs(lose_events=True)
    assert ours_with(jobs).noop(3) >= 0.9  # found by the 1 s poll, not by events


def test_a_job_that_did_not_end_done_is_reported():
    jobs = FakeJobs()
    ours = ours_with(jobs)
    original = jobs.submit

    def failing(engine: str, input: object = None, **kw: Any) -> FakeHandle:
        handle = original(engine, input, **kw)
        handle.submitted.state, handle.submitted.error = "failed", "exit 1"
        return handle

    jobs.submit = failing  # type: ignore[method-assign]
    with pytest.raises(OursUnavailable, match=r"3 of 3 jobs did not end done \(e.g. failed"):
        ours.noop(3)


def test_latency_is_first_attempt_start_minus_submit_in_ms():
    values = ours_with(FakeJobs()).latencies(4)
    assert values == pytest.approx([1.0, 2.0, 3.0, 4.0])


def test_transcribe_submits_each_file_to_stt_and_returns_texts(tmp_path: Path):
    jobs = FakeJobs()
    wavs = [tmp_path / f"{i}.wav" for i in range(3)]
    got = ours_with(jobs).transcribe(wavs)
    assert got.texts == ("hello world\n",) * 3
    assert [(e, i) for e, i, _kw in jobs.submitted] == [("stt", w) for w in wavs]
    assert jobs_peers.recognised(got.texts) == 3


def test_not_implemented_reads_not_available():
    with pytest.raises(OursUnavailable, match=r"^not available: the jobs API is not"), guarded():
        raise NotImplementedError


def test_the_real_facade_is_not_available_or_runs(tmp_path: Path):
    """While the queue is a signature, opening our side says so instead of crashing."""
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"nodes": []}))
    try:
        with Ours.open(config):
            pass
    except OursUnavailable as exc:
        assert str(exc)  # e.g. "not available: ..." or "UsageError: no registry ..."


def test_stt_peer_command_is_the_engines_template():
    engine = find_engine(DEFAULT_ENGINES, "stt")
    assert jobs_peers.stt_command_for(engine, "say-01.wav") == engine.render(
        input_path="say-01.wav")
    with pytest.raises(Exception, match="unexpected input name"):
        jobs_peers.stt_command_for(engine, "a b.wav")


def _hosts(tmp_path: Path, count: int) -> Hosts:
    return Hosts(ids=tuple(f"node-{i:02d}" for i in range(1, count + 1)),
                 ips=tuple(f"10.0.0.{10 + i}" for i in range(1, count + 1)),
                 config=tmp_path / "c.yaml", ssh_config=tmp_path / "ssh_config",
                 identity=tmp_path / "id", known_hosts=tmp_path / "kh", user="skeleton",
                 workdir=tmp_path)


def _fake_ssh(tmp_path: Path, body: str) -> dict[str, str]:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    ssh = bindir / "ssh"
    ssh.write_text("#!/bin/sh\n# ssh -F CONFIG HOST COMMAND\n" + body)
    ssh.chmod(0o755)
    return {"PATH": f"{bindir}:{os.environ['PATH']}", "LOG": str(tmp_path / "log")}


def test_round_robin_noop_deals_jobs_to_hosts_in_turn(tmp_path: Path):
    env = _fake_ssh(tmp_path, 'echo "$3 $4" >> "$LOG"\n')
    h = _hosts(tmp_path, 4)
    cmd = jobs_peers.noop_commands(h, 40, 2)[jobs_peers.ROUND_ROBIN]
    subprocess.run(cmd.argv, env={**cmd.env, **env}, check=True, timeout=60)
    lines = (tmp_path / "log").read_text().splitlines()
    assert len(lines) == 40
    assert {ip: lines.count(f"{ip} true") for ip in h.ips} == dict.fromkeys(h.ips, 10)


def test_round_robin_fails_when_one_job_fails(tmp_path: Path):
    env = _fake_ssh(tmp_path, '[ "$3" = 10.0.0.13 ] && exit 255; exit 0\n')
    cmd = jobs_peers.noop_commands(_hosts(tmp_path, 4), 8, 1)[jobs_peers.ROUND_ROBIN]
    proc = subprocess.run(cmd.argv, env={**cmd.env, **env}, timeout=60)
    assert proc.returncode != 0


def test_round_robin_stt_sends_audio_on_stdin_and_keeps_stdout(tmp_path: Path):
    # The fake ssh plays the node: it runs the remote command with `cd` pointed here.
    app = tmp_path / "app"
    app.mkdir()
    env = _fake_ssh(tmp_path, f'cmd=$(printf %s "$4" | sed "s#{jobs_peers.APP_DIR}#{app}#")\n'
                              'exec sh -c "$cmd"\n')
    wav_dir = tmp_path / "wavs"
    wav_dir.mkdir()
    names = []
    for i in range(5):
        (wav_dir / f"say-{i:02d}.wav").write_text(f"audio {i}\n")
        names.append(f"say-{i:02d}.wav")
    engine = type(find_engine(DEFAULT_ENGINES, "stt"))(
        name="stt", role="stt_batch", input="audio", command="tr a-z A-Z < {input}")
    cmd = jobs_peers.stt_commands(_hosts(tmp_path, 2), engine, wav_dir, names, 2)[
        jobs_peers.ROUND_ROBIN]
    subprocess.run(cmd.argv, env={**cmd.env, **env}, cwd=cmd.cwd, check=True, timeout=60)
    assert jobs_peers.read_outputs(wav_dir, names) == [f"AUDIO {i}\n" for i in range(5)]
    assert list(app.iterdir()) == []  # the copies on the node are removed


def test_parallel_stt_command_line_follows_the_issue(tmp_path: Path):
    engine = find_engine(DEFAULT_ENGINES, "stt")
    cmd = jobs_peers.stt_commands(_hosts(tmp_path, 2), engine, tmp_path, ["a.wav"], 2)[
        jobs_peers.PARALLEL]
    argv = list(cmd.argv)
    assert argv[argv.index("-S") + 1] == "2/10.0.0.11,2/10.0.0.12"
    for flag, value in (("--transferfile", "{}"), ("--return", "{.}.txt"),
                        ("--workdir", jobs_peers.APP_DIR)):
        assert argv[argv.index(flag) + 1] == value
    assert "--cleanup" in argv
    assert argv[-3:] == [jobs_peers.stt_command_for(engine, "BENCHFILE").replace(
        "BENCHFILE", "{}") + " > {.}.txt", ":::", "a.wav"]


def test_config_gives_slots_and_pocketsphinx(tmp_path: Path):
    tb = type("TB", (), {"config_path": tmp_path / "tb.yaml", "db": object()})()
    tb.config_path.write_text(yaml.safe_dump({"bootstrap": {"requires": ["x"]}, "nodes": []}))
    path = jobs_case.write_config(tb, tmp_path / "w", tmp_path / "wheels")  # type: ignore[arg-type]
    data = yaml.safe_load(path.read_text())
    assert data["jobs"]["slots"] == jobs_case.SLOTS
    assert data["bootstrap"] == {"requires": ["pocketsphinx", "x"],
                                 "wheelhouse": str(tmp_path / "wheels")}


def test_percentile_and_rate():
    values = [float(v) for v in range(1, 101)]
    assert jobs_case._percentile(values, 0.5) in (50.0, 51.0)
    assert jobs_case._percentile(values, 0.99) == 99.0
    assert jobs_case._jobs_per_s(4.0, 400) == 100.0



# ---------------------------------------------------------------- case 7: the chaos checks


def _tried(n: int, outcome: str, start: float, end: float | None,
           dispatcher: str = "a") -> Any:
    from bench.jobs_chaos import Tried

    return Tried(n, outcome, T0 + timedelta(seconds=start),
                 None if end is None else T0 + timedelta(seconds=end), dispatcher)


def test_chaos_judge_accepts_a_job_taken_over_once() -> None:
    from bench.jobs_chaos import judge

    attempts = {1: [_tried(1, "superseded", 0.0, 3.0), _tried(2, "done", 3.0, 4.0, "b")],
                2: [_tried(1, "done", 0.0, 1.0)]}
    got = judge([1, 2], {1: "done", 2: "done"}, attempts, T0 + timedelta(seconds=1.5))
    assert (got.lost, got.twice, got.overlaps, got.superseded) == (0, 0, 0, 1)
    assert got.takeover == pytest.approx(1.5) and got.problems == ()


def test_chaos_judge_counts_lost_twice_and_overlapping_attempts() -> None:
    from bench.jobs_chaos import judge

    attempts = {
        1: [_tried(1, "done", 0.0, 1.0), _tried(2, "done", 2.0, 3.0)],  # twice
        2: [_tried(1, "superseded", 0.0, 2.5), _tried(2, "done", 2.0, 3.0)],  # overlap
        3: [_tried(1, "superseded", 0.0, 2.0), _tried(2, "superseded", 2.0, 4.0)],
        4: [_tried(1, "running", 0.0, None)],
    }
    states = {1: "done", 2: "done", 3: "failed", 4: "running"}
    got = judge([1, 2, 3, 4, 5], states, attempts, T0)
    assert got.twice == 1
    assert got.overlaps == 1
    assert got.lost == 3  # 3 failed, 4 still running, 5 missing
    assert any("still running" in p for p in got.problems)
    assert got.takeover == pytest.approx(2.0)  # the first attempt after a superseded one


def test_chaos_goal_is_not_met_with_fewer_runs_but_missed_with_a_loss() -> None:
    from bench.jobs_chaos import ChaosRun, _rows_and_goals
    from bench.report import Case

    clean = ChaosRun(12, 0, 0, 0, 3, 3, 0, 1.8, 7.0, ())
    case = Case("7", "t")
    _rows_and_goals(case, [], [clean] * 5, 3.0, 10.0)
    chaos_goal = case.goals[-1]
    assert chaos_goal.met is None and chaos_goal.target == "0 / 0 in 20 runs"
    case = Case("7", "t")
    _rows_and_goals(case, [], [clean] * 20, 3.0, 10.0)
    assert case.goals[-1].met is True
    lost = ChaosRun(12, 1, 0, 0, 3, 3, 0, 1.8, 7.0, ("job 9: failed",))
    case = Case("7", "t")
    _rows_and_goals(case, [], [clean] * 4 + [lost], 3.0, 10.0)
    assert case.goals[-1].met is False
    assert any("job 9: failed" in n for n in case.notes)


def test_chaos_marks_count_distinct_runs_per_job() -> None:
    from bench.jobs_chaos import _marks

    @dataclass
    class Out:
        stdout: str

    class Result(dict[str, Out]):
        pass

    class FakeCluster:
        def run(self, command: str, *, timeout: float) -> Result:
            assert "r3-j*" in command
            shared = "r3-j0:node-01 10\nr3-j1:node-02 11\n"  # a home both hosts see
            return Result({"node-01": Out(shared), "node-02": Out(shared + "r3-j0:node-02 12\n")})

    assert _marks(FakeCluster(), 3) == {"r3-j0": 2, "r3-j1": 1}  # type: ignore[arg-type]
