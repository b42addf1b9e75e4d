"""`cluster copy` and `cluster fetch` on real sshd hosts (issue #15): files and directories to
three nodes with --mode and --preserve, each file replaced by rename (never seen half
written), a node that is down, per-node fetch directories, and nodes that lie: a planted
`tar` that streams `../` and absolute names, names not asked for, a symlink swapped in for a
directory, plus symlinks planted on this machine. Whatever a node sends, nothing is written
outside LOCAL_DIR/<node>/. The name checks themselves: tests/unit/test_copy_fetch_unit.py.
"""

from __future__ import annotations

import io
import os
import signal
import stat
import subprocess
import sys
import tarfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from skeleton_app.cluster import Cluster
from skeleton_app.config import load_config
from skeleton_app.ops.copy import copy_to_nodes
from skeleton_app.ops.fetch import fetch_from_nodes
from skeleton_app.testing import testbed as tb
from skeleton_app.testing.testbed import Testbed
from tests.support.frontends import fab, inv, out
from tests.support.helpers import REPO, chown_to_user, skeleton

THREE = ("node-01", "node-02", "node-03")


@pytest.fixture
def tag() -> str:
    return f"cf-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def cluster(testbed: Testbed) -> Iterator[Cluster]:
    with Cluster(load_config(testbed.config_path, env={})) as c:
        yield c


def _home(testbed: Testbed, node: str) -> Path:
    return testbed.host(node).home


def _temporaries(root: Path) -> list[Path]:
    """rsync's temporaries (`.NAME.XXXXXX`) or ours left anywhere under `root`."""
    return [p for p in root.rglob(".*") if p.name.count(".") >= 2 or "skeleton" in p.name]


def _tree(path: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for p in sorted(path.rglob("*")):
        rel = str(p.relative_to(path))
        if p.is_symlink():
            out[rel] = "-> " + os.readlink(p)
        elif p.is_dir():
            out[rel] = "dir"
        else:
            out[rel] = p.read_bytes().decode("utf-8", "replace")
    return out


# ------------------------------------------------------------------ copy


def _source(tmp_path: Path) -> tuple[Path, Path]:
    conf = tmp_path / "app.conf"
    conf.write_text("key = value\n")
    conf.chmod(0o755)
    os.utime(conf, (1_600_000_000, 1_600_000_000))
    tree = tmp_path / "models dir"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "w.bin").write_bytes(b"\x00weights" * 1000)
    (tree / "README").write_text("models\n")
    os.utime(tree / "README", (1_500_000_000, 1_500_000_000))
    return conf, tree


def test_copy_a_file_and_a_dir_to_three_nodes_with_mode(testbed: Testbed, tmp_path: Path,
                                                        tag: str) -> None:
    conf, tree = _source(tmp_path)
    proc = skeleton("cluster", "copy", str(conf), f"{tree}/", f"~/{tag}/etc", "--mode", "0640",
                    "--node", "node-[01-03]", config=testbed.config_path)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "3/3 node(s) ok; 9 file(s) written" in proc.stdout, proc.stdout
    for node in THREE:
        dest = _home(testbed, node) / tag / "etc"  # made, with its parent
        assert _tree(dest) == {"app.conf": "key = value\n", "models dir": "dir",
                               "models dir/README": "models\n", "models dir/sub": "dir",
                               "models dir/sub/w.bin": "\x00weights" * 1000}
        for f in ("app.conf", "models dir/README", "models dir/sub/w.bin"):
            st = (dest / f).stat()
            assert stat.S_IMODE(st.st_mode) == 0o640, f
            assert st.st_mtime > time.time() - 120  # like cp: no --preserve, times are new
        assert stat.S_IMODE((dest / "models dir").stat().st_mode) == 0o755
        assert _temporaries(dest) == []
    assert not (_home(testbed, "node-04") / tag).exists()


def test_preserve_keeps_mode_and_mtime(testbed: Testbed, tmp_path: Path, tag: str) -> None:
    conf, tree = _source(tmp_path)
    proc = skeleton("cluster", "copy", str(conf), str(tree), f"/home/skeleton/{tag}",
                    "--preserve", "--node", "node-01,node-02", config=testbed.config_path)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    for node in ("node-01", "node-02"):
        dest = _home(testbed, node) / tag
        st = (dest / "app.conf").stat()
        assert stat.S_IMODE(st.st_mode) == 0o755 and int(st.st_mtime) == 1_600_000_000
        assert int((dest / "models dir" / "README").stat().st_mtime) == 1_500_000_000


def test_each_file_is_replaced_by_rename_and_never_seen_half_written(
        cluster: Cluster, testbed: Testbed, tmp_path: Path, tag: str) -> None:
    size = 6 << 20  # random: rsync's compression cannot shrink it; ~1 s at 50 Mbit/s
    old, new = os.urandom(size), os.urandom(size)
    src = tmp_path / "big.bin"
    src.write_bytes(old)
    nodes = cluster.select(["node-01"])
    first = copy_to_nodes(cluster, nodes, [str(src)], f"~/{tag}")
    assert first.exit_code() == 0, first.to_json()
    landed = _home(testbed, "node-01") / tag / "big.bin"
    inode = landed.stat().st_ino
    src.write_bytes(new)
    seen: list[str] = []
    stop = threading.Event()

    def watch() -> None:  # what any reader on the node sees, the whole time
        while not stop.is_set():
            data = landed.read_bytes()
            seen.append("old" if data == old else "new" if data == new else "OTHER")

    tb.set_rate(testbed, "node-01", "50mbit")
    reader = threading.Thread(target=watch)
    reader.start()
    try:
        again = copy_to_nodes(cluster, nodes, [str(src)], f"~/{tag}")
    finally:
        stop.set()
        reader.join()
        tb.set_rate(testbed, "node-01", None)
    assert again.exit_code() == 0, again.to_json()
    assert "OTHER" not in seen and {"old", "new"} <= set(seen), set(seen)
    assert landed.read_bytes() == new
    assert landed.stat().st_ino != inode  # a new file renamed over the old one
    assert _temporaries(landed.parent) == []
    assert again["node-01"].outcome is not None and again["node-01"].outcome.files == 1


def _start(*args: str, config: Path) -> subprocess.Popen[str]:
    """The CLI as a foreground job of its own process group (a terminal's Ctrl-C reaches
    the whole group)."""
    argv = [sys.executable, "-m", "skeleton_app", *args, "--config", str(config)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKELETON_")}
    return subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def _until(what: str, check: Callable[[], bool], proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 30
    while not check():
        if proc.poll() is not None:
            raise AssertionError(f"ended before {what}: {proc.communicate()}")
        assert time.monotonic() < deadline, f"never saw: {what}"
        time.sleep(0.02)


def _ctrl_c(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    os.killpg(proc.pid, signal.SIGINT)
    try:
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    return proc.returncode, out, err


def test_ctrl_c_stops_a_copy_and_leaves_no_partial_file(testbed: Testbed, tmp_path: Path,
                                                       tag: str) -> None:
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(16 << 20))
    dest = _home(testbed, "node-01") / tag
    tb.set_rate(testbed, "node-01", "20mbit")
    try:
        proc = _start("cluster", "copy", str(src), f"~/{tag}", "--node", "node-01",
                      config=testbed.config_path)
        _until("rsync's temporary on the node", lambda: bool(
            dest.is_dir() and _temporaries(dest)), proc)
        code, out, err = _ctrl_c(proc)
    finally:
        tb.set_rate(testbed, "node-01", None)
    assert code == 130, err + out
    assert "interrupted" in out + err
    deadline = time.monotonic() + 5  # the node's rsync cleans up as its session ends
    while _temporaries(dest) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _temporaries(dest) == [] and not (dest / "big.bin").exists()


def test_ctrl_c_stops_a_fetch_and_leaves_no_partial_file(testbed: Testbed, tmp_path: Path,
                                                        tag: str) -> None:
    root = _plant(testbed, "node-01", tag)
    (root / "logs" / "big.bin").write_bytes(os.urandom(16 << 20))
    chown_to_user(root)
    out_dir = tmp_path / "out"
    tb.set_rate(testbed, "node-01", "20mbit")
    try:
        proc = _start("cluster", "fetch", f"~/{tag}/logs", str(out_dir), "--node", "node-01",
                      config=testbed.config_path)
        _until("the fetch's temporary here", lambda: bool(
            out_dir.is_dir() and list(out_dir.rglob(".skeleton-fetch-*"))), proc)
        code, out, err = _ctrl_c(proc)
    finally:
        tb.set_rate(testbed, "node-01", None)
    assert code == 130, err + out
    assert "stopped by Ctrl-C" in out, out
    assert not list(out_dir.rglob(".skeleton-fetch-*"))
    assert not (out_dir / "node-01" / "logs" / "big.bin").exists()


def test_a_down_node_exits_4_and_the_others_still_get_it(testbed: Testbed, tmp_path: Path,
                                                         tag: str) -> None:
    conf, _ = _source(tmp_path)
    tb.stop_sshd(testbed, "node-03")
    try:
        proc = skeleton("cluster", "copy", str(conf), f"/home/skeleton/{tag}",
                        "--node", "node-[01-03]", config=testbed.config_path)
    finally:
        tb.start_sshd(testbed, "node-03")
    assert proc.returncode == 4, proc.stderr + proc.stdout
    assert "node-03" in proc.stdout and "refused" in proc.stdout, proc.stdout
    for node in ("node-01", "node-02"):
        assert (_home(testbed, node) / tag / "app.conf").read_text() == "key = value\n"
    assert not (_home(testbed, "node-03") / tag).exists()


def test_a_node_that_refuses_the_write_exits_1(testbed: Testbed, tmp_path: Path,
                                               tag: str) -> None:
    conf, _ = _source(tmp_path)
    proc = skeleton("cluster", "copy", str(conf), "/proc/nope", "--node", "node-01",
                    config=testbed.config_path)
    assert proc.returncode == 1, proc.stderr + proc.stdout
    assert "node-01" in proc.stdout and "exit" in proc.stdout


@pytest.mark.parametrize(("argv", "said"), [
    (["copy", "README.md", "relative/dir"], "must be absolute or start with ~/"),
    (["copy", "no-such-file", "README.md", "/tmp"], "no such local file or directory:"
                                                    " no-such-file"),
    (["fetch", "etc/hosts", "out"], "must be absolute or start with ~/"),
])
def test_bad_input_is_one_line_and_exit_2(testbed: Testbed, argv: list[str],
                                          said: str, tag: str) -> None:
    proc = skeleton("cluster", *argv, config=testbed.config_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and said in lines[0], lines
    assert proc.stdout == ""


# ------------------------------------------------------------------ fetch


def _plant(testbed: Testbed, node: str, tag: str) -> Path:
    """On `node`: ~/TAG/logs/{app.log, old/rotated.log}, a symlink to /etc/passwd and one to
    a directory outside, and ~/TAG/conf.yaml."""
    root = _home(testbed, node) / tag
    (root / "logs" / "old").mkdir(parents=True)
    (root / "logs" / "app.log").write_text(f"hello from {node}\n")
    (root / "logs" / "old" / "rotated.log").write_text("old\n")
    (root / "logs" / "passwd").symlink_to("/etc/passwd")
    (root / "logs" / "up").symlink_to("../..")
    (root / "conf.yaml").write_text(f"node: {node}\n")
    (root / "conf.yaml").chmod(0o600)
    chown_to_user(root)
    return root


def test_fetch_from_three_nodes_into_per_node_dirs(testbed: Testbed, tmp_path: Path,
                                                   tag: str) -> None:
    for node in THREE:
        _plant(testbed, node, tag)
    out = tmp_path / "got"
    proc = skeleton("cluster", "fetch", f"~/{tag}/logs", f"/home/skeleton/{tag}/conf.yaml",
                    str(out), "--node", "node-[01-03]", config=testbed.config_path)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "3/3 node(s) ok" in proc.stdout
    for node in THREE:
        assert _tree(out / node) == {
            "conf.yaml": f"node: {node}\n", "logs": "dir",
            "logs/app.log": f"hello from {node}\n", "logs/old": "dir",
            "logs/old/rotated.log": "old\n"}
        assert stat.S_IMODE((out / node / "conf.yaml").stat().st_mode) == 0o600
        # symlinks on the node: skipped and named, never followed
        assert f"{node}: skipped logs/passwd (symlink -> /etc/passwd)" in proc.stderr
        assert f"{node}: skipped logs/up (symlink -> ../..)" in proc.stderr
    assert sorted(p.name for p in out.iterdir()) == list(THREE)


def test_a_missing_remote_path_fails_that_node_only(cluster: Cluster, testbed: Testbed,
                                                    tmp_path: Path, tag: str) -> None:
    for node in ("node-01", "node-02"):
        _plant(testbed, node, tag)
    (_home(testbed, "node-02") / tag / "conf.yaml").unlink()
    result = fetch_from_nodes(cluster, cluster.select(["node-01", "node-02"]),
                              [f"~/{tag}/conf.yaml", f"~/{tag}/logs"], str(tmp_path / "o"))
    assert result.exit_code() == 1
    assert result["node-01"].ok
    r = result["node-02"]
    assert r.exit_code == 1 and f"no such file or directory on the node: {tag}/conf.yaml" \
        in r.stderr, r.stderr
    assert (tmp_path / "o" / "node-02" / "logs" / "app.log").exists()  # the rest came


def test_a_node_that_sends_more_than_max_bytes_is_stopped(testbed: Testbed, tmp_path: Path,
                                                          tag: str) -> None:
    # node-01's log is 2 MiB (more than --max-bytes 1M), node-02's is small: node-01 fails
    # with one line naming the bound and its big file is not written; node-02 is fetched.
    for node in ("node-01", "node-02"):
        _plant(testbed, node, tag)
    big = _home(testbed, "node-01") / tag / "logs" / "app.log"
    big.write_bytes(b"x" * (2 << 20))
    chown_to_user(big)
    proc = skeleton("cluster", "fetch", f"~/{tag}/logs", str(tmp_path / "o"), "--max-bytes",
                    "1M", "--node", "node-01,node-02", config=testbed.config_path)
    assert proc.returncode == 1, proc.stderr + proc.stdout
    assert "--max-bytes" in proc.stdout + proc.stderr
    assert not (tmp_path / "o" / "node-01" / "logs" / "app.log").exists()
    assert (tmp_path / "o" / "node-02" / "logs" / "app.log").read_text() == (
        "hello from node-02\n")
    bad = skeleton("cluster", "fetch", f"~/{tag}/logs", str(tmp_path / "p"), "--max-bytes",
                   "lots", "--node", "node-01", config=testbed.config_path)
    assert bad.returncode == 2 and "--max-bytes" in bad.stderr, bad.stderr


def test_fetch_from_a_down_node_exits_4(testbed: Testbed, tmp_path: Path, tag: str) -> None:
    _plant(testbed, "node-01", tag)
    tb.stop_sshd(testbed, "node-02")
    try:
        proc = skeleton("cluster", "fetch", f"~/{tag}/logs", str(tmp_path / "o"),
                        "--node", "node-01,node-02", config=testbed.config_path)
    finally:
        tb.start_sshd(testbed, "node-02")
    assert proc.returncode == 4, proc.stderr + proc.stdout
    assert (tmp_path / "o" / "node-01" / "logs" / "app.log").exists()
    assert not (tmp_path / "o" / "node-02").exists()  # nothing came: no empty dir left


def test_a_path_no_node_has_leaves_no_empty_node_dirs(cluster: Cluster, tmp_path: Path,
                                                      tag: str) -> None:
    result = fetch_from_nodes(cluster, cluster.select(["node-01", "node-02"]),
                              [f"~/{tag}/nope"], str(tmp_path / "o"))
    assert result.exit_code() == 1
    assert list((tmp_path / "o").iterdir()) == []


# ------------------------------------------------------------------ lying nodes


def _stream(members: list[tuple[str, bytes, bytes, str]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, kind, data, link in members:
            info = tarfile.TarInfo(name)
            info.type = kind
            info.linkname = link
            info.mode = 0o644
            info.size = len(data) if kind == tarfile.REGTYPE else 0
            tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
    return buf.getvalue()


@pytest.fixture
def lying_tar(testbed: Testbed, tag: str) -> Iterator[Path]:
    """node-02's /usr/bin/tar streams the file this yields (write it) instead of the truth."""
    stream = testbed.state_dir / "planted" / f"fetch-{tag}.tar"
    stream.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    stream.write_bytes(b"")
    stream.chmod(0o644)
    tb.plant_command(testbed, "node-02", "/usr/bin/tar", f"#!/bin/sh\nexec cat {stream}\n")
    try:
        yield stream
    finally:
        tb.unhide_command(testbed, "node-02", "/usr/bin/tar")


F, D, L = tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE


@pytest.mark.parametrize(("members", "said"), [
    ([("logs/ok", F, b"1", ""), ("../escape-{tag}", F, b"evil", "")], "a '..' component"),
    ([("logs/../../escape-{tag}", F, b"evil", "")], "a '..' component"),
    ([("{outside}/escape-{tag}", F, b"evil", "")], "an absolute path"),
    ([("escape-{tag}", F, b"evil", "")], "which this fetch did not ask for"),
    ([("logs/x", tarfile.XHDTYPE, b"", "")], "tar type 'x'"),
], ids=["dotdot", "dotdot-inside", "absolute", "not-asked", "pax"])
def test_a_lying_node_is_stopped_and_nothing_is_written_outside(
        testbed: Testbed, tmp_path: Path, tag: str, lying_tar: Path,
        members: list[tuple[str, bytes, bytes, str]], said: str) -> None:
    for node in ("node-01", "node-02"):
        _plant(testbed, node, tag)
    outside = tmp_path / "outside"
    outside.mkdir()
    lying_tar.write_bytes(_stream([
        (name.format(tag=tag, outside=outside), kind, data, link)
        for name, kind, data, link in members]))
    out = tmp_path / "out"
    proc = skeleton("cluster", "fetch", f"~/{tag}/logs", str(out), "--node",
                    "node-01,node-02", config=testbed.config_path)
    assert proc.returncode == 1, proc.stderr + proc.stdout
    assert "node-02" in proc.stdout and said in proc.stdout.replace("\n", " "), proc.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "outside"]
    assert list(outside.iterdir()) == []
    # node-02's own dir stays only if something honest came before the lie.
    assert {p.name for p in out.iterdir()} in ({"node-01"}, {"node-01", "node-02"})
    assert not list(out.rglob(f"escape-{tag}"))
    assert (out / "node-01" / "logs" / "app.log").exists()  # the honest node is fetched


def test_a_symlink_swapped_in_for_a_directory_is_never_followed(
        cluster: Cluster, testbed: Testbed, tmp_path: Path, tag: str,
        lying_tar: Path) -> None:
    """Listed as a directory, then sent as a link to a directory here, then a file through
    it (what a node whose `logs` is swapped for a symlink mid-read would send, or a lie)."""
    outside = tmp_path / "outside"
    outside.mkdir()
    _plant(testbed, "node-02", tag)
    lying_tar.write_bytes(_stream([
        ("logs/", D, b"", ""), ("logs/sub", L, b"", str(outside)),
        ("logs/sub/planted", F, b"through the link\n", ""), ("logs", L, b"", str(outside)),
        ("logs/after", F, b"x\n", "")]))
    result = fetch_from_nodes(cluster, cluster.select(["node-02"]), [f"~/{tag}/logs"],
                              str(tmp_path / "out"))
    assert list(outside.iterdir()) == []
    r = result["node-02"]
    assert r.ok, r
    assert r.outcome is not None and r.outcome.skipped == (
        f"logs/sub (symlink -> {outside})", f"logs (symlink -> {outside})")
    node_dir = tmp_path / "out" / "node-02"
    assert _tree(node_dir) == {"logs": "dir", "logs/after": "x\n", "logs/sub": "dir",
                               "logs/sub/planted": "through the link\n"}


def test_a_symlink_planted_here_is_never_followed(cluster: Cluster, testbed: Testbed,
                                                  tmp_path: Path, tag: str) -> None:
    for node in ("node-01", "node-02"):
        _plant(testbed, node, tag)
    outside = tmp_path / "outside"
    outside.mkdir()
    out = tmp_path / "out"
    (out / "node-01").mkdir(parents=True)
    (out / "node-01" / "logs").symlink_to(outside)  # under the node's own directory
    (out / "node-02").symlink_to(outside)  # the node's directory itself
    result = fetch_from_nodes(cluster, cluster.select(["node-01", "node-02"]),
                              [f"~/{tag}/logs"], str(out))
    assert result.exit_code() == 1
    assert "logs here is a symlink or not a directory" in (result["node-01"].error or "")
    assert "node-02/ here is a symlink" in (result["node-02"].error or "")
    assert list(outside.iterdir()) == []


# ------------------------------------------------------------------ inv and fab


def test_inv_copy_and_fetch_match_the_cli(testbed: Testbed, tmp_path: Path, tag: str) -> None:
    conf, _ = _source(tmp_path)
    done = inv("copy", "--local", str(conf), "--remote-dir", f"~/{tag}", "--mode", "0600",
               "--node", "node-01", "--node", "node-02", config=testbed.config_path)
    assert done.returncode == 0, out(done)
    assert "2/2 node(s) ok; 2 file(s) written" in done.stdout
    for node in ("node-01", "node-02"):
        landed = _home(testbed, node) / tag / "app.conf"
        assert stat.S_IMODE(landed.stat().st_mode) == 0o600
    got = inv("fetch", "--remote", f"~/{tag}/app.conf", "--local-dir", str(tmp_path / "got"),
              "--node", "node-0[1-2]", config=testbed.config_path)
    assert got.returncode == 0, out(got)
    for node in ("node-01", "node-02"):
        assert (tmp_path / "got" / node / "app.conf").read_text() == "key = value\n"
    bad = inv("copy", "--local", str(conf), "--remote-dir", "relative", "--node", "node-01",
              config=testbed.config_path)
    assert bad.returncode == 2 and "must be absolute" in bad.stderr, out(bad)


def test_fab_put_and_get_on_one_host(testbed: Testbed, tmp_path: Path, tag: str) -> None:
    conf, tree = _source(tmp_path)
    done = fab("-H", "node-03", "put", "--local", str(conf), "--local", str(tree),
               "--remote-dir", f"/home/skeleton/{tag}", "--preserve",
               config=testbed.config_path)
    assert done.returncode == 0, out(done)
    landed = _home(testbed, "node-03") / tag
    assert int((landed / "app.conf").stat().st_mtime) == 1_600_000_000
    assert (landed / "models dir" / "sub" / "w.bin").exists()
    got = fab("-H", "node-03", "get", "--remote", f"~/{tag}/models dir", "--local-dir",
              str(tmp_path / "got"), config=testbed.config_path)
    assert got.returncode == 0, out(got)
    assert (tmp_path / "got" / "node-03" / "models dir" / "README").read_text() == "models\n"
    missing = fab("-H", "node-03", "get", "--remote", f"~/{tag}/nope", "--local-dir",
                  str(tmp_path / "got"), config=testbed.config_path)
    assert missing.returncode == 1 and "nope" in missing.stdout, out(missing)
