"""The five cases of issue 8. Each takes a running testbed and returns a `Case` (rows, goals).

Testbeds are brought up and torn down by `bench.__main__`; here they are only used.
"""

from __future__ import annotations

import contextlib
import functools
import math
import random
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench import latency, peers
from bench.measure import BenchError, Command, Sample, interleaved, load_average, run_process
from bench.report import Case, Goal, Row
from skeleton_app.testbed import USER, Testbed

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


def _timed(commands: dict[str, Command]) -> dict[str, Callable[[], Sample]]:
    return {label: functools.partial(run_process, cmd, label) for label, cmd in
            commands.items()}


def _seconds(samples: Sequence[Sample]) -> tuple[float, ...]:
    return tuple(s.seconds for s in samples)


def _goal(text: str, value: float, limit: float, *, unit: str = "×") -> Goal:
    if math.isnan(value):
        return Goal(text, "—", f"≤ {limit:g}{unit}", None)
    shown = f"{value:.2f}{unit}" if unit == "×" else f"{value:.2f} {unit}"
    target = f"≤ {limit:g}{unit}" if unit == "×" else f"≤ {limit:g} {unit}"
    return Goal(text, shown, target, value <= limit)


# ------------------------------------------------------------------ 1 (and 5a): fan-out


def fanout(tb: Testbed, sizes: Sequence[int], plan: Plan) -> tuple[Case, Case]:
    """`true` on 1/8/32 hosts, every tool as a whole process. Returns case 1 and the
    memory/CPU half of case 5 (from the same 32-host runs)."""
    case = Case("1", "Fan-out: `true` on N hosts, whole process (wall time)")
    mem = Case("5", "Controller cost: peak RSS and CPU of the whole process")
    case.load = (load_average(), math.nan)
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
    case.load = (case.load[0], load_average())
    mem.load = case.load
    top = f"{max(sizes)} hosts"
    ours = case.median_of(top, peers.OURS)
    if max(sizes) == 32:
        case.goals.append(_goal("exec true, 32 hosts: ours ÷ pdsh", ours / case.median_of(
            top, peers.PDSH), 0.35))
        case.goals.append(_goal("exec true, 32 hosts: ours ÷ plain Fabric script",
                                ours / case.median_of(top, peers.FABRIC), 1.0))
        mem.goals.append(_goal("peak RSS of `skeleton cluster exec true`, 32 hosts",
                               mem.median_of(f"{top}: peak RSS", peers.OURS), 60, unit="MiB"))
    case.notes.append("Every tool: same key, same known_hosts, strict host-key checking, cold"
                      " start (ansible's ControlPersist is switched off so that it cannot"
                      " reuse the previous run's connections).")
    mem.notes.append("Peak RSS is the kernel's ru_maxrss of the process: the largest single"
                     " process among it and the children it waited for. Tools that run one"
                     " `ssh` per host (pdsh, parallel-ssh, clush, ansible) use far more memory"
                     " in total than that; CPU includes those children.")
    return case, mem


def fanout_128(tb: Testbed, plan: Plan, case5: Case, ours_32: float) -> None:
    """Case 5b: `exec true` on 128 hosts with fanout 64: it completes, and how it scales."""
    plan.say(f"case 5: 128 hosts, fanout 64, {plan.warmup}+{plan.runs} runs")
    h = hosts_of(tb, 128, plan.workdir)
    cmd = peers.fanout_commands(h, fanout=64)[peers.OURS]
    before = load_average()
    got = interleaved(_timed({peers.OURS: cmd}), warmup=plan.warmup, runs=plan.runs)
    samples = got[peers.OURS]
    case5.rows.append(Row("128 hosts, fanout 64: wall time", peers.OURS, _seconds(samples),
                          "s", True))
    case5.rows.append(Row("128 hosts, fanout 64: peak RSS", peers.OURS,
                          tuple(s.max_rss_kib / 1024 for s in samples), "MiB", True))
    t128 = case5.median_of("128 hosts, fanout 64: wall time", peers.OURS)
    case5.goals.append(_goal("exec true, 128 hosts fanout 64 (all exit 0) ÷ 32-host time",
                             t128 / ours_32, 4.0))
    case5.notes.append(f"128-host runs: load average {before:.2f} before, {load_average():.2f}"
                       " after; every run exited 0 (all 128 hosts ran the command).")


# ------------------------------------------------------------------ 2: warm latency


def warm_latency(tb: Testbed, plan: Plan, commands: int = 100) -> Case:
    case = Case("2", f"Warm command latency, Python API: {commands} × `true` on one pooled"
                " connection")
    h = hosts_of(tb, 1, plan.workdir)
    host = tb.hosts[0]
    plan.say(f"case 2: {commands} warm commands per tool")
    case.load = (load_average(), math.nan)
    with contextlib.ExitStack() as stack:
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
    case.load = (case.load[0], load_average())
    for tool, values in times.items():
        case.rows.append(Row("1 host, warm", tool, tuple(v * 1000 for v in values), "ms",
                             tool == latency.OURS_CONNECTOR))
    case.goals.append(_goal("warm command, Connector.run median", case.median_of(
        "1 host, warm", latency.OURS_CONNECTOR), 4.0, unit="ms"))
    case.goals.append(_goal("warm command, SSHExecutor.execute median", case.median_of(
        "1 host, warm", latency.OURS_EXECUTOR), 4.0, unit="ms"))
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
    case.load = (load_average(), math.nan)
    for n in sizes:
        plan.say(f"case 3: {n} hosts, warm-up (first full deploy) + {plan.runs} no-change runs")
        h = hosts_of(tb, n, plan.workdir)
        deploy = [peers.skeleton_bin(), "cluster", "deploy", "--source", str(tree),
                  "--config", str(h.config)]
        commands = {
            "skeleton cluster deploy": Command(tuple(deploy), h.env()),
            "skeleton cluster deploy --force (rsync every time)":
                Command((*deploy, "--force"), h.env()),
            "prsync (parallel-rsync -az)":
                peers.prsync_command(h, tree, "/home/skeleton/app-prsync", excludes,
                                     delete=False),
        }
        samples = interleaved(_timed(commands), warmup=max(2, plan.warmup), runs=plan.runs)
        for tool, got in samples.items():
            case.rows.append(Row(f"{n} hosts", tool, _seconds(got), "s",
                                 tool.startswith("skeleton")))
        case.goals.append(_goal(f"no-change redeploy, {n} hosts: ours ÷ prsync",
                                case.median_of(f"{n} hosts", "skeleton cluster deploy")
                                / case.median_of(f"{n} hosts", "prsync (parallel-rsync -az)"),
                                0.5))
    case.load = (case.load[0], load_average())
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
    subprocess.run(["chown", "-R", "skeleton:", str(_model_dir(tb.hosts[0].home))],
                   check=True)


def model_sync(tb: Testbed, sizes: Sequence[int], plan: Plan, *, rsync_max: int) -> Case:
    case = Case("4", f"Model distribution: source → 8 targets, every link {LINK_RATE}")
    source, targets = tb.hosts[0], tb.hosts[1:]
    h = hosts_of(tb, len(tb.hosts), plan.workdir)
    case.load = (load_average(), math.nan)
    for size in sizes:
        name = f"bench-{size // MiB}m"
        make_model(tb, name, size)
        one_link = size * 8 / LINK_BITS_PER_S
        ours = Command((peers.skeleton_bin(), "cluster", "sync-models", "--config",
                        str(h.config), "--source-node", source.id, "--model", name,
                        "--node", ",".join(t.id for t in targets)), h.env(), timeout=600)
        script = (
            "cd ~/app/models && pids= && for t in " + " ".join(t.id for t in targets)
            + f"; do rsync -a {name} $t:app/models-rsync/ & pids=\"$pids $!\"; done;"
            " rc=0; for p in $pids; do wait $p || rc=1; done; exit $rc")
        rsync = Command(("ssh", "-F", str(tb.ssh_config_path), source.ip, script), h.env(),
                        timeout=3600)
        label = f"{size // MiB} MiB"
        jobs = {"skeleton cluster sync-models": ours}
        if size <= rsync_max:
            jobs["plain parallel rsync from the source"] = rsync

        def wipe(_tool: str) -> None:
            for t in targets:
                for d in (_model_dir(t.home), t.home / "app" / "models-rsync"):
                    shutil.rmtree(d, ignore_errors=True)

        big = size > 256 * MiB
        plan.say(f"case 4: {label}, {'no warm-up, ' if big else ''}"
                 f"{1 if big else plan.runs} run(s) per tool")
        samples = interleaved(_timed(jobs), warmup=0 if big else 1,
                              runs=1 if big else plan.runs, between=wipe)
        wipe("")
        case.rows.append(Row(label, "one link's time (size ÷ 200 Mbit/s)", (one_link,), "s"))
        for tool, got in samples.items():
            case.rows.append(Row(label, tool, _seconds(got), "s", tool.startswith("skeleton")))
        case.goals.append(_goal(f"{label} to 8 targets: ours ÷ one link's time",
                                case.median_of(label, "skeleton cluster sync-models")
                                / one_link, 1.5))
        if size > rsync_max:
            case.notes.append(f"{label}: plain parallel rsync not run (it shares the source's"
                              f" uplink 8 ways: about {8 * one_link:.0f} s).")
    case.load = (case.load[0], load_average())
    case.notes.append("Targets are emptied before every run (a real transfer each time); the"
                      " source's model stays, so its hash cache is warm after the first run.")
    return case


def check_sync_models_cli() -> str | None:
    """None when `skeleton cluster sync-models` exists, else why case 4 cannot run."""
    proc = subprocess.run([peers.skeleton_bin(), "cluster", "sync-models", "--help"],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        return "`skeleton cluster sync-models` is not available yet"
    return None


__all__ = ["BenchError", "Plan", "fanout", "fanout_128", "model_sync", "redeploy",
           "warm_latency"]
