"""`deploy.strategy: releases`, `cluster rollback` and `cluster releases` on the real testbed:
real rsync (--link-dest) over real ssh, the stand-in daemon running from `current`.

Each test deploys into an app dir of its own (tests.support.deploy_support.variant).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from skeleton_app.cluster import Cluster
from skeleton_app.nodes import Node
from skeleton_app.ops.daemon import health_check
from skeleton_app.ops.deploy import deploy
from skeleton_app.ops.deploy.releases import RELEASE_ID_RE
from skeleton_app.testing import testbed as tbm
from skeleton_app.testing.testbed import Testbed
from skeleton_app.transfers import DEFAULT_PARTIAL_DIR
from tests.support.deploy_support import (
    daemons_stopped_after,
    host_path,
    make_source,
    settings_of,
    unique_app_dir,
    variant,
)
from tests.support.helpers import REPO, chown_to_user, skeleton

RELEASES = {"strategy": "releases"}


def _config(testbed: Testbed, tmp_path: Path, app_dir: str, *, port: int = 8765,
            keep: int | None = None) -> Path:
    deploy_section: dict[str, object] = dict(RELEASES)
    if keep is not None:
        deploy_section["keep_releases"] = keep
    return variant(testbed, tmp_path, app_dir=app_dir, port=port, deploy=deploy_section)


def _releases(testbed: Testbed, node: str, app_dir: str) -> list[str]:
    root = host_path(testbed, node, f"{app_dir}/releases")
    return sorted(p.name for p in root.iterdir() if RELEASE_ID_RE.match(p.name)) \
        if root.is_dir() else []


def _current(testbed: Testbed, node: str, app_dir: str) -> str | None:
    link = host_path(testbed, node, f"{app_dir}/current")
    return os.readlink(link) if link.is_symlink() else None


def _served(cluster: Cluster, node: Node, timeout: float) -> object:
    """The VERSION the node's running daemon read at its start (from its working dir)."""
    outcome = health_check(cluster, node, timeout=timeout).outcome
    assert outcome is not None and outcome.health is not None, outcome
    return outcome.health["version"]


def _deploy_cli(*args: str, config: Path) -> subprocess.CompletedProcess[str]:
    proc = skeleton("cluster", "deploy", *args, config=config)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def test_two_deploys_two_releases_hard_links_and_rollback_runs_the_old_code(
        testbed: Testbed, tmp_path: Path) -> None:
    src = make_source(tmp_path / "src", "A")
    app_dir = unique_app_dir("rel")
    config = _config(testbed, tmp_path, app_dir, port=8792)
    settings = settings_of(config)
    nodes_arg = ("-n", "node-0[1-2]")
    with daemons_stopped_after(settings) as cluster:
        nodes = cluster.select(["node-0[1-2]"])
        _deploy_cli("--source", str(src), *nodes_arg, config=config)
        proc = skeleton("cluster", "daemon", "start", "--wait-healthy", *nodes_arg,
                        config=config)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        for node in nodes:
            assert _served(cluster, node, 5) == "A"
        first = {n.id: _releases(testbed, n.id, app_dir) for n in nodes}
        assert all(len(r) == 1 for r in first.values()), first

        # A no-change deploy stays a no-op: no new release.
        proc = skeleton("cluster", "deploy", "--source", str(src), "--json", *nodes_arg,
                        config=config)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        for node in nodes:
            assert json.loads(proc.stdout)["nodes"][node.id]["data"]["unchanged"] is True
            assert _releases(testbed, node.id, app_dir) == first[node.id]

        # A dry run lists the change against the live release and makes none.
        (src / "VERSION").write_text("B\n")
        proc = skeleton("cluster", "deploy", "--source", str(src), "--dry-run", *nodes_arg,
                        config=config)
        assert proc.returncode == 0 and "VERSION" in proc.stdout, proc.stdout + proc.stderr
        assert _releases(testbed, "node-01", app_dir) == first["node-01"]

        proc = skeleton("cluster", "deploy", "--source", str(src), "--restart", "--json",
                        *nodes_arg, config=config)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        data = json.loads(proc.stdout)
        for node in nodes:
            rels = _releases(testbed, node.id, app_dir)
            assert len(rels) == 2 and rels[0] == first[node.id][0], rels
            assert data["nodes"][node.id]["data"]["release"] == rels[1]
            assert _current(testbed, node.id, app_dir) == f"releases/{rels[1]}"
            old, new = (host_path(testbed, node.id, f"{app_dir}/releases/{r}") for r in rels)
            # Unchanged files are hard links to the previous release's; changed ones are not.
            assert (old / "app/main.py").stat().st_ino == (new / "app/main.py").stat().st_ino
            assert (old / "VERSION").stat().st_ino != (new / "VERSION").stat().st_ino
            assert (new / "VERSION").read_text() == "B\n"
            # Shared paths are links to the app dir's.
            assert os.readlink(new / ".venv") == f"{app_dir}/.venv"
            assert os.readlink(new / "logs") == f"{app_dir}/logs"
            assert _served(cluster, node, 10) == "B"

        # The listing: both releases, the newest current.
        proc = skeleton("cluster", "releases", "--json", *nodes_arg, config=config)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        listed = json.loads(proc.stdout)["nodes"]["node-01"]["data"]
        rels = _releases(testbed, "node-01", app_dir)
        assert [r["id"] for r in listed["releases"]] == rels
        assert listed["current"] == rels[1]
        proc = skeleton("cluster", "releases", *nodes_arg, config=config)
        assert proc.returncode == 0 and rels[0] in proc.stdout, proc.stdout

        # Rollback + restart: the daemon runs the old code again.
        proc = skeleton("cluster", "rollback", "--restart", *nodes_arg, config=config)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        for node in nodes:
            rels = _releases(testbed, node.id, app_dir)
            assert _current(testbed, node.id, app_dir) == f"releases/{rels[0]}"
            assert _served(cluster, node, 10) == "A"
        # The node's digest follows: deploying B again is no no-op, and makes a release.
        proc = _deploy_cli("--source", str(src), "--json", *nodes_arg, config=config)
        assert json.loads(proc.stdout)["nodes"]["node-01"]["data"]["unchanged"] is False
        assert len(_releases(testbed, "node-01", app_dir)) == 3


def test_keep_releases_prunes_but_never_the_rollback_target(testbed: Testbed,
                                                            tmp_path: Path) -> None:
    src = make_source(tmp_path / "src", "A")
    app_dir = unique_app_dir("prune")
    config = _config(testbed, tmp_path, app_dir, keep=2)
    made = []
    for version in "ABC":
        (src / "VERSION").write_text(version + "\n")
        _deploy_cli("--source", str(src), "-n", "node-03", config=config)
        made.append(_releases(testbed, "node-03", app_dir)[-1])
    assert _releases(testbed, "node-03", app_dir) == made[1:]
    assert _current(testbed, "node-03", app_dir) == f"releases/{made[2]}"

    proc = skeleton("cluster", "rollback", "--to", made[1], "-n", "node-03", config=config)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (src / "VERSION").write_text("D\n")
    _deploy_cli("--source", str(src), "-n", "node-03", config=config)
    left = _releases(testbed, "node-03", app_dir)
    # D is current; B was current before it (the rollback target) and stays; C goes.
    assert len(left) == 2 and left[0] == made[1] and made[2] not in left, left
    assert _current(testbed, "node-03", app_dir) == f"releases/{left[1]}"


def test_rollback_to_an_unknown_release(testbed: Testbed, tmp_path: Path) -> None:
    src = make_source(tmp_path / "src", "A")
    app_dir = unique_app_dir("unknown")
    config = _config(testbed, tmp_path, app_dir)
    _deploy_cli("--source", str(src), "-n", "node-0[1-2]", config=config)
    (src / "VERSION").write_text("B\n")
    _deploy_cli("--source", str(src), "-n", "node-01", config=config)
    only_01 = _releases(testbed, "node-01", app_dir)[-1]
    before = {n: _current(testbed, n, app_dir) for n in ("node-01", "node-02")}

    # Known on no node: exit 2, nothing changed.
    proc = skeleton("cluster", "rollback", "--to", "20000101T000000000Z-00000000",
                    "-n", "node-0[1-2]", config=config)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "unknown release 20000101T000000000Z-00000000" in proc.stderr
    proc = skeleton("cluster", "rollback", "--to", "../../etc", "-n", "node-01", config=config)
    assert proc.returncode == 2 and "not a release ID" in proc.stderr, proc.stderr
    assert {n: _current(testbed, n, app_dir) for n in before} == before

    # Known on node-01 only: node-02 fails in one line naming its releases.
    proc = skeleton("cluster", "rollback", "--to", only_01, "-n", "node-0[1-2]", "--json",
                    config=config)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    data = json.loads(proc.stdout)["nodes"]
    assert data["node-01"]["exit_code"] == 0
    message = data["node-02"]["data"]["message"]
    assert "unknown release" in message and "node-02" in message
    assert _releases(testbed, "node-02", app_dir)[0] in message
    assert _current(testbed, "node-02", app_dir) == before["node-02"]


def test_ctrl_c_mid_deploy_never_switches_current(testbed: Testbed, tmp_path: Path) -> None:
    src = make_source(tmp_path / "src", "A")
    for i in range(6):
        (src / f"data/f{i}.bin").parent.mkdir(parents=True, exist_ok=True)
        (src / f"data/f{i}.bin").write_bytes(os.urandom(300_000))
    app_dir = unique_app_dir("rel-ctrl-c")
    config = _config(testbed, tmp_path, app_dir)
    _deploy_cli("--source", str(src), "-n", "node-05", config=config)
    before = _current(testbed, "node-05", app_dir)
    kept = _releases(testbed, "node-05", app_dir)
    for i in range(6):
        (src / f"data/f{i}.bin").write_bytes(os.urandom(300_000))
    releases_root = host_path(testbed, "node-05", f"{app_dir}/releases")
    tbm.set_rate(testbed, "node-05", "1mbit")  # ~15 s of transfer
    try:
        argv = [sys.executable, "-m", "skeleton_app", "cluster", "deploy", "--source",
                str(src), "-n", "node-05", "--config", str(config)]
        env = {k: v for k, v in os.environ.items() if not k.startswith("SKELETON_")}
        proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
        deadline = time.monotonic() + 30
        while not any(releases_root.glob(f"*/data/{DEFAULT_PARTIAL_DIR}/*")):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "never saw the transfer start"
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        tbm.set_rate(testbed, "node-05", None)
    assert proc.returncode == 130, out + err
    flat = re.sub(r"[\s│]+", " ", out)
    assert "before the switch" in flat and "current unchanged" in flat, out
    assert _current(testbed, "node-05", app_dir) == before
    assert _releases(testbed, "node-05", app_dir) == kept  # the half-built one is gone


def test_hostile_release_entries_are_never_followed_or_deleted(testbed: Testbed,
                                                               tmp_path: Path) -> None:
    src = make_source(tmp_path / "src", "A")
    app_dir = unique_app_dir("hostile")
    config = _config(testbed, tmp_path, app_dir, keep=1)
    _deploy_cli("--source", str(src), "-n", "node-04", config=config)
    root = host_path(testbed, "node-04", app_dir)
    outside = host_path(testbed, "node-04", f"{app_dir}-outside")
    (outside / "keep").mkdir(parents=True)
    (outside / "keep/canary").write_text("still here\n")
    chown_to_user(outside)
    bad = {
        "20000101T000000000Z-deadbeef": "link",  # a valid-looking name, but a symlink
        "with space": "dir",
        "..evil": "dir",
        "20000101T000000000Z-dead beef": "dir",
    }
    for name, kind in bad.items():
        path = root / "releases" / name
        if kind == "link":
            path.symlink_to(outside / "keep")
        else:
            (path / "keep").mkdir(parents=True)
            (path / "keep/canary").write_text("x\n")
    chown_to_user(root / "releases")

    for version in "BC":  # keep_releases 1: each deploy prunes
        (src / "VERSION").write_text(version + "\n")
        _deploy_cli("--source", str(src), "-n", "node-04", config=config)
    assert (outside / "keep/canary").read_text() == "still here\n"
    for name in bad:
        assert (root / "releases" / name).is_symlink() or (root / "releases" / name).is_dir()
    proc = skeleton("cluster", "releases", "--json", "-n", "node-04", config=config)
    listed = [r["id"] for r in json.loads(proc.stdout)["nodes"]["node-04"]["data"]["releases"]]
    assert not set(listed) & set(bad), listed

    # `current` pointed outside: rollback refuses, a deploy replaces the link itself.
    (root / "current").unlink()
    (root / "current").symlink_to(outside / "keep")
    os.lchown(root / "current", *_owner(root))
    proc = skeleton("cluster", "rollback", "-n", "node-04", config=config)
    assert proc.returncode == 1 and "current points to no release" in proc.stdout, proc.stdout
    (src / "VERSION").write_text("D\n")
    _deploy_cli("--source", str(src), "-n", "node-04", "--force", config=config)
    assert (outside / "keep/canary").read_text() == "still here\n"
    assert RELEASE_ID_RE.match(os.readlink(root / "current").removeprefix("releases/"))


def _owner(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_uid, st.st_gid


def test_library_deploy_with_after_commands_runs_them_in_the_release(testbed: Testbed,
                                                                     tmp_path: Path) -> None:
    src = make_source(tmp_path / "src", "A")
    app_dir = unique_app_dir("rel-after")
    config = variant(testbed, tmp_path, app_dir=app_dir,
                     deploy={**RELEASES, "after": ["pwd -P > after-ran"]})
    settings = settings_of(config)
    with daemons_stopped_after(settings) as cluster:
        nodes = cluster.select(["node-06"])
        result = deploy(cluster, nodes, source=src)
        assert result.exit_code() == 0, result
        outcome = result["node-06"].outcome
        assert outcome is not None
        release = outcome.release
        ran = host_path(testbed, "node-06", f"{app_dir}/releases/{release}/after-ran")
        assert ran.read_text().strip() == f"{app_dir}/releases/{release}"


def test_the_real_node_daemon_runs_from_current_with_the_shared_venv(
        testbed: Testbed, tmp_path: Path, node_python: str) -> None:
    # The daemon command as the default has it (`.venv/bin/python`, relative: through the
    # release's .venv link to the app dir's, here the hosts' bootstrapped venv), in `current`.
    # /health's details need the token the daemon writes through the release's
    # .skeleton-deploy link, where health.sh reads it (<app_dir>/.skeleton-deploy).
    app_dir = unique_app_dir("rel-real")
    command = ".venv/bin/python -m skeleton_app daemon run --config config.yaml"
    config = variant(testbed, tmp_path, app_dir=app_dir, port=8794,
                     daemon={"command": command}, deploy=RELEASES)
    src = tmp_path / "tree"
    shutil.copytree(REPO / "skeleton_app", src / "skeleton_app",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(config, src / "config.yaml")
    venv = str(Path(node_python).parent.parent)
    nodes_arg = ("-n", "node-0[1-2]")
    with daemons_stopped_after(settings_of(config)) as cluster:
        nodes = cluster.select(["node-0[1-2]"])
        for node in nodes:  # the app dir's .venv: the hosts' bootstrapped one
            root = host_path(testbed, node.id, app_dir)
            root.mkdir(parents=True)
            (root / ".venv").symlink_to(venv)
            chown_to_user(root)
        versions = []
        for release_note in ("A", "B"):  # --restart: the first one starts the daemon
            (src / "skeleton_app" / "RELEASE").write_text(release_note + "\n")
            proc = skeleton("cluster", "deploy", "--source", str(src), "--restart", "--json",
                            *nodes_arg, config=config)
            assert proc.returncode == 0, proc.stdout + proc.stderr
            versions.append(json.loads(proc.stdout)["nodes"]["node-01"]["data"]["version"])
            for node in nodes:
                health = health_check(cluster, node, timeout=20).outcome
                assert health is not None and health.health is not None, health
                assert health.health["code_version"] == versions[-1], health.health
        proc = skeleton("cluster", "rollback", "--restart", *nodes_arg, config=config)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        for node in nodes:
            health = health_check(cluster, node, timeout=20).outcome
            assert health is not None and health.health is not None, health
            assert health.health["code_version"] == versions[0], health.health
