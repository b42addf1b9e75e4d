"""`User` and `Port` from `~/.ssh/config` (then `/etc/ssh/ssh_config`), as OpenSSH reads them.

A node's login is resolved once, where the node is built (config.yaml, the registry, an ad-hoc
host of the Python API), so that every path that reaches it (the Paramiko pool, Fabric, the
OpenSSH argv of rsync and of node-to-node transfers) uses the same user and port. Precedence,
highest first, as OpenSSH's own (command line > ssh_config > defaults):

1. the node's own `user` / `port` (config.yaml `nodes:`, the registry row, `nodes add --user`);
2. `ssh.user` / `ssh.port` when set explicitly (config file, `SKELETON_SSH_*`, a flag);
3. `User` / `Port` of the first matching `Host` block of ssh_config (with `ssh.ssh_config`);
4. the defaults: the local login name, 22.

Paramiko (which parses ssh_config exactly as Fabric does) is imported only when one of the
files has a `User` or `Port` line at all: most commands never pay for it here.
"""

from __future__ import annotations

import os
import re
from typing import Any

from skeleton_app.nodes import validate_port, validate_user

FILES = ("~/.ssh/config", "/etc/ssh/ssh_config")
# A line that sets User or Port (comments start with '#', so they never match).
_SETS_LOGIN = re.compile(r"^\s*(user|port)(\s|=)", re.IGNORECASE | re.MULTILINE)
# Parsed files by (path, mtime_ns, size) of each: one parse per process while nothing changes.
_cache: dict[tuple[tuple[str, int, int], ...], Any] = {}


def _parsed() -> Any | None:
    """A paramiko.SSHConfig of both files, or None when neither sets User or Port."""
    stamp: list[tuple[str, int, int]] = []
    texts: list[str] = []
    for name in FILES:
        path = os.path.expanduser(name)
        try:
            st = os.stat(path)
            with open(path, encoding="utf-8", errors="replace") as fh:
                texts.append(fh.read())
        except OSError:
            continue
        stamp.append((path, st.st_mtime_ns, st.st_size))
    key = tuple(stamp)
    if key not in _cache:
        if not any(_SETS_LOGIN.search(text) for text in texts):
            _cache[key] = None
        else:
            # paramiko_import first: Paramiko without Invoke (it imports paramiko.config).
            import paramiko

            from skeleton_app.ssh import paramiko_import  # noqa: F401

            config = paramiko.SSHConfig()
            try:
                for text in texts:
                    config.parse(text.splitlines(keepends=True))
            except Exception as exc:  # paramiko's ConfigParseError and friends
                raise ValueError(f"ssh_config (~/.ssh/config, /etc/ssh/ssh_config): {exc}"
                                 ) from None
            _cache[key] = config
    return _cache[key]


def ssh_config_login(host: str) -> tuple[str | None, int | None]:
    """(User, Port) that ssh_config gives `host` (None where it gives none); ValueError naming
    the file's value when it is not a valid user or port."""
    config = _parsed()
    if config is None:
        return None, None
    found = config.lookup(host)
    user = found.get("user")
    port = found.get("port")
    try:
        return (validate_user(user) if user is not None else None,
                validate_port(int(port)) if port is not None else None)
    except ValueError as exc:
        raise ValueError(f"ssh_config (~/.ssh/config) for {host}: {exc}") from None


def resolve_login(host: str, *, user: str | None, port: int | None, section_user: str | None,
                  section_port: int | None, default_user: str, default_port: int,
                  read_ssh_config: bool) -> tuple[str, int]:
    """The (user, port) to log in to `host` with, by the precedence at the top of this module.
    `section_*` are the ssh section's values when set explicitly, else None."""
    user = user if user is not None else section_user
    port = port if port is not None else section_port
    if (user is None or port is None) and read_ssh_config:
        found_user, found_port = ssh_config_login(host)
        user = user if user is not None else found_user
        port = port if port is not None else found_port
    return (user if user is not None else default_user,
            port if port is not None else default_port)
