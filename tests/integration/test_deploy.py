"""`cluster deploy` on the real testbed: real rsync over real ssh, real faults.

Each test deploys into an app dir of its own on every host (tests.support.deploy_support.variant),
and a test that breaks a host puts it back in a `finally`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from skeleton_app.cluster import Cluster
from skeleton_app.config import Settings
from skeleton_app.errors import NodeErrorKind, UsageError
from skeleton_app.ops import status as status_op
from skeleton_app.ops.daemon import daemon_control, health_check
from skeleton_app.ops.deploy import DeployEvent, DeployOutcome, deploy, tree_digest
from skeleton_app.results import ClusterResult, NodeResult
from skeleton_app.testing import testbed as tbm
from skeleton_app.testing.testbed import Testbed
from skeleton_app.transfers import DEFAULT_PARTIAL_DIR
from tests.support.deploy_support import (
    DEPLOYED,
    EXCLUDED,
    daemons_stopped_after,
    host_path,
    make_source,
    settings_of,
    unique_app_dir,
    variant,
)
from tests.support.helpers import REPO, bootstrap_testbed, skeleton

DIGEST_EXCLUDES = (".venv/", "__pycache__/", "*.pyc", ".git/", "logs/", "/.skeleton-deploy/",
                   "/.skeleton-daemon.pid", "/.skeleton-daemon.lock", f"{DEFAULT_PARTIAL_DIR}/")


def _version(src: Path) -> str:
    return tree_digest(src, DIGEST_EXCLUDES).version


def _digest_line(testbed: Testbed, node: str, app_dir: str) -> str | None:
    path = host_path(testbed, node, f"{app_dir}/.skeleton-deploy/digest")
    return path.read_text().splitlines()[0] if path.exists() else None


def _outcome(r: NodeResult[DeployOutcome]) -> DeployOutcome:
    assert r.outcome is not None, r
    return r.outcome


def _files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


# ------------------------------------------------------------------ happy paths


def test_deploy_pushes_the_tree_then_skips_unchanged(testbed: Testbed, tmp_path: Path) -> None:
    src = make_source(tmp_path / "src", "A")
    os.utime(src / "app/main.py", (1_500_000_000, 1_500_000_000))
    (src / "app/link").symlink_to("main.py")
    app_dir = unique_app_dir("happy")
    settings = settings_of(variant(testbed, tmp_path, app_dir=app_dir))
    events: list[DeployEvent] = []
    with Cluster(settings) as cluster:
        nodes = cluster.select([])
        assert len(nodes) == 6
        result = deploy(cluster, nodes, source=src, on_progress=events.append)
        assert result.exit_code() == 0, result.to_json()
        version = _version(src)
        for node in nodes:
            root = host_path(testbed, node.id, app_dir)
            assert _files_under(root) - {".skeleton-deploy/lock", ".skeleton-deploy/owner",
                                         ".skeleton-deploy/digest"} == DEPLOYED | {"app/link"}
            assert os.readlink(root / "app/link") == "main.py"
            for rel in EXCLUDED:
                assert not (root / rel).exists(), rel
            assert (root / "bin/run.sh").stat().st_mode & 0o777 == 0o755
            assert int((root / "app/main.py").stat().st_mtime) == 1_500_000_000
            assert _digest_line(testbed, node.id, app_dir) == version
            out = _outcome(result[node.id])
            assert out.files_changed >= len(DEPLOYED) and out.bytes_sent > 0
            assert out.unchanged is False and out.version == version
        # The live display saw every node go through the lock, the transfer and the end.
        phases = {(e.node, e.phase) for e in events}
        assert all((n.id, p) in phases for n in nodes for p in ("lock", "sync", "done"))

        # Nothing changed locally: no rsync at all. The proof: a file edited by hand on one
        # node stays edited (rsync would have put it back).
        edited = host_path(testbed, "node-01", f"{app_dir}/app/main.py")
        edited.write_text("hand edit\n")
        again = deploy(cluster, nodes, source=src)
        assert again.exit_code() == 0
        assert all(out.unchanged and out.files_changed == 0
                   for out in again.outcomes().values())
        assert len(again.outcomes()) == len(nodes)
        assert edited.read_text() == "hand edit\n"

        forced = deploy(cluster, nodes, source=src, force=True)
        assert forced.exit_code() == 0
        assert edited.read_text() == "VERSION = 'A'\n"
        assert [c.path for c in _outcome(forced["node-01"]).changes
                if not c.path.endswith("/")] == ["app/main.py"]
        assert _outcome(forced["node-02"]).files_changed == 0

        # One file changed: only it moves, everywhere; the digest follows.
        (src / "app/data/config.json").write_text('{"a": 2}\n')
        changed = deploy(cluster, nodes, source=src)
        assert changed.exit_code() == 0
        for node in nodes:
            files = [c.path for c in _outcome(changed[node.id]).changes
                     if not c.path.endswith("/")]
            assert files == ["app/data/config.json"]
            assert _digest_line(testbed, node.id, app_dir) == _version(src)


def test_delete_never_touches_excluded_or_runtime_paths(testbed: Testbed,
                                                         tmp_path: Path) -> None:
    src = make_source(tmp_path / "src", "A")
    app_dir = unique_app_dir("delete")
    settings = settings_of(variant(testbed, tmp_path, app_dir=app_dir))
    keep = [".venv/lib/site.py", "logs/skeleton-daemon.log", "models/whisper.bin",
            ".skeleton-daemon.pid", ".skeleton-daemon.lock", "app/__pycache__/old.cpython-311.pyc",
            "app/old.pyc", ".git/config"]
    with Cluster(settings) as cluster:
        nodes = cluster.select(["node-0[1-2]"])
        assert deploy(cluster, nodes, source=src).exit_code() == 0
        for node in nodes:
            root = host_path(testbed, node.id, app_dir)
            for rel in [*keep, "stale.py", "app/gone.py"]:
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                (root / rel).write_text("on the node\n")
        # Without --delete, extra files stay.
        assert deploy(cluster, nodes, source=src, force=True).exit_code() == 0
        assert host_path(testbed, "node-01", f"{app_dir}/stale.py").exists()
        result = deploy(cluster, nodes, source=src, delete=True)
        assert result.exit_code() == 0, result.to_json()
        for node in nodes:
            root = host_path(testbed, node.id, app_dir)
            assert not (root / "stale.py").exists() and not (root / "app/gone.py").exists()
            for rel in keep:
                assert (root / rel).read_text() == "on the node\n", rel
            deleted = {c.path for c in _outcome(result[node.id]).changes
                       if c.kind == "deleted"}
            assert deleted == {"stale.py", "app/gone.py"}


def test_dry_run_lists_changes_and_changes_nothing(testbed: Testbed, tmp_path: Path) -> None:
    src = make_source(tmp_path / "src", "A")
    app_dir = unique_app_dir("dry")
    config = variant(testbed, tmp_path, app_dir=app_dir)
    settings = settings_of(config)
    with Cluster(settings) as cluster:
        nodes = cluster.select(["node-03"])
        result = deploy(cluster, nodes, source=src, dry_run=True)
        assert result.exit_code() == 0
        listed = {c.path for c in _outcome(result["node-03"]).changes}
        assert listed >= DEPLOYED
        assert not host_path(testbed, "node-03", app_dir).exists()

        assert deploy(cluster, nodes, source=src).exit_code() == 0
        before = _digest_line(testbed, "node-03", app_dir)
        (src / "app/main.py").write_text("VERSION = 'B'\n")
        (src / "app/new.py").write_text("x = 1\n")
    proc = skeleton("cluster", "deploy", "--dry-run", "--delete", "--source", str(src),
                    "-n", "node-03", config=config)
    assert proc.returncode == 0, proc.stderr
    assert "app/main.py" in proc.stdout and "app/new.py" in proc.stdout
    assert "would be made" in proc.stdout
    root = host_path(testbed, "node-03", app_dir)
    assert (root / "app/main.py").read_text() == "VERSION = 'A'\n"
    assert not (root / "app/new.py").exists()
    assert _digest_line(testbed, "node-03", app_dir) == before


def test_dest_with_spaces_and_quotes(testbed: Testbed, tmp_path: Path) -> None:
    src = make_source(tmp_path / "src dir 'x'", "A")
    dest = "/home/skeleton/dest with space's \"q\" $(id)"
    config = variant(testbed, tmp_path)
    proc = skeleton("cluster", "deploy", "--source", str(src), "--dest", dest, "--json",
                    "-n", "node-0[4-5]", config=config)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert sorted(data["ok"]) == ["node-04", "node-05"]
    for node in ("node-04", "node-05"):
        assert data["nodes"][node]["data"]["dest"] == dest
        root = host_path(testbed, node, dest)
        assert (root / "app/main.py").read_text() == "VERSION = 'A'\n"
        assert _digest_line(testbed, node, dest) == _version(src)


def test_after_commands_run_in_dest_and_their_failure_fails_the_node(
        testbed: Testbed, tmp_path: Path) -> None:
    src = make_source(tmp_path / "src", "A")
    app_dir = unique_app_dir("after")
    good = variant(testbed, tmp_path, app_dir=app_dir, name="good.yaml", deploy={"after": [
        "echo ran > after-marker && printf '%s\\n' \"$SKELETON_NODE_ID\" >> after-marker",
        "test -f VERSION"]})
    proc = skeleton("cluster", "deploy", "--source", str(src), "-n", "node-0[1-2]",
                    config=good)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for node in ("node-01", "node-02"):
        marker = host_path(testbed, node, f"{app_dir}/after-marker")
        assert marker.read_text() == f"ran\n{node}\n"

    bad = variant(testbed, tmp_path, app_dir=app_dir, name="bad.yaml",
                  deploy={"after": ["echo installing; exit 7", "touch never-reached"]})
    (src / "VERSION").write_text("B\n")
    proc = skeleton("cluster", "deploy", "--source", str(src), "-n", "node-0[1-2]", "--json",
                    config=bad)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    data = json.loads(proc.stdout)
    for node in ("node-01", "node-02"):
        r = data["nodes"][node]
        assert r["exit_code"] == 7 and "exit 7" in r["stderr"]
        assert not host_path(testbed, node, f"{app_dir}/never-reached").exists()
        # Not committed: the next deploy must not think this node is up to date.
        assert _digest_line(testbed, node, app_dir) is None
    proc = skeleton("cluster", "deploy", "--source", str(src), "-n", "node-0[1-2]",
                    config=good)
    assert proc.returncode == 0
    assert _digest_line(testbed, "node-01", app_dir) == _version(src)


# ------------------------------------------------------------------ bad input


def test_source_missing_or_not_a_directory_is_exit_2(testbed: Testbed, tmp_path: Path) -> None:
    app_dir = unique_app_dir("badsrc")
    config = variant(testbed, tmp_path, app_dir=app_dir)
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    for source, words in ((tmp_path / "missing", "does not exist"),
                          (a_file, "is not a directory")):
        proc = skeleton("cluster", "deploy", "--source", str(source), config=config)
        assert proc.returncode == 2, proc.stderr
        assert words in proc.stderr and "--source" in proc.stderr
    assert not host_path(testbed, "node-01", app_dir).exists()  # nothing ran
    with Cluster(settings_of(config)) as cluster, pytest.raises(UsageError):
        deploy(cluster, cluster.nodes, source=tmp_path / "missing")


def test_relative_deploy_source_is_relative_to_the_config_file(testbed: Testbed,
                                                                tmp_path: Path) -> None:
    make_source(tmp_path / "tree", "R")
    app_dir = unique_app_dir("relsrc")
    config = variant(testbed, tmp_path, app_dir=app_dir, deploy={"source": "tree"})
    proc = skeleton("cluster", "deploy", "-n", "node-06", config=config)  # cwd is the repo
    assert proc.returncode == 0, proc.stderr
    assert host_path(testbed, "node-06", f"{app_dir}/VERSION").read_text() == "R\n"


# ------------------------------------------------------------------ faults


def test_unreachable_node_others_still_deployed_exit_4(testbed: Testbed, tmp_path: Path) -> None:
    src = make_source(tmp_path / "src", "A")
    app_dir = unique_app_dir("unreach")
    config = variant(testbed, tmp_path, app_dir=app_dir)
    tbm.stop_sshd(testbed, "node-03")
    try:
        proc = skeleton("cluster", "deploy", "--source", str(src), "--json", config=config)
    finally:
        tbm.start_sshd(testbed, "node-03")
    assert proc.returncode == 4, proc.stderr
    data = json.loads(proc.stdout)
    assert data["errors"] == ["node-03"]
    assert data["nodes"]["node-03"]["error_kind"] == "refused"
    assert sorted(data["ok"]) == ["node-01", "node-02", "node-04", "node-05", "node-06"]
    for node in data["ok"]:
        assert host_path(testbed, node, f"{app_dir}/VERSION").read_text() == "A\n"
    assert not host_path(testbed, "node-03", app_dir).exists()


def test_rsync_missing_on_a_node_is_named(testbed: Testbed, tmp_path: Path) -> None:
    src = make_source(tmp_path / "src", "A")
    app_dir = unique_app_dir("norsync")
    settings = settings_of(variant(testbed, tmp_path, app_dir=app_dir))
    tbm.hide_command(testbed, "node-02", "/usr/bin/rsync")
    try:
        with Cluster(settings) as cluster:
            result = deploy(cluster, cluster.select(["node-0[1-3]"]), source=src)
        # The CLI too: a node that answered but cannot take the deploy failed (1); it was
        # not unreachable (4).
        proc = skeleton("cluster", "deploy", "--source", str(src), "-n", "node-02",
                        config=variant(testbed, tmp_path, app_dir=app_dir, name="cli.yaml"))
    finally:
        tbm.unhide_command(testbed, "node-02", "/usr/bin/rsync")
    assert result.exit_code() == 1
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "rsync is not installed on node-02" in proc.stdout + proc.stderr
    r = result["node-02"]
    assert r.error_kind is NodeErrorKind.LOCAL
    assert "rsync is not installed on node-02" in (r.error or "")
    assert sorted(result.ok) == ["node-01", "node-03"]
    assert not host_path(testbed, "node-02", f"{app_dir}/VERSION").exists()


def test_disk_full_is_reported_and_leaves_no_partial_tree(testbed: Testbed,
                                                          tmp_path: Path) -> None:
    big = os.urandom(3 * 1024 * 1024).hex()[: 3 * 1024 * 1024]  # incompressible enough
    src = make_source(tmp_path / "src", "A", extra={"models/a.txt": "small\n",
                                                    "zz-big.bin": big})
    # The default app dir: small_disk puts its tmpfs exactly there.
    config = variant(testbed, tmp_path, app_dir=tbm.APP_DIR)
    with tbm.small_disk(testbed, "node-04", "1M"):
        with Cluster(settings_of(config)) as cluster:
            result = deploy(cluster, cluster.select(["node-0[4-5]"]), source=src)
        files = tbm.host_exec(testbed, "node-04", ["find", tbm.APP_DIR, "-type", "f"])
        partials = tbm.host_exec(testbed, "node-04",
                                 ["find", tbm.APP_DIR, "-name", DEFAULT_PARTIAL_DIR])
        # The CLI too: a full disk is a failed node (1), not an unreachable one (4).
        proc = skeleton("cluster", "deploy", "--source", str(src), "-n", "node-04", "--json",
                        config=config)
    assert result.exit_code() == 1, result.to_json()
    assert proc.returncode == 1, proc.stdout + proc.stderr
    cli = json.loads(proc.stdout)["nodes"]["node-04"]
    assert cli["error_kind"] is None and "disk full" in cli["data"]["message"], cli
    r = result["node-04"]
    # rsync reports the full disk as a file I/O error (11), or as a protocol error (12) when
    # it notices the receiver's exit first (seen on a loaded machine); its words are the same.
    assert r.exit_code in (11, 12), (r.exit_code, r.stderr)
    # rsync's words, or (they can be lost when the receiver quits) the node's free space
    assert ("No space left on device" in r.stderr
            or "less than 1 MiB free" in (_outcome(r).message or "")), (r.stderr, r.outcome)
    assert "disk full" in (_outcome(r).message or "")
    # No file of the new tree under its final name, complete or partial, and the holding
    # directories were removed to give the space back: only our lock files are left.
    left = {line[len(tbm.APP_DIR) + 1:] for line in files.stdout.splitlines()}
    assert left <= {".skeleton-deploy/lock", ".skeleton-deploy/owner"}, left
    assert partials.stdout == ""
    assert result["node-05"].ok
    assert host_path(testbed, "node-05", f"{tbm.APP_DIR}/zz-big.bin").stat().st_size == len(big)


def test_killed_deploy_reruns_and_converges(testbed: Testbed, tmp_path: Path) -> None:
    old = {f"data/f{i}.bin": os.urandom(300_000) for i in range(6)}
    new = {name: os.urandom(300_000) for name in old}
    src = make_source(tmp_path / "src", "A")
    for name, blob in old.items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes(blob)
    app_dir = unique_app_dir("killed")
    config = variant(testbed, tmp_path, app_dir=app_dir)
    proc = skeleton("cluster", "deploy", "--source", str(src), "-n", "node-05", config=config)
    assert proc.returncode == 0, proc.stderr
    for name, blob in new.items():
        (src / name).write_bytes(blob)
    root = host_path(testbed, "node-05", app_dir)
    log = tmp_path / "killed-deploy.log"
    tbm.set_rate(testbed, "node-05", "1mbit")  # 1.8 MB of noise to send: ~15 s
    try:
        argv = [sys.executable, "-m", "skeleton_app", "cluster", "deploy", "--source", str(src),
                "-n", "node-05", "--config", str(config)]
        env = {k: v for k, v in os.environ.items() if not k.startswith("SKELETON_")}
        with log.open("w") as out:
            deployer = subprocess.Popen(argv, cwd=REPO, env=env, start_new_session=True,
                                        stdout=out, stderr=subprocess.STDOUT)
        try:
            # Kill once the first new file sits complete in the holding directory (and the
            # next is being written): the transfer is well under way.
            partial = root / "data" / DEFAULT_PARTIAL_DIR
            deadline = time.monotonic() + 30
            while not (partial.is_dir() and list(partial.iterdir())):
                assert time.monotonic() < deadline, "the transfer never started"
                assert deployer.poll() is None, log.read_text()
                time.sleep(0.02)
        finally:
            # Like a killed terminal: the deploy, its rsync and its ssh all die at once.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(deployer.pid, signal.SIGKILL)
            deployer.wait()
    finally:
        tbm.set_rate(testbed, "node-05", None)
    assert deployer.returncode == -signal.SIGKILL, log.read_text()
    # Old files or new files, never half-written ones.
    finals = [(root / name).read_bytes() for name in old]
    for name, data in zip(old, finals, strict=True):
        assert data in (old[name], new[name]), name
    # Killed mid-transfer: nothing had been put in place yet (updates come at the end).
    assert finals == list(old.values())
    assert _digest_line(testbed, "node-05", app_dir) is None  # not mistaken for finished

    # The lock died with the killed deploy; running it again converges.
    proc = skeleton("cluster", "deploy", "--source", str(src), "-n", "node-05", "--lock-wait",
                    "2", config=config)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for name in new:
        assert (root / name).read_bytes() == new[name]
    assert _digest_line(testbed, "node-05", app_dir) == _version(src)
    assert not [p for p in root.rglob(DEFAULT_PARTIAL_DIR)]


def test_concurrent_deploys_to_one_node_are_serialised(testbed: Testbed,
                                                       tmp_path: Path) -> None:
    src = make_source(tmp_path / "src", "A")
    app_dir = unique_app_dir("lock")
    slow = settings_of(variant(testbed, tmp_path, app_dir=app_dir, name="slow.yaml",
                               deploy={"after": ["sleep 3"]}))
    fast = settings_of(variant(testbed, tmp_path, app_dir=app_dir, name="fast.yaml"))
    owner = host_path(testbed, "node-06", f"{app_dir}/.skeleton-deploy/owner")
    outcome: dict[str, ClusterResult] = {}

    def first(force: bool = False) -> None:
        with Cluster(slow) as cluster:
            outcome["first"] = deploy(cluster, cluster.select(["node-06"]), source=src,
                                      force=force)

    with Cluster(fast) as cluster:
        node = cluster.select(["node-06"])
        thread = threading.Thread(target=first)
        thread.start()
        try:
            deadline = time.monotonic() + 20
            while not host_path(testbed, "node-06", f"{app_dir}/VERSION").exists():
                assert time.monotonic() < deadline
                time.sleep(0.05)
            started = time.monotonic()
            second = deploy(cluster, node, source=src, lock_wait=0.5)
            waited = time.monotonic() - started
        finally:
            thread.join(30)
        r = second["node-06"]
        assert r.error_kind is NodeErrorKind.LOCAL, second.to_json()
        assert second.exit_code() == 1  # the node answered: failed, not unreachable
        assert re.search(r"deploy in progress by \S+@\S+ since \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ",
                         r.error or ""), r.error
        assert 0.4 <= waited < 3
        assert owner.read_text().startswith("owner=")
        assert outcome["first"]["node-06"].ok

        # A deploy that may wait long enough gets the lock once the first one is done.
        thread = threading.Thread(target=first, args=(True,))
        thread.start()
        try:
            time.sleep(1)
            started = time.monotonic()
            third = deploy(cluster, node, source=src, lock_wait=15, force=True)
            waited = time.monotonic() - started
        finally:
            thread.join(30)
        assert third["node-06"].ok, third.to_json()
        assert waited >= 1.0  # it really waited for the first one's `sleep 3`
        assert outcome["first"]["node-06"].ok


def test_a_lock_held_on_the_node_fails_it_with_exit_1_naming_the_holder(
        testbed: Testbed, tmp_path: Path) -> None:
    src = make_source(tmp_path / "src", "A")
    app_dir = unique_app_dir("held")
    config = variant(testbed, tmp_path, app_dir=app_dir)
    proc = skeleton("cluster", "deploy", "--source", str(src), "-n", "node-03", config=config)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    state = host_path(testbed, "node-03", f"{app_dir}/.skeleton-deploy")
    (state / "owner").write_text("owner=carol@desk since=2026-01-02T03:04:05Z\n")
    (src / "VERSION").write_text("B\n")
    # Another deploy's lock: the same flock(2) deploy.sh takes, on the same file.
    with (state / "lock").open("a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        proc = skeleton("cluster", "deploy", "--source", str(src), "-n", "node-0[2-3]",
                        "--lock-wait", "0.3", "--json", config=config)
    assert proc.returncode == 1, proc.stdout + proc.stderr  # failed, not unreachable (4)
    data = json.loads(proc.stdout)
    node = data["nodes"]["node-03"]
    assert node["error_kind"] == "local", node
    assert "deploy in progress by carol@desk since 2026-01-02T03:04:05Z" in node["error"]
    assert data["ok"] == ["node-02"] and data["exit_code"] == 1
    assert _digest_line(testbed, "node-03", app_dir) != _version(src)  # nothing sent


# ------------------------------------------------------------------ end to end


def test_end_to_end_version_a_then_b_with_restart(testbed: Testbed, tmp_path: Path) -> None:
    src = make_source(tmp_path / "src", "A")
    app_dir = unique_app_dir("e2e")
    config = variant(testbed, tmp_path, app_dir=app_dir, port=8771)
    settings = settings_of(config)
    with daemons_stopped_after(settings) as cluster:
        nodes = cluster.select([])
        proc = skeleton("cluster", "deploy", "--source", str(src), config=config)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "6/6 node(s) ok" in proc.stdout
        proc = skeleton("cluster", "daemon", "start", "--wait-healthy", config=config)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        version_a = _version(src)
        status = status_op.status(cluster, nodes)
        for node in nodes:
            st = status[node.id].outcome.status
            assert st.daemon_running is True and st.code_version == version_a
            health = health_check(cluster, node, timeout=5)
            assert health.outcome.health["version"] == "A"
            assert health.outcome.health["node"] == node.id

        (src / "VERSION").write_text("B\n")
        (src / "app/main.py").write_text("VERSION = 'B'\n")
        proc = skeleton("cluster", "deploy", "--source", str(src), "--restart", "--json",
                        config=config)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        deployed = json.loads(proc.stdout)
        version_b = _version(src)
        assert version_b != version_a
        status = status_op.status(cluster, nodes)
        for node in nodes:
            data = deployed["nodes"][node.id]["data"]
            assert data["daemon_stop"]["state"] == "stopped"
            assert data["daemon_start"]["state"] == "started"
            st = status[node.id].outcome.status
            assert st.daemon_running is True and st.code_version == version_b
            assert st.daemon_pid == data["daemon_start"]["pid"]
            health = health_check(cluster, node, timeout=10)
            assert health.outcome.health["version"] == "B"
            assert health.outcome.health["code_version"] == version_b

        # The seed's rolling deployment, by chaining commands: stop, deploy, start, status.
        (src / "VERSION").write_text("C\n")
        for args in (("daemon", "stop", "-n", "node-01"),
                     ("deploy", "--source", str(src), "-n", "node-01"),
                     ("daemon", "start", "-n", "node-01"),
                     ("daemon", "status", "-n", "node-01")):
            proc = skeleton("cluster", *args, config=config)
            assert proc.returncode == 0, (args, proc.stdout, proc.stderr)
        assert health_check(cluster, nodes[0], timeout=10).outcome.health["version"] == "C"
        result = daemon_control(cluster, nodes, "status")
        assert result.exit_code() == 0


def test_deploy_into_a_dest_inside_a_path_with_no_permission(testbed: Testbed,
                                                             tmp_path: Path) -> None:
    src = make_source(tmp_path / "src", "A")
    config = variant(testbed, tmp_path)
    with Cluster(settings_of(config)) as cluster:
        result = deploy(cluster, cluster.select(["node-01"]), source=src, dest="/root/nope")
    r = result["node-01"]
    assert r.exit_code == 1 and "cannot create /root/nope/.skeleton-deploy" in r.stderr
    assert result.exit_code() == 1


def test_settings_are_not_mutated(testbed: Testbed, tmp_path: Path) -> None:
    # The plan resolves a relative --dest under each node's app dir; frozen settings stay put.
    src = make_source(tmp_path / "src", "A")
    app_dir = unique_app_dir("rel")
    settings = settings_of(variant(testbed, tmp_path, app_dir=app_dir))
    before = dataclasses.asdict(settings)
    with Cluster(settings) as cluster:
        result = deploy(cluster, cluster.select(["node-02"]), source=src, dest="sub dir")
    assert result.exit_code() == 0
    assert _outcome(result["node-02"]).dest == f"{app_dir}/sub dir"
    assert host_path(testbed, "node-02", f"{app_dir}/sub dir/VERSION").exists()
    assert dataclasses.asdict(settings) == before


def test_progress_display_and_summary(settings: Settings) -> None:
    from io import StringIO

    from skeleton_app.app.views.deploy import DeployProgress, deploy_text
    from skeleton_app.ops.deploy import Transfer

    nodes = settings.nodes[:2]
    screen = StringIO()
    with DeployProgress(nodes, screen, force=True) as progress:
        progress.update(DeployEvent("node-01", "sync", percent=40, bytes=2048, files=3))
        progress.update(DeployEvent("node-01", "done", files=5, bytes=4096))
        progress.update(DeployEvent("node-02", "failed", message="rsync exit 11: disk full"))
    drawn = screen.getvalue()
    assert "node-01" in drawn and "done" in drawn and "5 files" in drawn
    assert "FAILED" in drawn and "disk full" in drawn

    sent = Transfer(files_changed=5, bytes_sent=4096)
    result = ClusterResult([
        NodeResult("node-01", exit_code=0, outcome=DeployOutcome(
            "/app", locked=True, version="abc", unchanged=False, transfer=sent)),
        NodeResult("node-02", exit_code=0, outcome=DeployOutcome(
            "/app", locked=True, unchanged=True, transfer=Transfer())),
    ], operation="deploy", duration=1.5)
    out = StringIO()
    deploy_text(result, out)
    text = out.getvalue()
    assert "✓ deployed" in text and "✓ up to date" in text
    assert "2/2 node(s) ok; 5 file(s) changed, 4KiB sent, 1.50s" in text


def test_restart_leaves_a_node_that_cannot_take_the_deploy_running(testbed: Testbed,
                                                                   tmp_path: Path) -> None:
    src = make_source(tmp_path / "src", "A")
    app_dir = unique_app_dir("restart")
    settings = settings_of(variant(testbed, tmp_path, app_dir=app_dir, port=8774))
    with daemons_stopped_after(settings) as cluster:
        nodes = cluster.select(["node-0[1-2]"])
        assert deploy(cluster, nodes, source=src).exit_code() == 0
        first = daemon_control(cluster, nodes, "start", wait_healthy=True, health_timeout=10)
        assert first.exit_code() == 0, first.to_json()
        (src / "VERSION").write_text("B\n")
        tbm.hide_command(testbed, "node-02", "/usr/bin/rsync")
        try:
            result = deploy(cluster, nodes, source=src, restart=True)
        finally:
            tbm.unhide_command(testbed, "node-02", "/usr/bin/rsync")
        assert result.exit_code() == 1  # rsync missing on node-02: failed, not unreachable
        assert result["node-01"].ok
        restarted = _outcome(result["node-01"]).daemon_start or {}
        assert restarted["pid"] != first["node-01"].outcome.pid
        assert health_check(cluster, nodes[0], timeout=10).outcome.health["version"] == "B"
        assert "rsync is not installed on node-02" in (result["node-02"].error or "")
        # node-02's daemon was never stopped: same process, still the old version.
        status = daemon_control(cluster, [nodes[1]], "status")
        assert status["node-02"].outcome.pid == first["node-02"].outcome.pid
        assert health_check(cluster, nodes[1], timeout=10).outcome.health["version"] == "A"


def _project_tree(dest: Path, config: Path) -> Path:
    """The real code tree the seed deploys: the package and the config.yaml beside it,
    without the operator's registry DSN (deploy refuses to send its password; the daemons
    use their own credentials, which `testbed up --db` installed on the hosts)."""
    shutil.copytree(REPO / "skeleton_app", dest / "skeleton_app",
                    ignore=shutil.ignore_patterns("__pycache__"))
    data = yaml.safe_load(config.read_text())
    data.get("registry", {}).pop("dsn", None)
    (dest / "config.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return dest


def test_end_to_end_with_the_real_node_daemon(testbed: Testbed, tmp_path: Path,
                                              node_python: str) -> None:
    # The host's own bootstrapped venv runs `python -m skeleton_app daemon run` from the
    # deployed app dir (its code first on sys.path), reading the config.yaml deployed with the
    # code, as in the seed.
    app_dir = unique_app_dir("real")
    command = f"{node_python} -m skeleton_app daemon run --config config.yaml"
    config = variant(testbed, tmp_path, app_dir=app_dir, port=8775,
                     daemon={"command": command})
    src = _project_tree(tmp_path / "tree", config)
    settings = settings_of(config)
    with daemons_stopped_after(settings) as cluster:
        nodes = cluster.select([])
        proc = skeleton("cluster", "deploy", "--source", str(src), config=config)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        proc = skeleton("cluster", "daemon", "start", "--wait-healthy", "--health-timeout", "20",
                        "--json", config=config)
        log = host_path(testbed, "node-01", f"{app_dir}/logs/skeleton-daemon.log")
        assert proc.returncode == 0, proc.stdout[-2000:] + log.read_text()[-3000:]
        started = json.loads(proc.stdout)["nodes"]
        version_a = _version(src)
        status = status_op.status(cluster, nodes)
        for node in nodes:
            health = started[node.id]["data"]["health"]
            assert health["node"] == node.id and health["code_version"] == version_a
            assert health["pid"] == started[node.id]["data"]["pid"]
            st = status[node.id].outcome.status
            assert st.daemon_running is True and st.daemon_pid == health["pid"]
            assert st.code_version == version_a

        (src / "skeleton_app" / "RELEASE").write_text("B\n")
        proc = skeleton("cluster", "deploy", "--source", str(src), "--restart", config=config)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        version_b = _version(src)
        assert version_b != version_a
        for node in nodes:
            health = health_check(cluster, node, timeout=20)
            assert health.ok, health.outcome
            assert health.outcome.health["code_version"] == version_b
            assert health.outcome.health["pid"] != started[node.id]["data"]["pid"]
        status = status_op.status(cluster, nodes)
        assert {r.outcome.status.code_version for r in status.values()} == {version_b}



@pytest.mark.postgres  # make_testbed(db=True) starts one
def test_end_to_end_versions_from_the_registry_heartbeats(make_testbed: Any,
                                                          tmp_path: Path) -> None:
    """The issue's end to end, with a registry: deploy A, start the daemons, `cluster status`
    shows A from their heartbeats; change a file, deploy with --restart: B on every node."""
    from skeleton_app.registry import init_schema

    bed = make_testbed(2, db=True)
    init_schema(bed.db.dsn)
    python = bootstrap_testbed(bed)  # the hosts' own venv, not the controller's
    app_dir = unique_app_dir("registry")
    command = (f"env SKELETON_HEARTBEAT_INTERVAL=0.5 {python} -m skeleton_app daemon run"
               " --config config.yaml")
    config = variant(bed, tmp_path, app_dir=app_dir, port=8776, daemon={"command": command})
    src = _project_tree(tmp_path / "tree", config)

    def heartbeat_versions() -> dict[str, str | None]:
        proc = skeleton("cluster", "status", "--json", config=config)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        nodes = json.loads(proc.stdout)["nodes"]
        return {n: (e["data"]["registry"] or {}).get("code_version") for n, e in nodes.items()}

    def wait_for_versions(version: str) -> None:
        deadline = time.monotonic() + 20
        while (seen := heartbeat_versions()) != {"node-01": version, "node-02": version}:
            assert time.monotonic() < deadline, seen
            time.sleep(0.5)

    proc = skeleton("nodes", "import", str(config), config=config)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with daemons_stopped_after(settings_of(config)):
        proc = skeleton("cluster", "deploy", "--source", str(src), config=config)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        proc = skeleton("cluster", "daemon", "start", "--wait-healthy", "--health-timeout", "20",
                        config=config)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        wait_for_versions(_version(src))

        (src / "skeleton_app" / "RELEASE").write_text("B\n")
        proc = skeleton("cluster", "deploy", "--source", str(src), "--restart", config=config)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        wait_for_versions(_version(src))
