"""The dispatcher (ops/jobs/dispatcher.py + attempt.py) over the in-memory queue
(testing/fake_jobs.py, the JobStore semantics: fencing, leases) and the in-memory node side
(testing/fake_jobs_node.py): every path a job takes, without hosts or a database."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from skeleton_app.cluster import Cluster
from skeleton_app.config import JobsSettings, Settings, SSHSettings
from skeleton_app.engines import DEFAULT_ENGINES, Engine
from skeleton_app.errors import NodeError, NodeErrorKind
from skeleton_app.ops.jobs import node as node_module
from skeleton_app.ops.jobs.dispatcher import Dispatcher, DispatchOutcome
from skeleton_app.ops.jobs.node import AttemptEnd
from skeleton_app.registry.job_records import Job, JobSpec, Route
from skeleton_app.testing.fake import FakeRunner, Reply, always
from skeleton_app.testing.fake_jobs import FakeJobStore
from skeleton_app.testing.fake_jobs_node import FakeJobNodes
from tests.support.jobs_nodes import NOW, Nodes, entry

STT = next(e for e in DEFAULT_ENGINES if e.name == "stt")
LEASE = 0.6  # renewed every 0.2 s


def until(predicate: Callable[[], object], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)


@dataclass
class Rig:
    store: FakeJobStore
    nodes: FakeJobNodes
    registry: Nodes
    dispatcher: Dispatcher
    log: list[str]
    stop: Callable[[], DispatchOutcome] | None = None

    def submit(self, data: bytes = b"audio", engine: Engine = STT,
               max_attempts: int = 3, hold: bool = False) -> Job:
        """Queue a job; `hold`: its command runs until `nodes.release(id)`."""
        if hold:  # before it is queued: the dispatcher may take it at once
            self.nodes.hold.add(len(self.store.jobs) + 1)
        spec = JobSpec(engine=engine, input_name="a.wav", label="a.wav")
        return self.store.submit(spec, [("a.wav", data)], submitted_by="test",
                                 max_attempts=max_attempts)

    def job(self, job_id: int) -> Job:
        job = self.store.jobs[job_id]
        return job

    def wait_state(self, job_id: int, *states: str) -> Job:
        until(lambda: self.store.jobs[job_id].state in states)
        return self.store.jobs[job_id]

    def start(self) -> None:
        self.stop = self.dispatcher.start()


def make_rig(*node_ids: str, lease: float = LEASE, sweep_every: float = 3600.0,
             keepalive: float = 3.0) -> Rig:
    store = FakeJobStore(clock=lambda: NOW)  # leases expire only when a test says so
    nodes = FakeJobNodes()
    registry = Nodes([entry(n, cpus=1) for n in node_ids or ("n1", "n2")])
    settings = Settings(jobs=JobsSettings(lease=lease, poll=0.05, cooldown=60.0,
                                          stderr_tail=50),
                        ssh=SSHSettings(keepalive=keepalive))
    cluster = Cluster(settings, (), connector=FakeRunner(always(Reply())))
    log: list[str] = []
    dispatcher = Dispatcher(cluster, store, dispatcher_id="d1", on_event=log.append,
                            node_api=nodes, registry=registry, sweep_every=sweep_every)
    return Rig(store, nodes, registry, dispatcher, log)


@pytest.fixture
def rig() -> Iterator[Rig]:
    made = make_rig()
    yield made
    if made.stop is not None:
        made.stop()


def test_a_job_runs_and_its_output_is_stored(rig: Rig) -> None:
    rig.start()
    job = rig.submit(b"hello")
    done = rig.wait_state(job.id, "done", "failed")
    assert done.state == "done" and done.exit_code == 0
    assert rig.store.file_data(job.id, "output", "output.txt") == b"done: hello"
    assert done.result["output"] == "output.txt" and done.result["size"] == 11
    (attempt,) = rig.store.attempts(job.id)
    assert attempt.outcome == "done" and attempt.remote_pgid is not None
    assert attempt.reason["policy"] == "score-v1"
    rec = rig.nodes.attempts[(job.id, 1)]
    # The command was rendered with the input inside the attempt's directory.
    assert f"/srv/app/jobs/{job.id}/a1/in/a.wav" in rec.command
    assert rec.input_data == b"hello"
    assert rec.removed  # wait(remove=True): the node removes the directory at the end
    # It ended within its start's wait: one node call, no separate `started` write (the
    # pgid came with the end's write).
    assert rec.waits == 1 and "started" not in rig.store.calls
    assert ("n1", "stt") in rig.nodes.preflight_calls or ("n2", "stt") in \
        rig.nodes.preflight_calls
    assert rig.store.live_dispatchers(within=10) == ("d1",)
    assert rig.stop is not None
    outcome = rig.stop()
    rig.stop = None
    assert (outcome.claimed, outcome.done, outcome.failed) == (1, 1, 0)
    assert "d1" in rig.store.gone and rig.store.live_dispatchers(within=10) == ()


def test_a_non_zero_exit_fails_with_the_stderr_tail(rig: Rig) -> None:
    def answer(node_id: str, command: str, data: bytes | None) -> AttemptEnd:
        return AttemptEnd(exit_code=2, output=b"", output_truncated=False,
                          stderr_tail="x" * 100 + "\nsox FAIL: cannot open a.wav\n",
                          seconds=0.1)

    rig.nodes.answer = answer
    rig.start()
    job = rig.submit()
    failed = rig.wait_state(job.id, "done", "failed")
    assert failed.state == "failed" and failed.exit_code == 2
    assert failed.error == "exit 2: sox FAIL: cannot open a.wav"
    (attempt,) = rig.store.attempts(job.id)  # not retried
    assert attempt.outcome == "failed" and attempt.stderr_tail.endswith("cannot open a.wav\n")
    assert len(attempt.stderr_tail) == 50  # jobs.stderr_tail


def test_retry_on_exit_runs_the_job_again(rig: Rig) -> None:
    calls: list[str] = []

    def answer(node_id: str, command: str, data: bytes | None) -> AttemptEnd:
        calls.append(node_id)
        code = 1 if len(calls) == 1 else 0
        return AttemptEnd(exit_code=code, output=b"ok", output_truncated=False,
                          stderr_tail="flaky", seconds=0.0)

    rig.nodes.answer = answer
    flaky = Engine(name="flaky", role="stt_batch", command="tool {input}", retry_on_exit=True)
    rig.start()
    job = rig.submit(engine=flaky)
    assert rig.wait_state(job.id, "done", "failed").state == "done"
    assert [a.outcome for a in rig.store.attempts(job.id)] == ["lost", "done"]


def test_a_lost_node_is_cooled_down_and_the_job_runs_on_another(rig: Rig) -> None:
    rig.start()
    job = rig.submit(hold=True)
    until(lambda: (job.id, 1) in rig.nodes.attempts)
    first = rig.nodes.attempts[(job.id, 1)].node_id
    rig.nodes.frozen.add(first)  # its next wait raises NodeError (lost)
    rig.nodes.release(job.id)
    done = rig.wait_state(job.id, "done", "failed")
    assert done.state == "done" and done.attempts == 2
    first_attempt, second = rig.store.attempts(job.id)
    assert first_attempt.outcome == "lost" and first_attempt.node_id == first
    assert "lost" in first_attempt.stderr_tail
    assert second.node_id != first and second.outcome == "done"
    assert second.reason["others"][first].startswith("cool-down until")
    assert second.reason["retry_of"] == {"attempt": 1, "node": first}
    assert rig.store.cooldowns[first][1] == f"lost job {job.id}"


def test_a_node_call_that_hangs_is_abandoned_within_the_liveness_budget() -> None:
    # A wait that starts on a node already frozen hangs until ssh.connect_timeout: the
    # dispatcher's loop loses the job after slice + 2 keepalive + 0.5 s instead.
    rig = make_rig("n1", "n2", keepalive=0.2)
    rig.nodes.freeze_delay = 6.0
    rig.start()
    try:
        job = rig.submit(hold=True)
        until(lambda: (job.id, 1) in rig.nodes.attempts)
        first = rig.nodes.attempts[(job.id, 1)].node_id
        frozen_at = time.monotonic()
        rig.nodes.frozen.add(first)
        rig.nodes.release(job.id)
        done = rig.wait_state(job.id, "done", "failed")
        assert time.monotonic() - frozen_at < 1.0 + 2 * 0.2 + 0.5 + 1.0
        assert done.state == "done"
        lost, again = rig.store.attempts(job.id)
        assert lost.outcome == "lost" and "did not answer for" in lost.stderr_tail
        assert again.node_id != first
    finally:
        assert rig.stop is not None
        rig.nodes.frozen.clear()
        rig.stop()


def test_an_unreachable_node_at_start_is_lost_too(rig: Rig) -> None:
    rig.nodes.frozen.add("n1")
    rig.nodes.preflights.clear()
    rig.start()
    job = rig.submit()
    done = rig.wait_state(job.id, "done", "failed")
    assert done.state == "done"
    assert rig.store.attempts(job.id)[-1].node_id == "n2"


def test_max_attempts_bounds_the_failovers() -> None:
    rig = make_rig("n1", "n2")
    rig.start()
    try:
        job = rig.submit(max_attempts=2, hold=True)
        for n in (1, 2):
            until(lambda n=n: (job.id, n) in rig.nodes.attempts)  # type: ignore[misc]
            rig.nodes.frozen.add(rig.nodes.attempts[(job.id, n)].node_id)
        failed = rig.wait_state(job.id, "failed", "done")
        assert failed.state == "failed" and "lost 2 times" in (failed.error or "")
    finally:
        assert rig.stop is not None
        rig.stop()


def test_a_lost_lease_kills_our_remote_command_and_writes_nothing(rig: Rig) -> None:
    rig.start()
    job = rig.submit(hold=True)
    until(lambda: rig.store.attempts(job.id) and rig.store.attempts(job.id)[0].remote_pgid)
    ours = rig.store.attempts(job.id)[0]
    other = "n2" if ours.node_id == "n1" else "n1"
    with rig.store._lock:  # another dispatcher takes the job over after the lease expired
        rig.store.advance(LEASE + 1)
        claim = rig.store.claim("d2", lease=3600, route=lambda j, load: Route(other, {}))
        assert claim is not None and claim.job.id == job.id
    until(lambda: (ours.node_id, job.id, 1, ours.remote_pgid) in rig.nodes.kills)
    time.sleep(0.1)
    now = rig.store.jobs[job.id]
    assert now.state == "running" and now.lease_owner == "d2"
    assert [a.outcome for a in rig.store.attempts(job.id)] == ["superseded", "running"]
    assert any("lease lost" in line for line in rig.log)


def test_a_late_finisher_cannot_overwrite_the_result(rig: Rig) -> None:
    rig.start()
    job = rig.submit(hold=True)
    until(lambda: rig.store.attempts(job.id) and rig.store.attempts(job.id)[0].remote_pgid)
    with rig.store._lock:  # taken over, and ended by the other dispatcher first
        rig.store.advance(LEASE + 1)
        claim = rig.store.claim("d2", lease=3600, route=lambda j, load: Route("n1", {}))
        assert claim is not None
        assert rig.store.finish(job.id, claim.token, state="done", exit_code=0, error=None,
                                stderr_tail="", result={"by": "d2"})
    rig.nodes.release(job.id)
    time.sleep(0.3)
    assert rig.store.jobs[job.id].result == {"by": "d2"}


def test_cancel_kills_the_remote_command(rig: Rig) -> None:
    rig.start()
    job = rig.submit(hold=True)
    until(lambda: rig.store.attempts(job.id) and rig.store.attempts(job.id)[0].remote_pgid)
    assert rig.store.cancel(job.id) is not None
    cancelled = rig.wait_state(job.id, "cancelled", "done", "failed")
    assert cancelled.state == "cancelled"
    (attempt,) = rig.store.attempts(job.id)
    assert attempt.outcome == "cancelled" and attempt.cleaned_at is not None
    assert (attempt.node_id, job.id, 1, attempt.remote_pgid) in rig.nodes.kills


def test_a_forged_cancel_notify_kills_nothing(rig: Rig) -> None:
    # Anyone who can log in may NOTIFY on the channel: only the row's cancel_requested counts.
    from skeleton_app.registry.job_records import JobEvent

    rig.start()
    job = rig.submit(hold=True)
    until(lambda: rig.store.attempts(job.id) and rig.store.attempts(job.id)[0].remote_pgid)
    rig.dispatcher.on_notify(JobEvent(id=job.id, state="running", engine="stt", attempt=1,
                                      cancel=True))
    time.sleep(0.3)
    assert rig.store.jobs[job.id].state == "running" and rig.nodes.kills == []
    rig.nodes.release(job.id)
    assert rig.wait_state(job.id, "done", "failed", "cancelled").state == "done"


def test_a_queued_job_cancelled_never_runs(rig: Rig) -> None:
    job = rig.submit()
    rig.store.cancel(job.id)
    rig.start()
    time.sleep(0.2)
    assert rig.store.jobs[job.id].state == "cancelled" and rig.nodes.attempts == {}


def test_a_stale_daemon_loses_the_job(rig: Rig) -> None:
    rig.start()
    job = rig.submit(hold=True)
    until(lambda: rig.store.attempts(job.id) and rig.store.attempts(job.id)[0].remote_pgid)
    first = rig.store.attempts(job.id)[0].node_id
    rig.registry.entries = [entry(first, cpus=1, seen=120.0) if e.node.id == first else e
                            for e in rig.registry.entries]
    until(lambda: len(rig.store.attempts(job.id)) == 2)
    lost, again = rig.store.attempts(job.id)
    assert lost.outcome == "lost" and "daemon stale" in lost.stderr_tail
    assert again.node_id != first


def test_the_sweep_kills_orphans_on_nodes_that_answer_again() -> None:
    rig = make_rig("n1", "n2", sweep_every=0.2)
    rig.start()
    try:
        job = rig.submit(hold=True)
        until(lambda: (job.id, 1) in rig.nodes.attempts)
        first = rig.nodes.attempts[(job.id, 1)]
        rig.nodes.frozen.add(first.node_id)
        rig.nodes.release(job.id)
        rig.wait_state(job.id, "done")
        time.sleep(0.4)  # sweeps while the node is away: nothing cleaned
        assert rig.store.attempts(job.id)[0].cleaned_at is None
        rig.nodes.frozen.discard(first.node_id)
        until(lambda: rig.store.attempts(job.id)[0].cleaned_at is not None)
        assert (first.node_id, job.id, 1, first.pgid) in rig.nodes.kills
        assert rig.store.cleanups() == ()
    finally:
        assert rig.stop is not None
        rig.stop()


def test_a_failed_preflight_keeps_jobs_off_the_node(rig: Rig) -> None:
    rig.nodes.preflights["n1"] = "sox is not installed on n1"
    rig.start()
    jobs = [rig.submit() for _ in range(3)]
    for job in jobs:
        assert rig.wait_state(job.id, "done").state == "done"
        assert rig.store.attempts(job.id)[0].node_id == "n2"


def test_a_job_no_node_can_take_waits_queued_and_says_why() -> None:
    rig = make_rig("n1")
    rig.nodes.preflights["n1"] = "sox is not installed on n1"
    rig.start()
    try:
        job = rig.submit()
        until(lambda: any(f"job {job.id} waits" in line for line in rig.log))
        assert rig.store.jobs[job.id].state == "queued"
        assert any("sox is not installed on n1" in line for line in rig.log)
    finally:
        assert rig.stop is not None
        rig.stop()


def test_slots_are_respected(rig: Rig) -> None:
    rig.start()
    jobs = [rig.submit(hold=True) for _ in range(3)]
    until(lambda: sum(j.state == "running" for j in rig.store.jobs.values()) == 2)
    time.sleep(0.1)
    assert sorted(j.state for j in rig.store.jobs.values()) == ["queued", "running", "running"]
    for job in jobs:
        rig.nodes.release(job.id)
    for job in jobs:
        rig.wait_state(job.id, "done")


def test_stopping_leaves_running_jobs_to_their_leases(rig: Rig) -> None:
    rig.start()
    job = rig.submit(hold=True)
    until(lambda: rig.store.attempts(job.id) and rig.store.attempts(job.id)[0].remote_pgid)
    assert rig.stop is not None
    rig.stop()
    rig.stop = None
    assert rig.store.jobs[job.id].state == "running"
    assert rig.store.attempts(job.id)[0].outcome == "running"
    assert not rig.nodes.kills


def test_a_database_that_goes_away_does_not_kill_the_dispatcher(rig: Rig) -> None:
    rig.start()
    rig.store.fail = "registry at db:5432 is down"
    time.sleep(0.3)
    rig.store.fail = None
    job = rig.submit()
    assert rig.wait_state(job.id, "done").state == "done"
    assert any("is down" in line for line in rig.log)


def test_node_errors_of_every_kind_but_interrupted_lose_the_attempt(rig: Rig) -> None:
    seen: list[str] = []

    def answer(node_id: str, command: str, data: bytes | None) -> AttemptEnd:
        seen.append(node_id)
        if len(seen) == 1:
            raise NodeError(NodeErrorKind.TIMEOUT, "wait timed out", node=node_id)
        return AttemptEnd(exit_code=0, output=b"", output_truncated=False, stderr_tail="",
                          seconds=0.0)

    rig.nodes.answer = answer
    rig.start()
    job = rig.submit()
    assert rig.wait_state(job.id, "done").state == "done"
    assert [a.outcome for a in rig.store.attempts(job.id)] == ["lost", "done"]


def test_the_node_module_is_the_node_api_the_dispatcher_uses() -> None:
    import inspect

    from skeleton_app.ops.jobs.attempt import NodeApi

    for name in ("render", "start", "wait", "failure", "kill", "preflight"):
        wanted = list(inspect.signature(getattr(NodeApi, name)).parameters)[1:]  # no self
        have = list(inspect.signature(getattr(node_module, name)).parameters)
        assert have[: len(wanted)] == wanted, name


def test_claims_in_batches_fill_each_node_to_its_slots_and_no_further(rig: Rig) -> None:
    held = [rig.submit(hold=True) for _ in range(4)]  # queued before the dispatcher runs
    rig.start()  # one slot per node (1 cpu): the first batch takes two, one on each node
    until(lambda: sum(rig.job(j.id).state == "running" for j in held) == 2)
    time.sleep(0.2)  # more wake-ups: still nothing beyond the slots
    running = [j for j in held if rig.job(j.id).state == "running"]
    assert len(running) == 2
    assert {rig.store.attempts(j.id)[0].node_id for j in running} == {"n1", "n2"}
    for job in held:
        rig.nodes.release(job.id)
    for job in held:
        assert rig.wait_state(job.id, "done", "failed").state == "done"


def test_a_dispatcher_for_some_jobs_runs_no_other_and_is_no_live_dispatcher(rig: Rig) -> None:
    # `jobs submit --wait` with no dispatcher: its own jobs only, and others must not take
    # it for a live dispatcher (they would wait on it for ever).
    other = rig.submit()
    mine = rig.submit()
    rig.dispatcher = Dispatcher(rig.dispatcher._cluster, rig.store, dispatcher_id="d2",
                                node_api=rig.nodes, registry=rig.registry, only=[mine.id])
    rig.start()
    assert rig.wait_state(mine.id, "done").state == "done"
    time.sleep(0.2)
    assert rig.store.jobs[other.id].state == "queued"
    assert rig.store.live_dispatchers(within=10) == ()
