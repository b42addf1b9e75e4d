"""`skeleton cluster top` without a registry (the session testbed's config.yaml `nodes:`):
each refresh is one status probe per node over real SSH; `--once` prints one frame, as JSON
or a table, for scripts."""

from __future__ import annotations

import json

from skeleton_app.testing.testbed import Testbed
from tests.support.helpers import skeleton


def test_top_once_probes_every_node(testbed: Testbed) -> None:
    ids = [h.id for h in testbed.hosts]
    proc = skeleton("cluster", "top", "--once", "--json", "--sort", "name",
                    config=testbed.config_path)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["source"] == "probe" and data["problem"] is None and data["sort"] == "name"
    assert [n["id"] for n in data["nodes"]] == sorted(ids)
    for node in data["nodes"]:
        assert node["error"] is None and node["heartbeat_age"] is None
        assert node["latest"]["load1"] is not None and node["latest"]["mem_total"] > 0
        assert len(node["history"]) == 1  # one probe so far

    frame = skeleton("cluster", "top", "--once", config=testbed.config_path,
                     env={"COLUMNS": "80"})
    assert frame.returncode == 0, frame.stderr
    lines = frame.stdout.splitlines()
    assert lines[0].startswith("skeleton top") and "probe" in lines[0]
    assert all(len(line) <= 80 for line in lines)
    assert {line.split()[0] for line in lines[2:]} == set(ids)


def test_top_once_as_tsv_and_an_unreachable_node(testbed: Testbed) -> None:
    from skeleton_app.testing.testbed import start_sshd, stop_sshd

    stop_sshd(testbed, "node-02")
    try:
        proc = skeleton("cluster", "top", "--once", "--format", "tsv", "--sort", "name",
                        "--node", "node-0[1-2]", config=testbed.config_path)
    finally:
        start_sshd(testbed, "node-02")
    assert proc.returncode == 0, proc.stderr
    header, *rows = proc.stdout.splitlines()
    assert header.split("\t")[:3] == ["node", "daemon", "heartbeat"]
    assert [r.split("\t")[0] for r in rows] == ["node-01", "node-02"]
    assert rows[1].split("\t")[3] == "-" and "refused" in rows[1].split("\t")[-1].lower()
