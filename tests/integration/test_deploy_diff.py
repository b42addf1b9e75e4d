"""`cluster deploy --diff` on the real testbed (real rsync, real sshd, deploy_diff.sh on the
hosts): the diff shows exactly what a deploy would change, per node; it changes nothing on the
node; a symlink planted on a node is refused, never read; big files are capped; node text
is made safe for a terminal. Each test deploys into app dirs of its own."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from skeleton_app.testing.testbed import Testbed
from tests.support.deploy_support import host_path, make_source, unique_app_dir, variant
from tests.support.frontends import fab, inv
from tests.support.frontends import out as tool_out
from tests.support.helpers import chown_to_user, skeleton

LOGO = bytes(range(256)) * 4  # binary: NUL bytes, not UTF-8


def _fingerprint(root: Path) -> dict[str, str]:
    """Every path under a node's app dir with its content hash (or link target) and mode."""
    found = {}
    for path in sorted(root.rglob("*")):
        st = os.lstat(path)
        what = (f"-> {os.readlink(path)}" if path.is_symlink() else
                hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir")
        found[str(path.relative_to(root))] = f"{what} {st.st_mode:o} {st.st_mtime_ns}"
    return found


def _deployed(testbed: Testbed, tmp_path: Path, nodes: str, prefix: str) -> tuple[Path, Path,
                                                                                  str]:
    src = make_source(tmp_path / "src", "A")
    (src / "assets").mkdir()
    (src / "assets/logo.bin").write_bytes(LOGO)
    app_dir = unique_app_dir(prefix)
    config = variant(testbed, tmp_path, app_dir=app_dir)
    proc = skeleton("cluster", "deploy", "--source", str(src), "-n", nodes, config=config)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return src, config, app_dir


def _files(data: dict[str, Any], node: str) -> dict[str, dict[str, Any]]:
    diff = data["nodes"][node]["data"]["diff"]
    assert diff["error"] is None, diff
    return {f["path"]: f for f in diff["files"]}


def test_diff_shows_exactly_the_changes_and_changes_nothing(testbed: Testbed,
                                                             tmp_path: Path) -> None:
    src, config, app_dir = _deployed(testbed, tmp_path, "node-0[1-2]", "diff")
    # Local edits: a text change, a new file, a binary change, a deletion.
    (src / "app/main.py").write_text("VERSION = 'B'\n")
    (src / "app/new.py").write_text("x = 1\ny = 2\n")
    (src / "assets/logo.bin").write_bytes(LOGO[:-1] + b"\x00")
    (src / "bin/run.sh").unlink()
    # node-02's own copy of the config drifted: it alone shows that diff.
    drifted = host_path(testbed, "node-02", f"{app_dir}/app/data/config.json")
    drifted.write_text('{"a": 2, "local": "edit"}\n')
    chown_to_user(drifted)
    roots = {n: host_path(testbed, n, app_dir) for n in ("node-01", "node-02")}
    before = {n: _fingerprint(root) for n, root in roots.items()}

    proc = skeleton("cluster", "deploy", "--diff", "--delete", "--source", str(src),
                    "-n", "node-0[1-2]", "--json", config=config)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads(proc.stdout)
    assert data["operation"] == "deploy-dry-run"
    expected = {"app/main.py": "changed", "app/new.py": "new", "assets/logo.bin": "binary",
                "bin/run.sh": "deleted"}
    one, two = _files(data, "node-01"), _files(data, "node-02")
    assert {p: f["kind"] for p, f in one.items()} == expected
    assert {p: f["kind"] for p, f in two.items()} == {**expected,
                                                      "app/data/config.json": "changed"}
    main = one["app/main.py"]["diff"].splitlines()
    assert main[:2] == ["--- a/app/main.py\tnode-01", "+++ b/app/main.py\tlocal"]
    assert "-VERSION = 'A'" in main and "+VERSION = 'B'" in main
    assert two["app/main.py"]["diff"].startswith("--- a/app/main.py\tnode-02\n")
    assert one["app/new.py"]["diff"].splitlines()[:5] == [
        "--- /dev/null", "+++ b/app/new.py\tlocal", "@@ -0,0 +1,2 @@", "+x = 1", "+y = 2"]
    assert one["assets/logo.bin"]["message"] == "binary file differs"
    assert one["assets/logo.bin"]["diff"] == ""
    config_diff = two["app/data/config.json"]["diff"]
    assert '-{"a": 2, "local": "edit"}' in config_diff and '+{"a": 1}' in config_diff

    text = skeleton("cluster", "deploy", "--diff", "--delete", "--source", str(src),
                    "-n", "node-0[1-2]", config=config)
    assert text.returncode == 0, text.stdout + text.stderr
    for line in ("--- a/app/main.py\tnode-01", "--- a/app/main.py\tnode-02",
                 "binary assets/logo.bin: binary file differs", "deleted bin/run.sh",
                 "+++ b/app/new.py\tlocal", '+{"a": 1}'):
        assert line in text.stdout, text.stdout
    assert text.stdout.count('-{"a": 2, "local": "edit"}') == 1  # node-02's alone
    # Nothing moved on the nodes: contents, modes, times, the deploy digest.
    assert {n: _fingerprint(root) for n, root in roots.items()} == before


def test_a_symlink_planted_on_the_node_is_refused_not_read(testbed: Testbed,
                                                           tmp_path: Path) -> None:
    src, config, app_dir = _deployed(testbed, tmp_path, "node-03", "diffln")
    secret = tmp_path / "controller-secret.txt"
    secret.write_text("CONTROLLER SECRET 42\n")
    secret.chmod(0o644)
    os.chmod(tmp_path, 0o755)
    root = host_path(testbed, "node-03", app_dir)
    # The node swaps changed files for symlinks: to /etc/shadow, to a path of the
    # controller's, and a whole directory for a symlink to one holding the secret.
    (root / "app/main.py").unlink()
    (root / "app/main.py").symlink_to("/etc/shadow")
    (root / "VERSION").unlink()
    (root / "VERSION").symlink_to(secret)
    decoy = tmp_path / "decoy"
    (decoy / "data").mkdir(parents=True)
    (decoy / "data/config.json").write_text("CONTROLLER SECRET 42\n")
    os.chmod(decoy, 0o755)
    os.chmod(decoy / "data", 0o755)
    (root / "app/data/config.json").unlink()
    (root / "app/data").rmdir()
    (root / "app/data").symlink_to(decoy / "data")
    chown_to_user(root)
    for rel in ("app/main.py", "VERSION", "app/data/config.json"):
        (src / rel).write_text("changed locally\n")
    before = _fingerprint(root)

    proc = skeleton("cluster", "deploy", "--diff", "--source", str(src), "-n", "node-03",
                    "--json", config=config)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "CONTROLLER SECRET" not in proc.stdout and "root:" not in proc.stdout
    files = _files(json.loads(proc.stdout), "node-03")
    for rel in ("app/main.py", "VERSION", "app/data/config.json"):
        assert files[rel]["kind"] == "refused", files
        assert "symlink" in files[rel]["message"] and files[rel]["diff"] == ""
    for f in files.values():
        assert "CONTROLLER SECRET" not in f["diff"]

    text = skeleton("cluster", "deploy", "--diff", "--source", str(src), "-n", "node-03",
                    config=config)
    assert text.returncode == 0, text.stdout + text.stderr
    assert "refused app/main.py: a symlink on the node: not followed, not read" in text.stdout
    assert "refused VERSION: a symlink on the node" in text.stdout
    assert "CONTROLLER SECRET" not in text.stdout + text.stderr
    assert _fingerprint(root) == before


def test_big_files_are_capped_and_node_text_is_made_safe(testbed: Testbed,
                                                          tmp_path: Path) -> None:
    src, config, app_dir = _deployed(testbed, tmp_path, "node-04", "diffbig")
    root = host_path(testbed, "node-04", app_dir)
    big = "line\n" * 200_000  # 1 MB of text: over the per-file cap
    (src / "app/big.txt").write_text(big)
    (root / "app/big.txt").write_text(big + "more\n")
    # The node's copy holds terminal escapes: shown visible, never replayed.
    (root / "app/main.py").write_text("\x1b]0;owned\x07\x1b[2J VERSION = 'A'\n")
    chown_to_user(root)

    proc = skeleton("cluster", "deploy", "--diff", "--source", str(src), "-n", "node-04",
                    "--json", config=config)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    files = _files(json.loads(proc.stdout), "node-04")
    assert files["app/big.txt"]["kind"] == "too-large"
    assert files["app/big.txt"]["message"].startswith("diff too large (")
    assert "\x1b]0;owned" in files["app/main.py"]["diff"]  # JSON: just data

    text = skeleton("cluster", "deploy", "--diff", "--source", str(src), "-n", "node-04",
                    config=config)
    assert text.returncode == 0, text.stdout + text.stderr
    assert "too large app/big.txt: diff too large (" in text.stdout
    assert "\x1b" not in text.stdout and "\x07" not in text.stdout
    assert "-\\x1b]0;owned\\x07\\x1b[2J VERSION = 'A'" in text.stdout
    assert len(text.stdout) < 64 * 1024


def test_inv_and_fab_deploy_diff(testbed: Testbed, tmp_path: Path) -> None:
    src, config, app_dir = _deployed(testbed, tmp_path, "node-05", "difftools")
    (src / "app/main.py").write_text("VERSION = 'C'\n")
    root = host_path(testbed, "node-05", app_dir)
    before = _fingerprint(root)
    for proc in (inv("deploy", "--diff", "--source", str(src), "--node", "node-05",
                     config=config),
                 fab("-H", "node-05", "deploy", "--diff", "--source", str(src),
                     config=config)):
        assert proc.returncode == 0, tool_out(proc)
        assert "--- a/app/main.py\tnode-05" in proc.stdout, tool_out(proc)
        assert "+VERSION = 'C'" in proc.stdout
    assert _fingerprint(root) == before
