"""What the SSH layer raises, translated: one table from Paramiko, socket and OS exceptions to
our `NodeError` kinds with a message that names host:port (httpx's `map_httpcore_exceptions`).

Nothing above the ssh package sees a Paramiko or socket exception. `translate` is the table;
three moments refine it: a handshake that ran into its deadline (`handshake_failure`), a
channel that would not open on a pooled transport (`channel_open_failure`) and a transport
that broke mid-command (`mid_command_failure`). `is_preauth_reset` says which handshake
failures are sshd's MaxStartups drops, retried rather than reported.
"""

from __future__ import annotations

import errno
import shlex
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# isort: off
from skeleton_app.ssh import paramiko_import  # noqa: F401  (first: Paramiko without Invoke)
# isort: on
import paramiko

from skeleton_app.errors import NodeError, NodeErrorKind
from skeleton_app.nodes import Node
from skeleton_app.ssh.hostkeys import HostKeyTaken, HostKeyUnknown, fingerprint


@dataclass(frozen=True, slots=True)
class _Where:
    host: str
    port: int
    timeout: float
    known_hosts: str
    user: str | None

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


def _host_key_taken(exc: HostKeyTaken, w: _Where) -> NodeError:
    return NodeError(
        NodeErrorKind.HOSTKEY_CHANGED,
        f"{w} presents the host key of {exc.other} ({fingerprint(exc.key)}), and node"
        f" {exc.hostname} has no key of its own yet: refusing (one machine, one node id;"
        " was a registry row pointed at another node?). If this is right, record the key"
        f" under {exc.hostname}: ssh-keyscan -p {w.port} {w.host} | sed 's/^[^ ]*/"
        f"{exc.hostname}/' >> {shlex.quote(w.known_hosts)}",
    )


def _host_key_unknown(exc: HostKeyUnknown, w: _Where) -> NodeError:
    return NodeError(
        NodeErrorKind.HOSTKEY_UNKNOWN,
        f"unknown host key for {exc.hostname} at {w} ({exc.key.get_name()}"
        f" {fingerprint(exc.key)});"
        f" to trust it, check the fingerprint and run: ssh-keyscan -p {w.port} {w.host} >>"
        f" {shlex.quote(w.known_hosts)}, or set ssh.host_key_policy: accept-new",
    )


def _host_key_changed(exc: paramiko.BadHostKeyException, w: _Where) -> NodeError:
    return NodeError(
        NodeErrorKind.HOSTKEY_CHANGED,
        f"HOST KEY CHANGED for {exc.hostname} at {w}: got {exc.key.get_name()}"
        f" {fingerprint(exc.key)}, known_hosts has {fingerprint(exc.expected_key)}; refusing"
        " to connect (possible man-in-the-middle). If the change is expected, remove the old"
        " entry with ssh-keygen -R",
    )


def _auth(exc: paramiko.AuthenticationException, w: _Where) -> NodeError:
    # With ssh_config's User in play, which user was refused is not obvious: name it.
    who = f"{w.user}@{w}" if w.user else str(w)
    return NodeError(NodeErrorKind.AUTH, f"authentication failed for {who}: {exc}")


def _unresolved(exc: socket.gaierror, w: _Where) -> NodeError:
    return NodeError(NodeErrorKind.UNREACHABLE, f"cannot resolve {w.host}: {exc.strerror}")


def _refused(exc: ConnectionRefusedError, w: _Where) -> NodeError:
    return NodeError(NodeErrorKind.REFUSED, f"connection refused by {w}")


def _timed_out(exc: TimeoutError, w: _Where) -> NodeError:
    return NodeError(NodeErrorKind.UNREACHABLE,
                     f"connection to {w} timed out after {w.timeout:g}s")


def _no_route(exc: OSError, w: _Where) -> NodeError | None:
    if exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN):
        return NodeError(NodeErrorKind.UNREACHABLE, f"{w}: {exc.strerror}")
    return None


def _protocol(exc: BaseException, w: _Where) -> NodeError:
    text = str(exc) or type(exc).__name__
    if "banner" in text.lower() and "reset" not in text.lower():
        return NodeError(NodeErrorKind.UNREACHABLE,
                         f"{w} accepted TCP but sent no SSH banner within {w.timeout:g}s")
    if isinstance(exc, OSError) and not isinstance(exc, paramiko.SSHException):
        return NodeError(NodeErrorKind.LOST, f"{w}: {text}")
    return NodeError(NodeErrorKind.PROTOCOL, f"{w}: {text}")


# The table, most specific first (HostKeyTaken is a HostKeyUnknown, both are SSHExceptions;
# ConnectionRefusedError and TimeoutError are OSErrors). A rule returning None passes the
# exception on to the next one.
_Rule = Callable[[Any, _Where], "NodeError | None"]
_TABLE: tuple[tuple[type[BaseException] | tuple[type[BaseException], ...], _Rule], ...] = (
    (HostKeyTaken, _host_key_taken),
    (HostKeyUnknown, _host_key_unknown),
    (paramiko.BadHostKeyException, _host_key_changed),
    (paramiko.AuthenticationException, _auth),
    (socket.gaierror, _unresolved),
    (ConnectionRefusedError, _refused),
    ((TimeoutError, socket.timeout), _timed_out),
    (OSError, _no_route),
    ((paramiko.ChannelException, paramiko.SSHException, EOFError, OSError), _protocol),
)


def translate(exc: BaseException, *, host: str, port: int, timeout: float,
              known_hosts: str = "~/.ssh/known_hosts", user: str | None = None) -> NodeError:
    """Map Paramiko/socket/Fabric exceptions to our error kinds, with a readable message (an
    auth error names the user: with ssh_config's User in play, which one is not obvious)."""
    if isinstance(exc, NodeError):
        return exc
    where = _Where(host, port, timeout, known_hosts, user)
    for kinds, rule in _TABLE:
        if isinstance(exc, kinds):
            err = rule(exc, where)
            if err is not None:
                return err
    return NodeError(NodeErrorKind.ERROR, f"{where}: {type(exc).__name__}: {exc}")


def handshake_failure(exc: BaseException, node: Node, *, elapsed: float, timeout: float,
                      known_hosts: str) -> NodeError:
    """A connect to `node` that failed (after any retries), with the node named."""
    err = translate(exc, host=node.host, port=node.port, timeout=timeout,
                    known_hosts=known_hosts, user=node.user)
    if elapsed >= timeout * 0.95 and err.kind in (NodeErrorKind.PROTOCOL, NodeErrorKind.LOST):
        # Paramiko words a handshake deadline many ways ("No existing session", "Error
        # reading SSH protocol banner"): what the user needs is this.
        err = NodeError(
            NodeErrorKind.UNREACHABLE,
            f"{node.host}:{node.port} accepted TCP but sent no SSH banner or"
            f" handshake within {timeout:g}s (sshd frozen or overloaded?)")
    err.node = node.id
    return err


def channel_open_failure(exc: BaseException, node: Node, *, timeout: float) -> NodeError:
    """A pooled transport that would not open a channel within `timeout`."""
    if isinstance(exc, paramiko.SSHException) and "timeout" in str(exc).lower():
        return NodeError(NodeErrorKind.LOST, f"{node.host}:{node.port} stopped answering (no"
                         f" channel within {timeout:g}s)")
    return translate(exc, host=node.host, port=node.port, timeout=timeout)


def mid_command_failure(exc: BaseException, node: Node, *, timeout: float) -> NodeError:
    """The transport broke while a command ran: the connection is lost, whatever the words."""
    err = translate(exc, host=node.host, port=node.port, timeout=timeout)
    if err.kind in (NodeErrorKind.PROTOCOL, NodeErrorKind.ERROR):
        return NodeError(NodeErrorKind.LOST, err.message)
    return err


def is_preauth_reset(exc: BaseException, elapsed: float, timeout: float) -> bool:
    """sshd's MaxStartups drops handshakes by closing the socket: retry those, not timeouts.

    A drop can surface as a reset, an EOF, or Paramiko's bare "Error reading SSH protocol
    banner"; the same banner error after a long wait is a frozen sshd, not a drop.
    """
    if isinstance(exc, ConnectionResetError | EOFError | BrokenPipeError):
        return True
    if isinstance(exc, paramiko.SSHException) and not isinstance(
        exc, paramiko.AuthenticationException | paramiko.BadHostKeyException | HostKeyUnknown
    ):
        text = str(exc).lower()
        if "banner" in text:
            return elapsed < timeout / 2
        return "reset" in text or "eof" in text or "closed" in text
    return False
