"""sudo on the test hosts, for `exec --sudo` tests: a sudoers drop-in and a password for the
login user, recorded in the state dir and removed afterwards.

The hosts share the machine's /etc, so both changes are the machine's: the drop-in names
this testbed's host *addresses* (sudo matches a rule's host against the addresses of the
interfaces it sees, and a host sees only its own `eth0`), so it grants nothing elsewhere; the
password goes where `hosts._ensure_user` left `*` (no password login). Before changing
anything, `STATE/sudoers.json` records what to undo (the drop-in's path, the user's previous
shadow field); `remove_sudo` (also called by `down`) undoes exactly that, so a crashed test
leaves nothing behind once `skeleton testbed down` runs.

    with sudo_rules(tb, "pw", nopasswd=["node-01"]):
        ...  # node-01: sudo without a password; the other hosts: sudo with "pw"
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from skeleton_app.errors import TestbedError
from skeleton_app.testing.testbed.hosts import _password_field
from skeleton_app.testing.testbed.state import USER, Testbed
from skeleton_app.testing.testbed.system import _last_line, _run, require_root

SUDOERS_DIR = Path("/etc/sudoers.d")
_RECORD = "sudoers.json"
# Machine-wide, like what it guards (/run/lock is not per namespace: every suite sees it).
LOCK_PATH = Path("/run/lock/skeleton-testbed-sudo.lock")
LOCK_TIMEOUT = 900.0


def _dropin(testbed: Testbed) -> Path:
    # No dot in the name: sudo skips drop-ins whose name holds one. The state dir's hash
    # keeps two test runs of the same instance number (each in its own namespaces, sharing
    # this machine's /etc) from meeting on one file.
    tag = hashlib.sha256(str(testbed.state_dir).encode()).hexdigest()[:8]
    return SUDOERS_DIR / f"skeleton-testbed-{testbed.instance}-{tag}"


def _rules(testbed: Testbed, nopasswd: Sequence[str],
           nopasswd_commands: Mapping[str, str] | None = None) -> str:
    lines = [f"# skeleton testbed {testbed.state_dir}: removed by `skeleton testbed down`",
             f"Defaults:{USER} lecture=never"]
    # The last matching rule wins: the NOPASSWD hosts come after the others.
    for host_id in testbed.ids:
        if host_id not in nopasswd:
            lines.append(f"{USER} {testbed.host(host_id).ip} = (ALL) ALL")
    for host_id in nopasswd:
        lines.append(f"{USER} {testbed.host(host_id).ip} = (ALL) NOPASSWD: ALL")
    # Per-command NOPASSWD (`{"node-02": "/bin/sh"}`): that command only, the rest with the
    # password (sudoers as sites write it for one tool). No cached credential then: the
    # machine's other sudo runs (the hosts share /run/sudo, and pids repeat across
    # namespaces) must not decide which command line asks for the password.
    if nopasswd_commands:
        lines.insert(2, f"Defaults:{USER} timestamp_timeout=0")
    for host_id, commands in (nopasswd_commands or {}).items():
        lines.append(f"{USER} {testbed.host(host_id).ip} = (ALL) NOPASSWD: {commands}")
    return "\n".join(lines) + "\n"


def add_sudo(testbed: Testbed, password: str, *, nopasswd: Sequence[str] = (),
             nopasswd_commands: Mapping[str, str] | None = None) -> None:
    """Let the login user sudo on the hosts: with `password`, or without one on `nopasswd`
    (or, on the hosts of `nopasswd_commands`, for those commands)."""
    require_root()
    for host_id in [*nopasswd, *(nopasswd_commands or {})]:
        testbed.host(host_id)  # an unknown host is a UsageError before anything changes
    if not shutil.which("sudo") or not SUDOERS_DIR.is_dir():
        raise TestbedError("sudo is not installed (./scripts/setup installs it)")
    record = testbed.state_dir / _RECORD
    if record.exists():
        raise TestbedError(f"sudo rules already added ({record}): remove_sudo first")
    dropin = _dropin(testbed)
    if dropin.exists():
        raise TestbedError(f"{dropin} exists and is not recorded as ours: left alone")
    record.write_text(json.dumps({"dropin": str(dropin), "user": USER,
                                  "shadow": _password_field(USER)}))
    candidate = dropin.with_name(dropin.name + ".new")  # ignored by sudo: it holds a dot
    candidate.write_text(_rules(testbed, nopasswd, nopasswd_commands))
    os.chmod(candidate, 0o440)
    # A broken drop-in would break sudo for the whole machine: checked before it counts.
    check = _run(["visudo", "-cf", str(candidate)], check=False)
    if check.returncode != 0:
        candidate.unlink()
        record.unlink()
        raise TestbedError(f"visudo refused the drop-in: {_last_line(check.stderr)}")
    os.replace(candidate, dropin)
    _run(["chpasswd"], input=f"{USER}:{password}\n")


def remove_sudo(state_dir: Path) -> list[str]:
    """Undo what `add_sudo` recorded in `state_dir` (nothing if it recorded nothing)."""
    record = state_dir / _RECORD
    if not record.exists():
        return []
    data = json.loads(record.read_text())
    done: list[str] = []
    dropin = Path(data["dropin"])
    for path in (dropin, dropin.with_name(dropin.name + ".new")):
        if path.exists():
            path.unlink()
            done.append(f"sudoers drop-in {path}")
    if _password_field(data["user"]) != data["shadow"]:
        _run(["usermod", "-p", data["shadow"], data["user"]])
        done.append(f"password of {data['user']} (back to {data['shadow']!r})")
    record.unlink()
    return done


@contextmanager
def sudo_rules(testbed: Testbed, password: str, *, nopasswd: Sequence[str] = (),
               nopasswd_commands: Mapping[str, str] | None = None) -> Iterator[None]:
    """`add_sudo` for the duration of the block, holding the machine's sudo lock: the login
    user and its password are the whole machine's, so two blocks (parallel test workers, or
    two suites on one machine) take turns rather than overwrite each other's password."""
    with _machine_lock():
        add_sudo(testbed, password, nopasswd=nopasswd, nopasswd_commands=nopasswd_commands)
        try:
            yield
        finally:
            remove_sudo(testbed.state_dir)


_held = 0  # how deep this process is inside _machine_lock (a nested block is no conflict)


@contextmanager
def _machine_lock(timeout: float = LOCK_TIMEOUT) -> Iterator[None]:
    global _held
    if _held:
        _held += 1
        try:
            yield
        finally:
            _held -= 1
        return
    # O_NOFOLLOW: the directory is world-writable; never follow a link planted there.
    fd = os.open(LOCK_PATH, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "w") as lock:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TestbedError(f"{LOCK_PATH}: another test has held the sudo lock"
                                       f" for {timeout:.0f}s") from None
                time.sleep(0.2)
        _held = 1
        try:
            yield
        finally:
            _held = 0
