"""`follow_logs`: new lines of every node, live, over one OpenSSH session per node whose stdin
stays open (closing it, or the controller dying, stops everything the node script started)."""

from __future__ import annotations

import contextlib
import os
import shlex
import subprocess
import threading
import time
from collections.abc import Callable, Sequence

from skeleton_app import cancel
from skeleton_app.cluster import Cluster
from skeleton_app.errors import NodeErrorKind
from skeleton_app.nodes import Node
from skeleton_app.ops.logs.options import check_pattern, lines_default, since_epoch
from skeleton_app.ops.logs.records import node_args, script
from skeleton_app.results import ClusterResult, NodeResult, failure
from skeleton_app.ssh.openssh import ssh_argv

LineFn = Callable[[str, bytes], None]  # (node id, one line without its newline)


def follow_logs(
    cluster: Cluster,
    nodes: Sequence[Node],
    *,
    on_line: LineFn,
    lines: int | None = None,
    since: str | float | None = None,
    grep: str | None = None,
    stop: threading.Event | None = None,
    on_error: Callable[[str, str], None] | None = None,
) -> ClusterResult[None]:
    """Stream new log lines of every node to `on_line(node, line)` until `stop` is set, a
    cancel (`skeleton_app.cancel`, the CLI's Ctrl-C) or KeyboardInterrupt; then stop every
    remote process. One NodeResult per node: exit 0 when
    it streamed until stopped, an error when it could not be reached or dropped out."""
    count = lines_default(cluster, lines)
    since_at = None if since is None else since_epoch(since)
    if grep:
        check_pattern(grep)
    stop = stop or threading.Event()
    remote_script = script().decode()
    procs: dict[str, subprocess.Popen[bytes]] = {}
    threads: list[threading.Thread] = []
    errors: dict[str, bytearray] = {}
    started = time.monotonic()

    def pump(node: Node, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        rest = b""
        for chunk in iter(lambda: os.read(fd, 65536), b""):
            *complete, rest = (rest + chunk).split(b"\n")
            for line in complete:
                on_line(node.id, line)
            if len(rest) > 65536:  # a line without end: pass it on in pieces
                on_line(node.id, rest)
                rest = b""
        if rest:
            on_line(node.id, rest)

    def drain(node: Node, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stderr is not None
        fd = proc.stderr.fileno()
        buf = errors.setdefault(node.id, bytearray())
        for chunk in iter(lambda: os.read(fd, 65536), b""):
            buf.extend(chunk)
            del buf[:-4096]

    for node in nodes:
        remote = shlex.join(["sh", "-c", remote_script, "skeleton-logs",
                             *node_args(cluster, node, "follow", count, since_at, grep)])
        argv = [*ssh_argv(node, cluster.settings.ssh, extra=["-T"]), "--", node.host, remote]
        # A session of its own: Ctrl-C stops us, and we stop the nodes in order (closing
        # stdin), instead of ssh dying on the same SIGINT and looking like a failed node.
        # It dies with us too (even by SIGKILL), and the node script with its stdin.
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True,
                                preexec_fn=cancel.die_with_parent())
        procs[node.id] = proc
        for fn in (pump, drain):
            th = threading.Thread(target=fn, args=(node, proc), daemon=True,
                                  name=f"logs-{fn.__name__}")
            th.start()
            threads.append(th)
    try:
        while (not stop.is_set() and not cancel.cancelled()
               and any(p.poll() is None for p in procs.values())):
            stop.wait(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        ended = {nid for nid, p in procs.items() if p.poll() is not None}
        for proc in procs.values():
            # Closing stdin is the node script's signal to stop everything it started.
            with contextlib.suppress(OSError):
                assert proc.stdin is not None
                proc.stdin.close()
        deadline = time.monotonic() + 10
        for proc in procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for th in threads:
            th.join(timeout=5)
        for proc in procs.values():
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()
    results: list[NodeResult[None]] = []
    for node in nodes:
        proc = procs[node.id]
        message = bytes(errors.get(node.id, b"")).decode("utf-8", "replace").strip()
        if node.id in ended:
            kind = NodeErrorKind.UNREACHABLE if proc.returncode == 255 else NodeErrorKind.LOST
            detail = message.splitlines()[-1] if message else f"ssh exited {proc.returncode}"
            if on_error is not None:
                on_error(node.id, detail)
            results.append(failure(node.id, kind, detail, time.monotonic() - started))
        else:
            results.append(NodeResult(node=node.id, exit_code=0,
                                      duration=time.monotonic() - started))
    return ClusterResult(results, operation="logs-follow",
                         duration=time.monotonic() - started)
