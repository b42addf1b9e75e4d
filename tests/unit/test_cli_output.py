"""Output for scripts and pipes: `--list-hosts` prints the resolved selection and runs
nothing; tables print as plain aligned text (no box drawing) when stdout is not a terminal,
and as `--format plain|tsv|table` when asked."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from click.testing import CliRunner

from skeleton_app.app.cli import cli, main
from skeleton_app.app.views import common as render

CONFIG = """\
nodes:
  - {id: linux-01, host: 127.0.0.1, port: 1, roles: [stt]}
  - {id: linux-02, host: 127.0.0.1, port: 1, roles: [tts]}
  - {id: linux-03, host: 127.0.0.1, port: 1, roles: [stt]}
"""


@pytest.fixture(autouse=True)
def _reset_format() -> None:
    render.set_format(None)


@pytest.fixture
def config(tmp_path: Path) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG)
    return str(path)


@pytest.mark.parametrize("command", [
    ["cluster", "exec", "--list-hosts", "--role", "stt", "touch /tmp/never"],
    ["cluster", "exec", "--list-hosts", "--role", "stt"],  # no command needed to list
    ["cluster", "status", "--list-hosts", "--role", "stt"],
    ["cluster", "deploy", "--list-hosts", "--role", "stt"],
    ["cluster", "daemon", "restart", "--list-hosts", "--role", "stt"],
])
def test_list_hosts_prints_the_selection_and_connects_to_nothing(
        config: str, command: list[str]) -> None:
    # Port 1 on loopback refuses every connection: had anything run, the exit code would
    # be 4 (unreachable).
    result = CliRunner().invoke(cli, ["-c", config, *command])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == ["linux-01", "linux-03"]


def test_sync_models_lists_the_nodes_it_writes_to_not_its_source(config: str) -> None:
    for extra, listed in (([], ["linux-02", "linux-03"]),
                          (["--target-node", "linux-03"], ["linux-03"])):
        result = CliRunner().invoke(cli, ["-c", config, "cluster", "sync-models", "--list-hosts",
                                          "--source-node", "linux-01", *extra])
        assert result.exit_code == 0, result.output
        assert result.output.splitlines() == listed


def test_list_hosts_with_a_bad_selection_is_still_a_usage_error(
        config: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["-c", config, "cluster", "exec", "--list-hosts", "--node", "linux-09", "true"])
    assert exit_.value.code == 2
    assert "unknown node linux-09" in capsys.readouterr().err


def test_exec_without_a_command_is_one_line(config: str,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["-c", config, "cluster", "exec", "--role", "stt"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        "skeleton: error: no command given: skeleton cluster exec [OPTIONS] -- COMMAND..."]


ROWS = [["linux-01", "up", "a\tb"], ["linux-002", "down", "x\ny"]]


def test_a_table_on_a_pipe_is_plain_aligned_text() -> None:
    out = io.StringIO()
    render.table("Nodes", ["node", "state", "note"], ROWS, file=out)
    lines = out.getvalue().splitlines()
    assert lines == ["Nodes",
                     "node       state  note",
                     "linux-01   up     a\tb",
                     "linux-002  down   x y"]
    assert not any(ch in out.getvalue() for ch in "┃│━─┏")


def test_tsv_escapes_tabs_and_newlines_inside_values() -> None:
    render.set_format("tsv")
    out = io.StringIO()
    render.table(None, ["node", "state", "note"], ROWS, file=out)
    assert out.getvalue().splitlines() == ["node\tstate\tnote", "linux-01\tup\ta\\tb",
                                           "linux-002\tdown\tx\\ny"]


def test_format_table_draws_boxes_even_on_a_pipe() -> None:
    render.set_format("table")
    out = io.StringIO()
    render.table(None, ["node"], [["linux-01"]], file=out)
    assert "linux-01" in out.getvalue() and "━" in out.getvalue()


def test_plain_text_never_replays_a_nodes_escape_sequences() -> None:
    out = io.StringIO()
    render.table(None, ["node"], [["\x1b[2Jevil"]], file=out)
    assert "\x1b" not in out.getvalue() and "\\x1b[2Jevil" in out.getvalue()


def test_the_deploy_table_names_each_nodes_release() -> None:
    """deploy.strategy releases: a column with the release each node switched to (what
    `cluster rollback --to` takes); none for in-place deploys."""
    from skeleton_app.app.views.deploy import deploy_text
    from skeleton_app.ops.deploy.outcome import DeployOutcome
    from skeleton_app.results import ClusterResult, NodeResult

    def text(release: str | None) -> list[str]:
        outcome = DeployOutcome(dest="/opt/app", version="abc123", release=release)
        result = ClusterResult([NodeResult(node="linux-01", exit_code=0, outcome=outcome)],
                               operation="deploy")
        out = io.StringIO()
        render.set_format("plain")
        deploy_text(result, out)
        return out.getvalue().splitlines()

    with_release = text("20261207T010000-0123abcd")
    assert with_release[0].split() == ["node", "result", "files", "changed", "bytes", "sent",
                                       "time", "version", "release"]
    assert with_release[1].split()[-1] == "20261207T010000-0123abcd"
    assert text(None)[0].split()[-1] == "version"


def test_exec_tsv_is_a_row_per_line_exit_and_error() -> None:
    """`cluster exec --format tsv`: pdsh's `node: line`, typed and escaped for parsers."""
    from skeleton_app.app.views.exec import exec_tsv
    from skeleton_app.errors import NodeErrorKind
    from skeleton_app.results import ClusterResult, NodeResult, failure

    result = ClusterResult([
        NodeResult(node="linux-01", exit_code=0, stdout="a\tb\nlast\n"),
        NodeResult(node="linux-02", exit_code=3, stdout="", stderr="oops\n"),
        failure("linux-03", NodeErrorKind.UNREACHABLE, "timed out after 10s")])
    out = io.StringIO()
    exec_tsv(result, out)
    assert out.getvalue().splitlines() == [
        "node\tstream\ttext", "linux-01\tstdout\ta\\tb", "linux-01\tstdout\tlast",
        "linux-02\tstderr\toops", "linux-02\texit\t3",
        "linux-03\tunreachable\ttimed out after 10s"]
