"""Fabric's face of our connections: `SkeletonConnection`, a Fabric `Connection` with our
host-key policy, finite timeouts and TCP_NODELAY (what `Cluster.connection()`, `group()`,
tasks.py and fabfile.py hand out, and what reaches a node through a jump host, ProxyJump or
ProxyCommand). Importing this module imports Fabric and Invoke; the CLI's commands do so
only for such nodes (see `ssh.Connector`).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from fabric import Config, Connection

from skeleton_app.config import SSHSettings
from skeleton_app.nodes import Node
from skeleton_app.ssh.pool import alive, connect_client, host_key_pin, tcp_connect

if TYPE_CHECKING:
    from skeleton_app.ssh.pool import Connector


class SkeletonConnection(Connection):  # type: ignore[misc]  # Fabric ships no types
    """A Fabric `Connection` with our host-key policy, finite timeouts and TCP_NODELAY.

    Usable anywhere Fabric expects a Connection (`.run`, `.put`, Invoke task bodies).
    """

    # Invoke's Context turns assignments to undeclared attributes into config entries
    # (which are deep-copied later); declaring them keeps them plain attributes.
    connector: Connector = None  # type: ignore[assignment]
    node: Node | None = None
    node_id: str = ""
    liveness_lock: threading.Lock = None  # type: ignore[assignment]
    # Fabric 3.2 sets this in __init__ without declaring it: undeclared, every new
    # connection rewrote the Config shared by all connections, racing fan-out threads
    # that read `config.gateway` from the half-rebuilt dict.
    inline_ssh_env: bool | None = None

    def __init__(self, host: str, *, connector: Connector, node: Node | None = None,
                 **kwargs: Any):
        super().__init__(host, **kwargs)
        self.connector = connector
        self.node = node
        self.node_id = node.id if node else host
        # A node's key is pinned under its id (HostKeyAlias), a jump host's under its name.
        connector._secure(self.client, host_key_pin(node, self.host) if node else None)
        # ProxyJump from ~/.ssh/config makes plain Connections (AutoAddPolicy); jump hosts
        # get exactly the same policy as the target.
        gateway: Any = getattr(self, "gateway", None)
        if isinstance(gateway, Connection) and not isinstance(gateway, SkeletonConnection):
            self.gateway = wrap(connector, gateway)
        self.liveness_lock = threading.Lock()

    def open(self) -> Any:
        if self.is_connected:
            return None
        timeout = self.connector.settings.connect_timeout
        sock: Any = self.open_gateway() if self.gateway else tcp_connect(
            self.host, int(self.port), timeout
        )
        # With our own socket, host and port only name the known_hosts entry (see ssh._open).
        key_name, key_port = (self.node.id, 22) if self.node else (self.host, int(self.port))
        connect_client(self.client, host=key_name, port=key_port, user=self.user,
                       sock=sock, connect_kwargs=dict(self.connect_kwargs), timeout=timeout)
        self.transport = self.client.get_transport()
        return None

    def alive(self, timeout: float) -> bool:
        """True if the peer answers a global request within `timeout` seconds."""
        return alive(self.transport, self.liveness_lock, timeout)


def fabric_config(settings: SSHSettings) -> Config:
    # Fabric reads ~/.ssh/config (Host aliases, ProxyJump, IdentityFile) unless told not to.
    overrides: dict[str, Any] = {"load_ssh_configs": settings.ssh_config,
                                 "timeouts": {"connect": settings.connect_timeout}}
    return Config(overrides=overrides)


def new_connection(connector: Connector, node: Node) -> SkeletonConnection:
    """An unopened connection to `node` with the connector's policy and settings."""
    settings = connector.settings
    gateway: Any = None
    if settings.jump_host:
        gateway = SkeletonConnection(
            settings.jump_host, connector=connector, config=connector.fabric_config,
            connect_kwargs=connector.connect_kwargs(None),
            connect_timeout=max(1, int(settings.connect_timeout)),
        )
    return SkeletonConnection(
        node.host, connector=connector, node=node, user=node.user, port=node.port,
        config=connector.fabric_config, connect_kwargs=connector.connect_kwargs(node),
        gateway=gateway, connect_timeout=max(1, int(settings.connect_timeout)),
    )


def wrap(connector: Connector, conn: Connection) -> SkeletonConnection:
    """Our policy on a plain Fabric Connection (a ProxyJump hop Fabric made)."""
    gateway = conn.gateway
    if isinstance(gateway, Connection) and not isinstance(gateway, SkeletonConnection):
        gateway = wrap(connector, gateway)
    return SkeletonConnection(
        conn.host, connector=connector, user=conn.user, port=conn.port,
        config=connector.fabric_config,
        connect_kwargs=dict(conn.connect_kwargs) or connector.connect_kwargs(None),
        gateway=gateway or None,
    )
