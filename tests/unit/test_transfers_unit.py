"""The rsync wrapper's pure parts, no testbed: argv and -e quoting checked against the local
rsync, the output parsers on real rsync output, failure classification, the exclude matcher
against rsync's own choices, and the wall-clock deadline of `run_rsync`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from skeleton_app.errors import NodeErrorKind
from skeleton_app.transfers import (
    ITEM_PREFIX,
    OutputParser,
    Progress,
    RsyncFilter,
    TransferResult,
    build_rsync_argv,
    classify_failure,
    decode_name,
    parse_item,
    parse_progress,
    parse_stats,
    remote_spec,
    rsh_command,
    rsync_quote,
    run_rsync,
)
from skeleton_app.transfers.tree import walk_tree

TRICKY_WORDS = [
    "plain", "two words", "it's", 'say "hi"', "back\\slash", "$(touch /tmp/x)", "`id`",
    "semi;colon", "-o", "UserKnownHostsFile=/tmp/a b/known_hosts", "'", '"', "''",
    "tab\there", "ünïcödé", "*glob?",
]


# ------------------------------------------------------------------ -e quoting, real rsync


def _fake_ssh(tmp_path: Path) -> tuple[Path, Path]:
    """An executable (in a directory with a space and a quote) that records its argv."""
    bindir = tmp_path / "bin dir's"
    bindir.mkdir()
    record = tmp_path / "argv.json"
    fake = bindir / "fake ssh"
    fake.write_text(
        f"#!{sys.executable}\n"
        "import json, sys\n"
        f"json.dump(sys.argv, open({str(record)!r}, 'w'))\n"
        "sys.exit(1)\n"
    )
    fake.chmod(0o755)
    return fake, record


def test_rsh_command_survives_rsyncs_own_splitting(tmp_path: Path) -> None:
    fake, record = _fake_ssh(tmp_path)
    words = [str(fake), *TRICKY_WORDS, "--"]
    src = tmp_path / "src"
    src.mkdir()
    argv = build_rsync_argv([str(src) + "/"], remote_spec("node.example", "/dest path/x"),
                            rsh=words, protect_args="--secluded-args")
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode != 0
    seen = json.loads(record.read_text())
    # rsync runs exactly our words, then the host, then its own server command.
    assert seen[: len(words)] == words
    assert seen[len(words)] == "node.example"
    assert seen[len(words) + 1] == "rsync"
    # --secluded-args: the remote path is not on the remote command line at all.
    assert not any("dest path" in word for word in seen)


def test_rsync_quote_leaves_safe_words_bare() -> None:
    assert rsync_quote("-p") == "-p"
    assert rsync_quote("UserKnownHostsFile=/tmp/kh") == "UserKnownHostsFile=/tmp/kh"
    assert rsync_quote("a b") == "'a b'"
    assert rsync_quote("it's") == "'it''s'"
    assert rsync_quote("") == "''"
    assert rsh_command(["ssh", "-i", "/k e y"]) == "ssh -i '/k e y'"


def test_argv_is_a_list_with_double_dash_before_paths() -> None:
    argv = build_rsync_argv(["-rf /"], remote_spec("10.0.0.1", "/x"), rsh=["ssh", "--"],
                            exclude=[".venv/", "*.pyc"], delete=True, dry_run=True,
                            checksum=True, rsync_opts=["--bwlimit=1000"])
    dd = argv.index("--")
    assert argv[dd + 1 :] == ["-rf /", "10.0.0.1:/x"]
    assert "--delete" in argv and "--dry-run" in argv and "--checksum" in argv
    assert "--compress" in argv and "--perms" in argv and "--times" in argv
    assert "--delay-updates" in argv and any(a.startswith("--partial-dir=") for a in argv)
    assert "--partial" not in argv  # would leave truncated files under their final names
    assert argv.index("--bwlimit=1000") < dd
    assert "--exclude=.venv/" in argv and "--exclude=*.pyc" in argv


def test_remote_spec_brackets_ipv6() -> None:
    assert remote_spec("fd00::5", "/a b") == "[fd00::5]:/a b"
    assert remote_spec("node-01", "/x") == "node-01:/x"


# ------------------------------------------------------------------ output parsers


REAL_OUTPUT = (
    b"@@skel *deleting   0 gone\n"
    b"@@skel >f+++++++++ 3 f1\n"
    b"\r              3  37%    0.00kB/s    0:00:00  "
    b"\r              3  37%    0.00kB/s    0:00:00 (xfr#1, to-chk=5/7)\n"
    b"@@skel cL+++++++++ 2 link\n"
    b"@@skel cd+++++++++ 4096 a b/\n"
    b"@@skel <f.st...... 2 a b/it's \"q\"\n"
    b"@@skel .d..t...... 4096 ./\n"
    b"@@skel <f+++++++++ 1 sub/new\\#012line\n"
    b"@@skel <f+++++++++ 7   leading spaces\n"
    b"\r              6  75%    2.93kB/s    0:00:00 (xfr#3, to-chk=0/7)\n"
    b"\n"
    b"Number of files: 7 (reg: 3, dir: 3, link: 1)\n"
    b"Number of created files: 6 (reg: 3, dir: 2, link: 1)\n"
    b"Number of deleted files: 1 (reg: 1)\n"
    b"Number of regular files transferred: 3\n"
    b"Total file size: 1,234,567 bytes\n"
    b"Total transferred file size: 6 bytes\n"
    b"Literal data: 6 bytes\n"
    b"Matched data: 0 bytes\n"
    b"File list size: 0\n"
    b"Total bytes sent: 2,299\n"
    b"Total bytes received: 97\n"
    b"\n"
    b"sent 2,299 bytes  received 97 bytes  792.00 bytes/sec\n"
)


def test_output_parser_in_any_chunking() -> None:
    for size in (1, 7, 64, len(REAL_OUTPUT)):
        progress: list[Progress] = []
        parser = OutputParser(on_progress=progress.append)
        for i in range(0, len(REAL_OUTPUT), size):
            parser.feed(REAL_OUTPUT[i : i + size])
        parser.close()
        paths = [c.path for c in parser.changes]
        assert paths == ["gone", "f1", "link", "a b/", "a b/it's \"q\"", "./", "sub/new\nline",
                         "  leading spaces"]
        kinds = [c.kind for c in parser.changes]
        assert kinds == ["deleted", "created", "created", "created", "updated", "attributes",
                         "created", "created"]
        assert parser.stats is not None
        assert parser.stats.bytes_sent == 2299
        assert parser.stats.total_size == 1234567
        assert parser.stats.files_deleted == 1
        assert [p.percent for p in progress] == [37, 37, 75]
        assert progress[-1].to_check == 0 and progress[-1].total == 7


def test_parse_item_details() -> None:
    change = parse_item(ITEM_PREFIX + ">f.st...... 123 dir/file")
    assert change is not None
    assert (change.update, change.file_type, change.attrs, change.size) == (
        ">", "f", ".st......", 123)
    assert change.content_sent and not change.created and change.kind == "updated"
    deleted = parse_item("*deleting   0 old dir/")
    assert deleted is not None and deleted.deleted and deleted.is_dir
    assert parse_item("sent 12 bytes  received 3 bytes") is None
    assert parse_item("") is None


def test_decode_name() -> None:
    assert decode_name("a\\#012b") == "a\nb"
    assert decode_name("caf\\#303\\#251") == "café"
    assert decode_name("no\\escape") == "no\\escape"


def test_parse_stats_and_progress_edge_cases() -> None:
    assert parse_stats("rsync error: some error") is None
    stats = parse_stats("Total bytes sent: 1.50K\nTotal bytes received: 12")
    assert stats is not None and stats.bytes_sent == 1536 and stats.bytes_received == 12
    p = parse_progress("    1,048,576 100%  500.00kB/s    0:00:02 (xfr#12, ir-chk=1000/2000)")
    assert p is not None and p.bytes == 1048576 and p.percent == 100 and p.transfers == 12
    assert parse_progress("Number of files: 3") is None


def _result(code: int, stderr: str) -> TransferResult:
    return TransferResult(argv=("rsync",), exit_code=code, stderr=stderr)


def test_classify_failure() -> None:
    kind, msg = classify_failure(_result(
        12, "/usr/bin/rsync: command not found (hidden by skeleton testbed)\n"
            "rsync: connection unexpectedly closed (0 bytes received so far) [sender]\n"),
        "node-03")
    assert kind is NodeErrorKind.LOCAL and "rsync is not installed on node-03" in msg
    kind, _ = classify_failure(_result(
        255, "ssh: connect to host 10.0.0.9 port 22: Connection refused\n"))
    assert kind is NodeErrorKind.REFUSED
    kind, _ = classify_failure(_result(
        255, "No ED25519 host key is known for 10.0.0.9 and you have requested strict"
             " checking.\nHost key verification failed.\n"))
    assert kind is NodeErrorKind.HOSTKEY_UNKNOWN
    kind, _ = classify_failure(_result(255, "Permission denied (publickey).\n"))
    assert kind is NodeErrorKind.AUTH
    kind, msg = classify_failure(_result(
        11, 'rsync: [receiver] write failed on "/x/y": No space left on device (28)\n'))
    assert kind is None and "exit 11" in msg and "No space left" in msg
    # The receiver ran out of disk and quit; the sender saw the pipe break first (a loaded
    # machine): still the node's full disk, not a lost connection.
    kind, msg = classify_failure(_result(
        12, 'rsync: [receiver] write failed on "/x/y": No space left on device (28)\n'
            "rsync: [sender] write error: Broken pipe (32)\n"
            "rsync error: error in rsync protocol data stream (code 12)\n"))
    assert kind is None and "exit 12" in msg
    kind, _ = classify_failure(_result(30, "rsync error: timeout in data send/receive\n"))
    assert kind is NodeErrorKind.TIMEOUT


# ------------------------------------------------------------------ exclude patterns


TREE = [
    "a.pyc", "b.py", "my.pyc.txt", "logs", "sub/c.pyc", "sub/logs/x.log", "sub/keep.py",
    ".venv/bin/python", "__pycache__/m.cpython-311.pyc", "pkg/__pycache__/n.pyc", ".git/HEAD",
    "gitdir/.git", "anchored.txt", "sub/anchored.txt", "sub/x.tmp", "sub/deeper/x.tmp",
    "deep/a/b/keep1", "deep/keepZ", "obj.o", "lib.a", "obj.c", "dir/inner/f", "dir2/f",
    "sp ace/f i le", "[br]acket", "q'uote/\"x\"",
]
PATTERNS = [
    ".venv/", "__pycache__/", "*.pyc", ".git/", "logs/", "/anchored.txt", "sub/*.tmp",
    "**/deep/**/keep?", "*.[oa]", "dir/***", "f i le", "**/deeper/x.tmp", "[!a-z]*",
]


def _rsync_choice(src: Path, patterns: list[str], tmp_path: Path) -> set[str]:
    dst = tmp_path / "dst"
    dst.mkdir(exist_ok=True)
    argv = ["rsync", "-r", "-l", "-n", "--out-format=%n",
            *[f"--exclude={p}" for p in patterns], "--", f"{src}/", f"{dst}/"]
    out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=30).stdout
    return {line.rstrip("/") for line in out.splitlines() if line and line != "./"}


def test_exclude_matcher_agrees_with_rsync(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for name in TREE:
        path = src / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(name)
    for patterns in (PATTERNS, PATTERNS[:5], ["logs/"], ["/sub/"], ["keep*"], ["**/x.tmp"],
                     ["sub/**"], ["sub/"], ["*/f"], ["q'uote/"], []):
        ours = {path for path, _, _ in walk_tree(src, patterns)}
        assert ours == _rsync_choice(src, patterns, tmp_path), patterns


def test_exclude_matcher_semantics() -> None:
    flt = RsyncFilter(["logs/", "/top.txt", "*.pyc"])
    assert flt.excluded("logs", True) and flt.excluded("a/b/logs", True)
    assert not flt.excluded("logs", False)  # a file called logs is not a directory
    assert flt.excluded("top.txt", False) and not flt.excluded("sub/top.txt", False)
    assert flt.excluded("x/y.pyc", False) and not flt.excluded("x.pyc.txt", False)


def test_run_rsync_deadline_kills(tmp_path: Path) -> None:
    # A local "remote shell" that never answers: rsync would wait forever.
    hang = tmp_path / "hang"
    hang.write_text("#!/bin/sh\nexec sleep 60.4242\n")
    hang.chmod(0o755)
    src = tmp_path / "src"
    src.mkdir()
    argv = build_rsync_argv([f"{src}/"], "host:/x", rsh=[str(hang)],
                            protect_args="--secluded-args")
    r = run_rsync(argv, timeout=1.0)
    assert r.timed_out and r.exit_code is None and r.duration < 10
    kind, _ = classify_failure(r)
    assert kind is NodeErrorKind.TIMEOUT
    # rsync was stopped with SIGTERM, so it took its remote shell down with it.
    assert not [p for p in Path("/proc").iterdir() if p.name.isdigit()
                and b"60.4242" in _cmdline(p)]


def _cmdline(proc_dir: Path) -> bytes:
    try:
        return (proc_dir / "cmdline").read_bytes()
    except OSError:
        return b""
