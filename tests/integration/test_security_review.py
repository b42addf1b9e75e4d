"""Attacks from the #15 security review, on real sshd hosts: each test is the attack that
once worked, kept so it never works again.

- `exec --sudo` on a node whose sudoers lets `sh` run without a password but not `true`
  (the probe's command): the password line must never reach the user's command.
- `cluster fetch` of files mode 0777 on the node: they must not land world-writable here
  (the user's umask applies, as with tar).
- `cluster copy` onto a name that is a symlink on the node: the link is replaced, its target
  never written through (checked, holds: rsync renames its temporary over the link).
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from skeleton_app.cluster import Cluster
from skeleton_app.config import load_config
from skeleton_app.ops.fetch import fetch_from_nodes
from skeleton_app.testing.testbed import Testbed
from skeleton_app.testing.testbed.sudoers import sudo_rules
from tests.support.frontends import out
from tests.support.helpers import REPO, chown_to_user, skeleton

# The login user's password is the machine's (sudo_rules): one worker runs these modules.
pytestmark = pytest.mark.xdist_group("sudo")
SECRET = "Hunter2-review 'q\" $z"
PASSWORD_ENV = "SKELETON_SUDO_PASSWORD_FILE"


def _exec(config: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("SKELETON_")}
    full_env.update(env)
    return subprocess.run(
        [sys.executable, "-m", "skeleton_app", "cluster", "exec", "--config", str(config),
         *args], capture_output=True, text=True, timeout=120, env=full_env, cwd=REPO,
        start_new_session=True, stdin=subprocess.DEVNULL)


def test_sudo_password_never_reaches_a_command_sudo_runs_without_one(
        testbed: Testbed, tmp_path: Path) -> None:
    pw = tmp_path / f"pw-{uuid.uuid4().hex[:8]}"
    pw.write_text(SECRET + "\n")
    pw.chmod(0o600)
    # node-02: `sh` needs no password there (as a site may allow one tool), `true` does.
    # node-03: `true` needs none, `sh` does. node-01: a rule on the arguments lets the
    # guarded command line run without a password (not the probe's `sh -c true`).
    with sudo_rules(testbed, SECRET,
                    nopasswd_commands={"node-01": r"/bin/sh -c IFS\=*, /usr/bin/sh -c IFS\=*",
                                       "node-02": "/bin/sh, /usr/bin/sh",
                                       "node-03": "/bin/true, /usr/bin/true"}):
        proc = _exec(testbed.config_path, "--sudo", "--node", "node-0[1-3]", "--",
                     "cat; echo done-$(id -u)", env={PASSWORD_ENV: str(pw)})
    assert "Hunter2" not in proc.stdout + proc.stderr, out(proc)
    assert proc.returncode == 1, out(proc)  # a command failed on a node
    assert "---------------- node-[02-03] ----------------\ndone-0\n" in proc.stdout, out(proc)
    assert "skeleton: sudo did not read the password for this command line" in proc.stdout
    assert "node-01: exit 126" in proc.stdout, out(proc)


def test_fetch_never_leaves_world_writable_files_here(testbed: Testbed, tmp_path: Path) -> None:
    tag = f"sec-{uuid.uuid4().hex[:8]}"
    with Cluster(load_config(testbed.config_path, env={})) as cluster:
        nodes = cluster.select(["node-01"])
        made = cluster.run(f"mkdir -p {tag}/d && echo x > {tag}/d/open && chmod 0777 {tag}/d/open"
                           f" && chmod 0777 {tag}/d", nodes)
        assert made.exit_code() == 0, made
        old = os.umask(0o022)
        try:
            result = fetch_from_nodes(cluster, nodes, [f"~/{tag}/d"], str(tmp_path / "o"))
        finally:
            os.umask(old)
            cluster.run(f"chmod 0755 {tag}/d; rm -rf {tag}", nodes)
    assert result.exit_code() == 0, result["node-01"]
    got = tmp_path / "o" / "node-01" / "d" / "open"
    assert got.read_text() == "x\n"
    assert stat.S_IMODE(got.stat().st_mode) == 0o755


def test_copy_replaces_a_symlink_at_the_target_never_writes_through_it(
        testbed: Testbed, tmp_path: Path) -> None:
    tag = f"sec-{uuid.uuid4().hex[:8]}"
    root = testbed.host("node-01").home / tag
    (root / "dst").mkdir(parents=True)
    victim = root / "victim"
    victim.write_text("keep\n")
    (root / "dst" / "app.conf").symlink_to(victim)
    chown_to_user(root)
    local = tmp_path / "app.conf"
    local.write_text("new\n")
    try:
        proc = skeleton("cluster", "copy", str(local), f"~/{tag}/dst", "--node", "node-01",
                        config=testbed.config_path)
        assert proc.returncode == 0, out(proc)
        assert victim.read_text() == "keep\n"
        placed = root / "dst" / "app.conf"
        assert not placed.is_symlink() and placed.read_text() == "new\n"
    finally:
        shutil.rmtree(root)
