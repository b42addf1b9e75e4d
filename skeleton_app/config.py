"""Configuration: layered, validated once, frozen.

Precedence, lowest first:

1. built-in defaults (the dataclass defaults below);
2. the config file: `--config PATH`, else `$SKELETON_CONFIG`, else `./config.yaml` if present;
3. the environment: `SKELETON_<SECTION>_<KEY>` for scalar keys (`SKELETON_SSH_USER`,
   `SKELETON_SSH_CONNECT_TIMEOUT`, ...) and `SKELETON_DATABASE_URL` for `registry.dsn`;
4. command-line flags, passed as `overrides={"ssh.fanout": 8}`.

Every error names the source (file or variable), the key and what was expected, and is a
`ConfigError` (exit code 2): nothing runs on a bad configuration.

(Over 600 lines on purpose: each section's dataclass sits next to the rules that validate it.)
"""

from __future__ import annotations

import dataclasses
import getpass
import math
import os
import posixpath
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

import yaml

from skeleton_app.engines import DEFAULT_ENGINES, Engine, build_engines
from skeleton_app.errors import ConfigError, SelectionError
from skeleton_app.jack_settings import JackSettings, build_jack
from skeleton_app.nodes import (
    ROLE_RE,
    Node,
    clip,
    expand,
    shown,
    validate_app_dir,
    validate_host,
    validate_node_id,
    validate_port,
    validate_role,
    validate_user,
)
from skeleton_app.ssh.openssh_config import resolve_login

_TOKEN_RE = re.compile(r"^[A-Za-z0-9._~+/=-]{16,256}\Z")


def _default_user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry (containers): fall back like OpenSSH would fail later
        return "root"


OP_TIMEOUT = 300.0  # seconds: the operations' command timeout when ssh.command_timeout is unset


@dataclass(frozen=True, slots=True)
class SSHSettings:
    user: str = field(default_factory=_default_user)
    port: int = 22
    identity_file: str | None = None
    known_hosts: str = "~/.ssh/known_hosts"
    host_key_policy: Literal["strict", "accept-new"] = "strict"
    connect_timeout: float = 10.0
    # None: unset. `cluster exec` (ad-hoc work, like clush/pdsh) then has no command timeout;
    # every other operation is bounded by `op_timeout`.
    command_timeout: float | None = None
    fanout: int = 64
    # Seconds of silence before a connection running a command is probed, and how long the
    # probe waits for a reply: a node silent for about 2 intervals is reported lost
    # (Paramiko's own keepalive never notices a frozen peer, it only sends).
    keepalive: float = 3.0
    jump_host: str | None = None
    ssh_config: bool = True  # honour ~/.ssh/config (Host aliases, ProxyJump, ...)
    # Warm mode (skeleton_app/keeper): a CLI command hands its connections to a per-user
    # keeper that holds each one this many seconds after its last use; 0 turns it off.
    persist: float = 60.0

    @property
    def op_timeout(self) -> float:
        """The command timeout of every operation but `exec`: `command_timeout` when set,
        else OP_TIMEOUT (bounded, as before `command_timeout` became optional)."""
        return OP_TIMEOUT if self.command_timeout is None else self.command_timeout


@dataclass(frozen=True, slots=True)
class AppSettings:
    dir: str = "/home/sysadmin/Programs/skeleton-app"
    models_dir: str = "models"
    logs_dir: str = "logs"


@dataclass(frozen=True, slots=True)
class RegistrySettings:
    dsn: str | None = None
    stale_after: float = 30.0
    connect_timeout: float = 5.0
    # The node daemon's own credentials (`skeleton nodes credentials ID` writes them there):
    # when this file exists on the node, the daemon uses its DSN instead of `dsn`.
    node_dsn_file: str = "~/.config/skeleton/node.dsn"
    # Heartbeat history kept (seconds, or a duration: 90m, 36h, 7d); each daemon prunes and
    # down-samples its own rows (registry/metrics_retention.py).
    metrics_retention: float = 7 * 24 * 3600.0


@dataclass(frozen=True, slots=True)
class DeploySettings:
    source: str = "."
    exclude: tuple[str, ...] = (".venv/", "__pycache__/", "*.pyc", ".git/", "logs/")
    delete: bool = False
    after: tuple[str, ...] = ()
    # releases: each deploy in <app_dir>/releases/ID, `current` switched atomically
    # (ops/deploy/releases.py); in-place: rsync into the app dir itself.
    strategy: Literal["in-place", "releases"] = "in-place"
    keep_releases: int = 5


@dataclass(frozen=True, slots=True)
class DaemonSettings:
    manager: Literal["process", "systemd"] = "process"
    # Run in the app dir, from the virtualenv `cluster bootstrap` makes there.
    command: str = ".venv/bin/python -m skeleton_app daemon run"
    unit: str = "skeleton-daemon"
    sudo: bool = False
    user_unit: bool = False
    stop_grace: float = 10.0
    start_grace: float = 1.0
    api_port: int = 8765
    # /health listens on this address; null: the node's own cluster address (its `host`).
    health_bind: str | None = None
    # Bearer token for /health's details (pid, versions, registry state); null: the token
    # the daemon writes to its run dir (0600), which only the node's login user can read.
    health_token: str | None = None


@dataclass(frozen=True, slots=True)
class BootstrapSettings:
    """`cluster bootstrap`: the node's <app_dir>/.venv, installed from wheels built here."""

    wheelhouse: str | None = None  # pre-built wheels: pip then never contacts an index
    requires: tuple[str, ...] = ()  # installed into every node's .venv with the project
    python: str = "python3"  # the node's interpreter that makes the .venv


@dataclass(frozen=True, slots=True)
class LogsSettings:
    files: tuple[str, ...] = ("logs/*.log",)
    lines: int = 100


@dataclass(frozen=True, slots=True)
class JobsSettings:
    """The voice jobs queue (ops/jobs): leases, retries, limits."""

    max_attempts: int = 3  # runs of one job, failovers included
    lease: float = 10.0  # a dispatcher renews every lease/3; a dead one loses it after this
    cooldown: float = 60.0  # a node that lost a job gets none for this long
    max_file_bytes: int = 64 * 1024 * 1024  # one input or output file
    slots: int | None = None  # jobs at once per node (node label `slots` wins); None: CPUs
    poll: float = 1.0  # dispatchers also poll this often (NOTIFY is lost while disconnected)
    stderr_tail: int = 4000  # bytes of a failed attempt's stderr kept


@dataclass(frozen=True, slots=True)
class Settings:
    ssh: SSHSettings = field(default_factory=SSHSettings)
    app: AppSettings = field(default_factory=AppSettings)
    registry: RegistrySettings = field(default_factory=RegistrySettings)
    deploy: DeploySettings = field(default_factory=DeploySettings)
    daemon: DaemonSettings = field(default_factory=DaemonSettings)
    logs: LogsSettings = field(default_factory=LogsSettings)
    bootstrap: BootstrapSettings = field(default_factory=BootstrapSettings)
    jobs: JobsSettings = field(default_factory=JobsSettings)
    engines: tuple[Engine, ...] = DEFAULT_ENGINES
    jack: JackSettings = field(default_factory=JackSettings)  # skeleton_app/jack_settings.py
    nodes: tuple[Node, ...] = ()
    # `groups:` of the config file, for `--node @NAME`: (name, (spec, ...)) pairs, so that
    # Settings stays frozen and hashable.
    groups: tuple[tuple[str, tuple[str, ...]], ...] = ()
    source: str | None = None  # the config file that was read, if any
    # The ssh keys among user/port set explicitly (file, environment, flag): only those win
    # over ~/.ssh/config's User/Port (skeleton_app/ssh/openssh_config.py).
    ssh_explicit: frozenset[str] = frozenset()

    def login(self, host: str, user: str | None, port: int | None) -> tuple[str, int]:
        """(user, port) for a node on `host` whose own user/port (None: not given) are these,
        by OpenSSH's precedence (skeleton_app/ssh/openssh_config.py); ValueError for a bad value."""
        return resolve_login(
            host, user=user, port=port,
            section_user=self.ssh.user if "user" in self.ssh_explicit else None,
            section_port=self.ssh.port if "port" in self.ssh_explicit else None,
            default_user=self.ssh.user, default_port=self.ssh.port,
            read_ssh_config=self.ssh.ssh_config)

    def models_dir_for(self, node: Node) -> str:
        return _under(node.app_dir, self.app.models_dir)

    def logs_dir_for(self, node: Node) -> str:
        return _under(node.app_dir, self.app.logs_dir)

    def node(self, node_id: str) -> Node | None:
        return next((n for n in self.nodes if n.id == node_id), None)


def _under(base: str, path: str) -> str:
    return path if path.startswith("/") else posixpath.join(base, path)


SECTIONS: dict[str, type] = {
    "ssh": SSHSettings,
    "app": AppSettings,
    "registry": RegistrySettings,
    "deploy": DeploySettings,
    "daemon": DaemonSettings,
    "logs": LogsSettings,
    "bootstrap": BootstrapSettings,
    "jobs": JobsSettings,
}
NODE_KEYS = {
    "id", "host", "port", "user", "roles", "app_dir", "identity_file", "api_port", "name",
}
_POSITIVE = {
    ("ssh", "connect_timeout"), ("ssh", "command_timeout"), ("ssh", "fanout"),
    ("ssh", "keepalive"), ("registry", "connect_timeout"), ("registry", "stale_after"),
    ("jobs", "max_attempts"), ("jobs", "lease"), ("jobs", "max_file_bytes"), ("jobs", "slots"),
    ("jobs", "poll"), ("deploy", "keep_releases"), ("registry", "metrics_retention"),
}
_DURATIONS = {("registry", "metrics_retention")}  # seconds, or a number and s/m/h/d
_NON_NEGATIVE = {("daemon", "stop_grace"), ("daemon", "start_grace"), ("logs", "lines"),
                 ("jobs", "cooldown"), ("jobs", "stderr_tail"), ("ssh", "persist")}
# Every float setting is seconds. NaN passes any `<= 0` check and inf overflows socket and
# thread timeouts (every node then failed with ValueError/OverflowError): finite, and at
# most a year, which is "forever" for any of them.
MAX_SECONDS = 365 * 24 * 3600.0
# rsync reads an exclude pattern that starts with a filter-rule prefix as that rule
# (`+ x` includes x), which the local digest filter would not: the node kept an old file
# while deploy said "up to date". Such patterns are refused. Short rules take modifiers
# (`-/ x`, `+! x`); long ones a comma and modifiers (`exclude,/ x`); `!` clears the list.
_RSYNC_RULE_RE = re.compile(
    r"^(?:[-+.:HSPR!][/!CsrpxenwNB+-]*"
    r"|(?:exclude|include|merge|dir-merge|hide|show|protect|risk|clear)(?:,[/!CsrpxenwNB+-]*)?)"
    r" |^!\Z")
# A config file is a page of YAML: beyond these bounds it is a mistake or an attack (a
# "billion laughs" alias bomb reached 1.58 GB and a MemoryError traceback). The expanded
# size counts each value once per reference, plus its characters: a file without aliases
# stays far below it.
MAX_FILE_BYTES = 1 << 20
MAX_YAML_EXPANDED = 4 * MAX_FILE_BYTES


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " or ".join(repr(a) for a in get_args(tp))
    if origin is tuple:
        return "a list of strings"
    args = [a for a in get_args(tp) if a is not type(None)]
    if args:
        return _type_name(args[0]) + " or null"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(
        tp, str(tp)
    )


def _coerce(value: Any, tp: Any, *, from_env: bool) -> Any:
    """Convert `value` to `tp` or raise ValueError. Environment values arrive as strings."""
    origin = get_origin(tp)
    args = get_args(tp)
    if value is None:
        if type(None) in args:
            return None
        raise ValueError
    if origin is Literal:
        if value in args:
            return value
        raise ValueError
    if origin is tuple:
        if from_env and isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return tuple(value)
        raise ValueError
    if args:  # Optional[X]
        inner = next(a for a in args if a is not type(None))
        if from_env and value == "":
            return None
        return _coerce(value, inner, from_env=from_env)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if from_env and isinstance(value, str) and value.lower() in ("1", "true", "yes", "0",
                                                                      "false", "no"):
            return value.lower() in ("1", "true", "yes")
        raise ValueError
    if tp is int:
        if from_env and isinstance(value, str):
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError
        return value
    if tp is float:
        if from_env and isinstance(value, str):
            value = float(value)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ValueError
        return value
    raise ValueError


def _duration(value: Any) -> Any:
    """`90m`, `36h`, `7d` (or `120s`) as seconds; anything else is left for `_coerce`."""
    if isinstance(value, str) and (m := re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd])\s*",
                                                     value)):
        return float(m[1]) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m[2]]
    return value


def _build_section(
    name: str, raw: Mapping[str, Any], sources: Mapping[str, str], env_keys: set[str]
) -> Any:
    cls = SECTIONS[name]
    hints = get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        src = sources.get(key, "config")
        if key not in hints:
            valid = ", ".join(f.name for f in dataclasses.fields(cls))
            raise ConfigError(f"unknown key (valid keys: {valid})", source=src,
                              key=f"{name}.{clip(str(key))}")
        tp = hints[key]
        try:
            if (name, key) in _DURATIONS:
                value = _duration(value)
            coerced = _coerce(value, tp, from_env=key in env_keys)
        except (ValueError, TypeError):
            expected = ("seconds or a duration (90m, 36h, 7d)" if (name, key) in _DURATIONS
                        else _type_name(tp))
            raise ConfigError(
                f"expected {expected}, got {shown(value)}", source=src,
                key=f"{name}.{key}"
            ) from None
        if isinstance(coerced, float) and not (math.isfinite(coerced)
                                               and coerced <= MAX_SECONDS):
            raise ConfigError(f"expected a finite number of seconds (at most a year,"
                              f" {MAX_SECONDS:.0f}), got {shown(value)}", source=src,
                              key=f"{name}.{key}")
        if (name, key) in _POSITIVE and coerced is not None and coerced <= 0:
            raise ConfigError(f"expected a positive number, got {shown(value)}", source=src,
                              key=f"{name}.{key}")
        if (name, key) in _NON_NEGATIVE and coerced is not None and coerced < 0:
            raise ConfigError(f"expected zero or more, got {shown(value)}", source=src,
                              key=f"{name}.{key}")
        kwargs[key] = coerced
    try:
        section = cls(**kwargs)
    except (TypeError, ValueError) as exc:  # pragma: no cover - guarded above
        raise ConfigError(str(exc), key=name) from exc
    _check_section(name, section, sources)
    return section


def _check_section(name: str, section: Any, sources: Mapping[str, str]) -> None:
    def fail(key: str, msg: str) -> None:
        raise ConfigError(msg, source=sources.get(key, "config"), key=f"{name}.{key}")

    if name == "ssh":
        try:
            validate_port(section.port)
        except ValueError as exc:
            fail("port", str(exc))
        try:
            validate_user(section.user)
        except ValueError as exc:
            fail("user", str(exc))
        if section.jump_host is not None and section.jump_host.startswith("-"):
            fail("jump_host", f"invalid jump host {shown(section.jump_host)}")
    if name == "app" and not section.dir.startswith("/"):
        fail("dir", f"expected an absolute path, got {shown(section.dir)}")
    if name == "app":
        try:
            validate_app_dir(section.dir)
        except ValueError as exc:
            fail("dir", str(exc))
    if name == "deploy":
        for pattern in section.exclude:
            if _RSYNC_RULE_RE.match(pattern):
                fail("exclude", f"{shown(pattern)} starts with an rsync filter rule"
                     " (+ - . : H S P R ! or a rule name and a space), which rsync would"
                     " obey and the deploy digest would not: write the pattern alone")
    if name == "daemon":
        try:
            validate_port(section.api_port)
        except ValueError as exc:
            fail("api_port", str(exc))
        if not section.command.strip():
            fail("command", "expected a non-empty command")
        if section.health_bind is not None:
            try:
                validate_host(section.health_bind)
            except ValueError as exc:
                fail("health_bind", str(exc))
        if section.health_token is not None and not _TOKEN_RE.match(section.health_token):
            # A bearer token's alphabet (RFC 6750): it goes into an HTTP header as is.
            fail("health_token", "expected 16-256 characters of A-Z a-z 0-9 - . _ ~ + / =")


def _build_nodes(raw: Any, source: str, ssh: SSHSettings, app: AppSettings,
                 daemon: DaemonSettings,
                 login: Callable[[str, str | None, int | None], tuple[str, int]],
                 ) -> tuple[Node, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ConfigError("expected a list of node entries", source=source, key="nodes")
    nodes: list[Node] = []
    seen: set[str] = set()
    for i, entry in enumerate(raw):
        where = f"nodes[{i}]"
        if not isinstance(entry, dict):
            raise ConfigError("expected a mapping with id and host", source=source, key=where)
        unknown = set(entry) - NODE_KEYS
        if unknown:
            raise ConfigError(
                f"unknown key {shown(sorted(map(str, unknown))[0])} (valid keys:"
                f" {', '.join(sorted(NODE_KEYS))})",
                source=source, key=where,
            )
        for required in ("id", "host"):
            if required not in entry:
                raise ConfigError(f"missing {required!r}", source=source, key=where)
        try:
            node_id = validate_node_id(entry["id"])
        except ValueError as exc:
            raise ConfigError(str(exc), source=source, key=f"{where}.id") from None
        where = f"nodes[{node_id}]"
        if node_id in seen:
            raise ConfigError(f"duplicate node id {node_id!r}", source=source, key=where)
        seen.add(node_id)
        roles = entry.get("roles") or []
        if isinstance(roles, str):
            roles = [roles]
        try:
            validate_host(entry["host"])
            _check_node_types(entry)
            if not isinstance(roles, list):
                raise ValueError(f"roles: expected a list of strings, got {shown(roles)}")
            for role in roles:
                validate_role(role)
            user, port = login(entry["host"], entry.get("user"), entry.get("port"))
            node = Node(
                id=node_id,
                host=entry["host"],
                port=port,
                user=user,
                roles=tuple(roles),
                app_dir=entry.get("app_dir", app.dir),
                identity_file=_expand_path(entry.get("identity_file", ssh.identity_file)),
                api_port=entry.get("api_port", daemon.api_port),
                name=entry.get("name", node_id),
            )
        except (ValueError, TypeError) as exc:
            raise ConfigError(str(exc), source=source, key=where) from None
        nodes.append(node)
    return tuple(nodes)


def _build_groups(raw: Any, source: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """`groups: {gpu: "linux-[01-02]", edge: [linux-05, windows-main]}`: names like roles,
    members valid specs without `@` (a group never names another group: no cycles, and
    nothing for ClusterShell to resolve). Unknown member ids are found at selection time,
    when the nodes (perhaps from the registry) are known."""
    if raw is None:
        return ()
    if not isinstance(raw, dict):
        raise ConfigError(f"expected a mapping of group name to nodes, got {shown(raw)}",
                          source=source, key="groups")
    groups: list[tuple[str, tuple[str, ...]]] = []
    for name, members in raw.items():
        if not isinstance(name, str) or not ROLE_RE.match(name):
            raise ConfigError(f"invalid group name {shown(name)}: expected letters, digits,"
                              " '.', '_', '-' (at most 63)", source=source, key="groups")
        key = f"groups.{name}"
        specs = [members] if isinstance(members, str) else members
        if not isinstance(specs, list) or not specs or not all(
                isinstance(m, str) for m in specs):
            raise ConfigError(f"expected a node selection or a list of them, got"
                              f" {shown(members)}", source=source, key=key)
        for spec in specs:
            if "@" in spec:
                raise ConfigError(f"a group's members are nodes, not @groups or @roles,"
                                  f" got {shown(spec)}", source=source, key=key)
            try:
                expand(spec)
            except SelectionError as exc:
                raise ConfigError(str(exc), source=source, key=key) from None
        groups.append((name, tuple(specs)))
    return tuple(groups)


def _check_node_types(entry: Mapping[str, Any]) -> None:
    """The string keys of a node entry are strings (`app_dir: 5` was a traceback); ports,
    user and roles are checked by their validators."""
    for key in ("app_dir", "name", "identity_file"):
        value = entry.get(key, "")
        if not isinstance(value, str) and not (key == "identity_file" and value is None):
            raise ValueError(f"{key}: expected a string, got {shown(value)}")


def check_identity_files(settings: Settings, nodes: Sequence[Node], *,
                         source: str | None = None) -> None:
    """The private keys the configuration names exist and are readable here, on the
    controller. Called before anything runs (a missing key was reported on every node as
    `lost`). Not in `load_config`: the node daemons read the same file, without the key."""
    src = source or settings.source or "defaults"
    named = [("ssh.identity_file", settings.ssh.identity_file)] + [
        (f"nodes[{n.id}].identity_file", n.identity_file) for n in nodes
        if n.identity_file != settings.ssh.identity_file]
    for key, path in named:
        if path is None:
            continue
        try:
            with open(path, "rb"):
                pass
        except FileNotFoundError:
            raise ConfigError(f"no such file {shown(path, 300)}", source=src,
                              key=key) from None
        except OSError as exc:
            raise ConfigError(f"cannot read {shown(path, 300)}: {exc.strerror}", source=src,
                              key=key) from None


def _expand_path(value: str | None) -> str | None:
    return os.path.expanduser(value) if value else value


def find_config_file(path: str | os.PathLike[str] | None, env: Mapping[str, str]) -> Path | None:
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError("config file not found", source=str(p))
        return p
    if env.get("SKELETON_CONFIG"):
        p = Path(env["SKELETON_CONFIG"])
        if not p.is_file():
            raise ConfigError(f"config file {p} not found", source="SKELETON_CONFIG")
        return p
    p = Path("config.yaml")
    return p if p.is_file() else None


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader that refuses a document whose aliases expand beyond
    MAX_YAML_EXPANDED, or refer to themselves, before anything is constructed: shared
    references cost nothing to build, but any walk or repr of the value expands them."""

    def compose_document(self) -> yaml.Node | None:
        node = super().compose_document()
        if node is not None and _expanded_size(node) > MAX_YAML_EXPANDED:
            raise yaml.YAMLError("aliases expand to more than"
                                 f" {MAX_YAML_EXPANDED >> 20} MiB of values")
        return node


def _expanded_size(root: yaml.Node) -> int:
    """The size of `root` once every alias is expanded (one per value plus its characters),
    memoised per node, so a bomb costs its size in the file, not its expansion; YAMLError
    on a cycle."""
    sizes: dict[int, int] = {}
    visiting: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in visiting:
            raise yaml.YAMLError("an alias refers to the value that contains it")
        visiting.add(key)
        total = 1 + (len(node.value) if isinstance(node, yaml.ScalarNode) else 0)
        if isinstance(node, yaml.SequenceNode):
            total += sum(size(child) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            total += sum(size(k) + size(v) for k, v in node.value)
        visiting.discard(key)
        sizes[key] = min(total, MAX_YAML_EXPANDED + 1)  # no big integers from a bomb
        return sizes[key]

    return size(root)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", source=str(path)) from None
    if len(raw) > MAX_FILE_BYTES:
        raise ConfigError(f"larger than {MAX_FILE_BYTES >> 20} MiB: not a config file",
                          source=str(path))
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset"
                          f" {exc.start})", source=str(path)) from None
    try:
        data = yaml.load(text, Loader=_BoundedLoader)  # a SafeLoader: no Python objects
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{where}invalid YAML: {clip(problem)}", source=str(path)) from None
    except RecursionError:
        raise ConfigError("invalid YAML: nested too deeply", source=str(path)) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError("expected a mapping of sections at the top level", source=str(path))
    return data


def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    nodes: bool = True,
) -> Settings:
    """Resolve defaults < file < environment < overrides into one frozen `Settings`."""
    env = os.environ if env is None else env
    file = find_config_file(path, env)
    data = _read_yaml(file) if file else {}
    src = str(file) if file else "defaults"

    for top in data:
        if top not in SECTIONS and top not in ("nodes", "groups", "engines", "jack"):
            valid = ", ".join([*SECTIONS, "engines", "jack", "nodes", "groups"])
            raise ConfigError(f"unknown section (valid: {valid})", source=src, key=str(top))

    sections: dict[str, Any] = {}
    ssh_explicit: frozenset[str] = frozenset()
    for name in SECTIONS:
        raw = data.get(name) or {}
        if not isinstance(raw, dict):
            raise ConfigError("expected a mapping", source=src, key=name)
        merged = dict(raw)
        sources = dict.fromkeys(raw, src)
        env_keys: set[str] = set()
        for f in dataclasses.fields(SECTIONS[name]):
            var = f"SKELETON_{name.upper()}_{f.name.upper()}"
            if var in env:
                merged[f.name] = env[var]
                sources[f.name] = var
                env_keys.add(f.name)
        if name == "registry" and env.get("SKELETON_DATABASE_URL"):
            merged["dsn"] = env["SKELETON_DATABASE_URL"]
            sources["dsn"] = "SKELETON_DATABASE_URL"
            env_keys.add("dsn")
        for dotted, value in (overrides or {}).items():
            section, _, key = dotted.partition(".")
            if section == name and value is not None:
                merged[key] = value
                sources[key] = "--" + key.replace("_", "-")
        sections[name] = _build_section(name, merged, sources, env_keys)
        if name == "ssh":
            ssh_explicit = frozenset(merged) & {"user", "port"}

    ssh: SSHSettings = sections["ssh"]
    ssh = dataclasses.replace(
        ssh,
        identity_file=_expand_path(ssh.identity_file),
        known_hosts=os.path.expanduser(ssh.known_hosts),
    )
    sections["ssh"] = ssh
    groups = _build_groups(data.get("groups"), src)
    engines = build_engines(data.get("engines"), src)
    settings = Settings(**sections, groups=groups, engines=engines,
                        jack=build_jack(data.get("jack"), src),
                        source=str(file) if file else None,
                        ssh_explicit=ssh_explicit)
    if not nodes:
        return settings
    node_list = _build_nodes(data.get("nodes"), src, ssh, sections["app"], sections["daemon"],
                             login=settings.login)
    return dataclasses.replace(settings, nodes=node_list)
