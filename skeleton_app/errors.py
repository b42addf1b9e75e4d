"""The one exception tree of skeleton_app.

    SkeletonError                       root; every error we raise derives from it
    ├── UsageError                      bad arguments or selection          -> exit 2
    │   ├── ConfigError                 bad config file / env / flag        -> exit 2
    │   └── SelectionError              --node/--role/--exclude matched nothing
    ├── RegistryError                   PostgreSQL unreachable, schema, ... -> exit 3
    │   └── ForeignRoleError            a daemon's DSN is not its node's own role
    ├── TestbedError                    the local test cluster could not be made
    └── NodeError                       one node could not run a command    -> exit 4
                                        (carries a NodeErrorKind; LOCAL: exit 1;
                                        `interrupted`: exit 130)

`ExitCode` is the one definition of the exit codes; the classes above and
`results.ClusterResult.exit_code()` both use it.

Third-party errors (paramiko, socket, psycopg, invoke) are translated into these at the
module that calls the library (`ssh/errors.py`, `registry/connection.py`); nothing above sees
them. The CLI maps the tree to exit codes in one place (`app/cli`'s `main`); the library
never calls `sys.exit`.
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    """Exit codes of every `skeleton cluster` command (README "Exit codes", `app.cli`)."""

    OK = 0  # every selected node succeeded
    FAILED = 1  # some node ran and failed, or refused for a precondition (NodeErrorKind.LOCAL)
    USAGE = 2  # usage or configuration error; nothing ran
    REGISTRY = 3  # registry/database error; nothing ran
    UNREACHABLE = 4  # some node unreachable, refused, auth, host key, timed out: wins over 1
    INTERRUPTED = 130  # stopped by Ctrl-C, as a shell reports a command ended by SIGINT: wins


class SkeletonError(Exception):
    """Root of every error raised by skeleton_app."""

    exit_code: int = ExitCode.FAILED


class UsageError(SkeletonError):
    """The user asked for something that cannot be done as asked. Nothing ran."""

    exit_code = ExitCode.USAGE


class ConfigError(UsageError):
    """A configuration value is wrong. `str()` names the source, the key and what was expected."""

    def __init__(self, message: str, *, source: str | None = None, key: str | None = None):
        self.source = source
        self.key = key
        prefix = ""
        if source and key:
            prefix = f"{source}: {key}: "
        elif source:
            prefix = f"{source}: "
        elif key:
            prefix = f"{key}: "
        super().__init__(prefix + message)


class SelectionError(UsageError):
    """A node selection matched nothing (or named an unknown node)."""


class RegistryError(SkeletonError):
    """The node registry (PostgreSQL) could not be used. Nothing ran."""

    exit_code = ExitCode.REGISTRY


class ForeignRoleError(RegistryError):
    """A node daemon's registry DSN logs in as a role that is not that node's own (the
    operator's, or another node's): the daemon writes nothing with it."""


class TestbedError(SkeletonError):
    """The local test cluster could not be started, inspected or removed."""

    __test__ = False  # not a pytest test class despite the name


class NodeErrorKind(enum.StrEnum):
    """Why a node produced no exit code. Values are stable: they appear in JSON and the DB."""

    UNREACHABLE = "unreachable"  # no route, connect timed out, DNS failure
    REFUSED = "refused"  # TCP connection refused (sshd not running)
    AUTH = "auth"  # authentication failed
    HOSTKEY_UNKNOWN = "hostkey-unknown"
    HOSTKEY_CHANGED = "hostkey-changed"
    TIMEOUT = "timeout"  # command exceeded its deadline (and was killed)
    LOST = "lost"  # connection died or stopped answering mid-command
    PROTOCOL = "protocol"  # SSH negotiation failed in some other way
    LOCAL = "local"  # a local step failed (rsync missing, bad path, lock held, ...)
    INTERRUPTED = "interrupted"  # stopped by Ctrl-C / a cancel (skeleton_app.cancel)
    ERROR = "error"  # anything else

    @property
    def exit_code(self) -> ExitCode:
        """LOCAL: the node answered but could not do it (deploy lock held, rsync missing):
        a failed node, 1. INTERRUPTED: stopped by Ctrl-C, 130. Every other kind: it could
        not be reached or broke, 4."""
        if self is NodeErrorKind.INTERRUPTED:
            return ExitCode.INTERRUPTED
        return ExitCode.FAILED if self is NodeErrorKind.LOCAL else ExitCode.UNREACHABLE


class NodeError(SkeletonError):
    """A node could not run a command: never ran, or broke while running."""

    exit_code = ExitCode.UNREACHABLE

    def __init__(self, kind: NodeErrorKind, message: str, *, node: str | None = None):
        self.kind = kind
        self.exit_code = kind.exit_code
        self.node = node
        self.message = message
        super().__init__(f"{node}: {message}" if node else message)
