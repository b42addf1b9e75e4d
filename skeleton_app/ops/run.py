"""`cluster exec`: run one shell command on the selected nodes, in parallel.

Ad-hoc work has no command timeout unless one is asked for (`timeout`, else
`ssh.command_timeout`), as with clush and pdsh: a long job is not killed by surprise, and a
node that dies or freezes mid-command is still reported lost by the connection's keepalive
probes. `stdin` reaches every node's command; `sudo` runs it under sudo (`ops.sudo`)."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from skeleton_app.cluster import Cluster
from skeleton_app.nodes import Node, validate_node_id
from skeleton_app.ops.sudo import SudoRequest, run_with_sudo
from skeleton_app.results import ClusterResult
from skeleton_app.ssh.runner import RunOptions

LineSink = Callable[[str, str, str], None]  # (node, stream, line)


class _OutDir:
    """Writes every byte a node prints to DIR/<node>.out and .err (the in-memory result keeps
    only head and tail). Files are opened with O_NOFOLLOW: a planted symlink is not followed."""

    def __init__(self, directory: Path):
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self._files: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()

    def open_for(self, node: Node) -> None:
        validate_node_id(node.id)  # the id becomes a file name
        for stream, suffix in (("stdout", ".out"), ("stderr", ".err")):
            path = self.directory / f"{node.id}{suffix}"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
            with self._lock:
                self._files[(node.id, stream)] = fd

    def write(self, node: str, stream: str, data: bytes) -> None:
        fd = self._files.get((node, stream))
        if fd is not None:
            os.write(fd, data)

    def close(self) -> None:
        with self._lock:
            for fd in self._files.values():
                os.close(fd)
            self._files.clear()


class _LineSplitter:
    """Turns chunks into whole lines per node and stream, for `--stream`."""

    def __init__(self, emit: LineSink):
        self.emit = emit
        self._partial: dict[tuple[str, str], bytes] = {}
        self._lock = threading.Lock()

    def feed(self, node: str, stream: str, data: bytes) -> None:
        with self._lock:
            buf = self._partial.get((node, stream), b"") + data
            *lines, rest = buf.split(b"\n")
            # Keep a partial line bounded: a node printing without newlines is flushed in pieces.
            if len(rest) > 65536:
                lines.append(rest)
                rest = b""
            self._partial[(node, stream)] = rest
            for line in lines:
                self.emit(node, stream, line.decode("utf-8", "replace"))

    def flush(self) -> None:
        with self._lock:
            for (node, stream), rest in self._partial.items():
                if rest:
                    self.emit(node, stream, rest.decode("utf-8", "replace"))
            self._partial.clear()


def exec_command(
    cluster: Cluster,
    command: str,
    nodes: Sequence[Node],
    *,
    timeout: float | None = None,
    fanout: int | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    on_line: LineSink | None = None,
    stdin: bytes | None = None,
    sudo: SudoRequest | None = None,
) -> ClusterResult[None]:
    """Run `command` (exactly as typed) on `nodes`; full output to `out_dir` if given. exec
    has no outcome of its own: each node's output and exit code are the result. `timeout`
    None: `ssh.command_timeout`, and when that is unset too, none at all."""
    if timeout is None:
        timeout = cluster.settings.ssh.command_timeout
    writer = _OutDir(Path(out_dir)) if out_dir else None
    splitter = _LineSplitter(on_line) if on_line else None
    if writer:
        for node in nodes:
            writer.open_for(node)

    def sink(node: str, stream: str, data: bytes) -> None:
        if writer:
            writer.write(node, stream, data)
        if splitter:
            splitter.feed(node, stream, data)

    options = RunOptions(timeout=timeout, stdin=stdin, unbounded=timeout is None,
                         sink=sink if (writer or splitter) else None)
    try:
        if sudo is not None:
            return run_with_sudo(cluster, command, nodes, sudo, options, fanout=fanout)
        connector = cluster.connector
        return cluster.map(lambda node: connector.run(node, command, options), nodes,
                           fanout=fanout, operation="exec")
    finally:
        if splitter:
            splitter.flush()
        if writer:
            writer.close()
