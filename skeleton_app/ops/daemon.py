"""`cluster daemon start|stop|restart|status`: the node daemon under a process manager or systemd.

`process` manager (the default, no systemd needed): `skeleton_app/payloads/daemon.sh` is sent on
stdin with its arguments quoted (`sh -s -- ACTION APP_DIR PID_FILE LOG_FILE LOCK_FILE ...`); it
starts `daemon.command` (any command) in the app dir fully detached (setsid, stdin from
/dev/null, output to `logs_dir/skeleton-daemon.log`), with `SKELETON_NODE_ID` set (paths from
`skeleton_app.layout`, shared with the status probe). The pid file records the daemon's pid,
start time and boot id, so a recycled pid is never signalled; the daemon also holds a flock on
the lock file for its whole life, so a lost or corrupt pid file never loses track of it.

`systemd` manager: `[sudo -n] systemctl [--user] --no-ask-password ACTION UNIT`; a password
prompt (sudo or polkit) is an error at once, never a hang.

`restart(batch=K, wait_healthy=True)` restarts K nodes at a time, waits for each node's
`GET /health` (queried on the node, `payloads/health.sh`) to answer from the new process, and
stops at the first node that does not come back: the nodes after it are left untouched.

Each node's outcome is a `DaemonOutcome` (the script's or systemctl's reply, a summary for
people, and the health check when one ran); `health_check` alone gives a `HealthOutcome`.
"""

from __future__ import annotations

import json
import re
import shlex
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, cast

from skeleton_app import cancel, layout, payloads
from skeleton_app.cluster import Cluster
from skeleton_app.config import Settings
from skeleton_app.errors import ConfigError, UsageError
from skeleton_app.nodes import Node, fold, validate_node_id
from skeleton_app.payloads import framing
from skeleton_app.results import ClusterResult, NodeResult

ACTIONS = ("start", "stop", "restart", "status")

_UNIT_RE = re.compile(r"^[A-Za-z0-9:_.@\\-]{1,255}\Z")
_ASSIGNMENT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
OnResult = Callable[[NodeResult["DaemonOutcome"]], None]


# ------------------------------------------------------------------------ the daemon's identity


def daemon_argv(settings: Settings) -> list[str]:
    """`daemon.command` split like a shell would (no expansion). Leading `NAME=value` words
    become an `env` prefix, since the command is exec'd directly, not run by a shell."""
    try:
        argv = shlex.split(settings.daemon.command)
    except ValueError as exc:
        raise ConfigError(f"cannot split the command: {exc}", source=settings.source,
                          key="daemon.command") from None
    if not argv:
        raise ConfigError("expected a non-empty command", source=settings.source,
                          key="daemon.command")
    if _ASSIGNMENT_RE.match(argv[0]):
        argv = ["env", *argv]
    return argv


def check_command(settings: Settings) -> list[str]:
    """The daemon's argv, or a ConfigError when `daemon.command` cannot be split. Any command
    works: daemon.sh recognises the daemon by its recorded identity, not its command line."""
    return daemon_argv(settings)


def pid_file(node: Node) -> str:
    return layout.pid_file(node)


def log_file(settings: Settings, node: Node) -> str:
    return layout.daemon_log(settings, node)


# ------------------------------------------------------------------------ parsing replies


@dataclass(frozen=True, slots=True)
class DaemonReply:
    """What daemon.sh (or systemctl) said: `state` is started, already-running, died, stopped,
    not-running, running, error (process) or active, inactive, failed, ... (systemd)."""

    state: str
    pid: int | None = None
    signal: str | None = None
    message: str | None = None
    log_tail: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {"state": self.state, "pid": self.pid, "signal": self.signal,
                "message": self.message, "log_tail": list(self.log_tail)}


def parse_reply(text: str) -> DaemonReply:
    """Parse daemon.sh's reply (header in the script; the framing in `payloads.framing`).
    Never raises: garbage -> state error."""
    frame = framing.parse(text)
    head = framing.fields("state", frame.get("state"))
    pid = head.get("pid", "")
    return DaemonReply(state=head.get("state", "error"),
                       pid=int(pid) if pid.isascii() and pid.isdigit() else None,
                       signal=head.get("signal"),
                       message="; ".join(frame.all("message")) or None,
                       log_tail=tuple((frame.block("log_tail") or "").splitlines()))


@dataclass(frozen=True, slots=True)
class HealthOutcome:
    """What `GET /health` said on the node: `health` is the JSON body (None when the check
    could not run at all), `message` why it is not healthy."""

    healthy: bool
    health: Mapping[str, Any] | None = None
    message: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"healthy": self.healthy, "health": self.health, "message": self.message}


@dataclass(frozen=True, slots=True)
class DaemonOutcome:
    """One node's daemon action: the reply (None when a restart's stop never got one), a line
    for people, the pid a restart stopped, and the health check when one ran."""

    action: str
    summary: str
    reply: DaemonReply | None = None
    restarted: bool = False  # a process-manager restart: it stopped `stopped_pid` first
    stopped_pid: int | None = None
    health: HealthOutcome | None = None

    @property
    def state(self) -> str | None:
        return self.reply.state if self.reply is not None else None

    @property
    def pid(self) -> int | None:
        return self.reply.pid if self.reply is not None else None

    @property
    def signal(self) -> str | None:
        return self.reply.signal if self.reply is not None else None

    @property
    def message(self) -> str | None:
        return self.reply.message if self.reply is not None else None

    @property
    def log_tail(self) -> tuple[str, ...]:
        return self.reply.log_tail if self.reply is not None else ()

    @property
    def healthy(self) -> bool | None:
        return self.health.healthy if self.health is not None else None

    def as_dict(self) -> dict[str, Any]:
        """The JSON form: the reply's keys flat beside action and summary; stopped_pid for a
        restart, healthy and health only when a health check ran."""
        data: dict[str, Any] = {"action": self.action}
        if self.reply is not None:
            data.update(self.reply.as_dict())
        data["summary"] = self.summary
        if self.restarted:
            data["stopped_pid"] = self.stopped_pid
        if self.health is not None:
            data["healthy"] = self.health.healthy
            if self.health.health is not None:
                data["health"] = dict(self.health.health)
        return data


def describe(action: str, reply: DaemonReply) -> str:
    """One line for people: 'started (pid 123)', 'already running (pid 9)', 'died: ...'."""
    words = {
        "started": "started", "already-running": "already running", "died": "died at start",
        "stopped": "stopped", "not-running": "not running", "running": "running",
        "error": "error", "active": "active", "inactive": "inactive", "failed": "failed",
    }.get(reply.state, reply.state)
    if reply.pid is not None:
        words += f" (pid {reply.pid})"
    if reply.state == "stopped" and reply.signal == "KILL":
        words += " with SIGKILL after the grace period"
    if reply.message:
        words += f": {reply.message}"
    return words


# ------------------------------------------------------------------------ one node


def _process_args(settings: Settings, node: Node, action: str) -> list[str]:
    validate_node_id(node.id)  # exported as SKELETON_NODE_ID and names the log
    d = settings.daemon
    args = [action, layout.run_dir(settings, node), pid_file(node), log_file(settings, node),
            layout.lock_file(node), f"{d.stop_grace:g}", f"{d.start_grace:g}", node.id]
    if action == "start":
        args += ["--", *check_command(settings)]
    return args


def systemctl_command(settings: Settings, action: str) -> str:
    """The remote command line for the systemd manager (every word quoted)."""
    d = settings.daemon
    if not _UNIT_RE.match(d.unit):
        raise ConfigError(f"invalid unit name {d.unit!r}", source=settings.source,
                          key="daemon.unit")
    base = ["systemctl"] + (["--user"] if d.user_unit else []) + ["--no-ask-password"]
    status = shlex.join([*base, "is-active", "--", d.unit])
    if action == "status":
        return status
    # sudo -n: a password prompt fails at once instead of waiting on a channel with no tty.
    change = (["sudo", "-n"] if d.sudo else []) + [*base, action, "--", d.unit]
    if action == "stop":
        return shlex.join(change)
    # is-active afterwards: `start` returns before a Type=simple service has had time to die.
    return f"{shlex.join(change)} && sleep {d.start_grace:g} && {status}"


def _timeout(settings: Settings) -> float:
    d = settings.daemon
    # daemon.sh: up to stop_grace + 5 s of SIGKILL wait to stop, 5 s for the pid file plus
    # start_grace to start; a margin for a loaded node.
    return d.stop_grace + d.start_grace + 30.0


def control_node(cluster: Cluster, node: Node, action: str, *,
                 cancellable: bool = True) -> NodeResult[DaemonOutcome]:
    """Run `action` (start, stop, status) for one node's daemon; never raises for the node.
    `cancellable=False`: runs even after a Ctrl-C (a restart that stopped a daemon brings
    it back)."""
    return _control(cluster, node, action, cancellable=cancellable)


def _control(cluster: Cluster, node: Node, action: str, *,
             cancellable: bool = True) -> NodeResult[DaemonOutcome]:
    from skeleton_app.ssh.runner import RunOptions

    if action not in ("start", "stop", "status"):
        raise UsageError(f"unknown daemon action {action!r} (expected start, stop or status)")
    settings = cluster.settings
    started = time.monotonic()
    if settings.daemon.manager == "systemd":
        command = systemctl_command(settings, action)
        r = cluster.connector.run(node, command, RunOptions(timeout=_timeout(settings),
                                                            cancellable=cancellable))
        return _systemd_result(r, action, settings, started)
    command, script = payloads.invocation("daemon.sh", *_process_args(settings, node, action))
    r = cluster.connector.run(node, command, RunOptions(
        timeout=_timeout(settings), stdin=script, cancellable=cancellable))
    if r.error_kind is not None:
        return r
    reply = parse_reply(r.stdout)
    if reply.state == "error" and not reply.message and r.stderr.strip():
        reply = replace(reply, message=r.stderr.strip().splitlines()[-1])
    # The exit code stays daemon.sh's: 0 done, 1 failed, 3 status of a stopped daemon (LSB).
    return replace(r, duration=time.monotonic() - started, outcome=DaemonOutcome(
        action=action, summary=describe(action, reply), reply=reply))


def _systemd_result(r: NodeResult[Any], action: str, settings: Settings,
                    started: float) -> NodeResult[DaemonOutcome]:
    if r.error_kind is not None:
        return r
    lines = [ln for ln in r.stdout.splitlines() if ln.strip()]
    state = lines[-1].strip() if lines else ("stopped" if action == "stop" and r.exit_code == 0
                                             else "error")
    message = None
    if "a password is required" in r.stderr or "a terminal is required" in r.stderr:
        message = (f"sudo asked for a password (sudo -n refuses to prompt): allow "
                   f"`systemctl {action} {settings.daemon.unit}` without one (NOPASSWD), or set "
                   "daemon.sudo: false")
    elif r.exit_code != 0 and r.stderr.strip():
        message = r.stderr.strip().splitlines()[-1]
    reply = DaemonReply(state=state, message=message)
    return replace(r, duration=time.monotonic() - started, outcome=DaemonOutcome(
        action=action, summary=describe(action, reply), reply=reply))


def restart_node(cluster: Cluster, node: Node) -> NodeResult[DaemonOutcome]:
    """Stop then start one node's daemon (systemd: `systemctl restart`)."""
    settings = cluster.settings
    started = time.monotonic()
    if settings.daemon.manager == "systemd":
        from skeleton_app.ssh.runner import RunOptions

        r = cluster.connector.run(node, systemctl_command(settings, "restart"),
                                  RunOptions(timeout=_timeout(settings), cancellable=False))
        return _systemd_result(r, "restart", settings, started)
    # A restart once begun runs to its end (bounded by its timeouts) even if Ctrl-C comes:
    # a daemon stopped and never started again is worse than a rollout a second later.
    stop = _control(cluster, node, "stop", cancellable=False)
    if not stop.ok:
        said = stop.outcome.summary if stop.outcome is not None else stop.summary()
        return replace(stop, outcome=DaemonOutcome(
            action="restart", summary="stop failed: " + said,
            reply=stop.outcome.reply if stop.outcome is not None else None))
    start = _control(cluster, node, "start", cancellable=False)
    stopped = stop.outcome.reply if stop.outcome is not None else None
    said = start.outcome.summary if start.outcome is not None else start.summary()
    return replace(start, duration=time.monotonic() - started, outcome=DaemonOutcome(
        action="restart", summary=f"{describe('stop', parse_reply(stop.stdout))}, then {said}",
        reply=start.outcome.reply if start.outcome is not None else None,
        restarted=True, stopped_pid=stopped.pid if stopped is not None else None))


# ------------------------------------------------------------------------ health


def health_check(cluster: Cluster, node: Node, *, timeout: float,
                 expect_pid: int | None = None) -> NodeResult[HealthOutcome]:
    """Wait (on the node, one round trip) until `GET /health` on the node's api_port answers;
    when the body carries a `pid` and `expect_pid` is known, it must be that one (an answer
    from another process is not the restarted daemon)."""
    from skeleton_app.ssh.runner import RunOptions

    urls = [f"http://127.0.0.1:{node.api_port}/health"]
    if node.host not in ("127.0.0.1", "localhost"):
        host = f"[{node.host}]" if ":" in node.host else node.host
        urls.append(f"http://{host}:{node.api_port}/health")
    deadline = time.monotonic() + timeout
    while True:
        left = max(1.0, deadline - time.monotonic())
        # The token file lets health.sh ask for the details (pid) that a tokenless /health
        # does not give; the path is not secret, the token never leaves the node.
        command, script = payloads.invocation("health.sh", f"{left:.1f}", *urls)
        command = (f"SKELETON_HEALTH_TOKEN_FILE={shlex.quote(layout.health_token_file(node))} "
                   + command)
        r = cluster.connector.run(node, command, RunOptions(timeout=left + 15, stdin=script))
        if r.error_kind is not None:
            return r
        frame = framing.parse(r.stdout)
        info = _json(frame.block("body") or "")
        healthy = r.exit_code == 0
        if healthy and expect_pid is not None and isinstance(info.get("pid"), int) \
                and info["pid"] != expect_pid:
            healthy = False
            if time.monotonic() < deadline:
                time.sleep(0.5)
                continue
            message = f"/health answers from pid {info['pid']}, not the new daemon {expect_pid}"
        else:
            message = frame.first("message") or ""
        return replace(r, exit_code=0 if healthy else 1,
                       outcome=HealthOutcome(healthy=healthy, health=info, message=message))


def _json(body: str) -> dict[str, Any]:
    try:
        value = json.loads(body)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


# ------------------------------------------------------------------------ the operation


def daemon_control(
    cluster: Cluster,
    nodes: Sequence[Node],
    action: str,
    *,
    batch: int | None = None,
    wait_healthy: bool = False,
    health_timeout: float = 30.0,
    fanout: int | None = None,
    on_result: OnResult | None = None,
) -> ClusterResult[DaemonOutcome]:
    """start | stop | restart | status the daemon on `nodes`.

    start, stop and status run on every node in parallel (bounded by fanout); start and stop
    are idempotent. restart with `batch` restarts that many nodes at a time, and with
    `wait_healthy` waits for each node's /health before the next batch; the first node that
    does not come back stops the rollout, and the nodes after it are not touched (they are
    named in the result's warnings and have no result).
    """
    if action not in ACTIONS:
        raise UsageError(f"unknown daemon action {action!r} (expected {', '.join(ACTIONS)})")
    if batch is not None and batch < 1:
        raise UsageError(f"--batch must be at least 1, got {batch}")
    if (batch is not None or wait_healthy) and action != "restart" and action != "start":
        raise UsageError("--batch and --wait-healthy go with restart (or start)")
    if wait_healthy and health_timeout <= 0:
        raise UsageError(f"health timeout must be positive, got {health_timeout:g}")
    # Fail on a bad daemon.command before touching any node.
    check_command(cluster.settings)
    if cluster.settings.daemon.manager == "systemd":
        systemctl_command(cluster.settings, "status")

    def one(node: Node) -> NodeResult[DaemonOutcome]:
        r = (restart_node(cluster, node) if action == "restart"
             else _control(cluster, node, action))
        if wait_healthy and r.ok and action in ("restart", "start"):
            r = _with_health(cluster, node, r, health_timeout)
        return r

    if batch is None:
        return cluster.map(one, nodes, fanout=fanout, operation=f"daemon {action}",
                           on_result=on_result)

    started = time.monotonic()
    results: list[NodeResult[DaemonOutcome]] = []
    warnings: list[str] = []
    for i in range(0, len(nodes), batch):
        group = nodes[i:i + batch]
        if cancel.cancelled():
            # Ctrl-C: the batch in flight finished its restarts; no new batch starts.
            warnings.append(f"interrupted: the rollout stopped; not restarted:"
                            f" {fold(n.id for n in nodes[i:])}")
            break
        part = cluster.map(one, group, fanout=min(batch, fanout or batch),
                           operation=f"daemon {action}", on_result=on_result)
        results.extend(part.values())
        bad = [n for n in group if not part[n.id].ok]
        if bad:
            rest = [n.id for n in nodes[i + batch:]]
            what = "did not come back healthy" if wait_healthy else "failed to restart"
            msg = f"stopped the rollout: {fold(n.id for n in bad)} {what}"
            msg += f"; not restarted: {fold(rest)}" if rest else ""
            warnings.append(msg)
            break
    return ClusterResult(results, operation=f"daemon {action}",
                         duration=time.monotonic() - started, warnings=warnings)


def _with_health(cluster: Cluster, node: Node, r: NodeResult[DaemonOutcome],
                 timeout: float) -> NodeResult[DaemonOutcome]:
    outcome = r.outcome or DaemonOutcome(action="", summary="")
    h = health_check(cluster, node, timeout=timeout, expect_pid=outcome.pid)
    if h.error_kind is not None or h.outcome is None:
        failed = HealthOutcome(healthy=False, message=h.error or "")
        # The node's failure (unreachable, timeout...) with the daemon's outcome kept.
        return replace(cast("NodeResult[Any]", h), outcome=replace(outcome, health=failed))
    if not h.outcome.healthy:
        why = f"not healthy: {h.outcome.message}"
        return replace(r, exit_code=1, stderr=r.stderr + why + "\n",
                       duration=r.duration + h.duration,
                       outcome=replace(outcome, health=h.outcome,
                                       summary=f"{outcome.summary}; {why}"))
    return replace(r, duration=r.duration + h.duration,
                   outcome=replace(outcome, health=h.outcome,
                                   summary=f"{outcome.summary}; healthy"))
