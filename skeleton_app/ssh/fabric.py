"""Fabric's face of our connections: `SkeletonConnection`, a Fabric `Connection` over a pooled
link (our host-key policy, finite timeouts, TCP_NODELAY, jump hosts), what
`Cluster.connection()`, `Cluster.group()`, `remote.SSHExecutor`, tasks.py and fabfile.py hand
out. Importing this module imports Fabric and Invoke; commands never need it.

This module imports the pool, never the reverse: the pool holds Paramiko links, and a Fabric
Connection is wrapped around one on demand.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

from fabric import Config, Connection

from skeleton_app.config import SSHSettings
from skeleton_app.nodes import Node
from skeleton_app.ssh.hostkeys import host_key_pin
from skeleton_app.ssh.pool import Connector
from skeleton_app.ssh.transport import Link, alive


class SkeletonConnection(Connection):  # type: ignore[misc]  # Fabric ships no types
    """A Fabric `Connection` to one node that opens through the connector's pool: the same
    transport commands run on, with our host-key policy, timeouts and jump hosts.

    Usable anywhere Fabric expects a Connection (`.run`, `.put`, Invoke task bodies).
    """

    # Invoke's Context turns assignments to undeclared attributes into config entries
    # (which are deep-copied later); declaring them keeps them plain attributes.
    connector: Connector = None  # type: ignore[assignment]
    node: Node = None  # type: ignore[assignment]
    node_id: str = ""
    liveness_lock: threading.Lock = None  # type: ignore[assignment]
    # Fabric 3.2 sets this in __init__ without declaring it: undeclared, every new
    # connection rewrote the Config shared by all connections, racing fan-out threads
    # that read `config.gateway` from the half-rebuilt dict.
    inline_ssh_env: bool | None = None

    def __init__(self, host: str, *, connector: Connector, node: Node, **kwargs: Any):
        # gateway=False: the pool reaches the node (jump hosts included); Fabric never
        # builds gateways of its own from ssh_config.
        super().__init__(host, gateway=False, **kwargs)
        self.gateway = None
        self.connector = connector
        self.node = node
        self.node_id = node.id
        self.liveness_lock = threading.Lock()
        # Never used to connect (open() adopts a pooled link), but secured all the same.
        connector.keys.secure(self.client, host_key_pin(node, self.host))

    def adopt(self, link: Link) -> None:
        """Run over `link` from now on (one liveness probe at a time per transport)."""
        self.client = link.client
        self.transport = link.transport
        self.liveness_lock = link.liveness_lock

    def open(self) -> Any:
        """Connect through the pool (NodeError when the node cannot be reached)."""
        if self.is_connected:
            return None
        self.adopt(self.connector.link(self.node))
        return None

    def alive(self, timeout: float) -> bool:
        """True if the peer answers a global request within `timeout` seconds."""
        return alive(self.transport, self.liveness_lock, timeout)


def fabric_config(settings: SSHSettings) -> Config:
    # Fabric reads ~/.ssh/config (Host aliases, ProxyJump, IdentityFile) unless told not to.
    overrides: dict[str, Any] = {"load_ssh_configs": settings.ssh_config,
                                 "timeouts": {"connect": settings.connect_timeout}}
    return Config(overrides=overrides)


_lock = threading.Lock()
# One Fabric Config per connector (shared by its connections: building one costs), and one
# Fabric face per pooled link (`connection()` hands out the same object for the same link).
_configs: weakref.WeakKeyDictionary[Connector, Config] = weakref.WeakKeyDictionary()
_faces: weakref.WeakKeyDictionary[Link, SkeletonConnection] = weakref.WeakKeyDictionary()


def config_for(connector: Connector) -> Config:
    """The Fabric Config of the connector's connections (built on first use)."""
    with _lock:
        config = _configs.get(connector)
        if config is None:
            config = _configs[connector] = fabric_config(connector.settings)
        return config


def new_connection(connector: Connector, node: Node) -> SkeletonConnection:
    """An unopened connection to `node`; it opens through the connector's pool."""
    return SkeletonConnection(
        node.host, connector=connector, node=node, user=node.user, port=node.port,
        config=config_for(connector), connect_kwargs=connector.connect_kwargs(node),
        connect_timeout=max(1, int(connector.settings.connect_timeout)),
    )


def connection(connector: Connector, node: Node) -> SkeletonConnection:
    """A connected Fabric connection to `node` over its pooled link; raises NodeError."""
    link = connector.link(node)
    with _lock:
        conn = _faces.get(link)
    if conn is None:
        conn = new_connection(connector, node)
        conn.adopt(link)
        with _lock:
            conn = _faces.setdefault(link, conn)
    return conn
