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


def _master_options(argv: list[str], node: Node, settings: SSHSettings, directory: str,
                    persist: float) -> list[str]:
    facts = [*argv, node.host]
    for path in (settings.known_hosts, node.identity_file or settings.identity_file,
                 "~/.ssh/config", "/etc/ssh/ssh_config"):
        if path:
            try:
                st = os.stat(os.path.expanduser(path))
                facts.append(f"{path}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}")
            except OSError:
                facts.append(f"{path}:absent")
    key = hashlib.sha256("\0".join(facts).encode()).hexdigest()[:32]
    # `%` would be read as one of ssh's tokens, whitespace would split the value: both
    # escaped as OpenSSH wants them (the directory is ours, but may be anywhere).
    path = os.path.join(directory, MASTER_PREFIX + key).replace("%", "%%")
    if any(c.isspace() for c in path):
        path = f'"{path}"'
    return ["-o", "ControlMaster=auto", "-o", f"ControlPath={path}",
            "-o", f"ControlPersist={max(1, int(persist))}"]


def masters(directory: str) -> list[str]:
    """The ControlMaster sockets in `directory` (see `share_connections`)."""
    try:
        with os.scandir(directory) as entries:
            return sorted(e.path for e in entries if e.name.startswith(MASTER_PREFIX))
    except OSError:
        return []


def close_masters(directory: str) -> int:
    """Ask every ControlMaster in `directory` to exit (`ssh -O exit`); how many did."""
    import subprocess

    closed = 0
    for path in masters(directory):
        done = subprocess.run(["ssh", "-o", f"ControlPath={path}", "-O", "exit", "master"],
                              stdin=subprocess.DEVNULL, capture_output=True, timeout=10,
                              check=False)
        closed += done.returncode == 0
        if done.returncode != 0:  # a dead master's socket: nothing answers there any more
            with contextlib.suppress(OSError):
                os.unlink(path)
    return closed
