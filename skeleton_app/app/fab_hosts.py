"""`fab -H` hosts as Fabric users type them, turned into nodes (fabfile.py's `_target`).

    fab -H node-01              the node's entry: host, port, user, identity
    fab -H node-01:2222         ... on port 2222 (`user@node-01` picks the user)
    fab -H 'node-[01-03]'       every node of the range, in one run of the task
    fab -H 10.0.0.5             an address that is no node: the `ssh` section's settings

A name that is neither a node id, a node's host nor an IP address is an error naming the
known nodes: a typo must not become a DNS lookup and a connection to whatever answers.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from typing import TYPE_CHECKING

from skeleton_app.errors import SelectionError
from skeleton_app.nodes import clip, expand, fold, shown

if TYPE_CHECKING:
    from skeleton_app.app.commands import Session
    from skeleton_app.nodes import Node


def fab_nodes(session: Session, host: str, *, user: str | None = None,
              port: int | None = None) -> tuple[Node, ...]:
    """The nodes one `-H` element names (`host` without its `user@` and `:port`, which
    come as `user` and `port`: given, they replace the node's own)."""
    from skeleton_app.remote import SSHExecutor

    cluster = session.cluster()
    names = expand(host) if "[" in host else [host]
    found: list[Node] = []
    for name in names:
        try:
            node = cluster.node(name)
        except SelectionError:
            if not _is_address(name):
                known = fold(n.id for n in cluster.nodes) or "(none)"
                raise SelectionError(
                    f"-H {shown(host)}: unknown node {clip(name)} (fab -H takes node ids,"
                    f" ranges of them, their hosts or IP addresses); known nodes: {known}"
                ) from None
            node = SSHExecutor(cluster=cluster).node(name)  # `ssh` section's settings
        if user:
            node = dataclasses.replace(node, user=user)
        if port:
            node = dataclasses.replace(node, port=port)
        found.append(node)
    return tuple(found)


def host_part(element: str) -> str:
    """The host of a `-H` element typed as `[user@]host[:port]` (an IPv6 address, whose
    colons are not a port's, stays whole)."""
    address = element.rpartition("@")[2]
    name, colon, port = address.rpartition(":")
    return name if colon and ":" not in name and port.isdigit() else address


def check_all(session: Session, elements: list[str]) -> None:
    """Every `-H` element names nodes or an address, else SelectionError naming the known
    nodes. fab runs the task host by host: without this, `fab -H node-01,nosuch run` ran on
    node-01 before the typo stopped it. Looks up the configuration only; contacts no one."""
    for element in elements:
        fab_nodes(session, host_part(element))


def explicit_ports(hosts: list[str]) -> frozenset[tuple[str, int]]:
    """(host, port) for each `-H` element typed with a port (`[user@]host:port`): fab's
    Connection has a port either way, this says whether the user asked for it."""
    ports = set()
    for element in hosts:
        address = element.rpartition("@")[2]
        name, colon, port = address.rpartition(":")
        if colon and ":" not in name and port.isdigit():
            ports.add((name, int(port)))
    return frozenset(ports)


def _is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True
