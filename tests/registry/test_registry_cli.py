"""The registry's CLI (`db init`, `nodes ...`, `runs ...`) against a real PostgreSQL, and
the journal's warn-once when the database goes away mid-command."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from skeleton_app.testing import localdb
from skeleton_app.testing import testbed as tb_mod
from skeleton_app.testing.testbed import Testbed
from tests.support.helpers import REPO, skeleton


def write_config(tmp_path: Path, dsn: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"ssh": {"user": "skeleton"}, "app": {"dir": "/srv/app"},
                                    "registry": {"dsn": dsn}}))
    return path


@pytest.mark.slow  # restarts PostgreSQL or real daemons: 4-7 s
def test_db_init_twice_then_node_table_round_trip(empty_dsn: str, tmp_path: Path) -> None:
    cfg = write_config(tmp_path, empty_dsn)
    missing = skeleton("nodes", "list", config=cfg)
    assert missing.returncode == 3 and "skeleton db init" in missing.stderr
    first = skeleton("db", "init", config=cfg)
    assert first.returncode == 0 and "upgraded" in first.stdout, first.stderr
    second = skeleton("db", "init", config=cfg)
    assert second.returncode == 0 and "up to date" in second.stdout

    assert skeleton("nodes", "add", "linux-01", "10.0.0.21", "--role", "stt",
                    "--role", "tts", config=cfg).stdout == "added linux-01\n"
    assert skeleton("nodes", "add", "linux-01", "10.0.0.22", config=cfg).stdout == (
        "updated linux-01\n")
    bad = skeleton("nodes", "add", "a;reboot", "10.0.0.5", config=cfg)
    assert bad.returncode == 2 and "node id" in bad.stderr
    bad = skeleton("nodes", "add", "x", "999.1.1.1", config=cfg)
    assert bad.returncode == 2 and "host" in bad.stderr

    nodes_file = tmp_path / "nodes.yaml"
    nodes_file.write_text("nodes:\n  - {id: linux-02, host: 10.0.0.23, roles: [llm]}\n"
                          "  - {id: windows-main, host: 10.0.0.10, user: sysadmin}\n")
    imported = skeleton("nodes", "import", str(nodes_file), config=cfg)
    assert imported.returncode == 0 and "imported 2 new" in imported.stdout

    assert skeleton("nodes", "disable", "linux-02", config=cfg).returncode == 0
    listed = {n["id"]: n for n in json.loads(
        skeleton("nodes", "list", "--json", config=cfg).stdout)}
    assert listed["linux-01"]["host"] == "10.0.0.22"
    assert listed["linux-02"]["enabled"] is False
    assert listed["windows-main"]["user"] == "sysadmin"
    # a disabled node is not targeted
    proc = skeleton("cluster", "exec", "true", "--node", "linux-02", config=cfg)
    assert proc.returncode == 2 and "unknown node linux-02" in proc.stderr
    assert skeleton("nodes", "enable", "linux-02", config=cfg).returncode == 0

    exported = yaml.safe_load(skeleton("nodes", "export", config=cfg).stdout)
    assert {n["id"] for n in exported["nodes"]} == {"linux-01", "linux-02", "windows-main"}
    assert skeleton("nodes", "remove", "windows-main", config=cfg).returncode == 0
    gone = skeleton("nodes", "remove", "windows-main", config=cfg)
    assert gone.returncode == 2 and "unknown node 'windows-main'" in gone.stderr
    assert skeleton("runs", "show", "999", config=cfg).returncode == 2


def test_db_init_without_dsn_is_a_usage_error(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("ssh: {user: skeleton}\n")
    proc = skeleton("db", "init", config=cfg)
    assert proc.returncode == 2 and "no database configured" in proc.stderr


def test_database_lost_mid_command_warns_once_and_keeps_exit_code(
        make_testbed: Callable[..., Testbed]) -> None:
    bed = make_testbed(2, db=True)
    assert bed.db is not None
    argv = [sys.executable, "-m", "skeleton_app", "cluster", "exec", "sleep 5; hostname",
            "--config", str(bed.config_path)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=REPO)
    # Nodes selected from the database, command running: seen on the nodes themselves (a
    # fixed wait was too short for a CLI starting on a busy machine).
    deadline = time.monotonic() + 60
    while not all(tb_mod.host_exec(bed, host, ["pgrep", "-u", tb_mod.USER, "-f", "sleep 5"],
                                   check=False).returncode == 0 for host in bed.ids):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.1)
    localdb.stop_postgres(bed.db.dir)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "node-01\n" in out and "node-02\n" in out
    warnings = [ln for ln in err.splitlines() if "not recorded" in ln]
    assert len(warnings) == 1 and err.strip() == warnings[0]
