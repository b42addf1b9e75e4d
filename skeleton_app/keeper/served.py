"""The keeper's side of a warm `skeleton cluster exec`: the whole command, served.

The warm client (`thin`) hands the keeper the command line, its working directory and its
environment. The keeper reads them as the Click command would (`app.exec_argv`), loads the
config, selects the nodes and runs `app.commands.exec_command` (journal and `@failed` state
as always) over the connections it holds, renders the same view, and sends back the text
and the exit code: the client imports nothing but the standard library, and a command on
32 nodes is one request instead of 32.

It declines (the client then goes the Click way, which runs the same through
`client.KeeperRunner`) whatever it cannot serve exactly as the CLI would:
- a command line `exec_argv` does not read, or a config or selection error: Click says it
  in its words;
- an environment that differs from the keeper's own where it decides what a command does
  (`client_env`: HOME and the XDG dirs find files, SSH_AUTH_SOCK keys, USER the default
  login, PATH a ProxyCommand's, libpq's PG* the registry's server, TLS mode and password);
- another copy of skeleton_app, or this one changed on disk since the keeper started: after
  a `git pull` a command runs the new code (`code_watch`);
- an identity file or known_hosts given relative to the client's directory, which is not
  the keeper's; other group ids than the keeper's (the files they may read).
"""

from __future__ import annotations

import io
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from skeleton_app import cancel
from skeleton_app.app.commands import Selection, Session, exec_command
from skeleton_app.app.exec_argv import ExecArgs, parse
from skeleton_app.config import Settings, SSHSettings, check_identity_files, load_config
from skeleton_app.errors import ExitCode, NodeError, NodeErrorKind, SkeletonError
from skeleton_app.keeper import client_env
from skeleton_app.keeper.code_watch import CodeWatch, library_dirs, package_dir
from skeleton_app.keeper.held import HeldConnections
from skeleton_app.nodes import Node
from skeleton_app.results import NodeResult
from skeleton_app.ssh.runner import RunOptions
from skeleton_app.ssh.runner import Session as LineSession

_CACHED_CONFIGS = 8


class Declined(Exception):
    """Not served: the client runs the command the Click way (the message says why)."""


@dataclass(slots=True)
class Served:
    """A command accepted: what to run, and on what."""

    args: ExecArgs
    session: Session
    nodes: tuple[Node, ...]
    persist: float
    warnings: list[str]


@dataclass(frozen=True, slots=True)
class Answer:
    """What the client prints, and its exit code."""

    code: int
    stdout: str
    stderr: str


class HeldRunner:
    """A `Runner` over the keeper's held connections, for the commands it serves. Exec needs
    `run` only; the line sessions and holds of other operations are not served here."""

    def __init__(self, held: HeldConnections, ssh: SSHSettings):
        self.held = held
        self.ssh = ssh
        # Read once per command (known_hosts and ssh_config digests), not once per node.
        self._facts: tuple[Any, ...] | None = None

    def run(self, node: Node, command: str, options: RunOptions | None = None
            ) -> NodeResult[Any]:
        if self._facts is None:
            self._facts = self.held.facts(self.ssh)  # a race computes it twice: harmless
        entry = self.held.checkout(self.ssh, node, self._facts)
        try:
            return entry.connector.run(node, command, options or RunOptions())
        finally:
            self.held.checkin(entry)

    def session(self, node: Node, command: str, *, what: str = "helper") -> LineSession:
        raise NodeError(NodeErrorKind.ERROR, "not served by the keeper", node=node.id)

    def hold(self, node: Node, command: str, *, cancellable: bool = True
             ) -> Callable[[], None]:
        raise NodeError(NodeErrorKind.ERROR, "not served by the keeper", node=node.id)

    def warm(self, nodes: Iterable[Node]) -> Callable[[], None]:
        return lambda: None  # held connections are warm, or made by the first run

    def discard(self, node: Node) -> None:
        pass  # the keeper's connections outlive the command

    def close(self) -> None:
        pass


class ExecService:
    """Serves `exec` requests for a keeper: checks, config cache, the run, the view."""

    def __init__(self, held: HeldConnections, env: Mapping[str, str] | None = None,
                 package: str | None = None):
        self.held = held
        own = os.environ if env is None else env
        self._env = client_env.comparable(own)
        self._path = own.get("PATH")
        self._groups = client_env.groups()
        self.package = package or package_dir()
        self._code = CodeWatch(self.package, library_dirs())
        self.outdated = False  # the code on disk changed: the keeper should give way
        self.served = self.declined = 0
        self.last_declined: str | None = None
        self._lock = threading.Lock()
        self._configs: OrderedDict[tuple[Any, ...], Settings] = OrderedDict()

    def prepare(self, header: Mapping[str, Any]) -> Served:
        """Read and check the request, load the config, select; Declined otherwise. Both
        are counted for `skeleton keeper status`."""
        try:
            served = self._prepare(header)
        except Exception as exc:
            # Anything else (a NUL in a path, a bug) declines too: the client would
            # otherwise wait SILENCE seconds for a "started" that never comes.
            why = str(exc) if isinstance(exc, Declined) else f"keeper: {exc!r}"
            with self._lock:
                self.declined += 1
                self.last_declined = why
            raise Declined(why) from None
        with self._lock:
            self.served += 1
        return served

    def _prepare(self, header: Mapping[str, Any]) -> Served:
        argv, cwd, env = header.get("argv"), header.get("cwd"), header.get("env")
        if not (isinstance(argv, list) and all(isinstance(a, str) for a in argv)
                and isinstance(cwd, str) and os.path.isabs(cwd) and isinstance(env, dict)
                and all(isinstance(k, str) and isinstance(v, str) for k, v in env.items())):
            raise Declined("malformed request")
        if header.get("package") != self.package:
            raise Declined("another copy of skeleton_app")
        if self.outdated or self._code.changed():
            self.outdated = True
            raise Declined("skeleton_app changed on disk since the keeper started")
        if header.get("groups") != self._groups:
            # A key or known_hosts readable by a group the user has left must not stay
            # readable through a keeper started before (nor the other way round).
            raise Declined("groups other than the keeper's")
        if client_env.comparable(env) != self._env:
            raise Declined("an environment other than the keeper's")
        args = parse(argv)
        if args is None:
            raise Declined("not the common form of exec")
        warnings: list[str] = []
        session: Session | None = None
        try:
            settings = self._settings(args, cwd, env)
            if settings.ssh.persist <= 0:
                raise Declined("ssh.persist is 0")
            if env.get("PATH") != self._path and client_env.runs_commands(
                    settings.ssh, env.get("HOME")):
                raise Declined("a PATH other than the keeper's, and an ssh config that runs"
                               " local commands (ProxyCommand, Match exec)")
            if settings.registry.dsn and client_env.relative_dsn_files(settings.registry.dsn):
                raise Declined("a registry.dsn file relative to the command's directory")
            check_identity_files(settings, settings.nodes, source="SKELETON_SSH_IDENTITY_FILE"
                                 if "SKELETON_SSH_IDENTITY_FILE" in env else None)
            session = Session(settings.source, fanout=args.fanout, settings=settings,
                              connector=HeldRunner(self.held, settings.ssh),
                              warn=warnings.append)
            nodes = session.select(Selection(args.nodes, args.roles, args.exclude))
            paths = [settings.ssh.identity_file, settings.ssh.known_hosts,
                     *(n.identity_file for n in nodes)]
            if any(p and not os.path.isabs(os.path.expanduser(p)) for p in paths):
                raise Declined("a path relative to the command's directory")
        except (SkeletonError, OSError, Declined) as exc:
            if session is not None:
                session.close()
            raise Declined(str(exc)) from None
        return Served(args, session, nodes, settings.ssh.persist, warnings)

    def _settings(self, args: ExecArgs, cwd: str, env: Mapping[str, str]) -> Settings:
        """The config as the command's directory and environment find it, from a cache
        keyed by the file as a file (a YAML parse costs more than the rest of a command)."""
        chosen = args.config or env.get("SKELETON_CONFIG")
        if chosen:
            path = os.path.join(cwd, chosen)
        elif os.path.isfile(os.path.join(cwd, "config.yaml")):
            path = os.path.join(cwd, "config.yaml")
        else:
            raise Declined("no config file")
        st = os.stat(path)
        key = (path, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, args.fanout,
               tuple(sorted((k, v) for k, v in env.items() if k.startswith("SKELETON_"))))
        with self._lock:
            cached = self._configs.get(key)
            if cached is not None:
                self._configs.move_to_end(key)
                return cached
        overrides = {"ssh.fanout": args.fanout} if args.fanout else None
        settings = load_config(path, env=env, overrides=overrides)
        with self._lock:
            self._configs[key] = settings
            while len(self._configs) > _CACHED_CONFIGS:
                self._configs.popitem(last=False)
        return settings

    def run(self, served: Served, token: cancel.CancelToken) -> Answer:
        """Run the command under `token` (the client's Ctrl-C), render what the Click
        command prints; the exit code as it computes it."""
        from skeleton_app.app.views.exec import exec_text, exec_tsv

        args = served.args
        out, err = io.StringIO(), io.StringIO()
        try:
            with cancel.scoped(token), served.session:
                done = exec_command(served.session, served.nodes, " ".join(args.words),
                                    timeout=args.timeout)
        except SkeletonError as exc:
            err.writelines(f"{line}\n" for line in served.warnings)
            err.write(f"skeleton: error: {exc}\n")
            return Answer(ExitCode.INTERRUPTED if token.cancelled else exc.exit_code,
                          out.getvalue(), err.getvalue())
        err.writelines(f"{line}\n" for line in served.warnings)
        if args.as_json or args.format == "json":
            out.write(done.result.to_json() + "\n")
        elif args.format == "tsv":
            exec_tsv(done.result, out)
        else:
            exec_text(done.result, out)
        code = ExitCode.INTERRUPTED if token.cancelled else done.exit_code
        return Answer(int(code), out.getvalue(), err.getvalue())

