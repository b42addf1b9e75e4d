"""`cluster logs`: gather the tail of every node's logs, or follow them live.

    result = collect_logs(cluster, nodes, lines=200, since="15m", grep="ERROR|WARN")
    follow_logs(cluster, nodes, lines=10, on_line=lambda node, line: print(node, line))

Per node the sources are the daemon log (`<logs_dir>/skeleton-daemon.log`), every file the
`logs.files` globs match (relative to the node's app dir) and, when `daemon.manager` is
systemd, the unit's journal. Filtering happens on the node (`skeleton_app/payloads/logs.sh`,
sent on stdin; every value is an argument, nothing is evaluated): `since`, then `grep`, then
the last `lines` lines of each source. Only the result crosses the network.

Memory stays bounded whatever the logs hold: every line is cut to `max_line` bytes on the node
(before any filter reads it) and a node sends at most `max_bytes` of log (its newest bytes);
the controller enforces the same cap on what arrives, writes each source to disk as it
streams in (never holding a node's log), and merges from the files it wrote, keeping only a
small index per line.

`collect_logs` writes `OUT/<node>.log` (a header naming each source and its state, then each
source's lines byte for byte) and `OUT/merged.log` (every line prefixed with its node, in time
stamp order where lines carry ISO-8601 stamps; a line without one stays with the stamped line
before it, and sources without any stamp follow, in order). Files are written next to their
final name with O_NOFOLLOW|O_EXCL and renamed over it, relative to a directory descriptor of
OUT: a symlink planted at `OUT/<node>.log` is replaced, never followed, and node ids (validated
again here) cannot name anything outside OUT. A node that fails gets a header-only file that
says why; the others are written as usual.

`follow_logs` keeps one OpenSSH session per node (`ssh_argv`, same identity and strict host
keys) whose stdin stays open: closing it, or the controller dying, makes the node script stop
everything it started.

The package: `options` (arguments, checked before any node is contacted), `records` (logs.sh's
arguments and framed answer), `files` (OUT and each node's file), `merge` (merged.log),
`fetch` (`collect_logs`), `follow` (`follow_logs`), `outcome` (LogsOutcome, the typed
per-node result of a collect).
"""

from skeleton_app.ops.logs.fetch import collect_logs
from skeleton_app.ops.logs.files import MERGED, OutDir
from skeleton_app.ops.logs.follow import LineFn, follow_logs
from skeleton_app.ops.logs.merge import merge_into, merge_logs
from skeleton_app.ops.logs.options import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_LINE,
    DEFAULT_OUT_DIR,
    parse_lines,
    parse_since,
    parse_size,
)
from skeleton_app.ops.logs.outcome import LogsOutcome
from skeleton_app.ops.logs.records import SCRIPT, LogSource, RecordReader, parse_sources

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_LINE",
    "DEFAULT_OUT_DIR",
    "MERGED",
    "SCRIPT",
    "LineFn",
    "LogSource",
    "LogsOutcome",
    "OutDir",
    "RecordReader",
    "collect_logs",
    "follow_logs",
    "merge_into",
    "merge_logs",
    "parse_lines",
    "parse_since",
    "parse_size",
    "parse_sources",
]
