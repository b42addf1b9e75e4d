"""The registry against a real PostgreSQL (tests/db_fixtures.py): schema, nodes, runs, faults.

Every fault from issue 3's "Bad input and faults" list that concerns the database itself is
here; the daemon's (restart while running, heartbeats resuming) are in test_agent.py.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from skeleton_app import registry as reg_mod
from skeleton_app.config import load_config
from skeleton_app.errors import ConfigError, NodeErrorKind, RegistryError, UsageError
from skeleton_app.nodes import Node
from skeleton_app.registry import (
    FieldError,
    Migration,
    NodeSpec,
    PostgresRegistry,
    StaticRegistry,
    export_nodes,
    get_nodes_from_db,
    get_nodes_from_db_sync,
    import_nodes,
    init_schema,
    open_registry,
    parse_node_entries,
    record_result,
    register_node_in_db,
    register_node_in_db_sync,
)
from skeleton_app.registry import schema as schema_mod
from skeleton_app.results import ClusterResult, NodeResult
from skeleton_app.testing import localdb
from skeleton_app.testing.localdb import LocalPostgres
from tests.support.db_fixtures import TEST_DEFAULTS
from tests.support.helpers import skeleton

SQLISH = "x'); DROP TABLE nodes;--"


def sql(dsn: str, query: str, params: Any = None) -> list[tuple[Any, ...]]:
    """Run raw SQL as a misbehaving writer would (no validation), return the rows."""
    with psycopg.connect(dsn, connect_timeout=5, autocommit=True) as conn:
        cur = conn.execute(query.encode(), params)
        return cur.fetchall() if cur.description else []


def tables(dsn: str) -> set[str]:
    rows = sql(dsn, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    return {r[0] for r in rows}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def listening(port: int) -> set[str]:
    """Addresses with a TCP socket in LISTEN state on `port` (from /proc/net/tcp{,6})."""
    found: set[str] = set()
    for name, width in (("tcp", 8), ("tcp6", 32)):
        for line in Path(f"/proc/net/{name}").read_text().splitlines()[1:]:
            fields = line.split()
            addr, _, hexport = fields[1].partition(":")
            if fields[3] != "0A" or int(hexport, 16) != port:  # 0A: LISTEN
                continue
            raw = bytes.fromhex(addr)
            if width == 8:
                found.add(socket.inet_ntop(socket.AF_INET, raw[::-1]))
            else:
                words = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
                found.add(socket.inet_ntop(socket.AF_INET6, words))
    return found


# ----------------------------------------------------------------------------- localdb


def test_localdb_listens_only_where_asked_and_requires_a_password(postgres: LocalPostgres):
    assert listening(postgres.port) == {"127.0.0.1"}
    hba = (postgres.base_dir / "data" / "pg_hba.conf").read_text()
    assert "trust" not in hba
    with psycopg.connect(postgres.dsn, connect_timeout=5) as conn:
        assert conn.execute("SELECT current_user, current_database()").fetchone() == (
            "skeleton", "skeleton")
    no_password = f"postgresql://skeleton@127.0.0.1:{postgres.port}/skeleton"
    with pytest.raises(psycopg.OperationalError, match="password"):
        psycopg.connect(no_password, connect_timeout=5)
    # The server runs as `postgres`, not root, and the pid is the host-side postmaster.
    data = postgres.base_dir / "data"
    assert data.stat().st_uid == localdb.pwd.getpwnam("postgres").pw_uid
    cmdline = Path(f"/proc/{postgres.pid}/cmdline").read_bytes().split(b"\0")
    assert str(data).encode() in cmdline


@pytest.mark.slow  # restarts PostgreSQL or real daemons: 4-7 s
def test_localdb_stop_is_safe_twice_after_a_crash_and_restarts_with_its_data(make_postgres):
    pg = make_postgres()
    init_schema(pg.dsn)
    pg.stop()
    pg.stop()  # twice: nothing to do
    assert localdb.load(pg.base_dir) is None
    again = localdb.start_postgres(pg.base_dir, port=pg.port)
    assert again.port == pg.port and again.password == pg.password
    assert "nodes" in tables(again.dsn)  # same data dir, same database
    # A crash: the postmaster killed outright leaves a stale postmaster.pid behind.
    os.kill(again.pid, signal.SIGKILL)
    localdb.stop_postgres(pg.base_dir)
    third = localdb.start_postgres(pg.base_dir, port=pg.port)
    assert third.pid != again.pid and "nodes" in tables(third.dsn)
    third.stop()
    localdb.stop_postgres(pg.base_dir)


def test_localdb_start_returns_the_running_server_and_refuses_other_addresses(
        postgres: LocalPostgres):
    assert localdb.start_postgres(postgres.base_dir) == postgres
    with pytest.raises(localdb.TestbedError, match="already running"):
        localdb.start_postgres(postgres.base_dir, listen=("127.0.0.1", "::1"))
    with pytest.raises(ValueError, match="does not listen"):
        postgres.dsn_for("10.1.2.3")


# ------------------------------------------------------------------------------ schema


def test_init_schema_creates_the_tables_and_twice_changes_nothing(empty_dsn: str):
    first = init_schema(empty_dsn)
    # Every migration shipped, in order (new ones are added each round: no fixed count).
    shipped = tuple(m.name for m in reg_mod.migrations())
    assert shipped[:4] == ("0001_initial.sql", "0002_node_trust.sql", "0003_jobs.sql",
                           "0004_metrics_history.sql")
    last = len(shipped)
    assert (first.before, first.after, first.applied) == (0, last, shipped)
    assert {"nodes", "runs", "run_nodes", "schema_version"} <= tables(empty_dsn)
    columns = {r[0] for r in sql(empty_dsn, "SELECT column_name FROM information_schema.columns"
                                            " WHERE table_name = 'nodes'")}
    assert {"id", "name", "host", "ssh_port", "ssh_user", "api_port", "roles", "labels",
            "app_dir", "enabled", "registered_at", "last_seen", "daemon_state", "code_version",
            "metrics"} <= columns
    second = init_schema(empty_dsn)
    assert (second.before, second.after, second.applied) == (last, last, ())
    assert sql(empty_dsn, "SELECT version, name FROM schema_version ORDER BY version") == [
        (k, name) for k, name in enumerate(shipped, 1)]


def test_init_schema_concurrently_from_many_shells(empty_dsn: str):
    # Real separate processes, as two shells would be, plus threads for a tighter race.
    code = "import sys; from skeleton_app.registry import init_schema; init_schema(sys.argv[1])"
    procs = [subprocess.Popen([sys.executable, "-c", code, empty_dsn],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(3)]
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []

    def worker() -> None:
        barrier.wait()
        try:
            init_schema(empty_dsn)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for p in procs:
        _, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
    assert errors == []
    assert sql(empty_dsn, "SELECT version FROM schema_version ORDER BY version") == [
        (k,) for k in range(1, len(reg_mod.migrations()) + 1)]


def test_schema_missing_tells_to_run_db_init(empty_dsn: str):
    reg = PostgresRegistry(empty_dsn, defaults=TEST_DEFAULTS)
    with pytest.raises(RegistryError, match=r"run `skeleton db init`") as info:
        reg.list_nodes()
    assert f"127.0.0.1:{empty_dsn.rsplit(':', 1)[1].split('/')[0]}" in str(info.value)
    # The seed API on a bare connection says the same, in our error, not psycopg's.
    with psycopg.connect(empty_dsn, connect_timeout=5) as conn, \
            pytest.raises(RegistryError, match="skeleton db init"):
        get_nodes_from_db_sync(conn)


def test_schema_newer_than_the_code_is_refused_and_left_alone(db_dsn: str):
    sql(db_dsn, "INSERT INTO schema_version (version, name) VALUES (7, '0007_future.sql')")
    reg = PostgresRegistry(db_dsn, defaults=TEST_DEFAULTS)
    with pytest.raises(RegistryError, match=r"version 7, newer than this skeleton_app"):
        reg.list_nodes()
    with pytest.raises(RegistryError, match="newer"):
        init_schema(db_dsn)
    assert sql(db_dsn, "SELECT max(version) FROM schema_version") == [(7,)]


def test_schema_older_asks_for_upgrade_and_db_init_applies_the_new_migration(
        db_dsn: str, monkeypatch: pytest.MonkeyPatch):
    shipped = reg_mod.migrations()
    n = len(shipped)
    extra = Migration(n + 1, f"{n + 1:04d}_test.sql",
                      "ALTER TABLE nodes ADD COLUMN test_extra integer;")
    monkeypatch.setattr(schema_mod, "migrations", lambda: (*shipped, extra))
    reg = PostgresRegistry(db_dsn, defaults=TEST_DEFAULTS)
    with pytest.raises(RegistryError,
                       match=rf"version {n}, this skeleton_app needs version {n + 1}"):
        reg.list_nodes()
    status = init_schema(db_dsn)
    assert (status.before, status.after, status.applied) == (n, n + 1, (extra.name,))
    assert reg.list_nodes() == ((), ())


def test_migrations_are_packaged_and_numbered():
    found = reg_mod.migrations()
    assert [m.version for m in found] == list(range(1, len(found) + 1))
    assert all("CREATE" in m.sql or "ALTER" in m.sql for m in found)


# ---------------------------------------------------------------------- connection faults


def test_unreachable_database_fails_at_once_naming_host_and_port():
    port = free_port()  # nothing listens there: connection refused
    reg = PostgresRegistry(f"postgresql://skeleton:pw@127.0.0.1:{port}/skeleton",
                           defaults=TEST_DEFAULTS, connect_timeout=3)
    started = time.monotonic()
    with pytest.raises(RegistryError) as info:
        reg.list_nodes()
    assert time.monotonic() - started < 3
    message = str(info.value)
    assert f"127.0.0.1:{port}" in message and "refused" in message.lower()
    assert "\n" not in message and "pw" not in message.replace("skeleton", "")
    assert not isinstance(info.value.__cause__, RegistryError)  # chained from psycopg's


def test_silent_server_times_out_within_the_connect_timeout():
    # A socket that accepts TCP (the kernel completes the handshake) but never speaks: without
    # a connect timeout psycopg would wait ~130 s here.
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        port = server.getsockname()[1]
        reg = PostgresRegistry(f"postgresql://skeleton:pw@127.0.0.1:{port}/skeleton",
                               defaults=TEST_DEFAULTS, connect_timeout=2)
        started = time.monotonic()
        with pytest.raises(RegistryError) as info:
            reg.list_nodes()
        elapsed = time.monotonic() - started
    assert elapsed < 6, elapsed
    assert f"127.0.0.1:{port}" in str(info.value)
    assert "timeout" in str(info.value).lower()


def test_wrong_password_names_host_port_and_reason(postgres: LocalPostgres):
    bad = postgres.dsn.replace(postgres.password, "not-the-password")
    reg = PostgresRegistry(bad, defaults=TEST_DEFAULTS, connect_timeout=3)
    with pytest.raises(RegistryError) as info:
        reg.list_nodes()
    message = str(info.value)
    assert f"127.0.0.1:{postgres.port}" in message
    assert "password authentication failed" in message
    assert "not-the-password" not in message


@pytest.mark.parametrize("dsn", [
    "host=127.0.0.1 port",  # keyword without a value
    "postgresql://u:p@127.0.0.1:notaport/db",
    "postgresql://u:p@127.0.0.1:99999/db",
    "   ",
    "host='unterminated",
])
def test_malformed_dsn_is_a_registry_error_before_any_connection(dsn: str):
    with pytest.raises(RegistryError, match="malformed registry DSN"):
        PostgresRegistry(dsn, defaults=TEST_DEFAULTS)
    with pytest.raises(RegistryError, match="malformed registry DSN"):
        init_schema(dsn)


def test_open_registry_reads_the_dsn_from_the_environment(tmp_path: Path, db_dsn: str):
    config = tmp_path / "config.yaml"
    config.write_text("nodes:\n  - {id: static-01, host: 10.9.9.9}\n")
    settings = load_config(config, env={})
    static = open_registry(settings)
    assert isinstance(static, StaticRegistry)
    assert [n.id for n in static.list_nodes()[0]] == ["static-01"]
    assert static.record_run("exec", {}, ["static-01"]) is None
    with pytest.raises(ConfigError, match="needs a database"):
        static.upsert_node(Node(id="x", host="10.0.0.1"))

    settings = load_config(config, env={"SKELETON_DATABASE_URL": db_dsn})
    with open_registry(settings) as pg:
        assert isinstance(pg, PostgresRegistry)
        assert pg.list_nodes() == ((), ())  # the database, not the static list


def test_database_restart_under_an_open_registry_reconnects(make_postgres):
    pg = make_postgres()
    init_schema(pg.dsn)
    with PostgresRegistry(pg.dsn, defaults=TEST_DEFAULTS, connect_timeout=2) as reg:
        reg.upsert_node(Node(id="n1", host="10.0.0.1"))
        pg.stop()
        with pytest.raises(RegistryError, match=f"127.0.0.1:{pg.port}"):
            reg.list_nodes()
        localdb.start_postgres(pg.base_dir, port=pg.port)
        assert [n.id for n in reg.list_nodes()[0]] == ["n1"]


# ----------------------------------------------------------------------- hostile rows

HOSTILE = [
    ("id", {"id": "../../etc/cron.d/x"}),
    ("id", {"id": "a;reboot"}),
    ("id", {"id": "line\nbreak"}),
    ("id", {"id": "x" * 10240}),
    ("id", {"id": ""}),
    ("host", {"host": "-oProxyCommand=touch /tmp/x"}),
    ("host", {"host": "999.1.1.1"}),
    ("host", {"host": "a b"}),
    ("port", {"ssh_port": 0}),
    ("port", {"ssh_port": 70000}),
    ("api_port", {"api_port": 70000}),
    ("roles", {"roles": ["tts", "$(id)"]}),
    ("user", {"ssh_user": "root -oProxyCommand=x"}),
    ("app_dir", {"app_dir": "/"}),
    ("app_dir", {"app_dir": "/srv/../etc"}),
    ("app_dir", {"app_dir": "relative/dir"}),
    ("name", {"name": "two\nlines"}),
    ("labels", {"labels": '["not", "an", "object"]'}),
    ("metrics", {"metrics": '"a string"'}),
    ("daemon_state", {"daemon_state": "pwned"}),
    ("code_version", {"code_version": "\x1b[31mred"}),
]


def insert_row(dsn: str, **fields: Any) -> None:
    # approved: a row that would be a target (a new row lands pending, and pending rows are
    # not even read as targets); its content is what must be refused.
    row = {"id": "bad", "host": "10.0.0.9", "approved": True, **fields}
    casts = {"roles": "::text[]", "labels": "::jsonb", "metrics": "::jsonb"}
    cols = ", ".join(row)
    values = ", ".join(f"%({k})s{casts.get(k, '')}" for k in row)
    sql(dsn, f"INSERT INTO nodes ({cols}) VALUES ({values})", row)


@pytest.mark.parametrize(("field", "fields"), HOSTILE,
                         ids=[f"{f}-{i}" for i, (f, _) in enumerate(HOSTILE)])
def test_hostile_row_is_skipped_on_read_with_a_warning(
        registry: PostgresRegistry, db_dsn: str, field: str, fields: dict[str, Any]):
    registry.upsert_node(Node(id="good-01", host="10.0.0.1", roles=("tts",)))
    insert_row(db_dsn, **fields)
    nodes, warnings = registry.list_nodes()
    assert [n.id for n in nodes] == ["good-01"]
    assert len(warnings) == 1
    warning = warnings[0]
    assert "skipped node row" in warning and f"{field}:" in warning
    assert "\n" not in warning and len(warning) < 400  # a 10 KB id is not echoed whole
    row_id = fields.get("id", "bad")
    assert repr(row_id)[:20] in warning  # names the row
    # The seed API and the status join skip it as well.
    with psycopg.connect(db_dsn, connect_timeout=5) as conn:
        assert [n.id for n in get_nodes_from_db_sync(conn)] == ["good-01"]
    assert set(registry.heartbeats(["good-01", row_id])) == {"good-01"}
    # ...and an operator can still remove the bad row by its (invalid) id.
    assert registry.remove_node(row_id) is True
    assert registry.list_nodes()[1] == ()


@pytest.mark.parametrize("info", [
    {"id": "../../etc/cron.d/x", "host": "10.0.0.1"},
    {"id": "a;reboot", "host": "10.0.0.1"},
    {"id": "ok", "host": "-oProxyCommand=touch /tmp/x"},
    {"id": "ok", "host": "999.1.1.1"},
    {"id": "ok", "host": "10.0.0.1", "port": 0},
    {"id": "ok", "host": "10.0.0.1", "port": 70000},
    {"id": "ok", "host": "10.0.0.1", "roles": ["$(id)"]},
    {"id": "ok", "host": "10.0.0.1", "app_dir": "/"},
    {"id": "ok", "host": "10.0.0.1", "unknown_key": 1},
    {"host": "10.0.0.1"},
])
def test_hostile_node_is_refused_on_write(registry: PostgresRegistry, db_dsn: str,
                                          info: dict[str, Any]):
    with pytest.raises(FieldError):
        NodeSpec.from_dict(info)
    with psycopg.connect(db_dsn, connect_timeout=5) as conn, pytest.raises(UsageError):
        register_node_in_db_sync(conn, info)
    assert sql(db_dsn, "SELECT count(*) FROM nodes") == [(0,)]


def test_sql_looking_values_are_stored_and_read_back_literally(registry: PostgresRegistry,
                                                               db_dsn: str):
    registry.upsert_node(NodeSpec(id="n1", host="10.0.0.1", name=SQLISH,
                                  labels={"note": SQLISH, SQLISH: "v"}))
    entries, warnings = registry.list_entries()
    assert warnings == ()
    assert entries[0].spec.name == SQLISH
    assert dict(entries[0].spec.labels or {}) == {"note": SQLISH, SQLISH: "v"}
    run_id = registry.record_run(SQLISH, {"command": SQLISH}, ["n1"], who=SQLISH)
    registry.record_node_results(run_id, ClusterResult(
        [NodeResult("n1", 0, stdout=SQLISH, stderr=SQLISH)], operation=SQLISH))
    run = registry.get_run(run_id)
    assert run is not None
    assert (run.operation, run.who, run.arguments) == (SQLISH, SQLISH, {"command": SQLISH})
    assert run.nodes[0].stdout_tail == SQLISH
    # As an id it is refused on write, and a parameter (matching nothing) on remove.
    with pytest.raises(FieldError, match="id"):
        NodeSpec.from_dict({"id": SQLISH, "host": "10.0.0.2"})
    assert registry.remove_node(SQLISH) is False
    assert "nodes" in tables(db_dsn)
    assert [n.id for n in registry.list_nodes()[0]] == ["n1"]


# ------------------------------------------------------------------- registration


def test_two_registrations_of_the_same_node_at_once_leave_one_row(db_dsn: str):
    count = 8
    barrier = threading.Barrier(count)
    errors: list[BaseException] = []

    def register(i: int) -> None:
        with PostgresRegistry(db_dsn, defaults=TEST_DEFAULTS) as reg:
            reg.ping()  # connect first, so the upserts themselves race
            barrier.wait()
            try:
                reg.upsert_node(Node(id="same", host=f"10.0.0.{i + 1}"))
            except BaseException as exc:
                errors.append(exc)

    threads = [threading.Thread(target=register, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    rows = sql(db_dsn, "SELECT id, host FROM nodes")
    assert len(rows) == 1 and rows[0][0] == "same"
    assert rows[0][1] in {f"10.0.0.{i + 1}" for i in range(count)}


def test_reregistering_with_a_new_host_updates_it_and_keeps_operator_state(
        registry: PostgresRegistry, db_dsn: str):
    assert registry.upsert_node(Node(id="n1", host="10.0.0.1", roles=("tts",))) is True
    registered_at = sql(db_dsn, "SELECT registered_at FROM nodes")[0][0]
    assert registry.disable("n1") is True
    assert registry.upsert_node(Node(id="n1", host="10.0.0.2", roles=("stt",))) is False
    entries, _ = registry.list_entries()
    assert len(entries) == 1
    e = entries[0]
    assert (e.node.host, e.node.roles, e.enabled) == ("10.0.0.2", ("stt",), False)
    assert e.registered_at == registered_at


def test_enable_disable_remove(registry: PostgresRegistry):
    for i in (1, 2, 3):
        registry.upsert_node(NodeSpec(id=f"n{i}", host=f"10.0.0.{i}"))
    assert registry.disable("n2") is True
    assert [n.id for n in registry.list_nodes()[0]] == ["n1", "n3"]
    assert [n.id for n in registry.list_nodes(enabled_only=False)[0]] == ["n1", "n2", "n3"]
    assert registry.enable("n2") is True
    assert registry.remove_node("n3") is True
    assert registry.remove_node("n3") is False
    assert registry.disable("nope") is False
    assert [n.id for n in registry.list_nodes()[0]] == ["n1", "n2"]


def test_null_fields_take_the_readers_defaults(registry: PostgresRegistry):
    registry.upsert_node(NodeSpec(id="n1", host="10.0.0.1"))
    registry.upsert_node(NodeSpec(id="n2", host="10.0.0.2", port=2222, user="ops",
                                  app_dir="/opt/app", api_port=9000))
    n1, n2 = registry.list_nodes()[0]
    assert (n1.port, n1.user, n1.app_dir, n1.api_port) == (22, "skeleton", "/srv/app", 8765)
    assert (n2.port, n2.user, n2.app_dir, n2.api_port) == (2222, "ops", "/opt/app", 9000)


def test_heartbeat_mark_stopped_and_heartbeats(registry: PostgresRegistry):
    registry.upsert_node(Node(id="n1", host="10.0.0.1"), capabilities={"cpu_count": 2})
    assert registry.heartbeat("n1", metrics={"load": [0.1, 0.2, 0.3]}, code_version="abc123",
                              daemon_pid=4242) is True
    assert registry.heartbeat("ghost", metrics={}) is False
    (entry,), _ = registry.list_entries()
    assert entry.daemon_state == "running" and entry.daemon_pid == 4242
    assert entry.code_version == "abc123" and entry.metrics["load"] == [0.1, 0.2, 0.3]
    assert entry.seen_ago is not None and entry.seen_ago < 5 and not entry.is_stale(30)
    beats = registry.heartbeats(["n1", "ghost"])
    assert set(beats) == {"n1"}
    assert abs(beats["n1"]["last_seen"] - time.time()) < 5
    assert registry.record_status("n1", {"load": [1, 2, 3]}) is True
    assert registry.mark_stopped("n1") is True
    (entry,), _ = registry.list_entries()
    assert (entry.daemon_state, entry.daemon_pid) == ("stopped", None)
    # Re-registering keeps the capabilities when none are given.
    registry.upsert_node(Node(id="n1", host="10.0.0.1"))
    assert sql_caps(registry, "n1") == {"cpu_count": 2}


def sql_caps(registry: PostgresRegistry, node_id: str) -> Any:
    with registry._session("test") as conn:
        return conn.execute("SELECT capabilities FROM nodes WHERE id = %s",
                            (node_id,)).fetchone()[0]  # type: ignore[index]


def test_a_stale_node_is_still_targeted(registry: PostgresRegistry, db_dsn: str):
    registry.upsert_node(Node(id="n1", host="10.0.0.1"))
    registry.heartbeat("n1", metrics={})
    sql(db_dsn, "UPDATE nodes SET last_seen = now() - interval '1 hour'")
    (entry,), _ = registry.list_entries()
    assert entry.is_stale(30)
    assert [n.id for n in registry.list_nodes()[0]] == ["n1"]


# ------------------------------------------------------------------------------ runs


def test_runs_are_recorded_listed_and_shown(registry: PostgresRegistry):
    result = ClusterResult([
        NodeResult("n1", 0, stdout="ok\n", duration=0.5),
        NodeResult("n2", 3, stdout="x" * 10000 + "END", stderr="bad\0byte"),
        NodeResult("n3", None, error_kind=NodeErrorKind.UNREACHABLE, error="no route"),
    ], operation="exec", duration=1.25)
    run_id = registry.record_run("exec", {"command": "uptime", "path": Path("/x")},
                                 ["n1", "n2", "n3"], who="alice@box")
    registry.record_node_results(run_id, result)
    later = registry.record_run("status", {}, ["n1"])
    (newest, oldest) = registry.list_runs(limit=2)
    assert (newest.id, oldest.id) == (later, run_id)
    assert (oldest.node_count, oldest.ok_count, oldest.failed_count, oldest.error_count) == (
        3, 1, 1, 1)
    assert oldest.exit_code == 4 and oldest.duration == 1.25 and oldest.finished_at
    assert newest.finished_at is None and newest.who  # default who: user@host
    run = registry.get_run(run_id)
    assert run is not None and run.arguments == {"command": "uptime", "path": "/x"}
    assert run.selection == ["n1", "n2", "n3"]
    by_node = {n.node_id: n for n in run.nodes}
    assert by_node["n2"].exit_code == 3 and by_node["n2"].stdout_tail.endswith("END")
    assert len(by_node["n2"].stdout_tail) == reg_mod.OUTPUT_TAIL_CHARS
    assert "\0" not in by_node["n2"].stderr_tail
    assert (by_node["n3"].error_kind, by_node["n3"].error) == ("unreachable", "no route")
    assert registry.get_run(999999) is None


def test_record_result_helper_and_its_failure(tmp_path: Path, db_dsn: str):
    config = tmp_path / "config.yaml"
    config.write_text("{}\n")
    result = ClusterResult([NodeResult("n1", 0)], operation="exec")
    assert record_result(load_config(config, env={}), "exec", {}, ["n1"], result) is None
    settings = load_config(config, env={"SKELETON_DATABASE_URL": db_dsn})
    run_id = record_result(settings, "exec", {"command": "true"}, ["n1"], result)
    assert run_id is not None
    down = load_config(config, env={
        "SKELETON_DATABASE_URL": f"postgresql://u:p@127.0.0.1:{free_port()}/x"})
    with pytest.raises(RegistryError):
        record_result(down, "exec", {}, ["n1"], result)


# ---------------------------------------------------------------- import / export


def test_import_export_round_trip(registry: PostgresRegistry):
    items = [
        {"id": "linux-01", "host": "10.0.0.1", "roles": ["stt_realtime", "tts"]},
        {"id": "linux-02", "host": "host-2.lan", "port": 2222, "user": "ops",
         "app_dir": "/opt/skeleton", "api_port": 9001, "name": "Second box"},
    ]
    imported = import_nodes(registry, items)
    assert imported.added == ("linux-01", "linux-02") and imported.updated == ()
    assert import_nodes(registry, items[:1]).updated == ("linux-01",)
    exported, warnings = export_nodes(registry)
    assert warnings == () and exported == items


@pytest.mark.parametrize(("items", "message"), [
    ("not a list", "expected a list"),
    ([{"id": "a", "host": "10.0.0.1"}, {"id": "a", "host": "10.0.0.2"}], r"nodes\[a\]: dup"),
    ([{"id": "a", "host": "-oProxyCommand=x"}], r"nodes\[a\]: host"),
    ([{"id": "a;b", "host": "10.0.0.1"}], r"nodes\[0\]: id"),
    ([{"id": "a", "host": "10.0.0.1", "colour": "red"}], "unknown key"),
    (["just a string"], r"nodes\[0\]"),
])
def test_import_validates_every_entry_before_writing(registry: PostgresRegistry, items: Any,
                                                     message: str):
    with pytest.raises(UsageError, match=message):
        parse_node_entries(items)
    ok = [{"id": "first", "host": "10.0.0.1"}]
    with pytest.raises(UsageError):
        import_nodes(registry, ok + items if isinstance(items, list) else items)
    assert registry.list_nodes() == ((), ())  # nothing written, not even the valid first


# ----------------------------------------------------------------------- seed API


def test_seed_async_api_registers_and_lists(db_dsn: str):
    async def scenario() -> list[Node]:
        async with await psycopg.AsyncConnection.connect(db_dsn, connect_timeout=5) as db:
            node = await register_node_in_db(db, {"id": "gpu-01", "host": "10.0.0.5",
                                                  "roles": ["tts"], "capabilities": {"gpus": 1}})
            assert node.id == "gpu-01" and node.roles == ("tts",)
            await register_node_in_db(db, {"id": "gpu-01", "host": "10.0.0.6"})
            return await get_nodes_from_db(db)

    nodes = asyncio.run(scenario())
    assert [(n.id, n.host) for n in nodes] == [("gpu-01", "10.0.0.6")]
    # It committed: another connection sees it.
    assert sql(db_dsn, "SELECT host FROM nodes") == [("10.0.0.6",)]


def test_seed_async_api_translates_errors(empty_dsn: str):
    async def scenario() -> None:
        async with await psycopg.AsyncConnection.connect(empty_dsn, connect_timeout=5) as db:
            await register_node_in_db(db, {"id": "n1", "host": "10.0.0.1"})

    with pytest.raises(RegistryError, match="skeleton db init"):
        asyncio.run(scenario())


def test_seed_sync_api_commits_unless_the_caller_has_a_transaction_open(db_dsn: str):
    with psycopg.connect(db_dsn, connect_timeout=5) as conn:
        register_node_in_db_sync(conn, {"id": "n1", "host": "10.0.0.1"})
        conn.rollback()  # nothing open: the registration was already committed
        assert sql(db_dsn, "SELECT id FROM nodes") == [("n1",)]
        conn.execute("SELECT 1")  # the caller's transaction is now open...
        register_node_in_db_sync(conn, {"id": "n2", "host": "10.0.0.2"})
        assert [n.id for n in get_nodes_from_db_sync(conn)] == ["n1", "n2"]
        conn.rollback()  # ...and its rollback undoes ours too (we used a savepoint)
    assert sql(db_dsn, "SELECT id FROM nodes") == [("n1",)]


def test_psycopg_errors_never_escape(registry: PostgresRegistry, db_dsn: str):
    # A broken table (someone dropped a column) surfaces as RegistryError, not psycopg's.
    sql(db_dsn, "ALTER TABLE nodes DROP COLUMN metrics")
    with pytest.raises(RegistryError, match="skeleton db init"):
        registry.list_nodes()
    with pytest.raises(RegistryError):
        registry.heartbeat("n1", metrics={})


# ------------------------------------------------------------------- through the CLI


@pytest.mark.parametrize("case", ["refused", "wrong-password", "schema-missing", "malformed"])
def test_cluster_command_with_a_broken_registry_exits_3_with_one_line(
        case: str, tmp_path: Path, postgres: LocalPostgres, empty_dsn: str):
    marker = tmp_path / "ran"
    config = tmp_path / "config.yaml"
    config.write_text("registry: {connect_timeout: 2}\n")
    port = free_port()
    dsn, expected = {
        "refused": (f"postgresql://skeleton:s3cret@127.0.0.1:{port}/x",
                    f"127.0.0.1:{port}: cannot connect: Connection refused"),
        "wrong-password": (postgres.dsn.replace(postgres.password, "s3cret"),
                           f"127.0.0.1:{postgres.port}: cannot connect: password authentication"),
        "schema-missing": (empty_dsn, "run `skeleton db init`"),
        "malformed": ("host=127.0.0.1 password=s3cret port", "malformed registry DSN"),
    }[case]
    started = time.monotonic()
    proc = skeleton("cluster", "exec", f"touch {marker}", config=config,
                    env={"SKELETON_DATABASE_URL": dsn}, timeout=60)
    assert time.monotonic() - started < 10
    assert proc.returncode == 3, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], proc.stderr
    assert "s3cret" not in proc.stderr + proc.stdout
    assert not marker.exists()
