"""Voice jobs end to end through the real CLI (`skeleton jobs ...` in a subprocess), on one
testbed with PostgreSQL whose hosts were bootstrapped from the wheelhouse and run their
daemons (heartbeats every second, with `cpu_busy`): node-01 and node-02 serve `stt_batch`,
node-03 only `tts`. The engines run on the hosts from each host's own app dir and .venv.

What test_jobs_node.py (node side) and test_jobs_dispatch.py (dispatcher through the
Python API) check already is not repeated here: these are the user's paths, with exit codes
and what is printed.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from skeleton_app.registry import NodeDefaults, PostgresRegistry
from skeleton_app.testing import testbed as tb_mod
from skeleton_app.testing.testbed import Testbed
from tests.support.helpers import REPO, bootstrap_testbed, config_variant, skeleton

pytestmark = pytest.mark.postgres  # the module's testbed starts one

ROLES = {"node-01": ["stt_batch"], "node-02": ["stt_batch"], "node-03": ["tts"]}
STT_NODES = {"node-01", "node-02"}
HEARTBEAT = 1.0  # seconds between a daemon's heartbeats (SKELETON_HEARTBEAT_INTERVAL)
LEASE = "2"  # SKELETON_JOBS_LEASE of the dispatchers this module kills
BURNER_NICE = -10  # the CPU burners of the busy-node test: ahead of the other workers


@dataclass(frozen=True)
class Bed:
    testbed: Testbed
    config: Path  # the testbed's config, daemons with a 1 s heartbeat

    @property
    def dsn(self) -> str:
        assert self.testbed.db is not None
        return self.testbed.db.dsn


def _wait_for(predicate: Callable[[], object], timeout: float, what: str,
              every: float = 0.25) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, what
        time.sleep(every)


def _metrics(bed: Bed) -> dict[str, Mapping[str, Any]]:
    """Each node's latest heartbeat metrics as the registry holds them (fresh ones only)."""
    with PostgresRegistry(bed.dsn, defaults=NodeDefaults(user=tb_mod.USER)) as registry:
        entries, _ = registry.list_entries()
    return {e.node.id: e.metrics for e in entries
            if e.seen_ago is not None and e.seen_ago < 5 * HEARTBEAT}


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bed]:
    """One testbed for the module (set-up ~40 s): bootstrapped, daemons heartbeating."""
    # Directly under /tmp (PostgreSQL, as `postgres`, must traverse it), as conftest does.
    state = Path(tempfile.mkdtemp(prefix="skeleton-testbed-pytest-", dir="/tmp"))
    state.chmod(0o755)
    testbed = tb_mod.up(3, instance=None, state_dir=state, db=True, roles=ROLES)
    try:
        daemon = yaml.safe_load(testbed.config_path.read_text())["daemon"]
        command = f"env SKELETON_HEARTBEAT_INTERVAL={HEARTBEAT:g} {daemon['command']}"
        config = config_variant(testbed, tmp_path_factory.mktemp("jobs-e2e") / "config.yaml",
                                daemon={"command": command})
        this = Bed(testbed, config)
        bootstrap_testbed(testbed)
        started = skeleton("cluster", "daemon", "start", "--wait-healthy", "--health-timeout",
                           "30", config=config)
        assert started.returncode == 0, started.stdout + started.stderr
        try:
            _wait_for(lambda: all("cpu_busy" in m for m in _metrics(this).values())
                      and len(_metrics(this)) == 3, 30, "no heartbeats with cpu_busy")
            yield this
        finally:
            skeleton("cluster", "daemon", "stop", config=config)
    finally:
        tb_mod.down(testbed.state_dir, instance=testbed.instance)


def _cli(*args: str, config: Path, timeout: float = 120,
         env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The CLI with `--config` before a `--` (after it, it would be part of the command)."""
    if "--" in args:
        at = args.index("--")
        args = (*args[:at], "--config", str(config), *args[at:])
        return skeleton(*args, timeout=timeout, env=env)
    return skeleton(*args, config=config, timeout=timeout, env=env)


def _ok(*args: str, bed: Bed, timeout: float = 120,
        env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    proc = _cli(*args, config=bed.config, timeout=timeout, env=env)
    assert proc.returncode == 0, (args, proc.returncode, proc.stdout, proc.stderr)
    return proc


def _show(bed: Bed, job_id: int) -> dict[str, Any]:
    detail: dict[str, Any] = json.loads(_ok("jobs", "show", str(job_id), "--json",
                                            bed=bed).stdout)
    return detail


def _jobs(bed: Bed) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = json.loads(_ok("jobs", "list", "--json", "--limit", "1000",
                                                 bed=bed).stdout)
    return found


def _newest(bed: Bed, engine: str) -> dict[str, Any]:
    return max((j for j in _jobs(bed) if j["engine"] == engine), key=lambda j: j["id"])


def _queued_id(proc: subprocess.CompletedProcess[str]) -> int:
    match = re.search(r"^job (\d+) queued", proc.stdout, re.M)
    assert match, proc.stdout + proc.stderr
    return int(match.group(1))


def _speak(path: Path, text: str = "hello world") -> Path:
    subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(path), text], check=True,
                   capture_output=True, timeout=30)
    return path


@contextlib.contextmanager
def _dispatcher(bed: Bed, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`skeleton jobs dispatch` as a process of its own (a short lease: a killed one loses
    its jobs fast); stopped with Ctrl-C at the end if still alive."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKELETON_")}
    env["SKELETON_JOBS_LEASE"] = LEASE
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "skeleton_app", "jobs", "dispatch", "--config",
             str(bed.config)], stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO,
            start_new_session=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()


def test_stt_submit_wait_prints_the_transcript(bed: Bed, tmp_path: Path) -> None:
    wav = _speak(tmp_path / "hello.wav")
    started = time.monotonic()
    proc = skeleton("jobs", "submit", "stt", str(wav), "--wait", config=bed.config)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "hello world" in proc.stdout, proc.stdout + proc.stderr
    assert "no dispatcher is running: dispatching in this process" in proc.stderr, proc.stderr
    job = _newest(bed, "stt")
    assert (job["state"], job["input"], job["node"] in STT_NODES) == (
        "done", "hello.wav", True), job
    assert time.monotonic() - started < 60


def test_tts_then_stt_round_trip_on_nodes_of_their_roles(bed: Bed, tmp_path: Path) -> None:
    out = tmp_path / "x.wav"
    said = _ok("jobs", "submit", "tts", "hello world", "--out", str(out), "--wait", bed=bed)
    match = re.search(r"^job (\d+) done on (\S+): wrote (.+)$", said.stderr, re.M)
    assert match and match.group(3) == str(out), said.stderr
    wav = out.read_bytes()
    assert wav[:4] == b"RIFF" and wav[8:12] == b"WAVE" and len(wav) > 10_000
    heard = _ok("jobs", "submit", "stt", str(out), "--wait", bed=bed)
    assert "hello world" in heard.stdout, heard.stdout + heard.stderr

    tts_job = _show(bed, int(match.group(1)))
    stt_job = _newest(bed, "stt")
    assert stt_job["input"] == "x.wav", stt_job
    stt_job = _show(bed, stt_job["id"])
    for detail, role, nodes in ((tts_job, "tts", {"node-03"}),
                                (stt_job, "stt_batch", STT_NODES)):
        assert (detail["state"], detail["role"]) == ("done", role), detail
        (attempt,) = detail["attempts"]
        assert attempt["outcome"] == "done" and attempt["node"] in nodes, attempt
        # Roles kept: the nodes of the other role were never candidates.
        for other in {"node-01", "node-02", "node-03"} - nodes:
            assert f"{other} (no role {role})" in attempt["why"], attempt["why"]
    assert match.group(2) == "node-03"
    assert {f["kind"] for f in stt_job["files"]} == {"input", "output"}, stt_job["files"]


@pytest.mark.solo  # it burns every CPU: the suite's other workers must not compete
def test_a_busy_node_is_not_chosen_while_an_idle_one_is(bed: Bed, tmp_path: Path) -> None:
    wav = _speak(tmp_path / "busy.wav")
    init_pid = bed.testbed.host("node-01").init_pid
    burners: list[subprocess.Popen[bytes]] = []
    try:
        # One CPU burner per CPU inside node-01's namespaces; `--foreground` keeps them in
        # the group we kill (plain `timeout` makes a process group of its own).
        # Raised priority (the suite's other workers, or other suites, keep the cores busy
        # too): `nice`, and the burner's session's autogroup, which is what the scheduler
        # shares the CPU by between sessions where autogroups are on.
        for _ in range(os.cpu_count() or 1):
            burner = subprocess.Popen(
                ["nsenter", "-t", str(init_pid), "--net", "--mount", "--uts", "--pid", "--",
                 "nice", "-n", str(BURNER_NICE), "timeout", "--foreground", "600",
                 "sh", "-c", "while :; do :; done"],
                start_new_session=True)
            burners.append(burner)
            with contextlib.suppress(OSError):
                Path(f"/proc/{burner.pid}/autogroup").write_text(f"{BURNER_NICE}\n")
        busy = _wait_for(lambda: (m := _metrics(bed)).get("node-01", {}).get("cpu_busy", 0)
                         >= 0.5 and m, 90, f"node-01 never looked busy: {_metrics(bed)}")
        assert busy["node-02"]["cpu_busy"] < 0.5, busy
        for n in range(3):
            proc = _ok("jobs", "submit", "stt", str(wav), "--wait", bed=bed)
            assert "hello world" in proc.stdout, proc.stdout + proc.stderr
            detail = _show(bed, _newest(bed, "stt")["id"])
            (attempt,) = detail["attempts"]
            assert attempt["node"] == "node-02", (n, attempt["why"], attempt["reason"],
                                                  _metrics(bed))
            # Why: node-02 scored lowest, node-01 scored higher (its cpu), node-03 has no role.
            assert attempt["why"].startswith("node-02: lowest score"), attempt["why"]
            others = attempt["reason"]["others"]
            assert isinstance(others["node-01"], dict), attempt["why"]
            assert others["node-01"]["score"] > attempt["reason"]["score"], attempt["reason"]
            assert re.search(r"other scores: node-01 \d", attempt["why"]), attempt["why"]
            text = _ok("jobs", "show", str(detail["id"]), bed=bed,
                       env={"COLUMNS": "400"}).stdout
            assert "node-02: lowest score" in text, text
    finally:
        for burner in burners:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(burner.pid, signal.SIGKILL)
            burner.wait(timeout=10)


def test_a_killed_dispatcher_s_job_ends_done_exactly_once(bed: Bed, tmp_path: Path) -> None:
    log = tmp_path / "dispatch.log"
    with _dispatcher(bed, log) as first:
        queued = _ok("jobs", "submit", "run", "--role", "stt_batch", "--",
                     "sleep 3; echo once", bed=bed)
        job_id = _queued_id(queued)

        def attempt_one_running() -> bool:
            detail = _show(bed, job_id)
            return (detail["state"] == "running" and len(detail["attempts"]) == 1
                    and detail["attempts"][0]["outcome"] == "running"
                    and detail["attempts"][0]["remote_pgid"] is not None)

        _wait_for(attempt_one_running, 90, f"attempt 1 never ran: {log.read_text()}")
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=10)
    killed_at = time.monotonic()
    with _dispatcher(bed, log):
        _wait_for(lambda: _show(bed, job_id)["state"] in ("done", "failed", "cancelled"), 60,
                  f"the job never ended: {log.read_text()}")
        took = time.monotonic() - killed_at
        detail = _show(bed, job_id)
        assert detail["state"] == "done", detail
        assert [a["outcome"] for a in detail["attempts"]] == ["superseded", "done"], detail
        assert detail["attempts_made"] == 2 and detail["exit_code"] == 0, detail
        (output,) = [f for f in detail["files"] if f["kind"] == "output"] or [None]
        assert output is None or output["size"] == len(b"once\n"), detail["files"]
        proc = _ok("jobs", "list", "--json", bed=bed)
        assert sum(j["id"] == job_id for j in json.loads(proc.stdout)) == 1
        assert took < 30, took
        # The orphan of attempt 1: cleaned by a sweep (every ~15 s), its process gone.
        superseded = detail["attempts"][0]
        _wait_for(lambda: _show(bed, job_id)["attempts"][0]["cleaned_at"], 60,
                  f"attempt 1 never cleaned: {log.read_text()}", every=1.0)
        node = superseded["node"]
        left = _ok("cluster", "exec", "pgrep -x sleep || true", "--node", node, "--json",
                   bed=bed)
        assert json.loads(left.stdout)["nodes"][node]["stdout"].strip() == "", left.stdout


def test_bad_inputs_are_refused_with_one_line_and_nothing_queued(bed: Bed,
                                                                 tmp_path: Path) -> None:
    before = _jobs(bed)
    wav = _speak(tmp_path / "ok.wav")
    cases = {
        "missing file": (["stt", str(tmp_path / "nope.wav")], "nope.wav': no such file"),
        "unknown engine": (["whisper", str(wav)], "unknown engine 'whisper'"),
        "empty text": (["tts", "  "], "no text given"),
        "role no node serves": (["run", "--role", "gpu_big", "--", "true"],
                                "no enabled node has role gpu_big"),
    }
    for name, (args, says) in cases.items():
        proc = _cli("jobs", "submit", "--wait", *args, config=bed.config)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and says in lines[0], (
            name, proc.returncode, proc.stdout, proc.stderr)
    assert _jobs(bed) == before

    no_registry = config_variant(bed.testbed, tmp_path / "no-registry.yaml")
    data = yaml.safe_load(no_registry.read_text())
    del data["registry"]
    no_registry.write_text(yaml.safe_dump(data))
    proc = skeleton("jobs", "submit", "stt", str(wav), config=no_registry)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "no registry configured" in proc.stderr and len(
        proc.stderr.strip().splitlines()) == 1, proc.stderr

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again before the CLI tries it
    down = config_variant(bed.testbed, tmp_path / "down.yaml", registry={
        "dsn": f"postgresql://nobody@127.0.0.1:{port}/nothing", "connect_timeout": 3})
    proc = skeleton("jobs", "submit", "stt", str(wav), config=down)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert f":{port}" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert _jobs(bed) == before

    failed = _cli("jobs", "submit", "run", "--role", "stt_batch", "--wait", "--",
                  "echo first >&2; echo 'it broke here' >&2; exit 7", config=bed.config)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert re.search(r"job \d+ .*failed on node-0[12]: exit 7: .*it broke here", failed.stderr), (
        failed.stderr)


def test_cancel_of_a_running_job_through_the_cli(bed: Bed, tmp_path: Path) -> None:
    with _dispatcher(bed, tmp_path / "dispatch.log"):
        job_id = _queued_id(_ok("jobs", "submit", "run", "--role", "stt_batch", "--",
                                "sleep 60", bed=bed))
        _wait_for(lambda: _show(bed, job_id)["state"] == "running"
                  and _show(bed, job_id)["attempts"][-1]["remote_pgid"] is not None, 30,
                  "the job never started")
        cancel = _ok("jobs", "cancel", str(job_id), bed=bed)
        assert cancel.stdout.startswith(f"job {job_id}:"), cancel.stdout
        _wait_for(lambda: _show(bed, job_id)["state"] == "cancelled", 20, "never cancelled")
        detail = _show(bed, job_id)
        assert detail["attempts"][-1]["outcome"] == "cancelled", detail
        again = _ok("jobs", "cancel", str(job_id), bed=bed)
        assert again.stdout.strip() == f"job {job_id}: cancelled", again.stdout
