"""The daemon's GET /metrics and its pruning of the history, on a real daemon subprocess
against a real PostgreSQL (the `start_daemon` fixture of test_agent.py): the exposition is
parsed with prometheus_client's own parser and checked against this machine's real values;
GPU names from the shared nvidia-smi capture, made hostile, come back as the same text;
the token rules are /health's; back-dated history rows are pruned and down-sampled by the
daemon itself; and a daemon on a namespaced test host is scraped by the controller over the
bridge, with the token."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from skeleton_app.agent import read_meminfo
from skeleton_app.config import load_config
from skeleton_app.nodes import Node
from skeleton_app.registry import NodeSpec, PostgresRegistry
from tests.registry.test_agent import Daemon, start_daemon, wait_for
from tests.registry.test_metrics_retention import synthesize
from tests.support.db_fixtures import TEST_DEFAULTS
from tests.support.helpers import bootstrap_testbed
from tests.support.shared_fixtures import nvidia_smi_fixture

__all__ = ["start_daemon"]  # the fixture, used by name

HOSTILE = 'NVIDIA "H200"} \x1b[31m<b>x</b> \\ {evil="1"'


def scrape(d: Daemon, token: str | None = None) -> dict[str, Metric]:
    request = urllib.request.Request(f"http://127.0.0.1:{d.api_port}/metrics")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=15) as r:
        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = r.read().decode()
    return {m.name: m for m in text_string_to_metric_families(text)}


def value(families: dict[str, Metric], metric: str, /, **labels: str) -> float:
    family = families[metric]
    (sample,) = [s for s in family.samples if all(s.labels.get(k) == v
                                                  for k, v in labels.items())]
    return float(sample.value)


def fake_nvidia_smi(tmp_path: Path) -> Path:
    """A bin dir whose nvidia-smi replays the shared capture with a hostile GPU name."""
    capture = nvidia_smi_fixture("nvidia-smi-query.csv").read_text()
    assert "NVIDIA H200" in capture
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "capture.csv").write_text(capture.replace("NVIDIA H200", HOSTILE))
    fake = bindir / "nvidia-smi"
    fake.write_text(f"#!/bin/sh\ncat '{bindir / 'capture.csv'}'\n")
    fake.chmod(0o755)
    return bindir


def test_metrics_are_the_nodes_real_values(db_dsn: str, start_daemon: Callable[..., Daemon],
                                          tmp_path: Path) -> None:
    bindir = fake_nvidia_smi(tmp_path)
    d = start_daemon(db_dsn, env_extra={"PATH": f"{bindir}:{os.environ['PATH']}"})
    health = wait_for(lambda: (h := d.health()) and h["db"]["state"] == "up" and h,
                      what="registry up")
    m = scrape(d)  # bound to loopback: no token needed
    assert value(m, "skeleton_node_cpus") == os.cpu_count()
    assert value(m, "skeleton_node_memory_total_bytes") == read_meminfo()["MemTotal"]
    assert 0 < value(m, "skeleton_node_memory_available_bytes") <= read_meminfo()["MemTotal"]
    assert value(m, "skeleton_node_disk_total_bytes") == shutil.disk_usage(d.app_dir).total
    assert value(m, "skeleton_node_load1") >= 0
    assert 0 <= value(m, "skeleton_node_cpu_busy_ratio") <= 1
    # The daemon itself: up, its start time and code version as /health reports them.
    assert value(m, "skeleton_daemon_up") == 1
    started = value(m, "skeleton_daemon_start_time_seconds")
    assert abs(started - datetime.fromisoformat(health["started_at"]).timestamp()) <= 1
    (info,) = m["skeleton_daemon_info"].samples  # an info metric: a gauge of 1 in 0.0.4
    assert info.name == "skeleton_daemon_info" and info.value == 1
    assert info.labels["node"] == "agent-01"
    assert info.labels["code_version"] == health["code_version"]
    assert value(m, "skeleton_daemon_registry_state", state="up") == 1
    # The GPU of the real capture, its hostile name escaped by prometheus_client and parsed
    # back to the very same text (no injected label or sample).
    gpu = {"gpu": "0", "name": HOSTILE}
    assert value(m, "skeleton_node_gpu_memory_total_bytes", **gpu) == 143771 * 2**20
    assert value(m, "skeleton_node_gpu_memory_used_bytes", **gpu) == 0
    assert value(m, "skeleton_node_gpu_utilization_ratio", **gpu) == 0
    assert value(m, "skeleton_node_gpu_report_state", state="ok") == 1
    assert "evil" not in {k for s in m["skeleton_node_gpu_memory_total_bytes"].samples
                          for k in s.labels}
    # No jobs dir: no jobs metric. One running attempt (as job.sh records it), then ended.
    assert "skeleton_node_jobs_running" not in m
    attempt = d.app_dir / "jobs" / "7" / "a1"
    attempt.mkdir(parents=True)
    with subprocess.Popen(["sleep", "60"]) as sleeper:
        try:
            stat = Path(f"/proc/{sleeper.pid}/stat").read_text()
            start = stat[stat.rfind(")") + 1:].split()[19]
            boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
            (attempt / "pgid").write_text(f"{sleeper.pid} {start} {boot}\n")
            assert value(scrape(d), "skeleton_node_jobs_running") == 1
            (attempt / "pgid").write_text(f"{sleeper.pid} {int(start) + 1} {boot}\n")
            assert value(scrape(d), "skeleton_node_jobs_running") == 0  # a recycled pid
            (attempt / "pgid").write_text(f"{sleeper.pid} {start} {boot}\n")
            (attempt / "exit").write_text("0 1 2\n")
            assert value(scrape(d), "skeleton_node_jobs_running") == 0
        finally:
            sleeper.kill()
    # The heartbeat carries the count too (into the history's jobs_running): a heartbeat
    # sent while the attempt ran says 1, the next ones 0.
    entry = wait_for(lambda: (e := d.entry()) and e.metrics.get("jobs_running") == 0 and e,
                     what="jobs_running 0 in a heartbeat after the attempt ended")
    assert entry.metrics["jobs_running"] == 0


def test_metrics_off_loopback_need_the_token(db_dsn: str,
                                             start_daemon: Callable[..., Daemon]) -> None:
    # Every address (0.0.0.0) is not loopback: /metrics then needs the token, like /health's
    # details; /health's liveness bit stays open.
    d = start_daemon(None, env_extra={"SKELETON_HEALTH_BIND": "0.0.0.0"})
    wait_for(lambda: d.health(token=False), what="/health")
    token = (d.app_dir / ".skeleton-deploy" / "health-token").read_text().strip()
    for offered in (None, "wrong-token-0123456789", token + "x"):
        with pytest.raises(urllib.error.HTTPError) as info:
            scrape(d, offered)
        assert info.value.code == 401
        assert info.value.headers["WWW-Authenticate"].startswith("Bearer")
        assert token not in info.value.read().decode()
    m = scrape(d, token)
    assert value(m, "skeleton_daemon_up") == 1
    assert value(m, "skeleton_daemon_registry_state", state="none") == 1  # no registry
    assert d.health(token=False) == {"status": "ok"}


def test_the_daemon_prunes_its_own_history(db_dsn: str,
                                           start_daemon: Callable[..., Daemon]) -> None:
    with PostgresRegistry(db_dsn, defaults=TEST_DEFAULTS, connect_timeout=5) as reg:
        for node in ("agent-01", "other"):
            reg.upsert_node(NodeSpec.from_node(Node(id=node, host="127.0.0.1")))
    week = 7 * 24 * 3600.0
    for node in ("agent-01", "other"):
        synthesize(db_dsn, node, start=week + 3600, end=600, step=60)  # 8 days, a row a minute

    def ages() -> dict[tuple[str, int], float]:
        with psycopg.connect(db_dsn, autocommit=True) as conn:
            rows = conn.execute("SELECT node_id, step, extract(epoch FROM now() - min(at))"
                                " FROM node_metrics GROUP BY node_id, step").fetchall()
        return {(str(r[0]), int(r[1])): float(r[2]) for r in rows}

    assert ages()[("agent-01", 0)] > week
    d = start_daemon(db_dsn)
    # A backlog of 8 days takes a few bounded prunes, one per heartbeat.
    done = wait_for(lambda: (a := ages()).get(("agent-01", 0), week) < 2 * 3600 + 120
                    and a.get(("agent-01", 600), week * 2) <= week + 600
                    and ("agent-01", 60) in a and a, timeout=60, what="the daemon's prunes")
    assert done[("other", 0)] > week  # another node's rows: not its own, untouched
    assert ("other", 60) not in done
    assert d.proc.poll() is None


def test_a_testbed_hosts_daemon_serves_metrics_to_the_controller(make_testbed: Any) -> None:
    """A daemon on a namespaced test host, from the host's own .venv (bootstrap installs
    prometheus_client there), listens on the host's cluster address: the controller scrapes
    it over the bridge with the token only, and the values are the host's own."""
    from skeleton_app.testing import testbed as tb_mod

    tb = make_testbed(1)
    python = bootstrap_testbed(tb)
    host = tb.hosts[0]
    tb_mod.host_exec(tb, host.id, ["sh", "-c", "cat > /home/skeleton/app/config.yaml"],
                     input=tb.config_path.read_text())
    code = ("import sys, runpy; sys.argv = ['agent']; "
            "runpy.run_module('skeleton_app.agent', run_name='__main__')")
    launch = (f"cd /home/skeleton/app && setsid {python} -c {shlex.quote(code)}"
              " </dev/null >/dev/null 2>&1 &")
    tb_mod.host_exec(tb, host.id, ["su", "skeleton", "-s", "/bin/sh", "-c", launch])
    port = load_config(tb.config_path, env={}).daemon.api_port
    url = f"http://{host.ip}:{port}/metrics"

    def answer(token: str | None) -> tuple[int, str]:
        request = urllib.request.Request(url)
        if token is not None:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=15) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, ""
        except OSError:
            return 0, ""

    assert wait_for(lambda: answer(None)[0], what="the daemon's port") == 401
    token = tb_mod.host_exec(tb, host.id, [
        "cat", "/home/skeleton/app/.skeleton-deploy/health-token"]).stdout.strip()
    status, text = answer(token)
    assert status == 200
    m = {f.name: f for f in text_string_to_metric_families(text)}
    facts = json.loads(tb_mod.host_exec(tb, host.id, ["su", "skeleton", "-s", "/bin/sh", "-c", (
        f"{python} -c 'import json, os, shutil; print(json.dumps([os.cpu_count(),"
        " shutil.disk_usage(\"/home/skeleton/app\").total]))'")]).stdout)
    assert value(m, "skeleton_node_cpus") == facts[0]
    assert value(m, "skeleton_node_disk_total_bytes") == facts[1]
    assert value(m, "skeleton_node_memory_total_bytes") == read_meminfo()["MemTotal"]
    assert m["skeleton_daemon_info"].samples[0].labels["node"] == host.id
    pid = int(tb_mod.host_exec(tb, host.id, ["pgrep", "-u", "skeleton", "-f",
                                             "skeleton_app.agent"]).stdout.split()[0])
    tb_mod.host_exec(tb, host.id, ["kill", "-TERM", str(pid)])
