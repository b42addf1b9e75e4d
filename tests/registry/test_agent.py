"""The node daemon (skeleton_app.agent) run as a real subprocess against a real PostgreSQL.

Each test writes a config.yaml whose single node is this machine on 127.0.0.1 with a free
api_port, and starts `python -m skeleton_app.agent` with SKELETON_NODE_ID, the way daemon
control starts it on a node, and with the node's own DSN in SKELETON_NODE_DSN (credentials
issued by the operator's registry): the daemon never uses config.yaml's `registry.dsn`.
The end-to-end run on the testbed hosts lives with the daemon control tests.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from skeleton_app import agent
from skeleton_app.config import load_config
from skeleton_app.errors import ConfigError
from skeleton_app.registry import NodeEntry, PostgresRegistry, init_schema
from skeleton_app.testing import localdb
from skeleton_app.testing.localdb import LocalPostgres
from tests.support.db_fixtures import TEST_DEFAULTS
from tests.support.helpers import bootstrap_testbed
from tests.support.shared_fixtures import nvidia_smi_fixture

INTERVAL = 0.3
ISO_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00 (INFO|WARNING|ERROR) ")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(check: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class Daemon:
    """One agent subprocess and what a test needs to look at it."""

    def __init__(self, proc: subprocess.Popen[str], app_dir: Path, api_port: int, dsn: str,
                 node_id: str):
        self.proc = proc
        self.app_dir = app_dir
        self.api_port = api_port
        self.dsn = dsn
        self.node_id = node_id

    @property
    def log(self) -> str:
        path = self.app_dir / "logs" / "skeleton-daemon.log"
        return path.read_text() if path.exists() else ""

    def health(self, *, token: bool = True) -> dict[str, Any] | None:
        """/health's answer; with the daemon's token (from its 0600 file) the details."""
        request = urllib.request.Request(f"http://127.0.0.1:{self.api_port}/health")
        try:
            if token:
                secret = (self.app_dir / ".skeleton-deploy" / "health-token").read_text()
                request.add_header("Authorization", f"Bearer {secret.strip()}")
            with urllib.request.urlopen(request, timeout=2) as r:
                return json.loads(r.read())  # type: ignore[no-any-return]
        except (urllib.error.URLError, OSError):
            return None

    def entry(self) -> NodeEntry | None:
        with PostgresRegistry(self.dsn, defaults=TEST_DEFAULTS, connect_timeout=2) as reg:
            entries, _ = reg.list_entries()
        return next((e for e in entries if e.node.id == self.node_id), None)

    def terminate(self, timeout: float = 15) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)


@pytest.fixture
def start_daemon(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    started: list[Daemon] = []

    def start(dsn: str | None, *, node_id: str = "agent-01", env_node_id: str | None = None,
              app_dir: Path | None = None, extra_nodes: list[dict[str, Any]] | None = None,
              connect_timeout: float = 2, own: str | bool = True,
              env_extra: dict[str, str] | None = None) -> Daemon:
        """`dsn`: the operator's, in config.yaml. `own`: True issues the node its own
        credentials from it (SKELETON_NODE_DSN), a string is that DSN, False none."""
        app = app_dir or tmp_path / f"app-{len(started)}"
        app.mkdir(parents=True, exist_ok=True)
        api_port = free_port()
        config: dict[str, Any] = {
            "app": {"dir": str(app)},
            "nodes": [{"id": node_id, "host": "127.0.0.1", "api_port": api_port,
                       "roles": ["tts"]}, *(extra_nodes or [])],
        }
        if dsn is not None:
            config["registry"] = {"dsn": dsn, "connect_timeout": connect_timeout}
        path = tmp_path / f"config-{len(started)}.yaml"
        path.write_text(yaml.safe_dump(config))
        env = {k: v for k, v in os.environ.items() if not k.startswith("SKELETON_")}
        env.update(SKELETON_NODE_ID=env_node_id if env_node_id is not None else node_id,
                   SKELETON_HEARTBEAT_INTERVAL=str(INTERVAL),
                   SKELETON_HEALTH_BIND="127.0.0.1")
        if own is True and dsn is not None:
            with PostgresRegistry(dsn, defaults=TEST_DEFAULTS, connect_timeout=2) as reg:
                own = reg.issue_credentials(node_id)
        if isinstance(own, str):
            env["SKELETON_NODE_DSN"] = own
        env.update(env_extra or {})
        proc = subprocess.Popen(
            [sys.executable, "-m", "skeleton_app.agent", "--config", str(path)],
            cwd=app, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True,
        )
        daemon = Daemon(proc, app, api_port, dsn or "", node_id)
        started.append(daemon)
        return daemon

    try:
        yield start
    finally:
        for d in started:
            if d.proc.poll() is None:
                d.proc.kill()
            d.proc.communicate(timeout=10)


def test_daemon_registers_heartbeats_serves_health_and_stops_on_sigterm(
        db_dsn: str, start_daemon: Callable[..., Daemon]):
    d = start_daemon(db_dsn)
    first = wait_for(lambda: (e := d.entry()) and e.last_seen and e, what="registration")
    # A node registering itself lands pending, and never picks its own roles (operator's).
    assert first.node.host == "127.0.0.1" and first.node.roles == () and not first.approved
    assert first.daemon_state == "running" and first.daemon_pid == d.proc.pid
    assert first.node.api_port == d.api_port
    # Heartbeats keep coming, with the metrics the status table shows.
    wait_for(lambda: (e := d.entry()) and e.last_seen > first.last_seen, what="a heartbeat")
    entry = d.entry()
    assert entry is not None
    assert {"load", "mem_total", "mem_available", "disk_total", "disk_free", "gpu"} <= set(
        entry.metrics)
    assert entry.metrics["gpu"]["state"] in ("none", "ok", "error")
    with PostgresRegistry(db_dsn, defaults=TEST_DEFAULTS) as reg, \
            reg._session("test") as conn:
        caps = conn.execute("SELECT capabilities FROM nodes").fetchone()[0]  # type: ignore[index]
    assert caps["cpu_count"] == os.cpu_count() and caps["mem_total"] > 0
    # The health endpoint.
    health = wait_for(d.health, what="/health")
    assert health["node"] == "agent-01" and health["pid"] == d.proc.pid
    assert health["code_version"] == entry.code_version and health["code_version"]
    assert health["db"]["state"] == "up" and health["started_at"]
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(f"http://127.0.0.1:{d.api_port}/other", timeout=2)
    assert info.value.code == 404
    # SIGTERM: marked stopped, exit 0, quickly.
    started = time.monotonic()
    assert d.terminate() == 0
    assert time.monotonic() - started < 5
    stopped = d.entry()
    assert stopped is not None and stopped.daemon_state == "stopped"
    assert stopped.daemon_pid is None
    lines = d.log.splitlines()
    assert lines and all(ISO_LINE.match(line) for line in lines), lines
    assert "registry up" in d.log and "marked agent-01 stopped" in d.log


def daemon_logins(dsn: str, node_id: str) -> list[str]:
    """The PostgreSQL users of the daemon's open connections (by its application_name)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        return [r[0] for r in conn.execute(
            "SELECT usename FROM pg_stat_activity WHERE application_name = %s",
            (f"skeleton-daemon {node_id}",))]


def test_daemon_heartbeats_as_its_own_role(db_dsn: str, start_daemon: Callable[..., Daemon]):
    d = start_daemon(db_dsn)
    wait_for(lambda: (h := d.health()) and h["db"]["state"] == "up", what="registry up")
    users = daemon_logins(db_dsn, "agent-01")
    assert users and all(u.startswith("skeleton_node_") for u in users), users
    assert d.terminate() == 0


def test_daemon_never_uses_the_operators_dsn(db_dsn: str, start_daemon: Callable[..., Daemon]):
    """Only the deployed config (registry.dsn, even SKELETON_DATABASE_URL): no connection at
    all, /health only, and one log line saying what to run."""
    d = start_daemon(db_dsn, own=False, env_extra={"SKELETON_DATABASE_URL": db_dsn})
    health = wait_for(d.health, what="/health")
    assert health["db"]["state"] == "none"
    assert "skeleton nodes credentials agent-01 --install" in health["db"]["error"]
    time.sleep(INTERVAL * 5)  # several heartbeat periods: still nothing
    assert daemon_logins(db_dsn, "agent-01") == []
    assert d.entry() is None  # nothing registered
    assert d.terminate() == 0
    assert d.log.count("skeleton nodes credentials agent-01 --install") == 1
    assert "no registry credentials of this node's own" in d.log
    assert "marked agent-01 stopped" not in d.log and "registry up" not in d.log


@pytest.mark.slow  # restarts PostgreSQL or real daemons: 4-7 s
def test_daemon_refuses_a_dsn_that_is_not_its_nodes_role(
        db_dsn: str, start_daemon: Callable[..., Daemon]):
    """The operator's DSN copied into the node's DSN file, or another node's credentials:
    refused on connect, nothing written, said once."""
    with PostgresRegistry(db_dsn, defaults=TEST_DEFAULTS) as reg:
        others = reg.issue_credentials("agent-02")

    def refused(daemon: Daemon) -> dict[str, Any] | None:
        health = daemon.health()
        return health if health and health["db"]["state"] == "refused" else None

    for own, whose in ((db_dsn, "not a node's role"), (others, "node agent-02's")):
        d = start_daemon(db_dsn, own=own)
        health = wait_for(functools.partial(refused, d), what="the DSN refused")
        assert whose in health["db"]["error"], health
        time.sleep(INTERVAL * 5)
        assert d.entry() is None and d.proc.poll() is None  # /health still served
        assert d.terminate() == 0
        assert d.log.count("refusing the registry DSN") == 1, d.log
        assert "skeleton nodes credentials agent-01 --install" in d.log
        assert "marked agent-01 stopped" not in d.log


@pytest.mark.slow  # restarts PostgreSQL or real daemons: 4-7 s
def test_daemon_survives_postgresql_restart_and_resumes_heartbeats(
        make_postgres: Callable[..., LocalPostgres], start_daemon: Callable[..., Daemon]):
    pg = make_postgres()
    init_schema(pg.dsn)
    d = start_daemon(pg.dsn)
    wait_for(lambda: (h := d.health()) and h["db"]["state"] == "up", what="registry up")
    pg.stop()
    wait_for(lambda: (h := d.health()) and h["db"]["state"] == "down", what="registry down")
    down = d.health()
    assert down is not None and f"127.0.0.1:{pg.port}" in down["db"]["error"]
    beats_while_down = down["db"]["heartbeats"]
    time.sleep(INTERVAL * 8)  # several retries while down...
    assert d.log.count("registry down") == 1  # ...yet one line per state change
    assert d.proc.poll() is None
    localdb.start_postgres(pg.base_dir, port=pg.port)
    wait_for(lambda: (h := d.health()) and h["db"]["state"] == "up"
             and h["db"]["heartbeats"] > beats_while_down, timeout=30, what="heartbeats resume")
    entry = wait_for(lambda: (e := d.entry()) and e.seen_ago is not None and e.seen_ago < 2
                     and e, what="fresh last_seen")
    assert entry.daemon_pid == d.proc.pid  # the same process: no restart of the daemon
    assert d.log.count("registry down") == 1 and d.log.count("registry up") == 2
    assert d.terminate() == 0


def test_daemon_starts_while_the_database_is_down(start_daemon: Callable[..., Daemon]):
    port = free_port()
    down = f"postgresql://skeleton:pw@127.0.0.1:{port}/skeleton"
    d = start_daemon(down, own=down)
    health = wait_for(lambda: (h := d.health()) and h["db"]["state"] == "down" and h,
                      what="health reporting the registry down")
    assert f"127.0.0.1:{port}" in health["db"]["error"]
    time.sleep(INTERVAL * 5)
    assert d.proc.poll() is None and d.log.count("registry down") == 1
    started = time.monotonic()
    assert d.terminate() == 0
    assert time.monotonic() - started < 8  # within daemon control's 10 s stop grace
    assert "could not mark agent-01 stopped" in d.log


def test_daemon_reregisters_a_node_removed_while_it_runs(
        db_dsn: str, start_daemon: Callable[..., Daemon]):
    d = start_daemon(db_dsn)
    wait_for(d.entry, what="registration")
    with PostgresRegistry(db_dsn, defaults=TEST_DEFAULTS) as reg:
        assert reg.remove_node("agent-01")
    wait_for(d.entry, what="re-registration")
    assert d.terminate() == 0


def test_daemon_without_a_database_serves_health_only(start_daemon: Callable[..., Daemon]):
    d = start_daemon(None)
    health = wait_for(d.health, what="/health")
    assert health["db"]["state"] == "none"
    assert d.terminate() == 0
    assert "no registry configured" in d.log


def test_daemon_for_an_unknown_node_exits_2_saying_why(
        db_dsn: str, start_daemon: Callable[..., Daemon]):
    d = start_daemon(db_dsn, env_node_id="not-in-config")
    assert d.proc.wait(15) == 2
    err = d.proc.stderr.read() if d.proc.stderr else ""
    assert "not-in-config" in err and "SKELETON_NODE_HOST" in err


def test_daemon_refuses_an_invalid_node_id_from_the_environment(
        db_dsn: str, start_daemon: Callable[..., Daemon]):
    d = start_daemon(db_dsn, env_node_id="../../etc/x")
    assert d.proc.wait(15) == 2
    assert "SKELETON_NODE_ID" in (d.proc.stderr.read() if d.proc.stderr else "")


def test_two_daemons_on_one_health_port_the_second_fails_clearly(
        db_dsn: str, start_daemon: Callable[..., Daemon], tmp_path: Path):
    first = start_daemon(db_dsn)
    wait_for(first.health, what="/health")
    # The same config (same api_port): the second daemon cannot serve /health.
    config = next(tmp_path.glob("config-0.yaml"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKELETON_")}
    env.update(SKELETON_NODE_ID="agent-01", SKELETON_HEALTH_BIND="127.0.0.1")
    proc = subprocess.run([sys.executable, "-m", "skeleton_app.agent", "--config", str(config)],
                          cwd=first.app_dir, env=env, capture_output=True, text=True,
                          timeout=30)
    assert proc.returncode == 2
    assert f"127.0.0.1:{first.api_port}" in proc.stderr
    assert first.terminate() == 0


# ------------------------------------------------------------------------ unit level


def test_resolve_node_by_env_hostname_or_route(tmp_path: Path, postgres: LocalPostgres):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"nodes": [
        {"id": "linux-01", "host": "10.0.0.1"}, {"id": "linux-02", "host": "10.0.0.2"}]}))
    settings = load_config(config, env={})
    assert agent.resolve_node(settings, env={"SKELETON_NODE_ID": "linux-02"}).host == "10.0.0.2"
    assert agent.resolve_node(settings, env={}, hostname="linux-01.lan").host == "10.0.0.1"
    node = agent.resolve_node(settings, env={"SKELETON_NODE_ID": "extra",
                                             "SKELETON_NODE_HOST": "10.0.0.9"})
    assert (node.id, node.host) == ("extra", "10.0.0.9")
    with pytest.raises(ConfigError, match="not in the nodes"):
        agent.resolve_node(settings, env={}, hostname="elsewhere")
    with pytest.raises(ConfigError, match="invalid host"):
        agent.resolve_node(settings, env={"SKELETON_NODE_ID": "extra",
                                          "SKELETON_NODE_HOST": "-oProxyCommand=x"})


def test_code_version_prefers_the_deploy_digest_then_git_then_the_tree(tmp_path: Path):
    app = tmp_path / "app"
    app.mkdir()
    (app / "main.py").write_text("print('v1')\n")
    tree_v1 = agent.code_version(app)
    assert re.fullmatch(r"tree:[0-9a-f]{16}", tree_v1)
    (app / "main.py").write_text("print('v2')\n")
    assert agent.code_version(app) != tree_v1
    (app / "__pycache__").mkdir()
    (app / "__pycache__" / "x.pyc").write_bytes(b"\0")
    assert agent.code_version(app) == agent.code_version(app)  # caches do not count
    git = ["git", "-C", str(app), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "x"], check=True)
    rev = subprocess.run([*git, "rev-parse", "--short=12", "HEAD"], check=True,
                         capture_output=True, text=True).stdout.strip()
    assert agent.code_version(app) == f"git:{rev}"
    (app / ".skeleton-deploy").mkdir()
    (app / ".skeleton-deploy" / "digest").write_text("0123456789abcdef\ntree=...\n")
    assert agent.code_version(app) == "0123456789abcdef"


def test_metrics_and_capabilities_are_json_ready():
    m = agent.metrics("/")
    assert len(m["load"]) == 3 and m["mem_total"] > 0 and m["disk_total"] > 0
    json.dumps(m)
    caps = agent.capabilities()
    assert caps["cpu_count"] == os.cpu_count()
    json.dumps(caps)


def test_gpu_report_through_a_fake_nvidia_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    # Replays the real capture from a GPU host (shared/fixtures), as nvidia-smi would print it.
    capture = nvidia_smi_fixture("nvidia-smi-query.csv")
    fake = tmp_path / "nvidia-smi"
    fake.write_text(f"#!/bin/sh\ncat '{capture}'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    report = agent.gpu_report()
    assert report.state.value == "ok" and report.gpus[0].name == "NVIDIA H200"
    assert agent.capabilities(report)["gpus"][0]["memory_total_mib"] == 143771
    fake.write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed because it couldn'\\''t"
                    " communicate with the NVIDIA driver'\nexit 9\n")
    report = agent.gpu_report()
    assert report.state.value == "error" and "NVIDIA-SMI has failed" in (report.error or "")


def test_health_bind_address_is_all_the_daemon_listens_on(
        db_dsn: str, start_daemon: Callable[..., Daemon]):
    d = start_daemon(db_dsn)
    wait_for(d.health, what="/health")

    def rows() -> int:
        with psycopg.connect(db_dsn) as conn:
            row = conn.execute("SELECT count(*) FROM nodes").fetchone()
            return int(row[0]) if row else 0

    # /health may answer before the first registration has committed: wait for the row,
    # then keep the DB side honest: exactly one row, our node.
    assert wait_for(rows, what="the daemon's registration") == 1
    lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    ours = [ln.split()[1] for ln in lines
            if ln.split()[3] == "0A" and int(ln.split()[1].split(":")[1], 16) == d.api_port]
    assert ours == ["0100007F:" + f"{d.api_port:04X}"]  # 127.0.0.1 only, as asked
    assert d.terminate() == 0


# ------------------------------------------------------------------------ on the testbed


def test_daemons_on_testbed_hosts_register_by_hostname_and_stop(make_testbed: Any):
    """Two namespaced hosts (own hostname, network, no DNS) run the daemon as the login user,
    reach PostgreSQL through the bridge gateway, register, heartbeat and stop on SIGTERM."""
    from skeleton_app.testing import testbed as tb_mod

    tb = make_testbed(2, db=True)
    init_schema(tb.db.dsn)
    python = bootstrap_testbed(tb)  # the hosts' own venv runs the daemon
    config = tb.config_path.read_text()
    code = ("import sys, runpy; sys.argv = ['agent']; "
            "runpy.run_module('skeleton_app.agent', run_name='__main__')")
    for host in tb.hosts:
        tb_mod.host_exec(tb, host.id, ["sh", "-c", "cat > /home/skeleton/app/config.yaml"],
                         input=config)
        # No SKELETON_NODE_ID: each host finds its entry by its own hostname.
        launch = (f"cd /home/skeleton/app && SKELETON_HEARTBEAT_INTERVAL=0.5 setsid"
                  f" {python} -c {shlex.quote(code)}"
                  " </dev/null >/dev/null 2>&1 &")
        tb_mod.host_exec(tb, host.id, ["su", "skeleton", "-s", "/bin/sh", "-c", launch])
    settings = load_config(tb.config_path, env={})

    def entries() -> dict[str, NodeEntry]:
        with PostgresRegistry(tb.db.dsn, defaults=TEST_DEFAULTS, connect_timeout=2) as reg:
            return {e.node.id: e for e in reg.list_entries()[0]}

    # /health must answer quickly although the hosts have no DNS resolver.
    seen = wait_for(lambda: (e := entries()) and len(e) == 2
                    and all(x.daemon_state == "running" and x.seen_ago is not None
                            for x in e.values()) and e, timeout=10, what="both registered")
    assert {i: e.node.host for i, e in seen.items()} == {h.id: h.ip for h in tb.hosts}
    first = tb.hosts[0]
    probe = ("import urllib.request; r = urllib.request.Request("
             f"'http://{first.ip}:{settings.daemon.api_port}/health'); r.add_header("
             "'Authorization', 'Bearer ' + open('/home/skeleton/app/.skeleton-deploy/"
             "health-token').read().strip()); print(urllib.request.urlopen(r, timeout=3)"
             ".read().decode())")
    health = json.loads(tb_mod.host_exec(tb, first.id, ["python3", "-c", probe]).stdout)
    assert health["node"] == first.id and health["db"]["state"] == "up"
    tb_mod.host_exec(tb, first.id, ["kill", "-TERM", str(health["pid"])])
    wait_for(lambda: entries()[first.id].daemon_state == "stopped", what="marked stopped")
    assert entries()[tb.hosts[1].id].daemon_state == "running"

    def log() -> str:
        path = "/home/skeleton/app/logs/skeleton-daemon.log"
        return tb_mod.host_exec(tb, first.id, ["cat", path]).stdout

    text = wait_for(lambda: (t := log()).rstrip().endswith("INFO stopped") and t,
                    what="the daemon's last log line")
    assert "registry up" in text and f"marked {first.id} stopped" in text


def test_own_credentials_come_from_the_node_never_from_registry_dsn(tmp_path: Path):
    path = tmp_path / "config.yaml"
    dsn_file = tmp_path / "node.dsn"
    path.write_text(yaml.safe_dump({"registry": {"dsn": "host=db user=operator",
                                                 "node_dsn_file": str(dsn_file)}}))
    settings = load_config(path, env={})
    assert agent.own_credentials(settings, env={}).registry.dsn is None  # no file: none
    dsn_file.write_text("host=db user=skeleton_node_x\n")
    assert agent.own_credentials(settings, env={}).registry.dsn == "host=db user=skeleton_node_x"
    env = {"SKELETON_NODE_DSN": "host=db user=from_env"}
    assert agent.own_credentials(settings, env=env).registry.dsn == "host=db user=from_env"
    dsn_file.write_text("host=db port=0\n")
    with pytest.raises(ConfigError, match=r"node\.dsn: malformed registry DSN"):
        agent.own_credentials(settings, env={})
    with pytest.raises(ConfigError, match="SKELETON_NODE_DSN"):
        agent.own_credentials(settings, env={"SKELETON_NODE_DSN": "port=x"})
