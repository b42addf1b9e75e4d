"""`cluster logs` against real hosts: filtering on the node, files written safely, faults.

Each test points `app.logs_dir` and `logs.files` at directories of its own (config variant),
so it never reads another test's daemon logs on the shared session testbed.
"""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from skeleton_app.cluster import Cluster
from skeleton_app.config import load_config
from skeleton_app.errors import NodeErrorKind, UsageError
from skeleton_app.ops.logs import (
    LogsOutcome,
    OutDir,
    RecordReader,
    collect_logs,
    follow_logs,
    merge_logs,
    parse_lines,
    parse_since,
    parse_size,
)
from skeleton_app.results import NodeResult
from skeleton_app.testing import testbed as tb
from skeleton_app.testing.testbed import Testbed
from tests.support.helpers import config_variant, skeleton


def _outcome(r: NodeResult[LogsOutcome]) -> LogsOutcome:
    assert r.outcome is not None, r
    return r.outcome


@pytest.fixture
def logdir() -> str:
    return f"logs-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def config(testbed: Testbed, tmp_path: Path, logdir: str) -> Path:
    return config_variant(testbed, tmp_path / "logs.yaml", app={"logs_dir": logdir},
                          logs={"files": [f"{logdir}/*.log", f"{logdir}/missing.log"],
                                "lines": 100})


def write_log(bed: Testbed, host: str, logdir: str, name: str, data: bytes) -> Path:
    path = bed.host(host).app_dir / logdir / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    account = pwd.getpwnam(tb.USER)
    for p in (path.parent, path):
        os.chown(p, account.pw_uid, account.pw_gid)
    return path


def stamp(seconds_ago: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(time.time() - seconds_ago))


@pytest.fixture
def cluster(config: Path) -> Iterator[Cluster]:
    with Cluster(load_config(config, env={})) as c:
        yield c


# ---------------------------------------------------------------------------- pure parts


def test_parse_lines_and_since() -> None:
    assert parse_lines("25") == 25 and parse_lines(3) == 3
    for bad in ("0", "-3", "abc", "1.5", "", 0, True):
        with pytest.raises(UsageError, match="--lines"):
            parse_lines(bad)
    now = 1_700_000_000.0
    assert parse_since("15m", now=now) == now - 900
    assert parse_since("1h30m", now=now) == now - 5400
    assert parse_since("2d", now=now) == now - 2 * 86400
    assert parse_since("2024-05-01T12:00:00+00:00") == 1714564800.0
    for bad in ("yesterday", "15x", "m"):
        with pytest.raises(UsageError, match="--since"):
            parse_since(bad)


def test_merge_orders_by_stamp_and_keeps_continuations() -> None:
    a = (b"2024-05-01 10:00:02 a2\n"
         b"Traceback line\n"
         b"2024-05-01 10:00:05 a5\n")
    b = b"2024-05-01T10:00:03.5+00:00 b3\n2024-05-01T10:00:01Z b1\n"
    c = b"no stamp here\nnor here\n"
    merged = merge_logs([("n1", a), ("n2", b), ("n3", c)]).decode()
    assert merged.splitlines() == [
        "n2: 2024-05-01T10:00:01Z b1",
        "n1: 2024-05-01 10:00:02 a2",
        "n1: Traceback line",
        "n2: 2024-05-01T10:00:03.5+00:00 b3",
        "n1: 2024-05-01 10:00:05 a5",
        "n3: no stamp here",
        "n3: nor here",
    ]


def test_out_dir_refuses_names_outside(tmp_path: Path) -> None:
    out = OutDir(tmp_path / "out")
    try:
        for bad in ("../escape.log", "a/b.log", ".."):
            with pytest.raises(UsageError):
                out.write(bad, [b"x"])
    finally:
        out.close()
    assert not (tmp_path / "escape.log").exists()


# ---------------------------------------------------------------------------- collect


def test_collect_writes_per_node_files_and_merged(testbed: Testbed, config: Path,
                                                  logdir: str, tmp_path: Path) -> None:
    for i, host in enumerate(("node-01", "node-02")):
        lines = [f"{stamp(100 - 10 * n - i)} {host} line {n}" for n in range(6)]
        write_log(testbed, host, logdir, "skeleton-daemon.log",
                  ("\n".join(lines) + "\n").encode())
        write_log(testbed, host, logdir, "worker.log", f"{stamp(5)} {host} worker\n".encode())
    out = tmp_path / "collected"
    proc = skeleton("cluster", "logs", "--node", "node-0[1-2]", "--lines", "3", "--out",
                    str(out), config=config)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["merged.log", "node-01.log", "node-02.log"]
    text = (out / "node-01.log").read_text()
    header = [line for line in text.splitlines() if line.startswith("#")]
    assert any(f"daemon log /home/skeleton/app/{logdir}/skeleton-daemon.log: 3 lines" in h
               for h in header), header
    assert any(f"{logdir}/worker.log: 1 lines" in h for h in header), header
    # a missing file is noted, not fatal
    assert any(f"{logdir}/missing.log: missing" in h for h in header), header
    assert any("journal: not collected (daemon.manager is process)" in h for h in header)
    body = [line for line in text.splitlines() if "node-01 line" in line]
    assert [line.split()[-1] for line in body] == ["3", "4", "5"]  # the last 3
    merged = (out / "merged.log").read_text().splitlines()
    assert len(merged) == 8
    assert all(line.startswith(("node-01: ", "node-02: ")) for line in merged)
    stamps = [line.split(": ", 1)[1][:19] for line in merged]
    assert stamps == sorted(stamps)


def test_grep_and_since_are_applied_on_the_node(cluster: Cluster, testbed: Testbed,
                                                logdir: str, tmp_path: Path) -> None:
    lines = [f"{stamp(7200)} ERROR old", f"{stamp(7100)} INFO old", f"{stamp(60)} ERROR new one",
             "  continuation of new one", f"{stamp(30)} INFO new", f"{stamp(10)} ERROR new two"]
    write_log(testbed, "node-03", logdir, "skeleton-daemon.log",
              ("\n".join(lines) + "\n").encode())
    nodes = cluster.select(["node-03"])
    result = collect_logs(cluster, nodes, since="15m", grep="ERROR|continuation",
                          out_dir=tmp_path / "o")
    assert result.exit_code() == 0, result.to_json()
    text = (tmp_path / "o" / "node-03.log").read_text()
    kept = [line for line in text.splitlines() if not line.startswith(("#", "==>"))]
    assert kept == [lines[2], lines[3], lines[5]]
    assert "since=15m (" in text and "grep='ERROR|continuation'" in text
    daemon = _outcome(result["node-03"]).sources[0]
    assert daemon.kind == "daemon" and daemon.lines == 3
    with pytest.raises(UsageError, match="--grep"):
        collect_logs(cluster, nodes, grep="(unclosed", out_dir=tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


def test_binary_bytes_survive(cluster: Cluster, testbed: Testbed, logdir: str,
                             tmp_path: Path) -> None:
    raw = b"start\n\x00\xff\xfe\x1b[31mred\x1b[0m \xc3(\n\x07bell\r\nend without newline"
    write_log(testbed, "node-04", logdir, "skeleton-daemon.log", raw)
    result = collect_logs(cluster, cluster.select(["node-04"]), lines=10, out_dir=tmp_path)
    assert result.exit_code() == 0
    content = (tmp_path / "node-04.log").read_bytes()
    section = content.split(b"<==\n", 1)[1]
    assert section == raw + b"\n"
    assert b"node-04: \x00\xff\xfe\x1b[31mred" in (tmp_path / "merged.log").read_bytes()


def test_bad_lines_exit_2_one_line_nothing_run(config: Path, tmp_path: Path) -> None:
    for bad in ("0", "-5", "ten", "2.5"):
        out = tmp_path / f"out{bad}"
        proc = skeleton("cluster", "logs", "--lines", bad, "--out", str(out), config=config)
        assert proc.returncode == 2, (bad, proc.stderr)
        assert proc.stderr.strip().count("\n") == 0, proc.stderr
        assert "--lines" in proc.stderr and bad in proc.stderr
        assert not out.exists()


def test_planted_symlink_is_replaced_not_followed(cluster: Cluster, testbed: Testbed,
                                                  logdir: str, tmp_path: Path) -> None:
    write_log(testbed, "node-05", logdir, "skeleton-daemon.log", b"fresh line\n")
    out = tmp_path / "out"
    out.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (out / "node-05.log").symlink_to(victim)
    (out / "merged.log").symlink_to(victim)
    result = collect_logs(cluster, cluster.select(["node-05"]), lines=5, out_dir=out)
    assert result.exit_code() == 0
    assert victim.read_text() == "precious\n"
    assert not (out / "node-05.log").is_symlink()
    assert "fresh line" in (out / "node-05.log").read_text()
    assert not (out / "merged.log").is_symlink()
    assert sorted(p.name for p in out.iterdir()) == ["merged.log", "node-05.log"]


def test_failed_node_reported_others_written(testbed: Testbed, config: Path, logdir: str,
                                             tmp_path: Path) -> None:
    write_log(testbed, "node-01", logdir, "skeleton-daemon.log", b"alive\n")
    out = tmp_path / "out"
    tb.stop_sshd(testbed, "node-06")
    try:
        proc = skeleton("cluster", "logs", "--node", "node-01,node-06", "--out", str(out),
                        "--json", config=config)
    finally:
        tb.start_sshd(testbed, "node-06")
    assert proc.returncode == 4, proc.stderr
    assert "alive" in (out / "node-01.log").read_text()
    failed = (out / "node-06.log").read_text()
    assert "# error: refused" in failed
    assert "node-01: alive" in (out / "merged.log").read_text()


def test_journal_source_with_systemd_manager(testbed: Testbed, tmp_path: Path,
                                             logdir: str) -> None:
    config = config_variant(testbed, tmp_path / "sd.yaml", app={"logs_dir": logdir},
                            logs={"files": []},
                            daemon={"manager": "systemd", "unit": "skeleton-test"})
    with Cluster(load_config(config, env={})) as cluster:
        result = collect_logs(cluster, cluster.select(["node-02"]), lines=5,
                              out_dir=tmp_path / "o")
    assert result.exit_code() == 0
    sources = _outcome(result["node-02"]).sources
    assert [s.kind for s in sources] == ["daemon", "journal"]
    assert sources[1].name == "skeleton-test"
    assert "journal of unit skeleton-test" in (tmp_path / "o" / "node-02.log").read_text()


# ---------------------------------------------------------------------------- follow


def test_follow_streams_new_lines_then_stops_everything(cluster: Cluster, testbed: Testbed,
                                                        logdir: str) -> None:
    log = write_log(testbed, "node-03", logdir, "skeleton-daemon.log", b"old 1\nold 2\n")
    write_log(testbed, "node-04", logdir, "skeleton-daemon.log", b"")
    got: list[tuple[str, bytes]] = []
    stop = threading.Event()
    result: dict[str, object] = {}
    nodes = cluster.select(["node-0[3-4]"])
    worker = threading.Thread(target=lambda: result.setdefault("r", follow_logs(
        cluster, nodes, lines=1, grep="new|old", on_line=lambda n, line: got.append((n, line)),
        stop=stop)))
    worker.start()
    try:
        deadline = time.monotonic() + 20
        while ("node-03", b"old 2") not in got and time.monotonic() < deadline:
            time.sleep(0.05)
        with open(log, "ab") as f:
            f.write(b"new line\nskipped by grep\n")
        # A configured file that did not exist when following started is picked up.
        write_log(testbed, "node-04", logdir, "missing.log", b"new on node-04\n")
        while len(got) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        worker.join(30)
    assert not worker.is_alive()
    assert got[0] == ("node-03", b"old 2")  # --lines 1 of the backlog
    assert set(got[1:]) == {("node-03", b"new line"), ("node-04", b"new on node-04")}
    follow = result["r"]
    assert follow.exit_code() == 0  # type: ignore[attr-defined]
    time.sleep(0.5)
    for host in ("node-03", "node-04"):
        procs = tb.host_exec(testbed, host, ["pgrep", "-a", "-u", tb.USER, "tail|journalctl"],
                             check=False)
        assert procs.stdout == "", procs.stdout
    # The test hosts share the machine's /tmp, where other tests (other xdist workers) may
    # be following logs too: ours are the work dirs whose `seen` list names our log dir.
    def ours(work: Path) -> bool:
        try:
            return f"/{logdir}/" in (work / "seen").read_text(errors="replace")
        except OSError:
            return False

    leftover = [d for d in Path("/tmp").glob("skeleton-logs.*") if ours(d)]
    assert leftover == []


def test_follow_unreachable_node_is_an_error(cluster: Cluster, testbed: Testbed) -> None:
    tb.stop_sshd(testbed, "node-05")
    try:
        result = follow_logs(cluster, cluster.select(["node-05"]), lines=1,
                             on_line=lambda n, line: None)
    finally:
        tb.start_sshd(testbed, "node-05")
    assert result.exit_code() == 4
    assert result["node-05"].error_kind == NodeErrorKind.UNREACHABLE


def test_cli_follow_until_ctrl_c(testbed: Testbed, config: Path, logdir: str) -> None:
    import signal
    import subprocess
    import sys

    from tests.support.helpers import REPO

    log = write_log(testbed, "node-06", logdir, "skeleton-daemon.log", b"")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKELETON_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "skeleton_app", "--config", str(config), "cluster", "logs",
         "--node", "node-06", "--follow"], cwd=REPO, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 20
        line = b""
        while not line and time.monotonic() < deadline:
            with open(log, "ab") as f:
                f.write(b"hello \x1b[2J follow\n")
            time.sleep(0.3)
            line = proc.stdout.readline() if _readable(proc.stdout) else b""
        assert line == b"node-06: hello \\x1b[2J follow\n"  # control bytes made visible
        proc.send_signal(signal.SIGINT)
        assert proc.wait(20) == 0, proc.stderr.read() if proc.stderr else ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    procs = tb.host_exec(testbed, "node-06", ["pgrep", "-a", "-u", tb.USER, "tail"],
                         check=False)
    assert procs.stdout == ""


def _readable(stream: Any) -> bool:
    import select

    return bool(select.select([stream], [], [], 0.5)[0])


# ---------------------------------------------------------------------------- bounded memory


def test_record_reader_any_chunking_and_a_lying_length(tmp_path: Path) -> None:
    """The stream parser gives the same sources however the bytes arrive, and a node that
    announces and sends far more than --max-bytes has the rest dropped, not kept."""
    answer = (b"S\0daemon\0/a/d.log\0ok\0006\0one\ntw"
              b"S\0file\0./x.log\0missing\0000\0"
              b"S\0file\0./y.log\0ok\0003\0abc")
    for step in (1, 2, 7, len(answer)):
        body = tmp_path / f"body{step}"
        with body.open("w+b") as f:
            reader = RecordReader(f, 1 << 20)
            for i in range(0, len(answer), step):
                reader.feed(answer[i:i + step])
            sources = reader.finish()
        assert [(s.kind, s.name, s.status, s.lines) for s in sources] == [
            ("daemon", "/a/d.log", "ok", 2), ("file", "x.log", "missing", 0),
            ("file", "y.log", "ok", 1)]
        # each source ends its last line, so the next one starts a line of its own
        assert body.read_bytes() == b"one\ntw\nabc\n"
    huge = 64 * 1024 * 1024
    with (tmp_path / "huge").open("w+b") as f:
        reader = RecordReader(f, 4096)
        reader.feed(b"S\0daemon\0d.log\0ok\0" + str(huge).encode() + b"\0")
        chunk = b"x" * (1 << 20)
        for _ in range(huge // len(chunk)):
            reader.feed(chunk)
        (source,) = reader.finish()
    assert (tmp_path / "huge").stat().st_size <= 4096 + 1
    assert source.status == f"cut: {huge - 4096} bytes over --max-bytes"
    with (tmp_path / "bad").open("w+b") as f, pytest.raises(ValueError, match="header field"):
        RecordReader(f, 4096).feed(b"S\0" + b"n" * 10_000)


def test_parse_size() -> None:
    assert parse_size("512") == 512 and parse_size("64K") == 65536
    assert parse_size("16M") == 16 << 20 and parse_size("1g") == 1 << 30 and parse_size(7) == 7
    for bad in ("0", "-1", "lots", "", "1.5M", 0, True):
        with pytest.raises(UsageError, match="--max-bytes"):
            parse_size(bad)


def test_a_200_mb_single_line_log_is_cut_with_bounded_memory(
        testbed: Testbed, config: Path, logdir: str, tmp_path: Path) -> None:
    """The issue's case (a 600 MB single-line log peaked at 2.99 GB): the line is cut on the
    node, the rest of the log is intact, and the whole CLI process stays small."""
    path = testbed.host("node-05").app_dir / logdir / "skeleton-daemon.log"
    write_log(testbed, "node-05", logdir, "skeleton-daemon.log", f"{stamp(9)} first\n".encode())
    with path.open("ab") as f:
        block = b"y" * (1 << 20)
        for _ in range(200):
            f.write(block)
        f.write(f"\n{stamp(5)} after the long line\n".encode())
    out = tmp_path / "o"
    # The CLI runs under a tiny parent that reports its children's peak RSS (KiB).
    probe = ("import resource, subprocess, sys\n"
             "rc = subprocess.run(sys.argv[1:]).returncode\n"
             "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)\n"
             "sys.exit(rc)\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKELETON_")}
    proc = subprocess.run(
        [sys.executable, "-c", probe, sys.executable, "-m", "skeleton_app", "cluster", "logs",
         "--node", "node-05", "--max-line", "1K", "--out", str(out), "--config", str(config)],
        capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    peak_mib = int(proc.stderr.strip().splitlines()[-1]) / 1024
    assert peak_mib < 150, f"peak RSS {peak_mib:.0f} MiB"
    body = (out / "node-05.log").read_bytes().split(b"<==\n", 1)[1].splitlines()
    assert body[0].endswith(b" first") and body[2].endswith(b" after the long line")
    assert body[1] == b"y" * 1024
    assert (out / "merged.log").read_bytes().count(b"\n") == 3


def test_max_bytes_keeps_the_newest_and_says_so(cluster: Cluster, testbed: Testbed,
                                               logdir: str, tmp_path: Path) -> None:
    lines = [f"{stamp(600 - n)} line {n:04d}" for n in range(500)]
    write_log(testbed, "node-06", logdir, "skeleton-daemon.log",
              ("\n".join(lines) + "\n").encode())
    result = collect_logs(cluster, cluster.select(["node-06"]), lines=1000, max_bytes=2048,
                          out_dir=tmp_path)
    assert result.exit_code() == 0, result.to_json()
    daemon = _outcome(result["node-06"]).sources[0]
    assert daemon.size <= 2048 and daemon.status.startswith("cut: ")
    kept = (tmp_path / "node-06.log").read_text().split("<==\n", 1)[1].splitlines()
    assert kept == lines[-len(kept):] and 40 < len(kept) < 100  # whole lines, the newest
    assert "cut: " in (tmp_path / "node-06.log").read_text().splitlines()[2]


def test_bad_sizes_exit_2_nothing_run(config: Path, tmp_path: Path) -> None:
    for flag, bad in (("--max-bytes", "0"), ("--max-bytes", "lots"), ("--max-line", "-3")):
        out = tmp_path / "o"
        proc = skeleton("cluster", "logs", flag, bad, "--out", str(out), config=config)
        assert proc.returncode == 2, (flag, bad, proc.stderr)
        assert flag in proc.stderr and proc.stderr.strip().count("\n") == 0, proc.stderr
        assert not out.exists()
