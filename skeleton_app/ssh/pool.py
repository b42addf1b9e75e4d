"""The pool: `Connector` builds, secures, pools and uses connections to nodes.

It holds only authenticated Paramiko links (`transport.Link`): a node behind a jump host,
ProxyJump or ProxyCommand is reached by the pool itself (`route`). Fabric's `Connection`
stays the public face (`Cluster.connection()`, `Cluster.group()`, tasks.py, fabfile.py):
`ssh.fabric` imports this module and wraps a pooled link on demand; this module never
imports Fabric (importing Fabric and Invoke costs ~50 ms, a quarter of `skeleton cluster
exec` on 8 nodes).

Connect deadlines, all finite: TCP connect, banner, key exchange, auth and channel open each
bounded by `ssh.connect_timeout` (Paramiko's channel-open default is one hour). Command
deadlines and liveness: `ssh.channel`. Errors: `ssh.errors`, the one translation table.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

# isort: off
from skeleton_app.ssh import paramiko_import  # noqa: F401  (first: Paramiko without Invoke)
# isort: on
import paramiko

from skeleton_app.cancel import INTERRUPTED, token
from skeleton_app.config import SSHSettings
from skeleton_app.errors import NodeError, NodeErrorKind
from skeleton_app.nodes import Node
from skeleton_app.results import NodeResult
from skeleton_app.ssh import channel
from skeleton_app.ssh.errors import (
    channel_open_failure,
    handshake_failure,
    is_preauth_reset,
    translate,
)
from skeleton_app.ssh.hostkeys import KeyStores, host_key_pin
from skeleton_app.ssh.route import Route, Router, first_socket, through
from skeleton_app.ssh.runner import RunOptions
from skeleton_app.ssh.session import LineSession
from skeleton_app.ssh.transport import Link, connect_client, shut

# Paramiko logs handshake failures at ERROR; with no handler configured Python would print
# them to stderr. We report those failures ourselves, once, as results.
logging.getLogger("paramiko").addHandler(logging.NullHandler())

_PREAUTH_RETRIES = 6
_DEFAULT_RUN = RunOptions()

# Connections are pooled per node id too: a transport whose host key was checked for one
# id must never serve another id that a registry row points at the same address.
_PoolKey = tuple[str, str, str, int]


def _pool_key(node: Node) -> _PoolKey:
    return (node.id, node.user, node.host, node.port)


class Connector:
    """Builds, secures, pools and uses connections. One per process (or per Cluster).

    Thread-safe: many nodes are driven at once from a bounded thread pool.
    """

    def __init__(self, settings: SSHSettings):
        self.settings = settings
        self.keys = KeyStores(settings.host_key_policy, settings.known_hosts)
        self._lock = threading.Lock()
        self._node_locks: dict[_PoolKey, threading.Lock] = {}
        self._pool: dict[_PoolKey, Link] = {}
        self._warm_errors: dict[_PoolKey, tuple[NodeError, float]] = {}
        self._closes = 0  # close() calls so far: a connection opened across one is dropped
        self._pkeys: dict[str, paramiko.PKey | None] = {}
        self._router = Router(settings, self.connect_kwargs)

    def _pkey(self, path: str) -> paramiko.PKey | None:
        """The private key at `path`, parsed once per Connector (it costs per host at fan-out).
        None when it cannot be parsed here (encrypted, unknown type): Paramiko then loads it
        by file name and reports the problem itself."""
        with self._lock:
            if path not in self._pkeys:
                try:
                    self._pkeys[path] = paramiko.PKey.from_path(path)
                except (OSError, paramiko.SSHException, ValueError, TypeError):
                    self._pkeys[path] = None
            return self._pkeys[path]

    def connect_kwargs(self, node: Node | None) -> dict[str, Any]:
        """Paramiko connect kwargs for `node` (None: a jump host) with our identity file."""
        identity = (node.identity_file if node else None) or self.settings.identity_file
        kwargs: dict[str, Any] = {}
        if identity:
            pkey = self._pkey(identity)
            if pkey is not None:
                kwargs["pkey"] = pkey
            else:
                kwargs["key_filename"] = [identity]
            # An explicit identity means "this key": don't wander through ~/.ssh or an agent.
            kwargs["look_for_keys"] = False
            kwargs["allow_agent"] = False
        return kwargs

    def warm(self, nodes: Iterable[Node]) -> Callable[[], None]:
        """Start connecting to `nodes` in the background, ahead of their first command (which
        then finds the connection open, or gets this attempt's error instead of waiting out a
        second connect timeout). Returns a function that waits for the attempts to end and
        forgets the errors no command took; call it before closing the connector."""
        nodes = list(nodes)

        def one(node: Node) -> None:
            # Whatever went wrong, the node's first command meets it again (or gets it).
            with contextlib.suppress(Exception):
                self.link(node, warming=True)

        threads = [threading.Thread(target=one, args=(n,), name=f"warm-{n.id}", daemon=True)
                   for n in nodes]
        for t in threads:
            t.start()

        def wait() -> None:
            for t in threads:
                t.join()
            with self._lock:
                for n in nodes:
                    self._warm_errors.pop(_pool_key(n), None)

        return wait

    def link(self, node: Node, *, warming: bool = False, cancellable: bool = True) -> Link:
        """A connected, pooled connection to `node` (what commands run on); NodeError.
        `cancellable`: a cancel (Ctrl-C) breaks off a connect in progress (INTERRUPTED)."""
        key = _pool_key(node)
        with self._lock:
            conn = self._pool.get(key)
            node_lock = self._node_locks.setdefault(key, threading.Lock())
            closes = self._closes
        if conn is not None and conn.is_connected:
            return conn
        since = time.monotonic()
        with node_lock:
            with self._lock:
                conn = self._pool.get(key)
                failed = self._warm_errors.pop(key, None)
            # A warm-up attempt that failed while we waited for it: its error is ours (one
            # that failed before we came is old news: connect again).
            if failed is not None and failed[1] >= since:
                raise failed[0]
            if conn is not None and conn.is_connected:
                return conn
            try:
                conn = self._open(node, cancellable=cancellable)
            except NodeError as exc:
                if warming:  # for the command that may be waiting for this attempt
                    with self._lock:
                        self._warm_errors[key] = (exc, time.monotonic())
                raise
            with self._lock:
                if self._closes == closes:
                    self._pool[key] = conn
                    return conn
            conn.close()  # opened across close() (a warm-up): nobody would ever close it
            raise NodeError(NodeErrorKind.ERROR, "the connector was closed while connecting",
                            node=node.id)

    def _open(self, node: Node, *, cancellable: bool = True) -> Link:
        """Connect to `node` (retrying handshakes that sshd's MaxStartups dropped). With
        `cancellable`, a cancel ends the TCP connect or the handshake at once."""
        timeout = self.settings.connect_timeout
        route = self._router.route(node)
        started = time.monotonic()
        attempt = 0
        while True:
            try:
                return self._connect(node, route, timeout, cancellable=cancellable)
            except Exception as exc:
                if cancellable and token().cancelled:
                    raise NodeError(NodeErrorKind.INTERRUPTED, f"{INTERRUPTED} while connecting",
                                    node=node.id) from exc
                elapsed = time.monotonic() - started
                attempt += 1
                if (is_preauth_reset(exc, elapsed, timeout) and attempt < _PREAUTH_RETRIES
                        and elapsed < timeout):
                    # Jittered exponential backoff so a burst of dropped handshakes spreads out.
                    time.sleep(min(timeout - elapsed, random.uniform(0.05, 0.2) * 2 ** attempt))
                    continue
                raise handshake_failure(exc, node, elapsed=elapsed, timeout=timeout,
                                        known_hosts=self.settings.known_hosts) from exc

    def _connect(self, node: Node, route: Route, timeout: float, *, cancellable: bool) -> Link:
        """One attempt: the route's socket, its jump hosts, then the node's handshake."""
        client = paramiko.SSHClient()
        self.keys.secure(client, host_key_pin(node, route.host))
        sock = first_socket(route, node.port, timeout, cancellable=cancellable)
        with token().on_cancel(lambda: shut(sock)) if cancellable else contextlib.nullcontext():
            end, hops = through(route, sock, node.port, timeout=timeout, secure=self.keys.secure)
            try:
                # The key is looked up under the node id (HostKeyAlias): with our own socket,
                # Paramiko uses host and port only to name the known_hosts entry, and port 22
                # names it exactly `node-id`, as OpenSSH does.
                connect_client(client, host=node.id, port=22, user=node.user, sock=end,
                               connect_kwargs=dict(route.connect_kwargs), timeout=timeout)
            except BaseException:
                for hop in reversed(hops):
                    with contextlib.suppress(Exception):
                        hop.close()
                raise
        return Link(client, route.host, node.port, hops)

    def pooled(self, node: Node) -> Link | None:
        """The pooled connection to `node`, None when there is none (the keeper's
        opened/closed log and idle expiry watch it)."""
        with self._lock:
            return self._pool.get(_pool_key(node))

    def discard(self, node: Node) -> None:
        with self._lock:
            conn = self._pool.pop(_pool_key(node), None)
        if conn is not None:
            conn.close()

    def close(self) -> None:
        with self._lock:
            self._closes += 1
            conns = list(self._pool.values())
            self._pool.clear()
        for conn in conns:
            with contextlib.suppress(Exception):  # one dead transport must not stop the rest
                conn.close()

    def __enter__(self) -> Connector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- running commands -------------------------------------------------------------

    def run(self, node: Node, command: str, options: RunOptions = _DEFAULT_RUN) -> NodeResult[Any]:
        """Run `command` on `node`; always returns a NodeResult, never raises for node faults."""
        started = time.monotonic()
        timeout = options.timeout
        if timeout is None and not options.unbounded:
            timeout = self.settings.op_timeout
        connect_timeout = self.settings.connect_timeout
        for attempt in (1, 2):
            if options.cancellable and token().cancelled:
                return channel.failed(node, NodeError(NodeErrorKind.INTERRUPTED,
                                                      f"{INTERRUPTED} before it started"), started)
            try:
                link = self.link(node, cancellable=options.cancellable)
            except NodeError as exc:
                return channel.failed(node, exc, started)
            try:
                chan = link.transport.open_session(timeout=connect_timeout)
            except Exception as exc:
                self.discard(node)
                # A pooled transport that the peer closed (node rebooted, sshd restarted):
                # reconnect once. One that merely stopped answering is not retried: that
                # would double the wait, and the next connect would hang the same way.
                if attempt == 1 and not link.transport.is_active() and time.monotonic() - (
                        started) < connect_timeout:
                    continue
                return channel.failed(
                    node, channel_open_failure(exc, node, timeout=connect_timeout), started)
            return channel.drive(link, node, chan, command, timeout, options, started,
                                 keepalive=self.settings.keepalive,
                                 connect_timeout=connect_timeout,
                                 discard=lambda: self.discard(node))
        raise AssertionError("unreachable")  # pragma: no cover

    def session(self, node: Node, command: str, *, what: str = "helper") -> LineSession:
        """`command` on `node` with its stdin held open, for a line conversation; NodeError.
        `what` names the command in errors ("the node's deploy helper did not answer")."""
        timeout = self.settings.connect_timeout
        for attempt in (1, 2):
            link = self.link(node)  # NodeError when unreachable
            try:
                chan = link.transport.open_session(timeout=timeout)
                chan.exec_command(command)
                return LineSession(chan, node, what=what)
            except Exception as exc:
                self.discard(node)
                # A pooled transport the peer closed (sshd restarted): reconnect once.
                if attempt == 1 and not link.transport.is_active():
                    continue
                err = translate(exc, host=node.host, port=node.port, timeout=timeout)
                err.node = node.id
                raise err from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def hold(self, node: Node, command: str, *, cancellable: bool = True) -> Callable[[], None]:
        """Start `command` on `node` on a channel of its own whose stdin stays open, and return
        what closes it (`channel.hold`: a lease without renewal traffic). Connects as `run`
        does (NodeError if the node cannot be reached: a command that follows then finds the
        pooled connection, never a second connect timeout)."""
        link = self.link(node, cancellable=cancellable)
        return channel.hold(link.transport, command, timeout=self.settings.connect_timeout)
