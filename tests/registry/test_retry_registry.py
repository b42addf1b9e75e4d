"""The registry's side of `@failed`, `runs retry` and completion, on a real PostgreSQL:
`last_run` is the newest finished run of this user@host, and `--node <TAB>` offers the
registry's nodes when it answers in time."""

from __future__ import annotations

from pathlib import Path

import yaml

from skeleton_app.app.cli.completion import WAIT_ENV
from skeleton_app.nodes import Node
from skeleton_app.registry.postgres import PostgresRegistry
from skeleton_app.registry.runs import default_who
from skeleton_app.results import ClusterResult, NodeResult
from tests.unit.test_completion import env_for, tab


def result(**exit_codes: int) -> ClusterResult[None]:
    return ClusterResult([NodeResult(node=n, exit_code=c) for n, c in exit_codes.items()])


def test_last_run_is_this_users_newest_finished_run(registry: PostgresRegistry) -> None:
    assert registry.last_run() is None
    mine = registry.record_run("exec", {"command": "true"}, ["a", "b"])
    registry.record_node_results(mine, result(a=0, b=2))
    theirs = registry.record_run("status", {}, ["a"], who="someone@elsewhere")
    registry.record_node_results(theirs, result(a=1))
    registry.record_run("deploy", {}, ["a"])  # still running (never finished): not it
    last = registry.last_run()
    assert last is not None and last.id == mine and last.who == default_who()
    assert {n.node_id: n.exit_code for n in last.nodes} == {"a": 0, "b": 2}
    other = registry.last_run(who="someone@elsewhere")
    assert other is not None and other.id == theirs


def test_completion_offers_the_registrys_nodes(registry: PostgresRegistry, db_dsn: str,
                                               tmp_path: Path) -> None:
    registry.upsert_node(Node(id="db-node-7", host="192.0.2.77", roles=("llm",)))
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump({"registry": {"dsn": db_dsn},
                                   "nodes": [{"id": "node-01", "host": "192.0.2.1"}]}))
    # The registry path itself, not its speed: a loaded CI machine may take over the default
    # 0.3 s to import psycopg and connect (a registry that never answers: test_completion).
    offered = tab("skeleton cluster exec --node ", {**env_for(cfg), WAIT_ENV: "5"})
    assert offered == ["node-01", "db-node-7", "@failed", "@llm"], offered
