"""Case 8: warm mode (issue #18), the connection keeper.

- warm `skeleton cluster exec true` on 32 hosts (a keeper holding every connection) against
  pdsh, whole processes interleaved;
- warm, 1 host, whole process, against `ssh` through an OpenSSH ControlMaster socket;
- cold as the first command after none (no keeper: it checks, runs itself, starts one at its
  end) against `ssh.persist: 0` (the path before warm mode);
- 1,000 warm commands in a row through the keeper (whole exec commands served, then plain
  runs): its descriptors, threads and RSS before and after.

The keeper lives in a runtime directory of the bench's own and is stopped at the end (and
between the cold runs), by its socket and the PID it recorded.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from bench import peers
from bench.cases import Plan, _goal, _seconds, _timed, hosts_of, metered
from bench.measure import BenchError, Command, Sample, interleaved, median
from bench.report import Case, Row
from skeleton_app.testing.testbed import Testbed

WARM = "skeleton cluster exec, warm (keeper)"
COLD_KEEPER = "skeleton cluster exec, cold (no keeper yet)"
COLD_TODAY = "skeleton cluster exec, ssh.persist 0"
SSH_CM = "ssh via ControlMaster socket"


def _keeper_dir(runtime: Path) -> Path:
    return runtime / "skeleton"


def _stop_keeper(runtime: Path, timeout: float = 10) -> None:
    """Stop the keeper of `runtime` (a stop request, then its recorded PID if need be)."""
    from skeleton_app.keeper.client import request
    from skeleton_app.keeper.paths import KeeperPaths

    paths = KeeperPaths(_keeper_dir(runtime))
    pid = _pid(runtime)
    request(paths, "stop")
    deadline = time.monotonic() + timeout
    while pid is not None and _alive(pid):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            break
        time.sleep(0.02)


def _pid(runtime: Path) -> int | None:
    try:
        return int((_keeper_dir(runtime) / "keeper.pid").read_text())
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _wait_keeper(runtime: Path, timeout: float = 20) -> int:
    from skeleton_app.keeper.client import ping
    from skeleton_app.keeper.paths import KeeperPaths

    deadline = time.monotonic() + timeout
    while (pid := ping(KeeperPaths(_keeper_dir(runtime)), timeout=1.0)) is None:
        if time.monotonic() > deadline:
            raise BenchError("the keeper did not come up")
        time.sleep(0.05)
    return pid


def _fresh_runtime(workdir: Path, name: str) -> Path:
    runtime = workdir / name
    runtime.mkdir(mode=0o700, parents=True, exist_ok=True)
    return runtime


def _ours(h: peers.Hosts, runtime: Path, *extra: str) -> Command:
    return Command((peers.skeleton_bin(), "cluster", "exec", "--config", str(h.config),
                    *extra, "true"),
                   h.env(XDG_RUNTIME_DIR=str(runtime), SKELETON_SSH_PERSIST="60"))


def _keeper_facts(runtime: Path) -> tuple[int, int, float]:
    """The keeper's open descriptors, threads and RSS (MiB), from /proc: the fewest
    descriptors and threads of 5 samples 0.1 s apart (a request's thread or a liveness
    probe's, ending as it is counted, is not growth), the last RSS."""
    pid = _pid(runtime)
    if pid is None:
        raise BenchError("no keeper pid")
    samples = []
    for _ in range(5):
        time.sleep(0.1)
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        status = Path(f"/proc/{pid}/status").read_text()
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        samples.append((fds, int(fields["Threads"]), int(fields["VmRSS"].split()[0]) / 1024))
    return (min(s[0] for s in samples), min(s[1] for s in samples), samples[-1][2])


def warm_case(tb: Testbed, plan: Plan, commands: int = 1000) -> Case:
    case = Case("8", "Warm mode: commands through the connection keeper (whole process)")
    h32 = hosts_of(tb, 32, plan.workdir)
    h1 = hosts_of(tb, 1, plan.workdir)
    runtime = _fresh_runtime(plan.workdir, "keeper-run")
    try:
        with metered(case, tb):
            _warm_fanout(case, h32, runtime, plan)
            _warm_one_host(case, tb, h1, runtime, plan)
            _many(case, h1, runtime, commands, plan)
            _stop_keeper(runtime)
            _cold(case, h32, plan)
    finally:
        _stop_keeper(runtime)
    return case


def _warm_up(command: Command, runtime: Path) -> None:
    """The first command runs cold and starts the keeper; the second connects through it."""
    subprocess.run(command.argv, env=dict(command.env), capture_output=True, check=True)
    _wait_keeper(runtime)
    subprocess.run(command.argv, env=dict(command.env), capture_output=True, check=True)


def _warm_fanout(case: Case, h: peers.Hosts, runtime: Path, plan: Plan) -> None:
    plan.say(f"case 8: warm exec on 32 hosts vs pdsh, {plan.warmup}+{max(plan.runs, 5)} runs each")
    ours = _ours(h, runtime)
    _warm_up(ours, runtime)
    pdsh = peers.fanout_commands(h)[peers.PDSH]
    got = interleaved(_timed({WARM: ours, peers.PDSH: pdsh}), warmup=plan.warmup,
                      runs=max(plan.runs, 5))
    for tool, samples in got.items():
        case.rows.append(Row("32 hosts, `true`", tool, _seconds(samples), "s", tool == WARM))
    warm = case.median_of("32 hosts, `true`", WARM)
    case.goals.append(_goal("warm exec true, 32 hosts, median", warm, 0.15, unit="s"))
    case.goals.append(_goal("warm exec true, 32 hosts: ours ÷ pdsh",
                            warm / case.median_of("32 hosts, `true`", peers.PDSH), 0.07))


def _timed_argv(argv: list[str], env: dict[str, str]) -> Sample:
    started = time.perf_counter()
    proc = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                          check=False)
    took = time.perf_counter() - started
    if proc.returncode != 0:
        raise BenchError(f"{argv[0]}: exit {proc.returncode}: {proc.stderr[-300:]!r}")
    return Sample(seconds=took)


def _warm_one_host(case: Case, tb: Testbed, h: peers.Hosts, runtime: Path,
                   plan: Plan) -> None:
    runs = max(plan.runs, 10)
    plan.say(f"case 8: warm exec on 1 host vs ssh via ControlMaster, {runs} runs each")
    ours = _ours(h, runtime)
    _warm_up(ours, runtime)
    ip = h.ips[0]
    control = h.workdir / "cm8.sock"
    base = ["ssh", "-F", str(tb.ssh_config_path), "-S", str(control)]
    env = h.env()
    master = subprocess.Popen([*base, "-M", "-N", "-o", "ControlPersist=no", ip],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 15
        while subprocess.run([*base, "-O", "check", ip], capture_output=True,
                             env=env).returncode != 0:
            if master.poll() is not None or time.monotonic() > deadline:
                raise BenchError("ControlMaster did not come up")
            time.sleep(0.05)
        jobs = {WARM: lambda: _timed_argv(list(ours.argv), dict(ours.env)),
                SSH_CM: lambda: _timed_argv([*base, ip, "true"], env)}
        got = interleaved(jobs, warmup=2, runs=runs)
    finally:
        subprocess.run([*base, "-O", "exit", ip], capture_output=True, env=env)
        try:
            master.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(master.pid, signal.SIGKILL)
            master.wait()
    for tool, samples in got.items():
        case.rows.append(Row("1 host, `true`", tool, tuple(s.seconds * 1000 for s in samples),
                             "ms", tool == WARM))
    case.goals.append(_goal("warm exec true, 1 host, whole process, median",
                            case.median_of("1 host, `true`", WARM), 60, unit="ms"))


def _many(case: Case, h: peers.Hosts, runtime: Path, commands: int, plan: Plan) -> None:
    """`commands` warm commands in a row through the keeper, twice: whole `cluster exec`
    commands served by the keeper (the request a `skeleton` process sends, from this
    process), then plain runs (`KeeperRunner`, what the Click path's operations send). The
    keeper's descriptors, threads and RSS after 100 commands and after all of them."""
    from skeleton_app.config import load_config
    from skeleton_app.keeper.client import KeeperRunner
    from skeleton_app.keeper.paths import KeeperPaths

    plan.say(f"case 8: {commands} warm commands through the keeper, served and run")
    ours = _ours(h, runtime)
    served = _served_request(ours, runtime)
    settings = load_config(h.config, env={})
    node = settings.nodes[0]
    runner = KeeperRunner(settings.ssh, KeeperPaths(_keeper_dir(runtime)))

    def run_one() -> None:
        result = runner.run(node, "true")
        if not result.ok:
            raise BenchError(f"warm command: {result.summary()}")

    label = {"served": f"{commands} `cluster exec` served whole in a row, 1 host",
             "run": f"{commands} commands through KeeperRunner in a row, 1 host"}
    for kind, one in (("served", served), ("run", run_one)):
        times: list[float] = []
        before = (0, 0, 0.0)
        for i in range(commands + 100):
            if i == 100:
                before = _keeper_facts(runtime)
            started = time.perf_counter()
            one()
            times.append(time.perf_counter() - started)
        after = _keeper_facts(runtime)
        case.rows.append(Row(label[kind], WARM, tuple(t * 1000 for t in times[100:]), "ms",
                             True))
        case.notes.append(f"{kind}: the keeper after 100 warm commands → after {commands}"
                          f" more: {before[0]} → {after[0]} descriptors, {before[1]} →"
                          f" {after[1]} threads, RSS {before[2]:.1f} → {after[2]:.1f} MiB;"
                          f" median {median(times[100:]) * 1000:.1f} ms each.")
        case.goals.append(_goal(f"keeper descriptors gained over {commands} commands ({kind})",
                                float(after[0] - before[0]), 0, unit="fds"))
        case.goals.append(_goal(f"keeper threads gained over {commands} commands ({kind})",
                                float(after[1] - before[1]), 0, unit="threads"))
        case.goals.append(_goal(f"keeper RSS gained over {commands} commands ({kind})",
                                after[2] - before[2], 1.0, unit="MiB"))
    if not runner.warm_mode:
        raise BenchError("the commands did not go through the keeper")
    runner.close()


def _served_request(command: Command, runtime: Path) -> Callable[[], None]:
    """One whole `cluster exec` as `skeleton` hands it to the keeper (`keeper.thin`), from
    this process: the argv, directory and environment of `command`."""
    from skeleton_app.keeper import protocol
    from skeleton_app.keeper.client_env import groups
    from skeleton_app.keeper.code_watch import package_dir
    from skeleton_app.keeper.thin import _connect

    header = {"op": "exec", "v": protocol.VERSION, "argv": list(command.argv[1:]),
              "cwd": os.getcwd(), "env": dict(command.env), "package": package_dir(),
              "groups": groups()}
    path = str(_keeper_dir(runtime) / "keeper.sock")

    def one() -> None:
        sock = _connect(path)
        try:
            sock.settimeout(30)
            protocol.send(sock, header)
            while True:
                reply, _ = protocol.receive(sock)
                if reply["op"] == "declined":
                    raise BenchError(f"the keeper declined: {reply.get('why')}")
                if reply["op"] == "done":
                    if reply["code"] != 0:
                        raise BenchError(f"served exec: exit {reply['code']}")
                    return
        finally:
            sock.close()

    return one


def _cold(case: Case, h: peers.Hosts, plan: Plan) -> None:
    """The first command (no keeper: it checks, runs itself, starts one at its end) against
    `ssh.persist: 0`; each cold run has a fresh keeper directory and its keeper is stopped
    before the next run."""
    plan.say(f"case 8: cold exec on 32 hosts, with and without warm mode,"
             f" {max(plan.runs, 5)} runs")
    counter = iter(range(10_000))

    def cold_with_keeper() -> Sample:
        runtime = _fresh_runtime(plan.workdir, f"cold-{next(counter)}")
        command = _ours(h, runtime)
        try:
            sample = _timed_argv(list(command.argv), dict(command.env))
            _wait_keeper(runtime)  # it was started: this path's whole cost was paid
        finally:
            _stop_keeper(runtime)
        return sample

    today = _ours(h, _fresh_runtime(plan.workdir, "cold-off"))
    today_env = {**today.env, "SKELETON_SSH_PERSIST": "0"}
    jobs = {COLD_KEEPER: cold_with_keeper,
            COLD_TODAY: lambda: _timed_argv(list(today.argv), today_env)}
    # 5 at least: a 5% goal on 3 runs of a shared 2-core machine is mostly noise.
    got = interleaved(jobs, warmup=plan.warmup, runs=max(plan.runs, 5))
    for tool, samples in got.items():
        case.rows.append(Row("32 hosts, cold", tool, _seconds(samples), "s",
                             tool == COLD_TODAY))
    case.goals.append(_goal("cold exec true, 32 hosts: first command with warm mode ÷ without",
                            case.median_of("32 hosts, cold", COLD_KEEPER)
                            / case.median_of("32 hosts, cold", COLD_TODAY), 1.05))
