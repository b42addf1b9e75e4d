"""`cluster exec --sudo`: the command under sudo on each node, the password asked only when a
node needs one, and only on stdin.

How it goes (each step one round trip per node, in parallel):

1. probe: `sudo -n [-u U] -- sh -c true`. A node where that succeeds (NOPASSWD, or sudo
   needs no password there) runs the command with `sudo -n`: no password is ever asked for
   it. The probe runs `sh`, the program step 3 runs: sudoers rules are per command, and a
   node where only `true` (or only `sh`) needs no password must be read as it will behave.
2. only when some node answered "a password is required": the password is asked once (the
   caller's `PasswordSource`: the terminal or `SKELETON_SUDO_PASSWORD_FILE`; it raises a
   UsageError, exit 2, when it has neither, before the command ran anywhere) and checked
   with `sudo -k -S -p '' [-u U] -- sh -c true`. A node that refuses it reports one line,
   "sudo: wrong password", and does not run the command: sudo -S reads a new password line
   after each wrong one, so running the command right away would feed the lines of
   `--stdin` to sudo as further guesses.
3. the command: `sudo -S -k -p '' [-u U] -- sh -c GUARD sh CMD` with the password line, then
   a one-time token line, first on stdin (then the `--stdin` bytes, which reach the
   command), or `sudo -n [-u U] -- sh -c CMD`. GUARD reads one line and runs `sh -c CMD`
   only when that line is the token, i.e. only when sudo itself consumed the password line
   before it: a sudoers rule that lets this very command line run without a password (rules
   can match arguments) would otherwise hand the password to the command's stdin, and from
   there to its output, the terminal and the run journal. `-p ''`: sudo's prompt never
   reaches stdout. `-k`: sudo ignores (and does not write) cached credentials, so it always
   reads the password line: a cached credential would otherwise hand that line to the
   command.

The password travels on the channel's stdin only: never in a command line (`ps` on the node
shows `sudo -S -k -p  -- sh -c ...`), never in a result, an error or the run journal.
"""

from __future__ import annotations

import re
import secrets
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from skeleton_app.cluster import Cluster
from skeleton_app.errors import NodeErrorKind, UsageError
from skeleton_app.nodes import Node
from skeleton_app.results import ClusterResult, NodeResult, failure
from skeleton_app.ssh.runner import RunOptions

# (node ids that need it) -> the password; raises UsageError when it cannot be had.
PasswordSource = Callable[[Sequence[str]], str]

PROBE_TIMEOUT = 30.0  # seconds for `sudo -n true` and the password check (PAM may be slow)
_SUDO_USER_RE = re.compile(r"^(#[0-9]{1,10}|[A-Za-z0-9_][A-Za-z0-9._-]{0,63}\$?)\Z")
# sudo's messages are localised: the probes run with LC_ALL=C so they can be read.
_PROBE_ENV = "LC_ALL=C "
WRONG_PASSWORD = "sudo: wrong password"
# The command's exit code when sudo ran it without reading the password (step 3's guard).
NOT_READ_EXIT = 126
_GUARD = ('IFS= read -r _l; [ "$_l" = {token} ] || {{ echo "skeleton: sudo did not read the'
          ' password for this command line (a NOPASSWD rule matches it?): not run, the'
          ' password discarded" >&2; exit {code}; }}; unset _l; exec sh -c "$1"')


@dataclass(frozen=True, slots=True)
class SudoRequest:
    """`--sudo [--sudo-user USER]`: `password` is asked only if some node needs one."""

    password: PasswordSource
    user: str | None = None

    def __post_init__(self) -> None:
        if self.user is not None:
            validate_sudo_user(self.user)


def validate_sudo_user(user: str) -> str:
    """A user name or `#UID` for `sudo -u`; UsageError otherwise (nothing runs)."""
    if not _SUDO_USER_RE.match(user):
        raise UsageError(f"--sudo-user: expected a user name or #UID, got {user!r}")
    return user


def _user_args(user: str | None) -> list[str]:
    return ["-u", user] if user else []


def probe_command(user: str | None) -> str:
    """Succeeds when sudo needs no password on the node."""
    return _PROBE_ENV + shlex.join(["sudo", "-n", *_user_args(user), "--", "sh", "-c", "true"])


def check_command(user: str | None) -> str:
    """Reads the password line from stdin and checks it, caching nothing."""
    return _PROBE_ENV + shlex.join(["sudo", "-k", "-S", "-p", "", *_user_args(user), "--", "sh",
                                    "-c", "true"])


def sudo_command(command: str, user: str | None, *, password: bool,
                 token: str | None = None) -> str:
    """`command` under sudo, as `sh -c COMMAND` (quoted: the node's shell sees it as one
    word). With `password`, sudo reads the password line from stdin first, and the command
    runs only when the next line is `token` (step 3 above; `password_line(pw, token)`)."""
    if not password:
        return shlex.join(["sudo", "-n", *_user_args(user), "--", "sh", "-c", command])
    if token is None or not re.fullmatch(r"[0-9a-f]{16,64}", token):
        raise ValueError("sudo_command: a password run needs a hex token")
    guard = _GUARD.format(token=token, code=NOT_READ_EXIT)
    return shlex.join(["sudo", "-S", "-k", "-p", "", *_user_args(user), "--", "sh", "-c",
                       guard, "sh", command])


def new_token() -> str:
    return secrets.token_hex(16)


def password_line(password: str, token: str | None = None) -> bytes:
    """The password line sudo reads; then, for step 3, the token line the guard reads."""
    return password.encode() + b"\n" + (token.encode() + b"\n" if token else b"")


def _first_line(text: str) -> str:
    # sudo says why first; what follows is fallout (`sudo: unknown user U` is followed by
    # `sudo: error initializing audit plugin sudoers_audit`, which names no cause).
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0][:200] if lines else ""


def _refused(result: NodeResult[None], *, checking: bool) -> NodeResult[None] | None:
    """The node's failure when sudo refused (None: it answered yes, or it needs a password
    and this was the probe)."""
    if result.error_kind is not None or result.ok:
        return None if result.ok else result
    err = result.stderr
    if result.exit_code == 127 or "sudo: not found" in err or "command not found" in err:
        return failure(result.node, NodeErrorKind.LOCAL, "sudo: not installed on the node",
                       result.duration)
    if checking and ("incorrect password" in err or "Sorry, try again" in err
                     or "no password was provided" in err):
        return failure(result.node, NodeErrorKind.LOCAL, WRONG_PASSWORD, result.duration)
    if not checking and "password is required" in err:
        return None
    reason = _first_line(err) or f"sudo exited {result.exit_code}"
    if not reason.startswith("sudo:"):
        reason = f"sudo: {reason}"
    return failure(result.node, NodeErrorKind.LOCAL, reason, result.duration)


@dataclass(frozen=True, slots=True)
class SudoPlan:
    """What step 3 runs on each node: `with_password` nodes get the password line first;
    `failed` nodes (unreachable, sudo refused, wrong password) do not run the command."""

    without_password: tuple[Node, ...]
    with_password: tuple[Node, ...]
    failed: tuple[NodeResult[None], ...]
    password: str | None = None
    token: str = field(default_factory=new_token)

    def options(self, base: RunOptions) -> RunOptions:
        """The run options of the nodes in `with_password`: the password and token lines
        before `base.stdin`. Made once and shared by those nodes (`--stdin` may be 64 MiB)."""
        if self.password is None:
            return base
        return replace(base, stdin=password_line(self.password, self.token)
                       + (base.stdin or b""))


def plan(cluster: Cluster, nodes: Sequence[Node], sudo: SudoRequest, *,
         fanout: int | None = None) -> SudoPlan:
    """Steps 1 and 2 above: which nodes run with a password, without, or not at all."""
    connector = cluster.connector
    probe_options = RunOptions(timeout=PROBE_TIMEOUT)
    probed = cluster.map(
        lambda node: connector.run(node, probe_command(sudo.user), probe_options), nodes,
        fanout=fanout, operation="exec")
    free: list[Node] = []
    needy: list[Node] = []
    failed: list[NodeResult[None]] = []
    for node in nodes:
        result = probed[node.id]
        refused = _refused(result, checking=False)
        if refused is not None:
            failed.append(refused)
        elif result.ok:
            free.append(node)
        else:
            needy.append(node)
    if not needy:
        return SudoPlan(tuple(free), (), tuple(failed))
    password = sudo.password([n.id for n in needy])
    if "\n" in password or "\r" in password:
        raise UsageError("--sudo: the password holds a line break")
    check_options = RunOptions(timeout=PROBE_TIMEOUT, stdin=password_line(password))
    checked = cluster.map(
        lambda node: connector.run(node, check_command(sudo.user), check_options), needy,
        fanout=fanout, operation="exec")
    accepted: list[Node] = []
    for node in needy:
        refused = _refused(checked[node.id], checking=True)
        if refused is None:
            accepted.append(node)
        else:
            failed.append(refused)
    return SudoPlan(tuple(free), tuple(accepted), tuple(failed), password)


def run_with_sudo(cluster: Cluster, command: str, nodes: Sequence[Node], sudo: SudoRequest,
                  base: RunOptions, *, fanout: int | None = None) -> ClusterResult[None]:
    """`command` under sudo on `nodes` (steps 1-3), one result per node in selection order."""
    steps = plan(cluster, nodes, sudo, fanout=fanout)
    runnable = [n for n in nodes if n in steps.without_password or n in steps.with_password]
    connector = cluster.connector
    with_pw = sudo_command(command, sudo.user, password=True, token=steps.token)
    without_pw = sudo_command(command, sudo.user, password=False)

    with_pw_options = steps.options(base)

    def one(node: Node) -> NodeResult[None]:
        if node in steps.with_password:
            return connector.run(node, with_pw, with_pw_options)
        return connector.run(node, without_pw, base)

    ran = cluster.map(one, runnable, fanout=fanout, operation="exec") if runnable else None
    by_node = {r.node: r for r in steps.failed}
    if ran is not None:
        by_node.update(ran)
    return ClusterResult([by_node[n.id] for n in nodes], operation="exec",
                         duration=ran.duration if ran is not None else 0.0,
                         warnings=ran.warnings if ran is not None else ())
