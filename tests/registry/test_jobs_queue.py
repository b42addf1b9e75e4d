"""The jobs queue (registry/jobs.py, migration 0003) against a real PostgreSQL: submit and
read back, SKIP LOCKED claims from many dispatchers at once, fenced leases, lease expiry
takeover, cancel and retry, NOTIFY, node loss and cool-down, the 2 -> 3 upgrade, and what a
node's own database role may not touch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any

import psycopg
import pytest
from psycopg import errors as pg_errors

from skeleton_app.engines import DEFAULT_ENGINES
from skeleton_app.errors import RegistryError, UsageError
from skeleton_app.nodes import Node
from skeleton_app.registry import PostgresRegistry, init_schema
from skeleton_app.registry import schema as schema_mod
from skeleton_app.registry.job_records import Job, JobEvent, JobSpec, Load, Route, Router
from skeleton_app.registry.jobs import PostgresJobStore, open_job_store
from tests.support.db_fixtures import TEST_DEFAULTS

STT, TTS = DEFAULT_ENGINES
LEASE = 0.5  # short: expiry tests wait a little longer than this
JOB_TABLES = ("jobs", "job_files", "job_attempts", "job_dispatchers", "job_node_cooldown")


def sql(dsn: str, query: str, params: Any = None) -> list[tuple[Any, ...]]:
    """Raw SQL as another writer would run it (no checks); the rows, if any."""
    with psycopg.connect(dsn, connect_timeout=5, autocommit=True) as conn:
        cur = conn.execute(query.encode(), params)
        return cur.fetchall() if cur.description else []


def spec(name: str = "a.wav") -> JobSpec:
    return JobSpec(engine=STT, input_name=name, label=name)


def submit(store: PostgresJobStore, name: str = "a.wav", *, data: bytes = b"RIFF....WAVE",
           max_attempts: int = 3) -> Job:
    return store.submit(spec(name), [(name, data)], submitted_by="tester@here",
                        max_attempts=max_attempts)


def router(nodes: Sequence[str] = ("n1", "n2"), *, slots: int = 100,
           seen: list[Load] | None = None) -> Router:
    """The least busy node not cooling down, with free slots; every Load kept in `seen`."""
    def route(job: Job, load: Load) -> Route | None:
        if seen is not None:
            seen.append(load)
        free = [n for n in nodes
                if n not in load.cooldown and load.running.get(n, 0) < slots]
        if not free:
            return None
        best = min(free, key=lambda n: (load.running.get(n, 0), n))
        return Route(node_id=best, reason={"policy": "test", "chosen": best})
    return route


@pytest.fixture
def store(db_dsn: str) -> Iterator[PostgresJobStore]:
    with PostgresJobStore(db_dsn, connect_timeout=5) as one:
        yield one


@pytest.fixture
def other(db_dsn: str) -> Iterator[PostgresJobStore]:
    """A second dispatcher's store (its own connection)."""
    with PostgresJobStore(db_dsn, connect_timeout=5) as one:
        yield one


# ---------------------------------------------------------------- submit and read back


def test_submit_get_list_and_files_round_trip(store: PostgresJobStore) -> None:
    data = bytes(range(256)) * 40
    job = submit(store, "a.wav", data=data)
    assert (job.state, job.engine, job.role, job.attempts, job.max_attempts) == (
        "queued", "stt", "stt_batch", 0, 3)
    assert job.spec == spec("a.wav") and job.submitted_by == "tester@here"
    assert job.node is None and not job.cancel_requested and not job.final
    assert store.get(job.id) == job and store.get(job.id + 1000) is None
    text_job = store.submit(JobSpec(engine=TTS, text="hello world", label="hello world"), [],
                            submitted_by="tester@here", max_attempts=1)
    assert [j.id for j in store.list()] == [text_job.id, job.id]  # newest first
    assert [j.id for j in store.list(limit=1)] == [text_job.id]
    assert store.list(states=("running", "done")) == ()
    with pytest.raises(UsageError, match="unknown job state"):
        store.list(states=("sleeping",))
    (meta,) = store.files(job.id)
    assert (meta.kind, meta.name, meta.size) == ("input", "a.wav", len(data))
    assert meta.sha256 == hashlib.sha256(data).hexdigest()
    assert store.file_data(job.id, "input", "a.wav") == data
    assert store.file_data(job.id, "output", "a.wav") is None
    assert store.files(text_job.id) == () and store.attempts(job.id) == ()


def test_bad_submissions_queue_nothing(store: PostgresJobStore) -> None:
    for name in ("../etc/passwd", ".hidden", "a b.wav"):
        with pytest.raises(UsageError, match="unsafe input file name"):
            store.submit(spec(), [(name, b"x")], submitted_by="t", max_attempts=1)
    with pytest.raises(UsageError, match="given twice"):
        store.submit(spec(), [("a.wav", b"x"), ("a.wav", b"y")], submitted_by="t",
                     max_attempts=1)
    with pytest.raises(UsageError, match="max_attempts"):
        store.submit(spec(), [], submitted_by="t", max_attempts=0)
    assert store.list() == ()


def test_rows_are_checked_on_read_and_a_bad_row_is_never_run(store: PostgresJobStore,
                                                            db_dsn: str) -> None:
    bad_state, bad_spec, good = submit(store, "a.wav"), submit(store, "b.wav"), submit(store)
    sql(db_dsn, "UPDATE jobs SET state = 'sleeping' WHERE id = %s", (bad_state.id,))
    sql(db_dsn, "UPDATE jobs SET spec = jsonb_set(spec, '{input_name}', '\"../x\"')"
                " WHERE id = %s", (bad_spec.id,))
    with pytest.raises(RegistryError, match=f"job {bad_state.id}: invalid row .*state"):
        store.get(bad_state.id)
    with pytest.raises(RegistryError, match="spec"):
        store.get(bad_spec.id)
    assert [j.id for j in store.list()] == [good.id]  # the bad rows skipped, not fatal
    claim = store.claim("d1", lease=5, route=router())
    assert claim is not None and claim.job.id == good.id
    # the bad spec was failed on the way (never routed, never run), the bad state left alone
    assert sql(db_dsn, "SELECT state, error LIKE 'invalid job row%%' FROM jobs WHERE id = %s",
               (bad_spec.id,)) == [("failed", True)]
    sql(db_dsn, "UPDATE job_files SET data = 'tampered' WHERE job_id = %s", (good.id,))
    with pytest.raises(RegistryError, match="does not match its stored size and sha256"):
        store.file_data(good.id, "input", "a.wav")


# ---------------------------------------------------------------------------- claims


def test_eight_dispatchers_claim_fifty_jobs_each_exactly_once(store: PostgresJobStore,
                                                              db_dsn: str) -> None:
    ids = {submit(store, f"j{i}.wav").id for i in range(50)}
    claimed: list[int] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    barrier = threading.Barrier(8)

    def dispatcher(k: int) -> None:
        try:
            with PostgresJobStore(db_dsn) as mine:
                barrier.wait()
                while (claim := mine.claim(f"d{k}", lease=30, route=router())) is not None:
                    with lock:
                        claimed.append(claim.job.id)
                    assert mine.finish(claim.job.id, claim.token, state="done", exit_code=0,
                                       error=None, stderr_tail="", result={"k": k})
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=dispatcher, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    assert Counter(claimed) == Counter(ids)  # every job once, none twice
    assert {j.state for j in store.list(limit=100)} == {"done"}
    assert sql(db_dsn, "SELECT count(*), count(DISTINCT lease_token), max(n)"
                       " FROM job_attempts") == [(50, 50, 1)]


def test_claims_are_serialised_so_slots_hold_across_dispatchers(store: PostgresJobStore,
                                                               db_dsn: str) -> None:
    for i in range(20):
        submit(store, f"j{i}.wav")
    got: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(8)

    def dispatcher(k: int) -> None:
        with PostgresJobStore(db_dsn) as mine:
            barrier.wait()
            while (claim := mine.claim(f"d{k}", lease=30,
                                       route=router(("n1", "n2"), slots=3))) is not None:
                with lock:
                    got.append(claim.attempt.node_id)

    threads = [threading.Thread(target=dispatcher, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    # No job ends, so only the 2 x 3 slots are ever taken, whatever the interleaving.
    assert Counter(got) == {"n1": 3, "n2": 3}
    assert len(store.list(states=("queued",))) == 14


def test_a_claim_records_the_attempt_and_the_router_sees_the_load(
        store: PostgresJobStore, db_dsn: str) -> None:
    first, second = submit(store, "a.wav"), submit(store, "b.wav")
    seen: list[Load] = []
    claim = store.claim("d1", lease=5, route=router(seen=seen))
    assert claim is not None and claim.job.id == first.id  # oldest first
    assert (claim.job.state, claim.job.attempts, claim.job.lease_owner, claim.job.node) == (
        "running", 1, "d1", "n1")
    assert claim.job.lease_until is not None and claim.job.lease_until > seen[0].now
    attempt = claim.attempt
    assert (attempt.n, attempt.node_id, attempt.dispatcher, attempt.lease_token,
            attempt.outcome, dict(attempt.reason)) == (
        1, "n1", "d1", claim.token, "running", {"policy": "test", "chosen": "n1"})
    assert store.attempts(first.id) == (attempt,)
    again = store.claim("d1", lease=5, route=router(seen=seen))
    assert again is not None and again.job.id == second.id and again.token > claim.token
    assert seen[-1].running == {"n1": 1} and again.attempt.node_id == "n2"
    # A job whose row another transaction holds (a cancel in flight) is skipped, not waited
    # for.
    locked, free = submit(store, "l.wav"), submit(store, "f.wav")
    with psycopg.connect(db_dsn, connect_timeout=5) as holder:
        holder.execute("SELECT 1 FROM jobs WHERE id = %s FOR UPDATE", (locked.id,))
        started = time.monotonic()
        skipped = store.claim("d1", lease=5, route=router())
        assert time.monotonic() - started < 2
        assert skipped is not None and skipped.job.id == free.id
        holder.rollback()
    assert store.cancel(locked.id) is not None
    # Nothing routable: the job stays queued, and None is returned.
    third = submit(store, "c.wav")
    assert store.claim("d1", lease=5, route=lambda job, load: None) is None
    assert store.get(third.id) == third


# --------------------------------------------------------------- fencing and leases


def test_claim_many_counts_each_claim_in_the_next_routing(store: PostgresJobStore,
                                                           other: PostgresJobStore) -> None:
    jobs = [submit(store, f"{i}.wav") for i in range(6)]
    seen: list[Load] = []
    claims = store.claim_many("d1", lease=30, route=router(slots=2, seen=seen), most=5)
    # Two slots on each of two nodes: four claims, in job order, spread by the counts.
    assert [c.job.id for c in claims] == [j.id for j in jobs[:4]]
    assert Counter(c.attempt.node_id for c in claims) == {"n1": 2, "n2": 2}
    assert [dict(load.running) for load in seen[:4]] == [
        {}, {"n1": 1}, {"n1": 1, "n2": 1}, {"n1": 2, "n2": 1}]
    assert all(store.get(c.job.id).state == "running" for c in claims)  # type: ignore[union-attr]
    # Committed: another dispatcher sees those four running, and `most` bounds a batch.
    assert other.claim_many("d2", lease=30, route=router(slots=2), most=5) == ()
    assert len(other.claim_many("d2", lease=30, route=router(slots=3), most=1)) == 1


def test_finish_records_the_pgid_unless_started_did(store: PostgresJobStore) -> None:
    first, second = submit(store, "a.wav"), submit(store, "b.wav")
    quick = store.claim("d1", lease=30, route=router())
    slow = store.claim("d1", lease=30, route=router())
    assert quick is not None and slow is not None
    assert store.started(slow.job.id, slow.token, remote_pgid=4242)
    for claim, pgid in ((quick, 77), (slow, 99)):
        assert store.finish(claim.job.id, claim.token, state="done", exit_code=0, error=None,
                            stderr_tail="", result={}, remote_pgid=pgid)
    assert [a.remote_pgid for a in store.attempts(first.id)] == [77]
    assert [a.remote_pgid for a in store.attempts(second.id)] == [4242]  # started's stands


def test_a_stale_token_writes_nothing(store: PostgresJobStore, other: PostgresJobStore,
                                      db_dsn: str) -> None:
    job = submit(store)
    old = store.claim("d1", lease=LEASE, route=router())
    assert old is not None
    assert store.renew(job.id, old.token, lease=LEASE)
    assert store.started(job.id, old.token, remote_pgid=4242)
    time.sleep(LEASE + 0.3)
    new = other.claim("d2", lease=30, route=router())
    assert new is not None and new.job.id == job.id and new.token > old.token
    before = (other.get(job.id), other.attempts(job.id), other.files(job.id))
    assert not store.renew(job.id, old.token, lease=LEASE)
    assert not store.started(job.id, old.token, remote_pgid=1)
    assert not store.finish(job.id, old.token, state="done", exit_code=0, error=None,
                            stderr_tail="late", result={"late": True},
                            outputs=[("output.txt", b"late")])
    assert store.lose(job.id, old.token, why="late", cooldown=60) is None
    assert (other.get(job.id), other.attempts(job.id), other.files(job.id)) == before
    assert sql(db_dsn, "SELECT count(*) FROM job_node_cooldown") == [(0,)]
    # The holder of the current token ends it, exactly once.
    assert other.finish(job.id, new.token, state="done", exit_code=0, error=None,
                        stderr_tail="", result={"output": "output.txt"},
                        outputs=[("output.txt", b"hello world\n")])
    assert not other.finish(job.id, new.token, state="failed", exit_code=1, error="twice",
                            stderr_tail="", result={})
    done = other.get(job.id)
    assert done is not None and (done.state, done.exit_code, dict(done.result)) == (
        "done", 0, {"output": "output.txt"})
    assert done.final and done.finished_at is not None
    assert other.file_data(job.id, "output", "output.txt") == b"hello world\n"
    assert [a.outcome for a in other.attempts(job.id)] == ["superseded", "done"]


def test_an_expired_lease_is_taken_over(store: PostgresJobStore, other: PostgresJobStore) -> None:
    job = submit(store)
    old = store.claim("d1", lease=30, route=router(("n1",)))
    assert old is not None and store.started(job.id, old.token, remote_pgid=4242)
    assert other.claim("d2", lease=30, route=router(("n1",))) is None  # not expired yet
    # d1's last renewal is a short one, then it stops (dies) and the lease runs out.
    assert store.renew(job.id, old.token, lease=LEASE)
    time.sleep(LEASE + 0.3)
    seen: list[Load] = []
    new = other.claim("d2", lease=30, route=router(("n1",), seen=seen))
    assert new is not None and new.job.id == job.id
    assert seen[-1].running == {}  # the superseded attempt no longer holds a slot
    assert (new.job.attempts, new.job.lease_owner, new.attempt.n) == (2, "d2", 2)
    first, second = other.attempts(job.id)
    assert (first.outcome, first.remote_pgid, first.lease_token) == (
        "superseded", 4242, old.token)
    assert first.ended_at is not None and first.ended_at <= second.started_at
    assert second.outcome == "running" and second.lease_token == new.token
    # The superseded attempt's process may still run on n1: the sweep is told, once.
    (cleanup,) = other.cleanups()
    assert (cleanup.job_id, cleanup.n, cleanup.node_id, cleanup.remote_pgid) == (
        job.id, 1, "n1", 4242)
    other.cleaned(job.id, 1)
    assert other.cleanups() == ()


def test_an_expired_lease_on_the_last_attempt_fails_the_job(store: PostgresJobStore) -> None:
    job = submit(store, max_attempts=1)
    assert store.claim("d1", lease=LEASE, route=router()) is not None
    time.sleep(LEASE + 0.3)
    assert store.claim("d2", lease=5, route=router()) is None
    failed = store.get(job.id)
    assert failed is not None and failed.state == "failed"
    assert "lease" in (failed.error or "")


# -------------------------------------------------------------------- cancel, retry


def test_cancel_queued_running_and_final(store: PostgresJobStore, other: PostgresJobStore) -> None:
    queued = submit(store, "a.wav")
    cancelled = store.cancel(queued.id)
    assert cancelled is not None and cancelled.state == "cancelled" and cancelled.final
    assert store.cancel(queued.id) == cancelled  # final: as is
    assert store.cancel(10_000) is None

    running = submit(store, "b.wav")
    claim = store.claim("d1", lease=30, route=router())
    assert claim is not None and claim.job.id == running.id
    asked = store.cancel(running.id)
    assert asked is not None and (asked.state, asked.cancel_requested) == ("running", True)
    # the owner kills it and ends it, fenced
    assert store.finish(running.id, claim.token, state="cancelled", exit_code=None,
                        error="cancelled", stderr_tail="", result={})
    ended = store.get(running.id)
    assert ended is not None and ended.state == "cancelled"
    assert [a.outcome for a in store.attempts(running.id)] == ["cancelled"]

    # The owner died: the dispatcher that takes the lease over cancels instead of running.
    orphan = submit(store, "c.wav")
    dead = store.claim("d1", lease=LEASE, route=router())
    assert dead is not None and dead.job.id == orphan.id
    store.cancel(orphan.id)
    time.sleep(LEASE + 0.3)
    assert other.claim("d2", lease=30, route=router()) is None
    gone = other.get(orphan.id)
    assert gone is not None and gone.state == "cancelled"
    assert [a.outcome for a in other.attempts(orphan.id)] == ["superseded"]
    assert [c.job_id for c in other.cleanups()] == [running.id, orphan.id]

    # No dispatcher holds the lease any more and none claims: cancel ends it at once, and
    # its attempt waits for the clean-up sweep.
    unowned = submit(store, "d.wav")
    lapsed = store.claim("d1", lease=LEASE, route=router())
    assert lapsed is not None and lapsed.job.id == unowned.id
    time.sleep(LEASE + 0.3)
    now = store.cancel(unowned.id)
    assert now is not None and now.state == "cancelled" and now.final
    assert [a.outcome for a in store.attempts(unowned.id)] == ["cancelled"]
    assert unowned.id in [c.job_id for c in store.cleanups()]
    assert not store.finish(unowned.id, lapsed.token, state="done", exit_code=0, error=None,
                            stderr_tail="", result={})


def test_retry_only_from_failed_or_cancelled(store: PostgresJobStore) -> None:
    job = submit(store, max_attempts=2)
    assert store.retry(job.id) == job  # queued: unchanged
    claim = store.claim("d1", lease=30, route=router())
    assert claim is not None
    assert store.retry(job.id) == store.get(job.id)  # running: unchanged
    assert store.finish(job.id, claim.token, state="failed", exit_code=3, error="exit 3",
                        stderr_tail="boom", result={}, outputs=[("output.txt", b"partial")])
    again = store.retry(job.id)
    assert again is not None and (again.state, again.attempts, again.error, again.exit_code,
                                  again.finished_at, dict(again.result)) == (
        "queued", 0, None, None, None, {})
    assert [f.kind for f in store.files(job.id)] == ["input"]  # the old output is gone
    second = store.claim("d1", lease=30, route=router())
    assert second is not None and second.job.id == job.id
    assert (second.job.attempts, second.attempt.n) == (1, 2)  # numbering continues
    assert store.finish(job.id, second.token, state="done", exit_code=0, error=None,
                        stderr_tail="", result={})
    done = store.get(job.id)
    assert done is not None and store.retry(job.id) == done  # done: unchanged
    assert store.retry(10_000) is None


# --------------------------------------------------------------------------- NOTIFY


def _events_until(store: PostgresJobStore, listener: Any, n: int) -> list[JobEvent]:
    events: list[JobEvent] = []
    deadline = time.monotonic() + 5
    while len(events) < n and time.monotonic() < deadline:
        events += listener.wait(0.5)
    return events


def test_notify_reaches_a_listener(store: PostgresJobStore, other: PostgresJobStore,
                                   db_dsn: str) -> None:
    with other.listen() as listener:
        assert listener.wait(0.05) == []
        job = submit(store)
        started = time.monotonic()
        (event,) = _events_until(store, listener, 1)
        assert time.monotonic() - started < 1.0
        assert event == JobEvent(id=job.id, state="queued", engine="stt", attempt=0,
                                 cancel=False)
        claim = store.claim("d1", lease=30, route=router())
        assert claim is not None
        store.renew(job.id, claim.token, lease=30)  # no state change: no event
        store.cancel(job.id)
        # junk on the channel (anyone may NOTIFY) is dropped
        sql(db_dsn, "SELECT pg_notify('skeleton_jobs', 'not json'),"
                    " pg_notify('skeleton_jobs', '{\"id\": \"1; DROP\"}')")
        assert store.finish(job.id, claim.token, state="cancelled", exit_code=None,
                            error=None, stderr_tail="", result={})
        events = _events_until(store, listener, 3)
        assert [(e.state, e.attempt, e.cancel) for e in events] == [
            ("running", 1, False), ("running", 1, True), ("cancelled", 1, True)]
        assert listener.wait(0.2) == []


# ------------------------------------------------------------------ node loss, cool-down


def test_lose_cools_the_node_down_and_requeues_until_max_attempts(store: PostgresJobStore) -> None:
    job = submit(store, max_attempts=2)
    first = store.claim("d1", lease=30, route=router(("n1", "n2")))
    assert first is not None and first.attempt.node_id == "n1"
    assert store.lose(job.id, first.token, why="ssh probe failed", cooldown=30) == "queued"
    requeued = store.get(job.id)
    assert requeued is not None and (requeued.state, requeued.lease_owner) == ("queued", None)
    seen: list[Load] = []
    second = store.claim("d1", lease=30, route=router(("n1", "n2"), seen=seen))
    assert second is not None and second.attempt.node_id == "n2"  # n1 is cooling down
    until, why = seen[-1].cooldown["n1"]
    assert until > seen[-1].now and "ssh probe failed" in why and f"job {job.id}" in why
    assert "n1" in seen[-1].idle_since and seen[-1].running == {}
    assert store.lose(job.id, second.token, why="connection dropped", cooldown=30) == "failed"
    failed = store.get(job.id)
    assert failed is not None and failed.state == "failed" and failed.finished_at
    assert "n2" in (failed.error or "") and "attempt 2 of 2" in (failed.error or "")
    assert [a.outcome for a in store.attempts(job.id)] == ["lost", "lost"]
    assert {(c.node_id, c.n) for c in store.cleanups()} == {("n1", 1), ("n2", 2)}
    assert store.lose(job.id, second.token, why="again", cooldown=30) is None


def test_a_cooldown_ends(store: PostgresJobStore) -> None:
    job = submit(store)
    claim = store.claim("d1", lease=30, route=router(("n1",)))
    assert claim is not None
    store.lose(job.id, claim.token, why="gone", cooldown=0.3)
    assert store.claim("d1", lease=30, route=router(("n1",))) is None
    time.sleep(0.4)
    again = store.claim("d1", lease=30, route=router(("n1",)))
    assert again is not None and again.attempt.node_id == "n1"


def test_lose_of_a_job_asked_to_cancel_cancels_it(store: PostgresJobStore) -> None:
    job = submit(store)
    claim = store.claim("d1", lease=30, route=router())
    assert claim is not None
    store.cancel(job.id)
    assert store.lose(job.id, claim.token, why="gone", cooldown=1) == "cancelled"


# ----------------------------------------------------------------------- dispatchers


def test_dispatcher_heartbeats(store: PostgresJobStore, db_dsn: str) -> None:
    assert store.live_dispatchers(within=10) == ()
    store.dispatcher_seen("d1", host="h1", pid=11)
    store.dispatcher_seen("d2", host="h2", pid=22)
    store.dispatcher_seen("d1", host="h1", pid=12)
    assert store.live_dispatchers(within=10) == ("d1", "d2")
    sql(db_dsn, "UPDATE job_dispatchers SET seen_at = now() - interval '1 minute'"
                " WHERE id = 'd2'")
    assert store.live_dispatchers(within=10) == ("d1",)
    store.dispatcher_gone("d1")
    assert store.live_dispatchers(within=10) == ()
    assert sql(db_dsn, "SELECT id, pid FROM job_dispatchers") == [("d2", 22)]


# --------------------------------------------------------------- schema and rights


def test_upgrade_from_version_2_keeps_the_data(
        empty_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    shipped = schema_mod.migrations()
    assert [m.name for m in shipped][2] == "0003_jobs.sql"
    last = len(shipped)  # later migrations apply on top: the data must survive them all
    with monkeypatch.context() as patch:
        patch.setattr(schema_mod, "migrations", lambda: shipped[:2])
        assert init_schema(empty_dsn).after == 2
        with PostgresRegistry(empty_dsn, defaults=TEST_DEFAULTS) as reg:
            reg.upsert_node(Node(id="n1", host="10.0.0.1"))
    with PostgresJobStore(empty_dsn) as old, \
            pytest.raises(RegistryError,
                          match=f"version 2, this skeleton_app needs version {last}"):
        old.list()
    status = init_schema(empty_dsn)
    assert (status.before, status.after, status.applied) == (
        2, last, tuple(m.name for m in shipped[2:]))
    with PostgresRegistry(empty_dsn, defaults=TEST_DEFAULTS) as reg:
        assert [n.id for n in reg.list_nodes()[0]] == ["n1"]
    with PostgresJobStore(empty_dsn) as jobs:
        job = submit(jobs)
        assert jobs.list() == (job,)


def test_a_node_role_cannot_touch_the_queue(registry: PostgresRegistry, db_dsn: str) -> None:
    registry.upsert_node(Node(id="node-02", host="10.0.0.2"))
    node_dsn = registry.issue_credentials("node-02")
    with PostgresJobStore(db_dsn) as operator:
        job = submit(operator)
    attempts = {f"read {t}": f"SELECT * FROM {t}" for t in JOB_TABLES}
    attempts |= {
        "insert a job": "INSERT INTO jobs (engine, role, spec, submitted_by, max_attempts)"
                        " VALUES ('x', 'y', '{}', 'z', 1)",
        "cancel": f"UPDATE jobs SET cancel_requested = true WHERE id = {job.id}",
        "a token": "SELECT nextval('job_lease_seq')",
        "cool a node": "INSERT INTO job_node_cooldown VALUES ('n1', now(), 'x')",
    }
    refused: dict[str, str] = {}
    with psycopg.connect(node_dsn, connect_timeout=5, autocommit=True) as conn:
        for what, statement in attempts.items():
            try:
                conn.execute(statement.encode())
                refused[what] = "allowed"
            except pg_errors.InsufficientPrivilege:
                refused[what] = "refused"
    assert refused == dict.fromkeys(attempts, "refused")
    with PostgresJobStore(node_dsn) as node, \
            pytest.raises(RegistryError, match="permission denied"):
        node.list()
    with PostgresJobStore(db_dsn) as operator:
        assert operator.get(job.id) == job


def test_open_job_store_needs_a_database(db_dsn: str) -> None:
    from skeleton_app.config import RegistrySettings, Settings

    with pytest.raises(UsageError, match="needs a database"):
        open_job_store(Settings())
    settings = dataclasses.replace(Settings(), registry=RegistrySettings(dsn=db_dsn))
    store = open_job_store(settings)
    try:
        assert store.list() == ()
    finally:
        store.close()


def test_jobs_no_node_can_take_never_hide_the_ones_behind(store: PostgresJobStore) -> None:
    # 20 jobs for a role whose nodes are all down, then one that a node can take: a claim
    # reads past the first page (16) and asks the router once per engine, not per job.
    from skeleton_app.engines import Engine

    gpu = Engine(name="whisper", role="gpu", command="whisper {input}", input="audio")
    for n in range(20):
        store.submit(JobSpec(engine=gpu, input_name=f"g{n}.wav", label=f"g{n}"),
                     [(f"g{n}.wav", b"RIFF")], submitted_by="t", max_attempts=1)
    ready = submit(store, "ready.wav")
    asked: list[int] = []

    def route(job: Job, load: Load) -> Route | None:
        asked.append(job.id)
        return None if job.spec.engine.role == "gpu" else Route("n1", {})

    claim = store.claim("d1", lease=30, route=route)
    assert claim is not None and claim.job.id == ready.id
    assert len(asked) == 2  # one gpu job (then its engine is skipped), and the ready one


def test_a_claim_limited_to_some_ids_takes_no_other(store: PostgresJobStore) -> None:
    first, second = submit(store, "a.wav"), submit(store, "b.wav")
    claim = store.claim("d1", lease=30, route=router(), only=[second.id])
    assert claim is not None and claim.job.id == second.id
    assert store.claim("d1", lease=30, route=router(), only=[second.id]) is None
    left = store.get(first.id)
    assert left is not None and left.state == "queued"
