"""`--node @failed` and `skeleton runs retry` on real hosts (issue #15, `ansible --limit
@site.retry`): the previous run's failed and unreachable nodes, from the local state file
without a registry and from the run journal with one. Each command appends a line to a
counter file in the home of every host it runs on, so the tests see exactly where it ran.
"""

from __future__ import annotations

import json
import stat
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from skeleton_app.testing.testbed import Testbed
from tests.support.helpers import bed_nodes, config_variant, skeleton

# A node nothing listens for: connection refused at once on loopback (unreachable, exit 4).
GHOST = {"id": "ghost", "host": "127.0.0.1", "port": 1}


def counting(name: str, *, fail_on: str = "node-02", unless: str | None = None) -> str:
    """A command that counts its runs in ~/NAME and fails (exit 5) on `fail_on` unless
    ~/UNLESS exists there."""
    fails = f'test "$(hostname)" != {fail_on}'
    if unless:
        fails += f" || test -e ~/{unless}"
    return f"echo ran >> ~/{name}; {fails} || exit 5"


def runs_of(testbed: Testbed, name: str) -> dict[str, int]:
    """Host id -> how many times the counting command ran there."""
    return {h.id: len((h.home / name).read_text().splitlines())
            for h in testbed.hosts if (h.home / name).exists()}


@pytest.fixture
def counter(testbed: Testbed) -> Iterator[str]:
    name = f"retry-count-{uuid.uuid4().hex[:8]}"
    yield name
    for host in testbed.hosts:
        (host.home / name).unlink(missing_ok=True)
        (host.home / f"{name}.ok").unlink(missing_ok=True)


def test_failed_from_the_state_file(testbed: Testbed, tmp_path: Path, counter: str) -> None:
    state = tmp_path / "state"
    env = {"XDG_STATE_HOME": str(state), "COLUMNS": "200"}
    cfg = config_variant(testbed, tmp_path / "cfg.yaml",
                         nodes=[*bed_nodes(testbed), GHOST])

    first = skeleton("cluster", "exec", counting(counter), "--node", "node-0[1-3],ghost",
                     config=cfg, env=env)
    assert first.returncode == 4, first.stdout + first.stderr  # ghost unreachable wins
    state_file = state / "skeleton" / "last-run.json"
    assert stat.S_IMODE(state_file.stat().st_mode) == 0o600
    recorded = json.loads(state_file.read_text())
    assert recorded["operation"] == "exec" and recorded["arguments"]["command"]
    assert sorted(recorded["nodes"]) == ["ghost", "node-01", "node-02", "node-03"]

    listed = skeleton("cluster", "exec", "true", "--node", "@failed", "--list-hosts",
                      config=cfg, env=env)
    assert listed.stdout.split() == ["node-02", "ghost"], listed.stderr  # config order
    # combined with other values and with --exclude, as any @ value
    both = skeleton("cluster", "exec", "true", "--node", "@failed,node-04", "--exclude",
                    "ghost", "--list-hosts", config=cfg, env=env)
    assert both.stdout.split() == ["node-02", "node-04"], both.stderr
    others = skeleton("cluster", "exec", "true", "--node", "node-0[1-4]", "--exclude",
                      "@failed", "--list-hosts", config=cfg, env=env)
    assert others.stdout.split() == ["node-01", "node-03", "node-04"], others.stderr

    # the retry runs on exactly the failed node (ghost left out), and now succeeds there
    (testbed.host("node-02").home / f"{counter}.ok").touch()
    again = skeleton("cluster", "exec", counting(counter, unless=f"{counter}.ok"), "--node",
                     "@failed", "--exclude", "ghost", config=cfg, env=env)
    assert again.returncode == 0, again.stdout + again.stderr
    assert runs_of(testbed, counter) == {"node-01": 1, "node-02": 2, "node-03": 1}

    # that run had no failure: @failed is an error, nothing runs
    none = skeleton("cluster", "exec", counting(counter), "--node", "@failed", config=cfg,
                    env=env)
    assert none.returncode == 2, none.stdout + none.stderr
    assert "no failed nodes in the last run (exec at " in none.stderr
    assert none.stderr.rstrip().endswith(", 1 ok)"), none.stderr
    assert runs_of(testbed, counter) == {"node-01": 1, "node-02": 2, "node-03": 1}


def test_failed_never_widens_to_a_node_that_is_gone(testbed: Testbed, tmp_path: Path,
                                                    counter: str) -> None:
    env = {"XDG_STATE_HOME": str(tmp_path / "state")}
    cfg = config_variant(testbed, tmp_path / "cfg.yaml", nodes=[*bed_nodes(testbed), GHOST])
    assert skeleton("cluster", "exec", "true", "--node", "node-01,ghost", config=cfg,
                    env=env).returncode == 4
    # the same user, the testbed's own config (no ghost): named in an error, nothing runs
    gone = skeleton("cluster", "exec", counting(counter), "--node", "@failed",
                    config=testbed.config_path, env=env)
    assert gone.returncode == 2, gone.stdout + gone.stderr
    assert "ghost failed in the last run but is no longer a node" in gone.stderr
    assert runs_of(testbed, counter) == {}
    fresh = skeleton("cluster", "status", "--node", "@failed",
                     config=testbed.config_path, env={"XDG_STATE_HOME": str(tmp_path / "new")})
    assert fresh.returncode == 2 and "no previous run recorded" in fresh.stderr, fresh.stderr


def test_runs_retry_last_without_a_registry(testbed: Testbed, tmp_path: Path,
                                            counter: str) -> None:
    env = {"XDG_STATE_HOME": str(tmp_path / "state"), "COLUMNS": "200"}
    cfg = testbed.config_path
    first = skeleton("cluster", "exec", counting(counter, unless=f"{counter}.ok"), "--node",
                     "node-0[1-3]", config=cfg, env=env)
    assert first.returncode == 1, first.stdout + first.stderr
    (testbed.host("node-02").home / f"{counter}.ok").touch()
    retried = skeleton("runs", "retry", "last", config=cfg, env=env)
    assert retried.returncode == 0, retried.stdout + retried.stderr
    assert "retrying the last run (exec at " in retried.stderr and "on node-02" in retried.stderr
    assert runs_of(testbed, counter) == {"node-01": 1, "node-02": 2, "node-03": 1}
    # the retry was recorded as a run of its own, which failed nowhere
    nothing = skeleton("runs", "retry", "last", config=cfg, env=env)
    assert nothing.returncode == 2 and "no failed nodes in the last run" in nothing.stderr
    assert skeleton("runs", "retry", "7", config=cfg, env=env).returncode == 2

    logs = skeleton("cluster", "logs", "--node", "node-01", "--out", str(tmp_path / "logs"),
                    config=cfg, env=env)
    assert logs.returncode in (0, 1), logs.stderr
    refused = skeleton("runs", "retry", "last", config=cfg, env=env)
    assert refused.returncode == 2 and "logs cannot be retried" in refused.stderr, refused


@pytest.mark.postgres  # make_testbed(db=True) starts one
def test_failed_and_retry_from_the_run_journal(make_testbed: Callable[..., Testbed],
                                               tmp_path: Path) -> None:
    bed = make_testbed(3, db=True)
    cfg = bed.config_path
    # the registry is the source: an empty state dir proves the file is not read
    env = {"XDG_STATE_HOME": str(tmp_path / "state"), "COLUMNS": "200"}
    name = f"retry-count-{uuid.uuid4().hex[:8]}"

    first = skeleton("cluster", "exec", counting(name, unless=f"{name}.ok"), config=cfg,
                     env=env)
    assert first.returncode == 1, first.stdout + first.stderr
    (tmp_path / "state").joinpath("skeleton", "last-run.json").unlink()
    listed = skeleton("cluster", "status", "--node", "@failed", "--list-hosts", config=cfg,
                      env=env)
    assert listed.stdout.split() == ["node-02"], listed.stdout + listed.stderr

    status = skeleton("cluster", "status", config=cfg, env=env)  # run 2: every node ok
    assert status.returncode == 0, status.stdout + status.stderr
    none = skeleton("cluster", "exec", "true", "--node", "@failed", config=cfg, env=env)
    assert none.returncode == 2, none.stdout + none.stderr
    assert "no failed nodes in the last run (status at " in none.stderr
    assert "3 ok)" in none.stderr

    (bed.host("node-02").home / f"{name}.ok").touch()
    retried = skeleton("runs", "retry", "1", config=cfg, env=env)  # by id, not the last
    assert retried.returncode == 0, retried.stdout + retried.stderr
    assert "retrying run 1 (exec at " in retried.stderr
    assert runs_of(bed, name) == {"node-01": 1, "node-02": 2, "node-03": 1}
    show = skeleton("runs", "show", "3", config=cfg, env=env)
    assert show.stdout.startswith("run 3: exec by "), show.stdout + show.stderr
    assert '"command": "echo ran' in show.stdout
    rows = [ln.split()[0] for ln in show.stdout.splitlines() if ln.startswith("node-")]
    assert rows == ["node-02"], show.stdout  # journaled as a new run, on node-02 only
    assert skeleton("runs", "retry", "2", config=cfg, env=env).returncode == 2  # no failure
    unknown = skeleton("runs", "retry", "99", config=cfg, env=env)
    assert unknown.returncode == 2 and "unknown run 99" in unknown.stderr
