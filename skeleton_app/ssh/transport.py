"""Paramiko transports as we open them: a TCP connect a cancel can break, our transport
(exit-signal handling, the prompt ACK), a bounded handshake, the liveness probe, and `Link`,
one authenticated connection as the pool holds it.

Liveness: while a command is silent, the connection is probed every `ssh.keepalive` seconds
with a global request that needs a reply. Paramiko's own keepalive only sends, so it never
notices a frozen peer whose kernel still ACKs TCP.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import socket
import threading
import time
from collections.abc import Sequence
from typing import Any

# isort: off
from skeleton_app.ssh import paramiko_import  # noqa: F401  (first: Paramiko without Invoke)
# isort: on
import paramiko
from paramiko.common import MSG_CHANNEL_REQUEST, MSG_GLOBAL_REQUEST, cMSG_IGNORE
from paramiko.message import Message

from skeleton_app.cancel import INTERRUPTED, token
from skeleton_app.errors import NodeError, NodeErrorKind

SIGNALS = {"HUP": 1, "INT": 2, "QUIT": 3, "ILL": 4, "ABRT": 6, "FPE": 8, "KILL": 9,
           "USR1": 10, "SEGV": 11, "USR2": 12, "PIPE": 13, "ALRM": 14, "TERM": 15}


class Link:
    """An authenticated Paramiko connection to one node, as the Connector pools it: what
    commands run on. `hops` are the jump-host connections it runs through (closed with it).
    The Fabric face (`ssh.fabric`) wraps one in a Fabric `Connection` on demand."""

    def __init__(self, client: paramiko.SSHClient, host: str, port: int,
                 hops: Sequence[paramiko.SSHClient] = ()):
        self.client = client
        self.transport: paramiko.Transport = client.get_transport()
        self.host = host
        self.port = port
        self.hops = tuple(hops)
        self.liveness_lock = threading.Lock()

    @property
    def is_connected(self) -> bool:
        return self.transport is not None and bool(self.transport.is_active())

    def alive(self, timeout: float) -> bool:
        return alive(self.transport, self.liveness_lock, timeout)

    def close(self) -> None:
        self.client.close()
        for hop in reversed(self.hops):
            with contextlib.suppress(Exception):
                hop.close()


def alive(transport: paramiko.Transport | None, lock: threading.Lock, timeout: float) -> bool:
    """True if the peer answers a global request within `timeout` seconds."""
    if transport is None or not transport.is_active():
        return False
    answered = threading.Event()

    def probe() -> None:
        # OpenSSH answers unknown global requests with REQUEST_FAILURE: any answer proves
        # the peer is alive.
        with lock:  # Paramiko keeps one completion event per transport
            transport.global_request("keepalive@openssh.com", wait=True)
            answered.set()

    threading.Thread(target=probe, daemon=True, name="ssh-liveness").start()
    return answered.wait(timeout) and bool(transport.is_active())


def connect_client(client: paramiko.SSHClient, *, host: str, port: int, user: str,
                   sock: Any, connect_kwargs: dict[str, Any], timeout: float) -> None:
    """Handshake and authenticate `client` over `sock`, every step bounded by `timeout`."""
    kwargs = dict(connect_kwargs)
    kwargs.update(
        hostname=host, port=port, username=user, sock=sock, timeout=timeout,
        banner_timeout=timeout, auth_timeout=timeout, channel_timeout=timeout,
        transport_factory=new_transport,
    )
    try:
        client.connect(**kwargs)
    except BaseException:
        # Stop Paramiko's transport thread before its socket goes away (else it prints
        # "Socket exception: Bad file descriptor" from its thread).
        client.close()
        sock.close()
        raise


def tcp_connect(host: str, port: int, timeout: float, *,
                cancellable: bool = False) -> socket.socket:
    """A TCP connection; `cancellable`: a cancel (Ctrl-C) ends the wait at once with an
    INTERRUPTED NodeError (a blackholed node would hold the command for connect_timeout)."""
    if cancellable:
        sock = _connect_or_cancel(host, port, timeout)
    else:
        sock = socket.create_connection((host, port), timeout=timeout)
    # Measured: Paramiko's handshake and small commands are ~3x faster without Nagle.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    return sock


def _connect_or_cancel(host: str, port: int, timeout: float) -> socket.socket:
    """socket.create_connection, waiting in select() on the socket and the cancel token."""
    deadline = time.monotonic() + timeout
    last: OSError | None = None
    for family, kind, proto, _, addr in socket.getaddrinfo(host, port,
                                                           type=socket.SOCK_STREAM):
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            err = sock.connect_ex(addr)
            if err in (errno.EINPROGRESS, errno.EAGAIN):
                left = max(0.0, deadline - time.monotonic())
                writable = select.select([token().fileno()], [sock], [], left)[1]
                if token().cancelled:
                    raise NodeError(NodeErrorKind.INTERRUPTED, f"{INTERRUPTED} while connecting")
                if not writable:
                    raise TimeoutError("timed out")  # what create_connection raises
                err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                raise OSError(err, os.strerror(err))
            sock.settimeout(timeout)
            return sock
        except OSError as exc:
            sock.close()
            last = exc
        except BaseException:
            sock.close()
            raise
    raise last or OSError(f"no address for {host}")


def shut(sock: Any) -> None:
    """Break a handshake in progress (its reads end at once); the owner closes the socket.
    A ProxyCommand (no shutdown) is closed: that ends its process."""
    with contextlib.suppress(OSError):
        if isinstance(sock, socket.socket):
            sock.shutdown(socket.SHUT_RDWR)
        else:
            sock.close()


def _handle_channel_request(channel: paramiko.Channel, m: Message) -> None:
    """Paramiko ignores "exit-signal": a command killed by a signal (OOM killer, SIGSEGV)
    would look like a lost connection. Record it as a shell does: 128 + signal number."""
    mark = m.packet.tell()
    if m.get_text() == "exit-signal":
        m.get_boolean()  # want_reply: never set for exit-signal
        channel.exit_status = 128 + SIGNALS.get(m.get_text(), 0)
        channel.status_event.set()
        return
    m.packet.seek(mark)
    paramiko.Channel._handle_request(channel, m)


_AEAD = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")


def new_transport(sock: Any, **kwargs: Any) -> paramiko.Transport:
    """Paramiko's Transport with our handlers, installed before the handshake starts (a
    server sends its first global request right after authentication)."""
    transport = paramiko.Transport(sock, **kwargs)
    # AES-GCM first (OpenSSH has offered it since 6.2): with Paramiko's default AES-CTR +
    # HMAC-SHA2, every packet pays a new HMAC object and a MAC comparison written in Python
    # (`util.constant_time_bytes_eq`, a loop over the bytes): measured a third of the CPU of
    # a warm command. GCM's tag is checked by `cryptography`. The others stay as fallbacks.
    transport._preferred_ciphers = (*_AEAD, *(c for c in transport._preferred_ciphers
                                             if c not in _AEAD))
    # Paramiko dispatches channel messages through a class-level table; an instance copy
    # changes only our transports.
    table = dict(paramiko.Transport._channel_handler_table)
    table[MSG_CHANNEL_REQUEST] = _handle_channel_request
    transport._channel_handler_table = table
    parse = transport._handler_table[MSG_GLOBAL_REQUEST]

    def global_request(m: Message) -> None:
        mark = m.packet.tell()
        m.get_text()
        want_reply = m.get_boolean()
        m.packet.seek(mark)
        parse(m)
        if not want_reply:
            _ack_now(transport)

    transport._handler_table[MSG_GLOBAL_REQUEST] = global_request
    return transport


def _ack_now(transport: paramiko.Transport) -> None:
    """Answer a message that wants no answer with SSH_MSG_IGNORE, so that the TCP ACK leaves
    now. Measured: OpenSSH's sshd sends "hostkeys-00@openssh.com" right after authentication
    and then, with Nagle on (sshd disables it only for interactive sessions), holds the reply
    to our first channel open until that message is ACKed; the kernel delays the ACK by
    40 ms when we have nothing to send. That made every fresh connection's first command
    45 ms slower; with this it is 2 ms. Sent from the transport's own thread, so with
    `_send_message` (`send_ignore` would wait for the thread itself during a re-key)."""
    m = Message()
    m.add_byte(cMSG_IGNORE)
    m.add_string(b"")
    with contextlib.suppress(Exception):  # a dying transport: nothing to speed up
        transport._send_message(m)
