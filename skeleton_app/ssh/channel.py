"""Driving one exec channel: a command's output kept head and tail in bounded memory, its
deadline enforced with signals, a Ctrl-C honoured, the connection's liveness probed.

Deadlines, all finite:
- command: at the deadline the session's process group gets SIGTERM, then SIGKILL, through
  SSH "signal" requests, so nothing is left running on the node; if the node does not
  confirm, it is reported as timed out anyway;
- liveness: while a command is silent, the connection is probed every `ssh.keepalive`
  seconds (`Link.alive`); no answer within that time is a lost node.

Why not Fabric's `Connection.run`: on a warm connection Invoke's runner costs ~48 ms a
command (threads, pty negotiation, encoding layers) while a bare channel read to EOF costs
~3 ms.
"""

from __future__ import annotations

import contextlib
import select
import threading
import time
from collections.abc import Callable
from typing import Any

# isort: off
from skeleton_app.ssh import paramiko_import  # noqa: F401  (first: Paramiko without Invoke)
# isort: on
import paramiko
from paramiko.common import cMSG_CHANNEL_REQUEST
from paramiko.message import Message

from skeleton_app.cancel import INTERRUPTED, token
from skeleton_app.errors import NodeError, NodeErrorKind
from skeleton_app.nodes import Node
from skeleton_app.results import NodeResult
from skeleton_app.ssh.errors import mid_command_failure
from skeleton_app.ssh.runner import OutputSink, RunOptions
from skeleton_app.ssh.transport import Link

_KILL_AFTER = 3.0  # seconds between TERM and KILL when a command overruns its timeout
_CONFIRM_KILL = 3.0  # seconds to wait for the node to report the kill before giving up
# On a cancel (Ctrl-C): SIGINT at once, then SIGTERM, SIGKILL, and the channel is closed at
# the last step whether or not the node confirmed: the command returns within ~1 s.
_CANCEL_STEPS = ((0.0, "INT"), (0.3, "TERM"), (0.6, "KILL"), (1.0, ""))
_BUFFER_HEAD = 64 * 1024
_BUFFER_TAIL = 64 * 1024
# stdin up to this size is sent before output is read: it fits in the window sshd opens
# (2 MiB), so sending never waits for the command to read it.
_STDIN_INLINE = 1024 * 1024


class Buffer:
    """Keeps the head and tail of a stream; counts everything; memory bounded."""

    __slots__ = ("head", "tail", "total", "truncated")

    def __init__(self) -> None:
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0
        self.truncated = False

    def feed(self, data: bytes) -> None:
        self.total += len(data)
        room = _BUFFER_HEAD - len(self.head)
        if room > 0:
            self.head += data[:room]
            data = data[room:]
        if data:
            self.tail += data
            if len(self.tail) > _BUFFER_TAIL:
                del self.tail[: len(self.tail) - _BUFFER_TAIL]
                self.truncated = True

    def text(self) -> str:
        if self.truncated:
            omitted = self.total - len(self.head) - len(self.tail)
            middle = f"\n[... {omitted} bytes omitted ...]\n".encode()
            return (bytes(self.head) + middle + bytes(self.tail)).decode("utf-8", "replace")
        return (bytes(self.head) + bytes(self.tail)).decode("utf-8", "replace")


def drive(link: Link, node: Node, channel: paramiko.Channel, command: str,
          timeout: float | None, options: RunOptions, started: float, *, keepalive: float,
          connect_timeout: float, discard: Callable[[], None]) -> NodeResult[Any]:
    """Run `command` on the open `channel` to its end, its deadline, a cancel or a lost
    connection; always a NodeResult. `discard` drops the pooled connection (it broke)."""
    out, err = Buffer(), Buffer()
    sink = options.sink
    # At the deadline the command's process group gets SIGTERM, then SIGKILL, through
    # SSH "signal" requests (sshd signals the session's process group), so nothing is
    # left running on the node; the command line itself stays exactly as typed.
    deadlines = [] if timeout is None else [
        (started + timeout, "TERM"),
        (started + timeout + _KILL_AFTER, "KILL"),
        (started + timeout + _KILL_AFTER + _CONFIRM_KILL, ""),
    ]
    signalled = False
    interrupted = False
    tok = token()  # the process's, or the keeper request's own (cancel.scoped)
    watch = [tok.fileno()] if options.cancellable else []
    if watch and tok.cancelled:  # Ctrl-C while this node was connecting: never start
        channel.close()
        return failed(node, NodeError(NodeErrorKind.INTERRUPTED,
                                       f"{INTERRUPTED} before it started"), started)
    # Forced to exit (a second Ctrl-C) mid-command: one last SIGKILL for the command.
    final = contextlib.ExitStack()
    final.enter_context(tok.on_exit(lambda: send_signal(channel, "KILL")))
    try:
        channel.exec_command(command)
        if options.stdin is not None and len(options.stdin) > _STDIN_INLINE:
            # More than the node's receive window: sent from a thread, so that output is
            # read (and deadlines, Ctrl-C and liveness are watched) while it goes out.
            threading.Thread(target=_feed, args=(channel, options.stdin), daemon=True,
                             name=f"stdin-{node.id}").start()
        else:
            if options.stdin is not None:
                channel.sendall(options.stdin)
            channel.shutdown_write()
        fd = channel.fileno()
        last_heard = time.monotonic()
        while True:
            now = time.monotonic()
            wait = keepalive
            if deadlines:
                wait = min(wait, max(0.0, deadlines[0][0] - now))
            if watch and tok.cancelled:
                # Ctrl-C: the command's process group gets INT, TERM, KILL in turn.
                watch = []
                interrupted = signalled = True
                deadlines = [(now + after, name) for after, name in _CANCEL_STEPS]
                continue
            if channel.eof_received and not (channel.recv_ready()
                                             or channel.recv_stderr_ready()):
                # After EOF Paramiko's pipe stays readable forever: selecting on it would
                # spin. Only the exit status (or the close) is still to come.
                ready = channel.status_event.wait(min(wait, 0.2) if watch else wait)
            else:
                ready = fd in select.select([fd, *watch], [], [], wait)[0]
            got = drain(channel.recv_ready, channel.recv, out, sink, node.id, "stdout")
            got |= drain(channel.recv_stderr_ready, channel.recv_stderr, err, sink,
                          node.id, "stderr")
            pending = channel.recv_ready() or channel.recv_stderr_ready()
            if not pending and (channel.closed or (channel.exit_status_ready()
                                                   and channel.eof_received)):
                break
            now = time.monotonic()
            if got or ready:
                last_heard = now
            if deadlines and now >= deadlines[0][0]:
                _, signal_name = deadlines.pop(0)
                if not signal_name and interrupted:
                    # The node did not confirm within the second: the channel closes
                    # (sshd then hangs up on what is left of the session).
                    return failed(node, NodeError(
                        NodeErrorKind.INTERRUPTED,
                        f"{INTERRUPTED}; SIGINT, SIGTERM, SIGKILL sent, not confirmed by"
                        " the node"), started, out, err)
                if not signal_name:
                    discard()
                    return failed(node, NodeError(
                        NodeErrorKind.TIMEOUT,
                        f"command exceeded its {timeout:g}s timeout and the node did not"
                        " confirm the kill"), started, out, err)
                send_signal(channel, signal_name)
                signalled = True
                continue
            if now - last_heard >= keepalive:
                if not link.alive(keepalive):
                    discard()
                    return failed(node, NodeError(
                        NodeErrorKind.LOST,
                        f"node stopped answering ({2 * keepalive:g}s without a reply to a"
                        " keepalive)"), started, out, err)
                last_heard = time.monotonic()
        status = channel.recv_exit_status() if channel.exit_status_ready() else -1
    except NodeError as exc:
        return failed(node, exc, started, out, err)
    except Exception as exc:
        discard()
        return failed(node, mid_command_failure(exc, node, timeout=connect_timeout), started,
                      out, err)
    finally:
        final.close()
        channel.close()
    if interrupted:
        return failed(node, NodeError(
            NodeErrorKind.INTERRUPTED, f"{INTERRUPTED}; the command was stopped on the node"
            f" (exit {status})" if status != -1 else f"{INTERRUPTED}"), started, out, err)
    if signalled:
        return failed(node, NodeError(
            NodeErrorKind.TIMEOUT,
            f"command exceeded its {timeout:g}s timeout; killed on the node"),
            started, out, err)
    if status == -1:
        discard()
        return failed(node, NodeError(NodeErrorKind.LOST,
                                       "connection closed before the command exited"),
                       started, out, err)
    return NodeResult(
        node=node.id, exit_code=status, stdout=out.text(), stderr=err.text(),
        duration=time.monotonic() - started, stdout_bytes=out.total,
        stderr_bytes=err.total, truncated=out.truncated or err.truncated,
    )


def _feed(channel: paramiko.Channel, data: bytes) -> None:
    """Send `data` to the command's stdin, then EOF. A command that exits without reading
    all of it closes the channel: that is its business, not an error of the run (the
    driving loop reports exit status, timeouts and lost links)."""
    with contextlib.suppress(Exception):
        view = memoryview(data)
        while view and not channel.closed:
            sent = channel.send(bytes(view[:32768]))
            if sent <= 0:
                return
            view = view[sent:]
        channel.shutdown_write()


def hold(transport: paramiko.Transport, command: str, *,
         timeout: float) -> Callable[[], None]:
    """Start `command` on a channel of its own whose stdin stays open, and return what closes
    it. The node side reads EOF when that is called, and also when this process dies,
    however (the kernel closes the socket, sshd ends the session): a lease without renewal
    traffic. The channel opens in the background, off the caller's path."""
    lock = threading.Lock()
    held: list[paramiko.Channel] = []
    closed = threading.Event()

    def shut(channel: paramiko.Channel) -> None:
        with contextlib.suppress(Exception):
            channel.shutdown_write()
            channel.close()

    def open_channel() -> None:
        try:
            channel = transport.open_session(timeout=timeout)
            channel.exec_command(command)
        except Exception:  # no lease then: the work still runs, as it did before
            return
        with lock:
            if not closed.is_set():
                held.append(channel)
                return
        shut(channel)  # closed while it was opening

    def close() -> None:
        with lock:
            closed.set()
            channels = list(held)
        for channel in channels:
            shut(channel)

    threading.Thread(target=open_channel, daemon=True, name="ssh-hold").start()
    return close


def send_signal(channel: paramiko.Channel, name: str) -> None:
    """RFC 4254 6.9 "signal" request; OpenSSH >= 7.9 delivers it to the session's process
    group. Paramiko has no API for it."""
    m = Message()
    m.add_byte(cMSG_CHANNEL_REQUEST)
    m.add_int(channel.remote_chanid)
    m.add_string("signal")
    m.add_boolean(False)
    m.add_string(name)
    with contextlib.suppress(Exception):  # a dead transport: the deadline reports it
        channel.transport._send_user_message(m)


def drain(ready: Callable[[], bool], recv: Callable[[int], bytes], buffer: Buffer,
           sink: OutputSink | None, node_id: str, stream: str) -> bool:
    """Move whatever one stream has buffered into `buffer` (and the sink); True if any."""
    got = False
    while ready():
        data = recv(65536)
        if not data:
            break
        got = True
        buffer.feed(data)
        if sink:
            sink(node_id, stream, data)
    return got


def failed(node: Node, exc: NodeError, started: float, out: Buffer | None = None,
            err: Buffer | None = None) -> NodeResult[Any]:
    return NodeResult(
        node=node.id, error_kind=exc.kind, error=exc.message,
        duration=time.monotonic() - started,
        stdout=out.text() if out else "", stderr=err.text() if err else "",
        stdout_bytes=out.total if out else 0, stderr_bytes=err.total if err else 0,
    )
