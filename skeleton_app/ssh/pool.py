"""The SSH layer: connections with our host-key policy, pooled, bounded and honest.

Everything Paramiko, Fabric and `socket` raise is translated here into `NodeError` with a
`NodeErrorKind`; nothing above this module sees their exceptions.

Why commands do not go through `Connection.run`: on a warm connection Invoke's runner
costs ~48 ms a command (threads, pty negotiation, encoding layers) while a bare channel
read to EOF costs ~3 ms. Fabric's `Connection` stays the public face (`Cluster.connection()`
and `Cluster.group()` hand out `fabric_connection.SkeletonConnection`), and `Connector.run`
drives the transport directly. The pool holds plain authenticated Paramiko clients
(`_Link`) unless a node needs Fabric to reach it (a jump host, ProxyJump or ProxyCommand):
importing Fabric and Invoke costs ~50 ms, a quarter of `skeleton cluster exec` on 8 nodes.
`connection()` wraps a pooled client in a Fabric Connection when asked.

Deadlines, all finite:
- connect: TCP connect, banner, key exchange, auth and channel open each bounded by
  `ssh.connect_timeout` (Paramiko's channel-open default is one hour);
- command: at the deadline the session's process group gets SIGTERM, then SIGKILL, through
  SSH "signal" requests, so nothing is left running on the node; if the node does not
  confirm, it is reported as timed out anyway;
- liveness: while a command is silent, the connection is probed every `ssh.keepalive`
  seconds with a global request that needs a reply. Paramiko's own keepalive only sends,
  so it never notices a frozen peer whose kernel still ACKs TCP.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import ipaddress
import logging
import os
import random
import select
import shlex
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

# isort: off
from skeleton_app.ssh import paramiko_import  # noqa: F401  (first: Paramiko without Invoke)
from skeleton_app.ssh.runner import OutputSink, RunOptions
# isort: on
import paramiko
from paramiko.common import (
    MSG_CHANNEL_REQUEST,
    MSG_GLOBAL_REQUEST,
    cMSG_CHANNEL_REQUEST,
    cMSG_IGNORE,
)
from paramiko.hostkeys import HostKeys
from paramiko.message import Message

from skeleton_app.cancel import INTERRUPTED, TOKEN
from skeleton_app.config import SSHSettings
from skeleton_app.errors import NodeError, NodeErrorKind
from skeleton_app.nodes import Node
from skeleton_app.results import NodeResult
from skeleton_app.ssh.openssh import ssh_argv  # noqa: F401  (moved; importers updated)

if TYPE_CHECKING:
    from fabric import Config, Connection

    from skeleton_app.ssh.fabric import SkeletonConnection
    from skeleton_app.ssh.session import LineSession

# Paramiko logs handshake failures at ERROR; with no handler configured Python would print
# them to stderr. We report those failures ourselves, once, as results.
logging.getLogger("paramiko").addHandler(logging.NullHandler())


_KILL_AFTER = 3.0  # seconds between TERM and KILL when a command overruns its timeout
_CONFIRM_KILL = 3.0  # seconds to wait for the node to report the kill before giving up
# On a cancel (Ctrl-C): SIGINT at once, then SIGTERM, SIGKILL, and the channel is closed at
# the last step whether or not the node confirmed: the command returns within ~1 s.
_CANCEL_STEPS = ((0.0, "INT"), (0.3, "TERM"), (0.6, "KILL"), (1.0, ""))
_BUFFER_HEAD = 64 * 1024
_BUFFER_TAIL = 64 * 1024
_PREAUTH_RETRIES = 6


class HostKeyUnknown(paramiko.SSHException):  # type: ignore[misc]  # paramiko: untyped
    def __init__(self, hostname: str, key: paramiko.PKey):
        self.hostname = hostname
        self.key = key
        super().__init__(hostname)


class HostKeyTaken(HostKeyUnknown):
    """accept-new met a node id for the first time, and the key its address presents is
    already pinned under another name: that machine is another node already."""

    def __init__(self, hostname: str, key: paramiko.PKey, other: str):
        super().__init__(hostname, key)
        self.other = other


@dataclass(frozen=True, slots=True)
class _Pin:
    """Whose key a connection checks: `alias` (the node id, OpenSSH's HostKeyAlias) and the
    address entries (`host`, `[host]:port`) trusted for an id that has no entry yet."""

    alias: str
    addresses: tuple[str, ...]


class _HostKeyPolicy(paramiko.MissingHostKeyPolicy):  # type: ignore[misc]  # untyped
    """Host keys are pinned per node id: Paramiko looks the key up under the node id (the
    connection's `hostname` is the alias, see `Connector._open`) and refuses a different key
    itself (BadHostKeyException), under every policy. When the id has no entry yet:

    - the address's own entry (known_hosts written before ids were pinned) decides: a match
      is trusted and recorded under the id from then on, a mismatch is a changed key;
    - else strict refuses; accept-new records the first-seen key under the id, unless that
      key is already pinned under another name (a machine is one node: a new registry row
      must not borrow the identity of a node we know).
    """

    def __init__(self, policy: str, known_hosts: str, store: HostKeys, lock: threading.Lock,
                 system: HostKeys | None = None, pin: _Pin | None = None):
        self.policy = policy
        self.known_hosts = known_hosts
        self.store = store
        self.lock = lock
        self.system = system if system is not None else HostKeys()
        self.pin = pin

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str,
                         key: paramiko.PKey) -> None:
        if self.pin is not None:
            for address in self.pin.addresses:
                known = self.system.lookup(address) or self.store.lookup(address)
                if known is None:
                    continue
                expected = known.get(key.get_name())
                if expected != key:
                    raise paramiko.BadHostKeyException(
                        address, key, expected or next(iter(known.values())))
                # Pinned from now on; a known_hosts we cannot write only costs the pin.
                with contextlib.suppress(OSError):
                    self._record(client, hostname, key)
                return
        if self.policy != "accept-new":
            raise HostKeyUnknown(hostname, key)
        if self.pin is not None:
            other = self._pinned_elsewhere(key)
            if other is not None:
                raise HostKeyTaken(hostname, key, other)
        self._record(client, hostname, key)

    def _pinned_elsewhere(self, key: paramiko.PKey) -> str | None:
        """A plain (not hashed, not address) name already holding `key`, if any."""
        assert self.pin is not None
        mine = {self.pin.alias, *self.pin.addresses}
        for store in (self.system, self.store):
            for entry in list(store._entries):
                if entry.key is None or entry.key != key:
                    continue
                for name in entry.hostnames:
                    if name not in mine and not name.startswith("|") \
                            and not _is_address(name):
                        return str(name)
        return None

    def _record(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        with self.lock:
            self.store.add(hostname, key.get_name(), key)
            client._host_keys.add(hostname, key.get_name(), key)
            directory = os.path.dirname(self.known_hosts) or "."
            os.makedirs(directory, mode=0o700, exist_ok=True)
            line = f"{hostname} {key.get_name()} {key.get_base64()}\n"
            fd = os.open(self.known_hosts, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)  # two controllers may accept at once
                os.write(fd, line.encode())
            finally:
                os.close(fd)


def _is_address(name: str) -> bool:
    """`10.0.0.1`, `fd00::1` or `[10.0.0.1]:2222`: a known_hosts entry for an address."""
    if name.startswith("[") and "]:" in name:
        name = name[1:name.rindex("]:")]
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def host_key_pin(node: Node, connected_host: str | None = None) -> _Pin:
    """The pin of a connection to `node` (through `connected_host` when ssh_config resolved
    the node's host to another name)."""
    hosts = dict.fromkeys([connected_host or node.host, node.host])
    return _Pin(alias=node.id, addresses=tuple(known_host_name(h, node.port) for h in hosts))


# Connections are pooled per node id too: a transport whose host key was checked for one
# id must never serve another id that a registry row points at the same address.
_PoolKey = tuple[str, str, str, int]


def _pool_key(node: Node) -> _PoolKey:
    return (node.id, node.user, node.host, node.port)


def fingerprint(key: paramiko.PKey) -> str:
    return str(key.fingerprint if hasattr(key, "fingerprint") else key.get_name())


def known_host_name(host: str, port: int) -> str:
    return host if port == 22 else f"[{host}]:{port}"


class _Link:
    """An authenticated Paramiko connection to one node, as the Connector pools it: what
    commands run on. `Connector.connection()` hands it out inside a Fabric `Connection`
    (Fabric, and Invoke under it, are imported only then)."""

    def __init__(self, client: paramiko.SSHClient, host: str, port: int):
        self.client = client
        self.transport: Any = client.get_transport()  # set once connected (as Fabric's is)
        self.host = host
        self.port = port
        self.liveness_lock = threading.Lock()

    @property
    def is_connected(self) -> bool:
        return self.transport is not None and self.transport.active

    def alive(self, timeout: float) -> bool:
        return alive(self.transport, self.liveness_lock, timeout)

    def close(self) -> None:
        self.client.close()


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
    return answered.wait(timeout) and transport.is_active()


def connect_client(client: paramiko.SSHClient, *, host: str, port: int, user: str,
                   sock: Any, connect_kwargs: dict[str, Any], timeout: float) -> None:
    """Handshake and authenticate `client` over `sock`, every step bounded by `timeout`."""
    kwargs = dict(connect_kwargs)
    kwargs.update(
        hostname=host, port=port, username=user, sock=sock, timeout=timeout,
        banner_timeout=timeout, auth_timeout=timeout, channel_timeout=timeout,
        transport_factory=_new_transport,
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
                writable = select.select([TOKEN.fileno()], [sock], [], left)[1]
                if TOKEN.cancelled:
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


def _shut(sock: socket.socket) -> None:
    """Break a handshake in progress (its reads end at once); the owner closes the socket."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def translate(exc: BaseException, *, host: str, port: int, timeout: float,
              known_hosts: str = "~/.ssh/known_hosts", user: str | None = None) -> NodeError:
    """Map Paramiko/socket/Fabric exceptions to our error kinds, with a readable message (an
    auth error names the user: with ssh_config's User in play, which one is not obvious)."""
    where = f"{host}:{port}"
    if isinstance(exc, NodeError):
        return exc
    if isinstance(exc, HostKeyTaken):
        return NodeError(
            NodeErrorKind.HOSTKEY_CHANGED,
            f"{where} presents the host key of {exc.other} ({fingerprint(exc.key)}), and node"
            f" {exc.hostname} has no key of its own yet: refusing (one machine, one node id;"
            " was a registry row pointed at another node?). If this is right, record the key"
            f" under {exc.hostname}: ssh-keyscan -p {port} {host} | sed 's/^[^ ]*/"
            f"{exc.hostname}/' >> {shlex.quote(known_hosts)}",
        )
    if isinstance(exc, HostKeyUnknown):
        return NodeError(
            NodeErrorKind.HOSTKEY_UNKNOWN,
            f"unknown host key for {exc.hostname} at {where} ({exc.key.get_name()}"
            f" {fingerprint(exc.key)});"
            f" to trust it, check the fingerprint and run: ssh-keyscan -p {port} {host} >>"
            f" {shlex.quote(known_hosts)}, or set ssh.host_key_policy: accept-new",
        )
    if isinstance(exc, paramiko.BadHostKeyException):
        return NodeError(
            NodeErrorKind.HOSTKEY_CHANGED,
            f"HOST KEY CHANGED for {exc.hostname} at {where}: got {exc.key.get_name()}"
            f" {fingerprint(exc.key)}, known_hosts has {fingerprint(exc.expected_key)}; refusing"
            " to connect (possible man-in-the-middle). If the change is expected, remove the old"
            " entry with ssh-keygen -R",
        )
    if isinstance(exc, paramiko.AuthenticationException):
        who = f"{user}@{where}" if user else where
        return NodeError(NodeErrorKind.AUTH, f"authentication failed for {who}: {exc}")
    if isinstance(exc, socket.gaierror):
        return NodeError(NodeErrorKind.UNREACHABLE, f"cannot resolve {host}: {exc.strerror}")
    if isinstance(exc, ConnectionRefusedError):
        return NodeError(NodeErrorKind.REFUSED, f"connection refused by {where}")
    if isinstance(exc, TimeoutError | socket.timeout):
        return NodeError(NodeErrorKind.UNREACHABLE,
                         f"connection to {where} timed out after {timeout:g}s")
    if isinstance(exc, OSError) and exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH,
                                                  errno.EHOSTDOWN):
        return NodeError(NodeErrorKind.UNREACHABLE, f"{where}: {exc.strerror}")
    if isinstance(exc, paramiko.ChannelException | paramiko.SSHException | EOFError | OSError):
        text = str(exc) or type(exc).__name__
        if "banner" in text.lower() and "reset" not in text.lower():
            return NodeError(NodeErrorKind.UNREACHABLE,
                             f"{where} accepted TCP but sent no SSH banner within {timeout:g}s")
        if isinstance(exc, OSError) and not isinstance(exc, paramiko.SSHException):
            return NodeError(NodeErrorKind.LOST, f"{where}: {text}")
        return NodeError(NodeErrorKind.PROTOCOL, f"{where}: {text}")
    return NodeError(NodeErrorKind.ERROR, f"{where}: {type(exc).__name__}: {exc}")


def _is_preauth_reset(exc: BaseException, elapsed: float, timeout: float) -> bool:
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


class _Buffer:
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


_DEFAULT_RUN = RunOptions()


class Connector:
    """Builds, secures, pools and uses connections. One per process (or per Cluster).

    Thread-safe: many nodes are driven at once from a bounded thread pool.
    """

    def __init__(self, settings: SSHSettings, *, fabric_config: Config | None = None):
        self.settings = settings
        self._lock = threading.Lock()
        self._key_lock = threading.Lock()
        self._node_locks: dict[_PoolKey, threading.Lock] = {}
        self._pool: dict[_PoolKey, _Link | SkeletonConnection] = {}
        self._warm_errors: dict[_PoolKey, tuple[NodeError, float]] = {}
        self._closes = 0  # close() calls so far: a connection opened across one is dropped
        self._keys: dict[str, paramiko.PKey | None] = {}
        self._fabric_config = fabric_config
        self._ssh_config: paramiko.SSHConfig | None = None
        self._system_keys = HostKeys()
        for path in ("/etc/ssh/ssh_known_hosts", os.path.expanduser("~/.ssh/known_hosts")):
            self._load_keys(self._system_keys, path)
        self._user_keys = HostKeys()
        self._load_keys(self._user_keys, settings.known_hosts)

    @staticmethod
    def _load_keys(store: HostKeys, path: str) -> None:
        if os.path.isfile(path):
            # An unreadable known_hosts means "no keys known": strict still refuses.
            with contextlib.suppress(OSError, paramiko.SSHException):
                store.load(path)

    def _secure(self, client: paramiko.SSHClient, pin: _Pin | None = None) -> None:
        # Shared, parsed-once key stores (reading known_hosts per host costs at fan-out).
        client._system_host_keys = self._system_keys
        client._host_keys = self._user_keys
        client.set_missing_host_key_policy(_HostKeyPolicy(
            self.settings.host_key_policy, self.settings.known_hosts, self._user_keys,
            self._key_lock, self._system_keys, pin,
        ))

    def _pkey(self, path: str) -> paramiko.PKey | None:
        """The private key at `path`, parsed once per Connector (it costs per host at fan-out).
        None when it cannot be parsed here (encrypted, unknown type): Paramiko then loads it
        by file name and reports the problem itself."""
        with self._lock:
            if path not in self._keys:
                try:
                    self._keys[path] = paramiko.PKey.from_path(path)
                except (OSError, paramiko.SSHException, ValueError, TypeError):
                    self._keys[path] = None
            return self._keys[path]

    def connect_kwargs(self, node: Node | None) -> dict[str, Any]:
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

    @property
    def fabric_config(self) -> Config:
        """The Fabric Config of our connections (built on first use: it imports Fabric)."""
        with self._lock:
            if self._fabric_config is None:
                from skeleton_app.ssh.fabric import fabric_config

                self._fabric_config = fabric_config(self.settings)
            return self._fabric_config

    def new_connection(self, node: Node) -> SkeletonConnection:
        """An unopened Fabric connection to `node` with our policy (imports Fabric)."""
        from skeleton_app.ssh.fabric import new_connection

        return new_connection(self, node)

    def wrap(self, conn: Connection) -> SkeletonConnection:
        from skeleton_app.ssh.fabric import wrap

        return wrap(self, conn)

    def _plain(self, node: Node) -> tuple[str, dict[str, Any]] | None:
        """(address, connect kwargs) when `node` needs nothing of Fabric's: no jump host,
        no ProxyJump or ProxyCommand in ssh_config. Host aliases and IdentityFile are
        resolved the way Fabric resolves them (user and port come from the node, which
        already honours ssh_config's User and Port: skeleton_app/ssh_config.py)."""
        if self.settings.jump_host:
            return None
        found: dict[str, Any] = {}
        if self.settings.ssh_config:
            try:
                found = dict(self._ssh_lookup(node.host))
            except Exception as exc:  # unreadable, malformed, a failing Match exec...
                raise NodeError(NodeErrorKind.ERROR, f"ssh_config (~/.ssh/config,"
                                f" /etc/ssh/ssh_config): {type(exc).__name__}: {exc}",
                                node=node.id) from exc
        if "proxyjump" in found or "proxycommand" in found:
            return None
        kwargs = self.connect_kwargs(node)
        keys = [*kwargs.get("key_filename", []), *found.get("identityfile", [])]
        if keys:
            kwargs["key_filename"] = keys
        return str(found.get("hostname", node.host)), kwargs

    def _ssh_lookup(self, host: str) -> paramiko.SSHConfigDict:
        with self._lock:
            if self._ssh_config is None:
                # As Fabric loads them: the user's file, then the system's.
                config = paramiko.SSHConfig()
                for path in ("~/.ssh/config", "/etc/ssh/ssh_config"):
                    path = os.path.expanduser(path)
                    if os.path.isfile(path):
                        with open(path) as fh:
                            config.parse(fh)
                self._ssh_config = config
            config = self._ssh_config
        return config.lookup(host)

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

    def connection(self, node: Node) -> SkeletonConnection:
        """A connected, pooled Fabric connection to `node`; raises NodeError."""
        link = self.link(node)
        if not isinstance(link, _Link):
            return link
        conn = self.new_connection(node)
        conn.client = link.client
        conn.transport = link.transport
        conn.liveness_lock = link.liveness_lock  # one liveness probe at a time per transport
        with self._lock:
            key = _pool_key(node)
            if self._pool.get(key) is link:
                self._pool[key] = conn  # the same transport, from now on in Fabric's dress
        return conn

    def link(self, node: Node, *, warming: bool = False,
             cancellable: bool = True) -> _Link | SkeletonConnection:
        """A connected, pooled connection to `node` (what commands run on); NodeError.
        `cancellable`: a cancel (Ctrl-C) breaks off a connect in progress (INTERRUPTED)."""
        key = _pool_key(node)
        with self._lock:
            conn = self._pool.get(key)
            node_lock = self._node_locks.setdefault(key, threading.Lock())
            closes = self._closes
        if conn is not None and conn.is_connected and conn.transport.is_active():
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
            if conn is not None and conn.is_connected and conn.transport.is_active():
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

    def _open(self, node: Node, *, cancellable: bool = True) -> _Link | SkeletonConnection:
        """Connect to `node` (retrying handshakes that sshd's MaxStartups dropped). With
        `cancellable`, a cancel ends the TCP connect or the handshake at once."""
        timeout = self.settings.connect_timeout
        plain = self._plain(node)
        conn: _Link | SkeletonConnection
        if plain is None:
            conn = self.new_connection(node)
            connect: Callable[[], None] = conn.open
        else:
            host, kwargs = plain
            client = paramiko.SSHClient()
            self._secure(client, host_key_pin(node, host))
            conn = _Link(client, host, node.port)
            link = conn

            def connect() -> None:
                sock = tcp_connect(host, node.port, timeout, cancellable=cancellable)
                # The key is looked up under the node id (HostKeyAlias): with our own
                # socket, Paramiko uses host and port only to name the known_hosts entry,
                # and port 22 names it exactly `node-id`, as OpenSSH does.
                with (TOKEN.on_cancel(lambda: _shut(sock)) if cancellable
                      else contextlib.nullcontext()):
                    connect_client(client, host=node.id, port=22, user=node.user, sock=sock,
                                   connect_kwargs=kwargs, timeout=timeout)
                link.transport = client.get_transport()

        started = time.monotonic()
        attempt = 0
        while True:
            try:
                connect()
                return conn
            except Exception as exc:
                conn.close()
                if cancellable and TOKEN.cancelled:
                    raise NodeError(NodeErrorKind.INTERRUPTED, f"{INTERRUPTED} while connecting",
                                    node=node.id) from exc
                elapsed = time.monotonic() - started
                attempt += 1
                if (_is_preauth_reset(exc, elapsed, timeout) and attempt < _PREAUTH_RETRIES
                        and elapsed < timeout):
                    # Jittered exponential backoff so a burst of dropped handshakes spreads out.
                    time.sleep(min(timeout - elapsed, random.uniform(0.05, 0.2) * 2 ** attempt))
                    continue
                err = translate(exc, host=node.host, port=node.port, timeout=timeout,
                                known_hosts=self.settings.known_hosts, user=node.user)
                if elapsed >= timeout * 0.95 and err.kind in (NodeErrorKind.PROTOCOL,
                                                              NodeErrorKind.LOST):
                    # Paramiko words a handshake deadline many ways ("No existing session",
                    # "Error reading SSH protocol banner"): what the user needs is this.
                    err = NodeError(
                        NodeErrorKind.UNREACHABLE,
                        f"{node.host}:{node.port} accepted TCP but sent no SSH banner or"
                        f" handshake within {timeout:g}s (sshd frozen or overloaded?)")
                err.node = node.id
                raise err from exc

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
        timeout = self.settings.command_timeout if options.timeout is None else options.timeout
        for attempt in (1, 2):
            if options.cancellable and TOKEN.cancelled:
                return _failed(node, NodeError(NodeErrorKind.INTERRUPTED,
                                               f"{INTERRUPTED} before it started"), started)
            try:
                conn = self.link(node, cancellable=options.cancellable)
            except NodeError as exc:
                return _failed(node, exc, started)
            try:
                channel = conn.transport.open_session(timeout=self.settings.connect_timeout)
            except Exception as exc:
                self.discard(node)
                # A pooled transport that the peer closed (node rebooted, sshd restarted):
                # reconnect once. One that merely stopped answering is not retried: that
                # would double the wait, and the next connect would hang the same way.
                if attempt == 1 and not conn.transport.is_active() and time.monotonic() - (
                        started) < self.settings.connect_timeout:
                    continue
                err = translate(exc, host=node.host, port=node.port,
                                timeout=self.settings.connect_timeout)
                if isinstance(exc, paramiko.SSHException) and "timeout" in str(exc).lower():
                    err = NodeError(NodeErrorKind.LOST,
                                    f"{node.host}:{node.port} stopped answering (no channel"
                                    f" within {self.settings.connect_timeout:g}s)")
                return _failed(node, err, started)
            return self._drive(conn, node, channel, command, timeout, options, started)
        raise AssertionError("unreachable")  # pragma: no cover

    def session(self, node: Node, command: str, *, what: str = "helper") -> LineSession:
        """`command` on `node` with its stdin held open, for a line conversation; NodeError.
        `what` names the command in errors ("the node's deploy helper did not answer")."""
        from skeleton_app.ssh.session import LineSession  # it imports this module

        return LineSession(self, node, command, what=what)

    def hold(self, node: Node, command: str, *, cancellable: bool = True) -> Callable[[], None]:
        """Start `command` on `node` on a channel of its own whose stdin stays open, and return
        what closes it. The node side reads EOF when that is called, and also when this
        process dies, however (the kernel closes the socket, sshd ends the session): a lease
        without renewal traffic. Connects as `run` does (NodeError if the node cannot be
        reached: a command that follows then finds the pooled connection, never a second
        connect timeout); the channel itself opens in the background, off the caller's path.
        """
        conn = self.link(node, cancellable=cancellable)
        lock = threading.Lock()
        held: list[paramiko.Channel] = []
        closed = threading.Event()

        def shut(channel: paramiko.Channel) -> None:
            with contextlib.suppress(Exception):
                channel.shutdown_write()
                channel.close()

        def open_channel() -> None:
            try:
                channel = conn.transport.open_session(timeout=self.settings.connect_timeout)
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

    def _drive(self, conn: _Link | SkeletonConnection, node: Node, channel: paramiko.Channel,
               command: str, timeout: float | None, options: RunOptions,
               started: float) -> NodeResult[Any]:
        out, err = _Buffer(), _Buffer()
        sink = options.sink
        keepalive = self.settings.keepalive
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
        watch = [TOKEN.fileno()] if options.cancellable else []
        if watch and TOKEN.cancelled:  # Ctrl-C while this node was connecting: never start
            channel.close()
            return _failed(node, NodeError(NodeErrorKind.INTERRUPTED,
                                           f"{INTERRUPTED} before it started"), started)
        # Forced to exit (a second Ctrl-C) mid-command: one last SIGKILL for the command.
        final = contextlib.ExitStack()
        final.enter_context(TOKEN.on_exit(lambda: _send_signal(channel, "KILL")))
        try:
            channel.exec_command(command)
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
                if watch and TOKEN.cancelled:
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
                got = _drain(channel.recv_ready, channel.recv, out, sink, node.id, "stdout")
                got |= _drain(channel.recv_stderr_ready, channel.recv_stderr, err, sink,
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
                        return _failed(node, NodeError(
                            NodeErrorKind.INTERRUPTED,
                            f"{INTERRUPTED}; SIGINT, SIGTERM, SIGKILL sent, not confirmed by"
                            " the node"), started, out, err)
                    if not signal_name:
                        self.discard(node)
                        return _failed(node, NodeError(
                            NodeErrorKind.TIMEOUT,
                            f"command exceeded its {timeout:g}s timeout and the node did not"
                            " confirm the kill"), started, out, err)
                    _send_signal(channel, signal_name)
                    signalled = True
                    continue
                if now - last_heard >= keepalive:
                    if not conn.alive(keepalive):
                        self.discard(node)
                        return _failed(node, NodeError(
                            NodeErrorKind.LOST,
                            f"node stopped answering ({2 * keepalive:g}s without a reply to a"
                            " keepalive)"), started, out, err)
                    last_heard = time.monotonic()
            status = channel.recv_exit_status() if channel.exit_status_ready() else -1
        except NodeError as exc:
            return _failed(node, exc, started, out, err)
        except Exception as exc:
            self.discard(node)
            nerr = translate(exc, host=node.host, port=node.port,
                             timeout=self.settings.connect_timeout)
            if nerr.kind in (NodeErrorKind.PROTOCOL, NodeErrorKind.ERROR):
                nerr = NodeError(NodeErrorKind.LOST, nerr.message)
            return _failed(node, nerr, started, out, err)
        finally:
            final.close()
            channel.close()
        if interrupted:
            return _failed(node, NodeError(
                NodeErrorKind.INTERRUPTED, f"{INTERRUPTED}; the command was stopped on the node"
                f" (exit {status})" if status != -1 else f"{INTERRUPTED}"), started, out, err)
        if signalled:
            return _failed(node, NodeError(
                NodeErrorKind.TIMEOUT,
                f"command exceeded its {timeout:g}s timeout; killed on the node"),
                started, out, err)
        if status == -1:
            self.discard(node)
            return _failed(node, NodeError(NodeErrorKind.LOST,
                                           "connection closed before the command exited"),
                           started, out, err)
        return NodeResult(
            node=node.id, exit_code=status, stdout=out.text(), stderr=err.text(),
            duration=time.monotonic() - started, stdout_bytes=out.total,
            stderr_bytes=err.total, truncated=out.truncated or err.truncated,
        )


_SIGNALS = {"HUP": 1, "INT": 2, "QUIT": 3, "ILL": 4, "ABRT": 6, "FPE": 8, "KILL": 9,
            "USR1": 10, "SEGV": 11, "USR2": 12, "PIPE": 13, "ALRM": 14, "TERM": 15}


def _send_signal(channel: paramiko.Channel, name: str) -> None:
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


def _handle_channel_request(channel: paramiko.Channel, m: Message) -> None:
    """Paramiko ignores "exit-signal": a command killed by a signal (OOM killer, SIGSEGV)
    would look like a lost connection. Record it as a shell does: 128 + signal number."""
    mark = m.packet.tell()
    if m.get_text() == "exit-signal":
        m.get_boolean()  # want_reply: never set for exit-signal
        channel.exit_status = 128 + _SIGNALS.get(m.get_text(), 0)
        channel.status_event.set()
        return
    m.packet.seek(mark)
    paramiko.Channel._handle_request(channel, m)


def _new_transport(sock: Any, **kwargs: Any) -> paramiko.Transport:
    """Paramiko's Transport with our handlers, installed before the handshake starts (a
    server sends its first global request right after authentication)."""
    transport = paramiko.Transport(sock, **kwargs)
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


def _drain(ready: Callable[[], bool], recv: Callable[[int], bytes], buffer: _Buffer,
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


def _failed(node: Node, exc: NodeError, started: float, out: _Buffer | None = None,
            err: _Buffer | None = None) -> NodeResult[Any]:
    return NodeResult(
        node=node.id, error_kind=exc.kind, error=exc.message,
        duration=time.monotonic() - started,
        stdout=out.text() if out else "", stderr=err.text() if err else "",
        stdout_bytes=out.total if out else 0, stderr_bytes=err.total if err else 0,
    )


def __getattr__(name: str) -> Any:
    # `from skeleton_app.ssh.pool import SkeletonConnection` keeps working; Fabric is imported
    # only by whoever asks for it.
    if name == "SkeletonConnection":
        from skeleton_app.ssh.fabric import SkeletonConnection

        return SkeletonConnection
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
