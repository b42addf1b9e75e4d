"""`deploy --diff` logic without a node: which changes are shown, how each file renders (text,
new, binary, too large, refused), the per-node caps, the parsing of a hostile reply, and the
view (node text made safe for a terminal)."""

from __future__ import annotations

import base64
import io
import json

from skeleton_app.app.views.deploy_diff import diff_text
from skeleton_app.ops.deploy import DeployOutcome
from skeleton_app.ops.deploy import diff as d
from skeleton_app.transfers import FileChange


def _local(text: str | bytes) -> d.LocalCopy:
    data = text.encode() if isinstance(text, str) else text
    return d.LocalCopy(data=data, size=len(data))


def _node(text: str | bytes) -> d.NodeCopy:
    data = text.encode() if isinstance(text, str) else text
    return d.NodeCopy("data", len(data), data)


def test_safe_path_takes_only_plain_relative_paths() -> None:
    assert d.safe_path("app/main.py") == "app/main.py"
    assert d.safe_path("dir/") == "dir"
    for bad in ("", "/etc/shadow", "../x", "a/../../x", "a//b", "./a", "a\nb", "a\0b"):
        assert d.safe_path(bad) is None, bad


def test_wanted_keeps_content_changes_and_deletions() -> None:
    changes = [FileChange("a.py", "<", "f", "..st......"),
               FileChange("new.py", "<", "f", "+++++++++"),
               FileChange("times.py", ".", "f", "..t......"),
               FileChange("dir", "c", "d", "+++++++++"),
               FileChange("link", "c", "L", "+++++++++"),
               FileChange("gone.py", "*", "", "", message="deleting")]
    assert [c.path for c in d.wanted(changes)] == ["a.py", "new.py", "gone.py"]


def test_changed_text_is_a_unified_diff_labelled_with_the_node() -> None:
    got = d.render("app/main.py", "node-01", _local("a\nB\nc\n"), _node("a\nb\nc\n"), new=False)
    assert got is not None and got.kind == "changed"
    lines = got.diff.splitlines()
    assert lines[0] == "--- a/app/main.py\tnode-01"
    assert lines[1] == "+++ b/app/main.py\tlocal"
    assert "-b" in lines and "+B" in lines and " a" in lines


def test_missing_final_newline_is_marked() -> None:
    got = d.render("f", "n", _local("x\ny"), _node("x\n"), new=False)
    assert got is not None
    assert got.diff.endswith("+y\n\\ No newline at end of file\n")


def test_same_content_is_not_listed() -> None:
    assert d.render("f", "n", _local("same\n"), _node("same\n"), new=False) is None


def test_new_file_is_shown_whole_from_dev_null() -> None:
    got = d.render("app/new.py", "n", _local("x = 1\n"), d.NodeCopy("absent"), new=True)
    assert got is not None and got.kind == "new"
    assert got.diff.splitlines()[:4] == ["--- /dev/null", "+++ b/app/new.py\tlocal",
                                         "@@ -0,0 +1 @@", "+x = 1"]


def test_binary_files_are_named_not_shown() -> None:
    for local, node in ((b"a\0b", b"a\0c"), (b"\xff\xfe", b"text\n"), (b"text\n", b"\x80")):
        got = d.render("f.bin", "n", _local(local), _node(node), new=False)
        assert got is not None and got.kind == "binary" and got.message == d.BINARY
        assert got.diff == ""
    got = d.render("new.bin", "n", _local(b"\0\1"), d.NodeCopy("absent"), new=True)
    assert got is not None and got.kind == "binary" and "new" in got.message


def test_too_large_files_say_their_size() -> None:
    big = d.LocalCopy(size=10 * d.FILE_CAP)
    got = d.render("big", "n", big, _node("x"), new=False)
    size = 10 * d.FILE_CAP
    assert got == d.FileDiff("big", "too-large", message=f"diff too large ({size} bytes)")
    got = d.render("big", "n", _local("x"), d.NodeCopy("big", 999_999), new=False)
    assert got is not None and got.message == "diff too large (999999 bytes)"
    got = d.render("late", "n", _local("x"), d.NodeCopy("budget", 5), new=False)
    assert got is not None and got.kind == "too-large"
    assert got.message == "not read: 1024 KiB were already read from this node"


def test_a_symlink_on_the_node_is_refused_whatever_the_local_side() -> None:
    for new in (False, True):
        got = d.render("app/main.py", "n", _local("x"), d.NodeCopy("symlink"), new=new)
        assert got is not None and got.kind == "refused" and "symlink" in got.message
        assert got.diff == ""


def test_diff_text_past_the_node_cap_is_named_too_large() -> None:
    files = [d.FileDiff(f"f{i}", "changed", diff="x" * 40) for i in range(5)]
    got = d.capped(files, cap=100)
    assert [f.kind for f in got] == ["changed", "changed", "too-large", "too-large", "too-large"]
    # a 40-byte diff is not "too large": the node's cap was filled by the others
    assert got[2].message == "diff not shown (40 bytes): this node's diffs passed 0 KiB"


def _reply(*lines: str) -> str:
    return "\n".join(lines) + "\n"


def test_parse_reply_takes_only_what_was_asked() -> None:
    good = base64.b64encode(b"hello\n").decode()
    text = _reply("dest=ok", "entry=0 data 6", "--- begin 0", good, "--- end 0",
                  "entry=0 data 6",  # a repeat: ignored
                  "entry=7 data 6",  # never asked
                  "entry=-1 data 6", "entry=1 mystery", "entry=1 symlink",
                  "entry=2 data 3", "--- begin 2", "!!!not base64", "--- end 2",
                  "entry=3 data 9", "--- begin 3",
                  base64.b64encode(b"x" * (d.FILE_CAP + 1)).decode(), "--- end 3")
    copies, error = d.parse_reply(text, 5)
    assert error is None
    assert copies[0] == d.NodeCopy("data", 6, b"hello\n")
    assert copies[1].status == "symlink"
    assert copies[2].status == "unreadable"
    assert copies[3].status == "big" and copies[3].data is None
    assert set(copies) == {0, 1, 2, 3}


def test_parse_reply_errors() -> None:
    assert d.parse_reply(_reply("error=bad"), 1)[1] == "the node's diff helper failed: bad"
    assert d.parse_reply("garbage", 1)[1] is not None
    copies, error = d.parse_reply(_reply("dest=absent"), 2)
    assert error is None and copies == {0: d.NodeCopy("absent"), 1: d.NodeCopy("absent")}


def test_collect_is_bounded() -> None:
    sink = d._Collect(10)
    sink("n", "stdout", b"12345")
    sink("n", "stderr", b"x" * 100)
    assert not sink.overflow and sink.text() == "12345"
    sink("n", "stdout", b"678901")
    assert sink.overflow and sink.text() == ""


def test_view_sanitizes_node_text_and_names_each_kind() -> None:
    nd = d.NodeDiff(files=(
        d.FileDiff("app/x.py", "changed", diff="--- a/app/x.py\tn\n+++ b/app/x.py\tlocal\n"
                   "@@ -1 +1 @@\n-\x1b]0;pwned\x07\n+ok\n"),
        d.FileDiff("img.bin", "binary", message=d.BINARY),
        d.FileDiff("gone.py", "deleted"),
        d.FileDiff("evil\x1b[2J", "refused", message="a symlink on the node"),
    ), same=2)
    out = io.StringIO()
    diff_text("node-01", nd, out)
    text = out.getvalue()
    assert "\x1b" not in text and "\x07" not in text
    assert "-\\x1b]0;pwned\\x07" in text
    assert "binary img.bin: binary file differs" in text
    assert "deleted gone.py" in text
    assert "refused evil\\x1b[2J: a symlink on the node" in text
    assert "node-01: 4 file(s) would change, 2 with the same content" in text


def test_view_colours_only_when_asked() -> None:
    nd = d.NodeDiff(files=(d.FileDiff("f", "changed", diff="--- a/f\tn\n+++ b/f\tlocal\n"
                                                             "@@ -1 +1 @@\n-a\n+b\n"),))
    out = io.StringIO()
    diff_text("n", nd, out, colour=True)
    assert "\x1b[32m+b\x1b[0m" in out.getvalue() and "\x1b[31m-a" in out.getvalue()
    assert "+++ b/f\tlocal\n" in out.getvalue()


def test_outcome_json_holds_the_diff() -> None:
    nd = d.NodeDiff(files=(d.FileDiff("f", "new", diff="+x\n"),))
    data = DeployOutcome(dest="/srv/app", dry_run=True, diff=nd).as_dict()
    assert json.loads(json.dumps(data))["diff"] == {
        "files": [{"path": "f", "kind": "new", "diff": "+x\n", "message": ""}], "same": 0,
        "error": None}
