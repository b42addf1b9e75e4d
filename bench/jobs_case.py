"""Case 6 (issue 14): voice jobs on 8 hosts, ours against GNU parallel and a round-robin loop.

    6a  400 no-op jobs (`true`): wall time of submit-all, wait-all; the goal is throughput
        (jobs/s) ≥ GNU parallel's.
    6b  submit → start with a running dispatcher, one job at a time: p50 ≤ 50 ms.
    6c  64 real transcriptions (the `stt` engine, pocketsphinx, on espeak-ng WAVs made now).

The hosts are made the way a user makes nodes: a testbed with the registry's PostgreSQL
(`testbed.up(db=True)`, skeleton_app/testing/localdb.py, schema and nodes seeded), then
`skeleton cluster deploy`, `cluster bootstrap` (each host's own .venv with pocketsphinx,
from a wheelhouse) and `cluster daemon start` (heartbeats: routing takes only fresh nodes).
Our side is one dispatcher in this process (bench/jobs_ours.py); when the API is not there
yet it is reported "not available" and the peers are still measured.
"""

from __future__ import annotations

import contextlib
import functools
import math
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import yaml

from bench import cases, jobs_peers, peers
from bench.jobs_ours import Ours, OursUnavailable, Transcripts
from bench.measure import BenchError, Command, Sample, run_process
from bench.report import Case, Goal, Row
from skeleton_app.engines import Engine
from skeleton_app.testing.testbed import USER, Testbed

HOSTS = 8
SLOTS = 2  # jobs at once per host, ours (jobs.slots) and the peers' alike
NOOP_JOBS = 400
STT_JOBS = 64
OURS = "skeleton jobs (running dispatcher)"
OURS_SHORT = "skeleton jobs"
NOOP = f"{NOOP_JOBS} no-op jobs (`true`)"
LATENCY = "submit → start, one job at a time"
STT = f"{STT_JOBS} transcriptions (stt: sox + pocketsphinx)"
ROLES = ("testbed", "stt_batch")  # every host serves both (run jobs use `testbed`)
PEERS_WHEELHOUSE = peers.PEERS_DIR / "wheelhouse"


def roles(count: int) -> dict[str, tuple[str, ...]]:
    return {f"node-{i:02d}": ROLES for i in range(1, count + 1)}


# ------------------------------------------------------------------ preparing the nodes


def _has_wheel(directory: Path, dist: str) -> bool:
    return any(directory.glob(f"{dist}-*.whl"))


def wheelhouse(base: str | None, say: Callable[[str], None], log: Path) -> Path:
    """A wheelhouse holding the project's dependencies and pocketsphinx: the checkout's
    (./scripts/setup adds pocketsphinx to it), else a copy of it plus pocketsphinx's wheels,
    kept in bench/.peers/wheelhouse."""
    if base and _has_wheel(Path(base), "pocketsphinx"):
        return Path(base)
    if _has_wheel(PEERS_WHEELHOUSE, "pocketsphinx"):
        return PEERS_WHEELHOUSE
    say("case 6: the wheelhouse has no pocketsphinx: building bench/.peers/wheelhouse")
    if PEERS_WHEELHOUSE.exists():
        shutil.rmtree(PEERS_WHEELHOUSE)
    if base:
        shutil.copytree(base, PEERS_WHEELHOUSE)
    PEERS_WHEELHOUSE.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q",
                               "--disable-pip-version-check", "--wheel-dir",
                               str(PEERS_WHEELHOUSE), "pocketsphinx"], stdout=out, stderr=out)
    if proc.returncode != 0 or not _has_wheel(PEERS_WHEELHOUSE, "pocketsphinx"):
        raise BenchError(f"pip wheel pocketsphinx failed (see {log})")
    return PEERS_WHEELHOUSE


def write_config(tb: Testbed, workdir: Path, wheels: Path) -> Path:
    """The testbed's config with our slots and pocketsphinx for every host's .venv."""
    data = yaml.safe_load(tb.config_path.read_text())
    data["jobs"] = {**data.get("jobs", {}), "slots": SLOTS}
    boot = data.setdefault("bootstrap", {})
    boot["wheelhouse"] = str(wheels)
    boot["requires"] = sorted({*boot.get("requires", []), "pocketsphinx"})
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "jobs-config.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def prepare(tb: Testbed, workdir: Path, say: Callable[[str], None]) -> Path:
    """Deploy, bootstrap and start the daemons on every host; the config to use."""
    if tb.db is None:
        raise BenchError("case 6 needs the testbed's registry (testbed.up(db=True))")
    base = yaml.safe_load(tb.config_path.read_text()).get("bootstrap", {}).get("wheelhouse")
    config = write_config(tb, workdir, wheelhouse(base, say, workdir / "install.log"))
    env = {"PATH": peers.PATH, "HOME": str(workdir), "LANG": "C.UTF-8"}
    for step, timeout in ((("cluster", "deploy"), 300), (("cluster", "bootstrap"), 900),
                          (("cluster", "daemon", "start"), 120)):
        started = time.monotonic()
        run_process(Command((peers.skeleton_bin(), *step, "--config", str(config)), env,
                            timeout=timeout), f"skeleton {' '.join(step)}")
        say(f"case 6: skeleton {' '.join(step)}: {time.monotonic() - started:.1f} s")
    return config


def wait_heartbeats(config: Path, count: int, timeout: float = 60.0) -> str | None:
    """None once `count` daemons heartbeat, else why not."""
    from skeleton_app.config import load_config
    from skeleton_app.registry import open_registry

    settings = load_config(config, env={})
    deadline = time.monotonic() + timeout
    running: list[str] = []
    while time.monotonic() < deadline:
        with open_registry(settings) as registry:
            entries, _ = registry.list_entries()
        running = [e.node.id for e in entries if e.daemon_state == "running"
                   and e.seen_ago is not None and e.seen_ago < settings.registry.stale_after]
        if len(running) >= count:
            return None
        time.sleep(1.0)
    return f"{len(running)} of {count} daemons heartbeat after {timeout:.0f} s"


# ------------------------------------------------------------------ measuring


class Rounds:
    """Tools measured round-robin (like measure.interleaved); a tool that fails (our side
    not implemented yet, a peer's error) drops out without ending the others' measurement."""

    def __init__(self, tools: Mapping[str, Callable[[], Sample]]):
        self.tools = dict(tools)
        self.samples: dict[str, list[Sample]] = {label: [] for label in tools}
        self.dropped: dict[str, str] = {}

    def run(self, warmup: int, runs: int, after: Callable[[str], None] | None = None) -> None:
        for round_ in range(warmup + runs):
            for label, job in self.tools.items():
                if label in self.dropped:
                    continue
                try:
                    sample = job()
                except (OursUnavailable, BenchError) as exc:
                    self.dropped[label] = str(exc)
                    continue
                if after is not None:
                    after(label)
                if round_ >= warmup:
                    self.samples[label].append(sample)


def _jobs_per_s(seconds: float, jobs: int) -> float:
    return jobs / seconds if seconds == seconds and seconds > 0 else float("nan")


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def jobs_case(tb: Testbed, *, quick: bool, runs: int, workdir: Path,
              say: Callable[[str], None]) -> Case:
    case = Case("6", f"Voice jobs on {HOSTS} hosts, {SLOTS} slots each: the queue against GNU"
                " parallel and a round-robin ssh loop")
    h = peers.hosts_subset(tb.config_path, tb.ssh_config_path, tb.identity_file,
                           tb.known_hosts, USER, HOSTS, workdir / "jobs")
    jobs_peers.install_parallel(workdir / "install.log")
    config = prepare(tb, workdir / "jobs", say)
    why = wait_heartbeats(config, HOSTS)
    ours_why: str | None = f"not run: {why}" if why else None
    warmup = 0 if quick else 1
    noop_runs = 1 if quick else runs
    stt_runs = 1 if quick else max(1, min(runs, 2))

    with cases.metered(case, tb), _ours(config, ours_why) as (ours, ours_why):
        # -- 6a: no-op throughput
        t0 = time.monotonic()
        say(f"case 6a: {NOOP_JOBS} no-op jobs, {warmup}+{noop_runs} runs per tool")
        tools: dict[str, Callable[[], Sample]] = {}
        if ours is not None:
            tools[OURS] = lambda: Sample(ours.noop(NOOP_JOBS))
        for label, cmd in jobs_peers.noop_commands(h, NOOP_JOBS, SLOTS).items():
            tools[label] = functools.partial(run_process, cmd, label)
        rounds = Rounds(tools)
        rounds.run(warmup, noop_runs)
        say(f"case 6a: done in {time.monotonic() - t0:.0f} s")
        ours_why = rounds.dropped.get(OURS, ours_why)
        failed = {k: v for k, v in rounds.dropped.items() if k != OURS}
        for label, got in rounds.samples.items():
            if got:
                case.rows.append(Row(NOOP, label, tuple(s.seconds for s in got), "s",
                                     label == OURS))

        # -- 6b: submit → start
        latencies: list[float] = []
        if ours is not None and OURS not in rounds.dropped:
            count = 30 if quick else 100
            say(f"case 6b: submit → start of {count} jobs, one at a time")
            try:
                latencies = ours.latencies(count)
            except OursUnavailable as exc:
                ours_why = str(exc)
        if latencies:
            case.rows.append(Row(LATENCY, OURS, tuple(latencies), "ms", True))

        # -- 6c: transcriptions
        wav_dir = workdir / "jobs" / "wavs"
        wavs = jobs_peers.make_wavs(wav_dir, STT_JOBS)
        engine = _stt_engine(config)
        t0 = time.monotonic()
        say(f"case 6c: {STT_JOBS} transcriptions, {warmup}+{stt_runs} runs per tool")
        heard: dict[str, list[int]] = {}

        def checked(label: str) -> None:
            texts = jobs_peers.read_outputs(wav_dir, wavs)
            heard.setdefault(label, []).append(jobs_peers.recognised(texts))
            jobs_peers.clear_outputs(wav_dir)

        stt_tools: dict[str, Callable[[], Sample]] = {}
        if ours is not None and OURS not in rounds.dropped and not ours_why:
            def ours_stt() -> Sample:
                got: Transcripts = ours.transcribe([wav_dir / w for w in wavs])
                heard.setdefault(OURS, []).append(jobs_peers.recognised(got.texts))
                return Sample(got.seconds)
            stt_tools[OURS] = ours_stt
        def peer_stt(cmd: Command, label: str) -> Sample:
            jobs_peers.clear_outputs(wav_dir)  # a failed run may have left some
            return run_process(cmd, label)

        for label, cmd in jobs_peers.stt_commands(h, engine, wav_dir, wavs, SLOTS).items():
            stt_tools[label] = functools.partial(peer_stt, cmd, label)
        stt = Rounds(stt_tools)
        stt.run(warmup, stt_runs, after=lambda label: None if label == OURS else checked(label))
        ours_why = stt.dropped.get(OURS, ours_why)
        failed |= {k: v for k, v in stt.dropped.items() if k != OURS}
        say(f"case 6c: done in {time.monotonic() - t0:.0f} s")
        for label, got in stt.samples.items():
            if got:
                case.rows.append(Row(STT, label, tuple(s.seconds for s in got), "s",
                                     label == OURS))

    for label, why_failed in failed.items():
        case.notes.append(f"{label}: FAILED: {' '.join(why_failed.split())[:600]}")
    _goals(case, latencies, ours_why)
    _notes(case, h.ips, heard, ours_why, engine.render(input_path="FILE"))
    return case


def _stt_engine(config: Path) -> Engine:
    from skeleton_app.config import load_config
    from skeleton_app.engines import find_engine

    return find_engine(load_config(config, env={}).engines, "stt")


@contextlib.contextmanager
def _ours(config: Path, why: str | None) -> Iterator[tuple[Ours | None, str | None]]:
    """Our side with its dispatcher running, or None and why not."""
    if why:
        yield None, why
        return
    with contextlib.ExitStack() as stack:
        ours: Ours | None = None
        try:
            ours = stack.enter_context(Ours.open(config))
        except OursUnavailable as exc:
            why = str(exc)
        yield ours, why


def _goals(case: Case, latencies: list[float], why: str | None) -> None:
    ours_s = case.median_of(NOOP, OURS)
    par_s = case.median_of(NOOP, jobs_peers.PARALLEL)
    ours_jps, par_jps = _jobs_per_s(ours_s, NOOP_JOBS), _jobs_per_s(par_s, NOOP_JOBS)
    text = f"{NOOP_JOBS} no-op jobs: throughput ours ÷ GNU parallel"
    if math.isnan(ours_jps) or math.isnan(par_jps):
        case.goals.append(Goal(text, "—", "≥ 1.00×", None))
    else:
        case.goals.append(Goal(text, f"{ours_jps / par_jps:.2f}× ({ours_jps:.1f} vs"
                                     f" {par_jps:.1f} jobs/s)", "≥ 1.00×",
                               ours_jps >= par_jps))
    text = "submit → start p50, running dispatcher"
    if latencies:
        p50 = statistics.median(latencies)
        case.goals.append(Goal(text, f"{p50:.1f} ms (p99 {_percentile(latencies, 0.99):.1f}"
                                     " ms)", "≤ 50 ms", p50 <= 50.0))
    else:
        case.goals.append(Goal(text, "—", "≤ 50 ms", None))


def _notes(case: Case, ips: tuple[str, ...], heard: Mapping[str, list[int]], why: str | None,
           stt_command: str) -> None:
    if why:
        case.notes.append(f"{OURS_SHORT}: {why}")
    rates = [f"{label} {_jobs_per_s(case.median_of(NOOP, label), NOOP_JOBS):.1f}"
             for label in (OURS, jobs_peers.PARALLEL, jobs_peers.PARALLEL_M,
                           jobs_peers.ROUND_ROBIN)
             if not math.isnan(case.median_of(NOOP, label))]
    if rates:
        case.notes.append(f"{NOOP}, throughput (jobs/s, from the medians): "
                          + ", ".join(rates) + ".")
    lat = next((r for r in case.rows if r.scenario == LATENCY), None)
    if lat is not None:
        values = list(lat.values)
        case.notes.append(
            f"{LATENCY}: {len(values)} jobs, each submitted when the one before was done"
            f" (the dispatcher idle, waiting on LISTEN); p50 {statistics.median(values):.1f}"
            f" ms, p90 {_percentile(values, 0.9):.1f} ms, p99 {_percentile(values, 0.99):.1f}"
            f" ms, max {max(values):.1f} ms. Start = the attempt's started_at (the claim),"
            " submit = the job's submitted_at, both the database's clock.")
    for label, counts in heard.items():
        runs = ", ".join(f"{c}/{STT_JOBS}" for c in counts)
        case.notes.append(f"{STT}, {label}: transcripts containing \"{jobs_peers.WORDS}\""
                          f" in each run (warm-up first): {runs}.")
    case.notes.append(
        f"Hosts: {len(ips)} testbed hosts with the registry's PostgreSQL, deployed,"
        " bootstrapped (pocketsphinx in each host's .venv) and running the daemon. Every"
        f" tool runs {SLOTS} jobs at once per host, one fresh ssh (OpenSSH, the testbed's"
        " ssh_config) per job for the peers. GNU parallel: `parallel -S"
        f" {SLOTS}/host1,... -N0 true ::: 1..{NOOP_JOBS}` and `parallel -S ... --workdir"
        " APP_DIR --transferfile {} --return {.}.txt --cleanup 'CMD > {.}.txt' ::: *.wav`;"
        " the goal compares with the first, the issue's form; `--controlmaster` (one ssh"
        " master per host, no goal) shows what GNU parallel does with kept connections."
        f" Round-robin loop: job i on host i mod {len(ips)}, {SLOTS} lanes per host, each"
        " lane one ssh after the other; audio in on stdin, transcript out on stdout."
        f" Transcription command (our stt engine's template, for all three): `{stt_command}`."
        " Ours: one dispatcher in the benchmark's process, started before the timing; the"
        " timing is from the first submit until every job is done (and, for"
        " transcriptions, every transcript fetched).")
