"""The connections the keeper holds: one per (settings, node) key, their idle expiry and
the log line for each one opened or closed.

A key is everything a connection depends on (`connection_key`): the resolved ssh settings,
the node's address and login, the identity file as a file (path, inode, mtime, ctime,
size) and the contents of known_hosts (ssh.known_hosts and the system's and user's default
ones, which a connector also trusts), ~/.ssh/config and /etc/ssh/ssh_config. Each key has
a `Connector` of its own: a Connector's pool is keyed by node address only, so two identity
files for one node must never share one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from skeleton_app.config import SSHSettings
from skeleton_app.nodes import Node
from skeleton_app.ssh.hostkeys import SYSTEM_KNOWN_HOSTS
from skeleton_app.ssh.pool import Connector

# The resolved settings plus the files behind them, as facts (see module docstring).
ConnectionKey = tuple[Any, ...]
# The OpenSSH client configs `ssh.route` reads when ssh.ssh_config is on.
SSH_CONFIGS = ("~/.ssh/config", "/etc/ssh/ssh_config")

def _file_fact(path: str | None) -> tuple[Any, ...] | None:
    """A file as (path, inode, mtime, ctime, size): a key replaced or rewritten in place is
    new, also when its mtime was put back (`touch -r`, `cp -p`, `rsync -t`): ctime cannot be."""
    if not path:
        return None
    full = os.path.expanduser(path)
    try:
        st = os.stat(full)
    except OSError:
        return (full, None)
    return (full, st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size)


class Digests:
    """Content digests of small files (known_hosts, ~/.ssh/config), cached by stat."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[tuple[Any, ...] | None, str]] = {}

    def digest(self, path: str) -> str:
        full = os.path.expanduser(path)
        fact = _file_fact(full)
        with self._lock:
            cached = self._cache.get(full)
            # An absent file is cached as absent too: when it appears, its fact changes.
            if cached is not None and cached[0] == fact:
                return cached[1]
        try:
            value = hashlib.sha256(Path(full).read_bytes()).hexdigest()
        except OSError:
            value = "absent"
        with self._lock:
            self._cache[full] = (fact, value)
        return value


def settings_facts(ssh: SSHSettings, digests: Digests) -> tuple[Any, ...]:
    """The part of a connection key that is the same for every node of a command: the
    settings (without the command's own limits: command_timeout, fanout and persist do not
    change a connection) and the files every connection reads."""
    connecting = dataclasses.replace(ssh, command_timeout=None, fanout=1, persist=0.0)
    return (
        dataclasses.astuple(connecting),
        digests.digest(ssh.known_hosts),
        # A connector reads these once too (KeyStores): a key revoked there is a new key.
        tuple(digests.digest(path) for path in SYSTEM_KNOWN_HOSTS),
        # Both files a connector's router reads (`ssh.route`), and keeps for its life.
        tuple(digests.digest(path) for path in SSH_CONFIGS) if ssh.ssh_config else None,
    )


def connection_key(ssh: SSHSettings, node: Node, digests: Digests,
                   facts: tuple[Any, ...] | None = None) -> ConnectionKey:
    """What a connection to `node` under `ssh` depends on; `facts`: `settings_facts` of
    `ssh`, when the caller computed them once for many nodes."""
    return (
        facts if facts is not None else settings_facts(ssh, digests),
        (node.id, node.user, node.host, node.port),
        _file_fact(node.identity_file or ssh.identity_file),
    )


@dataclass(slots=True)
class Held:
    """One node's connection as the keeper tracks it."""

    connector: Connector
    node: Node
    persist: float
    last_used: float
    busy: int = 0
    link: object | None = None  # the pooled link we last saw (identity, for the log)


class HeldConnections:
    """The keeper's connections by key; thread-safe."""

    def __init__(self, log: Callable[[str], None]):
        self._log = log
        self._lock = threading.Lock()
        self._held: dict[ConnectionKey, Held] = {}
        self._digests = Digests()

    def facts(self, ssh: SSHSettings) -> tuple[Any, ...]:
        """`settings_facts` of `ssh`, for a command that checks out many nodes."""
        return settings_facts(ssh, self._digests)

    def checkout(self, ssh: SSHSettings, node: Node,
                 facts: tuple[Any, ...] | None = None) -> Held:
        """The entry for `node` under `ssh` (made on first use), marked busy; `facts`:
        `self.facts(ssh)`, computed once for the command."""
        key = connection_key(ssh, node, self._digests, facts)
        with self._lock:
            h = self._held.get(key)
            if h is None:
                h = self._held[key] = Held(Connector(ssh), node, ssh.persist, time.monotonic())
            h.busy += 1
            h.persist = ssh.persist
            return h

    def checkin(self, h: Held) -> None:
        """`h` is idle again; log the connection it opened (or lost and reopened)."""
        link = h.connector.pooled(h.node)
        with self._lock:
            h.busy -= 1
            h.last_used = time.monotonic()
            previous, h.link = h.link, link
        if link is previous:
            return
        if previous is not None:
            self._log(f"closed {_name(h.node)} (broken; reconnecting)" if link
                      else f"closed {_name(h.node)} (broken)")
        if link is not None:
            self._log(f"opened {_name(h.node)}")

    def expire(self) -> bool:
        """Close what is idle past its persist, or dead. True when nothing is held."""
        now = time.monotonic()
        closing: list[tuple[Held, str]] = []
        with self._lock:
            for key, h in list(self._held.items()):
                if h.busy:
                    continue
                link = h.connector.pooled(h.node)
                if link is None or not getattr(link, "is_connected", False):
                    closing.append((h, "lost"))
                elif now - h.last_used >= h.persist:
                    closing.append((h, f"idle {now - h.last_used:.0f}s"))
                else:
                    continue
                del self._held[key]
            empty = not self._held
        for h, why in closing:
            self._drop(h, why)
        return empty

    def close(self, why: str) -> None:
        with self._lock:
            held = list(self._held.values())
            self._held.clear()
        for h in held:
            self._drop(h, why)

    def _drop(self, h: Held, why: str) -> None:
        h.connector.discard(h.node)
        if h.link is not None:
            self._log(f"closed {_name(h.node)} ({why})")
            h.link = None
        h.connector.close()

    def listing(self) -> list[dict[str, Any]]:
        """The connections held (or being made), for `skeleton keeper status`."""
        now = time.monotonic()
        with self._lock:
            return [{"node": h.node.id, "user": h.node.user, "host": h.node.host,
                     "port": h.node.port, "idle": round(now - h.last_used, 1),
                     "busy": h.busy, "persist": h.persist}
                    for h in self._held.values() if h.link is not None or h.busy]


def _name(node: Node) -> str:
    return f"{node.id} ({node.user}@{node.host}:{node.port})"
