"""`--format table|plain|tsv|json` on every command that prints a result, over the fake
runner (cluster commands) and stand-in registries and queues (runs, nodes, jobs): piped
output never draws boxes, tsv keeps a node's text in one field, `--format json` is the
command's `--json`, progress displays never draw on a pipe, and the documented keys of
`runs list/show --json`."""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from skeleton_app.app import commands
from skeleton_app.app.cli import cli, main, registry_cmds
from skeleton_app.app.cli.options import Ctx
from skeleton_app.app.cli.options import _json_value as json_option_callback
from skeleton_app.app.commands import Done, Session, SyncDone
from skeleton_app.app.views import common as render
from skeleton_app.app.views.deploy import DeployProgress
from skeleton_app.app.views.runs import NODE_KEYS, RUN_KEYS
from skeleton_app.app.views.sync_models import SyncModelsProgress
from skeleton_app.cluster import Cluster
from skeleton_app.config import Settings
from skeleton_app.errors import NodeError, NodeErrorKind
from skeleton_app.nodes import Node
from skeleton_app.ops.bootstrap import BootstrapOutcome
from skeleton_app.ops.sync_models import SyncOutcome
from skeleton_app.registry import NodeEntry, NodeSpec, RunRecord
from skeleton_app.registry.records import RunNodeRecord
from skeleton_app.results import ClusterResult, NodeResult, failure
from skeleton_app.testing.fake import Call, FakeRunner, Reply
from tests.unit.test_jobs_cli import FakeJobs

BOX = set("┃│━─┏┓┗┛┡┩╇╈┼╭╮╰╯")
# Loopback port 1 refuses: anything that slipped past the fake would fail, never leave.
NODES = (Node(id="linux-01", host="127.0.0.1", port=1, roles=("stt",)),
         Node(id="linux-02", host="127.0.0.1", port=1, roles=("tts",)))
# A node's own words, with a tab and a newline in them: one field in tsv whatever they hold.
HOSTILE = "no route\tto\nhost \x1b[31mred"
T0 = datetime(2026, 12, 6, 14, 2, 11, tzinfo=UTC)


def node_answers(call: Call) -> Reply | NodeError:
    """linux-01 answers (exit 0, a tab in its output), linux-02 is unreachable."""
    if call.node == "linux-02":
        return NodeError(NodeErrorKind.UNREACHABLE, HOSTILE)
    return Reply(0, stdout="hello\tthere\n")


class Runs:
    """A registry stand-in for `runs` and `nodes list`."""

    RUN = RunRecord(id=7, started_at=T0, finished_at=T0, who="me@here", operation="exec",
                    arguments={"command": "uname -r"}, selection=["linux-[01-02]"],
                    exit_code=4, duration=0.25, node_count=2, ok_count=1, failed_count=0,
                    error_count=1,
                    nodes=(RunNodeRecord("linux-01", 0, None, None, 0.1, "6.1.0\n", ""),
                           RunNodeRecord("linux-02", None, "unreachable", HOSTILE, 0.2, "",
                                         "")))

    def list_runs(self, *, limit: int = 20) -> tuple[RunRecord, ...]:
        return (RunRecord(**{**{k: getattr(self.RUN, k) for k in RunRecord.__slots__},
                             "nodes": ()}),)

    def get_run(self, run_id: int) -> RunRecord | None:
        return self.RUN if run_id == 7 else None

    def last_run(self, *, who: str | None = None) -> RunRecord | None:
        return self.RUN

    def list_entries(self, *, enabled_only: bool = True
                     ) -> tuple[tuple[NodeEntry, ...], tuple[str, ...]]:
        return tuple(NodeEntry(spec=NodeSpec(id=n.id, host=n.host), node=n, seen_ago=3.0,
                               daemon_state="running", code_version=HOSTILE)
                     for n in NODES), ()

    def __enter__(self) -> Runs:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def bootstrap_done(*_args: Any, **_kwargs: Any) -> Done[BootstrapOutcome]:
    ok = NodeResult(node="linux-01", exit_code=0, duration=1.0,
                    outcome=BootstrapOutcome(state="installed", python="3.11.2",
                                             digest="ab", message="built\there"))
    down: NodeResult[BootstrapOutcome] = failure("linux-02", NodeErrorKind.UNREACHABLE,
                                                 HOSTILE)
    return Done(ClusterResult([ok, down], operation="bootstrap"), NODES)


def sync_done(*_args: Any, **_kwargs: Any) -> SyncDone[SyncOutcome]:
    out = SyncOutcome(status="synced", source="linux-01", models=("m",), moved=1 << 20,
                      seconds=0.5, rate=2 << 20, via=("chain from\tlinux-01",), repaired=(),
                      rerouted=(), path="/srv/models")
    ok = NodeResult(node="linux-02", exit_code=0, outcome=out)
    return SyncDone(ClusterResult([ok], operation="sync-models"), NODES[1:], source=NODES[0])


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """Every command's session runs on the fake runner; registries and queues are stand-ins.
    Yields a directory to deploy from."""
    cluster = Cluster(Settings(), NODES, connector=FakeRunner(node_answers))

    def session(self: Ctx) -> Session:
        if self._session is None:
            self._session = Session(cluster=cluster)
        return self._session

    monkeypatch.setattr(Ctx, "session", session)
    monkeypatch.setattr(registry_cmds, "_registry", lambda ctx, config: Runs())
    jobs = FakeJobs()
    monkeypatch.setattr(commands, "jobs_facade", lambda session: jobs)
    monkeypatch.setattr(commands, "bootstrap", bootstrap_done)
    monkeypatch.setattr(commands, "sync_models", sync_done)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config.yaml").write_text("ssh: {connect_timeout: 1}\n")
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "app.py").write_text("print('hi')\n")
    yield tmp_path / "src"
    render.set_format(None)


# Every command that prints a table, and the first word of its header line.
TABLE_COMMANDS: list[tuple[list[str], str]] = [
    (["cluster", "status"], "node"),
    (["cluster", "deploy", "--source", "src"], "node"),
    (["cluster", "bootstrap"], "node"),
    (["cluster", "daemon", "start"], "node"),
    (["cluster", "daemon", "stop"], "node"),
    (["cluster", "daemon", "restart"], "node"),
    (["cluster", "daemon", "status"], "node"),
    (["cluster", "sync-models", "--source-node", "linux-01"], "node"),
    (["cluster", "logs", "--out", "logs"], "node"),
    (["jobs", "list"], "job"),
    (["jobs", "show", "3"], "#"),
    (["nodes", "list"], "node"),
    (["runs", "list"], "run"),
    (["runs", "show", "7"], "node"),
]
IDS = [" ".join(c[:3]) for c, _ in TABLE_COMMANDS]


def run(args: list[str]) -> tuple[int, str]:
    """`skeleton ARGS` as the console command runs it (`main`: the exit code, errors as one
    line); the exit code and stdout (a pipe, not a terminal)."""
    code, out, _err = run_all(args)
    return code, out


def run_all(args: list[str]) -> tuple[int, str, str]:
    with CliRunner().isolation() as (out, err, _):
        try:
            main(args)
            code = 0
        except SystemExit as exc:
            code = int(exc.code or 0)
        sys.stdout.flush()
        sys.stderr.flush()
        return code, out.getvalue().decode(), err.getvalue().decode()


def header(out: str, first: str, sep: str | None = None) -> tuple[int, list[str]]:
    lines = out.splitlines()
    at = next(i for i, line in enumerate(lines) if line.split(sep)[:1] == [first])
    return at, lines


@pytest.mark.parametrize(("command", "first"), TABLE_COMMANDS, ids=IDS)
@pytest.mark.parametrize("fmt", [None, "plain", "tsv"])
def test_piped_tables_draw_no_boxes(fake: Path, command: list[str], first: str,
                                    fmt: str | None) -> None:
    _code, out = run([*command, *(["--format", fmt] if fmt else [])])
    assert not BOX & set(out), out
    assert "\x1b" not in out
    header(out, first, "\t" if fmt == "tsv" else None)  # the table is there


@pytest.mark.parametrize(("command", "first"), TABLE_COMMANDS, ids=IDS)
def test_format_table_draws_the_boxes_even_on_a_pipe(fake: Path, command: list[str],
                                                     first: str) -> None:
    _code, out = run([*command, "--format", "table"])
    assert BOX & set(out), out


@pytest.mark.parametrize(("command", "first"), TABLE_COMMANDS, ids=IDS)
def test_tsv_rows_have_one_field_per_column(fake: Path, command: list[str],
                                            first: str) -> None:
    _code, out = run([*command, "--format", "tsv"])
    at, lines = header(out, first, "\t")
    width = len(lines[at].split("\t"))
    rows = [line.split("\t") for line in lines[at + 1:] if "\t" in line]
    assert rows and all(len(row) == width for row in rows), out


def test_tsv_keeps_a_nodes_tab_and_newline_in_one_escaped_field(fake: Path) -> None:
    _code, out = run(["cluster", "daemon", "status", "--format", "tsv"])
    rows = {line.split("\t")[0]: line.split("\t") for line in out.splitlines()}
    assert rows["linux-02"][-1] == "unreachable: no route\\tto\\nhost \\\\x1b[31mred"
    assert rows["node"] == ["node", "ok", "pid", "daemon"]


# Every command with a JSON form: `--format json` prints exactly what `--json` prints.
JSON_COMMANDS = [c for c, _ in TABLE_COMMANDS] + [
    ["cluster", "exec", "uname -r"], ["jobs", "cancel", "3"], ["jobs", "retry", "3"],
    ["jobs", "submit", "stt", "a.wav"]]


def _without(value: Any, keys: set[str]) -> Any:
    if isinstance(value, dict):
        return {k: _without(v, keys) for k, v in value.items() if k not in keys}
    if isinstance(value, list):
        return [_without(v, keys) for v in value]
    return value


@pytest.mark.parametrize("command", JSON_COMMANDS, ids=" ".join)
def test_format_json_is_the_json_flag(fake: Path, command: list[str]) -> None:
    (fake.parent / "a.wav").write_bytes(b"RIFF....WAVE")
    code_flag, by_flag = run([*command, "--json"])
    code_format, by_format = run([*command, "--format", "json"])
    assert code_flag == code_format
    # Timings differ from run to run; a second submit queues a new job (a new id).
    varies = {"duration", "id"} if command[1] == "submit" else {"duration"}
    assert _without(json.loads(by_format), varies) == _without(json.loads(by_flag), varies)


def test_json_wins_over_another_format_and_either_order_works(fake: Path) -> None:
    _, first = run(["runs", "show", "7", "--format", "tsv", "--json"])
    _, second = run(["runs", "show", "--json", "7", "--format", "plain"])
    assert json.loads(first) == json.loads(second)


def test_exec_blocks_stay_readable_in_every_format(fake: Path) -> None:
    for fmt in ("plain", "table"):
        code, out = run(["cluster", "exec", "uname -r", "--format", fmt])
        assert code == 4
        assert "---------------- linux-01 ----------------\nhello\tthere\n" in out
        assert "linux-02: unreachable: no route\tto" in out
    # tsv: a row per line, every value one field (tabs, newlines escaped, ESC made visible)
    code, out = run(["cluster", "exec", "uname -r", "--format", "tsv"])
    assert code == 4
    assert out.splitlines() == ["node\tstream\ttext", "linux-01\tstdout\thello\\tthere",
                                "linux-02\tunreachable\tno route\\tto\\nhost \\\\x1b[31mred"]


def test_runs_list_json_has_the_documented_keys(fake: Path) -> None:
    _, out = run(["runs", "list", "--json"])
    (record,) = json.loads(out)
    assert tuple(record) == RUN_KEYS
    assert record["started_at"] == "2026-12-06T14:02:11+00:00"
    assert record["arguments"] == {"command": "uname -r"}
    assert (record["exit_code"], record["ok_count"], record["error_count"]) == (4, 1, 1)


def test_runs_show_json_has_the_run_and_every_node(fake: Path) -> None:
    _, out = run(["runs", "show", "7", "--json"])
    record = json.loads(out)
    assert tuple(record) == (*RUN_KEYS, "nodes")
    assert [tuple(n) for n in record["nodes"]] == [NODE_KEYS, NODE_KEYS]
    assert record["nodes"][1]["error"] == HOSTILE  # JSON escapes it: \u001b on the wire
    assert "\x1b" not in out and "\\u001b" in out


def test_an_unknown_run_is_a_usage_error_in_json_too(fake: Path) -> None:
    code, out, err = run_all(["runs", "show", "8", "--json"])
    assert (code, out) == (2, "") and "unknown run 8" in err


def test_runs_show_last_is_the_newest_run_as_runs_retry_last(fake: Path) -> None:
    assert run(["runs", "show", "last", "--json"]) == run(["runs", "show", "7", "--json"])
    code, out, err = run_all(["runs", "show", "newest"])
    assert (code, out) == (2, "")
    assert err.splitlines() == ["skeleton: error: runs show: expected a run id or `last`,"
                                " got 'newest'"]


def test_a_table_without_a_json_form_prints_objects_keyed_by_column() -> None:
    render.set_format("json")
    try:
        out = io.StringIO()
        render.table("t", ["node", "note"], [["linux-01", "a\tb"]], file=out)
    finally:
        render.set_format(None)
    assert json.loads(out.getvalue()) == [{"node": "linux-01", "note": "a\tb"}]


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(("stdout_tty", "fmt", "draws"), [
    (True, None, True), (True, "table", True), (False, None, False), (False, "table", False),
    (True, "plain", False), (True, "tsv", False), (True, "json", False)])
def test_progress_draws_only_on_a_terminal_in_table_format(
        monkeypatch: pytest.MonkeyPatch, stdout_tty: bool, fmt: str | None,
        draws: bool) -> None:
    monkeypatch.setattr("sys.stdout", Tty() if stdout_tty else io.StringIO())
    render.set_format(fmt)
    try:
        err = Tty()
        assert render.live_display(err) is draws
        assert DeployProgress(NODES, err).enabled is draws
        assert SyncModelsProgress(enabled=True, file=err).tty is draws
    finally:
        render.set_format(None)


def test_every_command_that_prints_a_result_takes_format() -> None:
    """A new command gets `--format` from `selection_options` or `output_options`, and its
    `--json` from `json_option` (so that `--format json` is `--json`)."""
    import click

    def walk(command: click.Command, path: tuple[str, ...]) -> Iterator[tuple[str, ...]]:
        if isinstance(command, click.Group):
            for name, sub in command.commands.items():
                yield from walk(sub, (*path, name))
        elif any(p.name == "as_json" for p in command.params):
            yield path

    with_json = list(walk(cli, ()))
    assert len(with_json) >= 18
    for path in with_json:
        command: Callable[..., Any] | click.Command = cli
        for name in path:
            assert isinstance(command, click.Group)
            command = command.commands[name]
        assert isinstance(command, click.Command)
        assert any("--format" in p.opts for p in command.params), path
        # `--json` is `options.json_option` (an inline one would not see `--format json`).
        (flag,) = [p for p in command.params if "--json" in p.opts]
        assert flag.callback is json_option_callback, path


def test_exec_tsv_cuts_rows_at_newlines_only() -> None:
    """A lone CR (a progress bar) or another Unicode line break in a node's output stays in
    its row, made visible, as `exec_text` shows it; CRLF ends a row as LF does."""
    import io

    from skeleton_app.app.views.exec import exec_tsv
    from skeleton_app.results import ClusterResult, NodeResult

    out = io.StringIO()
    exec_tsv(ClusterResult([NodeResult(node="n1", exit_code=0,
                                       stdout="10%\r50%\rdone\r\nnext\x1cfs\u2028ls\n\nend",
                                       stderr="")], operation="exec"), out)
    assert out.getvalue().split("\n") == [
        "node\tstream\ttext", "n1\tstdout\t10%\\\\x0d50%\\\\x0ddone",
        "n1\tstdout\tnext\\\\x1cfs\u2028ls", "n1\tstdout\t", "n1\tstdout\tend", ""]
