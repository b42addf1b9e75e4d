"""`fab` tasks journal their runs in the registry as the CLI and `inv` do (the one application
layer, `app.commands`): a `fab` run shows up in `skeleton runs list` / `runs show`."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from skeleton_app.testing.testbed import Testbed
from tests.support.frontends import fab, inv
from tests.support.helpers import skeleton


@pytest.mark.postgres  # make_testbed(db=True) starts one
def test_fab_and_inv_runs_are_journaled(make_testbed: Callable[..., Testbed]) -> None:
    bed = make_testbed(2, db=True)
    cfg = bed.config_path
    ran = fab("-H", "node-02", "run", "--command", "echo fab-journal", config=cfg)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    failed = fab("-H", "node-01", "run", "--command", "exit 3", config=cfg)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    status = fab("-H", "node-01", "status", config=cfg)
    assert status.returncode == 0, status.stdout + status.stderr
    assert "not recorded" not in ran.stderr + failed.stderr + status.stderr
    by_inv = inv("exec", "--command", "true", "--node", "node-01", config=cfg)
    assert by_inv.returncode == 0, by_inv.stdout + by_inv.stderr

    runs = skeleton("runs", "list", config=cfg, env={"COLUMNS": "200"})
    assert runs.returncode == 0, runs.stderr
    lines = [ln for ln in runs.stdout.splitlines() if "node-0" in ln]
    assert len(lines) == 4, runs.stdout  # the three fab runs and the inv run, nothing else
    assert sum("exec" in ln for ln in lines) == 3 and sum("status" in ln for ln in lines) == 1
    shows = [skeleton("runs", "show", str(run_id), config=cfg, env={"COLUMNS": "200"})
             for run_id in range(1, 5)]
    assert all(s.returncode == 0 for s in shows), [s.stderr for s in shows]
    assert shows[0].stdout.startswith("run 1: exec by ") and ", exit 0" in shows[0].stdout
    assert '"command": "echo fab-journal"' in shows[0].stdout and "node-02" in shows[0].stdout
    assert shows[1].stdout.startswith("run 2: exec by ") and ", exit 1" in shows[1].stdout
    assert '"command": "exit 3"' in shows[1].stdout
    assert shows[2].stdout.startswith("run 3: status by ")
    assert shows[3].stdout.startswith("run 4: exec by ")  # inv, through the same helper
