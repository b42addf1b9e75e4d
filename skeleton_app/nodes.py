"""Nodes: the frozen `Node` value, validation of everything that names a node, and selection.

Node ids become file names (`collected_logs/<id>.log`) and appear in remote commands, and
hosts end up on an `ssh` command line, so both are validated wherever they enter: the
config file, the registry (on read as well as write) and the command line.
"""

from __future__ import annotations

import fnmatch
import functools
import ipaddress
import posixpath
import pwd
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from skeleton_app.errors import SelectionError

NODE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}\Z")
ROLE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}\Z")
# RFC 1123 labels; a host never starts with "-" so it can never be read as an ssh option.
_LABEL_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\Z")
USER_RE = re.compile(r"^[a-z_][a-z0-9_.-]{0,31}\$?\Z", re.IGNORECASE)


def validate_node_id(value: object) -> str:
    """Return `value` if it is a valid node id, else raise ValueError saying why."""
    if not isinstance(value, str):
        raise ValueError(f"node id must be a string, got {type(value).__name__}")
    if not NODE_ID_RE.match(value):
        shown = value if len(value) <= 40 else value[:40] + "..."
        raise ValueError(
            f"invalid node id {shown!r}: expected 1-63 letters, digits, '.', '_', '-',"
            " starting with a letter or digit"
        )
    return value


def validate_host(value: object) -> str:
    """Return `value` if it is a hostname, an IPv4 or an IPv6 address, else raise ValueError."""
    if not isinstance(value, str) or not value:
        raise ValueError("host must be a non-empty string")
    shown = value if len(value) <= 40 else value[:40] + "..."
    try:
        ipaddress.ip_address(value)
        return value
    except ValueError:
        pass
    if len(value) > 253:
        raise ValueError(f"invalid host {shown!r}: longer than 253 characters")
    labels = value.rstrip(".").split(".")
    if all(label.isdigit() for label in labels):
        # "999.1.1.1" is neither a valid address nor a sane hostname.
        raise ValueError(f"invalid host {shown!r}: not a valid IPv4 address")
    if not all(_LABEL_RE.match(label) for label in labels):
        raise ValueError(f"invalid host {shown!r}: expected a hostname, IPv4 or IPv6 address")
    return value


def validate_port(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise ValueError(f"invalid port {value!r}: expected an integer from 1 to 65535")
    return value


def validate_user(value: object) -> str:
    if not isinstance(value, str) or not USER_RE.match(value):
        raise ValueError(f"invalid user {value!r}: expected a POSIX user name")
    return value


def validate_role(value: object) -> str:
    if not isinstance(value, str) or not ROLE_RE.match(value):
        raise ValueError(
            f"invalid role {value!r}: expected letters, digits, '.', '_', '-' (at most 63)"
        )
    return value


# deploy --delete empties the app dir of whatever the source lacks, and daemon control writes
# in it: none of these may ever be one (a hostile registry row once made `deploy --delete`
# wipe a node's home, .ssh included). Exact matches:
_SYSTEM_DIRS = frozenset({
    "/", "/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/lib32", "/lib64", "/libx32",
    "/media", "/mnt", "/opt", "/proc", "/root", "/run", "/sbin", "/snap", "/srv", "/sys",
    "/tmp", "/usr", "/var", "/usr/bin", "/usr/lib", "/usr/local", "/usr/local/bin",
    "/usr/sbin", "/usr/share", "/var/lib", "/var/log", "/var/tmp", "/var/cache",
})
# ... and nothing below these (the system's own files, never an app's):
_SYSTEM_TREES = ("/bin/", "/boot/", "/dev/", "/etc/", "/lib/", "/lib32/", "/lib64/",
                 "/proc/", "/sbin/", "/sys/", "/usr/bin/", "/usr/lib/", "/usr/sbin/")


@functools.lru_cache(maxsize=1)
def _home_dirs() -> frozenset[str]:
    """Every home directory of this machine's /etc/passwd (read once per process)."""
    try:
        return frozenset(posixpath.normpath(e.pw_dir) for e in pwd.getpwall()
                         if e.pw_dir.startswith("/"))
    except OSError:
        return frozenset()


def validate_app_dir(value: str) -> str:
    """Refuse an app dir that is `/`, a system path, or a home directory itself.

    A home directory is an entry of /etc/passwd here, or any `/home/NAME` (the node's own
    accounts are not in this machine's passwd). ValueError says why.
    """
    path = posixpath.normpath(value) if value.startswith("/") else value
    if path.startswith("//"):
        path = "/" + path.lstrip("/")
    why = None
    if path in _SYSTEM_DIRS or path.startswith(_SYSTEM_TREES):
        why = "a system path"
    elif path in _home_dirs() or (path.startswith("/home/") and path.count("/") == 2):
        why = "a home directory itself"
    if why:
        shown = value if len(value) <= 60 else value[:60] + "..."
        raise ValueError(f"invalid app_dir {shown!r}: {why}; deploy --delete would empty it"
                         " (use a directory of its own, e.g. /home/USER/skeleton-app)")
    return value


@dataclass(frozen=True, slots=True)
class Node:
    """One cluster node, every field resolved (no None where a default exists)."""

    id: str
    host: str
    port: int = 22
    user: str = "root"
    roles: tuple[str, ...] = ()
    app_dir: str = "/home/sysadmin/Programs/skeleton-app"
    identity_file: str | None = None
    api_port: int = 8765
    name: str = ""

    def __post_init__(self) -> None:
        validate_node_id(self.id)
        validate_host(self.host)
        validate_port(self.port)
        validate_port(self.api_port)
        validate_user(self.user)
        for role in self.roles:
            validate_role(role)
        if not self.app_dir.startswith("/"):
            raise ValueError(f"invalid app_dir {self.app_dir!r}: expected an absolute path")
        if "\n" in self.app_dir or "\0" in self.app_dir:
            raise ValueError("invalid app_dir: contains a newline or NUL")
        validate_app_dir(self.app_dir)


def fold(ids: Iterable[str]) -> str:
    """Fold node ids into ClusterShell's range syntax: `linux-[01-06],windows-main`."""
    ids = list(ids)
    if not ids:
        return ""
    from ClusterShell.NodeSet import NodeSet, NodeSetException  # ~10 ms: only when folding

    try:
        return str(NodeSet.fromlist(ids))
    except NodeSetException:
        return ",".join(sorted(ids))


def expand(spec: str) -> list[str]:
    """Expand one selection spec (`a,b`, `linux-[01-03]`, globs kept as-is) into patterns."""
    from ClusterShell.NodeSet import NodeSet, NodeSetException

    out: list[str] = []
    for part in _split_top_level(spec):
        part = part.strip()
        if not part:
            continue
        if any(ch in part for ch in "*?") and "[" not in part:
            out.append(part)
            continue
        try:
            out.extend(NodeSet(part))
        except NodeSetException as exc:
            if any(ch in part for ch in "*?"):
                out.append(part)  # a glob with brackets, e.g. linux-0[1-3]* : fnmatch it
            else:
                raise SelectionError(f"invalid node selection {part!r}: {exc}") from exc
    return out


def _split_top_level(spec: str) -> list[str]:
    """Split on commas that are not inside [...] (ClusterShell ranges use commas inside)."""
    parts: list[str] = []
    current: list[str] = []
    depth = 0
    for ch in spec:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth = max(0, depth - 1)
        if ch == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return parts


def _matches(node: Node, patterns: Sequence[str]) -> bool:
    return any(
        node.id == p or node.host == p or fnmatch.fnmatchcase(node.id, p) for p in patterns
    )


def select(
    nodes: Sequence[Node],
    patterns: Sequence[str] = (),
    *,
    roles: Sequence[str] = (),
    exclude: Sequence[str] = (),
) -> tuple[Node, ...]:
    """Select nodes: `patterns` (ids, ranges, globs; empty = all), then roles, then exclusions.

    A selection that matches nothing is an error listing the known nodes, never a no-op.
    A literal id (no glob) that names no node is an error too: a typo must not silently
    shrink the target set.
    """
    def known() -> str:
        return fold(n.id for n in nodes) or "(none)"

    wanted: list[str] = [p for spec in patterns for p in expand(spec)]
    chosen = list(nodes)
    if wanted:
        unknown = [
            p for p in wanted
            if not any(ch in p for ch in "*?[") and not any(p in (n.id, n.host) for n in nodes)
        ]
        if unknown:
            raise SelectionError(f"unknown node {fold(unknown)}; known nodes: {known()}")
        chosen = [n for n in chosen if _matches(n, wanted)]
    if roles:
        role_set = set(roles)
        chosen = [n for n in chosen if role_set.intersection(n.roles)]
    if exclude:
        dropped = [p for spec in exclude for p in expand(spec)]
        chosen = [n for n in chosen if not _matches(n, dropped)]
    if not chosen:
        what = []
        if wanted:
            what.append("--node " + ",".join(patterns))
        if roles:
            what.append("--role " + ",".join(roles))
        if exclude:
            what.append("--exclude " + ",".join(exclude))
        asked = " ".join(what) or "the selection"
        raise SelectionError(f"{asked} matched no node; known nodes: {known()}")
    return tuple(chosen)
