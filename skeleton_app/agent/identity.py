"""Who this daemon is: its node (`resolve_node`), and its own registry credentials
(`own_credentials`), never the operator's.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import socket
from collections.abc import Mapping
from pathlib import Path

from skeleton_app.config import Settings
from skeleton_app.errors import ConfigError, RegistryError
from skeleton_app.nodes import Node, validate_host, validate_node_id
from skeleton_app.registry import parse_dsn

ENV_NODE_ID = "SKELETON_NODE_ID"
ENV_NODE_HOST = "SKELETON_NODE_HOST"  # the node's address when config.yaml does not list it
ENV_NODE_DSN = "SKELETON_NODE_DSN"  # the node's own DSN; else registry.node_dsn_file


def resolve_node(settings: Settings, *, env: Mapping[str, str] | None = None,
                 hostname: str | None = None) -> Node:
    """This machine's node: `$SKELETON_NODE_ID` or the hostname, looked up in config.yaml.

    A node missing from the config's `nodes:` (a registry-only setup) can still run: its
    address comes from `$SKELETON_NODE_HOST`, else from the route towards the registry.
    """
    env = os.environ if env is None else env
    hostname = hostname or socket.gethostname()
    wanted = env.get(ENV_NODE_ID) or ""
    if wanted:
        try:
            validate_node_id(wanted)
        except ValueError as exc:
            raise ConfigError(str(exc), source=ENV_NODE_ID) from None
        candidates = [wanted]
    else:
        candidates = [hostname, hostname.split(".", 1)[0]]
    for candidate in candidates:
        node = settings.node(candidate)
        if node is not None:
            return node
    node_id = candidates[0] if wanted else candidates[-1]
    try:
        validate_node_id(node_id)
    except ValueError as exc:
        raise ConfigError(f"cannot name this node after the hostname: {exc}; set"
                          f" {ENV_NODE_ID}", source="hostname") from None
    host = env.get(ENV_NODE_HOST) or _address_towards_registry(settings)
    if not host:
        known = ", ".join(n.id for n in settings.nodes) or "none"
        raise ConfigError(
            f"node {node_id!r} is not in the nodes: list (known: {known}), and its address is"
            f" unknown: add it to config.yaml or set {ENV_NODE_HOST}",
            source=settings.source or "config",
        )
    try:
        validate_host(host)
    except ValueError as exc:
        raise ConfigError(str(exc), source=ENV_NODE_HOST) from None
    return Node(id=node_id, host=host, port=settings.ssh.port, user=settings.ssh.user,
                app_dir=settings.app.dir, identity_file=settings.ssh.identity_file,
                api_port=settings.daemon.api_port, name=node_id)


def _address_towards_registry(settings: Settings) -> str | None:
    """Our source address on the route to the database host (a UDP connect sends nothing)."""
    if not settings.registry.dsn:
        return None
    try:
        target = parse_dsn(settings.registry.dsn)
        host = target.host.split(",")[0]
        port = int(target.port.split(",")[0])
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect((host, port))
            address = str(probe.getsockname()[0])
    except (RegistryError, OSError, ValueError):
        return None
    return None if ipaddress.ip_address(address).is_loopback else address


def missing_hint(node_id: str) -> str:
    return (f"On the controller, run `skeleton nodes credentials {node_id} --install` (the"
            f" node's own DSN, in registry.node_dsn_file; or set {ENV_NODE_DSN})")


def own_credentials(settings: Settings, *, env: Mapping[str, str] | None = None) -> Settings:
    """`settings` whose registry DSN is the node's own: `$SKELETON_NODE_DSN`, else the
    `registry.node_dsn_file` (`skeleton nodes credentials ID --install`), else none at all.
    Never `registry.dsn` as configured: that is the operator's, with rights on every row."""
    env = os.environ if env is None else env
    dsn = env.get(ENV_NODE_DSN, "").strip()
    if dsn:
        try:
            parse_dsn(dsn)
        except RegistryError as exc:
            raise ConfigError(str(exc), source=ENV_NODE_DSN) from None
    else:
        dsn = _read_node_dsn(os.path.expanduser(settings.registry.node_dsn_file))
    return dataclasses.replace(settings, registry=dataclasses.replace(settings.registry,
                                                                      dsn=dsn or None))


def _read_node_dsn(path: str) -> str:
    """The node DSN file's content, checked ('' when the file does not exist)."""
    try:
        dsn = Path(path).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return ""
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}",
                          key="registry.node_dsn_file") from None
    try:
        parse_dsn(dsn)
    except RegistryError as exc:
        raise ConfigError(f"{path}: {exc}", key="registry.node_dsn_file") from None
    return dsn
