"""The registry's values: a node as stored (NodeSpec, NodeRow), as read back (NodeEntry), a
journaled run (RunRecord, RunNodeRecord), and the field checks every row goes through.

Rows are untrusted input: a node writes its own row, and whatever else can reach the database
can too. Every row is validated when it is read (`row_to_entry`, `validate_rows`), with the
rules used for config.yaml (ids and hosts end up in file names and on ssh command lines);
`FieldError` names the field. No I/O and no psycopg here.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from skeleton_app.errors import UsageError
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

MAX_JSON_BYTES = 64 * 1024  # labels, capabilities, metrics written by one node
DAEMON_STATES = ("starting", "running", "stopping", "stopped")


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


def shown(value: object, limit: int = 40) -> str:
    """A safe, short rendering of untrusted text for messages (newlines escaped by repr)."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "...'"


def check_text(name: str, value: object, *, limit: int) -> str:
    # Printable only: names and versions are shown in terminals and logs, where a newline or
    # an escape sequence from a hostile row would forge output.
    if not isinstance(value, str):
        raise FieldError(name, f"expected a string, got {type(value).__name__}")
    if len(value) > limit or not value.isprintable():
        raise FieldError(name, f"invalid value {shown(value)}: expected at most {limit}"
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
        raise FieldError("app_dir", f"invalid app_dir {shown(value)}: expected a normalised"
                                    " absolute path other than /")
    try:
        validate_app_dir(value)
    except ValueError as exc:
        raise FieldError("app_dir", str(exc).removeprefix("invalid app_dir ")) from None
    return value


def check_json_object(name: str, value: object) -> dict[str, Any]:
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
    labels = check_json_object("labels", value)
    for key, val in labels.items():
        check_text("labels", key, limit=63)
        check_text(f"labels.{key}", val, limit=256)
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
            check_text("name", self.name, limit=200)
        if self.labels is not None:
            object.__setattr__(self, "labels", MappingProxyType(_check_labels(self.labels)))
        if self.capabilities is not None:
            object.__setattr__(
                self, "capabilities",
                MappingProxyType(check_json_object("capabilities", self.capabilities)),
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
            raise FieldError("roles", f"expected a list of strings, got {shown(roles)}")
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
    metrics = check_json_object("metrics", row.metrics)
    if row.daemon_state is not None and row.daemon_state not in DAEMON_STATES:
        raise FieldError("daemon_state", f"invalid value {shown(row.daemon_state)}")
    if row.code_version is not None:
        check_text("code_version", row.code_version, limit=100)
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
            warnings.append(f"registry: skipped node row {shown(row.id)}: {exc}")
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


def parse_node(info: Mapping[str, Any], *, what: str = "invalid node info") -> NodeSpec:
    """`NodeSpec.from_dict` for callers that want our error tree: UsageError naming the key
    (`skeleton nodes add`, the seed API)."""
    try:
        return NodeSpec.from_dict(info)
    except (FieldError, TypeError) as exc:
        raise UsageError(f"{what}: {exc}") from None
