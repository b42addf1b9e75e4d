"""The seed's Python API: `SSHExecutor`, asyncio-friendly, over the pooled SSH layer.

    from skeleton_app.remote import SSHExecutor

    async with SSHExecutor() as executor:           # user, key, known_hosts from config
        exit_code, out, err = await executor.execute("linux-01", "uptime", timeout=300.0)
        await executor.copy_file("linux-01", "model.bin", "/tmp/model.bin", direction="to")
        results = await executor.execute_on_all(["linux-01", "linux-02"], "uptime",
                                                parallel=True)
        for host, (exit_code, out, err) in results.items():
            ...

Hosts may be node ids from the configuration/registry or plain addresses. Connections are
pooled per process; `close()` (or leaving the `async with`) closes them. Blocking SSH work
runs in worker threads, so the event loop stays responsive.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Iterable, Sequence
from typing import Any, Literal

from skeleton_app.cluster import Cluster, fan_out
from skeleton_app.config import Settings, load_config
from skeleton_app.errors import NodeError, NodeErrorKind, SelectionError
from skeleton_app.nodes import Node, validate_host
from skeleton_app.results import NodeResult
from skeleton_app.ssh.runner import RunOptions


class CommandResult(tuple[int, str, str]):
    """`(exit_code, stdout, stderr)`; unpacks like the seed's tuple, and keeps the detail.

    A node that could not run the command has exit_code -1, stderr "kind: message" and
    `error_kind` set.
    """

    result: NodeResult[Any]

    def __new__(cls, result: NodeResult[Any]) -> CommandResult:
        code = result.exit_code if result.exit_code is not None else -1
        err = result.stderr if result.error_kind is None else (
            f"{result.error_kind.value}: {result.error}")
        self = super().__new__(cls, (code, result.stdout, err))
        self.result = result
        return self

    @property
    def exit_code(self) -> int:
        return self[0]

    @property
    def stdout(self) -> str:
        return self[1]

    @property
    def stderr(self) -> str:
        return self[2]

    @property
    def ok(self) -> bool:
        return self.result.ok

    @property
    def error_kind(self) -> Any:
        return self.result.error_kind


_ADHOC_ID = re.compile(r"[^A-Za-z0-9._-]")


class SSHExecutor:
    """Run commands and copy files on nodes. All methods are coroutines."""

    def __init__(self, config: str | os.PathLike[str] | None = None, *,
                 settings: Settings | None = None, cluster: Cluster | None = None):
        if cluster is None:
            cluster = Cluster.from_config(settings=settings or load_config(config))
        self.cluster = cluster
        self.settings = cluster.settings

    def node(self, host: str | Node) -> Node:
        """A node id from the configuration, or an address/hostname with default settings."""
        if isinstance(host, Node):
            return host
        try:
            return self.cluster.node(host)
        except SelectionError:
            pass
        try:
            validate_host(host)
        except ValueError as exc:
            raise SelectionError(f"unknown node or invalid host {host!r}: {exc}") from None
        ssh = self.settings.ssh
        node_id = _ADHOC_ID.sub("-", host).strip("-.")[:63] or "host"
        try:
            user, port = self.settings.login(host, None, None)  # ~/.ssh/config's User/Port too
        except ValueError as exc:
            raise SelectionError(f"host {host!r}: {exc}") from None
        return Node(id=node_id, host=host, port=port, user=user,
                    app_dir=self.settings.app.dir, identity_file=ssh.identity_file,
                    api_port=self.settings.daemon.api_port)

    def run_sync(self, host: str | Node, command: str, *, timeout: float | None = None,
                 stdin: bytes | None = None) -> NodeResult[Any]:
        return self.cluster.connector.run(self.node(host), command,
                                          RunOptions(timeout=timeout, stdin=stdin))

    async def execute(self, host: str | Node, command: str, timeout: float = 300.0, *,
                      stdin: bytes | None = None) -> CommandResult:
        """Run `command` on `host`. Returns (exit_code, stdout, stderr).

        Raises NodeError when the node could not run it (unreachable, refused, host key,
        timeout); the exception carries the kind.
        """
        result = await asyncio.to_thread(self.run_sync, host, command, timeout=timeout,
                                         stdin=stdin)
        if result.error_kind is not None:
            raise NodeError(result.error_kind, result.error or "", node=result.node)
        return CommandResult(result)

    async def execute_on_all(self, hosts: Iterable[str | Node], command: str, *,
                             parallel: bool = True, timeout: float = 300.0
                             ) -> dict[str, CommandResult]:
        """Run `command` on every host; one entry per host, failures included as values."""
        nodes = [self.node(h) for h in hosts]
        keys = [h.id if isinstance(h, Node) else h for h in hosts] if isinstance(
            hosts, Sequence) else [n.id for n in nodes]
        options = RunOptions(timeout=timeout)
        connector = self.cluster.connector

        def go() -> Any:
            return fan_out(nodes, lambda n: connector.run(n, command, options),
                           fanout=self.settings.ssh.fanout if parallel else 1,
                           operation="exec")

        gathered = await asyncio.to_thread(go)
        return {key: CommandResult(gathered[node.id]) for key, node in zip(keys, nodes,
                                                                            strict=True)}

    async def copy_file(self, host: str | Node, local: str | os.PathLike[str], remote: str,
                        direction: Literal["to", "from"] = "to") -> None:
        """Copy one file over SFTP: `to` the node (local -> remote) or `from` it."""
        if direction not in ("to", "from"):
            raise ValueError(f"direction must be 'to' or 'from', got {direction!r}")
        node = self.node(host)

        def go() -> None:
            conn = self.cluster.connection(node)
            try:
                if direction == "to":
                    conn.put(os.fspath(local), remote)
                else:
                    conn.get(remote, os.fspath(local))
            except OSError as exc:
                raise NodeError(NodeErrorKind.ERROR, f"copy {direction} {node.id} failed: {exc}",
                                node=node.id) from exc

        await asyncio.to_thread(go)

    def close(self) -> None:
        self.cluster.close()

    async def __aenter__(self) -> SSHExecutor:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def __enter__(self) -> SSHExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# The seed calls the same object a "manager" when it fans out.
ClusterManager = SSHExecutor

__all__ = ["ClusterManager", "CommandResult", "SSHExecutor"]
