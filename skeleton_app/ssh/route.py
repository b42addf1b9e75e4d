"""How a node is reached: ssh_config's HostName and IdentityFile, jump hosts (`ssh.jump_host`,
ProxyJump) and ProxyCommand, resolved as Fabric resolves them; and opening the socket a
node's handshake runs over.

A jump host is a Paramiko connection of our own (our host-key policy, its key checked under
its own name) whose transport opens a `direct-tcpip` channel to the next hop, as Fabric's
`Connection.open_gateway` does; a ProxyCommand is `paramiko.ProxyCommand`. So the pool holds
only Paramiko links, and Fabric is needed only by whoever asks for a Fabric Connection.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# isort: off
from skeleton_app.ssh import paramiko_import  # noqa: F401  (first: Paramiko without Invoke)
# isort: on
import paramiko

from skeleton_app.config import SSHSettings
from skeleton_app.errors import NodeError, NodeErrorKind
from skeleton_app.nodes import Node
from skeleton_app.ssh.transport import connect_client, tcp_connect

_MAX_NESTING = 4  # a first hop reached through its own ProxyJump, and so on


@dataclass(frozen=True, slots=True)
class Hop:
    """One jump host: where to connect (HostName applied), as whom, with which keys."""

    host: str
    port: int
    user: str
    connect_kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Route:
    """The way to one node: the address its handshake goes to (ssh_config's HostName
    applied), its connect kwargs, the jump hosts on the way (outermost first) and a
    ProxyCommand that replaces the first TCP connect."""

    host: str
    connect_kwargs: dict[str, Any]
    hops: tuple[Hop, ...] = ()
    proxy_command: str | None = None


def _shorthand(spec: str) -> tuple[str | None, str, int | None]:
    """`[user@]host[:port]`, split as Fabric splits it (an IPv6 address carries no port)."""
    user, _, hostport = spec.rpartition("@")
    host, port = hostport, None
    if hostport.count(":") == 1:
        host, _, text = hostport.partition(":")
        port = int(text) if text else None
    return user or None, host, port


class Router:
    """Resolves routes for one connector; ssh_config is parsed once (as Fabric loads it: the
    user's file, then the system's) and only when `ssh.ssh_config` is on."""

    def __init__(self, settings: SSHSettings,
                 connect_kwargs: Callable[[Node | None], dict[str, Any]]):
        self.settings = settings
        self._connect_kwargs = connect_kwargs
        self._lock = threading.Lock()
        self._config: paramiko.SSHConfig | None = None

    def route(self, node: Node) -> Route:
        """The route to `node`; NodeError when ssh_config cannot be read. User and port come
        from the node, which already honours ssh_config's User and Port (openssh_config)."""
        found = self._lookup(node.host, node)
        kwargs = self._with_identities(self._connect_kwargs(node), found)
        host = str(found.get("hostname", node.host))
        if self.settings.jump_host:  # an explicit jump host wins over ssh_config (Fabric)
            hops, command = self._hops(self.settings.jump_host, host, node, 0)
            return Route(host, kwargs, hops, command)
        if _set(found, "proxyjump"):
            hops, command = self._hops(str(found["proxyjump"]), host, node, 0)
            return Route(host, kwargs, hops, command)
        if _set(found, "proxycommand"):
            return Route(host, kwargs, proxy_command=str(found["proxycommand"]))
        return Route(host, kwargs)

    def _hops(self, spec: str, target: str, node: Node,
              depth: int) -> tuple[tuple[Hop, ...], str | None]:
        hops: list[Hop] = []
        command: str | None = None
        for index, part in enumerate(p.strip() for p in spec.split(",")):
            user, name, port = _shorthand(part)
            if name == target:  # a wildcard Host block names the jump host itself
                return (), None
            found = self._lookup(name, node)
            host = str(found.get("hostname", name))
            if index == 0 and depth < _MAX_NESTING:
                # The first hop may itself be reached through a jump host or a command.
                if _set(found, "proxyjump"):
                    outer, command = self._hops(str(found["proxyjump"]), host, node, depth + 1)
                    hops += outer
                elif _set(found, "proxycommand"):
                    command = str(found["proxycommand"])
            hops.append(Hop(
                host=host, port=port or int(found.get("port", 22)),
                user=user or str(found.get("user") or getpass.getuser()),
                connect_kwargs=self._with_identities(self._connect_kwargs(None), found)))
        return tuple(hops), command

    @staticmethod
    def _with_identities(kwargs: dict[str, Any],
                         found: paramiko.SSHConfigDict) -> dict[str, Any]:
        keys = [*kwargs.get("key_filename", []), *found.get("identityfile", [])]
        if keys:
            kwargs["key_filename"] = keys
        return kwargs

    def _lookup(self, host: str, node: Node) -> paramiko.SSHConfigDict:
        if not self.settings.ssh_config:
            return paramiko.SSHConfigDict()
        try:
            with self._lock:
                if self._config is None:
                    config = paramiko.SSHConfig()
                    for path in ("~/.ssh/config", "/etc/ssh/ssh_config"):
                        path = os.path.expanduser(path)
                        if os.path.isfile(path):
                            with open(path) as fh:
                                config.parse(fh)
                    self._config = config
                config = self._config
            return config.lookup(host)
        except Exception as exc:  # unreadable, malformed, a failing Match exec...
            raise NodeError(NodeErrorKind.ERROR, f"ssh_config (~/.ssh/config,"
                            f" /etc/ssh/ssh_config): {type(exc).__name__}: {exc}",
                            node=node.id) from exc


def _set(found: paramiko.SSHConfigDict, key: str) -> bool:
    value = found.get(key)
    return bool(value) and str(value).lower() != "none"


def first_socket(route: Route, port: int, timeout: float, *, cancellable: bool) -> Any:
    """The socket the route starts with: the first hop's (or the node's) TCP connection, or
    the ProxyCommand's pipe."""
    if route.proxy_command:
        return paramiko.ProxyCommand(route.proxy_command)
    first = route.hops[0] if route.hops else None
    return tcp_connect(first.host if first else route.host, first.port if first else port,
                       timeout, cancellable=cancellable)


def through(route: Route, sock: Any, port: int, *, timeout: float,
            secure: Callable[[paramiko.SSHClient], None]
            ) -> tuple[Any, tuple[paramiko.SSHClient, ...]]:
    """Log in to each jump host over `sock` in turn and open a `direct-tcpip` channel to the
    next one, then to the node (`route.host`:`port`). Returns the node's socket and the jump
    connections (the caller closes them with the node's); on an error they are closed."""
    clients: list[paramiko.SSHClient] = []
    try:
        for index, hop in enumerate(route.hops):
            client = paramiko.SSHClient()
            secure(client)
            clients.append(client)
            connect_client(client, host=hop.host, port=hop.port, user=hop.user, sock=sock,
                           connect_kwargs=dict(hop.connect_kwargs), timeout=timeout)
            after = route.hops[index + 1] if index + 1 < len(route.hops) else None
            dest = (after.host, after.port) if after else (route.host, port)
            # src_addr must be "empty but not None" to encode (as in Fabric's open_gateway);
            # the timeout replaces Paramiko's one-hour default.
            sock = client.get_transport().open_channel(
                "direct-tcpip", dest_addr=dest, src_addr=("", 0), timeout=timeout)
    except BaseException:
        for client in reversed(clients):
            with contextlib.suppress(Exception):
                client.close()
        raise
    return sock, tuple(clients)
