"""Case 7 (issue 14): the queue's guarantees under faults, on 8 hosts with the registry.

    7a  failover: the node running a job is frozen (every process SIGSTOPped: TCP still
        accepts, nothing answers); the time from the freeze to the job's second attempt
        starting on another node. Goal ≤ 3 × ssh.keepalive + 1 s.
    7b  chaos: a dispatcher process (`skeleton jobs dispatch`) is SIGKILLed at a random moment
        while its jobs run, a second one takes over when the leases expire; then the
        database must show every job `done` exactly once. Goal: 0 lost, 0 twice in 20 runs.

The chaos runs go first (a failover leaves its node cooling down). Both read one clock, the
database's: the freeze and the kill are stamped with `SELECT clock_timestamp()` at that
moment, attempts carry `started_at`/`ended_at` written by the same server. No deploy or
bootstrap is needed (`run` jobs are plain shell commands), so the hosts are the testbed's as
registered by `testbed.up(db=True)`, and the node heartbeats that routing wants are written
here, as a daemon would (a frozen node's stop with it).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import random
import signal
import statistics
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
import yaml

from bench import cases, peers
from bench.jobs_ours import Ours, OursUnavailable, jobs_of
from bench.measure import BenchError
from bench.report import Case, Goal, Row
from skeleton_app.errors import SkeletonError
from skeleton_app.registry.job_records import JobStore
from skeleton_app.testing.testbed import Testbed, faults

if TYPE_CHECKING:
    from skeleton_app.cluster import Cluster

HOSTS = 8
ROLE = "testbed"
FAILOVER_JOB = "sleep 4; echo survived"
CHAOS_JOBS = 12
CHAOS_SLEEP = 1.0  # seconds each chaos job runs
CHAOS_SLOTS = 1  # per host: 12 jobs on 8 hosts make two waves, so jobs run at any kill time
CHAOS_LEASE = 2.0  # jobs.lease for the chaos runs: a killed dispatcher's jobs free up fast
CHAOS_GOAL_RUNS = 20
MARKS = "/tmp/skeleton-bench-chaos"  # on each host: a line per command run to its end
KILL_WINDOW = 2.0  # the kill comes uniformly within this many s of the first job starting
OURS = "skeleton jobs"
FAILOVER = "failover: node frozen mid-job → second attempt started"
TAKEOVER = "chaos: SIGKILL of the dispatcher → a job it ran started again"
CHAOS_RUN = f"chaos: {CHAOS_JOBS} jobs (`sleep {CHAOS_SLEEP:g}`), one dispatcher killed, whole run"


# What ends a sub-case with a note instead of ending the benchmark.
FAILURES = (BenchError, OursUnavailable, SkeletonError, psycopg.Error, TimeoutError, OSError)


def roles(count: int) -> dict[str, tuple[str, ...]]:
    return {f"node-{i:02d}": (ROLE,) for i in range(1, count + 1)}


# ------------------------------------------------------------------ set-up


def write_config(tb: Testbed, path: Path, jobs: dict[str, Any]) -> Path:
    data = yaml.safe_load(tb.config_path.read_text())
    data["jobs"] = {**data.get("jobs", {}), **jobs}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _settings(config: Path) -> Any:
    from skeleton_app.config import load_config

    return load_config(config, env={})


class Heartbeats:
    """Fresh heartbeats for every host but the frozen ones (a frozen daemon is silent)."""

    def __init__(self, config: Path, node_ids: Sequence[str]):
        self.settings = _settings(config)
        self.node_ids = tuple(node_ids)
        self.frozen: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True, name="heartbeats")

    def _beat(self) -> None:
        from skeleton_app.registry import open_registry

        with open_registry(self.settings) as registry:
            while not self._stop.is_set():
                for node_id in self.node_ids:
                    if node_id not in self.frozen:
                        registry.heartbeat(node_id, metrics={
                            "cpu_busy": 0.1, "mem_total": 100, "mem_available": 90})
                self._stop.wait(1.0)

    def __enter__(self) -> Heartbeats:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def db_now(conn: psycopg.Connection[Any]) -> datetime:
    row = conn.execute("SELECT clock_timestamp()").fetchone()
    assert row is not None
    value: datetime = row[0]
    return value


def _wait(predicate: Callable[[], bool], timeout: float, what: str, step: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise BenchError(f"{what} after {timeout:.0f} s")
        time.sleep(step)


# ------------------------------------------------------------------ 7a: failover


@dataclass(frozen=True, slots=True)
class Failover:
    node: str  # the frozen one
    seconds: float  # freeze → second attempt's started_at (database clock)
    first_outcome: str
    second_node: str
    job_state: str
    text: str


def _moved(store: JobStore, job_id: int) -> bool:
    return len(store.attempts(job_id)) >= 2


def failover_runs(tb: Testbed, config: Path, beats: Heartbeats, runs: int,
                  say: Callable[[str], None]) -> list[Failover]:
    assert tb.db is not None
    got: list[Failover] = []
    with Ours.open(config) as ours, psycopg.connect(tb.db.dsn, autocommit=True) as conn:
        store = ours.store
        for i in range(runs):
            handle = ours.jobs.submit("run", command=FAILOVER_JOB, role=ROLE)

            def running(job_id: int = handle.id) -> bool:
                attempts = store.attempts(job_id)
                return bool(attempts) and attempts[-1].remote_pgid is not None

            _wait(running, 30, f"failover run {i + 1}: the job never started")
            time.sleep(random.uniform(0.0, 1.0))  # somewhere in its first second
            node = store.attempts(handle.id)[0].node_id
            beats.frozen.add(node)
            frozen_at = db_now(conn)
            faults.freeze(tb, node)
            try:
                _wait(functools.partial(_moved, store, handle.id), 60,
                      f"failover run {i + 1}: no second attempt")
                result = handle.result(timeout=60)
            finally:
                faults.thaw(tb, node)
                beats.frozen.discard(node)
            first, second = store.attempts(handle.id)[:2]
            seconds = (second.started_at - frozen_at).total_seconds()
            got.append(Failover(node, seconds, first.outcome, second.node_id,
                                result.job.state, result.text if result.ok else ""))
            say(f"case 7a: run {i + 1}/{runs}: {node} frozen, job on {second.node_id} after"
                f" {seconds:.2f} s, {result.job.state}")
    return got


# ------------------------------------------------------------------ 7b: chaos


@dataclass(frozen=True, slots=True)
class ChaosRun:
    jobs: int
    lost: int  # not `done` at the end (or no done attempt)
    twice: int  # more than one `done` attempt
    overlaps: int  # two attempts of one job both running at one moment
    superseded: int  # attempts taken over from the killed dispatcher
    running_at_kill: int  # the killed dispatcher's attempts running when it died
    done_at_kill: int
    takeover: float  # kill → first attempt after a superseded one (s, database clock)
    seconds: float  # first submit → every job final (wall clock)
    problems: tuple[str, ...]
    ran_twice: int = 0  # jobs whose command ran to its end on two attempts (marks)
    ran_none: int = 0  # jobs whose command left no mark


class Dispatchers:
    """`skeleton jobs dispatch` processes started here; only these are ever signalled."""

    def __init__(self, config: Path, log: Path):
        self.config = config
        self.log = log
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self) -> subprocess.Popen[bytes]:
        with self.log.open("ab") as out:
            proc = subprocess.Popen(
                [peers.skeleton_bin(), "jobs", "dispatch", "--config", str(self.config)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                env={"PATH": peers.PATH, "HOME": str(self.log.parent), "LANG": "C.UTF-8"})
        self.procs.append(proc)
        return proc

    @staticmethod
    def stop(proc: subprocess.Popen[bytes]) -> None:
        """Ctrl-C, as a user stops it; SIGKILL if it does not end."""
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def close(self) -> None:
        for proc in self.procs:
            self.stop(proc)


def _id_pattern(proc: subprocess.Popen[bytes]) -> str:
    """The LIKE pattern of a dispatcher process's id (host:pid:random, dispatcher.py)."""
    return f"%:{proc.pid}:%"


def chaos_run(conn: psycopg.Connection[Any], submit: Callable[[int], int],
              dispatchers: Dispatchers, rng: random.Random) -> ChaosRun:
    started = time.monotonic()
    ids = [submit(i) for i in range(CHAOS_JOBS)]
    first = dispatchers.start()
    pattern = _id_pattern(first)

    def first_running() -> bool:
        row = conn.execute("SELECT count(*) FROM job_attempts WHERE job_id = ANY(%s)"
                           " AND dispatcher LIKE %s", (ids, pattern)).fetchone()
        return row is not None and row[0] > 0

    try:
        _wait(first_running, 60, "the first dispatcher never started a job", step=0.02)
        time.sleep(rng.uniform(0.0, KILL_WINDOW))
        first.send_signal(signal.SIGKILL)
        first.wait()
        killed_at = db_now(conn)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    at_kill = conn.execute(
        "SELECT count(*) FILTER (WHERE a.outcome = 'running'),"
        " count(*) FILTER (WHERE a.outcome = 'done')"
        " FROM job_attempts a WHERE a.job_id = ANY(%s) AND a.dispatcher LIKE %s",
        (ids, pattern)).fetchone()
    assert at_kill is not None
    second = dispatchers.start()
    try:
        def all_final() -> bool:
            row = conn.execute("SELECT count(*) FROM jobs WHERE id = ANY(%s)"
                               " AND state IN ('done', 'failed', 'cancelled')",
                               (ids,)).fetchone()
            return row is not None and row[0] == len(ids)

        _wait(all_final, 90, "jobs not final", step=0.1)
        seconds = time.monotonic() - started
    finally:
        dispatchers.stop(second)
    return _check(conn, ids, killed_at, int(at_kill[0]), int(at_kill[1]), seconds)


@dataclass(frozen=True, slots=True)
class Tried:
    """One attempt as the database has it."""

    n: int
    outcome: str
    started_at: datetime
    ended_at: datetime | None
    dispatcher: str


@dataclass(frozen=True, slots=True)
class Verdict:
    lost: int
    twice: int
    overlaps: int
    superseded: int
    takeover: float  # kill → the first attempt after a superseded one (s); NaN: none
    problems: tuple[str, ...]


def judge(ids: Sequence[int], states: Mapping[int, str],
          attempts: Mapping[int, Sequence[Tried]], killed_at: datetime) -> Verdict:
    """Every job `done` with exactly one attempt `done`; each attempt ended before the next
    one of its job started (none still running); when the killed dispatcher's jobs were
    taken over."""
    lost = twice = overlaps = superseded = 0
    problems: list[str] = []
    retakes: list[datetime] = []
    for job_id in ids:
        mine = sorted(attempts.get(job_id, ()), key=lambda a: a.n)
        done = [a for a in mine if a.outcome == "done"]
        if states.get(job_id) != "done" or not done:
            lost += 1
            problems.append(f"job {job_id}: {states.get(job_id)}, attempts"
                            f" {[a.outcome for a in mine]}")
        if len(done) > 1:
            twice += 1
            problems.append(f"job {job_id}: {len(done)} attempts done")
        superseded += sum(a.outcome == "superseded" for a in mine)
        for before, after in itertools.pairwise(mine):
            if before.outcome == "superseded":
                retakes.append(after.started_at)
            if before.ended_at is None or before.ended_at > after.started_at:
                overlaps += 1
                problems.append(f"job {job_id}: attempt {before.n} ({before.outcome}, ended"
                                f" {before.ended_at}) overlaps attempt {after.n} (started"
                                f" {after.started_at})")
        if mine and mine[-1].outcome == "running":
            problems.append(f"job {job_id}: attempt {mine[-1].n} still running")
    takeover = (min(retakes) - killed_at).total_seconds() if retakes else float("nan")
    return Verdict(lost, twice, overlaps, superseded, takeover, tuple(problems))


def _check(conn: psycopg.Connection[Any], ids: list[int], killed_at: datetime,
           running_at_kill: int, done_at_kill: int, seconds: float) -> ChaosRun:
    """What the database says of the run's jobs (`judge`)."""
    states = {int(i): str(st) for i, st in conn.execute(
        "SELECT id, state FROM jobs WHERE id = ANY(%s)", (ids,))}
    attempts: dict[int, list[Tried]] = {}
    for job_id, n, outcome, start, end, dispatcher in conn.execute(
            "SELECT job_id, n, outcome, started_at, ended_at, dispatcher FROM job_attempts"
            " WHERE job_id = ANY(%s) ORDER BY job_id, n", (ids,)):
        attempts.setdefault(job_id, []).append(Tried(n, outcome, start, end, dispatcher))
    v = judge(ids, states, attempts, killed_at)
    return ChaosRun(len(ids), v.lost, v.twice, v.overlaps, v.superseded, running_at_kill,
                    done_at_kill, v.takeover, seconds, v.problems)


def chaos_runs(tb: Testbed, config: Path, runs: int, log: Path,
               say: Callable[[str], None]) -> list[ChaosRun]:
    from skeleton_app.cluster import Cluster

    assert tb.db is not None
    rng = random.Random()
    got: list[ChaosRun] = []
    dispatchers = Dispatchers(config, log)
    with contextlib.ExitStack() as stack:
        stack.callback(dispatchers.close)
        cluster = stack.enter_context(Cluster.from_config(config, env={}))
        jobs = jobs_of(cluster)
        conn = stack.enter_context(psycopg.connect(tb.db.dsn, autocommit=True))
        cluster.run(f"rm -rf {MARKS}", timeout=30)  # an earlier benchmark's marks

        for i in range(runs):
            def submit(job: int, run_n: int = i) -> int:
                # Each command leaves a mark on its node when it runs to its end: the
                # database counts ends recorded, the marks count ends that happened.
                command = (f"sleep {CHAOS_SLEEP:g}; mkdir -p {MARKS}; echo \"$(hostname) $$\""
                           f" >> {MARKS}/r{run_n}-j{job}")
                return jobs.submit("run", command=command, role=ROLE).id

            run = chaos_run(conn, submit, dispatchers, rng)
            ran = _marks(cluster, i)
            run = dataclasses.replace(run, ran_twice=sum(n > 1 for n in ran.values()),
                                      ran_none=CHAOS_JOBS - len(ran))
            got.append(run)
            say(f"case 7b: run {i + 1}/{runs}: killed with {run.running_at_kill} running,"
                f" {run.done_at_kill} done; {run.superseded} taken over after"
                f" {run.takeover:.2f} s; lost {run.lost}, twice {run.twice},"
                f" overlaps {run.overlaps}; commands run twice {run.ran_twice}"
                f" ({run.seconds:.1f} s)")
    return got


def _marks(cluster: Cluster, run_n: int) -> dict[str, int]:
    """Per job of run `run_n`, how many distinct executions reached their end (the marks on
    every host; a home shared by hosts shows each line once per host, hence the set)."""
    result = cluster.run(f"cd {MARKS} 2>/dev/null && grep -H . r{run_n}-j* || true",
                         timeout=30)
    lines = {line for node in result for line in result[node].stdout.splitlines()}
    counts: dict[str, int] = {}
    for line in lines:
        name = line.split(":", 1)[0]
        counts[name] = counts.get(name, 0) + 1
    return counts


# ------------------------------------------------------------------ the case


def chaos_case(tb: Testbed, *, quick: bool, workdir: Path,
               say: Callable[[str], None]) -> Case:
    case = Case("7", f"Voice jobs under faults on {HOSTS} hosts: a frozen node, a killed"
                " dispatcher")
    if tb.db is None:
        raise BenchError("case 7 needs the testbed's registry (testbed.up(db=True))")
    base = workdir / "chaos"
    failover_config = write_config(tb, base / "failover.yaml", {"slots": 2})
    chaos_config = write_config(tb, base / "chaos.yaml",
                                {"slots": CHAOS_SLOTS, "lease": CHAOS_LEASE})
    settings = _settings(failover_config)
    keepalive = float(settings.ssh.keepalive)
    budget = 3 * keepalive + 1
    failover_n = 3 if quick else 5
    chaos_n = 5 if quick else CHAOS_GOAL_RUNS
    failovers: list[Failover] = []
    chaos: list[ChaosRun] = []
    with cases.metered(case, tb), Heartbeats(failover_config,
                                             [h.id for h in tb.hosts]) as beats:
        time.sleep(1.5)  # the first heartbeats are in
        # Chaos first: a failover leaves its frozen node cooling down (jobs.cooldown) for a
        # minute, and the chaos runs want every host.
        t0 = time.monotonic()
        say(f"case 7b: {chaos_n} chaos runs, {CHAOS_JOBS} jobs each, jobs.lease {CHAOS_LEASE:g}")
        try:
            chaos = chaos_runs(tb, chaos_config, chaos_n, base / "dispatchers.log", say)
        except FAILURES as exc:
            case.notes.append(f"7b FAILED: {type(exc).__name__}: {exc} (dispatchers' log:"
                              f" {_tail(base / 'dispatchers.log')})")
        say(f"case 7b: done in {time.monotonic() - t0:.0f} s")
        t0 = time.monotonic()
        say(f"case 7a: {failover_n} failovers (ssh.keepalive {keepalive:g} s)")
        try:
            failovers = failover_runs(tb, failover_config, beats, failover_n, say)
        except FAILURES as exc:
            case.notes.append(f"7a FAILED: {type(exc).__name__}: {exc}")
        say(f"case 7a: done in {time.monotonic() - t0:.0f} s")
    _rows_and_goals(case, failovers, chaos, keepalive, budget)
    return case


def _tail(path: Path, lines: int = 5) -> str:
    with contextlib.suppress(OSError):
        return " | ".join(path.read_text(errors="replace").splitlines()[-lines:])
    return "—"


def _rows_and_goals(case: Case, failovers: Sequence[Failover], chaos: Sequence[ChaosRun],
                    keepalive: float, budget: float) -> None:
    text = f"failover (freeze → running elsewhere), median / max of {len(failovers)}"
    target = f"≤ {budget:g} s (3 × ssh.keepalive {keepalive:g} s + 1 s)"
    if failovers:
        values = [f.seconds for f in failovers]
        case.rows.append(Row(FAILOVER, OURS, tuple(values), "s", True))
        med, top = statistics.median(values), max(values)
        ok = top <= budget and all(f.job_state == "done" for f in failovers)
        output = "`survived`" if all(f.text == "survived\n" for f in failovers) else "WRONG"
        case.goals.append(Goal(text, f"{med:.2f} s / {top:.2f} s", target, ok))
        case.notes.append(
            f"{FAILOVER}: runs {', '.join(f'{f.seconds:.2f}' for f in failovers)} s; frozen"
            f" {', '.join(f.node for f in failovers)}; first attempts ended"
            f" {', '.join(sorted({f.first_outcome for f in failovers}))}; jobs ended"
            f" {', '.join(sorted({f.job_state for f in failovers}))}"
            f" (output {output}). Job `{FAILOVER_JOB}`, frozen 0-1 s after its start"
            " (every process of the host SIGSTOPped by testbed faults.freeze); the time runs"
            " from `SELECT clock_timestamp()` just before the freeze to the second attempt's"
            " `started_at`, both the database's clock. The frozen node's heartbeats stop with"
            " it; one dispatcher in the benchmark's process, jobs.lease default.")
    else:
        case.goals.append(Goal(text, "—", target, None))
    text = f"chaos: jobs lost / completed twice, {len(chaos)} runs, dispatcher SIGKILLed"
    if chaos:
        lost = sum(r.lost for r in chaos)
        twice = sum(r.twice for r in chaos)
        overlaps = sum(r.overlaps for r in chaos)
        jobs = sum(r.jobs for r in chaos)
        clean = lost == 0 and twice == 0 and overlaps == 0
        # Fewer runs than the goal's (--quick, or a run failed): met is not shown, missed is.
        met = None if clean and len(chaos) < CHAOS_GOAL_RUNS else clean
        case.goals.append(Goal(text, f"{lost} lost / {twice} twice of {jobs} jobs"
                                     f" ({overlaps} overlapping attempts)",
                               f"0 / 0 in {CHAOS_GOAL_RUNS} runs", met))
        takeovers = [r.takeover for r in chaos if r.superseded and r.takeover == r.takeover]
        if takeovers:
            case.rows.append(Row(TAKEOVER, OURS, tuple(takeovers), "s", True))
        case.rows.append(Row(CHAOS_RUN, OURS, tuple(r.seconds for r in chaos), "s", True))
        case.notes.append(
            f"chaos: {len(chaos)} runs; each submits {CHAOS_JOBS} jobs `sleep"
            f" {CHAOS_SLEEP:g}` (role {ROLE}, {CHAOS_SLOTS} slot per host, so two waves),"
            " starts `skeleton jobs dispatch` as a process, SIGKILLs it at a uniformly random"
            f" moment within {KILL_WINDOW:g} s of its first job starting, then starts a second"
            f" `skeleton jobs dispatch` (jobs.lease {CHAOS_LEASE:g} s) and waits until every"
            " job is final. Checked from the database per job: state `done` and exactly one"
            " attempt `done` (else lost / twice), no attempt still running, each attempt"
            " ended before the next one started. Killed with (running, done) attempts:"
            f" {', '.join(f'({r.running_at_kill}, {r.done_at_kill})' for r in chaos)};"
            f" attempts taken over per run: {', '.join(str(r.superseded) for r in chaos)}.")
        ran_twice = sum(r.ran_twice for r in chaos)
        case.notes.append(
            "chaos, on the hosts: each command leaves a mark when it runs to its end; commands"
            f" that ran to their end twice: {ran_twice} of {jobs}, per run"
            f" {', '.join(str(r.ran_twice) for r in chaos)}; with no mark:"
            f" {sum(r.ran_none for r in chaos)}. A killed dispatcher's commands go on (they"
            " run detached, so that a dispatcher's restart does not kill them), and the job"
            " is run again once its lease is taken over: the database records one end per"
            " job, the hosts may see two runs (at-least-once execution).")
        if takeovers:
            case.notes.append(
                f"{TAKEOVER}: from `clock_timestamp()` right after the kill to the first"
                " attempt that follows a `superseded` one (database clock): the rest of the"
                f" killed dispatcher's lease ({CHAOS_LEASE:g} s) and the second process's"
                " start-up, which overlap:"
                f" median {statistics.median(takeovers):.2f} s, max {max(takeovers):.2f} s.")
        problems = [p for r in chaos for p in r.problems]
        if problems:
            case.notes.append("chaos problems: " + "; ".join(problems[:20]))
    else:
        case.goals.append(Goal(text, "—", f"0 / 0 in {CHAOS_GOAL_RUNS} runs", None))
