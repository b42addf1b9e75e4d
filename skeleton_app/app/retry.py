"""`skeleton runs retry RUN`: run a recorded run's operation again, with its recorded
arguments, on that run's failed and unreachable nodes only. The new run is journaled like
any other (by the `app.commands` function it calls), so a second retry starts from it.

RUN is a journal id (with a registry) or `last` (the registry's newest run by this
user@host, else the local state file: `app.last_run`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from skeleton_app.app import commands
from skeleton_app.app.last_run import PastRun
from skeleton_app.errors import SelectionError, UsageError

if TYPE_CHECKING:
    from skeleton_app.app.commands import Done, Session
    from skeleton_app.nodes import Node


@dataclass(frozen=True, slots=True)
class RetryPlan:
    """What a retry will do: the run it repeats and the nodes (its failures) it runs on."""

    run: PastRun
    nodes: tuple[Node, ...]

    @property
    def operation(self) -> str:
        return self.run.operation


def load_run(session: Session, ref: str) -> PastRun:
    """The run `ref` names (an id, or `last`); UsageError when there is none."""
    if ref == "last":
        run = session.last_run()
        if run is None:
            raise UsageError("runs retry last: no previous run recorded")
        return run
    try:
        run_id = int(ref)
    except ValueError:
        raise UsageError(f"runs retry: expected a run id or `last`, got {ref!r}") from None
    registry = session.registry()
    if registry is None:
        raise UsageError("runs retry: run ids need a registry (registry.dsn); without one"
                         " `skeleton runs retry last` repeats the last run's failures")
    record = registry.get_run(run_id)
    if record is None:
        raise UsageError(f"unknown run {run_id}")
    return PastRun.from_record(record)


def plan(session: Session, ref: str) -> RetryPlan:
    """Check before anything runs: the operation can be retried, the run had failures and
    every one of those nodes still exists (never narrowed, never widened)."""
    run = load_run(session, ref)
    if run.operation not in RETRYABLE:
        raise UsageError(f"{run.name}: {run.operation} cannot be retried (retryable:"
                         f" {', '.join(RETRYABLE)})")
    if not run.failed:
        raise UsageError(f"no failed nodes in {run.name} ({run.describe()})")
    if run.operation == "exec" and run.arguments.get("stdin_bytes") is not None:
        # Only the size of --stdin is journaled: rerun without it, the command would read
        # an empty stdin and do something else than the run it repeats.
        raise UsageError(f"{run.name} sent {run.arguments['stdin_bytes']} bytes of --stdin,"
                         " which are not recorded: send them again with `skeleton cluster"
                         " exec --stdin --node @failed ...`")
    try:
        nodes = session.cluster().select(list(run.failed))
    except SelectionError as exc:
        raise SelectionError(f"{run.name}'s failed nodes: {exc}") from None
    return RetryPlan(run, nodes)


def run(session: Session, retry: RetryPlan) -> Done[Any]:
    """Run the plan's operation on its nodes (the view is the caller's, by `operation`)."""
    return RETRYABLE[retry.operation](session, retry.nodes, _Args(retry.run))


class _Args:
    """A recorded run's arguments, read back with their types checked (a journal row is
    JSON someone could have edited): a wrong type is a UsageError naming the key."""

    def __init__(self, run: PastRun):
        self.run = run
        self.values: Mapping[str, Any] = run.arguments

    def _get(self, key: str, types: tuple[type, ...], default: Any) -> Any:
        value = self.values.get(key, default)
        if value is not None and (not isinstance(value, types) or (isinstance(value, bool)
                                  and bool not in types)):
            raise UsageError(f"{self.run.name}: recorded argument {key!r} is"
                             f" {type(value).__name__}, not {types[0].__name__}")
        return value

    def text(self, key: str) -> str | None:
        value: str | None = self._get(key, (str,), None)
        return value

    def flag(self, key: str, default: bool | None = False) -> bool | None:
        value: bool | None = self._get(key, (bool,), default)
        return value

    def number(self, key: str) -> float | None:
        value: float | int | None = self._get(key, (float, int), None)
        return None if value is None else float(value)

    def texts(self, key: str) -> list[str]:
        value: list[Any] = self._get(key, (list,), None) or []
        if not all(isinstance(v, str) for v in value):
            raise UsageError(f"{self.run.name}: recorded argument {key!r} is not a list of"
                             " strings")
        return [str(v) for v in value]

    def count(self, key: str) -> int | None:
        value: int | None = self._get(key, (int,), None)
        return value


Runner = Callable[["Session", "tuple[Node, ...]", _Args], "Done[Any]"]


def _exec(session: Session, nodes: tuple[Node, ...], args: _Args) -> Done[Any]:
    from skeleton_app.app.exec_input import sudo_password_source
    from skeleton_app.ops.sudo import SudoRequest

    command = args.text("command")
    if not command:
        raise UsageError(f"{args.run.name}: no command recorded")
    if args.count("stdin_bytes") is not None:
        raise UsageError(f"{args.run.name}: exec --stdin cannot be retried (its input is not"
                         " recorded): run it again with --node @failed")
    sudo = None
    if args.flag("sudo"):
        # As recorded: under sudo, as the same user (without this a `--sudo-user postgres`
        # run was retried as the login user, root by default). The password is asked again.
        sudo = SudoRequest(sudo_password_source(), args.text("sudo_user"))
    return commands.exec_command(session, nodes, command, timeout=args.number("timeout"),
                                 sudo=sudo)


def _status(session: Session, nodes: tuple[Node, ...], _args: _Args) -> Done[Any]:
    return commands.status(session, nodes)


def _deploy(dry_run: bool) -> Runner:
    def deploy(session: Session, nodes: tuple[Node, ...], args: _Args) -> Done[Any]:
        return commands.deploy(session, nodes, source=args.text("source"),
                               dest=args.text("dest"), delete=args.flag("delete", None),
                               dry_run=dry_run, checksum=bool(args.flag("checksum")),
                               force=bool(args.flag("force")),
                               restart=bool(args.flag("restart")))
    return deploy


def _bootstrap(session: Session, nodes: tuple[Node, ...], args: _Args) -> Done[Any]:
    return commands.bootstrap(session, nodes, source=args.text("source"),
                              wheelhouse=args.text("wheelhouse"),
                              force=bool(args.flag("force")))


def _daemon(action: str) -> Runner:
    def daemon(session: Session, nodes: tuple[Node, ...], args: _Args) -> Done[Any]:
        return commands.daemon(session, nodes, action, batch=args.count("batch"),
                               wait_healthy=bool(args.flag("wait_healthy")),
                               health_timeout=args.number("health_timeout") or 30.0)
    return daemon


def _sync_models(session: Session, nodes: tuple[Node, ...], args: _Args) -> Done[Any]:
    source = args.text("source")
    if not source:
        raise UsageError(f"{args.run.name}: no source node recorded")
    return commands.sync_models(session, nodes, source, models_path=args.text("models_path"),
                                model=args.text("model"), verify=bool(args.flag("verify")),
                                relay=bool(args.flag("relay")))


def _copy(session: Session, nodes: tuple[Node, ...], args: _Args) -> Done[Any]:
    remote_dir = args.text("remote_dir")
    if not remote_dir:
        raise UsageError(f"{args.run.name}: no REMOTE_DIR recorded")
    # Checked again as on the command line: a source removed since is exit 2, nothing runs.
    request = commands.CopyRequest.parse(args.texts("sources"), remote_dir,
                                         mode=args.text("mode"),
                                         preserve=bool(args.flag("preserve")))
    return commands.copy(session, nodes, request)


def _fetch(session: Session, nodes: tuple[Node, ...], args: _Args) -> Done[Any]:
    local_dir = args.text("local_dir")
    if not local_dir:
        raise UsageError(f"{args.run.name}: no LOCAL_DIR recorded")
    return commands.fetch(session, nodes,
                          commands.FetchRequest.parse(args.texts("remotes"), local_dir))


# Operation name as journaled -> how to run it again. An operation not here (logs, one a
# newer version journals) is refused by name: exit 2, nothing runs.
RETRYABLE: dict[str, Runner] = {
    "exec": _exec,
    "status": _status,
    "deploy": _deploy(dry_run=False),
    "deploy-dry-run": _deploy(dry_run=True),
    "bootstrap": _bootstrap,
    **{f"daemon {action}": _daemon(action) for action in ("start", "stop", "restart",
                                                         "status")},
    "sync-models": _sync_models,
    "copy": _copy,
    "fetch": _fetch,
}
