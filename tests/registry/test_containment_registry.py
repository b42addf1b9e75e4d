"""Issue 12, sections 2 and 7: a node that lies in the registry stays contained.

Played on real PostgreSQL and real test hosts:

- a node writes hostile rows with its OWN credentials (`nodes credentials`), from inside its
  host: PostgreSQL refuses every write outside its own row and its own columns;
- a row re-pointed at another machine fails the host-key check (keys pinned per node id),
  under strict and accept-new, for Paramiko and for OpenSSH (rsync);
- a node that registers itself is pending, and no command targets it until approved;
- an app_dir that is `/`, a home or a system path is refused wherever it enters, and
  `deploy --delete` never runs against one;
- the daemon's /health listens on the node's own address and tells only "ok" without its
  token.
"""

from __future__ import annotations

import dataclasses
import json
import socket
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest
import yaml

from skeleton_app.agent import Agent
from skeleton_app.cluster import Cluster
from skeleton_app.config import Settings, load_config
from skeleton_app.errors import NodeErrorKind
from skeleton_app.nodes import Node, validate_app_dir
from skeleton_app.ops.daemon import health_check
from skeleton_app.registry import NodeSpec, PostgresRegistry
from skeleton_app.testing import testbed as tb_mod
from skeleton_app.testing.testbed import Testbed
from skeleton_app.transfers import classify_failure, rsync
from tests.support.db_fixtures import TEST_DEFAULTS
from tests.support.helpers import bootstrap_testbed, config_variant, skeleton

# What a hostile node tries with its own credentials, from its own host. Each must fail.
HOSTILE_WRITES = {
    "own app_dir": "UPDATE nodes SET app_dir = '/home/skeleton/x' WHERE id = 'node-02'",
    "own host": "UPDATE nodes SET host = '{ip1}' WHERE id = 'node-02'",
    "own enabled": "UPDATE nodes SET enabled = true WHERE id = 'node-02'",
    "own roles": "UPDATE nodes SET roles = '{{gpu}}' WHERE id = 'node-02'",
    "own approval": "UPDATE nodes SET approved = true WHERE id = 'node-02'",
    "other's row": "INSERT INTO nodes (id, host) VALUES ('node-07', '{ip1}')",
    "app_dir on insert": "INSERT INTO nodes (id, host, app_dir) VALUES ('node-02', '{ip2}', '/')",
    "delete": "DELETE FROM nodes",
    "the journal": "INSERT INTO runs (who, operation) VALUES ('x', 'y')",
}

_HOSTILE_SCRIPT = """
import json, sys, psycopg
dsn, writes = sys.argv[1], json.loads(sys.argv[2])
out = {}
with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
    for name, query in writes.items():
        try:
            cur = conn.execute(query.encode())
            out[name] = f"ok rows={cur.rowcount}"
        except psycopg.Error as exc:
            out[name] = f"refused {exc.sqlstate}"
    # What the node may still do: its own heartbeat, and nobody else's.
    out["own heartbeat"] = conn.execute(
        "UPDATE nodes SET last_seen = now(), metrics = '{}' WHERE id = 'node-02'").rowcount
    out["other heartbeat"] = conn.execute(
        "UPDATE nodes SET last_seen = now() WHERE id = 'node-01'").rowcount
    out["visible"] = [r[0] for r in conn.execute("SELECT id FROM nodes ORDER BY id")]
print(json.dumps(out))
"""


def _operator(bed: Testbed) -> PostgresRegistry:
    assert bed.db is not None
    # The DSN the hosts use (bridge address): the node DSNs derived from it work inside them.
    return PostgresRegistry(bed.db.host_dsn, defaults=TEST_DEFAULTS, connect_timeout=5)


def _rows(bed: Testbed) -> dict[str, tuple[Any, ...]]:
    assert bed.db is not None
    with psycopg.connect(bed.db.dsn, autocommit=True, connect_timeout=5) as conn:
        rows = conn.execute("SELECT id, host, app_dir, enabled, roles, approved FROM nodes"
                            " ORDER BY id").fetchall()
    return {r[0]: tuple(r[1:]) for r in rows}


def _sql(bed: Testbed, query: str, params: Any = None) -> None:
    """The operator's full rights (what every daemon held before): for staging attacks."""
    assert bed.db is not None
    with psycopg.connect(bed.db.dsn, autocommit=True, connect_timeout=5) as conn:
        conn.execute(query.encode(), params)


def _nodes(config: Path) -> dict[str, dict[str, Any]]:
    proc = skeleton("nodes", "list", "--json", config=config)
    assert proc.returncode == 0, proc.stderr
    return {n["id"]: n for n in json.loads(proc.stdout)}


# ------------------------------------------------------------------ database rights


def test_a_node_writes_only_its_own_heartbeat_with_its_own_credentials(
        make_testbed: Callable[..., Testbed]) -> None:
    bed = make_testbed(2, db=True)
    ip1, ip2 = bed.host("node-01").ip, bed.host("node-02").ip
    with _operator(bed) as reg:
        dsn = reg.issue_credentials("node-02")
    before = _rows(bed)
    writes = {k: v.format(ip1=ip1, ip2=ip2) for k, v in HOSTILE_WRITES.items()}
    python = bootstrap_testbed(bed)  # the host's own psycopg: it never sees the controller's
    proc = tb_mod.host_exec(bed, "node-02",
                            [python, "-c", _HOSTILE_SCRIPT, dsn, json.dumps(writes)])
    out = json.loads(proc.stdout)
    refused = {k: v for k, v in out.items() if k in writes}
    # 42501: insufficient privilege, raised by column rights and row-level security alike
    assert refused == {k: "refused 42501" for k in writes}, refused
    assert out["own heartbeat"] == 1 and out["other heartbeat"] == 0
    assert out["visible"] == ["node-02"]
    after = _rows(bed)
    assert after == before  # heartbeat columns aside, nothing the operator owns moved


def test_the_daemon_api_works_with_node_credentials_and_only_for_its_node(
        registry: PostgresRegistry, db_dsn: str) -> None:
    registry.upsert_node(Node(id="node-01", host="10.0.0.1"))
    registry.upsert_node(Node(id="node-02", host="10.0.0.2"))
    dsn = registry.issue_credentials("node-02")
    with PostgresRegistry(dsn, defaults=TEST_DEFAULTS) as mine:
        assert mine.register_self(Node(id="node-02", host="10.0.0.2")) is False  # exists
        assert mine.heartbeat("node-02", metrics={"load": [0.1]}, code_version="v1")
        assert mine.mark_stopped("node-02")
        assert mine.heartbeat("node-01", metrics={}) is False  # not its row: nothing
    # A re-issued password replaces the old one: a leaked DSN can be revoked.
    registry.issue_credentials("node-02")
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(dsn, connect_timeout=5).close()
    # remove: the role can no longer log in at all
    dsn = registry.issue_credentials("node-02")
    assert registry.remove_node("node-02")
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(dsn, connect_timeout=5).close()


def test_re_registering_never_rewrites_the_operators_columns(registry: PostgresRegistry) -> None:
    registry.upsert_node(NodeSpec(id="node-03", host="10.0.0.3", roles=("tts",),
                                  app_dir="/srv/skeleton"))
    registry.set_enabled("node-03", False)
    # the daemon (even one holding the operator's DSN) registers with other values
    registry.register_self(Node(id="node-03", host="10.0.0.1", app_dir="/opt/elsewhere"),
                           capabilities={"cpu_count": 4})
    entry = registry.get_entry("node-03")
    assert entry is not None
    assert (entry.node.host, entry.node.app_dir, entry.node.roles, entry.enabled) == (
        "10.0.0.3", "/srv/skeleton", ("tts",), False)


# ------------------------------------------------------------------ pending, approve


def test_a_self_registered_node_is_pending_until_approved(
        make_testbed: Callable[..., Testbed], tmp_path: Path) -> None:
    bed = make_testbed(2, db=True)
    cfg = bed.config_path
    ip2 = bed.host("node-02").ip
    with _operator(bed) as reg:
        dsn = reg.issue_credentials("node-07")
    # node-02's host, with credentials for a new id, registers "node-07" pointing at itself
    code = ("import sys; from skeleton_app.registry import PostgresRegistry, NodeDefaults;"
            "from skeleton_app.nodes import Node;"
            "r = PostgresRegistry(sys.argv[1], defaults=NodeDefaults(user='skeleton'));"
            "print(r.register_self(Node(id='node-07', host=sys.argv[2])))")
    python = bootstrap_testbed(bed)  # the host's own skeleton_app, as its daemon has
    proc = tb_mod.host_exec(bed, "node-02", [python, "-c", code, dsn, ip2])
    assert proc.stdout.strip() == "True"
    listed = _nodes(cfg)
    assert listed["node-07"]["state"] == "pending" and listed["node-07"]["approved"] is False
    assert listed["node-01"]["state"] == "enabled"
    table = skeleton("nodes", "list", config=cfg, env={"COLUMNS": "200"})
    assert "pending" in table.stdout
    # not a target: neither in "everything" nor by name
    proc = skeleton("cluster", "exec", "hostname", "--json", config=cfg)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert set(json.loads(proc.stdout)["nodes"]) == {"node-01", "node-02"}
    proc = skeleton("cluster", "exec", "hostname", "--node", "node-07", config=cfg)
    assert proc.returncode == 2 and "unknown node node-07" in proc.stderr
    # approved, it is a target; with accept-new and no address entries, the key node-02
    # already holds is not handed to the new id (one machine, one node id)
    proc = skeleton("nodes", "approve", "node-07", config=cfg)
    assert proc.returncode == 0 and "approved node-07" in proc.stdout
    kh = tmp_path / "known_hosts"
    kh.write_text("".join(ln + "\n" for ln in bed.known_hosts.read_text().splitlines()
                          if ln.startswith("node-")))
    accept = config_variant(bed, tmp_path / "accept.yaml",
                            ssh={"known_hosts": str(kh), "host_key_policy": "accept-new"})
    proc = skeleton("cluster", "exec", "hostname", "--node", "node-07", config=accept)
    assert proc.returncode == 4
    assert "node-07: hostkey-changed:" in proc.stdout and "host key of node-02" in proc.stdout
    assert "node-07" not in kh.read_text()
    proc = skeleton("nodes", "approve", "node-99", config=cfg)
    assert proc.returncode == 2 and "unknown node 'node-99'" in proc.stderr


# ------------------------------------------------------------------ re-pointed rows


def test_a_re_pointed_row_fails_the_host_key_check(
        make_testbed: Callable[..., Testbed], tmp_path: Path) -> None:
    bed = make_testbed(3, db=True)
    ip1 = bed.host("node-01").ip
    _sql(bed, "UPDATE nodes SET host = %s WHERE id = 'node-03'", (ip1,))
    for policy in ("strict", "accept-new"):
        _re_pointed(bed, tmp_path / policy, policy, ip1)


def _re_pointed(bed: Testbed, tmp_path: Path, policy: str, ip1: str) -> None:
    tmp_path.mkdir()
    kh = tmp_path / "known_hosts"
    kh.write_text(bed.known_hosts.read_text())
    cfg = config_variant(bed, tmp_path / "c.yaml",
                         ssh={"known_hosts": str(kh), "host_key_policy": policy})
    marker = bed.host("node-01").home / "ran-as-node-03"
    proc = skeleton("cluster", "exec", "touch ~/ran-as-node-03", "--node", "node-03",
                    config=cfg)
    assert proc.returncode == 4, proc.stdout + proc.stderr
    assert "node-03: hostkey-changed: HOST KEY CHANGED for node-03" in proc.stdout
    assert not marker.exists()
    assert kh.read_text() == bed.known_hosts.read_text()  # nothing recorded
    # with node-01 itself in the same run: its checked connection never serves node-03
    ran = bed.host("node-01").home / "ran-log"
    ran.unlink(missing_ok=True)
    proc = skeleton("cluster", "exec", "hostname >> ~/ran-log",
                    "--node", "node-01,node-03", "--json", config=cfg)
    assert proc.returncode == 4, proc.stdout + proc.stderr
    nodes = json.loads(proc.stdout)["nodes"]
    assert nodes["node-01"]["exit_code"] == 0 and nodes["node-03"]["exit_code"] is None
    assert nodes["node-03"]["error_kind"] == "hostkey-changed"
    assert ran.read_text().split() == ["node-01"]  # node-01's own command, once
    ran.unlink()
    # OpenSSH (rsync, logs --follow) checks the same pin: HostKeyAlias=node-03
    settings = load_config(cfg, env={})
    node = Node(id="node-03", host=ip1, user=settings.ssh.user,
                identity_file=settings.ssh.identity_file)
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("x")
    result = rsync(node, f"{src}/", "/home/skeleton/t-repointed/", settings=settings.ssh)
    assert not result.ok
    kind, message = classify_failure(result, node.id)
    assert kind is NodeErrorKind.HOSTKEY_CHANGED, message
    assert not (bed.host("node-01").home / "t-repointed").exists()


def test_an_address_only_known_hosts_pins_the_id_on_first_use(
        testbed: Testbed, tmp_path: Path) -> None:
    """Back-compat: known_hosts from before ids were pinned. The address's entry vouches
    for an id seen the first time; the id is recorded, and from then on the pin holds."""
    kh = tmp_path / "known_hosts"
    kh.write_text("".join(ln + "\n" for ln in testbed.known_hosts.read_text().splitlines()
                          if not ln.startswith("node-")))
    ip1, ip2 = testbed.host("node-01").ip, testbed.host("node-02").ip
    cfg = config_variant(testbed, tmp_path / "c.yaml", ssh={"known_hosts": str(kh)},
                         nodes=[{"id": "node-02", "host": ip2}])
    proc = skeleton("cluster", "exec", "hostname", config=cfg)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    key2 = testbed.host("node-02").host_key_pub.read_text().split()[1]
    assert f"node-02 ssh-ed25519 {key2}\n" in kh.read_text()
    # the row is now pointed at node-01: its own address entry matches, the pin does not
    config_variant(testbed, cfg, ssh={"known_hosts": str(kh)},
                   nodes=[{"id": "node-02", "host": ip1}])
    proc = skeleton("cluster", "exec", "hostname", config=cfg)
    assert proc.returncode == 4 and "HOST KEY CHANGED for node-02" in proc.stdout


# ------------------------------------------------------------------ app_dir


@pytest.mark.parametrize("path", ["/", "/home", "/home/skeleton", "/root", "/etc", "/usr",
                                  "/var", "/usr/local", "/etc/skeleton", "/home/skeleton/",
                                  "//home//skeleton"])
def test_unsafe_app_dirs_are_refused(path: str) -> None:
    with pytest.raises(ValueError, match="invalid app_dir"):
        validate_app_dir(path)


def test_safe_app_dirs_pass() -> None:
    for path in ("/home/skeleton/app", "/srv/skeleton", "/opt/app", "/tmp/x/app"):
        assert validate_app_dir(path) == path


def test_unsafe_app_dir_is_refused_wherever_it_enters(
        make_testbed: Callable[..., Testbed], tmp_path: Path) -> None:
    bed = make_testbed(2, db=True)
    cfg = bed.config_path
    keep = bed.host("node-02").home / "keep-me"
    keep.write_text("precious\n")
    # config.yaml: app.dir and a node's app_dir
    for where, variant in (("app.dir", {"app": {"dir": "/home/skeleton"}}),
                           ("nodes", {"nodes": [{"id": "node-01", "host": "10.9.9.9",
                                                 "app_dir": "/etc"}]})):
        data = yaml.safe_load(cfg.read_text())
        data.update(variant) if where == "nodes" else data["app"].update(variant["app"])
        path = tmp_path / f"{where}.yaml"
        path.write_text(yaml.safe_dump(data))
        proc = skeleton("cluster", "exec", "true", config=path)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("skeleton: error: ")
        assert "invalid app_dir" in lines[0]
    # the CLI
    proc = skeleton("nodes", "add", "node-09", "10.9.9.9", "--app-dir", "/home/bob", config=cfg)
    assert proc.returncode == 2 and "a home directory itself" in proc.stderr
    assert "node-09" not in _nodes(cfg)
    # a row written behind our back: skipped on read, with a warning; deploy --delete never
    # reaches node-02's home
    _sql(bed, "UPDATE nodes SET app_dir = '/home/skeleton' WHERE id = 'node-02'")
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("x")
    proc = skeleton("cluster", "deploy", "--delete", "--source", str(src), config=cfg)
    assert "skipped node row 'node-02'" in proc.stderr and "app_dir" in proc.stderr
    assert keep.read_text() == "precious\n"
    # deploy's own guard: --dest resolving to the home, with --delete
    proc = skeleton("cluster", "deploy", "--delete", "--dest", "..", "--source", str(src),
                    "--node", "node-01", config=cfg)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "refusing deploy --delete on node-01" in proc.stderr
    assert (bed.host("node-01").home / ".ssh" / "authorized_keys").exists()


# ------------------------------------------------------------------ /health


def _get(url: str, token: str | None = None) -> dict[str, Any]:
    request = urllib.request.Request(url)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=3) as r:
        return json.loads(r.read())  # type: ignore[no-any-return]


def _agent(tmp_path: Path, host: str, **daemon: Any) -> Agent:
    settings = Settings()
    settings = dataclasses.replace(settings, daemon=dataclasses.replace(settings.daemon,
                                                                        **daemon))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    node = Node(id="n1", host=host, api_port=port, app_dir=str(tmp_path))
    return Agent(settings, node, app_dir=str(tmp_path))


def test_health_binds_the_node_address_and_needs_the_token_for_details(
        tmp_path: Path) -> None:
    agent = _agent(tmp_path, "127.0.0.2")
    agent._write_token()
    server = agent.start_health_server()
    try:
        assert server.server_address[0] == "127.0.0.2"  # the node's address, not 0.0.0.0
        url = f"http://127.0.0.2:{agent.node.api_port}/health"
        assert _get(url) == {"status": "ok"}
        assert _get(url, "wrong-token-wrong-token") == {"status": "ok"}
        token = (tmp_path / ".skeleton-deploy" / "health-token").read_text().strip()
        assert token == agent.health_token and len(token) >= 24
        assert (tmp_path / ".skeleton-deploy" / "health-token").stat().st_mode & 0o077 == 0
        details = _get(url, token)
        assert details["node"] == "n1" and details["pid"] == agent.pid and "db" in details
        with pytest.raises(OSError):
            _get(f"http://127.0.0.1:{agent.node.api_port}/health")  # not on other addresses
    finally:
        server.shutdown()
        server.server_close()


def test_health_bind_and_token_from_config(tmp_path: Path) -> None:
    agent = _agent(tmp_path, "127.0.0.2", health_bind="127.0.0.3",
                   health_token="configured-token-0123456789")
    server = agent.start_health_server()
    try:
        url = f"http://127.0.0.3:{agent.node.api_port}/health"
        assert _get(url, "configured-token-0123456789")["node"] == "n1"
    finally:
        server.shutdown()
        server.server_close()
    # an address this machine does not have (NAT): loopback only, never 0.0.0.0
    agent = _agent(tmp_path, "192.0.2.1")
    server = agent.start_health_server()
    try:
        assert server.server_address[0] == "127.0.0.1"
    finally:
        server.shutdown()
        server.server_close()


def test_bad_health_settings_are_config_errors(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    for daemon, key in (({"health_token": "short"}, "daemon.health_token"),
                        ({"health_token": "has spaces in it, 123456"}, "daemon.health_token"),
                        ({"health_bind": "-oProxyCommand=x"}, "daemon.health_bind")):
        path.write_text(yaml.safe_dump({"daemon": daemon}))
        proc = skeleton("cluster", "exec", "true", config=path)
        assert proc.returncode == 2 and key in proc.stderr, proc.stderr


def test_daemon_on_a_host_health_on_its_address_details_for_health_check(
        make_testbed: Callable[..., Testbed]) -> None:
    """The real daemon on a test host: listens on the host's address only; a neighbour gets
    just "ok"; the controller's health check (health.sh, token file on the node) gets the
    pid that rolling restarts compare."""
    bed = make_testbed(2)
    host = bed.host("node-01")
    python = bootstrap_testbed(bed)  # the host's own venv (it never sees the controller's)
    code = ("import sys, runpy; sys.argv = ['agent']; "
            "runpy.run_module('skeleton_app.agent', run_name='__main__')")
    tb_mod.host_exec(bed, host.id, ["sh", "-c", "cat > /home/skeleton/app/config.yaml"],
                     input=bed.config_path.read_text())
    launch = ("cd /home/skeleton/app && setsid"
              f" {python} -c {json.dumps(code)} </dev/null >/dev/null 2>&1 &")
    tb_mod.host_exec(bed, host.id, ["su", "skeleton", "-s", "/bin/sh", "-c", launch])
    settings = load_config(bed.config_path, env={})
    port = settings.daemon.api_port
    node = settings.node(host.id)
    assert node is not None
    pid: int | None = None
    try:
        with Cluster(settings) as cluster:
            r = health_check(cluster, node, timeout=20)
            assert r.exit_code == 0, r.outcome
            pid = r.outcome.health["pid"]
            assert isinstance(pid, int) and r.outcome.health["node"] == host.id
        tcp = tb_mod.host_exec(bed, host.id, ["cat", "/proc/net/tcp"]).stdout.splitlines()[1:]
        listening = [ln.split()[1] for ln in tcp
                     if ln.split()[3] == "0A" and int(ln.split()[1].split(":")[1], 16) == port]
        ip_hex = "".join(f"{int(x):02X}" for x in reversed(host.ip.split(".")))
        assert listening == [f"{ip_hex}:{port:04X}"]
        probe = (f"import urllib.request; print(urllib.request.urlopen("
                 f"'http://{host.ip}:{port}/health', timeout=3).read().decode())")
        seen = tb_mod.host_exec(bed, "node-02", ["python3", "-c", probe]).stdout
        assert json.loads(seen) == {"status": "ok"}
    finally:
        # By the pid it reported (inside the host's PID namespace); without one, the
        # testbed's teardown ends the host's namespace and every process in it.
        if isinstance(pid, int):
            tb_mod.host_exec(bed, host.id, ["kill", "-TERM", str(pid)], check=False)


def test_installed_credentials_are_what_the_daemon_uses(
        make_testbed: Callable[..., Testbed]) -> None:
    """`nodes credentials --install`: the DSN lands on the node (0600, never on a command
    line), and the daemon started there heartbeats as the node's own role."""
    bed = make_testbed(2, db=True)
    cfg = bed.config_path
    proc = skeleton("nodes", "credentials", "node-01", "--install", config=cfg)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    dsn_file = bed.host("node-01").home / ".config" / "skeleton" / "node.dsn"
    assert dsn_file.stat().st_mode & 0o077 == 0
    assert "skeleton_node_" in dsn_file.read_text()
    printed = skeleton("nodes", "credentials", "node-02", config=cfg)
    assert printed.returncode == 0 and "user=skeleton_node_" in printed.stdout
    added = skeleton("nodes", "add", "node-05", "10.9.9.5", "--credentials", config=cfg)
    assert added.returncode == 0, added.stderr
    assert added.stdout.splitlines()[0] == "added node-05"
    assert "user=skeleton_node_" in added.stdout.splitlines()[1]
    code = ("import sys, runpy; sys.argv = ['agent']; "
            "runpy.run_module('skeleton_app.agent', run_name='__main__')")
    tb_mod.host_exec(bed, "node-01", ["sh", "-c", "cat > /home/skeleton/app/config.yaml"],
                     input=cfg.read_text())
    python = bootstrap_testbed(bed)  # the host's own venv (it never sees the controller's)
    launch = ("cd /home/skeleton/app && SKELETON_HEARTBEAT_INTERVAL=0.5 setsid"
              f" {python} -c {json.dumps(code)} </dev/null >/dev/null 2>&1 &")
    tb_mod.host_exec(bed, "node-01", ["su", "skeleton", "-s", "/bin/sh", "-c", launch])
    assert bed.db is not None
    pid = None
    try:
        for _ in range(60):
            node = _nodes(cfg)["node-01"]
            if node["daemon_state"] == "running":
                break
            time.sleep(0.5)
        assert node["daemon_state"] == "running", node
        with psycopg.connect(bed.db.dsn, autocommit=True, connect_timeout=5) as conn:
            row = conn.execute("SELECT daemon_pid FROM nodes WHERE id = 'node-01'").fetchone()
            users = {r[0] for r in conn.execute(
                "SELECT usename FROM pg_stat_activity WHERE application_name"
                " = 'skeleton-daemon node-01'")}
        assert row is not None
        pid = row[0]
        assert users and all(u.startswith("skeleton_node_") for u in users), users
    finally:
        if isinstance(pid, int):
            tb_mod.host_exec(bed, "node-01", ["kill", "-TERM", str(pid)], check=False)


# ------------------------------------------------------------------ the daemon's DSN


def _daemon_logins(bed: Testbed) -> dict[str, set[str]]:
    """Per daemon (application_name), the PostgreSQL users of its open connections."""
    assert bed.db is not None
    out: dict[str, set[str]] = {}
    with psycopg.connect(bed.db.dsn, autocommit=True, connect_timeout=5) as conn:
        for app, user in conn.execute(
                "SELECT application_name, usename FROM pg_stat_activity"
                " WHERE application_name LIKE 'skeleton-daemon %'"):
            out.setdefault(app.removeprefix("skeleton-daemon "), set()).add(user)
    return out


def test_daemons_use_their_own_role_never_the_deployed_operator_dsn(
        make_testbed: Callable[..., Testbed]) -> None:
    """The real daemon, from the hosts' own venv, started by `cluster daemon start` with the
    testbed's config (registry.dsn: the operator's, password included). node-01 has the
    credentials `testbed up` installed and heartbeats as its own role; node-02's were
    removed: it never connects, serves /health, and its log says what to run. Once the
    operator installs them, its restarted daemon registers as its own role."""
    from tests.support.deploy_support import daemons_stopped_after

    bed = make_testbed(2, db=True)
    bootstrap_testbed(bed)
    cfg = bed.config_path
    settings = load_config(cfg, env={})
    assert settings.registry.dsn and urlsplit(settings.registry.dsn).password  # operator's
    dsn_files = {h.id: h.home / ".config" / "skeleton" / "node.dsn" for h in bed.hosts}
    assert all(p.stat().st_mode & 0o077 == 0 for p in dsn_files.values())
    dsn_files["node-02"].unlink()
    log2 = bed.host("node-02").app_dir / "logs" / "skeleton-daemon.log"

    def beat(node_id: str) -> Any:
        return _nodes(cfg)[node_id]["daemon_state"] == "running"

    with daemons_stopped_after(settings):
        proc = skeleton("cluster", "daemon", "start", config=cfg)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        for _ in range(60):
            if beat("node-01") and log2.exists() and "--install" in log2.read_text():
                break
            time.sleep(0.5)
        assert beat("node-01") and not beat("node-02")
        logins = _daemon_logins(bed)
        assert set(logins) == {"node-01"}, logins  # node-02: no connection at all
        assert all(u.startswith("skeleton_node_") for u in logins["node-01"]), logins
        assert "On the controller, run `skeleton nodes credentials node-02 --install`" \
            in log2.read_text()

        proc = skeleton("nodes", "credentials", "node-02", "--install", config=cfg)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        proc = skeleton("cluster", "daemon", "restart", "-n", "node-02", config=cfg)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        for _ in range(60):
            if beat("node-02"):
                break
            time.sleep(0.5)
        assert beat("node-02")
        logins = _daemon_logins(bed)
        assert set(logins) == {"node-01", "node-02"}, logins
        assert logins["node-01"] != logins["node-02"]  # a role per node
        assert all(u.startswith("skeleton_node_") for us in logins.values() for u in us)
