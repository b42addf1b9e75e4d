"""Warm mode's connection keeper against real sshd hosts (issue #18).

Every test has a keeper directory of its own (`XDG_RUNTIME_DIR` under /tmp) and stops the
keeper it caused by the PID the keeper recorded (`keeper_env` fixture). The suite's shared
configs say `ssh.persist: 0` (tests/conftest.py): warm mode is on only here.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from skeleton_app.testing import testbed as tbm
from skeleton_app.testing.testbed import Testbed
from tests.support.helpers import REPO, config_variant, skeleton


class Keeper:
    """One test's keeper directory and what the test needs to watch it."""

    def __init__(self, runtime: Path):
        self.runtime = runtime
        self.dir = runtime / "skeleton"
        self.env = {"XDG_RUNTIME_DIR": str(runtime)}

    @property
    def log(self) -> str:
        path = self.dir / "keeper.log"
        return path.read_text() if path.exists() else ""

    def pid(self) -> int | None:
        try:
            return int((self.dir / "keeper.pid").read_text())
        except (OSError, ValueError):
            return None

    def running(self) -> bool:
        pid = self.pid()
        if pid is None:
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return _state(pid) not in ("Z", None)

    def wait_running(self, timeout: float = 20) -> int:
        _until("the keeper", lambda: self.running() and (self.dir / "keeper.sock").exists(),
               timeout)
        pid = self.pid()
        assert pid is not None
        return pid

    @property
    def full_env(self) -> dict[str, str]:
        """This environment without SKELETON_* settings, with this test's keeper directory:
        what `skeleton()` gives a command, for the tests that start one themselves."""
        return {**{n: v for n, v in os.environ.items() if not n.startswith("SKELETON_")},
                **self.env}

    def served(self) -> tuple[int, int, str | None]:
        """The keeper's count of exec commands served whole and declined, the last reason."""
        proc = self.run("keeper", "status", "--json", config=None)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        state = json.loads(proc.stdout)
        return state["served"], state["declined"], state["last_declined"]

    def opened(self, node: str) -> int:
        return len(re.findall(rf"opened {node} ", self.log))

    def run(self, *args: str, config: Path | None, timeout: float = 60
            ) -> subprocess.CompletedProcess[str]:
        return skeleton(*args, config=config, env=self.env, timeout=timeout)


def _state(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def _until(what: str, check: Callable[[], bool], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"never saw: {what}"
        time.sleep(0.05)


@pytest.fixture
def keeper_env() -> Iterator[Keeper]:
    runtime = Path(tempfile.mkdtemp(prefix="skeleton-keeper-", dir="/tmp"))
    runtime.chmod(0o700)
    k = Keeper(runtime)
    seen: set[int] = set()
    try:
        yield k
    finally:
        pid = k.pid()
        if pid is not None:
            seen.add(pid)
        for pid in seen:  # only the keeper this test caused, by the PID it recorded
            if _state(pid) not in (None, "Z") and _cmdline_is_keeper(pid):
                os.kill(pid, signal.SIGCONT)
                os.kill(pid, signal.SIGKILL)
        # The OpenSSH masters this test's transfers left (they would idle out after
        # ssh.persist): asked to exit through their own sockets, in this test's directory.
        from skeleton_app.ssh.openssh import close_masters

        close_masters(str(k.dir))
        shutil.rmtree(runtime, ignore_errors=True)


def _cmdline_is_keeper(pid: int) -> bool:
    try:
        return b"skeleton_app.keeper" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _config(testbed: Testbed, tmp_path: Path, name: str = "c.yaml", **ssh: object) -> Path:
    return config_variant(testbed, tmp_path / name, ssh={"persist": 30, **ssh})


def _warm(k: Keeper, config: Path, nodes: str) -> None:
    """Two commands: the first starts the keeper (and runs cold), the second connects
    through it; after them the keeper holds a connection to every node of `nodes`."""
    first = k.run("cluster", "exec", "-n", nodes, "true", config=config)
    assert first.returncode == 0, first.stdout + first.stderr
    k.wait_running()
    second = k.run("cluster", "exec", "-n", nodes, "true", config=config)
    assert second.returncode == 0, second.stdout + second.stderr


def test_keeper_starts_is_reused_and_expires(testbed: Testbed, tmp_path: Path,
                                            keeper_env: Keeper) -> None:
    k = keeper_env
    config = _config(testbed, tmp_path, persist=6)  # > a command's time on a loaded machine
    _warm(k, config, "node-0[1-2]")
    for _ in range(3):
        proc = k.run("cluster", "exec", "-n", "node-0[1-2]", "hostname", config=config)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "node-01" in proc.stdout and "node-02" in proc.stdout
    assert k.opened("node-01") == 1 and k.opened("node-02") == 1, k.log  # reused
    status = k.run("keeper", "status", config=None)
    assert status.returncode == 0 and "node-01" in status.stdout, status.stdout
    pid = k.pid()
    # Expiry: each connection closes `persist` seconds after its last use, then the keeper
    # holding nothing exits (another `persist` later).
    _until("the idle connections closed", lambda: "closed node-01" in k.log
           and "closed node-02" in k.log, timeout=20)
    _until("the keeper's exit", lambda: not k.running(), timeout=20)
    assert "nothing held: exiting" in k.log
    assert pid is not None and not (k.dir / "keeper.sock").exists()
    none = k.run("keeper", "status", config=None)
    assert none.returncode == 1 and "no keeper running" in none.stdout


def test_no_persist_and_persist_0_start_no_keeper(testbed: Testbed, tmp_path: Path,
                                                  keeper_env: Keeper) -> None:
    k = keeper_env
    config = _config(testbed, tmp_path)
    proc = k.run("cluster", "--no-persist", "exec", "-n", "node-01", "true", config=config)
    assert proc.returncode == 0, proc.stderr
    # Typed after the command, as users do, it means the same.
    for after in (["exec", "--no-persist", "-n", "node-01", "true"],
                  ["status", "-n", "node-01", "--no-persist"]):
        proc = k.run("cluster", *after, config=config)
        assert proc.returncode == 0, proc.stderr
    off = _config(testbed, tmp_path, "off.yaml", persist=0)
    proc = k.run("cluster", "exec", "-n", "node-01", "true", config=off)
    assert proc.returncode == 0, proc.stderr
    time.sleep(0.5)
    assert k.pid() is None and not k.running()


def test_a_config_change_never_reuses_a_connection(testbed: Testbed, tmp_path: Path,
                                                   keeper_env: Keeper) -> None:
    k = keeper_env
    config = _config(testbed, tmp_path)
    _warm(k, config, "node-01")
    assert k.opened("node-01") == 1
    # A setting that changes how a connection is made: a new connection beside the old one.
    changed = _config(testbed, tmp_path, "timeout.yaml", connect_timeout=7)
    assert k.run("cluster", "exec", "-n", "node-01", "true", config=changed).returncode == 0
    assert k.opened("node-01") == 2, k.log
    # The same identity file path, rewritten: a new connection again.
    key = Path(str(testbed.identity_file))
    key.write_bytes(key.read_bytes())
    os.utime(key, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert k.run("cluster", "exec", "-n", "node-01", "true", config=config).returncode == 0
    assert k.opened("node-01") == 3, k.log
    # A setting that does not (the command timeout): the warm connection serves it.
    same = _config(testbed, tmp_path, "cmd.yaml", command_timeout=50)
    assert k.run("cluster", "exec", "-n", "node-01", "true", config=same).returncode == 0
    assert k.opened("node-01") == 3, k.log


def test_host_key_changed_between_two_commands_is_refused(testbed: Testbed, tmp_path: Path,
                                                          keeper_env: Keeper) -> None:
    k = keeper_env
    kh = tmp_path / "known_hosts"
    shutil.copy(testbed.known_hosts, kh)
    config = _config(testbed, tmp_path, known_hosts=str(kh))
    _warm(k, config, "node-0[1-2]")
    # known_hosts now says node-02's key is another one (rewritten in place, same path).
    wrong = tmp_path / "wrong_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(wrong)],
                   check=True)
    wrong_key = (tmp_path / "wrong_key.pub").read_text().split()[1]
    ip2 = testbed.host("node-02").ip
    lines = [ln for ln in kh.read_text().splitlines()
             if not ln.startswith((ip2 + " ", "node-02 "))]
    lines += [f"{ip2} ssh-ed25519 {wrong_key}", f"node-02 ssh-ed25519 {wrong_key}"]
    kh.write_text("\n".join(lines) + "\n")
    proc = k.run("cluster", "exec", "-n", "node-0[1-2]", "hostname", config=config)
    assert proc.returncode == 4, proc.stdout + proc.stderr
    assert "node-02: hostkey-changed: HOST KEY CHANGED" in proc.stdout
    assert "node-01\n" in proc.stdout


def test_a_node_restarted_between_two_commands_is_reconnected(testbed: Testbed,
                                                              tmp_path: Path,
                                                              keeper_env: Keeper) -> None:
    k = keeper_env
    config = _config(testbed, tmp_path)
    _warm(k, config, "node-03")
    assert k.opened("node-03") == 1
    tbm.stop_sshd(testbed, "node-03")
    try:
        # Every session of the login user ends with it, the keeper's connection included.
        tbm.host_exec(testbed, "node-03", ["pkill", "-KILL", "-u", tbm.USER], check=False)
    finally:
        tbm.start_sshd(testbed, "node-03")
    proc = k.run("cluster", "exec", "-n", "node-03", "hostname", config=config)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert k.opened("node-03") == 2, k.log


def test_another_uid_is_refused(testbed: Testbed, tmp_path: Path, keeper_env: Keeper) -> None:
    k = keeper_env
    config = _config(testbed, tmp_path)
    _warm(k, config, "node-01")
    # Open the way on the file system on purpose: SO_PEERCRED must refuse on its own.
    k.runtime.chmod(0o711)
    k.dir.chmod(0o711)
    (k.dir / "keeper.sock").chmod(0o666)
    hello = (
        "import json, socket, struct, sys\n"
        "s = socket.socket(socket.AF_UNIX); s.settimeout(5); s.connect(sys.argv[1])\n"
        "h = json.dumps({'op': 'status'}).encode()\n"
        "try:\n"
        "    s.sendall(struct.pack('!II', len(h), 0) + h)\n"
        "    print(repr(s.recv(100)))\n"
        "except (BrokenPipeError, ConnectionResetError):\n"  # closed before or after we spoke
        "    print(repr(b''))\n"
    )
    proc = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                           "/usr/bin/python3", "-c", hello, str(k.dir / "keeper.sock")],
                          capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "b''"  # closed without a word
    assert "refused a connection from uid 65534" in k.log


def test_keeper_killed_mid_command_fails_cleanly_and_is_replaced(testbed: Testbed,
                                                                  tmp_path: Path,
                                                                  keeper_env: Keeper) -> None:
    k = keeper_env
    config = _config(testbed, tmp_path)
    _warm(k, config, "node-0[4-5]")
    pid = k.wait_running()
    assert k.served()[0] == 1  # the second command was served whole; so is the next one
    argv = [sys.executable, "-m", "skeleton_app", "cluster", "exec", "-n", "node-0[4-5]",
            "--config", str(config), "--", "sleep 5; echo done"]
    env = k.full_env
    proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        _until("the command on the nodes", lambda: all(
            "sleep 5" in tbm.host_exec(testbed, h, ["pgrep", "-a", "-u", tbm.USER, "-f",
                                                    "sleep 5"], check=False).stdout
            for h in ("node-04", "node-05")), timeout=30)
        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        out, err = proc.communicate(timeout=30)
        took = time.monotonic() - killed
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 4, out + err
    assert "node-[04-05]: lost: the connection keeper went away" in out, out
    assert took < 5
    # The next command runs (itself: no keeper answers), and starts a new keeper.
    again = k.run("cluster", "exec", "-n", "node-0[4-5]", "true", config=config)
    assert again.returncode == 0, again.stdout + again.stderr
    assert k.wait_running() != pid


def test_a_wedged_keeper_is_bypassed_within_its_budget_and_replaced(
        testbed: Testbed, tmp_path: Path, keeper_env: Keeper) -> None:
    k = keeper_env
    config = _config(testbed, tmp_path)
    _warm(k, config, "node-06")
    pid = k.wait_running()
    os.kill(pid, signal.SIGSTOP)  # accepts (the kernel's backlog), never answers
    try:
        started = time.monotonic()
        proc = k.run("cluster", "exec", "-n", "node-06", "hostname", config=config)
        took = time.monotonic() - started
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "node-06" in proc.stdout
        assert took < 10  # a cold command, never a hang
        _until("a new keeper", lambda: k.pid() not in (None, pid), timeout=20)
        new = k.wait_running()
    finally:
        os.kill(pid, signal.SIGCONT)
    # The old one, woken, sees its socket taken and leaves.
    _until("the old keeper's exit", lambda: _state(pid) in (None, "Z"), timeout=20)
    assert k.running() and k.pid() == new


def test_ctrl_c_of_a_warm_exec_leaves_nothing_on_the_nodes(testbed: Testbed, tmp_path: Path,
                                                           keeper_env: Keeper) -> None:
    k = keeper_env
    config = _config(testbed, tmp_path)
    hosts = ("node-01", "node-02")
    _warm(k, config, "node-0[1-2]")
    assert k.served()[0] == 1
    argv = [sys.executable, "-m", "skeleton_app", "cluster", "exec", "-n", "node-0[1-2]",
            "--config", str(config), "--", "sleep 47"]
    env = k.full_env
    proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)

    def procs(host: str) -> str:
        return tbm.host_exec(testbed, host, ["pgrep", "-a", "-u", tbm.USER, "-f", "sleep 47"],
                             check=False).stdout

    try:
        _until("the command on the nodes", lambda: all(procs(h) for h in hosts), timeout=30)
        os.killpg(proc.pid, signal.SIGINT)
        sent = time.monotonic()
        out, err = proc.communicate(timeout=30)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 130, out + err
    assert took < 10
    deadline = time.monotonic() + 5
    for host in hosts:
        while (left := procs(host)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert left == "", f"{host}: {left}"
    # The keeper's connections survive a client's Ctrl-C: the next command is warm.
    assert k.run("cluster", "exec", "-n", "node-0[1-2]", "true", config=config).returncode == 0
    assert k.opened("node-01") == 1, k.log
    assert k.served()[:2] == (3, 0)  # the interrupted command and this one, served whole


def test_a_served_warm_exec_prints_what_the_cli_prints_and_loads_only_the_stdlib(
        testbed: Testbed, tmp_path: Path, keeper_env: Keeper) -> None:
    k = keeper_env
    config = _config(testbed, tmp_path)
    _warm(k, config, "node-0[1-3]")
    command = ["--config", str(config), "--",
               "echo same; [ $(hostname) = node-02 ] && echo two >&2; exit 3"]
    for extra in ([], ["--json"], ["--format", "json"], ["--format", "tsv"],
                  ["--timeout", "20"]):  # the last one's cold output is compared below
        warm = k.run("cluster", "exec", "-n", "node-0[1-3]", *extra, *command, config=None)
        cold = k.run("cluster", "--no-persist", "exec", "-n", "node-0[1-3]", *extra, *command,
                     config=None)
        assert warm.returncode == cold.returncode == 1, warm.stderr + cold.stderr
        if "json" in " ".join(extra):
            def shape(text: str) -> object:
                data = json.loads(text)
                for node in data["nodes"].values():
                    node["duration"] = 0
                data["duration"] = 0
                return data
            assert shape(warm.stdout) == shape(cold.stdout)
        else:
            assert warm.stdout == cold.stdout
        assert warm.stderr == cold.stderr == ""
    slow = k.run("cluster", "exec", "-n", "node-01", "--timeout", "1", "--config", str(config),
                 "--", "sleep 5", config=None)
    assert slow.returncode == 4 and "node-01: timeout:" in slow.stdout, slow.stdout
    # What the warm command loaded: no Click, no Rich, no Paramiko.
    argv = [sys.executable, "-X", "importtime", "-m", "skeleton_app", "cluster", "exec",
            "-n", "node-01", "--config", str(config), "true"]
    env = k.full_env
    proc = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    loaded = {line.split("|")[2].strip() for line in proc.stderr.splitlines()
              if line.startswith("import time:") and "|" in line}
    assert k.served()[:2] == (8, 0)  # the second of _warm, 5 warm forms, the timeout, this
    assert "skeleton_app.keeper.thin" in loaded
    # The keeper served it whole: not even the config (YAML) or dataclasses were loaded here.
    heavy = sorted(m for m in loaded if m.split(".")[0] in ("click", "rich", "paramiko", "yaml",
                                                            "dataclasses", "typing")
                   or m in ("skeleton_app.config", "skeleton_app.app.cli"))
    assert heavy == []
    # Another environment where it matters (the clock of the journal): the keeper declines,
    # the Click path runs the command (through the keeper's connections) and prints the same.
    other = skeleton("cluster", "exec", "-n", "node-0[1-3]", *command,
                     env={**k.env, "TZ": "Pacific/Auckland"})
    assert other.returncode == 1 and other.stdout == cold.stdout, other.stderr
    assert k.served() == (8, 1, "an environment other than the keeper's")
    assert k.opened("node-01") == 1, k.log


def test_a_warm_exec_into_a_closed_pipe_exits_as_the_cli_does(testbed: Testbed,
                                                              tmp_path: Path,
                                                              keeper_env: Keeper) -> None:
    """`skeleton cluster exec ... | head -1`: no traceback on either path, and exit 1 (Click's
    EPIPE policy) whether the pipe closes during a write or at the final flush."""
    k = keeper_env
    config = _config(testbed, tmp_path)
    _warm(k, config, "node-0[1-2]")
    env = k.full_env
    for fmt in ("json", "plain"):
        codes = []
        for persist in ([], ["--no-persist"]):
            argv = [sys.executable, "-m", "skeleton_app", "cluster", *persist, "exec",
                    "-n", "node-0[1-2]", "--format", fmt, "--config", str(config),
                    "--", "seq 200000"]
            proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
            assert proc.stdout is not None and proc.stderr is not None
            assert proc.stdout.readline()  # the first line, then the reader goes away
            proc.stdout.close()
            err = proc.stderr.read()
            codes.append(proc.wait(timeout=60))
            assert "Traceback" not in err and "BrokenPipe" not in err, err
        # A big write the pipe took in part loses its EPIPE in CPython's buffer (exit 0 was
        # seen under strace): both paths also ask the pipe itself (app/stdout_pipe.py).
        assert codes == [1, 1], (fmt, codes)


def test_status_and_deploy_go_through_the_keeper(testbed: Testbed, tmp_path: Path,
                                                 keeper_env: Keeper) -> None:
    from tests.support.deploy_support import make_source, variant

    k = keeper_env
    config = variant(testbed, tmp_path, ssh={"persist": 30})
    _warm(k, config, "node-0[5-6]")
    status = k.run("cluster", "status", "-n", "node-0[5-6]", "--json", config=config)
    assert status.returncode == 0, status.stdout + status.stderr
    assert json.loads(status.stdout)["ok"] == ["node-05", "node-06"]
    src = make_source(tmp_path / "src", "1.0")
    for unchanged in (False, True):  # the second: the lock conversation's digest check only
        proc = k.run("cluster", "deploy", "--source", str(src), "-n", "node-0[5-6]", "--json",
                     config=config)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        nodes = json.loads(proc.stdout)["nodes"]
        assert [nodes[n]["data"]["unchanged"] for n in ("node-05", "node-06")] == [
            unchanged, unchanged], proc.stdout
    # Status, deploy's runs and its lock conversation: all over the keeper's one connection
    # per node (rsync, an OpenSSH subprocess, connects on its own).
    assert k.opened("node-05") == 1 and k.opened("node-06") == 1, k.log


@pytest.mark.postgres  # make_testbed(db=True) starts one
def test_a_served_exec_is_journaled_and_reads_failed_from_the_registry(
        make_testbed: Callable[..., Testbed], tmp_path: Path, keeper_env: Keeper) -> None:
    """With a registry configured the keeper serves exec too: the nodes come from the
    registry, the run and every node's outcome go to the journal, and `@failed` reads it."""
    k = keeper_env
    bed = make_testbed(2, db=True)
    config = config_variant(bed, tmp_path / "c.yaml", ssh={"persist": 30})
    imported = k.run("nodes", "import", str(bed.config_path), config=config)
    assert imported.returncode == 0, imported.stdout + imported.stderr
    _warm(k, config, "node-0[1-2]")
    failing = k.run("cluster", "exec", "--config", str(config), "--",
                    "[ $(hostname) = node-02 ] && exit 3; true", config=None)
    assert failing.returncode == 1 and "node-02: exit 3" in failing.stdout, failing.stderr
    again = k.run("cluster", "exec", "-n", "@failed", "hostname", config=config)
    assert again.returncode == 0 and again.stdout.split("\n")[1] == "node-02", again.stdout
    assert k.served()[:2] == (3, 0)  # the second of _warm, these two
    runs = json.loads(k.run("runs", "list", "--json", config=config).stdout)
    assert [(r["operation"], r["selection"], r["exit_code"]) for r in runs[:2]] == [
        ("exec", ["node-02"], 0), ("exec", ["node-01", "node-02"], 1)]
    assert len(runs) == 4


def _run_in(directory: Path, k: Keeper, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI as typed in `directory` (a shell's working directory), with `k`'s keeper."""
    env = k.full_env
    return subprocess.run([sys.executable, "-m", "skeleton_app", *args], cwd=directory,
                          env=env, capture_output=True, text=True, timeout=60)


def test_a_relative_identity_file_works_warm_as_it_does_cold(testbed: Testbed,
                                                             tmp_path: Path,
                                                             keeper_env: Keeper) -> None:
    """`identity_file: ./key` in a config.yaml of the directory the operator works in: the
    keeper (another working directory) gets the key's absolute path on every path, the
    served one (declined: the Click path's KeeperRunner) and the cold one alike. It was
    `lost: [Errno 2] No such file or directory: './key'`, exit 4, warm only."""
    k = keeper_env
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(testbed.identity_file, work / "key")
    (work / "key").chmod(0o600)
    config_variant(testbed, work / "config.yaml", ssh={"persist": 30, "identity_file": "./key"})
    first = _run_in(work, k, "cluster", "exec", "-n", "node-01", "hostname")
    assert first.returncode == 0, first.stdout + first.stderr
    k.wait_running()
    for persist in ([], ["--no-persist"]):
        proc = _run_in(work, k, "cluster", *persist, "exec", "-n", "node-01", "hostname")
        assert (proc.returncode, proc.stdout) == (0, "---------------- node-01 ----------------"
                                                     "\nnode-01\n"), proc.stdout + proc.stderr
    assert k.opened("node-01") == 1, k.log


def test_a_warm_exec_into_a_full_disk_says_so_in_one_line(testbed: Testbed, tmp_path: Path,
                                                          keeper_env: Keeper) -> None:
    """`skeleton cluster exec ... > /dev/full` (a full disk): one line on stderr and exit 1,
    as for a closed pipe; it was a traceback of `thin._write` (ENOSPC is not EPIPE)."""
    k = keeper_env
    config = _config(testbed, tmp_path)
    _warm(k, config, "node-0[1-2]")
    env = k.full_env
    for fmt in ("json", "plain"):
        with open("/dev/full", "wb") as full:
            proc = subprocess.run([sys.executable, "-m", "skeleton_app", "cluster", "exec",
                                   "-n", "node-0[1-2]", "--format", fmt, "--config",
                                   str(config), "--", "seq 3"], cwd=REPO, env=env,
                                  stdout=full, stderr=subprocess.PIPE, text=True, timeout=60)
        assert proc.returncode == 1, proc.stderr
        assert proc.stderr == ("skeleton: error: cannot write the output: No space left on"
                               " device\n"), proc.stderr
    assert k.served()[0] >= 3  # served by the keeper, not declined to the Click path


def test_keeper_status_sorts_its_rows_and_tsv_is_the_table_alone(testbed: Testbed,
                                                                  tmp_path: Path,
                                                                  keeper_env: Keeper) -> None:
    """`skeleton keeper status`: one row per connection sorted by node (it was the keeper's
    order), `-` as the idle time of a connection in use (it said `idle 11s, running 2`);
    `--format tsv` prints the table alone on stdout (the keeper's lines go to stderr: they
    came first in the TSV), and `--json` carries no protocol word (`"op": "status"`)."""
    k = keeper_env
    config = _config(testbed, tmp_path)
    _warm(k, config, "node-0[1-3]")
    env = k.full_env
    busy = subprocess.Popen([sys.executable, "-m", "skeleton_app", "--config", str(config),
                             "cluster", "exec", "-n", "node-02", "sleep 3"], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def running() -> bool:
            state = json.loads(k.run("keeper", "status", "--json", config=None).stdout)
            return any(c["busy"] for c in state["connections"])

        _until("node-02 running", running)
        proc = k.run("keeper", "status", "--format", "tsv", config=None)
    finally:
        assert busy.wait(timeout=60) == 0
    assert proc.returncode == 0, proc.stderr
    lines = [line.split("\t") for line in proc.stdout.splitlines()]
    assert lines[0] == ["node", "login", "idle", "persist", "running"], proc.stdout
    assert [row[0] for row in lines[1:]] == ["node-01", "node-02", "node-03"], proc.stdout
    assert [row[2] for row in lines[1:] if row[4] != "0"] == ["-"], proc.stdout
    assert proc.stderr.startswith("keeper pid "), proc.stderr
    state = json.loads(k.run("keeper", "status", "--json", config=None).stdout)
    assert "op" not in state and state["running"] is True


def test_keeper_stop_refuses_while_a_command_runs_unless_forced(testbed: Testbed,
                                                                 tmp_path: Path,
                                                                 keeper_env: Keeper) -> None:
    """`skeleton keeper stop` in one terminal while another terminal's command runs through
    the keeper: refused (exit 1, saying why and on which nodes) and that command completes;
    it was cut off, `lost` exit 4. `--force` stops it anyway; with nothing running, stops."""
    k = keeper_env
    config = _config(testbed, tmp_path)
    _warm(k, config, "node-0[1-2]")
    env = k.full_env

    def busy() -> subprocess.Popen[str]:
        proc = subprocess.Popen([sys.executable, "-m", "skeleton_app", "--config", str(config),
                                 "cluster", "exec", "-n", "node-0[1-2]", "sleep 2; echo A"],
                                cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
        _until("the command running", lambda: any(c["busy"] for c in json.loads(
            k.run("keeper", "status", "--json", config=None).stdout)["connections"]))
        return proc

    proc = busy()
    stop = k.run("keeper", "stop", config=None)
    out, _ = proc.communicate(timeout=60)
    assert stop.returncode == 1 and "on node-01, node-02" in stop.stderr, stop.stderr
    assert (proc.returncode, out.splitlines()[-1]) == (0, "A"), out
    assert k.running()
    proc = busy()
    stop = k.run("keeper", "stop", "--force", config=None)
    proc.communicate(timeout=60)
    assert stop.returncode == 0 and "stopped" in stop.stdout, stop.stdout + stop.stderr
    assert proc.returncode == 4
    k.wait_running()  # the cut-off command started a new keeper (README: "replaced")
    stop = k.run("keeper", "stop", config=None)
    assert stop.returncode == 0 and "stopped" in stop.stdout, stop.stdout + stop.stderr
    _until("no keeper", lambda: not k.running())


def test_copy_and_fetch_keep_an_openssh_master_per_node_in_warm_mode(
        testbed: Testbed, tmp_path: Path, keeper_env: Keeper) -> None:
    """rsync's and fetch's ssh share one ControlMaster per node in the keeper's directory:
    with the node's sshd refusing new connections, a warm copy and fetch still work (no
    handshake), a `--no-persist` one cannot; `keeper stop` closes the masters; a config
    change never reuses one made under the old settings."""
    k = keeper_env
    config = _config(testbed, tmp_path)
    src = tmp_path / "f.txt"
    src.write_text("warm\n")
    dest = f"/tmp/skeleton-cm-{tmp_path.name}"
    first = k.run("cluster", "copy", "-n", "node-02", str(src), dest, config=config)
    assert first.returncode == 0, first.stdout + first.stderr
    made = sorted(p.name for p in k.dir.iterdir() if p.name.startswith("cm-"))
    assert len(made) == 1 and (k.dir / made[0]).is_socket()
    assert oct((k.dir / made[0]).stat().st_mode & 0o777) == "0o600"
    tbm.stop_sshd(testbed, "node-02")
    try:
        again = k.run("cluster", "copy", "-n", "node-02", str(src), dest, config=config)
        assert again.returncode == 0, again.stdout + again.stderr
        got = k.run("cluster", "fetch", "-n", "node-02", f"{dest}/f.txt",
                    str(tmp_path / "got"), config=config)
        assert got.returncode == 0, got.stdout + got.stderr
        assert (tmp_path / "got" / "node-02" / "f.txt").read_text() == "warm\n"
        cold = k.run("cluster", "--no-persist", "copy", "-n", "node-02", str(src), dest,
                     config=config)
        assert cold.returncode == 4, cold.stdout + cold.stderr
        # Another known_hosts file (same keys): another key, never the old master.
        other_hosts = tmp_path / "known_hosts"
        shutil.copy(testbed.known_hosts, other_hosts)
        changed = _config(testbed, tmp_path, "other.yaml", known_hosts=str(other_hosts))
        other = k.run("cluster", "copy", "-n", "node-02", str(src), dest, config=changed)
        assert other.returncode == 4, other.stdout + other.stderr
        stopped = k.run("keeper", "stop", config=None)
        assert "closed 1 OpenSSH connection(s)" in stopped.stdout, stopped.stdout
        assert not [p for p in k.dir.iterdir() if p.name.startswith("cm-")]
        after = k.run("cluster", "copy", "-n", "node-02", str(src), dest, config=config)
        assert after.returncode == 4, after.stdout + after.stderr
    finally:
        tbm.start_sshd(testbed, "node-02")
        tbm.host_exec(testbed, "node-02", ["rm", "-rf", dest], check=False)
