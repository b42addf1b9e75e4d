"""`collect_logs`: every node's filtered logs into OUT/<node>.log, streamed to disk as they
arrive, then OUT/merged.log."""

from __future__ import annotations

import os
import shlex
import threading
from collections.abc import Sequence

from skeleton_app.cluster import Cluster
from skeleton_app.errors import NodeErrorKind
from skeleton_app.nodes import Node, validate_node_id
from skeleton_app.ops.logs.files import MERGED, OutDir, body_chunks, header
from skeleton_app.ops.logs.merge import write_merged
from skeleton_app.ops.logs.options import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_LINE,
    DEFAULT_OUT_DIR,
    check_pattern,
    describe_filters,
    lines_default,
    parse_size,
    since_epoch,
)
from skeleton_app.ops.logs.outcome import LogsOutcome
from skeleton_app.ops.logs.records import LogSource, RecordReader, node_args, script
from skeleton_app.results import ClusterResult, NodeResult, failure
from skeleton_app.ssh.runner import RunOptions


def collect_logs(
    cluster: Cluster,
    nodes: Sequence[Node],
    *,
    lines: int | None = None,
    since: str | float | None = None,
    grep: str | None = None,
    out_dir: str | os.PathLike[str] = DEFAULT_OUT_DIR,
    timeout: float | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_line: int = DEFAULT_MAX_LINE,
) -> ClusterResult[LogsOutcome]:
    """Gather every node's filtered logs into OUT/<node>.log and OUT/merged.log.

    `lines` defaults to `logs.lines`; `since` is epoch seconds or what `parse_since` takes.
    At most `max_bytes` of log per node (its newest) and `max_line` bytes per line are kept
    (see the package's header). Each NodeResult's outcome (a LogsOutcome) holds the file
    written and its sources (kind, name, status, lines, bytes). A node that fails is an
    error result; the others are still written."""
    count = lines_default(cluster, lines)
    max_bytes = parse_size(max_bytes)
    max_line = parse_size(max_line, what="--max-line")
    since_at = None if since is None else since_epoch(since)
    if grep:
        check_pattern(grep)
    for node in nodes:
        validate_node_id(node.id)  # ids become file names
    filters = describe_filters(count, since, since_at, grep)
    manager = cluster.settings.daemon.manager
    out = OutDir(out_dir)
    payload = script()
    # Per node: its scratch file (the sources' bytes, in order) and what they are.
    gathered: dict[str, tuple[str, list[LogSource]]] = {}
    lock = threading.Lock()

    def one(node: Node) -> NodeResult[LogsOutcome]:
        if node.id == MERGED.removesuffix(".log"):
            return failure(node.id, NodeErrorKind.LOCAL,
                           f"node id {node.id!r} would overwrite {MERGED}; not collected")
        scratch, body = out.scratch(node.id)
        try:
            reader = RecordReader(body, max_bytes)
            broken: list[str] = []

            def sink(_node: str, stream: str, data: bytes) -> None:
                if stream == "stdout" and not broken:
                    try:
                        reader.feed(data)
                    except ValueError as exc:  # stop parsing; the rest is not read as log
                        broken.append(str(exc))

            command = shlex.join(["sh", "-s", "--", *node_args(
                cluster, node, "collect", count, since_at, grep, max_line, max_bytes)])
            result = cluster.connector.run(node, command,
                                           RunOptions(timeout=timeout, stdin=payload, sink=sink))
            error = None
            sources: list[LogSource] = []
            if result.error_kind is not None:
                error = result.summary()
            elif result.exit_code != 0:
                error = f"logs.sh exited {result.exit_code}: {result.stderr.strip()[-300:]}"
            elif broken:
                error = broken[0]
            else:
                try:
                    sources = reader.finish()
                except ValueError as exc:
                    error = str(exc)
            body.flush()
            top = header(node, sources, filters, error, manager)
            path = out.write(f"{node.id}.log", [top, *body_chunks(sources, body)])
        finally:
            body.close()
        outcome = LogsOutcome(file=str(path), sources=tuple(sources))
        if error is None:
            with lock:
                gathered[node.id] = (scratch, sources)
        else:
            out.remove(scratch)
        if error is None:
            return NodeResult(node=node.id, exit_code=0, duration=result.duration,
                              outcome=outcome,
                              stdout=f"{outcome.lines} lines from {len(sources)} sources\n")
        if result.error_kind is not None:
            return NodeResult(node=node.id, error_kind=result.error_kind, error=result.error,
                              duration=result.duration, outcome=outcome)
        return NodeResult(node=node.id, exit_code=result.exit_code or 1, stderr=error + "\n",
                          duration=result.duration, outcome=outcome)

    try:
        collected: ClusterResult[LogsOutcome] = cluster.map(one, nodes, operation="logs")
        write_merged(out, [(node.id, gathered[node.id][0]) for node in nodes
                           if node.id in gathered], max_line)
    finally:
        for scratch, _ in gathered.values():
            out.remove(scratch)
        out.close()
    return collected
