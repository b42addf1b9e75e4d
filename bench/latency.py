"""Case 2: warm command latency through a Python API, one pooled connection per tool.

Each tool gets a connection to the same host first (not timed), then runs `true` again and
again on it; every command is timed on its own (time.perf_counter around one call that
returns only once the exit status is in). Same key and known_hosts, strict, everywhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import paramiko
from fabric import Connection

from bench.measure import BenchError

OURS_CONNECTOR = "skeleton Connector.run"
OURS_EXECUTOR = "skeleton SSHExecutor.execute"
PARAMIKO = "raw Paramiko, TCP_NODELAY, read to EOF"
CONTROLMASTER = "OpenSSH via ControlMaster socket"
FABRIC_RUN = "Fabric Connection.run"
TOOLS = (OURS_CONNECTOR, OURS_EXECUTOR, PARAMIKO, CONTROLMASTER, FABRIC_RUN)

Runner = Callable[[], None]


def _check(ok: bool, label: str, detail: object) -> None:
    if not ok:
        raise BenchError(f"{label}: command failed: {detail}")


@contextlib.contextmanager
def ours_connector(config: Path, node_id: str) -> Iterator[Runner]:
    from skeleton_app.cluster import Cluster

    cluster = Cluster.from_config(config)
    node = cluster.node(node_id)
    connector = cluster.connector

    def run() -> None:
        result = connector.run(node, "true")
        _check(result.exit_code == 0, OURS_CONNECTOR, result)

    try:
        yield run
    finally:
        cluster.close()


@contextlib.contextmanager
def ours_executor(config: Path, node_id: str) -> Iterator[Runner]:
    from skeleton_app.remote import SSHExecutor

    loop = asyncio.new_event_loop()
    executor = SSHExecutor(config)

    def run() -> None:
        code, _out, err = loop.run_until_complete(executor.execute(node_id, "true"))
        _check(code == 0, OURS_EXECUTOR, err)

    try:
        yield run
    finally:
        executor.close()
        loop.close()


def _strict_client(known_hosts: Path) -> paramiko.SSHClient:
    client = paramiko.SSHClient()
    client.load_host_keys(str(known_hosts))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    return client


@contextlib.contextmanager
def raw_paramiko(ip: str, user: str, identity: Path, known_hosts: Path) -> Iterator[Runner]:
    sock = socket.create_connection((ip, 22), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    client = _strict_client(known_hosts)
    client.connect(ip, username=user, key_filename=str(identity), sock=sock,
                   look_for_keys=False, allow_agent=False, timeout=10)
    transport = client.get_transport()
    assert transport is not None

    def run() -> None:
        channel = transport.open_session(timeout=10)
        try:
            channel.exec_command("true")
            while channel.recv(65536):
                pass
            status = channel.recv_exit_status()
        finally:
            channel.close()
        _check(status == 0, PARAMIKO, status)

    try:
        yield run
    finally:
        client.close()


@contextlib.contextmanager
def controlmaster(ip: str, ssh_config: Path, workdir: Path,
                  env: dict[str, str]) -> Iterator[Runner]:
    control = workdir / "cm.sock"
    base = ["ssh", "-F", str(ssh_config), "-S", str(control)]
    master = subprocess.Popen([*base, "-M", "-N", "-o", "ControlPersist=no", ip],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 15
        while subprocess.run([*base, "-O", "check", ip], capture_output=True,
                             env=env).returncode != 0:
            if master.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"{CONTROLMASTER}: master to {ip} did not come up")
            time.sleep(0.05)

        def run() -> None:
            proc = subprocess.run([*base, ip, "true"], stdin=subprocess.DEVNULL,
                                  capture_output=True, env=env)
            _check(proc.returncode == 0, CONTROLMASTER, proc.stderr)

        yield run
    finally:
        subprocess.run([*base, "-O", "exit", ip], capture_output=True, env=env)
        try:
            master.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(master.pid, signal.SIGKILL)
            master.wait()


@contextlib.contextmanager
def fabric_run(ip: str, user: str, identity: Path, known_hosts: Path) -> Iterator[Runner]:
    conn = Connection(ip, user=user, connect_kwargs={
        "key_filename": str(identity), "look_for_keys": False, "allow_agent": False})
    conn.client.load_host_keys(str(known_hosts))
    conn.client.set_missing_host_key_policy(paramiko.RejectPolicy())
    conn.open()

    def run() -> None:
        result = conn.run("true", hide=True, warn=True)
        _check(result.exited == 0, FABRIC_RUN, result)

    try:
        yield run
    finally:
        conn.close()


def measure(runners: dict[str, Runner], *, warmup: int, commands: int,
            block: int = 10) -> dict[str, list[float]]:
    """Per-command seconds: `warmup` discarded calls each, then `commands` calls each, in
    interleaved blocks of `block` so background noise hits every tool alike."""
    for run in runners.values():
        for _ in range(warmup):
            run()
    times: dict[str, list[float]] = {label: [] for label in runners}
    while any(len(t) < commands for t in times.values()):
        for label, run in runners.items():
            for _ in range(min(block, commands - len(times[label]))):
                started = time.perf_counter()
                run()
                times[label].append(time.perf_counter() - started)
    return times
