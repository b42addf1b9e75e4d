"""`skeleton cluster bootstrap` on real test hosts: each node gets `<app_dir>/.venv` with the
project and its dependencies from wheels built on the controller (the suite has no network:
./scripts/setup pre-built the dependency wheels into .wheelhouse, which the testbed config
names as `bootstrap.wheelhouse`); the daemon then runs from that venv. Also the logic that
decides whether a node's Python can take the wheels, on made-up interpreters."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from skeleton_app.ops.bootstrap import NodePython, Wheel, Wheelhouse, check_python, satisfies
from skeleton_app.testing import testbed as tb_mod
from skeleton_app.testing.testbed import Testbed
from tests.support.deploy_support import (
    daemons_stopped_after,
    host_path,
    settings_of,
    unique_app_dir,
)
from tests.support.helpers import chown_to_user, config_variant, skeleton

PORT = 8781  # the real daemon's port in these tests
OLD_PYTHON = "#!/bin/sh\necho 'Python 3.8.10'\n"  # answers every call like an old python3


def _variant(testbed: Testbed, tmp_path: Path, app_dir: str) -> Path:
    """The testbed's config with a fresh app dir; the daemon reads the copy that is put in
    the app dir (tmp_path is not readable by the hosts' user)."""
    return config_variant(testbed, tmp_path / "config.yaml", app={"dir": app_dir}, daemon={
        "command": ".venv/bin/python -m skeleton_app daemon run --config config.yaml",
        "api_port": PORT, "start_grace": 1, "stop_grace": 3})


def _node_run(testbed: Testbed, node: str, line: str) -> str:
    """`line` on the node as its login user, from / (so nothing of the controller's checkout
    is on sys.path)."""
    proc = tb_mod.host_exec(testbed, node, ["su", "-s", "/bin/sh", tb_mod.USER, "-c",
                                            f"cd / && {line}"], check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_bootstrap_from_scratch_old_python_refused_then_up_to_date_and_daemon_runs(
        testbed: Testbed, tmp_path: Path) -> None:
    app_dir = unique_app_dir("boot")
    config = _variant(testbed, tmp_path, app_dir)
    python3 = "/usr/bin/python3"
    tb_mod.replace_command(testbed, "node-03", python3, OLD_PYTHON)
    try:
        proc = skeleton("cluster", "bootstrap", "-n", "node-0[1-3]", config=config, timeout=600)
    finally:
        tb_mod.unhide_command(testbed, "node-03", python3)
    # node-03: one clear line, nothing sent; the others are installed all the same.
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert ("skeleton: node-03: Python 3.8.10 is too old: skeleton-app needs Python >=3.11"
            in proc.stderr), proc.stderr
    assert "Traceback" not in proc.stderr
    assert not host_path(testbed, "node-03", f"{app_dir}/.venv").exists()
    for node in ("node-01", "node-02"):
        assert re.search(rf"^{node} +installed +3\.11", proc.stdout, re.M), proc.stdout
        # The node's own venv has the package and its dependencies (not the controller's).
        out = _node_run(testbed, node, f"{app_dir}/.venv/bin/python -c " + shlex.quote(
            "import skeleton_app, click, paramiko, psycopg, sys;"
            " print(skeleton_app.__file__); print(sys.prefix)"))
        assert out.splitlines() == [
            f"{app_dir}/.venv/lib/python3.11/site-packages/skeleton_app/__init__.py",
            f"{app_dir}/.venv"], out

    # Again: the digest recorded in each .venv is unchanged, nothing is installed.
    proc = skeleton("cluster", "bootstrap", "-n", "node-0[1-2]", "--json", config=config,
                    timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    nodes = json.loads(proc.stdout)["nodes"]
    assert {n: e["data"]["state"] for n, e in nodes.items()} == {
        "node-01": "up-to-date", "node-02": "up-to-date"}
    proc = skeleton("cluster", "bootstrap", "-n", "node-01", config=config)
    assert re.search(r"^node-01 +up to date ", proc.stdout, re.M), proc.stdout

    # The daemon starts from that venv (the default daemon.command's form).
    for node in ("node-01", "node-02"):
        copy = host_path(testbed, node, f"{app_dir}/config.yaml")
        copy.write_text(config.read_text())
        chown_to_user(copy)
    with daemons_stopped_after(settings_of(config)):
        proc = skeleton("cluster", "daemon", "start", "-n", "node-0[1-2]", "--wait-healthy",
                        "--health-timeout", "30", config=config)
        log = host_path(testbed, "node-01", f"{app_dir}/logs/skeleton-daemon.log")
        assert proc.returncode == 0, proc.stdout + proc.stderr + (
            log.read_text()[-2000:] if log.exists() else "")
        proc = skeleton("cluster", "daemon", "status", "-n", "node-0[1-2]", "--json",
                        config=config)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        for entry in json.loads(proc.stdout)["nodes"].values():
            assert entry["data"]["state"] == "running", entry
            pid = entry["data"]["pid"]
            exe = _node_run(testbed, entry["node"], f"readlink /proc/{pid}/exe").strip()
            cmdline = _node_run(testbed, entry["node"], f"tr '\\0' ' ' </proc/{pid}/cmdline")
            assert exe.startswith("/usr/bin/python3"), exe
            assert cmdline.startswith(".venv/bin/python -m skeleton_app daemon run"), cmdline


def test_bootstrap_needs_its_wheels_without_network(testbed: Testbed, tmp_path: Path) -> None:
    """A wheelhouse that is not there: exit 2 before any node is touched."""
    config = _variant(testbed, tmp_path, unique_app_dir("boot"))
    proc = skeleton("cluster", "bootstrap", "--wheelhouse", str(tmp_path / "nowhere"),
                    config=config)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.strip() == (
        f"skeleton: error: --wheelhouse: '{tmp_path / 'nowhere'}' is not a directory")


def test_session_hosts_run_the_daemon_from_their_own_venv(testbed: Testbed,
                                                          node_python: str) -> None:
    """The testbed's daemon.command uses the host's bootstrapped venv, not the controller's
    interpreter; the session fixture made it on every host."""
    command = settings_of(testbed.config_path).daemon.command
    assert command.startswith(".venv/bin/python -m skeleton_app daemon run --config ")
    for host in testbed.hosts:
        out = _node_run(testbed, host.id, f"{node_python} -c 'import click; print(click.__file__)'")
        assert out.startswith(f"{tb_mod.APP_DIR}/.venv/"), out


# ---------------------------------------------------------------- the node's Python (logic)


def _wheel(file: str, requires_python: str | None = None) -> Wheel:
    py, abi, plat = file[:-4].split("-")[-3:]
    return Wheel(file=file, name=file.split("-")[0], requires_python=requires_python,
                 tags=tuple((p, a, pl) for p in py.split(".") for a in abi.split(".")
                            for pl in plat.split(".")), record="")


def _house(*wheels: Wheel) -> Wheelhouse:
    return Wheelhouse(dir="/nowhere", wheels=wheels, project=wheels[0], pip=wheels[0], requires=(),
                      python="python3", digest="x")


DEBIAN12 = NodePython(banner="Python 3.11.2", impl="cpython", version=(3, 11, 2),
                      machine="x86_64", libc="glibc 2.36")
PROJECT = _wheel("skeleton_app-0.1.0-py3-none-any.whl", ">=3.11")
NATIVE = [_wheel("psycopg_binary-3.3.9-cp311-cp311-manylinux2014_x86_64"
                 ".manylinux_2_17_x86_64.whl", ">=3.10"),
          _wheel("cryptography-51.0.1-cp311-abi3-manylinux_2_34_x86_64.whl"),
          _wheel("pyyaml-6.0.4-cp311-cp311-manylinux2014_x86_64.manylinux_2_28_x86_64.whl")]


def test_a_node_like_the_controller_takes_every_wheel() -> None:
    assert check_python(_house(PROJECT, *NATIVE), DEBIAN12) is None


@pytest.mark.parametrize("node, expected", [
    (NodePython(banner="Python 3.9.2", impl="cpython", version=(3, 9, 2), machine="x86_64",
                libc="glibc 2.31"),
     "Python 3.9.2 is too old: skeleton-app needs Python >=3.11"),
    (NodePython.parse({"python": "Python 3.8.10"}),  # the probe code did not run
     "Python 3.8.10 is too old"),
    (NodePython(banner="Python 3.12.1", impl="cpython", version=(3, 12, 1), machine="x86_64",
                libc="glibc 2.39"),
     "the wheel psycopg_binary-3.3.9-cp311-cp311-manylinux2014_x86_64.manylinux_2_17_x86_64"
     ".whl does not fit this node's Python (cpython 3.12.1, x86_64, glibc 2.39)"),
    (NodePython(banner="Python 3.11.2", impl="cpython", version=(3, 11, 2), machine="aarch64",
                libc="glibc 2.36"),
     "the wheel psycopg_binary-3.3.9-cp311-cp311-manylinux2014_x86_64"),
    (NodePython(banner="Python 3.11.9", impl="cpython", version=(3, 11, 9), machine="x86_64",
                libc=""),  # musl (Alpine): manylinux wheels need glibc
     "does not fit this node's Python (cpython 3.11.9, x86_64)"),
    (NodePython(banner="Python 3.11.2", impl="cpython", version=(3, 11, 2), machine="x86_64",
                libc="glibc 2.31"),  # older glibc than cryptography's manylinux_2_34
     "the wheel cryptography-51.0.1-cp311-abi3-manylinux_2_34_x86_64.whl does not fit"),
])
def test_a_node_that_cannot_take_the_wheels_gets_one_clear_line(node: NodePython,
                                                                 expected: str) -> None:
    problem = check_python(_house(PROJECT, *NATIVE), node)
    assert problem is not None and expected in problem and "\n" not in problem, problem


def test_abi3_wheels_fit_newer_pythons_and_specifiers_are_read_as_pip_reads_them() -> None:
    newer = NodePython(banner="", impl="cpython", version=(3, 13, 0), machine="x86_64",
                       libc="glibc 2.40")
    assert check_python(_house(PROJECT, NATIVE[1]), newer) is None
    assert satisfies((3, 11, 2), ">=3.11") and not satisfies((3, 10, 12), ">=3.11")
    assert satisfies((3, 11, 2), ">=3.8,!=3.9.*,<4") and not satisfies((3, 9, 1), "!=3.9.*")
    assert satisfies((3, 11, 2), "~=3.10") and not satisfies((3, 11, 2), "~=3.10.1")
