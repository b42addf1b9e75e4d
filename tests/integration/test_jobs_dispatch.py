"""The dispatcher on real hosts and a real PostgreSQL queue, with `run` jobs (plain shell
commands: no engine to install): done, failed with the stderr tail, cancel kills the remote
command, and a frozen node's job completes on another node within the failover budget,
its orphan killed once the node answers again.

Heartbeats are written by the test (every node fresh, with cpu_busy), so routing sees the
nodes as a daemon would report them; the voice engines' own tests (stt/tts) come with the
engines' bootstrap.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from skeleton_app.cluster import Cluster
from skeleton_app.config import Settings
from skeleton_app.ops.jobs.dispatcher import Dispatcher
from skeleton_app.ops.jobs.queue import Jobs
from skeleton_app.registry import NodeDefaults, NodeSpec, PostgresRegistry
from skeleton_app.testing.testbed import Testbed, faults

APP_DIR = "/tmp/jobs-dispatch-app"
ROLE = "stt"  # the testbed's odd hosts


def _wait_for(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


@contextmanager
def _queue(settings: Settings, db_dsn: str) -> Iterator[tuple[Cluster, Jobs, list[str]]]:
    """The testbed's nodes in a fresh registry with fresh heartbeats, and a dispatcher."""
    settings = dataclasses.replace(
        settings, registry=dataclasses.replace(settings.registry, dsn=db_dsn),
        jobs=dataclasses.replace(settings.jobs, poll=0.5, lease=6.0, cooldown=30.0),
        app=dataclasses.replace(settings.app, dir=APP_DIR))
    defaults = NodeDefaults.from_settings(settings)
    with PostgresRegistry(db_dsn, defaults=defaults) as registry:
        for node in settings.nodes:
            registry.upsert_node(NodeSpec.from_node(node, capabilities={"cpu_count": 2}))
    stop_beats = threading.Event()

    def beats() -> None:
        with PostgresRegistry(db_dsn, defaults=defaults) as own:
            while not stop_beats.is_set():
                for node in settings.nodes:
                    own.heartbeat(node.id, metrics={"cpu_busy": 0.1, "mem_total": 100,
                                                    "mem_available": 90})
                stop_beats.wait(1.0)

    beater = threading.Thread(target=beats, daemon=True)
    beater.start()
    log: list[str] = []
    try:
        with Cluster(settings, settings.nodes) as cluster:
            result = cluster.run(f"mkdir -p {APP_DIR}")
            assert result.exit_code() == 0, result.to_json()
            jobs = cluster.jobs
            assert not jobs.dispatcher_running()
            stop = jobs.dispatcher(on_event=log.append).start()
            try:
                yield cluster, jobs, log
            finally:
                stop()
                assert not jobs.dispatcher_running()
    finally:
        stop_beats.set()
        beater.join(timeout=10)


def _running(jobs: Jobs, job_id: int) -> bool:
    attempts = jobs.store.attempts(job_id)
    return jobs.get(job_id).state == "running" and bool(attempts) \
        and attempts[-1].remote_pgid is not None


def test_jobs_run_fail_and_respect_roles(testbed: Testbed, settings: Settings, db_dsn: str,
                                         tmp_path: Path) -> None:
    with _queue(settings, db_dsn) as (_cluster, jobs, log):
        source = tmp_path / "in.txt"
        source.write_text("hello world\n")
        handle = jobs.submit("run", source, command="tr a-z A-Z < {input}; hostname",
                             role=ROLE)
        result = handle.result(timeout=30)
        assert result.ok, (result.job, log)
        assert result.text.startswith("HELLO WORLD\n")
        many = [jobs.submit("run", command="echo $$", role=ROLE) for _ in range(10)]
        for each in many:
            assert each.result(timeout=30).ok
        with_role = {n.id for n in jobs.settings.nodes if ROLE in n.roles}
        for each in (handle, *many):
            (attempt,) = jobs.store.attempts(each.id)
            assert attempt.node_id in with_role and attempt.outcome == "done"
        bad = jobs.submit("run", command="echo oops >&2; exit 3", role=ROLE).result(timeout=30)
        assert bad.job.state == "failed" and bad.job.error == "exit 3: oops", bad.job


def test_cancel_kills_the_remote_command(testbed: Testbed, settings: Settings,
                                         db_dsn: str) -> None:
    with _queue(settings, db_dsn) as (cluster, jobs, _log):
        slow = jobs.submit("run", command="sleep 60", role=ROLE)
        _wait_for(lambda: _running(jobs, slow.id), 20, "the job never started")
        (attempt,) = jobs.store.attempts(slow.id)
        jobs.cancel(slow.id)
        assert slow.result(timeout=15).job.state == "cancelled"
        (attempt,) = jobs.store.attempts(slow.id)
        assert attempt.outcome == "cancelled" and attempt.cleaned_at is not None
        node = next(n for n in jobs.settings.nodes if n.id == attempt.node_id)
        left = cluster.run("pgrep -x sleep || true", [node])
        assert left[node.id].stdout.strip() == "", left[node.id].stdout


def test_a_frozen_node_fails_over_within_the_budget(testbed: Testbed, settings: Settings,
                                                    db_dsn: str) -> None:
    with _queue(settings, db_dsn) as (_cluster, jobs, log):
        job = jobs.submit("run", command="sleep 3; echo survived", role=ROLE)
        _wait_for(lambda: _running(jobs, job.id), 20, "the job never started")
        first = jobs.store.attempts(job.id)[0].node_id
        frozen_at = time.monotonic()
        faults.freeze(testbed, first)
        try:
            _wait_for(lambda: len(jobs.store.attempts(job.id)) == 2, 30, "no failover")
            moved = time.monotonic() - frozen_at
            result = job.result(timeout=30)
        finally:
            faults.thaw(testbed, first)
        assert moved <= 3 * jobs.settings.ssh.keepalive + 1, (moved, log)
        assert result.ok and result.text == "survived\n"
        lost, done = jobs.store.attempts(job.id)
        assert (lost.node_id, lost.outcome) == (first, "lost")
        assert done.node_id != first and done.outcome == "done"
        assert done.reason["others"][first].startswith("cool-down until")
        # The orphan on the thawed node is killed by a sweep (every ~15 s).
        _wait_for(lambda: not jobs.store.cleanups(), 40, "the orphan was never killed")


def test_two_dispatchers_run_every_job_exactly_once(testbed: Testbed, settings: Settings,
                                                    db_dsn: str) -> None:
    from skeleton_app.registry.jobs import open_job_store

    with _queue(settings, db_dsn) as (cluster, jobs, log):
        other_store = open_job_store(cluster.settings)
        other = Dispatcher(cluster, other_store, dispatcher_id="second", on_event=log.append)
        stop_other = other.start()
        try:
            handles = [jobs.submit("run", command=f"echo {i}", role=ROLE) for i in range(50)]
            results = [h.result(timeout=60) for h in handles]
        finally:
            stop_other()
            other_store.close()
        assert [r.text for r in results] == [f"{i}\n" for i in range(50)]
        owners = set()
        for handle in handles:
            (attempt,) = jobs.store.attempts(handle.id)  # run once, never twice
            assert attempt.outcome == "done"
            owners.add(attempt.dispatcher)
        assert len(owners) == 2, owners  # both took jobs
