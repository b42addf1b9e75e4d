"""The node registry: where cluster commands find their nodes, and where runs are journaled.

Two implementations of one `Registry` protocol, picked by `open_registry(settings)`:

- `PostgresRegistry`: nodes register themselves (the daemon, `agent.py`), operators manage
  them (`skeleton nodes ...`), every cluster operation records a run. psycopg 3, bind
  parameters only, a connect timeout always, rows typed into dataclasses.
- `StaticRegistry`: the `nodes:` list of config.yaml when no DSN is configured.

Who writes what (migration 0002): the operator's role owns the tables; each node's daemon
should hold a role of its own (`issue_credentials`, `skeleton nodes credentials`), which
row-level security confines to its own row and column rights to the columns a daemon owns
(heartbeat, metrics, daemon state, capabilities). A row a daemon creates (`register_self`)
is pending, never a target, until `approve`; operator writes (`upsert_node`) approve.

Rows are untrusted input: a node writes its own row, and whatever else can reach the database
can too. Every row is validated when it is read, with the rules used for config.yaml (ids and
hosts end up in file names and on ssh command lines); a bad row is skipped with a warning
naming the row and the field, and the valid ones proceed.

Errors: every psycopg error is translated here into `RegistryError` (exit 3) naming
host:port and the reason; nothing above this module sees psycopg's exceptions. Invalid node
data handed in by a caller is a `UsageError`. The DSN itself never appears in a message (it
may hold a password).

The schema is created and upgraded by `init_schema(dsn)` (`skeleton db init`) from the
versioned files in `skeleton_app/registry/migrations/NNNN_*.sql`.

Also here, for the seed's scripts: `await register_node_in_db(db, {...})` and
`await get_nodes_from_db(db)` over an async psycopg connection, and their sync twins.
"""

from __future__ import annotations

import dataclasses
import getpass
import hashlib
import json
import logging
import math
import posixpath
import re
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from importlib import resources
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Protocol

import psycopg
from psycopg import errors as pg_errors
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import class_row
from psycopg.types.json import Jsonb

from skeleton_app.errors import ConfigError, RegistryError, SkeletonError, UsageError
from skeleton_app.nodes import (
    Node,
    validate_app_dir,
    validate_host,
    validate_node_id,
    validate_port,
    validate_role,
    validate_user,
)

if TYPE_CHECKING:
    from skeleton_app.config import Settings
    from skeleton_app.results import ClusterResult

log = logging.getLogger(__name__)

# pg_advisory_xact_lock key serialising `init_schema` across processes: the first 8 bytes of
# sha256("skeleton_app.schema") as a signed bigint. Any constant works if nothing else uses it.
SCHEMA_LOCK_KEY = 0x2F1A_5C3E_7B4D_0961
DEFAULT_CONNECT_TIMEOUT = 5.0
# Server-side bound on every statement: a registry that hangs must not hang a command.
STATEMENT_TIMEOUT_MS = 30_000
MIGRATION_STATEMENT_TIMEOUT_MS = 300_000
OUTPUT_TAIL_CHARS = 4000  # of stdout and of stderr kept per node in run_nodes
MAX_JSON_BYTES = 64 * 1024  # labels, capabilities, metrics written by one node
DAEMON_STATES = ("starting", "running", "stopping", "stopped")
_MIGRATION_RE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_NODE_COLUMNS = (
    "id, name, host, ssh_port, ssh_user, api_port, roles, labels, app_dir, capabilities,"
    " enabled, registered_at, updated_at, last_seen, daemon_state, daemon_pid, started_at,"
    " code_version, metrics, approved,"
    " extract(epoch FROM now() - last_seen)::float8 AS seen_ago"
)
# What a node's own database role may write (migration 0002, `issue_credentials`): its
# heartbeat and facts. host, app_dir, enabled, roles, approved are the operator's columns.
_NODE_INSERT_COLUMNS = ("id", "name", "host", "ssh_port", "ssh_user", "api_port",
                        "capabilities", "last_seen", "metrics", "daemon_state", "daemon_pid",
                        "started_at", "code_version")
_NODE_UPDATE_COLUMNS = ("capabilities", "last_seen", "metrics", "daemon_state", "daemon_pid",
                        "started_at", "code_version", "updated_at")
NODE_ROLE_PREFIX = "skeleton_node_"


# ------------------------------------------------------------------------------ values


@dataclass(frozen=True, slots=True)
class NodeDefaults:
    """What a registry row leaves out (NULL) is filled in from the reader's settings."""

    user: str
    port: int = 22
    app_dir: str = "/home/sysadmin/Programs/skeleton-app"
    api_port: int = 8765
    identity_file: str | None = None
    # (host, row's user, row's port) -> (user, port), e.g. `Settings.login` (~/.ssh/config's
    # User/Port between an explicit ssh section and the defaults); None: user/port above.
    login: Callable[[str, str | None, int | None], tuple[str, int]] | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> NodeDefaults:
        return cls(
            user=settings.ssh.user,
            port=settings.ssh.port,
            app_dir=settings.app.dir,
            api_port=settings.daemon.api_port,
            identity_file=settings.ssh.identity_file,
            login=settings.login,
        )


class FieldError(ValueError):
    """A node field is invalid. `field` names it (a config/registry key)."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"{field}: {message}")


def _shown(value: object, limit: int = 40) -> str:
    """A safe, short rendering of untrusted text for messages (newlines escaped by repr)."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "...'"


def _check_text(name: str, value: object, *, limit: int) -> str:
    # Printable only: names and versions are shown in terminals and logs, where a newline or
    # an escape sequence from a hostile row would forge output.
    if not isinstance(value, str):
        raise FieldError(name, f"expected a string, got {type(value).__name__}")
    if len(value) > limit or not value.isprintable():
        raise FieldError(name, f"invalid value {_shown(value)}: expected at most {limit}"
                               " printable characters")
    return value


def _check_app_dir(value: object) -> str:
    if not isinstance(value, str):
        raise FieldError("app_dir", f"expected a string, got {type(value).__name__}")
    # Stricter than config.yaml's rule: deploy (rsync --delete) and daemon control act inside
    # this directory, so "/" or a path climbing out with ".." from a row is refused.
    if (
        not value.startswith("/")
        or len(value) > 1024
        or not value.isprintable()
        or posixpath.normpath(value) != value.rstrip("/")
        or value.rstrip("/") == ""
        or ".." in value.split("/")
    ):
        raise FieldError("app_dir", f"invalid app_dir {_shown(value)}: expected a normalised"
                                    " absolute path other than /")
    try:
        validate_app_dir(value)
    except ValueError as exc:
        raise FieldError("app_dir", str(exc).removeprefix("invalid app_dir ")) from None
    return value


def _check_json_object(name: str, value: object) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise FieldError(name, f"expected a JSON object, got {type(value).__name__}")
    try:
        size = len(json.dumps(value, ensure_ascii=False, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise FieldError(name, f"not JSON: {exc}") from None
    if size > MAX_JSON_BYTES:
        raise FieldError(name, f"too large ({size} bytes, at most {MAX_JSON_BYTES})")
    return dict(value)


def _check_labels(value: object) -> dict[str, str]:
    labels = _check_json_object("labels", value)
    for key, val in labels.items():
        _check_text("labels", key, limit=63)
        _check_text(f"labels.{key}", val, limit=256)
    return labels


def _field(name: str, check: Callable[[Any], Any], value: Any) -> Any:
    try:
        return check(value)
    except FieldError:
        raise
    except ValueError as exc:
        raise FieldError(name, str(exc)) from None


@dataclass(frozen=True, slots=True)
class NodeSpec:
    """A node as the registry stores it: None means "the reader's default" for that field.

    Built from a config.yaml `nodes:` entry, a seed-style dict, a `Node`, or a database row;
    every field is validated on construction (FieldError names the field).
    """

    id: str
    host: str
    port: int | None = None
    user: str | None = None
    roles: tuple[str, ...] = ()
    app_dir: str | None = None
    api_port: int | None = None
    name: str | None = None
    labels: Mapping[str, str] | None = None  # None on write: keep what the row has
    capabilities: Mapping[str, Any] | None = None  # None on write: keep what the row has

    def __post_init__(self) -> None:
        _field("id", validate_node_id, self.id)
        _field("host", validate_host, self.host)
        if self.port is not None:
            _field("port", validate_port, self.port)
        if self.api_port is not None:
            _field("api_port", validate_port, self.api_port)
        if self.user is not None:
            _field("user", validate_user, self.user)
        if not isinstance(self.roles, tuple) or len(self.roles) > 64:
            raise FieldError("roles", "expected a list of at most 64 roles")
        for role in self.roles:
            _field("roles", validate_role, role)
        if self.app_dir is not None:
            _check_app_dir(self.app_dir)
        if self.name is not None:
            _check_text("name", self.name, limit=200)
        if self.labels is not None:
            object.__setattr__(self, "labels", MappingProxyType(_check_labels(self.labels)))
        if self.capabilities is not None:
            object.__setattr__(
                self, "capabilities",
                MappingProxyType(_check_json_object("capabilities", self.capabilities)),
            )

    @classmethod
    def from_node(
        cls,
        node: Node,
        *,
        labels: Mapping[str, str] | None = None,
        capabilities: Mapping[str, Any] | None = None,
    ) -> NodeSpec:
        return cls(
            id=node.id, host=node.host, port=node.port, user=node.user, roles=node.roles,
            app_dir=node.app_dir, api_port=node.api_port, name=node.name or None,
            labels=labels, capabilities=capabilities,
        )

    @classmethod
    def from_dict(cls, info: Mapping[str, Any]) -> NodeSpec:
        """From the config.yaml `nodes:` form (`port`, `user`) or column names (`ssh_port`...)."""
        if not isinstance(info, Mapping):
            raise FieldError("node", f"expected a mapping, got {type(info).__name__}")
        data = dict(info)
        for alias, key in (("ssh_port", "port"), ("ssh_user", "user")):
            if alias in data:
                if key in data:
                    raise FieldError(alias, f"given together with {key!r}: use one")
                data[key] = data.pop(alias)
        allowed = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise FieldError(unknown[0], f"unknown key (valid keys: {', '.join(sorted(allowed))})")
        for required in ("id", "host"):
            if required not in data:
                raise FieldError(required, "missing")
        roles = data.get("roles") or ()
        if isinstance(roles, str):
            roles = (roles,)
        if not isinstance(roles, list | tuple):
            raise FieldError("roles", f"expected a list of strings, got {_shown(roles)}")
        data["roles"] = tuple(roles)
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        """The config.yaml `nodes:` form: defaults (None) and empty values left out."""
        out: dict[str, Any] = {"id": self.id, "host": self.host}
        for key in ("port", "user", "app_dir", "api_port", "name"):
            value = getattr(self, key)
            if value is not None and not (key == "name" and value == self.id):
                out[key] = value
        if self.roles:
            out["roles"] = list(self.roles)
        return out

    def resolve(self, defaults: NodeDefaults) -> Node:
        if defaults.login is not None:
            user, port = defaults.login(self.host, self.user, self.port)
        else:
            user = self.user if self.user is not None else defaults.user
            port = self.port if self.port is not None else defaults.port
        return Node(
            id=self.id,
            host=self.host,
            port=port,
            user=user,
            roles=self.roles,
            app_dir=self.app_dir if self.app_dir is not None else defaults.app_dir,
            identity_file=defaults.identity_file,
            api_port=self.api_port if self.api_port is not None else defaults.api_port,
            name=self.name or self.id,
        )


@dataclass(frozen=True, slots=True)
class NodeRow:
    """One `nodes` row exactly as stored (typed by psycopg's class_row). Not yet trusted."""

    id: str
    name: str | None
    host: str
    ssh_port: int | None
    ssh_user: str | None
    api_port: int | None
    roles: list[str] | None
    labels: Any
    app_dir: str | None
    capabilities: Any
    enabled: bool
    registered_at: datetime
    updated_at: datetime
    last_seen: datetime | None
    daemon_state: str | None
    daemon_pid: int | None
    started_at: datetime | None
    code_version: str | None
    metrics: Any
    approved: bool
    seen_ago: float | None  # seconds since last_seen by the database's clock


@dataclass(frozen=True, slots=True)
class NodeEntry:
    """A validated registry row: the node plus what the registry knows about its daemon."""

    spec: NodeSpec
    node: Node
    enabled: bool = True
    registered_at: datetime | None = None
    last_seen: datetime | None = None
    seen_ago: float | None = None
    daemon_state: str | None = None
    daemon_pid: int | None = None
    started_at: datetime | None = None
    code_version: str | None = None
    metrics: Mapping[str, Any] = field(default_factory=dict)
    # False: the node registered itself and waits for `skeleton nodes approve ID`; it is not
    # a target until then. Config nodes and operator-added ones are approved by definition.
    approved: bool = True

    @property
    def state(self) -> str:
        """What `nodes list` shows: pending (never a target), disabled, or enabled."""
        if not self.approved:
            return "pending"
        return "enabled" if self.enabled else "disabled"

    def is_stale(self, stale_after: float) -> bool:
        """No heartbeat within `stale_after` seconds (or never). Stale nodes are still targeted."""
        return self.seen_ago is None or self.seen_ago > stale_after


def row_to_entry(row: NodeRow, defaults: NodeDefaults) -> NodeEntry:
    """Validate one stored row (FieldError naming the field when it is unusable)."""
    if not isinstance(row.roles, list | None):
        raise FieldError("roles", "expected a text array")
    spec = NodeSpec(
        id=row.id, host=row.host, port=row.ssh_port, user=row.ssh_user,
        roles=tuple(row.roles or ()), app_dir=row.app_dir, api_port=row.api_port,
        name=row.name, labels=row.labels, capabilities=row.capabilities,
    )
    metrics = _check_json_object("metrics", row.metrics)
    if row.daemon_state is not None and row.daemon_state not in DAEMON_STATES:
        raise FieldError("daemon_state", f"invalid value {_shown(row.daemon_state)}")
    if row.code_version is not None:
        _check_text("code_version", row.code_version, limit=100)
    try:
        node = spec.resolve(defaults)
    except ValueError as exc:  # a default that does not fit, e.g. an invalid ssh.user
        raise FieldError("node", str(exc)) from None
    return NodeEntry(
        spec=spec, node=node, enabled=row.enabled, registered_at=row.registered_at,
        last_seen=row.last_seen, seen_ago=row.seen_ago, daemon_state=row.daemon_state,
        daemon_pid=row.daemon_pid, started_at=row.started_at, code_version=row.code_version,
        metrics=MappingProxyType(metrics), approved=row.approved,
    )


def validate_rows(
    rows: Sequence[NodeRow], defaults: NodeDefaults
) -> tuple[list[NodeEntry], list[str]]:
    """Valid entries, and one warning per skipped row naming the row and the field."""
    entries: list[NodeEntry] = []
    warnings: list[str] = []
    for row in rows:
        try:
            entries.append(row_to_entry(row, defaults))
        except FieldError as exc:
            warnings.append(f"registry: skipped node row {_shown(row.id)}: {exc}")
    return entries, warnings


@dataclass(frozen=True, slots=True)
class RunNodeRecord:
    node_id: str
    exit_code: int | None
    error_kind: str | None
    error: str | None
    duration: float | None
    stdout_tail: str
    stderr_tail: str


@dataclass(frozen=True, slots=True)
class RunRecord:
    """One recorded cluster operation. `nodes` is filled by `get_run`, empty in `list_runs`."""

    id: int
    started_at: datetime
    finished_at: datetime | None
    who: str
    operation: str
    arguments: Any
    selection: list[str]
    exit_code: int | None
    duration: float | None
    node_count: int = 0
    ok_count: int = 0
    failed_count: int = 0
    error_count: int = 0
    nodes: tuple[RunNodeRecord, ...] = ()


@dataclass(frozen=True, slots=True)
class SchemaStatus:
    """What `init_schema` found and did."""

    before: int  # version found (0: no schema)
    after: int
    applied: tuple[str, ...]  # migration file names applied now


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


def migrations() -> tuple[Migration, ...]:
    """The migrations shipped in the package, in order."""
    found: list[Migration] = []
    for entry in (resources.files(__name__) / "migrations").iterdir():
        match = _MIGRATION_RE.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), entry.name, entry.read_text("utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise RuntimeError(f"migrations are not numbered 1..N: {versions}")  # packaging bug
    return tuple(found)


def schema_version_required() -> int:
    return len(migrations())


# --------------------------------------------------------------------- DSN and errors


@dataclass(frozen=True, slots=True)
class Target:
    """Where a DSN points, safe to print (no password)."""

    host: str
    port: str
    dbname: str

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_dsn(dsn: str) -> Target:
    """Check a DSN's syntax without connecting. RegistryError names what is wrong."""
    if not isinstance(dsn, str) or not dsn.strip():
        raise RegistryError("malformed registry DSN: empty")
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.Error as exc:
        # psycopg's message never echoes the string, which may hold a password.
        raise RegistryError(f"malformed registry DSN: {_reason(exc)}") from exc
    host = str(params.get("host") or params.get("hostaddr") or "localhost")
    port = str(params.get("port") or "5432")
    for one in port.split(","):
        if not one.isdigit() or not 1 <= int(one) <= 65535:
            raise RegistryError(f"malformed registry DSN: invalid port {_shown(one)}")
    dbname = str(params.get("dbname") or params.get("user") or "")
    return Target(host=host, port=port, dbname=dbname)


def _reason(exc: BaseException) -> str:
    """The useful part of a psycopg message, on one line."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    # libpq: 'connection failed: connection to server at "h", port 5 failed: FATAL:  password
    # authentication failed ...' and a second line of hints ("Is the server running ...?").
    text = next((line for line in lines if "failed: " in line), lines[0] if lines else "")
    if "failed: " in text:
        text = text.rsplit("failed: ", 1)[1]
    text = re.sub(r"^(FATAL|ERROR):\s+", "", text)
    return text or type(exc).__name__


def _translate(exc: psycopg.Error, target: Target | str, action: str) -> RegistryError:
    where = f"registry {target}"
    if isinstance(exc, pg_errors.UndefinedTable | pg_errors.UndefinedColumn):
        return RegistryError(
            f"{where}: the database schema is missing or incomplete ({_reason(exc)}):"
            " run `skeleton db init`"
        )
    if isinstance(exc, pg_errors.InsufficientPrivilege):
        return RegistryError(f"{where}: {action}: permission denied ({_reason(exc)})")
    if isinstance(exc, pg_errors.QueryCanceled):
        return RegistryError(f"{where}: {action}: timed out ({_reason(exc)})")
    return RegistryError(f"{where}: {action}: {_reason(exc)}")


def _connect_timeout(seconds: float) -> int:
    # libpq takes whole seconds and treats anything below 2 as 2; 0 would mean "wait forever".
    return max(2, math.ceil(seconds))


def connect(
    dsn: str,
    *,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    statement_timeout_ms: int = STATEMENT_TIMEOUT_MS,
    application_name: str = "skeleton",
) -> psycopg.Connection[Any]:
    """An autocommit connection with bounded connect, statement and network waits."""
    target = parse_dsn(dsn)
    seconds = _connect_timeout(connect_timeout)
    try:
        conn = psycopg.connect(
            dsn,
            autocommit=True,
            connect_timeout=seconds,
            application_name=application_name,
            # A peer that vanishes mid-query (PostgreSQL host down, network cut) would
            # otherwise block a read for the kernel's ~15 minute retransmission timeout.
            keepalives=1,
            keepalives_idle=5,
            keepalives_interval=2,
            keepalives_count=3,
            tcp_user_timeout=seconds * 1000 * 3,
        )
    except psycopg.Error as exc:
        raise _translate(exc, target, "cannot connect") from exc
    try:
        conn.execute("SELECT set_config('statement_timeout', %s, false)",
                     (str(int(statement_timeout_ms)),))
    except psycopg.Error as exc:
        conn.close()
        raise _translate(exc, target, "cannot configure the session") from exc
    return conn


# ------------------------------------------------------------------------------ schema


def _current_version(conn: psycopg.Connection[Any]) -> int | None:
    """The applied schema version, or None when there is no schema_version table."""
    exists = conn.execute("SELECT to_regclass('schema_version') IS NOT NULL").fetchone()
    if not exists or not exists[0]:
        return None
    row = conn.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()
    return int(row[0]) if row else 0


def _newer_error(target: Target, found: int, known: int) -> RegistryError:
    return RegistryError(
        f"registry {target}: the database schema is version {found}, newer than this"
        f" skeleton_app understands (version {known}): upgrade skeleton_app on this machine;"
        " refusing to use or change it"
    )


def check_schema(conn: psycopg.Connection[Any], target: Target) -> int:
    """Raise RegistryError unless the schema is exactly the version this code needs."""
    known = schema_version_required()
    found = _current_version(conn)
    if found is None or found == 0:
        raise RegistryError(
            f"registry {target}: database {target.dbname or '(default)'} has no skeleton"
            " schema: run `skeleton db init`"
        )
    if found > known:
        raise _newer_error(target, found, known)
    if found < known:
        raise RegistryError(
            f"registry {target}: the database schema is version {found}, this skeleton_app"
            f" needs version {known}: run `skeleton db init` to upgrade it"
        )
    return found


def init_schema(dsn: str, *, connect_timeout: float = DEFAULT_CONNECT_TIMEOUT) -> SchemaStatus:
    """Create or upgrade the schema. Idempotent, and safe to run from many shells at once.

    Everything happens in one transaction holding an advisory lock: a concurrent run waits,
    then finds the work done. A schema newer than this code is refused, untouched.
    """
    target = parse_dsn(dsn)
    known = migrations()
    with connect(dsn, connect_timeout=connect_timeout,
                 statement_timeout_ms=MIGRATION_STATEMENT_TIMEOUT_MS) as conn:
        try:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK_KEY,))
                # Created under the lock: two concurrent CREATE TABLE IF NOT EXISTS can
                # otherwise both try to create it and one fails on a unique index.
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS schema_version ("
                    " version integer PRIMARY KEY,"
                    " name text NOT NULL,"
                    " applied_at timestamptz NOT NULL DEFAULT now())"
                )
                before = _current_version(conn) or 0
                if before > len(known):
                    raise _newer_error(target, before, len(known))
                applied: list[str] = []
                for migration in known[before:]:
                    # Migration files hold only static DDL shipped in the package.
                    conn.execute(migration.sql.encode())
                    conn.execute(
                        "INSERT INTO schema_version (version, name) VALUES (%s, %s)",
                        (migration.version, migration.name),
                    )
                    applied.append(migration.name)
        except psycopg.Error as exc:
            raise _translate(exc, target, "cannot create the schema") from exc
    return SchemaStatus(before=before, after=len(known), applied=tuple(applied))


# ---------------------------------------------------------------------------- protocol


class Registry(Protocol):
    """Where nodes come from and where runs go. See PostgresRegistry for the semantics."""

    @property
    def source(self) -> str:
        """Human-readable origin: `postgresql HOST:PORT/DB` or `config.yaml nodes:`."""
        ...

    def list_nodes(self, *, enabled_only: bool = True) -> tuple[tuple[Node, ...], tuple[str, ...]]:
        ...

    def list_entries(
        self, *, enabled_only: bool = False
    ) -> tuple[tuple[NodeEntry, ...], tuple[str, ...]]:
        ...

    def upsert_node(
        self,
        node: Node | NodeSpec,
        *,
        labels: Mapping[str, str] | None = None,
        capabilities: Mapping[str, Any] | None = None,
    ) -> bool:
        ...

    def remove_node(self, node_id: str) -> bool:
        ...

    def register_self(
        self, node: Node, *, capabilities: Mapping[str, Any] | None = None
    ) -> bool:
        ...

    def approve(self, node_id: str) -> bool:
        ...

    def issue_credentials(self, node_id: str) -> str:
        ...

    def set_enabled(self, node_id: str, enabled: bool) -> bool:
        ...

    def heartbeat(
        self,
        node_id: str,
        *,
        metrics: Mapping[str, Any],
        daemon_state: str = "running",
        code_version: str | None = None,
        daemon_pid: int | None = None,
        started_at: datetime | None = None,
    ) -> bool:
        ...

    def mark_stopped(self, node_id: str) -> bool:
        ...

    def heartbeats(self, node_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        ...

    def record_status(self, node_id: str, status: Mapping[str, Any]) -> bool:
        ...

    def record_run(
        self,
        operation: str,
        arguments: Mapping[str, Any],
        selection: Sequence[str],
        who: str | None = None,
    ) -> int | None:
        ...

    def record_node_results(self, run_id: int | None, result: ClusterResult[Any]) -> None:
        ...

    def list_runs(self, *, limit: int = 20) -> tuple[RunRecord, ...]:
        ...

    def get_run(self, run_id: int) -> RunRecord | None:
        ...

    def close(self) -> None:
        ...

    def __enter__(self) -> Registry:
        ...

    def __exit__(self, *exc: object) -> None:
        ...


def default_who() -> str:
    try:
        user = getpass.getuser()
    except Exception:  # no passwd entry (containers)
        user = "?"
    return f"{user}@{socket.gethostname()}"


def _jsonable(value: Mapping[str, Any]) -> Any:
    """Arguments as JSON: paths, enums and the like become their str()."""
    return json.loads(json.dumps(dict(value), default=str))


def _tail(text: str) -> str:
    # PostgreSQL text cannot hold NUL; a command's output can.
    text = text.replace("\0", "\ufffd")
    return text[-OUTPUT_TAIL_CHARS:]


def _as_spec(
    node: Node | NodeSpec,
    labels: Mapping[str, str] | None,
    capabilities: Mapping[str, Any] | None,
) -> NodeSpec:
    try:
        if isinstance(node, Node):
            return NodeSpec.from_node(node, labels=labels, capabilities=capabilities)
        changes: dict[str, Any] = {}
        if labels is not None:
            changes["labels"] = labels
        if capabilities is not None:
            changes["capabilities"] = capabilities
        return dataclasses.replace(node, **changes) if changes else node
    except ValueError as exc:
        raise UsageError(f"invalid node {_shown(node.id)}: {exc}") from None


_UPSERT_SQL = """
INSERT INTO nodes (id, name, host, ssh_port, ssh_user, api_port, roles, app_dir, labels,
                   capabilities, approved)
VALUES (%(id)s, %(name)s, %(host)s, %(port)s, %(user)s, %(api_port)s, %(roles)s::text[],
        %(app_dir)s, coalesce(%(labels)s::jsonb, '{}'), coalesce(%(capabilities)s::jsonb, '{}'),
        true)
ON CONFLICT (id) DO UPDATE SET
    approved = true,
    name = EXCLUDED.name, host = EXCLUDED.host, ssh_port = EXCLUDED.ssh_port,
    ssh_user = EXCLUDED.ssh_user, api_port = EXCLUDED.api_port, roles = EXCLUDED.roles,
    app_dir = EXCLUDED.app_dir,
    labels = coalesce(%(labels)s::jsonb, nodes.labels),
    capabilities = coalesce(%(capabilities)s::jsonb, nodes.capabilities),
    updated_at = now()
RETURNING (xmax = 0) AS inserted
"""


def _upsert_params(spec: NodeSpec) -> dict[str, Any]:
    return {
        "id": spec.id, "name": spec.name, "host": spec.host, "port": spec.port,
        "user": spec.user, "api_port": spec.api_port, "roles": list(spec.roles),
        "app_dir": spec.app_dir,
        "labels": Jsonb(dict(spec.labels)) if spec.labels is not None else None,
        "capabilities": (
            Jsonb(dict(spec.capabilities)) if spec.capabilities is not None else None
        ),
    }


# Targets: enabled AND approved (a pending self-registration is never one).
_SELECT_NODES_SQL = (
    f"SELECT {_NODE_COLUMNS} FROM nodes WHERE (enabled AND approved) OR NOT %(enabled_only)s"
    " ORDER BY id"
)

# A daemon registering itself: a new row lands pending (the column default; a node role may
# not even write `approved`), an existing row only gets the node's own facts. host, app_dir,
# roles, enabled stay what the operator made them.
_REGISTER_SELF_SQL = """
INSERT INTO nodes (id, name, host, ssh_port, ssh_user, api_port, capabilities)
VALUES (%(id)s, %(name)s, %(host)s, %(port)s, %(user)s, %(api_port)s,
        coalesce(%(capabilities)s::jsonb, '{}'))
ON CONFLICT (id) DO UPDATE SET
    capabilities = coalesce(%(capabilities)s::jsonb, nodes.capabilities),
    updated_at = now()
RETURNING (xmax = 0) AS inserted
"""


def _node_grants(role: sql.Identifier) -> list[sql.Composed]:
    """What a node's role may do; RLS (migration 0002) narrows every one to its own row."""
    def columns(names: Sequence[str]) -> sql.Composed:
        return sql.SQL(", ").join(sql.Identifier(n) for n in names)

    return [
        sql.SQL("GRANT SELECT ON schema_version TO {}").format(role),
        sql.SQL("GRANT SELECT ON nodes TO {}").format(role),
        sql.SQL("GRANT INSERT ({}) ON nodes TO {}").format(columns(_NODE_INSERT_COLUMNS), role),
        sql.SQL("GRANT UPDATE ({}) ON nodes TO {}").format(columns(_NODE_UPDATE_COLUMNS), role),
    ]


def node_role_name(dbname: str, node_id: str) -> str:
    """The login role of node `node_id` in database `dbname`. Roles are cluster-wide in
    PostgreSQL: the database is part of the name, so two registries on one server never
    share a node's role (and node ids longer than a role name can be still fit)."""
    digest = hashlib.sha256(f"{dbname}\0{node_id}".encode()).hexdigest()[:24]
    return NODE_ROLE_PREFIX + digest


def node_dsn(dsn: str, role: str, password: str) -> str:
    """`dsn` with the node's role and password in place of the operator's."""
    params = {k: v for k, v in conninfo_to_dict(dsn).items() if v is not None}
    params.update(user=role, password=password)
    return make_conninfo(**{k: str(v) for k, v in params.items()})


# ------------------------------------------------------------------------- PostgreSQL


class PostgresRegistry:
    """The registry in PostgreSQL. One connection, opened on first use and reopened after
    a failure, so a long-running daemon survives a database restart. Thread-safe.
    """

    def __init__(
        self,
        dsn: str,
        *,
        defaults: NodeDefaults,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        application_name: str = "skeleton",
    ):
        self._target = parse_dsn(dsn)  # a malformed DSN fails here, before anything runs
        self._dsn = dsn
        self._defaults = defaults
        self._connect_timeout = connect_timeout
        self._application_name = application_name
        self._conn: psycopg.Connection[Any] | None = None
        self._lock = threading.RLock()

    @property
    def source(self) -> str:
        return f"postgresql {self._target}/{self._target.dbname}"

    @property
    def target(self) -> Target:
        return self._target

    def __enter__(self) -> PostgresRegistry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def ping(self) -> None:
        """Connect (if needed) and check the schema; RegistryError when unusable."""
        with self._session("cannot connect"):
            pass

    @contextmanager
    def _session(self, action: str) -> Iterator[psycopg.Connection[Any]]:
        """The live connection; psycopg errors become RegistryError, broken links are dropped."""
        with self._lock:
            if self._conn is None or self._conn.closed:
                conn = connect(self._dsn, connect_timeout=self._connect_timeout,
                               application_name=self._application_name)
                try:
                    check_schema(conn, self._target)
                except RegistryError:
                    conn.close()
                    raise
                except psycopg.Error as exc:
                    conn.close()
                    raise _translate(exc, self._target, action) from exc
                self._conn = conn
            try:
                yield self._conn
            except psycopg.Error as exc:
                if self._conn.broken or isinstance(exc, psycopg.OperationalError):
                    # Reconnect (and re-check the schema) on the next call.
                    self._conn.close()
                    self._conn = None
                raise _translate(exc, self._target, action) from exc

    # -- nodes

    def list_entries(
        self, *, enabled_only: bool = False
    ) -> tuple[tuple[NodeEntry, ...], tuple[str, ...]]:
        with self._session("cannot list nodes") as conn, conn.cursor(
            row_factory=class_row(NodeRow)
        ) as cur:
            rows = cur.execute(_SELECT_NODES_SQL, {"enabled_only": enabled_only}).fetchall()
        entries, warnings = validate_rows(rows, self._defaults)
        return tuple(entries), tuple(warnings)

    def list_nodes(self, *, enabled_only: bool = True) -> tuple[tuple[Node, ...], tuple[str, ...]]:
        """Registered (and by default enabled) nodes, fresh heartbeat or not; bad rows skipped."""
        entries, warnings = self.list_entries(enabled_only=enabled_only)
        return tuple(e.node for e in entries), warnings

    def get_entry(self, node_id: str) -> NodeEntry | None:
        """One node's validated row; None if absent. A bad row raises RegistryError."""
        with self._session("cannot read node") as conn, conn.cursor(
            row_factory=class_row(NodeRow)
        ) as cur:
            row = cur.execute(
                f"SELECT {_NODE_COLUMNS} FROM nodes WHERE id = %s", (node_id,)
            ).fetchone()
        if row is None:
            return None
        try:
            return row_to_entry(row, self._defaults)
        except FieldError as exc:
            raise RegistryError(f"registry {self._target}: node row {_shown(node_id)}: {exc}") \
                from None

    def upsert_node(
        self,
        node: Node | NodeSpec,
        *,
        labels: Mapping[str, str] | None = None,
        capabilities: Mapping[str, Any] | None = None,
    ) -> bool:
        """Insert or update a node by id (atomic: concurrent upserts leave one row, no error).

        Returns True when the row was created. `enabled` and `registered_at` of an existing
        row are kept: re-registering never re-enables a node an operator disabled. Labels and
        capabilities given as None keep their stored value.
        """
        spec = _as_spec(node, labels, capabilities)
        with self._session(f"cannot register node {spec.id}") as conn:
            row = conn.execute(_UPSERT_SQL, _upsert_params(spec)).fetchone()
        return bool(row and row[0])

    def register_self(
        self, node: Node, *, capabilities: Mapping[str, Any] | None = None
    ) -> bool:
        """The daemon's registration of its own node: True when the row was created (it is
        then pending until an operator approves it). An existing row keeps its host,
        app_dir, roles and state: only the node's capabilities are refreshed."""
        spec = _as_spec(node, None, capabilities)
        with self._session(f"cannot register node {spec.id}") as conn:
            row = conn.execute(_REGISTER_SELF_SQL, _upsert_params(spec)).fetchone()
        return bool(row and row[0])

    def approve(self, node_id: str) -> bool:
        """Make a pending node a target (`skeleton nodes approve ID`). False: no such node."""
        with self._session("cannot approve node") as conn:
            cur = conn.execute(
                "UPDATE nodes SET approved = true, updated_at = now() WHERE id = %s",
                (node_id,),
            )
            return cur.rowcount > 0

    def node_of_login(self) -> tuple[str, str | None]:
        """(this connection's role, the node it belongs to): None when the role is not a
        node's own (`issue_credentials`), e.g. the operator's, which may write every row."""
        with self._session("cannot check the registry role") as conn:
            row = conn.execute("SELECT current_user::text,"
                               " skeleton_node_of(current_user)").fetchone()
        if row is None:  # a SELECT without FROM always returns its row
            raise RegistryError(f"registry {self._target}: cannot check the registry role")
        return str(row[0]), None if row[1] is None else str(row[1])

    def issue_credentials(self, node_id: str) -> str:
        """Create (or re-key) node `node_id`'s own login role and return its DSN.

        The role may read and insert its own row only (row-level security, migration 0002)
        and write only the columns a daemon owns (`_NODE_UPDATE_COLUMNS`). A new random
        password each call: the previous DSN stops working. Needs CREATEROLE.
        """
        try:
            validate_node_id(node_id)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        password = secrets.token_urlsafe(24)
        with self._session(f"cannot create credentials for {node_id}") as conn, \
                conn.transaction():
            found = conn.execute("SELECT current_database()").fetchone()
            role = node_role_name(str(found[0]) if found else "", node_id)
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s",
                                  (role,)).fetchone()
            # Utility statements take no bind parameters: the role is a quoted identifier
            # and the password a quoted literal (psycopg.sql), never text pasted in.
            verb = sql.SQL("ALTER" if exists else "CREATE")
            conn.execute(sql.SQL("{} ROLE {} LOGIN PASSWORD {}").format(
                verb, sql.Identifier(role), sql.Literal(password)))
            conn.execute(
                "INSERT INTO node_roles (role, node_id) VALUES (%s, %s)"
                " ON CONFLICT (role) DO UPDATE SET node_id = EXCLUDED.node_id",
                (role, node_id),
            )
            for statement in _node_grants(sql.Identifier(role)):
                conn.execute(statement)
        return node_dsn(self._dsn, role, password)

    def remove_node(self, node_id: str) -> bool:
        # Not validated: an operator must be able to delete a row whose id is garbage.
        with self._session("cannot remove node") as conn, conn.transaction():
            cur = conn.execute("DELETE FROM nodes WHERE id = %s", (node_id,))
            removed = cur.rowcount > 0
            # The node's role can no longer log in; its node_roles entry stays, so that it
            # would still be confined to its (gone) row.
            for (role,) in conn.execute("SELECT role FROM node_roles WHERE node_id = %s",
                                        (node_id,)).fetchall():
                conn.execute(sql.SQL("ALTER ROLE {} NOLOGIN").format(sql.Identifier(role)))
            return removed

    def set_enabled(self, node_id: str, enabled: bool) -> bool:
        with self._session("cannot update node") as conn:
            cur = conn.execute(
                "UPDATE nodes SET enabled = %s, updated_at = now() WHERE id = %s",
                (enabled, node_id),
            )
            return cur.rowcount > 0

    def enable(self, node_id: str) -> bool:
        return self.set_enabled(node_id, True)

    def disable(self, node_id: str) -> bool:
        return self.set_enabled(node_id, False)

    def heartbeat(
        self,
        node_id: str,
        *,
        metrics: Mapping[str, Any],
        daemon_state: str = "running",
        code_version: str | None = None,
        daemon_pid: int | None = None,
        started_at: datetime | None = None,
    ) -> bool:
        """Record that the node's daemon is alive. False when the node is not registered
        (removed meanwhile, or a fresh database): the daemon then registers again.
        """
        if daemon_state not in DAEMON_STATES:
            raise ValueError(f"invalid daemon state {daemon_state!r}")
        try:
            checked = _check_json_object("metrics", metrics)
            if code_version is not None:
                _check_text("code_version", code_version, limit=100)
        except FieldError as exc:
            raise UsageError(f"invalid heartbeat from {_shown(node_id)}: {exc}") from None
        with self._session(f"cannot record heartbeat of {node_id}") as conn:
            cur = conn.execute(
                "UPDATE nodes SET last_seen = now(), metrics = %s, daemon_state = %s,"
                " code_version = coalesce(%s, code_version),"
                " daemon_pid = coalesce(%s, daemon_pid),"
                " started_at = coalesce(%s, started_at)"
                " WHERE id = %s",
                (Jsonb(checked), daemon_state, code_version, daemon_pid, started_at, node_id),
            )
            return cur.rowcount > 0

    def mark_stopped(self, node_id: str) -> bool:
        with self._session(f"cannot mark {node_id} stopped") as conn:
            cur = conn.execute(
                "UPDATE nodes SET daemon_state = 'stopped', daemon_pid = NULL,"
                " last_seen = now() WHERE id = %s",
                (node_id,),
            )
            return cur.rowcount > 0

    def heartbeats(self, node_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """What the daemons last reported, for `cluster status`: per node id, `last_seen`
        (epoch seconds), `seen_ago`, `daemon_state`, `code_version`, `daemon_pid`.

        `last_seen` is derived from the age measured by the database's clock, so a
        controller whose clock is off from the database's still computes the right age.
        Rows failing validation are left out (their fields are untrusted).
        """
        with self._session("cannot read heartbeats") as conn, conn.cursor(
            row_factory=class_row(NodeRow)
        ) as cur:
            rows = cur.execute(
                f"SELECT {_NODE_COLUMNS} FROM nodes WHERE id = ANY(%s::text[])",
                (list(node_ids),),
            ).fetchall()
        entries, _ = validate_rows(rows, self._defaults)
        now = time.time()
        return {
            e.node.id: {
                "last_seen": None if e.seen_ago is None else now - e.seen_ago,
                "seen_ago": e.seen_ago,
                "daemon_state": e.daemon_state,
                "daemon_pid": e.daemon_pid,
                "code_version": e.code_version,
            }
            for e in entries
        }

    def record_status(self, node_id: str, status: Mapping[str, Any]) -> bool:
        """Keep the controller's latest status probe of a node (not a heartbeat)."""
        try:
            checked = _check_json_object("status", status)
        except FieldError as exc:
            raise UsageError(f"invalid status of {_shown(node_id)}: {exc}") from None
        with self._session(f"cannot record the status of {node_id}") as conn:
            cur = conn.execute(
                "UPDATE nodes SET last_status = %s, status_at = now() WHERE id = %s",
                (Jsonb(checked), node_id),
            )
            return cur.rowcount > 0

    # -- runs

    def record_run(
        self,
        operation: str,
        arguments: Mapping[str, Any],
        selection: Sequence[str],
        who: str | None = None,
    ) -> int:
        """Journal the start of a cluster operation; returns the run id."""
        with self._session("cannot record the run") as conn:
            row = conn.execute(
                "INSERT INTO runs (who, operation, arguments, selection)"
                " VALUES (%s, %s, %s, %s::text[]) RETURNING id",
                (who or default_who(), operation, Jsonb(_jsonable(arguments)),
                 list(selection)),
            ).fetchone()
        assert row is not None  # INSERT ... RETURNING always returns the row
        return int(row[0])

    def record_node_results(self, run_id: int | None, result: ClusterResult[Any]) -> None:
        """Journal each node's outcome and close the run. `run_id=None` is a no-op."""
        if run_id is None:
            return
        rows = [
            (run_id, r.node, r.exit_code, r.error_kind.value if r.error_kind else None,
             _tail(r.error) if r.error else None, r.duration, _tail(r.stdout), _tail(r.stderr))
            for r in result.values()
        ]
        with self._session("cannot record node results") as conn, conn.transaction():
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO run_nodes (run_id, node_id, exit_code, error_kind, error,"
                    " duration, stdout_tail, stderr_tail) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
                    " ON CONFLICT (run_id, node_id) DO UPDATE SET exit_code = EXCLUDED.exit_code,"
                    " error_kind = EXCLUDED.error_kind, error = EXCLUDED.error,"
                    " duration = EXCLUDED.duration, stdout_tail = EXCLUDED.stdout_tail,"
                    " stderr_tail = EXCLUDED.stderr_tail",
                    rows,
                )
            conn.execute(
                "UPDATE runs SET finished_at = now(), exit_code = %s, duration = %s WHERE id = %s",
                (result.exit_code(), result.duration, run_id),
            )

    _RUN_SQL = """
        SELECT r.id, r.started_at, r.finished_at, r.who, r.operation, r.arguments, r.selection,
               r.exit_code, r.duration,
               count(n.node_id)::int AS node_count,
               count(n.node_id) FILTER (WHERE n.error_kind IS NULL AND n.exit_code = 0)::int
                   AS ok_count,
               count(n.node_id) FILTER (WHERE n.error_kind IS NULL AND n.exit_code <> 0)::int
                   AS failed_count,
               count(n.node_id) FILTER (WHERE n.error_kind IS NOT NULL)::int AS error_count
        FROM runs r LEFT JOIN run_nodes n ON n.run_id = r.id
    """

    def list_runs(self, *, limit: int = 20) -> tuple[RunRecord, ...]:
        """The most recent runs first."""
        with self._session("cannot list runs") as conn, conn.cursor(
            row_factory=class_row(RunRecord)
        ) as cur:
            rows = cur.execute(
                self._RUN_SQL + " GROUP BY r.id ORDER BY r.id DESC LIMIT %s", (max(1, limit),)
            ).fetchall()
        return tuple(rows)

    def get_run(self, run_id: int) -> RunRecord | None:
        with self._session(f"cannot read run {run_id}") as conn:
            with conn.cursor(row_factory=class_row(RunRecord)) as cur:
                run = cur.execute(
                    self._RUN_SQL + " WHERE r.id = %s GROUP BY r.id", (run_id,)
                ).fetchone()
            if run is None:
                return None
            with conn.cursor(row_factory=class_row(RunNodeRecord)) as cur:
                nodes = cur.execute(
                    "SELECT node_id, exit_code, error_kind, error, duration, stdout_tail,"
                    " stderr_tail FROM run_nodes WHERE run_id = %s ORDER BY node_id",
                    (run_id,),
                ).fetchall()
        return dataclasses.replace(run, nodes=tuple(nodes))


# ------------------------------------------------------------------------------ static


class StaticRegistry:
    """config.yaml's `nodes:` list. Read-only; runs are not recorded (no database)."""

    def __init__(self, nodes: Sequence[Node], *, source: str | None = None):
        self._nodes = tuple(nodes)
        self._source = source or "config.yaml"

    @property
    def source(self) -> str:
        return f"{self._source} nodes:"

    def __enter__(self) -> StaticRegistry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        pass

    def list_entries(
        self, *, enabled_only: bool = False
    ) -> tuple[tuple[NodeEntry, ...], tuple[str, ...]]:
        return tuple(NodeEntry(spec=NodeSpec.from_node(n), node=n) for n in self._nodes), ()

    def list_nodes(self, *, enabled_only: bool = True) -> tuple[tuple[Node, ...], tuple[str, ...]]:
        return self._nodes, ()

    def _read_only(self, what: str) -> ConfigError:
        return ConfigError(
            f"{what} needs a database (registry.dsn or SKELETON_DATABASE_URL); without one"
            f" the nodes are the `nodes:` list of {self._source}: edit it there",
            key="registry.dsn",
        )

    def upsert_node(
        self,
        node: Node | NodeSpec,
        *,
        labels: Mapping[str, str] | None = None,
        capabilities: Mapping[str, Any] | None = None,
    ) -> bool:
        raise self._read_only("adding a node")

    def remove_node(self, node_id: str) -> bool:
        raise self._read_only("removing a node")

    def register_self(
        self, node: Node, *, capabilities: Mapping[str, Any] | None = None
    ) -> bool:
        raise self._read_only("registering a node")

    def approve(self, node_id: str) -> bool:
        raise self._read_only("approving a node")

    def issue_credentials(self, node_id: str) -> str:
        raise self._read_only("a node's own credentials")

    def set_enabled(self, node_id: str, enabled: bool) -> bool:
        raise self._read_only("enabling or disabling a node")

    def heartbeat(
        self,
        node_id: str,
        *,
        metrics: Mapping[str, Any],
        daemon_state: str = "running",
        code_version: str | None = None,
        daemon_pid: int | None = None,
        started_at: datetime | None = None,
    ) -> bool:
        raise self._read_only("a heartbeat")

    def mark_stopped(self, node_id: str) -> bool:
        raise self._read_only("marking a node stopped")

    def heartbeats(self, node_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        return {}  # no daemon reports anywhere without a database

    def record_status(self, node_id: str, status: Mapping[str, Any]) -> bool:
        return False

    def record_run(
        self,
        operation: str,
        arguments: Mapping[str, Any],
        selection: Sequence[str],
        who: str | None = None,
    ) -> int | None:
        return None  # nothing configured to record into: not a failure

    def record_node_results(self, run_id: int | None, result: ClusterResult[Any]) -> None:
        return None

    def list_runs(self, *, limit: int = 20) -> tuple[RunRecord, ...]:
        raise self._read_only("the run journal")

    def get_run(self, run_id: int) -> RunRecord | None:
        raise self._read_only("the run journal")


def open_registry(settings: Settings, *, application_name: str = "skeleton") -> Registry:
    """PostgresRegistry when a DSN is configured (registry.dsn / SKELETON_DATABASE_URL),
    else the config file's static `nodes:` list. Connects lazily, on first use.
    """
    if settings.registry.dsn:
        return PostgresRegistry(
            settings.registry.dsn,
            defaults=NodeDefaults.from_settings(settings),
            connect_timeout=settings.registry.connect_timeout,
            application_name=application_name,
        )
    return StaticRegistry(settings.nodes, source=settings.source)


def record_result(
    settings: Settings,
    operation: str,
    arguments: Mapping[str, Any],
    selection: Sequence[str],
    result: ClusterResult[Any],
    *,
    who: str | None = None,
) -> int | None:
    """Journal one finished cluster operation (run + per-node rows) in one go.

    None when no database is configured. RegistryError when the database cannot be
    written: the caller (the CLI) warns once and keeps the operation's own exit code.
    """
    if not settings.registry.dsn:
        return None
    registry = open_registry(settings)
    try:
        run_id = registry.record_run(operation, arguments, selection, who)
        registry.record_node_results(run_id, result)
    finally:
        registry.close()
    return run_id


def journal_run(settings: Settings, operation: str, arguments: Mapping[str, Any],
                selection: Sequence[str], result: ClusterResult[Any]) -> str | None:
    """What every front end (the CLI, `inv`, `fab`) does after an operation: journal it when a
    registry is configured, never failing the command. Returns the warning line to print when
    the run could not be recorded (the operation's own exit code stands), else None."""
    try:
        record_result(settings, operation, arguments, selection, result)
    except SkeletonError as exc:
        return f"skeleton: warning: run not recorded in the registry: {exc}"
    return None


# ------------------------------------------------------------------- import / export


def parse_node_entries(items: object, *, source: str = "nodes") -> list[NodeSpec]:
    """Validate a config.yaml-style `nodes:` list. UsageError names the entry and the key."""
    if not isinstance(items, list):
        raise UsageError(f"{source}: expected a list of node entries")
    specs: list[NodeSpec] = []
    seen: set[str] = set()
    for i, item in enumerate(items):
        where = f"{source}[{i}]"
        try:
            spec = NodeSpec.from_dict(item)
        except FieldError as exc:
            name = item.get("id") if isinstance(item, Mapping) else None
            if isinstance(name, str) and _is_node_id(name):
                where = f"{source}[{name}]"
            raise UsageError(f"{where}: {exc}") from None
        except TypeError as exc:
            raise UsageError(f"{where}: {exc}") from None
        if spec.id in seen:
            raise UsageError(f"{source}[{spec.id}]: duplicate node id")
        seen.add(spec.id)
        specs.append(spec)
    return specs


def _is_node_id(value: str) -> bool:
    try:
        validate_node_id(value)
    except ValueError:
        return False
    return True


def node_entries(nodes: Sequence[NodeSpec | NodeEntry | Node]) -> list[dict[str, Any]]:
    """The config.yaml `nodes:` form of nodes (for `skeleton nodes export`)."""
    out: list[dict[str, Any]] = []
    for item in nodes:
        if isinstance(item, NodeEntry):
            item = item.spec
        elif isinstance(item, Node):
            item = NodeSpec.from_node(item)
        out.append(item.to_dict())
    return out


@dataclass(frozen=True, slots=True)
class ImportResult:
    added: tuple[str, ...]
    updated: tuple[str, ...]


def import_nodes(registry: Registry, items: object, *, source: str = "nodes") -> ImportResult:
    """Upsert every entry of a `nodes:` list; all entries are validated before any is written."""
    specs = parse_node_entries(items, source=source)
    added: list[str] = []
    updated: list[str] = []
    for spec in specs:
        (added if registry.upsert_node(spec) else updated).append(spec.id)
    return ImportResult(added=tuple(added), updated=tuple(updated))


def export_nodes(registry: Registry) -> tuple[list[dict[str, Any]], tuple[str, ...]]:
    """Every valid registered node (enabled or not) in `nodes:` form, and skipped-row warnings."""
    entries, warnings = registry.list_entries(enabled_only=False)
    return node_entries(entries), warnings


# ---------------------------------------------------------------- the seed's Python API

def parse_node(info: Mapping[str, Any], *, what: str = "invalid node info") -> NodeSpec:
    """`NodeSpec.from_dict` for callers that want our error tree: UsageError naming the key
    (`skeleton nodes add`, the seed API)."""
    try:
        return NodeSpec.from_dict(info)
    except (FieldError, TypeError) as exc:
        raise UsageError(f"{what}: {exc}") from None


def _conn_target(db: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> str:
    try:
        return f"{db.info.host}:{db.info.port}"
    except psycopg.Error:
        return "(closed connection)"


def _default_defaults() -> NodeDefaults:
    from skeleton_app.config import Settings  # values layer: no cycle, no I/O

    return NodeDefaults.from_settings(Settings())


def _log_warnings(warnings: Sequence[str]) -> None:
    for warning in warnings:
        log.warning("%s", warning)


async def register_node_in_db(
    db: psycopg.AsyncConnection[Any],
    info: Mapping[str, Any],
    *,
    defaults: NodeDefaults | None = None,
) -> Node:
    """Upsert one node from a dict (`id`, `host`, optional `port`, `user`, `roles`, `app_dir`,
    `api_port`, `name`, `labels`, `capabilities`) on the caller's async connection.

    Runs in its own transaction (a savepoint if the caller has one open). Returns the node as
    commands will see it.
    """
    spec = parse_node(info)
    try:
        async with db.transaction():
            await db.execute(_UPSERT_SQL, _upsert_params(spec))
    except psycopg.Error as exc:
        raise _translate(exc, _conn_target(db), f"cannot register node {spec.id}") from exc
    return spec.resolve(defaults or _default_defaults())


async def get_nodes_from_db(
    db: psycopg.AsyncConnection[Any],
    *,
    enabled_only: bool = True,
    defaults: NodeDefaults | None = None,
) -> list[Node]:
    """Registered (enabled) nodes, validated; invalid rows are skipped and logged as warnings."""
    try:
        async with db.cursor(row_factory=class_row(NodeRow)) as cur:
            await cur.execute(_SELECT_NODES_SQL, {"enabled_only": enabled_only})
            rows = await cur.fetchall()
    except psycopg.Error as exc:
        raise _translate(exc, _conn_target(db), "cannot list nodes") from exc
    entries, warnings = validate_rows(rows, defaults or _default_defaults())
    _log_warnings(warnings)
    return [e.node for e in entries]


def register_node_in_db_sync(
    db: psycopg.Connection[Any],
    info: Mapping[str, Any],
    *,
    defaults: NodeDefaults | None = None,
) -> Node:
    """The sync twin of `register_node_in_db`."""
    spec = parse_node(info)
    try:
        with db.transaction():
            db.execute(_UPSERT_SQL, _upsert_params(spec))
    except psycopg.Error as exc:
        raise _translate(exc, _conn_target(db), f"cannot register node {spec.id}") from exc
    return spec.resolve(defaults or _default_defaults())


def get_nodes_from_db_sync(
    db: psycopg.Connection[Any],
    *,
    enabled_only: bool = True,
    defaults: NodeDefaults | None = None,
) -> list[Node]:
    """The sync twin of `get_nodes_from_db`."""
    try:
        with db.cursor(row_factory=class_row(NodeRow)) as cur:
            rows = cur.execute(_SELECT_NODES_SQL, {"enabled_only": enabled_only}).fetchall()
    except psycopg.Error as exc:
        raise _translate(exc, _conn_target(db), "cannot list nodes") from exc
    entries, warnings = validate_rows(rows, defaults or _default_defaults())
    _log_warnings(warnings)
    return [e.node for e in entries]
