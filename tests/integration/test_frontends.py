"""The other front ends: `inv` (tasks.py) and `fab` (fabfile.py) run as subprocesses from the
repository root against the real testbed, and the checks that keep all front ends thin:
the library imports without Click, tasks.py/fabfile.py import only the library and
Invoke/Fabric, and their tasks call the same application commands (`skeleton_app.app.
commands`) and views as the Click commands.
"""

from __future__ import annotations

import ast
import inspect
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import pytest

from skeleton_app.testing.testbed import Testbed
from tests.support.deploy_support import (
    daemons_stopped_after,
    host_path,
    make_source,
    settings_of,
    unique_app_dir,
    variant,
)
from tests.support.frontends import BIN, fab, inv, out, run_tool
from tests.support.helpers import REPO, chown_to_user, config_variant, skeleton

INV_TASKS = ["bootstrap", "copy", "daemon", "deploy", "exec", "fetch", "jack-connect",
             "jack-disconnect", "jack-link", "jack-mesh", "jack-start", "jack-status",
             "jack-stop", "jack-unlink", "jobs-cancel",
             "jobs-dispatch", "jobs-list", "jobs-retry", "jobs-show", "jobs-submit", "logs",
             "releases", "rollback", "status", "sync-models"]
FAB_TASKS = ["daemon", "deploy", "get", "put", "rollback", "run", "status", "uptime"]
PORT = 8793  # the stand-in daemon's port in these tests


def empty_known_hosts(testbed: Testbed, tmp_path: Path) -> tuple[Path, Path]:
    known = tmp_path / "known_hosts"
    known.write_text("")
    return config_variant(testbed, tmp_path / "unknown-keys.yaml",
                          ssh={"known_hosts": str(known)}), known


@pytest.fixture
def app_dir(testbed: Testbed) -> Iterator[str]:
    """An app dir of this test's own on every session host, removed afterwards."""
    path = unique_app_dir("frontends")
    yield path
    for host in testbed.hosts:
        shutil.rmtree(host_path(testbed, host.id, path), ignore_errors=True)


# ---------------------------------------------------------------- listing and help


def _task_params(module: str, task: str) -> list[str]:
    """The parameters of a task function (without the context), as flags are spelled."""
    source = (REPO / f"{module}.py").read_text()
    fn = next(n for n in ast.parse(source).body
              if isinstance(n, ast.FunctionDef) and n.name == task.replace("-", "_"))
    return [a.arg.replace("_", "-") for a in fn.args.args[1:]]


@pytest.mark.parametrize("tool, tasks", [("inv", INV_TASKS), ("fab", FAB_TASKS)])
def test_list_shows_every_task_with_one_line_help(tool: str, tasks: list[str]) -> None:
    proc = run_tool(tool, "--list")
    assert proc.returncode == 0, out(proc)
    listed = dict(re.findall(r"^  (\S+) +(\S.*)$", proc.stdout, re.MULTILINE))
    assert sorted(listed) == tasks, proc.stdout
    assert all(len(text) > 10 for text in listed.values()), listed


@pytest.mark.parametrize("tool, module, task", [
    *[("inv", "tasks", t) for t in INV_TASKS], *[("fab", "fabfile", t) for t in FAB_TASKS]])
def test_help_documents_every_option(tool: str, module: str, task: str) -> None:
    proc = run_tool(tool, "--help", task)
    assert proc.returncode == 0, out(proc)
    options = proc.stdout.split("Options:", 1)[1]
    for flag in _task_params(module, task):
        # `-x STRING, --flag=STRING   the help text` (help starts on the flag's line)
        line = re.search(rf"^\s+(?:-\w[^,]*, )?--(?:\[no-\])?{flag}\b\S*\s{{2,}}(\S.*)$",
                         options, re.MULTILINE)
        assert line, f"{tool} --help {task}: --{flag} undocumented:\n{proc.stdout}"
    if tool == "inv":
        # The jobs tasks select no nodes (the dispatcher routes each job): only --config.
        # jack-connect/-disconnect name ONE node, as `skeleton jack connect NODE A B`;
        # jack-link and jack-unlink name their two nodes (--hub, --client).
        commons = ("config",) if task.startswith("jobs-") else (
            ("config", "node", "json") if task in ("jack-connect", "jack-disconnect") else
            ("config", "json") if task in ("jack-link", "jack-unlink") else
            ("config", "node", "role", "exclude", "fanout", "json", "list-hosts"))
        for common in commons:
            assert f"--{common}" in options, (task, common)


# ---------------------------------------------------------------- inv against the testbed


def test_inv_exec_renders_like_the_cli_and_keeps_the_exit_code_contract(
        testbed: Testbed, tmp_path: Path) -> None:
    cfg = testbed.config_path
    ok = inv("exec", "--command", "echo hi-$((6*7))", "--node", "node-0[1-3]", config=cfg)
    assert ok.returncode == 0, out(ok)
    assert "---------------- node-[01-03] ----------------\nhi-42\n" in ok.stdout
    cli = skeleton("cluster", "exec", "echo hi-$((6*7))", "--node", "node-0[1-3]", config=cfg)
    assert cli.returncode == 0 and cli.stdout == ok.stdout

    failed = inv("exec", "--command", "exit 3", "--node", "node-01", "--node", "node-02",
                 config=cfg)
    assert failed.returncode == 1, out(failed)
    assert "node-[01-02]: exit 3" in failed.stdout

    for task, args, message in [
        ("exec", ("--command", "true", "--node", "linux-01"), "known nodes: node-[01-06]"),
        ("exec", ("--node", "node-01"), "--command is required"),
        ("exec", ("--command", "true", "--timeout", "2s"), "--timeout: expected a number"),
        ("exec", ("--command", "true", "--timeout", "-1"), "--timeout: expected a number"),
        ("status", ("--fanout", "0"), "--fanout: expected a whole number >= 1, got '0'"),
        ("deploy", ("--lock-wait", "soon"), "--lock-wait: expected a number of seconds"),
        ("daemon", ("--action", "restart", "--batch", "two"), "--batch: expected a whole"),
    ]:
        usage = inv(task, *args, config=cfg)
        assert usage.returncode == 2, out(usage)
        assert usage.stderr.startswith("skeleton: error: ") and message in usage.stderr
        assert "Traceback" not in usage.stderr

    bad = config_variant(testbed, tmp_path / "bad.yaml", ssh={"connect_timeout": -1})
    usage = inv("exec", "--command", "true", config=bad)
    assert usage.returncode == 2, out(usage)
    assert "ssh.connect_timeout: expected a positive number" in usage.stderr

    no_db = config_variant(testbed, tmp_path / "no-db.yaml", registry={
        "dsn": "postgresql://skeleton@127.0.0.1:1/skeleton", "connect_timeout": 2})
    registry = inv("exec", "--command", "touch ~/inv-ran-without-registry", config=no_db)
    assert registry.returncode == 3, out(registry)
    assert registry.stderr.startswith("skeleton: error: ") and "127.0.0.1:1" in registry.stderr

    timed_out = inv("exec", "--command", "sleep 30", "--timeout", "1", "--node", "node-02",
                    config=cfg)
    assert timed_out.returncode == 4, out(timed_out)
    assert "node-02: timeout: command exceeded its 1s timeout" in timed_out.stdout

    unknown, _ = empty_known_hosts(testbed, tmp_path)
    refused = inv("exec", "--command", "true", "--node", "node-01", config=unknown)
    assert refused.returncode == 4, out(refused)
    assert "node-01: hostkey-unknown" in refused.stdout
    for node in testbed.hosts:
        assert not (node.home / "inv-ran-without-registry").exists()


def test_inv_exec_stream_and_json(testbed: Testbed) -> None:
    cfg = testbed.config_path
    stream = inv("exec", "--command", "echo out; echo err >&2", "--node", "node-0[1-2]",
                 "--stream", config=cfg)
    assert stream.returncode == 0, out(stream)
    assert sorted(stream.stdout.splitlines()) == [
        "node-01 [err]: err", "node-01: out", "node-02 [err]: err", "node-02: out"]
    as_json = inv("exec", "--command", "hostname", "--node", "node-03", "--json", config=cfg)
    data = json.loads(as_json.stdout)
    assert data["ok"] == ["node-03"] and data["nodes"]["node-03"]["stdout"] == "node-03\n"


def test_inv_list_hosts_prints_the_selection_as_the_cli_does(testbed: Testbed) -> None:
    """`inv TASK --list-hosts`: the nodes (those written to, for sync-models), nothing run:
    an exec without a command, and a deploy from a source that does not exist, list too."""
    cfg = testbed.config_path
    for args, cli_args in (
            (["exec", "--role", "tts"], ["cluster", "exec", "--role", "tts"]),
            (["deploy", "--node", "node-0[1-3]", "--exclude", "node-02", "--source",
              "/nonexistent"], ["cluster", "deploy", "-n", "node-0[1-3]", "--exclude",
                                "node-02"]),
            (["sync-models", "--source-node", "node-01", "--node", "node-0[1-3]"],
             ["cluster", "sync-models", "--source-node", "node-01", "-n", "node-0[1-3]"]),
            (["jack-status", "--node", "node-04"], ["jack", "status", "-n", "node-04"])):
        listed = inv(*args, "--list-hosts", config=cfg)
        cli = skeleton(*cli_args, "--list-hosts", config=cfg)
        assert listed.returncode == cli.returncode == 0, out(listed) + cli.stderr
        assert listed.stdout == cli.stdout and listed.stdout.strip(), (args, out(listed))


def test_inv_status_table_and_json_match_the_cli(testbed: Testbed) -> None:
    cfg = testbed.config_path
    table = inv("status", "--node", "node-0[1-2]", config=cfg)
    assert table.returncode == 0, out(table)
    for host in testbed.hosts[:2]:
        # Piped: plain aligned text, no box drawing.
        assert re.search(rf"^{host.id} +{re.escape(host.ip)} +✗ ", table.stdout, re.M), table.stdout
    assert "node-03" not in table.stdout
    mine = json.loads(inv("status", "--json", "--role", "tts", config=cfg).stdout)
    theirs = json.loads(skeleton("cluster", "status", "--json", "--role", "tts",
                                 config=cfg).stdout)
    assert sorted(mine["nodes"]) == sorted(theirs["nodes"]) == ["node-02", "node-04", "node-06"]
    for node, entry in mine["nodes"].items():
        assert entry["data"]["status"]["load"], entry
        assert entry["data"].keys() == theirs["nodes"][node]["data"].keys()
        assert entry["data"]["status"].keys() == theirs["nodes"][node]["data"]["status"].keys()


def test_inv_deploy_then_daemon(testbed: Testbed, tmp_path: Path, app_dir: str) -> None:
    cfg = variant(testbed, tmp_path, app_dir=app_dir, port=PORT)
    src = make_source(tmp_path / "src", "A")
    version = f"{app_dir}/VERSION"
    with daemons_stopped_after(settings_of(cfg)):
        dry = inv("deploy", "--node", "node-0[1-2]", "--source", str(src), "--dry-run",
                  config=cfg)
        assert dry.returncode == 0, out(dry)
        assert "VERSION" in dry.stdout and "would change" in dry.stdout
        assert not host_path(testbed, "node-01", version).exists()

        done = inv("deploy", "--node", "node-0[1-2]", "--source", str(src), config=cfg)
        assert done.returncode == 0, out(done)
        assert "2/2 node(s) ok" in done.stdout
        for node in ("node-01", "node-02"):
            assert host_path(testbed, node, version).read_text() == "A\n"
        assert not host_path(testbed, "node-03", version).exists()
        again = inv("deploy", "--node", "node-01", "--source", str(src), "--json", config=cfg)
        assert json.loads(again.stdout)["nodes"]["node-01"]["data"]["unchanged"] is True

        started = inv("daemon", "--action", "start", "--node", "node-01", config=cfg)
        assert started.returncode == 0, out(started)
        status = inv("daemon", "--action", "status", "--node", "node-0[1-2]", "--json",
                     config=cfg)
        assert status.returncode == 1, out(status)  # node-02's daemon is not running
        assert json.loads(status.stdout)["nonzero"] == ["node-02"]
        restarted = inv("daemon", "--action", "restart", "--node", "node-01",
                        "--wait-healthy", config=cfg)
        assert restarted.returncode == 0, out(restarted)
        assert "healthy" in restarted.stdout
        for args in (("--action", "reload"), ()):
            usage = inv("daemon", *args, config=cfg)
            assert usage.returncode == 2, out(usage)
        stopped = inv("daemon", "--action", "stop", "--node", "node-01", config=cfg)
        assert stopped.returncode == 0, out(stopped)


def test_inv_sync_models_and_logs(testbed: Testbed, tmp_path: Path, app_dir: str) -> None:
    cfg = variant(testbed, tmp_path, app_dir=app_dir, port=PORT)
    weights = bytes(range(256)) * 4096
    model = host_path(testbed, "node-01", f"{app_dir}/models/voice-en")
    model.mkdir(parents=True)
    (model / "voice.onnx").write_bytes(weights)
    log = host_path(testbed, "node-01", f"{app_dir}/logs/app.log")
    log.parent.mkdir()
    log.write_text("2024-05-01 12:00:00 first\n2024-05-01 12:00:01 second\n"
                   "2024-05-01 12:00:02 third\n")
    chown_to_user(host_path(testbed, "node-01", app_dir))

    synced = inv("sync-models", "--source-node", "node-01", "--target-node", "node-02",
                 "--json", config=cfg)
    assert synced.returncode == 0, out(synced)
    assert list(json.loads(synced.stdout)["nodes"]) == ["node-02"]
    copy = host_path(testbed, "node-02", f"{app_dir}/models/voice-en/voice.onnx")
    assert copy.read_bytes() == weights
    table = inv("sync-models", "--source-node", "node-01", "--target-node", "node-02",
                config=cfg)
    assert table.returncode == 0 and "up-to-date" in table.stdout, out(table)
    usage = inv("sync-models", "--target-node", "node-02", config=cfg)
    assert usage.returncode == 2 and "--source-node is required" in usage.stderr, out(usage)

    collected = tmp_path / "collected"
    logs = inv("logs", "--node", "node-01", "--lines", "2", "--out", str(collected),
               config=cfg)
    assert logs.returncode == 0, out(logs)
    assert f"written to {collected}/" in logs.stdout
    gathered = (collected / "node-01.log").read_text()
    assert "second" in gathered and "third" in gathered and "first" not in gathered
    assert "node-01" in (collected / "merged.log").read_text()
    for lines in ("0", "many"):
        usage = inv("logs", "--lines", lines, "--out", str(collected), config=cfg)
        assert usage.returncode == 2 and "--lines" in usage.stderr, out(usage)

    # --follow streams new lines as `node: line` until Ctrl-C, then exits 0.
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKELETON_")}
    follow = subprocess.Popen(
        [str(BIN / "inv"), "logs", "--node", "node-01", "--lines", "1", "--follow",
         "--config", str(cfg)], cwd=REPO, env=env, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    watchdog = threading.Timer(60, follow.kill)  # a hung stream fails the test, never hangs it
    watchdog.start()
    try:
        assert follow.stdout is not None
        assert "third" in follow.stdout.readline()
        with log.open("a") as fh:
            fh.write("2024-05-01 12:00:03 fourth\n")
        assert follow.stdout.readline() == "node-01: 2024-05-01 12:00:03 fourth\n"
        follow.send_signal(signal.SIGINT)
        assert follow.wait(timeout=30) == 0, follow.stderr.read() if follow.stderr else ""
    finally:
        watchdog.cancel()
        if follow.poll() is None:
            follow.kill()
            follow.wait()
        for stream in (follow.stdout, follow.stderr):
            if stream is not None:
                stream.close()


# ---------------------------------------------------------------- fab against the testbed


def test_fab_hosts_by_node_id_and_by_address(testbed: Testbed) -> None:
    cfg = testbed.config_path
    both = fab("-H", "node-01,node-02", "uptime", config=cfg)
    assert both.returncode == 0, out(both)
    for node in ("node-01", "node-02"):
        assert f"---------------- {node} ----------------" in both.stdout
    assert both.stdout.count("load average") == 2

    third = testbed.host("node-03")
    by_address = fab("-H", third.ip, "run", "--command", "hostname", config=cfg)
    assert by_address.returncode == 0, out(by_address)
    assert by_address.stdout.splitlines()[-1] == "node-03"

    failed = fab("-H", "node-01", "run", "--command", "echo before; exit 3", config=cfg)
    assert failed.returncode == 1, out(failed)
    assert "node-01: exit 3" in failed.stdout

    status = fab("-H", "node-04", "status", "--json", config=cfg)
    assert status.returncode == 0, out(status)
    assert json.loads(status.stdout)["nodes"]["node-04"]["data"]["status"]["load"]

    for args, message in [(("uptime",), "fab -H HOST"),
                          (("-H", "node-01", "run"), "--command is required"),
                          (("-H", "node-01", "run", "--command", "true", "--timeout", "2s"),
                           "--timeout: expected a number of seconds"),
                          (("-H", "node-99", "uptime"), "unknown node node-99")]:
        usage = fab(*args, config=cfg)
        assert usage.returncode == 2, out(usage)
        assert message in usage.stderr, out(usage)


def test_fab_deploy_and_daemon(testbed: Testbed, tmp_path: Path, app_dir: str) -> None:
    cfg = variant(testbed, tmp_path, app_dir=app_dir, port=PORT)
    src = make_source(tmp_path / "src", "F")
    with daemons_stopped_after(settings_of(cfg)):
        done = fab("-H", "node-05,node-06", "deploy", "--source", str(src), config=cfg)
        assert done.returncode == 0, out(done)
        for node in ("node-05", "node-06"):
            assert host_path(testbed, node, f"{app_dir}/VERSION").read_text() == "F\n"
        started = fab("-H", "node-05", "daemon", "--action", "start", "--wait-healthy",
                      config=cfg)
        assert started.returncode == 0 and "healthy" in started.stdout, out(started)
        running = fab("-H", "node-05", "daemon", "--action", "status", config=cfg)
        assert running.returncode == 0, out(running)
        stopped = fab("-H", "node-05,node-06", "daemon", "--action", "status", config=cfg)
        assert stopped.returncode == 1, out(stopped)  # node-06's daemon never started
        assert fab("-H", "node-05", "daemon", "--action", "stop", config=cfg).returncode == 0


def test_fab_refuses_an_unknown_host_key(testbed: Testbed, tmp_path: Path) -> None:
    """Plain `fab` would auto-add the key and run; ours refuses (strict) and runs nothing."""
    cfg, known = empty_known_hosts(testbed, tmp_path)
    marker = "fab-was-here"
    for args in (("run", "--command", f"touch ~/{marker}"), ("status",), ("deploy",)):
        refused = fab("-H", "node-01", *args, config=cfg)
        assert refused.returncode == 4, out(refused)
        assert "hostkey-unknown: unknown host key for" in refused.stdout + refused.stderr
    assert known.read_text() == ""
    assert not (testbed.host("node-01").home / marker).exists()


# ---------------------------------------------------------------- thin front ends


def test_library_imports_with_click_blocked() -> None:
    """Only the cli package (and `python -m skeleton_app`, which is the CLI) may import
    Click. `__main__` modules are programs, not imported."""
    code = r"""
import importlib, pkgutil, sys
sys.modules["click"] = None  # any `import click` now raises ImportError
import skeleton_app
names = [m.name for m in pkgutil.walk_packages(skeleton_app.__path__, "skeleton_app.")
         if not m.name.startswith("skeleton_app.app.cli") and not m.name.endswith(".__main__")]
for name in names:
    importlib.import_module(name)
import tasks, fabfile
try:
    import skeleton_app.app.cli
except ImportError:
    print("cli blocked")
print(len(names), "modules")
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    count = int(proc.stdout.split()[-2])
    assert "cli blocked" in proc.stdout and count >= 15, proc.stdout


ALLOWED_IMPORTS = {"skeleton_app", "invoke", "fabric", "__future__", "sys", "time",
                   "threading", "dataclasses", "contextlib", "collections", "typing"}


def _imports(tree: ast.AST) -> dict[str, str]:
    """alias -> qualified name, for every import in `tree` (module level or in a function)."""
    names = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                names[a.asname or a.name] = a.name
        elif isinstance(node, ast.ImportFrom) and node.module:
            for a in node.names:
                names[a.asname or a.name] = f"{node.module}.{a.name}"
    return names


COMMANDS = ("skeleton_app.app.commands.",)
PLUMBING = {"skeleton_app.app.commands.Session", "skeleton_app.app.commands.Selection"}
LIBRARY = (*COMMANDS, "skeleton_app.ops.", "skeleton_app.app.views.")


def _ops_calls(fn: ast.AST, names: Mapping[str, str],
               helpers: Mapping[str, ast.FunctionDef] | None = None,
               prefixes: tuple[str, ...] = COMMANDS) -> set[str]:
    """Qualified names of the functions of `prefixes` that `fn` calls (through helpers too):
    by default the application commands."""
    names = {**names, **_imports(fn)}
    helpers = helpers or {}
    # Opening the session and naming the nodes is plumbing, not the command itself.
    found = set()
    for node in ast.walk(fn):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Name) and func.id in helpers:
            found |= _ops_calls(helpers[func.id], names, helpers, prefixes)
            continue
        if isinstance(func, ast.Name):
            qualified = names.get(func.id, "")
        elif isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
            qualified = f"{names.get(func.value.id, '')}.{func.attr}"
        elif (isinstance(func, ast.Attribute) and isinstance(func.value, ast.Attribute)
              and isinstance(func.value.value, ast.Name)):  # commands.LogsQuery.parse
            qualified = f"{names.get(func.value.value.id, '')}.{func.value.attr}.{func.attr}"
        else:
            continue
        if qualified.startswith(prefixes) and qualified not in PLUMBING:
            found.add(qualified)
    return found


def _functions(path: Path) -> tuple[ast.Module, dict[str, ast.FunctionDef]]:
    tree = ast.parse(path.read_text())
    return tree, {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}


def _is_task(fn: ast.FunctionDef) -> bool:
    decorators = (d.func if isinstance(d, ast.Call) else d for d in fn.decorator_list)
    return any(isinstance(d, ast.Name) and d.id == "task" for d in decorators)


def _lines(fn: ast.FunctionDef) -> int:
    first = fn.body[1] if isinstance(fn.body[0], ast.Expr) else fn.body[0]  # after docstring
    return (fn.end_lineno or 0) - first.lineno + 1


@pytest.mark.parametrize("module", ["tasks", "fabfile"])
def test_front_end_holds_no_logic_of_its_own(module: str) -> None:
    tree, functions = _functions(REPO / f"{module}.py")
    roots = {q.split(".")[0] for q in _imports(tree).values()}
    assert roots <= ALLOWED_IMPORTS, roots - ALLOWED_IMPORTS
    names = _imports(tree)
    tasks = {n: f for n, f in functions.items() if _is_task(f)}
    helpers = {n: f for n, f in functions.items() if n not in tasks}
    assert sorted(t.replace("_", "-") for t in tasks) == (
        INV_TASKS if module == "tasks" else FAB_TASKS)
    for name, fn in tasks.items():
        assert _lines(fn) <= 30, f"{module}.{name} has {_lines(fn)} lines"
        assert _ops_calls(fn, names, helpers), f"{module}.{name} calls no application command"
    for name, fn in helpers.items():
        assert _lines(fn) <= 15, f"{module}.{name} has {_lines(fn)} lines"


def _cli_calls() -> dict[str, set[str]]:
    tree, functions = _functions(REPO / "skeleton_app" / "app" / "cli" / "cluster_cmds.py")
    release_tree, release_fns = _functions(REPO / "skeleton_app/app/cli/release_cmds.py")
    functions = {**functions, **release_fns}
    commands = {"exec": "exec_cmd", "status": "status_cmd", "deploy": "deploy_cmd",
                "daemon": "_daemon", "sync_models": "sync_models_cmd", "logs": "logs_cmd",
                "bootstrap": "bootstrap_cmd", "rollback": "rollback_cmd",
                "releases": "releases_cmd"}
    names = {**_imports(tree), **_imports(release_tree)}
    # Importing Rich early is how the CLI hides its import time; nothing to render with.
    speedups = {"skeleton_app.app.views.common.preload_tables"}
    calls = {task: _ops_calls(functions[fn], names, prefixes=LIBRARY) - speedups
             for task, fn in commands.items()}
    copy_tree, copy_functions = _functions(REPO / "skeleton_app" / "app" / "cli" / "copy_cmds.py")
    for task, fn in (("copy", "copy_cmd"), ("fetch", "fetch_cmd")):
        calls[task] = _ops_calls(copy_functions[fn], _imports(copy_tree), prefixes=LIBRARY)
    return calls


def test_inv_tasks_call_the_same_commands_and_renderers_as_the_cli() -> None:
    cli = _cli_calls()
    tree, functions = _functions(REPO / "tasks.py")
    for task, expected in cli.items():
        called = {e for e in expected if e.startswith(COMMANDS)}
        assert called == {f"skeleton_app.app.commands.{task}"} or (
            task == "exec" and called == {"skeleton_app.app.commands.exec_command"}) or (
            task == "logs" and called == {"skeleton_app.app.commands.logs",
                                          "skeleton_app.app.commands.LogsQuery.parse"}) or (
            task in ("copy", "fetch") and called == {
                f"skeleton_app.app.commands.{task}",
                f"skeleton_app.app.commands.{task.title()}Request.parse"}), task
        assert any(not e.startswith(COMMANDS) for e in expected), task  # a view
        assert _ops_calls(functions[task], _imports(tree), functions, LIBRARY) == expected, task


def test_fab_tasks_call_commands_and_renderers_the_cli_calls() -> None:
    everything: Iterable[str] = set().union(*_cli_calls().values())
    tree, functions = _functions(REPO / "fabfile.py")
    for name, fn in functions.items():
        if _is_task(fn):
            called = _ops_calls(fn, _imports(tree), functions, LIBRARY)
            assert called & set(COMMANDS[0] + c for c in ("exec_command", "status", "deploy",
                                                          "daemon", "copy", "fetch",
                                                          "rollback")), name
            assert called <= set(everything), name


def test_tasks_are_documented_in_their_module_docstring() -> None:
    import fabfile
    import tasks

    for module, names in ((tasks, INV_TASKS), (fabfile, FAB_TASKS)):
        doc = inspect.getdoc(module) or ""
        for name in names:
            assert re.search(rf"\b(inv|fab -H \S+) {name}\b", doc), (module.__name__, name)
