"""deploy_diff.sh (the node side of `deploy --diff`) run here under dash, as a node runs it:
what it sends for each request, that it never follows a symlink (on the path or at the
file), that it keeps to its caps, and that it writes nothing. `compare()` is driven through
a runner that runs the command on this machine, so the controller's side is the real one."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from skeleton_app.nodes import Node
from skeleton_app.ops.deploy import diff as d
from skeleton_app.results import NodeResult
from skeleton_app.ssh.runner import RunOptions
from skeleton_app.transfers import FileChange


class LocalRunner:
    """Just enough of a `Runner` for `diff.fetch`: the command runs here under sh."""

    def run(self, node: Node, command: str, options: RunOptions) -> NodeResult[None]:
        proc = subprocess.run(["dash", "-c", command], input=options.stdin or b"",
                              capture_output=True, timeout=30)
        if options.sink is not None:
            options.sink(node.id, "stdout", proc.stdout)
        return NodeResult(node=node.id, exit_code=proc.returncode,
                          stdout=proc.stdout.decode("utf-8", "replace"),
                          stderr=proc.stderr.decode("utf-8", "replace"))


NODE = Node(id="node-x", host="127.0.0.1", app_dir="/srv/app")


def _ask(dest: Path, requests: list[tuple[str, bool]]) -> dict[int, d.NodeCopy]:
    runner: Any = LocalRunner()
    copies, error = d.fetch(runner, NODE, str(dest), requests, timeout=30)
    assert error is None
    return copies


def _tree(root: Path) -> dict[str, str]:
    out = {}
    for p in sorted(root.rglob("*")):
        st = os.lstat(p)
        out[str(p.relative_to(root))] = (os.readlink(p) if p.is_symlink() else
                                         hashlib.sha256(p.read_bytes()).hexdigest()
                                         if p.is_file() else "dir") + f" {st.st_mode:o}"
    return out


@pytest.fixture
def node_dir(tmp_path: Path) -> Path:
    root = tmp_path / "node"
    (root / "app").mkdir(parents=True)
    (root / "app/main.py").write_text("VERSION = 'A'\n")
    (root / "bin.dat").write_bytes(b"\0\1\2")
    (tmp_path / "secret").write_text("TOP SECRET\n")
    (root / "app/evil.py").symlink_to(tmp_path / "secret")
    (root / "linked").symlink_to(tmp_path)  # a directory symlink on the path
    (root / "sub").mkdir()
    return root


def test_each_request_gets_its_answer(node_dir: Path) -> None:
    copies = _ask(node_dir, [("app/main.py", True), ("bin.dat", True), ("app/evil.py", True),
                             ("linked/secret", True), ("gone.py", True), ("sub", True),
                             ("app/main.py", False), ("app/evil.py", False)])
    assert copies[0] == d.NodeCopy("data", 14, b"VERSION = 'A'\n")
    assert copies[1] == d.NodeCopy("data", 3, b"\0\1\2")
    assert copies[2].status == "symlink" and copies[2].data is None
    assert copies[3].status == "symlink" and copies[3].data is None
    assert copies[4].status == "absent"
    assert copies[5].status == "notfile"
    assert copies[6] == d.NodeCopy("present", 14)
    assert copies[7].status == "symlink"


def test_a_symlinked_destination_is_not_read(node_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "alias").symlink_to(node_dir)
    assert _ask(tmp_path / "alias", [("app/main.py", True)]) == {0: d.NodeCopy("absent")}
    assert _ask(tmp_path / "missing", [("app/main.py", True)]) == {0: d.NodeCopy("absent")}


def test_caps_per_file_and_in_all(node_dir: Path) -> None:
    (node_dir / "huge.txt").write_bytes(b"x" * (d.FILE_CAP + 1))
    for i in range(5):
        (node_dir / f"part{i}.txt").write_bytes(b"y" * d.FILE_CAP)
    copies = _ask(node_dir, [("huge.txt", True)] + [(f"part{i}.txt", True) for i in range(5)])
    assert copies[0] == d.NodeCopy("big", d.FILE_CAP + 1)
    sent = [copies[i].status for i in range(1, 6)]
    assert sent == ["data"] * 4 + ["budget"]  # NODE_BUDGET is four files' worth


def test_compare_end_to_end_and_nothing_written(node_dir: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "app").mkdir(parents=True)
    (src / "app/main.py").write_text("VERSION = 'B'\n")
    (src / "app/evil.py").write_text("local\n")
    (src / "app/new.py").write_text("x = 1\n")
    (src / "bin.dat").write_bytes(b"\0\1\3")
    before = _tree(node_dir)
    changes = [FileChange("app/main.py", "<", "f", ".st......"),
               FileChange("app/evil.py", "<", "f", ".st......"),
               FileChange("app/new.py", "<", "f", "+++++++++"),
               FileChange("bin.dat", "<", "f", ".st......"),
               FileChange("old.py", "*", "", "", message="deleting"),
               FileChange("../../etc/passwd", "*", "", "", message="deleting")]
    runner: Any = LocalRunner()
    got = d.compare(runner, NODE, str(src), str(node_dir), changes, timeout=30)
    assert got.error is None
    kinds = {f.path: f.kind for f in got.files}
    assert kinds == {"app/main.py": "changed", "app/evil.py": "refused", "app/new.py": "new",
                     "bin.dat": "binary", "old.py": "deleted", "../../etc/passwd": "refused"}
    text = "".join(f.diff + f.message for f in got.files)
    assert "TOP SECRET" not in text
    assert "-VERSION = 'A'\n+VERSION = 'B'\n" in text
    assert _tree(node_dir) == before
