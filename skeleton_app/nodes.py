"""Nodes: the frozen `Node` value, validation of everything that names a node, and selection.

Node ids become file names (`collected_logs/<id>.log`) and appear in remote commands, and
hosts end up on an `ssh` command line, so both are validated wherever they enter: the
config file, the registry (on read as well as write) and the command line.
"""

from __future__ import annotations

import fnmatch
import functools
import ipaddress
import os
import posixpath
import pwd
import re
import reprlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import NoReturn

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
        raise ValueError(f"invalid port {shown(value)}: expected an integer from 1 to 65535")
    return value


def validate_user(value: object) -> str:
    if not isinstance(value, str) or not USER_RE.match(value):
        raise ValueError(f"invalid user {shown(value)}: expected a POSIX user name")
    return value


def validate_role(value: object) -> str:
    if not isinstance(value, str) or not ROLE_RE.match(value):
        raise ValueError(
            f"invalid role {shown(value)}: expected letters, digits, '.', '_', '-' (at most 63)"
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
        if not isinstance(self.roles, tuple):
            raise ValueError(f"invalid roles {shown(self.roles)}: expected a tuple of roles")
        for role in self.roles:
            validate_role(role)
        # Wrong types are ValueErrors too (`app_dir: 5` was an AttributeError traceback).
        if not isinstance(self.name, str):
            raise ValueError(f"invalid name {shown(self.name)}: expected a string")
        if self.identity_file is not None and not isinstance(self.identity_file, str):
            raise ValueError(f"invalid identity_file {shown(self.identity_file)}:"
                             " expected a path")
        if not isinstance(self.app_dir, str) or not self.app_dir.startswith("/"):
            raise ValueError(f"invalid app_dir {shown(self.app_dir)}: expected an absolute path")
        if "\n" in self.app_dir or "\0" in self.app_dir:
            raise ValueError("invalid app_dir: contains a newline or NUL")
        validate_app_dir(self.app_dir)


def fold(ids: Iterable[str]) -> str:
    """Fold node ids into ClusterShell's range syntax: `linux-[01-06],windows-main`."""
    ids = list(ids)
    if not ids:
        return ""
    from ClusterShell.NodeSet import (  # ~10 ms: only when folding
        RESOLVER_NOGROUP,
        NodeSet,
        NodeSetException,
    )

    try:
        return str(NodeSet.fromlist(ids, resolver=RESOLVER_NOGROUP))
    except NodeSetException:
        return ",".join(sorted(ids))


# What one element of a selection may hold: id/host characters, IPv6 colons, ranges and
# globs. Everything else ClusterShell would read as syntax of its own (`!` `&` `^` set
# operations, `@` groups from /etc/clustershell) is refused before it gets there.
_PART_RE = re.compile(r"^[A-Za-z0-9._:*?\[\],-]+\Z")
_GROUP_REF_RE = re.compile(r"^@([A-Za-z0-9][A-Za-z0-9._-]{0,62})\Z")
# `@failed`: the previous run's failed and unreachable nodes (`ansible --limit @site.retry`).
# The caller looks the run up (`app.commands.Session.select`) and passes the ids to
# `select(failed=...)`; given that, it wins over a group or role of that name.
FAILED_REF = "@failed"
# A range that expands further than this is a typo (`linux-[1-99999999]`), not a cluster.
MAX_RANGE = 10_000


def shown(value: object, limit: int = 60) -> str:
    """`repr(value)` cut to `limit` characters: error messages never print an unbounded
    value (a YAML alias bomb, a megabyte argument) and always stay on one line. reprlib
    never builds the whole repr (a list of 60,000 references to one 700 KB string is
    cheap in memory and 42 GB as text)."""
    brief = reprlib.Repr()
    brief.maxstring = brief.maxother = limit
    brief.maxlist = brief.maxtuple = brief.maxdict = brief.maxset = 4
    brief.maxlevel = 3
    return clip(brief.repr(value), limit)


def clip(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def expand(spec: str) -> list[str]:
    """Expand one selection spec (`a,b`, `linux-[01-03]`, globs kept as-is) into patterns.

    `@NAME` is not expanded here (it needs the project's groups and roles: `select`); an
    empty spec or element, or an element with other syntax, is a SelectionError. ClusterShell
    only ever sees an element with a range, and never with its group resolver.
    """
    try:
        if not spec.strip():
            raise SelectionError("empty selection")
        return [p for part in _split_top_level(spec) for p in _expand_part(part.strip())]
    except SelectionError as exc:
        raise SelectionError(f"node selection {shown(spec)}: {exc}") from None


def _expand_part(part: str) -> list[str]:
    if not part:
        raise SelectionError("empty element (a comma too many?)")
    if not _PART_RE.match(part):
        raise SelectionError(
            f"invalid node selection {shown(part)}: expected ids, addresses, ranges"
            " (linux-[01-03]), globs (linux-*) or @GROUP / @ROLE")
    if "[" not in part and "]" not in part:
        return [part]
    from ClusterShell.NodeSet import RESOLVER_NOGROUP, NodeSet, NodeSetException

    try:
        # RESOLVER_NOGROUP: no group source and no wildcard lookup of "all nodes" in
        # /etc/clustershell; `*` and `?` stay in the expanded names for fnmatch.
        names = NodeSet(part, resolver=RESOLVER_NOGROUP)
        if len(names) > MAX_RANGE:
            raise SelectionError(f"{shown(part)} expands to {len(names)} names"
                                 f" (at most {MAX_RANGE})")
        return list(names)
    except NodeSetException as exc:
        raise SelectionError(f"invalid node selection {shown(part)}: {exc}") from exc


def validate_host_list(value: str) -> list[str]:
    """Check a `fab -H` value as fab will split it (on every comma) into `[user@]host[:port]`
    connections: each element must name one node id, a range of them (`node-[01-03]`) or an
    address. An empty element would make fab crash, and `@NAME` would reach us as host
    `NAME` (fab reads the `@` as an empty user): groups and roles are for `--node`, which
    expands them. A range with a comma (`node-[01,03]`) is cut in two by fab, and a port
    that is not a number is a traceback in fab. SelectionError."""
    hosts = value.split(",")
    for host in hosts:
        user, at, name = host.rpartition("@")
        if not host.strip() or (at and not name.strip()):
            raise SelectionError(f"-H {shown(value)}: empty host")
        if at and not user:
            raise SelectionError(
                f"-H {shown(value)}: {shown(host)} is a group or role: fab takes node ids or"
                " addresses (use `skeleton cluster ... --node @NAME` or `inv ... --node`)")
        if name.count("[") != name.count("]"):
            raise SelectionError(
                f"-H {shown(value)}: fab splits -H at every comma, so a range cannot hold one:"
                " write node-[01-03] or list the ids")
        address, colon, port = name.rpartition(":")
        if colon and address.count(":") == 0 and port and not (
                port.isdigit() and 1 <= int(port) <= 65535):
            raise SelectionError(f"-H {shown(value)}: invalid port {shown(port)} in"
                                 f" {shown(host)}: expected 1 to 65535")
    return hosts


def validate_fab_argv(argv: Sequence[str]) -> list[str]:
    """When `argv` is a `fab` command line, check its `-H`/`--hosts` value with
    `validate_host_list` (SelectionError) and return its elements as typed. Anything else
    passes (no elements)."""
    if not argv or os.path.basename(argv[0]) != "fab":
        return []
    hosts: list[str] = []
    for i, arg in enumerate(argv[1:], start=1):
        if arg in ("-H", "--hosts") and i + 1 < len(argv):
            hosts += validate_host_list(argv[i + 1])
        elif arg.startswith("--hosts="):
            hosts += validate_host_list(arg.partition("=")[2])
        elif arg.startswith("-H") and len(arg) > 2:
            hosts += validate_host_list(arg[2:])
    return hosts


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


def names_failed(specs: Iterable[str]) -> bool:
    """Does any of these selection values name `@failed` (as one comma-separated element)?"""
    return any(part.strip() == FAILED_REF for spec in specs for part in _split_top_level(spec))


def _matches(node: Node, pattern: str) -> bool:
    if any(ch in pattern for ch in "*?"):
        return fnmatch.fnmatchcase(node.id, pattern)
    return pattern in (node.id, node.host)


class _Resolver:
    """Turns specs into nodes against the known nodes, the project's groups and roles.
    Every element must name at least one node: nothing ever widens to "all"."""

    def __init__(self, nodes: Sequence[Node], groups: Mapping[str, Sequence[str]],
                 failed: Sequence[str] | None = None):
        self.nodes = nodes
        self.groups = groups
        self.failed = failed

    def known(self) -> str:
        return "known nodes: " + (fold(n.id for n in self.nodes) or "(none)")

    def fail(self, where: str, why: str) -> NoReturn:
        raise SelectionError(f"{where}: {why}; {self.known()}")

    def spec(self, where: str, spec: str, *, refs: bool = True) -> set[str]:
        """The ids a spec names (one `--node`/`--exclude` value, or a group's member).
        `refs=False`: `@NAME` is refused (a group's members: no recursion)."""
        if not spec.strip():
            self.fail(where, "empty selection")
        chosen: set[str] = set()
        for part in _split_top_level(spec):
            part = part.strip()
            ref = _GROUP_REF_RE.match(part)
            if ref and refs:
                chosen |= self.reference(where, ref.group(1))
                continue
            try:
                patterns = _expand_part(part)
            except SelectionError as exc:
                self.fail(where, str(exc))
            chosen |= self.patterns(where, patterns)
        return chosen

    def patterns(self, where: str, patterns: Sequence[str]) -> set[str]:
        chosen: set[str] = set()
        for pattern in patterns:
            hit = {n.id for n in self.nodes if _matches(n, pattern)}
            if not hit:
                literal = not any(ch in pattern for ch in "*?")
                self.fail(where, f"unknown node {clip(pattern)}" if literal
                          else f"{clip(pattern)} matched no node")
            chosen |= hit
        return chosen

    def reference(self, where: str, name: str) -> set[str]:
        """`@NAME`: the config's group of that name, else the nodes with that role (the
        role stays reachable with `--role`). Nothing else: never ClusterShell's groups.
        `@failed`, when the caller gave the previous run's failed ids, is those ids."""
        if self.failed is not None and "@" + name == FAILED_REF:
            return self.previous_failures(where, self.failed)
        if name in self.groups:
            members: set[str] = set()
            for member in self.groups[name]:
                members |= self.spec(f"{where}: group {name} ({shown(member)})", member,
                                     refs=False)
            return members
        has_role = {n.id for n in self.nodes if name in n.roles}
        if not has_role:
            self.fail(where, f"no group or role named {name!r} ({self.names()})")
        return has_role

    def previous_failures(self, where: str, failed: Sequence[str]) -> set[str]:
        # Never widen, never narrow silently: a failed node that is gone is an error.
        # The ids come from a file or the registry's journal, not from us: one that is not
        # even an id (an escape sequence, a range) is named quoted, never folded or printed.
        bad = [i for i in failed if not isinstance(i, str) or not NODE_ID_RE.match(i)]
        if bad:
            self.fail(where, f"{FAILED_REF}: the last run names {shown(bad[0])}, which is not"
                      " a node id (a damaged state file or journal)")
        known = {n.id for n in self.nodes}
        gone = [node_id for node_id in failed if node_id not in known]
        if gone:
            self.fail(where, f"{FAILED_REF}: {fold(gone)} failed in the last run but"
                      f" {'is' if len(gone) == 1 else 'are'} no longer a node")
        return set(failed)

    def names(self) -> str:
        roles = sorted({r for n in self.nodes for r in n.roles})
        return (f"groups: {', '.join(sorted(self.groups)) or '(none)'};"
                f" roles: {', '.join(roles) or '(none)'}")

    def roles(self, roles: Sequence[str]) -> set[str]:
        chosen: set[str] = set()
        for role in roles:
            try:
                validate_role(role)
            except ValueError as exc:
                self.fail(f"--role {shown(role)}", str(exc))
            hit = {n.id for n in self.nodes if role in n.roles}
            if not hit:
                raise SelectionError(f"--role {role} matched no node ({self.names()});"
                                     f" {self.known()}")
            chosen |= hit
        return chosen


def select(
    nodes: Sequence[Node],
    patterns: Sequence[str] = (),
    *,
    roles: Sequence[str] = (),
    exclude: Sequence[str] = (),
    groups: Mapping[str, Sequence[str]] | None = None,
    failed: Sequence[str] | None = None,
) -> tuple[Node, ...]:
    """Select nodes: `patterns` (ids, addresses, ranges, globs, `@GROUP`/`@ROLE`; none
    given = all), then roles, then exclusions.

    Every value and every comma-separated element must name at least one node, in
    `exclude` too (a typo there would widen the run): an empty value, an unknown id, a glob
    or `@NAME` that matches nothing is a SelectionError listing the known nodes, and so is
    a selection left empty. Only giving no `patterns` at all means every node. `failed`:
    the ids `@failed` stands for (the previous run's failures; see FAILED_REF).
    """
    resolver = _Resolver(nodes, groups or {}, failed)
    if isinstance(patterns, str) or isinstance(exclude, str) or isinstance(roles, str):
        raise TypeError("patterns, roles and exclude are sequences of strings, not a string")
    chosen = list(nodes)
    if patterns:
        wanted = set().union(*(resolver.spec(f"--node {shown(s)}", s) for s in patterns))
        chosen = [n for n in chosen if n.id in wanted]
    if roles:
        with_role = resolver.roles(roles)
        chosen = [n for n in chosen if n.id in with_role]
    if exclude:
        dropped = set().union(*(resolver.spec(f"--exclude {shown(s)}", s) for s in exclude))
        chosen = [n for n in chosen if n.id not in dropped]
    if not chosen:
        what = []
        if patterns:
            what.append("--node " + ",".join(patterns))
        if roles:
            what.append("--role " + ",".join(roles))
        if exclude:
            what.append("--exclude " + ",".join(exclude))
        asked = " ".join(what) or "the selection"
        raise SelectionError(f"{clip(asked)} matched no node; {resolver.known()}")
    return tuple(chosen)
