"""OpenSSH argv for subprocesses (rsync's `-e`, `skeleton logs`, node-to-node hops): the same
identity, port, known_hosts, host-key policy, pin and jump host as the Paramiko side.

Imports no Paramiko: rsync and logs need only this.
"""

from __future__ import annotations

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
    argv += list(extra)
    return argv
