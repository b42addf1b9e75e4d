"""rsync over OpenSSH: the argv, the output parsers, and a runner that reports per-file changes.

Why our own wrapper: Fabric's companion `patchwork.transfers.rsync` pins fabric<3 and imports
`invoke.vendor.six`, which Invoke 2 removed. This module keeps its call shape,

    rsync(c, source, target, exclude=(), delete=False, rsync_opts=(), ssh_opts=())

with `c` a Fabric `Connection` (ours or a plain one) or a `Node`, and fixes what made it risky:

* the command is an argv list (no local shell), with `--` before the positional paths;
* `-e` carries `ssh_argv()`: the same identity, port, known_hosts, strict host-key checking and
  jump host as the Paramiko side, quoted for rsync's own `-e` splitter (spaces and quotes in
  any value survive);
* remote paths travel inside the rsync protocol (`--secluded-args`, called `--protect-args`
  before rsync 3.2.6), so the remote shell never re-splits or expands them;
* `--delay-updates` with a `--partial-dir`: files are written in a holding directory and
  renamed into place at the end, so an interrupted transfer leaves old or new files, never a
  truncated file under its final name (plain `--partial` would);
* `--out-format` with the itemized change string and `--stats` are parsed into a per-file
  change list and counters (`FileChange`, `TransferStats`); the parsers are pure functions.

`RsyncFilter` reproduces rsync's exclude-pattern matching so that callers can walk the same set
of files rsync would send (the deploy digest does).

Where things live: `argv` (quoting, the `-e` command, the remote spec, option probing,
`build_rsync_argv`), `output` (the parsers, `TransferResult`, `classify_failure`), `filters`
(`RsyncFilter`), `run` (`run_rsync`, `rsync`), `tree` (the deploy tree walk and digest). This
package file re-exports their public names, so importers say `from skeleton_app.transfers
import rsync`.
"""

from __future__ import annotations

from skeleton_app.transfers.argv import (
    DEFAULT_PARTIAL_DIR,
    build_rsync_argv,
    protect_args_option,
    remote_spec,
    rsh_command,
    rsync_quote,
    supports,
)
from skeleton_app.transfers.filters import RsyncFilter
from skeleton_app.transfers.output import (
    EXIT_MEANINGS,
    ITEM_PREFIX,
    OUT_FORMAT,
    FileChange,
    OutputParser,
    Progress,
    TransferResult,
    TransferStats,
    classify_failure,
    decode_name,
    disk_full,
    parse_item,
    parse_progress,
    parse_stats,
)
from skeleton_app.transfers.run import rsync, run_rsync

__all__ = [
    "DEFAULT_PARTIAL_DIR",
    "EXIT_MEANINGS",
    "ITEM_PREFIX",
    "OUT_FORMAT",
    "FileChange",
    "OutputParser",
    "Progress",
    "RsyncFilter",
    "TransferResult",
    "TransferStats",
    "build_rsync_argv",
    "classify_failure",
    "decode_name",
    "disk_full",
    "parse_item",
    "parse_progress",
    "parse_stats",
    "protect_args_option",
    "remote_spec",
    "rsh_command",
    "rsync",
    "rsync_quote",
    "run_rsync",
    "supports",
]
