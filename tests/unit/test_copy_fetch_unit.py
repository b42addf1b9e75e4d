"""`cluster copy` / `cluster fetch` without hosts: argument checks, the rsync options a copy
uses, and the fetch's tar reader against honest and hostile streams written to a temporary
directory (what a lying node could send; tests/integration/test_copy_fetch.py sends them
from real hosts)."""

from __future__ import annotations

import dataclasses
import io
import os
import stat
import tarfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from skeleton_app.app import commands
from skeleton_app.app.cli import main
from skeleton_app.app.commands import Session
from skeleton_app.cluster import Cluster
from skeleton_app.config import RegistrySettings, Settings
from skeleton_app.errors import ExitCode, NodeErrorKind, UsageError
from skeleton_app.nodes import Node
from skeleton_app.ops.copy import copy_options
from skeleton_app.ops.copy_paths import fetch_names, local_sources, parse_mode, remote_path
from skeleton_app.ops.fetch_extract import (
    LocalProblem,
    NodeTree,
    Refused,
    TarExtractor,
    open_node_dir,
)
from skeleton_app.tarcheck import parse_header

# ------------------------------------------------------------------ arguments


@pytest.mark.parametrize(("text", "sent"), [
    ("/srv/app", "/srv/app"), ("~/conf", "conf"), ("~/", "."), ("~", "."),
    ("/with space/it's", "/with space/it's"),
])
def test_remote_paths_absolute_or_home(text: str, sent: str) -> None:
    assert remote_path(text, "REMOTE_DIR") == sent


@pytest.mark.parametrize("text", ["tmp", "./x", "~user/x", "", "$HOME/x", "/a\nb", "/a\0b"])
def test_remote_paths_refused(text: str) -> None:
    with pytest.raises(UsageError, match="REMOTE_DIR"):
        remote_path(text, "REMOTE_DIR")


def test_local_sources_must_exist_and_are_sent_as_themselves(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "d").mkdir()
    (tmp_path / "a:b").write_text("x")
    assert local_sources(["d/", "a:b", str(tmp_path / "d")]) == (
        "./d", "./a:b", str(tmp_path / "d"))
    with pytest.raises(UsageError, match="no such local file or directory: nope"):
        local_sources(["d", "nope"])
    with pytest.raises(UsageError):
        local_sources([])


def test_local_sources_that_are_no_file_nor_directory_are_refused(
        tmp_path: Path) -> None:
    """`copy /dev/null ~/x` and a named pipe said ✓ with 0 files (rsync skips them)."""
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(UsageError, match="fifo is a named pipe: copy sends files"):
        local_sources([str(tmp_path / "fifo")])
    with pytest.raises(UsageError, match="/dev/null is a character device"):
        local_sources(["/dev/null"])
    (tmp_path / "f").write_text("x")
    (tmp_path / "l").symlink_to("f")
    assert local_sources([str(tmp_path / "f"), str(tmp_path / "l")]) == (
        str(tmp_path / "f"), str(tmp_path / "l"))


@pytest.mark.parametrize(("text", "mode"), [("644", 0o644), ("0640", 0o640), (None, None),
                                            ("2755", 0o2755)])
def test_parse_mode(text: str | None, mode: int | None) -> None:
    assert parse_mode(text) == mode


@pytest.mark.parametrize("text", ["u+x", "999", "64", "0o644", "", "12345"])
def test_parse_mode_refuses_what_is_not_octal(text: str) -> None:
    with pytest.raises(UsageError, match="--mode"):
        parse_mode(text)


def test_fetch_names_are_last_components_and_never_collide() -> None:
    assert fetch_names(["/var/log/app/", "~/app/config.yaml"]) == (
        ("/var/log/app", "app"), ("app/config.yaml", "config.yaml"))
    with pytest.raises(UsageError, match="would both be written"):
        fetch_names(["/etc/hosts", "/tmp/hosts"])
    for bad in (["/"], ["/x/.."], ["var/log"], []):
        with pytest.raises(UsageError):
            fetch_names(bad)


def test_copy_options() -> None:
    # like cp: this moment's time, a new file's mode from the source less the umask
    assert copy_options(mode=None, preserve=False, mkpath=True) == [
        "--no-times", "--no-perms", "--mkpath"]
    assert copy_options(mode=0o640, preserve=False, mkpath=False) == [
        "--no-times", "--chmod=F0640"]
    assert copy_options(mode=None, preserve=True, mkpath=False) == []
    assert copy_options(mode=0o600, preserve=True, mkpath=False) == ["--chmod=F0600"]


@pytest.mark.parametrize("argv", [
    ["cluster", "copy", "README.md", "relative/dir"],
    ["cluster", "copy", "no-such-file", "/tmp"],
    ["cluster", "copy", "/tmp"],
    ["cluster", "copy", "README.md", "/tmp", "--mode", "rwx"],
    ["cluster", "fetch", "var/log", "out"],
    ["cluster", "fetch", "/etc/hosts", "/tmp/hosts", "out"],
])
def test_bad_input_exits_2_with_one_line_before_any_config_is_read(
        argv: list[str], capsys: pytest.CaptureFixture[str], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SKELETON_CONFIG", str(tmp_path / "no-such-config.yaml"))
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("skeleton: error: "), err
    assert not (tmp_path / "out").exists()


class _Journal:
    """Stands in for the registry: what the commands journal."""

    def __init__(self) -> None:
        self.runs: list[tuple[str, Mapping[str, Any], list[str]]] = []
        self.results: list[Any] = []

    def record_run(self, operation: str, arguments: Mapping[str, Any],
                   nodes: Sequence[str]) -> int:
        self.runs.append((operation, dict(arguments), list(nodes)))
        return len(self.runs)

    def record_node_results(self, run_id: int | None, result: Any) -> None:
        self.results.append(result)

    def close(self) -> None:
        pass


def test_copy_and_fetch_journal_their_runs_and_a_refused_node_exits_4(tmp_path: Path) -> None:
    """Loopback port 1: the connection is refused at once (no host needed)."""
    settings = dataclasses.replace(Settings(), registry=RegistrySettings(
        dsn="postgresql://skeleton@127.0.0.1:9/skeleton"))
    nodes = (Node(id="n1", host="127.0.0.1", port=1),)
    journal = _Journal()
    src = tmp_path / "app.conf"
    src.write_text("x\n")
    with Session(cluster=Cluster(settings, nodes), opener=lambda _s: journal) as session:  # type: ignore[arg-type, return-value]
        copied = commands.copy(session, nodes, commands.CopyRequest.parse(
            [str(src)], "~/etc", mode="640", preserve=True))
        fetched = commands.fetch(session, nodes, commands.FetchRequest.parse(
            ["/etc/hosts"], str(tmp_path / "got")))
    assert copied.exit_code == fetched.exit_code == ExitCode.UNREACHABLE
    assert copied.result["n1"].error_kind == fetched.result["n1"].error_kind \
        == NodeErrorKind.REFUSED
    assert "Connection refused" in (copied.result["n1"].error or "")
    assert journal.runs == [
        ("copy", {"sources": [str(src)], "remote_dir": "~/etc", "mode": "0640",
                  "preserve": True}, ["n1"]),
        ("fetch", {"remotes": ["/etc/hosts"], "local_dir": str(tmp_path / "got")}, ["n1"])]
    assert [r for r in journal.results] == [copied.result, fetched.result]
    assert not (tmp_path / "got" / "n1").exists()  # nothing came: no empty dir left


def test_copy_counts_as_written_only_what_reached_nodes_that_succeeded() -> None:
    """rsync names a file as it starts sending it: a node that failed (`copy a.txt /`:
    permission denied) or was interrupted wrote at most that many, maybe none."""
    from skeleton_app.app.views.copy import copy_text
    from skeleton_app.ops.copy import CopyOutcome
    from skeleton_app.results import ClusterResult, NodeResult

    def row(node: str, exit_code: int, files: int) -> NodeResult[CopyOutcome]:
        return NodeResult(node=node, exit_code=exit_code, duration=0.5,
                          outcome=CopyOutcome("/x", files=files, bytes_sent=100),
                          stderr="" if exit_code == 0 else "rsync: mkstemp failed\n")

    result = ClusterResult([row("n1", 0, 2), row("n2", 23, 2), row("n3", 23, 0)],
                           operation="copy", duration=0.5)
    out = io.StringIO()
    copy_text(result, out)
    lines = out.getvalue().splitlines()
    assert lines[1].split()[:3] == ["n1", "✓", "2"]
    assert "≤2" in lines[2].split() and lines[3].split()[-3] == "0"
    assert lines[-1].startswith("1/3 node(s) ok; 2 file(s) written, 300B sent")


# ------------------------------------------------------------------ the fetch's tar reader


def _tar(members: list[tuple[str, bytes, bytes, str]], fmt: int = tarfile.GNU_FORMAT,
         mode: int = 0o640, mtime: int = 1_600_000_000) -> bytes:
    """(name, type, data, link target) -> an archive."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for name, kind, data, link in members:
            info = tarfile.TarInfo(name)
            info.type = kind
            info.linkname = link
            info.mode = mode
            info.mtime = mtime
            info.size = len(data) if kind == tarfile.REGTYPE else 0
            tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
    return buf.getvalue()


F, D, L = tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE


@pytest.fixture
def node_dir(tmp_path: Path) -> Iterator[tuple[Path, NodeTree]]:
    root = tmp_path / "out"
    root.mkdir()
    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    node_fd = open_node_dir(root_fd, "node-01")
    tree = NodeTree(node_fd)
    yield root / "node-01", tree
    tree.close()
    os.close(node_fd)
    os.close(root_fd)


def _feed(tree: NodeTree, data: bytes, wanted: tuple[str, ...] = ("app",),
          chunk: int = 65536) -> TarExtractor:
    ex = TarExtractor(tree, wanted)
    try:
        for i in range(0, len(data), chunk):
            ex.feed(data[i:i + chunk])
        ex.close()
    finally:
        ex.abort()
    return ex


def _everything(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


@pytest.mark.parametrize("chunk", [1, 7, 512, 65536])
def test_an_honest_stream_is_written_in_chunks_of_any_size(
        node_dir: tuple[Path, NodeTree], chunk: int) -> None:
    path, tree = node_dir
    long = "app/" + "d" * 150 + "/w.bin"  # a GNU long name
    data = _tar([("app/", D, b"", ""), ("app/a.log", F, b"line\n" * 300, ""),
                 ("app/empty", F, b"", ""), (long, F, b"weights", "")])
    # the node script's archives follow each other, zero blocks between them
    data += _tar([("app/second", F, b"2", "")])
    ex = _feed(tree, data, chunk=chunk)
    assert (path / "app" / "a.log").read_bytes() == b"line\n" * 300
    assert (path / long).read_bytes() == b"weights"
    assert (path / "app" / "empty").read_bytes() == b""
    assert (path / "app" / "second").read_bytes() == b"2"
    assert ex.files == 4 and ex.bytes == 1500 + 7 + 1
    st = (path / "app" / "a.log").stat()
    assert stat.S_IMODE(st.st_mode) == 0o640 and int(st.st_mtime) == 1_600_000_000
    assert not [p for p in _everything(path) if ".skeleton-fetch-" in p]


def test_symlinks_and_devices_are_skipped_and_named(node_dir: tuple[Path, NodeTree]) -> None:
    path, tree = node_dir
    ex = _feed(tree, _tar([("app/", D, b"", ""), ("app/passwd", L, b"", "/etc/passwd"),
                           ("app/up", L, b"", "../.."), ("app/f", F, b"ok", "")]))
    assert ex.skipped == ["app/passwd (symlink -> /etc/passwd)", "app/up (symlink -> ../..)"]
    assert _everything(path) == ["app", "app/f"]


def test_set_id_bits_are_never_kept(node_dir: tuple[Path, NodeTree]) -> None:
    path, tree = node_dir
    _feed(tree, _tar([("app", F, b"#!/bin/sh\n", "")], mode=0o6755))
    assert stat.S_IMODE((path / "app").stat().st_mode) == 0o755


@pytest.mark.parametrize(("name", "why"), [
    ("../escape", "a '..' component"),
    ("app/../../escape", "a '..' component"),
    ("/tmp/abs", "an absolute path"),
    ("app/a\nb", "a control character"),
    ("app//b", "an empty path component"),
    ("other/file", "did not ask for"),
    ("apple", "did not ask for"),
])
def test_a_lying_name_stops_the_stream_and_nothing_leaves_the_node_dir(
        node_dir: tuple[Path, NodeTree], name: str, why: str, tmp_path: Path) -> None:
    path, tree = node_dir
    data = _tar([("app/before", F, b"1", ""), (name, F, b"evil", ""),
                 ("app/after", F, b"2", "")])
    with pytest.raises(Refused, match=why):
        _feed(tree, data)
    assert _everything(path) == ["app", "app/before"]  # stopped at the lie
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert not Path("/tmp/abs").exists()


def test_a_pax_header_or_a_bad_checksum_is_refused(node_dir: tuple[Path, NodeTree]) -> None:
    _, tree = node_dir
    with pytest.raises(Refused, match="tar type 'x'"):
        _feed(tree, _tar([("app/" + "é" * 10, F, b"x", "")], fmt=tarfile.PAX_FORMAT))
    data = bytearray(_tar([("app", F, b"x", "")]))
    data[0] ^= 1  # the name changes, the checksum no longer matches
    with pytest.raises(Refused, match="bad checksum"):
        _feed(tree, bytes(data))


def test_a_stream_cut_inside_a_file_leaves_no_file(node_dir: tuple[Path, NodeTree]) -> None:
    path, tree = node_dir
    data = _tar([("app", F, b"x" * 5000, "")])
    with pytest.raises(Refused, match="ended inside app"):
        _feed(tree, data[:512 + 1000])
    assert _everything(path) == []


def test_a_symlink_planted_on_this_machine_is_never_followed(
        node_dir: tuple[Path, NodeTree], tmp_path: Path) -> None:
    path, tree = node_dir
    outside = tmp_path / "outside"
    outside.mkdir()
    (path / "app").symlink_to(outside)
    with pytest.raises(LocalProblem, match="app here is a symlink or not a directory"):
        _feed(tree, _tar([("app/x", F, b"evil", "")]))
    assert list(outside.iterdir()) == []


def test_a_planted_file_symlink_is_replaced_not_written_through(
        node_dir: tuple[Path, NodeTree], tmp_path: Path) -> None:
    path, tree = node_dir
    target = tmp_path / "target"
    target.write_text("mine\n")
    (path / "app").symlink_to(target)
    _feed(tree, _tar([("app", F, b"node's\n", "")]))
    assert target.read_text() == "mine\n"
    assert not (path / "app").is_symlink() and (path / "app").read_text() == "node's\n"


def test_the_node_dir_itself_is_never_a_symlink(tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "node-01").symlink_to(tmp_path / "elsewhere")
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(LocalProblem, match="node-01/ here is a symlink"):
            open_node_dir(fd, "node-01")
    finally:
        os.close(fd)


def test_parse_header_fields() -> None:
    data = _tar([("app/a", F, b"abc", "")], mode=0o600, mtime=1234)
    header = parse_header(data[:512])
    assert not isinstance(header, str)
    assert (header.name, header.size, header.mode, header.mtime, header.regular) == (
        b"app/a", 3, 0o600, 1234, True)
    assert header.padded == 512
    assert parse_header(b"\0" * 100) == "a short tar header"


def test_file_data_past_max_bytes_is_refused_before_it_is_written(
        node_dir: tuple[Path, NodeTree]) -> None:
    # A lying node streams until the controller's disk is full: the bound stops it at the
    # first file that would cross it, and nothing of that file is written.
    path, tree = node_dir
    data = _tar([("app/a", F, b"x" * 600, ""), ("app/b", F, b"y" * 600, ""),
                 ("app/c", F, b"z", "")])
    ex = TarExtractor(tree, ("app",), max_bytes=1000)
    with pytest.raises(Refused, match=r"'app/b' \(600 bytes\).*1000 bytes \(--max-bytes\)"):
        for i in range(0, len(data), 512):
            ex.feed(data[i:i + 512])
    ex.abort()
    assert _everything(path) == ["app", "app/a"]
    ex = TarExtractor(tree, ("app",), max_bytes=1201)
    ex.feed(data)
    ex.close()
    assert ex.bytes == 1201


def test_max_bytes_of_fetch_is_a_size(tmp_path: Path) -> None:
    from skeleton_app.app.commands import FETCH_MAX_BYTES, FetchRequest
    from skeleton_app.errors import UsageError

    assert FetchRequest.parse(["/var/log/x"], str(tmp_path)).max_bytes == FETCH_MAX_BYTES
    assert FetchRequest.parse(["/var/log/x"], str(tmp_path), max_bytes="16M").max_bytes == 16 << 20
    with pytest.raises(UsageError, match="--max-bytes"):
        FetchRequest.parse(["/var/log/x"], str(tmp_path), max_bytes="lots")
