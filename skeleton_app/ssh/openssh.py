"""OpenSSH argv for subprocesses (rsync's `-e`, `skeleton logs`, node-to-node hops): the same
identity, port, known_hosts, host-key policy, pin and jump host as the Paramiko side.

In warm mode (`share_connections`, set by the CLI when a keeper is in use) each connection
is an OpenSSH ControlMaster kept `ssh.persist` seconds in the keeper's private directory:
the next command's rsync or fetch to that node skips the handshake. A master's socket is
named by a digest of everything the connection depends on (the argv, and the known_hosts,
identity and ssh config files as files), so a config change never reuses one made under the
old settings, as on the keeper's Paramiko side.

Imports no Paramiko: rsync and logs need only this.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import os
from collections.abc import Iterable

from skeleton_app.config import SSHSettings
from skeleton_app.nodes import Node


def ssh_argv(node: Node, settings: SSHSettings, *, batch: bool = True,
             extra: Iterable[str] = (), pin: bool = True) -> list[str]:
    """OpenSSH argv (without the remote command) carrying the same identity, port,
    known_hosts, strict checking and jump host as the Paramiko side. Used by rsync -e.
    `pin`: check the host key under the node id (HostKeyAlias), as the Paramiko side does;
    False only for a host that is no node of ours (a plain Fabric Connection)."""
    policy = "accept-new" if settings.host_key_policy == "accept-new" else "yes"
    argv = [
        "ssh", "-p", str(node.port), "-l", node.user,
        # OpenSSH splits this value on whitespace (it takes a list): quote a path with spaces.
        "-o", "UserKnownHostsFile=" + (f'"{settings.known_hosts}"'
                                       if any(c.isspace() for c in settings.known_hosts)
                                       else settings.known_hosts),
        "-o", f"StrictHostKeyChecking={policy}",
        "-o", f"ConnectTimeout={max(1, int(settings.connect_timeout))}",
        "-o", "ServerAliveInterval=" + str(max(1, int(settings.keepalive))),
        "-o", "ServerAliveCountMax=3",
    ]
    if pin:  # keys are pinned per node id, as on the Paramiko side (see hostkeys.HostKeyPolicy)
        argv += ["-o", f"HostKeyAlias={node.id}"]
    if batch:
        argv += ["-o", "BatchMode=yes"]
    identity = node.identity_file or settings.identity_file
    if identity:
        argv += ["-i", identity, "-o", "IdentitiesOnly=yes"]
    if settings.jump_host:
        argv += ["-J", settings.jump_host]
    if not settings.ssh_config:
        argv += ["-F", "/dev/null"]
    if _masters is not None:
        argv += _master_options(argv, node, settings, *_masters)
    argv += list(extra)
    return argv


# (directory, persist seconds) while warm mode shares OpenSSH connections (`share_connections`)
_masters: tuple[str, float] | None = None
MASTER_PREFIX = "cm-"


def share_connections(directory: str | None, persist: float = 0.0) -> None:
    """Keep OpenSSH ControlMasters in `directory` (the keeper's, private) for `persist`
    seconds after their last use; None: each ssh connects on its own (the default)."""
    global _masters
    _masters = (directory, persist) if directory and persist > 0 else None


# A Unix socket's path must fit sun_path (108 bytes on Linux, 104 on the BSDs and macOS), and
# the master first binds `<ControlPath>.<16 random chars>` and renames it: a longer path makes
# every ssh fail ("ControlPath too long"), so such a directory shares no connection.
SUN_PATH_MAX = 104
_BIND_SUFFIX = 17


def _facts(path: str) -> str:
    try:
        st = os.stat(os.path.expanduser(path))
    except OSError:
        return f"{path}:absent"
    return f"{path}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"


def _config_files(path: str, base: str, depth: int = 0) -> list[str]:
    """`path` and the files its `Include` lines name (as ssh reads them: relative to `base`,
    globs expanded, nested a few levels), so an edit in ~/.ssh/config.d/ is another master."""
    found = [path]
    try:
        with open(os.path.expanduser(path), encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return found
    for line in lines:
        words = line.replace("=", " ", 1).split()
        if depth >= 8 or len(words) < 2 or words[0].lower() != "include":
            continue
        for pattern in words[1:]:
            pattern = os.path.expanduser(pattern.strip('"'))
            for name in sorted(glob.glob(os.path.join(base, pattern))):
                found += _config_files(name, base, depth + 1)
    return found


def _master_options(argv: list[str], node: Node, settings: SSHSettings, directory: str,
                    persist: float) -> list[str]:
    socket = os.path.join(directory, MASTER_PREFIX + "0" * 32)
    if len(os.fsencode(socket)) + _BIND_SUFFIX >= SUN_PATH_MAX:
        return []  # see SUN_PATH_MAX: each ssh connects on its own, as in cold mode
    configs = (_config_files("~/.ssh/config", os.path.expanduser("~/.ssh"))
               + _config_files("/etc/ssh/ssh_config", "/etc/ssh"))
    facts = [*argv, node.host]
    for path in (settings.known_hosts, node.identity_file or settings.identity_file, *configs):
        if path:
            facts.append(_facts(path))
    key = hashlib.sha256("\0".join(facts).encode()).hexdigest()[:32]
    return ["-o", "ControlMaster=auto", "-o", control_path(socket[:-32] + key),
            "-o", f"ControlPersist={max(1, int(persist))}"]


def control_path(path: str) -> str:
    """`ControlPath=<path>` for ssh's `-o`: `%` would be read as one of ssh's tokens and
    whitespace would split the value, both escaped as OpenSSH wants them (the directory is
    ours, but may be anywhere)."""
    path = path.replace("%", "%%")
    if any(c.isspace() for c in path):
        path = f'"{path}"'
    return f"ControlPath={path}"


def masters(directory: str) -> list[str]:
    """The ControlMaster sockets in `directory` (see `share_connections`)."""
    try:
        with os.scandir(directory) as entries:
            return sorted(e.path for e in entries if e.name.startswith(MASTER_PREFIX))
    except OSError:
        return []


EXIT_TIMEOUT = 10.0  # seconds for a master to answer `ssh -O exit`


def close_masters(directory: str) -> int:
    """Ask every ControlMaster in `directory` to exit (`ssh -O exit`); how many did."""
    import subprocess

    closed = 0
    for path in masters(directory):
        # -F /dev/null: nothing in a user's ssh config (a Host * ControlPath) overrides ours.
        try:
            done = subprocess.run(["ssh", "-F", "/dev/null", "-o", control_path(path), "-O",
                                   "exit", "master"], stdin=subprocess.DEVNULL,
                                  capture_output=True, timeout=EXIT_TIMEOUT, check=False)
        except subprocess.TimeoutExpired:  # a wedged master: `keeper stop` goes on, no trace
            continue
        closed += done.returncode == 0
        if done.returncode != 0:  # a dead master's socket: nothing answers there any more
            with contextlib.suppress(OSError):
                os.unlink(path)
    return closed
