"""The keeper's served exec (keeper/served.py) without SSH: what it declines, so that the
Click path runs the command exactly as the CLI would (another environment where it matters,
changed code, a relative key, a config or selection error, another form of the command), the
config cache, and the digest of the code on disk. (Served commands on real sshd hosts:
tests/integration/test_keeper.py.)"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from skeleton_app.keeper.client_env import groups
from skeleton_app.keeper.code_watch import CodeWatch, package_dir
from skeleton_app.keeper.held import HeldConnections
from skeleton_app.keeper.served import Declined, ExecService

CONFIG = """
ssh: {user: ops, known_hosts: /tmp/known, persist: 30}
nodes:
  - {id: n1, host: 10.9.0.1, roles: [stt]}
  - {id: n2, host: 10.9.0.2}
"""


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {"HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin", "USER": "ops",
            "XDG_RUNTIME_DIR": str(tmp_path / "run")}


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "work" / "config.yaml"
    path.parent.mkdir()
    path.write_text(CONFIG)
    return path


def service(env: dict[str, str]) -> ExecService:
    return ExecService(HeldConnections(lambda _line: None), env=env)


def request(argv: list[str], cwd: Path, env: dict[str, str], **extra: Any) -> dict[str, Any]:
    return {"op": "exec", "argv": argv, "cwd": str(cwd), "env": env,
            "package": package_dir(), "groups": groups(), **extra}


def declined(svc: ExecService, header: dict[str, Any]) -> str:
    with pytest.raises(Declined) as caught:
        svc.prepare(header)
    return str(caught.value)


def test_a_served_command_is_read_as_the_cli_reads_it(env: dict[str, str], config: Path
                                                       ) -> None:
    svc = service(env)
    served = svc.prepare(request(["cluster", "exec", "--role", "stt", "--json", "--", "uname",
                                  "-r"], config.parent, env))
    assert [n.id for n in served.nodes] == ["n1"]
    assert served.args.words == ["uname", "-r"] and served.args.as_json
    assert served.persist == 30 and served.session.settings.ssh.user == "ops"
    served.session.close()
    # -c relative to the command's directory; SKELETON_* are the command's settings.
    other = {**env, "SKELETON_SSH_USER": "alice"}
    served = svc.prepare(request(["-c", "work/config.yaml", "cluster", "exec", "-n", "n2",
                                  "true"], config.parent.parent, other))
    assert [n.id for n in served.nodes] == ["n2"]
    assert served.session.settings.ssh.user == "alice"
    served.session.close()
    assert (svc.served, svc.declined) == (2, 0)


@pytest.mark.parametrize(("argv", "why"), [
    (["cluster", "exec", "--stdin", "true"], "not the common form"),
    (["cluster", "--no-persist", "exec", "true"], "not the common form"),
    (["cluster", "exec", "--help"], "not the common form"),
    (["cluster", "exec", "-n", "n9", "true"], "unknown node n9"),
    (["cluster", "exec", "-n", "@failed", "true"], "@failed: no previous run"),
    (["-c", "nowhere.yaml", "cluster", "exec", "true"], "No such file"),
])
def test_what_the_click_path_should_say_is_declined(env: dict[str, str], config: Path,
                                                    argv: list[str], why: str,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    # The state file of @failed is found through this process's environment, as the
    # keeper's own (which a served command's must equal).
    monkeypatch.setenv("XDG_STATE_HOME", str(config.parent / "state"))
    env = {**env, "XDG_STATE_HOME": str(config.parent / "state")}
    svc = service(env)
    assert why in declined(svc, request(argv, config.parent, env))
    assert svc.declined == 1 and svc.last_declined is not None and why in svc.last_declined


def test_an_environment_that_matters_is_declined_and_shell_noise_is_not(
        env: dict[str, str], config: Path) -> None:
    svc = service(env)
    for name, value in (("HOME", "/elsewhere"), ("SSH_AUTH_SOCK", "/tmp/agent"),
                        ("XDG_STATE_HOME", "/tmp/state"), ("USER", "root")):
        why = declined(svc, request(["cluster", "exec", "true"], config.parent,
                                    {**env, name: value}))
        assert "environment" in why, name
    noisy = {**env, "PWD": "/x", "OLDPWD": "/y", "SHLVL": "3", "PYENV_VERSION": "3.11",
             "TERM": "dumb"}
    svc.prepare(request(["cluster", "exec", "true"], config.parent, noisy)).session.close()


def test_malformed_requests_and_other_code_are_declined(env: dict[str, str], config: Path
                                                        ) -> None:
    svc = service(env)
    good = request(["cluster", "exec", "true"], config.parent, env)
    for bad in ({"argv": "cluster exec true"}, {"cwd": "relative"}, {"env": {"A": 1}},
                {"argv": ["cluster", "exec", 3]}):
        assert declined(svc, {**good, **bad}) == "malformed request"
    assert "another copy" in declined(svc, {**good, "package": "/opt/other/skeleton_app"})


def test_a_relative_identity_file_or_persist_0_is_declined(env: dict[str, str], config: Path
                                                           ) -> None:
    key = config.parent / "id_test"
    key.write_text("not read here")
    svc = service(env)
    config.write_text(CONFIG.replace("user: ops,", "user: ops, identity_file: id_test,"))
    assert "relative" in declined(svc, request(["cluster", "exec", "true"], config.parent, env))
    config.write_text(CONFIG.replace("persist: 30", "persist: 0"))
    assert "persist" in declined(svc, request(["cluster", "exec", "true"], config.parent, env))


def test_the_config_is_cached_by_the_file_and_reread_when_it_changes(
        env: dict[str, str], config: Path) -> None:
    svc = service(env)
    header = request(["cluster", "exec", "true"], config.parent, env)
    first = svc.prepare(header)
    again = svc.prepare(header)
    assert again.session.settings is first.session.settings
    config.write_text(CONFIG.replace("user: ops", "user: other"))
    changed = svc.prepare(header)
    assert changed.session.settings.ssh.user == "other"
    for served in (first, again, changed):
        served.session.close()


def test_the_code_watch_sees_an_edit_a_new_file_and_a_removed_one(tmp_path: Path) -> None:
    root = tmp_path / "pkg"
    shutil.copytree(Path(package_dir()) / "keeper", root)
    (root / "sub").mkdir()
    (root / "sub" / "mod.py").write_text("")

    def changed(act: Callable[[], object]) -> bool:
        watch = CodeWatch(str(root))
        assert not watch.changed()
        act()
        return watch.changed()

    stamp = time.time() + 5
    assert changed(lambda: os.utime(root / "thin.py", (stamp, stamp)))  # edited in place
    assert changed(lambda: (root / "sub" / "new.py").write_text(""))  # added below
    assert changed(lambda: (root / "sub" / "new.py").unlink())
    assert changed(lambda: (root / "sub" / "mod.py").rename(root / "sub" / "moved.py"))
    assert changed(lambda: shutil.rmtree(root / "sub"))
    # Python's byte code is not code: a new __pycache__ (the first import of a package
    # since the clone) and what goes in it change nothing.
    shutil.rmtree(root / "__pycache__", ignore_errors=True)
    assert not changed(lambda: (root / "__pycache__").mkdir())
    assert not changed(lambda: (root / "__pycache__" / "x.pyc").write_bytes(b""))
    assert not changed(lambda: (root / "notes.txt").write_text(""))


def test_code_changed_on_disk_is_declined_from_then_on(env: dict[str, str], config: Path,
                                                       tmp_path: Path) -> None:
    root = tmp_path / "pkg"
    shutil.copytree(Path(package_dir()) / "keeper", root)
    svc = ExecService(HeldConnections(lambda _line: None), env=env, package=str(root))
    header = {**request(["cluster", "exec", "true"], config.parent, env), "package": str(root)}
    svc.prepare(header).session.close()
    (root / "new.py").write_text("")
    assert "changed on disk" in declined(svc, header)
    (root / "new.py").unlink()
    assert "changed on disk" in declined(svc, header)  # for good: the keeper gives way
    assert svc.outdated


@pytest.mark.parametrize(("name", "value"), [
    ("PGSSLMODE", "verify-full"), ("PGPASSWORD", "secret"), ("PGHOST", "db.example"),
    ("PGSERVICEFILE", "/tmp/pg_service.conf"), ("SSL_CERT_FILE", "/tmp/ca.pem")])
def test_libpq_and_tls_settings_other_than_the_keepers_are_declined(
        env: dict[str, str], config: Path, name: str, value: str) -> None:
    # The registry (which lists the nodes and journals the run) is opened in the keeper's
    # process: libpq reads PG* from there, not from the command's environment. A client
    # asking for verify-full must not be served over the keeper's `prefer`.
    svc = service(env)
    why = declined(svc, request(["cluster", "exec", "true"], config.parent,
                                {**env, name: value}))
    assert "environment" in why
    # and the other way round: a keeper started with it, a command without it
    svc = service({**env, name: value})
    assert "environment" in declined(svc, request(["cluster", "exec", "true"], config.parent,
                                                  env))


@pytest.mark.parametrize("bad", [
    {"argv": ["cluster", "exec", "--fanout", "\u00b2", "--", "true"]},
    {"cwd": "/tmp/a\x00b"},
    {"argv": ["-c", "a\x00b", "cluster", "exec", "true"]},
])
def test_a_request_the_keeper_cannot_read_is_declined_not_left_unanswered(
        env: dict[str, str], config: Path, bad: dict[str, Any]) -> None:
    # Anything but Declined escaped prepare: the keeper's request thread died after
    # "taking", and the client waited thin.SILENCE (10 s) before running the command itself.
    svc = service(env)
    declined(svc, {**request(["cluster", "exec", "true"], config.parent, env), **bad})
    assert svc.declined == 1


def test_the_code_watch_sees_a_same_size_rewrite_with_its_mtime_kept_and_new_sql(
        tmp_path: Path) -> None:
    # A release copied in with its build's timestamps (rsync -a, cp -p, a reproducible
    # build's SOURCE_DATE_EPOCH): a module of the same size and mtime is still new code. And
    # the registry's migrations are code too (read from disk at every registry open).
    root = tmp_path / "pkg"
    shutil.copytree(Path(package_dir()) / "keeper", root)
    (root / "migrations").mkdir()
    (root / "migrations" / "0001_init.sql").write_text("SELECT 1;\n")
    module = root / "thin.py"
    st = module.stat()
    watch = CodeWatch(str(root))
    replacement = tmp_path / "thin.py.new"
    replacement.write_bytes(module.read_bytes().replace(b"BUDGET = 0.1", b"BUDGET = 0.9"))
    os.utime(replacement, ns=(st.st_atime_ns, st.st_mtime_ns))
    replacement.replace(module)  # as rsync puts a file in place
    assert (module.stat().st_size, module.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    assert watch.changed()
    watch = CodeWatch(str(root))
    (root / "migrations" / "0002_more.sql").write_text("SELECT 2;\n")
    assert watch.changed()


@pytest.mark.parametrize("dsn", [
    "host=/nonexistent dbname=x sslmode=require sslrootcert=ca.pem",
    "postgresql:///x?host=/nonexistent&sslmode=require&sslcert=certs/me.crt",
    "host=/nonexistent dbname=x passfile=pgpass"])
def test_a_registry_dsn_naming_a_relative_file_is_declined(
        env: dict[str, str], config: Path, dsn: str) -> None:
    # libpq opens these relative to the process's directory: the keeper's is "/", the
    # command's its own. A missing sslrootcert under sslmode=require is no error: the
    # served command would list nodes and journal over an unverified connection.
    (config.parent / "ca.pem").write_text("")
    svc = service(env)
    why = declined(svc, request(["cluster", "exec", "true"], config.parent,
                                {**env, "SKELETON_DATABASE_URL": dsn}))
    assert "relative" in why


def test_a_client_with_other_groups_than_the_keepers_is_declined(
        env: dict[str, str], config: Path) -> None:
    # Removed from the group that may read the cluster's key, a user's new login must not
    # run commands with it through a keeper started in an older session (Click: "cannot
    # read"); added to one, the keeper could not read what the command may.
    svc = service(env)
    good = request(["cluster", "exec", "true"], config.parent, env)
    for other in ([*groups(), 4242], groups()[1:] or [4242], None):
        assert "groups" in declined(svc, {**good, "groups": other})
    svc.prepare(good).session.close()


def test_an_upgraded_library_is_a_change_of_code(tmp_path: Path) -> None:
    """`pip install -U paramiko` in the keeper's virtualenv replaces its dist-info directory:
    the keeper must not go on serving with the old one loaded."""
    root = tmp_path / "pkg"
    shutil.copytree(Path(package_dir()) / "keeper", root)
    site = tmp_path / "site-packages"
    (site / "paramiko-5.1.0.dist-info").mkdir(parents=True)
    watch = CodeWatch(str(root), [str(site)])
    assert not watch.changed()
    (site / "paramiko-5.1.0.dist-info").rename(site / "paramiko-5.2.0.dist-info")
    assert watch.changed()


@pytest.mark.parametrize(("line", "matters"), [
    ("Host *\n  ProxyCommand ssh -W %h:%p bastion\n", True),
    ("Match host x exec \"test -f /tmp/vpn\"\n  User a\n", True),
    ("Include ~/.ssh/more.conf\n", False),  # Paramiko reads no Include
    ("Host *\n  ServerAliveInterval 5\n  # ProxyCommand not this one\n", False),
])
def test_path_matters_only_where_an_ssh_config_runs_commands(
        env: dict[str, str], config: Path, line: str, matters: bool) -> None:
    """An activated virtualenv in one terminal (another PATH) is served, unless the user's
    ssh config runs a local command found through PATH (ProxyCommand, Match exec)."""
    svc = service(env)
    other = request(["cluster", "exec", "true"], config.parent,
                    {**env, "PATH": "/venv/bin:/usr/bin:/bin"})
    svc.prepare(other).session.close()  # no ~/.ssh/config: PATH changes nothing
    ssh_dir = Path(env["HOME"]) / ".ssh"
    ssh_dir.mkdir(parents=True)
    (ssh_dir / "config").write_text(line)
    if matters:
        assert "PATH" in declined(svc, other)
    else:
        svc.prepare(other).session.close()
    svc.prepare(request(["cluster", "exec", "true"], config.parent, env)).session.close()
