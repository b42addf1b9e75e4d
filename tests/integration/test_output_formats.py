"""Output for scripts and pipes, end to end: the real `skeleton` in a subprocess whose stdout
is a pipe (`skeleton cluster status | cat`), against real sshd hosts and a real PostgreSQL
registry. Piped tables are plain aligned text, `--format tsv` parses into the right columns
(a node's tabs and newlines stay in one field), `--format json` is `--json`, and `runs
list/show --json` print the journal's records under the documented keys."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from datetime import datetime
from typing import Any

import pytest

from skeleton_app.app.views.runs import NODE_KEYS, RUN_KEYS
from skeleton_app.app.views.status import COLUMNS
from skeleton_app.testing.testbed import Testbed
from tests.support.helpers import REPO, skeleton

BOX = set("┃│━─┏┓┗┛┡┩╇╈┼╭╮╰╯")


def _without(value: Any, keys: set[str]) -> Any:
    if isinstance(value, dict):
        return {k: _without(v, keys) for k, v in value.items() if k not in keys}
    if isinstance(value, list):
        return [_without(v, keys) for v in value]
    return value


def test_piped_status_is_plain_aligned_text(testbed: Testbed) -> None:
    ran = skeleton("cluster", "status", config=testbed.config_path)
    assert ran.returncode == 0, ran.stderr
    assert not BOX & set(ran.stdout), ran.stdout
    lines = ran.stdout.splitlines()
    assert lines[0].split() == COLUMNS
    assert [line.split()[0] for line in lines[1:]] == [h.id for h in testbed.hosts]
    # Aligned: every row's host starts where the header's `host` does.
    at = lines[0].index("host")
    assert all(line[at:].startswith(h.ip) for line, h in zip(lines[1:], testbed.hosts,
                                                             strict=True))


def test_status_tsv_parses_into_the_right_columns(testbed: Testbed) -> None:
    ran = skeleton("cluster", "status", "--format", "tsv", config=testbed.config_path)
    assert ran.returncode == 0, ran.stderr
    header, *rows = [line.split("\t") for line in ran.stdout.splitlines()]
    assert header == COLUMNS
    by_node = {row[0]: dict(zip(header, row, strict=True)) for row in rows}
    assert list(by_node) == [h.id for h in testbed.hosts]
    for host in testbed.hosts:
        row = by_node[host.id]
        assert row["host"] == host.ip
        assert len(row["load"].split()) == 3 and all(float(x) >= 0
                                                    for x in row["load"].split())
        assert "/" in row["memory"] and "/" in row["disk"]


def test_format_json_is_the_json_flag(testbed: Testbed) -> None:
    cmd = ("cluster", "exec", "--node", "node-[01-02]", "hostname; printf 'a\\tb\\n'")
    by_flag = skeleton(*cmd, "--json", config=testbed.config_path)
    by_format = skeleton(*cmd, "--format", "json", config=testbed.config_path)
    assert by_flag.returncode == by_format.returncode == 0, by_flag.stderr + by_format.stderr
    flag, fmt = json.loads(by_flag.stdout), json.loads(by_format.stdout)
    assert _without(fmt, {"duration"}) == _without(flag, {"duration"})
    assert fmt["nodes"]["node-01"]["stdout"] == "node-01\na\tb\n"
    # status: the same shape and verdicts (load and memory move between two probes).
    st_flag = json.loads(skeleton("cluster", "status", "--json",
                                  config=testbed.config_path).stdout)
    st_fmt = json.loads(skeleton("cluster", "status", "--format", "json",
                                 config=testbed.config_path).stdout)
    assert st_fmt.keys() == st_flag.keys() and st_fmt["ok"] == st_flag["ok"]
    assert st_fmt["nodes"].keys() == st_flag["nodes"].keys()


@pytest.mark.postgres  # make_testbed(db=True) starts one
def test_runs_list_and_show_json_against_a_real_registry(
        make_testbed: Callable[..., Testbed]) -> None:
    bed = make_testbed(2, db=True)
    cfg = bed.config_path
    ok = skeleton("cluster", "exec", "printf 'x\\ty\\nlast line\\n'", config=cfg)
    assert ok.returncode == 0, ok.stderr
    bad = skeleton("cluster", "exec", "--node", "node-02", "exit 3", config=cfg)
    assert bad.returncode == 1, bad.stderr

    listed = skeleton("runs", "list", "--json", config=cfg)
    assert listed.returncode == 0, listed.stderr
    runs = json.loads(listed.stdout)
    assert [tuple(r) for r in runs] == [RUN_KEYS, RUN_KEYS]
    newest, oldest = runs  # newest first
    assert (newest["operation"], newest["exit_code"], newest["selection"]) == (
        "exec", 1, ["node-02"])
    assert newest["arguments"]["command"] == "exit 3"
    assert (oldest["node_count"], oldest["ok_count"], oldest["exit_code"]) == (2, 2, 0)
    assert datetime.fromisoformat(oldest["started_at"]).tzinfo is not None
    assert json.loads(skeleton("runs", "list", "--format", "json", config=cfg).stdout) == runs

    shown = skeleton("runs", "show", str(oldest["id"]), "--json", config=cfg)
    assert shown.returncode == 0, shown.stderr
    run = json.loads(shown.stdout)
    assert tuple(run) == (*RUN_KEYS, "nodes")
    assert {k: run[k] for k in RUN_KEYS} == oldest
    assert [n["node"] for n in run["nodes"]] == ["node-01", "node-02"]
    assert all(tuple(n) == NODE_KEYS for n in run["nodes"])
    assert run["nodes"][0]["stdout_tail"] == "x\ty\nlast line\n"
    failed = json.loads(skeleton("runs", "show", str(newest["id"]), "--format", "json",
                                 config=cfg).stdout)
    assert [(n["node"], n["exit_code"], n["error_kind"]) for n in failed["nodes"]] == [
        ("node-02", 3, None)]

    # Piped: plain text; tsv keeps the node's tab and newline inside one escaped field.
    plain = skeleton("runs", "list", config=cfg)
    assert plain.returncode == 0 and not BOX & set(plain.stdout), plain.stdout
    tsv = skeleton("runs", "show", str(oldest["id"]), "--format", "tsv", config=cfg)
    rows = [line.split("\t") for line in tsv.stdout.splitlines() if "\t" in line]
    assert rows[0] == ["node", "exit", "error", "took", "output (tail)"]
    assert all(len(row) == 5 for row in rows)
    assert rows[1][0] == "node-01" and rows[1][4] == "x\\ty\\nlast line"

    # `jobs list | cat` and `nodes list | cat`: no box drawing either.
    for command in (("jobs", "list"), ("nodes", "list")):
        piped = skeleton(*command, config=cfg)
        assert piped.returncode == 0, piped.stderr
        assert not BOX & set(piped.stdout) and piped.stdout.split()[0] in ("job", "node")


def test_output_that_cannot_be_written_is_one_line_and_exit_1(testbed: Testbed) -> None:
    """`> /dev/full` (a full disk): one line naming why, exit 1, no traceback; the nodes'
    work was done and journaled all the same."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKELETON_")}
    for args in (["exec", "-n", "node-0[1-2]", "hostname"], ["status", "-n", "node-01"]):
        with open("/dev/full", "w") as full:
            proc = subprocess.run([sys.executable, "-m", "skeleton_app", "cluster", *args,
                                   "--config", str(testbed.config_path)],
                                  stdout=full, stderr=subprocess.PIPE, text=True, cwd=REPO,
                                  env=env, timeout=120, check=False)
        assert proc.returncode == 1, proc.stderr
        assert proc.stderr == ("skeleton: error: cannot write the output: No space left on"
                               " device\n"), proc.stderr
