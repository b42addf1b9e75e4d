"""The five cases of issue 8. Each takes a running testbed and returns a `Case` (rows, goals).

Testbeds are brought up and torn down by `bench.__main__`; here they are only used. Every
case runs under a `CpuMeter`, so the report says how much other work shared the machine.
"""

from __future__ import annotations

import contextlib
import functools
import random
import shutil
import subprocess
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench import latency, peers
from bench.measure import BenchError, Command, CpuMeter, Sample, interleaved, run_process
from bench.report import Case, Goal, Row
from skeleton_app.testing.testbed import USER, Testbed

MiB = 1024 * 1024
LINK_RATE = "200mbit"
LINK_BITS_PER_S = 200e6


@dataclass(frozen=True, slots=True)
class Plan:
    """How much to measure (full or --quick) and where scratch files go."""

    quick: bool
    runs: int  # timed runs per tool and scenario
    warmup: int
    workdir: Path
    say: Callable[[str], None]


def hosts_of(tb: Testbed, count: int, workdir: Path) -> peers.Hosts:
    return peers.hosts_subset(tb.config_path, tb.ssh_config_path, tb.identity_file,
                              tb.known_hosts, USER, count, workdir / f"tb{tb.instance}")


@contextlib.contextmanager
def metered(case: Case, tb: Testbed) -> Iterator[None]:
    """Record in `case` the CPU that we, and everything else, used while it ran."""
    meter = CpuMeter(lambda: [h.init_pid for h in tb.hosts])
    with meter:
        yield
    case.cpu = meter.result


def _timed(commands: dict[str, Command]) -> dict[str, Callable[[], Sample]]:
    return {label: functools.partial(run_process, cmd, label) for label, cmd in
            commands.items()}


def _seconds(samples: Sequence[Sample]) -> tuple[float, ...]:
    return tuple(s.seconds for s in samples)


def _goal(text: str, value: float, limit: float, *, unit: str = "×") -> Goal:
    space = "" if unit == "×" else " "
    target = f"≤ {limit:g}{space}{unit}"
    if value != value:  # NaN: not measured
        return Goal(text, "—", target, None)
    return Goal(text, f"{value:.2f}{space}{unit}", target, value <= limit)


# ------------------------------------------------------------------ 1 (and 5a): fan-out


def fanout(tb: Testbed, sizes: Sequence[int], plan: Plan) -> tuple[Case, Case]:
    """`true` on 1/8/32 hosts, every tool as a whole process. Returns case 1 and the
    memory/CPU half of case 5 (from the same 32-host runs)."""
    case = Case("1", "Fan-out: `true` on N hosts, whole process (wall time)")
    mem = Case("5", "Controller cost: peak RSS and CPU of the whole process")
    with metered(case, tb):
        for n in sizes:
            plan.say(f"case 1: {n} host(s), {len(peers.FANOUT_TOOLS)} tools,"
                     f" {plan.warmup}+{plan.runs} runs each")
            h = hosts_of(tb, n, plan.workdir)
            samples = interleaved(_timed(peers.fanout_commands(h)), warmup=plan.warmup,
                                  runs=plan.runs)
            scenario = f"{n} host{'s' if n > 1 else ''}"
            for tool, got in samples.items():
                case.rows.append(Row(scenario, tool, _seconds(got), "s", tool == peers.OURS))
            if n == max(sizes):
                for tool, got in samples.items():
                    mem.rows.append(Row(f"{n} hosts: peak RSS", tool,
                                        tuple(s.max_rss_kib / 1024 for s in got), "MiB",
                                        tool == peers.OURS))
                for tool, got in samples.items():
                    mem.rows.append(Row(f"{n} hosts: CPU (user+sys)", tool,
                                        tuple(s.cpu_seconds for s in got), "s",
                                        tool == peers.OURS))
    mem.cpu = case.cpu
    if 32 in sizes:
        ours = case.median_of("32 hosts", peers.OURS)
        case.goals.append(_goal("exec true, 32 hosts: ours ÷ pdsh",
                                ours / case.median_of("32 hosts", peers.PDSH), 0.35))
        case.goals.append(_goal("exec true, 32 hosts: ours ÷ plain Fabric script",
                                ours / case.median_of("32 hosts", peers.FABRIC), 1.0))
        mem.goals.append(_goal("peak RSS of `skeleton cluster exec true`, 32 hosts",
                               mem.median_of("32 hosts: peak RSS", peers.OURS), 60, unit="MiB"))
    case.notes.append("Every tool: same key, same known_hosts, strict host-key checking, cold"
                      " start (ansible's ControlPersist is switched off so that it cannot"
                      " reuse the previous run's connections).")
    mem.notes.append("Peak RSS and CPU as GNU time reports them for the process: RSS of the"
                     " largest single process among it and the children it waited for; CPU"
                     " of all of them. Tools that run one `ssh` per host (pdsh, parallel-ssh,"
                     " clush, ansible) use far more memory in total than their peak RSS says.")
    return case, mem


def fanout_128(tb: Testbed, plan: Plan, case5: Case, ours_32: float) -> None:
    """Case 5b: `exec true` on 128 hosts with fanout 64: does every run complete on every
    host, and how does the time scale from 32 hosts."""
    plan.say(f"case 5: 128 hosts, fanout 64, {plan.warmup}+{plan.runs} runs")
    h = hosts_of(tb, 128, plan.workdir)
    cmd = peers.fanout_commands(h, fanout=64)[peers.OURS]
    samples: list[Sample] = []
    failures: list[str] = []
    scale = Case("5", "")
    with metered(scale, tb):
        for i in range(plan.warmup + plan.runs):
            try:
                sample = run_process(cmd, "skeleton cluster exec, 128 hosts")
            except BenchError as exc:
                failures.append(str(exc))
                continue
            if i >= plan.warmup:
                samples.append(sample)
    runs = plan.warmup + plan.runs
    scenario = "128 hosts, fanout 64"
    case5.rows.append(Row(f"{scenario}: wall time", peers.OURS, _seconds(samples), "s", True))
    case5.rows.append(Row(f"{scenario}: peak RSS", peers.OURS,
                          tuple(s.max_rss_kib / 1024 for s in samples), "MiB", True))
    case5.rows.append(Row(f"{scenario}: CPU (user+sys)", peers.OURS,
                          tuple(s.cpu_seconds for s in samples), "s", True))
    case5.goals.append(Goal("exec true, 128 hosts fanout 64: every run exits 0 on all hosts",
                            f"{runs - len(failures)}/{runs} runs", f"{runs}/{runs}",
                            not failures))
    case5.goals.append(_goal("exec true, 128 hosts fanout 64 ÷ 32 hosts",
                             case5.median_of(f"{scenario}: wall time", peers.OURS) / ours_32,
                             4.0))
    if scale.cpu is not None:
        case5.notes.append("128-host runs: " + scale.cpu.describe())
    for failure in failures:
        case5.notes.append("128-host run FAILED: " + " ".join(failure.split())[:600])


# ------------------------------------------------------------------ 2: warm latency


def warm_latency(tb: Testbed, plan: Plan, commands: int = 100) -> Case:
    case = Case("2", f"Warm command latency, Python API: {commands} × `true` on one pooled"
                " connection")
    h = hosts_of(tb, 1, plan.workdir)
    host = tb.hosts[0]
    plan.say(f"case 2: {commands} warm commands per tool")
    with metered(case, tb), contextlib.ExitStack() as stack:
        runners = {
            latency.OURS_CONNECTOR: stack.enter_context(
                latency.ours_connector(h.config, host.id)),
            latency.OURS_EXECUTOR: stack.enter_context(
                latency.ours_executor(h.config, host.id)),
            latency.PARAMIKO: stack.enter_context(
                latency.raw_paramiko(host.ip, USER, tb.identity_file, tb.known_hosts)),
            latency.CONTROLMASTER: stack.enter_context(
                latency.controlmaster(host.ip, tb.ssh_config_path, h.workdir, h.env())),
            latency.FABRIC_RUN: stack.enter_context(
                latency.fabric_run(host.ip, USER, tb.identity_file, tb.known_hosts)),
        }
        times = latency.measure(runners, warmup=10, commands=commands)
    for tool, values in times.items():
        case.rows.append(Row("1 host, warm", tool, tuple(v * 1000 for v in values), "ms",
                             tool == latency.OURS_CONNECTOR))
    for tool in (latency.OURS_CONNECTOR, latency.OURS_EXECUTOR):
        case.goals.append(_goal(f"warm command, {tool.removeprefix('skeleton ')} median",
                                case.median_of("1 host, warm", tool), 4.0, unit="ms"))
    case.notes.append("Each command timed alone, from the call until its exit status is in;"
                      " tools interleaved in blocks of 10 commands after 10 warm-up commands"
                      " each.")
    return case


# ------------------------------------------------------------------ 3: no-change redeploy


def make_tree(root: Path, files: int = 2000, seed: int = 8) -> None:
    """A source tree of `files` deployable files (40 packages, 1–16 KiB each) plus what the
    default excludes leave out (.git/, __pycache__/, *.pyc, .venv/, logs/)."""
    if root.exists():
        shutil.rmtree(root)
    rng = random.Random(seed)
    for i in range(files):
        pkg = root / "app" / f"pkg{i % 40:02d}"
        pkg.mkdir(parents=True, exist_ok=True)
        words = " ".join(f"name_{rng.randrange(10**6)}" for _ in range(rng.randrange(80, 1300)))
        (pkg / f"module_{i:04d}.py").write_text(f"# generated\nDATA = {words!r}\n")
    for junk in (".git/objects/ab", "app/pkg00/__pycache__", ".venv/lib", "logs"):
        (root / junk).mkdir(parents=True, exist_ok=True)
        for j in range(25):
            (root / junk / f"junk{j}.pyc").write_bytes(rng.randbytes(4096))


def redeploy(tb: Testbed, sizes: Sequence[int], plan: Plan) -> Case:
    from skeleton_app.config import load_config

    case = Case("3", "No-change redeploy of a 2,000-file tree")
    tree = plan.workdir / "tree"
    make_tree(tree)
    excludes = load_config(tb.config_path).deploy.exclude
    ours, force, prsync = ("skeleton cluster deploy",
                           "skeleton cluster deploy --force (rsync every time)",
                           "prsync (parallel-rsync -az)")
    with metered(case, tb):
        for n in sizes:
            plan.say(f"case 3: {n} hosts, warm-up (first full deploy) + {plan.runs}"
                     " no-change runs")
            h = hosts_of(tb, n, plan.workdir)
            deploy = (peers.skeleton_bin(), "cluster", "deploy", "--source", str(tree),
                      "--config", str(h.config))
            commands = {
                ours: Command(deploy, h.env()),
                force: Command((*deploy, "--force"), h.env()),
                prsync: peers.prsync_command(h, tree, "/home/skeleton/app-prsync", excludes,
                                             delete=False),
            }
            samples = interleaved(_timed(commands), warmup=max(2, plan.warmup),
                                  runs=plan.runs)
            for tool, got in samples.items():
                case.rows.append(Row(f"{n} hosts", tool, _seconds(got), "s", tool != prsync))
            case.goals.append(_goal(f"no-change redeploy, {n} hosts: ours ÷ prsync",
                                    case.median_of(f"{n} hosts", ours)
                                    / case.median_of(f"{n} hosts", prsync), 0.5))
    case.notes.append(f"prsync excludes = deploy.exclude ({' '.join(excludes)}), no --delete"
                      " (deploy.delete defaults to false). The first two rounds (initial full"
                      " copy, one no-change run) are the warm-up.")
    case.notes.append("`--force` skips the node-side digest check and always runs rsync: it"
                      " does the same work as prsync, shown for comparison (no goal).")
    return case


# ------------------------------------------------------------------ 4: model distribution


def _model_dir(home: Path) -> Path:
    return home / "app" / "models"


def make_model(tb: Testbed, name: str, size: int) -> None:
    """`size` random bytes as models/NAME/model.bin on the testbed's first host."""
    target = _model_dir(tb.hosts[0].home) / name
    target.mkdir(parents=True, exist_ok=True)
    with open(target / "model.bin", "wb") as fh:
        left = size
        while left:
            chunk = min(left, 8 * MiB)
            fh.write(random.randbytes(chunk))
            left -= chunk
    subprocess.run(["chown", "-R", f"{USER}:", str(_model_dir(tb.hosts[0].home))], check=True)


def model_sync(tb: Testbed, sizes: Sequence[int], plan: Plan, *, rsync_max: int,
               rsync_runs: int) -> Case:
    """Case 4 on a testbed of 9 shaped hosts: node-01 holds the model, the 8 others get it.

    Not interleaved like the other cases: the baseline costs ~8 one-link times a run, so it
    runs `rsync_runs` times (and not at all above `rsync_max`); ours gets a warm-up first
    (except for big models: the run is long enough to need none).
    """
    case = Case("4", f"Model distribution: source → 8 targets, every link {LINK_RATE}")
    source, targets = tb.hosts[0], tb.hosts[1:]
    h = hosts_of(tb, len(tb.hosts), plan.workdir)
    ours_label, rsync_label = "skeleton cluster sync-models", "plain parallel rsync from source"

    def wipe() -> None:
        for t in targets:
            for d in (_model_dir(t.home), t.home / "app" / "models-rsync"):
                shutil.rmtree(d, ignore_errors=True)

    with metered(case, tb):
        for size in sizes:
            name, label = f"bench-{size // MiB}m", f"{size // MiB} MiB"
            make_model(tb, name, size)
            one_link = size * 8 / LINK_BITS_PER_S
            ours = Command((peers.skeleton_bin(), "cluster", "sync-models", "--config",
                            str(h.config), "--source-node", source.id, "--model", name),
                           h.env(), timeout=600)
            script = (
                "cd ~/app/models && pids= && for t in " + " ".join(t.id for t in targets)
                + f"; do rsync -a {name} $t:app/models-rsync/ & pids=\"$pids $!\"; done;"
                " rc=0; for p in $pids; do wait $p || rc=1; done; exit $rc")
            rsync = Command(("ssh", "-F", str(tb.ssh_config_path), source.ip, script),
                            h.env(), timeout=3600)
            big = size > 256 * MiB
            runs = 1 if big and plan.quick else (2 if big else plan.runs)
            n_rsync = rsync_runs if size <= rsync_max else 0
            plan.say(f"case 4: {label}: ours {0 if big else 1}+{runs} runs, plain rsync"
                     f" {n_rsync} run(s)")
            mine: list[Sample] = []
            theirs: list[Sample] = []
            if not big:
                wipe()
                run_process(ours, f"{ours_label} (warm-up)")
            for i in range(max(runs, n_rsync)):
                if i < runs:
                    wipe()
                    mine.append(run_process(ours, ours_label))
                if i < n_rsync:
                    wipe()
                    theirs.append(run_process(rsync, rsync_label))
            wipe()
            case.rows.append(Row(label, "one link's time (size ÷ 200 Mbit/s)", (one_link,),
                                 "s"))
            case.rows.append(Row(label, ours_label, _seconds(mine), "s", True))
            if theirs:
                case.rows.append(Row(label, rsync_label, _seconds(theirs), "s"))
            else:
                case.notes.append(f"{label}: plain parallel rsync not run: it shares the"
                                  f" source's uplink 8 ways, about {8 * one_link:.0f} s a run"
                                  " (`--rsync-1g` runs it).")
            case.goals.append(_goal(f"{label} to 8 targets: ours ÷ one link's time",
                                    case.median_of(label, ours_label) / one_link, 1.5))
    case.notes.append("Targets are emptied before every run (a real transfer each time); the"
                      " source keeps its copy, so its hash cache is warm after the first run."
                      " The plain rsync runs on the source node, over its own SSH to each"
                      " target, all 8 at once.")
    return case


def check_sync_models_cli() -> str | None:
    """None when `skeleton cluster sync-models` exists, else why case 4 cannot run."""
    proc = subprocess.run([peers.skeleton_bin(), "cluster", "sync-models", "--help"],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        return "`skeleton cluster sync-models` is not available yet"
    return None
