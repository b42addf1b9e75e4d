"""The typed outcome of `cluster logs` gives the JSON `--json` always printed, and the view
reads its fields: no network, no root."""

from __future__ import annotations

import json
from io import StringIO

from skeleton_app.app.views.logs import logs_text, summary_rows
from skeleton_app.errors import NodeErrorKind
from skeleton_app.ops.logs import LogSource, LogsOutcome
from skeleton_app.results import ClusterResult, NodeResult, failure


def _result() -> ClusterResult[LogsOutcome]:
    sources = (LogSource("daemon", "logs/skeleton-daemon.log", "ok", 0, 120, 3),
               LogSource("file", "logs/app.log", "missing"))
    return ClusterResult([
        NodeResult("n1", exit_code=0, outcome=LogsOutcome("out/n1.log", sources)),
        NodeResult("n2", exit_code=1, stderr="logs.sh exited 1: boom\n",
                   outcome=LogsOutcome("out/n2.log")),
        failure("n3", NodeErrorKind.UNREACHABLE, "no route to host"),
    ], operation="logs")


def test_logs_outcome_to_json() -> None:
    data = json.loads(_result().to_json())
    assert data["nodes"]["n1"]["data"] == {
        "file": "out/n1.log", "lines": 3,
        "sources": [{"kind": "daemon", "name": "logs/skeleton-daemon.log", "status": "ok",
                     "lines": 3, "bytes": 120},
                    {"kind": "file", "name": "logs/app.log", "status": "missing",
                     "lines": 0, "bytes": 0}]}
    assert data["nodes"]["n2"]["data"] == {"file": "out/n2.log", "sources": [], "lines": 0}
    assert data["nodes"]["n3"]["data"] == {} and data["exit_code"] == 4


def test_the_view_names_what_was_not_read_whole() -> None:
    rows = {row[0]: row[1:] for row in summary_rows(_result())}
    assert rows["n1"] == ["3", "2", "ok; logs/app.log: missing"]
    assert rows["n2"] == ["0", "0", "logs.sh exited 1: boom"]
    assert rows["n3"] == ["0", "0", "unreachable: no route to host"]
    out = StringIO()
    logs_text(_result(), out, out_dir="out")
    assert out.getvalue().endswith("written to out/ (merged: out/merged.log)\n")
